//! Commands whose keys span shards and whose parts depend on each other (MSETNX, RENAME,
//! RENAMENX, COPY). Each takes its keys' locks through one [`Transaction`] first, so the whole
//! command is atomic, then runs ordinary keyed commands on each shard under it (so they are
//! logged like any other write), and commits.
//!
//! [`Transaction`]: crate::shard::tx::Transaction

use std::collections::BTreeMap;

use super::keys::copy_options;
use super::table::CoordFuture;
use crate::error::{CommandError, CommandResult};
use crate::protocol::parser::parse_i64;
use crate::protocol::reply::decode_bulk;
use crate::protocol::Args;
use crate::server::session::Session;
use crate::shard::locks::Mode;

/// An integer reply's value.
fn integer(reply: &[u8]) -> Option<i64> {
    parse_i64(reply.strip_prefix(b":")?.strip_suffix(b"\r\n")?)
}

pub fn msetnx(session: &mut Session, args: Args) -> CoordFuture<'_> {
    Box::pin(async move {
        if args.len().is_multiple_of(2) {
            return Err(CommandError::WrongArity("msetnx".into()));
        }
        let db = session.db;
        let mut per_shard: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for pair in 0..args.len() / 2 {
            let key = 1 + 2 * pair;
            per_shard
                .entry(session.shard.shard_of(args.get(key)))
                .or_default()
                .push(key);
        }
        let keys: Vec<(usize, usize)> = per_shard
            .iter()
            .flat_map(|(&s, positions)| positions.iter().map(move |&p| (s, p)))
            .collect();
        let tx = session
            .lock(keys.iter().map(|&(s, p)| (s, args.get(p), Mode::Exclusive)))
            .await?;
        let outcome = msetnx_locked(session, &args, db, &per_shard).await;
        session.commit(tx).await?;
        session.out.int(i64::from(outcome?));
        Ok(())
    })
}

async fn msetnx_locked(
    session: &mut Session,
    args: &Args,
    db: usize,
    per_shard: &BTreeMap<usize, Vec<usize>>,
) -> CommandResult<bool> {
    for (&shard, positions) in per_shard {
        let exists = args.select(std::iter::once(0).chain(positions.iter().copied()));
        let mut exists = exists;
        exists.set_name(b"EXISTS");
        let replies = session.run_calls(shard, db, vec![exists]).await?;
        if integer(replies.reply(0)).unwrap_or(0) > 0 {
            return Ok(false);
        }
    }
    for (&shard, positions) in per_shard {
        let mut mset =
            args.select(std::iter::once(0).chain(positions.iter().flat_map(|&p| [p, p + 1])));
        mset.set_name(b"MSET");
        session.run_calls(shard, db, vec![mset]).await?;
    }
    Ok(true)
}

/// A string key's value and absolute expiry (Unix ms), read on its shard.
async fn read_entry(
    session: &mut Session,
    shard: usize,
    db: usize,
    key: &[u8],
) -> CommandResult<Option<(Vec<u8>, Option<i64>)>> {
    let replies = session
        .run_calls(
            shard,
            db,
            vec![
                Args::from_vecs([b"GET".as_slice(), key]),
                Args::from_vecs([b"PEXPIRETIME".as_slice(), key]),
            ],
        )
        .await?;
    if replies.reply(0).starts_with(b"-") {
        let text = String::from_utf8_lossy(replies.reply(0));
        return Err(CommandError::Coded(
            text.trim_start_matches('-').trim_end().to_string(),
        ));
    }
    let Some(value) = decode_bulk(replies.reply(0)) else {
        return Ok(None);
    };
    let expire = integer(replies.reply(1)).filter(|&at| at > 0);
    Ok(Some((value.to_vec(), expire)))
}

/// Replaces `key` on its shard with `value` and `expire`.
async fn write_entry(
    session: &mut Session,
    shard: usize,
    db: usize,
    key: &[u8],
    (value, expire): (Vec<u8>, Option<i64>),
) -> CommandResult {
    let mut commands = vec![
        Args::from_vecs([b"DEL".as_slice(), key]),
        Args::from_vecs([b"SET".as_slice(), key, &value]),
    ];
    if let Some(at) = expire {
        let at = at.to_string();
        commands.push(Args::from_vecs([
            b"PEXPIREAT".as_slice(),
            key,
            at.as_bytes(),
        ]));
    }
    session.run_calls(shard, db, commands).await?;
    Ok(())
}

async fn exists_on(
    session: &mut Session,
    shard: usize,
    db: usize,
    key: &[u8],
) -> CommandResult<bool> {
    let replies = session
        .run_calls(
            shard,
            db,
            vec![Args::from_vecs([b"EXISTS".as_slice(), key])],
        )
        .await?;
    Ok(integer(replies.reply(0)).unwrap_or(0) > 0)
}

fn rename_generic(session: &mut Session, args: Args, nx: bool) -> CoordFuture<'_> {
    Box::pin(async move {
        let (from, to) = (args.get(1), args.get(2));
        let (src, dst) = (session.shard.shard_of(from), session.shard.shard_of(to));
        let db = session.db;
        let tx = session
            .lock([(src, from, Mode::Exclusive), (dst, to, Mode::Exclusive)])
            .await?;
        let outcome = rename_locked(session, (src, from), (dst, to), db, nx).await;
        session.commit(tx).await?;
        let done = outcome?;
        if nx {
            session.out.int(i64::from(done));
        } else {
            session.out.ok();
        }
        Ok(())
    })
}

async fn rename_locked(
    session: &mut Session,
    (src, from): (usize, &[u8]),
    (dst, to): (usize, &[u8]),
    db: usize,
    nx: bool,
) -> CommandResult<bool> {
    let Some(entry) = read_entry(session, src, db, from).await? else {
        return Err(CommandError::NoSuchKey);
    };
    if nx && exists_on(session, dst, db, to).await? {
        return Ok(false);
    }
    write_entry(session, dst, db, to, entry).await?;
    session
        .run_calls(src, db, vec![Args::from_vecs([b"DEL".as_slice(), from])])
        .await?;
    Ok(true)
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
        let (from, to) = (args.get(1), args.get(2));
        let (src, dst) = (session.shard.shard_of(from), session.shard.shard_of(to));
        let db = session.db;
        let tx = session
            .lock([(src, from, Mode::Shared), (dst, to, Mode::Exclusive)])
            .await?;
        let outcome = copy_locked(session, (src, from), (dst, to), db, options).await;
        session.commit(tx).await?;
        session.out.int(i64::from(outcome?));
        Ok(())
    })
}

async fn copy_locked(
    session: &mut Session,
    (src, from): (usize, &[u8]),
    (dst, to): (usize, &[u8]),
    db: usize,
    options: super::keys::CopyOptions,
) -> CommandResult<bool> {
    let Some(entry) = read_entry(session, src, db, from).await? else {
        return Ok(false);
    };
    if !options.replace && exists_on(session, dst, options.dest_db, to).await? {
        return Ok(false);
    }
    write_entry(session, dst, options.dest_db, to, entry).await?;
    Ok(true)
}
