//! One MQTT test client on rumqttc, whose event loop runs in a task: every call waits for the packet that
//! completes it (CONNACK, SUBACK, PUBACK/PUBCOMP) instead of sleeping, and incoming messages queue until read.
//!
//! The client never reconnects: when the connection ends (refused, closed by the broker, network error) its
//! reason is kept, the messages received before stay readable, and every later call fails naming the reason.
//! A test that needs a new connection connects a new client.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rumqttc::{
    AsyncClient, ConnAck, Event, MqttOptions, Outgoing, Packet, QoS, SubAck, SubscribeFilter,
    SubscribeReasonCode,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

pub use rumqttc::Publish;

/// How long a broker may take to answer a CONNECT, SUBSCRIBE or PUBLISH before the call fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// Options for a client of a broker on 127.0.0.1:`port`: keep-alive 30 s, packets up to 1 MiB both ways.
pub fn options(id: &str, port: u16) -> MqttOptions {
    options_for(id, crate::net::localhost(port))
}

/// [`options`] for a broker at `addr`.
pub fn options_for(id: &str, addr: SocketAddr) -> MqttOptions {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20);
    o
}

/// Readings of a received message.
pub trait MessageExt {
    /// The payload as text (lossy UTF-8).
    fn text(&self) -> String;
    /// The payload as JSON, if it is.
    fn json(&self) -> Option<serde_json::Value>;
}

impl MessageExt for Publish {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
    fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.payload).ok()
    }
}

/// The payloads of `messages` as text.
pub fn texts(messages: &[Publish]) -> Vec<String> {
    messages.iter().map(MessageExt::text).collect()
}

/// A connected test client.
pub struct Client {
    client: AsyncClient,
    id: String,
    connack: ConnAck,
    messages: mpsc::UnboundedReceiver<Publish>,
    subacks: mpsc::UnboundedReceiver<SubAck>,
    /// PUBACKs and PUBCOMPs received so far.
    acks: watch::Receiver<u64>,
    /// QoS 1 and 2 publishes sent so far.
    sent: u64,
    /// Why the connection ended, once it has.
    closed: watch::Receiver<Option<String>>,
    task: JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Client {
    /// Connects and waits for the CONNACK; a refusal is an error that carries the return code (`NotAuthorized`,
    /// `BadClientId`, ...).
    pub async fn connect(opts: MqttOptions) -> Result<Client> {
        // The workspace's one rustls provider, as the process default for TLS transports (with ring enabled too
        // by another crate of the build, rustls could not pick one by itself).
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let id = opts.client_id();
        let (client, mut eventloop) = AsyncClient::new(opts, 10_000);
        let (message_tx, messages) = mpsc::unbounded_channel();
        let (suback_tx, subacks) = mpsc::unbounded_channel();
        let (ack_tx, acks) = watch::channel(0u64);
        let (closed_tx, closed) = watch::channel(None);
        let (connack_tx, connack_rx) = oneshot::channel::<Result<ConnAck, String>>();
        let task = tokio::spawn(async move {
            let mut connack_tx = Some(connack_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        if let Some(tx) = connack_tx.take() {
                            let _ = tx.send(Ok(ack));
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = message_tx.send(p);
                    }
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        let _ = suback_tx.send(ack);
                    }
                    Ok(Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_))) => {
                        ack_tx.send_modify(|n| *n += 1);
                    }
                    // Written and flushed: a client closes the connection after its DISCONNECT.
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                        closed_tx.send_replace(Some("DISCONNECT sent".into()));
                        return;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let reason = e.to_string();
                        if let Some(tx) = connack_tx.take() {
                            let _ = tx.send(Err(reason.clone()));
                        }
                        closed_tx.send_replace(Some(reason));
                        return;
                    }
                }
            }
        });
        let connack = match tokio::time::timeout(WAIT, connack_rx).await {
            Ok(Ok(Ok(ack))) => ack,
            Ok(Ok(Err(reason))) => bail!("{id}: {reason}"),
            Ok(Err(_)) => bail!("{id}: the event loop ended before a CONNACK"),
            Err(_) => {
                task.abort();
                bail!("{id}: no CONNACK within {WAIT:?}")
            }
        };
        Ok(Client {
            client,
            id,
            connack,
            messages,
            subacks,
            acks,
            sent: 0,
            closed,
            task,
        })
    }

    /// The broker's CONNACK (return code, session present).
    pub fn connack(&self) -> &ConnAck {
        &self.connack
    }

    /// The rumqttc client, for requests this type does not wrap.
    pub fn inner(&self) -> &AsyncClient {
        &self.client
    }

    /// Why the connection ended, if it has.
    pub fn closed(&self) -> Option<String> {
        self.closed.borrow().clone()
    }

    fn ended(&self) -> String {
        format!(
            "{}: connection closed: {}",
            self.id,
            self.closed()
                .unwrap_or_else(|| "the event loop stopped".into())
        )
    }

    /// Subscribes and returns the SUBACK's return codes.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<Vec<SubscribeReasonCode>> {
        self.subscribe_many(&[(filter, qos)]).await
    }

    /// Subscribes to several filters in one SUBSCRIBE and returns the SUBACK's return codes.
    pub async fn subscribe_many(
        &mut self,
        filters: &[(&str, QoS)],
    ) -> Result<Vec<SubscribeReasonCode>> {
        let list: Vec<SubscribeFilter> = filters
            .iter()
            .map(|(f, q)| SubscribeFilter::new(f.to_string(), *q))
            .collect();
        self.client
            .subscribe_many(list)
            .await
            .with_context(|| self.ended())?;
        match tokio::time::timeout(WAIT, self.subacks.recv()).await {
            Ok(Some(ack)) => Ok(ack.return_codes),
            Ok(None) => bail!("{} (no SUBACK for {filters:?})", self.ended()),
            Err(_) => bail!("{}: no SUBACK for {filters:?} within {WAIT:?}", self.id),
        }
    }

    /// Publishes and, for QoS 1 and 2, waits until the broker acknowledged it (PUBACK, PUBCOMP).
    pub async fn publish(
        &mut self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: impl Into<Vec<u8>>,
    ) -> Result<()> {
        self.send(topic, qos, retain, payload).await?;
        self.wait_acks().await
    }

    /// Publishes every payload at QoS 1, in order, then waits until the broker acknowledged them all.
    pub async fn publish_all(&mut self, topic: &str, payloads: &[Vec<u8>]) -> Result<()> {
        for p in payloads {
            self.send(topic, QoS::AtLeastOnce, false, p.clone()).await?;
        }
        self.wait_acks().await
    }

    /// Queues a publish without waiting for its acknowledgement (load generators; [`Client::wait_acks`] later).
    pub async fn send(
        &mut self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: impl Into<Vec<u8>>,
    ) -> Result<()> {
        self.client
            .publish(topic, qos, retain, payload.into())
            .await
            .with_context(|| self.ended())?;
        if qos != QoS::AtMostOnce {
            self.sent += 1;
        }
        Ok(())
    }

    /// Waits until every QoS 1 and 2 publish sent so far is acknowledged.
    pub async fn wait_acks(&mut self) -> Result<()> {
        let want = self.sent;
        let done = tokio::time::timeout(WAIT, self.acks.wait_for(|n| *n >= want))
            .await
            .map(|r| r.is_ok());
        let acked = *self.acks.borrow();
        match done {
            Ok(true) => Ok(()),
            Ok(false) => bail!(
                "{} ({acked} of {want} publishes acknowledged)",
                self.ended()
            ),
            Err(_) => bail!(
                "{}: {acked} of {want} publishes acknowledged within {WAIT:?}",
                self.id
            ),
        }
    }

    /// The next message, or None if none arrives within `wait`; an error once the connection has ended and
    /// every message received before was read.
    pub async fn recv(&mut self, wait: Duration) -> Result<Option<Publish>> {
        match tokio::time::timeout(wait, self.messages.recv()).await {
            Err(_) => Ok(None),
            Ok(Some(p)) => Ok(Some(p)),
            Ok(None) => bail!("{}", self.ended()),
        }
    }

    /// The next message on `topic` within `wait`, skipping messages on other topics.
    pub async fn recv_on(&mut self, topic: &str, wait: Duration) -> Result<Option<Publish>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await? {
                Some(p) if p.topic == topic => return Ok(Some(p)),
                Some(_) => {}
                None => return Ok(None),
            }
        }
    }

    /// The next `n` messages; an error that lists what came if they do not all arrive within `wait`.
    pub async fn recv_n(&mut self, n: usize, wait: Duration) -> Result<Vec<Publish>> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await {
                Ok(Some(p)) => out.push(p),
                Ok(None) => bail!(
                    "{}: received {} of {n} messages within {wait:?}: {:?}",
                    self.id,
                    out.len(),
                    summary(&out)
                ),
                Err(e) => bail!("{e} after {} of {n} messages", out.len()),
            }
        }
        Ok(out)
    }

    /// What arrives until nothing came for `quiet` (for checks that nothing more arrives).
    pub async fn drain(&mut self, quiet: Duration) -> Vec<Publish> {
        let mut out = Vec::new();
        while let Ok(Some(p)) = self.recv(quiet).await {
            out.push(p);
        }
        out
    }

    /// Waits until the connection has ended and answers why; an error if it is still open after `wait`.
    pub async fn wait_closed(&mut self, wait: Duration) -> Result<String> {
        let ended = tokio::time::timeout(wait, self.closed.wait_for(Option::is_some))
            .await
            .is_ok();
        if !ended {
            bail!("{}: connection still open after {wait:?}", self.id);
        }
        Ok(self
            .closed()
            .unwrap_or_else(|| "the event loop stopped".into()))
    }

    /// Sends DISCONNECT and closes the connection once it is written (the broker reads it before the close).
    pub async fn disconnect(mut self) -> Result<()> {
        self.client
            .disconnect()
            .await
            .with_context(|| self.ended())?;
        self.wait_closed(WAIT).await.map(|_| ())
    }

    /// Drops the connection without DISCONNECT (as a crashed client would).
    pub fn kill(self) {
        self.task.abort();
    }
}

fn summary(messages: &[Publish]) -> Vec<String> {
    messages
        .iter()
        .take(5)
        .map(|p| format!("{}={}", p.topic, p.text()))
        .collect()
}
