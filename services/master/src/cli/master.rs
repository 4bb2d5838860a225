//! `baetyl master`: parses the arguments, takes the work dir's lock, sets up logging, builds the engine,
//! binds the API listeners and hands over to [`crate::run`] until SIGTERM or SIGINT.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use baetyl_sdk::logging::LogFormat;
use baetyl_sdk::service::{Kit, shutdown_signal};
use nix::fcntl::{Flock, FlockArg};

use super::load_config;
use crate::api::BuildInfo;
use crate::config::{MasterConfig, Mode};
use crate::engine::Engine;
use crate::engine::containerd::ContainerdEngine;
use crate::engine::native::{NativeEngine, Role};
use crate::error::MasterError;
use crate::server::{Listeners, Setup};

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

fn config_path(workdir: &Path, config: &Option<PathBuf>) -> PathBuf {
    match config {
        Some(c) if c.is_absolute() => c.clone(),
        Some(c) => std::env::current_dir()
            .map(|d| d.join(c))
            .unwrap_or_else(|_| c.clone()),
        None => workdir.join("etc/baetyl/conf.yml"),
    }
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
    // The log file, like every path in conf.yml, is relative to the work dir.
    let mut logger = cfg.logger.clone();
    logger.path = logger.path.map(|p| workdir.join(p));
    let service = Kit::new("master")
        .worker_threads(2)
        .init(&logger, args.log_format)?;
    if !cfg_path.exists() {
        tracing::info!("no {}: using the built-in defaults", cfg_path.display());
    }
    match crate::limits::raise_nofile() {
        Ok((soft, _)) => tracing::info!("descriptor limit: {soft}"),
        Err(e) => tracing::warn!("cannot raise the descriptor limit: {e}"),
    }
    crate::mst::set_config_file(&cfg_path);
    service.block_on(async {
        let lock = lock_workdir(&workdir)?;
        crate::mst::at_start(&workdir, &cfg)?;
        let engine = engine(&workdir, &cfg, roles).await?;
        let listeners = Listeners::bind(&workdir, &cfg.server).await?;
        let setup = Setup {
            workdir: workdir.clone(),
            config: cfg.clone(),
            build,
        };
        let switch = crate::server::run_until(setup, engine, listeners, shutdown_signal()).await?;
        // The trial master takes the work dir's lock.
        drop(lock);
        if let Some(sw) = switch {
            crate::mst::switch(sw, &workdir, &cfg, shutdown_signal()).await?;
        }
        Ok(())
    })
}

/// One master per work dir: an exclusive lock on `var/run/baetyl/master.lock`, held while the master runs.
fn lock_workdir(workdir: &Path) -> Result<Flock<std::fs::File>, MasterError> {
    let run_dir = workdir.join("var/run/baetyl");
    std::fs::create_dir_all(&run_dir).map_err(|e| MasterError::io(&run_dir, e))?;
    let lock_path = run_dir.join("master.lock");
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| MasterError::io(&lock_path, e))?;
    Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|_| {
        MasterError::AlreadyRunning {
            workdir: workdir.to_path_buf(),
            lock: lock_path,
        }
    })
}

/// The engine `mode` names.
async fn engine(
    workdir: &Path,
    cfg: &MasterConfig,
    roles: Vec<Role>,
) -> anyhow::Result<Arc<dyn Engine>> {
    Ok(match cfg.mode {
        Mode::Native => Arc::new(NativeEngine::new(workdir, cfg, roles)?),
        Mode::Containerd => Arc::new(ContainerdEngine::new(workdir, cfg).await?),
    })
}
