//! Parsing of `/proc/PID/cgroup` texts as real kernels print them, and `cgroup:PATH` targets.

use crate::{CgroupError, CgroupLayout, CgroupVersion, ProcessCgroup};

/// A v1 node with co-mounted cpu,cpuacct and net_cls,net_prio, a named systemd hierarchy and a
/// containerd container (as on an older EKS AMI).
const V1_COMOUNTED: &str = "\
12:hugetlb:/default/chaos-test-abc
11:pids:/default/chaos-test-abc
10:memory:/default/chaos-test-abc
9:net_cls,net_prio:/default/chaos-test-abc
8:cpu,cpuacct:/default/chaos-test-abc
7:cpuset:/default/chaos-test-abc
6:devices:/default/chaos-test-abc
5:freezer:/default/chaos-test-abc
4:blkio:/default/chaos-test-abc
3:perf_event:/default/chaos-test-abc
1:name=systemd:/system.slice/containerd.service
";

/// This build host: separate cpu and cpuacct, a controller-less cgroup2 (`0::`).
const HYBRID: &str = "\
9:name=systemd:/
8:pids:/default/db
7:blkio:/default/db
6:freezer:/default/db
5:devices:/default/db
4:memory:/default/db
3:cpuset:/default/db
2:cpuacct:/default/db
1:cpu:/default/db
0::/
";

const V2_POD: &str = "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/cri-containerd-abcdef.scope\n";

#[test]
fn parses_v1_with_comounts_and_drops_named_hierarchies() {
    let cg = ProcessCgroup::parse(V1_COMOUNTED).unwrap();
    assert_eq!(cg.unified, None);
    for controller in [
        "hugetlb",
        "pids",
        "memory",
        "net_cls",
        "net_prio",
        "cpu",
        "cpuacct",
        "cpuset",
        "devices",
        "freezer",
        "blkio",
        "perf_event",
    ] {
        assert_eq!(
            cg.v1.get(controller).map(String::as_str),
            Some("/default/chaos-test-abc"),
            "{controller}"
        );
    }
    assert_eq!(cg.v1.len(), 12);
    assert!(!cg.v1.keys().any(|k| k.contains("systemd")));
    assert_eq!(cg.display_path(), "/default/chaos-test-abc");
    assert!(cg.is_v1());
}

#[test]
fn parses_hybrid_with_separate_cpu_and_cpuacct() {
    let cg = ProcessCgroup::parse(HYBRID).unwrap();
    assert_eq!(cg.unified.as_deref(), Some("/"));
    assert_eq!(cg.v1.len(), 8);
    assert_eq!(cg.v1["cpu"], "/default/db");
    assert_eq!(cg.v1["cpuacct"], "/default/db");
    // The v1 path is what bounds the process, not the controller-less cgroup2 root.
    assert_eq!(cg.display_path(), "/default/db");
}

#[test]
fn parses_v2() {
    let cg = ProcessCgroup::parse(V2_POD).unwrap();
    assert!(cg.v1.is_empty());
    assert!(!cg.is_v1());
    assert_eq!(
        cg.unified.as_deref(),
        Some(V2_POD.trim_end().trim_start_matches("0::"))
    );
    assert_eq!(
        cg.display_path(),
        V2_POD.trim_end().trim_start_matches("0::")
    );
}

#[test]
fn keeps_colons_inside_paths() {
    let cg = ProcessCgroup::parse("0::/weird:name/x\n").unwrap();
    assert_eq!(cg.unified.as_deref(), Some("/weird:name/x"));
}

#[test]
fn display_path_falls_back_to_memory_then_any_controller() {
    let cg = ProcessCgroup::parse("4:memory:/m\n8:pids:/p\n").unwrap();
    assert_eq!(cg.display_path(), "/m");
    let cg = ProcessCgroup::parse("8:pids:/p\n").unwrap();
    assert_eq!(cg.display_path(), "/p");
}

#[test]
fn rejects_malformed_texts() {
    for bad in [
        "",
        "garbage",
        "x:cpu:/a",
        "1:cpu:relative",
        "1:name=systemd:/only-named",
    ] {
        let err = ProcessCgroup::parse(bad).unwrap_err();
        assert!(matches!(err, CgroupError::Parse { .. }), "{bad:?}: {err}");
    }
}

#[test]
fn of_pid_reads_proc_and_reports_missing_process_as_not_found() {
    let proc_root = tempfile::tempdir().unwrap();
    std::fs::create_dir(proc_root.path().join("42")).unwrap();
    std::fs::write(proc_root.path().join("42/cgroup"), HYBRID).unwrap();
    let cg = ProcessCgroup::of_pid(proc_root.path(), 42).unwrap();
    assert_eq!(cg.v1["memory"], "/default/db");
    let err = ProcessCgroup::of_pid(proc_root.path(), 43).unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(err.to_string().contains("43/cgroup"), "{err}");
}

#[test]
fn of_pid_reads_the_real_proc_self() {
    let cg = ProcessCgroup::of_pid(std::path::Path::new("/proc"), std::process::id()).unwrap();
    assert!(cg.unified.is_some() || !cg.v1.is_empty());
}

#[test]
fn from_path_maps_to_every_controller_of_the_layout() {
    let v1 = CgroupLayout {
        version: CgroupVersion::Hybrid,
        controllers: vec!["cpu".into(), "cpuacct".into(), "memory".into()],
    };
    let cg = ProcessCgroup::from_path(&v1, "/default/db/").unwrap();
    assert_eq!(cg.unified, None);
    assert_eq!(cg.v1.len(), 3);
    assert!(cg.v1.values().all(|p| p == "/default/db"));

    let v2 = CgroupLayout {
        version: CgroupVersion::V2,
        controllers: vec!["cpu".into(), "memory".into()],
    };
    let cg = ProcessCgroup::from_path(&v2, "/kubepods.slice").unwrap();
    assert_eq!(cg.unified.as_deref(), Some("/kubepods.slice"));
    assert!(cg.v1.is_empty());
    assert_eq!(
        ProcessCgroup::from_path(&v2, "/")
            .unwrap()
            .unified
            .as_deref(),
        Some("/")
    );
}

#[test]
fn from_path_rejects_relative_and_climbing_paths() {
    let layout = CgroupLayout {
        version: CgroupVersion::V2,
        controllers: vec![],
    };
    for bad in [
        "default/db",
        "",
        "/a/../b",
        "/..",
        "/a/./b",
        "/a//b",
        "/a\0b",
    ] {
        let err = ProcessCgroup::from_path(&layout, bad).unwrap_err();
        assert!(
            matches!(err, CgroupError::InvalidPath { .. }),
            "{bad:?}: {err}"
        );
    }
}

#[test]
fn process_cgroup_round_trips_through_json() {
    let cg = ProcessCgroup::parse(HYBRID).unwrap();
    let json = serde_json::to_string(&cg).unwrap();
    let back: ProcessCgroup = serde_json::from_str(&json).unwrap();
    assert_eq!(back, cg);
}
