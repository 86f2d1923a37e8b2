//! The group-commit loop of one shard.
//!
//! It takes everything appended since the last write, writes it in one aligned direct-I/O
//! write, fdatasyncs when the fsync mode (or a waiter) asks, when about 8 MiB were written
//! since the last sync, or after a failure, then moves the durable watermark and wakes the
//! waiters. Records appended while a write or sync is in flight ride in the next
//! one, so many clients share one fsync; the loop never syncs when nothing was written.
//!
//! A failed write or sync acknowledges nothing it carried: its waiters get the error, the shard
//! refuses writes (`-MISCONF`) while reads go on, and the loop goes back to the last synced
//! point and writes the same bytes again, with backoff, until the disk takes them and the sync
//! succeeds.

use std::rc::Rc;
use std::time::{Duration, Instant};

use super::aof::Aof;
use super::segment::SegmentWriter;
use super::FsyncMode;
use crate::shard::Shard;

/// `everysec`: the longest time written data waits for its fdatasync.
const EVERYSEC_INTERVAL: Duration = Duration::from_secs(1);
/// `no`: appended records are written (without a sync) at least this often, so they do not pile
/// up in memory.
const NO_FSYNC_WRITE_INTERVAL: Duration = Duration::from_secs(1);
/// Written bytes kept for a rewrite after a failed sync are bounded: once this many are held, a
/// sync is due in every mode (in `no`, nothing else would ever release them). The buffer can
/// pass it by one write, and its capacity can reach twice that.
const UNSYNCED_MAX_BYTES: usize = 8 * 1024 * 1024;
/// Capacity the buffer of unsynced bytes keeps after a sync; a burst's larger buffer is freed.
const UNSYNCED_KEEP_BYTES: usize = 1024 * 1024;
/// First and longest pause between retries after a failed write or sync.
const RETRY_DELAY_MIN: Duration = Duration::from_millis(10);
const RETRY_DELAY_MAX: Duration = Duration::from_secs(1);
/// Shortest timed wait, so a due deadline never makes the loop spin.
const MIN_WAIT: Duration = Duration::from_millis(1);

/// What the loop knows beyond the writer: bytes written since the last sync, and bytes that
/// must be written again after a failure.
struct State {
    unsynced_records: u64,
    /// Written since the last successful sync (to write again if the sync fails).
    unsynced: Vec<u8>,
    /// Must be written again from the last synced point before anything else.
    rewrite: Vec<u8>,
    last_sync: Instant,
    retry_delay: Option<Duration>,
}

/// Runs the loop until the log is turned off.
pub async fn run(shard: Rc<Shard>, mut writer: SegmentWriter) {
    let mut synced_at = writer.checkpoint();
    let mut state = State {
        unsynced_records: 0,
        unsynced: Vec::new(),
        rewrite: Vec::new(),
        last_sync: Instant::now(),
        retry_delay: None,
    };
    let Some(instance) = shard.with_aof(|a| a.instance) else {
        return;
    };
    let current = || own(&shard, instance, |_| ()).is_some();
    loop {
        let Some(mode) = shard.aof_mode().filter(|_| current()) else {
            return;
        };
        let roll_at = own(&shard, instance, |a| a.roll_at()).flatten();
        if roll_at.is_none() || state.retry_delay.is_some() {
            let pending = own(&shard, instance, |a| a.has_pending()).unwrap_or(false);
            let wait = next_wait(mode, &state, pending);
            wait_for_work(&shard, instance, wait).await;
        }
        if !current() {
            // Turned off: make what was written durable before leaving.
            let _ = writer.sync().await;
            writer.close().await;
            return;
        }
        #[cfg(feature = "fault-injection")]
        {
            wait_while_stalled().await;
            if !current() {
                writer.close().await;
                return;
            }
        }
        // A rewrite cut: once everything before it is written and synced, the log goes on in
        // a new segment.
        let roll_at = own(&shard, instance, |a| a.roll_at()).flatten();
        if let Some(at) = roll_at {
            if writer.end() == at && state.unsynced.is_empty() && state.rewrite.is_empty() {
                // The old segment's spare preallocation goes first: on a full disk it is what
                // makes room for the new one.
                if let Err(e) = writer.trim().await {
                    log::warn!(
                        "Shard {}: can't trim {}: {e}",
                        shard.index(),
                        writer.path().display()
                    );
                }
                match next_segment(&shard, instance, &writer, at).await {
                    Ok(next) => {
                        std::mem::replace(&mut writer, next).close().await;
                        synced_at = writer.checkpoint();
                        state.retry_delay = None;
                        own(&shard, instance, |a| a.rolled());
                    }
                    Err(e) => {
                        log::warn!(
                            "Shard {}: can't start a new AOF segment: {e}; retrying",
                            shard.index()
                        );
                        own(&shard, instance, |a| a.failed(a.end(), &e));
                        state.retry_delay = Some(next_retry_delay(state.retry_delay));
                    }
                }
                continue;
            }
        }
        let (bytes, end, records, urgent) = match own(&shard, instance, |a| {
            let (bytes, end, records) = a.take_pending();
            (bytes, end, records, a.take_urgent())
        }) {
            Some(taken) => taken,
            None => return,
        };
        let mut to_write = std::mem::take(&mut state.rewrite);
        to_write.extend_from_slice(&bytes);
        state.unsynced_records += records;
        if !to_write.is_empty() {
            #[cfg(feature = "fault-injection")]
            let written = match injected(super::faults::Point::Write) {
                Some(e) => Err(e),
                None => writer.write(&to_write).await,
            };
            #[cfg(not(feature = "fault-injection"))]
            let written = writer.write(&to_write).await;
            if let Err(e) = written {
                fail(
                    &shard,
                    instance,
                    &mut writer,
                    &synced_at,
                    &mut state,
                    to_write,
                    end,
                    &e,
                );
                continue;
            }
            state.unsynced.extend_from_slice(&to_write);
        }
        let waiting = own(&shard, instance, |a| a.has_waiters()).unwrap_or(false);
        let due = !state.unsynced.is_empty()
            && match mode {
                FsyncMode::Always => true,
                FsyncMode::Everysec => {
                    urgent || waiting || state.last_sync.elapsed() >= EVERYSEC_INTERVAL
                }
                FsyncMode::No => urgent,
            }
            || !state.unsynced.is_empty() && roll_at.is_some()
            || state.unsynced.len() >= UNSYNCED_MAX_BYTES
            // After a failure only a sync clears it: in `no` nothing else would ask for one.
            || state.retry_delay.is_some() && !state.unsynced.is_empty();
        if !due {
            continue;
        }
        let started = Instant::now();
        #[cfg(feature = "fault-injection")]
        let synced = match injected(super::faults::Point::Sync) {
            Some(e) => Err(e),
            None => writer.sync().await,
        };
        #[cfg(not(feature = "fault-injection"))]
        let synced = writer.sync().await;
        match synced {
            Ok(()) => {
                let records = std::mem::take(&mut state.unsynced_records);
                own(&shard, instance, |a| {
                    a.synced(writer.end(), records, started.elapsed());
                });
                state.unsynced.clear();
                state.unsynced.shrink_to(UNSYNCED_KEEP_BYTES);
                state.last_sync = Instant::now();
                state.retry_delay = None;
                synced_at = writer.checkpoint();
            }
            Err(e) => {
                let again = std::mem::take(&mut state.unsynced);
                let end = writer.end();
                fail(
                    &shard,
                    instance,
                    &mut writer,
                    &synced_at,
                    &mut state,
                    again,
                    end,
                    &e,
                );
            }
        }
    }
}

/// How long the loop may sleep before it must act on its own; `None` until woken.
fn next_wait(mode: FsyncMode, state: &State, pending: bool) -> Option<Duration> {
    if let Some(delay) = state.retry_delay {
        return Some(delay);
    }
    match mode {
        FsyncMode::Always => None,
        FsyncMode::Everysec if pending || !state.unsynced.is_empty() => Some(
            EVERYSEC_INTERVAL
                .saturating_sub(state.last_sync.elapsed())
                .max(MIN_WAIT),
        ),
        FsyncMode::No if pending => Some(NO_FSYNC_WRITE_INTERVAL),
        FsyncMode::Everysec | FsyncMode::No => None,
    }
}

/// A fault armed for tests at `point` (always `None` without the fault-injection feature).
#[cfg(feature = "fault-injection")]
fn injected(point: super::faults::Point) -> Option<std::io::Error> {
    super::faults::with(|f| f.take(point))
}

#[cfg(feature = "fault-injection")]
async fn wait_while_stalled() {
    while super::faults::with(|f| f.stall) {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
}

async fn wait_for_work(shard: &Rc<Shard>, instance: u64, limit: Option<Duration>) {
    // A log that is no longer this loop's wakes it at once, so that it ends.
    let kicked = std::future::poll_fn(|cx| {
        own(shard, instance, |a| a.poll_kick(cx)).unwrap_or(std::task::Poll::Ready(()))
    });
    match limit {
        None => kicked.await,
        Some(d) => {
            futures_lite::future::or(kicked, glommio::timer::sleep(d)).await;
        }
    }
}

/// A write or sync failed: tell the waiters, go back to the last synced point, and keep
/// `again` to write once more after a pause.
#[allow(clippy::too_many_arguments)]
fn fail(
    shard: &Shard,
    instance: u64,
    writer: &mut SegmentWriter,
    synced_at: &super::segment::Checkpoint,
    state: &mut State,
    again: Vec<u8>,
    end: u64,
    error: &std::io::Error,
) {
    log::warn!(
        "Shard {}: writing the AOF ({}) failed: {error}; retrying, writes are refused meanwhile",
        shard.index(),
        writer.path().display()
    );
    own(shard, instance, |a| a.failed(end, error));
    writer.rewind(synced_at);
    let mut rewrite = std::mem::take(&mut state.unsynced);
    rewrite.extend_from_slice(&again);
    state.rewrite = rewrite;
    state.retry_delay = Some(next_retry_delay(state.retry_delay));
}

/// Runs `f` on the shard's log if it is still the one this loop serves: a log turned off and
/// on again while this loop waited on the disk has a loop of its own.
fn own<R>(shard: &Shard, instance: u64, f: impl FnOnce(&mut Aof) -> R) -> Option<R> {
    shard
        .with_aof(|a| (a.instance == instance).then(|| f(a)))
        .flatten()
}

/// Backoff between retries: from the shortest pause, doubling up to the longest.
fn next_retry_delay(last: Option<Duration>) -> Duration {
    last.map_or(RETRY_DELAY_MIN, |d| (d * 2).min(RETRY_DELAY_MAX))
}

/// Creates and opens the segment that continues the log at `start` (named by the shard's
/// current epoch, next to the current one).
async fn next_segment(
    shard: &Shard,
    instance: u64,
    current: &SegmentWriter,
    start: u64,
) -> std::io::Result<SegmentWriter> {
    let epoch = own(shard, instance, |a| a.epoch).unwrap_or(0);
    let index = shard.index();
    let dir = current
        .path()
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let name = super::manifest::segment_name(index, epoch, start);
    let path = glommio::executor()
        .spawn_blocking(move || super::segment::create_file(&dir, &name, index, start))
        .await?;
    SegmentWriter::open(path, start, start).await
}
