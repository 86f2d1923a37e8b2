//! The manifest: which files make up each shard's log. A small text file in the AOF directory,
//! replaced whole and atomically (write a temporary file, fdatasync it, rename it over the old
//! one, fsync the directory), so a crash leaves either the old or the new one.
//!
//! ```text
//! # corekv append-only log manifest
//! format 1
//! generation 7
//! epoch 3
//! shards 2
//! base 0 3 shard0-base-3.base
//! segment 0 81920 shard0-3-00000000000000081920.log
//! segment 1 0 shard1-0-00000000000000000000.log
//! segment 1 4096 shard1-2-00000000000000004096.log
//! ```
//!
//! `generation` grows at every start (it makes transaction ids unique across restarts);
//! `epoch` grows at every rewrite cut. `base <shard> <epoch> <file>` is a snapshot of the shard
//! taken at the cut of that epoch; `segment <shard> <start> <file>` holds the shard's log from
//! position `start`, segments in order.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The manifest's file name in the AOF directory.
pub const FILE_NAME: &str = "manifest";
const TEMP_NAME: &str = "manifest.tmp";
const FORMAT: u32 = 1;
/// More shards than any machine has CPUs: a larger count is damage, not a configuration.
const SHARDS_MAX: usize = 65_536;

/// One log segment of a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Log position of the segment's first record.
    pub start: u64,
    pub file: String,
}

/// A shard's snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    /// The rewrite cut it was taken at.
    pub epoch: u64,
    pub file: String,
}

/// One shard's files, in replay order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chain {
    pub base: Option<Base>,
    pub segments: Vec<Segment>,
}

/// The manifest's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub generation: u32,
    pub epoch: u64,
    pub chains: Vec<Chain>,
}

/// A manifest that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("can't read the AOF manifest {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad AOF manifest {path}, line {line}: {reason}")]
    Format {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

/// Segment file name for `shard` starting at `start`, opened at rewrite cut `epoch` (a log
/// turned off and on again starts over at position 0: the epoch keeps the names apart).
pub fn segment_name(shard: usize, epoch: u64, start: u64) -> String {
    format!("shard{shard}-{epoch}-{start:020}.log")
}

/// Whether `name` is one of the log's own files (a segment, a base, a manifest being written).
pub fn is_log_file_name(name: &str) -> bool {
    name == TEMP_NAME
        || name.starts_with("shard") && (name.ends_with(".log") || name.ends_with(".base"))
}

/// Base file name for `shard` at `epoch`.
pub fn base_name(shard: usize, epoch: u64) -> String {
    format!("shard{shard}-base-{epoch}.base")
}

impl Manifest {
    /// A fresh manifest: each shard has one empty segment starting at 0.
    pub fn fresh(shards: usize) -> Manifest {
        Manifest {
            generation: 1,
            epoch: 0,
            chains: (0..shards)
                .map(|s| Chain {
                    base: None,
                    segments: vec![Segment {
                        start: 0,
                        file: segment_name(s, 0, 0),
                    }],
                })
                .collect(),
        }
    }

    /// Reads the manifest in `dir`; `Ok(None)` if there is none.
    pub fn load(dir: &Path) -> Result<Option<Manifest>, ManifestError> {
        let path = dir.join(FILE_NAME);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(ManifestError::Io { path, source }),
        };
        Self::parse(&text)
            .map(Some)
            .map_err(|(line, reason)| ManifestError::Format { path, line, reason })
    }

    /// Parses manifest text; errors carry the line number.
    pub fn parse(text: &str) -> Result<Manifest, (usize, String)> {
        let mut generation = None;
        let mut epoch = 0;
        let mut chains: Option<Vec<Chain>> = None;
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            let number = |w: &str| -> Result<u64, (usize, String)> {
                w.parse().map_err(|_| (n, format!("'{w}' is not a number")))
            };
            match words.as_slice() {
                ["format", f] => {
                    if number(f)? != u64::from(FORMAT) {
                        return Err((n, format!("unsupported format {f}")));
                    }
                }
                ["generation", g] => {
                    generation = Some(u32::try_from(number(g)?).map_err(|e| (n, e.to_string()))?)
                }
                ["epoch", e] => epoch = number(e)?,
                ["shards", s] => {
                    let count = usize::try_from(number(s)?).map_err(|e| (n, e.to_string()))?;
                    if count == 0 || count > SHARDS_MAX {
                        return Err((n, format!("{count} shards is out of range")));
                    }
                    chains = Some(vec![Chain::default(); count]);
                }
                ["base", shard, e, file] | ["segment", shard, e, file] => {
                    let shard = usize::try_from(number(shard)?).map_err(|e| (n, e.to_string()))?;
                    let value = number(e)?;
                    check_file_name(file).map_err(|reason| (n, reason))?;
                    let chain = chains
                        .as_mut()
                        .ok_or_else(|| (n, "'shards' must come before the files".to_string()))?
                        .get_mut(shard)
                        .ok_or_else(|| (n, format!("shard {shard} out of range")))?;
                    if words[0] == "base" {
                        if chain.base.is_some() {
                            return Err((n, format!("a second base for shard {shard}")));
                        }
                        chain.base = Some(Base {
                            epoch: value,
                            file: file.to_string(),
                        });
                    } else {
                        if chain.segments.last().is_some_and(|s| s.start > value) {
                            return Err((n, "segment starts are not increasing".to_string()));
                        }
                        chain.segments.push(Segment {
                            start: value,
                            file: file.to_string(),
                        });
                    }
                }
                _ => return Err((n, format!("unknown line '{line}'"))),
            }
        }
        let generation = generation.ok_or((0, "no 'generation' line".to_string()))?;
        let chains = chains.ok_or((0, "no 'shards' line".to_string()))?;
        Ok(Manifest {
            generation,
            epoch,
            chains,
        })
    }

    /// The manifest as text.
    pub fn render(&self) -> String {
        let mut out = String::from("# corekv append-only log manifest\n");
        let _ = writeln!(out, "format {FORMAT}");
        let _ = writeln!(out, "generation {}", self.generation);
        let _ = writeln!(out, "epoch {}", self.epoch);
        let _ = writeln!(out, "shards {}", self.chains.len());
        for (shard, chain) in self.chains.iter().enumerate() {
            if let Some(base) = &chain.base {
                let _ = writeln!(out, "base {shard} {} {}", base.epoch, base.file);
            }
            for s in &chain.segments {
                let _ = writeln!(out, "segment {shard} {} {}", s.start, s.file);
            }
        }
        out
    }

    /// Every file the manifest names.
    pub fn files(&self) -> impl Iterator<Item = &str> {
        self.chains.iter().flat_map(|c| {
            c.base
                .iter()
                .map(|b| b.file.as_str())
                .chain(c.segments.iter().map(|s| s.file.as_str()))
        })
    }

    /// Replaces the manifest in `dir` atomically and durably.
    pub fn store(&self, dir: &Path) -> std::io::Result<()> {
        let temp = dir.join(TEMP_NAME);
        {
            let mut file = File::create(&temp)?;
            file.write_all(self.render().as_bytes())?;
            file.sync_data()?;
        }
        std::fs::rename(&temp, dir.join(FILE_NAME))?;
        sync_dir(dir)
    }
}

/// Makes the directory's entries (new files, renames) durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn check_file_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(format!("'{name}' is not a file name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_store() {
        let mut m = Manifest::fresh(2);
        m.generation = 7;
        m.epoch = 3;
        m.chains[0].base = Some(Base {
            epoch: 3,
            file: base_name(0, 3),
        });
        m.chains[1].segments.push(Segment {
            start: 4096,
            file: segment_name(1, 3, 4096),
        });
        assert_eq!(Manifest::parse(&m.render()), Ok(m.clone()));
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(Manifest::load(dir.path())
            .expect("no manifest is fine")
            .is_none());
        m.store(dir.path()).expect("store");
        assert_eq!(Manifest::load(dir.path()).expect("load"), Some(m));
    }

    #[test]
    fn errors_name_the_line() {
        let bad = "format 1\ngeneration 1\nshards 1\nsegment 0 10 a.log\nsegment 0 5 b.log\n";
        assert_eq!(Manifest::parse(bad).map_err(|e| e.0), Err(5));
        assert_eq!(Manifest::parse("generation x\n").map_err(|e| e.0), Err(1));
        assert_eq!(
            Manifest::parse("format 1\ngeneration 1\nshards 1\nsegment 0 0 ../x\n")
                .map_err(|e| e.0),
            Err(4)
        );
        assert!(Manifest::parse("format 1\nshards 1\n").is_err());
    }
}
