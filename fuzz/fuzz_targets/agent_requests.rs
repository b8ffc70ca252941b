//! The agent's request validation on whatever a client can send: the bytes are decoded as
//! each request message the agent validates (Inject, Revert, RenewLease, Get, ListTargets)
//! and validated under a default agent and one with `--allow-node-scope`. Nothing may
//! panic, and whatever is accepted must hold what validation promises the code after it,
//! down to the kernel encoding: the qdisc options and u32 selectors it leads to must build.

#![no_main]

use std::time::Duration;

use chaos_agent::faults::network::{blackhole_request, network_request};
use chaos_agent::target::TargetSpec;
use chaos_agent::validate::{
    FaultPlan, Limits, MemoryAmount, ValidInject, validate_fault_id, validate_inject,
    validate_lease, validate_pod_namespace_filter, validate_revert,
};
use chaos_netem::tree::Classifier;
use chaos_netem::u32::Selector;
use chaos_proto::api;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let node_scope = Limits {
        allow_node_scope: true,
        ..Limits::default()
    };
    for limits in [Limits::default(), node_scope] {
        if let Ok(req) = api::InjectRequest::decode(data)
            && let Ok(valid) = validate_inject(&req, &limits)
        {
            check_inject(&req, &valid, &limits);
        }
        if let Ok(req) = api::RenewLeaseRequest::decode(data)
            && let Ok(lease) = validate_lease(&req.holder, req.ttl_ms, &limits, "")
        {
            assert!(lease.ttl >= Duration::from_millis(500) && lease.ttl <= limits.max_duration);
            check_holder(&lease.holder);
        }
    }
    if let Ok(req) = api::RevertRequest::decode(data)
        && let Ok(id) = validate_revert(&req)
    {
        match id {
            None => assert!(req.all && req.id.is_empty()),
            Some(id) => check_fault_id(&id),
        }
    }
    if let Ok(req) = api::GetRequest::decode(data)
        && validate_fault_id(&req.id, "id").is_ok()
    {
        check_fault_id(&req.id);
    }
    if let Ok(req) = api::ListTargetsRequest::decode(data)
        && validate_pod_namespace_filter(&req.pod_namespace).is_ok()
    {
        assert!(!req.pod_namespace.contains('/'));
    }
});

fn check_fault_id(id: &str) {
    // Ids name journal entries: `f-` and 16 lowercase hex digits, nothing path-like.
    assert_eq!(id.len(), 18);
    assert!(id.starts_with("f-"));
    assert!(
        id[2..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
}

fn check_holder(holder: &str) {
    assert!(!holder.is_empty() && holder.len() <= 128);
    assert!(holder.bytes().all(|b| b.is_ascii_graphic()));
}

fn check_inject(req: &api::InjectRequest, valid: &ValidInject, limits: &Limits) {
    // The target is what the request names, and prints back to itself.
    assert_eq!(
        TargetSpec::parse(&valid.target.to_string()).ok().as_ref(),
        Some(&valid.target)
    );
    assert_eq!(valid.duration, Duration::from_millis(req.duration_ms));
    assert!(valid.duration <= limits.max_duration);
    // Every fault that holds state ends at a deadline; only a single kill has none.
    if valid.duration.is_zero() {
        match &valid.plan {
            FaultPlan::Process(p) => assert!(p.interval.is_none()),
            other => panic!("{:?} accepted without a duration", other.kind()),
        }
    }
    if let Some(lease) = &valid.lease {
        check_holder(&lease.holder);
        assert!(lease.ttl >= Duration::from_millis(500) && lease.ttl <= limits.max_duration);
    }
    assert!(valid.labels.len() <= 32);
    for (key, value) in &valid.labels {
        assert!(!key.is_empty() && key.len() <= 63);
        assert!(value.len() <= 256 && !value.contains('\0'));
    }
    match &valid.plan {
        FaultPlan::Process(p) => {
            if let Some(interval) = p.interval {
                assert!(interval >= Duration::from_millis(100) && interval <= valid.duration);
            }
            if let Some(filter) = &p.process_filter {
                assert!(!filter.is_empty() && filter.len() <= 256 && !filter.contains('\0'));
            }
        }
        FaultPlan::Cpu(c) => {
            assert!((1..=100).contains(&c.load_percent));
            assert!(c.cores.is_none_or(|n| (1..=1024).contains(&n)));
        }
        FaultPlan::Memory(m) => {
            match m.amount {
                MemoryAmount::Bytes(b) => assert!(b > 0 && b <= 1 << 40),
                MemoryAmount::PercentOfLimit(p) => assert!((1..=100).contains(&p)),
            }
            assert!(m.ramp < valid.duration);
            assert!(!m.allow_node_memory || matches!(m.amount, MemoryAmount::PercentOfLimit(_)));
        }
        FaultPlan::Network(plan) => {
            assert!(
                plan.destinations
                    .iter()
                    .all(|c| c.prefix <= if c.addr.is_ipv4() { 32 } else { 128 })
            );
            assert!(
                plan.exclude_destinations
                    .iter()
                    .all(|c| c.prefix <= if c.addr.is_ipv4() { 32 } else { 128 })
            );
            assert!(plan.request.ports.iter().all(|p| (1..=65535).contains(p)));
            assert!(
                plan.request
                    .exclude_ports
                    .iter()
                    .all(|p| (1..=65535).contains(p))
            );
            assert!(plan.request.interface.len() <= 15);
            let mut request = network_request(plan);
            request.impairment.options().unwrap_or_else(|e| {
                panic!("accepted {:?}, whose qdisc options fail: {e}", plan.request)
            });
            check_classifier(&request.classifier);
            // As prepare does on the node's namespace.
            request.keep_reachable(limits.agent_port);
            check_classifier(&request.classifier);
        }
        FaultPlan::Blackhole(plan) => {
            assert!(!plan.node_scope || limits.allow_node_scope);
            assert!(plan.ports.iter().all(|p| *p > 0));
            assert!(plan.interface.len() <= 15);
            let mut request = blackhole_request(plan);
            request
                .impairment
                .options()
                .expect("blackhole qdisc options");
            check_classifier(&request.classifier);
            request.keep_reachable(limits.agent_port);
            check_classifier(&request.classifier);
        }
        // A pause freezes whole cgroups: never for a `pid:` target.
        FaultPlan::Pause(_) => assert!(!matches!(valid.target, TargetSpec::Pid(_))),
        // An IO limit binds whole cgroups too, sets at least one limit, and none a page
        // takes longer than a second under.
        // A fill acts in a mount namespace: never for a cgroup; its path never climbs.
        FaultPlan::DiskFill(plan) => {
            assert!(!matches!(valid.target, TargetSpec::Cgroup(_)));
            assert!(plan.path.is_absolute());
            assert!(
                !plan
                    .path
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            );
        }
        // IO stress: a mount namespace too, workers and sizes within their bounds.
        FaultPlan::IoStress(plan) => {
            assert!(!matches!(valid.target, TargetSpec::Cgroup(_)));
            assert!((1..=chaos_agent::validate::MAX_IO_STRESS_WORKERS).contains(&plan.workers));
            assert!(plan.file_bytes >= chaos_agent::validate::MIN_IO_STRESS_FILE_BYTES);
            if let Some(bps) = plan.bytes_per_second {
                assert!(bps >= chaos_agent::validate::MIN_IO_STRESS_BYTES_PER_SECOND);
            }
            if let Some(path) = &plan.path {
                assert!(path.is_absolute());
                assert!(
                    !path
                        .components()
                        .any(|c| matches!(c, std::path::Component::ParentDir))
                );
            }
        }
        // DNS: the responder's bounds (rules, delays, addresses), every rule a valid pattern.
        FaultPlan::Dns(plan) => {
            use chaos_agent::dns::rules::{Action, MAX_ADDRESSES, MAX_DELAY, MAX_RULES};
            let rules = plan.rules.rules();
            assert!(!rules.is_empty() && rules.len() <= MAX_RULES);
            for rule in rules {
                match &rule.action {
                    Action::Delay(delay) => assert!(!delay.is_zero() && *delay <= MAX_DELAY),
                    Action::Answer(addresses) => {
                        assert!(!addresses.is_empty() && addresses.len() <= MAX_ADDRESSES)
                    }
                    _ => {}
                }
            }
        }
        FaultPlan::Io(plan) => {
            assert!(!matches!(valid.target, TargetSpec::Pid(_)));
            assert_ne!(plan.limits, Default::default());
            for bps in [plan.limits.read_bps, plan.limits.write_bps]
                .into_iter()
                .flatten()
            {
                assert!(bps >= chaos_agent::validate::MIN_BYTES_PER_SECOND);
            }
        }
    }
}

/// Every match and exclusion becomes one u32 filter per IP family it needs: each must
/// build and fit one filter, and all of them the tree.
fn check_classifier(classifier: &Classifier) {
    assert!(classifier.matches.len() + classifier.exclusions.len() <= 2 * 256 + 4);
    for m in classifier.matches.iter().chain(&classifier.exclusions) {
        for family in m.families() {
            let selector = Selector::for_match(m, *family)
                .unwrap_or_else(|e| panic!("{m:?} does not make a {family} u32 selector: {e}"));
            assert!(!selector.keys.is_empty() && selector.keys.len() <= 6);
        }
    }
    classifier
        .rules()
        .unwrap_or_else(|e| panic!("{classifier:?} does not make a tree: {e}"));
}
