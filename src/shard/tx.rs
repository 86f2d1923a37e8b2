//! Cross-shard transactions: the one mechanism behind MULTI/EXEC, MSET, MSETNX, RENAME, COPY,
//! MGET, DEL … across shards, and FLUSHALL/FLUSHDB/SWAPDB.
//!
//! A [`Transaction`] takes its [`LockSet`] on each participating shard in ascending shard order
//! (see `locks`), and only then does any of its work run; while it holds them, no other client
//! can observe or change the keys involved, so no one ever sees half of it. Work it sends to a
//! shard runs without lock checks (it holds the locks), and what it writes is kept aside on each
//! shard. Committing appends each shard's part to that shard's log as one record naming every
//! shard that wrote, then releases the locks; recovery replays a part only if all the parts
//! reached disk. Dropping an uncommitted transaction commits it without waiting.

use std::collections::BTreeMap;
use std::rc::Rc;

use super::db::ClientId;
use super::exec;
use super::locks::{LockSet, TxId};
use super::mesh::{MeshError, Outcome, Payload};
use super::Shard;
use crate::server::state::unix_ms;
use crate::storage::record::TxTag;

/// Keys a client WATCHes on one shard: `(db, keys)` pairs.
pub type WatchedOnShard = Vec<(usize, Vec<Vec<u8>>)>;

/// Sequence numbers of transactions fit below this (the shard index sits above).
const SEQUENCE_MASK: u64 = (1 << 48) - 1;

/// What a transaction needs on one shard.
#[derive(Debug, Default, Clone)]
pub struct ShardPlan {
    pub locks: LockSet,
    /// A client whose WATCHed keys here must be checked once the locks are held.
    pub watch: Option<(ClientId, WatchedOnShard)>,
}

/// A transaction in progress: its locks are held until it commits (or is dropped).
pub struct Transaction {
    id: TxId,
    tag: TxTag,
    home: Rc<Shard>,
    /// Shards it holds locks on, and whether it may write there.
    shards: Vec<(usize, bool)>,
    done: bool,
}

impl Transaction {
    /// Takes the locks of `plan`, one shard after another in ascending order. The second value
    /// is true when some WATCHed key changed (the caller should then give up).
    pub async fn begin(
        home: &Rc<Shard>,
        plan: BTreeMap<usize, ShardPlan>,
    ) -> Result<(Transaction, bool), MeshError> {
        let id = home.new_tx_id();
        let mut tx = Transaction {
            id,
            tag: TxTag {
                generation: home.server.generation(),
                home: u16::try_from(home.index()).unwrap_or(u16::MAX),
                sequence: id & SEQUENCE_MASK,
            },
            home: Rc::clone(home),
            shards: Vec::with_capacity(plan.len()),
            done: false,
        };
        let mut watch_broken = false;
        for (shard, part) in plan {
            // Counted before the answer: a lock granted after we gave up is still released.
            tx.shards.push((shard, part.locks.writes()));
            let broken: bool = home
                .call_outcome(shard, move |s| acquire(s, id, part))
                .await?;
            watch_broken |= broken;
        }
        Ok((tx, watch_broken))
    }

    /// Locks every shard whole (a cut: no transaction is half done while it holds), logging
    /// nothing.
    pub async fn lock_every_shard(home: &Rc<Shard>) -> Result<Transaction, MeshError> {
        let plan = (0..home.count())
            .map(|shard| {
                let mut locks = LockSet::default();
                locks.add_whole_shard(super::locks::Mode::Exclusive);
                (shard, ShardPlan { locks, watch: None })
            })
            .collect();
        let (mut tx, _) = Transaction::begin(home, plan).await?;
        tx.log_nothing();
        Ok(tx)
    }

    /// Awaits `calls` (made under this transaction's locks), then releases the locks; fails
    /// if any call did not answer.
    pub async fn finish_calls<R: 'static>(
        self,
        calls: Vec<super::mesh::Call<R>>,
    ) -> Result<Vec<R>, MeshError> {
        let mut results = Vec::with_capacity(calls.len());
        let mut failed = None;
        for call in calls {
            match call.await {
                Ok(r) => results.push(r),
                Err(e) => failed = Some(e),
            }
        }
        self.commit().await?;
        match failed {
            Some(e) => Err(e),
            None => Ok(results),
        }
    }

    /// The transaction's identity in the log.
    pub fn tag(&self) -> TxTag {
        self.tag
    }

    /// Marks the transaction as writing nothing: it logs no parts (a rewrite's cut only needs
    /// the locks).
    pub fn log_nothing(&mut self) {
        for (_, writer) in &mut self.shards {
            *writer = false;
        }
    }

    fn writers(&self) -> Vec<u16> {
        self.shards
            .iter()
            .filter(|(_, w)| *w)
            .map(|&(s, _)| u16::try_from(s).unwrap_or(u16::MAX))
            .collect()
    }

    /// Logs each shard's part and releases every lock. Returns, per shard, where its part ends
    /// in that shard's log (0 where nothing is logged).
    pub async fn commit(mut self) -> Result<Vec<(usize, u64)>, MeshError> {
        self.done = true;
        let writers = self.writers();
        let calls: Vec<_> = self
            .shards
            .iter()
            .map(|&(shard, writer)| {
                let (id, tag, writers) = (self.id, self.tag, writers.clone());
                (
                    shard,
                    self.home
                        .call(shard, move |s| finish(s, id, tag, &writers, writer)),
                )
            })
            .collect();
        let mut ends = Vec::with_capacity(calls.len());
        for (shard, call) in calls {
            ends.push((shard, call.await?));
        }
        Ok(ends)
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let writers = self.writers();
        for &(shard, writer) in &self.shards {
            let (id, tag, writers) = (self.id, self.tag, writers.clone());
            self.home.post(shard, move |s| {
                finish(s, id, tag, &writers, writer);
            });
        }
    }
}

/// Runs on each shard at commit: appends the part (if the shard could be written), marks its
/// keys as not yet durable, releases the locks.
fn finish(shard: &Shard, id: TxId, tag: TxTag, writers: &[u16], writer: bool) -> u64 {
    let mut dbs = shard.dbs();
    let mut journal = shard.journal();
    journal.log_expired(&mut dbs);
    let end = if writer {
        let (end, commands) = journal.commit_tx(tag, writers);
        if let Some(aof) = journal.aof.as_mut() {
            for c in &commands {
                exec::mark_dirty(aof, c.db as usize, &c.args, end);
            }
        }
        end
    } else {
        journal.forget_tx(tag);
        0
    };
    drop(journal);
    drop(dbs);
    shard.locks().release(id);
    end
}

/// Runs on the target shard: grants the locks now or queues for them, then checks WATCH.
fn acquire(shard: &Rc<Shard>, tx: TxId, part: ShardPlan) -> Outcome {
    let granted = shard.locks().try_acquire(tx, &part.locks);
    if granted {
        return Outcome::Ready(Box::new(watch_broken(shard, &part.watch)));
    }
    let wait = shard.locks().enqueue(tx, part.locks);
    let shard = Rc::clone(shard);
    Outcome::Pending(Box::pin(async move {
        wait.await;
        Box::new(watch_broken(&shard, &part.watch)) as Payload
    }))
}

fn watch_broken(shard: &Shard, watch: &Option<(ClientId, WatchedOnShard)>) -> bool {
    let Some((client, per_db)) = watch else {
        return false;
    };
    let now_ms = unix_ms();
    let dbs = shard.dbs();
    per_db.iter().any(|(db, keys)| {
        dbs.get(*db)
            .is_some_and(|d| d.watch_broken(*client, keys, now_ms))
    })
}
