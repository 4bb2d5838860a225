//! `baetyl hub`: the command-line entry the multi-call binary dispatches to.

use baetyl_sdk::config::ConfigFile;
use std::path::PathBuf;
use std::time::Duration;

use baetyl_sdk::logging::{self, LogFormat, LogSetup};

use crate::config::{DEFAULT_CONFIG_PATH, HubConfig};
use crate::error::HubError;

/// Arguments of `baetyl hub`.
#[derive(Debug, Clone, clap::Args)]
pub struct HubArgs {
    /// The hub's config file (Baetyl v1 hub schema).
    #[arg(short = 'c', long = "config", value_name = "FILE", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// Log line format: `human` or `json`; overrides `logger.format` in the config.
    #[arg(long = "log-format", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
}

/// How long the runtime may take to wind down after the hub stopped; a store's background task must not keep
/// the process alive (rmqtt trap 1).
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(2);

/// The engine logs whole CONNECT packets (passwords included) at debug level: whatever level the config asks
/// for, its crates stay at `info` or quieter. (`RUST_LOG`, when set, replaces the filter entirely.)
pub fn capped_level(level: &str) -> String {
    const ENGINE: [&str; 7] = [
        "rmqtt",
        "rmqtt_net",
        "rmqtt_codec",
        "rmqtt_session_storage",
        "rmqtt_retainer",
        "rmqtt_sys_topic",
        "rmqtt_storage",
    ];
    let mut out = level.to_string();
    let lower = level.to_ascii_lowercase();
    if !lower.contains("debug") && !lower.contains("trace") {
        return out;
    }
    for krate in ENGINE {
        out.push_str(&format!(",{krate}=info"));
    }
    out
}

/// Loads the config, sets up logging, runs the hub until SIGTERM or SIGINT.
pub fn run_cli(args: HubArgs) -> Result<(), HubError> {
    let cfg = HubConfig::load(&args.config)?;
    let service =
        std::env::var(baetyl_sdk::env::SERVICE_NAME).unwrap_or_else(|_| "hub".to_string());
    let instance =
        std::env::var(baetyl_sdk::env::SERVICE_INSTANCE_NAME).unwrap_or_else(|_| service.clone());
    logging::init(&LogSetup {
        service: &service,
        instance: &instance,
        level: &capped_level(&cfg.logger.level),
        format: args.log_format.unwrap_or(cfg.logger.format),
        file: cfg.logger.path.as_deref(),
    })
    .map_err(HubError::Logging)?;

    let runtime = runtime().map_err(HubError::Runtime)?;
    let result = runtime.block_on(async {
        let hub = crate::broker::start(&cfg).await?;
        tracing::info!(config = %args.config.display(), "hub started");
        hub.serve(shutdown_signal()).await
    });
    if let Err(e) = &result {
        tracing::error!("{e}");
    }
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    result
}

/// The hub's tokio runtime, also used by the benchmark's hub child so that it measures the product.
///
/// Multi-threaded with one worker per core (tokio's default). Measured on 2 cores shared with the benchmark's
/// clients, one worker or a current-thread runtime did not beat it, and on a bigger device more workers are
/// what lets the hub use more than one core.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hub")
        .build()
}

/// Completes on SIGTERM or SIGINT. If the handlers cannot be installed, it never completes and logs why.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (term, int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!("cannot install signal handlers: {e}; stop the hub with SIGKILL");
            std::future::pending::<()>().await;
            return;
        }
    };
    let (mut term, mut int) = (term, int);
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_debug_logs_are_capped() {
        assert_eq!(capped_level("info"), "info");
        assert_eq!(capped_level("warn"), "warn");
        let c = capped_level("debug");
        assert!(c.starts_with("debug,"), "{c}");
        assert!(c.contains(",rmqtt=info"), "{c}");
        assert!(c.contains(",rmqtt_net=info"), "{c}");
    }
}
