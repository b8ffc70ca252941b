//! From a target spec to what is on this node: the container, its processes, its
//! cgroup and its network namespace, as containerd and /proc report them.
//!
//! Every target form ends at the same answer to "whose is it?" ([`Owner`]): a `pod:` or
//! `container:` target names its container, and a `pid:` or `cgroup:` target is traced
//! from its cgroup path to the container the runtime made that cgroup for. So one
//! protection policy applies however the target was named.

use std::collections::{BTreeMap, HashMap, HashSet};

use chaos_cgroup::{CgroupError, CgroupFs, CgroupLayout, ProcessCgroup};
use chaos_netem::OpenNetns;
use chaos_proto::api;

use crate::error::AgentError;
use crate::procfs::{ProcError, ProcessInfo, Procfs};
use crate::runtime::{
    Containerd, LABEL_CONTAINER_NAME, LABEL_POD_NAME, LABEL_POD_NAMESPACE, RuntimeContainer,
    RuntimeError, TaskState,
};
use crate::target::TargetSpec;

/// Whose a target is, found the same way for every target form.
#[derive(Debug, Clone, PartialEq)]
pub enum Owner {
    /// A container the runtime reports, with its pod's labels (empty outside Kubernetes).
    Container(api::ContainerRef),
    /// A pod's sandbox (the pause container): plumbing that holds the pod's namespaces.
    Sandbox(api::ContainerRef),
    /// No container: a process or cgroup of the node itself (a host daemon, a shell).
    Node,
    /// The runtime could not be asked, so whose it is is unknown; the reason says why.
    Unknown(String),
}

impl Owner {
    pub fn container(&self) -> Option<&api::ContainerRef> {
        match self {
            Owner::Container(c) | Owner::Sandbox(c) => Some(c),
            Owner::Node | Owner::Unknown(_) => None,
        }
    }
}

/// One resolved target: a container (or a bare process or cgroup) and its processes.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub spec: TargetSpec,
    pub owner: Owner,
    /// The container's init, the pid itself, or the oldest process of a cgroup.
    pub init: ProcessInfo,
    /// Every process of the target (for a pid target, just that process).
    pub processes: Vec<ProcessInfo>,
    pub cgroup: ProcessCgroup,
}

impl Resolved {
    /// The canonical target string: the container for container and pod targets, the
    /// process or cgroup itself for the others (a pid names one process, even in a
    /// container).
    pub fn canonical(&self) -> String {
        match (&self.spec, self.owner.container()) {
            (TargetSpec::Pid(_), _) => format!("pid:{}", self.init.pid),
            (TargetSpec::Cgroup(path), _) => format!("cgroup:{path}"),
            (_, Some(c)) => format!("container:{}", c.id),
            (_, None) => format!("pid:{}", self.init.pid),
        }
    }

    /// What the target is, for messages: "pid 42 (container abc of pod shop/web-0)".
    pub fn describe(&self) -> String {
        let whose = match &self.owner {
            Owner::Container(c) | Owner::Sandbox(c) if !c.pod_name.is_empty() => {
                format!(
                    "container {} of pod {}/{}",
                    c.id, c.pod_namespace, c.pod_name
                )
            }
            Owner::Container(c) | Owner::Sandbox(c) => format!("container {}", c.id),
            Owner::Node => "no container: the node's own".to_string(),
            Owner::Unknown(_) => "owner unknown".to_string(),
        };
        format!("{} ({whose})", self.canonical())
    }

    pub fn to_api(&self, procfs: &Procfs) -> api::ResolvedTarget {
        api::ResolvedTarget {
            target: self.canonical(),
            container: self.owner.container().cloned(),
            init_pid: self.init.pid,
            pids: self.processes.iter().map(|p| p.pid).collect(),
            cgroup: self.cgroup.display_path(),
            netns: procfs.netns_path(self.init.pid).display().to_string(),
        }
    }
}

pub struct Resolver {
    pub procfs: Procfs,
    /// `--node-pid`: the process whose namespaces are the node's (1 with hostPID).
    pub node_pid: u32,
    pub cgroups: CgroupFs,
    pub layout: CgroupLayout,
    pub runtime: Option<Containerd>,
}

fn cgroup_error(what: &str, err: CgroupError) -> AgentError {
    if err.is_not_found() {
        AgentError::NotFound(format!("{what}: {err}"))
    } else {
        AgentError::Internal(format!("{what}: {err}"))
    }
}

fn proc_error(err: ProcError) -> AgentError {
    match err {
        ProcError::Gone(pid) => {
            AgentError::NotFound(format!("process {pid} does not exist on this node"))
        }
        other => AgentError::Internal(other.to_string()),
    }
}

impl Resolver {
    pub async fn resolve(&self, spec: &TargetSpec) -> Result<Vec<Resolved>, AgentError> {
        match spec {
            TargetSpec::Pid(pid) => self.resolve_pid(spec, *pid).await.map(|r| vec![r]),
            TargetSpec::Cgroup(path) => self.resolve_cgroup(spec, path).await.map(|r| vec![r]),
            TargetSpec::Container(id) => self.resolve_container(spec, id).await.map(|r| vec![r]),
            TargetSpec::Pod {
                namespace,
                name,
                container,
            } => {
                self.resolve_pod(spec, namespace, name, container.as_deref())
                    .await
            }
        }
    }

    async fn resolve_pid(&self, spec: &TargetSpec, pid: u32) -> Result<Resolved, AgentError> {
        // /proc/TID exists for every thread, but a thread is not a process: a signal to a
        // TID reaches its whole process, and a stressor "in its cgroup" would land in the
        // cgroup of whatever process the thread belongs to (the agent's own, for one).
        let tgid = self.procfs.tgid(pid).map_err(proc_error)?;
        if tgid != pid {
            return Err(AgentError::invalid(
                "target",
                format!(
                    "pid {pid} is a thread of process {tgid}, not a process; name the process (pid:{tgid})"
                ),
            ));
        }
        let init = self.procfs.process(pid).map_err(proc_error)?;
        let cgroup = ProcessCgroup::of_pid(self.procfs.root(), pid)
            .map_err(|e| cgroup_error(&format!("cgroup of pid {pid}"), e))?;
        let started = std::time::Instant::now();
        let owner = self.owner_of(&cgroup).await;
        tracing::debug!(
            owner_us = started.elapsed().as_micros() as u64,
            "pid lookup phases"
        );
        Ok(Resolved {
            spec: spec.clone(),
            owner,
            processes: vec![init.clone()],
            init,
            cgroup,
        })
    }

    /// Whose `cgroup` is: the container whose runtime-made cgroup is it or one of its
    /// ancestors (a container may make sub-cgroups of its own), else the node's. Asks the
    /// runtime every time: a cached list would miss a container started a moment ago.
    /// Except for the root cgroup, which no runtime makes for a container: whatever the
    /// runtime would list, [`owner_from_path`] answers the node for it, so the round trip
    /// (most of a pid target's lookup: 0.7 ms of about 1 ms on the bench machine) is
    /// skipped.
    async fn owner_of(&self, cgroup: &ProcessCgroup) -> Owner {
        let Some(runtime) = &self.runtime else {
            return Owner::Unknown("no container runtime is configured".into());
        };
        let path = cgroup.display_path();
        if !may_name_a_container(&path) {
            return owner_from_path(&path, &[]);
        }
        match runtime.containers().await {
            Ok(containers) => owner_from_path(&path, &containers),
            Err(e) => Owner::Unknown(e.to_string()),
        }
    }

    /// The processes of a cgroup, and its init: the one whose parent is outside the
    /// cgroup (for a container, the process the runtime's shim started).
    fn cgroup_members(
        &self,
        cgroup: &ProcessCgroup,
        what: &str,
    ) -> Result<(ProcessInfo, Vec<ProcessInfo>), AgentError> {
        let pids = self
            .cgroups
            .procs(cgroup)
            .map_err(|e| cgroup_error(what, e))?;
        // A process may exit between the listing and the read; that is not an error.
        let processes: Vec<ProcessInfo> = pids
            .iter()
            .filter_map(|pid| self.procfs.process(*pid).ok())
            .collect();
        let members: HashSet<u32> = processes.iter().map(|p| p.pid).collect();
        let init = processes
            .iter()
            .filter(|p| !members.contains(&p.ppid))
            .min_by_key(|p| (p.start_time, p.pid))
            .cloned()
            .ok_or_else(|| {
                AgentError::FailedPrecondition(format!(
                    "{what} has no running process (is the container crash-looping or stopped?)"
                ))
            })?;
        Ok((init, processes))
    }

    async fn resolve_cgroup(&self, spec: &TargetSpec, path: &str) -> Result<Resolved, AgentError> {
        let cgroup = ProcessCgroup::from_path(&self.layout, path)
            .map_err(|e| AgentError::invalid("target", e.to_string()))?;
        if !self.cgroups.exists(&cgroup) {
            return Err(AgentError::NotFound(format!(
                "cgroup {path} does not exist on this node"
            )));
        }
        let (init, processes) = self.cgroup_members(&cgroup, &format!("cgroup {path}"))?;
        Ok(Resolved {
            spec: spec.clone(),
            owner: self.owner_of(&cgroup).await,
            init,
            processes,
            cgroup,
        })
    }

    /// A running container: its task's pid, then its cgroup and every process in it.
    fn running_container(
        &self,
        spec: &TargetSpec,
        container: &RuntimeContainer,
        pid: u32,
    ) -> Result<Resolved, AgentError> {
        let what = format!("container {}", container.id);
        let cgroup =
            ProcessCgroup::of_pid(self.procfs.root(), pid).map_err(|e| match e.is_not_found() {
                true => {
                    AgentError::FailedPrecondition(format!("{what}: its process {pid} just exited"))
                }
                false => cgroup_error(&what, e),
            })?;
        let (_, processes) = self.cgroup_members(&cgroup, &what)?;
        let init = self.procfs.process(pid).map_err(|_| {
            AgentError::FailedPrecondition(format!("{what}: its process {pid} just exited"))
        })?;
        let reference = container_ref(container);
        Ok(Resolved {
            spec: spec.clone(),
            owner: if container.is_sandbox() {
                Owner::Sandbox(reference)
            } else {
                Owner::Container(reference)
            },
            init,
            processes,
            cgroup,
        })
    }

    async fn resolve_container(&self, spec: &TargetSpec, id: &str) -> Result<Resolved, AgentError> {
        // Without the runtime a container could still be found by its cgroup's name, but
        // not its pod, and so not whether it is protected: such targets are refused.
        let runtime = self.runtime.as_ref().ok_or_else(|| {
            AgentError::FailedPrecondition(format!(
                "container {id}: no container runtime is configured, so its pod (and whether it is protected) cannot be read"
            ))
        })?;
        let containers = runtime.containers().await.map_err(|e| match e {
            RuntimeError::Unreachable { .. } => AgentError::FailedPrecondition(format!(
                "container {id}: {e}; without the runtime the agent cannot tell the container's pod, nor whether it is protected"
            )),
            other => AgentError::Internal(other.to_string()),
        })?;
        let Some(container) = containers.into_iter().find(|c| c.id == id) else {
            return Err(AgentError::NotFound(format!(
                "container {id} is not on this node (containerd namespaces searched: {})",
                runtime.namespaces().join(", ")
            )));
        };
        let task = runtime
            .task(&container.runtime_namespace, id)
            .await
            .map_err(|e| AgentError::Internal(e.to_string()))?;
        match task {
            Some(task) if task.state == TaskState::Running && task.pid > 0 => {
                self.running_container(spec, &container, task.pid)
            }
            Some(task) => Err(AgentError::FailedPrecondition(format!(
                "container {id} has no running process (its task is {}; is it crash-looping?)",
                task.state.as_str()
            ))),
            None => Err(AgentError::FailedPrecondition(format!(
                "container {id} has no running process (no task; is it crash-looping?)"
            ))),
        }
    }

    async fn resolve_pod(
        &self,
        spec: &TargetSpec,
        namespace: &str,
        name: &str,
        container_name: Option<&str>,
    ) -> Result<Vec<Resolved>, AgentError> {
        let runtime = self.runtime.as_ref().ok_or_else(|| {
            AgentError::FailedPrecondition("pod targets need the container runtime, and none is configured; use container: or pid:".into())
        })?;
        let containers = runtime.containers().await.map_err(|e| match e {
            RuntimeError::Unreachable { .. } => AgentError::FailedPrecondition(format!(
                "pod targets need the container runtime: {e}; use container: or pid: targets meanwhile"
            )),
            other => AgentError::Internal(other.to_string()),
        })?;
        // Kubernetes keeps exited containers of earlier restarts with the same labels,
        // so group by container name and take the running one of each.
        let mut by_name: BTreeMap<String, Vec<RuntimeContainer>> = BTreeMap::new();
        for c in containers {
            let matches = !c.is_sandbox()
                && c.label(LABEL_POD_NAMESPACE) == namespace
                && c.label(LABEL_POD_NAME) == name
                && container_name.is_none_or(|want| c.label(LABEL_CONTAINER_NAME) == want);
            if matches {
                by_name
                    .entry(c.label(LABEL_CONTAINER_NAME).to_string())
                    .or_default()
                    .push(c);
            }
        }
        if by_name.is_empty() {
            let which = container_name
                .map(|c| format!(" with a container `{c}`"))
                .unwrap_or_default();
            return Err(AgentError::NotFound(format!(
                "no pod {namespace}/{name}{which} runs on this node"
            )));
        }
        let mut resolved = Vec::new();
        for (cname, candidates) in by_name {
            let mut running = None;
            for c in &candidates {
                if let Some(task) = runtime
                    .task(&c.runtime_namespace, &c.id)
                    .await
                    .map_err(|e| AgentError::Internal(e.to_string()))?
                    && task.state == TaskState::Running
                    && task.pid > 0
                {
                    running = Some((c, task.pid));
                    break;
                }
            }
            let Some((container, pid)) = running else {
                return Err(AgentError::FailedPrecondition(format!(
                    "container `{cname}` of pod {namespace}/{name} has no running process (is it crash-looping?)"
                )));
            };
            resolved.push(self.running_container(spec, container, pid)?);
        }
        Ok(resolved)
    }

    /// The node's network namespace (PID 1's, or kthreadd's where PID 1's cannot be
    /// opened), if it can be found: with hostPID it always can.
    pub fn node_netns(&self) -> Option<chaos_netem::NetnsId> {
        open_node_netns_only(&self.procfs, self.node_pid)
            .ok()
            .map(|netns| netns.id())
    }

    /// Whether `pid` is in the node's network namespace `node`: a hostNetwork pod's
    /// container, or a process of the node itself.
    pub fn in_netns(&self, pid: u32, node: Option<chaos_netem::NetnsId>) -> bool {
        let own = chaos_netem::netns_id(&self.procfs.netns_path(pid));
        matches!((node, own), (Some(node), Ok(own)) if node == own)
    }

    /// The global addresses of the network namespace of `pid` (one RTM_GETADDR dump
    /// inside it), each namespace read once per listing through `seen`. A namespace that
    /// cannot be read (the process just exited) has none: listing goes on, and a
    /// partition refuses a side without addresses.
    async fn netns_addresses(
        &self,
        pid: u32,
        seen: &mut HashMap<chaos_netem::NetnsId, Vec<String>>,
    ) -> Vec<String> {
        let read = async {
            let netns = OpenNetns::open(&self.procfs.netns_path(pid)).map_err(|e| e.to_string())?;
            if let Some(known) = seen.get(&netns.id()) {
                return Ok(known.clone());
            }
            let mut netlink = chaos_netem::NetnsHandle::open_in(&netns)
                .await
                .map_err(|e| e.to_string())?;
            let found = netlink
                .run(async |handle| chaos_netem::global_addresses(handle).await)
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            let found: Vec<String> = found.iter().map(ToString::to_string).collect();
            seen.insert(netns.id(), found.clone());
            Ok::<_, String>(found)
        };
        read.await.unwrap_or_else(|e| {
            tracing::debug!(pid, error = %e, "cannot read the addresses of a target's network namespace");
            Vec::new()
        })
    }

    /// The containers on this node, for controllers to select from.
    pub async fn list_targets(
        &self,
        pod_namespace: &str,
    ) -> Result<Vec<api::TargetInfo>, AgentError> {
        let runtime = self.runtime.as_ref().ok_or_else(|| {
            AgentError::FailedPrecondition("no container runtime configured".into())
        })?;
        let containers = runtime.containers().await.map_err(|e| match e {
            RuntimeError::Unreachable { .. } => AgentError::FailedPrecondition(e.to_string()),
            other => AgentError::Internal(other.to_string()),
        })?;
        let mut tasks = BTreeMap::new();
        for ns in runtime.namespaces() {
            let by_id = runtime
                .tasks(ns)
                .await
                .map_err(|e| AgentError::Internal(e.to_string()))?;
            tasks.insert(ns.clone(), by_id);
        }
        let node_netns = self.node_netns();
        // Containers of one pod share its namespace: read once per namespace.
        let mut addresses_by_netns = HashMap::new();
        let mut targets = Vec::new();
        for c in containers {
            if c.is_sandbox()
                || (!pod_namespace.is_empty() && c.label(LABEL_POD_NAMESPACE) != pod_namespace)
            {
                continue;
            }
            let task = tasks
                .get(&c.runtime_namespace)
                .and_then(|t| t.get(&c.id))
                .copied();
            let (state, init_pid) = match task {
                Some(t) => (t.state.as_str(), t.pid),
                None => ("stopped", 0),
            };
            let (cgroup, pids) = match (state, ProcessCgroup::of_pid(self.procfs.root(), init_pid))
            {
                ("running", Ok(cg)) => {
                    let pids = self.cgroups.procs(&cg).unwrap_or_default();
                    (cg.display_path(), pids)
                }
                _ => (String::new(), Vec::new()),
            };
            let host_network = state == "running" && self.in_netns(init_pid, node_netns);
            // A hostNetwork container's addresses are the node's: none reported, so no
            // partition can take them for a pod's.
            let addresses = if state == "running" && !host_network {
                self.netns_addresses(init_pid, &mut addresses_by_netns)
                    .await
            } else {
                Vec::new()
            };
            targets.push(api::TargetInfo {
                container: Some(container_ref(&c)),
                init_pid,
                pids,
                state: state.to_string(),
                cgroup,
                target: format!("container:{}", c.id),
                host_network,
                addresses,
            });
        }
        targets.sort_by(|a, b| a.target.cmp(&b.target));
        Ok(targets)
    }
}

fn container_ref(c: &RuntimeContainer) -> api::ContainerRef {
    api::ContainerRef {
        id: c.id.clone(),
        runtime_namespace: c.runtime_namespace.clone(),
        pod_namespace: c.label(LABEL_POD_NAMESPACE).to_string(),
        pod_name: c.label(LABEL_POD_NAME).to_string(),
        container_name: c.label(LABEL_CONTAINER_NAME).to_string(),
    }
}

/// Whether a cgroup path is the one a runtime made for container `id`.
pub fn cgroup_names_container(path: &str, id: &str) -> bool {
    let Some(last) = path.rsplit('/').next() else {
        return false;
    };
    last == id
        || last == format!("cri-containerd-{id}.scope")
        || last == format!("docker-{id}.scope")
        || (last.ends_with(".scope") && last.contains(id) && id.len() >= 12)
}

/// Whether some container could own the cgroup at `path` ([`owner_from_path`] with some
/// list of containers): only a path with a component can, since only a path's components
/// name containers. The root cgroup is always the node's.
pub fn may_name_a_container(path: &str) -> bool {
    path.split('/').any(|component| !component.is_empty())
}

/// Whose the cgroup at `path` is among `containers`: the container that names the
/// cgroup or its nearest ancestor that names one, else the node.
pub fn owner_from_path(path: &str, containers: &[RuntimeContainer]) -> Owner {
    let mut prefix = path.trim_end_matches('/');
    while !prefix.is_empty() {
        if let Some(c) = containers
            .iter()
            .find(|c| cgroup_names_container(prefix, &c.id))
        {
            let reference = container_ref(c);
            return if c.is_sandbox() {
                Owner::Sandbox(reference)
            } else {
                Owner::Container(reference)
            };
        }
        prefix = match prefix.rfind('/') {
            Some(at) => &prefix[..at],
            None => "",
        };
    }
    Owner::Node
}

/// The node's network namespace, opened, and the process it was found through: the
/// `--node-pid` process, PID 1 by default (the agent runs with hostPID). Where PID 1 is
/// more privileged than the agent (a sandbox's init holding capabilities the agent
/// lacks, as on the build machine), the kernel refuses to open its namespace; kthreadd
/// (PID 2), a kernel thread and so always in the initial namespace, where a node's init
/// is, stands in then. Another `--node-pid` (a test's stand-in for a node) has no
/// stand-in: failing to open it fails.
pub(crate) fn open_node_netns(
    procfs: &Procfs,
    node_pid: u32,
) -> Result<(OpenNetns, ProcessInfo), AgentError> {
    let through = |pid: u32| -> Result<(OpenNetns, ProcessInfo), String> {
        let process = procfs.process(pid).map_err(|e| e.to_string())?;
        let netns = OpenNetns::open(&procfs.netns_path(pid)).map_err(|e| e.to_string())?;
        Ok((netns, process))
    };
    if node_pid != 1 {
        return through(node_pid).map_err(|e| {
            AgentError::FailedPrecondition(format!(
                "cannot open the node's network namespace through --node-pid {node_pid}: {e}"
            ))
        });
    }
    let init_error = match through(1) {
        Ok(found) => return Ok(found),
        Err(e) => e,
    };
    match through(2) {
        Ok((netns, process)) if process.comm == "kthreadd" && process.ppid == 0 => {
            Ok((netns, process))
        }
        Ok((_, process)) => Err(AgentError::FailedPrecondition(format!(
            "cannot open the node's network namespace through PID 1 ({init_error}), and PID 2 is {}, not kthreadd: the agent needs hostPID",
            process.comm
        ))),
        Err(e) => Err(AgentError::FailedPrecondition(format!(
            "cannot open the node's network namespace through PID 1 ({init_error}) or kthreadd ({e}): the agent needs hostPID"
        ))),
    }
}

/// The node's network namespace, opened, as [`open_node_netns`] finds it, for a caller
/// that needs only the namespace: when it opens through the `--node-pid` process (PID 1
/// by default), that process's `stat` and `cmdline` are not read (two /proc files, on
/// every network inject twice: its scope and its prepare). Only when PID 1 cannot be
/// opened does it take [`open_node_netns`]'s way, which checks its stand-in is kthreadd.
pub(crate) fn open_node_netns_only(
    procfs: &Procfs,
    node_pid: u32,
) -> Result<OpenNetns, AgentError> {
    match OpenNetns::open(&procfs.netns_path(node_pid)) {
        Ok(netns) => Ok(netns),
        Err(_) => open_node_netns(procfs, node_pid).map(|(netns, _)| netns),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime_container(id: &str, pod: Option<(&str, &str)>, sandbox: bool) -> RuntimeContainer {
        let mut labels = std::collections::HashMap::new();
        if let Some((namespace, name)) = pod {
            labels.insert(LABEL_POD_NAMESPACE.to_string(), namespace.to_string());
            labels.insert(LABEL_POD_NAME.to_string(), name.to_string());
        }
        if sandbox {
            labels.insert(crate::runtime::LABEL_CRI_KIND.to_string(), "sandbox".into());
        }
        RuntimeContainer {
            id: id.to_string(),
            runtime_namespace: "k8s.io".into(),
            labels,
        }
    }

    #[test]
    fn a_cgroup_belongs_to_the_container_that_names_it_or_an_ancestor() {
        let id = "4f1c0d9e8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f10";
        let containers = vec![
            runtime_container(id, Some(("kube-system", "coredns-0")), false),
            runtime_container("pause1", Some(("shop", "web-0")), true),
        ];
        let systemd = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-{id}.scope"
        );
        for path in [
            systemd.clone(),
            format!("{systemd}/nested"),
            format!("/default/{id}"),
        ] {
            match owner_from_path(&path, &containers) {
                Owner::Container(c) => assert_eq!(c.pod_namespace, "kube-system", "{path}"),
                other => panic!("{path}: {other:?}"),
            }
        }
        assert!(matches!(
            owner_from_path("/kubepods/besteffort/pod2/pause1", &containers),
            Owner::Sandbox(_)
        ));
        for host in [
            "/system.slice/sshd.service",
            "/",
            "/user.slice/user-0.slice/session-1.scope",
        ] {
            assert_eq!(owner_from_path(host, &containers), Owner::Node, "{host}");
        }
        // A path that merely contains an id-like word is not a container's.
        assert_eq!(
            owner_from_path("/default/pause10", &containers),
            Owner::Node
        );
    }

    #[test]
    fn only_the_root_cgroup_is_the_nodes_whatever_the_runtime_lists() {
        // Even a container with an empty id or one named like a slash names no root.
        let containers = vec![
            runtime_container("", Some(("shop", "web-0")), false),
            runtime_container("/", Some(("shop", "web-0")), false),
        ];
        for root in ["/", ""] {
            assert!(!may_name_a_container(root), "{root:?}");
            assert_eq!(owner_from_path(root, &containers), Owner::Node);
            assert_eq!(owner_from_path(root, &[]), Owner::Node);
        }
        for path in ["/default/abc", "/user.slice", "/a/"] {
            assert!(may_name_a_container(path), "{path}");
        }
    }

    #[test]
    fn recognises_runtime_cgroup_names() {
        assert!(cgroup_names_container("/default/abc", "abc"));
        assert!(cgroup_names_container(
            "/kubepods/burstable/pod1/abc",
            "abc"
        ));
        assert!(cgroup_names_container(
            "/kubepods.slice/kubepods-pod1.slice/cri-containerd-abc.scope",
            "abc"
        ));
        assert!(!cgroup_names_container("/default/abcd", "abc"));
        assert!(!cgroup_names_container("/abc/other", "abc"));
    }
}
