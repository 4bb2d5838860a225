//! The fleet server (`baetyl cloud`), its operator CLI (`baetyl ctl`) and web dashboard.
//!
//! One process serves HTTPS on one listener: operators' API and the dashboard (bearer tokens with roles
//! `admin` and `read-only`, every action audited), device registration (fleet provisioning key or one-time
//! device token, certificates from the fleet CA), the device link (a WebSocket over two-way TLS) and blob
//! downloads. State lives in the database (SQLite embedded, or PostgreSQL shared by several processes) apart
//! from the fleet's key files.
//!
//! Layout: [`config`], [`error`], [`store`] (storage and migrations), [`pki`] (fleet CA, signing key),
//! [`bus`] (events between processes), [`links`] (linked devices, command routing), [`deploy`] (desired state),
//! [`api`] (routes), [`web`] (dashboard), [`server`] (`run`), [`cli`] (`baetyl cloud`), [`ctl`] (`baetyl ctl`).
pub mod api;
pub mod bus;
pub mod cli;
pub mod config;
pub mod ctl;
pub mod deploy;
pub mod error;
pub mod links;
pub mod pki;
pub mod server;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod web;

pub use config::CloudConfig;
pub use error::CloudError;
pub use server::run;
