//! File descriptors: the agent's soft limit is raised to the hard one at start, and the
//! caps on its listeners' connections must leave the faults a reserve.
//!
//! A revert opens descriptors: the target's network namespace and a netlink socket in
//! it, a pidfd and a /proc file, a cgroup file, a journal file. If connections could take
//! every descriptor, a revert would fail with EMFILE and the fault would stay on the
//! node. So the descriptors the connections can hold at most are counted at start, and
//! the agent does not start unless
//!
//! ```text
//! RLIMIT_NOFILE >= open at start + max connections + max metrics connections + 2 + reserve
//! ```
//!
//! (the 2: at its cap each listener still accepts one connection to close it). The
//! default reserve, [`DEFAULT_RESERVE`], is [`DESCRIPTORS_PER_FAULT`] for each of the
//! faults the agent holds at most, all reverted at once (SIGTERM reverts them
//! concurrently), and [`OWN_DESCRIPTORS`] for the agent's own later ones.

use std::path::Path;

use crate::registry::MAX_ACTIVE;

/// The most a fault's revert (or injection) holds open at once, with one to spare.
/// Traced with strace on a rate limit (tbf) on a container's `lo`: the revert holds 2
/// (the namespace file while the netlink socket is made in it, then the socket alone),
/// the injection 2 (then the journal's temporary file, once the namespace file is
/// closed). A process fault holds a pidfd and a /proc file; a resource fault a cgroup
/// file at a time.
pub const DESCRIPTORS_PER_FAULT: u64 = 3;
/// Descriptors the agent opens after start besides faults' and connections': the
/// containerd connection, the signal handlers' pipe, a stressor's pipes while it starts.
pub const OWN_DESCRIPTORS: u64 = 64;
/// Kept free for the faults: every fault the agent may hold, reverted at once.
pub const DEFAULT_RESERVE: u64 = DESCRIPTORS_PER_FAULT * MAX_ACTIVE as u64 + OWN_DESCRIPTORS;
/// At its cap each listener accepts one more connection for an instant, to close it.
const CLOSED_AT_THE_CAP: u64 = 2;

#[derive(Debug, thiserror::Error)]
pub enum DescriptorError {
    #[error("cannot read or raise RLIMIT_NOFILE: {0}")]
    Limit(nix::Error),
    #[error("cannot count the open descriptors in {path}: {source}")]
    Count {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "RLIMIT_NOFILE is {limit}, too low: {in_use} descriptors are open at start, the \
         connections can take {connections} (--max-connections {grpc} + \
         --max-metrics-connections {metrics} + {CLOSED_AT_THE_CAP} closed at the cap) and \
         {reserve} are kept for reverting faults (--fd-reserve); raise the hard limit to at \
         least {needed} (LimitNOFILE, the container runtime's rlimits, prlimit) or lower the caps"
    )]
    TooLow {
        limit: u64,
        in_use: u64,
        connections: u64,
        grpc: u64,
        metrics: u64,
        reserve: u64,
        needed: u64,
    },
}

/// What the descriptor limit has to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorBudget {
    /// The soft RLIMIT_NOFILE.
    pub limit: u64,
    /// Open when the listeners are bound, before any connection.
    pub in_use: u64,
    /// `--max-connections`: the gRPC listener's cap.
    pub grpc_connections: u64,
    /// `--max-metrics-connections`: the metrics listener's cap.
    pub metrics_connections: u64,
    /// `--fd-reserve`: kept for the faults.
    pub reserve: u64,
}

impl DescriptorBudget {
    /// The most the connections can hold at once.
    pub fn connections(&self) -> u64 {
        self.grpc_connections + self.metrics_connections + CLOSED_AT_THE_CAP
    }

    /// The limit this budget needs.
    pub fn needed(&self) -> u64 {
        self.in_use + self.connections() + self.reserve
    }

    /// Ok if the connections at their caps still leave the reserve free.
    pub fn check(&self) -> Result<(), DescriptorError> {
        if self.needed() <= self.limit {
            return Ok(());
        }
        Err(DescriptorError::TooLow {
            limit: self.limit,
            in_use: self.in_use,
            connections: self.connections(),
            grpc: self.grpc_connections,
            metrics: self.metrics_connections,
            reserve: self.reserve,
            needed: self.needed(),
        })
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (an unprivileged raise) and returns
/// it. The default soft limit (often 1024) is a guard for programs that use select(2);
/// the agent does not, and its connections and reverts share the limit.
pub fn raise_soft_limit_to_hard() -> Result<u64, DescriptorError> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(DescriptorError::Limit)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(DescriptorError::Limit)?;
    }
    Ok(hard.max(soft))
}

/// How many descriptors the process has open (the entries of `fd_dir`, less the one
/// this count opens to read it).
pub fn open_descriptors(fd_dir: &Path) -> Result<u64, DescriptorError> {
    let count = |source| DescriptorError::Count {
        path: fd_dir.display().to_string(),
        source,
    };
    let entries = std::fs::read_dir(fd_dir).map_err(count)?;
    let mut open = 0u64;
    for entry in entries {
        entry.map_err(count)?;
        open += 1;
    }
    Ok(open.saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(limit: u64) -> DescriptorBudget {
        DescriptorBudget {
            limit,
            in_use: 40,
            grpc_connections: 256,
            metrics_connections: 16,
            reserve: 1000,
        }
    }

    #[test]
    fn the_limit_must_hold_what_is_open_the_caps_and_the_reserve() {
        // 40 open + 256 + 16 + 2 closed at the caps + 1000 kept.
        assert_eq!(budget(0).needed(), 1314);
        assert!(budget(1314).check().is_ok());
        let error = budget(1313).check().expect_err("one short").to_string();
        for part in [
            "RLIMIT_NOFILE is 1313",
            "--max-connections 256",
            "--max-metrics-connections 16",
            "1000 are kept",
            "--fd-reserve",
            "at least 1314",
        ] {
            assert!(error.contains(part), "`{part}` missing in: {error}");
        }
    }

    #[test]
    fn the_default_reserve_reverts_every_fault_at_once_within_a_common_hard_limit() {
        assert_eq!(DEFAULT_RESERVE, 3 * 1024 + 64);
        // The VM's hard limit is 4096 (`ulimit -Hn` under tests/vm/run). The agent has 17
        // open at start on the host (its `file descriptors` log line); the default caps
        // fit in 4096 even with 600.
        let defaults = DescriptorBudget {
            limit: 4096,
            in_use: 600,
            grpc_connections: 256,
            metrics_connections: 16,
            reserve: DEFAULT_RESERVE,
        };
        assert!(defaults.check().is_ok(), "{:?}", defaults.check());
    }

    /// /proc/self/fd lists the descriptor its reader opened; a fake directory stands in
    /// for it here, so the count is one less than its entries.
    #[test]
    fn counts_the_entries_less_the_one_the_count_itself_opens() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["0", "1", "2", "7"] {
            std::fs::write(dir.path().join(name), "").expect("write");
        }
        assert_eq!(open_descriptors(dir.path()).expect("count"), 3);
        let missing = open_descriptors(&dir.path().join("none")).expect_err("missing");
        assert!(missing.to_string().contains("none"), "{missing}");
    }
}
