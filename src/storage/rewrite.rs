//! Online rewrite, without fork: a shard's log is replaced by a compact base (one record per
//! key) and the segments written after the cut, while the shard keeps serving. The same
//! machinery turns the log on at runtime (the base is then the whole keyspace and the log
//! starts at the cut).
//!
//! 1. **Cut.** One short transaction locks every shard whole (no cross-shard transaction is
//!    half done at that moment) and, on each shard, raises the epoch every log record carries
//!    from now on; a shard being rewritten also asks its commit loop for a new segment starting
//!    at its current end, holds its durable watermark there, and starts a snapshot of its
//!    databases (see `snapshot`). Then the locks go.
//! 2. **New segments.** Once every commit loop has synced the old segment up to the cut and
//!    opened the new one, the manifest is stored with the new segments added, and the
//!    watermarks may move past the cut: nothing acknowledged as durable lives in a file the
//!    manifest does not name.
//! 3. **Bases.** Each shard writes its base in the background, a little at a time.
//! 4. **Switch.** The manifest is stored with each rewritten shard's chain as its new base and
//!    the segments from the cut; only then are the old files deleted.
//!
//! Transaction parts carry the epoch they were logged in: a part of an older epoch than a
//! shard's base is in that base, which is how recovery still sees every cross-shard transaction
//! as whole after some shards were rewritten.

use std::cell::RefCell;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::aof::Aof;
use super::manifest::{self, Base, Manifest, Segment};
use super::segment::{self, SegmentWriter};
use super::snapshot::{self, BaseError, BaseSink, DbSnapshot};
use crate::shard::tx::Transaction;
use crate::shard::Shard;

/// How long turning the log off waits for what was appended to become durable.
const STOP_FLUSH_LIMIT: Duration = Duration::from_secs(5);
/// Pause between attempts to store a manifest that could not be written.
const MANIFEST_RETRY: Duration = Duration::from_secs(1);
/// After this many failed automatic rewrites in a row, the next waits longer each time.
const AUTO_FAILURES_BEFORE_BACKOFF: u64 = 3;
const AUTO_BACKOFF_MAX: Duration = Duration::from_secs(3600);

/// What a rewrite is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Compact the logs of some shards (BGREWRITEAOF, auto-aof-rewrite-percentage).
    Compact,
    /// Start the log of every shard (CONFIG SET appendonly yes).
    TurnOn,
}

/// Which shards a rewrite compacts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shards {
    /// Every shard (BGREWRITEAOF, turning the log on).
    All,
    /// Those whose log has grown past auto-aof-rewrite-percentage, each deciding at the cut:
    /// one rewrite serves every shard that is due.
    Due,
}

/// How a rewrite ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Done,
    Failed,
    /// Stopped because the log was turned off: not a failure.
    Cancelled,
}

/// The log's files as the running server knows them.
#[derive(Debug, Clone)]
pub struct LogFiles {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

/// Process-wide rewrite bookkeeping: one rewrite at a time, its status for INFO, and the
/// manifest it changes.
#[derive(Debug)]
pub struct RewriteStatus {
    in_progress: AtomicBool,
    /// A replica's full sync is taking its snapshot.
    syncing: AtomicBool,
    /// BGREWRITEAOF came while a sync held the snapshots: the cron starts it once they are
    /// free (Valkey's `aof_rewrite_scheduled`).
    scheduled: AtomicBool,
    /// The log is being turned off: nothing may start until it is.
    stopping: AtomicBool,
    /// The log is being turned on: until its bases are written, earlier writes are on no disk.
    turning_on: AtomicBool,
    cancelled: AtomicBool,
    /// Unix milliseconds when the running rewrite started.
    started_ms: AtomicI64,
    last_seconds: AtomicI64,
    last_ok: AtomicBool,
    completed: AtomicU64,
    consecutive_failures: AtomicU64,
    /// Unix milliseconds before which no automatic rewrite starts (backoff after failures).
    auto_not_before_ms: AtomicI64,
    files: Mutex<Option<LogFiles>>,
}

impl Default for RewriteStatus {
    fn default() -> Self {
        RewriteStatus {
            in_progress: AtomicBool::new(false),
            syncing: AtomicBool::new(false),
            scheduled: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            turning_on: AtomicBool::new(false),
            cancelled: AtomicBool::new(false),
            started_ms: AtomicI64::new(0),
            last_seconds: AtomicI64::new(-1),
            last_ok: AtomicBool::new(true),
            completed: AtomicU64::new(0),
            consecutive_failures: AtomicU64::new(0),
            auto_not_before_ms: AtomicI64::new(0),
            files: Mutex::new(None),
        }
    }
}

impl RewriteStatus {
    /// Claims the one rewrite slot; false if a rewrite runs.
    pub fn try_begin(&self) -> bool {
        if self.stopping.load(Ordering::Acquire) {
            return false;
        }
        let mut claimed = self
            .in_progress
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        // The keyspace snapshots of a replica's full sync and of a rewrite cannot overlap.
        if claimed && self.syncing.load(Ordering::SeqCst) {
            self.in_progress.store(false, Ordering::SeqCst);
            claimed = false;
        }
        if claimed {
            self.cancelled.store(false, Ordering::Release);
            self.started_ms
                .store(crate::server::state::unix_ms(), Ordering::Release);
        }
        claimed
    }

    pub fn in_progress(&self) -> bool {
        self.in_progress.load(Ordering::Acquire)
    }

    /// Claims the keyspace snapshots for a replica's full sync; false while a rewrite or
    /// another sync holds them.
    pub fn try_begin_sync(&self) -> bool {
        if self
            .syncing
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return false;
        }
        if self.in_progress.load(Ordering::SeqCst) {
            self.syncing.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Asks for a rewrite of every shard as soon as the snapshots are free.
    pub fn schedule(&self) {
        self.scheduled.store(true, Ordering::Release);
    }

    pub fn scheduled(&self) -> bool {
        self.scheduled.load(Ordering::Acquire)
    }

    /// Claims the rewrite slot for the scheduled rewrite, if one is scheduled and the slot is
    /// free; the schedule is then consumed.
    pub fn try_begin_scheduled(&self) -> bool {
        if !self.scheduled() || !self.try_begin() {
            return false;
        }
        self.scheduled.store(false, Ordering::Release);
        true
    }

    /// Gives back what [`RewriteStatus::try_begin_sync`] claimed.
    pub fn end_sync(&self) {
        self.syncing.store(false, Ordering::SeqCst);
    }

    /// Whether the log is being turned on (its first bases are not written yet).
    pub fn turning_on(&self) -> bool {
        self.turning_on.load(Ordering::Acquire)
    }

    /// The log is being turned off: the running rewrite stops.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
    }

    pub fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Seconds the running rewrite has taken so far, or -1.
    pub fn current_seconds(&self) -> i64 {
        if !self.in_progress() {
            return -1;
        }
        (crate::server::state::unix_ms() - self.started_ms.load(Ordering::Acquire)) / 1000
    }

    pub fn last_seconds(&self) -> i64 {
        self.last_seconds.load(Ordering::Acquire)
    }

    pub fn last_ok(&self) -> bool {
        self.last_ok.load(Ordering::Acquire)
    }

    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Acquire)
    }

    pub fn consecutive_failures(&self) -> u64 {
        self.consecutive_failures.load(Ordering::Acquire)
    }

    /// Whether an automatic rewrite may start now (not during a backoff after failures).
    pub fn auto_allowed(&self, now_ms: i64) -> bool {
        now_ms >= self.auto_not_before_ms.load(Ordering::Acquire)
    }

    fn finish(&self, outcome: Outcome) {
        self.turning_on.store(false, Ordering::Release);
        if outcome == Outcome::Cancelled {
            self.in_progress.store(false, Ordering::Release);
            return;
        }
        let ok = outcome == Outcome::Done;
        let seconds =
            (crate::server::state::unix_ms() - self.started_ms.load(Ordering::Acquire)) / 1000;
        self.last_seconds.store(seconds, Ordering::Release);
        self.last_ok.store(ok, Ordering::Release);
        if ok {
            self.completed.fetch_add(1, Ordering::AcqRel);
            self.consecutive_failures.store(0, Ordering::Release);
            self.auto_not_before_ms.store(0, Ordering::Release);
        } else {
            let failures = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
            if failures >= AUTO_FAILURES_BEFORE_BACKOFF {
                let exponent = u32::try_from(failures - AUTO_FAILURES_BEFORE_BACKOFF)
                    .unwrap_or(u32::MAX)
                    .min(12);
                let wait = (Duration::from_secs(60) * 2u32.pow(exponent)).min(AUTO_BACKOFF_MAX);
                let until = crate::server::state::unix_ms()
                    + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2);
                self.auto_not_before_ms.store(until, Ordering::Release);
            }
        }
        self.in_progress.store(false, Ordering::Release);
    }

    /// The log's directory and manifest, once the log is on.
    pub fn files(&self) -> Option<LogFiles> {
        self.files.lock().ok().and_then(|f| f.clone())
    }

    pub fn set_files(&self, files: Option<LogFiles>) {
        if let Ok(mut f) = self.files.lock() {
            *f = files;
        }
    }
}

/// A shard's part of a rewrite in progress.
#[derive(Default)]
pub struct ShardRewrite {
    /// The writer of a log being turned on, opened before the cut.
    pub writer: Option<SegmentWriter>,
    /// The task writing this shard's base.
    pub base: Option<glommio::Task<Result<u64, BaseError>>>,
}

/// Why a rewrite failed.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    #[error("{0}")]
    Io(String),
    #[error("the append-only log was turned off")]
    Cancelled,
    #[error("a shard did not answer")]
    Mesh,
}

/// Runs a rewrite of `which` shards (every shard for [`Purpose::TurnOn`]) from `home`. The
/// caller has claimed the slot with [`RewriteStatus::try_begin`]; it is released here.
pub async fn run(home: Rc<Shard>, purpose: Purpose, which: Shards) {
    let started = Instant::now();
    if purpose == Purpose::TurnOn {
        home.server
            .rewrite
            .turning_on
            .store(true, Ordering::Release);
    }
    let result = rewrite(&home, purpose, which).await;
    let status = &home.server.rewrite;
    let outcome = match &result {
        Ok(shards) if shards.is_empty() => Outcome::Cancelled,
        Ok(shards) => {
            log::info!(
                "Background AOF rewrite of shard(s) {shards:?} finished successfully in {:.3} \
                 seconds",
                started.elapsed().as_secs_f64()
            );
            Outcome::Done
        }
        Err(RewriteError::Cancelled) => {
            log::info!("Background AOF rewrite stopped: the append-only log was turned off");
            Outcome::Cancelled
        }
        Err(e) => {
            log::warn!("Background AOF rewrite failed: {e}");
            Outcome::Failed
        }
    };
    if outcome != Outcome::Done {
        // Bases still being written stop at their next step; they must be gone before another
        // rewrite starts snapshots of its own.
        finish_bases(&home).await;
    }
    if outcome == Outcome::Failed && purpose == Purpose::TurnOn {
        // The log did not start: stop what runs of it; the cron tries again later.
        status.cancel();
        close_logs(&home).await;
    }
    status.finish(outcome);
}

/// Waits for the base tasks a stopped rewrite left (they see the cancellation or their own
/// error and end their snapshots).
async fn finish_bases(home: &Rc<Shard>) {
    home.server.rewrite.cancel();
    for shard in 0..home.count() {
        let waited = home.call_async(shard, |s| {
            let task = s.rewrite_job().as_mut().and_then(|j| j.base.take());
            async move {
                if let Some(task) = task {
                    let _ = task.await;
                }
            }
        });
        let _ = waited.await;
    }
}

/// Returns the shards rewritten (none when no shard was due).
async fn rewrite(
    home: &Rc<Shard>,
    purpose: Purpose,
    which: Shards,
) -> Result<Vec<usize>, RewriteError> {
    let server = &home.server;
    let config = home.config();
    // The manifest to change, and the one whose files go once the new one is stored.
    let (dir, mut files, old) = match purpose {
        Purpose::Compact => {
            let files = server
                .rewrite
                .files()
                .ok_or(RewriteError::Io("the append-only log is off".into()))?;
            (files.dir.clone(), files.clone(), Some(files.manifest))
        }
        Purpose::TurnOn => {
            let dir = config.aof_dir();
            let (manifest, old) = prepare_dir(&dir, home.count(), server.generation()).await?;
            (dir.clone(), LogFiles { dir, manifest }, old)
        }
    };
    let epoch = files.manifest.epoch + 1;
    files.manifest.epoch = epoch;
    if purpose == Purpose::Compact {
        // Transaction parts logged from the cut on carry the new epoch; the stored manifest
        // must know it first, or a later rewrite could hand out the same epoch again and a
        // base of that epoch would wrongly stand for those parts.
        store(&files).await.map_err(RewriteError::Io)?;
        server.rewrite.set_files(Some(files.clone()));
    }

    check_cancelled(home)?;
    let cut = cut_all(home, purpose, epoch, &which, &dir).await?;
    let cuts: Vec<u64> = cut.iter().map(|&(position, _)| position).collect();
    let shards: Vec<usize> = (0..cut.len()).filter(|&s| cut[s].1).collect();
    let shards = shards.as_slice();
    if shards.is_empty() {
        return Ok(Vec::new());
    }
    check_cancelled(home)?;

    if purpose == Purpose::Compact {
        // Step 2: the new segments join the manifest before anything in them counts as durable.
        for &shard in shards {
            let wait = home.call_async(shard, |s| {
                let s = Rc::clone(s);
                std::future::poll_fn(move |cx| {
                    s.with_aof(|a| a.poll_rolled(cx))
                        .unwrap_or(std::task::Poll::Ready(()))
                })
            });
            wait.await.map_err(|_| RewriteError::Mesh)?;
        }
        check_cancelled(home)?;
        for &shard in shards {
            files.manifest.chains[shard].segments.push(Segment {
                start: cuts[shard],
                file: manifest::segment_name(shard, epoch, cuts[shard]),
            });
        }
        store_until_done(home, &files).await?;
        server.rewrite.set_files(Some(files.clone()));
        release_holds(home, shards).await?;
    }

    // Step 3: the bases.
    let mut base_bytes = vec![0u64; home.count()];
    let mut failure = None;
    for &shard in shards {
        let result = home
            .call_async(shard, |s| {
                let task = s.rewrite_job().as_mut().and_then(|j| j.base.take());
                async move {
                    match task {
                        Some(t) => t.await.map_err(|e| e.to_string()),
                        None => Err("no base is being written".to_string()),
                    }
                }
            })
            .await
            .map_err(|_| RewriteError::Mesh)?;
        match result {
            Ok(bytes) => base_bytes[shard] = bytes,
            Err(e) => failure = Some(e),
        }
    }
    if let Some(e) = failure {
        remove_files(&dir, shards.iter().map(|&s| manifest::base_name(s, epoch))).await;
        check_cancelled(home)?;
        return Err(RewriteError::Io(e));
    }
    check_cancelled(home)?;
    // A shard left as it is may still hold parts of transactions from before the cut that are
    // not durable; once rewritten shards stop naming their older segments, those parts would
    // have no partner to be checked against.
    for shard in (0..home.count()).filter(|s| !shards.contains(s)) {
        let cut = cuts[shard];
        let durable = home
            .call_async(shard, move |s| s.durable(cut, true))
            .await
            .map_err(|_| RewriteError::Mesh)?;
        durable.map_err(|f| RewriteError::Io(f.message))?;
    }
    check_cancelled(home)?;

    // Step 4: the switch.
    for &shard in shards {
        let chain = &mut files.manifest.chains[shard];
        chain.base = Some(Base {
            epoch,
            file: manifest::base_name(shard, epoch),
        });
        // The chain goes on in the segment opened at the cut alone: the base holds everything
        // before it (older segments may start at the same position if nothing was written
        // in between).
        chain.segments = vec![Segment {
            start: cuts[shard],
            file: manifest::segment_name(shard, epoch, cuts[shard]),
        }];
    }
    store(&files).await.map_err(RewriteError::Io)?;
    server.rewrite.set_files(Some(files.clone()));
    let kept: HashSet<&str> = files.manifest.files().collect();
    let stale: Vec<String> = old
        .iter()
        .flat_map(Manifest::files)
        .filter(|f| !kept.contains(f))
        .map(str::to_string)
        .collect();
    for &shard in shards {
        let bytes = base_bytes[shard];
        let cut = cuts[shard];
        home.call(shard, move |s| {
            s.with_aof(|a| {
                a.base_bytes = bytes;
                a.chain_start = cut;
                a.rewrite_base_bytes = a.size_bytes();
            });
        })
        .await
        .map_err(|_| RewriteError::Mesh)?;
    }
    if purpose == Purpose::TurnOn {
        release_holds(home, shards).await?;
    }
    remove_files(&dir, stale).await;
    Ok(shards.to_vec())
}

fn check_cancelled(home: &Shard) -> Result<(), RewriteError> {
    if home.server.rewrite.cancelled() {
        Err(RewriteError::Cancelled)
    } else {
        Ok(())
    }
}

/// For a log being turned on: makes the directory, reads what manifest it has (its numbers go
/// on, so no file name is reused) and removes files no manifest names. Returns the new
/// manifest and the old one.
async fn prepare_dir(
    dir: &Path,
    shards: usize,
    generation: u32,
) -> Result<(Manifest, Option<Manifest>), RewriteError> {
    let dir = dir.to_path_buf();
    glommio::executor()
        .spawn_blocking(move || {
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("can't create {}: {e}", dir.display()))?;
            let existing = Manifest::load(&dir).unwrap_or_else(|e| {
                log::warn!("{e}; the log starts over");
                None
            });
            let mut manifest = Manifest::fresh(shards);
            if let Some(old) = &existing {
                manifest.epoch = old.epoch;
                manifest.generation = old.generation;
                remove_unnamed_files(&dir, old);
            }
            manifest.generation = manifest.generation.max(generation);
            Ok((manifest, existing))
        })
        .await
        .map_err(RewriteError::Io)
}

/// Creates and opens every shard's first segment before the cut. It starts where the shard's
/// last log ended (0 if it never had one): positions a connection remembers for WAITAOF stay
/// comparable across a log turned off and on.
async fn open_first_segments(home: &Rc<Shard>, dir: &Path, epoch: u64) -> Result<(), RewriteError> {
    for shard in 0..home.count() {
        let dir = dir.to_path_buf();
        let opened = home
            .call_async(shard, move |s| {
                let s = Rc::clone(s);
                async move {
                    let start = s.log_floor();
                    let name = manifest::segment_name(shard, epoch, start);
                    let path = glommio::executor()
                        .spawn_blocking(move || segment::create_file(&dir, &name, shard, start))
                        .await
                        .map_err(|e| format!("can't create a segment: {e}"))?;
                    let writer = SegmentWriter::open(path, start, start)
                        .await
                        .map_err(|e| format!("can't open a segment: {e}"))?;
                    s.rewrite_job().get_or_insert_with(Default::default).writer = Some(writer);
                    Ok::<(), String>(())
                }
            })
            .await
            .map_err(|_| RewriteError::Mesh)?;
        opened.map_err(RewriteError::Io)?;
    }
    Ok(())
}

/// Step 1: locks every shard, cuts, unlocks. Returns each shard's cut position and whether it
/// is being rewritten.
async fn cut_all(
    home: &Rc<Shard>,
    purpose: Purpose,
    epoch: u64,
    which: &Shards,
    dir: &Path,
) -> Result<Vec<(u64, bool)>, RewriteError> {
    let tx = Transaction::lock_every_shard(home)
        .await
        .map_err(|_| RewriteError::Mesh)?;
    if purpose == Purpose::TurnOn {
        // Opened under the locks: no write moves a shard's log floor (the replication backlog
        // numbers writes while the log is off) between the segment's start and the cut.
        if let Err(e) = open_first_segments(home, dir, epoch).await {
            tx.commit().await.map_err(|_| RewriteError::Mesh)?;
            return Err(e);
        }
    }
    let generation = home.server.generation();
    let calls: Vec<_> = (0..home.count())
        .map(|shard| {
            let all = *which == Shards::All;
            let base = dir.join(manifest::base_name(shard, epoch));
            home.call(shard, move |s| {
                let config = s.config();
                let due = all
                    || s.with_aof(|a| {
                        wants_auto_rewrite(
                            a,
                            config.auto_aof_rewrite_percentage,
                            config.auto_aof_rewrite_min_size,
                        )
                    })
                    .unwrap_or(false);
                let position = cut(s, purpose, epoch, generation, due.then_some(base));
                (position, due)
            })
        })
        .collect();
    tx.finish_calls(calls).await.map_err(|_| RewriteError::Mesh)
}

/// One shard's cut (under the lock of every shard): the new epoch; for a shard being
/// rewritten, a new segment from here and a snapshot whose base goes to `base`.
fn cut(
    shard: &Rc<Shard>,
    purpose: Purpose,
    epoch: u64,
    generation: u32,
    base: Option<PathBuf>,
) -> u64 {
    let position = match purpose {
        Purpose::TurnOn => {
            let writer = shard.rewrite_job().as_mut().and_then(|j| j.writer.take());
            let start = shard.log_floor();
            if shard.server.rewrite.cancelled() {
                return start;
            }
            let config = shard.config();
            let index = u16::try_from(shard.index()).unwrap_or(u16::MAX);
            let mut aof = Aof::new(index, generation, epoch, config.appendfsync, start, 0);
            aof.hold_at(start);
            shard.set_aof(Some(aof));
            if let Some(writer) = writer {
                glommio::spawn_local(super::commit::run(Rc::clone(shard), writer)).detach();
            }
            start
        }
        Purpose::Compact => shard
            .with_aof(|a| {
                a.epoch = epoch;
                if base.is_some() {
                    a.request_roll()
                } else {
                    a.end()
                }
            })
            .unwrap_or(0),
    };
    if let Some(path) = base {
        // A finished sync's stop may still be on its way here: with its snapshot gone it
        // finds nothing, and cannot end the rewrite's, which replace it.
        shard.sync_sink().take();
        let sink = Rc::new(RefCell::new(BaseSink::default()));
        for (i, db) in shard.dbs().iter_mut().enumerate() {
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            db.start_snapshot(DbSnapshot::new(index, Rc::clone(&sink)));
        }
        let task = glommio::spawn_local(snapshot::write_base(Rc::clone(shard), sink, path));
        shard
            .rewrite_job()
            .get_or_insert_with(Default::default)
            .base = Some(task);
    }
    position
}

async fn release_holds(home: &Rc<Shard>, shards: &[usize]) -> Result<(), RewriteError> {
    for &shard in shards {
        home.call(shard, |s| {
            s.with_aof(Aof::release_hold);
        })
        .await
        .map_err(|_| RewriteError::Mesh)?;
    }
    Ok(())
}

/// Stores the manifest, trying again until it works or the log is turned off: the new
/// segments already hold writes waiting to be acknowledged.
async fn store_until_done(home: &Shard, files: &LogFiles) -> Result<(), RewriteError> {
    loop {
        match store(files).await {
            Ok(()) => return Ok(()),
            Err(e) => log::warn!("{e}; retrying"),
        }
        glommio::timer::sleep(MANIFEST_RETRY).await;
        check_cancelled(home)?;
    }
}

async fn store(files: &LogFiles) -> Result<(), String> {
    let files = files.clone();
    glommio::executor()
        .spawn_blocking(move || {
            files.manifest.store(&files.dir).map_err(|e| {
                format!(
                    "can't write the AOF manifest in {}: {e}",
                    files.dir.display()
                )
            })
        })
        .await
}

async fn remove_files(dir: &Path, names: impl IntoIterator<Item = String>) {
    let dir = dir.to_path_buf();
    let names: Vec<String> = names.into_iter().collect();
    glommio::executor()
        .spawn_blocking(move || {
            for name in names {
                match std::fs::remove_file(dir.join(&name)) {
                    Ok(()) => log::info!("Removed the old AOF file {name}"),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => log::warn!("Can't remove the old AOF file {name}: {e}"),
                }
            }
        })
        .await;
}

/// Removes log files in `dir` that `manifest` does not name: what a rewrite interrupted by a
/// crash left behind. Only corekv's own file names are touched.
pub fn remove_unnamed_files(dir: &Path, manifest: &Manifest) {
    let named: HashSet<&str> = manifest.files().collect();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if !manifest::is_log_file_name(name) || named.contains(name) {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => log::info!("Removed {name}, left by an unfinished AOF rewrite"),
            Err(e) => log::warn!("Can't remove {name}: {e}"),
        }
    }
}

/// Turns every shard's log off (CONFIG SET appendonly no): a rewrite or start in progress is
/// cancelled, and no log can start until every shard's is closed.
pub async fn stop_logs(home: &Rc<Shard>) {
    let status = &home.server.rewrite;
    status.stopping.store(true, Ordering::Release);
    status.cancel();
    close_logs(home).await;
    status.set_files(None);
    status.stopping.store(false, Ordering::Release);
}

/// Closes every shard's log, all shards at once: what was appended is made durable first (as
/// far as a rewrite in progress lets it, and for a bounded time: a failing disk must not keep
/// the log from being turned off); writes still waiting then get an error.
async fn close_logs(home: &Rc<Shard>) {
    let calls: Vec<_> = (0..home.count())
        .map(|shard| {
            home.call_async(shard, |s| {
                let s = Rc::clone(s);
                async move {
                    let target = s.with_aof(|a| a.flush_target()).unwrap_or(0);
                    let flushed = async {
                        let _ = s.durable(target, true).await;
                    };
                    futures_lite::future::or(flushed, glommio::timer::sleep(STOP_FLUSH_LIMIT))
                        .await;
                    let closed = s.aof().take();
                    if let Some(mut aof) = closed {
                        s.set_log_floor(aof.end());
                        aof.close();
                    }
                    s.set_aof(None);
                    // A base being written stops by itself (it sees the cancellation) and
                    // ends its snapshots; only a log not started yet is dropped here.
                    if let Some(job) = s.rewrite_job().as_mut() {
                        job.writer = None;
                    }
                }
            })
        })
        .collect();
    for call in calls {
        let _ = call.await;
    }
}

/// Whether `chain` of shard `shard` has grown enough since its last rewrite for an automatic
/// one (auto-aof-rewrite-percentage / auto-aof-rewrite-min-size).
pub fn wants_auto_rewrite(aof: &Aof, percentage: u64, min_size: u64) -> bool {
    if percentage == 0 {
        return false;
    }
    let size = aof.size_bytes();
    if size < min_size {
        return false;
    }
    let base = aof.rewrite_base_bytes.max(1);
    size.saturating_sub(base).saturating_mul(100) / base >= percentage
}
