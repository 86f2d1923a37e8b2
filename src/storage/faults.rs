//! Test-only fault injection (`--features fault-injection`, `DEBUG FAULT …`): stall a shard's
//! commit loop, make its next writes or syncs fail with a chosen OS error, or hold a
//! connection's next grouped calls for a while.

use std::cell::RefCell;

/// Faults armed on one shard.
#[derive(Debug, Default)]
pub struct Faults {
    /// The commit loop writes and syncs nothing while set.
    pub stall: bool,
    /// That many next writes fail with `errno`.
    pub fail_writes: u32,
    /// That many next syncs fail with `errno`.
    pub fail_syncs: u32,
    pub errno: i32,
    /// The next grouped calls a connection of this shard sends out (to other shards, and its
    /// own after them) wait this many milliseconds first (to hold commands under way).
    pub delay_group_ms: u64,
}

/// Where the commit loop asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    Write,
    Sync,
}

impl Faults {
    /// The error to return at `point`, if one is armed (consumes it).
    pub fn take(&mut self, point: Point) -> Option<std::io::Error> {
        let left = match point {
            Point::Write => &mut self.fail_writes,
            Point::Sync => &mut self.fail_syncs,
        };
        if *left == 0 {
            return None;
        }
        *left -= 1;
        Some(std::io::Error::from_raw_os_error(self.errno))
    }
}

thread_local! {
    /// Each shard thread's faults.
    static FAULTS: RefCell<Faults> = RefCell::new(Faults::default());
}

/// Runs `f` on this shard thread's faults.
pub fn with<R>(f: impl FnOnce(&mut Faults) -> R) -> R {
    FAULTS.with(|faults| f(&mut faults.borrow_mut()))
}
