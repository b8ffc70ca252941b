//! The experiment file: its YAML schema, parsing (unknown fields are refused with their
//! line) and the checks that serde cannot express. Documented in docs/experiments.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::duration::parse_duration;
use crate::probe_url::{parse_address, parse_url};
use crate::rate::parse_rate;

#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// serde_norway's message names the field and carries `at line L column C`.
    #[error("{0}")]
    Parse(String),
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// Too large, too many nodes, an alias: refused before serde reads the text.
    #[error("{0}")]
    Yaml(#[from] crate::yaml_scan::YamlScanError),
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ExperimentError {
    ExperimentError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub agents: AgentsSpec,
    /// Every fault carries a lease of this length, renewed about every second.
    #[serde(default = "default_lease_ttl", deserialize_with = "duration")]
    pub lease_ttl: Duration,
    /// Seeds the random choice of targets (modes one, fixed, percent).
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub steady_state: SteadyState,
    #[serde(default, deserialize_with = "duration")]
    pub baseline: Duration,
    pub method: Method,
    #[serde(default)]
    pub recovery: Recovery,
    #[serde(default)]
    pub hypothesis: Hypothesis,
    /// Drives the system for the whole run, measured per phase (see `load`).
    #[serde(default)]
    pub load: Option<crate::load::LoadSpec>,
}

fn default_lease_ttl() -> Duration {
    Duration::from_secs(5)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentsSpec {
    /// HOST:PORT of every agent.
    #[serde(default, rename = "static")]
    pub static_agents: Vec<String>,
    /// The agents behind a headless Service: every address the name resolves to.
    #[serde(default)]
    pub dns: Option<DnsAgents>,
    #[serde(default)]
    pub tls_dir: Option<PathBuf>,
    #[serde(default)]
    pub insecure_plaintext: bool,
    /// How many agents are called at once.
    #[serde(default = "default_parallelism")]
    pub parallelism: usize,
}

impl Default for AgentsSpec {
    fn default() -> Self {
        AgentsSpec {
            static_agents: Vec::new(),
            dns: None,
            tls_dir: None,
            insecure_plaintext: false,
            parallelism: default_parallelism(),
        }
    }
}

fn default_parallelism() -> usize {
    64
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsAgents {
    pub name: String,
    #[serde(default = "default_agent_port")]
    pub port: u16,
}

fn default_agent_port() -> u16 {
    7090
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SteadyState {
    #[serde(default)]
    pub probes: Vec<Probe>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    pub name: String,
    #[serde(default = "default_probe_interval", deserialize_with = "duration")]
    pub interval: Duration,
    #[serde(default = "default_probe_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    #[serde(default)]
    pub http: Option<HttpProbe>,
    #[serde(default)]
    pub tcp: Option<TcpProbe>,
    #[serde(default)]
    pub exec: Option<ExecProbe>,
    #[serde(default)]
    pub promql: Option<PromqlProbe>,
    #[serde(default)]
    pub tolerance: Tolerance,
    #[serde(default)]
    pub abort: Option<AbortCondition>,
    /// Set by `chaosctl serve` for submitted runs, never read from the file: the
    /// destinations this probe may connect to, checked on every connection it makes.
    #[serde(skip)]
    pub connect_policy: Option<std::sync::Arc<crate::probe_policy::ProbeDestinations>>,
}

fn default_probe_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_probe_timeout() -> Duration {
    Duration::from_secs(2)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpProbe {
    /// `http(s)://HOST[:PORT][/PATH][?QUERY]`, parsed strictly (see `probe_url`).
    pub url: String,
    #[serde(default)]
    pub method: HttpMethod,
    /// Extra request headers; the framing ones (Host, Content-Length…) are refused.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Sent as `Authorization: Bearer …`, read again at every probe (rotated tokens).
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// The CA of the server's certificate (https); without it, the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_expect_status")]
    pub expect_status: Vec<u16>,
    /// A regular expression the body (its first MiB) must match.
    #[serde(default)]
    pub body_matches: Option<BodyPattern>,
}

fn default_expect_status() -> Vec<u16> {
    vec![200]
}

/// The methods a probe may use. GET and HEAD observe; POST (with an empty body) is for
/// health endpoints that answer nothing else. Methods that name a change (PUT, DELETE,
/// PATCH…) are refused: a probe must not become a way to act on a service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum HttpMethod {
    #[default]
    #[serde(rename = "GET")]
    Get,
    #[serde(rename = "HEAD")]
    Head,
    /// For health endpoints that only answer POST; the body is empty.
    #[serde(rename = "POST")]
    Post,
}

impl HttpMethod {
    pub fn as_http(self) -> hyper::Method {
        match self {
            HttpMethod::Get => hyper::Method::GET,
            HttpMethod::Head => hyper::Method::HEAD,
            HttpMethod::Post => hyper::Method::POST,
        }
    }
}

/// A regular expression over a response body, compiled when the file is read (so a bad
/// one is refused with its line). The regex crate matches in linear time; the size limit
/// bounds what a submitted pattern may cost in memory.
#[derive(Debug, Clone)]
pub struct BodyPattern(regex::Regex);

const MAX_BODY_PATTERN_BYTES: usize = 1024;

impl BodyPattern {
    pub fn is_match(&self, text: &str) -> bool {
        self.0.is_match(text)
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl<'de> Deserialize<'de> for BodyPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<BodyPattern, D::Error> {
        let text = String::deserialize(d)?;
        if text.len() > MAX_BODY_PATTERN_BYTES {
            return Err(serde::de::Error::custom(format!(
                "a body pattern of {} bytes, more than the {MAX_BODY_PATTERN_BYTES} accepted",
                text.len()
            )));
        }
        regex::RegexBuilder::new(&text)
            .size_limit(1 << 20)
            .build()
            .map(BodyPattern)
            .map_err(|e| serde::de::Error::custom(format!("not a regular expression: {e}")))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpProbe {
    /// HOST:PORT that must accept a connection.
    pub address: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecProbe {
    /// argv run on the controller's host; exit status 0 is success.
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromqlProbe {
    /// Prometheus' base URL, `http(s)://HOST:PORT[/PREFIX]`.
    pub url: String,
    pub query: String,
    /// The same transport options as an http probe's (e.g. a token for Prometheus
    /// behind an authenticating proxy, `X-Scope-OrgID` for a multi-tenant one).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The first sample of the result must lie within [min, max].
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
}

/// What "steady" means for one probe. A sample is healthy when it succeeded and its
/// latency is at most `latency_max`; a phase holds when its statistics meet the rest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tolerance {
    #[serde(default = "default_success_ratio")]
    pub success_ratio: f64,
    #[serde(default, deserialize_with = "optional_duration")]
    pub latency_max: Option<Duration>,
    #[serde(default, deserialize_with = "optional_duration")]
    pub latency_p50: Option<Duration>,
    #[serde(default, deserialize_with = "optional_duration")]
    pub latency_p95: Option<Duration>,
    #[serde(default, deserialize_with = "optional_duration")]
    pub latency_p99: Option<Duration>,
}

impl Default for Tolerance {
    fn default() -> Self {
        Tolerance {
            success_ratio: default_success_ratio(),
            latency_max: None,
            latency_p50: None,
            latency_p95: None,
            latency_p99: None,
        }
    }
}

fn default_success_ratio() -> f64 {
    1.0
}

/// Reverts every fault at once while the method runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbortCondition {
    /// This many unhealthy samples in a row.
    #[serde(default)]
    pub consecutive_failures: Option<u32>,
    /// One sample slower than this.
    #[serde(default, deserialize_with = "optional_duration")]
    pub latency_above: Option<Duration>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Method {
    #[serde(default)]
    pub mode: MethodMode,
    /// Sequential: the wait between one fault's end and the next one's start.
    #[serde(default, deserialize_with = "duration")]
    pub pause: Duration,
    pub faults: Vec<FaultStep>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MethodMode {
    #[default]
    Sequential,
    Parallel,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultStep {
    pub name: String,
    pub target: TargetSpec,
    /// How long the fault stays (the observation window of a one-shot kill).
    #[serde(default, deserialize_with = "duration")]
    pub duration: Duration,
    #[serde(default)]
    pub kill: Option<KillSpec>,
    #[serde(default)]
    pub cpu: Option<CpuSpec>,
    #[serde(default)]
    pub memory: Option<MemorySpec>,
    #[serde(default)]
    pub network: Option<NetworkSpec>,
    #[serde(default)]
    pub delete_pod: Option<DeletePodSpec>,
    #[serde(default)]
    pub blackhole: Option<BlackholeSpec>,
    #[serde(default)]
    pub pause: Option<PauseSpec>,
    #[serde(default)]
    pub io: Option<IoSpec>,
    #[serde(default)]
    pub disk_fill: Option<DiskFillSpec>,
    #[serde(default)]
    pub io_stress: Option<IoStressSpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// Explicit agent targets (`pod:NS/NAME[/CONTAINER]`, `container:ID`, `pid:N`, `cgroup:P`).
    #[serde(default)]
    pub targets: Vec<String>,
    /// The agent (HOST:PORT) for explicit targets no agent lists (pid:, cgroup:).
    #[serde(default)]
    pub agent: Option<String>,
    /// Selector over every agent's ListTargets.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Glob (`*`, `?`) over the pod name.
    #[serde(default)]
    pub pod: Option<String>,
    #[serde(default)]
    pub container: Option<String>,
    /// Pod label selector (every pair must match), resolved through the Kubernetes API.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Node name, as the agents report theirs.
    #[serde(default)]
    pub node: Option<String>,
    /// Availability zone: the nodes labelled `topology.kubernetes.io/zone` with this value,
    /// resolved through the Kubernetes API.
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default)]
    pub mode: SelectMode,
    #[serde(default)]
    pub count: Option<u32>,
    #[serde(default)]
    pub percent: Option<f64>,
    /// Refused: protected namespaces are allowed by the command that runs the experiment
    /// (`--include-protected`), never by the file. Kept to say so instead of "unknown field".
    #[serde(default)]
    pub include_protected: bool,
    /// Lets the selector pick containers that share their node's network namespace
    /// (hostNetwork pods), which it leaves out by default: a network fault on one acts on
    /// the whole node.
    #[serde(default)]
    pub include_host_network: bool,
}

impl TargetSpec {
    pub fn has_selector(&self) -> bool {
        self.namespace.is_some()
            || self.pod.is_some()
            || self.container.is_some()
            || !self.labels.is_empty()
            || self.node.is_some()
            || self.zone.is_some()
    }

    /// The selector field that needs the Kubernetes API, if any.
    pub fn kube_api_field(&self) -> Option<&'static str> {
        if !self.labels.is_empty() {
            Some("labels")
        } else if self.zone.is_some() {
            Some("zone")
        } else {
            None
        }
    }
}

/// The node label that names a node's availability zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SelectMode {
    #[default]
    One,
    All,
    Fixed,
    Percent,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KillSpec {
    #[serde(default = "default_signal")]
    pub signal: String,
    #[serde(default)]
    pub process: Option<String>,
    /// Kill again every interval until the duration ends.
    #[serde(default, deserialize_with = "optional_duration")]
    pub interval: Option<Duration>,
}

fn default_signal() -> String {
    "KILL".into()
}

/// Deletes the selected pods through the Kubernetes API (a one-shot, like a kill).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeletePodSpec {
    /// The pods' termination grace period; 0 (the default) deletes at once.
    #[serde(default, deserialize_with = "duration")]
    pub grace_period: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuSpec {
    /// Percent of the container's CPU limit.
    pub load: u32,
    #[serde(default)]
    pub cores: u32,
    /// fill (the default), add or starve; see `chaosctl inject cpu --mode`.
    #[serde(default)]
    pub mode: CpuModeSpec,
}

/// The CPU fault's mode, in the YAML and on `chaosctl inject cpu --mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum CpuModeSpec {
    #[default]
    Fill,
    Add,
    Starve,
}

impl CpuModeSpec {
    pub fn to_api(self) -> chaos_proto::api::CpuMode {
        use chaos_proto::api::CpuMode;
        match self {
            CpuModeSpec::Fill => CpuMode::Fill,
            CpuModeSpec::Add => CpuMode::Add,
            CpuModeSpec::Starve => CpuMode::Starve,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemorySpec {
    /// `256MiB`, `1GiB`, `500M`, plain bytes.
    #[serde(default, deserialize_with = "optional_size")]
    pub size: Option<u64>,
    /// Percent of the container's memory limit.
    #[serde(default)]
    pub percent: Option<u32>,
    /// With `percent`: of node memory when the container has no limit (refused otherwise).
    #[serde(default)]
    pub allow_node_memory: bool,
    #[serde(default, deserialize_with = "optional_duration")]
    pub ramp: Option<Duration>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    #[serde(default)]
    pub interface: Option<String>,
    #[serde(default, deserialize_with = "optional_duration")]
    pub delay: Option<Duration>,
    #[serde(default, deserialize_with = "optional_duration")]
    pub jitter: Option<Duration>,
    #[serde(default)]
    pub loss: f64,
    #[serde(default)]
    pub duplicate: f64,
    #[serde(default)]
    pub corrupt: f64,
    /// Bandwidth limit: `1mbit`, `10MB/s`, or bytes per second (see `crate::rate`). Alone
    /// it is a tbf; with other impairments netem's rate.
    #[serde(default, deserialize_with = "optional_rate")]
    pub rate: Option<u64>,
    /// The tbf's bucket for a rate alone (`32KiB`, plain bytes); left out: the agent's
    /// (10 ms at the rate, at least 16 KiB). At least one full frame of the interface.
    #[serde(default, deserialize_with = "optional_size")]
    pub burst: Option<u64>,
    /// The tbf's queue (bytes that may wait) for a rate alone; left out: the agent's (the
    /// bucket plus 100 ms at the rate).
    #[serde(default, deserialize_with = "optional_size")]
    pub queue: Option<u64>,
    /// Only traffic to these CIDRs (IPv4; on ingress: from these peers).
    #[serde(default)]
    pub to: Vec<String>,
    /// Only traffic to these ports (on ingress: from these peer ports).
    #[serde(default)]
    pub ports: Vec<u32>,
    #[serde(default)]
    pub protocol: TrafficProtocol,
    #[serde(default)]
    pub direction: TrafficDirection,
    /// Traffic to these CIDRs stays untouched (e.g. the DNS server).
    #[serde(default)]
    pub exclude_to: Vec<String>,
    /// Traffic to these ports stays untouched (e.g. 53).
    #[serde(default)]
    pub exclude_ports: Vec<u32>,
}

/// Also a `chaosctl inject network` option, so the file and the flag take the same words.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum TrafficProtocol {
    #[default]
    Any,
    Tcp,
    Udp,
    Icmp,
}

/// Also a `chaosctl inject network` option, so the file and the flag take the same words.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum TrafficDirection {
    #[default]
    Egress,
    Ingress,
}

/// Drop traffic for the duration: all of it, or to the given CIDRs / ports.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlackholeSpec {
    #[serde(default)]
    pub to: Vec<String>,
    #[serde(default)]
    pub ports: Vec<u32>,
    /// The node's own default-route interface (the agent needs --allow-node-scope).
    #[serde(default)]
    pub node_scope: bool,
    /// The interface to drop on instead of the default-route one.
    #[serde(default)]
    pub interface: Option<String>,
}

/// Freeze the target containers' processes for the duration (`pause: {}`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PauseSpec {}

/// Throttle the target containers' block IO for the duration (`io: { write_bps: 1MiB }`).
/// At least one limit above 0; a limit left out (or 0, as in the API) stays as it is.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IoSpec {
    /// Bytes per second: `1MiB`, `512KiB`, plain bytes.
    #[serde(default, deserialize_with = "optional_size")]
    pub read_bps: Option<u64>,
    #[serde(default, deserialize_with = "optional_size")]
    pub write_bps: Option<u64>,
    /// Operations per second.
    #[serde(default)]
    pub read_iops: Option<u64>,
    #[serde(default)]
    pub write_iops: Option<u64>,
    /// `MAJ:MIN`, a name (`nvme0n1`) or a path (`/dev/loop3`), resolved by the agent;
    /// absent: every whole disk.
    #[serde(default)]
    pub device: Option<String>,
}

impl IoSpec {
    /// Whether the spec limits anything: 0 means no limit, so a spec of zeros would
    /// inject a fault that throttles nothing.
    pub fn has_limit(&self) -> bool {
        [
            self.read_bps,
            self.write_bps,
            self.read_iops,
            self.write_iops,
        ]
        .iter()
        .any(|limit| limit.is_some_and(|value| value > 0))
    }
}

/// Fill a filesystem the targets write to with one file for the duration, removed at
/// every end (`disk_fill: { size: 1GiB }`, `disk_fill: { percent: 90, path: /data }`).
/// Exactly one of size and percent.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskFillSpec {
    /// The file's size: `1GiB`, `500MiB`, plain bytes.
    #[serde(default, deserialize_with = "optional_size")]
    pub size: Option<u64>,
    /// 1 to 99: fill until the filesystem is this much used, as df counts it.
    #[serde(default)]
    pub percent: Option<u32>,
    /// A directory inside the container, whose filesystem is filled; absent: `/`, the
    /// container's writable root (a volume's mount path fills that volume).
    #[serde(default)]
    pub path: Option<String>,
}

/// Workers in the targets' cgroups writing and reading files in their filesystem for the
/// duration (`io_stress: { workers: 2, bps: 10MiB, file_size: 64MiB, path: /data }`);
/// every field may be left out (1 worker, as fast as the device allows, 64 MiB files, in
/// /tmp or /). The files are removed at every end.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IoStressSpec {
    /// Worker processes per target: 1 to 8.
    #[serde(default)]
    pub workers: Option<u32>,
    /// Read plus write bytes per second, shared by a target's workers: `10MiB`, at least
    /// 64KiB; absent: as fast as the device allows.
    #[serde(default, deserialize_with = "optional_size")]
    pub bps: Option<u64>,
    /// Each worker's file: `64MiB`, at least 1MiB.
    #[serde(default, deserialize_with = "optional_size")]
    pub file_size: Option<u64>,
    /// A directory inside the container (a volume's mount path stresses that volume).
    #[serde(default)]
    pub path: Option<String>,
}

/// The bounds the agent enforces on an IO stress, checked before any agent is asked.
pub const MAX_IO_STRESS_WORKERS: u32 = 8;
pub const MIN_IO_STRESS_BPS: u64 = 64 << 10;
pub const MIN_IO_STRESS_FILE_SIZE: u64 = 1 << 20;

/// Why an IO stress spec is refused, as `(field, reason)`, or None.
pub fn check_io_stress(spec: &IoStressSpec) -> Option<(&'static str, String)> {
    if let Some(workers) = spec.workers
        && !(1..=MAX_IO_STRESS_WORKERS).contains(&workers)
    {
        return Some(("workers", format!("must be 1 to {MAX_IO_STRESS_WORKERS}")));
    }
    if let Some(bps) = spec.bps
        && bps < MIN_IO_STRESS_BPS
    {
        return Some((
            "bps",
            "must be at least 64KiB (leave it out for as fast as the device allows)".into(),
        ));
    }
    if let Some(size) = spec.file_size
        && size < MIN_IO_STRESS_FILE_SIZE
    {
        return Some(("file_size", "must be at least 1MiB".into()));
    }
    if let Some(path) = &spec.path
        && let Err(reason) = check_fill_path(path)
    {
        return Some(("path", reason));
    }
    None
}

/// The longest `disk_fill.path` accepted (Linux's PATH_MAX).
pub const MAX_FILL_PATH_BYTES: usize = 4096;

/// A disk fill's directory, as the agent takes it: absolute, without `..` steps (the
/// agent joins it under the container's root), without control characters. The error is
/// the reason, with the path quoted and escaped.
pub fn check_fill_path(path: &str) -> Result<(), String> {
    if path.len() > MAX_FILL_PATH_BYTES {
        return Err(format!(
            "{} bytes, more than the {MAX_FILL_PATH_BYTES} accepted",
            path.len()
        ));
    }
    if path.chars().any(char::is_control) {
        return Err(format!("{path:?} contains a control character"));
    }
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(format!(
            "{path:?} is not absolute (a directory inside the container, such as /data)"
        ));
    }
    if p.components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!("{path:?} has a `..` step"));
    }
    Ok(())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recovery {
    /// How long to watch after the method for the steady state to return.
    #[serde(default = "default_recovery_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// How long every probe must stay healthy to count as recovered.
    #[serde(default = "default_recovery_hold", deserialize_with = "duration")]
    pub hold: Duration,
}

impl Default for Recovery {
    fn default() -> Self {
        Recovery {
            timeout: default_recovery_timeout(),
            hold: default_recovery_hold(),
        }
    }
}

fn default_recovery_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_recovery_hold() -> Duration {
    Duration::from_secs(2)
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hypothesis {
    #[serde(default)]
    pub during: DuringExpectation,
}

/// What the hypothesis claims while the faults are active.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DuringExpectation {
    /// The tolerances hold during the method too.
    #[default]
    Steady,
    /// Only recovery counts: the system may degrade while faults are active.
    Degraded,
}

/// The kind of a fault step, for reports.
pub fn step_kind(step: &FaultStep) -> &'static str {
    if step.kill.is_some() {
        "process"
    } else if step.cpu.is_some() {
        "cpu"
    } else if step.memory.is_some() {
        "memory"
    } else if step.network.is_some() {
        "network"
    } else if step.delete_pod.is_some() {
        "delete_pod"
    } else if step.blackhole.is_some() {
        "blackhole"
    } else if step.pause.is_some() {
        "pause"
    } else if step.io.is_some() {
        "io"
    } else if step.io_stress.is_some() {
        "io_stress"
    } else if step.disk_fill.is_some() {
        "disk_fill"
    } else {
        "unspecified"
    }
}

impl Experiment {
    /// Where this experiment needs the Kubernetes API (`fault `x`: target.labels`), if anywhere.
    pub fn kube_api_need(&self) -> Option<String> {
        self.method.faults.iter().find_map(|step| {
            let field = if step.delete_pod.is_some() {
                Some("delete_pod")
            } else {
                step.target.kube_api_field().map(|f| match f {
                    "labels" => "target.labels",
                    _ => "target.zone",
                })
            };
            field.map(|f| format!("fault `{}`: {f}", step.name))
        })
    }
}

pub fn load(path: &Path) -> Result<Experiment, ExperimentError> {
    let text = std::fs::read_to_string(path).map_err(|source| ExperimentError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text)
}

pub fn parse(text: &str) -> Result<Experiment, ExperimentError> {
    crate::yaml_scan::check(text)?;
    let experiment: Experiment =
        serde_norway::from_str(text).map_err(|e| ExperimentError::Parse(e.to_string()))?;
    crate::limits::check(&experiment)?;
    validate(&experiment)?;
    Ok(experiment)
}

/// The checks serde cannot express: exactly-one choices, ranges, references.
pub fn validate(e: &Experiment) -> Result<(), ExperimentError> {
    if e.name.trim().is_empty() {
        return Err(invalid("name", "must not be empty"));
    }
    if e.lease_ttl < Duration::from_secs(2) {
        return Err(invalid(
            "lease_ttl",
            "must be at least 2s (it is renewed every second)",
        ));
    }
    if e.agents.parallelism == 0 {
        return Err(invalid("agents.parallelism", "must be at least 1"));
    }
    let mut names = std::collections::HashSet::new();
    for (i, p) in e.steady_state.probes.iter().enumerate() {
        let field = format!("steady_state.probes[{i}]");
        if !names.insert(p.name.as_str()) {
            return Err(invalid(
                format!("{field}.name"),
                format!("`{}` is used twice", p.name),
            ));
        }
        let kinds = [
            p.http.is_some(),
            p.tcp.is_some(),
            p.exec.is_some(),
            p.promql.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            return Err(invalid(
                field,
                "needs exactly one of http, tcp, exec, promql",
            ));
        }
        if p.interval < Duration::from_millis(50) {
            return Err(invalid(
                format!("{field}.interval"),
                "must be at least 50ms",
            ));
        }
        if p.timeout.is_zero() {
            return Err(invalid(format!("{field}.timeout"), "must be above 0"));
        }
        validate_probe_kind(p, &field)?;
        if !(0.0..=1.0).contains(&p.tolerance.success_ratio) {
            return Err(invalid(
                format!("{field}.tolerance.success_ratio"),
                "must be between 0 and 1",
            ));
        }
        if let Some(a) = &p.abort
            && a.consecutive_failures.is_none()
            && a.latency_above.is_none()
        {
            return Err(invalid(
                format!("{field}.abort"),
                "needs consecutive_failures and/or latency_above",
            ));
        }
    }
    if e.method.faults.is_empty() {
        return Err(invalid("method.faults", "needs at least one fault"));
    }
    for (i, step) in e.method.faults.iter().enumerate() {
        validate_step(step, &format!("method.faults[{i}]"))?;
    }
    if e.recovery.hold > e.recovery.timeout {
        return Err(invalid("recovery.hold", "must not exceed recovery.timeout"));
    }
    if let Some(load) = &e.load {
        crate::load::validate(load).map_err(|(field, message)| {
            let field = if field.is_empty() {
                "load".to_string()
            } else {
                format!("load.{field}")
            };
            invalid(field, message)
        })?;
    }
    Ok(())
}

/// The kind-specific fields of a probe. URLs, addresses and headers become a request
/// line and header lines: anything that could split or bend them is refused here.
fn validate_probe_kind(p: &Probe, field: &str) -> Result<(), ExperimentError> {
    if let Some(http) = &p.http {
        let field = format!("{field}.http");
        parse_url(&http.url).map_err(|e| invalid(format!("{field}.url"), e))?;
        validate_transport(
            &http.headers,
            http.bearer_token_file.as_deref(),
            http.ca_file.as_deref(),
            &field,
        )?;
        if http.expect_status.is_empty() {
            return Err(invalid(
                format!("{field}.expect_status"),
                "needs at least one status",
            ));
        }
        if let Some(status) = http
            .expect_status
            .iter()
            .find(|s| !(100..=599).contains(*s))
        {
            return Err(invalid(
                format!("{field}.expect_status"),
                format!("{status} is not an HTTP status (100 to 599)"),
            ));
        }
        if http.method == HttpMethod::Head && http.body_matches.is_some() {
            return Err(invalid(
                format!("{field}.body_matches"),
                "a HEAD answer has no body to match",
            ));
        }
    }
    if let Some(tcp) = &p.tcp {
        parse_address(&tcp.address).map_err(|e| invalid(format!("{field}.tcp.address"), e))?;
    }
    if let Some(exec) = &p.exec
        && exec.command.is_empty()
    {
        return Err(invalid(
            format!("{field}.exec.command"),
            "must not be empty",
        ));
    }
    if let Some(q) = &p.promql {
        let field = format!("{field}.promql");
        let url = parse_url(&q.url).map_err(|e| invalid(format!("{field}.url"), e))?;
        if url.query.is_some() {
            return Err(invalid(
                format!("{field}.url"),
                "must be Prometheus' base URL, without a query (the query goes in `query`)",
            ));
        }
        validate_transport(
            &q.headers,
            q.bearer_token_file.as_deref(),
            q.ca_file.as_deref(),
            &field,
        )?;
        if q.query.trim().is_empty() {
            return Err(invalid(format!("{field}.query"), "must not be empty"));
        }
        if q.min.is_none() && q.max.is_none() {
            return Err(invalid(field, "needs min and/or max"));
        }
    }
    Ok(())
}

/// Headers the client writes itself (framing, the connection, the host) and that a
/// probe must not override.
const RESERVED_HEADERS: [&str; 10] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
];
const MAX_HEADERS: usize = 32;
const MAX_HEADER_VALUE_BYTES: usize = 8 << 10;

/// Header names are tokens; values are visible ASCII and spaces (never quoted back in an
/// error: a value may be a secret). Files are named, not opened: they are read at each
/// probe.
fn validate_transport(
    headers: &BTreeMap<String, String>,
    bearer_token_file: Option<&Path>,
    ca_file: Option<&Path>,
    field: &str,
) -> Result<(), ExperimentError> {
    if headers.len() > MAX_HEADERS {
        return Err(invalid(
            format!("{field}.headers"),
            format!(
                "{} headers, more than the {MAX_HEADERS} accepted",
                headers.len()
            ),
        ));
    }
    for (name, value) in headers {
        if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            let shown = if name.bytes().all(|b| b.is_ascii_graphic()) {
                format!("`{name}`")
            } else {
                "a name with spaces, control or non-ASCII characters".to_string()
            };
            return Err(invalid(
                format!("{field}.headers"),
                format!("{shown} is not a header name (letters, digits and !#$%&'*+-.^_`|~)"),
            ));
        }
        let lower = name.to_ascii_lowercase();
        if RESERVED_HEADERS.contains(&lower.as_str()) {
            return Err(invalid(
                format!("{field}.headers.{name}"),
                "is set by the probe's client itself",
            ));
        }
        if lower == "authorization" && bearer_token_file.is_some() {
            return Err(invalid(
                format!("{field}.headers.{name}"),
                "conflicts with bearer_token_file",
            ));
        }
        if let Some((index, _)) = value
            .bytes()
            .enumerate()
            .find(|(_, b)| !(b.is_ascii_graphic() || *b == b' '))
        {
            return Err(invalid(
                format!("{field}.headers.{name}"),
                format!(
                    "the value has a control or non-ASCII character at byte {index} (CR, LF, \
                     tab and the like could split the request)"
                ),
            ));
        }
        if value.len() > MAX_HEADER_VALUE_BYTES {
            return Err(invalid(
                format!("{field}.headers.{name}"),
                format!("longer than {MAX_HEADER_VALUE_BYTES} bytes"),
            ));
        }
    }
    for (name, path) in [
        ("bearer_token_file", bearer_token_file),
        ("ca_file", ca_file),
    ] {
        if let Some(path) = path
            && (path.as_os_str().is_empty()
                || path
                    .as_os_str()
                    .as_encoded_bytes()
                    .iter()
                    .any(u8::is_ascii_control))
        {
            return Err(invalid(
                format!("{field}.{name}"),
                "must be a path without control characters",
            ));
        }
    }
    Ok(())
}

fn validate_step(step: &FaultStep, field: &str) -> Result<(), ExperimentError> {
    let kinds = [
        step.kill.is_some(),
        step.cpu.is_some(),
        step.memory.is_some(),
        step.network.is_some(),
        step.delete_pod.is_some(),
        step.blackhole.is_some(),
        step.pause.is_some(),
        step.io.is_some(),
        step.disk_fill.is_some(),
        step.io_stress.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() != 1 {
        return Err(invalid(
            field,
            "needs exactly one of kill, cpu, memory, network, blackhole, pause, io, disk_fill, \
             io_stress, delete_pod",
        ));
    }
    let one_shot =
        step.kill.as_ref().is_some_and(|k| k.interval.is_none()) || step.delete_pod.is_some();
    if step.duration.is_zero() && !one_shot {
        return Err(invalid(
            format!("{field}.duration"),
            "is required for every fault but a one-shot kill or delete_pod",
        ));
    }
    if let Some(d) = &step.delete_pod
        && d.grace_period.subsec_nanos() != 0
    {
        return Err(invalid(
            format!("{field}.delete_pod.grace_period"),
            "must be whole seconds (Kubernetes counts it in seconds)",
        ));
    }
    if let Some(m) = &step.memory
        && m.size.is_some() == m.percent.is_some()
    {
        return Err(invalid(
            format!("{field}.memory"),
            "needs exactly one of size and percent",
        ));
    }
    if let Some(m) = &step.memory
        && m.allow_node_memory
        && m.percent.is_none()
    {
        return Err(invalid(
            format!("{field}.memory.allow_node_memory"),
            "applies to percent only",
        ));
    }
    if let Some(c) = &step.cpu
        && !(1..=100).contains(&c.load)
    {
        return Err(invalid(format!("{field}.cpu.load"), "must be 1 to 100"));
    }
    if let Some(io) = &step.io
        && !io.has_limit()
    {
        return Err(invalid(
            format!("{field}.io"),
            format!(
                "fault `{}` needs at least one of read_bps, write_bps, read_iops, write_iops \
                 above 0 (0 is no limit)",
                step.name
            ),
        ));
    }
    if let Some(fill) = &step.disk_fill {
        validate_disk_fill(fill, &step.name, &format!("{field}.disk_fill"))?;
    }
    if let Some(network) = &step.network
        && let Some((part, reason)) = check_tbf_sizes(network)
    {
        return Err(invalid(format!("{field}.network.{part}"), reason));
    }
    if let Some(stress) = &step.io_stress
        && let Some((part, reason)) = check_io_stress(stress)
    {
        return Err(invalid(format!("{field}.io_stress.{part}"), reason));
    }
    let t = &step.target;
    let field = format!("{field}.target");
    if t.include_protected {
        return Err(invalid(
            format!("{field}.include_protected"),
            "is not a field of the experiment: kube-system and chaos-control are allowed by the \
             command that runs it (`chaosctl run --include-protected`, `chaosctl serve \
             --include-protected`)",
        ));
    }
    if t.targets.is_empty() && !t.has_selector() {
        return Err(invalid(
            &field,
            "needs targets and/or a selector (namespace, pod, container, labels, node, zone)",
        ));
    }
    validate_selector(t, &field)?;
    match t.mode {
        SelectMode::Fixed if t.count.is_none_or(|c| c == 0) => {
            return Err(invalid(
                format!("{field}.count"),
                "mode fixed needs a count of at least 1",
            ));
        }
        SelectMode::Percent if t.percent.is_none_or(|p| !(p > 0.0 && p <= 100.0)) => {
            return Err(invalid(
                format!("{field}.percent"),
                "mode percent needs a percent in (0, 100]",
            ));
        }
        _ => {}
    }
    Ok(())
}

/// A network step's `burst` and `queue` (and `chaosctl inject network --burst`,
/// `--queue`): above 0 and with a rate; which part is wrong, and why. That the rate is
/// alone (a tbf, not netem's rate) and the sizes hold a frame is the agent's to tell.
pub fn check_tbf_sizes(network: &NetworkSpec) -> Option<(&'static str, &'static str)> {
    for (part, size) in [("burst", network.burst), ("queue", network.queue)] {
        match size {
            Some(0) => return Some((part, "must be above 0 (leave it out for the default)")),
            Some(_) if network.rate.is_none() => {
                return Some((part, "needs a rate (it sizes the rate's tbf)"));
            }
            _ => {}
        }
    }
    None
}

fn validate_disk_fill(fill: &DiskFillSpec, name: &str, field: &str) -> Result<(), ExperimentError> {
    if fill.size.is_some() == fill.percent.is_some() {
        return Err(invalid(
            field,
            format!("fault `{name}` needs exactly one of size and percent"),
        ));
    }
    if fill.size == Some(0) {
        return Err(invalid(format!("{field}.size"), "must be above 0"));
    }
    if let Some(percent) = fill.percent
        && !(1..=99).contains(&percent)
    {
        return Err(invalid(
            format!("{field}.percent"),
            "must be 1 to 99 (how much of the filesystem is used after the fill, as df counts \
             it)",
        ));
    }
    if let Some(path) = &fill.path {
        check_fill_path(path).map_err(|reason| invalid(format!("{field}.path"), reason))?;
    }
    Ok(())
}

/// Label keys and values, node and zone names end up in Kubernetes API queries: refuse
/// anything that is not a valid Kubernetes label rather than let it change the query.
fn validate_selector(t: &TargetSpec, field: &str) -> Result<(), ExperimentError> {
    for (key, value) in &t.labels {
        if !is_label_key(key) {
            return Err(invalid(
                format!("{field}.labels"),
                format!(
                    "`{key}` is not a valid label key ([prefix/]name, name up to 63 of [A-Za-z0-9-_.])"
                ),
            ));
        }
        if !is_label_value(value) {
            return Err(invalid(
                format!("{field}.labels.{key}"),
                format!(
                    "`{value}` is not a valid label value (up to 63 of [A-Za-z0-9-_.], alphanumeric at both ends)"
                ),
            ));
        }
    }
    if let Some(zone) = &t.zone
        && (zone.is_empty() || !is_label_value(zone))
    {
        return Err(invalid(
            format!("{field}.zone"),
            format!("`{zone}` is not a valid value of the {ZONE_LABEL} label"),
        ));
    }
    if let Some(node) = &t.node
        && node.trim().is_empty()
    {
        return Err(invalid(format!("{field}.node"), "must not be empty"));
    }
    Ok(())
}

/// A label value: empty, or up to 63 of `[A-Za-z0-9-_.]` starting and ending alphanumeric.
pub fn is_label_value(value: &str) -> bool {
    if value.is_empty() {
        return true;
    }
    let bytes = value.as_bytes();
    value.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A label key: `[prefix/]name`, the prefix a DNS subdomain, the name a non-empty label value.
pub fn is_label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part.starts_with(|c: char| c.is_ascii_alphanumeric())
                    && part.ends_with(|c: char| c.is_ascii_alphanumeric())
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            })
    });
    prefix_ok && !name.is_empty() && is_label_value(name)
}

/// Parses inside the visitor, so that the YAML deserializer attaches the line of a
/// bad value to the error (an error raised after deserializing has no position).
struct DurationVisitor;

impl serde::de::Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a duration such as 500ms, 30s, 2m")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Duration, E> {
        parse_duration(text).map_err(E::custom)
    }

    fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Duration, E> {
        Err(E::custom(format!("`{value}`: missing unit (ms, s, m, h)")))
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_str(DurationVisitor)
}

fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

fn optional_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Bytes(n) => Ok(Some(n)),
        Size::Text(t) => parse_size(&t).map(Some).map_err(serde::de::Error::custom),
    }
}

/// A rate as `--rate` reads it: a string with a unit or a plain number of bytes per
/// second, which goes through the same parser (so 0 is refused here too).
struct RateVisitor;

impl serde::de::Visitor<'_> for RateVisitor {
    type Value = u64;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a rate such as 1mbit, 10MB/s or 125000 (bytes per second)")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<u64, E> {
        parse_rate(text).map_err(E::custom)
    }

    fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<u64, E> {
        parse_rate(&value.to_string()).map_err(E::custom)
    }

    fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<u64, E> {
        Err(E::custom(format!("`{value}`: a rate must be above 0")))
    }

    fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<u64, E> {
        Err(E::custom(format!(
            "`{value}`: a fraction needs a unit, e.g. 1.5mbit (a plain number is whole bytes per second)"
        )))
    }
}

fn optional_rate<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    d.deserialize_any(RateVisitor).map(Some)
}

/// `256MiB`, `1GiB`, `500M` (binary), `500MB` (decimal), `1024`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let value: u64 = text[..digits]
        .parse()
        .map_err(|_| format!("`{text}`: expected a size like 256MiB"))?;
    let factor: u64 = match text[digits..].trim() {
        "" | "B" => 1,
        // Single letters are binary, as memory limits are set (and as `inject memory` reads them).
        "k" | "K" | "Ki" | "KiB" => 1 << 10,
        "M" | "Mi" | "MiB" => 1 << 20,
        "G" | "Gi" | "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => return Err(format!("`{text}`: unknown unit `{other}`")),
    };
    value
        .checked_mul(factor)
        .ok_or_else(|| format!("`{text}`: too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "\
name: web-kill
agents:
  static: [\"127.0.0.1:7090\"]
baseline: 5s
steady_state:
  probes:
    - name: web
      interval: 200ms
      http: { url: \"http://10.0.0.2/\" }
      tolerance: { success_ratio: 0.9, latency_p95: 300ms }
method:
  faults:
    - name: kill-web
      target: { targets: [\"pod:dev/web-0/web\"] }
      kill: { process: httpd }
";

    #[test]
    fn parses_a_minimal_experiment_with_defaults() {
        let e = parse(MINIMAL).unwrap();
        assert_eq!(e.name, "web-kill");
        assert_eq!(e.baseline, Duration::from_secs(5));
        assert_eq!(e.lease_ttl, Duration::from_secs(5));
        let p = &e.steady_state.probes[0];
        assert_eq!(p.interval, Duration::from_millis(200));
        assert_eq!(p.http.as_ref().unwrap().expect_status, vec![200]);
        assert_eq!(p.tolerance.latency_p95, Some(Duration::from_millis(300)));
        let step = &e.method.faults[0];
        assert_eq!(step.kill.as_ref().unwrap().signal, "KILL");
        assert_eq!(step.target.mode, SelectMode::One);
        assert_eq!(e.recovery.timeout, Duration::from_secs(60));
        assert_eq!(e.hypothesis.during, DuringExpectation::Steady);
    }

    #[test]
    fn unknown_fields_are_refused_with_their_line() {
        let text = MINIMAL.replace("      interval: 200ms\n", "      intervall: 200ms\n");
        let error = parse(&text).unwrap_err().to_string();
        assert!(error.contains("unknown field `intervall`"), "{error}");
        assert!(error.contains("line 8"), "{error}");

        let text = MINIMAL.replace("      kill: { process: httpd }", "      kil: {}");
        let error = parse(&text).unwrap_err().to_string();
        assert!(
            error.contains("unknown field `kil`") && error.contains("line 15"),
            "{error}"
        );
    }

    #[test]
    fn bad_durations_name_their_line() {
        let text = MINIMAL.replace("baseline: 5s", "baseline: 5");
        let error = parse(&text).unwrap_err().to_string();
        assert!(
            error.contains("missing unit") && error.contains("line 4"),
            "{error}"
        );
    }

    #[test]
    fn semantic_errors_name_the_field() {
        let cases = [
            (
                MINIMAL.replace("kill: { process: httpd }", "kill: { interval: 1s }"),
                "method.faults[0].duration",
            ),
            (
                MINIMAL.replace(
                    "http: { url: \"http://10.0.0.2/\" }",
                    "tcp: { address: a:1 }\n      exec: { command: [true] }",
                ),
                "steady_state.probes[0]",
            ),
            (
                MINIMAL.replace(
                    "targets: [\"pod:dev/web-0/web\"]",
                    "namespace: dev, mode: fixed",
                ),
                "method.faults[0].target.count",
            ),
            (
                MINIMAL.replace("success_ratio: 0.9", "success_ratio: 1.5"),
                "steady_state.probes[0].tolerance.success_ratio",
            ),
            (
                MINIMAL.replace(
                    "kill: { process: httpd }",
                    "memory: { size: 1Gi, percent: 5 }\n      duration: 5s",
                ),
                "method.faults[0].memory",
            ),
            (
                MINIMAL.replace(
                    "kill: { process: httpd }",
                    "memory: { size: 1Gi, allow_node_memory: true }\n      duration: 5s",
                ),
                "method.faults[0].memory.allow_node_memory",
            ),
        ];
        for (text, field) in cases {
            let error = parse(&text).unwrap_err().to_string();
            assert!(error.starts_with(field), "{field}: {error}");
        }
    }

    #[test]
    fn selector_fields_and_delete_pod_parse() {
        let text = MINIMAL.replace(
            "      target: { targets: [\"pod:dev/web-0/web\"] }\n      kill: { process: httpd }",
            "      target: { namespace: shop, labels: { app: web, app.kubernetes.io/part-of: shop }, node: n1, zone: eu-west-1a }\n      delete_pod: { grace_period: 5s }",
        );
        let e = parse(&text).unwrap();
        let step = &e.method.faults[0];
        assert_eq!(step.target.labels.len(), 2);
        assert_eq!(step.target.node.as_deref(), Some("n1"));
        assert_eq!(step.target.zone.as_deref(), Some("eu-west-1a"));
        assert_eq!(
            step.delete_pod.as_ref().unwrap().grace_period,
            Duration::from_secs(5)
        );
        assert_eq!(step_kind(step), "delete_pod");
        assert_eq!(
            e.kube_api_need().as_deref(),
            Some("fault `kill-web`: delete_pod")
        );
        assert_eq!(parse(MINIMAL).unwrap().kube_api_need(), None);

        let text = MINIMAL.replace("targets: [\"pod:dev/web-0/web\"]", "node: n1, lables: {}");
        let error = parse(&text).unwrap_err().to_string();
        assert!(
            error.contains("unknown field `lables`") && error.contains("line 14"),
            "{error}"
        );
    }

    #[test]
    fn bad_selectors_name_the_field() {
        let cases = [
            (
                "labels: { \"app,x\": web }",
                "method.faults[0].target.labels",
            ),
            (
                "labels: { app: \"web,role=db\" }",
                "method.faults[0].target.labels.app",
            ),
            ("zone: \"a b\"", "method.faults[0].target.zone"),
            ("zone: \"\"", "method.faults[0].target.zone"),
            ("node: \"\"", "method.faults[0].target.node"),
        ];
        for (selector, field) in cases {
            let text = MINIMAL.replace("targets: [\"pod:dev/web-0/web\"]", selector);
            let error = parse(&text).unwrap_err().to_string();
            assert!(error.starts_with(field), "{selector}: {error}");
        }
        let text = MINIMAL.replace(
            "kill: { process: httpd }",
            "delete_pod: { grace_period: 1500ms }",
        );
        let error = parse(&text).unwrap_err().to_string();
        assert!(
            error.starts_with("method.faults[0].delete_pod.grace_period"),
            "{error}"
        );
    }

    fn with_probe(probe: &str) -> String {
        MINIMAL.replace("http: { url: \"http://10.0.0.2/\" }", probe)
    }

    #[test]
    fn probe_transport_fields_parse() {
        let e = parse(&with_probe(
            "http: { url: \"https://web.shop.svc:8443/health?deep=1\", method: HEAD, \
             headers: { X-Probe: chaos, Accept: \"text/plain; q=0.9\" }, \
             bearer_token_file: /run/token, ca_file: /run/ca.pem, expect_status: [200, 204] }",
        ))
        .unwrap();
        let http = e.steady_state.probes[0].http.as_ref().unwrap();
        assert_eq!(http.method, HttpMethod::Head);
        assert_eq!(http.headers["Accept"], "text/plain; q=0.9");
        assert_eq!(http.ca_file.as_deref(), Some(Path::new("/run/ca.pem")));
        assert!(e.steady_state.probes[0].connect_policy.is_none());

        let e = parse(&with_probe(
            "http: { url: \"http://web/\", body_matches: \"^ok( v[0-9]+)?$\" }",
        ))
        .unwrap();
        let pattern = e.steady_state.probes[0]
            .http
            .as_ref()
            .unwrap()
            .body_matches
            .clone();
        assert!(pattern.as_ref().unwrap().is_match("ok v2"));
        assert!(!pattern.unwrap().is_match("not ok"));

        let e = parse(&with_probe(
            "promql: { url: \"https://prometheus:9090/prom\", query: up, min: 1, \
             bearer_token_file: /run/token, headers: { X-Scope-OrgID: shop } }",
        ))
        .unwrap();
        let promql = e.steady_state.probes[0].promql.as_ref().unwrap();
        assert_eq!(promql.headers["X-Scope-OrgID"], "shop");
    }

    #[test]
    fn bad_probe_urls_headers_and_fields_name_the_field() {
        let cases = [
            (
                "http: { url: \"http://web/\\r\\nX-Injected: 1\" }",
                "steady_state.probes[0].http.url: contains a carriage return",
            ),
            (
                "http: { url: \"http://web/a b\" }",
                "steady_state.probes[0].http.url: contains a space",
            ),
            (
                "http: { url: \"http://web/\\u0000\" }",
                "steady_state.probes[0].http.url: contains a control character",
            ),
            (
                "http: { url: \"http://user:pw@web/\" }",
                "steady_state.probes[0].http.url: must not carry a user name",
            ),
            (
                "http: { url: \"gopher://web/\" }",
                "steady_state.probes[0].http.url: the scheme",
            ),
            (
                "tcp: { address: \"db:5432\\n\" }",
                "steady_state.probes[0].tcp.address: contains a line feed",
            ),
            (
                "tcp: { address: db }",
                "steady_state.probes[0].tcp.address: needs a port",
            ),
            (
                "promql: { url: \"http://p:9090/api/v1/query?query=up\", query: up, min: 1 }",
                "steady_state.probes[0].promql.url: must be Prometheus' base URL",
            ),
            (
                "promql: { url: \"http://p:9090\\t\", query: up, min: 1 }",
                "steady_state.probes[0].promql.url: contains a tab",
            ),
            (
                "promql: { url: \"http://p:9090\", query: \" \", min: 1 }",
                "steady_state.probes[0].promql.query",
            ),
            (
                "http: { url: \"http://web/\", headers: { \"X-A\": \"v\\r\\nX-B: 1\" } }",
                "steady_state.probes[0].http.headers.X-A: the value has a control",
            ),
            (
                "http: { url: \"http://web/\", headers: { \"X A\": v } }",
                "steady_state.probes[0].http.headers: a name with spaces",
            ),
            (
                "http: { url: \"http://web/\", headers: { \"X:A\": v } }",
                "steady_state.probes[0].http.headers: `X:A` is not a header name",
            ),
            (
                "http: { url: \"http://web/\", headers: { Host: evil } }",
                "steady_state.probes[0].http.headers.Host: is set by the probe's client",
            ),
            (
                "http: { url: \"http://web/\", headers: { Transfer-Encoding: chunked } }",
                "steady_state.probes[0].http.headers.Transfer-Encoding",
            ),
            (
                "http: { url: \"http://web/\", headers: { Authorization: x }, bearer_token_file: /t }",
                "steady_state.probes[0].http.headers.Authorization: conflicts",
            ),
            (
                "http: { url: \"http://web/\", bearer_token_file: \"/t\\n\" }",
                "steady_state.probes[0].http.bearer_token_file",
            ),
            (
                "promql: { url: \"http://p\", query: up, min: 1, headers: { \"X-A\": \"\\u0001\" } }",
                "steady_state.probes[0].promql.headers.X-A",
            ),
            (
                "http: { url: \"http://web/\", expect_status: [] }",
                "steady_state.probes[0].http.expect_status: needs",
            ),
            (
                "http: { url: \"http://web/\", expect_status: [2000] }",
                "steady_state.probes[0].http.expect_status: 2000",
            ),
            (
                "http: { url: \"http://web/\", method: HEAD, body_matches: ok }",
                "steady_state.probes[0].http.body_matches",
            ),
        ];
        for (probe, expected) in cases {
            let error = parse(&with_probe(probe)).unwrap_err().to_string();
            assert!(error.starts_with(expected), "{probe}: {error}");
            assert!(!error.contains(['\r', '\n', '\0']), "{error:?}");
        }
        // A header value is never quoted back: it may be a secret.
        let error = parse(&with_probe(
            "http: { url: \"http://web/\", headers: { X-Key: \"s3cret\\n\" } }",
        ))
        .unwrap_err()
        .to_string();
        assert!(!error.contains("s3cret"), "{error}");
    }

    #[test]
    fn methods_and_body_patterns_are_refused_with_their_line() {
        let error = parse(&with_probe(
            "http: { url: \"http://web/\", method: DELETE }",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("unknown variant `DELETE`") && error.contains("line 9"),
            "{error}"
        );
        let error = parse(&with_probe("http: { url: \"http://web/\", method: get }"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown variant `get`"), "{error}");
        let error = parse(&with_probe(
            "http: { url: \"http://web/\", body_matches: \"(ok\" }",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("not a regular expression") && error.contains("line 9"),
            "{error}"
        );
        let long = format!(
            "http: {{ url: \"http://web/\", body_matches: \"{}\" }}",
            "a".repeat(2000)
        );
        let error = parse(&with_probe(&long)).unwrap_err().to_string();
        assert!(error.contains("more than the 1024 accepted"), "{error}");
    }

    fn with_io(io: &str) -> String {
        MINIMAL.replace(
            "      kill: { process: httpd }",
            &format!("      duration: 30s\n      io: {io}"),
        )
    }

    #[test]
    fn an_io_step_parses_sizes_and_iops() {
        let e = parse(&with_io(
            "{ read_bps: 1MiB, write_bps: 512KiB, read_iops: 100, write_iops: 50, device: \"/dev/nvme0n1\" }",
        ))
        .unwrap();
        let step = &e.method.faults[0];
        let io = step.io.as_ref().unwrap();
        assert_eq!(io.read_bps, Some(1 << 20));
        assert_eq!(io.write_bps, Some(512 << 10));
        assert_eq!(io.read_iops, Some(100));
        assert_eq!(io.write_iops, Some(50));
        assert_eq!(io.device.as_deref(), Some("/dev/nvme0n1"));
        assert_eq!(step_kind(step), "io");

        let e = parse(&with_io("{ write_bps: 1048576 }")).unwrap();
        let io = e.method.faults[0].io.as_ref().unwrap();
        assert_eq!(io.write_bps, Some(1 << 20));
        assert_eq!(io.read_bps, None);
        assert_eq!(io.device, None);
    }

    #[test]
    fn an_io_step_without_a_limit_is_refused() {
        for io in [
            "{}",
            "{ device: \"8:0\" }",
            "{ read_bps: 0, write_iops: 0 }",
        ] {
            let error = parse(&with_io(io)).unwrap_err().to_string();
            assert!(
                error.starts_with("method.faults[0].io: fault `kill-web` needs at least one of"),
                "{io}: {error}"
            );
        }
        let error = parse(&with_io("{ write_bps: 1.5M }"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("expected a size") || error.contains("unknown unit"),
            "{error}"
        );
        let error = parse(&with_io("{ write_bytes: 1MiB }"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown field `write_bytes`"), "{error}");
    }

    #[test]
    fn an_io_step_with_another_kind_is_refused() {
        let text = MINIMAL.replace(
            "      kill: { process: httpd }",
            "      duration: 30s\n      pause: {}\n      io: { write_iops: 10 }",
        );
        let error = parse(&text).unwrap_err().to_string();
        assert_eq!(
            error,
            "method.faults[0]: needs exactly one of kill, cpu, memory, network, blackhole, pause, \
             io, disk_fill, io_stress, delete_pod"
        );
    }

    fn with_network(network: &str) -> String {
        MINIMAL.replace(
            "      kill: { process: httpd }",
            &format!("      duration: 30s\n      network: {network}"),
        )
    }

    #[test]
    fn a_network_rate_reads_as_people_write_it_or_as_bytes_per_second() {
        for (rate, bytes) in [
            ("1mbit", 125_000),
            ("100kbit", 12_500),
            ("10MB/s", 10_000_000),
            ("\"512KiB/s\"", 512 << 10),
            ("250000", 250_000),
            ("'1.5Mbit'", 187_500),
        ] {
            let e = parse(&with_network(&format!("{{ rate: {rate} }}"))).unwrap();
            let network = e.method.faults[0].network.as_ref().unwrap();
            assert_eq!(network.rate, Some(bytes), "{rate}");
        }
        let e = parse(&with_network("{ delay: 100ms }")).unwrap();
        let network = e.method.faults[0].network.as_ref().unwrap();
        assert_eq!(
            (network.rate, network.burst, network.queue),
            (None, None, None)
        );
        for (rate, expected) in [
            ("10mb", "could be bits or bytes"),
            ("100kbps", "ambiguous"),
            ("0", "above 0"),
            ("-5", "above 0"),
            ("1.5", "a fraction needs a unit"),
            ("1tbit", "unknown unit"),
        ] {
            let error = parse(&with_network(&format!("{{ rate: {rate} }}")))
                .unwrap_err()
                .to_string();
            assert!(
                error.contains(expected) && error.contains("rate"),
                "{rate}: {error}"
            );
        }
    }

    #[test]
    fn a_network_rate_takes_a_burst_and_a_queue_as_sizes() {
        let e = parse(&with_network(
            "{ rate: 2mbit, burst: 32KiB, queue: 100000 }",
        ))
        .unwrap();
        let network = e.method.faults[0].network.as_ref().unwrap();
        assert_eq!(
            (network.rate, network.burst, network.queue),
            (Some(250_000), Some(32 << 10), Some(100_000))
        );
        for (network, expected) in [
            (
                "{ delay: 10ms, burst: 32KiB }",
                "method.faults[0].network.burst: needs a rate",
            ),
            (
                "{ queue: 64KiB }",
                "method.faults[0].network.queue: needs a rate",
            ),
            (
                "{ rate: 1mbit, burst: 0 }",
                "method.faults[0].network.burst: must be above 0",
            ),
            (
                "{ rate: 1mbit, queue: 1.5M }",
                "method.faults[0].network: `1.5M`",
            ),
        ] {
            let error = parse(&with_network(network)).unwrap_err().to_string();
            assert!(error.contains(expected), "{network}: {error}");
        }
    }

    fn with_io_stress(stress: &str) -> String {
        MINIMAL.replace(
            "      kill: { process: httpd }",
            &format!("      duration: 30s\n      io_stress: {stress}"),
        )
    }

    #[test]
    fn an_io_stress_step_parses_every_field_or_none() {
        let e = parse(&with_io_stress(
            "{ workers: 2, bps: 10MiB, file_size: 8MiB, path: /data }",
        ))
        .unwrap();
        let step = &e.method.faults[0];
        let stress = step.io_stress.as_ref().unwrap();
        assert_eq!(stress.workers, Some(2));
        assert_eq!(stress.bps, Some(10 << 20));
        assert_eq!(stress.file_size, Some(8 << 20));
        assert_eq!(stress.path.as_deref(), Some("/data"));
        assert_eq!(step_kind(step), "io_stress");
        let e = parse(&with_io_stress("{}")).unwrap();
        let stress = e.method.faults[0].io_stress.as_ref().unwrap();
        assert_eq!(
            (stress.workers, stress.bps, stress.file_size),
            (None, None, None)
        );
    }

    #[test]
    fn an_io_stress_step_is_refused_naming_the_field() {
        for (stress, expected) in [
            (
                "{ workers: 0 }",
                "method.faults[0].io_stress.workers: must be 1 to 8",
            ),
            (
                "{ workers: 9 }",
                "method.faults[0].io_stress.workers: must be 1 to 8",
            ),
            (
                "{ bps: 1000 }",
                "method.faults[0].io_stress.bps: must be at least 64KiB",
            ),
            (
                "{ file_size: 4KiB }",
                "method.faults[0].io_stress.file_size: must be at least 1MiB",
            ),
            (
                "{ path: data }",
                "method.faults[0].io_stress.path: \"data\" is not absolute",
            ),
        ] {
            let error = parse(&with_io_stress(stress)).unwrap_err().to_string();
            assert!(error.starts_with(expected), "{stress}: {error}");
        }
        let error = parse(&with_io_stress("{ rate: 1MiB }"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown field `rate`"), "{error}");
    }

    fn with_disk_fill(fill: &str) -> String {
        MINIMAL.replace(
            "      kill: { process: httpd }",
            &format!("      duration: 30s\n      disk_fill: {fill}"),
        )
    }

    #[test]
    fn a_disk_fill_step_parses_a_size_or_a_percent_and_a_path() {
        let e = parse(&with_disk_fill("{ size: 1GiB }")).unwrap();
        let step = &e.method.faults[0];
        let fill = step.disk_fill.as_ref().unwrap();
        assert_eq!(fill.size, Some(1 << 30));
        assert_eq!(fill.percent, None);
        assert_eq!(fill.path, None);
        assert_eq!(step_kind(step), "disk_fill");
        assert_eq!(step.duration, Duration::from_secs(30));

        let e = parse(&with_disk_fill("{ percent: 90, path: /data }")).unwrap();
        let fill = e.method.faults[0].disk_fill.as_ref().unwrap();
        assert_eq!(fill.size, None);
        assert_eq!(fill.percent, Some(90));
        assert_eq!(fill.path.as_deref(), Some("/data"));

        let e = parse(&with_disk_fill("{ size: 1048576, path: \"/\" }")).unwrap();
        let fill = e.method.faults[0].disk_fill.as_ref().unwrap();
        assert_eq!(fill.size, Some(1 << 20));
        assert_eq!(fill.path.as_deref(), Some("/"));
    }

    #[test]
    fn a_disk_fill_step_is_refused_naming_the_field() {
        let cases = [
            (
                "{}",
                "method.faults[0].disk_fill: fault `kill-web` needs exactly one of size and percent",
            ),
            (
                "{ path: /data }",
                "method.faults[0].disk_fill: fault `kill-web` needs exactly one of size and percent",
            ),
            (
                "{ size: 1GiB, percent: 50 }",
                "method.faults[0].disk_fill: fault `kill-web` needs exactly one of size and percent",
            ),
            (
                "{ size: 0 }",
                "method.faults[0].disk_fill.size: must be above 0",
            ),
            (
                "{ percent: 0 }",
                "method.faults[0].disk_fill.percent: must be 1 to 99",
            ),
            (
                "{ percent: 100 }",
                "method.faults[0].disk_fill.percent: must be 1 to 99",
            ),
            (
                "{ percent: 90, path: data }",
                "method.faults[0].disk_fill.path: \"data\" is not absolute",
            ),
            (
                "{ percent: 90, path: \"\" }",
                "method.faults[0].disk_fill.path: \"\" is not absolute",
            ),
            (
                "{ percent: 90, path: /data/../etc }",
                "method.faults[0].disk_fill.path: \"/data/../etc\" has a `..` step",
            ),
            (
                "{ percent: 90, path: \"/data\\n\" }",
                "method.faults[0].disk_fill.path: \"/data\\n\" contains a control character",
            ),
        ];
        for (fill, expected) in cases {
            let error = parse(&with_disk_fill(fill)).unwrap_err().to_string();
            assert!(error.starts_with(expected), "{fill}: {error}");
            assert!(!error.contains(['\r', '\n', '\0']), "{error:?}");
        }
        let long = format!(
            "{{ size: 1GiB, path: /{} }}",
            "a".repeat(MAX_FILL_PATH_BYTES)
        );
        let error = parse(&with_disk_fill(&long)).unwrap_err().to_string();
        assert!(
            error.starts_with("method.faults[0].disk_fill.path: 4097 bytes, more than the 4096"),
            "{error}"
        );
        // Sizes as io and memory read them; unknown fields and a percent that is not a
        // whole number are refused with their line.
        let error = parse(&with_disk_fill("{ size: 1.5G }"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("expected a size") || error.contains("unknown unit"),
            "{error}"
        );
        let error = parse(&with_disk_fill("{ bytes: 1GiB }"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("unknown field `bytes`") && error.contains("line 16"),
            "{error}"
        );
        let error = parse(&with_disk_fill("{ percent: -5 }"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("line 16"), "{error}");
        // A fill lasts its duration: there is no one-shot fill.
        let text = MINIMAL.replace(
            "      kill: { process: httpd }",
            "      disk_fill: { size: 1GiB }",
        );
        let error = parse(&text).unwrap_err().to_string();
        assert!(error.starts_with("method.faults[0].duration"), "{error}");
    }

    #[test]
    fn a_disk_fill_step_with_another_kind_is_refused() {
        let text = MINIMAL.replace(
            "      kill: { process: httpd }",
            "      duration: 30s\n      io: { write_iops: 10 }\n      disk_fill: { size: 1GiB }",
        );
        let error = parse(&text).unwrap_err().to_string();
        assert!(
            error.starts_with("method.faults[0]: needs exactly one of")
                && error.contains("disk_fill"),
            "{error}"
        );
    }

    #[test]
    fn label_syntax() {
        assert!(is_label_key("app"));
        assert!(is_label_key("app.kubernetes.io/name"));
        assert!(is_label_key("cnpg.io/instanceRole"));
        assert!(!is_label_key("Bad.Prefix/x"));
        assert!(!is_label_key("/x"));
        assert!(!is_label_key("a=b"));
        assert!(is_label_value(""));
        assert!(is_label_value("us-east-1a"));
        assert!(!is_label_value("-x"));
        assert!(!is_label_value(&"x".repeat(64)));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_size("1Gi").unwrap(), 1 << 30);
        assert_eq!(parse_size("500M").unwrap(), 500 << 20);
        assert_eq!(parse_size("500MB").unwrap(), 500_000_000);
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert!(parse_size("1.5G").is_err());
        assert!(parse_size("12XB").is_err());
    }
}
