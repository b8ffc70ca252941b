//! Choosing the targets of a fault step from what every agent's ListTargets reports.
//! Pure: the inputs are the agents' answers and what the Kubernetes API said about labels
//! and zones ([`ApiFacts`]), so every rule is unit-tested.

use std::collections::BTreeSet;

use chaos_proto::api;
use serde::Serialize;

use crate::experiment::{SelectMode, TargetSpec};

/// Namespaces no selector reaches unless the step says `include_protected: true`.
pub const PROTECTED_NAMESPACES: &[&str] = &["kube-system", "chaos-control"];

/// A container some agent reported.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub agent: usize,
    /// The node the agent runs on, as it reports it.
    pub node: String,
    pub info: api::TargetInfo,
}

/// A pod by namespace and name.
pub type PodKey = (String, String);

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
}

/// `agents[i]` is agent i's address; `candidates` every container every agent listed;
/// `facts` what the Kubernetes API said about the spec's labels and zone.
pub fn select(
    spec: &TargetSpec,
    agents: &[String],
    candidates: &[Candidate],
    facts: &ApiFacts,
    seed: u64,
) -> Result<Vec<Chosen>, SelectionError> {
    let mut chosen = Vec::new();
    for target in &spec.targets {
        chosen.push(place_explicit(target, spec, agents, candidates)?);
    }
    if spec.has_selector() {
        let mut matching: Vec<Chosen> = candidates
            .iter()
            .filter(|c| matches(spec, facts, c))
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

fn matches(spec: &TargetSpec, facts: &ApiFacts, candidate: &Candidate) -> bool {
    let info = &candidate.info;
    let Some(c) = &info.container else {
        return false;
    };
    if info.state != "running" {
        return false;
    }
    if !spec.include_protected && PROTECTED_NAMESPACES.contains(&c.pod_namespace.as_str()) {
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
/// what the agent listed, or from an explicit `pod:NS/NAME[/CONTAINER]` target.
pub fn distinct_pods(chosen: &[Chosen]) -> Result<Vec<PodKey>, SelectionError> {
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
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
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

    #[test]
    fn all_excludes_protected_namespaces_and_other_containers() {
        let (agents, candidates) = fleet();
        let chosen = select(
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
        let mut with_protected = spec(SelectMode::All);
        with_protected.include_protected = true;
        assert_eq!(
            select(
                &with_protected,
                &agents,
                &candidates,
                &ApiFacts::default(),
                1
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
            select(
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
        let a = select(&fixed, &agents, &candidates, &ApiFacts::default(), 7).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(
            a,
            select(&fixed, &agents, &candidates, &ApiFacts::default(), 7).unwrap()
        );
        let mut percent = spec(SelectMode::Percent);
        percent.percent = Some(50.0);
        // ceil(3 × 0.5) = 2
        assert_eq!(
            select(&percent, &agents, &candidates, &ApiFacts::default(), 7)
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
        let chosen = select(&spec, &agents, &candidates, &ApiFacts::default(), 1).unwrap();
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
            select(&unplaced, &agents, &candidates, &ApiFacts::default(), 1),
            Err(SelectionError::Unplaced("pid:42".into()))
        );
        let placed = TargetSpec {
            agent: Some("b:7090".into()),
            ..unplaced
        };
        assert_eq!(
            select(&placed, &agents, &candidates, &ApiFacts::default(), 1).unwrap()[0].agent,
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
        let chosen = select(&on_node, &agents, &candidates, &ApiFacts::default(), 1).unwrap();
        assert_eq!(pods(&chosen), ["shop/web-2/web"]);
        assert!(chosen.iter().all(|c| c.agent == 1 && c.node == "node-1"));
        on_node.node = Some("node-9".into());
        assert_eq!(
            select(&on_node, &agents, &candidates, &ApiFacts::default(), 1),
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
        let chosen = select(&spec(SelectMode::All), &agents, &candidates, &facts, 1).unwrap();
        assert_eq!(pods(&chosen), ["shop/web-0/web", "shop/web-1/web"]);
        let empty_zone = ApiFacts {
            zone_nodes: Some(BTreeSet::new()),
            ..ApiFacts::default()
        };
        assert_eq!(
            select(&spec(SelectMode::All), &agents, &candidates, &empty_zone, 1),
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
        let chosen = select(&by_labels, &agents, &candidates, &facts, 1).unwrap();
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
            select(&anywhere, &agents, &candidates, &system, 1),
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
        let pods = distinct_pods(&[
            chosen("container:a", "shop/web-0/web"),
            chosen("container:b", "shop/web-0/sidecar"),
            chosen("pod:shop/db-0", ""),
            chosen("container:c", "shop/web-1/web"),
        ])
        .unwrap();
        let names: Vec<String> = pods.iter().map(|(ns, n)| format!("{ns}/{n}")).collect();
        assert_eq!(names, ["shop/web-0", "shop/db-0", "shop/web-1"]);
        assert_eq!(
            distinct_pods(&[chosen("pid:42", "")]),
            Err(SelectionError::NotAPod("pid:42".into()))
        );
    }

    #[test]
    fn an_empty_selection_is_an_error() {
        let (agents, candidates) = fleet();
        let mut nothing = spec(SelectMode::All);
        nothing.namespace = Some("absent".into());
        assert_eq!(
            select(&nothing, &agents, &candidates, &ApiFacts::default(), 1),
            Err(SelectionError::NothingMatches)
        );
    }
}
