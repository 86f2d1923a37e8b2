//! A replica's link to its primary: connect, handshake (PING, AUTH, REPLCONF, PSYNC), then a
//! full sync or a partial resync, then the live stream, reconnecting after any failure.
//!
//! The primary's records are applied as commands through a session of this server (the
//! "primary client"), so each one runs on the shard that owns its key here (the two servers may
//! have different shard counts) and lands in this server's own AOF. A cross-shard transaction
//! of the primary arrives as one part per primary shard; a shard's stream stops at its part
//! until every part has arrived, and the parts then run together as one transaction, so the
//! replica never shows half of it. (Two transactions on different keys can commit in opposite
//! orders on two shards; a part then runs ahead of records on other keys: `Applier::untangle`.)
//!
//! Acknowledgements (`REPLCONF ACK <received> FACK <durable>`, one position per primary shard)
//! go out every second and at every `REPLCONF GETACK`: first what was applied, then, once this
//! server's AOF made it durable (the GETACK asks its shards to sync now), the durable part.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use super::primary::{format_positions, parse_positions};
use super::state::PrimaryAddr;
use crate::command::table::Registry;
use crate::protocol::encode_request;
use crate::protocol::{Args, ParseLimits, Parsed, RequestParser};
use crate::server::clients::ClientInfo;
use crate::server::session::Session;
use crate::server::state::unix_ms;
use crate::shard::Shard;
use crate::storage::record::{self, Body, LoggedCommand, Record, StoredValue, TxTag};

/// Pause before connecting again after a failure.
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// Longest wait for the TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Acknowledgements go out at least this often.
const ACK_PERIOD: Duration = Duration::from_secs(1);
/// Most (received, written) snapshots kept for FACK; older ones are dropped first.
const FACK_QUEUE_MAX: usize = 4096;
/// How often the link checks for a new role and a silent primary.
const WATCHDOG_PERIOD: Duration = Duration::from_millis(100);
/// The start of the error a write gets while this server's AOF is failing.
const MISCONF: &[u8] = b"-MISCONF";
/// Longest handshake reply line.
const LINE_MAX: usize = 64 * 1024;

/// Why the link ended (it is tried again).
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("timed out connecting")]
    ConnectTimeout,
    #[error("the primary refused: {0}")]
    Refused(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("the primary closed the connection")]
    Closed,
    #[error("replication was reconfigured")]
    Superseded,
    #[error("no data from the primary for {0} seconds")]
    Timeout(u64),
}

/// Starts following the configured primary (a task on `home` that lives until the role
/// changes again).
pub fn start(home: &Rc<Shard>, generation: u64) {
    glommio::spawn_local(follow(Rc::clone(home), generation)).detach();
}

async fn follow(home: Rc<Shard>, generation: u64) {
    let state = &home.server.replication;
    state.link.down_since_ms.store(unix_ms(), Ordering::Release);
    loop {
        if state.link_generation() != generation {
            return;
        }
        let Some(primary) = state.primary() else {
            return;
        };
        log::info!("Connecting to PRIMARY {}:{}", primary.host, primary.port);
        let result = link(&home, &primary, generation).await;
        if state.link_generation() != generation {
            // A newer link owns the status now.
            return;
        }
        let was_up = state.link.up.swap(false, Ordering::AcqRel);
        state.link.sync_in_progress.store(false, Ordering::Release);
        if was_up {
            state.link.down_since_ms.store(unix_ms(), Ordering::Release);
        }
        match result {
            Err(LinkError::Superseded) => return,
            Err(e) => log::warn!(
                "Link with PRIMARY {}:{} lost: {e}",
                primary.host,
                primary.port
            ),
            Ok(()) => {}
        }
        glommio::timer::sleep(RETRY_PAUSE).await;
    }
}

/// Why the link must stop now, if it must: replication was reconfigured (REPLICAOF), the
/// primary has been silent for `repl-timeout` (it pings an idle link every
/// `repl-ping-replica-period`), or sending an acknowledgement failed.
fn stop_reason(
    home: &Shard,
    generation: u64,
    since_ms: i64,
    acks: Option<&RefCell<Acks>>,
) -> Option<LinkError> {
    let state = &home.server.replication;
    if state.link_generation() != generation {
        return Some(LinkError::Superseded);
    }
    if let Some(failed) = acks.and_then(|a| a.borrow().failed.clone()) {
        return Some(LinkError::Protocol(format!(
            "sending an acknowledgement: {failed}"
        )));
    }
    let last_io = state.link.last_io_ms.load(Ordering::Acquire).max(since_ms);
    let limit_s = home.config().repl_timeout_s;
    let silent_ms = unix_ms() - last_io;
    (silent_ms > i64::try_from(limit_s.saturating_mul(1000)).unwrap_or(i64::MAX))
        .then_some(LinkError::Timeout(limit_s))
}

/// The socket's reading half and what was read but not yet used. Waiting for input is the only
/// point where the link stops (see [`stop_reason`]): records are never left half applied.
struct Input {
    stream: TcpStream,
    buf: BytesMut,
    scratch: Vec<u8>,
    home: Rc<Shard>,
    generation: u64,
    since_ms: i64,
    acks: Option<Rc<RefCell<Acks>>>,
}

impl Input {
    async fn fill(&mut self) -> Result<(), LinkError> {
        let (home, generation, since_ms) = (&self.home, self.generation, self.since_ms);
        let acks = self.acks.as_deref();
        let read = async {
            let n = self.stream.read(&mut self.scratch).await?;
            if n == 0 {
                return Err(LinkError::Closed);
            }
            Ok(n)
        };
        let stop = async {
            loop {
                glommio::timer::sleep(WATCHDOG_PERIOD).await;
                if let Some(why) = stop_reason(home, generation, since_ms, acks) {
                    return Err(why);
                }
            }
        };
        let n = futures_lite::future::or(read, stop).await?;
        self.buf.extend_from_slice(&self.scratch[..n]);
        home.server
            .replication
            .link
            .last_io_ms
            .store(unix_ms(), Ordering::Release);
        Ok(())
    }

    /// Stops if the link must stop (checked between messages).
    fn check(&self) -> Result<(), LinkError> {
        match stop_reason(
            &self.home,
            self.generation,
            self.since_ms,
            self.acks.as_deref(),
        ) {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }

    /// One reply line of the handshake (bare newlines, which a primary sends to keep a
    /// waiting replica's link alive, are skipped).
    async fn line(&mut self) -> Result<String, LinkError> {
        loop {
            while self.buf.first() == Some(&b'\n') {
                let _ = self.buf.split_to(1);
            }
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf.split_to(end + 2);
                return Ok(String::from_utf8_lossy(&line[..end]).into_owned());
            }
            if self.buf.len() > LINE_MAX {
                return Err(LinkError::Protocol("reply line too long".into()));
            }
            self.fill().await?;
        }
    }
}

async fn send(writer: &mut TcpStream, parts: &[&[u8]]) -> Result<(), LinkError> {
    let mut message = Vec::new();
    encode_request(&mut message, parts);
    writer.write_all(&message).await?;
    Ok(())
}

async fn connect(primary: &PrimaryAddr) -> Result<TcpStream, LinkError> {
    let address = format!("{}:{}", primary.host, primary.port);
    let connect = async {
        TcpStream::connect(address.as_str())
            .await
            .map_err(|e| LinkError::Io(crate::storage::segment::io_error(e)))
    };
    let timeout = async {
        glommio::timer::sleep(CONNECT_TIMEOUT).await;
        Err(LinkError::ConnectTimeout)
    };
    let stream = futures_lite::future::or(connect, timeout).await?;
    stream
        .set_nodelay(true)
        .map_err(|e| LinkError::Io(crate::storage::segment::io_error(e)))?;
    Ok(stream)
}

/// One connection to the primary, until it fails or the role changes.
async fn link(home: &Rc<Shard>, primary: &PrimaryAddr, generation: u64) -> Result<(), LinkError> {
    let stream = connect(primary).await?;
    let mut writer = crate::server::listener::second_handle(&stream)?;
    let peer = stream
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], primary.port)));
    let local = stream
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
    let mut input = Input {
        stream,
        buf: BytesMut::new(),
        scratch: vec![0; 64 * 1024],
        home: Rc::clone(home),
        generation,
        since_ms: unix_ms(),
        acks: None,
    };
    let state = &home.server.replication;
    handshake(home, &mut writer, &mut input).await?;
    let cached = state.cached_primary();
    let psync_id = cached.as_ref().map_or("?".to_string(), |c| c.0.clone());
    let psync_at = cached
        .as_ref()
        .map_or("-1".to_string(), |c| format_positions(&c.1));
    send(
        &mut writer,
        &[b"PSYNC", psync_id.as_bytes(), psync_at.as_bytes()],
    )
    .await?;
    let reply = input.line().await?;
    if state.link_generation() != generation {
        return Err(LinkError::Superseded);
    }
    let client = Rc::new(ClientInfo::new(
        home.server.next_client_id(),
        peer,
        local,
        -1,
    ));
    let session = Session::for_primary_link(Rc::clone(home), client);
    let shared = Rc::new(RefCell::new(Acks::default()));
    let mut applier;
    if let Some(rest) = reply.strip_prefix("+FULLRESYNC ") {
        let mut words = rest.split(' ');
        let replid = words.next().unwrap_or_default().to_string();
        let positions = words
            .next()
            .and_then(|p| parse_positions(p.as_bytes()))
            .ok_or_else(|| LinkError::Protocol(format!("bad FULLRESYNC reply: {reply}")))?;
        log::info!("Full resync from primary: {replid}:{positions:?}");
        state.link.sync_in_progress.store(true, Ordering::Release);
        // Until the snapshot is in, this server holds no history of the primary to continue.
        state.set_cached_primary(None);
        applier = Applier::new(session, positions);
        applier.run(0, Args::from_vecs(["FLUSHALL"])).await;
        receive_snapshot(&mut input, &mut applier).await?;
        state.adopt_replid(&replid);
        state.set_cached_primary(Some((replid, applier.processed.clone())));
        state.link.sync_in_progress.store(false, Ordering::Release);
        log::info!("PRIMARY <-> REPLICA sync: Finished with success");
    } else if let Some(replid) = reply.strip_prefix("+CONTINUE") {
        let Some((cached_id, positions)) = cached else {
            return Err(LinkError::Protocol(
                "CONTINUE without a cached primary".into(),
            ));
        };
        let replid = replid.trim();
        let replid = if replid.is_empty() {
            cached_id
        } else {
            replid.to_string()
        };
        log::info!("Successful partial resynchronization with primary, from {positions:?}");
        state.adopt_replid(&replid);
        applier = Applier::new(session, positions);
    } else {
        return Err(LinkError::Refused(reply));
    }
    input.check()?;
    state.link.up.store(true, Ordering::Release);
    state.link.last_io_ms.store(unix_ms(), Ordering::Release);
    applier.publish();
    shared.borrow_mut().received = applier.processed.clone();
    glommio::spawn_local(send_acks(Rc::clone(home), writer, Rc::clone(&shared))).detach();
    input.acks = Some(Rc::clone(&shared));
    let result = receive_stream(&mut input, &mut applier, &shared).await;
    {
        let mut acks = shared.borrow_mut();
        acks.closed = true;
        if let Some(w) = acks.waker.take() {
            w.wake();
        }
    }
    if state.link_generation() == generation {
        let cached = applier
            .resumable()
            .then(|| (state.replids().0, applier.processed.clone()));
        state.set_cached_primary(cached);
    }
    result
}

async fn handshake(
    home: &Rc<Shard>,
    writer: &mut TcpStream,
    input: &mut Input,
) -> Result<(), LinkError> {
    send(writer, &[b"PING"]).await?;
    let pong = input.line().await?;
    let auth_needed = pong.starts_with("-NOAUTH");
    if !(pong.starts_with('+') || auth_needed) {
        return Err(LinkError::Refused(pong));
    }
    let config = home.config();
    if !config.masterauth.is_empty() {
        send(writer, &[b"AUTH", config.masterauth.as_bytes()]).await?;
        let reply = input.line().await?;
        if !reply.starts_with('+') {
            return Err(LinkError::Refused(format!("AUTH: {reply}")));
        }
    } else if auth_needed {
        return Err(LinkError::Refused(
            "the primary requires a password: set masterauth".into(),
        ));
    }
    let port = home.server.tcp_port.to_string();
    send(writer, &[b"REPLCONF", b"listening-port", port.as_bytes()]).await?;
    send(
        writer,
        &[
            b"REPLCONF",
            b"capa",
            b"eof",
            b"capa",
            b"psync2",
            b"capa",
            b"corekv",
        ],
    )
    .await?;
    // Valkey's replica ignores these replies (an old primary may not know an option).
    input.line().await?;
    input.line().await?;
    Ok(())
}

fn protocol_limits() -> ParseLimits {
    ParseLimits {
        max_bulk_bytes: i64::MAX,
        unauthenticated: false,
    }
}

/// Applies `SNAP` messages until `SYNCED`.
async fn receive_snapshot(input: &mut Input, applier: &mut Applier) -> Result<(), LinkError> {
    let mut parser = RequestParser::new();
    loop {
        loop {
            let message = match parser.parse(&mut input.buf, protocol_limits()) {
                Ok(Parsed::Command(args)) => args,
                Ok(Parsed::NeedMore) => break,
                Err(e) => return Err(LinkError::Protocol(e.to_string())),
            };
            input.check()?;
            if message.is(0, "synced") {
                applier.settle()?;
                return Ok(());
            }
            if message.is(0, "snap") && message.len() == 3 {
                applier.key_states(&message.bytes(2)).await?;
            } else if !message.is(0, "ping") {
                return Err(LinkError::Protocol(format!(
                    "unexpected '{}' during the sync",
                    message.text(0)
                )));
            }
        }
        applier.settle()?;
        input.fill().await?;
    }
}

/// Applies the live stream; answers GETACK through the acknowledgement task.
async fn receive_stream(
    input: &mut Input,
    applier: &mut Applier,
    acks: &RefCell<Acks>,
) -> Result<(), LinkError> {
    let mut parser = RequestParser::new();
    loop {
        let mut getack = false;
        loop {
            let message = match parser.parse(&mut input.buf, protocol_limits()) {
                Ok(Parsed::Command(args)) => args,
                Ok(Parsed::NeedMore) => break,
                Err(e) => return Err(LinkError::Protocol(e.to_string())),
            };
            input.check()?;
            if message.is(0, "log") && message.len() == 4 {
                let shard = std::str::from_utf8(message.get(1))
                    .ok()
                    .and_then(|s| s.parse::<usize>().ok());
                let start = std::str::from_utf8(message.get(2))
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok());
                let (Some(shard), Some(start)) = (shard, start) else {
                    return Err(LinkError::Protocol("bad LOG message".into()));
                };
                applier.records(shard, start, &message.bytes(3)).await?;
            } else if message.is(0, "replconf") && message.is(1, "getack") {
                getack = true;
            } else if !message.is(0, "ping") {
                return Err(LinkError::Protocol(format!(
                    "unexpected '{}' in the stream",
                    message.text(0)
                )));
            }
        }
        applier.settle()?;
        {
            let mut acks = acks.borrow_mut();
            acks.received = applier.processed.clone();
            if acks.written.len() >= FACK_QUEUE_MAX {
                acks.written.pop_front();
            }
            acks.written
                .push_back((applier.processed.clone(), applier.session.woff.clone()));
            acks.getack |= getack;
            if getack {
                if let Some(w) = acks.waker.take() {
                    w.wake();
                }
            }
        }
        applier.publish();
        input.fill().await?;
    }
}

/// What the acknowledgement task works from.
#[derive(Default)]
struct Acks {
    /// Per primary shard: the position applied.
    received: Vec<u64>,
    /// (applied positions, this server's write positions right after) in order: once this
    /// server's AOF covers the write positions, the applied positions are durable.
    written: VecDeque<(Vec<u64>, Vec<u64>)>,
    /// Per primary shard: the position durable here.
    fsynced: Vec<u64>,
    getack: bool,
    closed: bool,
    /// Sending failed: the link must end.
    failed: Option<String>,
    waker: Option<Waker>,
}

/// Sends acknowledgements every second and at each GETACK, until the link closes; a failed send
/// is left for the link to see.
async fn send_acks(home: Rc<Shard>, mut writer: TcpStream, acks: Rc<RefCell<Acks>>) {
    if let Err(e) = ack_loop(&home, &mut writer, &acks).await {
        let mut a = acks.borrow_mut();
        a.failed = Some(e.to_string());
    }
}

async fn ack_loop(
    home: &Rc<Shard>,
    writer: &mut TcpStream,
    acks: &RefCell<Acks>,
) -> Result<(), LinkError> {
    loop {
        send_ack(home, writer, acks, false).await?;
        let getack = std::future::poll_fn(|cx| {
            let mut a = acks.borrow_mut();
            if a.closed {
                return Poll::Ready(false);
            }
            if std::mem::take(&mut a.getack) {
                return Poll::Ready(true);
            }
            a.waker = Some(cx.waker().clone());
            Poll::Pending
        });
        let tick = async {
            glommio::timer::sleep(ACK_PERIOD).await;
            false
        };
        if futures_lite::future::or(getack, tick).await {
            // At once what was received (WAIT), then what is durable once it is (WAITAOF).
            send_ack(home, writer, acks, false).await?;
            send_ack(home, writer, acks, true).await?;
        }
        if acks.borrow().closed {
            return Ok(());
        }
    }
}

/// Sends one acknowledgement; with `sync`, first asks every shard to make the writes applied
/// so far durable. FACK goes only with the AOF on.
async fn send_ack(
    home: &Rc<Shard>,
    writer: &mut TcpStream,
    acks: &RefCell<Acks>,
    sync: bool,
) -> Result<(), LinkError> {
    let aof_on = home.config().appendonly && !home.server.rewrite.turning_on();
    if aof_on {
        if sync {
            let latest = acks.borrow().written.back().map(|(_, w)| w.clone());
            for (s, w) in latest.unwrap_or_default().into_iter().enumerate() {
                if w > 0 {
                    let _ = home.call_async(s, move |s| s.durable(w, true)).await;
                }
            }
        }
        let mut durable = Vec::with_capacity(home.count());
        for s in 0..home.count() {
            let d = home
                .call(s, |s| s.with_aof(|a| a.durable()))
                .await
                .ok()
                .flatten();
            durable.push(d);
        }
        let mut a = acks.borrow_mut();
        while let Some((received, written)) = a.written.front() {
            let covered = written
                .iter()
                .zip(&durable)
                .all(|(&w, d)| w == 0 || d.is_some_and(|d| d >= w));
            if !covered {
                break;
            }
            a.fsynced = received.clone();
            a.written.pop_front();
        }
    }
    let (received, fsynced) = {
        let a = acks.borrow();
        (format_positions(&a.received), format_positions(&a.fsynced))
    };
    if received.is_empty() {
        return Ok(());
    }
    if aof_on && !fsynced.is_empty() {
        send(
            writer,
            &[
                b"REPLCONF",
                b"ACK",
                received.as_bytes(),
                b"FACK",
                fsynced.as_bytes(),
            ],
        )
        .await
    } else {
        send(writer, &[b"REPLCONF", b"ACK", received.as_bytes()]).await
    }
}

/// A transaction of the primary whose parts are still arriving.
struct PendingTx {
    shards: Vec<u16>,
    parts: BTreeMap<usize, (Vec<LoggedCommand>, u64)>,
}

/// Applies the primary's records through this server's own command path.
struct Applier {
    session: Session,
    /// Per primary shard: the position after the last record applied.
    processed: Vec<u64>,
    /// Per primary shard: the transaction whose other parts it waits for.
    blocked: Vec<Option<TxTag>>,
    /// Per primary shard: records that arrived while it was blocked.
    queued: Vec<VecDeque<(Record, u64)>>,
    txs: HashMap<TxTag, PendingTx>,
    /// Something the primary sent was not applied: only a full sync makes this server equal
    /// to the primary again.
    diverged: bool,
    /// Per primary shard: the end of the last part applied ahead of its turn (a resync from
    /// `processed` would apply it again, so a link lost before `processed` passes it must be
    /// followed by a full sync).
    ahead: Vec<u64>,
}

impl Applier {
    fn new(session: Session, processed: Vec<u64>) -> Applier {
        let shards = processed.len();
        Applier {
            session,
            processed,
            blocked: vec![None; shards],
            queued: (0..shards).map(|_| VecDeque::new()).collect(),
            txs: HashMap::new(),
            diverged: false,
            ahead: vec![0; shards],
        }
    }

    /// Whether a partial resync from `processed` would give exactly the primary's data.
    fn resumable(&self) -> bool {
        !self.diverged && self.ahead.iter().zip(&self.processed).all(|(a, p)| a <= p)
    }

    /// Runs one command as the primary client.
    async fn run(&mut self, db: u32, args: Args) {
        let db = db as usize;
        if db >= self.session.shard.config().databases {
            // The primary has more databases than this replica: as SELECT would, refuse.
            log::warn!(
                "Skipped a command of the primary for database {db}: this server has {} \
                 databases",
                self.session.shard.config().databases
            );
            return;
        }
        self.session.db = db;
        self.session.handle(args).await;
    }

    /// Finishes what was applied so far (this server's write positions are then known) and
    /// drops the replies.
    /// Fails when this server's AOF refused a write of the primary (`-MISCONF`): what was
    /// refused is unknown, so the link ends and the next one syncs in full.
    fn settle(&mut self) -> Result<(), LinkError> {
        let refused = self
            .session
            .out
            .as_bytes()
            .windows(MISCONF.len())
            .any(|w| w == MISCONF);
        self.session.discard_replies();
        if refused {
            self.diverged = true;
            return Err(LinkError::Refused(
                "this server's AOF refused a write of the primary (MISCONF)".into(),
            ));
        }
        Ok(())
    }

    /// Publishes the applied positions for INFO.
    fn publish(&self) {
        let total = self.processed.iter().sum();
        self.session
            .shard
            .server
            .replication
            .link
            .processed
            .store(total, Ordering::Release);
    }

    async fn key_states(&mut self, bytes: &Bytes) -> Result<(), LinkError> {
        let mut at = 0;
        while at < bytes.len() {
            let position = at as u64;
            let record::Read::Record(record, len) = record::decode(bytes, at, position) else {
                return Err(LinkError::Protocol("bad snapshot record".into()));
            };
            at += len;
            if let Body::KeyState(state) = record.body {
                self.key_state(state).await;
            }
        }
        self.session.flush_group().await;
        Ok(())
    }

    async fn key_state(&mut self, state: record::KeyState) {
        let StoredValue::String(value) = state.value;
        let key: &[u8] = &state.key;
        let args = match state.expire_ms {
            Some(at) => Args::from_vecs([
                b"SET".as_slice(),
                key,
                &value,
                b"PXAT",
                at.to_string().as_bytes(),
            ]),
            None => Args::from_vecs([b"SET".as_slice(), key, &value]),
        };
        self.run(state.db, args).await;
    }

    /// Applies a `LOG` message: records of primary shard `shard` from `start` on.
    async fn records(&mut self, shard: usize, start: u64, bytes: &Bytes) -> Result<(), LinkError> {
        if shard >= self.processed.len() {
            return Err(LinkError::Protocol(format!("no primary shard {shard}")));
        }
        let mut at = 0;
        let mut position = start;
        while at < bytes.len() {
            let record::Read::Record(record, len) = record::decode(bytes, at, position) else {
                // What was applied so far counts (its positions were recorded).
                self.session.flush_group().await;
                return Err(LinkError::Protocol(format!(
                    "bad record of shard {shard} at {position}"
                )));
            };
            at += len;
            position += len as u64;
            self.record(shard, record, position).await;
        }
        if self.blocked.iter().any(Option::is_some) {
            self.untangle().await;
        }
        self.session.flush_group().await;
        Ok(())
    }

    /// Applies one record ending at `end`, or queues it behind a transaction still arriving;
    /// then whatever a completed transaction released.
    async fn record(&mut self, shard: usize, record: Record, end: u64) {
        if self.blocked[shard].is_some() {
            self.queued[shard].push_back((record, end));
        } else {
            let released = self.apply(shard, record, end).await;
            self.drain(released).await;
        }
    }

    /// Applies what the shards in `released` have queued, until each is blocked again.
    async fn drain(&mut self, mut released: Vec<usize>) {
        while let Some(s) = released.pop() {
            while self.blocked[s].is_none() {
                let Some((record, end)) = self.queued[s].pop_front() else {
                    break;
                };
                released.extend(self.apply(s, record, end).await);
            }
        }
    }

    /// Two transactions of the primary on different keys may commit in one order on one shard
    /// and in the other order on another: each of those shards' streams then waits at a part
    /// whose partner is queued behind the other transaction's part. A queued part may run ahead
    /// of what is queued before it on its shard when none of that touches its keys (commands on
    /// different keys commute); once a transaction is whole that way, it runs.
    async fn untangle(&mut self) {
        while let Some((tx, jumps)) = self.find_runnable() {
            let mut parts: BTreeMap<usize, (Vec<LoggedCommand>, u64)> =
                self.txs.remove(&tx).map(|p| p.parts).unwrap_or_default();
            let heads: Vec<usize> = parts.keys().copied().collect();
            for (s, i) in jumps {
                let Some((record, end)) = self.queued[s].remove(i) else {
                    continue;
                };
                if let Body::TxPart { commands, .. } = record.body {
                    parts.insert(s, (commands, end));
                    self.ahead[s] = self.ahead[s].max(end);
                }
            }
            let ends: Vec<(usize, u64)> = parts.iter().map(|(s, (_, end))| (*s, *end)).collect();
            self.transaction(merge_parts(parts.into_values().map(|(c, _)| c).collect()))
                .await;
            for (s, end) in ends {
                if heads.contains(&s) {
                    self.processed[s] = self.processed[s].max(end);
                    self.blocked[s] = None;
                }
            }
            self.drain(heads).await;
        }
    }

    /// A transaction a stream waits at whose missing parts are all queued on their shards and
    /// may run ahead of what is queued before them (see [`Applier::untangle`]), with where
    /// those parts are. Only the transactions at the heads are candidates: a cycle of waiting
    /// streams always has one of them.
    fn find_runnable(&self) -> Option<(TxTag, Vec<(usize, usize)>)> {
        let waiting: HashSet<TxTag> = self.blocked.iter().flatten().copied().collect();
        for tx in waiting {
            let Some(pending) = self.txs.get(&tx) else {
                continue;
            };
            let mut jumps = Vec::new();
            let whole = pending.shards.iter().all(|&t| {
                let t = usize::from(t);
                if pending.parts.contains_key(&t) {
                    return true;
                }
                let Some(queue) = self.queued.get(t) else {
                    return false;
                };
                let Some(i) = queue.iter().position(
                    |(r, _)| matches!(&r.body, Body::TxPart { tx: other, .. } if *other == tx),
                ) else {
                    return false;
                };
                if !self.may_run_ahead(t, i) {
                    return false;
                }
                jumps.push((t, i));
                true
            });
            if whole && !jumps.is_empty() {
                return Some((tx, jumps));
            }
        }
        None
    }

    /// Whether record `i` of shard `shard`'s queue touches none of the keys of what comes
    /// before it there (the blocked part at the head, and the records queued before it).
    fn may_run_ahead(&self, shard: usize, i: usize) -> bool {
        let Some(mine) = self.queued[shard]
            .get(i)
            .and_then(|(r, _)| keys_of_record(r))
        else {
            return false;
        };
        let mine: HashSet<(u32, &[u8])> = mine.iter().map(|(db, k)| (*db, k.as_slice())).collect();
        let disjoint = |keys: Option<Vec<(u32, Vec<u8>)>>| {
            keys.is_some_and(|keys| {
                !keys
                    .iter()
                    .any(|(db, k)| mine.contains(&(*db, k.as_slice())))
            })
        };
        let head = self.blocked[shard]
            .and_then(|h| self.txs.get(&h))
            .and_then(|p| p.parts.get(&shard))
            .map(|(commands, _)| keys_of(commands));
        if head.is_some_and(|keys| !disjoint(keys)) {
            return false;
        }
        self.queued[shard]
            .iter()
            .take(i)
            .all(|(r, _)| disjoint(keys_of_record(r)))
    }

    /// Applies a record; returns the shards a completed transaction released.
    async fn apply(&mut self, shard: usize, record: Record, end: u64) -> Vec<usize> {
        match record.body {
            Body::Commands(commands) => {
                for c in commands {
                    self.run(c.db, c.args).await;
                }
                self.processed[shard] = end;
                Vec::new()
            }
            Body::KeyState(state) => {
                self.key_state(state).await;
                self.processed[shard] = end;
                Vec::new()
            }
            Body::TxPart {
                tx,
                shards,
                commands,
                ..
            } => {
                let pending = self.txs.entry(tx).or_insert_with(|| PendingTx {
                    shards,
                    parts: BTreeMap::new(),
                });
                pending.parts.insert(shard, (commands, end));
                let complete = pending
                    .shards
                    .iter()
                    .all(|&s| pending.parts.contains_key(&usize::from(s)));
                if !complete {
                    self.blocked[shard] = Some(tx);
                    return Vec::new();
                }
                let Some(done) = self.txs.remove(&tx) else {
                    return Vec::new();
                };
                let mut parts = Vec::with_capacity(done.parts.len());
                let mut ends = Vec::with_capacity(done.parts.len());
                for (s, (commands, end)) in done.parts {
                    ends.push((s, end));
                    parts.push(commands);
                }
                self.transaction(merge_parts(parts)).await;
                let mut released = Vec::with_capacity(ends.len());
                for (s, end) in ends {
                    self.processed[s] = self.processed[s].max(end);
                    self.blocked[s] = None;
                    released.push(s);
                }
                released
            }
        }
    }

    /// Runs the commands of a primary transaction as one transaction here.
    async fn transaction(&mut self, mut commands: Vec<LoggedCommand>) {
        let databases = self.session.shard.config().databases;
        let before = commands.len();
        commands.retain(|c| (c.db as usize) < databases);
        if commands.len() < before {
            log::warn!(
                "Skipped {} command(s) of a primary transaction for databases this server does \
                 not have ({databases})",
                before - commands.len()
            );
        }
        if commands.is_empty() {
            return;
        }
        self.run(0, Args::from_vecs(["MULTI"])).await;
        let mut db = None;
        for c in commands {
            if db != Some(c.db) {
                let select = Args::from_vecs([b"SELECT".as_slice(), c.db.to_string().as_bytes()]);
                self.run(0, select).await;
                db = Some(c.db);
            }
            self.session.handle(c.args).await;
        }
        self.run(0, Args::from_vecs(["EXEC"])).await;
    }
}

/// The (db, key) pairs commands touch; `None` when one of them has no keys or acts on whole
/// databases (it must keep its place relative to everything).
fn keys_of(commands: &[LoggedCommand]) -> Option<Vec<(u32, Vec<u8>)>> {
    let registry = Registry::get();
    let mut keys = Vec::new();
    for c in commands {
        let command = registry.lookup(c.args.get(0))?;
        let positions = command.key_positions(&c.args);
        if positions.is_empty() || is_whole_keyspace(&c.args) {
            return None;
        }
        keys.extend(
            positions
                .into_iter()
                .map(|p| (c.db, c.args.get(p).to_vec())),
        );
    }
    Some(keys)
}

fn keys_of_record(record: &Record) -> Option<Vec<(u32, Vec<u8>)>> {
    match &record.body {
        Body::Commands(commands) | Body::TxPart { commands, .. } => keys_of(commands),
        Body::KeyState(state) => Some(vec![(state.db, state.key.to_vec())]),
    }
}

/// Whether a command acts on every key of a database (each shard's part carries it).
fn is_whole_keyspace(args: &Args) -> bool {
    args.is(0, "flushall") || args.is(0, "flushdb") || args.is(0, "swapdb")
}

/// The commands of a transaction's parts in one order that runs the same here: every part
/// holds the whole-keyspace commands (FLUSHALL, SWAPDB …) at the same points, and between two
/// of them the parts touch different keys, so their order there does not matter.
fn merge_parts(parts: Vec<Vec<LoggedCommand>>) -> Vec<LoggedCommand> {
    let mut split: Vec<VecDeque<Vec<LoggedCommand>>> = Vec::with_capacity(parts.len());
    for part in parts {
        let mut stretches = VecDeque::new();
        let mut current = Vec::new();
        for c in part {
            if is_whole_keyspace(&c.args) {
                stretches.push_back(std::mem::take(&mut current));
                current.push(c);
                stretches.push_back(std::mem::take(&mut current));
            } else {
                current.push(c);
            }
        }
        stretches.push_back(current);
        split.push(stretches);
    }
    let same_shape = split.windows(2).all(|w| w[0].len() == w[1].len());
    if !same_shape {
        // Not expected from a corekv primary: keep each part's own order.
        return split.into_iter().flatten().flatten().collect();
    }
    let stretches = split.first().map_or(0, VecDeque::len);
    let mut merged = Vec::new();
    for i in 0..stretches {
        let whole = i % 2 == 1;
        for (p, part) in split.iter_mut().enumerate() {
            let stretch = std::mem::take(&mut part[i]);
            // A whole-keyspace command runs once, from the first part.
            if !whole || p == 0 {
                merged.extend(stretch);
            }
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(words: &[&str]) -> LoggedCommand {
        LoggedCommand {
            db: 0,
            args: Args::from_vecs(words),
        }
    }

    fn names(commands: &[LoggedCommand]) -> Vec<String> {
        commands
            .iter()
            .map(|c| {
                c.args
                    .iter()
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect()
    }

    #[test]
    fn parts_merge_around_whole_keyspace_commands() {
        // MULTI; SET b 1 (shard 1); FLUSHALL; SET a 2 (shard 0); EXEC
        let part0 = vec![cmd(&["FLUSHALL"]), cmd(&["SET", "a", "2"])];
        let part1 = vec![cmd(&["SET", "b", "1"]), cmd(&["FLUSHALL"])];
        assert_eq!(
            names(&merge_parts(vec![part0, part1])),
            vec!["SET b 1", "FLUSHALL", "SET a 2"]
        );
    }

    #[test]
    fn parts_without_whole_keyspace_commands_concatenate() {
        let part0 = vec![cmd(&["SET", "a", "1"])];
        let part1 = vec![cmd(&["SET", "b", "1"]), cmd(&["DEL", "c"])];
        assert_eq!(
            names(&merge_parts(vec![part0, part1])),
            vec!["SET a 1", "SET b 1", "DEL c"]
        );
    }
}
