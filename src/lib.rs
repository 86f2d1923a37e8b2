//! corekv: a Redis/Valkey-compatible storage server, thread-per-core on glommio.

pub mod command;
pub mod config;
pub mod error;
pub mod protocol;
pub mod replication;
pub mod server;
pub mod shard;
pub mod storage;
pub mod telemetry;
