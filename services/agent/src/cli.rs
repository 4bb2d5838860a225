//! `baetyl agent`: load the config, set up logging, run until SIGTERM/SIGINT.

use std::path::PathBuf;
use std::sync::Arc;

use baetyl_sdk::config::ConfigFile;
use baetyl_sdk::logging::LogFormat;
use baetyl_sdk::service::{Kit, shutdown_signal};

use crate::config::{AgentConfig, DEFAULT_CONFIG_PATH};
use crate::error::Result;
use crate::master::ApiMaster;

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// The agent's config file.
    #[arg(short = 'c', long = "config", value_name = "FILE", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// Log line format: `human` or `json`; overrides `logger.format` in the config.
    #[arg(long = "log-format", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
}

pub fn run_cli(args: AgentArgs) -> Result<()> {
    let cfg = AgentConfig::load(&args.config)?;
    // The master names the service; the agent tells the cloud which service it is (it keeps it on updates).
    let service = std::env::var(baetyl_sdk::env::SERVICE_NAME).ok();
    let kit = Kit::new("agent")
        .worker_threads(2)
        .init(&cfg.logger, args.log_format)?;
    kit.block_on(async {
        // The agent role on the master: this service named in the master's conf.yml `server.agents` (its own
        // service token), or the operator token from `master.token_file`.
        let master = ApiMaster::from_env(cfg.master.token_file.clone())?;
        crate::agent::run(cfg, Arc::new(master), service, shutdown_signal()).await
    })
}
