//! Counters each shard keeps for INFO stats, commandstats and errorstats. Plain integers: a shard
//! only ever updates its own, and INFO sums them across shards.

use std::collections::HashMap;
use std::time::Instant;

use hdrhistogram::Histogram;

/// Latencies are tracked from 1 ns to 1 s (longer ones count as 1 s) with two significant
/// digits, as Valkey does: about 30 KiB per command and shard.
const LATENCY_MIN_NS: u64 = 1;
const LATENCY_MAX_NS: u64 = 1_000_000_000;
const LATENCY_SIGFIGS: u8 = 2;

/// An empty latency histogram (`None` only if the bounds were invalid, which they are not).
fn latency_histogram() -> Option<Histogram<u64>> {
    Histogram::new_with_bounds(LATENCY_MIN_NS, LATENCY_MAX_NS, LATENCY_SIGFIGS).ok()
}

/// `INFO commandstats` for one command.
#[derive(Debug, Default, Clone, Copy)]
pub struct CommandStats {
    pub calls: u64,
    pub usec: u64,
    /// Refused before running (arity, unknown subcommand, NOAUTH …).
    pub rejected_calls: u64,
    /// Ran and answered an error.
    pub failed_calls: u64,
}

/// Samples kept for `instantaneous_ops_per_sec` (Valkey keeps 16, one per 100 ms tick).
const OPS_SAMPLES: usize = 16;

/// Fast hashing for the per-command table (updated on every command).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

/// Counters of one shard.
#[derive(Debug, Default, Clone)]
pub struct ShardStats {
    pub commands: FastMap<&'static str, CommandStats>,
    /// Per command, its latency distribution in nanoseconds (`latency-tracking`).
    pub latency: FastMap<&'static str, Histogram<u64>>,
    pub errors_by_code: HashMap<String, u64>,
    pub total_commands: u64,
    pub total_error_replies: u64,
    pub connections_received: u64,
    pub rejected_connections: u64,
    pub net_input_bytes: u64,
    pub net_output_bytes: u64,
    /// Requests this shard sent to other shards, and ran for them.
    pub cross_shard_sent: u64,
    pub cross_shard_served: u64,
    ops_samples: [u64; OPS_SAMPLES],
    ops_sample_index: usize,
    last_sample: Option<(Instant, u64)>,
}

impl ShardStats {
    /// Counts one command that ran: its duration, whether it answered an error, and (with
    /// `track_latency`) its latency in the command's histogram.
    pub fn record_call(
        &mut self,
        name: &'static str,
        nanos: u64,
        failed: bool,
        track_latency: bool,
    ) {
        self.total_commands += 1;
        let entry = self.commands.entry(name).or_default();
        entry.calls += 1;
        entry.usec += nanos / 1000;
        if failed {
            entry.failed_calls += 1;
        }
        if track_latency {
            let histogram = match self.latency.get_mut(name) {
                Some(h) => Some(h),
                None => latency_histogram().map(|h| self.latency.entry(name).or_insert(h)),
            };
            if let Some(h) = histogram {
                h.saturating_record(nanos.clamp(LATENCY_MIN_NS, LATENCY_MAX_NS));
            }
        }
    }

    /// Counts a command refused before it ran.
    pub fn record_rejected(&mut self, name: &'static str) {
        self.commands.entry(name).or_default().rejected_calls += 1;
    }

    /// Counts an error reply by its code (the first word: `ERR`, `WRONGTYPE` …).
    pub fn record_error(&mut self, message: &str) {
        self.total_error_replies += 1;
        let code = message.split(' ').next().unwrap_or("ERR");
        match self.errors_by_code.get_mut(code) {
            Some(n) => *n += 1,
            None => {
                self.errors_by_code.insert(code.to_string(), 1);
            }
        }
    }

    /// Takes an ops/sec sample; called by the shard's background tick.
    pub fn sample_ops(&mut self, now: Instant) {
        if let Some((at, ops)) = self.last_sample {
            let elapsed_ms = now.duration_since(at).as_millis().max(1) as u64;
            let rate = (self.total_commands - ops) * 1000 / elapsed_ms;
            self.ops_samples[self.ops_sample_index] = rate;
            self.ops_sample_index = (self.ops_sample_index + 1) % OPS_SAMPLES;
        }
        self.last_sample = Some((now, self.total_commands));
    }

    pub fn instantaneous_ops_per_sec(&self) -> u64 {
        self.ops_samples.iter().sum::<u64>() / OPS_SAMPLES as u64
    }

    /// Adds another shard's counters into this one (INFO across shards).
    pub fn merge(&mut self, other: &ShardStats) {
        for (name, s) in &other.commands {
            let e = self.commands.entry(name).or_default();
            e.calls += s.calls;
            e.usec += s.usec;
            e.rejected_calls += s.rejected_calls;
            e.failed_calls += s.failed_calls;
        }
        for (name, h) in &other.latency {
            match self.latency.get_mut(name) {
                Some(mine) => {
                    let _ = mine.add(h);
                }
                None => {
                    self.latency.insert(name, h.clone());
                }
            }
        }
        for (code, n) in &other.errors_by_code {
            *self.errors_by_code.entry(code.clone()).or_default() += n;
        }
        self.total_commands += other.total_commands;
        self.total_error_replies += other.total_error_replies;
        self.connections_received += other.connections_received;
        self.rejected_connections += other.rejected_connections;
        self.net_input_bytes += other.net_input_bytes;
        self.net_output_bytes += other.net_output_bytes;
        self.cross_shard_sent += other.cross_shard_sent;
        self.cross_shard_served += other.cross_shard_served;
        for (mine, theirs) in self.ops_samples.iter_mut().zip(other.ops_samples.iter()) {
            *mine += theirs;
        }
    }

    /// `CONFIG RESETSTAT`.
    pub fn reset(&mut self) {
        *self = ShardStats::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_merges() {
        let mut a = ShardStats::default();
        a.record_call("get", 3000, false, true);
        a.record_call("get", 2000, true, true);
        a.record_rejected("set");
        a.record_error("WRONGTYPE Operation against");
        let mut b = ShardStats::default();
        b.record_call("get", 5000, false, true);
        b.record_error("ERR x");
        b.merge(&a);
        let get = b.commands["get"];
        assert_eq!((get.calls, get.usec, get.failed_calls), (3, 10, 1));
        assert_eq!(b.commands["set"].rejected_calls, 1);
        assert_eq!(b.total_commands, 3);
        assert_eq!(b.errors_by_code["WRONGTYPE"], 1);
        assert_eq!(b.total_error_replies, 2);
        assert_eq!(b.latency["get"].len(), 3);
        assert!(b.latency["get"].value_at_quantile(1.0) >= 5000);
    }
}
