//! What can go wrong while making the report.

/// A report could not be made; the message names the file or line.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{0}\n\nusage: corekv-perf-report --results FILE --out PREFIX [--machine TEXT] [--command TEXT] [--mode quick|full] [--rate R] [--readme FILE]")]
    Usage(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("results line {line}: {source}")]
    Json {
        line: usize,
        source: serde_json::Error,
    },
    #[error("results line {line}: missing or malformed field {name}")]
    Field { line: usize, name: String },
    #[error("plot {path}: {reason}")]
    Plot { path: String, reason: String },
}
