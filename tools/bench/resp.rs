//! RESP2: the requests the workloads send, encoded straight into a connection's output buffer,
//! and an incremental reply parser that keeps only what the statistics need.

use std::fmt;

use crate::args::Workload;

/// Length of a key: `key:` and 12 digits.
const KEY_LEN: usize = 16;
/// Nesting deeper than this is not a reply any command here can give.
const MAX_DEPTH: usize = 8;

/// The fixed bytes of every request a workload sends, built once per run.
#[derive(Debug, Clone)]
pub struct Requests {
    /// `$<len>\r\n<value>\r\n`: the end of every SET.
    value_tail: Vec<u8>,
    /// The whole `WAITAOF 1 0 0` or `WAIT 1 <timeout>` command; empty for other workloads.
    wait: Vec<u8>,
}

impl Requests {
    /// The requests for values of `value_size` bytes and a WAIT timeout of `wait_timeout_ms`.
    pub fn new(workload: Workload, value_size: usize, wait_timeout_ms: u64) -> Requests {
        let mut value_tail = format!("${value_size}\r\n").into_bytes();
        value_tail.resize(value_tail.len() + value_size, b'x');
        value_tail.extend_from_slice(b"\r\n");
        let wait = match workload {
            Workload::SetWaitAof => command(&[b"WAITAOF", b"1", b"0", b"0"]),
            Workload::SetWait => command(&[b"WAIT", b"1", wait_timeout_ms.to_string().as_bytes()]),
            _ => Vec::new(),
        };
        Requests { value_tail, wait }
    }

    /// Appends `SET key:<n> <value>`.
    pub fn set(&self, out: &mut Vec<u8>, key: u64) {
        out.extend_from_slice(b"*3\r\n$3\r\nSET\r\n");
        push_key(out, key);
        out.extend_from_slice(&self.value_tail);
    }

    /// Appends `GET key:<n>`.
    pub fn get(&self, out: &mut Vec<u8>, key: u64) {
        out.extend_from_slice(b"*2\r\n$3\r\nGET\r\n");
        push_key(out, key);
    }

    /// Appends the workload's WAIT or WAITAOF command.
    pub fn wait(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.wait);
    }
}

/// Encodes one command as a RESP multibulk request.
pub fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    corekv::protocol::encode_request(&mut out, args);
    out
}

/// Appends the bulk string `key:%012d` (the caller keeps `n` below 10^12).
fn push_key(out: &mut Vec<u8>, n: u64) {
    let mut key = *b"$16\r\nkey:000000000000\r\n";
    let digits_end = 5 + KEY_LEN;
    let mut n = n;
    for d in key[9..digits_end].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&key);
}

/// What the statistics need from one reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// A status, bulk string or null.
    Other,
    /// An error; the range of its message (after the `-`) in the parsed buffer.
    Error { start: usize, end: usize },
    /// An integer (WAIT's acknowledgement count).
    Integer(i64),
    /// An array and its first element if that is an integer (WAITAOF's local count).
    Array { first: Option<i64> },
}

/// Bytes that are not RESP2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses the first reply in `buf`: the reply and its length in bytes, or `None` until all of
/// it has arrived.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, ProtocolError> {
    element(buf, 0, 0)
}

/// Parses the element starting at `at`: what it is and where it ends.
fn element(buf: &[u8], at: usize, depth: usize) -> Result<Option<(Reply, usize)>, ProtocolError> {
    let Some((line_end, next)) = line(buf, at) else {
        return Ok(None);
    };
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    let body = &buf[at + 1..line_end];
    match kind {
        b'+' => Ok(Some((Reply::Other, next))),
        b'-' => Ok(Some((
            Reply::Error {
                start: at + 1,
                end: line_end,
            },
            next,
        ))),
        b':' => Ok(Some((Reply::Integer(integer(body)?), next))),
        b'$' => {
            let len = integer(body)?;
            if len < 0 {
                return Ok(Some((Reply::Other, next)));
            }
            let end = next
                .checked_add(len as usize)
                .and_then(|e| e.checked_add(2))
                .ok_or_else(|| ProtocolError(format!("bulk length {len} too large")))?;
            Ok((buf.len() >= end).then_some((Reply::Other, end)))
        }
        b'*' => {
            let count = integer(body)?;
            if depth >= MAX_DEPTH {
                return Err(ProtocolError("replies nested too deeply".into()));
            }
            let mut first = None;
            let mut end = next;
            for i in 0..count.max(0) {
                let Some((reply, e)) = element(buf, end, depth + 1)? else {
                    return Ok(None);
                };
                if let (0, Reply::Integer(n)) = (i, reply) {
                    first = Some(n);
                }
                end = e;
            }
            Ok(Some((Reply::Array { first }, end)))
        }
        other => Err(ProtocolError(format!(
            "unexpected reply type byte 0x{other:02x}"
        ))),
    }
}

/// The end of the line starting at `at` (the index of its `\r`) and the start of the next.
fn line(buf: &[u8], at: usize) -> Option<(usize, usize)> {
    let nl = buf.get(at..)?.iter().position(|&b| b == b'\n')? + at;
    (nl > at && buf[nl - 1] == b'\r').then_some((nl - 1, nl + 1))
}

fn integer(digits: &[u8]) -> Result<i64, ProtocolError> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            ProtocolError(format!(
                "bad number '{}' in a reply",
                String::from_utf8_lossy(digits)
            ))
        })
}

/// The error's prefix: its first word (`ERR`, `NOAUTH`, `READONLY`, ...).
pub fn error_prefix(message: &[u8]) -> &[u8] {
    let end = message
        .iter()
        .position(|&b| b == b' ')
        .unwrap_or(message.len());
    &message[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_requests() {
        let r = Requests::new(Workload::SetWaitAof, 3, 1000);
        let mut out = Vec::new();
        r.set(&mut out, 42);
        r.wait(&mut out);
        assert_eq!(
            out,
            b"*3\r\n$3\r\nSET\r\n$16\r\nkey:000000000042\r\n$3\r\nxxx\r\n\
              *4\r\n$7\r\nWAITAOF\r\n$1\r\n1\r\n$1\r\n0\r\n$1\r\n0\r\n"
        );
        let mut out = Vec::new();
        Requests::new(Workload::SetWait, 0, 250).wait(&mut out);
        assert_eq!(out, b"*3\r\n$4\r\nWAIT\r\n$1\r\n1\r\n$3\r\n250\r\n");
        let mut out = Vec::new();
        r.get(&mut out, 999_999_999_999);
        assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$16\r\nkey:999999999999\r\n");
    }

    #[test]
    fn parses_replies() {
        assert_eq!(parse(b"+OK\r\n"), Ok(Some((Reply::Other, 5))));
        assert_eq!(parse(b":3\r\n+"), Ok(Some((Reply::Integer(3), 4))));
        assert_eq!(parse(b"$3\r\nabc\r\n"), Ok(Some((Reply::Other, 9))));
        assert_eq!(parse(b"$-1\r\n"), Ok(Some((Reply::Other, 5))));
        assert_eq!(
            parse(b"*2\r\n:1\r\n:0\r\n"),
            Ok(Some((Reply::Array { first: Some(1) }, 12)))
        );
        let err = b"-NOAUTH Authentication required.\r\n";
        let Ok(Some((Reply::Error { start, end }, n))) = parse(err) else {
            panic!("not an error reply");
        };
        assert_eq!(n, err.len());
        assert_eq!(error_prefix(&err[start..end]), b"NOAUTH");
    }

    #[test]
    fn waits_for_whole_replies() {
        for partial in [
            &b""[..],
            b"+O",
            b"+OK\r",
            b"$3\r\nab",
            b"*2\r\n:1\r\n",
            b"$3\r\nabc\r",
        ] {
            assert_eq!(parse(partial), Ok(None), "{partial:?}");
        }
        assert!(parse(b"?\r\n").is_err());
        assert!(parse(b":x\r\n").is_err());
    }
}
