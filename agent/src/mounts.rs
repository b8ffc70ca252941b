//! Mount tables (`/proc/PID/mountinfo`), for a fault that writes into a container's
//! filesystem: which mount holds a path the container sees, which filesystem of the node
//! that is, and where the same directory is in the node's own mount namespace (PID 1's),
//! so that a file can be found again after the container's processes are gone. Parsing
//! and decisions only; the reads are the caller's.

use std::path::{Path, PathBuf};

use chaos_cgroup::DeviceNumber;

/// One line of a mountinfo table (proc(5)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The filesystem's device (st_dev of its files; 0:N for an anonymous one such as an
    /// overlay or a tmpfs).
    pub device: DeviceNumber,
    /// The directory of the filesystem this mount shows (a bind mount of a subdirectory
    /// has that subdirectory).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub super_options: String,
}

impl Mount {
    /// An overlay's upper directory (`upperdir=`, a path in the mount namespace of whoever
    /// mounted it: the runtime's, the node's).
    pub fn upper_dir(&self) -> Option<PathBuf> {
        if self.fs_type != "overlay" {
            return None;
        }
        self.super_options
            .split(',')
            .find_map(|option| option.strip_prefix("upperdir="))
            .map(|dir| PathBuf::from(unescape(dir)))
    }
}

/// The mounts of a mountinfo text, in its order; lines it cannot read are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines().filter_map(parse_line).collect()
}

/// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`
fn parse_line(line: &str) -> Option<Mount> {
    let (before, after) = line.split_once(" - ")?;
    let fields: Vec<&str> = before.split(' ').collect();
    let device = fields.get(2)?.parse().ok()?;
    let root = PathBuf::from(unescape(fields.get(3)?));
    let mount_point = PathBuf::from(unescape(fields.get(4)?));
    let mut rest = after.split(' ');
    let fs_type = rest.next()?.to_string();
    let _source = rest.next()?;
    let super_options = rest.next().unwrap_or_default().to_string();
    Some(Mount {
        device,
        root,
        mount_point,
        fs_type,
        super_options,
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|digits| {
            std::str::from_utf8(digits)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount that holds `path`: the one with the longest mount point above it, the last
/// of those in the table (a later mount on the same point hides an earlier one).
pub fn mount_of<'a>(mounts: &'a [Mount], path: &Path) -> Option<&'a Mount> {
    mounts
        .iter()
        .enumerate()
        .filter(|(_, m)| path.starts_with(&m.mount_point))
        .max_by_key(|(index, m)| (m.mount_point.components().count(), *index))
        .map(|(_, m)| m)
}

/// Where the directory `path`, which the container sees under its mount `mount`, is in
/// the node's mount namespace (`node` is PID 1's table): an overlay's upper directory, or
/// the node's mount of the same filesystem whose root holds the container's. None when
/// the node has no such mount (a filesystem only the container's namespace holds).
pub fn node_path(mount: &Mount, path: &Path, node: &[Mount]) -> Option<PathBuf> {
    let below = path.strip_prefix(&mount.mount_point).ok()?;
    if let Some(upper) = mount.upper_dir() {
        return Some(upper.join(below));
    }
    node.iter()
        .filter(|n| n.device == mount.device && mount.root.starts_with(&n.root))
        .map(|n| {
            let inside = mount.root.strip_prefix(&n.root).unwrap_or(Path::new(""));
            n.mount_point.join(inside).join(below)
        })
        .next()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A container's table: an overlay root from containerd, a bind-mounted volume (a
    /// directory of the node's ext4), a tmpfs.
    const CONTAINER: &str = "\
1510 1389 0:211 / / rw,relatime - overlay overlay rw,lowerdir=/var/lib/containerd/s/1/fs,upperdir=/var/lib/containerd/s/9/fs,workdir=/var/lib/containerd/s/9/work
1511 1510 0:212 / /proc rw,nosuid - proc proc rw
1520 1510 259:1 /var/lib/kubelet/pods/p1/volumes/kubernetes.io~empty-dir/data /data rw,relatime - ext4 /dev/nvme0n1p1 rw
1521 1510 7:3 / /scratch\\040space rw,relatime - ext4 /dev/loop3 rw
1522 1510 0:99 / /cache rw - tmpfs tmpfs rw,size=65536k
";
    const NODE: &str = "\
22 1 259:1 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p1 rw
90 22 7:3 / /tmp/chaos\\040disk/mnt rw,relatime shared:40 - ext4 /dev/loop3 rw
";

    #[test]
    fn the_mount_of_a_path_is_the_deepest_and_the_last() {
        let mounts = parse_mountinfo(CONTAINER);
        assert_eq!(mounts.len(), 5);
        assert_eq!(
            mount_of(&mounts, Path::new("/data/x"))
                .unwrap()
                .device
                .major,
            259
        );
        assert_eq!(
            mount_of(&mounts, Path::new("/etc")).unwrap().fs_type,
            "overlay"
        );
        assert_eq!(
            mount_of(&mounts, Path::new("/scratch space"))
                .unwrap()
                .mount_point,
            PathBuf::from("/scratch space")
        );
        let twice = format!("{CONTAINER}1530 1510 0:300 / /data rw - tmpfs tmpfs rw\n");
        let mounts = parse_mountinfo(&twice);
        assert_eq!(
            mount_of(&mounts, Path::new("/data")).unwrap().fs_type,
            "tmpfs"
        );
    }

    #[test]
    fn a_container_directory_is_found_on_the_node_through_its_overlay_or_its_filesystem() {
        let mounts = parse_mountinfo(CONTAINER);
        let node = parse_mountinfo(NODE);
        let at = |path: &str| {
            let mount = mount_of(&mounts, Path::new(path)).unwrap();
            node_path(mount, Path::new(path), &node)
        };
        assert_eq!(
            at("/").unwrap(),
            PathBuf::from("/var/lib/containerd/s/9/fs")
        );
        assert_eq!(
            at("/var/tmp").unwrap(),
            PathBuf::from("/var/lib/containerd/s/9/fs/var/tmp")
        );
        assert_eq!(
            at("/data/db").unwrap(),
            PathBuf::from("/var/lib/kubelet/pods/p1/volumes/kubernetes.io~empty-dir/data/db")
        );
        assert_eq!(
            at("/scratch space").unwrap(),
            PathBuf::from("/tmp/chaos disk/mnt")
        );
        // A tmpfs only the container's namespace holds.
        assert_eq!(at("/cache"), None);
    }
}
