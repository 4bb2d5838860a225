//! `os-update.bundle`: the OS update a device installs into its inactive slot (format:
//! [`baetyl_sdk::os_bundle`]): a signed manifest (architecture, version, build id, each payload's size and
//! SHA-256), then each slot's unified kernel image and the root squashfs.
//!
//! The signing key is an ed25519 key kept as the fleet server keeps its own (`signing.key`: base64 of the PKCS#8
//! document, mode 0600), so the fleet's key can sign OS updates too. `--sign-key FILE` names it; a FILE that does
//! not exist yet is made (0600) and said so. Without `--sign-key` the build uses `<out>/os-update.key`, made
//! the same way on the first build into that directory: the image then only accepts updates signed by a key
//! that sits beside the outputs, which is fine for development and must be replaced by a kept key for devices
//! (the build prints a warning). The image pins the public key in its root (`/etc/baetyl/os-update.pub`,
//! [`baetyl_sdk::os::UPDATE_KEY`]). ed25519 signatures are deterministic: the same key and inputs give the
//! same bundle, byte for byte.

use std::io::Write;
use std::path::{Path, PathBuf};

use baetyl_agent::crypto::{self, PublicKey, SigningKey};
use baetyl_sdk::os::Board;
use baetyl_sdk::os_bundle::{self, FORMAT, Manifest, PAYLOADS, Payload, SIGNATURE_LEN};

use crate::error::{ImageError, Result};

/// The key file used without `--sign-key`, in the output directory.
pub const DEFAULT_KEY: &str = "os-update.key";

/// The signing key of a build and where it came from.
pub struct BundleKey {
    pub key: SigningKey,
    pub path: PathBuf,
    /// Made by this build (the file did not exist).
    pub created: bool,
}

impl BundleKey {
    /// Reads the key at `path` (base64 of an ed25519 PKCS#8 document), or makes one there (mode 0600) when there
    /// is no file.
    pub fn load_or_create(path: &Path) -> Result<BundleKey> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let der = crypto::unb64(&text).ok_or_else(|| {
                    ImageError::Input(format!(
                        "{}: an OS update signing key is the base64 of an ed25519 PKCS#8 document (as the fleet \
                         server's signing.key); this file is not base64",
                        path.display()
                    ))
                })?;
                let key = SigningKey::from_pkcs8(&der)
                    .map_err(|e| ImageError::Input(format!("{}: {e}", path.display())))?;
                Ok(BundleKey {
                    key,
                    path: path.to_path_buf(),
                    created: false,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (key, pkcs8) = SigningKey::generate().map_err(ImageError::Input)?;
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| ImageError::io(dir, e))?;
                }
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| ImageError::io(path, e))?;
                f.write_all(format!("{}\n", crypto::b64(&pkcs8)).as_bytes())
                    .and_then(|()| f.sync_all())
                    .map_err(|e| ImageError::io(path, e))?;
                Ok(BundleKey {
                    key,
                    path: path.to_path_buf(),
                    created: true,
                })
            }
            Err(e) => Err(ImageError::io(path, e)),
        }
    }

    /// The public key as the image pins it: `ed25519:<base64>` and a newline.
    pub fn public_text(&self) -> String {
        format!("{}\n", self.key.public())
    }

    pub fn public(&self) -> PublicKey {
        self.key.public()
    }
}

/// The manifest of a bundle of `payloads` (name and file, in [`PAYLOADS`]' order).
pub fn manifest(arch: &str, version: &str, payloads: &[(&str, &Path)]) -> Result<Manifest> {
    let mut list = Vec::new();
    for (name, file) in payloads {
        let size = std::fs::metadata(file)
            .map_err(|e| ImageError::io(file, e))?
            .len();
        list.push(Payload {
            name: name.to_string(),
            size,
            sha256: crate::fs::sha256(file)?,
        });
    }
    let all: String = list.iter().map(|p| p.sha256.as_str()).collect();
    let m = Manifest {
        format: FORMAT,
        board: Board::Efi,
        arch: arch.to_string(),
        version: version.to_string(),
        build: crypto::sha256_hex(all.as_bytes())[..16].to_string(),
        payloads: list,
    };
    m.check().map_err(ImageError::Input)?;
    Ok(m)
}

/// Writes the bundle `out`: header, manifest and signature, then the payloads (`payloads` as [`manifest`] took
/// them). Returns its size.
pub fn write(
    out: &Path,
    key: &SigningKey,
    manifest: &Manifest,
    payloads: &[(&str, &Path)],
) -> Result<u64> {
    let names: Vec<&str> = payloads.iter().map(|(n, _)| *n).collect();
    if names != PAYLOADS {
        return Err(ImageError::Input(format!(
            "bundle payloads {names:?}, expected {PAYLOADS:?}"
        )));
    }
    let json = serde_json::to_vec(manifest)
        .map_err(|e| ImageError::Input(format!("bundle manifest: {e}")))?;
    let header = os_bundle::signed_header(&json);
    let signature = crypto::unb64(&key.sign(&header))
        .filter(|s| s.len() == SIGNATURE_LEN)
        .ok_or_else(|| ImageError::Input("the ed25519 signature is not 64 bytes".into()))?;
    let tmp = out.with_extension("bundle.tmp");
    let mut f =
        std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(|e| ImageError::io(&tmp, e))?);
    let mut put = |data: &[u8]| f.write_all(data).map_err(|e| ImageError::io(&tmp, e));
    put(&header)?;
    put(&signature)?;
    for ((_, file), p) in payloads.iter().zip(&manifest.payloads) {
        let mut src = std::fs::File::open(file).map_err(|e| ImageError::io(file, e))?;
        let n = std::io::copy(&mut src, &mut f).map_err(|e| ImageError::io(&tmp, e))?;
        if n != p.size {
            return Err(ImageError::Input(format!(
                "{} changed while the bundle was written ({n} bytes, the manifest says {})",
                file.display(),
                p.size
            )));
        }
    }
    f.flush().map_err(|e| ImageError::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, out).map_err(|e| ImageError::io(out, e))?;
    Ok(std::fs::metadata(out)
        .map_err(|e| ImageError::io(out, e))?
        .len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_is_signed_header_first_and_reproducible() {
        let dir = tempfile::tempdir().unwrap();
        let keyfile = dir.path().join("k/os-update.key");
        let k = BundleKey::load_or_create(&keyfile).unwrap();
        assert!(k.created);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&keyfile).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = BundleKey::load_or_create(&keyfile).unwrap();
        assert!(!again.created);
        assert_eq!(again.public(), k.public());
        assert!(k.public_text().starts_with("ed25519:"));

        let files: Vec<PathBuf> = PAYLOADS
            .iter()
            .map(|n| {
                let p = dir.path().join(n);
                std::fs::write(&p, format!("payload {n}").repeat(100)).unwrap();
                p
            })
            .collect();
        let payloads: Vec<(&str, &Path)> = PAYLOADS
            .iter()
            .zip(&files)
            .map(|(n, f)| (*n, f.as_path()))
            .collect();
        let m = manifest("x86_64", "0.1.0", &payloads).unwrap();
        let (one, two) = (dir.path().join("1.bundle"), dir.path().join("2.bundle"));
        let len = write(&one, &k.key, &m, &payloads).unwrap();
        write(&two, &again.key, &m, &payloads).unwrap();
        let bytes = std::fs::read(&one).unwrap();
        assert_eq!(
            bytes,
            std::fs::read(&two).unwrap(),
            "same key and inputs, same bytes"
        );
        assert_eq!(bytes.len() as u64, len);

        // The header parses, the signature verifies, the payloads sit where the manifest says.
        let mlen = os_bundle::parse_prefix(&bytes).unwrap();
        let start = os_bundle::PREFIX_LEN;
        let json = &bytes[start..start + mlen as usize];
        let parsed: Manifest = serde_json::from_slice(json).unwrap();
        assert_eq!(parsed, m);
        let sig_at = start + mlen as usize;
        let sig = &bytes[sig_at..sig_at + SIGNATURE_LEN];
        assert!(k.public().verify(&bytes[..sig_at], &crypto::b64(sig)));
        let base = os_bundle::payloads_offset(mlen) as usize;
        let (p, at) = parsed.payload(os_bundle::ROOTFS).unwrap();
        let at = base + at as usize;
        assert_eq!(
            crypto::sha256_hex(&bytes[at..at + p.size as usize]),
            p.sha256
        );
        assert_eq!(base as u64 + parsed.payload_bytes(), len);

        std::fs::write(dir.path().join("bad.key"), "not base64!").unwrap();
        let e = BundleKey::load_or_create(&dir.path().join("bad.key"))
            .err()
            .unwrap();
        assert!(e.to_string().contains("PKCS#8"), "{e}");
    }
}
