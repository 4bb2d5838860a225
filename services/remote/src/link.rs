//! One MQTT connection (rumqttc, manual acks) kept up by a task of its own, with what the bridge needs on top:
//! a publish that tells when the broker acknowledged it, acknowledgements of incoming messages that are sent
//! only when the caller says so, and re-subscription after a reconnect that lost the session.
//!
//! rumqttc replays its in-flight publishes after a reconnect; we drop that replay and let the callers resend
//! (the bridge resends from its on-disk buffer), so every publish has exactly one completion: acknowledged, or
//! failed because the connection was lost.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use baetyl_sdk::mqtt::ClientOptions;
use rumqttc::{AsyncClient, Event, EventLoop, Outgoing, Packet, Publish, QoS, SubscribeFilter};
use tokio::sync::{mpsc, oneshot, watch};

/// Outgoing QoS 1 publishes rumqttc may have in flight; callers keep their window below it, so packet ids
/// never collide.
pub const MAX_INFLIGHT: u16 = 200;
const RECONNECT_MIN: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// A message a broker delivered to us. QoS 1 ones must be acknowledged with [`Link::ack`].
#[derive(Debug)]
pub struct Incoming {
    pub topic: String,
    pub qos: QoS,
    pub retain: bool,
    pub payload: Vec<u8>,
    publish: Publish,
    generation: u64,
}

/// The publish side could not take the message: not connected (or the client's queue is full).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotConnected;

struct Shared {
    connected: bool,
    /// Bumped at every CONNACK; acknowledgements for messages of an older connection are not sent.
    generation: u64,
    /// Completions of publishes handed to rumqttc, in the order rumqttc will write them.
    sent: VecDeque<oneshot::Sender<()>>,
}

/// A handle on a connection; cheap to clone.
#[derive(Clone)]
pub struct Link {
    name: Arc<str>,
    client: AsyncClient,
    shared: Arc<Mutex<Shared>>,
    state: watch::Receiver<bool>,
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // A panic while holding this lock leaves plain data behind; keep going with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Link {
    /// Starts the connection task. Messages delivered on `subscriptions` go to `incoming` (QoS 0 ones are
    /// dropped when it is full, QoS 1 ones wait). The task ends when `shutdown` becomes true.
    pub fn start(
        endpoint: &ClientOptions,
        subscriptions: Vec<(String, QoS)>,
        incoming: Option<mpsc::Sender<Incoming>>,
        shutdown: watch::Receiver<bool>,
    ) -> (Link, tokio::task::JoinHandle<()>) {
        let mut options = endpoint.mqtt_options();
        options
            .set_manual_acks(true)
            .set_request_channel_capacity(4096)
            .set_inflight(MAX_INFLIGHT);
        let (client, eventloop) = AsyncClient::new(options, 4096);
        let shared = Arc::new(Mutex::new(Shared {
            connected: false,
            generation: 0,
            sent: VecDeque::new(),
        }));
        let (state_tx, state_rx) = watch::channel(false);
        let link = Link {
            name: Arc::from(endpoint.name.as_str()),
            client: client.clone(),
            shared: shared.clone(),
            state: state_rx,
        };
        let driver = Driver {
            name: endpoint.name.clone(),
            address: endpoint.address().to_string(),
            client,
            shared,
            state: state_tx,
            subscriptions,
            incoming,
            inflight: HashMap::new(),
            dropped_qos0: 0,
            subscribed: false,
        };
        let handle = tokio::spawn(driver.run(eventloop, shutdown));
        (link, handle)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn is_connected(&self) -> bool {
        *self.state.borrow()
    }

    /// Waits until the connection is up. Returns false if the link task ended.
    pub async fn wait_connected(&self) -> bool {
        let mut state = self.state.clone();
        state.wait_for(|c| *c).await.is_ok()
    }

    /// Hands a message to the connection. The receiver completes when the broker acknowledged it (QoS 1) or
    /// it was written (QoS 0); it fails if the connection was lost first.
    pub fn publish(
        &self,
        topic: &str,
        qos: QoS,
        payload: Vec<u8>,
    ) -> Result<oneshot::Receiver<()>, NotConnected> {
        let mut shared = lock(&self.shared);
        if !shared.connected {
            return Err(NotConnected);
        }
        // Under the lock, so the order of `sent` is the order of rumqttc's request queue.
        self.client
            .try_publish(topic, qos, false, payload)
            .map_err(|_| NotConnected)?;
        let (tx, rx) = oneshot::channel();
        shared.sent.push_back(tx);
        Ok(rx)
    }

    /// Acknowledges a delivered message to its broker (no-op for QoS 0 and for messages of a connection that
    /// has since been lost: the broker redelivers those).
    pub fn ack(&self, msg: &Incoming) {
        if msg.qos == QoS::AtMostOnce {
            return;
        }
        let shared = lock(&self.shared);
        if !shared.connected || shared.generation != msg.generation {
            return;
        }
        if let Err(e) = self.client.try_ack(&msg.publish) {
            tracing::warn!(link = %self.name, "cannot queue an acknowledgement: {e}");
        }
    }
}

struct Driver {
    name: String,
    address: String,
    client: AsyncClient,
    shared: Arc<Mutex<Shared>>,
    state: watch::Sender<bool>,
    subscriptions: Vec<(String, QoS)>,
    incoming: Option<mpsc::Sender<Incoming>>,
    inflight: HashMap<u16, oneshot::Sender<()>>,
    dropped_qos0: u64,
    subscribed: bool,
}

impl Driver {
    async fn run(mut self, mut ev: EventLoop, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = RECONNECT_MIN;
        let mut was_up = false;
        let mut failures: u32 = 0;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let polled = tokio::select! {
                r = ev.poll() => r,
                _ = shutdown.changed() => break,
            };
            match polled {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    backoff = RECONNECT_MIN;
                    failures = 0;
                    was_up = true;
                    {
                        let mut s = lock(&self.shared);
                        s.connected = true;
                        s.generation += 1;
                    }
                    tracing::info!(link = %self.name, address = %self.address, session_present = ack.session_present, "connected");
                    // A session the broker kept has our subscriptions, unless they never reached it.
                    if (!ack.session_present || !self.subscribed) && !self.subscriptions.is_empty()
                    {
                        let filters = self
                            .subscriptions
                            .iter()
                            .map(|(t, q)| SubscribeFilter::new(t.clone(), *q))
                            .collect::<Vec<_>>();
                        if let Err(e) = self.client.try_subscribe_many(filters) {
                            tracing::warn!(link = %self.name, "cannot subscribe: {e}");
                        }
                    }
                    self.state.send_replace(true);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => self.deliver(p).await,
                Ok(Event::Incoming(Packet::PubAck(a))) => {
                    if let Some(done) = self.inflight.remove(&a.pkid) {
                        let _ = done.send(());
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(s))) => {
                    self.subscribed = true;
                    let refused = s
                        .return_codes
                        .iter()
                        .filter(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                        .count();
                    if refused > 0 {
                        tracing::warn!(link = %self.name, refused, "the broker refused subscriptions (check its ACL)");
                    }
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    let done = lock(&self.shared).sent.pop_front();
                    if let Some(done) = done {
                        if pkid == 0 {
                            let _ = done.send(());
                        } else {
                            self.inflight.insert(pkid, done);
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    self.lost(&mut ev);
                    failures += 1;
                    if was_up {
                        tracing::warn!(link = %self.name, address = %self.address, "connection lost: {e}");
                        was_up = false;
                    } else if failures == 1 || failures.is_multiple_of(20) {
                        tracing::warn!(link = %self.name, address = %self.address, attempts = failures, "cannot connect: {e}");
                    } else {
                        tracing::debug!(link = %self.name, "cannot connect: {e}");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => break,
                    }
                    backoff = (backoff * 2).min(RECONNECT_MAX);
                }
            }
        }
        // Orderly goodbye: DISCONNECT keeps the broker from publishing a will and ends the session cleanly.
        if lock(&self.shared).connected {
            let _ = self.client.try_disconnect();
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                loop {
                    match ev.poll().await {
                        Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            })
            .await;
        }
        self.lost(&mut ev);
        if self.dropped_qos0 > 0 {
            tracing::info!(link = %self.name, dropped = self.dropped_qos0, "QoS 0 messages dropped while the bridge was busy");
        }
    }

    async fn deliver(&mut self, p: Publish) {
        let Some(tx) = &self.incoming else {
            return;
        };
        let generation = lock(&self.shared).generation;
        let msg = Incoming {
            topic: p.topic.clone(),
            qos: p.qos,
            retain: p.retain,
            payload: p.payload.to_vec(),
            publish: p,
            generation,
        };
        if msg.qos == QoS::AtMostOnce {
            if tx.try_send(msg).is_err() {
                self.dropped_qos0 += 1;
            }
        } else {
            // Waiting here stops reading from the socket: backpressure reaches the broker.
            let _ = tx.send(msg).await;
        }
    }

    /// The connection is gone: fail every pending publish and forget rumqttc's replay queue.
    fn lost(&mut self, ev: &mut EventLoop) {
        let mut s = lock(&self.shared);
        s.connected = false;
        s.sent.clear();
        self.inflight.clear();
        // Requests queued after rumqttc's own cleanup (before we took the lock) are drained here too.
        ev.clean();
        ev.pending.clear();
        drop(s);
        self.state.send_replace(false);
    }
}
