//! `chaosctl run --dry-run` on every shipped experiment against a real agent (mTLS) and
//! real containerd containers labelled as the files' pods, with the agents overridden by
//! `--agents`. Selectors that need the Kubernetes API (labels, zone) are answered by a
//! small fake API server on loopback, reached through a kubeconfig: the API server is
//! the one thing mocked here. Every dry run must print its plan and inject nothing.
//!
//! Isolation: the machine's containerd is shared, so the containers live in a containerd
//! namespace of their own and the agent searches only that one.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chaos_proto::api;
use chaos_tests::agent::{binary, free_port, http_get, journal_len, make_certs, state_dir};
use chaos_tests::containerd::{ContainerSpec, TestContainer, ctr};
use chaos_tests::netns::TestNetns;
use chaosctl::agents::client::{AgentAddress, connect};
use serde_json::{Value, json};
use tempfile::TempDir;

const ZONE: &str = "us-east-1a";
const CHAOSCTL_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- the rig

/// A unique name per rig in this process.
fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Containers in a containerd namespace of their own; the namespace is removed after them.
struct Pods {
    runtime_namespace: String,
    containers: Vec<TestContainer>,
    /// The network namespaces of the pods that have an address (dropped after the
    /// containers, which the Drop below removes first).
    networks: Vec<TestNetns>,
    /// Every container's /etc/resolv.conf (bind-mounted, as the kubelet gives each pod the
    /// cluster DNS): a DNS step reads its targets' nameservers from it.
    resolv_conf: tempfile::NamedTempFile,
}

impl Pods {
    fn start(pods: &[(&str, &str, &str)]) -> Result<Pods> {
        Pods::start_with_networks(pods, &[])
    }

    /// `pods` in network namespaces of their own with only `lo`, `networked` each in a
    /// TestNetns (an address on eth0, as a CNI plugin gives a pod).
    fn start_with_networks(
        pods: &[(&str, &str, &str)],
        networked: &[(&str, &str, &str)],
    ) -> Result<Pods> {
        let resolv_conf = tempfile::Builder::new()
            .prefix("chaos-test-resolv-")
            .tempfile()?;
        std::fs::write(
            resolv_conf.path(),
            "search svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n",
        )?;
        let mut rig = Pods {
            runtime_namespace: unique("chaos-dryrun"),
            containers: Vec::new(),
            networks: Vec::new(),
            resolv_conf,
        };
        for (index, (namespace, pod, container)) in pods.iter().chain(networked).enumerate() {
            let netns = if index >= pods.len() {
                let netns = TestNetns::create()?;
                let path = netns.path();
                rig.networks.push(netns);
                Some(path)
            } else {
                None
            };
            let spec = ContainerSpec {
                runtime_namespace: rig.runtime_namespace.clone(),
                netns,
                read_only_mounts: vec![(
                    rig.resolv_conf.path().to_path_buf(),
                    "/etc/resolv.conf".into(),
                )],
                ..ContainerSpec::pod(namespace, pod, container)
            };
            rig.containers.push(TestContainer::start(spec)?);
        }
        Ok(rig)
    }

    /// `namespace/pod/container` → `container:ID`.
    fn targets(&self) -> BTreeMap<String, String> {
        self.containers
            .iter()
            .map(|c| {
                let s = &c.spec;
                (
                    format!("{}/{}/{}", s.pod_namespace, s.pod_name, s.container_name),
                    c.target(),
                )
            })
            .collect()
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        self.containers.clear();
        // containerd may still hold the removed containers' resources for a moment.
        let ns = self.runtime_namespace.clone();
        let mut last = None;
        for _ in 0..20 {
            match ctr(&ns, &["namespaces", "rm", &ns]).and_then(|o| o.check()) {
                Ok(_) => {
                    remove_namespace_cgroups(&ns);
                    return;
                }
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        if let Some(e) = last {
            eprintln!("removing containerd namespace {ns}: {e}");
        }
    }
}

/// containerd makes a parent cgroup per namespace (`/<ns>` under every v1 controller, or
/// in the v2 tree) and leaves it when the namespace goes: remove the empty directories.
fn remove_namespace_cgroups(ns: &str) {
    let root = std::path::Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.join(ns)];
    if let Ok(controllers) = std::fs::read_dir(root) {
        dirs.extend(controllers.flatten().map(|c| c.path().join(ns)));
    }
    for dir in dirs {
        // Fails harmlessly where there is no such directory (or a symlinked controller
        // already removed it); a non-empty one is left and reported.
        if let Err(e) = std::fs::remove_dir(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("removing {}: {e}", dir.display());
        }
    }
}

/// A real chaos-agent (mTLS) that searches only the rig's containerd namespace and
/// reports `node` as its node name. Stopped on drop.
struct Agent {
    child: Child,
    grpc: SocketAddr,
    tls: PathBuf,
    log: PathBuf,
}

impl Agent {
    fn start(pods: &Pods, node: &str, tls: &Path, state: &Path) -> Result<Agent> {
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let log = state.join("agent.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new(binary("chaos-agent")?)
            .args(["--listen", &grpc.to_string()])
            .args(["--metrics-listen", &metrics.to_string()])
            .arg("--state-dir")
            .arg(state)
            .arg("--tls-dir")
            .arg(tls)
            .args(["--node-name", node])
            .args(["--containerd-namespace", &pods.runtime_namespace])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("spawning chaos-agent")?;
        let mut agent = Agent {
            child,
            grpc,
            tls: tls.to_path_buf(),
            log,
        };
        let started = Instant::now();
        loop {
            if let Some(status) = agent.child.try_wait()? {
                bail!("chaos-agent exited with {status}:\n{}", agent.log());
            }
            if http_get(metrics, "/readyz").is_ok_and(|(code, _)| code == 200) {
                return Ok(agent);
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("chaos-agent not ready after 60 s:\n{}", agent.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every fault the agent has, active or ended.
    fn faults(&self) -> Result<Vec<api::Fault>> {
        let address = AgentAddress {
            address: self.grpc.to_string(),
            tls_dir: Some(self.tls.clone()),
            plaintext: false,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let mut client = connect(&address).await?;
            Ok(client
                .list(api::ListRequest {
                    include_ended: true,
                })
                .await?
                .into_inner()
                .faults)
        })
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- fake Kubernetes API

/// Pods `(namespace, name, labels)` and nodes `(name, zone)` served as the core v1 API
/// over plain HTTP; label selectors are `k=v` pairs joined by commas. Every request is
/// recorded; anything but the two list calls and pod DELETE answers 404 (or 403 when
/// `forbidden` names the resource).
struct FakeApi {
    address: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    dir: TempDir,
}

#[derive(Clone)]
struct ApiData {
    pods: Vec<(String, String, BTreeMap<String, String>)>,
    nodes: Vec<(String, String)>,
    forbidden: Option<&'static str>,
}

impl FakeApi {
    fn start(data: ApiData) -> Result<FakeApi> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let address = listener.local_addr()?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (requests, stop) = (Arc::clone(&requests), Arc::clone(&stop));
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    if let Ok(stream) = stream {
                        let _ = serve_one(stream, &data, &requests);
                    }
                }
            })
        };
        let dir = tempfile::Builder::new()
            .prefix("chaos-test-kubeconfig-")
            .tempdir()?;
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{address}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: nobody\n\
             current-context: fake\nusers:\n- name: nobody\n  user: {{}}\n"
        );
        std::fs::write(dir.path().join("kubeconfig"), kubeconfig)?;
        Ok(FakeApi {
            address,
            requests,
            stop,
            thread: Some(thread),
            dir,
        })
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.address, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve_one(stream: TcpStream, data: &ApiData, requests: &Mutex<Vec<String>>) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, target) = (
        parts.next().unwrap_or_default().to_string(),
        parts.next().unwrap_or_default().to_string(),
    );
    let mut length = 0;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let body = String::from_utf8_lossy(&body).into_owned();
    if let Ok(mut all) = requests.lock() {
        all.push(format!("{method} {target} {body}").trim_end().to_string());
    }
    let (status, answer) = answer(&method, &target, data);
    let text = answer.to_string();
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    )?;
    stream.flush()?;
    Ok(())
}

fn answer(method: &str, target: &str, data: &ApiData) -> (u16, Value) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query: BTreeMap<String, String> = query
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_string(), decode(v)))
        .collect();
    let selector: BTreeMap<String, String> = query
        .get("labelSelector")
        .map(|s| {
            s.split(',')
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .unwrap_or_default();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let resource = match segments.as_slice() {
        ["api", "v1", "nodes"] => "nodes",
        ["api", "v1", "pods"] | ["api", "v1", "namespaces", _, "pods"] => "pods",
        ["api", "v1", "namespaces", _, "pods", _] => "pods",
        _ => "",
    };
    if data.forbidden == Some(resource) {
        return (
            403,
            status(403, "Forbidden", &format!("{resource} is forbidden")),
        );
    }
    let matches =
        |labels: &BTreeMap<String, String>| selector.iter().all(|(k, v)| labels.get(k) == Some(v));
    match (method, segments.as_slice()) {
        ("GET", ["api", "v1", "nodes"]) => {
            let items: Vec<Value> = data
                .nodes
                .iter()
                .filter(|(_, zone)| {
                    matches(&BTreeMap::from([(
                        "topology.kubernetes.io/zone".to_string(),
                        zone.clone(),
                    )]))
                })
                .map(|(name, zone)| {
                    json!({"metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}}})
                })
                .collect();
            (
                200,
                json!({"kind": "NodeList", "apiVersion": "v1", "metadata": {}, "items": items}),
            )
        }
        ("GET", ["api", "v1", "pods"]) | ("GET", ["api", "v1", "namespaces", _, "pods"]) => {
            let namespace = segments.get(3).copied();
            let items: Vec<Value> = data
                .pods
                .iter()
                .filter(|(ns, _, labels)| namespace.is_none_or(|n| n == ns) && matches(labels))
                .map(|(ns, name, labels)| {
                    json!({"metadata": {"namespace": ns, "name": name, "labels": labels}})
                })
                .collect();
            (
                200,
                json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}),
            )
        }
        ("DELETE", ["api", "v1", "namespaces", ns, "pods", name]) => {
            if data.pods.iter().any(|(n, p, _)| n == ns && p == name) {
                (
                    200,
                    json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"namespace": ns, "name": name}}),
                )
            } else {
                (
                    404,
                    status(404, "NotFound", &format!("pods \"{name}\" not found")),
                )
            }
        }
        _ => (404, status(404, "NotFound", "no such path in the fake API")),
    }
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn decode(text: &str) -> String {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("00");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

// ---------------------------------------------------------------- chaosctl

fn experiments_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|root| root.join("experiments"))
        .unwrap_or_default()
}

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// `chaosctl run FILE --dry-run --agents AGENT --tls-dir TLS [--kubeconfig K] EXTRA...`,
/// with no KUBECONFIG or home kubeconfig to fall back on.
fn dry_run(
    file: &Path,
    agent: &Agent,
    kubeconfig: Option<&Path>,
    extra: &[&str],
) -> Result<Outcome> {
    let home = tempfile::Builder::new()
        .prefix("chaos-test-home-")
        .tempdir()?;
    let mut command = Command::new(binary("chaosctl")?);
    command
        .arg("run")
        .arg(file)
        .arg("--dry-run")
        .args(["--agents", &agent.grpc.to_string()])
        .arg("--tls-dir")
        .arg(&agent.tls)
        .args(extra)
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("CHAOS_AGENT")
        .env("HOME", home.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(kubeconfig) = kubeconfig {
        command.arg("--kubeconfig").arg(kubeconfig);
    }
    let mut child = command.spawn()?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > CHAOSCTL_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "chaosctl run --dry-run {} took over {CHAOSCTL_TIMEOUT:?}",
                file.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut out) = child.stdout.take() {
        out.read_to_string(&mut stdout)?;
    }
    if let Some(mut err) = child.stderr.take() {
        err.read_to_string(&mut stderr)?;
    }
    Ok(Outcome {
        code: status.code(),
        stdout,
        stderr,
    })
}

/// Which pods (`ns/pod/container`) a step may choose, and how many it must.
struct StepExpectation {
    step: &'static str,
    kind: &'static str,
    among: &'static [&'static str],
    count: usize,
}

const WEB: &[&str] = &["shop/flask-0/flask", "shop/flask-1/flask"];

/// What every shipped experiment must select on the rig below.
fn expectations() -> BTreeMap<&'static str, Vec<StepExpectation>> {
    let step = |step, kind, among, count| StepExpectation {
        step,
        kind,
        among,
        count,
    };
    BTreeMap::from([
        (
            "demo-kill.yaml",
            vec![
                step("cpu-exhaustion", "cpu", &["demo/web-0/web"][..], 1),
                step("kill-httpd", "process", &["demo/web-0/web"][..], 1),
            ],
        ),
        (
            "kill-postgres-primary.yaml",
            vec![step(
                "kill-primary",
                "process",
                &["db/postgres-1/postgres"][..],
                1,
            )],
        ),
        (
            "latency-between-services.yaml",
            vec![step("db-latency", "network", WEB, 2)],
        ),
        (
            "memory-pressure.yaml",
            vec![step(
                "worker-memory",
                "memory",
                &["spark/spark-worker-0/worker", "spark/spark-worker-1/worker"][..],
                1,
            )],
        ),
        (
            "web-cpu-exhaustion.yaml",
            vec![step("web-cpu", "cpu", WEB, 1)],
        ),
        (
            "zone-loss.yaml",
            vec![
                // One node-scope blackhole per node: the rig's pods share one node.
                step(
                    "node-partition",
                    "blackhole",
                    &[
                        "shop/flask-0/flask",
                        "shop/flask-1/flask",
                        "shop/cart-0/cart",
                    ][..],
                    1,
                ),
                step(
                    "pod-partition",
                    "blackhole",
                    &[
                        "shop/flask-0/flask",
                        "shop/flask-1/flask",
                        "shop/cart-0/cart",
                    ][..],
                    3,
                ),
            ],
        ),
        (
            "delete-web-pod.yaml",
            vec![step("delete-one-web-pod", "delete_pod", WEB, 1)],
        ),
        (
            "dns-database-gone.yaml",
            vec![step("database-name-gone", "dns", WEB, 2)],
        ),
        (
            // One blackhole per pod, both ways: on the driver, and on each executor.
            "partition-spark-driver.yaml",
            vec![step(
                "driver-cut-off",
                "partition",
                &[
                    "spark/spark-driver-0/driver",
                    "spark/spark-exec-0/executor",
                    "spark/spark-exec-1/executor",
                ][..],
                3,
            )],
        ),
    ])
}

/// The pods of the rig: each file's selectors find theirs; the decoys must never be chosen.
const RIG_PODS: &[(&str, &str, &str)] = &[
    ("demo", "web-0", "web"),
    ("db", "postgres-1", "postgres"),
    ("db", "postgres-2", "postgres"),
    ("shop", "flask-0", "flask"),
    ("shop", "flask-1", "flask"),
    ("shop", "cart-0", "cart"),
    ("spark", "spark-worker-0", "worker"),
    ("spark", "spark-worker-1", "worker"),
    ("kube-system", "coredns-0", "coredns"),
];

/// The pods of the rig with an address (a partition learns and needs theirs).
const NETWORKED_RIG_PODS: &[(&str, &str, &str)] = &[
    ("spark", "spark-driver-0", "driver"),
    ("spark", "spark-exec-0", "executor"),
    ("spark", "spark-exec-1", "executor"),
];

fn api_data(node: &str) -> ApiData {
    ApiData {
        pods: vec![
            (
                "db".into(),
                "postgres-1".into(),
                labels(&[("cnpg.io/instanceRole", "primary")]),
            ),
            (
                "db".into(),
                "postgres-2".into(),
                labels(&[("cnpg.io/instanceRole", "replica")]),
            ),
            ("shop".into(), "flask-0".into(), labels(&[("app", "flask")])),
            ("shop".into(), "flask-1".into(), labels(&[("app", "flask")])),
            // Labelled, but no agent runs it: never chosen.
            ("shop".into(), "flask-9".into(), labels(&[("app", "flask")])),
            ("shop".into(), "cart-0".into(), labels(&[("app", "cart")])),
            (
                "spark".into(),
                "spark-driver-0".into(),
                labels(&[("spark-role", "driver")]),
            ),
            (
                "spark".into(),
                "spark-exec-0".into(),
                labels(&[("spark-role", "executor")]),
            ),
            (
                "spark".into(),
                "spark-exec-1".into(),
                labels(&[("spark-role", "executor")]),
            ),
        ],
        nodes: vec![
            (node.to_string(), ZONE.to_string()),
            ("elsewhere".into(), "us-east-1b".into()),
        ],
        forbidden: None,
    }
}

// ---------------------------------------------------------------- tests

#[test]
fn every_shipped_experiment_dry_runs_against_a_real_agent_and_injects_nothing() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let pods = Pods::start_with_networks(RIG_PODS, NETWORKED_RIG_PODS)?;
    let node = unique("dryrun-node");
    let agent = Agent::start(&pods, &node, tls.path(), state.path())?;
    let api = FakeApi::start(api_data(&node))?;
    let targets = pods.targets();
    let expectations = expectations();

    let mut files: Vec<PathBuf> = std::fs::read_dir(experiments_dir())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 7, "{files:?}");
    for file in &files {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let expected = expectations
            .get(name)
            .with_context(|| format!("{name}: no expectation in this test; add one"))?;
        let outcome = dry_run(file, &agent, Some(&api.kubeconfig()), &["-o", "json"])?;
        assert_eq!(
            outcome.code,
            Some(0),
            "{name}: {}\n{}",
            outcome.stderr,
            agent.log()
        );
        let printed: Value = serde_json::from_str(&outcome.stdout)
            .with_context(|| format!("{name}: not JSON: {}", outcome.stdout))?;
        assert_eq!(printed["dry_run"], true, "{name}");
        assert_eq!(printed["agents"], json!([agent.grpc.to_string()]), "{name}");
        let plan = printed["plan"].as_array().context("plan")?;
        assert_eq!(plan.len(), expected.len(), "{name}: {plan:?}");
        for (step, want) in plan.iter().zip(expected) {
            assert_eq!(step["step"], want.step, "{name}");
            assert_eq!(step["kind"], want.kind, "{name}");
            assert!(
                !step["fault"].as_str().unwrap_or_default().is_empty(),
                "{name}: {step}"
            );
            let chosen = step["targets"].as_array().context("targets")?;
            assert_eq!(chosen.len(), want.count, "{name} {}: {chosen:?}", want.step);
            let mut seen = BTreeSet::new();
            for t in chosen {
                let pod = t["pod"].as_str().unwrap_or_default();
                assert!(
                    want.among.contains(&pod),
                    "{name} {}: chose {pod}",
                    want.step
                );
                assert!(seen.insert(pod.to_string()), "{name}: {pod} twice");
                assert_eq!(t["target"], targets[pod], "{name}: {t}");
                assert_eq!(t["agent"], agent.grpc.to_string(), "{name}: {t}");
                assert_eq!(t["node"], node, "{name}: {t}");
            }
            if want.kind == "partition" {
                // Each blackhole drops traffic to the other side's addresses only.
                let addresses = |prefix: &str| -> BTreeSet<String> {
                    pods.networks
                        .iter()
                        .zip(&pods.containers[RIG_PODS.len()..])
                        .filter(|(_, c)| c.spec.pod_name.starts_with(prefix))
                        .map(|(n, _)| format!("{}/32", n.inner_ip()))
                        .collect()
                };
                for t in chosen {
                    let pod = t["pod"].as_str().unwrap_or_default();
                    let other = if pod.contains("driver") {
                        addresses("spark-exec")
                    } else {
                        addresses("spark-driver")
                    };
                    let to: BTreeSet<String> = t["blackhole_to"]
                        .as_array()
                        .context("blackhole_to")?
                        .iter()
                        .filter_map(|a| a.as_str().map(String::from))
                        .collect();
                    assert_eq!(to, other, "{name}: {t}");
                }
            }
            if want.kind == "delete_pod" {
                let pod = chosen[0]["pod"].as_str().unwrap_or_default();
                let pod = pod.rsplit_once('/').map(|(p, _)| p).unwrap_or_default();
                assert_eq!(step["delete_pods"], json!([pod]), "{name}: {step}");
            }
        }
    }

    // The table form names agent, node, target, pod and fault.
    let table = dry_run(
        &experiments_dir().join("kill-postgres-primary.yaml"),
        &agent,
        Some(&api.kubeconfig()),
        &[],
    )?;
    assert_eq!(table.code, Some(0), "{}", table.stderr);
    assert!(
        table.stdout.contains("dry run: nothing injected"),
        "{}",
        table.stdout
    );
    assert!(
        table
            .stdout
            .contains("step kill-primary (process, 30.0s): kill signal KILL"),
        "{}",
        table.stdout
    );
    let line = format!(
        "agent {} node {node} target {} pod db/postgres-1/postgres",
        agent.grpc, targets["db/postgres-1/postgres"]
    );
    assert!(
        table.stdout.contains(&line),
        "{}\nwanted: {line}",
        table.stdout
    );

    // The fake API saw the selectors' queries, and nothing but reads.
    let requests = api.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("GET /api/v1/namespaces/db/pods?")
                && r.contains("labelSelector=cnpg.io%2FinstanceRole%3Dprimary")),
        "{requests:#?}"
    );
    assert!(
        requests.iter().any(|r| r.starts_with("GET /api/v1/nodes?")
            && r.contains("labelSelector=topology.kubernetes.io%2Fzone%3Dus-east-1a")),
        "{requests:#?}"
    );
    assert!(
        requests.iter().all(|r| r.starts_with("GET ")),
        "{requests:#?}"
    );

    // Nothing was injected: the agent has no fault, active or ended, and no journal entry.
    assert_eq!(agent.faults()?.len(), 0, "{}", agent.log());
    assert_eq!(journal_len(state.path()), 0);
    for container in &pods.containers {
        assert_eq!(container.task_status()?, "RUNNING", "{}", container.id);
    }
    Ok(())
}

#[test]
fn a_selector_that_needs_the_api_fails_clearly_without_it() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let pods = Pods::start(&[("shop", "flask-0", "flask")])?;
    let node = unique("dryrun-node");
    let agent = Agent::start(&pods, &node, tls.path(), state.path())?;
    let web_cpu = experiments_dir().join("web-cpu-exhaustion.yaml");

    let missing = state.path().join("no-such-kubeconfig");
    let outcome = dry_run(&web_cpu, &agent, Some(&missing), &[])?;
    assert_eq!(outcome.code, Some(1), "{}", outcome.stdout);
    assert!(
        outcome
            .stderr
            .contains("fault `web-cpu`: target.labels needs the Kubernetes API"),
        "{}",
        outcome.stderr
    );
    assert!(
        outcome.stderr.contains("no-such-kubeconfig"),
        "{}",
        outcome.stderr
    );
    assert!(outcome.stdout.is_empty(), "{}", outcome.stdout);

    // No kubeconfig anywhere and not in a cluster.
    let outcome = dry_run(&web_cpu, &agent, None, &[])?;
    assert_eq!(outcome.code, Some(1), "{}", outcome.stdout);
    assert!(
        outcome.stderr.contains("needs the Kubernetes API")
            && outcome.stderr.contains("not in a cluster"),
        "{}",
        outcome.stderr
    );

    // The API refuses to list nodes: the error names the permission the RBAC lacks.
    let mut data = api_data(&node);
    data.forbidden = Some("nodes");
    let api = FakeApi::start(data)?;
    let outcome = dry_run(
        &experiments_dir().join("zone-loss.yaml"),
        &agent,
        Some(&api.kubeconfig()),
        &[],
    )?;
    assert_eq!(outcome.code, Some(1), "{}", outcome.stdout);
    assert!(
        outcome
            .stderr
            .contains("fault `node-partition`: permission denied")
            && outcome.stderr.contains("needs `list` on `nodes`"),
        "{}",
        outcome.stderr
    );

    assert_eq!(agent.faults()?.len(), 0, "{}", agent.log());
    assert_eq!(journal_len(state.path()), 0);
    Ok(())
}

/// A real run of a delete_pod step: the pod is deleted through the API with the step's
/// grace period, recorded like a kill, and nothing is injected on the agent.
#[test]
fn delete_pod_deletes_through_the_api_and_is_reported_like_a_kill() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let pods = Pods::start(&[("shop", "flask-0", "flask"), ("shop", "flask-1", "flask")])?;
    let node = unique("dryrun-node");
    let agent = Agent::start(&pods, &node, tls.path(), state.path())?;
    let api = FakeApi::start(api_data(&node))?;
    // The system under test is a loopback listener (the kernel accepts into the backlog),
    // so the steady state holds before and after the deletion.
    let service = TcpListener::bind("127.0.0.1:0")?;
    let yaml = format!(
        "name: chaos-test-delete-pod\n\
         agents: {{ static: [\"{}\"], tls_dir: {} }}\n\
         baseline: 1s\n\
         steady_state:\n  probes:\n    - name: service\n      interval: 200ms\n      tcp: {{ address: \"{}\" }}\n\
         method:\n  faults:\n    - name: delete-web\n      target: {{ namespace: shop, labels: {{ app: flask }}, mode: all }}\n      duration: 1s\n      delete_pod: {{ grace_period: 7s }}\n\
         recovery: {{ timeout: 5s, hold: 1s }}\n",
        agent.grpc,
        tls.path().display(),
        service.local_addr()?
    );
    let experiment = chaosctl::engine::experiment::parse(&yaml)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let kubeconfig = api.kubeconfig();
    let result = runtime.block_on(async {
        let config = chaosctl::agents::fleet::FleetConfig::resolve(&experiment.agents).await?;
        let kube = chaosctl::agents::kube_api::KubeApi::connect(Some(&kubeconfig)).await?;
        let fleet = chaosctl::agents::fleet::Fleet::connect(&config)
            .await?
            .with_kube_api(kube);
        let (_cancel_sender, cancel) = tokio::sync::watch::channel(false);
        let options = chaosctl::engine::runner::RunOptions {
            run_id: chaosctl::engine::runner::new_run_id(&experiment.name),
            progress: Arc::new(|line: &str| eprintln!("{line}")),
            cancel,
            policy: Default::default(),
        };
        anyhow::Ok(chaosctl::engine::runner::run(&experiment, &fleet, options).await)
    })?;
    eprintln!("{}", chaosctl::engine::report::table(&result));
    assert_eq!(
        result.verdict,
        chaosctl::engine::verdict::Verdict::Passed,
        "{:?}",
        result.reasons
    );

    let requests = api.requests();
    let deletes: Vec<&String> = requests
        .iter()
        .filter(|r| r.starts_with("DELETE "))
        .collect();
    assert_eq!(deletes.len(), 2, "{requests:#?}");
    for pod in ["flask-0", "flask-1"] {
        let path = format!("/api/v1/namespaces/shop/pods/{pod}");
        let request = deletes
            .iter()
            .find(|r| r.split([' ', '?']).nth(1) == Some(path.as_str()))
            .with_context(|| format!("no DELETE of {pod}: {deletes:#?}"))?;
        let body: Value = serde_json::from_str(request.splitn(3, ' ').nth(2).unwrap_or("{}"))?;
        assert_eq!(body["gracePeriodSeconds"], 7, "{request}");
    }
    assert_eq!(result.faults.len(), 2, "{:?}", result.faults);
    for fault in &result.faults {
        assert_eq!(fault.kind, "delete_pod");
        assert!(fault.error.is_empty(), "{fault:?}");
        assert!(fault.ended_at_ms.is_some(), "{fault:?}");
    }
    assert!(result.phases.first_inject_ms.is_some());
    // The agent was asked for nothing.
    assert_eq!(agent.faults()?.len(), 0, "{}", agent.log());
    assert_eq!(journal_len(state.path()), 0);
    Ok(())
}

#[test]
fn an_unknown_field_in_a_shipped_experiment_is_refused_with_its_line() -> Result<()> {
    let text = std::fs::read_to_string(experiments_dir().join("web-cpu-exhaustion.yaml"))?;
    let typo = text.replacen("labels: { app: flask }", "label: { app: flask }", 1);
    assert_ne!(typo, text, "the file no longer selects by labels");
    let line = typo
        .lines()
        .position(|l| l.contains("label: { app: flask }"))
        .context("typo line")?
        + 1;
    let dir = tempfile::Builder::new()
        .prefix("chaos-test-typo-")
        .tempdir()?;
    let file = dir.path().join("typo.yaml");
    std::fs::write(&file, typo)?;
    let output = Command::new(binary("chaosctl")?)
        .arg("run")
        .arg(&file)
        .arg("--dry-run")
        .args(["--agents", "127.0.0.1:1"])
        .stdin(Stdio::null())
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("unknown field `label`"), "{stderr}");
    assert!(
        stderr.contains(&format!("line {line}")),
        "line {line}: {stderr}"
    );
    Ok(())
}

/// Protected namespaces hold for a `container:` target that only the agent can place in
/// kube-system (the file names no namespace), also for delete_pod, which goes through the
/// Kubernetes API and past every agent; `--include-protected` allows it; a selector over
/// every namespace leaves kube-system out. Dry runs against a real agent: nothing is
/// injected or deleted.
#[test]
fn protected_namespaces_hold_for_container_targets_and_delete_pod() -> Result<()> {
    let (tls, state) = (make_certs()?, state_dir()?);
    let pods = Pods::start(&[
        ("kube-system", "coredns-0", "coredns"),
        ("shop", "flask-0", "flask"),
    ])?;
    let coredns = pods.targets()["kube-system/coredns-0/coredns"].clone();
    let node = unique("dryrun-node");
    let agent = Agent::start(&pods, &node, tls.path(), state.path())?;
    let api = FakeApi::start(api_data(&node))?;
    let dir = tempfile::Builder::new()
        .prefix("chaos-test-protected-")
        .tempdir()?;
    let file = |name: &str, step: &str| -> Result<PathBuf> {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!("name: chaos-test-{name}\nmethod:\n  faults:\n    - name: {name}\n{step}"),
        )?;
        Ok(path)
    };

    let evict = file(
        "evict-dns",
        &format!("      target: {{ targets: [\"{coredns}\"] }}\n      delete_pod: {{}}\n"),
    )?;
    let refused = dry_run(&evict, &agent, Some(&api.kubeconfig()), &[])?;
    assert_eq!(refused.code, Some(1), "{}", refused.stdout);
    assert!(
        refused.stderr.contains(&format!(
            "fault `evict-dns`: target `{coredns}` is in the protected namespace kube-system"
        )),
        "{}",
        refused.stderr
    );
    let allowed = dry_run(
        &evict,
        &agent,
        Some(&api.kubeconfig()),
        &["--include-protected"],
    )?;
    assert_eq!(allowed.code, Some(0), "{}", allowed.stderr);
    assert!(
        allowed
            .stdout
            .contains("delete pod kube-system/coredns-0 through the Kubernetes API"),
        "{}",
        allowed.stdout
    );
    let kill = file(
        "kill-dns",
        &format!("      target: {{ targets: [\"{coredns}\"] }}\n      kill: {{}}\n"),
    )?;
    let refused = dry_run(&kill, &agent, None, &[])?;
    assert_eq!(refused.code, Some(1), "{}", refused.stdout);
    assert!(
        refused.stderr.contains("protected namespace kube-system"),
        "{}",
        refused.stderr
    );

    // No namespace named: every pod but the protected ones.
    let everywhere = dry_run(
        &file(
            "kill-anywhere",
            "      target: { pod: \"*\", mode: all }\n      kill: {}\n",
        )?,
        &agent,
        None,
        &[],
    )?;
    assert_eq!(everywhere.code, Some(0), "{}", everywhere.stderr);
    assert!(
        everywhere.stdout.contains("pod shop/flask-0/flask")
            && !everywhere.stdout.contains("kube-system"),
        "{}",
        everywhere.stdout
    );

    // Dry runs only: nothing asked of the agent, nothing deleted through the API.
    assert_eq!(agent.faults()?.len(), 0, "{}", agent.log());
    assert_eq!(journal_len(state.path()), 0);
    assert!(
        !api.requests().iter().any(|r| r.starts_with("DELETE ")),
        "{:?}",
        api.requests()
    );
    for container in &pods.containers {
        assert_eq!(container.task_status()?, "RUNNING", "{}", container.id);
    }
    Ok(())
}
