//! A small client for the master's REST API (HTTP/1.1 over a unix socket or TCP).
//!
//! One connection per call: calls are rare (control plane), and a fresh connection never sees a stale socket
//! after a master restart.

use std::collections::BTreeMap;
use std::path::PathBuf;

use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::env;
use crate::error::ClientError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Unix(PathBuf),
    Tcp(String),
}

impl Address {
    /// Parses `unix:///path`, `unix://relative/path` or `tcp://host:port`.
    pub fn parse(s: &str) -> Result<Self, ClientError> {
        if let Some(p) = s.strip_prefix("unix://") {
            if p.is_empty() {
                return Err(ClientError::Address(s.to_string()));
            }
            Ok(Address::Unix(PathBuf::from(p)))
        } else if let Some(h) = s.strip_prefix("tcp://") {
            if !h.contains(':') {
                return Err(ClientError::Address(s.to_string()));
            }
            Ok(Address::Tcp(h.to_string()))
        } else {
            Err(ClientError::Address(s.to_string()))
        }
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "unix://{}", p.display()),
            Address::Tcp(h) => write!(f, "tcp://{h}"),
        }
    }
}

/// A client of the master API, optionally carrying a service's credentials.
#[derive(Debug, Clone)]
pub struct MasterClient {
    address: Address,
    credentials: Option<(String, String)>,
}

impl MasterClient {
    pub fn new(address: Address) -> Self {
        MasterClient {
            address,
            credentials: None,
        }
    }

    pub fn with_credentials(
        mut self,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.credentials = Some((username.into(), password.into()));
        self
    }

    /// The client a service started by the master uses: address, name and token from the environment.
    pub fn from_env() -> Result<Self, ClientError> {
        let address = std::env::var(env::MASTER_API_ADDRESS)
            .map_err(|_| ClientError::MissingEnv(env::MASTER_API_ADDRESS))?;
        let client = MasterClient::new(Address::parse(&address)?);
        match (
            std::env::var(env::SERVICE_NAME),
            std::env::var(env::SERVICE_TOKEN),
        ) {
            (Ok(name), Ok(token)) => Ok(client.with_credentials(name, token)),
            _ => Ok(client),
        }
    }

    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Sends one request; answers the status and body. Non-2xx answers are not errors here.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let http_err = |source| ClientError::Http {
            method: method.to_string(),
            path: path.to_string(),
            source,
        };
        let connect_err = |source| ClientError::Connect {
            address: self.address.to_string(),
            source,
        };
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "baetyl")
            .header("content-type", "application/json");
        if let Some((user, pass)) = &self.credentials {
            req = req
                .header(env::HEADER_USERNAME, user)
                .header(env::HEADER_PASSWORD, pass);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Address(format!("{path}: {e}")))?;
        let resp = match &self.address {
            Address::Unix(p) => {
                let stream = tokio::net::UnixStream::connect(p)
                    .await
                    .map_err(connect_err)?;
                send(TokioIo::new(stream), req).await.map_err(http_err)?
            }
            Address::Tcp(h) => {
                let stream = tokio::net::TcpStream::connect(h)
                    .await
                    .map_err(connect_err)?;
                send(TokioIo::new(stream), req).await.map_err(http_err)?
            }
        };
        Ok(resp)
    }

    async fn call_ok(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, ClientError> {
        let (status, bytes) = self.call(method, path, body).await?;
        if !(200..300).contains(&status) {
            return Err(ClientError::Status {
                method: method.to_string(),
                path: path.to_string(),
                status,
                body: String::from_utf8_lossy(&bytes).trim().to_string(),
            });
        }
        Ok(bytes)
    }

    async fn call_json<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
    ) -> Result<T, ClientError> {
        let bytes = self.call_ok(method, path, None).await?;
        serde_json::from_slice(&bytes).map_err(|source| ClientError::Decode {
            path: path.to_string(),
            source,
        })
    }

    /// `GET /v1/system/inspect`.
    pub async fn inspect(&self) -> Result<Value, ClientError> {
        self.call_json("GET", "/v1/system/inspect").await
    }

    /// `PUT /v1/system/update`: asks for an application update from `path` (a file or a directory holding
    /// `application.yml`). The update runs in the background; follow it in inspect and the OTA log.
    pub async fn update_app(&self, path: &str, trace: &str) -> Result<(), ClientError> {
        let body = serde_json::json!({"type": "APP", "path": path, "trace": trace});
        self.call_ok(
            "PUT",
            "/v1/system/update",
            Some(body.to_string().into_bytes()),
        )
        .await?;
        Ok(())
    }

    /// `GET /v1/system/update/{trace}` (agent or operator): the OTA log's records of one update, oldest first.
    pub async fn update_records(&self, trace: &str) -> Result<Vec<Value>, ClientError> {
        let path = format!("/v1/system/update/{}", path_segment(trace));
        let v: Value = self.call_json("GET", &path).await?;
        Ok(v["records"].as_array().cloned().unwrap_or_default())
    }

    /// `GET /v1/system/application` (agent or operator): the running application's text; None before one
    /// is installed.
    pub async fn application(&self) -> Result<Option<String>, ClientError> {
        let path = "/v1/system/application";
        let (status, bytes) = self.call("GET", path, None).await?;
        match status {
            404 => Ok(None),
            200..300 => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
            _ => Err(ClientError::Status {
                method: "GET".into(),
                path: path.into(),
                status,
                body: String::from_utf8_lossy(&bytes).trim().to_string(),
            }),
        }
    }

    /// `GET /v1/ports/available`.
    pub async fn available_port(&self) -> Result<u16, ClientError> {
        let v: Value = self.call_json("GET", "/v1/ports/available").await?;
        let port = v.get("port").and_then(|p| {
            p.as_str()
                .map(str::to_string)
                .or_else(|| p.as_u64().map(|n| n.to_string()))
        });
        port.and_then(|p| p.parse().ok())
            .ok_or_else(|| ClientError::Status {
                method: "GET".into(),
                path: "/v1/ports/available".into(),
                status: 200,
                body: v.to_string(),
            })
    }

    /// `PUT /v1/services/{svc}/instances/{inst}/start` with extra environment for the instance.
    pub async fn start_instance(
        &self,
        service: &str,
        instance: &str,
        env: &BTreeMap<String, String>,
    ) -> Result<(), ClientError> {
        let path = format!("/v1/services/{service}/instances/{instance}/start");
        let body = serde_json::to_vec(env).unwrap_or_default();
        self.call_ok("PUT", &path, Some(body)).await?;
        Ok(())
    }

    /// `PUT /v1/services/{svc}/instances/{inst}/stop`.
    pub async fn stop_instance(&self, service: &str, instance: &str) -> Result<(), ClientError> {
        let path = format!("/v1/services/{service}/instances/{instance}/stop");
        self.call_ok("PUT", &path, None).await?;
        Ok(())
    }

    /// `PUT /v1/services/{svc}/instances/{inst}/report`: merges `stats` into the instance's inspect entry.
    pub async fn report(
        &self,
        service: &str,
        instance: &str,
        stats: &Value,
    ) -> Result<(), ClientError> {
        let path = format!("/v1/services/{service}/instances/{instance}/report");
        self.call_ok("PUT", &path, Some(stats.to_string().into_bytes()))
            .await?;
        Ok(())
    }
}

/// When this process was started by a master (`BAETYL_SERVICE_NAME` set), reports `stats().await` to it every
/// `every` (at least 1 s) until `shutdown` completes, so the figures show in inspect. A run of failures is
/// logged once. Without a master it returns at once.
pub async fn report_periodically<F, Fut>(
    every: std::time::Duration,
    stats: F,
    shutdown: impl std::future::Future<Output = ()>,
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Value>,
{
    let Ok(service) = std::env::var(env::SERVICE_NAME) else {
        return;
    };
    let instance = std::env::var(env::SERVICE_INSTANCE_NAME).unwrap_or_else(|_| service.clone());
    let client = match MasterClient::from_env() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("stats will not be reported: {e}");
            return;
        }
    };
    let mut tick = tokio::time::interval(every.max(std::time::Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tokio::pin!(shutdown);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut shutdown => return,
        }
        match client.report(&service, &instance, &stats().await).await {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                tracing::warn!("cannot report stats to the master: {e}");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

async fn send<I>(io: I, req: Request<Full<Bytes>>) -> Result<(u16, Vec<u8>), hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    let driver = tokio::spawn(conn);
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes().to_vec();
    driver.abort();
    Ok((status, body))
}

/// `s` as one URL path segment (or query value): unreserved characters as they are, every other byte
/// percent-encoded.
pub fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(path_segment("r5-aB_9.~"), "r5-aB_9.~");
        assert_eq!(path_segment("a/b c%"), "a%2Fb%20c%25");
    }

    #[test]
    fn addresses_parse() {
        assert_eq!(
            Address::parse("unix:///run/baetyl/baetyl.sock").unwrap(),
            Address::Unix("/run/baetyl/baetyl.sock".into())
        );
        assert_eq!(
            Address::parse("tcp://127.0.0.1:50050").unwrap(),
            Address::Tcp("127.0.0.1:50050".into())
        );
        assert!(Address::parse("http://x").is_err());
        assert!(Address::parse("tcp://nohost").is_err());
        assert!(Address::parse("unix://").is_err());
    }
}
