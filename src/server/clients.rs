//! The clients connected to one shard, as CLIENT LIST, CLIENT KILL and INFO clients see them.
//! A connection updates its own entry; other shards reach it only through messages.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Instant;

/// What CLIENT LIST shows of one connection, and the switch that closes it.
#[derive(Debug)]
pub struct ClientInfo {
    pub id: u64,
    pub addr: SocketAddr,
    pub laddr: SocketAddr,
    pub fd: i32,
    pub created: Instant,
    pub name: RefCell<String>,
    pub lib_name: RefCell<String>,
    pub lib_ver: RefCell<String>,
    pub db: Cell<usize>,
    pub resp: Cell<i64>,
    pub last_interaction: Cell<Instant>,
    pub last_command: Cell<&'static str>,
    /// Commands queued in MULTI, or -1 outside one.
    pub multi: Cell<i64>,
    pub watched_keys: Cell<usize>,
    pub query_buffer_bytes: Cell<usize>,
    pub output_bytes: Cell<usize>,
    pub total_net_in: Cell<u64>,
    pub total_net_out: Cell<u64>,
    pub total_commands: Cell<u64>,
    pub no_evict: Cell<bool>,
    pub authenticated: Cell<bool>,
    /// The connection is a replica's replication link (flag `S`).
    pub replica: Cell<bool>,
    killed: Cell<bool>,
    kill_waker: RefCell<Option<Waker>>,
}

impl ClientInfo {
    pub fn new(id: u64, addr: SocketAddr, laddr: SocketAddr, fd: i32) -> Self {
        let now = Instant::now();
        ClientInfo {
            id,
            addr,
            laddr,
            fd,
            created: now,
            name: RefCell::new(String::new()),
            lib_name: RefCell::new(String::new()),
            lib_ver: RefCell::new(String::new()),
            db: Cell::new(0),
            resp: Cell::new(2),
            last_interaction: Cell::new(now),
            last_command: Cell::new("NULL"),
            multi: Cell::new(-1),
            watched_keys: Cell::new(0),
            query_buffer_bytes: Cell::new(0),
            output_bytes: Cell::new(0),
            total_net_in: Cell::new(0),
            total_net_out: Cell::new(0),
            total_commands: Cell::new(0),
            no_evict: Cell::new(false),
            authenticated: Cell::new(true),
            replica: Cell::new(false),
            killed: Cell::new(false),
            kill_waker: RefCell::new(None),
        }
    }

    /// Asks the connection to close (CLIENT KILL, idle timeout).
    pub fn kill(&self) {
        self.killed.set(true);
        if let Some(w) = self.kill_waker.borrow_mut().take() {
            w.wake();
        }
    }

    pub fn is_killed(&self) -> bool {
        self.killed.get()
    }

    /// Completes when the connection has been asked to close.
    pub async fn killed(&self) {
        std::future::poll_fn(|cx| {
            if self.killed.get() {
                Poll::Ready(())
            } else {
                *self.kill_waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    fn flags(&self) -> String {
        let mut flags = String::new();
        if self.replica.get() {
            flags.push('S');
        }
        if self.multi.get() >= 0 {
            flags.push('x');
        }
        if self.no_evict.get() {
            flags.push('e');
        }
        if flags.is_empty() {
            flags.push('N');
        }
        flags
    }

    /// One line of CLIENT LIST / CLIENT INFO (without the newline), in Valkey's field order.
    pub fn describe(&self, now: Instant) -> String {
        let age = now.duration_since(self.created).as_secs();
        let idle = now.duration_since(self.last_interaction.get()).as_secs();
        let qbuf = self.query_buffer_bytes.get();
        let omem = self.output_bytes.get();
        format!(
            "id={} addr={} laddr={} fd={} name={} age={} idle={} flags={} db={} sub=0 psub=0 \
             ssub=0 multi={} watch={} qbuf={} qbuf-free={} argv-mem=0 multi-mem=0 rbs={} rbp={} \
             obl=0 oll=0 omem={} tot-mem={} events=r cmd={} user=default redir=-1 resp={} \
             lib-name={} lib-ver={} tot-net-in={} tot-net-out={} tot-cmds={}",
            self.id,
            self.addr,
            self.laddr,
            self.fd,
            self.name.borrow(),
            age,
            idle,
            self.flags(),
            self.db.get(),
            self.multi.get(),
            self.watched_keys.get(),
            qbuf,
            qbuf.next_power_of_two().saturating_sub(qbuf),
            qbuf.next_power_of_two().max(1024),
            qbuf,
            omem,
            qbuf + omem,
            self.last_command.get(),
            self.resp.get(),
            self.lib_name.borrow(),
            self.lib_ver.borrow(),
            self.total_net_in.get(),
            self.total_net_out.get(),
            self.total_commands.get(),
        )
    }
}

/// The clients of one shard, by id.
#[derive(Debug, Default)]
pub struct ClientRegistry {
    clients: BTreeMap<u64, Rc<ClientInfo>>,
}

impl ClientRegistry {
    pub fn add(&mut self, client: Rc<ClientInfo>) {
        self.clients.insert(client.id, client);
    }

    pub fn remove(&mut self, id: u64) {
        self.clients.remove(&id);
    }

    pub fn get(&self, id: u64) -> Option<&Rc<ClientInfo>> {
        self.clients.get(&id)
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Rc<ClientInfo>> {
        self.clients.values()
    }
}
