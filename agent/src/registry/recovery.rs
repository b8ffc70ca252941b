//! The journal of a previous run, reverted at start before anything new is accepted. A
//! record whose undo fails stays: it is listed as a revert-pending fault and retried with
//! backoff like any failed revert, and it is still there for the next start.

use std::sync::Arc;
use std::time::Instant;

use chaos_proto::api;
use tokio::sync::{Notify, watch};

use super::driver::{EndReason, Reverter};
use super::{Entry, Registry};
use crate::clock::unix_ms_now;
use crate::faults;
use crate::journal::JournalRecord;

impl Registry {
    /// Reverts what the journal of a previous run lists. Called before serving.
    /// Returns how many records were reverted and how many could not be (those are
    /// retried in the background, listed as revert-pending).
    pub fn recover(self: &Arc<Self>) -> (usize, usize) {
        self.journal.drop_records_of_earlier_boots();
        // An agent killed inside a journal write leaves its temporary file: never a record.
        match self.journal.drop_temporary_files() {
            Ok(dropped) => {
                for path in dropped {
                    tracing::info!(path = %path.display(), "removed the temporary file of a journal write the previous run did not finish");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot remove unfinished journal writes")
            }
        }
        // The journal is not fsynced (see journal.rs): a node that lost power may have
        // left records cut short, describing state the reboot already wiped.
        match self.resolver.procfs.boot_time() {
            Ok(boot) => match self.journal.drop_unreadable_before(boot) {
                Ok(dropped) => {
                    for path in dropped {
                        tracing::warn!(path = %path.display(), "dropped an unreadable journal record written before this boot: the kernel state it described did not survive the reboot");
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot check the journal for records cut short by a reboot")
                }
            },
            Err(e) => {
                tracing::error!(error = %e, "cannot read the boot time; unreadable journal records are kept")
            }
        }
        let records = match self.journal.records() {
            Ok(records) => records,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the journal");
                return (0, 1);
            }
        };
        let (mut reverted, mut failed) = (0, 0);
        for record in records {
            let record = match record {
                Ok(record) => record,
                Err(e) => {
                    tracing::error!(error = %e, "skipping an unreadable journal record");
                    failed += 1;
                    continue;
                }
            };
            match faults::replay(&self.resolver.procfs, record_kind(&record), &record.undo) {
                Ok(()) => {
                    self.forget_journal(&record.id, record_kind(&record));
                    self.metrics.reverted(&record.kind, "recovered");
                    tracing::info!(fault = %record.id, kind = %record.kind, target = %record.target, "reverted a fault left by a previous run");
                    reverted += 1;
                    self.lock().ended.push_back(api::Fault {
                        state: api::FaultState::Recovered as i32,
                        ended_unix_ms: unix_ms_now(),
                        message: "reverted at agent start from the journal".into(),
                        ..record_view(&record)
                    });
                }
                Err(e) => {
                    tracing::error!(fault = %record.id, error = %e, "cannot revert a journaled fault; record kept, retrying");
                    self.metrics.revert_failed(&record.kind);
                    self.retry_journaled(record, e);
                    failed += 1;
                }
            }
        }
        self.trim_ended();
        (reverted, failed)
    }

    /// Lists a journal record whose undo failed as a revert-pending fault, and retries
    /// it in the background until it succeeds.
    fn retry_journaled(self: &Arc<Self>, record: JournalRecord, first_error: String) {
        let kind = record_kind(&record);
        let view = api::Fault {
            state: api::FaultState::RevertPending as i32,
            message: format!(
                "left by a previous run of the agent; reverting it at start failed: {first_error}; retrying"
            ),
            ..record_view(&record)
        };
        let (done_tx, done_rx) = watch::channel(None);
        let retry_now = Arc::new(Notify::new());
        self.lock().active.insert(
            record.id.clone(),
            Entry {
                view,
                deadline: Instant::now(),
                stop: None,
                done: done_rx,
                retry_now: Arc::clone(&retry_now),
                claims: Vec::new(),
            },
        );
        self.metrics.active_changed(kind.label(), 1);
        self.refresh_pending_gauge();
        let registry = Arc::clone(self);
        self.lifetimes.spawn(async move {
            // The first attempt just failed: wait before the next.
            tokio::select! {
                _ = tokio::time::sleep(super::retry_delay(1)) => {}
                _ = retry_now.notified() => {}
            }
            registry
                .finish(
                    &record.id,
                    Reverter::Journaled {
                        kind,
                        undo: record.undo,
                    },
                    EndReason::Recovered,
                    None,
                    done_tx,
                    retry_now,
                )
                .await
        });
    }
}

/// The kind a journal record names; unspecified for a name this agent does not know
/// (its replay then fails, and the record stays).
fn record_kind(record: &JournalRecord) -> api::FaultKind {
    api::FaultKind::from_label(&record.kind).unwrap_or(api::FaultKind::Unspecified)
}

/// The API view of a journal record.
fn record_view(record: &JournalRecord) -> api::Fault {
    api::Fault {
        id: record.id.clone(),
        kind: record_kind(record) as i32,
        target: record.target.clone(),
        created_unix_ms: record.created_unix_ms,
        deadline_unix_ms: record.deadline_unix_ms,
        ..Default::default()
    }
}
