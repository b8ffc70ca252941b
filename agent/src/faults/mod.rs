//! Fault kinds. Each kind is one module with the same shape: validate (in
//! `validate`), apply, optionally repeat, revert, describe.

pub mod process;

use chaos_proto::api;

use crate::journal::Undo;

/// A fault the agent holds, by kind.
#[derive(Debug)]
pub enum ActiveFault {
    Process(process::ProcessFault),
}

impl ActiveFault {
    pub fn kind(&self) -> api::FaultKind {
        match self {
            ActiveFault::Process(_) => api::FaultKind::Process,
        }
    }

    /// What the journal must hold to revert this fault after a crash.
    pub fn undo(&self) -> Undo {
        match self {
            ActiveFault::Process(_) => Undo::Nothing,
        }
    }

    pub fn status(&self) -> api::fault::Status {
        match self {
            ActiveFault::Process(p) => api::fault::Status::Process(p.status.clone()),
        }
    }
}

pub fn kind_label(kind: api::FaultKind) -> &'static str {
    match kind {
        api::FaultKind::Cpu => "cpu",
        api::FaultKind::Memory => "memory",
        api::FaultKind::Network => "network",
        api::FaultKind::Process => "process",
        api::FaultKind::Io => "io",
        api::FaultKind::Blackhole => "blackhole",
        api::FaultKind::Unspecified => "unspecified",
    }
}

pub fn kind_from_label(label: &str) -> api::FaultKind {
    match label {
        "cpu" => api::FaultKind::Cpu,
        "memory" => api::FaultKind::Memory,
        "network" => api::FaultKind::Network,
        "process" => api::FaultKind::Process,
        "io" => api::FaultKind::Io,
        "blackhole" => api::FaultKind::Blackhole,
        _ => api::FaultKind::Unspecified,
    }
}

/// Undoes what a journal record lists. Used at start for faults of a previous run.
pub fn undo(procfs: &crate::procfs::Procfs, undo: &Undo) -> Result<(), String> {
    match undo {
        Undo::Nothing => Ok(()),
        Undo::KillProcesses { processes } => {
            let mut errors = Vec::new();
            for p in processes {
                match crate::sys::signal_process(
                    procfs,
                    p.pid,
                    p.start_time,
                    nix::sys::signal::Signal::SIGKILL,
                ) {
                    Ok(())
                    | Err(crate::sys::SignalError::Gone(_))
                    | Err(crate::sys::SignalError::Reused(_)) => {}
                    Err(e) => errors.push(e.to_string()),
                }
            }
            if errors.is_empty() {
                Ok(())
            } else {
                Err(errors.join("; "))
            }
        }
    }
}
