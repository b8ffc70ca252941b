//! What the kinds that work in a target's filesystem (disk fill, IO stress) share: the
//! node's view (its process, mounts, and the devices of the filesystems it needs), and a
//! directory of a target located: opened inside its root, its filesystem's device (an
//! overlay's by its upper directory), whether the node uses that filesystem, and the same
//! directory in the node's mount namespace (a volume outlives its container).

use std::path::{Path, PathBuf};

use chaos_cgroup::DeviceNumber;

use crate::error::AgentError;
use crate::fill_file::{Dir, device_of, open_dir_in};
use crate::mounts::{self, Mount};
use crate::procfs::{ProcessIdentity, Procfs};
use crate::resolve::Resolved;

/// The node's directories whose filesystems it needs free space on.
const NODE_PATHS: &[&str] = &[
    "/",
    "/var",
    "/var/lib/kubelet",
    "/var/lib/containerd",
    "/var/log",
    "/tmp",
];

pub fn root_of(procfs: &Procfs, pid: u32) -> PathBuf {
    procfs.root().join(pid.to_string()).join("root")
}

/// The devices of the filesystems the node needs (see [`NODE_PATHS`]), seen through
/// the root of the node's process `node`. Fails closed: a fill must never take the node's
/// filesystem for a volume because the node could not be read (only a directory the node
/// lacks, such as /var/lib/kubelet off Kubernetes, is skipped).
pub(crate) fn node_devices(
    procfs: &Procfs,
    node: u32,
    node_mounts: &[Mount],
) -> Result<Vec<DeviceNumber>, AgentError> {
    let node_root = root_of(procfs, node);
    let mut devices = Vec::new();
    for path in NODE_PATHS {
        let at = node_root.join(path.trim_start_matches('/'));
        match device_of(&at) {
            Ok(device) => {
                devices.push(device);
                // A node directory on an overlay (a live image's root, a VM's /tmp) fills
                // the filesystem under its upper directory too.
                let upper = mounts::mount_of(node_mounts, Path::new(path))
                    .and_then(|mount| upper_device(procfs, node, mount));
                if let Some(Ok(upper)) = upper {
                    devices.push(upper);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && *path != "/" => {}
            Err(e) => {
                return Err(AgentError::FailedPrecondition(format!(
                    "cannot read the node's filesystems through {}: {e} (the agent needs hostPID and CAP_SYS_PTRACE, or --node-pid naming a process in the node's mount namespace)",
                    at.display()
                )));
            }
        }
    }
    Ok(devices)
}

/// The device of an overlay's upper directory (a path in the node's mount namespace, where
/// the runtime mounted it), or None for another filesystem.
fn upper_device(
    procfs: &Procfs,
    node: u32,
    mount: &Mount,
) -> Option<std::io::Result<DeviceNumber>> {
    let upper = mount.upper_dir()?;
    Some(device_of(
        &root_of(procfs, node).join(upper.strip_prefix("/").unwrap_or(&upper)),
    ))
}

fn read_mounts(procfs: &Procfs, pid: u32) -> Result<Vec<Mount>, AgentError> {
    let file = procfs.root().join(pid.to_string()).join("mountinfo");
    std::fs::read_to_string(&file)
        .map(|text| mounts::parse_mountinfo(&text))
        .map_err(|e| AgentError::FailedPrecondition(format!("reading {}: {e}", file.display())))
}

/// The node as a fault in targets' filesystems needs it, read once per inject.
pub struct NodeView {
    pub node: ProcessIdentity,
    mounts: Vec<Mount>,
    devices: Vec<DeviceNumber>,
}

/// A directory of a target, located.
pub struct Located {
    pub dir: Dir,
    pub device: DeviceNumber,
    pub node_filesystem: bool,
    pub node_dir: Option<PathBuf>,
    /// The type of the mount that holds the directory (`ext4`, `overlay`, `tmpfs`).
    pub fs_type: String,
}

impl NodeView {
    /// Reads the node through its process `node_pid` (--node-pid); fails closed.
    pub fn read(procfs: &Procfs, node_pid: u32) -> Result<NodeView, AgentError> {
        let node = procfs
            .process(node_pid)
            .map(|p| ProcessIdentity {
                pid: p.pid,
                start_time: p.start_time,
            })
            .map_err(|e| {
                AgentError::FailedPrecondition(format!(
                    "the node's process {node_pid} (--node-pid) cannot be read: {e}"
                ))
            })?;
        let mounts = read_mounts(procfs, node.pid)?;
        Ok(NodeView {
            devices: node_devices(procfs, node.pid, &mounts)?,
            mounts,
            node,
        })
    }

    /// Opens `path` in `target`'s root and finds its filesystem.
    pub fn locate(
        &self,
        procfs: &Procfs,
        target: &Resolved,
        path: &Path,
    ) -> Result<Located, AgentError> {
        let what = target.describe();
        let shown = path.display();
        let pid = target.init.pid;
        let dir = open_dir_in(&root_of(procfs, pid), path).map_err(|e| {
            if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) {
                AgentError::NotFound(format!("{what}: no directory {shown} in its filesystem"))
            } else {
                AgentError::FailedPrecondition(format!("{what}: opening {shown}: {e}"))
            }
        })?;
        let unreadable =
            |e: std::io::Error| AgentError::FailedPrecondition(format!("{what}: {shown}: {e}"));
        let container_mounts = read_mounts(procfs, pid)?;
        let mount = mounts::mount_of(&container_mounts, path).ok_or_else(|| {
            AgentError::FailedPrecondition(format!("{what}: no mount holds {shown}"))
        })?;
        // An overlay is a filesystem of its own (an anonymous device); what fills is the
        // filesystem under its upper directory. The node's own directories are compared
        // both ways: a bind mount of a node directory on an overlay (the VM's /tmp) has
        // the overlay's device.
        let dir_device = dir.device().map_err(unreadable)?;
        let upper = upper_device(procfs, self.node.pid, mount)
            .transpose()
            .map_err(unreadable)?;
        let device = upper.unwrap_or(dir_device);
        Ok(Located {
            node_dir: mounts::node_path(mount, path, &self.mounts),
            node_filesystem: self.devices.contains(&dir_device) || self.devices.contains(&device),
            fs_type: mount.fs_type.clone(),
            device,
            dir,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_that_cannot_be_read_refuses_the_fill_instead_of_counting_as_a_volume() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("7")).unwrap();
        // Its root is not a directory: unreadable, not absent.
        std::fs::write(tmp.path().join("7/root"), b"").unwrap();
        let err = node_devices(&Procfs::at(tmp.path()), 7, &[]).unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(err.to_string().contains("--node-pid"), "{err}");
        // A directory the node lacks (no kubelet) is skipped; its root is read.
        std::fs::remove_file(tmp.path().join("7/root")).unwrap();
        std::fs::create_dir_all(tmp.path().join("7/root/var")).unwrap();
        assert_eq!(
            node_devices(&Procfs::at(tmp.path()), 7, &[]).unwrap().len(),
            2
        );
    }
}
