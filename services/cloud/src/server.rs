//! `run(cfg, listener, shutdown)`: the fleet server. Opens the store (migrating it), loads or makes the fleet's
//! keys (and checks that they are the keys of the fleet in the database), starts the bus and serves HTTPS on
//! the given listener until `shutdown` completes.
//!
//! One TLS listener serves everything: operators (bearer tokens), the dashboard, and devices (client
//! certificates from the fleet CA, asked for but optional at the TLS layer, required by the device routes).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use baetyl_agent::crypto;
use baetyl_agent::files;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::api::{self, App};
use crate::bus::Bus;
use crate::config::CloudConfig;
use crate::error::{CloudError, Result};
use crate::links::Links;
use crate::pki::Pki;
use crate::store::{Fleet, Store, Token, now_ms};

/// What the TLS layer learnt about the peer: its address and, when it presented one, its verified client
/// certificate (DER of the leaf).
#[derive(Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    pub cert: Option<Arc<Vec<u8>>>,
}

/// Serves the fleet until `shutdown` completes.
pub async fn run(
    cfg: CloudConfig,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    raise_fd_limit();
    let pki = Pki::load_or_create(&cfg.data_dir)?;
    let url = cfg.database_url();
    let store = Store::open(&url, if url.starts_with("sqlite:") { 8 } else { 16 }).await?;
    check_fleet(&cfg.data_dir, &store, &pki).await?;
    bootstrap_admin(&cfg.data_dir, &store).await?;

    let me = crypto::random_token(6);
    let started = now_ms();
    store.heartbeat(&me, started).await?;
    tokio::spawn(heartbeat(
        store.clone(),
        me.clone(),
        started,
        cfg.link.ping.get(),
        stop.clone(),
    ));
    let bus = Bus::start(store.clone(), me.clone(), stop.clone()).await?;
    let links = Arc::new(Links::new(me.clone(), store.clone(), bus.clone()));
    tokio::spawn(links.clone().run_events(bus.subscribe()));
    let port = listener
        .local_addr()
        .map(|a| a.port())
        .unwrap_or(cfg.listen.port());
    let tls = pki.server_config(&cfg.tls)?;
    let app = Arc::new(App {
        public_url: cfg.public_url(port),
        cfg: cfg.clone(),
        store: store.clone(),
        pki,
        links,
        bus,
        stop: stop.clone(),
        reports: Default::default(),
    });
    let router = api::router(app.clone());
    tracing::info!(
        listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        public_url = %app.public_url,
        database = %crate::store::redact(&url),
        process = %me,
        "baetyl cloud ready"
    );

    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(cfg.limits.devices + 1024));
    let handshake = cfg.limits.handshake.get();
    let mut stop_accept = stop.clone();
    loop {
        let (tcp, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = baetyl_agent::agent::stopped(&mut stop_accept) => break,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%addr, "connection refused: limits.devices reached");
            continue;
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tcp.set_nodelay(true);
            let tls = match tokio::time::timeout(handshake, acceptor.accept(tcp)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    tracing::debug!(%addr, "TLS handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%addr, "TLS handshake timed out");
                    return;
                }
            };
            let cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| Arc::new(c.as_ref().to_vec()));
            let service = hyper_util::service::TowerToHyperService::new(
                router.layer(axum::Extension(Peer { addr, cert })),
            );
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(tls), service)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = baetyl_agent::agent::stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
    }
    // Links close on the same signal; give them a moment to say goodbye.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while app.links.count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    store.clear_links_of(&me).await.ok();
    store.remove_process(&me).await.ok();
    store.close().await;
    tracing::info!("baetyl cloud stopped");
    Ok(())
}

/// Keeps this process's heartbeat fresh: devices linked to it count as online while it beats.
async fn heartbeat(
    store: Store,
    me: String,
    started: i64,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every.min(Duration::from_secs(10)));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = store.heartbeat(&me, started).await {
                    tracing::warn!("heartbeat: {e}");
                }
            }
            _ = baetyl_agent::agent::stopped(&mut stop) => return,
        }
    }
}

/// The key files on disk must be the fleet's (the database remembers the first process's CA and signing
/// key); on a first start this records them and the provisioning key.
async fn check_fleet(dir: &Path, store: &Store, pki: &Pki) -> Result<()> {
    let key_path = dir.join("provisioning.key");
    let existing = store.fleet().await?;
    let fleet = match existing {
        Some(f) => f,
        None => {
            let key = if key_path.exists() {
                files::read_secret(&key_path).map_err(|e| CloudError::io(&key_path, e))?
            } else {
                let k = format!("bpk_{}", crypto::random_token(24));
                files::create_private(&key_path, k.as_bytes())
                    .map_err(|e| CloudError::io(&key_path, e))?;
                k
            };
            store
                .init_fleet(&Fleet {
                    ca_cert: pki.ca_pem.clone(),
                    signing_public: pki.signing_public.to_string(),
                    provisioning_hash: crypto::sha256_hex(key.as_bytes()),
                })
                .await?
        }
    };
    if fleet.ca_cert.trim() != pki.ca_pem.trim()
        || fleet.signing_public != pki.signing_public.to_string()
    {
        return Err(CloudError::Keys(format!(
            "the database belongs to a fleet with other keys than those in {}: every cloud process of a fleet needs \
             the same ca.key, ca.crt and signing.key (copy them from the first process's data dir)",
            dir.display()
        )));
    }
    Ok(())
}

/// With no operator token at all, makes an admin token and writes it to `admin.token` (0600) in the data dir.
async fn bootstrap_admin(dir: &Path, store: &Store) -> Result<()> {
    if !store.tokens().await?.is_empty() {
        return Ok(());
    }
    let (token, row) = new_token("admin", "admin");
    store.create_token(&row).await?;
    let path = dir.join("admin.token");
    files::replace(&path, format!("{token}\n").as_bytes(), 0o600)
        .map_err(|e| CloudError::io(&path, e))?;
    tracing::info!(file = %path.display(), "made the first admin token");
    Ok(())
}

/// A new operator token: `bct_<id>_<secret>`; only the secret's digest is stored.
pub fn new_token(name: &str, role: &str) -> (String, Token) {
    let id = crypto::random_token(4);
    let secret = crypto::random_token(16);
    (
        format!("bct_{id}_{secret}"),
        Token {
            id,
            name: name.to_string(),
            role: role.to_string(),
            hash: crypto::sha256_hex(secret.as_bytes()),
            created: now_ms(),
            revoked: None,
        },
    )
}

/// Thousands of device links need thousands of descriptors: raise the soft limit to the hard one.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
