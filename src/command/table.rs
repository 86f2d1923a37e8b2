//! The command registry: one entry per command and subcommand, joining what the command *is*
//! (its [`Meta`] in `catalog.rs`: name, arity, flags, key positions, documentation) with how it
//! runs (its [`Handler`], registered by its family module). Dispatch, key routing, COMMAND and
//! the arity and unknown-command errors all read this one table.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;

use super::KeyCtx;
use crate::error::CommandResult;
use crate::protocol::Args;
use crate::server::session::Session;

/// Command flags, with the names `COMMAND INFO` shows.
pub mod flags {
    pub const WRITE: u32 = 1 << 0;
    pub const READONLY: u32 = 1 << 1;
    pub const DENYOOM: u32 = 1 << 2;
    pub const ADMIN: u32 = 1 << 3;
    pub const PUBSUB: u32 = 1 << 4;
    pub const NOSCRIPT: u32 = 1 << 5;
    pub const BLOCKING: u32 = 1 << 6;
    pub const LOADING: u32 = 1 << 7;
    pub const STALE: u32 = 1 << 8;
    pub const SKIP_MONITOR: u32 = 1 << 9;
    pub const SKIP_SLOWLOG: u32 = 1 << 10;
    pub const ASKING: u32 = 1 << 11;
    pub const FAST: u32 = 1 << 12;
    pub const NO_AUTH: u32 = 1 << 13;
    pub const NO_MANDATORY_KEYS: u32 = 1 << 14;
    pub const NO_ASYNC_LOADING: u32 = 1 << 15;
    pub const NO_MULTI: u32 = 1 << 16;
    pub const MOVABLE_KEYS: u32 = 1 << 17;
    pub const ALLOW_BUSY: u32 = 1 << 18;
    /// Not shown by COMMAND (Valkey hides it too): the command may write even when not flagged
    /// `write` (for example through lazy expiry).
    pub const MAY_REPLICATE: u32 = 1 << 19;

    /// Flag names in the order Valkey prints them.
    pub const NAMES: &[(u32, &str)] = &[
        (WRITE, "write"),
        (READONLY, "readonly"),
        (DENYOOM, "denyoom"),
        (ADMIN, "admin"),
        (PUBSUB, "pubsub"),
        (NOSCRIPT, "noscript"),
        (BLOCKING, "blocking"),
        (LOADING, "loading"),
        (STALE, "stale"),
        (SKIP_MONITOR, "skip_monitor"),
        (SKIP_SLOWLOG, "skip_slowlog"),
        (ASKING, "asking"),
        (FAST, "fast"),
        (NO_AUTH, "no_auth"),
        (NO_MANDATORY_KEYS, "no_mandatory_keys"),
        (NO_ASYNC_LOADING, "no_async_loading"),
        (NO_MULTI, "no_multi"),
        (MOVABLE_KEYS, "movablekeys"),
        (ALLOW_BUSY, "allow_busy"),
    ];
}

/// Where a command's keys are: from argument `begin`, up to `last` (relative to `begin`; -1 the
/// last argument, -2 the one before …), every `step` arguments, as in Valkey's range key specs.
#[derive(Debug, Clone, Copy)]
pub struct KeySpec {
    /// `RO`, `RW`, `OW`, `RM`, `access`, `update`, `insert`, `delete` …
    pub flags: &'static [&'static str],
    pub begin: i32,
    pub last: i32,
    pub step: i32,
    pub limit: i32,
}

/// `COMMAND DOCS` information.
#[derive(Debug, Clone, Copy)]
pub struct Doc {
    pub summary: &'static str,
    pub since: &'static str,
    pub group: &'static str,
    pub complexity: &'static str,
}

/// What a command is, independent of how corekv runs it.
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    /// Lower case; subcommands as `container|sub`.
    pub name: &'static str,
    /// Valkey's arity: N exactly, or -N for at least N (the name counts).
    pub arity: i32,
    pub flags: u32,
    /// ACL categories without the `@`.
    pub acl: &'static [&'static str],
    pub tips: &'static [&'static str],
    pub key_specs: &'static [KeySpec],
    pub doc: Doc,
}

/// A command that runs on the shard owning its keys.
pub type KeyedFn = fn(&mut KeyCtx<'_>, &Args) -> CommandResult;
/// A command that runs on the connection and finishes at once.
pub type ConnFn = fn(&mut Session, &Args) -> CommandResult;
/// A command that runs on the connection and may talk to other shards.
pub type CoordFn = for<'a> fn(&'a mut Session, Args) -> CoordFuture<'a>;

/// What a coordinating handler returns.
pub type CoordFuture<'a> = Pin<Box<dyn Future<Output = CommandResult> + 'a>>;

/// How a keyed command's results combine when its keys span shards.
#[derive(Clone, Copy)]
pub enum Split {
    /// One key (or keys that must stay together): never split.
    Never,
    /// Run the command once per shard with that shard's keys and add up the integer replies
    /// (DEL, EXISTS, TOUCH, UNLINK).
    SumIntegers,
    /// Run once per shard and put the array elements back in key order (MGET).
    Interleave,
    /// Run once per shard with that shard's key/value pairs; all answer OK (MSET).
    AllOk,
    /// The command has its own cross-shard logic (MSETNX, RENAME, COPY …).
    Coordinated(CoordFn),
}

/// How corekv runs a command.
#[derive(Clone, Copy)]
pub enum Handler {
    Keyed(KeyedFn, Split),
    Conn(ConnFn),
    Coord(CoordFn),
    /// Dispatches on its subcommand (CLIENT, CONFIG, COMMAND, OBJECT).
    Container,
}

/// A command as the registry holds it.
pub struct Command {
    pub meta: &'static Meta,
    pub handler: Handler,
    /// For a container, its subcommands by lower-case name.
    pub subcommands: CommandMap,
}

/// Commands by lower-case name (looked up on every request: a fast hash).
pub type CommandMap = HashMap<String, Command, foldhash::fast::FixedState>;

impl Command {
    pub fn name(&self) -> &'static str {
        self.meta.name
    }

    pub fn has_flag(&self, flag: u32) -> bool {
        self.meta.flags & flag != 0
    }

    pub fn is_write(&self) -> bool {
        self.has_flag(flags::WRITE)
    }

    /// True if `argc` arguments (the name included) fit the arity.
    pub fn arity_ok(&self, argc: usize) -> bool {
        let arity = self.meta.arity;
        let argc = argc as i64;
        if arity >= 0 {
            argc == i64::from(arity)
        } else {
            argc >= -i64::from(arity)
        }
    }

    /// Indexes of the key arguments in `args`, per the key specs.
    pub fn key_positions(&self, args: &Args) -> Vec<usize> {
        let mut positions = Vec::new();
        for spec in self.meta.key_specs {
            let argc = args.len() as i64;
            let begin = i64::from(spec.begin);
            if begin >= argc {
                continue;
            }
            let last = if spec.last >= 0 {
                begin + i64::from(spec.last)
            } else {
                argc + i64::from(spec.last)
            };
            let step = i64::from(spec.step.max(1));
            let mut i = begin;
            while i <= last.min(argc - 1) {
                // In range: 0 <= i < argc.
                positions.push(i as usize);
                i += step;
            }
        }
        positions
    }

    /// The legacy (first key, last key, step) triple COMMAND INFO shows.
    pub fn legacy_key_range(&self) -> (i64, i64, i64) {
        let specs = self.meta.key_specs;
        let Some(first) = specs.iter().map(|s| s.begin).min() else {
            return (0, 0, 0);
        };
        let last = if let Some(open) = specs.iter().find(|s| s.last < 0) {
            i64::from(open.last)
        } else {
            specs
                .iter()
                .map(|s| i64::from(s.begin) + i64::from(s.last))
                .max()
                .unwrap_or(0)
        };
        let step = if specs.len() == 1 {
            i64::from(specs[0].step)
        } else {
            1
        };
        (i64::from(first), last, step)
    }
}

/// Every command corekv runs.
pub struct Registry {
    commands: CommandMap,
}

impl Registry {
    fn build() -> Registry {
        let mut handlers: HashMap<&'static str, Handler> = HashMap::new();
        for (name, handler) in super::all_handlers() {
            handlers.insert(name, handler);
        }
        let mut commands = CommandMap::default();
        let mut subs: Vec<(&'static str, Command)> = Vec::new();
        for meta in super::catalog::CATALOG {
            let Some(&handler) = handlers.get(meta.name) else {
                continue;
            };
            let command = Command {
                meta,
                handler,
                subcommands: CommandMap::default(),
            };
            match meta.name.split_once('|') {
                Some((parent, _)) => subs.push((parent, command)),
                None => {
                    commands.insert(meta.name.to_string(), command);
                }
            }
        }
        for (parent, command) in subs {
            if let Some(container) = commands.get_mut(parent) {
                let sub = command.meta.name.split_once('|').map_or("", |(_, s)| s);
                container.subcommands.insert(sub.to_string(), command);
            }
        }
        Registry { commands }
    }

    /// The process-wide registry.
    pub fn get() -> &'static Registry {
        static REGISTRY: OnceLock<Registry> = OnceLock::new();
        REGISTRY.get_or_init(Registry::build)
    }

    /// The top-level command named `name`, ignoring case.
    pub fn lookup(&self, name: &[u8]) -> Option<&Command> {
        if name.len() > 64 {
            return None;
        }
        let mut lower = [0u8; 64];
        let lower = &mut lower[..name.len()];
        lower.copy_from_slice(name);
        lower.make_ascii_lowercase();
        std::str::from_utf8(lower)
            .ok()
            .and_then(|n| self.commands.get(n))
    }

    /// The command `args` names, resolving a container's subcommand: `Err` carries the error a
    /// client gets for an unknown command or subcommand, or a wrong argument count.
    pub fn resolve(&self, args: &Args) -> Result<&Command, LookupError<'_>> {
        let Some(top) = self.lookup(args.get(0)) else {
            return Err(LookupError::Unknown);
        };
        if top.subcommands.is_empty() {
            return Ok(top);
        }
        if args.len() < 2 {
            // COMMAND alone lists everything; CLIENT alone is an arity error.
            return match top.handler {
                Handler::Container => Err(LookupError::Arity(top)),
                _ => Ok(top),
            };
        }
        let sub = String::from_utf8_lossy(args.get(1)).to_ascii_lowercase();
        match top.subcommands.get(&sub) {
            Some(cmd) => Ok(cmd),
            None => Err(LookupError::UnknownSubcommand(top)),
        }
    }

    /// The command named by a full name (`get`, `client|list`).
    pub fn by_full_name(&self, full: &str) -> Option<&Command> {
        let full = full.to_ascii_lowercase();
        match full.split_once('|') {
            Some((parent, sub)) => self.commands.get(parent)?.subcommands.get(sub),
            None => self.commands.get(&full),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Command> {
        self.commands.values()
    }

    pub fn len(&self) -> usize {
        self.commands.len()
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }
}

/// Why a name did not resolve to a command.
pub enum LookupError<'a> {
    Unknown,
    UnknownSubcommand(&'a Command),
    Arity(&'a Command),
}
