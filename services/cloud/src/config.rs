//! `baetyl cloud`'s config file (every key optional; relative paths are relative to the current directory).
//!
//! ```yaml
//! data_dir: var/lib/baetyl-cloud     # fleet CA, signing key, server certificate, first tokens, SQLite database
//! database: ~                        # postgres://user:password@host:port/db (several processes); empty: SQLite
//! listen: 0.0.0.0:9443               # HTTPS: operators' API, the dashboard, devices (mTLS)
//! public_url: ~                      # how devices reach this cloud (default https://<first tls name>:<port>)
//! tls:
//!   names: [localhost, 127.0.0.1]    # host names and addresses of the generated server certificate
//!   cert: ~                          # or a certificate chain and key of your own (PEM)
//!   key: ~
//! limits:
//!   upload: 64m                      # the largest blob an operator may upload
//!   report: 1m                       # the largest message a device may send
//!   devices: 100000                  # links one process holds at most
//!   handshake: 10s                   # TLS handshake deadline
//!   command_timeout: 20s             # how long an operator waits for a device's answer
//! link: {ping: 20s, report_min_interval: 1s}   # pings; a device's reports are recorded at most this often
//! logger: {level: info, format: human}
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use baetyl_sdk::ConfigError;
use baetyl_sdk::config::{ByteSize, ConfigFile, HumanDuration};
use baetyl_sdk::logging::LoggerConfig;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudConfig {
    pub data_dir: PathBuf,
    pub database: Option<String>,
    pub listen: SocketAddr,
    pub public_url: Option<String>,
    pub tls: TlsConfig,
    pub limits: Limits,
    pub link: LinkConfig,
    pub logger: LoggerConfig,
}

impl Default for CloudConfig {
    fn default() -> Self {
        CloudConfig {
            data_dir: PathBuf::from("var/lib/baetyl-cloud"),
            database: None,
            listen: SocketAddr::from(([0, 0, 0, 0], 9443)),
            public_url: None,
            tls: TlsConfig::default(),
            limits: Limits::default(),
            link: LinkConfig::default(),
            logger: LoggerConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub names: Vec<String>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            names: vec!["localhost".into(), "127.0.0.1".into()],
            cert: None,
            key: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub upload: ByteSize,
    pub report: ByteSize,
    pub devices: usize,
    pub handshake: HumanDuration,
    pub command_timeout: HumanDuration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            upload: ByteSize(64 << 20),
            report: ByteSize(1 << 20),
            devices: 100_000,
            handshake: HumanDuration::from_secs(10),
            command_timeout: HumanDuration::from_secs(20),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinkConfig {
    pub ping: HumanDuration,
    /// A device's reports are recorded at most this often (the newest one waiting is kept).
    pub report_min_interval: HumanDuration,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            ping: HumanDuration::from_secs(20),
            report_min_interval: HumanDuration::from_secs(1),
        }
    }
}

impl CloudConfig {
    /// The database URL: the configured one, or SQLite in the data dir.
    pub fn database_url(&self) -> String {
        match &self.database {
            Some(u) if !u.trim().is_empty() => u.trim().to_string(),
            _ => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("cloud.db").display()
            ),
        }
    }

    /// The URL devices use: configured, or from the first TLS name and the port.
    pub fn public_url(&self, port: u16) -> String {
        match &self.public_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => {
                let host = self
                    .tls
                    .names
                    .first()
                    .map(String::as_str)
                    .unwrap_or("localhost");
                if host.contains(':') {
                    format!("https://[{host}]:{port}")
                } else {
                    format!("https://{host}:{port}")
                }
            }
        }
    }
}

impl ConfigFile for CloudConfig {
    fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::invalid(file, m));
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return bad(
                "key `tls`: give both `cert` and `key`, or neither (then the fleet CA issues the server certificate)",
            );
        }
        if self.tls.cert.is_none() && self.tls.names.is_empty() {
            return bad(
                "key `tls.names`: list at least one host name or address devices use to reach this cloud",
            );
        }
        if let Some(u) = &self.public_url
            && let Err(e) = baetyl_agent::https::Endpoint::parse(u)
        {
            return Err(ConfigError::invalid(file, format!("key `public_url`: {e}")));
        }
        if let Some(db) = &self.database {
            let db = db.trim();
            if !db.is_empty() && !db.starts_with("postgres://") && !db.starts_with("postgresql://")
            {
                return bad(
                    "key `database`: use postgres://user:password@host:port/db, or leave it empty for the embedded SQLite",
                );
            }
        }
        if self.limits.devices == 0 || self.limits.upload.0 == 0 || self.limits.report.0 < 4096 {
            return bad(
                "key `limits`: `devices` and `upload` must be above 0 and `report` at least 4k",
            );
        }
        if self.link.ping.get() < std::time::Duration::from_secs(1) {
            return bad("key `link.ping`: at least 1s");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let c = CloudConfig::parse("", Path::new("cloud.yml")).unwrap();
        assert_eq!(c.listen.port(), 9443);
        assert!(
            c.database_url()
                .starts_with("sqlite://var/lib/baetyl-cloud/cloud.db")
        );
        assert_eq!(c.public_url(9443), "https://localhost:9443");
        let e = CloudConfig::parse("database: mysql://x\n", Path::new("cloud.yml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("postgres://"), "{e}");
        let e = CloudConfig::parse("tls: {cert: a.pem}\n", Path::new("cloud.yml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("both"), "{e}");
        let e = CloudConfig::parse("listen: nowhere\n", Path::new("cloud.yml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("key `listen`"), "{e}");
    }
}
