//! The runtimes as standalone gRPC servers, called by a plain `baetyl.Function/Call` client (what a v1
//! function manager sends): the SQL runtime in-process, the Python runtime as a real Python process.

use std::time::Duration;

use baetyl_function::proto::FunctionMessage;
use baetyl_function::proto::function_client::FunctionClient;
use baetyl_function::runtime::{
    ERROR_TYPE_KEY, PYTHON_RUNTIME, RequireSecret, RuntimeConfig, SqlRuntime, serve,
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
        rt.into_server(),
        format!("127.0.0.1:{port}").parse().expect("addr"),
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
    let mut child = std::process::Command::new(&python)
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
    let _ = child.kill();
    let _ = child.wait();
}
