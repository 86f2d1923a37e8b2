//! The process allocator: mimalloc, with a count of live heap bytes for INFO `used_memory`.
//!
//! Each thread adds to its own padded counter (no cache line is shared between shards on the
//! allocation path); a reader sums them. Memory freed on another thread than the one that
//! allocated it makes single counters drift, never the sum.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

use mimalloc::MiMalloc;

/// Threads with a counter of their own; later threads share the last slot.
const COUNTER_SLOTS: usize = 256;

#[repr(align(64))]
struct Padded(AtomicI64);

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: Padded = Padded(AtomicI64::new(0));
static COUNTERS: [Padded; COUNTER_SLOTS] = [ZERO; COUNTER_SLOTS];
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn slot() -> usize {
    SLOT.try_with(|s| {
        let mut slot = s.get();
        if slot == usize::MAX {
            slot = NEXT_SLOT
                .fetch_add(1, Ordering::Relaxed)
                .min(COUNTER_SLOTS - 1);
            s.set(slot);
        }
        slot
    })
    // During thread teardown the thread-local is gone: count in the shared last slot.
    .unwrap_or(COUNTER_SLOTS - 1)
}

fn add(delta: i64) {
    COUNTERS[slot()].0.fetch_add(delta, Ordering::Relaxed);
}

/// mimalloc that counts live bytes.
pub struct CountingAllocator;

// SAFETY: every method forwards to mimalloc unchanged; the counting has no effect on the
// memory returned.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { MiMalloc.alloc(layout) };
        if !p.is_null() {
            add(layout.size() as i64);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { MiMalloc.alloc_zeroed(layout) };
        if !p.is_null() {
            add(layout.size() as i64);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { MiMalloc.dealloc(ptr, layout) };
        add(-(layout.size() as i64));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { MiMalloc.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            add(new_size as i64 - layout.size() as i64);
        }
        p
    }
}

/// Bytes currently allocated on the heap by the whole process.
pub fn used_bytes() -> u64 {
    let total: i64 = COUNTERS.iter().map(|c| c.0.load(Ordering::Relaxed)).sum();
    total.max(0).unsigned_abs()
}

/// The resident set size of the process, from /proc.
pub fn rss_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * page_size()
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

/// Total physical memory, from /proc/meminfo.
pub fn total_system_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
