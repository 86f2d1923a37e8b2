//! The run's plan, shared by every thread: what to send, and when the measured phase starts
//! and ends in closed or open loop.
//!
//! Connection `g` (of all `C`) belongs to thread `g % T`, as its local connection `g / T`.
//! In open loop the schedule is one sequence of slots for all connections: slot `j` is due at
//! `start + j / rate` on connection `j % C`, so the total offered rate is `rate` whatever the
//! number of connections, and a run of `d` seconds has exactly `rate × d` slots.

use std::time::{Duration, Instant};

use crate::args::{Options, Stop, Workload};
use crate::resp::Requests;

/// Lead time between planning and the first open-loop slot, so that every thread is running
/// when the schedule starts instead of counting its own start-up as latency.
const OPEN_LOOP_LEAD: Duration = Duration::from_millis(10);

/// How the load is generated.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// Each connection sends a batch of `pipeline` units once the previous batch is answered.
    Closed {
        /// Units started from here on are measured; earlier ones are warm-up.
        measure_from: Instant,
        /// No unit starts at or after this (`--duration`).
        deadline: Option<Instant>,
        /// Measured units in all (`-n`), split between threads.
        requests: Option<u64>,
    },
    /// Units are sent on a fixed schedule, however the server keeps up.
    Open {
        /// When slot 0 is due.
        start: Instant,
        /// Seconds between consecutive slots (1 / rate).
        interval: f64,
        /// Slots `0..warmup_slots` are warm-up.
        warmup_slots: u64,
        /// Slots in all, warm-up included.
        total_slots: u64,
    },
}

/// Everything the threads need to know about the run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub workload: Workload,
    pub requests: Requests,
    pub keyspace: u64,
    pub pipeline: usize,
    pub connections: usize,
    pub threads: usize,
    pub mode: Mode,
    /// `host:port`, for error messages.
    pub addr: String,
}

impl Plan {
    /// The plan for `options`, with the run starting now.
    pub fn new(o: &Options, addr: String) -> Plan {
        let now = Instant::now();
        let mode = match o.rate {
            None => {
                let measure_from = now + o.warmup;
                let (deadline, requests) = match o.stop {
                    Stop::Duration(d) => (Some(measure_from + d), None),
                    Stop::Requests(n) => (None, Some(n)),
                };
                Mode::Closed {
                    measure_from,
                    deadline,
                    requests,
                }
            }
            Some(rate) => {
                let warmup_slots = slots(o.warmup, rate);
                let measured = match o.stop {
                    Stop::Duration(d) => slots(d, rate),
                    Stop::Requests(n) => n,
                };
                Mode::Open {
                    start: now + OPEN_LOOP_LEAD,
                    interval: 1.0 / rate,
                    warmup_slots,
                    total_slots: warmup_slots.saturating_add(measured),
                }
            }
        };
        Plan {
            workload: o.workload,
            requests: Requests::new(o.workload, o.value_size, o.wait_timeout_ms),
            keyspace: o.keyspace,
            pipeline: o.pipeline,
            connections: o.connections,
            threads: o.threads,
            mode,
            addr,
        }
    }

    /// When the measured phase starts.
    pub fn measure_from(&self) -> Instant {
        match self.mode {
            Mode::Closed { measure_from, .. } => measure_from,
            Mode::Open { warmup_slots, .. } => self.slot_time(warmup_slots),
        }
    }

    /// When open-loop slot `j` is due (closed loop: the measured phase's start).
    pub fn slot_time(&self, j: u64) -> Instant {
        match self.mode {
            Mode::Open {
                start, interval, ..
            } => start + Duration::from_secs_f64(j as f64 * interval),
            Mode::Closed { measure_from, .. } => measure_from,
        }
    }

    /// The thread that owns connection `global`, and the connection's index in that thread.
    pub fn place(&self, global: usize) -> (usize, usize) {
        (global % self.threads, global / self.threads)
    }

    /// The connection that sends open-loop slot `j`.
    pub fn slot_connection(&self, j: u64) -> usize {
        (j % self.connections as u64) as usize
    }

    /// The measured units of closed loop's `-n` that `thread` sends: an even share.
    pub fn thread_requests(&self, thread: usize) -> Option<u64> {
        let Mode::Closed {
            requests: Some(n), ..
        } = self.mode
        else {
            return None;
        };
        let threads = self.threads as u64;
        let t = thread as u64;
        Some(n / threads + u64::from(t < n % threads))
    }
}

/// Slots of a schedule at `rate` per second that fall within `length`: the whole numbers `j`
/// with `j / rate < length`. Products within a rounding error of a whole number count as that
/// number (0.1 s × 3000/s is 300 slots, not 301).
pub fn slots(length: Duration, rate: f64) -> u64 {
    let exact = length.as_secs_f64() * rate;
    let nearest = exact.round();
    let count = if (exact - nearest).abs() < 1e-6 {
        nearest
    } else {
        exact.ceil()
    };
    // Saturating conversion: absurd products become u64::MAX.
    count as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_lengths() {
        assert_eq!(slots(Duration::from_secs(1), 2000.0), 2000);
        assert_eq!(slots(Duration::from_millis(100), 3000.0), 300);
        assert_eq!(slots(Duration::from_millis(1500), 1.0), 2);
        assert_eq!(slots(Duration::ZERO, 1000.0), 0);
    }

    #[test]
    fn every_connection_has_one_place() {
        let o = Options {
            connections: 7,
            threads: 3,
            stop: Stop::Requests(10),
            ..Options::default()
        };
        let plan = Plan::new(&o, "x".into());
        let mut seen = vec![Vec::new(); 3];
        for g in 0..7 {
            let (t, local) = plan.place(g);
            assert_eq!(local, seen[t].len());
            seen[t].push(g);
        }
        let shares: u64 = (0..3).filter_map(|t| plan.thread_requests(t)).sum();
        assert_eq!(shares, 10);
    }
}
