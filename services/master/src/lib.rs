//! The baetyl master: it reads the application, runs its services through an engine, keeps them running,
//! serves the v1 REST API and applies application updates with rollback.
//!
//! [`run`] is the master as a library: config, engine, bound listeners and a shutdown future in, so a test
//! runs a whole master in-process with the engine of its choice (`engine::fake` for this crate's tests and,
//! under the `testing` feature, for other crates').
//!
//! Layout: [`access`] (who may do what through the API; what a dynamic start may set), [`server`] (`run`, the listeners, start-up and orderly stop), [`config`] (conf.yml,
//! application.yml, volumes, the dependency graph), [`engine`] (the `Engine` trait; the native engine:
//! processes, cgroups, logs, leftovers; the fake one), [`supervisor`] (instances, dynamic instances, inspect
//! data), [`limits`] (descriptor limits of the master and of services), [`mst`] (master updates: the new binary on trial, then installed, or rolled back), [`restart`] (the restart decision: policy, backoff, `retry.max`), [`ota`] (application updates
//! and rollback), [`safe_mode`] (no application when init could not use the data partition), [`api`] (the HTTP routes), [`error`] (every failure and its HTTP status), [`users`] (per-service users), [`stats`] (host
//! and process figures), [`cli`] (`baetyl master` and `baetyl inspect`), [`default_app`] (the embedded
//! example application).
pub mod access;
pub mod api;
pub mod cli;
pub mod config;
pub mod default_app;
pub mod engine;
pub mod error;
pub mod limits;
pub mod mst;
pub mod os_update;
pub mod ota;
pub mod restart;
pub mod safe_mode;
pub mod server;
pub mod stats;
pub mod supervisor;
#[cfg(test)]
mod test_rig;
pub mod users;

pub use api::BuildInfo;
pub use error::MasterError;
pub use server::{ApiListener, Listeners, Setup, run};
