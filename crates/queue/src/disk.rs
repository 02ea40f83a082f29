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
        // Both are C `unsigned long`: 32 bits on armhf, where their product passes 4 GiB on
        // any SD card. Widened before multiplying (a no-op on 64-bit targets).
        #[allow(clippy::useless_conversion)]
        let (blocks, block_size) = (
            u64::from(stat.blocks_available()),
            u64::from(stat.fragment_size()),
        );
        Ok(available_bytes(blocks, block_size))
    }
}

/// Free blocks times their size, saturating rather than wrapping.
fn available_bytes(blocks: u64, block_size: u64) -> u64 {
    blocks.saturating_mul(block_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_past_4_gib_is_counted_in_full() {
        // 8 GiB free in 4 KiB blocks: more than any 32-bit product can hold.
        assert_eq!(available_bytes(2 * 1024 * 1024, 4096), 8 << 30);
        assert_eq!(available_bytes(u64::MAX, 4096), u64::MAX);
    }

    #[test]
    fn the_real_file_system_reports_its_free_space() {
        let dir = tempfile::tempdir().unwrap();
        assert!(StatvfsDisk.available(dir.path()).unwrap() > 0);
    }
}
