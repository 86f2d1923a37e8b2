//! `corekv-aof-dump <dir> [--databases N]`: writes the data in corekv's append-only log as
//! RESP commands on standard output, which `valkey-cli --pipe` loads into Valkey:
//!
//! ```text
//! corekv-aof-dump /var/lib/corekv | valkey-cli -p 6380 --pipe
//! ```
//!
//! The log is replayed exactly as the server would at start-up (torn tails cut, cross-shard
//! transactions all or nothing), then every live key is written as `SET` (with `PEXPIREAT` for
//! keys with a TTL), after a `SELECT` per database.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use corekv::config::Config;
use corekv::server::state::unix_ms;
use corekv::shard::db::Db;
use corekv::storage::manifest::Manifest;
use corekv::storage::recovery::{replay, scan_chain, Board};

fn resp(out: &mut impl Write, args: &[&[u8]]) -> std::io::Result<()> {
    let mut request = Vec::new();
    corekv::protocol::encode_request(&mut request, args);
    out.write_all(&request)
}

fn run(dir: PathBuf, databases: usize) -> Result<(), String> {
    let dir = if dir.join("appendonlydir").is_dir() {
        dir.join("appendonlydir")
    } else {
        dir
    };
    let manifest = Manifest::load(&dir)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no manifest in {}", dir.display()))?;
    let shards = manifest.chains.len();
    let board = Board::new(shards);
    let mut scans = Vec::with_capacity(shards);
    for (shard, chain) in manifest.chains.iter().enumerate() {
        let scan = scan_chain(shard, &dir, chain, true).map_err(|e| e.to_string())?;
        board.publish(shard, &scan);
        scans.push(scan);
    }
    let config = Config::default();
    let now = unix_ms();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let io = |e: std::io::Error| e.to_string();
    for (shard, (chain, scan)) in manifest.chains.iter().zip(&scans).enumerate() {
        let mut dbs: Vec<Db> = (0..databases).map(|_| Db::default()).collect();
        let skipped =
            replay(scan, &board, &dir, chain, &mut dbs, &config).map_err(|e| e.to_string())?;
        if skipped > 0 {
            eprintln!(
                "shard {shard}: skipped {skipped} incomplete cross-shard transaction part(s)"
            );
        }
        for (index, db) in dbs.iter().enumerate() {
            if db.is_empty() {
                continue;
            }
            resp(&mut out, &[b"SELECT", index.to_string().as_bytes()]).map_err(io)?;
            for (key, value) in db.iter() {
                if !db.exists_now(key, now) {
                    continue;
                }
                let Some(bytes) = value.with_str(<[u8]>::to_vec) else {
                    continue;
                };
                resp(&mut out, &[b"SET", key, &bytes]).map_err(io)?;
                if let Some(at) = db.expire_at(key) {
                    resp(&mut out, &[b"PEXPIREAT", key, at.to_string().as_bytes()]).map_err(io)?;
                }
            }
        }
    }
    out.flush().map_err(io)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut dir = None;
    let mut databases = 16;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--databases" => {
                i += 1;
                match args.get(i).and_then(|n| n.parse().ok()) {
                    Some(n) => databases = n,
                    None => dir = None,
                }
            }
            other if !other.starts_with('-') && dir.is_none() => dir = Some(PathBuf::from(other)),
            _ => {
                dir = None;
                break;
            }
        }
        i += 1;
    }
    let Some(dir) = dir else {
        eprintln!("Usage: corekv-aof-dump <dir> [--databases N]  (pipe into: valkey-cli --pipe)");
        return ExitCode::from(2);
    };
    match run(dir, databases) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corekv-aof-dump: {e}");
            ExitCode::FAILURE
        }
    }
}
