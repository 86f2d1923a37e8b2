//! Connection and server commands through the real server, byte for byte against Valkey 8.0.1
//! (see the wire reference), plus start-up as a user runs it and the security defaults.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{eventually, free_port, wait_or_kill, Raw, Server};

const BIN: &str = env!("CARGO_BIN_EXE_corekv-server");
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Deadline for things that should happen at once (a close, an exit, a count settling).
const PROMPTLY: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const OK: &[u8] = b"+OK\r\n";
const NIL2: &[u8] = b"$-1\r\n";
const NIL3: &[u8] = b"_\r\n";
const EMPTY_BULK: &[u8] = b"$0\r\n\r\n";
const SYNTAX: &[u8] = b"-ERR syntax error\r\n";

fn err(text: &str) -> Vec<u8> {
    format!("-{text}\r\n").into_bytes()
}

fn bulk(text: &str) -> Vec<u8> {
    format!("${}\r\n{}\r\n", text.len(), text).into_bytes()
}

fn int(n: i64) -> Vec<u8> {
    format!(":{n}\r\n").into_bytes()
}

fn arity(name: &str) -> Vec<u8> {
    err(&format!(
        "ERR wrong number of arguments for '{name}' command"
    ))
}

fn unknown(name: &str, listed: &str) -> Vec<u8> {
    err(&format!(
        "ERR unknown command '{name}', with args beginning with: {listed}"
    ))
}

fn show(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

/// Sends `args` and checks the reply byte for byte.
#[track_caller]
fn expect(raw: &mut Raw, args: &[&str], expected: &[u8]) {
    let got = raw.cmd(args);
    assert!(
        got == expected,
        "{args:?}\n  expected: {}\n  actual:   {}",
        show(expected),
        show(&got)
    );
}

/// Differences from Valkey collected through the end of a test, so that one run reports them
/// all instead of stopping at the first.
#[derive(Default)]
struct Diffs(Vec<String>);

impl Diffs {
    fn reply(&mut self, raw: &mut Raw, args: &[&str], expected: &[u8]) {
        let got = raw.cmd(args);
        if got != expected {
            self.0.push(format!(
                "{args:?}\n  expected: {}\n  actual:   {}",
                show(expected),
                show(&got)
            ));
        }
    }

    fn check<T: PartialEq + std::fmt::Debug>(&mut self, what: &str, actual: T, expected: T) {
        if actual != expected {
            self.0.push(format!(
                "{what}\n  expected: {expected:?}\n  actual:   {actual:?}"
            ));
        }
    }

    #[track_caller]
    fn assert_none(self) {
        assert!(
            self.0.is_empty(),
            "differences from Valkey:\n{}",
            self.0.join("\n")
        );
    }
}

/// A decoded RESP reply, for structural checks.
#[derive(Debug, Clone, PartialEq)]
enum V {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<V>),
    Set(Vec<V>),
    Map(Vec<(V, V)>),
    Verbatim(String, Vec<u8>),
}

fn parse(buf: &[u8]) -> (V, usize) {
    let line_end = buf
        .windows(2)
        .position(|w| w == b"\r\n")
        .expect("a complete RESP line");
    let header = std::str::from_utf8(&buf[1..line_end]).expect("ASCII header");
    let after = line_end + 2;
    match buf[0] {
        b'+' => (V::Simple(header.to_string()), after),
        b'-' => (V::Error(header.to_string()), after),
        b':' => (V::Int(header.parse().expect("integer")), after),
        b'_' => (V::Nil, after),
        b'$' | b'=' => {
            let len: i64 = header.parse().expect("length");
            if len < 0 {
                return (V::Nil, after);
            }
            let len = len as usize;
            let payload = buf[after..after + len].to_vec();
            let value = if buf[0] == b'=' {
                let (format, body) = payload.split_at(4);
                V::Verbatim(
                    String::from_utf8_lossy(&format[..3]).into_owned(),
                    body.to_vec(),
                )
            } else {
                V::Bulk(payload)
            };
            (value, after + len + 2)
        }
        kind @ (b'*' | b'~' | b'%') => {
            let count: i64 = header.parse().expect("count");
            if count < 0 {
                return (V::Nil, after);
            }
            let mut at = after;
            let mut items = Vec::new();
            let n = if kind == b'%' { count * 2 } else { count };
            for _ in 0..n {
                let (v, used) = parse(&buf[at..]);
                items.push(v);
                at += used;
            }
            let value = match kind {
                b'*' => V::Array(items),
                b'~' => V::Set(items),
                _ => V::Map(
                    items
                        .chunks(2)
                        .map(|p| (p[0].clone(), p[1].clone()))
                        .collect(),
                ),
            };
            (value, at)
        }
        other => panic!("unexpected RESP type byte {other:?} in {}", show(buf)),
    }
}

fn decode(reply: &[u8]) -> V {
    let (v, used) = parse(reply);
    assert_eq!(used, reply.len(), "trailing bytes in {}", show(reply));
    v
}

impl V {
    /// The text of a bulk, verbatim or simple string.
    fn text(&self) -> String {
        match self {
            V::Bulk(b) | V::Verbatim(_, b) => String::from_utf8_lossy(b).into_owned(),
            V::Simple(s) => s.clone(),
            other => panic!("not a string: {other:?}"),
        }
    }

    fn items(&self) -> &[V] {
        match self {
            V::Array(v) | V::Set(v) => v,
            other => panic!("not an array: {other:?}"),
        }
    }

    fn int(&self) -> i64 {
        match self {
            V::Int(n) => *n,
            other => panic!("not an integer: {other:?}"),
        }
    }
}

/// Text of a bulk or verbatim reply (INFO, CLIENT LIST, CLIENT INFO).
fn text_reply(raw: &mut Raw, args: &[&str]) -> String {
    let reply = raw.cmd(args);
    match decode(&reply) {
        v @ (V::Bulk(_) | V::Verbatim(..)) => v.text(),
        other => panic!("{args:?}: expected a bulk/verbatim reply, got {other:?}"),
    }
}

fn info(raw: &mut Raw, sections: &[&str]) -> String {
    let mut args = vec!["INFO"];
    args.extend_from_slice(sections);
    text_reply(raw, &args)
}

fn info_field(text: &str, field: &str) -> Option<String> {
    text.split("\r\n")
        .find_map(|l| l.strip_prefix(&format!("{field}:")).map(str::to_string))
}

fn section_headers(text: &str) -> Vec<String> {
    text.split("\r\n")
        .filter(|l| l.starts_with("# "))
        .map(|l| l[2..].to_string())
        .collect()
}

fn client_id(raw: &mut Raw) -> i64 {
    decode(&raw.cmd(&["CLIENT", "ID"])).int()
}

/// `k=v` pairs of one CLIENT LIST / CLIENT INFO line, in order.
fn client_fields(line: &str) -> Vec<(String, String)> {
    line.split(' ')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn field_of(line: &str, name: &str) -> String {
    client_fields(line)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no field {name} in {line}"))
}

/// Lines of CLIENT LIST by client id.
fn client_list(raw: &mut Raw, extra: &[&str]) -> BTreeMap<i64, String> {
    let mut args = vec!["CLIENT", "LIST"];
    args.extend_from_slice(extra);
    let text = text_reply(raw, &args);
    assert!(text.is_empty() || text.ends_with('\n'), "{text:?}");
    text.lines()
        .map(|l| (field_of(l, "id").parse().expect("id"), l.to_string()))
        .collect()
}

/// The HELLO reply corekv gives (Valkey's shape with corekv's name and version).
fn hello_bytes(proto: i64, id: i64) -> Vec<u8> {
    let head = if proto == 3 { "%7" } else { "*14" };
    format!(
        "{head}\r\n$6\r\nserver\r\n$6\r\ncorekv\r\n$7\r\nversion\r\n${}\r\n{VERSION}\r\n$5\r\nproto\r\n:{proto}\r\n$2\r\nid\r\n:{id}\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n",
        VERSION.len()
    )
    .into_bytes()
}

/// Reads until the peer closes or `within` passes: (bytes, closed).
fn drain(stream: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + within;
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (out, true),
            Err(_) => {}
        }
    }
    (out, false)
}

/// Sends one command on a plain stream and reads one reply.
fn stream_cmd(stream: &mut TcpStream, args: &[&str]) -> Vec<u8> {
    let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    stream.write_all(&common::resp(&args)).expect("write");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut pending = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        if let Some(len) = corekv::protocol::reply::element_len(&pending) {
            assert_eq!(len, pending.len(), "more than one reply");
            return pending;
        }
        let n = stream.read(&mut buf).expect("read a reply");
        assert!(n > 0, "connection closed while waiting for a reply");
        pending.extend_from_slice(&buf[..n]);
    }
}

/// True if a new connection answers PING with PONG; any failure is false.
fn try_ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(n) if &buf[..n] == b"+PONG\r\n")
}

/// Valkey-style glob match (`*`, `?`), enough for the patterns used here.
fn glob(pattern: &str, text: &str) -> bool {
    fn rec(p: &[u8], t: &[u8]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some(b'*') => (0..=t.len()).any(|i| rec(&p[1..], &t[i..])),
            Some(b'?') => !t.is_empty() && rec(&p[1..], &t[1..]),
            Some(&c) => t.first() == Some(&c) && rec(&p[1..], &t[1..]),
        }
    }
    rec(pattern.as_bytes(), text.as_bytes())
}

/// Runs the binary to completion (killed after 20 s): (status, stdout, stderr).
fn run_binary(args: &[&str]) -> (ExitStatus, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn corekv-server");
    let Some(status) = wait_or_kill(&mut child, Duration::from_secs(20)) else {
        panic!("corekv-server {args:?} was still running after 20 s");
    };
    let mut out = String::new();
    let mut errs = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read stdout");
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut errs)
        .expect("read stderr");
    (status, out, errs)
}

/// A server started straight from the binary with exactly the given arguments (for cases the
/// harness cannot express: a config file first, `--requirepass`). Killed on drop.
struct Direct {
    child: Child,
    port: u16,
}

impl Direct {
    /// Starts `[file] --port <free> <extra…>`; ready once PING answers PONG or NOAUTH.
    fn start(file: Option<&Path>, extra: &[&str]) -> Direct {
        for _ in 0..5 {
            let port = free_port();
            let mut args: Vec<String> = Vec::new();
            if let Some(f) = file {
                args.push(f.display().to_string());
            }
            args.extend(["--port".to_string(), port.to_string()]);
            args.extend(extra.iter().map(|s| s.to_string()));
            let child = Command::new(BIN)
                .args(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn corekv-server");
            let mut d = Direct { child, port };
            if d.wait_ready(port) {
                return d;
            }
        }
        panic!("corekv-server {extra:?} did not start");
    }

    fn wait_ready(&mut self, port: u16) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                if s.write_all(b"PING\r\n").is_ok() {
                    let mut buf = [0u8; 64];
                    if let Ok(n) = s.read(&mut buf) {
                        if buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH") {
                            return true;
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn raw(&self) -> Raw {
        Raw::connect(self.port)
    }
}

impl Drop for Direct {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A non-loopback IPv4 address of this machine, if it has one.
fn non_loopback_ipv4() -> Option<Ipv4Addr> {
    let usable = |ip: &Ipv4Addr| !ip.is_loopback() && !ip.is_unspecified() && !ip.is_link_local();
    if let Ok(out) = Command::new("hostname").arg("-I").output() {
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if let Some(ip) = text
            .split_whitespace()
            .filter_map(|w| w.parse::<Ipv4Addr>().ok())
            .find(usable)
        {
            return Some(ip);
        }
    }
    // /proc/net/fib_trie: an address line followed by "/32 host LOCAL" is one of ours.
    let trie = std::fs::read_to_string("/proc/net/fib_trie").ok()?;
    let lines: Vec<&str> = trie.lines().collect();
    lines.windows(2).find_map(|w| {
        if !w[1].contains("/32 host LOCAL") {
            return None;
        }
        let ip: Ipv4Addr = w[0].trim().trim_start_matches("|-- ").parse().ok()?;
        usable(&ip).then_some(ip)
    })
}

// ---------------------------------------------------------------------------------------------
// Generic errors
// ---------------------------------------------------------------------------------------------

#[test]
fn unknown_commands_arity_and_subcommand_errors() {
    let server = Server::start(1, &[]);
    let mut raw = server.raw();

    // Unknown commands: every argument quoted, trailing space, 128-character budget.
    expect(&mut raw, &["nosuchcmd"], &unknown("nosuchcmd", ""));
    expect(&mut raw, &["nosuchcmd", "a"], &unknown("nosuchcmd", "'a' "));
    expect(
        &mut raw,
        &["nosuchcmd", "a", "b", "c"],
        &unknown("nosuchcmd", "'a' 'b' 'c' "),
    );
    expect(
        &mut raw,
        &["NoSuchCmd", "Arg1"],
        &unknown("NoSuchCmd", "'Arg1' "),
    );
    let x200 = "x".repeat(200);
    expect(
        &mut raw,
        &["nosuchcmd", &x200],
        &unknown("nosuchcmd", &format!("'{}' ", "x".repeat(128))),
    );
    let (a60, b60, c60) = ("a".repeat(60), "b".repeat(60), "c".repeat(60));
    expect(
        &mut raw,
        &["nosuchcmd", &a60, &b60, &c60],
        &unknown("nosuchcmd", &format!("'{a60}' '{b60}' 'cc' ")),
    );
    expect(
        &mut raw,
        &["nosuchcmd", &a60, &b60, &c60, "dddddddddd"],
        &unknown("nosuchcmd", &format!("'{a60}' '{b60}' 'cc' ")),
    );
    let a124 = "a".repeat(124);
    expect(
        &mut raw,
        &["nosuchcmd", &a124, "bbbbbbbbbb", "cccccccccc"],
        &unknown("nosuchcmd", &format!("'{a124}' 'b' ")),
    );
    let a125 = "a".repeat(125);
    expect(
        &mut raw,
        &["nosuchcmd", &a125, "bbbbbbbbbb"],
        &unknown("nosuchcmd", &format!("'{a125}' ")),
    );
    let n200 = "n".repeat(200);
    expect(&mut raw, &[&n200], &unknown(&"n".repeat(128), ""));
    expect(&mut raw, &["nosuchcmd", ""], &unknown("nosuchcmd", "'' "));
    expect(
        &mut raw,
        &["nosuchcmd", "it's", "a\"b"],
        &unknown("nosuchcmd", "'it's' 'a\"b' "),
    );
    expect(
        &mut raw,
        &["nosuchcmd", "a\r\nb"],
        &unknown("nosuchcmd", "'a  b' "),
    );
    expect(&mut raw, &[""], &unknown("", ""));

    // Arity: lower-case full name, `container|sub` for subcommands.
    let arity_cases: &[(&[&str], &str)] = &[
        (&["get"], "get"),
        (&["GET"], "get"),
        (&["GeT"], "get"),
        (&["get", "a", "b"], "get"),
        (&["set", "a"], "set"),
        (&["set"], "set"),
        (&["client", "setname"], "client|setname"),
        (&["client", "setname", "a", "b"], "client|setname"),
        (&["CLIENT", "SETNAME"], "client|setname"),
        (&["config", "get"], "config|get"),
        (&["config", "set", "hz"], "config|set"),
        (&["object", "encoding"], "object|encoding"),
        (&["OBJECT", "ENCODING", "a", "b"], "object|encoding"),
        (&["ping", "a", "b"], "ping"),
        (&["echo"], "echo"),
        (&["mget"], "mget"),
        (&["del"], "del"),
        (&["exists"], "exists"),
        (&["incr"], "incr"),
        (&["client", "kill"], "client|kill"),
    ];
    for (args, name) in arity_cases {
        expect(&mut raw, args, &arity(name));
    }

    // Unknown subcommands: the subcommand as sent, the container upper-cased.
    let sub_cases: &[(&[&str], &str, &str)] = &[
        (&["client", "foo"], "foo", "CLIENT"),
        (&["CLIENT", "FOO"], "FOO", "CLIENT"),
        (&["config", "foo"], "foo", "CONFIG"),
        (&["command", "foo"], "foo", "COMMAND"),
        (&["object", "foo"], "foo", "OBJECT"),
        (&["object", "foo", "bar"], "foo", "OBJECT"),
        (&["client", "foo", "bar", "baz"], "foo", "CLIENT"),
    ];
    for (args, sub, container) in sub_cases {
        expect(
            &mut raw,
            args,
            &err(&format!(
                "ERR unknown subcommand '{sub}'. Try {container} HELP."
            )),
        );
    }

    // A bare container is an arity error, except COMMAND which lists everything.
    expect(&mut raw, &["client"], &arity("client"));
    expect(&mut raw, &["CLIENT"], &arity("client"));
    expect(&mut raw, &["config"], &arity("config"));
    expect(&mut raw, &["object"], &arity("object"));
    let count = decode(&raw.cmd(&["COMMAND", "COUNT"])).int();
    assert!(count > 0);
    let all = decode(&raw.cmd(&["COMMAND"]));
    assert_eq!(all.items().len() as i64, count);
    let all_info = decode(&raw.cmd(&["COMMAND", "INFO"]));
    assert_eq!(all_info.items().len() as i64, count);
    // The connection survived all of it.
    expect(&mut raw, &["PING"], b"+PONG\r\n");
}

// ---------------------------------------------------------------------------------------------
// Connection commands
// ---------------------------------------------------------------------------------------------

#[test]
fn ping_echo_and_quit() {
    let server = Server::start(1, &[]);
    let mut raw = server.raw();
    for resp3 in [false, true] {
        if resp3 {
            assert_eq!(raw.cmd(&["HELLO", "3"]).first(), Some(&b'%'));
        }
        expect(&mut raw, &["ping"], b"+PONG\r\n");
        expect(&mut raw, &["PING", "hello world"], &bulk("hello world"));
        expect(&mut raw, &["ping", ""], EMPTY_BULK);
        expect(&mut raw, &["echo", "hi"], &bulk("hi"));
        expect(&mut raw, &["echo", ""], EMPTY_BULK);
        expect(&mut raw, &["echo", "a", "b"], &arity("echo"));
        expect(&mut raw, &["ping", "a", "b"], &arity("ping"));
    }

    // QUIT answers +OK, then the server closes the connection.
    expect(&mut raw, &["QUIT"], OK);
    assert!(raw.closed_within(PROMPTLY), "QUIT did not close");

    let mut raw = server.raw();
    expect(&mut raw, &["QUIT", "extra", "args"], OK);
    assert!(raw.closed_within(PROMPTLY), "QUIT a b did not close");

    // Nothing after QUIT runs, even when pipelined.
    let mut raw = server.raw();
    raw.send(b"QUIT\r\nPING\r\n");
    let (bytes, closed) = drain(&mut raw.stream, PROMPTLY);
    assert_eq!(show(&bytes), show(OK));
    assert!(closed);

    // The server itself is fine.
    expect(&mut server.raw(), &["PING"], b"+PONG\r\n");
}

#[test]
fn reset_returns_the_connection_to_its_defaults() {
    let server = Server::start(1, &[]);
    let mut raw = server.raw();
    let id = client_id(&mut raw);
    expect(
        &mut raw,
        &["HELLO", "3", "SETNAME", "foo"],
        &hello_bytes(3, id),
    );
    expect(&mut raw, &["SELECT", "5"], OK);
    expect(&mut raw, &["MULTI"], OK);
    expect(&mut raw, &["SET", "mk", "1"], b"+QUEUED\r\n");
    expect(&mut raw, &["RESET"], b"+RESET\r\n");
    // Name cleared, RESP2 again ($-1, not _), MULTI gone.
    expect(&mut raw, &["CLIENT", "GETNAME"], NIL2);
    expect(&mut raw, &["GET", "nosuch"], NIL2);
    expect(&mut raw, &["EXEC"], &err("ERR EXEC without MULTI"));
    let line = text_reply(&mut raw, &["CLIENT", "INFO"]);
    assert_eq!(field_of(&line, "db"), "0", "{line}");
    assert_eq!(field_of(&line, "resp"), "2", "{line}");
    assert_eq!(field_of(&line, "name"), "", "{line}");
    assert_eq!(field_of(&line, "multi"), "-1", "{line}");
    assert_eq!(field_of(&line, "id"), id.to_string(), "RESET keeps the id");
    // The queued SET never ran.
    expect(&mut raw, &["SELECT", "5"], OK);
    expect(&mut raw, &["GET", "mk"], NIL2);
    expect(&mut raw, &["RESET", "x"], &arity("reset"));
    // Valkey answers +RESET even outside MULTI.
    expect(&mut raw, &["RESET"], b"+RESET\r\n");
}

#[test]
fn select_switches_databases_and_rejects_bad_indexes() {
    let server = Server::start(1, &["--databases", "4"]);
    let mut raw = server.raw();
    expect(&mut raw, &["SELECT", "0"], OK);
    expect(&mut raw, &["SET", "k", "zero"], OK);
    expect(&mut raw, &["SELECT", "3"], OK);
    expect(&mut raw, &["GET", "k"], NIL2);
    expect(&mut raw, &["SET", "k", "three"], OK);
    expect(
        &mut raw,
        &["SELECT", "4"],
        &err("ERR DB index is out of range"),
    );
    // A failed SELECT leaves the connection where it was.
    expect(&mut raw, &["GET", "k"], &bulk("three"));
    expect(
        &mut raw,
        &["SELECT", "-1"],
        &err("ERR DB index is out of range"),
    );
    for bad in ["abc", "1.5", "", " 1", "99999999999999999999"] {
        expect(
            &mut raw,
            &["SELECT", bad],
            &err("ERR value is not an integer or out of range"),
        );
    }
    expect(&mut raw, &["SELECT"], &arity("select"));
    expect(&mut raw, &["SELECT", "1", "2"], &arity("select"));
    expect(&mut raw, &["SELECT", "0"], OK);
    expect(&mut raw, &["GET", "k"], &bulk("zero"));

    // The default is 16 databases.
    let server = Server::start(1, &[]);
    let mut raw = server.raw();
    expect(&mut raw, &["SELECT", "15"], OK);
    expect(
        &mut raw,
        &["SELECT", "16"],
        &err("ERR DB index is out of range"),
    );
}

#[test]
fn auth_and_hello_without_a_password() {
    let server = Server::start(1, &[]);
    let mut raw = server.raw();
    let id = client_id(&mut raw);
    expect(
        &mut raw,
        &["AUTH", "x"],
        &err("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?"),
    );
    expect(&mut raw, &["AUTH", "default", "x"], OK);
    expect(&mut raw, &["AUTH", "default", ""], OK);
    expect(
        &mut raw,
        &["AUTH", "bob", "x"],
        &err("WRONGPASS invalid username-password pair or user is disabled."),
    );
    expect(&mut raw, &["AUTH", "a", "b", "c"], SYNTAX);
    expect(&mut raw, &["AUTH"], &arity("auth"));

    expect(&mut raw, &["HELLO"], &hello_bytes(2, id));
    expect(&mut raw, &["HELLO", "2"], &hello_bytes(2, id));
    expect(&mut raw, &["HELLO", "3"], &hello_bytes(3, id));
    // HELLO without a version keeps the protocol.
    expect(&mut raw, &["HELLO"], &hello_bytes(3, id));
    expect(&mut raw, &["GET", "missing"], NIL3);
    for bad in ["4", "1", "0", "-1"] {
        expect(
            &mut raw,
            &["HELLO", bad],
            &err("NOPROTO unsupported protocol version"),
        );
    }
    expect(
        &mut raw,
        &["HELLO", "abc"],
        &err("ERR Protocol version is not an integer or out of range"),
    );
    // A refused HELLO changes nothing.
    expect(&mut raw, &["GET", "missing"], NIL3);
    expect(
        &mut raw,
        &["HELLO", "3", "SETNAME", "myname"],
        &hello_bytes(3, id),
    );
    expect(&mut raw, &["CLIENT", "GETNAME"], &bulk("myname"));
    expect(
        &mut raw,
        &["HELLO", "3", "SETNAME", "my name"],
        &err("ERR Client names cannot contain spaces, newlines or special characters."),
    );
    expect(&mut raw, &["CLIENT", "GETNAME"], &bulk("myname"));
    // The option is echoed as it was sent.
    expect(
        &mut raw,
        &["hello", "3", "setname"],
        &err("ERR Syntax error in HELLO option 'setname'"),
    );
    expect(
        &mut raw,
        &["HELLO", "3", "SETNAME"],
        &err("ERR Syntax error in HELLO option 'SETNAME'"),
    );
    expect(
        &mut raw,
        &["hello", "3", "auth", "default"],
        &err("ERR Syntax error in HELLO option 'auth'"),
    );
    // No password configured: the default user accepts anything.
    expect(
        &mut raw,
        &["HELLO", "3", "AUTH", "default", "wrong"],
        &hello_bytes(3, id),
    );
    expect(
        &mut raw,
        &["HELLO", "3", "foo"],
        &err("ERR Syntax error in HELLO option 'foo'"),
    );
    expect(
        &mut raw,
        &["HELLO", "3", "foo", "bar"],
        &err("ERR Syntax error in HELLO option 'foo'"),
    );
    expect(
        &mut raw,
        &["HELLO", "3", "FOO"],
        &err("ERR Syntax error in HELLO option 'FOO'"),
    );
    expect(
        &mut raw,
        &["HELLO", "2", "SETNAME", "a", "SETNAME", "b"],
        &hello_bytes(2, id),
    );
    expect(&mut raw, &["CLIENT", "GETNAME"], &bulk("b"));
    expect(&mut raw, &["GET", "missing"], NIL2);
}

#[test]
fn requirepass_gates_commands_until_auth() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("server.log");
    let server = Direct::start(
        None,
        &[
            "--dir",
            &dir.path().display().to_string(),
            "--logfile",
            &log.display().to_string(),
            "--shards",
            "1",
            "--requirepass",
            "s3cret",
        ],
    );
    let noauth = err("NOAUTH Authentication required.");
    let hello_noauth = err("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time");
    let wrongpass = err("WRONGPASS invalid username-password pair or user is disabled.");

    let mut raw = server.raw();
    expect(&mut raw, &["GET", "x"], &noauth);
    expect(&mut raw, &["PING"], &noauth);
    expect(&mut raw, &["CLIENT", "ID"], &noauth);
    expect(&mut raw, &["MULTI"], &noauth);
    // Unknown-command, unknown-subcommand and arity errors win over NOAUTH.
    expect(&mut raw, &["nosuchcmd"], &unknown("nosuchcmd", ""));
    expect(&mut raw, &["GET"], &arity("get"));
    expect(&mut raw, &["CLIENT"], &arity("client"));
    expect(
        &mut raw,
        &["CLIENT", "foo"],
        &err("ERR unknown subcommand 'foo'. Try CLIENT HELP."),
    );
    expect(&mut raw, &["AUTH"], &arity("auth"));
    expect(&mut raw, &["HELLO"], &hello_noauth);
    expect(&mut raw, &["HELLO", "3"], &hello_noauth);
    expect(&mut raw, &["GET", "x"], &noauth);
    expect(&mut raw, &["AUTH", "wrong"], &wrongpass);
    expect(&mut raw, &["AUTH", "default", "wrong"], &wrongpass);
    expect(&mut raw, &["AUTH", "otheruser", "s3cret"], &wrongpass);
    expect(
        &mut raw,
        &["HELLO", "3", "AUTH", "default", "wrong"],
        &wrongpass,
    );
    expect(
        &mut raw,
        &["hello", "3", "auth", "default"],
        &err("ERR Syntax error in HELLO option 'auth'"),
    );
    expect(&mut raw, &["AUTH", "s3cret"], OK);
    expect(&mut raw, &["GET", "x"], NIL2);
    expect(&mut raw, &["AUTH", "default", "s3cret"], OK);
    // QUIT needs no AUTH.
    let mut other = server.raw();
    expect(&mut other, &["QUIT"], OK);
    assert!(other.closed_within(PROMPTLY));

    // HELLO AUTH authenticates, switches protocol and names the connection in one go.
    let mut raw = server.raw();
    let hello = raw.cmd(&["HELLO", "3", "AUTH", "default", "s3cret", "SETNAME", "nm"]);
    let id = match decode(&hello) {
        V::Map(pairs) => pairs
            .iter()
            .find(|(k, _)| k.text() == "id")
            .map(|(_, v)| v.int())
            .expect("id"),
        other => panic!("HELLO: {other:?}"),
    };
    assert_eq!(show(&hello), show(&hello_bytes(3, id)));
    expect(&mut raw, &["CLIENT", "GETNAME"], &bulk("nm"));
    expect(&mut raw, &["GET", "x"], NIL3);
    // RESET logs the connection out again.
    expect(&mut raw, &["RESET"], b"+RESET\r\n");
    expect(&mut raw, &["GET", "x"], &noauth);
    expect(&mut raw, &["CLIENT", "GETNAME"], &noauth);
    expect(&mut raw, &["AUTH", "s3cret"], OK);
    expect(&mut raw, &["GET", "x"], NIL2);

    // An unauthenticated client may not announce big requests.
    let mut raw = server.raw();
    raw.send(b"*100\r\n");
    let (bytes, closed) = drain(&mut raw.stream, PROMPTLY);
    assert_eq!(
        show(&bytes),
        show(b"-ERR Protocol error: unauthenticated multibulk length\r\n")
    );
    assert!(closed);
    let mut raw = server.raw();
    raw.send(b"*1\r\n$20000\r\n");
    let (bytes, closed) = drain(&mut raw.stream, PROMPTLY);
    assert_eq!(
        show(&bytes),
        show(b"-ERR Protocol error: unauthenticated bulk length\r\n")
    );
    assert!(closed);

    // The redis crate authenticates from the URL; without it commands fail.
    let url = format!("redis://:s3cret@127.0.0.1:{}/", server.port);
    let mut con = redis::Client::open(url)
        .expect("client")
        .get_connection()
        .expect("connect with password");
    let pong: String = redis::cmd("PING").query(&mut con).expect("PING");
    assert_eq!(pong, "PONG");
    let mut anon = redis::Client::open(format!("redis://127.0.0.1:{}/", server.port))
        .expect("client")
        .get_connection()
        .expect("connect");
    let refused: redis::RedisResult<String> = redis::cmd("GET").arg("x").query(&mut anon);
    assert!(refused.is_err(), "{refused:?}");

    // Error counters by code.
    let mut raw = server.raw();
    expect(&mut raw, &["AUTH", "s3cret"], OK);
    let stats = info(&mut raw, &["errorstats"]);
    for code in ["NOAUTH", "WRONGPASS", "ERR"] {
        assert!(
            info_field(&stats, &format!("errorstat_{code}")).is_some(),
            "{stats}"
        );
    }

    // Clearing the password at run time lets new clients in.
    expect(&mut raw, &["CONFIG", "SET", "requirepass", ""], OK);
    expect(&mut server.raw(), &["PING"], b"+PONG\r\n");
}

#[test]
fn resp2_and_resp3_reply_shapes() {
    let server = Server::start(1, &[]);
    let port = server.port.to_string();
    let mut raw = server.raw();
    let id = client_id(&mut raw);
    let config_port = format!("$4\r\nport\r\n${}\r\n{port}\r\n", port.len());

    // RESP2
    expect(&mut raw, &["GET", "missing"], NIL2);
    expect(&mut raw, &["CLIENT", "GETNAME"], NIL2);
    expect(
        &mut raw,
        &["CONFIG", "GET", "port"],
        format!("*2\r\n{config_port}").as_bytes(),
    );
    expect(&mut raw, &["CONFIG", "GET", "nosuch"], b"*0\r\n");
    expect(&mut raw, &["INFO", "nosuchsection"], EMPTY_BULK);
    expect(
        &mut raw,
        &["COMMAND", "INFO", "nonexistent"],
        b"*1\r\n$-1\r\n",
    );
    expect(&mut raw, &["COMMAND", "DOCS", "nonexistent"], b"*0\r\n");
    assert!(matches!(decode(&raw.cmd(&["CLIENT", "INFO"])), V::Bulk(_)));
    assert!(raw.cmd(&["INFO", "server"]).starts_with(b"$"));

    // RESP3
    expect(&mut raw, &["HELLO", "3"], &hello_bytes(3, id));
    expect(&mut raw, &["GET", "missing"], NIL3);
    expect(&mut raw, &["CLIENT", "GETNAME"], NIL3);
    expect(
        &mut raw,
        &["CONFIG", "GET", "port"],
        format!("%1\r\n{config_port}").as_bytes(),
    );
    expect(&mut raw, &["CONFIG", "GET", "nosuch"], b"%0\r\n");
    expect(&mut raw, &["INFO", "nosuchsection"], b"=4\r\ntxt:\r\n");
    expect(
        &mut raw,
        &["COMMAND", "INFO", "nonexistent"],
        b"*1\r\n_\r\n",
    );
    expect(&mut raw, &["COMMAND", "DOCS", "nonexistent"], b"%0\r\n");
    let server_info = raw.cmd(&["INFO", "server"]);
    assert!(
        server_info.starts_with(b"=") && show(&server_info).contains("\\r\\ntxt:# Server\\r\\n"),
        "{}",
        show(&server_info)
    );
    match decode(&raw.cmd(&["CLIENT", "INFO"])) {
        V::Verbatim(format, body) => {
            assert_eq!(format, "txt");
            assert!(String::from_utf8_lossy(&body).contains(" resp=3 "));
        }
        other => panic!("CLIENT INFO in RESP3: {other:?}"),
    }
    // TIME stays an array of two bulk strings.
    match decode(&raw.cmd(&["TIME"])) {
        V::Array(items) => {
            assert_eq!(items.len(), 2);
            assert!(items.iter().all(|i| matches!(i, V::Bulk(_))));
        }
        other => panic!("TIME: {other:?}"),
    }
    // Back to RESP2.
    expect(&mut raw, &["HELLO", "2"], &hello_bytes(2, id));
    expect(&mut raw, &["GET", "missing"], NIL2);

    // The redis crate over RESP3.
    let mut con = server.client_resp3();
    let config: std::collections::HashMap<String, String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("port")
        .query(&mut con)
        .expect("CONFIG GET");
    assert_eq!(config.get("port"), Some(&port));
    let missing: Option<String> = redis::cmd("GET")
        .arg("missing")
        .query(&mut con)
        .expect("GET");
    assert_eq!(missing, None);
    let dict: redis::InfoDict = redis::cmd("INFO").query(&mut con).expect("INFO");
    assert_eq!(dict.get::<String>("server_name").as_deref(), Some("corekv"));
}

// ---------------------------------------------------------------------------------------------
// CLIENT
// ---------------------------------------------------------------------------------------------

/// CLIENT LIST / CLIENT INFO field names, in Valkey's order.
const CLIENT_FIELDS: &[&str] = &[
    "id",
    "addr",
    "laddr",
    "fd",
    "name",
    "age",
    "idle",
    "flags",
    "db",
    "sub",
    "psub",
    "ssub",
    "multi",
    "watch",
    "qbuf",
    "qbuf-free",
    "argv-mem",
    "multi-mem",
    "rbs",
    "rbp",
    "obl",
    "oll",
    "omem",
    "tot-mem",
    "events",
    "cmd",
    "user",
    "redir",
    "resp",
    "lib-name",
    "lib-ver",
    "tot-net-in",
    "tot-net-out",
    "tot-cmds",
];

fn assert_client_field_order(line: &str) {
    let names: Vec<String> = client_fields(line).into_iter().map(|(k, _)| k).collect();
    assert_eq!(names, CLIENT_FIELDS, "{line}");
}

#[test]
fn client_id_setname_and_getname() {
    let server = Server::start(1, &[]);
    let mut raw = server.raw();
    let first = client_id(&mut raw);
    let second = client_id(&mut server.raw());
    assert!(second > first, "ids increase: {first} then {second}");
    expect(&mut raw, &["CLIENT", "ID"], &int(first));
    expect(&mut raw, &["CLIENT", "ID", "x"], &arity("client|id"));
    expect(&mut raw, &["CLIENT", "GETNAME"], NIL2);
    expect(
        &mut raw,
        &["CLIENT", "GETNAME", "x"],
        &arity("client|getname"),
    );
    expect(&mut raw, &["CLIENT", "SETNAME", "myconn"], OK);
    expect(&mut raw, &["CLIENT", "GETNAME"], &bulk("myconn"));
    let bad_name = err("ERR Client names cannot contain spaces, newlines or special characters.");
    for bad in ["my conn", "a\nb", "é"] {
        expect(&mut raw, &["CLIENT", "SETNAME", bad], &bad_name);
    }
    expect(&mut raw, &["CLIENT", "GETNAME"], &bulk("myconn"));
    expect(&mut raw, &["CLIENT", "SETNAME"], &arity("client|setname"));
    expect(
        &mut raw,
        &["client", "setname", "a", "b"],
        &arity("client|setname"),
    );
    // An empty name clears it.
    expect(&mut raw, &["CLIENT", "SETNAME", ""], OK);
    expect(&mut raw, &["CLIENT", "GETNAME"], NIL2);
    expect(&mut raw, &["HELLO", "3"], &hello_bytes(3, first));
    expect(&mut raw, &["CLIENT", "GETNAME"], NIL3);
    expect(&mut raw, &["CLIENT", "SETNAME", "again"], OK);
    expect(&mut raw, &["CLIENT", "GETNAME"], &bulk("again"));
}

#[test]
fn client_list_and_info() {
    let server = Server::start(1, &[]);
    let mut a = server.raw();
    let mut b = server.raw();
    let mut c = server.raw();
    let (ia, ib, ic) = (client_id(&mut a), client_id(&mut b), client_id(&mut c));
    expect(&mut a, &["CLIENT", "SETNAME", "myconn"], OK);
    expect(&mut c, &["HELLO", "3"], &hello_bytes(3, ic));
    expect(&mut b, &["SELECT", "3"], OK);

    let reply = a.cmd(&["CLIENT", "INFO"]);
    let line = match decode(&reply) {
        V::Bulk(body) => String::from_utf8(body).expect("utf8"),
        other => panic!("CLIENT INFO: {other:?}"),
    };
    assert!(
        line.ends_with('\n') && line.lines().count() == 1,
        "{line:?}"
    );
    let line = line.trim_end();
    assert_client_field_order(line);
    assert_eq!(field_of(line, "id"), ia.to_string());
    assert_eq!(field_of(line, "name"), "myconn");
    assert_eq!(field_of(line, "cmd"), "client|info");
    assert_eq!(field_of(line, "resp"), "2");
    assert_eq!(field_of(line, "db"), "0");
    assert_eq!(field_of(line, "flags"), "N");
    assert_eq!(field_of(line, "user"), "default");
    assert_eq!(field_of(line, "multi"), "-1");
    assert_eq!(
        field_of(line, "laddr"),
        format!("127.0.0.1:{}", server.port)
    );
    assert!(field_of(line, "addr").starts_with("127.0.0.1:"));
    expect(&mut a, &["CLIENT", "INFO", "x"], &arity("client|info"));

    // RESP3: verbatim text.
    match decode(&c.cmd(&["CLIENT", "INFO"])) {
        V::Verbatim(format, body) => {
            assert_eq!(format, "txt");
            let line = String::from_utf8(body).expect("utf8");
            assert_client_field_order(line.trim_end());
            assert_eq!(field_of(line.trim_end(), "resp"), "3");
        }
        other => panic!("CLIENT INFO RESP3: {other:?}"),
    }

    // CLIENT LIST: every connection, one line each, same fields.
    let all = client_list(&mut a, &[]);
    assert_eq!(
        all.keys().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([ia, ib, ic])
    );
    for line in all.values() {
        assert_client_field_order(line);
    }
    assert_eq!(field_of(&all[&ia], "name"), "myconn");
    assert_eq!(field_of(&all[&ia], "cmd"), "client|list");
    assert_eq!(field_of(&all[&ib], "db"), "3");
    assert_eq!(field_of(&all[&ic], "resp"), "3");
    assert!(c.cmd(&["CLIENT", "LIST"]).starts_with(b"="));

    // TYPE filter.
    let normal = client_list(&mut a, &["TYPE", "normal"]);
    assert_eq!(
        normal.keys().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([ia, ib, ic])
    );
    for kind in ["master", "replica", "slave", "pubsub", "PUBSUB"] {
        expect(&mut a, &["CLIENT", "LIST", "TYPE", kind], EMPTY_BULK);
    }
    expect(
        &mut a,
        &["CLIENT", "LIST", "TYPE", "bad"],
        &err("ERR Unknown client type 'bad'"),
    );
    expect(&mut a, &["CLIENT", "LIST", "TYPE"], SYNTAX);
    expect(&mut a, &["CLIENT", "LIST", "foo"], SYNTAX);

    // ID filter.
    let only_b = client_list(&mut a, &["ID", &ib.to_string(), "999999"]);
    assert_eq!(only_b.keys().copied().collect::<Vec<_>>(), vec![ib]);
    let two = client_list(&mut a, &["ID", &ia.to_string(), &ic.to_string()]);
    assert_eq!(
        two.keys().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([ia, ic])
    );
    expect(&mut a, &["CLIENT", "LIST", "ID", "999999"], EMPTY_BULK);
    expect(&mut a, &["CLIENT", "LIST", "ID", "0"], EMPTY_BULK);
    expect(&mut a, &["CLIENT", "LIST", "ID", "-1"], EMPTY_BULK);
    expect(
        &mut a,
        &["CLIENT", "LIST", "ID", "abc"],
        &err("ERR Invalid client ID"),
    );
    expect(&mut a, &["CLIENT", "LIST", "ID"], SYNTAX);

    // A closed connection leaves the list.
    drop(b);
    assert!(eventually(PROMPTLY, || !client_list(&mut a, &[]).contains_key(&ib)));

    // tot-cmds counts the commands the connection ran before this one (Valkey: 2 after two
    // PINGs).
    let mut d = server.raw();
    expect(&mut d, &["PING"], b"+PONG\r\n");
    expect(&mut d, &["PING"], b"+PONG\r\n");
    let line = text_reply(&mut d, &["CLIENT", "INFO"]);
    assert_eq!(field_of(line.trim_end(), "tot-cmds"), "2", "{line}");
}

#[test]
fn client_list_shows_connections_on_every_shard() {
    let server = Server::start(2, &[]);
    let mut admin = server.raw();
    let mut others: Vec<(Raw, i64)> = Vec::new();
    let shard_clients = |raw: &mut Raw| -> Vec<u64> {
        let text = info(raw, &["shards"]);
        let lines: Vec<&str> = text
            .split("\r\n")
            .filter(|l| l.starts_with("shard"))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        lines
            .iter()
            .map(|l| {
                l.split([':', ','])
                    .find_map(|kv| kv.strip_prefix("clients="))
                    .expect("clients=")
                    .parse()
                    .expect("number")
            })
            .collect()
    };
    // The kernel spreads connections over the shards' listening sockets; open them until both
    // shards hold some.
    while others.len() < 64 {
        for _ in 0..4 {
            let mut r = server.raw();
            let id = client_id(&mut r);
            others.push((r, id));
        }
        if shard_clients(&mut admin).iter().all(|&n| n > 0) {
            break;
        }
    }
    let per_shard = shard_clients(&mut admin);
    assert!(
        per_shard.iter().all(|&n| n > 0),
        "connections never reached both shards: {per_shard:?}"
    );
    let admin_id = client_id(&mut admin);
    let mut expected: BTreeSet<i64> = others.iter().map(|(_, id)| *id).collect();
    expected.insert(admin_id);
    // Every connection, whichever shard it lives on, from any connection.
    let last = others.len() - 1;
    for which in [None, Some(0), Some(last)] {
        let raw = match which {
            None => &mut admin,
            Some(i) => &mut others[i].0,
        };
        let listed = client_list(raw, &[]);
        assert_eq!(listed.keys().copied().collect::<BTreeSet<_>>(), expected);
        for line in listed.values() {
            assert_client_field_order(line);
        }
    }
    let clients = info(&mut admin, &["clients"]);
    assert_eq!(
        info_field(&clients, "connected_clients"),
        Some(expected.len().to_string())
    );
    // The ID filter finds a connection on either shard.
    for (_, id) in others.iter().take(8) {
        let one = client_list(&mut admin, &["ID", &id.to_string()]);
        assert_eq!(one.keys().copied().collect::<Vec<_>>(), vec![*id]);
    }
}

#[test]
fn client_kill_filters_and_errors() {
    let server = Server::start(2, &[]);
    let mut killer = server.raw();
    let me = client_id(&mut killer);

    let no_such = err("ERR No such client");
    let bad_id = err("ERR client-id should be greater than 0");
    expect(&mut killer, &["CLIENT", "KILL", "1.2.3.4:5"], &no_such);
    expect(&mut killer, &["CLIENT", "KILL", "nonsense"], &no_such);
    expect(&mut killer, &["CLIENT", "KILL", "ID", "999999"], &int(0));
    for bad in ["abc", "0", "-5"] {
        expect(&mut killer, &["CLIENT", "KILL", "ID", bad], &bad_id);
    }
    expect(
        &mut killer,
        &["CLIENT", "KILL", "ADDR", "1.2.3.4:5"],
        &int(0),
    );
    expect(
        &mut killer,
        &["CLIENT", "KILL", "LADDR", "1.2.3.4:5"],
        &int(0),
    );
    expect(
        &mut killer,
        &["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "maybe"],
        SYNTAX,
    );
    expect(
        &mut killer,
        &["CLIENT", "KILL", "TYPE", "bad"],
        &err("ERR Unknown client type 'bad'"),
    );
    expect(
        &mut killer,
        &["CLIENT", "KILL", "USER", "nosuchuser"],
        &err("ERR No such user 'nosuchuser'"),
    );
    expect(
        &mut killer,
        &["CLIENT", "KILL", "USER", "default", "ID", "999999"],
        &int(0),
    );
    expect(&mut killer, &["CLIENT", "KILL", "badfilter", "x"], SYNTAX);
    expect(&mut killer, &["CLIENT", "KILL", "ID"], &no_such);
    expect(
        &mut killer,
        &["CLIENT", "KILL", "ID", "1", "SKIPME"],
        SYNTAX,
    );
    expect(
        &mut killer,
        &["CLIENT", "KILL", "MAXAGE", "999999"],
        &int(0),
    );
    expect(
        &mut killer,
        &["CLIENT", "KILL", "MAXAGE", "abc"],
        &err("ERR maxage is not an integer or out of range"),
    );
    let maxage_positive = err("ERR maxage should be greater than 0");
    expect(
        &mut killer,
        &["CLIENT", "KILL", "MAXAGE", "-1"],
        &maxage_positive,
    );
    expect(
        &mut killer,
        &["CLIENT", "KILL", "MAXAGE", "0", "ID", "999999"],
        &maxage_positive,
    );
    expect(&mut killer, &["CLIENT", "KILL"], &arity("client|kill"));

    // By ID: the victim's connection is closed.
    let mut victim = server.raw();
    let vid = client_id(&mut victim);
    expect(
        &mut killer,
        &["CLIENT", "KILL", "ID", &vid.to_string()],
        &int(1),
    );
    assert!(
        victim.closed_within(PROMPTLY),
        "killed by ID but still open"
    );

    // Old style, by address: +OK.
    let mut victim = server.raw();
    let vid = client_id(&mut victim);
    let addr = field_of(&client_list(&mut killer, &[])[&vid], "addr");
    expect(&mut killer, &["CLIENT", "KILL", &addr], OK);
    assert!(victim.closed_within(PROMPTLY), "killed by address but open");
    assert!(eventually(PROMPTLY, || !client_list(&mut killer, &[])
        .contains_key(&vid)));
    expect(&mut killer, &["CLIENT", "KILL", &addr], &no_such);

    // ADDR filter.
    let mut victim = server.raw();
    let vid = client_id(&mut victim);
    let addr = field_of(&client_list(&mut killer, &[])[&vid], "addr");
    expect(&mut killer, &["CLIENT", "KILL", "ADDR", &addr], &int(1));
    assert!(victim.closed_within(PROMPTLY), "killed by ADDR but open");

    // Own id: SKIPME defaults to yes.
    expect(
        &mut killer,
        &["CLIENT", "KILL", "ID", &me.to_string()],
        &int(0),
    );
    expect(&mut killer, &["PING"], b"+PONG\r\n");

    // LADDR (everyone connected to this port) with SKIPME yes: all the others.
    let mut v1 = server.raw();
    let mut v2 = server.raw();
    client_id(&mut v1);
    client_id(&mut v2);
    assert!(eventually(PROMPTLY, || client_list(&mut killer, &[]).len() == 3));
    let laddr = format!("127.0.0.1:{}", server.port);
    expect(
        &mut killer,
        &["CLIENT", "KILL", "LADDR", &laddr, "SKIPME", "yes"],
        &int(2),
    );
    assert!(v1.closed_within(PROMPTLY));
    assert!(v2.closed_within(PROMPTLY));
    assert!(eventually(PROMPTLY, || client_list(&mut killer, &[]).len() == 1));

    // TYPE normal.
    let mut victim = server.raw();
    client_id(&mut victim);
    expect(&mut killer, &["CLIENT", "KILL", "TYPE", "normal"], &int(1));
    assert!(victim.closed_within(PROMPTLY));
    assert!(eventually(PROMPTLY, || client_list(&mut killer, &[]).len() == 1));

    // MAXAGE: once the victim is at least a second old.
    let mut victim = server.raw();
    let vid = client_id(&mut victim);
    assert!(eventually(PROMPTLY, || {
        let list = client_list(&mut killer, &["ID", &vid.to_string()]);
        list.get(&vid)
            .is_some_and(|l| field_of(l, "age").parse::<u64>().unwrap_or(0) >= 1)
    }));
    expect(&mut killer, &["CLIENT", "KILL", "MAXAGE", "1"], &int(1));
    assert!(victim.closed_within(PROMPTLY));

    // Killing yourself with SKIPME no: the reply comes, then the connection closes.
    killer.send(&common::resp(&[
        b"CLIENT",
        b"KILL",
        b"ID",
        me.to_string().as_bytes(),
        b"SKIPME",
        b"no",
    ]));
    let (bytes, closed) = drain(&mut killer.stream, PROMPTLY);
    assert_eq!(show(&bytes), show(b":1\r\n"));
    assert!(closed, "killing yourself must close the connection");
    expect(&mut server.raw(), &["PING"], b"+PONG\r\n");
}

/// Valkey's CLIENT HELP lines, in order.
const VALKEY_CLIENT_HELP: &[&str] = &[
    "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "CACHING (YES|NO)",
    "    Enable/disable tracking of the keys for next command in OPTIN/OPTOUT modes.",
    "CAPA <option> [options...]",
    "    The client claims its some capability options. Options are:",
    "    * REDIRECT",
    "      The client can handle redirection during primary and replica failover in standalone mode.",
    "GETREDIR",
    "    Return the client ID we are redirecting to when tracking is enabled.",
    "GETNAME",
    "    Return the name of the current connection.",
    "ID",
    "    Return the ID of the current connection.",
    "INFO",
    "    Return information about the current client connection.",
    "KILL <ip:port>",
    "    Kill connection made from <ip:port>.",
    "KILL <option> <value> [<option> <value> [...]]",
    "    Kill connections. Options are:",
    "    * ADDR (<ip:port>|<unixsocket>:0)",
    "      Kill connections made from the specified address",
    "    * LADDR (<ip:port>|<unixsocket>:0)",
    "      Kill connections made to specified local address",
    "    * TYPE (NORMAL|PRIMARY|REPLICA|PUBSUB)",
    "      Kill connections by type.",
    "    * USER <username>",
    "      Kill connections authenticated by <username>.",
    "    * SKIPME (YES|NO)",
    "      Skip killing current connection (default: yes).",
    "    * ID <client-id>",
    "      Kill connections by client id.",
    "    * MAXAGE <maxage>",
    "      Kill connections older than the specified age.",
    "LIST [options ...]",
    "    Return information about client connections. Options:",
    "    * TYPE (NORMAL|PRIMARY|REPLICA|PUBSUB)",
    "      Return clients of specified type.",
    "UNPAUSE",
    "    Stop the current client pause, resuming traffic.",
    "PAUSE <timeout> [WRITE|ALL]",
    "    Suspend all, or just write, clients for <timeout> milliseconds.",
    "REPLY (ON|OFF|SKIP)",
    "    Control the replies sent to the current connection.",
    "SETNAME <name>",
    "    Assign the name <name> to the current connection.",
    "SETINFO <option> <value>",
    "    Set client meta attr. Options are:",
    "    * LIB-NAME: the client lib name.",
    "    * LIB-VER: the client lib version.",
    "UNBLOCK <clientid> [TIMEOUT|ERROR]",
    "    Unblock the specified blocked client.",
    "TRACKING (ON|OFF) [REDIRECT <id>] [BCAST] [PREFIX <prefix> [...]]",
    "         [OPTIN] [OPTOUT] [NOLOOP]",
    "    Control server assisted client side caching.",
    "TRACKINGINFO",
    "    Report tracking status for the current connection.",
    "NO-EVICT (ON|OFF)",
    "    Protect current client connection from eviction.",
    "NO-TOUCH (ON|OFF)",
    "    Will not touch LRU/LFU stats when this mode is on.",
    "HELP",
    "    Print this help.",
];

/// The simple-string lines of a HELP reply.
fn help_lines(raw: &mut Raw, args: &[&str]) -> Vec<String> {
    let reply = raw.cmd(args);
    decode(&reply)
        .items()
        .iter()
        .map(|v| match v {
            V::Simple(s) => s.clone(),
            other => panic!("{args:?}: HELP line is not a simple string: {other:?}"),
        })
        .collect()
}

/// True if `part` appears in `whole` in the same order.
fn is_subsequence(part: &[String], whole: &[&str]) -> bool {
    let mut it = whole.iter();
    part.iter().all(|p| it.any(|w| w == p))
}

#[test]
fn client_setinfo_no_evict_and_help() {
    let server = Server::start(1, &[]);
    let mut raw = server.raw();
    expect(&mut raw, &["CLIENT", "SETINFO", "lib-name", "corekv"], OK);
    expect(&mut raw, &["CLIENT", "SETINFO", "LIB-NAME", "corekv"], OK);
    expect(&mut raw, &["CLIENT", "SETINFO", "lib-ver", "1.2.3"], OK);
    expect(
        &mut raw,
        &["CLIENT", "SETINFO", "lib-name", "core kv"],
        &err("ERR lib-name cannot contain spaces, newlines or special characters."),
    );
    expect(
        &mut raw,
        &["CLIENT", "SETINFO", "lib-ver", "1 2"],
        &err("ERR lib-ver cannot contain spaces, newlines or special characters."),
    );
    expect(
        &mut raw,
        &["CLIENT", "SETINFO", "badattr", "x"],
        &err("ERR Unrecognized option 'badattr'"),
    );
    expect(
        &mut raw,
        &["CLIENT", "SETINFO", "lib-name"],
        &arity("client|setinfo"),
    );
    expect(
        &mut raw,
        &["CLIENT", "SETINFO", "lib-name", "a", "b"],
        &arity("client|setinfo"),
    );
    let line = text_reply(&mut raw, &["CLIENT", "INFO"]);
    assert_eq!(field_of(line.trim_end(), "lib-name"), "corekv");
    assert_eq!(field_of(line.trim_end(), "lib-ver"), "1.2.3");
    expect(&mut raw, &["CLIENT", "SETINFO", "lib-name", ""], OK);
    let line = text_reply(&mut raw, &["CLIENT", "INFO"]);
    assert_eq!(field_of(line.trim_end(), "lib-name"), "");

    // The redis crate announces itself with CLIENT SETINFO when it connects.
    let mut con = server.client();
    let info_line: String = redis::cmd("CLIENT")
        .arg("INFO")
        .query(&mut con)
        .expect("CLIENT INFO");
    assert_eq!(field_of(info_line.trim_end(), "lib-name"), "redis-rs");

    expect(&mut raw, &["CLIENT", "NO-EVICT", "on"], OK);
    expect(&mut raw, &["CLIENT", "NO-EVICT", "off"], OK);
    expect(&mut raw, &["CLIENT", "NO-EVICT", "ON"], OK);
    expect(&mut raw, &["CLIENT", "NO-EVICT", "bad"], SYNTAX);
    expect(&mut raw, &["CLIENT", "NO-EVICT"], &arity("client|no-evict"));
    expect(&mut raw, &["CLIENT", "NO-EVICT", "off"], OK);

    let help = help_lines(&mut raw, &["CLIENT", "HELP"]);
    assert_eq!(help[0], VALKEY_CLIENT_HELP[0]);
    assert_eq!(
        &help[help.len() - 2..],
        &["HELP".to_string(), "    Print this help.".to_string()]
    );
    assert!(
        is_subsequence(&help, VALKEY_CLIENT_HELP),
        "CLIENT HELP lines are not Valkey's, in Valkey's order: {help:#?}"
    );
    for sub in [
        "GETNAME",
        "ID",
        "INFO",
        "SETNAME <name>",
        "NO-EVICT (ON|OFF)",
    ] {
        assert!(
            help.iter().any(|l| l == sub),
            "{sub} missing from {help:#?}"
        );
    }
    expect(&mut raw, &["CLIENT", "HELP", "x"], &arity("client|help"));
}

// ---------------------------------------------------------------------------------------------
// INFO
// ---------------------------------------------------------------------------------------------

#[test]
fn info_sections_keyspace_and_framing() {
    let server = Server::start(2, &[]);
    let mut raw = server.raw();
    for k in ["a", "b", "c", "d", "e", "f"] {
        expect(&mut raw, &["SET", k, "1"], OK);
    }
    expect(&mut raw, &["SET", "t", "1", "EX", "1000"], OK);
    expect(&mut raw, &["SELECT", "3"], OK);
    expect(&mut raw, &["SET", "x", "1", "EX", "1000"], OK);
    expect(&mut raw, &["SELECT", "0"], OK);

    let reply = raw.cmd(&["INFO"]);
    assert!(reply.starts_with(b"$"), "{}", show(&reply[..40]));
    let text = decode(&reply).text();
    assert_eq!(
        section_headers(&text),
        [
            "Server",
            "Clients",
            "Memory",
            "Persistence",
            "Stats",
            "Replication",
            "CPU",
            "Modules",
            "Errorstats",
            "Cluster",
            "Keyspace",
            "Shards"
        ]
    );
    // CRLF lines, one blank line between sections, none at the end.
    assert!(text.starts_with("# Server\r\n"), "{text}");
    assert!(text.ends_with("\r\n") && !text.ends_with("\r\n\r\n"));
    assert!(!text.replace("\r\n", "").contains('\n'));
    for part in text.split("\r\n\r\n") {
        assert!(part.starts_with("# "), "section without header: {part:?}");
    }
    assert_eq!(info_field(&text, "redis_version").as_deref(), Some("7.2.4"));
    assert_eq!(info_field(&text, "server_name").as_deref(), Some("corekv"));
    assert_eq!(info_field(&text, "tcp_port"), Some(server.port.to_string()));
    assert_eq!(
        info_field(&text, "process_id"),
        Some(server.pid().to_string())
    );
    assert_eq!(info_field(&text, "maxclients").as_deref(), Some("10000"));
    assert_eq!(info_field(&text, "role").as_deref(), Some("master"));
    assert_eq!(info_field(&text, "cluster_enabled").as_deref(), Some("0"));
    assert!(eventually(PROMPTLY, || info_field(
        &info(&mut raw, &["clients"]),
        "connected_clients"
    )
    .as_deref()
        == Some("1")));

    // Keyspace, summed over the shards.
    let keyspace = info(&mut raw, &["keyspace"]);
    let lines: Vec<&str> = keyspace.split("\r\n").collect();
    assert_eq!(lines.len(), 4, "{keyspace:?}");
    assert_eq!(lines[0], "# Keyspace");
    let ttl_of = |line: &str, prefix: &str| -> i64 {
        line.strip_prefix(prefix)
            .unwrap_or_else(|| panic!("{line:?} does not start with {prefix:?}"))
            .parse()
            .expect("avg_ttl")
    };
    let ttl0 = ttl_of(lines[1], "db0:keys=7,expires=1,avg_ttl=");
    let ttl3 = ttl_of(lines[2], "db3:keys=1,expires=1,avg_ttl=");
    // avg_ttl is an estimate (Valkey shows 0 until its expiry cycle has sampled the keys).
    for ttl in [ttl0, ttl3] {
        assert!((0..=1_000_000).contains(&ttl), "avg_ttl {ttl}");
    }
    assert_eq!(lines[3], "");

    // One line per shard.
    let shards = info(&mut raw, &["shards"]);
    let shard_lines: Vec<&str> = shards
        .split("\r\n")
        .filter(|l| l.starts_with("shard"))
        .collect();
    assert_eq!(shard_lines.len(), 2, "{shards}");
    assert!(shard_lines[0].starts_with("shard0:") && shard_lines[1].starts_with("shard1:"));
    let keys: u64 = shard_lines
        .iter()
        .map(|l| {
            l.split([':', ','])
                .find_map(|kv| kv.strip_prefix("keys="))
                .expect("keys=")
                .parse::<u64>()
                .expect("number")
        })
        .sum();
    assert_eq!(keys, 8);

    // Section selection.
    expect(&mut raw, &["INFO", "nosuchsection"], EMPTY_BULK);
    assert!(info(&mut raw, &["SERVER"]).starts_with("# Server\r\nredis_version:7.2.4\r\n"));
    assert_eq!(
        section_headers(&info(&mut raw, &["server", "clients"])),
        ["Server", "Clients"]
    );
    assert_eq!(
        section_headers(&info(&mut raw, &["keyspace", "nosuch"])),
        ["Keyspace"]
    );
    for all in ["all", "everything"] {
        let headers = section_headers(&info(&mut raw, &[all]));
        let pos = |name: &str| headers.iter().position(|h| h == name);
        assert!(pos("Commandstats").is_some(), "{all}: {headers:?}");
        assert!(pos("Modules") < pos("Commandstats"));
        assert!(pos("Commandstats") < pos("Errorstats"));
        assert!(pos("Errorstats") < pos("Keyspace"));
    }
    expect(&mut raw, &["INFO", "modules"], b"$11\r\n# Modules\r\n\r\n");
    expect(
        &mut raw,
        &["INFO", "cluster"],
        b"$30\r\n# Cluster\r\ncluster_enabled:0\r\n\r\n",
    );

    // RESP3: verbatim.
    raw.cmd(&["HELLO", "3"]);
    expect(&mut raw, &["INFO", "nosuchsection"], b"=4\r\ntxt:\r\n");
    let reply = raw.cmd(&["INFO", "keyspace"]);
    assert!(reply.starts_with(b"="), "{}", show(&reply));
    match decode(&reply) {
        V::Verbatim(format, body) => {
            assert_eq!(format, "txt");
            let body = String::from_utf8(body).expect("utf8");
            assert!(
                body.starts_with("# Keyspace\r\ndb0:keys=7,expires=1,avg_ttl="),
                "{body:?}"
            );
        }
        other => panic!("INFO keyspace in RESP3: {other:?}"),
    }

    // The redis crate reads it.
    let mut con = server.client();
    let dict: redis::InfoDict = redis::cmd("INFO").query(&mut con).expect("INFO");
    assert_eq!(
        dict.get::<String>("redis_version").as_deref(),
        Some("7.2.4")
    );
    assert_eq!(dict.get::<String>("server_name").as_deref(), Some("corekv"));
}

/// `cmdstat_<name>` lines: name -> (calls, rejected_calls, failed_calls).
fn commandstats(raw: &mut Raw) -> BTreeMap<String, (u64, u64, u64)> {
    let text = info(raw, &["commandstats"]);
    let mut lines = text.split("\r\n");
    assert_eq!(lines.next(), Some("# Commandstats"));
    let mut out = BTreeMap::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, rest) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
            .unwrap_or_else(|| panic!("bad commandstats line {line:?}"));
        let fields: Vec<(&str, &str)> = rest
            .split(',')
            .map(|kv| kv.split_once('=').expect("k=v"))
            .collect();
        let names: Vec<&str> = fields.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            names,
            [
                "calls",
                "usec",
                "usec_per_call",
                "rejected_calls",
                "failed_calls"
            ],
            "{line}"
        );
        let per_call = fields[2].1;
        assert!(
            per_call.split_once('.').is_some_and(|(_, d)| d.len() == 2),
            "usec_per_call with two decimals: {line}"
        );
        let n = |i: usize| fields[i].1.parse::<u64>().expect("number");
        out.insert(name.to_string(), (n(0), n(3), n(4)));
    }
    out
}

#[test]
fn info_commandstats_errorstats_and_resetstat() {
    let server = Server::start(2, &[]);
    let mut raw = server.raw();
    expect(&mut raw, &["CONFIG", "RESETSTAT"], OK);
    expect(&mut raw, &["SET", "k", "v"], OK);
    expect(&mut raw, &["GET", "k"], &bulk("v"));
    expect(&mut raw, &["GET"], &arity("get"));
    expect(&mut raw, &["GET", "a", "b"], &arity("get"));
    expect(
        &mut raw,
        &["SELECT", "99"],
        &err("ERR DB index is out of range"),
    );
    expect(
        &mut raw,
        &["INCR", "k"],
        &err("ERR value is not an integer or out of range"),
    );
    expect(&mut raw, &["nosuch"], &unknown("nosuch", ""));
    expect(&mut raw, &["CLIENT"], &arity("client"));
    expect(&mut raw, &["CONFIG", "GET"], &arity("config|get"));
    expect(
        &mut raw,
        &["CLIENT", "foo"],
        &err("ERR unknown subcommand 'foo'. Try CLIENT HELP."),
    );
    // Valkey: 5 commands ran (RESETSTAT SET GET SELECT INCR); refused ones are not processed.
    let stats = info(&mut raw, &["stats"]);

    let cs = commandstats(&mut raw);
    assert_eq!(cs.get("set"), Some(&(1, 0, 0)), "{cs:?}");
    assert_eq!(cs.get("get"), Some(&(1, 2, 0)), "{cs:?}");
    assert_eq!(cs.get("select"), Some(&(1, 0, 1)), "{cs:?}");
    assert_eq!(cs.get("incr"), Some(&(1, 0, 1)), "{cs:?}");
    assert_eq!(cs.get("config|get"), Some(&(0, 1, 0)), "{cs:?}");
    assert_eq!(cs.get("config|resetstat"), Some(&(1, 0, 0)), "{cs:?}");
    assert_eq!(cs.get("info"), Some(&(1, 0, 0)), "{cs:?}");
    assert!(!cs.contains_key("nosuch"));

    expect(
        &mut raw,
        &["INFO", "errorstats"],
        b"$37\r\n# Errorstats\r\nerrorstat_ERR:count=8\r\n\r\n",
    );

    // RESETSTAT zeroes everything; only itself is counted afterwards.
    expect(&mut raw, &["CONFIG", "RESETSTAT"], OK);
    let after = commandstats(&mut raw);
    assert_eq!(
        after.into_iter().collect::<Vec<_>>(),
        vec![("config|resetstat".to_string(), (1, 0, 0))]
    );
    expect(
        &mut raw,
        &["INFO", "errorstats"],
        b"$14\r\n# Errorstats\r\n\r\n",
    );
    let reset_stats = info(&mut raw, &["stats"]);
    assert_eq!(
        info_field(&reset_stats, "total_commands_processed").as_deref(),
        Some("3")
    );
    assert_eq!(
        info_field(&reset_stats, "total_error_replies").as_deref(),
        Some("0")
    );
    expect(
        &mut raw,
        &["CONFIG", "RESETSTAT", "x"],
        &arity("config|resetstat"),
    );

    // Checked together at the end: where corekv differed from Valkey 8.0.1.
    let mut diffs = Diffs::default();
    diffs.check(
        "total_error_replies",
        info_field(&stats, "total_error_replies"),
        Some("8".to_string()),
    );
    diffs.check(
        "cmdstat_client after a bare CLIENT (calls, rejected_calls, failed_calls)",
        cs.get("client").copied(),
        Some((0, 1, 0)),
    );
    diffs.check(
        "total_commands_processed (commands refused before running are not processed)",
        info_field(&stats, "total_commands_processed"),
        Some("5".to_string()),
    );
    diffs.assert_none();
}

// ---------------------------------------------------------------------------------------------
// CONFIG
// ---------------------------------------------------------------------------------------------

/// CONFIG GET as name -> value (either protocol).
fn config_get(raw: &mut Raw, patterns: &[&str]) -> BTreeMap<String, String> {
    let mut args = vec!["CONFIG", "GET"];
    args.extend_from_slice(patterns);
    let reply = raw.cmd(&args);
    match decode(&reply) {
        V::Array(items) => {
            assert!(items.len() % 2 == 0);
            items
                .chunks(2)
                .map(|p| (p[0].text(), p[1].text()))
                .collect()
        }
        V::Map(pairs) => pairs.iter().map(|(k, v)| (k.text(), v.text())).collect(),
        other => panic!("CONFIG GET {patterns:?}: {other:?}"),
    }
}

const DIRECTIVES: &[&str] = &[
    "port",
    "bind",
    "dir",
    "databases",
    "requirepass",
    "protected-mode",
    "maxclients",
    "proto-max-bulk-len",
    "client-query-buffer-limit",
    "loglevel",
    "logfile",
    "shards",
    "enable-debug-command",
    "timeout",
    "tcp-keepalive",
    "hz",
];

#[test]
fn config_get_patterns_and_values() {
    let server = Server::start(1, &[]);
    let mut raw = server.raw();
    let port = server.port.to_string();
    expect(
        &mut raw,
        &["CONFIG", "GET", "port"],
        format!("*2\r\n$4\r\nport\r\n${}\r\n{port}\r\n", port.len()).as_bytes(),
    );
    // A literal name echoes the case it was asked in.
    expect(
        &mut raw,
        &["CONFIG", "GET", "PORT"],
        format!("*2\r\n$4\r\nPORT\r\n${}\r\n{port}\r\n", port.len()).as_bytes(),
    );
    expect(&mut raw, &["CONFIG", "GET", "nosuch"], b"*0\r\n");
    // Each parameter once, however often it matches.
    assert_eq!(config_get(&mut raw, &["port", "port"]).len(), 1);
    assert_eq!(
        raw.cmd(&["CONFIG", "GET", "port", "port"]).first(),
        Some(&b'*')
    );
    assert_eq!(
        show(&raw.cmd(&["CONFIG", "GET", "port", "p*t"])),
        show(format!("*2\r\n$4\r\nport\r\n${}\r\n{port}\r\n", port.len()).as_bytes())
    );

    let everything = config_get(&mut raw, &["*"]);
    for d in DIRECTIVES {
        assert!(
            everything.contains_key(*d),
            "CONFIG GET * lacks {d}: {everything:?}"
        );
    }
    let max = config_get(&mut raw, &["*max*"]);
    assert!(max.contains_key("maxclients"), "{max:?}");
    assert!(max.keys().all(|k| glob("*max*", k)), "{max:?}");
    assert_eq!(
        max.len(),
        everything.keys().filter(|k| glob("*max*", k)).count()
    );

    let two = config_get(&mut raw, &["maxclients", "timeout"]);
    assert_eq!(
        two,
        BTreeMap::from([
            ("maxclients".to_string(), "10000".to_string()),
            ("timeout".to_string(), "0".to_string())
        ])
    );
    let expected_defaults = [
        ("databases", "16"),
        ("maxclients", "10000"),
        ("timeout", "0"),
        ("tcp-keepalive", "300"),
        ("hz", "10"),
        ("protected-mode", "yes"),
        ("requirepass", ""),
        ("loglevel", "notice"),
        ("proto-max-bulk-len", "536870912"),
        ("client-query-buffer-limit", "1073741824"),
        ("shards", "1"),
        ("enable-debug-command", "local"),
    ];
    for (name, value) in expected_defaults {
        assert_eq!(
            everything.get(name).map(String::as_str),
            Some(value),
            "{name}"
        );
    }
    assert_eq!(everything["port"], port);
    assert_eq!(everything["logfile"], server.log.display().to_string());
    let dir = std::fs::canonicalize(server.data_dir()).expect("canonical dir");
    assert_eq!(PathBuf::from(&everything["dir"]), dir);
    expect(&mut raw, &["CONFIG", "GET"], &arity("config|get"));

    // RESP3: a map.
    raw.cmd(&["HELLO", "3"]);
    expect(
        &mut raw,
        &["CONFIG", "GET", "PORT"],
        format!("%1\r\n$4\r\nPORT\r\n${}\r\n{port}\r\n", port.len()).as_bytes(),
    );
    expect(&mut raw, &["CONFIG", "GET", "nosuch"], b"%0\r\n");
    assert_eq!(config_get(&mut raw, &["maxclients", "timeout"]), two);

    // The redis crate over RESP2.
    let mut con = server.client();
    let pairs: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("hz")
        .query(&mut con)
        .expect("CONFIG GET");
    assert_eq!(pairs, ["hz", "10"]);
}

#[test]
fn config_set_validates_and_applies_atomically() {
    let server = Server::start(1, &[]);
    let mut raw = server.raw();
    let get = |raw: &mut Raw, name: &str| config_get(raw, &[name]).remove(name).expect(name);
    let failed = |name: &str, why: &str| {
        err(&format!(
            "ERR CONFIG SET failed (possibly related to argument '{name}') - {why}"
        ))
    };

    expect(&mut raw, &["CONFIG", "SET", "hz", "20"], OK);
    expect(
        &mut raw,
        &["CONFIG", "GET", "hz"],
        b"*2\r\n$2\r\nhz\r\n$2\r\n20\r\n",
    );
    expect(&mut raw, &["CONFIG", "SET", "HZ", "10"], OK);
    assert_eq!(get(&mut raw, "hz"), "10");
    // hz is clamped, not refused.
    expect(&mut raw, &["CONFIG", "SET", "hz", "0"], OK);
    assert_eq!(get(&mut raw, "hz"), "1");
    expect(&mut raw, &["CONFIG", "SET", "hz", "100000"], OK);
    assert_eq!(get(&mut raw, "hz"), "500");
    expect(&mut raw, &["CONFIG", "SET", "hz", "10"], OK);
    expect(
        &mut raw,
        &[
            "CONFIG",
            "SET",
            "timeout",
            "30",
            "tcp-keepalive",
            "60",
            "loglevel",
            "warning",
        ],
        OK,
    );
    assert_eq!(get(&mut raw, "timeout"), "30");
    assert_eq!(get(&mut raw, "tcp-keepalive"), "60");
    assert_eq!(get(&mut raw, "loglevel"), "warning");
    expect(&mut raw, &["CONFIG", "SET", "protected-mode", "no"], OK);
    assert_eq!(get(&mut raw, "protected-mode"), "no");
    expect(&mut raw, &["CONFIG", "SET", "protected-mode", "YES"], OK);
    assert_eq!(get(&mut raw, "protected-mode"), "yes");
    expect(
        &mut raw,
        &["CONFIG", "SET", "proto-max-bulk-len", "2mb"],
        OK,
    );
    assert_eq!(get(&mut raw, "proto-max-bulk-len"), "2097152");

    // Bad values.
    expect(
        &mut raw,
        &["CONFIG", "SET", "protected-mode", "1"],
        &failed("protected-mode", "argument must be 'yes' or 'no'"),
    );
    for (name, value) in [
        ("maxclients", "abc"),
        ("timeout", "abc"),
        ("maxclients", "1.5"),
    ] {
        expect(
            &mut raw,
            &["CONFIG", "SET", name, value],
            &failed(name, "argument couldn't be parsed into an integer"),
        );
    }
    for value in ["0", "5000000000"] {
        expect(
            &mut raw,
            &["CONFIG", "SET", "maxclients", value],
            &failed(
                "maxclients",
                "argument must be between 1 and 4294967295 inclusive",
            ),
        );
    }
    expect(
        &mut raw,
        &["CONFIG", "SET", "proto-max-bulk-len", "1"],
        &failed(
            "proto-max-bulk-len",
            "argument must be between 1048576 and 9223372036854775807 inclusive",
        ),
    );
    expect(
        &mut raw,
        &["CONFIG", "SET", "proto-max-bulk-len", "abc"],
        &failed("proto-max-bulk-len", "argument must be a memory value"),
    );
    expect(
        &mut raw,
        &["CONFIG", "SET", "loglevel", "bad"],
        &failed(
            "loglevel",
            "argument(s) must be one of the following: debug, verbose, notice, warning, nothing",
        ),
    );
    // Unknown and start-up-only directives.
    let unknown_option = err("ERR Unknown option or number of arguments for CONFIG SET - 'nosuch'");
    expect(&mut raw, &["CONFIG", "SET", "nosuch", "1"], &unknown_option);
    expect(
        &mut raw,
        &["CONFIG", "SET", "nosuch", "1", "hz", "11"],
        &unknown_option,
    );
    expect(
        &mut raw,
        &["CONFIG", "SET", "hz", "11", "nosuch", "1"],
        &unknown_option,
    );
    for (name, value) in [
        ("databases", "32"),
        ("logfile", "/tmp/x.log"),
        ("shards", "4"),
        ("enable-debug-command", "yes"),
    ] {
        expect(
            &mut raw,
            &["CONFIG", "SET", name, value],
            &failed(name, "can't set immutable config"),
        );
    }
    // Duplicates, odd argument counts.
    expect(
        &mut raw,
        &["CONFIG", "SET", "hz", "10", "hz", "11"],
        &failed("hz", "duplicate parameter"),
    );
    expect(
        &mut raw,
        &["CONFIG", "SET", "hz", "10", "HZ", "11"],
        &failed("HZ", "duplicate parameter"),
    );
    expect(
        &mut raw,
        &["CONFIG", "SET", "hz", "10", "maxclients"],
        SYNTAX,
    );
    expect(&mut raw, &["CONFIG", "SET", "hz"], &arity("config|set"));
    expect(&mut raw, &["CONFIG", "SET"], &arity("config|set"));

    // All or nothing: nothing changed by the failed multi-sets above or below.
    assert_eq!(get(&mut raw, "hz"), "10");
    expect(
        &mut raw,
        &["CONFIG", "SET", "hz", "15", "maxclients", "0"],
        &failed(
            "maxclients",
            "argument must be between 1 and 4294967295 inclusive",
        ),
    );
    assert_eq!(get(&mut raw, "hz"), "10");
    expect(
        &mut raw,
        &["CONFIG", "SET", "timeout", "5", "protected-mode", "maybe"],
        &failed("protected-mode", "argument must be 'yes' or 'no'"),
    );
    assert_eq!(get(&mut raw, "timeout"), "30");
    expect(
        &mut raw,
        &["CONFIG", "SET", "maxclients", "123", "databases", "4"],
        &failed("databases", "can't set immutable config"),
    );
    assert_eq!(get(&mut raw, "maxclients"), "10000");
    assert_eq!(get(&mut raw, "databases"), "16");

    // requirepass at run time: new connections must authenticate, this one stays in.
    expect(&mut raw, &["CONFIG", "SET", "requirepass", "pw"], OK);
    expect(
        &mut server.raw(),
        &["PING"],
        &err("NOAUTH Authentication required."),
    );
    expect(&mut raw, &["PING"], b"+PONG\r\n");
    expect(&mut raw, &["CONFIG", "SET", "requirepass", ""], OK);
    expect(&mut server.raw(), &["PING"], b"+PONG\r\n");

    let help = help_lines(&mut raw, &["CONFIG", "HELP"]);
    let valkey = [
        "CONFIG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        "GET <pattern>",
        "    Return parameters matching the glob-like <pattern> and their values.",
        "SET <directive> <value>",
        "    Set the configuration <directive> to <value>.",
        "RESETSTAT",
        "    Reset statistics reported by the INFO command.",
        "REWRITE",
        "    Rewrite the configuration file.",
        "HELP",
        "    Print this help.",
    ];
    assert!(is_subsequence(&help, &valkey), "{help:#?}");
    assert_eq!(help[0], valkey[0]);
    expect(&mut raw, &["CONFIG", "HELP", "x"], &arity("config|help"));
}

#[test]
fn config_set_maxclients_takes_effect_at_once() {
    let server = Server::start(2, &[]);
    let mut admin = server.raw();
    let mut held: Vec<Raw> = (0..3).map(|_| server.raw()).collect();
    for r in held.iter_mut() {
        expect(r, &["PING"], b"+PONG\r\n");
    }
    // Wait for the harness's start-up probes to be gone: exactly our four clients.
    assert!(eventually(PROMPTLY, || info_field(
        &info(&mut admin, &["clients"]),
        "connected_clients"
    )
    .as_deref()
        == Some("4")));
    expect(&mut admin, &["CONFIG", "SET", "maxclients", "4"], OK);
    assert_eq!(
        info_field(&info(&mut admin, &["clients"]), "maxclients").as_deref(),
        Some("4")
    );

    // The next connection, on whichever shard, is turned away.
    for _ in 0..4 {
        let mut refused = server.raw();
        assert_eq!(
            show(&refused.reply()),
            show(b"-ERR max number of clients reached\r\n")
        );
        assert!(refused.closed_within(PROMPTLY));
    }
    assert_eq!(
        info_field(&info(&mut admin, &["stats"]), "rejected_connections").as_deref(),
        Some("4")
    );
    // Those already in keep working.
    for r in held.iter_mut() {
        expect(r, &["PING"], b"+PONG\r\n");
    }

    // A slot frees up when someone leaves.
    drop(held.pop());
    assert!(eventually(PROMPTLY, || try_ping(server.port)));

    expect(&mut admin, &["CONFIG", "SET", "maxclients", "10000"], OK);
    let extra: Vec<Raw> = (0..4).map(|_| server.raw()).collect();
    for mut r in extra {
        expect(&mut r, &["PING"], b"+PONG\r\n");
    }
}

// ---------------------------------------------------------------------------------------------
// COMMAND
// ---------------------------------------------------------------------------------------------

const GET_INFO_RESP2: &[u8] = b"*1\r\n*10\r\n$3\r\nget\r\n:2\r\n*2\r\n+readonly\r\n+fast\r\n:1\r\n:1\r\n:1\r\n*3\r\n+@read\r\n+@string\r\n+@fast\r\n*0\r\n*1\r\n*6\r\n$5\r\nflags\r\n*2\r\n+RO\r\n+access\r\n$12\r\nbegin_search\r\n*4\r\n$4\r\ntype\r\n$5\r\nindex\r\n$4\r\nspec\r\n*2\r\n$5\r\nindex\r\n:1\r\n$9\r\nfind_keys\r\n*4\r\n$4\r\ntype\r\n$5\r\nrange\r\n$4\r\nspec\r\n*6\r\n$7\r\nlastkey\r\n:0\r\n$7\r\nkeystep\r\n:1\r\n$5\r\nlimit\r\n:0\r\n*0\r\n";
const GET_INFO_RESP3: &[u8] = b"*1\r\n*10\r\n$3\r\nget\r\n:2\r\n~2\r\n+readonly\r\n+fast\r\n:1\r\n:1\r\n:1\r\n~3\r\n+@read\r\n+@string\r\n+@fast\r\n~0\r\n~1\r\n%3\r\n$5\r\nflags\r\n~2\r\n+RO\r\n+access\r\n$12\r\nbegin_search\r\n%2\r\n$4\r\ntype\r\n$5\r\nindex\r\n$4\r\nspec\r\n%1\r\n$5\r\nindex\r\n:1\r\n$9\r\nfind_keys\r\n%2\r\n$4\r\ntype\r\n$5\r\nrange\r\n$4\r\nspec\r\n%3\r\n$7\r\nlastkey\r\n:0\r\n$7\r\nkeystep\r\n:1\r\n$5\r\nlimit\r\n:0\r\n~0\r\n";
const SETNAME_INFO_RESP2: &[u8] = b"*1\r\n*10\r\n$14\r\nclient|setname\r\n:3\r\n*3\r\n+noscript\r\n+loading\r\n+stale\r\n:0\r\n:0\r\n:0\r\n*2\r\n+@slow\r\n+@connection\r\n*2\r\n$24\r\nrequest_policy:all_nodes\r\n$29\r\nresponse_policy:all_succeeded\r\n*0\r\n*0\r\n";
const SETNAME_INFO_RESP3: &[u8] = b"*1\r\n*10\r\n$14\r\nclient|setname\r\n:3\r\n~3\r\n+noscript\r\n+loading\r\n+stale\r\n:0\r\n:0\r\n:0\r\n~2\r\n+@slow\r\n+@connection\r\n~2\r\n$24\r\nrequest_policy:all_nodes\r\n$29\r\nresponse_policy:all_succeeded\r\n~0\r\n~0\r\n";
const PING_INFO_RESP2: &[u8] = b"*1\r\n*10\r\n$4\r\nping\r\n:-1\r\n*1\r\n+fast\r\n:0\r\n:0\r\n:0\r\n*2\r\n+@fast\r\n+@connection\r\n*2\r\n$25\r\nrequest_policy:all_shards\r\n$29\r\nresponse_policy:all_succeeded\r\n*0\r\n*0\r\n";

const VALKEY_COMMAND_HELP: &[&str] = &[
    "COMMAND <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "(no subcommand)",
    "    Return details about all commands.",
    "COUNT",
    "    Return the total number of commands in this server.",
    "LIST",
    "    Return a list of all commands in this server.",
    "INFO [<command-name> ...]",
    "    Return details about multiple commands.",
    "    If no command names are given, documentation details for all",
    "    commands are returned.",
    "DOCS [<command-name> ...]",
    "    Return documentation details about multiple commands.",
    "    If no command names are given, documentation details for all",
    "    commands are returned.",
    "GETKEYS <full-command>",
    "    Return the keys from a full command.",
    "GETKEYSANDFLAGS <full-command>",
    "    Return the keys and the access flags from a full command.",
    "HELP",
    "    Print this help.",
];

fn bulk_names(v: &V) -> Vec<String> {
    v.items().iter().map(V::text).collect()
}

#[test]
fn command_introspection() {
    let server = Server::start(1, &[]);
    let mut raw = server.raw();
    let count = decode(&raw.cmd(&["COMMAND", "COUNT"])).int();
    assert!(count >= 50, "COMMAND COUNT {count}");
    expect(
        &mut raw,
        &["COMMAND", "COUNT", "x"],
        &arity("command|count"),
    );
    let all = decode(&raw.cmd(&["COMMAND"]));
    assert_eq!(all.items().len() as i64, count);
    let names: BTreeSet<String> = all.items().iter().map(|c| c.items()[0].text()).collect();
    assert_eq!(names.len() as i64, count);
    for must in ["get", "set", "ping", "client", "config", "command", "info"] {
        assert!(names.contains(must), "COMMAND lacks {must}");
    }

    // COMMAND INFO, byte for byte as Valkey.
    expect(&mut raw, &["COMMAND", "INFO", "get"], GET_INFO_RESP2);
    expect(&mut raw, &["COMMAND", "INFO", "GET"], GET_INFO_RESP2);
    expect(
        &mut raw,
        &["COMMAND", "INFO", "client|setname"],
        SETNAME_INFO_RESP2,
    );
    expect(&mut raw, &["COMMAND", "INFO", "ping"], PING_INFO_RESP2);
    let get_entry = &GET_INFO_RESP2[4..];
    let mut two = b"*2\r\n".to_vec();
    two.extend_from_slice(get_entry);
    two.extend_from_slice(b"$-1\r\n");
    expect(&mut raw, &["COMMAND", "INFO", "get", "nonexistent"], &two);
    expect(
        &mut raw,
        &["COMMAND", "INFO", "nonexistent"],
        b"*1\r\n$-1\r\n",
    );
    let info_set = decode(&raw.cmd(&["COMMAND", "INFO", "GET", "set"]));
    assert_eq!(info_set.items().len(), 2);
    assert_eq!(info_set.items()[1].items()[0].text(), "set");
    assert_eq!(info_set.items()[1].items()[1].int(), -3);

    // COMMAND DOCS.
    let docs = decode(&raw.cmd(&["COMMAND", "DOCS", "get"]));
    let items = docs.items();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0].text(), "get");
    let fields: BTreeMap<String, V> = items[1]
        .items()
        .chunks(2)
        .map(|p| (p[0].text(), p[1].clone()))
        .collect();
    assert!(!fields["summary"].text().is_empty());
    assert_eq!(fields["since"].text(), "1.0.0");
    assert_eq!(fields["group"].text(), "string");
    assert_eq!(fields["complexity"].text(), "O(1)");
    expect(&mut raw, &["COMMAND", "DOCS", "nonexistent"], b"*0\r\n");
    let all_docs = decode(&raw.cmd(&["COMMAND", "DOCS"]));
    assert_eq!(all_docs.items().len() as i64, 2 * count);

    // GETKEYS / GETKEYSANDFLAGS.
    let keys = |raw: &mut Raw, args: &[&str], expected: &[&str]| {
        let mut full = vec!["COMMAND", "GETKEYS"];
        full.extend_from_slice(args);
        let mut bytes = format!("*{}\r\n", expected.len()).into_bytes();
        for k in expected {
            bytes.extend_from_slice(&bulk(k));
        }
        expect(raw, &full, &bytes);
    };
    keys(&mut raw, &["set", "a", "b"], &["a"]);
    keys(&mut raw, &["SET", "a", "b"], &["a"]);
    keys(&mut raw, &["get", "a"], &["a"]);
    keys(&mut raw, &["mset", "a", "b", "c", "d"], &["a", "c"]);
    keys(&mut raw, &["mset", "a", "b", "c"], &["a", "c"]);
    keys(&mut raw, &["object", "encoding", "k"], &["k"]);
    let no_keys = err("ERR The command has no key arguments");
    expect(&mut raw, &["COMMAND", "GETKEYS", "ping"], &no_keys);
    expect(&mut raw, &["COMMAND", "GETKEYS", "echo", "x"], &no_keys);
    expect(
        &mut raw,
        &["COMMAND", "GETKEYS", "client", "setname", "x"],
        &no_keys,
    );
    expect(
        &mut raw,
        &["COMMAND", "GETKEYS", "nosuchcmd", "a"],
        &err("ERR Invalid command specified"),
    );
    let bad_count = err("ERR Invalid number of arguments specified for command");
    expect(&mut raw, &["COMMAND", "GETKEYS", "get"], &bad_count);
    expect(
        &mut raw,
        &["COMMAND", "GETKEYS", "get", "a", "b"],
        &bad_count,
    );
    expect(&mut raw, &["COMMAND", "GETKEYS"], &arity("command|getkeys"));
    expect(
        &mut raw,
        &["COMMAND", "GETKEYSANDFLAGS", "get", "a"],
        b"*1\r\n*2\r\n$1\r\na\r\n*2\r\n+RO\r\n+access\r\n",
    );
    expect(&mut raw, &["COMMAND", "GETKEYSANDFLAGS", "ping"], &no_keys);

    // COMMAND LIST.
    let listed = bulk_names(&decode(&raw.cmd(&["COMMAND", "LIST"])));
    for must in ["get", "client|setname", "config|get", "command|info"] {
        assert!(
            listed.iter().any(|n| n == must),
            "COMMAND LIST lacks {must}"
        );
    }
    assert!(listed.len() as i64 > count, "subcommands are listed too");
    let get_star = bulk_names(&decode(
        &raw.cmd(&["COMMAND", "LIST", "FILTERBY", "PATTERN", "get*"]),
    ));
    assert!(get_star.iter().all(|n| glob("get*", n)), "{get_star:?}");
    for must in ["get", "getdel", "getex", "getrange", "getset"] {
        assert!(
            get_star.iter().any(|n| n == must),
            "{must} not in {get_star:?}"
        );
    }
    let client_star = bulk_names(&decode(
        &raw.cmd(&["COMMAND", "LIST", "FILTERBY", "PATTERN", "client*"]),
    ));
    assert!(client_star.iter().all(|n| n.starts_with("client")));
    assert!(client_star.iter().any(|n| n == "client"));
    assert!(client_star.iter().any(|n| n == "client|setname"));
    let connection = bulk_names(&decode(&raw.cmd(&[
        "COMMAND",
        "LIST",
        "FILTERBY",
        "ACLCAT",
        "connection",
    ])));
    for must in ["ping", "echo", "hello", "auth", "select", "client|setname"] {
        assert!(
            connection.iter().any(|n| n == must),
            "{must} not in {connection:?}"
        );
    }
    assert!(!connection.iter().any(|n| n == "get"));
    expect(
        &mut raw,
        &["COMMAND", "LIST", "FILTERBY", "ACLCAT", "nosuchcat"],
        b"*0\r\n",
    );
    expect(
        &mut raw,
        &["COMMAND", "LIST", "FILTERBY", "MODULE", "nosuchmod"],
        b"*0\r\n",
    );
    let syntax_cases: &[&[&str]] = &[
        &["COMMAND", "LIST", "FILTERBY", "bad", "x"],
        &["COMMAND", "LIST", "FILTERBY", "PATTERN"],
        &["COMMAND", "LIST", "FILTERBY"],
        &["COMMAND", "LIST", "x"],
        &["COMMAND", "LIST", "FILTERBY", "PATTERN", "a", "b"],
    ];
    for bad in syntax_cases {
        expect(&mut raw, bad, SYNTAX);
    }

    // COMMAND HELP is Valkey's.
    assert_eq!(
        help_lines(&mut raw, &["COMMAND", "HELP"]),
        VALKEY_COMMAND_HELP
    );

    // RESP3 forms.
    raw.cmd(&["HELLO", "3"]);
    expect(
        &mut raw,
        &["COMMAND", "INFO", "nonexistent"],
        b"*1\r\n_\r\n",
    );
    expect(&mut raw, &["COMMAND", "DOCS", "nonexistent"], b"%0\r\n");
    match decode(&raw.cmd(&["COMMAND", "DOCS", "get"])) {
        V::Map(pairs) => {
            assert_eq!(pairs.len(), 1);
            assert_eq!(pairs[0].0.text(), "get");
            assert!(matches!(pairs[0].1, V::Map(_)));
        }
        other => panic!("COMMAND DOCS get in RESP3: {other:?}"),
    }
    expect(
        &mut raw,
        &["COMMAND", "GETKEYSANDFLAGS", "get", "a"],
        b"*1\r\n*2\r\n$1\r\na\r\n~2\r\n+RO\r\n+access\r\n",
    );

    // The redis crate reads the command table.
    let mut con = server.client();
    let crate_count: i64 = redis::cmd("COMMAND")
        .arg("COUNT")
        .query(&mut con)
        .expect("COUNT");
    assert_eq!(crate_count, count);
    let value: redis::Value = redis::cmd("COMMAND")
        .arg("INFO")
        .arg("get")
        .query(&mut con)
        .expect("COMMAND INFO");
    match value {
        redis::Value::Array(entries) => match &entries[..] {
            [redis::Value::Array(entry)] => {
                assert_eq!(entry.len(), 10);
                assert_eq!(entry[0], redis::Value::BulkString(b"get".to_vec()));
                assert_eq!(entry[1], redis::Value::Int(2));
            }
            other => panic!("COMMAND INFO get via redis: {other:?}"),
        },
        other => panic!("COMMAND INFO get via redis: {other:?}"),
    }
    let keys: Vec<String> = redis::cmd("COMMAND")
        .arg("GETKEYS")
        .arg("MSET")
        .arg("k1")
        .arg("v1")
        .arg("k2")
        .arg("v2")
        .query(&mut con)
        .expect("GETKEYS");
    assert_eq!(keys, ["k1", "k2"]);

    // Checked together at the end: where corekv differed from Valkey 8.0.1.
    let mut diffs = Diffs::default();
    // RESP3: a command without subcommands ends with an empty set (~0), not an array.
    raw.cmd(&["HELLO", "3"]);
    diffs.reply(&mut raw, &["COMMAND", "INFO", "get"], GET_INFO_RESP3);
    diffs.reply(
        &mut raw,
        &["COMMAND", "INFO", "client|setname"],
        SETNAME_INFO_RESP3,
    );
    // Valkey works out SET's key flags from its arguments: without GET it only overwrites.
    raw.cmd(&["HELLO", "2"]);
    diffs.reply(
        &mut raw,
        &["COMMAND", "GETKEYSANDFLAGS", "set", "a", "b"],
        b"*1\r\n*2\r\n$1\r\na\r\n*2\r\n+OW\r\n+update\r\n",
    );
    diffs.assert_none();
}

// ---------------------------------------------------------------------------------------------
// Server commands
// ---------------------------------------------------------------------------------------------

#[test]
fn dbsize_time_flushdb_and_flushall() {
    let server = Server::start(2, &[]);
    let mut raw = server.raw();
    expect(&mut raw, &["DBSIZE"], &int(0));
    for i in 0..10 {
        expect(&mut raw, &["SET", &format!("k{i}"), "v"], OK);
    }
    expect(&mut raw, &["DBSIZE"], &int(10));
    expect(&mut raw, &["DBSIZE", "x"], &arity("dbsize"));
    expect(&mut raw, &["SELECT", "1"], OK);
    expect(&mut raw, &["SET", "one", "1"], OK);
    expect(&mut raw, &["SET", "two", "2"], OK);
    expect(&mut raw, &["DBSIZE"], &int(2));
    expect(&mut raw, &["SELECT", "0"], OK);

    // TIME: seconds and microseconds as bulk strings.
    for resp3 in [false, true] {
        if resp3 {
            raw.cmd(&["HELLO", "3"]);
        }
        let reply = raw.cmd(&["TIME"]);
        let v = decode(&reply);
        let items = v.items();
        assert!(reply.starts_with(b"*2\r\n$"), "{}", show(&reply));
        let secs: u64 = items[0].text().parse().expect("seconds");
        let micros: u64 = items[1].text().parse().expect("microseconds");
        assert!(micros < 1_000_000);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        assert!(secs.abs_diff(now) < 3600, "TIME {secs} vs clock {now}");
    }
    raw.cmd(&["HELLO", "2"]);
    expect(&mut raw, &["TIME", "x"], &arity("time"));

    // FLUSHDB empties only the selected database.
    expect(&mut raw, &["FLUSHDB"], OK);
    expect(&mut raw, &["DBSIZE"], &int(0));
    expect(&mut raw, &["GET", "k3"], NIL2);
    expect(&mut raw, &["SELECT", "1"], OK);
    expect(&mut raw, &["DBSIZE"], &int(2));
    for mode in ["ASYNC", "async", "SYNC", "sync"] {
        expect(&mut raw, &["SET", "m", "1"], OK);
        expect(&mut raw, &["FLUSHDB", mode], OK);
        expect(&mut raw, &["DBSIZE"], &int(0));
    }
    expect(&mut raw, &["FLUSHDB", "bad"], SYNTAX);
    expect(&mut raw, &["FLUSHDB", "sync", "async"], SYNTAX);

    // FLUSHALL empties every database, whatever the mode.
    for mode in [None, Some("ASYNC"), Some("sync")] {
        for db in ["0", "1", "7"] {
            expect(&mut raw, &["SELECT", db], OK);
            for i in 0..5 {
                expect(&mut raw, &["SET", &format!("x{i}"), "v"], OK);
            }
        }
        match mode {
            Some(m) => expect(&mut raw, &["FLUSHALL", m], OK),
            None => expect(&mut raw, &["FLUSHALL"], OK),
        }
        for db in ["0", "1", "7"] {
            expect(&mut raw, &["SELECT", db], OK);
            expect(&mut raw, &["DBSIZE"], &int(0));
        }
    }
    expect(&mut raw, &["FLUSHALL", "bad"], SYNTAX);
    expect(&mut raw, &["FLUSHALL", "a", "b"], SYNTAX);
}

#[test]
fn swapdb_moves_data_between_databases() {
    for shards in [1, 2] {
        let server = Server::start(shards, &[]);
        let mut raw = server.raw();
        let mut watcher = server.raw();
        for i in 0..10 {
            expect(&mut raw, &["SET", &format!("k{i}"), &format!("v{i}")], OK);
        }
        expect(&mut raw, &["SELECT", "1"], OK);
        expect(&mut raw, &["SET", "y", "one"], OK);
        expect(&mut raw, &["SELECT", "0"], OK);

        expect(&mut raw, &["SWAPDB", "0", "1"], OK);
        expect(&mut raw, &["DBSIZE"], &int(1));
        expect(&mut raw, &["GET", "y"], &bulk("one"));
        expect(&mut raw, &["GET", "k3"], NIL2);
        // Another client on db 0 sees the swap too.
        expect(&mut watcher, &["GET", "y"], &bulk("one"));
        expect(&mut watcher, &["DBSIZE"], &int(1));
        expect(&mut raw, &["SELECT", "1"], OK);
        expect(&mut raw, &["DBSIZE"], &int(10));
        for i in 0..10 {
            expect(
                &mut raw,
                &["GET", &format!("k{i}")],
                &bulk(&format!("v{i}")),
            );
        }
        expect(&mut raw, &["SELECT", "0"], OK);
        // And back.
        expect(&mut raw, &["SWAPDB", "1", "0"], OK);
        expect(&mut raw, &["DBSIZE"], &int(10));
        expect(&mut raw, &["GET", "k7"], &bulk("v7"));
        // With an empty database.
        expect(&mut raw, &["SWAPDB", "0", "5"], OK);
        expect(&mut raw, &["DBSIZE"], &int(0));
        expect(&mut raw, &["SELECT", "5"], OK);
        expect(&mut raw, &["DBSIZE"], &int(10));
        expect(&mut raw, &["SELECT", "0"], OK);
        expect(&mut raw, &["SWAPDB", "0", "0"], OK);
        expect(&mut raw, &["DBSIZE"], &int(0));

        expect(
            &mut raw,
            &["SWAPDB", "0", "abc"],
            &err("ERR invalid second DB index"),
        );
        expect(
            &mut raw,
            &["SWAPDB", "abc", "0"],
            &err("ERR invalid first DB index"),
        );
        expect(
            &mut raw,
            &["SWAPDB", "abc", "def"],
            &err("ERR invalid first DB index"),
        );
        let range = err("ERR DB index is out of range");
        expect(&mut raw, &["SWAPDB", "0", "16"], &range);
        expect(&mut raw, &["SWAPDB", "-1", "0"], &range);
        expect(&mut raw, &["SWAPDB", "0"], &arity("swapdb"));
        expect(&mut raw, &["SWAPDB", "0", "1", "2"], &arity("swapdb"));
    }
}

#[test]
fn debug_sleep_and_its_switch() {
    let server = Server::start(1, &[]);
    let mut raw = server.raw();
    expect(&mut raw, &["DEBUG", "SLEEP", "0"], OK);
    expect(&mut raw, &["DEBUG", "sleep", "0.001"], OK);
    expect(&mut raw, &["DEBUG", "SLEEP", "abc"], OK);
    expect(
        &mut raw,
        &["DEBUG", "nosuch"],
        &err("ERR unknown subcommand or wrong number of arguments for 'nosuch'. Try DEBUG HELP."),
    );
    expect(
        &mut raw,
        &["DEBUG", "nosuch", "a"],
        &err("ERR unknown subcommand or wrong number of arguments for 'nosuch'. Try DEBUG HELP."),
    );
    expect(&mut raw, &["DEBUG"], &arity("debug"));

    // With the command switched off.
    let server = Server::start(1, &["--enable-debug-command", "no"]);
    let mut raw = server.raw();
    assert_eq!(
        config_get(&mut raw, &["enable-debug-command"])["enable-debug-command"],
        "no"
    );
    let refused = err("ERR DEBUG command not allowed. If the enable-debug-command option is set to \"local\", you can run it from a local connection, otherwise you need to set this option in the configuration file, and then restart the server.");
    expect(&mut raw, &["DEBUG", "SLEEP", "0"], &refused);
    expect(&mut raw, &["DEBUG", "HELP"], &refused);
    expect(&mut raw, &["DEBUG"], &arity("debug"));
    expect(&mut raw, &["PING"], b"+PONG\r\n");
}

#[test]
fn shutdown_rejects_bad_arguments_then_exits_cleanly() {
    let mut server = Server::start(2, &[]);
    let mut raw = server.raw();
    expect(&mut raw, &["SHUTDOWN", "bad"], SYNTAX);
    expect(&mut raw, &["SHUTDOWN", "NOSAVE", "SAVE"], SYNTAX);
    expect(&mut raw, &["SHUTDOWN", "SAVE", "x"], SYNTAX);
    expect(
        &mut raw,
        &["SHUTDOWN", "ABORT"],
        &err("ERR No shutdown in progress."),
    );
    expect(&mut raw, &["PING"], b"+PONG\r\n");
    assert!(server.is_running());

    let mut bystander = server.raw();
    expect(&mut bystander, &["PING"], b"+PONG\r\n");
    raw.send(&common::resp(&[b"SHUTDOWN"]));
    let (bytes, closed) = drain(&mut raw.stream, PROMPTLY);
    assert!(closed, "SHUTDOWN left the connection open");
    assert_eq!(
        show(&bytes),
        "",
        "SHUTDOWN replies nothing when it succeeds"
    );
    let status = server
        .wait_exit(PROMPTLY)
        .expect("the server exits after SHUTDOWN");
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(bystander.closed_within(PROMPTLY));
}

#[test]
fn the_port_is_free_the_moment_the_server_has_exited() {
    for how in ["SHUTDOWN", "SIGTERM"] {
        // One shard: with one, the listening socket outlived the process every time.
        let mut server = Server::start(1, &["--appendonly", "yes"]);
        let port = server.port;
        expect(&mut server.raw(), &["SET", "k", "v"], OK);
        // Idle executors park with operations in flight in their rings; the kernel tears those
        // down after the process is gone, and until then they keep what they hold.
        std::thread::sleep(Duration::from_millis(1500));
        if how == "SHUTDOWN" {
            server.raw().send(&common::resp(&[b"SHUTDOWN"]));
        } else {
            let pid = libc::pid_t::try_from(server.pid()).expect("pid");
            // SAFETY: sends a signal to the child process this test started.
            assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        }
        server.wait_exit(PROMPTLY).expect("the server exits");
        // What a restarted server does first: bind the port (with SO_REUSEADDR, as std does).
        if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            panic!("after {how}, port {port} is still taken: {e}");
        }
    }
}

#[test]
fn sigterm_exits_with_status_zero() {
    let mut server = Server::start(2, &[]);
    expect(&mut server.raw(), &["SET", "k", "v"], OK);
    let pid = libc::pid_t::try_from(server.pid()).expect("pid");
    // SAFETY: sends a signal to the child process this test started.
    let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let status = server
        .wait_exit(PROMPTLY)
        .expect("the server exits on SIGTERM");
    assert_eq!(status.code(), Some(0), "{status:?}");
}

// ---------------------------------------------------------------------------------------------
// Start-up as a user runs it
// ---------------------------------------------------------------------------------------------

#[test]
fn command_line_help_version_and_bad_flags() {
    for flag in ["--help", "-h"] {
        let (status, out, _) = run_binary(&[flag]);
        assert_eq!(status.code(), Some(0), "{flag}");
        for d in DIRECTIVES {
            assert!(
                out.lines().any(|l| l.split_whitespace().next() == Some(*d)),
                "{flag} does not list {d}:\n{out}"
            );
        }
    }
    for flag in ["--version", "-v"] {
        let (status, out, _) = run_binary(&[flag]);
        assert_eq!(status.code(), Some(0), "{flag}");
        assert!(out.contains(VERSION), "{flag}: {out:?}");
    }

    let (status, out, errs) = run_binary(&["--port", "abc"]);
    assert_eq!(status.code(), Some(1), "{out}{errs}");
    assert!(errs.contains("port") && errs.contains("abc"), "{errs}");
    assert!(
        errs.contains("argument couldn't be parsed into an integer"),
        "{errs}"
    );

    let (status, _, errs) = run_binary(&["--port", "70000"]);
    assert_eq!(status.code(), Some(1));
    assert!(
        errs.contains("argument must be between 0 and 65535 inclusive"),
        "{errs}"
    );

    let (status, out, errs) = run_binary(&["--nosuch", "1"]);
    assert_eq!(status.code(), Some(1), "{out}{errs}");
    assert!(errs.contains("nosuch"), "{errs}");
    assert!(
        errs.contains("Bad directive or wrong number of arguments"),
        "{errs}"
    );

    let (status, _, errs) = run_binary(&["--protected-mode", "maybe"]);
    assert_eq!(status.code(), Some(1));
    assert!(errs.contains("protected-mode"), "{errs}");

    // Config files: the error names the line.
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.conf");
    std::fs::write(&bad, "port 7399\nnosuchdirective yes\n").expect("write");
    let (status, _, errs) = run_binary(&[&bad.display().to_string()]);
    assert_eq!(status.code(), Some(1));
    assert!(errs.contains("line 2"), "{errs}");
    assert!(errs.contains("nosuchdirective yes"), "{errs}");

    let bad = dir.path().join("bad2.conf");
    std::fs::write(&bad, "# a comment\n\nport abc\n").expect("write");
    let (status, _, errs) = run_binary(&[&bad.display().to_string()]);
    assert_eq!(status.code(), Some(1));
    assert!(
        errs.contains("line 3") && errs.contains("port abc"),
        "{errs}"
    );

    let missing = dir.path().join("missing.conf").display().to_string();
    let (status, out, errs) = run_binary(&[&missing]);
    assert_eq!(status.code(), Some(1));
    assert!(
        format!("{out}{errs}").contains(&missing),
        "names the missing file: {out}{errs}"
    );
}

#[test]
fn config_file_with_flags_that_win() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("corekv.conf");
    let file_port = free_port();
    std::fs::write(
        &file,
        format!(
            "# corekv test config\nport {file_port}\nmaxclients 50\ntimeout 7\nhz 20\n\
             dir \"{}\"\nlogfile {}\nshards 1\n",
            dir.path().display(),
            dir.path().join("server.log").display()
        ),
    )
    .expect("write config");
    let server = Direct::start(Some(&file), &["--timeout", "9", "--hz", "15"]);
    assert_ne!(server.port, file_port);
    let mut raw = server.raw();
    let config = config_get(&mut raw, &["port", "maxclients", "timeout", "hz", "shards"]);
    assert_eq!(
        config["port"],
        server.port.to_string(),
        "the flag's port wins"
    );
    assert_eq!(config["maxclients"], "50", "from the file");
    assert_eq!(config["timeout"], "9", "the flag wins");
    assert_eq!(config["hz"], "15", "the flag wins");
    assert_eq!(config["shards"], "1");
    let server_info = info(&mut raw, &["server"]);
    let canonical = std::fs::canonicalize(&file).expect("canonical");
    assert_eq!(
        info_field(&server_info, "config_file"),
        Some(canonical.display().to_string())
    );
    assert_eq!(
        info_field(&server_info, "tcp_port"),
        Some(server.port.to_string())
    );
}

#[test]
fn a_second_server_on_the_same_port_or_dir_refuses_to_start() {
    let server = Server::start(1, &[]);
    let other = tempfile::tempdir().expect("tempdir");
    let port = server.port.to_string();
    let (status, out, errs) = run_binary(&[
        "--port",
        &port,
        "--dir",
        &other.path().display().to_string(),
        "--logfile",
        &other.path().join("a.log").display().to_string(),
        "--shards",
        "1",
    ]);
    assert_eq!(status.code(), Some(1), "{out}{errs}");
    assert!(errs.contains(&port), "names the port: {errs}");
    let lower = errs.to_lowercase();
    assert!(
        lower.contains("in use") || lower.contains("already"),
        "says why: {errs}"
    );
    expect(&mut server.raw(), &["PING"], b"+PONG\r\n");

    let data_dir = server.data_dir().display().to_string();
    let (status, out, errs) = run_binary(&[
        "--port",
        &free_port().to_string(),
        "--dir",
        &data_dir,
        "--logfile",
        &other.path().join("b.log").display().to_string(),
        "--shards",
        "1",
    ]);
    assert_eq!(status.code(), Some(1), "{out}{errs}");
    assert!(errs.contains(&data_dir), "names the directory: {errs}");
    assert!(errs.to_lowercase().contains("already"), "says why: {errs}");
    expect(&mut server.raw(), &["PING"], b"+PONG\r\n");
}

// ---------------------------------------------------------------------------------------------
// Security
// ---------------------------------------------------------------------------------------------

#[test]
fn protected_mode_refuses_remote_clients_without_a_password() {
    let ip = non_loopback_ipv4();
    let server = Server::start(1, &["--bind", "0.0.0.0", "--protected-mode", "yes"]);
    let mut local = server.raw();
    expect(&mut local, &["PING"], b"+PONG\r\n");
    match ip {
        None => println!(
            "note: this machine has no non-loopback IPv4 address; remote protected-mode checks skipped"
        ),
        Some(ip) => {
            let mut remote = TcpStream::connect((IpAddr::V4(ip), server.port)).expect("connect");
            let (bytes, closed) = drain(&mut remote, PROMPTLY);
            let text = String::from_utf8_lossy(&bytes);
            assert!(text.starts_with("-DENIED "), "{text:?}");
            assert!(text.contains("protected mode"), "{text:?}");
            assert!(text.ends_with("\r\n") && text.matches("\r\n").count() == 1);
            assert!(closed, "the refused connection must be closed");
            assert_eq!(
                info_field(&info(&mut local, &["stats"]), "rejected_connections").as_deref(),
                Some("1")
            );
            // Loopback clients may switch it off; then remote clients get in.
            expect(&mut local, &["CONFIG", "SET", "protected-mode", "no"], OK);
            let mut remote = TcpStream::connect((IpAddr::V4(ip), server.port)).expect("connect");
            assert_eq!(show(&stream_cmd(&mut remote, &["PING"])), "+PONG\\r\\n");
        }
    }

    // With a password, remote clients are accepted and must authenticate.
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Direct::start(
        None,
        &[
            "--bind",
            "0.0.0.0",
            "--protected-mode",
            "yes",
            "--requirepass",
            "x",
            "--dir",
            &dir.path().display().to_string(),
            "--logfile",
            &dir.path().join("s.log").display().to_string(),
            "--shards",
            "1",
        ],
    );
    if let Some(ip) = ip {
        let mut remote = TcpStream::connect((IpAddr::V4(ip), server.port)).expect("connect");
        assert_eq!(
            show(&stream_cmd(&mut remote, &["PING"])),
            show(b"-NOAUTH Authentication required.\r\n")
        );
        assert_eq!(show(&stream_cmd(&mut remote, &["AUTH", "x"])), show(OK));
        assert_eq!(show(&stream_cmd(&mut remote, &["PING"])), "+PONG\\r\\n");
    }
    let mut local = server.raw();
    expect(&mut local, &["AUTH", "x"], OK);
    expect(&mut local, &["PING"], b"+PONG\r\n");
}
