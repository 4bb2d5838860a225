//! A function's instance pool: instances are dynamic instances of the function's runtime service, started
//! and stopped through the master API, each serving gRPC on a port the master handed out.
//!
//! `max` bounds the instances and `concurrency` the calls in flight on each (one, as in v1, by default);
//! idle instances above `min` are stopped after `idletime`; an instance that times out or whose connection fails is stopped and replaced (a call whose
//! instance died is retried on a fresh one). An error raised by the function itself keeps the instance.
//! Instances are named `<function>-<slot>` with slots 1..=max, so a restarted manager takes over (stops and
//! restarts) instances its predecessor left.
//!
//! Only the instance started is ever called: a fresh instance must answer the manager's challenge with the
//! proof derived from its secret before it gets anything (a process that bound the port first is stopped
//! being talked to, and the start fails), and its channel keeps that one proven connection: when it breaks,
//! the channel does not reconnect (someone else may hold the port by then); the instance is replaced.
//!
//! Calls waiting for an instance of one of our runtimes (it says so when it answers the challenge) go to it as
//! one `FunctionBatch/CallMany` per batch of what is waiting, each message keeping its own outcome; other
//! runtimes (v1's, which cannot answer the challenge) get v1's `Function/Call`, one per message.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::{Value, json};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use crate::manager::FunctionConfig;
use crate::proto::FunctionMessage;
use crate::proto::function_batch_client::FunctionBatchClient;
use crate::proto::function_client::FunctionClient;
use crate::proto::{FunctionBatchRequest, FunctionOutcome};
use crate::runtime::{
    BATCH_KEY, ERROR_TYPE_KEY, INSTANCE_CHALLENGE_KEY, INSTANCE_PROOF_KEY, INSTANCE_SECRET_ENV,
    INSTANCE_SECRET_KEY, MAX_BATCH, batch_limit, error_status, instance_proof,
};
use baetyl_sdk::client::MasterClient;

/// How long a fresh instance may take to serve gRPC. A Python runtime in a container of an emulated device
/// (the OS image under QEMU's TCG) took 20 s to import grpcio and serve; at 20 s it was stopped and started
/// again, over and over, and the function never answered.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a fresh instance may take to answer the challenge.
const PROOF_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts for one call when instances die under it.
const ATTEMPTS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The function ran and raised an error (kept: the instance is fine).
    #[error("{message}")]
    Function { kind: String, message: String },
    #[error("the call took longer than the function's timeout of {0}")]
    Timeout(humantime::Duration),
    /// Every attempt failed in transport; the last one's instance and gRPC status message.
    #[error("no instance could serve the call: {instance}: {message}")]
    Unavailable { instance: String, message: String },
    #[error("cannot start an instance: {0}")]
    Start(#[from] StartError),
}

/// Why a fresh instance is not there to take a call.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("all {0} instance slots are taken")]
    NoSlot(u32),
    #[error(transparent)]
    Master(#[from] baetyl_sdk::ClientError),
    /// Cannot happen (hex is ASCII); a variant instead of a panic.
    #[error("the instance secret is not a valid gRPC metadata value")]
    Secret,
    #[error("instance address {address}: {source}")]
    Address {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// Whoever answered on the instance's address did not prove it holds the instance's secret.
    #[error(
        "instance {name}: what answers on {address} is not the instance started (it did not prove it holds the instance secret: {why}); another process may hold the port"
    )]
    Unproven {
        name: String,
        address: String,
        why: String,
    },
    #[error("instance {name} did not serve gRPC on {address} within {START_TIMEOUT:?}: {source}")]
    NotServing {
        name: String,
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
}

impl CallError {
    /// Whether another attempt may succeed: every failure is (v1 retried them all), but a message over the
    /// size limit, which would be refused the same way each time.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, CallError::Function { kind, .. } if kind == MESSAGE_TOO_LARGE)
    }

    pub fn kind(&self) -> &str {
        match self {
            CallError::Function { kind, .. } => kind,
            CallError::Timeout(_) => "Timeout",
            CallError::Unavailable { .. } => "Unavailable",
            CallError::Start(_) => "StartFailed",
        }
    }
}

/// A call cut off by its deadline, on either side.
fn is_deadline(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::DeadlineExceeded
        || (status.code() == tonic::Code::Cancelled && status.message().contains("Timeout expired"))
}

/// The error type of a call or an answer over `message.length.max`.
pub const MESSAGE_TOO_LARGE: &str = "MessageTooLarge";

/// A message over a gRPC size limit, refused by this side (OutOfRange) or by the runtime (ResourceExhausted).
fn is_too_large(status: &tonic::Status) -> bool {
    let m = status.message();
    match status.code() {
        // tonic, either side: "... message length too large: found N bytes, the limit is: M bytes".
        tonic::Code::OutOfRange => m.contains("too large"),
        // grpcio (the Python runtime): "Received message larger than max (N vs. M)", or "Sent ...".
        tonic::Code::ResourceExhausted => m.contains("too large") || m.contains("larger than max"),
        _ => false,
    }
}

/// A call or answer over the function's `message.length.max`; `what` says which and by how much.
fn too_large(conf: &FunctionConfig, what: &str) -> CallError {
    CallError::Function {
        kind: MESSAGE_TOO_LARGE.to_string(),
        message: format!(
            "over the function's message.length.max of {}: {what}",
            conf.message.length.max
        ),
    }
}

struct Instance {
    /// Unique for the pool's life: a slot is reused by the instance that replaces this one.
    id: u64,
    slot: u32,
    name: String,
    /// Sent with every call: the instance serves no one else.
    secret: MetadataValue<Ascii>,
    /// Cloned for each call; the clones share the instance's one connection (HTTP/2 streams).
    client: FunctionClient<Channel>,
    /// For a runtime that takes batches: the queue of its batching task (see [`batch_lane`]).
    lane: Option<mpsc::Sender<Job>>,
    /// Calls on it now (at most `instance.concurrency`).
    in_flight: u32,
    last_used: Instant,
}

/// What one call needs of its instance, taken out of the pool's state.
struct Lease {
    id: u64,
    name: String,
    secret: MetadataValue<Ascii>,
    client: FunctionClient<Channel>,
    lane: Option<mpsc::Sender<Job>>,
}

impl Instance {
    fn lease(&mut self) -> Lease {
        self.in_flight += 1;
        Lease {
            id: self.id,
            name: self.name.clone(),
            secret: self.secret.clone(),
            client: self.client.clone(),
            lane: self.lane.clone(),
        }
    }
}

#[derive(Default)]
struct State {
    /// Running instances, busy or idle.
    instances: Vec<Instance>,
    slots: BTreeSet<u32>,
    next_id: u64,
    started: u64,
    stopped: u64,
}

pub struct Pool {
    conf: FunctionConfig,
    master: MasterClient,
    permits: Arc<Semaphore>,
    /// Never held across an await.
    state: std::sync::Mutex<State>,
    /// Messages answered through batch calls (`FunctionBatch`).
    batched: Arc<AtomicU64>,
    /// Signalled when an instance is added, freed or removed, or a slot is given back: a call that found
    /// every slot taken by instances still starting waits for this instead of failing.
    changed: Notify,
}

/// A channel over one TCP connection to `address`: if it breaks, the channel fails instead of reconnecting to
/// whatever listens on the port by then.
async fn connect_once(
    endpoint: &Endpoint,
    address: &str,
) -> Result<Channel, tonic::transport::Error> {
    let Ok(addr) = address.parse::<SocketAddr>() else {
        // Not an IP address (cannot happen: the manager writes it); connect as tonic would.
        return endpoint.connect().await;
    };
    endpoint
        .connect_with_connector(ConnectOnce {
            addr,
            used: Arc::new(AtomicBool::new(false)),
        })
        .await
}

#[derive(Clone)]
struct ConnectOnce {
    addr: SocketAddr,
    used: Arc<AtomicBool>,
}

impl tonic::codegen::Service<tonic::codegen::http::Uri> for ConnectOnce {
    type Response = hyper_util::rt::TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: tonic::codegen::http::Uri) -> Self::Future {
        let (addr, used) = (self.addr, self.used.clone());
        Box::pin(async move {
            if used.swap(true, Ordering::SeqCst) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    format!("the connection to the instance on {addr} ended; it is not reopened"),
                ));
            }
            let stream = tokio::net::TcpStream::connect(addr).await?;
            let _ = stream.set_nodelay(true);
            Ok(hyper_util::rt::TokioIo::new(stream))
        })
    }
}

/// Challenges what answers on a fresh instance's connection; Ok if it proved it holds `secret`, with the
/// most messages it takes in one `FunctionBatch` call (0: it serves plain Calls only).
pub async fn prove(client: &mut FunctionClient<Channel>, secret: &[u8]) -> Result<usize, String> {
    use subtle::ConstantTimeEq;
    let challenge = invoke_id();
    let mut req = tonic::Request::new(FunctionMessage::default());
    req.set_timeout(PROOF_TIMEOUT);
    let value = challenge
        .parse()
        .map_err(|_| "the challenge is not a metadata value".to_string())?;
    req.metadata_mut().insert(INSTANCE_CHALLENGE_KEY, value);
    let metadata = match tokio::time::timeout(PROOF_TIMEOUT, client.call(req)).await {
        Err(_) => {
            return Err(format!(
                "no answer to the challenge within {PROOF_TIMEOUT:?}"
            ));
        }
        Ok(Ok(resp)) => resp.metadata().clone(),
        Ok(Err(status)) => status.metadata().clone(),
    };
    let Some(got) = metadata.get(INSTANCE_PROOF_KEY) else {
        return Err(format!("no `{INSTANCE_PROOF_KEY}` in the answer"));
    };
    let want = instance_proof(secret, challenge.as_bytes());
    if bool::from(got.as_bytes().ct_eq(want.as_bytes())) {
        let batch = metadata
            .get(BATCH_KEY)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        Ok(batch.min(MAX_BATCH))
    } else {
        Err(format!("a wrong `{INSTANCE_PROOF_KEY}`"))
    }
}

/// A random id for one invocation.
pub fn invoke_id() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let b: [u8; 16] = rand::rng().random();
    let mut id = String::with_capacity(32);
    for x in b {
        id.push(char::from(HEX[usize::from(x >> 4)]));
        id.push(char::from(HEX[usize::from(x & 15)]));
    }
    id
}

/// One plain `Function/Call` (v1's protocol), with the deadline that also travels to the runtime.
async fn call_one(
    mut client: FunctionClient<Channel>,
    secret: MetadataValue<Ascii>,
    msg: FunctionMessage,
    timeout: Duration,
) -> Result<FunctionMessage, tonic::Status> {
    let mut req = tonic::Request::new(msg);
    // The deadline also travels to the runtime (grpc-timeout), which may give up early on its side.
    req.set_timeout(timeout);
    req.metadata_mut().insert(INSTANCE_SECRET_KEY, secret);
    client.call(req).await.map(tonic::Response::into_inner)
}

/// A call waiting in an instance's batch queue, and where its answer goes (None: its batch was too large,
/// the caller sends it again alone).
struct Job {
    msg: FunctionMessage,
    tx: oneshot::Sender<Option<Result<FunctionMessage, tonic::Status>>>,
}

/// Batch calls in flight on one instance at once: one being served while the next one fills.
const BATCHES_IN_FLIGHT: usize = 2;

/// Framing bytes counted per message in a batch (field key and length).
const BATCH_FRAMING: usize = 16;

/// The batching task of an instance whose runtime serves `FunctionBatch`: it takes what is waiting (up to
/// `max` messages adding up to `limit` bytes, never waiting for more), sends a lone message as a plain Call
/// and more as one batch. A batch refused as too large is sent again message by message, so each message
/// gets the answer it would have got alone. Ends when every sender (the instance and its leases) is gone.
fn batch_lane(
    client: FunctionClient<Channel>,
    batch: FunctionBatchClient<Channel>,
    secret: MetadataValue<Ascii>,
    timeout: Duration,
    limit: usize,
    max: usize,
    batched: Arc<AtomicU64>,
) -> mpsc::Sender<Job> {
    let (tx, mut rx) = mpsc::channel::<Job>(max * BATCHES_IN_FLIGHT);
    let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    tokio::spawn(async move {
        let mut carry: Option<Job> = None;
        loop {
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                return;
            };
            let first = match carry.take() {
                Some(j) => j,
                None => match rx.recv().await {
                    Some(j) => j,
                    None => return,
                },
            };
            let mut bytes = prost::Message::encoded_len(&first.msg) + BATCH_FRAMING;
            let mut jobs = vec![first];
            while jobs.len() < max {
                let Ok(j) = rx.try_recv() else { break };
                let n = prost::Message::encoded_len(&j.msg) + BATCH_FRAMING;
                if bytes + n > limit {
                    carry = Some(j);
                    break;
                }
                bytes += n;
                jobs.push(j);
            }
            let (client, batch, secret) = (client.clone(), batch.clone(), secret.clone());
            let batched = batched.clone();
            tokio::spawn(async move {
                let _permit = permit;
                run_batch(client, batch, secret, timeout, jobs, &batched).await;
            });
        }
    });
    tx
}

async fn run_batch(
    client: FunctionClient<Channel>,
    mut batch: FunctionBatchClient<Channel>,
    secret: MetadataValue<Ascii>,
    timeout: Duration,
    mut jobs: Vec<Job>,
    batched: &AtomicU64,
) {
    if jobs.len() == 1 {
        let Some(job) = jobs.pop() else { return };
        let _ = job
            .tx
            .send(Some(call_one(client, secret, job.msg, timeout).await));
        return;
    }
    let (messages, txs): (Vec<_>, Vec<_>) = jobs.into_iter().map(|j| (j.msg, j.tx)).unzip();
    let mut req = tonic::Request::new(FunctionBatchRequest { messages });
    req.set_timeout(timeout);
    req.metadata_mut()
        .insert(INSTANCE_SECRET_KEY, secret.clone());
    match batch.call_many(req).await {
        Ok(reply) => {
            batched.fetch_add(txs.len() as u64, Ordering::Relaxed);
            let mut outcomes = reply.into_inner().outcomes.into_iter();
            for tx in txs {
                let answer = match outcomes.next() {
                    Some(o) => from_outcome(o),
                    None => Err(tonic::Status::internal(
                        "the runtime answered a batch with fewer outcomes than messages",
                    )),
                };
                let _ = tx.send(Some(answer));
            }
        }
        Err(status) if is_too_large(&status) => {
            // The batch, not necessarily each message, is over a limit: each is sent again on its own.
            tracing::debug!(
                "a batch was too large ({}); calling one by one",
                status.message()
            );
            for tx in txs {
                let _ = tx.send(None);
            }
        }
        Err(status) => {
            for tx in txs {
                let _ = tx.send(Some(Err(status.clone())));
            }
        }
    }
}

/// A batch item's outcome as the plain Call would have answered it.
fn from_outcome(o: FunctionOutcome) -> Result<FunctionMessage, tonic::Status> {
    match o.reply {
        Some(reply) if o.error_type.is_empty() => Ok(reply),
        _ => Err(error_status(
            tonic::Code::Unknown,
            if o.error_type.is_empty() {
                "Unknown"
            } else {
                &o.error_type
            },
            o.error,
        )),
    }
}

impl Pool {
    pub fn new(conf: FunctionConfig, master: MasterClient) -> Self {
        let calls = (conf.instance.max.max(1) * conf.instance.concurrency.max(1)) as usize;
        Pool {
            conf,
            master,
            permits: Arc::new(Semaphore::new(calls)),
            state: std::sync::Mutex::new(State::default()),
            batched: Arc::new(AtomicU64::new(0)),
            changed: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a free call slot (at most `max` × `concurrency` calls run at once).
    pub async fn permit(&self) -> OwnedSemaphorePermit {
        loop {
            if let Ok(p) = self.permits.clone().acquire_owned().await {
                return p;
            }
            // The semaphore is never closed; this only guards against a future change.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Starts `min` instances ahead of the first message.
    pub async fn warm_up(&self) {
        for _ in 0..self.conf.instance.min {
            match self.start().await {
                Ok(i) => self.state().instances.push(i),
                Err(e) => {
                    tracing::error!(function = %self.conf.name, "cannot start a minimum instance: {e}")
                }
            }
        }
    }

    /// The least busy instance with room for one more call, else a fresh one. The permit guarantees room
    /// somewhere or a free slot, but with `concurrency` above one every slot may hold an instance that is
    /// still starting (not yet counted): then the call waits for one to come up or free a place, up to the
    /// call's timeout, instead of failing.
    async fn lease(&self) -> Result<Lease, StartError> {
        let deadline = tokio::time::Instant::now() + self.conf.timeout.get();
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut st = self.state();
                let room = self.conf.instance.concurrency.max(1);
                if let Some(i) = st
                    .instances
                    .iter_mut()
                    .filter(|i| i.in_flight < room)
                    .min_by_key(|i| i.in_flight)
                {
                    return Ok(i.lease());
                }
            }
            match self.start().await {
                Ok(mut inst) => {
                    let lease = inst.lease();
                    self.state().instances.push(inst);
                    self.changed.notify_waiters();
                    return Ok(lease);
                }
                Err(StartError::NoSlot(max)) => {
                    if tokio::time::timeout_at(deadline, changed).await.is_err() {
                        return Err(StartError::NoSlot(max));
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One call, made while holding a [`Pool::permit`] (which a rule keeps across its retries).
    pub async fn call(
        &self,
        _permit: &OwnedSemaphorePermit,
        msg: &FunctionMessage,
    ) -> Result<FunctionMessage, CallError> {
        let timeout = self.conf.timeout.get();
        // Checked here: tonic's own encoding limit would fail the request body mid-stream, which reaches the
        // caller as an HTTP/2 protocol error that cannot be told apart from a broken instance.
        let size = prost::Message::encoded_len(msg);
        if size > self.conf.message.bytes() {
            return Err(too_large(&self.conf, &format!("the call is {size} bytes")));
        }
        let mut last_error = (String::new(), String::new());
        for _ in 0..ATTEMPTS {
            let Lease {
                id,
                name,
                secret,
                client,
                lane,
            } = self.lease().await?;
            let answer = match lane {
                Some(lane) => {
                    let (tx, rx) = oneshot::channel();
                    let job = Job {
                        msg: msg.clone(),
                        tx,
                    };
                    let queued = async move {
                        if lane.send(job).await.is_err() {
                            return Some(Err(tonic::Status::unavailable(
                                "the instance's batch queue ended",
                            )));
                        }
                        rx.await.unwrap_or_else(|_| {
                            Some(Err(tonic::Status::unavailable(
                                "the instance's batch task ended",
                            )))
                        })
                    };
                    match tokio::time::timeout(timeout, queued).await {
                        Ok(Some(answer)) => Ok(answer),
                        Ok(None) => {
                            tokio::time::timeout(
                                timeout,
                                call_one(client, secret, msg.clone(), timeout),
                            )
                            .await
                        }
                        Err(elapsed) => Err(elapsed),
                    }
                }
                None => {
                    tokio::time::timeout(timeout, call_one(client, secret, msg.clone(), timeout))
                        .await
                }
            };
            match answer {
                Ok(Ok(reply)) => {
                    self.release(id);
                    return Ok(reply);
                }
                Ok(Err(status)) if is_deadline(&status) => {
                    tracing::warn!(function = %self.conf.name, instance = %name, "call timed out after {}; replacing the instance", self.conf.timeout);
                    self.discard(id).await;
                    return Err(CallError::Timeout(timeout.into()));
                }
                Ok(Err(status)) if is_too_large(&status) => {
                    // Over `message.length.max` on either side: the instance is fine, the message is not.
                    self.release(id);
                    return Err(too_large(&self.conf, status.message()));
                }
                Ok(Err(status)) => {
                    if let Some(kind) = status
                        .metadata()
                        .get(ERROR_TYPE_KEY)
                        .and_then(|v| v.to_str().ok())
                    {
                        let kind = kind.to_string();
                        self.release(id);
                        return Err(CallError::Function {
                            kind,
                            message: status.message().to_string(),
                        });
                    }
                    tracing::warn!(function = %self.conf.name, instance = %name, "call failed ({}); replacing the instance", status.message());
                    last_error = (name, status.message().to_string());
                    self.discard(id).await;
                }
                Err(_) => {
                    tracing::warn!(function = %self.conf.name, instance = %name, "call timed out after {}; replacing the instance", self.conf.timeout);
                    self.discard(id).await;
                    return Err(CallError::Timeout(timeout.into()));
                }
            }
        }
        let (instance, message) = last_error;
        Err(CallError::Unavailable { instance, message })
    }

    /// A call on instance `id` ended well; the instance may have been replaced meanwhile.
    fn release(&self, id: u64) {
        if let Some(i) = self.state().instances.iter_mut().find(|i| i.id == id) {
            i.in_flight = i.in_flight.saturating_sub(1);
            i.last_used = Instant::now();
        }
        self.changed.notify_waiters();
    }

    /// Stops instance `id` and frees its slot, once: the other calls that were on it find it gone.
    async fn discard(&self, id: u64) {
        let inst = {
            let mut st = self.state();
            let Some(at) = st.instances.iter().position(|i| i.id == id) else {
                return;
            };
            st.instances.swap_remove(at)
        };
        self.stop(inst).await;
    }

    async fn stop(&self, inst: Instance) {
        if let Err(e) = self
            .master
            .stop_instance(&self.conf.service, &inst.name)
            .await
        {
            tracing::warn!(instance = %inst.name, "cannot stop: {e}");
        }
        {
            let mut st = self.state();
            st.slots.remove(&inst.slot);
            st.stopped += 1;
        }
        self.changed.notify_waiters();
    }

    async fn start(&self) -> Result<Instance, StartError> {
        let (slot, id) = {
            let mut st = self.state();
            let slot = (1..=self.conf.instance.max)
                .find(|s| !st.slots.contains(s))
                .ok_or(StartError::NoSlot(self.conf.instance.max))?;
            st.slots.insert(slot);
            st.next_id += 1;
            (slot, st.next_id)
        };
        match self.start_in(slot, id).await {
            Ok(i) => {
                self.state().started += 1;
                Ok(i)
            }
            Err(e) => {
                self.state().slots.remove(&slot);
                self.changed.notify_waiters();
                Err(e)
            }
        }
    }

    async fn start_in(&self, slot: u32, id: u64) -> Result<Instance, StartError> {
        let name = format!("{}-{slot}", self.conf.name);
        let port = self.master.available_port().await?;
        let address = format!("127.0.0.1:{port}");
        let mut env = std::collections::BTreeMap::new();
        env.insert(
            baetyl_sdk::env::SERVICE_INSTANCE_ADDRESS.to_string(),
            address.clone(),
        );
        // A fresh secret per start: 256 random bits, as hex (metadata values are ASCII).
        let secret = format!("{}{}", invoke_id(), invoke_id());
        env.insert(INSTANCE_SECRET_ENV.to_string(), secret.clone());
        let secret: MetadataValue<Ascii> = secret.parse().map_err(|_| StartError::Secret)?;
        if let Err(e) = self
            .master
            .start_instance(&self.conf.service, &name, &env)
            .await
        {
            if !e.to_string().contains("already running") {
                return Err(e.into());
            }
            // Left by a previous manager: take the slot over.
            tracing::info!(instance = %name, "taking over an instance left by a previous manager");
            let _ = self.master.stop_instance(&self.conf.service, &name).await;
            self.master
                .start_instance(&self.conf.service, &name, &env)
                .await?;
        }
        let began = Instant::now();
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|source| StartError::Address {
                address: address.clone(),
                source,
            })?
            .connect_timeout(Duration::from_secs(1));
        // v1's `backoff.max`: the wait between connection attempts doubles from 10ms up to it.
        let mut wait = Duration::from_millis(10);
        let max_wait = self.conf.backoff.max.get();
        let limit = self.conf.message.bytes();
        loop {
            match connect_once(&endpoint, &address).await {
                Ok(ch) => {
                    let ch_for_batch = ch.clone();
                    let mut client = FunctionClient::new(ch)
                        .max_decoding_message_size(limit)
                        .max_encoding_message_size(limit);
                    let batch = if self.conf.verify_runtime {
                        match prove(&mut client, secret.as_bytes()).await {
                            Ok(batch) => batch,
                            Err(why) => {
                                tracing::error!(function = %self.conf.name, instance = %name, %address, "refusing the instance: {why}");
                                let _ = self.master.stop_instance(&self.conf.service, &name).await;
                                return Err(StartError::Unproven { name, address, why });
                            }
                        }
                    } else {
                        0
                    };
                    // Batches only pay when calls wait for the instance.
                    let lane = (batch > 1 && self.conf.instance.concurrency > 1).then(|| {
                        batch_lane(
                            client.clone(),
                            FunctionBatchClient::new(ch_for_batch.clone())
                                .max_decoding_message_size(batch_limit(limit))
                                .max_encoding_message_size(batch_limit(limit)),
                            secret.clone(),
                            self.conf.timeout.get(),
                            limit,
                            batch,
                            self.batched.clone(),
                        )
                    });
                    tracing::info!(function = %self.conf.name, instance = %name, %address, batch, "instance ready in {:?}", began.elapsed());
                    return Ok(Instance {
                        id,
                        slot,
                        name,
                        secret,
                        client,
                        lane,
                        in_flight: 0,
                        last_used: Instant::now(),
                    });
                }
                Err(e) if began.elapsed() > START_TIMEOUT => {
                    let _ = self.master.stop_instance(&self.conf.service, &name).await;
                    return Err(StartError::NotServing {
                        name,
                        address,
                        source: e,
                    });
                }
                Err(_) => {
                    let left = START_TIMEOUT.saturating_sub(began.elapsed());
                    tokio::time::sleep(wait.min(left)).await;
                    wait = (wait * 2).min(max_wait);
                }
            }
        }
    }

    /// Stops idle instances above `min` that were idle longer than `idletime`.
    pub async fn reap_idle(&self) {
        let idletime = self.conf.instance.idletime.get();
        let expired: Vec<Instance> = {
            let mut st = self.state();
            let total = st.slots.len();
            let mut removable = total.saturating_sub(self.conf.instance.min as usize);
            // Oldest-used first.
            st.instances.sort_by_key(|i| i.last_used);
            let (mut keep, mut out) = (Vec::new(), Vec::new());
            for i in st.instances.drain(..) {
                if removable > 0 && i.in_flight == 0 && i.last_used.elapsed() >= idletime {
                    removable -= 1;
                    out.push(i);
                } else {
                    keep.push(i);
                }
            }
            st.instances = keep;
            out
        };
        for i in expired {
            tracing::info!(function = %self.conf.name, instance = %i.name, "stopping an instance idle for {}", self.conf.instance.idletime);
            self.stop(i).await;
        }
    }

    /// Stops every instance (the manager is stopping: no call is made any more).
    pub async fn stop_all(&self) {
        let all: Vec<Instance> = self.state().instances.drain(..).collect();
        for i in all {
            self.stop(i).await;
        }
    }

    pub fn stats(&self) -> Value {
        let st = self.state();
        json!({
            "instances": st.slots.len(),
            "idle": st.instances.iter().filter(|i| i.in_flight == 0).count(),
            "calls": st.instances.iter().map(|i| i.in_flight).sum::<u32>(),
            "started": st.started,
            "stopped": st.stopped,
            "batched": self.batched.load(Ordering::Relaxed),
        })
    }
}
