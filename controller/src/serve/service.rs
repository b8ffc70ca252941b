//! The Controller gRPC service of `chaosctl serve` (proto/chaoscontrol/v1/controller.proto):
//! submitted experiments are checked in full before anything starts, then run in the
//! background through the [`RunRegistry`] with the same runner as `chaosctl run`.
//! Also the server's mTLS configuration and the client's connection (`chaosctl submit`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chaos_proto::api;
use chaos_proto::api::controller_client::ControllerClient;
use chaos_tls::authz::{Access, Caller, Role, audit, peer};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::agents::certs::{
    CA_FILE, CONTROLLER_CERT_FILE, CONTROLLER_KEY_FILE, CONTROLLER_SERVER_NAME,
};
use crate::agents::client::{AgentAddress, ConnectError, endpoint_for, error_chain};
use crate::agents::fleet::AgentsSpec;
use crate::agents::fleet::{Fleet, FleetConfig};
use crate::engine::experiment::scan::MAX_EXPERIMENT_BYTES;
use crate::engine::experiment::{self, Experiment, ExperimentError};
use crate::engine::probe::policy::ProbePolicy;
use crate::engine::runner;
use crate::engine::selection::{TargetPolicy, refuse_named_protected};
use crate::serve::registry::{RunError, RunRegistry, Source};

/// The largest SubmitRun message decoded: the experiment text and a little framing.
pub const MAX_REQUEST_BYTES: usize = MAX_EXPERIMENT_BYTES + 4096;
/// How long CancelRun waits for the run to revert everything and finish.
const CANCEL_WAIT: Duration = Duration::from_secs(30);

/// What submitted experiments may do.
#[derive(Debug, Clone, Default)]
pub struct SubmitPolicy {
    /// Exec probes run commands on the controller's host: refused unless allowed.
    pub allow_exec_probes: bool,
    /// The agents, and how to reach them, of every submitted run (the controller's
    /// configuration): a submitter cannot choose other agents, TLS files or plain text.
    pub default_agents: AgentsSpec,
    /// What submitted probes may connect to and read (nothing by default).
    pub probes: ProbePolicy,
    /// serve's `--include-protected`.
    pub targets: TargetPolicy,
}

pub struct ControllerService {
    /// Who calls: viewers read runs, operators submit and cancel them.
    pub access: Access,
    pub registry: Arc<RunRegistry>,
    pub policy: SubmitPolicy,
}

/// Parses the submitted text and applies the policy; the error is the gRPC status.
pub fn check_submission(text: &str, policy: &SubmitPolicy) -> Result<Experiment, Status> {
    if text.trim().is_empty() {
        return Err(Status::invalid_argument(
            "experiment_yaml: must not be empty",
        ));
    }
    let mut experiment = experiment::parse(text).map_err(|e| match e {
        // serde_norway's message names the field and says `at line L column C`.
        ExperimentError::Parse(message) => {
            Status::invalid_argument(format!("experiment_yaml: {message}"))
        }
        other => Status::invalid_argument(format!("experiment_yaml: {other}")),
    })?;
    if !policy.allow_exec_probes
        && let Some(index) = experiment
            .steady_state
            .probes
            .iter()
            .position(|p| p.exec.is_some())
    {
        return Err(Status::permission_denied(format!(
            "experiment_yaml: steady_state.probes[{index}].exec: exec probes run commands on the \
             controller and are refused for submitted runs (start serve with --allow-exec-probes)"
        )));
    }
    // A load generator (or benchmark command) on the controller, driven by whoever may
    // submit: not until its requests pass the probe destination policy.
    if experiment.load.is_some() {
        return Err(Status::permission_denied(
            "experiment_yaml: load: load sections are refused for submitted runs (run the \
             experiment with chaosctl run)",
        ));
    }
    refuse_chosen_agents(&experiment.agents)?;
    refuse_named_protected(&experiment, policy.targets)
        .map_err(|e| Status::permission_denied(format!("experiment_yaml: {e}")))?;
    let parallelism = experiment.agents.parallelism;
    experiment.agents = policy.default_agents.clone();
    experiment.agents.parallelism = parallelism.min(policy.default_agents.parallelism.max(1));
    if experiment.agents.static_agents.is_empty() && experiment.agents.dns.is_none() {
        return Err(Status::failed_precondition(
            "experiment_yaml: agents: the controller's configuration lists no agents \
             (agents.static or agents.dns in serve's --config)",
        ));
    }
    Ok(experiment)
}

/// A submitted run uses serve's agents and serve's way to reach them: agents of its own
/// would let a submitter point the controller's client certificate at any address, and
/// tls_dir / insecure_plaintext would pick files on, or security off, on serve's host.
fn refuse_chosen_agents(agents: &AgentsSpec) -> Result<(), Status> {
    let chosen = [
        ("agents.static", !agents.static_agents.is_empty()),
        ("agents.dns", agents.dns.is_some()),
        ("agents.tls_dir", agents.tls_dir.is_some()),
        ("agents.insecure_plaintext", agents.insecure_plaintext),
    ];
    match chosen.iter().find(|(_, set)| *set) {
        Some((field, _)) => Err(Status::permission_denied(format!(
            "experiment_yaml: {field}: a submitted experiment runs on the controller's agents \
             with the controller's TLS settings; leave agents out (agents.parallelism may stay)"
        ))),
        None => Ok(()),
    }
}

/// Starts a run of `experiment` in the background: connect to its agents, run, record.
pub fn start_run(
    registry: &Arc<RunRegistry>,
    experiment: Experiment,
    source: Source,
    policy: TargetPolicy,
) -> Result<String, RunError> {
    let name = experiment.name.clone();
    registry.start(&name, source, move |mut options| async move {
        options.policy = policy;
        let fleet = connect_fleet(&experiment.agents)
            .await
            .map_err(|e| format!("cannot reach the agents: {e:#}"))?;
        Ok(runner::run(&experiment, &fleet, options).await)
    })
}

async fn connect_fleet(agents: &AgentsSpec) -> anyhow::Result<Fleet> {
    let config = FleetConfig::resolve(agents).await?;
    Ok(Fleet::connect(&config).await?)
}

fn run_status(error: RunError) -> Status {
    match error {
        RunError::TooManyRuns { .. } => Status::resource_exhausted(error.to_string()),
        RunError::NotFound(_) => Status::not_found(error.to_string()),
        RunError::Finished { .. } => Status::failed_precondition(error.to_string()),
    }
}

fn check_run_id(id: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument("run_id: must not be empty"));
    }
    if id.len() > 200 {
        return Err(Status::invalid_argument("run_id: longer than 200 bytes"));
    }
    Ok(())
}

impl ControllerService {
    /// The caller, if its role includes `needed`; a refusal is audited.
    fn authorize<T>(
        &self,
        request: &Request<T>,
        method: &str,
        needed: Role,
        target: &str,
    ) -> Result<Caller, Status> {
        let caller = self.access.caller(request).inspect_err(|status| {
            audit(&peer(request), None, method, target, "", Err(status));
        })?;
        caller
            .require(needed, &format!("call {method}"))
            .map_err(Status::permission_denied)
            .inspect_err(|status| {
                audit(
                    &peer(request),
                    Some(&caller),
                    method,
                    target,
                    "",
                    Err(status),
                );
            })?;
        Ok(caller)
    }

    async fn submit(
        &self,
        request: &Request<api::SubmitRunRequest>,
        caller: &Caller,
    ) -> Result<String, Status> {
        let mut experiment = check_submission(&request.get_ref().experiment_yaml, &self.policy)?;
        check_namespaces(caller, &experiment).map_err(Status::permission_denied)?;
        self.policy.probes.admit(&mut experiment).await?;
        let name = experiment.name.clone();
        let run_id = start_run(&self.registry, experiment, Source::Api, self.policy.targets)
            .map_err(run_status)?;
        tracing::info!(experiment = %name, run = %run_id, "run submitted");
        Ok(run_id)
    }
}

/// An operator limited to namespaces may submit only steps whose targets show, before
/// anything runs, that they stay within them: `pod:NS/...` targets and `namespace:`
/// selectors. `container:`, `pid:`, `cgroup:` and selectors over every namespace would be
/// known only once the agents answer, so they are refused for such an operator.
pub fn check_namespaces(caller: &Caller, experiment: &Experiment) -> Result<(), String> {
    let Some(allowed) = caller
        .namespaces
        .as_ref()
        .filter(|_| caller.role != Role::Admin)
    else {
        return Ok(());
    };
    let refuse = |index: usize, step: &str, why: String| {
        Err(format!(
            "method.faults[{index}] (`{step}`): {} (role {}) is limited to namespaces [{}]: {why}",
            caller.identity,
            caller.role,
            allowed.join(", ")
        ))
    };
    for (index, step) in experiment.method.faults.iter().enumerate() {
        // Every selector of the step: a partition has two.
        for (_, target) in step.selectors() {
            for explicit in &target.targets {
                match explicit
                    .strip_prefix("pod:")
                    .and_then(|rest| rest.split('/').next())
                {
                    Some(ns) if allowed.iter().any(|a| a == ns) => {}
                    Some(ns) => {
                        return refuse(
                            index,
                            &step.name,
                            format!("target {explicit} is in namespace {ns}"),
                        );
                    }
                    None => {
                        return refuse(
                            index,
                            &step.name,
                            format!(
                                "target {explicit} does not name its namespace; use pod:NS/NAME or a namespace selector"
                            ),
                        );
                    }
                }
            }
            if target.has_selector() {
                match &target.namespace {
                    Some(ns) if allowed.iter().any(|a| a == ns) => {}
                    Some(ns) => {
                        return refuse(
                            index,
                            &step.name,
                            format!("the selector's namespace is {ns}"),
                        );
                    }
                    None => {
                        return refuse(
                            index,
                            &step.name,
                            "the selector has no namespace: it would reach every namespace".into(),
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl api::controller_server::Controller for ControllerService {
    async fn submit_run(
        &self,
        request: Request<api::SubmitRunRequest>,
    ) -> Result<Response<api::SubmitRunResponse>, Status> {
        let caller = self.authorize(&request, "SubmitRun", Role::Operator, "")?;
        let result = self.submit(&request, &caller).await;
        let (run, outcome) = match &result {
            Ok(run_id) => (run_id.as_str(), Ok(())),
            Err(status) => ("", Err(status)),
        };
        audit(
            &peer(&request),
            Some(&caller),
            "SubmitRun",
            run,
            "",
            outcome,
        );
        result.map(|run_id| Response::new(api::SubmitRunResponse { run_id }))
    }

    async fn get_run(
        &self,
        request: Request<api::GetRunRequest>,
    ) -> Result<Response<api::Run>, Status> {
        self.authorize(&request, "GetRun", Role::Viewer, "")?;
        let request = request.get_ref();
        check_run_id(&request.run_id)?;
        let run = self
            .registry
            .get(&request.run_id, request.progress_offset as usize)
            .map_err(run_status)?;
        Ok(Response::new(run))
    }

    async fn list_runs(
        &self,
        request: Request<api::ListRunsRequest>,
    ) -> Result<Response<api::ListRunsResponse>, Status> {
        self.authorize(&request, "ListRuns", Role::Viewer, "")?;
        Ok(Response::new(api::ListRunsResponse {
            runs: self.registry.list(),
        }))
    }

    async fn cancel_run(
        &self,
        request: Request<api::CancelRunRequest>,
    ) -> Result<Response<api::Run>, Status> {
        let id = &request.get_ref().run_id;
        let caller = self.authorize(&request, "CancelRun", Role::Operator, id)?;
        check_run_id(id)?;
        let cancelled = self.registry.cancel(id).map_err(run_status);
        audit(
            &peer(&request),
            Some(&caller),
            "CancelRun",
            id,
            "",
            cancelled.as_ref().map(|_| ()),
        );
        cancelled?;
        tracing::info!(run = %id, "run cancelled");
        self.registry
            .wait(id, CANCEL_WAIT)
            .await
            .map_err(run_status)?;
        let mut run = self.registry.get(id, 0).map_err(run_status)?;
        // The caller follows progress with GetRun; the cancel answer carries the outcome.
        run.progress.clear();
        Ok(Response::new(run))
    }
}

/// The API's mTLS files: its certificate, and the CA client certificates must chain
/// to (a client certificate is mandatory). `chaosctl certs --out DIR` writes them.
pub fn server_tls_files(dir: &Path) -> chaos_tls::TlsFiles {
    chaos_tls::TlsFiles {
        dir: dir.to_path_buf(),
        cert: CONTROLLER_CERT_FILE,
        key: CONTROLLER_KEY_FILE,
        ca: CA_FILE,
    }
}

/// Connects to `chaosctl serve`'s API with the client certificate of the TLS dir.
pub async fn connect(target: &AgentAddress) -> Result<ControllerClient<Channel>, ConnectError> {
    let channel = endpoint_for(target, CONTROLLER_SERVER_NAME)?
        .connect()
        .await
        .map_err(|e| ConnectError::Transport(target.address.clone(), error_chain(&e)))?;
    Ok(ControllerClient::new(channel))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn operator_in(namespaces: &[&str]) -> Caller {
        Caller {
            identity: "alice".into(),
            role: Role::Operator,
            namespaces: Some(namespaces.iter().map(|s| s.to_string()).collect()),
        }
    }

    fn with_target(target: &str) -> Experiment {
        crate::engine::experiment::parse(&format!(
            "name: t\nmethod:\n  faults:\n    - name: k\n      target: {target}\n      kill: {{}}\n"
        ))
        .expect("parses")
    }

    #[test]
    fn a_namespace_limited_operator_submits_only_targets_that_show_their_namespace() {
        let alice = operator_in(&["shop"]);
        for ok in [
            "{ targets: [\"pod:shop/web-0\"] }",
            "{ namespace: shop, pod: \"web-*\" }",
        ] {
            assert_eq!(check_namespaces(&alice, &with_target(ok)), Ok(()), "{ok}");
        }
        for (refused, why) in [
            ("{ targets: [\"pod:db/pg-0\"] }", "is in namespace db"),
            (
                "{ targets: [\"container:abc\"] }",
                "does not name its namespace",
            ),
            ("{ targets: [\"pid:42\"] }", "does not name its namespace"),
            ("{ namespace: db }", "namespace is db"),
            ("{ pod: \"web-*\" }", "every namespace"),
        ] {
            let message = check_namespaces(&alice, &with_target(refused)).unwrap_err();
            assert!(
                message.contains(why) && message.contains("alice (role operator)"),
                "{refused}: {message}"
            );
        }
        // Unlimited operators and admins are not limited here (the agents still check).
        let unlimited = Caller {
            namespaces: None,
            ..operator_in(&[])
        };
        assert_eq!(
            check_namespaces(&unlimited, &with_target("{ targets: [\"pid:42\"] }")),
            Ok(())
        );
    }

    #[test]
    fn a_namespace_limited_operator_submits_a_partition_only_if_both_sides_stay_within() {
        let alice = operator_in(&["spark"]);
        let partition = |from: &str, to: &str| {
            crate::engine::experiment::parse(&format!(
                "name: t\nmethod:\n  faults:\n    - name: cut\n      duration: 10s\n      \
                 partition: {{ from: {from}, to: {to} }}\n"
            ))
            .expect("parses")
        };
        let inside = "{ namespace: spark, pod: \"driver-*\" }";
        assert_eq!(
            check_namespaces(
                &alice,
                &partition(inside, "{ targets: [\"pod:spark/exec-1\"] }")
            ),
            Ok(())
        );
        for (from, to, why) in [
            (inside, "{ namespace: db }", "namespace is db"),
            ("{ pod: \"driver-*\" }", inside, "every namespace"),
            (
                inside,
                "{ targets: [\"container:abc\"] }",
                "does not name its namespace",
            ),
        ] {
            let message = check_namespaces(&alice, &partition(from, to)).unwrap_err();
            assert!(message.contains(why), "{from} / {to}: {message}");
        }
    }

    const GOOD: &str = "name: x\nmethod:\n  faults:\n    - name: k\n      target: { targets: [\"pid:1\"] }\n      kill: {}\n";

    fn policy() -> SubmitPolicy {
        SubmitPolicy {
            allow_exec_probes: false,
            default_agents: AgentsSpec {
                static_agents: vec!["127.0.0.1:7090".into()],
                tls_dir: Some("/etc/chaos-control/tls".into()),
                ..AgentsSpec::default()
            },
            probes: ProbePolicy::default(),
            targets: TargetPolicy::default(),
        }
    }

    #[test]
    fn an_unknown_field_is_invalid_argument_with_its_line() {
        let bad = format!("{GOOD}      durration: 5s\n");
        let status = check_submission(&bad, &policy()).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains("durration"),
            "{}",
            status.message()
        );
        assert!(status.message().contains("line 7"), "{}", status.message());
    }

    #[test]
    fn empty_and_oversized_files_are_refused() {
        let status = check_submission("  \n", &policy()).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let huge = format!("{GOOD}#{}\n", "x".repeat(MAX_EXPERIMENT_BYTES));
        let status = check_submission(&huge, &policy()).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().starts_with("experiment_yaml:"));
    }

    #[test]
    fn exec_probes_need_the_controller_to_allow_them() {
        let with_exec = format!(
            "{GOOD}steady_state:\n  probes:\n    - name: sh\n      exec: {{ command: [\"true\"] }}\n"
        );
        let status = check_submission(&with_exec, &policy()).unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(status.message().contains("steady_state.probes[0].exec"));
        let allowed = SubmitPolicy {
            allow_exec_probes: true,
            ..policy()
        };
        assert!(check_submission(&with_exec, &allowed).is_ok());
    }

    #[test]
    fn a_load_section_is_refused_for_submitted_runs_even_with_exec_allowed() {
        let allowed = SubmitPolicy {
            allow_exec_probes: true,
            ..policy()
        };
        for load in [
            "load: { http: { url: \"http://10.0.0.1/\", rate: 5 } }",
            "load: { exec: { command: [\"true\"], figures: { n: \"n=([0-9]+)\" } } }",
        ] {
            let status = check_submission(&format!("{GOOD}{load}\n"), &allowed).unwrap_err();
            assert_eq!(status.code(), tonic::Code::PermissionDenied, "{load}");
            assert!(
                status.message().contains("experiment_yaml: load:"),
                "{status:?}"
            );
        }
    }

    #[test]
    fn submitted_runs_use_the_controllers_agents_and_tls_only() {
        let experiment = check_submission(GOOD, &policy()).unwrap();
        assert_eq!(experiment.agents.static_agents, vec!["127.0.0.1:7090"]);
        assert_eq!(
            experiment.agents.tls_dir.as_deref(),
            Some(Path::new("/etc/chaos-control/tls"))
        );
        let choices = [
            ("agents: { static: [\"10.0.0.9:7090\"] }", "agents.static"),
            ("agents: { dns: { name: evil.example } }", "agents.dns"),
            ("agents: { tls_dir: /root/.ssh }", "agents.tls_dir"),
            (
                "agents: { insecure_plaintext: true }",
                "agents.insecure_plaintext",
            ),
        ];
        for (agents, field) in choices {
            let status = check_submission(&format!("{agents}\n{GOOD}"), &policy()).unwrap_err();
            assert_eq!(status.code(), tonic::Code::PermissionDenied, "{agents}");
            assert!(
                status
                    .message()
                    .starts_with(&format!("experiment_yaml: {field}: ")),
                "{}",
                status.message()
            );
        }
        // Parallelism is no choice of agents; it stays, within the controller's.
        let gentle =
            check_submission(&format!("agents: {{ parallelism: 2 }}\n{GOOD}"), &policy()).unwrap();
        assert_eq!(gentle.agents.parallelism, 2);
        let status = check_submission(GOOD, &SubmitPolicy::default()).unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    }

    #[test]
    fn protected_namespaces_are_refused_unless_serve_allows_them() {
        let delete = "name: x\nmethod:\n  faults:\n    - name: evict-dns\n      target: { targets: [\"pod:kube-system/coredns-0\"] }\n      delete_pod: {}\n";
        let status = check_submission(delete, &policy()).unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(
            status.message().contains("fault `evict-dns`")
                && status.message().contains("kube-system"),
            "{}",
            status.message()
        );
        let allowed = SubmitPolicy {
            targets: TargetPolicy {
                include_protected: true,
            },
            ..policy()
        };
        assert!(check_submission(delete, &allowed).is_ok());
        // The field is never the submitter's to set, whatever serve allows.
        let field = delete.replace(
            "targets: [\"pod:kube-system/coredns-0\"]",
            "namespace: shop, include_protected: true",
        );
        let status = check_submission(&field, &allowed).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status
                .message()
                .contains("method.faults[0].target.include_protected"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn an_alias_bomb_and_an_out_of_range_duration_are_invalid_arguments() {
        let mut bomb = String::from(
            "name: bomb\nmethod:\n  faults:\n    - &s\n      name: k\n      target: { targets: [\"pid:1\"] }\n      kill: {}\n",
        );
        bomb.push_str(&"    - *s\n".repeat(50_000));
        let status = check_submission(&bomb, &policy()).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains("aliases") && status.message().contains("line 8"),
            "{}",
            status.message()
        );
        let long = format!("baseline: 9223372036854775808s\n{GOOD}");
        let status = check_submission(&long, &policy()).unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().starts_with("experiment_yaml: baseline: "),
            "{}",
            status.message()
        );
    }
}
