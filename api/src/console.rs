//! The operator console at `/ui`: one page of plain HTML, CSS and JavaScript,
//! embedded in the binary (no CDN, no build step; ADR 14). It calls the same
//! API as any client, with the token the operator signs in with.

use poem::http::{header, StatusCode};
use poem::{handler, Response, Route};

const INDEX: &str = include_str!("../ui/index.html");
const SCRIPT: &str = include_str!("../ui/app.js");
const STYLE: &str = include_str!("../ui/app.css");

/// Only the console's own files run; the page may call only this server.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

fn asset(body: &'static str, content_type: &str) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .content_type(content_type)
        .header(header::CONTENT_SECURITY_POLICY, POLICY)
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::REFERRER_POLICY, "no-referrer")
        // the files change with the binary: revalidate, never serve stale
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body)
}

#[handler]
fn index() -> Response {
    asset(INDEX, "text/html; charset=utf-8")
}

#[handler]
fn script() -> Response {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

#[handler]
fn style() -> Response {
    asset(STYLE, "text/css; charset=utf-8")
}

/// The console's routes, to nest under `/ui`.
pub fn routes() -> Route {
    Route::new()
        .at("/", poem::get(index))
        .at("/app.js", poem::get(script))
        .at("/app.css", poem::get(style))
}

/// The bytes the console sends a browser, all files together.
pub fn size() -> usize {
    INDEX.len() + SCRIPT.len() + STYLE.len()
}
