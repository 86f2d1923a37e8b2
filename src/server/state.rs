//! State shared by every shard of the process: configuration, client counters, identity and
//! the shutdown request. Everything here is thread-safe and rarely written.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::config::{Config, LiveConfig};
use crate::replication::state::ReplicationState;
use crate::storage::rewrite::RewriteStatus;

/// Process-wide state.
#[derive(Debug)]
pub struct ServerState {
    pub config: LiveConfig,
    pub shard_count: usize,
    /// The CPU each shard is pinned to.
    pub shard_cpus: Vec<usize>,
    pub tcp_port: u16,
    pub started: Instant,
    pub started_unix_s: u64,
    /// 40 hex characters, new at every start (INFO server `run_id`).
    pub run_id: String,
    pub executable: String,
    pub config_file: String,
    next_client_id: AtomicU64,
    /// The log's generation (grows at every start): makes transaction ids unique on disk.
    generation: AtomicU32,
    connected_clients: AtomicU64,
    shutdown_requested: Arc<AtomicBool>,
    /// The log's files and the rewrite in progress.
    pub rewrite: RewriteStatus,
    /// Role, replicas and the link to a primary.
    pub replication: ReplicationState,
    /// Shards that have loaded their log (clients are served once all have).
    shards_loaded: AtomicUsize,
    /// Every shard's listening sockets, to stop listening at shutdown.
    listeners: std::sync::OnceLock<Vec<std::os::fd::RawFd>>,
    stopping: AtomicBool,
}

impl ServerState {
    pub fn new(config: Config, shard_cpus: Vec<usize>, config_file: String) -> Self {
        let run_id: String = (0..40)
            .map(|_| char::from(b"0123456789abcdef"[fastrand::usize(..16)]))
            .collect();
        let tcp_port = config.port;
        ServerState {
            shard_count: shard_cpus.len(),
            shard_cpus,
            tcp_port,
            started: Instant::now(),
            started_unix_s: unix_ms().unsigned_abs() / 1000,
            run_id,
            executable: std::env::current_exe()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            config_file,
            config: LiveConfig::new(config),
            next_client_id: AtomicU64::new(1),
            generation: AtomicU32::new(0),
            connected_clients: AtomicU64::new(0),
            shutdown_requested: Arc::new(AtomicBool::new(false)),
            rewrite: RewriteStatus::default(),
            replication: ReplicationState::default(),
            shards_loaded: AtomicUsize::new(0),
            listeners: std::sync::OnceLock::new(),
            stopping: AtomicBool::new(false),
        }
    }

    /// Records the listening sockets (once, at start-up).
    pub fn set_listeners(&self, fds: Vec<std::os::fd::RawFd>) {
        let _ = self.listeners.set(fds);
    }

    /// The start of a shutdown: connections run no further commands (so the logs' last sync
    /// covers every write acknowledged), and every address stops listening at once. Closing is
    /// not enough for that: a socket with an accept in flight in io_uring lives on until the
    /// kernel tears the ring down, some time after the process exits, and a server restarted
    /// meanwhile could not bind the port. A shut-down listening socket leaves the listening
    /// state at once. False if a shutdown had begun already.
    pub fn begin_shutdown(&self) -> bool {
        if self.stopping.swap(true, Ordering::AcqRel) {
            return false;
        }
        for &fd in self.listeners.get().into_iter().flatten() {
            // SAFETY: plain syscall on a listening descriptor this process opened; the accept
            // loops never close theirs, so the number still names that socket (and this runs
            // once).
            unsafe {
                libc::shutdown(fd, libc::SHUT_RDWR);
            }
        }
        true
    }

    /// Whether a shutdown has begun: no new commands run, accept errors are expected.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// A shard has loaded its log.
    pub fn shard_loaded(&self) {
        self.shards_loaded.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether every shard has loaded its log.
    pub fn all_shards_loaded(&self) -> bool {
        self.shards_loaded.load(Ordering::Acquire) >= self.shard_count
    }

    pub fn generation(&self) -> u32 {
        self.generation.load(Ordering::Relaxed)
    }

    pub fn set_generation(&self, generation: u32) {
        self.generation.store(generation, Ordering::Relaxed);
    }

    /// A new client id: increasing across the whole server, as in Valkey.
    pub fn next_client_id(&self) -> u64 {
        self.next_client_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts a client in if `maxclients` allows; false if the server is full.
    pub fn try_admit_client(&self, maxclients: u64) -> bool {
        let mut current = self.connected_clients.load(Ordering::Relaxed);
        loop {
            if current >= maxclients {
                return false;
            }
            match self.connected_clients.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    pub fn release_client(&self) {
        self.connected_clients.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn connected_clients(&self) -> u64 {
        self.connected_clients.load(Ordering::Relaxed)
    }

    /// Asks the server to stop (SIGTERM, SIGINT); shard 0 notices at its next tick.
    pub fn request_shutdown(&self) {
        self.shutdown_requested.store(true, Ordering::Release);
    }

    pub fn shutdown_requested(&self) -> bool {
        self.shutdown_requested.load(Ordering::Acquire)
    }

    /// The flag signal handlers set.
    pub fn shutdown_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.shutdown_requested)
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Microseconds since the Unix epoch.
pub fn unix_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
