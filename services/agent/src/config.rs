//! The agent's config file (`etc/baetyl/service.yml` in its instance dir, like every service). Relative paths
//! are relative to the agent's working directory, where the master links its volumes.
//!
//! ```yaml
//! cloud:
//!   url: https://cloud.example:9443          # the fleet server
//!   ca: etc/baetyl/ca.crt                    # its CA (pinned: no other CA is trusted)
//!   signing_key: ed25519:BASE64              # the fleet signing key (pinned: deployments must carry its signature)
//! provisioning:                              # needed only until the device is registered
//!   key_file: etc/baetyl/provisioning.key    # the fleet provisioning key (every device of an image), or
//!   token_file: ~                            # a one-time token made for this device (`baetyl ctl provision NAME`)
//!   name: ~                                  # the name to register with a fleet key (default: serial, host id)
//! state_dir: var/lib/baetyl-agent            # device key and certificate, deployment state, blob cache
//! report: {interval: 20s, watch: 2s}         # full report every `interval`, and after a change seen every `watch`
//! download: {max_size: 256m, timeout: 10m}   # one deployment's blobs in all; per download attempt
//! reconnect: {min: 1s, max: 60s}             # jittered exponential backoff of the link
//! master: {token_file: ~, workdir: ~, staging: var/db/baetyl/deploy, staging_volume: agent-deploy, update_timeout: 10m}
//! logger: {level: info, format: human}
//! ```

use std::path::{Path, PathBuf};

use baetyl_sdk::ConfigError;
use baetyl_sdk::config::{ByteSize, ConfigFile, HumanDuration};
use baetyl_sdk::logging::LoggerConfig;
use serde::Deserialize;

use crate::crypto::PublicKey;
use crate::https::Endpoint;

pub const DEFAULT_CONFIG_PATH: &str = "etc/baetyl/service.yml";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub cloud: CloudConfig,
    #[serde(default)]
    pub provisioning: ProvisioningConfig,
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default)]
    pub report: ReportConfig,
    #[serde(default)]
    pub download: DownloadConfig,
    #[serde(default)]
    pub reconnect: ReconnectConfig,
    #[serde(default)]
    pub master: MasterLinkConfig,
    #[serde(default)]
    pub logger: LoggerConfig,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("var/lib/baetyl-agent")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudConfig {
    #[serde(deserialize_with = "endpoint")]
    pub url: Endpoint,
    pub ca: PathBuf,
    #[serde(deserialize_with = "public_key")]
    pub signing_key: PublicKey,
}

fn endpoint<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Endpoint, D::Error> {
    let s = String::deserialize(d)?;
    Endpoint::parse(&s).map_err(serde::de::Error::custom)
}

fn public_key<'de, D: serde::Deserializer<'de>>(d: D) -> Result<PublicKey, D::Error> {
    let s = String::deserialize(d)?;
    PublicKey::parse(&s).map_err(serde::de::Error::custom)
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProvisioningConfig {
    pub key_file: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportConfig {
    pub interval: HumanDuration,
    pub watch: HumanDuration,
}

impl Default for ReportConfig {
    fn default() -> Self {
        ReportConfig {
            interval: HumanDuration::from_secs(20),
            watch: HumanDuration::from_secs(2),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DownloadConfig {
    /// The most one deployment may download (application.yml and every volume file).
    pub max_size: ByteSize,
    /// One download attempt; a broken one resumes where it stopped.
    pub timeout: HumanDuration,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        DownloadConfig {
            max_size: ByteSize(256 << 20),
            timeout: HumanDuration::from_secs(600),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconnectConfig {
    pub min: HumanDuration,
    pub max: HumanDuration,
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        ReconnectConfig {
            min: HumanDuration::from_secs(1),
            max: HumanDuration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MasterLinkConfig {
    /// The master's operator token, for a master that does not name this service in `server.agents`.
    /// Default: the agent's own service token (the agent role when the master's conf.yml names it).
    pub token_file: Option<PathBuf>,
    /// The master's work dir (where the instance logs are); default: the `pwd` the master reports in inspect.
    pub workdir: Option<PathBuf>,
    /// The agent's staging area as the agent sees it (relative to its working dir, where the master links or
    /// mounts its volumes): deployments are written there and nowhere else (in a container, the rest of the
    /// master's files are not even there).
    pub staging: PathBuf,
    /// The application's name of that volume: its path in the running application (from inspect) is how the
    /// master names the same directory, so staged paths are given to the master that way.
    pub staging_volume: String,
    /// How long an update may take before it is reported as TIMEOUT.
    pub update_timeout: HumanDuration,
}

impl Default for MasterLinkConfig {
    fn default() -> Self {
        MasterLinkConfig {
            token_file: None,
            workdir: None,
            staging: PathBuf::from("var/db/baetyl/deploy"),
            staging_volume: "agent-deploy".into(),
            update_timeout: HumanDuration::from_secs(600),
        }
    }
}

impl ConfigFile for AgentConfig {
    fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::invalid(file, m));
        if self.provisioning.key_file.is_some() && self.provisioning.token_file.is_some() {
            return bad(
                "key `provisioning`: give `key_file` (the fleet provisioning key) or `token_file` (a device token), not both",
            );
        }
        if let Some(n) = &self.provisioning.name
            && !crate::proto::valid_name(n)
        {
            return bad(
                "key `provisioning.name`: use 1 to 64 letters, digits, `-`, `_` or `.`, starting with a letter or digit",
            );
        }
        if !crate::proto::valid_name(&self.master.staging_volume) {
            return bad(
                "key `master.staging_volume`: the name of a volume of the application (letters, digits, `-`, `_`, `.`)",
            );
        }
        if self.report.interval.get() < std::time::Duration::from_secs(1)
            || self.report.watch.get() < std::time::Duration::from_millis(200)
        {
            return bad("key `report`: `interval` must be at least 1s and `watch` at least 200ms");
        }
        if self.reconnect.min.get().is_zero() || self.reconnect.max.get() < self.reconnect.min.get()
        {
            return bad("key `reconnect`: `min` must be above 0 and `max` at least `min`");
        }
        if self.download.max_size.0 == 0 {
            return bad("key `download.max_size`: must be above 0");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ed25519:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

    #[test]
    fn minimal_config_takes_defaults() {
        let text = format!(
            "cloud: {{url: 'https://10.0.2.2:9443', ca: etc/baetyl/ca.crt, signing_key: '{KEY}'}}\n"
        );
        let c = AgentConfig::parse(&text, Path::new("agent.yml")).unwrap();
        assert_eq!(c.cloud.url.port, 9443);
        assert_eq!(c.state_dir, PathBuf::from("var/lib/baetyl-agent"));
        assert_eq!(c.report.interval.get().as_secs(), 20);
        assert_eq!(c.download.max_size.0, 256 << 20);
    }

    #[test]
    fn mistakes_name_the_key() {
        let e = AgentConfig::parse(
            "cloud: {url: 'http://x', ca: a, signing_key: 'ed25519:AA=='}\n",
            Path::new("a.yml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("cloud.url"), "{e}");
        assert!(e.contains("https://"), "{e}");
        let e = AgentConfig::parse(
            &format!("cloud: {{url: 'https://x', ca: a, signing_key: '{KEY}'}}\nprovisioning: {{key_file: k, token_file: t}}\n"),
            Path::new("a.yml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not both"), "{e}");
        let e = AgentConfig::parse(
            &format!("cloud: {{url: 'https://x', ca: a, signing_key: '{KEY}'}}\nrepot: {{}}\n"),
            Path::new("a.yml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field `repot`"), "{e}");
    }
}
