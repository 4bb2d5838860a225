//! The function manager's own Function server (v1's `server:` section) over TLS, two-way when `ca` is set,
//! called by grpcio (another gRPC implementation, as v1's callers were): a call by an unknown function
//! name comes back NotFound through TLS; without a client certificate the handshake is refused.

use std::collections::BTreeMap;
use std::path::Path;

use baetyl_function::runtime::FunctionServerConfig;
use baetyl_function::serve::{Dispatch, Server};
use baetyl_testkit::pki::Pki;
use baetyl_testkit::python3;

/// A grpcio client: calls `baetyl.Function/Call` for the function `nope` over TLS and prints the status
/// code's name (OK when the call succeeded).
const CLIENT: &str = r#"
import sys, grpc
port, ca, cert, key = sys.argv[1:5]
read = lambda p: open(p, "rb").read() if p != "-" else None
creds = grpc.ssl_channel_credentials(read(ca), read(key), read(cert))
with grpc.secure_channel("localhost:" + port, creds) as ch:
    call = ch.unary_unary("/baetyl.Function/Call", request_serializer=lambda b: b, response_deserializer=lambda b: b)
    try:
        call(b"\x5a\x04nope", timeout=20)  # FunctionMessage{FunctionName (11): "nope"}
        print("OK")
    except grpc.RpcError as e:
        print(e.code().name)
"#;

fn grpcio_call(port: u16, ca: &Path, client: Option<(&Path, &Path)>) -> String {
    let dash = Path::new("-");
    let (cert, key) = client.unwrap_or((dash, dash));
    let out = std::process::Command::new(python3())
        .arg("-c")
        .arg(CLIENT)
        .arg(port.to_string())
        .args([ca, cert, key])
        .output()
        .expect("python3 with grpcio (scripts/setup.sh)");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manager_serves_functions_over_two_way_tls() {
    let dir = tempfile::tempdir().expect("dir");
    let pki = Pki::new(dir.path(), "manager-ca").expect("pki");
    let client = pki.client("caller").expect("client cert");
    let cfg = FunctionServerConfig {
        address: Some("127.0.0.1:0".into()),
        cert: Some(pki.server.cert.clone()),
        key: Some(pki.server.key.clone()),
        ca: Some(pki.ca.clone()),
        ..Default::default()
    };
    cfg.check("server").expect("valid");
    let server = Server::bind(&cfg, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let port = server.local_addr().port();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(Dispatch::new(BTreeMap::new()), async {
        let _ = stop_rx.await;
    }));
    let (ca, cert, key) = (pki.ca.clone(), client.cert.clone(), client.key.clone());
    let (with, without) = tokio::task::spawn_blocking(move || {
        (
            grpcio_call(port, &ca, Some((&cert, &key))),
            grpcio_call(port, &ca, None),
        )
    })
    .await
    .expect("join");
    assert_eq!(
        with, "NOT_FOUND",
        "the call went through TLS to the dispatcher"
    );
    assert_eq!(
        without, "UNAVAILABLE",
        "no client certificate, no connection"
    );
    let _ = stop_tx.send(());
    serving.await.expect("join").expect("serve");

    // Files that cannot be used stop the server before it binds, naming the file.
    let bad = FunctionServerConfig {
        key: Some(dir.path().join("missing.key")),
        ..cfg
    };
    let e = Server::bind(&bad, "127.0.0.1:0".parse().expect("addr"))
        .await
        .err()
        .expect("missing key")
        .to_string();
    assert!(e.contains("missing.key"), "{e}");
}
