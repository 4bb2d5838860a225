//! Deployments: from a signed desired state to a running application.
//!
//! 1. Check: the desired state and the manifest inside it carry the pinned fleet key's signature, name this
//!    device, and are newer than what runs (a replayed or older document is ignored).
//! 2. Download what is not cached (resumable with `Range`, bounded by `download.max_size` and each blob's
//!    declared size) and check every blob's SHA-256.
//! 3. Stage in the agent's own staging volume (`master.staging`, where the agent sees it: the only place it
//!    writes, whether it runs as a process or in a container): each shipped volume in its own
//!    content-addressed directory (`volumes/<name>-<digest>`, so a volume whose content changed gets a new path
//!    and its services restart, and an unchanged one keeps its path and its services keep running), with
//!    `${secret.NAME}`, `${device.id}` and `${device.name}` filled in; then `r<revision>/application.yml` with
//!    those volumes' paths as the master names them (below the staging volume's path in the running
//!    application) and the agent's own service added unchanged (the device, not the application, owns the
//!    agent).
//! 4. Ask the master to update (`PUT /v1/system/update`, the staged file as the master names it; the master
//!    reads an agent's update only from the agent's own read-write volumes) and follow the update's records of
//!    the OTA log through the master's API to the final step.
//!
//! Any failure before step 4 leaves the running application untouched; a failure in step 4 is the master's
//! rollback. Each step is reported as a [`DeployEvent`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value as Yaml;
use tokio::io::AsyncWriteExt;

use crate::crypto::{self, PublicKey, Sha256};
use crate::error::{AgentError, Result};
use crate::files;
use crate::https::Client;
use crate::master::Master;
use crate::proto::{
    BLOB_PATH, BlobRef, DeployEvent, Desired, Manifest, Signed, Step, now, valid_name,
    valid_rel_path,
};

/// The largest application.yml accepted.
const MAX_APPLICATION: u64 = 1 << 20;
/// How often the update's progress is asked of the master.
const FOLLOW_EVERY: Duration = Duration::from_millis(300);

/// What the agent remembers across restarts (`state.json` in the state dir).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct State {
    /// The revision whose application runs.
    pub applied_revision: u64,
    /// The last revision that failed (not retried until a newer one arrives).
    pub failed_revision: u64,
    /// The last step of the last deployment.
    pub last: Option<DeployEvent>,
}

impl State {
    pub fn load(dir: &Path) -> State {
        let path = dir.join("state.json");
        files::read_limited(&path, 1 << 20)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join("state.json");
        let bytes = serde_json::to_vec(self).map_err(|e| AgentError::Stage(e.to_string()))?;
        files::replace(&path, &bytes, 0o600).map_err(|e| AgentError::io(&path, e))
    }
}

/// Deployment steps waiting to be sent to the cloud: bounded (the oldest go first), kept while offline.
#[derive(Clone, Default)]
pub struct EventQueue {
    inner: Arc<(Mutex<VecDeque<DeployEvent>>, tokio::sync::Notify)>,
}

/// How many unsent steps are kept while offline.
const MAX_QUEUED_EVENTS: usize = 1000;

impl EventQueue {
    pub fn push(&self, e: DeployEvent) {
        let mut q = self.inner.0.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= MAX_QUEUED_EVENTS {
            q.pop_front();
        }
        q.push_back(e);
        drop(q);
        self.inner.1.notify_one();
    }

    pub fn drain(&self) -> Vec<DeployEvent> {
        self.inner
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect()
    }

    /// Puts events that could not be sent back in front, in order.
    pub fn requeue(&self, events: Vec<DeployEvent>) {
        let mut q = self.inner.0.lock().unwrap_or_else(|p| p.into_inner());
        for e in events.into_iter().rev() {
            q.push_front(e);
        }
        while q.len() > MAX_QUEUED_EVENTS {
            q.pop_front();
        }
    }

    pub async fn wait(&self) {
        self.inner.1.notified().await;
    }

    pub fn is_empty(&self) -> bool {
        self.inner.0.lock().map(|q| q.is_empty()).unwrap_or(true)
    }
}

/// Everything a deployment needs besides the master.
pub struct Deployer {
    pub device: String,
    pub name: String,
    pub key: PublicKey,
    pub cloud: Client,
    pub state_dir: PathBuf,
    /// The staging volume, where the agent sees it.
    pub staging: PathBuf,
    /// The same directory as the master names it (the volume's path in the running application).
    pub staging_host: String,
    pub max_size: u64,
    pub download_timeout: Duration,
    pub update_timeout: Duration,
    /// The agent's own service name (`BAETYL_SERVICE_NAME`), carried into every application.
    pub own_service: Option<String>,
    pub events: EventQueue,
}

/// The outcome of handling one desired state.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Already applied, already failed, or older: nothing done.
    Skipped,
    Applied(u64),
    Failed(u64),
}

impl Deployer {
    fn emit(
        &self,
        state: &mut State,
        revision: u64,
        trace: &str,
        step: Step,
        message: String,
        error: Option<String>,
    ) {
        let e = DeployEvent {
            revision,
            trace: trace.to_string(),
            step,
            message,
            error,
            time: now(),
        };
        match step {
            Step::Failure | Step::Timeout => {
                tracing::warn!(revision, trace, step = step.as_str(), "{}", e.message)
            }
            _ => tracing::info!(revision, trace, step = step.as_str(), "{}", e.message),
        }
        state.last = Some(e.clone());
        self.events.push(e);
    }

    /// Handles one desired state to its end.
    pub async fn handle(&self, master: &dyn Master, signed: &Signed, state: &mut State) -> Outcome {
        // Read the revision before checking the signature only to report against it; nothing else is used.
        let claimed = serde_json::from_str::<serde_json::Value>(&signed.payload)
            .ok()
            .and_then(|v| v["revision"].as_u64())
            .unwrap_or(0);
        let (desired, manifest) = match self.check(signed) {
            Ok(v) => v,
            Err(why) => {
                // Nothing of a refused document is remembered: a valid one for the same revision may follow.
                self.emit(
                    state,
                    claimed,
                    "",
                    Step::Failure,
                    format!("refused: {why}; the running application is untouched"),
                    Some(why),
                );
                return Outcome::Failed(claimed);
            }
        };
        let rev = desired.revision;
        if rev <= state.applied_revision || rev == state.failed_revision {
            return Outcome::Skipped;
        }
        let trace = format!("r{rev}-{}", &crypto::random_token(4));
        self.emit(
            state,
            rev,
            &trace,
            Step::Accepted,
            format!("application {} {} accepted", manifest.app, manifest.version),
            None,
        );
        let result = self.run(master, &desired, &manifest, &trace, state).await;
        let outcome = match result {
            Ok(Step::Restarted) => {
                state.applied_revision = rev;
                self.collect_garbage(master, &manifest).await;
                Outcome::Applied(rev)
            }
            Ok(_) => {
                state.failed_revision = rev;
                Outcome::Failed(rev)
            }
            Err(e) => {
                let why = e.to_string();
                self.emit(
                    state,
                    rev,
                    &trace,
                    Step::Failure,
                    format!("{why}; the running application is untouched"),
                    Some(why),
                );
                state.failed_revision = rev;
                Outcome::Failed(rev)
            }
        };
        if let Err(e) = state.save(&self.state_dir) {
            tracing::error!("cannot save the agent state: {e}");
        }
        outcome
    }

    /// Signatures, device, and the manifest's own sanity.
    fn check(&self, signed: &Signed) -> std::result::Result<(Desired, Manifest), String> {
        let desired: Desired = signed
            .open(&self.key)
            .map_err(|e| format!("desired state: {e}"))?;
        if desired.device != self.device {
            return Err(format!(
                "the desired state is for device `{}`, this is `{}`",
                desired.device, self.device
            ));
        }
        let manifest: Manifest = desired
            .manifest
            .open(&self.key)
            .map_err(|e| format!("manifest of the application: {e}"))?;
        if !valid_name(&manifest.app) || !valid_name(&manifest.version) {
            return Err("the manifest's app or version name is not valid".into());
        }
        for blob in manifest.blobs() {
            if !crypto::is_sha256_hex(&blob.sha256) {
                return Err(format!("`{}` is not a SHA-256 digest", blob.sha256));
            }
        }
        for (vol, files) in &manifest.volumes {
            if !valid_name(vol) {
                return Err(format!("volume name `{vol}` is not valid"));
            }
            let mut seen = BTreeSet::new();
            for f in files {
                if !valid_rel_path(&f.path) || !seen.insert(f.path.as_str()) {
                    return Err(format!(
                        "volume `{vol}`: file path `{}` is not valid or repeated",
                        f.path
                    ));
                }
            }
        }
        let total = manifest.total_size();
        if total > self.max_size {
            return Err(format!(
                "the application needs {total} bytes, more than download.max_size ({} bytes)",
                self.max_size
            ));
        }
        for name in &manifest.secrets {
            match desired.secrets.get(name) {
                Some(v) if safe_secret(v) => {}
                Some(_) => {
                    return Err(format!(
                        "secret `{name}` has characters a config file cannot hold safely"
                    ));
                }
                None => {
                    return Err(format!(
                        "the manifest uses secret `{name}`, which the desired state does not carry"
                    ));
                }
            }
        }
        Ok((desired, manifest))
    }

    async fn run(
        &self,
        master: &dyn Master,
        desired: &Desired,
        manifest: &Manifest,
        trace: &str,
        state: &mut State,
    ) -> Result<Step> {
        let rev = desired.revision;
        let missing: Vec<&BlobRef> = manifest
            .blobs()
            .into_iter()
            .filter(|b| !self.blob_path(&b.sha256).exists())
            .collect();
        let missing_bytes: u64 = missing.iter().map(|b| b.size).sum();
        self.emit(
            state,
            rev,
            trace,
            Step::Downloading,
            format!(
                "{} of {} file(s) to download ({missing_bytes} bytes)",
                missing.len(),
                manifest.blobs().len()
            ),
            None,
        );
        for blob in &missing {
            self.fetch(blob).await?;
        }
        for blob in manifest.blobs() {
            self.verify_cached(blob)?;
        }
        self.emit(
            state,
            rev,
            trace,
            Step::Verified,
            "every file matches its SHA-256".into(),
            None,
        );
        let staged = self.stage(master, desired, manifest).await?;
        self.emit(
            state,
            rev,
            trace,
            Step::Staged,
            format!("staged as {staged}"),
            None,
        );
        let mut tries = 0;
        loop {
            match master.update(&staged, trace).await {
                Ok(()) => break,
                // 409: another update runs (an operator's); wait for it.
                Err(AgentError::Master(baetyl_sdk::ClientError::Status {
                    status: 409, ..
                })) if tries < 30 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                Err(e) => return Err(AgentError::Update(e.to_string())),
            }
        }
        self.follow(master, trace, rev, state).await
    }

    fn blob_path(&self, sha: &str) -> PathBuf {
        self.state_dir.join("blobs").join(sha)
    }

    /// Downloads one blob into the cache, resuming a partial download; checks size and digest.
    async fn fetch(&self, blob: &BlobRef) -> Result<()> {
        let dir = self.state_dir.join("blobs");
        std::fs::create_dir_all(&dir).map_err(|e| AgentError::io(&dir, e))?;
        let part = dir.join(format!("{}.part", blob.sha256));
        for attempt in 0..4u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
            }
            let err =
                match tokio::time::timeout(self.download_timeout, self.fetch_once(blob, &part))
                    .await
                {
                    Ok(Ok(())) => break,
                    Ok(Err(e @ AgentError::Blob { .. })) => return Err(e),
                    Ok(Err(e)) => e,
                    Err(_) => AgentError::Blob {
                        sha256: blob.sha256.clone(),
                        why: format!(
                            "download timed out after {:?} (download.timeout)",
                            self.download_timeout
                        ),
                    },
                };
            if attempt == 3 {
                return Err(err);
            }
            tracing::warn!(blob = %blob.sha256, "download interrupted, resuming: {err}");
        }
        let got = hash_file(&part).map_err(|e| AgentError::io(&part, e))?;
        if got != blob.sha256 {
            let _ = std::fs::remove_file(&part);
            return Err(AgentError::Blob {
                sha256: blob.sha256.clone(),
                why: format!(
                    "the downloaded content does not match its digest (it hashes to {got}): corrupt or tampered"
                ),
            });
        }
        let fin = self.blob_path(&blob.sha256);
        std::fs::rename(&part, &fin).map_err(|e| AgentError::io(&fin, e))
    }

    async fn fetch_once(&self, blob: &BlobRef, part: &Path) -> Result<()> {
        let mut have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
        if have > blob.size {
            have = 0;
        }
        if have == blob.size && blob.size > 0 {
            return Ok(());
        }
        let range = format!("bytes={have}-");
        let headers: Vec<(&str, &str)> = if have > 0 {
            vec![("range", range.as_str())]
        } else {
            vec![]
        };
        let resp = self
            .cloud
            .send(
                "GET",
                &format!("{BLOB_PATH}/{}", blob.sha256),
                &headers,
                Vec::new(),
            )
            .await?;
        let status = resp.status().as_u16();
        let append = match status {
            206 => true,
            200 => false,
            _ => {
                let body = crate::https::read_body(resp.into_body(), 4096)
                    .await
                    .unwrap_or_default();
                return Err(AgentError::Https(crate::error::HttpsError::Status {
                    status,
                    body: String::from_utf8_lossy(&body).trim().to_string(),
                }));
            }
        };
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(part)
            .await
            .map_err(|e| AgentError::io(part, e))?;
        let mut written = if append { have } else { 0 };
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame
                .map_err(|e| AgentError::Https(crate::error::HttpsError::Http(e.to_string())))?;
            if let Some(data) = frame.data_ref() {
                written += data.len() as u64;
                if written > blob.size {
                    drop(file);
                    let _ = std::fs::remove_file(part);
                    return Err(AgentError::Blob {
                        sha256: blob.sha256.clone(),
                        why: format!(
                            "the cloud sent more than the {} bytes the manifest declares",
                            blob.size
                        ),
                    });
                }
                file.write_all(data)
                    .await
                    .map_err(|e| AgentError::io(part, e))?;
            }
        }
        file.sync_all().await.map_err(|e| AgentError::io(part, e))?;
        if written != blob.size {
            return Err(AgentError::Https(crate::error::HttpsError::Http(format!(
                "download stopped at {written} of {} bytes",
                blob.size
            ))));
        }
        Ok(())
    }

    /// A cached blob is checked again before use (the disk may have damaged it since).
    fn verify_cached(&self, blob: &BlobRef) -> Result<()> {
        let p = self.blob_path(&blob.sha256);
        let got = hash_file(&p).map_err(|e| AgentError::io(&p, e))?;
        if got != blob.sha256 {
            let _ = std::fs::remove_file(&p);
            return Err(AgentError::Blob {
                sha256: blob.sha256.clone(),
                why: format!(
                    "the cached copy hashes to {got}; it was removed and will be downloaded again"
                ),
            });
        }
        Ok(())
    }

    fn read_blob(&self, blob: &BlobRef, limit: u64) -> Result<Vec<u8>> {
        let p = self.blob_path(&blob.sha256);
        files::read_limited(&p, limit).map_err(|e| AgentError::io(&p, e))
    }

    /// Writes volumes and application.yml in the staging volume; answers the application file's path as the
    /// master names it.
    async fn stage(
        &self,
        master: &dyn Master,
        desired: &Desired,
        manifest: &Manifest,
    ) -> Result<String> {
        let vars = Vars {
            secrets: &desired.secrets,
            device: &self.device,
            name: &self.name,
        };
        let app_bytes = self.read_blob(&manifest.application, MAX_APPLICATION)?;
        let app_text = String::from_utf8(app_bytes)
            .map_err(|_| AgentError::Stage("application.yml is not UTF-8 text".into()))?;
        let app_text = render(&app_text, &vars).map_err(AgentError::Stage)?;
        let mut app: Yaml = serde_yaml_ng::from_str(&app_text)
            .map_err(|e| AgentError::Stage(format!("application.yml: {e}")))?;
        let deploy = &self.staging;
        let volumes_dir = deploy.join("volumes");
        // Services pass through to the volumes staged for them; nobody else lists or reads what is here.
        for d in [deploy, &volumes_dir] {
            dir_with_mode(d, 0o711)?;
        }
        for (vol, files) in &manifest.volumes {
            let mut rendered = Vec::new();
            for f in files {
                let bytes = self.read_blob(&f.blob, f.blob.size)?;
                let bytes = match std::str::from_utf8(&bytes) {
                    Ok(t) if t.contains("${") => render(t, &vars)
                        .map_err(|e| AgentError::Stage(format!("volume `{vol}`, {}: {e}", f.path)))?
                        .into_bytes(),
                    _ => bytes,
                };
                rendered.push((f.path.as_str(), f.mode & 0o777, bytes));
            }
            let mut h = Sha256::default();
            for (path, mode, bytes) in &rendered {
                h.update(path.as_bytes());
                h.update(&[0]);
                h.update(&mode.to_be_bytes());
                h.update(crypto::sha256_hex(bytes).as_bytes());
            }
            let dir_name = format!("{vol}-{}", &h.finish_hex()[..16]);
            let dir = volumes_dir.join(&dir_name);
            if !dir.exists() {
                write_volume(&volumes_dir, &dir, &rendered)?;
            }
            let spec = app
                .get_mut("volumes")
                .and_then(|v| v.get_mut(vol.as_str()))
                .ok_or_else(|| {
                    AgentError::Stage(format!(
                        "the manifest ships volume `{vol}`, which application.yml does not declare"
                    ))
                })?;
            if spec.is_null() {
                *spec = Yaml::Mapping(Default::default());
            }
            let map = spec
                .as_mapping_mut()
                .ok_or_else(|| AgentError::Stage(format!("volumes.{vol} is not a mapping")))?;
            map.insert(
                Yaml::String("path".into()),
                Yaml::String(format!("{}/volumes/{dir_name}", self.staging_host)),
            );
        }
        let current = self.running_application(master).await?;
        self.carry_own_service(&mut app, current.as_ref())?;
        let rel = format!("r{}/application.yml", desired.revision);
        let path = deploy.join(&rel);
        if let Some(d) = path.parent() {
            dir_with_mode(d, 0o700)?;
        }
        let text = serde_yaml_ng::to_string(&app).map_err(|e| AgentError::Stage(e.to_string()))?;
        // Every service's environment with its secrets: for the master (root) alone.
        files::replace(&path, text.as_bytes(), 0o600).map_err(|e| AgentError::io(&path, e))?;
        Ok(format!("{}/{rel}", self.staging_host))
    }

    /// The running application, from the master (None before one is installed).
    async fn running_application(&self, master: &dyn Master) -> Result<Option<Yaml>> {
        let Some(text) = master.application().await? else {
            return Ok(None);
        };
        serde_yaml_ng::from_str(&text)
            .map(Some)
            .map_err(|e| AgentError::Stage(format!("the running application.yml: {e}")))
    }

    /// Copies the agent's own service (and the volumes it uses) from the running application into `app`.
    fn carry_own_service(&self, app: &mut Yaml, current: Option<&Yaml>) -> Result<()> {
        let Some(me) = &self.own_service else {
            return Ok(());
        };
        let Some(current) = current else {
            return Ok(());
        };
        let Some(spec) = current
            .get("services")
            .and_then(|s| s.get(me.as_str()))
            .cloned()
        else {
            tracing::warn!(service = %me, "the agent is not a service of the running application; not carried into the new one");
            return Ok(());
        };
        let services = ensure_mapping(app, "services")?;
        if services.contains_key(me.as_str()) {
            tracing::warn!(service = %me, "the deployed application defines the agent's service name; the device's own agent is kept instead");
        }
        services.insert(Yaml::String(me.clone()), spec.clone());
        let sources: Vec<String> = spec
            .get("volumes")
            .and_then(Yaml::as_sequence)
            .into_iter()
            .flatten()
            .filter_map(|v| match v {
                Yaml::String(s) => s.split(':').next().map(str::to_string),
                Yaml::Mapping(m) => m.get("source").and_then(Yaml::as_str).map(str::to_string),
                _ => None,
            })
            .collect();
        let current_vols = current.get("volumes").cloned().unwrap_or(Yaml::Null);
        let vols = ensure_mapping(app, "volumes")?;
        for src in sources {
            let Some(def) = current_vols.get(src.as_str()) else {
                continue;
            };
            match vols.get(src.as_str()) {
                Some(existing) if existing != def => {
                    return Err(AgentError::Stage(format!(
                        "volume `{src}` is the agent's own; the application must use another name"
                    )));
                }
                _ => {
                    vols.insert(Yaml::String(src), def.clone());
                }
            }
        }
        Ok(())
    }

    /// Follows the update's records of the OTA log (through the master) until it reaches a final step.
    async fn follow(
        &self,
        master: &dyn Master,
        trace: &str,
        rev: u64,
        state: &mut State,
    ) -> Result<Step> {
        let deadline = tokio::time::Instant::now() + self.update_timeout;
        let mut seen = 0;
        loop {
            match master.update_records(trace).await {
                Ok(records) => {
                    for v in records.iter().skip(seen) {
                        seen += 1;
                        let Some(step) = v["step"].as_str().and_then(Step::parse_ota) else {
                            continue;
                        };
                        let message = v["message"].as_str().unwrap_or_default().to_string();
                        let error = v["error"].as_str().map(str::to_string);
                        self.emit(state, rev, trace, step, message, error);
                        if step.is_final() {
                            return Ok(step);
                        }
                    }
                }
                // The master restarts a service it updates; the agent's own link may blink meanwhile.
                Err(e) => tracing::debug!(trace, "the update's progress: {e}"),
            }
            if tokio::time::Instant::now() >= deadline {
                self.emit(
                    state,
                    rev,
                    trace,
                    Step::Timeout,
                    format!(
                        "the master did not finish the update within {:?} (master.update_timeout)",
                        self.update_timeout
                    ),
                    Some("update timed out".into()),
                );
                return Ok(Step::Timeout);
            }
            tokio::time::sleep(FOLLOW_EVERY).await;
        }
    }

    /// Keeps the blobs of the running manifest, the newest two staged application files (the running one and
    /// the one a rollback returns to) and the staged volumes the running application or those files use.
    async fn collect_garbage(&self, master: &dyn Master, manifest: &Manifest) {
        let keep: BTreeSet<String> = manifest.blobs().iter().map(|b| b.sha256.clone()).collect();
        if let Ok(dir) = std::fs::read_dir(self.state_dir.join("blobs")) {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !keep.contains(&name) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let deploy = &self.staging;
        let mut revs: Vec<(u64, PathBuf)> = std::fs::read_dir(deploy)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.strip_prefix('r')
                    .and_then(|r| r.parse().ok())
                    .map(|r| (r, e.path()))
            })
            .collect();
        revs.sort();
        let n = revs.len();
        for (_, p) in revs.drain(..n.saturating_sub(2)) {
            let _ = std::fs::remove_dir_all(p);
        }
        // Without the running application nothing more is removed: a volume it uses must not go.
        let Ok(Some(current)) = self.running_application(master).await else {
            return;
        };
        let mut apps = vec![current];
        apps.extend(revs.iter().filter_map(|(_, p)| {
            std::fs::read_to_string(p.join("application.yml"))
                .ok()
                .and_then(|t| serde_yaml_ng::from_str::<Yaml>(&t).ok())
        }));
        let prefix = format!("{}/volumes/", self.staging_host);
        let mut used = BTreeSet::new();
        for app in &apps {
            if let Some(vols) = app.get("volumes").and_then(Yaml::as_mapping) {
                for v in vols.values() {
                    if let Some(p) = v.get("path").and_then(Yaml::as_str)
                        && let Some(name) = p.strip_prefix(&prefix)
                    {
                        used.insert(name.to_string());
                    }
                }
            }
        }
        if let Ok(dir) = std::fs::read_dir(deploy.join("volumes")) {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !used.contains(&name) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
}

fn ensure_mapping<'a>(app: &'a mut Yaml, key: &str) -> Result<&'a mut serde_yaml_ng::Mapping> {
    let root = app
        .as_mapping_mut()
        .ok_or_else(|| AgentError::Stage("application.yml is not a mapping".into()))?;
    let entry = root
        .entry(Yaml::String(key.into()))
        .or_insert_with(|| Yaml::Mapping(Default::default()));
    if entry.is_null() {
        *entry = Yaml::Mapping(Default::default());
    }
    entry
        .as_mapping_mut()
        .ok_or_else(|| AgentError::Stage(format!("`{key}` in application.yml is not a mapping")))
}

/// Makes `dir` (and its parents) and gives it `mode`.
fn dir_with_mode(dir: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(|e| AgentError::io(dir, e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(|e| AgentError::io(dir, e))
}

/// Writes a volume into a temporary directory beside `dir`, then renames it into place. Its files hold the
/// device's secrets: nothing is readable by others (files keep the manifest's owner and group bits, dirs are
/// 0750); the master gives the volume to the service that mounts it (its group, or its user) at its start.
fn write_volume(parent: &Path, dir: &Path, files: &[(&str, u32, Vec<u8>)]) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let tmp = parent.join(format!(".staging-{}", crypto::random_token(6)));
    let io = |p: &Path, e| AgentError::io(p, e);
    let result = (|| {
        dir_with_mode(&tmp, 0o750)?;
        for (rel, mode, bytes) in files {
            let p = tmp.join(rel);
            if let Some(d) = p.parent() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o750)
                    .create(d)
                    .map_err(|e| io(d, e))?;
            }
            files::replace(&p, bytes, mode & 0o770).map_err(|e| io(&p, e))?;
        }
        std::fs::rename(&tmp, dir).map_err(|e| io(dir, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

fn hash_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finish_hex());
        }
        h.update(&buf[..n]);
    }
}

/// A secret value a YAML or text config can hold as-is: what the cloud generates (letters, digits, `-`, `_`).
fn safe_secret(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 256
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Values for the placeholders.
pub struct Vars<'a> {
    pub secrets: &'a BTreeMap<String, String>,
    pub device: &'a str,
    pub name: &'a str,
}

/// Fills in `${secret.NAME}`, `${device.id}` and `${device.name}`; leaves any other `${...}` alone.
pub fn render(text: &str, vars: &Vars<'_>) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[i..]);
            return Ok(out);
        };
        let key = &after[..end];
        let value = if let Some(name) = key.strip_prefix("secret.") {
            Some(
                vars.secrets
                    .get(name)
                    .map(String::as_str)
                    .ok_or_else(|| format!("`${{{key}}}`: this device has no secret `{name}`"))?,
            )
        } else {
            match key {
                "device.id" => Some(vars.device),
                "device.name" => Some(vars.name),
                _ => None,
            }
        };
        match value {
            Some(v) => out.push_str(v),
            None => out.push_str(&rest[i..i + 2 + end + 1]),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The `${secret.NAME}` names used in `text`.
pub fn secret_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("${secret.") {
        let after = &rest[i + 9..];
        match after.find('}') {
            Some(end) => {
                names.insert(after[..end].to_string());
                rest = &after[end + 1..];
            }
            None => break,
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled_and_unknown_secrets_refused() {
        let secrets = BTreeMap::from([("hub".to_string(), "s3cr3t".to_string())]);
        let vars = Vars {
            secrets: &secrets,
            device: "d-1",
            name: "pump",
        };
        let out = render("password: ${secret.hub}\nclient: ${device.name}-${device.id}\nshell: ${HOME}\nopen: ${x", &vars).unwrap();
        assert_eq!(
            out,
            "password: s3cr3t\nclient: pump-d-1\nshell: ${HOME}\nopen: ${x"
        );
        let err = render("p: ${secret.other}", &vars).unwrap_err();
        assert!(err.contains("no secret `other`"), "{err}");
        assert_eq!(
            secret_names("a ${secret.x} b ${secret.y-2} ${device.id} ${secret.x}"),
            BTreeSet::from(["x".to_string(), "y-2".to_string()])
        );
        assert!(safe_secret("abcDEF-09_"));
        assert!(!safe_secret("a b"));
        assert!(!safe_secret("x\ny: 1"));
    }

    #[test]
    fn event_queue_is_bounded_and_keeps_order() {
        let q = EventQueue::default();
        for i in 0..(MAX_QUEUED_EVENTS as u64 + 5) {
            q.push(DeployEvent {
                revision: i,
                trace: String::new(),
                step: Step::Accepted,
                message: String::new(),
                error: None,
                time: String::new(),
            });
        }
        let all = q.drain();
        assert_eq!(all.len(), MAX_QUEUED_EVENTS);
        assert_eq!(all[0].revision, 5);
        q.requeue(all[..2].to_vec());
        assert_eq!(
            q.drain().iter().map(|e| e.revision).collect::<Vec<_>>(),
            vec![5, 6]
        );
        assert!(q.is_empty());
    }
}
