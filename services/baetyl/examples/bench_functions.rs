//! End-to-end function benchmark (a program, not a test): a real `baetyl master` runs the function
//! manager with the SQL and the Python runtimes; a broker is the hub; a client publishes QoS 1 inputs and
//! measures, for each path, messages/s and the p50/p99 latency from publish to result.
//!
//!     cargo build --release -p baetyl --bins --examples
//!     target/release/examples/bench_functions [--messages N] [--hub mosquitto|baetyl] [--rate R]
//!
//! The hub is Debian's mosquitto, or our own (`baetyl hub`) when the binary has that role. Each function runs
//! twice in the same run: as configured with v1's defaults (one call per instance, the baseline) and with
//! `instance.concurrency` (many calls in flight per instance over its one HTTP/2 connection). Each path is
//! measured as a burst of N messages (throughput) and paced at R messages/s (latency at a low rate).

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

/// Calls in flight per instance on the fast paths.
const CONCURRENCY: u32 = 16;

/// The paths measured: (name, input topic, output topic).
const PATHS: [(&str, &str, &str); 4] = [
    ("sql v1", "sqlv1/in", "sqlv1/out"),
    ("sql", "sql/in", "sql/out"),
    ("python v1", "pyv1/in", "pyv1/out"),
    ("python", "py/in", "py/out"),
];

fn prepare(dir: &Path, port: u16) -> anyhow::Result<()> {
    let rule = |id: &str, topic: &str, function: &str| {
        format!(
            "  - clientid: {id}\n    subscribe: {{topic: {topic}/in, qos: 1}}\n    function: {{name: {function}}}\n    publish: {{topic: {topic}/out, qos: 1}}\n"
        )
    };
    // Four instances each, started ahead of the run; the v1 functions with v1's one call per instance.
    let function = |name: &str, service: &str, concurrency: u32| {
        format!(
            "  - name: {name}\n    service: {service}\n    instance: {{min: 4, max: 4, concurrency: {concurrency}}}\n"
        )
    };
    write(
        dir,
        "etc/fconf/service.yml",
        &format!(
            "hub: {{address: \"tcp://127.0.0.1:{port}\", username: bench, password: bench-password}}\nrules:\n{}{}{}{}functions:\n{}{}{}{}",
            rule("b-sqlv1", "sqlv1", "f-sqlv1"),
            rule("b-sql", "sql", "f-sql"),
            rule("b-pyv1", "pyv1", "f-pyv1"),
            rule("b-py", "py", "f-py"),
            function("f-sqlv1", "function-sql", 1),
            function("f-sql", "function-sql", CONCURRENCY),
            function("f-pyv1", "function-python", 1),
            function("f-py", "function-python", CONCURRENCY),
        ),
    )?;
    let sql = "select seq, sent, value * 2 as doubled where value >= 0";
    write(
        dir,
        "etc/sqlconf/service.yml",
        &format!(
            "functions:\n  - name: f-sqlv1\n    handler: \"{sql}\"\n  - name: f-sql\n    handler: \"{sql}\"\n"
        ),
    )?;
    write(
        dir,
        "etc/pyconf/service.yml",
        "functions:\n  - name: f-pyv1\n    handler: index.handler\n    codedir: var/db/baetyl/code\n  - name: f-py\n    handler: index.handler\n    codedir: var/db/baetyl/code\n",
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

/// How a path is loaded: a burst of N messages at once, or N messages paced at R per second.
#[derive(Clone, Copy)]
enum Load {
    Burst(usize),
    Paced { n: usize, rate: f64 },
}

/// Per load: (msg/s, p50, p99).
type Figures = (f64, Duration, Duration);

/// Runs each load on one path in turn (publishing on `input`, timing results on `output`).
async fn run_path(
    port: u16,
    input: &str,
    output: &str,
    loads: &[Load],
) -> anyhow::Result<Vec<Figures>> {
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
    let results = |range: std::ops::Range<u64>| {
        lat.lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .filter(|s| range.contains(s))
            .count()
    };
    // Warm-up, repeated until a result comes back: the rules may not have subscribed yet. Warm-up results
    // carry a sequence number above the measured ones.
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
            results(warm..u64::MAX) > 0
        })
        .await;
        if back.is_ok() {
            break;
        }
    }
    let mut figures = Vec::new();
    let mut first = 0u64;
    for load in loads {
        let (n, gap) = match *load {
            Load::Burst(n) => (n, None),
            Load::Paced { n, rate } => (n, Some(Duration::from_secs_f64(1.0 / rate))),
        };
        let range = first..first + n as u64;
        let start = Instant::now();
        for (i, seq) in range.clone().enumerate() {
            if let Some(gap) = gap {
                tokio::time::sleep_until((start + gap * i as u32).into()).await;
            }
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
            results(range.clone()) >= n
        })
        .await;
        let elapsed = start.elapsed();
        if all.is_err() {
            bail!("only {} of {n} results on {output}", results(range));
        }
        let mut v: Vec<Duration> = lat
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(s, _)| range.contains(s))
            .map(|(_, d)| *d)
            .collect();
        v.sort();
        let pct = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
        figures.push((n as f64 / elapsed.as_secs_f64(), pct(0.50), pct(0.99)));
        first = range.end;
    }
    collector.abort();
    Ok(figures)
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
        .unwrap_or(10_000);
    let rate: f64 = opt("--rate")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(100.0);
    // Three seconds' worth at the paced rate.
    let paced = ((rate * 3.0) as usize).max(10);
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
        "function benchmark: bursts of {n} QoS 1 messages and {paced} paced at {rate}/s per path, hub {hub}, 4 instances per function; \"v1\": one call per instance (the baseline), else instance.concurrency {CONCURRENCY}"
    );
    println!(
        "{:<10} {:>10} {:>10} {:>10} {:>14} {:>14}",
        "path", "msg/s", "p50 ms", "p99 ms", "paced p50 ms", "paced p99 ms"
    );
    let loads = [Load::Burst(n), Load::Paced { n: paced, rate }];
    for (name, input, output) in PATHS {
        let f = run_path(port, input, output, &loads)
            .await
            .with_context(|| format!("the {name} path"))?;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "{name:<10} {:>10.0} {:>10.2} {:>10.2} {:>14.2} {:>14.2}",
            f[0].0,
            ms(f[0].1),
            ms(f[0].2),
            ms(f[1].1),
            ms(f[1].2)
        );
    }
    Ok(())
}
