//! `cargo bench -p baetyl-hub --bench mqtt`: our hub against Debian's mosquitto, same machine, same run.
//!
//! Both brokers run as child processes on free ports with equivalent settings (password authentication,
//! persistence directory, 16 messages in flight per client, Nagle's algorithm on: no TCP_NODELAY).
//! The hub child is this binary re-executed, with the `baetyl` binary's allocator and the hub's own runtime
//! ([`baetyl_hub::cli::runtime`]). rumqttc clients measure, per scenario: messages/s, p50/p99 latency; at the
//! end each broker's peak RSS (VmHWM) and CPU time (user + system) over the whole run. Scenarios: fan-in
//! (4 publishers -> 1 subscriber) and fan-out (1 publisher -> 4 subscribers), QoS 0 and 1, 64 B and 1 KiB
//! payloads. `BENCH_MESSAGES` sets messages per publisher; `BENCH_ONLY=TEXT` runs only the scenarios whose
//! label contains TEXT (e.g. `qos1`, `fan-in`).
//!
//! Needs `mosquitto` and `mosquitto_passwd` (Debian package `mosquitto`; stop its system daemon).

use baetyl_sdk::config::ConfigFile;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

/// The `baetyl` binary's global allocator (the same source file), so that the hub child runs as in production.
#[path = "../../baetyl/src/alloc.rs"]
#[allow(unused_imports)] // its unit test module is compiled without its test here (harness = false)
mod alloc;
#[global_allocator]
static GLOBAL: alloc::Allocator = alloc::Allocator;

const USER: &str = "bench";
const PASS: &str = "bench-pw";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    // Re-executed as the hub child process.
    if args.get(1).map(String::as_str) == Some("--child-hub") {
        let path = args.get(2).context("--child-hub CONFIG")?;
        let cfg = baetyl_hub::HubConfig::load(Path::new(path))?;
        let rt = baetyl_hub::cli::runtime()?;
        let r = rt.block_on(baetyl_hub::run(cfg, baetyl_hub::cli::shutdown_signal()));
        rt.shutdown_timeout(Duration::from_secs(2));
        return Ok(r?);
    }
    // `cargo bench` passes `--bench`; nothing else is expected.
    let per_publisher: usize = std::env::var("BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let r = rt.block_on(bench(per_publisher));
    rt.shutdown_background();
    r
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

struct Broker {
    name: &'static str,
    child: Child,
    port: u16,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Broker {
    fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// User + system CPU time the broker process has used so far, in milliseconds.
    fn cpu_ms(&self) -> u64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        (ticks(11) + ticks(12)) * 1000 / hz
    }
}

async fn wait_port(port: u16) -> Result<()> {
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("nothing listens on {port}")
}

async fn start_hub(dir: &Path) -> Result<Broker> {
    let port = free_port()?;
    let cfg = dir.join("hub.yml");
    std::fs::write(
        &cfg,
        format!(
            "listen: ['tcp://127.0.0.1:{port}']\n\
             principals: [{{username: {USER}, password: {PASS}, permissions: [{{action: pub, permit: ['#']}}, {{action: sub, permit: ['#']}}]}}]\n\
             message: {{length: {{max: 64k}}}}\n\
             storage: {{dir: '{}'}}\nlogger: {{level: warn}}\n",
            dir.join("hub-data").display()
        ),
    )?;
    let child = Command::new(std::env::current_exe()?)
        .args(["--child-hub", &cfg.display().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let b = Broker {
        name: "baetyl-hub",
        child,
        port,
    };
    wait_port(port).await?;
    Ok(b)
}

async fn start_mosquitto(dir: &Path) -> Result<Broker> {
    let port = free_port()?;
    let pw = dir.join("mosquitto.passwd");
    std::fs::write(&pw, "")?;
    let st = Command::new("mosquitto_passwd")
        .args(["-b", &pw.display().to_string(), USER, PASS])
        .status()?;
    if !st.success() {
        bail!("mosquitto_passwd failed");
    }
    let data = dir.join("mosquitto-data");
    std::fs::create_dir_all(&data)?;
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\npersistence true\n\
             persistence_location {}/\nmax_inflight_messages 16\nmax_queued_messages 100000\nlog_dest none\nset_tcp_nodelay false\n",
            pw.display(),
            data.display()
        ),
    )?;
    let child = Command::new("mosquitto")
        .args(["-c", &conf.display().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("mosquitto is not installed (apt-get install mosquitto)")?;
    let b = Broker {
        name: "mosquitto",
        child,
        port,
    };
    wait_port(port).await?;
    Ok(b)
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

async fn client(id: String, port: u16) -> Result<(AsyncClient, mpsc::UnboundedReceiver<Packet>)> {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_credentials(USER, PASS);
    o.set_keep_alive(Duration::from_secs(60));
    o.set_max_packet_size(1 << 20, 1 << 20);
    o.set_inflight(64);
    let (c, mut ev) = AsyncClient::new(o, 10_000);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(e) = ev.poll().await {
            if let Event::Incoming(p) = e
                && tx.send(p).is_err()
            {
                return;
            }
        }
    });
    Ok((c, rx))
}

struct Outcome {
    rate: f64,
    p50_us: u64,
    p99_us: u64,
    received: usize,
    expected: usize,
}

async fn scenario(
    port: u16,
    tag: &str,
    pubs: usize,
    subs: usize,
    per_pub: usize,
    qos: QoS,
    size: usize,
) -> Result<Outcome> {
    let topic = format!("bench/{tag}");
    let expected = pubs * per_pub * subs;
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Vec<u64>>();
    let mut sub_clients = Vec::new();
    for s in 0..subs {
        let (c, mut rx) = client(format!("bsub-{tag}-{s}"), port).await?;
        c.subscribe(&topic, qos).await?;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await? {
                Some(Packet::SubAck(_)) => break,
                Some(_) => {}
                None => bail!("subscriber lost its connection"),
            }
        }
        let want = pubs * per_pub;
        let done = done_tx.clone();
        tokio::spawn(async move {
            let mut lat = Vec::with_capacity(want);
            while lat.len() < want {
                match tokio::time::timeout(Duration::from_secs(20), rx.recv()).await {
                    Ok(Some(Packet::Publish(p))) if p.payload.len() >= 8 => {
                        let mut ts = [0u8; 8];
                        ts.copy_from_slice(&p.payload[..8]);
                        lat.push(now_nanos().saturating_sub(u64::from_be_bytes(ts)));
                    }
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
            let _ = done.send(lat);
        });
        sub_clients.push(c);
    }
    drop(done_tx);
    let start = Instant::now();
    let mut pub_clients = Vec::new();
    for p in 0..pubs {
        let (c, _rx) = client(format!("bpub-{tag}-{p}"), port).await?;
        let topic = topic.clone();
        let handle = tokio::spawn(async move {
            let mut payload = vec![b'x'; size.max(8)];
            for _ in 0..per_pub {
                payload[..8].copy_from_slice(&now_nanos().to_be_bytes());
                if c.publish(&topic, qos, false, payload.clone())
                    .await
                    .is_err()
                {
                    break;
                }
            }
            (c, _rx)
        });
        pub_clients.push(handle);
    }
    let mut all = Vec::with_capacity(expected);
    while let Some(lat) = done_rx.recv().await {
        all.extend(lat);
    }
    let elapsed = start.elapsed();
    for h in pub_clients {
        if let Ok((c, _)) = h.await {
            let _ = c.disconnect().await;
        }
    }
    for c in sub_clients {
        let _ = c.disconnect().await;
    }
    all.sort_unstable();
    let pct = |q: f64| {
        all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
            / 1000
    };
    Ok(Outcome {
        rate: all.len() as f64 / elapsed.as_secs_f64(),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        received: all.len(),
        expected,
    })
}

async fn bench(per_pub: usize) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = start_hub(dir.path()).await?;
    let mosq = start_mosquitto(dir.path()).await?;
    println!(
        "messages per publisher: {per_pub}; brokers on 127.0.0.1, clients: rumqttc in this process\n"
    );
    println!(
        "{:<26} {:>14} {:>9} {:>9} {:>14} {:>9} {:>9} {:>8}",
        "scenario", "hub msg/s", "p50 µs", "p99 µs", "mosq msg/s", "p50 µs", "p99 µs", "ratio"
    );
    let mut i = 0;
    for (name, pubs, subs) in [("fan-in 4->1", 4, 1), ("fan-out 1->4", 1, 4)] {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
            for size in [64usize, 1024] {
                i += 1;
                let label = format!("{name} qos{} {size}B", qos as u8);
                if let Ok(only) = std::env::var("BENCH_ONLY")
                    && !label.contains(&only)
                {
                    continue;
                }
                let h =
                    scenario(hub.port, &format!("h{i}"), pubs, subs, per_pub, qos, size).await?;
                let m =
                    scenario(mosq.port, &format!("m{i}"), pubs, subs, per_pub, qos, size).await?;
                let lost = |o: &Outcome| {
                    if o.received < o.expected {
                        format!(" (got {}/{})", o.received, o.expected)
                    } else {
                        String::new()
                    }
                };
                println!(
                    "{:<26} {:>14.0} {:>9} {:>9} {:>14.0} {:>9} {:>9} {:>7.2}x{}{}",
                    label,
                    h.rate,
                    h.p50_us,
                    h.p99_us,
                    m.rate,
                    m.p50_us,
                    m.p99_us,
                    h.rate / m.rate.max(1.0),
                    lost(&h),
                    lost(&m)
                );
            }
        }
    }
    println!(
        "\npeak RSS: {} {} KiB, {} {} KiB",
        hub.name,
        hub.peak_rss_kib(),
        mosq.name,
        mosq.peak_rss_kib()
    );
    println!(
        "CPU time (user+sys, whole run): {} {} ms, {} {} ms",
        hub.name,
        hub.cpu_ms(),
        mosq.name,
        mosq.cpu_ms()
    );
    Ok(())
}
