//! `corekv-bench` against the real server: its counts agree with the server's own
//! (`INFO commandstats`, `INFO stats`, `DBSIZE`), error replies and missed acknowledgements
//! are counted, the open loop keeps its schedule and charges a server stall to the requests
//! it delayed, and bad command lines or lost connections end with a clear message.

mod common;

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::{Raw, Server};

const BENCH: &str = env!("CARGO_BIN_EXE_corekv-bench");
/// No run here should take anywhere near this long.
const RUN_DEADLINE: Duration = Duration::from_secs(60);

// ------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------

/// Starts the bench against `port` with `args`.
fn spawn(port: u16, args: &[&str]) -> Child {
    Command::new(BENCH)
        .args(["-p", &port.to_string()])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn corekv-bench")
}

/// Waits for a started bench and collects its output.
fn finish(mut child: Child) -> Output {
    let status = common::wait_or_kill(&mut child, RUN_DEADLINE);
    assert!(status.is_some(), "corekv-bench did not finish");
    child.wait_with_output().expect("bench output")
}

/// Runs the bench with `--json --quiet` and returns its JSON, asserting a clean exit.
#[track_caller]
fn run_json(port: u16, args: &[&str]) -> String {
    let mut all = vec!["--json", "--quiet"];
    all.extend_from_slice(args);
    json_of(finish(spawn(port, &all)))
}

/// The JSON line of a finished run, asserting a clean exit.
#[track_caller]
fn json_of(out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "corekv-bench failed ({:?}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let json = stdout.trim().to_string();
    assert!(
        json.starts_with('{') && json.ends_with('}') && !json.contains('\n'),
        "not one JSON object: {json}"
    );
    json
}

/// The number after `"key":` in the bench's JSON (keys are unique in it).
#[track_caller]
fn num(json: &str, key: &str) -> f64 {
    let pattern = format!("\"{key}\":");
    let at = json
        .find(&pattern)
        .unwrap_or_else(|| panic!("no {key} in {json}"))
        + pattern.len();
    let digits: String = json[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == '-')
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in {json}"))
}

#[track_caller]
fn count(json: &str, key: &str) -> u64 {
    num(json, key) as u64
}

/// `calls=` of `cmdstat_<command>` in INFO commandstats; 0 if the command never ran.
fn calls(raw: &mut Raw, command: &str) -> u64 {
    let info = common::info(raw, "commandstats");
    common::field(&info, &format!("cmdstat_{command}"))
        .and_then(|v| {
            v.split(',')
                .find_map(|f| f.strip_prefix("calls=").map(str::to_string))
        })
        .map_or(0, |v| v.parse().expect("calls= is a number"))
}

/// Waits until the server has run `command` at least `n` times while `bench` still runs.
#[track_caller]
fn wait_for_calls(server: &Server, bench: &mut Child, command: &str, n: u64) {
    let mut raw = server.raw();
    let seen = common::eventually(Duration::from_secs(20), || {
        let exited = matches!(bench.try_wait(), Ok(Some(_)));
        exited || calls(&mut raw, command) >= n
    });
    if let Ok(Some(status)) = bench.try_wait() {
        let mut out = String::new();
        if let Some(mut err) = bench.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut err, &mut out);
        }
        panic!("corekv-bench ended ({status}) before the server saw {n} {command} calls: {out}");
    }
    assert!(seen, "the server never saw {n} {command} calls");
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

// ------------------------------------------------------------------------------------------
// Counts
// ------------------------------------------------------------------------------------------

#[test]
fn closed_loop_sends_exactly_n_requests() {
    let server = Server::start(1, &[]);
    let json = run_json(
        server.port,
        &[
            "-n",
            "5000",
            "-c",
            "10",
            "-P",
            "4",
            "--workload",
            "set",
            "-r",
            "1000",
        ],
    );
    assert_eq!(count(&json, "requests"), 5000, "{json}");
    assert_eq!(count(&json, "errors"), 0, "{json}");
    assert!(num(&json, "throughput_rps") > 0.0, "{json}");
    assert!(count(&json, "p50") <= count(&json, "max"), "{json}");
    let mut raw = server.raw();
    assert_eq!(calls(&mut raw, "set"), 5000);
    assert!(common::int(&raw.cmd(&["DBSIZE"])) <= 1000);

    // Two threads, and the readable summary instead of JSON.
    let out = finish(spawn(
        server.port,
        &["-n", "3001", "-c", "5", "--threads", "2", "--quiet"],
    ));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("requests      3001 in"), "{text}");
    assert!(text.contains("p99.9"), "{text}");
    assert_eq!(calls(&mut raw, "set"), 8001);
}

#[test]
fn populated_gets_all_hit() {
    let server = Server::start(2, &[]);
    let json = run_json(
        server.port,
        &[
            "--populate",
            "-r",
            "1000",
            "--workload",
            "get",
            "-n",
            "3000",
            "-c",
            "8",
            "--threads",
            "2",
            "-P",
            "3",
        ],
    );
    assert_eq!(count(&json, "populated"), 1000, "{json}");
    assert_eq!(count(&json, "requests"), 3000, "{json}");
    assert_eq!(count(&json, "errors"), 0, "{json}");
    let mut raw = server.raw();
    assert_eq!(common::int(&raw.cmd(&["DBSIZE"])), 1000);
    assert_eq!(calls(&mut raw, "set"), 1000);
    assert_eq!(calls(&mut raw, "get"), 3000);
    let stats = common::info(&mut raw, "stats");
    assert_eq!(common::field_u64(&stats, "keyspace_hits"), 3000, "{stats}");
    assert_eq!(common::field_u64(&stats, "keyspace_misses"), 0, "{stats}");
}

// ------------------------------------------------------------------------------------------
// Errors and acknowledgements
// ------------------------------------------------------------------------------------------

#[test]
fn error_replies_are_counted_by_prefix() {
    let server = Server::start(1, &["--requirepass", "secret"]);
    let json = run_json(server.port, &["-n", "1000", "-c", "5", "-P", "10"]);
    assert_eq!(count(&json, "requests"), 1000, "{json}");
    assert_eq!(count(&json, "errors"), 1000, "{json}");
    assert!(
        json.contains("\"errors_by_prefix\":{\"NOAUTH\":1000}"),
        "{json}"
    );
    assert!(
        json.contains("\"NOAUTH\":\"NOAUTH Authentication required.\""),
        "{json}"
    );

    // WAITAOF with the log off answers an error after every (successful) SET: one error per
    // unit, counted as an error and not as a missed acknowledgement.
    let server = Server::start(1, &[]);
    let json = run_json(
        server.port,
        &["-n", "200", "-c", "4", "--workload", "set-waitaof"],
    );
    assert_eq!(count(&json, "requests"), 200, "{json}");
    assert!(
        json.contains("\"errors_by_prefix\":{\"ERR\":200}"),
        "{json}"
    );
    assert_eq!(count(&json, "missed_acks"), 0, "{json}");
    let mut raw = server.raw();
    assert_eq!(calls(&mut raw, "set"), 200);
}

#[test]
fn set_waitaof_units_are_acknowledged() {
    let server = common::start(1, &["--appendonly", "yes"]);
    let json = run_json(
        server.port,
        &[
            "-n",
            "300",
            "-c",
            "4",
            "-P",
            "2",
            "--workload",
            "set-waitaof",
            "-r",
            "50",
        ],
    );
    assert_eq!(count(&json, "requests"), 300, "{json}");
    assert_eq!(count(&json, "errors"), 0, "{json}");
    assert_eq!(count(&json, "missed_acks"), 0, "{json}");
    let mut raw = server.raw();
    assert_eq!(calls(&mut raw, "set"), 300);
    assert_eq!(calls(&mut raw, "waitaof"), 300);
}

#[test]
fn wait_without_replicas_misses_every_ack() {
    // No replica ever acknowledges, so each WAIT 1 times out and reports 0.
    let server = Server::start(1, &[]);
    let json = run_json(
        server.port,
        &[
            "-n",
            "20",
            "-c",
            "4",
            "--workload",
            "set-wait",
            "--wait-timeout",
            "10",
        ],
    );
    assert_eq!(count(&json, "requests"), 20, "{json}");
    assert_eq!(count(&json, "errors"), 0, "{json}");
    assert_eq!(count(&json, "missed_acks"), 20, "{json}");
    // Each unit waited out the timeout before its latency stopped.
    assert!(count(&json, "p50") >= 10_000, "{json}");
    let mut raw = server.raw();
    assert_eq!(calls(&mut raw, "wait"), 20);
}

// ------------------------------------------------------------------------------------------
// Open loop
// ------------------------------------------------------------------------------------------

#[test]
fn open_loop_sends_what_the_schedule_says() {
    let server = Server::start(1, &[]);
    let json = run_json(
        server.port,
        &[
            "--rate",
            "2000",
            "--duration",
            "1",
            "-c",
            "10",
            "--threads",
            "2",
        ],
    );
    assert_eq!(count(&json, "requests"), 2000, "{json}");
    let mut raw = server.raw();
    assert_eq!(calls(&mut raw, "set"), 2000);

    // With a warm-up, its slots are sent (the server counts them) but not reported.
    let json = run_json(
        server.port,
        &["--rate", "1000", "--warmup", "0.2", "-n", "300", "-c", "3"],
    );
    assert_eq!(count(&json, "requests"), 300, "{json}");
    assert_eq!(calls(&mut raw, "set"), 2000 + 200 + 300);
}

/// The stall injected into the runs below.
const SLEEP_US: u64 = 300_000;

#[test]
fn open_loop_charges_a_stall_to_the_requests_it_delayed() {
    const RATE: u64 = 2000;
    const SLOT_US: u64 = 1_000_000 / RATE;
    let server = Server::start(1, &[]);
    let mut bench = spawn(
        server.port,
        &[
            "--json",
            "--quiet",
            "--rate",
            "2000",
            "--duration",
            "2",
            "-c",
            "10",
        ],
    );
    // A tenth of the way in, stall the (only) shard.
    wait_for_calls(&server, &mut bench, "set", 200);
    common::ok(&mut server.raw(), &["DEBUG", "SLEEP", "0.3"]);
    let json = json_of(finish(bench));
    assert_eq!(count(&json, "requests"), 2 * RATE, "{json}");
    let mut raw = server.raw();
    assert_eq!(calls(&mut raw, "set"), 2 * RATE);
    // Requests scheduled during the sleep were answered after it, and their latency counts
    // from their scheduled time. The first one scheduled after the sleep began waited for all
    // of it but at most one slot; the k-th largest latency is at most k slots shorter.
    // (Closed loop would charge the stall to one request per connection only.)
    assert!(count(&json, "max") >= SLEEP_US - SLOT_US, "{json}");
    // p99.9 of 4000 requests is the 4th largest.
    assert!(count(&json, "p99_9") >= SLEEP_US - 4 * SLOT_US, "{json}");
}

#[test]
fn closed_loop_counts_stay_exact_through_a_stall() {
    let server = Server::start(1, &[]);
    // Not quiet: the progress line shows on stderr.
    let mut bench = spawn(server.port, &["--json", "--duration", "2", "-c", "10"]);
    wait_for_calls(&server, &mut bench, "set", 100);
    common::ok(&mut server.raw(), &["DEBUG", "SLEEP", "0.3"]);
    let out = finish(bench);
    let progress = stderr(&out);
    assert!(
        progress.contains('\r') && progress.contains("rps") && progress.contains("p99"),
        "no progress line: {progress:?}"
    );
    let json = json_of(out);
    assert_eq!(count(&json, "errors"), 0, "{json}");
    let mut raw = server.raw();
    assert_eq!(calls(&mut raw, "set"), count(&json, "requests"));
}

// ------------------------------------------------------------------------------------------
// Failures
// ------------------------------------------------------------------------------------------

#[test]
fn bad_flags_exit_2_with_usage() {
    for args in [
        &["--bogus"][..],
        &["-c", "0"],
        &["-c", "many"],
        &["-p"],
        &["--workload", "del"],
        &["--workload", "mixed:101"],
        &["-n", "10", "--duration", "1"],
        &["--rate", "0"],
        &["--rate", "100", "-P", "8"],
        &["-c", "2", "--threads", "3"],
        &["--duration", "-1"],
    ] {
        let out = Command::new(BENCH).args(args).output().expect("run bench");
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("Usage: corekv-bench"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    let out = Command::new(BENCH)
        .arg("--help")
        .output()
        .expect("run bench");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--workload"));
}

#[test]
fn refused_connection_exits_1() {
    let port = common::free_port();
    let out = finish(spawn(port, &["-n", "10", "--quiet"]));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("can't connect to 127.0.0.1:"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn server_gone_mid_run_exits_1() {
    let mut server = Server::start(1, &[]);
    let mut bench = spawn(server.port, &["--duration", "30", "--quiet", "-c", "4"]);
    wait_for_calls(&server, &mut bench, "set", 100);
    common::kill9(&mut server);
    let out = finish(bench);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("closed by the server"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
