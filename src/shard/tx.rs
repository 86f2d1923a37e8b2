//! Cross-shard transactions: the one mechanism behind MULTI/EXEC, MSET, MSETNX, RENAME, COPY,
//! MGET, DEL … across shards, and FLUSHALL/FLUSHDB/SWAPDB.
//!
//! A [`Transaction`] takes its [`LockSet`] on each participating shard in ascending shard order
//! (see `locks`), and only then does any of its work run; while it holds them, no other client
//! can observe or change the keys involved, so no one ever sees half of it. Work it sends to a
//! shard runs without lock checks (it holds the locks). Dropping it releases everything.

use std::collections::BTreeMap;
use std::rc::Rc;

use super::db::ClientId;
use super::exec::{keyed_job, KeyedCall, Replies};
use super::locks::{LockSet, TxId};
use super::mesh::{MeshError, Outcome, Payload};
use super::Shard;
use crate::protocol::Protocol;
use crate::server::state::unix_ms;

/// Keys a client WATCHes on one shard: `(db, keys)` pairs.
pub type WatchedOnShard = Vec<(usize, Vec<Vec<u8>>)>;

/// What a transaction needs on one shard.
#[derive(Debug, Default, Clone)]
pub struct ShardPlan {
    pub locks: LockSet,
    /// A client whose WATCHed keys here must be checked once the locks are held.
    pub watch: Option<(ClientId, WatchedOnShard)>,
}

/// A transaction in progress: its locks are held until it is dropped or released.
pub struct Transaction {
    id: TxId,
    home: Rc<Shard>,
    shards: Vec<usize>,
}

impl Transaction {
    /// Takes the locks of `plan`, one shard after another in ascending order. The second value
    /// is true when some WATCHed key changed (the caller should then give up).
    pub async fn begin(
        home: &Rc<Shard>,
        plan: BTreeMap<usize, ShardPlan>,
    ) -> Result<(Transaction, bool), MeshError> {
        let mut tx = Transaction {
            id: home.new_tx_id(),
            home: Rc::clone(home),
            shards: Vec::with_capacity(plan.len()),
        };
        let mut watch_broken = false;
        for (shard, part) in plan {
            let id = tx.id;
            // Counted before the answer: a lock granted after we gave up is still released.
            tx.shards.push(shard);
            let broken: bool = home
                .call_outcome(shard, move |s| acquire(s, id, part))
                .await?;
            watch_broken |= broken;
        }
        Ok((tx, watch_broken))
    }

    /// The shards this transaction holds locks on.
    pub fn shards(&self) -> &[usize] {
        &self.shards
    }

    /// Runs keyed calls on `shard` under this transaction's locks.
    pub async fn run(
        &self,
        shard: usize,
        calls: Vec<KeyedCall>,
        protocol: Protocol,
    ) -> Result<Replies, MeshError> {
        self.home
            .call_outcome(shard, keyed_job(calls, protocol, true))
            .await
    }

    /// Releases every lock (also done on drop).
    pub fn release(mut self) {
        self.release_all();
    }

    fn release_all(&mut self) {
        let id = self.id;
        for shard in self.shards.drain(..) {
            self.home.post(shard, move |s| s.locks().release(id));
        }
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        self.release_all();
    }
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
