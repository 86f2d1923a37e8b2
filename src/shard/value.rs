//! The values a key can hold, and their encodings as `OBJECT ENCODING` reports them.

use super::small_bytes::SmallBytes;
use crate::protocol::parser::parse_i64;

/// Strings up to this length report `embstr`, as in Valkey.
pub const EMBSTR_MAX_BYTES: usize = 44;
/// Integer-looking strings up to this length are stored as integers.
const INT_ENCODABLE_MAX_BYTES: usize = 20;

/// A stored value. Strings come in three encodings; other types will join as variants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A string that is the canonical decimal form of an i64 (`int`).
    Int(i64),
    /// A string written whole by SET and friends (`embstr` up to 44 bytes, else `raw`).
    Str(SmallBytes),
    /// A string grown or edited in place by APPEND or SETRANGE (`raw`).
    Raw(Box<Vec<u8>>),
}

impl Value {
    /// The value SET stores for `bytes`: an integer when it reads back identically.
    pub fn string(bytes: &[u8]) -> Value {
        if bytes.len() <= INT_ENCODABLE_MAX_BYTES {
            if let Some(n) = parse_i64(bytes) {
                return Value::Int(n);
            }
        }
        Value::Str(SmallBytes::new(bytes))
    }

    /// The `TYPE` name.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Int(_) | Value::Str(_) | Value::Raw(_) => "string",
        }
    }

    /// The `OBJECT ENCODING` name.
    pub fn encoding(&self) -> &'static str {
        match self {
            Value::Int(_) => "int",
            Value::Str(s) if s.len() <= EMBSTR_MAX_BYTES => "embstr",
            Value::Str(_) | Value::Raw(_) => "raw",
        }
    }

    /// Runs `f` on the string's bytes; `None` for values that are not strings.
    pub fn with_str<R>(&self, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        match self {
            Value::Int(n) => {
                let mut digits = itoa::Buffer::new();
                Some(f(digits.format(*n).as_bytes()))
            }
            Value::Str(s) => Some(f(s.as_slice())),
            Value::Raw(v) => Some(f(v.as_slice())),
        }
    }

    /// The string's length in bytes; `None` for values that are not strings.
    pub fn str_len(&self) -> Option<usize> {
        match self {
            Value::Int(n) => {
                let mut digits = itoa::Buffer::new();
                Some(digits.format(*n).len())
            }
            Value::Str(s) => Some(s.len()),
            Value::Raw(v) => Some(v.len()),
        }
    }

    /// The string as owned bytes for in-place editing (converts to the `raw` encoding).
    pub fn make_raw(&mut self) -> Option<&mut Vec<u8>> {
        if !matches!(self, Value::Raw(_)) {
            let bytes = self.with_str(<[u8]>::to_vec)?;
            *self = Value::Raw(Box::new(bytes));
        }
        match self {
            Value::Raw(v) => Some(v),
            _ => None,
        }
    }

    /// Heap bytes this value owns beyond its slot in the table.
    pub fn heap_bytes(&self) -> usize {
        match self {
            Value::Int(_) => 0,
            Value::Str(s) => s.heap_bytes(),
            Value::Raw(v) => v.capacity() + std::mem::size_of::<Vec<u8>>(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_follow_valkey() {
        assert_eq!(std::mem::size_of::<Value>(), 24);
        assert_eq!(Value::string(b"123").encoding(), "int");
        assert_eq!(Value::string(b"-9223372036854775808").encoding(), "int");
        assert_eq!(Value::string(b"0123").encoding(), "embstr");
        assert_eq!(Value::string(&[b'a'; 44]).encoding(), "embstr");
        assert_eq!(Value::string(&[b'a'; 45]).encoding(), "raw");
        let mut v = Value::string(b"12");
        v.make_raw().expect("string").extend_from_slice(b"3");
        assert_eq!(v.encoding(), "raw");
        assert_eq!(v.with_str(|s| s.to_vec()), Some(b"123".to_vec()));
        assert_eq!(v.str_len(), Some(3));
    }
}
