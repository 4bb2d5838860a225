//! The runtimes as standalone gRPC servers, called by a plain `baetyl.Function/Call` client (what a v1
//! function manager sends): the SQL runtime in-process, the Python runtime as a real Python process.

use std::time::Duration;

use baetyl_function::proto::function_batch_client::FunctionBatchClient;
use baetyl_function::proto::function_client::FunctionClient;
use baetyl_function::proto::{FunctionBatchRequest, FunctionMessage};
use baetyl_function::runtime::{
    ERROR_TYPE_KEY, PYTHON_RUNTIME, RequireSecret, RuntimeConfig, SqlRuntime, python_config_json,
    serve,
};
use baetyl_sdk::config::ConfigFile;
use baetyl_testkit::{eventually_async, free_port, python3};

/// A client of the runtime on `port`, once it serves.
async fn connect(port: u16) -> FunctionClient<tonic::transport::Channel> {
    eventually_async(
        Duration::from_secs(20),
        &format!("the runtime to serve on {port}"),
        || FunctionClient::connect(format!("http://127.0.0.1:{port}")),
    )
    .await
}

/// A runtime process, killed when the test ends, failed or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A call with a deadline on both sides: a runtime that never answers fails the test instead of hanging it.
async fn call_within(
    c: &mut FunctionClient<tonic::transport::Channel>,
    m: FunctionMessage,
) -> Result<tonic::Response<FunctionMessage>, tonic::Status> {
    let mut req = tonic::Request::new(m);
    req.set_timeout(Duration::from_secs(10));
    tokio::time::timeout(Duration::from_secs(15), c.call(req))
        .await
        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer within 15 s")))
}

/// A `FunctionBatch/CallMany` of `messages` (our runtimes' batch call): each outcome as (reply payload, error
/// type).
async fn batch(port: u16, messages: Vec<FunctionMessage>) -> Vec<(Option<Vec<u8>>, String)> {
    let mut c = FunctionBatchClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .expect("connect");
    let n = messages.len();
    let out = c
        .call_many(FunctionBatchRequest { messages })
        .await
        .expect("a batch call")
        .into_inner()
        .outcomes;
    assert_eq!(out.len(), n, "one outcome per message");
    out.into_iter()
        .map(|o| (o.reply.map(|r| r.payload), o.error_type))
        .collect()
}

fn msg(function: &str, topic: &str, payload: &[u8]) -> FunctionMessage {
    FunctionMessage {
        id: 7,
        qos: 1,
        topic: topic.into(),
        payload: payload.to_vec(),
        timestamp: 1_700_000_000,
        function_name: function.into(),
        function_invoke_id: "inv-1".into(),
    }
}

#[tokio::test]
async fn sql_runtime_serves_v1_calls() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("service.yml");
    std::fs::write(
        &path,
        "functions:\n  - name: filter\n    handler: \"select qos() as qos, topic() as topic, * where id < 10\"\n  - name: upper\n    handler: \"select upper(name) as name\"\n",
    )
    .expect("write");
    let cfg = RuntimeConfig::load(&path).expect("config");
    let rt = SqlRuntime::new(&cfg, &path).expect("runtime");
    let port = free_port();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        rt,
        format!("127.0.0.1:{port}").parse().expect("addr"),
        cfg.server.clone(),
        RequireSecret::new(None),
        async {
            let _ = stop_rx.await;
        },
    ));
    let mut c = connect(port).await;
    let r = c
        .call(msg("filter", "t/a", br#"{"id":1,"x":true}"#))
        .await
        .expect("call")
        .into_inner();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&r.payload).expect("json"),
        serde_json::json!({"qos":1,"topic":"t/a","id":1,"x":true})
    );
    assert_eq!(
        (r.id, r.function_invoke_id.as_str(), r.timestamp),
        (7, "inv-1", 1_700_000_000),
        "the reply carries the call's identity"
    );
    let r = c
        .call(msg("filter", "t/a", br#"{"id":11}"#))
        .await
        .expect("call")
        .into_inner();
    assert!(r.payload.is_empty(), "filtered: empty payload");
    let r = c
        .call(msg("upper", "t", br#"{"name":"edge"}"#))
        .await
        .expect("call")
        .into_inner();
    assert_eq!(r.payload, br#"{"name":"EDGE"}"#);
    let e = c
        .call(msg("filter", "t", b"nope"))
        .await
        .expect_err("not JSON");
    assert_eq!(
        e.metadata()
            .get(ERROR_TYPE_KEY)
            .and_then(|v| v.to_str().ok()),
        Some("PayloadError")
    );
    let e = c
        .call(msg("ghost", "t", b"{}"))
        .await
        .expect_err("unknown function");
    assert_eq!(e.code(), tonic::Code::NotFound);
    // The same in one batch: each message's outcome, in order, an error failing only its own message.
    let got = batch(
        port,
        vec![
            msg("upper", "t", br#"{"name":"edge"}"#),
            msg("filter", "t", b"nope"),
            msg("ghost", "t", b"{}"),
            msg("filter", "t/a", br#"{"id":11}"#),
        ],
    )
    .await;
    assert_eq!(
        got,
        [
            (Some(br#"{"name":"EDGE"}"#.to_vec()), String::new()),
            (None, "PayloadError".to_string()),
            (None, "UnknownFunction".to_string()),
            (Some(Vec::new()), String::new()),
        ]
    );
    let _ = stop_tx.send(());
    server.await.expect("join").expect("serve");

    // Invalid SQL is refused when the config loads, naming the function and the position.
    std::fs::write(
        &path,
        "functions:\n  - name: bad\n    handler: \"select a,, b\"\n",
    )
    .expect("write");
    let cfg = RuntimeConfig::load(&path).expect("config");
    let err = SqlRuntime::new(&cfg, &path)
        .err()
        .expect("invalid SQL")
        .to_string();
    assert!(
        err.contains("function `bad`") && err.contains("Column"),
        "{err}"
    );
}

#[tokio::test]
async fn python_runtime_serves_v1_calls() {
    let python = python3();
    let dir = tempfile::tempdir().expect("dir");
    let code = dir.path().join("code");
    std::fs::create_dir_all(code.join("vendor/extlib")).expect("mkdir");
    std::fs::write(code.join("vendor/extlib/__init__.py"), "VALUE = 41\n").expect("write");
    std::fs::write(
        code.join("index.py"),
        "import extlib\n\ndef handler(event, context):\n    if event == b'boom':\n        raise KeyError('boom')\n    return {'v': extlib.VALUE + 1, 'ctx': context, 'event': event}\n",
    )
    .expect("write");
    let port = free_port();
    let cfg = serde_json::json!({"functions": [{"name": "f", "handler": "index.handler", "codedir": code}]});
    let child = std::process::Command::new(&python)
        .arg("-c")
        .arg(PYTHON_RUNTIME)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--config-json",
            &cfg.to_string(),
        ])
        .spawn()
        .expect("python runtime (scripts/setup.sh makes .venv)");
    let _child = KillOnDrop(child);
    let mut c = connect(port).await;
    let r = c
        .call(msg("f", "a/b", br#"{"k":[1,2]}"#))
        .await
        .expect("call")
        .into_inner();
    let v: serde_json::Value = serde_json::from_slice(&r.payload).expect("json");
    assert_eq!(v["v"], 42);
    assert_eq!(v["event"], serde_json::json!({"k": [1, 2]}));
    assert_eq!(
        v["ctx"],
        serde_json::json!({"messageQOS": 1, "messageTopic": "a/b", "messageTimestamp": 1700000000, "functionName": "f", "functionInvokeID": "inv-1", "invokeid": "inv-1"})
    );
    let e = c.call(msg("f", "a", b"boom")).await.expect_err("exception");
    assert_eq!(
        e.metadata()
            .get(ERROR_TYPE_KEY)
            .and_then(|v| v.to_str().ok()),
        Some("KeyError")
    );
    assert!(e.message().contains("boom"));
    let got = batch(
        port,
        vec![
            msg("f", "a", b"boom"),
            msg("f", "a/b", br#"{"k":1}"#),
            msg("ghost", "a", b"{}"),
        ],
    )
    .await;
    assert_eq!(got[0], (None, "KeyError".to_string()));
    let v: serde_json::Value =
        serde_json::from_slice(got[1].0.as_deref().expect("a reply")).expect("json");
    assert_eq!(
        (&v["v"], &v["event"]),
        (&serde_json::json!(42), &serde_json::json!({"k": 1}))
    );
    assert_eq!(got[2], (None, "UnknownFunction".to_string()));
}

/// v1's `server` section of a runtime: `message.length.max` bounds what the runtime takes, in the SQL runtime
/// (tonic) and the Python runtime (grpcio), and the Python runtime starts with `workers`, `concurrent`,
/// `timeout` and the TLS keys it reports as ignored.
#[tokio::test]
async fn the_server_section_limits_message_sizes() {
    let dir = tempfile::tempdir().expect("dir");
    let code = dir.path().join("code");
    std::fs::create_dir_all(&code).expect("mkdir");
    std::fs::write(
        code.join("index.py"),
        "def handler(event, context):\n    return event\n",
    )
    .expect("write");
    let path = dir.path().join("service.yml");
    std::fs::write(
        &path,
        format!(
            "functions:\n  - {{name: f, handler: index.handler, codedir: {}}}\n  - {{name: s, handler: \"select *\"}}\nserver:\n  address: 127.0.0.1:1\n  timeout: 1s\n  workers: {{max: 2}}\n  concurrent: {{max: 4}}\n  message: {{length: {{max: 1k}}}}\n  cert: server.pem\n  key: server.key\n",
            code.display()
        ),
    )
    .expect("write");
    let cfg = RuntimeConfig::load(&path).expect("v1 runtime config with server");
    let small = format!("{{\"p\":\"{}\"}}", "x".repeat(100));
    let big = format!("{{\"p\":\"{}\"}}", "x".repeat(2048));
    let check = |c: FunctionClient<tonic::transport::Channel>, function: &'static str| {
        let (small, big) = (small.clone(), big.clone());
        async move {
            let mut c = c;
            let r = call_within(&mut c, msg(function, "t", small.as_bytes()))
                .await
                .expect("a small call")
                .into_inner();
            let json = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).expect("JSON");
            assert_eq!(json(&r.payload), json(small.as_bytes()), "{function}");
            let e = call_within(&mut c, msg(function, "t", big.as_bytes()))
                .await
                .expect_err("over message.length.max");
            assert!(
                matches!(
                    e.code(),
                    tonic::Code::ResourceExhausted | tonic::Code::OutOfRange
                ),
                "{function}: {e:?}"
            );
        }
    };

    // SQL (tonic): the limit applies to what the runtime decodes.
    let sql_port = free_port();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        SqlRuntime::new(
            &RuntimeConfig::parse(
                "functions: [{name: s, handler: \"select *\"}]\nserver: {message: {length: {max: 1k}}}\n",
                &path,
            )
            .expect("sql config"),
            &path,
        )
        .expect("sql"),
        format!("127.0.0.1:{sql_port}").parse().expect("addr"),
        cfg.server.clone(),
        RequireSecret::new(None),
        async {
            let _ = stop_rx.await;
        },
    ));
    check(connect(sql_port).await, "s").await;
    let _ = stop_tx.send(());
    server.await.expect("join").expect("serve");

    // Python (grpcio), with the config exactly as `baetyl runtime-python` hands it over.
    let py_port = free_port();
    let json = python_config_json(&RuntimeConfig {
        functions: cfg.functions[..1].to_vec(),
        ..cfg.clone()
    })
    .expect("json");
    let log_path = dir.path().join("python.log");
    let child = std::process::Command::new(python3())
        .arg("-c")
        .arg(PYTHON_RUNTIME)
        .args([
            "--listen",
            &format!("127.0.0.1:{py_port}"),
            "--config-json",
            &json,
        ])
        .stderr(std::fs::File::create(&log_path).expect("log file"))
        .spawn()
        .expect("python runtime");
    let child = KillOnDrop(child);
    check(connect(py_port).await, "f").await;
    drop(child);
    let log = std::fs::read_to_string(&log_path).expect("log");
    assert!(
        log.contains("ignored server.cert, server.key"),
        "the Python runtime reports the TLS keys it ignores: {log}"
    );
}
