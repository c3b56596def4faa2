//! The storage root: where volumes live, how names map to paths, temporary files.
//!
//! Invariant: every path the agent reads or writes for a volume is a direct child of the
//! storage root, derived from a validated name. Work in progress is written to a temporary
//! name (`.NAME.corral-tmp`) and renamed when complete, so an interrupted operation leaves
//! only temporary files, which [`Storage::remove_leftovers`] deletes at start-up.

use std::path::{Path, PathBuf};

use crate::error::{AgentError, Result};
use crate::validate;

const TMP_SUFFIX: &str = ".corral-tmp";

#[derive(Debug, Clone)]
pub struct Storage {
    root: PathBuf,
}

impl Storage {
    /// Opens (creating if needed) the storage root. The path is canonicalised.
    pub fn open(root: &Path) -> Result<Self> {
        crate::fsx::create_dir_all(root)?;
        let root = root.canonicalize()?;
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of a volume, after validating its name.
    pub fn path(&self, volume: &str) -> Result<PathBuf> {
        validate::name("volume", volume)?;
        Ok(self.root.join(volume))
    }

    /// The path of an existing volume, or NotFound.
    pub fn existing(&self, volume: &str) -> Result<PathBuf> {
        let p = self.path(volume)?;
        if !p.is_file() {
            return Err(AgentError::not_found(format!(
                "volume {volume:?} does not exist"
            )));
        }
        Ok(p)
    }

    /// The path of a volume that must not exist yet, or AlreadyExists.
    pub fn fresh(&self, volume: &str) -> Result<PathBuf> {
        let p = self.path(volume)?;
        if p.exists() {
            return Err(AgentError::exists(format!(
                "volume {volume:?} already exists"
            )));
        }
        Ok(p)
    }

    /// Temporary path a volume is built under before it is renamed into place.
    pub fn tmp_path(&self, volume: &str) -> Result<PathBuf> {
        validate::name("volume", volume)?;
        Ok(self.root.join(format!(".{volume}{TMP_SUFFIX}")))
    }

    /// The volume name of a path, when the path is a direct child of the root.
    pub fn name_of(&self, path: &Path) -> Option<String> {
        let parent = path.parent()?;
        let parent = parent
            .canonicalize()
            .unwrap_or_else(|_| parent.to_path_buf());
        if parent != self.root {
            return None;
        }
        let name = path.file_name()?.to_str()?.to_string();
        validate::name("volume", &name).ok()?;
        Some(name)
    }

    /// Volume names in the root (temporary and hidden files excluded), sorted.
    pub fn list(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.root)? {
            let entry = entry?;
            if !entry.file_type()?.is_file() {
                continue;
            }
            if let Some(n) = entry.file_name().to_str() {
                if validate::name("volume", n).is_ok() {
                    names.push(n.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    /// Deletes temporary files left by interrupted operations; returns what it removed.
    pub fn remove_leftovers(&self) -> Result<Vec<PathBuf>> {
        let mut removed = Vec::new();
        for entry in std::fs::read_dir(&self.root)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            // Interrupted work, and half-made copies of a sync's basis; a sync's partial
            // file (`.corral-partial`) stays for the sync to resume.
            if name.starts_with('.')
                && (name.ends_with(TMP_SUFFIX) || name.ends_with(".corral-copying"))
            {
                crate::fsx::remove_file(&entry.path())?;
                removed.push(entry.path());
            }
        }
        Ok(removed)
    }

    /// Total and free bytes of the file system holding the root.
    pub fn space(&self) -> Result<(u64, u64)> {
        let st = nix::sys::statvfs::statvfs(&self.root)
            .map_err(|e| AgentError::internal(format!("statvfs {}: {e}", self.root.display())))?;
        let frag = st.fragment_size() as u64;
        Ok((
            st.blocks() as u64 * frag,
            st.blocks_available() as u64 * frag,
        ))
    }
}

/// Writes `data` to `path` atomically (temporary file, fsync, rename).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .ok_or_else(|| AgentError::internal(format!("{} has no parent", path.display())))?;
    crate::fsx::create_dir_all(dir)?;
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| AgentError::internal(format!("bad path {}", path.display())))?;
    let tmp = dir.join(format!(".{file_name}{TMP_SUFFIX}"));
    {
        let mut f = crate::fsx::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    crate::fsx::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        assert!(s.path("../etc/passwd").is_err());
        assert!(s.path("/etc/passwd").is_err());
        assert_eq!(s.path("a.qcow2").unwrap(), s.root().join("a.qcow2"));
        assert_eq!(
            s.name_of(&s.root().join("a.qcow2")).as_deref(),
            Some("a.qcow2")
        );
        assert_eq!(s.name_of(Path::new("/etc/passwd")), None);
    }

    #[test]
    fn leftovers_are_removed_and_not_listed() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        std::fs::write(s.tmp_path("x.qcow2").unwrap(), b"partial").unwrap();
        std::fs::write(s.path("y.qcow2").unwrap(), b"done").unwrap();
        assert_eq!(s.list().unwrap(), vec!["y.qcow2".to_string()]);
        assert_eq!(s.remove_leftovers().unwrap().len(), 1);
        assert!(s.existing("y.qcow2").is_ok());
        assert!(s.fresh("y.qcow2").is_err());
        write_atomic(&s.root().join("state.json"), b"{}").unwrap();
        assert_eq!(std::fs::read(s.root().join("state.json")).unwrap(), b"{}");
    }
}
