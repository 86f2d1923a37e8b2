//! A shard: one pinned executor's share of the server. It owns its keyspace partition (all
//! databases for the slots it serves), its transaction locks, its clients and its counters, and
//! shares nothing with other shards but messages (`mesh`).

pub mod cron;
pub mod db;
pub mod dict;
pub mod exec;
pub mod journal;
pub mod locks;
pub mod mesh;
pub mod routing;
pub mod small_bytes;
pub mod tx;
pub mod value;

use std::cell::{Cell, RefCell, RefMut};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crate::config::Config;
use crate::replication::backlog::Backlog;
use crate::server::clients::ClientRegistry;
use crate::server::state::{unix_ms, ServerState};
use crate::storage::aof::{Aof, AofFailure};
use crate::storage::record::{LoggedCommand, TxTag};
use crate::storage::rewrite::ShardRewrite;
use crate::storage::snapshot::BaseSink;
use crate::storage::FsyncMode;
use crate::telemetry::stats::ShardStats;
use db::Db;
use locks::LockTable;
use mesh::Mesh;
use routing::SlotMap;

/// A shard's part of `repl-backlog-size`.
pub fn backlog_share(config: &Config, shards: usize) -> usize {
    usize::try_from(config.repl_backlog_size / shards.max(1) as u64)
        .unwrap_or(usize::MAX)
        .max(1)
}

/// One shard's state. Lives on its executor's thread only (`Rc`, `RefCell`).
pub struct Shard {
    index: usize,
    cpu: usize,
    slots: SlotMap,
    mesh: Mesh,
    pub server: Arc<ServerState>,
    dbs: RefCell<Vec<Db>>,
    locks: RefCell<LockTable>,
    config: RefCell<(u64, Rc<Config>)>,
    pub stats: RefCell<ShardStats>,
    pub clients: RefCell<ClientRegistry>,
    next_tx: Cell<u64>,
    /// The append-only log, when `appendonly` is on.
    aof: RefCell<Option<Aof>>,
    /// The replication backlog, once a replica has synced.
    backlog: RefCell<Option<Backlog>>,
    /// Commands of transactions not committed yet (see [`journal::Journal`]).
    tx_parts: RefCell<std::collections::HashMap<TxTag, Vec<LoggedCommand>>>,
    /// This shard's part of a rewrite in progress.
    rewrite_job: RefCell<Option<ShardRewrite>>,
    /// The records of a replica's full sync snapshot, while it is taken, with the sync's id.
    sync_sink: RefCell<Option<(u64, Rc<RefCell<BaseSink>>)>>,
    /// Where the last log of this process ended: a log turned on again starts there.
    log_floor: Cell<u64>,
    /// An instant and the Unix time it stands for, refreshed every tick: one clock read gives
    /// both a monotonic instant and the wall-clock time (see [`Shard::now`]).
    clock_base: Cell<(Instant, i64)>,
    /// This shard's connections with commands accepted and not yet run to the end (a shutdown
    /// waits for them before its last sync).
    busy_connections: Cell<usize>,
    /// Of those, the ones whose command is a SHUTDOWN (they wait on the shutdown itself).
    shutting_down: Cell<usize>,
}

/// A connection with commands under way (see [`Shard::connection_busy`]).
pub struct BusyConnection {
    shard: Rc<Shard>,
}

impl Drop for BusyConnection {
    fn drop(&mut self) {
        let busy = &self.shard.busy_connections;
        busy.set(busy.get().saturating_sub(1));
    }
}

impl Shard {
    pub fn new(index: usize, cpu: usize, server: Arc<ServerState>) -> Self {
        let config = server.config.get();
        let dbs = (0..config.databases).map(|_| Db::default()).collect();
        let count = server.shard_count;
        Shard {
            index,
            cpu,
            slots: SlotMap::new(count),
            mesh: Mesh::new(count),
            dbs: RefCell::new(dbs),
            locks: RefCell::new(LockTable::default()),
            config: RefCell::new((server.config.version(), Rc::new(Config::clone(&config)))),
            stats: RefCell::new(ShardStats::default()),
            clients: RefCell::new(ClientRegistry::default()),
            next_tx: Cell::new(1),
            aof: RefCell::new(None),
            backlog: RefCell::new(None),
            tx_parts: RefCell::default(),
            rewrite_job: RefCell::new(None),
            sync_sink: RefCell::new(None),
            log_floor: Cell::new(0),
            clock_base: Cell::new((Instant::now(), unix_ms())),
            busy_connections: Cell::new(0),
            shutting_down: Cell::new(0),
            server,
        }
    }

    /// Marks one of this shard's connections busy until the returned guard is dropped.
    pub fn connection_busy(self: &Rc<Self>) -> BusyConnection {
        self.busy_connections.set(self.busy_connections.get() + 1);
        BusyConnection {
            shard: Rc::clone(self),
        }
    }

    /// How many of this shard's connections have commands under way that a shutdown must
    /// wait for (a connection whose command is SHUTDOWN waits on it instead).
    pub fn busy_connections(&self) -> usize {
        self.busy_connections
            .get()
            .saturating_sub(self.shutting_down.get())
    }

    /// Notes that one of this shard's busy connections runs SHUTDOWN: it stays busy until
    /// the process exits, and no shutdown waits for it.
    pub fn connection_shutting_down(&self) {
        self.shutting_down.set(self.shutting_down.get() + 1);
    }

    pub fn index(&self) -> usize {
        self.index
    }

    /// The CPU this shard's executor is pinned to.
    pub fn cpu(&self) -> usize {
        self.cpu
    }

    pub fn count(&self) -> usize {
        self.slots.shard_count()
    }

    pub fn slots(&self) -> &SlotMap {
        &self.slots
    }

    pub fn mesh(&self) -> &Mesh {
        &self.mesh
    }

    /// The shard that owns `key`.
    pub fn shard_of(&self, key: &[u8]) -> usize {
        self.slots.shard_of_key(key)
    }

    /// The current configuration (refreshed from the shared copy when `CONFIG SET` changed it).
    pub fn config(&self) -> Rc<Config> {
        let version = self.server.config.version();
        let mut cached = self.config.borrow_mut();
        if cached.0 != version {
            let fresh = Rc::new(Config::clone(&self.server.config.get()));
            if let Some(aof) = self.aof.borrow_mut().as_mut() {
                aof.set_mode(fresh.appendfsync);
            }
            if let Some(backlog) = self.backlog.borrow_mut().as_mut() {
                backlog.set_capacity(backlog_share(&fresh, self.count()));
            }
            *cached = (version, fresh);
        }
        Rc::clone(&cached.1)
    }

    pub fn dbs(&self) -> RefMut<'_, Vec<Db>> {
        self.dbs.borrow_mut()
    }

    pub fn locks(&self) -> RefMut<'_, LockTable> {
        self.locks.borrow_mut()
    }

    /// The current instant and Unix time in milliseconds, from one clock read.
    pub fn now(&self) -> (Instant, i64) {
        let (base, base_ms) = self.clock_base.get();
        let now = Instant::now();
        let elapsed = i64::try_from(now.duration_since(base).as_millis()).unwrap_or(i64::MAX);
        (now, base_ms.saturating_add(elapsed))
    }

    /// Re-reads the wall clock (it may be adjusted; the monotonic clock is not).
    pub fn refresh_clock(&self) {
        self.clock_base.set((Instant::now(), unix_ms()));
    }

    /// The log, if on.
    pub fn aof(&self) -> RefMut<'_, Option<Aof>> {
        self.aof.borrow_mut()
    }

    /// Where the shard's next write goes in its log and replication stream.
    pub fn write_end(&self) -> u64 {
        self.aof
            .borrow()
            .as_ref()
            .map_or(self.log_floor.get(), Aof::end)
    }

    /// Where a log turned on now starts: after every position an earlier one used.
    pub fn log_floor(&self) -> u64 {
        self.log_floor.get()
    }

    pub fn set_log_floor(&self, position: u64) {
        self.log_floor.set(self.log_floor.get().max(position));
    }

    /// This shard's part of a rewrite in progress.
    pub fn rewrite_job(&self) -> RefMut<'_, Option<ShardRewrite>> {
        self.rewrite_job.borrow_mut()
    }

    /// The AOF and the replication backlog, to record writes.
    pub fn journal(&self) -> journal::Journal<'_> {
        journal::Journal {
            aof: self.aof.borrow_mut(),
            backlog: self.backlog.borrow_mut(),
            tx_parts: self.tx_parts.borrow_mut(),
            floor: &self.log_floor,
        }
    }

    /// The replication backlog, if one exists.
    pub fn backlog(&self) -> RefMut<'_, Option<Backlog>> {
        self.backlog.borrow_mut()
    }

    /// Creates the replication backlog (kept from then on), continuing the shard's positions.
    pub fn start_backlog(&self, capacity: usize) -> u64 {
        let start = self.write_end();
        let end = self
            .backlog
            .borrow_mut()
            .get_or_insert_with(|| Backlog::new(start, capacity))
            .end();
        self.log_expired_if_recording();
        end
    }

    /// Deleted expired keys are remembered only while something records them.
    fn log_expired_if_recording(&self) {
        let on = self.aof.borrow().is_some() || self.backlog.borrow().is_some();
        for db in self.dbs.borrow_mut().iter_mut() {
            db.set_log_expired(on);
        }
    }

    /// The snapshot of a replica's full sync being taken here, and that sync's id.
    pub fn sync_sink(&self) -> RefMut<'_, Option<(u64, Rc<RefCell<BaseSink>>)>> {
        self.sync_sink.borrow_mut()
    }

    /// Runs `f` on the log, if on.
    pub fn with_aof<R>(&self, f: impl FnOnce(&mut Aof) -> R) -> Option<R> {
        self.aof.borrow_mut().as_mut().map(f)
    }

    /// The fsync mode of the log, if on.
    pub fn aof_mode(&self) -> Option<FsyncMode> {
        self.aof.borrow().as_ref().map(|a| a.mode)
    }

    /// Installs (or, with `None`, removes) the log.
    pub fn set_aof(&self, aof: Option<Aof>) {
        *self.aof.borrow_mut() = aof;
        self.log_expired_if_recording();
    }

    /// Completes when the log is durable up to `position` (at once without a log or position).
    pub fn durable(
        &self,
        position: u64,
        urgent: bool,
    ) -> impl std::future::Future<Output = Result<(), AofFailure>> {
        let wait = if position == 0 {
            None
        } else {
            self.with_aof(|a| a.wait_durable(position, urgent))
        };
        async move {
            match wait {
                Some(w) => w.await,
                None => Ok(()),
            }
        }
    }

    /// A transaction id unique in the process: the shard index in the top bits.
    pub fn new_tx_id(&self) -> locks::TxId {
        let n = self.next_tx.get();
        self.next_tx.set(n + 1);
        ((self.index as u64) << 48) | n
    }

    /// Completes at the next lock release on this shard (plain commands blocked by a
    /// transaction wait on this, then check again).
    pub async fn lock_released(&self) {
        let mut registered = false;
        std::future::poll_fn(|cx| {
            if registered {
                std::task::Poll::Ready(())
            } else {
                self.locks.borrow_mut().wait_for_release(cx.waker());
                registered = true;
                std::task::Poll::Pending
            }
        })
        .await
    }
}
