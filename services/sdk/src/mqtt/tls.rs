//! The TLS side of an MQTT client connection: which servers to trust, what certificate to present, built into
//! one rustls `ClientConfig` when the service starts; and [`ServerTls`], the same files on a server's side.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Which servers a client trusts and how it proves who it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// CA certificate(s) (PEM) the server must chain to; the system's roots when absent.
    pub ca: Option<PathBuf>,
    /// Client certificate chain (PEM) for two-way TLS, with `key`.
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key: Option<PathBuf>,
    /// Accept any server certificate for any name (v1's `insecureSkipVerify`): for a test bench only, since
    /// anyone on the path can then read and change the traffic.
    pub insecure_skip_verify: bool,
}

/// TLS material that could not be used. Every message names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} file {}: {source}", file.display())]
    Read {
        what: &'static str,
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} file {}: {source}", file.display())]
    Pem {
        what: &'static str,
        file: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{what} file {} holds no PEM certificate", file.display())]
    NoCertificate { what: &'static str, file: PathBuf },
    #[error("ca file {}: {source}", file.display())]
    BadCa {
        file: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("no `ca` given and no system root certificates found; set `ca`")]
    NoSystemRoots,
    #[error("`cert` and `key` go together (two-way TLS needs both)")]
    HalfClientCert,
    #[error("TLS setup: {0}")]
    Rustls(#[source] rustls::Error),
    #[error("ca file {}: {source}", file.display())]
    ClientVerifier {
        file: PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
}

/// A server's TLS (v1's `ca`, `cert`, `key` of a server section): its certificate chain and key, and when
/// `ca` is set, client certificates chaining to it are required (two-way TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: Option<PathBuf>,
}

impl ServerTls {
    /// A rustls server config on the workspace's provider, offering `alpn` (e.g. `h2` for gRPC).
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<rustls::ServerConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Rustls)?;
        let builder = match &self.ca {
            Some(ca) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(ca_roots(ca)?),
                    provider,
                )
                .build()
                .map_err(|source| TlsError::ClientVerifier {
                    file: ca.clone(),
                    source,
                })?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(certificates("cert", &self.cert)?, private_key(&self.key)?)
            .map_err(TlsError::Rustls)?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }
}

impl ClientTls {
    /// What can be checked without reading files.
    pub fn check(&self) -> Result<(), TlsError> {
        if self.cert.is_some() != self.key.is_some() {
            return Err(TlsError::HalfClientCert);
        }
        Ok(())
    }

    /// A rustls client config on the aws-lc-rs provider (the one the whole workspace uses), built here rather
    /// than by rumqttc so that it never depends on a process-wide default provider.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        self.check()?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Rustls)?;
        let builder = if self.insecure_skip_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(SkipVerification(provider)))
        } else {
            builder.with_root_certificates(self.roots()?)
        };
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(certificates("cert", cert)?, private_key(key)?)
                .map_err(TlsError::Rustls),
            _ => Ok(builder.with_no_client_auth()),
        }
    }

    fn roots(&self) -> Result<rustls::RootCertStore, TlsError> {
        match &self.ca {
            Some(ca) => ca_roots(ca),
            None => {
                let mut roots = rustls::RootCertStore::empty();
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    return Err(TlsError::NoSystemRoots);
                }
                Ok(roots)
            }
        }
    }
}

/// The certificates of a CA file as trust roots.
fn ca_roots(ca: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates("ca", ca)? {
        roots.add(cert).map_err(|source| TlsError::BadCa {
            file: ca.to_path_buf(),
            source,
        })?;
    }
    Ok(roots)
}

/// The private key of a PEM file.
fn private_key(key: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(&read("key", key)?).map_err(|source| TlsError::Pem {
        what: "key",
        file: key.to_path_buf(),
        source,
    })
}

fn read(what: &'static str, file: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(file).map_err(|source| TlsError::Read {
        what,
        file: file.to_path_buf(),
        source,
    })
}

/// Every certificate of a PEM file; at least one.
fn certificates(what: &'static str, file: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, file)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            what,
            file: file.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            file: file.to_path_buf(),
        });
    }
    Ok(certs)
}

/// `insecure_skip_verify`: any certificate for any name is accepted; the handshake's signatures are still
/// checked, so the session is encrypted, just not authenticated.
#[derive(Debug)]
struct SkipVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for SkipVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
