//! Replicas sharing one store (PostgreSQL or EventStoreDB): the partition
//! lease ([`lease`]) says which instances this process drives; the follower
//! ([`follower`]) keeps the lease and takes in what other replicas wrote.

mod follower;
mod lease;

pub use lease::*;
