//! Master updates (`PUT /v1/system/update {"type":"MST","path":...}`, v1's `file` alias): the master replaces
//! its own binary, `<work dir>/bin/baetyl`, and keeps the previous one as `bin/baetyl.old`.
//!
//! The installed `bin/baetyl` is always a binary that has run this device's application: a new binary is tried
//! before it is installed, by the old master, which stays in charge until the new one has proven itself.
//!
//! 1. The request (operator or agent role): refused when the master is part of the OS image (it runs under
//!    `baetyl init`, or its file system is read-only: that is the OS update's job) or does not run from
//!    `<work dir>/bin/baetyl`. The source follows the app updates' rules ([`crate::ota::source`]: a regular
//!    file under the work dir, `update.master.max_size`, read once, never quoted). OTA log: RECEIVED.
//! 2. UPDATING: the file is copied to `bin/baetyl.new` (temp + fsync + rename), then its
//!    `check -w <work dir> -c <conf>` must print `OK!` within `update.master.check_timeout` (v1's contract).
//!    A failed check ends the update here (FAILURE); nothing stopped.
//! 3. RESTARTING: the master stops every service and its API, writes `var/db/baetyl/mst.json` (phase `trial`)
//!    and runs `bin/baetyl.new` with its own arguments as a child, the *trial*. The old master watches it:
//!    within `update.master.deadline` the trial must serve its API and run every service that ran before the
//!    update, then keep them running (no restart) for `update.health`. Then the trial is stopped.
//! 4. Healthy: `bin/baetyl` is linked to `bin/baetyl.old` and `bin/baetyl.new` renamed over `bin/baetyl` (each
//!    an atomic rename, the directory synced: `bin/baetyl` exists at every instant), UPDATED, phase
//!    `installed`, and the master execs `bin/baetyl` (same pid: systemd, `baetyl init` and a shell all keep
//!    their master). The new master confirms once its services are healthy: RESTARTED, `mst.json` removed.
//! 5. Not healthy (it exited, crashed, never answered, a service failed), or the master was stopped meanwhile:
//!    the trial is stopped, `bin/baetyl.new` removed, ROLLINGBACK, ROLLEDBACK, FAILURE, and the master execs
//!    `bin/baetyl`, which was never replaced: the application comes back under the old master, and inspect says
//!    why. A power cut during the trial ends the same way at the next start (phase `trial` found).
//!
//! A new master that passed its trial but does not confirm within [`MAX_STARTS`] starts of its own puts
//! `bin/baetyl.old` back and execs it (ROLLINGBACK, ROLLEDBACK, FAILURE).
//!
//! Why exec and not exit: under v1's systemd unit (`Restart=always`) an exit works, but a master started by
//! hand, by a test or by another supervisor would just be gone, and the pid a supervisor watches changes.
//! Exec keeps the pid and works under all of them. The price: the application restarts twice (into the
//! trial, and into the installed master).

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baetyl_sdk::client::MasterClient;
use baetyl_sdk::env;
use baetyl_sdk::fs::{sync_dir, write_atomic, write_atomic_with};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;

use crate::api::OPERATOR;
use crate::config::MasterConfig;
use crate::engine::logfile::RotatingLog;
use crate::error::{MasterError, Result};
use crate::ota::source::{Limit, open_source};
use crate::ota::{Step, Updater};
use crate::server::operator_token_path;
use crate::supervisor::Supervisor;

/// Set in the trial master's environment (to the update's trace): it leaves the update's state alone.
pub const TRIAL_ENV: &str = "BAETYL_MST_TRIAL";
/// The OTA log's type of master updates.
const KIND: &str = "MST";
/// Starts an installed master gets to confirm before the previous one is put back.
pub const MAX_STARTS: u32 = 3;
/// What `check` prints on success (v1's `baetyl.CheckOK`).
const CHECK_OK: &str = "OK!";
/// How much of the check's output is kept for the error.
const CHECK_OUTPUT: usize = 64 << 10;
/// How often the trial is probed.
const PROBE_EVERY: Duration = Duration::from_millis(500);

/// The files of a master update in a work dir.
struct Paths {
    bin: PathBuf,
    new: PathBuf,
    old: PathBuf,
    state: PathBuf,
}

fn paths(workdir: &Path) -> Paths {
    let bin = workdir.join("bin");
    Paths {
        bin: bin.join("baetyl"),
        new: bin.join("baetyl.new"),
        old: bin.join("baetyl.old"),
        state: workdir.join("var/db/baetyl/mst.json"),
    }
}

/// `var/db/baetyl/mst.json`: where a master update stands, for the next master start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "lowercase")]
enum State {
    /// `bin/baetyl.new` is on trial; `bin/baetyl` is the old master.
    Trial {
        trace: String,
        expected: Vec<String>,
    },
    /// `bin/baetyl` is the new master, not yet confirmed; `starts` of it so far.
    Installed {
        trace: String,
        expected: Vec<String>,
        starts: u32,
    },
    /// The update failed and the old master runs again: inspect shows `error` once.
    Failed { trace: String, error: String },
}

fn read_state(path: &Path) -> Option<State> {
    let text = std::fs::read(path).ok()?;
    match serde_json::from_slice(&text) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(file = %path.display(), "ignoring an unreadable master update state: {e}");
            let _ = std::fs::remove_file(path);
            None
        }
    }
}

fn write_state(path: &Path, state: &State) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| MasterError::io(dir, e))?;
    }
    let text = serde_json::to_vec(state).unwrap_or_default();
    write_atomic(path, &text, 0o600).map_err(|e| MasterError::io(path, e))
}

fn in_trial() -> bool {
    std::env::var_os(TRIAL_ENV).is_some()
}

/// The master config file this process was started with (for the new binary's `check -c`).
static CONF: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Records the master config file of this process (`baetyl master -c`, or the default one).
pub fn set_config_file(path: &Path) {
    let _ = CONF.set(path.to_path_buf());
}

fn config_file(workdir: &Path) -> PathBuf {
    CONF.get()
        .cloned()
        .unwrap_or_else(|| workdir.join("etc/baetyl/conf.yml"))
}

/// Writes OTA log steps of one master update outside of a running [`Updater`] (before the master starts,
/// after it stopped).
struct OtaLog<'a> {
    workdir: &'a Path,
    cfg: &'a MasterConfig,
    trace: &'a str,
    log: Option<RotatingLog>,
}

impl<'a> OtaLog<'a> {
    fn new(workdir: &'a Path, cfg: &'a MasterConfig, trace: &'a str) -> Self {
        OtaLog {
            workdir,
            cfg,
            trace,
            log: None,
        }
    }

    fn step(&mut self, step: &str, message: &str, error: Option<&str>) {
        let line = Step {
            kind: KIND,
            trace: self.trace,
            step,
            message,
            error,
        };
        let path = self.workdir.join(&self.cfg.otalog.path);
        line.append(&mut self.log, &path, &self.cfg.otalog, None);
    }

    /// ROLLINGBACK (why), ROLLEDBACK, FAILURE: the steps of an update that did not make it.
    fn failed(&mut self, why: &str, outcome: &str) -> String {
        self.step("ROLLINGBACK", &format!("rolling back: {why}"), Some(why));
        self.step("ROLLEDBACK", outcome, None);
        let msg = format!("master update {} failed: {why}; {outcome}", self.trace);
        self.step("FAILURE", &msg, Some(why));
        msg
    }
}

/// Refuses a master update where this master cannot replace itself: under `baetyl init` or on a read-only
/// file system (the OS image: the OS update replaces the master), or when it does not run from
/// `<work dir>/bin/baetyl`.
pub fn check_replaceable(workdir: &Path) -> Result<()> {
    let exe = std::env::current_exe().map_err(|e| MasterError::io("/proc/self/exe", e))?;
    let os_image = |why| MasterError::MasterUpdateOsImage {
        exe: exe.clone(),
        why,
    };
    if std::env::var_os(env::INIT_PID).is_some() {
        return Err(os_image("the master runs under baetyl init"));
    }
    let dir = exe.parent().unwrap_or(Path::new("/"));
    if let Ok(st) = nix::sys::statvfs::statvfs(dir)
        && st.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY)
    {
        return Err(os_image("its file system is read-only"));
    }
    let expected = paths(workdir).bin;
    let same = expected
        .canonicalize()
        .ok()
        .zip(exe.canonicalize().ok())
        .is_some_and(|(a, b)| a == b);
    if !same {
        return Err(MasterError::MasterUpdateElsewhere { exe, expected });
    }
    Ok(())
}

/// What the running master hands to its command line when it stops for a master update.
#[derive(Debug, Clone)]
pub struct Switch {
    trace: String,
    expected: Vec<String>,
}

/// The API side of master updates, and the confirmation of an installed one.
pub struct Mst {
    sup: Arc<Supervisor>,
    updater: Arc<Updater>,
    switch: watch::Sender<Option<Switch>>,
    /// The update lock, kept once the master hands over to the trial.
    handing_over: Mutex<Option<tokio::sync::OwnedMutexGuard<()>>>,
    /// This master is an installed update to confirm: its trace and the services that must run.
    confirm: Mutex<Option<(String, Vec<String>)>>,
}

impl Mst {
    /// Reads what a previous master left (`mst.json`): an update that failed shows in inspect; an installed
    /// one is confirmed by [`Mst::confirm_after_start`].
    pub fn new(sup: Arc<Supervisor>, updater: Arc<Updater>) -> Arc<Mst> {
        let mut confirm = None;
        let state_path = paths(sup.workdir()).state;
        match read_state(&state_path).filter(|_| !in_trial()) {
            Some(State::Failed { error, .. }) => {
                sup.set_error(error);
                let _ = std::fs::remove_file(&state_path);
            }
            Some(State::Installed {
                trace, expected, ..
            }) => confirm = Some((trace, expected)),
            Some(State::Trial { .. }) | None => {}
        }
        Arc::new(Mst {
            sup,
            updater,
            switch: watch::channel(None).0,
            handing_over: Mutex::new(None),
            confirm: Mutex::new(confirm),
        })
    }

    /// Completes when an update asks the master to stop and hand over to the trial.
    pub async fn requested(&self) -> Switch {
        let mut rx = self.switch.subscribe();
        let sw = rx
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|sw| (*sw).clone());
        match sw {
            Some(sw) => sw,
            // The sender lives as long as self: never closed while awaited.
            None => std::future::pending().await,
        }
    }

    /// Accepts a master update: checks that this master may replace itself and opens the source (errors
    /// answer the request), then copies, checks and hands over in the background.
    pub fn submit(self: &Arc<Self>, path: &str, trace: &str) -> Result<()> {
        self.submit_within(path, trace, &[])
    }

    /// [`Mst::submit`] of a file that must lie in one of `within` (an agent's staging volumes; empty:
    /// anywhere in the work dir).
    pub fn submit_within(
        self: &Arc<Self>,
        path: &str,
        trace: &str,
        within: &[std::path::PathBuf],
    ) -> Result<()> {
        let workdir = self.sup.workdir().to_path_buf();
        check_replaceable(&workdir)?;
        let guard = self.updater.try_busy()?;
        let trace = if trace.is_empty() {
            crate::supervisor::new_token()[..8].to_string()
        } else {
            trace.to_string()
        };
        self.log(
            &trace,
            "RECEIVED",
            &format!("master update from {path}"),
            None,
        );
        let limit = Limit {
            key: "update.master.max_size",
            max: self.sup.config().update.master.max_size,
        };
        let source = match open_source(&workdir, path, limit, None, within) {
            Ok(s) => s,
            Err(e) => {
                self.fail(&trace, &e.to_string());
                return Err(e);
            }
        };
        let me = self.clone();
        tokio::spawn(async move {
            match me.prepare(source, &trace).await {
                Ok(expected) => {
                    // No other update starts while this master hands over.
                    *lock(&me.handing_over) = Some(guard);
                    me.switch.send_replace(Some(Switch { trace, expected }));
                }
                Err(e) => {
                    let _ = std::fs::remove_file(paths(me.sup.workdir()).new);
                    me.fail(&trace, &e.to_string());
                }
            }
        });
        Ok(())
    }

    fn log(&self, trace: &str, step: &str, message: &str, error: Option<&str>) {
        self.updater.log_as(KIND, trace, step, message, error);
    }

    fn fail(&self, trace: &str, why: &str) {
        let msg = format!("master update {trace} refused: {why}; the master is unchanged");
        self.log(trace, "FAILURE", &msg, Some(why));
        self.sup.set_error(msg);
    }

    /// Copies the new binary to `bin/baetyl.new`, runs its check, and writes the trial state: the services
    /// that run now are the ones the new master must run.
    async fn prepare(
        &self,
        source: crate::ota::source::Source,
        trace: &str,
    ) -> Result<Vec<String>> {
        let workdir = self.sup.workdir().to_path_buf();
        let p = paths(&workdir);
        self.log(
            trace,
            "UPDATING",
            &format!("checking the new master ({} bytes)", source.len),
            None,
        );
        let new = p.new.clone();
        tokio::task::spawn_blocking(move || {
            write_atomic_with(&new, 0o755, |f| {
                source.read_to(f).map(|_| ()).map_err(std::io::Error::other)
            })
            .map_err(|e| MasterError::io(&new, e))
        })
        .await
        .map_err(|e| MasterError::io(&p.new, std::io::Error::other(e)))??;
        let cfg = self.sup.config();
        if let Err(reason) = run_check(
            &p.new,
            &workdir,
            &config_file(&workdir),
            cfg.update.master.check_timeout.get(),
        )
        .await
        {
            let _ = std::fs::remove_file(&p.new);
            return Err(MasterError::MasterCheck {
                binary: p.new,
                reason,
            });
        }
        let expected = running_services(&self.sup.inspect_services());
        write_state(
            &p.state,
            &State::Trial {
                trace: trace.to_string(),
                expected: expected.clone(),
            },
        )?;
        self.log(
            trace,
            "RESTARTING",
            &format!(
                "the new master passed its check; stopping the services to run it on trial (it must run {expected:?} within {})",
                cfg.update.master.deadline
            ),
            None,
        );
        Ok(expected)
    }

    /// For an installed update: once the services that ran before are healthy for `update.health`, logs
    /// RESTARTED and forgets the update. A master that never gets there is rolled back by its next starts.
    pub fn confirm_after_start(self: &Arc<Self>) {
        let Some((trace, expected)) = lock(&self.confirm).take() else {
            return;
        };
        let me = self.clone();
        tokio::spawn(async move {
            let cfg = me.sup.config().clone();
            let outcome = watch_health(
                cfg.update.master.deadline.get(),
                cfg.update.health.get(),
                &expected,
                || std::future::ready(Ok(me.sup.inspect_services())),
            )
            .await;
            match outcome {
                Ok(()) => {
                    me.log(
                        &trace,
                        "RESTARTED",
                        &format!("the new master runs {expected:?}; previous master kept as bin/baetyl.old"),
                        None,
                    );
                    let _ = std::fs::remove_file(paths(me.sup.workdir()).state);
                }
                Err(why) => {
                    let msg = format!(
                        "master update {trace}: the new master is installed but {why}; bin/baetyl.old is the previous master (it is put back if this one restarts {MAX_STARTS} times unconfirmed)"
                    );
                    tracing::error!("{msg}");
                    me.sup.set_error(msg);
                }
            }
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Services of an inspect `services` list whose every static instance runs (and that have one).
fn running_services(services: &Value) -> Vec<String> {
    services
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| {
            let statics: Vec<&Value> = s["instances"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|i| i["dynamic"] != true)
                .collect();
            !statics.is_empty() && statics.iter().all(|i| i["status"] == "running")
        })
        .filter_map(|s| s["name"].as_str().map(str::to_string))
        .collect()
}

/// Why `services` (an inspect list) does not run every `expected` service healthily (each static instance
/// running, never restarted), or None when it does.
fn unhealthy(services: &Value, expected: &[String]) -> Option<String> {
    for name in expected {
        let Some(s) = services
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["name"] == name.as_str())
        else {
            return Some(format!("service `{name}` does not run"));
        };
        let statics = s["instances"].as_array().into_iter().flatten();
        let mut any = false;
        for i in statics.filter(|i| i["dynamic"] != true) {
            any = true;
            let inst = i["name"].as_str().unwrap_or("?");
            if i["status"] != "running" {
                return Some(format!(
                    "instance `{name}/{inst}` is {}",
                    i["status"].as_str().unwrap_or("unknown")
                ));
            }
            if i["restarts"].as_u64().unwrap_or(0) > 0 {
                return Some(format!("instance `{name}/{inst}` restarted"));
            }
        }
        if !any {
            return Some(format!("service `{name}` has no instance"));
        }
    }
    None
}

/// Polls `probe` (an inspect `services` list, or why there is none) until every `expected` service stayed
/// healthy for `health`, which must begin within `deadline`.
async fn watch_health<F, Fut>(
    deadline: Duration,
    health: Duration,
    expected: &[String],
    mut probe: F,
) -> std::result::Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<Value, String>>,
{
    // tokio's clock: paused in tests.
    let start = tokio::time::Instant::now();
    let mut since: Option<tokio::time::Instant> = None;
    let mut last = "it was not probed yet".to_string();
    loop {
        let now = tokio::time::Instant::now();
        match probe().await.map(|s| unhealthy(&s, expected)) {
            Ok(None) => {
                let t = *since.get_or_insert(now);
                if now.duration_since(t) >= health {
                    return Ok(());
                }
            }
            Ok(Some(why)) | Err(why) => {
                since = None;
                last = why;
            }
        }
        if since.is_none() && now.duration_since(start) >= deadline {
            return Err(format!(
                "it did not run the application within {}: {last}",
                humantime::format_duration(deadline)
            ));
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

/// Runs `binary check -w <workdir> -c <conf>`: it must exit 0 and print `OK!` (stdout or stderr, as v1 read
/// its combined output) within `timeout`. The error keeps the end of its output.
async fn run_check(
    binary: &Path,
    workdir: &Path,
    conf: &Path,
    timeout: Duration,
) -> std::result::Result<(), String> {
    let mut cmd = tokio::process::Command::new(binary);
    cmd.arg("check")
        .arg("-w")
        .arg(workdir)
        .arg("-c")
        .arg(conf)
        .current_dir(workdir)
        .env_remove(TRIAL_ENV)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| format!("cannot run it: {e}"))?;
    let pid = child.id();
    let out = child.stdout.take().map(bounded_reader);
    let err = child.stderr.take().map(bounded_reader);
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(s) => s.map_err(|e| format!("cannot wait for it: {e}"))?,
        Err(_) => {
            if let Some(pid) = pid {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            return Err(format!(
                "it did not finish within update.master.check_timeout ({})",
                humantime::format_duration(timeout)
            ));
        }
    };
    let mut output = Vec::new();
    for reader in [out, err].into_iter().flatten() {
        // Bounded by the time the process group still holds the pipes open.
        if let Ok(Ok(bytes)) = tokio::time::timeout(Duration::from_secs(2), reader).await {
            output.extend(bytes);
        }
    }
    let text = String::from_utf8_lossy(&output);
    if status.success() && text.contains(CHECK_OK) {
        return Ok(());
    }
    let tail: String = text
        .trim()
        .chars()
        .rev()
        .take(400)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    Err(if status.success() {
        format!("it did not print {CHECK_OK}: {tail}")
    } else {
        format!("it exited with {status}: {tail}")
    })
}

/// Reads a pipe to its end in the background, keeping at most [`CHECK_OUTPUT`] bytes.
fn bounded_reader(
    pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static,
) -> tokio::task::JoinHandle<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    tokio::spawn(async move {
        let mut pipe = pipe;
        let mut kept = Vec::new();
        let mut buf = [0u8; 8192];
        while let Ok(n) = pipe.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let room = CHECK_OUTPUT.saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..n.min(room)]);
        }
        kept
    })
}

/// At a master's start, before anything else: finishes what a master update left.
/// - phase `trial`: the master stopped during the trial (power cut, killed): `bin/baetyl` was never replaced;
///   the update is failed.
/// - phase `installed`: counts this start; past [`MAX_STARTS`] unconfirmed starts, puts `bin/baetyl.old` back
///   and execs it.
///
/// The trial master itself ([`TRIAL_ENV`]) leaves everything alone.
pub fn at_start(workdir: &Path, cfg: &MasterConfig) -> Result<()> {
    if in_trial() {
        return Ok(());
    }
    let p = paths(workdir);
    match read_state(&p.state) {
        Some(State::Trial { trace, .. }) => {
            let _ = std::fs::remove_file(&p.new);
            let error = OtaLog::new(workdir, cfg, &trace).failed(
                "the master stopped while the new master was on trial",
                "the previous master (bin/baetyl, never replaced) runs again",
            );
            write_state(&p.state, &State::Failed { trace, error })
        }
        Some(State::Installed {
            trace,
            expected,
            starts,
        }) => {
            let starts = starts + 1;
            if starts <= MAX_STARTS {
                return write_state(
                    &p.state,
                    &State::Installed {
                        trace,
                        expected,
                        starts,
                    },
                );
            }
            let why = format!(
                "the new master started {MAX_STARTS} times without running the application"
            );
            let mut ota = OtaLog::new(workdir, cfg, &trace);
            let restored =
                std::fs::rename(&p.old, &p.bin).and_then(|()| sync_dir(&workdir.join("bin")));
            if let Err(e) = restored {
                // Nothing to go back to: this master goes on, and says so.
                let error = ota.failed(
                    &format!("{why}, and bin/baetyl.old cannot be put back ({e})"),
                    "the new master keeps running",
                );
                return write_state(&p.state, &State::Failed { trace, error });
            }
            let error = ota.failed(&why, "bin/baetyl.old is bin/baetyl again and runs");
            write_state(&p.state, &State::Failed { trace, error })?;
            Err(exec_master(&p.bin))
        }
        Some(State::Failed { .. }) | None => Ok(()),
    }
}

/// After the master stopped for `sw`: runs the trial, then installs and execs the new master, or rolls back
/// and execs the old one. Returns only when `shutdown` came during the trial (the update is failed, the
/// process should exit) or when an exec failed.
pub async fn switch(
    sw: Switch,
    workdir: &Path,
    cfg: &MasterConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let p = paths(workdir);
    let mut ota = OtaLog::new(workdir, cfg, &sw.trace);
    let outcome = trial(&sw, workdir, cfg, shutdown).await;
    let error = match outcome {
        Trial::Healthy => match install(&p) {
            Ok(()) => {
                ota.step(
                    "UPDATED",
                    "the new master ran the application on trial and is installed as bin/baetyl (the previous one is bin/baetyl.old); restarting into it",
                    None,
                );
                write_state(
                    &p.state,
                    &State::Installed {
                        trace: sw.trace.clone(),
                        expected: sw.expected.clone(),
                        starts: 0,
                    },
                )?;
                return Err(exec_master(&p.bin));
            }
            Err(e) => ota.failed(
                &format!("cannot install it: {e}"),
                "the previous master runs again",
            ),
        },
        Trial::Failed(why) => ota.failed(&why, "the previous master runs again"),
        Trial::Interrupted(why) => {
            let error = ota.failed(&why, "the previous master runs at the next start");
            // The process ends as asked; the next start shows the failure.
            return discard(&p, sw.trace, error);
        }
    };
    discard(&p, sw.trace, error)?;
    Err(exec_master(&p.bin))
}

/// Removes the new binary and records the failed update for the next master's inspect.
fn discard(p: &Paths, trace: String, error: String) -> Result<()> {
    let _ = std::fs::remove_file(&p.new);
    write_state(&p.state, &State::Failed { trace, error })
}

enum Trial {
    Healthy,
    Failed(String),
    Interrupted(String),
}

/// Runs `bin/baetyl.new` with this process's arguments and watches it; stops it in every case.
async fn trial(
    sw: &Switch,
    workdir: &Path,
    cfg: &MasterConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Trial {
    let p = paths(workdir);
    let mut child = match tokio::process::Command::new(&p.new)
        .args(std::env::args_os().skip(1))
        .env(TRIAL_ENV, &sw.trace)
        .stdin(std::process::Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return Trial::Failed(format!("cannot start the new master: {e}")),
    };
    tracing::info!(
        pid = child.id(),
        "the new master runs on trial; waiting for it to run {:?}",
        sw.expected
    );
    let client = |token: String| {
        MasterClient::new(cfg.server.address.under(workdir)).with_credentials(OPERATOR, token)
    };
    let token_path = operator_token_path(workdir);
    let probe = || {
        let token = std::fs::read_to_string(&token_path);
        async move {
            let token = token.map_err(|_| "its API is not up yet".to_string())?;
            let inspect = tokio::time::timeout(
                Duration::from_secs(5),
                client(token.trim().to_string()).inspect(),
            )
            .await
            .map_err(|_| "its API did not answer within 5s".to_string())?
            .map_err(|e| format!("its API did not answer: {e}"))?;
            Ok(inspect["services"].clone())
        }
    };
    let watch = watch_health(
        cfg.update.master.deadline.get(),
        cfg.update.health.get(),
        &sw.expected,
        probe,
    );
    let outcome = tokio::select! {
        r = watch => match r {
            Ok(()) => Trial::Healthy,
            Err(why) => Trial::Failed(format!("the new master {why}")),
        },
        status = child.wait() => Trial::Failed(match status {
            Ok(s) => format!("the new master exited ({s}) before it ran the application"),
            Err(e) => format!("cannot watch the new master: {e}"),
        }),
        () = shutdown => Trial::Interrupted("the master was stopped while the new master was on trial".into()),
    };
    stop_child(&mut child, cfg.grace.get() + Duration::from_secs(10)).await;
    outcome
}

/// SIGTERM (the trial stops its services), SIGKILL after `grace`. What a killed trial left is stopped by the
/// next master's recovery.
async fn stop_child(child: &mut tokio::process::Child, grace: Duration) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        tracing::warn!("the trial master did not stop within {grace:?}: SIGKILL");
        let _ = child.kill().await;
    }
}

/// Keeps `bin/baetyl` as `bin/baetyl.old` (a hard link renamed into place) and renames `bin/baetyl.new` over
/// `bin/baetyl`; `bin/baetyl` exists at every instant. The directory is synced after each rename.
fn install(p: &Paths) -> std::io::Result<()> {
    let dir = p.bin.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(".baetyl.old.tmp");
    let _ = std::fs::remove_file(&tmp);
    if std::fs::hard_link(&p.bin, &tmp).is_err() {
        write_atomic_with(&tmp, 0o755, |f| {
            std::io::copy(&mut std::fs::File::open(&p.bin)?, f).map(|_| ())
        })?;
    }
    std::fs::rename(&tmp, &p.old)?;
    sync_dir(dir)?;
    std::fs::rename(&p.new, &p.bin)?;
    sync_dir(dir)
}

/// Replaces this process with `bin` run with this process's arguments; answers only when exec failed.
fn exec_master(bin: &Path) -> MasterError {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    tracing::warn!("restarting into {}", bin.display());
    let e = std::process::Command::new(bin)
        .args(&args)
        .env_remove(TRIAL_ENV)
        .exec();
    MasterError::io(bin, e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(name: &str, instances: Value) -> Value {
        json!({"name": name, "instances": instances})
    }

    #[test]
    fn the_services_that_run_are_the_ones_the_new_master_must_run() {
        let services = json!([
            svc(
                "hub",
                json!([{"name": "hub", "status": "running", "restarts": 0, "dynamic": false}])
            ),
            svc(
                "fn",
                json!([
                    {"name": "fn", "status": "running", "restarts": 2, "dynamic": false},
                    {"name": "fn-1", "status": "exited", "dynamic": true}
                ])
            ),
            svc(
                "broken",
                json!([{"name": "broken", "status": "restarting", "dynamic": false}])
            ),
            svc(
                "rt",
                json!([{"name": "rt-1", "status": "running", "dynamic": true}])
            ),
        ]);
        assert_eq!(running_services(&services), ["hub", "fn"]);
        // Under the new master every one of them runs and none restarted.
        assert_eq!(
            unhealthy(&services, &["hub".into()]),
            None,
            "hub runs, never restarted"
        );
        assert_eq!(
            unhealthy(&services, &["fn".into()]).as_deref(),
            Some("instance `fn/fn` restarted")
        );
        assert_eq!(
            unhealthy(&services, &["broken".into()]).as_deref(),
            Some("instance `broken/broken` is restarting")
        );
        assert_eq!(
            unhealthy(&services, &["gone".into()]).as_deref(),
            Some("service `gone` does not run")
        );
        assert_eq!(
            unhealthy(&services, &["rt".into()]).as_deref(),
            Some("service `rt` has no instance")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn health_must_begin_before_the_deadline_and_last_the_window() {
        let expected = vec!["hub".to_string()];
        let ok = json!([svc(
            "hub",
            json!([{"name": "hub", "status": "running", "restarts": 0}])
        )]);
        let polls = std::sync::atomic::AtomicU32::new(0);
        // Down for 3 probes, then healthy: accepted after the window.
        let r = watch_health(
            Duration::from_secs(10),
            Duration::from_secs(2),
            &expected,
            || {
                let n = polls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let v = ok.clone();
                async move {
                    if n < 3 {
                        Err("its API is not up yet".to_string())
                    } else {
                        Ok(v)
                    }
                }
            },
        )
        .await;
        assert_eq!(r, Ok(()));
        // Never up: refused at the deadline with the last reason.
        let r = watch_health(
            Duration::from_secs(3),
            Duration::from_secs(1),
            &expected,
            || async { Err::<Value, _>("its API is not up yet".to_string()) },
        )
        .await;
        let why = r.unwrap_err();
        assert!(
            why.contains("within 3s") && why.contains("its API is not up yet"),
            "{why}"
        );
    }

    #[test]
    fn states_round_trip_and_a_broken_one_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("var/db/baetyl/mst.json");
        let s = State::Installed {
            trace: "t".into(),
            expected: vec!["hub".into()],
            starts: 1,
        };
        write_state(&p, &s).unwrap();
        assert!(
            std::fs::read_to_string(&p)
                .unwrap()
                .contains(r#""phase":"installed""#)
        );
        assert_eq!(read_state(&p), Some(s));
        std::fs::write(&p, "{").unwrap();
        assert_eq!(read_state(&p), None);
        assert!(!p.exists());
    }

    #[test]
    fn install_keeps_the_old_binary_and_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let p = paths(dir.path());
        std::fs::create_dir_all(p.bin.parent().unwrap()).unwrap();
        std::fs::write(&p.bin, "old").unwrap();
        std::fs::write(&p.old, "older").unwrap();
        std::fs::write(&p.new, "new").unwrap();
        install(&p).unwrap();
        assert_eq!(std::fs::read_to_string(&p.bin).unwrap(), "new");
        assert_eq!(std::fs::read_to_string(&p.old).unwrap(), "old");
        assert!(!p.new.exists());
        let mut names: Vec<_> = std::fs::read_dir(p.bin.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["baetyl", "baetyl.old"]);
    }

    #[test]
    fn a_master_outside_its_work_dir_bin_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        match check_replaceable(dir.path()) {
            Err(MasterError::MasterUpdateElsewhere { expected, .. }) => {
                assert_eq!(expected, dir.path().join("bin/baetyl"))
            }
            Err(MasterError::MasterUpdateOsImage { .. }) => {} // the test runs under baetyl init or from a read-only fs
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn check_needs_ok_and_success_within_the_timeout() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let script = |name: &str, body: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            p
        };
        let conf = dir.path().join("conf.yml");
        let t = Duration::from_secs(5);
        let good = script("good", r#"[ "$1 $2 $4" = "check -w -c" ] && echo 'OK!'"#);
        assert_eq!(run_check(&good, dir.path(), &conf, t).await, Ok(()));
        // v1 printed OK! on stderr.
        let v1 = script("v1", "echo 'OK!' >&2");
        assert_eq!(run_check(&v1, dir.path(), &conf, t).await, Ok(()));
        let bad = script("bad", "echo 'config invalid: mode' >&2; exit 1");
        let why = run_check(&bad, dir.path(), &conf, t).await.unwrap_err();
        assert!(
            why.contains("exit status: 1") && why.contains("config invalid"),
            "{why}"
        );
        let silent = script("silent", "exit 0");
        let why = run_check(&silent, dir.path(), &conf, t).await.unwrap_err();
        assert!(why.contains("did not print OK!"), "{why}");
        let slow = script("slow", "sleep 30 & wait");
        let why = run_check(&slow, dir.path(), &conf, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(why.contains("check_timeout"), "{why}");
        let why = run_check(&dir.path().join("missing"), dir.path(), &conf, t)
            .await
            .unwrap_err();
        assert!(why.contains("cannot run it"), "{why}");
    }
}
