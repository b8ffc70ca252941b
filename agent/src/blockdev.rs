//! The node's block devices, from sysfs: what an IO fault limits. `/sys/block` lists the
//! whole disks; `/sys/class/block/NAME` and `/sys/dev/block/MAJ:MIN` name any device,
//! partitions included, and a partition's directory sits inside its disk's. Sysfs is not
//! namespaced for block devices, so the agent's container sees the node's.

use std::path::{Path, PathBuf};

use chaos_cgroup::DeviceNumber;

/// One whole disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDevice {
    /// The kernel's name: `nvme0n1`, `loop3`, `dm-0`.
    pub name: String,
    pub number: DeviceNumber,
}

/// Why a named device was not found.
#[derive(Debug, thiserror::Error)]
pub enum BlockDeviceError {
    #[error("no block device {0} on this node")]
    NotFound(String),
    #[error("reading {}: {detail}", path.display())]
    Unreadable { path: PathBuf, detail: String },
}

/// A sysfs mount (normally `/sys`; tests use a fake tree).
#[derive(Debug, Clone)]
pub struct Sysfs {
    root: PathBuf,
}

impl Sysfs {
    pub fn host() -> Sysfs {
        Sysfs::at("/sys")
    }

    pub fn at(root: impl Into<PathBuf>) -> Sysfs {
        Sysfs { root: root.into() }
    }

    /// Every whole disk that has a size (an unbound loop device or an empty drive has
    /// none, and no IO to limit), by name.
    pub fn whole_disks(&self) -> Result<Vec<BlockDevice>, BlockDeviceError> {
        let dir = self.root.join("block");
        let entries = std::fs::read_dir(&dir).map_err(|e| unreadable(&dir, e))?;
        let mut disks = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if read_number(&path.join("size")).unwrap_or(0) == 0 {
                continue;
            }
            disks.push(device_at(&path)?);
        }
        disks.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(disks)
    }

    /// The whole disk `spec` names: `MAJ:MIN`, a name (`nvme0n1p1`) or `/dev/NAME`. A
    /// partition means its disk. The caller has checked that a name is one path
    /// component.
    pub fn disk(&self, spec: &str) -> Result<BlockDevice, BlockDeviceError> {
        let link = if spec.parse::<DeviceNumber>().is_ok() {
            self.root.join("dev/block").join(spec)
        } else {
            let name = spec.strip_prefix("/dev/").unwrap_or(spec);
            self.root.join("class/block").join(name)
        };
        let dir = std::fs::canonicalize(&link)
            .map_err(|_| BlockDeviceError::NotFound(spec.to_string()))?;
        let disk_dir = if dir.join("partition").is_file() {
            dir.parent().map(Path::to_path_buf).unwrap_or(dir)
        } else {
            dir
        };
        device_at(&disk_dir)
    }
}

fn device_at(dir: &Path) -> Result<BlockDevice, BlockDeviceError> {
    let name = dir
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or_default()
        .to_string();
    let dev = dir.join("dev");
    let text = std::fs::read_to_string(&dev).map_err(|e| unreadable(&dev, e))?;
    let number = text
        .trim()
        .parse::<DeviceNumber>()
        .map_err(|detail| BlockDeviceError::Unreadable { path: dev, detail })?;
    Ok(BlockDevice { name, number })
}

fn read_number(file: &Path) -> Option<u64> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

fn unreadable(path: &Path, error: std::io::Error) -> BlockDeviceError {
    BlockDeviceError::Unreadable {
        path: path.to_path_buf(),
        detail: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn device(root: &Path, dir: &str, dev: &str, size: &str, partition: bool) {
        let dir = root.join(dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("dev"), format!("{dev}\n")).unwrap();
        std::fs::write(dir.join("size"), format!("{size}\n")).unwrap();
        if partition {
            std::fs::write(dir.join("partition"), "1\n").unwrap();
        }
    }

    /// A tree shaped like the kernel's: devices under /sys/devices, links in block/,
    /// class/block/ and dev/block/.
    fn fake_sysfs() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        device(
            root,
            "devices/pci0/nvme/block/nvme0n1",
            "259:0",
            "2000",
            false,
        );
        device(
            root,
            "devices/pci0/nvme/block/nvme0n1/nvme0n1p1",
            "259:1",
            "1000",
            true,
        );
        device(root, "devices/virtual/block/loop3", "7:3", "131072", false);
        device(root, "devices/virtual/block/loop4", "7:4", "0", false);
        for dir in ["block", "class/block", "dev/block"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        let link = |target: &str, at: &str| symlink(root.join(target), root.join(at)).unwrap();
        link("devices/pci0/nvme/block/nvme0n1", "block/nvme0n1");
        link("devices/virtual/block/loop3", "block/loop3");
        link("devices/virtual/block/loop4", "block/loop4");
        link("devices/pci0/nvme/block/nvme0n1", "class/block/nvme0n1");
        link(
            "devices/pci0/nvme/block/nvme0n1/nvme0n1p1",
            "class/block/nvme0n1p1",
        );
        link("devices/virtual/block/loop3", "class/block/loop3");
        link(
            "devices/pci0/nvme/block/nvme0n1/nvme0n1p1",
            "dev/block/259:1",
        );
        link("devices/virtual/block/loop3", "dev/block/7:3");
        tmp
    }

    #[test]
    fn whole_disks_are_those_with_a_size() {
        let tmp = fake_sysfs();
        let names: Vec<String> = Sysfs::at(tmp.path())
            .whole_disks()
            .unwrap()
            .into_iter()
            .map(|d| format!("{} {}", d.name, d.number))
            .collect();
        assert_eq!(names, ["loop3 7:3", "nvme0n1 259:0"]);
    }

    #[test]
    fn a_device_is_found_by_number_name_or_path_and_a_partition_means_its_disk() {
        let tmp = fake_sysfs();
        let sysfs = Sysfs::at(tmp.path());
        for spec in ["259:1", "nvme0n1p1", "/dev/nvme0n1p1", "nvme0n1"] {
            let disk = sysfs.disk(spec).unwrap();
            assert_eq!(
                (disk.name.as_str(), disk.number.to_string()),
                ("nvme0n1", "259:0".into()),
                "{spec}"
            );
        }
        assert_eq!(sysfs.disk("/dev/loop3").unwrap().number.to_string(), "7:3");
        let missing = sysfs.disk("sdz").unwrap_err();
        assert!(
            matches!(missing, BlockDeviceError::NotFound(_)),
            "{missing}"
        );
        assert!(sysfs.disk("8:99").is_err());
    }
}
