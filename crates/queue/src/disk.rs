//! Free disk space, behind a seam so that tests can simulate a full disk.

use std::path::Path;

/// Tells how many bytes are free for the queue on the file system of `path`.
pub trait DiskSpace: Send + Sync + 'static {
    /// Free bytes available to an unprivileged writer.
    fn available(&self, path: &Path) -> std::io::Result<u64>;
}

/// The real file system, through `statvfs(2)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct StatvfsDisk;

impl DiskSpace for StatvfsDisk {
    fn available(&self, path: &Path) -> std::io::Result<u64> {
        let stat = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
        // f_bavail: blocks free for non-root users, which is what keeps the system healthy.
        Ok(stat.blocks_available() * stat.fragment_size())
    }
}
