//! Choosing the targets of a fault step from what every agent's ListTargets reports.
//! Pure: the inputs are the agents' answers and what the Kubernetes API said about labels
//! and zones ([`ApiFacts`]), so every rule is unit-tested.

use std::collections::BTreeSet;

use chaos_proto::api;
use serde::Serialize;

use crate::agents::fleet::Candidate;
use crate::agents::kube_api::PodKey;
use crate::engine::experiment::{Experiment, FaultSpec, SelectMode, TargetSpec};

/// Namespaces no target reaches, however it is named, unless the command that runs the
/// experiment allows them ([`TargetPolicy::include_protected`]).
pub const PROTECTED_NAMESPACES: &[&str] = &["kube-system", "chaos-control"];

fn is_protected(namespace: &str) -> bool {
    PROTECTED_NAMESPACES.contains(&namespace)
}

/// What the command running the experiment allows beyond the file: its flags, so that
/// whoever writes (or submits) the file cannot widen them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TargetPolicy {
    /// kube-system and chaos-control may be targeted (`--include-protected`).
    pub include_protected: bool,
}

/// What the Kubernetes API answered for one step's selector; `None` leaves that part
/// of the selector unconstrained.
#[derive(Debug, Clone, Default)]
pub struct ApiFacts {
    /// The pods whose labels match `labels`.
    pub labelled_pods: Option<BTreeSet<PodKey>>,
    /// The nodes in `zone`.
    pub zone_nodes: Option<BTreeSet<String>>,
}

/// One target of a step: which agent, and what to put in `InjectRequest.target`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Chosen {
    pub agent: usize,
    pub target: String,
    /// `namespace/pod/container` when known.
    pub pod: String,
    /// The agent's node, when known.
    pub node: String,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SelectionError {
    #[error("target `{0}`: no agent lists it; name the agent with `agent:`")]
    Unplaced(String),
    #[error("target `{target}`: agent `{agent}` is not one of this experiment's agents")]
    UnknownAgent { target: String, agent: String },
    #[error("the selector matches no running container")]
    NothingMatches,
    #[error("target `{0}` is not a pod's container, so it has no pod to delete")]
    NotAPod(String),
    #[error(
        "{what} is in the protected namespace {namespace} (allowed only when chaosctl run or \
         chaosctl serve is started with --include-protected)"
    )]
    Protected { what: String, namespace: String },
    #[error(
        "target.namespace: {0} is a protected namespace (allowed only when chaosctl run or \
         chaosctl serve is started with --include-protected)"
    )]
    ProtectedSelector(String),
    #[error(
        "target `{0}` shares its node's network namespace (a hostNetwork pod), so a network \
         fault on it acts on the node: set target.include_host_network: true to target it"
    )]
    HostNetwork(String),
}

/// The protected namespaces an experiment names in its text: explicit `pod:NS/...`
/// targets and `namespace:` selectors. Refused before anything is connected to; what only
/// the agents can tell (a `container:ID` in a protected pod, a label selector's pods) is
/// refused by [`select`] and [`distinct_pods`] when the run is planned.
pub fn refuse_named_protected(experiment: &Experiment, policy: TargetPolicy) -> Result<(), String> {
    if policy.include_protected {
        return Ok(());
    }
    for (i, step) in experiment.method.faults.iter().enumerate() {
        let at = |e: SelectionError| format!("method.faults[{i}] (fault `{}`): {e}", step.name);
        let verb = if matches!(step.fault, FaultSpec::DeletePod(_)) {
            "delete_pod of"
        } else {
            "target"
        };
        for (_, spec) in step.selectors() {
            for target in &spec.targets {
                if let Some(namespace) = spelled_namespace(target)
                    && is_protected(namespace)
                {
                    return Err(at(SelectionError::Protected {
                        what: format!("{verb} `{target}`"),
                        namespace: namespace.to_string(),
                    }));
                }
            }
            if let Some(namespace) = &spec.namespace
                && is_protected(namespace)
            {
                return Err(at(SelectionError::ProtectedSelector(namespace.clone())));
            }
        }
    }
    Ok(())
}

/// The namespace a `pod:NS/NAME[/CONTAINER]` target spells.
fn spelled_namespace(target: &str) -> Option<&str> {
    target.strip_prefix("pod:")?.split('/').next()
}

/// `agents[i]` is agent i's address; `candidates` every container every agent listed;
/// `facts` what the Kubernetes API said about the spec's labels and zone.
pub fn select(
    spec: &TargetSpec,
    agents: &[String],
    candidates: &[Candidate],
    facts: &ApiFacts,
    seed: u64,
    policy: TargetPolicy,
) -> Result<Vec<Chosen>, SelectionError> {
    let mut chosen = Vec::new();
    for target in &spec.targets {
        let placed = place_explicit(target, spec, agents, candidates)?;
        check_explicit(&placed, spec, candidates, policy)?;
        chosen.push(placed);
    }
    if spec.has_selector() {
        let mut matching: Vec<Chosen> = candidates
            .iter()
            .filter(|c| matches(spec, facts, c, policy))
            .map(|c| Chosen {
                agent: c.agent,
                target: c.info.target.clone(),
                pod: pod_name(&c.info),
                node: c.node.clone(),
            })
            .collect();
        if matching.is_empty() {
            return Err(SelectionError::NothingMatches);
        }
        matching.sort_by(|a, b| (a.agent, &a.target).cmp(&(b.agent, &b.target)));
        shuffle(&mut matching, seed);
        let keep = match spec.mode {
            SelectMode::All => matching.len(),
            SelectMode::One => 1,
            SelectMode::Fixed => spec.count.unwrap_or(1) as usize,
            SelectMode::Percent => {
                let p = spec.percent.unwrap_or(100.0) / 100.0;
                ((matching.len() as f64 * p).ceil() as usize).max(1)
            }
        };
        matching.truncate(keep);
        chosen.extend(matching);
    }
    Ok(chosen)
}

fn place_explicit(
    target: &str,
    spec: &TargetSpec,
    agents: &[String],
    candidates: &[Candidate],
) -> Result<Chosen, SelectionError> {
    if let Some(agent) = &spec.agent {
        let index =
            agents
                .iter()
                .position(|a| a == agent)
                .ok_or_else(|| SelectionError::UnknownAgent {
                    target: target.to_string(),
                    agent: agent.clone(),
                })?;
        return Ok(Chosen {
            agent: index,
            target: target.to_string(),
            pod: String::new(),
            node: String::new(),
        });
    }
    if let Some(c) = candidates.iter().find(|c| refers_to(target, &c.info)) {
        return Ok(Chosen {
            agent: c.agent,
            target: target.to_string(),
            pod: pod_name(&c.info),
            node: c.node.clone(),
        });
    }
    // With one agent there is no question where the target lives.
    if agents.len() == 1 {
        return Ok(Chosen {
            agent: 0,
            target: target.to_string(),
            pod: String::new(),
            node: String::new(),
        });
    }
    Err(SelectionError::Unplaced(target.to_string()))
}

/// An explicit target is held to the same rules as a selected one, by what its agent
/// lists for it: `pod:` and `container:` by name, `pid:` by the container holding the
/// process, `cgroup:` by the container's cgroup.
fn check_explicit(
    placed: &Chosen,
    spec: &TargetSpec,
    candidates: &[Candidate],
    policy: TargetPolicy,
) -> Result<(), SelectionError> {
    let target = placed.target.as_str();
    let listed = candidates.iter().find(|c| {
        c.agent == placed.agent && (refers_to(target, &c.info) || holds(target, &c.info))
    });
    let namespace = listed
        .and_then(|c| c.info.container.as_ref())
        .map(|c| c.pod_namespace.as_str())
        .filter(|ns| !ns.is_empty())
        .or_else(|| spelled_namespace(target));
    if let Some(namespace) = namespace
        && is_protected(namespace)
        && !policy.include_protected
    {
        return Err(SelectionError::Protected {
            what: format!("target `{target}`"),
            namespace: namespace.to_string(),
        });
    }
    if listed.is_some_and(|c| c.info.host_network) && !spec.include_host_network {
        return Err(SelectionError::HostNetwork(target.to_string()));
    }
    Ok(())
}

/// What `chosen`'s agent listed for it: the container it names or holds (a `pid:` or
/// `cgroup:` inside it). None for an explicit target its agent does not list.
pub fn listing<'a>(chosen: &Chosen, candidates: &'a [Candidate]) -> Option<&'a Candidate> {
    candidates.iter().find(|c| {
        c.agent == chosen.agent
            && (refers_to(&chosen.target, &c.info) || holds(&chosen.target, &c.info))
    })
}

/// Whether a `pid:` or `cgroup:` target is inside this listed container.
fn holds(target: &str, info: &api::TargetInfo) -> bool {
    if let Some(pid) = target
        .strip_prefix("pid:")
        .and_then(|p| p.parse::<u32>().ok())
    {
        return pid == info.init_pid || info.pids.contains(&pid);
    }
    target
        .strip_prefix("cgroup:")
        .is_some_and(|path| !info.cgroup.is_empty() && path == info.cgroup)
}

/// Whether an explicit target string names this listed container.
fn refers_to(target: &str, info: &api::TargetInfo) -> bool {
    if target == info.target {
        return true;
    }
    let Some(c) = &info.container else {
        return false;
    };
    if let Some(id) = target
        .strip_prefix("container:")
        .map(|id| id.trim_start_matches("containerd://"))
    {
        return id == c.id;
    }
    if let Some(pod) = target.strip_prefix("pod:") {
        let parts: Vec<&str> = pod.split('/').collect();
        return match parts.as_slice() {
            [ns, name] => *ns == c.pod_namespace && *name == c.pod_name,
            [ns, name, container] => {
                *ns == c.pod_namespace && *name == c.pod_name && *container == c.container_name
            }
            _ => false,
        };
    }
    false
}

fn matches(
    spec: &TargetSpec,
    facts: &ApiFacts,
    candidate: &Candidate,
    policy: TargetPolicy,
) -> bool {
    let info = &candidate.info;
    let Some(c) = &info.container else {
        return false;
    };
    if info.state != "running" {
        return false;
    }
    if !policy.include_protected && is_protected(&c.pod_namespace) {
        return false;
    }
    if info.host_network && !spec.include_host_network {
        return false;
    }
    let pod_key = (c.pod_namespace.clone(), c.pod_name.clone());
    let node = candidate.node.as_str();
    spec.node.as_ref().is_none_or(|n| n == node)
        && facts
            .zone_nodes
            .as_ref()
            .is_none_or(|nodes| nodes.contains(node))
        && facts
            .labelled_pods
            .as_ref()
            .is_none_or(|pods| pods.contains(&pod_key))
        && spec
            .namespace
            .as_ref()
            .is_none_or(|ns| *ns == c.pod_namespace)
        && spec.pod.as_ref().is_none_or(|p| glob(p, &c.pod_name))
        && spec
            .container
            .as_ref()
            .is_none_or(|n| *n == c.container_name)
}

fn pod_name(info: &api::TargetInfo) -> String {
    info.container
        .as_ref()
        .filter(|c| !c.pod_name.is_empty())
        .map(|c| format!("{}/{}/{}", c.pod_namespace, c.pod_name, c.container_name))
        .unwrap_or_default()
}

/// The distinct pods of a step's targets, in order, for `delete_pod`: the pod comes from
/// what the agent listed, or from an explicit `pod:NS/NAME[/CONTAINER]` target. The
/// deletion goes through the Kubernetes API, past every agent's protection, so the
/// protected namespaces are checked here once more.
pub fn distinct_pods(
    chosen: &[Chosen],
    policy: TargetPolicy,
) -> Result<Vec<PodKey>, SelectionError> {
    let mut pods: Vec<PodKey> = Vec::new();
    for c in chosen {
        let spelled = if c.pod.is_empty() {
            c.target.strip_prefix("pod:").unwrap_or_default()
        } else {
            c.pod.as_str()
        };
        let mut parts = spelled.split('/');
        let key = match (parts.next(), parts.next()) {
            (Some(ns), Some(name)) if !ns.is_empty() && !name.is_empty() => {
                (ns.to_string(), name.to_string())
            }
            _ => return Err(SelectionError::NotAPod(c.target.clone())),
        };
        if is_protected(&key.0) && !policy.include_protected {
            return Err(SelectionError::Protected {
                what: format!("delete_pod of pod {}/{}", key.0, key.1),
                namespace: key.0,
            });
        }
        if !pods.contains(&key) {
            pods.push(key);
        }
    }
    Ok(pods)
}

/// `*` any run of characters, `?` one character.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // Classic two-pointer matcher with backtracking to the last star.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        // The star first: a `*` in the pattern is a wildcard even where the text has a `*`
        // (found by the target_string fuzz target: `*` did not match `*x`).
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Fisher-Yates with xorshift64*: reproducible for a given seed.
fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed | 1;
    for i in (1..items.len()).rev() {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let r = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
        items.swap(i, (r % (i as u64 + 1)) as usize);
    }
}

/// The first chosen target of each agent (node), in order. A fault that acts on the node
/// rather than on the pod it is resolved through (a node-scope blackhole) must be injected
/// once per node: a second one would find the node's interface taken and be refused.
pub fn one_per_node(chosen: Vec<Chosen>) -> Vec<Chosen> {
    let mut nodes = BTreeSet::new();
    chosen
        .into_iter()
        .filter(|c| nodes.insert(c.agent))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`select`] under the default policy (no protected namespaces).
    fn pick(
        spec: &TargetSpec,
        agents: &[String],
        candidates: &[Candidate],
        facts: &ApiFacts,
        seed: u64,
    ) -> Result<Vec<Chosen>, SelectionError> {
        select(
            spec,
            agents,
            candidates,
            facts,
            seed,
            TargetPolicy::default(),
        )
    }

    fn candidate(agent: usize, ns: &str, pod: &str, container: &str) -> Candidate {
        Candidate {
            agent,
            node: format!("node-{agent}"),
            info: api::TargetInfo {
                container: Some(api::ContainerRef {
                    id: format!("id-{pod}-{container}"),
                    runtime_namespace: "k8s.io".into(),
                    pod_namespace: ns.into(),
                    pod_name: pod.into(),
                    container_name: container.into(),
                }),
                state: "running".into(),
                target: format!("container:id-{pod}-{container}"),
                ..Default::default()
            },
        }
    }

    fn fleet() -> (Vec<String>, Vec<Candidate>) {
        let agents = vec!["a:7090".to_string(), "b:7090".to_string()];
        let candidates = vec![
            candidate(0, "shop", "web-0", "web"),
            candidate(0, "shop", "web-1", "web"),
            candidate(1, "shop", "web-2", "web"),
            candidate(1, "shop", "web-3", "sidecar"),
            candidate(1, "shop", "db-0", "db"),
            candidate(1, "kube-system", "web-9", "web"),
        ];
        (agents, candidates)
    }

    fn spec(mode: SelectMode) -> TargetSpec {
        TargetSpec {
            pod: Some("web-*".into()),
            container: Some("web".into()),
            mode,
            ..TargetSpec::default()
        }
    }

    #[test]
    fn one_per_node_keeps_the_first_target_of_each_agent() {
        // web-0 and web-1 on agent 0, web-2 on agent 1, in the chosen (shuffled) order.
        let chosen: Vec<Chosen> = ["web-1", "web-2", "web-0"]
            .iter()
            .map(|pod| Chosen {
                agent: usize::from(*pod == "web-2"),
                target: format!("container:id-{pod}"),
                pod: format!("shop/{pod}/web"),
                node: String::new(),
            })
            .collect();
        let per_node = one_per_node(chosen.clone());
        assert_eq!(per_node, vec![chosen[0].clone(), chosen[1].clone()]);
    }

    #[test]
    fn globs() {
        assert!(glob("web-*", "web-0"));
        assert!(glob("*-0", "db-0"));
        assert!(glob("w?b-*", "wub-12"));
        assert!(glob("*", ""));
        assert!(!glob("web-?", "web-10"));
        assert!(!glob("db-*", "web-0"));
    }

    /// Found by fuzz/fuzz_targets/target_string.rs: a pattern's `*` met a `*` in the
    /// text, was taken as that literal character and never backtracked.
    #[test]
    fn a_star_stays_a_wildcard_where_the_text_has_a_star() {
        assert!(glob("*", "*\n%%"));
        assert!(glob("*", "*x"));
        assert!(glob("a*", "a*b"));
        assert!(glob("*b", "*ab"));
        assert!(!glob("*c", "*ab"));
    }

    #[test]
    fn all_excludes_protected_namespaces_and_other_containers() {
        let (agents, candidates) = fleet();
        let chosen = pick(
            &spec(SelectMode::All),
            &agents,
            &candidates,
            &ApiFacts::default(),
            1,
        )
        .unwrap();
        let mut pods: Vec<&str> = chosen.iter().map(|c| c.pod.as_str()).collect();
        pods.sort();
        assert_eq!(pods, ["shop/web-0/web", "shop/web-1/web", "shop/web-2/web"]);
        let allowed = TargetPolicy {
            include_protected: true,
        };
        assert_eq!(
            select(
                &spec(SelectMode::All),
                &agents,
                &candidates,
                &ApiFacts::default(),
                1,
                allowed
            )
            .unwrap()
            .len(),
            4
        );
    }

    #[test]
    fn one_fixed_and_percent_take_a_seeded_subset() {
        let (agents, candidates) = fleet();
        assert_eq!(
            pick(
                &spec(SelectMode::One),
                &agents,
                &candidates,
                &ApiFacts::default(),
                7
            )
            .unwrap()
            .len(),
            1
        );
        let mut fixed = spec(SelectMode::Fixed);
        fixed.count = Some(2);
        let a = pick(&fixed, &agents, &candidates, &ApiFacts::default(), 7).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(
            a,
            pick(&fixed, &agents, &candidates, &ApiFacts::default(), 7).unwrap()
        );
        let mut percent = spec(SelectMode::Percent);
        percent.percent = Some(50.0);
        // ceil(3 × 0.5) = 2
        assert_eq!(
            pick(&percent, &agents, &candidates, &ApiFacts::default(), 7)
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn explicit_targets_go_to_the_agent_that_lists_them() {
        let (agents, candidates) = fleet();
        let spec = TargetSpec {
            targets: vec!["pod:shop/db-0/db".into(), "container:id-web-0-web".into()],
            ..TargetSpec::default()
        };
        let chosen = pick(&spec, &agents, &candidates, &ApiFacts::default(), 1).unwrap();
        assert_eq!(
            (chosen[0].agent, chosen[0].pod.as_str()),
            (1, "shop/db-0/db")
        );
        assert_eq!(chosen[1].agent, 0);
        let unplaced = TargetSpec {
            targets: vec!["pid:42".into()],
            ..TargetSpec::default()
        };
        assert_eq!(
            pick(&unplaced, &agents, &candidates, &ApiFacts::default(), 1),
            Err(SelectionError::Unplaced("pid:42".into()))
        );
        let placed = TargetSpec {
            agent: Some("b:7090".into()),
            ..unplaced
        };
        assert_eq!(
            pick(&placed, &agents, &candidates, &ApiFacts::default(), 1).unwrap()[0].agent,
            1
        );
    }

    fn pods(chosen: &[Chosen]) -> Vec<&str> {
        let mut pods: Vec<&str> = chosen.iter().map(|c| c.pod.as_str()).collect();
        pods.sort();
        pods
    }

    #[test]
    fn node_selects_the_containers_its_agent_reports() {
        let (agents, candidates) = fleet();
        let mut on_node = spec(SelectMode::All);
        on_node.node = Some("node-1".into());
        let chosen = pick(&on_node, &agents, &candidates, &ApiFacts::default(), 1).unwrap();
        assert_eq!(pods(&chosen), ["shop/web-2/web"]);
        assert!(chosen.iter().all(|c| c.agent == 1 && c.node == "node-1"));
        on_node.node = Some("node-9".into());
        assert_eq!(
            pick(&on_node, &agents, &candidates, &ApiFacts::default(), 1),
            Err(SelectionError::NothingMatches)
        );
    }

    #[test]
    fn zone_keeps_the_containers_on_the_zones_nodes() {
        let (agents, candidates) = fleet();
        let facts = ApiFacts {
            zone_nodes: Some(["node-0".to_string()].into()),
            ..ApiFacts::default()
        };
        let chosen = pick(&spec(SelectMode::All), &agents, &candidates, &facts, 1).unwrap();
        assert_eq!(pods(&chosen), ["shop/web-0/web", "shop/web-1/web"]);
        let empty_zone = ApiFacts {
            zone_nodes: Some(BTreeSet::new()),
            ..ApiFacts::default()
        };
        assert_eq!(
            pick(&spec(SelectMode::All), &agents, &candidates, &empty_zone, 1),
            Err(SelectionError::NothingMatches)
        );
    }

    #[test]
    fn labels_intersect_the_api_pods_with_the_agents_containers() {
        let (agents, candidates) = fleet();
        let by_labels = TargetSpec {
            namespace: Some("shop".into()),
            mode: SelectMode::All,
            ..TargetSpec::default()
        };
        // web-7 is labelled but no agent runs it; another namespace's web-0 is not ours.
        let facts = ApiFacts {
            labelled_pods: Some(
                [
                    ("shop".to_string(), "web-1".to_string()),
                    ("shop".to_string(), "web-3".to_string()),
                    ("shop".to_string(), "web-7".to_string()),
                    ("other".to_string(), "web-0".to_string()),
                ]
                .into(),
            ),
            ..ApiFacts::default()
        };
        let chosen = pick(&by_labels, &agents, &candidates, &facts, 1).unwrap();
        assert_eq!(pods(&chosen), ["shop/web-1/web", "shop/web-3/sidecar"]);
        // The protected namespaces stay excluded even when the API lists their pods.
        let system = ApiFacts {
            labelled_pods: Some([("kube-system".to_string(), "web-9".to_string())].into()),
            ..ApiFacts::default()
        };
        let anywhere = TargetSpec {
            mode: SelectMode::All,
            node: Some("node-1".into()),
            ..TargetSpec::default()
        };
        assert_eq!(
            pick(&anywhere, &agents, &candidates, &system, 1),
            Err(SelectionError::NothingMatches)
        );
    }

    #[test]
    fn distinct_pods_of_a_delete() {
        let chosen = |target: &str, pod: &str| Chosen {
            agent: 0,
            target: target.into(),
            pod: pod.into(),
            node: String::new(),
        };
        let pods = distinct_pods(
            &[
                chosen("container:a", "shop/web-0/web"),
                chosen("container:b", "shop/web-0/sidecar"),
                chosen("pod:shop/db-0", ""),
                chosen("container:c", "shop/web-1/web"),
            ],
            TargetPolicy::default(),
        )
        .unwrap();
        let names: Vec<String> = pods.iter().map(|(ns, n)| format!("{ns}/{n}")).collect();
        assert_eq!(names, ["shop/web-0", "shop/db-0", "shop/web-1"]);
        assert_eq!(
            distinct_pods(&[chosen("pid:42", "")], TargetPolicy::default()),
            Err(SelectionError::NotAPod("pid:42".into()))
        );
    }

    #[test]
    fn explicit_targets_in_protected_namespaces_are_refused_in_every_form() {
        let (agents, mut candidates) = fleet();
        // The kube-system container of the fleet, with a process and a cgroup.
        candidates[5].info.init_pid = 900;
        candidates[5].info.pids = vec![900, 901];
        candidates[5].info.cgroup = "/kubepods/pod9/web-9".into();
        let forms = [
            "pod:kube-system/web-9",
            "pod:kube-system/web-9/web",
            "container:id-web-9-web",
            "container:containerd://id-web-9-web",
            "pid:901",
            "cgroup:/kubepods/pod9/web-9",
            // Not listed by any agent: the namespace it spells is enough.
            "pod:chaos-control/absent-0",
        ];
        for target in forms {
            let spec = TargetSpec {
                targets: vec![target.into()],
                agent: Some("b:7090".into()),
                ..TargetSpec::default()
            };
            let refused = pick(&spec, &agents, &candidates, &ApiFacts::default(), 1);
            assert!(
                matches!(&refused, Err(SelectionError::Protected { namespace, .. })
                    if namespace == "kube-system" || namespace == "chaos-control"),
                "{target}: {refused:?}"
            );
            let allowed = TargetPolicy {
                include_protected: true,
            };
            assert!(
                select(
                    &spec,
                    &agents,
                    &candidates,
                    &ApiFacts::default(),
                    1,
                    allowed
                )
                .is_ok(),
                "{target}"
            );
        }
        // The same pid on the other node is another process: not protected there.
        let elsewhere = TargetSpec {
            targets: vec!["pid:901".into()],
            agent: Some("a:7090".into()),
            ..TargetSpec::default()
        };
        assert!(pick(&elsewhere, &agents, &candidates, &ApiFacts::default(), 1).is_ok());
        let message = pick(
            &TargetSpec {
                targets: vec!["container:id-web-9-web".into()],
                ..TargetSpec::default()
            },
            &agents,
            &candidates,
            &ApiFacts::default(),
            1,
        )
        .unwrap_err()
        .to_string();
        assert!(
            message.contains("container:id-web-9-web")
                && message.contains("protected namespace kube-system")
                && message.contains("--include-protected"),
            "{message}"
        );
    }

    #[test]
    fn delete_pod_never_reaches_a_protected_pod_without_the_flag() {
        let chosen = |target: &str, pod: &str| Chosen {
            agent: 0,
            target: target.into(),
            pod: pod.into(),
            node: String::new(),
        };
        let targets = [
            chosen("container:a", "shop/web-0/web"),
            chosen("container:b", "kube-system/coredns-0/coredns"),
        ];
        let refused = distinct_pods(&targets, TargetPolicy::default()).unwrap_err();
        assert_eq!(
            refused,
            SelectionError::Protected {
                what: "delete_pod of pod kube-system/coredns-0".into(),
                namespace: "kube-system".into(),
            }
        );
        let allowed = TargetPolicy {
            include_protected: true,
        };
        assert_eq!(distinct_pods(&targets, allowed).unwrap().len(), 2);
    }

    #[test]
    fn the_experiment_text_naming_a_protected_namespace_is_refused_before_planning() {
        let experiment = |target: &str, fault: &str| {
            crate::engine::experiment::parse(&format!(
                "name: x\nmethod:\n  faults:\n    - name: s\n      target: {target}\n      {fault}\n"
            ))
            .unwrap()
        };
        let cases = [
            (
                "{ targets: [\"pod:kube-system/coredns-0\"] }",
                "delete_pod: {}",
                "delete_pod of `pod:kube-system/coredns-0`",
            ),
            (
                "{ targets: [\"pod:chaos-control/chaos-agent-x/agent\"] }",
                "kill: {}",
                "target `pod:chaos-control/chaos-agent-x/agent`",
            ),
            (
                "{ namespace: kube-system }",
                "delete_pod: {}",
                "target.namespace",
            ),
        ];
        for (target, fault, what) in cases {
            let e = experiment(target, fault);
            let message = refuse_named_protected(&e, TargetPolicy::default()).unwrap_err();
            assert!(
                message.starts_with("method.faults[0] (fault `s`): ") && message.contains(what),
                "{message}"
            );
            assert!(
                refuse_named_protected(
                    &e,
                    TargetPolicy {
                        include_protected: true
                    }
                )
                .is_ok()
            );
        }
        let ordinary = experiment("{ targets: [\"pod:shop/web-0\"] }", "delete_pod: {}");
        assert!(refuse_named_protected(&ordinary, TargetPolicy::default()).is_ok());
        // Either side of a partition.
        for (from, to) in [
            ("{ namespace: kube-system }", "{ pod: b }"),
            (
                "{ pod: a }",
                "{ targets: [\"pod:chaos-control/chaos-agent-x\"] }",
            ),
        ] {
            let e = crate::engine::experiment::parse(&format!(
                "name: x\nmethod:\n  faults:\n    - name: s\n      duration: 1s\n      \
                 partition: {{ from: {from}, to: {to} }}\n"
            ))
            .unwrap();
            let message = refuse_named_protected(&e, TargetPolicy::default()).unwrap_err();
            assert!(message.contains("protected namespace"), "{message}");
        }
    }

    #[test]
    fn host_network_containers_need_the_step_to_ask_for_them() {
        let (agents, mut candidates) = fleet();
        // web-1 on agent 0 shares its node's network namespace.
        candidates[1].info.host_network = true;
        let all = spec(SelectMode::All);
        assert_eq!(
            pods(&pick(&all, &agents, &candidates, &ApiFacts::default(), 1).unwrap()),
            ["shop/web-0/web", "shop/web-2/web"]
        );
        let mut with_host = spec(SelectMode::All);
        with_host.include_host_network = true;
        assert_eq!(
            pick(&with_host, &agents, &candidates, &ApiFacts::default(), 1)
                .unwrap()
                .len(),
            3
        );
        // Named explicitly, it is refused with the reason and the field that allows it.
        let mut explicit = TargetSpec {
            targets: vec!["pod:shop/web-1/web".into()],
            ..TargetSpec::default()
        };
        assert_eq!(
            pick(&explicit, &agents, &candidates, &ApiFacts::default(), 1),
            Err(SelectionError::HostNetwork("pod:shop/web-1/web".into()))
        );
        explicit.include_host_network = true;
        assert_eq!(
            pick(&explicit, &agents, &candidates, &ApiFacts::default(), 1).unwrap()[0].agent,
            0
        );
    }

    #[test]
    fn an_empty_selection_is_an_error() {
        let (agents, candidates) = fleet();
        let mut nothing = spec(SelectMode::All);
        nothing.namespace = Some("absent".into());
        assert_eq!(
            pick(&nothing, &agents, &candidates, &ApiFacts::default(), 1),
            Err(SelectionError::NothingMatches)
        );
    }
}
