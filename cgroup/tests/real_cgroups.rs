//! chaos-cgroup against the running kernel: creates `chaos-test-*` cgroups (root needed),
//! sets limits, attaches spawned processes and reads limits and usage back.
//! Works on this host (v1 hybrid) and in the v2 test VM.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chaos_cgroup::test_support::{TestCgroup, TestLimits};
use chaos_cgroup::{CgroupFs, CgroupVersion, ProcessCgroup};

const MIB: u64 = 1024 * 1024;

/// Kills and reaps a spawned helper when the test ends, pass or fail.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl ChildGuard {
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests create real cgroups and must run as root"
    );
}

fn spawn(program: &str, args: &[&str]) -> ChildGuard {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {program}: {e}"));
    ChildGuard(child)
}

/// The child's own view of its cgroups, for the controllers the test cgroup has.
fn assert_member(test: &TestCgroup, pid: u32) {
    let seen = ProcessCgroup::of_pid(Path::new("/proc"), pid).unwrap();
    let want = test.cgroup();
    if want.is_v1() {
        for (controller, path) in &want.v1 {
            assert_eq!(
                seen.v1.get(controller),
                Some(path),
                "{controller} of {seen:?}"
            );
        }
    } else {
        assert_eq!(seen.unified, want.unified);
    }
    assert!(test.fs().procs(want).unwrap().contains(&pid));
}

#[test]
fn host_layout_and_own_membership_resolve() {
    let fs = CgroupFs::host();
    let layout = fs.layout().unwrap();
    let me = ProcessCgroup::of_pid(Path::new("/proc"), std::process::id()).unwrap();
    assert!(
        fs.exists(&me),
        "own cgroup {me:?} not found under {layout:?}"
    );
    assert!(fs.procs(&me).unwrap().contains(&std::process::id()));
    match layout.version {
        CgroupVersion::V2 => assert!(!me.is_v1()),
        CgroupVersion::V1 | CgroupVersion::Hybrid => assert!(me.is_v1()),
    }
}

#[test]
fn limits_are_read_back_from_a_real_cgroup() {
    require_root();
    let test = TestCgroup::create(TestLimits {
        cpu_quota_cores: Some(0.5),
        memory_bytes: Some(256 * MIB),
        high_cpu_weight: false,
    })
    .unwrap();
    let fs = test.fs();
    assert!(fs.exists(test.cgroup()));
    let cpu = fs.cpu_limit(test.cgroup()).unwrap();
    assert_eq!(cpu.quota_cores, Some(0.5));
    let online = std::thread::available_parallelism().unwrap().get();
    assert!(
        cpu.cpuset_cpus >= 1 && cpu.cpuset_cpus <= online.max(cpu.cpuset_cpus),
        "{cpu:?}"
    );
    assert_eq!(cpu.effective_cores(), 0.5);
    assert_eq!(fs.memory_limit(test.cgroup()).unwrap(), Some(256 * MIB));
    // The same cgroup found through a `cgroup:PATH` target.
    let layout = fs.layout().unwrap();
    let by_path = ProcessCgroup::from_path(&layout, &test.path()).unwrap();
    assert!(fs.exists(&by_path));
    assert_eq!(fs.memory_limit(&by_path).unwrap(), Some(256 * MIB));
}

#[test]
fn attach_moves_a_process_and_cpu_usage_follows_the_quota() {
    require_root();
    let test = TestCgroup::create(TestLimits {
        cpu_quota_cores: Some(0.5),
        memory_bytes: None,
        high_cpu_weight: true,
    })
    .unwrap();
    let fs = test.fs();
    assert_eq!(fs.cpu_usage_ns(test.cgroup()).unwrap(), 0);
    let busy = spawn("sh", &["-c", "while :; do :; done"]);
    fs.attach(test.cgroup(), busy.pid()).unwrap();
    assert_member(&test, busy.pid());

    std::thread::sleep(Duration::from_millis(500));
    let start_ns = fs.cpu_usage_ns(test.cgroup()).unwrap();
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let used_ns = fs.cpu_usage_ns(test.cgroup()).unwrap() - start_ns;
    let cores = used_ns as f64 / start.elapsed().as_nanos() as f64;
    eprintln!("busy loop under a 0.5-core quota used {cores:.3} cores");
    // The quota caps it at 0.5; a loaded 2-core machine may give it somewhat less.
    assert!((0.35..=0.55).contains(&cores), "{cores:.3} cores");
}

#[test]
fn memory_usage_rises_with_an_allocation_after_attach() {
    require_root();
    let test = TestCgroup::create(TestLimits::default()).unwrap();
    let fs = test.fs();
    // Allocates and writes 64 MiB only after the test has attached it (a line on stdin).
    let mut hog = spawn(
        "/usr/bin/python3",
        &[
            "-c",
            "import sys,time; sys.stdin.readline(); b=b'a'*(64<<20); time.sleep(30)",
        ],
    );
    fs.attach(test.cgroup(), hog.pid()).unwrap();
    let before = fs.memory_usage(test.cgroup()).unwrap();
    hog.0.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut grew = 0;
    while Instant::now() < deadline {
        grew = fs
            .memory_usage(test.cgroup())
            .unwrap()
            .saturating_sub(before);
        if grew >= 64 * MIB {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("memory usage grew by {} KiB", grew / 1024);
    assert!(
        (64 * MIB..=72 * MIB).contains(&grew),
        "grew by {grew} bytes"
    );
}

#[test]
fn an_oom_kill_is_counted() {
    require_root();
    let test = TestCgroup::create(TestLimits {
        cpu_quota_cores: None,
        memory_bytes: Some(32 * MIB),
        high_cpu_weight: false,
    })
    .unwrap();
    let fs = test.fs();
    assert_eq!(fs.oom_kills(test.cgroup()).unwrap(), 0);
    let mut hog = spawn(
        "/usr/bin/python3",
        &[
            "-c",
            "import sys,time; sys.stdin.readline(); b=b'a'*(128<<20); time.sleep(30)",
        ],
    );
    fs.attach(test.cgroup(), hog.pid()).unwrap();
    hog.0.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let status = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = hog.0.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() >= deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    use std::os::unix::process::ExitStatusExt;
    let status = status.expect("the 128 MiB allocation was not OOM-killed within 10 s");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    assert!(fs.oom_kills(test.cgroup()).unwrap() >= 1);
}

#[test]
fn attaching_a_vanished_pid_fails_as_not_found() {
    require_root();
    let test = TestCgroup::create(TestLimits::default()).unwrap();
    let mut gone = spawn("true", &[]);
    let pid = gone.pid();
    gone.0.wait().unwrap();
    let err = test.fs().attach(test.cgroup(), pid).unwrap_err();
    assert!(err.is_not_found(), "{err}");
}

#[test]
fn test_cgroups_are_removed_on_drop() {
    require_root();
    let fs = CgroupFs::host();
    let test = TestCgroup::create(TestLimits::default()).unwrap();
    let cg = test.cgroup().clone();
    let sleeper = spawn("sleep", &["30"]);
    fs.attach(&cg, sleeper.pid()).unwrap();
    drop(test); // kills the sleeper (left a zombie until its guard reaps it) and removes the dirs
    assert!(!fs.exists(&cg), "{cg:?} still exists");
    drop(sleeper);
}
