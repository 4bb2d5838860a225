//! Application updates (`PUT /v1/system/update`, type APP).
//!
//! Steps, each written to the OTA log as a JSON line with v1's names:
//! RECEIVED -> UPDATING (load, validate, prepare images) -> UPDATED (new application.yml installed, old kept
//! as application.yml.old) -> RESTARTING (stop removed and changed services, start changed and new ones) ->
//! RESTARTED (they stayed up for the health window). On any failure: ROLLINGBACK -> ROLLEDBACK -> FAILURE,
//! and the previous application runs again exactly as it was. Services whose config and volumes did not
//! change are never touched. One update at a time: a second one is refused while the first runs.

use baetyl_sdk::config::ConfigFile;
use baetyl_sdk::fs::write_atomic;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::json;
use tokio::sync::Mutex as AsyncMutex;

use crate::config::{AppDiff, Application, diff};
use crate::engine::logfile::RotatingLog;
use crate::error::{MasterError, Result};
use crate::supervisor::{Status, Supervisor, now_rfc3339};

/// The mode of application.yml and its `.old` copy.
const APP_MODE: u32 = 0o644;

pub struct Updater {
    sup: Arc<Supervisor>,
    app_file: PathBuf,
    ota_log: PathBuf,
    /// The OTA log, opened at its first line.
    log: Mutex<Option<RotatingLog>>,
    /// The text of the application that runs (None: none was installed), kept as `.old` by the next update
    /// and restored by a rollback.
    running_text: Mutex<Option<Vec<u8>>>,
    busy: Arc<AsyncMutex<()>>,
}

/// Where the application lives in a work dir.
pub fn app_file(workdir: &Path) -> PathBuf {
    workdir.join("var/db/baetyl/application.yml")
}

/// The steps the OTA log at `ota_log` (and its rotated backups) records for the update `trace`, in order
/// (empty when there is no log).
pub fn steps_of(ota_log: &Path, trace: &str) -> Vec<String> {
    RotatingLog::files_oldest_first(ota_log)
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|v| v["trace"] == trace)
                .filter_map(|v| v["step"].as_str().map(str::to_string))
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
            busy: Arc::new(AsyncMutex::new(())),
        }
    }

    /// Says which text the running application came from (at start: application.yml or its `.old`).
    pub fn set_running_text(&self, text: Option<Vec<u8>>) {
        *lock(&self.running_text) = text;
    }

    fn log(&self, trace: &str, step: &str, message: &str, error: Option<&str>) {
        let mut line = json!({"time": now_rfc3339(), "trace": trace, "type": "APP", "step": step, "message": message});
        if let (Some(e), Some(obj)) = (error, line.as_object_mut()) {
            obj.insert("error".into(), e.into());
        }
        tracing::info!(trace, step, "update: {message}");
        let mut log = lock(&self.log);
        let write = |log: &mut Option<RotatingLog>| -> std::io::Result<()> {
            if log.is_none() {
                let cfg = &self.sup.config().otalog;
                *log = Some(RotatingLog::open(
                    &self.ota_log,
                    cfg.max_size.0,
                    cfg.backups,
                )?);
            }
            let log = log
                .as_mut()
                .ok_or_else(|| std::io::Error::other("no log"))?;
            log.write_all(format!("{line}\n").as_bytes())?;
            log.sync()
        };
        if let Err(e) = write(&mut log) {
            tracing::warn!(file = %self.ota_log.display(), "cannot write the OTA log: {e}");
        }
    }

    /// Accepts an update and runs it in the background. Refused (Err) while another update runs.
    pub fn submit(self: &Arc<Self>, path: &str, trace: &str) -> Result<()> {
        let guard = self
            .busy
            .clone()
            .try_lock_owned()
            .map_err(|_| MasterError::UpdateInProgress)?;
        let trace = if trace.is_empty() {
            crate::supervisor::new_token()[..8].to_string()
        } else {
            trace.to_string()
        };
        let source = self.resolve_path(path);
        self.log(
            &trace,
            "RECEIVED",
            &format!("update from {}", source.display()),
            None,
        );
        let me = self.clone();
        tokio::spawn(async move {
            let _guard = guard;
            me.run(&source, &trace).await;
        });
        Ok(())
    }

    /// Completes when no update is running (at once when none is).
    pub async fn wait_idle(&self) {
        let _idle = self.busy.lock().await;
    }

    /// Runs an update to completion.
    async fn run(&self, source: &Path, trace: &str) {
        self.log(trace, "UPDATING", "validating the new application", None);
        let new = match self.load_and_prepare(source).await {
            Ok(app) => app,
            Err(e) => {
                let msg =
                    format!("update {trace} refused: {e}; the running application is unchanged");
                self.log(trace, "FAILURE", &msg, Some(&e.to_string()));
                self.sup.set_error(msg);
                return;
            }
        };
        let old = self.sup.app();
        let old_text = lock(&self.running_text).clone();
        let new_text = match std::fs::read(source) {
            Ok(t) => t,
            Err(e) => {
                let e = MasterError::io(source, e);
                let msg =
                    format!("update {trace} failed: {e}; the running application is unchanged");
                self.log(trace, "FAILURE", &msg, Some(&e.to_string()));
                self.sup.set_error(msg);
                return;
            }
        };
        if let Err(e) = self.install(&new_text, old_text.as_deref()) {
            let msg = format!("update {trace} failed: {e}; the running application is unchanged");
            self.log(trace, "FAILURE", &msg, Some(&e.to_string()));
            self.sup.set_error(msg);
            return;
        }
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
                self.set_running_text(Some(new_text));
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

    fn resolve_path(&self, path: &str) -> PathBuf {
        let p = self.sup.workdir().join(path);
        if p.is_dir() {
            p.join("application.yml")
        } else {
            p
        }
    }

    async fn load_and_prepare(&self, source: &Path) -> Result<Application> {
        let app = Application::load(source)?;
        for (name, spec) in &app.services {
            self.sup.engine().prepare(name, spec).await?;
        }
        Ok(app)
    }

    /// Keeps the running application's text as `.old` and installs the new one, each as a new file that
    /// replaces the previous one atomically (never rewritten in place).
    fn install(&self, new_text: &[u8], old_text: Option<&[u8]>) -> Result<()> {
        let dir = self.app_file.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| MasterError::io(dir, e))?;
        if let Some(old_text) = old_text {
            let old = old_copy(&self.app_file);
            write_atomic(&old, old_text, APP_MODE).map_err(|e| MasterError::io(&old, e))?;
        }
        write_atomic(&self.app_file, new_text, APP_MODE)
            .map_err(|e| MasterError::io(&self.app_file, e))
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
        match old_text {
            Some(text) => {
                if let Err(e) = write_atomic(&self.app_file, &text, APP_MODE) {
                    tracing::error!(file = %self.app_file.display(), "cannot restore the previous application file: {e}");
                }
            }
            None => {
                let _ = std::fs::remove_file(&self.app_file);
            }
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

/// Where the previous application is kept: `application.yml.old` next to `app_file`.
pub fn old_copy(app_file: &Path) -> PathBuf {
    app_file.with_extension("yml.old")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests;
