//! Ordering locks for cross-shard transactions.
//!
//! A transaction that spans shards (MSET, RENAME, MULTI/EXEC across shards, FLUSHALL …) takes
//! its locks on every participating shard, in ascending shard order, before it executes
//! anywhere, and keeps them until it is done. On each shard it takes all its keys at once or
//! waits in a FIFO queue, and shards are visited in one global order, so two transactions can
//! never wait on each other in a cycle.
//!
//! Plain commands take no locks: they only check, and only when some transaction holds a lock
//! on the shard, whether their key is locked; if it is they wait. A shard with no transaction in
//! flight pays one branch per command for all this.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::rc::Rc;
use std::task::{Poll, Waker};

/// A transaction's identity: unique in the process.
pub type TxId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    Shared,
    Exclusive,
}

/// What a transaction locks on one shard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockSet {
    /// The whole shard (every database): for FLUSHALL, KEYS inside MULTI, and the like.
    pub whole_shard: Option<Mode>,
    /// `(db, key, mode)`, one entry per key, the strongest mode kept.
    pub keys: Vec<(usize, Vec<u8>, Mode)>,
}

impl LockSet {
    /// Adds a key, keeping the stronger mode when it is already there.
    pub fn add_key(&mut self, db: usize, key: &[u8], mode: Mode) {
        if let Some(entry) = self
            .keys
            .iter_mut()
            .find(|(d, k, _)| *d == db && k.as_slice() == key)
        {
            entry.2 = entry.2.max(mode);
        } else {
            self.keys.push((db, key.to_vec(), mode));
        }
    }

    pub fn add_whole_shard(&mut self, mode: Mode) {
        self.whole_shard = Some(self.whole_shard.map_or(mode, |m| m.max(mode)));
    }

    pub fn is_empty(&self) -> bool {
        self.whole_shard.is_none() && self.keys.is_empty()
    }

    /// True if the set allows writing (an exclusive key or the whole shard exclusively).
    pub fn writes(&self) -> bool {
        self.whole_shard == Some(Mode::Exclusive)
            || self.keys.iter().any(|(_, _, m)| *m == Mode::Exclusive)
    }

    fn conflicts_with(&self, other: &LockSet) -> bool {
        let whole_vs = |whole: Option<Mode>, set: &LockSet| match whole {
            Some(Mode::Exclusive) => !set.is_empty(),
            Some(Mode::Shared) => {
                set.whole_shard == Some(Mode::Exclusive)
                    || set.keys.iter().any(|(_, _, m)| *m == Mode::Exclusive)
            }
            None => false,
        };
        if whole_vs(self.whole_shard, other) || whole_vs(other.whole_shard, self) {
            return true;
        }
        self.keys.iter().any(|(db, key, mode)| {
            other.keys.iter().any(|(d, k, m)| {
                d == db && k == key && (*mode == Mode::Exclusive || *m == Mode::Exclusive)
            })
        })
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Held {
    readers: u32,
    writer: bool,
}

impl Held {
    fn allows(&self, mode: Mode) -> bool {
        match mode {
            Mode::Shared => !self.writer,
            Mode::Exclusive => !self.writer && self.readers == 0,
        }
    }

    fn take(&mut self, mode: Mode) {
        match mode {
            Mode::Shared => self.readers += 1,
            Mode::Exclusive => self.writer = true,
        }
    }

    fn give_back(&mut self, mode: Mode) {
        match mode {
            Mode::Shared => self.readers = self.readers.saturating_sub(1),
            Mode::Exclusive => self.writer = false,
        }
    }

    fn is_free(&self) -> bool {
        self.readers == 0 && !self.writer
    }
}

struct Waiting {
    tx: TxId,
    set: LockSet,
    granted: Rc<Cell<bool>>,
    waker: Rc<RefCell<Option<Waker>>>,
}

/// The locks held on one shard and the transactions waiting for them.
#[derive(Default)]
pub struct LockTable {
    /// Per database, the keys some transaction holds.
    keys: HashMap<usize, HashMap<Vec<u8>, Held>>,
    shard: Held,
    holders: HashMap<TxId, LockSet>,
    queue: VecDeque<Waiting>,
    /// Plain commands waiting for a lock to go.
    blocked: Vec<Waker>,
}

impl LockTable {
    /// True when no transaction holds anything here (the common case).
    pub fn is_idle(&self) -> bool {
        self.holders.is_empty()
    }

    /// True when a plain command on `key` must wait: a transaction holds it (or the whole
    /// shard) in a conflicting mode.
    pub fn blocks(&self, db: usize, key: &[u8], write: bool) -> bool {
        let mode = if write { Mode::Exclusive } else { Mode::Shared };
        if !self.shard.allows(mode) {
            return true;
        }
        self.keys
            .get(&db)
            .and_then(|keys| keys.get(key))
            .is_some_and(|held| !held.allows(mode))
    }

    fn available(&self, set: &LockSet) -> bool {
        if let Some(mode) = set.whole_shard {
            let any_key_held = match mode {
                Mode::Exclusive => self.keys.values().any(|m| !m.is_empty()),
                Mode::Shared => self.keys.values().any(|m| m.values().any(|h| h.writer)),
            };
            if !self.shard.allows(mode) || any_key_held {
                return false;
            }
        }
        set.keys.iter().all(|(db, key, mode)| {
            self.shard.allows(*mode)
                && self
                    .keys
                    .get(db)
                    .and_then(|keys| keys.get(key))
                    .is_none_or(|held| held.allows(*mode))
        })
    }

    fn grant(&mut self, tx: TxId, set: LockSet) {
        if let Some(mode) = set.whole_shard {
            self.shard.take(mode);
        }
        for (db, key, mode) in &set.keys {
            self.keys
                .entry(*db)
                .or_default()
                .entry(key.clone())
                .or_default()
                .take(*mode);
        }
        self.holders.insert(tx, set);
    }

    /// Takes `set` for `tx` now if it is free and no earlier waiter wants a conflicting part;
    /// false if the caller must queue.
    pub fn try_acquire(&mut self, tx: TxId, set: &LockSet) -> bool {
        let queued_conflict = self.queue.iter().any(|w| w.set.conflicts_with(set));
        if queued_conflict || !self.available(set) {
            return false;
        }
        self.grant(tx, set.clone());
        true
    }

    /// Queues `tx` for `set`; the future completes once it is granted.
    pub fn enqueue(&mut self, tx: TxId, set: LockSet) -> impl Future<Output = ()> {
        let granted = Rc::new(Cell::new(false));
        let waker = Rc::new(RefCell::new(None));
        self.queue.push_back(Waiting {
            tx,
            set,
            granted: Rc::clone(&granted),
            waker: Rc::clone(&waker),
        });
        std::future::poll_fn(move |cx| {
            if granted.get() {
                Poll::Ready(())
            } else {
                *waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
    }

    /// Releases everything `tx` holds here, grants what waiters can now have, and wakes the
    /// plain commands that were blocked.
    pub fn release(&mut self, tx: TxId) {
        let Some(set) = self.holders.remove(&tx) else {
            // Not granted yet: drop it from the queue (its owner gave up).
            self.queue.retain(|w| w.tx != tx);
            return;
        };
        if let Some(mode) = set.whole_shard {
            self.shard.give_back(mode);
        }
        for (db, key, mode) in &set.keys {
            if let Some(keys) = self.keys.get_mut(db) {
                if let Some(held) = keys.get_mut(key) {
                    held.give_back(*mode);
                    if held.is_free() {
                        keys.remove(key);
                    }
                }
                if keys.is_empty() {
                    self.keys.remove(db);
                }
            }
        }
        self.grant_waiters();
        for w in self.blocked.drain(..) {
            w.wake();
        }
    }

    fn grant_waiters(&mut self) {
        let mut still_waiting: VecDeque<Waiting> = VecDeque::new();
        while let Some(w) = self.queue.pop_front() {
            let blocked_by_earlier = still_waiting.iter().any(|e| e.set.conflicts_with(&w.set));
            if !blocked_by_earlier && self.available(&w.set) {
                self.grant(w.tx, w.set.clone());
                w.granted.set(true);
                if let Some(waker) = w.waker.borrow_mut().take() {
                    waker.wake();
                }
            } else {
                still_waiting.push_back(w);
            }
        }
        self.queue = still_waiting;
    }

    /// Registers a blocked plain command to be woken at the next release.
    pub fn wait_for_release(&mut self, waker: &Waker) {
        self.blocked.push(waker.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(list: &[(&str, Mode)]) -> LockSet {
        let mut set = LockSet::default();
        for (k, m) in list {
            set.add_key(0, k.as_bytes(), *m);
        }
        set
    }

    #[test]
    fn plain_commands_see_held_locks() {
        let mut t = LockTable::default();
        assert!(t.is_idle());
        assert!(t.try_acquire(1, &keys(&[("a", Mode::Exclusive), ("b", Mode::Shared)])));
        assert!(t.blocks(0, b"a", false));
        assert!(t.blocks(0, b"b", true));
        assert!(!t.blocks(0, b"b", false));
        assert!(!t.blocks(1, b"a", true), "other database");
        t.release(1);
        assert!(t.is_idle());
        assert!(!t.blocks(0, b"a", true));
    }

    #[test]
    fn waiters_are_granted_in_order_without_overtaking() {
        let mut t = LockTable::default();
        assert!(t.try_acquire(1, &keys(&[("a", Mode::Exclusive)])));
        assert!(!t.try_acquire(2, &keys(&[("a", Mode::Shared), ("b", Mode::Exclusive)])));
        let _wait2 = t.enqueue(2, keys(&[("a", Mode::Shared), ("b", Mode::Exclusive)]));
        // 3 only wants b, which is free, but 2 queued for it first.
        assert!(!t.try_acquire(3, &keys(&[("b", Mode::Shared)])));
        let _wait3 = t.enqueue(3, keys(&[("b", Mode::Shared)]));
        t.release(1);
        assert!(t.holders.contains_key(&2));
        assert!(!t.holders.contains_key(&3));
        t.release(2);
        assert!(t.holders.contains_key(&3));
    }

    #[test]
    fn whole_shard_locks() {
        let mut t = LockTable::default();
        let mut all = LockSet::default();
        all.add_whole_shard(Mode::Exclusive);
        assert!(t.try_acquire(1, &keys(&[("a", Mode::Shared)])));
        assert!(!t.try_acquire(2, &all));
        let mut read_all = LockSet::default();
        read_all.add_whole_shard(Mode::Shared);
        assert!(t.try_acquire(3, &read_all));
        assert!(t.blocks(5, b"zzz", true));
        assert!(!t.blocks(5, b"zzz", false));
        t.release(1);
        t.release(3);
        assert!(t.try_acquire(2, &all));
        assert!(t.blocks(0, b"q", false));
    }

    #[test]
    fn modes_merge_per_key() {
        let mut set = LockSet::default();
        set.add_key(0, b"k", Mode::Shared);
        set.add_key(0, b"k", Mode::Exclusive);
        set.add_key(0, b"k", Mode::Shared);
        assert_eq!(set.keys, vec![(0, b"k".to_vec(), Mode::Exclusive)]);
    }
}
