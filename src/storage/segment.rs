//! One log segment file: a 4 KiB header block, then records written with direct I/O.
//!
//! Writes are whole 4 KiB blocks at 4 KiB-aligned offsets (O_DIRECT). The last, partly filled
//! block is kept in memory and written again, extended, by the next commit; its bytes that
//! were already durable are rewritten unchanged, so even a torn block write cannot damage them.
//! Space is allocated ahead in large chunks so that commits rarely extend the file.

use std::fs::File;
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use glommio::io::{DmaFile, OpenOptions};
use glommio::GlommioError;

/// Direct I/O unit.
pub const BLOCK_BYTES: u64 = 4096;
/// The header block before the first record.
pub const HEADER_BYTES: u64 = BLOCK_BYTES;
/// Space is allocated this far ahead of the last write.
const PREALLOCATE_CHUNK_BYTES: u64 = 64 * 1024 * 1024;
const MAGIC: &[u8; 8] = b"corekvSG";

/// glommio's error, as a plain I/O error keeping the OS error code.
pub fn io_error(e: GlommioError<()>) -> std::io::Error {
    match e {
        GlommioError::IoError(e) => e,
        GlommioError::EnhancedIoError { source, .. } => source,
        other => std::io::Error::other(other.to_string()),
    }
}

fn header(shard: usize, start: u64) -> Vec<u8> {
    let mut h = vec![0u8; HEADER_BYTES as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&(shard as u64).to_le_bytes());
    h[16..24].copy_from_slice(&start.to_le_bytes());
    let crc = crc32c::crc32c(&h[..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The shard and start position a segment's header names, if it is one.
pub fn header_fields(block: &[u8]) -> Option<(usize, u64)> {
    if block.len() < 28 || &block[..8] != MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes([block[24], block[25], block[26], block[27]]);
    if crc != crc32c::crc32c(&block[..24]) {
        return None;
    }
    let shard = u64::from_le_bytes(block[8..16].try_into().ok()?);
    let start = u64::from_le_bytes(block[16..24].try_into().ok()?);
    Some((usize::try_from(shard).ok()?, start))
}

/// Checks a segment's header block: magic, shard and start position.
pub fn check_header(block: &[u8], shard: usize, start: u64) -> Result<(), String> {
    if block.len() < 28 || &block[..8] != MAGIC {
        return Err("not a corekv log segment".to_string());
    }
    let crc = u32::from_le_bytes([block[24], block[25], block[26], block[27]]);
    if crc != crc32c::crc32c(&block[..24]) {
        return Err("segment header checksum mismatch".to_string());
    }
    let stored_shard = u64::from_le_bytes(block[8..16].try_into().unwrap_or([0; 8]));
    let stored_start = u64::from_le_bytes(block[16..24].try_into().unwrap_or([0; 8]));
    if stored_shard != shard as u64 || stored_start != start {
        return Err(format!(
            "segment header says shard {stored_shard} from {stored_start}, manifest says shard \
             {shard} from {start}"
        ));
    }
    Ok(())
}

/// Writes a new segment's header block with ordinary I/O and makes the file and its directory
/// entry durable. Done before the first direct-I/O open on purpose: glommio probes the first
/// file it opens for direct I/O with a read, and that probe needs written data.
///
/// Names are never reused for files a manifest names (they carry the rewrite epoch), so a file
/// already there can only be left by an attempt that failed halfway: it is replaced.
pub fn create_file(dir: &Path, name: &str, shard: usize, start: u64) -> std::io::Result<PathBuf> {
    let path = dir.join(name);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = File::options().write(true).create_new(true).open(&path)?;
    file.write_all(&header(shard, start))?;
    file.sync_all()?;
    super::manifest::sync_dir(dir)?;
    Ok(path)
}

/// Reads a whole file with ordinary I/O (bases, tools).
pub fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Maps a segment (or base) file and returns it up to the end of its records, following their
/// lengths, without the zeros preallocated after them. Anything that does not look like a
/// record makes it return the whole file, so that recovery can tell a torn tail from
/// corruption.
///
/// Mapped rather than read: a log of gigabytes is not copied into as much fresh memory (which
/// the kernel must zero first) only to be decoded once and dropped.
pub fn map_used(path: &Path) -> std::io::Result<Bytes> {
    let file = File::open(path)?;
    if file.metadata()?.len() == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: the mapping is read-only and lives only while the log is loaded (or read by a
    // tool); nothing in this process writes the file meanwhile, and a server's data directory
    // is locked against other servers. What mapping cannot defend against is another process
    // changing the file under it: truncated, it ends this process (SIGBUS); rewritten in
    // place, bytes already checked would change. A disk read error also surfaces as SIGBUS
    // rather than as an error.
    let map = unsafe { memmap2::Mmap::map(&file)? };
    // Only a hint: loading reads the records in order, once.
    let _ = map.advise(memmap2::Advice::Sequential);
    let used = used_len(&map);
    Ok(Bytes::from_owner(map).slice(..used))
}

/// How much of a segment file recovery needs: up to the end of its records and a window of
/// the zeros after them; the whole file if anything there does not look like a record.
fn used_len(bytes: &[u8]) -> usize {
    /// Zeros checked after the last record before taking it as the end.
    const ZEROS_CHECKED: usize = 1024 * 1024;
    let mut at = HEADER_BYTES as usize;
    loop {
        let Some(head) = bytes.get(at..at + super::record::HEADER_BYTES) else {
            return bytes.len();
        };
        match super::record::frame(head) {
            super::record::Frame::End => {
                let window = bytes.len().min(at + ZEROS_CHECKED);
                // Data after zeros is damage: recovery looks at everything.
                return if bytes[at..window].iter().all(|&b| b == 0) {
                    window
                } else {
                    bytes.len()
                };
            }
            super::record::Frame::Record(len) if at + len <= bytes.len() => at += len,
            super::record::Frame::Record(_) | super::record::Frame::Garbage => return bytes.len(),
        }
    }
}

/// A writer position to come back to.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub end: u64,
    tail: Vec<u8>,
}

/// Appends records to one segment.
pub struct SegmentWriter {
    file: DmaFile,
    path: PathBuf,
    /// Log position of the first record.
    start: u64,
    /// Log position where the next record goes.
    end: u64,
    /// The bytes of the last, partly filled block (from its start to `end`).
    tail: Vec<u8>,
    /// File bytes allocated.
    allocated: u64,
}

impl SegmentWriter {
    /// Opens the segment at `path` for appending at log position `end` (everything after it in
    /// the file is cut off).
    pub async fn open(path: PathBuf, start: u64, end: u64) -> std::io::Result<SegmentWriter> {
        if end < start {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "{} would end at {end}, before its start {start}",
                    path.display()
                ),
            ));
        }
        let file_end = HEADER_BYTES + (end - start);
        let block_start = file_end - file_end % BLOCK_BYTES;
        let mut tail = vec![0u8; (file_end - block_start) as usize];
        if !tail.is_empty() {
            let mut f = File::open(&path)?;
            std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(block_start))?;
            f.read_exact(&mut tail)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .dma_open(&path)
            .await
            .map_err(io_error)?;
        file.truncate(file_end).await.map_err(io_error)?;
        let mut writer = SegmentWriter {
            file,
            path,
            start,
            end,
            tail,
            allocated: file_end,
        };
        writer.reserve(file_end).await?;
        Ok(writer)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn start(&self) -> u64 {
        self.start
    }

    /// Log position after the last written record.
    pub fn end(&self) -> u64 {
        self.end
    }

    fn file_offset(&self, position: u64) -> u64 {
        HEADER_BYTES + (position - self.start)
    }

    async fn reserve(&mut self, file_end: u64) -> std::io::Result<()> {
        if file_end + BLOCK_BYTES <= self.allocated && self.allocated > HEADER_BYTES {
            return Ok(());
        }
        let target = (file_end / PREALLOCATE_CHUNK_BYTES + 1) * PREALLOCATE_CHUNK_BYTES;
        let needed = file_end + BLOCK_BYTES;
        // On a nearly full disk a whole chunk may not fit where the next write still does.
        for size in [target, needed] {
            match self.file.pre_allocate(size, false).await {
                Ok(()) => {
                    self.allocated = size;
                    return Ok(());
                }
                Err(e) if size == needed => return Err(io_error(e)),
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// Gives back the space allocated beyond the written records (the segment will not grow
    /// any more: a new one follows it).
    pub async fn trim(&mut self) -> std::io::Result<()> {
        let used = self.file_offset(self.end).div_ceil(BLOCK_BYTES) * BLOCK_BYTES;
        if self.allocated > used {
            self.file.truncate(used).await.map_err(io_error)?;
            self.allocated = used;
        }
        Ok(())
    }

    /// Writes `records` (encoded for positions from `end()`) in one aligned write: the last
    /// partial block again, then the new bytes, padded with zeros to a block boundary. Not
    /// durable until [`SegmentWriter::sync`]. On error nothing changes: the caller writes the
    /// same bytes again later.
    pub async fn write(&mut self, records: &[u8]) -> std::io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let new_end = self.end + records.len() as u64;
        let write_from = self.file_offset(self.end) - self.tail.len() as u64;
        let data_end = self.file_offset(new_end);
        let padded_end = data_end.div_ceil(BLOCK_BYTES) * BLOCK_BYTES;
        self.reserve(padded_end).await?;
        let len = (padded_end - write_from) as usize;
        let mut buf = self.file.alloc_dma_buffer(len);
        let bytes = buf.as_bytes_mut();
        bytes[..self.tail.len()].copy_from_slice(&self.tail);
        bytes[self.tail.len()..self.tail.len() + records.len()].copy_from_slice(records);
        bytes[self.tail.len() + records.len()..].fill(0);
        let written = self
            .file
            .write_at(buf, write_from)
            .await
            .map_err(io_error)?;
        if written != len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                format!("short write: {written} of {len} bytes"),
            ));
        }
        let last_block = data_end - data_end % BLOCK_BYTES;
        let mut tail = Vec::with_capacity(BLOCK_BYTES as usize);
        if last_block >= write_from + self.tail.len() as u64 {
            let from = (last_block - self.file_offset(self.end)) as usize;
            tail.extend_from_slice(&records[from..]);
        } else {
            tail.extend_from_slice(&self.tail);
            tail.extend_from_slice(records);
        }
        self.tail = tail;
        self.end = new_end;
        Ok(())
    }

    /// Where the writer stands: position and last partial block.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            end: self.end,
            tail: self.tail.clone(),
        }
    }

    /// Goes back to `checkpoint` (after a failed write or sync, the bytes written since must be
    /// written again before syncing: with direct I/O no cached copy can be trusted).
    pub fn rewind(&mut self, checkpoint: &Checkpoint) {
        self.end = checkpoint.end;
        self.tail = checkpoint.tail.clone();
    }

    /// Closes the file (what was synced stays synced).
    pub async fn close(self) {
        if let Err(e) = self.file.close().await {
            log::warn!("closing {}: {e}", self.path.display());
        }
    }

    /// fdatasync: everything written so far is on stable storage when this returns Ok.
    pub async fn sync(&self) -> std::io::Result<()> {
        self.file.fdatasync().await.map_err(io_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Args;

    fn segment_with_records(count: usize) -> Vec<u8> {
        let mut bytes = header(0, 0);
        let args = Args::from_vecs(["SET", "k", "v"]);
        let mut position = 0;
        for _ in 0..count {
            let mut record = Vec::new();
            let len = super::super::record::encode_commands(
                &mut record,
                position,
                1,
                std::iter::once((0, &args)),
            );
            position += len as u64;
            bytes.extend_from_slice(&record);
        }
        bytes
    }

    #[test]
    fn used_part_ends_after_the_records_and_a_window_of_zeros() {
        let records = segment_with_records(3);
        let mut file = records.clone();
        file.resize(records.len() + 4 * 1024 * 1024, 0);
        let used = used_len(&file);
        assert_eq!(used, records.len() + 1024 * 1024);
        assert_eq!(
            used_len(&records),
            records.len(),
            "no zeros after the records"
        );
    }

    #[test]
    fn anything_unlike_a_record_takes_the_whole_file() {
        let records = segment_with_records(3);
        let mut damaged = records.clone();
        damaged.resize(records.len() + 4 * 1024 * 1024, 0);
        damaged[records.len() + 1000] = 1;
        assert_eq!(used_len(&damaged), damaged.len(), "data after zeros");
        let mut garbage = records.clone();
        garbage.extend_from_slice(&[0, 0, 0, 0, 7]);
        garbage.resize(records.len() + 8192, 0);
        assert_eq!(
            used_len(&garbage),
            garbage.len(),
            "a header that is not a record"
        );
        let cut = &records[..records.len() - 2];
        assert_eq!(used_len(cut), cut.len(), "a record cut short");
    }
}
