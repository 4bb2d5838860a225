//! Digests, signatures and random secrets, all from aws-lc-rs (the TLS provider the workspace already builds),
//! plus the encodings they travel in (hex digests, base64 signatures and keys).

use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

/// The prefix of a public signing key written as text: `ed25519:<base64 of the 32 key bytes>`.
pub const KEY_PREFIX: &str = "ed25519:";

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// SHA-256 of `data` as lower-case hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, data).as_ref())
}

/// Is `s` a SHA-256 digest written as 64 lower-case hex digits (the form blob names take)?
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// An incremental SHA-256 (downloads are hashed as they arrive).
pub struct Sha256(digest::Context);

impl Default for Sha256 {
    fn default() -> Self {
        Sha256(digest::Context::new(&digest::SHA256))
    }
}

impl Sha256 {
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    pub fn finish_hex(self) -> String {
        hex(self.0.finish().as_ref())
    }
}

pub fn b64(data: &[u8]) -> String {
    B64.encode(data)
}

pub fn unb64(s: &str) -> Option<Vec<u8>> {
    B64.decode(s.trim()).ok()
}

/// `n` random bytes from the system's generator.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    // The system generator only fails when the kernel cannot give entropy at all; zeros would be a
    // predictable secret, so that is fatal.
    if SystemRandom::new().fill(&mut buf).is_err() {
        panic!("the system random number generator failed");
    }
    buf
}

/// A random secret for people and config files: `bytes` random bytes in hex.
pub fn random_token(bytes: usize) -> String {
    hex(&random_bytes(bytes))
}

/// The fleet's ed25519 signing key.
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl SigningKey {
    /// A new key; answers it and its PKCS#8 encoding (what is kept on disk).
    pub fn generate() -> Result<(Self, Vec<u8>), String> {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|e| format!("cannot generate an ed25519 key: {e}"))?;
        let bytes = doc.as_ref().to_vec();
        Ok((Self::from_pkcs8(&bytes)?, bytes))
    }

    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, String> {
        Ed25519KeyPair::from_pkcs8(pkcs8)
            .map(|pair| SigningKey { pair })
            .map_err(|e| format!("not an ed25519 PKCS#8 key: {e}"))
    }

    /// The public key as `ed25519:<base64>`.
    pub fn public(&self) -> PublicKey {
        let mut key = [0u8; 32];
        key.copy_from_slice(&self.pair.public_key().as_ref()[..32]);
        PublicKey(key)
    }

    /// The base64 signature of `message`.
    pub fn sign(&self, message: &[u8]) -> String {
        b64(self.pair.sign(message).as_ref())
    }
}

/// A pinned ed25519 public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Parses `ed25519:<base64>` (surrounding whitespace ignored).
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let body = s.strip_prefix(KEY_PREFIX).ok_or_else(|| {
            format!("a signing key is written `{KEY_PREFIX}<base64 of 32 bytes>`, not `{s}`")
        })?;
        let bytes = unb64(body).ok_or_else(|| format!("`{s}`: the key is not base64"))?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| format!("`{s}`: an ed25519 public key has 32 bytes"))?;
        Ok(PublicKey(key))
    }

    /// Does `signature` (base64) sign `message` with this key?
    pub fn verify(&self, message: &[u8], signature: &str) -> bool {
        let Some(sig) = unb64(signature) else {
            return false;
        };
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(message, &sig)
            .is_ok()
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{KEY_PREFIX}{}", b64(&self.0))
    }
}

/// Constant-time equality of two secrets (or their digests).
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && aws_lc_rs::constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_and_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let mut h = Sha256::default();
        h.update(b"a");
        h.update(b"bc");
        assert_eq!(h.finish_hex(), sha256_hex(b"abc"));
        assert!(is_sha256_hex(&sha256_hex(b"")));
        assert!(!is_sha256_hex("../etc/passwd"));
        assert!(!is_sha256_hex(&sha256_hex(b"").to_uppercase()));
        assert_eq!(random_token(16).len(), 32);
        assert_ne!(random_token(16), random_token(16));
    }

    #[test]
    fn signatures_verify_only_with_the_right_key_and_message() {
        let (key, pkcs8) = SigningKey::generate().unwrap();
        let again = SigningKey::from_pkcs8(&pkcs8).unwrap();
        assert_eq!(key.public(), again.public());
        let sig = key.sign(b"manifest");
        let public = PublicKey::parse(&key.public().to_string()).unwrap();
        assert!(public.verify(b"manifest", &sig));
        assert!(!public.verify(b"manifest!", &sig));
        assert!(!public.verify(b"manifest", "AAAA"));
        assert!(!public.verify(b"manifest", "not base64 at all"));
        let (other, _) = SigningKey::generate().unwrap();
        assert!(!other.public().verify(b"manifest", &sig));
        assert!(PublicKey::parse("rsa:AAAA").is_err());
        assert!(PublicKey::parse("ed25519:AAAA").is_err());
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
    }
}
