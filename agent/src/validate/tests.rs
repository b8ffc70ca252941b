//! `validate_inject` across kinds, and the requests other than Inject.

use super::test_support::{kill, req};
use super::*;
use api::inject_request::Fault;

/// The field an invalid request is refused for.
fn refused_field(r: &api::InjectRequest) -> &'static str {
    match validate_inject(r, &Limits::default()) {
        Err(AgentError::InvalidArgument { field, .. }) => field,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn every_invalid_inject_field_is_named() {
    let process = |signal: &str, process: &str, interval_ms| {
        Fault::Process(api::ProcessFault {
            signal: signal.into(),
            process: process.into(),
            interval_ms,
        })
    };
    assert_eq!(refused_field(&req("", 0, kill())), "target");
    assert_eq!(
        refused_field(&req("pid:1", 4_000_000, kill())),
        "duration_ms"
    );
    assert_eq!(
        refused_field(&api::InjectRequest {
            target: "pid:1".into(),
            ..Default::default()
        }),
        "fault"
    );
    assert_eq!(
        refused_field(&req("pid:2", 0, process("BOGUS", "", 0))),
        "process.signal"
    );
    assert_eq!(
        refused_field(&req("pid:2", 0, process("", &"x".repeat(300), 0))),
        "process.process"
    );
    assert_eq!(
        refused_field(&req("pid:2", 10_000, process("", "", 5))),
        "process.interval_ms"
    );
    assert_eq!(
        refused_field(&req("pid:2", 0, process("", "", 1000))),
        "duration_ms"
    );
    assert_eq!(
        refused_field(&req("pid:2", 1000, process("", "", 2000))),
        "process.interval_ms"
    );

    let cpu = |load_percent, cores, mode| {
        Fault::Cpu(api::CpuFault {
            load_percent,
            cores,
            mode,
        })
    };
    assert_eq!(
        refused_field(&req("pid:2", 0, cpu(50, 0, 0))),
        "duration_ms"
    );
    assert_eq!(
        refused_field(&req("pid:2", 1000, cpu(0, 0, 0))),
        "cpu.load_percent"
    );
    assert_eq!(
        refused_field(&req("pid:2", 1000, cpu(101, 0, 0))),
        "cpu.load_percent"
    );
    assert_eq!(
        refused_field(&req("pid:2", 1000, cpu(50, 5000, 0))),
        "cpu.cores"
    );
    assert_eq!(
        refused_field(&req("pid:2", 1000, cpu(50, 0, 7))),
        "cpu.mode"
    );

    let mem = |size_bytes, percent, ramp_ms| {
        Fault::Memory(api::MemoryFault {
            size_bytes,
            percent,
            ramp_ms,
            allow_node_memory: false,
        })
    };
    assert_eq!(
        refused_field(&req("pid:2", 1000, mem(0, 0, 0))),
        "memory.size_bytes"
    );
    assert_eq!(
        refused_field(&req("pid:2", 1000, mem(1 << 41, 0, 0))),
        "memory.size_bytes"
    );
    assert_eq!(
        refused_field(&req("pid:2", 1000, mem(0, 101, 0))),
        "memory.percent"
    );
    assert_eq!(
        refused_field(&req("pid:2", 1000, mem(10, 10, 0))),
        "memory.percent"
    );
    assert_eq!(
        refused_field(&req("pid:2", 1000, mem(10, 0, 1000))),
        "memory.ramp_ms"
    );
    let size_with_node_memory = Fault::Memory(api::MemoryFault {
        size_bytes: 4096,
        allow_node_memory: true,
        ..Default::default()
    });
    assert_eq!(
        refused_field(&req("pid:2", 1000, size_with_node_memory)),
        "memory.allow_node_memory"
    );

    let net = |f: fn(&mut api::NetworkFault)| {
        let mut n = api::NetworkFault {
            delay_us: 1000,
            ..Default::default()
        };
        f(&mut n);
        Fault::Network(n)
    };
    type Mutation = fn(&mut api::NetworkFault);
    let cases: Vec<(Mutation, &str)> = vec![
        (|n| n.interface = "a/b".into(), "network.interface"),
        (|n| n.interface = "x".repeat(16), "network.interface"),
        (|n| n.direction = 9, "network.direction"),
        (|n| n.distribution = 9, "network.distribution"),
        (
            |n| n.distribution = api::Distribution::Normal as i32,
            "network.distribution",
        ),
        (|n| n.protocol = 9, "network.protocol"),
        (|n| n.delay_us = 61_000_000, "network.delay_us"),
        (|n| n.jitter_us = 61_000_000, "network.jitter_us"),
        (
            |n| {
                n.delay_us = 0;
                n.loss_percent = 1.0;
                n.jitter_us = 5
            },
            "network.jitter_us",
        ),
        (|n| n.delay_correlation = 101.0, "network.delay_correlation"),
        (|n| n.loss_percent = -1.0, "network.loss_percent"),
        (|n| n.loss_percent = f64::NAN, "network.loss_percent"),
        (|n| n.loss_correlation = 200.0, "network.loss_correlation"),
        (|n| n.duplicate_percent = 101.0, "network.duplicate_percent"),
        (|n| n.corrupt_percent = 101.0, "network.corrupt_percent"),
        (|n| n.reorder_percent = 101.0, "network.reorder_percent"),
        (
            |n| {
                n.delay_us = 0;
                n.loss_percent = 1.0;
                n.reorder_percent = 5.0
            },
            "network.reorder_percent",
        ),
        (|n| n.reorder_gap = 5, "network.reorder_gap"),
        (|n| n.delay_us = 0, "network"),
        (
            |n| n.destinations = vec!["10.0.0.0/33".into()],
            "network.destinations",
        ),
        (
            |n| n.destinations = vec!["nope".into()],
            "network.destinations",
        ),
        (
            |n| n.exclude_destinations = vec!["::1/129".into()],
            "network.exclude_destinations",
        ),
        (|n| n.ports = vec![0], "network.ports"),
        (
            |n| {
                n.protocol = api::Protocol::Icmp as i32;
                n.ports = vec![80]
            },
            "network.ports",
        ),
        (
            |n| {
                n.destinations = (0..20).map(|i| format!("10.0.{i}.0/24")).collect();
                n.ports = (1..=20).collect()
            },
            "network.destinations",
        ),
        (|n| n.exclude_ports = vec![70000], "network.exclude_ports"),
    ];
    for (mutate, field) in cases {
        assert_eq!(refused_field(&req("pid:2", 1000, net(mutate))), field);
    }
    assert_eq!(refused_field(&req("pid:2", 0, net(|_| {}))), "duration_ms");

    let blackhole = |destinations: Vec<String>, ports| {
        Fault::Blackhole(api::BlackholeFault {
            destinations,
            ports,
            ..Default::default()
        })
    };
    assert_eq!(
        refused_field(&req("pid:2", 1000, blackhole(vec!["x".into()], vec![]))),
        "blackhole.destinations"
    );
    assert_eq!(
        refused_field(&req("pid:2", 1000, blackhole(vec![], vec![0]))),
        "blackhole.ports"
    );
    let bad_interface = Fault::Blackhole(api::BlackholeFault {
        interface: "eth0/../x".into(),
        ..Default::default()
    });
    assert_eq!(
        refused_field(&req("pid:2", 1000, bad_interface)),
        "blackhole.interface"
    );

    let mut with_lease = req("pid:2", 1000, kill());
    with_lease.lease = Some(api::Lease {
        holder: "".into(),
        ttl_ms: 1000,
    });
    assert_eq!(refused_field(&with_lease), "lease.holder");
    with_lease.lease = Some(api::Lease {
        holder: "ctl".into(),
        ttl_ms: 10,
    });
    assert_eq!(refused_field(&with_lease), "lease.ttl_ms");

    let mut with_labels = req("pid:2", 0, kill());
    with_labels.labels.insert("bad key".into(), "v".into());
    assert_eq!(refused_field(&with_labels), "labels");
}

#[test]
fn node_scope_keeps_the_agent_port() {
    let r = req(
        "pid:2",
        1000,
        Fault::Blackhole(api::BlackholeFault {
            node_scope: true,
            ports: vec![80],
            ..Default::default()
        }),
    );
    let limits = Limits {
        allow_node_scope: true,
        agent_port: 7443,
        ..Limits::default()
    };
    let kept = NodeNetworkPolicy {
        allowed: true,
        agent_port: 7443,
    };
    match validate_inject(&r, &limits).unwrap().plan {
        FaultPlan::Blackhole(plan) => {
            assert_eq!(plan.node, kept);
            assert_eq!(plan.ports, vec![80]);
        }
        other => panic!("{other:?}"),
    }
    // Network faults carry the same rule: prepare applies it to a target that
    // shares the node's namespace.
    let network = req(
        "pid:2",
        1000,
        Fault::Network(api::NetworkFault {
            delay_us: 1000,
            ..Default::default()
        }),
    );
    match validate_inject(&network, &limits).unwrap().plan {
        FaultPlan::Network(plan) => assert_eq!(plan.node, kept),
        other => panic!("{other:?}"),
    }
}

#[test]
fn io_needs_a_duration_and_a_container_or_cgroup() {
    let limit = || {
        Fault::Io(api::IoFault {
            write_bytes_per_second: 1 << 20,
            ..Default::default()
        })
    };
    let pid = validate_inject(&req("pid:2", 1000, limit()), &Limits::default()).unwrap_err();
    assert_eq!(pid.code(), tonic::Code::InvalidArgument);
    let forever =
        validate_inject(&req("container:abc", 0, limit()), &Limits::default()).unwrap_err();
    assert_eq!(forever.code(), tonic::Code::InvalidArgument);
    let valid = validate_inject(&req("container:abc", 1000, limit()), &Limits::default()).unwrap();
    assert!(matches!(valid.plan, FaultPlan::Io(_)));
}

#[test]
fn valid_requests_of_every_kind_pass() {
    let ok = |f| validate_inject(&req("pod:dev/db-0/db", 30_000, f), &Limits::default()).unwrap();
    assert_eq!(
        ok(Fault::Cpu(api::CpuFault {
            load_percent: 80,
            cores: 2,
            mode: 2
        }))
        .plan
        .kind(),
        api::FaultKind::Cpu
    );
    assert_eq!(
        ok(Fault::Memory(api::MemoryFault {
            size_bytes: 256 << 20,
            percent: 0,
            ramp_ms: 10_000,
            allow_node_memory: false,
        }))
        .plan,
        FaultPlan::Memory(MemoryPlan {
            amount: MemoryAmount::Bytes(256 << 20),
            ramp: Duration::from_secs(10),
            allow_node_memory: false,
            max_percent_of_available: DEFAULT_MAX_MEMORY_FILL_PERCENT_OF_AVAILABLE,
        })
    );
    // A percent of node memory, asked for; the agent's bound travels with the plan.
    let limits = Limits {
        max_memory_fill_percent_of_available: 20,
        ..Limits::default()
    };
    let node_percent = Fault::Memory(api::MemoryFault {
        percent: 10,
        allow_node_memory: true,
        ..Default::default()
    });
    assert_eq!(
        validate_inject(&req("pod:dev/db-0/db", 30_000, node_percent), &limits)
            .unwrap()
            .plan,
        FaultPlan::Memory(MemoryPlan {
            amount: MemoryAmount::PercentOfLimit(10),
            ramp: Duration::ZERO,
            allow_node_memory: true,
            max_percent_of_available: 20,
        })
    );
    let n = ok(Fault::Network(api::NetworkFault {
        delay_us: 100_000,
        jitter_us: 10_000,
        distribution: api::Distribution::Normal as i32,
        loss_percent: 5.0,
        destinations: vec!["10.0.0.0/8".into(), "192.168.1.7".into()],
        ports: vec![5432],
        ..Default::default()
    }));
    match n.plan {
        FaultPlan::Network(p) => assert_eq!(
            p.destinations[1],
            Cidr {
                addr: "192.168.1.7".parse().unwrap(),
                prefix: 32
            }
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_kind_a_request_can_ask_for_is_implemented() {
    let requests = [
        Fault::Process(api::ProcessFault {
            signal: "SIGKILL".into(),
            ..Default::default()
        }),
        Fault::Cpu(api::CpuFault {
            load_percent: 50,
            ..Default::default()
        }),
        Fault::Memory(api::MemoryFault {
            size_bytes: 1 << 20,
            ..Default::default()
        }),
        Fault::Network(api::NetworkFault {
            delay_us: 1_000,
            ..Default::default()
        }),
        Fault::Blackhole(api::BlackholeFault::default()),
        Fault::Pause(api::PauseFault::default()),
        Fault::Io(api::IoFault {
            read_iops: 100,
            ..Default::default()
        }),
        Fault::DiskFill(api::DiskFillFault {
            size_bytes: 1 << 30,
            ..Default::default()
        }),
        Fault::IoStress(api::IoStressFault::default()),
        Fault::Dns(api::DnsFault {
            rules: vec![api::DnsRule {
                pattern: "db.test".into(),
                action: api::DnsAction::Nxdomain as i32,
                ..Default::default()
            }],
        }),
    ];
    let mut planned = Vec::new();
    for fault in requests {
        let kind = fault.kind();
        let valid = validate_inject(&req("pod:dev/db-0/db", 30_000, fault), &Limits::default())
            .unwrap_or_else(|e| panic!("{}: {e}", kind.label()));
        assert_eq!(valid.plan.kind(), kind);
        planned.push(kind);
    }
    let implemented: Vec<api::FaultKind> =
        crate::faults::KINDS.iter().map(|info| info.kind).collect();
    planned.sort_by_key(|kind| *kind as i32);
    let mut sorted = implemented.clone();
    sorted.sort_by_key(|kind| *kind as i32);
    assert_eq!(
        planned, sorted,
        "every plan has its kind entry, and no entry lacks a plan"
    );
}

#[test]
fn other_requests_name_their_fields() {
    let revert = |id: &str, all| validate_revert(&api::RevertRequest { id: id.into(), all });
    assert_eq!(revert("", true).unwrap(), None);
    assert_eq!(
        revert("f-0123456789abcdef", false).unwrap(),
        Some("f-0123456789abcdef".into())
    );
    for (id, all) in [
        ("", false),
        ("f-1", false),
        ("f-0123456789ABCDEF", false),
        ("f-0123456789abcdef", true),
    ] {
        assert!(
            matches!(
                revert(id, all),
                Err(AgentError::InvalidArgument { field: "id", .. })
            ),
            "{id} {all}"
        );
    }
    assert!(matches!(
        validate_fault_id("../x", "id"),
        Err(AgentError::InvalidArgument { field: "id", .. })
    ));
    assert!(validate_pod_namespace_filter("").is_ok());
    assert!(validate_pod_namespace_filter("dev").is_ok());
    // Found by fuzz/fuzz_targets/agent_requests.rs: `ns/name` made a valid pod target.
    for with_slash in ["sod-syst-system/node-x", "dev/web", "dev/"] {
        assert!(
            matches!(
                validate_pod_namespace_filter(with_slash),
                Err(AgentError::InvalidArgument {
                    field: "pod_namespace",
                    ..
                })
            ),
            "{with_slash}"
        );
    }
    assert!(matches!(
        validate_pod_namespace_filter("Dev"),
        Err(AgentError::InvalidArgument {
            field: "pod_namespace",
            ..
        })
    ));
    let limits = Limits::default();
    assert!(matches!(
        validate_lease("", 1000, &limits, ""),
        Err(AgentError::InvalidArgument {
            field: "holder",
            ..
        })
    ));
    assert!(matches!(
        validate_lease("c", 1, &limits, ""),
        Err(AgentError::InvalidArgument {
            field: "ttl_ms",
            ..
        })
    ));
    assert!(validate_lease("ctl-1", 5000, &limits, "").is_ok());
}
