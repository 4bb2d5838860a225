//! The test kit every test of the workspace shares (a dev-dependency only; never part of a product binary).
//!
//! - [`net`]: free ports on 127.0.0.1 (a bound listener, or the port for a child process's config) and waiting
//!   until something accepts connections.
//! - [`wait`]: [`eventually`] and [`eventually_async`]: poll until a condition holds, fail with what was awaited.
//! - [`mqtt`]: one MQTT test client on rumqttc: connect, subscribe and wait for the SUBACK, publish and wait for
//!   the acknowledgement, the next message with a timeout, collect N.
//! - [`containerd`]: a real containerd with its own temporary root, state and socket (root only), and `ctr`.
//! - [`mosquitto`]: Debian's mosquitto on free ports with a generated config (TLS and passwords optional),
//!   killed on drop, its log kept for failure messages.
//! - [`pki`]: a test CA with a server certificate for localhost/127.0.0.1 and client certificates, as files.
//! - [`process`]: child processes that are killed on drop, waits for an exit or a pid to go, signals.
//! - [`paths`]: the workspace, temp dirs kept on request, the Python with grpcio, and the `baetyl` binary for
//!   tests outside its package.
//!
//! Everything fails loudly: a port that cannot be bound, a broker that does not start or a wait that times out
//! panics (or returns an error) naming what was expected, never passes silently.

pub mod containerd;
pub mod mosquitto;
pub mod mqtt;
pub mod net;
pub mod paths;
pub mod pki;
pub mod process;
pub mod wait;

pub use net::{free_listener, free_port};
pub use paths::{baetyl_bin, node_modules, python3, test_dir, workspace_dir};
pub use wait::{eventually, eventually_async};
