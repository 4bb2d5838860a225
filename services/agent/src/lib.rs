//! The device agent (`baetyl agent`, Baetyl v1's `baetyl-agent`): a service of the device's application that
//! links the device to its fleet server (`baetyl cloud`).
//!
//! It registers once (a key made on the device, a certificate from the fleet CA), then keeps a WebSocket over
//! two-way TLS to the cloud: it reports the master's inspect at an interval and after every change, receives
//! signed desired states and applies them through the master's update (keeping the running application when
//! anything is wrong), and runs operators' commands (logs, inspect, restart, reboot, power off).
//!
//! Layout: [`bootstrap`] (the fleet file and a cloud-managed device's first application), [`proto`] (the wire messages and signed documents, shared with the cloud), [`crypto`] (digests,
//! ed25519, secrets), [`https`] (the HTTPS/WebSocket client, shared with `baetyl ctl`), [`files`] (private and
//! atomic files), [`config`], [`identity`] (device key, registration), [`master`] (what the agent asks of the
//! master, behind a trait), [`deploy`] (download, verify, stage, update, follow), [`ops`] (operations),
//! [`agent`] (the link loop), [`cli`].
pub mod agent;
pub mod bootstrap;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod deploy;
pub mod error;
pub mod files;
pub mod https;
pub mod identity;
pub mod master;
pub mod ops;
pub mod proto;

pub use error::{AgentError, HttpsError};
