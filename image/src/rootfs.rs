//! The read-only root's tree (before mksquashfs): `/bin/baetyl`, the master's `conf.yml` (and, for a development
//! image, its operator token), os-release, hostname, and the mount points init needs; nothing else.

use std::path::Path;

use crate::args::BuildArgs;
use crate::configs::master_config;
use crate::error::{ImageError, Result};
use crate::fs::{read, write};

/// The read-only root's tree.
pub fn stage_rootfs(dir: &Path, baetyl: &Path, args: &BuildArgs) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    for d in [
        "dev",
        "proc",
        "sys",
        "run",
        "tmp",
        "var/lib/baetyl",
        "etc/baetyl",
    ] {
        let p = dir.join(d);
        std::fs::create_dir_all(&p).map_err(|e| ImageError::io(&p, e))?;
    }
    std::os::unix::fs::symlink("../run", dir.join("var/run"))
        .map_err(|e| ImageError::io(dir, e))?;
    let bin = dir.join("bin/baetyl");
    write(&bin, read(baetyl)?)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| ImageError::io(&bin, e))?;
    write(
        &dir.join("etc/os-release"),
        format!(
            "ID=baetyl\nNAME=baetyl\nPRETTY_NAME=\"baetyl {}\"\nVERSION_ID={}\n",
            env!("CARGO_PKG_VERSION"),
            env!("CARGO_PKG_VERSION")
        ),
    )?;
    write(&dir.join("etc/hostname"), format!("{}\n", args.hostname))?;
    write(
        &dir.join("etc/baetyl/conf.yml"),
        master_config(
            args.engine,
            args.dev_api.as_deref(),
            args.dev_api_token.is_some(),
        ),
    )?;
    if let Some(token) = &args.dev_api_token {
        let t = dir.join("etc/baetyl/operator.token");
        write(&t, read(token)?)?;
        std::fs::set_permissions(&t, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| ImageError::io(&t, e))?;
    }
    Ok(())
}
