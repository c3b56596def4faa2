//! File-system calls whose errors name the path (and keep the I/O error's category: a full
//! disk is ResourceExhausted, a missing file NotFound).

use std::path::Path;

use crate::error::{io_at, Result};

pub fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|e| io_at(to, e))
}

pub fn remove_file(path: &Path) -> Result<()> {
    std::fs::remove_file(path).map_err(|e| io_at(path, e))
}

pub fn create_dir_all(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|e| io_at(path, e))
}

pub fn metadata(path: &Path) -> Result<std::fs::Metadata> {
    std::fs::metadata(path).map_err(|e| io_at(path, e))
}

pub fn open(path: &Path) -> Result<std::fs::File> {
    std::fs::File::open(path).map_err(|e| io_at(path, e))
}

pub fn create(path: &Path) -> Result<std::fs::File> {
    std::fs::File::create(path).map_err(|e| io_at(path, e))
}

/// Sets the permission bits of a file.
pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| io_at(path, e))
}
