//! Replication end to end, with real `corekv-server` processes: full syncs (also between
//! servers with different shard counts, of keyspaces large enough to be sent in steps, and of
//! primaries with or without a log), the live stream, WAIT and WAITAOF (also inside MULTI, and
//! against replicas' own logs after kill -9), a link cut, held down and slowed by a proxy
//! (partial resynchronization, a backlog outrun, transactions kept whole on the replica), AOF
//! rewrites on either side, replicas killed with `kill -9` under load, restarted primaries,
//! promotion, demotion and re-pointing, read-only replicas, masterauth, CLIENT commands on a
//! replica's link, and REPLCONF/PSYNC from plain clients.
//!
//! Run with `cargo test --release --test replication`.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{
    bulk, crash, elements, eventually, expect, field, field_u64, info, int, key_on, kill9,
    no_reply_yet, ok, resp, start, text, Raw, Server, OK, QUEUED,
};

/// How long a state the test waits for may take to appear (reconnections happen once a
/// second; a loaded two-CPU machine is slow).
const WITHIN: Duration = Duration::from_secs(20);

const READONLY: &str = "-READONLY You can't write against a read only replica.\r\n";
const EXECABORT: &str = "-EXECABORT Transaction discarded because of previous errors.\r\n";
const WAIT_ON_REPLICA: &str = "-ERR WAIT cannot be used with replica instances. Please also \
     note that if a replica is configured to be writable (which is not the default) writes to \
     replicas are just local and are not propagated.\r\n";
const WAITAOF_ON_REPLICA: &str = "-ERR WAITAOF cannot be used with replica instances. Please \
     also note that writes to replicas are just local and are not propagated.\r\n";
const UNBLOCKED: &str = "-UNBLOCKED force unblock from blocking operation, instance state \
     changed (master -> replica?)\r\n";
const REWRITE_STARTED: &str = "+Background append only file rewriting started\r\n";
/// What the primary logs when a replica continues from its backlog.
const PARTIAL: &str = "Partial resynchronization accepted";
/// What the primary logs at the start of every full sync.
const FULL_SYNC: &str = "Starting a full sync";

// ------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------

/// `--replicaof 127.0.0.1 <port>` followed by `extra`.
fn replica_args(primary_port: u16, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--replicaof".to_string(),
        "127.0.0.1".to_string(),
        primary_port.to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// [`replica_args`] with the log on (`--appendonly yes` before `extra`).
fn logged_replica_args(primary_port: u16, extra: &[&str]) -> Vec<String> {
    let mut more = vec!["--appendonly", "yes"];
    more.extend_from_slice(extra);
    replica_args(primary_port, &more)
}

/// Borrows owned arguments as the `&[&str]` the server helpers take.
fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// A primary with the log on (`extra` after `--appendonly yes`), every shard's log open.
fn start_primary(shards: usize, extra: &[&str]) -> Server {
    let mut args = vec!["--appendonly", "yes"];
    args.extend_from_slice(extra);
    start(shards, &args)
}

/// A replica of the server at `primary_port` with the log on, every shard's log open.
fn start_replica(shards: usize, primary_port: u16, extra: &[&str]) -> Server {
    start(shards, &strs(&logged_replica_args(primary_port, extra)))
}

/// Waits until every one of `shards` shards of the server behind `raw` has opened its log;
/// panics with `server`'s log if they do not (like `common::settle`, through a connection
/// that may have had to authenticate).
#[track_caller]
fn wait_logs_open(server: &Server, raw: &mut Raw, shards: usize) {
    let mut last = String::new();
    let open = eventually(WITHIN, || {
        last = info(raw, "persistence");
        last.lines().filter(|l| l.starts_with("aof_shard")).count() == shards
    });
    assert!(
        open,
        "not every shard opened its log:\n{last}\nlog:\n{}",
        server.log_text()
    );
}

/// Restarts a server on `dir` (a crashed replica's) and waits until every shard's log is
/// open.
#[track_caller]
fn restart_logged(dir: tempfile::TempDir, shards: usize, args: &[&str]) -> Server {
    let server = Server::start_in(dir, shards, args);
    wait_logs_open(&server, &mut server.raw(), shards);
    server
}

/// `INFO replication` as text.
fn replication(raw: &mut Raw) -> String {
    info(raw, "replication")
}

/// The replicas `INFO replication` of a primary lists as online.
fn online_replicas(info: &str) -> usize {
    info.lines()
        .filter(|l| l.starts_with("slave") && l.contains(":ip=") && l.contains("state=online"))
        .count()
}

/// Waits until the primary behind `raw` lists exactly `n` replicas, all online.
#[track_caller]
fn wait_online(raw: &mut Raw, n: usize) {
    let mut last = String::new();
    let reached = eventually(WITHIN, || {
        last = replication(raw);
        field_u64(&last, "connected_slaves") == n as u64 && online_replicas(&last) == n
    });
    assert!(
        reached,
        "the primary never had {n} replica(s) online:\n{last}"
    );
}

/// Waits until `replica` shows `master_link_status:<status>`.
#[track_caller]
fn wait_link(replica: &Server, status: &str) {
    let mut raw = replica.raw();
    let mut last = String::new();
    let reached = eventually(WITHIN, || {
        last = replication(&mut raw);
        field(&last, "master_link_status").as_deref() == Some(status)
    });
    assert!(
        reached,
        "the replica's link never became {status}:\n{last}\nwarnings in its log:\n{}",
        warnings(replica)
    );
}

/// Waits until no AOF rewrite runs and at least `at_least` finished, and the last one
/// succeeded.
#[track_caller]
fn wait_rewrites(raw: &mut Raw, at_least: u64) {
    let mut last = String::new();
    let done = eventually(WITHIN, || {
        last = info(raw, "persistence");
        field(&last, "aof_rewrite_in_progress").as_deref() == Some("0")
            && field_u64(&last, "aof_rewrites") >= at_least
    });
    assert!(done, "rewrite number {at_least} did not finish:\n{last}");
    assert_eq!(
        field(&last, "aof_last_bgrewrite_status").as_deref(),
        Some("ok"),
        "the rewrite failed:\n{last}"
    );
}

/// Asserts how many partial resyncs and full syncs the primary's log shows (`why` explains
/// the expectation); the failure shows both logs.
#[track_caller]
fn assert_syncs(primary: &Server, replica: &Server, partial: usize, full: usize, why: &str) {
    assert_eq!(
        (log_count(primary, PARTIAL), log_count(primary, FULL_SYNC)),
        (partial, full),
        "(partial resyncs, full syncs): {why}; primary log:\n{}\nwarnings in the replica's \
         log:\n{}",
        primary.log_text(),
        warnings(replica)
    );
}

/// How often `needle` appears in the server's log.
fn log_count(server: &Server, needle: &str) -> usize {
    server.log_text().matches(needle).count()
}

/// Unix time in milliseconds.
fn now_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970");
    u64::try_from(since.as_millis()).expect("milliseconds fit in u64")
}

/// A key's value and whether it has a TTL.
type Entry = (Vec<u8>, bool);
/// Every key of some databases: (db, key) → entry.
type Dump = BTreeMap<(usize, Vec<u8>), Entry>;

/// Keys whose GET and PTTL one pipeline carries (the replies stay well below the socket's
/// buffers, so the pipeline cannot stall both sides).
const DUMP_CHUNK: usize = 256;

/// Every key of databases `0..dbs` with its value and whether it has a TTL, read through `raw`
/// (which is left on database 0). A key that expires while it is read is left out.
fn dump(raw: &mut Raw, dbs: usize) -> Dump {
    let mut out = Dump::new();
    for db in 0..dbs {
        ok(raw, &["SELECT", &db.to_string()]);
        let keys: Vec<Vec<u8>> = elements(&raw.cmd(&["KEYS", "*"]))
            .iter()
            .map(|k| bulk(k).expect("KEYS lists no nulls"))
            .collect();
        for chunk in keys.chunks(DUMP_CHUNK) {
            let mut pipeline = Vec::new();
            for k in chunk {
                pipeline.extend(resp(&[b"GET", k]));
                pipeline.extend(resp(&[b"PTTL", k]));
            }
            raw.send(&pipeline);
            for k in chunk {
                let value = bulk(&raw.reply());
                let ttl = int(&raw.reply());
                if let (Some(value), true) = (value, ttl != -2) {
                    out.insert((db, k.clone()), (value, ttl >= 0));
                }
            }
        }
    }
    ok(raw, &["SELECT", "0"]);
    out
}

/// A value for a failure message: long ones by their length and start.
fn show(value: &[u8]) -> String {
    if value.len() <= 64 {
        format!("{:?}", text(value))
    } else {
        format!("{} bytes {:?}…", value.len(), text(&value[..32]))
    }
}

/// The differences between two dumps, readable (empty when they are equal).
fn diff(primary: &Dump, replica: &Dump) -> String {
    let mut out = String::new();
    for (key, entry) in primary {
        match replica.get(key) {
            None => out.push_str(&format!(
                "db {} {}: only on the primary ({}, ttl {})\n",
                key.0,
                text(&key.1),
                show(&entry.0),
                entry.1
            )),
            Some(other) if other != entry => out.push_str(&format!(
                "db {} {}: primary {}/ttl {} but replica {}/ttl {}\n",
                key.0,
                text(&key.1),
                show(&entry.0),
                entry.1,
                show(&other.0),
                other.1
            )),
            Some(_) => {}
        }
    }
    for key in replica.keys().filter(|k| !primary.contains_key(*k)) {
        out.push_str(&format!(
            "db {} {}: only on the replica\n",
            key.0,
            text(&key.1)
        ));
    }
    out
}

/// The warnings in a server's log (the lines Valkey's format marks with `#`), the last 20.
fn warnings(server: &Server) -> String {
    let log = server.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(" # ")).collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Waits until the replica holds exactly the primary's keys, values and TTL presence in
/// databases `0..dbs`; returns the primary's dump.
#[track_caller]
fn assert_converges(primary: &Server, replica: &Server, dbs: usize) -> Dump {
    let mut p = primary.raw();
    let mut r = replica.raw();
    let mut last = (Dump::new(), Dump::new());
    let same = eventually(WITHIN, || {
        last = (dump(&mut p, dbs), dump(&mut r, dbs));
        last.0 == last.1
    });
    assert!(
        same,
        "the replica did not converge to the primary's data ({} keys on the primary):\n{}\n\
         warnings in the replica's log:\n{}",
        last.0.len(),
        diff(&last.0, &last.1),
        warnings(replica)
    );
    last.0
}

/// The value of `key` as text (`None` for a missing key).
fn get(raw: &mut Raw, key: &str) -> Option<String> {
    bulk(&raw.cmd(&["GET", key])).map(|v| text(&v))
}

/// Waits until `key` reads `value` through `raw`.
#[track_caller]
fn wait_value(raw: &mut Raw, key: &str, value: Option<&str>) {
    let mut last = None;
    let reached = eventually(WITHIN, || {
        last = get(raw, key);
        last.as_deref() == value
    });
    assert!(
        reached,
        "{key} never read {value:?}; it reads {last:?} (left: got, right: expected)"
    );
}

/// The reply of `WAITAOF` as `[local, replicas]`.
fn waitaof(raw: &mut Raw, args: &[&str]) -> [i64; 2] {
    let mut command = vec!["WAITAOF"];
    command.extend_from_slice(args);
    let reply = raw.cmd(&command);
    let items = elements(&reply);
    assert_eq!(items.len(), 2, "WAITAOF reply: {}", text(&reply));
    [int(&items[0]), int(&items[1])]
}

// ------------------------------------------------------------------------------------------
// A proxy between a replica and its primary
// ------------------------------------------------------------------------------------------

/// A TCP proxy the replica connects through, so that the test can cut the link, hold it down
/// (new connections are closed at once) and slow it down.
struct Proxy {
    port: u16,
    shared: Arc<ProxyShared>,
    accept: Option<JoinHandle<()>>,
}

struct ProxyShared {
    /// The port connections are forwarded to.
    target: AtomicU16,
    /// Set once the proxy is dropped: the accepting thread ends.
    stop: AtomicBool,
    /// Pause before each forwarded chunk, in milliseconds.
    delay_ms: AtomicU64,
    /// While set, connections stay open but nothing is forwarded (a silent network).
    stalled: AtomicBool,
    /// Connections forwarded so far.
    forwarded: AtomicUsize,
    /// Whether new connections are forwarded (false: closed at once), and both sockets
    /// (replica's side, primary's side) of every forwarded connection (shut down on a cut).
    /// One lock, so a connection accepted during a cut cannot slip through.
    links: Mutex<(bool, Vec<(TcpStream, TcpStream)>)>,
}

impl Proxy {
    /// Starts forwarding a fresh local port to `target`.
    fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy's port");
        let port = listener.local_addr().expect("proxy address").port();
        let shared = Arc::new(ProxyShared {
            target: AtomicU16::new(target),
            stop: AtomicBool::new(false),
            delay_ms: AtomicU64::new(0),
            stalled: AtomicBool::new(false),
            forwarded: AtomicUsize::new(0),
            links: Mutex::new((true, Vec::new())),
        });
        let accept = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || accept_loop(&listener, &shared))
        };
        Proxy {
            port,
            shared,
            accept: Some(accept),
        }
    }

    /// Drops every connection and closes new ones until [`Proxy::restore`]. The replica's side
    /// is reset (RST), as a crashed peer or a broken network would: its writes fail at once,
    /// while it may still be applying what it had received.
    fn cut(&self) {
        let mut links = self.shared.links.lock().expect("proxy lock");
        links.0 = false;
        for (client, server) in links.1.drain(..) {
            let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        }
    }

    /// Forwards new connections again.
    fn restore(&self) {
        self.shared.links.lock().expect("proxy lock").0 = true;
    }

    /// Pauses `delay` before forwarding each chunk, both ways.
    fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).expect("a short delay");
        self.shared.delay_ms.store(ms, Ordering::Release);
    }

    /// Keeps every connection open but forwards nothing until [`Proxy::resume`]: both ends
    /// hear nothing from each other.
    fn stall(&self) {
        self.shared.stalled.store(true, Ordering::Release);
    }

    /// Forwards again what a stall held back.
    fn resume(&self) {
        self.shared.stalled.store(false, Ordering::Release);
    }

    /// Forwards new connections to `target` from now on.
    fn set_target(&self, target: u16) {
        self.shared.target.store(target, Ordering::Release);
    }

    /// Connections forwarded so far.
    fn forwarded(&self) -> usize {
        self.shared.forwarded.load(Ordering::Acquire)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.resume();
        self.cut();
        // Wakes the accepting thread so that it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<ProxyShared>) {
    for incoming in listener.incoming() {
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        let Ok(client) = incoming else {
            continue;
        };
        let mut links = shared.links.lock().expect("proxy lock");
        let server = match TcpStream::connect(("127.0.0.1", shared.target.load(Ordering::Acquire)))
        {
            Ok(server) if links.0 => server,
            _ => {
                let _ = client.shutdown(Shutdown::Both);
                continue;
            }
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
            continue;
        };
        let (Ok(client3), Ok(server3)) = (client.try_clone(), server.try_clone()) else {
            continue;
        };
        links.1.push((client3, server3));
        shared.forwarded.fetch_add(1, Ordering::AcqRel);
        drop(links);
        let up = Arc::clone(shared);
        let down = Arc::clone(shared);
        std::thread::spawn(move || pump(client, server, &up));
        std::thread::spawn(move || pump(server2, client2, &down));
    }
}

/// Copies `from` to `to` until either side closes, then shuts both down.
fn pump(mut from: TcpStream, mut to: TcpStream, shared: &ProxyShared) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let delay = shared.delay_ms.load(Ordering::Acquire);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        while shared.stalled.load(Ordering::Acquire) && !shared.stop.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(10));
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

// ------------------------------------------------------------------------------------------
// A write WAITAOF acknowledged is on the replica's own disk
// ------------------------------------------------------------------------------------------

/// WAITAOF 1 1 answers once the write is in the replica's own log: the replica, killed and
/// started alone, has it; restarted as a replica after kill -9, it syncs in full.
#[test]
fn waitaof_acknowledged_write_is_in_the_replicas_own_log() {
    let mut primary = start_primary(1, &[]);
    let replica_extra = ["--appendfsync", "always"];
    let replica = start_replica(2, primary.port, &replica_extra);
    let mut p = primary.raw();
    wait_online(&mut p, 1);

    ok(&mut p, &["SET", "order:1", "paid"]);
    assert_eq!(waitaof(&mut p, &["1", "1", "0"]), [1, 1]);

    // A replica restarted after kill -9 keeps no position: it syncs in full and converges,
    // with what the primary wrote while it was down.
    let dir = crash(replica);
    ok(&mut p, &["SET", "order:2", "shipped"]);
    let replica = restart_logged(
        dir,
        2,
        &strs(&logged_replica_args(primary.port, &replica_extra)),
    );
    let mut r = replica.raw();
    wait_link(&replica, "up");
    wait_value(&mut r, "order:2", Some("shipped"));
    assert_eq!(get(&mut r, "order:1").as_deref(), Some("paid"));
    assert_syncs(
        &primary,
        &replica,
        0,
        2,
        "a restarted replica syncs in full",
    );

    ok(&mut p, &["SET", "order:3", "paid"]);
    expect(&mut p, &["APPEND", "order:2", "+delivered"], ":17\r\n");
    assert_eq!(waitaof(&mut p, &["1", "1", "0"]), [1, 1]);

    // Both die; the replica alone, started without --replicaof, has every acknowledged write
    // in its own log.
    kill9(&mut primary);
    let replica = restart_logged(crash(replica), 2, &["--appendonly", "yes"]);
    let mut r = replica.raw();
    assert_eq!(get(&mut r, "order:1").as_deref(), Some("paid"));
    assert_eq!(get(&mut r, "order:2").as_deref(), Some("shipped+delivered"));
    assert_eq!(get(&mut r, "order:3").as_deref(), Some("paid"));
    assert_eq!(
        field(&replication(&mut r), "role").as_deref(),
        Some("master")
    );
}

// ------------------------------------------------------------------------------------------
// WAIT with zero, one and two replicas
// ------------------------------------------------------------------------------------------

/// WAIT with no, one and two replicas, with and without timeouts; ROLE and INFO on both sides.
#[test]
fn wait_counts_the_replicas_that_received_the_writes() {
    let primary = start_primary(2, &[]);
    let mut p = primary.raw();

    // No replica.
    ok(&mut p, &["SET", "k", "v0"]);
    expect(&mut p, &["WAIT", "0", "0"], ":0\r\n");
    expect(&mut p, &["WAIT", "1", "200"], ":0\r\n");

    // One replica.
    let first = start_replica(1, primary.port, &[]);
    wait_online(&mut p, 1);
    ok(&mut p, &["SET", "k", "v1"]);
    expect(&mut p, &["WAIT", "1", "0"], ":1\r\n");
    // WAIT answers once the replica received the write: it reads it at once.
    assert_eq!(get(&mut first.raw(), "k").as_deref(), Some("v1"));
    expect(&mut p, &["WAIT", "2", "500"], ":1\r\n");
    expect(&mut p, &["WAIT", "0", "0"], ":1\r\n");
    // A connection that never wrote has nothing to wait for.
    let mut fresh = primary.raw();
    expect(&mut fresh, &["WAIT", "1", "0"], ":1\r\n");
    expect(&mut fresh, &["WAIT", "0", "0"], ":1\r\n");

    // Two replicas.
    let second = start_replica(2, primary.port, &[]);
    wait_online(&mut p, 2);
    ok(&mut p, &["MSET", "k", "v2", "other", "x"]);
    expect(&mut p, &["WAIT", "2", "0"], ":2\r\n");
    expect(&mut p, &["WAIT", "3", "300"], ":2\r\n");
    for replica in [&first, &second] {
        let mut r = replica.raw();
        assert_eq!(get(&mut r, "k").as_deref(), Some("v2"));
        assert_eq!(get(&mut r, "other").as_deref(), Some("x"));
    }

    // ROLE: the primary lists both replicas by listening port; each replica is connected.
    let role = elements(&p.cmd(&["ROLE"]));
    assert_eq!(role.len(), 3);
    assert_eq!(bulk(&role[0]).as_deref(), Some(&b"master"[..]));
    assert!(int(&role[1]) > 0, "master offset");
    let mut ports: Vec<String> = elements(&role[2])
        .iter()
        .map(|r| {
            let r = elements(r);
            assert_eq!(bulk(&r[0]).as_deref(), Some(&b"127.0.0.1"[..]));
            text(&bulk(&r[1]).expect("port"))
        })
        .collect();
    ports.sort();
    let mut expected = vec![first.port.to_string(), second.port.to_string()];
    expected.sort();
    assert_eq!(ports, expected, "ROLE's replica ports");
    let role = elements(&first.raw().cmd(&["ROLE"]));
    assert_eq!(role.len(), 5, "a replica's ROLE has five elements");
    assert_eq!(bulk(&role[0]).as_deref(), Some(&b"slave"[..]));
    assert_eq!(bulk(&role[1]).as_deref(), Some(&b"127.0.0.1"[..]));
    assert_eq!(int(&role[2]), i64::from(primary.port));
    assert_eq!(bulk(&role[3]).as_deref(), Some(&b"connected"[..]));
    assert!(int(&role[4]) > 0, "replica offset");

    // Offsets: the primary's, each replica's acknowledged one in the primary's INFO, and each
    // replica's own agree once the replicas acknowledged everything.
    let mut last = String::new();
    let agreed = eventually(WITHIN, || {
        last = replication(&mut p);
        let offset = field_u64(&last, "master_repl_offset").to_string();
        let listed: Vec<&str> = last
            .lines()
            .filter(|l| l.starts_with("slave") && l.contains(":ip="))
            .collect();
        listed.len() == 2
            && listed
                .iter()
                .all(|l| l.contains(&format!(",offset={offset},")))
            && [&first, &second].iter().all(|r| {
                let info = replication(&mut r.raw());
                field(&info, "slave_repl_offset").as_deref() == Some(offset.as_str())
                    && field(&info, "master_repl_offset").as_deref() == Some(offset.as_str())
            })
    });
    assert!(agreed, "offsets disagree; the primary's INFO:\n{last}");

    // The replica's INFO names its primary, with the link up.
    let r = replication(&mut second.raw());
    assert_eq!(field(&r, "role").as_deref(), Some("slave"));
    assert_eq!(field(&r, "master_host").as_deref(), Some("127.0.0.1"));
    assert_eq!(field_u64(&r, "master_port"), u64::from(primary.port));
    assert_eq!(field(&r, "master_link_status").as_deref(), Some("up"));
    assert_eq!(field(&r, "master_sync_in_progress").as_deref(), Some("0"));
    assert!(field(&r, "master_link_down_since_seconds").is_none(), "{r}");
    let io = field(&r, "master_last_io_seconds_ago").expect("master_last_io_seconds_ago");
    assert!(io.parse::<u64>().is_ok(), "master_last_io_seconds_ago:{io}");
    assert_eq!(
        field(&r, "master_replid"),
        field(&replication(&mut p), "master_replid")
    );

    // A replica that goes away no longer counts.
    drop(second);
    wait_online(&mut p, 1);
    ok(&mut p, &["SET", "k", "v3"]);
    expect(&mut p, &["WAIT", "2", "300"], ":1\r\n");
}

// ------------------------------------------------------------------------------------------
// WAIT and WAITAOF inside MULTI
// ------------------------------------------------------------------------------------------

/// Inside MULTI, WAIT and WAITAOF answer with the counts reached, without blocking.
#[test]
fn wait_and_waitaof_inside_multi_answer_at_once() {
    let primary = start_primary(2, &["--appendfsync", "always"]);
    let _replica = start_replica(1, primary.port, &[]);
    let mut p = primary.raw();
    wait_online(&mut p, 1);
    ok(&mut p, &["SET", "a", "1"]);
    assert_eq!(waitaof(&mut p, &["1", "1", "0"]), [1, 1]);

    // They answer with the counts reached so far, never waiting for five replicas.
    ok(&mut p, &["MULTI"]);
    for command in [
        &["SET", "b", "2"][..],
        &["WAIT", "5", "100"],
        &["WAITAOF", "0", "5", "100"],
    ] {
        expect(&mut p, command, QUEUED);
    }
    let reply = p.cmd(&["EXEC"]);
    let items = elements(&reply);
    assert_eq!(items.len(), 3, "EXEC: {}", text(&reply));
    assert_eq!(items[0], OK);
    assert!((0..=1).contains(&int(&items[1])), "EXEC: {}", text(&reply));
    assert_eq!(elements(&items[2]).len(), 2, "EXEC: {}", text(&reply));
    assert_eq!(waitaof(&mut p, &["1", "1", "0"]), [1, 1]);

    // With timeout 0 (forever) they would never answer if they blocked. Before the write in
    // the transaction, everything this connection wrote was acknowledged: the counts are known.
    ok(&mut p, &["MULTI"]);
    for command in [
        &["WAIT", "5", "0"][..],
        &["WAITAOF", "1", "5", "0"],
        &["SET", "c", "3"],
    ] {
        expect(&mut p, command, QUEUED);
    }
    expect(
        &mut p,
        &["EXEC"],
        "*3\r\n:1\r\n*2\r\n:1\r\n:1\r\n+OK\r\n".as_bytes(),
    );
    // Outside MULTI they wait again.
    expect(&mut p, &["WAIT", "1", "0"], ":1\r\n");
    assert_eq!(waitaof(&mut p, &["1", "1", "0"]), [1, 1]);
}

// ------------------------------------------------------------------------------------------
// The link cut, held down and slowed by a proxy
// ------------------------------------------------------------------------------------------

/// Sets `<prefix><i>` to `<prefix>-value-<i>` for `i` in `range`.
fn write_keys(raw: &mut Raw, prefix: &str, range: std::ops::Range<usize>) {
    for i in range {
        ok(
            raw,
            &[
                "SET",
                &format!("{prefix}{i}"),
                &format!("{prefix}-value-{i}"),
            ],
        );
    }
}

/// Asserts that `<prefix><i>` reads `<prefix>-value-<i>` (or nothing, with `present` false)
/// for `i` in `range`.
#[track_caller]
fn check_keys(raw: &mut Raw, prefix: &str, range: std::ops::Range<usize>, present: bool) {
    for i in range {
        let key = format!("{prefix}{i}");
        let expected = present.then(|| format!("{prefix}-value-{i}"));
        assert_eq!(get(raw, &key), expected, "{key}");
    }
}

/// A cut link: the primary's WAIT counts the replica out, the replica serves reads and says its
/// link is down, and once back it continues from the backlog. A slow link converges too.
#[test]
fn a_cut_link_resumes_with_a_partial_resync_and_a_slow_one_converges() {
    let primary = start_primary(2, &[]);
    let proxy = Proxy::start(primary.port);
    let replica = start_replica(1, proxy.port, &[]);
    let mut p = primary.raw();
    let mut r = replica.raw();
    wait_online(&mut p, 1);
    wait_link(&replica, "up");

    write_keys(&mut p, "a", 0..50);
    expect(&mut p, &["WAIT", "1", "0"], ":1\r\n");

    // Cut and held down.
    proxy.cut();
    wait_link(&replica, "down");
    wait_online(&mut p, 0);
    write_keys(&mut p, "b", 0..50);
    expect(&mut p, &["DEL", "a0", "a1"], ":2\r\n");
    expect(&mut p, &["WAIT", "1", "300"], ":0\r\n");
    let down = replication(&mut r);
    assert_eq!(field(&down, "role").as_deref(), Some("slave"));
    assert!(
        field(&down, "master_link_down_since_seconds").is_some(),
        "a link that is down says since when:\n{down}"
    );
    let role = elements(&r.cmd(&["ROLE"]));
    let state = bulk(&role[3]).expect("ROLE state");
    assert!(
        state == b"connect" || state == b"sync",
        "ROLE state while down: {}",
        text(&state)
    );
    // The replica still serves what it has.
    check_keys(&mut r, "a", 0..50, true);
    check_keys(&mut r, "b", 0..5, false);

    // Back: it continues from the backlog.
    proxy.restore();
    wait_link(&replica, "up");
    expect(&mut p, &["WAIT", "1", "0"], ":1\r\n");
    check_keys(&mut r, "a", 0..2, false);
    check_keys(&mut r, "a", 2..50, true);
    check_keys(&mut r, "b", 0..50, true);
    assert_syncs(
        &primary,
        &replica,
        1,
        1,
        "one full sync at the start, one partial resync after the cut",
    );
    assert!(
        proxy.forwarded() >= 2,
        "the replica came back through the proxy"
    );

    // Slowed down: it still converges, and WAITAOF's acknowledgements hold.
    proxy.set_delay(Duration::from_millis(50));
    write_keys(&mut p, "c", 0..100);
    expect(&mut p, &["INCRBY", "counter", "7"], ":7\r\n");
    expect(&mut p, &["WAIT", "1", "0"], ":1\r\n");
    check_keys(&mut r, "c", 0..100, true);
    write_keys(&mut p, "d", 0..20);
    assert_eq!(waitaof(&mut p, &["0", "1", "0"])[1], 1);
    assert_converges(&primary, &replica, 1);

    // What WAITAOF 0 1 acknowledged is on the replica's disk: kill it and start it alone.
    drop(r);
    let replica = restart_logged(crash(replica), 1, &["--appendonly", "yes"]);
    let mut r = replica.raw();
    check_keys(&mut r, "a", 0..2, false);
    check_keys(&mut r, "a", 2..50, true);
    check_keys(&mut r, "b", 0..50, true);
    check_keys(&mut r, "c", 0..100, true);
    check_keys(&mut r, "d", 0..20, true);
    assert_eq!(get(&mut r, "counter").as_deref(), Some("7"));
}

/// A link that goes silent (nothing arrives, nothing fails) is given up by both sides after
/// `repl-timeout`; once the network works again the replica continues from the backlog.
#[test]
fn a_silent_link_times_out_on_both_sides_and_resumes() {
    let timeouts = ["--repl-timeout", "2", "--repl-ping-replica-period", "1"];
    let primary = start_primary(2, &timeouts);
    let proxy = Proxy::start(primary.port);
    let replica = start_replica(1, proxy.port, &timeouts);
    let mut p = primary.raw();
    let mut r = replica.raw();
    wait_online(&mut p, 1);
    write_keys(&mut p, "a", 0..20);
    expect(&mut p, &["WAIT", "1", "0"], ":1\r\n");

    proxy.stall();
    write_keys(&mut p, "b", 0..20);
    expect(&mut p, &["WAIT", "1", "300"], ":0\r\n");
    wait_link(&replica, "down");
    wait_online(&mut p, 0);
    assert!(
        replica.log_text().contains("no data from the primary"),
        "the replica does not say why it gave up:\n{}",
        warnings(&replica)
    );
    check_keys(&mut r, "a", 0..20, true);
    check_keys(&mut r, "b", 0..20, false);

    proxy.resume();
    wait_link(&replica, "up");
    expect(&mut p, &["WAIT", "1", "0"], ":1\r\n");
    check_keys(&mut r, "b", 0..20, true);
    assert_syncs(
        &primary,
        &replica,
        1,
        1,
        "the silent link costs no full sync",
    );
}

/// A replica that stops reading in the middle of its full sync (the network silent, its socket
/// buffers full) is given up after `repl-timeout`: the snapshot slot it held is free again and
/// a rewrite that waits for it runs.
#[test]
fn a_replica_that_stops_reading_during_its_full_sync_frees_the_snapshot_slot() {
    let primary = start_primary(1, &["--repl-timeout", "2"]);
    let mut p = primary.raw();
    // 24 MiB of values: more than the sockets between the two servers can buffer.
    let value = vec![b'v'; 8192];
    for batch in 0..30 {
        let mut pipeline = Vec::new();
        for i in 0..100 {
            pipeline.extend_from_slice(&resp(&[
                b"SET",
                format!("big{batch}:{i}").as_bytes(),
                &value,
            ]));
        }
        p.send(&pipeline);
        for _ in 0..100 {
            assert_eq!(text(&p.reply()), "+OK\r\n");
        }
    }
    let proxy = Proxy::start(primary.port);
    // Slow enough that the sync is still streaming when the network goes silent.
    proxy.set_delay(Duration::from_millis(20));
    let _replica = start(1, &strs(&logged_replica_args(proxy.port, &[])));
    assert!(
        eventually(WITHIN, || log_count(&primary, FULL_SYNC) == 1),
        "no full sync started"
    );
    proxy.stall();
    // Scheduled while the sync holds the snapshots (as Valkey while a child runs), and run
    // once the primary gives the replica up.
    expect(
        &mut p,
        &["BGREWRITEAOF"],
        "+Background append only file rewriting scheduled\r\n",
    );
    let persistence = info(&mut p, "persistence");
    assert_eq!(
        field(&persistence, "aof_rewrite_scheduled").as_deref(),
        Some("1"),
        "{persistence}"
    );
    wait_rewrites(&mut p, 1);
    let persistence = info(&mut p, "persistence");
    assert_eq!(
        field(&persistence, "aof_rewrite_scheduled").as_deref(),
        Some("0"),
        "{persistence}"
    );
    assert!(
        primary
            .log_text()
            .contains("the replica read nothing for 2 seconds"),
        "the primary does not say why it gave the replica up:\n{}",
        warnings(&primary)
    );
}

/// A link down for longer than the backlog covers comes back with a full sync.
#[test]
fn a_link_down_past_the_backlog_syncs_in_full() {
    let primary = start_primary(2, &["--repl-backlog-size", "16kb"]);
    let proxy = Proxy::start(primary.port);
    let replica = start_replica(1, proxy.port, &[]);
    let mut p = primary.raw();
    wait_online(&mut p, 1);
    write_keys(&mut p, "a", 0..20);
    expect(&mut p, &["WAIT", "1", "0"], ":1\r\n");

    proxy.cut();
    wait_link(&replica, "down");
    wait_online(&mut p, 0);
    let filler = "f".repeat(200);
    for i in 0..400 {
        ok(&mut p, &["SET", &format!("big{i}"), &filler]);
    }
    expect(&mut p, &["DEL", "a0"], ":1\r\n");
    proxy.restore();
    wait_link(&replica, "up");
    expect(&mut p, &["WAIT", "1", "0"], ":1\r\n");
    assert_converges(&primary, &replica, 1);
    assert_syncs(
        &primary,
        &replica,
        0,
        2,
        "the backlog lost the replica's position: a second full sync",
    );
}

/// A primary restarted after kill -9 (a new history) syncs its replica in full, with what its
/// log kept.
#[test]
fn a_restarted_primary_syncs_its_replica_in_full() {
    let primary_args = ["--appendonly", "yes", "--appendfsync", "always"];
    let primary = start(2, &primary_args);
    let proxy = Proxy::start(primary.port);
    let replica = start_replica(1, proxy.port, &[]);
    let mut p = primary.raw();
    let mut r = replica.raw();
    wait_online(&mut p, 1);
    write_keys(&mut p, "a", 0..30);
    expect(&mut p, &["WAIT", "1", "0"], ":1\r\n");
    let replid = field(&replication(&mut r), "master_replid").expect("master_replid");

    proxy.cut();
    let primary = restart_logged(crash(primary), 2, &primary_args);
    let mut p = primary.raw();
    wait_link(&replica, "down");
    check_keys(&mut r, "a", 0..30, true);
    expect(&mut p, &["DEL", "a0"], ":1\r\n");
    write_keys(&mut p, "b", 0..10);
    proxy.set_target(primary.port);
    proxy.restore();
    wait_link(&replica, "up");
    wait_online(&mut p, 1);
    expect(&mut p, &["WAIT", "1", "0"], ":1\r\n");
    assert_converges(&primary, &replica, 1);
    assert_syncs(
        &primary,
        &replica,
        0,
        1,
        "a restarted primary has a new history: one full sync",
    );
    let now = field(&replication(&mut r), "master_replid").expect("master_replid");
    assert_ne!(now, replid, "the replica took the new primary's history");
}

/// A replica pointed at another primary takes nothing more from the first one, and shows its
/// new link as up.
#[test]
fn a_replica_pointed_elsewhere_takes_nothing_more_from_its_old_primary() {
    let first = start_primary(1, &[]);
    let second = start_primary(1, &[]);
    let replica = start_replica(2, first.port, &[]);
    let mut p1 = first.raw();
    let mut p2 = second.raw();
    let mut r = replica.raw();
    wait_online(&mut p1, 1);
    ok(&mut p1, &["SET", "from-first", "1"]);
    expect(&mut p1, &["WAIT", "1", "0"], ":1\r\n");
    ok(&mut p2, &["SET", "from-second", "1"]);

    ok(
        &mut r,
        &["REPLICAOF", "127.0.0.1", &second.port.to_string()],
    );
    wait_online(&mut p2, 1);
    wait_value(&mut r, "from-second", Some("1"));
    assert_eq!(get(&mut r, "from-first"), None, "the full sync emptied it");
    // The first primary writes on.
    ok(&mut p1, &["SET", "stray", "1"]);
    wait_online(&mut p1, 0);
    ok(&mut p2, &["SET", "later", "1"]);
    expect(&mut p2, &["WAIT", "1", "0"], ":1\r\n");
    assert_eq!(get(&mut r, "later").as_deref(), Some("1"));
    let mut problems = Vec::new();
    if let Some(stray) = get(&mut r, "stray") {
        problems.push(format!(
            "a write of the old primary reached a replica that follows another one (stray = \
             {stray})"
        ));
    }
    let info = replication(&mut r);
    if field(&info, "master_link_status").as_deref() != Some("up") {
        problems.push(format!("INFO shows the working link as down:\n{info}"));
    }
    let role = elements(&r.cmd(&["ROLE"]));
    if bulk(&role[3]).as_deref() != Some(&b"connected"[..]) {
        problems.push(format!(
            "ROLE shows the working link as {}",
            text(&bulk(&role[3]).unwrap_or_default())
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_eq!(
        field(&info, "master_port"),
        Some(second.port.to_string()),
        "{info}"
    );
}

/// A replica does not serve replicas of its own: one pointed at it stays down.
#[test]
fn a_replica_refuses_to_serve_a_replica() {
    let primary = start_primary(1, &[]);
    let replica = start_replica(1, primary.port, &[]);
    wait_online(&mut primary.raw(), 1);
    let chained = start_replica(1, replica.port, &[]);
    assert!(
        eventually(WITHIN, || chained
            .log_text()
            .contains("do not serve replicas of their own")),
        "the chained replica does not say why it cannot follow:\n{}",
        chained.log_text()
    );
    let info = replication(&mut chained.raw());
    assert_eq!(
        field(&info, "master_link_status").as_deref(),
        Some("down"),
        "{info}"
    );
    assert_eq!(
        field_u64(&replication(&mut replica.raw()), "connected_slaves"),
        0
    );
    expect(
        &mut replica.raw(),
        &["PSYNC", "?", "-1"],
        "-ERR corekv replicas do not serve replicas of their own: replicate from the primary\r\n",
    );
}

/// AOF rewrites on the primary (live, and while the link is down) and on the replica (while it
/// applies the stream) change nothing in what replicates: positions, acknowledgements and the
/// partial resync carry on, and both logs keep everything.
#[test]
fn rewrites_on_either_side_leave_replication_intact() {
    let primary = start_primary(2, &[]);
    let proxy = Proxy::start(primary.port);
    let replica = start_replica(3, proxy.port, &[]);
    let mut p = primary.raw();
    let mut r = replica.raw();
    wait_online(&mut p, 1);
    write_keys(&mut p, "a", 0..100);
    expect(&mut p, &["WAIT", "1", "0"], ":1\r\n");

    // On the primary, live.
    expect(&mut p, &["BGREWRITEAOF"], REWRITE_STARTED);
    write_keys(&mut p, "b", 0..50);
    wait_rewrites(&mut p, 1);
    write_keys(&mut p, "c", 0..50);
    expect(&mut p, &["WAIT", "1", "0"], ":1\r\n");
    check_keys(&mut r, "b", 0..50, true);
    check_keys(&mut r, "c", 0..50, true);
    assert_eq!(waitaof(&mut p, &["1", "1", "0"]), [1, 1]);

    // On the replica, while the stream comes in.
    expect(&mut r, &["BGREWRITEAOF"], REWRITE_STARTED);
    write_keys(&mut p, "d", 0..100);
    wait_rewrites(&mut r, 1);
    write_keys(&mut p, "e", 0..20);
    assert_eq!(waitaof(&mut p, &["1", "1", "0"]), [1, 1]);

    // On the primary while the link is down.
    proxy.cut();
    wait_link(&replica, "down");
    write_keys(&mut p, "f", 0..50);
    expect(&mut p, &["BGREWRITEAOF"], REWRITE_STARTED);
    wait_rewrites(&mut p, 2);
    write_keys(&mut p, "g", 0..50);
    proxy.restore();
    wait_link(&replica, "up");
    assert_eq!(waitaof(&mut p, &["1", "1", "0"]), [1, 1]);
    let data = assert_converges(&primary, &replica, 1);
    assert_eq!(data.len(), 420);
    assert_syncs(
        &primary,
        &replica,
        1,
        1,
        "a rewrite does not cost the replica its backlog position",
    );

    // The replica's own log (a rewritten base and what followed) has it all.
    drop(r);
    let replica = restart_logged(crash(replica), 3, &["--appendonly", "yes"]);
    let mut r = replica.raw();
    for (prefix, n) in [("a", 100), ("b", 50), ("c", 50), ("d", 100), ("e", 20)] {
        check_keys(&mut r, prefix, 0..n, true);
    }
    check_keys(&mut r, "f", 0..50, true);
    check_keys(&mut r, "g", 0..50, true);
}

/// What WAIT acknowledged survives the loss of the primary: the replica, promoted, has it.
#[test]
fn wait_acknowledged_writes_survive_a_failover() {
    let mut primary = start_primary(2, &[]);
    let replica = start_replica(1, primary.port, &[]);
    let mut p = primary.raw();
    wait_online(&mut p, 1);
    for i in 0..200 {
        ok(&mut p, &["SET", &format!("k{i}"), &i.to_string()]);
        if i % 20 == 19 {
            expect(&mut p, &["WAIT", "1", "0"], ":1\r\n");
        }
    }
    kill9(&mut primary);
    let mut r = replica.raw();
    wait_link(&replica, "down");
    // Down, it serves reads and still refuses writes.
    expect(&mut r, &["SET", "k0", "x"], READONLY);
    ok(&mut r, &["REPLICAOF", "NO", "ONE"]);
    for i in 0..200 {
        assert_eq!(get(&mut r, &format!("k{i}")), Some(i.to_string()), "k{i}");
    }
    ok(&mut r, &["SET", "k0", "after-failover"]);
    let info = replication(&mut r);
    assert_eq!(field(&info, "role").as_deref(), Some("master"), "{info}");
    assert!(field(&info, "master_link_status").is_none(), "{info}");
}

/// A replica of a primary that cannot be reached keeps its data and keeps trying; promoted
/// again, it is the primary it was.
#[test]
fn a_replica_of_an_unreachable_primary_keeps_its_data() {
    let server = start_primary(2, &[]);
    let mut s = server.raw();
    ok(&mut s, &["MSET", "a", "1", "b", "2"]);
    let nowhere = common::free_port();
    ok(&mut s, &["REPLICAOF", "127.0.0.1", &nowhere.to_string()]);
    assert!(
        eventually(WITHIN, || log_count(&server, "Connecting to PRIMARY") >= 2),
        "the replica does not retry:\n{}",
        server.log_text()
    );
    let info = replication(&mut s);
    assert_eq!(field(&info, "master_link_status").as_deref(), Some("down"));
    assert_eq!(field_u64(&info, "master_port"), u64::from(nowhere));
    let role = elements(&s.cmd(&["ROLE"]));
    assert_eq!(bulk(&role[3]).as_deref(), Some(&b"connect"[..]));
    expect(&mut s, &["MGET", "a", "b"], "*2\r\n$1\r\n1\r\n$1\r\n2\r\n");
    expect(&mut s, &["SET", "a", "x"], READONLY);
    ok(&mut s, &["SLAVEOF", "NO", "ONE"]);
    ok(&mut s, &["SET", "a", "x"]);
    assert_eq!(get(&mut s, "a").as_deref(), Some("x"));
    // REPLICAOF NO ONE on a primary changes nothing.
    ok(&mut s, &["REPLICAOF", "NO", "ONE"]);
    assert_eq!(
        field(&replication(&mut s), "role").as_deref(),
        Some("master")
    );
}

// ------------------------------------------------------------------------------------------
// A replica killed while a writer loads the primary
// ------------------------------------------------------------------------------------------

/// Keys written before the load, so that full syncs walk a keyspace of some size.
const PRELOADED: usize = 20_000;

/// Writes `pre:0` … `pre:<PRELOADED-1>` in pipelined MSETs, every tenth with a TTL.
fn preload(raw: &mut Raw) {
    const BATCH: usize = 500;
    for start in (0..PRELOADED).step_by(BATCH) {
        let mut mset: Vec<Vec<u8>> = vec![b"MSET".to_vec()];
        let mut ttls = Vec::new();
        for i in start..start + BATCH {
            mset.push(format!("pre:{i}").into_bytes());
            mset.push(format!("preloaded-value-{i}").into_bytes());
            if i % 10 == 0 {
                ttls.extend(resp(&[b"EXPIRE", format!("pre:{i}").as_bytes(), b"1000"]));
            }
        }
        let args: Vec<&[u8]> = mset.iter().map(Vec::as_slice).collect();
        raw.send(&resp(&args));
        raw.send(&ttls);
        assert_eq!(raw.reply(), OK);
        for _ in 0..BATCH / 10 {
            assert_eq!(int(&raw.reply()), 1);
        }
    }
}

/// Writes to the primary until `stop` (SET, INCR, MSET, DEL and EXPIRE over a fixed set of
/// keys, and overwrites of preloaded keys); counts the commands in `done`. Returns the
/// connection, for a WAIT.
fn load(mut raw: Raw, stop: &AtomicBool, done: &AtomicUsize) -> Raw {
    let mut i = 0usize;
    while !stop.load(Ordering::Acquire) {
        let key = format!("w:{}", i % 1500);
        match i % 10 {
            0 => assert!(raw.cmd(&["INCR", "w:counter"]).starts_with(b":")),
            3 => ok(
                &mut raw,
                &[
                    "MSET",
                    &format!("m:{}", i % 97),
                    &i.to_string(),
                    &format!("m:{}", (i + 31) % 97),
                    &key,
                ],
            ),
            5 => assert!(int(&raw.cmd(&["DEL", &format!("w:{}", (i + 700) % 1500)])) >= 0),
            7 => assert!(int(&raw.cmd(&["EXPIRE", &key, "1000"])) >= 0),
            9 => ok(
                &mut raw,
                &[
                    "SET",
                    &format!("pre:{}", (i * 7) % PRELOADED),
                    &i.to_string(),
                ],
            ),
            _ => ok(&mut raw, &["SET", &key, &format!("value-{i}")]),
        }
        i += 1;
        done.store(i, Ordering::Release);
    }
    raw
}

/// A keyspace large enough that the snapshot is walked (and sent) in several steps per shard
/// arrives whole.
#[test]
fn a_full_sync_of_a_large_keyspace_completes() {
    let primary = start_primary(1, &[]);
    let mut p = primary.raw();
    preload(&mut p);
    let replica = start_replica(3, primary.port, &[]);
    let mut r = replica.raw();
    let mut last = String::new();
    let synced = eventually(WITHIN, || {
        last = replication(&mut r);
        field(&last, "master_link_status").as_deref() == Some("up")
    });
    assert!(
        synced,
        "the full sync of {PRELOADED} keys did not complete:\n{last}\nreplica log:\n{}",
        replica.log_text()
    );
    let data = assert_converges(&primary, &replica, 1);
    assert_eq!(data.len(), PRELOADED);
    assert_eq!(
        data.values().filter(|(_, ttl)| *ttl).count(),
        PRELOADED / 10
    );
}

/// MSETs `<prefix>0` … `<prefix><n-1>` in database `db` through `raw` (left on database 0).
fn fill_db(raw: &mut Raw, db: usize, prefix: &str, n: usize) {
    ok(raw, &["SELECT", &db.to_string()]);
    for start in (0..n).step_by(500) {
        let mut mset = vec!["MSET".to_string()];
        for i in start..(start + 500).min(n) {
            mset.push(format!("{prefix}{i}"));
            mset.push(format!("{prefix}value-{i}"));
        }
        ok(raw, &strs(&mset));
    }
    ok(raw, &["SELECT", "0"]);
}

/// A full sync whose snapshot is walked while the primary swaps databases, flushes one and
/// writes on: the replica ends up with the primary's data in every database.
#[test]
fn a_full_sync_during_swapdb_flushdb_and_writes_converges() {
    let primary = start_primary(2, &[]);
    let mut p = primary.raw();
    fill_db(&mut p, 0, "zero:", 6000);
    fill_db(&mut p, 1, "one:", 6000);
    fill_db(&mut p, 2, "two:", 1000);

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (mut raw, stop, done) = (primary.raw(), Arc::clone(&stop), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut i = 0usize;
            while !stop.load(Ordering::Acquire) {
                match i % 6 {
                    0 => ok(&mut raw, &["SWAPDB", "0", "1"]),
                    1 => {
                        ok(&mut raw, &["SELECT", "2"]);
                        ok(&mut raw, &["FLUSHDB"]);
                        ok(
                            &mut raw,
                            &["MSET", &format!("two:new{i}"), "x", "two:0", "y"],
                        );
                        ok(&mut raw, &["SELECT", "0"]);
                    }
                    2 => assert!(int(&raw.cmd(&["DEL", &format!("zero:{}", i % 6000)])) >= 0),
                    3 => ok(
                        &mut raw,
                        &["SET", &format!("one:{}", i % 6000), &i.to_string()],
                    ),
                    4 => assert!(
                        int(&raw.cmd(&["EXPIRE", &format!("one:{}", i % 500), "1000"])) >= 0
                    ),
                    _ => ok(&mut raw, &["SET", &format!("live:{i}"), "v"]),
                }
                i += 1;
                done.store(i, Ordering::Release);
            }
            raw
        })
    };
    let replica = start_replica(3, primary.port, &[]);
    wait_link(&replica, "up");
    let from = done.load(Ordering::Acquire);
    assert!(
        eventually(WITHIN, || done.load(Ordering::Acquire) >= from + 300),
        "the writer stalled"
    );
    stop.store(true, Ordering::Release);
    let mut writer = writer.join().expect("the writer panicked");
    expect(&mut writer, &["WAIT", "1", "0"], ":1\r\n");
    let data = assert_converges(&primary, &replica, 3);
    assert!(data.len() > 10_000, "{} keys", data.len());
}

/// The replica is killed while a writer loads the primary, then killed again as soon as it
/// restarted (likely during its full sync, which an AOF rewrite of the primary may delay), and
/// restarted once more: it converges to the primary's data.
#[test]
fn a_replica_killed_under_load_converges_after_its_restart() {
    let primary = start_primary(2, &[]);
    let mut p = primary.raw();
    preload(&mut p);
    let replica = start_replica(2, primary.port, &[]);
    wait_online(&mut p, 1);

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (raw, stop, done) = (primary.raw(), Arc::clone(&stop), Arc::clone(&done));
        std::thread::spawn(move || load(raw, &stop, &done))
    };
    let more_writes = |n: usize| {
        let from = done.load(Ordering::Acquire);
        assert!(
            eventually(WITHIN, || done.load(Ordering::Acquire) >= from + n),
            "the writer stalled"
        );
    };
    let args = logged_replica_args(primary.port, &[]);

    more_writes(1000);
    let dir = crash(replica);
    more_writes(500);
    expect(&mut p, &["BGREWRITEAOF"], REWRITE_STARTED);
    let replica = Server::start_in(dir, 2, &strs(&args));
    let dir = crash(replica);
    more_writes(500);
    let replica = restart_logged(dir, 2, &strs(&args));
    wait_link(&replica, "up");
    more_writes(1000);
    stop.store(true, Ordering::Release);
    let mut writer = writer.join().expect("the writer panicked");
    expect(&mut writer, &["WAIT", "1", "0"], ":1\r\n");

    let data = assert_converges(&primary, &replica, 1);
    assert!(
        data.len() > PRELOADED,
        "the primary holds {} keys",
        data.len()
    );
    assert!(
        log_count(&primary, FULL_SYNC) >= 2,
        "{}",
        primary.log_text()
    );
    assert_eq!(log_count(&primary, PARTIAL), 0, "{}", primary.log_text());
    wait_rewrites(&mut p, 1);
}

// ------------------------------------------------------------------------------------------
// Promotion and demotion
// ------------------------------------------------------------------------------------------

/// REPLICAOF NO ONE promotes a replica (writable, serving a replica of its own); REPLICAOF
/// demotes it again, with a full sync; REPLICAOF's replies.
#[test]
fn promotion_and_demotion() {
    let primary = start_primary(1, &[]);
    let replica = start_replica(2, primary.port, &[]);
    let mut p = primary.raw();
    let mut r = replica.raw();
    wait_online(&mut p, 1);
    ok(&mut p, &["SET", "x", "1"]);
    expect(&mut p, &["WAIT", "1", "0"], ":1\r\n");

    // Promoted: a writable primary with the data it had.
    ok(&mut r, &["REPLICAOF", "NO", "ONE"]);
    let role = elements(&r.cmd(&["ROLE"]));
    assert_eq!(bulk(&role[0]).as_deref(), Some(&b"master"[..]));
    assert_eq!(
        field(&replication(&mut r), "role").as_deref(),
        Some("master")
    );
    ok(&mut r, &["SET", "y", "2"]);
    assert_eq!(get(&mut r, "x").as_deref(), Some("1"));
    expect(&mut r, &["WAIT", "0", "0"], ":0\r\n");
    expect(&mut r, &["WAIT", "1", "100"], ":0\r\n");
    // It serves a replica of its own.
    let follower = start_replica(1, replica.port, &[]);
    wait_online(&mut r, 1);
    ok(&mut r, &["SET", "y", "3"]);
    expect(&mut r, &["WAIT", "1", "0"], ":1\r\n");
    assert_eq!(get(&mut follower.raw(), "y").as_deref(), Some("3"));
    assert_eq!(get(&mut follower.raw(), "x").as_deref(), Some("1"));

    // Demoted again: it follows the primary, drops its own replica and takes the primary's
    // data in place of its own.
    ok(&mut p, &["SET", "x", "10"]);
    ok(
        &mut r,
        &["REPLICAOF", "127.0.0.1", &primary.port.to_string()],
    );
    expect(
        &mut r,
        &["REPLICAOF", "127.0.0.1", &primary.port.to_string()],
        "+OK Already connected to specified master\r\n",
    );
    expect(
        &mut r,
        &["SLAVEOF", "127.0.0.1", &primary.port.to_string()],
        "+OK Already connected to specified master\r\n",
    );
    expect(
        &mut r,
        &["REPLICAOF", "127.0.0.1", "abc"],
        "-ERR Invalid master port\r\n",
    );
    wait_link(&replica, "up");
    wait_value(&mut r, "x", Some("10"));
    assert_eq!(
        get(&mut r, "y"),
        None,
        "a full sync replaces the replica's data"
    );
    expect(&mut r, &["SET", "y", "4"], READONLY);
    let mut last = String::new();
    assert!(
        eventually(WITHIN, || {
            last = replication(&mut r);
            field_u64(&last, "connected_slaves") == 0
        }),
        "a demoted server keeps its replicas:\n{last}"
    );
    wait_online(&mut p, 1);
    assert_syncs(
        &primary,
        &replica,
        0,
        2,
        "one at the start, one after the demotion",
    );
}

/// After REPLICAOF NO ONE the old primary's writes must no longer reach the promoted server.
#[test]
fn a_promoted_replica_applies_nothing_more_from_its_old_primary() {
    let primary = start_primary(1, &[]);
    let replica = start_replica(1, primary.port, &[]);
    let mut p = primary.raw();
    let mut r = replica.raw();
    wait_online(&mut p, 1);
    ok(&mut p, &["SET", "x", "before"]);
    expect(&mut p, &["WAIT", "1", "0"], ":1\r\n");

    ok(&mut r, &["REPLICAOF", "NO", "ONE"]);
    ok(&mut p, &["SET", "x", "after-promotion"]);
    ok(&mut p, &["SET", "only-on-the-old-primary", "1"]);
    // Once the old primary lost its replica, nothing more can arrive.
    wait_online(&mut p, 0);
    assert_eq!(
        get(&mut r, "x").as_deref(),
        Some("before"),
        "a write made on the old primary after REPLICAOF NO ONE reached the promoted server"
    );
    assert_eq!(get(&mut r, "only-on-the-old-primary"), None);
}

/// Clients blocked in WAIT or WAITAOF on a primary that becomes a replica get UNBLOCKED and
/// are disconnected.
#[test]
fn blocked_wait_and_waitaof_are_released_when_the_primary_becomes_a_replica() {
    let other = start_primary(1, &[]);
    ok(&mut other.raw(), &["SET", "from-other", "1"]);
    let server = start_primary(2, &[]);
    let mut control = server.raw();

    let mut waiter = server.raw();
    ok(&mut waiter, &["SET", "k", "1"]);
    waiter.send(&resp(&[b"WAIT", b"5", b"0"]));
    assert!(
        no_reply_yet(&mut waiter),
        "WAIT 5 0 without replicas blocks"
    );
    let mut aof_waiter = server.raw();
    ok(&mut aof_waiter, &["SET", "k2", "1"]);
    aof_waiter.send(&resp(&[b"WAITAOF", b"0", b"5", b"0"]));
    assert!(no_reply_yet(&mut aof_waiter), "WAITAOF 0 5 0 blocks");

    ok(
        &mut control,
        &["REPLICAOF", "127.0.0.1", &other.port.to_string()],
    );
    for (name, blocked) in [("WAIT", &mut waiter), ("WAITAOF", &mut aof_waiter)] {
        assert_eq!(text(&blocked.reply()), UNBLOCKED, "{name}");
        assert!(
            blocked.closed_within(WITHIN),
            "{name}'s connection stays open after UNBLOCKED"
        );
    }
    // The new replica follows the other server.
    wait_link(&server, "up");
    wait_value(&mut control, "from-other", Some("1"));
    assert_eq!(get(&mut control, "k"), None);
}

// ------------------------------------------------------------------------------------------
// A read-only replica
// ------------------------------------------------------------------------------------------

/// A replica refuses client writes (also queued in MULTI, dooming EXEC), WAIT and WAITAOF,
/// until `replica-read-only no`.
#[test]
fn a_replica_refuses_writes_until_made_writable() {
    let primary = start_primary(2, &[]);
    let replica = start_replica(2, primary.port, &[]);
    let mut p = primary.raw();
    let mut r = replica.raw();
    wait_online(&mut p, 1);
    ok(&mut p, &["MSET", "a", "1", "b", "2"]);
    expect(&mut p, &["WAIT", "1", "0"], ":1\r\n");

    for command in [
        &["SET", "a", "x"][..],
        &["MSET", "a", "x", "c", "y"],
        &["DEL", "a"],
        &["INCR", "b"],
        &["EXPIRE", "a", "100"],
        &["FLUSHALL"],
        &["FLUSHDB"],
        &["SWAPDB", "0", "1"],
    ] {
        expect(&mut r, command, READONLY);
    }
    // Reads work.
    assert_eq!(get(&mut r, "a").as_deref(), Some("1"));
    expect(&mut r, &["MGET", "a", "b"], "*2\r\n$1\r\n1\r\n$1\r\n2\r\n");
    expect(&mut r, &["DBSIZE"], ":2\r\n");
    // In a transaction the refused write dooms EXEC.
    ok(&mut r, &["MULTI"]);
    expect(&mut r, &["GET", "a"], QUEUED);
    expect(&mut r, &["MSET", "a", "x", "c", "y"], READONLY);
    expect(&mut r, &["SET", "a", "x"], READONLY);
    expect(&mut r, &["EXEC"], EXECABORT);
    assert_eq!(get(&mut r, "a").as_deref(), Some("1"));
    // WAIT and WAITAOF are the primary's.
    expect(&mut r, &["WAIT", "1", "0"], WAIT_ON_REPLICA);
    expect(&mut r, &["WAITAOF", "0", "0", "0"], WAITAOF_ON_REPLICA);
    expect(&mut r, &["WAITAOF", "1", "1", "100"], WAITAOF_ON_REPLICA);
    expect(
        &mut r,
        &["WAITAOF", "2", "0", "0"],
        "-ERR value is out of range, value must between 0 and 1\r\n",
    );

    // Writable: local writes work; the stream keeps coming.
    ok(&mut r, &["CONFIG", "SET", "replica-read-only", "no"]);
    assert_eq!(
        field(&replication(&mut r), "slave_read_only").as_deref(),
        Some("0")
    );
    ok(&mut r, &["SET", "local", "1"]);
    assert_eq!(get(&mut r, "local").as_deref(), Some("1"));
    ok(&mut p, &["SET", "a", "from-primary"]);
    wait_value(&mut r, "a", Some("from-primary"));
    expect(&mut r, &["WAIT", "1", "0"], WAIT_ON_REPLICA);
    ok(&mut r, &["CONFIG", "SET", "replica-read-only", "yes"]);
    expect(&mut r, &["SET", "local", "2"], READONLY);
}

// ------------------------------------------------------------------------------------------
// Different shard counts
// ------------------------------------------------------------------------------------------

/// Databases the mixed writes use.
const MIXED_DBS: usize = 10;

/// A mix of writes with `prefix` on every key: strings, counters, MSET and transactions across
/// shards, RENAME and COPY across shards of a `cross`-shard server, TTLs in every form, keys
/// that expire soon, FLUSHDB of one database while others hold keys, SWAPDB, and transactions
/// that switch databases or flush one in their middle. Leaves `raw` on database 0.
fn mixed_writes(raw: &mut Raw, prefix: &str, cross: usize) {
    let k = |name: &str| format!("{prefix}{name}");
    let on = |shard: usize, name: &str| key_on(shard, cross, &k(name));
    ok(raw, &["SELECT", "0"]);
    for i in 0..60 {
        ok(raw, &["SET", &k(&format!("k{i}")), &format!("v{i}")]);
    }
    let mut mset = vec!["MSET".to_string()];
    for i in 0..12 {
        mset.push(k(&format!("m{i}")));
        mset.push(format!("m{i}"));
    }
    ok(raw, &strs(&mset));
    expect(raw, &["MSETNX", &k("n1"), "1", &k("n2"), "2"], ":1\r\n");

    // A transaction over several shards.
    ok(raw, &["MULTI"]);
    for command in [
        vec!["SET".to_string(), k("t0"), "x".into()],
        vec!["INCR".into(), k("t1")],
        vec!["APPEND".into(), k("t2"), "y".into()],
        vec!["DEL".into(), k("k0"), k("k1"), k("m0")],
        vec!["EXPIRE".into(), k("k2"), "1000".into()],
        vec!["SET".into(), on(0, "tx"), "0".into()],
        vec!["SET".into(), on(cross - 1, "tx"), "1".into()],
    ] {
        expect(raw, &strs(&command), QUEUED);
    }
    assert!(raw.cmd(&["EXEC"]).starts_with(b"*7\r\n"));

    // Across shards of the larger server.
    let (from, to) = (on(0, "rename-from"), on(cross - 1, "rename-to"));
    ok(raw, &["SET", &from, "moved"]);
    expect(raw, &["EXPIRE", &from, "1000"], ":1\r\n");
    ok(raw, &["RENAME", &from, &to]);
    let (from, to) = (on(cross - 1, "renamenx-from"), on(0, "renamenx-to"));
    ok(raw, &["SET", &from, "moved-nx"]);
    expect(raw, &["RENAMENX", &from, &to], ":1\r\n");
    let (from, to) = (on(0, "copy-from"), on(cross - 1, "copy-to"));
    ok(raw, &["SET", &from, "copied"]);
    expect(raw, &["COPY", &from, &to], ":1\r\n");
    expect(raw, &["COPY", &from, &from, "DB", "5"], ":1\r\n");

    // TTLs.
    let at_ms = (now_ms() + 1_000_000).to_string();
    let at_s = (now_ms() / 1000 + 1000).to_string();
    expect(raw, &["PEXPIREAT", &k("k3"), &at_ms], ":1\r\n");
    expect(raw, &["EXPIREAT", &k("k4"), &at_s], ":1\r\n");
    expect(raw, &["PEXPIRE", &k("k5"), "1000000"], ":1\r\n");
    expect(raw, &["EXPIRE", &k("k6"), "1000"], ":1\r\n");
    expect(raw, &["PERSIST", &k("k6")], ":1\r\n");
    ok(raw, &["SETEX", &k("setex"), "1000", "s"]);
    ok(raw, &["PSETEX", &k("psetex"), "1000000", "p"]);
    ok(raw, &["SET", &k("px"), "v", "PX", "1000000"]);
    ok(raw, &["SET", &k("keepttl"), "v", "EX", "1000"]);
    ok(raw, &["SET", &k("keepttl"), "w", "KEEPTTL"]);
    expect(raw, &["GETEX", &k("k7"), "EX", "1000"], "$2\r\nv7\r\n");
    expect(raw, &["GETEX", &k("k3"), "PERSIST"], "$2\r\nv3\r\n");
    // Expire during the test: both sides lose them.
    ok(raw, &["SET", &k("short"), "v", "PX", "150"]);
    expect(raw, &["PEXPIRE", &k("k8"), "100"], ":1\r\n");

    // Counters and string edits.
    for _ in 0..5 {
        assert!(raw.cmd(&["INCR", &k("counter")]).starts_with(b":"));
    }
    expect(raw, &["INCRBY", &k("counter"), "100"], ":105\r\n");
    expect(raw, &["DECR", &k("counter")], ":104\r\n");
    expect(raw, &["INCRBYFLOAT", &k("float"), "1.5"], "$3\r\n1.5\r\n");
    expect(raw, &["APPEND", &k("k9"), "+tail"], ":7\r\n");
    expect(raw, &["SETRANGE", &k("k10"), "1", "XYZ"], ":4\r\n");
    expect(raw, &["GETSET", &k("k11"), "new"], "$3\r\nv11\r\n");
    expect(raw, &["GETDEL", &k("k12")], "$3\r\nv12\r\n");
    expect(raw, &["SETNX", &k("k13"), "no"], ":0\r\n");
    expect(
        raw,
        &["DEL", &k("k14"), &k("k15"), &k("m1"), &k("absent")],
        ":3\r\n",
    );
    expect(raw, &["UNLINK", &k("k16"), &k("m2")], ":2\r\n");

    // FLUSHDB of database 1 while database 0 holds keys.
    ok(raw, &["SELECT", "1"]);
    ok(
        raw,
        &["MSET", &k("d1a"), "1", &k("d1b"), "2", &k("d1c"), "3"],
    );
    ok(raw, &["FLUSHDB"]);
    ok(raw, &["SET", &k("d1-after"), "1"]);
    // SWAPDB.
    ok(raw, &["SELECT", "2"]);
    ok(raw, &["SET", &k("two"), "2"]);
    ok(raw, &["SELECT", "3"]);
    ok(raw, &["SET", &k("three"), "3", "EX", "1000"]);
    ok(raw, &["SWAPDB", "2", "3"]);
    ok(raw, &["SET", &k("three-after-swap"), "3"]);
    // A transaction that switches databases.
    ok(raw, &["MULTI"]);
    expect(raw, &["SELECT", "4"], QUEUED);
    expect(raw, &["SET", &on(0, "in4"), "4"], QUEUED);
    expect(raw, &["SET", &on(cross - 1, "in4"), "4"], QUEUED);
    expect(raw, &["SELECT", "0"], QUEUED);
    expect(raw, &["SET", &k("in0"), "0"], QUEUED);
    assert!(raw.cmd(&["EXEC"]).starts_with(b"*5\r\n"));
    // A transaction that flushes a database in its middle.
    ok(raw, &["SELECT", "6"]);
    ok(raw, &["MSET", &on(0, "f"), "1", &on(cross - 1, "f"), "1"]);
    ok(raw, &["MULTI"]);
    expect(raw, &["SET", &on(0, "f-before"), "1"], QUEUED);
    expect(raw, &["FLUSHDB"], QUEUED);
    expect(raw, &["SET", &on(cross - 1, "f-after"), "1"], QUEUED);
    expect(raw, &["SET", &on(0, "f-after"), "1"], QUEUED);
    assert!(raw.cmd(&["EXEC"]).starts_with(b"*4\r\n"));
    // A transaction that swaps databases in its middle.
    ok(raw, &["SELECT", "7"]);
    ok(raw, &["MULTI"]);
    expect(raw, &["SET", &on(0, "s7"), "7"], QUEUED);
    expect(raw, &["SWAPDB", "7", "8"], QUEUED);
    expect(raw, &["SET", &on(cross - 1, "s7"), "7"], QUEUED);
    assert!(raw.cmd(&["EXEC"]).starts_with(b"*3\r\n"));
    ok(raw, &["SELECT", "0"]);
}

/// A primary with data (and TTLs) syncs in full to a replica with another shard count; then
/// the live stream carries more of the same.
fn shard_counts(primary_shards: usize, replica_shards: usize) {
    let cross = primary_shards.max(replica_shards);
    let primary = start_primary(primary_shards, &[]);
    let mut p = primary.raw();
    mixed_writes(&mut p, "before:", cross);
    // Values larger than a socket buffer (and than the primary's outbox, 4 MiB).
    let big = "b".repeat(3 << 20);
    ok(&mut p, &["SET", "before:big", &big, "EX", "1000"]);

    let replica = start_replica(replica_shards, primary.port, &[]);
    wait_online(&mut p, 1);
    let data = assert_converges(&primary, &replica, MIXED_DBS);
    let with_ttl = data.values().filter(|(_, ttl)| *ttl).count();
    assert!(
        with_ttl >= 8,
        "the full sync carried {with_ttl} keys with a TTL"
    );

    mixed_writes(&mut p, "live:", cross);
    ok(&mut p, &["SET", "live:big", &"l".repeat(5 << 20)]);
    expect(
        &mut p,
        &["APPEND", "before:big", "+"],
        format!(":{}\r\n", big.len() + 1),
    );
    expect(&mut p, &["WAIT", "1", "0"], ":1\r\n");
    assert_eq!(waitaof(&mut p, &["1", "1", "0"]), [1, 1]);
    // Reading them on the primary expires them there (and in the stream).
    for gone in ["live:short", "live:k8"] {
        wait_value(&mut p, gone, None);
    }
    let data = assert_converges(&primary, &replica, MIXED_DBS);
    for gone in ["before:short", "live:short", "live:k8", "live:k0"] {
        assert!(!data.contains_key(&(0, gone.as_bytes().to_vec())), "{gone}");
    }
    for db in [1, 6] {
        let keys: Vec<_> = data.keys().filter(|k| k.0 == db).collect();
        assert_eq!(keys.len(), if db == 1 { 1 } else { 2 }, "db {db}: {keys:?}");
    }
    let mut r = replica.raw();
    wait_value(&mut r, "live:short", None);
    assert_eq!(get(&mut r, "live:counter").as_deref(), Some("104"));
    ok(&mut r, &["SELECT", "2"]);
    assert_eq!(get(&mut r, "live:three").as_deref(), Some("3"));
    assert_eq!(get(&mut r, "live:two"), None);

    // FLUSHALL empties every database on both.
    ok(&mut p, &["FLUSHALL"]);
    ok(&mut p, &["SET", "after-flushall", "1"]);
    expect(&mut p, &["WAIT", "1", "0"], ":1\r\n");
    let data = assert_converges(&primary, &replica, MIXED_DBS);
    assert_eq!(data.len(), 1, "{data:?}");
}

/// See [`shard_counts`].
#[test]
fn three_shard_primary_one_shard_replica() {
    shard_counts(3, 1);
}

/// See [`shard_counts`].
#[test]
fn one_shard_primary_three_shard_replica() {
    shard_counts(1, 3);
}

// ------------------------------------------------------------------------------------------
// Transactions stay whole on the replica
// ------------------------------------------------------------------------------------------

/// Writes every key of `keys` to `round` in one MULTI/EXEC (even rounds) or one MSET.
fn write_round(raw: &mut Raw, keys: &[String], round: usize) {
    let value = round.to_string();
    if round.is_multiple_of(2) {
        let mut pipeline = resp(&[b"MULTI"]);
        for k in keys {
            pipeline.extend(resp(&[b"SET", k.as_bytes(), value.as_bytes()]));
        }
        pipeline.extend(resp(&[b"EXEC"]));
        raw.send(&pipeline);
        assert_eq!(raw.reply(), OK);
        for _ in keys {
            assert_eq!(raw.reply(), QUEUED);
        }
        let exec = raw.reply();
        assert_eq!(elements(&exec).len(), keys.len(), "{}", text(&exec));
    } else {
        let mut mset = vec!["MSET".to_string()];
        for k in keys {
            mset.push(k.clone());
            mset.push(value.clone());
        }
        ok(raw, &strs(&mset));
    }
}

/// Keys on every shard of a `a`-shard and of a `b`-shard server.
fn keys_on_every_shard(a: usize, b: usize) -> Vec<String> {
    let mut keys: Vec<String> = (0..a)
        .map(|s| key_on(s, a, &format!("a{s}-")))
        .chain((0..b).map(|s| key_on(s, b, &format!("b{s}-"))))
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Reads `keys` with MGET until `stop`; returns how many reads saw them differ, and the first
/// such read.
fn read_together(mut raw: Raw, keys: &[String], stop: &AtomicBool) -> (usize, usize, String) {
    let mut mget = vec!["MGET"];
    mget.extend(keys.iter().map(String::as_str));
    let (mut reads, mut torn, mut first) = (0, 0, String::new());
    while !stop.load(Ordering::Acquire) {
        let values: Vec<Option<Vec<u8>>> =
            elements(&raw.cmd(&mget)).iter().map(|v| bulk(v)).collect();
        reads += 1;
        if values.windows(2).any(|w| w[0] != w[1]) {
            torn += 1;
            if first.is_empty() {
                first = format!(
                    "{:?}",
                    values
                        .iter()
                        .map(|v| v.as_deref().map(text))
                        .collect::<Vec<_>>()
                );
            }
        }
    }
    (reads, torn, first)
}

/// A reader of the replica never sees part of a primary's MULTI/EXEC or MSET.
fn transactions_stay_whole(primary_shards: usize, replica_shards: usize) {
    let primary = start_primary(primary_shards, &[]);
    let replica = start_replica(replica_shards, primary.port, &[]);
    let mut p = primary.raw();
    wait_online(&mut p, 1);
    let keys = keys_on_every_shard(primary_shards, replica_shards);

    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (raw, keys, stop) = (replica.raw(), keys.clone(), Arc::clone(&stop));
        std::thread::spawn(move || read_together(raw, &keys, &stop))
    };
    for round in 0..3000 {
        write_round(&mut p, &keys, round);
    }
    expect(&mut p, &["WAIT", "1", "0"], ":1\r\n");
    stop.store(true, Ordering::Release);
    let (reads, torn, first) = reader.join().expect("the reader panicked");
    assert_eq!(
        torn, 0,
        "{torn} of {reads} reads of the replica saw part of a transaction, first {first}"
    );
    assert_converges(&primary, &replica, 1);
}

/// See [`transactions_stay_whole`].
#[test]
fn transactions_stay_whole_on_a_replica_with_more_shards() {
    transactions_stay_whole(1, 3);
}

/// See [`transactions_stay_whole`].
#[test]
fn transactions_stay_whole_on_a_replica_with_other_shards() {
    transactions_stay_whole(2, 3);
}

/// See [`transactions_stay_whole`].
#[test]
fn transactions_stay_whole_on_a_replica_with_fewer_shards() {
    transactions_stay_whole(3, 1);
}

/// Rounds the cut test's writer pipelines at a time: the replica falls behind, so a cut finds
/// it applying.
const PIPELINED_ROUNDS: usize = 20;
/// How far the cut test's writer lets the replica fall behind, in rounds (roughly).
const LAG_ROUNDS: usize = 2000;
/// Keys of their own each round of the cut test writes (besides the shared ones).
const OWN_KEYS: usize = 4;

/// Pipelines rounds `first..first + PIPELINED_ROUNDS`: each sets `shared` to the round and
/// `OWN_KEYS` keys of its own, in one MSET (odd rounds) or one MULTI/EXEC that also counts
/// `counters` up (even rounds).
fn write_rounds(raw: &mut Raw, shared: &[String], counters: &[String], first: usize) {
    let mut pipeline = Vec::new();
    let mut replies = Vec::new();
    for round in first..first + PIPELINED_ROUNDS {
        let value = round.to_string();
        let own: Vec<String> = (0..OWN_KEYS).map(|i| format!("r{round}-{i}")).collect();
        let keys: Vec<&String> = shared.iter().chain(&own).collect();
        if round.is_multiple_of(2) {
            pipeline.extend(resp(&[b"MULTI"]));
            replies.push(text(OK));
            for k in &keys {
                pipeline.extend(resp(&[b"SET", k.as_bytes(), value.as_bytes()]));
                replies.push(text(QUEUED));
            }
            for c in counters {
                pipeline.extend(resp(&[b"INCR", c.as_bytes()]));
                replies.push(text(QUEUED));
            }
            pipeline.extend(resp(&[b"EXEC"]));
            replies.push(format!("*{}", keys.len() + counters.len()));
        } else {
            let mut mset: Vec<&[u8]> = vec![b"MSET"];
            for k in &keys {
                mset.push(k.as_bytes());
                mset.push(value.as_bytes());
            }
            pipeline.extend(resp(&mset));
            replies.push(text(OK));
        }
    }
    raw.send(&pipeline);
    for expected in replies {
        let got = text(&raw.reply());
        assert!(got.starts_with(&expected), "{got} (expected {expected})");
    }
}

/// Cut again and again while transactions stream and the replica lags: each cut resumes with
/// a partial resync, readers of the replica never see part of a transaction, and the data
/// converges (nothing lost, nothing applied twice).
#[test]
fn transactions_stay_whole_across_link_cuts() {
    // A backlog that outlasts every cut, however far behind the replica is.
    let primary = start_primary(2, &["--repl-backlog-size", "256mb"]);
    let proxy = Proxy::start(primary.port);
    let replica = start_replica(3, proxy.port, &[]);
    let mut p = primary.raw();
    let mut r = replica.raw();
    wait_online(&mut p, 1);
    let shared = keys_on_every_shard(2, 3);
    let counters: Vec<String> = (0..3).map(|s| key_on(s, 3, "counter-")).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (mut raw, shared, counters) = (primary.raw(), shared.clone(), counters.clone());
        let (stop, rounds) = (Arc::clone(&stop), Arc::clone(&rounds));
        std::thread::spawn(move || {
            let mut round = 0;
            while !stop.load(Ordering::Acquire) {
                write_rounds(&mut raw, &shared, &counters, round);
                round += PIPELINED_ROUNDS;
                rounds.store(round, Ordering::Release);
                // The replica may lag, but not without bound.
                if round % (LAG_ROUNDS) == 0 {
                    assert!(int(&raw.cmd(&["WAIT", "1", "1000"])) >= 0);
                }
            }
            raw
        })
    };
    let reader = {
        let (raw, shared, stop) = (replica.raw(), shared.clone(), Arc::clone(&stop));
        std::thread::spawn(move || read_together(raw, &shared, &stop))
    };
    let more_rounds = |n: usize| {
        let from = rounds.load(Ordering::Acquire);
        assert!(
            eventually(WITHIN, || rounds.load(Ordering::Acquire) >= from + n),
            "the writer stalled"
        );
    };
    const CUTS: usize = 4;
    for _ in 0..CUTS {
        more_rounds(500);
        proxy.cut();
        wait_link(&replica, "down");
        more_rounds(200);
        proxy.restore();
        wait_link(&replica, "up");
    }
    more_rounds(200);
    stop.store(true, Ordering::Release);
    let mut writer = writer.join().expect("the writer panicked");
    assert!(
        eventually(WITHIN, || writer.cmd(&["WAIT", "1", "1000"]) == b":1\r\n"),
        "the replica did not catch up:\n{}",
        replication(&mut r)
    );
    let (reads, torn, first) = reader.join().expect("the reader panicked");
    // Both checks, so that a failure shows everything that went wrong.
    let mut p = primary.raw();
    let (on_primary, on_replica) = (dump(&mut p, 1), dump(&mut r, 1));
    assert!(
        torn == 0 && on_primary == on_replica,
        "{torn} of {reads} reads of the replica saw part of a transaction (first {first}); \
         differences after the writes ({} keys on the primary):\n{}\nreplica log \
         warnings:\n{}",
        on_primary.len(),
        diff(&on_primary, &on_replica),
        warnings(&replica)
    );
    assert_syncs(
        &primary,
        &replica,
        CUTS,
        1,
        "every cut resumes from the backlog",
    );
}

// ------------------------------------------------------------------------------------------
// A replica without a log
// ------------------------------------------------------------------------------------------

/// A replica with `appendonly no` counts for WAIT but never for WAITAOF.
#[test]
fn a_replica_without_a_log_acknowledges_receipt_but_never_durability() {
    let primary = start_primary(2, &["--appendfsync", "always"]);
    let replica = Server::start(
        1,
        &strs(&replica_args(primary.port, &["--appendonly", "no"])),
    );
    let mut p = primary.raw();
    wait_online(&mut p, 1);
    ok(&mut p, &["SET", "k", "v"]);
    expect(&mut p, &["WAIT", "1", "0"], ":1\r\n");
    assert_eq!(get(&mut replica.raw(), "k").as_deref(), Some("v"));
    assert_eq!(waitaof(&mut p, &["0", "1", "200"]), [1, 0]);
    assert_eq!(waitaof(&mut p, &["1", "1", "200"]), [1, 0]);
    assert_eq!(waitaof(&mut p, &["1", "0", "0"]), [1, 0]);
    ok(&mut p, &["SET", "k", "w"]);
    expect(&mut p, &["WAIT", "1", "0"], ":1\r\n");
}

// ------------------------------------------------------------------------------------------
// masterauth
// ------------------------------------------------------------------------------------------

/// A primary with a password is followed by a replica with the right `masterauth` only.
#[test]
fn masterauth_lets_a_replica_follow_a_primary_with_a_password() {
    let primary = Server::start(2, &["--appendonly", "yes", "--requirepass", "secret"]);
    let mut p = primary.raw();
    ok(&mut p, &["AUTH", "secret"]);
    wait_logs_open(&primary, &mut p, 2);
    ok(&mut p, &["SET", "k", "v"]);

    let with = start_replica(1, primary.port, &["--masterauth", "secret"]);
    let without = start_replica(1, primary.port, &[]);
    let mut w = with.raw();
    let mut wo = without.raw();
    wait_link(&with, "up");
    wait_value(&mut w, "k", Some("v"));
    wait_online(&mut p, 1);

    // Without the password the link stays down: the primary refused it.
    assert!(
        eventually(WITHIN, || without.log_text().contains("set masterauth")),
        "the replica without masterauth does not say why it cannot follow:\n{}",
        without.log_text()
    );
    let down = replication(&mut wo);
    assert_eq!(
        field(&down, "master_link_status").as_deref(),
        Some("down"),
        "{down}"
    );
    assert_eq!(get(&mut wo, "k"), None);
    // A wrong one is refused too.
    ok(&mut wo, &["CONFIG", "SET", "masterauth", "wrong"]);
    assert!(
        eventually(WITHIN, || without.log_text().contains("AUTH:")),
        "the replica with a wrong masterauth does not say why it cannot follow:\n{}",
        without.log_text()
    );
    assert_eq!(
        field(&replication(&mut wo), "master_link_status").as_deref(),
        Some("down")
    );
    // The right one, set at run time, lets it follow.
    ok(&mut wo, &["CONFIG", "SET", "masterauth", "secret"]);
    wait_link(&without, "up");
    wait_value(&mut wo, "k", Some("v"));
    wait_online(&mut p, 2);
    ok(&mut p, &["SET", "k", "v2"]);
    expect(&mut p, &["WAIT", "2", "0"], ":2\r\n");
}

// ------------------------------------------------------------------------------------------
// A primary without a log
// ------------------------------------------------------------------------------------------

/// A primary with `appendonly no` (the default) serves a replica: a full sync of the data it
/// holds (TTLs included), then the stream.
#[test]
fn a_primary_without_a_log_serves_a_replica() {
    let mut primary = Server::start(2, &[]);
    let mut p = primary.raw();
    ok(&mut p, &["MSET", "a", "1", "b", "2"]);
    ok(&mut p, &["SET", "t", "x", "EX", "1000"]);
    let replica = Server::start(1, &strs(&replica_args(primary.port, &[])));
    let mut r = replica.raw();
    let mut last = String::new();
    let up = eventually(WITHIN, || {
        last = replication(&mut r);
        field(&last, "master_link_status").as_deref() == Some("up") || !primary.is_running()
    });
    assert!(
        primary.is_running(),
        "the primary died at the replica's sync; its log:\n{}",
        primary.log_text()
    );
    assert!(up, "the replica's link never came up:\n{last}");
    wait_value(&mut r, "b", Some("2"));
    ok(&mut p, &["SET", "c", "3"]);
    expect(&mut p, &["WAIT", "1", "0"], ":1\r\n");
    assert_converges(&primary, &replica, 1);
}

// ------------------------------------------------------------------------------------------
// The replica's connection as a client of the primary
// ------------------------------------------------------------------------------------------

/// CLIENT LIST, CLIENT KILL and INFO clients tell a replica's link from normal clients as
/// Valkey does; a killed link comes back with a partial resync.
#[test]
fn client_commands_know_a_replica_link() {
    let primary = start_primary(2, &[]);
    let _replica = start_replica(1, primary.port, &[]);
    let mut p = primary.raw();
    wait_online(&mut p, 1);
    let list = |raw: &mut Raw, kind: &str| -> Vec<String> {
        let reply = bulk(&raw.cmd(&["CLIENT", "LIST", "TYPE", kind])).expect("CLIENT LIST");
        text(&reply).lines().map(str::to_string).collect()
    };

    // Connections of the start-up checks may take a moment to be gone.
    let mut problems = Vec::new();
    eventually(WITHIN, || {
        problems.clear();
        let replicas = list(&mut p, "replica");
        if replicas.len() != 1 || !replicas[0].contains(" flags=S ") {
            problems.push(format!("CLIENT LIST TYPE replica: {replicas:?}"));
        }
        let normal = list(&mut p, "normal");
        if normal.len() != 1 || normal[0].contains(" flags=S ") {
            problems.push(format!("CLIENT LIST TYPE normal: {normal:?}"));
        }
        let clients = field_u64(&info(&mut p, "clients"), "connected_clients");
        if clients != 1 {
            problems.push(format!(
                "INFO connected_clients is {clients}; Valkey leaves replicas out (1)"
            ));
        }
        problems.is_empty()
    });
    let killed = p.cmd_text(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]);
    if killed != ":0\r\n" {
        problems.push(format!(
            "CLIENT KILL TYPE normal SKIPME yes killed {killed:?} (the replica's link)"
        ));
    }
    wait_online(&mut p, 1);
    let killed = p.cmd_text(&["CLIENT", "KILL", "TYPE", "replica"]);
    if killed != ":1\r\n" {
        problems.push(format!("CLIENT KILL TYPE replica killed {killed:?}"));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(
        eventually(WITHIN, || log_count(&primary, PARTIAL) == 1),
        "the killed link did not come back with a partial resync:\n{}",
        primary.log_text()
    );
    wait_online(&mut p, 1);
}

// ------------------------------------------------------------------------------------------
// REPLCONF, PSYNC and SYNC from a plain client
// ------------------------------------------------------------------------------------------

/// REPLCONF's replies and errors, and PSYNC/SYNC refused, for a client that is not a corekv
/// replica.
#[test]
fn replconf_psync_and_sync_from_a_plain_client() {
    let primary = start_primary(1, &[]);
    let mut c = primary.raw();
    ok(&mut c, &["REPLCONF"]);
    expect(
        &mut c,
        &["REPLCONF", "listening-port"],
        "-ERR syntax error\r\n",
    );
    expect(
        &mut c,
        &["REPLCONF", "listening-port", "6380", "capa"],
        "-ERR syntax error\r\n",
    );
    expect(
        &mut c,
        &["REPLCONF", "foo", "bar"],
        "-ERR Unrecognized REPLCONF option: foo\r\n",
    );
    ok(
        &mut c,
        &["REPLCONF", "listening-port", "6380", "capa", "eof"],
    );
    ok(&mut c, &["REPLCONF", "capa", "psync2"]);
    // ACK and GETACK from a plain client: no reply at all.
    c.send(&resp(&[b"REPLCONF", b"ACK", b"5"]));
    c.send(&resp(&[b"REPLCONF", b"GETACK", b"*"]));
    expect(&mut c, &["PING"], "+PONG\r\n");

    for command in [&["PSYNC", "?", "-1"][..], &["SYNC"]] {
        let reply = text(&c.cmd(command));
        assert!(
            reply.starts_with("-ERR ") && reply.contains("only a corekv replica can follow it"),
            "{command:?}: {reply}"
        );
    }
    // The connection is still usable.
    ok(&mut c, &["SET", "k", "v"]);
    assert_eq!(get(&mut c, "k").as_deref(), Some("v"));
}
