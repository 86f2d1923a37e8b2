//! Where a shard records its writes: its AOF, its replication backlog, or both. Each record is
//! encoded once (by the AOF when it is on) and the backlog keeps the same bytes at the same
//! positions, so one position per shard stands for a write in the log and in the stream.

use std::cell::{Cell, RefMut};

use crate::protocol::Args;
use crate::replication::backlog::Backlog;
use crate::shard::db::Db;
use crate::storage::aof::Aof;
use crate::storage::record::{LoggedCommand, TxTag};

/// A shard's write recorders, borrowed for one run of commands.
pub struct Journal<'a> {
    pub aof: RefMut<'a, Option<Aof>>,
    pub backlog: RefMut<'a, Option<Backlog>>,
    /// Where a log turned on later starts: after every position the backlog used.
    pub(super) floor: &'a Cell<u64>,
}

impl Journal<'_> {
    /// Whether writes are recorded at all.
    pub fn is_on(&self) -> bool {
        self.aof.is_some() || self.backlog.is_some()
    }

    /// Records commands as one record; returns its end position (0 when nothing records).
    pub fn append_commands<'c>(
        &mut self,
        commands: impl ExactSizeIterator<Item = (u32, &'c Args)>,
    ) -> u64 {
        match (self.aof.as_mut(), self.backlog.as_mut()) {
            (Some(aof), backlog) => {
                let start = aof.end();
                let end = aof.append_commands(commands);
                if let Some(backlog) = backlog {
                    backlog.push(start, aof.recent(end - start));
                }
                end
            }
            (None, Some(backlog)) => {
                let end = backlog.append_commands(commands);
                self.floor.set(self.floor.get().max(end));
                end
            }
            (None, None) => 0,
        }
    }

    /// Keeps a command of transaction `tx` until it commits.
    pub fn buffer_tx(&mut self, tx: TxTag, db: u32, args: Args) {
        if let Some(aof) = self.aof.as_mut() {
            aof.buffer_tx(tx, db, args);
        } else if let Some(backlog) = self.backlog.as_mut() {
            backlog.buffer_tx(tx, db, args);
        }
    }

    /// Records transaction `tx`'s part on this shard; returns its end position and commands.
    pub fn commit_tx(&mut self, tx: TxTag, shards: &[u16]) -> (u64, Vec<LoggedCommand>) {
        match (self.aof.as_mut(), self.backlog.as_mut()) {
            (Some(aof), backlog) => {
                let start = aof.end();
                let (end, commands) = aof.commit_tx(tx, shards);
                if let Some(backlog) = backlog {
                    backlog.push(start, aof.recent(end - start));
                }
                (end, commands)
            }
            (None, Some(backlog)) => {
                let committed = backlog.commit_tx(tx, shards);
                self.floor.set(self.floor.get().max(committed.0));
                committed
            }
            (None, None) => (0, Vec::new()),
        }
    }

    /// Drops what transaction `tx` buffered (it is not committing here).
    pub fn forget_tx(&mut self, tx: TxTag) {
        if let Some(aof) = self.aof.as_mut() {
            aof.forget_tx(tx);
        }
        if let Some(backlog) = self.backlog.as_mut() {
            backlog.forget_tx(tx);
        }
    }

    /// Records the deletions of keys that expired, at once and outside any transaction:
    /// whatever is recorded next about those keys must come after them.
    pub fn log_expired(&mut self, dbs: &mut [Db]) {
        for (db_index, db) in dbs.iter_mut().enumerate() {
            if !db.has_expired() {
                continue;
            }
            for key in db.take_expired() {
                let del = Args::from_vecs([b"DEL".as_slice(), &key]);
                self.append_commands(std::iter::once((db_index as u32, &del)));
            }
        }
    }
}
