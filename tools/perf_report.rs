//! `corekv-perf-report`: turns the measurements `perf/run` wrote (one JSON object per line)
//! into the harness's report.
//!
//! ```text
//! corekv-perf-report --results results.jsonl --out perf/results/2026-11-25-host \
//!     --machine "2 CPUs, …" --command "perf/run --quick" --mode quick --readme perf/README.md
//! ```
//!
//! Writes `<out>.md` (targets met or not, throughput and server CPU per request, latency
//! percentiles with fsyncs and group-commit batch sizes, memory per key, replay time),
//! `<out>.json` (every measurement and the targets) and SVG plots `<out>-*.svg`, prints the
//! markdown, and with `--readme` replaces the text between the file's
//! `<!-- perf/run table: begin -->` and `<!-- perf/run table: end -->` lines with it.

#[path = "perf_report/error.rs"]
mod error;
#[path = "perf_report/markdown.rs"]
mod markdown;
#[path = "perf_report/plots.rs"]
mod plots;
#[path = "perf_report/results.rs"]
mod results;
#[path = "perf_report/targets.rs"]
mod targets;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use error::ReportError;
use results::Results;

const BEGIN: &str = "<!-- perf/run table: begin -->";
const END: &str = "<!-- perf/run table: end -->";

#[derive(Debug, Default)]
struct Options {
    results: PathBuf,
    out: String,
    machine: String,
    command: String,
    mode: String,
    readme: Option<PathBuf>,
    /// The fixed offered rate of the GET latency runs, for the plot titles.
    rate: Option<f64>,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Options, ReportError> {
    let mut o = Options::default();
    let mut results = None;
    let mut out = None;
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| ReportError::Usage(format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--results" => results = Some(PathBuf::from(value()?)),
            "--out" => out = Some(value()?),
            "--machine" => o.machine = value()?,
            "--command" => o.command = value()?,
            "--mode" => o.mode = value()?,
            "--readme" => o.readme = Some(PathBuf::from(value()?)),
            "--rate" => {
                let v = value()?;
                o.rate = Some(
                    v.parse()
                        .map_err(|_| ReportError::Usage(format!("--rate {v}: not a number")))?,
                );
            }
            _ => return Err(ReportError::Usage(format!("unknown argument {flag}"))),
        }
    }
    o.results = results.ok_or_else(|| ReportError::Usage("--results is required".into()))?;
    o.out = out.ok_or_else(|| ReportError::Usage("--out is required".into()))?;
    Ok(o)
}

fn write(path: &Path, text: &str) -> Result<(), ReportError> {
    std::fs::write(path, text).map_err(|source| ReportError::Write {
        path: path.display().to_string(),
        source,
    })
}

/// `readme` with the text between the markers replaced by `markdown`; `None` without markers.
fn refreshed(readme: &str, markdown: &str) -> Option<String> {
    let (head, rest) = readme.split_once(BEGIN)?;
    let (_, tail) = rest.split_once(END)?;
    Some(format!("{head}{BEGIN}\n{markdown}{END}{tail}"))
}

fn run(o: &Options) -> Result<(), ReportError> {
    let results = Results::read(&o.results)?;
    let targets = targets::check(&results);
    let names: Vec<String> = plots::files(&o.out)
        .iter()
        .map(|p| {
            Path::new(p)
                .file_name()
                .map_or(p.clone(), |n| n.to_string_lossy().into_owned())
        })
        .collect();
    let markdown = markdown::render(
        &results,
        &targets,
        &markdown::Heading {
            mode: &o.mode,
            command: &o.command,
            machine: &o.machine,
            plots: &names,
        },
    );
    write(Path::new(&format!("{}.md", o.out)), &markdown)?;
    let json = serde_json::json!({
        "machine": o.machine,
        "command": o.command,
        "mode": o.mode,
        "measurements": results.raw,
        "targets": targets.iter().map(|t| serde_json::json!({
            "target": t.what,
            "wanted": t.wanted,
            "measured": t.measured,
            "met": t.met,
        })).collect::<Vec<_>>(),
    });
    let json = serde_json::to_string_pretty(&json).map_err(|e| ReportError::Write {
        path: format!("{}.json", o.out),
        source: e.into(),
    })?;
    write(Path::new(&format!("{}.json", o.out)), &json)?;
    if let Some(path) = &o.readme {
        let readme = std::fs::read_to_string(path).map_err(|source| ReportError::Read {
            path: path.display().to_string(),
            source,
        })?;
        match refreshed(&readme, &markdown) {
            Some(text) => write(path, &text)?,
            None => eprintln!(
                "corekv-perf-report: {} has no {BEGIN} … {END} lines; left as it is",
                path.display()
            ),
        }
    }
    // Last: the tables and the JSON are there even if a plot cannot be drawn.
    plots::draw(&results, &o.out, o.rate)?;
    print!("{markdown}");
    Ok(())
}

fn main() -> ExitCode {
    let options = match parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("corekv-perf-report: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corekv-perf-report: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refreshes_only_between_the_markers() {
        let readme = format!("intro\n{BEGIN}\nold table\n{END}\nafter\n");
        assert_eq!(
            refreshed(&readme, "new\n").as_deref(),
            Some(format!("intro\n{BEGIN}\nnew\n{END}\nafter\n").as_str())
        );
        assert_eq!(refreshed("no markers", "new"), None);
    }

    #[test]
    fn arguments() {
        let args = |a: &[&str]| parse(a.iter().map(|s| s.to_string()));
        let o = args(&["--results", "r", "--out", "o", "--rate", "5000"]).expect("valid");
        assert_eq!(
            (o.results, o.out, o.rate),
            (PathBuf::from("r"), "o".into(), Some(5000.0))
        );
        assert!(args(&["--out", "o"]).is_err());
        assert!(args(&["--results", "r", "--out", "o", "--bogus"]).is_err());
        assert!(args(&["--results"]).is_err());
    }
}
