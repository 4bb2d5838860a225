//! Test fixtures: a hub on free ports in a temp dir, the test kit's MQTT client with the standard principals,
//! and a raw MQTT socket for packets a well-behaved client library refuses to send.
#![allow(dead_code, unused_imports)]

use baetyl_sdk::config::ConfigFile;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use baetyl_hub::config::ListenKind;
use baetyl_hub::{HubConfig, RunningHub};
use rumqttc::{ConnAck, MqttOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use baetyl_testkit::mqtt::Client;
pub use baetyl_testkit::{free_listener, free_port};

pub const WAIT: Duration = Duration::from_secs(10);

/// Principals every test config has.
pub const PRINCIPALS: &str = "\
principals:
  - {username: admin, password: admin-pw, permissions: [{action: pub, permit: ['#']}, {action: sub, permit: ['#', '$SYS/#']}]}
  - {username: limited, password: limited-pw, permissions: [{action: pub, permit: ['t/a']}, {action: sub, permit: ['t/#']}]}
";

pub struct TestHub {
    pub hub: RunningHub,
    pub dir: tempfile::TempDir,
}

impl TestHub {
    pub fn addr(&self, kind: ListenKind) -> SocketAddr {
        self.hub.local_addr(kind).expect("listener of that kind")
    }
    pub fn tcp(&self) -> SocketAddr {
        self.addr(ListenKind::Tcp)
    }
}

/// Starts a hub whose config is `yaml` with `{dir}` replaced by a fresh temp dir.
pub async fn start_hub(yaml: &str) -> Result<TestHub> {
    let dir = tempfile::tempdir()?;
    let text = yaml.replace("{dir}", &dir.path().display().to_string());
    let path = dir.path().join("service.yml");
    std::fs::write(&path, &text)?;
    let cfg = HubConfig::load(&path)?;
    let hub = baetyl_hub::start(&cfg).await?;
    Ok(TestHub { hub, dir })
}

/// The standard test hub: one TCP listener, the standard principals, one routing rule, 1 KiB messages.
pub async fn standard_hub() -> Result<TestHub> {
    start_hub(&format!(
        "listen: [tcp://127.0.0.1:0]\n{PRINCIPALS}\
         subscriptions:\n  - {{source: {{topic: route/in, qos: 1}}, target: {{topic: route/out, qos: 1}}}}\n\
         message: {{length: {{max: 1k}}}}\n\
         storage: {{dir: '{{dir}}/data'}}\n"
    ))
    .await
}

pub fn options(id: &str, addr: SocketAddr, user: Option<(&str, &str)>) -> MqttOptions {
    let mut o = baetyl_testkit::mqtt::options_for(id, addr);
    if let Some((u, p)) = user {
        o.set_credentials(u, p);
    }
    o
}

/// Connects and waits for CONNACK. An error carries the refusal.
pub async fn connect(opts: MqttOptions) -> Result<(Client, ConnAck)> {
    let c = Client::connect(opts).await?;
    let ack = c.connack().clone();
    Ok((c, ack))
}

pub async fn connect_ok(id: &str, addr: SocketAddr, user: (&str, &str)) -> Result<Client> {
    Client::connect(options(id, addr, Some(user))).await
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// A raw MQTT 3.1.1 connection, for packets a client library refuses to build.
pub struct RawClient {
    pub stream: TcpStream,
}

impl RawClient {
    /// Connects with username/password and returns the CONNACK return code.
    pub async fn connect(
        addr: SocketAddr,
        id: &str,
        user: &str,
        pass: &str,
    ) -> Result<(RawClient, u8)> {
        Self::connect_keep_alive(addr, id, user, pass, 60).await
    }

    /// Connects with the given keep-alive (seconds).
    pub async fn connect_keep_alive(
        addr: SocketAddr,
        id: &str,
        user: &str,
        pass: &str,
        keep_alive: u16,
    ) -> Result<(RawClient, u8)> {
        let mut stream = TcpStream::connect(addr).await?;
        let mut body = Vec::new();
        put_str(&mut body, b"MQTT");
        body.extend_from_slice(&[4, 0xC2]);
        body.extend_from_slice(&keep_alive.to_be_bytes());
        put_str(&mut body, id.as_bytes());
        put_str(&mut body, user.as_bytes());
        put_str(&mut body, pass.as_bytes());
        stream.write_all(&packet(0x10, &body)).await?;
        let mut ack = [0u8; 4];
        tokio::time::timeout(WAIT, stream.read_exact(&mut ack))
            .await
            .context("no CONNACK")??;
        if ack[0] != 0x20 {
            bail!("expected CONNACK, got {ack:?}");
        }
        Ok((RawClient { stream }, ack[3]))
    }

    /// Sends a QoS 0 PUBLISH with arbitrary topic bytes.
    pub async fn publish_raw(&mut self, topic: &[u8], payload: &[u8]) -> Result<()> {
        let mut body = Vec::new();
        put_str(&mut body, topic);
        body.extend_from_slice(payload);
        self.stream.write_all(&packet(0x30, &body)).await?;
        Ok(())
    }

    /// Whether the hub closes the connection within `wait` (reads until EOF or error).
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        let mut buf = [0u8; 256];
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.stream.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
            }
        }
    }
}

pub fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Runs a test body on its own runtime and abandons the runtime's leftovers afterwards: the engine's sled
/// stores keep blocking tasks alive, so a plain runtime drop (as `#[tokio::test]` does) would wait forever.
pub fn block_on<F: std::future::Future<Output = Result<()>>>(f: F) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // A failed assertion must not leave the runtime to a drop that never returns.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(f)));
    rt.shutdown_background();
    match result {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
