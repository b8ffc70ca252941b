//! `CgroupFs` against fake cgroupfs trees in a tempdir: v1 (co-mounted with symlinks),
//! hybrid (separate controllers + controller-less cgroup2) and v2.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use crate::{CgroupError, CgroupFs, CgroupVersion, CpuLimit, MemoryLimit, ProcessCgroup};

fn write(path: impl AsRef<Path>, text: &str) {
    let path = path.as_ref();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A cgroup directory: every real cgroup directory has `cgroup.procs`.
fn cgroup_dir(dir: PathBuf, procs: &str) -> PathBuf {
    write(dir.join("cgroup.procs"), procs);
    dir
}

/// v1 with `cpu,cpuacct` co-mounted plus `cpu`/`cpuacct` symlinks, memory, pids, cpuset and a
/// named systemd hierarchy; the container `/default/db` exists in each.
fn v1_tree(with_unified: bool) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    for hierarchy in ["cpu,cpuacct", "memory", "pids", "cpuset", "systemd"] {
        cgroup_dir(root.join(hierarchy), "1\n");
        cgroup_dir(root.join(hierarchy).join("default"), "");
        cgroup_dir(root.join(hierarchy).join("default/db"), "100\n101\n");
    }
    symlink("cpu,cpuacct", root.join("cpu")).unwrap();
    symlink("cpu,cpuacct", root.join("cpuacct")).unwrap();
    // pids lists the container's processes; give memory a different list to see which is read.
    write(root.join("memory/default/db/cgroup.procs"), "100\n");
    if with_unified {
        write(root.join("unified/cgroup.controllers"), "");
        write(root.join("unified/cgroup.procs"), "1\n");
    }
    tmp
}

fn v2_tree() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write(
        root.join("cgroup.controllers"),
        "cpuset cpu io memory hugetlb pids rdma misc\n",
    );
    cgroup_dir(root.to_path_buf(), "1\n");
    cgroup_dir(root.join("kubepods.slice"), "");
    cgroup_dir(root.join("kubepods.slice/pod1"), "");
    cgroup_dir(root.join("kubepods.slice/pod1/ctr"), "200\n201\n202\n");
    tmp
}

fn v1_db() -> ProcessCgroup {
    ProcessCgroup::parse(
        "9:pids:/default/db\n8:cpu,cpuacct:/default/db\n4:memory:/default/db\n3:cpuset:/default/db\n1:name=systemd:/\n",
    )
    .unwrap()
}

fn v2_ctr() -> ProcessCgroup {
    ProcessCgroup::parse("0::/kubepods.slice/pod1/ctr\n").unwrap()
}

#[test]
fn detects_v1_hybrid_and_v2() {
    let v1 = v1_tree(false);
    let layout = CgroupFs::at(v1.path()).layout().unwrap();
    assert_eq!(layout.version, CgroupVersion::V1);
    assert_eq!(
        layout.controllers,
        ["cpu", "cpuacct", "cpuset", "memory", "pids"]
    );

    let hybrid = v1_tree(true);
    let layout = CgroupFs::at(hybrid.path()).layout().unwrap();
    assert_eq!(layout.version, CgroupVersion::Hybrid);
    assert_eq!(
        layout.controllers,
        ["cpu", "cpuacct", "cpuset", "memory", "pids"]
    );

    let v2 = v2_tree();
    let layout = CgroupFs::at(v2.path()).layout().unwrap();
    assert_eq!(layout.version, CgroupVersion::V2);
    assert_eq!(
        layout.controllers,
        [
            "cpuset", "cpu", "io", "memory", "hugetlb", "pids", "rdma", "misc"
        ]
    );
}

#[test]
fn empty_or_missing_root_is_an_error() {
    let empty = tempfile::tempdir().unwrap();
    let err = CgroupFs::at(empty.path()).layout().unwrap_err();
    assert!(matches!(err, CgroupError::Unsupported { .. }), "{err}");
    let err = CgroupFs::at(empty.path().join("nope"))
        .layout()
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
}

#[test]
fn detects_this_hosts_real_layout() {
    // Whatever the host is, detection must succeed on it (the build host is hybrid).
    let layout = CgroupFs::host().layout().unwrap();
    assert!(
        layout.controllers.iter().any(|c| c == "memory"),
        "{layout:?}"
    );
}

#[test]
fn procs_prefers_pids_then_memory_on_v1() {
    let tree = v1_tree(true);
    let fs = CgroupFs::at(tree.path());
    assert_eq!(fs.procs(&v1_db()).unwrap(), [100, 101]);
    let mut without_pids = v1_db();
    without_pids.v1.remove("pids");
    assert_eq!(fs.procs(&without_pids).unwrap(), [100]);
    let only_cpu = ProcessCgroup::parse("2:cpu:/default/db\n").unwrap();
    assert_eq!(fs.procs(&only_cpu).unwrap(), [100, 101]);
}

#[test]
fn procs_reads_the_unified_path_on_v2() {
    let tree = v2_tree();
    let fs = CgroupFs::at(tree.path());
    assert_eq!(fs.procs(&v2_ctr()).unwrap(), [200, 201, 202]);
}

#[test]
fn exists_and_not_found() {
    let tree = v2_tree();
    let fs = CgroupFs::at(tree.path());
    assert!(fs.exists(&v2_ctr()));
    let gone = ProcessCgroup::parse("0::/kubepods.slice/pod1/gone\n").unwrap();
    assert!(!fs.exists(&gone));
    let err = fs.procs(&gone).unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(err.to_string().contains("pod1/gone/cgroup.procs"), "{err}");

    let tree = v1_tree(true);
    let fs = CgroupFs::at(tree.path());
    assert!(fs.exists(&v1_db()));
    let layout = fs.layout().unwrap();
    assert!(!fs.exists(&ProcessCgroup::from_path(&layout, "/default/gone").unwrap()));
}

#[test]
fn attach_writes_every_distinct_v1_directory() {
    let tree = v1_tree(true);
    let fs = CgroupFs::at(tree.path());
    let mut cg = v1_db();
    // A controller this tree does not mount is skipped, not an error.
    cg.v1.insert("blkio".into(), "/default/db".into());
    fs.attach(&cg, 4242).unwrap();
    for hierarchy in ["cpu,cpuacct", "memory", "pids", "cpuset"] {
        let written =
            std::fs::read_to_string(tree.path().join(hierarchy).join("default/db/cgroup.procs"))
                .unwrap();
        assert!(written.starts_with("4242"), "{hierarchy}: {written:?}");
    }
    // The named hierarchy is not a controller and is left alone.
    let systemd = std::fs::read_to_string(tree.path().join("systemd/default/db/cgroup.procs"));
    assert_eq!(systemd.unwrap(), "100\n101\n");
}

#[test]
fn attach_to_a_missing_cgroup_is_not_found() {
    let tree = v1_tree(false);
    let fs = CgroupFs::at(tree.path());
    let layout = fs.layout().unwrap();
    let gone = ProcessCgroup::from_path(&layout, "/default/gone").unwrap();
    let err = fs.attach(&gone, 1).unwrap_err();
    assert!(err.is_not_found(), "{err}");
}

#[test]
fn attach_writes_once_on_v2() {
    let tree = v2_tree();
    let fs = CgroupFs::at(tree.path());
    fs.attach(&v2_ctr(), 777).unwrap();
    let written =
        std::fs::read_to_string(tree.path().join("kubepods.slice/pod1/ctr/cgroup.procs")).unwrap();
    assert!(written.starts_with("777"), "{written:?}");
}

#[test]
fn v1_cpu_limit_takes_the_tightest_quota_and_walks_up_for_the_cpuset() {
    let tree = v1_tree(false);
    let root = tree.path();
    let cpu = root.join("cpu,cpuacct");
    write(cpu.join("cpu.cfs_quota_us"), "-1\n");
    write(cpu.join("cpu.cfs_period_us"), "100000\n");
    write(cpu.join("default/cpu.cfs_quota_us"), "300000\n");
    write(cpu.join("default/cpu.cfs_period_us"), "100000\n");
    write(cpu.join("default/db/cpu.cfs_quota_us"), "50000\n");
    write(cpu.join("default/db/cpu.cfs_period_us"), "100000\n");
    write(root.join("cpuset/cpuset.cpus"), "0-3\n");
    write(root.join("cpuset/default/cpuset.cpus"), "\n");
    write(root.join("cpuset/default/db/cpuset.cpus"), "\n");
    let fs = CgroupFs::at(root);
    let limit = fs.cpu_limit(&v1_db()).unwrap();
    assert_eq!(
        limit,
        CpuLimit {
            quota_cores: Some(0.5),
            cpuset_cpus: 4
        }
    );
    assert_eq!(limit.effective_cores(), 0.5);

    // Unlimited container under a 3-core parent: the parent bounds it.
    write(cpu.join("default/db/cpu.cfs_quota_us"), "-1\n");
    write(
        root.join("cpuset/default/db/cpuset.effective_cpus"),
        "1,3\n",
    );
    let limit = fs.cpu_limit(&v1_db()).unwrap();
    assert_eq!(limit.quota_cores, Some(3.0));
    assert_eq!(limit.cpuset_cpus, 2);
    assert_eq!(limit.effective_cores(), 2.0);
}

#[test]
fn v2_cpu_limit_reads_cpu_max_and_effective_cpuset() {
    let tree = v2_tree();
    let root = tree.path();
    write(root.join("cpuset.cpus.effective"), "0-7\n");
    write(root.join("kubepods.slice/cpu.max"), "max 100000\n");
    write(root.join("kubepods.slice/pod1/cpu.max"), "150000 100000\n");
    write(root.join("kubepods.slice/pod1/ctr/cpu.max"), "max 100000\n");
    let fs = CgroupFs::at(root);
    let limit = fs.cpu_limit(&v2_ctr()).unwrap();
    assert_eq!(limit.quota_cores, Some(1.5));
    assert_eq!(limit.cpuset_cpus, 8);

    write(
        root.join("kubepods.slice/pod1/ctr/cpuset.cpus.effective"),
        "2-3\n",
    );
    write(root.join("kubepods.slice/pod1/ctr/cpu.max"), "max\n");
    let err = fs.cpu_limit(&v2_ctr()).unwrap_err();
    assert!(matches!(err, CgroupError::Parse { .. }), "{err}");
    write(
        root.join("kubepods.slice/pod1/ctr/cpu.max"),
        "25000 50000\n",
    );
    let limit = fs.cpu_limit(&v2_ctr()).unwrap();
    assert_eq!(limit.quota_cores, Some(0.5));
    assert_eq!(limit.cpuset_cpus, 2);
}

#[test]
fn cpu_limit_of_a_missing_cgroup_is_not_found() {
    let tree = v2_tree();
    let fs = CgroupFs::at(tree.path());
    let gone = ProcessCgroup::parse("0::/nope\n").unwrap();
    assert!(fs.cpu_limit(&gone).unwrap_err().is_not_found());
    assert!(fs.memory_limit(&gone).unwrap_err().is_not_found());
}

#[test]
fn memory_limits_on_v1_and_v2() {
    let tree = v1_tree(false);
    let root = tree.path();
    write(
        root.join("memory/memory.limit_in_bytes"),
        "9223372036854771712\n",
    );
    write(
        root.join("memory/default/memory.limit_in_bytes"),
        "9223372036854771712\n",
    );
    write(
        root.join("memory/default/db/memory.limit_in_bytes"),
        "9223372036854771712\n",
    );
    let fs = CgroupFs::at(root);
    assert_eq!(fs.memory_limit(&v1_db()).unwrap(), None);
    write(
        root.join("memory/default/db/memory.limit_in_bytes"),
        "268435456\n",
    );
    assert_eq!(fs.memory_limit(&v1_db()).unwrap(), Some(268_435_456));

    let tree = v2_tree();
    let root = tree.path();
    write(root.join("kubepods.slice/pod1/memory.max"), "max\n");
    write(root.join("kubepods.slice/pod1/ctr/memory.max"), "max\n");
    let fs = CgroupFs::at(root);
    assert_eq!(fs.memory_limit(&v2_ctr()).unwrap(), None);
    write(root.join("kubepods.slice/pod1/memory.max"), "536870912\n");
    assert_eq!(fs.memory_limit(&v2_ctr()).unwrap(), Some(536_870_912));
}

#[test]
fn v2_effective_memory_limit_is_the_lowest_memory_max_up_the_tree() {
    let tree = v2_tree();
    let root = tree.path();
    let fs = CgroupFs::at(root);
    write(root.join("kubepods.slice/memory.max"), "max\n");
    write(root.join("kubepods.slice/pod1/memory.max"), "max\n");
    write(root.join("kubepods.slice/pod1/ctr/memory.max"), "max\n");
    assert_eq!(fs.effective_memory_limit(&v2_ctr()).unwrap(), None);

    // A pod-level limit bounds a container that has none of its own.
    write(root.join("kubepods.slice/pod1/memory.max"), "268435456\n");
    assert_eq!(
        fs.effective_memory_limit(&v2_ctr()).unwrap(),
        Some(MemoryLimit {
            bytes: 256 << 20,
            set_by: "/kubepods.slice/pod1".into(),
            file: "memory.max",
        })
    );
    // The container's own, higher limit does not lift the pod's; a lower one is the limit.
    write(
        root.join("kubepods.slice/pod1/ctr/memory.max"),
        "536870912\n",
    );
    assert_eq!(fs.memory_limit(&v2_ctr()).unwrap(), Some(256 << 20));
    write(
        root.join("kubepods.slice/pod1/ctr/memory.max"),
        "134217728\n",
    );
    let limit = fs.effective_memory_limit(&v2_ctr()).unwrap().unwrap();
    assert_eq!(limit.set_by, "/kubepods.slice/pod1/ctr");
    assert_eq!(
        limit.to_string(),
        "134217728 bytes (memory.max of /kubepods.slice/pod1/ctr)"
    );
    // A grandparent lower still.
    write(root.join("kubepods.slice/memory.max"), "67108864\n");
    let limit = fs.effective_memory_limit(&v2_ctr()).unwrap().unwrap();
    assert_eq!(
        (limit.bytes, limit.set_by.as_str()),
        (64 << 20, "/kubepods.slice")
    );

    write(root.join("kubepods.slice/memory.max"), "lots\n");
    let err = fs.effective_memory_limit(&v2_ctr()).unwrap_err();
    assert!(matches!(err, CgroupError::Parse { .. }), "{err}");
}

#[test]
fn v1_effective_memory_limit_counts_hierarchical_parents_only() {
    const UNLIMITED: &str = "9223372036854771712\n";
    let tree = v1_tree(false);
    let memory = tree.path().join("memory");
    let fs = CgroupFs::at(tree.path());
    write(memory.join("memory.limit_in_bytes"), UNLIMITED);
    write(memory.join("default/memory.limit_in_bytes"), "268435456\n");
    write(memory.join("default/db/memory.limit_in_bytes"), UNLIMITED);
    // No use_hierarchy file: hierarchical, as every kernel since 5.11 is.
    assert_eq!(
        fs.effective_memory_limit(&v1_db()).unwrap(),
        Some(MemoryLimit {
            bytes: 256 << 20,
            set_by: "/default".into(),
            file: "memory.limit_in_bytes",
        })
    );
    write(memory.join("default/memory.use_hierarchy"), "1\n");
    assert_eq!(fs.memory_limit(&v1_db()).unwrap(), Some(256 << 20));

    // A non-hierarchical parent does not count its children's usage: its limit bounds
    // nothing below it, and neither does anything above it.
    write(memory.join("default/memory.use_hierarchy"), "0\n");
    assert_eq!(fs.effective_memory_limit(&v1_db()).unwrap(), None);
    write(
        memory.join("default/db/memory.limit_in_bytes"),
        "536870912\n",
    );
    assert_eq!(
        fs.effective_memory_limit(&v1_db())
            .unwrap()
            .map(|l| l.set_by),
        Some("/default/db".into())
    );

    write(memory.join("default/memory.use_hierarchy"), "yes\n");
    let err = fs.effective_memory_limit(&v1_db()).unwrap_err();
    assert!(matches!(err, CgroupError::Parse { .. }), "{err}");
}

#[test]
fn usable_cpus_round_the_quota_up_within_the_cpuset() {
    let limit = |quota_cores, cpuset_cpus| CpuLimit {
        quota_cores,
        cpuset_cpus,
    };
    assert_eq!(limit(Some(1.0), 8).usable_cpus(), 1);
    assert_eq!(limit(Some(1.5), 8).usable_cpus(), 2);
    assert_eq!(limit(Some(0.1), 8).usable_cpus(), 1);
    assert_eq!(limit(Some(2.0), 8).usable_cpus(), 2);
    assert_eq!(limit(Some(300_000.0 / 100_000.0), 8).usable_cpus(), 3);
    // The cpuset caps the quota; without a quota the cpuset is the count.
    assert_eq!(limit(Some(6.0), 4).usable_cpus(), 4);
    assert_eq!(limit(None, 3).usable_cpus(), 3);
    assert_eq!(limit(None, 0).usable_cpus(), 1);
}

#[test]
fn usage_counters_on_v1() {
    let tree = v1_tree(false);
    let root = tree.path();
    write(
        root.join("cpu,cpuacct/default/db/cpuacct.usage"),
        "123456789\n",
    );
    write(
        root.join("memory/default/db/memory.usage_in_bytes"),
        "4096\n",
    );
    write(
        root.join("memory/default/db/memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
    );
    let fs = CgroupFs::at(root);
    assert_eq!(fs.cpu_usage_ns(&v1_db()).unwrap(), 123_456_789);
    assert_eq!(fs.memory_usage(&v1_db()).unwrap(), 4096);
    assert_eq!(fs.oom_kills(&v1_db()).unwrap(), 3);
}

#[test]
fn usage_counters_on_v2() {
    let tree = v2_tree();
    let dir = tree.path().join("kubepods.slice/pod1/ctr");
    write(
        dir.join("cpu.stat"),
        "usage_usec 2500\nuser_usec 2000\nsystem_usec 500\nnr_periods 0\n",
    );
    write(dir.join("memory.current"), "8192\n");
    write(
        dir.join("memory.events"),
        "low 0\nhigh 0\nmax 7\noom 2\noom_kill 1\noom_group_kill 0\n",
    );
    let fs = CgroupFs::at(tree.path());
    assert_eq!(fs.cpu_usage_ns(&v2_ctr()).unwrap(), 2_500_000);
    assert_eq!(fs.memory_usage(&v2_ctr()).unwrap(), 8192);
    assert_eq!(fs.oom_kills(&v2_ctr()).unwrap(), 1);
}

#[test]
fn missing_controller_is_reported_with_the_cgroup() {
    let tree = v1_tree(false);
    let fs = CgroupFs::at(tree.path());
    let cg = ProcessCgroup::parse("8:pids:/default/db\n").unwrap();
    let err = fs.memory_usage(&cg).unwrap_err();
    assert!(matches!(err, CgroupError::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("/default/db"), "{err}");
    // Without a cpu controller there is no quota; the cpuset is still read.
    write(tree.path().join("cpuset/default/db/cpuset.cpus"), "0-1\n");
    let cg = ProcessCgroup::parse("8:pids:/default/db\n3:cpuset:/default/db\n").unwrap();
    let limit = fs.cpu_limit(&cg).unwrap();
    assert_eq!(limit.quota_cores, None);
    assert_eq!(limit.cpuset_cpus, 2);
}

#[test]
fn counts_cpu_lists() {
    assert_eq!(crate::parse_cpu_list("0-3,8,10-11"), Ok(7));
    assert_eq!(crate::parse_cpu_list("0"), Ok(1));
    assert_eq!(crate::parse_cpu_list(""), Ok(0));
    assert!(crate::parse_cpu_list("3-1").is_err());
    assert!(crate::parse_cpu_list("a").is_err());
}
