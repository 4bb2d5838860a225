//! Runtimes serve only the manager that started them (issue 10): started with a per-instance secret in
//! `FUNCTION_INSTANCE_SECRET`, the SQL runtime (`baetyl runtime-sql`) and the Python runtime refuse a call that
//! does not carry it as `baetyl-instance-secret` metadata (Unauthenticated) and serve one that does. The other
//! way round, each proves it holds the secret when the manager challenges it (`pool::prove`), runs nothing on a
//! challenge, and one started with another secret or none (an impostor on the port) fails the challenge. The
//! Node.js runtime (`baetyl runtime-node`) is held to the same.

use std::process::{Command, Stdio};
use std::time::Duration;

use baetyl_function::node::NODE_MODULES_ENV;
use baetyl_function::pool::prove;
use baetyl_function::proto::FunctionMessage;
use baetyl_function::proto::function_client::FunctionClient;
use baetyl_function::runtime::{INSTANCE_SECRET_ENV, INSTANCE_SECRET_KEY, PYTHON_RUNTIME};
use baetyl_testkit::process::Process;
use baetyl_testkit::{baetyl_bin, eventually_async, free_port, node_modules, python3};
use tonic::transport::Channel;

const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

async fn connect(port: u16) -> FunctionClient<Channel> {
    eventually_async(
        Duration::from_secs(30),
        &format!("the runtime to serve on {port}"),
        || FunctionClient::connect(format!("http://127.0.0.1:{port}")),
    )
    .await
}

fn call(function: &str, payload: &[u8], secret: Option<&str>) -> tonic::Request<FunctionMessage> {
    let mut req = tonic::Request::new(FunctionMessage {
        id: 1,
        qos: 1,
        topic: "t".into(),
        payload: payload.to_vec(),
        timestamp: 1,
        function_name: function.into(),
        function_invoke_id: "inv".into(),
    });
    if let Some(s) = secret {
        req.metadata_mut()
            .insert(INSTANCE_SECRET_KEY, s.parse().expect("ascii"));
    }
    req
}

/// A call without the secret and one with a wrong one are refused; the right one is served.
async fn only_the_secret_holder_is_served(port: u16, function: &str, payload: &[u8]) {
    let mut c = connect(port).await;
    for secret in [None, Some("wrong"), Some(&SECRET[..63])] {
        let e = c
            .call(call(function, payload, secret))
            .await
            .expect_err("refused without the right secret");
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{secret:?}: {e}");
    }
    let r = c
        .call(call(function, payload, Some(SECRET)))
        .await
        .expect("served with the secret")
        .into_inner();
    assert!(!r.payload.is_empty());
}

/// The instance proves it holds SECRET and announces `batch` (the SQL and Python runtimes take batches of
/// MAX_BATCH; the Node.js runtime announces nothing and gets v1's one call per message); a challenge carrying
/// the secret too still runs nothing.
async fn proves_its_secret(port: u16, function: &str, batch: usize) {
    let mut c = connect(port).await;
    let announced = prove(&mut c, SECRET.as_bytes())
        .await
        .expect("the proof of the right secret");
    assert_eq!(announced, batch, "the batch size the runtime announces");
    let e = prove(&mut c, b"another secret")
        .await
        .expect_err("not the proof of another secret");
    assert!(e.contains("wrong"), "{e}");
    let mut req = call(function, b"{}", Some(SECRET));
    req.metadata_mut()
        .insert("baetyl-instance-challenge", "c".parse().expect("ascii"));
    let e = c
        .call(req)
        .await
        .expect_err("no function runs on a challenge");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
}

/// `baetyl runtime-sql` serving `f` on `port` with `secret` in its environment (None: no secret).
fn sql_runtime(dir: &std::path::Path, port: u16, secret: Option<&str>) -> Process {
    std::fs::write(
        dir.join("service.yml"),
        "functions: [{name: f, handler: \"select *\"}]\n",
    )
    .expect("write");
    start_runtime("runtime-sql", dir, port, secret)
}

/// `baetyl ROLE -c DIR/service.yml` on `port` with `secret` in its environment (None: no secret).
fn start_runtime(role: &str, dir: &std::path::Path, port: u16, secret: Option<&str>) -> Process {
    let mut cmd = Command::new(baetyl_bin());
    cmd.args([role, "-c"])
        .arg(dir.join("service.yml"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env(NODE_MODULES_ENV, node_modules())
        .env_remove(INSTANCE_SECRET_ENV)
        .stdin(Stdio::null());
    if let Some(s) = secret {
        cmd.env(INSTANCE_SECRET_ENV, s);
    }
    Process::spawn(&mut cmd, role)
        .expect("spawn")
        .term_on_drop(Duration::from_secs(5))
}

#[tokio::test]
async fn the_sql_runtime_requires_its_instance_secret() {
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let _rt = sql_runtime(dir.path(), port, Some(SECRET));
    only_the_secret_holder_is_served(port, "f", br#"{"a":1}"#).await;
    proves_its_secret(port, "f", baetyl_function::runtime::MAX_BATCH).await;
}

/// A runtime started by `start` with another secret, or with none (it then serves any caller), cannot prove
/// SECRET.
async fn impostors_fail_the_challenge(
    dir: &std::path::Path,
    start: impl Fn(&std::path::Path, u16, Option<&str>) -> Process,
) {
    for secret in [Some("another-secret"), None] {
        let port = free_port();
        let _impostor = start(dir, port, secret);
        let mut c = connect(port).await;
        let e = prove(&mut c, SECRET.as_bytes())
            .await
            .expect_err("an impostor cannot prove the secret");
        assert!(e.contains("baetyl-instance-proof"), "{secret:?}: {e}");
    }
}

/// What binds an instance's port first (here a runtime started with another secret, or with none, which serves
/// any caller) cannot answer the manager's challenge: the manager sends it neither the secret nor an input.
#[tokio::test]
async fn an_impostor_on_the_port_fails_the_challenge() {
    let dir = tempfile::tempdir().expect("dir");
    impostors_fail_the_challenge(dir.path(), sql_runtime).await;
}

#[tokio::test]
async fn the_python_runtime_requires_its_instance_secret() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("index.py"),
        "import os\n\ndef handler(event, context):\n    return {'secret_visible': 'FUNCTION_INSTANCE_SECRET' in os.environ}\n",
    )
    .expect("write");
    let cfg = serde_json::json!({"functions": [{"name": "f", "handler": "index.handler", "codedir": dir.path()}]});
    let port = free_port();
    let _rt = Process::spawn(
        Command::new(python3())
            .arg("-c")
            .arg(PYTHON_RUNTIME)
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--config-json",
                &cfg.to_string(),
            ])
            .env(INSTANCE_SECRET_ENV, SECRET)
            .stdin(Stdio::null()),
        "runtime-python",
    )
    .expect("spawn")
    .term_on_drop(Duration::from_secs(5));
    only_the_secret_holder_is_served(port, "f", b"{}").await;
    proves_its_secret(port, "f", baetyl_function::runtime::MAX_BATCH).await;
    // User code does not see the secret.
    let mut c = connect(port).await;
    let r = c
        .call(call("f", b"{}", Some(SECRET)))
        .await
        .expect("served")
        .into_inner();
    assert_eq!(r.payload, br#"{"secret_visible": false}"#);
}

/// `baetyl runtime-node` serving `f` (which says whether user code sees the secret) on `port`.
fn node_runtime(dir: &std::path::Path, port: u16, secret: Option<&str>) -> Process {
    std::fs::write(
        dir.join("index.js"),
        "exports.handler = () => ({secret_visible: 'FUNCTION_INSTANCE_SECRET' in process.env});\n",
    )
    .expect("write");
    std::fs::write(
        dir.join("service.yml"),
        format!(
            "functions: [{{name: f, handler: index.handler, codedir: {}}}]\n",
            dir.display()
        ),
    )
    .expect("write");
    start_runtime("runtime-node", dir, port, secret)
}

#[tokio::test]
async fn the_node_runtime_requires_its_instance_secret() {
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let _rt = node_runtime(dir.path(), port, Some(SECRET));
    only_the_secret_holder_is_served(port, "f", b"{}").await;
    proves_its_secret(port, "f", 0).await;
    // User code does not see the secret.
    let mut c = connect(port).await;
    let r = c
        .call(call("f", b"{}", Some(SECRET)))
        .await
        .expect("served")
        .into_inner();
    assert_eq!(r.payload, br#"{"secret_visible":false}"#);
}

/// A Node.js runtime started with another secret or none fails the challenge; and a second runtime cannot
/// take a share of a port that one already serves (no SO_REUSEPORT): it fails to start instead.
#[tokio::test]
async fn a_node_impostor_fails_the_challenge_and_ports_are_not_shared() {
    let dir = tempfile::tempdir().expect("dir");
    impostors_fail_the_challenge(dir.path(), node_runtime).await;
    let port = free_port();
    let _first = node_runtime(dir.path(), port, Some(SECRET));
    connect(port).await;
    let mut second = node_runtime(dir.path(), port, Some(SECRET));
    let status = second.wait_exit(Duration::from_secs(30));
    assert!(!status.success(), "a second runtime on the port must fail");
}
