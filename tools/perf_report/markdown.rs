//! The markdown report.

use std::fmt::Write;

use crate::results::{ratio, Results, Run};
use crate::targets::Target;

/// AOF settings in the order the report lists them.
pub const MODES: [&str; 4] = ["off", "always", "everysec", "no"];
/// Scenarios measured for throughput and CPU.
const THROUGHPUT: [&str; 5] = ["set", "get", "set-p16", "get-p16", "mixed-80-20"];
/// Every scenario with latencies, in order.
const LATENCY: [&str; 8] = [
    "set",
    "get",
    "set-p16",
    "get-p16",
    "mixed-80-20",
    "set-waitaof",
    "get-rate",
    "get-rate-writers",
];
const SYSTEMS: [&str; 2] = ["corekv", "valkey"];

/// What the report says about where and how it was measured.
pub struct Heading<'a> {
    pub mode: &'a str,
    pub command: &'a str,
    pub machine: &'a str,
    /// File names of the plots.
    pub plots: &'a [String],
}

fn number(v: Option<f64>, digits: usize) -> String {
    match v {
        None => "–".to_string(),
        Some(v) if digits == 0 => thousands(v.round() as i64),
        Some(v) => format!("{v:.digits$}"),
    }
}

/// `v` with a comma between each group of three digits.
pub fn thousands(v: i64) -> String {
    let digits = v.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0 {
        out.insert(0, '-');
    }
    out
}

fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
    for row in rows {
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    out.push('\n');
}

/// fsyncs per second and batch sizes of a corekv run (Valkey reports neither).
fn fsync_cell(r: &Run) -> String {
    if r.fsyncs == 0 || r.wall_s <= 0.0 {
        return String::new();
    }
    let mut cell = format!(
        "{} fsync/s, {:.1} writes/fsync",
        thousands((r.fsyncs as f64 / r.wall_s).round() as i64),
        r.records_synced as f64 / r.fsyncs as f64
    );
    if let Some([p50, p99, max]) = r.batch {
        let _ = write!(cell, " (p50 {p50}, p99 {p99}, max {max})");
    }
    cell
}

/// The whole report.
pub fn render(r: &Results, targets: &[Target], h: &Heading<'_>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "### perf/run ({})\n", h.mode);
    let _ = write!(
        out,
        "Command: `{}`. Machine: {}. Ratios are corekv / Valkey in this run.",
        h.command, h.machine
    );
    if let Some((p50, p99)) = r.fdatasync {
        let _ = write!(
            out,
            " Bare 4 KiB append + fdatasync in the same directory: p50 {p50:.0} µs, p99 {p99:.0} µs."
        );
    }
    out.push_str("\n\n#### Targets\n\n");
    let rows: Vec<Vec<String>> = targets
        .iter()
        .map(|t| {
            vec![
                t.what.clone(),
                t.wanted.clone(),
                t.measured
                    .clone()
                    .unwrap_or_else(|| "not measured in this run".into()),
                if t.met { "**met**" } else { "not met" }.to_string(),
            ]
        })
        .collect();
    table(&mut out, &["target", "wanted", "measured", "met"], &rows);

    out.push_str("#### Throughput and server CPU per request\n\n");
    let mut rows = Vec::new();
    for mode in MODES {
        for sc in THROUGHPUT {
            let (ck, vk) = (
                r.throughput("corekv", mode, sc),
                r.throughput("valkey", mode, sc),
            );
            let (cc, vc) = (r.cpu("corekv", mode, sc), r.cpu("valkey", mode, sc));
            if ck.is_none() && vk.is_none() {
                continue;
            }
            rows.push(vec![
                mode.to_string(),
                sc.to_string(),
                number(ck, 0),
                number(vk, 0),
                number(ratio(ck, vk), 2),
                number(cc, 2),
                number(vc, 2),
                number(ratio(cc, vc), 2),
            ]);
        }
    }
    table(
        &mut out,
        &[
            "AOF",
            "scenario",
            "corekv req/s",
            "Valkey req/s",
            "ratio",
            "corekv CPU µs/req",
            "Valkey CPU µs/req",
            "CPU ratio",
        ],
        &rows,
    );

    out.push_str("#### Latency (µs), fsyncs and group-commit batches\n\n");
    let mut rows = Vec::new();
    for mode in MODES {
        for sc in LATENCY {
            for system in SYSTEMS {
                let Some(run) = r.run(system, mode, sc) else {
                    continue;
                };
                let l = run.latency;
                rows.push(vec![
                    mode.to_string(),
                    sc.to_string(),
                    system.to_string(),
                    number(Some(l.p50), 0),
                    number(Some(l.p99), 0),
                    number(Some(l.p99_9), 0),
                    number(Some(l.p99_99), 0),
                    number(Some(l.max), 0),
                    run.errors.to_string(),
                    run.missed_acks.to_string(),
                    fsync_cell(run),
                ]);
            }
        }
    }
    table(
        &mut out,
        &[
            "AOF",
            "scenario",
            "system",
            "p50",
            "p99",
            "p99.9",
            "p99.99",
            "max",
            "errors",
            "missed acks",
            "fsyncs (corekv INFO)",
        ],
        &rows,
    );

    if !r.memory.is_empty() || !r.replay.is_empty() {
        out.push_str("#### Memory per key and AOF replay\n\n");
        let rows: Vec<Vec<String>> = SYSTEMS
            .iter()
            .map(|s| {
                let m = r.memory.get(*s);
                let replay = r.replay.get(*s);
                vec![
                    s.to_string(),
                    m.map_or("–".into(), |m| thousands(m.keys as i64)),
                    number(m.map(|m| m.used_memory_per_key), 0),
                    number(m.map(|m| m.rss_per_key), 0),
                    replay.map_or("–".into(), |r| thousands(r.keys as i64)),
                    number(replay.map(|r| r.ready_ms), 0),
                ]
            })
            .collect();
        table(
            &mut out,
            &[
                "system",
                "keys loaded",
                "used_memory bytes/key",
                "RSS bytes/key",
                "keys in the log",
                "start to first PONG (ms)",
            ],
            &rows,
        );
    }

    if !r.suite.is_empty() {
        out.push_str(
            "#### valkey-benchmark's default suite (AOF off, 50 connections)\n\n\
             An independent client's view. valkey-benchmark stops at the first error reply, so \
             a test whose command corekv does not have has no corekv numbers.\n\n",
        );
        let mut rows = Vec::new();
        let valkey = r.suite.iter().filter(|s| s.system == "valkey");
        for (vk, v) in valkey.filter_map(|s| s.measured.as_ref().map(|m| (s, m))) {
            let ck = r
                .suite
                .iter()
                .filter(|s| s.system == "corekv" && s.group == vk.group)
                .find(|s| s.measured.as_ref().is_none_or(|m| m.test == v.test));
            let dash = || "–".to_string();
            let (rps, vs, latency, note) = match ck.map(|s| (s, s.measured.as_ref())) {
                Some((_, Some(c))) => (
                    number(Some(c.rps), 0),
                    number(ratio(Some(c.rps), Some(v.rps)), 2),
                    format!("{:.3} / {:.3}", c.p50_ms, c.p99_ms),
                    String::new(),
                ),
                Some((s, None)) => (
                    dash(),
                    dash(),
                    dash(),
                    format!("not in corekv ({} error replies)", s.errors),
                ),
                None => (dash(), dash(), dash(), "not run".to_string()),
            };
            rows.push(vec![
                v.test.clone(),
                number(Some(v.rps), 0),
                rps,
                vs,
                format!("{:.3} / {:.3}", v.p50_ms, v.p99_ms),
                latency,
                note,
            ]);
        }
        table(
            &mut out,
            &[
                "test",
                "Valkey req/s",
                "corekv req/s",
                "ratio",
                "Valkey p50 / p99 ms",
                "corekv p50 / p99 ms",
                "",
            ],
            &rows,
        );
    }

    if !h.plots.is_empty() {
        let names: Vec<String> = h.plots.iter().map(|p| format!("`{p}`")).collect();
        let _ = writeln!(out, "Plots: {}.", names.join(", "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(-1234567), "-1,234,567");
    }

    #[test]
    fn a_report_without_runs_still_lists_every_target() {
        let r = Results::default();
        let targets = crate::targets::check(&r);
        let md = render(
            &r,
            &targets,
            &Heading {
                mode: "quick",
                command: "perf/run --quick",
                machine: "m",
                plots: &[],
            },
        );
        assert_eq!(
            md.matches("not measured in this run").count(),
            targets.len()
        );
    }
}
