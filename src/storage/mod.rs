//! Durability: each shard's append-only log (records, segments, manifest), the group-commit
//! loop that moves its durable watermark, and recovery at start-up.

pub mod aof;
pub mod commit;
#[cfg(feature = "fault-injection")]
pub mod faults;
pub mod manifest;
pub mod open;
pub mod record;
pub mod recovery;
pub mod rewrite;
pub mod segment;
pub mod snapshot;

/// `appendfsync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncMode {
    /// A write's reply leaves once the write is on stable storage.
    Always,
    /// Replies at once; an fsync at least every second.
    Everysec,
    /// No periodic fsync (WAITAOF still forces one).
    No,
}
