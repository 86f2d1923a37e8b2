//! The measurements `perf/run` wrote: one JSON object per line.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::error::ReportError;

/// Latency percentiles of a run, in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub p99_99: f64,
    pub max: f64,
}

/// One corekv-bench run against one server.
#[derive(Debug, Clone)]
pub struct Run {
    pub system: String,
    pub mode: String,
    pub scenario: String,
    /// Server CPU time (user + system) during the run.
    pub cpu_s: f64,
    pub wall_s: f64,
    /// corekv only (from INFO): fdatasyncs and records they made durable during the run.
    pub fsyncs: u64,
    pub records_synced: u64,
    /// corekv only: writes per fdatasync, p50 / p99 / max over the run (from INFO).
    pub batch: Option<[u64; 3]>,
    pub requests: u64,
    pub throughput: f64,
    pub latency: Percentiles,
    /// (percentile in %, µs).
    pub curve: Vec<(f64, f64)>,
    pub errors: u64,
    pub missed_acks: u64,
}

impl Run {
    /// Server CPU microseconds per measured request.
    pub fn cpu_us_per_request(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.cpu_s * 1e6 / self.requests as f64)
    }
}

/// `a / b` when both were measured and `b` is not zero.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// Memory per key after loading keys into an empty server.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub keys: u64,
    pub used_memory_per_key: f64,
    pub rss_per_key: f64,
}

/// One row of valkey-benchmark's default suite against one server.
#[derive(Debug, Clone)]
pub struct SuiteRow {
    pub system: String,
    /// The `-t` name the row came from (`lrange` gives several rows).
    pub group: String,
    /// What was measured; `None` when the server answered an error (valkey-benchmark stops).
    pub measured: Option<SuiteResult>,
    /// Error replies the server counted while the group ran.
    pub errors: u64,
}

/// One measured row of the suite.
#[derive(Debug, Clone)]
pub struct SuiteResult {
    /// valkey-benchmark's name for it (`SET`, `LRANGE_100 (first 100 elements)`, …).
    pub test: String,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// A restart with a loaded log.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Replay {
    /// Keys in the log.
    pub keys: u64,
    /// From the start to the first PONG.
    pub ready_ms: f64,
    /// Whether the page cache was dropped first (the log read from the disk).
    pub cold: bool,
}

/// Everything one harness run measured.
#[derive(Debug, Default)]
pub struct Results {
    pub runs: Vec<Run>,
    /// A bare 4 KiB append + fdatasync in the servers' directory: p50, p99 in µs.
    pub fdatasync: Option<(f64, f64)>,
    /// By system.
    pub memory: BTreeMap<String, Memory>,
    /// By system.
    pub replay: BTreeMap<String, Replay>,
    /// valkey-benchmark's default suite, in the order it ran.
    pub suite: Vec<SuiteRow>,
    /// Every line as written.
    pub raw: Vec<Value>,
}

impl Results {
    pub fn read(path: &Path) -> Result<Results, ReportError> {
        let text = std::fs::read_to_string(path).map_err(|source| ReportError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut results = Results::default();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let value: Value = serde_json::from_str(line).map_err(|source| ReportError::Json {
                line: i + 1,
                source,
            })?;
            results.add(&Line {
                value: &value,
                at: i + 1,
            })?;
            results.raw.push(value);
        }
        Ok(results)
    }

    fn add(&mut self, line: &Line<'_>) -> Result<(), ReportError> {
        let system = line.text("system")?;
        match line.text("scenario")?.as_str() {
            "fdatasync" => self.fdatasync = Some((line.number("p50_us")?, line.number("p99_us")?)),
            "memory" => {
                let memory = Memory {
                    keys: line.number("keys")? as u64,
                    used_memory_per_key: line.number("used_memory_per_key")?,
                    rss_per_key: line.number("rss_per_key")?,
                };
                self.memory.insert(system, memory);
            }
            "valkey-benchmark" => {
                let measured = match line.value.get("test") {
                    None | Some(Value::Null) => None,
                    Some(_) => Some(SuiteResult {
                        test: line.text("test")?,
                        rps: line.number("rps")?,
                        p50_ms: line.number("p50_ms")?,
                        p99_ms: line.number("p99_ms")?,
                    }),
                };
                self.suite.push(SuiteRow {
                    system,
                    group: line.text("group")?,
                    measured,
                    errors: line.number("errors")? as u64,
                });
            }
            "replay" => {
                let replay = Replay {
                    keys: line.number("keys")? as u64,
                    ready_ms: line.number("ready_ms")?,
                    cold: line.value.get("cold").and_then(Value::as_bool) == Some(true),
                };
                self.replay.insert(system, replay);
            }
            _ => self.runs.push(line.run()?),
        }
        Ok(())
    }

    /// The run of `scenario` on `system` with the AOF in `mode`.
    pub fn run(&self, system: &str, mode: &str, scenario: &str) -> Option<&Run> {
        self.runs
            .iter()
            .find(|r| r.system == system && r.mode == mode && r.scenario == scenario)
    }

    /// The median CPU per request over every run of `scenario` (a scenario run several times
    /// in turn with another, to compare the two beyond run-to-run noise); with the count.
    pub fn cpu_median(&self, system: &str, mode: &str, scenario: &str) -> Option<(f64, usize)> {
        let mut values: Vec<f64> = self
            .runs
            .iter()
            .filter(|r| r.system == system && r.mode == mode && r.scenario == scenario)
            .filter_map(Run::cpu_us_per_request)
            .collect();
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let mid = values.len() / 2;
        let median = if values.len() % 2 == 1 {
            values[mid]
        } else {
            (values[mid - 1] + values[mid]) / 2.0
        };
        Some((median, values.len()))
    }

    pub fn throughput(&self, system: &str, mode: &str, scenario: &str) -> Option<f64> {
        self.run(system, mode, scenario).map(|r| r.throughput)
    }

    pub fn latency(&self, system: &str, mode: &str, scenario: &str) -> Option<Percentiles> {
        self.run(system, mode, scenario).map(|r| r.latency)
    }

    pub fn cpu(&self, system: &str, mode: &str, scenario: &str) -> Option<f64> {
        self.run(system, mode, scenario)
            .and_then(Run::cpu_us_per_request)
    }
}

/// One line of the results, with its number for error messages.
struct Line<'a> {
    value: &'a Value,
    at: usize,
}

impl Line<'_> {
    fn field(&self, path: &[&str]) -> Result<&Value, ReportError> {
        let mut v = self.value;
        for name in path {
            v = v.get(name).ok_or_else(|| ReportError::Field {
                line: self.at,
                name: path.join("."),
            })?;
        }
        Ok(v)
    }

    fn text(&self, name: &str) -> Result<String, ReportError> {
        let v = self.field(&[name])?;
        v.as_str().map(str::to_string).ok_or(ReportError::Field {
            line: self.at,
            name: name.to_string(),
        })
    }

    fn number_at(&self, path: &[&str]) -> Result<f64, ReportError> {
        self.field(path)?
            .as_f64()
            .ok_or_else(|| ReportError::Field {
                line: self.at,
                name: path.join("."),
            })
    }

    fn number(&self, name: &str) -> Result<f64, ReportError> {
        self.number_at(&[name])
    }

    fn run(&self) -> Result<Run, ReportError> {
        let latency = |q: &str| self.number_at(&["bench", "latency_us", q]);
        let batch = match self.value.get("batch") {
            Some(Value::Null) | None => None,
            Some(_) => Some([
                self.number_at(&["batch", "p50"])? as u64,
                self.number_at(&["batch", "p99"])? as u64,
                self.number_at(&["batch", "max"])? as u64,
            ]),
        };
        let curve = self
            .value
            .pointer("/bench/percentile_curve")
            .and_then(Value::as_array)
            .map(|points| {
                points
                    .iter()
                    .filter_map(|p| Some((p.get(0)?.as_f64()?, p.get(1)?.as_f64()?)))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Run {
            system: self.text("system")?,
            mode: self.text("mode")?,
            scenario: self.text("scenario")?,
            cpu_s: self.number("cpu_s")?,
            wall_s: self.number("wall_s")?,
            fsyncs: self.number("fsyncs")? as u64,
            records_synced: self.number("records_synced")? as u64,
            batch,
            requests: self.number_at(&["bench", "requests"])? as u64,
            throughput: self.number_at(&["bench", "throughput_rps"])?,
            latency: Percentiles {
                p50: latency("p50")?,
                p99: latency("p99")?,
                p99_9: latency("p99_9")?,
                p99_99: latency("p99_99")?,
                max: latency("max")?,
            },
            curve,
            errors: self.number_at(&["bench", "errors"])? as u64,
            missed_acks: self.number_at(&["bench", "missed_acks"])? as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn results(lines: &[&str]) -> Result<Results, ReportError> {
        let dir = tempfile::tempdir().map_err(|source| ReportError::Read {
            path: "temp".into(),
            source,
        })?;
        let path = dir.path().join("r.jsonl");
        std::fs::write(&path, lines.join("\n")).map_err(|source| ReportError::Read {
            path: "temp".into(),
            source,
        })?;
        Results::read(&path)
    }

    const RUN: &str = r#"{"system":"corekv","mode":"always","scenario":"set","cpu_s":1.5,"wall_s":2,"fsyncs":10,"records_synced":100,"batch":{"p50":8,"p99":20,"max":21},"bench":{"requests":1000,"throughput_rps":500,"latency_us":{"p50":1,"p99":2,"p99_9":3,"p99_99":4,"max":5},"percentile_curve":[[50,1],[100,5]],"errors":0,"missed_acks":0}}"#;

    #[test]
    fn cpu_median_takes_every_run_of_a_scenario() {
        let line = |cpu: f64| RUN.replace(r#""cpu_s":1.5"#, &format!(r#""cpu_s":{cpu}"#));
        let r = results(&[&line(1.0), &line(9.0), &line(2.0)]).expect("valid results");
        // 1000 requests each: 1, 9 and 2 s of CPU make 1000, 9000 and 2000 µs per request.
        assert_eq!(r.cpu_median("corekv", "always", "set"), Some((2000.0, 3)));
        let r = results(&[&line(1.0), &line(3.0)]).expect("valid results");
        assert_eq!(r.cpu_median("corekv", "always", "set"), Some((2000.0, 2)));
        assert_eq!(r.cpu_median("corekv", "always", "get"), None);
    }

    #[test]
    fn reads_every_kind_of_line() {
        let r = results(&[
            RUN,
            r#"{"system":"disk","scenario":"fdatasync","p50_us":250,"p99_us":300}"#,
            r#"{"system":"valkey","scenario":"memory","keys":10,"used_memory_per_key":60.5,"rss_per_key":70}"#,
            r#"{"system":"corekv","scenario":"replay","keys":10,"ready_ms":12,"cold":true}"#,
            r#"{"system":"corekv","scenario":"valkey-benchmark","group":"lpush","test":null,"errors":20}"#,
            r#"{"system":"valkey","scenario":"valkey-benchmark","group":"get","test":"GET","rps":9.5,"p50_ms":0.2,"p99_ms":0.4,"errors":0}"#,
            "",
        ])
        .expect("valid results");
        let run = r.run("corekv", "always", "set").expect("the run");
        assert_eq!(run.batch, Some([8, 20, 21]));
        assert_eq!(run.cpu_us_per_request(), Some(1500.0));
        assert_eq!(run.curve, vec![(50.0, 1.0), (100.0, 5.0)]);
        assert_eq!(r.fdatasync, Some((250.0, 300.0)));
        assert_eq!(r.memory["valkey"].used_memory_per_key, 60.5);
        let replay = Replay {
            keys: 10,
            ready_ms: 12.0,
            cold: true,
        };
        assert_eq!(r.replay["corekv"], replay);
        assert!(r.run("valkey", "always", "set").is_none());
        assert!(r.suite[0].measured.is_none() && r.suite[0].errors == 20);
        let get = r.suite[1].measured.as_ref().expect("a measured row");
        assert_eq!((get.test.as_str(), get.rps), ("GET", 9.5));
    }

    #[test]
    fn names_the_line_and_field_that_is_wrong() {
        let err = results(&[RUN, r#"{"system":"corekv","mode":"no","scenario":"get"}"#])
            .expect_err("a run without measurements");
        assert_eq!(
            err.to_string(),
            "results line 2: missing or malformed field cpu_s"
        );
        let err = results(&["{not json"]).expect_err("bad JSON");
        assert!(err.to_string().starts_with("results line 1: "), "{err}");
    }
}
