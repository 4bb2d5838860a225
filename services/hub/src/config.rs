//! The hub's config file (`etc/baetyl/service.yml`): Baetyl v1's hub schema, validated at load.
//!
//! ```yaml
//! listen: [tcp://0.0.0.0:1883, ssl://0.0.0.0:8883, ws://:8080/mqtt, wss://:8884/mqtt]
//! certificate: {ca: var/db/baetyl/cert/ca.pem, cert: var/db/baetyl/cert/server.pem, key: var/db/baetyl/cert/server.key}
//! principals:
//!   - {username: test, password: hahaha, permissions: [{action: pub, permit: ['#']}, {action: sub, permit: ['t/#']}]}
//!   - {username: device-1, permissions: [{action: pub, permit: ['sensors/device-1/#']}]}   # certificate principal
//! subscriptions:
//!   - {source: {topic: t, qos: 1}, target: {topic: t/topic, qos: 1}}
//! message: {length: {max: 32k}}
//! storage: {dir: var/db/baetyl/data}
//! logger: {path: var/log/baetyl/hub.log, level: info}
//! limits: {connections: 10000, connect_timeout: 10s, retained: {messages: 10000, bytes: 64m}}
//! client_id: any          # or v1: ^[0-9A-Za-z_-]{1,128}$
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use baetyl_sdk::ConfigError;
use baetyl_sdk::config::{ByteSize, ConfigFile, HumanDuration};
use serde::Deserialize;

use crate::topic;

/// The default config path, relative to the work directory.
pub const DEFAULT_CONFIG_PATH: &str = "etc/baetyl/service.yml";
/// MQTT's largest packet (the remaining-length field's limit).
pub const MQTT_MAX_PACKET: u64 = 268_435_455;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    /// Listener URLs: `tcp://`, `ssl://`, `ws://`, `wss://` (`host:port[/path]`; an empty host means all
    /// interfaces), parsed once at load.
    #[serde(default = "default_listen")]
    pub listen: Vec<ListenSpec>,
    /// Server certificate (for `ssl://`/`wss://`) and the CA that client certificates must chain to.
    #[serde(default)]
    pub certificate: Option<Certificate>,
    /// Who may connect and what each may publish and subscribe. Nobody else can connect.
    #[serde(default)]
    pub principals: Vec<Principal>,
    /// Internal routing rules: every message on `source.topic` is republished on `target.topic`.
    #[serde(default)]
    pub subscriptions: Vec<Route>,
    #[serde(default)]
    pub message: MessageConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub logger: LoggerConfig,
    /// Bounds on what clients may make the hub hold (connections, handshakes, queues, retained messages).
    #[serde(default)]
    pub limits: Limits,
    /// Which client ids are accepted.
    #[serde(default)]
    pub client_id: ClientIdRule,
    /// v1's `shutdown` and `metrics` (see [`crate::v1keys`]).
    #[serde(default)]
    pub shutdown: crate::v1keys::Shutdown,
    #[serde(default)]
    pub metrics: crate::v1keys::Metrics,
}

fn default_listen() -> Vec<ListenSpec> {
    vec![ListenSpec {
        url: "tcp://0.0.0.0:1883".to_string(),
        kind: ListenKind::Tcp,
        addr: SocketAddr::from(([0, 0, 0, 0], 1883)),
        path: None,
    }]
}

/// Client ids the hub accepts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientIdRule {
    /// Anything MQTT allows: any UTF-8 without control characters, up to 65535 bytes; an empty id gets one
    /// assigned (clean sessions).
    #[default]
    Any,
    /// Baetyl v1's rule, `^[0-9A-Za-z_-]{1,128}$`; other ids are refused (CONNACK 0x02 / 0x85).
    V1,
}

/// Limits, all optional; the defaults suit a device serving a few thousand clients.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Network connections open at once over all listeners, counted from accept; more are closed at once.
    /// Kept below the process's descriptor limit at start.
    #[serde(default = "default_connections")]
    pub connections: usize,
    /// Connections open at once by one principal; more are refused (CONNACK 0x03 / 0x97 quota exceeded).
    #[serde(default = "default_connections_per_principal")]
    pub connections_per_principal: usize,
    /// Time from accept to a complete CONNECT (TLS and WebSocket handshakes included) on every listener.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// The longest keep alive a client may use. MQTT 5 clients asking for more (or none) are told this one
    /// (Server Keep Alive); 3.1.1 clients asking for more are refused. 0 (the default): the client's choice.
    #[serde(default)]
    pub keep_alive: HumanDuration,
    /// QoS 1/2 messages in flight per client and direction (the hub's Receive Maximum).
    #[serde(default = "default_inflight")]
    pub inflight: u16,
    /// MQTT 5 Topic Aliases a client may use towards the hub (Topic Alias Maximum).
    #[serde(default = "default_topic_aliases")]
    pub topic_aliases: u16,
    /// Messages queued per session (offline persistent sessions, slow subscribers); beyond it the oldest
    /// QoS 1/2 are dropped and counted.
    #[serde(default = "default_queued")]
    pub queued: usize,
    /// How long an offline persistent session is kept: 3.1.1 sessions, and the cap on what MQTT 5 clients ask.
    #[serde(default = "default_expiry")]
    pub session_expiry: HumanDuration,
    /// How long a message without a Message Expiry Interval of its own may wait for a subscriber.
    #[serde(default = "default_expiry")]
    pub message_expiry: HumanDuration,
    #[serde(default)]
    pub retained: RetainedLimits,
}

/// Bounds on retained messages (they live on disk until cleared).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetainedLimits {
    /// Topics with a retained message. A retained PUBLISH on a new topic beyond it is delivered but not
    /// retained (counted); replacing or clearing an existing one always works.
    #[serde(default = "default_retained_messages")]
    pub messages: usize,
    /// Total payload bytes of retained messages; the same rule as `messages`.
    #[serde(default = "default_retained_bytes")]
    pub bytes: ByteSize,
}

fn default_connections() -> usize {
    10_000
}
fn default_connections_per_principal() -> usize {
    1_000
}
fn default_connect_timeout() -> HumanDuration {
    HumanDuration::from_secs(10)
}
fn default_inflight() -> u16 {
    16
}
fn default_topic_aliases() -> u16 {
    16
}
fn default_queued() -> usize {
    100_000
}
fn default_expiry() -> HumanDuration {
    HumanDuration::from_secs(7 * 24 * 3600)
}
fn default_retained_messages() -> usize {
    10_000
}
fn default_retained_bytes() -> ByteSize {
    ByteSize(64 << 20)
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections: default_connections(),
            connections_per_principal: default_connections_per_principal(),
            connect_timeout: default_connect_timeout(),
            keep_alive: HumanDuration::default(),
            inflight: default_inflight(),
            topic_aliases: default_topic_aliases(),
            queued: default_queued(),
            session_expiry: default_expiry(),
            message_expiry: default_expiry(),
            retained: RetainedLimits::default(),
        }
    }
}

impl Default for RetainedLimits {
    fn default() -> Self {
        RetainedLimits {
            messages: default_retained_messages(),
            bytes: default_retained_bytes(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    /// CA certificate(s) (PEM) that client certificates must chain to. When set, `ssl://` and `wss://` listeners
    /// require a client certificate (two-way TLS).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server private key (PEM).
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Principal {
    pub username: String,
    /// Absent: a certificate principal, whose identity is the common name of a verified client certificate.
    #[serde(default)]
    pub password: Option<Secret>,
    #[serde(default)]
    pub permissions: Vec<Permission>,
}

/// A password from the config: never printed, compared in constant time.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Pub,
    Sub,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Permission {
    pub action: Action,
    /// Topic filters (`+`, `#` allowed).
    pub permit: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub source: RouteEnd,
    pub target: RouteEnd,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteEnd {
    pub topic: String,
    #[serde(default)]
    pub qos: u8,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageConfig {
    #[serde(default)]
    pub length: LengthConfig,
    /// v1's engine keys (see [`crate::v1keys`]).
    #[serde(default)]
    pub ingress: crate::v1keys::Ingress,
    #[serde(default)]
    pub egress: crate::v1keys::Egress,
    #[serde(default)]
    pub offset: crate::v1keys::Offset,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LengthConfig {
    /// Largest accepted payload.
    #[serde(default = "default_max_length")]
    pub max: ByteSize,
}

fn default_max_length() -> ByteSize {
    ByteSize(32 * 1024)
}

impl Default for LengthConfig {
    fn default() -> Self {
        LengthConfig {
            max: default_max_length(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Where retained messages and persistent sessions live.
    #[serde(default = "default_storage_dir")]
    pub dir: PathBuf,
}

fn default_storage_dir() -> PathBuf {
    PathBuf::from("var/db/baetyl/data")
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            dir: default_storage_dir(),
        }
    }
}

pub use baetyl_sdk::logging::LoggerConfig;

/// The kind of a listener, from the scheme of its URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenKind {
    Tcp,
    Ssl,
    Ws,
    Wss,
}

impl ListenKind {
    pub fn is_tls(self) -> bool {
        matches!(self, ListenKind::Ssl | ListenKind::Wss)
    }
}

/// One `listen:` entry, parsed when the config is read.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ListenSpec {
    pub url: String,
    pub kind: ListenKind,
    pub addr: SocketAddr,
    /// The WebSocket path (`/mqtt`); informational: the engine accepts the upgrade on any path.
    pub path: Option<String>,
}

impl TryFrom<String> for ListenSpec {
    type Error = String;
    fn try_from(url: String) -> Result<Self, String> {
        parse_listen(&url)
    }
}

/// Parses `scheme://host:port[/path]`; an empty host means every interface.
pub fn parse_listen(url: &str) -> Result<ListenSpec, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("`{url}` is not a URL; write e.g. tcp://0.0.0.0:1883"))?;
    let kind = match scheme.to_ascii_lowercase().as_str() {
        "tcp" | "mqtt" => ListenKind::Tcp,
        "ssl" | "tls" | "mqtts" => ListenKind::Ssl,
        "ws" => ListenKind::Ws,
        "wss" => ListenKind::Wss,
        other => {
            return Err(format!(
                "`{url}`: scheme `{other}` is unknown; use tcp://, ssl://, ws:// or wss://"
            ));
        }
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(rest[i..].to_string())),
        None => (rest, None),
    };
    if path.is_some() && !matches!(kind, ListenKind::Ws | ListenKind::Wss) {
        return Err(format!(
            "`{url}`: only ws:// and wss:// listeners take a path"
        ));
    }
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| format!("`{url}` has no port; write e.g. {scheme}://0.0.0.0:1883"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("`{url}`: `{port}` is not a port number (0-65535)"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = if host.is_empty() { "0.0.0.0" } else { host };
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("`{url}`: cannot resolve `{host}`: {e}"))?
        .next()
        .ok_or_else(|| format!("`{url}`: `{host}` resolves to no address"))?;
    Ok(ListenSpec {
        url: url.to_string(),
        kind,
        addr,
        path,
    })
}

impl ConfigFile for HubConfig {
    /// Checks everything serde cannot: URLs, files needed by TLS, principals, topic filters and routing loops.
    fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        let bad = |msg: String| ConfigError::invalid(file, msg);
        self.check_v1_keys().map_err(bad)?;
        if self.listen.is_empty() {
            return Err(bad(
                "key `listen`: no listener; add at least one, e.g. `listen: [tcp://0.0.0.0:1883]`"
                    .into(),
            ));
        }
        let mut seen = BTreeMap::new();
        for (i, spec) in self.listen.iter().enumerate() {
            let url = &spec.url;
            if spec.kind.is_tls() && self.certificate.is_none() {
                return Err(bad(format!(
                    "key `listen[{i}]`: `{url}` needs TLS but `certificate` is not set; add `certificate: {{cert: FILE, key: FILE}}`"
                )));
            }
            if spec.addr.port() != 0
                && let Some(j) = seen.insert(spec.addr, i)
            {
                return Err(bad(format!(
                    "key `listen[{i}]`: `{url}` uses the same address as `listen[{j}]`; give each listener its own port"
                )));
            }
        }
        let has_tls = self.listen.iter().any(|s| s.kind.is_tls());
        let mut users = BTreeMap::new();
        for (i, p) in self.principals.iter().enumerate() {
            let key = format!("principals[{i}]");
            if p.username.is_empty() {
                return Err(bad(format!(
                    "key `{key}.username`: a username cannot be empty"
                )));
            }
            if let Some(j) = users.insert(p.username.as_str(), i) {
                return Err(bad(format!(
                    "key `{key}.username`: `{}` is already declared by `principals[{j}]`; usernames must be unique",
                    p.username
                )));
            }
            match &p.password {
                Some(pw) if pw.expose().is_empty() => {
                    return Err(bad(format!(
                        "key `{key}.password`: an empty password is not allowed; set one, or remove the key to make `{}` a certificate principal",
                        p.username
                    )));
                }
                Some(_) => {}
                None => {
                    let ca = self.certificate.as_ref().and_then(|c| c.ca.as_ref());
                    if ca.is_none() || !has_tls {
                        return Err(bad(format!(
                            "key `{key}`: `{}` has no password, so it must connect with a client certificate, which needs `certificate.ca` and an ssl:// or wss:// listener; add them, or give it a password",
                            p.username
                        )));
                    }
                }
            }
            for (k, perm) in p.permissions.iter().enumerate() {
                for (n, f) in perm.permit.iter().enumerate() {
                    topic::validate_filter(f).map_err(|e| {
                        bad(format!(
                            "key `{key}.permissions[{k}].permit[{n}]`: `{f}`: {e}"
                        ))
                    })?;
                }
            }
        }
        for (i, r) in self.subscriptions.iter().enumerate() {
            let key = format!("subscriptions[{i}]");
            topic::validate_filter(&r.source.topic).map_err(|e| {
                bad(format!(
                    "key `{key}.source.topic`: `{}`: {e}",
                    r.source.topic
                ))
            })?;
            topic::validate_name(&r.target.topic).map_err(|e| {
                bad(format!(
                    "key `{key}.target.topic`: `{}`: {e}; the target must be a plain topic",
                    r.target.topic
                ))
            })?;
            for (end, qos) in [("source", r.source.qos), ("target", r.target.qos)] {
                if qos > 2 {
                    return Err(bad(format!(
                        "key `{key}.{end}.qos`: {qos} is not a QoS; use 0, 1 or 2"
                    )));
                }
            }
        }
        if let Some(cycle) = crate::routing::find_loop(&self.subscriptions) {
            let path: Vec<String> = cycle
                .iter()
                .map(|&i| {
                    let r = &self.subscriptions[i];
                    format!(
                        "subscriptions[{i}] ({} -> {})",
                        r.source.topic, r.target.topic
                    )
                })
                .collect();
            return Err(bad(format!(
                "key `subscriptions`: the rules loop: {}; a message would be republished forever. Change a target topic so that no rule's source matches it",
                path.join(" then ")
            )));
        }
        let max = self.message.length.max.0;
        if max == 0 || max > MQTT_MAX_PACKET {
            return Err(bad(format!(
                "key `message.length.max`: {} is out of range; use a size between 1 and 256m, e.g. 32k",
                self.message.length.max
            )));
        }
        if self.storage.dir.as_os_str().is_empty() {
            return Err(bad(
                "key `storage.dir`: empty; set a directory, e.g. var/db/baetyl/data".into(),
            ));
        }
        self.limits.validate().map_err(bad)
    }
}

impl Limits {
    fn validate(&self) -> Result<(), String> {
        let positive = [
            ("connections", self.connections as u64, "10000"),
            (
                "connections_per_principal",
                self.connections_per_principal as u64,
                "1000",
            ),
            ("inflight", u64::from(self.inflight), "16"),
            ("queued", self.queued as u64, "100000"),
            ("retained.messages", self.retained.messages as u64, "10000"),
            ("retained.bytes", self.retained.bytes.0, "64m"),
        ];
        for (key, value, example) in positive {
            if value == 0 {
                return Err(format!(
                    "key `limits.{key}`: 0 would refuse everything; use a positive value, e.g. {example}"
                ));
            }
        }
        let t = self.connect_timeout.get();
        if t.is_zero() || t > Duration::from_secs(600) {
            return Err(format!(
                "key `limits.connect_timeout`: {} is out of range; use 1s to 10m, e.g. 10s",
                self.connect_timeout
            ));
        }
        let ka = self.keep_alive.get();
        if ka.as_secs() > u64::from(u16::MAX) || (!ka.is_zero() && ka < Duration::from_secs(1)) {
            return Err(format!(
                "key `limits.keep_alive`: {} is out of range; use 0 (no cap) or 1s to 18h12m15s",
                self.keep_alive
            ));
        }
        for (key, d) in [
            ("session_expiry", self.session_expiry),
            ("message_expiry", self.message_expiry),
        ] {
            if d.get() < Duration::from_secs(1) || d.get().as_secs() > u64::from(u32::MAX) {
                return Err(format!(
                    "key `limits.{key}`: {d} is out of range; use 1s to 136y, e.g. 7d"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<HubConfig, String> {
        HubConfig::parse(text, Path::new("service.yml")).map_err(|e| e.to_string())
    }

    #[test]
    fn v1_example_parses() {
        let cfg = parse(
            "listen: [tcp://0.0.0.0:1883, ssl://0.0.0.0:8883, 'ws://:8080/mqtt', 'wss://:8884/mqtt']\n\
             certificate: {ca: ca.pem, cert: server.pem, key: server.key}\n\
             principals:\n\
             - {username: test, password: hahaha, permissions: [{action: pub, permit: ['#']}, {action: sub, permit: ['t/#']}]}\n\
             - {username: dev, permissions: [{action: pub, permit: ['d/#']}]}\n\
             subscriptions:\n\
             - {source: {topic: t, qos: 1}, target: {topic: t/topic, qos: 1}}\n\
             message: {length: {max: 32k}}\n\
             storage: {dir: var/db/baetyl/data}\n",
        )
        .unwrap();
        assert_eq!(cfg.message.length.max.0, 32 * 1024);
        let l = &cfg.listen;
        assert_eq!(l[2].kind, ListenKind::Ws);
        assert_eq!(l[2].addr, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(l[2].path.as_deref(), Some("/mqtt"));
        assert_eq!(l[1].kind, ListenKind::Ssl);
        assert!(cfg.principals[1].password.is_none());
    }

    #[test]
    fn readme_example_is_valid() {
        let readme = include_str!("../README.md");
        let start = readme.find("```yaml\n").map(|i| i + 8).unwrap();
        let len = readme[start..].find("```").unwrap();
        let cfg = parse(&readme[start..start + len]).unwrap();
        assert_eq!(cfg.listen.len(), 4);
        assert_eq!(cfg.subscriptions.len(), 1);
    }

    #[test]
    fn defaults_apply_to_empty_file() {
        let cfg = parse("").unwrap();
        assert_eq!(
            cfg.listen,
            vec![parse_listen("tcp://0.0.0.0:1883").unwrap()]
        );
        assert_eq!(cfg.limits.connections, 10_000);
        assert_eq!(cfg.client_id, ClientIdRule::Any);
        assert_eq!(cfg.storage.dir, PathBuf::from("var/db/baetyl/data"));
        assert_eq!(cfg.message.length.max.0, 32 * 1024);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse("message: {length: {maxx: 1k}}").unwrap_err();
        assert!(
            err.contains("message.length.maxx") || err.contains("maxx"),
            "{err}"
        );
    }

    #[test]
    fn password_is_never_printed() {
        let cfg = parse("principals: [{username: u, password: s3cret-pw}]").unwrap();
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("s3cret-pw"), "{dbg}");
    }

    #[test]
    fn bad_values_name_key_and_fix() {
        let cases = [
            ("listen: [foo://x:1]", "listen[0]"),
            ("listen: ['tcp://0.0.0.0']", "no port"),
            ("listen: ['ssl://0.0.0.0:8883']", "certificate"),
            ("listen: []", "key `listen`"),
            ("principals: [{username: a}]", "principals[0]"),
            (
                "principals: [{username: a, password: x}, {username: a, password: y}]",
                "principals[1].username",
            ),
            (
                "principals: [{username: a, password: x, permissions: [{action: sub, permit: ['a/#/b']}]}]",
                "principals[0].permissions[0].permit[0]",
            ),
            (
                "subscriptions: [{source: {topic: a}, target: {topic: 'b/+'}}]",
                "subscriptions[0].target.topic",
            ),
            (
                "subscriptions: [{source: {topic: a, qos: 3}, target: {topic: b}}]",
                "subscriptions[0].source.qos",
            ),
            ("message: {length: {max: 0}}", "message.length.max"),
            ("limits: {connections: 0}", "limits.connections"),
            ("limits: {connect_timeout: 0s}", "limits.connect_timeout"),
            ("limits: {keep_alive: 20h}", "limits.keep_alive"),
            ("limits: {retained: {bytes: 0}}", "limits.retained.bytes"),
            ("limits: {conections: 5}", "conections"),
            ("client_id: strict", "client_id"),
        ];
        for (yaml, want) in cases {
            let err = parse(yaml).expect_err(yaml);
            assert!(err.contains(want), "{yaml}: {err}");
        }
    }

    #[test]
    fn routing_loop_is_rejected() {
        let err = parse(
            "subscriptions:\n\
             - {source: {topic: a}, target: {topic: b}}\n\
             - {source: {topic: 'b'}, target: {topic: c}}\n\
             - {source: {topic: 'c/#'}, target: {topic: a}}\n",
        )
        .unwrap_err();
        assert!(err.contains("loop"), "{err}");
        assert!(err.contains("subscriptions[0]"), "{err}");
        let ok = parse(
            "subscriptions:\n\
             - {source: {topic: a}, target: {topic: b}}\n\
             - {source: {topic: b}, target: {topic: c}}\n",
        );
        assert!(ok.is_ok(), "{ok:?}");
        let self_loop =
            parse("subscriptions: [{source: {topic: 'x/#'}, target: {topic: x/y}}]").unwrap_err();
        assert!(self_loop.contains("loop"), "{self_loop}");
    }
}

/// Property tests: loading never panics, whatever the text.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parse_never_panics(text in any::<String>()) {
            let _ = HubConfig::parse(&text, Path::new("fuzz.yml"));
        }

        #[test]
        fn routing_rules_from_any_accepted_config_terminate(
            rules in proptest::collection::vec((0u8..4, 0u8..4, 0u8..3), 0..6)
        ) {
            let topics = ["a", "a/b", "b", "a/#"];
            let mut yaml = String::from("subscriptions:\n");
            for (s, t, q) in &rules {
                let target = if *t == 3 { "c" } else { topics[*t as usize] };
                yaml.push_str(&format!(
                    "  - {{source: {{topic: '{}', qos: {q}}}, target: {{topic: '{target}', qos: 2}}}}\n",
                    topics[*s as usize]
                ));
            }
            if let Ok(cfg) = HubConfig::parse(&yaml, Path::new("fuzz.yml")) {
                let router = crate::routing::Router::new(&cfg.subscriptions);
                for t in ["a", "a/b", "b", "c"] {
                    prop_assert!(router.targets(t, 2).len() <= rules.len() * rules.len() + 1);
                }
            }
        }
    }
}
