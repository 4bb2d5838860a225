//! A cloud-managed device's first application: the agent alone, with what it needs to join its fleet.
//!
//! A *fleet file* (`baetyl ctl provisioning-key --fleet-file FILE`) carries the cloud's URL as devices reach
//! it, the fleet CA to pin, the fleet signing key to pin, and one credential: the fleet provisioning key (every
//! card flashed from one image) or a one-time device token (`baetyl ctl provision NAME --fleet-file FILE`).
//! [`write_workdir`] turns it into a master work-dir tree: `var/db/baetyl/application.yml` (the agent alone)
//! and the agent's config volume. `baetyl image build --cloud` ships that tree on the data partition and
//! `baetyl image configure` writes it into a built image. No hub and no password: every other service arrives
//! from the cloud with this device's own secrets.

use std::path::Path;

use baetyl_sdk::config::ConfigFile;
use serde::{Deserialize, Serialize};

use crate::crypto::PublicKey;
use crate::files;
use crate::https::Endpoint;

/// What a device needs to join a fleet. Secret: it registers devices.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FleetFile {
    /// The cloud as devices reach it (`https://HOST:PORT`).
    pub url: String,
    /// The fleet CA, PEM: the only CA the agent trusts.
    pub ca: String,
    /// The fleet signing key, `ed25519:<base64>`: deployments must carry its signature.
    pub signing_key: String,
    /// The fleet provisioning key (`bpk_...`): every device of an image registers itself with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning_key: Option<String>,
    /// A one-time registration token of one device (`baetyl ctl provision NAME`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// The largest fleet file read (a CA chain and a few keys).
const MAX_FLEET_FILE: u64 = 256 * 1024;

impl FleetFile {
    /// Reads and checks a fleet file.
    pub fn load(path: &Path) -> Result<FleetFile, String> {
        let bytes = files::read_limited(path, MAX_FLEET_FILE)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let f: FleetFile = serde_yaml_ng::from_slice(&bytes).map_err(|e| {
            format!(
                "{}: not a fleet file ({e}); make one with `baetyl ctl provisioning-key --fleet-file FILE`",
                path.display()
            )
        })?;
        f.check().map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(f)
    }

    /// Every field parses, and exactly one credential is given.
    pub fn check(&self) -> Result<(), String> {
        Endpoint::parse(&self.url).map_err(|e| format!("url: {e}"))?;
        PublicKey::parse(&self.signing_key).map_err(|e| format!("signing_key: {e}"))?;
        crate::https::parse_certs(self.ca.as_bytes(), "ca").map_err(|e| e.to_string())?;
        let token_like = |what: &str, s: &str| {
            if s.is_empty() || s.len() > 512 || !s.bytes().all(|b| b.is_ascii_graphic()) {
                Err(format!(
                    "{what}: not a key or token (empty, too long or with spaces)"
                ))
            } else {
                Ok(())
            }
        };
        match (&self.provisioning_key, &self.token) {
            (Some(k), None) => token_like("provisioning_key", k),
            (None, Some(t)) => token_like("token", t),
            _ => Err("give `provisioning_key` or `token`, exactly one of them".into()),
        }
    }

    /// The file's text (with a comment that says what it is).
    pub fn to_yaml(&self) -> String {
        format!(
            "# baetyl fleet file: what a device needs to join this fleet. Keep it secret: it registers devices.\n{}",
            serde_yaml_ng::to_string(self).unwrap_or_default()
        )
    }
}

/// The application of a device that has only its agent. The agent runs under a user of its own (the image's
/// conf.yml gives it the agent role, nothing more): its state, and its staging area `deploy` where it puts
/// the application files and volumes it receives, are its own volumes; the master lets its group read the
/// running application, the OTA log and the instance logs.
pub const BOOTSTRAP_APP: &str = "# A cloud-managed device before its first deployment: the agent alone. Its services arrive from the cloud.
version: v1
app_version: bootstrap
services:
  agent:
    image: baetyl-agent
    volumes: [agent-conf:/etc/baetyl, agent-state:/var/lib/baetyl-agent, agent-deploy:/var/db/baetyl/deploy]
volumes:
  agent-conf: {path: var/db/baetyl/agent/conf, read_only: true}
  agent-state: {path: var/db/baetyl/agent/state}
  agent-deploy: {path: var/db/baetyl/deploy}
";

/// The bootstrap application's path in a work dir.
pub const APPLICATION: &str = "var/db/baetyl/application.yml";

/// Where the agent's config volume is, relative to the work dir.
pub const AGENT_CONF: &str = "var/db/baetyl/agent/conf";

/// Writes (or rewrites) the bootstrap application and the agent's config into the master work dir `dir`.
/// `name` is the name the device registers with (fleet key only; default: its serial number, else a name
/// derived from its key).
pub fn write_workdir(dir: &Path, fleet: &FleetFile, name: Option<&str>) -> std::io::Result<()> {
    fleet.check().map_err(std::io::Error::other)?;
    let conf = dir.join(AGENT_CONF);
    std::fs::create_dir_all(&conf)?;
    std::fs::create_dir_all(dir.join("var/db/baetyl/agent/state"))?;
    files::replace(&dir.join(APPLICATION), BOOTSTRAP_APP.as_bytes(), 0o644)?;
    files::replace(&conf.join("ca.crt"), fleet.ca.as_bytes(), 0o644)?;
    let mut provisioning = serde_yaml_ng::Mapping::new();
    let (file, secret, key) = match (&fleet.provisioning_key, &fleet.token) {
        (Some(k), _) => ("provisioning.key", k, "key_file"),
        (None, Some(t)) => ("device.token", t, "token_file"),
        (None, None) => return Err(std::io::Error::other("the fleet file has no credential")),
    };
    files::replace(&conf.join(file), format!("{secret}\n").as_bytes(), 0o600)?;
    provisioning.insert(key.into(), format!("etc/baetyl/{file}").into());
    if let Some(n) = name {
        provisioning.insert("name".into(), n.into());
    }
    let mut cloud = serde_yaml_ng::Mapping::new();
    cloud.insert("url".into(), fleet.url.clone().into());
    cloud.insert("ca".into(), "etc/baetyl/ca.crt".into());
    cloud.insert("signing_key".into(), fleet.signing_key.clone().into());
    let mut cfg = serde_yaml_ng::Mapping::new();
    cfg.insert("cloud".into(), cloud.into());
    cfg.insert("provisioning".into(), provisioning.into());
    cfg.insert("state_dir".into(), "var/lib/baetyl-agent".into());
    let text = format!(
        "# The device agent: links this device to its fleet (written by baetyl image; see services/cloud/README.md).\n{}",
        serde_yaml_ng::to_string(&cfg).map_err(std::io::Error::other)?
    );
    let path = conf.join("service.yml");
    files::replace(&path, text.as_bytes(), 0o644)?;
    // What the agent will load on the device: a mistake (e.g. a name it refuses) is reported here, not there.
    crate::config::AgentConfig::load(&path)
        .map(|_| ())
        .map_err(|e| std::io::Error::other(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AgentConfig;

    fn fleet() -> FleetFile {
        let ca = rcgen::CertificateParams::new(vec!["x".to_string()])
            .unwrap()
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap()
            .pem();
        FleetFile {
            url: "https://10.0.2.2:9443".into(),
            ca,
            signing_key: crate::crypto::SigningKey::generate()
                .unwrap()
                .0
                .public()
                .to_string(),
            provisioning_key: Some("bpk_x".into()),
            token: None,
        }
    }

    #[test]
    fn the_tree_holds_a_valid_agent_config_and_no_password() {
        let fleet = fleet();
        fleet.check().unwrap();
        let back: FleetFile = serde_yaml_ng::from_str(&fleet.to_yaml()).unwrap();
        assert_eq!(back, fleet);
        let dir = tempfile::tempdir().unwrap();
        let e = write_workdir(dir.path(), &fleet, Some("pump: 'one'")).unwrap_err();
        assert!(e.to_string().contains("provisioning.name"), "{e}");
        write_workdir(dir.path(), &fleet, Some("pump-1")).unwrap();
        let cfg = AgentConfig::load(&dir.path().join(AGENT_CONF).join("service.yml")).unwrap();
        assert_eq!(cfg.cloud.signing_key.to_string(), fleet.signing_key);
        assert_eq!(cfg.cloud.url.to_string(), "https://10.0.2.2:9443");
        assert_eq!(cfg.provisioning.name.as_deref(), Some("pump-1"));
        assert_eq!(
            cfg.provisioning.key_file.as_deref(),
            Some(Path::new("etc/baetyl/provisioning.key"))
        );
        let app = std::fs::read_to_string(dir.path().join(APPLICATION)).unwrap();
        assert!(app.contains("baetyl-agent") && !app.contains("password"));
        use std::os::unix::fs::PermissionsExt;
        let key = dir.path().join(AGENT_CONF).join("provisioning.key");
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&key).unwrap(), "bpk_x\n");
        assert!(dir.path().join("var/db/baetyl/agent/state").is_dir());
    }

    #[test]
    fn a_token_fleet_file_writes_a_token_file() {
        let mut fleet = fleet();
        fleet.provisioning_key = None;
        fleet.token = Some("bdt_abc".into());
        let dir = tempfile::tempdir().unwrap();
        write_workdir(dir.path(), &fleet, None).unwrap();
        let cfg = AgentConfig::load(&dir.path().join(AGENT_CONF).join("service.yml")).unwrap();
        assert_eq!(
            cfg.provisioning.token_file.as_deref(),
            Some(Path::new("etc/baetyl/device.token"))
        );
        assert!(cfg.provisioning.key_file.is_none() && cfg.provisioning.name.is_none());
    }

    #[test]
    fn bad_fleet_files_are_refused_with_the_field() {
        let good = fleet();
        let mut both = good.clone();
        both.token = Some("t".into());
        assert!(both.check().unwrap_err().contains("exactly one"));
        let mut url = good.clone();
        url.url = "http://x".into();
        assert!(url.check().unwrap_err().starts_with("url:"));
        let mut key = good.clone();
        key.signing_key = "nope".into();
        assert!(key.check().unwrap_err().starts_with("signing_key:"));
        let mut ca = good.clone();
        ca.ca = "not pem".into();
        assert!(ca.check().unwrap_err().contains("ca"));
        let mut spaced = good.clone();
        spaced.provisioning_key = Some("a b".into());
        assert!(spaced.check().is_err());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fleet.yml");
        std::fs::write(&p, "url: x\nextra: 1\n").unwrap();
        let e = FleetFile::load(&p).unwrap_err();
        assert!(
            e.contains("not a fleet file") && e.contains("--fleet-file"),
            "{e}"
        );
        assert!(write_workdir(dir.path(), &both, None).is_err());
    }
}
