//! The master as a library: [`run`] takes a config, an engine, the already-bound API [`Listeners`] and a
//! shutdown future, and runs the master until that future completes (mini-redis's `server::run` shape), so
//! tests run a whole master in-process on a socket in a temp dir with the engine of their choice.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use baetyl_sdk::client::Address;
use baetyl_sdk::fs::write_atomic;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{self, ApiState, BuildInfo, OPERATOR};
use crate::config::{Application, MasterConfig, ServerConfig};
use crate::engine::Engine;
use crate::error::{MasterError, Result};
use crate::mst::{Mst, Switch};
use crate::ota::{Updater, app_file, old_copy};
use crate::stats::HostSampler;
use crate::supervisor::{HostFacts, Supervisor, new_token};

/// What a master runs with: its work dir (absolute), its `conf.yml`, and the build it reports in inspect.
#[derive(Debug, Clone)]
pub struct Setup {
    pub workdir: PathBuf,
    pub config: MasterConfig,
    pub build: BuildInfo,
}

/// The API's listeners, bound before [`run`] (so a test can bind free ones and a failure to bind is the
/// caller's to report). The first one's address is what services get in `BAETYL_MASTER_API_ADDRESS`.
pub struct Listeners {
    /// `server.address`.
    pub api: ApiListener,
    /// `server.tcp`: a second, TCP listener for tools that cannot speak unix sockets.
    pub tcp: Option<TcpListener>,
    /// `server.cert/key/ca`: HTTPS on the TCP listeners.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// With HTTPS on a TCP `server.address`: the plain socket the services dial (they hold no certificate).
    pub services: Option<(UnixListener, PathBuf)>,
}

/// The default socket, where services get the API when `server.address` is TCP with TLS.
const SERVICES_SOCKET: &str = "var/run/baetyl.sock";

/// The longest a TLS handshake on the API may take.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub enum ApiListener {
    /// A unix socket and its path (removed when the master stops).
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

impl Listeners {
    /// Binds what `server` asks for: the socket (relative paths under `workdir`; a stale socket file is
    /// replaced; mode 0660 so that only the owner and its group reach the API) and the optional TCP one.
    /// With `server.cert` and `key`, the TCP listeners serve HTTPS (the files are read here: a bad one
    /// stops the master before it runs anything).
    pub async fn bind(workdir: &Path, server: &ServerConfig) -> Result<Listeners> {
        let tls = match server.tls(workdir) {
            Some(t) => Some(Arc::new(
                t.server_config(&[b"http/1.1"])
                    .map_err(MasterError::ApiTls)?,
            )),
            None => None,
        };
        let api = match server.address.under(workdir) {
            Address::Unix(path) => Self::unix(&path)?.api,
            Address::Tcp(host) => ApiListener::Tcp(bind_tcp(&host).await?),
        };
        let tcp = match server.tcp {
            Some(addr) => Some(bind_tcp(&addr.to_string()).await?),
            None => None,
        };
        let services = match (&api, &tls) {
            (ApiListener::Tcp(_), Some(_)) => match Self::unix(&workdir.join(SERVICES_SOCKET))?.api
            {
                ApiListener::Unix(l, path) => Some((l, path)),
                ApiListener::Tcp(_) => None,
            },
            _ => None,
        };
        Ok(Listeners {
            api,
            tcp,
            tls,
            services,
        })
    }

    /// A unix socket alone at `path`.
    pub fn unix(path: &Path) -> Result<Listeners> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| MasterError::io(dir, e))?;
        }
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).map_err(|source| MasterError::Bind {
            address: Address::Unix(path.to_path_buf()).to_string(),
            source,
        })?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            .map_err(|e| MasterError::io(path, e))?;
        Ok(Listeners {
            api: ApiListener::Unix(listener, path.to_path_buf()),
            tcp: None,
            tls: None,
            services: None,
        })
    }

    /// The address services dial: the socket's path, or the TCP listener's bound address.
    pub fn address(&self) -> Result<Address> {
        if let Some((_, path)) = &self.services {
            return Ok(Address::Unix(path.clone()));
        }
        Ok(match &self.api {
            ApiListener::Unix(_, path) => Address::Unix(path.clone()),
            ApiListener::Tcp(l) => Address::Tcp(local_addr(l)?),
        })
    }
}

async fn bind_tcp(host: &str) -> Result<TcpListener> {
    TcpListener::bind(host)
        .await
        .map_err(|source| MasterError::Bind {
            address: format!("tcp://{host}"),
            source,
        })
}

fn local_addr(l: &TcpListener) -> Result<String> {
    l.local_addr()
        .map(|a| a.to_string())
        .map_err(|source| MasterError::Bind {
            address: "the TCP listener".into(),
            source,
        })
}

/// Where the master writes the operator token for local tools (`baetyl inspect`).
pub fn operator_token_path(workdir: &Path) -> PathBuf {
    workdir.join("var/run/baetyl/operator.token")
}

/// Runs the master until `shutdown` completes: stops what a previous master left, makes the operator token,
/// serves the API, loads and starts the application; then stops everything in the reverse order.
pub async fn run(
    setup: Setup,
    engine: Arc<dyn Engine>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    run_until(setup, engine, listeners, shutdown)
        .await
        .map(|_| ())
}

/// [`run`], which also stops (the same way) when a master update asks to hand over to the new master: then
/// it answers that update, for [`crate::mst::switch`].
pub async fn run_until(
    setup: Setup,
    engine: Arc<dyn Engine>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<Option<Switch>> {
    let Setup {
        workdir,
        config: cfg,
        build,
    } = setup;
    let leftovers = engine.recover(cfg.grace.get()).await?;
    if !leftovers.is_empty() {
        tracing::warn!(
            "stopped {} instance(s) left by a previous master: {}",
            leftovers.len(),
            leftovers.join(", ")
        );
    }

    let address = listeners.address()?;
    if crate::users::enabled_here(cfg.users.mode) {
        if !nix::unistd::geteuid().is_root() {
            return Err(MasterError::UsersNeedRoot);
        }
        // Services reach the socket through the API group every one of them has.
        if let Address::Unix(path) = &address {
            std::os::unix::fs::lchown(path, None, Some(cfg.users.ids.first))
                .map_err(|e| MasterError::io(path, e))?;
        }
    }
    let host = HostFacts {
        host_id: host_id(),
        host_sn: cfg
            .snfile
            .as_ref()
            .and_then(|p| std::fs::read_to_string(workdir.join(p)).ok())
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        api_address: address.to_string(),
    };
    let sup = Arc::new(Supervisor::new(workdir.clone(), cfg.clone(), engine, host));
    let updater: Arc<Updater> = Arc::new(Updater::new(
        sup.clone(),
        app_file(&workdir),
        workdir.join(&cfg.otalog.path),
    ));

    let mst = Mst::new(sup.clone(), updater.clone());
    let os = crate::os_update::OsUpdater::new(
        sup.clone(),
        updater.clone(),
        Arc::new(crate::os_update::LinuxDevice::default()),
    );
    let token_path = operator_token_path(&workdir);
    let operator = operator_token(&workdir, &cfg, &token_path)?;
    let state = Arc::new(ApiState {
        sup: sup.clone(),
        updater: updater.clone(),
        mst: mst.clone(),
        os: os.clone(),
        build,
        operator: (OPERATOR.to_string(), operator),
        sampler: HostSampler::default(),
        timeout: cfg.server.timeout.get(),
    });
    let (stop_api, api_stopped) = watch::channel(false);
    let servers = serve(listeners, api::router(state), api_stopped);
    tracing::info!(api = %address, "API listening");

    // Safe mode (init could not use the data partition): no application at all, not even the built-in one.
    let (app, text) = match crate::safe_mode::init() {
        Some(record) => {
            let msg = crate::safe_mode::message(&record);
            tracing::error!("{msg}");
            sup.set_error(msg);
            (Application::default(), None)
        }
        None => load_application(&workdir, &sup),
    };
    updater.set_running_text(text);
    sup.run_app(app.clone()).await;
    mst.confirm_after_start();
    os.at_start();
    tracing::info!(
        services = app.services.len(),
        app_version = %app.app_version,
        "master ready; inspect with: baetyl inspect -w {}",
        workdir.display()
    );

    let switch = tokio::select! {
        () = shutdown => None,
        sw = mst.requested() => Some(sw),
    };
    if switch.is_some() {
        tracing::warn!("stopping for a master update: the new master runs on trial next");
    }
    updater.shutdown().await;
    tracing::info!("stopping services");
    sup.stop_all().await;
    let _ = stop_api.send(true);
    for s in servers {
        let _ = tokio::time::timeout(Duration::from_secs(5), s).await;
    }
    if let Address::Unix(path) = &address {
        let _ = std::fs::remove_file(path);
    }
    let _ = std::fs::remove_file(&token_path);
    tracing::info!("master stopped");
    Ok(switch)
}

/// The operator token: the configured one (`server.operator_token_file`) or a new random one, written to
/// `path` (0600, a new file that replaces whatever was there, a planted symlink included) for local tools.
/// A token that cannot be written (a full disk) does not stop the master: the API still serves the
/// configured token and the services' ones.
fn operator_token(workdir: &Path, cfg: &MasterConfig, path: &Path) -> Result<String> {
    let token = match &cfg.server.operator_token_file {
        None => new_token(),
        Some(rel) => read_operator_token(&workdir.join(rel))?,
    };
    let written = match path.parent() {
        Some(dir) => std::fs::create_dir_all(dir).map_err(|e| MasterError::io(dir, e)),
        None => Ok(()),
    }
    .and_then(|()| {
        write_atomic(path, token.as_bytes(), 0o600).map_err(|e| MasterError::io(path, e))
    });
    if let Err(e) = written {
        tracing::error!(
            "cannot write the operator token for local tools ({e}); `baetyl inspect` will not work until the master restarts"
        );
    }
    Ok(token)
}

/// Reads a configured operator token: at least 16 visible characters, surrounding whitespace ignored.
fn read_operator_token(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| MasterError::io(path, e))?;
    let token = text.trim();
    if token.len() < 16 || !token.chars().all(|c| c.is_ascii_graphic()) {
        return Err(MasterError::OperatorToken {
            path: path.to_path_buf(),
        });
    }
    Ok(token.to_string())
}

/// Serves `router` on every listener until `stop` turns true.
fn serve(
    listeners: Listeners,
    router: axum::Router,
    stop: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let Listeners {
        api,
        tcp,
        tls,
        services,
    } = listeners;
    let mut servers = Vec::new();
    let mut tcp_listeners = tcp.into_iter().collect::<Vec<_>>();
    match api {
        ApiListener::Unix(l, _) => servers.push(spawn_server(l, router.clone(), stop.clone())),
        ApiListener::Tcp(l) => tcp_listeners.insert(0, l),
    }
    if let Some((l, _)) = services {
        servers.push(spawn_server(l, router.clone(), stop.clone()));
    }
    for l in tcp_listeners {
        let Some(tls) = &tls else {
            servers.push(spawn_server(l, router.clone(), stop.clone()));
            continue;
        };
        match baetyl_sdk::mqtt::TlsIncoming::new(l, tls.clone(), TLS_HANDSHAKE_TIMEOUT, "API") {
            Ok(incoming) => servers.push(spawn_server(
                HttpsListener(incoming),
                router.clone(),
                stop.clone(),
            )),
            Err(e) => tracing::error!("the API's TLS listener: {e}"),
        }
    }
    servers
}

/// A TCP listener of the API with TLS (`server.cert/key/ca`), as axum serves it.
struct HttpsListener(baetyl_sdk::mqtt::TlsIncoming);

impl axum::serve::Listener for HttpsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.0.next().await {
            Some(c) => c,
            // The accept loop ends only with the listener: no more connections.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.0.local_addr())
    }
}

fn spawn_server<L>(
    listener: L,
    router: axum::Router,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let server = axum::serve(listener, router).with_graceful_shutdown(async move {
        let _ = stop.wait_for(|s| *s).await;
    });
    tokio::spawn(async move {
        let _ = server.await;
    })
}

/// The application to run at start, and the text it came from: the installed one; the previous one
/// (`.old`) when the installed one is missing, empty, unreadable or invalid; the built-in example in a
/// fresh work dir. A broken application never stops the master: the API stays up so the cloud can send a
/// good one, and inspect says what is wrong.
fn load_application(workdir: &Path, sup: &Supervisor) -> (Application, Option<Vec<u8>>) {
    let file = app_file(workdir);
    let old = old_copy(&file);
    let exists = |p: &Path| std::fs::symlink_metadata(p).is_ok();
    if !exists(&file) && !exists(&old) {
        match crate::default_app::install(workdir, &file) {
            Ok(()) => tracing::info!(
                "fresh work dir: installed the built-in example application into {}",
                file.display()
            ),
            Err(e) => tracing::error!("cannot install the built-in example application: {e}"),
        }
    }
    if let Err(e) = crate::ota::protect_app_files(&file, sup.users().agent_gid()) {
        tracing::warn!(file = %file.display(), "cannot close the application files to services: {e}");
    }
    let why = match read_application(&file) {
        Ok((app, text)) => return (app, Some(text)),
        Err(why) => why,
    };
    let msg = format!("the application cannot be used: {why}");
    tracing::error!("{msg}");
    match read_application(&old) {
        Ok((app, text)) => {
            sup.set_error(format!(
                "{msg}; running the previous application from {}",
                old.display()
            ));
            (app, Some(text))
        }
        Err(_) => {
            sup.set_error(format!(
                "{msg}; no service is running until a valid application is installed"
            ));
            (Application::default(), None)
        }
    }
}

/// An application file and its text, or why it cannot be used.
fn read_application(path: &Path) -> std::result::Result<(Application, Vec<u8>), String> {
    let text = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("{} is missing", path.display()),
        _ => format!("{}: cannot read: {e}", path.display()),
    })?;
    let app = Application::from_bytes(&text, path).map_err(|e| e.to_string())?;
    Ok((app, text))
}

pub(crate) fn host_id() -> String {
    ["/etc/machine-id", "/var/lib/dbus/machine-id"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .map(|h| h.to_string_lossy().into_owned())
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
