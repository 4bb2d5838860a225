//! Each transport end to end against an in-process peer that speaks just enough MQTT (it reads the CONNECT
//! packet and answers CONNACK) behind real TLS (rustls) and real WebSocket (tungstenite) servers.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rumqttc::{AsyncClient, Event, Packet};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

use super::*;

const CONNACK: [u8; 4] = [0x20, 0x02, 0x00, 0x00];
const WAIT: Duration = Duration::from_secs(10);

/// A CA, a server certificate for `localhost` only, and a client certificate, as PEM files.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    other_ca: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    server: Arc<rustls::ServerConfig>,
    server_two_way: Arc<rustls::ServerConfig>,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let ca_params = |name: &str| {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p
    };
    let ca = CertifiedIssuer::self_signed(ca_params("kit ca"), KeyPair::generate().expect("key"))
        .expect("ca");
    let other =
        CertifiedIssuer::self_signed(ca_params("other ca"), KeyPair::generate().expect("key"))
            .expect("other ca");
    let server_key = KeyPair::generate().expect("key");
    let server = CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .signed_by(&server_key, &ca)
        .expect("server cert");
    let client_key = KeyPair::generate().expect("key");
    let client = CertificateParams::new(Vec::<String>::new())
        .expect("params")
        .signed_by(&client_key, &ca)
        .expect("client cert");
    let dir = tempfile::tempdir().expect("dir");
    let write = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        p
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = vec![server.der().clone()];
    let key =
        || rustls::pki_types::PrivateKeyDer::try_from(server_key.serialize_der()).expect("key der");
    let builder = || {
        rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions")
    };
    let server_cfg = builder()
        .with_no_client_auth()
        .with_single_cert(chain.clone(), key())
        .expect("server config");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).expect("root");
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone())
            .build()
            .expect("client verifier");
    let two_way = builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key())
        .expect("server config");
    Pki {
        ca: write("ca.pem", ca.pem()),
        other_ca: write("other.pem", other.pem()),
        client_cert: write("client.pem", client.pem()),
        client_key: write("client.key", client_key.serialize_pem()),
        server: Arc::new(server_cfg),
        server_two_way: Arc::new(two_way),
        _dir: dir,
    }
}

#[derive(Clone)]
enum Peer {
    Tcp,
    Tls(Arc<rustls::ServerConfig>),
    Ws,
    Wss(Arc<rustls::ServerConfig>),
}

/// Serves one connection; yields the CONNECT packet it received.
async fn listen(bind: &str, peer: Peer) -> (u16, tokio::task::JoinHandle<Result<Vec<u8>, String>>) {
    let listener = TcpListener::bind(bind)
        .await
        .unwrap_or_else(|e| panic!("cannot bind {bind}: {e}"));
    let port = listener.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        match peer {
            Peer::Tcp => mqtt(tcp).await,
            Peer::Tls(cfg) => mqtt(tls(cfg, tcp).await?).await,
            Peer::Ws => websocket(tcp).await,
            Peer::Wss(cfg) => websocket(tls(cfg, tcp).await?).await,
        }
    });
    (port, task)
}

async fn tls(
    cfg: Arc<rustls::ServerConfig>,
    tcp: tokio::net::TcpStream,
) -> Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, String> {
    tokio_rustls::TlsAcceptor::from(cfg)
        .accept(tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))
}

/// Length of a whole MQTT packet at the start of `buf`, when it is all there.
fn packet_len(buf: &[u8]) -> Option<usize> {
    let mut len = 0usize;
    for (i, b) in buf.iter().enumerate().skip(1).take(4) {
        len |= usize::from(b & 0x7f) << (7 * (i - 1));
        if b & 0x80 == 0 {
            return (buf.len() >= i + 1 + len).then_some(i + 1 + len);
        }
    }
    None
}

async fn mqtt(mut s: impl AsyncRead + AsyncWrite + Unpin) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    while packet_len(&buf).is_none() {
        let mut chunk = [0u8; 512];
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before CONNECT".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    s.write_all(&CONNACK).await.map_err(|e| e.to_string())?;
    s.flush().await.map_err(|e| e.to_string())?;
    Ok(buf)
}

// The handshake callback's signature is tungstenite's.
#[allow(clippy::result_large_err)]
async fn websocket(s: impl AsyncRead + AsyncWrite + Unpin) -> Result<Vec<u8>, String> {
    let check = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != "/mqtt" {
            let mut e = ErrorResponse::new(Some(format!("no endpoint at {}", req.uri())));
            *e.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::NOT_FOUND;
            return Err(e);
        }
        resp.headers_mut()
            .insert("Sec-WebSocket-Protocol", "mqtt".parse().expect("header"));
        Ok(resp)
    };
    let mut ws = tokio_tungstenite::accept_hdr_async(s, check)
        .await
        .map_err(|e| format!("WebSocket handshake: {e}"))?;
    let mut buf = Vec::new();
    while packet_len(&buf).is_none() {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => buf.extend_from_slice(&b),
            Some(Ok(_)) => {}
            other => return Err(format!("no CONNECT: {other:?}")),
        }
    }
    ws.send(Message::Binary(CONNACK.to_vec().into()))
        .await
        .map_err(|e| e.to_string())?;
    Ok(buf)
}

/// Connects with `options` and returns the first event (or the connection error, as text).
async fn connect(options: &ClientOptions) -> Result<(), String> {
    let (_client, mut events) = AsyncClient::new(options.mqtt_options(), 10);
    match tokio::time::timeout(WAIT, events.poll()).await {
        Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => Ok(()),
        Ok(Ok(other)) => Err(format!("unexpected first event {other:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no CONNACK in time".into()),
    }
}

fn options(address: &str, tls: &ClientTls) -> ClientOptions {
    let address: MqttAddress = address.parse().expect("address");
    let mut o = ClientOptions::new("test", address, "kit-client", tls).expect("options");
    o.credentials = Some(("kit-user".into(), "kit-password".into()));
    o
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

type Outcome = (Result<(), String>, Result<Vec<u8>, String>);

/// Runs one connection through `peer` at `address` (`PORT` stands for the peer's port; an `[::1]` address makes
/// it listen on IPv6) and returns what the client saw and the CONNECT the peer got.
async fn run(peer: Peer, address: &str, tls: &ClientTls) -> Outcome {
    let bind = if address.contains("[::1]") {
        "[::1]:0"
    } else {
        "127.0.0.1:0"
    };
    let (port, server) = listen(bind, peer).await;
    let client = connect(&options(&address.replace("PORT", &port.to_string()), tls)).await;
    let served = tokio::time::timeout(WAIT, server)
        .await
        .map_err(|_| "peer did not finish".to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
        .and_then(|r| r);
    (client, served)
}

fn assert_connected(what: &str, (client, served): Outcome) {
    assert_eq!(client, Ok(()), "{what}: client");
    let connect = served.unwrap_or_else(|e| panic!("{what}: peer: {e}"));
    assert_eq!(connect[0], 0x10, "{what}: a CONNECT packet");
    assert!(contains(&connect, b"kit-client"), "{what}: client id sent");
    assert!(contains(&connect, b"kit-user"), "{what}: username sent");
}

#[tokio::test]
async fn plain_tcp_and_websocket() {
    let none = ClientTls::default();
    assert_connected("tcp", run(Peer::Tcp, "tcp://127.0.0.1:PORT", &none).await);
    assert_connected(
        "mqtt scheme",
        run(Peer::Tcp, "mqtt://localhost:PORT", &none).await,
    );
    assert_connected(
        "tcp over IPv6",
        run(Peer::Tcp, "tcp://[::1]:PORT", &none).await,
    );
    assert_connected(
        "ws with the default path",
        run(Peer::Ws, "ws://127.0.0.1:PORT", &none).await,
    );
    let (client, served) = run(Peer::Ws, "ws://127.0.0.1:PORT/other", &none).await;
    assert!(client.is_err(), "a path the server does not serve fails");
    assert!(served.is_err());
}

#[tokio::test]
async fn tls_verifies_the_server_against_the_ca_and_its_name() {
    let pki = pki();
    let with_ca = ClientTls {
        ca: Some(pki.ca.clone()),
        ..Default::default()
    };
    for scheme in ["ssl", "tls", "mqtts"] {
        assert_connected(
            scheme,
            run(
                Peer::Tls(pki.server.clone()),
                &format!("{scheme}://localhost:PORT"),
                &with_ca,
            )
            .await,
        );
    }
    assert_connected(
        "wss",
        run(
            Peer::Wss(pki.server.clone()),
            "wss://localhost:PORT/mqtt",
            &with_ca,
        )
        .await,
    );

    // The certificate names `localhost` only: reaching it as 127.0.0.1 must fail.
    let (client, _) = run(
        Peer::Tls(pki.server.clone()),
        "ssl://127.0.0.1:PORT",
        &with_ca,
    )
    .await;
    let e = client.expect_err("name mismatch");
    assert!(
        e.contains("NotValidForName") || e.contains("not valid for"),
        "{e}"
    );

    // Another CA does not vouch for the server.
    let other = ClientTls {
        ca: Some(pki.other_ca.clone()),
        ..Default::default()
    };
    let (client, _) = run(
        Peer::Tls(pki.server.clone()),
        "ssl://localhost:PORT",
        &other,
    )
    .await;
    let e = client.expect_err("unknown issuer");
    assert!(e.contains("UnknownIssuer") || e.contains("issuer"), "{e}");

    // insecure_skip_verify takes any certificate for any name.
    let insecure = ClientTls {
        insecure_skip_verify: true,
        ..Default::default()
    };
    assert_connected(
        "insecure",
        run(
            Peer::Tls(pki.server.clone()),
            "ssl://127.0.0.1:PORT",
            &insecure,
        )
        .await,
    );
}

#[tokio::test]
async fn two_way_tls_presents_the_client_certificate() {
    let pki = pki();
    let with_cert = ClientTls {
        ca: Some(pki.ca.clone()),
        cert: Some(pki.client_cert.clone()),
        key: Some(pki.client_key.clone()),
        insecure_skip_verify: false,
    };
    assert_connected(
        "two-way ssl",
        run(
            Peer::Tls(pki.server_two_way.clone()),
            "ssl://localhost:PORT",
            &with_cert,
        )
        .await,
    );
    assert_connected(
        "two-way wss",
        run(
            Peer::Wss(pki.server_two_way.clone()),
            "wss://localhost:PORT",
            &with_cert,
        )
        .await,
    );
    let without = ClientTls {
        ca: Some(pki.ca.clone()),
        ..Default::default()
    };
    let (client, served) = run(
        Peer::Tls(pki.server_two_way.clone()),
        "ssl://localhost:PORT",
        &without,
    )
    .await;
    assert!(client.is_err(), "no client certificate: refused");
    assert!(served.is_err_and(|e| e.contains("TLS handshake")));
}

#[test]
fn tls_mistakes_name_the_file() {
    let dir = tempfile::tempdir().expect("dir");
    let missing = ClientTls {
        ca: Some(PathBuf::from("/nonexistent/ca.pem")),
        ..Default::default()
    };
    let e = missing.client_config().unwrap_err();
    assert!(matches!(e, TlsError::Read { what: "ca", .. }), "{e}");
    assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");

    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").expect("write");
    let e = ClientTls {
        ca: Some(empty.clone()),
        ..Default::default()
    }
    .client_config()
    .unwrap_err();
    assert!(matches!(e, TlsError::NoCertificate { .. }), "{e}");
    assert!(e.to_string().contains(&*empty.to_string_lossy()), "{e}");

    let half = ClientTls {
        cert: Some(PathBuf::from("client.pem")),
        ..Default::default()
    };
    assert!(matches!(half.check(), Err(TlsError::HalfClientCert)));
    assert!(matches!(
        half.client_config(),
        Err(TlsError::HalfClientCert)
    ));

    // A TLS address builds its config at once; a plain one never reads the files.
    let addr = |s: &str| s.parse::<MqttAddress>().expect("address");
    assert!(ClientOptions::new("hub", addr("ssl://h"), "c", &missing).is_err());
    assert!(ClientOptions::new("hub", addr("tcp://h"), "c", &missing).is_ok());
}

fn connection(yaml: &str) -> Result<Connection, ConfigError> {
    let path = Path::new("service.yml");
    let c: Connection = crate::config::parse_yaml(yaml, path)?;
    c.check(path, "hub")?;
    Ok(c)
}

#[test]
fn v1_keepalive_minus_one_means_none() {
    let c = connection("{address: 'tcp://0.0.0.0:1883', keepalive: -1}").expect("valid");
    assert_eq!(c.keepalive.get(), Duration::ZERO);
    let c = connection("{address: 'tcp://h', keepalive: 45}").expect("valid");
    assert_eq!(c.keepalive.get(), Duration::from_secs(45));
    let c = connection(
        "{address: 'ssl://h', insecure: true, timeout: 30s, interval: 1m, buffersize: 10, validatesubs: true}",
    )
    .expect("v1 client keys are accepted");
    assert!(c.insecure_skip_verify);
    let ignored = c.ignored_keys("hub").join("\n");
    for k in [
        "hub.timeout",
        "hub.interval",
        "hub.buffersize",
        "hub.validatesubs",
    ] {
        assert!(ignored.contains(k), "{k} in {ignored}");
    }
    assert!(
        connection("{address: 'tcp://h'}")
            .expect("valid")
            .ignored_keys("hub")
            .is_empty()
    );
    let e = connection("{address: 'tcp://h', keepalive: soon}")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("hub.keepalive") || e.contains("keepalive"),
        "{e}"
    );
}

#[test]
fn connection_section_to_options() {
    let c = connection(
        "{address: 'ws://[::1]:9001', clientid: edge, username: u, password: p, keepalive: 0, cleansession: true}",
    )
    .expect("valid");
    let o = c
        .client_options("hub", "default-id", 4096)
        .expect("options");
    assert_eq!(
        (
            o.client_id.as_str(),
            o.keep_alive,
            o.clean_session,
            o.max_packet_size
        ),
        ("edge", Duration::ZERO, true, 4096)
    );
    let m = o.mqtt_options();
    assert_eq!(
        m.broker_address(),
        ("ws://[::1]:9001/mqtt".to_string(), 9001)
    );
    assert!(matches!(m.transport(), rumqttc::Transport::Ws));
    let login = m.credentials().expect("credentials");
    assert_eq!(
        (login.username.as_str(), login.password.as_str()),
        ("u", "p")
    );
    assert_eq!(m.keep_alive(), Duration::ZERO);

    let d = connection("{address: 'tcp://h'}").expect("valid");
    let o = d
        .client_options("hub", "default-id", 1024)
        .expect("options");
    assert_eq!(o.client_id, "default-id");
    assert!(!o.clean_session, "persistent sessions by default");
    let m = o.mqtt_options();
    assert_eq!(m.broker_address(), ("h".to_string(), 1883));
    assert_eq!(m.keep_alive(), DEFAULT_KEEPALIVE);
    assert!(matches!(m.transport(), rumqttc::Transport::Tcp));

    let e = connection("{address: 'tcp://h', keepalive: 500ms}")
        .unwrap_err()
        .to_string();
    assert!(e.contains("hub.keepalive"), "{e}");
    let e = connection("{address: 'ssl://h', key: k.pem}")
        .unwrap_err()
        .to_string();
    assert!(e.contains("go together"), "{e}");
    let e = connection("{address: 'tcp://h', password: p}")
        .unwrap_err()
        .to_string();
    assert!(e.contains("needs a username"), "{e}");
    let e = connection("{address: 'tcp://h', clientid: ''}")
        .unwrap_err()
        .to_string();
    assert!(e.contains("hub.clientid"), "{e}");
    let e = connection("{address: 'ftp://h'}").unwrap_err().to_string();
    assert!(e.contains("key `address`") && e.contains("`ftp`"), "{e}");
    assert!(
        connection("{address: 'ssl://h', insecureSkipVerify: true}")
            .expect("v1 spelling")
            .insecure_skip_verify
    );
}
