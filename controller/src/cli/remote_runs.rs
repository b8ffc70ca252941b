//! `chaosctl submit | runs | cancel`: the command line of `chaosctl serve`'s Controller
//! API. `submit --wait` follows the run's progress on stderr and ends like `chaosctl run`:
//! the report on stdout and the verdict's exit status.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use chaos_proto::api;
use chaos_proto::api::controller_client::ControllerClient;
use tonic::transport::Channel;

use crate::agents::client::AgentAddress;
use crate::serve::service::connect;

/// How often `submit --wait` asks for news.
const POLL_PERIOD: Duration = Duration::from_millis(500);

fn controller_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!(
        "controller answered {:?}: {}",
        status.code(),
        status.message()
    )
}

/// The exit status `chaosctl run` ends with for a verdict.
pub fn verdict_exit_code(verdict: &str) -> i32 {
    match verdict {
        "passed" => 0,
        "deviated" => 2,
        "aborted" => 3,
        _ => 1,
    }
}

pub fn state_name(state: i32) -> &'static str {
    match api::RunState::try_from(state) {
        Ok(api::RunState::Running) => "running",
        Ok(api::RunState::Cancelling) => "cancelling",
        Ok(api::RunState::Finished) => "finished",
        _ => "unknown",
    }
}

fn source_name(source: i32) -> &'static str {
    match api::RunSource::try_from(source) {
        Ok(api::RunSource::Api) => "api",
        Ok(api::RunSource::Schedule) => "schedule",
        _ => "unknown",
    }
}

/// Submits the file; with `wait`, follows it to the verdict. Returns the exit status.
pub async fn submit(controller: &AgentAddress, file: &Path, wait: bool, json: bool) -> Result<i32> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let mut client = connect(controller).await?;
    let run_id = client
        .submit_run(api::SubmitRunRequest {
            experiment_yaml: text,
        })
        .await
        .map_err(controller_error)?
        .into_inner()
        .run_id;
    if !wait {
        println!("{run_id}");
        return Ok(0);
    }
    eprintln!("run {run_id} submitted; following it (Ctrl-C stops following, not the run)");
    let run = follow(&mut client, &run_id).await?;
    if json {
        println!("{}", run.report_json);
    } else if run.report_table.is_empty() {
        println!("run {run_id}: {} {}", run.verdict, run.reasons.join("; "));
    } else {
        print!("{}", run.report_table);
    }
    Ok(verdict_exit_code(&run.verdict))
}

/// Prints the run's progress lines as they come, until it has finished.
async fn follow(client: &mut ControllerClient<Channel>, run_id: &str) -> Result<api::Run> {
    let mut offset = 0u32;
    loop {
        let run = client
            .get_run(api::GetRunRequest {
                run_id: run_id.to_string(),
                progress_offset: offset,
            })
            .await
            .map_err(controller_error)?
            .into_inner();
        for line in &run.progress {
            eprintln!("{line}");
        }
        offset = run.progress_offset + run.progress.len() as u32;
        if run.state == api::RunState::Finished as i32 {
            return Ok(run);
        }
        tokio::time::sleep(POLL_PERIOD).await;
    }
}

fn run_json(run: &api::Run) -> serde_json::Value {
    serde_json::json!({
        "run_id": run.run_id,
        "experiment": run.experiment,
        "state": state_name(run.state),
        "source": source_name(run.source),
        "started_unix_ms": run.started_unix_ms,
        "finished_unix_ms": (run.finished_unix_ms != 0).then_some(run.finished_unix_ms),
        "verdict": (!run.verdict.is_empty()).then_some(&run.verdict),
        "reasons": run.reasons,
    })
}

/// The runs as a table: id, experiment, source, state, verdict, age.
pub fn runs_table(runs: &[api::Run], now_unix_ms: i64) -> String {
    let mut rows = vec![[
        "RUN".to_string(),
        "EXPERIMENT".to_string(),
        "SOURCE".to_string(),
        "STATE".to_string(),
        "VERDICT".to_string(),
        "STARTED".to_string(),
    ]];
    for run in runs {
        let age = (now_unix_ms - run.started_unix_ms).max(0) / 1000;
        rows.push([
            run.run_id.clone(),
            run.experiment.clone(),
            source_name(run.source).to_string(),
            state_name(run.state).to_string(),
            if run.verdict.is_empty() {
                "-".to_string()
            } else {
                run.verdict.clone()
            },
            format!("{age}s ago"),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut text = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    text
}

pub async fn list(controller: &AgentAddress, json: bool, now_unix_ms: i64) -> Result<()> {
    let mut client = connect(controller).await?;
    let runs = client
        .list_runs(api::ListRunsRequest {})
        .await
        .map_err(controller_error)?
        .into_inner()
        .runs;
    if json {
        let all: Vec<serde_json::Value> = runs.iter().map(run_json).collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else if runs.is_empty() {
        println!("no runs");
    } else {
        print!("{}", runs_table(&runs, now_unix_ms));
    }
    Ok(())
}

pub async fn cancel(controller: &AgentAddress, run_id: &str, json: bool) -> Result<()> {
    let mut client = connect(controller).await?;
    let run = client
        .cancel_run(api::CancelRunRequest {
            run_id: run_id.to_string(),
        })
        .await
        .map_err(controller_error)?
        .into_inner();
    if json {
        println!("{}", serde_json::to_string_pretty(&run_json(&run))?);
    } else {
        println!(
            "run {}: {}{}",
            run.run_id,
            state_name(run.state),
            if run.verdict.is_empty() {
                String::new()
            } else {
                format!(", verdict {}", run.verdict)
            }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_match_chaosctl_run() {
        for verdict in [
            crate::engine::verdict::Verdict::Passed,
            crate::engine::verdict::Verdict::Failed,
            crate::engine::verdict::Verdict::Deviated,
            crate::engine::verdict::Verdict::Aborted,
        ] {
            assert_eq!(verdict_exit_code(verdict.name()), verdict.exit_code());
        }
    }

    #[test]
    fn the_table_aligns_columns_and_marks_running_runs() {
        let runs = vec![
            api::Run {
                run_id: "chaosctl-a-1".into(),
                experiment: "a".into(),
                state: api::RunState::Running as i32,
                source: api::RunSource::Api as i32,
                started_unix_ms: 10_000,
                ..Default::default()
            },
            api::Run {
                run_id: "chaosctl-long-name-2".into(),
                experiment: "long-name".into(),
                state: api::RunState::Finished as i32,
                source: api::RunSource::Schedule as i32,
                started_unix_ms: 0,
                verdict: "passed".into(),
                ..Default::default()
            },
        ];
        let text = runs_table(&runs, 12_000);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[1].contains("running") && lines[1].contains(" - "),
            "{text}"
        );
        assert!(lines[1].ends_with("2s ago"), "{text}");
        assert!(
            lines[2].contains("schedule") && lines[2].contains("passed"),
            "{text}"
        );
        assert_eq!(
            lines[0].find("EXPERIMENT"),
            lines[1].find(" a ").map(|i| i + 1)
        );
    }
}
