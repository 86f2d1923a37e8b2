//! Why a run stopped: every failure the binary reports with exit status 1.

use std::fmt;
use std::io;

use crate::resp::ProtocolError;

/// A failed run.
#[derive(Debug)]
pub enum BenchError {
    /// The host name did not resolve.
    Resolve { addr: String, source: io::Error },
    /// A connection could not be opened.
    Connect {
        addr: String,
        conn: usize,
        source: io::Error,
    },
    /// The server closed a connection while the run still needed it.
    Closed { addr: String, conn: usize },
    /// Reading or writing a connection failed.
    Io {
        addr: String,
        conn: usize,
        source: io::Error,
    },
    /// The server sent something that is not RESP2, or a reply nobody asked for.
    Protocol {
        addr: String,
        conn: usize,
        detail: ProtocolError,
    },
    /// `--populate` got an error reply (a populated keyspace is a precondition of the run).
    Populate { addr: String, message: String },
    /// Setting up a thread's epoll set or the thread itself failed.
    Setup {
        what: &'static str,
        source: io::Error,
    },
    /// The latency histogram could not be created.
    Histogram(hdrhistogram::CreationError),
    /// A thread ended without reporting how its run went.
    ThreadLost,
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BenchError::Resolve { addr, source } => write!(f, "can't resolve {addr}: {source}"),
            BenchError::Connect { addr, conn, source } => {
                write!(f, "connection {conn}: can't connect to {addr}: {source}")
            }
            BenchError::Closed { addr, conn } => write!(
                f,
                "connection {conn} to {addr} was closed by the server in the middle of the run"
            ),
            BenchError::Io { addr, conn, source } => {
                write!(f, "connection {conn} to {addr} failed: {source}")
            }
            BenchError::Protocol { addr, conn, detail } => {
                write!(f, "connection {conn} to {addr}: bad reply: {detail}")
            }
            BenchError::Populate { addr, message } => {
                write!(
                    f,
                    "populating {addr} failed: the server answered -{message}"
                )
            }
            BenchError::Setup { what, source } => write!(f, "can't {what}: {source}"),
            BenchError::Histogram(e) => write!(f, "can't create the latency histogram: {e:?}"),
            BenchError::ThreadLost => f.write_str("a load thread ended without a result"),
        }
    }
}

impl std::error::Error for BenchError {}

impl From<hdrhistogram::CreationError> for BenchError {
    fn from(e: hdrhistogram::CreationError) -> BenchError {
        BenchError::Histogram(e)
    }
}
