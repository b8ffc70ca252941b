//! Turning a fault step of an experiment into the agent's `InjectRequest`: the fault is
//! the step's spec's own (`FaultSpec::agent_fault`, which `chaosctl inject` sends too).

use std::collections::HashMap;
use std::time::Duration;

use chaos_proto::api;

use crate::engine::experiment::FaultStep;

/// The request for one chosen target of `step`, carrying the run's lease and labels. Its
/// fault is None for a delete_pod step, which goes to the Kubernetes API, not an agent.
pub fn inject_request(
    step: &FaultStep,
    target: &str,
    lease: Option<api::Lease>,
    labels: &HashMap<String, String>,
    dry_run: bool,
) -> api::InjectRequest {
    api::InjectRequest {
        target: target.to_string(),
        duration_ms: millis(step.duration),
        fault: step.fault.agent_fault(),
        lease,
        dry_run,
        labels: labels.clone(),
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(yaml: &str) -> FaultStep {
        serde_norway::from_str(yaml).unwrap()
    }

    #[test]
    fn a_memory_step_carries_percent_and_allow_node_memory() {
        let memory = step(
            "name: fill\ntarget: {targets: ['pid:1']}\nduration: 30s\nmemory:\n  percent: 20\n  allow_node_memory: true\n  ramp: 2s\n",
        );
        match inject_request(&memory, "pid:1", None, &HashMap::new(), false).fault {
            Some(api::inject_request::Fault::Memory(m)) => {
                assert_eq!(m.percent, 20);
                assert_eq!(m.size_bytes, 0);
                assert!(m.allow_node_memory);
                assert_eq!(m.ramp_ms, 2000);
            }
            other => panic!("{other:?}"),
        }
        let sized = step(
            "name: fill\ntarget: {targets: ['pid:1']}\nduration: 30s\nmemory: { size: 64MiB }\n",
        );
        match inject_request(&sized, "pid:1", None, &HashMap::new(), false).fault {
            Some(api::inject_request::Fault::Memory(m)) => {
                assert_eq!(m.size_bytes, 64 << 20);
                assert!(!m.allow_node_memory);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_cpu_steps_mode_reaches_the_request_and_defaults_to_fill() {
        for (yaml_mode, mode) in [
            ("", api::CpuMode::Fill),
            (", mode: add", api::CpuMode::Add),
            (", mode: starve", api::CpuMode::Starve),
        ] {
            let cpu = step(&format!(
                "name: cpu\ntarget: {{targets: ['pid:1']}}\nduration: 30s\ncpu: {{ load: 80{yaml_mode} }}\n"
            ));
            match inject_request(&cpu, "pid:1", None, &HashMap::new(), false).fault {
                Some(api::inject_request::Fault::Cpu(c)) => {
                    assert_eq!((c.load_percent, c.mode), (80, mode as i32), "{yaml_mode}");
                }
                other => panic!("{other:?}"),
            }
        }
        let unknown = serde_norway::from_str::<FaultStep>(
            "name: cpu\ntarget: {targets: ['pid:1']}\nduration: 30s\ncpu: { load: 80, mode: hog }\n",
        );
        let error = unknown.unwrap_err().to_string();
        assert!(error.contains("unknown variant `hog`"), "{error}");
    }

    #[test]
    fn network_targeting_and_blackhole_steps_become_requests() {
        let network = step(
            "name: slow-db\ntarget: {targets: ['pid:1']}\nduration: 30s\nnetwork:\n  delay: 100ms\n  to: [10.0.0.0/8]\n  ports: [5432]\n  protocol: tcp\n  direction: ingress\n  exclude_to: [10.0.0.2]\n  exclude_ports: [53]\n",
        );
        let request = inject_request(&network, "pid:1", None, &HashMap::new(), false);
        match request.fault {
            Some(api::inject_request::Fault::Network(n)) => {
                assert_eq!(n.delay_us, 100_000);
                assert_eq!(n.destinations, vec!["10.0.0.0/8"]);
                assert_eq!(n.ports, vec![5432]);
                assert_eq!(n.protocol, api::Protocol::Tcp as i32);
                assert_eq!(n.direction, api::Direction::Ingress as i32);
                assert_eq!(n.exclude_destinations, vec!["10.0.0.2"]);
                assert_eq!(n.exclude_ports, vec![53]);
            }
            other => panic!("{other:?}"),
        }
        let blackhole = step(
            "name: cut\ntarget: {targets: ['pid:1']}\nduration: 30s\nblackhole:\n  ports: [5432]\n  node_scope: true\n",
        );
        match inject_request(&blackhole, "pid:1", None, &HashMap::new(), false).fault {
            Some(api::inject_request::Fault::Blackhole(b)) => {
                assert_eq!(b.ports, vec![5432]);
                assert!(b.node_scope);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            crate::engine::experiment::step_kind(&blackhole),
            "blackhole"
        );
        let pause =
            step("name: freeze\ntarget: {targets: ['pod:dev/db-0']}\nduration: 20s\npause: {}\n");
        let request = inject_request(&pause, "pod:dev/db-0", None, &HashMap::new(), false);
        assert_eq!(request.duration_ms, 20_000);
        assert!(matches!(
            request.fault,
            Some(api::inject_request::Fault::Pause(_))
        ));
        assert_eq!(crate::engine::experiment::step_kind(&pause), "pause");
    }

    #[test]
    fn a_network_steps_rate_reaches_the_request_in_bytes_per_second() {
        for (rate, bytes) in [("1mbit", 125_000), ("10MB/s", 10_000_000), ("4096", 4096)] {
            let limited = step(&format!(
                "name: slow\ntarget: {{targets: ['pid:1']}}\nduration: 30s\nnetwork: {{ rate: {rate} }}\n"
            ));
            match inject_request(&limited, "pid:1", None, &HashMap::new(), false).fault {
                Some(api::inject_request::Fault::Network(n)) => assert_eq!(
                    n,
                    api::NetworkFault {
                        rate_bytes_per_second: bytes,
                        direction: api::Direction::Egress as i32,
                        ..Default::default()
                    },
                    "{rate}"
                ),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_network_steps_burst_and_queue_reach_the_request_beside_its_rate() {
        let sized = step(
            "name: slow\ntarget: {targets: ['pid:1']}\nduration: 30s\nnetwork: { rate: 1mbit, burst: 32KiB, queue: 64KB }\n",
        );
        match inject_request(&sized, "pid:1", None, &HashMap::new(), false).fault {
            Some(api::inject_request::Fault::Network(n)) => {
                assert_eq!(
                    (
                        n.rate_bytes_per_second,
                        n.rate_burst_bytes,
                        n.rate_queue_bytes
                    ),
                    (125_000, 32 << 10, 64_000)
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_io_step_becomes_an_io_fault() {
        let io = step(
            "name: slow-disk\ntarget: {targets: ['pod:dev/db-0']}\nduration: 45s\nio: { read_bps: 1MiB, write_bps: 512KiB, read_iops: 100, write_iops: 50, device: /dev/nvme0n1 }\n",
        );
        let request = inject_request(&io, "pod:dev/db-0", None, &HashMap::new(), false);
        assert_eq!(request.duration_ms, 45_000);
        match request.fault {
            Some(api::inject_request::Fault::Io(f)) => {
                assert_eq!(f.read_bytes_per_second, 1 << 20);
                assert_eq!(f.write_bytes_per_second, 512 << 10);
                assert_eq!(f.read_iops, 100);
                assert_eq!(f.write_iops, 50);
                assert_eq!(f.device, "/dev/nvme0n1");
            }
            other => panic!("{other:?}"),
        }
        // Limits left out are 0 (no limit) and no device is every whole disk.
        let writes_only = step(
            "name: slow-writes\ntarget: {targets: ['pod:dev/db-0']}\nduration: 45s\nio: { write_iops: 10 }\n",
        );
        match inject_request(&writes_only, "pod:dev/db-0", None, &HashMap::new(), false).fault {
            Some(api::inject_request::Fault::Io(f)) => assert_eq!(
                f,
                api::IoFault {
                    write_iops: 10,
                    ..Default::default()
                }
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_disk_fill_step_becomes_a_disk_fill_fault() {
        let sized = step(
            "name: fill-root\ntarget: {targets: ['pod:dev/db-0']}\nduration: 1m\ndisk_fill: { size: 1GiB }\n",
        );
        let request = inject_request(&sized, "pod:dev/db-0", None, &HashMap::new(), false);
        assert_eq!(request.duration_ms, 60_000);
        // No path is "": the agent fills "/", the container's writable root.
        match request.fault {
            Some(api::inject_request::Fault::DiskFill(f)) => assert_eq!(
                f,
                api::DiskFillFault {
                    size_bytes: 1 << 30,
                    percent: 0,
                    path: String::new(),
                }
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(crate::engine::experiment::step_kind(&sized), "disk_fill");
        let percent = step(
            "name: fill-data\ntarget: {targets: ['pid:1']}\nduration: 30s\ndisk_fill: { percent: 90, path: /data }\n",
        );
        match inject_request(&percent, "pid:1", None, &HashMap::new(), true).fault {
            Some(api::inject_request::Fault::DiskFill(f)) => {
                assert_eq!(f.size_bytes, 0);
                assert_eq!(f.percent, 90);
                assert_eq!(f.path, "/data");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_io_stress_step_becomes_an_io_stress_fault() {
        let full = step(
            "name: churn\ntarget: {targets: ['pod:dev/db-0']}\nduration: 1m\nio_stress: { workers: 2, bps: 1MiB, file_size: 8MiB, path: /data }\n",
        );
        match inject_request(&full, "pod:dev/db-0", None, &HashMap::new(), false).fault {
            Some(api::inject_request::Fault::IoStress(f)) => assert_eq!(
                f,
                api::IoStressFault {
                    workers: 2,
                    bytes_per_second: 1 << 20,
                    file_bytes: 8 << 20,
                    path: "/data".into(),
                }
            ),
            other => panic!("{other:?}"),
        }
        let bare =
            step("name: churn\ntarget: {targets: ['pid:1']}\nduration: 30s\nio_stress: {}\n");
        match inject_request(&bare, "pid:1", None, &HashMap::new(), false).fault {
            Some(api::inject_request::Fault::IoStress(f)) => {
                assert_eq!(f, api::IoStressFault::default())
            }
            other => panic!("{other:?}"),
        }
    }
}
