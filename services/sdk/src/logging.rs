//! Tracing setup shared by every role of the `baetyl` binary: a human format for terminals, JSON lines for
//! machines, and the service and instance names on every line.

use std::fmt::Write as _;
use std::path::Path;
use std::str::FromStr;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Log line format: `human` for people, `json` for machines (one object per line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// v1's `text`.
    #[default]
    #[serde(alias = "text")]
    Human,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "human" | "text" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "log format `{other}` is unknown; use `human` or `json`"
            )),
        }
    }
}

/// The `logger:` section shared by every config (master, hub, bridge, timer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggerConfig {
    /// Append logs to this file instead of standard error.
    pub path: Option<std::path::PathBuf>,
    /// A level or a filter such as `info,baetyl_hub=debug`.
    pub level: String,
    pub format: LogFormat,
    /// v1's rotation of the file at `path`: rotated files older than `age.max` days are removed,
    #[serde(default = "v1_age")]
    pub age: LogLimit,
    /// the file is rotated when it would grow past `size.max` MiB,
    #[serde(default = "v1_size")]
    pub size: LogLimit,
    /// and `backup.max` rotated files are kept.
    #[serde(default = "v1_backup")]
    pub backup: LogLimit,
}

/// `{max: N}`, as v1 wrote its logger limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogLimit {
    pub max: u32,
}

fn v1_age() -> LogLimit {
    LogLimit { max: 15 }
}
fn v1_size() -> LogLimit {
    LogLimit { max: 50 }
}
fn v1_backup() -> LogLimit {
    LogLimit { max: 15 }
}

impl LoggerConfig {
    /// The rotation of the log file (v1's defaults: 50 MiB, 15 backups, 15 days).
    pub fn rotation(&self) -> crate::logfile::Rotation {
        crate::logfile::Rotation {
            max_size: u64::from(self.size.max.max(1)) << 20,
            backups: self.backup.max,
            max_age: std::time::Duration::from_secs(u64::from(self.age.max.max(1)) * 86_400),
        }
    }
}

impl Default for LoggerConfig {
    fn default() -> Self {
        LoggerConfig {
            path: None,
            level: "info".into(),
            format: LogFormat::Human,
            age: v1_age(),
            size: v1_size(),
            backup: v1_backup(),
        }
    }
}

/// Where and how to log.
#[derive(Debug, Clone)]
pub struct LogSetup<'a> {
    pub service: &'a str,
    pub instance: &'a str,
    /// A filter such as `info` or `baetyl_master=debug,info`; `RUST_LOG` wins when set.
    pub level: &'a str,
    pub format: LogFormat,
    /// Append to this file instead of standard error.
    pub file: Option<&'a Path>,
    /// How `file` is rotated.
    pub rotation: crate::logfile::Rotation,
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log level `{level}` is not valid: {source}")]
    Level {
        level: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("cannot create log directory {}: {source}", dir.display())]
    Directory {
        dir: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open log file {}: {source}", file.display())]
    File {
        file: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("logging was already set up: {0}")]
    AlreadySet(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
}

/// Installs the global subscriber. Call once, early in `main`.
pub fn init(setup: &LogSetup<'_>) -> Result<(), LogError> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(setup.level))
        .map_err(|source| LogError::Level {
            level: setup.level.to_string(),
            source,
        })?;
    let format = LineFormat {
        service: setup.service.to_string(),
        instance: setup.instance.to_string(),
        json: setup.format == LogFormat::Json,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .event_format(format);
    let result = match setup.file {
        Some(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|source| LogError::Directory {
                    dir: dir.to_path_buf(),
                    source,
                })?;
            }
            let file =
                crate::logfile::RotatingFile::open(path, setup.rotation).map_err(|source| {
                    LogError::File {
                        file: path.to_path_buf(),
                        source,
                    }
                })?;
            builder.with_writer(Mutex::new(file)).try_init()
        }
        None => builder.with_writer(std::io::stderr).try_init(),
    };
    result.map_err(LogError::AlreadySet)
}

struct LineFormat {
    service: String,
    instance: String,
    json: bool,
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
        let mut fields = Fields::default();
        event.record(&mut fields);
        if self.json {
            let mut obj = serde_json::Map::new();
            obj.insert("time".into(), now.to_string().into());
            obj.insert("level".into(), meta.level().as_str().to_lowercase().into());
            obj.insert("service".into(), self.service.clone().into());
            obj.insert("instance".into(), self.instance.clone().into());
            obj.insert("target".into(), meta.target().into());
            obj.insert("msg".into(), fields.message.into());
            // Event fields go under "fields", so an event's own `service` never hides ours.
            if !fields.pairs.is_empty() {
                let f: serde_json::Map<String, serde_json::Value> = fields
                    .pairs
                    .into_iter()
                    .map(|(k, v)| (k, v.into()))
                    .collect();
                obj.insert("fields".into(), f.into());
            }
            writeln!(w, "{}", serde_json::Value::Object(obj))
        } else {
            write!(
                w,
                "{now} {:>5} {}[{}] {}",
                meta.level(),
                self.service,
                self.instance,
                fields.message
            )?;
            for (k, v) in fields.pairs {
                write!(w, " {k}={v}")?;
            }
            writeln!(w)
        }
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    pairs: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        // Events bridged from the `log` crate carry their origin as log.* fields: noise on every line.
        if field.name().starts_with("log.") {
            return;
        }
        let mut s = String::new();
        let _ = write!(s, "{value:?}");
        if field.name() == "message" {
            self.message = s;
        } else {
            self.pairs.push((field.name().to_string(), s));
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name().starts_with("log.") {
            return;
        }
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.pairs
                .push((field.name().to_string(), value.to_string()));
        }
    }
}
