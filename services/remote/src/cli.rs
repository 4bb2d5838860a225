//! `baetyl remote`: the command-line entry the multi-call binary dispatches to.

use baetyl_sdk::config::ConfigFile;
use std::path::PathBuf;
use std::time::Duration;

use baetyl_sdk::logging::{self, LogFormat, LogSetup};

use crate::config::{BridgeConfig, DEFAULT_CONFIG_PATH, LoggerConfig};
use crate::error::RemoteError;

/// Arguments of `baetyl remote`.
#[derive(Debug, Clone, clap::Args)]
pub struct RemoteArgs {
    /// The bridge's config file (Baetyl v1 remote schema, extended).
    #[arg(short = 'c', long = "config", value_name = "FILE", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// Log line format: `human` or `json`; overrides `logger.format` in the config.
    #[arg(long = "log-format", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
}

/// Loads the config, sets up logging, runs the bridge until SIGTERM or SIGINT.
pub fn run_cli(args: RemoteArgs) -> Result<(), RemoteError> {
    let cfg = BridgeConfig::load(&args.config)?;
    init_logging("remote", &cfg.logger, args.log_format)?;
    let runtime = build_runtime("remote")?;
    let result = runtime.block_on(async {
        tracing::info!(config = %args.config.display(), "starting the bridge");
        crate::bridge::run(cfg, shutdown_signal()).await
    });
    if let Err(e) = &result {
        tracing::error!("{e}");
    }
    runtime.shutdown_timeout(Duration::from_secs(2));
    result
}

pub(crate) fn init_logging(
    default_service: &str,
    logger: &LoggerConfig,
    format: Option<LogFormat>,
) -> Result<(), RemoteError> {
    let service = std::env::var(baetyl_sdk::env::SERVICE_NAME)
        .unwrap_or_else(|_| default_service.to_string());
    let instance =
        std::env::var(baetyl_sdk::env::SERVICE_INSTANCE_NAME).unwrap_or_else(|_| service.clone());
    logging::init(&LogSetup {
        service: &service,
        instance: &instance,
        level: &logger.level,
        format: format.unwrap_or(logger.format),
        file: logger.path.as_deref(),
    })
    .map_err(RemoteError::Logging)
}

pub(crate) fn build_runtime(name: &str) -> Result<tokio::runtime::Runtime, RemoteError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name(name)
        .build()
        .map_err(RemoteError::Runtime)
}

/// Completes on SIGTERM or SIGINT. If the handlers cannot be installed, it never completes and logs why.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!("cannot install signal handlers: {e}; stop with SIGKILL");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
