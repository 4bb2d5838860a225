//! Function runtimes: gRPC servers of `baetyl.Function/Call` for the functions named in their config.
//!
//! Callers: the function manager starts each instance with a fresh secret in `FUNCTION_INSTANCE_SECRET` and sends
//! it as `baetyl-instance-secret` metadata on every call; a runtime started with one refuses every call without it
//! (Unauthenticated; compared in constant time). The other way round, before it sends anything, the manager
//! challenges a fresh instance (`baetyl-instance-challenge`, a random value); the runtime runs nothing on a
//! challenge and answers `baetyl-instance-proof` = HMAC-SHA256(secret, "baetyl-instance-proof:" + challenge),
//! so a process that bound the instance's port first (an impostor) is found out before it sees the secret or
//! an input. Instances keep v1's TCP contract
//! (`BAETYL_SERVICE_INSTANCE_ADDRESS`), which also works when the manager and a runtime are different containers
//! on the host's network, where a unix socket in the runtime's instance dir would not be reachable by the manager.
//!
//! `baetyl runtime-sql` serves SQL handlers in-process. `baetyl runtime-python` validates its config here
//! (same schema, same errors) and hands over to the Python program in `runtimes/python/runtime.py`, which
//! serves the same protocol with user code.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use baetyl_sdk::ConfigError;
use baetyl_sdk::config::{ByteSize, ConfigFile, HumanDuration};
use baetyl_sdk::logging::{LogFormat, LoggerConfig};
use baetyl_sdk::service::{Kit, shutdown_signal};
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};

use crate::error::FunctionError;
use crate::proto::FunctionMessage;
use crate::proto::function_batch_server::{FunctionBatch, FunctionBatchServer};
use crate::proto::function_server::{Function, FunctionServer};
use crate::proto::{FunctionBatchReply, FunctionBatchRequest, FunctionOutcome};
use crate::sql::{MessageContext, SqlHandler};

/// The environment variable in which the function manager hands a dynamic instance its secret.
pub const INSTANCE_SECRET_ENV: &str = "FUNCTION_INSTANCE_SECRET";
/// The gRPC metadata key carrying it on every call.
pub const INSTANCE_SECRET_KEY: &str = "baetyl-instance-secret";

/// The manager's challenge to a fresh instance, and the instance's answer (see the module's doc).
pub const INSTANCE_CHALLENGE_KEY: &str = "baetyl-instance-challenge";
pub const INSTANCE_PROOF_KEY: &str = "baetyl-instance-proof";

/// The proof an instance holding `secret` answers `challenge` with: HMAC-SHA256(secret,
/// "baetyl-instance-proof:" + challenge) as hex (runtime.py computes the same).
pub fn instance_proof(secret: &[u8], challenge: &[u8]) -> String {
    let mut msg = b"baetyl-instance-proof:".to_vec();
    msg.extend_from_slice(challenge);
    hmac_sha256(secret, &msg)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// RFC 2104 over SHA-256 (the workspace's sha2; the `hmac` crate's current line needs another digest version).
fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut k = [0u8; 64];
    if key.len() > k.len() {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// In an instance's answer to the challenge: it serves `baetyl.FunctionBatch`, taking up to this many
/// messages in one batch.
pub const BATCH_KEY: &str = "baetyl-batch";

/// The most messages in one batch (what our runtimes advertise).
pub const MAX_BATCH: usize = 64;

/// A batch's size limit from the limit of one message: the messages a manager puts in one batch add up to
/// at most one message's limit (see the pool), plus the framing of each.
pub fn batch_limit(message_limit: usize) -> usize {
    message_limit.saturating_add(MAX_BATCH * 16)
}

/// Metadata key carrying the error's type name (an exception class, `PayloadError`, ...).
pub const ERROR_TYPE_KEY: &str = "baetyl-error-type";

/// A runtime's `etc/baetyl/service.yml` (v1 schema).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    pub functions: Vec<FunctionSpec>,
    /// v1's `logger:` section; the Python runtime gets it too.
    #[serde(default)]
    pub logger: LoggerConfig,
    /// v1's `server:` section (address, limits, TLS).
    #[serde(default)]
    pub server: FunctionServerConfig,
}

/// v1's `server:` section (v1's `FunctionServerConfig`), in a runtime's config and in the function manager's,
/// where a non-empty `address` makes the manager serve `baetyl.Function/Call` itself.
///
/// - `address`: where to serve; in a runtime, `BAETYL_SERVICE_INSTANCE_ADDRESS` (set by the manager) and
///   `--listen` come first, as in v1.
/// - `timeout` (default 2m): the longest one served call may take (the manager), the grace given to calls
///   in flight at stop (the Python runtime, as v1's).
/// - `message.length.max` (default 4m, v1's): the largest request or answer, in both directions.
/// - `concurrent.max`: most calls at once on one connection (HTTP/2 streams, v1's MaxConcurrentStreams);
///   0 = the transport's default.
/// - `workers.max`: the Python runtime's thread pool (default 4); other runtimes report it ignored.
/// - `ca`, `cert`, `key`: TLS for the manager's server. A runtime reports them ignored: its only caller,
///   the manager, talks to it over loopback with a per-instance secret (v1's manager could not present
///   certificates to a runtime either).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FunctionServerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    #[serde(default)]
    pub message: MessageLimit,
    #[serde(default)]
    pub concurrent: MaxCount,
    #[serde(default)]
    pub workers: MaxCount,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

/// v1's default `server.timeout`.
pub const DEFAULT_SERVER_TIMEOUT: Duration = Duration::from_secs(120);

/// `{max: N}`; 0 means "the default".
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MaxCount {
    #[serde(default)]
    pub max: u32,
}

/// `message: {length: {max: 4m}}` of v1's function client and server configs (default 4 MiB, gRPC's).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MessageLimit {
    #[serde(default)]
    pub length: LengthLimit,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LengthLimit {
    #[serde(default = "default_grpc_length")]
    pub max: ByteSize,
}

impl Default for LengthLimit {
    fn default() -> Self {
        LengthLimit {
            max: default_grpc_length(),
        }
    }
}

fn default_grpc_length() -> ByteSize {
    ByteSize(4 << 20)
}

/// The largest gRPC message any limit may allow (the manager's MQTT packet limit).
pub const MAX_GRPC_LENGTH: u64 = 64 << 20;

impl MessageLimit {
    /// The limit in bytes, after [`MessageLimit::check`].
    pub fn bytes(&self) -> usize {
        self.length.max.0 as usize
    }

    /// Between 1k and 64m; `key` names the section in the error.
    pub fn check(&self, key: &str) -> Result<(), String> {
        let max = self.length.max.0;
        if (1024..=MAX_GRPC_LENGTH).contains(&max) {
            Ok(())
        } else {
            Err(format!(
                "key `{key}.length.max`: {} is out of range; use between 1k and 64m (default 4m)",
                self.length.max
            ))
        }
    }
}

impl FunctionServerConfig {
    /// Checks the limits and that `cert` and `key` come together; `key` names the section.
    pub fn check(&self, key: &str) -> Result<(), String> {
        self.message.check(&format!("{key}.message"))?;
        if self.cert.is_some() != self.key.is_some() {
            return Err(format!("keys `{key}.cert` and `{key}.key` go together"));
        }
        if self.ca.is_some() && self.cert.is_none() {
            return Err(format!(
                "key `{key}.ca` (clients must present a certificate) needs `{key}.cert` and `{key}.key`"
            ));
        }
        if let Some(a) = &self.address
            && !a.is_empty()
        {
            parse_listen(a).map_err(|e| format!("key `{key}.address`: {e}"))?;
        }
        Ok(())
    }

    /// The TLS of the server when `cert` and `key` are set (checked to come together).
    pub fn server_tls(&self) -> Option<baetyl_sdk::mqtt::ServerTls> {
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some(baetyl_sdk::mqtt::ServerTls {
                cert: cert.clone(),
                key: key.clone(),
                ca: self.ca.clone(),
            }),
            _ => None,
        }
    }

    /// The address when one is set (v1: an empty address serves nothing).
    pub fn address(&self) -> Option<&str> {
        self.address.as_deref().filter(|a| !a.is_empty())
    }

    /// Applies `message.length.max` and `concurrent.max` to a tonic server.
    pub fn limits<S: Function>(&self, svc: FunctionServer<S>) -> FunctionServer<S> {
        svc.max_decoding_message_size(self.message.bytes())
            .max_encoding_message_size(self.message.bytes())
    }

    /// A tonic server builder with `concurrent.max` and `timeout` applied.
    pub fn builder(&self) -> tonic::transport::Server {
        let b = tonic::transport::Server::builder();
        let b = match self.concurrent.max {
            0 => b,
            n => b.max_concurrent_streams(n),
        };
        match self.timeout {
            Some(t) => b.timeout(t.get()),
            None => b,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionSpec {
    pub name: String,
    /// SQL: the statement. Python: `module.function`.
    pub handler: String,
    /// Python: the directory holding the module (relative to the runtime's work dir).
    #[serde(default)]
    pub codedir: Option<String>,
}

impl ConfigFile for RuntimeConfig {
    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let mut seen = std::collections::BTreeSet::new();
        for f in &self.functions {
            if !seen.insert(&f.name) {
                return Err(ConfigError::invalid(
                    path,
                    format!("function `{}` is defined twice", f.name),
                ));
            }
        }
        if self.functions.is_empty() {
            return Err(ConfigError::invalid(
                path,
                "key `functions`: name at least one function",
            ));
        }
        self.server
            .check("server")
            .map_err(|m| ConfigError::invalid(path, m))?;
        Ok(())
    }
}

/// `tcp://host:port` or `host:port`.
pub fn parse_listen(address: &str) -> Result<SocketAddr, FunctionError> {
    let a = address.strip_prefix("tcp://").unwrap_or(address);
    let a = if let Some(port) = a.strip_prefix(':') {
        format!("0.0.0.0:{port}")
    } else {
        a.to_string()
    };
    a.parse().map_err(|source| FunctionError::ListenAddress {
        address: address.to_string(),
        source,
    })
}

/// The SQL runtime: one compiled handler per function.
pub struct SqlRuntime {
    functions: BTreeMap<String, SqlHandler>,
}

impl SqlRuntime {
    /// Compiles every handler; invalid SQL is an error naming the function and the position.
    pub fn new(cfg: &RuntimeConfig, origin: &Path) -> Result<Self, FunctionError> {
        let mut functions = BTreeMap::new();
        for f in &cfg.functions {
            let h = SqlHandler::parse(&f.handler)
                .map_err(|e| ConfigError::invalid(origin, format!("function `{}`: {e}", f.name)))?;
            functions.insert(f.name.clone(), h);
        }
        Ok(SqlRuntime { functions })
    }

    /// One message through its function: the reply, or the error as a failed Call answers it.
    fn run(&self, msg: FunctionMessage) -> Result<FunctionMessage, Status> {
        let handler = self
            .functions
            .get(&msg.function_name)
            .ok_or_else(|| unknown_function(&msg.function_name))?;
        let ctx = MessageContext {
            topic: msg.topic.clone(),
            qos: msg.qos,
            client_id: String::new(),
            timestamp: msg.timestamp,
            function_name: msg.function_name.clone(),
        };
        let payload = match handler.run(&msg.payload, &ctx) {
            Ok(Some(v)) => serde_json::to_vec(&v).unwrap_or_default(),
            Ok(None) => Vec::new(),
            Err(e @ FunctionError::Payload(_)) => {
                return Err(error_status(
                    tonic::Code::InvalidArgument,
                    "PayloadError",
                    e.to_string(),
                ));
            }
            Err(e) => {
                return Err(error_status(
                    tonic::Code::Internal,
                    "EvalError",
                    e.to_string(),
                ));
            }
        };
        Ok(FunctionMessage { payload, ..msg })
    }
}

/// The answer to a call of a function that is not served here.
pub(crate) fn unknown_function(name: &str) -> Status {
    error_status(
        tonic::Code::NotFound,
        "UnknownFunction",
        FunctionError::UnknownFunction(name.to_string()).to_string(),
    )
}

pub(crate) fn error_status(code: tonic::Code, kind: &str, message: String) -> Status {
    let mut s = Status::new(code, message);
    if let Ok(v) = kind.parse() {
        s.metadata_mut().insert(ERROR_TYPE_KEY, v);
    }
    s
}

#[tonic::async_trait]
impl Function for SqlRuntime {
    async fn call(
        &self,
        request: Request<FunctionMessage>,
    ) -> Result<Response<FunctionMessage>, Status> {
        self.run(request.into_inner()).map(Response::new)
    }
}

#[tonic::async_trait]
impl FunctionBatch for SqlRuntime {
    async fn call_many(
        &self,
        request: Request<FunctionBatchRequest>,
    ) -> Result<Response<FunctionBatchReply>, Status> {
        let messages = request.into_inner().messages;
        if messages.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "{} messages in one batch; at most {MAX_BATCH}",
                messages.len()
            )));
        }
        let outcomes = messages.into_iter().map(|m| outcome(self.run(m))).collect();
        Ok(Response::new(FunctionBatchReply { outcomes }))
    }
}

/// A batch item's outcome from what a Call would have answered.
fn outcome(result: Result<FunctionMessage, Status>) -> FunctionOutcome {
    match result {
        Ok(reply) => FunctionOutcome {
            reply: Some(reply),
            ..FunctionOutcome::default()
        },
        Err(status) => FunctionOutcome {
            reply: None,
            error_type: status
                .metadata()
                .get(ERROR_TYPE_KEY)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("Unknown")
                .to_string(),
            error: status.message().to_string(),
        },
    }
}

/// Lets through only calls that carry the instance secret, when the runtime has one.
#[derive(Clone)]
pub struct RequireSecret(Option<std::sync::Arc<[u8]>>);

impl RequireSecret {
    /// `None`: every caller is served (a runtime started by hand, without a manager).
    pub fn new(secret: Option<&str>) -> Self {
        RequireSecret(secret.map(|s| std::sync::Arc::from(s.as_bytes())))
    }

    /// The secret the function manager passed in `FUNCTION_INSTANCE_SECRET` (an empty value is none).
    pub fn from_env() -> Self {
        let secret = std::env::var(INSTANCE_SECRET_ENV)
            .ok()
            .filter(|s| !s.is_empty());
        Self::new(secret.as_deref())
    }

    pub fn is_required(&self) -> bool {
        self.0.is_some()
    }
}

impl tonic::service::Interceptor for RequireSecret {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        use subtle::ConstantTimeEq;
        let Some(want) = &self.0 else {
            return Ok(req);
        };
        if let Some(challenge) = req.metadata().get(INSTANCE_CHALLENGE_KEY) {
            // Answered here, as a refusal carrying the proof: no function ever runs on a challenge.
            let proof = instance_proof(want, challenge.as_bytes());
            let mut status =
                Status::failed_precondition("instance proof: no function runs on a challenge");
            if let Ok(v) = proof.parse() {
                status.metadata_mut().insert(INSTANCE_PROOF_KEY, v);
            }
            // Every runtime that checks the secret is one of ours, and serves FunctionBatch.
            status.metadata_mut().insert(
                BATCH_KEY,
                tonic::metadata::MetadataValue::from(MAX_BATCH as u64),
            );
            return Err(status);
        }
        let got = req
            .metadata()
            .get(INSTANCE_SECRET_KEY)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if bool::from(got.ct_eq(want)) {
            Ok(req)
        } else {
            Err(Status::unauthenticated(format!(
                "this function instance serves only the function manager that started it: `{INSTANCE_SECRET_KEY}` is missing or wrong"
            )))
        }
    }
}

/// A TCP listener on `addr`, or an error naming it.
pub(crate) async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, FunctionError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| FunctionError::Bind {
            address: addr,
            source,
        })
}

/// Serves `svc` on `addr`, to callers that `secret` lets through, with `server`'s limits, until `shutdown`
/// completes.
pub async fn serve<S>(
    runtime: S,
    addr: SocketAddr,
    server: FunctionServerConfig,
    secret: RequireSecret,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), FunctionError>
where
    S: Function + FunctionBatch,
{
    let runtime = std::sync::Arc::new(runtime);
    let listener = bind(addr).await?;
    if secret.is_required() {
        tracing::info!(%addr, "function runtime listening (callers must present the instance secret)");
    } else {
        tracing::warn!(%addr, "function runtime listening without {INSTANCE_SECRET_ENV}: any caller is served");
    }
    server
        .builder()
        .add_service(tonic::service::interceptor::InterceptedService::new(
            server.limits(FunctionServer::from_arc(runtime.clone())),
            secret.clone(),
        ))
        .add_service(tonic::service::interceptor::InterceptedService::new(
            FunctionBatchServer::from_arc(runtime)
                .max_decoding_message_size(batch_limit(server.message.bytes()))
                .max_encoding_message_size(batch_limit(server.message.bytes())),
            secret,
        ))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            shutdown,
        )
        .await
        .map_err(FunctionError::Serve)
}

/// Why a runtime ignores `server.ca/cert/key` (logged once at start, by the Rust and the Python runtimes).
pub const RUNTIME_TLS_IGNORED: &str = "a runtime instance serves only the function manager that started it, \
     over loopback with a per-instance secret (v1's manager could not present certificates to a runtime either)";

impl FunctionServerConfig {
    /// The TLS keys that are set, by name.
    pub fn tls_keys_set(&self) -> Vec<&'static str> {
        [
            ("server.ca", self.ca.is_some()),
            ("server.cert", self.cert.is_some()),
            ("server.key", self.key.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect()
    }
}

/// Logs, once at start, the `server` keys the SQL runtime accepts from v1 configs but cannot use, with why.
fn log_ignored_server_keys(server: &FunctionServerConfig) {
    let tls = server.tls_keys_set();
    if !tls.is_empty() {
        tracing::warn!("ignored {}: {RUNTIME_TLS_IGNORED}", tls.join(", "));
    }
    if server.workers.max != 0 {
        tracing::warn!(
            "ignored server.workers.max: it sizes the Python runtime's thread pool; this runtime serves calls \
             on its async runtime (server.concurrent.max bounds the calls at once)"
        );
    }
}

#[derive(Debug, clap::Args)]
pub struct RuntimeArgs {
    /// The runtime's config (v1 schema: functions with name, handler, codedir).
    #[arg(short = 'c', long, default_value = "etc/baetyl/service.yml")]
    pub config: PathBuf,
    /// Address to serve on; default: $BAETYL_SERVICE_INSTANCE_ADDRESS (set by the function manager).
    #[arg(long)]
    pub listen: Option<String>,
    /// Log line format: `human` or `json`; overrides `logger.format` in the config.
    #[arg(long = "log-format", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
}

/// `--listen`, else the instance address the manager set, else v1's `server.address` in the config.
pub(crate) fn listen_address(
    args: &RuntimeArgs,
    cfg: &RuntimeConfig,
) -> Result<SocketAddr, FunctionError> {
    let address = args
        .listen
        .clone()
        .or_else(|| std::env::var(baetyl_sdk::env::SERVICE_INSTANCE_ADDRESS).ok())
        .or_else(|| cfg.server.address().map(str::to_string))
        .ok_or(FunctionError::NoListenAddress)?;
    parse_listen(&address)
}

/// `baetyl runtime-sql`.
pub fn run_sql_cli(args: RuntimeArgs) -> Result<(), FunctionError> {
    let cfg = RuntimeConfig::load(&args.config)?;
    let runtime = SqlRuntime::new(&cfg, &args.config)?;
    let addr = listen_address(&args, &cfg)?;
    Kit::new("runtime-sql")
        .worker_threads(1)
        .init(&cfg.logger, args.log_format)?
        .block_on(async {
            log_ignored_server_keys(&cfg.server);
            serve(
                runtime,
                addr,
                cfg.server.clone(),
                RequireSecret::from_env(),
                shutdown_signal(),
            )
            .await
        })
}

/// The Python runtime program, embedded so the binary alone can start it.
pub const PYTHON_RUNTIME: &str = include_str!("../runtimes/python/runtime.py");

/// `baetyl runtime-python`: validates the config, then replaces this process with the Python runtime
/// (interpreter: $BAETYL_PYTHON, else `python3`), passing it the config as JSON, `logger` included with
/// `--log-format` applied: the Python side logs in the same line format as every other role.
pub fn run_python_cli(args: RuntimeArgs) -> Result<(), FunctionError> {
    use std::os::unix::process::CommandExt;
    let mut cfg = RuntimeConfig::load(&args.config)?;
    check_handlers(&cfg, &args.config)?;
    let addr = listen_address(&args, &cfg)?;
    let python = std::env::var("BAETYL_PYTHON").unwrap_or_else(|_| "python3".to_string());
    cfg.logger.format = args.log_format.unwrap_or(cfg.logger.format);
    let json = python_config_json(&cfg)?;
    let err = std::process::Command::new(&python)
        .arg("-c")
        .arg(PYTHON_RUNTIME)
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--config-json")
        .arg(json)
        .exec();
    Err(FunctionError::Python {
        python,
        source: err,
    })
}

/// The config as the Python and Node.js programs read it: `server` resolved to numbers (bytes, seconds, counts), and the
/// keys it ignores listed in `server.ignored`, which it logs with its own logger at start.
pub fn python_config_json(cfg: &RuntimeConfig) -> Result<String, FunctionError> {
    let mut json = serde_json::to_value(cfg).map_err(FunctionError::ConfigJson)?;
    let s = &cfg.server;
    json["server"] = serde_json::json!({
        "max_message_length": s.message.bytes(),
        "workers": s.workers.max,
        "concurrent": s.concurrent.max,
        "grace": s.timeout.map(|t| t.get().as_secs_f64()),
        "ignored": s.tls_keys_set(),
        "ignored_reason": RUNTIME_TLS_IGNORED,
    });
    serde_json::to_string(&json).map_err(FunctionError::ConfigJson)
}

/// The handlers of a Python or Node.js runtime: each `MODULE.FUNCTION` (the last dot splits them).
pub(crate) fn check_handlers(cfg: &RuntimeConfig, path: &Path) -> Result<(), FunctionError> {
    for f in &cfg.functions {
        if f.handler
            .rsplit_once('.')
            .is_none_or(|(m, func)| m.is_empty() || func.is_empty())
        {
            return Err(ConfigError::invalid(
                path,
                format!(
                    "function `{}`: handler `{}` must be MODULE.FUNCTION (e.g. index.handler)",
                    f.name, f.handler
                ),
            )
            .into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        let hex = |b: [u8; 32]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        // Test cases 2 and 6 (a key longer than the block).
        assert_eq!(
            hex(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex(hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(parse_listen("tcp://127.0.0.1:5000").unwrap().port(), 5000);
        assert_eq!(parse_listen("127.0.0.1:5001").unwrap().port(), 5001);
        assert_eq!(parse_listen(":5002").unwrap().to_string(), "0.0.0.0:5002");
        assert!(matches!(
            parse_listen("nowhere"),
            Err(FunctionError::ListenAddress { .. })
        ));
    }

    #[test]
    fn logger_goes_to_the_python_runtime() {
        let cfg = RuntimeConfig::parse(
            "functions: [{name: f, handler: index.handler}]\nlogger: {level: warn, format: json}\n",
            Path::new("service.yml"),
        )
        .expect("valid");
        let json = serde_json::to_value(&cfg).expect("json");
        assert_eq!(json["logger"]["level"], "warn");
        assert_eq!(json["logger"]["format"], "json");
        let e = RuntimeConfig::parse(
            "functions: [{name: f, handler: h}]\nlogger: {levle: info}\n",
            Path::new("service.yml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("key `logger.levle`"), "{e}");
    }
}
