//! Listening sockets and the accept loop of each shard.
//!
//! Every shard accepts on its own SO_REUSEPORT socket for each bound address, and a connection
//! stays on the shard that accepted it. Before any of them is bound, the address is bound once
//! *without* SO_REUSEPORT: if anything else listens there (another corekv included) that fails,
//! so SO_REUSEPORT can never let a second server share the port silently.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use glommio::net::{TcpListener, TcpStream};
use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};

use super::clients::ClientInfo;
use super::connection;
use crate::shard::Shard;

/// Pending connections the kernel queues per socket (Valkey's `tcp-backlog` default).
const LISTEN_BACKLOG: i32 = 511;
/// Pause after an accept error (for example out of file descriptors) before trying again.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// The reply to a client refused by protected mode (Valkey's text, with our name).
const PROTECTED_MODE_DENIED: &str = "-DENIED corekv is running in protected mode because \
protected mode is enabled and no password is set for the default user. In this mode connections \
are only accepted from the loopback interface. If you want to connect from external computers to \
corekv you may adopt one of the following solutions: 1) Just disable protected mode sending the \
command 'CONFIG SET protected-mode no' from the loopback interface by connecting to corekv from \
the same host the server is running, however MAKE SURE corekv is not publicly accessible from \
internet if you do so. 2) Alternatively you can just disable the protected mode by editing the \
corekv configuration file, and setting the protected mode option to 'no', and then restarting the \
server. 3) If you started the server manually just for testing, restart it with the \
'--protected-mode no' option. 4) Set up an authentication password for the default user. NOTE: \
You only need to do one of the above things in order for the server to start accepting connections \
from the outside.\r\n";

fn socket_for(addr: SocketAddr, reuse_port: bool) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// Binds `shards` listening sockets on `addr`, refusing a port something else listens on.
pub fn bind(addr: SocketAddr, shards: usize) -> std::io::Result<Vec<RawFd>> {
    drop(socket_for(addr, false)?);
    let mut fds = Vec::with_capacity(shards);
    for _ in 0..shards {
        let socket = socket_for(addr, true)?;
        socket.listen(LISTEN_BACKLOG)?;
        fds.push(socket.into_raw_fd());
    }
    Ok(fds)
}

/// The addresses to listen on, from `bind`; optional ones (`-addr`) are skipped if they fail.
pub fn bind_all(binds: &[String], port: u16, shards: usize) -> Result<Vec<Vec<RawFd>>, String> {
    let mut per_address = Vec::new();
    for text in binds {
        let (ip, optional): (IpAddr, bool) = crate::config::parse_bind_address(text)?;
        let addr = SocketAddr::new(ip, port);
        match bind(addr, shards) {
            Ok(fds) => per_address.push(fds),
            Err(e) if optional => log::warn!("Skipping optional address {addr}: {e}"),
            Err(e) => {
                return Err(format!(
                    "Could not create server TCP listening socket {addr}: {e}. Is another \
                     server (corekv or Valkey) already listening on port {port}?"
                ))
            }
        }
    }
    if per_address.is_empty() {
        return Err("Failed listening on any address, aborting.".to_string());
    }
    Ok(per_address)
}

/// Accepts connections on `fd` forever, each served on this shard.
pub async fn accept_loop(shard: Rc<Shard>, fd: RawFd) {
    // SAFETY: `fd` is a listening socket made by `bind` and handed to exactly this shard, which
    // now owns it.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    loop {
        match listener.accept().await {
            Ok(stream) => admit(&shard, stream).await,
            Err(_) if shard.server.stopping() => {
                // The descriptor stays open until exit: `begin_shutdown` may still be about
                // to use its number.
                std::mem::forget(listener);
                return;
            }
            Err(e) => {
                log::warn!("Accepting a client connection failed: {e}");
                glommio::timer::sleep(ACCEPT_RETRY_DELAY).await;
            }
        }
    }
}

async fn admit(shard: &Rc<Shard>, mut stream: TcpStream) {
    shard.stats.borrow_mut().connections_received += 1;
    let config = shard.config();
    let (Ok(addr), Ok(laddr)) = (stream.peer_addr(), stream.local_addr()) else {
        return;
    };
    if let Err(e) = configure(&stream, config.tcp_keepalive_s) {
        log::debug!("Could not set socket options for {addr}: {e}");
    }
    if config.protected_mode && config.requirepass.is_empty() && !addr.ip().is_loopback() {
        shard.stats.borrow_mut().rejected_connections += 1;
        refuse(&mut stream, PROTECTED_MODE_DENIED).await;
        return;
    }
    if !shard.server.try_admit_client(config.maxclients) {
        shard.stats.borrow_mut().rejected_connections += 1;
        refuse(&mut stream, "-ERR max number of clients reached\r\n").await;
        return;
    }
    let writer = match second_handle(&stream) {
        Ok(writer) => writer,
        Err(e) => {
            log::warn!("Could not set up the connection from {addr}: {e}");
            shard.server.release_client();
            return;
        }
    };
    let id = shard.server.next_client_id();
    let client = Rc::new(ClientInfo::new(id, addr, laddr, stream.as_raw_fd()));
    shard.clients.borrow_mut().add(Rc::clone(&client));
    let s = Rc::clone(shard);
    glommio::spawn_local(async move {
        connection::serve(Rc::clone(&s), stream, writer, Rc::clone(&client)).await;
        s.clients.borrow_mut().remove(client.id);
        s.server.release_client();
    })
    .detach();
}

/// A second descriptor for the same socket: replies are written through it while the
/// connection reads through the first (a blocked client is still read from).
pub fn second_handle(stream: &TcpStream) -> std::io::Result<TcpStream> {
    // SAFETY: the descriptor belongs to `stream`, which outlives this borrow.
    let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    let socket = SockRef::from(&fd).try_clone()?;
    // SAFETY: `try_clone` made a new descriptor that nothing else owns; the stream takes it.
    Ok(unsafe { TcpStream::from_raw_fd(socket.into_raw_fd()) })
}

fn configure(stream: &TcpStream, keepalive_s: u64) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    if keepalive_s > 0 {
        // SAFETY: the descriptor belongs to `stream`, which outlives this borrow.
        let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
        let interval = Duration::from_secs(keepalive_s);
        SockRef::from(&fd).set_tcp_keepalive(
            &TcpKeepalive::new()
                .with_time(interval)
                .with_interval(interval / 3),
        )?;
    }
    Ok(())
}

async fn refuse(stream: &mut TcpStream, reply: &str) {
    use futures_lite::AsyncWriteExt;
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.close().await;
}
