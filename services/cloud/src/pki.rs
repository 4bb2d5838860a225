//! The fleet's keys, in the data dir: the fleet CA (`ca.key` 0600, `ca.crt`) that issues every device's client
//! certificate and the server certificate, and the ed25519 signing key (`signing.key` 0600, `signing.pub`) that
//! signs manifests and desired states. Made on first start; key files are created with O_EXCL and O_NOFOLLOW
//! (never over an existing file, never through a symlink).
//!
//! The server certificate is issued afresh at every start for `tls.names` (unless one is configured), so no
//! server key is kept on disk. Certificates start in 2000 so that a device whose clock has not been set yet
//! still accepts them.

use std::path::Path;
use std::sync::Arc;

use baetyl_agent::crypto::{self, PublicKey, SigningKey};
use baetyl_agent::files;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::config::TlsConfig;
use crate::error::{CloudError, Result};

pub struct Pki {
    pub ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
    pub signing: SigningKey,
    pub signing_public: PublicKey,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CloudError + '_ {
    move |e| CloudError::io(path, e)
}

fn years_from_now(years: i32) -> time_like::Date {
    time_like::Date::now_plus_years(years)
}

/// Just enough calendar arithmetic for certificate validity (whole years from now).
mod time_like {
    pub struct Date(pub i32, pub u8, pub u8);
    impl Date {
        pub fn now_plus_years(years: i32) -> Date {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let year = 1970 + (secs / 31_556_952) as i32;
            Date(year + years, 1, 1)
        }
    }
}

fn validity(params: &mut CertificateParams, years: i32) {
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    let d = years_from_now(years);
    params.not_after = rcgen::date_time_ymd(d.0, d.1, d.2);
}

impl Pki {
    /// Loads the keys from `dir`, making what is missing on a first start. A half-present pair is an error
    /// (restore the missing file from a backup rather than silently starting a new fleet).
    pub fn load_or_create(dir: &Path) -> Result<Pki> {
        files::private_dir(dir).map_err(io(dir))?;
        let ca_key_path = dir.join("ca.key");
        let ca_crt_path = dir.join("ca.crt");
        let (ca_key, ca_pem) = match (ca_key_path.exists(), ca_crt_path.exists()) {
            (true, true) => {
                let key_pem = files::read_secret(&ca_key_path).map_err(io(&ca_key_path))?;
                let key = KeyPair::from_pem(&key_pem)
                    .map_err(|e| CloudError::Keys(format!("{}: {e}", ca_key_path.display())))?;
                let pem = String::from_utf8(
                    files::read_limited(&ca_crt_path, 1 << 20).map_err(io(&ca_crt_path))?,
                )
                .map_err(|_| {
                    CloudError::Keys(format!("{}: not PEM text", ca_crt_path.display()))
                })?;
                (key, pem)
            }
            (false, false) => {
                let key = KeyPair::generate().map_err(|e| CloudError::Keys(e.to_string()))?;
                let mut params = CertificateParams::default();
                params.distinguished_name.push(
                    DnType::CommonName,
                    format!("baetyl fleet CA {}", &crypto::random_token(4)),
                );
                params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
                params.key_usages = vec![
                    KeyUsagePurpose::KeyCertSign,
                    KeyUsagePurpose::CrlSign,
                    KeyUsagePurpose::DigitalSignature,
                ];
                validity(&mut params, 30);
                let cert = params
                    .self_signed(&key)
                    .map_err(|e| CloudError::Keys(e.to_string()))?;
                files::create_private(&ca_key_path, key.serialize_pem().as_bytes())
                    .map_err(io(&ca_key_path))?;
                files::replace(&ca_crt_path, cert.pem().as_bytes(), 0o644)
                    .map_err(io(&ca_crt_path))?;
                tracing::info!(dir = %dir.display(), "made the fleet CA");
                (key, cert.pem())
            }
            _ => {
                return Err(CloudError::Keys(format!(
                    "{} and {} must both exist or both be absent (a first start makes them); restore the missing one",
                    ca_key_path.display(),
                    ca_crt_path.display()
                )));
            }
        };
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)
            .map_err(|e| CloudError::Keys(format!("{}: {e}", ca_crt_path.display())))?;

        let sk_path = dir.join("signing.key");
        let pub_path = dir.join("signing.pub");
        let signing = if sk_path.exists() {
            let text = files::read_secret(&sk_path).map_err(io(&sk_path))?;
            let der = crypto::unb64(&text).ok_or_else(|| {
                CloudError::Keys(format!("{}: not base64 PKCS#8", sk_path.display()))
            })?;
            SigningKey::from_pkcs8(&der)
                .map_err(|e| CloudError::Keys(format!("{}: {e}", sk_path.display())))?
        } else {
            let (key, pkcs8) = SigningKey::generate().map_err(CloudError::Keys)?;
            files::create_private(&sk_path, crypto::b64(&pkcs8).as_bytes())
                .map_err(io(&sk_path))?;
            tracing::info!(key = %key.public(), "made the fleet signing key");
            key
        };
        let signing_public = signing.public();
        files::replace(&pub_path, format!("{signing_public}\n").as_bytes(), 0o644)
            .map_err(io(&pub_path))?;
        Ok(Pki {
            ca_pem,
            issuer,
            signing,
            signing_public,
        })
    }

    /// Issues a client certificate for a device from its signed request. Only the request's public key is
    /// used: the subject is the device id, the use is TLS client authentication. Answers the certificate
    /// (PEM), its SHA-256 (hex, of the DER) and the device's public key (base64).
    pub fn issue_device(&self, csr_pem: &str, device_id: &str) -> Result<(String, String, String)> {
        if csr_pem.len() > 16 * 1024 {
            return Err(CloudError::Certificate(
                "the certificate request is larger than 16 KiB".into(),
            ));
        }
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            CloudError::Certificate(format!("the certificate request is not valid: {e}"))
        })?;
        let public = crypto::b64(csr.public_key.der_bytes());
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, device_id);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&crypto::random_bytes(16)));
        validity(&mut params, 20);
        let csr = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        };
        let cert = csr
            .signed_by(&self.issuer)
            .map_err(|e| CloudError::Certificate(format!("cannot issue the certificate: {e}")))?;
        Ok((cert.pem(), crypto::sha256_hex(cert.der()), public))
    }

    /// The HTTPS server's TLS config: the configured certificate or one the fleet CA issues for `tls.names`;
    /// client certificates are asked for, verified against the fleet CA, and optional (operators use tokens).
    pub fn server_config(&self, tls: &TlsConfig) -> Result<Arc<ServerConfig>> {
        let (chain, key) = match (&tls.cert, &tls.key) {
            (Some(c), Some(k)) => {
                let cert = files::read_limited(c, 1 << 20).map_err(io(c))?;
                let key = files::read_limited(k, 1 << 20).map_err(io(k))?;
                (
                    baetyl_agent::https::parse_certs(&cert, &c.display().to_string())
                        .map_err(|e| CloudError::Tls(e.to_string()))?,
                    baetyl_agent::https::parse_key(&key, &k.display().to_string())
                        .map_err(|e| CloudError::Tls(e.to_string()))?,
                )
            }
            _ => self.issue_server(&tls.names)?,
        };
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in baetyl_agent::https::parse_certs(self.ca_pem.as_bytes(), "the fleet CA")
            .map_err(|e| CloudError::Tls(e.to_string()))?
        {
            roots.add(c).map_err(|e| CloudError::Tls(e.to_string()))?;
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(|e| CloudError::Tls(e.to_string()))?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| CloudError::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| CloudError::Tls(e.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    fn issue_server(
        &self,
        names: &[String],
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        let key = KeyPair::generate().map_err(|e| CloudError::Keys(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(
            DnType::CommonName,
            names
                .first()
                .cloned()
                .unwrap_or_else(|| "baetyl cloud".into()),
        );
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => n.clone().try_into().map(SanType::DnsName).map_err(|e| {
                    CloudError::Config(format!(
                        "tls.names: `{n}` is not a host name or address: {e}"
                    ))
                }),
            })
            .collect::<Result<_>>()?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        validity(&mut params, 5);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| CloudError::Keys(e.to_string()))?;
        let key_der = PrivateKeyDer::try_from(key.serialize_der())
            .map_err(|e| CloudError::Keys(e.to_string()))?;
        Ok((vec![cert.der().clone()], key_der))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn keys_are_made_once_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let a = Pki::load_or_create(&data).unwrap();
        for f in ["ca.key", "signing.key"] {
            let mode = std::fs::metadata(data.join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
        let b = Pki::load_or_create(&data).unwrap();
        assert_eq!(a.ca_pem, b.ca_pem);
        assert_eq!(a.signing_public, b.signing_public);
        std::fs::remove_file(data.join("ca.crt")).unwrap();
        let err = Pki::load_or_create(&data).err().unwrap().to_string();
        assert!(err.contains("both exist"), "{err}");
    }

    #[test]
    fn device_certificates_take_only_the_key_from_the_request() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path()).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "admin");
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let (pem, sha, public) = pki.issue_device(&csr, "dev-1").unwrap();
        assert_eq!(sha.len(), 64);
        assert_eq!(public, crypto::b64(key.public_key_raw()));
        let (_, pem_block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        let cert = pem_block.parse_x509().unwrap();
        assert!(!cert.is_ca());
        assert!(cert.subject_alternative_name().unwrap().is_none());
        let cn: Vec<_> = cert
            .subject()
            .iter_common_name()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        assert_eq!(cn, ["dev-1"]);
        assert!(pki.issue_device("garbage", "dev-2").is_err());
        let mut tampered = csr.clone();
        tampered.replace_range(100..104, "AAAA");
        assert!(pki.issue_device(&tampered, "dev-2").is_err());
    }
}
