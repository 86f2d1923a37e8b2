//! String and key commands through the real server, byte for byte against Valkey 8.0.1
//! (see the wire reference, sections 8 "Strings" and 9 "Keys").
//!
//! Every error path is checked with exact reply bytes on a raw connection. A [`Wire`] collects
//! every mismatch of a test and fails once at the end, so one run lists all of a test's
//! differences instead of only the first.

mod common;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::ops::RangeInclusive;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{eventually, Raw, Server};
use corekv::shard::routing::SlotMap;

// ---------------------------------------------------------------------------------------------
// Reply texts (without the leading '-' and the trailing CRLF).

const SYNTAX: &str = "ERR syntax error";
const NOT_INT: &str = "ERR value is not an integer or out of range";
const NOT_FLOAT: &str = "ERR value is not a valid float";
const OVERFLOW: &str = "ERR increment or decrement would overflow";
const DECR_OVERFLOW: &str = "ERR decrement would overflow";
const NAN_OR_INF: &str = "ERR increment would produce NaN or Infinity";
const NO_SUCH_KEY: &str = "ERR no such key";
const OFFSET_RANGE: &str = "ERR offset is out of range";
const TOO_BIG: &str = "ERR string exceeds maximum allowed size (proto-max-bulk-len)";
const SAME_OBJECT: &str = "ERR source and destination objects are the same";
const DB_RANGE: &str = "ERR DB index is out of range";
const INVALID_CURSOR: &str = "ERR invalid cursor";
const NX_XX_GT_LT: &str = "ERR NX and XX, GT or LT options at the same time are not compatible";
const GT_LT: &str = "ERR GT and LT options at the same time are not compatible";
const LFU_OFF: &str = "ERR An LFU maxmemory policy is not selected, access frequency not tracked. \
Please note that when switching between policies at runtime LRU and LFU data will take some time \
to adjust.";

const I64_MAX: &str = "9223372036854775807";
const I64_MIN: &str = "-9223372036854775808";

fn arity(command: &str) -> String {
    format!("ERR wrong number of arguments for '{command}' command")
}

fn invalid_expire(command: &str) -> String {
    format!("ERR invalid expire time in '{command}' command")
}

// ---------------------------------------------------------------------------------------------
// A raw connection that checks replies and collects mismatches.

struct Wire {
    raw: Raw,
    resp3: bool,
    label: String,
    failures: Vec<String>,
}

impl Wire {
    /// A RESP2 connection.
    fn new(server: &Server) -> Wire {
        Wire {
            raw: server.raw(),
            resp3: false,
            label: String::new(),
            failures: Vec::new(),
        }
    }

    /// A connection that has switched to RESP3 with `HELLO 3`.
    fn resp3(server: &Server) -> Wire {
        let mut wire = Wire::new(server);
        let hello = wire.raw.cmd(&["HELLO", "3"]);
        assert_eq!(hello.first(), Some(&b'%'), "HELLO 3 answers a map");
        wire.resp3 = true;
        wire
    }

    /// Prefixes every failure message (e.g. with the shard count).
    fn labelled(mut self, label: impl Into<String>) -> Wire {
        self.label = label.into();
        self
    }

    fn note(&mut self, args: &[&str], message: String) {
        let proto = if self.resp3 { "RESP3" } else { "RESP2" };
        self.failures.push(format!(
            "{}[{proto}] {}: {message}",
            self.label,
            show_args(args)
        ));
    }

    /// Sends `args`; the reply must be exactly `expected`.
    fn expect(&mut self, args: &[&str], expected: impl AsRef<[u8]>) -> Vec<u8> {
        let got = self.raw.cmd(args);
        let expected = expected.as_ref();
        if got != expected {
            self.note(
                args,
                format!("expected {} got {}", show(expected), show(&got)),
            );
        }
        got
    }

    fn ok(&mut self, args: &[&str]) {
        self.expect(args, b"+OK\r\n");
    }

    fn status(&mut self, args: &[&str], text: &str) {
        self.expect(args, format!("+{text}\r\n"));
    }

    fn int(&mut self, args: &[&str], n: i64) {
        self.expect(args, format!(":{n}\r\n"));
    }

    fn bulk(&mut self, args: &[&str], value: impl AsRef<[u8]>) {
        self.expect(args, bulk(value.as_ref()));
    }

    /// The null reply of this connection's protocol.
    fn nil(&mut self, args: &[&str]) {
        let null = self.null();
        self.expect(args, null);
    }

    fn null(&self) -> &'static [u8] {
        if self.resp3 {
            b"_\r\n"
        } else {
            b"$-1\r\n"
        }
    }

    /// The reply must be the error line `-text\r\n`.
    fn err(&mut self, args: &[&str], text: impl AsRef<str>) {
        self.expect(args, format!("-{}\r\n", text.as_ref()));
    }

    /// Sends `args` and reads an integer reply (recording a failure if it is not one).
    fn integer(&mut self, args: &[&str]) -> Option<i64> {
        let got = self.raw.cmd(args);
        let parsed = std::str::from_utf8(&got)
            .ok()
            .and_then(|s| s.strip_prefix(':'))
            .and_then(|s| s.strip_suffix("\r\n"))
            .and_then(|s| s.parse().ok());
        if parsed.is_none() {
            self.note(args, format!("expected an integer, got {}", show(&got)));
        }
        parsed
    }

    /// The reply must be an integer inside `range` (for TTLs, which tick while the test runs).
    fn int_in(&mut self, args: &[&str], range: RangeInclusive<i64>) {
        if let Some(n) = self.integer(args) {
            if !range.contains(&n) {
                self.note(args, format!("expected an integer in {range:?}, got {n}"));
            }
        }
    }

    /// Hands over the mismatches seen so far (so one test can gather them over several servers).
    fn take_failures(mut self) -> Vec<String> {
        std::mem::take(&mut self.failures)
    }

    /// Fails the test with every mismatch seen so far.
    fn finish(&mut self) {
        report(std::mem::take(&mut self.failures));
    }
}

/// Fails the test listing every mismatch, if there is any.
fn report(failures: Vec<String>) {
    if !failures.is_empty() {
        panic!(
            "{} reply mismatch(es):\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.finish();
        }
    }
}

fn bulk(value: &[u8]) -> Vec<u8> {
    let mut out = format!("${}\r\n", value.len()).into_bytes();
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
    out
}

/// A RESP2 array of bulk strings.
fn bulk_array(items: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", items.len()).into_bytes();
    for item in items {
        out.extend(bulk(item.as_bytes()));
    }
    out
}

/// Bytes as a readable escaped string, shortened if huge.
fn show(bytes: &[u8]) -> String {
    let text = bytes.escape_ascii().to_string();
    if text.len() > 300 {
        format!("{}... ({} bytes)", &text[..300], bytes.len())
    } else {
        text
    }
}

fn show_args(args: &[&str]) -> String {
    let mut out = String::new();
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        if a.is_empty() || a.contains(' ') || a.len() > 40 {
            let shown: String = a.chars().take(40).collect();
            let _ = write!(out, "{shown:?}");
        } else {
            out.push_str(a);
        }
    }
    out
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
}

// ---------------------------------------------------------------------------------------------
// Keys and shards.

/// Two keys that live on different shards of a two-shard server (`a` on shard 0, `b` on 1).
fn keys_on_different_shards() -> (String, String) {
    let keys = keys_alternating_shards("x", 2);
    (keys[0].clone(), keys[1].clone())
}

/// `n` keys named `{prefix}{i}`, alternating shard 0, shard 1, ... on a two-shard server.
fn keys_alternating_shards(prefix: &str, n: usize) -> Vec<String> {
    let map = SlotMap::new(2);
    let mut by_shard: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    let mut i = 0;
    while by_shard[0].len() < n || by_shard[1].len() < n {
        let key = format!("{prefix}{i}");
        by_shard[map.shard_of_key(key.as_bytes())].push(key);
        i += 1;
    }
    (0..n).map(|j| by_shard[j % 2][j / 2].clone()).collect()
}

/// Asserts that the given keys span both shards of a two-shard server.
fn assert_split(keys: &[&str]) {
    let map = SlotMap::new(2);
    let shards: BTreeSet<usize> = keys
        .iter()
        .map(|k| map.shard_of_key(k.as_bytes()))
        .collect();
    assert_eq!(shards.len(), 2, "keys {keys:?} should span both shards");
}

/// Every key SCAN returns while iterating from cursor 0 back to cursor 0 with `options`.
fn scan_all(con: &mut redis::Connection, options: &[&str]) -> Vec<String> {
    let mut cursor = "0".to_string();
    let mut seen = Vec::new();
    for _ in 0..1_000_000 {
        let (next, keys): (String, Vec<String>) = redis::cmd("SCAN")
            .arg(&cursor)
            .arg(options)
            .query(con)
            .expect("SCAN");
        seen.extend(keys);
        if next == "0" {
            return seen;
        }
        cursor = next;
    }
    panic!("SCAN did not return to cursor 0");
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn keys_sorted(con: &mut redis::Connection, pattern: &str) -> Vec<String> {
    let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query(con).expect("KEYS");
    sorted(keys)
}

/// A field of `INFO <section>`.
fn info_field(raw: &mut Raw, section: &str, field: &str) -> Option<String> {
    let text = raw.cmd_text(&["INFO", section]);
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
}

fn dbsize(raw: &mut Raw) -> i64 {
    let reply = raw.cmd_text(&["DBSIZE"]);
    reply
        .trim_start_matches(':')
        .trim_end()
        .parse()
        .unwrap_or_else(|_| panic!("DBSIZE reply {reply:?}"))
}

// =============================================================================================
// Strings

#[test]
fn get_and_set_basics_in_both_protocols() {
    let server = Server::start(1, &[]);
    let mut w = Wire::new(&server);
    w.nil(&["GET", "missing"]);
    w.ok(&["SET", "k", "v"]);
    w.bulk(&["GET", "k"], "v");
    w.ok(&["SET", "k", "other"]);
    w.bulk(&["GET", "k"], "other");
    w.ok(&["SET", "empty", ""]);
    w.expect(&["GET", "empty"], b"$0\r\n\r\n");
    w.ok(&["SET", "bin", "a\0b\r\nc"]);
    w.bulk(&["GET", "bin"], b"a\0b\r\nc");
    w.err(&["GET"], arity("get"));
    w.err(&["GET", "a", "b"], arity("get"));
    w.err(&["SET", "k"], arity("set"));
    w.nil(&["SET", "newk", "v", "GET"]);

    let mut w3 = Wire::resp3(&server);
    w3.nil(&["GET", "missing"]);
    w3.bulk(&["GET", "k"], "other");
    w3.nil(&["SET", "nokeyr3", "v", "GET"]);
    w3.nil(&["SET", "k", "v", "NX"]);

    // The same through a client library.
    let mut con = server.client();
    let _: () = redis::cmd("SET")
        .arg("lib")
        .arg("value")
        .query(&mut con)
        .expect("SET");
    let got: Option<String> = redis::cmd("GET").arg("lib").query(&mut con).expect("GET");
    assert_eq!(got.as_deref(), Some("value"));
    let got: Option<String> = redis::cmd("GET").arg("nope").query(&mut con).expect("GET");
    assert_eq!(got, None);
    let mut con3 = server.client_resp3();
    let got: redis::Value = redis::cmd("GET").arg("nope").query(&mut con3).expect("GET");
    assert_eq!(got, redis::Value::Nil);
    let got: redis::Value = redis::cmd("GET").arg("lib").query(&mut con3).expect("GET");
    assert_eq!(got, redis::Value::BulkString(b"value".to_vec()));
}

#[test]
fn set_rejects_invalid_option_combinations_and_numbers() {
    let server = Server::start(1, &[]);
    let mut w = Wire::new(&server);
    w.ok(&["SET", "k", "orig"]);
    let set_expire = invalid_expire("set");
    for opts in [
        &["nx", "xx"][..],
        &["NX", "XX"],
        &["xx", "nx"],
        &["ex", "10", "px", "100"],
        &["keepttl", "ex", "10"],
        &["ex", "10", "keepttl"],
        &["keepttl", "px", "10"],
        &["exat", "4000000000", "pxat", "4000000000000"],
        &["ex"],
        &["px"],
        &["exat"],
        &["pxat"],
        &["bad"],
        &["ex", "10", "bad"],
    ] {
        let mut args = vec!["set", "k", "v"];
        args.extend_from_slice(opts);
        w.err(&args, SYNTAX);
    }
    for opts in [
        &["ex", "abc"][..],
        &["ex", "1.5"],
        &["ex", ""],
        &["px", "abc"],
        &["exat", "x"],
        &["pxat", "1e3"],
    ] {
        let mut args = vec!["set", "k", "v"];
        args.extend_from_slice(opts);
        w.err(&args, NOT_INT);
    }
    for opts in [
        &["ex", "0"][..],
        &["ex", "-1"],
        &["ex", I64_MAX],
        &["ex", "9223372036854775"],
        &["ex", "9223372036854774"],
        &["px", I64_MAX],
        &["px", "0"],
        &["px", "-5"],
        &["exat", "0"],
        &["exat", "-1"],
        &["pxat", "0"],
        &["exat", I64_MAX],
    ] {
        let mut args = vec!["set", "k", "v"];
        args.extend_from_slice(opts);
        w.err(&args, &set_expire);
    }
    // None of the refused commands touched the key.
    w.bulk(&["GET", "k"], "orig");
    w.int(&["TTL", "k"], -1);

    // Repeated options are accepted.
    w.ok(&["set", "k", "v", "ex", "10", "ex", "20"]);
    w.int_in(&["ttl", "k"], 11..=20);
    w.ok(&["set", "k", "v", "keepttl", "keepttl"]);
    w.int_in(&["ttl", "k"], 1..=20);
    w.nil(&["set", "k", "v", "nx", "nx"]);
    w.ok(&["set", "k", "v", "xx", "xx"]);
    w.bulk(&["set", "k", "w", "get", "get"], "v");
    w.ok(&["set", "k", "v", "pxat", I64_MAX]);
    w.int(&["pexpiretime", "k"], i64::MAX);
}

#[test]
fn set_nx_xx_get_and_keepttl() {
    let server = Server::start(1, &[]);
    let mut w = Wire::new(&server);
    w.ok(&["set", "k", "v1"]);
    w.bulk(&["set", "k", "v2", "get"], "v1");
    w.bulk(&["set", "k", "v3", "GET", "EX", "100"], "v2");
    w.int_in(&["ttl", "k"], 1..=100);
    w.ok(&["set", "k", "v4", "keepttl"]);
    w.int_in(&["ttl", "k"], 1..=100);
    w.bulk(&["get", "k"], "v4");
    w.ok(&["set", "k", "v5"]);
    w.int(&["ttl", "k"], -1);
    w.nil(&["set", "newk", "v", "get"]);
    w.bulk(&["get", "newk"], "v");

    w.ok(&["set", "k", "v"]);
    w.nil(&["set", "k", "other", "nx"]);
    w.bulk(&["get", "k"], "v");
    w.ok(&["set", "k", "v", "xx"]);
    w.nil(&["set", "nokey", "v", "xx"]);
    w.int(&["exists", "nokey"], 0);
    w.bulk(&["set", "k", "vv", "nx", "get"], "v");
    w.bulk(&["get", "k"], "v");
    w.nil(&["set", "nokey2", "v", "nx", "get"]);
    w.bulk(&["get", "nokey2"], "v");
    w.nil(&["set", "nokey3", "v", "xx", "get"]);
    w.int(&["exists", "nokey3"], 0);
    w.bulk(&["set", "k", "v", "ex", "100", "nx", "get"], "v");
    w.int(&["ttl", "k"], -1);
    w.ok(&["set", "k", "v", "px", "100000", "xx"]);
    w.int_in(&["pttl", "k"], 1..=100_000);
    w.ok(&["set", "k", "v", "XX", "KEEPTTL"]);
    w.int_in(&["pttl", "k"], 1..=100_000);

    let mut w3 = Wire::resp3(&server);
    w3.nil(&["set", "r3", "v", "nx", "get"]);
    w3.nil(&["set", "r3missing", "v", "xx", "get"]);
    w3.bulk(&["set", "r3", "w", "get"], "v");
}

#[test]
fn set_expiry_options() {
    let server = Server::start(1, &[]);
    let mut w = Wire::new(&server);
    w.ok(&["set", "k", "v", "EX", "100"]);
    w.int_in(&["ttl", "k"], 1..=100);
    w.int_in(&["pttl", "k"], 1..=100_000);
    w.ok(&["set", "k", "v", "PX", "100000"]);
    w.int_in(&["pttl", "k"], 1..=100_000);
    let in_100s = (unix_now().as_secs() + 100).to_string();
    w.ok(&["set", "k", "v", "EXAT", &in_100s]);
    w.int_in(&["ttl", "k"], 1..=101);
    w.ok(&["set", "k", "v", "EXAT", "4000000000"]);
    w.int(&["expiretime", "k"], 4_000_000_000);
    w.int(&["pexpiretime", "k"], 4_000_000_000_000);
    w.ok(&["set", "k", "v", "PXAT", "4000000000123"]);
    w.int(&["pexpiretime", "k"], 4_000_000_000_123);
    w.int(&["expiretime", "k"], 4_000_000_000);
    w.ok(&["set", "k", "v", "PXAT", "4000000000623"]);
    w.int(&["expiretime", "k"], 4_000_000_001);
    // In the past: +OK, and the key is gone at once.
    w.ok(&["set", "k", "v", "exat", "1"]);
    w.int(&["exists", "k"], 0);
    w.ok(&["set", "k", "v", "pxat", "1"]);
    w.int(&["exists", "k"], 0);
    w.nil(&["get", "k"]);
    // A huge PX that still fits is accepted.
    w.ok(&["set", "k", "v", "px", "9223372036854775"]);
    w.int(&["exists", "k"], 1);
}

#[test]
fn setnx_setex_psetex() {
    let server = Server::start(1, &[]);
    let mut w = Wire::new(&server);
    w.int(&["setnx", "snx", "a"], 1);
    w.int(&["setnx", "snx", "b"], 0);
    w.bulk(&["get", "snx"], "a");
    w.err(&["setnx", "snx"], arity("setnx"));

    w.ok(&["setex", "sx", "10", "v"]);
    w.int_in(&["ttl", "sx"], 1..=10);
    w.bulk(&["get", "sx"], "v");
    let setex = invalid_expire("setex");
    w.err(&["setex", "sx", "0", "v"], &setex);
    w.err(&["setex", "sx", "-1", "v"], &setex);
    w.err(&["setex", "sx", I64_MAX, "v"], &setex);
    w.err(&["setex", "sx", "9223372036854775", "v"], &setex);
    w.err(&["setex", "sx", "abc", "v"], NOT_INT);
    w.err(&["setex", "sx", "10"], arity("setex"));

    w.ok(&["psetex", "px", "10000", "v"]);
    w.int_in(&["pttl", "px"], 1..=10_000);
    let psetex = invalid_expire("psetex");
    w.err(&["psetex", "px", "0", "v"], &psetex);
    w.err(&["psetex", "px", "-1", "v"], &psetex);
    w.err(&["psetex", "px", I64_MAX, "v"], &psetex);
    w.err(&["psetex", "px", "abc", "v"], NOT_INT);
    w.err(&["psetex", "px", "10"], arity("psetex"));
    w.ok(&["psetex", "px", "9223372036854775", "v"]);
}

#[test]
fn getset_and_getdel() {
    let server = Server::start(1, &[]);
    let mut w = Wire::new(&server);
    w.nil(&["getset", "gs", "a"]);
    w.bulk(&["getset", "gs", "b"], "a");
    w.bulk(&["get", "gs"], "b");
    w.err(&["getset", "gs"], arity("getset"));
    w.ok(&["set", "gs", "b", "ex", "100"]);
    w.bulk(&["getset", "gs", "c"], "b");
    w.int(&["ttl", "gs"], -1);
    w.bulk(&["getdel", "gs"], "c");
    w.nil(&["getdel", "gs"]);
    w.int(&["exists", "gs"], 0);
    w.err(&["getdel", "a", "b"], arity("getdel"));

    let mut w3 = Wire::resp3(&server);
    w3.nil(&["getdel", "gs"]);
    w3.nil(&["getset", "gs3", "x"]);
    w3.bulk(&["getdel", "gs3"], "x");
}

#[test]
fn getex_options_and_errors() {
    let server = Server::start(1, &[]);
    let mut w = Wire::new(&server);
    w.ok(&["set", "gx", "v"]);
    w.bulk(&["getex", "gx"], "v");
    w.int(&["ttl", "gx"], -1);
    w.bulk(&["getex", "gx", "ex", "100"], "v");
    w.int_in(&["ttl", "gx"], 1..=100);
    w.bulk(&["getex", "gx", "px", "100000"], "v");
    w.int_in(&["pttl", "gx"], 1..=100_000);
    w.bulk(&["getex", "gx", "exat", "4000000000"], "v");
    w.int(&["expiretime", "gx"], 4_000_000_000);
    w.bulk(&["getex", "gx", "pxat", "4000000000000"], "v");
    w.int(&["pexpiretime", "gx"], 4_000_000_000_000);
    w.bulk(&["getex", "gx"], "v");
    w.int(&["pexpiretime", "gx"], 4_000_000_000_000);
    w.bulk(&["getex", "gx", "persist"], "v");
    w.int(&["ttl", "gx"], -1);
    w.bulk(&["getex", "gx", "persist", "persist"], "v");
    w.bulk(&["getex", "gx", "pxat", I64_MAX], "v");

    for opts in [
        &["ex", "10", "px", "100"][..],
        &["persist", "ex", "10"],
        &["ex", "10", "persist"],
        &["ex"],
        &["bad"],
        &["keepttl"],
        &["nx"],
        &["get"],
    ] {
        let mut args = vec!["getex", "gx"];
        args.extend_from_slice(opts);
        w.err(&args, SYNTAX);
    }
    let getex = invalid_expire("getex");
    for opts in [
        &["ex", "0"][..],
        &["ex", "-1"],
        &["px", "0"],
        &["exat", "0"],
        &["pxat", "-1"],
        &["ex", I64_MAX],
        &["exat", I64_MAX],
        &["px", I64_MAX],
    ] {
        let mut args = vec!["getex", "gx"];
        args.extend_from_slice(opts);
        w.err(&args, &getex);
    }
    w.err(&["getex", "gx", "ex", "abc"], NOT_INT);
    w.err(&["getex"], arity("getex"));

    // The key is looked up before the options are parsed.
    w.nil(&["getex", "missing"]);
    w.nil(&["getex", "missing", "ex", "10"]);
    w.nil(&["getex", "missing", "ex", "abc"]);
    w.err(&["getex", "missing", "bad"], SYNTAX);
    w.int(&["exists", "missing"], 0);

    // A time in the past returns the value and deletes the key.
    w.ok(&["set", "gx", "v"]);
    w.bulk(&["getex", "gx", "exat", "1"], "v");
    w.int(&["exists", "gx"], 0);

    let mut w3 = Wire::resp3(&server);
    w3.nil(&["getex", "missing", "persist"]);
}

#[test]
fn mget_mset_msetnx_on_one_shard() {
    let server = Server::start(1, &[]);
    let mut w = Wire::new(&server);
    w.ok(&["mset", "a", "1", "b", "2"]);
    w.expect(
        &["mget", "a", "missing", "b"],
        b"*3\r\n$1\r\n1\r\n$-1\r\n$1\r\n2\r\n",
    );
    w.err(&["mset", "a", "1", "b"], arity("mset"));
    w.err(&["mset", "a"], arity("mset"));
    w.err(&["mget"], arity("mget"));
    w.ok(&["mset", "a", "x", "a", "y"]);
    w.bulk(&["get", "a"], "y");
    w.ok(&["set", "t", "v", "ex", "100"]);
    w.ok(&["mset", "t", "w"]);
    w.int(&["ttl", "t"], -1);

    w.int(&["msetnx", "n1", "1", "n2", "2"], 1);
    w.int(&["msetnx", "n1", "1", "n3", "3"], 0);
    w.int(&["exists", "n3"], 0);
    w.err(&["msetnx", "n1"], arity("msetnx"));
    w.err(&["msetnx", "n1", "1", "n2"], arity("msetnx"));
    w.int(&["msetnx", "n4", "1", "n4", "2"], 1);
    w.bulk(&["get", "n4"], "2");

    let mut w3 = Wire::resp3(&server);
    w3.expect(
        &["mget", "a", "missing", "b"],
        b"*3\r\n$1\r\ny\r\n_\r\n$1\r\n2\r\n",
    );

    let mut con = server.client();
    let got: Vec<Option<String>> = redis::cmd("MGET")
        .arg(&["n1", "nope", "n2"])
        .query(&mut con)
        .expect("MGET");
    assert_eq!(got, vec![Some("1".into()), None, Some("2".into())]);
}

#[test]
fn incr_decr_incrby_decrby() {
    let server = Server::start(1, &[]);
    let mut w = Wire::new(&server);
    for bad in [
        "abc",
        " 1",
        "1 ",
        "+1",
        "01",
        "1.0",
        "",
        "-0",
        "9223372036854775808",
    ] {
        w.ok(&["set", "s", bad]);
        w.err(&["incr", "s"], NOT_INT);
        w.err(&["decr", "s"], NOT_INT);
        w.err(&["incrby", "s", "1"], NOT_INT);
        w.bulk(&["get", "s"], bad);
    }
    w.ok(&["set", "s", I64_MAX]);
    w.err(&["incr", "s"], OVERFLOW);
    w.bulk(&["get", "s"], I64_MAX);
    w.ok(&["set", "s", I64_MIN]);
    w.err(&["decr", "s"], OVERFLOW);
    w.int(&["incr", "newint"], 1);
    w.bulk(&["get", "newint"], "1");
    w.int(&["decr", "newint2"], -1);
    w.int(&["incr", "newint"], 2);
    w.ok(&["set", "t", "41", "ex", "100"]);
    w.int(&["incr", "t"], 42);
    w.int_in(&["ttl", "t"], 1..=100);

    w.int(&["incrby", "i", "10"], 10);
    w.err(&["incrby", "i", "abc"], NOT_INT);
    w.err(&["incrby", "i", "1.5"], NOT_INT);
    w.err(&["incrby", "i", ""], NOT_INT);
    w.err(&["decrby", "i", "abc"], NOT_INT);
    w.err(&["incrby", "i", I64_MAX], OVERFLOW);
    w.int(&["incrby", "i", I64_MIN], -9223372036854775798);
    w.err(&["decrby", "i", I64_MIN], DECR_OVERFLOW);
    w.int(&["decrby", "i", "5"], -9223372036854775803);
    w.ok(&["set", "i", "-9223372036854775807"]);
    w.err(&["decrby", "i", "2"], OVERFLOW);
    w.bulk(&["get", "i"], "-9223372036854775807");
    w.int(&["decrby", "i", "-7"], -9223372036854775800);
    w.err(&["incrby", "i"], arity("incrby"));
    w.err(&["decrby", "i"], arity("decrby"));
    w.err(&["incr", "a", "b"], arity("incr"));
    w.err(&["decr", "a", "b"], arity("decr"));
}

#[test]
fn incrbyfloat_results_and_errors() {
    let server = Server::start(1, &[]);
    let mut w = Wire::new(&server);
    w.bulk(&["incrbyfloat", "f", "1.5"], "1.5");
    w.bulk(&["incrbyfloat", "f", "1.5"], "3");
    w.err(&["incrbyfloat", "f", "abc"], NOT_FLOAT);
    w.err(&["incrbyfloat", "f", ""], NOT_FLOAT);
    w.err(&["incrbyfloat", "f", "nan"], NOT_FLOAT);
    w.err(&["incrbyfloat", "f", " 1"], NOT_FLOAT);
    w.err(&["incrbyfloat", "f", "1e"], NOT_FLOAT);
    w.err(&["incrbyfloat", "f", "inf"], NAN_OR_INF);
    w.err(&["incrbyfloat", "f", "-inf"], NAN_OR_INF);
    w.bulk(&["get", "f"], "3");
    w.ok(&["set", "f", "abc"]);
    w.err(&["incrbyfloat", "f", "1"], NOT_FLOAT);
    w.ok(&["set", "f", "1.5 "]);
    w.err(&["incrbyfloat", "f", "1"], NOT_FLOAT);
    w.ok(&["set", "f", "inf"]);
    w.err(&["incrbyfloat", "f", "1"], NAN_OR_INF);
    w.err(&["incrbyfloat", "f"], arity("incrbyfloat"));

    w.ok(&["set", "f", "10.5"]);
    w.bulk(&["incrbyfloat", "f", "0.1"], "10.6");
    w.bulk(&["get", "f"], "10.6");
    w.ok(&["set", "f", "5.0e3"]);
    w.bulk(&["incrbyfloat", "f", "2.0e2"], "5200");
    w.bulk(&["incrbyfloat", "f", "3.0e3"], "8200");
    w.ok(&["set", "f", "0"]);
    w.bulk(&["incrbyfloat", "f", "0.1"], "0.1");
    w.bulk(&["incrbyfloat", "f", "0.2"], "0.3");
    w.ok(&["set", "f", "1"]);
    w.bulk(&["incrbyfloat", "f", "-1"], "0");
    w.bulk(&["incrbyfloat", "f", "-0.0"], "0");
    w.bulk(&["incrbyfloat", "f", "1e-20"], "0");
    w.bulk(&["incrbyfloat", "f", "1e20"], "100000000000000000000");
    w.ok(&["set", "f", "1"]);
    w.bulk(&["incrbyfloat", "f", "1."], "2");
    w.bulk(&["incrbyfloat", "f", ".5"], "2.5");
    w.bulk(&["incrbyfloat", "f", "0x10"], "18.5");
    w.ok(&["set", "f", "18.5"]);
    w.bulk(
        &["incrbyfloat", "f", "3.14159265358979323846"],
        "21.64159265358979324",
    );
    w.ok(&["set", "t", "1", "ex", "100"]);
    w.bulk(&["incrbyfloat", "t", "1"], "2");
    w.int_in(&["ttl", "t"], 1..=100);

    let mut con = server.client();
    let got: String = redis::cmd("INCRBYFLOAT")
        .arg("lib")
        .arg("2.5")
        .query(&mut con)
        .expect("INCRBYFLOAT");
    assert_eq!(got, "2.5");
}

#[test]
fn append_and_strlen() {
    let server = Server::start(1, &[]);
    let mut w = Wire::new(&server);
    w.int(&["append", "ap", "abc"], 3);
    w.int(&["append", "ap", "de"], 5);
    w.bulk(&["get", "ap"], "abcde");
    w.int(&["append", "ap", ""], 5);
    w.int(&["strlen", "ap"], 5);
    w.int(&["strlen", "missing"], 0);
    w.ok(&["set", "n", "12345"]);
    w.int(&["strlen", "n"], 5);
    w.int(&["append", "n", "6"], 6);
    w.bulk(&["get", "n"], "123456");
    w.ok(&["set", "t", "x", "ex", "100"]);
    w.int(&["append", "t", "y"], 2);
    w.int_in(&["ttl", "t"], 1..=100);
    w.int(&["append", "e", ""], 0);
    w.int(&["exists", "e"], 1);
    w.err(&["append", "ap"], arity("append"));
    w.err(&["strlen"], arity("strlen"));
    w.err(&["strlen", "a", "b"], arity("strlen"));
}

#[test]
fn getrange_and_substr() {
    let server = Server::start(1, &[]);
    let mut w = Wire::new(&server);
    w.ok(&["set", "gr", "Hello World"]);
    for (start, end, want) in [
        ("0", "4", "Hello"),
        ("-5", "-1", "World"),
        ("0", "-1", "Hello World"),
        ("-100", "100", "Hello World"),
        ("5", "3", ""),
        ("100", "200", ""),
        ("-1", "-5", ""),
        ("0", "0", "H"),
        ("-1", "0", ""),
        ("10", "10", "d"),
        ("11", "11", ""),
        ("0", I64_MAX, "Hello World"),
        (I64_MIN, "2", "Hel"),
    ] {
        w.bulk(&["getrange", "gr", start, end], want);
    }
    w.bulk(&["getrange", "missing", "0", "-1"], "");
    w.err(&["getrange", "gr", "a", "1"], NOT_INT);
    w.err(&["getrange", "gr", "0", "b"], NOT_INT);
    w.err(&["getrange", "gr", "0"], arity("getrange"));
    w.ok(&["set", "emp", ""]);
    w.bulk(&["getrange", "emp", "0", "-1"], "");
    w.bulk(&["getrange", "emp", "0", "0"], "");
    w.ok(&["set", "num", "12345"]);
    w.bulk(&["getrange", "num", "1", "2"], "23");

    w.bulk(&["substr", "gr", "0", "4"], "Hello");
    w.bulk(&["substr", "gr", "-3", "-1"], "rld");
    w.err(&["substr", "gr", "0"], arity("substr"));
    w.err(&["substr", "gr", "0", "1", "2"], arity("substr"));
    w.err(&["substr", "gr", "x", "1"], NOT_INT);
}

#[test]
fn setrange_pads_and_checks_offsets() {
    let server = Server::start(1, &[]);
    let mut w = Wire::new(&server);
    w.int(&["setrange", "sr", "0", "abc"], 3);
    w.int(&["setrange", "sr", "5", "xy"], 7);
    w.bulk(&["get", "sr"], b"abc\0\0xy");
    w.int(&["setrange", "pad", "3", "z"], 4);
    w.bulk(&["get", "pad"], b"\0\0\0z");
    w.err(&["setrange", "sr", "-1", "x"], OFFSET_RANGE);
    w.err(&["setrange", "sr", "-1", ""], OFFSET_RANGE);
    w.err(&["setrange", "sr", "abc", "x"], NOT_INT);
    w.err(&["setrange", "sr", "536870912", "x"], TOO_BIG);
    w.int(&["setrange", "sr", "536870911", ""], 7);
    w.err(&["setrange", "sr", "0"], arity("setrange"));
    w.bulk(&["get", "sr"], b"abc\0\0xy");

    // An empty value never creates a key.
    w.int(&["setrange", "missing2", "0", ""], 0);
    w.int(&["exists", "missing2"], 0);
    w.int(&["setrange", "missing2", "10", ""], 0);
    w.int(&["exists", "missing2"], 0);
    w.ok(&["set", "sr", "hello"]);
    w.int(&["setrange", "sr", "1", ""], 5);
    w.int(&["setrange", "sr", "100", ""], 5);
    w.bulk(&["get", "sr"], "hello");
    w.int(&["setrange", "sr", "1", "ipp"], 5);
    w.bulk(&["get", "sr"], "hippo");

    w.ok(&["set", "ii", "123"]);
    w.int(&["setrange", "ii", "1", "x"], 3);
    w.bulk(&["get", "ii"], "1x3");
    w.ok(&["set", "t", "abc", "ex", "100"]);
    w.int(&["setrange", "t", "1", "B"], 3);
    w.int_in(&["ttl", "t"], 1..=100);
}

#[test]
fn setrange_and_append_respect_proto_max_bulk_len() {
    let server = Server::start(1, &["--proto-max-bulk-len", "1mb"]);
    let mut w = Wire::new(&server);
    w.err(&["setrange", "big", "2000000", "x"], TOO_BIG);
    w.int(&["exists", "big"], 0);
    w.err(&["setrange", "big", "1048576", "x"], TOO_BIG);
    w.int(&["setrange", "big", "2000000", ""], 0);
    w.int(&["setrange", "big", "1048575", "x"], 1_048_576);
    w.int(&["strlen", "big"], 1_048_576);
    w.err(&["append", "big", "y"], TOO_BIG);
    w.int(&["strlen", "big"], 1_048_576);
    w.int(&["setrange", "big", "2000000", ""], 1_048_576);
    w.ok(&["set", "small", "hello"]);
    w.err(&["setrange", "small", "2000000", "x"], TOO_BIG);
    w.bulk(&["get", "small"], "hello");
}

// =============================================================================================
// Keys

#[test]
fn del_unlink_exists_type_touch() {
    let server = Server::start(1, &[]);
    let mut w = Wire::new(&server);
    w.ok(&["set", "a", "1"]);
    w.ok(&["set", "b", "2"]);
    w.int(&["del", "a", "b", "c"], 2);
    w.int(&["del", "a"], 0);
    w.ok(&["set", "a", "1"]);
    w.int(&["del", "a", "a"], 1);
    w.ok(&["set", "a", "1"]);
    w.int(&["unlink", "a", "a", "x"], 1);
    w.int(&["exists", "a"], 0);
    w.ok(&["set", "a", "1"]);
    w.int(&["exists", "a"], 1);
    w.int(&["exists", "a", "a", "a"], 3);
    w.int(&["exists", "a", "nope"], 1);
    w.status(&["type", "a"], "string");
    w.status(&["type", "nope"], "none");
    w.ok(&["set", "n", "123"]);
    w.status(&["type", "n"], "string");
    w.err(&["type", "a", "b"], arity("type"));
    w.err(&["type"], arity("type"));
    w.int(&["touch", "a", "n", "nope", "a"], 3);
    w.int(&["touch", "nope"], 0);
    for cmd in ["del", "unlink", "exists", "touch"] {
        w.err(&[cmd], arity(cmd));
    }
}

#[test]
fn rename_and_renamenx() {
    let server = Server::start(1, &[]);
    let mut w = Wire::new(&server);
    w.ok(&["set", "a", "1"]);
    w.err(&["rename", "nope", "x"], NO_SUCH_KEY);
    w.ok(&["rename", "a", "a"]);
    w.bulk(&["get", "a"], "1");
    w.err(&["rename", "nope", "nope"], NO_SUCH_KEY);
    w.ok(&["set", "r1", "v", "ex", "100"]);
    w.ok(&["rename", "r1", "r2"]);
    w.int_in(&["ttl", "r2"], 1..=100);
    w.int(&["exists", "r1"], 0);
    w.ok(&["set", "r3", "x", "ex", "100"]);
    w.ok(&["set", "r2", "v"]);
    w.ok(&["rename", "r2", "r3"]);
    w.bulk(&["get", "r3"], "v");
    w.int(&["ttl", "r3"], -1);
    w.err(&["renamenx", "nope", "x"], NO_SUCH_KEY);
    w.int(&["renamenx", "r3", "a"], 0);
    w.bulk(&["get", "a"], "1");
    w.int(&["renamenx", "r3", "r4"], 1);
    w.int(&["renamenx", "r4", "r4"], 0);
    w.bulk(&["get", "r4"], "v");
    w.err(&["rename", "a"], arity("rename"));
    w.err(&["renamenx", "a", "b", "c"], arity("renamenx"));
}

#[test]
fn copy_with_db_and_replace() {
    let server = Server::start(1, &[]);
    let mut w = Wire::new(&server);
    w.ok(&["set", "src", "v"]);
    w.int(&["copy", "src", "dst"], 1);
    w.bulk(&["get", "dst"], "v");
    w.int(&["copy", "src", "dst"], 0);
    w.ok(&["set", "src", "v2", "px", "100000"]);
    w.int(&["copy", "src", "dst"], 0);
    w.bulk(&["get", "dst"], "v");
    w.int(&["copy", "src", "dst", "replace"], 1);
    w.bulk(&["get", "dst"], "v2");
    w.int_in(&["pttl", "dst"], 1..=100_000);
    w.err(&["copy", "src", "src"], SAME_OBJECT);
    w.int(&["copy", "nope", "dst"], 0);
    w.int(&["copy", "src", "dst", "db", "1"], 1);
    w.int(&["copy", "src", "dst", "db", "1"], 0);
    w.err(&["copy", "src", "dst", "db", "16"], DB_RANGE);
    w.err(&["copy", "src", "dst", "db", "-1"], DB_RANGE);
    w.err(&["copy", "src", "dst", "db", "abc"], NOT_INT);
    w.err(&["copy", "src", "src", "db", "0"], SAME_OBJECT);
    w.int(&["copy", "src", "src", "db", "1", "replace"], 1);
    w.err(&["copy", "src", "dst", "bad"], SYNTAX);
    w.err(&["copy", "src", "dst", "db"], SYNTAX);
    w.int(&["copy", "src", "dst", "replace", "replace"], 1);
    w.err(&["copy", "src"], arity("copy"));
    w.ok(&["select", "1"]);
    w.bulk(&["get", "dst"], "v2");
    w.bulk(&["get", "src"], "v2");
    w.int_in(&["pttl", "src"], 1..=100_000);
    w.ok(&["select", "0"]);
    // The copy is independent of its source.
    w.int(&["append", "dst", "!"], 3);
    w.bulk(&["get", "src"], "v2");
}

#[test]
fn keys_glob_patterns() {
    let server = Server::start(1, &[]);
    let mut w = Wire::new(&server);
    let all = [
        "hello", "hallo", "hbllo", "hxllo", "heeeello", "hllo", "h*llo", "h?llo", "h[a]llo",
        "h\\llo",
    ];
    for key in all {
        w.ok(&["set", key, "1"]);
    }
    w.err(&["keys"], arity("keys"));
    w.err(&["keys", "a", "b"], arity("keys"));
    w.expect(&["keys", "nomatch*"], b"*0\r\n");
    w.expect(&["keys", "h\\*llo"], bulk_array(&["h*llo"]));
    drop(w);

    let mut con = server.client();
    let everything = sorted(all.iter().map(|s| s.to_string()).collect());
    for (pattern, want) in [
        (
            "*",
            everything.iter().map(String::as_str).collect::<Vec<_>>(),
        ),
        (
            "h?llo",
            vec![
                "h*llo", "h?llo", "h\\llo", "hallo", "hbllo", "hello", "hxllo",
            ],
        ),
        ("h*llo", everything.iter().map(String::as_str).collect()),
        ("h[ae]llo", vec!["hallo", "hello"]),
        (
            "h[^e]llo",
            vec!["h*llo", "h?llo", "h\\llo", "hallo", "hbllo", "hxllo"],
        ),
        ("h[a-b]llo", vec!["hallo", "hbllo"]),
        ("h[b-a]llo", vec!["hallo", "hbllo"]),
        ("h\\*llo", vec!["h*llo"]),
        ("h\\?llo", vec!["h?llo"]),
        ("h\\[a\\]llo", vec!["h[a]llo"]),
        ("h\\\\llo", vec!["h\\llo"]),
        ("h[!e]llo", vec!["hello"]),
        ("nomatch*", vec![]),
        ("H*", vec![]),
        ("h[", vec![]),
        ("h[a", vec![]),
        ("[", vec![]),
        ("\\", vec![]),
    ] {
        assert_eq!(keys_sorted(&mut con, pattern), want, "KEYS {pattern}");
    }
}

#[test]
fn scan_returns_every_key_of_ten_thousand() {
    for shards in [1, 2] {
        let server = Server::start(shards, &[]);
        let mut raw = server.raw();
        let names: Vec<String> = (0..10_000).map(|i| format!("key:{i}")).collect();
        for batch in names.chunks(1000) {
            let mut args = vec!["MSET"];
            for name in batch {
                args.push(name);
                args.push("v");
            }
            assert_eq!(raw.cmd(&args), b"+OK\r\n");
        }
        assert_eq!(dbsize(&mut raw), 10_000);
        let mut con = server.client();
        let expected: BTreeSet<String> = names.iter().cloned().collect();

        let seen: BTreeSet<String> = scan_all(&mut con, &[]).into_iter().collect();
        assert_eq!(seen, expected, "plain SCAN, {shards} shard(s)");

        let seen: BTreeSet<String> = scan_all(&mut con, &["COUNT", "1000"]).into_iter().collect();
        assert_eq!(seen, expected, "SCAN COUNT 1000, {shards} shard(s)");

        let matching: BTreeSet<String> = names
            .iter()
            .filter(|k| k.starts_with("key:12"))
            .cloned()
            .collect();
        let seen: BTreeSet<String> = scan_all(&mut con, &["MATCH", "key:12*", "COUNT", "50"])
            .into_iter()
            .collect();
        assert_eq!(seen, matching, "SCAN MATCH key:12*, {shards} shard(s)");

        let seen: BTreeSet<String> = scan_all(&mut con, &["TYPE", "string", "COUNT", "500"])
            .into_iter()
            .collect();
        assert_eq!(seen, expected, "SCAN TYPE string, {shards} shard(s)");
    }
}

#[test]
fn scan_options_and_errors() {
    let server = Server::start(1, &[]);
    let mut w = Wire::new(&server);
    for key in ["key:0", "key:1", "key:2", "key:3", "key:4", "other"] {
        w.ok(&["set", key, "v"]);
    }
    w.err(
        &["scan", "0", "type", "badtype"],
        "ERR unknown type name 'badtype'",
    );
    w.err(&["scan", "abc"], INVALID_CURSOR);
    w.err(&["scan", "-1"], INVALID_CURSOR);
    w.err(&["scan", "1.5"], INVALID_CURSOR);
    w.err(&["scan", "18446744073709551616"], INVALID_CURSOR);
    w.err(&["scan", "0", "count", "0"], SYNTAX);
    w.err(&["scan", "0", "count", "-1"], SYNTAX);
    w.err(&["scan", "0", "count", "abc"], NOT_INT);
    w.err(&["scan", "0", "match"], SYNTAX);
    w.err(&["scan", "0", "bad", "x"], SYNTAX);
    w.err(&["scan", "0", "count"], SYNTAX);
    w.err(&["scan", "0", "type"], SYNTAX);
    w.err(&["scan"], arity("scan"));
    w.err(
        &["scan", "0", "novalues"],
        "ERR NOVALUES option can only be used in HSCAN",
    );
    // The largest cursor is valid.
    let reply = w.raw.cmd(&["scan", "18446744073709551615"]);
    if !reply.starts_with(b"*2\r\n") {
        let shown = show(&reply);
        w.note(
            &["scan", "18446744073709551615"],
            format!("expected a scan page, got {shown}"),
        );
    }
    drop(w);

    let mut con = server.client();
    let five = vec!["key:0", "key:1", "key:2", "key:3", "key:4"];
    let all: Vec<&str> = five.iter().copied().chain(["other"]).collect();
    assert_eq!(sorted(scan_all(&mut con, &[])), all);
    assert_eq!(sorted(scan_all(&mut con, &["MATCH", "key:*"])), five);
    assert_eq!(sorted(scan_all(&mut con, &["COUNT", "100"])), all);
    assert_eq!(sorted(scan_all(&mut con, &["COUNT", "1"])), all);
    assert_eq!(
        sorted(scan_all(&mut con, &["TYPE", "list"])),
        Vec::<String>::new()
    );
    assert_eq!(
        sorted(scan_all(&mut con, &["TYPE", "LIST"])),
        Vec::<String>::new()
    );
    assert_eq!(sorted(scan_all(&mut con, &["TYPE", "STRING"])), all);
    assert_eq!(
        sorted(scan_all(&mut con, &["TYPE", "string", "MATCH", "o*"])),
        vec!["other"]
    );
    assert_eq!(
        sorted(scan_all(&mut con, &["MATCH", "key:1", "MATCH", "other"])),
        vec!["other"]
    );
    assert_eq!(
        sorted(scan_all(&mut con, &["MATCH", "nomatch*"])),
        Vec::<String>::new()
    );
}

#[test]
fn randomkey_on_empty_and_filled_db() {
    let server = Server::start(1, &[]);
    let mut w = Wire::new(&server);
    w.nil(&["randomkey"]);
    w.err(&["randomkey", "x"], arity("randomkey"));
    let mut w3 = Wire::resp3(&server);
    w3.nil(&["randomkey"]);
    w.ok(&["set", "only", "v"]);
    w.bulk(&["randomkey"], "only");
    w.ok(&["mset", "a", "1", "b", "2"]);
    let mut con = server.client();
    for _ in 0..20 {
        let key: String = redis::cmd("RANDOMKEY").query(&mut con).expect("RANDOMKEY");
        assert!(
            ["only", "a", "b"].contains(&key.as_str()),
            "RANDOMKEY gave {key}"
        );
    }
    w.ok(&["flushdb"]);
    w.nil(&["randomkey"]);
}

#[test]
fn expire_options_and_errors() {
    let server = Server::start(1, &[]);
    let mut w = Wire::new(&server);
    w.ok(&["set", "e", "v"]);
    w.int(&["expire", "nope", "100"], 0);
    w.int(&["pexpire", "nope", "100"], 0);
    w.int(&["expireat", "nope", "4000000000"], 0);
    w.int(&["pexpireat", "nope", "4000000000000"], 0);
    for cmd in ["expire", "pexpire", "expireat", "pexpireat"] {
        w.err(&[cmd, "e", "abc"], NOT_INT);
        w.err(&[cmd, "e", "1.5"], NOT_INT);
        w.err(&[cmd, "e", ""], NOT_INT);
        w.err(&[cmd, "e"], arity(cmd));
        w.err(&[cmd, "e", "100", "nx", "xx"], NX_XX_GT_LT);
        w.err(&[cmd, "e", "100", "nx", "gt"], NX_XX_GT_LT);
        w.err(&[cmd, "e", "100", "nx", "lt"], NX_XX_GT_LT);
        w.err(&[cmd, "e", "100", "GT", "LT"], GT_LT);
        w.err(&[cmd, "e", "100", "bad"], "ERR Unsupported option bad");
        w.err(&[cmd, "e", "1", "2"], "ERR Unsupported option 2");
    }
    // Options are checked before the number and before the key lookup.
    w.err(&["expire", "e", "abc", "bad"], "ERR Unsupported option bad");
    w.err(&["expire", "nope", "100", "nx", "xx"], NX_XX_GT_LT);
    for time in [I64_MAX, "9223372036854775", "9223372036854774", I64_MIN] {
        w.err(&["expire", "e", time], invalid_expire("expire"));
    }
    w.err(&["pexpire", "e", I64_MAX], invalid_expire("pexpire"));
    w.err(&["expireat", "e", I64_MAX], invalid_expire("expireat"));
    w.int(&["ttl", "e"], -1);
    w.int(&["pexpireat", "e", I64_MAX], 1);
    w.int(&["pexpiretime", "e"], i64::MAX);
    w.int(&["expire", "e", "100", "xx", "gt"], 0);
    w.int(&["expire", "e", "100", "nx", "nx"], 0);

    w.ok(&["set", "e", "v"]);
    w.int(&["expire", "e", "100", "xx"], 0);
    w.int(&["expire", "e", "100", "gt"], 0);
    w.int(&["ttl", "e"], -1);
    w.int(&["expire", "e", "100", "lt"], 1);
    w.int(&["expire", "e", "100", "nx"], 0);
    w.int(&["expire", "e", "200", "gt"], 1);
    w.int_in(&["ttl", "e"], 101..=200);
    w.int(&["expire", "e", "50", "gt"], 0);
    w.int(&["expire", "e", "50", "lt"], 1);
    w.int_in(&["ttl", "e"], 1..=50);
    w.int(&["expire", "e", "500", "lt"], 0);
    w.int(&["expire", "e", "300", "xx"], 1);
    w.int_in(&["ttl", "e"], 201..=300);
    w.int(&["pexpire", "e", "400000", "XX", "GT"], 1);
    w.int_in(&["pttl", "e"], 300_001..=400_000);
    w.int(&["expireat", "e", "4000000000", "gt"], 1);
    w.int(&["expiretime", "e"], 4_000_000_000);
    w.int(&["pexpireat", "e", "3999999999000", "gt"], 0);
    w.int(&["pexpireat", "e", "3999999999000", "lt"], 1);
    w.int(&["pexpiretime", "e"], 3_999_999_999_000);

    w.ok(&["set", "f", "v"]);
    w.int(&["pexpire", "f", "100000", "nx"], 1);
    w.int_in(&["pttl", "f"], 1..=100_000);
}

#[test]
fn expire_with_non_positive_or_past_times_deletes() {
    let server = Server::start(1, &[]);
    let mut w = Wire::new(&server);
    for (cmd, time) in [
        ("expire", "0"),
        ("expire", "-1"),
        ("pexpire", "0"),
        ("pexpire", "-5"),
        ("expireat", "1"),
        ("expireat", "0"),
        ("pexpireat", "100"),
        ("pexpireat", "-1"),
    ] {
        w.ok(&["set", "e", "v"]);
        w.int(&[cmd, "e", time], 1);
        w.int(&["exists", "e"], 0);
        w.nil(&["get", "e"]);
    }
    // GT against a longer TTL refuses, LT deletes.
    w.ok(&["set", "e", "v"]);
    w.int(&["pexpire", "e", "100000"], 1);
    w.int(&["expire", "e", "-1", "gt"], 0);
    w.int(&["exists", "e"], 1);
    w.int(&["expire", "e", "-1", "lt"], 1);
    w.int(&["exists", "e"], 0);
    // NX on a key without TTL: deletes too.
    w.ok(&["set", "e", "v"]);
    w.int(&["expire", "e", "0", "nx"], 1);
    w.int(&["exists", "e"], 0);
    w.int(&["expire", "e", "0"], 0);
}

#[test]
fn ttl_pttl_expiretime_and_persist() {
    let server = Server::start(1, &[]);
    let mut w = Wire::new(&server);
    for cmd in ["ttl", "pttl", "expiretime", "pexpiretime"] {
        w.int(&[cmd, "nope"], -2);
    }
    w.ok(&["set", "e", "v"]);
    for cmd in ["ttl", "pttl", "expiretime", "pexpiretime"] {
        w.int(&[cmd, "e"], -1);
        w.err(&[cmd, "e", "x"], arity(cmd));
        w.err(&[cmd], arity(cmd));
    }
    w.int(&["expire", "e", "100"], 1);
    w.int_in(&["ttl", "e"], 1..=100);
    w.int_in(&["pttl", "e"], 1..=100_000);
    let now = unix_now();
    let now_s = now.as_secs() as i64;
    let now_ms = now.as_millis() as i64;
    w.int_in(&["expiretime", "e"], now_s - 5..=now_s + 101);
    w.int_in(&["pexpiretime", "e"], now_ms - 5_000..=now_ms + 100_000);

    w.int(&["persist", "e"], 1);
    w.int(&["persist", "e"], 0);
    w.int(&["persist", "nope"], 0);
    w.int(&["ttl", "e"], -1);
    w.int(&["pexpiretime", "e"], -1);
    w.err(&["persist", "e", "x"], arity("persist"));
    w.err(&["persist"], arity("persist"));
    w.bulk(&["get", "e"], "v");
}

#[test]
fn object_encoding_rules() {
    let server = Server::start(1, &[]);
    let mut w = Wire::new(&server);
    let x44 = "x".repeat(44);
    let x45 = "x".repeat(45);
    for (key, value, encoding) in [
        ("oi", "12345", "int"),
        ("oe", "short", "embstr"),
        ("or", x45.as_str(), "raw"),
        ("o44", x44.as_str(), "embstr"),
        ("oneg", "-5", "int"),
        ("omin", I64_MIN, "int"),
        ("obig", "12345678901234567890", "embstr"),
        ("o0", "0", "int"),
        ("oz", "007", "embstr"),
        ("ominus0", "-0", "embstr"),
    ] {
        w.ok(&["set", key, value]);
        w.bulk(&["object", "encoding", key], encoding);
    }
    w.int(&["append", "oap", "x"], 1);
    w.bulk(&["object", "encoding", "oap"], "embstr");
    w.int(&["append", "oap", "y"], 2);
    w.bulk(&["object", "encoding", "oap"], "raw");
    w.int(&["append", "oi", "6"], 6);
    w.bulk(&["object", "encoding", "oi"], "raw");
    w.ok(&["set", "oi2", "12"]);
    w.int(&["append", "oi2", ""], 2);
    w.bulk(&["object", "encoding", "oi2"], "raw");
    w.int(&["incr", "oe2"], 1);
    w.bulk(&["object", "encoding", "oe2"], "int");
    w.ok(&["set", "n", "abc"]);
    w.bulk(&["object", "encoding", "n"], "embstr");
    w.int(&["setrange", "sr", "0", "12"], 2);
    w.bulk(&["object", "encoding", "sr"], "raw");
    w.nil(&["getset", "gs", "123"]);
    w.bulk(&["object", "encoding", "gs"], "int");
    w.nil(&["object", "encoding", "nope"]);
    w.err(&["object", "encoding"], arity("object|encoding"));
    w.err(&["object", "encoding", "a", "b"], arity("object|encoding"));

    let mut w3 = Wire::resp3(&server);
    w3.nil(&["object", "encoding", "nope"]);
    w3.bulk(&["object", "encoding", "oe"], "embstr");
}

#[test]
fn object_refcount_freq_and_help() {
    let server = Server::start(1, &[]);
    let mut w = Wire::new(&server);
    w.ok(&["set", "oi", "12345"]);
    w.ok(&["set", "oe", "short"]);
    w.ok(&["set", "o0", "0"]);
    // corekv's documented choice: no shared objects, so every existing key answers 1
    // (Valkey answers 2147483647 for shared small integers such as "0").
    w.int(&["object", "refcount", "oi"], 1);
    w.int(&["object", "refcount", "oe"], 1);
    w.int(&["object", "refcount", "o0"], 1);
    w.nil(&["object", "refcount", "nope"]);
    w.err(&["object", "refcount"], arity("object|refcount"));

    w.err(&["object", "freq", "oe"], LFU_OFF);
    w.nil(&["object", "freq", "nope"]);
    w.err(&["object", "freq"], arity("object|freq"));
    w.err(&["object", "help", "x"], arity("object|help"));
    w.err(&["object"], arity("object"));
    w.err(
        &["object", "nosuch"],
        "ERR unknown subcommand 'nosuch'. Try OBJECT HELP.",
    );

    let mut w3 = Wire::resp3(&server);
    w3.nil(&["object", "refcount", "nope"]);
    w3.nil(&["object", "freq", "nope"]);
    drop(w3);
    drop(w);

    // OBJECT HELP: an array of status lines, a header, the subcommands, and HELP last.
    let mut raw = server.raw();
    let help = raw.cmd_text(&["object", "help"]);
    let (count, body) = help
        .strip_prefix('*')
        .and_then(|rest| rest.split_once("\r\n"))
        .unwrap_or_else(|| panic!("OBJECT HELP is not an array: {help:?}"));
    let lines: Vec<&str> = body
        .strip_suffix("\r\n")
        .unwrap_or(body)
        .split("\r\n")
        .collect();
    assert_eq!(count.parse::<usize>().ok(), Some(lines.len()), "{help:?}");
    assert!(lines.iter().all(|l| l.starts_with('+')), "{help:?}");
    assert_eq!(
        lines.first().copied(),
        Some("+OBJECT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:")
    );
    for entry in ["+ENCODING <key>", "+FREQ <key>", "+REFCOUNT <key>", "+HELP"] {
        assert!(
            lines.contains(&entry),
            "OBJECT HELP lacks {entry}: {help:?}"
        );
    }
    assert_eq!(lines.last().copied(), Some("+    Print this help."));
}

// =============================================================================================
// Expiry

#[test]
fn lazy_expiry_on_access() {
    let server = Server::start(1, &[]);
    let mut raw = server.raw();
    assert_eq!(raw.cmd(&["SET", "short", "v", "PX", "50"]), b"+OK\r\n");
    assert_eq!(raw.cmd(&["SET", "long", "v"]), b"+OK\r\n");
    assert!(
        eventually(Duration::from_secs(5), || raw.cmd(&["GET", "short"])
            == b"$-1\r\n"),
        "a key with PX 50 is still readable"
    );
    let mut w = Wire::new(&server);
    w.int(&["exists", "short"], 0);
    w.int(&["ttl", "short"], -2);
    w.bulk(&["get", "long"], "v");
    // The name is free again, without a TTL.
    w.ok(&["set", "short", "w"]);
    w.int(&["ttl", "short"], -1);
}

#[test]
fn active_expiry_reclaims_untouched_keys() {
    let server = Server::start(2, &[]);
    let mut raw = server.raw();
    let keys = keys_alternating_shards("volatile:", 200);
    for key in &keys {
        assert_eq!(raw.cmd(&["SET", key, "v", "PX", "100"]), b"+OK\r\n");
    }
    assert!(
        eventually(Duration::from_secs(10), || dbsize(&mut raw) == 0),
        "DBSIZE stayed at {} without any access to the keys",
        dbsize(&mut raw)
    );
    let mut expired = None;
    let reached = eventually(Duration::from_secs(10), || {
        expired = info_field(&mut raw, "stats", "expired_keys");
        expired.as_deref() == Some("200")
    });
    assert!(
        reached,
        "INFO stats expired_keys is {expired:?}, expected 200"
    );
}

// =============================================================================================
// Multi-key commands across shards: the same replies with one shard and with two.

#[test]
fn mset_mget_del_exists_touch_unlink_across_shards() {
    let (a, b) = keys_on_different_shards();
    let (a, b) = (a.as_str(), b.as_str());
    assert_split(&[a, b]);
    let mut failures = Vec::new();
    for shards in [1, 2] {
        let server = Server::start(shards, &[]);
        let mut w = Wire::new(&server).labelled(format!("{shards} shard(s) "));
        w.ok(&["mset", a, "1", b, "2"]);
        w.expect(
            &["mget", a, "missing", b, a],
            b"*4\r\n$1\r\n1\r\n$-1\r\n$1\r\n2\r\n$1\r\n1\r\n",
        );
        w.ok(&["mset", a, "x", b, "y", a, "z"]);
        w.bulk(&["get", a], "z");
        w.bulk(&["get", b], "y");
        w.int(&["exists", a, b, a, "missing"], 3);
        w.int(&["touch", a, b, "missing", b], 3);
        w.int(&["del", a, b, "missing"], 2);
        w.int(&["exists", a, b], 0);
        w.ok(&["mset", a, "1", b, "2"]);
        w.int(&["unlink", b, a, a], 2);
        w.int(&["dbsize"], 0);

        let mut w3 = Wire::resp3(&server).labelled(format!("{shards} shard(s) "));
        w3.ok(&["mset", a, "1", b, "2"]);
        w3.expect(
            &["mget", "missing", b, a],
            b"*3\r\n_\r\n$1\r\n2\r\n$1\r\n1\r\n",
        );
        failures.extend(w3.take_failures());

        // Many keys over both shards, through a client library.
        let many = keys_alternating_shards("many:", 20);
        let mut con = server.client();
        let pairs: Vec<(String, String)> = many
            .iter()
            .map(|k| (k.clone(), format!("value-{k}")))
            .collect();
        let _: () = redis::cmd("MSET")
            .arg(&pairs)
            .query(&mut con)
            .expect("MSET");
        let got: Vec<Option<String>> = redis::cmd("MGET").arg(&many).query(&mut con).expect("MGET");
        let want: Vec<Option<String>> = pairs.iter().map(|(_, v)| Some(v.clone())).collect();
        assert_eq!(got, want, "{shards} shard(s)");
        let n: i64 = redis::cmd("DEL").arg(&many).query(&mut con).expect("DEL");
        assert_eq!(n, 20, "{shards} shard(s)");
        failures.extend(w.take_failures());
    }
    report(failures);
}

#[test]
fn msetnx_across_shards() {
    let (a, b) = keys_on_different_shards();
    let (a, b) = (a.as_str(), b.as_str());
    let mut failures = Vec::new();
    for shards in [1, 2] {
        let server = Server::start(shards, &[]);
        let mut w = Wire::new(&server).labelled(format!("{shards} shard(s) "));
        w.int(&["msetnx", a, "1", b, "2"], 1);
        w.expect(&["mget", a, b], b"*2\r\n$1\r\n1\r\n$1\r\n2\r\n");
        w.int(&["del", b], 1);
        // One existing key (on the other shard) blocks the whole command.
        w.int(&["msetnx", b, "new", a, "new"], 0);
        w.int(&["exists", b], 0);
        w.bulk(&["get", a], "1");
        w.int(&["del", a], 1);
        w.ok(&["set", b, "old"]);
        w.int(&["msetnx", a, "new", b, "new"], 0);
        w.int(&["exists", a], 0);
        w.bulk(&["get", b], "old");
        w.int(&["del", b], 1);
        w.int(&["msetnx", a, "1", b, "2", a, "3"], 1);
        w.expect(&["mget", a, b], b"*2\r\n$1\r\n3\r\n$1\r\n2\r\n");
        w.err(&["msetnx", a, "1", b], arity("msetnx"));
        failures.extend(w.take_failures());
    }
    report(failures);
}

#[test]
fn rename_and_renamenx_across_shards_carry_ttl() {
    let (a, b) = keys_on_different_shards();
    let (a, b) = (a.as_str(), b.as_str());
    let mut failures = Vec::new();
    for shards in [1, 2] {
        let server = Server::start(shards, &[]);
        let mut w = Wire::new(&server).labelled(format!("{shards} shard(s) "));
        w.err(&["rename", a, b], NO_SUCH_KEY);
        w.err(&["renamenx", a, b], NO_SUCH_KEY);
        w.ok(&["set", a, "v", "px", "100000"]);
        w.ok(&["rename", a, b]);
        w.int(&["exists", a], 0);
        w.bulk(&["get", b], "v");
        w.int_in(&["pttl", b], 1..=100_000);
        // And back, over an existing destination with its own TTL.
        w.ok(&["set", a, "old", "ex", "500"]);
        w.ok(&["rename", b, a]);
        w.bulk(&["get", a], "v");
        w.int_in(&["pttl", a], 1..=100_000);
        w.int(&["exists", b], 0);
        // A destination TTL does not survive a source without one.
        w.ok(&["set", b, "plain"]);
        w.ok(&["set", a, "old", "ex", "500"]);
        w.ok(&["rename", b, a]);
        w.int(&["ttl", a], -1);
        w.bulk(&["get", a], "plain");

        w.ok(&["set", b, "other"]);
        w.int(&["renamenx", a, b], 0);
        w.bulk(&["get", a], "plain");
        w.bulk(&["get", b], "other");
        w.int(&["del", b], 1);
        w.ok(&["set", a, "moved", "ex", "100"]);
        w.int(&["renamenx", a, b], 1);
        w.int(&["exists", a], 0);
        w.bulk(&["get", b], "moved");
        w.int_in(&["ttl", b], 1..=100);
        w.int(&["renamenx", b, b], 0);
        w.ok(&["rename", b, b]);
        w.int_in(&["ttl", b], 1..=100);
        w.int(&["dbsize"], 1);
        failures.extend(w.take_failures());
    }
    report(failures);
}

#[test]
fn copy_across_shards_carries_ttl() {
    let (a, b) = keys_on_different_shards();
    let (a, b) = (a.as_str(), b.as_str());
    let mut failures = Vec::new();
    for shards in [1, 2] {
        let server = Server::start(shards, &[]);
        let mut w = Wire::new(&server).labelled(format!("{shards} shard(s) "));
        w.int(&["copy", a, b], 0);
        w.ok(&["set", a, "v", "px", "100000"]);
        w.int(&["copy", a, b], 1);
        w.bulk(&["get", b], "v");
        w.int_in(&["pttl", b], 1..=100_000);
        w.bulk(&["get", a], "v");
        w.int(&["copy", a, b], 0);
        w.ok(&["set", a, "w"]);
        w.int(&["copy", a, b, "replace"], 1);
        w.bulk(&["get", b], "w");
        w.int(&["ttl", b], -1);
        w.err(&["copy", a, a], SAME_OBJECT);
        w.ok(&["set", a, "v2", "ex", "100"]);
        w.int(&["copy", a, b, "db", "1"], 1);
        w.int(&["copy", a, b, "db", "1"], 0);
        w.err(&["copy", a, b, "db", "16"], DB_RANGE);
        w.ok(&["select", "1"]);
        w.bulk(&["get", b], "v2");
        w.int_in(&["ttl", b], 1..=100);
        w.int(&["dbsize"], 1);
        w.ok(&["select", "0"]);
        w.bulk(&["get", b], "w");
        w.int(&["dbsize"], 2);
        failures.extend(w.take_failures());
    }
    report(failures);
}
