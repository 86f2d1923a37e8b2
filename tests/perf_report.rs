//! `corekv-perf-report` on measurements shaped as `perf/run` writes them, with the run lines
//! made by the real `corekv-bench` against the real server: the report reads them, lists every
//! target, draws its plots, refreshes only the marked part of a README, and names the line of
//! a results file it cannot use.

mod common;

use std::path::Path;
use std::process::{Command, Output};

const BENCH: &str = env!("CARGO_BIN_EXE_corekv-bench");
const REPORT: &str = env!("CARGO_BIN_EXE_corekv-perf-report");

/// corekv-bench's JSON for a short run against `port`.
fn bench_json(port: u16, args: &[&str]) -> String {
    let out = Command::new(BENCH)
        .args([
            "-p",
            &port.to_string(),
            "--json",
            "--quiet",
            "-c",
            "4",
            "-r",
            "100",
        ])
        .args(args)
        .output()
        .expect("run corekv-bench");
    assert!(out.status.success(), "corekv-bench failed: {out:?}");
    String::from_utf8(out.stdout)
        .expect("UTF-8 JSON")
        .trim()
        .to_string()
}

/// One `perf/run` line for a run.
fn run_line(system: &str, mode: &str, scenario: &str, cpu_s: f64, bench: &str) -> String {
    format!(
        r#"{{"system":"{system}","mode":"{mode}","scenario":"{scenario}","cpu_s":{cpu_s},"wall_s":1,"fsyncs":4,"records_synced":40,"batch":{{"p50":8,"p99":12,"max":12}},"bench":{bench}}}"#
    )
}

fn report(results: &Path, out: &Path, readme: &Path) -> Output {
    Command::new(REPORT)
        .arg("--results")
        .arg(results)
        .arg("--out")
        .arg(out)
        .args(["--machine", "test machine", "--command", "perf/run --quick"])
        .args(["--mode", "quick", "--rate", "5000", "--readme"])
        .arg(readme)
        .output()
        .expect("run corekv-perf-report")
}

#[test]
fn report_from_real_bench_output() {
    let server = common::Server::start(1, &[]);
    let set = bench_json(server.port, &["--workload", "set", "-n", "2000"]);
    let get = bench_json(server.port, &["--workload", "get", "-n", "2000"]);
    let mut lines = vec![
        r#"{"system":"disk","scenario":"fdatasync","p50_us":200,"p99_us":300}"#.to_string(),
        r#"{"system":"corekv","scenario":"memory","keys":1000,"used_memory_per_key":60,"rss_per_key":70}"#.to_string(),
        r#"{"system":"valkey","scenario":"memory","keys":1000,"used_memory_per_key":80,"rss_per_key":90}"#.to_string(),
        r#"{"system":"corekv","scenario":"replay","keys":1000,"ready_ms":40,"cold":true}"#.to_string(),
        r#"{"system":"valkey","scenario":"replay","keys":1000,"ready_ms":100,"cold":true}"#.to_string(),
        r#"{"system":"corekv","scenario":"valkey-benchmark","group":"lpush","test":null,"errors":50}"#.to_string(),
        r#"{"system":"valkey","scenario":"valkey-benchmark","group":"lpush","test":"LPUSH","rps":90000,"p50_ms":0.3,"p99_ms":0.5,"errors":0}"#.to_string(),
    ];
    // The same runs stand for both systems; only the CPU differs, so the ratios are known.
    for (system, cpu) in [("corekv", 0.02), ("valkey", 0.01)] {
        for mode in ["off", "always", "everysec", "no"] {
            lines.push(run_line(system, mode, "set", cpu, &set));
            lines.push(run_line(system, mode, "get", cpu, &get));
            lines.push(run_line(system, mode, "get-rate", cpu, &get));
            lines.push(run_line(system, mode, "set-waitaof", cpu, &set));
        }
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let results = dir.path().join("results.jsonl");
    std::fs::write(&results, lines.join("\n") + "\n").expect("write results");
    let readme = dir.path().join("README.md");
    std::fs::write(
        &readme,
        "intro\n<!-- perf/run table: begin -->\nold\n<!-- perf/run table: end -->\nafter\n",
    )
    .expect("write README");
    let prefix = dir.path().join("run");

    let out = report(&results, &prefix, &readme);
    assert!(out.status.success(), "report failed: {out:?}");
    let md = std::fs::read_to_string(dir.path().join("run.md")).expect("markdown");
    assert_eq!(String::from_utf8_lossy(&out.stdout), md);
    // CPU: corekv 2× Valkey on SET and GET; memory 0.75; replay 0.40.
    assert!(
        md.contains("| 2.00 (SET 2.00, GET 2.00; the worse counts) | not met |"),
        "{md}"
    );
    assert!(
        md.contains("| 0.75 (60 / 80 bytes per key, 1000 keys) | **met** |"),
        "{md}"
    );
    assert!(
        md.contains("| 0.40 (40 / 100 ms to the first PONG, 1000 keys in the log, page cache dropped) | **met** |"),
        "{md}"
    );
    // Measured nothing for: GET with writers, and tracking on/off.
    assert_eq!(md.matches("not measured in this run").count(), 3, "{md}");
    assert!(md.contains("not in corekv (50 error replies)"), "{md}");
    assert!(
        md.contains("4 fsync/s, 10.0 writes/fsync (p50 8, p99 12, max 12)"),
        "{md}"
    );
    for plot in ["throughput", "latency-curves", "waitaof"] {
        let svg = std::fs::read_to_string(dir.path().join(format!("run-{plot}.svg")))
            .expect("plot written");
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{plot}"
        );
        assert!(
            svg.contains("corekv") && svg.contains("Valkey"),
            "{plot} has no legend"
        );
    }
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("run.json")).expect("JSON report"),
    )
    .expect("valid JSON");
    assert_eq!(json["targets"].as_array().map(Vec::len), Some(11));
    assert_eq!(
        json["measurements"].as_array().map(Vec::len),
        Some(lines.len())
    );
    let readme = std::fs::read_to_string(&readme).expect("README");
    assert!(readme.starts_with("intro\n<!-- perf/run table: begin -->\n### perf/run (quick)"));
    assert!(readme.ends_with("<!-- perf/run table: end -->\nafter\n"));
    assert!(!readme.contains("old"));
}

#[test]
fn bad_results_name_their_line_and_change_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let results = dir.path().join("results.jsonl");
    std::fs::write(
        &results,
        "{\"system\":\"disk\",\"scenario\":\"fdatasync\",\"p50_us\":1,\"p99_us\":2}\n{\"system\":\"corekv\",\"mode\":\"off\",\"scenario\":\"set\"}\n",
    )
    .expect("write results");
    let readme = dir.path().join("README.md");
    std::fs::write(&readme, "unchanged\n").expect("write README");
    let out = report(&results, &dir.path().join("run"), &readme);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("results line 2: missing or malformed field cpu_s"),
        "{err}"
    );
    assert!(!dir.path().join("run.md").exists());
    assert_eq!(
        std::fs::read_to_string(&readme).expect("README"),
        "unchanged\n"
    );

    let out = Command::new(REPORT).arg("--out").output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: corekv-perf-report"));
}
