//! A disk of the tests' own: a sparse file behind a loop device, with an ext4 filesystem
//! mounted in a temporary directory. An IO fault limits it and a container writes to it
//! through a bind mount, so no test ever limits or fills one of the machine's disks.
//! Dropping it unmounts, detaches the loop device and removes the file, also after a
//! failed test.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::command::{run_bounded, run_checked};

const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

pub struct LoopDisk {
    /// Holds the image and the mount point; removed last.
    dir: TempDir,
    /// `/dev/loopN`.
    device: String,
    mounted: bool,
}

impl LoopDisk {
    /// A `size_mib` MiB ext4 disk, mounted.
    pub fn new(size_mib: u64) -> Result<LoopDisk> {
        let dir = tempfile::Builder::new()
            .prefix("chaos-test-disk-")
            .tempdir()?;
        let image = dir.path().join("disk.img");
        std::fs::File::create(&image)?.set_len(size_mib << 20)?;
        let image_arg = image.display().to_string();
        let attached = run_checked("losetup", &["--find", "--show", &image_arg], TOOL_TIMEOUT)
            .context("attaching a loop device (is the loop module loaded?)")?;
        let mut disk = LoopDisk {
            dir,
            device: attached.stdout.trim().to_string(),
            mounted: false,
        };
        if !disk.device.starts_with("/dev/loop") {
            bail!("losetup printed {:?}, not a loop device", disk.device);
        }
        run_checked("mkfs.ext4", &["-q", "-F", &disk.device], TOOL_TIMEOUT)?;
        let mount_point = disk.mount_point();
        std::fs::create_dir(&mount_point)?;
        let mount_arg = mount_point.display().to_string();
        run_checked("mount", &[&disk.device, &mount_arg], TOOL_TIMEOUT)?;
        disk.mounted = true;
        Ok(disk)
    }

    /// Where its filesystem is mounted on the host.
    pub fn mount_point(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// The kernel's name: `loopN`.
    pub fn name(&self) -> &str {
        self.device.trim_start_matches("/dev/")
    }

    /// `MAJ:MIN`, as cgroup files name it.
    pub fn number(&self) -> Result<String> {
        let file = Path::new("/sys/block").join(self.name()).join("dev");
        Ok(std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?
            .trim()
            .to_string())
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        if self.mounted {
            let mount_arg = self.mount_point().display().to_string();
            let unmounted = run_bounded("umount", &[&mount_arg], TOOL_TIMEOUT)
                .is_ok_and(|output| output.success());
            if !unmounted {
                // Still busy (a container's task not yet gone): detach it now, the kernel
                // frees it when the last user leaves.
                let _ = run_bounded("umount", &["--lazy", &mount_arg], TOOL_TIMEOUT);
            }
        }
        let _ = run_bounded("losetup", &["--detach", &self.device], TOOL_TIMEOUT);
    }
}
