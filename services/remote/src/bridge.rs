//! The bridge proper: one hub connection, one connection and one on-disk buffer per remote, and four kinds of
//! tasks between them.
//!
//! - *ingest* (hub -> buffers): batches what the hub delivers, routes each message to the remotes whose rules
//!   match it (rewriting the topic), appends the batch to their buffers, syncs, and only then acknowledges the
//!   batch to the hub.
//! - *forward* (buffer -> remote, one per remote): sends buffered messages in order with a window of
//!   [`WINDOW`] in flight, moves the buffer's start as the remote acknowledges them, and after a lost connection
//!   starts again from the first unacknowledged one.
//! - *uplink* (remote -> hub, one per remote): publishes what the remote delivers to the hub and acknowledges
//!   it to the remote only after the hub acknowledged every copy; after a lost hub connection it resends what
//!   is still unacknowledged, in order.
//! - *report*: stats to the master every `report_interval` when started by it.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use baetyl_sdk::mqtt::Qos;
use rumqttc::QoS;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::BridgeConfig;
use crate::error::RemoteError;
use crate::link::{Incoming, Link};
use crate::store::{Limits, Record, Store};
use crate::topic::{self, Rewrite};

/// Messages a forwarder or an uplink keeps in flight.
pub const WINDOW: usize = 100;
/// Most messages acknowledged to the hub per disk sync.
const BATCH: usize = 512;
const RETRY: Duration = Duration::from_millis(500);
const DROP_LOG_EVERY: Duration = Duration::from_secs(5);

struct HubRoute {
    filter: String,
    remote: usize,
    rewrite: Rewrite,
}

struct RemoteRoute {
    filter: String,
    rewrite: Rewrite,
}

struct RemoteState {
    name: String,
    link: Link,
    store: Arc<Store>,
    /// Messages the remote acknowledged (hub -> remote).
    sent: AtomicU64,
    /// Messages from the remote the hub acknowledged (remote -> hub).
    received: AtomicU64,
}

struct Shared {
    hub: Link,
    /// Messages from the hub stored in at least one buffer.
    hub_received: AtomicU64,
    /// Messages whose rewritten topic would be empty (acknowledged and skipped).
    rewrite_skipped: AtomicU64,
    remotes: Vec<RemoteState>,
}

impl Shared {
    fn stats(&self) -> Value {
        let mut remotes = serde_json::Map::new();
        for r in &self.remotes {
            let s = r.store.stats();
            remotes.insert(
                r.name.clone(),
                json!({
                    "connected": r.link.is_connected(),
                    "buffered": s.buffered,
                    "buffered_bytes": s.buffered_bytes,
                    "dropped": s.dropped,
                    "corrupt": s.corrupt,
                    "sent": r.sent.load(Ordering::Relaxed),
                    "received": r.received.load(Ordering::Relaxed),
                }),
            );
        }
        json!({
            "hub": {
                "connected": self.hub.is_connected(),
                "received": self.hub_received.load(Ordering::Relaxed),
                "rewrite_skipped": self.rewrite_skipped.load(Ordering::Relaxed),
            },
            "remotes": remotes,
        })
    }
}

/// A running bridge.
pub struct Bridge {
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

fn dedup_subscriptions(subs: impl Iterator<Item = (String, Qos)>) -> Vec<(String, QoS)> {
    let mut m: BTreeMap<String, Qos> = BTreeMap::new();
    for (t, q) in subs {
        let e = m.entry(t).or_insert(q);
        *e = (*e).max(q);
    }
    m.into_iter().map(|(t, q)| (t, q.into())).collect()
}

/// The QoS a buffered record keeps: what it arrived with, at most 1 (the bridge's subscriptions ask no more).
fn record_qos(q: QoS) -> u8 {
    Qos::from(q).min(Qos::AtLeastOnce).into()
}

/// The QoS a buffered record is sent with; anything but 0 is 1, as written by [`record_qos`].
fn sent_qos(stored: u8) -> QoS {
    if stored == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

impl Bridge {
    /// Opens the buffers and starts every connection and task. Fails on a config that cannot be used
    /// (TLS files, buffer directory); an unreachable broker is not an error: the bridge keeps trying.
    pub async fn start(cfg: &BridgeConfig) -> Result<Bridge, RemoteError> {
        let hub_ep = cfg.hub_endpoint()?;
        for w in cfg.loop_warnings() {
            tracing::warn!("{w}");
        }
        let remote_eps = cfg.remote_endpoints()?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let limits = Limits {
            max_messages: cfg.buffer.max_messages,
            max_bytes: cfg.buffer.max_size.0,
            fsync: cfg.buffer.fsync,
            segment_bytes: crate::store::SEGMENT_BYTES,
        };

        let mut hub_routes = Vec::new();
        let mut remote_routes: Vec<Vec<RemoteRoute>> =
            cfg.remotes.iter().map(|_| Vec::new()).collect();
        for rule in &cfg.rules {
            let Some(idx) = cfg.remotes.iter().position(|r| r.name == rule.remote.name) else {
                continue;
            };
            for s in &rule.hub.subscriptions {
                hub_routes.push(HubRoute {
                    filter: s.topic.clone(),
                    remote: idx,
                    rewrite: rule.hub.rewrite.clone(),
                });
            }
            for s in &rule.remote.subscriptions {
                remote_routes[idx].push(RemoteRoute {
                    filter: s.topic.clone(),
                    rewrite: rule.remote.rewrite.clone(),
                });
            }
        }

        let mut tasks = Vec::new();
        let mut stores = Vec::new();
        for r in &cfg.remotes {
            let dir = cfg.buffer.dir.join(&r.name);
            let store = tokio::task::spawn_blocking(move || Store::open(&dir, limits))
                .await
                .map_err(RemoteError::Task)?
                .map_err(|source| RemoteError::Store {
                    remote: r.name.clone(),
                    source,
                })?;
            let st = store.stats();
            if st.buffered > 0 || st.dropped > 0 {
                tracing::info!(remote = %r.name, buffered = st.buffered, dropped_so_far = st.dropped, "buffer opened with messages waiting");
            }
            stores.push(Arc::new(store));
        }

        let hub_subs = dedup_subscriptions(
            cfg.rules
                .iter()
                .flat_map(|r| r.hub.subscriptions.iter().map(|s| (s.topic.clone(), s.qos))),
        );
        let (hub_tx, hub_rx) = mpsc::channel(1024);
        let (hub, h) = Link::start(&hub_ep, hub_subs, Some(hub_tx), shutdown_rx.clone());
        tasks.push(h);

        let mut remotes = Vec::new();
        let mut uplink_inputs = Vec::new();
        for ((r, ep), store) in cfg.remotes.iter().zip(&remote_eps).zip(&stores) {
            let subs = dedup_subscriptions(
                cfg.rules
                    .iter()
                    .filter(|x| x.remote.name == r.name)
                    .flat_map(|x| {
                        x.remote
                            .subscriptions
                            .iter()
                            .map(|s| (s.topic.clone(), s.qos))
                    }),
            );
            let (tx, rx) = mpsc::channel(1024);
            let (link, h) = Link::start(ep, subs, Some(tx), shutdown_rx.clone());
            tasks.push(h);
            uplink_inputs.push(rx);
            remotes.push(RemoteState {
                name: r.name.clone(),
                link,
                store: store.clone(),
                sent: AtomicU64::new(0),
                received: AtomicU64::new(0),
            });
        }
        let shared = Arc::new(Shared {
            hub,
            hub_received: AtomicU64::new(0),
            rewrite_skipped: AtomicU64::new(0),
            remotes,
        });

        tasks.push(tokio::spawn(ingest(
            shared.clone(),
            Arc::new(hub_routes),
            hub_rx,
            shutdown_rx.clone(),
        )));
        for (idx, (routes, rx)) in remote_routes.into_iter().zip(uplink_inputs).enumerate() {
            tasks.push(tokio::spawn(forward(
                shared.clone(),
                idx,
                shutdown_rx.clone(),
            )));
            tasks.push(tokio::spawn(uplink(
                shared.clone(),
                idx,
                routes,
                rx,
                shutdown_rx.clone(),
            )));
        }
        if std::env::var(baetyl_sdk::env::SERVICE_NAME).is_ok() {
            tasks.push(tokio::spawn(report(
                shared.clone(),
                cfg.report_interval.get(),
                shutdown_rx.clone(),
            )));
        }
        tracing::info!(
            remotes = cfg.remotes.len(),
            rules = cfg.rules.len(),
            buffer = %cfg.buffer.dir.display(),
            "bridge started"
        );
        Ok(Bridge {
            shared,
            shutdown: shutdown_tx,
            tasks,
        })
    }

    /// Current figures: per remote `connected`, `buffered`, `buffered_bytes`, `dropped`, `corrupt`, `sent`,
    /// `received`;
    /// for the hub `connected`, `received`, `rewrite_skipped`.
    pub fn stats(&self) -> Value {
        self.shared.stats()
    }

    /// Stops every task and closes the connections (DISCONNECT), keeping the buffers on disk.
    pub async fn stop(self) {
        self.shutdown.send_replace(true);
        for t in self.tasks {
            if let Err(e) = t.await
                && e.is_panic()
            {
                tracing::error!("a bridge task panicked: {e}");
            }
        }
        tracing::info!("bridge stopped");
    }
}

/// Runs the bridge until `shutdown` completes.
pub async fn run(cfg: BridgeConfig, shutdown: impl Future<Output = ()>) -> Result<(), RemoteError> {
    let bridge = Bridge::start(&cfg).await?;
    shutdown.await;
    bridge.stop().await;
    Ok(())
}

async fn ingest(
    shared: Arc<Shared>,
    routes: Arc<Vec<HubRoute>>,
    mut rx: mpsc::Receiver<Incoming>,
    mut shutdown: watch::Receiver<bool>,
) {
    let n = shared.remotes.len();
    let mut last_drop_log: Vec<Option<Instant>> = vec![None; n];
    let mut unlogged_drops: Vec<u64> = vec![0; n];
    loop {
        let first = tokio::select! {
            m = rx.recv() => match m { Some(m) => m, None => return },
            _ = shutdown.changed() => return,
        };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let mut per_remote: Vec<Vec<Record>> = vec![Vec::new(); n];
        for m in &batch {
            let mut targets: Vec<(usize, String)> = Vec::new();
            for r in routes
                .iter()
                .filter(|r| topic::matches(&r.filter, &m.topic))
            {
                match r.rewrite.apply(&m.topic) {
                    Some(t) => {
                        if !targets.iter().any(|(i, x)| *i == r.remote && *x == t) {
                            targets.push((r.remote, t));
                        }
                    }
                    None => {
                        shared.rewrite_skipped.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(topic = %m.topic, "rewrite leaves an empty or over-long topic: message skipped");
                    }
                }
            }
            for (i, t) in targets {
                per_remote[i].push(Record {
                    topic: t,
                    qos: record_qos(m.qos),
                    payload: m.payload.clone(),
                });
            }
        }
        let mut pending: Vec<(usize, Vec<Record>)> = per_remote
            .into_iter()
            .enumerate()
            .filter(|(_, v)| !v.is_empty())
            .collect();
        while !pending.is_empty() {
            let stores: Vec<Arc<Store>> = shared.remotes.iter().map(|r| r.store.clone()).collect();
            let job = tokio::task::spawn_blocking(move || {
                let results: Vec<_> = pending
                    .iter()
                    .map(|(i, recs)| stores[*i].append(recs))
                    .collect();
                (pending, results)
            });
            let (done, results) = match job.await {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!("buffer write task failed: {e}");
                    return;
                }
            };
            let mut retry = Vec::new();
            for ((i, recs), res) in done.into_iter().zip(results) {
                let name = &shared.remotes[i].name;
                match res {
                    Ok(0) => {}
                    Ok(dropped) => {
                        unlogged_drops[i] += dropped;
                        if last_drop_log[i].is_none_or(|t| t.elapsed() >= DROP_LOG_EVERY) {
                            let total = shared.remotes[i].store.stats().dropped;
                            tracing::warn!(remote = %name, dropped = unlogged_drops[i], dropped_total = total,
                                "buffer full: the oldest messages were dropped");
                            unlogged_drops[i] = 0;
                            last_drop_log[i] = Some(Instant::now());
                        }
                    }
                    Err(e) => {
                        tracing::error!(remote = %name, "cannot buffer {} message(s), retrying: {e}", recs.len());
                        retry.push((i, recs));
                    }
                }
            }
            pending = retry;
            if !pending.is_empty() {
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => {}
                    // Not acknowledged: the hub redelivers them to the next session.
                    _ = shutdown.changed() => return,
                }
            }
        }
        for m in &batch {
            shared.hub.ack(m);
        }
        shared
            .hub_received
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
    }
}

async fn forward(shared: Arc<Shared>, idx: usize, mut shutdown: watch::Receiver<bool>) {
    let remote = &shared.remotes[idx];
    'connection: loop {
        tokio::select! {
            up = remote.link.wait_connected() => if !up { return },
            _ = shutdown.changed() => return,
        }
        let mut next = 0u64;
        let mut inflight: VecDeque<(u64, oneshot::Receiver<()>)> = VecDeque::new();
        loop {
            while inflight.len() < WINDOW {
                match remote.store.read_from(next) {
                    Ok(Some((seq, rec))) => {
                        match remote
                            .link
                            .publish(&rec.topic, sent_qos(rec.qos), rec.payload)
                        {
                            Ok(rx) => {
                                inflight.push_back((seq, rx));
                                next = seq + 1;
                            }
                            Err(_) => {
                                pause(&mut shutdown).await;
                                continue 'connection;
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!(remote = %remote.name, "cannot read the buffer: {e}");
                        pause(&mut shutdown).await;
                        continue 'connection;
                    }
                }
            }
            let room = inflight.len() < WINDOW;
            let waiting = !inflight.is_empty();
            tokio::select! {
                r = async {
                    match inflight.front_mut() {
                        Some((_, rx)) => rx.await.is_ok(),
                        None => std::future::pending().await,
                    }
                }, if waiting => {
                    let Some((seq, _)) = inflight.pop_front() else { continue };
                    if !r {
                        // Lost with the connection: everything from the buffer's start is sent again.
                        continue 'connection;
                    }
                    remote.sent.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = remote.store.ack(seq) {
                        tracing::error!(remote = %remote.name, "cannot record a delivery: {e}");
                    }
                }
                _ = remote.store.appended.notified(), if room => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

async fn pause(shutdown: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        _ = shutdown.changed() => {}
    }
}

struct Pending {
    msg: Incoming,
    topics: Vec<String>,
    acks: VecDeque<oneshot::Receiver<()>>,
}

impl Pending {
    fn send(&mut self, hub: &Link) -> bool {
        self.acks.clear();
        for t in &self.topics {
            match hub.publish(t, self.msg.qos, self.msg.payload.clone()) {
                Ok(rx) => self.acks.push_back(rx),
                Err(_) => return false,
            }
        }
        true
    }
}

async fn uplink(
    shared: Arc<Shared>,
    idx: usize,
    routes: Vec<RemoteRoute>,
    mut rx: mpsc::Receiver<Incoming>,
    mut shutdown: watch::Receiver<bool>,
) {
    let remote = &shared.remotes[idx];
    let hub = &shared.hub;
    let mut queue: VecDeque<Pending> = VecDeque::new();
    let mut broken = false;
    loop {
        if *shutdown.borrow() {
            return;
        }
        if broken {
            tokio::select! {
                up = hub.wait_connected() => if !up { return },
                _ = shutdown.changed() => return,
            }
            broken = !queue.iter_mut().all(|p| p.send(hub));
            if broken {
                pause(&mut shutdown).await;
                continue;
            }
        }
        let room = queue.len() < WINDOW;
        let waiting = !queue.is_empty();
        tokio::select! {
            m = rx.recv(), if room => {
                let Some(msg) = m else { return };
                let mut topics: Vec<String> = Vec::new();
                for r in routes.iter().filter(|r| topic::matches(&r.filter, &msg.topic)) {
                    match r.rewrite.apply(&msg.topic) {
                        Some(t) if !topics.contains(&t) => topics.push(t),
                        Some(_) => {}
                        None => {
                            shared.rewrite_skipped.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(remote = %remote.name, topic = %msg.topic, "rewrite leaves an empty or over-long topic: message skipped");
                        }
                    }
                }
                let mut p = Pending { msg, topics, acks: VecDeque::new() };
                if !broken && !p.send(hub) {
                    broken = true;
                }
                queue.push_back(p);
            }
            ok = async {
                let Some(front) = queue.front_mut() else { return std::future::pending().await };
                while let Some(ack) = front.acks.front_mut() {
                    if ack.await.is_err() {
                        return false;
                    }
                    front.acks.pop_front();
                }
                true
            }, if waiting && !broken => {
                if ok {
                    if let Some(p) = queue.pop_front() {
                        remote.link.ack(&p.msg);
                        remote.received.fetch_add(1, Ordering::Relaxed);
                    }
                } else {
                    broken = true;
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

async fn report(shared: Arc<Shared>, every: Duration, mut shutdown: watch::Receiver<bool>) {
    let stats = || std::future::ready(shared.stats());
    baetyl_sdk::client::report_periodically(every, stats, async move {
        let _ = shutdown.changed().await;
    })
    .await;
}
