//! A small HTTPS and WebSocket client for the cloud's API: the agent (pinned fleet CA, client certificate) and
//! `baetyl ctl` (system roots or a given CA, bearer token) use it. One connection per request; the link is one
//! long-lived WebSocket.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::error::HttpsError;

/// Where the cloud is: parsed once from `https://host[:port][/base]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing `/` (empty for the root).
    pub base: String,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Self, HttpsError> {
        let bad = |why: &str| HttpsError::Url {
            url: url.to_string(),
            why: why.to_string(),
        };
        let rest = url
            .trim()
            .strip_prefix("https://")
            .ok_or_else(|| bad("only https:// is supported (the device link needs TLS)"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unclosed `[` in the host"))?;
            (h.to_string(), after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None => 443,
            Some(p) => p
                .parse()
                .map_err(|_| bad("the port is not a number from 1 to 65535"))?,
        };
        if port == 0 {
            return Err(bad("port 0"));
        }
        Ok(Endpoint {
            host,
            port,
            base: path.trim_end_matches('/').to_string(),
        })
    }

    /// `host:port` for connecting (IPv6 in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "https://{}{}", self.authority(), self.base)
    }
}

/// Parses every certificate of a PEM text.
pub fn parse_certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, HttpsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| HttpsError::Tls(format!("{what}: not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(HttpsError::Tls(format!("{what}: holds no PEM certificate")));
    }
    Ok(certs)
}

pub fn parse_key(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, HttpsError> {
    PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| HttpsError::Tls(format!("{what}: not a PEM private key: {e}")))
}

/// A TLS client config: trusting `ca_pem` only (the pinned fleet CA), or the system's roots when `None`;
/// presenting `identity` (certificate chain PEM, key PEM) when given.
pub fn client_config(
    ca_pem: Option<&[u8]>,
    identity: Option<(&[u8], &[u8])>,
) -> Result<Arc<ClientConfig>, HttpsError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for c in parse_certs(pem, "the cloud's CA")? {
                roots
                    .add(c)
                    .map_err(|e| HttpsError::Tls(format!("the cloud's CA: {e}")))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err(HttpsError::Tls(
                    "no system CA certificates found; pass the cloud's CA (--ca FILE)".into(),
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpsError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                parse_certs(cert, "the device certificate")?,
                parse_key(key, "the device key")?,
            )
            .map_err(|e| HttpsError::Tls(format!("the device certificate and key: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// A client of one cloud endpoint.
#[derive(Clone)]
pub struct Client {
    endpoint: Endpoint,
    tls: Arc<ClientConfig>,
    bearer: Option<String>,
    /// Connect + TLS handshake deadline; also the deadline for the response head.
    timeout: Duration,
}

pub type Tls = TlsStream<TcpStream>;

impl Client {
    pub fn new(endpoint: Endpoint, tls: Arc<ClientConfig>) -> Self {
        Client {
            endpoint,
            tls,
            bearer: None,
            timeout: Duration::from_secs(15),
        }
    }

    pub fn with_bearer(mut self, token: impl Into<String>) -> Self {
        self.bearer = Some(token.into());
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    async fn connect(&self) -> Result<Tls, HttpsError> {
        let address = self.endpoint.authority();
        let connect = async {
            let tcp = TcpStream::connect(&address)
                .await
                .map_err(|source| HttpsError::Connect {
                    address: address.clone(),
                    source,
                })?;
            let _ = tcp.set_nodelay(true);
            let name =
                ServerName::try_from(self.endpoint.host.clone()).map_err(|_| HttpsError::Url {
                    url: self.endpoint.to_string(),
                    why: "the host is not a valid DNS name or IP address".into(),
                })?;
            TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| HttpsError::Handshake {
                    address: address.clone(),
                    why: e.to_string(),
                })
        };
        tokio::time::timeout(self.timeout, connect)
            .await
            .map_err(|_| HttpsError::Timeout(format!("connecting to {address}")))?
    }

    /// Sends one request; the response body is left to the caller (it may be a stream).
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Response<Incoming>, HttpsError> {
        let tls = self.connect().await?;
        let uri = format!("{}{path}", self.endpoint.base);
        let mut req = Request::builder()
            .method(method)
            .uri(&uri)
            .header("host", self.endpoint.authority())
            .header("connection", "close");
        if let Some(t) = &self.bearer {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| HttpsError::Url {
                url: uri.clone(),
                why: e.to_string(),
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| HttpsError::Http(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        tokio::time::timeout(self.timeout, sender.send_request(req))
            .await
            .map_err(|_| HttpsError::Timeout(format!("{method} {uri}")))?
            .map_err(|e| HttpsError::Http(e.to_string()))
    }

    /// Sends a request and reads the whole answer (at most `limit` bytes); non-2xx is an error carrying the
    /// body's text.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
        limit: usize,
    ) -> Result<Vec<u8>, HttpsError> {
        let resp = self.send(method, path, headers, body).await?;
        let status = resp.status().as_u16();
        let bytes = read_body(resp.into_body(), limit).await?;
        if !(200..300).contains(&status) {
            return Err(HttpsError::Status {
                status,
                body: String::from_utf8_lossy(&bytes).trim().to_string(),
            });
        }
        Ok(bytes)
    }

    /// JSON in, JSON out.
    pub async fn json<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T, HttpsError> {
        let (headers, bytes): (&[(&str, &str)], Vec<u8>) = match body {
            Some(b) => (
                &[("content-type", "application/json")],
                serde_json::to_vec(b).unwrap_or_default(),
            ),
            None => (&[], Vec::new()),
        };
        let bytes = self.call(method, path, headers, bytes, 64 << 20).await?;
        let bytes = if bytes.is_empty() {
            b"null".to_vec()
        } else {
            bytes
        };
        serde_json::from_slice(&bytes).map_err(|e| HttpsError::Decode {
            path: path.to_string(),
            why: e.to_string(),
        })
    }

    /// Opens a WebSocket on `path`; frames are limited to `max_message` bytes.
    pub async fn websocket(
        &self,
        path: &str,
        max_message: usize,
    ) -> Result<WebSocketStream<Tls>, HttpsError> {
        let tls = self.connect().await?;
        let url = format!(
            "wss://{}{}{path}",
            self.endpoint.authority(),
            self.endpoint.base
        );
        let req = url
            .as_str()
            .into_client_request()
            .map_err(|e| HttpsError::Url {
                url: url.clone(),
                why: e.to_string(),
            })?;
        // Small buffers: the link is mostly idle; a device (or a load test) should not pay 256 KiB for it.
        let config = WebSocketConfig::default()
            .read_buffer_size(16 * 1024)
            .write_buffer_size(16 * 1024)
            .max_message_size(Some(max_message))
            .max_frame_size(Some(max_message));
        let handshake = tokio_tungstenite::client_async_with_config(req, tls, Some(config));
        let (ws, _) = tokio::time::timeout(self.timeout, handshake)
            .await
            .map_err(|_| HttpsError::Timeout(format!("WebSocket handshake with {url}")))?
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(resp) => HttpsError::Status {
                    status: resp.status().as_u16(),
                    body: resp
                        .body()
                        .as_ref()
                        .map(|b| String::from_utf8_lossy(b).trim().to_string())
                        .unwrap_or_default(),
                },
                other => HttpsError::Http(other.to_string()),
            })?;
        Ok(ws)
    }
}

/// Reads a whole body of at most `limit` bytes.
pub async fn read_body(body: Incoming, limit: usize) -> Result<Vec<u8>, HttpsError> {
    Limited::new(body, limit)
        .collect()
        .await
        .map(|c| c.to_bytes().to_vec())
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                HttpsError::TooLarge(limit as u64)
            } else {
                HttpsError::Http(e.to_string())
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        let e = Endpoint::parse("https://cloud.example:9443/fleet/").unwrap();
        assert_eq!(
            e,
            Endpoint {
                host: "cloud.example".into(),
                port: 9443,
                base: "/fleet".into()
            }
        );
        assert_eq!(e.to_string(), "https://cloud.example:9443/fleet");
        let v6 = Endpoint::parse("https://[::1]:8443").unwrap();
        assert_eq!(v6.host, "::1");
        assert_eq!(v6.authority(), "[::1]:8443");
        assert_eq!(Endpoint::parse("https://10.0.2.2").unwrap().port, 443);
        for bad in [
            "http://x:1",
            "https://",
            "https://:80",
            "https://x:port",
            "https://x:0",
            "https://[::1",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }
}
