//! MULTI / EXEC / DISCARD / WATCH / UNWATCH.
//!
//! EXEC takes one [`Transaction`] covering every key its queued commands name (and the
//! WATCHed keys), on every shard involved, before running any of them; a queued command that
//! walks the keyspace (KEYS, FLUSHALL …) locks whole shards instead. While it runs, no other
//! client can see or change those keys, so the transaction is atomic across shards.

use std::collections::BTreeMap;

use super::table::{Command, CoordFuture, Handler};
use crate::error::{CommandError, CommandResult};
use crate::protocol::Args;
use crate::server::session::{Multi, Queued, Session, Watched};
use crate::server::state::unix_ms;
use crate::shard::locks::Mode;
use crate::shard::tx::{ShardPlan, Transaction};

pub static HANDLERS: &[(&str, Handler)] = &[
    ("multi", Handler::Conn(multi)),
    ("exec", Handler::Coord(exec)),
    ("discard", Handler::Conn(discard)),
    ("watch", Handler::Coord(watch)),
    ("unwatch", Handler::Conn(unwatch)),
];

fn multi(session: &mut Session, _args: &Args) -> CommandResult {
    session.multi = Some(Multi::default());
    session.client.multi.set(0);
    session.out.ok();
    Ok(())
}

fn discard(session: &mut Session, _args: &Args) -> CommandResult {
    if session.multi.is_none() {
        return Err(CommandError::err("DISCARD without MULTI"));
    }
    session.discard_multi();
    session.out.ok();
    Ok(())
}

fn unwatch(session: &mut Session, _args: &Args) -> CommandResult {
    session.unwatch_all();
    session.out.ok();
    Ok(())
}

fn watch(session: &mut Session, args: Args) -> CoordFuture<'_> {
    Box::pin(async move {
        let db = session.db;
        let client = session.client.id;
        let mut per_shard: BTreeMap<usize, Vec<Vec<u8>>> = BTreeMap::new();
        for key in args.iter().skip(1) {
            let shard = session.shard.shard_of(key);
            let entry = Watched {
                shard,
                db,
                key: key.to_vec(),
            };
            if !session.watched.contains(&entry) {
                per_shard.entry(shard).or_default().push(key.to_vec());
                session.watched.push(entry);
            }
        }
        // Registered before replying: a change made after WATCH returns must be seen.
        let calls: Vec<_> = per_shard
            .into_iter()
            .map(|(shard, keys)| {
                session.shard.call(shard, move |s| {
                    let now = unix_ms();
                    let mut dbs = s.dbs();
                    for key in &keys {
                        dbs[db].watch(client, key, now);
                    }
                })
            })
            .collect();
        for call in calls {
            call.await.map_err(|e| CommandError::err(e.to_string()))?;
        }
        session.client.watched_keys.set(session.watched.len());
        session.out.ok();
        Ok(())
    })
}

/// True for commands that walk or empty a whole database: inside EXEC they lock whole shards.
fn walks_keyspace(command: &Command) -> bool {
    !matches!(command.handler, Handler::Keyed(..)) && command.meta.acl.contains(&"keyspace")
}

/// The locks EXEC needs: every key of every queued command, the WATCHed keys, and whole
/// shards for commands that walk the keyspace.
fn plan(session: &Session, queued: &[Queued]) -> BTreeMap<usize, ShardPlan> {
    let mut plan: BTreeMap<usize, ShardPlan> = BTreeMap::new();
    let mut db = session.db;
    let databases = session.shard.config().databases;
    for q in queued {
        let mode = if q.command.is_write() {
            Mode::Exclusive
        } else {
            Mode::Shared
        };
        if walks_keyspace(q.command) {
            for shard in 0..session.shard.count() {
                plan.entry(shard).or_default().locks.add_whole_shard(mode);
            }
        } else if q.command.name() == "select" {
            if let Some(next) = crate::protocol::parser::parse_i64(q.args.get(1))
                .and_then(|n| usize::try_from(n).ok())
                .filter(|&n| n < databases)
            {
                db = next;
            }
        }
        for position in q.command.key_positions(&q.args) {
            let key = q.args.get(position);
            let shard = session.shard.shard_of(key);
            plan.entry(shard).or_default().locks.add_key(db, key, mode);
        }
    }
    let client = session.client.id;
    for w in &session.watched {
        let part = plan.entry(w.shard).or_default();
        part.locks.add_key(w.db, &w.key, Mode::Shared);
        let (_, per_db) = part.watch.get_or_insert_with(|| (client, Vec::new()));
        match per_db.iter_mut().find(|(d, _)| *d == w.db) {
            Some((_, keys)) => keys.push(w.key.clone()),
            None => per_db.push((w.db, vec![w.key.clone()])),
        }
    }
    plan
}

fn exec(session: &mut Session, _args: Args) -> CoordFuture<'_> {
    Box::pin(async move {
        let Some(multi) = session.multi.take() else {
            return Err(CommandError::err("EXEC without MULTI"));
        };
        session.client.multi.set(-1);
        if multi.failed {
            session.unwatch_all();
            return Err(CommandError::Coded(
                "EXECABORT Transaction discarded because of previous errors.".into(),
            ));
        }
        let plan = plan(session, &multi.queued);
        let (tx, watch_broken) = Transaction::begin(&session.shard, plan)
            .await
            .map_err(|e| CommandError::err(e.to_string()))?;
        session.unwatch_all();
        if watch_broken {
            drop(tx);
            session.out.null_array();
            return Ok(());
        }
        let start = session.out.len();
        session.out.array(multi.queued.len());
        session.set_exec(Some(tx.tag()));
        for q in multi.queued {
            session.execute(q.command, q.args).await;
        }
        session.flush_group().await;
        session.set_exec(None);
        if let Err(e) = session.commit(Some(tx)).await {
            // Not durable: the client must not take the replies as done.
            session.out.truncate(start);
            return Err(e);
        }
        Ok(())
    })
}
