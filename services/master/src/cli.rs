//! `baetyl master` and `baetyl inspect`: argument parsing, start-up and orderly shutdown.

use baetyl_sdk::config::ConfigFile;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use baetyl_sdk::client::{Address, MasterClient};
use baetyl_sdk::config::human_bytes;
use baetyl_sdk::logging::{self, LogFormat, LogSetup};

use crate::api::{self, ApiState, BuildInfo, OPERATOR};
use crate::config::{Application, MasterConfig, Mode};
use crate::engine::native::{NativeEngine, Role};
use crate::error::MasterError;
use crate::ota::{Updater, app_file};
use crate::stats::HostSampler;
use crate::supervisor::{HostFacts, Supervisor, new_token};

#[derive(Debug, clap::Args)]
pub struct MasterArgs {
    /// The work dir: etc/baetyl/conf.yml, var/db/baetyl/application.yml, var/log, var/run live under it.
    #[arg(short = 'w', long, default_value = ".")]
    pub workdir: PathBuf,
    /// The master config (default: etc/baetyl/conf.yml in the work dir; built-in defaults when absent).
    #[arg(short = 'c', long)]
    pub config: Option<PathBuf>,
    /// Override logger.format: human or json.
    #[arg(long)]
    pub log_format: Option<LogFormat>,
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The master's work dir.
    #[arg(short = 'w', long, default_value = ".")]
    pub workdir: PathBuf,
    /// Print the raw inspect JSON instead of a summary.
    #[arg(long)]
    pub json: bool,
}

fn config_path(workdir: &Path, config: &Option<PathBuf>) -> PathBuf {
    match config {
        Some(c) if c.is_absolute() => c.clone(),
        Some(c) => std::env::current_dir()
            .map(|d| d.join(c))
            .unwrap_or_else(|_| c.clone()),
        None => workdir.join("etc/baetyl/conf.yml"),
    }
}

fn load_config(path: &Path) -> anyhow::Result<MasterConfig> {
    if path.exists() {
        Ok(MasterConfig::load(path)?)
    } else {
        Ok(MasterConfig::default())
    }
}

/// Where the API listens (absolute for unix sockets).
fn api_address(workdir: &Path, cfg: &MasterConfig) -> anyhow::Result<Address> {
    Ok(match Address::parse(&cfg.server.address)? {
        Address::Unix(p) => Address::Unix(workdir.join(p)),
        a => a,
    })
}

/// Reads a configured operator token: at least 16 visible characters, surrounding whitespace ignored.
fn read_operator_token(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| MasterError::io(path, e))?;
    let token = text.trim();
    if token.len() < 16 || !token.chars().all(|c| c.is_ascii_graphic()) {
        bail!(
            "{}: server.operator_token_file must hold one token of at least 16 printable ASCII characters \
             (e.g. `openssl rand -hex 16`)",
            path.display()
        );
    }
    Ok(token.to_string())
}

fn operator_token_path(workdir: &Path) -> PathBuf {
    workdir.join("var/run/baetyl/operator.token")
}

/// `baetyl master`: runs until SIGTERM/SIGINT, then stops every service and exits.
pub fn run_master(args: MasterArgs, build: BuildInfo, roles: Vec<Role>) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.workdir)
        .with_context(|| format!("cannot create work dir {}", args.workdir.display()))?;
    let workdir = args
        .workdir
        .canonicalize()
        .with_context(|| format!("cannot resolve work dir {}", args.workdir.display()))?;
    let cfg_path = config_path(&workdir, &args.config);
    let cfg = load_config(&cfg_path)?;
    let log_file = cfg.logger.path.as_ref().map(|p| workdir.join(p));
    logging::init(&LogSetup {
        service: "master",
        instance: "master",
        level: &cfg.logger.level,
        format: args.log_format.unwrap_or(cfg.logger.format),
        file: log_file.as_deref(),
    })
    .map_err(anyhow::Error::msg)?;
    if !cfg_path.exists() {
        tracing::info!("no {}: using the built-in defaults", cfg_path.display());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(master_main(workdir, cfg, build, roles))
}

async fn master_main(
    workdir: PathBuf,
    cfg: MasterConfig,
    build: BuildInfo,
    roles: Vec<Role>,
) -> anyhow::Result<()> {
    let run_dir = workdir.join("var/run/baetyl");
    std::fs::create_dir_all(&run_dir).map_err(|e| MasterError::io(&run_dir, e))?;
    let lock_path = run_dir.join("master.lock");
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| MasterError::io(&lock_path, e))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|_| MasterError::AlreadyRunning {
            workdir: workdir.clone(),
            lock: lock_path.clone(),
        })?;

    let engine: Arc<dyn crate::engine::Engine> = match cfg.mode {
        Mode::Native => Arc::new(NativeEngine::new(
            &workdir,
            &cfg.native.packages,
            roles,
            cfg.instance_log.clone(),
        )?),
        Mode::Containerd => bail!(
            "mode `containerd` is not available in this build yet; set `mode: native` in conf.yml"
        ),
    };
    let grace = cfg.grace.get();
    let leftovers = engine.recover(grace).await?;
    if !leftovers.is_empty() {
        tracing::warn!(
            "stopped {} instance(s) left by a previous master: {}",
            leftovers.len(),
            leftovers.join(", ")
        );
    }

    let address = api_address(&workdir, &cfg)?;
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
    let updater = Arc::new(Updater::new(
        sup.clone(),
        app_file(&workdir),
        workdir.join(&cfg.otalog.path),
    ));

    let operator = match &cfg.server.operator_token_file {
        None => new_token(),
        Some(rel) => read_operator_token(&workdir.join(rel))?,
    };
    let token_path = operator_token_path(&workdir);
    std::fs::write(&token_path, &operator).map_err(|e| MasterError::io(&token_path, e))?;
    std::fs::set_permissions(&token_path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| MasterError::io(&token_path, e))?;

    let state = Arc::new(ApiState {
        sup: sup.clone(),
        updater,
        build,
        operator: (OPERATOR.to_string(), operator),
        sampler: HostSampler::default(),
        timeout: cfg.server.timeout.get(),
    });
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let mut servers = Vec::new();
    let router = api::router(state);
    match &address {
        Address::Unix(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| MasterError::io(dir, e))?;
            }
            let _ = std::fs::remove_file(path);
            let listener =
                tokio::net::UnixListener::bind(path).map_err(|source| MasterError::Bind {
                    address: address.to_string(),
                    source,
                })?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
                .map_err(|e| MasterError::io(path, e))?;
            let mut rx = shutdown_rx.clone();
            let r = router.clone();
            servers.push(tokio::spawn(async move {
                let _ = axum::serve(listener, r)
                    .with_graceful_shutdown(async move {
                        let _ = rx.wait_for(|s| *s).await;
                    })
                    .await;
            }));
        }
        Address::Tcp(h) => servers.push(serve_tcp(h, router.clone(), shutdown_rx.clone()).await?),
    }
    if let Some(tcp) = &cfg.server.tcp {
        servers.push(serve_tcp(tcp, router.clone(), shutdown_rx.clone()).await?);
    }
    tracing::info!(api = %address, "API listening");

    let app = load_application(&workdir, &sup);
    sup.set_app(app.clone());
    for name in app.start_order().unwrap_or_default() {
        if let Err(e) = sup.start_service(&app, &name).await {
            tracing::error!(service = %name, "cannot start: {e}");
            sup.set_error(format!("cannot start service `{name}`: {e}"));
        }
    }
    tracing::info!(
        services = app.services.len(),
        app_version = %app.app_version,
        "master ready; inspect with: baetyl inspect -w {}",
        workdir.display()
    );

    wait_for_signal().await;
    tracing::info!("stopping services");
    sup.stop_all().await;
    let _ = shutdown_tx.send(true);
    for s in servers {
        let _ = tokio::time::timeout(Duration::from_secs(5), s).await;
    }
    if let Address::Unix(path) = &address {
        let _ = std::fs::remove_file(path);
    }
    let _ = std::fs::remove_file(&token_path);
    tracing::info!("master stopped");
    Ok(())
}

async fn serve_tcp(
    host: &str,
    router: axum::Router,
    mut rx: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(host)
        .await
        .map_err(|source| MasterError::Bind {
            address: format!("tcp://{host}"),
            source,
        })?;
    Ok(tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await;
    }))
}

/// The application to run at start: the installed one; the previous one if it is broken; the built-in
/// example in a fresh work dir. A broken application never stops the master: the API stays up so the
/// cloud can send a good one, and inspect says what is wrong.
fn load_application(workdir: &Path, sup: &Supervisor) -> Application {
    let file = app_file(workdir);
    if !file.exists() {
        match crate::default_app::install(workdir, &file) {
            Ok(()) => tracing::info!(
                "fresh work dir: installed the built-in example application into {}",
                file.display()
            ),
            Err(e) => tracing::error!("cannot install the built-in example application: {e}"),
        }
    }
    match Application::load(&file) {
        Ok(app) => app,
        Err(e) => {
            let old = file.with_extension("yml.old");
            let msg = format!("the application is invalid: {e}");
            tracing::error!("{msg}");
            match Application::load(&old) {
                Ok(app) => {
                    sup.set_error(format!(
                        "{msg}; running the previous application from {}",
                        old.display()
                    ));
                    app
                }
                Err(_) => {
                    sup.set_error(format!(
                        "{msg}; no service is running until a valid application is installed"
                    ));
                    Application::default()
                }
            }
        }
    }
}

fn host_id() -> String {
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

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
        _ => {
            tracing::error!("cannot listen for signals; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// `baetyl inspect`: asks the master of a work dir for its state, with the operator token it wrote.
pub fn run_inspect(args: InspectArgs) -> anyhow::Result<()> {
    let workdir = args
        .workdir
        .canonicalize()
        .with_context(|| format!("work dir {} does not exist", args.workdir.display()))?;
    let cfg = load_config(&workdir.join("etc/baetyl/conf.yml"))?;
    let address = api_address(&workdir, &cfg)?;
    let token_path = operator_token_path(&workdir);
    let token = std::fs::read_to_string(&token_path).with_context(|| {
        format!(
            "cannot read {} (is a master running in {}?)",
            token_path.display(),
            workdir.display()
        )
    })?;
    let client = MasterClient::new(address).with_credentials(OPERATOR, token.trim());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let v = rt.block_on(client.inspect())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let sw = &v["software"];
    println!(
        "baetyl {} ({}) mode {} in {}; application {}",
        sw["bin_version"].as_str().unwrap_or("?"),
        sw["git_revision"].as_str().unwrap_or("?"),
        sw["mode"].as_str().unwrap_or("?"),
        sw["pwd"].as_str().unwrap_or("?"),
        sw["conf_version"].as_str().unwrap_or("?")
    );
    if let Some(e) = v["error"].as_str().filter(|e| !e.is_empty()) {
        println!("error: {e}");
    }
    println!(
        "{:<36} {:<10} {:>8} {:>8} {:>7} {:>10}",
        "INSTANCE", "STATUS", "PID", "RESTARTS", "CPU%", "RSS"
    );
    for svc in v["services"].as_array().into_iter().flatten() {
        for inst in svc["instances"].as_array().into_iter().flatten() {
            let name = format!(
                "{}/{}",
                svc["name"].as_str().unwrap_or("?"),
                inst["name"].as_str().unwrap_or("?")
            );
            println!(
                "{:<36} {:<10} {:>8} {:>8} {:>7} {:>10}",
                name,
                inst["status"].as_str().unwrap_or("?"),
                inst["process"]["pid"]
                    .as_u64()
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "-".into()),
                inst["restarts"].as_u64().unwrap_or(0),
                inst["cpu_stats"]["used_percent"]
                    .as_f64()
                    .map(|c| format!("{c:.1}"))
                    .unwrap_or_else(|| "-".into()),
                inst["mem_stats"]["rss"]
                    .as_u64()
                    .map(human_bytes)
                    .unwrap_or_else(|| "-".into()),
            );
        }
    }
    let mem = &v["hardware"]["mem_stats"];
    println!(
        "host: cpu {}%, memory {} used of {}, disk {}% used",
        v["hardware"]["cpu_stats"]["used_percent"],
        human_bytes(mem["used"].as_u64().unwrap_or(0)),
        human_bytes(mem["total"].as_u64().unwrap_or(0)),
        v["hardware"]["disk_stats"]["used_percent"]
    );
    Ok(())
}
