//! The exec load: a benchmark command run on the controller's host, once per phase or
//! back to back, its figures read from its standard output by named patterns.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use regex::Regex;
use serde::Serialize;
use tokio::sync::watch;

use super::{ExecLoad, ExecMode, Phase, PhaseBounds};
use crate::engine::task::AbortOnDrop;

/// A figure's pattern: a regular expression with exactly one capture group (the number).
pub(super) fn figure_pattern(text: &str) -> Result<Regex, String> {
    if text.len() > super::MAX_FIGURE_PATTERN_BYTES {
        return Err(format!(
            "a pattern of {} bytes, more than the {} accepted",
            text.len(),
            super::MAX_FIGURE_PATTERN_BYTES
        ));
    }
    let pattern = regex::RegexBuilder::new(text)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| format!("not a regular expression: {e}"))?;
    if pattern.captures_len() != 2 {
        return Err(format!(
            "needs exactly one capture group, the number; /{text}/ has {}",
            pattern.captures_len() - 1
        ));
    }
    Ok(pattern)
}

/// One run of the command.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExecRun {
    pub phase: Phase,
    pub started_at_ms: u64,
    pub ended_at_ms: u64,
    pub figures: BTreeMap<String, f64>,
    /// Why the run counts for nothing: its exit status, a timeout, a figure not found.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// Every figure's last match in `output`; a figure missing or not a number is an error.
pub(super) fn read_figures(
    patterns: &[(String, Regex)],
    output: &str,
) -> Result<BTreeMap<String, f64>, String> {
    patterns
        .iter()
        .map(|(name, pattern)| {
            let text = pattern
                .captures_iter(output)
                .last()
                .and_then(|c| c.get(1))
                .map(|m| m.as_str())
                .ok_or_else(|| format!("figure {name}: /{}/ matched nothing", pattern.as_str()))?;
            text.trim()
                .parse::<f64>()
                .map(|value| (name.clone(), value))
                .map_err(|_| format!("figure {name}: `{text}` is not a number"))
        })
        .collect()
}

/// The load while it runs; `stop` ends it and hands over its runs.
pub struct ExecLoadRun {
    runs: Arc<Mutex<Vec<ExecRun>>>,
    stop: watch::Sender<bool>,
    task: AbortOnDrop,
    mode: ExecMode,
}

impl ExecLoadRun {
    pub fn start(
        spec: &ExecLoad,
        started: Instant,
        phase: watch::Receiver<Phase>,
    ) -> Result<ExecLoadRun, String> {
        let patterns = spec
            .figures
            .iter()
            .map(|(name, text)| figure_pattern(text).map(|p| (name.clone(), p)))
            .collect::<Result<Vec<_>, String>>()?;
        let runs = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = watch::channel(false);
        let command = Arc::new(Command {
            argv: spec.command.clone(),
            timeout: spec.timeout,
            patterns,
            started,
        });
        let task = AbortOnDrop::spawn(match spec.mode {
            ExecMode::PerPhase => Box::pin(per_phase(command, Arc::clone(&runs), phase, stopped))
                as std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
            ExecMode::Continuous => {
                Box::pin(continuous(command, Arc::clone(&runs), phase, stopped))
            }
        });
        Ok(ExecLoadRun {
            runs,
            stop,
            task,
            mode: spec.mode,
        })
    }

    /// Per phase: waits for the run in progress (within its timeout), so the last phase
    /// has its figures. Back to back: the run in progress is killed and left out.
    pub async fn stop(self, bounds: PhaseBounds) -> Vec<ExecRun> {
        let _ = self.stop.send(true);
        self.task.join().await;
        let mut runs = self.runs.lock().map(|r| r.clone()).unwrap_or_default();
        if self.mode == ExecMode::Continuous {
            for run in &mut runs {
                run.phase = bounds.of_span(run.started_at_ms, run.ended_at_ms);
            }
        }
        runs
    }
}

struct Command {
    argv: Vec<String>,
    timeout: std::time::Duration,
    patterns: Vec<(String, Regex)>,
    started: Instant,
}

impl Command {
    async fn run(&self, phase: Phase) -> ExecRun {
        let started_at_ms = self.started.elapsed().as_millis() as u64;
        let outcome = self.output().await;
        ExecRun {
            phase,
            started_at_ms,
            ended_at_ms: self.started.elapsed().as_millis() as u64,
            figures: outcome.as_ref().cloned().unwrap_or_default(),
            error: outcome.err().unwrap_or_default(),
        }
    }

    async fn output(&self) -> Result<BTreeMap<String, f64>, String> {
        let (program, args) = self.argv.split_first().ok_or("empty command")?;
        let child = tokio::process::Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(self.timeout, child)
            .await
            .map_err(|_| format!("{program} still running after {:?}: killed", self.timeout))?
            .map_err(|e| format!("cannot run {program}: {e}"))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: String = stderr
                .trim()
                .chars()
                .rev()
                .take(300)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            return Err(format!("{program}: {}: {tail}", output.status));
        }
        read_figures(&self.patterns, &String::from_utf8_lossy(&output.stdout))
    }
}

fn keep(runs: &Mutex<Vec<ExecRun>>, run: ExecRun) {
    if let Ok(mut runs) = runs.lock() {
        runs.push(run);
    }
}

/// A run at the start of each phase; a phase that began while the last run was still
/// going gets its run as soon as that one ends.
async fn per_phase(
    command: Arc<Command>,
    runs: Arc<Mutex<Vec<ExecRun>>>,
    mut phase: watch::Receiver<Phase>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut last_run: Option<Phase> = None;
    loop {
        let current = *phase.borrow_and_update();
        if last_run != Some(current) {
            last_run = Some(current);
            keep(&runs, command.run(current).await);
            continue;
        }
        if *stopped.borrow() {
            return;
        }
        tokio::select! {
            changed = phase.changed() => if changed.is_err() { return },
            _ = stopped.changed() => return,
        }
    }
}

/// Runs again and again until stopped; the one in progress then is dropped (killed).
async fn continuous(
    command: Arc<Command>,
    runs: Arc<Mutex<Vec<ExecRun>>>,
    phase: watch::Receiver<Phase>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let current = *phase.borrow();
        tokio::select! {
            run = command.run(current) => keep(&runs, run),
            _ = stopped.changed() => return,
        }
        if *stopped.borrow() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_the_last_match_of_each_pattern() {
        let patterns = vec![
            (
                "tps".to_string(),
                figure_pattern(r"tps = ([0-9.]+)").unwrap(),
            ),
            (
                "latency_ms".to_string(),
                figure_pattern(r"latency average = ([0-9.]+) ms").unwrap(),
            ),
        ];
        // pgbench's summary as it prints it (progress lines first).
        let output = "progress: 1.0 s, 350.0 tps, lat 2.8 ms stddev 1.1\n\
                      latency average = 2.851 ms\n\
                      tps = 350.731542 (without initial connection time)\n";
        let figures = read_figures(&patterns, output).unwrap();
        assert_eq!(figures["tps"], 350.731542);
        assert_eq!(figures["latency_ms"], 2.851);
        let missing = read_figures(&patterns, "latency average = 1 ms\n").unwrap_err();
        assert!(missing.contains("figure tps"), "{missing}");
        let not_a_number = read_figures(
            &[("n".to_string(), figure_pattern("n=(\\S+)").unwrap())],
            "n=fast",
        )
        .unwrap_err();
        assert!(not_a_number.contains("not a number"), "{not_a_number}");
    }
}
