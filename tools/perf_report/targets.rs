//! The targets the project set itself, each checked against this run's measurements. Every
//! target has a row: one the run did not measure says so and counts as not met.

use crate::results::{ratio, Results};

/// One target and what this run measured for it.
#[derive(Debug, Clone)]
pub struct Target {
    pub what: String,
    pub wanted: String,
    /// The measured ratio with what it was made of; `None` when the run did not measure it.
    pub measured: Option<String>,
    pub met: bool,
}

impl Target {
    fn new(
        what: impl Into<String>,
        wanted: &str,
        measured: Option<(f64, String)>,
        ok: impl Fn(f64) -> bool,
    ) -> Target {
        Target {
            what: what.into(),
            wanted: wanted.to_string(),
            met: measured.as_ref().is_some_and(|(r, _)| ok(*r)),
            measured: measured.map(|(r, how)| format!("{r:.2} ({how})")),
        }
    }
}

/// `a / b` with both shown: "`a` / `b` `unit`" (to `digits` decimals).
fn quotient(a: Option<f64>, b: Option<f64>, digits: usize, unit: &str) -> Option<(f64, String)> {
    let (x, y) = (a?, b?);
    ratio(a, b).map(|q| (q, format!("{x:.digits$} / {y:.digits$} {unit}")))
}

/// Every target, in the order the project lists them.
pub fn check(r: &Results) -> Vec<Target> {
    let mut out = Vec::new();

    let cpu = |sc: &str| ratio(r.cpu("corekv", "off", sc), r.cpu("valkey", "off", sc));
    let worst = match (cpu("set"), cpu("get")) {
        (Some(s), Some(g)) => Some((
            s.max(g),
            format!("SET {s:.2}, GET {g:.2}; the worse counts"),
        )),
        _ => None,
    };
    out.push(Target::new(
        "server CPU per request, SET and GET unpipelined, AOF off",
        "≤ 0.5× Valkey",
        worst,
        |x| x <= 0.5,
    ));

    let (a, e) = (
        r.throughput("corekv", "always", "set"),
        r.throughput("corekv", "everysec", "set"),
    );
    out.push(Target::new(
        "SET throughput, `always` / `everysec`",
        "≥ 0.95",
        quotient(a, e, 0, "req/s"),
        |x| x >= 0.95,
    ));

    for mode in ["always", "everysec", "no"] {
        let p50 = r.latency("corekv", mode, "set-waitaof").map(|l| l.p50);
        let bare = r.fdatasync.map(|(p50, _)| p50);
        out.push(Target::new(
            format!("SET + WAITAOF 1 0 0 p50 / bare fdatasync p50, `{mode}`"),
            "≤ 1.5",
            quotient(p50, bare, 0, "µs, the unit includes its SET"),
            |x| x <= 1.5,
        ));
    }

    let quiet = r.latency("corekv", "always", "get-rate").map(|l| l.p99);
    let loaded = r
        .latency("corekv", "always", "get-rate-writers")
        .map(|l| l.p99);
    out.push(Target::new(
        "GET p99 at a fixed rate, with `always` writers / without",
        "≤ 1.2",
        quotient(loaded, quiet, 0, "µs"),
        |x| x <= 1.2,
    ));

    let (ck, vk) = (r.memory.get("corekv"), r.memory.get("valkey"));
    for (what, get) in [
        (
            "used_memory",
            (|m: &crate::results::Memory| m.used_memory_per_key) as fn(&_) -> f64,
        ),
        ("RSS", |m| m.rss_per_key),
    ] {
        let measured = match (ck, vk) {
            (Some(c), Some(v)) if get(v) > 0.0 => Some((
                get(c) / get(v),
                format!(
                    "{:.0} / {:.0} bytes per key, {} keys",
                    get(c),
                    get(v),
                    c.keys
                ),
            )),
            _ => None,
        };
        out.push(Target::new(
            format!("memory per key ({what}), corekv / Valkey"),
            "≤ 1",
            measured,
            |x| x <= 1.0,
        ));
    }

    let (ck, vk) = (r.replay.get("corekv"), r.replay.get("valkey"));
    let measured = match (ck, vk) {
        (Some(c), Some(v)) if v.ready_ms > 0.0 => Some((
            c.ready_ms / v.ready_ms,
            format!(
                "{:.0} / {:.0} ms to the first PONG, {} keys in the log, {}",
                c.ready_ms,
                v.ready_ms,
                c.keys,
                match (c.cold, v.cold) {
                    (true, true) => "page cache dropped",
                    (false, false) => "page cache not dropped",
                    _ => "page cache dropped for one of them only: not comparable",
                }
            ),
        )),
        _ => None,
    };
    out.push(Target::new(
        "AOF replay time, corekv / Valkey",
        "≤ 0.5",
        measured,
        |x| x <= 0.5,
    ));

    for sc in ["get", "get-p16"] {
        let on = r.cpu_median("corekv", "off", &format!("{sc}-track-yes"));
        let off = r.cpu_median("corekv", "off", &format!("{sc}-track-no"));
        let measured = match (on, off) {
            (Some((on, n)), Some((off, m))) => {
                quotient(Some(on), Some(off), 2, "µs").map(|(q, text)| {
                    (
                        q,
                        format!("{text}, medians of {n} and {m} alternating runs"),
                    )
                })
            }
            _ => None,
        };
        out.push(Target::new(
            format!("latency tracking's cost: CPU per request on / off, {sc}"),
            "no measurable cost (≤ 1.05)",
            measured,
            |x| x <= 1.05,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_has_a_row_even_with_nothing_measured() {
        let targets = check(&Results::default());
        assert_eq!(targets.len(), 11);
        assert!(targets.iter().all(|t| t.measured.is_none() && !t.met));
    }

    #[test]
    fn ratios_decide_met() {
        let mut r = Results::default();
        r.memory.insert(
            "corekv".into(),
            crate::results::Memory {
                keys: 10,
                used_memory_per_key: 50.0,
                rss_per_key: 90.0,
            },
        );
        r.memory.insert(
            "valkey".into(),
            crate::results::Memory {
                keys: 10,
                used_memory_per_key: 100.0,
                rss_per_key: 60.0,
            },
        );
        let replay = |ready_ms| crate::results::Replay {
            keys: 10,
            ready_ms,
            cold: false,
        };
        r.replay.insert("corekv".into(), replay(30.0));
        r.replay.insert("valkey".into(), replay(100.0));
        let targets = check(&r);
        let row = |what: &str| targets.iter().find(|t| t.what.contains(what)).expect(what);
        assert!(row("used_memory").met);
        assert_eq!(
            row("used_memory").measured.as_deref(),
            Some("0.50 (50 / 100 bytes per key, 10 keys)")
        );
        assert!(!row("RSS").met);
        assert!(row("replay").met);
    }
}
