//! The bridge's config file (`etc/baetyl/service.yml`): Baetyl v1's `hub`, `remotes`, `rules`, extended with
//! per-direction topic rewrite, the on-disk `buffer`, keep alive and clean session per connection.
//!
//! ```yaml
//! hub:                                   # the local hub
//!   address: tcp://127.0.0.1:1883        # tcp:// (mqtt://), ssl:// (tls://, mqtts://), ws://, wss://: baetyl_sdk::mqtt
//!   clientid: baetyl-remote              # default
//!   username: u                          # optional, with password
//!   password: p
//!   ca: ca.pem                           # ssl:// and wss://: CA(s) the server must chain to (system roots if absent)
//!   cert: client.pem                     # ssl:// and wss://: client certificate + key for two-way TLS (both or neither)
//!   key: client.key
//!   insecure_skip_verify: false          # default; true accepts any server certificate (v1: insecureSkipVerify)
//!   keepalive: 30s                       # default; 0 = off, else at least 1s
//!   clean_session: false                 # default (v1 spelling `cleansession` accepted)
//! remotes:                               # one or more, names unique ([A-Za-z0-9_-])
//!   - name: cloud
//!     address: 'ssl://cloud.example:8883'
//!     clientid: edge-1                   # default baetyl-remote-<name>
//!     # username, password, ca, cert, key, insecure_skip_verify, keepalive, clean_session: as for the hub
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

use baetyl_sdk::ConfigError;
use baetyl_sdk::config::{ByteSize, ConfigFile, HumanDuration};
use baetyl_sdk::mqtt::{ClientOptions, Qos};
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
pub use baetyl_sdk::mqtt::Connection;

/// One remote broker: the keys of [`Connection`] plus its `name`, which rules refer to.
pub type RemoteConnection = Connection<String>;

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
    /// v1: the client id of the rule's hub connection. The bridge has one hub connection for every rule, so
    /// the rules that set it must agree; it then replaces `hub.clientid`, as v1's rule did.
    #[serde(default)]
    pub clientid: Option<String>,
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
    /// v1: the client id of the rule's remote connection. The bridge has one connection per remote, so the
    /// rules of one remote that set it must agree; it then replaces `remotes[].clientid`, as v1's rule did.
    #[serde(default)]
    pub clientid: Option<String>,
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
    /// 0 or 1.
    #[serde(default)]
    pub qos: Qos,
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

    /// The options of the hub connection (its TLS config built).
    pub fn hub_endpoint(&self) -> Result<ClientOptions, RemoteError> {
        let mut o = endpoint("hub", &self.hub, "baetyl-remote", self.max_message_size)?;
        if let Some(id) = self.rule_clientid(|r| r.hub.clientid.as_deref()) {
            o.client_id = id.to_string();
        }
        Ok(o)
    }

    /// The client id the rules selected by `of` agree on (validation refuses rules that disagree).
    fn rule_clientid<'a>(&'a self, of: impl Fn(&'a Rule) -> Option<&'a str>) -> Option<&'a str> {
        self.rules.iter().find_map(of)
    }

    /// The options of each remote connection, in config order.
    pub fn remote_endpoints(&self) -> Result<Vec<ClientOptions>, RemoteError> {
        self.remotes
            .iter()
            .map(|r| {
                let mut o = endpoint(
                    &format!("remote `{}`", r.name),
                    r,
                    &format!("baetyl-remote-{}", r.name),
                    self.max_message_size,
                )?;
                if let Some(id) = self.rule_clientid(|rule| {
                    (rule.remote.name == r.name)
                        .then_some(rule.remote.clientid.as_deref())
                        .flatten()
                }) {
                    o.client_id = id.to_string();
                }
                Ok(o)
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
            if r.name.is_empty() {
                return Err(bad(format!(
                    "{key}.name: missing; every remote needs a name (letters, digits, `-`, `_`) for rules to refer to"
                )));
            }
            if !r
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
            r.check(file, &key)?;
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
                    s.qos
                        .require_0_or_1()
                        .map_err(|e| bad(format!("{skey}.qos: {e}")))?;
                }
                rw.validate()
                    .map_err(|m| bad(format!("{key}.{side}.rewrite: {m}")))?;
            }
        }
        self.check_rule_clientids().map_err(bad)?;
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

impl BridgeConfig {
    /// v1's per-rule client ids: each names a connection, and the bridge has one hub connection and one per
    /// remote, so the rules sharing a connection must not ask for different ids.
    fn check_rule_clientids(&self) -> Result<(), String> {
        // The first rule to set an id, per connection: None for the hub, Some(remote name) for a remote.
        let mut first: std::collections::BTreeMap<Option<&str>, (usize, &str)> = Default::default();
        for (i, rule) in self.rules.iter().enumerate() {
            for (side, conn, id) in [
                ("hub", None, rule.hub.clientid.as_deref()),
                (
                    "remote",
                    Some(rule.remote.name.as_str()),
                    rule.remote.clientid.as_deref(),
                ),
            ] {
                let Some(id) = id else { continue };
                if id.is_empty() {
                    return Err(format!(
                        "rules[{i}].{side}.clientid: cannot be empty; leave it out for the default"
                    ));
                }
                let (j, other) = *first.entry(conn).or_insert((i, id));
                if other != id {
                    let to = conn.map_or("the hub".to_string(), |r| format!("remote `{r}`"));
                    return Err(format!(
                        "rules[{i}].{side}.clientid: `{id}` differs from rules[{j}].{side}.clientid `{other}`; \
                         the bridge keeps one connection to {to} for all its rules (v1 opened one per rule), \
                         so give them the same client id or leave it out"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A connection's options with room for the largest message plus the packet's own bytes.
pub(crate) fn endpoint<Name>(
    name: &str,
    c: &Connection<Name>,
    default_clientid: &str,
    max_message_size: ByteSize,
) -> Result<ClientOptions, RemoteError> {
    let max_packet_size = usize::try_from(max_message_size.0).unwrap_or(usize::MAX) + 64 * 1024;
    c.client_options(name, default_clientid, max_packet_size)
        .map_err(|source| RemoteError::Tls {
            name: name.to_string(),
            source,
        })
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
    fn v1_per_rule_clientids_name_the_shared_connections() {
        // v1's shape: rules[].hub.clientid and rules[].remote.clientid (v1 precedence: the rule's id wins).
        let base = "hub: {address: 'tcp://127.0.0.1:1883', clientid: h0}\n\
                    remotes: [{name: a, address: 'tcp://127.0.0.1:1884', clientid: r0}, {name: b, address: 'tcp://127.0.0.1:1885'}]\n";
        let cfg = parse(&format!(
            "{base}rules:\n\
             - {{hub: {{clientid: h1, subscriptions: [{{topic: t}}]}}, remote: {{name: a, clientid: ra, subscriptions: [{{topic: r}}]}}}}\n\
             - {{hub: {{subscriptions: [{{topic: u}}]}}, remote: {{name: a}}}}\n\
             - {{hub: {{clientid: h1, subscriptions: [{{topic: v}}]}}, remote: {{name: b}}}}\n"
        ))
        .expect("valid");
        assert_eq!(cfg.hub_endpoint().expect("hub").client_id, "h1");
        let eps = cfg.remote_endpoints().expect("remotes");
        assert_eq!(
            eps[0].client_id, "ra",
            "the rule's id wins over remotes[0].clientid"
        );
        assert_eq!(
            eps[1].client_id, "baetyl-remote-b",
            "no rule sets one: the default"
        );

        for (rules, want) in [
            (
                "- {hub: {clientid: h1, subscriptions: [{topic: t}]}, remote: {name: a}}\n\
                 - {hub: {clientid: h2, subscriptions: [{topic: u}]}, remote: {name: b}}\n",
                "rules[1].hub.clientid: `h2` differs from rules[0].hub.clientid `h1`",
            ),
            (
                "- {hub: {subscriptions: [{topic: t}]}, remote: {name: a, clientid: x}}\n\
                 - {hub: {subscriptions: [{topic: u}]}, remote: {name: a, clientid: y}}\n",
                "one connection to remote `a`",
            ),
            (
                "- {hub: {subscriptions: [{topic: t}]}, remote: {name: a, clientid: ''}}\n",
                "rules[0].remote.clientid: cannot be empty",
            ),
        ] {
            let e = parse(&format!("{base}rules:\n{rules}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e}");
        }
        // Different remotes may have different ids.
        parse(&format!(
            "{base}rules:\n\
             - {{hub: {{subscriptions: [{{topic: t}}]}}, remote: {{name: a, clientid: x}}}}\n\
             - {{hub: {{subscriptions: [{{topic: u}}]}}, remote: {{name: b, clientid: y}}}}\n"
        ))
        .expect("one id per remote");
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
        let remote = &cfg.remotes[0].address;
        assert_eq!(
            (remote.host(), remote.port(), remote.is_tls()),
            ("host", 8883, true)
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
        let e = parse("hub: {address: 'tcp://h'}\nremotes: [{address: 'tcp://r'}]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("remotes[0].name: missing"), "{e}");
        let e =
            parse("hub: {address: 'tcp://h', name: x}\nremotes: [{name: c, address: 'tcp://r'}]\n")
                .unwrap_err()
                .to_string();
        assert!(e.contains("key `hub.name`") && e.contains("no name"), "{e}");
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
    fn every_transport_is_accepted_and_bad_addresses_name_their_key() {
        let cfg = parse(
            "hub: {address: 'ws://127.0.0.1:8080/mqtt'}\n\
             remotes: [{name: a, address: 'wss://cloud.example'}, {name: b, address: 'mqtts://[::1]'}]\n",
        )
        .unwrap();
        assert_eq!(cfg.hub.address.to_string(), "ws://127.0.0.1:8080/mqtt");
        assert_eq!(
            cfg.remotes[0].address.to_string(),
            "wss://cloud.example:8884/mqtt"
        );
        assert_eq!(cfg.remotes[1].address.to_string(), "ssl://[::1]:8883");
        let e = parse("hub: {address: 'tcp://h'}\nremotes: [{name: c, address: 'tcp://r:x'}]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("key `remotes[0].address`") && e.contains("`x` is not a port"),
            "{e}"
        );
    }

    #[test]
    fn missing_tls_file_is_named() {
        let cfg = parse(
            "hub: {address: 'tcp://h'}\nremotes: [{name: x, address: 'ssl://h:8883', ca: /nonexistent/ca.pem}]\n",
        )
        .unwrap();
        let e = cfg.remote_endpoints().unwrap_err().to_string();
        assert!(
            e.contains("remote `x`") && e.contains("/nonexistent/ca.pem"),
            "{e}"
        );
    }
}
