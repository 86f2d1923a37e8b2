//! Commands: the registry (`table`), what each command is (`catalog`), and one module per
//! family with the handlers. A handler parses its arguments into a typed request, applies it,
//! and writes its reply; it never touches the network.

pub mod catalog;
pub mod connection;
pub mod cross_shard;
pub mod decimal;
pub mod keys;
pub mod latency;
pub mod replication;
pub mod server;
pub mod string;
pub mod table;
pub mod transaction;

mod args;

pub use args::*;

use crate::config::Config;
use crate::protocol::{Args, ReplyBuf};
use crate::shard::db::Db;
use table::Handler;

/// What a keyed command runs against: the databases of the shard that owns its keys.
pub struct KeyCtx<'a> {
    pub dbs: &'a mut [Db],
    /// The connection's selected database.
    pub db: usize,
    /// The time the command runs at (Unix milliseconds), fixed for the whole command.
    pub now_ms: i64,
    pub out: &'a mut ReplyBuf,
    pub config: &'a Config,
    /// Replaying the log: expiry times are applied as logged, never acted on.
    pub loading: bool,
    /// What the log should record for this command if it changed data.
    pub log: LogAs,
}

/// What the append-only log records for a command that changed data.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub enum LogAs {
    /// The command as the client sent it (deterministic as is).
    #[default]
    Original,
    /// These commands instead: absolute expiry times, effects instead of conditions.
    Commands(Vec<Args>),
}

impl KeyCtx<'_> {
    /// The selected database.
    pub fn db(&mut self) -> &mut Db {
        &mut self.dbs[self.db]
    }

    /// True if an absolute expiry time has passed (never while replaying the log: the logged
    /// command ran when it had not).
    pub fn is_past(&self, at_ms: i64) -> bool {
        !self.loading && at_ms <= self.now_ms
    }

    /// Logs `commands` instead of the command as sent.
    pub fn log_as(&mut self, commands: Vec<Args>) {
        self.log = LogAs::Commands(commands);
    }
}

/// Every handler, by full command name.
pub fn all_handlers() -> impl Iterator<Item = (&'static str, Handler)> {
    connection::HANDLERS
        .iter()
        .chain(server::HANDLERS)
        .chain(string::HANDLERS)
        .chain(keys::HANDLERS)
        .chain(transaction::HANDLERS)
        .chain(replication::HANDLERS)
        .chain(latency::HANDLERS)
        .copied()
}

#[cfg(test)]
mod tests {
    use super::table::Registry;
    use super::*;

    #[test]
    fn every_catalog_entry_has_a_handler_and_back() {
        let handlers: Vec<&str> = all_handlers().map(|(n, _)| n).collect();
        for meta in catalog::CATALOG {
            assert!(
                handlers.contains(&meta.name),
                "no handler for {}",
                meta.name
            );
        }
        for name in &handlers {
            assert!(
                catalog::CATALOG.iter().any(|m| m.name == *name),
                "no catalog entry for {name}"
            );
        }
        assert!(Registry::get().lookup(b"GET").is_some());
        assert!(Registry::get().by_full_name("client|list").is_some());
    }
}
