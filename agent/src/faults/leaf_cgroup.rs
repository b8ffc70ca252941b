//! What a fault that binds a whole cgroup (a freeze, an IO limit) refuses of the cgroup
//! itself: the root, which is the node, and a cgroup with child cgroups, which the fault
//! would bind too (a container's own cgroup is a leaf; a pod's holds its containers).

use crate::error::AgentError;
use crate::procfs::{ProcessInfo, Procfs};
use crate::stressor;

/// Why `path` may not carry a whole-cgroup fault, or None. `binds` says what the fault
/// does to every process below the cgroup ("freeze", "throttle the IO of").
pub fn refusal(target: &str, path: &str, has_children: bool, binds: &str) -> Option<AgentError> {
    if path == "/" {
        return Some(AgentError::PermissionDenied(format!(
            "{target} is in the root cgroup: it would {binds} the whole node"
        )));
    }
    if has_children {
        return Some(AgentError::FailedPrecondition(format!(
            "{target}: cgroup {path} has child cgroups, and it would {binds} them too; target a container, whose own cgroup is a leaf"
        )));
    }
    None
}

/// The processes a whole-cgroup fault binds, for the protection policy: every process of
/// the cgroup (`pids`) but this agent's own stressors, which a CPU or memory fault puts in
/// the target's cgroup by design and which end with that fault (the policy would refuse
/// them as the agent's process tree). The agent itself, and anything else of its tree, is
/// kept, so a target that holds the agent is still refused.
pub fn bound_processes(procfs: &Procfs, pids: Vec<u32>) -> Vec<ProcessInfo> {
    let agent = std::process::id();
    pids.into_iter()
        .filter_map(|pid| procfs.process(pid).ok())
        .filter(|process| !stressor::is_own_stressor(process, agent))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_and_a_parent_are_refused_a_leaf_is_not() {
        let root = refusal("pid:7", "/", true, "freeze").unwrap();
        assert_eq!(root.code(), tonic::Code::PermissionDenied);
        assert!(root.to_string().contains("freeze the whole node"), "{root}");
        let parent = refusal("pod x", "/kubepods", true, "freeze").unwrap();
        assert_eq!(parent.code(), tonic::Code::FailedPrecondition);
        assert!(parent.to_string().contains("child cgroups"), "{parent}");
        assert!(refusal("c", "/k8s.io/c", false, "freeze").is_none());
    }
}
