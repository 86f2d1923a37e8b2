//! Loading the log at start-up: every shard replays its own chain, all shards at once.
//!
//! 1. **Scan**: read the shard's segments, decode records in order, and find where valid data
//!    ends. A record that fails (cut short, checksum, position) with nothing valid after it is a
//!    torn tail: cut off and logged (`aof-load-truncated yes`, the default). One followed by
//!    valid records from a later commit is corruption: the start is refused, naming the file and
//!    the offset.
//! 2. **Agree**: shards publish which cross-shard transactions they hold a durable part of.
//! 3. **Replay**: records are applied in order with expiry switched off (commands were logged
//!    in a deterministic form); a transaction part is applied only if every shard it wrote on
//!    holds its part too, so a cross-shard transaction is all or nothing after a crash.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Barrier, Mutex};
use std::time::Instant;

use bytes::Bytes;

use super::manifest::{Chain, Segment};
use super::record::{self, Body, LoggedCommand, Read, Record, StoredValue, TxTag};
use super::segment::{self, HEADER_BYTES};
use crate::command::table::{Handler, Registry};
use crate::command::KeyCtx;
use crate::config::Config;
use crate::protocol::{Args, ReplyBuf};
use crate::shard::db::Db;
use crate::shard::value::Value;

/// Why a shard's log cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error(
        "Bad AOF: {file} is corrupt at offset {offset} ({what}) and valid records follow it; \
         refusing to start. Inspect it with corekv-check-aof."
    )]
    Corrupt {
        file: PathBuf,
        offset: u64,
        what: String,
    },
    #[error(
        "Bad AOF: {file} ends with a truncated record at offset {offset} and aof-load-truncated \
         is no. Start with aof-load-truncated yes or run corekv-check-aof --fix."
    )]
    Truncated { file: PathBuf, offset: u64 },
    #[error("Bad AOF: {file}: {reason}")]
    File { file: PathBuf, reason: String },
    #[error("Another shard could not load its AOF")]
    OtherShard,
}

/// What shards tell each other between scanning and replaying.
pub struct Board {
    tags: Mutex<Vec<HashSet<TxTag>>>,
    base_epochs: Mutex<Vec<u64>>,
    failed: Mutex<bool>,
    barrier: Barrier,
}

impl Board {
    pub fn new(shards: usize) -> Board {
        Board {
            tags: Mutex::new(vec![HashSet::new(); shards]),
            base_epochs: Mutex::new(vec![0; shards]),
            failed: Mutex::new(false),
            barrier: Barrier::new(shards),
        }
    }

    /// Records what a shard's scan found (its transaction parts and snapshot epoch).
    pub fn publish(&self, shard: usize, scan: &Scan) {
        if let Ok(mut all) = self.tags.lock() {
            all[shard] = scan.tags.clone();
        }
        if let Ok(mut epochs) = self.base_epochs.lock() {
            epochs[shard] = scan.base_epoch;
        }
    }

    /// Publishes a shard's scan (nothing and `failed` on error) and waits for every shard.
    /// Returns false if any shard failed.
    fn publish_and_wait(&self, shard: usize, scan: Option<&Scan>, failed: bool) -> bool {
        if let Some(scan) = scan {
            self.publish(shard, scan);
        }
        if failed {
            if let Ok(mut f) = self.failed.lock() {
                *f = true;
            }
        }
        // Start-up only: every shard thread waits here for the others, with nothing else to run.
        self.barrier.wait();
        !self.failed.lock().map(|f| *f).unwrap_or(true)
    }

    /// True when every shard `tx` wrote on holds its part (or snapshotted after it).
    fn complete(&self, tx: TxTag, epoch: u64, shards: &[u16]) -> bool {
        let (Ok(tags), Ok(epochs)) = (self.tags.lock(), self.base_epochs.lock()) else {
            return false;
        };
        shards.iter().all(|&s| {
            let s = usize::from(s);
            tags.get(s).is_some_and(|t| t.contains(&tx))
                || epochs.get(s).is_some_and(|&e| e > epoch)
        })
    }
}

/// The result of loading one shard.
pub struct Loaded {
    /// Log position where appending continues.
    pub end: u64,
    pub last_batch: u32,
    /// The segment to append to and its first position.
    pub segment_path: PathBuf,
    pub segment_start: u64,
    /// Where the chain's first segment starts.
    pub chain_start: u64,
    /// Size of the base file (0 without one).
    pub base_bytes: u64,
}

/// Scans, agrees and replays shard `shard`'s chain into `dbs` (every shard thread calls this
/// at the same time: they meet on `board`).
pub fn load(
    shard: usize,
    dir: &Path,
    chain: &Chain,
    board: &Board,
    dbs: &mut [Db],
    config: &Config,
) -> Result<Loaded, RecoveryError> {
    let started = Instant::now();
    let scanned = scan_chain(shard, dir, chain, config.aof_load_truncated);
    let all_ok = board.publish_and_wait(shard, scanned.as_ref().ok(), scanned.is_err());
    let scan = scanned?;
    if !all_ok {
        return Err(RecoveryError::OtherShard);
    }
    let skipped = replay(&scan, board, dir, chain, dbs, config)?;
    if skipped > 0 {
        log::warn!(
            "Shard {shard}: skipped {skipped} cross-shard transaction part(s) whose other parts \
             never reached disk"
        );
    }
    let last = chain.segments.last().ok_or_else(|| RecoveryError::File {
        file: dir.to_path_buf(),
        reason: format!("shard {shard} has no segment in the manifest"),
    })?;
    let chain_start = chain.segments.first().map_or(0, |s| s.start);
    let base_bytes = chain.base.as_ref().map_or(0, |b| {
        std::fs::metadata(dir.join(&b.file)).map_or(0, |m| m.len())
    });
    log::info!(
        "Shard {shard}: loaded a {base_bytes}-byte base and {} record(s), {} bytes of AOF, in \
         {:.3} seconds",
        scan.records,
        scan.end - chain_start,
        started.elapsed().as_secs_f64()
    );
    Ok(Loaded {
        end: scan.end,
        last_batch: scan.last_batch,
        segment_path: dir.join(&last.file),
        segment_start: last.start,
        chain_start,
        base_bytes,
    })
}

/// Applies a scanned chain (its base first) to `dbs`; returns how many transaction parts were
/// skipped because their other parts never reached disk.
pub fn replay(
    scan: &Scan,
    board: &Board,
    dir: &Path,
    chain: &Chain,
    dbs: &mut [Db],
    config: &Config,
) -> Result<u64, RecoveryError> {
    let base = match &chain.base {
        Some(b) => Some(scan_base(scan.shard, &dir.join(&b.file))?),
        None => None,
    };
    // Sized once up front: growing a table of millions of keys step by step while loading
    // costs more than the inserts themselves. A log that rewrote the same keys over and over
    // gets a table too large (it shrinks after loading, like any mostly empty one), so a
    // shard reserves at most RESERVE_MAX_KEYS in all; past that its tables grow while loading.
    let mut writes = scan.writes_per_db.clone();
    if let Some((_, base_writes)) = &base {
        for (&db, &n) in base_writes {
            *writes.entry(db).or_default() += n;
        }
    }
    let mut budget = RESERVE_MAX_KEYS;
    for (&db, &n) in &writes {
        if let Some(db) = dbs.get_mut(db as usize) {
            let keys = usize::try_from(n).map_or(budget, |n| n.min(budget));
            db.reserve_keys(keys);
            budget -= keys;
        }
    }
    let mut replay = Replay::new(dbs, config);
    if let Some((data, _)) = &base {
        load_base(data, &mut replay);
    }
    let mut skipped = 0;
    let mut records = scan.iter();
    // Records decoded ahead of the one applied, so the cache misses of their keys' buckets
    // (and then of the buckets' first entries) overlap instead of following one another.
    let mut ahead = VecDeque::with_capacity(PREFETCH_AHEAD);
    ahead.extend(records.by_ref().take(PREFETCH_AHEAD));
    for record in ahead.iter() {
        prefetch_keys(replay.dbs, record, false);
    }
    while let Some(record) = ahead.pop_front() {
        if let Some(next) = records.next() {
            prefetch_keys(replay.dbs, &next, false);
            ahead.push_back(next);
        }
        if let Some(soon) = ahead.get(PREFETCH_AHEAD / 2) {
            prefetch_keys(replay.dbs, soon, true);
        }
        match &record.body {
            Body::Commands(commands) => replay.commands(commands),
            Body::TxPart {
                tx,
                epoch,
                shards,
                commands,
            } => {
                if board.complete(*tx, *epoch, shards) {
                    replay.commands(commands);
                } else {
                    skipped += 1;
                }
            }
            Body::KeyState(state) => replay.key_state(state),
        }
    }
    replay.finish();
    Ok(skipped)
}

/// The most keys a shard's keyspaces are sized for, in all, before loading (32 MiB of
/// buckets).
const RESERVE_MAX_KEYS: usize = 1 << 22;

/// How many records replay decodes ahead of the one it applies.
const PREFETCH_AHEAD: usize = 16;

/// Hints where applying `record` will look: the first key of each command (where keyed
/// commands have it) or the key of a key state.
fn prefetch_keys(dbs: &[Db], record: &Record, chain: bool) {
    let hint = |db: u32, key: &[u8]| {
        if let Some(db) = dbs.get(db as usize) {
            db.prefetch_key(key, chain);
        }
    };
    match &record.body {
        Body::Commands(commands) | Body::TxPart { commands, .. } => {
            for c in commands.iter().filter(|c| c.args.len() > 1) {
                hint(c.db, c.args.get(1));
            }
        }
        Body::KeyState(state) => hint(state.db, &state.key),
    }
}

/// A shard's chain, read and checked.
pub struct Scan {
    /// The shard whose chain this is.
    pub shard: usize,
    /// Valid records, in order.
    pub records: u64,
    /// The segments' valid bytes (records are decoded again for replay rather than kept
    /// decoded: a log of millions of small records would need several times its size).
    segments: Vec<SegmentData>,
    /// Key writes per database (commands and key states), to size each keyspace before
    /// replaying: a guess at the keys it will hold (exact for a log of distinct SETs; one
    /// MSET counts once, a SWAPDB moves keys it does not count).
    pub writes_per_db: HashMap<u32, u64>,
    /// The cross-shard transactions it holds a part of.
    pub tags: HashSet<TxTag>,
    /// Log position after the last valid record.
    pub end: u64,
    pub last_batch: u32,
    pub base_epoch: u64,
}

impl Scan {
    /// Keeps the first `valid` bytes of a scanned segment for replay.
    fn keep(&mut self, seg: &SegmentData, valid: usize) {
        self.segments.push(SegmentData {
            path: seg.path.clone(),
            start: seg.start,
            data: seg.data.slice(..valid),
        });
    }

    /// The valid records, decoded again in order.
    pub fn iter(&self) -> impl Iterator<Item = Record> + '_ {
        self.segments.iter().flat_map(|seg| {
            let mut at = 0usize;
            std::iter::from_fn(move || {
                match record::decode_again(&seg.data, at, seg.start + at as u64) {
                    Read::Record(record, len) => {
                        at += len;
                        Some(record)
                    }
                    Read::End | Read::Invalid(_) => None,
                }
            })
        })
    }
}

/// A segment's records area (after its header) and its first position.
struct SegmentData {
    path: PathBuf,
    start: u64,
    data: Bytes,
}

fn read_segment(shard: usize, dir: &Path, segment: &Segment) -> Result<SegmentData, RecoveryError> {
    let path = dir.join(&segment.file);
    let data = read_records(&path, shard, segment.start)?;
    Ok(SegmentData {
        path,
        start: segment.start,
        data,
    })
}

/// Reads a segment (or base) file up to the end of its records, checks its header against the
/// shard and start position it should have, and returns the records area.
fn read_records(path: &Path, shard: usize, start: u64) -> Result<Bytes, RecoveryError> {
    let file_error = |reason: String| RecoveryError::File {
        file: path.to_path_buf(),
        reason,
    };
    let bytes = segment::map_used(path).map_err(|e| file_error(e.to_string()))?;
    let header = bytes
        .get(..HEADER_BYTES as usize)
        .ok_or_else(|| file_error("shorter than a segment header".to_string()))?;
    segment::check_header(header, shard, start).map_err(file_error)?;
    Ok(bytes.slice(HEADER_BYTES as usize..))
}

/// Reads and checks a shard's chain. A torn tail ends the scan (or is an error if
/// `cut_torn_tail` is false); corruption followed by later commits is always an error.
pub fn scan_chain(
    shard: usize,
    dir: &Path,
    chain: &Chain,
    cut_torn_tail: bool,
) -> Result<Scan, RecoveryError> {
    let segments: Vec<SegmentData> = chain
        .segments
        .iter()
        .map(|s| read_segment(shard, dir, s))
        .collect::<Result<_, _>>()?;
    let mut result = Scan {
        shard,
        records: 0,
        segments: Vec::new(),
        writes_per_db: HashMap::new(),
        tags: HashSet::new(),
        end: segments.first().map_or(0, |s| s.start),
        last_batch: 0,
        base_epoch: chain.base.as_ref().map_or(0, |b| b.epoch),
    };
    for (index, seg) in segments.iter().enumerate() {
        if seg.start != result.end {
            return Err(RecoveryError::File {
                file: seg.path.clone(),
                reason: format!(
                    "starts at log position {} but the previous segment ends at {}",
                    seg.start, result.end
                ),
            });
        }
        let mut at = 0usize;
        loop {
            let position = seg.start + at as u64;
            let writes = &mut result.writes_per_db;
            let read = match record::skim(&seg.data, at, position, |db| {
                *writes.entry(db).or_default() += 1;
            }) {
                Read::End if seg.data[at..].iter().any(|&b| b != 0) => {
                    Read::Invalid(record::Invalid::Hole)
                }
                read => read,
            };
            match read {
                Read::Record(record, len) => {
                    if let Some(tx) = record.tx {
                        result.tags.insert(tx);
                    }
                    result.last_batch = record.batch;
                    result.records += 1;
                    at += len;
                    result.end = seg.start + at as u64;
                }
                Read::End => break,
                Read::Invalid(what) => {
                    result.keep(seg, at);
                    let offset = HEADER_BYTES + at as u64;
                    // A segment is followed by another only once all of it was synced: damage
                    // there is never a torn write.
                    if index + 1 < segments.len() {
                        return Err(RecoveryError::Corrupt {
                            file: seg.path.clone(),
                            offset,
                            what: format!("{what:?} in a segment that was complete"),
                        });
                    }
                    if let Some(later) =
                        valid_record_after(&segments[index..], at, result.last_batch)
                    {
                        return Err(RecoveryError::Corrupt {
                            file: seg.path.clone(),
                            offset,
                            what: format!("{what:?}, a later commit follows at {later}"),
                        });
                    }
                    if !cut_torn_tail {
                        return Err(RecoveryError::Truncated {
                            file: seg.path.clone(),
                            offset,
                        });
                    }
                    log::warn!(
                        "!!! Warning: the AOF {} ends with an incomplete or damaged record at \
                         offset {offset} ({what:?}): a write that was never acknowledged as durable. \
                         Truncating the AOF there !!!",
                        seg.path.display()
                    );
                    return Ok(result);
                }
            }
        }
        result.keep(seg, at);
    }
    Ok(result)
}

/// Looks past a bad record (at `bad_at` in `segments[0]`) for a valid record of a commit at
/// least two after the last good one: only corruption, never a torn last write, leaves one.
/// Returns where, for the message.
fn valid_record_after(segments: &[SegmentData], bad_at: usize, last_batch: u32) -> Option<String> {
    for (i, seg) in segments.iter().enumerate() {
        let from = if i == 0 { bad_at + 1 } else { 0 };
        for at in from..seg.data.len() {
            let position = seg.start + at as u64;
            if record::claimed_position(&seg.data, at) != Some(position) {
                continue;
            }
            if let Read::Record(r, _) = record::decode(&seg.data, at, position) {
                if r.batch.wrapping_sub(last_batch) >= 2
                    && r.batch.wrapping_sub(last_batch) < u32::MAX / 2
                {
                    return Some(format!(
                        "{} offset {}",
                        seg.path.display(),
                        HEADER_BYTES + at as u64
                    ));
                }
            }
        }
    }
    None
}

/// Reads and checks a base: a segment of key-state records from position 0, written whole
/// before the manifest named it (any damage is corruption). Returns its records and the key
/// states per database.
fn scan_base(shard: usize, path: &Path) -> Result<(Bytes, HashMap<u32, u64>), RecoveryError> {
    let data = read_records(path, shard, 0)?;
    let mut writes = HashMap::new();
    let mut at = 0usize;
    loop {
        match record::skim(&data, at, at as u64, |db| {
            *writes.entry(db).or_default() += 1;
        }) {
            Read::Record(_, len) => at += len,
            Read::End => return Ok((data, writes)),
            Read::Invalid(what) => {
                return Err(RecoveryError::Corrupt {
                    file: path.to_path_buf(),
                    offset: HEADER_BYTES + at as u64,
                    what: format!("{what:?} in a base"),
                })
            }
        }
    }
}

/// Applies a base [`scan_base`] checked.
fn load_base(data: &Bytes, replay: &mut Replay<'_>) {
    let mut at = 0usize;
    while let Read::Record(r, len) = record::decode_again(data, at, at as u64) {
        if let Body::KeyState(state) = &r.body {
            replay.key_state(state);
        }
        at += len;
    }
}

/// Applies logged records to a shard's databases.
pub struct Replay<'a> {
    dbs: &'a mut [Db],
    config: &'a Config,
    out: ReplyBuf,
    failures: u64,
    /// Logged commands carry absolute times; nothing expires while loading, so one clock
    /// read serves the whole replay.
    now_ms: i64,
}

impl<'a> Replay<'a> {
    pub fn new(dbs: &'a mut [Db], config: &'a Config) -> Replay<'a> {
        for db in dbs.iter_mut() {
            db.set_loading(true);
        }
        Replay {
            dbs,
            config,
            out: ReplyBuf::default(),
            failures: 0,
            now_ms: crate::server::state::unix_ms(),
        }
    }

    pub fn commands(&mut self, commands: &[LoggedCommand]) {
        for c in commands {
            self.command(c.db as usize, &c.args);
        }
    }

    /// Runs one logged command.
    pub fn command(&mut self, db: usize, args: &Args) {
        if db >= self.dbs.len() {
            self.failures += 1;
            return;
        }
        // Compared in place: replay runs millions of commands, one allocation each adds up.
        let name = args.get(0);
        if name.eq_ignore_ascii_case(b"flushall") {
            for d in self.dbs.iter_mut() {
                let _ = d.flush();
            }
            return;
        }
        if name.eq_ignore_ascii_case(b"flushdb") {
            let _ = self.dbs[db].flush();
            return;
        }
        if name.eq_ignore_ascii_case(b"swapdb") {
            let index = |i: usize| {
                crate::protocol::parser::parse_i64(args.get(i))
                    .and_then(|n| usize::try_from(n).ok())
                    .filter(|&n| n < self.dbs.len())
            };
            if let (Some(a), Some(b)) = (index(1), index(2)) {
                if a != b {
                    let (low, high) = (a.min(b), a.max(b));
                    let (left, right) = self.dbs.split_at_mut(high);
                    Db::swap_contents(&mut left[low], &mut right[0]);
                }
            }
            return;
        }
        let Some(Handler::Keyed(run, _)) = Registry::get().lookup(name).map(|c| c.handler) else {
            self.failures += 1;
            return;
        };
        self.out.clear();
        let mut ctx = KeyCtx {
            dbs: self.dbs,
            db,
            now_ms: self.now_ms,
            out: &mut self.out,
            config: self.config,
            loading: true,
            log: Default::default(),
        };
        if run(&mut ctx, args).is_err() {
            self.failures += 1;
        }
    }

    /// Sets a key from a key-state record.
    pub fn key_state(&mut self, state: &record::KeyState) {
        let Some(db) = self.dbs.get_mut(state.db as usize) else {
            self.failures += 1;
            return;
        };
        let StoredValue::String(bytes) = &state.value;
        db.set(&state.key, Value::string(bytes), false);
        if let Some(at) = state.expire_ms {
            db.set_expire(&state.key, at);
        }
    }

    fn finish(&mut self) {
        for db in self.dbs.iter_mut() {
            db.set_loading(false);
        }
        if self.failures > 0 {
            log::warn!("{} logged command(s) could not be replayed", self.failures);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;
    use crate::storage::manifest;

    /// Writes a segment of `records` SETs starting at `start` (batch numbers from `batch`);
    /// returns its name and end position.
    fn segment(dir: &Path, start: u64, batch: u32, records: u32) -> (String, u64) {
        let name = manifest::segment_name(0, 0, start);
        let path = segment::create_file(dir, &name, 0, start).expect("create");
        let mut bytes = Vec::new();
        let mut position = start;
        for i in 0..records {
            let args = Args::from_vecs(["SET", &format!("k{i}"), "v"]);
            position +=
                record::encode_commands(&mut bytes, position, batch + i, [(0, &args)].into_iter())
                    as u64;
        }
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .expect("open");
        file.write_all(&bytes).expect("write");
        (name, position)
    }

    fn chain(files: &[(String, u64)]) -> Chain {
        Chain {
            base: None,
            segments: files
                .iter()
                .map(|(file, start)| Segment {
                    start: *start,
                    file: file.clone(),
                })
                .collect(),
        }
    }

    #[test]
    fn damage_in_a_segment_followed_by_another_is_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (first, end) = segment(dir.path(), 0, 1, 3);
        let (second, _) = segment(dir.path(), end, 4, 1);
        let files = [(first.clone(), 0), (second, end)];
        assert_eq!(
            scan_chain(0, dir.path(), &chain(&files), true)
                .expect("intact")
                .records,
            4
        );
        // Damage the first segment's last record: as a last segment this would be a torn tail,
        // but a segment is followed by another only once it was all synced.
        let path = dir.path().join(&first);
        let mut bytes = std::fs::read(&path).expect("read");
        let last = bytes.len() - 2;
        bytes[last] ^= 0xff;
        std::fs::write(&path, &bytes).expect("write");
        assert!(matches!(
            scan_chain(0, dir.path(), &chain(&files), true),
            Err(RecoveryError::Corrupt { .. })
        ));
        assert_eq!(
            scan_chain(0, dir.path(), &chain(&files[..1]), true)
                .expect("a torn tail")
                .records,
            2
        );
    }
}
