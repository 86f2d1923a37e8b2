//! Durability: what survives `kill -9`, torn tails, corruption in the middle of the log, crashes
//! in the middle of cross-shard writes, and disk errors (injected and real). Also WAITAOF's
//! replies and errors, byte for byte.
//!
//! Run with `cargo test --release --features fault-injection --test durability`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    aof_dir, blocked_waiter, bulk, crash, crash_and_restart, eventually, expect, field, field_u64,
    free_port, info, int, key_on, logs, no_reply_yet, ok, persistence, resp, restart, shard_logs,
    shard_of, start, text, wait_or_kill, Raw, Server, ACK_0_0, ACK_1_0, AOF_DISABLED, OK, QUEUED,
};

const MISCONF_EIO: &str = "-MISCONF Errors writing to the AOF file: Input/output error";
const MISCONF_ENOSPC: &str = "-MISCONF Errors writing to the AOF file: No space left on device";
/// How long a state the test waits for may take to appear.
const WITHIN: Duration = Duration::from_secs(15);

// ------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------

/// The last segment file of `shard` named in the manifest under `data_dir`.
fn segment_file(data_dir: &Path, shard: usize) -> PathBuf {
    let dir = aof_dir(data_dir);
    let manifest = std::fs::read_to_string(dir.join("manifest")).expect("manifest");
    let file = manifest
        .lines()
        .rev()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() == 4 && w[0] == "segment" && w[1] == shard.to_string())
                .then(|| w[3].to_string())
        })
        .next()
        .expect("a segment in the manifest");
    dir.join(file)
}

/// Segment bytes read by the tests: the data they write stays well below this.
const SEGMENT_PREFIX: u64 = 1 << 20;

fn read_prefix(path: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    File::open(path)
        .expect("open segment")
        .take(SEGMENT_PREFIX)
        .read_to_end(&mut bytes)
        .expect("read segment");
    bytes
}

/// A record in a segment: file offset, total length, commit (batch) number.
#[derive(Debug, Clone, Copy)]
struct Rec {
    at: usize,
    len: usize,
    batch: u32,
}

/// The records of a segment (layout in src/storage/record.rs; records start at 4096).
fn records(seg: &[u8]) -> Vec<Rec> {
    let mut out = Vec::new();
    let mut at = 4096;
    while at + 21 <= seg.len() {
        let len = u32::from_le_bytes(seg[at..at + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        let batch = u32::from_le_bytes(seg[at + 16..at + 20].try_into().unwrap());
        out.push(Rec {
            at,
            len: 20 + len,
            batch,
        });
        at += 20 + len;
    }
    out
}

/// Copies the log of `from` (manifest and the used part of every segment) into a fresh data
/// directory.
fn copy_log(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().expect("tempdir");
    let src = aof_dir(from);
    let dst = aof_dir(to.path());
    std::fs::create_dir(&dst).expect("mkdir");
    for entry in std::fs::read_dir(&src).expect("read_dir") {
        let entry = entry.expect("entry");
        let name = entry.file_name();
        let is_segment = name.to_string_lossy().ends_with(".log");
        let mut bytes = if is_segment {
            read_prefix(&entry.path())
        } else {
            std::fs::read(entry.path()).expect("read")
        };
        if is_segment {
            let used = records(&bytes).last().map_or(4096, |r| r.at + r.len);
            assert!(
                (used as u64) + 16384 < SEGMENT_PREFIX || bytes.len() < SEGMENT_PREFIX as usize,
                "test data too large to copy"
            );
            bytes.truncate((used.div_ceil(4096) * 4096 + 8192).min(bytes.len()));
        }
        std::fs::write(dst.join(&name), bytes).expect("write copy");
    }
    to
}

/// What a start that should be refused did.
struct Refused {
    code: Option<i32>,
    output: String,
}

/// Starts the binary on `dir`, expecting it to refuse and exit; panics if it keeps running.
fn start_refused(dir: &Path, shards: usize, extra: &[&str]) -> Refused {
    let port = free_port();
    let log = dir.join("refused.log");
    let err = dir.join("refused.stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_corekv-server"))
        .args([
            "--port",
            &port.to_string(),
            "--dir",
            &dir.display().to_string(),
            "--shards",
            &shards.to_string(),
            "--appendonly",
            "yes",
            "--logfile",
            &log.display().to_string(),
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(File::create(&err).expect("stderr file"))
        .spawn()
        .expect("spawn corekv-server");
    let Some(status) = wait_or_kill(&mut child, Duration::from_secs(20)) else {
        panic!(
            "the server was expected to refuse to start but kept running; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    };
    let output = format!(
        "{}\n{}",
        std::fs::read_to_string(&err).unwrap_or_default(),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    Refused {
        code: status.code(),
        output,
    }
}

/// What the tests expect in the keyspace: values and TTLs (seconds given at write time).
#[derive(Default)]
struct Model {
    values: BTreeMap<String, Vec<u8>>,
    ttl: BTreeMap<String, i64>,
}

impl Model {
    fn set(&mut self, k: &str, v: impl AsRef<[u8]>) {
        self.values.insert(k.to_string(), v.as_ref().to_vec());
        self.ttl.remove(k);
    }
    fn del(&mut self, k: &str) {
        self.values.remove(k);
        self.ttl.remove(k);
    }
}

/// Checks every key of `model` (value and TTL) and that no other key exists, except those in
/// `maybe`, which may be absent or must hold the value given there.
fn verify(server: &Server, model: &Model, maybe: &BTreeMap<String, Vec<u8>>) {
    let mut raw = server.raw();
    for (k, v) in &model.values {
        let got = bulk(&raw.cmd(&["GET", k]));
        assert_eq!(
            got.as_deref().map(text),
            Some(text(v)),
            "acknowledged key {k} after restart"
        );
        let ttl = int(&raw.cmd(&["TTL", k]));
        match model.ttl.get(k) {
            None => assert_eq!(ttl, -1, "TTL of {k} (none was set)"),
            Some(&t) => assert!(
                ttl > t - 120 && ttl <= t,
                "TTL of {k} after restart is {ttl}, set to {t}"
            ),
        }
    }
    let mut con = server.client();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut con).expect("KEYS");
    for k in &keys {
        if model.values.contains_key(k) {
            continue;
        }
        match maybe.get(k) {
            Some(v) => assert_eq!(
                bulk(&raw.cmd(&["GET", k])).as_deref().map(text),
                Some(text(v)),
                "unacknowledged key {k} came back with another value"
            ),
            None => panic!("key {k} exists after restart but was never acknowledged"),
        }
    }
    let unique: BTreeSet<&String> = keys.iter().collect();
    for k in model.values.keys() {
        assert!(unique.contains(k), "KEYS * misses {k}");
    }
}

// ------------------------------------------------------------------------------------------
// 1. appendfsync always: every acknowledged write survives kill -9
// ------------------------------------------------------------------------------------------

fn always_workload(shards: usize) {
    let args = ["--appendonly", "yes", "--appendfsync", "always"];
    let server = start(shards, &args);
    let mut raw = server.raw();
    let mut m = Model::default();

    // Plain SETs, pipelined so that several share a commit.
    let mut batch = Vec::new();
    for i in 0..150 {
        let v = format!("value-{i}-{}", "x".repeat(i % 40));
        batch.extend(resp(&[b"SET", format!("s{i}").as_bytes(), v.as_bytes()]));
        m.set(&format!("s{i}"), v);
    }
    raw.send(&batch);
    for _ in 0..150 {
        assert_eq!(text(&raw.reply()), "+OK\r\n");
    }
    // Counters.
    for round in 1..=20 {
        for c in 0..6 {
            expect(
                &mut raw,
                &["INCR", &format!("ctr{c}")],
                format!(":{round}\r\n").as_bytes(),
            );
        }
    }
    for c in 0..6 {
        m.set(&format!("ctr{c}"), "20");
    }
    expect(&mut raw, &["INCRBY", "ctr1", "-7"], b":13\r\n");
    m.set("ctr1", "13");
    expect(&mut raw, &["DECR", "ctr2"], b":19\r\n");
    m.set("ctr2", "19");
    // MSET over several keys (across shards when there are two).
    for i in 0..15 {
        let (a, b, c) = (format!("ma{i}"), format!("mb{i}"), format!("mc{i}"));
        ok(&mut raw, &["MSET", &a, "1", &b, "22", &c, "333"]);
        m.set(&a, "1");
        m.set(&b, "22");
        m.set(&c, "333");
    }
    // APPEND.
    for i in 0..40 {
        let k = format!("s{i}");
        let mut v = m.values[&k].clone();
        v.extend_from_slice(b"+tail");
        expect(
            &mut raw,
            &["APPEND", &k, "+tail"],
            format!(":{}\r\n", v.len()).as_bytes(),
        );
        m.set(&k, v);
    }
    expect(&mut raw, &["APPEND", "fresh-append", "abc"], b":3\r\n");
    m.set("fresh-append", "abc");
    // Expiry: EXPIRE, SETEX, SET EX/PX, PERSIST.
    for i in 40..60 {
        expect(&mut raw, &["EXPIRE", &format!("s{i}"), "1000"], b":1\r\n");
        m.ttl.insert(format!("s{i}"), 1000);
    }
    expect(&mut raw, &["PERSIST", "s40"], b":1\r\n");
    m.ttl.remove("s40");
    for i in 0..10 {
        let k = format!("e{i}");
        ok(&mut raw, &["SETEX", &k, "2000", &format!("ex{i}")]);
        m.set(&k, format!("ex{i}"));
        m.ttl.insert(k, 2000);
    }
    ok(&mut raw, &["SET", "px", "pv", "PX", "3000000"]);
    m.set("px", "pv");
    m.ttl.insert("px".into(), 3000);
    ok(&mut raw, &["SET", "exopt", "ev", "EX", "4000"]);
    m.set("exopt", "ev");
    m.ttl.insert("exopt".into(), 4000);
    expect(&mut raw, &["EXPIRE", "ctr5", "5000"], b":1\r\n");
    m.ttl.insert("ctr5".into(), 5000);
    expect(&mut raw, &["INCR", "ctr5"], b":21\r\n");
    m.values.insert("ctr5".into(), b"21".to_vec());
    // DEL, one key and several across shards.
    for i in 60..80 {
        expect(&mut raw, &["DEL", &format!("s{i}")], b":1\r\n");
        m.del(&format!("s{i}"));
    }
    expect(
        &mut raw,
        &["DEL", "s80", "s81", "s82", "s83", "s84", "nosuch"],
        b":5\r\n",
    );
    for i in 80..85 {
        m.del(&format!("s{i}"));
    }
    // MULTI/EXEC across shards.
    let mut ctr0 = 20;
    for i in 0..10 {
        let (a, b, d) = (format!("ta{i}"), format!("tb{i}"), format!("s{}", 85 + i));
        ok(&mut raw, &["MULTI"]);
        expect(&mut raw, &["SET", &a, "A"], QUEUED);
        expect(&mut raw, &["INCR", "ctr0"], QUEUED);
        expect(&mut raw, &["SET", &b, "B"], QUEUED);
        expect(&mut raw, &["DEL", &d], QUEUED);
        ctr0 += 1;
        expect(
            &mut raw,
            &["EXEC"],
            format!("*4\r\n+OK\r\n:{ctr0}\r\n+OK\r\n:1\r\n").as_bytes(),
        );
        m.set(&a, "A");
        m.set(&b, "B");
        m.del(&d);
    }
    m.values
        .insert("ctr0".into(), ctr0.to_string().into_bytes());
    // RENAME, across shards where there are two.
    let mut crossed = 0;
    for i in 100..120 {
        let src = format!("s{i}");
        let to_shard = (shard_of(&src, shards) + 1) % shards;
        let dst = key_on(to_shard, shards, &format!("r{i}-"));
        crossed += usize::from(shard_of(&dst, shards) != shard_of(&src, shards));
        ok(&mut raw, &["RENAME", &src, &dst]);
        let v = m.values.remove(&src).expect("source");
        let ttl = m.ttl.remove(&src);
        m.set(&dst, v);
        if let Some(t) = ttl {
            m.ttl.insert(dst, t);
        }
    }
    if shards > 1 {
        assert_eq!(crossed, 20);
    }
    // RENAME onto an existing key, and of a key with a TTL.
    ok(&mut raw, &["RENAME", "s120", "s121"]);
    let v = m.values.remove("s120").expect("s120");
    m.set("s121", v);
    ok(&mut raw, &["RENAME", "s45", "renamed-with-ttl"]);
    let v = m.values.remove("s45").expect("s45");
    m.set("renamed-with-ttl", v);
    m.ttl.remove("s45");
    m.ttl.insert("renamed-with-ttl".into(), 1000);

    // A pipeline still in flight at the crash: the replies read are acknowledged writes.
    let mut maybe = BTreeMap::new();
    let mut batch = Vec::new();
    for i in 0..60 {
        let v = format!("flight-{i}");
        batch.extend(resp(&[b"SET", format!("f{i}").as_bytes(), v.as_bytes()]));
        maybe.insert(format!("f{i}"), v.into_bytes());
    }
    raw.send(&batch);
    for i in 0..20 {
        assert_eq!(text(&raw.reply()), "+OK\r\n");
        let k = format!("f{i}");
        let v = maybe.remove(&k).expect("in flight");
        m.set(&k, v);
    }

    let server = crash_and_restart(server, shards, &args);
    verify(&server, &m, &maybe);
    // The log goes on after the restart.
    let mut raw = server.raw();
    expect(&mut raw, &["INCR", "ctr3"], b":21\r\n");
}

#[test]
fn always_every_acknowledged_write_survives_kill_9() {
    for shards in [1, 2] {
        always_workload(shards);
    }
}

/// One client of the concurrent crash test: what it sent and what was acknowledged.
#[derive(Debug, Default)]
struct ClientTally {
    incr_sent: i64,
    incr_acked: i64,
    mset_sent: i64,
    mset_acked: i64,
    batches: usize,
}

/// Reads one reply from `stream`; `None` once the connection is gone.
fn read_reply(stream: &mut std::net::TcpStream, pending: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        if let Some(len) = corekv::protocol::reply::element_len(pending) {
            return Some(pending.drain(..len).collect());
        }
        let mut buf = [0u8; 4096];
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
    }
}

/// Pipelines INCRs of its own counter and cross-shard MSETs of a pair of keys (both set to the
/// same sequence number) until the connection dies.
fn crash_client(
    port: u16,
    t: usize,
    progress: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> ClientTally {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let (c, a, b) = (
        format!("cc{t}"),
        key_on(0, 2, &format!("pa{t}-")),
        key_on(1, 2, &format!("pb{t}-")),
    );
    let mut tally = ClientTally::default();
    let mut pending = Vec::new();
    loop {
        let mut batch = Vec::new();
        let mut kinds = Vec::new();
        for j in 0..8 {
            if j % 2 == 0 {
                tally.incr_sent += 1;
                batch.extend(resp(&[b"INCR", c.as_bytes()]));
                kinds.push(None);
            } else {
                tally.mset_sent += 1;
                let v = tally.mset_sent.to_string();
                batch.extend(resp(&[
                    b"MSET",
                    a.as_bytes(),
                    v.as_bytes(),
                    b.as_bytes(),
                    v.as_bytes(),
                ]));
                kinds.push(Some(tally.mset_sent));
            }
        }
        if std::io::Write::write_all(&mut stream, &batch).is_err() {
            return tally;
        }
        for kind in kinds {
            let Some(reply) = read_reply(&mut stream, &mut pending) else {
                return tally;
            };
            match kind {
                None => {
                    assert!(reply.starts_with(b":"), "INCR answered {}", text(&reply));
                    tally.incr_acked = int(&reply);
                }
                Some(v) => {
                    assert_eq!(text(&reply), "+OK\r\n");
                    tally.mset_acked = v;
                }
            }
        }
        tally.batches += 1;
        progress.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn always_concurrent_clients_killed_mid_flight_keep_every_acknowledged_write() {
    const CLIENTS: usize = 4;
    let args = ["--appendonly", "yes", "--appendfsync", "always"];
    let server = start(2, &args);
    let progress: Vec<_> = (0..CLIENTS)
        .map(|_| std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0)))
        .collect();
    let port = server.port;
    let threads: Vec<_> = (0..CLIENTS)
        .map(|t| {
            let p = progress[t].clone();
            std::thread::spawn(move || crash_client(port, t, p))
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(30), || progress
            .iter()
            .all(|p| p.load(std::sync::atomic::Ordering::SeqCst) >= 40)),
        "the clients made no progress"
    );
    let dir = crash(server);
    let tallies: Vec<ClientTally> = threads
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .collect();
    let server = restart(dir, 2, &args);
    let mut raw = server.raw();
    for (t, tally) in tallies.iter().enumerate() {
        let c = bulk(&raw.cmd(&["GET", &format!("cc{t}")]))
            .map_or(0, |v| text(&v).parse::<i64>().expect("counter"));
        assert!(
            c >= tally.incr_acked && c <= tally.incr_sent,
            "client {t}: counter {c} after restart, {tally:?}"
        );
        let a = bulk(&raw.cmd(&["GET", &key_on(0, 2, &format!("pa{t}-"))]))
            .map_or(0, |v| text(&v).parse::<i64>().expect("a"));
        let b = bulk(&raw.cmd(&["GET", &key_on(1, 2, &format!("pb{t}-"))]))
            .map_or(0, |v| text(&v).parse::<i64>().expect("b"));
        assert_eq!(
            a, b,
            "client {t}: a cross-shard MSET came back half applied; {tally:?}"
        );
        assert!(
            a >= tally.mset_acked && a <= tally.mset_sent,
            "client {t}: MSET pair at {a} after restart, {tally:?}"
        );
    }
}

// ------------------------------------------------------------------------------------------
// 2. everysec / no: every write WAITAOF acknowledged survives kill -9
// ------------------------------------------------------------------------------------------

#[test]
fn info_shows_each_shards_group_commit_batch_sizes() {
    const WRITERS: usize = 40;
    let server = start(1, &["--appendonly", "yes", "--appendfsync", "always"]);
    let mut control = server.raw();
    // Every write arrives while the commit loop is held, so one fdatasync carries them all.
    ok(&mut control, &["DEBUG", "FAULT", "0", "stall"]);
    let mut writers: Vec<Raw> = (0..WRITERS).map(|_| server.raw()).collect();
    for (i, w) in writers.iter_mut().enumerate() {
        w.send(&resp(&[b"SET", format!("k{i}").as_bytes(), b"v"]));
    }
    assert!(
        eventually(WITHIN, || {
            field(&info(&mut control, "commandstats"), "cmdstat_set")
                .is_some_and(|s| s.starts_with(&format!("calls={WRITERS},")))
        }),
        "the writes did not all arrive"
    );
    ok(&mut control, &["DEBUG", "FAULT", "0", "resume"]);
    for w in &mut writers {
        assert_eq!(text(&w.reply()), "+OK\r\n");
    }
    let log = logs(&mut control).remove(0);
    assert_eq!(log.batch.2, WRITERS as u64, "{log:?}");
    assert!(log.fsyncs >= 1 && log.batch.0 <= log.batch.1 && log.batch.1 <= log.batch.2);

    ok(&mut control, &["CONFIG", "RESETSTAT"]);
    let log = logs(&mut control).remove(0);
    assert_eq!((log.fsyncs, log.batch), (0, (0, 0, 0)), "{log:?}");
    ok(&mut control, &["SET", "one", "1"]);
    let log = logs(&mut control).remove(0);
    assert_eq!((log.fsyncs, log.batch), (1, (1, 1, 1)), "{log:?}");
}

#[test]
fn written_log_bytes_do_not_pile_up_in_memory_in_no_and_everysec() {
    // 48 MiB of overwrites of one key: the keyspace stays small, so memory may only grow by
    // what the log keeps of written bytes not synced yet, which is bounded.
    const WRITES: usize = 768;
    let value = vec![b'v'; 64 * 1024];
    for mode in ["no", "everysec"] {
        let server = start(1, &["--appendonly", "yes", "--appendfsync", mode]);
        let mut raw = server.raw();
        let used = |raw: &mut Raw| field_u64(&info(raw, "memory"), "used_memory");
        let before = used(&mut raw);
        // In small pipelines, so the connection's own buffers stay small.
        let pipeline: Vec<u8> = (0..16)
            .flat_map(|_| resp(&[b"SET", b"k", &value]))
            .collect();
        for _ in 0..WRITES / 16 {
            raw.send(&pipeline);
            for _ in 0..16 {
                assert_eq!(text(&raw.reply()), "+OK\r\n");
            }
        }
        // Buffers of the last writes in flight go within moments; what stays is bounded by
        // the 8 MiB sync threshold (a buffer up to twice that), not by the 48 MiB written.
        let mut grown = 0;
        assert!(
            eventually(WITHIN, || {
                grown = used(&mut raw).saturating_sub(before);
                grown < 24 << 20
            }),
            "{mode}: used_memory grew by {grown} bytes after 48 MiB of overwrites of one key"
        );
        let log = logs(&mut raw).remove(0);
        assert!(
            log.fsyncs >= 1,
            "{mode}: no sync bounded the unsynced bytes: {log:?}"
        );
    }
}

/// Pipelines `SET k<i> v` in batches of 64 on a new connection until the server goes away;
/// how many were acknowledged (replies come in order, so keys `k0..` up to that count).
fn write_until_closed(port: u16) -> u64 {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(WITHIN)).expect("read timeout");
    let mut acked = 0u64;
    let mut input = Vec::new();
    loop {
        let batch: Vec<u8> = (acked..acked + 64)
            .flat_map(|i| resp(&[b"SET", format!("k{i}").as_bytes(), b"v"]))
            .collect();
        if stream.write_all(&batch).is_err() {
            return acked;
        }
        let until = acked + 64;
        while acked < until {
            if let Some(at) = input.windows(2).position(|w| w == b"\r\n") {
                assert_eq!(&input[..at], b"+OK", "unexpected reply");
                input.drain(..at + 2);
                acked += 1;
                continue;
            }
            let mut buf = [0u8; 4096];
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => return acked,
                Ok(n) => input.extend_from_slice(&buf[..n]),
            }
        }
    }
}

#[test]
fn a_clean_shutdown_keeps_every_write_it_acknowledged() {
    for mode in ["everysec", "no"] {
        let args = ["--appendonly", "yes", "--appendfsync", mode];
        let mut server = start(2, &args);
        let port = server.port;
        let writer = std::thread::spawn(move || write_until_closed(port));
        let mut control = server.raw();
        assert!(
            eventually(WITHIN, || field_u64(
                &info(&mut control, "stats"),
                "total_commands_processed"
            ) > 5000),
            "{mode}: the writer did not get going"
        );
        control.send(&resp(&[b"SHUTDOWN"]));
        server
            .wait_exit(WITHIN)
            .expect("the server exits after SHUTDOWN");
        let acked = writer.join().expect("writer thread");
        let dir = std::mem::replace(&mut server.dir, tempfile::tempdir().expect("tempdir"));
        let server = restart(dir, 2, &args);
        let mut raw = server.raw();
        for chunk in (0..acked).collect::<Vec<_>>().chunks(500) {
            let keys: Vec<String> = chunk.iter().map(|i| format!("k{i}")).collect();
            let mut cmd = vec!["EXISTS"];
            cmd.extend(keys.iter().map(String::as_str));
            let found = int(&raw.cmd(&cmd));
            assert_eq!(
                found,
                chunk.len() as i64,
                "{mode}: of {acked} acknowledged writes, some of k{}..k{} are missing",
                chunk[0],
                chunk[chunk.len() - 1]
            );
        }
    }
}

#[test]
fn a_shutdown_lets_commands_under_way_finish_and_logs_them() {
    let args = ["--appendonly", "yes", "--appendfsync", "everysec"];
    let mut server = start(2, &args);
    let mut control = server.raw();
    // Whichever shard the writer's connection is on holds its next grouped calls a second.
    for shard in ["0", "1"] {
        ok(&mut control, &["DEBUG", "FAULT", shard, "delay", "1000"]);
    }
    // One key per shard, pipelined: the SET for the other shard is grouped (and whatever
    // follows it), and the group is held when SHUTDOWN comes.
    let (a, b) = (key_on(0, 2, "held-a"), key_on(1, 2, "held-b"));
    let mut writer = server.raw();
    let mut batch = resp(&[b"SET", a.as_bytes(), b"1"]);
    batch.extend_from_slice(&resp(&[b"SET", b.as_bytes(), b"2"]));
    writer.send(&batch);
    assert!(
        eventually(WITHIN, || control
            .cmd_text(&["CLIENT", "LIST"])
            .contains("cmd=set")),
        "the SETs never started"
    );
    control.send(&resp(&[b"SHUTDOWN"]));
    // It waits for the SETs, not for its own connection (nor the whole shutdown limit).
    server
        .wait_exit(Duration::from_secs(5))
        .expect("the server exits soon after SHUTDOWN");
    let dir = std::mem::replace(&mut server.dir, tempfile::tempdir().expect("tempdir"));
    let server = restart(dir, 2, &args);
    let mut raw = server.raw();
    assert_eq!(
        raw.cmd(&["MGET", &a, &b]),
        b"*2\r\n$1\r\n1\r\n$1\r\n2\r\n",
        "the SETs under way when SHUTDOWN came are not in the log"
    );
}

#[test]
fn waitaof_acknowledged_writes_survive_kill_9_in_everysec_and_no() {
    for mode in ["everysec", "no"] {
        let shards = 2;
        let args = ["--appendonly", "yes", "--appendfsync", mode];
        let server = start(shards, &args);
        let mut raw = server.raw();
        let mut other = server.raw();
        let mut m = Model::default();
        let mut counter = 0;
        for i in 0..30 {
            match i % 6 {
                0 => {
                    let k = format!("w{i}");
                    ok(&mut raw, &["SET", &k, &format!("v{i}")]);
                    m.set(&k, format!("v{i}"));
                }
                1 => {
                    counter += 1;
                    expect(
                        &mut raw,
                        &["INCR", "counter"],
                        format!(":{counter}\r\n").as_bytes(),
                    );
                    m.set("counter", counter.to_string());
                }
                2 => {
                    let (a, b) = (
                        key_on(0, 2, &format!("ma{i}-")),
                        key_on(1, 2, &format!("mb{i}-")),
                    );
                    ok(&mut raw, &["MSET", &a, "x", &b, "y"]);
                    m.set(&a, "x");
                    m.set(&b, "y");
                }
                3 => {
                    let k = "appended";
                    let mut v = m.values.get(k).cloned().unwrap_or_default();
                    v.extend_from_slice(format!("[{i}]").as_bytes());
                    expect(
                        &mut raw,
                        &["APPEND", k, &format!("[{i}]")],
                        format!(":{}\r\n", v.len()).as_bytes(),
                    );
                    m.set(k, v);
                }
                4 => {
                    let (a, b) = (
                        key_on(0, 2, &format!("ta{i}-")),
                        key_on(1, 2, &format!("tb{i}-")),
                    );
                    ok(&mut raw, &["MULTI"]);
                    expect(&mut raw, &["SET", &a, "1"], QUEUED);
                    expect(&mut raw, &["SETEX", &b, "900", "2"], QUEUED);
                    expect(&mut raw, &["EXEC"], b"*2\r\n+OK\r\n+OK\r\n");
                    m.set(&a, "1");
                    m.set(&b, "2");
                    m.ttl.insert(b, 900);
                }
                _ => {
                    // Another connection's writes, acknowledged by its own WAITAOF.
                    let k = format!("other{i}");
                    ok(&mut other, &["SET", &k, "o"]);
                    expect(&mut other, &["WAITAOF", "1", "0", "0"], ACK_1_0);
                    m.set(&k, "o");
                }
            }
            expect(&mut raw, &["WAITAOF", "1", "0", "0"], ACK_1_0);
        }
        let server = crash_and_restart(server, shards, &args);
        verify(&server, &m, &BTreeMap::new());
    }
}

// ------------------------------------------------------------------------------------------
// 3. WAITAOF replies and errors, byte for byte
// ------------------------------------------------------------------------------------------

const ARITY: &str = "-ERR wrong number of arguments for 'waitaof' command\r\n";
const NOT_INT: &str = "-ERR value is not an integer or out of range\r\n";
const NUMLOCAL_RANGE: &str = "-ERR value is out of range, value must between 0 and 1\r\n";
const NUMREPLICAS: &str = "-ERR value is out of range, must be positive\r\n";
const TIMEOUT_NEG: &str = "-ERR timeout is negative\r\n";
const TIMEOUT_NOT_INT: &str = "-ERR timeout is not an integer or out of range\r\n";
const TIMEOUT_RANGE: &str = "-ERR timeout is out of range\r\n";

fn waitaof_argument_errors(raw: &mut Raw) {
    let cases: &[(&[&str], &str)] = &[
        (&["WAITAOF"], ARITY),
        (&["WAITAOF", "1", "0"], ARITY),
        (&["WAITAOF", "1", "0", "0", "0"], ARITY),
        (&["WAITAOF", "abc", "0", "0"], NOT_INT),
        (&["WAITAOF", "1.5", "0", "0"], NOT_INT),
        (&["WAITAOF", "99999999999999999999", "0", "0"], NOT_INT),
        (&["WAITAOF", "2", "0", "0"], NUMLOCAL_RANGE),
        (&["WAITAOF", "-1", "0", "0"], NUMLOCAL_RANGE),
        (&["WAITAOF", "0", "-1", "0"], NUMREPLICAS),
        (&["WAITAOF", "0", "abc", "0"], NUMREPLICAS),
        (&["WAITAOF", "0", "0", "-1"], TIMEOUT_NEG),
        (&["WAITAOF", "0", "0", "abc"], TIMEOUT_NOT_INT),
        (&["WAITAOF", "0", "0", "1.5"], TIMEOUT_NOT_INT),
        (
            &["WAITAOF", "0", "0", "9223372036854775808"],
            TIMEOUT_NOT_INT,
        ),
        (&["WAITAOF", "0", "0", "9223372036854775807"], TIMEOUT_RANGE),
        // The order of the checks: numlocal, then numreplicas, then timeout.
        (&["WAITAOF", "2", "abc", "abc"], NUMLOCAL_RANGE),
        (&["WAITAOF", "abc", "-1", "-1"], NOT_INT),
        (&["WAITAOF", "0", "-1", "abc"], NUMREPLICAS),
        (&["waitaof", "0", "0", "-5"], TIMEOUT_NEG),
    ];
    for (args, reply) in cases {
        expect(raw, args, reply);
    }
}

fn connected_clients(raw: &mut Raw) -> u64 {
    field_u64(&info(raw, "clients"), "connected_clients")
}

#[test]
fn waitaof_replies_and_errors_are_byte_exact() {
    // AOF off.
    let off = Server::start(1, &["--appendonly", "no"]);
    let mut raw = off.raw();
    waitaof_argument_errors(&mut raw);
    expect(&mut raw, &["WAITAOF", "0", "0", "0"], ACK_0_0);
    expect(&mut raw, &["WAITAOF", "1", "0", "0"], AOF_DISABLED);
    expect(&mut raw, &["WAITAOF", "1", "5", "100"], AOF_DISABLED);
    // The arguments are parsed before the appendonly check.
    expect(&mut raw, &["WAITAOF", "1", "0", "-1"], TIMEOUT_NEG);
    ok(&mut raw, &["SET", "k", "v"]);
    expect(&mut raw, &["WAITAOF", "0", "0", "0"], ACK_0_0);
    expect(&mut raw, &["WAITAOF", "0", "0", "50"], ACK_0_0);
    // Inside MULTI: queued, then run at EXEC without blocking.
    ok(&mut raw, &["MULTI"]);
    expect(&mut raw, &["SET", "k", "v2"], QUEUED);
    expect(&mut raw, &["WAITAOF", "0", "1", "0"], QUEUED);
    expect(&mut raw, &["WAITAOF", "1", "0", "0"], QUEUED);
    expect(&mut raw, &["WAITAOF", "0", "0", "abc"], QUEUED);
    expect(
        &mut raw,
        &["EXEC"],
        format!("*4\r\n+OK\r\n*2\r\n:0\r\n:0\r\n{AOF_DISABLED}{TIMEOUT_NOT_INT}").as_bytes(),
    );
    drop(raw);
    drop(off);

    // AOF on (everysec, two shards).
    let on = start(2, &["--appendonly", "yes"]);
    let mut raw = on.raw();
    waitaof_argument_errors(&mut raw);
    // A connection that never wrote.
    expect(&mut raw, &["WAITAOF", "0", "0", "0"], ACK_1_0);
    expect(&mut raw, &["WAITAOF", "1", "0", "0"], ACK_1_0);
    let mut fresh = on.raw();
    expect(&mut fresh, &["WAITAOF", "1", "0", "0"], ACK_1_0);
    // MULTI on a fresh connection: not blocked although no replica can ever acknowledge.
    ok(&mut fresh, &["MULTI"]);
    expect(&mut fresh, &["SET", "mk", "v"], QUEUED);
    expect(&mut fresh, &["WAITAOF", "1", "1", "0"], QUEUED);
    expect(&mut fresh, &["EXEC"], b"*2\r\n+OK\r\n*2\r\n:1\r\n:0\r\n");
    // Arity errors are caught when queueing.
    ok(&mut fresh, &["MULTI"]);
    expect(&mut fresh, &["WAITAOF", "1"], ARITY);
    expect(
        &mut fresh,
        &["EXEC"],
        b"-EXECABORT Transaction discarded because of previous errors.\r\n",
    );
    // After a write: numlocal is met, numreplicas never is; the timeout answers.
    ok(&mut raw, &["SET", "a", "1"]);
    expect(&mut raw, &["WAITAOF", "1", "0", "0"], ACK_1_0);
    expect(&mut raw, &["WAITAOF", "1", "1", "100"], ACK_1_0);
    expect(&mut raw, &["WAITAOF", "0", "1", "100"], ACK_1_0);
    // The forced fsync happens while it waits for the replica that never comes.
    ok(&mut raw, &["SET", "a", "2"]);
    expect(&mut raw, &["WAITAOF", "1", "1", "1000"], ACK_1_0);
    // Inside MULTI after writes (pre-MULTI woff durable): not blocked.
    ok(&mut raw, &["MULTI"]);
    expect(&mut raw, &["SET", "k", "v"], QUEUED);
    expect(&mut raw, &["WAITAOF", "1", "1", "0"], QUEUED);
    expect(&mut raw, &["EXEC"], b"*2\r\n+OK\r\n*2\r\n:1\r\n:0\r\n");
    // RESP3 gives the same array.
    let r = raw.cmd(&["HELLO", "3"]);
    assert_eq!(r.first(), Some(&b'%'));
    expect(&mut raw, &["WAITAOF", "1", "0", "0"], ACK_1_0);
    assert_eq!(raw.cmd(&["HELLO", "2"]).first(), Some(&b'*'));
    let baseline = connected_clients(&mut raw);

    // A client blocked forever (numreplicas 1, timeout 0) that disconnects.
    let mut blocked = on.raw();
    ok(&mut blocked, &["SET", "b", "1"]);
    blocked.send(&resp(&[b"WAITAOF", b"0", b"1", b"0"]));
    assert!(no_reply_yet(&mut blocked), "WAITAOF 0 1 0 did not block");
    drop(blocked);
    expect(&mut raw, &["PING"], b"+PONG\r\n");
    ok(&mut raw, &["SET", "after-disconnect", "1"]);
    expect(&mut raw, &["GET", "after-disconnect"], b"$1\r\n1\r\n");
    assert!(
        eventually(WITHIN, || connected_clients(&mut raw) == baseline),
        "the disconnected waiter is still counted as a client"
    );

    // A blocked client killed with CLIENT KILL.
    let mut victim = on.raw();
    let id = int(&victim.cmd(&["CLIENT", "ID"]));
    victim.send(&resp(&[b"WAITAOF", b"0", b"1", b"0"]));
    assert!(no_reply_yet(&mut victim), "WAITAOF 0 1 0 did not block");
    expect(
        &mut raw,
        &["CLIENT", "KILL", "ID", &id.to_string()],
        b":1\r\n",
    );
    assert!(
        victim.closed_within(Duration::from_secs(10)),
        "the killed client's socket was not closed"
    );
    expect(&mut raw, &["PING"], b"+PONG\r\n");
    ok(&mut raw, &["SET", "after-kill", "1"]);
    expect(&mut raw, &["WAITAOF", "1", "0", "0"], ACK_1_0);
    let mut newcomer = on.raw();
    expect(&mut newcomer, &["GET", "after-kill"], b"$1\r\n1\r\n");
    assert!(
        eventually(WITHIN, || connected_clients(&mut raw) == baseline + 1),
        "the killed waiter is still counted as a client"
    );
    drop(newcomer);

    // A client blocked in WAITAOF 1 0 0 on a stalled shard that disconnects; then the shard
    // resumes and others go on.
    let k0 = key_on(0, 2, "stalled-");
    drop(blocked_waiter(&on, &mut raw, &k0));
    ok(&mut raw, &["DEBUG", "FAULT", "0", "resume"]);
    ok(&mut raw, &["SET", &k0, "2"]);
    expect(&mut raw, &["WAITAOF", "1", "0", "0"], ACK_1_0);
    expect(&mut raw, &["GET", &k0], b"$1\r\n2\r\n");
}

// ------------------------------------------------------------------------------------------
// 4. Torn tails
// ------------------------------------------------------------------------------------------

/// A damage done to the last record, at `at` (its file offset) of `len` bytes.
enum Damage {
    /// The file ends this far into the record.
    Cut(usize),
    /// Zeros from this far into the record to its end (the file keeps its length).
    ZeroFrom(usize),
    /// The last n bytes of the record zeroed.
    ZeroLast(usize),
    /// Garbage from this far into the record up to past its end.
    Garbage(usize),
}

fn apply(path: &Path, rec: Rec, damage: &Damage) {
    let mut bytes = std::fs::read(path).expect("read copy");
    match *damage {
        Damage::Cut(n) => bytes.truncate(rec.at + n),
        Damage::ZeroFrom(n) => bytes[rec.at + n..rec.at + rec.len].fill(0),
        Damage::ZeroLast(n) => bytes[rec.at + rec.len - n..rec.at + rec.len].fill(0),
        Damage::Garbage(n) => {
            for (i, b) in bytes[rec.at + n..rec.at + rec.len + 64]
                .iter_mut()
                .enumerate()
            {
                *b = 0xA5 ^ (i as u8).wrapping_mul(31);
            }
        }
    }
    std::fs::write(path, bytes).expect("write damaged copy");
}

#[test]
fn torn_tail_is_cut_off_at_every_cut_point() {
    const N: usize = 12;
    let args = ["--appendonly", "yes", "--appendfsync", "always"];
    let server = start(1, &args);
    let mut raw = server.raw();
    for i in 0..N {
        ok(
            &mut raw,
            &[
                "SET",
                &format!("key{i}"),
                &format!("{i}-{}", "v".repeat(100)),
            ],
        );
    }
    let dir = crash(server);
    let seg = segment_file(dir.path(), 0);
    let name = seg.file_name().unwrap().to_string_lossy().into_owned();
    let recs = records(&read_prefix(&seg));
    assert_eq!(recs.len(), N, "one record per SET");
    let last = *recs.last().unwrap();
    assert!(last.len > 100);

    let damages = [
        Damage::Cut(1),
        Damage::Cut(10),
        Damage::Cut(21),
        Damage::Cut(last.len / 2),
        Damage::Cut(last.len - 1),
        Damage::ZeroFrom(1),
        Damage::ZeroFrom(last.len / 2),
        Damage::ZeroLast(4),
        Damage::ZeroLast(1),
        Damage::Garbage(0),
        Damage::Garbage(last.len / 2),
    ];
    for (d, damage) in damages.iter().enumerate() {
        // aof-load-truncated yes (the default): starts without the last record.
        let copy = copy_log(dir.path());
        apply(&segment_file(copy.path(), 0), last, damage);
        let server = restart(copy, 1, &args);
        let log = server.log_text();
        assert!(
            log.contains("Truncating the AOF"),
            "damage #{d}: no truncation warning in the log:\n{log}"
        );
        let mut raw = server.raw();
        expect(&mut raw, &["DBSIZE"], format!(":{}\r\n", N - 1).as_bytes());
        for i in 0..N - 1 {
            expect(
                &mut raw,
                &["GET", &format!("key{i}")],
                format!(
                    "${}\r\n{i}-{}\r\n",
                    101 + i.to_string().len(),
                    "v".repeat(100)
                )
                .as_bytes(),
            );
        }
        expect(&mut raw, &["GET", &format!("key{}", N - 1)], b"$-1\r\n");
        // Appending goes on cleanly where the cut was: a second crash loses nothing.
        ok(&mut raw, &["SET", "after", "cut"]);
        ok(&mut raw, &["SET", "after2", "cut2"]);
        let server = crash_and_restart(server, 1, &args);
        let log = server.log_text();
        assert!(
            !log.contains("Truncating the AOF"),
            "damage #{d}: the log written after the cut was torn again:\n{log}"
        );
        let mut raw = server.raw();
        expect(&mut raw, &["DBSIZE"], format!(":{}\r\n", N + 1).as_bytes());
        expect(&mut raw, &["GET", "after2"], b"$4\r\ncut2\r\n");
        drop(server);

        // aof-load-truncated no: refused, naming the file and the offset.
        let copy = copy_log(dir.path());
        apply(&segment_file(copy.path(), 0), last, damage);
        let refused = start_refused(copy.path(), 1, &["--aof-load-truncated", "no"]);
        assert_eq!(
            refused.code,
            Some(1),
            "damage #{d}: exit status with aof-load-truncated no; output:\n{}",
            refused.output
        );
        assert!(
            refused.output.contains(&name)
                && refused.output.contains(&format!("offset {}", last.at)),
            "damage #{d}: the refusal does not name {name} and offset {}:\n{}",
            last.at,
            refused.output
        );
    }
}

// ------------------------------------------------------------------------------------------
// 5. Corruption in the middle refuses the start
// ------------------------------------------------------------------------------------------

#[test]
fn corruption_followed_by_later_commits_refuses_to_start() {
    const N: usize = 12;
    for mode in ["always", "everysec"] {
        let args = ["--appendonly", "yes", "--appendfsync", mode];
        let server = start(1, &args);
        let mut raw = server.raw();
        for i in 0..N {
            ok(
                &mut raw,
                &[
                    "SET",
                    &format!("key{i}"),
                    &format!("value-{i}-{}", "z".repeat(50)),
                ],
            );
            if mode == "everysec" {
                expect(&mut raw, &["WAITAOF", "1", "0", "0"], ACK_1_0);
            }
        }
        let dir = crash(server);
        let seg = segment_file(dir.path(), 0);
        let name = seg.file_name().unwrap().to_string_lossy().into_owned();
        let recs = records(&read_prefix(&seg));
        assert_eq!(recs.len(), N);
        let bad = recs[N / 2];
        // Precondition: later records come from later commits.
        assert!(
            recs[N / 2 + 1].batch >= recs[N / 2 - 1].batch + 2,
            "{recs:?}"
        );
        // A byte of the body, of the checksum, of the position, of the length.
        for (what, offset) in [
            ("body", bad.len - 3),
            ("crc", 5),
            ("position", 9),
            ("length", 0),
        ] {
            let copy = copy_log(dir.path());
            let path = segment_file(copy.path(), 0);
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[bad.at + offset] ^= 0x10;
            std::fs::write(&path, bytes).unwrap();
            let refused = start_refused(copy.path(), 1, &[]);
            assert_eq!(
                refused.code,
                Some(1),
                "{mode}, flipped {what}: exit status; output:\n{}",
                refused.output
            );
            assert!(
                refused.output.contains(&name)
                    && refused
                        .output
                        .contains(&format!("is corrupt at offset {}", bad.at)),
                "{mode}, flipped {what}: the refusal does not name {name} and offset {}:\n{}",
                bad.at,
                refused.output
            );
        }
    }
}

// ------------------------------------------------------------------------------------------
// 6. Cross-shard writes are all or nothing across a crash
// ------------------------------------------------------------------------------------------

enum CrossWrite {
    Mset,
    MultiExec,
}

fn send_cross_write(raw: &mut Raw, how: &CrossWrite, a: &str, b: &str) {
    match how {
        CrossWrite::Mset => raw.send(&resp(&[b"MSET", a.as_bytes(), b"va", b.as_bytes(), b"vb"])),
        CrossWrite::MultiExec => {
            ok(raw, &["MULTI"]);
            expect(raw, &["SET", a, "va"], QUEUED);
            expect(raw, &["SET", b, "vb"], QUEUED);
            raw.send(&resp(&[b"EXEC"]));
        }
    }
}

#[test]
fn cross_shard_write_half_durable_at_crash_is_rolled_back() {
    let args = ["--appendonly", "yes", "--appendfsync", "always"];
    let a = key_on(0, 2, "a");
    let b = key_on(1, 2, "b");
    for how in [CrossWrite::Mset, CrossWrite::MultiExec] {
        let server = start(2, &args);
        let mut control = server.raw();
        // Some earlier acknowledged data on both shards.
        ok(&mut control, &["SET", "pre0", "p"]);
        ok(
            &mut control,
            &["MSET", &key_on(0, 2, "x"), "1", &key_on(1, 2, "y"), "2"],
        );
        let before = logs(&mut control);
        ok(&mut control, &["DEBUG", "FAULT", "1", "stall"]);
        let mut writer = server.raw();
        send_cross_write(&mut writer, &how, &a, &b);
        let mut now = Vec::new();
        assert!(
            eventually(WITHIN, || {
                now = logs(&mut control);
                now[0].durable == now[0].end
                    && now[0].end > before[0].end
                    && now[1].end > before[1].end
            }),
            "shard 0's part never became durable: before {before:?}, now {now:?}"
        );
        assert!(
            now[1].durable < now[1].end,
            "the stall did not hold shard 1's part back: {now:?}"
        );
        let server = crash_and_restart(server, 2, &args);
        let mut raw = server.raw();
        expect(&mut raw, &["EXISTS", &a, &b], b":0\r\n");
        expect(&mut raw, &["GET", "pre0"], b"$1\r\np\r\n");
        expect(
            &mut raw,
            &["EXISTS", &key_on(0, 2, "x"), &key_on(1, 2, "y")],
            b":2\r\n",
        );
    }

    // Without a stall both parts are there.
    for how in [CrossWrite::Mset, CrossWrite::MultiExec] {
        let server = start(2, &args);
        let mut writer = server.raw();
        send_cross_write(&mut writer, &how, &a, &b);
        let reply = text(&writer.reply());
        match how {
            CrossWrite::Mset => assert_eq!(reply, "+OK\r\n"),
            CrossWrite::MultiExec => assert_eq!(reply, "*2\r\n+OK\r\n+OK\r\n"),
        }
        let server = crash_and_restart(server, 2, &args);
        let mut raw = server.raw();
        expect(&mut raw, &["GET", &a], b"$2\r\nva\r\n");
        expect(&mut raw, &["GET", &b], b"$2\r\nvb\r\n");
    }
}

#[test]
fn cross_shard_write_with_a_torn_part_on_one_shard_is_rolled_back_on_both() {
    let args = ["--appendonly", "yes", "--appendfsync", "always"];
    let (a, b) = (key_on(0, 2, "a"), key_on(1, 2, "b"));
    let server = start(2, &args);
    let mut raw = server.raw();
    ok(&mut raw, &["SET", "before", "1"]);
    ok(&mut raw, &["SET", &key_on(1, 2, "before1-"), "1"]);
    ok(&mut raw, &["MSET", &a, "va", &b, "vb"]);
    let dir = crash(server);
    // Shard 1's part is its last record: tear it (as if its write never completed).
    let seg1 = segment_file(dir.path(), 1);
    let last = *records(&read_prefix(&seg1))
        .last()
        .expect("a record on shard 1");
    let copy = copy_log(dir.path());
    apply(
        &segment_file(copy.path(), 1),
        last,
        &Damage::Cut(last.len / 2),
    );
    let server = restart(copy, 2, &args);
    let log = server.log_text();
    assert!(
        log.contains("Truncating the AOF"),
        "no truncation warning:\n{log}"
    );
    let mut raw = server.raw();
    expect(&mut raw, &["EXISTS", &a, &b], b":0\r\n");
    expect(
        &mut raw,
        &["EXISTS", "before", &key_on(1, 2, "before1-")],
        b":2\r\n",
    );
    // New cross-shard writes work and survive after that.
    ok(&mut raw, &["MSET", &a, "va2", &b, "vb2"]);
    let server = crash_and_restart(server, 2, &args);
    let mut raw = server.raw();
    expect(&mut raw, &["GET", &a], b"$3\r\nva2\r\n");
    expect(&mut raw, &["GET", &b], b"$3\r\nvb2\r\n");
}

// ------------------------------------------------------------------------------------------
// 7. Injected disk errors
// ------------------------------------------------------------------------------------------

/// Sends a command expected to fail with an error starting with `prefix` (MISCONF replies go
/// on with details that vary); `what` names the command in the failure message.
#[track_caller]
fn expect_refused(raw: &mut Raw, args: &[&str], prefix: &str, what: &str) {
    let reply = raw.cmd_text(args);
    assert!(
        reply.starts_with(prefix),
        "{what} answered {reply:?}, expected {prefix:?}"
    );
}

/// Sends `args` until it answers `+OK` (a shard gets over a disk error at a later retry, not
/// at once); `Err` with the last reply if `within` passes first.
fn retry_until_ok(raw: &mut Raw, args: &[&str], within: Duration) -> Result<(), String> {
    let mut last = String::new();
    if eventually(within, || {
        last = text(&raw.cmd(args));
        last == "+OK\r\n"
    }) {
        Ok(())
    } else {
        Err(last)
    }
}

/// Arms `fault` (`fail-sync`, `fail-write`) with `errno` on shard 0 for every attempt (a
/// million of them) until [`lift_fault`].
fn arm_lasting_fault(raw: &mut Raw, fault: &str, errno: &str) {
    ok(raw, &["DEBUG", "FAULT", "0", fault, "1000000", errno]);
}

/// Lifts the lasting `fault` (`fail-sync`, `fail-write`) armed on shard 0 and waits until
/// `write` is accepted again (at the shard's next retry, not at once).
#[track_caller]
fn lift_fault(raw: &mut Raw, fault: &str, write: &[&str]) {
    ok(raw, &["DEBUG", "FAULT", "0", fault, "0"]);
    if let Err(last) = retry_until_ok(raw, write, WITHIN) {
        panic!("writes never resumed, last reply {last:?}");
    }
}

fn last_write_status(raw: &mut Raw) -> String {
    field(&persistence(raw), "aof_last_write_status").expect("aof_last_write_status")
}

/// `always` mode, one failure armed that the shard gets over by itself.
fn always_transient_failure(fault: &[&str], misconf: &str) {
    let args = ["--appendonly", "yes", "--appendfsync", "always"];
    let server = start(2, &args);
    let mut raw = server.raw();
    let k0 = key_on(0, 2, "k");
    let other0 = key_on(0, 2, "other");
    ok(&mut raw, &["SET", "pre", "1"]);
    ok(&mut raw, &["SET", &other0, "o"]);
    let mut cmd = vec!["DEBUG", "FAULT", "0"];
    cmd.extend_from_slice(fault);
    ok(&mut raw, &cmd);
    expect_refused(
        &mut raw,
        &["SET", &k0, "failed"],
        misconf,
        &format!("{fault:?}: SET"),
    );
    let status = last_write_status(&mut raw);
    assert!(
        status == "err" || status == "ok",
        "aof_last_write_status:{status}"
    );
    // Reads keep working.
    expect(&mut raw, &["GET", "pre"], b"$1\r\n1\r\n");
    expect(&mut raw, &["GET", &other0], b"$1\r\no\r\n");
    // The shard gets over it by itself.
    if let Err(last) = retry_until_ok(&mut raw, &["SET", "later", "L"], WITHIN) {
        panic!("{fault:?}: writes never resumed, last reply {last:?}");
    }
    assert!(eventually(WITHIN, || last_write_status(&mut raw) == "ok"));
    ok(&mut raw, &["SET", &k0, "after"]);
    expect(&mut raw, &["INCR", "n"], b":1\r\n");
    let server = crash_and_restart(server, 2, &args);
    let mut raw = server.raw();
    expect(&mut raw, &["GET", "pre"], b"$1\r\n1\r\n");
    expect(&mut raw, &["GET", "later"], b"$1\r\nL\r\n");
    expect(&mut raw, &["GET", &k0], b"$5\r\nafter\r\n");
    expect(&mut raw, &["GET", "n"], b"$1\r\n1\r\n");
}

#[test]
fn disk_errors_refuse_writes_then_recover_in_always_mode() {
    always_transient_failure(&["fail-sync", "1", "EIO"], MISCONF_EIO);
    always_transient_failure(&["fail-write", "3", "ENOSPC"], MISCONF_ENOSPC);

    // A failure that lasts: writes to the shard are refused, reads go on, INFO says err.
    let args = ["--appendonly", "yes", "--appendfsync", "always"];
    let server = start(2, &args);
    let mut raw = server.raw();
    let (k0, k1) = (key_on(0, 2, "k"), key_on(1, 2, "k"));
    ok(&mut raw, &["SET", &k0, "before"]);
    ok(&mut raw, &["SET", &k1, "before"]);
    let clean0 = key_on(0, 2, "clean");
    ok(&mut raw, &["SET", &clean0, "clean"]);
    arm_lasting_fault(&mut raw, "fail-sync", "EIO");
    expect_refused(&mut raw, &["SET", &k0, "failed"], MISCONF_EIO, "SET");
    let info_text = persistence(&mut raw);
    assert_eq!(
        field(&info_text, "aof_last_write_status").as_deref(),
        Some("err")
    );
    assert!(shard_logs(&info_text)[0].write_errors > 0, "{info_text}");
    expect_refused(
        &mut raw,
        &["SET", &key_on(0, 2, "refused"), "x"],
        MISCONF_EIO,
        "a write during the failure",
    );
    expect_refused(
        &mut raw,
        &["INCR", &k0],
        MISCONF_EIO,
        "INCR during the failure",
    );
    expect(&mut raw, &["GET", &k1], b"$6\r\nbefore\r\n");
    expect(&mut raw, &["GET", &clean0], b"$5\r\nclean\r\n");
    expect(&mut raw, &["EXISTS", &clean0, &k1], b":2\r\n");
    expect(&mut raw, &["STRLEN", &clean0], b":5\r\n");
    // A read of the key whose write failed: its value is in memory but not durable. Not
    // asserted (no Valkey precedent: Valkey exits on an fsync error in always mode).
    eprintln!(
        "NOTE: GET of the key whose SET failed, while the failure lasts: {:?}",
        text(&raw.cmd(&["GET", &k0]))
    );
    lift_fault(&mut raw, "fail-sync", &["SET", &k0, "after"]);
    assert!(eventually(WITHIN, || last_write_status(&mut raw) == "ok"));
    let server = crash_and_restart(server, 2, &args);
    let mut raw = server.raw();
    expect(&mut raw, &["GET", &k0], b"$5\r\nafter\r\n");
    expect(&mut raw, &["GET", &k1], b"$6\r\nbefore\r\n");
}

#[test]
fn disk_errors_in_everysec_fail_waitaof_and_refuse_writes_until_retry_succeeds() {
    let args = ["--appendonly", "yes", "--appendfsync", "everysec"];
    let server = start(2, &args);
    let mut raw = server.raw();
    let (a, b, c) = (key_on(0, 2, "a"), key_on(0, 2, "b"), key_on(0, 2, "c"));
    let k1 = key_on(1, 2, "k");
    ok(&mut raw, &["SET", &a, "1"]);
    ok(&mut raw, &["SET", &k1, "1"]);
    expect(&mut raw, &["WAITAOF", "1", "0", "0"], ACK_1_0);
    arm_lasting_fault(&mut raw, "fail-sync", "EIO");
    // everysec: the write answers at once; WAITAOF tells it did not reach the disk.
    ok(&mut raw, &["SET", &b, "2"]);
    expect_refused(
        &mut raw,
        &["WAITAOF", "1", "0", "0"],
        MISCONF_EIO,
        "WAITAOF during a failing fsync",
    );
    assert_eq!(last_write_status(&mut raw), "err");
    // Writes to the failing shard are refused, reads go on.
    expect_refused(
        &mut raw,
        &["SET", &c, "3"],
        MISCONF_EIO,
        "SET during the failure",
    );
    expect(&mut raw, &["GET", &a], b"$1\r\n1\r\n");
    expect(&mut raw, &["GET", &k1], b"$1\r\n1\r\n");
    // Until the retry succeeds.
    lift_fault(&mut raw, "fail-sync", &["SET", &c, "3"]);
    expect(&mut raw, &["WAITAOF", "1", "0", "0"], ACK_1_0);
    assert_eq!(last_write_status(&mut raw), "ok");

    // fail-write with ENOSPC, same story.
    arm_lasting_fault(&mut raw, "fail-write", "ENOSPC");
    ok(&mut raw, &["SET", &a, "11"]);
    expect_refused(
        &mut raw,
        &["WAITAOF", "1", "0", "0"],
        MISCONF_ENOSPC,
        "WAITAOF",
    );
    expect_refused(&mut raw, &["SET", &b, "22"], MISCONF_ENOSPC, "SET");
    lift_fault(&mut raw, "fail-write", &["SET", &b, "22"]);
    expect(&mut raw, &["WAITAOF", "1", "0", "0"], ACK_1_0);

    let server = crash_and_restart(server, 2, &args);
    let mut raw = server.raw();
    expect(&mut raw, &["GET", &a], b"$2\r\n11\r\n");
    expect(&mut raw, &["GET", &b], b"$2\r\n22\r\n");
    expect(&mut raw, &["GET", &c], b"$1\r\n3\r\n");
    expect(&mut raw, &["GET", &k1], b"$1\r\n1\r\n");
}

#[test]
fn a_write_error_in_no_mode_is_got_over_without_any_waitaof() {
    // In `no` nothing asks for a sync; the shard must still get over the failure by itself.
    let args = ["--appendonly", "yes", "--appendfsync", "no"];
    let server = start(1, &args);
    let mut raw = server.raw();
    ok(&mut raw, &["SET", "a", "1"]);
    arm_lasting_fault(&mut raw, "fail-write", "ENOSPC");
    // Answered at once; its write fails behind it, and then writes are refused.
    ok(&mut raw, &["SET", "b", "2"]);
    assert!(
        eventually(WITHIN, || raw
            .cmd_text(&["SET", "c", "3"])
            .starts_with(MISCONF_ENOSPC)),
        "the failed write never showed"
    );
    expect(&mut raw, &["GET", "a"], b"$1\r\n1\r\n");
    lift_fault(&mut raw, "fail-write", &["SET", "c", "3"]);
    assert_eq!(last_write_status(&mut raw), "ok");

    let server = crash_and_restart(server, 1, &args);
    let mut raw = server.raw();
    expect(&mut raw, &["GET", "b"], b"$1\r\n2\r\n");
    expect(&mut raw, &["GET", "c"], b"$1\r\n3\r\n");
}

// ------------------------------------------------------------------------------------------
// 8. A real full disk
// ------------------------------------------------------------------------------------------

/// A loop-mounted ext4 image; unmounted and detached on drop.
struct LoopMount {
    device: String,
    mnt: PathBuf,
    _root: tempfile::TempDir,
}

impl LoopMount {
    fn create(size_mb: u64) -> Result<LoopMount, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root".into());
        }
        let root = tempfile::tempdir().map_err(|e| e.to_string())?;
        let image = root.path().join("disk.img");
        let mnt = root.path().join("mnt");
        std::fs::create_dir(&mnt).map_err(|e| e.to_string())?;
        File::create(&image)
            .and_then(|f| f.set_len(size_mb << 20))
            .map_err(|e| e.to_string())?;
        run("mkfs.ext4", &["-q", "-F", &image.display().to_string()])?;
        let device = run("losetup", &["-f", "--show", &image.display().to_string()])?
            .trim()
            .to_string();
        let mount = LoopMount {
            device,
            mnt,
            _root: root,
        };
        run("mount", &[&mount.device, &mount.mnt.display().to_string()])?;
        Ok(mount)
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let mnt = self.mnt.display().to_string();
        if run("umount", &[&mnt]).is_err() {
            let _ = run("umount", &["-l", &mnt]);
        }
        let _ = run("losetup", &["-d", &self.device]);
    }
}

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Writes a file until the file system is full.
fn fill_disk(path: &Path) -> u64 {
    let mut f = File::create(path).expect("filler");
    let chunk = vec![0x5Au8; 1 << 20];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) => {
                assert_eq!(
                    e.raw_os_error(),
                    Some(libc::ENOSPC),
                    "filling the disk: {e}"
                );
                break;
            }
        }
    }
    let _ = f.sync_all();
    written
}

/// Free space, the log directory's files and the server log, for failure messages.
fn disk_report(server: &Server) -> String {
    let df = run("df", &["-k", &server.data_dir().display().to_string()]).unwrap_or_default();
    let ls = run(
        "ls",
        &["-ls", &aof_dir(server.data_dir()).display().to_string()],
    )
    .unwrap_or_default();
    format!("df:\n{df}\nfiles:\n{ls}\nlog:\n{}", server.log_text())
}

fn big_value(i: usize) -> Vec<u8> {
    let mut v = vec![b'a' + (i % 26) as u8; 1 << 20];
    v[..8].copy_from_slice(format!("{i:08}").as_bytes());
    v
}

#[test]
fn full_disk_refuses_writes_then_recovers() {
    // Segments preallocate 64 MB at a time: the disk holds the first chunk, the filler takes
    // the rest, and the write that needs the second chunk meets ENOSPC.
    let mount = match LoopMount::create(160) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("NOTE: skipping the full-disk test: can't loop-mount an ext4 image: {e}");
            return;
        }
    };
    let args = ["--appendonly", "yes", "--appendfsync", "always"];
    let data = tempfile::tempdir_in(&mount.mnt).expect("data dir on the small disk");
    let filler_path = mount.mnt.join("filler");
    let server = restart(data, 1, &args);
    let mut raw = server.raw();
    ok(&mut raw, &["SET", "small", "s"]);
    let filled = fill_disk(&filler_path);
    assert!(filled > 0, "the filler wrote nothing");

    let mut acked = Vec::new();
    let mut failure = None;
    for i in 0..100 {
        let key = format!("big{i}");
        let reply = raw.cmd_bytes(&[b"SET", key.as_bytes(), &big_value(i)]);
        if reply == OK {
            acked.push(i);
        } else {
            failure = Some((i, text(&reply)));
            break;
        }
    }
    let (failed_at, reply) = failure.expect("no write failed although the disk is full");
    eprintln!("full disk: filler {filled} bytes, write #{failed_at} answered {reply:?}");
    assert!(
        reply.starts_with(MISCONF_ENOSPC),
        "the write that needed more space answered {reply:?}"
    );
    assert!(
        failed_at >= 50,
        "a write failed after only {failed_at} MB, inside the preallocated segment: {reply:?}"
    );
    // Reads go on.
    expect(&mut raw, &["GET", "small"], b"$1\r\ns\r\n");
    let got = bulk(&raw.cmd(&["GET", "big0"])).expect("big0");
    assert!(got == big_value(0), "big0 read back wrong");
    // Writes are refused while the disk is full.
    expect_refused(
        &mut raw,
        &["SET", "during", "x"],
        "-MISCONF",
        "a write on the full disk",
    );
    // Space comes back: the log gets over it by itself.
    std::fs::remove_file(&filler_path).expect("remove filler");
    if let Err(last) = retry_until_ok(
        &mut raw,
        &["SET", "recovered", "yes"],
        Duration::from_secs(20),
    ) {
        panic!(
            "writes never resumed after space came back, last reply {last:?}; {}",
            disk_report(&server)
        );
    }
    for i in 200..203 {
        let reply = raw.cmd_bytes(&[b"SET", format!("big{i}").as_bytes(), &big_value(i)]);
        assert_eq!(
            text(&reply),
            "+OK\r\n",
            "a write after space came back; {}",
            disk_report(&server)
        );
        acked.push(i);
    }
    let server = crash_and_restart(server, 1, &args);
    let mut raw = server.raw();
    expect(&mut raw, &["GET", "small"], b"$1\r\ns\r\n");
    expect(&mut raw, &["GET", "recovered"], b"$3\r\nyes\r\n");
    for i in acked {
        let got = bulk(&raw.cmd(&["GET", &format!("big{i}")]));
        assert!(
            got == Some(big_value(i)),
            "big{i} lost or damaged after restart"
        );
    }
    drop(raw);
    drop(server);
    drop(mount);
}

/// Byte-argument commands on the raw connection.
trait RawBytes {
    fn cmd_bytes(&mut self, args: &[&[u8]]) -> Vec<u8>;
}

impl RawBytes for Raw {
    fn cmd_bytes(&mut self, args: &[&[u8]]) -> Vec<u8> {
        self.send(&resp(args));
        self.reply()
    }
}

// ------------------------------------------------------------------------------------------
// Start-up: no write is acknowledged before its shard's log is open
// ------------------------------------------------------------------------------------------

#[test]
fn writes_during_start_up_are_logged_before_they_are_acknowledged() {
    const BULK: usize = 200_000;
    const PROBES: usize = 48;
    // A log on shard 0 long enough that replaying it takes a while.
    let server = start(2, &["--appendonly", "yes", "--appendfsync", "no"]);
    let mut raw = server.raw();
    let map = corekv::shard::routing::SlotMap::new(2);
    let bulk_keys: Vec<String> = (0..)
        .map(|i| format!("bulk{i}"))
        .filter(|k| map.shard_of_key(k.as_bytes()) == 0)
        .take(BULK)
        .collect();
    for chunk in bulk_keys.chunks(10_000) {
        let mut batch = Vec::new();
        for k in chunk {
            batch.extend(resp(&[b"SET", k.as_bytes(), b"v"]));
        }
        raw.send(&batch);
        for _ in chunk {
            assert_eq!(raw.reply(), OK);
        }
    }
    let marker = key_on(0, 2, "marker");
    ok(&mut raw, &["SET", &marker, "present"]);
    expect(&mut raw, &["WAITAOF", "1", "0", "0"], ACK_1_0);
    let dir = crash(server);

    // Restart by hand and connect at once, again and again: connections accepted by shard 1
    // while shard 0 still loads send writes to shard 0.
    let port = free_port();
    let log = dir.path().join("restart.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_corekv-server"))
        .args([
            "--port",
            &port.to_string(),
            "--dir",
            &dir.path().display().to_string(),
            "--shards",
            "2",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--logfile",
            &log.display().to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let started = Instant::now();
    let mut clients = Vec::new();
    while clients.len() < PROBES && started.elapsed() < Duration::from_secs(20) {
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        };
        let n = clients.len();
        let marker = marker.clone();
        clients.push(std::thread::spawn(move || {
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .expect("timeout");
            let probe = key_on(0, 2, &format!("probe{n}-"));
            let mut req = resp(&[b"GET", marker.as_bytes()]);
            req.extend(resp(&[b"SET", probe.as_bytes(), b"p"]));
            std::io::Write::write_all(&mut stream, &req).expect("send");
            let mut pending = Vec::new();
            let get = read_reply(&mut stream, &mut pending).map(|r| text(&r));
            let set = read_reply(&mut stream, &mut pending).map(|r| text(&r));
            (probe, get, set)
        }));
        std::thread::sleep(Duration::from_millis(3));
    }
    let results: Vec<_> = clients
        .into_iter()
        .map(|c| c.join().expect("client"))
        .collect();
    let _ = child.kill();
    let _ = child.wait();
    let mut acked = Vec::new();
    for (probe, get, set) in &results {
        let get = get.as_deref().unwrap_or("(closed)");
        assert!(
            get == "$7\r\npresent\r\n" || get.starts_with("-LOADING"),
            "GET of a key loaded from the log answered {get:?} during start-up"
        );
        match set.as_deref() {
            Some("+OK\r\n") => acked.push(probe.clone()),
            Some(r) if r.starts_with("-LOADING") => {}
            other => panic!("SET during start-up answered {other:?}"),
        }
    }
    let server = restart(dir, 2, &["--appendonly", "yes"]);
    let mut raw = server.raw();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|k| raw.cmd(&["EXISTS", k]) != b":1\r\n")
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} writes acknowledged (appendfsync always) during start-up were lost after \
         kill -9: {lost:?}",
        lost.len(),
        acked.len()
    );
    expect(&mut raw, &["GET", &marker], b"$7\r\npresent\r\n");
}
