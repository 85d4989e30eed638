//! One module per subcommand.

pub mod archive;
pub mod bench;
pub mod demo;
pub mod events;
pub mod graph;
pub mod openapi;
pub mod projections;
pub mod report;
pub mod schema;
pub mod serve;
pub mod test;
pub mod validate;
