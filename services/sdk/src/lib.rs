//! The contract every baetyl service shares with the master and with each other.
//!
//! - [`env`]: the environment variables the master hands to each service instance (Baetyl v1 names).
//! - [`config`]: YAML loading with unknown-key rejection and errors that name the file, the key path and the fix;
//!   plus the duration and size value types our config schemas use.
//! - [`client`]: a small client for the master's REST API (unix socket or TCP), authenticated with the
//!   service's token.
//! - [`topic`]: MQTT topic names and filters: validation, matching, permission coverage.
//! - [`fs`]: crash-safe state files (`write_atomic`: temp + fsync + rename + directory fsync).
//! - [`os`]: the OS's A/B slots as init and the master share them (boot entry names, init's state file).
//! - [`logging`]: tracing setup (human or JSON lines, level, optional file) with service/instance on every line.
//! - [`logfile`]: a log file rotated by size with v1's `logger` limits (`size`, `backup`, `age`).
//! - [`service`]: the service kit every role starts with: logging from `logger:` and `--log-format`, the tokio
//!   runtime, the one shutdown signal, an orderly end.
//! - [`template`]: Baetyl v1's `{{.ENV}}` templating of config files, applied by [`config::load_yaml`].
//! - [`mqtt`]: what every MQTT client shares: broker addresses (tcp, ssl, ws, wss), QoS, TLS, connection
//!   options turned into rumqttc's.
pub mod client;
pub mod config;
pub mod env;
pub mod error;
pub mod fs;
pub mod logfile;
pub mod logging;
pub mod mqtt;
pub mod os;
pub mod os_bundle;
pub mod service;
pub mod template;
pub mod topic;

pub use error::{ClientError, ConfigError};
