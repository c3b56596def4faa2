//! Empty qcow2 overlays written directly, without starting `qemu-img`.
//!
//! A clone is one overlay per base volume. `qemu-img create` costs a process start (about
//! 11 ms of CPU on these hosts) for what is a few hundred bytes of metadata, and cloning a pool
//! of hundreds of VMs spends most of its time there. This module writes the same file
//! `qemu-img create -f qcow2 -F <fmt> -b <backing>` writes (version 3, 64 KiB clusters,
//! 16-bit refcounts, the backing format header extension), laid out as qemu lays it out:
//! header in cluster 0, refcount table in cluster 1, its one refcount block in cluster 2,
//! the L1 table from cluster 3 on. Tests check every file with the real `qemu-img check`,
//! `info` and `compare`, and the real-host tests boot guests on them.
//!
//! Only the backing image's header is read (its virtual size). Anything this module does not
//! understand is reported as [`Unsupported`] so the caller can fall back to `qemu-img`.

use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::images::Format;

const MAGIC: u32 = 0x5146_49fb;
const CLUSTER_BITS: u32 = 16;
const CLUSTER: u64 = 1 << CLUSTER_BITS;
const HEADER_LENGTH: u32 = 112;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// qemu refuses longer backing file names.
const MAX_BACKING_NAME: usize = 1023;

/// Why an overlay could not be written natively.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// Not a case this writer handles; `qemu-img` can.
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
pub use OverlayError::Unsupported;

/// The virtual size of a backing image: a qcow2 header's size field, or a raw file's length.
pub fn virtual_size(backing: &Path, format: Format) -> Result<u64, OverlayError> {
    match format {
        Format::Raw => Ok(std::fs::metadata(backing)?.len()),
        Format::Qcow2 => {
            let mut head = [0u8; 32];
            std::fs::File::open(backing)?.read_exact(&mut head)?;
            if be32(&head, 0) != MAGIC {
                return Err(Unsupported(format!(
                    "{} is not a qcow2 image",
                    backing.display()
                )));
            }
            let version = be32(&head, 4);
            if !(2..=3).contains(&version) {
                return Err(Unsupported(format!("qcow2 version {version}")));
            }
            Ok(be64(&head, 24))
        }
    }
}

/// The backing file name a qcow2 header names, when `head` holds the header and the name
/// (the first cluster does for every image `qemu-img` writes). Anything malformed is `None`:
/// this reads files a user may have written, so it never trusts an offset.
pub fn backing_name(head: &[u8]) -> Option<String> {
    if head.len() < 20 || be32(head, 0) != MAGIC || !(2..=3).contains(&be32(head, 4)) {
        return None;
    }
    let offset = usize::try_from(be64(head, 8)).ok()?;
    let len = usize::try_from(be32(head, 16)).ok()?;
    if offset == 0 || len == 0 || len > MAX_BACKING_NAME {
        return None;
    }
    let name = head.get(offset..offset.checked_add(len)?)?;
    String::from_utf8(name.to_vec()).ok()
}

/// The backing file of an image, resolved against its directory; `None` for raw files and
/// qcow2 images without one.
pub fn backing_of(path: &Path) -> std::io::Result<Option<std::path::PathBuf>> {
    // The name follows the header (qemu puts it in the first few hundred bytes): read 4 KiB,
    // and more (within the first cluster) only when the header points further.
    let file = std::fs::File::open(path)?;
    let mut head = Vec::with_capacity(4096);
    (&file).take(4096).read_to_end(&mut head)?;
    if head.len() >= 20 && be32(&head, 0) == MAGIC {
        let end = be64(&head, 8).saturating_add(u64::from(be32(&head, 16)));
        if end > head.len() as u64 && end <= CLUSTER {
            head.resize(usize::try_from(end).unwrap_or(0), 0);
            file.read_exact_at(&mut head, 0)?;
        }
    }
    Ok(backing_name(&head).map(|n| match path.parent() {
        Some(dir) => dir.join(n),
        None => std::path::PathBuf::from(n),
    }))
}

/// An empty qcow2 overlay as the few byte ranges that are not zero, and the file's length
/// (everything else, the L1 table included, is zero and left as a hole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    pub parts: Vec<(u64, Vec<u8>)>,
    pub len: u64,
}

/// The empty qcow2 overlay of `size` bytes over `backing`.
pub fn overlay(backing: &[u8], format: Format, size: u64) -> Result<Overlay, OverlayError> {
    if backing.is_empty() || backing.len() > MAX_BACKING_NAME {
        return Err(Unsupported(format!(
            "backing file name of {} bytes",
            backing.len()
        )));
    }
    // One L1 entry maps one L2 table, which maps CLUSTER / 8 clusters.
    let per_l1 = CLUSTER * (CLUSTER / 8);
    let l1_size = size.div_ceil(per_l1);
    let l1_bytes = l1_size * 8;
    let l1_clusters = l1_bytes.div_ceil(CLUSTER).max(1);
    let used_clusters = 3 + l1_clusters;
    // The single refcount block holds CLUSTER / 2 16-bit counts.
    if used_clusters > CLUSTER / 2 || l1_size > u64::from(u32::MAX) {
        return Err(Unsupported(format!("a virtual size of {size} bytes")));
    }
    let fmt = format.as_str().as_bytes();
    let ext_len = 8 + fmt.len().next_multiple_of(8) + 8;
    let backing_offset = HEADER_LENGTH as usize + ext_len;
    if backing_offset + backing.len() > CLUSTER as usize {
        return Err(Unsupported("header does not fit one cluster".into()));
    }
    let l1_offset = 3 * CLUSTER;
    let mut out = vec![0u8; backing_offset + backing.len()];
    let mut h = Header(&mut out);
    h.u32(0, MAGIC);
    h.u32(4, 3);
    h.u64(8, backing_offset as u64);
    h.u32(16, backing.len() as u32);
    h.u32(20, CLUSTER_BITS);
    h.u64(24, size);
    // 32: crypt method 0.
    h.u32(36, l1_size as u32);
    h.u64(40, l1_offset);
    h.u64(48, CLUSTER); // refcount table
    h.u32(56, 1); // refcount table clusters
                  // 60: no snapshots; 72..96: no feature bits.
    h.u32(96, 4); // refcount order: 16-bit counts
    h.u32(100, HEADER_LENGTH);
    // 104: compression type zlib (0) and padding.
    let mut at = HEADER_LENGTH as usize;
    h.u32(at, EXT_BACKING_FORMAT);
    h.u32(at + 4, fmt.len() as u32);
    out[at + 8..at + 8 + fmt.len()].copy_from_slice(fmt);
    at += 8 + fmt.len().next_multiple_of(8);
    // End of extensions: type 0, length 0 (already zero).
    debug_assert_eq!(at + 8, backing_offset);
    out[backing_offset..backing_offset + backing.len()].copy_from_slice(backing);
    // Refcount table: its first entry is the refcount block in cluster 2.
    let table = (2 * CLUSTER).to_be_bytes().to_vec();
    // Refcount block: clusters 0..used are referenced once.
    let block: Vec<u8> = (0..used_clusters)
        .flat_map(|_| 1u16.to_be_bytes())
        .collect();
    Ok(Overlay {
        parts: vec![(0, out), (CLUSTER, table), (2 * CLUSTER, block)],
        len: l1_offset + l1_bytes,
    })
}

/// Writes a new (it must not exist) empty qcow2 overlay at `path` over `backing`.
pub fn create_overlay(path: &Path, backing: &Path, format: Format) -> Result<(), OverlayError> {
    if !backing.is_absolute() {
        return Err(Unsupported("relative backing path".into()));
    }
    let size = virtual_size(backing, format)?;
    let ov = overlay(backing.as_os_str().as_bytes(), format, size)?;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    let written = ov
        .parts
        .iter()
        .try_for_each(|(at, bytes)| f.write_all_at(bytes, *at))
        .and_then(|()| f.set_len(ov.len));
    if let Err(e) = written {
        let _ = std::fs::remove_file(path);
        return Err(e.into());
    }
    Ok(())
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

struct Header<'a>(&'a mut [u8]);

impl Header<'_> {
    fn u32(&mut self, at: usize, v: u32) {
        self.0[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, at: usize, v: u64) {
        self.0[at..at + 8].copy_from_slice(&v.to_be_bytes());
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_types, clippy::disallowed_methods)] // checks against the real qemu-img
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn the_backing_file_is_found_in_what_qemu_img_writes() {
        let dir = tempfile::tempdir().unwrap();
        let (base, top, raw) = (
            dir.path().join("b.qcow2"),
            dir.path().join("t.qcow2"),
            dir.path().join("r.raw"),
        );
        let (ok, err) = qemu_img(&["create", "-f", "qcow2", p(&base), "1M"]);
        assert!(ok, "{err}");
        let (ok, err) = qemu_img(&[
            "create",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            p(&base),
            p(&top),
        ]);
        assert!(ok, "{err}");
        std::fs::write(&raw, vec![0u8; 4096]).unwrap();
        assert_eq!(backing_of(&top).unwrap(), Some(base.clone()));
        assert_eq!(backing_of(&base).unwrap(), None);
        assert_eq!(backing_of(&raw).unwrap(), None);
    }

    fn qemu_img(args: &[&str]) -> (bool, String) {
        let out = Command::new("qemu-img").args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }

    fn p(path: &Path) -> &str {
        path.to_str().unwrap()
    }

    #[test]
    fn the_same_bytes_as_qemu_img_create_apart_from_the_feature_name_table() {
        let dir = tempfile::tempdir().unwrap();
        for size in ["1G", "1M", "513M", "3T", "5T"] {
            let base = dir.path().join(format!("base-{size}.qcow2"));
            assert!(qemu_img(&["create", "-q", "-f", "qcow2", p(&base), size]).0);
            let theirs = dir.path().join(format!("theirs-{size}.qcow2"));
            let (ok, out) = qemu_img(&[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "qcow2",
                "-b",
                p(&base),
                p(&theirs),
            ]);
            assert!(ok, "{out}");
            let ours = dir.path().join(format!("ours-{size}.qcow2"));
            create_overlay(&ours, &base, Format::Qcow2).unwrap();
            let (a, b) = (
                std::fs::read(&theirs).unwrap(),
                std::fs::read(&ours).unwrap(),
            );
            assert_eq!(a.len(), b.len(), "{size}: file length");
            // Header fields up to the extensions are identical except the backing offset,
            // which moves because qemu also writes an optional feature name table.
            assert_eq!(a[..8], b[..8], "{size}");
            assert_eq!(a[16..104], b[16..104], "{size}");
            assert_eq!(
                a[CLUSTER as usize..],
                b[CLUSTER as usize..],
                "{size}: tables"
            );
        }
    }

    #[test]
    fn qemu_img_checks_reads_and_writes_the_overlay() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.qcow2");
        assert!(qemu_img(&["create", "-q", "-f", "qcow2", p(&base), "64M"]).0);
        let (ok, out) = qemu_img(&[
            "bench",
            "-q",
            "-w",
            "--pattern=17",
            "-c",
            "64",
            "-s",
            "65536",
            p(&base),
        ]);
        assert!(ok, "{out}");
        let ov = dir.path().join("clone.qcow2");
        create_overlay(&ov, &base, Format::Qcow2).unwrap();
        let (ok, out) = qemu_img(&["check", p(&ov)]);
        assert!(ok && out.contains("No errors"), "{out}");
        let (ok, out) = qemu_img(&["info", "--output=json", p(&ov)]);
        assert!(ok, "{out}");
        let info: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(info["virtual-size"], 64 << 20);
        assert_eq!(info["backing-filename"], p(&base));
        assert_eq!(info["backing-filename-format"], "qcow2");
        // It reads as its base, and takes writes that qemu-img then finds consistent.
        let (ok, out) = qemu_img(&["compare", p(&ov), p(&base)]);
        assert!(ok, "{out}");
        let (ok, out) = qemu_img(&[
            "bench",
            "-q",
            "-w",
            "--pattern=171",
            "-c",
            "300",
            "-o",
            "4096",
            p(&ov),
        ]);
        assert!(ok, "{out}");
        let (ok, out) = qemu_img(&["check", p(&ov)]);
        assert!(ok && out.contains("No errors"), "{out}");
        let (ok, _) = qemu_img(&["compare", p(&ov), p(&base)]);
        assert!(!ok, "the overlay now differs from its base");
    }

    #[test]
    fn raw_backing_files_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("base.raw");
        std::fs::write(&raw, vec![7u8; 1 << 20]).unwrap();
        let ov = dir.path().join("ov.qcow2");
        create_overlay(&ov, &raw, Format::Raw).unwrap();
        let (ok, out) = qemu_img(&["compare", p(&ov), p(&raw)]);
        assert!(ok, "{out}");
        // It never overwrites.
        let e = create_overlay(&ov, &raw, Format::Raw).unwrap_err();
        assert!(matches!(e, OverlayError::Io(_)), "{e}");
        // A raw file called qcow2 is not taken for one.
        let e = create_overlay(&dir.path().join("x"), &raw, Format::Qcow2).unwrap_err();
        assert!(matches!(e, Unsupported(_)), "{e}");
        assert!(!dir.path().join("x").exists());
        let e = create_overlay(&dir.path().join("y"), Path::new("rel.qcow2"), Format::Qcow2)
            .unwrap_err();
        assert!(matches!(e, Unsupported(_)), "{e}");
    }
}
