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
    fn paths() {
        assert_eq!(netns_of_pid(42), PathBuf::from("/proc/42/ns/net"));
        assert_eq!(named_netns("x"), PathBuf::from("/var/run/netns/x"));
    }
}
