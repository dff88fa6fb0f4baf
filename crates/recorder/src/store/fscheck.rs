//! Warns when the store sits on a filesystem that will hurt recording: ext4 without a journal.
//!
//! Why: on ext4 without a journal the inode allocator steps over every inode deleted in the last
//! 60 s (300 s while its inode-table block is dirty), reading that block for each one
//! (`find_inode_bit` → `recently_deleted`). After `purge` or `delete` removes thousands of
//! recordings, creating each new one then takes the capture worker hundreds of microseconds
//! instead of tens (measured: 72 µs on a quiet filesystem, 560-740 µs within minutes of deleting
//! 5,000; docs/BENCHMARKS.md), so a burst of call starts can overflow the worker queues. Without
//! a journal a power cut can also leave the filesystem itself to `fsck`, whatever callrec syncs.
//! The check is Linux-specific (sysfs and procfs) and says nothing where it cannot tell.

use std::path::Path;

/// A warning for the store at `dir`, or `None` if its filesystem is fine or cannot be told.
pub fn store_fs_warning(dir: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir).ok()?.dev();
    let name = kernel_device_name(Path::new("/sys"), libc::major(dev), libc::minor(dev))?;
    ext4_without_journal(Path::new("/proc"), &name).then(|| {
        format!(
            "the store {} is on ext4 without a journal ({name}): after deletions (purge) creating \
             each recording is slow for minutes, and a power cut can damage the filesystem; put \
             the store on a journaled filesystem (mkfs.ext4 makes one by default, or `tune2fs -j`)",
            dir.display()
        )
    })
}

/// The kernel's name of the block device `major:minor` ("vda", "dm-0", "loop3"), as procfs uses it.
fn kernel_device_name(sys: &Path, major: u32, minor: u32) -> Option<String> {
    let link = std::fs::read_link(sys.join(format!("dev/block/{major}:{minor}"))).ok()?;
    Some(link.file_name()?.to_str()?.to_string())
}

/// Whether ext4 knows device `name` (mounted) and jbd2 has no journal for it.
fn ext4_without_journal(proc: &Path, name: &str) -> bool {
    proc.join("fs/ext4").join(name).is_dir() && !proc.join("fs/jbd2").join(format!("{name}-8")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the layout procfs and sysfs have: an ext4 device with a jbd2 entry is fine, one
    /// without is named, a device ext4 does not know (another filesystem) is not.
    #[test]
    fn ext4_without_a_jbd2_journal_is_named() {
        let root = tempfile::tempdir().unwrap();
        let (sys, proc) = (root.path().join("sys"), root.path().join("proc"));
        std::fs::create_dir_all(sys.join("dev/block")).unwrap();
        std::os::unix::fs::symlink("../../devices/virtual/block/vda", sys.join("dev/block/254:0")).unwrap();
        for d in ["fs/ext4/vda", "fs/ext4/sda1", "fs/jbd2/sda1-8"] {
            std::fs::create_dir_all(proc.join(d)).unwrap();
        }
        assert_eq!(kernel_device_name(&sys, 254, 0).as_deref(), Some("vda"));
        assert_eq!(kernel_device_name(&sys, 8, 1), None);
        assert!(ext4_without_journal(&proc, "vda"));
        assert!(!ext4_without_journal(&proc, "sda1"), "journaled");
        assert!(!ext4_without_journal(&proc, "nvme0n1"), "not ext4");
    }
}
