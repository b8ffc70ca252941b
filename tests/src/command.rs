//! Running the host tools the fixtures drive (`ctr`, `ip`, `ping`), always bounded in time.
//!
//! A test must never hang on a wedged daemon, so every command gets a deadline: past it the
//! child is killed and the call fails with the command line in the message.

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How often a running child is polled for exit.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// What a finished command left behind, with its output decoded lossily as UTF-8.
#[derive(Debug, Clone)]
pub struct CommandOutput {
    pub command_line: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CommandOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Fails with the command line, exit status and stderr unless the command succeeded.
    pub fn check(self) -> Result<CommandOutput> {
        if !self.status.success() {
            bail!(
                "`{}` failed ({}): {}{}",
                self.command_line,
                self.status,
                self.stderr.trim(),
                if self.stderr.trim().is_empty() {
                    self.stdout.trim()
                } else {
                    ""
                }
            );
        }
        Ok(self)
    }
}

/// Runs `program args...` to completion or until `timeout`, capturing stdout and stderr.
/// A non-zero exit is not an error here (see [`CommandOutput::check`]); a timeout is.
pub fn run_bounded(program: &str, args: &[&str], timeout: Duration) -> Result<CommandOutput> {
    let command_line = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let deadline = Instant::now() + timeout;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{command_line}` (is `{program}` installed?)"))?;

    // Pipes are drained on their own threads so a chatty child never blocks on a full pipe.
    let stdout = read_in_background(child.stdout.take());
    let stderr = read_in_background(child.stderr.take());

    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for child")? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{command_line}` did not finish within {timeout:?}; killed it");
        }
        thread::sleep(POLL_INTERVAL);
    };

    // A background grandchild may still hold the pipes open: do not wait for it forever.
    let remaining = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(1));
    let stdout = stdout.recv_timeout(remaining).with_context(|| {
        format!("`{command_line}` exited but a background process keeps its stdout open")
    })?;
    let stderr = stderr.recv_timeout(remaining).with_context(|| {
        format!("`{command_line}` exited but a background process keeps its stderr open")
    })?;
    Ok(CommandOutput {
        command_line,
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    })
}

/// Runs the command like [`run_bounded`] and fails unless it exits with status 0.
pub fn run_checked(program: &str, args: &[&str], timeout: Duration) -> Result<CommandOutput> {
    run_bounded(program, args, timeout)?.check()
}

fn read_in_background<R: Read + Send + 'static>(pipe: Option<R>) -> mpsc::Receiver<Vec<u8>> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        let _ = sender.send(bytes);
    });
    receiver
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_and_status() {
        let output = run_bounded(
            "sh",
            &["-c", "echo out; echo err >&2; exit 3"],
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(output.stdout, "out\n");
        assert_eq!(output.stderr, "err\n");
        assert_eq!(output.status.code(), Some(3));
        let error = output.check().unwrap_err().to_string();
        assert!(
            error.contains("exit status: 3") && error.contains("err"),
            "{error}"
        );
    }

    #[test]
    fn kills_a_command_past_its_deadline() {
        let started = Instant::now();
        let error = run_bounded("sleep", &["30"], Duration::from_millis(200)).unwrap_err();
        assert!(error.to_string().contains("did not finish"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
