//! Disk images through `qemu-img`, behind the [`ImageTool`] trait.
//!
//! Every call passes its arguments one by one to `Command` (no shell). `qemu-img info` is read
//! as JSON into typed structs. Callers pass paths already checked by [`crate::storage`].

// This module wraps qemu-img: it may start it (arguments one by one).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

use crate::error::{AgentError, Result};

/// Image formats Corral writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Qcow2,
    Raw,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Qcow2 => "qcow2",
            Self::Raw => "raw",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "qcow2" => Some(Self::Qcow2),
            "raw" => Some(Self::Raw),
            _ => None,
        }
    }
}

/// One internal (qcow2) snapshot, as `qemu-img info` reports it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ImageSnapshot {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub vm_state_size: u64,
    #[serde(default)]
    pub date_sec: i64,
}

/// One image of a backing chain, as `qemu-img info --output=json` reports it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ImageInfo {
    pub filename: String,
    pub format: String,
    pub virtual_size: u64,
    #[serde(default)]
    pub actual_size: u64,
    #[serde(default)]
    pub backing_filename: Option<String>,
    #[serde(default)]
    pub full_backing_filename: Option<String>,
    #[serde(default)]
    pub backing_filename_format: Option<String>,
    #[serde(default)]
    pub snapshots: Vec<ImageSnapshot>,
    #[serde(default)]
    pub dirty_flag: bool,
}

/// Parses the output of `qemu-img info --output=json --backing-chain` (top image first).
pub fn parse_chain(json: &str) -> Result<Vec<ImageInfo>> {
    serde_json::from_str(json)
        .map_err(|e| AgentError::internal(format!("cannot parse qemu-img info output: {e}")))
}

/// The image operations the agent needs. Blocking: call from a blocking thread.
pub trait ImageTool: Send + Sync {
    fn create(&self, path: &Path, format: Format, size: u64) -> Result<()>;
    /// A qcow2 overlay whose backing file is `backing` (absolute path).
    fn create_overlay(&self, path: &Path, backing: &Path, backing_format: Format) -> Result<()>;
    /// The image and its backing chain, top first.
    fn info(&self, path: &Path) -> Result<Vec<ImageInfo>>;
    /// Copies `src` into a new image `dst` in `format`; flattens unless `backing` is given.
    fn convert(&self, src: &Path, dst: &Path, format: Format, backing: Option<&Path>)
        -> Result<()>;
    /// Changes the backing file; `None` merges the backing data into the image.
    fn rebase(&self, path: &Path, backing: Option<&Path>, unsafe_only: bool) -> Result<()>;
    fn resize(&self, path: &Path, size: u64, allow_shrink: bool) -> Result<()>;
    /// An internal qcow2 snapshot of an image nobody has open: made, applied or deleted.
    fn snapshot(&self, path: &Path, action: SnapshotAction, name: &str) -> Result<()>;
}

/// What `qemu-img snapshot` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotAction {
    Create,
    Apply,
    Delete,
}

/// The real `qemu-img`.
#[derive(Debug, Clone)]
pub struct QemuImg {
    program: PathBuf,
}

impl Default for QemuImg {
    fn default() -> Self {
        Self {
            program: "qemu-img".into(),
        }
    }
}

impl QemuImg {
    fn run(&self, args: &[OsString]) -> Result<String> {
        let _span = tracing::debug_span!("qemu-img", args = ?args).entered();
        let out = Command::new(&self.program)
            .args(args)
            .output()
            .map_err(|e| {
                AgentError::Unavailable(format!("cannot run {}: {e}", self.program.display()))
            })?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(classify(&err));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Maps a qemu-img error message to the category a caller acts on.
fn classify(stderr: &str) -> AgentError {
    let msg = format!("qemu-img: {stderr}");
    if stderr.contains("No such file") {
        AgentError::NotFound(msg)
    } else if stderr.contains("No space left on device") || stderr.contains("Disk quota exceeded") {
        AgentError::ResourceExhausted(msg)
    } else if stderr.contains("Failed to get \"write\" lock")
        || stderr.contains("Failed to get shared \"write\" lock")
    {
        AgentError::FailedPrecondition(format!("{msg} (the volume is in use by a running domain)"))
    } else if stderr.contains("Invalid") || stderr.contains("cannot be") {
        AgentError::InvalidArgument(msg)
    } else {
        AgentError::Internal(msg)
    }
}

impl ImageTool for QemuImg {
    fn create(&self, path: &Path, format: Format, size: u64) -> Result<()> {
        let size = size.to_string();
        self.run(&[
            "create".into(),
            "-q".into(),
            "-f".into(),
            format.as_str().into(),
            path.into(),
            size.clone().into(),
        ])?;
        Ok(())
    }

    fn create_overlay(&self, path: &Path, backing: &Path, backing_format: Format) -> Result<()> {
        // The common case is written directly: it is a few hundred bytes of metadata.
        match crate::qcow2::create_overlay(path, backing, backing_format) {
            Ok(()) => return Ok(()),
            Err(crate::qcow2::OverlayError::Io(e)) => {
                return Err(match e.kind() {
                    std::io::ErrorKind::NotFound => AgentError::NotFound(format!(
                        "backing file {} does not exist",
                        backing.display()
                    )),
                    std::io::ErrorKind::AlreadyExists => {
                        AgentError::AlreadyExists(format!("{} already exists", path.display()))
                    }
                    _ => AgentError::Internal(format!(
                        "cannot write overlay {}: {e}",
                        path.display()
                    )),
                })
            }
            Err(crate::qcow2::Unsupported(why)) => {
                tracing::debug!(%why, "overlay left to qemu-img");
            }
        }
        self.run(&[
            "create".into(),
            "-q".into(),
            "-f".into(),
            "qcow2".into(),
            "-F".into(),
            backing_format.as_str().into(),
            "-b".into(),
            backing.into(),
            path.into(),
        ])?;
        Ok(())
    }

    fn info(&self, path: &Path) -> Result<Vec<ImageInfo>> {
        let out = self.run(&[
            "info".into(),
            "-U".into(),
            "--output=json".into(),
            "--backing-chain".into(),
            path.into(),
        ])?;
        parse_chain(&out)
    }

    fn convert(
        &self,
        src: &Path,
        dst: &Path,
        format: Format,
        backing: Option<&Path>,
    ) -> Result<()> {
        let mut args: Vec<OsString> = vec![
            "convert".into(),
            "-q".into(),
            "-U".into(),
            "-O".into(),
            format.as_str().into(),
        ];
        if let Some(b) = backing {
            args.extend(["-B".into(), b.into(), "-F".into(), "qcow2".into()]);
        }
        args.extend([src.into(), dst.into()]);
        self.run(&args)?;
        Ok(())
    }

    fn rebase(&self, path: &Path, backing: Option<&Path>, unsafe_only: bool) -> Result<()> {
        let mut args: Vec<OsString> = vec!["rebase".into(), "-q".into()];
        if unsafe_only {
            args.push("-u".into());
        }
        match backing {
            Some(b) => args.extend(["-F".into(), "qcow2".into(), "-b".into(), b.into()]),
            None => args.extend(["-b".into(), "".into()]),
        }
        args.push(path.into());
        self.run(&args)?;
        Ok(())
    }

    fn resize(&self, path: &Path, size: u64, allow_shrink: bool) -> Result<()> {
        let size = size.to_string();
        let mut args: Vec<OsString> = vec!["resize".into(), "-q".into()];
        if allow_shrink {
            args.push("--shrink".into());
        }
        args.extend([path.into(), size.clone().into()]);
        self.run(&args)?;
        Ok(())
    }

    fn snapshot(&self, path: &Path, action: SnapshotAction, name: &str) -> Result<()> {
        let flag = match action {
            SnapshotAction::Create => "-c",
            SnapshotAction::Apply => "-a",
            SnapshotAction::Delete => "-d",
        };
        self.run(&[
            "snapshot".into(),
            "-q".into(),
            flag.into(),
            name.into(),
            path.into(),
        ])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_real_backing_chain_output() {
        let json = include_str!("../tests/fixtures/qemu-img-info-chain.json");
        let chain = parse_chain(json).unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[0].format, "qcow2");
        assert_eq!(chain[0].virtual_size, 64 << 20);
        assert_eq!(
            chain[0].full_backing_filename.as_deref(),
            Some("/tmp/scratch/b.qcow2")
        );
        assert!(chain[0].snapshots.is_empty());
        assert_eq!(chain[1].snapshots.len(), 1);
        assert_eq!(chain[1].snapshots[0].name, "snap1");
        assert!(chain[1].backing_filename.is_none());
    }

    #[test]
    fn errors_are_classified() {
        assert!(matches!(
            classify("Could not open 'x': No such file or directory"),
            AgentError::NotFound(_)
        ));
        assert!(matches!(
            classify("Failed to get \"write\" lock"),
            AgentError::FailedPrecondition(_)
        ));
    }

    #[test]
    fn real_qemu_img_round_trip() {
        if Command::new("qemu-img").arg("--version").output().is_err() {
            eprintln!("qemu-img not installed; skipping");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let q = QemuImg::default();
        let base = dir.path().join("b.qcow2");
        let top = dir.path().join("t.qcow2");
        let flat = dir.path().join("f.qcow2");
        q.create(&base, Format::Qcow2, 16 << 20).unwrap();
        q.create_overlay(&top, &base, Format::Qcow2).unwrap();
        let chain = q.info(&top).unwrap();
        assert_eq!(chain.len(), 2);
        q.convert(&top, &flat, Format::Qcow2, None).unwrap();
        assert_eq!(q.info(&flat).unwrap().len(), 1);
        q.resize(&flat, 32 << 20, false).unwrap();
        assert_eq!(q.info(&flat).unwrap()[0].virtual_size, 32 << 20);
        q.rebase(&top, None, false).unwrap();
        assert_eq!(q.info(&top).unwrap().len(), 1);
        assert!(matches!(
            q.info(&dir.path().join("missing")),
            Err(AgentError::NotFound(_))
        ));
    }
}
