//! Baetyl v1.0.2's hub keys that tuned its own engine: `message.ingress`, `message.egress`, `message.offset`,
//! `shutdown` and `metrics`. Each is accepted; where it means what one of our limits means it sets that limit,
//! otherwise it is reported once at start as ignored, with the reason.
//!
//! | v1 key | here |
//! |---|---|
//! | `message.egress.qos1.buffer.size` (QoS 1 messages sent and not yet acknowledged, per client) | `limits.inflight` |
//! | `message.ingress.qos1.cleanup.retention` (how long stored QoS 1 messages wait for subscribers) | `limits.message_expiry` |
//! | `message.ingress.qos0.buffer.size`, `message.ingress.qos1.buffer.size`/`batch.max`, `message.offset.*` | ignored: v1's internal queues between its receiver, its message log and its offset store; the engine here writes sessions through its own store |
//! | `message.ingress.qos1.cleanup.interval` | ignored: expired messages are dropped as they are met |
//! | `message.egress.qos0.buffer.size` | ignored: QoS 0 messages share each session's queue, `limits.queued` |
//! | `message.egress.qos1.batch.max` | ignored: acknowledgements are handled one by one |
//! | `message.egress.qos1.retry.interval` | ignored: unacknowledged QoS 1 messages are resent when the client reconnects, as MQTT 3.1.1 and 5 require |
//! | `shutdown.timeout` | ignored: the hub stops within about a second after flushing its store; the master's `grace` bounds it |
//! | `metrics.report.interval` | ignored: the hub reports its statistics to the master every 20s |

use serde::Deserialize;

use baetyl_sdk::config::HumanDuration;

use crate::config::HubConfig;

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Size {
    pub size: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Max {
    pub max: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Interval {
    pub interval: Option<HumanDuration>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Qos0 {
    #[serde(default)]
    pub buffer: Size,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Cleanup {
    pub retention: Option<HumanDuration>,
    pub interval: Option<HumanDuration>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IngressQos1 {
    #[serde(default)]
    pub buffer: Size,
    #[serde(default)]
    pub batch: Max,
    #[serde(default)]
    pub cleanup: Cleanup,
}

/// `message.ingress`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Ingress {
    #[serde(default)]
    pub qos0: Qos0,
    #[serde(default)]
    pub qos1: IngressQos1,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EgressQos1 {
    #[serde(default)]
    pub buffer: Size,
    #[serde(default)]
    pub batch: Max,
    #[serde(default)]
    pub retry: Interval,
}

/// `message.egress`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Egress {
    #[serde(default)]
    pub qos0: Qos0,
    #[serde(default)]
    pub qos1: EgressQos1,
}

/// `message.offset`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Offset {
    #[serde(default)]
    pub buffer: Size,
    #[serde(default)]
    pub batch: Max,
}

/// `shutdown`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Shutdown {
    pub timeout: Option<HumanDuration>,
}

/// `metrics`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    #[serde(default)]
    pub report: Interval,
}

const STORE: &str = "v1's internal queue between its receiver, its message log and its offset store; the \
     engine here writes sessions through its own store";

impl HubConfig {
    /// The v1 engine keys that are set, by key path, with v1's bounds checked.
    fn v1_counts(&self) -> Vec<(&'static str, Option<u64>, u64)> {
        let m = &self.message;
        let (i, e, o) = (m.ingress, m.egress, m.offset);
        vec![
            (
                "message.ingress.qos0.buffer.size",
                i.qos0.buffer.size,
                u64::MAX,
            ),
            (
                "message.ingress.qos1.buffer.size",
                i.qos1.buffer.size,
                u64::MAX,
            ),
            ("message.ingress.qos1.batch.max", i.qos1.batch.max, u64::MAX),
            (
                "message.egress.qos0.buffer.size",
                e.qos0.buffer.size,
                u64::MAX,
            ),
            (
                "message.egress.qos1.buffer.size",
                e.qos1.buffer.size,
                65_535,
            ),
            ("message.egress.qos1.batch.max", e.qos1.batch.max, 10_000),
            ("message.offset.buffer.size", o.buffer.size, u64::MAX),
            ("message.offset.batch.max", o.batch.max, u64::MAX),
        ]
    }

    /// v1's bounds on its engine keys (each at least 1; the egress QoS 1 window at most 65535).
    pub fn check_v1_keys(&self) -> Result<(), String> {
        for (key, value, max) in self.v1_counts() {
            if let Some(v) = value
                && !(1..=max).contains(&v)
            {
                return Err(format!("key `{key}`: {v} is out of range; use 1 to {max}"));
            }
        }
        Ok(())
    }

    /// Sets the limits v1's engine keys stand for; answers a line for each key applied or ignored, to log
    /// once at start.
    pub fn apply_v1_keys(&mut self) -> Vec<String> {
        let mut notes = Vec::new();
        let (ingress, egress) = (self.message.ingress, self.message.egress);
        if let Some(n) = egress.qos1.buffer.size {
            let n = u16::try_from(n).unwrap_or(u16::MAX);
            notes.push(format!(
                "message.egress.qos1.buffer.size {n}: used as limits.inflight (QoS 1 messages in flight per client)"
            ));
            self.limits.inflight = n;
        }
        if let Some(r) = ingress.qos1.cleanup.retention {
            notes.push(format!(
                "message.ingress.qos1.cleanup.retention {r}: used as limits.message_expiry (how long a message waits for subscribers)"
            ));
            self.limits.message_expiry = r;
        }
        for (key, value, _) in self.v1_counts() {
            let why = match key {
                "message.egress.qos1.buffer.size" => continue,
                "message.egress.qos0.buffer.size" => {
                    "QoS 0 messages share each session's queue, bounded by limits.queued"
                }
                "message.egress.qos1.batch.max" => "acknowledgements are handled one by one",
                _ => STORE,
            };
            if value.is_some() {
                notes.push(format!("{key}: ignored: {why}"));
            }
        }
        let durations = [
            (
                "message.ingress.qos1.cleanup.interval",
                ingress.qos1.cleanup.interval,
                "expired messages are dropped as they are met",
            ),
            (
                "message.egress.qos1.retry.interval",
                egress.qos1.retry.interval,
                "unacknowledged QoS 1 messages are resent when the client reconnects, as MQTT requires",
            ),
            (
                "shutdown.timeout",
                self.shutdown.timeout,
                "the hub stops within about a second after flushing its store; the master's grace bounds it",
            ),
            (
                "metrics.report.interval",
                self.metrics.report.interval,
                "the hub reports its statistics to the master every 20s",
            ),
        ];
        for (key, value, why) in durations {
            if value.is_some() {
                notes.push(format!("{key}: ignored: {why}"));
            }
        }
        notes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baetyl_sdk::config::ConfigFile;
    use std::path::Path;

    /// Every engine key of v1.0.2's hub config (`baetyl-hub/config/message.go` and `config.go`), with
    /// values other than v1's defaults.
    const V1: &str = r#"
listen: [tcp://0.0.0.0:1883]
principals: [{username: test, password: hahaha, permissions: [{action: pub, permit: ['#']}]}]
message:
  length: {max: 32k}
  ingress:
    qos0: {buffer: {size: 20000}}
    qos1:
      buffer: {size: 200}
      batch: {max: 60}
      cleanup: {retention: 24h, interval: 2m}
  egress:
    qos0: {buffer: {size: 20000}}
    qos1:
      buffer: {size: 200}
      batch: {max: 60}
      retry: {interval: 30s}
  offset:
    buffer: {size: 20000}
    batch: {max: 200}
shutdown: {timeout: 5m}
metrics: {report: {interval: 30s}}
"#;

    #[test]
    fn v1_engine_keys_map_to_limits_or_are_reported() {
        let mut cfg = HubConfig::parse(V1, Path::new("service.yml")).expect("v1 keys");
        let notes = cfg.apply_v1_keys();
        assert_eq!(cfg.limits.inflight, 200);
        assert_eq!(
            cfg.limits.message_expiry,
            HumanDuration::from_secs(24 * 3600)
        );
        let text = notes.join("\n");
        for key in [
            "message.ingress.qos0.buffer.size",
            "message.ingress.qos1.buffer.size",
            "message.ingress.qos1.batch.max",
            "message.ingress.qos1.cleanup.interval",
            "message.egress.qos0.buffer.size",
            "message.egress.qos1.batch.max",
            "message.egress.qos1.retry.interval",
            "message.offset.buffer.size",
            "message.offset.batch.max",
            "shutdown.timeout",
            "metrics.report.interval",
        ] {
            assert!(text.contains(&format!("{key}: ignored: ")), "{key}: {text}");
        }
        assert!(text.contains("used as limits.inflight"), "{text}");
        assert!(text.contains("used as limits.message_expiry"), "{text}");
        assert_eq!(notes.len(), 13, "{text}");

        // Without v1 keys nothing changes and nothing is said.
        let mut plain =
            HubConfig::parse("listen: [tcp://0.0.0.0:1883]\n", Path::new("s.yml")).expect("plain");
        assert!(plain.apply_v1_keys().is_empty());
        assert_eq!(plain.limits.inflight, 16);
    }

    #[test]
    fn v1_bounds_are_checked_with_the_key() {
        for (from, to, key) in [
            (
                "egress:\n    qos0: {buffer: {size: 20000}}\n    qos1:\n      buffer: {size: 200}",
                "egress:\n    qos0: {buffer: {size: 20000}}\n    qos1:\n      buffer: {size: 70000}",
                "message.egress.qos1.buffer.size",
            ),
            (
                "offset:\n    buffer: {size: 20000}",
                "offset:\n    buffer: {size: 0}",
                "message.offset.buffer.size",
            ),
            (
                "retry: {interval: 30s}",
                "retry: {every: 30s}",
                "message.egress.qos1.retry.every",
            ),
        ] {
            assert!(V1.contains(from), "{from}");
            let e = HubConfig::parse(&V1.replacen(from, to, 1), Path::new("service.yml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{to}: {e}");
        }
    }
}
