//! What a run measures: a latency histogram, request and error counts, missed
//! acknowledgements. Each thread fills its own [`Stats`] and adds it into the shared one now
//! and then, so the hot path takes no lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hdrhistogram::{CreationError, Histogram};

/// The largest latency the histogram tells apart: an hour, in microseconds.
const MAX_LATENCY_US: u64 = 3_600_000_000;
/// Significant decimal digits the histogram keeps.
const SIGNIFICANT_DIGITS: u8 = 3;
/// Longest error message kept as an example of its prefix.
const SAMPLE_LEN: usize = 200;

/// Counts of one error prefix.
#[derive(Debug, Clone)]
pub struct ErrorCount {
    /// The error's first word (`ERR`, `NOAUTH`, ...).
    pub prefix: String,
    pub count: u64,
    /// The first whole message seen with this prefix.
    pub sample: String,
}

/// Measurements of request units.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Latency of each measured unit in microseconds.
    pub latency: Histogram<u64>,
    /// Measured units completed.
    pub requests: u64,
    /// Error replies, by prefix, in order of first appearance.
    pub errors: Vec<ErrorCount>,
    /// WAIT / WAITAOF replies that reported fewer acknowledgements than asked for.
    pub missed_acks: u64,
    /// When the last measured unit completed.
    pub last_done: Option<Instant>,
}

impl Stats {
    /// Empty statistics.
    pub fn new() -> Result<Stats, CreationError> {
        Ok(Stats {
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, SIGNIFICANT_DIGITS)?,
            requests: 0,
            errors: Vec::new(),
            missed_acks: 0,
            last_done: None,
        })
    }

    /// Records a measured unit that took `latency` and completed at `now`.
    pub fn record(&mut self, latency: Duration, now: Instant) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        // The histogram starts at 1 µs; loopback replies can come back faster.
        self.latency.saturating_record(us.max(1));
        self.requests += 1;
        self.last_done = Some(self.last_done.map_or(now, |t| t.max(now)));
    }

    /// Counts an error reply whose message (without the `-`) is `message`.
    pub fn error(&mut self, message: &[u8]) {
        let prefix = crate::resp::error_prefix(message);
        if let Some(e) = self
            .errors
            .iter_mut()
            .find(|e| e.prefix.as_bytes() == prefix)
        {
            e.count += 1;
            return;
        }
        let sample = &message[..message.len().min(SAMPLE_LEN)];
        self.errors.push(ErrorCount {
            prefix: String::from_utf8_lossy(prefix).into_owned(),
            count: 1,
            sample: String::from_utf8_lossy(sample).into_owned(),
        });
    }

    /// Error replies in all.
    pub fn error_total(&self) -> u64 {
        self.errors.iter().map(|e| e.count).sum()
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Stats) {
        // Both histograms have the same bounds and values are saturated into them, so adding
        // cannot fail; the record-by-record fallback covers it all the same.
        if self.latency.add(&other.latency).is_err() {
            for v in other.latency.iter_recorded() {
                self.latency
                    .saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
        self.requests += other.requests;
        self.missed_acks += other.missed_acks;
        for e in &other.errors {
            match self.errors.iter_mut().find(|m| m.prefix == e.prefix) {
                Some(m) => m.count += e.count,
                None => self.errors.push(e.clone()),
            }
        }
        self.last_done = match (self.last_done, other.last_done) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }

    /// Empties the statistics, keeping the histogram's memory.
    pub fn clear(&mut self) {
        self.latency.reset();
        self.requests = 0;
        self.errors.clear();
        self.missed_acks = 0;
        self.last_done = None;
    }
}

/// What the threads share with the main thread.
#[derive(Debug)]
pub struct Shared {
    /// Everything measured so far that the threads have handed in.
    stats: Mutex<Stats>,
    /// Units completed, warm-up included (the progress line's request rate).
    pub completed: AtomicU64,
}

impl Shared {
    /// Nothing handed in yet.
    pub fn new() -> Result<Shared, CreationError> {
        Ok(Shared {
            stats: Mutex::new(Stats::new()?),
            completed: AtomicU64::new(0),
        })
    }

    /// Adds a thread's statistics and its count of completed units (warm-up included).
    pub fn hand_in(&self, stats: &Stats, completed: u64) {
        self.lock().merge(stats);
        self.completed.fetch_add(completed, Ordering::Relaxed);
    }

    /// The statistics so far.
    pub fn lock(&self) -> MutexGuard<'_, Stats> {
        // A thread that panics aborts the process (release profile), so poisoning cannot
        // leave half-merged statistics behind.
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_errors_by_prefix() {
        let mut s = Stats::new().expect("histogram");
        s.error(b"NOAUTH Authentication required.");
        s.error(b"NOAUTH Authentication required.");
        s.error(b"ERR unknown command");
        let mut t = Stats::new().expect("histogram");
        t.error(b"ERR other");
        t.error(b"READONLY You can't write against a read only replica.");
        s.merge(&t);
        let counts: Vec<(&str, u64)> = s.errors.iter().map(|e| (&*e.prefix, e.count)).collect();
        assert_eq!(counts, [("NOAUTH", 2), ("ERR", 2), ("READONLY", 1)]);
        assert_eq!(s.errors[1].sample, "ERR unknown command");
        assert_eq!(s.error_total(), 5);
    }

    #[test]
    fn merges_latencies() {
        let now = Instant::now();
        let mut s = Stats::new().expect("histogram");
        s.record(Duration::from_micros(100), now);
        let mut t = Stats::new().expect("histogram");
        t.record(Duration::from_millis(300), now + Duration::from_secs(1));
        t.record(Duration::from_nanos(10), now);
        s.merge(&t);
        assert_eq!(s.requests, 3);
        assert_eq!(s.latency.len(), 3);
        assert!(s.latency.max() >= 300_000);
        assert_eq!(s.latency.min(), 1);
        assert_eq!(s.last_done, Some(now + Duration::from_secs(1)));
        s.clear();
        assert_eq!((s.requests, s.latency.len()), (0, 0));
    }
}
