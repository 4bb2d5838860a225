//! `baetyl agent`: load the config, set up logging, run until SIGTERM/SIGINT.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use baetyl_sdk::config::ConfigFile;
use baetyl_sdk::logging::{self, LogFormat, LogSetup};

use crate::config::{AgentConfig, DEFAULT_CONFIG_PATH};
use crate::error::{AgentError, Result};
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
    // TODO(kit): the sdk's service kit replaces this logging set-up, the runtime and the shutdown signal.
    let service = std::env::var(baetyl_sdk::env::SERVICE_NAME).ok();
    let name = service.clone().unwrap_or_else(|| "agent".into());
    let instance =
        std::env::var(baetyl_sdk::env::SERVICE_INSTANCE_NAME).unwrap_or_else(|_| name.clone());
    logging::init(&LogSetup {
        service: &name,
        instance: &instance,
        level: &cfg.logger.level,
        format: args.log_format.unwrap_or(cfg.logger.format),
        file: cfg.logger.path.as_deref(),
    })
    .map_err(AgentError::Logging)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| AgentError::io("tokio runtime", e))?;
    let result = runtime.block_on(async {
        let mut master = ApiMaster::from_env(cfg.master.token_file.clone())?;
        if cfg.master.token_file.is_none() {
            // Native mode: the master's operator token sits in its work dir, which the agent can read.
            if let Ok(v) = baetyl_sdk::client::MasterClient::from_env()?
                .inspect()
                .await
                && let Some(pwd) = v["software"]["pwd"].as_str()
            {
                master = master.with_operator_token_at(
                    &PathBuf::from(pwd).join("var/run/baetyl/operator.token"),
                );
            }
        }
        crate::agent::run(cfg, Arc::new(master), service, shutdown_signal()).await
    });
    if let Err(e) = &result {
        tracing::error!("{e}");
    }
    runtime.shutdown_timeout(Duration::from_secs(2));
    result
}

/// SIGTERM or SIGINT. TODO(kit): the sdk's one shutdown signal.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => tracing::info!("SIGTERM received"),
                _ = i.recv() => tracing::info!("SIGINT received"),
            }
        }
        _ => {
            tracing::error!("cannot listen for signals; running until killed");
            std::future::pending::<()>().await;
        }
    }
}
