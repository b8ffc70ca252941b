use std::path::PathBuf;

/// Errors of cgroup discovery and access; every variant names the path or text involved.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The cgroup directory, file or process does not exist (e.g. the container is gone).
    #[error("not found: {}", path.display())]
    NotFound { path: PathBuf },
    /// Any other I/O failure reading or writing a cgroup or /proc file.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file's content (or a /proc/PID/cgroup text) is not in the expected format.
    #[error("cannot parse {what}: {detail}")]
    Parse { what: String, detail: String },
    /// A `cgroup:PATH` target path that is not absolute or climbs with `..`.
    #[error("invalid cgroup path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    /// The cgroup filesystem at the root has no usable hierarchy for this request.
    #[error("no usable cgroup hierarchy under {}: {detail}", root.display())]
    Unsupported { root: PathBuf, detail: String },
}

impl CgroupError {
    /// Classifies an I/O error: ENOENT (and ESRCH for vanished processes) become `NotFound`.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> CgroupError {
        let path = path.into();
        let vanished = source.kind() == std::io::ErrorKind::NotFound
            || source.raw_os_error() == Some(libc::ESRCH);
        if vanished {
            CgroupError::NotFound { path }
        } else {
            CgroupError::Io { path, source }
        }
    }

    pub(crate) fn parse(what: impl Into<String>, detail: impl Into<String>) -> CgroupError {
        CgroupError::Parse {
            what: what.into(),
            detail: detail.into(),
        }
    }

    /// True when the cgroup or process no longer exists.
    pub fn is_not_found(&self) -> bool {
        matches!(self, CgroupError::NotFound { .. })
    }

    /// True when the kernel refused a write for a block device it no longer has (ENODEV):
    /// a limit on a removed disk is gone with it.
    pub fn is_no_device(&self) -> bool {
        matches!(self, CgroupError::Io { source, .. } if source.raw_os_error() == Some(libc::ENODEV))
    }
}
