//! A primary serving one replica. PSYNC hands the connection over to here: a partial resync
//! continues from the backlogs when they still hold every position the replica asks for;
//! otherwise a full sync takes a snapshot of every shard at one cut (under every shard's lock,
//! walked while the shards keep serving, as an AOF rewrite does) and streams it. The live
//! stream follows: each shard's records from the cut (or the asked positions) on. Meanwhile
//! the replica's `REPLCONF ACK` lines move its acknowledgements.
//!
//! Messages to the replica are RESP arrays of bulk strings:
//! - `SNAP <shard> <records>`: key-state records of the snapshot of primary shard `shard`;
//! - `SYNCED`: the snapshot is complete;
//! - `LOG <shard> <position> <records>`: records of the shard's stream, the first at
//!   `position`;
//! - `REPLCONF GETACK *` and `PING`, as Valkey sends them.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use super::backlog::Read;
use super::state::ConnectedReplica;
use crate::protocol::{encode_request, Args, ParseLimits, Parsed, RequestParser};
use crate::server::clients::ClientInfo;
use crate::shard::mesh::{Outcome, Payload};
use crate::shard::tx::Transaction;
use crate::shard::Shard;
use crate::storage::snapshot::{self, BaseSink, DbSnapshot};

/// Records waiting to be written to one replica before the shards' readers pause.
const OUTBOX_BYTES: usize = 4 * 1024 * 1024;
/// How often a sync waiting for the snapshot slot (held by a rewrite) looks again.
const SLOT_POLL: Duration = Duration::from_millis(10);
/// Longest line a replica may send.
const ACK_LINE_MAX: i64 = 64 * 1024;

/// Why a replica's link ended.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("a shard did not answer")]
    Mesh,
    #[error("the backlog of shard {0} no longer holds what the replica needs")]
    Lost(usize),
    #[error("no acknowledgement for {0} seconds")]
    Timeout(u64),
    #[error("the replica read nothing for {0} seconds")]
    Stalled(u64),
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// Writes `bytes` to the replica, giving up after `repl-timeout` seconds: a replica that stops
/// reading (its socket buffers full) must not hold the link, nor during a full sync the
/// snapshot slot that rewrites and other syncs wait for, forever.
async fn send(shard: &Shard, writer: &mut TcpStream, bytes: &[u8]) -> Result<(), LinkError> {
    let limit_s = shard.config().repl_timeout_s.max(1);
    let write = async { writer.write_all(bytes).await.map_err(LinkError::from) };
    let limit = async {
        glommio::timer::sleep(Duration::from_secs(limit_s)).await;
        Err(LinkError::Stalled(limit_s))
    };
    futures_lite::future::or(write, limit).await
}

/// Comma-separated positions, one per shard.
pub fn format_positions(positions: &[u64]) -> String {
    positions
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Reads comma-separated positions.
pub fn parse_positions(text: &[u8]) -> Option<Vec<u64>> {
    std::str::from_utf8(text)
        .ok()?
        .split(',')
        .map(|p| p.parse().ok())
        .collect()
}

/// Serves a replica on the connection PSYNC came in on, until it goes away.
pub async fn serve(
    shard: Rc<Shard>,
    reader: TcpStream,
    mut writer: TcpStream,
    client: Rc<ClientInfo>,
    psync: Args,
    listening_port: u16,
    input: BytesMut,
) {
    let server = Arc::clone(&shard.server);
    client.replica.set(true);
    let replica = Arc::new(ConnectedReplica::new(
        client.id,
        client.addr.ip().to_string(),
        listening_port,
        shard.count(),
    ));
    server.replication.add_replica(Arc::clone(&replica));
    log::info!(
        "Replica {}:{} asks for synchronization",
        replica.ip,
        listening_port
    );
    let stream = stream_to(&shard, &mut writer, &replica, &psync);
    let acks = read_acks(&shard, reader, input, &replica);
    let killed = async {
        client.killed().await;
        Ok(())
    };
    let result = futures_lite::future::or(stream, futures_lite::future::or(acks, killed)).await;
    server.replication.remove_replica(client.id);
    match result {
        Ok(()) => log::info!(
            "Connection with replica {}:{} lost",
            replica.ip,
            listening_port
        ),
        Err(e) => log::warn!(
            "Connection with replica {}:{} closed: {e}",
            replica.ip,
            listening_port
        ),
    }
}

async fn stream_to(
    shard: &Rc<Shard>,
    writer: &mut TcpStream,
    replica: &ConnectedReplica,
    psync: &Args,
) -> Result<(), LinkError> {
    let replid = shard.server.replication.replids().0;
    let from = match partial_from(shard, psync, &replid).await? {
        Some(from) => {
            send(shard, writer, format!("+CONTINUE {replid}\r\n").as_bytes()).await?;
            replica.set_online();
            log::info!("Partial resynchronization accepted, from {from:?}");
            from
        }
        None => full_sync(shard, writer, replica, &replid).await?,
    };
    live(shard, writer, replica, from).await
}

/// The positions to continue from, if the replica's history is ours and every backlog
/// still holds them.
async fn partial_from(
    shard: &Rc<Shard>,
    psync: &Args,
    replid: &str,
) -> Result<Option<Vec<u64>>, LinkError> {
    if psync.len() < 3 || psync.get(1) != replid.as_bytes() {
        return Ok(None);
    }
    let Some(wanted) = parse_positions(psync.get(2)).filter(|p| p.len() == shard.count()) else {
        return Ok(None);
    };
    for (s, &from) in wanted.iter().enumerate() {
        let held = shard
            .call(s, move |s| {
                s.backlog()
                    .as_mut()
                    .is_some_and(|b| from == b.end() || (from >= b.first() && from <= b.end()))
            })
            .await
            .map_err(|_| LinkError::Mesh)?;
        if !held {
            return Ok(None);
        }
    }
    Ok(Some(wanted))
}

/// Gives the snapshot slot back and stops the snapshots of a sync that did not finish.
struct SyncClaim {
    home: Rc<Shard>,
    /// Names this sync's snapshots: the stop posted at the end reaches the shards after the
    /// slot is free, and must not stop the snapshots of a sync that started meanwhile.
    id: u64,
}

/// Ids of full syncs, process-wide.
static NEXT_SYNC_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Drop for SyncClaim {
    fn drop(&mut self) {
        let id = self.id;
        for s in 0..self.home.count() {
            self.home.post(s, move |s| stop_sync_snapshot(s, Some(id)));
        }
        self.home.server.rewrite.end_sync();
    }
}

/// Ends the full sync snapshot taken on `shard`: sync `id`'s only, or whichever with `None`.
fn stop_sync_snapshot(shard: &Shard, id: Option<u64>) {
    let mut sink = shard.sync_sink();
    if sink
        .as_ref()
        .is_some_and(|(own, _)| id.is_none_or(|id| id == *own))
    {
        *sink = None;
        drop(sink);
        for db in shard.dbs().iter_mut() {
            db.finish_snapshot();
        }
    }
}

/// Full sync: cut, snapshot, `SYNCED`. Returns each shard's cut position.
async fn full_sync(
    home: &Rc<Shard>,
    writer: &mut TcpStream,
    replica: &ConnectedReplica,
    replid: &str,
) -> Result<Vec<u64>, LinkError> {
    while !home.server.rewrite.try_begin_sync() {
        glommio::timer::sleep(SLOT_POLL).await;
    }
    let claim = SyncClaim {
        home: Rc::clone(home),
        id: NEXT_SYNC_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
    };
    let id = claim.id;
    let cuts = cut(home, id).await?;
    log::info!(
        "Starting a full sync of {} shard(s) at {cuts:?}",
        cuts.len()
    );
    let fullresync = format!("+FULLRESYNC {replid} {}\r\n", format_positions(&cuts));
    send(home, writer, fullresync.as_bytes()).await?;
    let mut message = Vec::new();
    for s in 0..home.count() {
        let index = s.to_string();
        loop {
            let (records, complete) = home
                .call(s, move |s| {
                    let complete = snapshot::walk(s);
                    // Each message's records are numbered from 0 (the replica decodes
                    // each message on its own).
                    let records = s
                        .sync_sink()
                        .as_ref()
                        .map(|(_, sink)| {
                            let mut sink = sink.borrow_mut();
                            sink.position = 0;
                            std::mem::take(&mut sink.bytes)
                        })
                        .unwrap_or_default();
                    if complete {
                        stop_sync_snapshot(s, Some(id));
                    }
                    (records, complete)
                })
                .await
                .map_err(|_| LinkError::Mesh)?;
            if !records.is_empty() {
                message.clear();
                encode_request(&mut message, &[b"SNAP", index.as_bytes(), &records]);
                send(home, writer, &message).await?;
            }
            if complete {
                break;
            }
            glommio::timer::sleep(snapshot::STEP_PAUSE).await;
        }
    }
    message.clear();
    encode_request(&mut message, &[b"SYNCED"]);
    send(home, writer, &message).await?;
    drop(claim);
    replica.set_online();
    log::info!("Synchronization with replica succeeded");
    Ok(cuts)
}

/// Locks every shard, starts each one's backlog and snapshot, unlocks. Returns the cuts.
async fn cut(home: &Rc<Shard>, id: u64) -> Result<Vec<u64>, LinkError> {
    let tx = Transaction::lock_every_shard(home)
        .await
        .map_err(|_| LinkError::Mesh)?;
    let capacity = crate::shard::backlog_share(&home.config(), home.count());
    let calls: Vec<_> = (0..home.count())
        .map(|s| {
            home.call(s, move |s| {
                // This sync holds the snapshot slot: anything left is stale.
                stop_sync_snapshot(s, None);
                let position = s.start_backlog(capacity);
                let sink = Rc::new(RefCell::new(BaseSink::default()));
                for (i, db) in s.dbs().iter_mut().enumerate() {
                    let index = u32::try_from(i).unwrap_or(u32::MAX);
                    db.start_snapshot(DbSnapshot::new(index, Rc::clone(&sink)));
                }
                *s.sync_sink() = Some((id, sink));
                position
            })
        })
        .collect();
    tx.finish_calls(calls).await.map_err(|_| LinkError::Mesh)
}

/// Messages for one replica, filled by one reader per shard and drained by the writer.
#[derive(Default)]
struct Outbox {
    /// (shard, position after the records, message).
    messages: VecDeque<(usize, u64, Vec<u8>)>,
    bytes: usize,
    lost: Option<usize>,
    closed: bool,
    writer: Option<Waker>,
    readers: Vec<Waker>,
}

type SharedOutbox = Rc<RefCell<Outbox>>;

/// Closes the outbox when the writer ends: the shard readers stop.
struct CloseOutbox {
    outbox: SharedOutbox,
    /// Seen by the readers' waits on the shards, which every shard is asked to wake.
    closed: Arc<AtomicBool>,
    home: Rc<Shard>,
}

impl Drop for CloseOutbox {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Release);
        for s in 0..self.home.count() {
            self.home.post(s, |s| {
                if let Some(backlog) = s.backlog().as_mut() {
                    backlog.wake_readers();
                }
            });
        }
        let mut outbox = self.outbox.borrow_mut();
        outbox.closed = true;
        for w in outbox.readers.drain(..) {
            w.wake();
        }
    }
}

/// The live stream from `from` (one position per shard) on.
async fn live(
    home: &Rc<Shard>,
    writer: &mut TcpStream,
    replica: &ConnectedReplica,
    from: Vec<u64>,
) -> Result<(), LinkError> {
    let outbox: SharedOutbox = Rc::default();
    let closed = Arc::new(AtomicBool::new(false));
    let _close = CloseOutbox {
        outbox: Rc::clone(&outbox),
        closed: Arc::clone(&closed),
        home: Rc::clone(home),
    };
    for (s, &position) in from.iter().enumerate() {
        let reader = read_shard(
            Rc::clone(home),
            s,
            position,
            Rc::clone(&outbox),
            Arc::clone(&closed),
        );
        glommio::spawn_local(reader).detach();
    }
    let mut pending = Vec::new();
    // Per shard: the position after the last record sent.
    let mut sent = from;
    replica.ack(&[], None);
    loop {
        let config = home.config();
        let ping_every = Duration::from_secs(config.repl_ping_replica_period_s);
        let ready = std::future::poll_fn(|cx| {
            let mut outbox = outbox.borrow_mut();
            if !outbox.messages.is_empty() || outbox.lost.is_some() || replica.is_dropped() {
                return Poll::Ready(());
            }
            replica.wake_on_getack(cx.waker());
            if replica.getack_due(&sent) {
                return Poll::Ready(());
            }
            outbox.writer = Some(cx.waker().clone());
            Poll::Pending
        });
        let ping = async {
            glommio::timer::sleep(ping_every).await;
        };
        futures_lite::future::or(ready, ping).await;
        if replica.is_dropped() {
            return Ok(());
        }
        pending.clear();
        {
            let mut outbox = outbox.borrow_mut();
            if let Some(s) = outbox.lost {
                return Err(LinkError::Lost(s));
            }
            while let Some((s, end, message)) = outbox.messages.pop_front() {
                pending.extend_from_slice(&message);
                sent[s] = sent[s].max(end);
            }
            outbox.bytes = 0;
            for w in outbox.readers.drain(..) {
                w.wake();
            }
        }
        if replica.take_getack(&sent) {
            encode_request(&mut pending, &[b"REPLCONF", b"GETACK", b"*"]);
        } else if pending.is_empty() {
            encode_request(&mut pending, &[b"PING"]);
        }
        send(home, writer, &pending).await?;
        let silent_ms = crate::server::state::unix_ms() - replica.last_ack_ms();
        let limit_s = config.repl_timeout_s;
        if silent_ms > i64::try_from(limit_s.saturating_mul(1000)).unwrap_or(i64::MAX) {
            return Err(LinkError::Timeout(limit_s));
        }
    }
}

/// Moves shard `s`'s records from `from` on into the outbox, pausing while it is full.
async fn read_shard(
    home: Rc<Shard>,
    s: usize,
    mut from: u64,
    outbox: SharedOutbox,
    closed: Arc<AtomicBool>,
) {
    let index = s.to_string();
    loop {
        let open = std::future::poll_fn(|cx| {
            let mut o = outbox.borrow_mut();
            if o.closed {
                Poll::Ready(false)
            } else if o.bytes < OUTBOX_BYTES {
                Poll::Ready(true)
            } else {
                o.readers.push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        if !open {
            return;
        }
        let link_closed = Arc::clone(&closed);
        let read: Result<Read, _> = home
            .call_outcome(s, move |s| read_or_wait(s, from, link_closed))
            .await;
        let mut o = outbox.borrow_mut();
        if o.closed {
            return;
        }
        match read {
            Ok(Read::Records { start, bytes }) => {
                let mut message = Vec::with_capacity(bytes.len() + 64);
                encode_request(
                    &mut message,
                    &[
                        b"LOG",
                        index.as_bytes(),
                        start.to_string().as_bytes(),
                        &bytes,
                    ],
                );
                from = start + bytes.len() as u64;
                o.bytes += message.len();
                o.messages.push_back((s, from, message));
            }
            Ok(Read::Lost) | Err(_) => {
                o.lost = Some(s);
            }
            Ok(Read::UpToDate) => {}
        }
        if let Some(w) = o.writer.take() {
            w.wake();
        }
        if o.lost.is_some() {
            return;
        }
    }
}

/// On the shard: its records from `from` on, waiting for the next one if there are none.
fn read_or_wait(shard: &Rc<Shard>, from: u64, closed: Arc<AtomicBool>) -> Outcome {
    let read = move |shard: &Shard, waker: Option<&Waker>| -> Option<Read> {
        if closed.load(Ordering::Acquire) {
            return Some(Read::UpToDate);
        }
        let mut backlog = shard.backlog();
        let Some(backlog) = backlog.as_mut() else {
            return Some(Read::Lost);
        };
        match backlog.read(from) {
            Read::UpToDate => {
                if let Some(w) = waker {
                    backlog.wake_on_append(w);
                }
                None
            }
            other => Some(other),
        }
    };
    if let Some(now) = read(shard, None) {
        return Outcome::Ready(Box::new(now));
    }
    let shard = Rc::clone(shard);
    Outcome::Pending(Box::pin(async move {
        let got = std::future::poll_fn(|cx| match read(&shard, Some(cx.waker())) {
            Some(r) => Poll::Ready(r),
            None => Poll::Pending,
        })
        .await;
        Box::new(got) as Payload
    }))
}

/// Reads the replica's `REPLCONF ACK <positions> [FACK <positions>]` lines.
async fn read_acks(
    shard: &Rc<Shard>,
    mut reader: TcpStream,
    mut input: BytesMut,
    replica: &ConnectedReplica,
) -> Result<(), LinkError> {
    let mut parser = RequestParser::new();
    let mut scratch = vec![0u8; 4096];
    let limits = ParseLimits {
        max_bulk_bytes: ACK_LINE_MAX,
        unauthenticated: false,
    };
    loop {
        loop {
            match parser.parse(&mut input, limits) {
                Ok(Parsed::Command(args)) => take_ack(shard, replica, &args),
                Ok(Parsed::NeedMore) => break,
                Err(e) => return Err(LinkError::Protocol(e.to_string())),
            }
        }
        if input.len() as i64 > ACK_LINE_MAX {
            return Err(LinkError::Protocol("line too long".into()));
        }
        let n = reader.read(&mut scratch).await?;
        if n == 0 {
            return Ok(());
        }
        input.extend_from_slice(&scratch[..n]);
    }
}

fn take_ack(shard: &Shard, replica: &ConnectedReplica, args: &Args) {
    if !(args.is(0, "replconf") && args.is(1, "ack") && args.len() >= 3) {
        return;
    }
    let count = shard.count();
    let Some(acked) = parse_positions(args.get(2)).filter(|p| p.len() == count) else {
        return;
    };
    let fsynced = if args.len() >= 5 && args.is(3, "fack") {
        parse_positions(args.get(4)).filter(|p| p.len() == count)
    } else {
        None
    };
    replica.ack(&acked, fsynced.as_deref());
    shard.server.replication.wake_waiters();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::server::state::ServerState;

    #[test]
    fn a_sync_stops_only_its_own_snapshot() {
        let server = Arc::new(ServerState::new(Config::default(), vec![0], String::new()));
        let shard = Shard::new(0, 0, server);
        let sink = Rc::new(RefCell::new(BaseSink::default()));
        *shard.sync_sink() = Some((2, sink));
        // The late stop of an earlier sync leaves sync 2's snapshot alone.
        stop_sync_snapshot(&shard, Some(1));
        assert_eq!(shard.sync_sink().as_ref().map(|(id, _)| *id), Some(2));
        stop_sync_snapshot(&shard, Some(2));
        assert!(shard.sync_sink().is_none());
        // A new sync's cut clears whatever is left.
        *shard.sync_sink() = Some((3, Rc::new(RefCell::new(BaseSink::default()))));
        stop_sync_snapshot(&shard, None);
        assert!(shard.sync_sink().is_none());
    }
}
