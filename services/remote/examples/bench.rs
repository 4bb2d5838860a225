//! Benchmark (not a test): hub -> remote through the bridge, against mosquitto alone as the peer measured in the
//! same run. Needs Debian's mosquitto. Run: `cargo run --release -p baetyl-remote --example bench [N] [--no-fsync]`.
//!
//! Prints, for a burst of N QoS 1 messages, messages/s end to end; and for 300 messages sent one at a time,
//! p50/p99 latency from publish to receipt. "direct" is one mosquitto (publisher and subscriber on it); "bridge"
//! is publisher -> mosquitto (hub) -> bridge (disk buffer, fsync per batch) -> mosquitto (remote) -> subscriber.

use baetyl_sdk::config::ConfigFile;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use baetyl_remote::{Bridge, BridgeConfig};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

struct Mosq(Child, u16);

impl Drop for Mosq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mosquitto(dir: &std::path::Path) -> Result<Mosq> {
    std::fs::create_dir_all(dir)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let conf = dir.join("m.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nuser root\nmax_queued_messages 1000000\n"
        ),
    )?;
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("mosquitto (apt-get install mosquitto)")?;
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(Mosq(child, port));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    bail!("mosquitto did not start")
}

/// A client; incoming payloads go to the channel.
async fn client(
    port: u16,
    id: &str,
    sub: Option<&str>,
) -> Result<(AsyncClient, mpsc::UnboundedReceiver<Vec<u8>>)> {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (c, mut ev) = AsyncClient::new(o, 10_000);
    let (tx, rx) = mpsc::unbounded_channel();
    let (ready_tx, mut ready) = tokio::sync::watch::channel(false);
    let c2 = c.clone();
    let sub = sub.map(str::to_string);
    tokio::spawn(async move {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => match &sub {
                    Some(t) => {
                        let _ = c2.try_subscribe(t.clone(), QoS::AtLeastOnce);
                    }
                    None => {
                        ready_tx.send_replace(true);
                    }
                },
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    ready_tx.send_replace(true);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(p.payload.to_vec());
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), ready.wait_for(|r| *r)).await??;
    Ok((c, rx))
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
    let (publisher, _) = client(pub_port, &format!("{tag}-pub"), None).await?;
    let (_s, mut rx) = client(sub_port, &format!("{tag}-sub"), Some("#")).await?;
    // Warm up until the path delivers.
    loop {
        publisher
            .publish(topic, QoS::AtLeastOnce, false, b"warm".to_vec())
            .await?;
        if tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_ok()
        {
            break;
        }
    }
    while tokio::time::timeout(Duration::from_millis(300), rx.recv())
        .await
        .is_ok()
    {}

    let start = Instant::now();
    for i in 0..n {
        publisher
            .publish(topic, QoS::AtLeastOnce, false, format!("{i}").into_bytes())
            .await?;
    }
    let mut count = 0;
    while count < n {
        tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await?
            .context("closed")?;
        count += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();

    let mut lat = Vec::new();
    for i in 0..300 {
        let t = Instant::now();
        publisher
            .publish(topic, QoS::AtLeastOnce, false, format!("l{i}").into_bytes())
            .await?;
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await?
            .context("closed")?;
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
    let direct = measure(hub.1, hub.1, "direct/t", n, "direct").await?;

    let cfg_path = tmp.path().join("service.yml");
    std::fs::write(
        &cfg_path,
        format!(
            "hub: {{address: 'tcp://127.0.0.1:{}', clean_session: true}}\nremotes: [{{name: cloud, address: 'tcp://127.0.0.1:{}', clean_session: true}}]\n\
             rules: [{{hub: {{subscriptions: [{{topic: 'up/#', qos: 1}}]}}, remote: {{name: cloud}}}}]\n\
             buffer: {{dir: '{}', fsync: {fsync}}}\n",
            hub.1,
            remote.1,
            tmp.path().join("buffer").display()
        ),
    )?;
    let bridge = Bridge::start(&BridgeConfig::load(&cfg_path)?).await?;
    let bridged = measure(hub.1, remote.1, "up/t", n, "bridge").await?;
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
