//! The wire format: RESP2/RESP3 request parsing and reply encoding. Knows nothing of commands,
//! keyspaces or connections.

pub mod parser;
pub mod reply;

use bytes::{BufMut, Bytes, BytesMut};
use smallvec::SmallVec;

pub use parser::{ParseLimits, Parsed, ProtocolError, RequestParser};
pub use reply::{Protocol, ReplyBuf};

/// Appends one request, a RESP array of bulk strings, as clients send commands (also the
/// replication stream's message framing).
pub fn encode_request(out: &mut Vec<u8>, parts: &[&[u8]]) {
    out.push(b'*');
    out.extend_from_slice(itoa::Buffer::new().format(parts.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    for part in parts {
        out.push(b'$');
        out.extend_from_slice(itoa::Buffer::new().format(part.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
}

/// Arguments kept inline before the span list spills to the heap.
const ARGS_INLINE_COUNT: usize = 5;

/// The arguments of one command: the request's bytes and where each argument lies in them.
/// Cheap to clone and `Send`, so a command can be handed to another shard without copying.
#[derive(Clone)]
pub struct Args {
    frame: Bytes,
    spans: SmallVec<[(usize, usize); ARGS_INLINE_COUNT]>,
}

impl Args {
    /// Arguments that lie at `spans` inside `frame`.
    pub fn from_spans(frame: &Bytes, spans: &[(usize, usize)]) -> Self {
        Self {
            frame: frame.clone(),
            spans: spans.iter().copied().collect(),
        }
    }

    /// Arguments built from separate byte strings (inline commands, tests, internal commands).
    pub fn from_vecs<T: AsRef<[u8]>>(words: impl IntoIterator<Item = T>) -> Self {
        let mut frame = BytesMut::new();
        let mut spans = SmallVec::new();
        for word in words {
            let word = word.as_ref();
            let start = frame.len();
            frame.put_slice(word);
            spans.push((start, frame.len()));
        }
        Self {
            frame: frame.freeze(),
            spans,
        }
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The argument at `index`; an empty slice past the end.
    pub fn get(&self, index: usize) -> &[u8] {
        match self.spans.get(index) {
            Some(&(start, end)) => &self.frame[start..end],
            None => &[],
        }
    }

    /// The argument at `index` as shared bytes (no copy).
    pub fn bytes(&self, index: usize) -> Bytes {
        match self.spans.get(index) {
            Some(&(start, end)) => self.frame.slice(start..end),
            None => Bytes::new(),
        }
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        self.spans
            .iter()
            .map(|&(start, end)| &self.frame[start..end])
    }

    /// The arguments from `from` on, as a new argument list sharing the same bytes.
    pub fn tail(&self, from: usize) -> Args {
        Args {
            frame: self.frame.clone(),
            spans: self.spans.iter().skip(from).copied().collect(),
        }
    }

    /// A new argument list made of the arguments at `indexes`, in that order.
    pub fn select(&self, indexes: impl IntoIterator<Item = usize>) -> Args {
        Args {
            frame: self.frame.clone(),
            spans: indexes
                .into_iter()
                .filter_map(|i| self.spans.get(i).copied())
                .collect(),
        }
    }

    /// Replaces the first argument (the command name), keeping the others.
    pub fn set_name(&mut self, name: &[u8]) {
        let mut words: Vec<&[u8]> = vec![name];
        words.extend(self.iter().skip(1));
        *self = Args::from_vecs(words);
    }

    /// Bytes of argument data (for memory accounting in CLIENT LIST).
    pub fn data_bytes(&self) -> usize {
        self.spans.iter().map(|(s, e)| e - s).sum()
    }

    /// True when the argument at `index` equals `word`, ignoring ASCII case.
    pub fn is(&self, index: usize, word: &str) -> bool {
        self.get(index).eq_ignore_ascii_case(word.as_bytes())
    }

    /// The argument at `index` as (lossy) UTF-8, for error messages.
    pub fn text(&self, index: usize) -> String {
        String::from_utf8_lossy(self.get(index)).into_owned()
    }
}

/// Equal when the arguments are, wherever their bytes lie.
impl PartialEq for Args {
    fn eq(&self, other: &Args) -> bool {
        self.len() == other.len() && self.iter().zip(other.iter()).all(|(a, b)| a == b)
    }
}

impl Eq for Args {}

impl std::fmt::Debug for Args {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|a| String::from_utf8_lossy(a)))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_views() {
        let args = Args::from_vecs(["SET", "k", "v"]);
        assert_eq!(args.len(), 3);
        assert!(args.is(0, "set"));
        assert_eq!(args.get(2), b"v");
        assert_eq!(args.get(9), b"");
        assert_eq!(
            args.tail(1).iter().collect::<Vec<_>>(),
            vec![&b"k"[..], b"v"]
        );
        assert_eq!(args.select([2, 1]).get(0), b"v");
        assert_eq!(args.data_bytes(), 5);
    }
}
