//! The sagaflow HTTP service.
//!
//! # Layout
//!
//! Empty for now: the OpenAPI service (poem + poem-openapi) arrives with the
//! runtime. The crate exists so the workspace has its final shape.
