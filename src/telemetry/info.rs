//! The INFO reply: Valkey's sections and field names, filled from every shard's snapshot, plus
//! a `# Shards` section of corekv's own with one line per shard.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use super::alloc;
use super::stats::ShardStats;
use crate::config::Config;
use crate::server::state::{unix_us, ServerState};
use crate::shard::Shard;
use crate::storage::aof::Aof;

/// What one shard reports for INFO.
#[derive(Debug, Clone)]
pub struct ShardSnapshot {
    pub index: usize,
    pub cpu: usize,
    pub stats: ShardStats,
    /// Per database: (keys, keys with a TTL, average TTL in ms).
    pub dbs: Vec<(usize, usize, i64)>,
    pub keyspace_hits: u64,
    pub keyspace_misses: u64,
    pub expired_keys: u64,
    pub clients: usize,
    pub watching_clients: usize,
    pub watched_keys: usize,
    pub max_query_buffer: usize,
    pub max_output_buffer: usize,
    pub cpu_user_s: f64,
    pub cpu_sys_s: f64,
    pub aof: Option<AofSnapshot>,
    /// Where the shard's next write goes in its log and replication stream.
    pub write_end: u64,
    /// The replication backlog: (first position held, end, bytes held, capacity).
    pub backlog: Option<(u64, u64, usize, usize)>,
}

/// The state of one shard's log, for INFO persistence.
#[derive(Debug, Clone)]
pub struct AofSnapshot {
    pub durable: u64,
    pub end: u64,
    pub size_bytes: u64,
    pub base_bytes: u64,
    pub pending_bytes: usize,
    pub fsyncs: u64,
    pub records_synced: u64,
    pub write_errors: u64,
    pub failure: Option<String>,
    /// fdatasync latency percentiles (p50, p99, p99.9) in microseconds.
    pub fsync_us: (u64, u64, u64),
    /// Records made durable per fdatasync that carried any: p50, p99 (2 significant digits),
    /// max (exact).
    pub batch: (u64, u64, u64),
}

impl AofSnapshot {
    fn take(aof: &Aof) -> AofSnapshot {
        let percentile = |h: &Option<hdrhistogram::Histogram<u64>>, q: f64| {
            h.as_ref()
                .filter(|h| !h.is_empty())
                .map_or(0, |h| h.value_at_quantile(q))
        };
        let fsync = &aof.stats.fsync_latency_us;
        let batch = &aof.stats.batch_records;
        AofSnapshot {
            durable: aof.durable(),
            end: aof.end(),
            size_bytes: aof.size_bytes(),
            base_bytes: aof.base_bytes,
            pending_bytes: aof.pending_bytes(),
            fsyncs: aof.stats.fsyncs,
            records_synced: aof.stats.records_synced,
            write_errors: aof.stats.write_errors,
            failure: aof.failure().map(|f| f.message.clone()),
            fsync_us: (
                percentile(fsync, 0.5),
                percentile(fsync, 0.99),
                percentile(fsync, 0.999),
            ),
            batch: (
                percentile(batch, 0.5),
                percentile(batch, 0.99),
                aof.stats.batch_max,
            ),
        }
    }
}

impl ShardSnapshot {
    /// Takes the snapshot on the shard's own thread.
    pub fn take(shard: &Shard) -> ShardSnapshot {
        let write_end = shard.write_end();
        let backlog = shard
            .backlog()
            .as_ref()
            .map(|b| (b.first(), b.end(), b.held(), b.capacity()));
        let dbs = shard.dbs();
        let (mut hits, mut misses, mut expired) = (0, 0, 0);
        for db in dbs.iter() {
            hits += db.stats.keyspace_hits;
            misses += db.stats.keyspace_misses;
            expired += db.stats.expired_keys;
        }
        let clients = shard.clients.borrow();
        let (user, sys) = thread_cpu_seconds();
        ShardSnapshot {
            index: shard.index(),
            cpu: shard.cpu(),
            stats: shard.stats.borrow().clone(),
            dbs: dbs
                .iter()
                .map(|d| (d.len(), d.expires_len(), d.avg_ttl_ms()))
                .collect(),
            keyspace_hits: hits,
            keyspace_misses: misses,
            expired_keys: expired,
            // Replicas are not clients in Valkey's count (`connected_slaves` has them).
            clients: clients.iter().filter(|c| !c.replica.get()).count(),
            watching_clients: clients.iter().filter(|c| c.watched_keys.get() > 0).count(),
            watched_keys: clients.iter().map(|c| c.watched_keys.get()).sum(),
            max_query_buffer: clients
                .iter()
                .map(|c| c.query_buffer_bytes.get())
                .max()
                .unwrap_or(0),
            max_output_buffer: clients
                .iter()
                .map(|c| c.output_bytes.get())
                .max()
                .unwrap_or(0),
            cpu_user_s: user,
            cpu_sys_s: sys,
            aof: shard.aof().as_ref().map(AofSnapshot::take),
            write_end,
            backlog,
        }
    }
}

fn rusage_seconds(who: libc::c_int) -> (f64, f64) {
    // SAFETY: getrusage writes into the zeroed struct we own; the struct is plain data.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(who, &mut usage) != 0 {
            return (0.0, 0.0);
        }
        usage
    };
    let seconds = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1_000_000.0;
    (seconds(usage.ru_utime), seconds(usage.ru_stime))
}

/// CPU time of the calling thread: (user, system) seconds.
pub fn thread_cpu_seconds() -> (f64, f64) {
    rusage_seconds(libc::RUSAGE_THREAD)
}

/// CPU time of the whole process: (user, system) seconds.
pub fn process_cpu_seconds() -> (f64, f64) {
    rusage_seconds(libc::RUSAGE_SELF)
}

/// Sections `INFO` prints with no argument (and with `default`).
const DEFAULT_SECTIONS: &[&str] = &[
    "server",
    "clients",
    "memory",
    "persistence",
    "stats",
    "replication",
    "cpu",
    "modules",
    "errorstats",
    "cluster",
    "keyspace",
    "shards",
];
/// Sections `all` and `everything` add.
const EXTRA_SECTIONS: &[&str] = &["commandstats", "latencystats"];
const ORDER: &[&str] = &[
    "server",
    "clients",
    "memory",
    "persistence",
    "stats",
    "replication",
    "cpu",
    "modules",
    "commandstats",
    "errorstats",
    "latencystats",
    "cluster",
    "keyspace",
    "shards",
];

/// Which sections the arguments of INFO ask for, in print order.
pub fn requested_sections(args: &[String]) -> Vec<&'static str> {
    let mut wanted: Vec<&str> = Vec::new();
    if args.is_empty() {
        wanted.extend(DEFAULT_SECTIONS);
    }
    for arg in args {
        match arg.to_ascii_lowercase().as_str() {
            "default" => wanted.extend(DEFAULT_SECTIONS),
            "all" | "everything" => {
                wanted.extend(DEFAULT_SECTIONS);
                wanted.extend(EXTRA_SECTIONS);
            }
            other => {
                if let Some(s) = ORDER.iter().find(|s| **s == other) {
                    wanted.push(s);
                }
            }
        }
    }
    ORDER
        .iter()
        .copied()
        .filter(|s| wanted.contains(s))
        .collect()
}

/// Renders the requested sections.
pub fn render(
    sections: &[&str],
    shards: &[ShardSnapshot],
    server: &ServerState,
    config: &Config,
) -> String {
    let mut total = ShardStats::default();
    for s in shards {
        total.merge(&s.stats);
    }
    let mut out = String::new();
    for (i, section) in sections.iter().enumerate() {
        if i > 0 {
            out.push_str("\r\n");
        }
        match *section {
            "server" => server_section(&mut out, server, config),
            "clients" => clients_section(&mut out, shards, config),
            "memory" => memory_section(&mut out),
            "persistence" => persistence_section(&mut out, shards, server, config),
            "stats" => stats_section(&mut out, shards, &total),
            "replication" => replication_section(&mut out, shards, server, config),
            "cpu" => cpu_section(&mut out),
            "modules" => out.push_str("# Modules\r\n"),
            "commandstats" => commandstats_section(&mut out, &total),
            "errorstats" => errorstats_section(&mut out, &total),
            "latencystats" => latencystats_section(&mut out, &total, config),
            "cluster" => out.push_str("# Cluster\r\ncluster_enabled:0\r\n"),
            "keyspace" => keyspace_section(&mut out, shards),
            "shards" => shards_section(&mut out, shards),
            _ => {}
        }
    }
    out
}

macro_rules! field {
    ($out:expr, $name:expr, $value:expr) => {
        let _ = write!($out, "{}:{}\r\n", $name, $value);
    };
}

fn os_name() -> String {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    format!(
        "{} {} {}",
        read("/proc/sys/kernel/ostype"),
        read("/proc/sys/kernel/osrelease"),
        std::env::consts::ARCH
    )
}

fn server_section(out: &mut String, server: &ServerState, config: &Config) {
    let uptime = server.started.elapsed().as_secs();
    out.push_str("# Server\r\n");
    // Clients read redis_version to decide what they may use: the command set is 7.2's.
    field!(out, "redis_version", "7.2.4");
    field!(out, "server_name", "corekv");
    field!(out, "corekv_version", env!("CARGO_PKG_VERSION"));
    field!(out, "redis_git_sha1", "00000000");
    field!(out, "redis_git_dirty", 0);
    field!(out, "redis_build_id", "0");
    field!(out, "server_mode", "standalone");
    field!(out, "os", os_name());
    field!(out, "arch_bits", 64);
    field!(out, "monotonic_clock", "POSIX clock_gettime");
    field!(out, "multiplexing_api", "io_uring");
    field!(out, "process_id", std::process::id());
    field!(out, "process_supervised", "no");
    field!(out, "run_id", server.run_id);
    field!(out, "tcp_port", server.tcp_port);
    field!(out, "server_time_usec", unix_us());
    field!(out, "uptime_in_seconds", uptime);
    field!(out, "uptime_in_days", uptime / 86400);
    field!(out, "hz", config.hz);
    field!(out, "configured_hz", config.hz);
    field!(out, "executable", server.executable);
    field!(out, "config_file", server.config_file);
    field!(out, "io_threads_active", 0);
    let binds: Vec<String> = config.bind.iter().map(|b| format!("bind={b}")).collect();
    field!(
        out,
        "listener0",
        format!("name=tcp,{},port={}", binds.join(","), server.tcp_port)
    );
    field!(out, "shards", server.shard_count);
}

fn clients_section(out: &mut String, shards: &[ShardSnapshot], config: &Config) {
    let sum = |f: fn(&ShardSnapshot) -> usize| shards.iter().map(f).sum::<usize>();
    let max = |f: fn(&ShardSnapshot) -> usize| shards.iter().map(f).max().unwrap_or(0);
    out.push_str("# Clients\r\n");
    field!(out, "connected_clients", sum(|s| s.clients));
    field!(out, "cluster_connections", 0);
    field!(out, "maxclients", config.maxclients);
    field!(
        out,
        "client_recent_max_input_buffer",
        max(|s| s.max_query_buffer)
    );
    field!(
        out,
        "client_recent_max_output_buffer",
        max(|s| s.max_output_buffer)
    );
    field!(out, "blocked_clients", 0);
    field!(out, "tracking_clients", 0);
    field!(out, "pubsub_clients", 0);
    field!(out, "watching_clients", sum(|s| s.watching_clients));
    field!(out, "clients_in_timeout_table", 0);
    field!(out, "total_watched_keys", sum(|s| s.watched_keys));
    field!(out, "total_blocking_keys", 0);
    field!(out, "total_blocking_keys_on_nokey", 0);
}

/// Valkey's human-readable byte counts (`1.73M`).
pub fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    const K: f64 = 1024.0;
    if b < K {
        format!("{bytes}B")
    } else if b < K * K {
        format!("{:.2}K", b / K)
    } else if b < K * K * K {
        format!("{:.2}M", b / (K * K))
    } else if b < K * K * K * K {
        format!("{:.2}G", b / (K * K * K))
    } else {
        format!("{:.2}T", b / (K * K * K * K))
    }
}

fn memory_section(out: &mut String) {
    let used = alloc::used_bytes();
    let rss = alloc::rss_bytes();
    let total = alloc::total_system_bytes();
    out.push_str("# Memory\r\n");
    field!(out, "used_memory", used);
    field!(out, "used_memory_human", human_bytes(used));
    field!(out, "used_memory_rss", rss);
    field!(out, "used_memory_rss_human", human_bytes(rss));
    field!(out, "total_system_memory", total);
    field!(out, "total_system_memory_human", human_bytes(total));
    field!(out, "maxmemory", 0);
    field!(out, "maxmemory_human", "0B");
    field!(out, "maxmemory_policy", "noeviction");
    let ratio = if used > 0 {
        rss as f64 / used as f64
    } else {
        0.0
    };
    field!(out, "mem_fragmentation_ratio", format!("{ratio:.2}"));
    field!(out, "mem_allocator", "mimalloc");
    field!(out, "lazyfree_pending_objects", 0);
}

fn persistence_section(
    out: &mut String,
    shards: &[ShardSnapshot],
    server: &ServerState,
    config: &Config,
) {
    let logs: Vec<&AofSnapshot> = shards.iter().filter_map(|s| s.aof.as_ref()).collect();
    let failed = logs.iter().any(|a| a.failure.is_some());
    out.push_str("# Persistence\r\n");
    // corekv never forks and never writes RDB snapshots: those fields keep their idle values.
    for (name, value) in [
        ("loading", "0"),
        ("async_loading", "0"),
        ("current_cow_peak", "0"),
        ("current_cow_size", "0"),
        ("current_cow_size_age", "0"),
        ("current_fork_perc", "0.00"),
        ("current_save_keys_processed", "0"),
        ("current_save_keys_total", "0"),
        ("rdb_changes_since_last_save", "0"),
        ("rdb_bgsave_in_progress", "0"),
    ] {
        field!(out, name, value);
    }
    field!(out, "rdb_last_save_time", server.started_unix_s);
    for (name, value) in [
        ("rdb_last_bgsave_status", "ok"),
        ("rdb_last_bgsave_time_sec", "-1"),
        ("rdb_current_bgsave_time_sec", "-1"),
        ("rdb_saves", "0"),
        ("rdb_last_cow_size", "0"),
        ("rdb_last_load_keys_expired", "0"),
        ("rdb_last_load_keys_loaded", "0"),
    ] {
        field!(out, name, value);
    }
    let rewrite = &server.rewrite;
    field!(out, "aof_enabled", i64::from(config.appendonly));
    field!(
        out,
        "aof_rewrite_in_progress",
        i64::from(rewrite.in_progress())
    );
    // A log that should run but does not yet (its start failed) is started again by the cron.
    let scheduled = config.appendonly
        && !rewrite.in_progress()
        && (logs.len() < shards.len() || rewrite.scheduled());
    field!(out, "aof_rewrite_scheduled", i64::from(scheduled));
    field!(out, "aof_last_rewrite_time_sec", rewrite.last_seconds());
    field!(
        out,
        "aof_current_rewrite_time_sec",
        rewrite.current_seconds()
    );
    field!(
        out,
        "aof_last_bgrewrite_status",
        if rewrite.last_ok() { "ok" } else { "err" }
    );
    field!(out, "aof_rewrites", rewrite.completed());
    field!(
        out,
        "aof_rewrites_consecutive_failures",
        rewrite.consecutive_failures()
    );
    field!(
        out,
        "aof_last_write_status",
        if failed { "err" } else { "ok" }
    );
    field!(out, "aof_last_cow_size", 0);
    field!(out, "module_fork_in_progress", 0);
    field!(out, "module_fork_last_cow_size", 0);
    if !config.appendonly {
        return;
    }
    field!(
        out,
        "aof_current_size",
        logs.iter().map(|a| a.size_bytes).sum::<u64>()
    );
    field!(
        out,
        "aof_base_size",
        logs.iter().map(|a| a.base_bytes).sum::<u64>()
    );
    field!(out, "aof_pending_rewrite", 0);
    field!(
        out,
        "aof_buffer_length",
        logs.iter().map(|a| a.pending_bytes).sum::<usize>()
    );
    field!(out, "aof_pending_bio_fsync", 0);
    field!(out, "aof_delayed_fsync", 0);
    for s in shards {
        let Some(a) = &s.aof else {
            continue;
        };
        let per_fsync = if a.fsyncs > 0 {
            a.records_synced as f64 / a.fsyncs as f64
        } else {
            0.0
        };
        let _ = write!(
            out,
            "aof_shard{}:durable_offset={},end_offset={},fsyncs={},writes_synced={},\
             writes_per_fsync={per_fsync:.2},writes_per_fsync_p50={},writes_per_fsync_p99={},\
             writes_per_fsync_max={},\
             fsync_p50_us={},fsync_p99_us={},fsync_p999_us={},write_errors={},last_write_status={}\r\n",
            s.index,
            a.durable,
            a.end,
            a.fsyncs,
            a.records_synced,
            a.batch.0,
            a.batch.1,
            a.batch.2,
            a.fsync_us.0,
            a.fsync_us.1,
            a.fsync_us.2,
            a.write_errors,
            a.failure.as_deref().unwrap_or("ok"),
        );
    }
}

fn stats_section(out: &mut String, shards: &[ShardSnapshot], total: &ShardStats) {
    let sum = |f: fn(&ShardSnapshot) -> u64| shards.iter().map(f).sum::<u64>();
    out.push_str("# Stats\r\n");
    field!(
        out,
        "total_connections_received",
        total.connections_received
    );
    field!(out, "total_commands_processed", total.total_commands);
    field!(
        out,
        "instantaneous_ops_per_sec",
        total.instantaneous_ops_per_sec()
    );
    field!(out, "total_net_input_bytes", total.net_input_bytes);
    field!(out, "total_net_output_bytes", total.net_output_bytes);
    field!(out, "rejected_connections", total.rejected_connections);
    field!(out, "expired_keys", sum(|s| s.expired_keys));
    field!(out, "evicted_keys", 0);
    field!(out, "keyspace_hits", sum(|s| s.keyspace_hits));
    field!(out, "keyspace_misses", sum(|s| s.keyspace_misses));
    field!(out, "pubsub_channels", 0);
    field!(out, "pubsub_patterns", 0);
    field!(out, "total_error_replies", total.total_error_replies);
    field!(out, "cross_shard_requests_sent", total.cross_shard_sent);
    field!(out, "cross_shard_requests_served", total.cross_shard_served);
}

fn replication_section(
    out: &mut String,
    shards: &[ShardSnapshot],
    server: &ServerState,
    config: &Config,
) {
    let replication = &server.replication;
    let (replid, replid2) = replication.replids();
    let now_ms = crate::server::state::unix_ms();
    out.push_str("# Replication\r\n");
    // Offsets are sums over the shards of their stream positions (one stream per shard).
    let offset: u64 = match replication.primary() {
        Some(primary) => {
            let link = &replication.link;
            let up = link.up.load(Ordering::Acquire);
            let processed = link.processed.load(Ordering::Acquire);
            field!(out, "role", "slave");
            field!(out, "master_host", primary.host);
            field!(out, "master_port", primary.port);
            field!(out, "master_link_status", if up { "up" } else { "down" });
            let last_io = link.last_io_ms.load(Ordering::Acquire);
            let ago = if last_io == 0 {
                -1
            } else {
                (now_ms - last_io).max(0) / 1000
            };
            field!(out, "master_last_io_seconds_ago", ago);
            field!(
                out,
                "master_sync_in_progress",
                i32::from(link.sync_in_progress.load(Ordering::Acquire))
            );
            field!(out, "slave_read_repl_offset", processed);
            field!(out, "slave_repl_offset", processed);
            field!(out, "replicas_repl_buffer_size", 0);
            field!(out, "replicas_repl_buffer_peak", 0);
            if !up {
                let since = link.down_since_ms.load(Ordering::Acquire);
                let down = if since == 0 {
                    -1
                } else {
                    (now_ms - since).max(0) / 1000
                };
                field!(out, "master_link_down_since_seconds", down);
            }
            field!(out, "slave_priority", 100);
            field!(out, "slave_read_only", i32::from(config.replica_read_only));
            field!(out, "replica_announced", 1);
            processed
        }
        None => {
            field!(out, "role", "master");
            shards.iter().map(|s| s.write_end).sum()
        }
    };
    let replicas = replication.replicas();
    field!(out, "connected_slaves", replicas.len());
    for (i, r) in replicas.iter().enumerate() {
        let state = match r.state() {
            crate::replication::state::ReplicaSyncState::SendBulk => "send_bulk",
            crate::replication::state::ReplicaSyncState::Online => "online",
        };
        let _ = write!(
            out,
            "slave{i}:ip={},port={},state={state},offset={},lag={},type=replica\r\n",
            r.ip,
            r.listening_port,
            r.acked_total(),
            r.lag_s()
        );
    }
    field!(out, "replicas_waiting_psync", 0);
    field!(out, "master_failover_state", "no-failover");
    field!(out, "master_replid", replid);
    field!(out, "master_replid2", replid2);
    field!(out, "master_repl_offset", offset);
    field!(out, "second_repl_offset", -1);
    let backlogs: Vec<_> = shards.iter().filter_map(|s| s.backlog).collect();
    let active = !backlogs.is_empty();
    field!(out, "repl_backlog_active", i32::from(active));
    field!(out, "repl_backlog_size", config.repl_backlog_size);
    let first: u64 = backlogs.iter().map(|b| b.0).sum();
    let held: usize = backlogs.iter().map(|b| b.2).sum();
    field!(
        out,
        "repl_backlog_first_byte_offset",
        if active { first + 1 } else { 0 }
    );
    field!(out, "repl_backlog_histlen", held);
}

fn cpu_section(out: &mut String) {
    let (user, sys) = process_cpu_seconds();
    let (child_user, child_sys) = rusage_seconds(libc::RUSAGE_CHILDREN);
    out.push_str("# CPU\r\n");
    field!(out, "used_cpu_sys", format!("{sys:.6}"));
    field!(out, "used_cpu_user", format!("{user:.6}"));
    field!(out, "used_cpu_sys_children", format!("{child_sys:.6}"));
    field!(out, "used_cpu_user_children", format!("{child_user:.6}"));
}

fn commandstats_section(out: &mut String, total: &ShardStats) {
    out.push_str("# Commandstats\r\n");
    let mut names: Vec<_> = total.commands.iter().collect();
    names.sort_by_key(|(n, _)| **n);
    for (name, s) in names {
        let per_call = if s.calls > 0 {
            s.usec as f64 / s.calls as f64
        } else {
            0.0
        };
        let _ = write!(
            out,
            "cmdstat_{name}:calls={},usec={},usec_per_call={per_call:.2},rejected_calls={},failed_calls={}\r\n",
            s.calls, s.usec, s.rejected_calls, s.failed_calls
        );
    }
}

fn errorstats_section(out: &mut String, total: &ShardStats) {
    out.push_str("# Errorstats\r\n");
    let mut codes: Vec<_> = total.errors_by_code.iter().collect();
    codes.sort();
    for (code, count) in codes {
        let _ = write!(out, "errorstat_{code}:count={count}\r\n");
    }
}

fn latencystats_section(out: &mut String, total: &ShardStats, config: &Config) {
    out.push_str("# Latencystats\r\n");
    let mut names: Vec<_> = total.latency.iter().collect();
    names.sort_by_key(|(n, _)| **n);
    for (name, histogram) in names {
        let _ = write!(out, "latency_percentiles_usec_{name}:");
        for (i, p) in config.latency_tracking_info_percentiles.iter().enumerate() {
            let usec = histogram.value_at_quantile(p / 100.0) as f64 / 1000.0;
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(
                out,
                "{sep}p{}={usec:.3}",
                crate::config::format_percentile(*p)
            );
        }
        out.push_str("\r\n");
    }
}

fn keyspace_section(out: &mut String, shards: &[ShardSnapshot]) {
    out.push_str("# Keyspace\r\n");
    let databases = shards.first().map_or(0, |s| s.dbs.len());
    for db in 0..databases {
        let (mut keys, mut expires, mut ttl_weighted) = (0usize, 0usize, 0i64);
        for s in shards {
            let (k, e, avg) = s.dbs[db];
            keys += k;
            expires += e;
            ttl_weighted = ttl_weighted.saturating_add(avg.saturating_mul(e as i64));
        }
        if keys > 0 {
            let avg_ttl = if expires > 0 {
                ttl_weighted / expires as i64
            } else {
                0
            };
            let _ = write!(
                out,
                "db{db}:keys={keys},expires={expires},avg_ttl={avg_ttl}\r\n"
            );
        }
    }
}

fn shards_section(out: &mut String, shards: &[ShardSnapshot]) {
    out.push_str("# Shards\r\n");
    for s in shards {
        let keys: usize = s.dbs.iter().map(|d| d.0).sum();
        let cpu = s.cpu;
        let _ = write!(
            out,
            "shard{}:cpu={cpu},keys={keys},clients={},commands={},ops_per_sec={},\
             cross_shard_sent={},cross_shard_served={},used_cpu_user={:.6},used_cpu_sys={:.6}\r\n",
            s.index,
            s.clients,
            s.stats.total_commands,
            s.stats.instantaneous_ops_per_sec(),
            s.stats.cross_shard_sent,
            s.stats.cross_shard_served,
            s.cpu_user_s,
            s.cpu_sys_s,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_selection() {
        assert_eq!(requested_sections(&[]), DEFAULT_SECTIONS.to_vec());
        assert_eq!(
            requested_sections(&["KEYSPACE".into(), "server".into()]),
            vec!["server", "keyspace"]
        );
        assert!(requested_sections(&["all".into()]).contains(&"commandstats"));
        assert!(requested_sections(&["nosuch".into()]).is_empty());
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(1813672), "1.73M");
        assert_eq!(human_bytes(25276502016), "23.54G");
    }
}
