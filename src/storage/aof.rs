//! One shard's append-only log, as commands see it: records are appended in execution order
//! at strictly increasing positions; the commit loop (`commit.rs`) writes and syncs them and
//! moves the **durable watermark**, waking whatever waits on it.
//!
//! Everything here is synchronous and cheap: appending encodes into a buffer; waiting parks a
//! future in a queue ordered by position.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use super::record::{self, LoggedCommand, TxTag};
use super::FsyncMode;
use crate::protocol::Args;

/// Bytes of appended records after which the commit loop is woken even in `everysec`/`no`.
pub const PENDING_WAKE_BYTES: usize = 1024 * 1024;

/// A failed write or sync of the log, as clients are told about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AofFailure {
    /// The OS error text (`Input/output error`, `No space left on device` …).
    pub message: String,
}

impl AofFailure {
    /// The error replies carry for writes the log could not make durable.
    pub fn misconf(&self) -> String {
        format!("MISCONF Errors writing to the AOF file: {}", self.message)
    }
}

#[derive(Default)]
struct WaitSlot {
    result: Option<Result<(), AofFailure>>,
    waker: Option<Waker>,
}

/// Completes once the log is durable up to a position (or the write carrying it failed).
pub struct Durable {
    slot: Option<Rc<RefCell<WaitSlot>>>,
}

impl Future for Durable {
    type Output = Result<(), AofFailure>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(slot) = &self.slot else {
            return Poll::Ready(Ok(()));
        };
        let mut slot = slot.borrow_mut();
        match slot.result.take() {
            Some(r) => Poll::Ready(r),
            None => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Counters INFO shows about the log.
#[derive(Debug, Default, Clone)]
pub struct AofStats {
    pub fsyncs: u64,
    pub records_synced: u64,
    pub write_errors: u64,
    /// fdatasync latencies in microseconds (bounded memory).
    pub fsync_latency_us: Option<hdrhistogram::Histogram<u64>>,
    /// Records per fdatasync (2 significant digits).
    pub batch_records: Option<hdrhistogram::Histogram<u64>>,
    /// The most records one fdatasync carried (exact).
    pub batch_max: u64,
}

impl AofStats {
    fn new() -> AofStats {
        AofStats {
            fsync_latency_us: hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 2).ok(),
            batch_records: hdrhistogram::Histogram::new_with_bounds(1, 10_000_000, 2).ok(),
            ..AofStats::default()
        }
    }

    /// `CONFIG RESETSTAT`: counters and histograms start again from zero.
    pub fn reset(&mut self) {
        *self = AofStats::new();
    }
}

/// Hash used for the dirty-key set (keys are not stored, only hashes: a collision only makes a
/// read wait for an fsync it did not need).
fn key_hash(db: usize, key: &[u8]) -> u64 {
    static STATE: std::sync::OnceLock<foldhash::fast::FixedState> = std::sync::OnceLock::new();
    let state = STATE.get_or_init(|| foldhash::fast::FixedState::with_seed(fastrand::u64(..)));
    state.hash_one((db, key))
}

/// The log state of one shard.
pub struct Aof {
    /// Tells this log from one turned on after it (its commit loop ends with it).
    pub instance: u64,
    pub shard: u16,
    pub generation: u32,
    pub epoch: u64,
    pub mode: FsyncMode,
    pending: Vec<u8>,
    pending_records: u64,
    /// Log position after the last appended record.
    end: u64,
    next_batch: u32,
    /// Everything before this position is on stable storage.
    durable: u64,
    /// Keys written since their record became durable: key hash → record end.
    dirty: HashMap<u64, u64>,
    /// Waiters by the position they need; weak, so a waiter that goes away leaves nothing.
    waiters: BTreeMap<u64, Vec<Weak<RefCell<WaitSlot>>>>,
    /// The commit loop should run now (someone waits).
    urgent: bool,
    kick: Option<Waker>,
    kicked: bool,
    failure: Option<AofFailure>,
    pub stats: AofStats,
    /// Log position where the chain's first segment starts.
    pub chain_start: u64,
    /// Bytes of the base (INFO aof_base_size).
    pub base_bytes: u64,
    /// [`Aof::size_bytes`] when the last rewrite ended (auto-aof-rewrite-percentage counts
    /// growth from it).
    pub rewrite_base_bytes: u64,
    /// A rewrite cut at this position: the commit loop starts a new segment here.
    roll_at: Option<u64>,
    roll_waker: Option<Waker>,
    /// The watermark may not pass this position (until the manifest names the files that hold
    /// what lies beyond it).
    hold: Option<u64>,
    /// Everything before this position is on stable storage (`durable` may lag behind it while
    /// held).
    synced_to: u64,
}

impl Aof {
    /// A log continuing at `end` (everything before it durable), with commits numbered after
    /// `last_batch`.
    pub fn new(
        shard: u16,
        generation: u32,
        epoch: u64,
        mode: FsyncMode,
        end: u64,
        last_batch: u32,
    ) -> Aof {
        Aof {
            instance: fastrand::u64(..),
            shard,
            generation,
            epoch,
            mode,
            pending: Vec::new(),
            pending_records: 0,
            end,
            next_batch: last_batch.wrapping_add(1),
            durable: end,
            dirty: HashMap::new(),
            waiters: BTreeMap::new(),
            urgent: false,
            kick: None,
            kicked: false,
            failure: None,
            stats: AofStats::new(),
            chain_start: end,
            base_bytes: 0,
            rewrite_base_bytes: 0,
            roll_at: None,
            roll_waker: None,
            hold: None,
            synced_to: end,
        }
    }

    /// Rewrite cut: the log continues in a new segment from the current end, which is
    /// returned. The watermark stops there until [`Aof::release_hold`].
    pub fn request_roll(&mut self) -> u64 {
        self.roll_at = Some(self.end);
        self.hold = Some(self.end);
        self.wake_loop();
        self.end
    }

    /// For the commit loop: the position a new segment must start at, if a cut asks for one.
    pub fn roll_at(&self) -> Option<u64> {
        self.roll_at
    }

    /// For the commit loop: the new segment is open.
    pub fn rolled(&mut self) {
        self.roll_at = None;
        self.failure = None;
        if let Some(w) = self.roll_waker.take() {
            w.wake();
        }
        // Records appended after the cut may have been waiting for the new segment, and the
        // wake-up they gave may have been spent on a retry pause.
        if !self.pending.is_empty() {
            self.wake_loop();
        }
    }

    /// Completes once the segment asked for by [`Aof::request_roll`] is open.
    pub fn poll_rolled(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.roll_at.is_none() {
            return Poll::Ready(());
        }
        self.roll_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Keeps the watermark at or below `position` (a log being turned on holds it until its
    /// first manifest is stored).
    pub fn hold_at(&mut self, position: u64) {
        self.hold = Some(position);
    }

    /// Lets the watermark move to everything synced.
    pub fn release_hold(&mut self) {
        self.hold = None;
        let synced = self.synced_to;
        self.publish(synced);
    }

    /// The last `len` bytes appended, not yet taken by the commit loop (the record just
    /// appended, for the replication backlog).
    pub fn recent(&self, len: u64) -> &[u8] {
        let len = usize::try_from(len)
            .unwrap_or(usize::MAX)
            .min(self.pending.len());
        &self.pending[self.pending.len() - len..]
    }

    /// Log position after the last appended record.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Bytes of the log: base and appended records (INFO aof_current_size).
    pub fn size_bytes(&self) -> u64 {
        self.base_bytes + (self.end - self.chain_start)
    }

    /// The durable watermark.
    pub fn durable(&self) -> u64 {
        self.durable
    }

    /// The error of the last failed write or sync, while it lasts.
    pub fn failure(&self) -> Option<&AofFailure> {
        self.failure.as_ref()
    }

    fn appended(&mut self, len: usize) -> u64 {
        self.end += len as u64;
        self.pending_records += 1;
        // The loop sleeps without a timer while nothing is pending: the first record of a
        // batch wakes it (it then schedules its write and sync), as do a full buffer and, in
        // `always`, every record.
        let first = self.pending_records == 1;
        if first || self.mode == FsyncMode::Always || self.pending.len() >= PENDING_WAKE_BYTES {
            self.wake_loop();
        }
        self.end
    }

    /// Switches the fsync mode (CONFIG SET appendfsync) and wakes the loop to apply it.
    pub fn set_mode(&mut self, mode: FsyncMode) {
        if self.mode != mode {
            self.mode = mode;
            if mode != FsyncMode::Always {
                self.dirty.clear();
            }
            self.wake_loop();
        }
    }

    /// Bytes appended but not yet handed to the commit loop.
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// For the commit loop: whether records wait to be written.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Appends commands as one record (all or nothing on recovery); returns its end position.
    pub fn append_commands<'a>(
        &mut self,
        commands: impl ExactSizeIterator<Item = (u32, &'a Args)>,
    ) -> u64 {
        let len = record::encode_commands(&mut self.pending, self.end, self.next_batch, commands);
        self.appended(len)
    }

    /// Appends a key's whole state; returns its end position.
    pub fn append_key_state(
        &mut self,
        db: u32,
        key: &[u8],
        expire_ms: Option<i64>,
        value: &[u8],
    ) -> u64 {
        let len = record::encode_key_state(
            &mut self.pending,
            self.end,
            self.next_batch,
            db,
            key,
            expire_ms,
            value,
        );
        self.appended(len)
    }

    /// Appends transaction `tx`'s part on this shard (possibly empty) naming every shard that
    /// wrote; returns its end position.
    pub fn append_tx_part(&mut self, tx: TxTag, shards: &[u16], commands: &[LoggedCommand]) -> u64 {
        let len = record::encode_tx_part(
            &mut self.pending,
            self.end,
            self.next_batch,
            tx,
            self.epoch,
            shards,
            commands.iter().map(|c| (c.db, &c.args)),
        );
        self.appended(len)
    }

    /// Records that `key` was written by the record ending at `end` (for `always` reads).
    pub fn mark_dirty(&mut self, db: usize, key: &[u8], end: u64) {
        if self.mode == FsyncMode::Always && end > self.durable {
            self.dirty.insert(key_hash(db, key), end);
        }
    }

    /// The position a read of `key` must wait for, if its last write is not durable yet.
    pub fn dirty_until(&self, db: usize, key: &[u8]) -> Option<u64> {
        if self.dirty.is_empty() {
            return None;
        }
        self.dirty
            .get(&key_hash(db, key))
            .copied()
            .filter(|&end| end > self.durable)
    }

    /// The position a whole-keyspace read must wait for (any write not yet durable).
    pub fn any_dirty_until(&self) -> Option<u64> {
        (self.mode == FsyncMode::Always && self.end > self.durable).then_some(self.end)
    }

    /// Completes when the log is durable up to `position`. With `urgent`, the commit loop
    /// syncs now instead of at its next scheduled sync (WAITAOF, `no` mode).
    pub fn wait_durable(&mut self, position: u64, urgent: bool) -> Durable {
        if position <= self.durable {
            return Durable { slot: None };
        }
        let slot = Rc::new(RefCell::new(WaitSlot::default()));
        self.waiters
            .entry(position)
            .or_default()
            .push(Rc::downgrade(&slot));
        if urgent || self.mode == FsyncMode::Always {
            self.urgent = true;
            self.wake_loop();
        }
        Durable { slot: Some(slot) }
    }

    fn wake_loop(&mut self) {
        self.kicked = true;
        if let Some(w) = self.kick.take() {
            w.wake();
        }
    }

    /// For the commit loop: completes when there is something to do, or after `idle`.
    pub fn poll_kick(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.kicked {
            self.kicked = false;
            return Poll::Ready(());
        }
        self.kick = Some(cx.waker().clone());
        Poll::Pending
    }

    /// For the commit loop: takes the appended records (bytes, last position, record count)
    /// and starts a new commit number for what comes next. While a cut waits for its new
    /// segment, only the records before the cut are taken (and the commit number stays: the
    /// rest of it goes into the new segment).
    pub fn take_pending(&mut self) -> (Vec<u8>, u64, u64) {
        if let Some(at) = self.roll_at {
            let after = usize::try_from(self.end - at).unwrap_or(usize::MAX);
            let before = self.pending.len().saturating_sub(after);
            if before == 0 {
                return (Vec::new(), at, 0);
            }
            let rest = self.pending.split_off(before);
            let bytes = std::mem::replace(&mut self.pending, rest);
            // Record counts only feed statistics: the split is charged to the first part.
            let records = std::mem::take(&mut self.pending_records);
            return (bytes, at, records);
        }
        let bytes = std::mem::take(&mut self.pending);
        let records = std::mem::take(&mut self.pending_records);
        if !bytes.is_empty() {
            self.next_batch = self.next_batch.wrapping_add(1);
        }
        (bytes, self.end, records)
    }

    /// For the commit loop: whether a sync was asked for now (and clears the request).
    pub fn take_urgent(&mut self) -> bool {
        std::mem::take(&mut self.urgent)
    }

    /// For the commit loop: whether anyone still waits for durability.
    pub fn has_waiters(&self) -> bool {
        self.waiters
            .values()
            .flatten()
            .any(|w| w.strong_count() > 0)
    }

    /// For the commit loop: everything up to `position` is durable.
    pub fn synced(&mut self, position: u64, records: u64, latency: Duration) {
        assert!(
            position >= self.synced_to,
            "the durable watermark never moves back"
        );
        self.synced_to = position;
        self.failure = None;
        self.stats.fsyncs += 1;
        self.stats.records_synced += records;
        if let Some(h) = self.stats.fsync_latency_us.as_mut() {
            let _ = h.record(
                u64::try_from(latency.as_micros())
                    .unwrap_or(u64::MAX)
                    .max(1),
            );
        }
        self.stats.batch_max = self.stats.batch_max.max(records);
        if records > 0 {
            if let Some(h) = self.stats.batch_records.as_mut() {
                let _ = h.record(records);
            }
        }
        let visible = self.hold.map_or(position, |h| position.min(h));
        self.publish(visible);
    }

    /// Moves the watermark to `position` and wakes who waited for it.
    fn publish(&mut self, position: u64) {
        if position <= self.durable {
            return;
        }
        self.durable = position;
        let later = self.waiters.split_off(&(position + 1));
        let ready = std::mem::replace(&mut self.waiters, later);
        for slot in ready.into_values().flatten().filter_map(|w| w.upgrade()) {
            let mut slot = slot.borrow_mut();
            slot.result = Some(Ok(()));
            if let Some(w) = slot.waker.take() {
                w.wake();
            }
        }
        self.dirty.retain(|_, end| *end > position);
    }

    /// For the commit loop: a write or sync failed. Whoever waits on what it carried (up to
    /// `position`) gets the error; new writes are refused until a retry succeeds.
    pub fn failed(&mut self, position: u64, error: &std::io::Error) {
        let failure = AofFailure {
            message: strerror(error),
        };
        self.stats.write_errors += 1;
        let later = self.waiters.split_off(&(position + 1));
        let failed = std::mem::replace(&mut self.waiters, later);
        for slot in failed.into_values().flatten().filter_map(|w| w.upgrade()) {
            let mut slot = slot.borrow_mut();
            slot.result = Some(Err(failure.clone()));
            if let Some(w) = slot.waker.take() {
                w.wake();
            }
        }
        self.failure = Some(failure);
    }

    /// How far the log can become durable now: its end, or the position a rewrite holds the
    /// watermark at.
    pub fn flush_target(&self) -> u64 {
        self.hold.map_or(self.end, |h| h.min(self.end))
    }

    /// Turns the log off (CONFIG SET appendonly no). Whoever still waits waits for a write
    /// that will not be made durable: it gets an error.
    pub fn close(&mut self) {
        self.rolled();
        let failure = AofFailure {
            message: "the append-only log was turned off before this write reached the disk"
                .to_string(),
        };
        for slot in std::mem::take(&mut self.waiters)
            .into_values()
            .flatten()
            .filter_map(|w| w.upgrade())
        {
            let mut slot = slot.borrow_mut();
            slot.result = Some(Err(failure.clone()));
            if let Some(w) = slot.waker.take() {
                w.wake();
            }
        }
        self.wake_loop();
    }
}

/// The OS's text for an I/O error, as Valkey prints it (`No space left on device`).
pub fn strerror(error: &std::io::Error) -> String {
    let text = error.to_string();
    // std formats as "<text> (os error N)".
    match text.rfind(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noop_waker() -> Waker {
        Waker::noop().clone()
    }

    fn poll(d: &mut Durable) -> Poll<Result<(), AofFailure>> {
        let waker = noop_waker();
        Pin::new(d).poll(&mut Context::from_waker(&waker))
    }

    #[test]
    fn watermark_wakes_waiters_in_order() {
        let mut aof = Aof::new(0, 1, 0, FsyncMode::Everysec, 0, 0);
        let a = Args::from_vecs(["SET", "k", "v"]);
        let end1 = aof.append_commands([(0, &a)].into_iter());
        let end2 = aof.append_commands([(0, &a)].into_iter());
        let mut w1 = aof.wait_durable(end1, false);
        let mut w2 = aof.wait_durable(end2, false);
        assert!(poll(&mut w1).is_pending());
        let (bytes, end, records) = aof.take_pending();
        assert_eq!((bytes.len() as u64, end, records), (end2, end2, 2));
        aof.synced(end1, 1, Duration::from_micros(100));
        assert_eq!(poll(&mut w1), Poll::Ready(Ok(())));
        assert!(poll(&mut w2).is_pending());
        aof.failed(end2, &std::io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(
            poll(&mut w2),
            Poll::Ready(Err(AofFailure {
                message: "No space left on device".into()
            }))
        );
        assert!(aof.failure().is_some());
        aof.synced(end2, 1, Duration::from_micros(100));
        assert!(aof.failure().is_none());
        assert!(poll(&mut aof.wait_durable(end2, false)).is_ready());
    }

    #[test]
    fn dirty_keys_only_in_always_mode() {
        let mut aof = Aof::new(0, 1, 0, FsyncMode::Always, 0, 0);
        aof.mark_dirty(0, b"k", 10);
        assert_eq!(aof.dirty_until(0, b"k"), Some(10));
        assert_eq!(aof.dirty_until(1, b"k"), None);
        aof.synced(10, 1, Duration::from_micros(1));
        assert_eq!(aof.dirty_until(0, b"k"), None);
        let mut lazy = Aof::new(0, 1, 0, FsyncMode::Everysec, 0, 0);
        lazy.mark_dirty(0, b"k", 10);
        assert_eq!(lazy.dirty_until(0, b"k"), None);
    }
}
