//! Turning a fault step of an experiment into the agent's `InjectRequest`.

use std::collections::HashMap;
use std::time::Duration;

use chaos_proto::api;

use crate::experiment::FaultStep;

/// The request for one chosen target of `step`, carrying the run's lease and labels.
pub fn inject_request(
    step: &FaultStep,
    target: &str,
    lease: Option<api::Lease>,
    labels: &HashMap<String, String>,
    dry_run: bool,
) -> api::InjectRequest {
    api::InjectRequest {
        target: target.to_string(),
        duration_ms: millis(step.duration),
        fault: Some(fault(step)),
        lease,
        dry_run,
        labels: labels.clone(),
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis() as u64
}

fn micros(d: Option<Duration>) -> u64 {
    d.map_or(0, |d| d.as_micros() as u64)
}

fn fault(step: &FaultStep) -> api::inject_request::Fault {
    use api::inject_request::Fault;
    if let Some(cpu) = &step.cpu {
        return Fault::Cpu(api::CpuFault {
            load_percent: cpu.load,
            cores: cpu.cores,
            mode: api::CpuMode::Fill as i32,
        });
    }
    if let Some(memory) = &step.memory {
        return Fault::Memory(api::MemoryFault {
            size_bytes: memory.size.unwrap_or(0),
            percent: memory.percent.unwrap_or(0),
            ramp_ms: memory.ramp.map_or(0, millis),
        });
    }
    if let Some(network) = &step.network {
        return Fault::Network(api::NetworkFault {
            interface: network.interface.clone().unwrap_or_default(),
            delay_us: micros(network.delay),
            jitter_us: micros(network.jitter),
            loss_percent: network.loss,
            duplicate_percent: network.duplicate,
            corrupt_percent: network.corrupt,
            destinations: network.to.clone(),
            ports: network.ports.clone(),
            ..Default::default()
        });
    }
    // validate() guarantees exactly one kind; kill is what remains.
    let kill = step.kill.clone().unwrap_or(crate::experiment::KillSpec {
        signal: "KILL".into(),
        process: None,
        interval: None,
    });
    Fault::Process(api::ProcessFault {
        signal: kill.signal,
        process: kill.process.unwrap_or_default(),
        interval_ms: kill.interval.map_or(0, millis),
    })
}
