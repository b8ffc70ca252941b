//! Run rtnetlink operations inside another network namespace.
//!
//! A netlink socket belongs to the namespace of the thread that opened it, and `setns`
//! changes only the calling thread. So every call gets a fresh OS thread that enters the
//! namespace first, then opens the socket and drives it on its own current-thread tokio
//! runtime; the thread ends with the call, so no thread of the caller (and never a tokio
//! worker) ever changes namespace. From async code, call [`in_netns`] inside
//! `tokio::task::spawn_blocking`.

use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};
use rtnetlink::Handle;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot open network namespace {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot enter network namespace {path}: {source}")]
    Enter { path: PathBuf, source: nix::Error },
    #[error("cannot start the netlink runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot open a netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("the netlink thread panicked")]
    ThreadPanicked,
}

/// The network namespace of a process.
pub fn netns_of_pid(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/ns/net"))
}

/// A namespace created by `ip netns add NAME`.
pub fn named_netns(name: &str) -> PathBuf {
    Path::new("/var/run/netns").join(name)
}

/// Identifies a network namespace across processes: the (device, inode) of its nsfs file.
/// Two paths name the same namespace exactly when their identities are equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct NetnsId {
    pub dev: u64,
    pub ino: u64,
}

/// The identity of the namespace at `path` (`/proc/PID/ns/net`, `/run/netns/NAME`).
pub fn netns_id(path: &Path) -> Result<NetnsId, NetnsError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|source| NetnsError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(NetnsId {
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

/// A path to the namespace `id` that is still open somewhere: a process in it under
/// `proc_root`, or a bind mount under `/run/netns`. `None` when no process and no mount
/// holds it any more, i.e. the namespace is gone (with everything configured in it).
pub fn find_netns(id: NetnsId, proc_root: &Path) -> Option<PathBuf> {
    let named = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok().map(|e| e.path()));
    let processes = std::fs::read_dir(proc_root)
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_string_lossy().parse::<u32>().is_ok())
        .map(|entry| entry.path().join("ns/net"));
    named
        .chain(processes)
        .find(|path| netns_id(path).is_ok_and(|found| found == id))
}

/// Runs `operation` with an rtnetlink handle opened inside the network namespace at
/// `netns_path` (e.g. `/proc/PID/ns/net`), on a dedicated thread, and returns its output.
pub fn in_netns<T, F, Fut>(netns_path: &Path, operation: F) -> Result<T, NetnsError>
where
    T: Send,
    F: FnOnce(Handle) -> Fut + Send,
    Fut: Future<Output = T>,
{
    // Open the namespace file on the caller's thread so a bad path fails early and clearly.
    let namespace = File::open(netns_path).map_err(|source| NetnsError::Open {
        path: netns_path.to_path_buf(),
        source,
    })?;
    std::thread::scope(|scope| {
        let worker = scope.spawn(move || {
            setns(&namespace, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
                path: netns_path.to_path_buf(),
                source,
            })?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .map_err(NetnsError::Runtime)?;
            runtime.block_on(async move {
                // Opened after setns: the socket lives in the target namespace.
                let (connection, handle, _) =
                    rtnetlink::new_connection().map_err(NetnsError::Socket)?;
                let driver = tokio::spawn(connection);
                let output = operation(handle).await;
                driver.abort();
                Ok(output)
            })
        });
        worker.join().map_err(|_| NetnsError::ThreadPanicked)?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_namespace_is_an_open_error() {
        let result = in_netns(Path::new("/nonexistent/chaos-test-netns"), |_| async {});
        assert!(matches!(result, Err(NetnsError::Open { .. })));
    }

    #[test]
    fn our_namespace_is_found_by_its_identity() {
        let own = netns_id(Path::new("/proc/self/ns/net")).unwrap();
        assert_ne!(own.ino, 0);
        let found = find_netns(own, Path::new("/proc")).unwrap();
        assert_eq!(netns_id(&found).unwrap(), own);
        let gone = NetnsId {
            dev: own.dev,
            ino: 1,
        };
        assert_eq!(find_netns(gone, Path::new("/proc")), None);
    }

    #[test]
    fn paths() {
        assert_eq!(netns_of_pid(42), PathBuf::from("/proc/42/ns/net"));
        assert_eq!(named_netns("x"), PathBuf::from("/var/run/netns/x"));
    }
}
