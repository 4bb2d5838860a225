//! What every MQTT client of baetyl shares (the function manager, the bridge, the timer, later the agent), so
//! that each accepts `tcp://`, `ssl://`, `ws://` and `wss://` brokers the same way:
//!
//! - [`MqttAddress`]: a broker address parsed once at load (`#[serde(try_from = "String")]`).
//! - [`Qos`]: QoS 0, 1 or 2 as a config value, with the conversions to rumqttc's type.
//! - [`ClientTls`]: CA, client certificate and key, `insecure_skip_verify`, built into one rustls config.
//! - [`Connection`]: the config section of one client connection (v1's keys plus keep alive and clean session).
//! - [`ClientOptions`]: everything needed to open a connection, turned into `rumqttc::MqttOptions` with the
//!   transport its address asks for. Each service adds what is its own (manual acks, in-flight window).

mod address;
mod qos;
mod tls;
mod tls_accept;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{MqttOptions, TlsConfiguration, Transport as RumqttcTransport};
use serde::Deserialize;

use crate::ConfigError;
use crate::config::HumanDuration;

pub use address::{AddressError, DEFAULT_WS_PATH, MqttAddress, Transport};
pub use qos::{Qos, QosError};
pub use tls::{ClientTls, ServerTls, TlsError};
pub use tls_accept::{MAX_HANDSHAKES, TlsIncoming};

/// The keep alive a connection uses when its config does not say.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(30);

/// One client connection in a config file: the function manager's `hub`, the bridge's `hub` and `remotes`, the
/// timer's `hub`.
///
/// ```yaml
/// address: ssl://broker:8883     # tcp:// (mqtt://), ssl:// (tls://, mqtts://), ws://, wss://
/// clientid: edge-1               # optional: the service's default otherwise
/// username: u                    # optional, with password
/// password: p
/// ca: ca.pem                     # TLS: CA(s) the server must chain to (system roots if absent)
/// cert: client.pem               # TLS: client certificate + key for two-way TLS (both or neither)
/// key: client.key
/// insecure_skip_verify: false    # TLS: accept any server certificate (v1 spelling insecureSkipVerify)
/// keepalive: 30s                 # 0 = off, else at least 1s
/// clean_session: false           # v1 spelling cleansession
/// ```
///
/// `Name` is [`NoName`] for a connection that stands alone (a `name:` key is refused) and `String` where a list
/// of connections is referred to by name (the bridge's `remotes`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connection<Name = NoName> {
    #[serde(default)]
    pub name: Name,
    pub address: MqttAddress,
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
    /// v1 spellings: `insecureSkipVerify`, and `insecure` (v1.0.2's certificate section).
    #[serde(default, alias = "insecureSkipVerify", alias = "insecure")]
    pub insecure_skip_verify: bool,
    /// v1 wrote `-1` for "no ping/pong": any negative number reads as 0 (off).
    #[serde(default = "default_keepalive", deserialize_with = "keepalive_v1")]
    pub keepalive: HumanDuration,
    /// Default false: the broker keeps our subscriptions and unacknowledged QoS 1 messages while we are away.
    #[serde(default, alias = "cleansession")]
    pub clean_session: bool,
    /// Baetyl v1's client keys that our clients accept and do not use (see [`Connection::ignored_keys`]).
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    #[serde(default)]
    pub interval: Option<HumanDuration>,
    #[serde(default)]
    pub buffersize: Option<u32>,
    #[serde(default)]
    pub validatesubs: Option<bool>,
}

/// The name of a connection that has none: a `name:` key in its section fails the load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoName;

impl<'de> Deserialize<'de> for NoName {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<NoName, D::Error> {
        Err(serde::de::Error::custom(
            "this connection has no name; `name` is only for a list of connections such as `remotes`",
        ))
    }
}

fn default_keepalive() -> HumanDuration {
    HumanDuration(DEFAULT_KEEPALIVE)
}

/// A keep alive: a duration, or (v1) a negative number for none.
fn keepalive_v1<'de, D: serde::Deserializer<'de>>(d: D) -> Result<HumanDuration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged, expecting = "a duration such as 30s, 0 for none (v1: -1)")]
    enum KeepAlive {
        Negative(i64),
        Duration(HumanDuration),
    }
    Ok(match KeepAlive::deserialize(d)? {
        KeepAlive::Negative(n) if n < 0 => HumanDuration::from_secs(0),
        KeepAlive::Negative(n) => HumanDuration::from_secs(n.unsigned_abs()),
        KeepAlive::Duration(h) => h,
    })
}

impl<Name> Connection<Name> {
    /// What the schema cannot say: keep alive, TLS files in pairs, client id, credentials. `key` is the
    /// section's key path for the messages (`hub`, `remotes[1]`).
    pub fn check(&self, file: &Path, key: &str) -> Result<(), ConfigError> {
        let bad = |m: String| ConfigError::invalid(file, m);
        let ka = self.keepalive.get();
        if !ka.is_zero() && ka < Duration::from_secs(1) {
            return Err(bad(format!(
                "{key}.keepalive: {} is too short; use 0 (off) or at least 1s",
                self.keepalive
            )));
        }
        self.tls().check().map_err(|e| bad(format!("{key}: {e}")))?;
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

    /// The v1 keys this connection sets that are accepted and not used, each with why; `key` is the section's
    /// key path. [`Connection::client_options`] logs them.
    pub fn ignored_keys(&self, key: &str) -> Vec<String> {
        let mut out = Vec::new();
        if self.timeout.is_some() {
            out.push(format!(
                "{key}.timeout: acknowledgements are awaited without a deadline; keepalive detects a dead broker"
            ));
        }
        if self.interval.is_some() {
            out.push(format!(
                "{key}.interval: the service reconnects on its own backoff schedule"
            ));
        }
        if self.buffersize.is_some() {
            out.push(format!(
                "{key}.buffersize: in-flight messages are bounded by the service's own queue"
            ));
        }
        if self.validatesubs.is_some() {
            out.push(format!(
                "{key}.validatesubs: a subscription the broker refuses is always reported"
            ));
        }
        out
    }

    pub fn tls(&self) -> ClientTls {
        ClientTls {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            insecure_skip_verify: self.insecure_skip_verify,
        }
    }

    /// The options of this connection; `name` is for logs and errors (`hub`, ``remote `cloud` ``).
    pub fn client_options(
        &self,
        name: &str,
        default_clientid: &str,
        max_packet_size: usize,
    ) -> Result<ClientOptions, TlsError> {
        let mut o = ClientOptions::new(
            name,
            self.address.clone(),
            self.clientid.as_deref().unwrap_or(default_clientid),
            &self.tls(),
        )?;
        o.credentials = self
            .username
            .clone()
            .map(|u| (u, self.password.clone().unwrap_or_default()));
        o.keep_alive = self.keepalive.get();
        o.clean_session = self.clean_session;
        o.max_packet_size = max_packet_size;
        for k in self.ignored_keys(name) {
            tracing::warn!("accepted but ignored (Baetyl v1 key): {k}");
        }
        Ok(o)
    }
}

/// Everything needed to open one MQTT connection, TLS already set up.
#[derive(Clone)]
pub struct ClientOptions {
    /// For logs and errors: `hub`, ``remote `cloud` ``.
    pub name: String,
    address: MqttAddress,
    pub client_id: String,
    /// Username and password.
    pub credentials: Option<(String, String)>,
    /// 0 = off; anything shorter than 1s is taken as 1s.
    pub keep_alive: Duration,
    /// Forced on when the client id is empty (MQTT allows no persistent session without one).
    pub clean_session: bool,
    /// The largest packet sent or accepted.
    pub max_packet_size: usize,
    transport: RumqttcTransport,
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password stays out of logs and panics.
        f.debug_struct("ClientOptions")
            .field("name", &self.name)
            .field("address", &self.address.to_string())
            .field("client_id", &self.client_id)
            .field("username", &self.credentials.as_ref().map(|(u, _)| u))
            .field("keep_alive", &self.keep_alive)
            .field("clean_session", &self.clean_session)
            .field("max_packet_size", &self.max_packet_size)
            .finish_non_exhaustive()
    }
}

impl ClientOptions {
    /// Options with keep alive [`DEFAULT_KEEPALIVE`], a clean session and 1 MiB packets. The TLS config is built
    /// here, once, when the address asks for TLS (`tls` is not used otherwise).
    pub fn new(
        name: &str,
        address: MqttAddress,
        client_id: &str,
        tls: &ClientTls,
    ) -> Result<ClientOptions, TlsError> {
        let secure = || -> Result<TlsConfiguration, TlsError> {
            if tls.insecure_skip_verify {
                tracing::warn!(connection = %name, %address,
                    "insecure_skip_verify: the server's certificate is not checked; anyone on the path can read and change this connection");
            }
            Ok(TlsConfiguration::Rustls(Arc::new(tls.client_config()?)))
        };
        let transport = match address.transport() {
            Transport::Tcp => RumqttcTransport::Tcp,
            Transport::Tls => RumqttcTransport::tls_with_config(secure()?),
            Transport::Ws => RumqttcTransport::Ws,
            Transport::Wss => RumqttcTransport::wss_with_config(secure()?),
        };
        Ok(ClientOptions {
            name: name.to_string(),
            address,
            client_id: client_id.to_string(),
            credentials: None,
            keep_alive: DEFAULT_KEEPALIVE,
            clean_session: true,
            max_packet_size: 1 << 20,
            transport,
        })
    }

    pub fn address(&self) -> &MqttAddress {
        &self.address
    }

    /// rumqttc options for this connection. Values were validated at load, so nothing here can panic.
    pub fn mqtt_options(&self) -> MqttOptions {
        // rumqttc takes a WebSocket broker as its URL; the port is then read from the URL.
        let broker = if self.address.transport().is_websocket() {
            self.address.to_string()
        } else {
            self.address.host().to_string()
        };
        let mut o = MqttOptions::new(self.client_id.clone(), broker, self.address.port());
        let ka = if self.keep_alive.is_zero() || self.keep_alive >= Duration::from_secs(1) {
            self.keep_alive
        } else {
            Duration::from_secs(1)
        };
        o.set_keep_alive(ka);
        o.set_clean_session(self.clean_session || self.client_id.is_empty());
        o.set_max_packet_size(self.max_packet_size, self.max_packet_size);
        if let Some((u, p)) = &self.credentials {
            o.set_credentials(u.clone(), p.clone());
        }
        o.set_transport(self.transport.clone());
        o
    }
}
