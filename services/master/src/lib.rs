//! The baetyl master: it reads the application, runs its services through an engine, keeps them running,
//! serves the v1 REST API and applies application updates with rollback.
//!
//! Layout: [`config`] (conf.yml and application.yml schemas, validation, dependency order, diff),
//! [`engine`] (the `Engine` trait and the native engine: processes, cgroups, logs, leftovers),
//! [`supervisor`] (instances, restart policy and backoff, dynamic instances, inspect data),
//! [`ota`] (application updates), [`api`] (the HTTP routes), [`stats`] (host and process figures),
//! [`cli`] (`baetyl master` and `baetyl inspect`), [`default_app`] (the embedded example application).
pub mod api;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod default_app;
pub mod engine;
pub mod error;
pub mod ota;
pub mod stats;
pub mod supervisor;

pub use api::BuildInfo;
pub use error::MasterError;
