//! The bridge's config file (`etc/baetyl/service.yml`): Baetyl v1's `hub`, `remotes`, `rules`, extended with
//! per-direction topic rewrite, the on-disk `buffer`, keep alive and clean session per connection.
//!
//! ```yaml
//! hub:                                   # the local hub
//!   address: tcp://127.0.0.1:1883        # tcp:// (or mqtt://) | ssl:// (or tls://, mqtts://); port 1883/8883 by default
//!   clientid: baetyl-remote              # default
//!   username: u                          # optional, with password
//!   password: p
//!   ca: ca.pem                           # ssl:// only: CA(s) the server must chain to (system roots if absent)
//!   cert: client.pem                     # ssl:// only: client certificate + key for two-way TLS (both or neither)
//!   key: client.key
//!   keepalive: 30s                       # default; 0 = off, else at least 1s
//!   clean_session: false                 # default (v1 spelling `cleansession` accepted)
//! remotes:                               # one or more, names unique ([A-Za-z0-9_-])
//!   - name: cloud
//!     address: 'ssl://cloud.example:8883'
//!     clientid: edge-1                   # default baetyl-remote-<name>
//!     # username, password, ca, cert, key, keepalive, clean_session: as for the hub
//! rules:
//!   - hub:                               # hub -> remote `remote.name`
//!       subscriptions: [{topic: 'sensors/#', qos: 1}]   # qos 0 or 1 (default 0)
//!       rewrite: {strip_prefix: sensors/, add_prefix: edge-1/}   # optional: sensors/t -> edge-1/t on the remote
//!     remote:                            # remote -> hub
//!       name: cloud
//!       subscriptions: [{topic: 'edge-1/cmd/#', qos: 1}]
//!       rewrite: {strip_prefix: edge-1/} # optional: edge-1/cmd/x -> cmd/x on the hub
//! buffer:                                # hub -> remote messages waiting for each remote
//!   dir: var/db/baetyl/remote            # default; one sub-directory per remote
//!   max_messages: 100000                 # default; beyond either bound the oldest are dropped and counted
//!   max_size: 64m                        # default
//!   fsync: true                          # default: sync each batch before acknowledging it to the hub
//! max_message_size: 1m                   # default
//! report_interval: 10s                   # default; stats to the master when started by it
//! logger: {path: var/log/baetyl/remote.log, level: info, format: human}
//! ```
//!
//! A rewrite removes `strip_prefix` when the topic starts with it (topics without it pass unchanged), then
//! prepends `add_prefix`; a message whose topic would become empty is skipped and counted (`rewrite_skipped`).
//! Rule pairs that could send messages around in a circle are reported as warnings at start.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use baetyl_sdk::ConfigError;
use baetyl_sdk::config::{ByteSize, ConfigFile, HumanDuration};
use rumqttc::{MqttOptions, QoS, TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

use crate::error::RemoteError;
use crate::topic::{self, Rewrite};

/// Where the bridge and the timer read their config when `-c` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "etc/baetyl/service.yml";

/// The whole bridge config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    pub hub: Connection,
    pub remotes: Vec<RemoteConnection>,
    #[serde(default)]
    pub rules: Vec<Rule>,
    #[serde(default)]
    pub buffer: BufferConfig,
    /// The largest message accepted from either side.
    #[serde(default = "default_max_message_size")]
    pub max_message_size: ByteSize,
    /// How often stats are reported to the master (when started by it).
    #[serde(default = "default_report_interval")]
    pub report_interval: HumanDuration,
    #[serde(default)]
    pub logger: LoggerConfig,
}

/// A connection to the hub (or, in the timer, the hub it publishes to).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connection {
    /// `tcp://host:port` or `ssl://host:port`.
    pub address: String,
    #[serde(default)]
    pub clientid: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// CA certificate(s) (PEM) the server must chain to; the system roots when absent.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for two-way TLS.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    #[serde(default = "default_keepalive")]
    pub keepalive: HumanDuration,
    /// Default false: the broker keeps our subscriptions and unacknowledged QoS 1 messages while we are away.
    #[serde(default, alias = "cleansession")]
    pub clean_session: bool,
}

/// One remote broker. Same keys as [`Connection`] plus its `name`, which rules refer to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteConnection {
    pub name: String,
    pub address: String,
    #[serde(default)]
    pub clientid: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub ca: Option<PathBuf>,
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    #[serde(default = "default_keepalive")]
    pub keepalive: HumanDuration,
    #[serde(default, alias = "cleansession")]
    pub clean_session: bool,
}

impl RemoteConnection {
    fn connection(&self) -> Connection {
        Connection {
            address: self.address.clone(),
            clientid: self.clientid.clone(),
            username: self.username.clone(),
            password: self.password.clone(),
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            keepalive: self.keepalive,
            clean_session: self.clean_session,
        }
    }
}

/// A rule: what goes from the hub to one remote, and what comes back from it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Hub -> remote: messages the hub delivers on these subscriptions are sent to `remote.name`.
    #[serde(default)]
    pub hub: HubSide,
    /// Remote -> hub: messages the remote delivers on these subscriptions are published to the hub.
    pub remote: RemoteSide,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubSide {
    #[serde(default)]
    pub subscriptions: Vec<Subscription>,
    /// Applied to the topic of messages going from the hub to the remote.
    #[serde(default)]
    pub rewrite: Rewrite,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteSide {
    pub name: String,
    #[serde(default)]
    pub subscriptions: Vec<Subscription>,
    /// Applied to the topic of messages going from the remote to the hub.
    #[serde(default)]
    pub rewrite: Rewrite,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    pub topic: String,
    #[serde(default)]
    pub qos: u8,
}

/// The on-disk store that keeps hub -> remote messages until the remote acknowledged them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BufferConfig {
    /// One sub-directory per remote.
    #[serde(default = "default_buffer_dir")]
    pub dir: PathBuf,
    /// At most this many messages wait per remote; beyond it the oldest are dropped and counted.
    #[serde(default = "default_max_messages")]
    pub max_messages: u64,
    /// At most this many bytes wait per remote; beyond it the oldest are dropped and counted.
    #[serde(default = "default_max_size")]
    pub max_size: ByteSize,
    /// Flush each batch to stable storage before acknowledging it to the hub (survives power loss, not just a
    /// crash of the bridge).
    #[serde(default = "default_true")]
    pub fsync: bool,
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            dir: default_buffer_dir(),
            max_messages: default_max_messages(),
            max_size: default_max_size(),
            fsync: true,
        }
    }
}

pub use baetyl_sdk::logging::LoggerConfig;
fn default_keepalive() -> HumanDuration {
    HumanDuration::from_secs(30)
}
fn default_max_message_size() -> ByteSize {
    ByteSize(1 << 20)
}
fn default_report_interval() -> HumanDuration {
    HumanDuration::from_secs(10)
}
fn default_buffer_dir() -> PathBuf {
    PathBuf::from("var/db/baetyl/remote")
}
fn default_max_messages() -> u64 {
    100_000
}
fn default_max_size() -> ByteSize {
    ByteSize(64 << 20)
}
fn default_true() -> bool {
    true
}

pub(crate) fn qos_of(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        _ => QoS::AtLeastOnce,
    }
}

fn check_qos(file: &Path, key: &str, qos: u8) -> Result<(), ConfigError> {
    if qos > 1 {
        return Err(ConfigError::invalid(
            file,
            format!("{key}: qos {qos} is not supported by the bridge; use 0 or 1"),
        ));
    }
    Ok(())
}

impl BridgeConfig {
    /// Rule pairs that can send a message in a circle: from a remote to the hub, and from the hub back to the
    /// same remote on a topic that remote's subscriptions match again.
    pub fn loop_warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, back) in self.rules.iter().enumerate() {
            for (j, out_rule) in self.rules.iter().enumerate() {
                if out_rule.remote.name != back.remote.name {
                    continue;
                }
                for rs in &back.remote.subscriptions {
                    let on_hub = back.remote.rewrite.apply_filter(&rs.topic);
                    for hs in &out_rule.hub.subscriptions {
                        if !topic::overlap(&on_hub, &hs.topic) {
                            continue;
                        }
                        let on_remote = out_rule.hub.rewrite.apply_filter(&hs.topic);
                        if topic::overlap(&on_remote, &rs.topic) {
                            out.push(format!(
                                "rules[{i}] brings `{}` from remote `{}` to the hub as `{on_hub}`, and rules[{j}] sends                                  `{}` back to it as `{on_remote}`: messages may loop; use distinct topics or a rewrite",
                                rs.topic, back.remote.name, hs.topic
                            ));
                        }
                    }
                }
            }
        }
        out
    }

    /// The settings of the hub connection.
    pub fn hub_endpoint(&self) -> Result<Endpoint, RemoteError> {
        Endpoint::new(
            "hub",
            &self.hub,
            "baetyl-remote",
            self.max_message_size.0 as usize,
        )
    }

    /// The settings of each remote connection, in config order.
    pub fn remote_endpoints(&self) -> Result<Vec<Endpoint>, RemoteError> {
        self.remotes
            .iter()
            .map(|r| {
                Endpoint::new(
                    &format!("remote `{}`", r.name),
                    &r.connection(),
                    &format!("baetyl-remote-{}", r.name),
                    self.max_message_size.0 as usize,
                )
            })
            .collect()
    }
}

impl ConfigFile for BridgeConfig {
    /// Checks what the schema cannot: addresses, names, filters, QoS, limits.
    fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        let bad = |m: String| ConfigError::invalid(file, m);
        self.hub.check(file, "hub")?;
        if self.remotes.is_empty() {
            return Err(bad(
                "remotes: at least one remote is needed, e.g. `remotes: [{name: cloud, address: 'tcp://host:1883'}]`"
                    .into(),
            ));
        }
        let mut names = BTreeSet::new();
        for (i, r) in self.remotes.iter().enumerate() {
            let key = format!("remotes[{i}]");
            if r.name.is_empty()
                || !r
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(bad(format!(
                    "{key}.name: `{}` is not a valid name; use letters, digits, `-` and `_`",
                    r.name
                )));
            }
            if !names.insert(r.name.as_str()) {
                return Err(bad(format!(
                    "{key}.name: remote `{}` is declared twice",
                    r.name
                )));
            }
            r.connection().check(file, &key)?;
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let key = format!("rules[{i}]");
            if !names.contains(rule.remote.name.as_str()) {
                return Err(bad(format!(
                    "{key}.remote.name: no remote is named `{}`; declared: {}",
                    rule.remote.name,
                    names.iter().copied().collect::<Vec<_>>().join(", ")
                )));
            }
            if rule.hub.subscriptions.is_empty() && rule.remote.subscriptions.is_empty() {
                return Err(bad(format!(
                    "{key}: the rule has no subscriptions on either side, so it carries nothing"
                )));
            }
            for (side, subs, rw) in [
                ("hub", &rule.hub.subscriptions, &rule.hub.rewrite),
                ("remote", &rule.remote.subscriptions, &rule.remote.rewrite),
            ] {
                for (j, s) in subs.iter().enumerate() {
                    let skey = format!("{key}.{side}.subscriptions[{j}]");
                    topic::validate_filter(&s.topic)
                        .map_err(|m| bad(format!("{skey}.topic: {m}")))?;
                    check_qos(file, &format!("{skey}.qos"), s.qos)?;
                }
                rw.validate()
                    .map_err(|m| bad(format!("{key}.{side}.rewrite: {m}")))?;
            }
        }
        if self.buffer.max_messages == 0 {
            return Err(bad("buffer.max_messages: must be at least 1".into()));
        }
        if self.buffer.max_size.0 < 1024 {
            return Err(bad("buffer.max_size: must be at least 1k".into()));
        }
        if self.max_message_size.0 == 0 || self.max_message_size.0 > (256 << 20) {
            return Err(bad("max_message_size: must be between 1 and 256m".into()));
        }
        Ok(())
    }
}

impl Connection {
    /// Validation shared by every connection: address, keep alive, TLS files given in pairs.
    pub fn check(&self, file: &Path, key: &str) -> Result<(), ConfigError> {
        let bad = |m: String| ConfigError::invalid(file, m);
        parse_address(&self.address).map_err(|m| bad(format!("{key}.address: {m}")))?;
        let ka = self.keepalive.get();
        if !ka.is_zero() && ka < Duration::from_secs(1) {
            return Err(bad(format!(
                "{key}.keepalive: {} is too short; use 0 (off) or at least 1s",
                self.keepalive
            )));
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err(bad(format!(
                "{key}: `cert` and `key` go together (two-way TLS needs both)"
            )));
        }
        if let Some(id) = &self.clientid
            && id.is_empty()
        {
            return Err(bad(format!(
                "{key}.clientid: cannot be empty; leave it out for the default"
            )));
        }
        if self.password.is_some() && self.username.is_none() {
            return Err(bad(format!("{key}: a password needs a username")));
        }
        Ok(())
    }
}

/// The parsed form of an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

/// Parses `tcp://host:port` (also `mqtt://`) or `ssl://host:port` (also `tls://`, `mqtts://`).
pub fn parse_address(s: &str) -> Result<Address, String> {
    let usage = "write tcp://host:1883 or ssl://host:8883";
    let (scheme, rest) = s
        .split_once("://")
        .ok_or_else(|| format!("`{s}` has no scheme; {usage}"))?;
    let tls = match scheme {
        "tcp" | "mqtt" => false,
        "ssl" | "tls" | "mqtts" => true,
        other => return Err(format!("scheme `{other}` is not supported; {usage}")),
    };
    let rest = rest.trim_end_matches('/');
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("`{s}`: unclosed `[` in the host"))?;
        match after.strip_prefix(':') {
            Some(p) => (h.to_string(), Some(p)),
            None if after.is_empty() => (h.to_string(), None),
            None => return Err(format!("`{s}`: unexpected `{after}` after the host")),
        }
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (rest.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(format!("`{s}` has no host; {usage}"));
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("`{s}`: `{p}` is not a port"))?,
        None => default_port,
    };
    Ok(Address { host, port, tls })
}

/// Everything needed to open one MQTT connection.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// For logs and errors: `hub`, `remote \`cloud\``.
    pub name: String,
    pub address: Address,
    pub clientid: String,
    pub credentials: Option<(String, String)>,
    pub keepalive: Duration,
    pub clean_session: bool,
    pub max_packet_size: usize,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Endpoint {
    pub fn new(
        name: &str,
        c: &Connection,
        default_clientid: &str,
        max_message_size: usize,
    ) -> Result<Self, RemoteError> {
        let err = |message: String| RemoteError::Endpoint {
            name: name.to_string(),
            message,
        };
        let address = parse_address(&c.address).map_err(err)?;
        let tls = if address.tls {
            Some(Arc::new(tls_config(name, c)?))
        } else {
            None
        };
        Ok(Endpoint {
            name: name.to_string(),
            address,
            clientid: c
                .clientid
                .clone()
                .unwrap_or_else(|| default_clientid.to_string()),
            credentials: c
                .username
                .clone()
                .map(|u| (u, c.password.clone().unwrap_or_default())),
            keepalive: c.keepalive.get(),
            clean_session: c.clean_session,
            max_packet_size: max_message_size + 64 * 1024,
            tls,
        })
    }

    /// rumqttc options for this endpoint; values were validated at load, so nothing here can panic.
    pub fn mqtt_options(&self) -> MqttOptions {
        let mut o = MqttOptions::new(
            self.clientid.clone(),
            self.address.host.clone(),
            self.address.port,
        );
        let ka = if self.keepalive.is_zero() || self.keepalive >= Duration::from_secs(1) {
            self.keepalive
        } else {
            Duration::from_secs(1)
        };
        o.set_keep_alive(ka);
        o.set_clean_session(self.clean_session || self.clientid.is_empty());
        o.set_manual_acks(true);
        o.set_max_packet_size(self.max_packet_size, self.max_packet_size);
        o.set_request_channel_capacity(4096);
        o.set_inflight(crate::link::MAX_INFLIGHT);
        if let Some((u, p)) = &self.credentials {
            o.set_credentials(u.clone(), p.clone());
        }
        if let Some(tls) = &self.tls {
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                tls.clone(),
            )));
        }
        o
    }
}

fn read_file(name: &str, what: &'static str, file: &Path) -> Result<Vec<u8>, RemoteError> {
    std::fs::read(file).map_err(|source| RemoteError::TlsFile {
        name: name.to_string(),
        what,
        file: file.to_path_buf(),
        source,
    })
}

/// A rustls client config on the aws-lc-rs provider (the one the whole workspace uses), built here instead of by
/// rumqttc so that it never depends on a process-wide default provider.
fn tls_config(name: &str, c: &Connection) -> Result<rustls::ClientConfig, RemoteError> {
    let err = |message: String| RemoteError::Endpoint {
        name: name.to_string(),
        message,
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| RemoteError::Tls {
            name: name.to_string(),
            source,
        })?;
    let mut roots = rustls::RootCertStore::empty();
    match &c.ca {
        Some(ca) => {
            let pem = read_file(name, "ca", ca)?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| err(format!("ca file {}: {e}", ca.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| err(format!("ca file {}: {e}", ca.display())))?;
            }
            if roots.is_empty() {
                return Err(err(format!(
                    "ca file {} holds no PEM certificate",
                    ca.display()
                )));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(err(
                    "no `ca` given and no system root certificates found; set `ca`".into(),
                ));
            }
        }
    }
    let builder = builder.with_root_certificates(roots);
    match (&c.cert, &c.key) {
        (Some(cert), Some(key)) => {
            let pem = read_file(name, "cert", cert)?;
            let chain = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| err(format!("cert file {}: {e}", cert.display())))?;
            if chain.is_empty() {
                return Err(err(format!(
                    "cert file {} holds no PEM certificate",
                    cert.display()
                )));
            }
            let key_pem = read_file(name, "key", key)?;
            let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
                .map_err(|e| err(format!("key file {}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|source| RemoteError::Tls {
                    name: name.to_string(),
                    source,
                })
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baetyl_sdk::config::parse_yaml;

    fn parse(text: &str) -> Result<BridgeConfig, ConfigError> {
        let p = Path::new("service.yml");
        let cfg: BridgeConfig = parse_yaml(text, p)?;
        cfg.validate(p)?;
        Ok(cfg)
    }

    #[test]
    fn v1_schema_loads_with_defaults() {
        let cfg = parse(
            "hub: {address: tcp://localhub:1883, username: u, password: p}\n\
             remotes: [{name: cloud, address: 'ssl://host:8883', clientid: c1}]\n\
             rules:\n  - hub: {subscriptions: [{topic: t, qos: 1}]}\n    remote: {name: cloud, subscriptions: [{topic: t/remote, qos: 1}]}\n",
        )
        .unwrap();
        assert_eq!(cfg.rules.len(), 1);
        assert_eq!(cfg.buffer.max_messages, 100_000);
        assert!(!cfg.hub.clean_session);
        assert!(cfg.rules[0].hub.rewrite.is_identity());
        assert_eq!(
            parse_address(&cfg.remotes[0].address).unwrap(),
            Address {
                host: "host".into(),
                port: 8883,
                tls: true
            }
        );
    }

    #[test]
    fn mistakes_are_named() {
        let base =
            "hub: {address: tcp://h:1883}\nremotes: [{name: cloud, address: 'tcp://r:1883'}]\n";
        let e = parse(&format!(
            "{base}rules: [{{remote: {{name: nope, subscriptions: [{{topic: a}}]}}}}]\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("rules[0].remote.name") && e.contains("nope"),
            "{e}"
        );
        let e = parse(&format!(
            "{base}rules: [{{hub: {{subscriptions: [{{topic: 'a/#/b'}}]}}, remote: {{name: cloud}}}}]\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("rules[0].hub.subscriptions[0].topic"), "{e}");
        let e = parse(&format!(
            "{base}rules: [{{hub: {{subscriptions: [{{topic: a, qos: 2}}]}}, remote: {{name: cloud}}}}]\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("qos 2"), "{e}");
        let e = parse("hub: {address: 'http://h'}\nremotes: [{name: c, address: 'tcp://r'}]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("hub.address"), "{e}");
        let e = parse(&format!("{base}bufer: {{}}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `bufer`"), "{e}");
        let e = parse("hub: {address: 'tcp://h', keepalive: 500ms}\nremotes: [{name: c, address: 'tcp://r'}]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("hub.keepalive"), "{e}");
        let e = parse(
            "hub: {address: 'tcp://h'}\nremotes: [{name: c, address: 'tcp://r'}, {name: c, address: 'tcp://s'}]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("declared twice"), "{e}");
        let e = parse(
            "hub: {address: 'tcp://h'}\nremotes: [{name: c, address: 'ssl://r', cert: a.pem}]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("go together"), "{e}");
    }

    #[test]
    fn loops_are_detected() {
        let base =
            "hub: {address: tcp://h:1883}\nremotes: [{name: cloud, address: 'tcp://r:1883'}]\n";
        let looping = parse(&format!(
            "{base}rules: [{{hub: {{subscriptions: [{{topic: 't/#'}}]}}, remote: {{name: cloud, subscriptions: [{{topic: 't/#'}}]}}}}]\n"
        ))
        .unwrap();
        assert_eq!(looping.loop_warnings().len(), 1);
        let rewritten = parse(&format!(
            "{base}rules: [{{hub: {{subscriptions: [{{topic: 't/#'}}], rewrite: {{add_prefix: edge/}}}}, \
             remote: {{name: cloud, subscriptions: [{{topic: 'cmd/#'}}]}}}}]\n"
        ))
        .unwrap();
        assert!(rewritten.loop_warnings().is_empty());
    }

    #[test]
    fn addresses_parse() {
        assert_eq!(
            parse_address("tcp://127.0.0.1:1884").unwrap(),
            Address {
                host: "127.0.0.1".into(),
                port: 1884,
                tls: false
            }
        );
        assert_eq!(parse_address("mqtts://h").unwrap().port, 8883);
        assert_eq!(parse_address("tcp://[::1]:99").unwrap().host, "::1");
        assert!(parse_address("h:1883").is_err());
        assert!(parse_address("tcp://h:x").is_err());
        assert!(parse_address("tcp://:1883").is_err());
        assert!(parse_address("ws://h:1").is_err());
    }

    #[test]
    fn missing_tls_file_is_named() {
        let c = Connection {
            address: "ssl://h:8883".into(),
            clientid: None,
            username: None,
            password: None,
            ca: Some(PathBuf::from("/nonexistent/ca.pem")),
            cert: None,
            key: None,
            keepalive: default_keepalive(),
            clean_session: false,
        };
        let e = Endpoint::new("remote `x`", &c, "id", 1024)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    }
}
