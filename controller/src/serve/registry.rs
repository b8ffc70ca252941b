//! The runs of `chaosctl serve`: admission against the limit of concurrent runs, the
//! state and progress of every run, cancellation, and what is kept of finished runs.
//! Submitted and scheduled runs go through the same registry, so both show in
//! ListRuns, both can be cancelled, and both land in the metrics.
//!
//! How a run is carried out is the caller's business (a future producing a
//! [`RunResult`]); the registry only keeps the books, which is why it is tested here
//! without agents.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chaos_proto::api;
use tokio::sync::watch;

use crate::engine::report;
use crate::engine::runner::{self, RunOptions, RunResult};
use crate::engine::selection::TargetPolicy;
use crate::serve::metrics::ControllerMetrics;

/// Progress lines kept per run; later lines are counted, not kept.
const MAX_PROGRESS_LINES: usize = 5_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RunError {
    #[error("{running} runs are running, the limit of concurrent runs (--max-concurrent-runs)")]
    TooManyRuns { running: usize },
    #[error("run_id: no run `{0}` (finished runs are kept for a while only)")]
    NotFound(String),
    #[error("run_id: run `{id}` has already finished with verdict {verdict}")]
    Finished { id: String, verdict: String },
}

/// Who asked for the run. Scheduled runs are not refused at the limit: the schedule
/// runs one at a time and is part of the configuration, but they count toward it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Api,
    Schedule,
}

impl Source {
    fn to_api(self) -> api::RunSource {
        match self {
            Source::Api => api::RunSource::Api,
            Source::Schedule => api::RunSource::Schedule,
        }
    }
}

/// What a run ended with: its result, or why it could not start (verdict failed).
pub type Outcome = Result<RunResult, String>;

struct Entry {
    id: String,
    experiment: String,
    source: Source,
    started_unix_ms: i64,
    cancel: watch::Sender<bool>,
    cancelling: bool,
    /// Set to true once the run has finished and its result is stored.
    done: watch::Sender<bool>,
    progress: Vec<String>,
    progress_dropped: u64,
    finished: Option<Finished>,
}

struct Finished {
    unix_ms: i64,
    verdict: String,
    reasons: Vec<String>,
    report_json: String,
    report_table: String,
}

impl Entry {
    fn is_running(&self) -> bool {
        self.finished.is_none()
    }

    fn state(&self) -> api::RunState {
        match (&self.finished, self.cancelling) {
            (Some(_), _) => api::RunState::Finished,
            (None, true) => api::RunState::Cancelling,
            (None, false) => api::RunState::Running,
        }
    }

    /// The run without progress or report (ListRuns).
    fn summary(&self) -> api::Run {
        let mut run = api::Run {
            run_id: self.id.clone(),
            experiment: self.experiment.clone(),
            state: self.state() as i32,
            source: self.source.to_api() as i32,
            started_unix_ms: self.started_unix_ms,
            ..Default::default()
        };
        if let Some(finished) = &self.finished {
            run.finished_unix_ms = finished.unix_ms;
            run.verdict = finished.verdict.clone();
            run.reasons = finished.reasons.clone();
        }
        run
    }

    /// The run with its progress from `offset` on and, when finished, its report.
    fn detail(&self, offset: usize) -> api::Run {
        let mut run = self.summary();
        let from = offset.min(self.progress.len());
        run.progress = self.progress[from..].to_vec();
        run.progress_offset = from as u32;
        if let Some(finished) = &self.finished {
            run.report_json = finished.report_json.clone();
            run.report_table = finished.report_table.clone();
        }
        run
    }
}

pub struct RunRegistry {
    runs: Mutex<VecDeque<Entry>>,
    max_concurrent: usize,
    keep_finished: usize,
    metrics: ControllerMetrics,
    /// Also print every progress line (the serve log), prefixed with the run id.
    echo: bool,
}

impl RunRegistry {
    /// `max_concurrent` bounds runs submitted through the API; the newest
    /// `keep_finished` finished runs are remembered.
    pub fn new(
        max_concurrent: usize,
        keep_finished: usize,
        metrics: ControllerMetrics,
        echo: bool,
    ) -> Arc<RunRegistry> {
        Arc::new(RunRegistry {
            runs: Mutex::new(VecDeque::new()),
            max_concurrent,
            keep_finished,
            metrics,
            echo,
        })
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Entry>> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a run of `experiment` and carries it out in the background with
    /// `execute`, which gets the run's id, progress sink and cancel signal.
    pub fn start<F, Fut>(
        self: &Arc<Self>,
        experiment: &str,
        source: Source,
        execute: F,
    ) -> Result<String, RunError>
    where
        F: FnOnce(RunOptions) -> Fut,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        let id = runner::new_run_id(experiment);
        let (cancel_sender, cancel) = watch::channel(false);
        {
            let mut runs = self.lock();
            let running = runs.iter().filter(|e| e.is_running()).count();
            if source == Source::Api && running >= self.max_concurrent {
                return Err(RunError::TooManyRuns { running });
            }
            runs.push_back(Entry {
                id: id.clone(),
                experiment: experiment.to_string(),
                source,
                started_unix_ms: unix_ms(),
                cancel: cancel_sender,
                cancelling: false,
                done: watch::channel(false).0,
                progress: Vec::new(),
                progress_dropped: 0,
                finished: None,
            });
        }
        let registry = Arc::clone(self);
        let progress_id = id.clone();
        let options = RunOptions {
            run_id: id.clone(),
            progress: Arc::new(move |line: &str| registry.add_progress(&progress_id, line)),
            cancel,
            policy: TargetPolicy::default(),
        };
        // The run is a task of its own so that a panic in it ends up here as a JoinError
        // instead of taking the bookkeeping down with it: the run then ends `failed`, its
        // slot is free, and its future (with its lease renewal) has been dropped.
        let run = tokio::spawn(execute(options));
        let registry = Arc::clone(self);
        let finished_id = id.clone();
        tokio::spawn(async move {
            let outcome = match run.await {
                Ok(outcome) => outcome,
                Err(error) => Err(failure(error)),
            };
            registry.finish(&finished_id, outcome);
        });
        Ok(id)
    }

    fn add_progress(&self, id: &str, line: &str) {
        if self.echo {
            eprintln!("[{id}] {line}");
        }
        let mut runs = self.lock();
        if let Some(entry) = runs.iter_mut().find(|e| e.id == id) {
            if entry.progress.len() < MAX_PROGRESS_LINES {
                entry.progress.push(line.to_string());
            } else {
                entry.progress_dropped += 1;
            }
        }
    }

    fn finish(&self, id: &str, outcome: Outcome) {
        let finished = match &outcome {
            Ok(result) => {
                self.metrics.record_run(result);
                Finished {
                    unix_ms: unix_ms(),
                    verdict: result.verdict.name().to_string(),
                    reasons: result.reasons.clone(),
                    report_json: serde_json::to_string_pretty(result)
                        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}")),
                    report_table: report::table(result),
                }
            }
            Err(reason) => Finished {
                unix_ms: unix_ms(),
                verdict: "failed".to_string(),
                reasons: vec![reason.clone()],
                report_json: String::new(),
                report_table: String::new(),
            },
        };
        let mut runs = self.lock();
        let Some(entry) = runs.iter_mut().find(|e| e.id == id) else {
            return;
        };
        if outcome.is_err() {
            self.metrics.record_verdict(&entry.experiment, "failed");
        }
        if self.echo {
            eprintln!(
                "[{id}] experiment {}: {} {}",
                entry.experiment,
                finished.verdict,
                finished.reasons.join("; ")
            );
        }
        if entry.progress_dropped > 0 {
            let dropped = entry.progress_dropped;
            entry
                .progress
                .push(format!("({dropped} more progress lines were not kept)"));
        }
        entry.finished = Some(finished);
        entry.done.send_replace(true);
        // Forget the oldest finished runs beyond the retention.
        let mut excess = runs
            .iter()
            .filter(|e| !e.is_running())
            .count()
            .saturating_sub(self.keep_finished);
        runs.retain(|e| {
            if excess > 0 && !e.is_running() {
                excess -= 1;
                false
            } else {
                true
            }
        });
    }

    /// One run with its progress from `offset` on.
    pub fn get(&self, id: &str, offset: usize) -> Result<api::Run, RunError> {
        let runs = self.lock();
        runs.iter()
            .find(|e| e.id == id)
            .map(|e| e.detail(offset))
            .ok_or_else(|| RunError::NotFound(id.to_string()))
    }

    /// Every remembered run, oldest first, without progress or reports.
    pub fn list(&self) -> Vec<api::Run> {
        self.lock().iter().map(Entry::summary).collect()
    }

    /// Asks a running run to stop; it reverts its faults and ends `aborted`.
    pub fn cancel(&self, id: &str) -> Result<(), RunError> {
        let mut runs = self.lock();
        let entry = runs
            .iter_mut()
            .find(|e| e.id == id)
            .ok_or_else(|| RunError::NotFound(id.to_string()))?;
        if let Some(finished) = &entry.finished {
            return Err(RunError::Finished {
                id: id.to_string(),
                verdict: finished.verdict.clone(),
            });
        }
        entry.cancelling = true;
        entry.cancel.send_replace(true);
        Ok(())
    }

    /// Asks every running run to stop (the controller is shutting down).
    pub fn cancel_all(&self) {
        for entry in self.lock().iter_mut().filter(|e| e.is_running()) {
            entry.cancelling = true;
            entry.cancel.send_replace(true);
        }
    }

    /// Waits until the run has finished, at most `within`; false when it is still running.
    pub async fn wait(&self, id: &str, within: Duration) -> Result<bool, RunError> {
        let mut done = {
            let runs = self.lock();
            let entry = runs
                .iter()
                .find(|e| e.id == id)
                .ok_or_else(|| RunError::NotFound(id.to_string()))?;
            entry.done.subscribe()
        };
        let finished = tokio::time::timeout(within, done.wait_for(|d| *d)).await;
        // A run forgotten while we waited has finished too (retention only drops those).
        Ok(matches!(finished, Ok(Ok(_)) | Ok(Err(_))))
    }

    /// Waits until no run is running, at most `within`; returns how many still are.
    pub async fn wait_all(&self, within: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let running: Vec<String> = self
                .lock()
                .iter()
                .filter(|e| e.is_running())
                .map(|e| e.id.clone())
                .collect();
            let Some(first) = running.first() else {
                return 0;
            };
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() || !matches!(self.wait(first, left).await, Ok(true)) {
                return running.len();
            }
        }
    }

    pub fn running(&self) -> usize {
        self.lock().iter().filter(|e| e.is_running()).count()
    }
}

/// Why a run's task ended without an outcome.
fn failure(error: tokio::task::JoinError) -> String {
    if !error.is_panic() {
        return "the run's task was cancelled; its leases lapse on the agents".to_string();
    }
    let payload = error.into_panic();
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_string());
    format!(
        "the run failed: it panicked ({message}); its lease renewals stopped, so the agents \
         revert its faults when the lease lapses"
    )
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run that lasts until cancelled, then reports `reason` as a start failure
    /// (enough to exercise the books without agents).
    fn until_cancelled(options: RunOptions) -> impl Future<Output = Outcome> + Send + 'static {
        let mut cancel = options.cancel;
        let progress = options.progress;
        async move {
            progress("started");
            let _ = cancel.wait_for(|c| *c).await;
            progress("cancelled");
            Err("cancelled by the test".to_string())
        }
    }

    fn registry(max: usize, keep: usize) -> Arc<RunRegistry> {
        RunRegistry::new(max, keep, ControllerMetrics::new(), false)
    }

    #[tokio::test]
    async fn the_limit_refuses_api_runs_but_not_scheduled_ones() {
        let runs = registry(1, 10);
        let first = runs.start("a", Source::Api, until_cancelled).unwrap();
        assert_eq!(
            runs.start("b", Source::Api, until_cancelled),
            Err(RunError::TooManyRuns { running: 1 })
        );
        let scheduled = runs.start("c", Source::Schedule, until_cancelled).unwrap();
        assert_eq!(runs.running(), 2);
        runs.cancel_all();
        assert_eq!(runs.wait_all(Duration::from_secs(5)).await, 0);
        // Finished runs free their slot.
        let again = runs.start("b", Source::Api, until_cancelled).unwrap();
        let listed: Vec<String> = runs.list().into_iter().map(|r| r.run_id).collect();
        assert_eq!(listed, vec![first, scheduled, again]);
        runs.cancel_all();
        runs.wait_all(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn cancel_finishes_the_run_and_a_second_cancel_is_refused() {
        let runs = registry(4, 10);
        let id = runs.start("exp", Source::Api, until_cancelled).unwrap();
        tokio::task::yield_now().await;
        let running = runs.get(&id, 0).unwrap();
        assert_eq!(running.state, api::RunState::Running as i32);
        assert_eq!(running.verdict, "");
        runs.cancel(&id).unwrap();
        assert!(runs.wait(&id, Duration::from_secs(5)).await.unwrap());
        let done = runs.get(&id, 0).unwrap();
        assert_eq!(done.state, api::RunState::Finished as i32);
        assert_eq!(done.verdict, "failed");
        assert_eq!(done.reasons, vec!["cancelled by the test"]);
        assert_eq!(done.progress, vec!["started", "cancelled"]);
        assert!(done.finished_unix_ms >= done.started_unix_ms);
        assert!(matches!(
            runs.cancel(&id),
            Err(RunError::Finished { verdict, .. }) if verdict == "failed"
        ));
        assert!(matches!(runs.cancel("nope"), Err(RunError::NotFound(_))));
        assert!(matches!(runs.get("nope", 0), Err(RunError::NotFound(_))));
    }

    #[tokio::test]
    async fn progress_is_paged_by_offset() {
        let runs = registry(4, 10);
        let id = runs.start("exp", Source::Api, until_cancelled).unwrap();
        runs.cancel(&id).unwrap();
        runs.wait(&id, Duration::from_secs(5)).await.unwrap();
        let page = runs.get(&id, 1).unwrap();
        assert_eq!(page.progress, vec!["cancelled"]);
        assert_eq!(page.progress_offset, 1);
        let past_end = runs.get(&id, 99).unwrap();
        assert!(past_end.progress.is_empty());
        assert_eq!(past_end.progress_offset, 2);
    }

    #[tokio::test]
    async fn only_the_newest_finished_runs_are_kept() {
        let runs = registry(10, 2);
        let mut ids = Vec::new();
        for name in ["a", "b", "c"] {
            let id = runs.start(name, Source::Api, until_cancelled).unwrap();
            runs.cancel(&id).unwrap();
            runs.wait(&id, Duration::from_secs(5)).await.unwrap();
            ids.push(id);
        }
        let kept: Vec<String> = runs.list().into_iter().map(|r| r.run_id).collect();
        assert_eq!(kept, ids[1..].to_vec());
    }

    /// Sets its flag when dropped: shows that a run's future, and what it holds, is gone.
    struct DropFlag(Arc<std::sync::atomic::AtomicBool>);

    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Stands for any bug a run may hit.
    fn bug_on_the_runs_path() -> RunResult {
        panic!("a bug in the run")
    }

    #[tokio::test]
    async fn a_run_that_panics_ends_failed_frees_its_slot_and_drops_what_it_held() {
        let metrics = ControllerMetrics::new();
        let runs = RunRegistry::new(1, 10, metrics.clone(), false);
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let held = DropFlag(Arc::clone(&dropped));
        let id = runs
            .start("panics", Source::Api, move |options| async move {
                let _held = held;
                (options.progress)("about to fail");
                tokio::task::yield_now().await;
                Ok(bug_on_the_runs_path())
            })
            .unwrap();
        assert!(runs.wait(&id, Duration::from_secs(5)).await.unwrap());
        let run = runs.get(&id, 0).unwrap();
        assert_eq!(run.state, api::RunState::Finished as i32);
        assert_eq!(run.verdict, "failed");
        assert!(
            run.reasons[0].contains("panicked") && run.reasons[0].contains("a bug in the run"),
            "{:?}",
            run.reasons
        );
        assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(runs.running(), 0);
        // The only slot is free again.
        let next = runs.start("next", Source::Api, until_cancelled).unwrap();
        assert!(
            metrics
                .encode()
                .contains("chaosctl_experiments_total{experiment=\"panics\",verdict=\"failed\"} 1")
        );
        runs.cancel(&next).unwrap();
        runs.wait_all(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn a_failed_start_counts_as_a_failed_verdict() {
        let metrics = ControllerMetrics::new();
        let runs = RunRegistry::new(4, 10, metrics.clone(), false);
        let id = runs
            .start("unreachable", Source::Api, |_| async {
                Err("cannot reach the agents".to_string())
            })
            .unwrap();
        runs.wait(&id, Duration::from_secs(5)).await.unwrap();
        assert!(metrics.encode().contains(
            "chaosctl_experiments_total{experiment=\"unreachable\",verdict=\"failed\"} 1"
        ));
    }
}
