//! Counters, memory accounting and the INFO reply.

pub mod alloc;
pub mod info;
pub mod stats;
