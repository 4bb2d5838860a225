//! MQTT topic names and filters: the shared implementation in `baetyl_sdk::topic`.
pub use baetyl_sdk::topic::*;
