//! Server configuration: every directive in one table (name, default, parser, whether
//! `CONFIG SET` may change it), read from a Valkey-style config file and `--name value` flags,
//! and shared with the shards.
//!
//! Flags are appended after the file, so they win. Errors name the directive and where it came
//! from, and stop the start.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::storage::FsyncMode;

/// `enable-debug-command`: who may run DEBUG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DebugAccess {
    No,
    Yes,
    Local,
}

/// `loglevel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Debug,
    Verbose,
    Notice,
    Warning,
    Nothing,
}

/// The configuration of a running server.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub port: u16,
    pub bind: Vec<String>,
    pub dir: PathBuf,
    pub databases: usize,
    pub requirepass: String,
    pub protected_mode: bool,
    pub maxclients: u64,
    pub proto_max_bulk_len: i64,
    pub client_query_buffer_limit: u64,
    pub loglevel: LogLevel,
    pub logfile: String,
    /// 0: one shard per CPU the process may run on.
    pub shards: usize,
    pub enable_debug_command: DebugAccess,
    /// Idle seconds before a client is closed; 0 never.
    pub timeout_s: u64,
    pub tcp_keepalive_s: u64,
    pub hz: u64,
    pub appendonly: bool,
    pub appendfsync: FsyncMode,
    pub appenddirname: String,
    pub aof_load_truncated: bool,
    pub auto_aof_rewrite_percentage: u64,
    pub auto_aof_rewrite_min_size: u64,
    /// The primary to follow at start (`replicaof host port`).
    pub replicaof: Option<(String, u16)>,
    /// Password sent to the primary (AUTH) before syncing.
    pub masterauth: String,
    /// A replica refuses writes from clients.
    pub replica_read_only: bool,
    /// Bytes of recent writes kept for replicas that reconnect (shared by the shards).
    pub repl_backlog_size: u64,
    /// Seconds without a sign of life before a replication link is dropped.
    pub repl_timeout_s: u64,
    /// Seconds between the pings a primary sends its replicas.
    pub repl_ping_replica_period_s: u64,
    /// Keep a latency histogram per command (INFO latencystats, LATENCY HISTOGRAM).
    pub latency_tracking: bool,
    /// The percentiles INFO latencystats prints.
    pub latency_tracking_info_percentiles: Vec<f64>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            port: 6379,
            bind: vec!["127.0.0.1".to_string()],
            dir: PathBuf::from("."),
            databases: 16,
            requirepass: String::new(),
            protected_mode: true,
            maxclients: 10_000,
            proto_max_bulk_len: 512 * 1024 * 1024,
            client_query_buffer_limit: 1024 * 1024 * 1024,
            loglevel: LogLevel::Notice,
            logfile: String::new(),
            shards: 0,
            enable_debug_command: DebugAccess::No,
            timeout_s: 0,
            tcp_keepalive_s: 300,
            hz: 10,
            appendonly: false,
            appendfsync: FsyncMode::Everysec,
            appenddirname: "appendonlydir".to_string(),
            aof_load_truncated: true,
            auto_aof_rewrite_percentage: 100,
            auto_aof_rewrite_min_size: 64 * 1024 * 1024,
            replicaof: None,
            masterauth: String::new(),
            replica_read_only: true,
            repl_backlog_size: 10 * 1024 * 1024,
            repl_timeout_s: 60,
            repl_ping_replica_period_s: 10,
            latency_tracking: true,
            latency_tracking_info_percentiles: vec![50.0, 99.0, 99.9],
        }
    }
}

impl Config {
    /// The directory of the append-only log.
    pub fn aof_dir(&self) -> PathBuf {
        self.dir.join(&self.appenddirname)
    }
}

type Getter = fn(&Config) -> String;
type Setter = fn(&mut Config, &[String]) -> Result<(), String>;

/// One configuration directive.
pub struct Directive {
    pub name: &'static str,
    /// `CONFIG SET` may change it while the server runs.
    pub mutable: bool,
    /// Takes a list of values (`bind`) instead of exactly one.
    pub multi_arg: bool,
    pub help: &'static str,
    get: Getter,
    set: Setter,
}

/// Every directive corekv understands.
pub static DIRECTIVES: &[Directive] = &[
    Directive {
        name: "port",
        mutable: false,
        multi_arg: false,
        help: "TCP port to listen on (default 6379)",
        get: |c| c.port.to_string(),
        set: |c, v| {
            c.port = u16::try_from(int_in_range(&v[0], 0, 65535)?).map_err(|e| e.to_string())?;
            Ok(())
        },
    },
    Directive {
        name: "bind",
        mutable: false,
        multi_arg: true,
        help: "addresses to listen on; '-' before one makes it optional (default 127.0.0.1)",
        get: |c| c.bind.join(" "),
        set: |c, v| {
            for addr in v {
                parse_bind_address(addr)?;
            }
            c.bind = v.to_vec();
            Ok(())
        },
    },
    Directive {
        name: "dir",
        mutable: false,
        multi_arg: false,
        help: "data directory (default: the working directory)",
        get: |c| absolute(&c.dir).display().to_string(),
        set: |c, v| {
            if v[0].is_empty() {
                return Err("dir can't be empty".to_string());
            }
            c.dir = PathBuf::from(&v[0]);
            Ok(())
        },
    },
    Directive {
        name: "databases",
        mutable: false,
        multi_arg: false,
        help: "number of logical databases (default 16)",
        get: |c| c.databases.to_string(),
        set: |c, v| {
            c.databases = usize::try_from(int_in_range(&v[0], 1, i64::from(i32::MAX))?)
                .map_err(|e| e.to_string())?;
            Ok(())
        },
    },
    Directive {
        name: "requirepass",
        mutable: true,
        multi_arg: false,
        help: "password clients must AUTH with (default: none)",
        get: |c| c.requirepass.clone(),
        set: |c, v| {
            c.requirepass = v[0].clone();
            Ok(())
        },
    },
    Directive {
        name: "protected-mode",
        mutable: true,
        multi_arg: false,
        help: "refuse non-loopback clients while no password is set (default yes)",
        get: |c| yes_no(c.protected_mode),
        set: |c, v| {
            c.protected_mode = parse_bool(&v[0])?;
            Ok(())
        },
    },
    Directive {
        name: "maxclients",
        mutable: true,
        multi_arg: false,
        help: "most clients connected at once (default 10000)",
        get: |c| c.maxclients.to_string(),
        set: |c, v| {
            c.maxclients = int_in_range(&v[0], 1, i64::from(u32::MAX))?.unsigned_abs();
            Ok(())
        },
    },
    Directive {
        name: "proto-max-bulk-len",
        mutable: true,
        multi_arg: false,
        help: "largest bulk string a request may carry (default 512mb)",
        get: |c| c.proto_max_bulk_len.to_string(),
        set: |c, v| {
            c.proto_max_bulk_len = memory_in_range(&v[0], 1024 * 1024, i64::MAX)?;
            Ok(())
        },
    },
    Directive {
        name: "client-query-buffer-limit",
        mutable: true,
        multi_arg: false,
        help: "largest unparsed input a client may have buffered (default 1gb)",
        get: |c| c.client_query_buffer_limit.to_string(),
        set: |c, v| {
            c.client_query_buffer_limit =
                memory_in_range(&v[0], 1024 * 1024, i64::MAX)?.unsigned_abs();
            Ok(())
        },
    },
    Directive {
        name: "loglevel",
        mutable: true,
        multi_arg: false,
        help: "debug, verbose, notice, warning or nothing (default notice)",
        get: |c| {
            match c.loglevel {
                LogLevel::Debug => "debug",
                LogLevel::Verbose => "verbose",
                LogLevel::Notice => "notice",
                LogLevel::Warning => "warning",
                LogLevel::Nothing => "nothing",
            }
            .to_string()
        },
        set: |c, v| {
            c.loglevel = match one_of(&v[0], &["debug", "verbose", "notice", "warning", "nothing"])?
            {
                0 => LogLevel::Debug,
                1 => LogLevel::Verbose,
                2 => LogLevel::Notice,
                3 => LogLevel::Warning,
                _ => LogLevel::Nothing,
            };
            Ok(())
        },
    },
    Directive {
        name: "logfile",
        mutable: false,
        multi_arg: false,
        help: "log file; empty logs to standard output (default empty)",
        get: |c| c.logfile.clone(),
        set: |c, v| {
            c.logfile = v[0].clone();
            Ok(())
        },
    },
    Directive {
        name: "appendonly",
        mutable: true,
        multi_arg: false,
        help: "keep an append-only log of every write (default no)",
        get: |c| yes_no(c.appendonly),
        set: |c, v| {
            c.appendonly = parse_bool(&v[0])?;
            Ok(())
        },
    },
    Directive {
        name: "appendfsync",
        mutable: true,
        multi_arg: false,
        help:
            "when the log is fsynced: always (before replying), everysec or no (default everysec)",
        get: |c| {
            match c.appendfsync {
                FsyncMode::Always => "always",
                FsyncMode::Everysec => "everysec",
                FsyncMode::No => "no",
            }
            .to_string()
        },
        set: |c, v| {
            c.appendfsync = match one_of(&v[0], &["everysec", "always", "no"])? {
                0 => FsyncMode::Everysec,
                1 => FsyncMode::Always,
                _ => FsyncMode::No,
            };
            Ok(())
        },
    },
    Directive {
        name: "appenddirname",
        mutable: false,
        multi_arg: false,
        help: "directory of the log inside dir (default appendonlydir)",
        get: |c| c.appenddirname.clone(),
        set: |c, v| {
            let name = &v[0];
            if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                return Err("appenddirname can't be a path, just a name".to_string());
            }
            c.appenddirname = name.clone();
            Ok(())
        },
    },
    Directive {
        name: "aof-load-truncated",
        mutable: true,
        multi_arg: false,
        help: "start even when the log ends with a torn record, cutting it off (default yes)",
        get: |c| yes_no(c.aof_load_truncated),
        set: |c, v| {
            c.aof_load_truncated = parse_bool(&v[0])?;
            Ok(())
        },
    },
    Directive {
        name: "auto-aof-rewrite-percentage",
        mutable: true,
        multi_arg: false,
        help: "rewrite a shard's log once it grew this much (percent) since its last rewrite; \
               0 never (default 100)",
        get: |c| c.auto_aof_rewrite_percentage.to_string(),
        set: |c, v| {
            c.auto_aof_rewrite_percentage =
                int_in_range(&v[0], 0, i64::from(i32::MAX))?.unsigned_abs();
            Ok(())
        },
    },
    Directive {
        name: "auto-aof-rewrite-min-size",
        mutable: true,
        multi_arg: false,
        help: "no automatic rewrite of a shard's log smaller than this (default 64mb)",
        get: |c| c.auto_aof_rewrite_min_size.to_string(),
        set: |c, v| {
            c.auto_aof_rewrite_min_size = memory_in_range(&v[0], 0, i64::MAX)?.unsigned_abs();
            Ok(())
        },
    },
    Directive {
        name: "save",
        mutable: true,
        multi_arg: true,
        help: "RDB snapshot schedule; corekv takes no RDB snapshots, so only \"\" is accepted",
        get: |_| String::new(),
        set: |_, v| {
            if v.iter().all(String::is_empty) {
                Ok(())
            } else {
                Err("corekv takes no RDB snapshots: only \"\" (disabled) is accepted".to_string())
            }
        },
    },
    Directive {
        name: "shards",
        mutable: false,
        multi_arg: false,
        help: "shards (pinned threads); 0 = one per CPU the process may use (default 0)",
        get: |c| c.shards.to_string(),
        set: |c, v| {
            c.shards = usize::try_from(int_in_range(&v[0], 0, 1024)?).map_err(|e| e.to_string())?;
            Ok(())
        },
    },
    Directive {
        name: "enable-debug-command",
        mutable: false,
        multi_arg: false,
        help: "allow DEBUG: no, yes or local (loopback clients only) (default no)",
        get: |c| {
            match c.enable_debug_command {
                DebugAccess::No => "no",
                DebugAccess::Yes => "yes",
                DebugAccess::Local => "local",
            }
            .to_string()
        },
        set: |c, v| {
            c.enable_debug_command = match one_of(&v[0], &["no", "yes", "local"])? {
                0 => DebugAccess::No,
                1 => DebugAccess::Yes,
                _ => DebugAccess::Local,
            };
            Ok(())
        },
    },
    Directive {
        name: "timeout",
        mutable: true,
        multi_arg: false,
        help: "close clients idle this many seconds; 0 never (default 0)",
        get: |c| c.timeout_s.to_string(),
        set: |c, v| {
            c.timeout_s = int_in_range(&v[0], 0, i64::from(i32::MAX))?.unsigned_abs();
            Ok(())
        },
    },
    Directive {
        name: "tcp-keepalive",
        mutable: true,
        multi_arg: false,
        help: "TCP keepalive interval in seconds for new clients; 0 off (default 300)",
        get: |c| c.tcp_keepalive_s.to_string(),
        set: |c, v| {
            c.tcp_keepalive_s = int_in_range(&v[0], 0, i64::from(i32::MAX))?.unsigned_abs();
            Ok(())
        },
    },
    Directive {
        name: "hz",
        mutable: true,
        multi_arg: false,
        help: "background task frequency per second: expiry, client timeouts (default 10)",
        get: |c| c.hz.to_string(),
        set: |c, v| {
            // Valkey clamps rather than refuses.
            c.hz = int_in_range(&v[0], 0, i64::from(i32::MAX))?
                .clamp(1, 500)
                .unsigned_abs();
            Ok(())
        },
    },
    Directive {
        name: "replicaof",
        mutable: false,
        multi_arg: true,
        help: "follow the primary at <host> <port> (default: none, a primary)",
        get: |c| {
            c.replicaof
                .as_ref()
                .map(|(h, p)| format!("{h} {p}"))
                .unwrap_or_default()
        },
        set: |c, v| {
            c.replicaof = match v {
                [none] if none.is_empty() => None,
                [no, one] if no.eq_ignore_ascii_case("no") && one.eq_ignore_ascii_case("one") => {
                    None
                }
                [host, port] => {
                    let port =
                        u16::try_from(int_in_range(port, 0, 65535)?).map_err(|e| e.to_string())?;
                    Some((host.clone(), port))
                }
                _ => return Err("wrong number of arguments".to_string()),
            };
            Ok(())
        },
    },
    Directive {
        name: "masterauth",
        mutable: true,
        multi_arg: false,
        help: "password a replica sends its primary (default: none)",
        get: |c| c.masterauth.clone(),
        set: |c, v| {
            c.masterauth = v[0].clone();
            Ok(())
        },
    },
    Directive {
        name: "replica-read-only",
        mutable: true,
        multi_arg: false,
        help: "a replica refuses writes from clients (default yes)",
        get: |c| yes_no(c.replica_read_only),
        set: |c, v| {
            c.replica_read_only = parse_bool(&v[0])?;
            Ok(())
        },
    },
    Directive {
        name: "repl-backlog-size",
        mutable: true,
        multi_arg: false,
        help: "recent writes kept for a replica that reconnects, shared by the shards \
               (default 10mb)",
        get: |c| c.repl_backlog_size.to_string(),
        set: |c, v| {
            c.repl_backlog_size = memory_in_range(&v[0], 1, i64::MAX)?.unsigned_abs();
            Ok(())
        },
    },
    Directive {
        name: "repl-timeout",
        mutable: true,
        multi_arg: false,
        help: "seconds without a sign of life before a replication link is dropped (default 60)",
        get: |c| c.repl_timeout_s.to_string(),
        set: |c, v| {
            c.repl_timeout_s = int_in_range(&v[0], 1, i64::from(i32::MAX))?.unsigned_abs();
            Ok(())
        },
    },
    Directive {
        name: "repl-ping-replica-period",
        mutable: true,
        multi_arg: false,
        help: "seconds between the pings a primary sends its replicas (default 10)",
        get: |c| c.repl_ping_replica_period_s.to_string(),
        set: |c, v| {
            c.repl_ping_replica_period_s =
                int_in_range(&v[0], 1, i64::from(i32::MAX))?.unsigned_abs();
            Ok(())
        },
    },
    Directive {
        name: "latency-tracking",
        mutable: true,
        multi_arg: false,
        help: "keep a latency histogram per command (default yes)",
        get: |c| yes_no(c.latency_tracking),
        set: |c, v| {
            c.latency_tracking = parse_bool(&v[0])?;
            Ok(())
        },
    },
    Directive {
        name: "latency-tracking-info-percentiles",
        mutable: true,
        multi_arg: true,
        help: "percentiles INFO latencystats prints (default 50 99 99.9)",
        get: |c| {
            c.latency_tracking_info_percentiles
                .iter()
                .map(|p| format_percentile(*p))
                .collect::<Vec<_>>()
                .join(" ")
        },
        set: |c, v| {
            let mut percentiles = Vec::with_capacity(v.len());
            for word in v.iter().filter(|w| !w.is_empty()) {
                let p: f64 = word
                    .parse()
                    .map_err(|_| "Invalid latency-tracking-info-percentiles parameters")?;
                if !(0.0..=100.0).contains(&p) {
                    return Err(
                        "latency-tracking-info-percentiles parameters should sit between \
                                [0.0,100.0]"
                            .to_string(),
                    );
                }
                percentiles.push(p);
            }
            c.latency_tracking_info_percentiles = percentiles;
            Ok(())
        },
    },
];

/// A percentile as Valkey prints it: `50`, `99.9`.
pub fn format_percentile(p: f64) -> String {
    let text = format!("{p:.6}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Old names Valkey still accepts for some directives.
const ALIASES: &[(&str, &str)] = &[
    ("slaveof", "replicaof"),
    ("slave-read-only", "replica-read-only"),
    ("repl-ping-slave-period", "repl-ping-replica-period"),
];

/// Finds a directive by name (or old alias), ignoring case.
pub fn directive(name: &str) -> Option<&'static Directive> {
    let name = ALIASES
        .iter()
        .find(|(alias, _)| alias.eq_ignore_ascii_case(name))
        .map_or(name, |(_, current)| current);
    DIRECTIVES
        .iter()
        .find(|d| d.name.eq_ignore_ascii_case(name))
}

impl Directive {
    /// The current value as `CONFIG GET` shows it.
    pub fn value(&self, config: &Config) -> String {
        (self.get)(config)
    }

    /// Checks and applies `values`; the error is Valkey's text after the directive name.
    pub fn apply(&self, config: &mut Config, values: &[String]) -> Result<(), String> {
        if values.is_empty() || (!self.multi_arg && values.len() != 1) {
            return Err("wrong number of arguments".to_string());
        }
        (self.set)(config, values)
    }
}

fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.to_string()
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "yes" => Ok(true),
        "no" => Ok(false),
        _ => Err("argument must be 'yes' or 'no'".to_string()),
    }
}

fn one_of(value: &str, choices: &[&str]) -> Result<usize, String> {
    choices
        .iter()
        .position(|c| c.eq_ignore_ascii_case(value))
        .ok_or_else(|| {
            format!(
                "argument(s) must be one of the following: {}",
                choices.join(", ")
            )
        })
}

fn int_in_range(value: &str, min: i64, max: i64) -> Result<i64, String> {
    let n: i64 = value
        .parse()
        .map_err(|_| "argument couldn't be parsed into an integer".to_string())?;
    if n < min || n > max {
        return Err(format!(
            "argument must be between {min} and {max} inclusive"
        ));
    }
    Ok(n)
}

fn memory_in_range(value: &str, min: i64, max: i64) -> Result<i64, String> {
    // Valkey reads memory values as unsigned: a negative one is not a memory value at all.
    let n = parse_memory(value)
        .filter(|&n| n >= 0)
        .ok_or_else(|| "argument must be a memory value".to_string())?;
    if n < min || n > max {
        return Err(format!(
            "argument must be between {min} and {max} inclusive"
        ));
    }
    Ok(n)
}

/// Parses `100`, `1k` (1000), `1kb` (1024), `5mb`, `1gb` … as Valkey's `memtoull` does.
pub fn parse_memory(value: &str) -> Option<i64> {
    let lower = value.to_ascii_lowercase();
    let split = lower
        .find(|c: char| !c.is_ascii_digit() && c != '-')
        .unwrap_or(lower.len());
    let (digits, unit) = lower.split_at(split);
    let multiplier: i64 = match unit {
        "" | "b" => 1,
        "k" => 1000,
        "kb" => 1024,
        "m" => 1000 * 1000,
        "mb" => 1024 * 1024,
        "g" => 1000 * 1000 * 1000,
        "gb" => 1024 * 1024 * 1024,
        _ => return None,
    };
    let n: i64 = digits.parse().ok()?;
    n.checked_mul(multiplier)
}

/// An address from `bind`: `*` is every IPv4 address, `::*` every IPv6 one, a leading `-`
/// marks the address optional. Returns the address and whether it is optional.
pub fn parse_bind_address(text: &str) -> Result<(std::net::IpAddr, bool), String> {
    let (optional, addr) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let ip = match addr {
        "*" => std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        "::*" => std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        other => other
            .parse()
            .map_err(|_| format!("'{text}' is not an IP address"))?,
    };
    Ok((ip, optional))
}

fn absolute(path: &std::path::Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Where a directive came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File { line: usize },
    Flag,
}

/// A directive that stopped the start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub origin: Origin,
    /// The directive as written.
    pub text: String,
    pub reason: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "*** FATAL CONFIG FILE ERROR (corekv {}) ***",
            env!("CARGO_PKG_VERSION")
        )?;
        match self.origin {
            Origin::File { line } => writeln!(f, "Reading the configuration file, at line {line}")?,
            Origin::Flag => writeln!(f, "Reading the command line arguments")?,
        }
        writeln!(f, ">>> '{}'", self.text)?;
        write!(f, "{}", self.reason)
    }
}

/// Applies config-file text (`directive arg …` lines, `#` comments, Valkey quoting).
pub fn apply_file_text(config: &mut Config, text: &str) -> Result<(), ConfigError> {
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let origin = Origin::File { line: index + 1 };
        let fail = |reason: String| ConfigError {
            origin: origin.clone(),
            text: trimmed.to_string(),
            reason,
        };
        let words = crate::protocol::parser::split_args(trimmed.as_bytes())
            .ok_or_else(|| fail("Unbalanced quotes in configuration line".to_string()))?;
        let words: Vec<String> = words
            .into_iter()
            .map(|w| String::from_utf8_lossy(&w).into_owned())
            .collect();
        apply_words(config, &words).map_err(fail)?;
    }
    Ok(())
}

fn apply_words(config: &mut Config, words: &[String]) -> Result<(), String> {
    let (name, values) = words.split_first().ok_or("empty directive")?;
    let directive = directive(name).ok_or("Bad directive or wrong number of arguments")?;
    if values.is_empty() || (!directive.multi_arg && values.len() != 1) {
        return Err("Bad directive or wrong number of arguments".to_string());
    }
    directive.apply(config, values)
}

/// What the command line asked for.
#[derive(Debug)]
pub enum Invocation {
    Run(Box<Config>),
    Help,
    Version,
}

/// Reads `[configfile] [--directive value …]` as Valkey does.
pub fn from_args(args: &[String]) -> Result<Invocation, ConfigError> {
    if let Some(first) = args.first() {
        match first.as_str() {
            "-h" | "--help" => return Ok(Invocation::Help),
            "-v" | "--version" => return Ok(Invocation::Version),
            _ => {}
        }
    }
    let mut config = Config::default();
    let mut rest = args;
    if let Some(path) = args.first().filter(|a| !a.starts_with('-')) {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            origin: Origin::Flag,
            text: path.clone(),
            reason: format!("Fatal error, can't open config file '{path}': {e}"),
        })?;
        apply_file_text(&mut config, &text)?;
        rest = &args[1..];
    }
    for group in flag_groups(rest)? {
        let text = format!("--{}", group.join(" "));
        apply_words(&mut config, &group).map_err(|reason| ConfigError {
            origin: Origin::Flag,
            text,
            reason,
        })?;
    }
    Ok(Invocation::Run(Box::new(config)))
}

/// Groups `--name v1 v2 --other v3` into `[[name, v1, v2], [other, v3]]`.
fn flag_groups(args: &[String]) -> Result<Vec<Vec<String>>, ConfigError> {
    let mut groups: Vec<Vec<String>> = Vec::new();
    for arg in args {
        if let Some(name) = arg.strip_prefix("--") {
            groups.push(vec![name.to_string()]);
        } else if let Some(group) = groups.last_mut() {
            group.push(arg.clone());
        } else {
            return Err(ConfigError {
                origin: Origin::Flag,
                text: arg.clone(),
                reason: "Bad directive or wrong number of arguments".to_string(),
            });
        }
    }
    Ok(groups)
}

/// The `--help` text: usage and every directive.
pub fn help_text() -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Usage: corekv-server [/path/to/corekv.conf] [--directive value ...]"
    );
    let _ = writeln!(out, "       corekv-server -v | --version");
    let _ = writeln!(out, "       corekv-server -h | --help");
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Directives (in the config file as `name value`, on the command line as `--name value`;"
    );
    let _ = writeln!(out, "flags are applied after the file and win):");
    for d in DIRECTIVES {
        let runtime = if d.mutable { "" } else { " [start-up only]" };
        let _ = writeln!(out, "  {:<28}{}{}", d.name, d.help, runtime);
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "Examples:");
    let _ = writeln!(
        out,
        "  corekv-server --port 7000 --shards 2 --dir /var/lib/corekv"
    );
    let _ = writeln!(out, "  corekv-server corekv.conf --port 7001");
    out
}

/// The configuration shared by all shards. `CONFIG SET` replaces it; shards notice through a
/// version number and refresh their own copy, so reading it never contends across cores.
#[derive(Debug)]
pub struct LiveConfig {
    version: AtomicU64,
    current: RwLock<Arc<Config>>,
}

impl LiveConfig {
    pub fn new(config: Config) -> Self {
        LiveConfig {
            version: AtomicU64::new(1),
            current: RwLock::new(Arc::new(config)),
        }
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    pub fn get(&self) -> Arc<Config> {
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Applies `pairs` all or nothing. The error is the full `CONFIG SET` error text.
    pub fn set(&self, pairs: &[(String, String)]) -> Result<(), String> {
        let mut guard = match self.current.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut next = Config::clone(&guard);
        let mut seen: Vec<&'static str> = Vec::new();
        for (name, value) in pairs {
            let Some(d) = directive(name) else {
                return Err(format!(
                    "ERR Unknown option or number of arguments for CONFIG SET - '{name}'"
                ));
            };
            let fail = |why: &str| {
                format!("ERR CONFIG SET failed (possibly related to argument '{name}') - {why}")
            };
            if seen.contains(&d.name) {
                return Err(fail("duplicate parameter"));
            }
            seen.push(d.name);
            if !d.mutable {
                return Err(fail("can't set immutable config"));
            }
            let mut values: Vec<String> = if d.multi_arg {
                value.split_whitespace().map(str::to_string).collect()
            } else {
                vec![value.clone()]
            };
            if values.is_empty() {
                values.push(String::new());
            }
            d.apply(&mut next, &values).map_err(|e| fail(&e))?;
        }
        *guard = Arc::new(next);
        self.version.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn run(list: &[&str]) -> Result<Config, ConfigError> {
        match from_args(&args(list))? {
            Invocation::Run(c) => Ok(*c),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn flags_override_file_and_are_grouped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("corekv.conf");
        std::fs::write(
            &path,
            "# comment\nport 7000\nbind 127.0.0.1 -::1\nrequirepass \"a b\"\n",
        )
        .expect("write");
        let path = path.display().to_string();
        let c = run(&[&path, "--port", "7001", "--shards", "2"]).expect("valid");
        assert_eq!(c.port, 7001);
        assert_eq!(c.shards, 2);
        assert_eq!(c.bind, vec!["127.0.0.1", "-::1"]);
        assert_eq!(c.requirepass, "a b");
    }

    #[test]
    fn errors_name_the_directive_and_line() {
        let mut c = Config::default();
        let err = apply_file_text(&mut c, "port 7000\n\nport abc\n").expect_err("bad port");
        assert_eq!(err.origin, Origin::File { line: 3 });
        assert_eq!(err.text, "port abc");
        assert_eq!(err.reason, "argument couldn't be parsed into an integer");
        let err = apply_file_text(&mut c, "daemonize yes").expect_err("unknown");
        assert_eq!(err.reason, "Bad directive or wrong number of arguments");
        let err = run(&["--port", "99999"]).expect_err("range");
        assert_eq!(err.text, "--port 99999");
        assert_eq!(err.reason, "argument must be between 0 and 65535 inclusive");
        assert!(run(&["--nosuch", "1"]).is_err());
        assert!(run(&["--protected-mode", "maybe"]).is_err());
    }

    #[test]
    fn memory_values() {
        assert_eq!(parse_memory("1gb"), Some(1 << 30));
        assert_eq!(parse_memory("1k"), Some(1000));
        assert_eq!(parse_memory("2MB"), Some(2 << 20));
        assert_eq!(parse_memory("12"), Some(12));
        assert_eq!(parse_memory("1tb"), None);
    }

    #[test]
    fn config_set_is_atomic_and_checks_mutability() {
        let live = LiveConfig::new(Config::default());
        let err = live
            .set(&[
                ("maxclients".into(), "5".into()),
                ("protected-mode".into(), "maybe".into()),
            ])
            .expect_err("bad bool");
        assert!(err.ends_with("argument must be 'yes' or 'no'"), "{err}");
        assert_eq!(live.get().maxclients, 10_000);
        let err = live
            .set(&[("port".into(), "1".into())])
            .expect_err("immutable");
        assert!(err.ends_with("can't set immutable config"));
        let err = live
            .set(&[
                ("timeout".into(), "1".into()),
                ("TIMEOUT".into(), "2".into()),
            ])
            .expect_err("duplicate");
        assert!(err.ends_with("duplicate parameter"));
        let before = live.version();
        live.set(&[("maxclients".into(), "5".into())])
            .expect("valid");
        assert_eq!(live.get().maxclients, 5);
        assert!(live.version() > before);
    }
}
