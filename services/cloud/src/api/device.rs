//! Devices' routes: registration (`POST /device/v1/provision`, with the fleet provisioning key or a one-time
//! device token), the link (`GET /device/v1/link`, a WebSocket), and blob downloads (`GET /device/v1/blobs/<sha>`,
//! resumable with `Range`). The link and downloads need the device's client certificate: verified against the
//! fleet CA by TLS, then looked up here, so a revoked device's certificate stops working at once.

use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use baetyl_agent::crypto;
use baetyl_agent::proto::{
    BLOB_PATH, Down, LINK_PATH, PROVISION_PATH, ProvisionRequest, ProvisionResponse, Report,
    Signed, Up, valid_name,
};
use tokio::sync::{Notify, mpsc};

use super::App;
use crate::error::{CloudError, Result};
use crate::links::Handle;
use crate::server::Peer;
use crate::store::{Device, now_ms};

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route(
            PROVISION_PATH,
            post(provision).layer(DefaultBodyLimit::max(64 * 1024)),
        )
        .route(LINK_PATH, get(link))
        .route(&format!("{BLOB_PATH}/{{sha}}"), get(blob))
}

/// The device behind the client certificate of this connection (active, not revoked).
pub async fn authenticate(app: &App, peer: &Peer) -> Result<Device> {
    let cert = peer.cert.as_ref().ok_or_else(|| {
        CloudError::Unauthorized("devices present their client certificate (register first)".into())
    })?;
    let sha = crypto::sha256_hex(cert);
    let device = app.store.device_by_cert(&sha).await?.ok_or_else(|| {
        CloudError::Forbidden("this certificate belongs to no device of the fleet".into())
    })?;
    if device.state != "active" {
        return Err(CloudError::Forbidden(format!(
            "device `{}` is {}",
            device.name, device.state
        )));
    }
    Ok(device)
}

async fn provision(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    Json(req): Json<ProvisionRequest>,
) -> Result<Json<ProvisionResponse>> {
    let csr_key = rcgen::CertificateSigningRequestParams::from_pem(&req.csr)
        .map(|c| crypto::b64(rcgen::PublicKeyData::der_bytes(&c.public_key)))
        .map_err(|e| {
            CloudError::Certificate(format!("the certificate request is not valid: {e}"))
        })?;
    // The same device asking again (its answer was lost) gets the same certificate: only the holder of the
    // device key can make a request with that key.
    let again =
        |d: &Device| d.state == "active" && d.public_key.as_deref() == Some(csr_key.as_str());
    let (device, how) = match (&req.provisioning_key, &req.token) {
        (Some(key), None) => {
            let fleet = app
                .store
                .fleet()
                .await?
                .ok_or_else(|| CloudError::Database("the fleet is not initialised".into()))?;
            if !crypto::same_secret(
                &crypto::sha256_hex(key.trim().as_bytes()),
                &fleet.provisioning_hash,
            ) {
                tracing::warn!(peer = %peer.addr, "registration with a wrong provisioning key");
                return Err(CloudError::Unauthorized(
                    "the provisioning key is not this fleet's (or it was rotated)".into(),
                ));
            }
            let name = req.name.clone().unwrap_or_default();
            if !valid_name(&name) {
                return Err(CloudError::BadRequest(format!(
                    "device name `{name}` is not valid: 1 to 64 letters, digits, `-`, `_`, `.`"
                )));
            }
            match app.store.device_by_name(&name).await? {
                Some(d) if again(&d) => return Ok(Json(answer(&app, &d))),
                Some(d) if d.state == "pending" => {
                    return Err(CloudError::Conflict(format!(
                        "device `{name}` was made by an operator and registers with its own token, not the fleet key"
                    )));
                }
                Some(d) if d.state == "revoked" => {
                    return Err(CloudError::Forbidden(format!("device `{name}` is revoked")));
                }
                Some(_) => {
                    return Err(CloudError::Conflict(format!(
                        "a device named `{name}` is registered already; each device registers once (give this one another name, or revoke the old one)"
                    )));
                }
                None => {
                    let d = new_device(name, vec![], None);
                    app.store.create_device(&d).await?;
                    (d, "provisioning key")
                }
            }
        }
        (None, Some(token)) => {
            let bad = || {
                CloudError::Unauthorized(
                    "the device token is not valid (unknown, used or mistyped)".into(),
                )
            };
            let rest = token.trim().strip_prefix("bdt_").ok_or_else(bad)?;
            let (id, secret) = rest.split_once('_').ok_or_else(bad)?;
            let d = app.store.device(id).await?.ok_or_else(bad)?;
            if again(&d) {
                return Ok(Json(answer(&app, &d)));
            }
            let ok = d.state == "pending"
                && d.token_hash.as_deref().is_some_and(|h| {
                    crypto::same_secret(&crypto::sha256_hex(secret.as_bytes()), h)
                });
            if !ok {
                tracing::warn!(peer = %peer.addr, "registration with a bad device token");
                return Err(bad());
            }
            (d, "device token")
        }
        _ => {
            return Err(CloudError::BadRequest(
                "registration needs `provisioning_key` (the fleet's) or `token` (one made for this device), one of them".into(),
            ));
        }
    };
    let (pem, sha, public) = app.pki.issue_device(&req.csr, &device.id)?;
    app.store
        .activate_device(&device.id, &public, &sha, &pem, &req.facts)
        .await?;
    app.audit(
        &format!("device {}", device.name),
        "device",
        "device.register",
        &device.id,
        serde_json::json!({"with": how, "from": peer.addr.to_string(), "facts": req.facts}),
        "ok",
    )
    .await;
    tracing::info!(device = %device.id, name = %device.name, with = how, "device registered");
    let device = app
        .store
        .device(&device.id)
        .await?
        .ok_or_else(|| CloudError::Database("the registered device vanished".into()))?;
    crate::deploy::refresh(
        &app,
        std::slice::from_ref(&device),
        false,
        "registration",
        None,
    )
    .await?;
    Ok(Json(answer(&app, &device)))
}

fn answer(app: &App, d: &Device) -> ProvisionResponse {
    ProvisionResponse {
        device: d.id.clone(),
        name: d.name.clone(),
        certificate: d.cert_pem.clone().unwrap_or_default(),
        ca: app.pki.ca_pem.clone(),
    }
}

/// A device row before registration: `token_hash` set when an operator made it with a one-time token.
pub fn new_device(name: String, tags: Vec<String>, token_hash: Option<String>) -> Device {
    Device {
        id: format!("d{}", crypto::random_token(6)),
        name,
        tags,
        state: "pending".into(),
        token_hash,
        public_key: None,
        cert_sha256: None,
        cert_pem: None,
        facts: Default::default(),
        created: now_ms(),
        provisioned: None,
        revoked: None,
        link_owner: None,
        last_seen: None,
        report: None,
        report_time: None,
        app_version: None,
        applied_revision: 0,
        update_state: None,
        update_error: None,
        cpu_percent: None,
        mem_used: None,
        mem_total: None,
    }
}

async fn link(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    ws: WebSocketUpgrade,
) -> Result<Response> {
    let device = authenticate(&app, &peer).await?;
    if app.links.count() >= app.cfg.limits.devices {
        return Err(CloudError::Conflict(
            "this cloud process holds limits.devices links already".into(),
        ));
    }
    let max = app.cfg.limits.report.0 as usize;
    // Small buffers: a link is mostly idle, and thousands of them share one process.
    Ok(ws
        .read_buffer_size(16 * 1024)
        .write_buffer_size(16 * 1024)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| async move {
            if let Err(e) = device_link(app, device, socket).await {
                tracing::debug!("link ended: {e}");
            }
        }))
}

static CONNECTIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// One device's link, until either side closes it, the device is revoked, or the cloud stops.
async fn device_link(app: Arc<App>, device: Device, mut ws: WebSocket) -> Result<()> {
    let conn = CONNECTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel::<Down>(256);
    let close = Arc::new(Notify::new());
    let handle = Handle {
        conn,
        tx,
        sent: Arc::new(AtomicI64::new(0)),
        close: close.clone(),
    };
    app.links.register(&device.id, handle.clone());
    app.store.set_link(&device.id, Some(&app.links.me)).await?;
    tracing::info!(device = %device.id, name = %device.name, "device linked");
    let result = link_loop(&app, &device, &handle, &mut ws, &mut rx, &close).await;
    if app.links.unregister(&device.id, conn) {
        app.store.clear_link(&device.id, &app.links.me).await.ok();
    }
    let _ = ws.send(Message::Close(None)).await;
    tracing::info!(device = %device.id, name = %device.name, "device unlinked");
    result
}

fn text(msg: &Down) -> Message {
    Message::text(serde_json::to_string(msg).unwrap_or_default())
}

async fn link_loop(
    app: &Arc<App>,
    device: &Device,
    handle: &Handle,
    ws: &mut WebSocket,
    rx: &mut mpsc::Receiver<Down>,
    close: &Notify,
) -> Result<()> {
    let closed = |e: axum::Error| CloudError::Device(format!("link: {e}"));
    ws.send(text(&Down::Welcome {
        device: device.id.clone(),
        name: device.name.clone(),
    }))
    .await
    .map_err(closed)?;
    // A deployment issued while this query runs is also pushed on the link's queue (`Links::push_desired`);
    // whichever of the two claims the revision first sends it, so the device gets it once.
    if let Some(row) = app.store.desired(&device.id).await?
        && handle
            .sent
            .fetch_max(row.revision, std::sync::atomic::Ordering::SeqCst)
            < row.revision
    {
        ws.send(text(&Down::Desired {
            desired: Signed {
                payload: row.payload,
                signature: row.signature,
            },
        }))
        .await
        .map_err(closed)?;
    }
    let ping = app.cfg.link.ping.get();
    let mut ticker = tokio::time::interval(ping);
    ticker.reset();
    let mut heard = tokio::time::Instant::now();
    let mut stop = app.stop.clone();
    // Reports are recorded at most once per `link.report_min_interval`; a newer one replaces a waiting one, so a
    // chatty (or hostile) device cannot take the database from the others and the newest state always lands.
    let every = app.cfg.link.report_min_interval.get();
    let mut waiting: Option<Box<Report>> = None;
    let mut next_write = tokio::time::Instant::now();
    loop {
        tokio::select! {
            msg = ws.recv() => {
                heard = tokio::time::Instant::now();
                match msg {
                    Some(Ok(Message::Text(t))) => match serde_json::from_str::<Up>(t.as_str()) {
                        Ok(Up::Report(r)) => {
                            if tokio::time::Instant::now() >= next_write {
                                record(app, device, &r).await;
                                next_write = tokio::time::Instant::now() + every;
                            } else {
                                waiting = Some(r);
                            }
                        }
                        Ok(up) => on_up(app, device, up).await,
                        Err(e) => tracing::warn!(device = %device.id, "ignoring a message that is not understood: {e}"),
                    },
                    Some(Ok(Message::Close(_))) | None => return Ok(()),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(closed(e)),
                }
            }
            _ = tokio::time::sleep_until(next_write), if waiting.is_some() => {
                if let Some(r) = waiting.take() {
                    record(app, device, &r).await;
                }
                next_write = tokio::time::Instant::now() + every;
            }
            Some(down) = rx.recv() => ws.send(text(&down)).await.map_err(closed)?,
            _ = ticker.tick() => {
                if heard.elapsed() > ping * 3 {
                    return Err(CloudError::Device(format!("device `{}` went silent", device.name)));
                }
                ws.send(Message::Ping(Vec::new().into())).await.map_err(closed)?;
            }
            _ = close.notified() => return Ok(()),
            _ = baetyl_agent::agent::stopped(&mut stop) => return Ok(()),
        }
    }
}

async fn record(app: &App, device: &Device, r: &Report) {
    let text = serde_json::to_string(r).unwrap_or_default();
    if let Err(e) = app
        .store
        .record_report(&device.id, &text, &r.summary, r.applied_revision as i64)
        .await
    {
        tracing::warn!(device = %device.id, "recording a report: {e}");
    }
    app.reports
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// One message from a device (reports go through [`record`]).
async fn on_up(app: &Arc<App>, device: &Device, msg: Up) {
    let result = match msg {
        Up::Hello {
            agent_version,
            applied_revision,
        } => {
            tracing::debug!(device = %device.id, %agent_version, applied_revision, "hello");
            Ok(())
        }
        Up::Report(r) => {
            record(app, device, &r).await;
            Ok(())
        }
        Up::Events { events } => {
            let mut result = Ok(());
            // The device's update state first: whoever sees a deployment's new step sees it there too.
            if let Some(last) = events.last() {
                let error = last.failure();
                if let Err(err) = app
                    .store
                    .set_update_state(&device.id, last.step.as_str(), error.as_deref())
                    .await
                {
                    result = Err(err);
                }
            }
            for e in events.iter().take(1000) {
                if let Err(err) = app.store.deployment_step(&device.id, e).await {
                    result = Err(err);
                }
            }
            result
        }
        up @ (Up::Result { .. } | Up::LogData { .. } | Up::LogEnd { .. }) => {
            let id = match &up {
                Up::Result { id, .. } | Up::LogData { id, .. } | Up::LogEnd { id, .. } => {
                    id.clone()
                }
                _ => String::new(),
            };
            app.links.answer(&id, up).await;
            Ok(())
        }
    };
    if let Err(e) = result {
        tracing::warn!(device = %device.id, "recording what the device said: {e}");
    }
}

/// `GET /device/v1/blobs/<sha256>`: only blobs of the device's own desired state; `Range: bytes=N-[M]`.
async fn blob(
    State(app): State<Arc<App>>,
    Extension(peer): Extension<Peer>,
    Path(sha): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    let device = authenticate(&app, &peer).await?;
    let not_found = || {
        CloudError::NotFound(format!(
            "blob {sha} is not part of this device's desired state"
        ))
    };
    if !crypto::is_sha256_hex(&sha) {
        return Err(not_found());
    }
    let desired = app.store.desired(&device.id).await?.ok_or_else(not_found)?;
    if !desired.blobs.iter().any(|b| b == &sha) {
        return Err(not_found());
    }
    let data = app.store.blob(&sha).await?.ok_or_else(not_found)?;
    let len = data.len() as u64;
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let Some(range) = range else {
        return Ok(([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response());
    };
    match parse_range(range, len) {
        Some((start, end)) => Ok((
            StatusCode::PARTIAL_CONTENT,
            [
                (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                (header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}")),
            ],
            data[start as usize..=end as usize].to_vec(),
        )
            .into_response()),
        None => Ok((
            StatusCode::RANGE_NOT_SATISFIABLE,
            [(header::CONTENT_RANGE, format!("bytes */{len}"))],
        )
            .into_response()),
    }
}

/// `bytes=N-` or `bytes=N-M` within `len`: the inclusive range.
fn parse_range(h: &str, len: u64) -> Option<(u64, u64)> {
    let spec = h.trim().strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let start: u64 = a.trim().parse().ok()?;
    let end: u64 = if b.trim().is_empty() {
        len.checked_sub(1)?
    } else {
        b.trim().parse().ok()?
    };
    (start <= end && end < len).then_some((start, end))
}

/// How long a device link may stay silent before the cloud drops it, for the dashboard's "online".
pub fn silence(app: &App) -> Duration {
    app.cfg.link.ping.get() * 3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-", 10), Some((0, 9)));
        assert_eq!(parse_range("bytes=4-", 10), Some((4, 9)));
        assert_eq!(parse_range("bytes=2-5", 10), Some((2, 5)));
        assert_eq!(parse_range("bytes=10-", 10), None);
        assert_eq!(parse_range("bytes=5-2", 10), None);
        assert_eq!(parse_range("bytes=-5", 10), None);
        assert_eq!(parse_range("items=0-", 10), None);
        assert_eq!(parse_range("bytes=0-", 0), None);
    }
}
