//! What the device and the cloud say to each other, and the signed documents the cloud issues.
//!
//! The link is a WebSocket over two-way TLS; each frame is one JSON object tagged by `type`. The device sends
//! [`Up`] messages, the cloud [`Down`] messages. Desired state travels as a [`Signed`] document: the JSON text
//! exactly as signed plus its ed25519 signature, so nothing has to be re-serialised to be verified.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::crypto::{self, PublicKey};

/// Path of the device link (WebSocket upgrade) on the cloud.
pub const LINK_PATH: &str = "/device/v1/link";
/// Path of registration (no client certificate yet: the fleet key or a device token).
pub const PROVISION_PATH: &str = "/device/v1/provision";
/// Prefix of blob downloads: `<prefix>/<sha256>`, with `Range` for resuming.
pub const BLOB_PATH: &str = "/device/v1/blobs";

/// A document and its signature: `payload` is the exact JSON text that was signed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Signed {
    pub payload: String,
    pub signature: String,
}

impl Signed {
    pub fn sign<T: Serialize>(doc: &T, key: &crypto::SigningKey) -> Result<Signed, String> {
        let payload = serde_json::to_string(doc).map_err(|e| e.to_string())?;
        let signature = key.sign(payload.as_bytes());
        Ok(Signed { payload, signature })
    }

    /// Checks the signature with `key`, then parses the payload.
    pub fn open<T: for<'de> Deserialize<'de>>(&self, key: &PublicKey) -> Result<T, String> {
        if !key.verify(self.payload.as_bytes(), &self.signature) {
            return Err(format!(
                "the signature does not match the fleet signing key pinned in the agent's config ({key})"
            ));
        }
        serde_json::from_str(&self.payload)
            .map_err(|e| format!("signed document is malformed: {e}"))
    }
}

/// A blob: content-addressed by its SHA-256.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlobRef {
    pub sha256: String,
    pub size: u64,
}

/// One file of a volume.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileRef {
    /// Relative to the volume's root; `/`-separated, no `..`, no leading `/`.
    pub path: String,
    #[serde(flatten)]
    pub blob: BlobRef,
    /// Unix permission bits (0644 or 0755 in practice).
    #[serde(default = "default_mode")]
    pub mode: u32,
}

fn default_mode() -> u32 {
    0o644
}

/// An application version as uploaded: application.yml and the files of its config volumes. Signed by the
/// cloud when uploaded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub app: String,
    pub version: String,
    /// The application.yml.
    pub application: BlobRef,
    /// Volume name -> its files (only volumes whose content ships with the application).
    #[serde(default)]
    pub volumes: BTreeMap<String, Vec<FileRef>>,
    /// Names of the per-device secrets that `${secret.NAME}` placeholders in the files refer to.
    #[serde(default)]
    pub secrets: Vec<String>,
    pub created: String,
}

impl Manifest {
    /// Every blob, application.yml first.
    pub fn blobs(&self) -> Vec<&BlobRef> {
        std::iter::once(&self.application)
            .chain(self.volumes.values().flatten().map(|f| &f.blob))
            .collect()
    }

    /// Sum of the blob sizes.
    pub fn total_size(&self) -> u64 {
        self.blobs().iter().map(|b| b.size).sum()
    }
}

/// What one device should run: issued by the cloud for that device, signed with the fleet key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Desired {
    /// The device this document is for (a document for another device is refused).
    pub device: String,
    pub name: String,
    /// Grows with every change of any device's desired state; a device never goes back to a lower one.
    pub revision: u64,
    /// The signed manifest of the application version.
    pub manifest: Signed,
    /// This device's secrets (name -> value), substituted for `${secret.NAME}`.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    pub issued: String,
}

/// A step of a deployment on the device. The master's OTA steps keep their v1 names; the agent adds its own
/// before them.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Step {
    /// The agent accepted the desired state (signature and device checked).
    Accepted,
    Downloading,
    /// Every blob is here and matches its digest.
    Verified,
    /// Volumes and application.yml are in place under the master's work dir.
    Staged,
    Received,
    Updating,
    Updated,
    Restarting,
    Restarted,
    Rollingback,
    Rolledback,
    Failure,
    Timeout,
}

impl Step {
    /// The deployment ended (successfully or not).
    pub fn is_final(self) -> bool {
        matches!(self, Step::Restarted | Step::Failure | Step::Timeout)
    }

    pub fn parse_ota(s: &str) -> Option<Step> {
        serde_json::from_value(Value::String(s.to_string())).ok()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Step::Accepted => "ACCEPTED",
            Step::Downloading => "DOWNLOADING",
            Step::Verified => "VERIFIED",
            Step::Staged => "STAGED",
            Step::Received => "RECEIVED",
            Step::Updating => "UPDATING",
            Step::Updated => "UPDATED",
            Step::Restarting => "RESTARTING",
            Step::Restarted => "RESTARTED",
            Step::Rollingback => "ROLLINGBACK",
            Step::Rolledback => "ROLLEDBACK",
            Step::Failure => "FAILURE",
            Step::Timeout => "TIMEOUT",
        }
    }
}

/// One step of one deployment, as it happened on the device.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeployEvent {
    pub revision: u64,
    pub trace: String,
    pub step: Step,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub time: String,
}

impl DeployEvent {
    /// For a failed deployment, what people should read: the message (which says what happened to the
    /// running application), else the bare error.
    pub fn failure(&self) -> Option<String> {
        match self.step {
            Step::Failure | Step::Timeout if !self.message.is_empty() => Some(self.message.clone()),
            Step::Failure | Step::Timeout => Some(self.error.clone().unwrap_or_default()),
            _ => None,
        }
    }
}

/// A compact view of the device for fleet lists: what the dashboard's overview shows.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// `app_version` of the running application.yml.
    pub app_version: String,
    pub services: u32,
    pub running: u32,
    pub cpu_percent: Option<f64>,
    pub mem_used: Option<u64>,
    pub mem_total: Option<u64>,
    /// The master's error (a failed update, an invalid application), empty when none.
    #[serde(default)]
    pub error: String,
}

/// The device's state: sent on connect, at an interval, and right after every change.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub time: String,
    /// The revision whose application runs (the last successful deployment), 0 before the first.
    pub applied_revision: u64,
    /// The last deployment the agent worked on and how it ended (or where it is).
    #[serde(default)]
    pub last: Option<DeployEvent>,
    pub summary: Summary,
    /// The master's inspect, as it answered.
    pub inspect: Value,
}

/// An operation on the device, asked by an operator through the cloud.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    Inspect,
    /// A service's log: the last `tail` lines, then (with `follow`) new lines until cancelled.
    Logs {
        service: String,
        #[serde(default)]
        instance: Option<String>,
        #[serde(default = "default_tail")]
        tail: usize,
        #[serde(default)]
        follow: bool,
    },
    Restart {
        service: String,
    },
    Reboot,
    Poweroff,
}

fn default_tail() -> usize {
    100
}

/// Device -> cloud.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Up {
    Hello {
        agent_version: String,
        applied_revision: u64,
    },
    Report(Box<Report>),
    /// Deployment steps, oldest first (several when the device catches up after being offline).
    Events {
        events: Vec<DeployEvent>,
    },
    /// The answer to a command.
    Result {
        id: String,
        ok: bool,
        #[serde(default)]
        body: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// Part of a log stream (command `id`).
    LogData {
        id: String,
        data: String,
    },
    /// The log stream `id` ended (an error says why).
    LogEnd {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

/// Cloud -> device.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Down {
    Welcome {
        device: String,
        name: String,
    },
    Desired {
        desired: Signed,
    },
    Command {
        id: String,
        #[serde(flatten)]
        op: Op,
    },
    /// Stop a running command (a log follow whose reader went away).
    Cancel {
        id: String,
    },
}

/// Registration request (`POST /device/v1/provision`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisionRequest {
    /// The fleet provisioning key (every device of an image) ...
    #[serde(default)]
    pub provisioning_key: Option<String>,
    /// ... or a one-time token made for this device.
    #[serde(default)]
    pub token: Option<String>,
    /// The name the device asks for (with a fleet key); ignored with a token (the token names the device).
    #[serde(default)]
    pub name: Option<String>,
    /// PKCS#10 request, PEM; its key stays on the device.
    pub csr: String,
    /// Facts for the operator (host id, serial number, architecture).
    #[serde(default)]
    pub facts: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProvisionResponse {
    pub device: String,
    pub name: String,
    /// The device's client certificate, PEM.
    pub certificate: String,
    /// The fleet CA, PEM.
    pub ca: String,
}

/// The form of names people give devices, apps, versions, tags, secrets: letters, digits, `-`, `_`, `.`;
/// starting with a letter or digit; 1 to 64 characters.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A safe relative path inside a volume: `/`-separated components, none empty, `.` or `..`, no NUL or
/// backslash, at most 255 bytes a component and 1024 in all.
pub fn valid_rel_path(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 1024
        && !p.starts_with('/')
        && p.split('/').all(|c| {
            !c.is_empty() && c != "." && c != ".." && c.len() <= 255 && !c.contains(['\0', '\\'])
        })
}

/// RFC 3339 now, in seconds.
pub fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_with_their_tags() {
        let down = Down::Command {
            id: "7".into(),
            op: Op::Logs {
                service: "hub".into(),
                instance: None,
                tail: 10,
                follow: true,
            },
        };
        let text = serde_json::to_string(&down).unwrap();
        assert!(text.contains(r#""type":"command""#), "{text}");
        assert!(text.contains(r#""op":"logs""#), "{text}");
        assert_eq!(serde_json::from_str::<Down>(&text).unwrap(), down);
        let up: Up = serde_json::from_str(r#"{"type":"log_end","id":"7"}"#).unwrap();
        assert_eq!(
            up,
            Up::LogEnd {
                id: "7".into(),
                error: None
            }
        );
        assert_eq!(Step::parse_ota("ROLLEDBACK"), Some(Step::Rolledback));
        assert_eq!(Step::parse_ota("nonsense"), None);
        assert_eq!(
            serde_json::to_value(Step::Restarted).unwrap(),
            Value::String(Step::Restarted.as_str().into())
        );
    }

    #[test]
    fn signed_documents_open_only_unchanged_and_with_the_pinned_key() {
        let (key, _) = crypto::SigningKey::generate().unwrap();
        let doc = serde_json::json!({"device": "d1", "revision": 3});
        let signed = Signed::sign(&doc, &key).unwrap();
        let back: Value = signed.open(&key.public()).unwrap();
        assert_eq!(back, doc);
        let mut tampered = signed.clone();
        tampered.payload = tampered.payload.replace('3', "4");
        assert!(tampered.open::<Value>(&key.public()).is_err());
        let (other, _) = crypto::SigningKey::generate().unwrap();
        let err = signed.open::<Value>(&other.public()).unwrap_err();
        assert!(err.contains("signature"), "{err}");
    }

    #[test]
    fn names_and_paths_are_checked() {
        assert!(valid_name("hub-1.a_b"));
        assert!(!valid_name("-x"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(&"a".repeat(65)));
        assert!(valid_rel_path("conf/service.yml"));
        for bad in ["", "/etc/passwd", "a/../b", "a//b", "./a", "a\\b", "a/\0"] {
            assert!(!valid_rel_path(bad), "{bad:?}");
        }
    }
}
