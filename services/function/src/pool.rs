//! A function's instance pool: instances are dynamic instances of the function's runtime service, started
//! and stopped through the master API, each serving gRPC on a port the master handed out.
//!
//! `max` bounds the instances and the concurrent calls; idle instances above `min` are stopped after
//! `idletime`; an instance that times out or whose connection fails is stopped and replaced (a call whose
//! instance died is retried on a fresh one). An error raised by the function itself keeps the instance.
//! Instances are named `<function>-<slot>` with slots 1..=max, so a restarted manager takes over (stops and
//! restarts) instances its predecessor left.
//!
//! Only the instance started is ever called: a fresh instance must answer the manager's challenge with the
//! proof derived from its secret before it gets anything (a process that bound the port first is stopped
//! being talked to, and the start fails), and its channel keeps that one proven connection: when it breaks,
//! the channel does not reconnect (someone else may hold the port by then); the instance is replaced.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::{Value, json};
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use crate::manager::FunctionConfig;
use crate::proto::FunctionMessage;
use crate::proto::function_client::FunctionClient;
use crate::runtime::{
    ERROR_TYPE_KEY, INSTANCE_CHALLENGE_KEY, INSTANCE_PROOF_KEY, INSTANCE_SECRET_ENV,
    INSTANCE_SECRET_KEY, instance_proof,
};
use baetyl_sdk::client::MasterClient;

/// How long a fresh instance may take to serve gRPC.
const START_TIMEOUT: Duration = Duration::from_secs(20);
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

struct Instance {
    slot: u32,
    name: String,
    /// Sent with every call: the instance serves no one else.
    secret: MetadataValue<Ascii>,
    client: FunctionClient<Channel>,
    last_used: Instant,
}

#[derive(Default)]
struct State {
    idle: Vec<Instance>,
    slots: BTreeSet<u32>,
    started: u64,
    stopped: u64,
}

pub struct Pool {
    conf: FunctionConfig,
    master: MasterClient,
    permits: Arc<Semaphore>,
    state: Mutex<State>,
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

/// Challenges what answers on a fresh instance's connection; Ok if it proved it holds `secret`.
pub async fn prove(client: &mut FunctionClient<Channel>, secret: &[u8]) -> Result<(), String> {
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
        Ok(())
    } else {
        Err(format!("a wrong `{INSTANCE_PROOF_KEY}`"))
    }
}

/// A random id for one invocation.
pub fn invoke_id() -> String {
    let b: [u8; 16] = rand::rng().random();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Pool {
    pub fn new(conf: FunctionConfig, master: MasterClient) -> Self {
        let max = conf.instance.max.max(1) as usize;
        Pool {
            conf,
            master,
            permits: Arc::new(Semaphore::new(max)),
            state: Mutex::new(State::default()),
        }
    }

    /// Waits for a free call slot (at most `max` calls run at once).
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
                Ok(i) => self.state.lock().await.idle.push(i),
                Err(e) => {
                    tracing::error!(function = %self.conf.name, "cannot start a minimum instance: {e}")
                }
            }
        }
    }

    /// One call, made while holding a [`Pool::permit`] (which a rule keeps across its retries).
    pub async fn call(
        &self,
        _permit: &OwnedSemaphorePermit,
        msg: FunctionMessage,
    ) -> Result<FunctionMessage, CallError> {
        let timeout = self.conf.timeout.get();
        let mut last_error = (String::new(), String::new());
        for _ in 0..ATTEMPTS {
            let idle = self.state.lock().await.idle.pop();
            let mut inst = match idle {
                Some(i) => i,
                None => self.start().await?,
            };
            // The deadline also travels to the runtime (grpc-timeout), which may give up early on its side.
            let mut req = tonic::Request::new(msg.clone());
            req.set_timeout(timeout);
            req.metadata_mut()
                .insert(INSTANCE_SECRET_KEY, inst.secret.clone());
            match tokio::time::timeout(timeout, inst.client.call(req)).await {
                Ok(Ok(resp)) => {
                    self.release(inst).await;
                    return Ok(resp.into_inner());
                }
                Ok(Err(status)) if is_deadline(&status) => {
                    tracing::warn!(function = %self.conf.name, instance = %inst.name, "call timed out after {}; replacing the instance", self.conf.timeout);
                    self.discard(inst).await;
                    return Err(CallError::Timeout(timeout.into()));
                }
                Ok(Err(status)) if is_too_large(&status) => {
                    // Over `message.length.max` on either side: the instance is fine, the message is not.
                    self.release(inst).await;
                    return Err(CallError::Function {
                        kind: MESSAGE_TOO_LARGE.to_string(),
                        message: format!(
                            "over the function's message.length.max of {}: {}",
                            self.conf.message.length.max,
                            status.message()
                        ),
                    });
                }
                Ok(Err(status)) => {
                    if let Some(kind) = status
                        .metadata()
                        .get(ERROR_TYPE_KEY)
                        .and_then(|v| v.to_str().ok())
                    {
                        let kind = kind.to_string();
                        self.release(inst).await;
                        return Err(CallError::Function {
                            kind,
                            message: status.message().to_string(),
                        });
                    }
                    tracing::warn!(function = %self.conf.name, instance = %inst.name, "call failed ({}); replacing the instance", status.message());
                    last_error = (inst.name.clone(), status.message().to_string());
                    self.discard(inst).await;
                }
                Err(_) => {
                    tracing::warn!(function = %self.conf.name, instance = %inst.name, "call timed out after {}; replacing the instance", self.conf.timeout);
                    self.discard(inst).await;
                    return Err(CallError::Timeout(timeout.into()));
                }
            }
        }
        let (instance, message) = last_error;
        Err(CallError::Unavailable { instance, message })
    }

    async fn release(&self, mut inst: Instance) {
        inst.last_used = Instant::now();
        self.state.lock().await.idle.push(inst);
    }

    async fn discard(&self, inst: Instance) {
        if let Err(e) = self
            .master
            .stop_instance(&self.conf.service, &inst.name)
            .await
        {
            tracing::warn!(instance = %inst.name, "cannot stop: {e}");
        }
        let mut st = self.state.lock().await;
        st.slots.remove(&inst.slot);
        st.stopped += 1;
    }

    async fn start(&self) -> Result<Instance, StartError> {
        let slot = {
            let mut st = self.state.lock().await;
            let slot = (1..=self.conf.instance.max)
                .find(|s| !st.slots.contains(s))
                .ok_or(StartError::NoSlot(self.conf.instance.max))?;
            st.slots.insert(slot);
            slot
        };
        match self.start_in(slot).await {
            Ok(i) => {
                self.state.lock().await.started += 1;
                Ok(i)
            }
            Err(e) => {
                self.state.lock().await.slots.remove(&slot);
                Err(e)
            }
        }
    }

    async fn start_in(&self, slot: u32) -> Result<Instance, StartError> {
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
                    let mut client = FunctionClient::new(ch)
                        .max_decoding_message_size(limit)
                        .max_encoding_message_size(limit);
                    if self.conf.verify_runtime
                        && let Err(why) = prove(&mut client, secret.as_bytes()).await
                    {
                        tracing::error!(function = %self.conf.name, instance = %name, %address, "refusing the instance: {why}");
                        let _ = self.master.stop_instance(&self.conf.service, &name).await;
                        return Err(StartError::Unproven { name, address, why });
                    }
                    tracing::info!(function = %self.conf.name, instance = %name, %address, "instance ready in {:?}", began.elapsed());
                    return Ok(Instance {
                        slot,
                        name,
                        secret,
                        client,
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
            let mut st = self.state.lock().await;
            let total = st.slots.len();
            let mut removable = total.saturating_sub(self.conf.instance.min as usize);
            let mut keep = Vec::new();
            let mut out = Vec::new();
            // Oldest-used first.
            st.idle.sort_by_key(|i| i.last_used);
            for i in st.idle.drain(..) {
                if removable > 0 && i.last_used.elapsed() >= idletime {
                    removable -= 1;
                    out.push(i);
                } else {
                    keep.push(i);
                }
            }
            st.idle = keep;
            out
        };
        for i in expired {
            tracing::info!(function = %self.conf.name, instance = %i.name, "stopping an instance idle for {}", self.conf.instance.idletime);
            self.discard(i).await;
        }
    }

    pub async fn stop_all(&self) {
        let idle: Vec<Instance> = self.state.lock().await.idle.drain(..).collect();
        for i in idle {
            self.discard(i).await;
        }
    }

    pub async fn stats(&self) -> Value {
        let st = self.state.lock().await;
        json!({
            "instances": st.slots.len(),
            "idle": st.idle.len(),
            "started": st.started,
            "stopped": st.stopped,
        })
    }
}
