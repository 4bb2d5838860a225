//! The OS update bundle (`os-update.bundle`, written by `baetyl image build`, installed by the master's
//! `PUT /v1/system/update {"type":"OS"}`): a header the device can check before it reads anything else, then
//! the payloads.
//!
//! Layout (all integers little-endian), streamable front to back:
//!
//! | bytes        | what                                                                             |
//! |--------------|----------------------------------------------------------------------------------|
//! | 8            | [`MAGIC`] `BAETYLOS`                                                             |
//! | 4            | format version ([`FORMAT`])                                                      |
//! | 4            | manifest length `n` (at most [`MAX_MANIFEST`])                                   |
//! | n            | the manifest, JSON ([`Manifest`])                                                |
//! | 64           | ed25519 signature of every byte before it (magic, version, length, manifest)     |
//! | sizes        | the payloads, in the manifest's order, each exactly as long as the manifest says |
//!
//! The signature covers the manifest, and the manifest holds each payload's SHA-256: a device checks the
//! signature first, then every payload's hash, and only then writes anything. Nothing may follow the last
//! payload (a longer or shorter file is refused: a truncated download is caught by its length before any hash).
//! Crypto is not here (the SDK has none): the image builder signs with aws-lc-rs, the master verifies with it.

use serde::{Deserialize, Serialize};

use crate::os::Board;

pub const MAGIC: &[u8; 8] = b"BAETYLOS";
/// The only format version so far.
pub const FORMAT: u32 = 1;
/// The longest manifest a device reads.
pub const MAX_MANIFEST: u32 = 64 * 1024;
/// An ed25519 signature's length.
pub const SIGNATURE_LEN: usize = 64;
/// The bytes before the manifest.
pub const PREFIX_LEN: usize = 16;

/// Payload names: each slot's unified kernel image (its command line names the slot's root partition) and the
/// root filesystem, in this order.
pub const UKI_A: &str = "uki-a";
pub const UKI_B: &str = "uki-b";
pub const ROOTFS: &str = "rootfs";
pub const PAYLOADS: [&str; 3] = [UKI_A, UKI_B, ROOTFS];

/// The payload holding slot `slot`'s unified kernel image.
pub fn uki_payload(slot: char) -> &'static str {
    if slot == 'b' { UKI_B } else { UKI_A }
}

/// What a bundle holds and for which devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`FORMAT`] again (inside what is signed).
    pub format: u32,
    /// The boot scheme the payloads are for.
    pub board: Board,
    /// The CPU architecture, as Rust names it (`x86_64`, `aarch64`).
    pub arch: String,
    /// VERSION_ID of the new root's os-release.
    pub version: String,
    /// An identifier of this build: the first 16 hex digits of the SHA-256 of the payloads' hashes.
    pub build: String,
    pub payloads: Vec<Payload>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    pub name: String,
    pub size: u64,
    /// Lower-case hex.
    pub sha256: String,
}

impl Manifest {
    /// The payload `name` and where it starts, counted from the first payload.
    pub fn payload(&self, name: &str) -> Option<(&Payload, u64)> {
        let mut at = 0;
        for p in &self.payloads {
            if p.name == name {
                return Some((p, at));
            }
            at += p.size;
        }
        None
    }

    /// The payloads' total size (no overflow once [`Manifest::check`] accepted the manifest).
    pub fn payload_bytes(&self) -> u64 {
        self.payloads.iter().map(|p| p.size).sum()
    }

    /// Checks what does not depend on the device: the format, the payloads' names and order, their hashes'
    /// form.
    pub fn check(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!(
                "manifest format {} (this master reads {FORMAT})",
                self.format
            ));
        }
        let names: Vec<&str> = self.payloads.iter().map(|p| p.name.as_str()).collect();
        if names != PAYLOADS {
            return Err(format!(
                "the payloads are {names:?}; a bundle holds {PAYLOADS:?} in this order"
            ));
        }
        for p in &self.payloads {
            if p.sha256.len() != 64 || !p.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("payload {}: sha256 is not 64 hex digits", p.name));
            }
            if p.size == 0 {
                return Err(format!("payload {} is empty", p.name));
            }
        }
        // The whole file's length (header, signature, manifest, payloads) must be a number: sizes that overflow
        // it would wrap the length check that catches a truncated bundle.
        let header = (PREFIX_LEN + SIGNATURE_LEN) as u64 + u64::from(MAX_MANIFEST);
        if self
            .payloads
            .iter()
            .try_fold(header, |sum, p| sum.checked_add(p.size))
            .is_none()
        {
            return Err("the payloads' sizes add up to more than a file can hold".into());
        }
        Ok(())
    }
}

/// The signed part of a bundle's header (magic, version, length, manifest) for `manifest` (its JSON).
pub fn signed_header(manifest_json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(PREFIX_LEN + manifest_json.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    out.extend_from_slice(&(manifest_json.len() as u32).to_le_bytes());
    out.extend_from_slice(manifest_json);
    out
}

/// Reads the first [`PREFIX_LEN`] bytes: the manifest's length, or why this is not a bundle.
pub fn parse_prefix(prefix: &[u8]) -> Result<u32, String> {
    if prefix.len() < PREFIX_LEN || &prefix[..8] != MAGIC {
        return Err("not an OS update bundle (no BAETYLOS header)".into());
    }
    let word = |at: usize| {
        u32::from_le_bytes([prefix[at], prefix[at + 1], prefix[at + 2], prefix[at + 3]])
    };
    let (format, len) = (word(8), word(12));
    if format != FORMAT {
        return Err(format!(
            "bundle format {format}; this master reads format {FORMAT}"
        ));
    }
    if len == 0 || len > MAX_MANIFEST {
        return Err(format!(
            "manifest length {len} (at most {MAX_MANIFEST} bytes)"
        ));
    }
    Ok(len)
}

/// Where the payloads start in a bundle whose manifest is `manifest_len` bytes long.
pub fn payloads_offset(manifest_len: u32) -> u64 {
    (PREFIX_LEN + SIGNATURE_LEN) as u64 + u64::from(manifest_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            format: FORMAT,
            board: Board::Efi,
            arch: "x86_64".into(),
            version: "0.1.0".into(),
            build: "0123456789abcdef".into(),
            payloads: PAYLOADS
                .iter()
                .enumerate()
                .map(|(i, n)| Payload {
                    name: n.to_string(),
                    size: 10 * (i as u64 + 1),
                    sha256: "ab".repeat(32),
                })
                .collect(),
        }
    }

    #[test]
    fn header_round_trips_and_payloads_are_placed_in_order() {
        let m = manifest();
        m.check().unwrap();
        let json = serde_json::to_vec(&m).unwrap();
        let h = signed_header(&json);
        assert_eq!(parse_prefix(&h).unwrap() as usize, json.len());
        assert_eq!(&h[PREFIX_LEN..], &json[..]);
        assert_eq!(
            m.payload(ROOTFS).map(|(p, at)| (p.size, at)),
            Some((30, 30))
        );
        assert_eq!(m.payload(UKI_B).map(|(_, at)| at), Some(10));
        assert_eq!(m.payload_bytes(), 60);
        assert_eq!(uki_payload('b'), UKI_B);
        assert_eq!(payloads_offset(100), 180);
    }

    #[test]
    fn bad_headers_and_manifests_say_why() {
        assert!(
            parse_prefix(b"not a bundle at all")
                .unwrap_err()
                .contains("BAETYLOS")
        );
        let mut h = signed_header(b"{}");
        h[8] = 2;
        assert!(parse_prefix(&h).unwrap_err().contains("format 2"));
        let mut h = signed_header(b"{}");
        h[12..16].copy_from_slice(&(MAX_MANIFEST + 1).to_le_bytes());
        assert!(parse_prefix(&h).unwrap_err().contains("manifest length"));
        let mut m = manifest();
        m.payloads[2].size = u64::MAX - 20;
        assert!(m.check().unwrap_err().contains("more than a file can hold"));
        let mut m = manifest();
        m.payloads.swap(0, 2);
        assert!(m.check().unwrap_err().contains("in this order"));
        let mut m = manifest();
        m.payloads[1].sha256 = "x".into();
        assert!(m.check().unwrap_err().contains("uki-b"));
        let mut m = manifest();
        m.format = 9;
        assert!(m.check().is_err());
        assert!(serde_json::from_str::<Manifest>(r#"{"format":1,"extra":1}"#).is_err());
    }
}
