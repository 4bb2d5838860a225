//! Safe mode: what the device does when its data partition cannot be used (missing, failing its check, or
//! refusing to mount). Coming up on an empty tmpfs instead would let the master install its built-in example
//! application, whose hub serves a well-known password on 0.0.0.0:1883, on a device that lost its own.
//!
//! In safe mode init mounts a tmpfs on the data mount point (the master needs a writable work dir), mounts no
//! dataset or volume, says why on the console, writes the reason to [`MARKER`] (JSON, for the master's inspect
//! and the cloud agent), and starts the master with [`baetyl_sdk::env::SAFE_MODE`] naming that file: the master
//! then runs no application (so no service and no default credential) and serves only its API.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::log::error;

/// Where the reason is written on the device (`/run` is a tmpfs: it describes this boot only).
pub const MARKER: &str = "/run/baetyl/safe-mode.json";

/// Why the device is in safe mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SafeMode {
    /// One sentence: what failed and what it means.
    pub reason: String,
    /// The partition involved, when one was found.
    pub device: Option<PathBuf>,
    /// The label the data partition is looked up by.
    pub label: String,
    /// What the checker printed (bounded), when it ran.
    pub detail: String,
    /// What an operator can do about it.
    pub remedy: String,
}

impl SafeMode {
    pub fn new(reason: String, device: Option<&Path>, label: &str, detail: String) -> Self {
        SafeMode {
            reason,
            device: device.map(Path::to_path_buf),
            label: label.to_string(),
            detail,
            remedy: "replace or reflash the medium, or repair the filesystem (e2fsck -y, or \
                     baetyl.data.check=yes on the kernel command line, which may lose files); the application \
                     and its data on that partition are untouched until then"
                .into(),
        }
    }

    /// The marker file's contents.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self)
            .unwrap_or_else(|_| format!("{{\"reason\": {:?}}}", self.reason))
    }

    /// The console banner: several lines, so it stands out between the boot messages.
    pub fn announce(&self) {
        error!("==================== SAFE MODE ====================");
        error!("{}", self.reason);
        error!(
            "no application runs and no volume is mounted: the master serves only its API, which reports this \
             (inspect: safe_mode; {MARKER})"
        );
        error!("to recover: {}", self.remedy);
        error!("===================================================");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_is_json_with_the_reason_and_device() {
        let s = SafeMode::new(
            "the data partition failed its check".into(),
            Some(Path::new("/dev/vda4")),
            "baetyl-data",
            "baetyl-data: UNEXPECTED INCONSISTENCY\n".into(),
        );
        let v: serde_json::Value = serde_json::from_str(&s.to_json()).unwrap();
        assert_eq!(v["reason"], "the data partition failed its check");
        assert_eq!(v["device"], "/dev/vda4");
        assert_eq!(v["label"], "baetyl-data");
        assert!(v["remedy"].as_str().unwrap().contains("e2fsck -y"));
    }
}
