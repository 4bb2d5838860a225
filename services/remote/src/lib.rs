//! `baetyl remote`, the bridge between the hub and remote MQTT brokers, and `baetyl timer`, v1's periodic
//! publisher.
//!
//! **The bridge** carries messages both ways between the local hub and any number of remote brokers, by rules
//! (v1's schema, extended): a rule's `hub.subscriptions` are sent to the remote `remote.name`, its
//! `remote.subscriptions` come back to the hub. Each direction of a rule may rewrite topics: `rewrite:
//! {strip_prefix: a/, add_prefix: b/}` removes `strip_prefix` when the topic starts with it, then prepends
//! `add_prefix` (`hub.rewrite` applies on the way to the remote, `remote.rewrite` on the way to the hub).
//! Connections take every address of `baetyl_sdk::mqtt`: `tcp://`, `ssl://`, `ws://`, `wss://` (rustls on
//! aws-lc-rs; `ca` for the server, `cert` + `key` for two-way TLS).
//!
//! Delivery: hub -> remote messages are **stored and forwarded**. A batch the hub delivers is appended to each
//! target remote's on-disk buffer and synced before the batch is acknowledged to the hub; the remote's forwarder
//! sends the buffer in order and moves its start only on the remote's PUBACK. While a remote is unreachable its
//! buffer grows up to `buffer.max_messages` / `buffer.max_size`; beyond that the oldest messages are dropped,
//! logged and counted (`dropped` in the stats, kept across restarts). Damage on disk (a flipped byte, a bad
//! sector) costs only the records it hit: the buffer resynchronises on the next good record, never
//! acknowledges what it did not send, and counts the lost ones (`corrupt` in the stats, kept across restarts;
//! see [`store`]). Remote -> hub messages are acknowledged
//! to the remote only after the hub acknowledged them. Both directions are at-least-once for QoS 1: a restart
//! (even `kill -9`) loses nothing that was acknowledged, and may resend what was in flight (duplicates, never
//! loss). QoS 0 messages take the same path (buffered too) and keep their QoS. Retain flags are not carried
//! across. Sessions are persistent by default (`clean_session: false`), so brokers keep what arrives while the
//! bridge is down.
//!
//! **The timer** (module [`timer`]) publishes a templated payload to a hub topic on an interval. It lives in
//! this crate because it is a small hub client that needs exactly the connection code the bridge has
//! (reconnects and acknowledgement tracking in [`link`]); a crate of its own would duplicate or split that.
//!
//! Layout: [`config`] (schema and validation; addresses, QoS and TLS come from `baetyl_sdk::mqtt`), [`topic`] (filters, matching, rewrite),
//! [`link`] (one MQTT connection with acknowledgement tracking), [`store`] (the segment log buffer),
//! [`bridge`] (the tasks and stats), [`cli`] (`baetyl remote`), [`timer`] (`baetyl timer`), [`gotemplate`] (v1's timer templates).
pub mod bridge;
pub mod cli;
pub mod config;
pub mod error;
pub mod gotemplate;
pub mod link;
pub mod store;
pub mod timer;
pub mod topic;

pub use bridge::{Bridge, run};
pub use cli::{RemoteArgs, run_cli};
pub use config::BridgeConfig;
pub use error::{RemoteError, StoreError};
