//! Operators' API (`/api/v1`): the fleet, devices, applications, deployments, operations on devices, tokens and
//! the audit log. Reads need any valid token; changes and operations that act on devices need an admin token
//! (inspect and logs are reads). Every action is audited.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use baetyl_agent::crypto;
use baetyl_agent::proto::{BlobRef, FileRef, Manifest, Op, Up, valid_name, valid_rel_path};
use baetyl_sdk::config::ConfigFile;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{App, Operator, Role};
use crate::deploy::{self, Target};
use crate::error::{CloudError, Result};
use crate::store::{AppVersion, Device, now_ms};

type AppState = State<Arc<App>>;

pub fn routes(upload_limit: usize) -> Router<Arc<App>> {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/api/v1/fleet", get(fleet))
        .route("/api/v1/fleet/provisioning-key", get(provisioning_key))
        .route(
            "/api/v1/fleet/provisioning-key/rotate",
            post(rotate_provisioning_key),
        )
        .route("/api/v1/devices", get(devices).post(create_device))
        .route("/api/v1/devices/{d}", get(device))
        .route("/api/v1/devices/{d}/tags", put(set_tags))
        .route("/api/v1/devices/{d}/revoke", post(revoke))
        .route("/api/v1/devices/{d}/deployments", get(deployments))
        .route("/api/v1/devices/{d}/secrets", get(secrets))
        .route("/api/v1/devices/{d}/secrets/rotate", post(rotate_secrets))
        .route("/api/v1/devices/{d}/inspect", post(inspect))
        .route("/api/v1/devices/{d}/logs", get(logs))
        .route("/api/v1/devices/{d}/services/{svc}/restart", post(restart))
        .route("/api/v1/devices/{d}/reboot", post(reboot))
        .route("/api/v1/devices/{d}/poweroff", post(poweroff))
        .route(
            "/api/v1/blobs/{sha}",
            put(upload_blob)
                .head(has_blob)
                .layer(DefaultBodyLimit::max(upload_limit)),
        )
        .route("/api/v1/apps", get(apps))
        .route("/api/v1/apps/{app}/versions", post(create_version))
        .route("/api/v1/apps/{app}/versions/{version}", get(version))
        .route("/api/v1/deployments", post(deploy_version))
        .route("/api/v1/assignments", get(assignments))
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/tokens", get(tokens).post(create_token))
        .route("/api/v1/tokens/{id}", axum::routing::delete(revoke_token))
}

/// A device by id or name.
async fn find(app: &App, key: &str) -> Result<Device> {
    if let Some(d) = app.store.device(key).await? {
        return Ok(d);
    }
    app.store.device_by_name(key).await?.ok_or_else(|| {
        CloudError::NotFound(format!(
            "no device `{key}` (give its name or id; `baetyl ctl devices` lists them)"
        ))
    })
}

/// The processes whose heartbeat is fresh: a device linked to one of them is online.
async fn live(app: &App) -> Result<BTreeSet<String>> {
    let silence = super::device::silence(app).as_millis() as i64;
    app.store.live_processes(now_ms() - silence).await
}

fn device_json(d: &Device, live: &BTreeSet<String>) -> Value {
    let mut v = serde_json::to_value(d).unwrap_or_default();
    let online = d.state == "active" && d.link_owner.as_ref().is_some_and(|o| live.contains(o));
    if let Some(obj) = v.as_object_mut() {
        obj.insert("online".into(), online.into());
    }
    v
}

async fn fleet(State(app): AppState, _op: Operator) -> Result<Json<Value>> {
    let devices = app.store.devices().await?;
    let live = live(&app).await?;
    let online = devices
        .iter()
        .filter(|d| d.state == "active" && d.link_owner.as_ref().is_some_and(|o| live.contains(o)))
        .count();
    Ok(Json(json!({
        "public_url": app.public_url,
        "ca": app.pki.ca_pem,
        "signing_key": app.pki.signing_public.to_string(),
        "devices": devices.len(),
        "online": online,
        "process": app.links.me,
        "processes": live.len(),
        "links_here": app.links.count(),
        "reports_here": app.reports.load(std::sync::atomic::Ordering::Relaxed),
    })))
}

async fn provisioning_key(State(app): AppState, op: Operator) -> Result<Json<Value>> {
    op.require_admin("reading the provisioning key")?;
    let path = app.cfg.data_dir.join("provisioning.key");
    app.audited(
        &op,
        "fleet.provisioning_key.read",
        "fleet",
        json!({}),
        async {
            let key =
                baetyl_agent::files::read_secret(&path).map_err(|e| CloudError::io(&path, e))?;
            Ok(Json(json!({"provisioning_key": key})))
        },
    )
    .await
}

async fn rotate_provisioning_key(State(app): AppState, op: Operator) -> Result<Json<Value>> {
    op.require_admin("rotating the provisioning key")?;
    let path = app.cfg.data_dir.join("provisioning.key");
    app.audited(
        &op,
        "fleet.provisioning_key.rotate",
        "fleet",
        json!({}),
        async {
            let key = format!("bpk_{}", crypto::random_token(24));
            app.store
                .set_provisioning_hash(&crypto::sha256_hex(key.as_bytes()))
                .await?;
            baetyl_agent::files::replace(&path, key.as_bytes(), 0o600)
                .map_err(|e| CloudError::io(&path, e))?;
            Ok(Json(json!({"provisioning_key": key})))
        },
    )
    .await
}

async fn devices(State(app): AppState, _op: Operator) -> Result<Json<Value>> {
    let live = live(&app).await?;
    let list: Vec<Value> = app
        .store
        .devices()
        .await?
        .iter()
        .map(|d| device_json(d, &live))
        .collect();
    Ok(Json(Value::Array(list)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewDevice {
    name: String,
    #[serde(default)]
    tags: Vec<String>,
}

fn check_tags(tags: &[String]) -> Result<()> {
    match tags.iter().find(|t| !valid_name(t)) {
        Some(t) => Err(CloudError::BadRequest(format!(
            "tag `{t}` is not valid: 1 to 64 letters, digits, `-`, `_`, `.`"
        ))),
        None if tags.len() > 32 => Err(CloudError::BadRequest(
            "a device has at most 32 tags".into(),
        )),
        None => Ok(()),
    }
}

/// Makes a device with a one-time registration token (for a single device; a fleet image uses the
/// provisioning key instead).
async fn create_device(
    State(app): AppState,
    op: Operator,
    Json(req): Json<NewDevice>,
) -> Result<Json<Value>> {
    op.require_admin("making a device")?;
    app.audited(
        &op,
        "device.create",
        &req.name,
        json!({"tags": req.tags}),
        async {
            if !valid_name(&req.name) {
                return Err(CloudError::BadRequest(format!(
                    "device name `{}` is not valid: 1 to 64 letters, digits, `-`, `_`, `.`",
                    req.name
                )));
            }
            check_tags(&req.tags)?;
            let secret = crypto::random_token(16);
            let d = super::device::new_device(
                req.name.clone(),
                req.tags.clone(),
                Some(crypto::sha256_hex(secret.as_bytes())),
            );
            app.store.create_device(&d).await?;
            Ok(Json(
                json!({"device": d.id, "name": d.name, "token": format!("bdt_{}_{secret}", d.id)}),
            ))
        },
    )
    .await
}

async fn device(
    State(app): AppState,
    _op: Operator,
    Path(key): Path<String>,
) -> Result<Json<Value>> {
    let d = find(&app, &key).await?;
    let live = live(&app).await?;
    let mut v = device_json(&d, &live);
    let report: Value = d
        .report
        .as_deref()
        .and_then(|r| serde_json::from_str(r).ok())
        .unwrap_or(Value::Null);
    let desired = app.store.desired(&d.id).await?;
    let deployments = app.store.deployments(&d.id, 20).await?;
    let assignments = app.store.assignments().await?;
    let assigned = deploy::effective(&assignments, &d).cloned();
    if let Some(obj) = v.as_object_mut() {
        obj.insert("report".into(), report);
        obj.insert(
            "desired".into(),
            desired
                .map(|r| json!({"revision": r.revision, "app": r.app, "version": r.version}))
                .unwrap_or(Value::Null),
        );
        obj.insert(
            "assignment".into(),
            serde_json::to_value(assigned).unwrap_or_default(),
        );
        obj.insert(
            "deployments".into(),
            serde_json::to_value(deployments).unwrap_or_default(),
        );
    }
    Ok(Json(v))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Tags {
    tags: Vec<String>,
}

async fn set_tags(
    State(app): AppState,
    op: Operator,
    Path(key): Path<String>,
    Json(req): Json<Tags>,
) -> Result<Json<Value>> {
    op.require_admin("tagging a device")?;
    let d = find(&app, &key).await?;
    app.audited(
        &op,
        "device.tags",
        &d.id,
        json!({"tags": req.tags}),
        async {
            check_tags(&req.tags)?;
            app.store.set_tags(&d.id, &req.tags).await?;
            let d = find(&app, &d.id).await?;
            let (revision, n) =
                deploy::refresh(&app, std::slice::from_ref(&d), false, &op.actor(), None).await?;
            Ok(Json(
                json!({"device": d.id, "tags": req.tags, "revision": revision, "redeployed": n}),
            ))
        },
    )
    .await
}

async fn revoke(
    State(app): AppState,
    op: Operator,
    Path(key): Path<String>,
) -> Result<Json<Value>> {
    op.require_admin("revoking a device")?;
    let d = find(&app, &key).await?;
    app.audited(
        &op,
        "device.revoke",
        &d.id,
        json!({"name": d.name}),
        async {
            app.store.revoke_device(&d.id).await?;
            app.bus
                .publish(crate::bus::Event::Revoked {
                    device: d.id.clone(),
                })
                .await?;
            Ok(Json(json!({"device": d.id, "state": "revoked"})))
        },
    )
    .await
}

async fn deployments(
    State(app): AppState,
    _op: Operator,
    Path(key): Path<String>,
) -> Result<Json<Value>> {
    let d = find(&app, &key).await?;
    Ok(Json(
        serde_json::to_value(app.store.deployments(&d.id, 100).await?).unwrap_or_default(),
    ))
}

async fn secrets(
    State(app): AppState,
    op: Operator,
    Path(key): Path<String>,
) -> Result<Json<Value>> {
    op.require_admin("reading a device's secrets")?;
    let d = find(&app, &key).await?;
    app.audited(&op, "device.secrets.read", &d.id, json!({}), async {
        Ok(Json(
            serde_json::to_value(app.store.secrets(&d.id).await?).unwrap_or_default(),
        ))
    })
    .await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct Rotate {
    /// Only these secrets (default: all of the device's).
    names: Vec<String>,
}

async fn rotate_secrets(
    State(app): AppState,
    op: Operator,
    Path(key): Path<String>,
    body: Option<Json<Rotate>>,
) -> Result<Json<Value>> {
    op.require_admin("rotating a device's secrets")?;
    let d = find(&app, &key).await?;
    let req = body.map(|b| b.0).unwrap_or_default();
    app.audited(
        &op,
        "device.secrets.rotate",
        &d.id,
        json!({"names": req.names}),
        async {
            let current = app.store.secrets(&d.id).await?;
            let names: Vec<String> = if req.names.is_empty() {
                current.keys().cloned().collect()
            } else {
                req.names.clone()
            };
            for n in &names {
                if !current.contains_key(n) {
                    return Err(CloudError::NotFound(format!(
                        "device `{}` has no secret `{n}`",
                        d.name
                    )));
                }
                app.store
                    .set_secret(&d.id, n, &deploy::new_secret())
                    .await?;
            }
            let (revision, n) =
                deploy::refresh(&app, std::slice::from_ref(&d), true, &op.actor(), None).await?;
            Ok(Json(
                json!({"device": d.id, "rotated": names, "revision": revision, "redeployed": n}),
            ))
        },
    )
    .await
}

/// Waits for a command's single answer.
async fn answer(app: &App, device: &Device, id: &str, mut rx: mpsc::Receiver<Up>) -> Result<Value> {
    let timeout = app.cfg.limits.command_timeout.get();
    let msg = tokio::time::timeout(timeout, rx.recv()).await;
    app.links.finish(&device.id, id, false).await;
    match msg {
        Ok(Some(Up::Result { ok: true, body, .. })) => Ok(body),
        Ok(Some(Up::Result { error, .. })) => {
            Err(CloudError::Device(error.unwrap_or_else(|| "failed".into())))
        }
        Ok(_) => Err(CloudError::Device(
            "the link closed before the device answered".into(),
        )),
        Err(_) => Err(CloudError::DeviceTimeout(device.name.clone(), timeout)),
    }
}

async fn run_op(
    app: &App,
    op: &Operator,
    key: &str,
    action: &str,
    command: Op,
) -> Result<Json<Value>> {
    let d = find(app, key).await?;
    app.audited(
        op,
        action,
        &d.id,
        serde_json::to_value(&command).unwrap_or_default(),
        async {
            let (id, rx) = app.links.command(&d.id, command.clone()).await?;
            Ok(Json(answer(app, &d, &id, rx).await?))
        },
    )
    .await
}

async fn inspect(
    State(app): AppState,
    op: Operator,
    Path(key): Path<String>,
) -> Result<Json<Value>> {
    run_op(&app, &op, &key, "device.inspect", Op::Inspect).await
}

async fn restart(
    State(app): AppState,
    op: Operator,
    Path((key, svc)): Path<(String, String)>,
) -> Result<Json<Value>> {
    op.require_admin("restarting a service")?;
    run_op(
        &app,
        &op,
        &key,
        "device.restart",
        Op::Restart { service: svc },
    )
    .await
}

async fn reboot(
    State(app): AppState,
    op: Operator,
    Path(key): Path<String>,
) -> Result<Json<Value>> {
    op.require_admin("rebooting a device")?;
    run_op(&app, &op, &key, "device.reboot", Op::Reboot).await
}

async fn poweroff(
    State(app): AppState,
    op: Operator,
    Path(key): Path<String>,
) -> Result<Json<Value>> {
    op.require_admin("powering a device off")?;
    run_op(&app, &op, &key, "device.poweroff", Op::Poweroff).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    service: String,
    #[serde(default)]
    instance: Option<String>,
    #[serde(default)]
    tail: Option<usize>,
    #[serde(default)]
    follow: Option<bool>,
}

/// Stops the device's log stream when the reader goes away.
struct StreamGuard {
    app: Arc<App>,
    device: String,
    id: String,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let (app, device, id) = (
            self.app.clone(),
            std::mem::take(&mut self.device),
            std::mem::take(&mut self.id),
        );
        tokio::spawn(async move { app.links.finish(&device, &id, true).await });
    }
}

/// A service's log as text: the last `tail` lines, then with `follow=true` new lines as they come.
async fn logs(
    State(app): AppState,
    op: Operator,
    Path(key): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response> {
    let d = find(&app, &key).await?;
    let follow = q.follow.unwrap_or(false);
    let command = Op::Logs {
        service: q.service.clone(),
        instance: q.instance.clone(),
        tail: q.tail.unwrap_or(100).min(baetyl_agent::ops::MAX_TAIL_LINES),
        follow,
    };
    let (id, mut rx) = app
        .audited(
            &op,
            "device.logs",
            &d.id,
            serde_json::to_value(&command).unwrap_or_default(),
            app.links.command(&d.id, command.clone()),
        )
        .await?;
    let guard = StreamGuard {
        app: app.clone(),
        device: d.id.clone(),
        id: id.clone(),
    };
    let timeout = app.cfg.limits.command_timeout.get();
    // The first message says whether the log exists at all (an error is an HTTP error, not a stream).
    let first = match tokio::time::timeout(timeout, rx.recv()).await {
        Ok(Some(m)) => m,
        Ok(None) => {
            return Err(CloudError::Device(
                "the link closed before the device answered".into(),
            ));
        }
        Err(_) => return Err(CloudError::DeviceTimeout(d.name.clone(), timeout)),
    };
    let first = match first {
        Up::LogEnd { error: Some(e), .. } => return Err(CloudError::Device(e)),
        Up::LogEnd { error: None, .. } => return Ok(text_response(Body::empty())),
        Up::LogData { data, .. } => data,
        other => return Err(CloudError::Device(format!("unexpected answer {other:?}"))),
    };
    let stream = futures_util::stream::unfold(
        (Some(first), rx, guard, false),
        |(first, mut rx, guard, done)| async move {
            if done {
                return None;
            }
            if let Some(f) = first {
                return Some((
                    Ok::<_, std::io::Error>(Bytes::from(f)),
                    (None, rx, guard, false),
                ));
            }
            match rx.recv().await {
                Some(Up::LogData { data, .. }) => {
                    Some((Ok(Bytes::from(data)), (None, rx, guard, false)))
                }
                Some(Up::LogEnd { error: Some(e), .. }) => Some((
                    Ok(Bytes::from(format!("\n[log stream ended: {e}]\n"))),
                    (None, rx, guard, true),
                )),
                _ => None,
            }
        },
    );
    Ok(text_response(Body::from_stream(stream)))
}

fn text_response(body: Body) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

async fn has_blob(
    State(app): AppState,
    _op: Operator,
    Path(sha): Path<String>,
) -> Result<StatusCode> {
    Ok(match app.store.blob_size(&sha).await? {
        Some(_) => StatusCode::OK,
        None => StatusCode::NOT_FOUND,
    })
}

async fn upload_blob(
    State(app): AppState,
    op: Operator,
    Path(sha): Path<String>,
    body: Bytes,
) -> Result<StatusCode> {
    op.require_admin("uploading")?;
    app.audited(
        &op,
        "blob.upload",
        &sha,
        json!({"size": body.len()}),
        async {
            if !crypto::is_sha256_hex(&sha) {
                return Err(CloudError::BadRequest(format!(
                    "`{sha}` is not a SHA-256 digest (64 lower-case hex digits)"
                )));
            }
            let got = crypto::sha256_hex(&body);
            if got != sha {
                return Err(CloudError::BadRequest(format!(
                    "the content hashes to {got}, not {sha}"
                )));
            }
            app.store.put_blob(&sha, &body).await?;
            Ok(StatusCode::CREATED)
        },
    )
    .await
}

async fn apps(State(app): AppState, _op: Operator) -> Result<Json<Value>> {
    let list: Vec<Value> = app
        .store
        .versions()
        .await?
        .into_iter()
        .map(|v| {
            let m: Value = serde_json::from_str(&v.manifest).unwrap_or_default();
            json!({"app": v.app, "version": v.version, "created": v.created, "created_by": v.created_by,
                   "size": m["application"]["size"].as_u64().unwrap_or(0)
                       + m["volumes"].as_object().into_iter().flat_map(|o| o.values()).flat_map(|f| f.as_array().cloned().unwrap_or_default()).map(|f| f["size"].as_u64().unwrap_or(0)).sum::<u64>(),
                   "secrets": m["secrets"]})
        })
        .collect();
    Ok(Json(Value::Array(list)))
}

async fn version(
    State(app): AppState,
    _op: Operator,
    Path((a, v)): Path<(String, String)>,
) -> Result<Json<Value>> {
    let row = app.store.version(&a, &v).await?.ok_or_else(|| {
        CloudError::NotFound(format!("application {a} version {v} does not exist"))
    })?;
    Ok(Json(json!({
        "app": row.app, "version": row.version, "created": row.created, "created_by": row.created_by,
        "manifest": serde_json::from_str::<Value>(&row.manifest).unwrap_or_default(),
        "payload": row.manifest,
        "signature": row.signature,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewVersion {
    /// Defaults to the application.yml's `app_version`, which it must equal when given.
    #[serde(default)]
    pub version: Option<String>,
    pub application: BlobRef,
    #[serde(default)]
    pub volumes: BTreeMap<String, Vec<FileRef>>,
}

/// Makes an application version from uploaded blobs: checks application.yml with the master's own loader,
/// the volumes against it, and every blob; collects the secrets its files use; signs the manifest.
async fn create_version(
    State(app): AppState,
    op: Operator,
    Path(name): Path<String>,
    Json(req): Json<NewVersion>,
) -> Result<Json<Value>> {
    op.require_admin("uploading an application")?;
    let detail = json!({"version": req.version, "volumes": req.volumes.keys().collect::<Vec<_>>()});
    app.audited(&op, "app.version.create", &name, detail, async {
        let manifest = check_version(&app, &name, req).await?;
        let payload = serde_json::to_string(&manifest).map_err(|e| CloudError::BadRequest(e.to_string()))?;
        let signature = app.pki.signing.sign(payload.as_bytes());
        app.store
            .create_version(&AppVersion {
                app: manifest.app.clone(),
                version: manifest.version.clone(),
                manifest: payload,
                signature: signature.clone(),
                created: now_ms(),
                created_by: op.actor(),
            })
            .await?;
        Ok(Json(json!({"app": manifest.app, "version": manifest.version, "secrets": manifest.secrets, "signature": signature})))
    })
    .await
}

async fn blob_text(app: &App, b: &BlobRef, what: &str) -> Result<Option<String>> {
    if !crypto::is_sha256_hex(&b.sha256) {
        return Err(CloudError::BadRequest(format!(
            "{what}: `{}` is not a SHA-256 digest",
            b.sha256
        )));
    }
    match app.store.blob_size(&b.sha256).await? {
        Some(s) if s == b.size => {}
        Some(s) => {
            return Err(CloudError::BadRequest(format!(
                "{what}: blob {} has {s} bytes, not {}",
                b.sha256, b.size
            )));
        }
        None => {
            return Err(CloudError::BadRequest(format!(
                "{what}: blob {} was not uploaded (PUT /api/v1/blobs/<sha256> first)",
                b.sha256
            )));
        }
    }
    if b.size > 4 << 20 {
        return Ok(None);
    }
    let data = app.store.blob(&b.sha256).await?.unwrap_or_default();
    Ok(String::from_utf8(data).ok())
}

async fn check_version(app: &App, name: &str, req: NewVersion) -> Result<Manifest> {
    if !valid_name(name) {
        return Err(CloudError::BadRequest(format!(
            "application name `{name}` is not valid: 1 to 64 letters, digits, `-`, `_`, `.`"
        )));
    }
    let text = blob_text(app, &req.application, "application.yml")
        .await?
        .ok_or_else(|| {
            CloudError::BadRequest("application.yml must be UTF-8 text of at most 4 MiB".into())
        })?;
    let parsed =
        baetyl_master::config::Application::parse(&text, std::path::Path::new("application.yml"))
            .map_err(|e| CloudError::BadRequest(e.to_string()))?;
    let version = match (&req.version, parsed.app_version.trim()) {
        (Some(v), file) if !file.is_empty() && v != file => {
            return Err(CloudError::BadRequest(format!(
                "version `{v}` differs from application.yml's app_version `{file}`; they must be the same (the device reports app_version)"
            )));
        }
        (Some(v), _) => v.clone(),
        (None, "") => {
            return Err(CloudError::BadRequest(
                "application.yml has no app_version; set it or give a version".into(),
            ));
        }
        (None, file) => file.to_string(),
    };
    if !valid_name(&version) {
        return Err(CloudError::BadRequest(format!(
            "version `{version}` is not valid: 1 to 64 letters, digits, `-`, `_`, `.`"
        )));
    }
    if let Some((svc, _)) = parsed.services.iter().find(|(_, s)| {
        let image = s.image.rsplit('/').next().unwrap_or(&s.image);
        image.split(':').next() == Some("baetyl-agent")
    }) {
        return Err(CloudError::BadRequest(format!(
            "service `{svc}` runs the agent: every cloud-managed device carries its own agent into each application; remove it"
        )));
    }
    let mut secrets: BTreeSet<String> = baetyl_agent::deploy::secret_names(&text);
    let mut total = req.application.size;
    for (vol, files) in &req.volumes {
        if !parsed.volumes.contains_key(vol) {
            return Err(CloudError::BadRequest(format!(
                "volume `{vol}` has files but application.yml does not declare it under `volumes`"
            )));
        }
        let mut seen = BTreeSet::new();
        for f in files {
            if !valid_rel_path(&f.path) || !seen.insert(f.path.clone()) {
                return Err(CloudError::BadRequest(format!(
                    "volume `{vol}`: `{}` is not a valid relative path, or is repeated",
                    f.path
                )));
            }
            if f.mode & !0o777 != 0 {
                return Err(CloudError::BadRequest(format!(
                    "volume `{vol}`, {}: mode {:o} is more than permission bits",
                    f.path, f.mode
                )));
            }
            total += f.blob.size;
            if let Some(t) = blob_text(app, &f.blob, &format!("volume `{vol}`, {}", f.path)).await?
            {
                secrets.extend(baetyl_agent::deploy::secret_names(&t));
            }
        }
        if files.len() > 10_000 {
            return Err(CloudError::BadRequest(format!(
                "volume `{vol}` has more than 10,000 files"
            )));
        }
    }
    if total > app.cfg.limits.upload.0 * 4 {
        return Err(CloudError::TooLarge(format!(
            "the application's files add up to {total} bytes, more than 4 x limits.upload"
        )));
    }
    if let Some(s) = secrets.iter().find(|s| !valid_name(s)) {
        return Err(CloudError::BadRequest(format!(
            "`${{secret.{s}}}`: a secret name is 1 to 64 letters, digits, `-`, `_`, `.`"
        )));
    }
    Ok(Manifest {
        app: name.to_string(),
        version,
        application: req.application,
        volumes: req.volumes,
        secrets: secrets.into_iter().collect(),
        created: baetyl_agent::proto::now(),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployRequest {
    app: String,
    version: String,
    #[serde(default)]
    device: Option<String>,
    #[serde(default)]
    tag: Option<String>,
}

async fn deploy_version(
    State(app): AppState,
    op: Operator,
    Json(req): Json<DeployRequest>,
) -> Result<Json<Value>> {
    op.require_admin("deploying")?;
    let detail =
        json!({"app": req.app, "version": req.version, "device": req.device, "tag": req.tag});
    let target_name = req.device.clone().or(req.tag.clone()).unwrap_or_default();
    app.audited(&op, "deploy", &target_name, detail, async {
        let target = match (&req.device, &req.tag) {
            (Some(d), None) => Target::Device(find(&app, d).await?.id),
            (None, Some(t)) => {
                check_tags(std::slice::from_ref(t))?;
                Target::Tag(t.clone())
            }
            _ => return Err(CloudError::BadRequest("deploy to a `device` or to a `tag`, one of them".into())),
        };
        let (revision, devices) = deploy::assign(&app, target.clone(), &req.app, &req.version, &op.actor()).await?;
        Ok(Json(json!({"target": target.key(), "app": req.app, "version": req.version, "revision": revision, "devices": devices})))
    })
    .await
}

async fn assignments(State(app): AppState, _op: Operator) -> Result<Json<Value>> {
    Ok(Json(
        serde_json::to_value(app.store.assignments().await?).unwrap_or_default(),
    ))
}

#[derive(Deserialize)]
struct Limit {
    #[serde(default)]
    limit: Option<i64>,
}

async fn audit(State(app): AppState, _op: Operator, Query(q): Query<Limit>) -> Result<Json<Value>> {
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    Ok(Json(
        serde_json::to_value(app.store.audit_log(limit).await?).unwrap_or_default(),
    ))
}

async fn tokens(State(app): AppState, op: Operator) -> Result<Json<Value>> {
    op.require_admin("listing tokens")?;
    let list: Vec<Value> = app
        .store
        .tokens()
        .await?
        .into_iter()
        .map(|t| json!({"id": t.id, "name": t.name, "role": t.role, "created": t.created, "revoked": t.revoked}))
        .collect();
    Ok(Json(Value::Array(list)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
    role: String,
}

async fn create_token(
    State(app): AppState,
    op: Operator,
    Json(req): Json<NewToken>,
) -> Result<Json<Value>> {
    op.require_admin("making a token")?;
    app.audited(
        &op,
        "token.create",
        &req.name,
        json!({"role": req.role}),
        async {
            let role = Role::parse(&req.role).ok_or_else(|| {
                CloudError::BadRequest(format!(
                    "role `{}` is unknown; use admin or read-only",
                    req.role
                ))
            })?;
            if !valid_name(&req.name) {
                return Err(CloudError::BadRequest(format!(
                    "token name `{}` is not valid",
                    req.name
                )));
            }
            let (token, row) = crate::server::new_token(&req.name, role.as_str());
            app.store.create_token(&row).await?;
            Ok(Json(
                json!({"id": row.id, "name": row.name, "role": row.role, "token": token}),
            ))
        },
    )
    .await
}

async fn revoke_token(
    State(app): AppState,
    op: Operator,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    op.require_admin("revoking a token")?;
    app.audited(&op, "token.revoke", &id, json!({}), async {
        if app.store.revoke_token(&id).await? {
            Ok(Json(json!({"id": id, "revoked": true})))
        } else {
            Err(CloudError::NotFound(format!("no active token `{id}`")))
        }
    })
    .await
}
