//! `baetyl timer` (v1's baetyl-timer): publishes a templated payload to a hub topic on an interval.
//!
//! ```yaml
//! hub: {address: tcp://127.0.0.1:1883, clientid: timer, username: u, password: p}
//! timer: {interval: 1s}
//! publish:
//!   topic: timer
//!   qos: 0
//!   payload: {id: 1, at: '{{time_rfc3339}}', n: '{{seq}}'}   # or a string: 'tick {{seq}} at {{time}}'
//! ```
//!
//! Placeholders: `{{time}}` (unix seconds), `{{time_ms}}` (unix milliseconds), `{{time_rfc3339}}`, `{{seq}}`
//! (1 for the first message), `{{topic}}`, `{{clientid}}`, and v1's Go template actions (`{{.Time.Now}}`,
//! `{{.Time.NowUnix}}`, `{{.Rand.Intn 10}}`, ...: [`crate::gotemplate`]). A string payload is expanded as
//! text. A mapping (or any other YAML value) is sent as JSON with every string in it expanded; a string that
//! is exactly one numeric placeholder (`'{{seq}}'`, `'{{time}}'`, `'{{.Rand.Intn 10}}'`) becomes a JSON
//! number, and a mapping without a `time` key gets `time` (unix seconds) as v1's timer did.
//!
//! v1's defaults: `timer.interval` 1m, `publish.topic` `timer` (both may be left out).
//! When the hub is unreachable at a tick, that tick is skipped and counted (`skipped`), not queued.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baetyl_sdk::ConfigError;
use baetyl_sdk::config::{ByteSize, ConfigFile, HumanDuration};
use baetyl_sdk::logging::LogFormat;
use baetyl_sdk::mqtt::Qos;
use baetyl_sdk::service::{Kit, shutdown_signal};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::watch;

use crate::config::{Connection, DEFAULT_CONFIG_PATH, LoggerConfig, endpoint};
use crate::error::RemoteError;
use crate::link::Link;
use crate::{gotemplate, topic};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimerConfig {
    pub hub: Connection,
    #[serde(default)]
    pub timer: TimerSection,
    pub publish: PublishSection,
    #[serde(default = "default_report_interval")]
    pub report_interval: HumanDuration,
    #[serde(default)]
    pub logger: LoggerConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimerSection {
    /// v1's default: 1m.
    #[serde(default = "default_interval")]
    pub interval: HumanDuration,
}

impl Default for TimerSection {
    fn default() -> Self {
        TimerSection {
            interval: default_interval(),
        }
    }
}

fn default_interval() -> HumanDuration {
    HumanDuration::from_secs(60)
}

fn default_topic() -> String {
    "timer".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishSection {
    /// v1's default: `timer`.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// 0 or 1.
    #[serde(default)]
    pub qos: Qos,
    #[serde(default = "default_payload")]
    pub payload: Value,
}

fn default_report_interval() -> HumanDuration {
    HumanDuration::from_secs(10)
}
fn default_payload() -> Value {
    Value::Object(serde_json::Map::new())
}

impl ConfigFile for TimerConfig {
    fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        let bad = |m: String| ConfigError::invalid(file, m);
        self.hub.check(file, "hub")?;
        if self.timer.interval.get() < Duration::from_millis(1) {
            return Err(bad("timer.interval: must be at least 1ms, e.g. 1s".into()));
        }
        topic::validate_topic(&self.publish.topic)
            .map_err(|m| bad(format!("publish.topic: {m}")))?;
        self.publish
            .qos
            .require_0_or_1()
            .map_err(|e| bad(format!("publish.qos: {e}")))?;
        Payload::new(&self.publish.payload).map_err(|m| bad(format!("publish.payload: {m}")))?;
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Var {
    Time,
    TimeMs,
    Rfc3339,
    Seq,
    Topic,
    ClientId,
}

const VARS: &[(&str, Var)] = &[
    ("time", Var::Time),
    ("time_ms", Var::TimeMs),
    ("time_rfc3339", Var::Rfc3339),
    ("seq", Var::Seq),
    ("topic", Var::Topic),
    ("clientid", Var::ClientId),
];

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Lit(String),
    Var(Var),
    /// v1's Go template action.
    Go(gotemplate::Action),
}

fn parse_template(s: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            parts.push(Part::Lit(rest[..open].to_string()));
        }
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or_else(|| format!("`{s}`: `{{{{` without a closing `}}}}`"))?;
        let mut name = after[..close].trim();
        // Go's trim markers: `{{- x -}}` removes the spaces next to the action.
        if let Some(n) = name.strip_prefix("- ") {
            name = n.trim_start();
            if let Some(Part::Lit(l)) = parts.last_mut() {
                l.truncate(l.trim_end().len());
            }
        }
        let trim_after = name.ends_with(" -");
        if trim_after {
            name = name[..name.len() - 2].trim_end();
        }
        rest = &after[close + 2..];
        if trim_after {
            rest = rest.trim_start();
        }
        if name.starts_with('.') {
            parts.push(Part::Go(
                gotemplate::parse(name).map_err(|e| format!("`{s}`: {e}"))?,
            ));
            continue;
        }
        let var = VARS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .ok_or_else(|| {
                format!(
                    "unknown placeholder `{{{{{name}}}}}`; known: {}, and v1's Go template actions such as {{{{.Time.NowUnix}}}} and {{{{.Rand.Intn 10}}}}",
                    VARS.iter()
                        .map(|(n, _)| format!("{{{{{n}}}}}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
        parts.push(Part::Var(var));
    }
    if !rest.is_empty() {
        parts.push(Part::Lit(rest.to_string()));
    }
    Ok(parts)
}

/// What a placeholder expands to for one message.
pub struct Context<'a> {
    pub now: SystemTime,
    pub seq: u64,
    pub topic: &'a str,
    pub clientid: &'a str,
}

impl Context<'_> {
    fn unix(&self) -> Duration {
        self.now.duration_since(UNIX_EPOCH).unwrap_or_default()
    }
    fn text(&self, v: Var) -> String {
        match v {
            Var::Time => self.unix().as_secs().to_string(),
            Var::TimeMs => self.unix().as_millis().to_string(),
            Var::Rfc3339 => humantime::format_rfc3339_millis(self.now).to_string(),
            Var::Seq => self.seq.to_string(),
            Var::Topic => self.topic.to_string(),
            Var::ClientId => self.clientid.to_string(),
        }
    }
    fn number(&self, v: Var) -> Option<Value> {
        match v {
            Var::Time => Some(Value::from(self.unix().as_secs())),
            Var::TimeMs => Some(Value::from(self.unix().as_millis() as u64)),
            Var::Seq => Some(Value::from(self.seq)),
            _ => None,
        }
    }
}

fn expand(parts: &[Part], ctx: &Context<'_>) -> String {
    parts
        .iter()
        .map(|p| match p {
            Part::Lit(s) => s.clone(),
            Part::Var(v) => ctx.text(*v),
            Part::Go(a) => gotemplate::eval(a, ctx.now).to_string(),
        })
        .collect()
}

/// A compiled payload template.
#[derive(Debug, Clone)]
pub struct Payload {
    source: Value,
}

impl Payload {
    /// Checks every placeholder in `source`.
    pub fn new(source: &Value) -> Result<Payload, String> {
        fn check(v: &Value) -> Result<(), String> {
            match v {
                Value::String(s) => parse_template(s).map(|_| ()),
                Value::Array(a) => a.iter().try_for_each(check),
                Value::Object(o) => o.values().try_for_each(check),
                _ => Ok(()),
            }
        }
        check(source)?;
        Ok(Payload {
            source: source.clone(),
        })
    }

    /// The bytes of one message.
    pub fn render(&self, ctx: &Context<'_>) -> Vec<u8> {
        fn walk(v: &Value, ctx: &Context<'_>) -> Value {
            match v {
                Value::String(s) => {
                    let parts = parse_template(s).unwrap_or_else(|_| vec![Part::Lit(s.clone())]);
                    match parts.as_slice() {
                        [Part::Var(var)] => {
                            if let Some(n) = ctx.number(*var) {
                                return n;
                            }
                        }
                        [Part::Go(a)] => {
                            let v = gotemplate::eval(a, ctx.now);
                            return v.to_json().unwrap_or_else(|| Value::String(v.to_string()));
                        }
                        _ => {}
                    }
                    Value::String(expand(&parts, ctx))
                }
                Value::Array(a) => Value::Array(a.iter().map(|x| walk(x, ctx)).collect()),
                Value::Object(o) => {
                    Value::Object(o.iter().map(|(k, x)| (k.clone(), walk(x, ctx))).collect())
                }
                other => other.clone(),
            }
        }
        match &self.source {
            Value::String(s) => {
                let parts = parse_template(s).unwrap_or_else(|_| vec![Part::Lit(s.clone())]);
                expand(&parts, ctx).into_bytes()
            }
            other => {
                let mut v = walk(other, ctx);
                if let Value::Object(o) = &mut v
                    && !o.contains_key("time")
                {
                    o.insert("time".into(), Value::from(ctx.unix().as_secs()));
                }
                v.to_string().into_bytes()
            }
        }
    }
}

/// Arguments of `baetyl timer`.
#[derive(Debug, Clone, clap::Args)]
pub struct TimerArgs {
    /// The timer's config file.
    #[arg(short = 'c', long = "config", value_name = "FILE", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// Log line format: `human` or `json`; overrides `logger.format` in the config.
    #[arg(long = "log-format", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
}

/// Loads the config, sets up logging, runs the timer until SIGTERM or SIGINT.
pub fn run_cli(args: TimerArgs) -> Result<(), RemoteError> {
    let cfg = TimerConfig::load(&args.config)?;
    Kit::new("timer")
        .worker_threads(2)
        .init(&cfg.logger, args.log_format)?
        .block_on(run(cfg, shutdown_signal()))
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    acknowledged: AtomicU64,
    skipped: AtomicU64,
}

/// Publishes until `shutdown` completes.
pub async fn run(cfg: TimerConfig, shutdown: impl Future<Output = ()>) -> Result<(), RemoteError> {
    let endpoint = endpoint("hub", &cfg.hub, "baetyl-timer", ByteSize(1 << 20))?;
    let payload = Payload::new(&cfg.publish.payload).map_err(RemoteError::Template)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (link, driver) = Link::start(&endpoint, Vec::new(), None, stop_rx.clone());
    let counters = Arc::new(Counters::default());
    let reporter = std::env::var(baetyl_sdk::env::SERVICE_NAME)
        .is_ok()
        .then(|| {
            tokio::spawn(report(
                counters.clone(),
                cfg.report_interval.get(),
                stop_rx.clone(),
            ))
        });
    let qos = cfg.publish.qos.into();
    tokio::pin!(shutdown);
    // The first tick waits for the first connection; later outages skip ticks.
    let mut stopped = tokio::select! {
        _ = link.wait_connected() => false,
        _ = &mut shutdown => true,
    };
    let mut tick = tokio::time::interval(cfg.timer.interval.get());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tracing::info!(topic = %cfg.publish.topic, interval = %cfg.timer.interval, "timer started");
    let mut seq = 0u64;
    while !stopped {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut shutdown => {
                stopped = true;
                continue;
            }
        }
        let ctx = Context {
            now: SystemTime::now(),
            seq: seq + 1,
            topic: &cfg.publish.topic,
            clientid: &endpoint.client_id,
        };
        match link.publish(&cfg.publish.topic, qos, payload.render(&ctx)) {
            Ok(ack) => {
                seq += 1;
                counters.published.fetch_add(1, Ordering::Relaxed);
                let c = counters.clone();
                tokio::spawn(async move {
                    if ack.await.is_ok() {
                        c.acknowledged.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            Err(_) => {
                let n = counters.skipped.fetch_add(1, Ordering::Relaxed) + 1;
                if n == 1 || n.is_multiple_of(60) {
                    tracing::warn!(skipped = n, "hub not connected: tick skipped");
                }
            }
        }
    }
    stop_tx.send_replace(true);
    let _ = driver.await;
    if let Some(r) = reporter {
        let _ = r.await;
    }
    tracing::info!(
        published = counters.published.load(Ordering::Relaxed),
        skipped = counters.skipped.load(Ordering::Relaxed),
        "timer stopped"
    );
    Ok(())
}

async fn report(counters: Arc<Counters>, every: Duration, mut stop: watch::Receiver<bool>) {
    let stats = || {
        std::future::ready(serde_json::json!({
            "published": counters.published.load(Ordering::Relaxed),
            "acknowledged": counters.acknowledged.load(Ordering::Relaxed),
            "skipped": counters.skipped.load(Ordering::Relaxed),
        }))
    };
    baetyl_sdk::client::report_periodically(every, stats, async move {
        let _ = stop.changed().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use baetyl_sdk::config::parse_yaml;

    fn ctx(seq: u64) -> Context<'static> {
        Context {
            now: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            seq,
            topic: "timer",
            clientid: "t1",
        }
    }

    #[test]
    fn string_templates_expand() {
        let p = Payload::new(&Value::String(
            "n={{seq}} t={{ time }} ms={{time_ms}} on {{topic}}/{{clientid}}".into(),
        ))
        .unwrap();
        assert_eq!(
            String::from_utf8(p.render(&ctx(7))).unwrap(),
            "n=7 t=1700000000 ms=1700000000123 on timer/t1"
        );
        let p = Payload::new(&Value::String("{{time_rfc3339}}".into())).unwrap();
        assert_eq!(
            String::from_utf8(p.render(&ctx(1))).unwrap(),
            "2023-11-14T22:13:20.123Z"
        );
    }

    #[test]
    fn mapping_payload_becomes_json_with_numbers_and_time() {
        let p =
            Payload::new(&serde_json::json!({"id": 1, "n": "{{seq}}", "label": "tick {{seq}}"}))
                .unwrap();
        let v: Value = serde_json::from_slice(&p.render(&ctx(3))).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": 1, "n": 3, "label": "tick 3", "time": 1_700_000_000u64})
        );
    }

    /// v1.0.2's example timer config (tests/fixtures/v1/native/var/db/baetyl/timer-conf/service.yml).
    const V1_EXAMPLE: &str =
        include_str!("../../../tests/fixtures/v1/native/var/db/baetyl/timer-conf/service.yml");

    #[test]
    fn v1_example_go_template_renders_json() {
        let cfg: TimerConfig = parse_yaml(V1_EXAMPLE, Path::new("timer.yml")).expect("v1 config");
        cfg.validate(Path::new("timer.yml")).expect("valid");
        assert_eq!(cfg.timer.interval, HumanDuration::from_secs(10));
        let p = Payload::new(&cfg.publish.payload).expect("template");
        let v: Value = serde_json::from_slice(&p.render(&ctx(1))).expect("JSON, as v1 sent");
        assert_eq!(v["datetime"], "2023-11-14 22:13:20.123 +0000 UTC");
        assert_eq!(v["time"], 1_700_000_000u64);
        assert_eq!(v["timestampNano"], 1_700_000_000_123_000_000u64);
        assert!((0..10).contains(&v["id"].as_i64().expect("id")), "{v}");
        assert!(v["random1"].as_i64().expect("random1") >= 0, "{v}");
        assert!(
            (0.0..60.0).contains(&v["random5"].as_f64().expect("random5")),
            "{v}"
        );
        assert_eq!(v["anyString"], "inputString");
    }

    #[test]
    fn v1_defaults_and_go_actions_in_mappings() {
        let text = "hub: {address: 'tcp://h:1883'}\npublish: {payload: {n: '{{.Rand.Intn 5}}', at: '{{- .Time.Now.Format \"2006\" -}}', s: 'x {{ .Time.NowUnix }}'}}\n";
        let cfg: TimerConfig = parse_yaml(text, Path::new("timer.yml")).expect("parse");
        cfg.validate(Path::new("timer.yml")).expect("valid");
        assert_eq!(
            cfg.timer.interval,
            HumanDuration::from_secs(60),
            "v1's default"
        );
        assert_eq!(cfg.publish.topic, "timer", "v1's default");
        let p = Payload::new(&cfg.publish.payload).expect("template");
        let v: Value = serde_json::from_slice(&p.render(&ctx(1))).expect("JSON");
        assert!((0..5).contains(&v["n"].as_i64().expect("a number")), "{v}");
        assert_eq!(v["at"], "2023");
        assert_eq!(v["s"], "x 1700000000");
        let e = Payload::new(&Value::String("{{.Rand.Intn 0}}".into())).unwrap_err();
        assert!(e.contains("between 1"), "{e}");
    }

    #[test]
    fn bad_placeholders_are_rejected_at_load() {
        let text = "hub: {address: 'tcp://h:1883'}\ntimer: {interval: 1s}\npublish: {topic: t, payload: '{{nope}}'}\n";
        let cfg: TimerConfig = parse_yaml(text, Path::new("timer.yml")).unwrap();
        let e = cfg
            .validate(Path::new("timer.yml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("publish.payload") && e.contains("{{nope}}") && e.contains("{{seq}}"),
            "{e}"
        );
        let text =
            "hub: {address: 'tcp://h:1883'}\ntimer: {interval: 1s}\npublish: {topic: 't/#'}\n";
        let cfg: TimerConfig = parse_yaml(text, Path::new("timer.yml")).unwrap();
        assert!(cfg.validate(Path::new("timer.yml")).is_err());
        let text = "hub: {address: 'tcp://h:1883'}\ntimer: {interval: 1s}\npublish: {topic: t, payload: 'a {{seq'}\n";
        let cfg: TimerConfig = parse_yaml(text, Path::new("timer.yml")).unwrap();
        assert!(cfg.validate(Path::new("timer.yml")).is_err());
    }
}
