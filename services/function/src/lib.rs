//! Functions: "receive a message, compute, send a result" close to the device.
//!
//! - [`proto`]: the Function gRPC protocol of Baetyl v1 (`baetyl.Function/Call`, same field numbers).
//! - [`sql`]: the SQL handler engine (v1's `select ... where ...` over JSON payloads).
//! - [`manager`]: `baetyl function`: rules subscribe to the hub, call functions, publish results.
//! - [`answer`]: what a rule publishes: the result or the error answer, within the hub's message limit.
//! - [`pool`]: instance pools over the master API (min, max, idletime, timeout).
//! - [`serve`]: the manager's own Function server (v1's `server:`): calls by function name into the pools.
//! - [`runtime`]: a gRPC server serving a set of functions; the SQL runtime (`baetyl runtime-sql`) and the
//!   launcher of the Python runtime (`baetyl runtime-python`, code in `runtimes/python/`).
//! - [`node`]: the launcher of the Node.js runtime (`baetyl runtime-node`, code in `runtimes/node/`).
pub mod answer;
pub mod error;
pub mod manager;
pub mod node;
pub mod pool;
pub mod proto;
pub mod runtime;
pub mod serve;
pub mod sql;

pub use error::FunctionError;
