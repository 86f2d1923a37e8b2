//! A shard's replication backlog: the most recent records of its write stream, kept in memory
//! so that replicas read the live stream from it and a replica that reconnects continues where
//! it stopped (a partial resync) while the backlog still holds that position.
//!
//! The records are the ones the shard's AOF holds, byte for byte and at the same positions
//! when the AOF is on; with the AOF off the backlog numbers them itself, going on from where
//! the log would. Positions are therefore the shard's replication offsets, and a connection's
//! last write position serves WAIT, WAITAOF and the AOF alike.

use std::collections::VecDeque;
use std::task::Waker;

use bytes::Bytes;

use crate::protocol::Args;
use crate::storage::record::{self, LoggedCommand, TxTag};

/// Records are gathered into chunks of about this size (a reader takes whole chunks).
const CHUNK_BYTES: usize = 64 * 1024;

/// Records starting at `start`, whole.
#[derive(Debug, Clone)]
struct Chunk {
    start: u64,
    bytes: Bytes,
}

/// What a reader gets from [`Backlog::read`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// Whole records, the first at `start`.
    Records { start: u64, bytes: Bytes },
    /// Nothing after this position yet.
    UpToDate,
    /// The position is no longer held: the reader needs a full sync.
    Lost,
}

/// One shard's backlog.
pub struct Backlog {
    sealed: VecDeque<Chunk>,
    tail: Vec<u8>,
    tail_start: u64,
    end: u64,
    /// Bytes in `sealed` and `tail`.
    held: usize,
    capacity: usize,
    readers: Vec<Waker>,
}

impl Backlog {
    /// An empty backlog whose next record goes at `start`, holding up to `capacity` bytes
    /// (the newest chunk is always kept whole).
    pub fn new(start: u64, capacity: usize) -> Backlog {
        Backlog {
            sealed: VecDeque::new(),
            tail: Vec::new(),
            tail_start: start,
            end: start,
            held: 0,
            capacity,
            readers: Vec::new(),
        }
    }

    /// The position after the last record.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// The oldest position still held.
    pub fn first(&self) -> u64 {
        self.sealed.front().map_or(self.tail_start, |c| c.start)
    }

    /// Bytes held.
    pub fn held(&self) -> usize {
        self.held
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity;
        self.trim();
    }

    /// Adds a record the AOF encoded at `position`.
    pub fn push(&mut self, position: u64, record: &[u8]) {
        self.append_with(position, |buf, _| {
            buf.extend_from_slice(record);
            record.len()
        });
    }

    /// Encodes commands as one record at the end; returns its end position.
    pub fn append_commands<'a>(
        &mut self,
        commands: impl ExactSizeIterator<Item = (u32, &'a Args)>,
    ) -> u64 {
        let at = self.end;
        self.append_with(at, |buf, position| {
            record::encode_commands(buf, position, 0, commands)
        })
    }

    /// Encodes transaction `tx`'s part naming every shard that wrote (AOF off); returns its
    /// end position.
    pub fn append_tx_part(&mut self, tx: TxTag, shards: &[u16], commands: &[LoggedCommand]) -> u64 {
        let at = self.end;
        self.append_with(at, |buf, position| {
            record::encode_tx_part(
                buf,
                position,
                0,
                tx,
                0,
                shards,
                commands.iter().map(|c| (c.db, &c.args)),
            )
        })
    }

    fn append_with(
        &mut self,
        position: u64,
        encode: impl FnOnce(&mut Vec<u8>, u64) -> usize,
    ) -> u64 {
        let position = position.max(self.end);
        // Chunks are also the unit of trimming: a small backlog keeps small chunks.
        let chunk_limit = CHUNK_BYTES.min(self.capacity / 4).max(1);
        if position != self.end || self.tail.len() >= chunk_limit {
            self.seal();
            self.tail_start = position;
        }
        let len = encode(&mut self.tail, position);
        self.end = position + len as u64;
        self.held += len;
        self.trim();
        self.wake_readers();
        self.end
    }

    fn seal(&mut self) {
        if self.tail.is_empty() {
            return;
        }
        let bytes = Bytes::from(std::mem::take(&mut self.tail));
        self.sealed.push_back(Chunk {
            start: self.tail_start,
            bytes,
        });
        self.tail_start = self.end;
    }

    fn trim(&mut self) {
        while self.held > self.capacity {
            let Some(oldest) = self.sealed.pop_front() else {
                break;
            };
            self.held -= oldest.bytes.len();
        }
    }

    /// The records from `from` on (a whole chunk at most).
    pub fn read(&mut self, from: u64) -> Read {
        if from >= self.end {
            return Read::UpToDate;
        }
        if from < self.first() {
            return Read::Lost;
        }
        self.seal();
        // Chunks are in position order; a position between two chunks (where the log jumped)
        // continues at the next one.
        for chunk in &self.sealed {
            let chunk_end = chunk.start + chunk.bytes.len() as u64;
            if from >= chunk_end {
                continue;
            }
            let skip = usize::try_from(from.saturating_sub(chunk.start)).unwrap_or(usize::MAX);
            if skip >= chunk.bytes.len() {
                continue;
            }
            return Read::Records {
                start: chunk.start.max(from),
                bytes: chunk.bytes.slice(skip..),
            };
        }
        Read::UpToDate
    }

    /// Wakes every reader waiting for a record (a link closed: its reader must see it).
    pub fn wake_readers(&mut self) {
        for w in self.readers.drain(..) {
            w.wake();
        }
    }

    /// Wakes `waker` at the next record.
    pub fn wake_on_append(&mut self, waker: &Waker) {
        if !self.readers.iter().any(|w| w.will_wake(waker)) {
            self.readers.push(waker.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(i: u32) -> Args {
        Args::from_vecs(["SET".to_string(), format!("k{i}"), "v".to_string()])
    }

    fn positions(bytes: &Bytes, start: u64) -> Vec<u64> {
        let mut at = 0;
        let mut out = Vec::new();
        while at < bytes.len() {
            let record::Read::Record(r, len) = record::decode(bytes, at, start + at as u64) else {
                panic!("no record at {at}");
            };
            out.push(r.position);
            at += len;
        }
        out
    }

    #[test]
    fn reads_follow_appends_and_whole_records() {
        let mut backlog = Backlog::new(100, 1 << 20);
        assert_eq!(backlog.read(100), Read::UpToDate);
        let first_end = backlog.append_commands([(0, &set(1))].into_iter());
        let end = backlog.append_commands([(0, &set(2))].into_iter());
        let Read::Records { start, bytes } = backlog.read(100) else {
            panic!("records expected");
        };
        assert_eq!(start, 100);
        assert_eq!(positions(&bytes, start), vec![100, first_end]);
        let Read::Records { start, bytes } = backlog.read(first_end) else {
            panic!("records expected");
        };
        assert_eq!((start, bytes.len() as u64), (first_end, end - first_end));
        assert_eq!(backlog.read(end), Read::UpToDate);
    }

    #[test]
    fn a_jump_in_positions_is_followed() {
        let mut backlog = Backlog::new(0, 1 << 20);
        let end = backlog.append_commands([(0, &set(1))].into_iter());
        let mut encoded = Vec::new();
        let len = record::encode_commands(&mut encoded, 5000, 3, [(0, &set(2))].into_iter());
        backlog.push(5000, &encoded);
        assert_eq!(backlog.end(), 5000 + len as u64);
        let Read::Records { bytes, .. } = backlog.read(0) else {
            panic!("records expected");
        };
        assert_eq!(bytes.len() as u64, end);
        let Read::Records { start, .. } = backlog.read(end) else {
            panic!("records expected");
        };
        assert_eq!(start, 5000);
    }

    #[test]
    fn old_positions_are_lost_past_the_capacity() {
        let mut backlog = Backlog::new(0, 200_000);
        let mut ends = Vec::new();
        for i in 0..20_000 {
            ends.push(backlog.append_commands([(0, &set(i))].into_iter()));
        }
        assert!(backlog.held() <= 200_000 + CHUNK_BYTES);
        assert_eq!(backlog.read(0), Read::Lost);
        assert!(backlog.first() > 0);
        assert!(matches!(
            backlog.read(backlog.first()),
            Read::Records { .. }
        ));
        let last = ends[ends.len() - 2];
        assert!(matches!(backlog.read(last), Read::Records { .. }));
    }
}
