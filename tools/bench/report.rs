//! The end-of-run report: a readable summary, or one JSON object (`--json`) written by hand.

use std::fmt::Write;
use std::time::Duration;

use crate::args::{Options, Stop};
use crate::stats::Stats;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    pub p50: u64,
    pub p99: u64,
    pub p99_9: u64,
    pub p99_99: u64,
    pub max: u64,
    pub mean: f64,
}

impl Latency {
    /// The percentiles of `stats` (all zero when nothing was measured).
    pub fn of(stats: &Stats) -> Latency {
        let h = &stats.latency;
        Latency {
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            p99_9: h.value_at_quantile(0.999),
            p99_99: h.value_at_quantile(0.9999),
            max: h.max(),
            mean: if h.is_empty() { 0.0 } else { h.mean() },
        }
    }
}

/// Points of the latency percentile curve: (percentile in %, latency in µs) at four steps
/// per decade of 1 - q, from the median to 99.997 %, and the maximum at 100 %.
pub fn percentile_curve(stats: &Stats) -> Vec<(f64, u64)> {
    let h = &stats.latency;
    if h.is_empty() {
        return Vec::new();
    }
    let mut points: Vec<(f64, u64)> = (0..=17)
        .map(|step| {
            let q = 1.0 - 0.5 * 10f64.powf(-f64::from(step) / 4.0);
            (q * 100.0, h.value_at_quantile(q))
        })
        .collect();
    points.push((100.0, h.max()));
    points
}

/// A finished run.
pub struct Summary<'a> {
    pub options: &'a Options,
    pub stats: &'a Stats,
    /// From the start of the measured phase to the completion of its last unit.
    pub elapsed: Duration,
    /// Keys set by `--populate`.
    pub populated: Option<u64>,
}

impl Summary<'_> {
    /// Measured units per second.
    pub fn throughput(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.stats.requests as f64 / secs
        } else {
            0.0
        }
    }

    /// The readable summary.
    pub fn text(&self) -> String {
        let o = self.options;
        let l = Latency::of(self.stats);
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} on {}:{}: {} connections, {} thread(s), {}, {} keys, {}-byte values",
            o.workload,
            o.host,
            o.port,
            o.connections,
            o.threads,
            loop_name(o),
            o.keyspace,
            o.value_size,
        );
        if let Some(keys) = self.populated {
            let _ = writeln!(s, "populated     {keys} keys");
        }
        let _ = writeln!(
            s,
            "requests      {} in {:.3} s",
            self.stats.requests,
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(s, "throughput    {:.0} requests/s", self.throughput());
        let _ = writeln!(
            s,
            "latency (us)  p50 {}  p99 {}  p99.9 {}  p99.99 {}  max {}  mean {:.1}",
            l.p50, l.p99, l.p99_9, l.p99_99, l.max, l.mean
        );
        let _ = writeln!(s, "errors        {}", self.stats.error_total());
        for e in &self.stats.errors {
            let _ = writeln!(s, "  {:<11} {} (e.g. -{})", e.prefix, e.count, e.sample);
        }
        if o.workload.waits() {
            let _ = writeln!(s, "missed acks   {}", self.stats.missed_acks);
        }
        s
    }

    /// One JSON object with the settings and every measurement.
    pub fn json(&self) -> String {
        let o = self.options;
        let l = Latency::of(self.stats);
        let mut s = String::from("{");
        let _ = write!(
            s,
            "\"workload\":{},\"host\":{},\"port\":{},\"connections\":{},\"threads\":{},\
             \"pipeline\":{},\"keyspace\":{},\"value_size\":{},\"loop\":\"{}\",\"rate\":{},\
             \"warmup_s\":{},",
            string(&o.workload.to_string()),
            string(&o.host),
            o.port,
            o.connections,
            o.threads,
            o.pipeline,
            o.keyspace,
            o.value_size,
            if o.rate.is_some() { "open" } else { "closed" },
            o.rate.map_or("null".to_string(), number),
            number(o.warmup.as_secs_f64()),
        );
        let _ = write!(
            s,
            "\"populated\":{},",
            self.populated.map_or("null".to_string(), |k| k.to_string())
        );
        let _ = write!(
            s,
            "\"requests\":{},\"duration_s\":{},\"throughput_rps\":{},",
            self.stats.requests,
            number(self.elapsed.as_secs_f64()),
            number(self.throughput()),
        );
        let _ = write!(
            s,
            "\"latency_us\":{{\"p50\":{},\"p99\":{},\"p99_9\":{},\"p99_99\":{},\"max\":{},\
             \"mean\":{}}},",
            l.p50,
            l.p99,
            l.p99_9,
            l.p99_99,
            l.max,
            number(l.mean)
        );
        s.push_str("\"percentile_curve\":[");
        for (i, (q, us)) in percentile_curve(self.stats).iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(s, "{sep}[{},{us}]", number(*q));
        }
        s.push_str("],");
        let _ = write!(
            s,
            "\"errors\":{},\"errors_by_prefix\":{{",
            self.stats.error_total()
        );
        for (i, e) in self.stats.errors.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(s, "{sep}{}:{}", string(&e.prefix), e.count);
        }
        s.push_str("},\"error_samples\":{");
        for (i, e) in self.stats.errors.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(s, "{sep}{}:{}", string(&e.prefix), string(&e.sample));
        }
        let _ = write!(s, "}},\"missed_acks\":{}}}", self.stats.missed_acks);
        s
    }
}

/// "closed loop" or "open loop at R/s", with the stop condition.
fn loop_name(o: &Options) -> String {
    let stop = match o.stop {
        Stop::Requests(n) => format!("{n} requests"),
        Stop::Duration(d) => format!("{:.3} s", d.as_secs_f64()),
    };
    match o.rate {
        None => format!("closed loop, pipeline {}, {stop}", o.pipeline),
        Some(r) => format!("open loop at {r} requests/s, {stop}"),
    }
}

/// A JSON number (JSON has no NaN or infinities).
fn number(x: f64) -> String {
    if x.is_finite() {
        format!("{}", (x * 1000.0).round() / 1000.0)
    } else {
        "null".into()
    }
}

/// A JSON string literal.
fn string(text: &str) -> String {
    let mut s = String::with_capacity(text.len() + 2);
    s.push('"');
    for c in text.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_strings() {
        assert_eq!(string("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
    }

    #[test]
    fn json_has_every_field() {
        let o = Options::default();
        let mut stats = Stats::new().expect("histogram");
        stats.record(Duration::from_micros(250), std::time::Instant::now());
        stats.error(b"ERR \"quoted\"");
        let summary = Summary {
            options: &o,
            stats: &stats,
            elapsed: Duration::from_millis(500),
            populated: None,
        };
        let json = summary.json();
        for field in [
            "\"requests\":1,",
            "\"throughput_rps\":2,",
            "\"p50\":250,",
            "\"errors\":1,",
            "\"errors_by_prefix\":{\"ERR\":1}",
            "\"error_samples\":{\"ERR\":\"ERR \\\"quoted\\\"\"}",
            "\"missed_acks\":0}",
            "\"rate\":null,",
            "\"percentile_curve\":[[50,250],",
            "[100,250]],",
        ] {
            assert!(json.contains(field), "{field} missing in {json}");
        }
        assert!(json.starts_with('{') && json.ends_with('}'));
    }
}
