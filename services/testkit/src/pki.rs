//! A test PKI made with rcgen: a CA, a server certificate for `localhost` and `127.0.0.1`, and client
//! certificates, all written as PEM files into a directory.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};

/// A certificate and its key, as files and as PEM text.
#[derive(Clone, Debug)]
pub struct Cert {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Cert {
    /// (certificate, key) PEM bytes, as rumqttc's `TlsConfiguration::Simple::client_auth` takes them.
    pub fn pem_pair(&self) -> (Vec<u8>, Vec<u8>) {
        (
            self.cert_pem.clone().into_bytes(),
            self.key_pem.clone().into_bytes(),
        )
    }
}

/// A CA (`ca.pem`) and a server certificate for localhost/127.0.0.1 (`server.pem`, `server.key`) in `dir`;
/// [`Pki::client`] issues client certificates.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub ca_pem: String,
    pub server: Cert,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    /// Makes the CA (common name `name`) and the server certificate, writing them into `dir` (created).
    pub fn new(dir: &Path, name: &str) -> Result<Pki> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        let ca_pem = issuer.pem();
        let ca = dir.join("ca.pem");
        write(&ca, &ca_pem)?;
        let mut pki = Pki {
            dir: dir.to_path_buf(),
            ca,
            ca_pem,
            server: Cert {
                cert: PathBuf::new(),
                key: PathBuf::new(),
                cert_pem: String::new(),
                key_pem: String::new(),
            },
            issuer,
        };
        pki.server = pki.issue(
            "server",
            "server",
            vec!["127.0.0.1".to_string(), "localhost".to_string()],
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        Ok(pki)
    }

    /// A client certificate with common name `cn`, signed by this CA, written as `<cn>.pem` and `<cn>.key`.
    pub fn client(&self, cn: &str) -> Result<Cert> {
        self.issue(cn, cn, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// rumqttc's TLS settings that trust this CA, with an optional client certificate.
    pub fn mqtt_tls(&self, client: Option<&Cert>) -> rumqttc::TlsConfiguration {
        rumqttc::TlsConfiguration::Simple {
            ca: self.ca_pem.clone().into_bytes(),
            alpn: None,
            client_auth: client.map(Cert::pem_pair),
        }
    }

    fn issue(
        &self,
        file: &str,
        cn: &str,
        names: Vec<String>,
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<Cert> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer)?;
        let out = Cert {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}.key")),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        write(&out.cert, &out.cert_pem)?;
        write(&out.key, &out.key_pem)?;
        Ok(out)
    }
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_ca_server_and_client_files() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let pki = Pki::new(dir.path(), "test ca")?;
        let dev = pki.client("dev")?;
        for p in [
            &pki.ca,
            &pki.server.cert,
            &pki.server.key,
            &dev.cert,
            &dev.key,
        ] {
            assert!(
                std::fs::read_to_string(p)?.starts_with("-----BEGIN"),
                "{}",
                p.display()
            );
        }
        assert_eq!(dev.cert, dir.path().join("dev.pem"));
        Ok(())
    }
}
