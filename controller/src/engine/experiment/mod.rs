//! The experiment file: its YAML schema, parsing (unknown fields are refused with their
//! line) and the checks that serde cannot express. Documented in docs/experiments.md.

pub mod limits;
pub mod scan;
pub mod values;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::agents::fleet::AgentsSpec;
use crate::agents::kube_api::ZONE_LABEL;
use crate::engine::experiment::values::{duration, optional_duration};
use crate::engine::probe::url::{parse_address, parse_url};
pub use crate::fault_spec::FaultSpec;
use crate::fault_spec::yaml_name;

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
    Yaml(#[from] crate::engine::experiment::scan::YamlScanError),
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
    pub load: Option<crate::engine::load::LoadSpec>,
}

fn default_lease_ttl() -> Duration {
    Duration::from_secs(5)
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
    pub connect_policy: Option<std::sync::Arc<crate::engine::probe::policy::ProbeDestinations>>,
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
    /// `http(s)://HOST[:PORT][/PATH][?QUERY]`, parsed strictly (see `crate::engine::probe::url`).
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

/// One step of the method: a fault on targets for a duration. In the file the fault is
/// one key beside `name`, `target` and `duration` (`cpu: { load: 80 }`); a second one is
/// refused where it is written, so a step is always exactly one fault.
#[derive(Debug, Clone)]
pub struct FaultStep {
    pub name: String,
    pub target: TargetSpec,
    /// How long the fault stays (the observation window of a one-shot kill or delete_pod).
    pub duration: Duration,
    pub fault: FaultSpec,
}

/// The keys of a step, for "unknown field" errors: its own and every fault's.
static STEP_FIELDS: std::sync::LazyLock<Vec<&'static str>> = std::sync::LazyLock::new(|| {
    ["name", "target", "duration"]
        .into_iter()
        .chain(FaultSpec::KEYS.iter().copied())
        .collect()
});

/// Read key by key (not through serde's `flatten`, which buffers the map and loses the
/// line of every error inside it), so that a bad field of the fault, an unknown key and a
/// second fault are all refused with their line.
impl<'de> Deserialize<'de> for FaultStep {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<FaultStep, D::Error> {
        d.deserialize_map(StepVisitor)
    }
}

struct StepVisitor;

/// A step's `duration`, read as every duration of the file.
struct StepDuration(Duration);

impl<'de> Deserialize<'de> for StepDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<StepDuration, D::Error> {
        duration(d).map(StepDuration)
    }
}

/// A key of a step, told apart as it is read, so that a key that cannot be there (unknown,
/// twice, a second fault) is refused with its own line.
enum StepKey {
    Name,
    Target,
    Duration,
    Fault(&'static str),
}

/// What the step has read so far: a key already read is refused the second time.
#[derive(Default)]
struct KeysSeen {
    name: bool,
    target: bool,
    duration: bool,
    fault: Option<&'static str>,
}

impl<'de> serde::de::DeserializeSeed<'de> for &KeysSeen {
    type Value = StepKey;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<StepKey, D::Error> {
        d.deserialize_str(self)
    }
}

impl serde::de::Visitor<'_> for &KeysSeen {
    type Value = StepKey;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a field of a fault step")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<StepKey, E> {
        let (step_key, seen) = match key {
            "name" => (StepKey::Name, self.name),
            "target" => (StepKey::Target, self.target),
            "duration" => (StepKey::Duration, self.duration),
            other => match FaultSpec::KEYS.iter().find(|k| **k == other) {
                Some(kind) => match self.fault {
                    Some(first) if first != *kind => {
                        return Err(E::custom(format!(
                            "`{kind}` beside `{first}`: a step is exactly one fault (one of \
                             {}); write the other as a step of its own",
                            FaultSpec::KEYS.join(", ")
                        )));
                    }
                    first => (StepKey::Fault(kind), first.is_some()),
                },
                None => return Err(E::unknown_field(other, &STEP_FIELDS)),
            },
        };
        if seen {
            return Err(E::custom(format!("duplicate field `{key}`")));
        }
        Ok(step_key)
    }
}

impl<'de> serde::de::Visitor<'de> for StepVisitor {
    type Value = FaultStep;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a fault step: name, target, duration and one fault")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<FaultStep, A::Error> {
        use serde::de::Error;
        let mut seen = KeysSeen::default();
        let (mut name, mut target, mut duration, mut fault) = (None, None, None, None);
        while let Some(key) = map.next_key_seed(&seen)? {
            match key {
                StepKey::Name => {
                    name = Some(map.next_value::<String>()?);
                    seen.name = true;
                }
                StepKey::Target => {
                    target = Some(map.next_value::<TargetSpec>()?);
                    seen.target = true;
                }
                StepKey::Duration => {
                    duration = Some(map.next_value::<StepDuration>()?.0);
                    seen.duration = true;
                }
                StepKey::Fault(kind) => {
                    fault = FaultSpec::next_value_of(kind, &mut map)?;
                    seen.fault = Some(kind);
                }
            }
        }
        let name = name.ok_or_else(|| A::Error::missing_field("name"))?;
        let fault = fault.ok_or_else(|| {
            A::Error::custom(format!(
                "fault `{name}` has no fault: it needs one of {}",
                FaultSpec::KEYS.join(", ")
            ))
        })?;
        // A partition's two sides are its own `from` and `to`; every other step has one.
        let target = match (&fault, target) {
            (FaultSpec::Partition(_), Some(_)) => {
                return Err(A::Error::custom(format!(
                    "fault `{name}`: a partition selects its pods with partition.from and \
                     partition.to, not `target`"
                )));
            }
            (FaultSpec::Partition(_), None) => TargetSpec::default(),
            (_, target) => target.ok_or_else(|| A::Error::missing_field("target"))?,
        };
        Ok(FaultStep {
            name,
            target,
            duration: duration.unwrap_or_default(),
            fault,
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
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

impl FaultStep {
    /// The step's selectors, each with the field it is written under: its `target`, or a
    /// partition's two sides. Every rule on targets (validation, limits, protected
    /// namespaces, the Kubernetes API) holds for each.
    pub fn selectors(&self) -> Vec<(&'static str, &TargetSpec)> {
        match &self.fault {
            FaultSpec::Partition(p) => vec![("partition.from", &p.from), ("partition.to", &p.to)],
            _ => vec![("target", &self.target)],
        }
    }
}

/// The kind of a fault step, for reports (`process` for a kill, as the API names it).
pub fn step_kind(step: &FaultStep) -> &'static str {
    step.fault.kind()
}

impl Experiment {
    /// Where this experiment needs the Kubernetes API (`fault `x`: target.labels`), if anywhere.
    pub fn kube_api_need(&self) -> Option<String> {
        self.method.faults.iter().find_map(|step| {
            let field = if matches!(step.fault, FaultSpec::DeletePod(_)) {
                Some("delete_pod".to_string())
            } else {
                step.selectors()
                    .into_iter()
                    .find_map(|(at, t)| t.kube_api_field().map(|f| format!("{at}.{f}")))
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
    crate::engine::experiment::scan::check(text)?;
    let experiment: Experiment =
        serde_norway::from_str(text).map_err(|e| ExperimentError::Parse(e.to_string()))?;
    crate::engine::experiment::limits::check(&experiment)?;
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
        crate::engine::load::validate(load).map_err(|(field, message)| {
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
    if step.duration.is_zero() && !step.fault.is_one_shot() {
        return Err(invalid(
            format!("{field}.duration"),
            "is required for every fault but a one-shot kill or delete_pod",
        ));
    }
    if let Err(refused) = step.fault.check(&yaml_name) {
        let at = match refused.field {
            Some(part) => format!("{field}.{}.{part}", step.fault.key()),
            None => format!("{field}.{}", step.fault.key()),
        };
        return Err(invalid(at, refused.message));
    }
    for (at, t) in step.selectors() {
        validate_target(t, &format!("{field}.{at}"))?;
        if at.starts_with("partition") && t.include_host_network {
            return Err(invalid(
                format!("{field}.{at}.include_host_network"),
                "a partition never takes a hostNetwork pod: its blackhole would cut the whole node",
            ));
        }
    }
    Ok(())
}

/// A step's selector (its target, or one side of a partition) under `field`.
fn validate_target(t: &TargetSpec, field: &str) -> Result<(), ExperimentError> {
    let field = field.to_string();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fault_spec::MAX_FILL_PATH_BYTES;

    /// The spec of a step's fault, which the test knows the kind of.
    macro_rules! spec_of {
        ($step:expr, $kind:ident) => {
            match &$step.fault {
                FaultSpec::$kind(spec) => spec,
                other => panic!("{other:?}"),
            }
        };
    }

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
        assert_eq!(spec_of!(step, Kill).signal, "KILL");
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
            spec_of!(step, DeletePod).grace_period,
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
        let io = spec_of!(step, Io);
        assert_eq!(io.read_bps, Some(1 << 20));
        assert_eq!(io.write_bps, Some(512 << 10));
        assert_eq!(io.read_iops, Some(100));
        assert_eq!(io.write_iops, Some(50));
        assert_eq!(io.device.as_deref(), Some("/dev/nvme0n1"));
        assert_eq!(step_kind(step), "io");

        let e = parse(&with_io("{ write_bps: 1048576 }")).unwrap();
        let io = spec_of!(e.method.faults[0], Io);
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
                error.starts_with("method.faults[0].io: needs at least one of read_bps,"),
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
            "method.faults[0]: `io` beside `pause`: a step is exactly one fault (one of kill, \
             cpu, memory, network, blackhole, pause, io, disk_fill, io_stress, dns, delete_pod, \
             partition); \
             write the other as a step of its own at line 17 column 7"
        );
        // The same fault twice is a duplicate field, on its line.
        let text = MINIMAL.replace(
            "      kill: { process: httpd }",
            "      duration: 30s\n      io: { write_iops: 10 }\n      io: { read_iops: 10 }",
        );
        let error = parse(&text).unwrap_err().to_string();
        assert!(
            error.contains("duplicate field `io`") && error.contains("line 17"),
            "{error}"
        );
        // A step without a fault names its step.
        let text = MINIMAL.replace("      kill: { process: httpd }\n", "      duration: 30s\n");
        let error = parse(&text).unwrap_err().to_string();
        assert!(
            error.starts_with(
                "method.faults[0]: fault `kill-web` has no fault: it needs one of kill, cpu,"
            ),
            "{error}"
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
            let network = spec_of!(e.method.faults[0], Network);
            assert_eq!(network.rate, Some(bytes), "{rate}");
        }
        let e = parse(&with_network("{ delay: 100ms }")).unwrap();
        let network = spec_of!(e.method.faults[0], Network);
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
        let network = spec_of!(e.method.faults[0], Network);
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
        let stress = spec_of!(step, IoStress);
        assert_eq!(stress.workers, Some(2));
        assert_eq!(stress.bps, Some(10 << 20));
        assert_eq!(stress.file_size, Some(8 << 20));
        assert_eq!(stress.path.as_deref(), Some("/data"));
        assert_eq!(step_kind(step), "io_stress");
        let e = parse(&with_io_stress("{}")).unwrap();
        let stress = spec_of!(e.method.faults[0], IoStress);
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
        let fill = spec_of!(step, DiskFill);
        assert_eq!(fill.size, Some(1 << 30));
        assert_eq!(fill.percent, None);
        assert_eq!(fill.path, None);
        assert_eq!(step_kind(step), "disk_fill");
        assert_eq!(step.duration, Duration::from_secs(30));

        let e = parse(&with_disk_fill("{ percent: 90, path: /data }")).unwrap();
        let fill = spec_of!(e.method.faults[0], DiskFill);
        assert_eq!(fill.size, None);
        assert_eq!(fill.percent, Some(90));
        assert_eq!(fill.path.as_deref(), Some("/data"));

        let e = parse(&with_disk_fill("{ size: 1048576, path: \"/\" }")).unwrap();
        let fill = spec_of!(e.method.faults[0], DiskFill);
        assert_eq!(fill.size, Some(1 << 20));
        assert_eq!(fill.path.as_deref(), Some("/"));
    }

    #[test]
    fn a_disk_fill_step_is_refused_naming_the_field() {
        let cases = [
            (
                "{}",
                "method.faults[0].disk_fill: needs exactly one of size and percent",
            ),
            (
                "{ path: /data }",
                "method.faults[0].disk_fill: needs exactly one of size and percent",
            ),
            (
                "{ size: 1GiB, percent: 50 }",
                "method.faults[0].disk_fill: needs exactly one of size and percent",
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
            error.starts_with(
                "method.faults[0]: `disk_fill` beside `io`: a step is exactly one fault"
            ) && error.contains("line 17"),
            "{error}"
        );
    }

    fn with_partition(step: &str) -> String {
        MINIMAL.replace(
            "      target: { targets: [\"pod:dev/web-0/web\"] }\n      kill: { process: httpd }\n",
            &format!("      duration: 30s\n{step}"),
        )
    }

    #[test]
    fn a_partition_step_reads_two_selectors_and_a_direction() {
        let e = parse(&with_partition(
            "      partition:\n        from: { namespace: spark, labels: { spark-role: driver } }\n        to: { namespace: spark, pod: \"worker-*\", mode: all }\n        direction: to\n",
        ))
        .unwrap();
        let step = &e.method.faults[0];
        let partition = spec_of!(step, Partition);
        assert_eq!(partition.from.namespace.as_deref(), Some("spark"));
        assert_eq!(
            partition.from.labels.get("spark-role").map(String::as_str),
            Some("driver")
        );
        assert_eq!(partition.to.pod.as_deref(), Some("worker-*"));
        assert_eq!(partition.to.mode, SelectMode::All);
        assert_eq!(
            partition.direction,
            crate::engine::partition::PartitionDirection::To
        );
        assert_eq!(step_kind(step), "partition");
        assert_eq!(
            step.selectors()
                .iter()
                .map(|(at, _)| *at)
                .collect::<Vec<_>>(),
            ["partition.from", "partition.to"]
        );
        // Labels on a side need the Kubernetes API, named by their side.
        assert_eq!(
            e.kube_api_need().as_deref(),
            Some("fault `kill-web`: partition.from.labels")
        );
        // Both directions by default.
        let e = parse(&with_partition(
            "      partition: { from: { pod: a }, to: { pod: b } }\n",
        ))
        .unwrap();
        let partition = spec_of!(e.method.faults[0], Partition);
        assert_eq!(
            partition.direction,
            crate::engine::partition::PartitionDirection::Both
        );
    }

    #[test]
    fn a_partition_step_is_refused_where_a_side_is_wrong() {
        for (step, expected) in [
            (
                "      partition: { from: { pod: a } }\n",
                "missing field `to`",
            ),
            (
                "      partition: { from: { pod: a }, to: {} }\n",
                "method.faults[0].partition.to: needs targets and/or a selector",
            ),
            (
                "      partition: { from: { pod: a }, to: { pod: b }, direction: sideways }\n",
                "unknown variant `sideways`",
            ),
            (
                "      partition: { from: { pod: a, mode: fixed }, to: { pod: b } }\n",
                "method.faults[0].partition.from.count: mode fixed needs a count",
            ),
            (
                "      partition: { from: { pod: a, include_host_network: true }, to: { pod: b } }\n",
                "method.faults[0].partition.from.include_host_network: a partition never takes a hostNetwork pod",
            ),
            (
                "      target: { pod: a }\n      partition: { from: { pod: a }, to: { pod: b } }\n",
                "a partition selects its pods with partition.from and partition.to, not `target`",
            ),
            (
                "      partition: { from: { pod: a }, to: { pod: b } }\n      blackhole: {}\n",
                "`blackhole` beside `partition`",
            ),
        ] {
            let error = parse(&with_partition(step)).unwrap_err().to_string();
            assert!(error.contains(expected), "{step}: {error}");
        }
        // A partition lasts its duration.
        let text = with_partition("      partition: { from: { pod: a }, to: { pod: b } }\n")
            .replace("      duration: 30s\n", "");
        let error = parse(&text).unwrap_err().to_string();
        assert!(error.starts_with("method.faults[0].duration"), "{error}");
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
}
