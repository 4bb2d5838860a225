//! `baetyl hub`: the command-line entry the multi-call binary dispatches to.

use baetyl_sdk::config::ConfigFile;
use std::path::PathBuf;

use baetyl_sdk::logging::{LogFormat, LoggerConfig};
use baetyl_sdk::service::{Kit, ServiceError};

/// The one shutdown signal of every role (kept here by name for the hub's benchmark).
pub use baetyl_sdk::service::shutdown_signal;

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

/// Loads the config, sets up logging, runs the hub until SIGTERM or SIGINT. The kit shuts the runtime down
/// with a timeout: a store's background task must not keep the process alive (rmqtt trap 1).
pub fn run_cli(args: HubArgs) -> Result<(), HubError> {
    let mut cfg = HubConfig::load(&args.config)?;
    let v1_notes = cfg.apply_v1_keys();
    let logger = LoggerConfig {
        level: capped_level(&cfg.logger.level),
        ..cfg.logger.clone()
    };
    let service = Kit::new("hub")
        .init(&logger, args.log_format)
        .map_err(|e| match e {
            ServiceError::Logging(e) => HubError::Logging(e.to_string()),
            ServiceError::Runtime(e) => HubError::Runtime(e),
        })?;
    service.block_on(async {
        for note in v1_notes {
            tracing::warn!("Baetyl v1 key {note}");
        }
        let hub = crate::broker::start(&cfg).await?;
        tracing::info!(config = %args.config.display(), "hub started");
        hub.serve(shutdown_signal()).await
    })
}

/// The hub's tokio runtime, also used by the benchmark's hub child so that it measures the product.
///
/// Multi-threaded with one worker per core (tokio's default). Measured on 2 cores shared with the benchmark's
/// clients, one worker or a current-thread runtime did not beat it, and on a bigger device more workers are
/// what lets the hub use more than one core.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    baetyl_sdk::service::runtime("hub", None)
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
