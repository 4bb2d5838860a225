//! The bridge against Debian's mosquitto as the hub and as remotes (apt-get install mosquitto).

mod common;

use baetyl_sdk::config::ConfigFile;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use baetyl_remote::{Bridge, BridgeConfig, RemoteArgs};
use baetyl_testkit::mosquitto::{Mosquitto as Broker, Tls};
use baetyl_testkit::mqtt::{Client, Publish, texts as payloads};
use baetyl_testkit::pki::Pki;
use baetyl_testkit::process::{Process, rerun_test};
use baetyl_testkit::{eventually, eventually_async, free_listener};
use common::{numbered, peer};
use rumqttc::QoS;
use serde_json::Value;

const CHILD_ENV: &str = "BAETYL_REMOTE_TEST_CHILD_CONFIG";
const LONG: Duration = Duration::from_secs(30);

/// Not a test of its own: the entry point of the bridge when a test starts it as a separate process
/// (the test binary re-executes itself with only this test selected), so it can be killed with SIGKILL.
#[test]
fn child_bridge_process() {
    let Ok(config) = std::env::var(CHILD_ENV) else {
        return;
    };
    let result = baetyl_remote::run_cli(RemoteArgs {
        config: PathBuf::from(config),
        log_format: None,
    });
    if let Err(e) = &result {
        eprintln!("bridge failed: {e}");
    }
    std::process::exit(if result.is_ok() { 0 } else { 1 });
}

fn spawn_child(config: &Path, master: Option<u16>) -> Result<Process> {
    let mut cmd = rerun_test("child_bridge_process");
    cmd.env(CHILD_ENV, config)
        .env_remove(baetyl_sdk::env::SERVICE_NAME)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if let Some(port) = master {
        cmd.env(baetyl_sdk::env::SERVICE_NAME, "remote")
            .env(baetyl_sdk::env::SERVICE_TOKEN, "token-1")
            .env(
                baetyl_sdk::env::MASTER_API_ADDRESS,
                format!("tcp://127.0.0.1:{port}"),
            );
    }
    Process::spawn(&mut cmd, "the bridge")
}

/// The rule of most tests: the hub's `up/#` to the remote `cloud`.
const UP: &str = "{hub: {subscriptions: [{topic: 'up/#', qos: 1}]}, remote: {name: cloud}}";

/// A bridge between `hub` and one remote `cloud` with one rule, its buffer in `dir`/buffer (`buffer` adds keys).
fn one_remote(hub: &Broker, cloud: &Broker, rule: &str, dir: &Path, buffer: &str) -> String {
    format!(
        "hub: {{address: '{}'}}\nremotes: [{{name: cloud, address: '{}'}}]\nrules: [{rule}]\n\
         buffer: {{dir: '{}'{buffer}}}\n",
        hub.address(),
        cloud.address(),
        dir.join("buffer").display()
    )
}

fn write_config(dir: &Path, text: &str) -> Result<BridgeConfig> {
    let path = dir.join("service.yml");
    std::fs::write(&path, text)?;
    Ok(BridgeConfig::load(&path)?)
}

fn expected(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}-{i}")).collect()
}

/// Waits until the bridge's subscription to `filter` is granted on `broker`, publishes one message on `topic`
/// and answers the one message `sub` receives from it.
async fn probe(
    broker: &Broker,
    filter: &str,
    publ: &mut Client,
    (topic, payload): (&str, &[u8]),
    sub: &mut Client,
) -> Result<Publish> {
    broker.wait_subscribed(filter, LONG).await?;
    publ.publish_all(topic, &[payload.to_vec()]).await?;
    let mut got = sub.recv_n(1, LONG).await?;
    Ok(got.remove(0))
}

/// Polls the bridge's stats until `f` holds; the failure shows the last stats.
async fn stats_until(bridge: &Bridge, what: &str, f: impl Fn(&Value) -> bool) {
    eventually_async(LONG, what, || async {
        let s = bridge.stats();
        if f(&s) { Ok(()) } else { Err(s) }
    })
    .await
}

fn remote_stat(stats: &Value, remote: &str, key: &str) -> u64 {
    stats["remotes"][remote][key].as_u64().unwrap_or(u64::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_directions_with_rewrite_qos1_and_two_remotes() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let hub = Broker::start(&tmp.path().join("hub"))?;
    let cloud = Broker::start(&tmp.path().join("cloud"))?;
    let backup = Broker::start(&tmp.path().join("backup"))?;
    let cfg = write_config(
        tmp.path(),
        &format!(
            "hub: {{address: '{}', clientid: bridge-hub}}\n\
             remotes:\n  - {{name: cloud, address: '{}', clientid: edge-1}}\n  - {{name: backup, address: '{}', clientid: edge-1b}}\n\
             rules:\n\
             \x20 - hub: {{subscriptions: [{{topic: 'sensors/#', qos: 1}}], rewrite: {{strip_prefix: sensors/, add_prefix: edge-1/}}}}\n\
             \x20   remote: {{name: cloud, subscriptions: [{{topic: 'cmd/#', qos: 1}}], rewrite: {{add_prefix: from-cloud/}}}}\n\
             \x20 - hub: {{subscriptions: [{{topic: 'alerts/+', qos: 1}}]}}\n\
             \x20   remote: {{name: backup}}\n\
             buffer: {{dir: '{}'}}\n",
            hub.address(),
            cloud.address(),
            backup.address(),
            tmp.path().join("buffer").display()
        ),
    )?;
    let mut cloud_sub = peer(cloud.port, "cloud-sub", true, &[("#", QoS::AtLeastOnce)]).await?;
    let mut backup_sub = peer(backup.port, "backup-sub", true, &[("#", QoS::AtLeastOnce)]).await?;
    let mut hub_sub = peer(
        hub.port,
        "hub-sub",
        true,
        &[("from-cloud/#", QoS::AtLeastOnce)],
    )
    .await?;
    let bridge = Bridge::start(&cfg).await?;
    stats_until(&bridge, "the bridge to connect", |s| {
        s["hub"]["connected"] == true
            && s["remotes"]["cloud"]["connected"] == true
            && s["remotes"]["backup"]["connected"] == true
    })
    .await;
    let mut hub_pub = peer(hub.port, "hub-pub", true, &[]).await?;
    // The hub session subscribes after CONNACK: one probe once both filters are granted.
    hub.wait_subscribed("alerts/+", LONG).await?;
    let got = probe(
        &hub,
        "sensors/#",
        &mut hub_pub,
        ("sensors/probe", b"probe"),
        &mut cloud_sub,
    )
    .await?;
    assert_eq!(got.topic, "edge-1/probe");

    hub_pub
        .publish_all("sensors/temp", &numbered("t", 100))
        .await?;
    hub_pub
        .publish_all("alerts/fire", &numbered("a", 10))
        .await?;
    let got = cloud_sub.recv_n(100, LONG).await?;
    assert!(
        got.iter()
            .all(|p| p.topic == "edge-1/temp" && p.qos == QoS::AtLeastOnce)
    );
    assert_eq!(payloads(&got), expected("t", 0..100), "in order, no loss");
    let got = backup_sub.recv_n(10, LONG).await?;
    assert!(
        got.iter().all(|p| p.topic == "alerts/fire"),
        "no rewrite on that rule"
    );
    assert_eq!(payloads(&got), expected("a", 0..10));
    // Rules route by remote: nothing of rule 1 reached the backup, nothing of rule 2 the cloud.
    assert!(
        backup_sub
            .drain(Duration::from_millis(300))
            .await
            .is_empty()
    );
    assert!(cloud_sub.drain(Duration::from_millis(300)).await.is_empty());

    let mut cloud_pub = peer(cloud.port, "cloud-pub", true, &[]).await?;
    cloud.wait_subscribed("cmd/#", LONG).await?;
    cloud_pub
        .publish_all("cmd/reboot", &numbered("c", 50))
        .await?;
    let got = hub_sub.recv_n(50, LONG).await?;
    assert!(
        got.iter()
            .all(|p| p.topic == "from-cloud/cmd/reboot" && p.qos == QoS::AtLeastOnce)
    );
    assert_eq!(payloads(&got), expected("c", 0..50));

    stats_until(&bridge, "the final counts", |s| {
        remote_stat(s, "cloud", "sent") == 101
            && remote_stat(s, "cloud", "received") == 50
            && remote_stat(s, "cloud", "buffered") == 0
            && remote_stat(s, "backup", "sent") == 10
    })
    .await;
    bridge.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_down_then_back_gets_everything_in_order_once() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let hub = Broker::start(&tmp.path().join("hub"))?;
    let mut cloud = Broker::start(&tmp.path().join("cloud"))?;
    let cfg = write_config(tmp.path(), &one_remote(&hub, &cloud, UP, tmp.path(), ""))?;
    // A persistent subscriber on the remote: its session (and what is queued for it) survives the outage.
    let mut sub = peer(
        cloud.port,
        "cloud-sub",
        false,
        &[("up/#", QoS::AtLeastOnce)],
    )
    .await?;
    let bridge = Bridge::start(&cfg).await?;
    let mut hub_pub = peer(hub.port, "hub-pub", true, &[]).await?;
    stats_until(&bridge, "the remote to connect", |s| {
        s["remotes"]["cloud"]["connected"] == true
    })
    .await;
    // The hub session's subscription is in place: a first message goes through.
    probe(&hub, "up/#", &mut hub_pub, ("up/warmup", b"w"), &mut sub).await?;

    cloud.stop();
    drop(sub);
    stats_until(&bridge, "the remote to be seen down", |s| {
        s["remotes"]["cloud"]["connected"] == false
    })
    .await;
    hub_pub.publish_all("up/data", &numbered("m", 300)).await?;
    stats_until(&bridge, "all 300 buffered while the remote is down", |s| {
        remote_stat(s, "cloud", "buffered") == 300
    })
    .await;
    cloud.restart()?;
    let mut sub = peer(
        cloud.port,
        "cloud-sub",
        false,
        &[("up/#", QoS::AtLeastOnce)],
    )
    .await?;
    let got = sub.recv_n(300, LONG).await?;
    assert_eq!(
        payloads(&got),
        expected("m", 0..300),
        "in order, nothing lost"
    );
    assert!(
        sub.drain(Duration::from_millis(800)).await.is_empty(),
        "no duplicates"
    );
    let s = bridge.stats();
    assert_eq!(remote_stat(&s, "cloud", "buffered"), 0, "{s}");
    assert_eq!(remote_stat(&s, "cloud", "dropped"), 0, "{s}");
    bridge.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bound_drops_the_oldest_and_counts_them() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let hub = Broker::start(&tmp.path().join("hub"))?;
    // The remote is not there at first; a persistent subscriber's session waits in its saved state.
    let mut cloud = Broker::start(&tmp.path().join("cloud"))?;
    drop(
        peer(
            cloud.port,
            "cloud-sub",
            false,
            &[("up/#", QoS::AtLeastOnce)],
        )
        .await?,
    );
    cloud.stop();
    let cfg = write_config(
        tmp.path(),
        &one_remote(&hub, &cloud, UP, tmp.path(), ", max_messages: 50"),
    )?;
    let bridge = Bridge::start(&cfg).await?;
    stats_until(&bridge, "the hub to connect", |s| {
        s["hub"]["connected"] == true
    })
    .await;
    let mut hub_pub = peer(hub.port, "hub-pub", true, &[]).await?;
    hub.wait_subscribed("up/#", LONG).await?;
    let warmups = bridge.stats()["hub"]["received"].as_u64().unwrap_or(0);
    hub_pub.publish_all("up/data", &numbered("m", 80)).await?;
    stats_until(&bridge, "the 80 messages to be received", |s| {
        s["hub"]["received"].as_u64() == Some(warmups + 80)
    })
    .await;
    let s = bridge.stats();
    assert_eq!(remote_stat(&s, "cloud", "buffered"), 50, "{s}");
    assert_eq!(remote_stat(&s, "cloud", "dropped"), warmups + 30, "{s}");

    cloud.restart()?;
    stats_until(&bridge, "the buffer to be sent", |s| {
        remote_stat(s, "cloud", "buffered") == 0
    })
    .await;
    let mut sub = peer(
        cloud.port,
        "cloud-sub",
        false,
        &[("up/#", QoS::AtLeastOnce)],
    )
    .await?;
    // Only the newest 50 were kept, and they arrive in order.
    let got = sub.recv_n(50, LONG).await?;
    assert_eq!(payloads(&got), expected("m", 30..80));
    assert!(sub.drain(Duration::from_millis(500)).await.is_empty());
    assert_eq!(remote_stat(&bridge.stats(), "cloud", "sent"), 50);
    bridge.stop().await;
    Ok(())
}

/// A stand-in for the master's report route: records every JSON body sent with the service's token.
fn fake_master() -> Result<(u16, Arc<Mutex<Vec<Value>>>)> {
    let listener = free_listener();
    let port = listener.local_addr()?.port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(match stream.try_clone() {
                Ok(r) => r,
                Err(_) => continue,
            });
            let mut len = 0usize;
            let mut authenticated = false;
            let mut line = String::new();
            let mut request_line = String::new();
            let _ = reader.read_line(&mut request_line);
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                if lower.trim_end() == "x-openedge-password: token-1" {
                    authenticated = true;
                }
            }
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            if request_line.starts_with("PUT /v1/services/remote/instances/remote/report")
                && authenticated
                && let Ok(v) = serde_json::from_slice::<Value>(&body)
            {
                s.lock().expect("reports lock").push(v);
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    Ok((port, seen))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_bridge_loses_nothing_it_acknowledged() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut hub = Broker::start(&tmp.path().join("hub"))?;
    let mut cloud = Broker::start(&tmp.path().join("cloud"))?;
    cloud.stop();
    let text = one_remote(&hub, &cloud, UP, tmp.path(), "") + "report_interval: 1s\n";
    let config = tmp.path().join("service.yml");
    std::fs::write(&config, &text)?;
    let (master_port, reports) = fake_master()?;
    let mut child = spawn_child(&config, Some(master_port))?;

    // The bridge reports its stats to the master; wait until it says the hub is connected.
    let last = || {
        reports
            .lock()
            .expect("reports lock")
            .last()
            .cloned()
            .unwrap_or(Value::Null)
    };
    let reported = |what: &'static str, f: fn(&Value) -> bool| {
        eventually(LONG, what, || Some(last()).filter(f).ok_or_else(last))
    };
    reported("a report that the hub is connected", |r| {
        r["hub"]["connected"] == true
    });
    let mut hub_pub = peer(hub.port, "hub-pub", true, &[]).await?;
    hub.wait_subscribed("up/#", LONG).await?;
    hub_pub.publish_all("up/data", &numbered("m", 200)).await?;
    reported("a report of 200 buffered", |r| {
        r["remotes"]["cloud"]["buffered"].as_u64() == Some(200)
    });
    // Every one of them is acknowledged to the hub now. Kill the bridge, and take the hub away too, so that
    // whatever reaches the remote can only come from the bridge's disk.
    child.kill9();
    drop(hub_pub);
    hub.stop();
    cloud.restart()?;
    let mut sub = peer(cloud.port, "cloud-sub", true, &[("up/#", QoS::AtLeastOnce)]).await?;
    let mut child = spawn_child(&config, None)?;
    let got = sub.recv_n(200, LONG).await?;
    assert_eq!(
        payloads(&got),
        expected("m", 0..200),
        "in order, nothing lost"
    );
    assert!(
        sub.drain(Duration::from_millis(500)).await.is_empty(),
        "no duplicates"
    );

    // SIGTERM ends the bridge with status 0.
    let status = child.terminate(LONG);
    assert!(status.success(), "exit status {status}");
    hub.restart()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_then_restart_delivers_every_message_in_order() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let hub = Broker::start(&tmp.path().join("hub"))?;
    let cloud = Broker::start(&tmp.path().join("cloud"))?;
    let config = tmp.path().join("service.yml");
    std::fs::write(&config, one_remote(&hub, &cloud, UP, tmp.path(), ""))?;
    let mut sub = peer(
        cloud.port,
        "cloud-sub",
        false,
        &[("up/#", QoS::AtLeastOnce)],
    )
    .await?;
    let mut child = spawn_child(&config, None)?;
    let mut hub_pub = peer(hub.port, "hub-pub", true, &[]).await?;
    probe(&hub, "up/#", &mut hub_pub, ("up/warmup", b"w"), &mut sub).await?;

    const N: usize = 2000;
    let publisher = tokio::spawn(async move {
        for chunk in numbered("m", N).chunks(100) {
            hub_pub.publish_all("up/data", chunk).await?;
        }
        anyhow::Ok(hub_pub)
    });
    let mut got = sub.recv_n(300, LONG).await?;
    // Mid-stream: messages are in the hub's queue, in the bridge's buffer and in flight to the remote.
    child.kill9();
    let mut child = spawn_child(&config, None)?;
    let _hub_pub = publisher.await??;
    let mut firsts: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + LONG;
    let mut copies = 0usize;
    loop {
        copies += got.len();
        for p in payloads(&got) {
            if seen.insert(p.clone()) {
                firsts.push(p);
            }
        }
        if seen.len() >= N || tokio::time::Instant::now() > deadline {
            break;
        }
        got = sub.drain(Duration::from_millis(500)).await;
    }
    assert_eq!(
        firsts,
        expected("m", 0..N),
        "every message, first copies in order"
    );
    copies += sub.drain(Duration::from_millis(500)).await.len();
    eprintln!(
        "kill -9 mid-stream: {N} messages, {copies} received, {} duplicates",
        copies - N
    );
    assert!(child.terminate(LONG).success());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_down_then_back_remote_messages_are_not_lost() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut hub = Broker::start(&tmp.path().join("hub"))?;
    let cloud = Broker::start(&tmp.path().join("cloud"))?;
    let down = "{remote: {name: cloud, subscriptions: [{topic: 'down/#', qos: 1}]}}";
    let cfg = write_config(tmp.path(), &one_remote(&hub, &cloud, down, tmp.path(), ""))?;
    let mut hub_sub = peer(hub.port, "hub-sub", false, &[("down/#", QoS::AtLeastOnce)]).await?;
    let bridge = Bridge::start(&cfg).await?;
    let mut cloud_pub = peer(cloud.port, "cloud-pub", true, &[]).await?;
    probe(
        &cloud,
        "down/#",
        &mut cloud_pub,
        ("down/warmup", b"w"),
        &mut hub_sub,
    )
    .await?;
    // Counted once the hub acknowledged it to the bridge (a moment after the subscriber got it).
    stats_until(&bridge, "the warm-up to be counted", |s| {
        remote_stat(s, "cloud", "received") == 1
    })
    .await;
    let before = remote_stat(&bridge.stats(), "cloud", "received");
    hub.stop();
    drop(hub_sub);
    stats_until(&bridge, "the hub to be seen down", |s| {
        s["hub"]["connected"] == false
    })
    .await;
    // The remote accepts these; the bridge cannot pass them on, so it must not acknowledge them either.
    cloud_pub
        .publish_all("down/cmd", &numbered("d", 40))
        .await?;
    // A window in which nothing must happen: the bridge takes none of them while the hub is down.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(remote_stat(&bridge.stats(), "cloud", "received"), before);
    hub.restart()?;
    let mut hub_sub = peer(hub.port, "hub-sub", false, &[("down/#", QoS::AtLeastOnce)]).await?;
    let got = payloads(&hub_sub.recv_n(40, LONG).await?);
    // At least once and in order: every message, the first copies in sequence.
    let mut firsts: Vec<String> = Vec::new();
    for p in got
        .iter()
        .chain(payloads(&hub_sub.drain(Duration::from_millis(500)).await).iter())
    {
        if !firsts.contains(p) {
            firsts.push(p.clone());
        }
    }
    assert_eq!(firsts, expected("d", 0..40));
    stats_until(&bridge, "the 40 to be counted as received", |s| {
        remote_stat(s, "cloud", "received") >= before + 40
    })
    .await;
    bridge.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_way_tls_to_the_remote() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let pki = Pki::new(&tmp.path().join("pki"), "bridge test ca")?;
    let edge = pki.client("edge-1")?;
    let hub = Broker::start(&tmp.path().join("hub"))?;
    let cloud = Broker::builder(&tmp.path().join("cloud"))
        .tls(Tls::from_pki(&pki, true))
        .start()?;
    let tls_port = cloud.tls_port.context("tls listener")?;
    let rules =
        "rules: [{hub: {subscriptions: [{topic: 'up/#', qos: 1}]}, remote: {name: cloud}}]\n";
    let good = write_config(
        tmp.path(),
        &format!(
            "hub: {{address: '{}'}}\nremotes: [{{name: cloud, address: 'ssl://127.0.0.1:{}', ca: '{}', cert: '{}', key: '{}'}}]\n{rules}\
             buffer: {{dir: '{}'}}\n",
            hub.address(),
            tls_port,
            pki.ca.display(),
            edge.cert.display(),
            edge.key.display(),
            tmp.path().join("buffer").display()
        ),
    )?;
    let bridge = Bridge::start(&good).await?;
    stats_until(&bridge, "a TLS connection with a client certificate", |s| {
        s["remotes"]["cloud"]["connected"] == true
    })
    .await;
    // A message crosses the TLS link (the test subscriber reads on the broker's plain listener).
    let mut sub = peer(cloud.port, "cloud-sub", true, &[("up/#", QoS::AtLeastOnce)]).await?;
    let mut hub_pub = peer(hub.port, "hub-pub", true, &[]).await?;
    let got = probe(
        &hub,
        "up/#",
        &mut hub_pub,
        ("up/secure", b"over tls"),
        &mut sub,
    )
    .await?;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("up/secure", b"over tls".as_slice())
    );
    bridge.stop().await;

    // Without a client certificate the remote refuses the handshake.
    let tmp2 = tempfile::tempdir()?;
    let one_way = write_config(
        tmp2.path(),
        &format!(
            "hub: {{address: '{}'}}\nremotes: [{{name: cloud, address: 'ssl://127.0.0.1:{}', ca: '{}'}}]\n{rules}\
             buffer: {{dir: '{}'}}\n",
            hub.address(),
            tls_port,
            pki.ca.display(),
            tmp2.path().join("buffer").display()
        ),
    )?;
    let refused = Bridge::start(&one_way).await?;
    // A window in which nothing must happen: no connection without a client certificate.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(refused.stats()["remotes"]["cloud"]["connected"], false);
    refused.stop().await;
    Ok(())
}
