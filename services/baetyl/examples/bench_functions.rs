//! End-to-end function benchmark (a program, not a test): a real `baetyl master` runs the function
//! manager with the SQL and the Python runtimes; a broker is the hub; a client publishes QoS 1 inputs and
//! measures, for each path, messages/s and the p50/p99 latency from publish to result.
//!
//!     cargo build --release -p baetyl --examples
//!     target/release/examples/bench_functions [--messages N] [--hub mosquitto|baetyl]
//!
//! The hub is Debian's mosquitto, or our own (`baetyl hub`) when the binary has that role.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
    }
}

fn wait_port(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on {port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn start_hub(kind: &str, dir: &Path, bin: &Path, port: u16) -> anyhow::Result<Proc> {
    let child = match kind {
        "mosquitto" => {
            let conf = dir.join("mosquitto.conf");
            std::fs::write(
                &conf,
                format!(
                    "listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\nmax_inflight_messages 0\n"
                ),
            )?;
            Command::new("mosquitto")
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?
        }
        "baetyl" => {
            let conf = dir.join("hub.yml");
            std::fs::write(
                &conf,
                format!(
                    "listen: [tcp://127.0.0.1:{port}]\nprincipals:\n  - {{username: bench, password: bench-password, permissions: [{{action: pub, permit: ['#']}}, {{action: sub, permit: ['#']}}]}}\nstorage: {{dir: {}}}\n",
                    dir.join("hubdata").display()
                ),
            )?;
            Command::new(bin)
                .args(["hub", "-c"])
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?
        }
        other => bail!("unknown hub `{other}`: use mosquitto or baetyl"),
    };
    let p = Proc(child);
    wait_port(port)?;
    Ok(p)
}

fn write(dir: &Path, rel: &str, text: &str) -> anyhow::Result<()> {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().context("parent")?)?;
    std::fs::write(p, text)?;
    Ok(())
}

fn prepare(dir: &Path, port: u16) -> anyhow::Result<()> {
    write(
        dir,
        "etc/fconf/service.yml",
        &format!(
            "hub: {{address: \"tcp://127.0.0.1:{port}\", username: bench, password: bench-password}}\nrules:\n  - clientid: b-sql\n    subscribe: {{topic: sql/in, qos: 1}}\n    function: {{name: f-sql}}\n    publish: {{topic: sql/out, qos: 1}}\n  - clientid: b-py\n    subscribe: {{topic: py/in, qos: 1}}\n    function: {{name: f-py}}\n    publish: {{topic: py/out, qos: 1}}\nfunctions:\n  - name: f-sql\n    service: function-sql\n    instance: {{min: 1, max: 4}}\n  - name: f-py\n    service: function-python\n    instance: {{min: 1, max: 4}}\n"
        ),
    )?;
    write(
        dir,
        "etc/sqlconf/service.yml",
        "functions:\n  - name: f-sql\n    handler: \"select seq, sent, value * 2 as doubled where value >= 0\"\n",
    )?;
    write(
        dir,
        "etc/pyconf/service.yml",
        "functions:\n  - name: f-py\n    handler: index.handler\n    codedir: var/db/baetyl/code\n",
    )?;
    write(
        dir,
        "code/index.py",
        "def handler(event, context):\n    return {'seq': event['seq'], 'sent': event['sent'], 'doubled': event['value'] * 2}\n",
    )?;
    write(
        dir,
        "var/db/baetyl/application.yml",
        "services:\n  function-manager:\n    image: baetyl-function-manager\n    volumes: [\"./etc/fconf:/etc/baetyl\"]\n  function-sql:\n    image: baetyl-function-sql\n    replica: 0\n    volumes: [\"./etc/sqlconf:/etc/baetyl\"]\n  function-python:\n    image: baetyl-function-python3\n    replica: 0\n    volumes: [\"./etc/pyconf:/etc/baetyl\", \"./code:/var/db/baetyl/code\"]\n",
    )?;
    write(dir, "etc/baetyl/conf.yml", "grace: 5s\n")?;
    Ok(())
}

/// Publishes `n` inputs on `input` and waits for all results on `output`; answers (msgs/s, p50, p99).
async fn run_path(
    port: u16,
    input: &str,
    output: &str,
    n: usize,
) -> anyhow::Result<(f64, Duration, Duration)> {
    let mut opts = MqttOptions::new(
        format!("bench-{}", input.replace('/', "-")),
        "127.0.0.1",
        port,
    );
    opts.set_keep_alive(Duration::from_secs(30))
        .set_inflight(200)
        .set_credentials("bench", "bench-password");
    let (client, mut el) = AsyncClient::new(opts, 10_000);
    let lat: Arc<Mutex<HashMap<u64, Duration>>> = Arc::new(Mutex::new(HashMap::new()));
    let base = Instant::now();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let mut ready = Some(ready_tx);
    let (l, c, out) = (lat.clone(), client.clone(), output.to_string());
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = c.subscribe(out.clone(), QoS::AtLeastOnce).await;
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&p.payload)
                        && let (Some(seq), Some(sent)) = (v["seq"].as_u64(), v["sent"].as_u64())
                    {
                        let now = base.elapsed();
                        l.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(seq, now.saturating_sub(Duration::from_micros(sent)));
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(20), ready_rx)
        .await
        .context("no SUBACK from the hub within 20 s")??;
    // Warm-up, repeated until a result comes back: the rules may not have subscribed yet, and the first call
    // starts the pool.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !lat
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains_key(&(u64::MAX - 1))
    {
        if Instant::now() > deadline {
            bail!("no result on {output} after the warm-up messages");
        }
        client
            .publish(
                input,
                QoS::AtLeastOnce,
                false,
                serde_json::json!({"seq": u64::MAX - 1, "sent": 0, "value": 1}).to_string(),
            )
            .await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    lat.lock().unwrap_or_else(|e| e.into_inner()).clear();
    let start = Instant::now();
    for seq in 0..n as u64 {
        let sent = base.elapsed().as_micros() as u64;
        client
            .publish(
                input,
                QoS::AtLeastOnce,
                false,
                serde_json::json!({"seq": seq, "sent": sent, "value": seq}).to_string(),
            )
            .await?;
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while lat.lock().unwrap_or_else(|e| e.into_inner()).len() < n {
        if Instant::now() > deadline {
            bail!(
                "only {} of {n} results on {output}",
                lat.lock().unwrap_or_else(|e| e.into_inner()).len()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = start.elapsed();
    let mut v: Vec<Duration> = lat
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .copied()
        .collect();
    v.sort();
    let pct = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
    Ok((n as f64 / elapsed.as_secs_f64(), pct(0.50), pct(0.99)))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let n: usize = opt("--messages")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(2000);
    let hub = opt("--hub").unwrap_or_else(|| "mosquitto".into());
    let exe = std::env::current_exe()?;
    let bin: PathBuf = exe
        .parent()
        .and_then(Path::parent)
        .context("binary dir")?
        .join("baetyl");
    if !bin.exists() {
        bail!(
            "{} not found: build it with cargo build --release -p baetyl",
            bin.display()
        );
    }
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python3");
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let _hub = start_hub(&hub, dir.path(), &bin, port)?;
    prepare(dir.path(), port)?;
    let log = std::fs::File::create(dir.path().join("master.log"))?;
    let _master = Proc(
        Command::new(&bin)
            .args(["master", "-w"])
            .arg(dir.path())
            .env("BAETYL_PYTHON", &python)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?,
    );
    println!(
        "function benchmark: {n} QoS 1 messages per path, hub {hub}, max 4 instances per function"
    );
    println!(
        "{:<8} {:>10} {:>10} {:>10}",
        "path", "msg/s", "p50 ms", "p99 ms"
    );
    for (name, input, output) in [("sql", "sql/in", "sql/out"), ("python", "py/in", "py/out")] {
        let (rate, p50, p99) = run_path(port, input, output, n).await?;
        println!(
            "{name:<8} {rate:>10.0} {:>10.2} {:>10.2}",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
    }
    Ok(())
}
