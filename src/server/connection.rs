//! A client connection: reads requests, hands each command to the session, writes replies.
//!
//! Everything is bounded. Requests are read only while the replies already produced are below
//! [`OUTPUT_FLUSH_BYTES`]; past that the replies are written first, so a client that sends and
//! never reads is throttled by its own socket instead of growing server memory. Unparsed input
//! is capped by `client-query-buffer-limit`; a protocol error is answered, then the connection
//! closes.

use std::rc::Rc;
use std::time::Instant;

use bytes::BytesMut;
use futures_lite::AsyncReadExt;
use glommio::net::TcpStream;

use super::clients::ClientInfo;
use super::session::Session;
use crate::protocol::{Args, ParseLimits, Parsed, RequestParser};
use crate::shard::{BusyConnection, Shard};

/// Bytes read from the socket at a time.
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// Replies are written out once this much is pending, before more requests are read or run.
pub use super::session::OUTPUT_FLUSH_BYTES;

/// Why a connection ends.
enum Close {
    /// The client went away, or asked to (QUIT), or was killed.
    Normal,
    /// The client broke the protocol or a limit; logged.
    Refused(String),
}

struct Connection {
    stream: TcpStream,
    input: BytesMut,
    scratch: Vec<u8>,
    parser: RequestParser,
    client: Rc<ClientInfo>,
    shard: Rc<Shard>,
    /// Held from the first command accepted until every command accepted has run (grouped
    /// calls to other shards included): a shutdown waits for it before its last sync. Not
    /// held while a blocking command (WAIT, WAITAOF) waits.
    busy: Option<BusyConnection>,
}

impl Connection {
    /// Reads more input; `Ok(false)` at end of stream or when the client was killed.
    async fn read_more(&mut self) -> std::io::Result<bool> {
        let client = Rc::clone(&self.client);
        let read = async {
            let n = self.stream.read(&mut self.scratch).await?;
            Ok::<usize, std::io::Error>(n)
        };
        let killed = async {
            client.killed().await;
            Ok(0)
        };
        let n = futures_lite::future::or(read, killed).await?;
        if n == 0 {
            return Ok(false);
        }
        self.input.extend_from_slice(&self.scratch[..n]);
        self.client
            .total_net_in
            .set(self.client.total_net_in.get() + n as u64);
        self.client.last_interaction.set(Instant::now());
        self.client.query_buffer_bytes.set(self.input.len());
        self.shard.stats.borrow_mut().net_input_bytes += n as u64;
        Ok(true)
    }

    /// Runs a command that may block (WAITAOF), reading the socket meanwhile into the input
    /// buffer as Valkey does, so that a client that goes away is noticed and its wait dropped.
    /// True if the client went away (or overflowed its query buffer).
    async fn handle_watching_close(&mut self, session: &mut Session, args: Args) -> bool {
        let limit = self.shard.config().client_query_buffer_limit;
        let stream = &mut self.stream;
        let input = &mut self.input;
        let scratch = &mut self.scratch;
        let client = Rc::clone(&self.client);
        let run = async {
            session.handle(args).await;
            false
        };
        let gone = async {
            loop {
                match stream.read(scratch).await {
                    Ok(0) | Err(_) => return true,
                    Ok(n) => {
                        input.extend_from_slice(&scratch[..n]);
                        if input.len() as u64 > limit {
                            return true;
                        }
                    }
                }
            }
        };
        let killed = async {
            client.killed().await;
            true
        };
        futures_lite::future::or(run, futures_lite::future::or(gone, killed)).await
    }

    /// Runs every complete command in the input. `Some` when the connection must close.
    async fn run_buffered(&mut self, session: &mut Session) -> std::io::Result<Option<Close>> {
        loop {
            let config = self.shard.config();
            let limits = ParseLimits {
                max_bulk_bytes: config.proto_max_bulk_len,
                unauthenticated: session.needs_auth(),
            };
            match self.parser.parse(&mut self.input, limits) {
                Ok(Parsed::Command(args)) => {
                    // Busy before the check: a shutdown that began before it finds this
                    // connection refusing, one that begins after it waits for its commands.
                    if self.busy.is_none() {
                        self.busy = Some(self.shard.connection_busy());
                    }
                    if self.shard.server.stopping() {
                        // Shutting down: the logs' last sync must cover every write
                        // acknowledged, so nothing more runs (Valkey runs nothing once SHUTDOWN
                        // started either); what was accepted before still runs to the end.
                        return Ok(Some(Close::Normal));
                    }
                    if is_blocking(&args) {
                        // It may wait without end and writes nothing: a shutdown does not wait
                        // for it, only for what came before it.
                        session.flush_group().await;
                        self.busy = None;
                        if self.handle_watching_close(session, args).await {
                            return Ok(Some(Close::Normal));
                        }
                    } else {
                        session.handle(args).await;
                    }
                    if session.close_after_reply {
                        session.flush_group().await;
                        return Ok(Some(Close::Normal));
                    }
                    if session.out.len() >= OUTPUT_FLUSH_BYTES {
                        session.flush_group().await;
                        // Everything accepted has run: a client slow to read its replies does
                        // not hold up a shutdown.
                        self.busy = None;
                        if !session.write_out().await? {
                            return Ok(Some(Close::Normal));
                        }
                    }
                }
                Ok(Parsed::NeedMore) => {
                    self.client.query_buffer_bytes.set(self.input.len());
                    return Ok(None);
                }
                Err(e) => {
                    session.flush_group().await;
                    let message = format!("ERR {e}");
                    session.out.error(&message);
                    self.shard.stats.borrow_mut().record_error(&message);
                    return Ok(Some(Close::Refused(format!(
                        "Protocol error ({e}) from client id={} addr={}",
                        self.client.id, self.client.addr
                    ))));
                }
            }
        }
    }
}

/// True for commands that may wait indefinitely (their table flag says `blocking`).
fn is_blocking(args: &Args) -> bool {
    crate::command::table::Registry::get()
        .lookup(args.get(0))
        .is_some_and(|c| c.has_flag(crate::command::table::flags::BLOCKING))
}

/// Serves one client until it disconnects, is killed, or breaks the protocol.
pub async fn serve(shard: Rc<Shard>, stream: TcpStream, writer: TcpStream, client: Rc<ClientInfo>) {
    let mut session = Session::new(Rc::clone(&shard), Rc::clone(&client), writer);
    let mut conn = Connection {
        stream,
        input: BytesMut::with_capacity(READ_CHUNK_BYTES),
        scratch: vec![0; READ_CHUNK_BYTES],
        parser: RequestParser::new(),
        client,
        shard,
        busy: None,
    };
    let outcome = serve_loop(&mut conn, &mut session).await;
    conn.busy = None;
    match outcome {
        Ok(Close::Normal) => {}
        Ok(Close::Refused(why)) => log::debug!("{why}"),
        Err(e) => log::debug!("client id={} closed: {e}", conn.client.id),
    }
    session.close();
    if let (Some(psync), Some(writer)) = (session.handoff.take(), session.take_writer()) {
        crate::replication::primary::serve(
            conn.shard,
            conn.stream,
            writer,
            conn.client,
            psync,
            session.replica_listening_port,
            conn.input,
        )
        .await;
    }
}

async fn serve_loop(conn: &mut Connection, session: &mut Session) -> std::io::Result<Close> {
    loop {
        let close = conn.run_buffered(session).await?;
        session.flush_group().await;
        // Every command accepted so far has run.
        conn.busy = None;
        if !session.write_out().await? {
            return Ok(Close::Normal);
        }
        if let Some(close) = close {
            return Ok(close);
        }
        let limit = conn.shard.config().client_query_buffer_limit;
        if conn.input.len() as u64 > limit {
            return Ok(Close::Refused(format!(
                "Closing client that reached max query buffer length: id={} addr={} (qbuf {} bytes)",
                conn.client.id,
                conn.client.addr,
                conn.input.len()
            )));
        }
        if !conn.read_more().await? {
            return Ok(Close::Normal);
        }
    }
}
