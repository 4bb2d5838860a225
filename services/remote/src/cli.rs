//! `baetyl remote`: the command-line entry the multi-call binary dispatches to.

use baetyl_sdk::config::ConfigFile;
use std::path::PathBuf;

use baetyl_sdk::logging::LogFormat;
use baetyl_sdk::service::{Kit, shutdown_signal};

use crate::config::{BridgeConfig, DEFAULT_CONFIG_PATH};
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
    let service = Kit::new("remote")
        .worker_threads(2)
        .init(&cfg.logger, args.log_format)?;
    service.block_on(async {
        tracing::info!(config = %args.config.display(), "starting the bridge");
        crate::bridge::run(cfg, shutdown_signal()).await
    })
}
