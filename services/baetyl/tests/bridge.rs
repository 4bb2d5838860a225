//! End-to-end test of the remote bridge between two of our own hubs: the local hub and the bridge run as
//! services of a real master; the "remote" is a second `baetyl hub` process that the test stops and restarts.

mod common;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

const LONG: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

fn hub_config(port: u16, data: &std::path::Path) -> String {
    format!(
        "listen: [tcp://127.0.0.1:{port}]\nprincipals:\n  - {{username: edge, password: edge-password, permissions: [{{action: pub, permit: ['#']}}, {{action: sub, permit: ['#']}}]}}\nstorage: {{dir: {}}}\n",
        data.display()
    )
}

/// The remote hub: a standalone `baetyl hub` process.
struct RemoteHub {
    child: Child,
}

impl RemoteHub {
    fn start(w: &Work, port: u16) -> RemoteHub {
        let conf = w.write(
            "remote-hub.yml",
            &hub_config(port, &w.path().join("remote-data")),
        );
        let child = Command::new(BIN)
            .args(["hub", "-c"])
            .arg(conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("baetyl hub");
        wait_until("the remote hub", LONG, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        RemoteHub { child }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RemoteHub {
    fn drop(&mut self) {
        self.kill();
    }
}

type Got = Arc<Mutex<Vec<(String, String)>>>;

/// A client with a persistent session that records what arrives on `topic`.
async fn client(port: u16, id: &str, topic: &str) -> (AsyncClient, Got) {
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30))
        .set_credentials("edge", "edge-password")
        .set_clean_session(false);
    let (c, mut el) = AsyncClient::new(opts, 1000);
    let got: Got = Arc::new(Mutex::new(Vec::new()));
    let (g, c2, t) = (got.clone(), c.clone(), topic.to_string());
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut tx = Some(tx);
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = c2.subscribe(t.clone(), QoS::AtLeastOnce).await;
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => g.lock().expect("lock").push((
                    p.topic.clone(),
                    String::from_utf8_lossy(&p.payload).to_string(),
                )),
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    tokio::time::timeout(LONG, rx)
        .await
        .expect("suback")
        .expect("suback");
    (c, got)
}

async fn wait_count(got: &Got, n: usize, what: &str) {
    let deadline = Instant::now() + LONG;
    while got.lock().expect("lock").len() < n {
        assert!(
            Instant::now() < deadline,
            "{what}: {} of {n} arrived",
            got.lock().expect("lock").len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_between_two_hubs_buffers_while_the_remote_is_down() {
    let w = Work::new();
    let (local, remote) = (free_port(), free_port());
    w.write(
        "etc/hub/service.yml",
        &hub_config(local, std::path::Path::new("var/db/baetyl/data")),
    );
    w.write(
        "etc/remote/service.yml",
        &format!(
            r#"
hub: {{address: "tcp://127.0.0.1:{local}", clientid: bridge, username: edge, password: edge-password}}
remotes:
  - {{name: cloud, address: "tcp://127.0.0.1:{remote}", clientid: edge-1, username: edge, password: edge-password}}
rules:
  - hub: {{subscriptions: [{{topic: "up/#", qos: 1}}], rewrite: {{strip_prefix: up/, add_prefix: edge-1/}}}}
    remote: {{name: cloud, subscriptions: [{{topic: "down/#", qos: 1}}], rewrite: {{add_prefix: cloud/}}}}
buffer: {{dir: var/db/baetyl/remote}}
"#
        ),
    );
    w.app(
        r#"
services:
  hub:
    image: baetyl-hub
    volumes: ["./etc/hub:/etc/baetyl", "./hubdata:/var/db/baetyl/data"]
  remote:
    image: baetyl-remote-mqtt
    depends_on: [hub]
    volumes: ["./etc/remote:/etc/baetyl", "./bridgedata:/var/db/baetyl/remote"]
"#,
    );
    let mut cloud = RemoteHub::start(&w, remote);
    let m = w.start_master();
    wait_until("the local hub", LONG, || {
        std::net::TcpStream::connect(("127.0.0.1", local)).is_ok()
    });
    let (edge_pub, edge_got) = client(local, "device", "cloud/#").await;
    let (cloud_pub, cloud_got) = client(remote, "backend", "edge-1/#").await;
    // Wait for the bridge's subscriptions on both sides: a probe each way.
    let deadline = Instant::now() + LONG;
    while cloud_got.lock().expect("lock").is_empty() {
        assert!(
            Instant::now() < deadline,
            "the bridge never carried up/probe\n{}",
            m.log_text()
        );
        edge_pub
            .publish("up/probe", QoS::AtLeastOnce, false, "probe")
            .await
            .expect("publish");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    cloud_got.lock().expect("lock").clear();

    // Both directions with rewrite.
    for i in 0..20 {
        edge_pub
            .publish(
                format!("up/t/{i}"),
                QoS::AtLeastOnce,
                false,
                format!("u{i}"),
            )
            .await
            .expect("publish");
        cloud_pub
            .publish(
                format!("down/c/{i}"),
                QoS::AtLeastOnce,
                false,
                format!("d{i}"),
            )
            .await
            .expect("publish");
    }
    wait_count(&cloud_got, 20, "hub -> remote").await;
    wait_count(&edge_got, 20, "remote -> hub").await;
    let up: Vec<(String, String)> = cloud_got.lock().expect("lock").drain(..).collect();
    assert_eq!(up[0], ("edge-1/t/0".to_string(), "u0".to_string()));
    assert_eq!(
        up.iter().map(|(_, p)| p.clone()).collect::<Vec<_>>(),
        (0..20).map(|i| format!("u{i}")).collect::<Vec<_>>()
    );
    let down: BTreeSet<String> = edge_got
        .lock()
        .expect("lock")
        .iter()
        .map(|(t, _)| t.clone())
        .collect();
    assert!(
        down.contains("cloud/down/c/0") && down.contains("cloud/down/c/19"),
        "{down:?}"
    );

    // The remote goes away; what the edge publishes meanwhile is kept on disk and delivered in order.
    cloud.kill();
    for i in 0..100 {
        edge_pub
            .publish("up/offline", QoS::AtLeastOnce, false, format!("o{i}"))
            .await
            .expect("publish");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    cloud = RemoteHub::start(&w, remote);
    // The backend's persistent session comes back with the remote hub's storage.
    let (_cloud_pub2, cloud_got2) = client(remote, "backend", "edge-1/#").await;
    let deadline = Instant::now() + LONG;
    loop {
        let seen: Vec<String> = cloud_got2
            .lock()
            .expect("lock")
            .iter()
            .map(|(_, p)| p.clone())
            .filter(|p| p.starts_with('o'))
            .collect();
        let unique: Vec<String> = seen.iter().fold(Vec::new(), |mut acc, p| {
            if !acc.contains(p) {
                acc.push(p.clone());
            }
            acc
        });
        if unique.len() == 100 {
            assert_eq!(
                unique,
                (0..100).map(|i| format!("o{i}")).collect::<Vec<_>>(),
                "buffered messages arrive in order"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of 100 buffered messages arrived\n{}",
            unique.len(),
            m.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(cloud);
}
