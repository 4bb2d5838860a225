//! Child processes of a test: killed when dropped (or stopped gracefully first, on request), waits for an exit
//! or for a pid to be gone, signals, and re-running one test of the current test binary as a child process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::wait::{eventually, poll};

/// Whether process `pid` exists (a zombie counts as gone: it has exited).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.trim_start().chars().next())
        })
        .is_some_and(|state| state != 'Z' && state != 'X')
}

/// Sends `sig` to `pid`.
pub fn signal(pid: u32, sig: Signal) -> Result<()> {
    let raw = i32::try_from(pid).with_context(|| format!("pid {pid}"))?;
    kill(Pid::from_raw(raw), sig).with_context(|| format!("kill -{sig} {pid}"))
}

/// Sends SIGTERM to `pid`.
pub fn sigterm(pid: u32) -> Result<()> {
    signal(pid, Signal::SIGTERM)
}

/// Blocks until `pid` is gone; panics naming `what` after `timeout`.
#[track_caller]
pub fn wait_gone(pid: u32, what: &str, timeout: Duration) {
    eventually(timeout, &format!("{what} (pid {pid}) to be gone"), || {
        !alive(pid)
    });
}

/// A command that runs only the test `name` of the current test binary, in a child process (for a server that
/// a test must kill with SIGKILL or signal). The test usually does its work only when an environment variable
/// set by the caller is present.
pub fn rerun_test(name: &str) -> Command {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("the test binary's path: {e}"));
    let mut cmd = Command::new(exe);
    cmd.args([
        name,
        "--exact",
        "--include-ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    cmd
}

/// A child process that does not outlive its test: SIGKILL when dropped, or SIGTERM first and SIGKILL after a
/// grace period with [`Process::term_on_drop`].
pub struct Process {
    child: Child,
    what: String,
    log: Option<PathBuf>,
    term_grace: Option<Duration>,
}

impl Process {
    /// Spawns `cmd`; `what` names it in failure messages.
    pub fn spawn(cmd: &mut Command, what: &str) -> Result<Process> {
        let child = cmd.spawn().with_context(|| format!("spawning {what}"))?;
        Ok(Process {
            child,
            what: what.to_string(),
            log: None,
            term_grace: None,
        })
    }

    /// The file that holds the process's output: shown when a wait fails.
    pub fn with_log(mut self, log: &Path) -> Self {
        self.log = Some(log.to_path_buf());
        self
    }

    /// On drop, SIGTERM and wait up to `grace` before SIGKILL (for processes that must stop their children).
    pub fn term_on_drop(mut self, grace: Duration) -> Self {
        self.term_grace = Some(grace);
        self
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The log's text (empty without a log).
    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The exit status if the process has exited (reaping it).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits until the process exits; panics (after killing it) if it still runs after `timeout`.
    #[track_caller]
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match poll(timeout, || self.try_status()) {
            Ok(status) => status,
            Err(_) => {
                self.kill9();
                panic!(
                    "timed out after {timeout:?} waiting for {} (pid {}) to exit\n{}",
                    self.what,
                    self.id(),
                    self.log_text()
                );
            }
        }
    }

    /// SIGTERM, then waits up to `timeout` for the exit (panics after killing it if it does not stop).
    #[track_caller]
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.try_status() {
            return status;
        }
        let _ = sigterm(self.id());
        self.wait_exit(timeout)
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.try_status().is_some() {
            return;
        }
        if let Some(grace) = self.term_grace {
            let _ = sigterm(self.id());
            if poll(grace, || self.try_status()).is_ok() {
                return;
            }
        }
        self.kill9();
    }
}
