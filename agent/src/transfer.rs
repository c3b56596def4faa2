//! Files as blocks for agent-to-agent sync: allocation maps, block hashes, the content
//! checksum, and the receiving side's partial file.
//!
//! A file is cut into fixed blocks. Only blocks that overlap allocated data (`SEEK_DATA` /
//! `SEEK_HOLE`) are ever read; a block whose bytes are all zero counts as a hole. The content
//! checksum is blake3 over `(index, blake3(block))` of every non-zero block, then the file
//! size: two files with the same checksum have the same bytes, holes included, whatever their
//! allocation. Hashing is the `blake3` crate's.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{fallocate, FallocateFlags};
use nix::unistd::{lseek, Whence};

use crate::error::{AgentError, Result};

/// Block size of the sync: the unit of delta and of the checksum.
pub const BLOCK: u32 = 64 * 1024;

pub type Hash = [u8; 32];

fn io(path: &Path, what: &str, e: impl std::fmt::Display) -> AgentError {
    AgentError::internal(format!("{what} {}: {e}", path.display()))
}

/// Allocated extents `(offset, len)` of a file, in order. Falls back to the whole file when
/// the file system cannot tell.
pub fn data_extents(file: &File, size: u64) -> Vec<(u64, u64)> {
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut pos: i64 = 0;
    let end = size as i64;
    while pos < end {
        let start = match lseek(fd, pos, Whence::SeekData) {
            Ok(s) => s,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(_) => return vec![(0, size)],
        };
        let stop = match lseek(fd, start, Whence::SeekHole) {
            Ok(s) => s.min(end),
            Err(_) => end,
        };
        if stop > start {
            out.push((start as u64, (stop - start) as u64));
        }
        pos = stop;
    }
    out
}

/// Indexes of the blocks that overlap the extents, ascending, without repeats.
pub fn blocks_of(extents: &[(u64, u64)], block: u32) -> Vec<u64> {
    let b = u64::from(block);
    let mut out: Vec<u64> = Vec::new();
    for &(off, len) in extents {
        if len == 0 {
            continue;
        }
        let first = off / b;
        let last = (off + len - 1) / b;
        let from = match out.last() {
            Some(&l) if l >= first => l + 1,
            _ => first,
        };
        out.extend(from..=last);
    }
    out
}

pub fn is_zero(buf: &[u8]) -> bool {
    let (body, tail) = buf.split_at(buf.len() / 8 * 8);
    body.chunks_exact(8).all(|c| c == [0u8; 8]) && tail.iter().all(|&b| b == 0)
}

pub fn hash(buf: &[u8]) -> Hash {
    *blake3::hash(buf).as_bytes()
}

/// Reads block `index` into `buf` (shorter at the end of the file); returns its length.
pub fn read_block(
    file: &File,
    path: &Path,
    index: u64,
    block: u32,
    size: u64,
    buf: &mut Vec<u8>,
) -> Result<usize> {
    let off = index * u64::from(block);
    let len = (size.saturating_sub(off)).min(u64::from(block)) as usize;
    buf.resize(len, 0);
    file.read_exact_at(buf, off)
        .map_err(|e| io(path, "reading", e))?;
    Ok(len)
}

/// The content checksum, built block by block in index order.
#[derive(Debug)]
pub struct Checksum {
    hasher: blake3::Hasher,
    pub data_blocks: u64,
}

impl Default for Checksum {
    fn default() -> Self {
        Self::new()
    }
}

impl Checksum {
    pub fn new() -> Self {
        Self {
            hasher: blake3::Hasher::new(),
            data_blocks: 0,
        }
    }

    /// A non-zero block.
    pub fn add(&mut self, index: u64, h: &Hash) {
        self.hasher.update(&index.to_le_bytes());
        self.hasher.update(h);
        self.data_blocks += 1;
    }

    pub fn finish(mut self, size: u64) -> Hash {
        self.hasher.update(&size.to_le_bytes());
        *self.hasher.finalize().as_bytes()
    }
}

pub fn hex(h: &[u8]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a scan of a file found: its size, allocated bytes, and the hash of every non-zero
/// block, in index order.
#[derive(Debug, Default, Clone)]
pub struct Signature {
    pub size: u64,
    pub allocated: u64,
    pub blocks: Vec<(u64, Hash)>,
}

impl Signature {
    pub fn checksum(&self) -> Hash {
        let mut c = Checksum::new();
        for (i, h) in &self.blocks {
            c.add(*i, h);
        }
        c.finish(self.size)
    }

    pub fn map(&self) -> HashMap<u64, Hash> {
        self.blocks.iter().copied().collect()
    }
}

/// Reads every allocated block of `path` and hashes the non-zero ones.
pub fn signature(path: &Path, block: u32) -> Result<Signature> {
    let file = File::open(path).map_err(|e| io(path, "opening", e))?;
    let size = file.metadata().map_err(|e| io(path, "stat", e))?.len();
    let extents = data_extents(&file, size);
    let mut sig = Signature {
        size,
        allocated: extents.iter().map(|e| e.1).sum(),
        blocks: Vec::new(),
    };
    let mut buf = Vec::with_capacity(block as usize);
    for index in blocks_of(&extents, block) {
        read_block(&file, path, index, block, size, &mut buf)?;
        if !is_zero(&buf) {
            sig.blocks.push((index, hash(&buf)));
        }
    }
    Ok(sig)
}

/// Copies the allocated extents of `from` into the new file `to` (holes stay holes).
pub fn sparse_copy(from: &Path, to: &Path) -> Result<()> {
    let src = File::open(from).map_err(|e| io(from, "opening", e))?;
    let size = src.metadata().map_err(|e| io(from, "stat", e))?.len();
    let dst = File::create(to).map_err(|e| io(to, "creating", e))?;
    dst.set_len(size).map_err(|e| io(to, "sizing", e))?;
    for (off, len) in data_extents(&src, size) {
        let (mut i, mut o) = (off as i64, off as i64);
        let mut left = len as usize;
        while left > 0 {
            let n = nix::fcntl::copy_file_range(&src, Some(&mut i), &dst, Some(&mut o), left)
                .map_err(|e| io(to, "copying into", e))?;
            if n == 0 {
                break;
            }
            left -= n;
        }
    }
    dst.sync_all().map_err(|e| io(to, "syncing", e))?;
    Ok(())
}

/// The receiving side's file: a partial file kept across interrupted syncs
/// (`.NAME.corral-partial`), written block by block and renamed over `NAME` once its
/// checksum is verified.
///
/// It keeps the hash of every non-zero block of its content: the blocks it started with
/// (from a scan) and each block as it is written, hashed from the bytes received. The
/// checksum of that map is what the sender's checksum is compared with, as rsync compares
/// the whole-file checksum of what it received.
#[derive(Debug)]
pub struct Partial {
    pub path: PathBuf,
    pub file: File,
    pub size: u64,
    pub written: u64,
    pub blocks: BTreeMap<u64, Hash>,
    /// Writes since the flusher was last woken.
    unflushed: u64,
    flusher: Option<Flusher>,
}

/// Flushes a file to disk on its own thread while it is being written, so that the flush
/// before the rename finds little left to write.
#[derive(Debug)]
struct Flusher {
    wake: std::sync::mpsc::SyncSender<()>,
    thread: std::thread::JoinHandle<()>,
}

/// Bytes written between two background flushes.
const FLUSH_EVERY: u64 = 64 << 20;

impl Flusher {
    fn start(file: &File) -> Option<Self> {
        let file = file.try_clone().ok()?;
        let (wake, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("sync-flush".into())
            .spawn(move || {
                while rx.recv().is_ok() {
                    let _ = file.sync_data();
                }
            })
            .ok()?;
        Some(Self { wake, thread })
    }

    fn stop(self) {
        drop(self.wake);
        let _ = self.thread.join();
    }
}

impl Partial {
    /// Opens the partial file (or creates it, from `basis` when given), at length `size`.
    pub fn open(path: &Path, basis: Option<&Path>, size: u64) -> Result<Self> {
        if !path.exists() {
            if let Some(b) = basis {
                let tmp = path.with_extension("corral-copying");
                sparse_copy(b, &tmp)?;
                std::fs::rename(&tmp, path).map_err(|e| io(path, "renaming", e))?;
            }
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| io(path, "opening", e))?;
        file.set_len(size).map_err(|e| io(path, "sizing", e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            size,
            written: 0,
            blocks: BTreeMap::new(),
            unflushed: 0,
            flusher: None,
        })
    }

    /// Scans the content it starts with (the basis of a delta, or what a resumed sync left).
    pub fn scan(&mut self) -> Result<Signature> {
        let sig = signature(&self.path, BLOCK)?;
        self.blocks = sig.blocks.iter().copied().collect();
        Ok(sig)
    }

    /// The content checksum of what it holds now.
    pub fn checksum(&self) -> Hash {
        let mut c = Checksum::new();
        for (i, h) in &self.blocks {
            c.add(*i, h);
        }
        c.finish(self.size)
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        if offset
            .checked_add(data.len() as u64)
            .is_none_or(|e| e > self.size)
        {
            return Err(AgentError::invalid(format!(
                "data at {offset}+{} is past the end of the volume ({} bytes)",
                data.len(),
                self.size
            )));
        }
        let b = u64::from(BLOCK);
        let whole =
            (data.len() as u64).is_multiple_of(b) || offset + data.len() as u64 == self.size;
        if !offset.is_multiple_of(b) || !whole {
            return Err(AgentError::invalid(format!(
                "data at {offset}+{} is not made of whole blocks",
                data.len()
            )));
        }
        self.file
            .write_all_at(data, offset)
            .map_err(|e| io(&self.path, "writing", e))?;
        self.written += data.len() as u64;
        self.unflushed += data.len() as u64;
        if self.unflushed >= FLUSH_EVERY {
            self.unflushed = 0;
            if self.flusher.is_none() {
                self.flusher = Flusher::start(&self.file);
            }
            if let Some(f) = &self.flusher {
                // A flush already queued covers this one too.
                let _ = f.wake.try_send(());
            }
        }
        for (k, chunk) in data.chunks(BLOCK as usize).enumerate() {
            let index = offset / b + k as u64;
            if is_zero(chunk) {
                self.blocks.remove(&index);
            } else {
                self.blocks.insert(index, hash(chunk));
            }
        }
        Ok(())
    }

    /// Makes `len` bytes at `offset` zero, as a hole.
    pub fn zero(&mut self, offset: u64, len: u64) -> Result<()> {
        let len = len.min(self.size.saturating_sub(offset));
        if len == 0 {
            return Ok(());
        }
        let b = u64::from(BLOCK);
        if !offset.is_multiple_of(b) || (!len.is_multiple_of(b) && offset + len != self.size) {
            return Err(AgentError::invalid(format!(
                "zeros at {offset}+{len} are not whole blocks"
            )));
        }
        let first = offset / b;
        let last = (offset + len).div_ceil(b);
        let gone: Vec<u64> = self.blocks.range(first..last).map(|(i, _)| *i).collect();
        for i in gone {
            self.blocks.remove(&i);
        }
        let punched = fallocate(
            self.file.as_raw_fd(),
            FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
            offset as i64,
            len as i64,
        );
        if punched.is_err() {
            // No hole punching here: write zeros.
            let zeros = vec![0u8; len as usize];
            self.file
                .write_all_at(&zeros, offset)
                .map_err(|e| io(&self.path, "writing", e))?;
        }
        Ok(())
    }

    /// Compares the checksum of what it received with `expected`, then flushes the file to
    /// disk.
    pub fn verify(&mut self, expected: &[u8]) -> Result<Hash> {
        if let Some(f) = self.flusher.take() {
            f.stop();
        }
        let got = self.checksum();
        if got[..] != *expected {
            return Err(AgentError::internal(format!(
                "checksum mismatch after sync of {}: expected {}, got {}",
                self.path.display(),
                hex(expected),
                hex(&got)
            )));
        }
        self.file
            .sync_data()
            .map_err(|e| io(&self.path, "syncing", e))?;
        Ok(got)
    }

    /// Sets the mode and renames the verified file over `dest` (then syncs the directory).
    pub fn install(self, dest: &Path, mode: u32) -> Result<()> {
        let mode = if mode == 0 { 0o644 } else { mode & 0o777 };
        std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| io(&self.path, "chmod", e))?;
        drop(self.file);
        std::fs::rename(&self.path, dest).map_err(|e| io(dest, "renaming into", e))?;
        if let Some(dir) = dest.parent() {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sparse_file(dir: &Path, name: &str, size: u64, data: &[(u64, u8, usize)]) -> PathBuf {
        let p = dir.join(name);
        let f = File::create(&p).unwrap();
        f.set_len(size).unwrap();
        for &(off, byte, len) in data {
            f.write_all_at(&vec![byte; len], off).unwrap();
        }
        p
    }

    #[test]
    fn extents_and_blocks_follow_the_allocation() {
        let dir = tempfile::tempdir().unwrap();
        let p = sparse_file(
            dir.path(),
            "a",
            64 << 20,
            &[(1 << 20, 1, 4096), (10 << 20, 2, 200_000)],
        );
        let f = File::open(&p).unwrap();
        let ext = data_extents(&f, 64 << 20);
        assert!(ext.len() >= 2, "{ext:?}");
        let allocated: u64 = ext.iter().map(|e| e.1).sum();
        assert!(allocated < 1 << 20, "holes are not data: {allocated}");
        let blocks = blocks_of(&ext, BLOCK);
        assert!(blocks.contains(&16) && blocks.contains(&160));
        let sig = signature(&p, BLOCK).unwrap();
        assert_eq!(
            sig.blocks.len(),
            1 + 200_000usize.div_ceil(BLOCK as usize) + 1 - 1
        );
    }

    #[test]
    fn the_checksum_sees_content_not_allocation() {
        let dir = tempfile::tempdir().unwrap();
        let a = sparse_file(dir.path(), "a", 8 << 20, &[(0, 7, 100)]);
        // The same bytes, with an allocated block of zeros.
        let b = sparse_file(
            dir.path(),
            "b",
            8 << 20,
            &[(0, 7, 100), (4 << 20, 0, 65536)],
        );
        let c = sparse_file(dir.path(), "c", 8 << 20, &[(0, 7, 101)]);
        let d = sparse_file(dir.path(), "d", 9 << 20, &[(0, 7, 100)]);
        let sum = |p: &Path| signature(p, BLOCK).unwrap().checksum();
        assert_eq!(sum(&a), sum(&b));
        assert_ne!(sum(&a), sum(&c));
        assert_ne!(sum(&a), sum(&d), "the size counts");
    }

    #[test]
    fn a_partial_file_is_verified_then_installed_sparse() {
        let dir = tempfile::tempdir().unwrap();
        let src = sparse_file(dir.path(), "src", 32 << 20, &[(3 << 20, 9, 70_000)]);
        let sig = signature(&src, BLOCK).unwrap();
        let mut part = Partial::open(&dir.path().join(".dst.partial"), None, sig.size).unwrap();
        let f = File::open(&src).unwrap();
        let mut buf = Vec::new();
        for (i, _) in &sig.blocks {
            let n = read_block(&f, &src, *i, BLOCK, sig.size, &mut buf).unwrap();
            part.write(i * u64::from(BLOCK), &buf[..n]).unwrap();
        }
        assert!(
            part.verify(&[0; 32]).is_err(),
            "a wrong checksum is refused"
        );
        part.verify(&sig.checksum()).unwrap();
        assert_eq!(
            signature(&part.path, BLOCK).unwrap().checksum(),
            part.checksum(),
            "what it received is what it holds"
        );
        let dest = dir.path().join("dst");
        part.install(&dest, 0o444).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(&src).unwrap());
        let alloc = signature(&dest, BLOCK).unwrap().allocated;
        assert!(alloc <= 3 * u64::from(BLOCK), "holes stay holes: {alloc}");
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o444);
        assert!(!dir.path().join(".dst.partial").exists());
    }

    #[test]
    fn zero_punches_a_hole_and_writes_past_the_end_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut part = Partial::open(&dir.path().join("p"), None, 4 << 20).unwrap();
        part.write(0, &[1; 65536]).unwrap();
        assert_eq!(part.blocks.len(), 1);
        part.zero(0, 65536).unwrap();
        assert!(part.blocks.is_empty());
        assert!(signature(&part.path, BLOCK).unwrap().blocks.is_empty());
        assert!(part.write((4 << 20) - 10, &[1; 11]).is_err());
        assert!(part.write(100, &[1; 65536]).is_err(), "not block aligned");
    }

    #[test]
    fn a_sparse_copy_keeps_content_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let src = sparse_file(dir.path(), "s", 16 << 20, &[(5 << 20, 3, 1000)]);
        let dst = dir.path().join("d");
        sparse_copy(&src, &dst).unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), std::fs::read(&src).unwrap());
        assert!(signature(&dst, BLOCK).unwrap().allocated < 1 << 20);
    }
}
