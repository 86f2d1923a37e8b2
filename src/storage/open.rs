//! Turning the log on at start-up: the manifest is read (or made) before the shards start, then
//! every shard loads its own chain and starts its commit loop before it accepts clients.

use std::path::PathBuf;
use std::rc::Rc;

use super::aof::Aof;
use super::commit;
use super::manifest::Manifest;
use super::recovery::{self, Board};
use super::segment::{self, SegmentWriter};
use crate::config::Config;
use crate::shard::Shard;

/// What the shards need to open their logs.
pub struct LogStart {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub board: Board,
}

/// Reads the manifest in the AOF directory, or creates a fresh log for `shards` shards, and
/// stores it with the next generation. `Ok(None)` when `appendonly` is off.
pub fn prepare(config: &Config, shards: usize) -> Result<Option<LogStart>, String> {
    if !config.appendonly {
        return Ok(None);
    }
    let dir = config.aof_dir();
    std::fs::create_dir_all(&dir)
        .map_err(|e| format!("Can't create the AOF directory {}: {e}", dir.display()))?;
    let mut manifest = match Manifest::load(&dir).map_err(|e| e.to_string())? {
        Some(m) => m,
        None => {
            let fresh = Manifest::fresh(shards);
            for (shard, chain) in fresh.chains.iter().enumerate() {
                for s in &chain.segments {
                    segment::create_file(&dir, &s.file, shard, s.start).map_err(|e| {
                        format!(
                            "Can't create the AOF segment {}: {e}",
                            dir.join(&s.file).display()
                        )
                    })?;
                }
            }
            log::info!("Creating a new AOF in {}", dir.display());
            fresh
        }
    };
    if manifest.chains.len() != shards {
        return Err(format!(
            "The AOF in {} was written by a server with {} shard(s); this one has {shards}. \
             Start it with --shards {}.",
            dir.display(),
            manifest.chains.len(),
            manifest.chains.len()
        ));
    }
    super::rewrite::remove_unnamed_files(&dir, &manifest);
    manifest.generation = manifest.generation.wrapping_add(1);
    manifest
        .store(&dir)
        .map_err(|e| format!("Can't write the AOF manifest in {}: {e}", dir.display()))?;
    Ok(Some(LogStart {
        dir,
        board: Board::new(shards),
        manifest,
    }))
}

/// Loads this shard's chain, opens its last segment for appending and starts its commit loop.
pub async fn start_shard(shard: &Rc<Shard>, start: &LogStart) -> Result<(), String> {
    let index = shard.index();
    let chain = start
        .manifest
        .chains
        .get(index)
        .ok_or_else(|| format!("the AOF manifest has no shard {index}"))?;
    let config = shard.config();
    let loaded = {
        let mut dbs = shard.dbs();
        recovery::load(index, &start.dir, chain, &start.board, &mut dbs, &config)
            .map_err(|e| e.to_string())?
    };
    let writer = SegmentWriter::open(
        loaded.segment_path.clone(),
        loaded.segment_start,
        loaded.end,
    )
    .await
    .map_err(|e| format!("Can't open {}: {e}", loaded.segment_path.display()))?;
    let mut aof = Aof::new(
        u16::try_from(index).unwrap_or(u16::MAX),
        start.manifest.generation,
        start.manifest.epoch,
        config.appendfsync,
        loaded.end,
        loaded.last_batch,
    );
    aof.chain_start = loaded.chain_start;
    aof.base_bytes = loaded.base_bytes;
    aof.rewrite_base_bytes = aof.size_bytes();
    shard.set_aof(Some(aof));
    glommio::spawn_local(commit::run(Rc::clone(shard), writer)).detach();
    Ok(())
}
