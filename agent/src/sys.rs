//! The few system calls without a safe wrapper in our dependencies: signalling a
//! process through a pidfd, so a signal never reaches a process that reused the pid.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::sys::signal::Signal;

use crate::procfs::{ProcError, Procfs};

#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    #[error("process {0} has exited")]
    Gone(u32),
    #[error("pid {0} now belongs to another process")]
    Reused(u32),
    #[error("signalling pid {pid}: {source}")]
    Os { pid: u32, source: std::io::Error },
}

fn pidfd_open(pid: u32) -> Result<OwnedFd, std::io::Error> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory
    // is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A process held through a pidfd: the descriptor names that process and no other for as
/// long as it is open, however soon its pid is reused. A start time alone cannot tell two
/// processes apart that started within the same clock tick (10 ms), so a fault that acts
/// on one process more than once keeps one of these.
#[derive(Debug)]
pub struct PinnedProcess {
    pid: u32,
    fd: OwnedFd,
}

impl PinnedProcess {
    /// Opens a pidfd for `pid` and checks, with the process pinned, that it is the one
    /// that started at `start_time`.
    pub fn open(procfs: &Procfs, pid: u32, start_time: u64) -> Result<PinnedProcess, SignalError> {
        let fd = pidfd_open(pid).map_err(|source| match source.raw_os_error() {
            Some(libc::ESRCH) => SignalError::Gone(pid),
            _ => SignalError::Os { pid, source },
        })?;
        match procfs.stat(pid) {
            Ok(stat) if stat.start_time == start_time => Ok(PinnedProcess { pid, fd }),
            Ok(_) => Err(SignalError::Reused(pid)),
            Err(ProcError::Gone(_)) => Err(SignalError::Gone(pid)),
            Err(ProcError::Io { source, .. }) => Err(SignalError::Os { pid, source }),
            Err(ProcError::Parse { reason, .. }) => Err(SignalError::Os {
                pid,
                source: std::io::Error::other(reason),
            }),
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the process has exited: a pidfd becomes readable then, zombie or reaped.
    pub fn has_exited(&self) -> bool {
        let mut poll = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, a count of 1 and no wait.
        let rc = unsafe { libc::poll(&mut poll, 1, 0) };
        rc > 0 && poll.revents & libc::POLLIN != 0
    }

    /// Sends `signal` to this process; `Gone` once it has exited.
    pub fn signal(&self, signal: Signal) -> Result<(), SignalError> {
        if self.has_exited() {
            return Err(SignalError::Gone(self.pid));
        }
        // SAFETY: a valid pidfd, a signal number, no siginfo (NULL) and no flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                signal as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc < 0 {
            let source = std::io::Error::last_os_error();
            return Err(match source.raw_os_error() {
                Some(libc::ESRCH) => SignalError::Gone(self.pid),
                _ => SignalError::Os {
                    pid: self.pid,
                    source,
                },
            });
        }
        Ok(())
    }
}

/// Sends `signal` to `pid` only if it is still the process that started at
/// `start_time`. The pidfd pins the process while we check its identity.
pub fn signal_process(
    procfs: &Procfs,
    pid: u32,
    start_time: u64,
    signal: Signal,
) -> Result<(), SignalError> {
    PinnedProcess::open(procfs, pid, start_time)?.signal(signal)
}

/// Sends `signal` to each identified process that is still the one identified; one that
/// exited, or whose pid now belongs to another process, is done (there is nothing of it
/// left to signal). The errors of the others, joined.
pub fn signal_each(
    procfs: &Procfs,
    processes: &[crate::procfs::ProcessIdentity],
    signal: nix::sys::signal::Signal,
) -> Result<(), String> {
    let errors: Vec<String> = processes
        .iter()
        .filter_map(
            |p| match signal_process(procfs, p.pid, p.start_time, signal) {
                Ok(()) | Err(SignalError::Gone(_)) | Err(SignalError::Reused(_)) => None,
                Err(e) => Some(e.to_string()),
            },
        )
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn a_pinned_process_is_known_gone_once_it_exits_even_as_a_zombie() {
        let procfs = Procfs::default();
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let start = procfs.stat(pid).unwrap().start_time;
        let pinned = PinnedProcess::open(&procfs, pid, start).unwrap();
        assert!(!pinned.has_exited());
        pinned.signal(Signal::SIGKILL).unwrap();
        // Not reaped yet: a zombie, whose pid nobody else can have.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !pinned.has_exited() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(pinned.has_exited());
        assert!(matches!(
            pinned.signal(Signal::SIGTERM),
            Err(SignalError::Gone(_))
        ));
        child.wait().unwrap();
        assert!(matches!(
            pinned.signal(Signal::SIGTERM),
            Err(SignalError::Gone(_))
        ));
    }

    #[test]
    fn kills_a_child_and_refuses_a_stale_identity() {
        let procfs = Procfs::default();
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let start = procfs.stat(pid).unwrap().start_time;
        assert!(matches!(
            signal_process(&procfs, pid, start + 1, Signal::SIGKILL),
            Err(SignalError::Reused(_))
        ));
        signal_process(&procfs, pid, start, Signal::SIGKILL).unwrap();
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(matches!(
            signal_process(&procfs, pid, start, Signal::SIGKILL),
            Err(SignalError::Gone(_))
        ));
    }
}
