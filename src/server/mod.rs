//! The server: start-up (data directory, listening sockets, one pinned executor per shard),
//! connections and sessions, and shutdown.

pub mod clients;
pub mod connection;
pub mod listener;
pub mod logging;
pub mod session;
pub mod state;

use std::fs::File;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement, PoolPlacement};

use crate::config::Config;
use crate::replication::state::PrimaryAddr;
use crate::shard::mesh::{self, Batch, CHANNEL_BATCHES_MAX};
use crate::shard::{cron, Shard};
use crate::storage::open::LogStart;
use state::ServerState;

/// Memory each executor registers with io_uring (glommio pins it three times).
const IO_MEMORY_BYTES: usize = 2 * 1024 * 1024;
/// How often shard 0 checks whether a signal asked for shutdown.
const SHUTDOWN_POLL: Duration = Duration::from_millis(100);
/// File descriptors kept for everything that is not a client.
const RESERVED_FDS: u64 = 32;

/// A reason the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("Can't use the data directory '{path}': {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "Another corekv-server is already using the data directory '{0}' (it holds corekv.lock)"
    )]
    DataDirLocked(PathBuf),
    #[error("{0}")]
    Listen(String),
    #[error("Could not start shard {shard}: {reason}")]
    Shard { shard: usize, reason: String },
}

/// The CPUs this process may run on (its affinity mask).
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for the calling thread.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: `set` is a valid, writable cpu_set_t of `size` bytes.
    let rc = unsafe { libc::sched_getaffinity(0, size, &mut set) };
    let cpus: Vec<usize> = if rc == 0 {
        (0..libc::CPU_SETSIZE as usize)
            // SAFETY: i is below CPU_SETSIZE, the capacity of `set`.
            .filter(|&i| unsafe { libc::CPU_ISSET(i, &set) })
            .collect()
    } else {
        Vec::new()
    };
    if cpus.is_empty() {
        vec![0]
    } else {
        cpus
    }
}

/// Locks the data directory so a second server cannot use it; the lock lives as long as the
/// returned file.
fn lock_data_dir(dir: &Path) -> Result<File, StartError> {
    std::fs::create_dir_all(dir).map_err(|source| StartError::DataDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join("corekv.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| StartError::DataDir {
            path: dir.to_path_buf(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StartError::DataDirLocked(dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(source)) => Err(StartError::DataDir {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// Raises soft resource limits to what the server may need: open files for `maxclients`, and
/// locked memory for io_uring's registered buffers.
fn raise_limits(maxclients: u64) {
    let raise = |resource, wanted: Option<u64>| {
        // SAFETY: rlimit is plain data owned here; getrlimit/setrlimit only read or write it.
        unsafe {
            let mut limit: libc::rlimit = std::mem::zeroed();
            if libc::getrlimit(resource, &mut limit) != 0 {
                return;
            }
            let target = wanted.map_or(limit.rlim_max, |w| w.min(limit.rlim_max));
            if limit.rlim_cur < target {
                limit.rlim_cur = target;
                if libc::setrlimit(resource, &limit) != 0 {
                    log::warn!("Could not raise resource limit {resource} to {target}");
                }
            }
        }
    };
    raise(libc::RLIMIT_NOFILE, Some(maxclients + RESERVED_FDS));
    raise(libc::RLIMIT_MEMLOCK, None);
}

/// How often a loaded shard checks whether the others have loaded too.
const START_POLL: Duration = Duration::from_millis(1);
/// How long shutdown waits for the commands under way, then for the logs to become durable.
const SHUTDOWN_SYNC_LIMIT: Duration = Duration::from_secs(10);
/// How often a shutdown looks whether a shard's connections finished their commands.
const SHUTDOWN_IDLE_POLL: Duration = Duration::from_millis(1);

/// Starts the server and serves until shutdown. Only returns on a start-up failure.
pub fn run(config: Config, config_file: String) -> Result<(), StartError> {
    logging::init(&config.logfile, config.loglevel).map_err(|e| {
        StartError::Config(format!("Can't open the log file '{}': {e}", config.logfile))
    })?;
    log::info!("oO0OoO0OoO0Oo corekv is starting oO0OoO0OoO0Oo");
    log::info!(
        "corekv version={}, bits=64, pid={}, just started",
        env!("CARGO_PKG_VERSION"),
        std::process::id()
    );
    if config.port == 0 {
        return Err(StartError::Config(
            "port 0 is not supported: corekv serves TCP only".to_string(),
        ));
    }
    let cpus = allowed_cpus();
    let shards = if config.shards == 0 {
        cpus.len()
    } else {
        config.shards
    };
    let shard_cpus: Vec<usize> = (0..shards).map(|i| cpus[i % cpus.len()]).collect();
    let _dir_lock = lock_data_dir(&config.dir)?;
    raise_limits(config.maxclients);
    let listeners =
        listener::bind_all(&config.bind, config.port, shards).map_err(StartError::Listen)?;
    let log = crate::storage::open::prepare(&config, shards).map_err(StartError::Config)?;
    let server = Arc::new(ServerState::new(config, shard_cpus.clone(), config_file));
    server.set_listeners(listeners.iter().flatten().copied().collect());
    if let Some(log) = &log {
        server.set_generation(log.manifest.generation);
        server
            .rewrite
            .set_files(Some(crate::storage::rewrite::LogFiles {
                dir: log.dir.clone(),
                manifest: log.manifest.clone(),
            }));
    }
    let log = log.map(Arc::new);
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(signal, server.shutdown_flag()) {
            log::warn!("Could not install the handler for signal {signal}: {e}");
        }
    }
    let mesh_builder = MeshBuilder::<Batch, _>::full(shards, CHANNEL_BATCHES_MAX);
    let (ready_tx, ready_rx) = mpsc::channel::<Result<usize, String>>();
    let mut handles = Vec::with_capacity(shards);
    for (slot, &cpu) in shard_cpus.iter().enumerate() {
        let fds: Vec<RawFd> = listeners.iter().map(|per_addr| per_addr[slot]).collect();
        let server = Arc::clone(&server);
        let mesh_builder = mesh_builder.clone();
        let ready = ready_tx.clone();
        let log = log.clone();
        let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("corekv-shard-{slot}"))
            .io_memory(IO_MEMORY_BYTES)
            // File work off the event loop (rewrites, manifests) may run on any allowed CPU
            // rather than compete with its own shard.
            .blocking_thread_pool_placement(PoolPlacement::Unbound(1))
            .spawn(move || async move {
                shard_main(server, mesh_builder, cpu, fds, log, ready).await;
            })
            .map_err(|e| StartError::Shard {
                shard: slot,
                reason: e.to_string(),
            })?;
        handles.push(handle);
    }
    drop(ready_tx);
    for _ in 0..shards {
        match ready_rx.recv() {
            Ok(Ok(_)) => {}
            Ok(Err(reason)) => return Err(StartError::Config(reason)),
            Err(_) => {
                return Err(StartError::Shard {
                    shard: 0,
                    reason: "a shard stopped during start-up".into(),
                })
            }
        }
    }
    log::info!("Server initialized with {shards} shard(s) on CPU(s) {shard_cpus:?}");
    log::info!("Ready to accept connections tcp");
    for handle in handles {
        let _ = handle.join();
    }
    Ok(())
}

async fn shard_main(
    server: Arc<ServerState>,
    mesh_builder: MeshBuilder<Batch, glommio::channels::channel_mesh::Full>,
    cpu: usize,
    listeners: Vec<RawFd>,
    log: Option<Arc<LogStart>>,
    ready: mpsc::Sender<Result<usize, String>>,
) {
    let joined = if server.shard_count > 1 {
        match mesh_builder.join().await {
            Ok(pair) => Some(pair),
            Err(e) => {
                let _ = ready.send(Err(format!("joining the shard mesh failed: {e}")));
                return;
            }
        }
    } else {
        None
    };
    let index = joined.as_ref().map_or(0, |(senders, _)| senders.peer_id());
    let shard = Rc::new(Shard::new(index, cpu, server));
    if let Some((senders, receivers)) = joined {
        mesh::start(&shard, senders, receivers);
    }
    if let Some(log) = &log {
        if let Err(e) = crate::storage::open::start_shard(&shard, log).await {
            let _ = ready.send(Err(e));
            return;
        }
    }
    // No shard serves clients before every shard has loaded its log: a command routed to a
    // shard still loading would run before its log exists and never be logged.
    shard.server.shard_loaded();
    while !shard.server.all_shards_loaded() {
        glommio::timer::sleep(START_POLL).await;
    }
    glommio::spawn_local(cron::run(Rc::clone(&shard))).detach();
    if index == 0 {
        glommio::spawn_local(watch_for_signals(Rc::clone(&shard))).detach();
        if let Some((host, port)) = shard.config().replicaof.clone() {
            let state = &shard.server.replication;
            let generation = state.set_primary(Some(PrimaryAddr { host, port }));
            crate::replication::replica::start(&shard, generation);
        }
    }
    for fd in listeners {
        glommio::spawn_local(listener::accept_loop(Rc::clone(&shard), fd)).detach();
    }
    let _ = ready.send(Ok(index));
    // The executor runs the spawned tasks; this one only has to stay alive.
    std::future::pending::<()>().await;
}

async fn watch_for_signals(shard: Rc<Shard>) {
    loop {
        glommio::timer::sleep(SHUTDOWN_POLL).await;
        if shard.server.shutdown_requested() {
            log::warn!("Received a termination signal, scheduling shutdown...");
            shutdown(&shard).await;
        }
    }
}

/// Stops the server: every shard finishes what must be finished, then the process exits.
pub async fn shutdown(shard: &Rc<Shard>) {
    if !shard.server.begin_shutdown() {
        // Another SHUTDOWN (or the signal watcher) is already finishing the job.
        return std::future::pending().await;
    }
    // Commands accepted before the shutdown began run to the end first: one of them may still
    // be on its way to another shard's log (a write forwarded there, or grouped with others
    // and sent once its connection's batch was read). No connection accepts any more.
    let idle: Vec<_> = (0..shard.count())
        .map(|s| {
            shard.call_async(s, |s| {
                let s = Rc::clone(s);
                async move {
                    while s.busy_connections() > 0 {
                        glommio::timer::sleep(SHUTDOWN_IDLE_POLL).await;
                    }
                }
            })
        })
        .collect();
    let all_idle = async {
        for wait in idle {
            let _ = wait.await;
        }
    };
    futures_lite::future::or(all_idle, glommio::timer::sleep(SHUTDOWN_SYNC_LIMIT)).await;
    // Everything appended to the logs is made durable (every fsync mode), unless the disk
    // keeps failing; each shard syncs until its log stops growing (its cron may still append
    // expirations).
    let calls: Vec<_> = (0..shard.count())
        .map(|s| {
            shard.call_async(s, |s| {
                let s = Rc::clone(s);
                async move {
                    let synced = async {
                        loop {
                            let end = s.with_aof(|a| a.end()).unwrap_or(0);
                            if let Err(e) = s.durable(end, true).await {
                                log::warn!("Error syncing the AOF on shutdown: {e}");
                                return;
                            }
                            if s.with_aof(|a| a.end()).unwrap_or(0) == end {
                                return;
                            }
                        }
                    };
                    futures_lite::future::or(synced, glommio::timer::sleep(SHUTDOWN_SYNC_LIMIT))
                        .await;
                }
            })
        })
        .collect();
    for call in calls {
        let _ = call.await;
    }
    log::warn!("corekv is now ready to exit, bye bye...");
    log::logger().flush();
    std::process::exit(0);
}
