//! Replication commands: REPLICAOF/SLAVEOF, ROLE, WAIT, and the internal PSYNC, SYNC and
//! REPLCONF a replica sends its primary.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use super::table::{CoordFuture, Handler};
use crate::error::{CommandError, CommandResult};
use crate::protocol::Args;
use crate::replication::state::PrimaryAddr;
use crate::server::session::Session;

pub static HANDLERS: &[(&str, Handler)] = &[
    ("replicaof", Handler::Coord(replicaof)),
    ("slaveof", Handler::Coord(replicaof)),
    ("role", Handler::Coord(role)),
    ("wait", Handler::Coord(wait)),
    ("psync", Handler::Conn(psync)),
    ("sync", Handler::Conn(sync)),
    ("replconf", Handler::Conn(replconf)),
];

/// The reply a blocked WAIT/WAITAOF gets when this server becomes a replica (its connection
/// then closes).
const UNBLOCKED_DEMOTED: &str =
    "UNBLOCKED force unblock from blocking operation, instance state changed (master -> replica?)";

fn replicaof(session: &mut Session, args: Args) -> CoordFuture<'_> {
    Box::pin(async move {
        let state = &session.shard.server.replication;
        if args.is(1, "no") && args.is(2, "one") {
            if state.is_replica() {
                state.set_primary(None);
                state.set_cached_primary(None);
                log::info!(
                    "PRIMARY MODE enabled (user request from 'id={}')",
                    session.client.id
                );
            }
            session.out.ok();
            return Ok(());
        }
        let port = crate::protocol::parser::parse_i64(args.get(2))
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| CommandError::err("Invalid master port"))?;
        let addr = PrimaryAddr {
            host: args.text(1),
            port,
        };
        if state.primary().as_ref() == Some(&addr) {
            session
                .out
                .simple("OK Already connected to specified master");
            return Ok(());
        }
        state.set_cached_primary(None);
        let generation = state.set_primary(Some(addr.clone()));
        crate::replication::replica::start(&session.shard, generation);
        log::info!(
            "REPLICAOF {}:{} enabled (user request from 'id={}')",
            addr.host,
            addr.port,
            session.client.id
        );
        session.out.ok();
        Ok(())
    })
}

fn role(session: &mut Session, _args: Args) -> CoordFuture<'_> {
    Box::pin(async move {
        let state = &session.shard.server.replication;
        if let Some(primary) = state.primary() {
            let link = &state.link;
            let status = if link.up.load(Ordering::Acquire) {
                "connected"
            } else if link.sync_in_progress.load(Ordering::Acquire) {
                "sync"
            } else {
                "connect"
            };
            session.out.array(5);
            session.out.bulk(b"slave");
            session.out.bulk(primary.host.as_bytes());
            session.out.int(i64::from(primary.port));
            session.out.bulk(status.as_bytes());
            let processed = link.processed.load(Ordering::Acquire);
            session
                .out
                .int(i64::try_from(processed).unwrap_or(i64::MAX));
            return Ok(());
        }
        // Offsets are sums over the shards of their stream positions (as in INFO).
        let ends = session.gather(|s| s.write_end()).await?;
        let replicas = state.replicas();
        session.out.array(3);
        session.out.bulk(b"master");
        session
            .out
            .int(i64::try_from(ends.iter().sum::<u64>()).unwrap_or(i64::MAX));
        session.out.array(replicas.len());
        for r in &replicas {
            session.out.array(3);
            session.out.bulk(r.ip.as_bytes());
            session.out.bulk(r.listening_port.to_string().as_bytes());
            session.out.bulk(r.acked_total().to_string().as_bytes());
        }
        Ok(())
    })
}

/// Parses a WAIT/WAITAOF timeout as Valkey does; `None` means block forever.
pub fn parse_timeout(arg: &[u8]) -> CommandResult<Option<Duration>> {
    let ms = crate::protocol::parser::parse_i64(arg)
        .ok_or_else(|| CommandError::err("timeout is not an integer or out of range"))?;
    if ms < 0 {
        return Err(CommandError::err("timeout is negative"));
    }
    if crate::server::state::unix_ms().checked_add(ms).is_none() {
        return Err(CommandError::err("timeout is out of range"));
    }
    Ok((ms > 0).then(|| Duration::from_millis(ms.unsigned_abs())))
}

/// Completes at `timeout` (never without one).
pub async fn expiry(timeout: Option<Duration>) {
    match timeout {
        Some(t) => glommio::timer::sleep(t).await,
        None => std::future::pending().await,
    }
}

/// Completes when `done` holds, checking at every acknowledgement from a replica and at every
/// change of role. Errors with UNBLOCKED (and closes the connection after the reply) if this
/// server becomes a replica meanwhile.
pub fn replicas_reach<'a>(
    session: &'a Session,
    mut done: impl FnMut() -> bool + 'a,
) -> impl Future<Output = CommandResult> + 'a {
    let state = &session.shard.server.replication;
    std::future::poll_fn(move |cx| {
        if state.is_replica() {
            return Poll::Ready(Err(CommandError::Coded(UNBLOCKED_DEMOTED.into())));
        }
        state.wake_on_ack(cx.waker());
        if done() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
}

/// Completes with UNBLOCKED if this server becomes a replica.
pub fn demoted(session: &Session) -> impl Future<Output = CommandResult> + '_ {
    replicas_reach(session, || false)
}

fn wait(session: &mut Session, args: Args) -> CoordFuture<'_> {
    Box::pin(async move {
        let state = &session.shard.server.replication;
        if state.is_replica() {
            return Err(CommandError::err(
                "WAIT cannot be used with replica instances. Please also note that if a replica \
                 is configured to be writable (which is not the default) writes to replicas are \
                 just local and are not propagated.",
            ));
        }
        let wanted =
            crate::protocol::parser::parse_i64(args.get(1)).ok_or(CommandError::NotInteger)?;
        let timeout = parse_timeout(args.get(2))?;
        let woff = session.woff.clone();
        let acked = state.count_acked(&woff, false);
        if acked >= wanted || session.in_exec {
            session.out.int(acked);
            return Ok(());
        }
        state.request_getack(&woff);
        let reached = replicas_reach(session, || state.count_acked(&woff, false) >= wanted);
        let timed_out = async {
            expiry(timeout).await;
            Ok(())
        };
        if let Err(e) = futures_lite::future::or(reached, timed_out).await {
            session.close_after_reply = true;
            return Err(e);
        }
        session.out.int(state.count_acked(&woff, false));
        Ok(())
    })
}

/// PSYNC from a corekv replica: the connection becomes its replication link once this reply
/// loop ends (the link writes `+FULLRESYNC` or `+CONTINUE` itself).
fn psync(session: &mut Session, args: &Args) -> CommandResult {
    check_can_serve_replica(session)?;
    if !session.replica_capa_corekv {
        return Err(CommandError::err(
            "corekv streams its own record format: only a corekv replica can follow it",
        ));
    }
    session.handoff = Some(args.clone());
    session.close_after_reply = true;
    Ok(())
}

fn sync(session: &mut Session, _args: &Args) -> CommandResult {
    check_can_serve_replica(session)?;
    Err(CommandError::err(
        "corekv streams its own record format: only a corekv replica can follow it (with PSYNC)",
    ))
}

fn check_can_serve_replica(session: &Session) -> CommandResult {
    if session.shard.server.replication.is_replica() {
        return Err(CommandError::err(
            "corekv replicas do not serve replicas of their own: replicate from the primary",
        ));
    }
    Ok(())
}

fn replconf(session: &mut Session, args: &Args) -> CommandResult {
    if !(args.len() - 1).is_multiple_of(2) {
        return Err(CommandError::Syntax);
    }
    for i in (1..args.len()).step_by(2) {
        if args.is(i, "listening-port") {
            let port = crate::protocol::parser::parse_i64(args.get(i + 1))
                .and_then(|p| u16::try_from(p).ok())
                .ok_or(CommandError::NotInteger)?;
            session.replica_listening_port = port;
        } else if args.is(i, "capa") {
            if args.is(i + 1, "corekv") {
                session.replica_capa_corekv = true;
            }
        } else if args.is(i, "ack") || args.is(i, "getack") {
            // From a connection that is not a replica's link: ignored, with no reply.
            return Ok(());
        } else if !(args.is(i, "ip-address")
            || args.is(i, "version")
            || args.is(i, "rdb-only")
            || args.is(i, "rdb-filter-only"))
        {
            return Err(CommandError::err(format!(
                "Unrecognized REPLCONF option: {}",
                args.text(i)
            )));
        }
    }
    session.out.ok();
    Ok(())
}
