//! The kernel side of a disk fill: a directory opened inside another process's root
//! (openat2 with RESOLVE_IN_ROOT, so an absolute symlink or a `..` in the container's tree
//! resolves inside the container, never onto the node's own files), the numbers of its
//! filesystem as df shows them, and one file allocated at once (fallocate) and removed.

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use chaos_cgroup::DeviceNumber;
use rustix::fs::{AtFlags, FallocateFlags, Mode, OFlags, ResolveFlags};

/// A directory, opened.
#[derive(Debug)]
pub struct Dir(OwnedFd);

/// A filesystem's size as df counts it: used plus what an unprivileged writer may still
/// take (the blocks reserved for root are in neither).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    pub used: u64,
    pub available: u64,
}

impl Space {
    pub fn size(&self) -> u64 {
        self.used + self.available
    }
}

/// Opens `path` (absolute, as a process whose root is `root` sees it) as a directory,
/// resolving every step inside `root`.
pub fn open_dir_in(root: &Path, path: &Path) -> io::Result<Dir> {
    let root_dir = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let inside = path.strip_prefix("/").unwrap_or(path);
    let inside = if inside.as_os_str().is_empty() {
        Path::new(".")
    } else {
        inside
    };
    let dir = rustix::fs::openat2(
        &root_dir,
        inside,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )?;
    Ok(Dir(dir))
}

impl Dir {
    pub fn space(&self) -> io::Result<Space> {
        let stat = rustix::fs::fstatvfs(&self.0)?;
        Ok(Space {
            used: stat.f_frsize * (stat.f_blocks - stat.f_bfree),
            available: stat.f_frsize * stat.f_bavail,
        })
    }

    /// The device of the directory's filesystem.
    pub fn device(&self) -> io::Result<DeviceNumber> {
        let stat = rustix::fs::fstat(&self.0)?;
        Ok(device_number(stat.st_dev))
    }

    /// Creates `name` (never an existing file) with `bytes` allocated to it; on failure
    /// nothing is left.
    pub fn create_allocated(&self, name: &str, bytes: u64) -> io::Result<()> {
        let file = rustix::fs::openat(
            &self.0,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        if let Err(e) = rustix::fs::fallocate(&file, FallocateFlags::empty(), 0, bytes) {
            let _ = self.remove(name);
            return Err(e.into());
        }
        Ok(())
    }

    /// The bytes allocated to `name` (its blocks).
    pub fn allocated(&self, name: &str) -> io::Result<u64> {
        let stat = rustix::fs::statat(&self.0, name, AtFlags::SYMLINK_NOFOLLOW)?;
        Ok(stat.st_blocks as u64 * 512)
    }

    pub fn remove(&self, name: &str) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(&self.0, name, AtFlags::empty())?)
    }
}

/// The descriptor, for a stressor that works in the directory itself.
impl From<Dir> for OwnedFd {
    fn from(dir: Dir) -> OwnedFd {
        dir.0
    }
}

/// The device of the filesystem at `path` (followed, as the agent sees it).
pub fn device_of(path: &Path) -> io::Result<DeviceNumber> {
    Ok(device_number(rustix::fs::stat(path)?.st_dev))
}

fn device_number(dev: u64) -> DeviceNumber {
    DeviceNumber {
        major: rustix::fs::major(dev),
        minor: rustix::fs::minor(dev),
    }
}
