//! Load program (not a test): N simulated agents against one `baetyl cloud` process.
//!
//! ```sh
//! cargo run --release -p baetyl-cloud --example load -- --agents 1000
//! cargo run --release -p baetyl-cloud --example load -- --agents 10000 [--database postgres://...]
//! ```
//!
//! The server runs in a child process (this program re-executed with `--serve`), so its resident memory is its
//! own. The program makes N devices with one-time tokens (tag `load`), registers each with a key and a request
//! of its own, links them all (WebSocket over two-way TLS, as the agent does), then measures:
//! - reports at the agent's pace (every `--interval`, a realistic inspect of five services): reports/s is what
//!   the server recorded (its own counter);
//! - fan-out: one deployment to the tag, while agents report; the time until every agent holds its signed
//!   desired state;
//! - reports flat out for `--burst` (the server records each device at most once a second and keeps the newest);
//! - the server's RSS (and peak) with every device linked, and after the fan-out.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use baetyl_agent::https::{Client, Endpoint, client_config};
use baetyl_agent::proto::{Down, Report, Summary, Up};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Debug)]
struct Args {
    /// How many simulated agents.
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Report interval at the agent's pace.
    #[arg(long, default_value = "20s")]
    interval: humantime::Duration,
    /// How long to measure at the agent's pace.
    #[arg(long, default_value = "40s")]
    steady: humantime::Duration,
    /// How long to measure flat out.
    #[arg(long, default_value = "10s")]
    burst: humantime::Duration,
    /// Registrations and link handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// PostgreSQL URL for the server (default: its embedded SQLite).
    #[arg(long)]
    database: Option<String>,
    /// Internal: run the server (the child process).
    #[arg(long, hide = true)]
    serve: Option<std::path::PathBuf>,
    #[arg(long, hide = true)]
    port: Option<u16>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Some(dir) = &args.serve {
        return rt.block_on(serve(
            dir.clone(),
            args.port.unwrap_or(0),
            args.database.clone(),
        ));
    }
    rt.block_on(drive(args))
}

fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

async fn serve(dir: std::path::PathBuf, port: u16, database: Option<String>) -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt().with_env_filter("warn").try_init();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let cfg = baetyl_cloud::CloudConfig {
        data_dir: dir,
        database,
        listen: listener.local_addr()?,
        ..Default::default()
    };
    baetyl_cloud::run(cfg, listener, baetyl_sdk::service::shutdown_signal()).await?;
    Ok(())
}

/// The server's resident and peak memory (kB) from /proc.
fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(kb: u64) -> String {
    format!("{:.0} MiB", kb as f64 / 1024.0)
}

/// An inspect the size of a small device's: five services with figures.
fn sample_inspect(n: usize) -> Value {
    let services: Vec<Value> = ["hub", "timer", "function-manager", "function-sql", "agent"]
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({"name": s, "image": format!("baetyl-{s}"), "replica": 1, "instances": [{
                "name": s, "status": "running", "start_time": "2026-01-01T00:00:00Z", "restarts": 0,
                "process": {"pid": 1000 + i + n, "name": s}, "cpu_stats": {"used_percent": 0.4, "seconds": 12.5},
                "mem_stats": {"rss": 25_000_000 + i}, "processes": 1, "dynamic": false}]})
        })
        .collect();
    json!({"time": "2026-01-01T00:00:00Z", "error": "",
           "software": {"os": "linux", "arch": "x86_64", "pwd": "/var/lib/baetyl", "mode": "native", "bin_version": "0.1.0", "conf_version": "bootstrap"},
           "hardware": {"host_stats": {"hostname": format!("load-{n}"), "uptime": 1234, "procs": 90},
                        "mem_stats": {"total": 4_000_000_000u64, "used": 1_000_000_000u64, "used_percent": 25.0},
                        "cpu_stats": {"used_percent": 3.0, "cores": 4},
                        "disk_stats": {"path": "/var/lib/baetyl", "total": 8_000_000_000u64, "used": 1_000_000_000u64},
                        "net_stats": []},
           "services": services, "volumes": []})
}

struct Shared {
    /// The agent's report pace; zero = flat out.
    pace: watch::Receiver<Duration>,
    desired: AtomicUsize,
    sent: AtomicU64,
    linked: AtomicUsize,
    failed: AtomicUsize,
}

async fn agent(
    n: usize,
    client: Client,
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    ready: tokio::sync::mpsc::Sender<()>,
) {
    let ws = {
        let _permit = slots.acquire().await;
        match client
            .websocket(baetyl_agent::proto::LINK_PATH, 16 << 20)
            .await
        {
            Ok(ws) => ws,
            Err(e) => {
                eprintln!("agent {n}: {e}");
                shared.failed.fetch_add(1, Ordering::Relaxed);
                let _ = ready.send(()).await;
                return;
            }
        }
    };
    let (mut sink, mut stream) = ws.split();
    let text = |up: &Up| Message::text(serde_json::to_string(up).unwrap_or_default());
    if sink
        .send(text(&Up::Hello {
            agent_version: "load".into(),
            applied_revision: 0,
        }))
        .await
        .is_err()
    {
        shared.failed.fetch_add(1, Ordering::Relaxed);
        let _ = ready.send(()).await;
        return;
    }
    shared.linked.fetch_add(1, Ordering::Relaxed);
    let _ = ready.send(()).await;
    let report = text(&Up::Report(Box::new(Report {
        time: baetyl_agent::proto::now(),
        applied_revision: 0,
        last: None,
        summary: Summary {
            app_version: "bootstrap".into(),
            services: 5,
            running: 5,
            cpu_percent: Some(3.0),
            mem_used: Some(1 << 30),
            mem_total: Some(4 << 30),
            error: String::new(),
        },
        inspect: sample_inspect(n),
    })));
    let mut pace = shared.pace.clone();
    let mut got_desired = false;
    // Spread the first reports over one interval, as agents started at different times would.
    let first = pace.borrow().mul_f64((n % 1000) as f64 / 1000.0);
    let mut next = tokio::time::Instant::now() + first;
    loop {
        let every = *pace.borrow();
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    if !got_desired && matches!(serde_json::from_str::<Down>(t.as_str()), Ok(Down::Desired { .. })) {
                        got_desired = true;
                        shared.desired.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(Ok(_)) => {}
                _ => {
                    shared.failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            },
            _ = tokio::time::sleep_until(next), if !every.is_zero() => {
                if sink.send(report.clone()).await.is_err() { return; }
                shared.sent.fetch_add(1, Ordering::Relaxed);
                next += every;
            }
            r = sink.send(report.clone()), if every.is_zero() => {
                if r.is_err() { return; }
                shared.sent.fetch_add(1, Ordering::Relaxed);
            }
            _ = pace.changed() => { next = tokio::time::Instant::now(); }
        }
    }
}

async fn drive(args: Args) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("baetyl-load-").tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--serve")
        .arg(dir.path().join("data"))
        .args(["--port", &port.to_string()]);
    if let Some(db) = &args.database {
        cmd.args(["--database", db]);
    }
    let mut server = cmd.spawn().context("start the server")?;
    let pid = server.id();
    let url = format!("https://127.0.0.1:{port}");
    let ca_path = dir.path().join("data/ca.crt");
    let started = Instant::now();
    let admin = loop {
        if let (Ok(ca), Ok(token)) = (
            std::fs::read(&ca_path),
            std::fs::read_to_string(dir.path().join("data/admin.token")),
        ) {
            let c = Client::new(Endpoint::parse(&url)?, client_config(Some(&ca), None)?)
                .with_bearer(token.trim());
            if c.call("GET", "/healthz", &[], vec![], 100).await.is_ok() {
                break c;
            }
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("the server did not start");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ca = std::fs::read(&ca_path)?;
    let (idle, _) = rss(pid);
    println!(
        "server pid {pid} on {url} ({}), idle RSS {}",
        args.database
            .as_deref()
            .map(|_| "PostgreSQL")
            .unwrap_or("SQLite"),
        mib(idle)
    );

    // Devices with one-time tokens, registered concurrently, each with its own key.
    let t = Instant::now();
    let slots = Arc::new(Semaphore::new(args.concurrency));
    let mut joins = Vec::new();
    for n in 0..args.agents {
        let admin = admin.clone();
        let slots = slots.clone();
        let ca = ca.clone();
        let url = url.clone();
        joins.push(tokio::spawn(async move {
            let _permit = slots.acquire().await;
            let made: Value = admin
                .json(
                    "POST",
                    "/api/v1/devices",
                    Some(&json!({"name": format!("load-{n:05}"), "tags": ["load"]})),
                )
                .await?;
            let token = made["token"].as_str().unwrap_or_default().to_string();
            let key = rcgen::KeyPair::generate()?;
            let mut params = rcgen::CertificateParams::default();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, format!("load-{n}"));
            let csr = params.serialize_request(&key)?.pem()?;
            let anon = Client::new(Endpoint::parse(&url)?, client_config(Some(&ca), None)?);
            let resp: baetyl_agent::proto::ProvisionResponse = anon
                .json(
                    "POST",
                    baetyl_agent::proto::PROVISION_PATH,
                    Some(&json!({"token": token, "csr": csr})),
                )
                .await?;
            let tls = client_config(
                Some(&ca),
                Some((resp.certificate.as_bytes(), key.serialize_pem().as_bytes())),
            )?;
            anyhow::Ok(Client::new(Endpoint::parse(&url)?, tls))
        }));
    }
    let mut clients = Vec::with_capacity(args.agents);
    for j in joins {
        clients.push(j.await??);
    }
    println!(
        "registered {} devices in {:.1} s ({:.0}/s)",
        args.agents,
        t.elapsed().as_secs_f64(),
        args.agents as f64 / t.elapsed().as_secs_f64()
    );

    // Link them all.
    let (pace_tx, pace_rx) = watch::channel(Duration::from(args.interval));
    let shared = Arc::new(Shared {
        pace: pace_rx,
        desired: AtomicUsize::new(0),
        sent: AtomicU64::new(0),
        linked: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
    });
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(args.agents.max(1));
    let t = Instant::now();
    for (n, c) in clients.into_iter().enumerate() {
        tokio::spawn(agent(n, c, shared.clone(), slots.clone(), ready_tx.clone()));
    }
    for _ in 0..args.agents {
        ready_rx.recv().await;
    }
    let linked = shared.linked.load(Ordering::Relaxed);
    println!(
        "linked {linked} agents in {:.1} s ({} failed)",
        t.elapsed().as_secs_f64(),
        shared.failed.load(Ordering::Relaxed)
    );
    if linked < args.agents {
        bail!("not every agent could link");
    }
    let (linked_rss, _) = rss(pid);
    println!("server RSS with {linked} links: {}", mib(linked_rss));

    // The server's own count of recorded reports (a long timeout: under a flood of reports it answers late).
    let admin_long = admin.clone().with_timeout(Duration::from_secs(600));
    let fleet_reports = || async {
        admin_long
            .json::<Value>("GET", "/api/v1/fleet", None)
            .await
            .map(|v| v["reports_here"].as_u64().unwrap_or(0))
            .context("the fleet view")
    };
    // At the agent's pace.
    let before = fleet_reports().await?;
    let t = Instant::now();
    tokio::time::sleep(args.steady.into()).await;
    let done = fleet_reports().await?.saturating_sub(before);
    let offered = args.agents as f64 / Duration::from(args.interval).as_secs_f64();
    println!(
        "reports at the agents' pace (every {}): {:.0}/s recorded, {:.0}/s offered",
        args.interval,
        done as f64 / t.elapsed().as_secs_f64(),
        offered
    );
    // Fan-out: one deployment to the tag.
    let app = "version: v1\napp_version: load-1\nservices:\n  hub: {image: baetyl-hub, volumes: [conf:/etc/baetyl]}\nvolumes:\n  conf: {path: var/db/baetyl/conf/hub}\n";
    let conf = b"listen: [tcp://0.0.0.0:1883]\nprincipals: [{username: u, password: '${secret.hub}', permissions: [{action: pub, permit: ['#']}]}]\n".to_vec();
    let mut refs = Vec::new();
    for data in [app.as_bytes().to_vec(), conf] {
        let sha = baetyl_agent::crypto::sha256_hex(&data);
        refs.push(json!({"sha256": sha, "size": data.len()}));
        admin
            .call("PUT", &format!("/api/v1/blobs/{sha}"), &[], data, 1 << 20)
            .await?;
    }
    let body = json!({"application": refs[0], "volumes": {"conf": [{"path": "service.yml", "sha256": refs[1]["sha256"], "size": refs[1]["size"]}]}});
    admin
        .json::<Value>("POST", "/api/v1/apps/load/versions", Some(&body))
        .await?;
    let t = Instant::now();
    let r: Value = admin_long
        .json(
            "POST",
            "/api/v1/deployments",
            Some(&json!({"app": "load", "version": "load-1", "tag": "load"})),
        )
        .await?;
    let issued = t.elapsed();
    while shared.desired.load(Ordering::Relaxed) < args.agents {
        if t.elapsed() > Duration::from_secs(600) {
            bail!(
                "only {} of {} agents got the desired state in 10 min",
                shared.desired.load(Ordering::Relaxed),
                args.agents
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let all = t.elapsed();
    let (after, peak) = rss(pid);
    println!(
        "fan-out of one deployment to {} devices: issued and signed in {:.2} s, at every agent in {:.2} s",
        r["devices"],
        issued.as_secs_f64(),
        all.as_secs_f64()
    );
    println!(
        "server RSS after the fan-out: {} (peak {})",
        mib(after),
        mib(peak)
    );
    // Flat out.
    // Counted from before the flood to after it (the fleet view would queue behind it); the reports waiting on
    // each link at the end (at most one a device) are recorded within `report_min_interval` and counted too.
    let before = fleet_reports().await?;
    pace_tx.send_replace(Duration::ZERO);
    let t = Instant::now();
    tokio::time::sleep(args.burst.into()).await;
    pace_tx.send_replace(Duration::from_secs(3600));
    let flood = t.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let done = fleet_reports().await?.saturating_sub(before);
    let burst_rate = done as f64 / flood.as_secs_f64();
    println!(
        "reports flat out: {burst_rate:.0}/s recorded (each device at most one per second: link.report_min_interval)"
    );

    let (_, peak) = rss(pid);
    println!(
        "SUMMARY agents={} reports_per_s_flat_out={burst_rate:.0} fanout_s={:.2} rss_linked={} rss_peak={}",
        args.agents,
        all.as_secs_f64(),
        mib(linked_rss),
        mib(peak)
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = tokio::task::spawn_blocking(move || server.wait()).await;
    Ok(())
}
