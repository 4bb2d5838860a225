//! End-to-end tests of functions through the native master: our hub, the function manager, the SQL runtime,
//! the Python runtime and the Node.js runtime all run as services of one application; rumqttc clients publish
//! inputs and collect results.

use std::collections::BTreeSet;
use std::time::Duration;

use baetyl_e2e::*;
use baetyl_testkit::mqtt::{Client, MessageExt, options};
use baetyl_testkit::net::{localhost, wait_accepting_async};
use baetyl_testkit::{eventually_async, free_port, node_modules, python3};
use rumqttc::{Publish, QoS};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(60);

/// The test client: the `tester` principal, subscribed to `topics` at QoS 1.
async fn tester(port: u16, id: &str, topics: &[&str]) -> Client {
    let mut o = options(id, port);
    o.set_credentials("tester", "tester-password");
    let mut c = Client::connect(o).await.expect("connect to the hub");
    let subs: Vec<(&str, QoS)> = topics.iter().map(|t| (*t, QoS::AtLeastOnce)).collect();
    c.subscribe_many(&subs).await.expect("subscribe");
    c
}

/// Publishes one QoS 1 input and waits for the hub's PUBACK.
async fn input(c: &mut Client, topic: &str, payload: impl Into<Vec<u8>>) {
    c.publish(topic, QoS::AtLeastOnce, false, payload)
        .await
        .expect("publish");
}

/// The next message, which must come on `topic` within LONG.
async fn next_on(c: &mut Client, topic: &str) -> Publish {
    let p = c
        .recv(LONG)
        .await
        .expect("the tester's connection")
        .unwrap_or_else(|| panic!("nothing arrived on {topic} within {LONG:?}"));
    assert_eq!(p.topic, topic, "{}", p.text());
    p
}

/// Reads messages on `topic` until one satisfies `want` (skipping others) within LONG.
async fn until_on(
    c: &mut Client,
    topic: &str,
    what: &str,
    want: impl Fn(&Publish) -> bool,
) -> Publish {
    let mut skipped = Vec::new();
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c
            .recv_on(topic, left)
            .await
            .expect("the tester's connection")
        {
            Some(p) if want(&p) => return p,
            Some(p) => skipped.push(p.text()),
            None => panic!("{what} never came on {topic}; got {skipped:?}"),
        }
    }
}

fn json_of(p: &Publish) -> Value {
    p.json()
        .unwrap_or_else(|| panic!("not JSON on {}: {}", p.topic, p.text()))
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

/// v1's Node handler shape (`handler(event, context, callback)`, v1.0.2's `function-sayjs-code/index.js`), with
/// an error, a filter and a line on standard output.
const NODE_HANDLER: &str = r#"
exports.handler = (event, context, callback) => {
    if (Buffer.isBuffer(event)) {
        event = { bytes: event.toString() };
    } else if (event.err !== undefined) {
        return callback(new TypeError(event.err));
    } else if (event.drop) {
        return callback(null, null);
    }
    console.log('sayjs called on %s', context.messageTopic);
    event.messageQOS = context.messageQOS;
    event.messageTopic = context.messageTopic;
    event.functionName = context.functionName;
    event.invokeid = context.invokeid;
    event.Say = 'Hello Baetyl';
    callback(null, event);
};
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
  - clientid: rule-node
    subscribe: {{topic: node/in, qos: 1}}
    function: {{name: sayjs}}
    publish: {{topic: node/out, qos: 1}}
functions:
  - name: filter
    service: function-sql
    instance: {{min: 0, max: 1, idletime: 30s}}
  - name: sayhi
    service: function-python
    instance: {{min: 0, max: 2, idletime: 2s}}
    timeout: 3s
  - name: sayjs
    service: function-node
    instance: {{min: 0, max: 1}}
"#
        ),
    );
    write_function_hub(w, port);
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
    // v1.0.2's example Node function config (function-sayjs-conf), with its code in its own volume.
    w.write(
        "etc/nodeconf/service.yml",
        "functions:\n  - name: sayjs\n    handler: index.handler\n    codedir: var/db/baetyl/code\n",
    );
    w.write("jscode/index.js", NODE_HANDLER);
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
  function-node:
    image: hub.baidubce.com/baetyl/baetyl-function-node85:latest
    replica: 0
    volumes: ["./etc/nodeconf:/etc/baetyl", "./jscode:/var/db/baetyl/code"]
    restart: {policy: "no"}
"#,
    );
}

/// Waits until the function manager reports both rules subscribed: inputs published before a rule's first
/// subscription would have no session to be kept in.
async fn wait_rules_subscribed(m: &Master) {
    let subscribed = baetyl_testkit::wait::poll_async(LONG, || async move {
        m.instance("function-manager", "function-manager")
            .await
            .is_some_and(|v| {
                ["rule-sql", "rule-py", "rule-node"]
                    .iter()
                    .all(|r| v["rules"][r]["subscribed"] == true)
            })
    })
    .await;
    assert!(
        subscribed.is_ok(),
        "the function manager's rules never subscribed\n{}",
        m.log_text()
    );
}

/// Writes the application (hub, manager, runtimes) on a free port, starts the master (its environment names
/// the Python runtime's interpreter, with grpcio, and the Node.js runtime's modules), and waits until the hub listens and the manager's rules are
/// subscribed; answers the master and the hub's port.
async fn start_functions(w: &Work) -> (Master, u16) {
    let port = free_port();
    setup(w, port);
    let python = python3();
    let m = Master::start(
        w.path(),
        &[
            ("BAETYL_PYTHON", &python.to_string_lossy()),
            ("BAETYL_NODE_MODULES", &node_modules().to_string_lossy()),
        ],
    );
    wait_accepting_async(localhost(port), LONG).await;
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
    let mut peer = tester(port, "tester", &["sql/out", "py/out"]).await;

    // SQL: projection + filter + error payload for a non-JSON input.
    input(
        &mut peer,
        "sql/in",
        json!({"id": 3, "name": "a"}).to_string(),
    )
    .await;
    input(&mut peer, "sql/in", json!({"id": 12}).to_string()).await;
    input(&mut peer, "sql/in", "not json").await;
    input(&mut peer, "sql/in", json!({"id": 4}).to_string()).await;
    let mut out = Vec::new();
    for _ in 0..3 {
        out.push(json_of(&next_on(&mut peer, "sql/out").await));
    }
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
    // A window in which nothing must arrive: the filtered message published nothing.
    let extra = peer.drain(Duration::from_millis(500)).await;
    assert!(
        extra.is_empty(),
        "the filtered message published nothing: {:?}",
        baetyl_testkit::mqtt::texts(&extra)
    );

    // Python: result, vendored package, context, raw bytes, filter, exception, timeout.
    input(
        &mut peer,
        "py/in",
        json!({"name": "edge", "n": 1}).to_string(),
    )
    .await;
    assert_eq!(
        json_of(&next_on(&mut peer, "py/out").await),
        json!({"hi": "hello edge", "n": 1, "topic": "py/in", "qos": 1, "function": "sayhi", "has_invokeid": true})
    );
    input(&mut peer, "py/in", json!({"drop": true}).to_string()).await;
    input(&mut peer, "py/in", json!({"fail": true}).to_string()).await;
    // The dropped input published nothing: the next result is the exception's.
    let err = json_of(&next_on(&mut peer, "py/out").await);
    assert_eq!(err["errorType"], "ValueError", "{err}");
    assert!(
        err["errorMessage"]
            .as_str()
            .unwrap_or_default()
            .contains("asked to fail")
    );
    input(&mut peer, "py/in", b"\x01binary".to_vec()).await;
    until_on(&mut peer, "py/out", "the raw bytes result", |p| {
        &p.payload[..] == b"raw:\x01binary"
    })
    .await;
    input(&mut peer, "py/in", json!({"sleep": 10}).to_string()).await;
    let timeout = json_of(
        &until_on(&mut peer, "py/out", "a timeout error", |p| {
            p.json().is_some_and(|v| v["errorType"] == "Timeout")
        })
        .await,
    );
    assert!(
        timeout["errorMessage"]
            .as_str()
            .unwrap_or_default()
            .contains("3s"),
        "{timeout}"
    );

    // Pool growth to max under concurrent load, then shrink after idletime (min 0).
    for n in 0..6 {
        input(
            &mut peer,
            "py/in",
            json!({"name": "load", "n": n, "sleep": 0.7}).to_string(),
        )
        .await;
    }
    let mut peak = 0;
    let mut results = 0;
    let deadline = tokio::time::Instant::now() + LONG;
    while results < 6 {
        peak = peak.max(dynamic_instances(&m, "function-python").await.len());
        assert!(
            tokio::time::Instant::now() < deadline,
            "load results missing: {results} of 6"
        );
        if let Some(p) = peer.recv(Duration::from_millis(100)).await.expect("tester") {
            assert_eq!(p.topic, "py/out");
            results += 1;
        }
    }
    assert_eq!(
        peak, 2,
        "the pool grows to max (2) under load, never beyond"
    );
    eventually_async(
        LONG,
        "idle instances to be stopped after idletime",
        || async { dynamic_instances(&m, "function-python").await.is_empty() },
    )
    .await;
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
    let mut peer = tester(port, "tester2", &["sql/out"]).await;
    let total = 300;
    for id in 0..total {
        // Queued without waiting for each PUBACK (the hub acknowledges them all below), as a busy sensor does.
        peer.send(
            "sql/in",
            QoS::AtLeastOnce,
            false,
            json!({"id": 1, "n": id}).to_string(),
        )
        .await
        .expect("publish");
        if id == 60 {
            // kill -9 the SQL runtime instance mid-stream: the manager replaces it and retries the call.
            let pid = eventually_async(LONG, "a runtime instance", || async {
                m.pid_of("function-sql", "filter-1").await
            })
            .await;
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
            // Paces the load generator.
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
    peer.wait_acks()
        .await
        .expect("the hub acknowledged every input");
    let mut seen = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while seen.len() < total as usize && tokio::time::Instant::now() < deadline {
        if let Some(p) = peer.recv(Duration::from_millis(500)).await.expect("tester") {
            seen.extend(p.json().and_then(|v| v["n"].as_u64()));
        }
    }
    if seen.len() < total as usize {
        let missing: Vec<u64> = (0..total).filter(|n| !seen.contains(n)).collect();
        panic!(
            "{} of {total} results missing: {missing:?}\n{}",
            missing.len(),
            m.log_text()
        );
    }
    let manager = m
        .instance("function-manager", "function-manager")
        .await
        .expect("manager");
    assert!(manager["restarts"].as_u64().unwrap_or(0) >= 1, "{manager}");
}

/// Whatever answers on a function instance's port without holding the instance's secret gets no input (issue 10,
/// the impostor runtime): here the runtime service is a program that drops `FUNCTION_INSTANCE_SECRET` and then
/// serves SQL to any caller, as a process that bound the port first would. The manager's challenge finds it out
/// before sending anything: the input is answered with a `StartFailed` error, never with the impostor's result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impostor_on_the_instance_port_gets_no_input() {
    let w = Work::new();
    let port = free_port();
    setup(&w, port);
    w.package(
        "impostor",
        "#!/bin/sh\nunset FUNCTION_INSTANCE_SECRET\nexec \"$IMPOSTOR_BIN\" runtime-sql -c etc/baetyl/service.yml\n",
    );
    let app = std::fs::read_to_string(w.path().join("var/db/baetyl/application.yml")).expect("app");
    w.app(&app.replace("image: baetyl-function-sql", "image: impostor"));
    let bin = baetyl_bin();
    let m = Master::start(w.path(), &[("IMPOSTOR_BIN", &bin.to_string_lossy())]);
    wait_accepting_async(localhost(port), LONG).await;
    wait_rules_subscribed(&m).await;
    let mut peer = tester(port, "tester-impostor", &["sql/out"]).await;
    input(&mut peer, "sql/in", json!({"id": 1}).to_string()).await;
    let answer = json_of(&next_on(&mut peer, "sql/out").await);
    assert_eq!(answer["errorType"], "StartFailed", "{answer}");
    assert!(
        answer["errorMessage"]
            .as_str()
            .unwrap_or_default()
            .contains("not the instance started"),
        "{answer}"
    );
    let log = std::fs::read_to_string(
        w.path()
            .join("var/log/baetyl/services/function-sql/filter-1.log"),
    )
    .unwrap_or_default();
    assert!(!log.contains("\"id\""), "the impostor saw the input: {log}");
}

/// Many calls in flight per instance (`instance.concurrency`): our runtimes are sent what waits for an
/// instance as one batch (`FunctionBatch`), and every input still gets its own answer in v1's form, an error
/// only its own: a burst through the SQL runtime (one instance) and the Python runtime (two), every tenth input
/// a poison one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_flight_per_instance_go_in_batches_each_with_its_own_answer() {
    let w = Work::new();
    let port = free_port();
    setup(&w, port);
    let path = w.path().join("etc/fconf/service.yml");
    let conf = std::fs::read_to_string(&path).expect("manager config");
    let conf = conf
        .replace(
            "instance: {min: 0, max: 1, idletime: 30s}",
            "instance: {min: 1, max: 1, idletime: 30s, concurrency: 16}",
        )
        .replace(
            "instance: {min: 0, max: 2, idletime: 2s}",
            "instance: {min: 1, max: 2, idletime: 30s, concurrency: 8}",
        );
    assert_eq!(conf.matches("concurrency").count(), 2, "{conf}");
    std::fs::write(&path, conf).expect("write");
    let python = python3();
    let m = Master::start(w.path(), &[("BAETYL_PYTHON", &python.to_string_lossy())]);
    wait_accepting_async(localhost(port), LONG).await;
    wait_rules_subscribed(&m).await;
    let mut peer = tester(port, "tester-batch", &["sql/out", "py/out"]).await;
    let total = 300u64;
    let poison = |n: u64| n % 10 == 7;
    for n in 0..total {
        let (sql, py) = if poison(n) {
            (
                format!("not json {n}"),
                json!({"fail": true, "n": n}).to_string(),
            )
        } else {
            (
                json!({"id": 1, "n": n}).to_string(),
                json!({"name": "b", "n": n}).to_string(),
            )
        };
        for (topic, payload) in [("sql/in", sql), ("py/in", py)] {
            peer.send(topic, QoS::AtLeastOnce, false, payload)
                .await
                .expect("publish");
        }
    }
    peer.wait_acks()
        .await
        .expect("the hub acknowledged every input");
    let got = peer
        .recv_n(2 * total as usize, Duration::from_secs(120))
        .await
        .expect("an answer for every input");
    for topic in ["sql/out", "py/out"] {
        let (mut ok, mut failed) = (BTreeSet::new(), BTreeSet::new());
        for p in got.iter().filter(|p| p.topic == topic) {
            let v = json_of(p);
            if let Some(n) = v["n"].as_u64() {
                ok.insert(n);
            } else {
                // The error answer echoes its own input, nobody else's.
                let echoed = v["functionMessage"]["Payload"].as_str().unwrap_or_default();
                let n = echoed
                    .trim_start_matches("not json ")
                    .parse::<u64>()
                    .ok()
                    .or_else(|| serde_json::from_str::<Value>(echoed).ok()?["n"].as_u64())
                    .unwrap_or_else(|| panic!("{v}"));
                let kind = if topic == "sql/out" {
                    "PayloadError"
                } else {
                    "ValueError"
                };
                assert_eq!(v["errorType"], kind, "{v}");
                failed.insert(n);
            }
        }
        assert_eq!(
            ok,
            (0..total).filter(|n| !poison(*n)).collect::<BTreeSet<_>>(),
            "{topic}"
        );
        assert_eq!(
            failed,
            (0..total).filter(|n| poison(*n)).collect(),
            "{topic}"
        );
    }
    // The manager counts what went through batches (reported every 2 s).
    let batched = baetyl_testkit::wait::poll_async(LONG, || async {
        m.instance("function-manager", "function-manager")
            .await
            .is_some_and(|v| {
                v["functions"]["filter"]["batched"].as_u64() > Some(0)
                    && v["functions"]["sayhi"]["batched"].as_u64() > Some(0)
            })
    })
    .await;
    assert!(
        batched.is_ok(),
        "no batch calls: {:?}",
        m.instance("function-manager", "function-manager").await
    );
}

/// v1's Node.js function through the hub and the manager: `baetyl-function-node85` (here with a registry
/// prefix and tag, as v1's application.yml wrote it) runs `baetyl runtime-node` in native mode; results, raw
/// bytes, a filter and an error answer as v1 published them; the function's output lands in its instance log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_functions_answer_as_v1s() {
    let w = Work::new();
    let (m, port) = start_functions(&w).await;
    let mut peer = tester(port, "tester-node", &["node/out"]).await;
    input(&mut peer, "node/in", json!({"name": "edge"}).to_string()).await;
    let v = json_of(&next_on(&mut peer, "node/out").await);
    assert_eq!(v["Say"], "Hello Baetyl", "{v}");
    assert_eq!(
        (
            &v["name"],
            &v["messageTopic"],
            &v["messageQOS"],
            &v["functionName"]
        ),
        (
            &json!("edge"),
            &json!("node/in"),
            &json!(1),
            &json!("sayjs")
        ),
        "{v}"
    );
    assert!(v["invokeid"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
    input(&mut peer, "node/in", json!({"drop": true}).to_string()).await;
    input(&mut peer, "node/in", b"\x01raw".to_vec()).await;
    // The dropped input published nothing: the next answer is the raw input's.
    let v = json_of(&next_on(&mut peer, "node/out").await);
    assert_eq!(v["bytes"], "\u{1}raw", "{v}");
    input(
        &mut peer,
        "node/in",
        json!({"err": "asked to fail"}).to_string(),
    )
    .await;
    let e = json_of(&next_on(&mut peer, "node/out").await);
    assert_eq!(
        (&e["errorType"], &e["errorMessage"]),
        (&json!("TypeError"), &json!("TypeError: asked to fail")),
        "{e}"
    );
    assert_eq!(
        e["functionMessage"]["Payload"],
        r#"{"err":"asked to fail"}"#
    );
    // One instance served every call (an error keeps it), and what the function printed is in its log.
    let instances = dynamic_instances(&m, "function-node").await;
    assert_eq!(instances.len(), 1, "{instances:?}");
    let log = std::fs::read_to_string(
        w.path()
            .join("var/log/baetyl/services/function-node/sayjs-1.log"),
    )
    .unwrap_or_default();
    assert!(log.contains("sayjs called on node/in"), "{log}");
    assert!(log.contains("serving sayjs on 127.0.0.1:"), "{log}");
}
