//! Run rtnetlink operations inside another network namespace.
//!
//! A netlink socket belongs to the namespace of the thread that opened it, for its whole
//! life, and `setns` changes only the calling thread. So no thread of the caller (and
//! never a tokio worker) changes namespace; two ways to get a socket in another one:
//!
//! - [`NetnsHandle::open`] (async): one long-lived thread of this crate, the socket maker,
//!   enters the namespace, makes the socket and goes back to its own namespace
//!   ([`make_socket_in`] makes any other kind of socket there the same way). The
//!   socket is then driven in the caller's own task ([`NetnsHandle::run`]), so one request
//!   runs many operations in the namespace for the cost of two `setns` calls (a thread
//!   start per socket cost about 0.9 ms more under TCG: 2.2 ms to open, now 1.3 ms).
//! - [`in_netns`] (blocking): a fresh thread enters the namespace and runs the operation
//!   on its own current-thread runtime. For code without a runtime (tests).
//!
//! A namespace is opened once, as an [`OpenNetns`]: its identity is read from that
//! descriptor (fstat) and the same descriptor is what the socket maker enters, so nothing
//! can swap the namespace between the check and the use. Its nsfs inode is only a
//! locator: the kernel hands a freed inode number to the next namespace it makes. What
//! the kernel never reuses (within a boot) is the namespace's cookie
//! ([`NetnsHandle::cookie`], `SO_NETNS_COOKIE`), read from the socket made inside it.
//!
//! Every operation has a deadline ([`NETLINK_TIMEOUT`]): a request the kernel never
//! answers fails with [`NetnsError::TimedOut`] instead of holding its caller forever.

use std::fs::File;
use std::future::Future;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

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
    #[error("cannot make a socket in network namespace {path}: {source}")]
    MakeSocket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the netlink thread panicked")]
    ThreadPanicked,
    #[error("cannot start a thread to enter the network namespace: {0}")]
    Thread(std::io::Error),
    #[error("a netlink connection needs a tokio runtime with I/O and time enabled")]
    NoRuntime,
    #[error(
        "netlink in network namespace {path} did not finish within {after:?} (the kernel did not answer)"
    )]
    TimedOut { path: PathBuf, after: Duration },
    #[error("cannot read the cookie of network namespace {path}: {source}")]
    Cookie {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// How long one netlink operation ([`NetnsHandle::run`], [`in_netns`]) may take. A
/// request's whole exchange with the kernel takes milliseconds (tens under software
/// emulation, about a second for 100 faults at once there); a request the kernel does not
/// answer would otherwise hold its caller, and the agent's faults share one thread.
pub const NETLINK_TIMEOUT: Duration = Duration::from_secs(5);

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

impl NetnsId {
    fn of(meta: &std::fs::Metadata) -> NetnsId {
        use std::os::unix::fs::MetadataExt;
        NetnsId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// The identity of the namespace at `path` (`/proc/PID/ns/net`, `/run/netns/NAME`), at
/// this moment: compare it only with identities of namespaces that are open meanwhile.
pub fn netns_id(path: &Path) -> Result<NetnsId, NetnsError> {
    let meta = std::fs::metadata(path).map_err(|source| NetnsError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(NetnsId::of(&meta))
}

/// A network namespace opened once. While it is open the namespace cannot be destroyed,
/// so its [`NetnsId`] names it and no other; every later step (entering it, making a
/// socket in it) goes through this descriptor, never through the path again. Like a
/// socket, it keeps the namespace alive: hold it for one request, not for a fault.
#[derive(Debug)]
pub struct OpenNetns {
    file: File,
    path: PathBuf,
    id: NetnsId,
}

impl OpenNetns {
    /// Opens the namespace at `path` and reads its identity from the open file (fstat).
    pub fn open(path: &Path) -> Result<OpenNetns, NetnsError> {
        let open_error = |source| NetnsError::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(open_error)?;
        let meta = file.metadata().map_err(open_error)?;
        Ok(OpenNetns {
            file,
            path: path.to_path_buf(),
            id: NetnsId::of(&meta),
        })
    }

    pub fn id(&self) -> NetnsId {
        self.id
    }

    /// Where it was opened (for messages; never opened again).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn duplicate(&self) -> Result<File, NetnsError> {
        self.file.try_clone().map_err(|source| NetnsError::Open {
            path: self.path.clone(),
            source,
        })
    }
}

/// The namespace `id` opened through something still holding it: a process in it under
/// `proc_root`, or a bind mount under `/run/netns`. `None` when no process and no mount
/// holds it any more, i.e. the namespace is gone (with everything configured in it).
/// An inode number outlives its namespace, though: the kernel may have given it to a
/// newer one, which this then finds. Tell them apart by cookie ([`NetnsHandle::cookie`]).
pub fn find_netns(id: NetnsId, proc_root: &Path) -> Option<OpenNetns> {
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
        .filter_map(|path| OpenNetns::open(&path).ok())
        .find(|open| open.id == id)
}

/// `SO_NETNS_COOKIE` (Linux 5.14, `include/uapi/asm-generic/socket.h`, which x86-64 and
/// arm64 use; the libc crate does not export it).
const SO_NETNS_COOKIE: nix::libc::c_int = 71;

/// The cookie of the network namespace `socket` belongs to: a 64-bit number the kernel
/// gives each namespace at creation from a counter, so no two namespaces of one boot
/// share it. `None` on kernels before 5.14, which do not know the option.
pub fn socket_netns_cookie(socket: &impl AsFd) -> std::io::Result<Option<u64>> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as nix::libc::socklen_t;
    // SAFETY: a valid descriptor, and a u64 buffer passed with its own size.
    let rc = unsafe {
        nix::libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            nix::libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        return Ok(Some(cookie));
    }
    let error = std::io::Error::last_os_error();
    if error.raw_os_error() == Some(nix::libc::ENOPROTOOPT) {
        Ok(None)
    } else {
        Err(error)
    }
}

/// A netlink socket opened inside another network namespace, used from the caller's
/// task through [`NetnsHandle::run`]. Dropping it closes the socket.
///
/// A socket holds a reference on its namespace: while this handle lives, the namespace
/// (and its interfaces) cannot be destroyed even when every process in it has exited. Hold
/// one for the operations of one request, never for a fault's whole duration.
pub struct NetnsHandle {
    handle: Handle,
    /// Where the namespace was opened, for messages.
    path: PathBuf,
    cookie: Option<u64>,
    /// Sends requests and routes answers; polled only inside `run`. `None` once it ended
    /// (socket error), which also fails every request still waiting on it.
    connection: Option<Pin<Box<RouteConnection>>>,
}

type RouteConnection =
    rtnetlink::proto::Connection<netlink_packet_route::RouteNetlinkMessage, TokioSocket>;

impl NetnsHandle {
    /// Opens the namespace at `netns_path` and a socket in it (see [`NetnsHandle::open_in`]).
    pub async fn open(netns_path: &Path) -> Result<NetnsHandle, NetnsError> {
        NetnsHandle::open_in(&OpenNetns::open(netns_path)?).await
    }

    /// Opens a NETLINK_ROUTE socket inside `netns` (the socket maker thread enters it
    /// through its descriptor, makes the socket and leaves), reads the namespace's cookie
    /// from the socket and registers it with the current runtime.
    pub async fn open_in(netns: &OpenNetns) -> Result<NetnsHandle, NetnsError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NetnsError::NoRuntime)?;
        let path = netns.path().to_path_buf();
        let socket = made_in(netns, Box::new(route_socket)).await?;
        let cookie = socket_netns_cookie(&socket).map_err(|source| NetnsError::Cookie {
            path: path.clone(),
            source,
        })?;
        let _entered = runtime.enter();
        // SAFETY: the descriptor is the netlink socket just made, owned by nobody else.
        // `TokioSocket::from_raw_fd` registers it with the current runtime's reactor (it
        // panics on a runtime built without I/O; the agent's and the tests' enable it) and
        // sets non-blocking mode, which is already set.
        let socket = unsafe { TokioSocket::from_raw_fd(socket.into_raw_fd()) };
        let (connection, handle, _) = rtnetlink::from_socket(socket);
        Ok(NetnsHandle {
            handle,
            path,
            cookie,
            connection: Some(Box::pin(connection)),
        })
    }

    /// The cookie of the namespace this socket lives in (see [`socket_netns_cookie`]).
    pub fn cookie(&self) -> Option<u64> {
        self.cookie
    }

    /// Runs `operation` with the socket, at most [`NETLINK_TIMEOUT`] (see [`Self::run_within`]).
    pub async fn run<T>(
        &mut self,
        operation: impl AsyncFnOnce(&Handle) -> T,
    ) -> Result<T, NetnsError> {
        self.run_within(NETLINK_TIMEOUT, operation).await
    }

    /// Runs `operation` with the socket, driving the socket in this same task while it
    /// runs: no driver task to spawn and abort, and a request and its answer never pass
    /// between tasks. (Measured under TCG, this was no faster than a spawned driver; it
    /// is simpler, and the socket is only ever polled while a request uses it.) An
    /// operation still running after `limit` is dropped and [`NetnsError::TimedOut`]
    /// returned; what it changed before stays changed.
    pub async fn run_within<T>(
        &mut self,
        limit: Duration,
        operation: impl AsyncFnOnce(&Handle) -> T,
    ) -> Result<T, NetnsError> {
        let NetnsHandle {
            handle,
            connection,
            path,
            ..
        } = self;
        let mut work = std::pin::pin!(operation(handle));
        let driven = std::future::poll_fn(move |cx| {
            if let Poll::Ready(output) = work.as_mut().poll(cx) {
                return Poll::Ready(output);
            }
            // After the work, so a request it just queued goes out in this same poll; an
            // answer read here wakes this task for the work to take it.
            if let Some(driver) = connection.as_mut()
                && driver.as_mut().poll(cx).is_ready()
            {
                // Dropping the ended connection fails the requests still waiting,
                // which wakes the work with an error.
                *connection = None;
                return work.as_mut().poll(cx);
            }
            Poll::Pending
        });
        tokio::time::timeout(limit, driven)
            .await
            .map_err(|_| NetnsError::TimedOut {
                path: path.clone(),
                after: limit,
            })
    }
}

impl std::fmt::Debug for NetnsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NetnsHandle")
    }
}

/// Makes a socket of any kind inside `netns`: the socket maker thread enters it through
/// its descriptor, runs `make` there and returns to its own namespace. A socket belongs to
/// the namespace it was made in for its whole life, so the one returned (a UDP socket
/// bound there, a TCP listener, a TCP socket for a later connect, a NETLINK_NETFILTER
/// socket) can then be used from any thread or task. `make` runs on that shared thread:
/// keep it short and non-blocking (create, set options, bind, listen). Fails with
/// [`NetnsError::TimedOut`] after [`NETLINK_TIMEOUT`]; a caller cancelled meanwhile never
/// receives the socket, which is then closed.
pub async fn make_socket_in(
    netns: &OpenNetns,
    make: Box<dyn FnOnce() -> std::io::Result<OwnedFd> + Send>,
) -> Result<OwnedFd, NetnsError> {
    let path = netns.path().to_path_buf();
    made_in(
        netns,
        Box::new(move || make().map_err(|source| NetnsError::MakeSocket { path, source })),
    )
    .await
}

/// Hands `make` to the socket maker and waits (at most [`NETLINK_TIMEOUT`]) for its socket.
async fn made_in(netns: &OpenNetns, make: MakeSocket) -> Result<OwnedFd, NetnsError> {
    let path = netns.path().to_path_buf();
    let (reply, receiver) = tokio::sync::oneshot::channel();
    socket_maker::request(SocketRequest {
        namespace: netns.duplicate()?,
        path: path.clone(),
        make,
        reply,
    })?;
    tokio::time::timeout(NETLINK_TIMEOUT, receiver)
        .await
        .map_err(|_| NetnsError::TimedOut {
            path,
            after: NETLINK_TIMEOUT,
        })?
        .map_err(|_| NetnsError::ThreadPanicked)?
}

/// What the socket maker runs inside the namespace.
type MakeSocket = Box<dyn FnOnce() -> Result<OwnedFd, NetnsError> + Send>;

/// A socket to make in the namespace open as `namespace`.
struct SocketRequest {
    namespace: File,
    path: PathBuf,
    make: MakeSocket,
    /// Dropped by the caller when it was cancelled; the socket is then closed (the
    /// `OwnedFd` in the undelivered message is dropped with it).
    reply: tokio::sync::oneshot::Sender<Result<OwnedFd, NetnsError>>,
}

/// A NETLINK_ROUTE socket, non-blocking, in the current thread's namespace.
fn route_socket() -> Result<OwnedFd, NetnsError> {
    let socket = netlink_sys::Socket::new(NETLINK_ROUTE).map_err(NetnsError::Socket)?;
    socket.set_non_blocking(true).map_err(NetnsError::Socket)?;
    // SAFETY: the descriptor was just taken out of the socket, so nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(socket.into_raw_fd()) })
}

mod socket_maker {
    //! The one thread that enters other namespaces to make sockets. It returns to its
    //! home namespace (the process's) after each socket; if that ever fails it ends, so it
    //! never makes a socket in the wrong namespace, and the next request starts a new one.

    use std::fs::File;
    use std::sync::mpsc::{self, SendError, Sender};
    use std::sync::{Mutex, PoisonError};

    use nix::sched::{CloneFlags, setns};

    use super::{NetnsError, SocketRequest};

    static MAKER: Mutex<Option<Sender<SocketRequest>>> = Mutex::new(None);

    /// Hands `request` to the maker, starting one if there is none (or it ended).
    pub(super) fn request(request: SocketRequest) -> Result<(), NetnsError> {
        let mut maker = MAKER.lock().unwrap_or_else(PoisonError::into_inner);
        let request = match maker.as_ref() {
            Some(sender) => match sender.send(request) {
                Ok(()) => return Ok(()),
                Err(SendError(request)) => request,
            },
            None => request,
        };
        let sender = start()?;
        sender
            .send(request)
            .map_err(|_| NetnsError::ThreadPanicked)?;
        *maker = Some(sender);
        Ok(())
    }

    fn start() -> Result<Sender<SocketRequest>, NetnsError> {
        // The process's namespace (the main thread's; no thread but the makers moves).
        let home = File::open("/proc/self/ns/net").map_err(|source| NetnsError::Open {
            path: "/proc/self/ns/net".into(),
            source,
        })?;
        let (sender, requests) = mpsc::channel::<SocketRequest>();
        std::thread::Builder::new()
            .name("chaos-netns".into())
            .spawn(move || {
                for request in requests {
                    let socket = setns(&request.namespace, CloneFlags::CLONE_NEWNET)
                        .map_err(|source| NetnsError::Enter {
                            path: request.path.clone(),
                            source,
                        })
                        .and_then(|()| (request.make)());
                    let returned = setns(&home, CloneFlags::CLONE_NEWNET);
                    // The socket was made where asked, whether or not the way back works.
                    let _ = request.reply.send(socket);
                    if returned.is_err() {
                        return;
                    }
                }
            })
            .map_err(NetnsError::Thread)?;
        Ok(sender)
    }
}

/// Runs `operation` with an rtnetlink handle opened inside the network namespace at
/// `netns_path` (e.g. `/proc/PID/ns/net`), on a dedicated thread, and returns its output;
/// [`NetnsError::TimedOut`] after [`NETLINK_TIMEOUT`].
pub fn in_netns<T, F, Fut>(netns_path: &Path, operation: F) -> Result<T, NetnsError>
where
    T: Send,
    F: FnOnce(Handle) -> Fut + Send,
    Fut: Future<Output = T>,
{
    // Open the namespace file on the caller's thread so a bad path fails early and clearly.
    let namespace = OpenNetns::open(netns_path)?.file;
    std::thread::scope(|scope| {
        let worker = scope.spawn(move || {
            setns(&namespace, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
                path: netns_path.to_path_buf(),
                source,
            })?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
                .map_err(NetnsError::Runtime)?;
            runtime.block_on(async move {
                // Opened after setns: the socket lives in the target namespace.
                let (connection, handle, _) =
                    rtnetlink::new_connection().map_err(NetnsError::Socket)?;
                let driver = tokio::spawn(connection);
                let output = tokio::time::timeout(NETLINK_TIMEOUT, operation(handle)).await;
                driver.abort();
                output.map_err(|_| NetnsError::TimedOut {
                    path: netns_path.to_path_buf(),
                    after: NETLINK_TIMEOUT,
                })
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
        assert_eq!(found.id(), own);
        assert_eq!(netns_id(found.path()).unwrap(), own);
        let gone = NetnsId {
            dev: own.dev,
            ino: 1,
        };
        assert!(find_netns(gone, Path::new("/proc")).is_none());
    }

    #[test]
    fn a_socket_tells_the_cookie_of_its_namespace() {
        let first = route_socket().unwrap();
        let second = route_socket().unwrap();
        let cookie = socket_netns_cookie(&first).unwrap();
        // Both kernels this project runs on have SO_NETNS_COOKIE (5.14 and later).
        assert!(cookie.is_some());
        assert_eq!(cookie, socket_netns_cookie(&second).unwrap());
    }

    #[test]
    fn paths() {
        assert_eq!(netns_of_pid(42), PathBuf::from("/proc/42/ns/net"));
        assert_eq!(named_netns("x"), PathBuf::from("/var/run/netns/x"));
    }
}
