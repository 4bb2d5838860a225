//! End-to-end test of the remote bridge between two of our own hubs: the local hub and the bridge run as
//! services of a real master; the "remote" is a second `baetyl hub` process that the test stops and restarts.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use baetyl_e2e::*;
use baetyl_testkit::mqtt::{Client, MessageExt, options};
use baetyl_testkit::net::{localhost, wait_accepting};
use baetyl_testkit::process::Process;
use baetyl_testkit::{eventually_async, free_port};
use rumqttc::QoS;

const LONG: Duration = Duration::from_secs(60);

fn hub_config(port: u16, data: &std::path::Path) -> String {
    format!(
        "listen: [tcp://127.0.0.1:{port}]\nprincipals:\n  - {{username: edge, password: edge-password, permissions: [{{action: pub, permit: ['#']}}, {{action: sub, permit: ['#']}}]}}\nstorage: {{dir: {}}}\n",
        data.display()
    )
}

/// The remote hub: a standalone `baetyl hub` process (killed when dropped).
fn remote_hub(w: &Work, port: u16) -> Process {
    let conf = w.write(
        "remote-hub.yml",
        &hub_config(port, &w.path().join("remote-data")),
    );
    let mut cmd = Command::new(baetyl_bin());
    cmd.args(["hub", "-c"])
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let hub = Process::spawn(&mut cmd, "the remote hub").expect("baetyl hub");
    wait_accepting(localhost(port), LONG);
    hub
}

/// A client with a persistent session, subscribed to `topic`.
async fn client(port: u16, id: &str, topic: &str) -> Client {
    let mut o = options(id, port);
    o.set_credentials("edge", "edge-password")
        .set_clean_session(false);
    let mut c = Client::connect(o).await.expect("connect");
    c.subscribe(topic, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    c
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
report_interval: 200ms
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
    let mut cloud = remote_hub(&w, remote);
    let m = w.start_master();
    wait_accepting(localhost(local), LONG);
    let mut edge = client(local, "device", "cloud/#").await;
    let mut backend = client(remote, "backend", "edge-1/#").await;
    // Wait for the bridge's subscriptions on both sides: a probe each way.
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bridge never carried up/probe\n{}",
            m.log_text()
        );
        edge.publish("up/probe", QoS::AtLeastOnce, false, "probe")
            .await
            .expect("publish");
        if !backend.drain(Duration::from_millis(300)).await.is_empty() {
            break;
        }
    }

    // Both directions with rewrite.
    for i in 0..20 {
        edge.publish(
            &format!("up/t/{i}"),
            QoS::AtLeastOnce,
            false,
            format!("u{i}"),
        )
        .await
        .expect("publish");
        backend
            .publish(
                &format!("down/c/{i}"),
                QoS::AtLeastOnce,
                false,
                format!("d{i}"),
            )
            .await
            .expect("publish");
    }
    let up = backend.recv_n(20, LONG).await.expect("hub -> remote");
    let down = edge.recv_n(20, LONG).await.expect("remote -> hub");
    assert_eq!(
        (up[0].topic.as_str(), up[0].text()),
        ("edge-1/t/0", "u0".to_string())
    );
    assert_eq!(
        baetyl_testkit::mqtt::texts(&up),
        (0..20).map(|i| format!("u{i}")).collect::<Vec<_>>()
    );
    let down: BTreeSet<String> = down.iter().map(|p| p.topic.clone()).collect();
    assert!(
        down.contains("cloud/down/c/0") && down.contains("cloud/down/c/19"),
        "{down:?}"
    );

    // The remote goes away; what the edge publishes meanwhile is kept on disk and delivered in order.
    cloud.kill9();
    drop(backend);
    for i in 0..100 {
        edge.publish("up/offline", QoS::AtLeastOnce, false, format!("o{i}"))
            .await
            .expect("publish");
    }
    // The bridge has taken all 100 into its buffer (its report to the master says so).
    eventually_async(LONG, "the bridge to buffer 100 messages", || async {
        m.instance("remote", "remote")
            .await
            .and_then(|v| v["remotes"]["cloud"]["buffered"].as_u64())
            .is_some_and(|n| n >= 100)
    })
    .await;
    let cloud = remote_hub(&w, remote);
    // The backend's persistent session comes back with the remote hub's storage.
    let mut backend = client(remote, "backend", "edge-1/#").await;
    let mut unique: Vec<String> = Vec::new();
    let deadline = tokio::time::Instant::now() + LONG;
    while unique.len() < 100 {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(p) = backend.recv(left).await.expect("backend") else {
            panic!(
                "{} of 100 buffered messages arrived\n{}",
                unique.len(),
                m.log_text()
            );
        };
        let text = p.text();
        if text.starts_with('o') && !unique.contains(&text) {
            unique.push(text);
        }
    }
    assert_eq!(
        unique,
        (0..100).map(|i| format!("o{i}")).collect::<Vec<_>>(),
        "buffered messages arrive in order"
    );
    drop(cloud);
}
