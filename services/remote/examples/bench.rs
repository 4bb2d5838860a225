//! Benchmark (not a test): hub -> remote through the bridge, against mosquitto alone as the peer measured in the
//! same run. Needs Debian's mosquitto. Run: `cargo run --release -p baetyl-remote --example bench [N] [--no-fsync]`.
//!
//! Prints, for a burst of N QoS 1 messages, messages/s end to end; and for 300 messages sent one at a time,
//! p50/p99 latency from publish to receipt. "direct" is one mosquitto (publisher and subscriber on it); "bridge"
//! is publisher -> mosquitto (hub) -> bridge (disk buffer, fsync per batch) -> mosquitto (remote) -> subscriber.

use baetyl_sdk::config::ConfigFile;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use baetyl_remote::{Bridge, BridgeConfig};
use baetyl_testkit::mosquitto::Mosquitto;
use baetyl_testkit::mqtt::{Client, options};
use rumqttc::QoS;

fn mosquitto(dir: &std::path::Path) -> Result<Mosquitto> {
    Mosquitto::builder(dir)
        .persistence(false)
        .quiet()
        .option("max_queued_messages 1000000")
        .start()
}

/// A client of the broker on `port`, subscribed to `sub` if given.
async fn client(port: u16, id: &str, sub: Option<&str>) -> Result<Client> {
    let mut c = Client::connect(options(id, port)).await?;
    if let Some(t) = sub {
        c.subscribe(t, QoS::AtLeastOnce).await?;
    }
    Ok(c)
}

/// The next message within `wait`, or an error.
async fn next(c: &mut Client, wait: Duration) -> Result<()> {
    c.recv(wait).await?.context("no message in time")?;
    Ok(())
}

struct Figures {
    rate: f64,
    p50: Duration,
    p99: Duration,
}

async fn measure(
    pub_port: u16,
    sub_port: u16,
    topic: &str,
    n: usize,
    tag: &str,
) -> Result<Figures> {
    let mut publisher = client(pub_port, &format!("{tag}-pub"), None).await?;
    let mut rx = client(sub_port, &format!("{tag}-sub"), Some("#")).await?;
    // Warm up until the path delivers.
    loop {
        publisher
            .send(topic, QoS::AtLeastOnce, false, b"warm".to_vec())
            .await?;
        if rx.recv(Duration::from_millis(300)).await?.is_some() {
            break;
        }
    }
    rx.drain(Duration::from_millis(300)).await;

    let start = Instant::now();
    for i in 0..n {
        publisher
            .send(topic, QoS::AtLeastOnce, false, format!("{i}").into_bytes())
            .await?;
    }
    for _ in 0..n {
        next(&mut rx, Duration::from_secs(60)).await?;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();

    let mut lat = Vec::new();
    for i in 0..300 {
        let t = Instant::now();
        publisher
            .send(topic, QoS::AtLeastOnce, false, format!("l{i}").into_bytes())
            .await?;
        next(&mut rx, Duration::from_secs(10)).await?;
        lat.push(t.elapsed());
    }
    lat.sort();
    Ok(Figures {
        rate,
        p50: lat[lat.len() / 2],
        p99: lat[lat.len() * 99 / 100],
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5000);
    // `--no-fsync` measures the bridge with `buffer.fsync: false` (crash-safe, not power-loss-safe).
    let fsync = !std::env::args().any(|a| a == "--no-fsync");
    let tmp = tempfile::tempdir()?;
    let hub = mosquitto(&tmp.path().join("hub"))?;
    let remote = mosquitto(&tmp.path().join("remote"))?;
    let direct = measure(hub.port, hub.port, "direct/t", n, "direct").await?;

    let cfg_path = tmp.path().join("service.yml");
    std::fs::write(
        &cfg_path,
        format!(
            "hub: {{address: 'tcp://127.0.0.1:{}', clean_session: true}}\nremotes: [{{name: cloud, address: 'tcp://127.0.0.1:{}', clean_session: true}}]\n\
             rules: [{{hub: {{subscriptions: [{{topic: 'up/#', qos: 1}}]}}, remote: {{name: cloud}}}}]\n\
             buffer: {{dir: '{}', fsync: {fsync}}}\n",
            hub.port,
            remote.port,
            tmp.path().join("buffer").display()
        ),
    )?;
    let bridge = Bridge::start(&BridgeConfig::load(&cfg_path)?).await?;
    let bridged = measure(hub.port, remote.port, "up/t", n, "bridge").await?;
    bridge.stop().await;

    println!("{n} QoS 1 messages, 300 for latency; buffer.fsync: {fsync}");
    for (name, f) in [
        ("direct (mosquitto)", &direct),
        ("bridge (hub->remote)", &bridged),
    ] {
        println!(
            "{name:22} {:>9.0} msg/s   p50 {:>7.2} ms   p99 {:>7.2} ms",
            f.rate,
            f.p50.as_secs_f64() * 1e3,
            f.p99.as_secs_f64() * 1e3
        );
    }
    println!(
        "bridge/direct: throughput {:.2}x, p50 latency {:.2}x",
        bridged.rate / direct.rate,
        bridged.p50.as_secs_f64() / direct.p50.as_secs_f64()
    );
    Ok(())
}
