//! End-to-end function benchmark (a program, not a test): a real `baetyl master` runs the function
//! manager with the SQL and the Python runtimes; a broker is the hub; a client publishes QoS 1 inputs and
//! measures, for each path, messages/s and the p50/p99 latency from publish to result.
//!
//!     cargo build --release -p baetyl --examples
//!     target/release/examples/bench_functions [--messages N] [--hub mosquitto|baetyl]
//!
//! The hub is Debian's mosquitto, or our own (`baetyl hub`) when the binary has that role.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use baetyl_testkit::mosquitto::Mosquitto;
use baetyl_testkit::mqtt::{Client, options};
use baetyl_testkit::net::{localhost, wait_accepting};
use baetyl_testkit::process::Process;
use baetyl_testkit::wait::poll_async;
use baetyl_testkit::{baetyl_bin, free_port, python3};
use rumqttc::QoS;

/// The hub of the run: Debian's mosquitto or `baetyl hub`, held until the end (stopped when dropped).
#[allow(dead_code)]
enum Hub {
    Mosquitto(Mosquitto),
    Baetyl(Process),
}

fn start_hub(kind: &str, dir: &Path, bin: &Path) -> anyhow::Result<(Hub, u16)> {
    match kind {
        "mosquitto" => {
            let m = Mosquitto::builder(&dir.join("mosquitto"))
                .persistence(false)
                .quiet()
                .option("max_queued_messages 1000000")
                .option("max_inflight_messages 0")
                .start()?;
            let port = m.port;
            Ok((Hub::Mosquitto(m), port))
        }
        "baetyl" => {
            let port = free_port();
            let conf = dir.join("hub.yml");
            std::fs::write(
                &conf,
                format!(
                    "listen: [tcp://127.0.0.1:{port}]\nprincipals:\n  - {{username: bench, password: bench-password, permissions: [{{action: pub, permit: ['#']}}, {{action: sub, permit: ['#']}}]}}\nstorage: {{dir: {}}}\n",
                    dir.join("hubdata").display()
                ),
            )?;
            let mut cmd = Command::new(bin);
            cmd.args(["hub", "-c"])
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let hub = Process::spawn(&mut cmd, "baetyl hub")?.term_on_drop(Duration::from_secs(15));
            wait_accepting(localhost(port), Duration::from_secs(20));
            Ok((Hub::Baetyl(hub), port))
        }
        other => bail!("unknown hub `{other}`: use mosquitto or baetyl"),
    }
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
    let tag = input.replace('/', "-");
    let opts = |role: &str| {
        let mut o = options(&format!("bench-{tag}-{role}"), port);
        o.set_inflight(200)
            .set_credentials("bench", "bench-password");
        o
    };
    // Results are timed as they arrive, by a task of their own.
    let mut sub = Client::connect(opts("sub")).await?;
    sub.subscribe(output, QoS::AtLeastOnce).await?;
    let lat: Arc<Mutex<HashMap<u64, Duration>>> = Arc::new(Mutex::new(HashMap::new()));
    let base = Instant::now();
    let l = lat.clone();
    let collector = tokio::spawn(async move {
        while let Ok(got) = sub.recv(Duration::from_secs(1)).await {
            let Some(p) = got else { continue };
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&p.payload)
                && let (Some(seq), Some(sent)) = (v["seq"].as_u64(), v["sent"].as_u64())
            {
                let now = base.elapsed();
                l.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(seq, now.saturating_sub(Duration::from_micros(sent)));
            }
        }
    });
    let mut publ = Client::connect(opts("pub")).await?;
    let results = |below: u64| {
        lat.lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .filter(|s| **s < below)
            .count()
    };
    // Warm-up, repeated until a result comes back: the rules may not have subscribed yet, and the first call
    // starts the pool. Warm-up results carry a sequence number above the measured ones.
    let warm = u64::MAX - 1;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if Instant::now() > deadline {
            bail!("no result on {output} after the warm-up messages");
        }
        publ.send(
            input,
            QoS::AtLeastOnce,
            false,
            serde_json::json!({"seq": warm, "sent": 0, "value": 1}).to_string(),
        )
        .await?;
        let back = poll_async(Duration::from_millis(500), || async {
            results(u64::MAX) > 0
        })
        .await;
        if back.is_ok() {
            break;
        }
    }
    let start = Instant::now();
    for seq in 0..n as u64 {
        let sent = base.elapsed().as_micros() as u64;
        publ.send(
            input,
            QoS::AtLeastOnce,
            false,
            serde_json::json!({"seq": seq, "sent": sent, "value": seq}).to_string(),
        )
        .await?;
    }
    let all = poll_async(Duration::from_secs(300), || async {
        results(n as u64) >= n
    })
    .await;
    let elapsed = start.elapsed();
    collector.abort();
    if all.is_err() {
        bail!("only {} of {n} results on {output}", results(n as u64));
    }
    let mut v: Vec<Duration> = lat
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(s, _)| **s < n as u64)
        .map(|(_, d)| *d)
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
    // The `baetyl` of this build profile (built if missing or older than its sources).
    let bin = baetyl_bin();
    let dir = tempfile::tempdir()?;
    let (_hub, port) = start_hub(&hub, dir.path(), bin)?;
    prepare(dir.path(), port)?;
    let log = dir.path().join("master.log");
    let out = std::fs::File::create(&log)?;
    let mut master = Command::new(bin);
    master
        .args(["master", "-w"])
        .arg(dir.path())
        .env("BAETYL_PYTHON", python3())
        .stdout(out.try_clone()?)
        .stderr(out);
    let _master = Process::spawn(&mut master, "baetyl master")?
        .with_log(&log)
        .term_on_drop(Duration::from_secs(15));
    println!(
        "function benchmark: {n} QoS 1 messages per path, hub {hub}, max 4 instances per function"
    );
    println!(
        "{:<8} {:>10} {:>10} {:>10}",
        "path", "msg/s", "p50 ms", "p99 ms"
    );
    for (name, input, output) in [("sql", "sql/in", "sql/out"), ("python", "py/in", "py/out")] {
        let (rate, p50, p99) = run_path(port, input, output, n)
            .await
            .with_context(|| format!("the {name} path"))?;
        println!(
            "{name:<8} {rate:>10.0} {:>10.2} {:>10.2}",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
    }
    Ok(())
}
