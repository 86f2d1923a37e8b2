//! The AOF record: how one shard's writes are laid out on disk.
//!
//! Every record starts with a 21-byte header; all integers are little-endian:
//!
//! | offset | size | field      | meaning                                                      |
//! |--------|------|------------|--------------------------------------------------------------|
//! | 0      | 4    | `len`      | bytes after the header (kind and body); 0 = no more records  |
//! | 4      | 4    | `crc`      | crc32c of `len` followed by bytes 8 .. 21 + len              |
//! | 8      | 8    | `position` | the record's offset in the shard's log (strictly increasing)|
//! | 16     | 4    | `batch`    | number of the group commit that wrote it                     |
//! | 20     | 1    | `kind`     | 1 commands, 2 transaction part, 3 key state                  |
//! | 21     | len-1| body       | per kind, below                                              |
//!
//! Bodies:
//! - **commands** (1): `u32 count`, then `count` commands, applied all or nothing.
//! - **transaction part** (2): `u32 generation, u16 home shard, u64 sequence` (the transaction),
//!   `u64 epoch` (the rewrite epoch it committed in), `u16 n, n × u16` (every shard it wrote
//!   on), `u32 count`, then commands. Recovery applies it only if every listed shard holds a
//!   durable part of the same transaction (or took a snapshot after that epoch).
//! - **key state** (3): `u32 db, u32 key length, key, i64 expiry (Unix ms, -1 none), u8 type`
//!   (`0` string: `u32 length, bytes`): the whole value of one key.
//! - a command is `u32 db, u32 argc`, then `argc × (u32 length, bytes)`.
//!
//! The position field makes a record valid only where it was written, so stale or shifted
//! bytes never pass for a record; the batch number tells a torn last commit (cut it) from
//! corruption followed by later commits (refuse to start).

use bytes::Bytes;

use crate::protocol::Args;

/// Bytes before a record's body.
pub const HEADER_BYTES: usize = 21;

const KIND_COMMANDS: u8 = 1;
const KIND_TX_PART: u8 = 2;
const KIND_KEY_STATE: u8 = 3;
const VALUE_STRING: u8 = 0;

/// A command as logged: the database it ran in and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedCommand {
    pub db: u32,
    pub args: Args,
}

/// Which cross-shard transaction a record belongs to; unique across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxTag {
    /// Incremented at every start of the server (kept in the manifest).
    pub generation: u32,
    pub home: u16,
    pub sequence: u64,
}

/// A stored value, as a key-state record carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredValue {
    String(Bytes),
}

/// One key's complete state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyState {
    pub db: u32,
    pub key: Bytes,
    pub expire_ms: Option<i64>,
    pub value: StoredValue,
}

/// What a record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Commands(Vec<LoggedCommand>),
    TxPart {
        tx: TxTag,
        epoch: u64,
        shards: Vec<u16>,
        commands: Vec<LoggedCommand>,
    },
    KeyState(KeyState),
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub position: u64,
    pub batch: u32,
    pub body: Body,
}

/// Why the bytes at a position are not a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// The buffer ends inside the record.
    Truncated,
    /// The checksum does not match.
    Checksum,
    /// The header is valid but says another position.
    Position,
    /// The checksum matches but the body cannot be read (a bug or a foreign file).
    Malformed,
    /// Zeros where a record should start, with data after them.
    Hole,
}

/// Result of reading at one position: a record (decoded, or only checked) and its length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read<R = Record> {
    Record(R, usize),
    /// Zero length: no record here (the end of written data).
    End,
    Invalid(Invalid),
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, b.len() as u32);
    out.extend_from_slice(b);
}

fn put_commands<'a>(out: &mut Vec<u8>, commands: impl ExactSizeIterator<Item = (u32, &'a Args)>) {
    put_u32(out, commands.len() as u32);
    for (db, args) in commands {
        put_u32(out, db);
        put_u32(out, args.len() as u32);
        for arg in args.iter() {
            put_bytes(out, arg);
        }
    }
}

/// Appends a record to `out`; the body is written by `body` after the kind byte. Returns the
/// record's length in bytes.
fn encode(
    out: &mut Vec<u8>,
    position: u64,
    batch: u32,
    kind: u8,
    body: impl FnOnce(&mut Vec<u8>),
) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; 8]);
    out.extend_from_slice(&position.to_le_bytes());
    put_u32(out, batch);
    out.push(kind);
    body(out);
    let len = (out.len() - start - HEADER_BYTES + 1) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    let crc = checksum(len, &out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    out.len() - start
}

fn checksum(len: u32, rest: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&len.to_le_bytes()), rest)
}

/// Appends a commands record.
pub fn encode_commands<'a>(
    out: &mut Vec<u8>,
    position: u64,
    batch: u32,
    commands: impl ExactSizeIterator<Item = (u32, &'a Args)>,
) -> usize {
    encode(out, position, batch, KIND_COMMANDS, |o| {
        put_commands(o, commands)
    })
}

/// Appends a transaction-part record.
pub fn encode_tx_part<'a>(
    out: &mut Vec<u8>,
    position: u64,
    batch: u32,
    tx: TxTag,
    epoch: u64,
    shards: &[u16],
    commands: impl ExactSizeIterator<Item = (u32, &'a Args)>,
) -> usize {
    encode(out, position, batch, KIND_TX_PART, |o| {
        put_u32(o, tx.generation);
        put_u16(o, tx.home);
        o.extend_from_slice(&tx.sequence.to_le_bytes());
        o.extend_from_slice(&epoch.to_le_bytes());
        put_u16(o, shards.len() as u16);
        for &s in shards {
            put_u16(o, s);
        }
        put_commands(o, commands);
    })
}

/// Appends a key-state record.
pub fn encode_key_state(
    out: &mut Vec<u8>,
    position: u64,
    batch: u32,
    db: u32,
    key: &[u8],
    expire_ms: Option<i64>,
    value: &[u8],
) -> usize {
    encode(out, position, batch, KIND_KEY_STATE, |o| {
        put_u32(o, db);
        put_bytes(o, key);
        o.extend_from_slice(&expire_ms.unwrap_or(-1).to_le_bytes());
        o.push(VALUE_STRING);
        put_bytes(o, value);
    })
}

/// Reads from the body of a record whose checksum already matched.
struct Cursor<'a> {
    buf: &'a Bytes,
    at: usize,
    end: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Option<usize> {
        let start = self.at;
        let end = start.checked_add(n)?;
        if end > self.end {
            return None;
        }
        self.at = end;
        Some(start)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|s| self.buf[s])
    }

    fn u16(&mut self) -> Option<u16> {
        let s = self.take(2)?;
        Some(u16::from_le_bytes([self.buf[s], self.buf[s + 1]]))
    }

    fn u32(&mut self) -> Option<u32> {
        let s = self.take(4)?;
        Some(u32::from_le_bytes(self.buf[s..s + 4].try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        let s = self.take(8)?;
        Some(u64::from_le_bytes(self.buf[s..s + 8].try_into().ok()?))
    }

    fn span(&mut self) -> Option<(usize, usize)> {
        let len = usize::try_from(self.u32()?).ok()?;
        let s = self.take(len)?;
        Some((s, s + len))
    }

    /// Reads a list of commands, making each with `make` (database, argument spans).
    fn commands<C>(&mut self, mut make: impl FnMut(u32, &[(usize, usize)]) -> C) -> Option<Vec<C>> {
        let count = self.u32()?;
        let mut commands = Vec::with_capacity(count.min(1024) as usize);
        let mut spans = Vec::new();
        for _ in 0..count {
            let db = self.u32()?;
            let argc = self.u32()?;
            spans.clear();
            for _ in 0..argc {
                spans.push(self.span()?);
            }
            commands.push(make(db, &spans));
        }
        Some(commands)
    }

    /// Reads a body of `kind`, making each command with `make`.
    fn body<C>(
        &mut self,
        kind: u8,
        make: impl FnMut(u32, &[(usize, usize)]) -> C,
    ) -> Option<BodyOf<C>> {
        match kind {
            KIND_COMMANDS => self.commands(make).map(BodyOf::Commands),
            KIND_TX_PART => {
                let tx = TxTag {
                    generation: self.u32()?,
                    home: self.u16()?,
                    sequence: self.u64()?,
                };
                let epoch = self.u64()?;
                let n = self.u16()?;
                let shards = (0..n).map(|_| self.u16()).collect::<Option<Vec<u16>>>()?;
                let commands = self.commands(make)?;
                Some(BodyOf::TxPart {
                    tx,
                    epoch,
                    shards,
                    commands,
                })
            }
            KIND_KEY_STATE => {
                let db = self.u32()?;
                let key = self.span()?;
                let expire = i64::from_le_bytes(self.buf[self.take(8)?..self.at].try_into().ok()?);
                if self.u8()? != VALUE_STRING {
                    return None;
                }
                let value = self.span()?;
                Some(BodyOf::KeyState {
                    db,
                    key,
                    expire_ms: (expire >= 0).then_some(expire),
                    value,
                })
            }
            _ => None,
        }
    }
}

/// A record body as read, before its commands and byte ranges become values.
enum BodyOf<C> {
    Commands(Vec<C>),
    TxPart {
        tx: TxTag,
        epoch: u64,
        shards: Vec<u16>,
        commands: Vec<C>,
    },
    KeyState {
        db: u32,
        key: (usize, usize),
        expire_ms: Option<i64>,
        value: (usize, usize),
    },
}

/// What recovery's scan needs of a record, checked like [`decode`] but without building its
/// commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skimmed {
    pub batch: u32,
    /// The transaction, for a transaction part.
    pub tx: Option<TxTag>,
}

/// Why there is no record at a position: the end of the records, or damage.
enum NoRecord {
    End,
    Invalid(Invalid),
}

impl<R> From<NoRecord> for Read<R> {
    fn from(none: NoRecord) -> Read<R> {
        match none {
            NoRecord::End => Read::End,
            NoRecord::Invalid(why) => Read::Invalid(why),
        }
    }
}

/// A record's header, checked: its batch and kind, and a cursor over its body.
struct Framed<'a> {
    batch: u32,
    kind: u8,
    cursor: Cursor<'a>,
    total: usize,
}

/// Reads the record at `buf[at..]`, which must have been written at log offset `position`.
/// What a record header says about the bytes it starts, before any checking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// Zeros: no record here (the end of the written part of a segment).
    End,
    /// A record of this many bytes, header included, if it checks out.
    Record(usize),
    /// Not a record header.
    Garbage,
}

/// Reads the frame of the record header `header` (`HEADER_BYTES` long).
pub fn frame(header: &[u8]) -> Frame {
    if header.len() < HEADER_BYTES {
        return Frame::Garbage;
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    if len == 0 {
        return if header.iter().all(|&b| b == 0) {
            Frame::End
        } else {
            Frame::Garbage
        };
    }
    Frame::Record(HEADER_BYTES - 1 + len as usize)
}

pub fn decode(buf: &Bytes, at: usize, position: u64) -> Read {
    decode_framed(buf, framed(buf, at, position, true), position)
}

/// Decodes a record that [`decode`] or [`skim`] already accepted in these same bytes, without
/// computing its checksum again (recovery's replay, after its scan).
pub fn decode_again(buf: &Bytes, at: usize, position: u64) -> Read {
    decode_framed(buf, framed(buf, at, position, false), position)
}

fn decode_framed(buf: &Bytes, framed: Result<Framed<'_>, NoRecord>, position: u64) -> Read {
    let mut f = match framed {
        Ok(f) => f,
        Err(none) => return none.into(),
    };
    let body = f.cursor.body(f.kind, |db, spans| LoggedCommand {
        db,
        args: Args::from_spans(buf, spans),
    });
    let body = match body {
        Some(body) if f.cursor.at == f.cursor.end => body,
        _ => return Read::Invalid(Invalid::Malformed),
    };
    let body = match body {
        BodyOf::Commands(commands) => Body::Commands(commands),
        BodyOf::TxPart {
            tx,
            epoch,
            shards,
            commands,
        } => Body::TxPart {
            tx,
            epoch,
            shards,
            commands,
        },
        BodyOf::KeyState {
            db,
            key,
            expire_ms,
            value,
        } => Body::KeyState(KeyState {
            db,
            key: buf.slice(key.0..key.1),
            expire_ms,
            value: StoredValue::String(buf.slice(value.0..value.1)),
        }),
    };
    Read::Record(
        Record {
            position,
            batch: f.batch,
            body,
        },
        f.total,
    )
}

/// Checks the record at `buf[at..]` exactly as [`decode`] does, calling `write(db)` for each
/// command and key state it holds, without building them.
pub fn skim(buf: &Bytes, at: usize, position: u64, mut write: impl FnMut(u32)) -> Read<Skimmed> {
    let mut f = match framed(buf, at, position, true) {
        Ok(f) => f,
        Err(none) => return none.into(),
    };
    // Reported only once the whole record checked out.
    let mut writes = smallvec::SmallVec::<[u32; 4]>::new();
    let body = f.cursor.body(f.kind, |db, _| writes.push(db));
    let tx = match body {
        Some(_) if f.cursor.at != f.cursor.end => return Read::Invalid(Invalid::Malformed),
        None => return Read::Invalid(Invalid::Malformed),
        Some(BodyOf::TxPart { tx, .. }) => Some(tx),
        Some(BodyOf::KeyState { db, .. }) => {
            writes.push(db);
            None
        }
        Some(BodyOf::Commands(_)) => None,
    };
    writes.into_iter().for_each(&mut write);
    Read::Record(Skimmed { batch: f.batch, tx }, f.total)
}

/// Checks the header of the record at `buf[at..]` (length, checksum unless `verify` is off,
/// position); the end of the records or why there is no record there otherwise.
fn framed(buf: &Bytes, at: usize, position: u64, verify: bool) -> Result<Framed<'_>, NoRecord> {
    let Some(header) = buf.get(at..at + HEADER_BYTES) else {
        return Err(
            if buf
                .get(at..)
                .is_some_and(|rest| rest.iter().all(|&b| b == 0))
            {
                NoRecord::End
            } else {
                NoRecord::Invalid(Invalid::Truncated)
            },
        );
    };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    if len == 0 {
        return Err(if header.iter().all(|&b| b == 0) {
            NoRecord::End
        } else {
            NoRecord::Invalid(Invalid::Checksum)
        });
    }
    let total = HEADER_BYTES - 1 + len as usize;
    let Some(record) = buf.get(at..at + total) else {
        return Err(NoRecord::Invalid(Invalid::Truncated));
    };
    let stored_crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if verify && checksum(len, &record[8..]) != stored_crc {
        return Err(NoRecord::Invalid(Invalid::Checksum));
    }
    let stored_position = u64::from_le_bytes(header[8..16].try_into().unwrap_or([0; 8]));
    if stored_position != position {
        return Err(NoRecord::Invalid(Invalid::Position));
    }
    Ok(Framed {
        batch: u32::from_le_bytes([header[16], header[17], header[18], header[19]]),
        kind: header[20],
        cursor: Cursor {
            buf,
            at: at + HEADER_BYTES,
            end: at + total,
        },
        total,
    })
}

/// The position a header at `buf[at..]` claims, if a header fits there (used to look for valid
/// records past a damaged one).
pub fn claimed_position(buf: &[u8], at: usize) -> Option<u64> {
    let bytes = buf.get(at + 8..at + 16)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Args {
        Args::from_vecs(words)
    }

    #[test]
    fn layout_is_pinned() {
        let mut out = Vec::new();
        let set = args(&["SET", "k", "v"]);
        let n = encode_commands(&mut out, 7, 3, [(0u32, &set)].into_iter());
        assert_eq!(n, out.len());
        // len = kind (1) + count (4) + db (4) + argc (4) + 3 args (4+3, 4+1, 4+1)
        assert_eq!(&out[0..4], &(1u32 + 4 + 4 + 4 + 7 + 5 + 5).to_le_bytes());
        assert_eq!(&out[8..16], &7u64.to_le_bytes());
        assert_eq!(&out[16..20], &3u32.to_le_bytes());
        assert_eq!(out[20], KIND_COMMANDS);
        assert_eq!(&out[21..25], &1u32.to_le_bytes());
    }

    #[test]
    fn round_trips_every_kind() {
        let mut out = Vec::new();
        let a = args(&["SET", "k", "v"]);
        let b = args(&["INCR", "n"]);
        let tx = TxTag {
            generation: 2,
            home: 1,
            sequence: 99,
        };
        let mut pos = 100u64;
        pos += encode_commands(&mut out, pos, 1, [(0, &a), (3, &b)].into_iter()) as u64;
        let second = pos;
        pos += encode_tx_part(&mut out, pos, 1, tx, 5, &[0, 1], [(0, &a)].into_iter()) as u64;
        let third = pos;
        encode_key_state(&mut out, pos, 2, 4, b"key", Some(1234), b"value");
        let buf = Bytes::from(out);
        let Read::Record(r1, n1) = decode(&buf, 0, 100) else {
            panic!("first record");
        };
        assert_eq!(
            r1.body,
            Body::Commands(vec![
                LoggedCommand {
                    db: 0,
                    args: a.clone()
                },
                LoggedCommand { db: 3, args: b }
            ])
        );
        let Read::Record(r2, n2) = decode(&buf, n1, second) else {
            panic!("second record");
        };
        assert_eq!(
            r2.body,
            Body::TxPart {
                tx,
                epoch: 5,
                shards: vec![0, 1],
                commands: vec![LoggedCommand { db: 0, args: a }]
            }
        );
        let Read::Record(r3, n3) = decode(&buf, n1 + n2, third) else {
            panic!("third record");
        };
        assert_eq!(r3.batch, 2);
        assert_eq!(
            r3.body,
            Body::KeyState(KeyState {
                db: 4,
                key: Bytes::from_static(b"key"),
                expire_ms: Some(1234),
                value: StoredValue::String(Bytes::from_static(b"value")),
            })
        );
        assert_eq!(n1 + n2 + n3, buf.len());
    }

    /// What `decode` says of a record, reduced to what `skim` reports.
    fn decoded_as_skimmed(buf: &Bytes) -> (Read<Skimmed>, Vec<u32>) {
        match decode(buf, 0, 0) {
            Read::Record(r, len) => {
                let (tx, writes) = match &r.body {
                    Body::Commands(c) => (None, c.iter().map(|c| c.db).collect()),
                    Body::TxPart { tx, commands, .. } => {
                        (Some(*tx), commands.iter().map(|c| c.db).collect())
                    }
                    Body::KeyState(k) => (None, vec![k.db]),
                };
                let skimmed = Skimmed { batch: r.batch, tx };
                (Read::Record(skimmed, len), writes)
            }
            Read::End => (Read::End, Vec::new()),
            Read::Invalid(why) => (Read::Invalid(why), Vec::new()),
        }
    }

    #[test]
    fn skim_accepts_exactly_what_decode_accepts() {
        let mut rng = fastrand::Rng::with_seed(7);
        let set = args(&["SET", "key", "value"]);
        let mut valid = Vec::new();
        encode_commands(&mut valid, 0, 1, [(2u32, &set), (5u32, &set)].into_iter());
        let mut tx = Vec::new();
        let tag = TxTag {
            generation: 1,
            home: 0,
            sequence: 9,
        };
        encode_tx_part(&mut tx, 0, 1, tag, 3, &[0, 1], [(1u32, &set)].into_iter());
        let mut state = Vec::new();
        encode_key_state(&mut state, 0, 1, 4, b"k", Some(5), b"v");
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..20_000 {
            // A body of any kind, valid or mangled (cut, grown, bytes changed) under a good
            // checksum: the scan must never take a record replay cannot read, or the reverse.
            let base = match rng.usize(0..3) {
                0 => &valid,
                1 => &tx,
                _ => &state,
            };
            let mut body = base[HEADER_BYTES - 1..].to_vec();
            match rng.usize(0..4) {
                0 => body.truncate(rng.usize(1..=body.len())),
                1 => body.extend((0..rng.usize(1..8)).map(|_| rng.u8(..))),
                2 => {
                    let i = rng.usize(0..body.len());
                    body[i] = rng.u8(..);
                }
                _ => {}
            }
            let mut out = Vec::new();
            encode(&mut out, 0, 1, body[0], |o| o.extend_from_slice(&body[1..]));
            let buf = Bytes::from(out);
            let mut writes = Vec::new();
            let skimmed = skim(&buf, 0, 0, |db| writes.push(db));
            match skimmed {
                Read::Record(..) => accepted += 1,
                _ => refused += 1,
            }
            assert_eq!((skimmed, writes), decoded_as_skimmed(&buf), "body {body:?}");
        }
        assert!(accepted > 5000 && refused > 5000, "{accepted} / {refused}");
    }

    #[test]
    fn damage_is_detected() {
        let mut out = Vec::new();
        let a = args(&["SET", "k", "v"]);
        let n = encode_commands(&mut out, 0, 1, [(0, &a)].into_iter());
        out.extend_from_slice(&[0u8; 64]);
        let good = Bytes::from(out.clone());
        assert!(matches!(decode(&good, 0, 0), Read::Record(_, _)));
        assert_eq!(decode(&good, n, n as u64), Read::End);
        assert_eq!(decode(&good, 0, 5), Read::Invalid(Invalid::Position));
        for cut in 1..n {
            let torn = Bytes::from(out[..cut].to_vec());
            assert_eq!(
                decode(&torn, 0, 0),
                Read::Invalid(Invalid::Truncated),
                "cut at {cut}"
            );
        }
        for flip in 0..n {
            let mut bad = out.clone();
            bad[flip] ^= 0x40;
            let bad = Bytes::from(bad);
            assert!(
                matches!(decode(&bad, 0, 0), Read::Invalid(_)),
                "flip at {flip}"
            );
        }
    }
}
