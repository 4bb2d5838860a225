//! The function manager (`baetyl function`): each rule subscribes to the hub with its own client id, hands
//! every message to a pooled instance of its function over gRPC, and publishes the result.
//!
//! Delivery: inputs are acknowledged by hand, only after the output was acknowledged by the hub (or after
//! the function filtered the message out), and rule sessions are persistent, so a manager killed mid-stream
//! loses nothing: the hub redelivers what was not acknowledged.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Outgoing, Packet, Publish, QoS};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{Mutex, oneshot};

use crate::error::FunctionError;
use crate::pool::{CallError, Pool};
use crate::proto::FunctionMessage;
use crate::runtime::{FunctionServerConfig, MessageLimit};
use baetyl_sdk::ConfigError;
use baetyl_sdk::client::MasterClient;
use baetyl_sdk::config::{ByteSize, ConfigFile, HumanDuration};
use baetyl_sdk::logging::{LogFormat, LoggerConfig};
use baetyl_sdk::mqtt::{ClientOptions, Connection, Qos, TlsError};
use baetyl_sdk::service::{Kit, shutdown_signal};

/// `etc/baetyl/service.yml` of the function manager (v1 schema).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagerConfig {
    pub hub: HubConfig,
    pub rules: Vec<Rule>,
    pub functions: Vec<FunctionConfig>,
    /// The hub's message limit, which every output (results and error answers) must fit.
    #[serde(default)]
    pub message: MessageConfig,
    #[serde(default)]
    pub logger: LoggerConfig,
    /// v1's `server:`: with an `address`, the manager itself serves `baetyl.Function/Call` to other programs,
    /// each call going to the named function's pool (see [`crate::runtime::FunctionServerConfig`]).
    #[serde(default)]
    pub server: FunctionServerConfig,
}

/// `message: {length: {max: 32k}}`: the same key as the hub's, and the same default. Set it to the hub's value
/// when that one is changed: a result larger than the hub takes is answered with an `OutputTooLarge` error, and
/// an error answer's echoed input is cut to fit.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageConfig {
    #[serde(default)]
    pub length: LengthConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LengthConfig {
    #[serde(default = "default_max_length")]
    pub max: ByteSize,
}

impl Default for LengthConfig {
    fn default() -> Self {
        LengthConfig {
            max: default_max_length(),
        }
    }
}

/// The hub's default `message.length.max`.
fn default_max_length() -> ByteSize {
    ByteSize(32 * 1024)
}

/// The smallest limit accepted: an error answer (with the input's metadata and a short message) must fit.
const MIN_MAX_LENGTH: u64 = 1024;

/// The hub the rules connect to: the keys of every MQTT client connection (`baetyl_sdk::mqtt::Connection`),
/// but each rule brings its own `clientid` and keeps a persistent session.
pub type HubConfig = Connection;

/// The hub connection every rule shares (TLS built once); each rule sets its own client id.
pub fn hub_options(hub: &HubConfig) -> Result<ClientOptions, TlsError> {
    hub.client_options("hub", "", MAX_PACKET_SIZE)
}

/// The largest message a rule takes in or sends out.
const MAX_PACKET_SIZE: usize = 64 << 20;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub clientid: String,
    pub subscribe: TopicQos,
    pub function: FunctionRef,
    pub publish: TopicQos,
    #[serde(default)]
    pub retry: RetryConfig,
}

/// `retry:` of a rule: how often a failed call is made again before the error answer is published.
/// v1 had only `max` (attempts in all, default 3) and retried at once; `delay`, `factor` and `max_delay`
/// space the attempts out (the first retry waits `delay`, each next one `factor` times longer, at most
/// `max_delay`). Every failure is retried, as in v1: an error raised by the function, a timeout, an instance
/// that could not start or died; but not a message over `message.length.max`, refused the same way each time.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts in all, the first one included; 0 and 1 mean no retry.
    pub max: u32,
    pub delay: HumanDuration,
    pub factor: f64,
    pub max_delay: HumanDuration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max: 3,
            delay: HumanDuration::from_secs(0),
            factor: 2.0,
            max_delay: HumanDuration::from_secs(60),
        }
    }
}

/// The most attempts a rule may make for one message (each may take the function's `timeout`).
const MAX_ATTEMPTS: u32 = 20;

impl RetryConfig {
    /// The wait before retry number `n` (1 for the first retry).
    pub fn delay_before(&self, n: u32) -> Duration {
        let base = self.delay.get().as_secs_f64();
        let d = base * self.factor.powi(n.saturating_sub(1) as i32);
        let cap = self.max_delay.get().as_secs_f64();
        Duration::from_secs_f64(if d.is_finite() { d.min(cap) } else { cap })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicQos {
    pub topic: String,
    /// 0 or 1.
    #[serde(default)]
    pub qos: Qos,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionRef {
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionConfig {
    pub name: String,
    /// The runtime service (in application.yml, usually `replica: 0`) whose instances serve this function.
    pub service: String,
    #[serde(default)]
    pub instance: InstanceConfig,
    /// Longest time one call may take; the instance is then stopped and replaced.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// A fresh instance must prove it holds its secret before it gets anything (our SQL and Python runtimes
    /// do); `false` only for a v1 runtime we do not ship, which cannot (it still gets the secret).
    #[serde(default = "default_true")]
    pub verify_runtime: bool,
    /// v1's `message.length.max` (default 4m): the largest call or answer exchanged with an instance.
    #[serde(default)]
    pub message: MessageLimit,
    /// v1's `backoff.max` (default 1m): the longest wait between two attempts to connect to a starting
    /// instance (the wait doubles from 10ms up to it, within the start deadline).
    #[serde(default)]
    pub backoff: BackoffConfig,
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackoffConfig {
    pub max: HumanDuration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            max: HumanDuration::from_secs(60),
        }
    }
}

fn default_timeout() -> HumanDuration {
    HumanDuration::from_secs(30)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InstanceConfig {
    /// Instances kept even when idle.
    pub min: u32,
    /// Most instances at once. With 1 (and `concurrency` 1), messages are handled in order.
    pub max: u32,
    /// Calls in flight on one instance at once (default 1, as in v1: one call per instance). Our runtimes
    /// take many at once over the instance's one HTTP/2 connection; a rule then has up to `max` ×
    /// `concurrency` messages in the function at a time.
    pub concurrency: u32,
    /// Idle instances above `min` are stopped after this long.
    pub idletime: HumanDuration,
    /// v1's `evicttime`: how often idle instances are looked for. v1's default was 1m (an instance could
    /// stay up to `idletime` + 1m); unset here, they are looked for every second.
    pub evicttime: Option<HumanDuration>,
}

/// The most calls in flight on one instance (`instance.concurrency`).
const MAX_CONCURRENCY: u32 = 256;

/// How often idle instances are looked for when `evicttime` is not set.
const DEFAULT_EVICT_EVERY: Duration = Duration::from_secs(1);

impl InstanceConfig {
    pub fn evict_every(&self) -> Duration {
        self.evicttime
            .map_or(DEFAULT_EVICT_EVERY, HumanDuration::get)
    }
}

impl Default for InstanceConfig {
    fn default() -> Self {
        InstanceConfig {
            min: 0,
            max: 1,
            idletime: HumanDuration::from_secs(600),
            evicttime: None,
            concurrency: 1,
        }
    }
}

impl ConfigFile for ManagerConfig {
    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let cfg = self;
        let bad = |m: String| ConfigError::invalid(path, m);
        cfg.hub.check(path, "hub")?;
        if cfg.hub.clientid.is_some() {
            return Err(bad(
                "key `hub.clientid`: each rule connects with its own `clientid`; remove it here"
                    .into(),
            ));
        }
        if cfg.hub.clean_session {
            return Err(bad(
                "key `hub.clean_session`: rules keep persistent sessions, so that the hub redelivers what a \
                 stopped manager had not finished; remove it"
                    .into(),
            ));
        }
        let max = cfg.message.length.max.0;
        if !(MIN_MAX_LENGTH..=MAX_PACKET_SIZE as u64).contains(&max) {
            return Err(bad(format!(
                "key `message.length.max`: {} is out of range; use the hub's limit, between 1k and 64m (default 32k)",
                cfg.message.length.max
            )));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, f) in cfg.functions.iter().enumerate() {
            if !names.insert(f.name.as_str()) {
                return Err(bad(format!(
                    "key `functions[{i}]`: function `{}` is defined twice",
                    f.name
                )));
            }
            if f.instance.max == 0 || f.instance.min > f.instance.max {
                return Err(bad(format!(
                    "key `functions[{i}].instance`: need max >= 1 and min <= max (got min {}, max {})",
                    f.instance.min, f.instance.max
                )));
            }
            if f.instance.max > 100 {
                return Err(bad(format!(
                    "key `functions[{i}].instance.max`: at most 100 instances (got {}), as in v1",
                    f.instance.max
                )));
            }
            if !(1..=MAX_CONCURRENCY).contains(&f.instance.concurrency) {
                return Err(bad(format!(
                    "key `functions[{i}].instance.concurrency`: calls in flight per instance, between 1 and {MAX_CONCURRENCY} (got {}; default 1)",
                    f.instance.concurrency
                )));
            }
            if f.instance
                .evicttime
                .is_some_and(|e| e.get() < Duration::from_millis(100))
            {
                return Err(bad(format!(
                    "key `functions[{i}].instance.evicttime`: at least 100ms (v1's default is 1m)"
                )));
            }
            f.message
                .check(&format!("functions[{i}].message"))
                .map_err(bad)?;
            if f.backoff.max.get() < Duration::from_millis(10) {
                return Err(bad(format!(
                    "key `functions[{i}].backoff.max`: at least 10ms (default 1m)"
                )));
            }
        }
        let mut ids = std::collections::BTreeSet::new();
        for (i, r) in cfg.rules.iter().enumerate() {
            if !names.contains(r.function.name.as_str()) {
                return Err(bad(format!(
                    "key `rules[{i}].function.name`: function `{}` is not defined under `functions`",
                    r.function.name
                )));
            }
            for (side, q) in [("subscribe", r.subscribe.qos), ("publish", r.publish.qos)] {
                q.require_0_or_1()
                    .map_err(|e| bad(format!("key `rules[{i}].{side}.qos`: {e}")))?;
            }
            if !ids.insert(r.clientid.as_str()) || r.clientid.is_empty() {
                return Err(bad(format!(
                    "key `rules[{i}].clientid`: must be non-empty and unique (`{}`)",
                    r.clientid
                )));
            }
            if r.publish.topic.contains(['+', '#']) {
                return Err(bad(format!(
                    "key `rules[{i}].publish.topic`: a publish topic cannot hold wildcards"
                )));
            }
            let retry = &r.retry;
            if retry.max > MAX_ATTEMPTS {
                return Err(bad(format!(
                    "key `rules[{i}].retry.max`: at most {MAX_ATTEMPTS} attempts (got {}); each may take the function's timeout",
                    retry.max
                )));
            }
            if !(retry.factor.is_finite() && (1.0..=10.0).contains(&retry.factor)) {
                return Err(bad(format!(
                    "key `rules[{i}].retry.factor`: between 1 and 10 (got {})",
                    retry.factor
                )));
            }
            if retry.delay.get() > retry.max_delay.get() {
                return Err(bad(format!(
                    "key `rules[{i}].retry.delay`: {} is longer than `max_delay` ({})",
                    retry.delay, retry.max_delay
                )));
            }
            if retry.max_delay.get() > Duration::from_secs(600) {
                return Err(bad(format!(
                    "key `rules[{i}].retry.max_delay`: at most 10m (got {})",
                    retry.max_delay
                )));
            }
        }
        cfg.server.check("server").map_err(bad)?;
        Ok(())
    }
}

/// Counters for one rule, reported to the master.
#[derive(Default)]
pub struct RuleStats {
    /// Whether the hub accepted the rule's subscription on the current connection.
    pub subscribed: std::sync::atomic::AtomicBool,
    pub received: AtomicU64,
    pub published: AtomicU64,
    pub filtered: AtomicU64,
    pub errors: AtomicU64,
    /// Calls made again after a failure (`retry`).
    pub retried: AtomicU64,
}

/// Publishes through a rule's client and resolves when the hub acknowledged (QoS 1) or the packet was
/// written (QoS 0). Outgoing publishes leave in request order, so a FIFO pairs requests with packet ids.
struct Publisher {
    client: AsyncClient,
    order: Mutex<()>,
    queue: std::sync::Mutex<VecDeque<oneshot::Sender<()>>>,
}

impl Publisher {
    async fn publish(
        &self,
        topic: &str,
        q: QoS,
        payload: Vec<u8>,
    ) -> Result<oneshot::Receiver<()>, FunctionError> {
        let (tx, rx) = oneshot::channel();
        let _order = self.order.lock().await;
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(tx);
        self.client
            .publish(topic, q, false, payload)
            .await
            .map_err(|source| FunctionError::Publish {
                topic: topic.to_string(),
                source,
            })?;
        Ok(rx)
    }

    fn next_waiter(&self) -> Option<oneshot::Sender<()>> {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
    }
}

/// Runs every rule until `shutdown` completes.
pub async fn run(
    cfg: ManagerConfig,
    master: MasterClient,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), FunctionError> {
    let hub = hub_options(&cfg.hub)?;
    // Bound first: a server that cannot start stops the manager before any instance is started.
    let bound = match cfg.server.address() {
        Some(a) => {
            Some(crate::serve::Server::bind(&cfg.server, crate::runtime::parse_listen(a)?).await?)
        }
        None => None,
    };
    let mut pools: BTreeMap<String, Arc<Pool>> = BTreeMap::new();
    for f in &cfg.functions {
        let pool = Arc::new(Pool::new(f.clone(), master.clone()));
        pool.warm_up().await;
        pools.insert(f.name.clone(), pool);
    }
    // One reaper per function: each looks for idle instances every `evicttime`.
    let reapers: Vec<_> = cfg
        .functions
        .iter()
        .filter_map(|f| {
            pools
                .get(&f.name)
                .map(|p| (p.clone(), f.instance.evict_every()))
        })
        .map(|(pool, every)| {
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    pool.reap_idle().await;
                }
            })
        })
        .collect();
    let (server_stop, server_stopped) = oneshot::channel::<()>();
    let server = match bound {
        Some(bound) => {
            let dispatch = crate::serve::Dispatch::new(pools.clone());
            Some(tokio::spawn(async move {
                let stopped = async {
                    let _ = server_stopped.await;
                };
                if let Err(e) = bound.serve(dispatch, stopped).await {
                    tracing::error!("function server: {e}");
                }
            }))
        }
        None => None,
    };
    let mut stats = BTreeMap::new();
    let mut tasks = Vec::new();
    for rule in &cfg.rules {
        let pool = pools.get(&rule.function.name).cloned().ok_or_else(|| {
            FunctionError::UndefinedFunction {
                rule: rule.clientid.clone(),
                function: rule.function.name.clone(),
            }
        })?;
        let st = Arc::new(RuleStats::default());
        stats.insert(rule.clientid.clone(), st.clone());
        let limit = cfg.message.length.max.0 as usize;
        tasks.push(tokio::spawn(run_rule(
            hub.clone(),
            rule.clone(),
            limit,
            pool,
            st,
        )));
    }
    let reporter = tokio::spawn(report_loop(stats, pools.clone()));
    shutdown.await;
    tracing::info!("stopping the function manager");
    for t in tasks {
        t.abort();
    }
    for r in reapers {
        r.abort();
    }
    reporter.abort();
    let _ = server_stop.send(());
    if let Some(s) = server {
        let _ = s.await;
    }
    for p in pools.values() {
        p.stop_all().await;
    }
    Ok(())
}

async fn report_loop(stats: BTreeMap<String, Arc<RuleStats>>, pools: BTreeMap<String, Arc<Pool>>) {
    let stats = || async {
        let rules: serde_json::Map<String, serde_json::Value> = stats
            .iter()
            .map(|(k, s)| {
                (
                    k.clone(),
                    json!({
                        "subscribed": s.subscribed.load(Ordering::Relaxed),
                        "received": s.received.load(Ordering::Relaxed),
                        "published": s.published.load(Ordering::Relaxed),
                        "filtered": s.filtered.load(Ordering::Relaxed),
                        "errors": s.errors.load(Ordering::Relaxed),
                        "retried": s.retried.load(Ordering::Relaxed),
                    }),
                )
            })
            .collect();
        let mut fns = serde_json::Map::new();
        for (k, p) in &pools {
            fns.insert(k.clone(), p.stats());
        }
        json!({"rules": rules, "functions": fns})
    };
    // Stopped by aborting the task when the manager stops.
    baetyl_sdk::client::report_periodically(Duration::from_secs(2), stats, std::future::pending())
        .await;
}

async fn run_rule(
    mut hub: ClientOptions,
    rule: Rule,
    limit: usize,
    pool: Arc<Pool>,
    stats: Arc<RuleStats>,
) {
    hub.client_id = rule.clientid.clone();
    let mut opts = hub.mqtt_options();
    opts.set_manual_acks(true).set_inflight(100);
    let (client, mut eventloop) = AsyncClient::new(opts, 256);
    // rumqttc writes each packet by itself: with Nagle's algorithm a result or an acknowledgement written
    // while the previous one is unacknowledged would wait for the hub's delayed ACK (up to 40 ms).
    let mut net = eventloop.network_options();
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);
    let publisher = Arc::new(Publisher {
        client: client.clone(),
        order: Mutex::new(()),
        queue: std::sync::Mutex::new(VecDeque::new()),
    });
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Publish>(256);
    // Dispatcher: takes a pool permit before handing a message on, so with max 1 messages run in order.
    let dispatch = {
        let (rule, pool, publisher, client, stats) = (
            rule.clone(),
            pool.clone(),
            publisher.clone(),
            client.clone(),
            stats.clone(),
        );
        tokio::spawn(async move {
            let seq = Arc::new(AtomicU64::new(0));
            while let Some(p) = rx.recv().await {
                let permit = pool.permit().await;
                let (rule, pool, publisher, client, stats, seq) = (
                    rule.clone(),
                    pool.clone(),
                    publisher.clone(),
                    client.clone(),
                    stats.clone(),
                    seq.clone(),
                );
                tokio::spawn(async move {
                    handle(
                        &rule, limit, &pool, permit, &publisher, &client, &stats, &seq, p,
                    )
                    .await;
                });
            }
        })
    };
    let mut waiting: HashMap<u16, oneshot::Sender<()>> = HashMap::new();
    loop {
        let event = eventloop.poll().await;
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                tracing::info!(rule = %rule.clientid, session_present = ack.session_present, "connected to the hub");
                if let Err(e) =
                    client.try_subscribe(rule.subscribe.topic.clone(), rule.subscribe.qos.into())
                {
                    tracing::error!(rule = %rule.clientid, "cannot subscribe: {e}");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                stats.received.fetch_add(1, Ordering::Relaxed);
                if tx.send(p).await.is_err() {
                    break;
                }
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                if pkid == 0 {
                    if let Some(w) = publisher.next_waiter() {
                        let _ = w.send(());
                    }
                } else if let std::collections::hash_map::Entry::Vacant(slot) = waiting.entry(pkid)
                {
                    // A retransmission after reconnect reuses its id and is already waited for.
                    if let Some(w) = publisher.next_waiter() {
                        slot.insert(w);
                    }
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if let Some(w) = waiting.remove(&ack.pkid) {
                    let _ = w.send(());
                }
            }
            Ok(Event::Incoming(Packet::SubAck(s))) => {
                if s.return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                {
                    tracing::error!(rule = %rule.clientid, topic = %rule.subscribe.topic, "the hub refused the subscription");
                } else {
                    tracing::info!(rule = %rule.clientid, topic = %rule.subscribe.topic, "subscribed");
                    stats.subscribed.store(true, Ordering::Relaxed);
                }
            }
            Ok(_) => {}
            Err(e) => {
                stats.subscribed.store(false, Ordering::Relaxed);
                tracing::warn!(rule = %rule.clientid, "hub connection: {e}; retrying in 1s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    dispatch.abort();
}

#[allow(clippy::too_many_arguments)]
async fn handle(
    rule: &Rule,
    limit: usize,
    pool: &Pool,
    permit: tokio::sync::OwnedSemaphorePermit,
    publisher: &Publisher,
    client: &AsyncClient,
    stats: &RuleStats,
    seq: &AtomicU64,
    p: Publish,
) {
    let in_qos = Qos::from(p.qos);
    let msg = FunctionMessage {
        id: seq.fetch_add(1, Ordering::Relaxed) + 1,
        qos: u32::from(in_qos.as_u8()),
        topic: p.topic.clone(),
        payload: p.payload.to_vec(),
        timestamp: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
        function_name: rule.function.name.clone(),
        function_invoke_id: crate::pool::invoke_id(),
    };
    let out_qos: QoS = in_qos.min(rule.publish.qos).into();
    // The permit is held across retries: with `instance.max: 1` messages stay in order.
    let mut result = pool.call(&permit, &msg).await;
    let mut attempt = 1;
    while let Err(e) = &result
        && attempt < rule.retry.max
        && e.is_retryable()
    {
        let wait = rule.retry.delay_before(attempt);
        attempt += 1;
        stats.retried.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(rule = %rule.clientid, "function {} failed ({e}); attempt {attempt} of {} in {wait:?}", rule.function.name, rule.retry.max);
        tokio::time::sleep(wait).await;
        result = pool.call(&permit, &msg).await;
    }
    drop(permit);
    let failure = match result {
        Ok(reply) if reply.payload.is_empty() => {
            stats.filtered.fetch_add(1, Ordering::Relaxed);
            None
        }
        Ok(reply) if reply.payload.len() <= limit => Some(Ok(reply.payload)),
        Ok(reply) => Some(Err((
            crate::answer::OUTPUT_TOO_LARGE.to_string(),
            crate::answer::too_large(reply.payload.len(), limit),
        ))),
        Err(CallError::Function { kind, message }) => Some(Err((kind, message))),
        Err(other) => Some(Err((other.kind().to_string(), other.to_string()))),
    };
    let payload = match failure {
        None => None,
        Some(Ok(payload)) => Some(payload),
        Some(Err((kind, message))) => {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(rule = %rule.clientid, "function {} failed: {message}", rule.function.name);
            // Answered with a bounded error and then acknowledged: a poison input is never redelivered.
            let answer = crate::answer::error_answer(&msg, &kind, &message, limit);
            if answer.is_none() {
                tracing::error!(rule = %rule.clientid, "the error answer does not fit the hub's message limit of {limit} bytes; acknowledging the input without one");
            }
            answer
        }
    };
    if let Some(payload) = payload {
        match publisher
            .publish(&rule.publish.topic, out_qos, payload)
            .await
        {
            Ok(acked) => {
                if acked.await.is_err() {
                    // The connection went away before the hub acknowledged: leave the input unacknowledged,
                    // the hub redelivers it.
                    return;
                }
                stats.published.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(rule = %rule.clientid, "{e}");
                return;
            }
        }
    }
    if let Err(e) = client.ack(&p).await {
        tracing::warn!(rule = %rule.clientid, "cannot acknowledge the input: {e}");
    }
}

#[derive(Debug, clap::Args)]
pub struct FunctionArgs {
    /// The manager's config (v1 schema: hub, rules, functions, logger).
    #[arg(short = 'c', long, default_value = "etc/baetyl/service.yml")]
    pub config: PathBuf,
    /// Log line format: `human` or `json`; overrides `logger.format` in the config.
    #[arg(long = "log-format", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
}

/// `baetyl function`.
pub fn run_cli(args: FunctionArgs) -> Result<(), FunctionError> {
    let cfg = ManagerConfig::load(&args.config)?;
    let master = MasterClient::from_env()?;
    Kit::new("function")
        .worker_threads(2)
        .init(&cfg.logger, args.log_format)?
        .block_on(run(cfg, master, shutdown_signal()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FUNCTIONS: &str = "functions: [{name: f, service: function-sql}]\n";

    fn parse(text: &str) -> Result<ManagerConfig, ConfigError> {
        ManagerConfig::parse(text, Path::new("service.yml"))
    }

    fn rule(sub_qos: u8, pub_qos: u8) -> String {
        format!(
            "rules: [{{clientid: r1, subscribe: {{topic: a, qos: {sub_qos}}}, function: {{name: f}}, publish: {{topic: b, qos: {pub_qos}}}}}]\n"
        )
    }

    #[test]
    fn v1_config_with_logger_and_every_hub_transport() {
        for address in [
            "tcp://127.0.0.1:1883",
            "ssl://hub:8883",
            "ws://hub:8080/mqtt",
            "wss://hub",
        ] {
            let cfg = parse(&format!(
                "hub: {{address: '{address}', username: u, password: p}}\n{}{FUNCTIONS}logger: {{level: debug, format: json}}\n",
                rule(1, 1)
            ))
            .unwrap_or_else(|e| panic!("{address}: {e}"));
            assert_eq!(
                cfg.hub.address.to_string().split("://").next(),
                address.split("://").next()
            );
            assert_eq!(cfg.logger.level, "debug");
            assert_eq!(cfg.logger.format, LogFormat::Json);
            assert_eq!(cfg.rules[0].publish.qos, Qos::AtLeastOnce);
        }
        let cfg = parse(&format!(
            "hub: {{address: 'tcp://h'}}\n{}{FUNCTIONS}",
            rule(0, 1)
        ))
        .expect("valid");
        assert_eq!(cfg.logger, LoggerConfig::default(), "logger is optional");
        let o = hub_options(&cfg.hub).expect("options");
        assert!(!o.clean_session, "rules keep persistent sessions");
        assert_eq!(o.keep_alive, Duration::from_secs(30));
        assert_eq!(o.address().port(), 1883);
    }

    #[test]
    fn qos_mistakes_name_their_key() {
        let e = parse(&format!(
            "hub: {{address: 'tcp://h'}}\n{}{FUNCTIONS}",
            rule(1, 2)
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("rules[0].publish.qos") && e.contains("use 0 or 1"),
            "{e}"
        );
        let e = parse(&format!(
            "hub: {{address: 'tcp://h'}}\n{}{FUNCTIONS}",
            rule(7, 1)
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("key `rules[0].subscribe.qos`") && e.contains("qos 7 is not valid"),
            "{e}"
        );
    }

    #[test]
    fn the_message_limit_defaults_to_the_hubs_and_is_checked() {
        let base = format!("hub: {{address: 'tcp://h'}}\n{}{FUNCTIONS}", rule(1, 1));
        let cfg = parse(&base).expect("valid");
        assert_eq!(cfg.message.length.max, ByteSize(32 * 1024));
        let cfg = parse(&format!("{base}message: {{length: {{max: 1m}}}}\n")).expect("valid");
        assert_eq!(cfg.message.length.max, ByteSize(1 << 20));
        for bad in ["100", "1g"] {
            let e = parse(&format!("{base}message: {{length: {{max: {bad}}}}}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("key `message.length.max`") && e.contains("between 1k and 64m"),
                "{e}"
            );
        }
    }

    /// Every key of v1.0.2's function manager config (its `Config`, `RuleInfo`, `FunctionInfo` and
    /// `InstanceInfo`, with v1's `FunctionServerConfig` under `server`).
    const V1_FULL: &str = r#"
hub: {address: 'tcp://127.0.0.1:1883', username: test, password: hahaha, keepalive: -1}
server:
  address: 127.0.0.1:50060
  timeout: 1m
  message: {length: {max: 8m}}
  concurrent: {max: 16}
  workers: {max: 4}
rules:
  - clientid: r1
    subscribe: {topic: t}
    function: {name: sayhi}
    publish: {topic: t/hi}
    retry: {max: 5, delay: 100ms, factor: 3, max_delay: 1s}
  - clientid: r2
    subscribe: {topic: u}
    function: {name: sayhi}
    publish: {topic: u/hi}
functions:
  - name: sayhi
    service: function-python3-sayhi
    instance: {min: 1, max: 10, idletime: 10m, evicttime: 30s}
    message: {length: {max: 1m}}
    backoff: {max: 2s}
    timeout: 30s
logger: {path: var/log/baetyl/service.log, level: debug}
"#;

    #[test]
    fn every_v1_key_is_read() {
        let cfg = parse(V1_FULL).expect("v1 config");
        let s = &cfg.server;
        assert_eq!(s.address(), Some("127.0.0.1:50060"));
        assert_eq!(s.timeout, Some(HumanDuration::from_secs(60)));
        assert_eq!(s.message.bytes(), 8 << 20);
        assert_eq!((s.concurrent.max, s.workers.max), (16, 4));
        let r = &cfg.rules[0].retry;
        assert_eq!(r.max, 5);
        assert_eq!(r.delay_before(1), Duration::from_millis(100));
        assert_eq!(r.delay_before(2), Duration::from_millis(300));
        assert_eq!(r.delay_before(3), Duration::from_millis(900));
        assert_eq!(
            r.delay_before(4),
            Duration::from_secs(1),
            "capped by max_delay"
        );
        assert_eq!(
            cfg.rules[1].retry,
            RetryConfig::default(),
            "v1's default: 3 attempts, at once"
        );
        assert_eq!(cfg.rules[1].retry.max, 3);
        assert_eq!(cfg.rules[1].retry.delay_before(2), Duration::ZERO);
        let f = &cfg.functions[0];
        assert_eq!(f.instance.evict_every(), Duration::from_secs(30));
        assert_eq!(f.message.bytes(), 1 << 20);
        assert_eq!(f.backoff.max, HumanDuration::from_secs(2));
        // v1's defaults when left out.
        let cfg = parse(&format!(
            "hub: {{address: 'tcp://h'}}\n{}{FUNCTIONS}",
            rule(1, 1)
        ))
        .expect("valid");
        let f = &cfg.functions[0];
        assert_eq!(f.message.bytes(), 4 << 20);
        assert_eq!(f.backoff.max, HumanDuration::from_secs(60));
        assert_eq!(f.instance.evict_every(), Duration::from_secs(1));
        assert_eq!(
            cfg.server.address(),
            None,
            "no address: no server, as in v1"
        );
    }

    #[test]
    fn v1_key_mistakes_name_their_key() {
        for (from, to, want) in [
            (
                "max: 5, delay",
                "max: 50, delay",
                "`rules[0].retry.max`: at most 20",
            ),
            ("factor: 3", "factor: 0.5", "`rules[0].retry.factor`"),
            ("delay: 100ms", "delay: 2s", "`rules[0].retry.delay`"),
            (
                "max_delay: 1s",
                "max_delay: 1h",
                "`rules[0].retry.max_delay`",
            ),
            (
                "{length: {max: 1m}}",
                "{length: {max: 1g}}",
                "`functions[0].message.length.max`",
            ),
            (
                "{length: {max: 8m}}",
                "{length: {max: 10}}",
                "`server.message.length.max`",
            ),
            (
                "backoff: {max: 2s}",
                "backoff: {max: 1ms}",
                "`functions[0].backoff.max`",
            ),
            (
                "evicttime: 30s",
                "evicttime: 1ms",
                "`functions[0].instance.evicttime`",
            ),
            (
                "max: 10, idletime",
                "max: 101, idletime",
                "`functions[0].instance.max`",
            ),
            (
                "address: 127.0.0.1:50060",
                "address: nowhere",
                "`server.address`",
            ),
            (
                "workers: {max: 4}",
                "workers: {max: 4}\n  cert: c.pem",
                "`server.cert` and `server.key`",
            ),
            ("retry: {max: 5", "retry: {tries: 5", "rules[0].retry.tries"),
        ] {
            assert!(V1_FULL.contains(from), "{from}");
            let e = parse(&V1_FULL.replacen(from, to, 1))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{to}: {e}");
        }
    }

    #[test]
    fn hub_mistakes_name_their_key() {
        let e = parse(&format!(
            "hub: {{address: 'tcp://h:1883x'}}\n{}{FUNCTIONS}",
            rule(0, 0)
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("key `hub.address`") && e.contains("not a port"),
            "{e}"
        );
        let e = parse(&format!(
            "hub: {{address: 'ssl://h', cert: c.pem}}\n{}{FUNCTIONS}",
            rule(0, 0)
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("hub: ") && e.contains("go together"), "{e}");
        for (key, value) in [("clientid", "x"), ("clean_session", "true"), ("name", "n")] {
            let e = parse(&format!(
                "hub: {{address: 'tcp://h', {key}: {value}}}\n{}{FUNCTIONS}",
                rule(0, 0)
            ))
            .unwrap_err()
            .to_string();
            assert!(e.contains(&format!("hub.{key}")), "{e}");
        }
        let cfg = parse(&format!(
            "hub: {{address: 'ssl://h', ca: /nonexistent/ca.pem}}\n{}{FUNCTIONS}",
            rule(0, 0)
        ))
        .expect("files are read when the manager starts");
        let e = hub_options(&cfg.hub).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    }
}
