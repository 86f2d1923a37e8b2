//! Incremental RESP request parser: multibulk (`*N\r\n$len\r\n…`) and inline commands.
//!
//! The parser works on the connection's read buffer and keeps its progress between reads, so a
//! command that arrives in many small pieces is scanned once, not once per read. It never
//! allocates the size a client merely announces: an argument's bytes are only split off the
//! buffer once they have all arrived. Limits and error strings follow Valkey.

use bytes::BytesMut;

use super::Args;

/// The longest inline command, and the longest `*`/`$` header line, Valkey accepts.
pub const INLINE_MAX_BYTES: usize = 64 * 1024;
/// The largest multibulk count accepted from an authenticated client (Valkey's INT_MAX:
/// arguments are only allocated as they arrive, so a large count costs nothing up front).
pub const MULTIBULK_MAX_COUNT: i64 = i32::MAX as i64;
/// The largest multibulk count accepted before authentication.
pub const UNAUTH_MULTIBULK_MAX_COUNT: i64 = 10;
/// The largest bulk length accepted before authentication.
pub const UNAUTH_BULK_MAX_BYTES: i64 = 16 * 1024;
/// Arguments are reserved up to this count ahead of their arrival, never more.
const ARGS_RESERVE_MAX_COUNT: usize = 1024;

/// A malformed request. The connection answers `-ERR <message>` and closes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("Protocol error: too big inline request")]
    TooBigInlineRequest,
    #[error("Protocol error: too big mbulk count string")]
    TooBigMultibulkCount,
    #[error("Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    #[error("Protocol error: unauthenticated multibulk length")]
    UnauthenticatedMultibulkLength,
    #[error("Protocol error: unauthenticated bulk length")]
    UnauthenticatedBulkLength,
    #[error("Protocol error: too big bulk count string")]
    TooBigBulkCount,
    #[error("Protocol error: expected '$', got '{}'", char::from(*.0))]
    ExpectedDollar(u8),
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
}

/// Limits that depend on configuration and on the connection's state.
#[derive(Debug, Clone, Copy)]
pub struct ParseLimits {
    /// `proto-max-bulk-len`.
    pub max_bulk_bytes: i64,
    /// The client has not authenticated yet and a password is required.
    pub unauthenticated: bool,
}

/// What one call to [`RequestParser::parse`] produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// One complete command.
    Command(Args),
    /// The buffer holds no complete command yet.
    NeedMore,
}

#[derive(Debug, Default)]
enum State {
    #[default]
    Idle,
    /// Inside a multibulk request: `remaining` arguments still to come; `pos` is where the next
    /// unparsed byte is; `pending_len` is the announced length of an argument whose bytes have
    /// not all arrived.
    Multibulk {
        remaining: usize,
        pos: usize,
        pending_len: Option<usize>,
        spans: Vec<(usize, usize)>,
    },
}

/// Parses requests out of a growing read buffer, one command at a time.
#[derive(Debug, Default)]
pub struct RequestParser {
    state: State,
}

impl RequestParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// True when part of a command has been consumed and the rest is awaited.
    pub fn in_progress(&self) -> bool {
        !matches!(self.state, State::Idle)
    }

    /// Parses the next command at the front of `buf`, splitting its bytes off the buffer.
    /// Empty inline lines and `*0`/`*-1` headers are skipped, as Valkey does.
    pub fn parse(
        &mut self,
        buf: &mut BytesMut,
        limits: ParseLimits,
    ) -> Result<Parsed, ProtocolError> {
        loop {
            if matches!(self.state, State::Idle) {
                if buf.is_empty() {
                    return Ok(Parsed::NeedMore);
                }
                if buf[0] != b'*' {
                    match parse_inline(buf)? {
                        Inline::NeedMore => return Ok(Parsed::NeedMore),
                        Inline::Empty => continue,
                        Inline::Command(args) => return Ok(Parsed::Command(args)),
                    }
                }
                match self.start_multibulk(buf, limits)? {
                    Some(true) => {}
                    Some(false) => continue,
                    None => return Ok(Parsed::NeedMore),
                }
            }
            return self.continue_multibulk(buf, limits);
        }
    }

    /// Reads the `*N` header. `Some(true)`: arguments follow; `Some(false)`: an empty request
    /// was skipped; `None`: the header line is incomplete.
    fn start_multibulk(
        &mut self,
        buf: &mut BytesMut,
        limits: ParseLimits,
    ) -> Result<Option<bool>, ProtocolError> {
        let Some(line_end) = find_crlf(buf, 0) else {
            if buf.len() > INLINE_MAX_BYTES {
                return Err(ProtocolError::TooBigMultibulkCount);
            }
            return Ok(None);
        };
        let count = parse_i64(&buf[1..line_end])
            .filter(|&n| n <= MULTIBULK_MAX_COUNT)
            .ok_or(ProtocolError::InvalidMultibulkLength)?;
        if limits.unauthenticated && count > UNAUTH_MULTIBULK_MAX_COUNT {
            return Err(ProtocolError::UnauthenticatedMultibulkLength);
        }
        if count <= 0 {
            let _ = buf.split_to(line_end + 2);
            return Ok(Some(false));
        }
        let remaining =
            usize::try_from(count).map_err(|_| ProtocolError::InvalidMultibulkLength)?;
        self.state = State::Multibulk {
            remaining,
            pos: line_end + 2,
            pending_len: None,
            spans: Vec::with_capacity(remaining.min(ARGS_RESERVE_MAX_COUNT)),
        };
        Ok(Some(true))
    }

    fn continue_multibulk(
        &mut self,
        buf: &mut BytesMut,
        limits: ParseLimits,
    ) -> Result<Parsed, ProtocolError> {
        let State::Multibulk {
            remaining,
            pos,
            pending_len,
            spans,
        } = &mut self.state
        else {
            return Ok(Parsed::NeedMore);
        };
        while *remaining > 0 {
            let len = match *pending_len {
                Some(len) => len,
                None => {
                    let Some(line_end) = find_crlf(buf, *pos) else {
                        if buf.len() - *pos > INLINE_MAX_BYTES {
                            return Err(ProtocolError::TooBigBulkCount);
                        }
                        return Ok(Parsed::NeedMore);
                    };
                    if buf[*pos] != b'$' {
                        return Err(ProtocolError::ExpectedDollar(buf[*pos]));
                    }
                    let len = parse_i64(&buf[*pos + 1..line_end])
                        .filter(|&n| n >= 0 && n <= limits.max_bulk_bytes)
                        .ok_or(ProtocolError::InvalidBulkLength)?;
                    if limits.unauthenticated && len > UNAUTH_BULK_MAX_BYTES {
                        return Err(ProtocolError::UnauthenticatedBulkLength);
                    }
                    *pos = line_end + 2;
                    let len = usize::try_from(len).map_err(|_| ProtocolError::InvalidBulkLength)?;
                    *pending_len = Some(len);
                    len
                }
            };
            // The argument and its trailing CRLF must be complete; like Valkey, the two bytes
            // after it are skipped without being inspected.
            if buf.len() - *pos < len + 2 {
                return Ok(Parsed::NeedMore);
            }
            spans.push((*pos, *pos + len));
            *pos += len + 2;
            *pending_len = None;
            *remaining -= 1;
        }
        let consumed = *pos;
        let spans = std::mem::take(spans);
        self.state = State::Idle;
        let frame = buf.split_to(consumed).freeze();
        Ok(Parsed::Command(Args::from_spans(&frame, &spans)))
    }
}

enum Inline {
    NeedMore,
    Empty,
    Command(Args),
}

fn parse_inline(buf: &mut BytesMut) -> Result<Inline, ProtocolError> {
    // Valkey reads an inline request as a C string: a NUL before the newline hides it, and the
    // request waits for more input (up to the inline limit). Never an endless loop.
    let visible = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let Some(newline) = buf[..visible].iter().position(|&b| b == b'\n') else {
        if buf.len() > INLINE_MAX_BYTES {
            return Err(ProtocolError::TooBigInlineRequest);
        }
        return Ok(Inline::NeedMore);
    };
    let line_end = if newline > 0 && buf[newline - 1] == b'\r' {
        newline - 1
    } else {
        newline
    };
    let words = split_args(&buf[..line_end]).ok_or(ProtocolError::UnbalancedQuotes)?;
    let _ = buf.split_to(newline + 1);
    if words.is_empty() {
        return Ok(Inline::Empty);
    }
    Ok(Inline::Command(Args::from_vecs(words)))
}

/// Splits an inline command line into words with Valkey's quoting rules: double quotes take
/// `\n \r \t \b \a \\ \"` and `\xHH` escapes, single quotes take `\'`, and a closing quote must
/// be followed by a space or the end of the line. `None` means unbalanced quotes.
pub fn split_args(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut words = Vec::new();
    let mut i = 0;
    loop {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= line.len() {
            return Some(words);
        }
        let mut word = Vec::new();
        let mut in_double = false;
        let mut in_single = false;
        loop {
            let Some(&c) = line.get(i) else {
                if in_double || in_single {
                    return None;
                }
                break;
            };
            if in_double {
                if c == b'\\' && i + 3 < line.len() && line[i + 1] == b'x' {
                    if let (Some(h), Some(l)) = (hex_value(line[i + 2]), hex_value(line[i + 3])) {
                        word.push(h * 16 + l);
                        i += 4;
                        continue;
                    }
                }
                if c == b'\\' && i + 1 < line.len() {
                    i += 1;
                    word.push(match line[i] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        other => other,
                    });
                } else if c == b'"' {
                    if line.get(i + 1).is_some_and(|n| !n.is_ascii_whitespace()) {
                        return None;
                    }
                    i += 1;
                    break;
                } else {
                    word.push(c);
                }
            } else if in_single {
                if c == b'\\' && line.get(i + 1) == Some(&b'\'') {
                    i += 1;
                    word.push(b'\'');
                } else if c == b'\'' {
                    if line.get(i + 1).is_some_and(|n| !n.is_ascii_whitespace()) {
                        return None;
                    }
                    i += 1;
                    break;
                } else {
                    word.push(c);
                }
            } else {
                match c {
                    b' ' | b'\n' | b'\r' | b'\t' | 0 => {
                        i += 1;
                        break;
                    }
                    b'"' => in_double = true,
                    b'\'' => in_single = true,
                    other => word.push(other),
                }
            }
            i += 1;
        }
        words.push(word);
    }
}

fn hex_value(c: u8) -> Option<u8> {
    (c as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    let cr = buf.get(from..)?.iter().position(|&b| b == b'\r')? + from;
    (cr + 1 < buf.len()).then_some(cr)
}

/// Parses a signed decimal exactly as Valkey's `string2ll`: no spaces, no `+`, no leading zeros.
pub fn parse_i64(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    if s == b"0" {
        return Some(0);
    }
    let (negative, digits) = match s[0] {
        b'-' => (true, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() || digits[0] == b'0' {
        return None;
    }
    let mut value: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    if negative {
        if value > i64::MAX as u64 + 1 {
            return None;
        }
        Some((value as i64).wrapping_neg())
    } else {
        i64::try_from(value).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ParseLimits = ParseLimits {
        max_bulk_bytes: 512 * 1024 * 1024,
        unauthenticated: false,
    };

    fn parse_all(parser: &mut RequestParser, buf: &mut BytesMut) -> Vec<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        while let Parsed::Command(args) = parser.parse(buf, LIMITS).expect("valid input") {
            out.push(args.iter().map(|a| a.to_vec()).collect());
        }
        out
    }

    fn words(cmd: &[&str]) -> Vec<Vec<u8>> {
        cmd.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    #[test]
    fn multibulk_and_inline_mixed() {
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\nset a \"b c\"\n"[..]);
        let got = parse_all(&mut RequestParser::new(), &mut buf);
        assert_eq!(
            got,
            vec![
                words(&["GET", "k"]),
                words(&["PING"]),
                words(&["set", "a", "b c"])
            ]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn every_split_point_of_a_pipeline_gives_the_same_commands() {
        let wire: &[u8] = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nva\r\nl\r\n\r\n*0\r\nECHO 'x y'\r\n*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nECHO\r\n$0\r\n\r\n";
        let expected = vec![
            words(&["SET", "key", "va\r\nl"]),
            words(&["ECHO", "x y"]),
            words(&["PING"]),
            words(&["ECHO", ""]),
        ];
        for split in 0..=wire.len() {
            for second in split..=wire.len() {
                let mut parser = RequestParser::new();
                let mut buf = BytesMut::new();
                let mut got = Vec::new();
                for piece in [&wire[..split], &wire[split..second], &wire[second..]] {
                    buf.extend_from_slice(piece);
                    got.extend(parse_all(&mut parser, &mut buf));
                }
                assert_eq!(got, expected, "split at {split} and {second}");
                assert!(!parser.in_progress());
            }
        }
    }

    #[test]
    fn byte_by_byte_arrival() {
        let wire: &[u8] = b"*2\r\n$4\r\nECHO\r\n$11\r\nhello world\r\n";
        let mut parser = RequestParser::new();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &b in wire {
            buf.extend_from_slice(&[b]);
            got.extend(parse_all(&mut parser, &mut buf));
        }
        assert_eq!(got, vec![words(&["ECHO", "hello world"])]);
    }

    fn first_error(wire: &[u8], limits: ParseLimits) -> ProtocolError {
        let mut parser = RequestParser::new();
        let mut buf = BytesMut::from(wire);
        loop {
            match parser.parse(&mut buf, limits) {
                Err(e) => return e,
                Ok(Parsed::NeedMore) => panic!("no error in {wire:?}"),
                Ok(Parsed::Command(_)) => {}
            }
        }
    }

    #[test]
    fn protocol_errors_match_valkey() {
        use ProtocolError::*;
        assert_eq!(first_error(b"*abc\r\n", LIMITS), InvalidMultibulkLength);
        assert_eq!(
            first_error(b"*2147483648\r\n", LIMITS),
            InvalidMultibulkLength
        );
        assert_eq!(first_error(b"*1\r\n$-1\r\n", LIMITS), InvalidBulkLength);
        assert_eq!(first_error(b"*1\r\n$x\r\n", LIMITS), InvalidBulkLength);
        assert_eq!(
            first_error(b"*1\r\n$536870913\r\n", LIMITS),
            InvalidBulkLength
        );
        assert_eq!(first_error(b"*1\r\nfoo\r\n", LIMITS), ExpectedDollar(b'f'));
        assert_eq!(first_error(b"set \"a\r\n", LIMITS), UnbalancedQuotes);
        assert_eq!(first_error(b"set \"a\"b\r\n", LIMITS), UnbalancedQuotes);
        let unauth = ParseLimits {
            unauthenticated: true,
            ..LIMITS
        };
        assert_eq!(
            first_error(b"*11\r\n", unauth),
            UnauthenticatedMultibulkLength
        );
        assert_eq!(
            first_error(b"*1\r\n$16385\r\n", unauth),
            UnauthenticatedBulkLength
        );
        assert_eq!(
            ExpectedDollar(b'f').to_string(),
            "Protocol error: expected '$', got 'f'"
        );
    }

    #[test]
    fn oversized_header_lines_are_refused() {
        let mut long = vec![b'x'; INLINE_MAX_BYTES + 1];
        assert_eq!(
            first_error(&long, LIMITS),
            ProtocolError::TooBigInlineRequest
        );
        long[0] = b'*';
        assert_eq!(
            first_error(&long, LIMITS),
            ProtocolError::TooBigMultibulkCount
        );
        let mut bulk = b"*1\r\n$".to_vec();
        bulk.extend(std::iter::repeat_n(b'1', INLINE_MAX_BYTES + 1));
        assert_eq!(first_error(&bulk, LIMITS), ProtocolError::TooBigBulkCount);
    }

    #[test]
    fn announced_length_is_not_allocated() {
        let mut parser = RequestParser::new();
        let mut buf = BytesMut::from(&b"*1048576\r\n$536870912\r\nabc"[..]);
        assert_eq!(parser.parse(&mut buf, LIMITS), Ok(Parsed::NeedMore));
        let State::Multibulk { spans, .. } = &parser.state else {
            panic!("expected a multibulk in progress");
        };
        assert!(spans.capacity() <= ARGS_RESERVE_MAX_COUNT);
        assert!(buf.capacity() < 4096);
    }

    #[test]
    fn nul_hides_an_inline_newline_without_looping() {
        let mut parser = RequestParser::new();
        let mut buf = BytesMut::from(&b"get a\0b\r\n"[..]);
        assert_eq!(parser.parse(&mut buf, LIMITS), Ok(Parsed::NeedMore));
        assert_eq!(
            split_args(b"a\0b"),
            Some(vec![b"a".to_vec(), b"b".to_vec()])
        );
        let mut long = vec![b'x'; 10];
        long.push(0);
        long.extend(std::iter::repeat_n(b'y', INLINE_MAX_BYTES));
        long.push(b'\n');
        assert_eq!(
            first_error(&long, LIMITS),
            ProtocolError::TooBigInlineRequest
        );
    }

    #[test]
    fn empty_requests_are_skipped() {
        let mut buf = BytesMut::from(&b"\r\n\n*0\r\n*-1\r\n   \r\nPING\r\n"[..]);
        assert_eq!(
            parse_all(&mut RequestParser::new(), &mut buf),
            vec![words(&["PING"])]
        );
    }

    #[test]
    fn split_args_quoting() {
        let parsed = split_args(br#"set "a\x41\n" 'it\'s' plain"#).expect("balanced");
        assert_eq!(
            parsed,
            vec![
                b"set".to_vec(),
                b"aA\n".to_vec(),
                b"it's".to_vec(),
                b"plain".to_vec()
            ]
        );
        assert_eq!(split_args(b"  "), Some(vec![]));
        assert_eq!(split_args(b"'open"), None);
        assert_eq!(split_args(br#""""#), Some(vec![vec![]]));
    }

    #[test]
    fn parse_i64_is_strict() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        for bad in [
            &b""[..],
            b"-",
            b"01",
            b"-0",
            b"+1",
            b" 1",
            b"9223372036854775808",
            b"1.0",
        ] {
            assert_eq!(parse_i64(bad), None, "{bad:?}");
        }
    }
}
