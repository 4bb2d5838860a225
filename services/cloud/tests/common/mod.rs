//! Helpers of the cloud's tests: a cloud in-process on a free port and a device that speaks the link protocol.
#![allow(dead_code)]
// Test set-up: a failure here is the test's failure, reported with its location.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use baetyl_agent::config::AgentConfig;
use baetyl_agent::crypto::PublicKey;
use baetyl_agent::https::{Client, Endpoint, Tls, client_config};
use baetyl_agent::identity::Identity;
use baetyl_agent::proto::{Down, Up};
use baetyl_cloud::CloudConfig;
use baetyl_sdk::config::ConfigFile;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

pub use baetyl_cloud::testing::Postgres;
pub use baetyl_testkit::{eventually_async as eventually, free_listener};

/// A cloud running in this process.
pub struct Cloud {
    pub url: String,
    pub data_dir: PathBuf,
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<Result<(), baetyl_cloud::CloudError>>,
}

impl Cloud {
    pub async fn start(data_dir: &Path, database: Option<String>) -> Cloud {
        Self::start_on(data_dir, database, free_listener()).await
    }

    pub async fn start_on(
        data_dir: &Path,
        database: Option<String>,
        listener: std::net::TcpListener,
    ) -> Cloud {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let cfg = CloudConfig {
            data_dir: data_dir.to_path_buf(),
            database,
            listen: format!("127.0.0.1:{port}").parse().unwrap(),
            ..CloudConfig::default()
        };
        cfg.validate(Path::new("test")).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(baetyl_cloud::run(cfg, listener, async move {
            let _ = rx.await;
        }));
        let cloud = Cloud {
            url: format!("https://127.0.0.1:{port}"),
            data_dir: data_dir.to_path_buf(),
            stop: Some(tx),
            task,
        };
        eventually(
            Duration::from_secs(30),
            "the cloud to answer /healthz",
            || async {
                let ca = std::fs::read(cloud.data_dir.join("ca.crt")).ok()?;
                let c = Client::new(
                    Endpoint::parse(&cloud.url).unwrap(),
                    client_config(Some(&ca), None).ok()?,
                );
                c.call("GET", "/healthz", &[], vec![], 100).await.ok()
            },
        )
        .await;
        cloud
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let r = tokio::time::timeout(Duration::from_secs(15), &mut self.task).await;
        assert!(r.is_ok(), "the cloud did not stop within 15 s");
    }

    pub fn ca(&self) -> Vec<u8> {
        std::fs::read(self.data_dir.join("ca.crt")).unwrap()
    }

    pub fn signing_key(&self) -> PublicKey {
        PublicKey::parse(&std::fs::read_to_string(self.data_dir.join("signing.pub")).unwrap())
            .unwrap()
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin.token"))
            .unwrap()
            .trim()
            .to_string()
    }

    pub fn provisioning_key(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("provisioning.key"))
            .unwrap()
            .trim()
            .to_string()
    }

    pub fn client(&self, token: Option<&str>) -> Client {
        let c = Client::new(
            Endpoint::parse(&self.url).unwrap(),
            client_config(Some(&self.ca()), None).unwrap(),
        );
        match token {
            Some(t) => c.with_bearer(t),
            None => c,
        }
    }

    pub fn admin(&self) -> Client {
        self.client(Some(&self.admin_token()))
    }
}

/// An answer's status (0 when the request did not get one) and JSON body.
pub async fn call(c: &Client, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let (headers, bytes): (&[(&str, &str)], Vec<u8>) = match &body {
        Some(b) => (
            &[("content-type", "application/json")],
            serde_json::to_vec(b).unwrap(),
        ),
        None => (&[], vec![]),
    };
    match c.send(method, path, headers, bytes).await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let bytes = baetyl_agent::https::read_body(resp.into_body(), 64 << 20)
                .await
                .unwrap_or_default();
            (
                status,
                serde_json::from_slice(&bytes)
                    .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into())),
            )
        }
        Err(e) => panic!("{method} {path}: {e}"),
    }
}

/// Uploads an application directory the way `baetyl ctl apps push` does; answers the API's reply.
pub async fn push(c: &Client, dir: &Path, name: &str) -> (u16, Value) {
    let bundle = baetyl_cloud::ctl::read_app_dir(dir).unwrap();
    for (sha, data) in &bundle.blobs {
        c.call(
            "PUT",
            &format!("/api/v1/blobs/{sha}"),
            &[],
            data.clone(),
            1 << 20,
        )
        .await
        .unwrap();
    }
    call(
        c,
        "POST",
        &format!("/api/v1/apps/{name}/versions"),
        Some(json!({"application": bundle.application, "volumes": bundle.volumes})),
    )
    .await
}

/// Writes an application directory: application.yml and files (path relative to the dir, content).
pub fn app_dir(root: &Path, name: &str, application: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("application.yml"), application).unwrap();
    for (p, content) in files {
        let path = dir.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    dir
}

/// An agent config for `cloud` with a state dir under `root`.
pub fn agent_config(
    cloud: &Cloud,
    root: &Path,
    name: Option<&str>,
    token: Option<&str>,
) -> AgentConfig {
    std::fs::create_dir_all(root).unwrap();
    let ca = root.join("ca.crt");
    std::fs::write(&ca, cloud.ca()).unwrap();
    let cred = match token {
        Some(t) => {
            std::fs::write(root.join("device.token"), t).unwrap();
            format!("token_file: {}", root.join("device.token").display())
        }
        None => {
            std::fs::write(root.join("provisioning.key"), cloud.provisioning_key()).unwrap();
            format!("key_file: {}", root.join("provisioning.key").display())
        }
    };
    let name = name.map(|n| format!(", name: {n}")).unwrap_or_default();
    let text = format!(
        "cloud: {{url: '{}', ca: '{}', signing_key: '{}'}}\nprovisioning: {{{cred}{name}}}\nstate_dir: '{}'\n",
        cloud.url,
        ca.display(),
        cloud.signing_key(),
        root.join("state").display()
    );
    AgentConfig::parse(&text, Path::new("agent.yml")).unwrap()
}

/// A device speaking the link protocol directly (no master): registration and a link.
pub struct FakeDevice {
    pub identity: Identity,
    pub client: Client,
}

impl FakeDevice {
    pub async fn register(cloud: &Cloud, root: &Path, name: &str) -> FakeDevice {
        let cfg = agent_config(cloud, root, Some(name), None);
        let identity = baetyl_agent::identity::register(&cfg, &cloud.ca())
            .await
            .unwrap();
        Self::from_identity(cloud, identity)
    }

    pub fn from_identity(cloud: &Cloud, identity: Identity) -> FakeDevice {
        let tls = client_config(
            Some(&cloud.ca()),
            Some((identity.cert_pem.as_bytes(), identity.key_pem.as_bytes())),
        )
        .unwrap();
        FakeDevice {
            client: Client::new(Endpoint::parse(&cloud.url).unwrap(), tls),
            identity,
        }
    }

    /// The same device, reaching another cloud process.
    pub fn via(&self, cloud: &Cloud) -> FakeDevice {
        Self::from_identity(cloud, self.identity.clone())
    }

    pub async fn link(&self) -> Link {
        let ws = self
            .client
            .websocket(baetyl_agent::proto::LINK_PATH, 16 << 20)
            .await
            .unwrap();
        let mut link = Link { ws };
        match link.next().await {
            Some(Down::Welcome { device, .. }) => assert_eq!(device, self.identity.device),
            other => panic!("expected a welcome, got {other:?}"),
        }
        link.send(&Up::Hello {
            agent_version: "test".into(),
            applied_revision: 0,
        })
        .await;
        link
    }
}

pub struct Link {
    pub ws: WebSocketStream<Tls>,
}

impl Link {
    /// The next message from the cloud (None when the link closed), within 10 s.
    pub async fn next(&mut self) -> Option<Down> {
        self.next_within(Duration::from_secs(10)).await
    }

    pub async fn next_within(&mut self, d: Duration) -> Option<Down> {
        let end = tokio::time::Instant::now() + d;
        loop {
            let msg = tokio::time::timeout_at(end, self.ws.next()).await.ok()??;
            match msg {
                Ok(Message::Text(t)) => return Some(serde_json::from_str(t.as_str()).unwrap()),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    pub async fn send(&mut self, up: &Up) {
        self.ws
            .send(Message::text(serde_json::to_string(up).unwrap()))
            .await
            .unwrap();
    }
}
