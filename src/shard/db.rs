//! One logical database of one shard: its keys, their expiry times, and the clients that WATCH
//! them. Every change to a key goes through here, so expiry and WATCH are handled in one place.

use std::collections::{HashMap, HashSet};

use super::dict::Dict;
use super::small_bytes::SmallBytes;
use super::value::Value;
use crate::storage::snapshot::DbSnapshot;

/// A connection, as WATCH knows it.
pub type ClientId = u64;

/// Counters a database keeps about lookups and expiry.
#[derive(Debug, Default, Clone, Copy)]
pub struct DbStats {
    pub keyspace_hits: u64,
    pub keyspace_misses: u64,
    pub expired_keys: u64,
}

#[derive(Debug)]
struct Watcher {
    client: ClientId,
    /// The key existed but was logically expired when WATCH ran: its deletion is no change.
    expired_at_watch: bool,
}

/// Which clients watch which keys of this database, and which of them saw a change.
#[derive(Debug, Default)]
struct Watches {
    by_key: HashMap<Vec<u8>, Vec<Watcher>>,
    dirty: HashSet<ClientId>,
}

/// A logical database (`SELECT n`) on one shard.
#[derive(Default)]
pub struct Db {
    keys: Dict<Value>,
    /// Absolute expiry times in Unix milliseconds, for keys that have one.
    expires: Dict<i64>,
    watches: Watches,
    /// Where the active expiry cycle continues in `expires`.
    expire_cursor: u64,
    /// Running estimate of the remaining TTL of keys with one, in milliseconds.
    avg_ttl_ms: i64,
    pub stats: DbStats,
    /// Counts changes to keys (not expirations): a command changed data if it moved.
    changes: u64,
    /// Replaying the log: nothing expires, logged commands are applied as they ran.
    loading: bool,
    /// Keys deleted because they expired, not yet logged (only while `log_expired`).
    expired: Vec<Vec<u8>>,
    log_expired: bool,
    /// A rewrite's copy of this database in progress: keys are preserved before they change.
    snapshot: Option<DbSnapshot>,
}

impl Db {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn expires_len(&self) -> usize {
        self.expires.len()
    }

    pub fn avg_ttl_ms(&self) -> i64 {
        self.avg_ttl_ms
    }

    fn is_expired(&self, key: &[u8], now_ms: i64) -> bool {
        !self.loading
            && !self.expires.is_empty()
            && self.expires.get(key).is_some_and(|&at| at <= now_ms)
    }

    /// Changes made to keys so far (expirations aside).
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Before `key` changes: a rewrite in progress keeps its state as of the cut.
    fn preserve(&mut self, key: &[u8]) {
        if let Some(snapshot) = self.snapshot.as_mut() {
            snapshot.preserve(key, &self.keys, &self.expires);
        }
    }

    /// Starts copying this database for a rewrite (at the cut).
    pub fn start_snapshot(&mut self, snapshot: DbSnapshot) {
        self.snapshot = Some(snapshot);
    }

    /// Copies up to `steps` buckets; true once the copy is complete.
    pub fn snapshot_step(&mut self, steps: usize) -> bool {
        match self.snapshot.as_mut() {
            Some(s) => s.step(&self.keys, &self.expires, steps),
            None => true,
        }
    }

    /// Ends the copy (complete or abandoned).
    pub fn finish_snapshot(&mut self) {
        self.snapshot = None;
    }

    /// Sizes an empty keyspace for `count` keys (before loading a log that writes about as
    /// many).
    pub fn reserve_keys(&mut self, count: usize) {
        self.keys.reserve(count);
    }

    /// Hints the CPU to bring in where a write of `key` will look (see [`Dict::prefetch`]).
    pub fn prefetch_key(&self, key: &[u8], chain: bool) {
        self.keys.prefetch(key, chain);
    }

    /// While loading, nothing expires.
    pub fn set_loading(&mut self, loading: bool) {
        self.loading = loading;
        // A keyspace sized up front for the log stays so until it is loaded.
        self.keys.hold_size(loading);
    }

    pub fn is_loading(&self) -> bool {
        self.loading
    }

    /// Keep the keys deleted by expiry so that the log records their deletion.
    pub fn set_log_expired(&mut self, on: bool) {
        self.log_expired = on;
        if !on {
            self.expired.clear();
        }
    }

    /// The keys expired since the last call (to log as deletions).
    pub fn take_expired(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.expired)
    }

    pub fn has_expired(&self) -> bool {
        !self.expired.is_empty()
    }

    /// Deletes `key` if its time has passed; true if it was expired.
    fn expire_if_needed(&mut self, key: &[u8], now_ms: i64) -> bool {
        if !self.is_expired(key, now_ms) {
            return false;
        }
        self.preserve(key);
        self.keys.remove(key);
        self.expires.remove(key);
        self.stats.expired_keys += 1;
        if self.log_expired {
            self.expired.push(key.to_vec());
        }
        self.touch(key);
        true
    }

    /// The live value of `key` (an expired key is deleted on the way).
    pub fn get(&mut self, key: &[u8], now_ms: i64) -> Option<&Value> {
        if self.expire_if_needed(key, now_ms) {
            return None;
        }
        self.keys.get(key)
    }

    /// Like [`Db::get`], counting a keyspace hit or miss (read commands).
    pub fn read(&mut self, key: &[u8], now_ms: i64) -> Option<&Value> {
        if self.expire_if_needed(key, now_ms) {
            self.stats.keyspace_misses += 1;
            return None;
        }
        let found = self.keys.get(key);
        if found.is_some() {
            self.stats.keyspace_hits += 1;
        } else {
            self.stats.keyspace_misses += 1;
        }
        found
    }

    /// True if `key` exists and has not expired, without deleting anything.
    pub fn exists_now(&self, key: &[u8], now_ms: i64) -> bool {
        self.keys.contains_key(key) && !self.is_expired(key, now_ms)
    }

    /// The value of `key` for modification in place; counts as a change for WATCH.
    pub fn get_mut(&mut self, key: &[u8], now_ms: i64) -> Option<&mut Value> {
        if self.expire_if_needed(key, now_ms) {
            return None;
        }
        if !self.watches.by_key.is_empty() && self.keys.contains_key(key) {
            self.touch(key);
        }
        self.preserve(key);
        let value = self.keys.get_mut(key);
        if value.is_some() {
            self.changes += 1;
        }
        value
    }

    /// Stores `value` at `key`. The key's TTL is dropped unless `keep_ttl`.
    pub fn set(&mut self, key: &[u8], value: Value, keep_ttl: bool) {
        self.preserve(key);
        self.changes += 1;
        self.keys.insert(SmallBytes::new(key), value);
        if self.loading {
            // No client waits while loading: a resize done at once costs less than one spread
            // over the inserts that follow (each of them would probe both tables).
            self.keys.rehash(usize::MAX);
        }
        if !keep_ttl && !self.expires.is_empty() {
            self.expires.remove(key);
        }
        self.touch(key);
    }

    /// Deletes `key`; true if it existed (and had not expired).
    pub fn remove(&mut self, key: &[u8], now_ms: i64) -> bool {
        if self.expire_if_needed(key, now_ms) {
            return false;
        }
        self.remove_entry(key).is_some()
    }

    /// Deletes `key` whatever its expiry, returning its value and expiry time.
    pub fn remove_entry(&mut self, key: &[u8]) -> Option<(Value, Option<i64>)> {
        self.preserve(key);
        let (_, value) = self.keys.remove(key)?;
        let expire = self.expires.remove(key).map(|(_, at)| at);
        self.changes += 1;
        self.touch(key);
        Some((value, expire))
    }

    /// The absolute expiry time of `key` in Unix milliseconds.
    pub fn expire_at(&self, key: &[u8]) -> Option<i64> {
        if self.expires.is_empty() {
            return None;
        }
        self.expires.get(key).copied()
    }

    /// Sets the expiry of an existing key.
    pub fn set_expire(&mut self, key: &[u8], at_ms: i64) {
        if self.keys.contains_key(key) {
            self.preserve(key);
            self.expires.insert(SmallBytes::new(key), at_ms);
            self.changes += 1;
            self.touch(key);
        }
    }

    /// Removes the expiry of `key`; true if it had one.
    pub fn persist(&mut self, key: &[u8]) -> bool {
        self.preserve(key);
        let had = self.expires.remove(key).is_some();
        if had {
            self.changes += 1;
            self.touch(key);
        }
        had
    }

    /// Empties the database, returning the old contents so the caller may free them elsewhere.
    pub fn flush(&mut self) -> (Dict<Value>, Dict<i64>) {
        let watched: Vec<Vec<u8>> = self
            .watches
            .by_key
            .keys()
            .filter(|k| self.keys.contains_key(k))
            .cloned()
            .collect();
        let keys = self.keys.take_all();
        let expires = self.expires.take_all();
        self.changes += 1;
        for key in watched {
            self.touch(&key);
        }
        self.expire_cursor = 0;
        self.avg_ttl_ms = 0;
        // A rewrite still copying this database keeps the old contents: they are its state at
        // the cut, and its walk goes on over them.
        match self.snapshot.as_mut() {
            Some(snapshot) => snapshot
                .freeze(keys, expires)
                .unwrap_or_else(|| (Dict::default(), Dict::default())),
            None => (keys, expires),
        }
    }

    /// Swaps the contents (not the watches) of two databases, as SWAPDB does. Watched keys
    /// that exist in either are touched.
    pub fn swap_contents(a: &mut Db, b: &mut Db) {
        for db in [&mut *a, &mut *b] {
            if let Some(snapshot) = db.snapshot.as_mut() {
                snapshot.preserve_all(&db.keys, &db.expires);
            }
        }
        let touched_a = a.watched_keys_present_in(b);
        let touched_b = b.watched_keys_present_in(a);
        a.changes += 1;
        b.changes += 1;
        std::mem::swap(&mut a.keys, &mut b.keys);
        std::mem::swap(&mut a.expires, &mut b.expires);
        std::mem::swap(&mut a.avg_ttl_ms, &mut b.avg_ttl_ms);
        a.expire_cursor = 0;
        b.expire_cursor = 0;
        for key in touched_a {
            a.touch(&key);
        }
        for key in touched_b {
            b.touch(&key);
        }
    }

    fn watched_keys_present_in(&self, other: &Db) -> Vec<Vec<u8>> {
        self.watches
            .by_key
            .keys()
            .filter(|k| self.keys.contains_key(k) || other.keys.contains_key(k))
            .cloned()
            .collect()
    }

    pub fn random_key(&self) -> Option<&SmallBytes> {
        self.keys.random().map(|(k, _)| k)
    }

    /// Visits one SCAN step of the keyspace; returns the next cursor.
    pub fn scan(&self, cursor: u64, visit: impl FnMut(&SmallBytes, &Value)) -> u64 {
        self.keys.scan(cursor, visit)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&SmallBytes, &Value)> {
        self.keys.iter()
    }

    /// Moves rehash work forward; true while some remains.
    pub fn rehash(&mut self, steps: usize) -> bool {
        self.keys.shrink_if_needed();
        self.expires.shrink_if_needed();
        let keys_left = self.keys.rehash(steps);
        self.expires.rehash(steps) || keys_left
    }

    /// One bounded step of active expiry: looks at up to `budget` keys that have a TTL and
    /// deletes the expired ones (except those `skip` says are in use). Returns (looked at,
    /// expired).
    pub fn active_expire(
        &mut self,
        now_ms: i64,
        budget: usize,
        skip: impl Fn(&[u8]) -> bool,
    ) -> (usize, usize) {
        if self.expires.is_empty() {
            return (0, 0);
        }
        let mut looked = 0;
        let mut due = Vec::new();
        let mut ttl_sum_ms: i64 = 0;
        let mut ttl_count: i64 = 0;
        let mut cursor = self.expire_cursor;
        loop {
            cursor = self.expires.scan(cursor, |key, &at| {
                looked += 1;
                if at <= now_ms {
                    due.push(key.to_vec());
                } else {
                    ttl_sum_ms = ttl_sum_ms.saturating_add(at - now_ms);
                    ttl_count += 1;
                }
            });
            if cursor == 0 || looked >= budget {
                break;
            }
        }
        self.expire_cursor = cursor;
        if ttl_count > 0 {
            // Same smoothing as Valkey: the new sample weighs 2%.
            let sample = ttl_sum_ms / ttl_count;
            self.avg_ttl_ms = if self.avg_ttl_ms == 0 {
                sample
            } else {
                (self.avg_ttl_ms / 50) * 49 + sample / 50
            };
        }
        let mut expired = 0;
        for key in due {
            if skip(&key) {
                continue;
            }
            if self.expire_if_needed(&key, now_ms) {
                expired += 1;
            }
        }
        (looked, expired)
    }

    /// Registers `client` as watching `key`.
    pub fn watch(&mut self, client: ClientId, key: &[u8], now_ms: i64) {
        let expired_at_watch = self.keys.contains_key(key) && self.is_expired(key, now_ms);
        let watchers = self.watches.by_key.entry(key.to_vec()).or_default();
        if !watchers.iter().any(|w| w.client == client) {
            watchers.push(Watcher {
                client,
                expired_at_watch,
            });
        }
    }

    /// Forgets `client`'s watch on `keys` and its dirty flag.
    pub fn unwatch(&mut self, client: ClientId, keys: &[Vec<u8>]) {
        for key in keys {
            if let Some(watchers) = self.watches.by_key.get_mut(key) {
                watchers.retain(|w| w.client != client);
                if watchers.is_empty() {
                    self.watches.by_key.remove(key);
                }
            }
        }
        self.watches.dirty.remove(&client);
    }

    /// True if a key `client` watches here changed (or expired) since WATCH.
    pub fn watch_broken(&self, client: ClientId, keys: &[Vec<u8>], now_ms: i64) -> bool {
        if self.watches.dirty.contains(&client) {
            return true;
        }
        keys.iter().any(|key| {
            let expired_at_watch = self
                .watches
                .by_key
                .get(key)
                .and_then(|ws| ws.iter().find(|w| w.client == client))
                .is_some_and(|w| w.expired_at_watch);
            !expired_at_watch && self.keys.contains_key(key) && self.is_expired(key, now_ms)
        })
    }

    /// Marks the watchers of `key` dirty after a change.
    fn touch(&mut self, key: &[u8]) {
        if self.watches.by_key.is_empty() {
            return;
        }
        let present = self.keys.contains_key(key);
        let Some(watchers) = self.watches.by_key.get_mut(key) else {
            return;
        };
        for w in watchers.iter_mut() {
            if w.expired_at_watch && !present {
                // An already-expired key went away: logically nothing changed.
                w.expired_at_watch = false;
                continue;
            }
            self.watches.dirty.insert(w.client);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lazy_expiry_and_ttl_handling() {
        let mut db = Db::default();
        db.set(b"k", Value::string(b"v"), false);
        db.set_expire(b"k", 1000);
        assert!(db.get(b"k", 999).is_some());
        assert_eq!(db.expire_at(b"k"), Some(1000));
        db.set(b"k", Value::string(b"w"), true);
        assert_eq!(db.expire_at(b"k"), Some(1000));
        assert!(db.get(b"k", 1000).is_none());
        assert_eq!(db.len(), 0);
        assert_eq!(db.stats.expired_keys, 1);
        db.set(b"k", Value::string(b"v"), false);
        assert_eq!(db.expire_at(b"k"), None);
    }

    #[test]
    fn active_expiry_is_bounded_and_complete() {
        let mut db = Db::default();
        for i in 0..1000 {
            let key = format!("k{i}");
            db.set(key.as_bytes(), Value::Int(i), false);
            db.set_expire(key.as_bytes(), if i % 2 == 0 { 10 } else { 1_000_000 });
        }
        let mut expired_total = 0;
        for _ in 0..100 {
            let (looked, expired) = db.active_expire(100, 50, |_| false);
            assert!(looked < 50 + 20, "looked at {looked}");
            expired_total += expired;
        }
        assert_eq!(expired_total, 500);
        assert_eq!(db.len(), 500);
        assert!(db.avg_ttl_ms() > 0);
    }

    #[test]
    fn watch_sees_changes_and_expiry() {
        let mut db = Db::default();
        db.set(b"a", Value::Int(1), false);
        db.watch(7, b"a", 0);
        assert!(!db.watch_broken(7, &[b"a".to_vec()], 0));
        db.set(b"b", Value::Int(1), false);
        assert!(!db.watch_broken(7, &[b"a".to_vec()], 0));
        db.set(b"a", Value::Int(2), false);
        assert!(db.watch_broken(7, &[b"a".to_vec()], 0));
        db.unwatch(7, &[b"a".to_vec()]);

        db.watch(8, b"a", 0);
        db.set_expire(b"a", 50);
        db.unwatch(8, &[b"a".to_vec()]);
        db.watch(8, b"a", 0);
        assert!(!db.watch_broken(8, &[b"a".to_vec()], 10));
        assert!(
            db.watch_broken(8, &[b"a".to_vec()], 60),
            "expired since WATCH"
        );

        db.watch(9, b"a", 100);
        assert!(db.get(b"a", 100).is_none());
        assert!(
            !db.watch_broken(9, &[b"a".to_vec()], 100),
            "deleting an expired key is no change"
        );
    }

    #[test]
    fn flush_touches_existing_watched_keys_only() {
        let mut db = Db::default();
        db.set(b"a", Value::Int(1), false);
        db.watch(1, b"a", 0);
        db.watch(2, b"missing", 0);
        let _ = db.flush();
        assert!(db.watch_broken(1, &[b"a".to_vec()], 0));
        assert!(!db.watch_broken(2, &[b"missing".to_vec()], 0));
    }
}
