//! `corekv-check-aof [--fix [--force]] <dir | segment file>`: checks corekv's append-only log.
//!
//! For each shard it reports how far the log is valid and, where it is not, the first bad
//! record. A torn tail (a last write that never completed) is what a crash leaves; `--fix` cuts
//! it off, as the server does at start-up. A bad record followed by records of later commits is
//! corruption: cutting there loses those later records, so `--fix` also needs `--force`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use corekv::storage::manifest::{self, Chain, Manifest, Segment};
use corekv::storage::recovery::{scan_chain, RecoveryError};
use corekv::storage::segment;

struct Options {
    fix: bool,
    force: bool,
    target: PathBuf,
}

fn usage() -> ExitCode {
    eprintln!(
        "Usage: corekv-check-aof [--fix [--force]] <appendonlydir | data dir | segment file>"
    );
    ExitCode::from(2)
}

fn parse() -> Option<Options> {
    let mut fix = false;
    let mut force = false;
    let mut target = None;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--fix" => fix = true,
            "--force" => force = true,
            "-v" | "--version" => {
                println!("corekv-check-aof {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            other if !other.starts_with('-') && target.is_none() => {
                target = Some(PathBuf::from(other))
            }
            _ => return None,
        }
    }
    Some(Options {
        fix,
        force,
        target: target?,
    })
}

/// The chains to check and the directory holding their files.
fn chains(target: &Path) -> Result<(PathBuf, Vec<Chain>), String> {
    if target.is_file() {
        let bytes = segment::read_file(target).map_err(|e| format!("{}: {e}", target.display()))?;
        let (shard, start) = segment::header_fields(&bytes)
            .ok_or_else(|| format!("{} is not a corekv log segment", target.display()))?;
        let dir = target.parent().unwrap_or(Path::new(".")).to_path_buf();
        let file = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut all = vec![Chain::default(); shard + 1];
        all[shard].segments.push(Segment { start, file });
        return Ok((dir, all));
    }
    for dir in [target.to_path_buf(), target.join("appendonlydir")] {
        if let Some(m) = Manifest::load(&dir).map_err(|e| e.to_string())? {
            return Ok((dir, m.chains));
        }
    }
    Err(format!(
        "no {} found in {}",
        manifest::FILE_NAME,
        target.display()
    ))
}

/// Bytes of written (non-zero) data in `file` from `offset` on.
fn written_after(file: &Path, offset: u64) -> u64 {
    let Ok(bytes) = segment::read_file(file) else {
        return 0;
    };
    let from = usize::try_from(offset)
        .unwrap_or(bytes.len())
        .min(bytes.len());
    bytes[from..]
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |last| last as u64 + 1)
}

fn cut(file: &Path, offset: u64) -> Result<(), String> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .and_then(|f| {
            f.set_len(offset)?;
            f.sync_all()
        })
        .map_err(|e| format!("can't truncate {}: {e}", file.display()))
}

fn main() -> ExitCode {
    let Some(options) = parse() else {
        return usage();
    };
    let (dir, chains) = match chains(&options.target) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let mut bad = false;
    for (shard, chain) in chains.iter().enumerate() {
        if chain.segments.is_empty() && chain.base.is_none() {
            continue;
        }
        let files: Vec<&str> = chain.segments.iter().map(|s| s.file.as_str()).collect();
        match scan_chain(shard, &dir, chain, false) {
            Ok(scan) => println!(
                "shard {shard}: {}: valid, {} record(s), log positions {}..{}",
                files.join(", "),
                scan.records,
                chain.segments.first().map_or(0, |s| s.start),
                scan.end
            ),
            Err(RecoveryError::Truncated { file, offset }) => {
                let extra = written_after(&file, offset);
                println!(
                    "shard {shard}: {}: valid up to offset {offset}; the last write there never \
                     completed (torn tail). --fix would cut {extra} byte(s).",
                    file.display()
                );
                if options.fix {
                    if let Err(e) = cut(&file, offset) {
                        eprintln!("{e}");
                        return ExitCode::FAILURE;
                    }
                    println!(
                        "Successfully truncated {} at offset {offset}",
                        file.display()
                    );
                } else {
                    bad = true;
                }
            }
            Err(RecoveryError::Corrupt { file, offset, what }) => {
                let extra = written_after(&file, offset);
                println!(
                    "shard {shard}: {}: corrupt record at offset {offset} ({what}). Cutting there \
                     drops {extra} byte(s) of later, valid commits.",
                    file.display()
                );
                if options.fix && options.force {
                    if let Err(e) = cut(&file, offset) {
                        eprintln!("{e}");
                        return ExitCode::FAILURE;
                    }
                    println!("Truncated {} at offset {offset}", file.display());
                } else {
                    if options.fix {
                        println!("Not fixed: add --force to cut it anyway.");
                    }
                    bad = true;
                }
            }
            Err(e) => {
                println!("shard {shard}: {e}");
                bad = true;
            }
        }
    }
    if bad {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
