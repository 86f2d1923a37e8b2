//! Process-wide replication state: the role, the replication id, the replicas of a primary with
//! their acknowledgements, and the link of a replica. Shared by every shard; written rarely
//! (an ACK a few times a second per replica) and read by INFO, ROLE, WAIT and WAITAOF.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;

use crate::server::state::unix_ms;

/// Locks a mutex, going on past a poisoned one (a panic elsewhere aborts the process anyway).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A new 40-hex-character replication id.
pub fn new_replid() -> String {
    (0..40)
        .map(|_| char::from(b"0123456789abcdef"[fastrand::usize(..16)]))
        .collect()
}

/// Where the primary is, for a replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrimaryAddr {
    pub host: String,
    pub port: u16,
}

/// How far a replica's sync has come, as INFO shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaSyncState {
    /// Receiving the snapshot.
    SendBulk,
    /// Following the stream.
    Online,
}

/// One replica connected to this primary.
#[derive(Debug)]
pub struct ConnectedReplica {
    pub client_id: u64,
    pub ip: String,
    pub listening_port: u16,
    state: AtomicU8,
    /// Per primary shard: the position the replica has received (ACK).
    acked: Vec<AtomicU64>,
    /// Per primary shard: the position the replica's AOF made durable (FACK).
    fsynced: Vec<AtomicU64>,
    last_ack_ms: AtomicI64,
    /// Asks the stream task to send GETACK once it has sent these positions (per shard).
    getack_at: Mutex<Option<Vec<u64>>>,
    /// The link must close (this server became a replica itself).
    dropped: AtomicBool,
    stream_waker: Mutex<Option<Waker>>,
}

impl ConnectedReplica {
    pub fn new(client_id: u64, ip: String, listening_port: u16, shards: usize) -> Self {
        ConnectedReplica {
            client_id,
            ip,
            listening_port,
            state: AtomicU8::new(0),
            acked: (0..shards).map(|_| AtomicU64::new(0)).collect(),
            fsynced: (0..shards).map(|_| AtomicU64::new(0)).collect(),
            last_ack_ms: AtomicI64::new(unix_ms()),
            getack_at: Mutex::new(None),
            dropped: AtomicBool::new(false),
            stream_waker: Mutex::new(None),
        }
    }

    pub fn state(&self) -> ReplicaSyncState {
        if self.state.load(Ordering::Acquire) == 1 {
            ReplicaSyncState::Online
        } else {
            ReplicaSyncState::SendBulk
        }
    }

    pub fn set_online(&self) {
        self.state.store(1, Ordering::Release);
    }

    /// Takes an acknowledgement (each position only grows).
    pub fn ack(&self, acked: &[u64], fsynced: Option<&[u64]>) {
        for (slot, &v) in self.acked.iter().zip(acked) {
            slot.fetch_max(v, Ordering::AcqRel);
        }
        if let Some(fsynced) = fsynced {
            for (slot, &v) in self.fsynced.iter().zip(fsynced) {
                slot.fetch_max(v, Ordering::AcqRel);
            }
        }
        self.last_ack_ms.store(unix_ms(), Ordering::Release);
    }

    /// Whether the replica received (or, with `fsynced`, made durable) every position in
    /// `woff` (per shard; 0 = nothing written there).
    pub fn covers(&self, woff: &[u64], fsynced: bool) -> bool {
        let marks = if fsynced { &self.fsynced } else { &self.acked };
        woff.iter()
            .zip(marks)
            .all(|(&w, m)| w == 0 || m.load(Ordering::Acquire) >= w)
    }

    /// The sum of the received positions (INFO's `offset`).
    pub fn acked_total(&self) -> u64 {
        self.acked.iter().map(|a| a.load(Ordering::Acquire)).sum()
    }

    /// Seconds since the last acknowledgement.
    pub fn lag_s(&self) -> i64 {
        (unix_ms() - self.last_ack_ms.load(Ordering::Acquire)).max(0) / 1000
    }

    pub fn last_ack_ms(&self) -> i64 {
        self.last_ack_ms.load(Ordering::Acquire)
    }

    /// Asks the stream task to request an acknowledgement once the replica has been sent the
    /// writes up to `woff` (per shard): the GETACK then follows them in the stream.
    pub fn request_getack(&self, woff: &[u64]) {
        {
            let mut at = lock(&self.getack_at);
            let at = at.get_or_insert_with(|| vec![0; woff.len()]);
            for (a, &w) in at.iter_mut().zip(woff) {
                *a = (*a).max(w);
            }
        }
        self.wake_stream();
    }

    fn wake_stream(&self) {
        if let Some(w) = lock(&self.stream_waker).take() {
            w.wake();
        }
    }

    /// For the stream task: whether a GETACK is due now that `sent` was sent.
    pub fn getack_due(&self, sent: &[u64]) -> bool {
        lock(&self.getack_at)
            .as_ref()
            .is_some_and(|at| at.iter().zip(sent).all(|(&a, &s)| a <= s))
    }

    /// Like [`ConnectedReplica::getack_due`], and clears the request if it is.
    pub fn take_getack(&self, sent: &[u64]) -> bool {
        let mut at = lock(&self.getack_at);
        let due = at
            .as_ref()
            .is_some_and(|at| at.iter().zip(sent).all(|(&a, &s)| a <= s));
        if due {
            *at = None;
        }
        due
    }

    /// Closes the link (this server stops being a primary).
    pub fn drop_link(&self) {
        self.dropped.store(true, Ordering::Release);
        self.wake_stream();
    }

    pub fn is_dropped(&self) -> bool {
        self.dropped.load(Ordering::Acquire)
    }

    /// For the stream task: wakes it at the next GETACK request.
    pub fn wake_on_getack(&self, waker: &Waker) {
        *lock(&self.stream_waker) = Some(waker.clone());
    }
}

/// What a replica knows about its link to the primary.
#[derive(Debug, Default)]
pub struct LinkStatus {
    pub up: AtomicBool,
    pub sync_in_progress: AtomicBool,
    /// Unix ms of the last byte from the primary (0: never).
    pub last_io_ms: AtomicI64,
    /// Unix ms the link went down (0: never up).
    pub down_since_ms: AtomicI64,
    /// The sum of the primary positions applied (INFO's `slave_repl_offset`).
    pub processed: AtomicU64,
}

/// The role and everything replication shares across shards.
#[derive(Debug)]
pub struct ReplicationState {
    primary: Mutex<Option<PrimaryAddr>>,
    /// Grows at every REPLICAOF: a link task from an older one stops.
    link_generation: AtomicU64,
    replid: Mutex<(String, String)>,
    replicas: Mutex<Vec<Arc<ConnectedReplica>>>,
    /// WAIT and WAITAOF waiters, woken at every acknowledgement.
    waiters: Mutex<Vec<Waker>>,
    /// A full sync is taking its snapshot (one at a time, and never with an AOF rewrite).
    pub link: LinkStatus,
    /// A replica's replication id and per-shard positions of its primary, kept across link
    /// losses for a partial resync.
    cached_primary: Mutex<Option<(String, Vec<u64>)>>,
}

impl Default for ReplicationState {
    fn default() -> Self {
        ReplicationState {
            primary: Mutex::new(None),
            link_generation: AtomicU64::new(0),
            replid: Mutex::new((new_replid(), "0".repeat(40))),
            replicas: Mutex::new(Vec::new()),
            waiters: Mutex::new(Vec::new()),
            link: LinkStatus::default(),
            cached_primary: Mutex::new(None),
        }
    }
}

impl ReplicationState {
    /// The primary this server follows, if it is a replica.
    pub fn primary(&self) -> Option<PrimaryAddr> {
        lock(&self.primary).clone()
    }

    pub fn is_replica(&self) -> bool {
        lock(&self.primary).is_some()
    }

    /// Becomes a replica of `addr` (or a primary with `None`); returns the new link generation.
    pub fn set_primary(&self, addr: Option<PrimaryAddr>) -> u64 {
        let mut primary = lock(&self.primary);
        if primary.is_some() && addr.is_none() {
            // Promoted: a new history starts; the old id stays known as replid2.
            let mut ids = lock(&self.replid);
            let old = std::mem::replace(&mut ids.0, new_replid());
            ids.1 = old;
        }
        if addr.is_some() {
            // Demoted (or pointed elsewhere): replicas of this server sync again later.
            for r in lock(&self.replicas).iter() {
                r.drop_link();
            }
        }
        crate::server::logging::set_replica_role(addr.is_some());
        *primary = addr;
        self.link.up.store(false, Ordering::Release);
        self.wake_waiters();
        self.link_generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    pub fn link_generation(&self) -> u64 {
        self.link_generation.load(Ordering::Acquire)
    }

    /// (replid, replid2).
    pub fn replids(&self) -> (String, String) {
        lock(&self.replid).clone()
    }

    /// A replica takes its primary's id as its own (its data is that history).
    pub fn adopt_replid(&self, replid: &str) {
        lock(&self.replid).0 = replid.to_string();
    }

    pub fn cached_primary(&self) -> Option<(String, Vec<u64>)> {
        lock(&self.cached_primary).clone()
    }

    pub fn set_cached_primary(&self, cached: Option<(String, Vec<u64>)>) {
        *lock(&self.cached_primary) = cached;
    }

    pub fn add_replica(&self, replica: Arc<ConnectedReplica>) {
        lock(&self.replicas).push(replica);
        self.wake_waiters();
    }

    pub fn remove_replica(&self, client_id: u64) {
        lock(&self.replicas).retain(|r| r.client_id != client_id);
        self.wake_waiters();
    }

    pub fn replicas(&self) -> Vec<Arc<ConnectedReplica>> {
        lock(&self.replicas).clone()
    }

    /// Replicas online that received (or made durable, with `fsynced`) every position in `woff`.
    pub fn count_acked(&self, woff: &[u64], fsynced: bool) -> i64 {
        let count = lock(&self.replicas)
            .iter()
            .filter(|r| r.state() == ReplicaSyncState::Online && r.covers(woff, fsynced))
            .count();
        i64::try_from(count).unwrap_or(i64::MAX)
    }

    /// Asks every replica for an acknowledgement once it has the writes up to `woff`.
    pub fn request_getack(&self, woff: &[u64]) {
        for r in lock(&self.replicas).iter() {
            r.request_getack(woff);
        }
    }

    /// Registers a WAIT/WAITAOF waiter for the next acknowledgement.
    pub fn wake_on_ack(&self, waker: &Waker) {
        let mut waiters = lock(&self.waiters);
        if !waiters.iter().any(|w| w.will_wake(waker)) {
            waiters.push(waker.clone());
        }
    }

    /// Wakes every waiter (an acknowledgement arrived, a replica came or went).
    pub fn wake_waiters(&self) {
        let waiters = std::mem::take(&mut *lock(&self.waiters));
        for w in waiters {
            w.wake();
        }
    }
}
