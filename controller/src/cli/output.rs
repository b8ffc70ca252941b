//! Rendering agent answers for people (tables) and programs (JSON).

use chaos_proto::api;
use serde_json::{Value, json};

pub fn kind_name(kind: i32) -> &'static str {
    api::FaultKind::try_from(kind)
        .unwrap_or(api::FaultKind::Unspecified)
        .label()
}

pub fn state_name(state: i32) -> &'static str {
    match api::FaultState::try_from(state) {
        Ok(api::FaultState::Active) => "active",
        Ok(api::FaultState::Completed) => "completed",
        Ok(api::FaultState::Reverted) => "reverted",
        Ok(api::FaultState::Expired) => "expired",
        Ok(api::FaultState::LeaseExpired) => "lease-expired",
        Ok(api::FaultState::Recovered) => "recovered",
        Ok(api::FaultState::Failed) => "failed",
        Ok(api::FaultState::RevertPending) => "revert-pending",
        _ => "planned",
    }
}

fn container_json(c: &Option<api::ContainerRef>) -> Value {
    match c {
        Some(c) => json!({
            "id": c.id,
            "runtime_namespace": c.runtime_namespace,
            "pod_namespace": c.pod_namespace,
            "pod_name": c.pod_name,
            "container_name": c.container_name,
        }),
        None => Value::Null,
    }
}

fn status_json(status: &Option<api::fault::Status>) -> Value {
    match status {
        Some(api::fault::Status::Process(p)) => json!({
            "rounds": p.rounds,
            "stopped": p.stopped,
            "signalled": p.signalled.iter().map(|s| json!({
                "pid": s.pid, "name": s.name, "signal": s.signal,
                "delivered": s.delivered, "error": s.error, "at_unix_ms": s.at_unix_ms,
            })).collect::<Vec<_>>(),
        }),
        Some(api::fault::Status::Cpu(c)) => json!({
            "requested_percent": c.requested_percent, "achieved_percent": c.achieved_percent, "workers": c.workers,
            "cgroup_percent": c.cgroup_percent, "stressor_percent": c.stressor_percent,
            "limit_cores": c.limit_cores, "stressors_running": c.stressors_running,
        }),
        Some(api::fault::Status::Memory(m)) => json!({
            "requested_bytes": m.requested_bytes, "held_bytes": m.held_bytes,
            "cgroup_usage_bytes": m.cgroup_usage_bytes, "oom_kills": m.oom_kills,
            "limit_bytes": m.limit_bytes, "stressors_running": m.stressors_running,
        }),
        Some(api::fault::Status::Network(n)) => {
            json!({ "interface": n.interface, "installed": n.installed })
        }
        Some(api::fault::Status::Pause(p)) => {
            json!({ "cgroups": p.cgroups, "frozen": p.frozen, "processes": p.processes })
        }
        Some(api::fault::Status::Io(io)) => json!({
            "cgroups": io.cgroups,
            "devices": io.devices.iter().map(|d| json!({
                "device": d.device, "name": d.name,
                "read_bytes_per_second": d.read_bytes_per_second,
                "write_bytes_per_second": d.write_bytes_per_second,
                "read_iops": d.read_iops, "write_iops": d.write_iops,
            })).collect::<Vec<_>>(),
        }),
        Some(api::fault::Status::Dns(dns)) => json!({
            "redirects": dns.redirects, "queries": dns.queries,
            "faulted": dns.faulted, "forwarded": dns.forwarded,
        }),
        Some(api::fault::Status::DiskFill(fill)) => json!({
            "files": fill.files.iter().map(|f| json!({
                "target": f.target, "path": f.path, "bytes": f.bytes,
                "filesystem_bytes": f.filesystem_bytes, "available_bytes": f.available_bytes,
                "node_filesystem": f.node_filesystem,
            })).collect::<Vec<_>>(),
        }),
        Some(api::fault::Status::IoStress(stress)) => json!({
            "workers": stress.workers, "workers_running": stress.workers_running,
            "read_bytes": stress.read_bytes, "written_bytes": stress.written_bytes,
            "workers_read_bytes": stress.workers_read_bytes,
            "workers_written_bytes": stress.workers_written_bytes,
            "files": stress.files,
        }),
        None => Value::Null,
    }
}

pub fn fault_json(f: &api::Fault) -> Value {
    json!({
        "id": f.id,
        "kind": kind_name(f.kind),
        "state": state_name(f.state),
        "target": f.target,
        "targets": f.targets.iter().map(|t| json!({
            "target": t.target, "container": container_json(&t.container), "init_pid": t.init_pid,
            "pids": t.pids, "cgroup": t.cgroup, "netns": t.netns,
        })).collect::<Vec<_>>(),
        "created_unix_ms": f.created_unix_ms,
        "deadline_unix_ms": f.deadline_unix_ms,
        "ended_unix_ms": f.ended_unix_ms,
        "message": f.message,
        "lease_holder": f.lease_holder,
        "status": status_json(&f.status),
    })
}

/// A plain text table: a header row and left-aligned columns.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = widths.get(i).copied().unwrap_or(0)))
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.clone()));
        out.push('\n');
    }
    out
}

fn remaining(f: &api::Fault, now_ms: i64) -> String {
    if f.state != api::FaultState::Active as i32 {
        return "-".into();
    }
    let left = (f.deadline_unix_ms - now_ms).max(0);
    format!("{}s", (left + 999) / 1000)
}

/// What the agent reports the fault did, in one line.
pub fn summary(f: &api::Fault) -> String {
    match &f.status {
        Some(api::fault::Status::Process(p)) => {
            let delivered = p.signalled.iter().filter(|s| s.delivered).count();
            let last = p
                .signalled
                .iter()
                .rev()
                .find(|s| s.delivered)
                .map(|s| format!(" (last: {} {} pid {})", s.signal, s.name, s.pid))
                .unwrap_or_default();
            let held = if p.stopped > 0 {
                format!(", {} stopped now", p.stopped)
            } else {
                String::new()
            };
            format!("{delivered} signalled in {} round(s){last}{held}", p.rounds)
        }
        Some(api::fault::Status::Cpu(c)) => format!(
            "cpu {:.1} % of {:.2} cores (asked {:.0} %, stressors {:.1} %)",
            c.achieved_percent, c.limit_cores, c.requested_percent, c.stressor_percent
        ),
        Some(api::fault::Status::Memory(m)) => format!(
            "held {} MiB of {} MiB, cgroup {} MiB{}",
            m.held_bytes >> 20,
            m.requested_bytes >> 20,
            m.cgroup_usage_bytes >> 20,
            if m.oom_kills > 0 {
                format!(", {} OOM kill(s)", m.oom_kills)
            } else {
                String::new()
            }
        ),
        Some(api::fault::Status::Pause(p)) => format!(
            "{} of {} cgroup(s) frozen, {} process(es)",
            p.frozen, p.cgroups, p.processes
        ),
        Some(api::fault::Status::Io(io)) => io_summary(io),
        Some(api::fault::Status::DiskFill(fill)) => disk_fill_summary(fill),
        Some(api::fault::Status::IoStress(stress)) => io_stress_summary(stress),
        Some(api::fault::Status::Dns(dns)) => format!(
            "{} quer(ies), {} faulted, {} forwarded; redirected: {}",
            dns.queries,
            dns.faulted,
            dns.forwarded,
            if dns.redirects.is_empty() {
                "nothing".to_string()
            } else {
                dns.redirects.join(", ")
            }
        ),
        _ => f.message.clone(),
    }
}

/// "2 of 2 worker(s) running, workers read 1.5 GiB, wrote 1.5 GiB; cgroup read 1.6 GiB,
/// written 1.5 GiB": the workers' own storage IO, then the target cgroups' (workload
/// included; on cgroup v1 0 for a disk without a throttle rule) since the inject.
fn io_stress_summary(stress: &api::IoStressStatus) -> String {
    format!(
        "{} of {} worker(s) running, workers read {}, wrote {}; cgroup read {}, written {}",
        stress.workers_running,
        stress.workers,
        size(stress.workers_read_bytes),
        size(stress.workers_written_bytes),
        size(stress.read_bytes),
        size(stress.written_bytes)
    )
}

/// "2 device(s): nvme0n1 write 1.0 MiB/s, loop3 read 100 iops". Each cgroup reports its
/// devices, so the containers of a pod repeat the same limits: those are shown once.
fn io_summary(io: &api::IoStatus) -> String {
    let mut devices: Vec<&api::IoDeviceLimit> = Vec::new();
    for device in &io.devices {
        if !devices.contains(&device) {
            devices.push(device);
        }
    }
    if devices.is_empty() {
        return format!("{} cgroup(s), no device limited", io.cgroups);
    }
    let described: Vec<String> = devices.iter().map(|d| device_limits(d)).collect();
    format!("{} device(s): {}", devices.len(), described.join(", "))
}

fn device_limits(d: &api::IoDeviceLimit) -> String {
    let name = if d.name.is_empty() {
        &d.device
    } else {
        &d.name
    };
    let mut parts = vec![name.clone()];
    if d.read_bytes_per_second > 0 {
        parts.push(format!("read {}", per_second(d.read_bytes_per_second)));
    }
    if d.write_bytes_per_second > 0 {
        parts.push(format!("write {}", per_second(d.write_bytes_per_second)));
    }
    if d.read_iops > 0 {
        parts.push(format!("read {} iops", d.read_iops));
    }
    if d.write_iops > 0 {
        parts.push(format!("write {} iops", d.write_iops));
    }
    parts.join(" ")
}

/// A rate in the largest binary unit it reaches, one decimal: "512 B/s", "1.5 MiB/s".
fn per_second(bytes: u64) -> String {
    format!("{}/s", size(bytes))
}

/// A size in the largest binary unit it reaches, one decimal: "512 B", "1.5 MiB", "2.0 TiB".
fn size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (unit, unit_bytes) in UNITS {
        if bytes >= unit_bytes {
            return format!("{:.1} {unit}", bytes as f64 / unit_bytes as f64);
        }
    }
    format!("{bytes} B")
}

/// "1 file(s): /.chaos-disk-fill-f-1 1.0 GiB, 12.3 GiB of 50.0 GiB available (node
/// filesystem)". The target is named only when the files belong to more than one (the
/// containers of a pod each fill their own root, under the same path).
fn disk_fill_summary(fill: &api::DiskFillStatus) -> String {
    if fill.files.is_empty() {
        return "no file".into();
    }
    let first = &fill.files[0].target;
    let several_targets = fill.files.iter().any(|f| &f.target != first);
    let described: Vec<String> = fill
        .files
        .iter()
        .map(|f| {
            let target = if several_targets {
                format!("{} ", f.target)
            } else {
                String::new()
            };
            let held = if f.bytes == 0 {
                "removed".to_string()
            } else {
                size(f.bytes)
            };
            format!(
                "{target}{} {held}, {} of {} available{}",
                f.path,
                size(f.available_bytes),
                size(f.filesystem_bytes),
                if f.node_filesystem {
                    " (node filesystem)"
                } else {
                    ""
                }
            )
        })
        .collect();
    format!("{} file(s): {}", fill.files.len(), described.join("; "))
}

pub fn faults_table(faults: &[api::Fault], now_ms: i64) -> String {
    let rows: Vec<Vec<String>> = faults
        .iter()
        .map(|f| {
            vec![
                f.id.clone(),
                kind_name(f.kind).to_string(),
                state_name(f.state).to_string(),
                f.target.clone(),
                remaining(f, now_ms),
                summary(f),
            ]
        })
        .collect();
    table(&["ID", "KIND", "STATE", "TARGET", "LEFT", "DETAIL"], &rows)
}

pub fn capabilities_json(c: &api::CapabilitiesResponse) -> Value {
    let runtime = c.runtime.clone().unwrap_or_default();
    let protection = c.protection.clone().unwrap_or_default();
    json!({
        "node_name": c.node_name,
        "kernel_release": c.kernel_release,
        "agent_version": c.agent_version,
        "cgroup_version": c.cgroup_version,
        "cgroup_controllers": c.cgroup_controllers,
        "qdiscs": c.qdiscs.iter().map(|q| json!({"name": q.name, "available": q.available, "detail": q.detail})).collect::<Vec<_>>(),
        "runtime": {"endpoint": runtime.endpoint, "reachable": runtime.reachable, "version": runtime.version,
                    "error": runtime.error, "namespaces": runtime.namespaces},
        "protection": {"allow_kube_system": protection.allow_kube_system,
                       "allow_host_processes": protection.allow_host_processes,
                       "protected_process_names": protection.protected_process_names,
                       "protected_namespaces": protection.protected_namespaces},
        "supported_kinds": c.supported_kinds.iter().map(|k| kind_name(*k)).collect::<Vec<_>>(),
        "max_duration_ms": c.max_duration_ms,
        "node_scope_allowed": c.node_scope_allowed,
        "held_capabilities": c.held_capabilities,
        "kind_privileges": c.kind_privileges.iter().map(|k| json!({"kind": kind_name(k.kind), "usable": k.usable,
                    "missing_capabilities": k.missing_capabilities})).collect::<Vec<_>>(),
    })
}

pub fn capabilities_text(c: &api::CapabilitiesResponse) -> String {
    let runtime = c.runtime.clone().unwrap_or_default();
    let protection = c.protection.clone().unwrap_or_default();
    let qdiscs: Vec<String> = c
        .qdiscs
        .iter()
        .map(|q| format!("{} ({})", q.name, q.detail))
        .collect();
    let kinds: Vec<&str> = c.supported_kinds.iter().map(|k| kind_name(*k)).collect();
    // Kinds the agent refuses for want of a capability, with what each lacks.
    let unusable: Vec<String> = c
        .kind_privileges
        .iter()
        .filter(|k| !k.usable)
        .map(|k| {
            format!(
                "{} (needs {})",
                kind_name(k.kind),
                k.missing_capabilities.join(",")
            )
        })
        .collect();
    let runtime_line = if runtime.reachable {
        format!(
            "containerd {} at {} (namespaces {})",
            runtime.version,
            runtime.endpoint,
            runtime.namespaces.join(",")
        )
    } else {
        format!("UNREACHABLE at {}: {}", runtime.endpoint, runtime.error)
    };
    format!(
        "node:          {}\nagent:         {}\nkernel:        {}\ncgroups:       {} ({})\nqdiscs:        {}\nruntime:       {}\nfault kinds:   {}\nmax duration:  {}s\nprotected:     namespaces {}; processes {}\nhost processes: {}\nnode scope:    {}\ncapabilities:  {}\nunusable kinds: {}\n",
        c.node_name,
        c.agent_version,
        c.kernel_release,
        c.cgroup_version,
        c.cgroup_controllers.join(","),
        qdiscs.join(", "),
        runtime_line,
        kinds.join(", "),
        c.max_duration_ms / 1000,
        protection.protected_namespaces.join(","),
        protection.protected_process_names.join(","),
        if protection.allow_host_processes {
            "allowed"
        } else {
            "refused"
        },
        if c.node_scope_allowed {
            "allowed"
        } else {
            "refused"
        },
        c.held_capabilities.join(","),
        if unusable.is_empty() {
            "none".to_string()
        } else {
            unusable.join(", ")
        },
    )
}

pub fn targets_table(targets: &[api::TargetInfo]) -> String {
    let rows: Vec<Vec<String>> = targets
        .iter()
        .map(|t| {
            let c = t.container.clone().unwrap_or_default();
            let pod = if c.pod_name.is_empty() {
                "-".to_string()
            } else {
                format!("{}/{}", c.pod_namespace, c.pod_name)
            };
            vec![
                pod,
                if c.container_name.is_empty() {
                    "-".into()
                } else {
                    c.container_name
                },
                t.state.clone(),
                t.init_pid.to_string(),
                t.pids.len().to_string(),
                // The node's network namespace: a network fault on it is a node fault.
                if t.host_network { "host" } else { "-" }.to_string(),
                t.target.clone(),
            ]
        })
        .collect();
    table(
        &[
            "POD",
            "CONTAINER",
            "STATE",
            "PID",
            "PROCS",
            "NETNS",
            "TARGET",
        ],
        &rows,
    )
}

pub fn target_json(t: &api::TargetInfo) -> Value {
    json!({
        "target": t.target, "container": container_json(&t.container), "state": t.state,
        "init_pid": t.init_pid, "pids": t.pids, "cgroup": t.cgroup,
        "host_network": t.host_network, "addresses": t.addresses,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let text = table(&["A", "LONGER"], &[vec!["xxxx".into(), "y".into()]]);
        assert_eq!(text, "A     LONGER\nxxxx  y\n");
    }

    #[test]
    fn targets_show_which_containers_share_the_nodes_network() {
        let target = |name: &str, host_network: bool| api::TargetInfo {
            container: Some(api::ContainerRef {
                pod_namespace: "shop".into(),
                pod_name: name.into(),
                container_name: "c".into(),
                ..Default::default()
            }),
            state: "running".into(),
            target: format!("container:{name}"),
            host_network,
            ..Default::default()
        };
        let text = targets_table(&[target("web-0", false), target("proxy-0", true)]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("NETNS"), "{text}");
        let column = lines[0].find("NETNS").unwrap();
        assert_eq!(&lines[1][column..column + 1], "-", "{text}");
        assert_eq!(&lines[2][column..column + 4], "host", "{text}");
        assert_eq!(target_json(&target("proxy-0", true))["host_network"], true);
    }

    #[test]
    fn fault_json_names_kind_and_state() {
        let f = api::Fault {
            id: "f-0123456789abcdef".into(),
            kind: api::FaultKind::Process as i32,
            state: api::FaultState::Active as i32,
            deadline_unix_ms: 10_000,
            status: Some(api::fault::Status::Process(api::ProcessStatus {
                rounds: 2,
                signalled: vec![api::SignalledProcess {
                    pid: 5,
                    name: "sh".into(),
                    signal: "KILL".into(),
                    delivered: true,
                    ..Default::default()
                }],
                ..Default::default()
            })),
            ..Default::default()
        };
        let v = fault_json(&f);
        assert_eq!(v["kind"], "process");
        assert_eq!(v["state"], "active");
        assert_eq!(v["status"]["signalled"][0]["pid"], 5);
        let text = faults_table(&[f], 5_500);
        assert!(text.contains("5s"), "{text}");
        assert!(
            text.contains("1 signalled in 2 round(s) (last: KILL sh pid 5)"),
            "{text}"
        );
    }

    #[test]
    fn io_status_lists_each_device_once_with_its_limits() {
        let loop3 = api::IoDeviceLimit {
            device: "7:3".into(),
            name: "loop3".into(),
            write_bytes_per_second: 1 << 20,
            read_iops: 100,
            ..Default::default()
        };
        let unnamed = api::IoDeviceLimit {
            device: "259:0".into(),
            read_bytes_per_second: 512,
            write_iops: 20,
            ..Default::default()
        };
        let f = api::Fault {
            kind: api::FaultKind::Io as i32,
            state: api::FaultState::Active as i32,
            // Two containers of a pod: the same device and limits in each cgroup.
            status: Some(api::fault::Status::Io(api::IoStatus {
                cgroups: 2,
                devices: vec![loop3.clone(), unnamed, loop3],
            })),
            ..Default::default()
        };
        let text = faults_table(std::slice::from_ref(&f), 0);
        assert!(
            text.contains(
                "2 device(s): loop3 write 1.0 MiB/s read 100 iops, 259:0 read 512 B/s write 20 iops"
            ),
            "{text}"
        );
        let v = fault_json(&f);
        assert_eq!(v["kind"], "io");
        assert_eq!(v["status"]["cgroups"], 2);
        assert_eq!(v["status"]["devices"][0]["name"], "loop3");
        assert_eq!(v["status"]["devices"][0]["write_bytes_per_second"], 1 << 20);
        assert_eq!(v["status"]["devices"][1]["read_bytes_per_second"], 512);
        assert_eq!(per_second(1536 << 10), "1.5 MiB/s");

        let nothing = api::IoStatus {
            cgroups: 1,
            devices: Vec::new(),
        };
        assert_eq!(io_summary(&nothing), "1 cgroup(s), no device limited");
    }

    #[test]
    fn disk_fill_status_shows_each_file_and_its_filesystem() {
        let root = api::DiskFillFile {
            target: "container:abc".into(),
            path: "/.chaos-disk-fill-f-1".into(),
            bytes: 1 << 30,
            filesystem_bytes: 50 << 30,
            available_bytes: (123 << 30) / 10,
            node_filesystem: true,
        };
        let f = api::Fault {
            kind: api::FaultKind::DiskFill as i32,
            state: api::FaultState::Active as i32,
            status: Some(api::fault::Status::DiskFill(api::DiskFillStatus {
                files: vec![root.clone()],
            })),
            ..Default::default()
        };
        let text = faults_table(std::slice::from_ref(&f), 0);
        assert!(text.contains("disk_fill"), "{text}");
        assert!(
            text.contains(
                "1 file(s): /.chaos-disk-fill-f-1 1.0 GiB, 12.3 GiB of 50.0 GiB available (node \
                 filesystem)"
            ),
            "{text}"
        );
        let v = fault_json(&f);
        assert_eq!(v["kind"], "disk_fill");
        assert_eq!(v["status"]["files"][0]["path"], "/.chaos-disk-fill-f-1");
        assert_eq!(v["status"]["files"][0]["bytes"], 1u64 << 30);
        assert_eq!(v["status"]["files"][0]["node_filesystem"], true);

        // Two containers of a pod, one on a volume that is not the node's, one removed:
        // each file names its target.
        let volume = api::DiskFillFile {
            target: "container:def".into(),
            path: "/data/.chaos-disk-fill-f-1".into(),
            bytes: 0,
            filesystem_bytes: 2 << 40,
            available_bytes: 512 << 20,
            node_filesystem: false,
        };
        let two = api::DiskFillStatus {
            files: vec![root, volume],
        };
        assert_eq!(
            disk_fill_summary(&two),
            "2 file(s): container:abc /.chaos-disk-fill-f-1 1.0 GiB, 12.3 GiB of 50.0 GiB \
             available (node filesystem); container:def /data/.chaos-disk-fill-f-1 removed, \
             512.0 MiB of 2.0 TiB available"
        );
        assert_eq!(
            disk_fill_summary(&api::DiskFillStatus::default()),
            "no file"
        );
        assert_eq!(size(1023), "1023 B");
        assert_eq!(per_second(512), "512 B/s");
    }

    #[test]
    fn io_stress_status_shows_workers_and_the_cgroups_io() {
        let f = api::Fault {
            kind: api::FaultKind::IoStress as i32,
            state: api::FaultState::Active as i32,
            status: Some(api::fault::Status::IoStress(api::IoStressStatus {
                workers: 2,
                workers_running: 1,
                read_bytes: 3 << 29,
                written_bytes: 5 << 20,
                workers_read_bytes: 1 << 30,
                workers_written_bytes: 4 << 20,
                files: vec!["/data/.chaos-io-stress-a-0".into()],
            })),
            ..Default::default()
        };
        let text = faults_table(std::slice::from_ref(&f), 0);
        assert!(text.contains("io_stress"), "{text}");
        assert!(
            text.contains(
                "1 of 2 worker(s) running, workers read 1.0 GiB, wrote 4.0 MiB; \
                 cgroup read 1.5 GiB, written 5.0 MiB"
            ),
            "{text}"
        );
        let v = fault_json(&f);
        assert_eq!(v["kind"], "io_stress");
        assert_eq!(v["status"]["workers_running"], 1);
        assert_eq!(v["status"]["written_bytes"], 5u64 << 20);
        assert_eq!(v["status"]["workers_written_bytes"], 4u64 << 20);
        assert_eq!(v["status"]["files"][0], "/data/.chaos-io-stress-a-0");
    }
}
