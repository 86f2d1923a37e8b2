//! `corekv-bench`: a RESP2 load generator that measures corekv and Valkey alike.
//!
//! ```text
//! corekv-bench -p 6379 -c 50 --workload set -n 100000
//! corekv-bench --workload get --populate -r 100000 --duration 10 --json
//! corekv-bench --rate 20000 --duration 5 --workload set-waitaof
//! ```
//!
//! Connections are nonblocking sockets split between `--threads` threads, each multiplexing its
//! share on one epoll set, so the generator costs little CPU next to the server it measures.
//! Closed loop (the default) sends a batch of `-P` request units per connection once the
//! previous batch is answered. Open loop (`--rate`) sends units on a fixed schedule and counts
//! each unit's latency from its scheduled time, so a server stall shows in the percentiles
//! instead of slowing the load down (no coordinated omission).
//!
//! Exit status: 0 after a run (error replies are counted, not fatal), 1 when a connection
//! fails or closes, 2 for a bad command line.

#[path = "bench/args.rs"]
mod args;
#[path = "bench/error.rs"]
mod error;
#[path = "bench/plan.rs"]
mod plan;
#[path = "bench/poll.rs"]
mod poll;
#[path = "bench/populate.rs"]
mod populate;
#[path = "bench/report.rs"]
mod report;
#[path = "bench/resp.rs"]
mod resp;
#[path = "bench/stats.rs"]
mod stats;
#[path = "bench/worker.rs"]
mod worker;

use std::io::Write;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use args::{Command, Options, USAGE};
use error::BenchError;
use plan::Plan;
use report::{Latency, Summary};
use stats::Shared;
use worker::{Conn, Worker};

/// How often the progress line is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let options = match args::parse(std::env::args().skip(1)) {
        Ok(Command::Run(options)) => options,
        Ok(Command::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("corekv-bench {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("corekv-bench: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corekv-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the benchmark and prints its report.
fn run(o: &Options) -> Result<(), BenchError> {
    let addr = if o.host.contains(':') {
        format!("[{}]:{}", o.host, o.port)
    } else {
        format!("{}:{}", o.host, o.port)
    };
    let addrs = resolve(o, &addr)?;
    let populated = if o.populate {
        if !o.quiet {
            eprintln!("populating {} keys ...", o.keyspace);
        }
        Some(populate::populate(&addrs, &addr, o)?)
    } else {
        None
    };
    let conns = connect(&addrs, &addr, o.connections)?;
    let plan = Arc::new(Plan::new(o, addr));
    let shared = Arc::new(Shared::new()?);
    let results = start_threads(&plan, &shared, conns)?;
    wait_with_progress(o, &shared, results)?;
    let stats = shared.lock();
    let elapsed = stats.last_done.map_or(Duration::ZERO, |t| {
        t.saturating_duration_since(plan.measure_from())
    });
    let summary = Summary {
        options: o,
        stats: &stats,
        elapsed,
        populated,
    };
    if o.json {
        println!("{}", summary.json());
    } else {
        print!("{}", summary.text());
    }
    Ok(())
}

fn resolve(o: &Options, addr: &str) -> Result<Vec<SocketAddr>, BenchError> {
    let addrs: Vec<SocketAddr> = (o.host.as_str(), o.port)
        .to_socket_addrs()
        .map_err(|source| BenchError::Resolve {
            addr: addr.to_string(),
            source,
        })?
        .collect();
    if addrs.is_empty() {
        return Err(BenchError::Resolve {
            addr: addr.to_string(),
            source: std::io::ErrorKind::NotFound.into(),
        });
    }
    Ok(addrs)
}

/// Opens every connection before any load starts, so a refused connection fails the run
/// up front.
fn connect(addrs: &[SocketAddr], addr: &str, count: usize) -> Result<Vec<Conn>, BenchError> {
    (0..count)
        .map(|global| {
            let fail = |source| BenchError::Connect {
                addr: addr.to_string(),
                conn: global,
                source,
            };
            let stream = TcpStream::connect(addrs).map_err(fail)?;
            Conn::new(global, stream).map_err(fail)
        })
        .collect()
}

/// Deals the connections out to the threads and starts them; each sends its result once.
fn start_threads(
    plan: &Arc<Plan>,
    shared: &Arc<Shared>,
    conns: Vec<Conn>,
) -> Result<mpsc::Receiver<Result<(), BenchError>>, BenchError> {
    let mut shares: Vec<Vec<Conn>> = (0..plan.threads).map(|_| Vec::new()).collect();
    for (global, conn) in conns.into_iter().enumerate() {
        shares[plan.place(global).0].push(conn);
    }
    let (tx, rx) = mpsc::channel();
    for (index, share) in shares.into_iter().enumerate() {
        let worker = Worker::new(index, Arc::clone(plan), Arc::clone(shared), share)?;
        let tx = tx.clone();
        std::thread::Builder::new()
            .name(format!("bench-{index}"))
            .spawn(move || {
                // The receiver outlives every thread unless the run already failed.
                let _ = tx.send(worker.run());
            })
            .map_err(|source| BenchError::Setup {
                what: "start a thread",
                source,
            })?;
    }
    Ok(rx)
}

/// Waits for every thread, redrawing the progress line once a second.
fn wait_with_progress(
    o: &Options,
    shared: &Shared,
    results: mpsc::Receiver<Result<(), BenchError>>,
) -> Result<(), BenchError> {
    let mut progress = Progress::new(o.quiet);
    let mut running = o.threads;
    while running > 0 {
        let wait = progress.next.saturating_duration_since(Instant::now());
        match results.recv_timeout(wait) {
            Ok(Ok(())) => running -= 1,
            Ok(Err(e)) => {
                progress.clear();
                return Err(e);
            }
            Err(RecvTimeoutError::Timeout) => progress.draw(shared),
            Err(RecvTimeoutError::Disconnected) => {
                progress.clear();
                return Err(BenchError::ThreadLost);
            }
        }
    }
    progress.clear();
    Ok(())
}

/// The `\r`-redrawn progress line on stderr.
struct Progress {
    quiet: bool,
    started: Instant,
    next: Instant,
    last_completed: u64,
    last_at: Instant,
    /// Width of the last line drawn, to blank it out.
    width: usize,
}

impl Progress {
    fn new(quiet: bool) -> Progress {
        let now = Instant::now();
        Progress {
            quiet,
            started: now,
            next: now + PROGRESS_EVERY,
            last_completed: 0,
            last_at: now,
            width: 0,
        }
    }

    /// Draws elapsed time, measured requests, the current request rate (warm-up included)
    /// and the percentiles so far.
    fn draw(&mut self, shared: &Shared) {
        let now = Instant::now();
        self.next += PROGRESS_EVERY;
        if self.quiet {
            return;
        }
        let completed = shared.completed.load(Ordering::Relaxed);
        let secs = now.saturating_duration_since(self.last_at).as_secs_f64();
        let rps = if secs > 0.0 {
            (completed - self.last_completed) as f64 / secs
        } else {
            0.0
        };
        self.last_completed = completed;
        self.last_at = now;
        let (requests, latency) = {
            let stats = shared.lock();
            (stats.requests, Latency::of(&stats))
        };
        let line = format!(
            "{:7.1} s  requests {requests}  rps {rps:.0}  p50 {} us  p99 {} us",
            now.saturating_duration_since(self.started).as_secs_f64(),
            latency.p50,
            latency.p99,
        );
        let pad = self.width.saturating_sub(line.len());
        eprint!("\r{line}{:pad$}", "");
        let _ = std::io::stderr().flush();
        self.width = line.len();
    }

    /// Blanks the line, so that the report or an error starts on a clean line.
    fn clear(&mut self) {
        if self.width > 0 {
            eprint!("\r{:w$}\r", "", w = self.width);
            self.width = 0;
        }
    }
}
