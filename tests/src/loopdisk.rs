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
use crate::containerd::{ContainerSpec, TestContainer, controller_dir_of_pid};

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

impl LoopDisk {
    /// The limits on this disk of `pid`'s cgroup as the kernel's files show them, read
    /// apart from the agent's own parser: [rbps, wbps, riops, wiops], 0 for none (v1
    /// `blkio.throttle.*_device`, v2 `io.max`).
    pub fn limits_of(&self, pid: u32) -> Result<[u64; 4]> {
        let (dir, v1) = controller_dir_of_pid(pid, "blkio")?;
        self.limits_in(&dir, v1)
    }

    /// The same, of the cgroup at `dir` (a v1 blkio directory when `v1`, else cgroup2):
    /// for a cgroup whose processes are gone.
    pub fn limits_in(&self, dir: &Path, v1: bool) -> Result<[u64; 4]> {
        let number = self.number()?;
        let mut limits = [0; 4];
        if v1 {
            for (slot, file) in ["read_bps", "write_bps", "read_iops", "write_iops"]
                .iter()
                .enumerate()
            {
                let path = dir.join(format!("blkio.throttle.{file}_device"));
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                for line in text.lines() {
                    if let Some(value) = line.strip_prefix(&format!("{number} ")) {
                        limits[slot] = value.trim().parse()?;
                    }
                }
            }
            return Ok(limits);
        }
        let path = dir.join("io.max");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        for line in text.lines() {
            let Some(fields) = line.strip_prefix(&format!("{number} ")) else {
                continue;
            };
            for field in fields.split_whitespace() {
                let (key, value) = field.split_once('=').context("io.max field")?;
                let slot = match key {
                    "rbps" => 0,
                    "wbps" => 1,
                    "riops" => 2,
                    "wiops" => 3,
                    _ => continue,
                };
                limits[slot] = if value == "max" { 0 } else { value.parse()? };
            }
        }
        Ok(limits)
    }
}

/// A container of pod `dev/<pod>-<test pid>` (container `db`) with a `disk_mib` MiB disk
/// of its own at /data, as a pod's volume. Keep the container dropped before the disk (a
/// struct with the container as its first field): the container holds the mount.
pub fn container_with_volume(pod: &str, disk_mib: u64) -> Result<(TestContainer, LoopDisk)> {
    let disk = LoopDisk::new(disk_mib)?;
    let mut spec = ContainerSpec::pod("dev", &format!("{pod}-{}", std::process::id()), "db");
    spec.bind_mounts = vec![(disk.mount_point(), "/data".into())];
    let container = TestContainer::start(spec)?;
    Ok((container, disk))
}

/// What the agent names the files it leaves in a target's filesystem while a fault holds.
pub const DISK_FILL_PREFIX: &str = ".chaos-disk-fill-";
pub const IO_STRESS_PREFIX: &str = ".chaos-io-stress-";

/// The names in `dir` that start with `prefix` (one of the agent's file prefixes).
pub fn files_named(dir: &Path, prefix: &str) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) {
            names.push(name);
        }
    }
    Ok(names)
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
