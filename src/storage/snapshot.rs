//! A point-in-time copy of a shard's keyspace, written while the shard keeps serving (the base
//! of an AOF rewrite, or of a log turned on at runtime).
//!
//! At the cut, every database starts a [`DbSnapshot`]. A background task walks each keyspace
//! and writes every key's state into the base; a key that is about to change before the walk
//! reached it is written first, with its value as of the cut (and a key created after the cut
//! is marked done, absent). So the base is exactly the keyspace at the cut, without stopping the
//! shard or forking, and the log from the cut on replays on top of it.

use std::cell::RefCell;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::record;
use super::segment::SegmentWriter;
use crate::shard::dict::Dict;
use crate::shard::small_bytes::SmallBytes;
use crate::shard::value::Value;
use crate::shard::Shard;

/// Buckets walked between checks of the time budget.
const STEP_BUCKETS: usize = 32;
/// Longest stretch of walking before the shard serves its clients again.
const STEP_BUDGET: Duration = Duration::from_micros(250);
/// Pause between stretches of walking. It must be a real wait: the executor then polls for
/// I/O (a zero-length timer or a plain yield keeps it running tasks, and clients would wait
/// milliseconds for their turn).
pub const STEP_PAUSE: Duration = Duration::from_micros(100);

/// Encoded key-state records for the base, in order, and the position of the next one.
#[derive(Debug, Default)]
pub struct BaseSink {
    pub bytes: Vec<u8>,
    pub position: u64,
    pub keys: u64,
}

impl BaseSink {
    fn emit(&mut self, db: u32, key: &[u8], expire: Option<i64>, value: &Value) {
        let Some(len) = value.with_str(|bytes| {
            record::encode_key_state(&mut self.bytes, self.position, 0, db, key, expire, bytes)
        }) else {
            return;
        };
        self.position += len as u64;
        self.keys += 1;
    }
}

/// One database's part of a snapshot in progress.
pub struct DbSnapshot {
    db: u32,
    /// Keys changed or created since the cut: their state at the cut is in the base already
    /// (or they had none), and the walk must skip them. Only keys touched during the rewrite
    /// are here, not every key (whole keys, not hashes: a collision must never leave a key out).
    done: HashSet<Vec<u8>, foldhash::fast::FixedState>,
    sink: Rc<RefCell<BaseSink>>,
    cursor: u64,
    finished: bool,
    /// The database's contents at a FLUSHDB/FLUSHALL during the walk: the walk goes on over
    /// them (they are the state at the cut for every key not yet written) instead of writing
    /// them all at once.
    frozen: Option<(Dict<Value>, Dict<i64>)>,
}

impl DbSnapshot {
    pub fn new(db: u32, sink: Rc<RefCell<BaseSink>>) -> DbSnapshot {
        DbSnapshot {
            db,
            done: HashSet::with_hasher(foldhash::fast::FixedState::with_seed(fastrand::u64(..))),
            sink,
            cursor: 0,
            finished: false,
            frozen: None,
        }
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Before `key` changes: writes its state as of the cut unless already done.
    pub fn preserve(&mut self, key: &[u8], keys: &Dict<Value>, expires: &Dict<i64>) {
        // Once the walk is complete every key of the cut is in the base; after a flush, the
        // state at the cut of every key not yet written is in the frozen tables.
        if self.finished || self.frozen.is_some() || self.done.contains(key) {
            return;
        }
        self.done.insert(key.to_vec());
        if let Some(value) = keys.get(key) {
            let expire = expires.get(key).copied();
            self.sink.borrow_mut().emit(self.db, key, expire, value);
        }
    }

    /// Takes the contents a flush removed, to walk on over them. Gives them back (to be freed)
    /// if the walk no longer needs them.
    pub fn freeze(
        &mut self,
        keys: Dict<Value>,
        expires: Dict<i64>,
    ) -> Option<(Dict<Value>, Dict<i64>)> {
        if self.finished || self.frozen.is_some() {
            return Some((keys, expires));
        }
        self.frozen = Some((keys, expires));
        None
    }

    /// Before the contents move to another database (SWAPDB): writes every key not yet done.
    pub fn preserve_all(&mut self, keys: &Dict<Value>, expires: &Dict<i64>) {
        if self.frozen.is_some() {
            return;
        }
        let pending: Vec<SmallBytes> = keys
            .iter()
            .filter(|(k, _)| !self.done.contains(k.as_slice()))
            .map(|(k, _)| k.clone())
            .collect();
        for key in pending {
            self.preserve(&key, keys, expires);
        }
        self.finished = true;
    }

    /// Walks up to `steps` buckets of the keyspace, writing the keys not yet done. Returns true
    /// when the walk is complete.
    pub fn step(&mut self, live: &Dict<Value>, live_expires: &Dict<i64>, steps: usize) -> bool {
        if self.finished {
            return true;
        }
        let (keys, expires) = match &self.frozen {
            Some((keys, expires)) => (keys, expires),
            None => (live, live_expires),
        };
        let mut sink = self.sink.borrow_mut();
        for _ in 0..steps {
            // Keys written here are not marked done: a key the walk meets twice (a table
            // growing under it) is written twice with the same state, which replays the same;
            // a later change still finds it not done and writes its state before the change,
            // which is still its state at the cut.
            self.cursor = keys.scan(self.cursor, |key, value| {
                if !self.done.contains(key.as_slice()) {
                    let expire = expires.get(key.as_slice()).copied();
                    sink.emit(self.db, key, expire, value);
                }
            });
            if self.cursor == 0 {
                self.finished = true;
                break;
            }
        }
        drop(sink);
        if self.finished {
            if let Some(tables) = self.frozen.take() {
                dispose(tables);
            }
        }
        self.finished
    }
}

/// Frees tables a flush left to the walk on a helper thread: dropping millions of entries
/// would stall the shard.
fn dispose(tables: (Dict<Value>, Dict<i64>)) {
    let spawned = std::thread::Builder::new()
        .name("corekv-lazyfree".into())
        .spawn(move || drop(tables));
    if let Err(e) = spawned {
        log::warn!("could not start a thread to free memory: {e}");
    }
}

/// Why a base could not be written.
#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the rewrite was cancelled")]
    Cancelled,
}

/// Writes shard's base at `path`: walks every database's snapshot (started at the cut) a
/// little at a time, so that clients are served in between, and writes the records as they
/// come; then syncs the file and its directory. Returns the base's size. The snapshots end
/// with the task, complete or not; a base left unfinished is removed.
pub async fn write_base(
    shard: Rc<Shard>,
    sink: Rc<RefCell<BaseSink>>,
    path: PathBuf,
) -> Result<u64, BaseError> {
    let result = copy_keyspace(&shard, &sink, &path).await;
    for db in shard.dbs().iter_mut() {
        db.finish_snapshot();
    }
    if result.is_err() {
        let _ = std::fs::remove_file(&path);
    }
    if shard.server.rewrite.cancelled() {
        return Err(BaseError::Cancelled);
    }
    result
}

async fn copy_keyspace(
    shard: &Shard,
    sink: &RefCell<BaseSink>,
    path: &Path,
) -> Result<u64, BaseError> {
    let io = |source| BaseError::Io {
        path: path.to_path_buf(),
        source,
    };
    // A base is laid out as a segment from position 0 (header block, then records) and written
    // the same way: direct I/O through io_uring, so neither a helper thread nor the kernel's
    // page cache writeback competes with the shard for its CPU.
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let index = shard.index();
    let created = blocking(move || super::segment::create_file(&dir, &name, index, 0))
        .await
        .map_err(io)?;
    let mut writer = SegmentWriter::open(created, 0, 0).await.map_err(io)?;
    let result = async {
        let written = copy_into(shard, sink, &mut writer).await?;
        writer.trim().await?;
        writer.sync().await?;
        Ok(written)
    }
    .await;
    writer.close().await;
    result.map_err(io)
}

/// Walks the snapshots, a bounded stretch at a time, and writes their records to `writer`.
async fn copy_into(
    shard: &Shard,
    sink: &RefCell<BaseSink>,
    writer: &mut SegmentWriter,
) -> std::io::Result<u64> {
    let mut written = 0u64;
    loop {
        if shard.server.rewrite.cancelled() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "the rewrite was cancelled",
            ));
        }
        let complete = walk(shard);
        let chunk = std::mem::take(&mut sink.borrow_mut().bytes);
        if !chunk.is_empty() {
            written += chunk.len() as u64;
            writer.write(&chunk).await?;
        }
        if complete {
            return Ok(written);
        }
        glommio::timer::sleep(STEP_PAUSE).await;
    }
}

/// Walks the shard's snapshots for one stretch of [`STEP_BUDGET`]; true once they are complete.
/// The caller pauses for [`STEP_PAUSE`] before the next stretch.
pub fn walk(shard: &Shard) -> bool {
    let started = Instant::now();
    loop {
        let complete = shard
            .dbs()
            .iter_mut()
            .all(|db| db.snapshot_step(STEP_BUCKETS));
        if complete || started.elapsed() >= STEP_BUDGET {
            return complete;
        }
    }
}

/// Runs file I/O on the executor's helper thread, off the shard's event loop.
async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<R> + Send + 'static,
) -> std::io::Result<R> {
    glommio::executor().spawn_blocking(f).await
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::shard::db::Db;

    /// The key states a sink holds, in order: (key, value, expiry). A key written twice must
    /// have been written with the same state both times.
    fn base_states(sink: &RefCell<BaseSink>) -> Vec<(Vec<u8>, Vec<u8>, Option<i64>)> {
        let bytes = bytes::Bytes::from(sink.borrow().bytes.clone());
        let mut at = 0;
        let mut states = Vec::new();
        let mut seen: HashMap<Vec<u8>, (Vec<u8>, Option<i64>)> = HashMap::new();
        while at < bytes.len() {
            let record::Read::Record(r, len) = record::decode(&bytes, at, at as u64) else {
                panic!("bad record at {at}");
            };
            if let record::Body::KeyState(k) = r.body {
                let record::StoredValue::String(v) = k.value;
                let state = (v.to_vec(), k.expire_ms);
                if let Some(earlier) = seen.insert(k.key.to_vec(), state.clone()) {
                    assert_eq!(earlier, state, "written twice with different states");
                }
                states.push((k.key.to_vec(), state.0, state.1));
            }
            at += len;
        }
        states
    }

    #[test]
    fn base_is_the_keyspace_at_the_cut() {
        let mut db = Db::default();
        for i in 0..2000 {
            db.set(format!("k{i}").as_bytes(), Value::Int(i), false);
        }
        let sink = Rc::new(RefCell::new(BaseSink::default()));
        db.start_snapshot(DbSnapshot::new(0, Rc::clone(&sink)));
        // Changes during the walk: the base must still hold the values of the cut.
        let mut rounds = 0;
        while !db.snapshot_step(8) {
            rounds += 1;
            let i = rounds * 7 % 2000;
            db.set(format!("k{i}").as_bytes(), Value::Int(-1), false);
            db.remove(format!("k{}", (i + 1) % 2000).as_bytes(), 0);
            db.set(format!("new{rounds}").as_bytes(), Value::Int(1), false);
        }
        db.finish_snapshot();
        assert!(sink.borrow().keys >= 2000);
        let seen: HashMap<Vec<u8>, Vec<u8>> = base_states(&sink)
            .into_iter()
            .map(|(key, value, _)| (key, value))
            .collect();
        for i in 0..2000 {
            assert_eq!(seen[format!("k{i}").as_bytes()], i.to_string().into_bytes());
        }
        assert_eq!(
            seen.len(),
            2000,
            "a key created after the cut is in the base"
        );
    }

    #[test]
    fn a_flush_during_the_walk_leaves_the_base_at_the_cut() {
        let mut db = Db::default();
        for i in 0..3000 {
            db.set(format!("k{i}").as_bytes(), Value::Int(i), false);
        }
        db.set_expire(b"k7", 4_000_000_000_000);
        let sink = Rc::new(RefCell::new(BaseSink::default()));
        db.start_snapshot(DbSnapshot::new(0, Rc::clone(&sink)));
        assert!(!db.snapshot_step(4));
        db.set(b"k1", Value::Int(-1), false);
        let (old_keys, _) = db.flush();
        assert_eq!(old_keys.len(), 0, "the walk keeps the flushed contents");
        db.set(b"k2", Value::Int(-2), false);
        db.set(b"after", Value::Int(1), false);
        while !db.snapshot_step(16) {}
        db.finish_snapshot();
        let seen: HashMap<Vec<u8>, (Vec<u8>, Option<i64>)> = base_states(&sink)
            .into_iter()
            .map(|(key, value, expire)| (key, (value, expire)))
            .collect();
        assert_eq!(seen.len(), 3000);
        for i in 0..3000 {
            assert_eq!(
                seen[format!("k{i}").as_bytes()].0,
                i.to_string().into_bytes()
            );
        }
        assert_eq!(seen[b"k7".as_slice()].1, Some(4_000_000_000_000));
    }
}
