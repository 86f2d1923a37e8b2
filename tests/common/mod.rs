//! Starts the real `corekv-server` binary for integration tests and talks to it.
//!
//! Each server gets a free port and its own temporary data directory, and is killed when the
//! [`Server`] is dropped. Waits use polling deadlines, never fixed sleeps.
//!
//! Also the reply, INFO and key helpers that the durability and rewrite tests share.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to start answering.
const START_DEADLINE: Duration = Duration::from_secs(20);
/// Start attempts when the chosen port turns out to be taken by a parallel test.
const START_ATTEMPTS: usize = 5;

/// A running server.
pub struct Server {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
}

/// A port that was free a moment ago (a parallel test may take it before it is used).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

impl Server {
    /// Starts a server with `shards` shards and extra `--directive value` arguments.
    pub fn start(shards: usize, extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("temporary directory");
        Self::start_in(dir, shards, extra)
    }

    /// Starts a server whose data directory is `dir`.
    pub fn start_in(dir: tempfile::TempDir, shards: usize, extra: &[&str]) -> Server {
        let mut last_log = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let log = dir.path().join(format!("server-{port}.log"));
            let mut args: Vec<String> = vec![
                "--port".into(),
                port.to_string(),
                "--dir".into(),
                dir.path().display().to_string(),
                "--shards".into(),
                shards.to_string(),
                "--enable-debug-command".into(),
                "local".into(),
                "--logfile".into(),
                log.display().to_string(),
            ];
            args.extend(extra.iter().map(|s| s.to_string()));
            let mut child = Command::new(env!("CARGO_BIN_EXE_corekv-server"))
                .args(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn corekv-server");
            if wait_ready(&mut child, port) {
                return Server {
                    child,
                    port,
                    dir,
                    log,
                };
            }
            last_log = std::fs::read_to_string(&log).unwrap_or_default();
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("corekv-server did not start; last log:\n{last_log}");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A RESP2 connection through the `redis` crate.
    pub fn client(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .expect("client")
            .get_connection()
            .expect("connect")
    }

    /// A RESP3 connection through the `redis` crate.
    pub fn client_resp3(&self) -> redis::Connection {
        redis::Client::open(format!("{}?protocol=resp3", self.url()))
            .expect("client")
            .get_connection()
            .expect("connect")
    }

    /// A raw socket speaking RESP byte for byte.
    pub fn raw(&self) -> Raw {
        Raw::connect(self.port)
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the process to exit on its own; its exit status if it did.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the server at `port` answers PING, or the process exits.
fn wait_ready(child: &mut Child, port: u16) -> bool {
    let deadline = Instant::now() + START_DEADLINE;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if let Ok(mut conn) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            if conn.write_all(b"PING\r\n").is_ok() {
                let mut buf = [0u8; 16];
                if let Ok(n) = conn.read(&mut buf) {
                    // A server started with a password answers NOAUTH: it is up all the same.
                    if &buf[..n] == b"+PONG\r\n" || buf[..n].starts_with(b"-NOAUTH") {
                        return true;
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Encodes a command as a RESP multibulk request.
pub fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    corekv::protocol::encode_request(&mut out, args);
    out
}

/// A raw RESP connection for byte-exact assertions.
pub struct Raw {
    pub stream: TcpStream,
    pending: Vec<u8>,
}

impl Raw {
    pub fn connect(port: u16) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Raw {
            stream,
            pending: Vec::new(),
        }
    }

    /// Sends bytes as they are.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Sends one command and returns its complete reply.
    pub fn cmd(&mut self, args: &[&str]) -> Vec<u8> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.send(&resp(&args));
        self.reply()
    }

    /// Like [`Raw::cmd`], the reply as text.
    pub fn cmd_text(&mut self, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.cmd(args)).into_owned()
    }

    /// Reads one complete reply.
    pub fn reply(&mut self) -> Vec<u8> {
        loop {
            if let Some(len) = corekv::protocol::reply::element_len(&self.pending) {
                return self.pending.drain(..len).collect();
            }
            let mut buf = [0u8; 65536];
            let n = match self.stream.read(&mut buf) {
                // A read with a socket timeout set can be interrupted without a handler.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                read => read.expect("read a reply"),
            };
            assert!(n > 0, "connection closed while waiting for a reply");
            self.pending.extend_from_slice(&buf[..n]);
        }
    }

    /// True if the server closes the connection (reads to end of stream) within the deadline.
    pub fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let _ = self
            .stream
            .set_read_timeout(Some(Duration::from_millis(100)));
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => {}
            }
        }
        false
    }
}

/// Polls `check` until it holds or `within` passes.
pub fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    check()
}

/// Waits up to `within` for `child` to exit by itself; otherwise kills and reaps it and returns
/// `None`. For runs of the binary that should end on their own (a refused start, `--version`).
pub fn wait_or_kill(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ------------------------------------------------------------------------------------------
// Replies
// ------------------------------------------------------------------------------------------

pub const OK: &[u8] = b"+OK\r\n";
pub const QUEUED: &[u8] = b"+QUEUED\r\n";
/// WAITAOF's answer when the local fsync happened and (there being no replicas) none acked.
pub const ACK_1_0: &[u8] = b"*2\r\n:1\r\n:0\r\n";
/// WAITAOF's answer when nothing had to be (or could be) waited for.
pub const ACK_0_0: &[u8] = b"*2\r\n:0\r\n:0\r\n";
/// Valkey's error for WAITAOF with numlocal > 0 while the log is off.
pub const AOF_DISABLED: &str =
    "-ERR WAITAOF cannot be used when numlocal is set but appendonly is disabled.\r\n";

/// Reply bytes as text, for assertions whose failure output should be readable.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The payload of a bulk-string reply; `None` for a null.
pub fn bulk(reply: &[u8]) -> Option<Vec<u8>> {
    if reply == b"$-1\r\n" || reply == b"_\r\n" {
        return None;
    }
    assert!(reply.starts_with(b"$"), "not a bulk reply: {}", text(reply));
    let nl = reply.iter().position(|&b| b == b'\n').expect("header line");
    let len: usize = text(&reply[1..nl - 1]).parse().expect("bulk length");
    Some(reply[nl + 1..nl + 1 + len].to_vec())
}

/// The value of an integer reply.
pub fn int(reply: &[u8]) -> i64 {
    assert!(
        reply.starts_with(b":"),
        "not an integer reply: {}",
        text(reply)
    );
    text(&reply[1..reply.len() - 2]).parse().expect("integer")
}

/// Sends a command and asserts its exact reply (bytes or text).
#[track_caller]
pub fn expect(raw: &mut Raw, args: &[&str], reply: impl AsRef<[u8]>) {
    let got = raw.cmd(args);
    assert_eq!(
        text(&got),
        text(reply.as_ref()),
        "reply to {args:?} (left: got, right: expected)"
    );
}

/// Sends a command expected to answer `+OK`.
#[track_caller]
pub fn ok(raw: &mut Raw, args: &[&str]) {
    expect(raw, args, OK);
}

/// True if nothing arrives on `raw` for a little while (the command is blocked). The read
/// timeout is put back as it was, so a later [`Raw::reply`] waits as long as before.
pub fn no_reply_yet(raw: &mut Raw) -> bool {
    let before = raw.stream.read_timeout().expect("read timeout");
    raw.stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    let silent = match raw.stream.read(&mut buf) {
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    };
    raw.stream.set_read_timeout(before).expect("timeout");
    silent
}

/// A new connection blocked in `WAITAOF 1 0 0`: shard 0's commit loop is stalled (through
/// `control`) before the connection writes `k0`, a key on shard 0, so its write never becomes
/// durable until `DEBUG FAULT 0 resume`.
#[track_caller]
pub fn blocked_waiter(server: &Server, control: &mut Raw, k0: &str) -> Raw {
    let mut waiter = server.raw();
    ok(control, &["DEBUG", "FAULT", "0", "stall"]);
    ok(&mut waiter, &["SET", k0, "1"]);
    waiter.send(&resp(&[b"WAITAOF", b"1", b"0", b"0"]));
    assert!(
        no_reply_yet(&mut waiter),
        "WAITAOF 1 0 0 on a stalled shard did not block"
    );
    waiter
}

// ------------------------------------------------------------------------------------------
// Crashes and restarts with the log on
// ------------------------------------------------------------------------------------------

/// How long every shard may take to open its log once the server answers: a shard replaying a
/// long log opens it last.
const LOGS_OPEN_DEADLINE: Duration = Duration::from_secs(30);

/// `kill -9` the server (no chance to flush anything) and wait until it is gone.
pub fn kill9(server: &mut Server) {
    let status = Command::new("kill")
        .args(["-9", &server.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -9 failed");
    assert!(
        server.wait_exit(Duration::from_secs(10)).is_some(),
        "the server did not die after kill -9"
    );
}

/// `kill -9` the server and keep its data directory for a restart.
pub fn crash(mut server: Server) -> tempfile::TempDir {
    kill9(&mut server);
    std::mem::replace(&mut server.dir, tempfile::tempdir().expect("tempdir"))
}

/// Waits until INFO lists a log for every shard. The server answers before every shard has
/// loaded; writes made earlier race the start-up (tested on purpose by
/// `writes_during_start_up_are_logged_before_they_are_acknowledged`).
pub fn settle(server: &Server, shards: usize) {
    let mut raw = server.raw();
    assert!(
        eventually(LOGS_OPEN_DEADLINE, || logs(&mut raw).len() == shards),
        "not every shard opened its log"
    );
}

/// Starts a server and waits until every shard's log is open (see [`settle`]).
pub fn start(shards: usize, args: &[&str]) -> Server {
    let server = Server::start(shards, args);
    settle(&server, shards);
    server
}

/// Restarts on `dir` and waits until every shard's log is open (see [`settle`]).
pub fn restart(dir: tempfile::TempDir, shards: usize, args: &[&str]) -> Server {
    let server = Server::start_in(dir, shards, args);
    settle(&server, shards);
    server
}

/// [`crash`], then [`restart`] on what the crash left.
pub fn crash_and_restart(server: Server, shards: usize, args: &[&str]) -> Server {
    restart(crash(server), shards, args)
}

// ------------------------------------------------------------------------------------------
// INFO
// ------------------------------------------------------------------------------------------

/// One shard's `aof_shard<i>:` line of `INFO persistence`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShardLog {
    pub durable: u64,
    pub end: u64,
    pub write_errors: u64,
    pub fsyncs: u64,
    /// Writes per fdatasync: p50, p99, max.
    pub batch: (u64, u64, u64),
}

/// An `INFO` section as text.
pub fn info(raw: &mut Raw, section: &str) -> String {
    text(&bulk(&raw.cmd(&["INFO", section])).expect("INFO text"))
}

/// `INFO persistence` as text.
pub fn persistence(raw: &mut Raw) -> String {
    info(raw, "persistence")
}

/// The value of `name:` in INFO text.
pub fn field(info: &str, name: &str) -> Option<String> {
    info.lines().find_map(|l| {
        l.strip_prefix(&format!("{name}:"))
            .map(|v| v.trim().to_string())
    })
}

/// A numeric INFO field; panics with the whole INFO text if it is missing or not a number.
#[track_caller]
pub fn field_u64(info: &str, name: &str) -> u64 {
    field(info, name)
        .unwrap_or_else(|| panic!("INFO has no {name}:\n{info}"))
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not a number:\n{info}"))
}

/// The shards' logs in `INFO persistence`, by shard index; one entry per open log.
pub fn shard_logs(info: &str) -> Vec<ShardLog> {
    let mut out = std::collections::BTreeMap::new();
    for line in info.lines() {
        let Some(rest) = line.strip_prefix("aof_shard") else {
            continue;
        };
        let (index, fields) = rest.split_once(':').expect("aof_shard line");
        let mut log = ShardLog::default();
        for field in fields.split(',') {
            let Some((k, v)) = field.split_once('=') else {
                continue;
            };
            let v = v.trim();
            match k {
                "durable_offset" => log.durable = v.parse().expect("durable_offset"),
                "end_offset" => log.end = v.parse().expect("end_offset"),
                "write_errors" => log.write_errors = v.parse().expect("write_errors"),
                "fsyncs" => log.fsyncs = v.parse().expect("fsyncs"),
                "writes_per_fsync_p50" => log.batch.0 = v.parse().expect("batch p50"),
                "writes_per_fsync_p99" => log.batch.1 = v.parse().expect("batch p99"),
                "writes_per_fsync_max" => log.batch.2 = v.parse().expect("batch max"),
                _ => {}
            }
        }
        out.insert(index.parse::<usize>().expect("shard index"), log);
    }
    out.into_values().collect()
}

/// The shards' logs as INFO shows them now.
pub fn logs(raw: &mut Raw) -> Vec<ShardLog> {
    shard_logs(&persistence(raw))
}

// ------------------------------------------------------------------------------------------
// Keys and files
// ------------------------------------------------------------------------------------------

/// The shard of `shards` that owns `key`.
pub fn shard_of(key: &str, shards: usize) -> usize {
    corekv::shard::routing::SlotMap::new(shards).shard_of_key(key.as_bytes())
}

/// The first key `<prefix><n>` that lives on `shard` of `shards`.
pub fn key_on(shard: usize, shards: usize, prefix: &str) -> String {
    let map = corekv::shard::routing::SlotMap::new(shards);
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|k| map.shard_of_key(k.as_bytes()) == shard)
        .expect("a key")
}

/// The AOF directory under a data directory.
pub fn aof_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("appendonlydir")
}

// ------------------------------------------------------------------------------------------
// Arrays
// ------------------------------------------------------------------------------------------

/// The elements of an array reply, each as its own complete reply (read them with [`bulk`],
/// [`int`] or [`elements`]).
pub fn elements(reply: &[u8]) -> Vec<Vec<u8>> {
    assert!(
        reply.starts_with(b"*"),
        "not an array reply: {}",
        text(reply)
    );
    let nl = reply.iter().position(|&b| b == b'\n').expect("header line");
    let count: i64 = text(&reply[1..nl - 1]).parse().expect("array length");
    let mut at = nl + 1;
    let mut out = Vec::new();
    for _ in 0..count.max(0) {
        let len = corekv::protocol::reply::element_len(&reply[at..])
            .unwrap_or_else(|| panic!("array element cut short: {}", text(reply)));
        out.push(reply[at..at + len].to_vec());
        at += len;
    }
    out
}
