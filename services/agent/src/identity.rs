//! The device's identity: its private key (made here, never sent anywhere), the client certificate the fleet CA
//! issued for it, and its id and name. Kept in the state dir: `device.key` (0600), `device.crt`, `device.json`.
//!
//! Registration (once): a PKCS#10 request signed with the device key goes to the cloud with the fleet
//! provisioning key or a one-time device token; the answer is the certificate.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::AgentConfig;
use crate::error::{AgentError, Result};
use crate::files;
use crate::https::{Client, client_config};
use crate::proto::{PROVISION_PATH, ProvisionRequest, ProvisionResponse, valid_name};

/// What the device is to the cloud.
#[derive(Debug, Clone)]
pub struct Identity {
    pub device: String,
    pub name: String,
    pub cert_pem: String,
    pub key_pem: String,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    device: String,
    name: String,
}

struct Paths {
    key: PathBuf,
    cert: PathBuf,
    info: PathBuf,
}

fn paths(dir: &Path) -> Paths {
    Paths {
        key: dir.join("device.key"),
        cert: dir.join("device.crt"),
        info: dir.join("device.json"),
    }
}

/// The identity in `dir`, if the device is registered.
pub fn load(dir: &Path) -> Result<Option<Identity>> {
    let p = paths(dir);
    if !p.cert.exists() {
        return Ok(None);
    }
    let bad = |why: String| AgentError::Identity {
        dir: dir.to_path_buf(),
        why,
    };
    let read = |path: &Path| files::read_secret(path).map_err(|e| AgentError::io(path, e));
    let stored: Stored = serde_json::from_str(&read(&p.info)?).map_err(|e| {
        bad(format!(
            "device.json is damaged ({e}); remove device.* to register again"
        ))
    })?;
    Ok(Some(Identity {
        device: stored.device,
        name: stored.name,
        cert_pem: read(&p.cert)?,
        key_pem: read(&p.key)?,
    }))
}

/// The device key: made once, 0600, never leaves the device.
fn device_key(dir: &Path) -> Result<rcgen::KeyPair> {
    let path = paths(dir).key;
    if path.exists() {
        let pem = files::read_secret(&path).map_err(|e| AgentError::io(&path, e))?;
        return rcgen::KeyPair::from_pem(&pem).map_err(|e| AgentError::Identity {
            dir: dir.to_path_buf(),
            why: format!("device.key is not a usable key: {e}"),
        });
    }
    let key = rcgen::KeyPair::generate().map_err(|e| AgentError::Identity {
        dir: dir.to_path_buf(),
        why: format!("cannot make a key: {e}"),
    })?;
    files::create_private(&path, key.serialize_pem().as_bytes())
        .map_err(|e| AgentError::io(&path, e))?;
    Ok(key)
}

/// The name to register with: configured, else the serial number, else one derived from the device key (every
/// card of an image has its own key, so its own name).
fn device_name(cfg: &AgentConfig, key: &rcgen::KeyPair) -> String {
    if let Some(n) = &cfg.provisioning.name {
        return n.clone();
    }
    if let Ok(sn) = std::env::var(baetyl_sdk::env::HOST_SN)
        && valid_name(sn.trim())
    {
        return sn.trim().to_string();
    }
    let fp = crate::crypto::sha256_hex(key.public_key_raw());
    format!("device-{}", &fp[..12])
}

fn facts() -> BTreeMap<String, String> {
    let mut f = BTreeMap::new();
    for (k, var) in [
        ("host_id", baetyl_sdk::env::HOST_ID),
        ("serial", baetyl_sdk::env::HOST_SN),
    ] {
        if let Ok(v) = std::env::var(var)
            && !v.trim().is_empty()
        {
            f.insert(k.to_string(), v.trim().chars().take(128).collect());
        }
    }
    f.insert("arch".into(), std::env::consts::ARCH.into());
    f.insert("agent_version".into(), env!("CARGO_PKG_VERSION").into());
    f
}

/// Registers the device with the cloud (once) and stores the certificate it gets.
pub async fn register(cfg: &AgentConfig, ca_pem: &[u8]) -> Result<Identity> {
    let dir = &cfg.state_dir;
    files::private_dir(dir).map_err(|e| AgentError::io(dir, e))?;
    let key = device_key(dir)?;
    let name = device_name(cfg, &key);
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name.clone());
    let csr = params
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .map_err(|e| AgentError::Provision(format!("cannot make a certificate request: {e}")))?;
    let read = |p: &Path| files::read_secret(p).map_err(|e| AgentError::io(p, e));
    let (provisioning_key, token) = match (&cfg.provisioning.key_file, &cfg.provisioning.token_file)
    {
        (Some(k), _) => (Some(read(k)?), None),
        (None, Some(t)) => (None, Some(read(t)?)),
        (None, None) => {
            return Err(AgentError::Provision(
                "the device is not registered and the config has no `provisioning.key_file` or `provisioning.token_file`"
                    .into(),
            ));
        }
    };
    let req = ProvisionRequest {
        provisioning_key,
        token,
        name: Some(name),
        csr,
        facts: facts(),
    };
    let client = Client::new(cfg.cloud.url.clone(), client_config(Some(ca_pem), None)?);
    let body = serde_json::to_value(&req).map_err(|e| AgentError::Provision(e.to_string()))?;
    let resp: ProvisionResponse = client
        .json("POST", PROVISION_PATH, Some(&body))
        .await
        .map_err(|e| AgentError::Provision(e.to_string()))?;
    let p = paths(dir);
    files::replace(&p.cert, resp.certificate.as_bytes(), 0o644)
        .map_err(|e| AgentError::io(&p.cert, e))?;
    let stored = serde_json::to_vec(&Stored {
        device: resp.device.clone(),
        name: resp.name.clone(),
    })
    .map_err(|e| AgentError::Provision(e.to_string()))?;
    files::replace(&p.info, &stored, 0o644).map_err(|e| AgentError::io(&p.info, e))?;
    tracing::info!(device = %resp.device, name = %resp.name, "registered with the cloud");
    Ok(Identity {
        device: resp.device,
        name: resp.name,
        cert_pem: resp.certificate,
        key_pem: key.serialize_pem(),
    })
}
