//! Commands whose keys span shards and whose parts depend on each other (MSETNX, RENAME,
//! RENAMENX, COPY). Each takes its keys' locks through one [`Transaction`] first, so the whole
//! command is atomic, then moves data between shards with plain shard calls.
//!
//! [`Transaction`]: crate::shard::tx::Transaction

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use super::keys::copy_options;
use crate::error::{CommandError, CommandResult};
use crate::protocol::Args;
use crate::server::session::Session;
use crate::server::state::unix_ms;
use crate::shard::locks::Mode;
use crate::shard::value::Value;

type CoordFuture<'a> = Pin<Box<dyn Future<Output = CommandResult> + 'a>>;
/// Key/value pairs by the shard that owns the key.
type PairsByShard = BTreeMap<usize, Vec<(Vec<u8>, Vec<u8>)>>;

fn shard_failed(e: crate::shard::mesh::MeshError) -> CommandError {
    CommandError::err(e.to_string())
}

pub fn msetnx(session: &mut Session, args: Args) -> CoordFuture<'_> {
    Box::pin(async move {
        if args.len().is_multiple_of(2) {
            return Err(CommandError::WrongArity("msetnx".into()));
        }
        let db = session.db;
        let mut per_shard: PairsByShard = BTreeMap::new();
        for pair in 0..args.len() / 2 {
            let key = args.get(1 + 2 * pair);
            per_shard
                .entry(session.shard.shard_of(key))
                .or_default()
                .push((key.to_vec(), args.get(2 + 2 * pair).to_vec()));
        }
        let keys: Vec<(usize, Vec<u8>)> = per_shard
            .iter()
            .flat_map(|(&s, pairs)| pairs.iter().map(move |(k, _)| (s, k.clone())))
            .collect();
        let _tx = session
            .lock(
                keys.iter()
                    .map(|(s, k)| (*s, k.as_slice(), Mode::Exclusive)),
            )
            .await?;
        for (&shard, pairs) in &per_shard {
            let names: Vec<Vec<u8>> = pairs.iter().map(|(k, _)| k.clone()).collect();
            let any_exists = session
                .shard
                .call(shard, move |s| {
                    let now = unix_ms();
                    let mut dbs = s.dbs();
                    names.iter().any(|k| dbs[db].get(k, now).is_some())
                })
                .await
                .map_err(shard_failed)?;
            if any_exists {
                session.out.int(0);
                return Ok(());
            }
        }
        for (shard, pairs) in per_shard {
            session
                .shard
                .call(shard, move |s| {
                    let mut dbs = s.dbs();
                    for (k, v) in &pairs {
                        dbs[db].set(k, Value::string(v), false);
                    }
                })
                .await
                .map_err(shard_failed)?;
        }
        session.out.int(1);
        Ok(())
    })
}

/// Reads a key's value and expiry on its shard (for moving or copying it).
async fn read_entry(
    session: &Session,
    shard: usize,
    db: usize,
    key: Vec<u8>,
) -> CommandResult<Option<(Value, Option<i64>)>> {
    session
        .shard
        .call(shard, move |s| {
            let now = unix_ms();
            let mut dbs = s.dbs();
            let d = &mut dbs[db];
            let value = d.read(&key, now).cloned()?;
            Some((value, d.expire_at(&key)))
        })
        .await
        .map_err(shard_failed)
}

/// Writes a key with an expiry on its shard, replacing what was there.
async fn write_entry(
    session: &Session,
    shard: usize,
    db: usize,
    key: Vec<u8>,
    entry: (Value, Option<i64>),
) -> CommandResult {
    session
        .shard
        .call(shard, move |s| {
            let mut dbs = s.dbs();
            let d = &mut dbs[db];
            d.remove_entry(&key);
            d.set(&key, entry.0, false);
            if let Some(at) = entry.1 {
                d.set_expire(&key, at);
            }
        })
        .await
        .map_err(shard_failed)
}

async fn exists_on(
    session: &Session,
    shard: usize,
    db: usize,
    key: Vec<u8>,
) -> CommandResult<bool> {
    session
        .shard
        .call(shard, move |s| s.dbs()[db].get(&key, unix_ms()).is_some())
        .await
        .map_err(shard_failed)
}

fn rename_generic(session: &mut Session, args: Args, nx: bool) -> CoordFuture<'_> {
    Box::pin(async move {
        let (from, to) = (args.get(1).to_vec(), args.get(2).to_vec());
        let (src, dst) = (session.shard.shard_of(&from), session.shard.shard_of(&to));
        let db = session.db;
        let _tx = session
            .lock([
                (src, from.as_slice(), Mode::Exclusive),
                (dst, to.as_slice(), Mode::Exclusive),
            ])
            .await?;
        let Some(entry) = read_entry(session, src, db, from.clone()).await? else {
            return Err(CommandError::NoSuchKey);
        };
        if nx && exists_on(session, dst, db, to.clone()).await? {
            session.out.int(0);
            return Ok(());
        }
        write_entry(session, dst, db, to, entry).await?;
        session
            .shard
            .call(src, move |s| s.dbs()[db].remove_entry(&from).is_some())
            .await
            .map_err(shard_failed)?;
        if nx {
            session.out.int(1);
        } else {
            session.out.ok();
        }
        Ok(())
    })
}

pub fn rename(session: &mut Session, args: Args) -> CoordFuture<'_> {
    rename_generic(session, args, false)
}

pub fn renamenx(session: &mut Session, args: Args) -> CoordFuture<'_> {
    rename_generic(session, args, true)
}

pub fn copy(session: &mut Session, args: Args) -> CoordFuture<'_> {
    Box::pin(async move {
        let options = copy_options(&args, session.db, session.shard.config().databases)?;
        let (from, to) = (args.get(1).to_vec(), args.get(2).to_vec());
        let (src, dst) = (session.shard.shard_of(&from), session.shard.shard_of(&to));
        let db = session.db;
        let _tx = session
            .lock([
                (src, from.as_slice(), Mode::Shared),
                (dst, to.as_slice(), Mode::Exclusive),
            ])
            .await?;
        let Some(entry) = read_entry(session, src, db, from).await? else {
            session.out.int(0);
            return Ok(());
        };
        if !options.replace && exists_on(session, dst, options.dest_db, to.clone()).await? {
            session.out.int(0);
            return Ok(());
        }
        write_entry(session, dst, options.dest_db, to, entry).await?;
        session.out.int(1);
        Ok(())
    })
}
