//! Commands: the registry (`table`), what each command is (`catalog`), and one module per
//! family with the handlers. A handler parses its arguments into a typed request, applies it,
//! and writes its reply; it never touches the network.

pub mod catalog;
pub mod connection;
pub mod cross_shard;
pub mod decimal;
pub mod keys;
pub mod server;
pub mod string;
pub mod table;
pub mod transaction;

mod args;

pub use args::*;

use crate::config::Config;
use crate::protocol::ReplyBuf;
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
}

impl KeyCtx<'_> {
    /// The selected database.
    pub fn db(&mut self) -> &mut Db {
        &mut self.dbs[self.db]
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
