//! A JSON body written by serde directly.
//!
//! poem-openapi's `Json<T>` writes a body by building a `serde_json::Value`
//! tree from `T` (its `ToJSON`), copying every nested value, and then writing
//! the tree out. [`SerdeJson`] writes `T` with its own `Serialize` in one
//! pass, for the answers every saga gets (an instance): the spec is still
//! `T`'s schema, and a test beside each such type checks that both ways write
//! the same JSON.

use poem::http::header::CONTENT_TYPE;
use poem::http::StatusCode;
use poem::{IntoResponse, Response};
use poem_openapi::payload::Payload;
use poem_openapi::registry::{MetaMediaType, MetaResponse, MetaResponses, MetaSchemaRef, Registry};
use poem_openapi::types::Type;
use poem_openapi::ApiResponse;

/// A JSON answer written with `T`'s `Serialize`, described by its schema.
pub struct SerdeJson<T>(pub T);

impl<T: Type> Payload for SerdeJson<T> {
    const CONTENT_TYPE: &'static str = "application/json; charset=utf-8";

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Type + serde::Serialize + Send> IntoResponse for SerdeJson<T> {
    fn into_response(self) -> Response {
        match serde_json::to_vec(&self.0) {
            Ok(body) => Response::builder()
                .header(CONTENT_TYPE, <Self as Payload>::CONTENT_TYPE)
                .body(body),
            // only a map with keys that are not strings fails; no answer has one
            Err(e) => Response::builder()
                .status(StatusCode::INTERNAL_SERVER_ERROR)
                .body(e.to_string()),
        }
    }
}

impl<T: Type + serde::Serialize + Send> ApiResponse for SerdeJson<T> {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: vec![MetaResponse {
                description: "",
                status: Some(200),
                status_range: None,
                content: vec![MetaMediaType {
                    content_type: <Self as Payload>::CONTENT_TYPE,
                    schema: <Self as Payload>::schema_ref(),
                }],
                headers: vec![],
            }],
        }
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}
