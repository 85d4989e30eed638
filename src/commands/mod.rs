//! One module per subcommand.

pub mod graph;
pub mod report;
pub mod schema;
pub mod validate;
