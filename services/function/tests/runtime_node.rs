//! The Node.js runtime (`baetyl runtime-node`, v1's `baetyl-function-node8`/`-node85`) as a standalone gRPC
//! server called by a plain `baetyl.Function/Call` client (what a v1 function manager sends): v1's example
//! handler and its semantics (event, context, callback, errors), the extensions (return values, promises), the
//! message size limit in both directions, config errors, and the stop with calls in flight.
//! Its secret and challenge are checked with the other runtimes' in `runtime_auth.rs`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use baetyl_function::node::NODE_MODULES_ENV;
use baetyl_function::proto::FunctionMessage;
use baetyl_function::proto::function_client::FunctionClient;
use baetyl_function::runtime::{ERROR_TYPE_KEY, INSTANCE_SECRET_ENV};
use baetyl_testkit::process::Process;
use baetyl_testkit::{baetyl_bin, eventually_async, free_port, node_modules};
use serde_json::{Value, json};
use tonic::transport::Channel;

/// v1.0.2's example Node function (`function-sayjs-code/index.js`), with the same behaviour: echo the event
/// (a Buffer becomes `{bytes}`), add the context, say hello; `{"err": ...}` fails with a TypeError.
const SAYJS: &str = r#"
const passContext = (event, context) => {
    for (const k of ['messageQOS', 'messageTopic', 'messageTimestamp', 'functionName', 'invokeid']) {
        if (context[k] !== undefined) event[k] = context[k];
    }
};
exports.handler = (event, context, callback) => {
    if (Buffer.isBuffer(event)) {
        event = { bytes: event.toString() };
    } else if (event.err !== undefined) {
        return callback(new TypeError(event.err));
    }
    passContext(event, context);
    event.Say = 'Hello Baetyl';
    callback(null, event);
};
"#;

/// Handlers beyond v1's callback: return values, promises, throws, results of every kind, a dependency of
/// the function's own (node_modules/ beside its code), a slow one.
const MORE: &str = r#"
const lib = require('greeter');
class QuotaError extends Error {}
exports.value = (event) => event.kind === 'string' ? 'text'
    : event.kind === 'null' ? null
    : event.kind === 'buffer' ? Buffer.from('raw bytes')
    : event.kind === 'number' ? 0
    : event.kind === 'big' ? { pad: 'x'.repeat(5 << 20) }
    : event.kind === 'bigint' ? 1n
    : { hi: lib.greet(event.name) };
exports.promise = async (event) => {
    if (event.fail) throw new QuotaError('over quota');
    await new Promise((r) => setTimeout(r, 10));
    return { later: true };
};
exports.throws = (event, context, callback) => { throw new RangeError('thrown, not called back'); };
exports.callsTwice = (event, context, callback) => { callback(null, { first: true }); callback(null, { second: true }); };
exports.slow = (event, context, callback) => setTimeout(() => callback(null, { slept: event.ms }), event.ms);
exports.env = () => ({ secretVisible: 'FUNCTION_INSTANCE_SECRET' in process.env });
"#;

/// Writes the example code and a config serving every handler above; answers the config's path.
fn write_functions(dir: &Path) -> std::path::PathBuf {
    let code = dir.join("code");
    std::fs::create_dir_all(code.join("node_modules/greeter")).expect("mkdir");
    std::fs::write(code.join("index.js"), SAYJS).expect("write");
    std::fs::write(code.join("more.js"), MORE).expect("write");
    std::fs::write(
        code.join("node_modules/greeter/index.js"),
        "exports.greet = (name) => 'hello ' + name;\n",
    )
    .expect("write");
    let functions = [
        ("node85-sayhi", "index.handler"),
        ("value", "more.value"),
        ("promise", "more.promise"),
        ("throws", "more.throws"),
        ("twice", "more.callsTwice"),
        ("slow", "more.slow"),
        ("env", "more.env"),
    ]
    .map(|(name, handler)| {
        format!(
            "  - name: {name}\n    handler: {handler}\n    codedir: {}\n",
            code.display()
        )
    })
    .concat();
    let path = dir.join("service.yml");
    std::fs::write(
        &path,
        format!("functions:\n{functions}logger:\n  level: debug\n"),
    )
    .expect("write");
    path
}

/// `baetyl runtime-node -c CONFIG --listen 127.0.0.1:PORT`, its output in `dir/runtime.log`.
fn runtime(dir: &Path, config: &Path, port: u16, secret: Option<&str>) -> Process {
    let log = dir.join("runtime.log");
    let out = std::fs::File::create(&log).expect("log file");
    let mut cmd = Command::new(baetyl_bin());
    cmd.args(["runtime-node", "-c"])
        .arg(config)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env(NODE_MODULES_ENV, node_modules())
        .env_remove(INSTANCE_SECRET_ENV)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup"))
        .stderr(out);
    if let Some(s) = secret {
        cmd.env(INSTANCE_SECRET_ENV, s);
    }
    Process::spawn(&mut cmd, "baetyl runtime-node")
        .expect("spawn baetyl runtime-node")
        .with_log(&log)
        .term_on_drop(Duration::from_secs(5))
}

async fn connect(port: u16) -> FunctionClient<Channel> {
    eventually_async(
        Duration::from_secs(30),
        &format!("the Node.js runtime to serve on {port} (scripts/setup.sh installs its modules)"),
        || FunctionClient::connect(format!("http://127.0.0.1:{port}")),
    )
    .await
    .max_decoding_message_size(64 << 20)
}

fn msg(function: &str, payload: &[u8]) -> FunctionMessage {
    FunctionMessage {
        // Beyond 2^53: the runtime must not pass the id through a JavaScript number.
        id: 12_345_678_901_234_567_891,
        qos: 1,
        topic: "t".into(),
        payload: payload.to_vec(),
        timestamp: 1_700_000_000,
        function_name: function.into(),
        function_invoke_id: "inv-1".into(),
    }
}

async fn ok(c: &mut FunctionClient<Channel>, function: &str, payload: &[u8]) -> FunctionMessage {
    let r = c
        .call(msg(function, payload))
        .await
        .unwrap_or_else(|e| panic!("{function}({}): {e:?}", String::from_utf8_lossy(payload)))
        .into_inner();
    assert_eq!(
        r.id, 12_345_678_901_234_567_891,
        "the input's fields come back"
    );
    assert_eq!(
        (r.topic.as_str(), r.qos, r.timestamp),
        ("t", 1, 1_700_000_000)
    );
    r
}

fn json_of(m: &FunctionMessage) -> Value {
    serde_json::from_slice(&m.payload)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&m.payload)))
}

/// The error of a call that must fail: its code, `baetyl-error-type` and message.
async fn err(
    c: &mut FunctionClient<Channel>,
    function: &str,
    payload: &[u8],
) -> (tonic::Code, String, String) {
    let e = c
        .call(msg(function, payload))
        .await
        .expect_err("an error answer");
    let kind = e
        .metadata()
        .get(ERROR_TYPE_KEY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (e.code(), kind, e.message().to_string())
}

#[tokio::test]
async fn node_runtime_serves_v1_calls() {
    let dir = tempfile::tempdir().expect("dir");
    let config = write_functions(dir.path());
    let port = free_port();
    let rt = runtime(dir.path(), &config, port, None);
    let mut c = connect(port).await;

    // v1's example, as v1's own runtime test called it: JSON, raw bytes, an empty payload, an error.
    let v = json_of(&ok(&mut c, "node85-sayhi", br#"{"Project":"Baetyl"}"#).await);
    assert_eq!(
        v,
        json!({"Project": "Baetyl", "messageQOS": 1, "messageTopic": "t", "messageTimestamp": 1_700_000_000,
               "functionName": "node85-sayhi", "invokeid": "inv-1", "Say": "Hello Baetyl"})
    );
    let v = json_of(&ok(&mut c, "node85-sayhi", b"Baetyl Project").await);
    assert_eq!(v["bytes"], "Baetyl Project", "{v}");
    let v = json_of(&ok(&mut c, "node85-sayhi", b"").await);
    assert_eq!(
        v.as_object().map(|o| o.len()),
        Some(6),
        "{{}} and the context: {v}"
    );
    let (code, kind, message) = err(&mut c, "node85-sayhi", br#"{"err":"Baetyl"}"#).await;
    assert_eq!(
        (code, kind.as_str(), message.as_str()),
        (tonic::Code::Unknown, "TypeError", "TypeError: Baetyl")
    );
    let (code, kind, message) = err(&mut c, "xxx", b"{}").await;
    assert_eq!(
        (code, kind.as_str()),
        (tonic::Code::NotFound, "UnknownFunction")
    );
    assert!(message.contains("`xxx`"), "{message}");

    // Results of every kind: v1 sent a string as JSON text, a Buffer as it is, nothing for null.
    let value = |kind: &str| format!(r#"{{"kind":"{kind}","name":"node"}}"#);
    assert_eq!(
        ok(&mut c, "value", value("string").as_bytes())
            .await
            .payload,
        br#""text""#
    );
    assert_eq!(
        ok(&mut c, "value", value("buffer").as_bytes())
            .await
            .payload,
        b"raw bytes"
    );
    assert_eq!(
        ok(&mut c, "value", value("null").as_bytes()).await.payload,
        b""
    );
    assert_eq!(
        ok(&mut c, "value", value("number").as_bytes())
            .await
            .payload,
        b"0"
    );
    assert_eq!(
        json_of(&ok(&mut c, "value", value("object").as_bytes()).await),
        json!({"hi": "hello node"}),
        "a module from the function's own node_modules"
    );
    let (code, kind, message) = err(&mut c, "value", value("bigint").as_bytes()).await;
    assert_eq!(
        (code, kind.as_str()),
        (tonic::Code::Unknown, "TypeError"),
        "{message}"
    );
    assert_eq!(
        json_of(&ok(&mut c, "promise", b"{}").await),
        json!({"later": true})
    );
    let (_, kind, message) = err(&mut c, "promise", br#"{"fail":true}"#).await;
    assert_eq!(
        (kind.as_str(), message.as_str()),
        ("QuotaError", "QuotaError: over quota")
    );
    let (code, kind, message) = err(&mut c, "throws", b"{}").await;
    assert_eq!(
        (code, kind.as_str(), message.as_str()),
        (
            tonic::Code::Unknown,
            "RangeError",
            "RangeError: thrown, not called back"
        )
    );
    assert_eq!(
        json_of(&ok(&mut c, "twice", b"{}").await),
        json!({"first": true})
    );
    // Calls run concurrently on one instance (Node's event loop): four 300 ms calls take well under 1.2 s.
    let started = std::time::Instant::now();
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let mut c = c.clone();
            tokio::spawn(async move { c.call(msg("slow", br#"{"ms":300}"#)).await })
        })
        .collect();
    for call in calls {
        call.await.expect("join").expect("slow call");
    }
    assert!(
        started.elapsed() < Duration::from_millis(1100),
        "{:?}",
        started.elapsed()
    );
    // Still serving after every error above.
    assert_eq!(
        json_of(&ok(&mut c, "env", b"{}").await),
        json!({"secretVisible": false})
    );
    let log = rt.log_text();
    assert!(log.contains("serving node85-sayhi, value"), "{log}");
    assert!(log.contains("answered more than once"), "{log}");
    assert!(
        log.contains("no FUNCTION_INSTANCE_SECRET: any caller is served"),
        "{log}"
    );
}

#[tokio::test]
async fn node_runtime_bounds_messages_both_ways() {
    let dir = tempfile::tempdir().expect("dir");
    let config = write_functions(dir.path());
    let port = free_port();
    let _rt = runtime(dir.path(), &config, port, None);
    let mut c = connect(port).await;
    // In: over the default 4 MiB, refused before the function runs.
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(5 << 20));
    let (code, _, message) = err(&mut c, "node85-sayhi", big.as_bytes()).await;
    assert_eq!(code, tonic::Code::ResourceExhausted, "{message}");
    // Out: a 5 MiB result is an error of its own type (the manager answers it and keeps the instance).
    let (code, kind, message) = err(&mut c, "value", br#"{"kind":"big"}"#).await;
    assert_eq!(
        (code, kind.as_str()),
        (tonic::Code::ResourceExhausted, "MessageTooLarge"),
        "{message}"
    );
    assert!(message.contains("server.message.length.max"), "{message}");
    assert_eq!(
        json_of(&ok(&mut c, "value", br#"{"name":"again"}"#).await),
        json!({"hi": "hello again"})
    );
}

#[tokio::test]
async fn node_runtime_stops_after_the_calls_in_flight() {
    let dir = tempfile::tempdir().expect("dir");
    let config = write_functions(dir.path());
    let port = free_port();
    let mut rt = runtime(dir.path(), &config, port, None);
    let mut c = connect(port).await;
    let call = tokio::spawn(async move { c.call(msg("slow", br#"{"ms":800}"#)).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    baetyl_testkit::process::sigterm(rt.id()).expect("SIGTERM");
    let r = call
        .await
        .expect("join")
        .expect("the call in flight finishes");
    assert_eq!(json_of(&r.into_inner()), json!({"slept": 800}));
    let status = rt.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", rt.log_text());
    assert!(
        rt.log_text().contains("SIGTERM: stopping"),
        "{}",
        rt.log_text()
    );
}

#[test]
fn node_runtime_config_errors_name_the_cause() {
    let dir = tempfile::tempdir().expect("dir");
    let run = |config: &str, modules: &Path| {
        let path = dir.path().join("service.yml");
        std::fs::write(&path, config).expect("write");
        let out = Command::new(baetyl_bin())
            .args(["runtime-node", "-c"])
            .arg(&path)
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .env(NODE_MODULES_ENV, modules)
            .stdin(Stdio::null())
            .output()
            .expect("run");
        assert!(!out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = run("functions: [{name: f, handler: index}]\n", &node_modules());
    assert!(e.contains("must be MODULE.FUNCTION"), "{e}");
    let e = run(
        "functions: [{name: f, handler: index.handler, codedir: nowhere}]\n",
        &node_modules(),
    );
    assert!(
        e.contains("function f: cannot load handler index.handler from") && e.contains("nowhere"),
        "{e}"
    );
    std::fs::write(dir.path().join("index.js"), "exports.other = () => 1;\n").expect("write");
    let e = run(
        &format!(
            "functions: [{{name: f, handler: index.handler, codedir: {}}}]\n",
            dir.path().display()
        ),
        &node_modules(),
    );
    assert!(e.contains("exports no function `handler`"), "{e}");
    let e = run(
        "functions: [{name: f, handler: index.handler}]\n",
        dir.path(),
    );
    assert!(e.contains("scripts/setup.sh"), "{e}");
}
