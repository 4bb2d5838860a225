//! Baetyl v1's command line, kept for the scripts and units written for it: `baetyl start [-w DIR] [-c FILE]`
//! (v1's systemd unit runs `baetyl start`) and `baetyl check -w DIR -c FILE`, which prints `OK!` when the
//! master config is valid (v1's master runs it on a new binary before a master update).
//!
//! As in v1, the work dir defaults to the directory above the one holding the binary (`/usr/local/bin/baetyl`
//! -> `/usr/local`) and a relative `-c` is relative to the work dir.

use std::path::{Path, PathBuf};

use anyhow::Context;
use baetyl_sdk::config::ConfigFile;
use baetyl_sdk::logging::LogFormat;

/// v1's `check` success marker.
pub const CHECK_OK: &str = "OK!";

#[derive(clap::Args)]
pub struct StartArgs {
    /// The work dir (default: the directory above the one holding this binary, as in Baetyl v1).
    #[arg(short = 'w', long)]
    pub workdir: Option<PathBuf>,
    /// The master config, relative to the work dir (default: etc/baetyl/conf.yml).
    #[arg(short = 'c', long)]
    pub config: Option<PathBuf>,
    /// Override logger.format: human or json.
    #[arg(long)]
    pub log_format: Option<LogFormat>,
}

/// v1's default work dir: `<dir of the binary>/..`.
fn default_workdir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()
        .and_then(|e| e.canonicalize())
        .context("cannot find this binary's path to derive the work dir; pass -w DIR")?;
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .context("this binary is not inside a bin/ directory; pass -w DIR")
}

/// The work dir and master config path as v1 resolved them.
pub fn resolve(
    workdir: Option<&Path>,
    config: Option<&Path>,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let workdir = match workdir {
        Some(w) => w.to_path_buf(),
        None => default_workdir()?,
    };
    let workdir = std::path::absolute(&workdir)
        .with_context(|| format!("cannot resolve work dir {}", workdir.display()))?;
    let config = workdir.join(config.unwrap_or(Path::new("etc/baetyl/conf.yml")));
    Ok((workdir, config))
}

/// `baetyl start`: the master, with v1's defaults for the work dir and config.
pub fn start_args(args: StartArgs) -> anyhow::Result<baetyl_master::cli::MasterArgs> {
    let (workdir, config) = resolve(args.workdir.as_deref(), args.config.as_deref())?;
    Ok(baetyl_master::cli::MasterArgs {
        workdir,
        config: Some(config),
        log_format: args.log_format,
    })
}

/// `baetyl check -w DIR -c FILE`: validates the master config (absent = the built-in defaults, as in v1) and
/// prints `OK!`.
pub fn check_master(workdir: Option<&Path>, config: Option<&Path>) -> anyhow::Result<()> {
    let (_, config) = resolve(workdir, config)?;
    if config.exists() {
        let cfg = baetyl_master::config::MasterConfig::load(&config)?;
        eprintln!(
            "{}: ok (master config, mode {})",
            config.display(),
            cfg.mode.as_str()
        );
    } else {
        eprintln!(
            "{} not found: the built-in defaults will be used",
            config.display()
        );
    }
    println!("{CHECK_OK}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_config_is_under_the_work_dir() {
        let (w, c) = resolve(Some(Path::new("/opt/b")), Some(Path::new("etc/x.yml"))).unwrap();
        assert_eq!(w, PathBuf::from("/opt/b"));
        assert_eq!(c, PathBuf::from("/opt/b/etc/x.yml"));
        let (_, c) = resolve(Some(Path::new("/opt/b")), None).unwrap();
        assert_eq!(c, PathBuf::from("/opt/b/etc/baetyl/conf.yml"));
        let (_, c) = resolve(Some(Path::new("/opt/b")), Some(Path::new("/etc/c.yml"))).unwrap();
        assert_eq!(c, PathBuf::from("/etc/c.yml"));
    }

    #[test]
    fn default_work_dir_is_above_the_binary() {
        let (w, _) = resolve(None, None).unwrap();
        let exe = std::env::current_exe().unwrap().canonicalize().unwrap();
        assert!(
            exe.starts_with(&w),
            "{} under {}",
            exe.display(),
            w.display()
        );
        assert_ne!(exe.parent().unwrap(), w);
    }
}
