//! The address of an MQTT broker as every baetyl client writes it: `tcp://`, `ssl://`, `ws://` or `wss://`,
//! parsed once when the config loads.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How a client reaches the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// MQTT over TCP: `tcp://` (also `mqtt://`), port 1883 by default.
    Tcp,
    /// MQTT over TLS: `ssl://` (also `tls://`, `mqtts://`), port 8883 by default.
    Tls,
    /// MQTT over WebSocket: `ws://`, port 8080 and path `/mqtt` by default.
    Ws,
    /// MQTT over WebSocket over TLS: `wss://`, port 8884 and path `/mqtt` by default.
    Wss,
}

impl Transport {
    fn from_scheme(scheme: &str) -> Option<Transport> {
        Some(match scheme.to_ascii_lowercase().as_str() {
            "tcp" | "mqtt" => Transport::Tcp,
            "ssl" | "tls" | "mqtts" => Transport::Tls,
            "ws" => Transport::Ws,
            "wss" => Transport::Wss,
            _ => return None,
        })
    }

    /// The scheme this transport is written with in a canonical address.
    pub fn scheme(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "ssl",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
        }
    }

    /// The port baetyl's hub listens on for this transport.
    pub fn default_port(self) -> u16 {
        match self {
            Transport::Tcp => 1883,
            Transport::Tls => 8883,
            Transport::Ws => 8080,
            Transport::Wss => 8884,
        }
    }

    pub fn is_tls(self) -> bool {
        matches!(self, Transport::Tls | Transport::Wss)
    }

    pub fn is_websocket(self) -> bool {
        matches!(self, Transport::Ws | Transport::Wss)
    }
}

/// The path a WebSocket address gets when it names none (the hub's and mosquitto's usual one).
pub const DEFAULT_WS_PATH: &str = "/mqtt";

const USAGE: &str =
    "write tcp://host:1883, ssl://host:8883, ws://host:8080/mqtt or wss://host:8884/mqtt";

/// Why an address was refused. Every message quotes the address and says how to write it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("`{address}` has no scheme; {USAGE}")]
    NoScheme { address: String },
    #[error("`{address}`: scheme `{scheme}` is not supported; {USAGE}")]
    Scheme { address: String, scheme: String },
    #[error(
        "`{address}`: credentials do not go in the address; set `username` and `password` instead"
    )]
    Credentials { address: String },
    #[error("`{address}` has no host; {USAGE}")]
    NoHost { address: String },
    #[error("`{address}`: an IPv6 address goes in brackets, e.g. tcp://[::1]:1883")]
    Ipv6 { address: String },
    #[error("`{address}`: `{port}` is not a port (1 to 65535)")]
    Port { address: String, port: String },
    #[error("`{address}`: only ws:// and wss:// addresses have a path")]
    Path { address: String },
    #[error("`{address}`: spaces and control characters are not allowed in an address")]
    Characters { address: String },
}

/// A broker address, parsed: transport, host (IPv6 without brackets), port, and for WebSocket the path.
///
/// In config files it is a string (`#[serde(try_from = "String")]`), so a bad one fails the load with the key
/// that holds it. `Display` gives the canonical form (`ssl://` for every TLS spelling, the port always shown).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct MqttAddress {
    transport: Transport,
    host: String,
    port: u16,
    /// WebSocket only: starts with `/`, may carry a query.
    path: Option<String>,
}

impl MqttAddress {
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// The host name or IP address (an IPv6 address without its brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The HTTP path of a WebSocket address; `None` for tcp and ssl.
    pub fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }

    pub fn is_tls(&self) -> bool {
        self.transport.is_tls()
    }

    /// `host:port` as a socket address is written (IPv6 in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for MqttAddress {
    type Err = AddressError;

    fn from_str(address: &str) -> Result<Self, AddressError> {
        let owned = || address.to_string();
        if address.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(AddressError::Characters { address: owned() });
        }
        let (scheme, rest) = address
            .split_once("://")
            .ok_or_else(|| AddressError::NoScheme { address: owned() })?;
        let transport = Transport::from_scheme(scheme).ok_or_else(|| AddressError::Scheme {
            address: owned(),
            scheme: scheme.to_string(),
        })?;
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        if authority.contains('@') {
            return Err(AddressError::Credentials { address: owned() });
        }
        let (host, port) =
            split_authority(authority).map_err(|()| AddressError::Ipv6 { address: owned() })?;
        if host.is_empty() {
            return Err(AddressError::NoHost { address: owned() });
        }
        let port = match port {
            None => transport.default_port(),
            Some(p) => {
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| AddressError::Port {
                        address: owned(),
                        port: p.to_string(),
                    })?
            }
        };
        let path = if transport.is_websocket() {
            Some(match tail {
                "" => DEFAULT_WS_PATH.to_string(),
                t if t.starts_with('/') => t.to_string(),
                t => format!("/{t}"),
            })
        } else if tail.is_empty() || tail == "/" {
            None
        } else {
            return Err(AddressError::Path { address: owned() });
        };
        Ok(MqttAddress {
            transport,
            host: host.to_string(),
            port,
            path,
        })
    }
}

/// Splits `host[:port]` or `[v6][:port]`; `Err` for an IPv6 address without brackets or a bad bracketed one.
fn split_authority(authority: &str) -> Result<(&str, Option<&str>), ()> {
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or(())?;
        host.parse::<Ipv6Addr>().map_err(|_| ())?;
        return match after {
            "" => Ok((host, None)),
            a => a.strip_prefix(':').map(|p| (host, Some(p))).ok_or(()),
        };
    }
    match authority.split_once(':') {
        None => Ok((authority, None)),
        Some((host, port)) if !port.contains(':') => Ok((host, Some(port))),
        Some(_) => Err(()),
    }
}

impl TryFrom<String> for MqttAddress {
    type Error = AddressError;
    fn try_from(s: String) -> Result<Self, AddressError> {
        s.parse()
    }
}

impl TryFrom<&str> for MqttAddress {
    type Error = AddressError;
    fn try_from(s: &str) -> Result<Self, AddressError> {
        s.parse()
    }
}

impl fmt::Display for MqttAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}{}",
            self.transport.scheme(),
            self.authority(),
            self.path.as_deref().unwrap_or("")
        )
    }
}

impl Serialize for MqttAddress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_yaml;
    use std::path::Path;

    fn parse(s: &str) -> MqttAddress {
        s.parse()
            .unwrap_or_else(|e| panic!("`{s}` should parse: {e}"))
    }

    fn err(s: &str) -> AddressError {
        match s.parse::<MqttAddress>() {
            Ok(a) => panic!("`{s}` should be refused, got {a}"),
            Err(e) => e,
        }
    }

    #[test]
    fn every_scheme_with_its_default_port() {
        for (text, transport, port) in [
            ("tcp://h", Transport::Tcp, 1883),
            ("mqtt://h", Transport::Tcp, 1883),
            ("ssl://h", Transport::Tls, 8883),
            ("tls://h", Transport::Tls, 8883),
            ("mqtts://h", Transport::Tls, 8883),
            ("ws://h", Transport::Ws, 8080),
            ("wss://h", Transport::Wss, 8884),
            ("TCP://h", Transport::Tcp, 1883),
        ] {
            let a = parse(text);
            assert_eq!(
                (a.transport(), a.host(), a.port()),
                (transport, "h", port),
                "{text}"
            );
        }
        assert_eq!(parse("ws://h").path(), Some("/mqtt"));
        assert_eq!(parse("wss://h").path(), Some("/mqtt"));
        assert_eq!(parse("tcp://h").path(), None);
        assert!(parse("ssl://h").is_tls() && parse("wss://h").is_tls());
        assert!(!parse("tcp://h").is_tls() && !parse("ws://h").is_tls());
    }

    #[test]
    fn explicit_ports_paths_and_canonical_form() {
        let a = parse("tcp://127.0.0.1:1884");
        assert_eq!((a.host(), a.port()), ("127.0.0.1", 1884));
        assert_eq!(a.to_string(), "tcp://127.0.0.1:1884");
        assert_eq!(
            parse("mqtts://broker.example").to_string(),
            "ssl://broker.example:8883"
        );
        assert_eq!(parse("tcp://h:1883/").to_string(), "tcp://h:1883");
        let ws = parse("ws://h:9001/ws?token=a");
        assert_eq!((ws.port(), ws.path()), (9001, Some("/ws?token=a")));
        assert_eq!(ws.to_string(), "ws://h:9001/ws?token=a");
        assert_eq!(parse("wss://h:443/").path(), Some("/"));
        assert_eq!(parse("ws://h?x=1").path(), Some("/?x=1"));
    }

    #[test]
    fn ipv6_in_brackets() {
        let a = parse("tcp://[::1]:99");
        assert_eq!((a.host(), a.port()), ("::1", 99));
        assert_eq!(a.authority(), "[::1]:99");
        assert_eq!(a.to_string(), "tcp://[::1]:99");
        let b = parse("wss://[fe80::1]/mqtt");
        assert_eq!((b.host(), b.port()), ("fe80::1", 8884));
        assert_eq!(b.to_string(), "wss://[fe80::1]:8884/mqtt");
        assert!(matches!(err("tcp://::1:1883"), AddressError::Ipv6 { .. }));
        assert!(matches!(err("tcp://[::1"), AddressError::Ipv6 { .. }));
        assert!(matches!(
            err("tcp://[nothost]:1"),
            AddressError::Ipv6 { .. }
        ));
        assert!(matches!(err("tcp://[::1]x"), AddressError::Ipv6 { .. }));
    }

    #[test]
    fn bad_ports_and_other_mistakes_are_named() {
        for bad in [
            "tcp://h:x",
            "tcp://h:0",
            "tcp://h:65536",
            "tcp://h:",
            "ssl://h:-1",
        ] {
            let e = err(bad);
            assert!(matches!(e, AddressError::Port { .. }), "{bad}: {e}");
            assert!(e.to_string().contains(bad), "{e}");
        }
        assert!(matches!(err("h:1883"), AddressError::NoScheme { .. }));
        assert!(matches!(err("http://h"), AddressError::Scheme { .. }));
        assert!(matches!(err("tcp://:1883"), AddressError::NoHost { .. }));
        assert!(matches!(
            err("tcp://u:p@h"),
            AddressError::Credentials { .. }
        ));
        assert!(matches!(err("tcp://h/mqtt"), AddressError::Path { .. }));
        assert!(matches!(err("tcp://h 1"), AddressError::Characters { .. }));
        let e = err("http://h").to_string();
        assert!(e.contains("`http`") && e.contains("ssl://host:8883"), "{e}");
    }

    #[test]
    fn a_bad_address_in_a_config_names_its_key() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Hub {
            address: MqttAddress,
        }
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Cfg {
            hub: Hub,
        }
        let e = parse_yaml::<Cfg>("hub:\n  address: 'tcp://h:99999'\n", Path::new("f.yml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("f.yml: "), "{e}");
        assert!(e.contains("key `hub.address`"), "{e}");
        assert!(e.contains("`99999` is not a port"), "{e}");
        let ok: Cfg = parse_yaml(
            "hub: {address: 'ws://[::1]:8080/mqtt'}\n",
            Path::new("f.yml"),
        )
        .expect("valid");
        assert_eq!(ok.hub.address.to_string(), "ws://[::1]:8080/mqtt");
    }
}
