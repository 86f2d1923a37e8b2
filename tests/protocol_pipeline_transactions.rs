//! Protocol abuse, input/output limits, long pipelines, MULTI/EXEC/WATCH byte for byte, and
//! the cross-shard atomicity promise (no client ever observes half of an MSET, MULTI/EXEC,
//! RENAME or MSETNX whose keys live on different shards).
//!
//! Expected bytes are what Valkey 8.0.1 sends for the same requests. Waits are deadline
//! loops; nothing asserts on timing.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::{eventually, resp, Raw, Server};
use corekv::shard::routing::SlotMap;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Bytes as readable text for assertion messages.
fn show(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    if s.len() > 400 {
        format!("{:?}... ({} bytes)", &s[..400], b.len())
    } else {
        format!("{s:?}")
    }
}

macro_rules! assert_bytes {
    ($actual:expr, $expected:expr) => {
        match (&$actual, $expected) {
            (actual, expected) => {
                let actual: &[u8] = &actual[..];
                let expected: &[u8] = &expected[..];
                assert!(
                    actual == expected,
                    "reply mismatch\n  expected: {}\n    actual: {}",
                    show(expected),
                    show(actual)
                );
            }
        }
    };
    ($actual:expr, $expected:expr, $($ctx:tt)+) => {
        match (&$actual, $expected) {
            (actual, expected) => {
                let actual: &[u8] = &actual[..];
                let expected: &[u8] = &expected[..];
                assert!(
                    actual == expected,
                    "reply mismatch ({})\n  expected: {}\n    actual: {}",
                    format!($($ctx)+),
                    show(expected),
                    show(actual)
                );
            }
        }
    };
}

/// Sends one command given as byte arguments and returns its reply.
fn cmdb(raw: &mut Raw, args: &[&[u8]]) -> Vec<u8> {
    raw.send(&resp(args));
    raw.reply()
}

/// Reads everything the server sends until it closes the connection (EOF or reset).
/// `Err(bytes so far)` if the connection is still open when the deadline passes.
fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Result<Vec<u8>, Vec<u8>> {
    let deadline = Instant::now() + within;
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                return Ok(out)
            }
            Err(_) => {}
        }
    }
    Err(out)
}

/// Sends `request` on a fresh connection and asserts the server answers exactly `expected`
/// and then closes the connection.
fn assert_reply_then_close(server: &Server, request: &[u8], expected: &[u8], what: &str) {
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    // The server may close before taking all of a long bad request; the reply still counts.
    let _ = stream.write_all(request);
    match read_until_closed(&mut stream, Duration::from_secs(10)) {
        Ok(got) => assert_bytes!(got, expected, "{what}: request {}", show(request)),
        Err(got) => panic!(
            "{what}: server did not close the connection after request {}; received so far {} \
             (expected {} then close)",
            show(request),
            show(&got),
            show(expected)
        ),
    }
}

/// A key named `{prefix}:{n}` that lives on `shard` under `shards` shards.
fn key_on_shard(prefix: &str, shard: usize, shards: usize) -> String {
    let map = SlotMap::new(shards);
    (0..)
        .map(|n| format!("{prefix}:{n}"))
        .find(|k| map.shard_of_key(k.as_bytes()) == shard)
        .unwrap()
}

/// A field of `INFO <section>` as an integer.
fn info_field(con: &mut redis::Connection, section: &str, field: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg(section).query(con).expect("INFO");
    let prefix = format!("{field}:");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("INFO {section} has no {field}:\n{info}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("INFO {field} is not a number: {e}"))
}

/// Resident set size of a process in bytes, from /proc.
fn vm_rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .expect("VmRSS line")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .expect("VmRSS number");
    kb * 1024
}

/// The server still answers on a fresh connection.
fn assert_alive(server: &mut Server, what: &str) {
    assert!(server.is_running(), "{what}: the server process exited");
    let mut raw = server.raw();
    assert_bytes!(
        raw.cmd(&["PING"]),
        b"+PONG\r\n",
        "{what}: PING on a fresh connection"
    );
}

/// PINGs on a fresh connection, giving up after `within` or as soon as the server's resident
/// memory passes `rss_cap` (a wedged server that keeps allocating is stopped early, not left
/// to exhaust the machine).
fn ping_fresh(server: &Server, within: Duration, rss_cap: u64) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let mut s =
        TcpStream::connect(("127.0.0.1", server.port)).map_err(|e| format!("connect: {e}"))?;
    s.write_all(b"PING\r\n")
        .map_err(|e| format!("write PING: {e}"))?;
    s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        if got.as_slice() == b"+PONG\r\n" {
            return Ok(());
        }
        match s.read(&mut buf) {
            Ok(0) => return Err(format!("connection closed; got {}", show(&got))),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        let rss = vm_rss_bytes(server.pid());
        if rss > rss_cap {
            return Err(format!("no PONG yet and VmRSS is {rss} bytes and growing"));
        }
        if Instant::now() >= deadline {
            return Err(format!("no PONG within {within:?}; got {}", show(&got)));
        }
    }
}

/// Deterministic xorshift generator (reproducible failures).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Protocol abuse
// ---------------------------------------------------------------------------------------------

#[test]
fn protocol_errors_reply_exactly_then_close() {
    for shards in [1, 2] {
        let server = Server::start(shards, &[]);
        let cases: &[(&[u8], &[u8])] = &[
            (
                b"*abc\r\n",
                b"-ERR Protocol error: invalid multibulk length\r\n",
            ),
            (
                b"*2147483648\r\n",
                b"-ERR Protocol error: invalid multibulk length\r\n",
            ),
            (
                b"*1 \r\n",
                b"-ERR Protocol error: invalid multibulk length\r\n",
            ),
            (
                b"*1\r\n$536870913\r\n",
                b"-ERR Protocol error: invalid bulk length\r\n",
            ),
            (
                b"*1\r\n$abc\r\n",
                b"-ERR Protocol error: invalid bulk length\r\n",
            ),
            (
                b"*1\r\n$-1\r\n",
                b"-ERR Protocol error: invalid bulk length\r\n",
            ),
            (
                b"*1\r\nfoo\r\n",
                b"-ERR Protocol error: expected '$', got 'f'\r\n",
            ),
            (
                b"set \"abc\r\n",
                b"-ERR Protocol error: unbalanced quotes in request\r\n",
            ),
            (
                b"set 'abc\r\n",
                b"-ERR Protocol error: unbalanced quotes in request\r\n",
            ),
            (
                b"echo \"a\"b\r\n",
                b"-ERR Protocol error: unbalanced quotes in request\r\n",
            ),
        ];
        for (bad, err) in cases {
            // Alone on a fresh connection.
            assert_reply_then_close(&server, bad, err, &format!("{shards} shards, alone"));

            // After well-formed commands in the same write, and with more after it: the
            // earlier commands are answered first, nothing after the bad one runs.
            let key = format!("before-{}", show(bad).len());
            let mut request = resp(&[b"SET", key.as_bytes(), b"v"]);
            request.extend_from_slice(b"PING\r\n");
            request.extend_from_slice(&resp(&[b"GET", key.as_bytes()]));
            request.extend_from_slice(bad);
            request.extend_from_slice(&resp(&[b"SET", b"after-bad", b"x"]));
            let mut expected = b"+OK\r\n+PONG\r\n$1\r\nv\r\n".to_vec();
            expected.extend_from_slice(err);
            assert_reply_then_close(
                &server,
                &request,
                &expected,
                &format!("{shards} shards, pipelined"),
            );
            let mut raw = server.raw();
            assert_bytes!(
                raw.cmd(&["EXISTS", "after-bad"]),
                b":0\r\n",
                "{shards} shards: a command after a protocol error must not run ({})",
                show(bad)
            );
        }

        // 70000 bytes without a newline: too big inline / count strings.
        let long = vec![b'x'; 70000];
        assert_reply_then_close(
            &server,
            &long,
            b"-ERR Protocol error: too big inline request\r\n",
            "inline too big",
        );
        let mut mbulk = b"*".to_vec();
        mbulk.extend_from_slice(&[b'1'; 70000]);
        assert_reply_then_close(
            &server,
            &mbulk,
            b"-ERR Protocol error: too big mbulk count string\r\n",
            "mbulk count too big",
        );
        let mut bulk = b"*1\r\n$".to_vec();
        bulk.extend_from_slice(&[b'1'; 70000]);
        assert_reply_then_close(
            &server,
            &bulk,
            b"-ERR Protocol error: too big bulk count string\r\n",
            "bulk count too big",
        );
    }
}

/// Valkey 8 accepts a multibulk of 2,000,000 arguments from an authenticated client (only counts
/// above INT_MAX are invalid): `*2000000\r\n` gets no error, and the whole command runs.
#[test]
fn multibulk_of_two_million_arguments_is_accepted() {
    let server = Server::start(2, &[]);
    let count = 2_000_000usize;
    let mut request = format!("*{count}\r\n$3\r\nDEL\r\n").into_bytes();
    request.reserve((count - 1) * 7);
    for _ in 1..count {
        request.extend_from_slice(b"$1\r\nk\r\n");
    }
    let mut raw = server.raw();
    let mut writer = raw.stream.try_clone().expect("clone");
    let t = thread::spawn(move || {
        let _ = writer.write_all(&request);
    });
    let _ = raw.stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = [0u8; 256];
    let got = match raw.stream.read(&mut buf) {
        Ok(n) => buf[..n].to_vec(),
        Err(e) => format!("<read error {e}>").into_bytes(),
    };
    t.join().unwrap();
    assert_bytes!(
        got,
        b":0\r\n",
        "`*2000000` DEL k k k ...: Valkey 8 accepts multibulk counts up to INT_MAX"
    );
}

#[test]
fn huge_announced_lengths_do_not_allocate() {
    for shards in [1, 2] {
        let mut server = Server::start(shards, &[]);
        let mut con = server.client();
        let base_used = info_field(&mut con, "memory", "used_memory");
        let headers: [&[u8]; 3] = [
            b"*1048576\r\n",
            b"*1\r\n$536870912\r\n",
            b"*1048576\r\n$536870912\r\n",
        ];
        let mut conns = Vec::new();
        for i in 0..20 {
            let mut s = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
            s.write_all(headers[i % 3]).expect("write header");
            conns.push(s);
        }
        assert!(
            eventually(Duration::from_secs(10), || {
                info_field(&mut con, "clients", "connected_clients") >= 21
            }),
            "the 20 connections were never all accepted"
        );
        // Sample for a while: the headers have been read by now or soon will be.
        let limit = 200 * 1024 * 1024;
        let deadline = Instant::now() + Duration::from_millis(1500);
        let mut max_used = 0;
        let mut max_rss = 0;
        while Instant::now() < deadline {
            max_used = max_used.max(info_field(&mut con, "memory", "used_memory"));
            max_rss = max_rss.max(vm_rss_bytes(server.pid()));
            assert!(
                max_used < limit && max_rss < limit,
                "{shards} shards: announced-but-unsent lengths made the server allocate: \
                 used_memory {max_used} (was {base_used}), VmRSS {max_rss}"
            );
            thread::sleep(Duration::from_millis(50));
        }
        // The connections are still open (the lengths are legal) and waiting for data.
        for s in &mut conns {
            s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
            let mut b = [0u8; 64];
            match s.read(&mut b) {
                Ok(0) => panic!("{shards} shards: a legal announced length closed the connection"),
                Ok(n) => panic!(
                    "{shards} shards: unexpected reply to a legal header: {}",
                    show(&b[..n])
                ),
                Err(_) => {}
            }
        }
        drop(conns);
        assert!(
            eventually(Duration::from_secs(10), || {
                info_field(&mut con, "clients", "connected_clients") == 1
            }),
            "{shards} shards: closed connections were not cleaned up"
        );
        assert_alive(&mut server, "after huge announced lengths");
    }
}

#[test]
fn garbage_and_half_commands_never_crash() {
    for shards in [1, 2] {
        let mut server = Server::start(shards, &[]);
        let mut con = server.client();
        let _: () = redis::cmd("SET")
            .arg("survivor")
            .arg("yes")
            .query(&mut con)
            .unwrap();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ shards as u64);

        // Random binary garbage of many sizes, including some that start like RESP.
        for i in 0..150 {
            let len = match i % 5 {
                0 => 1 + rng.below(16) as usize,
                1 => 1 + rng.below(512) as usize,
                2 => 1 + rng.below(8192) as usize,
                3 => 60_000 + rng.below(20_000) as usize,
                _ => 1 + rng.below(100) as usize,
            };
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            match i % 7 {
                0 => bytes.insert(0, b'*'),
                1 => bytes
                    .splice(0..0, b"*3\r\n$".iter().copied())
                    .for_each(drop),
                2 => bytes
                    .splice(0..0, b"*2\r\n$3\r\nGET\r\n$".iter().copied())
                    .for_each(drop),
                _ => {}
            }
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", server.port)) {
                let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
                let _ = s.write_all(&bytes);
                if i % 3 == 0 {
                    // Read whatever comes back (maybe nothing) before closing.
                    let _ = s.set_read_timeout(Some(Duration::from_millis(5)));
                    let mut b = [0u8; 1024];
                    let _ = s.read(&mut b);
                }
            }
            // Checked after every input, so a failure names the input that caused it.
            if let Err(e) = ping_fresh(&server, Duration::from_secs(5), 1 << 30) {
                panic!(
                    "{shards} shards: after garbage input #{i} ({} bytes, starting {}) the server \
                     no longer answers PING on a fresh connection: {e}",
                    bytes.len(),
                    show(&bytes[..bytes.len().min(64)])
                );
            }
        }
        assert_alive(&mut server, "after random garbage");

        // Half a command, then disconnect, many times, cut at every position.
        let full = [
            resp(&[b"SET", b"half", b"value-that-is-long-enough"]),
            resp(&[b"MSET", b"h1", b"a", b"h2", b"b", b"h3", b"c"]),
            b"SET inline 'quoted value'\r\n".to_vec(),
        ];
        for _round in 0..2 {
            for req in &full {
                for cut in 1..req.len() {
                    let mut s = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
                    s.write_all(&req[..cut]).expect("write");
                }
            }
        }
        assert_alive(&mut server, "after half commands");
        let mut raw = server.raw();
        assert_bytes!(raw.cmd(&["GET", "survivor"]), b"$3\r\nyes\r\n");
        assert_bytes!(
            raw.cmd(&["EXISTS", "half", "h1", "h2", "h3", "inline"]),
            b":0\r\n",
            "a half-sent command must never run"
        );
        drop(raw);
        assert!(
            eventually(Duration::from_secs(10), || {
                info_field(&mut con, "clients", "connected_clients") == 1
            }),
            "{shards} shards: abandoned connections were not cleaned up"
        );
    }
}

/// A NUL byte inside an inline command. Valkey scans inline requests as C strings, so it
/// simply keeps waiting for that connection's newline; what matters here is that the server
/// stays responsive and bounded for everyone else.
#[test]
fn nul_byte_in_inline_command_does_not_wedge_the_server() {
    for shards in [1, 2] {
        let mut server = Server::start(shards, &[]);
        for input in [&b"get a\x00b\r\n"[..], b"\x00\n", b"a\x00b\nPING\r\n"] {
            let mut s = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
            s.write_all(input).expect("write");
            if let Err(e) = ping_fresh(&server, Duration::from_secs(5), 1 << 30) {
                panic!(
                    "{shards} shards: after inline input {} on another connection, the server \
                     no longer answers PING: {e}",
                    show(input)
                );
            }
            drop(s);
        }
        assert_alive(&mut server, "after NUL bytes in inline commands");
    }
}

#[test]
fn unauthenticated_limits() {
    for shards in [1, 2] {
        // The harness waits for PING to answer +PONG, so the password is set once running.
        let server = Server::start(shards, &[]);
        let mut admin = server.raw();
        assert_bytes!(
            admin.cmd(&["CONFIG", "SET", "requirepass", "x"]),
            b"+OK\r\n"
        );
        assert_reply_then_close(
            &server,
            b"*11\r\n",
            b"-ERR Protocol error: unauthenticated multibulk length\r\n",
            "unauth *11",
        );
        assert_reply_then_close(
            &server,
            b"*100\r\n",
            b"-ERR Protocol error: unauthenticated multibulk length\r\n",
            "unauth *100",
        );
        assert_reply_then_close(
            &server,
            b"*1\r\n$16385\r\n",
            b"-ERR Protocol error: unauthenticated bulk length\r\n",
            "unauth bulk 16385",
        );
        assert_reply_then_close(
            &server,
            b"*2\r\n$4\r\nECHO\r\n$20000\r\n",
            b"-ERR Protocol error: unauthenticated bulk length\r\n",
            "unauth bulk 20000",
        );

        // The limits themselves are allowed: 10 arguments, a 16384-byte bulk.
        let mut raw = server.raw();
        let mut ten: Vec<&[u8]> = vec![b"a"; 10];
        ten[0] = b"ECHO";
        assert_bytes!(
            cmdb(&mut raw, &ten),
            b"-ERR wrong number of arguments for 'echo' command\r\n",
            "*10 before AUTH is parsed (arity error wins over NOAUTH)"
        );
        let big = vec![b'z'; 16384];
        assert_bytes!(
            cmdb(&mut raw, &[b"ECHO", &big]),
            b"-NOAUTH Authentication required.\r\n",
            "16384-byte bulk before AUTH is parsed"
        );
        assert_bytes!(raw.cmd(&["AUTH", "x"]), b"+OK\r\n");
        // After AUTH the limits are gone.
        let big = vec![b'z'; 20000];
        let mut expected = b"$20000\r\n".to_vec();
        expected.extend_from_slice(&big);
        expected.extend_from_slice(b"\r\n");
        assert_bytes!(cmdb(&mut raw, &[b"ECHO", &big]), &expected);
        let many: Vec<Vec<u8>> = (0..20).map(|i| format!("k{i}").into_bytes()).collect();
        let mut args: Vec<&[u8]> = vec![b"EXISTS"];
        args.extend(many.iter().map(|v| v.as_slice()));
        assert_bytes!(cmdb(&mut raw, &args), b":0\r\n");
    }
}

#[test]
fn inline_commands_empty_lines_and_empty_multibulks() {
    for shards in [1, 2] {
        let server = Server::start(shards, &[]);
        let mut raw = server.raw();
        raw.send(b"\r\nPING\r\n");
        assert_bytes!(raw.reply(), b"+PONG\r\n");
        raw.send(b"\nPING\n");
        assert_bytes!(raw.reply(), b"+PONG\r\n");
        raw.send(b"   \r\n  ping   \r\n");
        assert_bytes!(raw.reply(), b"+PONG\r\n");
        raw.send(b"*0\r\n*-1\r\n\r\n*0\r\nPING\r\n");
        assert_bytes!(
            raw.reply(),
            b"+PONG\r\n",
            "*0, *-1 and empty lines produce no reply"
        );
        raw.send(b"set \"a b\" 'c d'\r\nget \"a b\"\r\n");
        assert_bytes!(raw.reply(), b"+OK\r\n");
        assert_bytes!(raw.reply(), b"$3\r\nc d\r\n");
        raw.send(b"echo \"x\\ty\\x41\\n\"\r\n");
        assert_bytes!(raw.reply(), b"$5\r\nx\tyA\n\r\n");
        raw.send(b"echo 'a\\'b'\r\n");
        assert_bytes!(raw.reply(), b"$3\r\na'b\r\n");
        raw.send(b"echo \"\"\r\n");
        assert_bytes!(raw.reply(), b"$0\r\n\r\n");
        raw.send(b"nosuch a b\r\n");
        assert_bytes!(
            raw.reply(),
            b"-ERR unknown command 'nosuch', with args beginning with: 'a' 'b' \r\n"
        );
        raw.send(b"get\r\n");
        assert_bytes!(
            raw.reply(),
            b"-ERR wrong number of arguments for 'get' command\r\n"
        );
        // Inline keys on both shards, pipelined with multibulk.
        let mut req = Vec::new();
        for i in 0..20 {
            req.extend_from_slice(format!("SET inl{i} val{i}\r\n").as_bytes());
            req.extend_from_slice(&resp(&[b"GET", format!("inl{i}").as_bytes()]));
        }
        raw.send(&req);
        for i in 0..20 {
            assert_bytes!(raw.reply(), b"+OK\r\n");
            let v = format!("val{i}");
            assert_bytes!(raw.reply(), format!("${}\r\n{v}\r\n", v.len()).as_bytes());
        }
        // Nothing extra was sent back for the ignored lines.
        assert_bytes!(raw.cmd(&["ECHO", "end"]), b"$3\r\nend\r\n");
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Query buffer limit
// ---------------------------------------------------------------------------------------------

#[test]
fn query_buffer_limit_closes_the_client() {
    for shards in [1, 2] {
        let mut server = Server::start(shards, &["--client-query-buffer-limit", "1mb"]);
        let mut other = server.raw();
        assert_bytes!(other.cmd(&["SET", "k", "v"]), b"+OK\r\n");

        let mut s = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
        s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut request = b"*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$2097152\r\n".to_vec();
        request.resize(request.len() + 1536 * 1024, b'x');
        // The write fails part-way when the server closes; that is expected.
        let write_result = s.write_all(&request);
        match read_until_closed(&mut s, Duration::from_secs(15)) {
            Ok(_) => {}
            Err(got) => panic!(
                "{shards} shards: a client past client-query-buffer-limit was not closed \
                 (write result {write_result:?}, received {})",
                show(&got)
            ),
        }
        assert_bytes!(
            other.cmd(&["GET", "k"]),
            b"$1\r\nv\r\n",
            "existing client still served"
        );
        assert_bytes!(other.cmd(&["EXISTS", "big"]), b":0\r\n");
        assert_alive(&mut server, "after the query buffer limit");
    }
}

// ---------------------------------------------------------------------------------------------
// 3. A client that never reads its replies
// ---------------------------------------------------------------------------------------------

#[test]
fn client_that_never_reads_does_not_grow_server_memory() {
    for shards in [1, 2] {
        let mut server = Server::start(shards, &[]);
        let mut con = server.client();
        let value = vec![b'v'; 1024 * 1024];
        let keys: Vec<String> = (0..shards)
            .map(|s| key_on_shard("big", s, shards))
            .collect();
        for k in &keys {
            let _: () = redis::cmd("SET")
                .arg(k)
                .arg(&value)
                .query(&mut con)
                .unwrap();
        }
        let base_used = info_field(&mut con, "memory", "used_memory");

        let mut reader_never = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
        reader_never
            .set_write_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut request = Vec::new();
        for i in 0..3000 {
            request.extend_from_slice(&resp(&[b"GET", keys[i % keys.len()].as_bytes()]));
        }
        reader_never.write_all(&request).expect("write 3000 GETs");

        let limit = 300 * 1024 * 1024;
        let deadline = Instant::now() + Duration::from_secs(3);
        let (mut max_used, mut max_rss) = (0, 0);
        while Instant::now() < deadline {
            max_used = max_used.max(info_field(&mut con, "memory", "used_memory"));
            max_rss = max_rss.max(vm_rss_bytes(server.pid()));
            assert!(
                max_used < limit && max_rss < limit,
                "{shards} shards: replies to a client that never reads are buffered: \
                 used_memory {max_used} (was {base_used}), VmRSS {max_rss}"
            );
            thread::sleep(Duration::from_millis(10));
        }
        // The server answers others meanwhile.
        let got: Vec<u8> = redis::cmd("GET").arg(&keys[0]).query(&mut con).unwrap();
        assert_eq!(got.len(), value.len());
        drop(reader_never);
        assert!(
            eventually(Duration::from_secs(10), || {
                info_field(&mut con, "clients", "connected_clients") == 1
            }),
            "{shards} shards: the blocked client was not cleaned up after it closed"
        );
        assert_alive(&mut server, "after the never-reading client");
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Long mixed pipelines
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Exp {
    Ok,
    Pong,
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Arr(Vec<Exp>),
}

impl Exp {
    fn resp2(&self, out: &mut Vec<u8>) {
        match self {
            Exp::Ok => out.extend_from_slice(b"+OK\r\n"),
            Exp::Pong => out.extend_from_slice(b"+PONG\r\n"),
            Exp::Int(n) => out.extend_from_slice(format!(":{n}\r\n").as_bytes()),
            Exp::Bulk(b) => {
                out.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Exp::Nil => out.extend_from_slice(b"$-1\r\n"),
            Exp::Arr(items) => {
                out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
                for i in items {
                    i.resp2(out);
                }
            }
        }
    }
    fn value(&self) -> redis::Value {
        match self {
            Exp::Ok => redis::Value::Okay,
            Exp::Pong => redis::Value::SimpleString("PONG".into()),
            Exp::Int(n) => redis::Value::Int(*n),
            Exp::Bulk(b) => redis::Value::BulkString(b.clone()),
            Exp::Nil => redis::Value::Nil,
            Exp::Arr(items) => redis::Value::Array(items.iter().map(Exp::value).collect()),
        }
    }
}

/// A pseudo-random mixed workload and the replies a correct server gives, from a model.
fn mixed_workload(seed: u64, count: usize) -> (Vec<Vec<Vec<u8>>>, Vec<Exp>) {
    let mut rng = Rng(seed);
    let mut dbs: [HashMap<Vec<u8>, Vec<u8>>; 2] = [HashMap::new(), HashMap::new()];
    let mut db = 0usize;
    let mut cmds = Vec::with_capacity(count);
    let mut exps = Vec::with_capacity(count);
    let key = |rng: &mut Rng| -> Vec<u8> {
        if rng.below(4) == 0 {
            format!("ctr{}", rng.below(20)).into_bytes()
        } else {
            format!("k{}", rng.below(300)).into_bytes()
        }
    };
    for i in 0..count {
        let r = rng.below(100);
        let (cmd, exp): (Vec<Vec<u8>>, Exp) = if r < 28 {
            let k = format!("k{}", rng.below(300)).into_bytes();
            let v = format!("v{i}").into_bytes();
            dbs[db].insert(k.clone(), v.clone());
            (vec![b"SET".to_vec(), k, v], Exp::Ok)
        } else if r < 46 {
            let k = key(&mut rng);
            let e = dbs[db].get(&k).map_or(Exp::Nil, |v| Exp::Bulk(v.clone()));
            (vec![b"GET".to_vec(), k], e)
        } else if r < 58 {
            let k = format!("ctr{}", rng.below(20)).into_bytes();
            let n = dbs[db].get(&k).map_or(0, |v| {
                std::str::from_utf8(v).unwrap().parse::<i64>().unwrap()
            }) + 1;
            dbs[db].insert(k.clone(), n.to_string().into_bytes());
            (vec![b"INCR".to_vec(), k], Exp::Int(n))
        } else if r < 68 {
            let n = 2 + rng.below(5);
            let mut cmd = vec![b"MGET".to_vec()];
            let mut items = Vec::new();
            for _ in 0..n {
                let k = key(&mut rng);
                items.push(dbs[db].get(&k).map_or(Exp::Nil, |v| Exp::Bulk(v.clone())));
                cmd.push(k);
            }
            (cmd, Exp::Arr(items))
        } else if r < 75 {
            let n = 1 + rng.below(3);
            let mut cmd = vec![b"DEL".to_vec()];
            let mut removed = 0;
            for _ in 0..n {
                let k = key(&mut rng);
                if dbs[db].remove(&k).is_some() {
                    removed += 1;
                }
                cmd.push(k);
            }
            (cmd, Exp::Int(removed))
        } else if r < 80 {
            let n = 1 + rng.below(4);
            let mut cmd = vec![b"EXISTS".to_vec()];
            let mut found = 0;
            for _ in 0..n {
                let k = key(&mut rng);
                if dbs[db].contains_key(&k) {
                    found += 1;
                }
                cmd.push(k);
            }
            (cmd, Exp::Int(found))
        } else if r < 86 {
            (vec![b"PING".to_vec()], Exp::Pong)
        } else if r < 92 {
            let m = format!("echo-{i}").into_bytes();
            (vec![b"ECHO".to_vec(), m.clone()], Exp::Bulk(m))
        } else if r < 96 {
            db = 1 - db;
            (
                vec![b"SELECT".to_vec(), db.to_string().into_bytes()],
                Exp::Ok,
            )
        } else {
            let n = 1 + rng.below(3);
            let mut cmd = vec![b"MSET".to_vec()];
            for j in 0..n {
                let k = format!("k{}", rng.below(300)).into_bytes();
                let v = format!("m{i}-{j}").into_bytes();
                dbs[db].insert(k.clone(), v.clone());
                cmd.push(k);
                cmd.push(v);
            }
            (cmd, Exp::Ok)
        };
        cmds.push(cmd);
        exps.push(exp);
    }
    // End in db 0 so a following check starts from a known database.
    if db == 1 {
        cmds.push(vec![b"SELECT".to_vec(), b"0".to_vec()]);
        exps.push(Exp::Ok);
    }
    (cmds, exps)
}

#[test]
fn ten_thousand_command_pipelines_answer_in_order() {
    for shards in [1, 2] {
        let server = Server::start(shards, &[]);

        // Raw socket: the whole pipeline in one write (from a thread, so replies can drain).
        let (cmds, exps) = mixed_workload(0xC0FFEE + shards as u64, 10_000);
        let mut request = Vec::new();
        for c in &cmds {
            let args: Vec<&[u8]> = c.iter().map(|a| a.as_slice()).collect();
            request.extend_from_slice(&resp(&args));
        }
        let mut raw = server.raw();
        let mut writer = raw.stream.try_clone().expect("clone");
        let t = thread::spawn(move || writer.write_all(&request));
        for (i, (c, e)) in cmds.iter().zip(&exps).enumerate() {
            let mut expected = Vec::new();
            e.resp2(&mut expected);
            assert_bytes!(
                raw.reply(),
                &expected,
                "{shards} shards: reply {i} to {:?}",
                c.iter()
                    .map(|a| String::from_utf8_lossy(a))
                    .collect::<Vec<_>>()
            );
        }
        t.join().unwrap().expect("write the pipeline");
        assert_bytes!(raw.cmd(&["ECHO", "done"]), b"$4\r\ndone\r\n");

        // The same kind of workload through redis::pipe().
        assert_bytes!(raw.cmd(&["FLUSHALL"]), b"+OK\r\n");
        let (cmds, exps) = mixed_workload(0xBEEF + shards as u64, 10_000);
        let mut pipe = redis::pipe();
        for c in &cmds {
            let mut cmd = redis::cmd(std::str::from_utf8(&c[0]).unwrap());
            for a in &c[1..] {
                cmd.arg(a.as_slice());
            }
            pipe.add_command(cmd);
        }
        let mut con = server.client();
        let got: Vec<redis::Value> = pipe.query(&mut con).expect("pipeline");
        assert_eq!(
            got.len(),
            exps.len(),
            "{shards} shards: pipeline reply count"
        );
        for (i, (g, e)) in got.iter().zip(&exps).enumerate() {
            assert_eq!(
                g,
                &e.value(),
                "{shards} shards: redis::pipe reply {i} to {:?}",
                cmds[i]
                    .iter()
                    .map(|a| String::from_utf8_lossy(a))
                    .collect::<Vec<_>>()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 5. MULTI / EXEC / DISCARD / WATCH / UNWATCH
// ---------------------------------------------------------------------------------------------

#[test]
fn transaction_basics_and_errors_byte_exact() {
    for shards in [1, 2] {
        let server = Server::start(shards, &[]);
        let mut r = server.raw();
        assert_bytes!(r.cmd(&["MULTI"]), b"+OK\r\n");
        assert_bytes!(r.cmd(&["SET", "a", "1"]), b"+QUEUED\r\n");
        assert_bytes!(r.cmd(&["INCR", "a"]), b"+QUEUED\r\n");
        assert_bytes!(r.cmd(&["GET", "a"]), b"+QUEUED\r\n");
        assert_bytes!(r.cmd(&["EXEC"]), b"*3\r\n+OK\r\n:2\r\n$1\r\n2\r\n");
        assert_bytes!(r.cmd(&["MULTI"]), b"+OK\r\n");
        assert_bytes!(r.cmd(&["EXEC"]), b"*0\r\n");

        // Nested MULTI: error, then DISCARD works.
        assert_bytes!(r.cmd(&["MULTI"]), b"+OK\r\n");
        assert_bytes!(
            r.cmd(&["MULTI"]),
            b"-ERR Command not allowed inside a transaction\r\n"
        );
        assert_bytes!(r.cmd(&["DISCARD"]), b"+OK\r\n");
        // Nested MULTI flags the transaction.
        assert_bytes!(r.cmd(&["MULTI"]), b"+OK\r\n");
        assert_bytes!(
            r.cmd(&["MULTI"]),
            b"-ERR Command not allowed inside a transaction\r\n"
        );
        assert_bytes!(r.cmd(&["PING"]), b"+QUEUED\r\n");
        assert_bytes!(
            r.cmd(&["EXEC"]),
            b"-EXECABORT Transaction discarded because of previous errors.\r\n"
        );

        // Without MULTI.
        assert_bytes!(r.cmd(&["EXEC"]), b"-ERR EXEC without MULTI\r\n");
        assert_bytes!(r.cmd(&["DISCARD"]), b"-ERR DISCARD without MULTI\r\n");
        assert_bytes!(
            r.cmd(&["MULTI", "x"]),
            b"-ERR wrong number of arguments for 'multi' command\r\n"
        );
        assert_bytes!(
            r.cmd(&["EXEC", "x"]),
            b"-EXECABORT Transaction discarded because of: wrong number of arguments for 'exec' command\r\n"
        );
        assert_bytes!(
            r.cmd(&["DISCARD", "x"]),
            b"-ERR wrong number of arguments for 'discard' command\r\n"
        );

        // WATCH inside MULTI.
        assert_bytes!(r.cmd(&["MULTI"]), b"+OK\r\n");
        assert_bytes!(
            r.cmd(&["WATCH", "a"]),
            b"-ERR Command not allowed inside a transaction\r\n"
        );
        assert_bytes!(r.cmd(&["UNWATCH"]), b"+QUEUED\r\n");
        assert_bytes!(r.cmd(&["PING"]), b"+QUEUED\r\n");
        assert_bytes!(
            r.cmd(&["EXEC"]),
            b"-EXECABORT Transaction discarded because of previous errors.\r\n"
        );

        // Queue-time arity and unknown-command errors.
        assert_bytes!(r.cmd(&["MULTI"]), b"+OK\r\n");
        assert_bytes!(
            r.cmd(&["SET", "a"]),
            b"-ERR wrong number of arguments for 'set' command\r\n"
        );
        assert_bytes!(r.cmd(&["SET", "b", "2"]), b"+QUEUED\r\n");
        assert_bytes!(
            r.cmd(&["EXEC"]),
            b"-EXECABORT Transaction discarded because of previous errors.\r\n"
        );
        assert_bytes!(
            r.cmd(&["GET", "b"]),
            b"$-1\r\n",
            "an aborted transaction ran nothing"
        );
        assert_bytes!(r.cmd(&["MULTI"]), b"+OK\r\n");
        assert_bytes!(
            r.cmd(&["nosuchcmd", "x"]),
            b"-ERR unknown command 'nosuchcmd', with args beginning with: 'x' \r\n"
        );
        assert_bytes!(
            r.cmd(&["EXEC"]),
            b"-EXECABORT Transaction discarded because of previous errors.\r\n"
        );
        assert_bytes!(r.cmd(&["MULTI"]), b"+OK\r\n");
        assert_bytes!(r.cmd(&["SET", "a", "1"]), b"+QUEUED\r\n");
        assert_bytes!(
            r.cmd(&["GET"]),
            b"-ERR wrong number of arguments for 'get' command\r\n"
        );
        assert_bytes!(r.cmd(&["DISCARD"]), b"+OK\r\n");

        // EXEC x inside MULTI discards the transaction.
        assert_bytes!(r.cmd(&["MULTI"]), b"+OK\r\n");
        assert_bytes!(r.cmd(&["SET", "fromexecx", "1"]), b"+QUEUED\r\n");
        assert_bytes!(
            r.cmd(&["EXEC", "x"]),
            b"-EXECABORT Transaction discarded because of: wrong number of arguments for 'exec' command\r\n"
        );
        assert_bytes!(r.cmd(&["EXEC"]), b"-ERR EXEC without MULTI\r\n");
        assert_bytes!(r.cmd(&["EXISTS", "fromexecx"]), b":0\r\n");
        // DISCARD x inside MULTI flags it.
        assert_bytes!(r.cmd(&["MULTI"]), b"+OK\r\n");
        assert_bytes!(r.cmd(&["PING"]), b"+QUEUED\r\n");
        assert_bytes!(
            r.cmd(&["DISCARD", "x"]),
            b"-ERR wrong number of arguments for 'discard' command\r\n"
        );
        assert_bytes!(
            r.cmd(&["EXEC"]),
            b"-EXECABORT Transaction discarded because of previous errors.\r\n"
        );

        // Runtime errors inside EXEC: reported in place, the rest still runs.
        assert_bytes!(r.cmd(&["SET", "str", "abc"]), b"+OK\r\n");
        assert_bytes!(r.cmd(&["MULTI"]), b"+OK\r\n");
        assert_bytes!(r.cmd(&["SET", "x", "1"]), b"+QUEUED\r\n");
        assert_bytes!(r.cmd(&["INCR", "str"]), b"+QUEUED\r\n");
        assert_bytes!(r.cmd(&["INCR", "x"]), b"+QUEUED\r\n");
        assert_bytes!(r.cmd(&["SET", "y", "1", "ex", "0"]), b"+QUEUED\r\n");
        assert_bytes!(r.cmd(&["SELECT", "99"]), b"+QUEUED\r\n");
        assert_bytes!(
            r.cmd(&["EXEC"]),
            b"*5\r\n+OK\r\n-ERR value is not an integer or out of range\r\n:2\r\n-ERR invalid expire time in 'set' command\r\n-ERR DB index is out of range\r\n"
        );
        assert_bytes!(r.cmd(&["GET", "x"]), b"$1\r\n2\r\n");

        // SELECT inside MULTI changes the connection's database.
        assert_bytes!(r.cmd(&["MULTI"]), b"+OK\r\n");
        assert_bytes!(r.cmd(&["SELECT", "1"]), b"+QUEUED\r\n");
        assert_bytes!(r.cmd(&["SET", "indb1", "v"]), b"+QUEUED\r\n");
        assert_bytes!(r.cmd(&["EXEC"]), b"*2\r\n+OK\r\n+OK\r\n");
        assert_bytes!(
            r.cmd(&["GET", "indb1"]),
            b"$1\r\nv\r\n",
            "still in db 1 after EXEC"
        );
        assert_bytes!(r.cmd(&["SELECT", "0"]), b"+OK\r\n");
        assert_bytes!(r.cmd(&["GET", "indb1"]), b"$-1\r\n");
        assert_bytes!(r.cmd(&["MULTI"]), b"+OK\r\n");
        assert_bytes!(r.cmd(&["SELECT", "1"]), b"+QUEUED\r\n");
        assert_bytes!(r.cmd(&["GET", "indb1"]), b"+QUEUED\r\n");
        assert_bytes!(r.cmd(&["SELECT", "0"]), b"+QUEUED\r\n");
        assert_bytes!(r.cmd(&["GET", "indb1"]), b"+QUEUED\r\n");
        assert_bytes!(r.cmd(&["EXEC"]), b"*4\r\n+OK\r\n$1\r\nv\r\n+OK\r\n$-1\r\n");

        // RESP3 runtime error and nil inside EXEC.
        r.send(&resp(&[b"HELLO", b"3"]));
        assert_eq!(r.reply().first(), Some(&b'%'));
        assert_bytes!(r.cmd(&["MULTI"]), b"+OK\r\n");
        assert_bytes!(r.cmd(&["INCR", "str"]), b"+QUEUED\r\n");
        assert_bytes!(r.cmd(&["GET", "nope"]), b"+QUEUED\r\n");
        assert_bytes!(
            r.cmd(&["EXEC"]),
            b"*2\r\n-ERR value is not an integer or out of range\r\n_\r\n"
        );

        // QUIT inside MULTI: +OK, closed, nothing executed.
        let mut q = server.raw();
        assert_bytes!(q.cmd(&["MULTI"]), b"+OK\r\n");
        assert_bytes!(q.cmd(&["SET", "qq", "v"]), b"+QUEUED\r\n");
        q.send(&resp(&[b"QUIT"]));
        match read_until_closed(&mut q.stream, Duration::from_secs(10)) {
            Ok(got) => assert_bytes!(got, b"+OK\r\n", "QUIT inside MULTI"),
            Err(got) => panic!("QUIT inside MULTI did not close; got {}", show(&got)),
        }
        assert_bytes!(
            r.cmd(&["EXISTS", "qq"]),
            b":0\r\n",
            "QUIT discarded the transaction"
        );
    }
}

#[test]
fn transactions_span_both_shards() {
    let shards = 2;
    let server = Server::start(shards, &[]);
    let a = key_on_shard("ta", 0, shards);
    let b = key_on_shard("tb", 1, shards);
    let mut r = server.raw();
    assert_bytes!(r.cmd(&["MULTI"]), b"+OK\r\n");
    assert_bytes!(r.cmd(&["SET", &a, "1"]), b"+QUEUED\r\n");
    assert_bytes!(r.cmd(&["SET", &b, "2"]), b"+QUEUED\r\n");
    assert_bytes!(r.cmd(&["INCR", &a]), b"+QUEUED\r\n");
    assert_bytes!(r.cmd(&["INCRBY", &b, "10"]), b"+QUEUED\r\n");
    assert_bytes!(r.cmd(&["MGET", &a, &b, "missing"]), b"+QUEUED\r\n");
    assert_bytes!(r.cmd(&["PING"]), b"+QUEUED\r\n");
    assert_bytes!(r.cmd(&["DEL", &a]), b"+QUEUED\r\n");
    assert_bytes!(r.cmd(&["EXISTS", &a, &b]), b"+QUEUED\r\n");
    assert_bytes!(r.cmd(&["RENAME", &b, &a]), b"+QUEUED\r\n");
    assert_bytes!(r.cmd(&["GET", &a]), b"+QUEUED\r\n");
    assert_bytes!(r.cmd(&["GET", &b]), b"+QUEUED\r\n");
    assert_bytes!(
        r.cmd(&["EXEC"]),
        b"*11\r\n+OK\r\n+OK\r\n:2\r\n:12\r\n*3\r\n$1\r\n2\r\n$2\r\n12\r\n$-1\r\n+PONG\r\n:1\r\n:1\r\n+OK\r\n$2\r\n12\r\n$-1\r\n"
    );
}

#[test]
fn watch_semantics_byte_exact() {
    for shards in [1, 2] {
        let server = Server::start(shards, &[]);
        let mut r = server.raw();
        let mut other = server.raw();
        let w = "w";
        assert_bytes!(r.cmd(&["SET", w, "1"]), b"+OK\r\n");

        // Modified by another connection: aborted (RESP2 nil array).
        assert_bytes!(r.cmd(&["WATCH", w]), b"+OK\r\n");
        assert_bytes!(r.cmd(&["MULTI"]), b"+OK\r\n");
        assert_bytes!(r.cmd(&["GET", w]), b"+QUEUED\r\n");
        assert_bytes!(other.cmd(&["SET", w, "2"]), b"+OK\r\n");
        assert_bytes!(r.cmd(&["EXEC"]), b"*-1\r\n");

        // Not modified: runs.
        assert_bytes!(r.cmd(&["WATCH", w]), b"+OK\r\n");
        assert_bytes!(r.cmd(&["MULTI"]), b"+OK\r\n");
        assert_bytes!(r.cmd(&["GET", w]), b"+QUEUED\r\n");
        assert_bytes!(r.cmd(&["EXEC"]), b"*1\r\n$1\r\n2\r\n");
        // EXEC unwatches: a later change does not affect the next transaction.
        assert_bytes!(other.cmd(&["SET", w, "3"]), b"+OK\r\n");
        assert_bytes!(r.cmd(&["MULTI"]), b"+OK\r\n");
        assert_bytes!(r.cmd(&["GET", w]), b"+QUEUED\r\n");
        assert_bytes!(r.cmd(&["EXEC"]), b"*1\r\n$1\r\n3\r\n");

        // UNWATCH.
        assert_bytes!(r.cmd(&["WATCH", w]), b"+OK\r\n");
        assert_bytes!(r.cmd(&["UNWATCH"]), b"+OK\r\n");
        assert_bytes!(other.cmd(&["SET", w, "4"]), b"+OK\r\n");
        assert_bytes!(r.cmd(&["MULTI"]), b"+OK\r\n");
        assert_bytes!(r.cmd(&["GET", w]), b"+QUEUED\r\n");
        assert_bytes!(r.cmd(&["EXEC"]), b"*1\r\n$1\r\n4\r\n", "after UNWATCH");
        // DISCARD also unwatches.
        assert_bytes!(r.cmd(&["WATCH", w]), b"+OK\r\n");
        assert_bytes!(r.cmd(&["MULTI"]), b"+OK\r\n");
        assert_bytes!(r.cmd(&["DISCARD"]), b"+OK\r\n");
        assert_bytes!(other.cmd(&["SET", w, "5"]), b"+OK\r\n");
        assert_bytes!(r.cmd(&["MULTI"]), b"+OK\r\n");
        assert_bytes!(r.cmd(&["GET", w]), b"+QUEUED\r\n");
        assert_bytes!(r.cmd(&["EXEC"]), b"*1\r\n$1\r\n5\r\n", "after DISCARD");

        assert_bytes!(
            r.cmd(&["WATCH"]),
            b"-ERR wrong number of arguments for 'watch' command\r\n"
        );
        assert_bytes!(
            r.cmd(&["UNWATCH", "x"]),
            b"-ERR wrong number of arguments for 'unwatch' command\r\n"
        );

        // A watched missing key created by another connection.
        assert_bytes!(r.cmd(&["WATCH", "nokey"]), b"+OK\r\n");
        assert_bytes!(other.cmd(&["SET", "nokey", "x"]), b"+OK\r\n");
        assert_bytes!(r.cmd(&["MULTI"]), b"+OK\r\n");
        assert_bytes!(r.cmd(&["PING"]), b"+QUEUED\r\n");
        assert_bytes!(r.cmd(&["EXEC"]), b"*-1\r\n");

        // Own modification inside MULTI does not abort; between WATCH and MULTI it does.
        assert_bytes!(r.cmd(&["WATCH", w]), b"+OK\r\n");
        assert_bytes!(r.cmd(&["MULTI"]), b"+OK\r\n");
        assert_bytes!(r.cmd(&["SET", w, "self"]), b"+QUEUED\r\n");
        assert_bytes!(r.cmd(&["EXEC"]), b"*1\r\n+OK\r\n");
        assert_bytes!(r.cmd(&["WATCH", w]), b"+OK\r\n");
        assert_bytes!(r.cmd(&["SET", w, "self2"]), b"+OK\r\n");
        assert_bytes!(r.cmd(&["MULTI"]), b"+OK\r\n");
        assert_bytes!(r.cmd(&["PING"]), b"+QUEUED\r\n");
        assert_bytes!(r.cmd(&["EXEC"]), b"*-1\r\n");

        // A watched key that expires meanwhile: aborted (one key per shard).
        for s in 0..shards {
            let tw = key_on_shard("tw", s, shards);
            let set_at = Instant::now();
            assert_bytes!(r.cmd(&["SET", &tw, "v", "PX", "100"]), b"+OK\r\n");
            assert_bytes!(r.cmd(&["WATCH", &tw]), b"+OK\r\n");
            // Let the TTL pass without touching the key.
            while set_at.elapsed() < Duration::from_millis(300) {
                thread::sleep(Duration::from_millis(20));
            }
            assert_bytes!(r.cmd(&["MULTI"]), b"+OK\r\n");
            assert_bytes!(r.cmd(&["PING"]), b"+QUEUED\r\n");
            assert_bytes!(
                r.cmd(&["EXEC"]),
                b"*-1\r\n",
                "watched key {tw} expired meanwhile"
            );
        }

        // RESP3: aborted EXEC is a null.
        r.send(&resp(&[b"HELLO", b"3"]));
        assert_eq!(r.reply().first(), Some(&b'%'));
        assert_bytes!(r.cmd(&["WATCH", w]), b"+OK\r\n");
        assert_bytes!(r.cmd(&["MULTI"]), b"+OK\r\n");
        assert_bytes!(r.cmd(&["GET", w]), b"+QUEUED\r\n");
        assert_bytes!(other.cmd(&["SET", w, "6"]), b"+OK\r\n");
        assert_bytes!(r.cmd(&["EXEC"]), b"_\r\n");

        // The redis crate sees an aborted transaction as nil.
        let mut con = server.client();
        let mut con2 = server.client();
        let _: () = redis::cmd("WATCH").arg(w).query(&mut con).unwrap();
        let _: () = redis::cmd("SET").arg(w).arg("7").query(&mut con2).unwrap();
        let res: Option<(String,)> = redis::pipe()
            .atomic()
            .cmd("GET")
            .arg(w)
            .query(&mut con)
            .unwrap();
        assert_eq!(res, None, "redis crate: aborted EXEC is nil");
    }
}

#[test]
fn watch_keys_on_both_shards() {
    let shards = 2;
    let server = Server::start(shards, &[]);
    let a = key_on_shard("wa", 0, shards);
    let b = key_on_shard("wb", 1, shards);
    let mut r = server.raw();
    let mut other = server.raw();
    assert_bytes!(r.cmd(&["MSET", &a, "1", &b, "1"]), b"+OK\r\n");
    // Whichever shard this connection lives on, one of these rounds modifies a key on the
    // other shard; both must abort.
    for (i, modified) in [a.as_str(), b.as_str(), a.as_str(), b.as_str()]
        .into_iter()
        .enumerate()
    {
        assert_bytes!(r.cmd(&["WATCH", &a, &b]), b"+OK\r\n");
        assert_bytes!(r.cmd(&["MULTI"]), b"+OK\r\n");
        assert_bytes!(r.cmd(&["SET", &a, "mine"]), b"+QUEUED\r\n");
        assert_bytes!(r.cmd(&["SET", &b, "mine"]), b"+QUEUED\r\n");
        let v = format!("other{i}");
        assert_bytes!(other.cmd(&["SET", modified, &v]), b"+OK\r\n");
        assert_bytes!(
            r.cmd(&["EXEC"]),
            b"*-1\r\n",
            "modified {modified} (round {i})"
        );
        let mut expected = b"*2\r\n".to_vec();
        for k in [a.as_str(), b.as_str()] {
            let cur = String::from_utf8(other.cmd(&["GET", k])).unwrap();
            assert!(!cur.contains("mine"), "aborted EXEC wrote {k}: {cur:?}");
            expected.extend_from_slice(cur.as_bytes());
        }
        assert_bytes!(other.cmd(&["MGET", &a, &b]), &expected);
    }
    // Separate WATCH calls on both shards, nothing modified: runs.
    assert_bytes!(r.cmd(&["WATCH", &a]), b"+OK\r\n");
    assert_bytes!(r.cmd(&["WATCH", &b]), b"+OK\r\n");
    assert_bytes!(r.cmd(&["MULTI"]), b"+OK\r\n");
    assert_bytes!(r.cmd(&["MSET", &a, "x", &b, "y"]), b"+QUEUED\r\n");
    assert_bytes!(r.cmd(&["MGET", &a, &b]), b"+QUEUED\r\n");
    assert_bytes!(
        r.cmd(&["EXEC"]),
        b"*2\r\n+OK\r\n*2\r\n$1\r\nx\r\n$1\r\ny\r\n"
    );
    // Deleting a watched key on the other shard aborts too.
    assert_bytes!(r.cmd(&["WATCH", &a, &b]), b"+OK\r\n");
    assert_bytes!(other.cmd(&["DEL", &a, &b]), b":2\r\n");
    assert_bytes!(r.cmd(&["MULTI"]), b"+OK\r\n");
    assert_bytes!(r.cmd(&["PING"]), b"+QUEUED\r\n");
    assert_bytes!(r.cmd(&["EXEC"]), b"*-1\r\n");
}

// ---------------------------------------------------------------------------------------------
// 6. Cross-shard atomicity under concurrency
// ---------------------------------------------------------------------------------------------

const RACE_FOR: Duration = Duration::from_secs(3);

/// Pairs of keys where the two keys of each pair live on different shards.
fn cross_pairs(shards: usize, n: usize, tag: &str) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            (
                key_on_shard(&format!("{tag}a{i}"), i % shards, shards),
                key_on_shard(&format!("{tag}b{i}"), (i + 1) % shards, shards),
            )
        })
        .collect()
}

/// Runs `writers` and `readers` against the server until the deadline; a reader returns an
/// error message on the first violation. Returns (writes, reads).
fn race(
    server: &Server,
    writers: usize,
    readers: usize,
    write: impl Fn(&mut redis::Connection, usize, u64) + Send + Sync + 'static,
    read: impl Fn(&mut redis::Connection, usize, u64) -> Result<(), String> + Send + Sync + 'static,
) -> (u64, u64) {
    let write = Arc::new(write);
    let read = Arc::new(read);
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + RACE_FOR;
    let mut handles = Vec::new();
    for w in 0..writers {
        let mut con = server.client();
        let (write, stop, writes) = (write.clone(), stop.clone(), writes.clone());
        handles.push(thread::spawn(move || -> Result<(), String> {
            let mut round = 0u64;
            while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                round += 1;
                write(&mut con, w, round);
                writes.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    for rd in 0..readers {
        let mut con = server.client();
        let (read, stop, reads) = (read.clone(), stop.clone(), reads.clone());
        handles.push(thread::spawn(move || -> Result<(), String> {
            let mut round = 0u64;
            while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                round += 1;
                if let Err(e) = read(&mut con, rd, round) {
                    stop.store(true, Ordering::Relaxed);
                    return Err(e);
                }
                reads.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    let mut failures = Vec::new();
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(e),
            Err(_) => failures.push("a client thread panicked".to_string()),
        }
    }
    assert!(
        failures.is_empty(),
        "atomicity violated: {}",
        failures.join("; ")
    );
    let (w, r) = (
        writes.load(Ordering::Relaxed),
        reads.load(Ordering::Relaxed),
    );
    assert!(
        w > 0 && r > 0,
        "the race did not run (writes {w}, reads {r})"
    );
    (w, r)
}

fn check_pair(
    how: &str,
    pair: &(String, String),
    got: (Option<String>, Option<String>),
) -> Result<(), String> {
    if got.0 == got.1 {
        Ok(())
    } else {
        Err(format!(
            "{how} of {} / {} saw {:?} / {:?}",
            pair.0, pair.1, got.0, got.1
        ))
    }
}

fn pair_readers(
    pairs: Arc<Vec<(String, String)>>,
) -> impl Fn(&mut redis::Connection, usize, u64) -> Result<(), String> + Send + Sync + 'static {
    move |con, rd, round| {
        let pair = &pairs[(rd + round as usize) % pairs.len()];
        let got: (Option<String>, Option<String>) = redis::cmd("MGET")
            .arg(&pair.0)
            .arg(&pair.1)
            .query(con)
            .map_err(|e| format!("MGET failed: {e}"))?;
        check_pair("MGET", pair, got)?;
        let got: (Option<String>, Option<String>) = redis::pipe()
            .atomic()
            .cmd("GET")
            .arg(&pair.0)
            .cmd("GET")
            .arg(&pair.1)
            .query(con)
            .map_err(|e| format!("MULTI GET GET EXEC failed: {e}"))?;
        check_pair("MULTI GET GET EXEC", pair, got)?;
        // Cross-shard EXISTS: 0 or 2, never 1.
        let n: i64 = redis::cmd("EXISTS")
            .arg(&pair.0)
            .arg(&pair.1)
            .query(con)
            .map_err(|e| format!("EXISTS failed: {e}"))?;
        if n == 1 {
            return Err(format!("EXISTS {} {} returned 1", pair.0, pair.1));
        }
        Ok(())
    }
}

#[test]
fn cross_shard_mset_and_del_are_atomic() {
    let shards = 2;
    let server = Server::start(shards, &[]);
    let pairs = Arc::new(cross_pairs(shards, 4, "ms"));
    let wp = pairs.clone();
    let (w, r) = race(
        &server,
        4,
        4,
        move |con, w, round| {
            let pair = &wp[(w + round as usize) % wp.len()];
            if round % 10 == 0 {
                let n: i64 = redis::cmd("DEL")
                    .arg(&pair.0)
                    .arg(&pair.1)
                    .query(con)
                    .unwrap();
                assert!(n == 0 || n == 2, "cross-shard DEL removed {n} of a pair");
            } else {
                let v = format!("w{w}-r{round}");
                let _: () = redis::cmd("MSET")
                    .arg(&pair.0)
                    .arg(&v)
                    .arg(&pair.1)
                    .arg(&v)
                    .query(con)
                    .unwrap();
            }
        },
        pair_readers(pairs.clone()),
    );
    println!("MSET/DEL race: {w} writes, {r} reads");
}

#[test]
fn cross_shard_multi_exec_is_atomic() {
    let shards = 2;
    let server = Server::start(shards, &[]);
    let pairs = Arc::new(cross_pairs(shards, 4, "mx"));
    let wp = pairs.clone();
    let (w, r) = race(
        &server,
        4,
        4,
        move |con, w, round| {
            let pair = &wp[(w + round as usize) % wp.len()];
            let v = format!("w{w}-r{round}");
            let _: () = redis::pipe()
                .atomic()
                .cmd("SET")
                .arg(&pair.0)
                .arg(&v)
                .ignore()
                .cmd("SET")
                .arg(&pair.1)
                .arg(&v)
                .ignore()
                .query(con)
                .unwrap();
        },
        pair_readers(pairs.clone()),
    );
    println!("MULTI SET SET EXEC race: {w} writes, {r} reads");
}

#[test]
fn cross_shard_rename_is_atomic() {
    let shards = 2;
    let server = Server::start(shards, &[]);
    let x = key_on_shard("rnx", 0, shards);
    let y = key_on_shard("rny", 1, shards);
    let mut con = server.client();
    let _: () = redis::cmd("SET")
        .arg(&x)
        .arg("payload")
        .query(&mut con)
        .unwrap();
    let (wx, wy) = (x.clone(), y.clone());
    let (rx, ry) = (x.clone(), y.clone());
    let (w, r) = race(
        &server,
        4,
        4,
        move |con, w, _round| {
            // Renames from whichever name currently exists; losing a race gives "no such key".
            let (from, to) = if w % 2 == 0 { (&wx, &wy) } else { (&wy, &wx) };
            let res: redis::RedisResult<()> = redis::cmd("RENAME").arg(from).arg(to).query(con);
            if let Err(e) = res {
                let msg = e.to_string();
                assert!(
                    msg.contains("no such key"),
                    "RENAME failed unexpectedly: {msg}"
                );
            }
        },
        move |con, _rd, _round| {
            let (a, b): (i64, i64) = redis::pipe()
                .atomic()
                .cmd("EXISTS")
                .arg(&rx)
                .cmd("EXISTS")
                .arg(&ry)
                .query(con)
                .map_err(|e| format!("MULTI EXISTS EXISTS EXEC failed: {e}"))?;
            if a + b != 1 {
                return Err(format!(
                    "MULTI EXISTS {rx} EXISTS {ry} EXEC gave {a} and {b}"
                ));
            }
            let n: i64 = redis::cmd("EXISTS")
                .arg(&rx)
                .arg(&ry)
                .query(con)
                .map_err(|e| format!("EXISTS failed: {e}"))?;
            if n != 1 {
                return Err(format!("EXISTS {rx} {ry} gave {n}"));
            }
            let got: (Option<String>, Option<String>) = redis::cmd("MGET")
                .arg(&rx)
                .arg(&ry)
                .query(con)
                .map_err(|e| format!("MGET failed: {e}"))?;
            match got {
                (Some(v), None) | (None, Some(v)) if v == "payload" => Ok(()),
                other => Err(format!("MGET {rx} {ry} during renames gave {other:?}")),
            }
        },
    );
    println!("RENAME race: {w} renames, {r} reads");
    let got: (Option<String>, Option<String>) =
        redis::cmd("MGET").arg(&x).arg(&y).query(&mut con).unwrap();
    assert!(
        matches!(&got, (Some(v), None) | (None, Some(v)) if v == "payload"),
        "after the RENAME race: {got:?}"
    );
}

#[test]
fn cross_shard_msetnx_race_has_exactly_one_winner() {
    let shards = 2;
    let server = Server::start(shards, &[]);
    let threads = 4;
    let rounds = 150;
    let barrier = Arc::new(Barrier::new(threads));
    let wins = Arc::new((0..rounds).map(|_| AtomicU64::new(0)).collect::<Vec<_>>());
    let mut handles = Vec::new();
    for t in 0..threads {
        let mut con = server.client();
        let barrier = barrier.clone();
        let wins = wins.clone();
        handles.push(thread::spawn(move || {
            for r in 0..rounds {
                let x = key_on_shard(&format!("nx{r}x"), 0, shards);
                let y = key_on_shard(&format!("nx{r}y"), 1, shards);
                // A key only this thread writes, on alternating shards.
                let own = key_on_shard(&format!("nx{r}own{t}"), (t + r) % shards, shards);
                let v = format!("t{t}");
                barrier.wait();
                let won: i64 = redis::cmd("MSETNX")
                    .arg(&x)
                    .arg(&v)
                    .arg(&own)
                    .arg(&v)
                    .arg(&y)
                    .arg(&v)
                    .query(&mut con)
                    .unwrap();
                if won == 1 {
                    wins[r].fetch_add(1 << (8 * t), Ordering::SeqCst);
                }
            }
        }));
    }
    for h in handles {
        h.join().expect("MSETNX thread");
    }
    let mut con = server.client();
    for r in 0..rounds {
        let mask = wins[r].load(Ordering::SeqCst);
        let winners: Vec<usize> = (0..threads)
            .filter(|t| (mask >> (8 * t)) & 0xff == 1)
            .collect();
        assert_eq!(winners.len(), 1, "round {r}: MSETNX winners {winners:?}");
        let winner = winners[0];
        let x = key_on_shard(&format!("nx{r}x"), 0, shards);
        let y = key_on_shard(&format!("nx{r}y"), 1, shards);
        let got: (Option<String>, Option<String>) =
            redis::cmd("MGET").arg(&x).arg(&y).query(&mut con).unwrap();
        let v = format!("t{winner}");
        assert_eq!(
            got,
            (Some(v.clone()), Some(v.clone())),
            "round {r}: shared keys"
        );
        for t in 0..threads {
            let own = key_on_shard(&format!("nx{r}own{t}"), (t + r) % shards, shards);
            let got: Option<String> = redis::cmd("GET").arg(&own).query(&mut con).unwrap();
            let expected = (t == winner).then(|| v.clone());
            assert_eq!(
                got, expected,
                "round {r}: thread {t}'s own key (winner {winner})"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 7. Concurrency sanity
// ---------------------------------------------------------------------------------------------

#[test]
fn fifty_clients_incr_exactly() {
    for shards in [1, 2] {
        let server = Server::start(shards, &[]);
        let clients = 50;
        let per = 2000;
        let k0 = key_on_shard("ctr", 0, shards);
        let k1 = key_on_shard("ctr", shards - 1, shards);
        let k1 = if k1 == k0 { format!("{k0}-b") } else { k1 };
        let mut handles = Vec::new();
        for i in 0..clients {
            let mut con = server.client();
            let (k0, k1) = (k0.clone(), k1.clone());
            handles.push(thread::spawn(move || {
                for j in 0..per {
                    if (i + j) % 4 == 0 {
                        // One round trip with INCRs on both shards.
                        let _: () = redis::pipe()
                            .cmd("INCR")
                            .arg("hot")
                            .ignore()
                            .cmd("INCR")
                            .arg(&k0)
                            .ignore()
                            .cmd("INCR")
                            .arg(&k1)
                            .ignore()
                            .query(&mut con)
                            .unwrap();
                    } else {
                        let _: i64 = redis::cmd("INCR").arg("hot").query(&mut con).unwrap();
                        let _: i64 = redis::cmd("INCR").arg(&k0).query(&mut con).unwrap();
                        let _: i64 = redis::cmd("INCR").arg(&k1).query(&mut con).unwrap();
                    }
                }
            }));
        }
        for h in handles {
            h.join().expect("INCR thread");
        }
        let mut con = server.client();
        let got: (i64, i64, i64) = redis::cmd("MGET")
            .arg("hot")
            .arg(&k0)
            .arg(&k1)
            .query(&mut con)
            .unwrap();
        let n = (clients * per) as i64;
        assert_eq!(
            got,
            (n, n, n),
            "{shards} shards: INCR totals for hot, {k0}, {k1}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 8. valkey-benchmark
// ---------------------------------------------------------------------------------------------

#[test]
fn valkey_benchmark_runs_clean() {
    let found = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|p| p.join("valkey-benchmark").is_file())
    });
    if !found {
        println!("note: valkey-benchmark is not on PATH; skipping");
        return;
    }
    let mut server = Server::start(2, &[]);
    let out = std::process::Command::new("valkey-benchmark")
        .args(["-p", &server.port.to_string()])
        .args(["-t", "ping,set,get,incr,mset", "-n", "20000", "-q"])
        .output()
        .expect("run valkey-benchmark");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "valkey-benchmark failed ({}):\n{text}",
        out.status
    );
    assert!(
        !text.to_lowercase().contains("error") && !text.contains("ERR"),
        "valkey-benchmark reported errors:\n{text}"
    );
    assert_alive(&mut server, "after valkey-benchmark");
}
