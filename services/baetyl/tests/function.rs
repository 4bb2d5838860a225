//! End-to-end tests of functions through the native master: our hub, the function manager, the SQL runtime
//! and the Python runtime all run as services of one application; rumqttc clients publish inputs and collect
//! results.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A test client: publishes, and collects what arrives on its subscriptions.
struct Peer {
    client: AsyncClient,
    got: Received,
}

impl Peer {
    async fn connect(port: u16, id: &str, topics: &[&str]) -> Peer {
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(1 << 20, 1 << 20)
            .set_credentials("tester", "tester-password");
        let (client, mut el) = AsyncClient::new(opts, 1000);
        let got = Arc::new(Mutex::new(Vec::new()));
        let (g, c, subs) = (
            got.clone(),
            client.clone(),
            topics.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
        );
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut ready_tx = Some(ready_tx);
        tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        for t in &subs {
                            let _ = c.subscribe(t.clone(), QoS::AtLeastOnce).await;
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => g
                        .lock()
                        .expect("lock")
                        .push((p.topic.clone(), p.payload.to_vec())),
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        if !topics.is_empty() {
            tokio::time::timeout(Duration::from_secs(10), ready_rx)
                .await
                .expect("suback")
                .expect("suback");
        }
        Peer { client, got }
    }

    async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .expect("publish");
    }

    fn on(&self, topic: &str) -> Vec<Vec<u8>> {
        self.got
            .lock()
            .expect("lock")
            .iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, p)| p.clone())
            .collect()
    }

    fn json_on(&self, topic: &str) -> Vec<Value> {
        self.on(topic)
            .iter()
            .filter_map(|p| serde_json::from_slice(p).ok())
            .collect()
    }

    async fn wait_for(&self, topic: &str, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.json_on(topic);
            if v.len() >= n {
                return v;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {n} message(s) on {topic}; got {v:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn python() -> String {
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python3");
    if venv.exists() {
        venv.display().to_string()
    } else {
        "python3".into()
    }
}

const HANDLER: &str = r#"
import time
import fancylib  # a third-party package shipped in vendor/


def handler(event, context):
    if isinstance(event, bytes):
        return b"raw:" + event
    if event.get("fail"):
        raise ValueError("asked to fail")
    if event.get("sleep"):
        time.sleep(event["sleep"])
    if event.get("drop"):
        return None
    return {
        "hi": fancylib.greet(event.get("name", "?")),
        "n": event.get("n"),
        "topic": context["messageTopic"],
        "qos": context["messageQOS"],
        "function": context["functionName"],
        "has_invokeid": bool(context["invokeid"]),
    }
"#;

fn setup(w: &Work, port: u16) {
    w.write(
        "etc/fconf/service.yml",
        &format!(
            r#"
hub: {{address: "tcp://127.0.0.1:{port}", username: functions, password: functions-password}}
rules:
  - clientid: rule-sql
    subscribe: {{topic: sql/in, qos: 1}}
    function: {{name: filter}}
    publish: {{topic: sql/out, qos: 1}}
  - clientid: rule-py
    subscribe: {{topic: py/in, qos: 1}}
    function: {{name: sayhi}}
    publish: {{topic: py/out, qos: 1}}
functions:
  - name: filter
    service: function-sql
    instance: {{min: 0, max: 1, idletime: 30s}}
  - name: sayhi
    service: function-python
    instance: {{min: 0, max: 2, idletime: 2s}}
    timeout: 3s
"#
        ),
    );
    w.write(
        "etc/hubconf/service.yml",
        &format!(
            "listen: [tcp://127.0.0.1:{port}]\nprincipals:\n  - {{username: tester, password: tester-password, permissions: [{{action: pub, permit: ['#']}}, {{action: sub, permit: ['#']}}]}}\n  - {{username: functions, password: functions-password, permissions: [{{action: pub, permit: ['#']}}, {{action: sub, permit: ['#']}}]}}\nstorage: {{dir: var/db/baetyl/data}}\n"
        ),
    );
    w.write(
        "etc/sqlconf/service.yml",
        "functions:\n  - name: filter\n    handler: \"select qos() as qos, topic() as topic, * where id < 10\"\n",
    );
    w.write(
        "etc/pyconf/service.yml",
        "functions:\n  - name: sayhi\n    handler: index.handler\n    codedir: var/db/baetyl/code\n",
    );
    w.write("code/index.py", HANDLER);
    w.write(
        "code/vendor/fancylib/__init__.py",
        "def greet(name):\n    return 'hello ' + name\n",
    );
    w.app(
        r#"
services:
  hub:
    image: baetyl-hub
    volumes: ["./etc/hubconf:/etc/baetyl", "./hubdata:/var/db/baetyl/data"]
  function-manager:
    image: baetyl-function-manager
    depends_on: [hub]
    volumes: ["./etc/fconf:/etc/baetyl"]
    restart: {policy: always, backoff: {min: 200ms, max: 1s}}
  function-sql:
    image: baetyl-function-sql
    replica: 0
    volumes: ["./etc/sqlconf:/etc/baetyl"]
    restart: {policy: "no"}
  function-python:
    image: baetyl-function-python3
    replica: 0
    volumes: ["./etc/pyconf:/etc/baetyl", "./code:/var/db/baetyl/code"]
    restart: {policy: "no"}
"#,
    );
}

/// A master whose environment names the Python runtime's interpreter (with grpcio) for its services.
fn start(w: &Work) -> Master {
    let log = w.path().join("master.log");
    let out = std::fs::File::create(&log).expect("log");
    let child = Command::new(BIN)
        .args(["master", "-w"])
        .arg(w.path())
        .env("BAETYL_PYTHON", python())
        .stdout(out.try_clone().expect("dup"))
        .stderr(out)
        .spawn()
        .expect("master");
    let m = Master {
        child,
        workdir: w.path().to_path_buf(),
        log,
    };
    wait_until("the master", LONG, || m.log_text().contains("master ready"));
    m
}

/// Waits until the function manager reports both rules subscribed: inputs published before a rule's first
/// subscription would have no session to be kept in.
async fn wait_rules_subscribed(m: &Master) {
    let deadline = Instant::now() + LONG;
    loop {
        if let Some(v) = m.instance("function-manager", "function-manager").await {
            let rules = &v["rules"];
            if rules["rule-sql"]["subscribed"] == true && rules["rule-py"]["subscribed"] == true {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the function manager's rules never subscribed\n{}",
            m.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes the application (hub, manager, runtimes) on a free port, starts the master, and waits until the hub
/// listens and the manager's rules are subscribed; answers the master and the hub's port.
async fn start_functions(w: &Work) -> (Master, u16) {
    let port = free_port();
    setup(w, port);
    let m = start(w);
    wait_until("the hub to listen", LONG, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    wait_rules_subscribed(&m).await;
    (m, port)
}

async fn dynamic_instances(m: &Master, svc: &str) -> Vec<Value> {
    m.inspect().await["services"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == svc).cloned())
        .and_then(|s| s["instances"].as_array().cloned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_and_python_functions_filter_errors_timeouts_and_pools() {
    let w = Work::new();
    let (m, port) = start_functions(&w).await;
    let peer = Peer::connect(port, "tester", &["sql/out", "py/out"]).await;

    // SQL: projection + filter + error payload for a non-JSON input.
    peer.publish("sql/in", json!({"id": 3, "name": "a"}).to_string())
        .await;
    peer.publish("sql/in", json!({"id": 12}).to_string()).await;
    peer.publish("sql/in", "not json").await;
    peer.publish("sql/in", json!({"id": 4}).to_string()).await;
    let out = peer.wait_for("sql/out", 3, LONG).await;
    assert_eq!(
        out[0],
        json!({"qos": 1, "topic": "sql/in", "id": 3, "name": "a"})
    );
    assert_eq!(out[1]["errorType"], "PayloadError", "{}", out[1]);
    assert!(
        out[1]["errorMessage"]
            .as_str()
            .unwrap_or_default()
            .contains("not JSON")
    );
    assert_eq!(out[1]["functionMessage"]["Payload"], "not json");
    assert_eq!(
        out[2]["id"], 4,
        "max 1 keeps the order; id 12 was filtered out"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        peer.on("sql/out").len(),
        3,
        "the filtered message published nothing"
    );

    // Python: result, vendored package, context, raw bytes, filter, exception, timeout.
    peer.publish("py/in", json!({"name": "edge", "n": 1}).to_string())
        .await;
    let out = peer.wait_for("py/out", 1, LONG).await;
    assert_eq!(
        out[0],
        json!({"hi": "hello edge", "n": 1, "topic": "py/in", "qos": 1, "function": "sayhi", "has_invokeid": true})
    );
    peer.publish("py/in", json!({"drop": true}).to_string())
        .await;
    peer.publish("py/in", json!({"fail": true}).to_string())
        .await;
    let out = peer.wait_for("py/out", 2, LONG).await;
    assert_eq!(out[1]["errorType"], "ValueError", "{}", out[1]);
    assert!(
        out[1]["errorMessage"]
            .as_str()
            .unwrap_or_default()
            .contains("asked to fail")
    );
    peer.publish("py/in", b"\x01binary".to_vec()).await;
    let deadline = Instant::now() + LONG;
    while !peer.on("py/out").iter().any(|p| p == b"raw:\x01binary") {
        assert!(
            Instant::now() < deadline,
            "raw bytes result never came: {:?}",
            peer.on("py/out")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    peer.publish("py/in", json!({"sleep": 10}).to_string())
        .await;
    let out = peer.wait_for("py/out", 3, LONG).await;
    let timeout = out
        .iter()
        .find(|v| v["errorType"] == "Timeout")
        .unwrap_or_else(|| panic!("no timeout error in {out:?}"));
    assert!(
        timeout["errorMessage"]
            .as_str()
            .unwrap_or_default()
            .contains("3s"),
        "{timeout}"
    );

    // Pool growth to max under concurrent load, then shrink after idletime (min 0).
    let before = peer.on("py/out").len();
    for n in 0..6 {
        peer.publish(
            "py/in",
            json!({"name": "load", "n": n, "sleep": 0.7}).to_string(),
        )
        .await;
    }
    let mut peak = 0;
    let deadline = Instant::now() + LONG;
    while peer.on("py/out").len() < before + 6 {
        peak = peak.max(dynamic_instances(&m, "function-python").await.len());
        assert!(Instant::now() < deadline, "load results missing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        peak, 2,
        "the pool grows to max (2) under load, never beyond"
    );
    let deadline = Instant::now() + LONG;
    while !dynamic_instances(&m, "function-python").await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "idle instances were not stopped after idletime"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The SQL instance (idletime 30s) is still there and has no API token.
    let sql = dynamic_instances(&m, "function-sql").await;
    assert_eq!(sql.len(), 1);
    assert_eq!(sql[0]["dynamic"], true);
    let pid = sql[0]["process"]["pid"].as_u64().expect("pid");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("the runtime's environment");
    let vars: Vec<String> = environ
        .split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).to_string())
        .collect();
    assert!(
        vars.iter()
            .any(|v| v.starts_with("BAETYL_SERVICE_INSTANCE_ADDRESS=127.0.0.1:")),
        "{vars:?}"
    );
    assert!(
        !vars.iter().any(|v| v.starts_with("BAETYL_SERVICE_TOKEN=")),
        "a dynamic instance has no token"
    );
    drop(m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_qos1_message_is_lost_when_a_runtime_or_the_manager_is_killed() {
    let w = Work::new();
    let (m, port) = start_functions(&w).await;
    let peer = Peer::connect(port, "tester2", &["sql/out"]).await;
    let total = 300;
    for id in 0..total {
        peer.publish("sql/in", json!({"id": 1, "n": id}).to_string())
            .await;
        if id == 60 {
            // kill -9 the SQL runtime instance mid-stream: the manager replaces it and retries the call.
            let deadline = Instant::now() + LONG;
            let pid = loop {
                if let Some(p) = m.pid_of("function-sql", "filter-1").await {
                    break p;
                }
                assert!(Instant::now() < deadline, "no runtime instance");
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if id == 180 {
            // kill -9 the manager: the master restarts it, the broker redelivers the unacknowledged inputs.
            let pid = m
                .pid_of("function-manager", "function-manager")
                .await
                .expect("manager pid");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if id % 20 == 0 {
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let seen: BTreeSet<u64> = peer
            .json_on("sql/out")
            .iter()
            .filter_map(|v| v["n"].as_u64())
            .collect();
        if seen.len() == total as usize {
            break;
        }
        if Instant::now() > deadline {
            let missing: Vec<u64> = (0..total).filter(|n| !seen.contains(n)).collect();
            panic!(
                "{} of {total} results missing: {missing:?}\n{}",
                missing.len(),
                m.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let manager = m
        .instance("function-manager", "function-manager")
        .await
        .expect("manager");
    assert!(manager["restarts"].as_u64().unwrap_or(0) >= 1, "{manager}");
}
