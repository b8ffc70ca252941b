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
        .filter(|process| !is_own_stressor(process, agent))
        .collect()
}

/// A direct child of the agent running its `stress` subcommand for it (`--parent` names
/// the agent: the spawner's command line, see `stressor::start`), or one of its children
/// killed and not yet reaped (a zombie has no command line; the agent's only children in a
/// target's cgroup are its stressors).
fn is_own_stressor(process: &ProcessInfo, agent: u32) -> bool {
    let args: Vec<&str> = process.cmdline.split(' ').collect();
    let parent = agent.to_string();
    process.ppid == agent
        && (process.cmdline.is_empty()
            || (args.contains(&stressor::SUBCOMMAND)
                && args
                    .windows(2)
                    .any(|pair| pair[0] == "--parent" && pair[1] == parent)))
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

    #[test]
    fn only_the_agents_own_stressor_children_are_left_out() {
        let process = |ppid: u32, cmdline: &str| ProcessInfo {
            pid: 9,
            ppid,
            comm: "exe".into(),
            cmdline: cmdline.into(),
            argv0_name: "exe".into(),
            start_time: 1,
        };
        let stressor =
            "/proc/self/exe --cgroup-root /sys/fs/cgroup stress cpu --percent 50 --parent 7";
        assert!(is_own_stressor(&process(7, stressor), 7));
        // A stressor killed and not yet reaped: a zombie has no command line.
        assert!(is_own_stressor(&process(7, ""), 7));
        // Another agent's stressor, the agent itself, a child that is not a stressor.
        let other = stressor.replace("--parent 7", "--parent 8");
        assert!(!is_own_stressor(&process(8, &other), 7));
        assert!(!is_own_stressor(
            &process(1, "/bin/chaos-agent --listen x"),
            7
        ));
        assert!(!is_own_stressor(&process(7, "/sbin/modprobe sch_netem"), 7));
    }
}
