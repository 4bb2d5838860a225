//! Function runtimes: gRPC servers of `baetyl.Function/Call` for the functions named in their config.
//!
//! `baetyl runtime-sql` serves SQL handlers in-process. `baetyl runtime-python` validates its config here
//! (same schema, same errors) and hands over to the Python program in `runtimes/python/runtime.py`, which
//! serves the same protocol with user code.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};

use crate::error::FunctionError;
use crate::proto::FunctionMessage;
use crate::proto::function_server::{Function, FunctionServer};
use crate::sql::{MessageContext, SqlHandler};

/// Metadata key carrying the error's type name (an exception class, `PayloadError`, ...).
pub const ERROR_TYPE_KEY: &str = "baetyl-error-type";

/// A runtime's `etc/baetyl/service.yml` (v1 schema).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    pub functions: Vec<FunctionSpec>,
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

impl RuntimeConfig {
    pub fn load(path: &Path) -> Result<Self, FunctionError> {
        let cfg: RuntimeConfig = baetyl_sdk::config::load_yaml(path)?;
        let mut seen = std::collections::BTreeSet::new();
        for f in &cfg.functions {
            if !seen.insert(&f.name) {
                return Err(baetyl_sdk::ConfigError::invalid(
                    path,
                    format!("function `{}` is defined twice", f.name),
                )
                .into());
            }
        }
        if cfg.functions.is_empty() {
            return Err(baetyl_sdk::ConfigError::invalid(
                path,
                "key `functions`: name at least one function",
            )
            .into());
        }
        Ok(cfg)
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
    a.parse().map_err(|e| FunctionError::Listen {
        address: address.to_string(),
        message: format!("{e}; write HOST:PORT or tcp://HOST:PORT"),
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
            let h = SqlHandler::parse(&f.handler).map_err(|e| {
                FunctionError::Config(baetyl_sdk::ConfigError::invalid(
                    origin,
                    format!("function `{}`: {e}", f.name),
                ))
            })?;
            functions.insert(f.name.clone(), h);
        }
        Ok(SqlRuntime { functions })
    }

    pub fn into_server(self) -> FunctionServer<Self> {
        FunctionServer::new(self)
    }
}

fn error_status(code: tonic::Code, kind: &str, message: String) -> Status {
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
        let msg = request.into_inner();
        let handler = self.functions.get(&msg.function_name).ok_or_else(|| {
            error_status(
                tonic::Code::NotFound,
                "UnknownFunction",
                FunctionError::UnknownFunction(msg.function_name.clone()).to_string(),
            )
        })?;
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
            Err(FunctionError::Payload(m)) => {
                return Err(error_status(
                    tonic::Code::InvalidArgument,
                    "PayloadError",
                    m,
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
        Ok(Response::new(FunctionMessage { payload, ..msg }))
    }
}

/// Serves `svc` on `addr` until `shutdown` completes.
pub async fn serve<S>(
    svc: FunctionServer<S>,
    addr: SocketAddr,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), FunctionError>
where
    S: Function,
{
    let listener =
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| FunctionError::Listen {
                address: addr.to_string(),
                message: e.to_string(),
            })?;
    tracing::info!(%addr, "function runtime listening");
    tonic::transport::Server::builder()
        .add_service(svc)
        .serve_with_incoming_shutdown(tokio_stream_from(listener), shutdown)
        .await
        .map_err(|e| FunctionError::Other(format!("gRPC server: {e}")))
}

fn tokio_stream_from(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener)
}

#[derive(Debug, clap::Args)]
pub struct RuntimeArgs {
    /// The runtime's config (v1 schema: functions with name, handler, codedir).
    #[arg(short = 'c', long, default_value = "etc/baetyl/service.yml")]
    pub config: PathBuf,
    /// Address to serve on; default: $BAETYL_SERVICE_INSTANCE_ADDRESS (set by the function manager).
    #[arg(long)]
    pub listen: Option<String>,
}

fn listen_address(args: &RuntimeArgs) -> Result<SocketAddr, FunctionError> {
    let address = args
        .listen
        .clone()
        .or_else(|| std::env::var(baetyl_sdk::env::SERVICE_INSTANCE_ADDRESS).ok())
        .ok_or_else(|| {
            FunctionError::Other(format!(
                "no address to serve on: pass --listen HOST:PORT or set {}",
                baetyl_sdk::env::SERVICE_INSTANCE_ADDRESS
            ))
        })?;
    parse_listen(&address)
}

fn init_logging(role: &str) {
    let instance =
        std::env::var(baetyl_sdk::env::SERVICE_INSTANCE_NAME).unwrap_or_else(|_| role.to_string());
    let service = std::env::var(baetyl_sdk::env::SERVICE_NAME).unwrap_or_else(|_| role.to_string());
    let _ = baetyl_sdk::logging::init(&baetyl_sdk::logging::LogSetup {
        service: &service,
        instance: &instance,
        level: "info",
        format: baetyl_sdk::logging::LogFormat::Human,
        file: None,
    });
}

/// `baetyl runtime-sql`.
pub fn run_sql_cli(args: RuntimeArgs) -> Result<(), FunctionError> {
    init_logging("runtime-sql");
    let cfg = RuntimeConfig::load(&args.config)?;
    let runtime = SqlRuntime::new(&cfg, &args.config)?;
    let addr = listen_address(&args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| FunctionError::Other(format!("async runtime: {e}")))?;
    rt.block_on(serve(runtime.into_server(), addr, shutdown_signal()))
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The Python runtime program, embedded so the binary alone can start it.
pub const PYTHON_RUNTIME: &str = include_str!("../runtimes/python/runtime.py");

/// `baetyl runtime-python`: validates the config, then replaces this process with the Python runtime
/// (interpreter: $BAETYL_PYTHON, else `python3`), passing it the config as JSON.
pub fn run_python_cli(args: RuntimeArgs) -> Result<(), FunctionError> {
    use std::os::unix::process::CommandExt;
    let cfg = RuntimeConfig::load(&args.config)?;
    for f in &cfg.functions {
        if f.handler
            .split_once('.')
            .is_none_or(|(m, func)| m.is_empty() || func.is_empty())
        {
            return Err(baetyl_sdk::ConfigError::invalid(
                &args.config,
                format!(
                    "function `{}`: handler `{}` must be MODULE.FUNCTION (e.g. index.handler)",
                    f.name, f.handler
                ),
            )
            .into());
        }
    }
    let addr = listen_address(&args)?;
    let python = std::env::var("BAETYL_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let json = serde_json::to_string(&cfg).map_err(|e| FunctionError::Other(e.to_string()))?;
    let err = std::process::Command::new(&python)
        .arg("-c")
        .arg(PYTHON_RUNTIME)
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--config-json")
        .arg(json)
        .exec();
    Err(FunctionError::Other(format!(
        "cannot run the Python runtime with `{python}`: {err} (set BAETYL_PYTHON to a Python 3 with grpcio)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(parse_listen("tcp://127.0.0.1:5000").unwrap().port(), 5000);
        assert_eq!(parse_listen("127.0.0.1:5001").unwrap().port(), 5001);
        assert_eq!(parse_listen(":5002").unwrap().to_string(), "0.0.0.0:5002");
        assert!(parse_listen("nowhere").is_err());
    }
}
