//! The agent's life: register once, then keep a link to the cloud (jittered exponential backoff while it is
//! unreachable), report, apply desired states one at a time (the newest wins), run operators' commands.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::config::AgentConfig;
use crate::deploy::{Deployer, EventQueue, State};
use crate::error::{AgentError, Result};
use crate::https::{Client, client_config};
use crate::identity::{self, Identity};
use crate::master::Master;
use crate::ops::Ops;
use crate::proto::{Down, LINK_PATH, Report, Signed, Summary, Up, now};

/// The largest message the cloud may send on the link (a desired state with its manifest).
const MAX_DOWN_MESSAGE: usize = 16 << 20;
/// The cloud pings every 20 s; this long without hearing anything means the link is dead.
const SILENCE: Duration = Duration::from_secs(65);

/// Jittered exponential backoff: each failure doubles the delay up to `max`; a random 50-100% of it is waited.
pub struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            failures: 0,
        }
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// The delay before the next try.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.min.saturating_mul(1u32 << self.failures.min(16));
        self.failures = self.failures.saturating_add(1);
        let full = exp.min(self.max);
        let jitter = 0.5 + f64::from(rand::random::<u32>() % 1000) / 2000.0;
        full.mul_f64(jitter)
    }

    /// The delay after a refusal that retrying soon will not fix (a revoked device).
    pub fn give_up_for_now(&mut self) -> Duration {
        self.failures = 16;
        self.max
    }
}

/// Completes when `stop` turns true (or its sender is gone). Holds no borrow of the value across awaits, so
/// the futures that wait on it stay `Send`.
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

/// Waits `d` unless shutdown comes first (then answers false).
async fn pause(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stopped(shutdown) => false,
    }
}

/// How the master names the agent's staging volume `name`: its path in the running application (relative to
/// the master's work dir, or absolute), from inspect's `volumes`.
pub fn staging_volume_path(inspect: &Value, name: &str) -> Result<String> {
    inspect["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == name)
        .and_then(|v| v["path"].as_str())
        .filter(|p| !p.is_empty())
        .map(|p| p.trim_end_matches('/').to_string())
        .ok_or_else(|| {
            AgentError::Operation(format!(
                "the running application has no volume `{name}` (master.staging_volume): the agent stages \
                 deployments in a read-write volume of its own service; add it (see the bootstrap application)"
            ))
        })
}

/// Runs the agent until `shutdown` completes.
pub async fn run(
    cfg: AgentConfig,
    master: Arc<dyn Master>,
    own_service: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let (stop_tx, mut stop) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let ca_pem = crate::files::read_limited(&cfg.cloud.ca, 1 << 20)
        .map_err(|e| AgentError::io(&cfg.cloud.ca, e))?;
    crate::files::private_dir(&cfg.state_dir).map_err(|e| AgentError::io(&cfg.state_dir, e))?;
    let mut backoff = Backoff::new(cfg.reconnect.min.get(), cfg.reconnect.max.get());

    let identity = loop {
        match identity::load(&cfg.state_dir)? {
            Some(id) => break id,
            None => match identity::register(&cfg, &ca_pem).await {
                Ok(id) => break id,
                Err(e) => {
                    tracing::warn!("cannot register with {}: {e}", cfg.cloud.url);
                    if !pause(backoff.next_delay(), &mut stop).await {
                        return Ok(());
                    }
                }
            },
        }
    };
    backoff.reset();
    let inspect = loop {
        match master.inspect().await {
            Ok(v) => break v,
            Err(e) => {
                tracing::warn!("the master does not answer yet: {e}");
                if !pause(backoff.next_delay(), &mut stop).await {
                    return Ok(());
                }
            }
        }
    };
    let workdir = match (&cfg.master.workdir, inspect["software"]["pwd"].as_str()) {
        (Some(w), _) => w.clone(),
        (None, Some(p)) if !p.is_empty() => PathBuf::from(p),
        (None, _) => {
            return Err(AgentError::Operation(
                "the master's inspect has no software.pwd; set master.workdir".into(),
            ));
        }
    };
    let staging_host = staging_volume_path(&inspect, &cfg.master.staging_volume)?;
    backoff.reset();
    let tls = client_config(
        Some(&ca_pem),
        Some((identity.cert_pem.as_bytes(), identity.key_pem.as_bytes())),
    )?;
    let cloud = Client::new(cfg.cloud.url.clone(), tls);
    let events = EventQueue::default();
    let deployer = Arc::new(Deployer {
        device: identity.device.clone(),
        name: identity.name.clone(),
        key: cfg.cloud.signing_key,
        cloud: cloud.clone(),
        state_dir: cfg.state_dir.clone(),
        staging: cfg.master.staging.clone(),
        staging_host,
        max_size: cfg.download.max_size.0,
        download_timeout: cfg.download.timeout.get(),
        update_timeout: cfg.master.update_timeout.get(),
        own_service,
        events: events.clone(),
    });
    let state = State::load(&cfg.state_dir);
    let (state_tx, state_rx) = watch::channel(state.clone());
    let (desired_tx, desired_rx) = watch::channel::<Option<Signed>>(None);
    tokio::spawn(deploy_loop(
        deployer,
        master.clone(),
        state,
        desired_rx,
        state_tx,
    ));
    let ops = Arc::new(Ops {
        master: master.clone(),
        workdir,
    });
    tracing::info!(device = %identity.device, name = %identity.name, cloud = %cfg.cloud.url, "agent started");

    let link = Link {
        cfg: &cfg,
        cloud: &cloud,
        identity: &identity,
        master,
        ops,
        events,
        state: state_rx,
        desired: desired_tx,
    };
    loop {
        let started = tokio::time::Instant::now();
        match link.session(&mut stop).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                if started.elapsed() > Duration::from_secs(30) {
                    backoff.reset();
                }
                let delay = match &e {
                    AgentError::Https(h) if h.is_refusal() => {
                        tracing::error!(
                            "the cloud refuses this device ({e}); it may have been revoked"
                        );
                        backoff.give_up_for_now()
                    }
                    _ => {
                        tracing::warn!("link to {}: {e}", cfg.cloud.url);
                        backoff.next_delay()
                    }
                };
                if !pause(delay, &mut stop).await {
                    return Ok(());
                }
            }
        }
    }
}

/// Applies desired states one after another; a newer one waits for the running one and replaces any older
/// waiting one.
async fn deploy_loop(
    deployer: Arc<Deployer>,
    master: Arc<dyn Master>,
    mut state: State,
    mut desired: watch::Receiver<Option<Signed>>,
    state_tx: watch::Sender<State>,
) {
    while desired.changed().await.is_ok() {
        let Some(signed) = desired.borrow_and_update().clone() else {
            continue;
        };
        deployer.handle(master.as_ref(), &signed, &mut state).await;
        let _ = state_tx.send(state.clone());
    }
}

struct Link<'a> {
    cfg: &'a AgentConfig,
    cloud: &'a Client,
    identity: &'a Identity,
    master: Arc<dyn Master>,
    ops: Arc<Ops>,
    events: EventQueue,
    state: watch::Receiver<State>,
    desired: watch::Sender<Option<Signed>>,
}

fn text(up: &Up) -> Message {
    Message::text(serde_json::to_string(up).unwrap_or_default())
}

impl Link<'_> {
    /// One connection, until it fails (Err) or shutdown (Ok).
    async fn session(&self, stop: &mut watch::Receiver<bool>) -> Result<()> {
        let ws = self.cloud.websocket(LINK_PATH, MAX_DOWN_MESSAGE).await?;
        let (mut sink, mut stream) = ws.split();
        let closed = |e: tokio_tungstenite::tungstenite::Error| {
            AgentError::Https(crate::error::HttpsError::Http(e.to_string()))
        };
        let mut state = self.state.clone();
        let applied = state.borrow_and_update().applied_revision;
        sink.send(text(&Up::Hello {
            agent_version: env!("CARGO_PKG_VERSION").into(),
            applied_revision: applied,
        }))
        .await
        .map_err(closed)?;
        let backlog = self.events.drain();
        if !backlog.is_empty() {
            tracing::info!(
                events = backlog.len(),
                "sending deployment steps kept while offline"
            );
            if let Err(e) = sink
                .send(text(&Up::Events {
                    events: backlog.clone(),
                }))
                .await
            {
                self.events.requeue(backlog);
                return Err(closed(e));
            }
        }
        let mut fingerprint = String::new();
        let report = self.report(&mut fingerprint).await;
        sink.send(text(&report)).await.map_err(closed)?;
        tracing::info!(cloud = %self.cfg.cloud.url, "linked");

        let (up_tx, mut up_rx) = mpsc::channel::<Up>(256);
        let mut tasks = JoinSet::new();
        let mut cancels: HashMap<String, watch::Sender<bool>> = HashMap::new();
        let mut report_tick = tokio::time::interval(self.cfg.report.interval.get());
        report_tick.reset();
        let mut watch_tick = tokio::time::interval(self.cfg.report.watch.get());
        let mut ping_tick = tokio::time::interval(Duration::from_secs(25));
        ping_tick.reset();
        let mut last_heard = tokio::time::Instant::now();
        loop {
            tokio::select! {
                msg = stream.next() => {
                    last_heard = tokio::time::Instant::now();
                    match msg {
                        Some(Ok(Message::Text(t))) => self.on_down(t.as_str(), &up_tx, &mut tasks, &mut cancels),
                        Some(Ok(Message::Close(_))) | None => return Err(AgentError::Https(crate::error::HttpsError::Http("the cloud closed the link".into()))),
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Err(closed(e)),
                    }
                }
                Some(up) = up_rx.recv() => {
                    if let Up::LogEnd { id, .. } | Up::Result { id, .. } = &up {
                        cancels.remove(id);
                    }
                    sink.send(text(&up)).await.map_err(closed)?;
                }
                _ = self.events.wait() => {
                    let batch = self.events.drain();
                    if !batch.is_empty()
                        && let Err(e) = sink.send(text(&Up::Events { events: batch.clone() })).await
                    {
                        self.events.requeue(batch);
                        return Err(closed(e));
                    }
                }
                _ = report_tick.tick() => {
                    let r = self.report(&mut fingerprint).await;
                    sink.send(text(&r)).await.map_err(closed)?;
                }
                _ = watch_tick.tick() => {
                    let before = fingerprint.clone();
                    let r = self.report(&mut fingerprint).await;
                    if fingerprint != before {
                        sink.send(text(&r)).await.map_err(closed)?;
                    }
                }
                Ok(()) = state.changed() => {
                    let r = self.report(&mut fingerprint).await;
                    sink.send(text(&r)).await.map_err(closed)?;
                }
                _ = ping_tick.tick() => {
                    if last_heard.elapsed() > SILENCE {
                        return Err(AgentError::Https(crate::error::HttpsError::Timeout("the cloud went silent".into())));
                    }
                    sink.send(Message::Ping(Vec::new().into())).await.map_err(closed)?;
                }
                _ = stopped(stop) => {
                    let _ = sink.send(Message::Close(None)).await;
                    return Ok(());
                }
            }
        }
    }

    fn on_down(
        &self,
        text: &str,
        up: &mpsc::Sender<Up>,
        tasks: &mut JoinSet<()>,
        cancels: &mut HashMap<String, watch::Sender<bool>>,
    ) {
        let msg: Down = match serde_json::from_str(text) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("ignoring a message from the cloud that is not understood: {e}");
                return;
            }
        };
        match msg {
            Down::Welcome { device, name } => {
                if device != self.identity.device {
                    tracing::error!(%device, "the cloud greeted another device; ignoring");
                } else {
                    tracing::debug!(%name, "welcomed");
                }
            }
            Down::Desired { desired } => {
                self.desired.send_replace(Some(desired));
            }
            Down::Command { id, op } => {
                let (tx, rx) = watch::channel(false);
                cancels.insert(id.clone(), tx);
                let ops = self.ops.clone();
                let out = up.clone();
                tasks.spawn(async move { ops.run(id, op, out, rx).await });
            }
            Down::Cancel { id } => {
                if let Some(tx) = cancels.remove(&id) {
                    let _ = tx.send(true);
                }
            }
        }
    }

    /// A report from a fresh inspect; `fingerprint` is updated to what changes matter (so the watch can tell).
    async fn report(&self, fingerprint: &mut String) -> Up {
        let state = self.state.borrow().clone();
        let inspect = match self.master.inspect().await {
            Ok(v) => v,
            Err(e) => {
                serde_json::json!({"error": format!("the agent cannot reach the master: {e}")})
            }
        };
        *fingerprint = changes(&inspect);
        Up::Report(Box::new(Report {
            time: now(),
            applied_revision: state.applied_revision,
            last: state.last,
            summary: summary(&inspect),
            inspect,
        }))
    }
}

/// What a watch compares: the application, the error, and each instance's status and pid.
fn changes(inspect: &Value) -> String {
    let mut s = format!(
        "{}|{}|",
        inspect["software"]["conf_version"], inspect["error"]
    );
    for svc in inspect["services"].as_array().into_iter().flatten() {
        for i in svc["instances"].as_array().into_iter().flatten() {
            s.push_str(&format!(
                "{}:{}:{}:{};",
                svc["name"], i["name"], i["status"], i["process"]["pid"]
            ));
        }
    }
    s
}

/// The overview figures from an inspect.
pub fn summary(inspect: &Value) -> Summary {
    let mut services = 0;
    let mut running = 0;
    for svc in inspect["services"].as_array().into_iter().flatten() {
        services += 1;
        let insts = svc["instances"].as_array().cloned().unwrap_or_default();
        // A service is up when its static instances run (or ended well); one with `replica: 0` has none.
        let up = if insts.is_empty() {
            svc["replica"] == 0
        } else {
            insts
                .iter()
                .filter(|i| i["dynamic"] != Value::Bool(true))
                .all(|i| i["status"] == "running" || i["status"] == "exited")
        };
        running += u32::from(up);
    }
    let hw = &inspect["hardware"];
    Summary {
        app_version: inspect["software"]["conf_version"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        services,
        running,
        cpu_percent: hw["cpu_stats"]["used_percent"].as_f64(),
        mem_used: hw["mem_stats"]["used"].as_u64(),
        mem_total: hw["mem_stats"]["total"].as_u64(),
        error: inspect["error"].as_str().unwrap_or_default().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_staging_volume_is_named_as_the_master_names_it() {
        let inspect = serde_json::json!({"volumes": [
            {"name": "agent-conf", "path": "var/db/baetyl/agent/conf", "read_only": true},
            {"name": "agent-deploy", "path": "var/db/baetyl/deploy/", "read_only": false},
            {"name": "abs", "path": "/data/stage", "read_only": false},
        ]});
        assert_eq!(
            staging_volume_path(&inspect, "agent-deploy").unwrap(),
            "var/db/baetyl/deploy"
        );
        assert_eq!(staging_volume_path(&inspect, "abs").unwrap(), "/data/stage");
        let e = staging_volume_path(&inspect, "stage")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no volume `stage`") && e.contains("master.staging_volume"),
            "{e}"
        );
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        let d: Vec<Duration> = (0..6).map(|_| b.next_delay()).collect();
        assert!(
            d[0] >= Duration::from_millis(500) && d[0] <= Duration::from_secs(1),
            "{d:?}"
        );
        assert!(
            d[2] >= Duration::from_secs(2) && d[2] <= Duration::from_secs(4),
            "{d:?}"
        );
        assert!(
            d[5] >= Duration::from_secs(4) && d[5] <= Duration::from_secs(8),
            "{d:?}"
        );
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
        assert_eq!(b.give_up_for_now(), Duration::from_secs(8));
    }

    #[test]
    fn summary_counts_services_and_reads_figures() {
        let inspect = serde_json::json!({
            "error": "",
            "software": {"conf_version": "v2"},
            "hardware": {"cpu_stats": {"used_percent": 12.5}, "mem_stats": {"used": 100, "total": 400}},
            "services": [
                {"name": "hub", "replica": 1, "instances": [{"name": "hub", "status": "running"}]},
                {"name": "sql", "replica": 0, "instances": []},
                {"name": "bad", "replica": 1, "instances": [{"name": "bad", "status": "restarting"}]},
            ]
        });
        let s = summary(&inspect);
        assert_eq!((s.services, s.running), (3, 2));
        assert_eq!(s.app_version, "v2");
        assert_eq!(s.cpu_percent, Some(12.5));
        assert_eq!(s.mem_total, Some(400));
        let mut changed = inspect.clone();
        changed["services"][0]["instances"][0]["process"] = serde_json::json!({"pid": 42});
        assert_ne!(changes(&inspect), changes(&changed));
    }
}
