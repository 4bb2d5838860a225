//! The baetyl hub: an MQTT broker compatible with Baetyl v1's hub, built on the rmqtt engine embedded in-process.
//!
//! Responsibility: accept MQTT 3.1/3.1.1/5 clients on `tcp://`, `ssl://`, `ws://` and `wss://` listeners,
//! authenticate them against the configured principals (password or client certificate), enforce per-principal
//! publish/subscribe permissions, keep retained messages and persistent sessions on disk, publish `$SYS`
//! statistics, apply v1's `subscriptions:` routing rules, and report statistics to the master.
//!
//! Layout:
//! - [`config`]: the config schema (`deny_unknown_fields`) and its validation (listener URLs, principals, topic
//!   filters, routing loops).
//! - [`topic`]: topic name/filter validation and matching (UTF-8 safe).
//! - [`auth`]: our rmqtt hook handler: authentication (principals, wills, client ids, quotas), ACL, publish
//!   checks, retained limits, routing trigger, counters.
//! - [`limits`]: connections per principal, the retained-message budget, the descriptor limit.
//! - [`shared`]: shared subscriptions (`$share/group/filter`), round robin.
//! - [`persistence`]: the storage probe, in-memory fallback and free-space watch behind `$SYS` reports.
//! - [`routing`]: the routing rules and their loop detection.
//! - [`broker`]: engine setup (plugins, listeners), [`start`]/[`run`], statistics and master reports.
//! - [`cli`]: `baetyl hub -c FILE` ([`HubArgs`], [`run_cli`]).
//! - [`error`]: the crate's error type, [`HubError`], whose messages are written for the operator.
pub mod auth;
pub mod broker;
pub mod cli;
pub mod config;
pub mod error;
pub mod limits;
pub mod persistence;
pub mod routing;
pub mod shared;
pub mod topic;
pub mod v1keys;

pub use broker::{RunningHub, run, start};
pub use cli::{HubArgs, run_cli};
pub use config::HubConfig;
pub use error::HubError;
