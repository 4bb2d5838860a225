//! Application updates (`PUT /v1/system/update`, type APP).
//!
//! Steps, each written to the OTA log as a JSON line with v1's names:
//! RECEIVED -> UPDATING (load, validate, prepare images) -> UPDATED (new application.yml installed, old kept
//! as application.yml.old) -> RESTARTING (stop removed and changed services, start changed and new ones) ->
//! RESTARTED (they stayed up for the health window). On any failure: ROLLINGBACK -> ROLLEDBACK -> FAILURE,
//! and the previous application runs again exactly as it was. Services whose config and volumes did not
//! change are never touched. One update at a time: a second one is refused while the first runs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::json;
use tokio::sync::Mutex as AsyncMutex;
use tokio::task::JoinHandle;

use crate::config::{AppDiff, Application, OtaLogConfig, diff};
use crate::engine::logfile::RotatingLog;
use crate::error::{MasterError, Result};
use crate::supervisor::{Status, Supervisor, now_rfc3339};

pub mod source;

/// The mode of application.yml and its `.old` copy (every service's environment, secrets included): the
/// master's alone, or readable by the agent's group ([`crate::users::Users::agent_gid`]).
const APP_MODE: u32 = 0o600;
const APP_MODE_AGENT: u32 = 0o640;

/// Writes an application file (application.yml, its `.old`) atomically, readable by the master and by
/// the agent's group `group` alone.
pub fn write_app_file(path: &Path, text: &[u8], group: Option<u32>) -> std::io::Result<()> {
    use std::io::Write;
    let mode = if group.is_some() {
        APP_MODE_AGENT
    } else {
        APP_MODE
    };
    baetyl_sdk::fs::write_atomic_with(path, mode, |f| {
        if let Some(gid) = group {
            std::os::unix::fs::fchown(&*f, None, Some(gid))?;
        }
        f.write_all(text)
    })
}

/// Gives application.yml and its `.old` (when they exist) the owner and mode [`write_app_file`] gives
/// them: files from before (an image's bootstrap application, an older master's 0644) are closed at start.
pub fn protect_app_files(app_file: &Path, group: Option<u32>) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mode = if group.is_some() {
        APP_MODE_AGENT
    } else {
        APP_MODE
    };
    for path in [app_file.to_path_buf(), old_copy(app_file)] {
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if !file.metadata()?.is_file() {
            continue;
        }
        if let Some(gid) = group {
            std::os::unix::fs::fchown(&file, None, Some(gid))?;
        }
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

pub struct Updater {
    sup: Arc<Supervisor>,
    app_file: PathBuf,
    ota_log: PathBuf,
    /// The OTA log, opened at its first line.
    log: Mutex<Option<RotatingLog>>,
    /// The text of the application that runs (None: none was installed), kept as `.old` by the next update
    /// and restored by a rollback.
    running_text: Mutex<Option<Vec<u8>>>,
    /// An update installed but not yet confirmed healthy: what to put back if the master stops meanwhile.
    pending: Mutex<Option<Pending>>,
    /// The running update's task.
    task: Mutex<Option<JoinHandle<()>>>,
    busy: Arc<AsyncMutex<()>>,
}

struct Pending {
    trace: String,
    old_text: Option<Vec<u8>>,
}

/// Where the application lives in a work dir, relative to it.
pub const APP_FILE: &str = "var/db/baetyl/application.yml";

/// Where the application lives in a work dir.
pub fn app_file(workdir: &Path) -> PathBuf {
    workdir.join(APP_FILE)
}

/// The steps the OTA log at `ota_log` (and its rotated backups) records for the update `trace`, in order
/// (empty when there is no log).
pub fn steps_of(ota_log: &Path, trace: &str) -> Vec<String> {
    records_of(ota_log, trace)
        .iter()
        .filter_map(|v| v["step"].as_str().map(str::to_string))
        .collect()
}

/// The OTA log's records (JSON lines, oldest first, rotated backups included) of the update `trace`.
pub fn records_of(ota_log: &Path, trace: &str) -> Vec<serde_json::Value> {
    RotatingLog::files_oldest_first(ota_log)
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|v| v["trace"] == trace)
                .collect::<Vec<_>>()
        })
        .collect()
}

impl Updater {
    pub fn new(sup: Arc<Supervisor>, app_file: PathBuf, ota_log: PathBuf) -> Self {
        Updater {
            sup,
            app_file,
            ota_log,
            log: Mutex::new(None),
            running_text: Mutex::new(None),
            pending: Mutex::new(None),
            task: Mutex::new(None),
            busy: Arc::new(AsyncMutex::new(())),
        }
    }

    /// The OTA log's records of the update `trace` (for an agent that cannot read the log's file: in its
    /// container it has only its own volumes).
    pub fn records(&self, trace: &str) -> Vec<serde_json::Value> {
        records_of(&self.ota_log, trace)
    }

    /// The text of the running application (None before one was installed).
    pub fn running_text(&self) -> Option<Vec<u8>> {
        lock(&self.running_text).clone()
    }

    /// Says which text the running application came from (at start: application.yml or its `.old`).
    pub fn set_running_text(&self, text: Option<Vec<u8>>) {
        *lock(&self.running_text) = text;
    }

    fn log(&self, trace: &str, step: &str, message: &str, error: Option<&str>) {
        self.log_as("APP", trace, step, message, error);
    }

    /// Writes one step of an update of type `kind` (APP, MST) to the OTA log.
    pub(crate) fn log_as(
        &self,
        kind: &str,
        trace: &str,
        step: &str,
        message: &str,
        error: Option<&str>,
    ) {
        let step = Step {
            kind,
            trace,
            step,
            message,
            error,
        };
        step.append(
            &mut lock(&self.log),
            &self.ota_log,
            &self.sup.config().otalog,
            self.sup.users().agent_gid(),
        );
    }

    /// Holds off every other update (of any type) while the guard lives; Err while one runs.
    pub(crate) fn try_busy(&self) -> Result<tokio::sync::OwnedMutexGuard<()>> {
        self.busy
            .clone()
            .try_lock_owned()
            .map_err(|_| MasterError::UpdateInProgress)
    }

    /// Accepts an update and runs it in the background. Refused (Err) while another update runs, and when
    /// its source is not a file the master may read ([`source::read_source`]): then the OTA log says
    /// RECEIVED, FAILURE.
    pub fn submit(self: &Arc<Self>, path: &str, trace: &str) -> Result<()> {
        self.submit_within(path, trace, &[])
    }

    /// [`Updater::submit`] of a file that must lie in one of `within` (an agent's staging volumes; empty:
    /// anywhere in the work dir).
    pub fn submit_within(
        self: &Arc<Self>,
        path: &str,
        trace: &str,
        within: &[PathBuf],
    ) -> Result<()> {
        let guard = self.try_busy()?;
        let trace = if trace.is_empty() {
            crate::supervisor::new_token()[..8].to_string()
        } else {
            trace.to_string()
        };
        self.log(&trace, "RECEIVED", &format!("update from {path}"), None);
        let workdir = self.sup.workdir();
        let (origin, text) =
            match source::read_source(workdir, path, self.sup.config().update.max_size, within) {
                Ok(read) => read,
                Err(e) => {
                    self.fail(&trace, format!("update {trace} refused: {e}"), &e);
                    return Err(e);
                }
            };
        let me = self.clone();
        let task = tokio::spawn(async move {
            let _guard = guard;
            me.run(&origin, text, &trace).await;
            *lock(&me.pending) = None;
        });
        *lock(&self.task) = Some(task);
        Ok(())
    }

    /// Completes when no update is running (at once when none is).
    pub async fn wait_idle(&self) {
        let _idle = self.busy.lock().await;
    }

    /// Ends a running update at once, for the master's shutdown: an update not yet confirmed healthy does
    /// not stay installed (application.yml gets the previous text back), so the next start runs what was
    /// known good. The supervisor then stops the services as usual.
    pub async fn shutdown(&self) {
        let task = lock(&self.task).take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        let Some(pending) = lock(&self.pending).take() else {
            return;
        };
        let trace = &pending.trace;
        if let Err(e) = self.restore(pending.old_text.as_deref()) {
            tracing::error!("{e}");
        }
        self.set_running_text(pending.old_text);
        let msg = format!(
            "update {trace} interrupted by the master's shutdown before its services were confirmed healthy; the previous application is installed again"
        );
        self.log(trace, "FAILURE", &msg, Some(&msg));
        self.sup.set_error(msg);
    }

    /// Logs FAILURE for `trace` and shows `msg` in inspect; the running application is unchanged.
    fn fail(&self, trace: &str, msg: String, e: &MasterError) {
        let msg = format!("{msg}; the running application is unchanged");
        self.log(trace, "FAILURE", &msg, Some(&e.to_string()));
        self.sup.set_error(msg);
    }

    /// Runs an update to completion: `text` is the new application, read once from `origin`.
    async fn run(&self, origin: &Path, text: Vec<u8>, trace: &str) {
        self.log(trace, "UPDATING", "validating the new application", None);
        let new = match self.load_and_prepare(origin, &text).await {
            Ok(app) => app,
            Err(e) => return self.fail(trace, format!("update {trace} refused: {e}"), &e),
        };
        let old = self.sup.app();
        let old_text = lock(&self.running_text).clone();
        if let Err(e) = self.install(&text, old_text.as_deref()) {
            return self.fail(trace, format!("update {trace} failed: {e}"), &e);
        }
        *lock(&self.pending) = Some(Pending {
            trace: trace.to_string(),
            old_text: old_text.clone(),
        });
        self.log(
            trace,
            "UPDATED",
            &format!("application {} installed", new.app_version),
            None,
        );
        let d = diff(&old, &new);
        self.log(
            trace,
            "RESTARTING",
            &format!(
                "keeping {:?}, restarting {:?}, stopping {:?}, starting {:?}",
                d.unchanged, d.changed, d.removed, d.added
            ),
            None,
        );
        match self.apply(&old, &new, &d).await {
            Ok(()) => {
                *lock(&self.pending) = None;
                self.set_running_text(Some(text));
                self.log(
                    trace,
                    "RESTARTED",
                    &format!("application {} is running", new.app_version),
                    None,
                );
                self.sup.set_error("");
            }
            Err(e) => {
                self.log(
                    trace,
                    "ROLLINGBACK",
                    &format!("rolling back: {e}"),
                    Some(&e.to_string()),
                );
                self.rollback(&old, &new, &d, old_text).await;
                *lock(&self.pending) = None;
                let msg = format!(
                    "update {trace} failed and was rolled back to application {}: {e}",
                    old.app_version
                );
                self.log(
                    trace,
                    "ROLLEDBACK",
                    &format!("application {} is running again", old.app_version),
                    None,
                );
                self.log(trace, "FAILURE", &msg, Some(&e.to_string()));
                self.sup.set_error(msg);
            }
        }
    }

    /// Parses the update (errors quote none of its values) and prepares its services' images.
    async fn load_and_prepare(&self, origin: &Path, text: &[u8]) -> Result<Application> {
        let app = Application::from_bytes(text, origin).map_err(source::redact)?;
        for (name, spec) in &app.services {
            self.sup.check_service(&app, name, spec)?;
            self.sup.engine().prepare(name, spec).await?;
        }
        Ok(app)
    }

    /// Keeps the running application's text as `.old` and installs the new one, each as a new file that
    /// replaces the previous one atomically (never rewritten in place).
    fn install(&self, new_text: &[u8], old_text: Option<&[u8]>) -> Result<()> {
        let dir = self.app_file.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| MasterError::io(dir, e))?;
        let group = self.sup.users().agent_gid();
        if let Some(old_text) = old_text {
            let old = old_copy(&self.app_file);
            write_app_file(&old, old_text, group).map_err(|e| MasterError::io(&old, e))?;
        }
        write_app_file(&self.app_file, new_text, group)
            .map_err(|e| MasterError::io(&self.app_file, e))
    }

    /// Puts the previous application's text back in application.yml (a new file, never rewritten in place),
    /// or removes it when there was none.
    fn restore(&self, old_text: Option<&[u8]>) -> Result<()> {
        let file = &self.app_file;
        match old_text {
            Some(text) => write_app_file(file, text, self.sup.users().agent_gid()),
            None => std::fs::remove_file(file).or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            }),
        }
        .map_err(|e| MasterError::io(file, e))
    }

    async fn apply(&self, old: &Application, new: &Application, d: &AppDiff) -> Result<()> {
        for name in old.start_order().unwrap_or_default().iter().rev() {
            if d.removed.contains(name) || d.changed.contains(name) {
                self.sup.stop_service(name).await;
            }
        }
        self.sup.set_app(new.clone());
        let started: Vec<String> = new
            .start_order()?
            .into_iter()
            .filter(|n| d.changed.contains(n) || d.added.contains(n))
            .collect();
        for name in &started {
            self.sup.start_service(new, name).await?;
        }
        tokio::time::sleep(self.sup.config().update.health.get()).await;
        for (service, st) in self.sup.instance_states(&started) {
            let healthy = st.restarts == 0
                && st.starts == 1
                && (st.status == Status::Running
                    || (st.status == Status::Exited && st.last_exit_success));
            if !healthy {
                return Err(MasterError::Unhealthy {
                    service,
                    instance: st.name,
                    window: self.sup.config().update.health.to_string(),
                    last_exit: st
                        .last_exit
                        .unwrap_or_else(|| format!("{:?}", st.status).to_lowercase()),
                });
            }
        }
        Ok(())
    }

    async fn rollback(
        &self,
        old: &Application,
        new: &Application,
        d: &AppDiff,
        old_text: Option<Vec<u8>>,
    ) {
        for name in new.start_order().unwrap_or_default().iter().rev() {
            if d.changed.contains(name) || d.added.contains(name) {
                self.sup.stop_service(name).await;
            }
        }
        if let Err(e) = self.restore(old_text.as_deref()) {
            tracing::error!("{e}");
        }
        self.sup.set_app(old.clone());
        for name in old.start_order().unwrap_or_default() {
            if (d.changed.contains(&name) || d.removed.contains(&name))
                && let Err(e) = self.sup.start_service(old, &name).await
            {
                tracing::error!(service = %name, "rollback could not restart the previous version: {e}");
            }
        }
    }
}

/// One line of the OTA log: a step of the update `trace` of type `kind`, with v1's field names.
pub(crate) struct Step<'a> {
    pub kind: &'a str,
    pub trace: &'a str,
    pub step: &'a str,
    pub message: &'a str,
    pub error: Option<&'a str>,
}

impl Step<'_> {
    /// Appends the line to the OTA log at `path` (opened into `log` at the first line) and syncs it. A log
    /// that cannot be written is reported in the master's log; the update goes on.
    /// Appends the step to the OTA log at `path` (0640; with `group`, the agent's, that group reads it).
    pub fn append(
        &self,
        log: &mut Option<RotatingLog>,
        path: &Path,
        cfg: &OtaLogConfig,
        group: Option<u32>,
    ) {
        let (trace, step, message) = (self.trace, self.step, self.message);
        let mut line = json!({"time": now_rfc3339(), "trace": trace, "type": self.kind, "step": step, "message": message});
        if let (Some(e), Some(obj)) = (self.error, line.as_object_mut()) {
            obj.insert("error".into(), e.into());
        }
        tracing::info!(trace, step, kind = self.kind, "update: {message}");
        let mut write = || -> std::io::Result<()> {
            if log.is_none() {
                let opened = RotatingLog::open(path, cfg.max_size.0, cfg.backups)?;
                *log = Some(match group {
                    Some(gid) => opened.owned_by(nix::unistd::geteuid().as_raw(), gid)?,
                    None => opened,
                });
            }
            let log = log
                .as_mut()
                .ok_or_else(|| std::io::Error::other("no log"))?;
            log.write_all(format!("{line}\n").as_bytes())?;
            log.sync()
        };
        if let Err(e) = write() {
            tracing::warn!(file = %path.display(), "cannot write the OTA log: {e}");
        }
    }
}

/// Where the previous application is kept: `application.yml.old` next to `app_file`.
pub fn old_copy(app_file: &Path) -> PathBuf {
    app_file.with_extension("yml.old")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests;
