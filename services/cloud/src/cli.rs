//! `baetyl cloud`: load the config, set up logging, bind the listener, run until SIGTERM/SIGINT.

use std::path::PathBuf;
use std::time::Duration;

use baetyl_sdk::config::ConfigFile;
use baetyl_sdk::logging::{self, LogFormat, LogSetup};

use crate::config::CloudConfig;
use crate::error::{CloudError, Result};

#[derive(Debug, clap::Args)]
pub struct CloudArgs {
    /// The config file (default: built-in defaults; see services/cloud/src/config.rs).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where to listen, overriding `listen` (e.g. 0.0.0.0:9443).
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// The data dir, overriding `data_dir`.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// A PostgreSQL URL, overriding `database` (also from BAETYL_CLOUD_DATABASE).
    #[arg(long, env = "BAETYL_CLOUD_DATABASE")]
    pub database: Option<String>,
    /// Log line format: `human` or `json`; overrides `logger.format`.
    #[arg(long = "log-format", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
}

pub fn run_cli(args: CloudArgs) -> Result<()> {
    let mut cfg = match &args.config {
        Some(p) => CloudConfig::load(p)?,
        None => CloudConfig::default(),
    };
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    if let Some(d) = args.data_dir {
        cfg.data_dir = d;
    }
    if let Some(db) = args.database {
        cfg.database = Some(db);
    }
    cfg.validate(
        args.config
            .as_deref()
            .unwrap_or(std::path::Path::new("command line")),
    )?;
    // TODO(kit): the sdk's service kit replaces this logging set-up, the runtime and the shutdown signal.
    logging::init(&LogSetup {
        service: "cloud",
        instance: "cloud",
        level: &cfg.logger.level,
        format: args.log_format.unwrap_or(cfg.logger.format),
        file: cfg.logger.path.as_deref(),
    })
    .map_err(CloudError::Logging)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CloudError::io("tokio runtime", e))?;
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| CloudError::Bind {
                address: cfg.listen.to_string(),
                source,
            })?;
        crate::server::run(cfg, listener, baetyl_agent::cli::shutdown_signal()).await
    });
    if let Err(e) = &result {
        tracing::error!("{e}");
    }
    runtime.shutdown_timeout(Duration::from_secs(2));
    result
}
