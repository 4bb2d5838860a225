//! Checking a bundle ([`baetyl_sdk::os_bundle`]) before anything is written: its length against its manifest
//! (a truncated copy is refused before any hashing), the ed25519 signature over the header with the key the
//! image pins, the manifest, then each payload's SHA-256 in one pass over the file. The copy into the slot
//! hashes again as it writes ([`copy_payload`]) and the boot entry is only made when that matches too, so a
//! file changed between the two passes cannot become bootable.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use aws_lc_rs::signature::{ED25519, UnparsedPublicKey};
use baetyl_sdk::os_bundle::{self, Manifest, PREFIX_LEN, SIGNATURE_LEN};
use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::error::OsUpdateError;

/// The pinned key: `ed25519:<base64 of 32 bytes>`.
pub fn read_key(path: &Path) -> Result<[u8; 32], OsUpdateError> {
    let bad = |why: String| OsUpdateError::Key {
        path: path.to_path_buf(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let body = text
        .trim()
        .strip_prefix("ed25519:")
        .ok_or_else(|| bad("not `ed25519:<base64>`".into()))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| bad("not base64".into()))?;
    bytes
        .try_into()
        .map_err(|_| bad("an ed25519 public key has 32 bytes".into()))
}

/// A bundle whose header, signature and length were checked (payloads not yet).
#[derive(Debug)]
pub struct Header {
    pub manifest: Manifest,
    /// Where the first payload starts in the file.
    pub payloads_at: u64,
}

fn read_exact(f: &mut impl Read, buf: &mut [u8], path: &Path) -> Result<(), OsUpdateError> {
    f.read_exact(buf).map_err(|e| OsUpdateError::io(path, e))
}

/// Reads and checks the header of the bundle `f` (`len` bytes, at `path`) with the public key `key`.
pub fn header(
    f: &mut (impl Read + Seek),
    len: u64,
    path: &Path,
    key: &[u8; 32],
) -> Result<Header, OsUpdateError> {
    let p = || path.to_path_buf();
    let truncated = |need: u64| OsUpdateError::Truncated {
        path: p(),
        have: len,
        need,
    };
    if len < PREFIX_LEN as u64 {
        return Err(OsUpdateError::NotABundle {
            path: p(),
            why: format!("{len} bytes"),
        });
    }
    f.seek(SeekFrom::Start(0))
        .map_err(|e| OsUpdateError::io(path, e))?;
    let mut prefix = [0u8; PREFIX_LEN];
    read_exact(f, &mut prefix, path)?;
    let mlen = os_bundle::parse_prefix(&prefix)
        .map_err(|why| OsUpdateError::NotABundle { path: p(), why })?;
    let payloads_at = os_bundle::payloads_offset(mlen);
    if len < payloads_at {
        return Err(truncated(payloads_at));
    }
    let mut signed = prefix.to_vec();
    signed.resize(PREFIX_LEN + mlen as usize, 0);
    read_exact(f, &mut signed[PREFIX_LEN..], path)?;
    let mut sig = [0u8; SIGNATURE_LEN];
    read_exact(f, &mut sig, path)?;
    if UnparsedPublicKey::new(&ED25519, key)
        .verify(&signed, &sig)
        .is_err()
    {
        return Err(OsUpdateError::BadSignature {
            path: p(),
            key: format!(
                "ed25519:{}",
                base64::engine::general_purpose::STANDARD.encode(key)
            ),
        });
    }
    // Signed, so written by our builder: a manifest that does not parse is a newer format.
    let manifest: Manifest =
        serde_json::from_slice(&signed[PREFIX_LEN..]).map_err(|e| OsUpdateError::NotABundle {
            path: p(),
            why: format!("manifest: {e}"),
        })?;
    manifest
        .check()
        .map_err(|why| OsUpdateError::NotABundle { path: p(), why })?;
    let need = payloads_at + manifest.payload_bytes();
    if len < need {
        return Err(truncated(need));
    }
    if len > need {
        return Err(OsUpdateError::TrailingBytes {
            path: p(),
            extra: len - need,
        });
    }
    Ok(Header {
        manifest,
        payloads_at,
    })
}

/// Copies `size` bytes of `f` from `at` into `out` (None: only hash them) and checks their SHA-256.
pub fn copy_payload(
    f: &mut (impl Read + Seek),
    path: &Path,
    at: u64,
    payload: &os_bundle::Payload,
    mut out: Option<(&mut dyn Write, &Path)>,
    when: &'static str,
) -> Result<(), OsUpdateError> {
    f.seek(SeekFrom::Start(at))
        .map_err(|e| OsUpdateError::io(path, e))?;
    let mut h = Sha256::new();
    let mut left = payload.size;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = f
            .read(&mut buf[..want])
            .map_err(|e| OsUpdateError::io(path, e))?;
        if n == 0 {
            return Err(OsUpdateError::Truncated {
                path: path.to_path_buf(),
                have: at + payload.size - left,
                need: at + payload.size,
            });
        }
        h.update(&buf[..n]);
        if let Some((w, to)) = out.as_mut() {
            w.write_all(&buf[..n])
                .map_err(|e| OsUpdateError::io(to, e))?;
        }
        left -= n as u64;
    }
    let sum: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if !sum.eq_ignore_ascii_case(&payload.sha256) {
        return Err(OsUpdateError::HashMismatch {
            path: path.to_path_buf(),
            payload: payload.name.clone(),
            when,
        });
    }
    Ok(())
}

/// Every payload's hash, in one pass.
pub fn payloads(f: &mut (impl Read + Seek), path: &Path, h: &Header) -> Result<(), OsUpdateError> {
    for p in &h.manifest.payloads {
        let (_, at) = h
            .manifest
            .payload(&p.name)
            .ok_or_else(|| OsUpdateError::NotABundle {
                path: PathBuf::from(path),
                why: format!("no payload {}", p.name),
            })?;
        copy_payload(f, path, h.payloads_at + at, p, None, "")?;
    }
    Ok(())
}
