//! Starts the real `corekv-server` binary for integration tests and talks to it.
//!
//! Each server gets a free port and its own temporary data directory, and is killed when the
//! [`Server`] is dropped. Waits use polling deadlines, never fixed sleeps.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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

fn free_port() -> u16 {
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
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
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
            let n = self.stream.read(&mut buf).expect("read a reply");
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
