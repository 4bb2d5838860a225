//! MQTT topic filters (validation and matching) and the prefix rewrite rules apply to topics.

use serde::Deserialize;

/// Checks a subscription filter (see `baetyl_sdk::topic::validate_filter`); the error names the filter.
pub fn validate_filter(filter: &str) -> Result<(), String> {
    baetyl_sdk::topic::validate_filter(filter).map_err(|e| format!("`{filter}`: {e}"))
}

/// Checks a topic messages are published to: not empty, no wildcards; the error names the topic.
pub fn validate_topic(topic: &str) -> Result<(), String> {
    baetyl_sdk::topic::validate_name(topic).map_err(|e| format!("`{topic}`: {e}"))
}

/// Whether `topic` matches `filter` (MQTT rules; leading wildcards do not match `$` topics).
pub use baetyl_sdk::topic::matches;

/// Whether some topic matches both filters.
pub fn overlap(a: &str, b: &str) -> bool {
    let mut x = a.split('/');
    let mut y = b.split('/');
    loop {
        match (x.next(), y.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            (Some(p), Some(q)) if p == "+" || q == "+" || p == q => {}
            _ => return false,
        }
    }
}

/// A prefix rewrite applied to the topic of every message a rule carries in one direction: first
/// `strip_prefix` is removed when the topic starts with it, then `add_prefix` is put in front.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    #[serde(default)]
    pub strip_prefix: Option<String>,
    #[serde(default)]
    pub add_prefix: Option<String>,
}

impl Rewrite {
    pub fn is_identity(&self) -> bool {
        self.strip_prefix.as_deref().unwrap_or("").is_empty()
            && self.add_prefix.as_deref().unwrap_or("").is_empty()
    }

    pub fn validate(&self) -> Result<(), String> {
        for p in [&self.strip_prefix, &self.add_prefix].into_iter().flatten() {
            if p.contains(['+', '#']) {
                return Err(format!(
                    "prefix `{p}` cannot contain the wildcards `+` or `#`"
                ));
            }
        }
        Ok(())
    }

    /// What a rewrite makes of a subscription filter: the filter the rewritten topics match (approximately:
    /// a strip prefix the filter does not literally start with is ignored).
    pub fn apply_filter(&self, filter: &str) -> String {
        let stripped = match self.strip_prefix.as_deref() {
            Some(p) if !p.is_empty() => filter.strip_prefix(p).unwrap_or(filter),
            _ => filter,
        };
        format!("{}{stripped}", self.add_prefix.as_deref().unwrap_or(""))
    }

    /// The rewritten topic, or `None` when nothing would be left of it or it would be longer than MQTT allows.
    pub fn apply(&self, topic: &str) -> Option<String> {
        let stripped = match self.strip_prefix.as_deref() {
            Some(p) if !p.is_empty() => topic.strip_prefix(p).unwrap_or(topic),
            _ => topic,
        };
        let out = format!("{}{stripped}", self.add_prefix.as_deref().unwrap_or(""));
        (!out.is_empty() && out.len() <= usize::from(u16::MAX)).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_validate() {
        for ok in ["a", "a/b", "a/+/c", "#", "a/#", "+", "+/+", "/a"] {
            assert!(validate_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/#/b", "a#", "a/b+", "#/a"] {
            assert!(validate_filter(bad).is_err(), "{bad}");
        }
        assert!(validate_topic("a/b").is_ok());
        assert!(validate_topic("a/+").is_err());
        assert!(validate_topic("").is_err());
    }

    #[test]
    fn overlap_of_filters() {
        assert!(overlap("a/b", "a/b"));
        assert!(overlap("a/+", "a/b"));
        assert!(overlap("a", "a/#"));
        assert!(overlap("#", "x/y"));
        assert!(overlap("a/+/c", "a/b/+"));
        assert!(!overlap("a/b", "a/c"));
        assert!(!overlap("a/b", "a/b/c"));
        assert!(!overlap("x/#", "y/#"));
    }

    #[test]
    fn rewrite_strips_then_adds() {
        let r = Rewrite {
            strip_prefix: Some("local/".into()),
            add_prefix: Some("edge-1/".into()),
        };
        assert_eq!(r.apply("local/t").as_deref(), Some("edge-1/t"));
        assert_eq!(r.apply("other/t").as_deref(), Some("edge-1/other/t"));
        let strip_only = Rewrite {
            strip_prefix: Some("a/".into()),
            add_prefix: None,
        };
        assert_eq!(strip_only.apply("a/").as_deref(), None);
        assert_eq!(strip_only.apply("a/b").as_deref(), Some("b"));
        assert!(Rewrite::default().is_identity());
        assert_eq!(Rewrite::default().apply("t").as_deref(), Some("t"));
        let bad = Rewrite {
            strip_prefix: None,
            add_prefix: Some("x/#".into()),
        };
        assert!(bad.validate().is_err());
    }
}
