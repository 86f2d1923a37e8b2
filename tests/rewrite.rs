//! Online AOF rewrite: BGREWRITEAOF's replies, what a rewrite leaves in the manifest and the
//! directory, that the compacted chain (bases plus the segments after the cut) restores every
//! key and TTL after `kill -9` with one and two shards, rewrites racing concurrent single- and
//! cross-shard writes, automatic rewrites (auto-aof-rewrite-percentage / -min-size) keeping the
//! log bounded, turning `appendonly` on and off at runtime (WAITAOF included), and the clean-up
//! of files a rewrite interrupted by a crash left behind.
//!
//! Run with `cargo test --release --features fault-injection --test rewrite`.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    aof_dir, blocked_waiter, bulk, crash, crash_and_restart, eventually, expect, field, field_u64,
    int, key_on, no_reply_yet, ok, persistence, resp, restart, shard_logs, shard_of, start, text,
    Raw, Server, ACK_0_0, ACK_1_0, AOF_DISABLED, OK, QUEUED,
};

const STARTED: &[u8] = b"+Background append only file rewriting started\r\n";
const SCHEDULED: &str = "+Background append only file rewriting scheduled\r\n";
const IN_PROGRESS: &str = "-ERR Background append only file rewriting already in progress\r\n";
const NEEDS_LOG: &str = "-ERR Background append only file rewriting needs the append-only log";
/// How long a state the test waits for may take to appear.
const WITHIN: Duration = Duration::from_secs(20);

// ------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------

/// Polls `INFO persistence` until `done` holds for it; that INFO. Fails naming `what` (what
/// did not happen) with the last INFO seen.
#[track_caller]
fn wait_info(raw: &mut Raw, what: &str, done: impl Fn(&str) -> bool) -> String {
    let mut last = String::new();
    let reached = eventually(WITHIN, || {
        last = persistence(raw);
        done(&last)
    });
    assert!(reached, "{what} within {WITHIN:?}:\n{last}");
    last
}

/// True if INFO shows no rewrite running.
fn no_rewrite(info: &str) -> bool {
    field(info, "aof_rewrite_in_progress").as_deref() == Some("0")
}

/// Polls INFO until no rewrite runs and at least `at_least` have completed; that INFO.
#[track_caller]
fn wait_rewrites(raw: &mut Raw, at_least: u64) -> String {
    wait_info(
        raw,
        &format!("no finished rewrite number {at_least}"),
        |info| no_rewrite(info) && field_u64(info, "aof_rewrites") >= at_least,
    )
}

/// Polls until the log is on for every shard and no rewrite runs (after CONFIG SET appendonly
/// yes); that INFO.
#[track_caller]
fn wait_log_on(raw: &mut Raw, shards: usize) -> String {
    wait_info(raw, "the log did not come on", |info| {
        field(info, "aof_enabled").as_deref() == Some("1")
            && no_rewrite(info)
            && shard_logs(info).len() == shards
    })
}

/// Turns automatic rewrites on for a log grown by 100 % and past `min_size`.
fn auto_rewrite_over(raw: &mut Raw, min_size: &str) {
    ok(
        raw,
        &[
            "CONFIG",
            "SET",
            "auto-aof-rewrite-percentage",
            "100",
            "auto-aof-rewrite-min-size",
            min_size,
        ],
    );
}

/// Asserts that INFO says the last rewrite succeeded.
#[track_caller]
fn assert_last_rewrite_ok(info: &str) {
    assert_eq!(
        field(info, "aof_last_bgrewrite_status").as_deref(),
        Some("ok"),
        "the last rewrite failed:\n{info}"
    );
}

/// BGREWRITEAOF, then waits until it is done (`nth` rewrites finished since the server started)
/// and asserts it succeeded; the INFO after it.
#[track_caller]
fn rewrite_now(raw: &mut Raw, nth: u64) -> String {
    expect(raw, &["BGREWRITEAOF"], STARTED);
    let done = wait_rewrites(raw, nth);
    assert_last_rewrite_ok(&done);
    done
}

// --- The manifest and the directory --------------------------------------------------------

/// The manifest's lines that matter here.
#[derive(Debug)]
struct Manifest {
    epoch: u64,
    /// (shard, epoch, file)
    bases: Vec<(usize, u64, String)>,
    /// (shard, start, file)
    segments: Vec<(usize, u64, String)>,
}

impl Manifest {
    fn files(&self) -> BTreeSet<String> {
        self.bases
            .iter()
            .map(|b| b.2.clone())
            .chain(self.segments.iter().map(|s| s.2.clone()))
            .collect()
    }

    /// The files the AOF directory should hold: those named and the manifest itself.
    fn expected_files(&self) -> BTreeSet<String> {
        let mut files = self.files();
        files.insert("manifest".to_string());
        files
    }
}

fn read_manifest(data_dir: &Path) -> Manifest {
    let path = aof_dir(data_dir).join("manifest");
    let body = std::fs::read_to_string(&path).expect("read the manifest");
    let mut m = Manifest {
        epoch: 0,
        bases: Vec::new(),
        segments: Vec::new(),
    };
    for line in body.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let n = |s: &str| -> u64 { s.parse().expect("a number in the manifest") };
        match w.as_slice() {
            ["epoch", e] => m.epoch = n(e),
            ["base", s, e, f] => m.bases.push((n(s) as usize, n(e), f.to_string())),
            ["segment", s, start, f] => m.segments.push((n(s) as usize, n(start), f.to_string())),
            _ => {}
        }
    }
    m
}

/// The names of the files in the AOF directory.
fn dir_files(data_dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(aof_dir(data_dir))
        .expect("read the AOF directory")
        .map(|e| {
            e.expect("directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// Every file of the current chain, named or not yet named in the manifest (the manifest
/// itself aside): what a rewrite or a restart of the log should leave none of.
fn chain_files(data_dir: &Path) -> BTreeSet<String> {
    let mut files = read_manifest(data_dir).files();
    files.extend(dir_files(data_dir));
    files.remove("manifest");
    files
}

/// After a finished rewrite of every shard at `epoch`: each shard's chain is its base of that
/// epoch and segments opened at that cut, the directory holds exactly the named files, and none
/// of `old` (the files before the rewrite) is left.
#[track_caller]
fn assert_compacted(data_dir: &Path, shards: usize, epoch: u64, old: &BTreeSet<String>) {
    let m = read_manifest(data_dir);
    assert_eq!(m.epoch, epoch, "manifest epoch after the rewrite: {m:?}");
    for shard in 0..shards {
        let bases: Vec<_> = m.bases.iter().filter(|b| b.0 == shard).collect();
        assert_eq!(
            bases,
            vec![&(shard, epoch, format!("shard{shard}-base-{epoch}.base"))],
            "shard {shard}'s base in {m:?}"
        );
        let segments: Vec<_> = m.segments.iter().filter(|s| s.0 == shard).collect();
        assert!(!segments.is_empty(), "shard {shard} has no segment: {m:?}");
        for s in segments {
            assert!(
                s.2.starts_with(&format!("shard{shard}-{epoch}-")),
                "shard {shard} keeps a segment from before the cut: {m:?}"
            );
        }
    }
    let expected = m.expected_files();
    assert_eq!(
        dir_files(data_dir),
        expected,
        "the AOF directory should hold the manifest and the files it names, nothing else"
    );
    let kept: Vec<&String> = old.intersection(&expected).collect();
    assert!(kept.is_empty(), "old files survived the rewrite: {kept:?}");
}

// --- What the keyspace should hold ---------------------------------------------------------

/// A TTL given at write time.
#[derive(Clone, Copy)]
enum Ttl {
    None,
    Ex(u64),
    Px(u64),
}

/// Expected keys per database: value and the TTL upper bound in ms (`None`: persistent).
#[derive(Default)]
struct Model {
    keys: BTreeMap<(u32, String), (Vec<u8>, Option<u64>)>,
}

impl Model {
    /// SETs `items` in database `db` through one pipeline, each acknowledged, and records them.
    fn set_many(&mut self, raw: &mut Raw, db: u32, items: &[(String, Vec<u8>, Ttl)]) {
        let db_text = db.to_string();
        let mut batch = resp(&[b"SELECT", db_text.as_bytes()]);
        for (k, v, ttl) in items {
            let mut args: Vec<Vec<u8>> = vec![b"SET".to_vec(), k.clone().into_bytes(), v.clone()];
            match ttl {
                Ttl::None => {}
                Ttl::Ex(s) => args.extend([b"EX".to_vec(), s.to_string().into_bytes()]),
                Ttl::Px(ms) => args.extend([b"PX".to_vec(), ms.to_string().into_bytes()]),
            }
            let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            batch.extend(resp(&refs));
        }
        raw.send(&batch);
        for i in 0..=items.len() {
            assert_eq!(text(&raw.reply()), "+OK\r\n", "reply {i} of a SET pipeline");
        }
        for (k, v, ttl) in items {
            let limit = match ttl {
                Ttl::None => None,
                Ttl::Ex(s) => Some(s * 1000),
                Ttl::Px(ms) => Some(*ms),
            };
            self.keys.insert((db, k.clone()), (v.clone(), limit));
        }
    }

    fn set(&mut self, raw: &mut Raw, db: u32, key: &str, value: &[u8], ttl: Ttl) {
        self.set_many(raw, db, &[(key.to_string(), value.to_vec(), ttl)]);
    }

    fn del(&mut self, raw: &mut Raw, db: u32, key: &str) {
        ok(raw, &["SELECT", &db.to_string()]);
        expect(raw, &["DEL", key], b":1\r\n");
        self.keys.remove(&(db, key.to_string()));
    }

    fn expire(&mut self, raw: &mut Raw, db: u32, key: &str, seconds: u64) {
        ok(raw, &["SELECT", &db.to_string()]);
        expect(raw, &["EXPIRE", key, &seconds.to_string()], b":1\r\n");
        self.keys
            .get_mut(&(db, key.to_string()))
            .expect("a key of the model")
            .1 = Some(seconds * 1000);
    }

    fn persist(&mut self, raw: &mut Raw, db: u32, key: &str) {
        ok(raw, &["SELECT", &db.to_string()]);
        expect(raw, &["PERSIST", key], b":1\r\n");
        self.keys
            .get_mut(&(db, key.to_string()))
            .expect("a key of the model")
            .1 = None;
    }

    /// [`Model::verify`] with no unacknowledged write in doubt.
    #[track_caller]
    fn verify_exact(&self, server: &Server, when: &str) {
        self.verify(server, when, &BTreeMap::new());
    }

    /// Checks every key (value, TTL present or not) and that databases 0..4 hold no other key,
    /// except those in `maybe` ((db, key) → the only value it may have).
    #[track_caller]
    fn verify(&self, server: &Server, when: &str, maybe: &BTreeMap<(u32, String), Vec<u8>>) {
        let mut raw = server.raw();
        for db in 0..4u32 {
            ok(&mut raw, &["SELECT", &db.to_string()]);
            let expected: BTreeMap<&String, &(Vec<u8>, Option<u64>)> = self
                .keys
                .iter()
                .filter(|((d, _), _)| *d == db)
                .map(|((_, k), v)| (k, v))
                .collect();
            for (k, (value, ttl)) in &expected {
                let got = bulk(&raw.cmd(&["GET", k]));
                assert!(
                    got.as_deref() == Some(value.as_slice()),
                    "{when}: db {db} key {k} is {:?}, expected {:?}",
                    got.as_deref().map(|g| text(&g[..g.len().min(80)])),
                    text(&value[..value.len().min(80)])
                );
                let pttl = int(&raw.cmd(&["PTTL", k]));
                match ttl {
                    None => assert_eq!(pttl, -1, "{when}: PTTL of persistent db {db} key {k}"),
                    Some(limit) => assert!(
                        pttl > 0 && pttl as u64 <= *limit,
                        "{when}: PTTL of db {db} key {k} is {pttl}, set to at most {limit}"
                    ),
                }
            }
            let keys_reply = raw.cmd(&["KEYS", "*"]);
            let listed = keys_of(&keys_reply);
            for k in &listed {
                if expected.contains_key(k) {
                    continue;
                }
                match maybe.get(&(db, k.clone())) {
                    Some(v) => assert_eq!(
                        bulk(&raw.cmd(&["GET", k])).as_deref(),
                        Some(v.as_slice()),
                        "{when}: unacknowledged db {db} key {k} came back with another value"
                    ),
                    None => panic!("{when}: db {db} holds key {k}, which it should not"),
                }
            }
            for k in expected.keys() {
                assert!(listed.contains(*k), "{when}: KEYS * in db {db} misses {k}");
            }
        }
    }
}

/// `n` items `<key><i>` = `<value><i>`, all with `ttl`, for [`Model::set_many`].
fn numbered(n: usize, key: &str, value: &str, ttl: Ttl) -> Vec<(String, Vec<u8>, Ttl)> {
    (0..n)
        .map(|i| (format!("{key}{i}"), format!("{value}{i}").into_bytes(), ttl))
        .collect()
}

/// The elements of a flat array of bulk strings.
fn keys_of(reply: &[u8]) -> BTreeSet<String> {
    let body = text(reply);
    let mut lines = body.split("\r\n");
    let head = lines.next().expect("array header");
    assert!(head.starts_with('*'), "not an array: {body}");
    let n: usize = head[1..].parse().expect("array length");
    let mut out = BTreeSet::new();
    for _ in 0..n {
        let _len = lines.next().expect("bulk header");
        out.insert(lines.next().expect("bulk payload").to_string());
    }
    out
}

/// A value with every byte a binary-safe log must keep.
fn binary_value() -> Vec<u8> {
    let mut v: Vec<u8> = (0..=255u8).collect();
    v.extend_from_slice(b"\r\n*3\r\n$3\r\nSET\r\n\0\0");
    v
}

// ------------------------------------------------------------------------------------------
// BGREWRITEAOF's replies
// ------------------------------------------------------------------------------------------

#[test]
fn bgrewriteaof_replies_started_in_progress_scheduled_and_needs_the_log() {
    // With the log off there is nothing to rewrite.
    let off = Server::start(2, &[]);
    let mut raw = off.raw();
    let reply = raw.cmd_text(&["BGREWRITEAOF"]);
    assert!(
        reply.starts_with(NEEDS_LOG),
        "BGREWRITEAOF with appendonly no answered {reply:?}"
    );
    drop(off);

    let server = start(2, &["--appendonly", "yes"]);
    let mut raw = server.raw();
    ok(&mut raw, &["SET", "k", "v"]);
    let before = persistence(&mut raw);
    assert_eq!(field_u64(&before, "aof_rewrites"), 0);
    assert_eq!(field_u64(&before, "aof_rewrite_in_progress"), 0);

    // A stalled commit loop on shard 0 holds the rewrite at its cut, so it is surely running
    // while the next commands arrive.
    ok(&mut raw, &["DEBUG", "FAULT", "0", "stall"]);
    expect(&mut raw, &["BGREWRITEAOF"], STARTED);
    let running = persistence(&mut raw);
    assert_eq!(
        field_u64(&running, "aof_rewrite_in_progress"),
        1,
        "{running}"
    );
    assert_eq!(raw.cmd_text(&["BGREWRITEAOF"]), IN_PROGRESS);
    // Inside EXEC too, as Valkey answers while its rewrite child runs.
    ok(&mut raw, &["MULTI"]);
    expect(&mut raw, &["BGREWRITEAOF"], QUEUED);
    assert_eq!(raw.cmd_text(&["EXEC"]), format!("*1\r\n{IN_PROGRESS}"));
    ok(&mut raw, &["DEBUG", "FAULT", "0", "resume"]);
    let after = wait_rewrites(&mut raw, 1);
    assert_eq!(field_u64(&after, "aof_rewrites"), 1, "{after}");
    assert_last_rewrite_ok(&after);
    assert_eq!(field_u64(&after, "aof_rewrites_consecutive_failures"), 0);
    assert_eq!(field_u64(&after, "aof_rewrite_scheduled"), 0);
    assert!(field_u64(&after, "aof_base_size") > 0, "{after}");

    // Inside MULTI/EXEC with no rewrite running: scheduled, and it does run.
    ok(&mut raw, &["MULTI"]);
    expect(&mut raw, &["BGREWRITEAOF"], QUEUED);
    expect(&mut raw, &["SET", "k", "v2"], QUEUED);
    assert_eq!(raw.cmd_text(&["EXEC"]), format!("*2\r\n{SCHEDULED}+OK\r\n"));
    assert_last_rewrite_ok(&wait_rewrites(&mut raw, 2));
    expect(&mut raw, &["GET", "k"], b"$2\r\nv2\r\n");
}

// ------------------------------------------------------------------------------------------
// Compaction and restart
// ------------------------------------------------------------------------------------------

/// Overwrites 100 keys 300 times, plus keys with TTLs, in two databases, binary and large
/// values; rewrites; checks the log shrank and the old files are gone; writes more; then
/// `kill -9` and restart must restore everything. A second rewrite after the restart replaces
/// the first one's bases.
fn rewrite_shrinks_the_log_and_survives_kill_9(shards: usize) {
    let args = ["--appendonly", "yes"];
    let server = start(shards, &args);
    let mut raw = server.raw();
    let mut m = Model::default();

    for round in 0..300 {
        let items: Vec<_> = (0..100)
            .map(|i| {
                let v = format!("round-{round:04}-key-{i:03}-{}", "v".repeat(40));
                (format!("hot{i}"), v.into_bytes(), Ttl::None)
            })
            .collect();
        m.set_many(&mut raw, 0, &items);
    }
    let with_ttl: Vec<_> = (0..20)
        .map(|i| (format!("ex{i}"), b"e".to_vec(), Ttl::Ex(1000)))
        .chain((0..20).map(|i| (format!("px{i}"), b"p".to_vec(), Ttl::Px(5_000_000))))
        .collect();
    m.set_many(&mut raw, 0, &with_ttl);
    m.set(&mut raw, 0, "persisted", b"was-volatile", Ttl::Px(100_000));
    m.persist(&mut raw, 0, "persisted");
    m.set(&mut raw, 0, "binary", &binary_value(), Ttl::None);
    m.set(&mut raw, 0, "big", &vec![b'B'; 100_000], Ttl::None);
    m.set(
        &mut raw,
        0,
        "gone",
        b"deleted before the rewrite",
        Ttl::None,
    );
    m.del(&mut raw, 0, "gone");
    m.set_many(&mut raw, 3, &numbered(30, "db3-", "three-", Ttl::None));
    m.set(&mut raw, 3, "db3-volatile", b"t", Ttl::Ex(2000));
    // A key that expires before the rewrite must not come back from the base.
    ok(&mut raw, &["SELECT", "0"]);
    ok(&mut raw, &["SET", "short", "x", "PX", "1"]);
    assert!(
        eventually(WITHIN, || raw.cmd(&["EXISTS", "short"]) == b":0\r\n"),
        "a key with PX 1 did not expire"
    );

    let before = persistence(&mut raw);
    let size_before = field_u64(&before, "aof_current_size");
    let rewrites_before = field_u64(&before, "aof_rewrites");
    let manifest_before = read_manifest(server.data_dir());
    let old_files = chain_files(server.data_dir());
    assert!(
        size_before > 2_000_000,
        "30000 SETs should log more than 2 MB, INFO says {size_before}"
    );

    let after = rewrite_now(&mut raw, rewrites_before + 1);
    let size_after = field_u64(&after, "aof_current_size");
    let base_size = field_u64(&after, "aof_base_size");
    assert!(
        base_size > 100_000,
        "the bases hold 'big' at least: {after}"
    );
    assert!(
        size_after * 8 < size_before,
        "the rewrite should shrink the log a lot: {size_before} -> {size_after} bytes"
    );
    let epoch = manifest_before.epoch + 1;
    assert_compacted(server.data_dir(), shards, epoch, &old_files);

    // Writes after the cut: overwrites, new keys, DEL, EXPIRE and PERSIST of keys in the base.
    let fresh: Vec<_> = numbered(10, "hot", "after-", Ttl::None)
        .into_iter()
        .chain((0..10).map(|i| (format!("new{i}"), b"n".to_vec(), Ttl::Px(3_000_000))))
        .collect();
    m.set_many(&mut raw, 0, &fresh);
    m.del(&mut raw, 0, "hot99");
    m.expire(&mut raw, 0, "hot98", 1000);
    m.persist(&mut raw, 0, "px0");
    m.del(&mut raw, 3, "db3-0");
    expect(&mut raw, &["WAITAOF", "1", "0", "0"], ACK_1_0);
    m.verify_exact(&server, "before the crash");

    let server = crash_and_restart(server, shards, &args);
    m.verify_exact(&server, "after kill -9 and restart");
    let mut raw = server.raw();
    let loaded = persistence(&mut raw);
    assert!(
        field_u64(&loaded, "aof_base_size") > 100_000,
        "INFO after the restart should count the bases: {loaded}"
    );

    // A second rewrite replaces the bases of the first.
    let old_files = chain_files(server.data_dir());
    rewrite_now(&mut raw, 1);
    assert_compacted(server.data_dir(), shards, epoch + 1, &old_files);
    m.set(&mut raw, 0, "after-second-rewrite", b"2", Ttl::None);
    expect(&mut raw, &["WAITAOF", "1", "0", "0"], ACK_1_0);
    let server = crash_and_restart(server, shards, &args);
    m.verify_exact(&server, "after the second rewrite and restart");
}

#[test]
fn rewrite_shrinks_the_log_and_data_survives_kill_9_with_1_shard() {
    rewrite_shrinks_the_log_and_survives_kill_9(1);
}

#[test]
fn rewrite_shrinks_the_log_and_data_survives_kill_9_with_2_shards() {
    rewrite_shrinks_the_log_and_survives_kill_9(2);
}

// ------------------------------------------------------------------------------------------
// Rewrites under concurrent writes
// ------------------------------------------------------------------------------------------

#[test]
fn acknowledged_writes_during_rewrites_survive_kill_9_in_always_mode() {
    const SHARDS: usize = 2;
    const COUNTERS: usize = 16;
    const PAIRS: usize = 8;
    const REWRITES: u64 = 4;
    let args = ["--appendonly", "yes", "--appendfsync", "always"];
    let server = start(SHARDS, &args);
    // The pairs must cross shards for the cut to matter to them.
    assert_ne!(shard_of("{a}p", SHARDS), shard_of("{b}p", SHARDS));
    let counters: Vec<String> = (0..COUNTERS).map(|i| format!("ctr{i}")).collect();
    assert!(
        (0..SHARDS).all(|s| counters.iter().any(|k| shard_of(k, SHARDS) == s)),
        "the counters should live on every shard"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicU64::new(0));
    let port = server.port;

    // INCRs, a pipeline over every counter at a time; each reply is acknowledged.
    let incr = {
        let (stop, progress, counters) = (stop.clone(), progress.clone(), counters.clone());
        std::thread::spawn(move || {
            let mut raw = Raw::connect(port);
            let mut acked = vec![0i64; COUNTERS];
            let mut batch = Vec::new();
            for k in &counters {
                batch.extend(resp(&[b"INCR", k.as_bytes()]));
            }
            while !stop.load(Ordering::Acquire) {
                raw.send(&batch);
                for (i, a) in acked.iter_mut().enumerate() {
                    let v = int(&raw.reply());
                    assert_eq!(v, *a + 1, "INCR {} skipped a value", counters[i]);
                    *a = v;
                }
                progress.fetch_add(COUNTERS as u64, Ordering::AcqRel);
            }
            acked
        })
    };
    // Cross-shard writes, MSET and MULTI/EXEC in turn; both keys of a pair get the same value.
    let pairs = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut raw = Raw::connect(port);
            let mut acked = vec![0u64; PAIRS];
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                for (j, a) in acked.iter_mut().enumerate() {
                    n += 1;
                    let (ka, kb, v) = (format!("{{a}}p{j}"), format!("{{b}}p{j}"), n.to_string());
                    if n.is_multiple_of(2) {
                        ok(&mut raw, &["MSET", &ka, &v, &kb, &v]);
                    } else {
                        let mut batch = resp(&[b"MULTI"]);
                        batch.extend(resp(&[b"SET", ka.as_bytes(), v.as_bytes()]));
                        batch.extend(resp(&[b"SET", kb.as_bytes(), v.as_bytes()]));
                        batch.extend(resp(&[b"EXEC"]));
                        raw.send(&batch);
                        for want in ["+OK\r\n", "+QUEUED\r\n", "+QUEUED\r\n"] {
                            assert_eq!(text(&raw.reply()), want);
                        }
                        assert_eq!(text(&raw.reply()), "*2\r\n+OK\r\n+OK\r\n");
                    }
                    *a = n;
                }
            }
            acked
        })
    };

    let mut raw = server.raw();
    for round in 1..=REWRITES {
        // Let writes pile up between rewrites so that every cut falls among them.
        let target = progress.load(Ordering::Acquire) + 300;
        assert!(
            eventually(WITHIN, || progress.load(Ordering::Acquire) >= target),
            "the writers stopped making progress"
        );
        rewrite_now(&mut raw, round);
    }
    // More writes after the last rewrite, then stop so that every write sent was acknowledged.
    let target = progress.load(Ordering::Acquire) + 300;
    assert!(eventually(WITHIN, || progress.load(Ordering::Acquire) >= target));
    stop.store(true, Ordering::Release);
    let counted = incr.join().expect("the INCR thread failed");
    let paired = pairs.join().expect("the cross-shard writer failed");
    assert!(paired.iter().all(|&n| n > 0), "no cross-shard write made");

    let server = crash_and_restart(server, SHARDS, &args);
    let mut raw = server.raw();
    for (k, &v) in counters.iter().zip(&counted) {
        expect(
            &mut raw,
            &["GET", k],
            format!("${}\r\n{v}\r\n", v.to_string().len()).as_bytes(),
        );
    }
    for (j, &n) in paired.iter().enumerate() {
        let a = bulk(&raw.cmd(&["GET", &format!("{{a}}p{j}")])).map(|v| text(&v));
        let b = bulk(&raw.cmd(&["GET", &format!("{{b}}p{j}")])).map(|v| text(&v));
        assert_eq!(a, b, "pair {j} is torn after the restart");
        assert_eq!(
            a,
            Some(n.to_string()),
            "pair {j} lost its last acknowledged write"
        );
    }
}

// ------------------------------------------------------------------------------------------
// Automatic rewrites
// ------------------------------------------------------------------------------------------

#[test]
fn auto_aof_rewrite_config_get_and_set_follow_valkey() {
    let server = Server::start(1, &[]);
    let mut con = server.client();
    let get = |con: &mut redis::Connection, pattern: &str| -> HashMap<String, String> {
        redis::cmd("CONFIG")
            .arg("GET")
            .arg(pattern)
            .query(con)
            .expect("CONFIG GET")
    };
    let defaults = get(&mut con, "auto-aof-rewrite-*");
    assert_eq!(
        defaults,
        HashMap::from([
            ("auto-aof-rewrite-percentage".to_string(), "100".to_string()),
            (
                "auto-aof-rewrite-min-size".to_string(),
                "67108864".to_string()
            ),
        ])
    );
    let mut raw = server.raw();
    let single = |raw: &mut Raw, name: &str, value: &str| {
        let reply = format!(
            "*2\r\n${}\r\n{name}\r\n${}\r\n{value}\r\n",
            name.len(),
            value.len()
        );
        expect(raw, &["CONFIG", "GET", name], reply.as_bytes());
    };
    for (set, shown) in [
        ("1mb", "1048576"),
        ("1MB", "1048576"),
        ("1gb", "1073741824"),
        ("1k", "1000"),
        ("0", "0"),
        ("12345", "12345"),
    ] {
        ok(
            &mut raw,
            &["CONFIG", "SET", "auto-aof-rewrite-min-size", set],
        );
        single(&mut raw, "auto-aof-rewrite-min-size", shown);
    }
    for value in ["0", "50", "2147483647"] {
        ok(
            &mut raw,
            &["CONFIG", "SET", "auto-aof-rewrite-percentage", value],
        );
        single(&mut raw, "auto-aof-rewrite-percentage", value);
    }
    let failed = |name: &str, why: &str| {
        format!("-ERR CONFIG SET failed (possibly related to argument '{name}') - {why}\r\n")
    };
    let pct = "auto-aof-rewrite-percentage";
    for (value, why) in [
        (
            "2147483648",
            "argument must be between 0 and 2147483647 inclusive",
        ),
        ("-1", "argument must be between 0 and 2147483647 inclusive"),
        ("abc", "argument couldn't be parsed into an integer"),
        ("10%", "argument couldn't be parsed into an integer"),
    ] {
        assert_eq!(
            raw.cmd_text(&["CONFIG", "SET", pct, value]),
            failed(pct, why),
            "CONFIG SET {pct} {value}"
        );
    }
    single(&mut raw, pct, "2147483647");
    let min = "auto-aof-rewrite-min-size";
    for value in ["abc", "1xb", "mb"] {
        assert_eq!(
            raw.cmd_text(&["CONFIG", "SET", min, value]),
            failed(min, "argument must be a memory value"),
            "CONFIG SET {min} {value}"
        );
    }
    // Valkey reads memory values as unsigned.
    assert_eq!(
        raw.cmd_text(&["CONFIG", "SET", min, "-1"]),
        failed(min, "argument must be a memory value"),
        "CONFIG SET {min} -1"
    );
    single(&mut raw, min, "12345");
    // Both in one CONFIG SET.
    ok(&mut raw, &["CONFIG", "SET", pct, "100", min, "64mb"]);
    assert_eq!(get(&mut con, "auto-aof-rewrite-*"), defaults);
}

#[test]
fn auto_rewrite_starts_on_growth_and_keeps_the_log_bounded() {
    const SHARDS: usize = 2;
    const KEYS: usize = 100;
    const ROUNDS: usize = 160;
    const MIN_SIZE: u64 = 1024 * 1024;
    let args = ["--appendonly", "yes"];
    let server = start(SHARDS, &args);
    let mut raw = server.raw();
    auto_rewrite_over(&mut raw, "1mb");
    let mut m = Model::default();
    // Endless overwrites of the same keys: 100 KB a round, 16 MB in all, 50 KB of live data.
    let bound = 3 * MIN_SIZE * SHARDS as u64;
    let mut max_files = 0;
    for round in 0..ROUNDS {
        let items: Vec<_> = (0..KEYS)
            .map(|i| {
                let mut v = format!("{round}:{i}:").into_bytes();
                v.resize(1000, b'x');
                (format!("key{i}"), v, Ttl::None)
            })
            .collect();
        m.set_many(&mut raw, 0, &items);
        max_files = max_files.max(dir_files(server.data_dir()).len());
        // The cron looks 10 times a second and these writes can outrun it: past the bound,
        // the automatic rewrites must bring the log back down once they get the time.
        let mut size = field_u64(&persistence(&mut raw), "aof_current_size");
        if size > bound {
            assert!(
                eventually(WITHIN, || {
                    size = field_u64(&persistence(&mut raw), "aof_current_size");
                    size <= bound
                }),
                "round {round}: no automatic rewrite brought the log ({size} bytes) back under \
                 {bound} bytes"
            );
        }
    }
    // Stop automatic rewrites so that the directory stays still while it is looked at.
    ok(
        &mut raw,
        &["CONFIG", "SET", "auto-aof-rewrite-percentage", "0"],
    );
    // One automatic rewrite serves every shard that is due, so 16 MB of overwrites over a
    // 1 MB threshold take a few of them, not one per shard and threshold.
    let last = wait_rewrites(&mut raw, 2);
    assert_last_rewrite_ok(&last);
    assert_eq!(field_u64(&last, "aof_rewrites_consecutive_failures"), 0);
    let final_size = field_u64(&last, "aof_current_size");
    assert!(
        final_size <= bound + 2 * MIN_SIZE,
        "the log is {final_size} bytes after the automatic rewrites"
    );
    // Per shard at most: the old base and segment, the new segment and base, while a rewrite
    // runs; then the manifest and its temporary copy.
    assert!(
        max_files <= 4 * SHARDS + 2,
        "the AOF directory held up to {max_files} files"
    );
    let manifest = read_manifest(server.data_dir());
    assert_eq!(dir_files(server.data_dir()), manifest.expected_files());
    for shard in 0..SHARDS {
        assert!(
            manifest.bases.iter().any(|b| b.0 == shard),
            "shard {shard}'s log grew past the threshold but was never rewritten: {manifest:?}"
        );
    }

    expect(&mut raw, &["WAITAOF", "1", "0", "0"], ACK_1_0);
    let server = crash_and_restart(server, SHARDS, &args);
    m.verify_exact(&server, "after automatic rewrites and kill -9");
}

#[test]
fn auto_rewrite_reaches_every_shard_under_sustained_writes() {
    const SHARDS: usize = 2;
    const REWRITES: u64 = 10;
    let server = start(SHARDS, &["--appendonly", "yes"]);
    let mut raw = server.raw();
    // A threshold every shard passes again between two cron ticks while the writes go on.
    auto_rewrite_over(&mut raw, "4kb");
    let keys: Vec<String> = (0..SHARDS)
        .flat_map(|s| (0..10).map(move |i| key_on(s, SHARDS, &format!("s{s}k{i}-"))))
        .collect();
    let value = "v".repeat(100);
    let mut batch = Vec::new();
    for k in &keys {
        batch.extend(resp(&[b"SET", k.as_bytes(), value.as_bytes()]));
    }
    // Writes without a pause (no polling sleep) until the rewrites are done.
    let deadline = Instant::now() + WITHIN;
    loop {
        raw.send(&batch);
        for _ in &keys {
            assert_eq!(raw.reply(), OK);
        }
        let last = persistence(&mut raw);
        if field_u64(&last, "aof_rewrites") >= REWRITES {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "fewer than {REWRITES} automatic rewrites within {WITHIN:?}:\n{last}"
        );
    }
    // Every shard's log kept growing past the threshold all along: each must have had a turn.
    let manifest = read_manifest(server.data_dir());
    for shard in 0..SHARDS {
        assert!(
            manifest.bases.iter().any(|b| b.0 == shard),
            "after {REWRITES} automatic rewrites under writes to every shard, shard {shard}'s \
             log was never rewritten: {manifest:?}"
        );
    }
}

// ------------------------------------------------------------------------------------------
// appendonly at runtime
// ------------------------------------------------------------------------------------------

#[test]
fn appendonly_turned_on_at_runtime_logs_everything_and_survives_kill_9() {
    const SHARDS: usize = 2;
    let server = Server::start(SHARDS, &[]);
    let mut raw = server.raw();
    let off = persistence(&mut raw);
    assert_eq!(field_u64(&off, "aof_enabled"), 0);
    assert_eq!(shard_logs(&off).len(), 0);
    assert!(
        !aof_dir(server.data_dir()).exists(),
        "a server with appendonly no should not make a log"
    );
    let mut m = Model::default();
    m.set_many(&mut raw, 0, &numbered(200, "before", "b", Ttl::None));
    m.set(&mut raw, 0, "before-ex", b"e", Ttl::Ex(1000));
    m.set(&mut raw, 0, "before-px", b"p", Ttl::Px(2_000_000));
    m.set(&mut raw, 0, "before-binary", &binary_value(), Ttl::None);
    m.set(&mut raw, 2, "before-db2", b"two", Ttl::None);

    ok(&mut raw, &["CONFIG", "SET", "appendonly", "yes"]);
    // Valkey reports the log as enabled at once, while its first rewrite still runs.
    assert_eq!(field_u64(&persistence(&mut raw), "aof_enabled"), 1);
    // Writes while the log is being turned on land in the base or in the first segments.
    m.set_many(&mut raw, 0, &numbered(50, "during", "d", Ttl::None));
    let on = wait_log_on(&mut raw, SHARDS);
    assert!(field_u64(&on, "aof_rewrites") >= 1, "{on}");
    assert_last_rewrite_ok(&on);
    let manifest = read_manifest(server.data_dir());
    assert!(manifest.epoch >= 1, "{manifest:?}");
    for shard in 0..SHARDS {
        assert!(
            manifest.bases.iter().any(|b| b.0 == shard),
            "shard {shard} has no base after the log was turned on: {manifest:?}"
        );
    }

    let after: Vec<_> = numbered(100, "after", "a", Ttl::Px(4_000_000))
        .into_iter()
        .chain((0..20).map(|i| (format!("before{i}"), b"overwritten".to_vec(), Ttl::None)))
        .collect();
    m.set_many(&mut raw, 0, &after);
    m.del(&mut raw, 0, "before150");
    m.persist(&mut raw, 0, "before-px");
    expect(&mut raw, &["WAITAOF", "1", "0", "0"], ACK_1_0);
    m.verify_exact(&server, "before the crash");

    let server = crash_and_restart(server, SHARDS, &["--appendonly", "yes"]);
    m.verify_exact(&server, "after turning the log on at runtime and kill -9");
}

#[test]
fn appendonly_turned_off_at_runtime_fails_waitaof_and_releases_blocked_waiters() {
    const SHARDS: usize = 2;
    let server = start(SHARDS, &["--appendonly", "yes"]);
    let mut control = server.raw();
    let k0 = key_on(0, SHARDS, "stalled-");

    // A waiter blocked in WAITAOF on a shard whose log does not move.
    let mut waiter = blocked_waiter(&server, &mut control, &k0);
    ok(&mut control, &["CONFIG", "SET", "appendonly", "no"]);
    // Valkey answers a blocked WAITAOF this way once the log is turned off.
    assert_eq!(text(&waiter.reply()), AOF_DISABLED);
    ok(&mut control, &["DEBUG", "FAULT", "0", "resume"]);

    let off = persistence(&mut control);
    assert_eq!(field_u64(&off, "aof_enabled"), 0, "{off}");
    assert_eq!(
        shard_logs(&off).len(),
        0,
        "a shard still has a log open:\n{off}"
    );
    expect(&mut waiter, &["WAITAOF", "1", "0", "0"], AOF_DISABLED);
    expect(&mut control, &["WAITAOF", "1", "0", "0"], AOF_DISABLED);
    expect(&mut control, &["WAITAOF", "0", "0", "0"], ACK_0_0);
    let reply = control.cmd_text(&["BGREWRITEAOF"]);
    assert!(
        reply.starts_with(NEEDS_LOG),
        "BGREWRITEAOF answered {reply:?}"
    );
    // Writes go on, in memory.
    for shard in 0..SHARDS {
        let k = key_on(shard, SHARDS, "after-off-");
        ok(&mut control, &["SET", &k, "v"]);
        expect(&mut control, &["GET", &k], b"$1\r\nv\r\n");
    }
    expect(&mut control, &["GET", &k0], b"$1\r\n1\r\n");
    expect(&mut control, &["INCR", "counter"], b":1\r\n");
}

#[test]
fn turning_the_log_off_during_a_rewrite_is_not_a_rewrite_failure() {
    const SHARDS: usize = 2;
    let server = start(SHARDS, &["--appendonly", "yes"]);
    let mut raw = server.raw();
    ok(&mut raw, &["SET", "k", "v"]);
    // The stall holds the rewrite at its cut until the log is turned off.
    ok(&mut raw, &["DEBUG", "FAULT", "0", "stall"]);
    expect(&mut raw, &["BGREWRITEAOF"], STARTED);
    ok(&mut raw, &["CONFIG", "SET", "appendonly", "no"]);
    ok(&mut raw, &["DEBUG", "FAULT", "0", "resume"]);
    let last = wait_info(&mut raw, "the cancelled rewrite never ended", no_rewrite);
    // Valkey kills its rewrite child with SIGUSR1 here, which it does not count as a failure
    // (and failures in a row make automatic rewrites back off for minutes).
    assert_eq!(
        field(&last, "aof_last_bgrewrite_status").as_deref(),
        Some("ok"),
        "a rewrite stopped by CONFIG SET appendonly no counted as failed:\n{last}"
    );
    assert_eq!(
        field_u64(&last, "aof_rewrites_consecutive_failures"),
        0,
        "{last}"
    );
    // And the log comes back.
    ok(&mut raw, &["CONFIG", "SET", "appendonly", "yes"]);
    wait_log_on(&mut raw, SHARDS);
    ok(&mut raw, &["SET", "k", "v2"]);
    expect(&mut raw, &["WAITAOF", "1", "0", "0"], ACK_1_0);
    let server = crash_and_restart(server, SHARDS, &["--appendonly", "yes"]);
    expect(&mut server.raw(), &["GET", "k"], b"$2\r\nv2\r\n");
}

#[test]
fn appendonly_toggled_repeatedly_keeps_the_latest_data_and_removes_old_chains() {
    const SHARDS: usize = 2;
    let args = ["--appendonly", "yes"];
    let server = start(SHARDS, &args);
    let mut raw = server.raw();
    let mut m = Model::default();
    let version = |m: &mut Model, raw: &mut Raw, tag: &str| {
        let items: Vec<_> = numbered(40, "k", &format!("{tag}-"), Ttl::None)
            .into_iter()
            .chain(std::iter::once((
                format!("only-{tag}"),
                b"x".to_vec(),
                Ttl::Ex(5000),
            )))
            .collect();
        m.set_many(raw, 0, &items);
    };
    version(&mut m, &mut raw, "v0");

    let mut rewrites = field_u64(&persistence(&mut raw), "aof_rewrites");
    for cycle in 1..=3 {
        let old = chain_files(server.data_dir());
        ok(&mut raw, &["CONFIG", "SET", "appendonly", "no"]);
        version(&mut m, &mut raw, &format!("off{cycle}"));
        ok(&mut raw, &["CONFIG", "SET", "appendonly", "yes"]);
        let on = wait_log_on(&mut raw, SHARDS);
        assert!(
            field_u64(&on, "aof_rewrites") > rewrites,
            "cycle {cycle}: the log came on without a rewrite:\n{on}"
        );
        rewrites = field_u64(&on, "aof_rewrites");
        // The new chain is all new files; the old chain's are gone.
        let named = read_manifest(server.data_dir()).expected_files();
        let present = dir_files(server.data_dir());
        assert_eq!(
            present, named,
            "cycle {cycle}: unnamed files in the AOF directory"
        );
        let left: Vec<&String> = old.intersection(&present).collect();
        assert!(
            left.is_empty(),
            "cycle {cycle}: the old chain's files remain: {left:?}"
        );
        version(&mut m, &mut raw, &format!("on{cycle}"));
    }

    // Toggles with no waiting between them (two cancelled starts at most: see
    // `turning_the_log_on_again_is_not_held_back_by_cancelled_starts` for more); the log must
    // end up on.
    for _ in 0..2 {
        ok(&mut raw, &["CONFIG", "SET", "appendonly", "yes"]);
        ok(&mut raw, &["CONFIG", "SET", "appendonly", "no"]);
    }
    version(&mut m, &mut raw, "burst");
    ok(&mut raw, &["CONFIG", "SET", "appendonly", "yes"]);
    wait_log_on(&mut raw, SHARDS);
    // A fresh connection: WAITAOF on one that wrote to older chains is
    // `waitaof_counts_writes_made_after_the_log_was_turned_off_and_on_again`.
    let mut last = server.raw();
    version(&mut m, &mut last, "final");
    expect(&mut last, &["WAITAOF", "1", "0", "0"], ACK_1_0);
    m.verify_exact(&server, "before the crash");
    assert_eq!(
        dir_files(server.data_dir()),
        read_manifest(server.data_dir()).expected_files()
    );

    let server = crash_and_restart(server, SHARDS, &args);
    m.verify_exact(&server, "after toggling and kill -9");
}

#[test]
fn waitaof_counts_writes_made_after_the_log_was_turned_off_and_on_again() {
    const SHARDS: usize = 2;
    let args = ["--appendonly", "yes"];
    let server = start(SHARDS, &args);
    let mut raw = server.raw();
    // Enough on the first chain that its positions run well past what comes after.
    let big = "x".repeat(1000);
    for i in 0..100 {
        ok(&mut raw, &["SET", &format!("first{i}"), &big]);
    }
    expect(&mut raw, &["WAITAOF", "1", "0", "0"], ACK_1_0);
    ok(&mut raw, &["CONFIG", "SET", "appendonly", "no"]);
    ok(&mut raw, &["CONFIG", "SET", "appendonly", "yes"]);
    wait_log_on(&mut raw, SHARDS);
    for shard in 0..SHARDS {
        ok(
            &mut raw,
            &["SET", &key_on(shard, SHARDS, "second-"), "small"],
        );
    }
    // The new writes are on disk at once (Valkey's offsets only grow, so it answers 1); a
    // timeout instead of 0 so that a wrong answer shows rather than blocking the test.
    expect(&mut raw, &["WAITAOF", "1", "0", "2000"], ACK_1_0);
    let mut fresh = server.raw();
    ok(&mut fresh, &["SET", "fresh", "1"]);
    expect(&mut fresh, &["WAITAOF", "1", "0", "0"], ACK_1_0);
    let server = crash_and_restart(server, SHARDS, &args);
    let mut raw = server.raw();
    for shard in 0..SHARDS {
        expect(
            &mut raw,
            &["GET", &key_on(shard, SHARDS, "second-")],
            b"$5\r\nsmall\r\n",
        );
    }
    expect(
        &mut raw,
        &["EXISTS", "first0", "first99", "fresh"],
        b":3\r\n",
    );
}

#[test]
fn turning_the_log_on_again_is_not_held_back_by_cancelled_starts() {
    const SHARDS: usize = 2;
    let args = ["--appendonly", "yes"];
    let server = start(SHARDS, &args);
    let mut raw = server.raw();
    // Enough data that turning the log on takes a moment, so that the next command cancels it.
    let mut batch = Vec::new();
    for i in 0..2000 {
        batch.extend(resp(&[b"SET", format!("k{i}").as_bytes(), b"v"]));
    }
    raw.send(&batch);
    for _ in 0..2000 {
        assert_eq!(raw.reply(), OK);
    }
    // Starts cancelled by CONFIG SET appendonly no. Valkey does not count a rewrite it stopped
    // itself as failed, so nothing backs off afterwards.
    for _ in 0..3 {
        ok(&mut raw, &["CONFIG", "SET", "appendonly", "no"]);
        ok(&mut raw, &["CONFIG", "SET", "appendonly", "yes"]);
        ok(&mut raw, &["CONFIG", "SET", "appendonly", "no"]);
        wait_info(&mut raw, "a cancelled start never ended", no_rewrite);
    }
    // On again while the last cancelled start may still wind down: the log must come on.
    ok(&mut raw, &["CONFIG", "SET", "appendonly", "yes"]);
    ok(&mut raw, &["CONFIG", "SET", "appendonly", "no"]);
    ok(&mut raw, &["CONFIG", "SET", "appendonly", "yes"]);
    wait_log_on(&mut raw, SHARDS);
    let mut fresh = server.raw();
    ok(&mut fresh, &["SET", "after", "1"]);
    expect(&mut fresh, &["WAITAOF", "1", "0", "0"], ACK_1_0);
    let server = crash_and_restart(server, SHARDS, &args);
    expect(
        &mut server.raw(),
        &["EXISTS", "k0", "k1999", "after"],
        b":3\r\n",
    );
}

// ------------------------------------------------------------------------------------------
// Files left by a rewrite interrupted by a crash
// ------------------------------------------------------------------------------------------

#[test]
fn files_left_by_a_rewrite_interrupted_by_kill_9_are_removed_at_start() {
    const SHARDS: usize = 2;
    let args = ["--appendonly", "yes", "--appendfsync", "always"];
    let server = start(SHARDS, &args);
    let mut raw = server.raw();
    let mut m = Model::default();
    m.set_many(&mut raw, 0, &numbered(300, "key", "value-", Ttl::None));
    m.set(&mut raw, 0, "volatile", b"t", Ttl::Ex(1000));
    let named_before = read_manifest(server.data_dir()).files();

    // Shard 0's stalled commit loop holds the rewrite before the manifest names the new
    // segments: shard 1 has rolled to a file no manifest names yet.
    ok(&mut raw, &["DEBUG", "FAULT", "0", "stall"]);
    expect(&mut raw, &["BGREWRITEAOF"], STARTED);
    let data_dir = server.data_dir().to_path_buf();
    let unnamed = || -> BTreeSet<String> {
        let named = read_manifest(&data_dir).expected_files();
        dir_files(&data_dir).difference(&named).cloned().collect()
    };
    assert!(
        eventually(WITHIN, || unnamed()
            .iter()
            .any(|f| f.starts_with("shard1-") && f.ends_with(".log"))),
        "shard 1 did not roll to a new segment: {:?}",
        unnamed()
    );
    // A write on shard 1 now is in a segment the manifest does not name: not acknowledged.
    let k1 = key_on(1, SHARDS, "held-");
    let mut held = server.raw();
    held.send(&resp(&[b"SET", k1.as_bytes(), b"h"]));
    assert!(
        no_reply_yet(&mut held),
        "a write in a segment the manifest does not name yet was acknowledged"
    );
    let mut maybe = BTreeMap::new();
    maybe.insert((0, k1.clone()), b"h".to_vec());
    let leftovers = unnamed();

    let dir = crash(server);
    // More of what crashes can leave: files of a later epoch and a half-written manifest, and
    // a file that is not the server's.
    let aof = aof_dir(dir.path());
    let planted = [
        "shard0-77-00000000000000004096.log",
        "shard1-base-77.base",
        "manifest.tmp",
    ];
    for name in planted {
        std::fs::write(aof.join(name), b"left over by a crash\n\0garbage").expect("plant");
    }
    std::fs::write(aof.join("notes.txt"), b"not a log file").expect("plant");

    let server = restart(dir, SHARDS, &args);
    let present = dir_files(server.data_dir());
    for name in leftovers.iter().map(String::as_str).chain(planted) {
        assert!(!present.contains(name), "{name} was not removed at start");
    }
    assert!(
        present.contains("notes.txt"),
        "a file that is not the log's was removed"
    );
    let manifest = read_manifest(server.data_dir());
    assert_eq!(manifest.files(), named_before, "the manifest changed");
    let mut expected = manifest.expected_files();
    expected.insert("notes.txt".to_string());
    assert_eq!(present, expected);
    m.verify(&server, "after a crash during a rewrite", &maybe);

    // Rewrites work again, and their result loads.
    let mut raw = server.raw();
    let epoch = manifest.epoch;
    rewrite_now(&mut raw, 1);
    let m2 = read_manifest(server.data_dir());
    assert_eq!(m2.epoch, epoch + 1);
    let mut named = m2.expected_files();
    named.insert("notes.txt".to_string());
    assert_eq!(dir_files(server.data_dir()), named);
    m.set(&mut raw, 0, "after", b"a", Ttl::None);
    let server = crash_and_restart(server, SHARDS, &args);
    m.verify(&server, "after the rewrite that followed the crash", &maybe);
}
