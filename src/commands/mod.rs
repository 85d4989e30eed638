//! One module per subcommand.

pub mod bench;
pub mod demo;
pub mod graph;
pub mod report;
pub mod schema;
pub mod serve;
pub mod validate;
