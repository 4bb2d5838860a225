//! The broker: rmqtt embedded in-process, configured from [`HubConfig`] and nothing else.
//!
//! Engine plugins: `rmqtt-session-storage` (persistent sessions and their queued QoS 1/2 messages, sled under
//! `storage.dir/session`), `rmqtt-retainer` (retained messages, sled under `storage.dir/retain`) and
//! `rmqtt-sys-topic` (`$SYS`). `rmqtt-message-storage` is deliberately absent: it replays old messages to
//! new subscribers. Authentication and ACL are ours ([`crate::auth`]); the engine's ACL plugin is not used, so
//! no engine component holds or logs passwords.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rmqtt::codec::v5::PublishProperties;
use rmqtt::context::ServerContext;
use rmqtt::hook::{Register, Type};
use rmqtt::net::Builder;
use rmqtt::server::MqttServer;
use rmqtt::session::SessionState;
use rmqtt::types::{
    ClientId, CodecPublish, From as MsgFrom, Id, ListenerId, Publish, QoS, TopicName, UserName,
};
use rmqtt::utils::timestamp_millis;
use tokio::task::JoinHandle;

use crate::auth::{Access, Counters, HubHandler};
use crate::config::{HubConfig, ListenKind, ListenSpec};
use crate::error::HubError;
use crate::limits::{PrincipalConnections, RetainedBudget};
use crate::persistence::{self, Persistence};
use crate::routing::Router;

const PLUGIN_SESSION: &str = "rmqtt-session-storage";
const PLUGIN_RETAIN: &str = "rmqtt-retainer";
const PLUGIN_SYS: &str = "rmqtt-sys-topic";
/// The name under which rmqtt-session-storage looks up its offline-message save queue.
const OFFLINE_SAVE_QUEUE: &str = "SESSION_STORAGE_OFFLINE_EXEC";

/// sled flushes every 500 ms; waiting a little longer on shutdown lets the last writes reach the disk.
const FLUSH_GRACE: Duration = Duration::from_millis(1200);
/// How often statistics are reported to the master.
const REPORT_INTERVAL: Duration = Duration::from_secs(20);

pub(crate) fn qos_u8(q: QoS) -> u8 {
    match q {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    }
}

fn qos_from_u8(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// The hub itself as a message's sender (routing rules, `$SYS`).
fn hub_sender(scx: &ServerContext, name: &'static str) -> MsgFrom {
    MsgFrom::from_system(Id::new(
        scx.node.id(),
        0,
        None,
        None,
        ClientId::from_static(name),
        Some(UserName::from_static("baetyl-hub")),
    ))
}

/// Publishes the hub's statistics (its counters, limits and persistence) on `$SYS/brokers/<node>/baetyl/hub`,
/// QoS 0, not retained.
async fn publish_sys(scx: &ServerContext, counters: &Counters, gauges: &Gauges) {
    let stats = stats_json(scx, counters, gauges).await;
    let body =
        serde_json::json!({ "hub": stats["hub"], "persistence": stats["hub"]["persistence"] });
    let p = CodecPublish {
        dup: false,
        retain: false,
        qos: QoS::AtMostOnce,
        topic: TopicName::from(format!("$SYS/brokers/{}/baetyl/hub", scx.node.id())),
        packet_id: None,
        payload: body.to_string().into(),
        properties: Some(PublishProperties::default()),
    };
    let p: Publish = p.into();
    let p = p.create_time(timestamp_millis());
    if let Err(e) =
        SessionState::forwards(scx, hub_sender(scx, "baetyl-hub-sys"), p, false, None).await
    {
        tracing::debug!("cannot publish the hub's $SYS statistics: {e:#}");
    }
}

/// Publishes copies of `original` on each routed (topic, qos), as the hub itself.
pub(crate) async fn republish(
    scx: ServerContext,
    routes: Vec<(String, u8)>,
    original: Publish,
    expiry: Duration,
) {
    for (topic, qos) in routes {
        let from = hub_sender(&scx, "baetyl-hub-route");
        let p = CodecPublish {
            dup: false,
            retain: false,
            qos: qos_from_u8(qos),
            topic: TopicName::from(topic.clone()),
            packet_id: None,
            payload: original.payload.clone(),
            properties: Some(PublishProperties::default()),
        };
        let p: Publish = p.into();
        let p = p.create_time(timestamp_millis());
        if let Err(e) = SessionState::forwards(&scx, from, p, false, Some(expiry)).await {
            tracing::warn!(topic, "routing rule could not republish: {e:#}");
        }
    }
}

/// TOML basic-string quoting for values we put in the engine's plugin config.
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn sled_config(dir: &Path) -> String {
    format!(
        "storage.type = \"sled\"\nstorage.sled.path = {}\nstorage.sled.cache_capacity = \"64M\"\n",
        toml_str(&dir.to_string_lossy())
    )
}

/// Refuses `rmqtt_plugin_*` variables: the engine would let them override the plugin config we set.
fn check_env() -> Result<(), HubError> {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.to_ascii_lowercase().starts_with("rmqtt_plugin_") {
            return Err(HubError::EnvOverride(k.into_owned()));
        }
    }
    Ok(())
}

fn listener_builder(spec: &ListenSpec, cfg: &HubConfig) -> Builder {
    let max = cfg.message.length.max.0;
    let limits = &cfg.limits;
    // 0 = the client chooses; otherwise MQTT 5 clients are told the cap (Server Keep Alive), 3.1.1 clients
    // asking for more are refused.
    let keep_alive = u16::try_from(limits.keep_alive.get().as_secs()).unwrap_or(u16::MAX);
    // The packet also carries the topic (up to 64 KiB) and MQTT 5 properties; the payload limit itself is
    // enforced exactly in the publish check.
    let packet = u32::try_from(max.saturating_add(128 * 1024))
        .unwrap_or(u32::MAX)
        .min(268_435_455);
    let mut b = Builder::new()
        .name(spec.url.clone())
        .laddr(spec.addr)
        // TCP_NODELAY: the engine's session loop coalesces its writes itself (vendor/rmqtt patch 22: packets
        // produced back to back leave in one write, flushed when the loop has nothing else ready), so Nagle's
        // algorithm has nothing left to batch and only delayed lone packets: a QoS 1 round trip (PUBACK, then
        // the delivery) waited for the client's delayed ACK, ~40 ms (README, "Latency").
        .nodelay(true)
        .reuseaddr(Some(true))
        .allow_anonymous(false)
        .max_packet_size(packet)
        // MQTT's own limit; `client_id: v1` narrows it in our authentication hook.
        .max_clientid_len(65_535)
        // From accept to CONNECT on every listener (the engine times the TLS and WebSocket handshakes and the
        // first bytes of a plain TCP connection with it).
        .handshake_timeout(limits.connect_timeout.get())
        .max_inflight(
            std::num::NonZeroU16::new(limits.inflight).unwrap_or(std::num::NonZeroU16::MIN),
        )
        .max_topic_aliases(limits.topic_aliases)
        .max_keepalive(if keep_alive == 0 {
            u16::MAX
        } else {
            keep_alive
        })
        .allow_zero_keepalive(keep_alive == 0)
        .max_mqueue_len(limits.queued)
        .session_expiry_interval(limits.session_expiry.get())
        .max_session_expiry_interval(limits.session_expiry.get())
        .message_expiry_interval(limits.message_expiry.get())
        // A client id's session belongs to the principal that created it: another principal's CONNECT with it
        // is refused, never takes it over (checked under the client id's lock).
        .session_owner_check(true);
    if spec.kind.is_tls()
        && let Some(cert) = &cfg.certificate
    {
        b = b
            .tls_cert(Some(cert.cert.to_string_lossy().into_owned()))
            .tls_key(Some(cert.key.to_string_lossy().into_owned()));
        if let Some(ca) = &cert.ca {
            // Two-way TLS: the verified certificate's CN becomes the username, and the certificate is handed to
            // our authentication hook as proof.
            b = b
                .tls_cross_certificate(true)
                .tls_client_ca_certs(Some(ca.to_string_lossy().into_owned()))
                .cert_cn_as_username(true)
                .collect_cert_info(true);
        }
    }
    b
}

fn bind(spec: &ListenSpec, cfg: &HubConfig) -> Result<rmqtt::net::Listener, HubError> {
    let err = |e: rmqtt::Error| HubError::Listener {
        url: spec.url.clone(),
        addr: spec.addr,
        message: format!("{e:#}"),
    };
    // The engine's TLS errors do not name the file; check the files first so that the message does.
    if spec.kind.is_tls()
        && let Some(cert) = &cfg.certificate
    {
        let files = [
            ("certificate.cert", Some(&cert.cert)),
            ("certificate.key", Some(&cert.key)),
            ("certificate.ca", cert.ca.as_ref()),
        ];
        for (key, path) in files {
            if let Some(path) = path
                && let Err(e) = std::fs::File::open(path)
            {
                return Err(HubError::Listener {
                    url: spec.url.clone(),
                    addr: spec.addr,
                    message: format!("key `{key}`: cannot read {}: {e}", path.display()),
                });
            }
        }
    }
    let l = listener_builder(spec, cfg).bind().map_err(err)?;
    match spec.kind {
        ListenKind::Tcp => l.tcp(),
        ListenKind::Ssl => l.tls(),
        ListenKind::Ws => l.ws(),
        ListenKind::Wss => l.wss(),
    }
    .map_err(err)
}

/// A started hub: its bound addresses, its statistics, and the means to stop it.
pub struct RunningHub {
    addrs: Vec<(ListenSpec, SocketAddr)>,
    scx: ServerContext,
    counters: Arc<Counters>,
    gauges: Arc<Gauges>,
    server: JoinHandle<Result<(), String>>,
    reporter: Option<JoinHandle<()>>,
    /// Watches persistence and publishes the hub's statistics on `$SYS`.
    sys: JoinHandle<()>,
    _hooks: Box<dyn Register>,
}

impl RunningHub {
    /// Each listener's config entry and the address it is bound to (the real port when the config said 0).
    pub fn local_addrs(&self) -> &[(ListenSpec, SocketAddr)] {
        &self.addrs
    }

    /// The address of the first listener of `kind`.
    pub fn local_addr(&self, kind: ListenKind) -> Option<SocketAddr> {
        self.addrs
            .iter()
            .find(|(s, _)| s.kind == kind)
            .map(|(_, a)| *a)
    }

    /// Statistics: the hub's own counters plus the engine's.
    pub async fn stats(&self) -> serde_json::Value {
        stats_json(&self.scx, &self.counters, &self.gauges).await
    }

    /// Waits for `shutdown`, then stops. Ends early with an error when the engine stops by itself.
    pub async fn serve<F: Future<Output = ()>>(mut self, shutdown: F) -> Result<(), HubError> {
        let result = tokio::select! {
            _ = shutdown => Ok(()),
            r = &mut self.server => Err(HubError::Engine(match r {
                Ok(Ok(())) => "the listeners stopped".to_string(),
                Ok(Err(e)) => e,
                Err(e) => e.to_string(),
            })),
        };
        self.stop().await;
        result
    }

    /// Stops accepting connections and gives the stores time to flush.
    pub async fn stop(self) {
        self.server.abort();
        self.sys.abort();
        if let Some(r) = &self.reporter {
            r.abort();
        }
        tracing::info!("hub stopping");
        tokio::time::sleep(FLUSH_GRACE).await;
    }
}

/// What the hub reports besides its counters: limits in force and their use, persistence.
pub(crate) struct Gauges {
    server: MqttServer,
    retained: Arc<RetainedBudget>,
    persistence: Arc<Persistence>,
    max_connections: usize,
    nofile: (u64, u64),
}

async fn stats_json(scx: &ServerContext, counters: &Counters, g: &Gauges) -> serde_json::Value {
    let engine = scx.stats.clone(scx).await.to_json(scx).await;
    let mut hub = counters.to_json();
    let (retained, retained_bytes) = g.retained.usage();
    if let Some(h) = hub.as_object_mut() {
        h.insert(
            "connections_refused".into(),
            g.server.refused_connections().into(),
        );
        h.insert("retained_messages".into(), retained.into());
        h.insert("retained_bytes".into(), retained_bytes.into());
        h.insert("max_connections".into(), g.max_connections.into());
        h.insert("nofile_limit".into(), g.nofile.0.into());
        h.insert("persistence".into(), g.persistence.to_json());
    }
    serde_json::json!({
        "hub": hub,
        "connections": scx.connections.count(),
        "sessions": scx.sessions.count(),
        "engine": engine,
    })
}

/// Starts the hub: storage, engine plugins, our hooks, then every listener. Any failure is returned before a
/// single connection is accepted.
///
/// Runs on the caller's tokio runtime. The engine's sled stores keep blocking tasks alive for good, so a plain
/// drop of that runtime never returns: end it with `Runtime::shutdown_timeout` or `shutdown_background`
/// (as [`crate::run_cli`] does).
pub async fn start(cfg: &HubConfig) -> Result<RunningHub, HubError> {
    check_env()?;
    // rmqtt's TLS is built on rustls with aws-lc-rs; make it the process default too so that no other rustls
    // user in the process has to guess.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();

    let specs = &cfg.listen;
    // Every connection is a descriptor: raise the soft limit to the hard one and keep the connection cap below
    // it, so that clients can never make the hub unable to open its own files.
    let nofile = crate::limits::raise_nofile_limit().unwrap_or_else(|e| {
        tracing::warn!("cannot read the open-file limit: {e}");
        (1024, 1024)
    });
    let max_connections = crate::limits::connection_cap(cfg.limits.connections, nofile.0);
    if max_connections < cfg.limits.connections {
        tracing::warn!(
            configured = cfg.limits.connections,
            nofile = nofile.0,
            "limits.connections lowered to {max_connections} to stay below the open-file limit"
        );
    }
    // A disk that cannot hold the stores (full, read-only, missing) must not keep the hub from serving: the
    // stores then run in memory, and the hub says so (log, statistics, `$SYS`).
    let dir = &cfg.storage.dir;
    let (scx, persistence) = match persistence::probe(dir) {
        Ok(()) => match engine(cfg, true).await {
            Ok(scx) => (scx, Persistence::new(dir, true, None)),
            Err(e) => (
                engine(cfg, false).await?,
                Persistence::new(dir, false, Some(e.to_string())),
            ),
        },
        Err(e) => {
            let reason = format!("{}: {e}", dir.display());
            (
                engine(cfg, false).await?,
                Persistence::new(dir, false, Some(reason)),
            )
        }
    };
    let persistence = Arc::new(persistence);

    *scx.extends.shared_subscription_mut().await = Box::new(crate::shared::RoundRobin::default());

    let counters = Arc::new(Counters::default());
    let retained = Arc::new(RetainedBudget::new(
        cfg.limits.retained.messages,
        cfg.limits.retained.bytes.0,
    ));
    load_retained(&scx, &retained).await;
    let handler = HubHandler {
        access: Arc::new(Access::new(cfg)),
        counters: counters.clone(),
        router: Arc::new(Router::new(&cfg.subscriptions)),
        connections: Arc::new(PrincipalConnections::new(
            cfg.limits.connections_per_principal,
        )),
        retained: retained.clone(),
        message_expiry: cfg.limits.message_expiry.get(),
        scx: scx.clone(),
    };
    let hooks = scx.extends.hook_mgr().register();
    for typ in [
        Type::ClientAuthenticate,
        Type::ClientConnected,
        Type::ClientDisconnected,
        Type::ClientSubscribeCheckAcl,
        Type::MessagePublishCheckAcl,
    ] {
        hooks.add(typ, Box::new(handler.clone())).await;
    }
    hooks.start().await;

    let mut server = MqttServer::new(scx.clone()).max_connections(max_connections);
    let mut addrs = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let l = bind(spec, cfg)?;
        let local = l.local_addr().map_err(|e| HubError::Listener {
            url: spec.url.clone(),
            addr: spec.addr,
            message: format!("{e:#}"),
        })?;
        tracing::info!(url = %spec.url, addr = %local, "listening");
        addrs.push((spec.clone(), local));
        let id = ListenerId::try_from(i + 1).unwrap_or(ListenerId::MAX);
        server = server.listener_by_id(l, id);
    }
    let server = server.build();
    let gauges = Arc::new(Gauges {
        server: server.clone(),
        retained,
        persistence: persistence.clone(),
        max_connections,
        nofile,
    });
    let task = tokio::spawn(async move { server.run().await.map_err(|e| format!("{e:#}")) });

    let reporter = master_reporter(scx.clone(), counters.clone(), gauges.clone());
    let sys = {
        let (scx, counters, gauges) = (scx.clone(), counters.clone(), gauges.clone());
        persistence::monitor(persistence, move || {
            let (scx, counters, gauges) = (scx.clone(), counters.clone(), gauges.clone());
            async move { publish_sys(&scx, &counters, &gauges).await }
        })
    };
    Ok(RunningHub {
        addrs,
        scx,
        counters,
        gauges,
        server: task,
        reporter,
        sys,
        _hooks: hooks,
    })
}

/// Builds the engine's context with its plugins: the stores on disk (sled under `storage.dir`) or in memory.
async fn engine(cfg: &HubConfig, on_disk: bool) -> Result<ServerContext, HubError> {
    let dir = &cfg.storage.dir;
    let retain_storage = if on_disk {
        sled_config(&dir.join("retain"))
    } else {
        "storage.type = \"ram\"\n".to_string()
    };
    let retain_cfg = format!(
        "{retain_storage}max_retained_messages = 0\nmax_payload_size = \"{}B\"\n",
        cfg.message.length.max.0
    );
    let mut builder = ServerContext::new()
        .busy_check_enable(false)
        // A QoS 1/2 message is acknowledged once it is on disk wherever it must be kept: queued for an offline
        // persistent session, or retained (vendor/rmqtt patch 23; the stores sync in groups). Messages for
        // online sessions never wait for the disk.
        .durable_acks(on_disk)
        .plugins_config_map_add(PLUGIN_RETAIN, retain_cfg)
        .plugins_config_map_add(
            PLUGIN_SYS,
            "publish_qos = 0\npublish_interval = \"1m\"\nmessage_retain_available = false\nmessage_expiry_interval = \"5m\"\n",
        );
    if on_disk {
        builder = builder.plugins_config_map_add(PLUGIN_SESSION, sled_config(&dir.join("session")));
    }
    let scx = builder.build().await;

    let plugin_err = |plugin: &'static str| {
        move |e: rmqtt::Error| {
            let message = format!("{e:#}");
            tracing::error!(plugin, "plugin failed to start: {message}");
            HubError::Plugin { plugin, message }
        }
    };
    if on_disk {
        // rmqtt-session-storage saves each offline message as a task on this named queue, by default with 8
        // concurrent workers: two saves for one session then race (the first messages of a new offline queue
        // can be lost, and order is not kept). Created here first, with one worker, the queue runs saves in
        // arrival order; its length bounds the backlog (saves beyond it are dropped and counted by the
        // engine).
        let _ = scx.get_exec((OFFLINE_SAVE_QUEUE, 1, cfg.limits.queued));
        rmqtt_plugins::session_storage::register(&scx, true, false)
            .await
            .map_err(plugin_err(PLUGIN_SESSION))?;
    }
    rmqtt_plugins::retainer::register(&scx, true, false)
        .await
        .map_err(plugin_err(PLUGIN_RETAIN))?;
    rmqtt_plugins::sys_topic::register(&scx, true, false)
        .await
        .map_err(plugin_err(PLUGIN_SYS))?;
    Ok(scx)
}

/// Counts the retained messages already in the store (from an earlier run) against the retained limits.
async fn load_retained(scx: &ServerContext, budget: &RetainedBudget) {
    let stored = scx
        .extends
        .retain()
        .await
        .get(&rmqtt::types::TopicFilter::from("#"))
        .await;
    match stored {
        Ok(all) => {
            for (topic, r) in all {
                let expiry = r
                    .publish
                    .properties
                    .as_ref()
                    .and_then(|p| p.message_expiry_interval)
                    .map(|i| {
                        let age = timestamp_millis()
                            - r.publish.create_time.unwrap_or_else(timestamp_millis);
                        Duration::from_secs(u64::from(i.get()))
                            .saturating_sub(Duration::from_millis(u64::try_from(age).unwrap_or(0)))
                    });
                budget.count_stored(&topic, r.publish.payload.len() as u64, expiry);
            }
        }
        Err(e) => tracing::warn!("cannot count the stored retained messages: {e:#}"),
    }
}

/// When started by the master, reports statistics to it periodically (they show in `inspect`).
fn master_reporter(
    scx: ServerContext,
    counters: Arc<Counters>,
    gauges: Arc<Gauges>,
) -> Option<JoinHandle<()>> {
    std::env::var(baetyl_sdk::env::SERVICE_NAME).ok()?;
    Some(tokio::spawn(async move {
        let stats = || stats_json(&scx, &counters, &gauges);
        // Stopped by aborting the task when the hub stops.
        baetyl_sdk::client::report_periodically(REPORT_INTERVAL, stats, std::future::pending())
            .await;
    }))
}

/// Runs the hub until `shutdown` completes.
pub async fn run<F: Future<Output = ()>>(cfg: HubConfig, shutdown: F) -> Result<(), HubError> {
    let hub = start(&cfg).await?;
    hub.serve(shutdown).await
}
