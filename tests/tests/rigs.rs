//! The test rigs themselves, against the real kernel and a real containerd: what the fixtures
//! promise (labels, cgroups, limits, veth connectivity, cleanup) is read back from `ctr`,
//! /proc, /sys and `ip`. Needs root and a running containerd (`scripts/test` starts one).

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use chaos_tests::command::run_bounded;
use chaos_tests::containerd::{
    self, CRI_NAMESPACE, ContainerSpec, LABEL_CONTAINER_NAME, LABEL_POD_NAME, LABEL_POD_NAMESPACE,
    TestContainer,
};
use chaos_tests::netns::TestNetns;

const MIB: u64 = 1 << 20;

/// Waits, bounded, until `/proc/PID` disappears.
fn wait_for_pid_exit(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn ping_three_times(address: &str) -> chaos_tests::command::CommandOutput {
    run_bounded(
        "ping",
        &["-c", "3", "-W", "1", "-i", "0.2", address],
        Duration::from_secs(20),
    )
    .unwrap()
}

/// A minimal HTTP/1.0 GET with connect and read timeouts; returns the raw response.
fn http_get(server: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&server, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {server}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

fn read_trimmed(path: &Path) -> String {
    fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("reading {}: {error}", path.display()))
        .trim()
        .to_string()
}

#[test]
fn container_carries_cri_labels_and_runs_in_its_cgroup_with_limits() {
    let spec = ContainerSpec {
        cpus: Some(0.5),
        memory_limit_bytes: Some(64 * MIB),
        ..ContainerSpec::pod("chaos-test-ns", "db-0", "db")
    };
    let container = TestContainer::start(spec).unwrap();
    assert!(container.id.starts_with("chaos-test-"), "{}", container.id);
    assert_eq!(container.runtime_namespace, CRI_NAMESPACE);
    assert_eq!(container.task_status().unwrap(), "RUNNING");
    assert_eq!(container.pod_target(), "pod:chaos-test-ns/db-0/db");

    let labels = containerd::container_labels(CRI_NAMESPACE, &container.id).unwrap();
    assert_eq!(labels[LABEL_POD_NAMESPACE], "chaos-test-ns");
    assert_eq!(labels[LABEL_POD_NAME], "db-0");
    assert_eq!(labels[LABEL_CONTAINER_NAME], "db");

    let pid = container.pid().unwrap();
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert_eq!(
        cmdline, b"/bin/sleep\0infinity\0",
        "pid {pid} is not the container's sleep"
    );

    let cgroup_path = container.cgroup_path().unwrap();
    assert_eq!(cgroup_path, format!("/{CRI_NAMESPACE}/{}", container.id));
    let cgroup_dir = container.cgroup_dir().unwrap();
    let procs = read_trimmed(&cgroup_dir.join("cgroup.procs"));
    assert!(
        procs.lines().any(|line| line == pid.to_string()),
        "pid {pid} not in {}: {procs}",
        cgroup_dir.display()
    );

    // The limits runc wrote, read back from whichever cgroup version the kernel runs.
    if cgroup_dir.join("cpu.max").exists() {
        assert_eq!(read_trimmed(&cgroup_dir.join("cpu.max")), "50000 100000");
        assert_eq!(
            read_trimmed(&cgroup_dir.join("memory.max")),
            (64 * MIB).to_string()
        );
    } else {
        assert_eq!(read_trimmed(&cgroup_dir.join("cpu.cfs_quota_us")), "50000");
        let memory_dir =
            Path::new("/sys/fs/cgroup/memory").join(cgroup_path.trim_start_matches('/'));
        assert_eq!(
            read_trimmed(&memory_dir.join("memory.limit_in_bytes")),
            (64 * MIB).to_string()
        );
    }
}

#[test]
fn container_runs_a_custom_command_and_exec_works() {
    let spec = ContainerSpec {
        command: vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo chaos-test-hello; exec sleep 600".into(),
        ],
        ..ContainerSpec::default()
    };
    let container = TestContainer::start(spec).unwrap();
    let exec = container
        .exec(&["cat", "/proc/1/cmdline"])
        .unwrap()
        .check()
        .unwrap();
    assert_eq!(exec.stdout, "sleep\u{0}600\u{0}");
    let failing = container.exec(&["sh", "-c", "exit 7"]).unwrap();
    assert_eq!(failing.status.code(), Some(7));

    let deadline = Instant::now() + Duration::from_secs(30);
    while !container.log().unwrap().contains("chaos-test-hello") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        container.log().unwrap().contains("chaos-test-hello"),
        "log: {:?}",
        container.log()
    );
}

#[test]
fn dropping_a_container_removes_task_container_and_process() {
    let container = TestContainer::start(ContainerSpec::default()).unwrap();
    let (id, pid) = (container.id.clone(), container.pid().unwrap());
    let cgroup_dir = container.cgroup_dir().unwrap();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    assert!(containerd::container_exists(CRI_NAMESPACE, &id).unwrap());

    drop(container);

    assert_eq!(
        containerd::task_status(CRI_NAMESPACE, &id).unwrap(),
        "absent"
    );
    assert!(!containerd::container_exists(CRI_NAMESPACE, &id).unwrap());
    assert!(
        wait_for_pid_exit(pid, Duration::from_secs(10)),
        "pid {pid} still alive after drop"
    );
    assert!(!cgroup_dir.exists(), "{} left behind", cgroup_dir.display());
}

#[test]
fn a_short_lived_task_is_reported_stopped_and_cleaned_up() {
    let spec = ContainerSpec {
        command: vec!["/bin/true".into()],
        ..ContainerSpec::default()
    };
    let container = TestContainer::start(spec).unwrap();
    container
        .wait_status("STOPPED", Duration::from_secs(30))
        .unwrap();
    assert!(
        container.pid().is_ok(),
        "a stopped task still has its pid in `ctr task ls`"
    );
    let id = container.id.clone();
    drop(container);
    assert_eq!(
        containerd::task_status(CRI_NAMESPACE, &id).unwrap(),
        "absent"
    );
    assert!(!containerd::container_exists(CRI_NAMESPACE, &id).unwrap());
}

#[test]
fn netns_veth_answers_ping_and_is_removed_on_drop() {
    let netns = TestNetns::create().unwrap();
    let (name, host_ifname) = (netns.name().to_string(), netns.host_ifname().to_string());
    assert!(name.starts_with("chaos-test-") && host_ifname.starts_with("chaos-test-"));
    assert!(netns.path().exists());
    assert!(Path::new("/sys/class/net").join(&host_ifname).exists());

    let inside = netns
        .exec(&["ip", "-4", "addr", "show", "dev", netns.inner_ifname()])
        .unwrap()
        .check()
        .unwrap();
    assert!(
        inside.stdout.contains(&format!("{}/30", netns.inner_ip())),
        "{}",
        inside.stdout
    );
    let route = netns
        .exec(&["ip", "route", "show", "default"])
        .unwrap()
        .check()
        .unwrap();
    assert!(
        route.stdout.contains(&format!("via {}", netns.host_ip())),
        "{}",
        route.stdout
    );

    let ping = ping_three_times(&netns.inner_ip().to_string());
    assert!(
        ping.success(),
        "ping {} failed: {}{}",
        netns.inner_ip(),
        ping.stdout,
        ping.stderr
    );
    assert!(ping.stdout.contains("3 received"), "{}", ping.stdout);
    let ping_back = netns
        .exec(&["ping", "-c", "1", "-W", "1", &netns.host_ip().to_string()])
        .unwrap();
    assert!(
        ping_back.success(),
        "{}{}",
        ping_back.stdout,
        ping_back.stderr
    );

    drop(netns);

    let list = run_bounded("ip", &["netns", "list"], Duration::from_secs(10))
        .unwrap()
        .check()
        .unwrap();
    assert!(
        !list
            .stdout
            .lines()
            .any(|line| line.split_whitespace().next() == Some(name.as_str())),
        "{}",
        list.stdout
    );
    assert!(
        !Path::new("/sys/class/net").join(&host_ifname).exists(),
        "{host_ifname} left behind"
    );
}

#[test]
fn netns_fixtures_in_one_process_get_distinct_subnets() {
    let fixtures: Vec<TestNetns> = (0..4).map(|_| TestNetns::create().unwrap()).collect();
    let names: HashSet<_> = fixtures.iter().map(|n| n.name().to_string()).collect();
    let inner_ips: HashSet<_> = fixtures.iter().map(|n| n.inner_ip()).collect();
    assert_eq!((names.len(), inner_ips.len()), (4, 4));
    for netns in &fixtures {
        let ping = run_bounded(
            "ping",
            &["-c", "1", "-W", "1", &netns.inner_ip().to_string()],
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(ping.success(), "{}: {}", netns.name(), ping.stdout);
    }
}

#[test]
fn container_in_a_test_netns_sees_the_veth() {
    let netns = TestNetns::create().unwrap();
    let spec = ContainerSpec {
        netns: Some(netns.path()),
        command: vec![
            "/bin/httpd".into(),
            "-f".into(),
            "-p".into(),
            "8080".into(),
            "-h".into(),
            "/etc".into(),
        ],
        ..ContainerSpec::default()
    };
    let container = TestContainer::start(spec).unwrap();
    let pid = container.pid().unwrap();

    // The task's network namespace is the fixture's one (same nsfs inode).
    let task_netns = fs::metadata(format!("/proc/{pid}/ns/net")).unwrap();
    let fixture_netns = fs::metadata(netns.path()).unwrap();
    assert_eq!(task_netns.ino(), fixture_netns.ino());

    let net_dev = fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap();
    assert!(
        net_dev.contains(&format!("{}:", netns.inner_ifname())),
        "{net_dev}"
    );
    let addr = container
        .exec(&["ip", "-4", "addr", "show", "dev", "eth0"])
        .unwrap()
        .check()
        .unwrap();
    assert!(
        addr.stdout.contains(&netns.inner_ip().to_string()),
        "{}",
        addr.stdout
    );

    let ping = ping_three_times(&netns.inner_ip().to_string());
    assert!(ping.success(), "{}{}", ping.stdout, ping.stderr);

    // The HTTP server in the container answers the host through the veth (bounded retries:
    // httpd may still be binding).
    let server = SocketAddr::from((netns.inner_ip(), 8080));
    let mut last_error = None;
    for _ in 0..40 {
        match http_get(server, "/passwd") {
            Ok(response) => {
                assert!(
                    response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"),
                    "{response}"
                );
                assert!(response.contains("root:x:0:0"), "{response}");
                return;
            }
            Err(error) => last_error = Some(error),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let url = format!("http://{server}/passwd");
    let last = last_error.map(|e| e.to_string());
    panic!("GET {url} never succeeded: {last:?}");
    // Container goes first (declared last), then the namespace it used.
}

#[test]
fn ensure_containerd_answers() {
    containerd::ensure_containerd().unwrap();
}
