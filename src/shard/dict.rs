//! A chained hash table keyed by byte strings, with incremental rehashing and a SCAN cursor.
//!
//! Why not `HashMap`: a shard's keyspace must never stop for a whole-table resize (a million
//! keys would stall every client of the shard), and SCAN needs a cursor that stays valid while
//! the table grows or shrinks. Like Valkey's dict, a resize builds a second table and moves one
//! bucket per operation (plus a bounded batch per background tick); the cursor walks bucket
//! indexes in reversed-bit order, so every key present for the whole scan is returned at least
//! once whatever the resizes in between.

use std::hash::BuildHasher;
use std::sync::OnceLock;

use super::small_bytes::SmallBytes;

/// Buckets of a new table.
const INITIAL_BUCKETS: usize = 4;
/// Empty buckets one rehash step may skip before giving up the step.
const REHASH_EMPTY_VISITS_MAX: usize = 10;
/// A table shrinks when fewer than 1/this of its buckets would be used.
const SHRINK_FILL_RATIO: usize = 8;

type Link<V> = Option<Box<Node<V>>>;

struct Node<V> {
    key: SmallBytes,
    value: V,
    next: Link<V>,
}

struct Table<V> {
    buckets: Vec<Link<V>>,
    used: usize,
}

impl<V> Table<V> {
    const fn empty() -> Self {
        Table {
            buckets: Vec::new(),
            used: 0,
        }
    }

    fn with_buckets(count: usize) -> Self {
        let mut buckets = Vec::with_capacity(count);
        buckets.resize_with(count, || None);
        Table { buckets, used: 0 }
    }

    fn mask(&self) -> u64 {
        (self.buckets.len() as u64).wrapping_sub(1)
    }

    fn bucket_of(&self, hash: u64) -> usize {
        // In range: masked by buckets.len() - 1, and buckets.len() fits in usize.
        (hash & self.mask()) as usize
    }
}

/// The process-wide hashing seed, random so that clients cannot aim keys at one bucket.
fn hasher() -> &'static foldhash::fast::FixedState {
    static STATE: OnceLock<foldhash::fast::FixedState> = OnceLock::new();
    STATE.get_or_init(|| foldhash::fast::FixedState::with_seed(fastrand::u64(..)))
}

fn hash_key(key: &[u8]) -> u64 {
    hasher().hash_one(key)
}

/// Hints the CPU to bring `value`'s cache line in.
#[inline]
fn prefetch_read<T>(value: &T) {
    // SAFETY: a prefetch never faults or changes memory, whatever the address; SSE is part
    // of every x86_64 CPU.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            std::ptr::from_ref(value).cast(),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// A hash table from byte-string keys to `V`.
pub struct Dict<V> {
    /// `tables[0]` is the table in use; while rehashing, entries move from it to `tables[1]`.
    tables: [Table<V>; 2],
    /// The next bucket of `tables[0]` to move, while a rehash is in progress.
    rehash_next: Option<usize>,
    /// Set while the table must not shrink (see [`Dict::hold_size`]).
    size_held: bool,
}

impl<V> Default for Dict<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> Dict<V> {
    pub const fn new() -> Self {
        Dict {
            tables: [Table::empty(), Table::empty()],
            rehash_next: None,
            size_held: false,
        }
    }

    pub fn len(&self) -> usize {
        self.tables[0].used + self.tables[1].used
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_rehashing(&self) -> bool {
        self.rehash_next.is_some()
    }

    /// Buckets allocated in both tables (for memory estimates).
    pub fn bucket_count(&self) -> usize {
        self.tables[0].buckets.len() + self.tables[1].buckets.len()
    }

    pub fn get(&self, key: &[u8]) -> Option<&V> {
        if self.is_empty() {
            return None;
        }
        let hash = hash_key(key);
        self.searched_tables().find_map(|t| {
            let mut link = &t.buckets[t.bucket_of(hash)];
            while let Some(node) = link {
                if node.key.as_slice() == key {
                    return Some(&node.value);
                }
                link = &node.next;
            }
            None
        })
    }

    /// Asks the CPU to start loading where an insert of `key` will look: its bucket, and with
    /// `chain`, the bucket's first entry (the bucket must be in cache by then, or this waits
    /// for it). Only a hint: a loader that knows its next keys overlaps their cache misses.
    pub fn prefetch(&self, key: &[u8], chain: bool) {
        let table = &self.tables[usize::from(self.is_rehashing())];
        let Some(bucket) = table.buckets.get(table.bucket_of(hash_key(key))) else {
            return;
        };
        // `chain` is tested first: reading the bucket is the wait a first hint avoids.
        if !chain {
            prefetch_read(bucket);
        } else if let Some(node) = bucket {
            prefetch_read(&**node);
        }
    }

    pub fn contains_key(&self, key: &[u8]) -> bool {
        self.get(key).is_some()
    }

    pub fn get_mut(&mut self, key: &[u8]) -> Option<&mut V> {
        if self.is_empty() {
            return None;
        }
        self.rehash_step();
        let hash = hash_key(key);
        let rehashing = self.is_rehashing();
        let [t0, t1] = &mut self.tables;
        let b0 = t0.bucket_of(hash);
        if let Some(node) = find_mut(&mut t0.buckets[b0], key) {
            return Some(&mut node.value);
        }
        if rehashing {
            let b1 = t1.bucket_of(hash);
            return find_mut(&mut t1.buckets[b1], key).map(|n| &mut n.value);
        }
        None
    }

    /// Inserts or replaces; returns the previous value.
    pub fn insert(&mut self, key: SmallBytes, value: V) -> Option<V> {
        self.rehash_step();
        self.grow_if_needed();
        let hash = hash_key(&key);
        let rehashing = self.is_rehashing();
        let [t0, t1] = &mut self.tables;
        if rehashing {
            let b0 = t0.bucket_of(hash);
            if let Some(node) = find_mut(&mut t0.buckets[b0], &key) {
                return Some(std::mem::replace(&mut node.value, value));
            }
        }
        let target = if rehashing { t1 } else { t0 };
        let bucket = target.bucket_of(hash);
        let mut link = &mut target.buckets[bucket];
        while let Some(node) = link {
            if node.key.as_slice() == key.as_slice() {
                return Some(std::mem::replace(&mut node.value, value));
            }
            link = &mut node.next;
        }
        *link = Some(Box::new(Node {
            key,
            value,
            next: None,
        }));
        target.used += 1;
        None
    }

    /// Removes `key`, returning its stored key and value.
    pub fn remove(&mut self, key: &[u8]) -> Option<(SmallBytes, V)> {
        if self.is_empty() {
            return None;
        }
        self.rehash_step();
        let hash = hash_key(key);
        let rehashing = self.is_rehashing();
        let mut removed = None;
        for t in self.tables.iter_mut().take(if rehashing { 2 } else { 1 }) {
            let bucket = t.bucket_of(hash);
            if let Some(node) = unlink(&mut t.buckets[bucket], key) {
                t.used -= 1;
                removed = Some((node.key, node.value));
                break;
            }
        }
        if removed.is_some() {
            self.shrink_if_needed();
        }
        removed
    }

    /// Removes everything, returning the old contents (so the caller may drop them elsewhere).
    pub fn take_all(&mut self) -> Dict<V> {
        std::mem::take(self)
    }

    /// Does up to `steps` bucket moves of a rehash in progress; true while more remain.
    pub fn rehash(&mut self, steps: usize) -> bool {
        for _ in 0..steps {
            if !self.is_rehashing() {
                return false;
            }
            self.rehash_step();
        }
        self.is_rehashing()
    }

    /// Sizes an empty table for `count` entries at once, so that filling it needs no resize
    /// (loading a log). A table that holds entries is left as it is; one sized too large
    /// shrinks later like any mostly empty table.
    pub fn reserve(&mut self, count: usize) {
        if self.is_empty() && !self.is_rehashing() && count > self.tables[0].buckets.len() {
            self.tables[0] = Table::with_buckets(count.next_power_of_two());
        }
    }

    /// Keeps the table from shrinking while `hold` is set (loading: a table sized up front
    /// for the keys to come is mostly empty until they came).
    pub fn hold_size(&mut self, hold: bool) {
        self.size_held = hold;
    }

    /// Starts a shrink when the table is mostly empty (the background tick calls this too,
    /// because deletions alone may stop before the threshold is crossed).
    pub fn shrink_if_needed(&mut self) {
        let size = self.tables[0].buckets.len();
        if self.size_held || self.is_rehashing() || size <= INITIAL_BUCKETS {
            return;
        }
        let used = self.tables[0].used;
        if used * SHRINK_FILL_RATIO < size {
            self.start_rehash(used.max(INITIAL_BUCKETS).next_power_of_two());
        }
    }

    fn grow_if_needed(&mut self) {
        if self.is_rehashing() {
            return;
        }
        let t0 = &self.tables[0];
        if t0.buckets.is_empty() {
            self.tables[0] = Table::with_buckets(INITIAL_BUCKETS);
        } else if t0.used >= t0.buckets.len() {
            self.start_rehash((t0.used + 1).next_power_of_two());
        }
    }

    fn start_rehash(&mut self, buckets: usize) {
        if buckets == self.tables[0].buckets.len() {
            return;
        }
        self.tables[1] = Table::with_buckets(buckets);
        self.rehash_next = Some(0);
    }

    /// Moves one bucket from the old table to the new one.
    fn rehash_step(&mut self) {
        let Some(mut index) = self.rehash_next else {
            return;
        };
        let [t0, t1] = &mut self.tables;
        let mut empty_visits = 0;
        while index < t0.buckets.len() && t0.buckets[index].is_none() {
            index += 1;
            empty_visits += 1;
            if empty_visits == REHASH_EMPTY_VISITS_MAX {
                self.rehash_next = Some(index);
                return;
            }
        }
        if index < t0.buckets.len() {
            let mut chain = t0.buckets[index].take();
            while let Some(mut node) = chain {
                chain = node.next.take();
                let bucket = t1.bucket_of(hash_key(&node.key));
                node.next = t1.buckets[bucket].take();
                t1.buckets[bucket] = Some(node);
                t0.used -= 1;
                t1.used += 1;
            }
            index += 1;
        }
        if t0.used == 0 {
            self.tables[0] = std::mem::replace(&mut self.tables[1], Table::empty());
            self.rehash_next = None;
        } else {
            self.rehash_next = Some(index);
        }
    }

    fn searched_tables(&self) -> impl Iterator<Item = &Table<V>> {
        let count = if self.is_rehashing() { 2 } else { 1 };
        self.tables
            .iter()
            .take(count)
            .filter(|t| !t.buckets.is_empty())
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&SmallBytes, &V)> {
        self.tables.iter().flat_map(|t| {
            t.buckets.iter().flat_map(|bucket| {
                let mut link = bucket.as_deref();
                std::iter::from_fn(move || {
                    let node = link?;
                    link = node.next.as_deref();
                    Some((&node.key, &node.value))
                })
            })
        })
    }

    /// Visits the buckets named by `cursor` and returns the next cursor (0 when the scan is
    /// complete). Start with 0.
    pub fn scan(&self, cursor: u64, mut visit: impl FnMut(&SmallBytes, &V)) -> u64 {
        if self.is_empty() {
            return 0;
        }
        let mut emit = |t: &Table<V>, index: u64| {
            // In range: index is masked by the table's size.
            let mut link = t.buckets[(index & t.mask()) as usize].as_deref();
            while let Some(node) = link {
                visit(&node.key, &node.value);
                link = node.next.as_deref();
            }
        };
        let mut v = cursor;
        if !self.is_rehashing() {
            let t = &self.tables[0];
            emit(t, v);
            v |= !t.mask();
            return next_reversed(v);
        }
        let (small, large) = if self.tables[0].buckets.len() <= self.tables[1].buckets.len() {
            (&self.tables[0], &self.tables[1])
        } else {
            (&self.tables[1], &self.tables[0])
        };
        let (m0, m1) = (small.mask(), large.mask());
        emit(small, v);
        // Then every bucket of the larger table that the smaller one's bucket expands into.
        loop {
            emit(large, v);
            v |= !m1;
            v = next_reversed(v);
            if v & (m0 ^ m1) == 0 {
                break;
            }
        }
        v
    }

    /// A random entry, roughly uniform (a random non-empty bucket, then a random chain entry).
    pub fn random(&self) -> Option<(&SmallBytes, &V)> {
        if self.is_empty() {
            return None;
        }
        let (t0, t1) = (&self.tables[0], &self.tables[1]);
        let start = self.rehash_next.unwrap_or(0);
        let span = t0.buckets.len()
            + if self.is_rehashing() {
                t1.buckets.len()
            } else {
                0
            };
        loop {
            let pick = fastrand::usize(start..span);
            let bucket = if pick < t0.buckets.len() {
                &t0.buckets[pick]
            } else {
                &t1.buckets[pick - t0.buckets.len()]
            };
            let mut chain_len = 0;
            let mut link = bucket.as_deref();
            while let Some(node) = link {
                chain_len += 1;
                link = node.next.as_deref();
            }
            if chain_len == 0 {
                continue;
            }
            let mut skip = fastrand::usize(..chain_len);
            let mut link = bucket.as_deref();
            while let Some(node) = link {
                if skip == 0 {
                    return Some((&node.key, &node.value));
                }
                skip -= 1;
                link = node.next.as_deref();
            }
        }
    }
}

/// Increments the reversed-bit representation of `v` (the SCAN cursor step).
fn next_reversed(v: u64) -> u64 {
    v.reverse_bits().wrapping_add(1).reverse_bits()
}

fn find_mut<'a, V>(mut link: &'a mut Link<V>, key: &[u8]) -> Option<&'a mut Node<V>> {
    while let Some(node) = link {
        if node.key.as_slice() == key {
            return Some(node);
        }
        link = &mut node.next;
    }
    None
}

fn unlink<V>(mut link: &mut Link<V>, key: &[u8]) -> Option<Box<Node<V>>> {
    loop {
        let found = link.as_deref()?.key.as_slice() == key;
        if found {
            let mut node = link.take()?;
            *link = node.next.take();
            return Some(node);
        }
        link = &mut link.as_mut()?.next;
    }
}

impl<V> Drop for Dict<V> {
    /// Unlinks chains iteratively: dropping a long chain recursively could overflow the stack.
    fn drop(&mut self) {
        for t in &mut self.tables {
            for bucket in &mut t.buckets {
                let mut chain = bucket.take();
                while let Some(mut node) = chain {
                    chain = node.next.take();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    fn key(i: usize) -> SmallBytes {
        SmallBytes::new(format!("key:{i}").as_bytes())
    }

    #[test]
    fn behaves_like_a_map_through_growth_and_shrink() {
        let mut dict = Dict::new();
        let mut model = HashMap::new();
        for round in 0..3 {
            for i in 0..5000 {
                let k = key(i);
                let v = i * 10 + round;
                assert_eq!(dict.insert(k.clone(), v), model.insert(k.to_vec(), v));
            }
            for i in (0..5000).step_by(3) {
                let k = key(i);
                assert_eq!(dict.remove(&k).map(|(_, v)| v), model.remove(k.as_slice()));
            }
            assert_eq!(dict.len(), model.len());
            for (k, v) in &model {
                assert_eq!(dict.get(k), Some(v));
            }
            if let Some(v) = dict.get_mut(&key(1)) {
                *v += 1;
                *model.get_mut(key(1).as_slice()).expect("present") += 1;
            }
        }
        for i in 0..5000 {
            dict.remove(&key(i));
        }
        assert!(dict.is_empty());
        while dict.rehash(100) {}
        assert!(
            dict.bucket_count() <= 64,
            "shrunk to {}",
            dict.bucket_count()
        );
    }

    #[test]
    fn reserve_sizes_an_empty_table_once() {
        let mut d = Dict::new();
        d.reserve(1000);
        assert_eq!(d.bucket_count(), 1024);
        for i in 0..1000 {
            d.insert(key(i), i);
        }
        assert!(!d.is_rehashing());
        assert_eq!(d.bucket_count(), 1024);
        d.reserve(1 << 20);
        assert_eq!(
            d.bucket_count(),
            1024,
            "a table with entries keeps its size"
        );
        assert_eq!(d.get(key(999).as_slice()), Some(&999));
    }

    #[test]
    fn a_held_table_keeps_its_size_through_deletes() {
        let mut d = Dict::new();
        d.reserve(1024);
        d.hold_size(true);
        d.insert(key(1), 1);
        d.insert(key(2), 2);
        assert!(d.remove(key(1).as_slice()).is_some());
        assert_eq!(d.bucket_count(), 1024, "no shrink while held");
        d.hold_size(false);
        d.shrink_if_needed();
        d.rehash(usize::MAX);
        assert!(d.bucket_count() < 1024);
        assert_eq!(d.get(key(2).as_slice()), Some(&2));
    }

    #[test]
    fn scan_returns_every_key_despite_resizes() {
        let mut dict = Dict::new();
        for i in 0..1000 {
            dict.insert(key(i), i);
        }
        let mut seen = HashSet::new();
        let mut cursor = 0;
        let mut calls = 0;
        loop {
            cursor = dict.scan(cursor, |k, _| {
                seen.insert(k.to_vec());
            });
            calls += 1;
            // Grow during the scan, then shrink: keys 0..1000 stay throughout.
            if calls == 50 {
                for i in 1000..20000 {
                    dict.insert(key(i), i);
                }
            }
            if calls == 400 {
                for i in 1000..20000 {
                    dict.remove(&key(i));
                }
            }
            if cursor == 0 {
                break;
            }
        }
        for i in 0..1000 {
            assert!(seen.contains(key(i).as_slice()), "missed key {i}");
        }
    }

    #[test]
    fn random_and_iter_cover_entries() {
        let mut dict = Dict::new();
        assert!(dict.random().is_none());
        for i in 0..100 {
            dict.insert(key(i), i);
        }
        assert_eq!(dict.iter().count(), 100);
        let mut picked = HashSet::new();
        for _ in 0..2000 {
            let (k, _) = dict.random().expect("non-empty");
            picked.insert(k.to_vec());
        }
        assert!(picked.len() > 80, "random picked only {}", picked.len());
    }

    #[test]
    fn long_chains_drop_without_recursion() {
        let mut dict: Dict<u32> = Dict::new();
        for i in 0..200_000 {
            dict.insert(key(i), 0);
        }
        drop(dict);
    }
}
