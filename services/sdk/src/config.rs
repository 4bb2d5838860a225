//! Loading YAML config files so that a mistake is reported with the file, the key path and what was expected.
//!
//! Every schema struct uses `#[serde(deny_unknown_fields)]`; this module adds the path of the key that failed
//! (through `serde_path_to_error`) and the line/column YAML reports.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, DeserializeOwned};
use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// Reads and parses `path` as `T`, after Baetyl v1's `{{.ENV}}` templating ([`crate::template`]).
pub fn load_yaml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    parse_yaml(&read_templated(path)?, path)
}

/// The text of the config file at `path`, with `{{.NAME}}` references to environment variables expanded as
/// Baetyl v1 expanded them (all or nothing; see [`crate::template`]).
pub fn read_templated(path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: path.to_path_buf(),
        source,
    })?;
    Ok(crate::template::expand_env(&text, path))
}

/// Parses `text` as `T`; `origin` names the file in errors.
pub fn parse_yaml<T: DeserializeOwned>(text: &str, origin: &Path) -> Result<T, ConfigError> {
    // An empty file is an empty mapping, so a schema whose keys all have defaults accepts it.
    let text = if text.trim().is_empty() { "{}" } else { text };
    let de = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let key = err.path().to_string();
        let inner = err.into_inner();
        let location = inner
            .location()
            .map(|l| format!("line {} column {}: ", l.line(), l.column()))
            .unwrap_or_default();
        ConfigError::Schema {
            file: origin.to_path_buf(),
            key,
            location,
            message: strip_location(&inner.to_string()),
        }
    })
}

/// serde_yaml appends " at line L column C" to its messages; we print the location before the key instead.
/// It also prefixes the path of the enclosing mapping (`inner.a: `), which our own key path already says.
fn strip_location(message: &str) -> String {
    let message = match message.rfind(" at line ") {
        Some(i) => &message[..i],
        None => message,
    };
    match message.split_once(": ") {
        Some((head, rest)) if !head.contains(' ') => rest.to_string(),
        _ => message.to_string(),
    }
}

/// A duration written the way people write them in config: `500ms`, `30s`, `10m`, `1h30m`.
/// A bare number means seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub const fn from_secs(secs: u64) -> Self {
        HumanDuration(Duration::from_secs(secs))
    }
    pub const fn from_millis(ms: u64) -> Self {
        HumanDuration(Duration::from_millis(ms))
    }
    pub fn get(self) -> Duration {
        self.0
    }
}

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Ok(secs) = s.parse::<u64>() {
            return Ok(HumanDuration(Duration::from_secs(secs)));
        }
        humantime::parse_duration(s)
            .map(HumanDuration)
            .map_err(|e| format!("`{s}` is not a duration ({e}); write e.g. 500ms, 30s, 5m or 1h"))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DurationVisitor)
    }
}

struct DurationVisitor;

impl de::Visitor<'_> for DurationVisitor {
    type Value = HumanDuration;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration such as 500ms, 30s, 5m or 1h")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(HumanDuration(Duration::from_secs(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        u64::try_from(v)
            .map(|v| HumanDuration(Duration::from_secs(v)))
            .map_err(|_| E::custom(format!("a duration cannot be negative ({v})")))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        v.parse().map_err(E::custom)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// A size in bytes written as `512`, `32k`, `64m`, `1g` (powers of 1024; `kb`/`KiB` spellings accepted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let bad = || format!("`{s}` is not a size; write e.g. 512, 32k, 64m or 1g");
        let n: u64 = num.parse().map_err(|_| bad())?;
        let mult: u64 = match unit.trim() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            "t" | "tb" | "tib" => 1 << 40,
            _ => return Err(bad()),
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("`{s}` is too large"))
    }
}

/// A configuration file's type: read or parsed as YAML with errors that name the file and key, then checked
/// with `validate` for what the schema cannot say.
pub trait ConfigFile: DeserializeOwned {
    /// Checks values and references; errors name `file`.
    fn validate(&self, file: &Path) -> Result<(), ConfigError>;

    /// Reads, parses and validates the file at `path`.
    fn load(path: &Path) -> Result<Self, ConfigError> {
        let cfg: Self = load_yaml(path)?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Parses and validates YAML text; `origin` names the file in errors.
    fn parse(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let cfg: Self = parse_yaml(text, origin)?;
        cfg.validate(origin)?;
        Ok(cfg)
    }
}

/// A size for people: `512 B`, `1.5 KiB`, `24.2 MiB`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let units = [
            (1u64 << 40, "t"),
            (1 << 30, "g"),
            (1 << 20, "m"),
            (1 << 10, "k"),
        ];
        for (m, u) in units {
            if self.0 >= m && self.0.is_multiple_of(m) {
                return write!(f, "{}{u}", self.0 / m);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as 512, 32k, 64m or 1g")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("a size cannot be negative ({v})")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn sizes_for_people() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(25_412_816), "24.2 MiB");
    }
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        #[serde(default)]
        timeout: Option<HumanDuration>,
        #[serde(default)]
        size: Option<ByteSize>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        inner: std::collections::BTreeMap<String, Inner>,
    }

    #[test]
    fn durations_and_sizes_parse() {
        assert_eq!(
            "30s".parse::<HumanDuration>().unwrap().get(),
            Duration::from_secs(30)
        );
        assert_eq!(
            "5m".parse::<HumanDuration>().unwrap().get(),
            Duration::from_secs(300)
        );
        assert_eq!(
            "1h30m".parse::<HumanDuration>().unwrap().get(),
            Duration::from_secs(5400)
        );
        assert_eq!(
            "250ms".parse::<HumanDuration>().unwrap().get(),
            Duration::from_millis(250)
        );
        assert_eq!(
            "7".parse::<HumanDuration>().unwrap().get(),
            Duration::from_secs(7)
        );
        assert!("soon".parse::<HumanDuration>().is_err());
        assert_eq!("32k".parse::<ByteSize>().unwrap().0, 32 * 1024);
        assert_eq!("64M".parse::<ByteSize>().unwrap().0, 64 << 20);
        assert_eq!("1GiB".parse::<ByteSize>().unwrap().0, 1 << 30);
        assert_eq!(ByteSize(64 << 20).to_string(), "64m");
        assert!("12q".parse::<ByteSize>().is_err());
    }

    #[test]
    fn unknown_key_names_file_and_path() {
        let err =
            parse_yaml::<Outer>("inner:\n  a:\n    timout: 3s\n", Path::new("x.yml")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("x.yml: "), "{msg}");
        assert!(msg.contains("key `inner.a.timout`"), "{msg}");
        assert!(msg.contains("unknown field `timout`"), "{msg}");
        assert!(msg.contains("expected `timeout` or `size`"), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");
    }

    #[test]
    fn mistyped_value_names_key_and_expectation() {
        let err =
            parse_yaml::<Outer>("inner:\n  b:\n    size: lots\n", Path::new("y.yml")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("key `inner.b.size`"), "{msg}");
        assert!(msg.contains("32k"), "{msg}");
    }

    #[test]
    fn empty_file_is_empty_mapping() {
        #[derive(Deserialize, Default)]
        #[serde(deny_unknown_fields, default)]
        struct All {
            #[allow(dead_code)]
            a: Option<u32>,
        }
        assert!(parse_yaml::<All>("  \n", Path::new("e.yml")).is_ok());
    }
}
