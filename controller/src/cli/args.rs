//! The command line: every subcommand and flag (clap), and the check that an `inject`
//! flag means what the same field of the experiment file means.

use std::path::PathBuf;
use std::time::Duration;

use crate::agents::certs;
use crate::fault_spec::{
    BlackholeSpec, CpuSpec, DiskFillSpec, DnsSpec, FaultSpec, IoSpec, IoStressSpec, KillSpec,
    MemorySpec, NetworkSpec, PauseSpec,
};
use crate::units::duration::parse_duration;
use anyhow::Result;
use clap::{Args, Parser, Subcommand, ValueEnum};

/// The heading of the options every subcommand takes (the agent, TLS, output), so that a
/// subcommand's own options read together above them.
pub(crate) const GLOBAL: &str = "Global options";

#[derive(Debug, Parser)]
#[command(
    name = "chaosctl",
    version,
    about = "Chaos Control: inject faults through chaos-agents"
)]
pub struct Cli {
    /// The agent to talk to (HOST:PORT).
    #[arg(
        long,
        global = true,
        env = "CHAOS_AGENT",
        default_value = "127.0.0.1:7090",
        help_heading = GLOBAL
    )]
    pub agent: String,
    /// Directory with ca.pem, client.pem and client-key.pem.
    #[arg(long, global = true, env = "CHAOS_TLS_DIR", help_heading = GLOBAL)]
    pub tls_dir: Option<PathBuf>,
    /// Talk to an agent started with --insecure-plaintext.
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub insecure_plaintext: bool,
    /// Output format.
    #[arg(
        short = 'o',
        long = "output",
        global = true,
        value_enum,
        default_value = "table",
        help_heading = GLOBAL
    )]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a development CA and agent + client certificates for mTLS.
    Certs {
        #[arg(long)]
        out: PathBuf,
        /// Extra names or IPs for the agent certificate (repeatable).
        #[arg(long = "agent-name")]
        agent_names: Vec<String>,
        /// An extra client certificate NAME.pem (CN NAME, O ROLE: admin, operator or
        /// viewer), which the agents' default policy gives ROLE (repeatable).
        #[arg(long = "client", value_name = "NAME:ROLE")]
        clients: Vec<certs::ClientSpec>,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Inject a fault.
    #[command(subcommand)]
    Inject(Inject),
    /// List the agent's faults.
    List {
        /// Also the recently ended faults.
        #[arg(long)]
        all: bool,
    },
    /// Show one fault.
    Get { id: String },
    /// Revert a fault, or all of them.
    Revert {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// What the agent's node offers.
    Capabilities,
    /// The containers on the agent's node.
    Targets {
        /// Only pods of this namespace.
        #[arg(long)]
        namespace: Option<String>,
    },
    /// Run an experiment file (docs/experiments.md). Exit status: 0 passed, 1 failed,
    /// 2 deviated, 3 aborted.
    Run {
        experiment: PathBuf,
        /// Also write an HTML report with a chart per probe.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Connect, select targets and print the plan; inject nothing.
        #[arg(long)]
        dry_run: bool,
        /// Run against these agents (HOST:PORT, comma-separated) instead of the file's;
        /// --tls-dir / --insecure-plaintext then replace the file's TLS settings.
        #[arg(long, value_delimiter = ',')]
        agents: Vec<String>,
        /// Kubeconfig for steps that select by labels or zone or delete pods (default:
        /// KUBECONFIG, ~/.kube/config, then the in-cluster service account).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Let the experiment target kube-system and chaos-control (explicit targets,
        /// selectors and delete_pod); refused by default.
        #[arg(long)]
        include_protected: bool,
    },
    /// Long-running controller: serves the Controller gRPC API (mTLS with the
    /// controller certificate of --tls-dir), runs the configured experiments on their
    /// schedule, watches the agents, serves /metrics and /healthz.
    Serve {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where the Controller gRPC API listens.
        #[arg(long, default_value = "0.0.0.0:7093")]
        api_listen: std::net::SocketAddr,
        /// ca.pem, controller.pem, controller-key.pem for the API (default: --tls-dir).
        #[arg(long)]
        api_tls_dir: Option<PathBuf>,
        /// How often the API's TLS files are read again, in seconds: a renewed
        /// certificate is served from then on.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
        tls_reload_secs: u64,
        /// Submitted runs beyond this many running at once are refused (ResourceExhausted).
        #[arg(long, default_value_t = 4)]
        max_concurrent_runs: usize,
        /// Finished runs remembered for `chaosctl runs` and GetRun.
        #[arg(long, default_value_t = 100)]
        keep_finished_runs: usize,
        /// Most connections to the API at once, counted from accept (TLS handshakes in
        /// progress count); one more is closed at once.
        #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
        max_api_connections: u64,
        /// Let submitted experiments use exec probes (commands on this host).
        #[arg(long)]
        allow_exec_probes: bool,
        /// Let scheduled and submitted runs target kube-system and chaos-control
        /// (explicit targets, selectors and delete_pod); refused by default.
        #[arg(long)]
        include_protected: bool,
        /// Who may use the API (the agents' policy format); without it a caller's role
        /// is its client certificate's Subject O.
        #[arg(long, env = "CHAOS_AUTHZ_POLICY")]
        authz_policy: Option<PathBuf>,
        /// serve's log on stderr (the audit lines among it): `text` or `json`.
        #[arg(long, env = "CHAOS_LOG_FORMAT", value_parser = ["text", "json"], default_value = "text")]
        log_format: String,
    },
    /// Submit an experiment file to `chaosctl serve`; prints the run id. With --wait,
    /// follows the run and ends like `run` (report, exit status by verdict).
    Submit {
        experiment: PathBuf,
        #[command(flatten)]
        controller: ControllerArg,
        #[arg(long)]
        wait: bool,
    },
    /// The runs `chaosctl serve` knows: running and recently finished.
    Runs {
        #[command(flatten)]
        controller: ControllerArg,
    },
    /// Cancel a run on `chaosctl serve`: every fault it injected is reverted at once.
    Cancel {
        id: String,
        #[command(flatten)]
        controller: ControllerArg,
    },
}

#[derive(Debug, Args)]
pub struct ControllerArg {
    /// The controller's API (HOST:PORT of `chaosctl serve --api-listen`).
    #[arg(long, env = "CHAOS_CONTROLLER", default_value = "127.0.0.1:7093")]
    pub controller: String,
}

#[derive(Debug, Args)]
pub struct Common {
    /// pid:N, container:ID, pod:NS/NAME[/CONTAINER] or cgroup:PATH.
    #[arg(long)]
    pub target: String,
    /// Validate and resolve only; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `chaosctl inject KIND`: each kind's flags are the fields of its fault spec
/// (`crate::fault_spec`), the same that an experiment step's `KIND:` takes.
#[derive(Debug, Subcommand)]
pub enum Inject {
    /// Send a signal to the target's processes (default: SIGKILL to the container's init).
    Kill(KillArgs),
    /// Load the target's CPU to a percentage of its limit (of its cpuset when unlimited).
    Cpu(Timed<CpuSpec>),
    /// Hold resident memory in the target's cgroup.
    Memory(Timed<MemorySpec>),
    /// Impair the target's traffic with netem (delay, loss, ...), in its netns.
    Network(Timed<NetworkSpec>),
    /// Drop the target's outgoing traffic (all, or to CIDRs / ports) for the duration.
    Blackhole(Timed<BlackholeSpec>),
    /// Freeze every process of the target's containers (their cgroup freezer) for the
    /// duration; a pid: target is refused (stop one process with `inject kill --signal STOP`).
    Pause(Timed<PauseSpec>),
    /// Throttle the block IO of the target's containers (their cgroup's io.max or blkio
    /// throttle) for the duration; at least one limit above 0, a pid: target is refused.
    Io(Timed<IoSpec>),
    /// Fill a filesystem the target writes to with one file (.chaos-disk-fill-<hex>, a
    /// name unique to the fault, in --path, allocated at once) for the duration, removed at
    /// every end; never beyond what df shows available, nor below the agent's free floor of
    /// a node filesystem. A cgroup: target is refused.
    DiskFill(Timed<DiskFillSpec>),
    /// Run workers in the target's cgroup that write and read back a file each
    /// (.chaos-io-stress-<id>-<n> in --path, direct IO where the filesystem takes it) for
    /// the duration, charged to the container; the files are removed at every end. A
    /// cgroup: target is refused.
    IoStress(Timed<IoStressSpec>),
    /// Fault the target's name lookups by name (--rule, in order, the first match wins):
    /// NXDOMAIN, SERVFAIL, no answer, a late answer or given addresses; other names resolve
    /// through the pod's own nameservers. Refused for a hostNetwork pod or a process of the
    /// node.
    Dns(Timed<DnsSpec>),
}

/// A fault that lasts: its target, its spec's flags, and how long.
#[derive(Debug, Args)]
pub struct Timed<S: Args> {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub fault: S,
    /// How long the fault lasts, e.g. 30s, 5m; the agent reverts it then, whatever becomes
    /// of chaosctl.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Duration,
}

/// A kill: once, unless --interval repeats it for --duration (or a stop signal holds the
/// processes stopped for it).
#[derive(Debug, Args)]
pub struct KillArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub fault: KillSpec,
    /// With --interval: how long to repeat; with a stop signal: how long the processes stay
    /// stopped.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
}

impl Inject {
    /// The target, the fault and its duration (0 for a one-shot kill).
    pub(crate) fn into_parts(self) -> (Common, FaultSpec, Duration) {
        match self {
            Inject::Kill(a) => (
                a.common,
                FaultSpec::Kill(a.fault),
                a.duration.unwrap_or_default(),
            ),
            Inject::Cpu(a) => (a.common, FaultSpec::Cpu(a.fault), a.duration),
            Inject::Memory(a) => (a.common, FaultSpec::Memory(a.fault), a.duration),
            Inject::Network(a) => (a.common, FaultSpec::Network(a.fault), a.duration),
            Inject::Blackhole(a) => (a.common, FaultSpec::Blackhole(a.fault), a.duration),
            Inject::Pause(a) => (a.common, FaultSpec::Pause(a.fault), a.duration),
            Inject::Io(a) => (a.common, FaultSpec::Io(a.fault), a.duration),
            Inject::DiskFill(a) => (a.common, FaultSpec::DiskFill(a.fault), a.duration),
            Inject::IoStress(a) => (a.common, FaultSpec::IoStress(a.fault), a.duration),
            Inject::Dns(a) => (a.common, FaultSpec::Dns(a.fault), a.duration),
        }
    }
}

/// The subcommand of `chaosctl inject` that carries a fault of this key (`disk_fill`:
/// `disk-fill`).
pub(crate) fn inject_subcommand_name(key: &str) -> String {
    key.replace('_', "-")
}

/// A field of `fault`'s spec as `chaosctl inject` spells it: its flag (`ports`: `--port`).
pub(crate) fn flag_of(fault: &FaultSpec, field: &'static str) -> String {
    let command = <Cli as clap::CommandFactory>::command();
    let long = command
        .find_subcommand("inject")
        .and_then(|inject| inject.find_subcommand(inject_subcommand_name(fault.key())))
        .and_then(|sub| {
            sub.get_arguments()
                .find(|arg| arg.get_id() == field)
                .and_then(|arg| arg.get_long().map(str::to_string))
        })
        .unwrap_or_else(|| field.replace('_', "-"));
    format!("--{long}")
}

/// What the file's check refuses, refused here too, naming the flags.
pub(crate) fn check_flags(fault: &FaultSpec) -> Result<()> {
    fault
        .check(&|field| flag_of(fault, field))
        .map_err(|refused| {
            let subcommand = inject_subcommand_name(fault.key());
            match refused.field {
                Some(field) => anyhow::anyhow!(
                    "inject {subcommand}: {}: {}",
                    flag_of(fault, field),
                    refused.message
                ),
                None => anyhow::anyhow!("inject {subcommand}: {}", refused.message),
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::experiment::FaultStep;
    use anyhow::Context;
    use api::inject_request::Fault;
    use chaos_proto::api;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("chaosctl").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_consistent() {
        <Cli as clap::CommandFactory>::command().debug_assert();
    }

    /// `chaosctl inject KIND --target pod:dev/db-0 ARGS --duration 1m`.
    fn inject(kind: &str, extra: &[&str]) -> Result<Cli, clap::Error> {
        let mut args = vec!["inject", kind, "--target", "pod:dev/db-0"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--duration", "1m"]);
        parse(&args)
    }

    /// The target, spec and duration a parsed `chaosctl inject` carries.
    fn parts_of(cli: Cli) -> (Common, FaultSpec, Duration) {
        match cli.command {
            Command::Inject(inject) => inject.into_parts(),
            other => panic!("{other:?}"),
        }
    }

    /// The agent's fault `chaosctl inject KIND ARGS` would send, after its checks.
    fn fault_of(kind: &str, extra: &[&str]) -> Result<Fault> {
        let (_, spec, _) = parts_of(inject(kind, extra)?);
        check_flags(&spec)?;
        spec.agent_fault().context("no agent fault")
    }

    fn inject_network(extra: &[&str]) -> Result<Cli, clap::Error> {
        inject("network", extra)
    }

    fn network_fault_of(extra: &[&str]) -> api::NetworkFault {
        match fault_of("network", extra).unwrap() {
            Fault::Network(network) => network,
            other => panic!("{other:?}"),
        }
    }

    /// The flags of `chaosctl inject` that are no field of a step's fault, and where the
    /// experiment file says the same instead.
    const NOT_FAULT_FIELDS: [(&str, &str); 3] = [
        (
            "target",
            "a step's `target:` (explicit targets or a selector)",
        ),
        (
            "dry_run",
            "`chaosctl run --dry-run`, for the whole experiment",
        ),
        ("duration", "a step's `duration:`, beside its fault"),
    ];

    /// `(subcommand, field, value, the fields it needs beside it)`.
    type Sample = (
        &'static str,
        &'static str,
        &'static str,
        &'static [(&'static str, &'static str)],
    );

    /// A value for every flag of every `chaosctl inject` subcommand, that is not its
    /// default, with the flags it needs beside it: `(subcommand, field, value, beside)`.
    /// A flag added to a spec without a row here fails the test below, which then holds
    /// the flag and the file's field to the same meaning.
    const SAMPLES: &[Sample] = &[
        ("kill", "signal", "TERM", &[]),
        ("kill", "process", "httpd", &[]),
        ("kill", "interval", "5s", &[]),
        ("cpu", "load", "80", &[]),
        ("cpu", "cores", "2", &[("load", "50")]),
        ("cpu", "mode", "starve", &[("load", "50")]),
        ("memory", "size", "64MiB", &[]),
        ("memory", "percent", "40", &[]),
        ("memory", "allow_node_memory", "true", &[("percent", "40")]),
        ("memory", "ramp", "10s", &[("size", "64MiB")]),
        ("network", "delay", "100ms", &[]),
        ("network", "jitter", "10ms", &[("delay", "100ms")]),
        (
            "network",
            "distribution",
            "pareto",
            &[("delay", "100ms"), ("jitter", "10ms")],
        ),
        ("network", "loss", "5", &[]),
        ("network", "duplicate", "1.5", &[]),
        ("network", "corrupt", "0.1", &[]),
        ("network", "reorder", "25", &[("delay", "100ms")]),
        ("network", "rate", "1mbit", &[]),
        ("network", "burst", "32KiB", &[("rate", "1mbit")]),
        ("network", "queue", "64KB", &[("rate", "1mbit")]),
        ("network", "interface", "eth1", &[("delay", "1ms")]),
        ("network", "to", "10.0.0.0/8", &[("delay", "1ms")]),
        ("network", "ports", "5432", &[("delay", "1ms")]),
        ("network", "protocol", "udp", &[("delay", "1ms")]),
        ("network", "exclude_to", "10.0.0.2/32", &[("delay", "1ms")]),
        ("network", "exclude_ports", "53", &[("delay", "1ms")]),
        ("network", "direction", "ingress", &[("delay", "1ms")]),
        ("blackhole", "to", "10.0.3.0/24", &[]),
        ("blackhole", "ports", "5432", &[]),
        ("blackhole", "node_scope", "true", &[]),
        ("blackhole", "interface", "eth1", &[]),
        ("io", "read_bps", "1MiB", &[]),
        ("io", "write_bps", "512KiB", &[]),
        ("io", "read_iops", "100", &[]),
        ("io", "write_iops", "50", &[]),
        ("io", "device", "/dev/loop3", &[("write_iops", "50")]),
        ("disk-fill", "size", "1GiB", &[]),
        ("disk-fill", "percent", "90", &[]),
        ("disk-fill", "path", "/data", &[("size", "1GiB")]),
        ("io-stress", "workers", "2", &[]),
        ("io-stress", "bps", "1MiB", &[]),
        ("io-stress", "file_size", "8MiB", &[]),
        ("io-stress", "path", "/data", &[]),
        ("dns", "rules", "db.test=delay:1500ms", &[]),
    ];

    /// `field: value` as the file writes it: a list for a repeatable flag.
    fn yaml_field(arg: &clap::Arg, value: &str) -> String {
        let id = arg.get_id().as_str();
        match arg.get_action() {
            clap::ArgAction::Append => format!("{id}: [{value}]"),
            _ => format!("{id}: {value}"),
        }
    }

    /// `--flag value` as the command line writes it: the flag alone for a switch.
    fn flag_args(arg: &clap::Arg, value: &str) -> Vec<String> {
        let flag = format!("--{}", arg.get_long().expect("a long flag"));
        match arg.get_action() {
            clap::ArgAction::SetTrue => vec![flag],
            _ => vec![flag, value.to_string()],
        }
    }

    /// The fault of `inject SUB` with these fields as flags, and of a step with them as
    /// its fault's fields; each None when that side refuses them.
    fn both_ways(sub: &clap::Command, fields: &[(&str, &str)]) -> (Option<Fault>, Option<Fault>) {
        let arg_of = |id: &str| {
            sub.get_arguments()
                .find(|a| a.get_id() == id)
                .unwrap_or_else(|| panic!("inject {} has no --{id}", sub.get_name()))
        };
        let mut args: Vec<String> = vec!["inject".into(), sub.get_name().into()];
        args.extend([
            "--target".into(),
            "pid:1".into(),
            "--duration".into(),
            "1m".into(),
        ]);
        let mut yaml = Vec::new();
        for (id, value) in fields {
            args.extend(flag_args(arg_of(id), value));
            yaml.push(yaml_field(arg_of(id), value));
        }
        let cli = Cli::try_parse_from(std::iter::once("chaosctl".to_string()).chain(args))
            .ok()
            .map(parts_of)
            .filter(|(_, spec, _)| check_flags(spec).is_ok())
            .and_then(|(_, spec, _)| spec.agent_fault());
        let key = sub.get_name().replace('-', "_");
        let text = format!(
            "name: s\ntarget: {{ targets: ['pid:1'] }}\nduration: 1m\n{key}: {{ {} }}\n",
            yaml.join(", ")
        );
        let file = serde_norway::from_str::<FaultStep>(&text)
            .ok()
            .filter(|step| step.fault.check(&crate::fault_spec::yaml_name).is_ok())
            .and_then(|step| step.fault.agent_fault());
        (cli, file)
    }

    #[test]
    fn every_inject_flag_is_a_field_of_the_file_and_means_the_same() {
        let command = <Cli as clap::CommandFactory>::command();
        let inject = command.find_subcommand("inject").unwrap();
        let mut kinds = Vec::new();
        let mut sampled = 0;
        for sub in inject.get_subcommands() {
            let key = sub.get_name().replace('-', "_");
            assert!(
                FaultSpec::KEYS.contains(&key.as_str()),
                "inject {} has no `{key}:` in the file",
                sub.get_name()
            );
            for arg in sub.get_arguments() {
                let id = arg.get_id().as_str();
                if NOT_FAULT_FIELDS.iter().any(|(flag, _)| *flag == id) {
                    continue;
                }
                let Some((_, _, value, beside)) = SAMPLES
                    .iter()
                    .find(|(name, field, ..)| *name == sub.get_name() && *field == id)
                else {
                    panic!(
                        "inject {} --{}: no sample in SAMPLES; add one (and check that the \
                         file's `{key}:` reads it the same)",
                        sub.get_name(),
                        arg.get_long().unwrap_or(id)
                    );
                };
                let mut fields = beside.to_vec();
                fields.push((id, value));
                let (cli, file) = both_ways(sub, &fields);
                let what = format!("inject {} {fields:?}", sub.get_name());
                let cli = cli.unwrap_or_else(|| panic!("{what}: refused on the command line"));
                assert_eq!(
                    Some(&cli),
                    file.as_ref(),
                    "{what}: the file reads it otherwise"
                );
                // The field reaches the request: without it, the fault differs (or is
                // refused, when the field was needed).
                let (without, _) = both_ways(sub, beside);
                assert_ne!(
                    Some(&cli),
                    without.as_ref(),
                    "{what}: the value changes nothing"
                );
                kinds.push(cli.kind());
                sampled += 1;
            }
        }
        assert_eq!(
            sampled,
            SAMPLES.len(),
            "a sample for a flag no subcommand has"
        );
        // Every kind of the API can be injected from the command line.
        kinds.push(api::FaultKind::Pause);
        kinds.sort_by_key(|kind| *kind as i32);
        kinds.dedup();
        assert_eq!(kinds, api::FaultKind::every_kind());
    }

    #[test]
    fn every_field_of_a_fault_in_the_file_is_a_flag() {
        let command = <Cli as clap::CommandFactory>::command();
        let inject = command.find_subcommand("inject").unwrap();
        for key in FaultSpec::KEYS {
            let Some(sub) = inject.find_subcommand(inject_subcommand_name(key)) else {
                // An experiment's only: no agent carries it out (delete_pod), or it is
                // planned into blackholes (partition).
                assert!(["delete_pod", "partition"].contains(key), "{key}");
                continue;
            };
            // An unknown field is refused with the list of the known ones, which must be
            // the subcommand's flags (but for those that are not the fault's).
            let text = format!(
                "name: s\ntarget: {{ targets: ['pid:1'] }}\n{key}: {{ no_such_field: 1 }}\n"
            );
            let error = serde_norway::from_str::<FaultStep>(&text)
                .unwrap_err()
                .to_string();
            let flags: Vec<&str> = sub
                .get_arguments()
                .map(|arg| arg.get_id().as_str())
                .filter(|id| !NOT_FAULT_FIELDS.iter().any(|(flag, _)| flag == id))
                .collect();
            if flags.is_empty() {
                assert!(error.contains("there are no fields"), "{key}: {error}");
                continue;
            }
            for flag in &flags {
                assert!(
                    error.contains(&format!("`{flag}`")),
                    "{key}: {flag}: {error}"
                );
            }
            let fields = error.matches('`').count() / 2 - 1;
            assert_eq!(fields, flags.len(), "{key}: {error}");
        }
    }

    #[test]
    fn a_flag_refused_by_the_files_check_is_refused_naming_the_flag() {
        for (kind, args, expected) in [
            (
                "io",
                &["--read-bps", "0"][..],
                "inject io: needs at least one of --read-bps, --write-bps, --read-iops, \
                 --write-iops above 0",
            ),
            (
                "network",
                &["--loss", "150"][..],
                "inject network: --loss: must be a percent, 0 to 100",
            ),
            (
                "network",
                &["--reorder", "25"][..],
                "inject network: --reorder: needs a --delay",
            ),
        ] {
            let error = fault_of(kind, args).unwrap_err().to_string();
            assert!(error.starts_with(expected), "{args:?}: {error}");
        }
        // What clap refuses by itself, it refuses first.
        for (args, text) in [
            (&["--jitter", "10ms"][..], "--delay"),
            (
                &["--delay", "1ms", "--distribution", "normal"][..],
                "--jitter",
            ),
        ] {
            let error = inject_network(args).unwrap_err();
            assert_eq!(
                error.kind(),
                clap::error::ErrorKind::MissingRequiredArgument
            );
            assert!(error.to_string().contains(text), "{args:?}: {error}");
        }
        let error = inject("cpu", &["--load", "101"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation);
        // The distribution takes any case, as it did before it was a list of names.
        assert_eq!(
            network_fault_of(&[
                "--delay",
                "1ms",
                "--jitter",
                "1ms",
                "--distribution",
                "NORMAL"
            ])
            .distribution,
            api::Distribution::Normal as i32
        );
    }

    #[test]
    fn inject_kill_is_one_shot_without_a_duration() {
        let cli = parse(&["inject", "kill", "--target", "pid:1"]).unwrap();
        let (common, spec, duration) = parts_of(cli);
        assert_eq!(common.target, "pid:1");
        assert_eq!(duration, Duration::ZERO);
        assert!(spec.is_one_shot());
        assert_eq!(
            spec.agent_fault(),
            Some(Fault::Process(api::ProcessFault {
                signal: "KILL".into(),
                ..Default::default()
            }))
        );
        let error =
            parse(&["inject", "kill", "--target", "pid:1", "--interval", "1s"]).unwrap_err();
        assert_eq!(
            error.kind(),
            clap::error::ErrorKind::MissingRequiredArgument
        );
    }

    #[test]
    fn inject_network_reads_a_rate_as_people_write_it() {
        for (rate, bytes) in [
            ("1mbit", 125_000),
            ("100kbit", 12_500),
            ("10MB/s", 10_000_000),
            ("1MiB/s", 1 << 20),
            ("125000", 125_000),
        ] {
            assert_eq!(
                network_fault_of(&["--rate", rate]),
                api::NetworkFault {
                    rate_bytes_per_second: bytes,
                    direction: api::Direction::Egress as i32,
                    ..Default::default()
                },
                "{rate}"
            );
        }
        let fault = network_fault_of(&[
            "--delay",
            "100ms",
            "--jitter",
            "10ms",
            "--distribution",
            "normal",
            "--reorder",
            "25",
            "--rate",
            "2mbit",
            "--to",
            "10.0.0.0/8",
            "--port",
            "5432",
        ]);
        assert_eq!(fault.rate_bytes_per_second, 250_000);
        assert_eq!((fault.delay_us, fault.jitter_us), (100_000, 10_000));
        assert_eq!(fault.distribution, api::Distribution::Normal as i32);
        assert_eq!(fault.reorder_percent, 25.0);
        assert_eq!(fault.destinations, vec!["10.0.0.0/8"]);
        assert_eq!(fault.ports, vec![5432]);
        let sized = network_fault_of(&["--rate", "1mbit", "--burst", "32K", "--queue", "100KB"]);
        assert_eq!(
            (
                sized.rate_bytes_per_second,
                sized.rate_burst_bytes,
                sized.rate_queue_bytes
            ),
            (125_000, 32 << 10, 100_000)
        );
        assert_eq!(network_fault_of(&["--rate", "1mbit"]).rate_burst_bytes, 0);
        for (args, kind, text) in [
            (
                &["--delay", "10ms", "--burst", "32KiB"][..],
                clap::error::ErrorKind::MissingRequiredArgument,
                "--rate",
            ),
            (
                &["--delay", "10ms", "--queue", "32KiB"][..],
                clap::error::ErrorKind::MissingRequiredArgument,
                "--rate",
            ),
            (
                &["--rate", "1mbit", "--burst", "0"][..],
                clap::error::ErrorKind::ValueValidation,
                "must be above 0",
            ),
            (
                &["--rate", "1mbit", "--queue", "1.5M"][..],
                clap::error::ErrorKind::ValueValidation,
                "--queue",
            ),
        ] {
            let error = inject_network(args).unwrap_err();
            assert_eq!(error.kind(), kind, "{args:?}: {error}");
            assert!(error.to_string().contains(text), "{args:?}: {error}");
        }
        for (rate, text) in [
            ("10mb", "`10mbit` (bits per second) or `10MB/s`"),
            ("100kbps", "ambiguous"),
            ("0", "above 0"),
            ("1.5", "a fraction needs a prefixed unit"),
        ] {
            let error = inject_network(&["--rate", rate]).unwrap_err();
            assert_eq!(
                error.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{rate}: {error}"
            );
            let message = error.to_string();
            assert!(
                message.contains("--rate") && message.contains(text),
                "{rate}: {message}"
            );
        }
    }

    #[test]
    fn inject_io_reads_sizes_iops_and_the_device() {
        let cli = inject(
            "io",
            &[
                "--read-bps",
                "1MiB",
                "--write-bps",
                "512KiB",
                "--read-iops",
                "100",
                "--write-iops",
                "50",
                "--device",
                "/dev/loop3",
            ],
        )
        .unwrap();
        let (common, spec, duration) = parts_of(cli);
        assert_eq!(common.target, "pod:dev/db-0");
        assert_eq!(duration, Duration::from_secs(60));
        assert_eq!(
            spec.agent_fault(),
            Some(Fault::Io(api::IoFault {
                read_bytes_per_second: 1 << 20,
                write_bytes_per_second: 512 << 10,
                read_iops: 100,
                write_iops: 50,
                device: "/dev/loop3".into(),
            }))
        );
    }

    #[test]
    fn inject_io_refuses_bad_sizes_and_no_limit() {
        let error = inject("io", &["--write-bps", "1.5M"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(error.to_string().contains("--write-bps"), "{error}");
        for args in [
            &["--device", "8:0"][..],
            &["--read-bps", "0", "--write-iops", "0"][..],
        ] {
            let error = fault_of("io", args).unwrap_err().to_string();
            assert!(error.contains("at least one of --read-bps"), "{error}");
        }
        assert!(fault_of("io", &["--write-iops", "10"]).is_ok());
    }

    #[test]
    fn inject_disk_fill_reads_a_size_or_a_percent_and_the_path() {
        let (common, spec, duration) = parts_of(inject("disk-fill", &["--size", "1GiB"]).unwrap());
        assert_eq!(common.target, "pod:dev/db-0");
        assert_eq!(duration, Duration::from_secs(60));
        assert_eq!(
            spec.agent_fault(),
            Some(Fault::DiskFill(api::DiskFillFault {
                size_bytes: 1 << 30,
                percent: 0,
                path: String::new(),
            }))
        );
        assert_eq!(
            fault_of("disk-fill", &["--percent", "90", "--path", "/data"]).unwrap(),
            Fault::DiskFill(api::DiskFillFault {
                size_bytes: 0,
                percent: 90,
                path: "/data".into(),
            })
        );
    }

    #[test]
    fn inject_disk_fill_refuses_both_amounts_none_and_bad_values() {
        use clap::error::ErrorKind;
        let cases: [(&[&str], ErrorKind, &str); 8] = [
            (
                &[],
                ErrorKind::MissingRequiredArgument,
                "--size <SIZE>|--percent <PERCENT>",
            ),
            (
                &["--size", "1GiB", "--percent", "50"],
                ErrorKind::ArgumentConflict,
                "--percent",
            ),
            (&["--percent", "0"], ErrorKind::ValueValidation, "--percent"),
            (
                &["--percent", "100"],
                ErrorKind::ValueValidation,
                "--percent",
            ),
            (&["--size", "1.5G"], ErrorKind::ValueValidation, "--size"),
            (
                &["--size", "0"],
                ErrorKind::ValueValidation,
                "must be above 0",
            ),
            (
                &["--size", "1GiB", "--path", "data"],
                ErrorKind::ValueValidation,
                "is not absolute",
            ),
            (
                &["--percent", "90", "--path", "/data/../etc"],
                ErrorKind::ValueValidation,
                "has a `..` step",
            ),
        ];
        for (args, kind, text) in cases {
            let error = inject("disk-fill", args).unwrap_err();
            assert_eq!(error.kind(), kind, "{args:?}: {error}");
            assert!(error.to_string().contains(text), "{args:?}: {error}");
        }
    }

    #[test]
    fn inject_io_stress_reads_its_options_and_refuses_out_of_bounds() {
        let all = [
            "--workers",
            "2",
            "--bps",
            "1MiB",
            "--file-size",
            "8MiB",
            "--path",
            "/data",
        ];
        assert_eq!(
            fault_of("io-stress", &all).unwrap(),
            Fault::IoStress(api::IoStressFault {
                workers: 2,
                bytes_per_second: 1 << 20,
                file_bytes: 8 << 20,
                path: "/data".into(),
            })
        );
        assert_eq!(
            fault_of("io-stress", &[]).unwrap(),
            Fault::IoStress(api::IoStressFault::default())
        );
        for (args, text) in [
            (&["--workers", "9"][..], "--workers"),
            (&["--workers", "0"][..], "--workers"),
            (&["--bps", "1000"][..], "must be at least 64KiB"),
            (&["--file-size", "4KiB"][..], "must be at least 1MiB"),
            (&["--path", "data"][..], "is not absolute"),
        ] {
            let error = inject("io-stress", args).unwrap_err();
            assert_eq!(
                error.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{args:?}: {error}"
            );
            assert!(error.to_string().contains(text), "{args:?}: {error}");
        }
    }
}
