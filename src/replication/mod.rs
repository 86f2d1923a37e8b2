//! Replication: a corekv replica follows a corekv primary. The primary streams each shard's
//! records (`backlog`) after a full sync; the replica applies them and acknowledges, per
//! primary shard, what it received and what its own AOF made durable.

pub mod backlog;
pub mod primary;
pub mod replica;
pub mod state;
