//! `--populate`: one SET of every key of the keyspace before the run, pipelined on one
//! blocking connection, so that a GET workload hits.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::args::{Options, Workload};
use crate::error::BenchError;
use crate::resp::{self, Reply, Requests};

/// Keys per pipelined batch.
const BATCH_KEYS: u64 = 1000;
/// A batch is cut short once its requests take this many bytes (large values).
const BATCH_BYTES: usize = 1 << 20;
/// How long the server may take to answer a batch.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// Connection number used in error messages: the populating connection is not one of the
/// run's.
const CONN: usize = 0;

/// Sets every key `0..keyspace` once; the keys set.
pub fn populate(addrs: &[SocketAddr], addr: &str, o: &Options) -> Result<u64, BenchError> {
    let io = |source: io::Error| BenchError::Io {
        addr: addr.to_string(),
        conn: CONN,
        source,
    };
    let mut stream = TcpStream::connect(addrs).map_err(|source| BenchError::Connect {
        addr: addr.to_string(),
        conn: CONN,
        source,
    })?;
    stream.set_nodelay(true).map_err(io)?;
    stream.set_read_timeout(Some(REPLY_TIMEOUT)).map_err(io)?;
    let requests = Requests::new(Workload::Set, o.value_size, 0);
    let mut replies = Replies::default();
    let mut out = Vec::new();
    let mut key = 0;
    while key < o.keyspace {
        out.clear();
        let first = key;
        while key < o.keyspace && key - first < BATCH_KEYS && out.len() < BATCH_BYTES {
            requests.set(&mut out, key);
            key += 1;
        }
        // Replies (+OK) are small, so the server never blocks on them while this writes.
        stream.write_all(&out).map_err(io)?;
        for _ in first..key {
            replies.next(&mut stream, addr)?;
        }
    }
    Ok(key)
}

/// Reads replies from a blocking stream.
#[derive(Default)]
struct Replies {
    buf: Vec<u8>,
    /// Where the next unread reply starts in `buf`.
    start: usize,
}

impl Replies {
    /// Reads the next reply; an error reply ends the populating.
    fn next(&mut self, stream: &mut TcpStream, addr: &str) -> Result<(), BenchError> {
        loop {
            let parsed =
                resp::parse(&self.buf[self.start..]).map_err(|detail| BenchError::Protocol {
                    addr: addr.to_string(),
                    conn: CONN,
                    detail,
                })?;
            if let Some((reply, len)) = parsed {
                if let Reply::Error { start, end } = reply {
                    let message = &self.buf[self.start + start..self.start + end];
                    return Err(BenchError::Populate {
                        addr: addr.to_string(),
                        message: String::from_utf8_lossy(message).into_owned(),
                    });
                }
                self.start += len;
                return Ok(());
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = match stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(BenchError::Closed {
                        addr: addr.to_string(),
                        conn: CONN,
                    })
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(BenchError::Io {
                        addr: addr.to_string(),
                        conn: CONN,
                        source,
                    })
                }
            };
            // Parsed replies are dropped only here, once per read, not once per reply.
            self.buf.drain(..self.start);
            self.start = 0;
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}
