//! Target churn for integration tests: what happens to a container while a fault holds it
//! (its task killed, restarted in the same container, or the container removed), and
//! witnesses read from /proc for what a stressing fault leaves behind.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::containerd::{TestContainer, ctr};

const CHURN_TIMEOUT: Duration = Duration::from_secs(20);

/// One way a target container changes under a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Churn {
    /// SIGKILL to the task: its processes die, the container (and its cgroup) stays.
    Kill,
    /// The task killed and removed, then a new task started in the same container: new
    /// pids, the same cgroup path (and the same network namespace when one was joined).
    Restart,
    /// The task killed and removed, then the container deleted: its cgroup is gone.
    Remove,
}

pub const ALL: [Churn; 3] = [Churn::Kill, Churn::Restart, Churn::Remove];

impl Churn {
    /// Does this to `container` and waits until it is done.
    pub fn apply(self, container: &TestContainer) -> Result<()> {
        let (namespace, id) = (container.runtime_namespace.as_str(), container.id.as_str());
        ctr(namespace, &["task", "kill", "-s", "KILL", id])?.check()?;
        container.wait_status("STOPPED", CHURN_TIMEOUT)?;
        match self {
            Churn::Kill => Ok(()),
            Churn::Restart => {
                ctr(namespace, &["task", "rm", id])?.check()?;
                ctr(namespace, &["task", "start", "-d", id])?.check()?;
                container.wait_status("RUNNING", CHURN_TIMEOUT)
            }
            Churn::Remove => {
                ctr(namespace, &["task", "rm", id])?.check()?;
                ctr(namespace, &["container", "rm", id])?.check()?;
                Ok(())
            }
        }
    }
}

/// Waits until the task's init is the container's command, no longer `runc init` (which
/// the agent protects): the task is reported RUNNING a moment before the exec.
pub fn wait_exec(container: &TestContainer) -> Result<()> {
    let started = std::time::Instant::now();
    loop {
        let exec_d = container.pid().is_ok_and(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| !comm.starts_with("runc"))
        });
        if exec_d {
            return Ok(());
        }
        if started.elapsed() > CHURN_TIMEOUT {
            anyhow::bail!("task {} never exec'd its command", container.id);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The command line of `pid`, its arguments split; None once it is gone.
pub fn cmdline(pid: u32) -> Option<Vec<String>> {
    let bytes = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        bytes
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// Whether `pid` is a chaos-agent stressor (`chaos-agent ... stress cpu|memory ...`).
pub fn is_stressor(pid: u32) -> bool {
    cmdline(pid).is_some_and(|args| args.iter().any(|a| a == "stress"))
}

/// The parent pid of `pid` from /proc/PID/stat; None once it is gone.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields follow the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// Every stressor the agent `agent_pid` has running, found by scanning /proc.
pub fn stressors_of(agent_pid: u32) -> Result<Vec<u32>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let Some(pid) = entry?
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if parent_of(pid) == Some(agent_pid) && is_stressor(pid) {
            found.push(pid);
        }
    }
    Ok(found)
}
