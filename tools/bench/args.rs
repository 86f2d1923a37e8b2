//! Command-line flags, parsed by hand into [`Options`].

use std::fmt;
use std::time::Duration;

/// The usage text printed for `--help` and after every flag error.
pub const USAGE: &str = "\
Usage: corekv-bench [options]

Connection:
  -h <host>              server host (default 127.0.0.1)
  -p <port>              server port (default 6379)
  -c <connections>       connections in all (default 50)
  --threads <n>          threads sharing the connections, each with one epoll loop (default 1)

Load:
  --workload <w>         set | get | mixed:<get-percent> | set-waitaof | set-wait (default set)
  -r <keyspace>          keys key:%012d drawn uniformly from 0..keyspace (default 100000)
  -d <bytes>             value size for SET (default 3)
  -P <depth>             pipeline depth, closed loop only (default 1)
  -n <requests>          requests to measure (default 100000)
  --duration <seconds>   measure for this long instead of -n
  --warmup <seconds>     run this long first without recording (default 0)
  --rate <requests/s>    open loop: send on a fixed schedule at this total rate and count
                         latency from each request's scheduled time
  --wait-timeout <ms>    timeout argument of WAIT for set-wait (default 1000)
  --populate             SET every key of the keyspace once before the run

Output:
  --json                 one JSON object on stdout instead of the summary
  --quiet                no progress line on stderr
  --help                 this text
  --version              the version
";

/// Keys are `key:` and 12 digits, so the keyspace has at most 10^12 keys.
pub const MAX_KEYSPACE: u64 = 1_000_000_000_000;
/// The longest run `--duration`, `--warmup` and `-n` at `--rate` may ask for (about three
/// years): far beyond any benchmark, and short enough that no time computed from it overflows.
const MAX_SECONDS: f64 = 1e8;
/// The lowest and highest `--rate`.
const RATE_RANGE: std::ops::RangeInclusive<f64> = 0.001..=1e9;
/// The largest value `-d` accepts: Valkey's default `proto-max-bulk-len` (512 MiB).
const MAX_VALUE_SIZE: usize = 512 * 1024 * 1024;

/// What each request unit sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// `SET key value`.
    Set,
    /// `GET key`.
    Get,
    /// `GET` with this probability in percent, otherwise `SET`.
    Mixed { get_percent: u8 },
    /// `SET` then `WAITAOF 1 0 0`, measured from the SET's send to the WAITAOF's reply.
    SetWaitAof,
    /// `SET` then `WAIT 1 <timeout>`, measured from the SET's send to the WAIT's reply.
    SetWait,
}

impl Workload {
    /// Commands (and so replies) per request unit.
    pub fn commands_per_unit(self) -> usize {
        match self {
            Workload::SetWaitAof | Workload::SetWait => 2,
            _ => 1,
        }
    }

    /// True when the unit's last reply is a WAIT or WAITAOF acknowledgement count.
    pub fn waits(self) -> bool {
        self.commands_per_unit() == 2
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Workload::Set => f.write_str("set"),
            Workload::Get => f.write_str("get"),
            Workload::Mixed { get_percent } => write!(f, "mixed:{get_percent}"),
            Workload::SetWaitAof => f.write_str("set-waitaof"),
            Workload::SetWait => f.write_str("set-wait"),
        }
    }
}

/// When the measured phase ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stop {
    /// After this many measured request units.
    Requests(u64),
    /// After this long (closed loop: no unit starts later; open loop: the schedule's length).
    Duration(Duration),
}

/// Everything a run needs, as given on the command line.
#[derive(Debug, Clone)]
pub struct Options {
    pub host: String,
    pub port: u16,
    pub connections: usize,
    pub threads: usize,
    pub pipeline: usize,
    pub keyspace: u64,
    pub value_size: usize,
    pub workload: Workload,
    pub wait_timeout_ms: u64,
    pub stop: Stop,
    pub warmup: Duration,
    /// Total offered rate in requests per second (open loop); `None` for closed loop.
    pub rate: Option<f64>,
    pub populate: bool,
    pub json: bool,
    pub quiet: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            host: "127.0.0.1".into(),
            port: 6379,
            connections: 50,
            threads: 1,
            pipeline: 1,
            keyspace: 100_000,
            value_size: 3,
            workload: Workload::Set,
            wait_timeout_ms: 1000,
            stop: Stop::Requests(100_000),
            warmup: Duration::ZERO,
            rate: None,
            populate: false,
            json: false,
            quiet: false,
        }
    }
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    Run(Options),
    Help,
    Version,
}

/// A command line that cannot be run; the binary prints it with [`USAGE`] and exits with 2.
#[derive(Debug, PartialEq)]
pub enum UsageError {
    /// A flag this tool does not have.
    Unknown(String),
    /// A flag given as the last argument without its value.
    MissingValue(String),
    /// A flag's value that does not parse or is out of range.
    BadValue {
        flag: String,
        value: String,
        expected: String,
    },
    /// Flags that cannot be used together.
    Conflict(&'static str),
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UsageError::Unknown(flag) => write!(f, "unknown option '{flag}'"),
            UsageError::MissingValue(flag) => write!(f, "option '{flag}' needs a value"),
            UsageError::BadValue {
                flag,
                value,
                expected,
            } => write!(f, "bad value '{value}' for '{flag}': expected {expected}"),
            UsageError::Conflict(what) => f.write_str(what),
        }
    }
}

/// Parses the arguments after the program name.
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Command, UsageError> {
    let mut o = Options::default();
    let mut requests = None;
    let mut duration = None;
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        // Flags without a value first; every other flag takes the next argument.
        match flag.as_str() {
            "--help" => return Ok(Command::Help),
            "-v" | "--version" => return Ok(Command::Version),
            "--populate" => {
                o.populate = true;
                continue;
            }
            "--json" => {
                o.json = true;
                continue;
            }
            "-q" | "--quiet" => {
                o.quiet = true;
                continue;
            }
            _ => {}
        }
        let mut value = || {
            args.next()
                .ok_or_else(|| UsageError::MissingValue(flag.clone()))
        };
        match flag.as_str() {
            "-h" | "--host" => o.host = value()?,
            "-p" | "--port" => o.port = number(&flag, &value()?, 1, u16::MAX as u64)? as u16,
            "-c" | "--connections" => {
                o.connections = number(&flag, &value()?, 1, 100_000)? as usize
            }
            "--threads" => o.threads = number(&flag, &value()?, 1, 1024)? as usize,
            "-P" | "--pipeline" => o.pipeline = number(&flag, &value()?, 1, 1_000_000)? as usize,
            "-r" | "--keyspace" => o.keyspace = number(&flag, &value()?, 1, MAX_KEYSPACE)?,
            "-d" | "--value-size" => {
                o.value_size = number(&flag, &value()?, 0, MAX_VALUE_SIZE as u64)? as usize
            }
            "-n" | "--requests" => requests = Some(number(&flag, &value()?, 1, u64::MAX)?),
            "--duration" => duration = Some(seconds(&flag, &value()?, false)?),
            "--warmup" => o.warmup = seconds(&flag, &value()?, true)?,
            "--rate" => o.rate = Some(rate(&flag, &value()?)?),
            "--wait-timeout" => o.wait_timeout_ms = number(&flag, &value()?, 0, u64::MAX)?,
            "--workload" => o.workload = workload(&flag, &value()?)?,
            _ => return Err(UsageError::Unknown(flag)),
        }
    }
    o.stop = match (requests, duration) {
        (Some(_), Some(_)) => {
            return Err(UsageError::Conflict(
                "-n and --duration cannot be used together",
            ))
        }
        (_, Some(d)) => Stop::Duration(d),
        (Some(n), None) => Stop::Requests(n),
        (None, None) => Stop::Requests(100_000),
    };
    check(&o)?;
    Ok(Command::Run(o))
}

/// Checks that hold between flags.
fn check(o: &Options) -> Result<(), UsageError> {
    if o.threads > o.connections {
        return Err(UsageError::Conflict(
            "--threads cannot exceed -c: every thread needs a connection",
        ));
    }
    if let (Some(rate), Stop::Requests(n)) = (o.rate, o.stop) {
        if n as f64 / rate > MAX_SECONDS {
            return Err(UsageError::Conflict(
                "-n at --rate would take more than 1e8 seconds",
            ));
        }
    }
    if o.rate.is_some() && o.pipeline > 1 {
        return Err(UsageError::Conflict(
            "-P applies to the closed loop only: with --rate each connection already has as many \
             requests outstanding as the schedule puts there",
        ));
    }
    Ok(())
}

fn bad(flag: &str, value: &str, expected: impl Into<String>) -> UsageError {
    UsageError::BadValue {
        flag: flag.to_string(),
        value: value.to_string(),
        expected: expected.into(),
    }
}

/// An integer in `min..=max`.
fn number(flag: &str, value: &str, min: u64, max: u64) -> Result<u64, UsageError> {
    match value.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(bad(
            flag,
            value,
            format!("a whole number from {min} to {max}"),
        )),
    }
}

/// Seconds as a decimal number; zero only where `zero_ok`.
fn seconds(flag: &str, value: &str, zero_ok: bool) -> Result<Duration, UsageError> {
    let expected = if zero_ok {
        "seconds, 0 or more"
    } else {
        "seconds, more than 0"
    };
    let secs: f64 = value.parse().map_err(|_| bad(flag, value, expected))?;
    // Duration::try_from_secs_f64 rejects NaN, infinities and negatives.
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if (zero_ok || !d.is_zero()) && secs <= MAX_SECONDS => Ok(d),
        _ => Err(bad(
            flag,
            value,
            format!("{expected}, at most {MAX_SECONDS:e}"),
        )),
    }
}

/// A request rate within [`RATE_RANGE`].
fn rate(flag: &str, value: &str) -> Result<f64, UsageError> {
    match value.parse::<f64>() {
        Ok(r) if RATE_RANGE.contains(&r) => Ok(r),
        _ => Err(bad(
            flag,
            value,
            format!(
                "requests per second from {} to {:e}",
                RATE_RANGE.start(),
                RATE_RANGE.end()
            ),
        )),
    }
}

fn workload(flag: &str, value: &str) -> Result<Workload, UsageError> {
    const EXPECTED: &str = "set, get, mixed:<get-percent 0-100>, set-waitaof or set-wait";
    Ok(match value {
        "set" => Workload::Set,
        "get" => Workload::Get,
        "set-waitaof" => Workload::SetWaitAof,
        "set-wait" => Workload::SetWait,
        _ => {
            let percent = value
                .strip_prefix("mixed:")
                .and_then(|p| p.parse::<u8>().ok())
                .filter(|p| *p <= 100)
                .ok_or_else(|| bad(flag, value, EXPECTED))?;
            Workload::Mixed {
                get_percent: percent,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Options, UsageError> {
        match parse(args.iter().map(|s| s.to_string()))? {
            Command::Run(o) => Ok(o),
            other => panic!("not a run: {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let o = run(&[]).expect("defaults parse");
        assert_eq!(o.host, "127.0.0.1");
        assert_eq!(o.port, 6379);
        assert_eq!(o.connections, 50);
        assert_eq!(o.stop, Stop::Requests(100_000));
        assert_eq!(o.workload, Workload::Set);
    }

    #[test]
    fn flags() {
        let o = run(&[
            "-h",
            "::1",
            "-p",
            "7000",
            "-c",
            "8",
            "--threads",
            "2",
            "-r",
            "10",
            "-d",
            "100",
            "--workload",
            "mixed:90",
            "--duration",
            "1.5",
            "--warmup",
            "0.5",
            "--rate",
            "2000",
            "--populate",
            "--json",
            "--quiet",
        ])
        .expect("parses");
        assert_eq!(o.host, "::1");
        assert_eq!(o.port, 7000);
        assert_eq!(
            (o.connections, o.threads, o.keyspace, o.value_size),
            (8, 2, 10, 100)
        );
        assert_eq!(o.workload, Workload::Mixed { get_percent: 90 });
        assert_eq!(o.stop, Stop::Duration(Duration::from_millis(1500)));
        assert_eq!(o.warmup, Duration::from_millis(500));
        assert_eq!(o.rate, Some(2000.0));
        assert!(o.populate && o.json && o.quiet);
    }

    #[test]
    fn bad_flags() {
        assert!(matches!(run(&["--bogus"]), Err(UsageError::Unknown(_))));
        assert!(matches!(run(&["-c"]), Err(UsageError::MissingValue(_))));
        for args in [
            &["-c", "0"][..],
            &["-c", "x"],
            &["-p", "70000"],
            &["--workload", "mixed:101"],
            &["--workload", "del"],
            &["--duration", "0"],
            &["--rate", "-1"],
            &["--warmup", "nan"],
            &["--duration", "1e9"],
            &["--rate", "1e-9"],
            &["-r", "1000000000001"],
        ] {
            assert!(
                matches!(run(args), Err(UsageError::BadValue { .. })),
                "{args:?}"
            );
        }
        assert!(matches!(
            run(&["-n", "5", "--duration", "1"]),
            Err(UsageError::Conflict(_))
        ));
        assert!(matches!(
            run(&["-c", "1", "--threads", "2"]),
            Err(UsageError::Conflict(_))
        ));
        assert!(matches!(
            run(&["--rate", "10", "-P", "4"]),
            Err(UsageError::Conflict(_))
        ));
        assert!(matches!(
            run(&["--rate", "0.001", "-n", "1000000"]),
            Err(UsageError::Conflict(_))
        ));
    }
}
