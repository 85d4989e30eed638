//! Request body limit: a declared length over the limit gets 413; a body
//! without a declared length is read up to the limit (and refused past it).
//!
//! A moderately oversized body is read and dropped before the 413 goes out:
//! most clients only read the answer once they have sent the body, and would
//! otherwise see a broken connection instead of the 413.

use poem::http::StatusCode;
use poem::{Body, Endpoint, Middleware, Request, Result};

/// Oversized bodies up to this many times the limit are drained before the 413.
const DRAIN_FACTOR: u64 = 16;

pub struct BodyLimit(pub usize);

impl<E: Endpoint> Middleware<E> for BodyLimit {
    type Output = BodyLimitEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        BodyLimitEndpoint {
            inner: ep,
            limit: self.0,
        }
    }
}

pub struct BodyLimitEndpoint<E> {
    inner: E,
    limit: usize,
}

fn too_large(limit: usize) -> poem::Error {
    poem::Error::from_string(
        format!("the request body is larger than {limit} bytes"),
        StatusCode::PAYLOAD_TOO_LARGE,
    )
}

impl<E: Endpoint> Endpoint for BodyLimitEndpoint<E> {
    type Output = E::Output;

    async fn call(&self, mut req: Request) -> Result<Self::Output> {
        let declared = req
            .headers()
            .get(poem::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        match declared {
            Some(n) if n > self.limit as u64 => {
                if n <= DRAIN_FACTOR * self.limit as u64 {
                    let _ = req.take_body().into_bytes_limit(n as usize).await;
                }
                return Err(too_large(self.limit));
            }
            Some(_) => {}
            None => {
                let chunked = req
                    .headers()
                    .contains_key(poem::http::header::TRANSFER_ENCODING);
                if chunked {
                    let bytes = req
                        .take_body()
                        .into_bytes_limit(self.limit)
                        .await
                        .map_err(|_| too_large(self.limit))?;
                    req.set_body(Body::from(bytes));
                }
            }
        }
        self.inner.call(req).await
    }
}
