//! Run rtnetlink operations inside another network namespace.
//!
//! A netlink socket belongs to the namespace of the thread that opened it, for its whole
//! life, and `setns` changes only the calling thread. So a fresh OS thread enters the
//! namespace and opens the socket, then ends; no thread of the caller (and never a tokio
//! worker) ever changes namespace. Two ways to use that:
//!
//! - [`NetnsHandle::open`] (async): only the socket is made on that thread; it comes back
//!   and is driven on the caller's runtime, so one request can run many operations in the
//!   namespace at the cost of one thread start.
//! - [`in_netns`] (blocking): the thread also runs the operation on its own current-thread
//!   runtime. For code without a runtime (journal replay at start, tests).

use std::fs::File;
use std::future::Future;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::path::{Path, PathBuf};

use netlink_sys::{TokioSocket, protocols::NETLINK_ROUTE};
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
    #[error("cannot start a thread to enter the network namespace: {0}")]
    Thread(std::io::Error),
    #[error("a netlink connection needs a tokio runtime with I/O enabled")]
    NoRuntime,
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

/// An rtnetlink handle whose socket was opened inside another network namespace and is
/// driven on the caller's tokio runtime. Dropping it stops the driver and closes the socket.
///
/// A socket holds a reference on its namespace: while this handle lives, the namespace
/// (and its interfaces) cannot be destroyed even when every process in it has exited. Hold
/// one for the operations of one request, never for a fault's whole duration.
pub struct NetnsHandle {
    handle: Handle,
    driver: tokio::task::JoinHandle<()>,
}

impl NetnsHandle {
    /// Opens a NETLINK_ROUTE socket inside the namespace at `netns_path` (a short-lived
    /// thread enters it, creates the socket and ends) and starts its driver on the current
    /// runtime.
    pub async fn open(netns_path: &Path) -> Result<NetnsHandle, NetnsError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NetnsError::NoRuntime)?;
        let namespace = File::open(netns_path).map_err(|source| NetnsError::Open {
            path: netns_path.to_path_buf(),
            source,
        })?;
        let path = netns_path.to_path_buf();
        let (sender, receiver) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("chaos-netns".into())
            .spawn(move || {
                let socket = setns(&namespace, CloneFlags::CLONE_NEWNET)
                    .map_err(|source| NetnsError::Enter { path, source })
                    .and_then(|()| {
                        let socket =
                            netlink_sys::Socket::new(NETLINK_ROUTE).map_err(NetnsError::Socket)?;
                        socket.set_non_blocking(true).map_err(NetnsError::Socket)?;
                        Ok(socket)
                    });
                // The receiver only goes away when the caller was cancelled; the socket
                // is then closed by the drop.
                let _ = sender.send(socket);
            })
            .map_err(NetnsError::Thread)?;
        let socket = receiver.await.map_err(|_| NetnsError::ThreadPanicked)??;
        let _entered = runtime.enter();
        // SAFETY: the descriptor is the netlink socket just made, owned by nobody else.
        // `TokioSocket::from_raw_fd` registers it with the current runtime's reactor (it
        // panics on a runtime built without I/O; the agent's and the tests' enable it) and
        // sets non-blocking mode, which is already set.
        let socket = unsafe { TokioSocket::from_raw_fd(socket.into_raw_fd()) };
        let (connection, handle, _) = rtnetlink::from_socket(socket);
        let driver = runtime.spawn(connection);
        Ok(NetnsHandle { handle, driver })
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for NetnsHandle {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl std::fmt::Debug for NetnsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NetnsHandle")
    }
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
