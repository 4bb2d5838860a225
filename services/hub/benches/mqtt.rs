//! `cargo bench -p baetyl-hub --bench mqtt`: our hub against Debian's mosquitto, same machine, same run.
//!
//! Both brokers run as child processes on free ports with equivalent settings (password authentication,
//! persistence directory, 16 messages in flight per client), each with its own socket defaults: the hub sets
//! TCP_NODELAY and coalesces its writes itself, mosquitto runs with its default (`set_tcp_nodelay false`: Nagle).
//! The hub child is this binary re-executed, with the `baetyl` binary's allocator and the hub's own runtime
//! ([`baetyl_hub::cli::runtime`]). rumqttc clients measure, per scenario: messages/s, p50/p99 latency; at the
//! end each broker's peak RSS (VmHWM) and CPU time (user + system) over the whole run. Scenarios: fan-in
//! (4 publishers -> 1 subscriber) and fan-out (1 publisher -> 4 subscribers), QoS 0 and 1, 64 B and 1 KiB
//! payloads; then a round trip at a low rate (publish, receive on one's own subscription), QoS 0 and 1. `BENCH_MESSAGES` sets messages per publisher; `BENCH_ONLY=TEXT` runs only the scenarios whose
//! label contains TEXT (e.g. `qos1`, `fan-in`, `round trip`); `BENCH_HUB_EXE=PATH` runs another build of this
//! benchmark as the hub child (before/after comparisons); `BENCH_ROUNDTRIPS` sets the round trips per QoS.
//! Before the message scenarios: each broker's RSS at rest and per idle connection (`BENCH_IDLE_CONNECTIONS`,
//! default 10,000; 0 skips it); after them, messages kept for an offline persistent session (to the last PUBACK).
//!
//! Needs `mosquitto` and `mosquitto_passwd` (Debian package `mosquitto`; stop its system daemon).

use baetyl_sdk::config::ConfigFile;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use baetyl_testkit::free_port;
use baetyl_testkit::mosquitto::Mosquitto;
use baetyl_testkit::mqtt::{Client, options};
use baetyl_testkit::net::{localhost, wait_accepting_async};
use baetyl_testkit::process::Process;
use rumqttc::QoS;
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

/// What keeps a broker running until the end of the run.
#[allow(dead_code)]
enum Running {
    Hub(Process),
    Mosquitto(Mosquitto),
}

struct Broker {
    name: &'static str,
    port: u16,
    pid: u32,
    _running: Running,
}

impl Broker {
    /// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`), 0 when unreadable.
    fn status_kib(&self, field: &str) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM")
    }

    fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS")
    }

    /// Resets the peak RSS to the current RSS (`clear_refs` 5), so that the peak of what follows is measured
    /// alone. Needs the right to write the broker's `/proc` files (the same user).
    fn reset_peak(&self) -> Result<()> {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid), "5")
            .with_context(|| format!("resetting the peak RSS of {}", self.name))
    }

    /// User + system CPU time the broker process has used so far, in milliseconds.
    fn cpu_ms(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        (ticks(11) + ticks(12)) * 1000 / hz
    }
}

async fn start_hub(dir: &Path) -> Result<Broker> {
    let port = free_port();
    let cfg = dir.join("hub.yml");
    std::fs::write(
        &cfg,
        format!(
            "listen: ['tcp://127.0.0.1:{port}']\n\
             principals: [{{username: {USER}, password: {PASS}, permissions: [{{action: pub, permit: ['#']}}, {{action: sub, permit: ['#']}}]}}]\n\
             message: {{length: {{max: 64k}}}}\n\
             limits: {{connections: 20000, connections_per_principal: 20000}}\n\
             storage: {{dir: '{}'}}\nlogger: {{level: warn}}\n",
            dir.join("hub-data").display()
        ),
    )?;
    // `BENCH_HUB_EXE`: another build of this benchmark as the hub child (before/after comparisons in one run).
    let exe = match std::env::var_os("BENCH_HUB_EXE") {
        Some(exe) => exe.into(),
        None => std::env::current_exe()?,
    };
    let mut cmd = Command::new(exe);
    cmd.args(["--child-hub", &cfg.display().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let hub = Process::spawn(&mut cmd, "the hub")?;
    wait_accepting_async(localhost(port), Duration::from_secs(30)).await;
    Ok(Broker {
        name: "baetyl-hub",
        port,
        pid: hub.id(),
        _running: Running::Hub(hub),
    })
}

async fn start_mosquitto(dir: &Path) -> Result<Broker> {
    let m = Mosquitto::builder(&dir.join("mosquitto"))
        .user(USER, PASS)
        .quiet()
        .option("max_inflight_messages 16")
        .option("set_tcp_nodelay false")
        .start()?;
    Ok(Broker {
        name: "mosquitto",
        port: m.port,
        pid: m.pid().context("mosquitto's pid")?,
        _running: Running::Mosquitto(m),
    })
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

async fn client(id: &str, port: u16) -> Result<Client> {
    let mut o = options(id, port);
    o.set_credentials(USER, PASS)
        .set_keep_alive(Duration::from_secs(60))
        .set_inflight(64);
    Client::connect(o).await
}

struct Outcome {
    rate: f64,
    p50_us: u64,
    p99_us: u64,
    received: usize,
    expected: usize,
}

/// " (got N/M)" when messages were missing, else nothing.
fn lost(o: &Outcome) -> String {
    if o.received < o.expected {
        format!(" (got {}/{})", o.received, o.expected)
    } else {
        String::new()
    }
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
    for s in 0..subs {
        let mut c = client(&format!("bsub-{tag}-{s}"), port).await?;
        c.subscribe(&topic, qos).await?;
        let want = pubs * per_pub;
        let done = done_tx.clone();
        tokio::spawn(async move {
            let mut lat = Vec::with_capacity(want);
            while lat.len() < want {
                match c.recv(Duration::from_secs(20)).await {
                    Ok(Some(p)) if p.payload.len() >= 8 => {
                        let mut ts = [0u8; 8];
                        ts.copy_from_slice(&p.payload[..8]);
                        lat.push(now_nanos().saturating_sub(u64::from_be_bytes(ts)));
                    }
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
            let _ = done.send(lat);
            let _ = c.disconnect().await;
        });
    }
    drop(done_tx);
    let start = Instant::now();
    let mut pub_clients = Vec::new();
    for p in 0..pubs {
        let mut c = client(&format!("bpub-{tag}-{p}"), port).await?;
        let topic = topic.clone();
        let handle = tokio::spawn(async move {
            let mut payload = vec![b'x'; size.max(8)];
            for _ in 0..per_pub {
                payload[..8].copy_from_slice(&now_nanos().to_be_bytes());
                if c.send(&topic, qos, false, payload.clone()).await.is_err() {
                    break;
                }
            }
            c
        });
        pub_clients.push(handle);
    }
    let mut all = Vec::with_capacity(expected);
    while let Some(lat) = done_rx.recv().await {
        all.extend(lat);
    }
    let elapsed = start.elapsed();
    for h in pub_clients {
        if let Ok(c) = h.await {
            let _ = c.disconnect().await;
        }
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

/// Messages kept for an offline persistent session: a subscriber (clean session 0) subscribes QoS 1 and goes
/// away; 4 publishers send `per_pub` QoS 1 messages each to its topic, and the rate counts from the first
/// PUBLISH to the last PUBACK. Each broker keeps these messages for the subscriber (the hub acknowledges each
/// only once it is synced to disk, mosquitto keeps them in memory and writes its state on its own schedule).
/// Then the subscriber comes back and must receive all of them.
async fn offline_queue(port: u16, tag: &str, per_pub: usize, size: usize) -> Result<Outcome> {
    const PUBS: usize = 4;
    let topic = format!("offline/{tag}");
    let sub_id = format!("boff-{tag}");
    let persistent = |id: &str| {
        let mut o = options(id, port);
        o.set_credentials(USER, PASS)
            .set_keep_alive(Duration::from_secs(60))
            .set_clean_session(false)
            .set_inflight(64);
        o
    };
    let mut sub = Client::connect(persistent(&sub_id)).await?;
    sub.subscribe(&topic, QoS::AtLeastOnce).await?;
    sub.disconnect().await?;
    // The broker takes the session offline once it has read the DISCONNECT.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..PUBS {
        let mut c = client(&format!("bpoff-{tag}-{p}"), port).await?;
        let topic = topic.clone();
        tasks.spawn(async move {
            let payload = vec![b'x'; size];
            for _ in 0..per_pub {
                c.send(&topic, QoS::AtLeastOnce, false, payload.clone())
                    .await?;
            }
            c.wait_acks().await?;
            let _ = c.disconnect().await;
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let elapsed = start.elapsed();
    let expected = PUBS * per_pub;
    let mut sub = Client::connect(persistent(&sub_id)).await?;
    let mut received = 0;
    while received < expected {
        match sub.recv(Duration::from_secs(10)).await? {
            Some(_) => received += 1,
            None => break,
        }
    }
    let _ = sub.disconnect().await;
    Ok(Outcome {
        rate: expected as f64 / elapsed.as_secs_f64(),
        p50_us: 0,
        p99_us: 0,
        received,
        expected,
    })
}

/// The conformance tests' raw MQTT (packets byte by byte, a connection that reads whole packets).
#[path = "../tests/mqtt_raw/mod.rs"]
#[allow(unused_imports)] // the tests' fixtures it re-exports
mod mqtt_raw;

/// One MQTT 3.1.1 client on a raw socket with TCP_NODELAY (so that only the broker's own writes are measured):
/// it publishes one message at a time, at a low rate, to a topic it subscribes to, and times each from the write
/// of its PUBLISH to the read of the same message coming back (QoS 1: the broker's PUBACK and the delivery both
/// arrive; the client acknowledges the delivery at once).
mod roundtrip {
    use std::time::{Duration, Instant};

    use anyhow::{Result, anyhow, bail};

    use crate::mqtt_raw::{Conn, Connect, Event, ack, publish, subscribe};

    /// Round-trip times in microseconds, sorted.
    pub async fn run(
        port: u16,
        tag: &str,
        user: &str,
        pass: &str,
        qos: u8,
        n: usize,
        gap: Duration,
    ) -> Result<Vec<u64>> {
        let topic = format!("rt/{tag}");
        let addr = baetyl_testkit::net::localhost(port);
        let (mut c, _) =
            Conn::connected(addr, &Connect::v311(&format!("rt-{tag}")).user(user, pass))
                .await
                .map_err(|e| anyhow!(e))?;
        c.set_nodelay()?;
        c.send(&subscribe(1, &[(topic.as_bytes(), qos)], None))
            .await;
        c.expect_kind(9).await.map_err(|e| anyhow!(e))?;
        let mut times = Vec::with_capacity(n);
        for i in 0..n {
            let pid = (qos == 1).then_some((i % 65_535 + 1) as u16);
            let message = publish(qos, false, &topic, pid, None, (i as u64).to_be_bytes());
            let start = Instant::now();
            c.send(&message).await;
            let (mut acked, mut back) = (qos == 0, false);
            while !(acked && back) {
                let p = match c.next(Duration::from_secs(10)).await {
                    Event::Packet(p) => p,
                    other => bail!("round trip {i}: {other:?}"),
                };
                match p.kind() {
                    4 => acked = true,
                    3 => {
                        if !back {
                            times.push(start.elapsed().as_micros() as u64);
                            back = true;
                        }
                        if let Some(pid) = p.publish(false).and_then(|d| d.pid) {
                            c.send(&ack(0x40, pid)).await;
                        }
                    }
                    k => bail!("round trip {i}: unexpected packet type {k}"),
                }
            }
            tokio::time::sleep(gap).await;
        }
        c.send(&[0xe0, 0]).await;
        times.sort_unstable();
        Ok(times)
    }

    pub fn pct(sorted: &[u64], q: f64) -> u64 {
        sorted
            .get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    }
}

/// Memory: RSS at rest, and what `n` idle MQTT connections (CONNECT, CONNACK, then nothing: keep alive 300 s,
/// clean session, no subscription) add to it, one broker at a time, each printed next to mosquitto's.
mod idle {
    use std::time::Duration;

    use anyhow::{Result, anyhow};

    use crate::Broker;
    use crate::mqtt_raw::{Conn, Connect};

    /// Opens `n` connections to `port`, 50 at a time; returns them open.
    async fn open(port: u16, tag: &str, user: &str, pass: &str, n: usize) -> Result<Vec<Conn>> {
        const PARALLEL: usize = 50;
        let addr = baetyl_testkit::net::localhost(port);
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..PARALLEL {
            let (tag, user, pass) = (tag.to_string(), user.to_string(), pass.to_string());
            tasks.spawn(async move {
                let mut conns = Vec::new();
                for i in (t..n).step_by(PARALLEL) {
                    let c = Connect::v311(&format!("idle-{tag}-{i}"))
                        .user(&user, &pass)
                        .keep_alive(300);
                    let (conn, _) = Conn::connected(addr, &c)
                        .await
                        .map_err(|e| anyhow!("idle connection {i}: {e}"))?;
                    conns.push(conn);
                }
                Ok::<_, anyhow::Error>(conns)
            });
        }
        let mut all = Vec::with_capacity(n);
        while let Some(r) = tasks.join_next().await {
            all.extend(r??);
        }
        Ok(all)
    }

    /// The broker's RSS once it has stopped moving (two reads 300 ms apart within 1%), at most after 3 s.
    async fn settled_rss(b: &Broker) -> u64 {
        let mut last = b.rss_kib();
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let now = b.rss_kib();
            if now.abs_diff(last) * 100 <= last {
                return now;
            }
            last = now;
        }
        last
    }

    /// (RSS before, RSS with `n` idle connections open) in KiB.
    pub async fn measure(b: &Broker, user: &str, pass: &str, n: usize) -> Result<(u64, u64)> {
        let before = settled_rss(b).await;
        let conns = open(b.port, b.name, user, pass, n).await?;
        let with = settled_rss(b).await;
        drop(conns);
        // Let the broker notice the closes before the next measurement.
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok((before, with))
    }
}

/// Idle RSS of both brokers, then the RSS per idle connection with `BENCH_IDLE_CONNECTIONS` (default 10,000;
/// 0 skips it) open, one broker at a time.
async fn memory(hub: &Broker, mosq: &Broker) -> Result<()> {
    let n: usize = std::env::var("BENCH_IDLE_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let rss = |b: &Broker| {
        format!(
            "{} KiB (anonymous {}, file {})",
            b.rss_kib(),
            b.status_kib("RssAnon"),
            b.status_kib("RssFile")
        )
    };
    println!(
        "idle RSS (started, no client): hub {}, mosquitto {}",
        rss(hub),
        rss(mosq)
    );
    if n == 0 {
        return Ok(());
    }
    let (hb, hw) = idle::measure(hub, USER, PASS, n).await?;
    let (mb, mw) = idle::measure(mosq, USER, PASS, n).await?;
    let per = |before: u64, with: u64| with.saturating_sub(before) as f64 / n as f64;
    println!(
        "{n} idle connections: hub {hb} -> {hw} KiB ({:.2} KiB each), mosquitto {mb} -> {mw} KiB ({:.2} KiB each)\n",
        per(hb, hw),
        per(mb, mw)
    );
    Ok(())
}

/// The round trip at a low rate (one message every 5 ms), QoS 0 and 1, printed next to mosquitto's.
async fn round_trips(hub: &Broker, mosq: &Broker) -> Result<()> {
    let n: usize = std::env::var("BENCH_ROUNDTRIPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    println!(
        "\n{:<26} {:>9} {:>9} {:>9} {:>9}   ({n} messages, one every 5 ms, raw client with TCP_NODELAY)",
        "round trip (pub -> own sub)", "hub p50", "p99 µs", "mosq p50", "p99 µs"
    );
    for qos in [0u8, 1] {
        let label = format!("round trip qos{qos}");
        if let Ok(only) = std::env::var("BENCH_ONLY")
            && !label.contains(&only)
        {
            continue;
        }
        let gap = Duration::from_millis(5);
        let h = roundtrip::run(hub.port, &format!("h{qos}"), USER, PASS, qos, n, gap).await?;
        let m = roundtrip::run(mosq.port, &format!("m{qos}"), USER, PASS, qos, n, gap).await?;
        println!(
            "{:<26} {:>9} {:>9} {:>9} {:>9}",
            label,
            roundtrip::pct(&h, 0.50),
            roundtrip::pct(&h, 0.99),
            roundtrip::pct(&m, 0.50),
            roundtrip::pct(&m, 0.99)
        );
    }
    Ok(())
}

async fn bench(per_pub: usize) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = start_hub(dir.path()).await?;
    let mosq = start_mosquitto(dir.path()).await?;
    memory(&hub, &mosq).await?;
    // The peak RSS printed at the end is that of the message scenarios alone.
    hub.reset_peak()?;
    mosq.reset_peak()?;
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
    let label = "offline queue 4->1 qos1 64B";
    if std::env::var("BENCH_ONLY").map_or(true, |only| label.contains(&only)) {
        // Fewer messages than the other scenarios: the subscriber reads them all back afterwards.
        let n = (per_pub / 4).max(1);
        let h = offline_queue(hub.port, "h", n, 64).await?;
        let m = offline_queue(mosq.port, "m", n, 64).await?;
        println!(
            "{:<26} {:>14.0} {:>9} {:>9} {:>14.0} {:>9} {:>9} {:>7.2}x{}{}   ({n} per publisher, to the last PUBACK)",
            label,
            h.rate,
            "-",
            "-",
            m.rate,
            "-",
            "-",
            h.rate / m.rate.max(1.0),
            lost(&h),
            lost(&m)
        );
    }
    round_trips(&hub, &mosq).await?;
    println!(
        "\npeak RSS (message scenarios): {} {} KiB, {} {} KiB",
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
