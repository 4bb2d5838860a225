//! The supervised `baetyl master`: started once boot is done, restarted with backoff when it exits (never fatal
//! to init), stopped first at shutdown (SIGTERM, the grace period, SIGKILL). [`Master::supervise`] is PID 1's
//! loop between boot and shutdown: it reaps every process (orphans included), restarts the master when due and
//! sleeps until the next signal or restart deadline.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::config::InitConfig;
use crate::log::{error, info, warning};
use crate::process::{Backoff, SignalWatch, after, describe, reap_all};
use crate::sys::PowerAction;

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The supervised `baetyl master`: started at boot, restarted with backoff when it exits, never fatal to init.
pub struct Master {
    command: Vec<String>,
    env: Vec<(String, String)>,
    workdir: Option<PathBuf>,
    grace: Duration,
    backoff: Backoff,
    pid: Option<Pid>,
    started: Instant,
    restart_at: Option<Instant>,
    starts: u32,
}

impl Master {
    pub fn new(cfg: &InitConfig) -> Self {
        let m = &cfg.master;
        Master {
            command: m.command.clone(),
            env: m.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            workdir: m.workdir.clone(),
            grace: m.grace.get(),
            backoff: Backoff::new(
                m.restart_min.get(),
                m.restart_max.get(),
                m.stable_after.get(),
            ),
            pid: None,
            started: Instant::now(),
            restart_at: if m.command.is_empty() {
                None
            } else {
                Some(Instant::now())
            },
            starts: 0,
        }
    }

    pub fn pid(&self) -> Option<Pid> {
        self.pid
    }

    /// How often the master was started so far.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// Adds a variable to the master's environment (from its next start on).
    pub fn add_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    /// Supervises the master and reaps orphans until a shutdown signal arrives.
    pub fn supervise(&mut self, signals: &mut SignalWatch) -> PowerAction {
        self.supervise_with(signals, &mut |_, _| None)
    }

    /// [`Master::supervise`], calling `tick` after each wake-up (after reaping) for another supervised process
    /// (containerd) or watch (a boot on trial), with the number of times the master was started; `tick` answers
    /// how soon it wants to be called again.
    pub fn supervise_with(
        &mut self,
        signals: &mut SignalWatch,
        tick: &mut dyn FnMut(Instant, u32) -> Option<Duration>,
    ) -> PowerAction {
        loop {
            if let Some((sig, action)) = signals.take_shutdown() {
                info!("{sig} received: {action} requested");
                return action;
            }
            if signals.take(Signal::SIGHUP) {
                info!("SIGHUP ignored (reboot: SIGTERM/SIGINT, power off: SIGPWR/SIGUSR2)");
            }
            let now = Instant::now();
            for (pid, status) in reap_all().exited {
                if !self.on_exit(pid, &status, now) {
                    info!("reaped orphan pid={pid} ({})", describe(&status));
                }
            }
            self.start_if_due(now);
            let other = tick(Instant::now(), self.starts);
            let wait = match (self.time_until_restart(Instant::now()), other) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            signals.wait(wait);
        }
    }

    fn time_until_restart(&self, now: Instant) -> Option<Duration> {
        self.restart_at.map(|t| t.saturating_duration_since(now))
    }

    fn start_if_due(&mut self, now: Instant) {
        let Some(at) = self.restart_at else { return };
        if self.pid.is_some() || now < at {
            return;
        }
        self.restart_at = None;
        self.start(now);
    }

    fn start(&mut self, now: Instant) {
        let Some((program, args)) = self.command.split_first() else {
            return;
        };
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).process_group(0);
        if std::env::var_os("PATH").is_none() {
            cmd.env("PATH", DEFAULT_PATH);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        // The master asks init to reboot or power off (its API's /v1/system/reboot|poweroff) by signalling this pid.
        cmd.env(
            baetyl_sdk::env::INIT_PID,
            nix::unistd::getpid().as_raw().to_string(),
        );
        if let Some(dir) = &self.workdir {
            cmd.current_dir(dir);
        }
        self.starts += 1;
        self.started = now;
        match cmd.spawn() {
            Ok(child) => {
                let pid = Pid::from_raw(child.id() as i32);
                // The Child is dropped without waiting: init reaps every pid itself with waitpid(-1).
                drop(child);
                self.pid = Some(pid);
                info!(
                    "master started pid={pid} (start #{}): {}",
                    self.starts,
                    self.command.join(" ")
                );
            }
            Err(e) => {
                let delay = self.backoff.next_delay(Duration::ZERO);
                error!("cannot start the master `{program}`: {e}; retrying in {delay:?}");
                self.restart_at = Some(after(now, delay));
            }
        }
    }

    /// Handles a reaped pid; false if it was not the master.
    fn on_exit(&mut self, pid: Pid, status: &nix::sys::wait::WaitStatus, now: Instant) -> bool {
        if self.pid != Some(pid) {
            return false;
        }
        self.pid = None;
        let ran = now.saturating_duration_since(self.started);
        let delay = self.backoff.next_delay(ran);
        warning!(
            "master pid={pid} exited ({}) after {:.1}s; restarting in {delay:?}",
            describe(status),
            ran.as_secs_f64()
        );
        self.restart_at = Some(after(now, delay));
        true
    }

    /// SIGTERM, wait up to the grace period (reaping whatever else exits), then SIGKILL.
    pub fn stop(&mut self, signals: &mut SignalWatch) {
        self.restart_at = None;
        let Some(pid) = self.pid else {
            info!("master is not running");
            return;
        };
        info!("SIGTERM to master pid={pid} (grace {:?})", self.grace);
        let _ = kill(pid, Signal::SIGTERM);
        let mut deadline = after(Instant::now(), self.grace);
        let mut killed = false;
        loop {
            for (p, status) in reap_all().exited {
                if p == pid {
                    info!("master pid={pid} stopped ({})", describe(&status));
                    self.pid = None;
                } else {
                    info!("reaped pid={p} ({})", describe(&status));
                }
            }
            if self.pid.is_none() {
                return;
            }
            let now = Instant::now();
            if now >= deadline {
                if killed {
                    warning!("master pid={pid} survives SIGKILL; going on");
                    return;
                }
                warning!(
                    "master pid={pid} still running after {:?}: SIGKILL",
                    self.grace
                );
                let _ = kill(pid, Signal::SIGKILL);
                killed = true;
                deadline = now + Duration::from_secs(5);
            }
            signals.wait(Some(deadline.saturating_duration_since(Instant::now())));
        }
    }
}
