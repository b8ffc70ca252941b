//! Stand-alone stressor, used by this crate's real-kernel tests and handy for manual runs.
//! The agent runs the same library functions from its own hidden subcommand.
//!
//! ```text
//! chaos-stress cpu    --percent P [--mode fill|add|starve] [--workers N] --duration-ms MS [common]
//! chaos-stress memory --bytes N [--ramp-ms MS] --duration-ms MS [common]
//! common: [--parent PID] [--wait-for-go] [--cgroup-root DIR]
//! ```
//! `--parent` arms PR_SET_PDEATHSIG against that parent; `--wait-for-go` waits for one line on
//! stdin before starting, so the parent can first move this process into the target cgroup.
//! The CPU stressor steers the cgroup this process is in (read from /proc/self/cgroup).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use chaos_cgroup::ProcessCgroup;
use chaos_stress::cpu::{self, CpuMode, CpuStressConfig};
use chaos_stress::memory::{self, MemoryStressConfig};

type Error = Box<dyn std::error::Error>;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chaos-stress: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let command = args
        .next()
        .ok_or("usage: chaos-stress cpu|memory [options]")?;
    let options = parse_options(args)?;
    if let Some(parent) = options.get("parent") {
        chaos_stress::prepare_child(parent.parse()?)?;
    }
    if options.contains_key("wait-for-go") {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
    }
    let duration = Duration::from_millis(required(&options, "duration-ms")?.parse()?);
    let deadline = SystemTime::now() + duration;
    let mut stdout = std::io::stdout();
    match command.as_str() {
        "cpu" => {
            let mode = match options.get("mode") {
                None => CpuMode::Fill,
                Some(text) => {
                    CpuMode::from_arg(text).ok_or_else(|| format!("unknown mode {text:?}"))?
                }
            };
            let config = CpuStressConfig {
                cgroup: ProcessCgroup::of_pid(Path::new("/proc"), std::process::id())?,
                cgroup_root: options
                    .get("cgroup-root")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup")),
                target_percent_of_limit: required(&options, "percent")?.parse()?,
                mode,
                workers: options.get("workers").map_or(Ok(0), |w| w.parse())?,
                deadline,
            };
            let report = cpu::run(&config, &mut stdout)?;
            println!("{report:?}");
        }
        "memory" => {
            let config = MemoryStressConfig {
                bytes: required(&options, "bytes")?.parse()?,
                ramp: Duration::from_millis(options.get("ramp-ms").map_or(Ok(0), |r| r.parse())?),
                deadline,
            };
            memory::run(&config, &mut stdout)?;
        }
        other => return Err(format!("unknown stressor {other:?}").into()),
    }
    Ok(())
}

/// `--name value` pairs; `--wait-for-go` is a flag.
fn parse_options(args: impl Iterator<Item = String>) -> Result<HashMap<String, String>, Error> {
    let mut options = HashMap::new();
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let name = arg
            .strip_prefix("--")
            .ok_or_else(|| format!("unexpected argument {arg:?}"))?;
        if name == "wait-for-go" {
            options.insert(name.to_string(), String::new());
            continue;
        }
        let value = args
            .next()
            .ok_or_else(|| format!("--{name} needs a value"))?;
        options.insert(name.to_string(), value);
    }
    Ok(options)
}

fn required<'a>(options: &'a HashMap<String, String>, name: &str) -> Result<&'a String, Error> {
    options
        .get(name)
        .ok_or_else(|| format!("--{name} is required").into())
}
