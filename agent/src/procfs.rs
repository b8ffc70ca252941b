//! Reading processes from `/proc`. Thin: the parsing is pure and unit-tested, the
//! reads are plain file reads.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("process {0} does not exist")]
    Gone(u32),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
}

/// A process identified across pid reuse: its pid and its start time (clock ticks since
/// boot), as faults record what they must undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessIdentity {
    pub pid: u32,
    pub start_time: u64,
}

/// What the agent needs to know about a process to select, protect and signal it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub ppid: u32,
    /// The kernel's short name (at most 15 bytes).
    pub comm: String,
    /// Arguments joined by spaces.
    pub cmdline: String,
    /// The file name of the first argument (`/usr/bin/postgres` gives `postgres`).
    pub argv0_name: String,
    /// Start time in clock ticks since boot: with the pid, it identifies a process
    /// across pid reuse.
    pub start_time: u64,
}

/// The fields of `/proc/PID/stat` we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub comm: String,
    pub state: char,
    pub ppid: u32,
    pub start_time: u64,
}

/// Parses `/proc/PID/stat`. The name sits between the first `(` and the LAST `)`,
/// because a process may put `)` and spaces in its own name.
pub fn parse_stat(text: &str) -> Result<Stat, String> {
    let open = text.find('(').ok_or("no `(`")?;
    let close = text.rfind(')').ok_or("no `)`")?;
    if close < open {
        return Err("`)` before `(`".into());
    }
    let comm = text[open + 1..close].to_string();
    let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // fields[0] is field 3 of proc(5) (state); starttime is field 22.
    let state = fields
        .first()
        .and_then(|s| s.chars().next())
        .ok_or("no state field")?;
    let ppid = fields
        .get(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no ppid field")?;
    let start_time = fields
        .get(19)
        .and_then(|s| s.parse().ok())
        .ok_or("no starttime field")?;
    Ok(Stat {
        comm,
        state,
        ppid,
        start_time,
    })
}

#[derive(Debug, Clone)]
pub struct Procfs {
    root: PathBuf,
}

/// `Tgid` of a `/proc/PID/status` text.
pub fn parse_status_tgid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Tgid:"))
        .and_then(|value| value.trim().parse().ok())
}

/// `btime` of `/proc/stat`: when this boot began, in seconds since the Unix epoch.
pub fn parse_boot_time(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

/// Reads a whole `/proc` file. They report size 0, so `fs::read` starts with a 32-byte
/// probe and doubles from there: six `read`s and an `fstat` for one `stat` line, and the
/// protection check reads one per ancestor of every target. A page-sized buffer takes
/// the file in one `read` and sees the end with a second. Opened with `open(2)` itself
/// and read with plain `read`s: `File::open` adds an `fcntl` on this target and
/// `read_to_end` an `fstat` and an `lseek` for its size hint, which a `/proc` file
/// answers with 0: three syscalls of seven, for each of the dozen files a request reads.
fn read_proc_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use nix::fcntl::{OFlag, open};
    use nix::sys::stat::Mode;
    let fd = open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())?;
    let mut bytes = vec![0u8; 4096];
    let mut len = 0;
    loop {
        if len == bytes.len() {
            bytes.resize(len * 2, 0);
        }
        match nix::unistd::read(&fd, &mut bytes[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    bytes.truncate(len);
    Ok(bytes)
}

impl Default for Procfs {
    fn default() -> Self {
        Procfs::at("/proc")
    }
}

impl Procfs {
    pub fn at(root: impl Into<PathBuf>) -> Procfs {
        Procfs { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn read(&self, pid: u32, file: &str) -> Result<String, ProcError> {
        let path = self.root.join(pid.to_string()).join(file);
        read_proc_file(&path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::NotFound => ProcError::Gone(pid),
                // A process that exited between two reads answers ESRCH.
                _ if source.raw_os_error() == Some(libc::ESRCH) => ProcError::Gone(pid),
                _ => ProcError::Io { path, source },
            })
    }

    /// When this boot began (`btime` of `/proc/stat`).
    pub fn boot_time(&self) -> Result<std::time::SystemTime, ProcError> {
        let path = self.root.join("stat");
        let text = std::fs::read_to_string(&path).map_err(|source| ProcError::Io {
            path: path.clone(),
            source,
        })?;
        let seconds = parse_boot_time(&text).ok_or_else(|| ProcError::Parse {
            path,
            reason: "no btime line".into(),
        })?;
        Ok(std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds))
    }

    pub fn stat(&self, pid: u32) -> Result<Stat, ProcError> {
        let text = self.read(pid, "stat")?;
        parse_stat(&text).map_err(|reason| ProcError::Parse {
            path: self.root.join(pid.to_string()).join("stat"),
            reason,
        })
    }

    /// The thread group (process) that `pid` belongs to: `pid` itself for a process, its
    /// process's pid for a thread (`/proc/TID` exists for threads too).
    pub fn tgid(&self, pid: u32) -> Result<u32, ProcError> {
        let text = self.read(pid, "status")?;
        parse_status_tgid(&text).ok_or_else(|| ProcError::Parse {
            path: self.root.join(pid.to_string()).join("status"),
            reason: "no Tgid line".into(),
        })
    }

    pub fn process(&self, pid: u32) -> Result<ProcessInfo, ProcError> {
        let stat = self.stat(pid)?;
        // A zombie or kernel thread has an empty cmdline; that is not an error.
        let raw = self.read(pid, "cmdline").unwrap_or_default();
        let argv0_name = raw
            .split('\0')
            .next()
            .and_then(|argv0| argv0.rsplit('/').next())
            .unwrap_or_default()
            .to_string();
        Ok(ProcessInfo {
            pid,
            ppid: stat.ppid,
            comm: stat.comm,
            cmdline: raw.trim_end_matches('\0').replace('\0', " "),
            argv0_name,
            start_time: stat.start_time,
        })
    }

    /// The parent chain of `pid`, nearest first, stopping at pid 1 or after `max` steps.
    pub fn ancestors(&self, pid: u32, max: usize) -> Vec<u32> {
        self.ancestors_born_since(pid, max, 0)
    }

    /// The parent chain of `pid` as far as it can lead to a process started at `since`
    /// (clock ticks since boot) or later: nearest first, stopping at pid 1, after `max`
    /// steps, or after the first ancestor started before `since`. A process's
    /// descendants all start after it (a fork comes after its parent's start, and an
    /// orphan is handed only to an ancestor, a subreaper or init), so above an older
    /// ancestor no process started at `since` or later can be found: the protection
    /// check asks for the agent's own tree with the agent's start time, and stops at a
    /// target's first ancestor older than the agent instead of reading every stat up to
    /// PID 1.
    pub fn ancestors_born_since(&self, pid: u32, max: usize, since: u64) -> Vec<u32> {
        let mut chain = Vec::new();
        let mut current = pid;
        while chain.len() < max {
            match self.stat(current) {
                Ok(stat) if current != pid && stat.start_time < since => break,
                Ok(stat) if stat.ppid != 0 && stat.ppid != current => {
                    chain.push(stat.ppid);
                    if stat.ppid == 1 {
                        break;
                    }
                    current = stat.ppid;
                }
                _ => break,
            }
        }
        chain
    }

    pub fn netns_path(&self, pid: u32) -> PathBuf {
        self.root.join(pid.to_string()).join("ns/net")
    }

    /// Every pid on the node (the directories of /proc that are numbers).
    pub fn pids(&self) -> Result<Vec<u32>, ProcError> {
        let dir = std::fs::read_dir(&self.root).map_err(|source| ProcError::Io {
            path: self.root.clone(),
            source,
        })?;
        let mut pids: Vec<u32> = dir
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        pids.sort_unstable();
        Ok(pids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boot_time_is_btime_of_proc_stat() {
        let stat = "cpu  1 2 3\nintr 5\nctxt 99\nbtime 1763700000\nprocesses 7\n";
        assert_eq!(parse_boot_time(stat), Some(1_763_700_000));
        assert_eq!(parse_boot_time("cpu 1 2 3\n"), None);
    }

    #[test]
    fn the_boot_time_of_this_machine_is_in_the_past() {
        let boot = Procfs::default().boot_time().unwrap();
        assert!(boot < std::time::SystemTime::now());
    }

    const STAT: &str = "4242 (my) proc) S 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 200 18446744073709551615";

    #[test]
    fn parses_stat_with_parentheses_in_the_name() {
        let stat = parse_stat(STAT).unwrap();
        assert_eq!(
            stat,
            Stat {
                comm: "my) proc".into(),
                state: 'S',
                ppid: 17,
                start_time: 987654
            }
        );
    }

    #[test]
    fn rejects_truncated_stat() {
        assert!(parse_stat("1 (init) S 0").is_err());
        assert!(parse_stat("garbage").is_err());
    }

    #[test]
    fn reads_a_fake_proc_tree() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("4242");
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("stat"), STAT).unwrap();
        std::fs::write(p.join("cmdline"), b"/bin/sleep\x00100\x00").unwrap();
        std::fs::create_dir_all(dir.path().join("self")).unwrap();
        let procfs = Procfs::at(dir.path());
        let info = procfs.process(4242).unwrap();
        assert_eq!(info.cmdline, "/bin/sleep 100");
        assert_eq!(info.argv0_name, "sleep");
        assert_eq!(info.ppid, 17);
        assert!(matches!(procfs.process(7), Err(ProcError::Gone(7))));
        assert_eq!(procfs.pids().unwrap(), vec![4242]);
    }

    #[test]
    fn a_thread_names_its_process_as_tgid() {
        assert_eq!(
            parse_status_tgid("Name:\tx\nTgid:\t42\nPid:\t43\n"),
            Some(42)
        );
        assert_eq!(parse_status_tgid("Name:\tx\n"), None);
        let procfs = Procfs::default();
        let me = std::process::id();
        assert_eq!(procfs.tgid(me).unwrap(), me);
        let (tid_sender, tid) = std::sync::mpsc::channel();
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            tid_sender
                .send(nix::unistd::gettid().as_raw() as u32)
                .unwrap();
            // Alive until the test has read /proc/TID.
            let _ = wait.recv();
        });
        let tid = tid.recv().unwrap();
        assert_ne!(tid, me);
        assert_eq!(procfs.tgid(tid).unwrap(), me);
        done.send(()).unwrap();
        thread.join().unwrap();
    }

    #[test]
    fn reads_this_process_for_real() {
        let procfs = Procfs::default();
        let me = procfs.process(std::process::id()).unwrap();
        assert_eq!(me.ppid, nix::unistd::getppid().as_raw() as u32);
        assert!(me.start_time > 0);
        assert!(procfs.ancestors(std::process::id(), 64).contains(&me.ppid));
    }

    #[test]
    fn the_chain_stops_above_the_first_ancestor_older_than_asked() {
        let dir = tempfile::tempdir().unwrap();
        // 40 (started at 500) <- 30 (400) <- 20 (300) <- 10 (200) <- 1
        for (pid, ppid, start) in [(40, 30, 500), (30, 20, 400), (20, 10, 300), (10, 1, 200)] {
            let p = dir.path().join(pid.to_string());
            std::fs::create_dir_all(&p).unwrap();
            let stat = format!(
                "{pid} (p) S {ppid} 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {start} 1000 200 1"
            );
            std::fs::write(p.join("stat"), stat).unwrap();
        }
        let procfs = Procfs::at(dir.path());
        assert_eq!(procfs.ancestors(40, 64), vec![30, 20, 10, 1]);
        // 20 is older than 350: it is named (40's chain reaches it) but not walked past.
        assert_eq!(procfs.ancestors_born_since(40, 64, 350), vec![30, 20]);
        assert_eq!(procfs.ancestors_born_since(40, 64, 300), vec![30, 20, 10]);
        // The process itself is always walked from, however old.
        assert_eq!(procfs.ancestors_born_since(40, 64, 10_000), vec![30]);
    }
}
