//! What a fault needs to know of one cgroup directory, whatever its controller: which
//! cgroup it is (its inode), whether it has child cgroups, and its processes. Shared by
//! the controllers a fault writes directly (the freezer, IO limits).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::error::CgroupError;

/// The directory's inode: which cgroup this is. A cgroup removed and made again at the
/// same path (a container replaced under the same name) has another one, since kernfs
/// hands out inode numbers cyclically.
pub(crate) fn inode(dir: &Path) -> Result<u64, CgroupError> {
    std::fs::metadata(dir)
        .map(|meta| meta.ino())
        .map_err(|e| CgroupError::io(dir, e))
}

/// True when the cgroup has child cgroups (a write to it would bound them too).
pub(crate) fn has_children(dir: &Path) -> Result<bool, CgroupError> {
    let entries = std::fs::read_dir(dir).map_err(|e| CgroupError::io(dir, e))?;
    Ok(entries
        .flatten()
        .any(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir())))
}

/// The processes of the cgroup itself (not of its children).
pub(crate) fn procs(dir: &Path) -> Result<Vec<u32>, CgroupError> {
    let file = dir.join("cgroup.procs");
    let text = read(&file)?;
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            line.trim().parse::<u32>().map_err(|_| {
                CgroupError::parse(file.display().to_string(), format!("bad pid {line:?}"))
            })
        })
        .collect()
}

pub(crate) fn read(file: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(file).map_err(|e| CgroupError::io(file, e))
}

/// Writes `value` to a control file of an existing cgroup in one write(2), as the kernel
/// reads each write as one command.
pub(crate) fn write_control(dir: &Path, file_name: &str, value: &str) -> Result<(), CgroupError> {
    if !dir.is_dir() {
        return Err(CgroupError::NotFound {
            path: dir.to_path_buf(),
        });
    }
    let file = dir.join(file_name);
    std::fs::write(&file, value).map_err(|e| CgroupError::io(&file, e))
}
