//! MQTT's quality of service as a config value: `0`, `1` or `2`, checked when the config loads.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A QoS level. In config files it is the number (`qos: 1`); any other number fails the load with its key.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Deserialize, Serialize,
)]
#[serde(try_from = "u8", into = "u8")]
pub enum Qos {
    /// 0: at most once.
    #[default]
    AtMostOnce,
    /// 1: at least once.
    AtLeastOnce,
    /// 2: exactly once.
    ExactlyOnce,
}

/// A QoS value that is not valid, or not valid where it was used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QosError {
    #[error("qos {0} is not valid; use 0 (at most once), 1 (at least once) or 2 (exactly once)")]
    Invalid(u8),
    #[error("qos 2 (exactly once) is not supported by this service; use 0 or 1")]
    ExactlyOnceUnsupported,
}

impl Qos {
    pub fn as_u8(self) -> u8 {
        match self {
            Qos::AtMostOnce => 0,
            Qos::AtLeastOnce => 1,
            Qos::ExactlyOnce => 2,
        }
    }

    /// The one check for the clients that deliver at most "at least once" (the function manager, the bridge,
    /// the timer): QoS 2 is refused with a message that says so.
    pub fn require_0_or_1(self) -> Result<Qos, QosError> {
        match self {
            Qos::ExactlyOnce => Err(QosError::ExactlyOnceUnsupported),
            q => Ok(q),
        }
    }
}

impl TryFrom<u8> for Qos {
    type Error = QosError;
    fn try_from(n: u8) -> Result<Qos, QosError> {
        match n {
            0 => Ok(Qos::AtMostOnce),
            1 => Ok(Qos::AtLeastOnce),
            2 => Ok(Qos::ExactlyOnce),
            other => Err(QosError::Invalid(other)),
        }
    }
}

impl From<Qos> for u8 {
    fn from(q: Qos) -> u8 {
        q.as_u8()
    }
}

impl fmt::Display for Qos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_u8())
    }
}

impl From<Qos> for rumqttc::QoS {
    fn from(q: Qos) -> rumqttc::QoS {
        match q {
            Qos::AtMostOnce => rumqttc::QoS::AtMostOnce,
            Qos::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
            Qos::ExactlyOnce => rumqttc::QoS::ExactlyOnce,
        }
    }
}

impl From<rumqttc::QoS> for Qos {
    fn from(q: rumqttc::QoS) -> Qos {
        match q {
            rumqttc::QoS::AtMostOnce => Qos::AtMostOnce,
            rumqttc::QoS::AtLeastOnce => Qos::AtLeastOnce,
            rumqttc::QoS::ExactlyOnce => Qos::ExactlyOnce,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_yaml;
    use std::path::Path;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sub {
        #[serde(default)]
        qos: Qos,
    }

    #[derive(Debug, Deserialize)]
    struct Cfg {
        subscriptions: Vec<Sub>,
    }

    #[test]
    fn numbers_parse_and_convert() {
        let cfg: Cfg = parse_yaml(
            "subscriptions: [{qos: 0}, {qos: 1}, {qos: 2}, {}]",
            Path::new("q.yml"),
        )
        .expect("valid");
        let got: Vec<Qos> = cfg.subscriptions.iter().map(|s| s.qos).collect();
        assert_eq!(
            got,
            [
                Qos::AtMostOnce,
                Qos::AtLeastOnce,
                Qos::ExactlyOnce,
                Qos::AtMostOnce
            ]
        );
        for q in got {
            assert_eq!(Qos::from(rumqttc::QoS::from(q)), q);
            assert_eq!(Qos::try_from(u8::from(q)), Ok(q));
        }
        assert!(Qos::AtMostOnce < Qos::AtLeastOnce);
        assert_eq!(Qos::AtLeastOnce.min(Qos::ExactlyOnce), Qos::AtLeastOnce);
    }

    #[test]
    fn a_bad_number_names_the_key_and_the_allowed_values() {
        let e = parse_yaml::<Cfg>("subscriptions: [{qos: 1}, {qos: 3}]", Path::new("q.yml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("key `subscriptions[1].qos`"), "{e}");
        assert!(e.contains("qos 3 is not valid"), "{e}");
        assert!(
            e.contains("0 (at most once), 1 (at least once) or 2"),
            "{e}"
        );
    }

    #[test]
    fn exactly_once_is_refused_where_unsupported() {
        assert_eq!(Qos::AtLeastOnce.require_0_or_1(), Ok(Qos::AtLeastOnce));
        let e = Qos::ExactlyOnce.require_0_or_1().unwrap_err().to_string();
        assert!(e.contains("qos 2") && e.contains("use 0 or 1"), "{e}");
    }
}
