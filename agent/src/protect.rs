//! Which targets the agent refuses to touch. Pure decisions, unit-tested; the
//! caller supplies what it read from /proc and the runtime.

use crate::error::AgentError;
use crate::procfs::ProcessInfo;

/// Node processes whose loss takes the node down with them. Matched against the
/// kernel's process name, which is cut at 15 bytes (`containerd-shim-runc-v2` shows
/// as `containerd-shim`), so these are prefixes.
pub const PROTECTED_PROCESS_PREFIXES: &[&str] = &[
    "kubelet",
    "containerd",
    "dockerd",
    "runc",
    "crio",
    "conmon",
    "chaos-agent",
    "systemd",
    "kthreadd",
];

#[derive(Debug, Clone)]
pub struct ProtectionPolicy {
    pub allow_kube_system: bool,
    pub protected_namespaces: Vec<String>,
    /// The agent's own pid: it and its descendants are never targets.
    pub agent_pid: u32,
}

impl ProtectionPolicy {
    pub fn new(agent_pid: u32, allow_kube_system: bool) -> Self {
        let mut protected_namespaces = vec!["chaos-control".to_string()];
        if !allow_kube_system {
            protected_namespaces.push("kube-system".to_string());
        }
        ProtectionPolicy {
            allow_kube_system,
            protected_namespaces,
            agent_pid,
        }
    }

    pub fn check_pod_namespace(&self, namespace: &str) -> Result<(), AgentError> {
        if self.protected_namespaces.iter().any(|ns| ns == namespace) {
            let hint = if namespace == "kube-system" {
                " (start the agent with --allow-kube-system to permit it)"
            } else {
                ""
            };
            return Err(AgentError::PermissionDenied(format!(
                "pods in namespace `{namespace}` are protected{hint}"
            )));
        }
        Ok(())
    }

    /// `ancestors` is the parent chain of `process`, nearest first.
    pub fn check_process(
        &self,
        process: &ProcessInfo,
        ancestors: &[u32],
    ) -> Result<(), AgentError> {
        let pid = process.pid;
        let refuse = |why: String| {
            Err(AgentError::PermissionDenied(format!(
                "pid {pid} ({}) is protected: {why}",
                process.comm
            )))
        };
        if pid == 1 {
            return refuse("it is the host's PID 1".into());
        }
        if pid == self.agent_pid || ancestors.contains(&self.agent_pid) {
            return refuse("it belongs to this agent's own process tree".into());
        }
        // Kernel threads are children of kthreadd (pid 2).
        if pid == 2 || process.ppid == 2 {
            return refuse("it is a kernel thread".into());
        }
        if let Some(prefix) = PROTECTED_PROCESS_PREFIXES
            .iter()
            .find(|prefix| process.comm.starts_with(*prefix))
        {
            return refuse(format!("`{prefix}` runs the node"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(pid: u32, ppid: u32, comm: &str) -> ProcessInfo {
        ProcessInfo {
            pid,
            ppid,
            comm: comm.into(),
            cmdline: comm.into(),
            argv0_name: comm.into(),
            start_time: 1,
        }
    }

    fn denied(result: Result<(), AgentError>) -> String {
        match result {
            Err(AgentError::PermissionDenied(msg)) => msg,
            other => panic!("expected PermissionDenied, got {other:?}"),
        }
    }

    #[test]
    fn refuses_pid_1_the_agent_and_its_children() {
        let policy = ProtectionPolicy::new(500, false);
        assert!(denied(policy.check_process(&process(1, 0, "init"), &[])).contains("PID 1"));
        assert!(
            denied(policy.check_process(&process(500, 1, "x"), &[1])).contains("own process tree")
        );
        assert!(
            denied(policy.check_process(&process(777, 500, "stress"), &[500, 1]))
                .contains("own process tree")
        );
        assert!(
            denied(policy.check_process(&process(900, 2, "kworker/0:1"), &[2]))
                .contains("kernel thread")
        );
    }

    #[test]
    fn refuses_node_daemons_by_name() {
        let policy = ProtectionPolicy::new(500, false);
        for comm in [
            "kubelet",
            "containerd",
            "containerd-shim",
            "runc",
            "dockerd",
            "chaos-agent",
        ] {
            assert!(
                denied(policy.check_process(&process(1000, 1, comm), &[1]))
                    .contains("runs the node"),
                "{comm}"
            );
        }
        assert!(
            policy
                .check_process(&process(1000, 999, "postgres"), &[999, 1])
                .is_ok()
        );
    }

    #[test]
    fn kube_system_is_protected_unless_allowed() {
        let strict = ProtectionPolicy::new(1, false);
        assert!(denied(strict.check_pod_namespace("kube-system")).contains("--allow-kube-system"));
        assert!(strict.check_pod_namespace("chaos-control").is_err());
        assert!(strict.check_pod_namespace("dev").is_ok());
        let allowing = ProtectionPolicy::new(1, true);
        assert!(allowing.check_pod_namespace("kube-system").is_ok());
        assert!(allowing.check_pod_namespace("chaos-control").is_err());
    }
}
