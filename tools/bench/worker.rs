//! One load thread: its share of the connections, nonblocking, multiplexed on one epoll set.
//!
//! Replies are matched to request units in order (RESP answers in order on a connection). A
//! unit's latency runs from its start (closed loop: when its batch was written; open loop: its
//! scheduled time, however late it was actually sent) to the arrival of its last reply.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::args::Workload;
use crate::error::BenchError;
use crate::plan::{Mode, Plan};
use crate::poll::{self, Epoll, Event};
use crate::resp::{self, Reply};
use crate::stats::{Shared, Stats};

/// How often a thread hands its statistics to the progress line.
const HAND_IN_EVERY: Duration = Duration::from_millis(200);
/// Initial size of a connection's input buffer; it grows for replies that do not fit.
const INPUT_BUFFER: usize = 64 * 1024;
/// Written output beyond this is dropped from the front of the buffer before appending more.
const OUTPUT_COMPACT: usize = 64 * 1024;

/// A request unit sent and not yet fully answered.
#[derive(Debug, Clone, Copy)]
struct Unit {
    start: Instant,
    measured: bool,
}

/// One connection to the server.
#[derive(Debug)]
pub struct Conn {
    /// Index among all connections, for error messages.
    global: usize,
    stream: TcpStream,
    /// Requests not yet written from `written` on.
    out: Vec<u8>,
    written: usize,
    /// Received bytes not yet parsed: `input[start..end]`.
    input: Vec<u8>,
    start: usize,
    end: usize,
    /// Units in the order they were sent.
    pending: VecDeque<Unit>,
    /// Replies already received for the front unit.
    replies_seen: usize,
    /// True while epoll also watches for writability (output is waiting on a full socket).
    watching_write: bool,
    /// True while the connection is on its thread's list of connections to write (open loop).
    dirty: bool,
}

impl Conn {
    /// Wraps a connected socket: nonblocking, with Nagle off so that requests leave at once.
    pub fn new(global: usize, stream: TcpStream) -> io::Result<Conn> {
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        Ok(Conn {
            global,
            stream,
            out: Vec::new(),
            written: 0,
            input: vec![0; INPUT_BUFFER],
            start: 0,
            end: 0,
            pending: VecDeque::new(),
            replies_seen: 0,
            watching_write: false,
            dirty: false,
        })
    }

    /// Reads once: `Some(true)` if the read filled all free space (more may be waiting),
    /// `Some(false)` after a shorter read, `None` if nothing was there.
    fn read(&mut self) -> io::Result<Option<bool>> {
        self.make_room();
        loop {
            match self.stream.read(&mut self.input[self.end..]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    self.end += n;
                    return Ok(Some(self.end == self.input.len()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Moves unparsed input to the front, or grows the buffer when a reply fills all of it.
    fn make_room(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.end < self.input.len() {
            return;
        }
        if self.start > 0 {
            self.input.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        } else {
            let len = self.input.len();
            self.input.resize(len * 2, 0);
        }
    }

    /// Writes as much pending output as the socket takes; true if all of it was written.
    fn write(&mut self) -> io::Result<bool> {
        while self.written < self.out.len() {
            match self.stream.write(&self.out[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.out.clear();
        self.written = 0;
        Ok(true)
    }

    /// Drops already written output once there is a lot of it (open loop behind a stall).
    fn compact_output(&mut self) {
        if self.written >= OUTPUT_COMPACT {
            self.out.drain(..self.written);
            self.written = 0;
        }
    }
}

/// One load thread's state.
pub struct Worker {
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    conns: Vec<Conn>,
    epoll: Epoll,
    rng: fastrand::Rng,
    /// Statistics not yet handed in.
    stats: Stats,
    /// Units completed (warm-up included) not yet handed in.
    completed: u64,
    last_hand_in: Instant,
    /// Units sent and not yet answered, on all of this thread's connections.
    outstanding: u64,
    /// Closed loop: measured units this thread may still start (`u64::MAX`: no limit).
    budget: u64,
    /// Open loop: this thread's next slot.
    next_slot: u64,
    /// This thread's index.
    index: usize,
    /// Connections with new output to write (open loop).
    dirty: Vec<usize>,
}

impl Worker {
    /// A thread with connections `conns` (its share, in local order), not yet started.
    pub fn new(
        index: usize,
        plan: Arc<Plan>,
        shared: Arc<Shared>,
        conns: Vec<Conn>,
    ) -> Result<Worker, BenchError> {
        let epoll = Epoll::new().map_err(|source| BenchError::Setup {
            what: "create an epoll set",
            source,
        })?;
        for (local, conn) in conns.iter().enumerate() {
            epoll
                .add(conn.stream.as_raw_fd(), local, poll::READ)
                .map_err(|source| BenchError::Setup {
                    what: "add a connection to the epoll set",
                    source,
                })?;
        }
        let budget = plan.thread_requests(index).unwrap_or(u64::MAX);
        let mut worker = Worker {
            plan,
            shared,
            conns,
            epoll,
            rng: fastrand::Rng::new(),
            stats: Stats::new()?,
            completed: 0,
            last_hand_in: Instant::now(),
            outstanding: 0,
            budget,
            next_slot: 0,
            index,
            dirty: Vec::new(),
        };
        worker.next_slot = worker.owned_slot_from(0);
        Ok(worker)
    }

    /// Runs the thread's share of the load to its end, then hands in its statistics.
    pub fn run(mut self) -> Result<(), BenchError> {
        let open = matches!(self.plan.mode, Mode::Open { .. });
        if open {
            tighten_timer_slack();
        } else {
            let now = Instant::now();
            for c in 0..self.conns.len() {
                self.issue_batch(c, now)?;
            }
        }
        let mut ready = Vec::new();
        while !self.finished() {
            let timeout = self.timeout(Instant::now());
            self.epoll
                .wait(&mut ready, timeout)
                .map_err(|source| BenchError::Setup {
                    what: "wait on the epoll set",
                    source,
                })?;
            for &Event { token, events } in &ready {
                if events & poll::WRITE != 0 {
                    self.flush(token)?;
                }
                // Errors and hang-ups show up as readability: the read reports them.
                if events & !poll::WRITE != 0 {
                    self.on_readable(token)?;
                }
            }
            let now = Instant::now();
            if open {
                self.send_due(now)?;
            }
            if now >= self.last_hand_in + HAND_IN_EVERY {
                self.hand_in(now);
            }
        }
        self.hand_in(Instant::now());
        Ok(())
    }

    fn finished(&self) -> bool {
        let Mode::Open { total_slots, .. } = self.plan.mode else {
            // Closed loop: a connection whose batch is answered starts the next one at once,
            // so nothing outstanding means nothing more may be started.
            return self.outstanding == 0;
        };
        self.outstanding == 0 && self.next_slot >= total_slots
    }

    /// How long to wait for events: until the next slot is due, and no longer than the next
    /// hand-in.
    fn timeout(&self, now: Instant) -> Duration {
        let hand_in = (self.last_hand_in + HAND_IN_EVERY).saturating_duration_since(now);
        match self.plan.mode {
            Mode::Open { total_slots, .. } if self.next_slot < total_slots => self
                .plan
                .slot_time(self.next_slot)
                .saturating_duration_since(now)
                .min(hand_in),
            _ => hand_in,
        }
    }

    fn hand_in(&mut self, now: Instant) {
        self.shared.hand_in(&self.stats, self.completed);
        self.stats.clear();
        self.completed = 0;
        self.last_hand_in = now;
    }

    /// Closed loop: starts connection `c`'s next batch, if the run has one left for it.
    fn issue_batch(&mut self, c: usize, now: Instant) -> Result<(), BenchError> {
        let Mode::Closed {
            measure_from,
            deadline,
            ..
        } = self.plan.mode
        else {
            return Ok(());
        };
        let measured = now >= measure_from;
        if measured && deadline.is_some_and(|d| now >= d) {
            return Ok(());
        }
        let units = if measured {
            let units = self.budget.min(self.plan.pipeline as u64);
            self.budget -= units;
            units
        } else {
            self.plan.pipeline as u64
        };
        for _ in 0..units {
            self.send_unit(
                c,
                Unit {
                    start: now,
                    measured,
                },
            );
        }
        self.flush(c)
    }

    /// Open loop: queues every slot of this thread that is due by `now`, then writes.
    fn send_due(&mut self, now: Instant) -> Result<(), BenchError> {
        let Mode::Open {
            warmup_slots,
            total_slots,
            ..
        } = self.plan.mode
        else {
            return Ok(());
        };
        while self.next_slot < total_slots {
            let due = self.plan.slot_time(self.next_slot);
            if due > now {
                break;
            }
            let (_, c) = self.plan.place(self.plan.slot_connection(self.next_slot));
            // Latency counts from `due`, not from now: a connection that falls behind
            // (a stalled server, a slow thread) shows up in the latencies.
            self.send_unit(
                c,
                Unit {
                    start: due,
                    measured: self.next_slot >= warmup_slots,
                },
            );
            if !self.conns[c].dirty {
                self.conns[c].dirty = true;
                self.dirty.push(c);
            }
            self.next_slot = self.owned_slot_from(self.next_slot + 1);
        }
        while let Some(c) = self.dirty.pop() {
            self.conns[c].dirty = false;
            self.flush(c)?;
        }
        Ok(())
    }

    /// The first open-loop slot from `j` on that one of this thread's connections sends.
    fn owned_slot_from(&self, mut j: u64) -> u64 {
        let Mode::Open { total_slots, .. } = self.plan.mode else {
            return 0;
        };
        while j < total_slots && self.plan.place(self.plan.slot_connection(j)).0 != self.index {
            j += 1;
        }
        j
    }

    /// Appends one unit's commands to connection `c`'s output.
    fn send_unit(&mut self, c: usize, unit: Unit) {
        let key = self.rng.u64(0..self.plan.keyspace);
        let requests = &self.plan.requests;
        let conn = &mut self.conns[c];
        conn.compact_output();
        let out = &mut conn.out;
        match self.plan.workload {
            Workload::Set => requests.set(out, key),
            Workload::Get => requests.get(out, key),
            Workload::Mixed { get_percent } => {
                if self.rng.u8(0..100) < get_percent {
                    requests.get(out, key)
                } else {
                    requests.set(out, key)
                }
            }
            Workload::SetWaitAof | Workload::SetWait => {
                requests.set(out, key);
                requests.wait(out);
            }
        }
        conn.pending.push_back(unit);
        self.outstanding += 1;
    }

    /// Writes connection `c`'s output, watching for writability while some is left.
    fn flush(&mut self, c: usize) -> Result<(), BenchError> {
        let conn = &mut self.conns[c];
        let done = conn.write().map_err(|e| io_error(&self.plan, conn, e))?;
        if done == conn.watching_write {
            let events = if done {
                poll::READ
            } else {
                poll::READ | poll::WRITE
            };
            self.epoll
                .modify(conn.stream.as_raw_fd(), c, events)
                .map_err(|source| BenchError::Setup {
                    what: "change a connection's epoll events",
                    source,
                })?;
            conn.watching_write = !done;
        }
        Ok(())
    }

    /// Reads what connection `c` has and handles every complete reply.
    fn on_readable(&mut self, c: usize) -> Result<(), BenchError> {
        loop {
            let conn = &mut self.conns[c];
            let more = match conn.read() {
                Ok(Some(more)) => more,
                Ok(None) => return Ok(()),
                Err(e) => return Err(io_error(&self.plan, conn, e)),
            };
            // One clock read per read(): replies that arrived together completed together.
            self.handle_replies(c, Instant::now())?;
            if !more {
                return Ok(());
            }
        }
    }

    /// Handles the complete replies in connection `c`'s input, received at `now`.
    fn handle_replies(&mut self, c: usize, now: Instant) -> Result<(), BenchError> {
        let per_unit = self.plan.workload.commands_per_unit();
        let waits = self.plan.workload.waits();
        loop {
            let conn = &mut self.conns[c];
            let base = conn.start;
            let parsed = resp::parse(&conn.input[base..conn.end]).map_err(|detail| {
                BenchError::Protocol {
                    addr: self.plan.addr.clone(),
                    conn: conn.global,
                    detail,
                }
            })?;
            let Some((reply, len)) = parsed else { break };
            conn.start += len;
            let Some(&unit) = conn.pending.front() else {
                return Err(BenchError::Protocol {
                    addr: self.plan.addr.clone(),
                    conn: conn.global,
                    detail: resp::ProtocolError("a reply to no request".into()),
                });
            };
            let last = conn.replies_seen + 1 == per_unit;
            if unit.measured {
                if let Reply::Error { start, end } = reply {
                    self.stats.error(&conn.input[base + start..base + end]);
                } else if waits && last && !acknowledged(reply) {
                    self.stats.missed_acks += 1;
                }
            }
            if !last {
                conn.replies_seen += 1;
                continue;
            }
            conn.replies_seen = 0;
            conn.pending.pop_front();
            self.outstanding -= 1;
            self.completed += 1;
            if unit.measured {
                self.stats
                    .record(now.saturating_duration_since(unit.start), now);
            }
        }
        if self.conns[c].pending.is_empty() {
            self.issue_batch(c, now)?;
        }
        Ok(())
    }
}

/// True if a WAIT reply (an integer) or WAITAOF reply (an array led by the local count)
/// reports the one acknowledgement the workload asks for.
fn acknowledged(reply: Reply) -> bool {
    matches!(reply, Reply::Integer(n) | Reply::Array { first: Some(n) } if n >= 1)
}

/// The error for a failed read or write on `conn`: an end of stream is the server closing it.
fn io_error(plan: &Plan, conn: &Conn, e: io::Error) -> BenchError {
    let addr = plan.addr.clone();
    let conn = conn.global;
    match e.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::WriteZero => BenchError::Closed { addr, conn },
        _ => BenchError::Io {
            addr,
            conn,
            source: e,
        },
    }
}

/// Asks for timer wake-ups with a nanosecond of slack instead of the default 50 µs, so that
/// open-loop requests leave on schedule.
fn tighten_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes a number and changes only this thread's timer slack;
    // failing leaves the default, which is only less precise.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
}
