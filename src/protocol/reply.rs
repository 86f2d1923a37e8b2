//! Reply encoder for RESP2 and RESP3.
//!
//! Commands write their replies straight into a byte buffer through [`ReplyBuf`], which knows the
//! connection's protocol version, so a reply is encoded once, where the command runs, and copied
//! to the socket as is. Where RESP3 has a richer type (null, map, set, double, verbatim string)
//! the RESP2 form is the one Valkey sends.

/// The protocol a connection speaks, chosen with `HELLO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    Resp2,
    Resp3,
}

impl Protocol {
    pub fn version(self) -> i64 {
        match self {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        }
    }
}

/// A byte buffer that replies are encoded into.
#[derive(Debug, Default)]
pub struct ReplyBuf {
    bytes: Vec<u8>,
    protocol: Protocol,
    errors: u64,
}

impl ReplyBuf {
    pub fn new(protocol: Protocol) -> Self {
        Self {
            bytes: Vec::new(),
            protocol,
            errors: 0,
        }
    }

    pub fn with_capacity(protocol: Protocol, capacity_bytes: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(capacity_bytes),
            protocol,
            errors: 0,
        }
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    pub fn set_protocol(&mut self, protocol: Protocol) {
        self.protocol = protocol;
    }

    pub fn is_resp3(&self) -> bool {
        self.protocol == Protocol::Resp3
    }

    /// The encoded bytes so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// How many error replies were written since this buffer was made.
    pub fn error_count(&self) -> u64 {
        self.errors
    }

    /// Drops everything after `len` bytes (used to replace a reply that turned out to be wrong,
    /// for example a queued command inside MULTI).
    pub fn truncate(&mut self, len: usize) {
        self.bytes.truncate(len);
    }

    /// Removes and returns the encoded bytes, keeping the protocol.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.bytes)
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
    }

    /// Appends bytes that are already encoded replies.
    pub fn raw(&mut self, encoded: &[u8]) {
        self.bytes.extend_from_slice(encoded);
    }

    pub fn ok(&mut self) {
        self.bytes.extend_from_slice(b"+OK\r\n");
    }

    pub fn queued(&mut self) {
        self.bytes.extend_from_slice(b"+QUEUED\r\n");
    }

    /// A simple string; CR and LF are replaced by spaces so the reply stays one line.
    pub fn simple(&mut self, text: &str) {
        self.bytes.push(b'+');
        self.line(text.as_bytes());
    }

    /// An error reply. `message` starts with its code (`ERR`, `WRONGTYPE`, …).
    pub fn error(&mut self, message: &str) {
        self.errors += 1;
        self.bytes.push(b'-');
        self.line(message.as_bytes());
    }

    fn line(&mut self, text: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(text);
        for b in &mut self.bytes[start..] {
            if *b == b'\r' || *b == b'\n' {
                *b = b' ';
            }
        }
        self.bytes.extend_from_slice(b"\r\n");
    }

    pub fn int(&mut self, value: i64) {
        self.header(b':', value);
    }

    pub fn bulk(&mut self, value: &[u8]) {
        self.header(b'$', value.len() as i64);
        self.bytes.extend_from_slice(value);
        self.bytes.extend_from_slice(b"\r\n");
    }

    /// A bulk string holding the decimal form of `value`.
    pub fn bulk_int(&mut self, value: i64) {
        let mut digits = itoa::Buffer::new();
        self.bulk(digits.format(value).as_bytes());
    }

    /// The null reply: `$-1` in RESP2, `_` in RESP3.
    pub fn null(&mut self) {
        match self.protocol {
            Protocol::Resp2 => self.bytes.extend_from_slice(b"$-1\r\n"),
            Protocol::Resp3 => self.bytes.extend_from_slice(b"_\r\n"),
        }
    }

    /// The null array: `*-1` in RESP2, `_` in RESP3 (an aborted EXEC, for example).
    pub fn null_array(&mut self) {
        match self.protocol {
            Protocol::Resp2 => self.bytes.extend_from_slice(b"*-1\r\n"),
            Protocol::Resp3 => self.bytes.extend_from_slice(b"_\r\n"),
        }
    }

    pub fn array(&mut self, len: usize) {
        self.header(b'*', len as i64);
    }

    /// A map of `len` pairs: `%` in RESP3, a flat array of `2 * len` in RESP2.
    pub fn map(&mut self, len: usize) {
        match self.protocol {
            Protocol::Resp2 => self.header(b'*', 2 * len as i64),
            Protocol::Resp3 => self.header(b'%', len as i64),
        }
    }

    /// A set: `~` in RESP3, an array in RESP2.
    pub fn set(&mut self, len: usize) {
        match self.protocol {
            Protocol::Resp2 => self.header(b'*', len as i64),
            Protocol::Resp3 => self.header(b'~', len as i64),
        }
    }

    /// A verbatim string (`=`) in RESP3, a bulk string in RESP2. `format` is three bytes.
    pub fn verbatim(&mut self, format: &str, text: &[u8]) {
        match self.protocol {
            Protocol::Resp2 => self.bulk(text),
            Protocol::Resp3 => {
                self.header(b'=', (text.len() + 4) as i64);
                self.bytes.extend_from_slice(format.as_bytes());
                self.bytes.push(b':');
                self.bytes.extend_from_slice(text);
                self.bytes.extend_from_slice(b"\r\n");
            }
        }
    }

    /// A double: `,` in RESP3, a bulk string in RESP2, formatted as Valkey does (`%.17g`).
    pub fn double(&mut self, value: f64) {
        let text = format_double(value);
        match self.protocol {
            Protocol::Resp2 => self.bulk(text.as_bytes()),
            Protocol::Resp3 => {
                self.bytes.push(b',');
                self.bytes.extend_from_slice(text.as_bytes());
                self.bytes.extend_from_slice(b"\r\n");
            }
        }
    }

    fn header(&mut self, kind: u8, value: i64) {
        let mut digits = itoa::Buffer::new();
        self.bytes.push(kind);
        self.bytes
            .extend_from_slice(digits.format(value).as_bytes());
        self.bytes.extend_from_slice(b"\r\n");
    }
}

/// Formats a double the way Valkey's replies do: `inf`, `-inf`, `nan`, or the shortest form that
/// reads back exactly.
pub fn format_double(value: f64) -> String {
    if value.is_nan() {
        "nan".to_string()
    } else if value.is_infinite() {
        if value > 0.0 { "inf" } else { "-inf" }.to_string()
    } else if value == value.trunc() && value.abs() < 1e17 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

/// The length of the first complete reply encoded in `buf`, or `None` if it is cut short.
pub fn element_len(buf: &[u8]) -> Option<usize> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
    let header = std::str::from_utf8(buf.get(1..line_end)?).ok()?;
    let after = line_end + 2;
    match buf.first()? {
        b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => Some(after),
        b'$' | b'=' | b'!' => {
            let len: i64 = header.parse().ok()?;
            if len < 0 {
                return Some(after);
            }
            let end = after + usize::try_from(len).ok()? + 2;
            (end <= buf.len()).then_some(end)
        }
        kind @ (b'*' | b'~' | b'%' | b'>' | b'|') => {
            let count: i64 = header.parse().ok()?;
            let items = match kind {
                b'%' | b'|' => count.max(0) * 2,
                _ => count.max(0),
            };
            let mut at = after;
            for _ in 0..items {
                at += element_len(buf.get(at..)?)?;
            }
            Some(at)
        }
        _ => None,
    }
}

/// The string of an encoded bulk reply; `None` for a null or anything else.
pub fn decode_bulk(reply: &[u8]) -> Option<&[u8]> {
    let rest = reply.strip_prefix(b"$")?;
    let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
    let len: usize = std::str::from_utf8(&rest[..line_end]).ok()?.parse().ok()?;
    rest.get(line_end + 2..line_end + 2 + len)
}

/// How many complete replies `buf` holds one after another.
pub fn count_elements(buf: &[u8]) -> usize {
    let mut count = 0;
    let mut at = 0;
    while let Some(len) = buf.get(at..).and_then(element_len) {
        if len == 0 {
            break;
        }
        count += 1;
        at += len;
    }
    count
}

/// The encoded elements of an encoded array reply (empty if `reply` is not an array).
pub fn array_elements(reply: &[u8]) -> Vec<&[u8]> {
    let mut elements = Vec::new();
    let Some(line_end) = reply.windows(2).position(|w| w == b"\r\n") else {
        return elements;
    };
    if reply.first() != Some(&b'*') {
        return elements;
    }
    let count: usize = std::str::from_utf8(&reply[1..line_end])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut at = line_end + 2;
    for _ in 0..count {
        let Some(len) = reply.get(at..).and_then(element_len) else {
            break;
        };
        elements.push(&reply[at..at + len]);
        at += len;
    }
    elements
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(protocol: Protocol, f: impl FnOnce(&mut ReplyBuf)) -> String {
        let mut out = ReplyBuf::new(protocol);
        f(&mut out);
        String::from_utf8(out.take()).expect("ascii replies")
    }

    #[test]
    fn resp2_and_resp3_forms() {
        for (protocol, null, map, set) in [
            (Protocol::Resp2, "$-1\r\n", "*4\r\n", "*2\r\n"),
            (Protocol::Resp3, "_\r\n", "%2\r\n", "~2\r\n"),
        ] {
            assert_eq!(encoded(protocol, |o| o.null()), null);
            assert_eq!(encoded(protocol, |o| o.map(2)), map);
            assert_eq!(encoded(protocol, |o| o.set(2)), set);
        }
        assert_eq!(encoded(Protocol::Resp2, |o| o.null_array()), "*-1\r\n");
        assert_eq!(
            encoded(Protocol::Resp3, |o| o.verbatim("txt", b"ab")),
            "=6\r\ntxt:ab\r\n"
        );
        assert_eq!(
            encoded(Protocol::Resp2, |o| o.verbatim("txt", b"ab")),
            "$2\r\nab\r\n"
        );
        assert_eq!(encoded(Protocol::Resp3, |o| o.double(1.5)), ",1.5\r\n");
        assert_eq!(encoded(Protocol::Resp2, |o| o.double(3.0)), "$1\r\n3\r\n");
    }

    #[test]
    fn scalars() {
        assert_eq!(encoded(Protocol::Resp2, |o| o.int(-42)), ":-42\r\n");
        assert_eq!(encoded(Protocol::Resp2, |o| o.bulk(b"")), "$0\r\n\r\n");
        assert_eq!(encoded(Protocol::Resp2, |o| o.bulk_int(10)), "$2\r\n10\r\n");
        assert_eq!(encoded(Protocol::Resp2, |o| o.ok()), "+OK\r\n");
    }

    #[test]
    fn splits_array_elements() {
        let reply = b"*4\r\n$1\r\na\r\n$-1\r\n*2\r\n:1\r\n_\r\n%1\r\n+k\r\n$0\r\n\r\n";
        let parts = array_elements(reply);
        assert_eq!(
            parts,
            vec![
                &b"$1\r\na\r\n"[..],
                b"$-1\r\n",
                b"*2\r\n:1\r\n_\r\n",
                b"%1\r\n+k\r\n$0\r\n\r\n"
            ]
        );
        assert_eq!(element_len(b"$3\r\nab"), None);
    }

    #[test]
    fn errors_stay_on_one_line_and_are_counted() {
        let mut out = ReplyBuf::new(Protocol::Resp2);
        out.error("ERR bad\r\nthing");
        assert_eq!(out.as_bytes(), b"-ERR bad  thing\r\n");
        assert_eq!(out.error_count(), 1);
    }
}
