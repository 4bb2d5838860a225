//! Migration from Baetyl v1: the master started the way v1's systemd unit starts it (`baetyl start -w DIR`)
//! on v1.0.2's own example work dir (`tests/fixtures/v1/native`, v1's list-form application.yml and its
//! service configs as shipped), and a message published as v1's README describes goes through the hub's
//! routing and the function rules. The docker example's conf.yml (`mode: docker`) is read as the container
//! engine by `baetyl check -w DIR`, which prints v1's `OK!`. v1's function manager and runtime keys that change
//! behaviour (retry, message limits, eviction, the manager's own Function server) are checked on a master of
//! their own.
//!
//! What the test changes in the copied work dir, and why: the MQTT ports (1883, 8883) become free ports, since
//! other tests share this machine; the hub's test certificates come from the test kit's PKI; the function code
//! (`index.py` and `index.js`, v1's example code) is written by the test with v1's handler semantics.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use baetyl_testkit::mqtt::{Client, MessageExt, options};
use baetyl_testkit::net::{localhost, wait_accepting_async};
use baetyl_testkit::pki::Pki;
use baetyl_testkit::process::Process;
use baetyl_testkit::{
    baetyl_bin, eventually, free_port, node_modules, python3, test_dir, workspace_dir,
};
use rumqttc::QoS;
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(60);

/// v1's example function, with the semantics of v1's `index.py` (echo the event, add the context, say hi).
const SAYHI: &str = r#"
def handler(event, context):
    res = dict(event) if isinstance(event, dict) else {"bytes": event.decode("utf-8")}
    for k in ("messageQOS", "messageTopic", "functionName", "functionInvokeID"):
        if k in context:
            res[k] = context[k]
    res["Say"] = "Hello Baetyl"
    return res
"#;

/// v1's example Node function, with the semantics of v1's `function-sayjs-code/index.js`.
const SAYJS: &str = r#"
exports.handler = (event, context, callback) => {
    if (Buffer.isBuffer(event)) {
        event = { bytes: event.toString() };
    } else if (event.err !== undefined) {
        return callback(new TypeError(event.err));
    }
    for (const k of ['messageQOS', 'messageTopic', 'messageTimestamp', 'functionName', 'invokeid']) {
        if (context[k] !== undefined) event[k] = context[k];
    }
    event.Say = 'Hello Baetyl';
    callback(null, event);
};
"#;

fn fixture(mode: &str) -> PathBuf {
    workspace_dir().join("tests/fixtures/v1").join(mode)
}

/// Copies a fixture work dir, replacing each `from` with `to` in every file.
fn copy_dir(from: &Path, to: &Path, replace: &[(String, String)]) {
    for e in std::fs::read_dir(from).expect("read fixture dir").flatten() {
        let dst = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            std::fs::create_dir_all(&dst).expect("mkdir");
            copy_dir(&e.path(), &dst, replace);
        } else {
            let mut text = std::fs::read_to_string(e.path()).expect("read fixture");
            for (a, b) in replace {
                text = text.replace(a.as_str(), b);
            }
            std::fs::write(&dst, text).expect("write");
        }
    }
}

/// `baetyl check -w DIR` (v1's check: the master config, `OK!`) must pass; answers its stderr.
fn check_workdir(dir: &Path) -> String {
    let out = baetyl(&[OsStr::new("check"), OsStr::new("-w"), dir.as_os_str()]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("OK!"),
        "{out:?}"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `baetyl check APP` must pass; answers what it printed.
fn check_app(dir: &Path) -> String {
    let app = dir.join("var/db/baetyl/application.yml");
    let out = baetyl(&[OsStr::new("check"), app.as_os_str()]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn baetyl(args: &[&OsStr]) -> std::process::Output {
    Command::new(baetyl_bin())
        .args(args)
        .output()
        .expect("run baetyl")
}

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, text).expect("write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_native_example_runs_and_messages_go_through_the_function_rules() {
    let dir = test_dir("baetyl-v1-");
    let w = dir.path();
    let (mqtt, mqtts) = (free_port(), free_port());
    copy_dir(
        &fixture("native"),
        w,
        &[
            ("0.0.0.0:1883".into(), format!("0.0.0.0:{mqtt}")),
            ("0.0.0.0:8883".into(), format!("0.0.0.0:{mqtts}")),
        ],
    );
    let pki = Pki::new(&w.join("pki"), "localhub").expect("test PKI");
    let certs = "var/db/baetyl/localhub-cert-only-for-test";
    write(w, &format!("{certs}/ca.pem"), &pki.ca_pem);
    write(w, &format!("{certs}/server.pem"), &pki.server.cert_pem);
    write(w, &format!("{certs}/server.key"), &pki.server.key_pem);
    write(w, "var/db/baetyl/function-sayhi-code/index.py", SAYHI);
    write(w, "var/db/baetyl/function-sayjs-code/index.js", SAYJS);

    // v1's `check -w DIR` (what v1's master ran on a new binary before a master update).
    check_workdir(w);
    let text = check_app(w);
    assert!(text.contains("Baetyl v1 list form"), "{text}");

    // v1's systemd unit runs `baetyl start`; the example's conf.yml logs to var/log/baetyl/baetyl.log.
    let stdout = w.join("start.out");
    let file = std::fs::File::create(&stdout).expect("stdout file");
    let mut cmd = Command::new(baetyl_bin());
    cmd.args(["start", "-w"])
        .arg(w)
        .env("BAETYL_PYTHON", python3())
        .env("BAETYL_NODE_MODULES", node_modules())
        .stdout(file.try_clone().expect("dup"))
        .stderr(file)
        .stdin(Stdio::null());
    let mut master = Process::spawn(&mut cmd, "baetyl start")
        .expect("spawn baetyl start")
        .with_log(&stdout)
        .term_on_drop(Duration::from_secs(20));
    let log = w.join("var/log/baetyl/baetyl.log");
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    eventually(
        LONG,
        "the master to log `master ready` in its v1 log file",
        || {
            assert!(
                master.try_status().is_none(),
                "the master exited: {}\n{}",
                master.log_text(),
                log_text()
            );
            log_text().contains("master ready").then_some(())
        },
    );
    wait_accepting_async(localhost(mqtt), LONG).await;

    // v1's README: publish to `t` as user test; the hub routes it to `t/topic`, the function rules call the
    // Python and Node functions and publish their results on `t/py3hi`, `t/py2hi` and `t/node8hi`.
    let mut o = options("v1-tester", mqtt);
    o.set_credentials("test", "hahaha");
    let mut c = Client::connect(o).await.expect("connect to the v1 hub");
    c.subscribe_many(&[
        ("t/topic", QoS::AtLeastOnce),
        ("t/py3hi", QoS::AtLeastOnce),
        ("t/py2hi", QoS::AtLeastOnce),
        ("t/node8hi", QoS::AtLeastOnce),
    ])
    .await
    .expect("subscribe");
    let mut seen: std::collections::BTreeMap<String, Value> = Default::default();
    let deadline = tokio::time::Instant::now() + LONG * 2;
    let mut n = 0;
    while seen.len() < 4 && tokio::time::Instant::now() < deadline {
        // Republish until every rule has answered: the manager subscribes its rules after the hub is up.
        n += 1;
        c.publish(
            "t",
            QoS::AtLeastOnce,
            false,
            json!({"id": 1, "marker": "v1-e2e", "n": n}).to_string(),
        )
        .await
        .expect("publish to t");
        while let Some(p) = c.recv(Duration::from_secs(3)).await.expect("connection") {
            if let Some(v) = p.json().filter(|v| v["marker"] == "v1-e2e") {
                seen.entry(p.topic.clone()).or_insert(v);
            }
        }
    }
    let fm_log = w.join("var/db/baetyl/function-manager-log/service.log");
    assert_eq!(
        seen.keys().map(String::as_str).collect::<Vec<_>>(),
        vec!["t/node8hi", "t/py2hi", "t/py3hi", "t/topic"],
        "not every path answered; got {seen:?}\nmaster log:\n{}\nfunction manager log:\n{}",
        log_text(),
        std::fs::read_to_string(&fm_log).unwrap_or_default()
    );
    let py3 = &seen["t/py3hi"];
    assert_eq!(py3["Say"], "Hello Baetyl", "{py3}");
    assert_eq!(py3["messageTopic"], "t", "{py3}");
    assert_eq!(py3["functionName"], "python3-sayhi", "{py3}");
    assert_eq!(seen["t/py2hi"]["functionName"], "python2-sayhi");
    let node = &seen["t/node8hi"];
    assert_eq!(
        (&node["Say"], &node["functionName"], &node["messageTopic"]),
        (&json!("Hello Baetyl"), &json!("node8-sayhi"), &json!("t")),
        "{node}"
    );
    assert_eq!(seen["t/topic"]["id"], 1);

    // v1's timer: its Go template payload (every 10s, on `t`, which the hub routes to `t/topic`).
    let mut timer = None;
    let deadline = tokio::time::Instant::now() + LONG;
    while timer.is_none() && tokio::time::Instant::now() < deadline {
        if let Some(p) = c.recv_on("t/topic", LONG).await.expect("connection") {
            timer = p.json().filter(|v| v["anyString"] == "inputString");
        }
    }
    let timer =
        timer.unwrap_or_else(|| panic!("no timer message on t/topic\nmaster log:\n{}", log_text()));
    assert!(
        timer["datetime"]
            .as_str()
            .is_some_and(|d| d.ends_with(" +0000 UTC")),
        "{timer}"
    );
    assert!(
        timer["time"].as_u64().is_some_and(|t| t > 1_700_000_000),
        "{timer}"
    );
    assert!(
        (0..10).contains(&timer["id"].as_i64().expect("id")),
        "{timer}"
    );
    assert!(
        timer["random5"]
            .as_f64()
            .is_some_and(|x| (0.0..60.0).contains(&x)),
        "{timer}"
    );

    assert_eq!(master.terminate(Duration::from_secs(30)).code(), Some(0));
}

#[test]
fn v1_docker_example_is_read_as_the_container_engine() {
    let stderr = check_workdir(&fixture("docker"));
    assert!(stderr.contains("mode containerd"), "{stderr}");
    let text = check_app(&fixture("docker"));
    assert!(
        text.contains("Baetyl v1 list form") && text.contains("7 service(s)"),
        "{text}"
    );
}

/// The next message on `topic` within LONG, as JSON.
async fn next_json(c: &mut Client, topic: &str) -> Value {
    let p = c
        .recv_on(topic, LONG)
        .await
        .expect("connection")
        .unwrap_or_else(|| panic!("nothing on {topic}"));
    p.json()
        .unwrap_or_else(|| panic!("not JSON on {topic}: {}", p.text()))
}

/// A function that fails the first `fail_times` calls for each `key` (counted in the instance), with an
/// exception type of its own; `pad` makes big inputs.
const FLAKY: &str = r#"
ATTEMPTS = {}


class FlakyError(Exception):
    pass


def handler(event, context):
    key = event.get("key", "")
    ATTEMPTS[key] = ATTEMPTS.get(key, 0) + 1
    if ATTEMPTS[key] <= event.get("fail_times", 0):
        raise FlakyError("attempt %d of %s fails" % (ATTEMPTS[key], key))
    return {"ok": True, "key": key, "attempts": ATTEMPTS[key], "function": context["functionName"]}
"#;

/// v1's function manager keys that change behaviour (`rules[].retry`, `functions[].message`, `backoff`,
/// `instance.evicttime`, `server`) and the Python runtime's `server` section, on a real master, hub and
/// Python runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_function_manager_and_runtime_keys_are_honoured() {
    use baetyl_e2e::{Master, Work, write_function_hub};
    use baetyl_function::proto::FunctionMessage;
    use baetyl_function::proto::function_client::FunctionClient;

    let w = Work::new();
    let (port, server_port) = (free_port(), free_port());
    w.write(
        "etc/fconf/service.yml",
        &format!(
            r#"
hub: {{address: "tcp://127.0.0.1:{port}", username: functions, password: functions-password, keepalive: -1}}
server:
  address: 127.0.0.1:{server_port}
  timeout: 30s
  message: {{length: {{max: 1m}}}}
  concurrent: {{max: 8}}
rules:
  - clientid: rule-retry
    subscribe: {{topic: retry/in, qos: 1}}
    function: {{name: flaky}}
    publish: {{topic: retry/out, qos: 1}}
    retry: {{max: 3, delay: 50ms, factor: 2, max_delay: 1s}}
  - clientid: rule-once
    subscribe: {{topic: once/in, qos: 1}}
    function: {{name: flaky}}
    publish: {{topic: once/out, qos: 1}}
    retry: {{max: 1}}
  - clientid: rule-small
    subscribe: {{topic: small/in, qos: 1}}
    function: {{name: small}}
    publish: {{topic: small/out, qos: 1}}
functions:
  - name: flaky
    service: function-python
    instance: {{min: 0, max: 1, idletime: 2s, evicttime: 300ms}}
    backoff: {{max: 200ms}}
  - name: small
    service: function-python
    message: {{length: {{max: 1k}}}}
"#
        ),
    );
    write_function_hub(&w, port);
    // v1's runtime `server` section: limits applied, TLS keys reported as ignored (the files need not exist).
    w.write(
        "etc/pyconf/service.yml",
        "functions:\n  - {name: flaky, handler: index.handler, codedir: var/db/baetyl/code}\n  - {name: small, handler: index.handler, codedir: var/db/baetyl/code}\nserver:\n  address: 127.0.0.1:1\n  timeout: 1s\n  workers: {max: 2}\n  concurrent: {max: 4}\n  message: {length: {max: 1m}}\n  cert: var/db/baetyl/cert/server.pem\n  key: var/db/baetyl/cert/server.key\n",
    );
    w.write("code/index.py", FLAKY);
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
  function-python:
    image: baetyl-function-python3
    replica: 0
    volumes: ["./etc/pyconf:/etc/baetyl", "./code:/var/db/baetyl/code"]
    restart: {policy: "no"}
"#,
    );
    let python = python3();
    let m = Master::start(w.path(), &[("BAETYL_PYTHON", &python.to_string_lossy())]);
    wait_accepting_async(localhost(port), LONG).await;
    let subscribed = baetyl_testkit::wait::poll_async(LONG, || async {
        m.instance("function-manager", "function-manager")
            .await
            .is_some_and(|v| {
                ["rule-retry", "rule-once", "rule-small"]
                    .iter()
                    .all(|r| v["rules"][r]["subscribed"] == true)
            })
    })
    .await;
    assert!(subscribed.is_ok(), "rules not subscribed\n{}", m.log_text());

    let mut o = options("v1-keys", port);
    o.set_credentials("tester", "tester-password");
    let mut c = Client::connect(o).await.expect("connect");
    c.subscribe_many(&[
        ("retry/out", QoS::AtLeastOnce),
        ("once/out", QoS::AtLeastOnce),
        ("small/out", QoS::AtLeastOnce),
    ])
    .await
    .expect("subscribe");

    // rules[].retry: two failures, then the third attempt answers.
    c.publish(
        "retry/in",
        QoS::AtLeastOnce,
        false,
        json!({"key": "a", "fail_times": 2}).to_string(),
    )
    .await
    .expect("publish");
    let v = next_json(&mut c, "retry/out").await;
    assert_eq!((&v["ok"], &v["attempts"]), (&json!(true), &json!(3)), "{v}");
    // retry.max 1: no retry, the first failure is the answer.
    c.publish(
        "once/in",
        QoS::AtLeastOnce,
        false,
        json!({"key": "b", "fail_times": 2}).to_string(),
    )
    .await
    .expect("publish");
    let v = next_json(&mut c, "once/out").await;
    assert_eq!(v["errorType"], "FlakyError", "{v}");
    assert!(
        v["errorMessage"]
            .as_str()
            .unwrap_or_default()
            .contains("attempt 1 of b"),
        "{v}"
    );
    // functions[].message.length.max 1k: a small input goes through, a 2k input is answered with
    // MessageTooLarge, not sent.
    c.publish(
        "small/in",
        QoS::AtLeastOnce,
        false,
        json!({"key": "s"}).to_string(),
    )
    .await
    .expect("publish");
    let v = next_json(&mut c, "small/out").await;
    assert_eq!(
        (&v["ok"], &v["function"]),
        (&json!(true), &json!("small")),
        "{v}"
    );
    c.publish(
        "small/in",
        QoS::AtLeastOnce,
        false,
        json!({"key": "c", "pad": "x".repeat(2048)}).to_string(),
    )
    .await
    .expect("publish");
    let v = next_json(&mut c, "small/out").await;
    assert_eq!(v["errorType"], "MessageTooLarge", "{v}");
    // The manager reports its counters every 2 s: wait for a report made after the retries.
    let retried = baetyl_testkit::wait::poll_async(LONG, || async {
        m.instance("function-manager", "function-manager")
            .await
            .is_some_and(|v| v["rules"]["rule-retry"]["retried"].as_u64() >= Some(2))
    })
    .await;
    assert!(
        retried.is_ok(),
        "{:?}",
        m.instance("function-manager", "function-manager").await
    );

    // server: the manager serves Function/Call by name, through the same pools.
    let mut client = FunctionClient::connect(format!("http://127.0.0.1:{server_port}"))
        .await
        .expect("the manager's function server");
    let msg = |function: &str| FunctionMessage {
        id: 1,
        qos: 0,
        topic: "direct".into(),
        payload: json!({"key": "d"}).to_string().into_bytes(),
        timestamp: 0,
        function_name: function.into(),
        function_invoke_id: String::new(),
    };
    let out = client.call(msg("flaky")).await.expect("call").into_inner();
    let v: Value = serde_json::from_slice(&out.payload).expect("JSON");
    assert_eq!(
        (&v["ok"], &v["function"]),
        (&json!(true), &json!("flaky")),
        "{v}"
    );
    let e = client.call(msg("nope")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");

    // instance.evicttime 300ms, idletime 2s: the idle flaky instance goes; small's (idletime 10m) stays.
    let gone = baetyl_testkit::wait::poll_async(LONG, || async {
        m.instance("function-python", "flaky-1").await.is_none()
    })
    .await;
    assert!(
        gone.is_ok(),
        "the idle instance was not evicted\n{}",
        m.log_text()
    );
    assert!(m.instance("function-python", "small-1").await.is_some());
    drop(m);
}
