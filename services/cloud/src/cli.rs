//! `baetyl cloud`: load the config, set up logging, bind the listener, run until SIGTERM/SIGINT.

use std::path::PathBuf;

use baetyl_sdk::config::ConfigFile;
use baetyl_sdk::logging::LogFormat;
use baetyl_sdk::service::{Kit, shutdown_signal};

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
    Kit::new("cloud")
        .init(&cfg.logger, args.log_format)?
        .block_on(async {
            let listener = tokio::net::TcpListener::bind(cfg.listen)
                .await
                .map_err(|source| CloudError::Bind {
                    address: cfg.listen.to_string(),
                    source,
                })?;
            crate::server::run(cfg, listener, shutdown_signal()).await
        })
}
