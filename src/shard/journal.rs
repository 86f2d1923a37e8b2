//! Where a shard records its writes: its AOF, its replication backlog, or both. Each record is
//! encoded once (by the AOF when it is on) and the backlog keeps the same bytes at the same
//! positions, so one position per shard stands for a write in the log and in the stream.

use std::cell::{Cell, RefMut};
use std::collections::HashMap;

use crate::protocol::Args;
use crate::replication::backlog::Backlog;
use crate::shard::db::Db;
use crate::storage::aof::Aof;
use crate::storage::record::{LoggedCommand, TxTag};

/// A shard's write recorders, borrowed for one run of commands.
pub struct Journal<'a> {
    pub aof: RefMut<'a, Option<Aof>>,
    pub backlog: RefMut<'a, Option<Backlog>>,
    /// Commands of transactions not committed yet, whichever recorder is on.
    pub(super) tx_parts: RefMut<'a, HashMap<TxTag, Vec<LoggedCommand>>>,
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

    /// Keeps a command of transaction `tx` until it commits (whichever recorders are on then
    /// record it).
    pub fn buffer_tx(&mut self, tx: TxTag, db: u32, args: Args) {
        if self.is_on() {
            self.tx_parts
                .entry(tx)
                .or_default()
                .push(LoggedCommand { db, args });
        }
    }

    /// Records transaction `tx`'s part on this shard; returns its end position and commands.
    pub fn commit_tx(&mut self, tx: TxTag, shards: &[u16]) -> (u64, Vec<LoggedCommand>) {
        let commands = self.tx_parts.remove(&tx).unwrap_or_default();
        let end = match (self.aof.as_mut(), self.backlog.as_mut()) {
            (Some(aof), backlog) => {
                let start = aof.end();
                let end = aof.append_tx_part(tx, shards, &commands);
                if let Some(backlog) = backlog {
                    backlog.push(start, aof.recent(end - start));
                }
                end
            }
            (None, Some(backlog)) => {
                let end = backlog.append_tx_part(tx, shards, &commands);
                self.floor.set(self.floor.get().max(end));
                end
            }
            (None, None) => 0,
        };
        (end, commands)
    }

    /// Drops what transaction `tx` buffered (it is not committing here).
    pub fn forget_tx(&mut self, tx: TxTag) {
        self.tx_parts.remove(&tx);
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
