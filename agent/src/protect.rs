//! Which targets the agent refuses to touch. Pure decisions, unit-tested; the caller
//! supplies what it read from /proc, the cgroup tree and the runtime (see `resolve`).
//!
//! One policy for every target form: `pod:`, `container:`, `pid:` and `cgroup:` all
//! resolve to an [`Owner`] first, so naming a kube-system container by its pid or its
//! cgroup is refused exactly like naming its pod.

use chaos_cgroup::ProcessCgroup;

use crate::error::AgentError;
use crate::procfs::ProcessInfo;
use crate::resolve::{Owner, Resolved};

/// Node processes whose loss takes the node (or its pods' networking) down with them.
/// Matched against the start of the kernel's process name, which is cut at 15 bytes
/// (`containerd-shim-runc-v2` shows as `containerd-shim`), and of the executable's name.
pub const DEFAULT_PROTECTED_PROCESSES: &[&str] = &[
    // the node's own
    "systemd",
    "kthreadd",
    "sshd",
    "amazon-ssm-agent",
    // the container runtime
    "kubelet",
    "containerd",
    "dockerd",
    "runc",
    "crio",
    "conmon",
    // the control plane (self-managed clusters run it on nodes)
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    // node agents of Kubernetes networking: EKS's VPC CNI, kube-proxy, Cilium, Calico
    "kube-proxy",
    "aws-node",
    "aws-k8s-agent",
    "cilium-agent",
    "calico-node",
    // ourselves
    "chaos-agent",
];

/// Namespaces whose pods are protected whatever the flags.
pub const ALWAYS_PROTECTED_NAMESPACES: &[&str] = &["chaos-control"];

/// The kernel's limit on a process name (TASK_COMM_LEN without the NUL).
const COMM_LEN: usize = 15;

/// What the agent was started with.
#[derive(Debug, Clone, Default)]
pub struct PolicyOptions {
    pub agent_pid: u32,
    /// The agent's own cgroup: never a target (a stressor there would count against
    /// the agent, and a kill would hit it).
    pub agent_cgroup: Option<ProcessCgroup>,
    pub allow_kube_system: bool,
    /// Permit targets that belong to no container (processes of the node itself).
    pub allow_host_processes: bool,
    /// Names added by the operator (`--protect-process`).
    pub extra_processes: Vec<String>,
    /// Namespaces added by the operator (`--protect-namespace`).
    pub extra_namespaces: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ProtectionPolicy {
    pub allow_kube_system: bool,
    pub allow_host_processes: bool,
    pub protected_namespaces: Vec<String>,
    pub protected_processes: Vec<String>,
    /// The agent's own pid: it and its descendants are never targets.
    pub agent_pid: u32,
    pub agent_cgroup: Option<ProcessCgroup>,
}

impl ProtectionPolicy {
    pub fn new(options: PolicyOptions) -> Self {
        let mut protected_namespaces: Vec<String> = ALWAYS_PROTECTED_NAMESPACES
            .iter()
            .map(|s| s.to_string())
            .collect();
        if !options.allow_kube_system {
            protected_namespaces.push("kube-system".to_string());
        }
        for ns in options.extra_namespaces {
            if !protected_namespaces.contains(&ns) {
                protected_namespaces.push(ns);
            }
        }
        let mut protected_processes: Vec<String> = DEFAULT_PROTECTED_PROCESSES
            .iter()
            .map(|s| s.to_string())
            .collect();
        for name in options.extra_processes {
            if !protected_processes.contains(&name) {
                protected_processes.push(name);
            }
        }
        ProtectionPolicy {
            allow_kube_system: options.allow_kube_system,
            allow_host_processes: options.allow_host_processes,
            protected_namespaces,
            protected_processes,
            agent_pid: options.agent_pid,
            agent_cgroup: options.agent_cgroup,
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

    /// Whose the target is decides first: a protected pod, a pod's sandbox, the node's
    /// own processes and an owner the agent cannot tell are refused.
    pub fn check_owner(&self, target: &Resolved) -> Result<(), AgentError> {
        let what = target.canonical();
        match &target.owner {
            Owner::Container(c) => self
                .check_pod_namespace(&c.pod_namespace)
                .map_err(|e| AgentError::PermissionDenied(format!("{}: {e}", target.describe()))),
            Owner::Sandbox(c) => Err(AgentError::PermissionDenied(format!(
                "{what} is the sandbox (pause container) of pod {}/{}, which holds the pod's namespaces; target the pod's own containers",
                c.pod_namespace, c.pod_name
            ))),
            Owner::Node if self.allow_host_processes => Ok(()),
            Owner::Node => Err(AgentError::PermissionDenied(format!(
                "{what} belongs to no container: it is the node's own (a host daemon or a login shell); start the agent with --allow-host-processes to permit targets outside containers"
            ))),
            Owner::Unknown(reason) => Err(AgentError::FailedPrecondition(format!(
                "cannot tell which container {what} belongs to ({reason}); refused, since it may be protected"
            ))),
        }
    }

    /// The agent's own cgroup is never a target, however it is named. Compared by the
    /// path users see (a `cgroup:` target names one path for every v1 controller, while
    /// the agent may sit elsewhere in those it did not join); the root cgroup, where an
    /// agent started outside any pod runs, is nobody's own.
    pub fn check_cgroup(&self, target: &Resolved) -> Result<(), AgentError> {
        let Some(own) = &self.agent_cgroup else {
            return Ok(());
        };
        let own = own.display_path();
        if own != "/" && own == target.cgroup.display_path() {
            return Err(AgentError::PermissionDenied(format!(
                "{} is in the agent's own cgroup {own}",
                target.canonical(),
            )));
        }
        Ok(())
    }

    /// A stressor is bounded by the cgroup it joins: in the root cgroup nothing bounds it,
    /// so CPU and memory stress there is a node fault, permitted only with node scope.
    pub fn check_resource_cgroup(
        &self,
        target: &Resolved,
        allow_node_scope: bool,
    ) -> Result<(), AgentError> {
        if target.cgroup.display_path() == "/" && !allow_node_scope {
            return Err(AgentError::PermissionDenied(format!(
                "{} is in the root cgroup, which no limit bounds: a stressor there loads the whole node (start the agent with --allow-node-scope to permit it)",
                target.canonical()
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
        if let Some(name) = self.protected_name(process) {
            return refuse(format!(
                "`{name}` is a protected process: it runs the node (the agent's built-in list, or --protect-process)"
            ));
        }
        Ok(())
    }

    /// The protected name `process` carries, if any.
    fn protected_name(&self, process: &ProcessInfo) -> Option<&str> {
        self.protected_processes
            .iter()
            .find(|name| {
                let comm_form = &name[..floor_char_boundary(name, COMM_LEN)];
                process.comm.starts_with(comm_form) || process.argv0_name.starts_with(name.as_str())
            })
            .map(String::as_str)
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends on a char boundary.
fn floor_char_boundary(text: &str, max: usize) -> usize {
    if text.len() <= max {
        return text.len();
    }
    (0..=max)
        .rev()
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chaos_proto::api;
    use std::collections::BTreeMap;

    use crate::target::TargetSpec;

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

    fn policy(allow_kube_system: bool) -> ProtectionPolicy {
        ProtectionPolicy::new(PolicyOptions {
            agent_pid: 500,
            allow_kube_system,
            ..Default::default()
        })
    }

    fn denied(result: Result<(), AgentError>) -> String {
        match result {
            Err(AgentError::PermissionDenied(msg)) => msg,
            other => panic!("expected PermissionDenied, got {other:?}"),
        }
    }

    fn cgroup(path: &str) -> ProcessCgroup {
        ProcessCgroup {
            unified: Some(path.into()),
            v1: BTreeMap::new(),
        }
    }

    fn target(spec: TargetSpec, owner: Owner, cgroup_path: &str) -> Resolved {
        Resolved {
            spec,
            owner,
            init: process(4242, 4000, "app"),
            processes: vec![process(4242, 4000, "app")],
            cgroup: cgroup(cgroup_path),
        }
    }

    fn container(namespace: &str) -> api::ContainerRef {
        api::ContainerRef {
            id: "c1".into(),
            pod_namespace: namespace.into(),
            pod_name: "p-0".into(),
            ..Default::default()
        }
    }

    #[test]
    fn refuses_pid_1_the_agent_and_its_children() {
        let policy = policy(false);
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
    fn refuses_node_daemons_and_node_agents_by_name() {
        let policy = policy(false);
        for comm in [
            "kubelet",
            "containerd",
            "containerd-shim",
            "runc",
            "dockerd",
            "chaos-agent",
            "etcd",
            "kube-apiserver",
            // kube-controller-manager and kube-scheduler as the kernel cuts them
            "kube-controller",
            "kube-scheduler",
            "kube-proxy",
            "aws-k8s-agent",
            "cilium-agent",
            "calico-node",
            "sshd",
            "systemd-journal",
        ] {
            assert!(
                denied(policy.check_process(&process(1000, 1, comm), &[1]))
                    .contains("is a protected process"),
                "{comm}"
            );
        }
        assert!(
            policy
                .check_process(&process(1000, 999, "postgres"), &[999, 1])
                .is_ok()
        );
        // A name the kernel shows cut short is still found through the executable's name.
        let mut long = process(1000, 999, "amazon-ssm-agen");
        assert!(policy.check_process(&long, &[999, 1]).is_err());
        long.comm = "agent".into();
        long.argv0_name = "amazon-ssm-agent".into();
        assert!(policy.check_process(&long, &[999, 1]).is_err());
    }

    #[test]
    fn an_operator_adds_names_and_namespaces() {
        let policy = ProtectionPolicy::new(PolicyOptions {
            agent_pid: 500,
            extra_processes: vec!["vault".into(), "kubelet".into()],
            extra_namespaces: vec!["payments".into()],
            ..Default::default()
        });
        assert!(
            policy
                .check_process(&process(1000, 1, "vault"), &[1])
                .is_err()
        );
        assert_eq!(
            policy
                .protected_processes
                .iter()
                .filter(|n| *n == "kubelet")
                .count(),
            1
        );
        assert!(policy.check_pod_namespace("payments").is_err());
        assert!(policy.check_pod_namespace("kube-system").is_err());
    }

    #[test]
    fn kube_system_is_protected_unless_allowed() {
        let strict = policy(false);
        assert!(denied(strict.check_pod_namespace("kube-system")).contains("--allow-kube-system"));
        assert!(strict.check_pod_namespace("chaos-control").is_err());
        assert!(strict.check_pod_namespace("dev").is_ok());
        let allowing = policy(true);
        assert!(allowing.check_pod_namespace("kube-system").is_ok());
        assert!(allowing.check_pod_namespace("chaos-control").is_err());
    }

    #[test]
    fn the_owner_decides_for_every_target_form() {
        let strict = policy(false);
        for spec in [
            TargetSpec::Pid(4242),
            TargetSpec::Cgroup("/k8s.io/c1".into()),
            TargetSpec::Container("c1".into()),
        ] {
            let message = denied(strict.check_owner(&target(
                spec.clone(),
                Owner::Container(container("kube-system")),
                "/k8s.io/c1",
            )));
            assert!(
                message.contains("kube-system") && message.contains("pod kube-system/p-0"),
                "{message}"
            );
            assert!(
                strict
                    .check_owner(&target(
                        spec,
                        Owner::Container(container("dev")),
                        "/k8s.io/c1"
                    ))
                    .is_ok()
            );
        }
        let sandbox = target(
            TargetSpec::Pid(4242),
            Owner::Sandbox(container("dev")),
            "/k8s.io/s",
        );
        assert!(denied(strict.check_owner(&sandbox)).contains("sandbox"));
        let host = target(
            TargetSpec::Pid(4242),
            Owner::Node,
            "/system.slice/cron.service",
        );
        assert!(denied(strict.check_owner(&host)).contains("--allow-host-processes"));
        let allowing = ProtectionPolicy::new(PolicyOptions {
            allow_host_processes: true,
            ..Default::default()
        });
        assert!(allowing.check_owner(&host).is_ok());
        let unknown = target(
            TargetSpec::Pid(4242),
            Owner::Unknown("containerd at /run/x is unreachable".into()),
            "/k8s.io/c1",
        );
        for p in [&strict, &allowing] {
            match p.check_owner(&unknown) {
                Err(AgentError::FailedPrecondition(m)) => assert!(m.contains("unreachable"), "{m}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn stress_in_the_root_cgroup_is_node_scope() {
        let policy = policy(false);
        let root = target(TargetSpec::Pid(4242), Owner::Node, "/");
        assert!(denied(policy.check_resource_cgroup(&root, false)).contains("--allow-node-scope"));
        assert!(policy.check_resource_cgroup(&root, true).is_ok());
        let leaf = target(
            TargetSpec::Pid(4242),
            Owner::Node,
            "/system.slice/x.service",
        );
        assert!(policy.check_resource_cgroup(&leaf, false).is_ok());
    }

    #[test]
    fn the_agents_own_cgroup_is_refused() {
        let policy = ProtectionPolicy::new(PolicyOptions {
            agent_cgroup: Some(cgroup("/k8s.io/agent")),
            ..Default::default()
        });
        let own = target(
            TargetSpec::Cgroup("/k8s.io/agent".into()),
            Owner::Node,
            "/k8s.io/agent",
        );
        assert!(denied(policy.check_cgroup(&own)).contains("agent's own cgroup"));
        let other = target(TargetSpec::Pid(1), Owner::Node, "/k8s.io/other");
        assert!(policy.check_cgroup(&other).is_ok());
        let in_root = ProtectionPolicy::new(PolicyOptions {
            agent_cgroup: Some(cgroup("/")),
            ..Default::default()
        });
        assert!(
            in_root
                .check_cgroup(&target(TargetSpec::Pid(1), Owner::Node, "/"))
                .is_ok()
        );
    }
}
