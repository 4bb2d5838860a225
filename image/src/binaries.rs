//! The static `baetyl` and `baetyl-init` binaries for the target, built with cargo from the source tree (profile
//! `image`, `+crt-static`; Debian's rustc-web cross toolchain for aarch64). `baetyl` is the device build
//! (`--no-default-features`): the device's roles without the fleet server and the image builder.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::arch::Arch;
use crate::error::Result;
use crate::run::{self, Runner};

/// The source tree this binary was built from, when it is still there.
pub fn default_source() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()?
        .to_path_buf();
    dir.join("Cargo.toml").is_file().then_some(dir)
}

/// Builds the static `baetyl` and `baetyl-init` for the target with cargo (Debian's cross toolchain for
/// aarch64, in its own target dir since it is another compiler), profile `image`.
pub fn cargo_build(run: &dyn Runner, a: &Arch, source: &Path) -> Result<(PathBuf, PathBuf)> {
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|d| if d.is_absolute() { d } else { source.join(d) })
        .unwrap_or_else(|| source.join("target"));
    let mut cmd;
    let target_dir;
    if a.name == "aarch64" {
        target_dir = base.join("cross-aarch64");
        cmd = Command::new("/usr/bin/cargo");
        cmd.env("RUSTC", "/usr/bin/rustc")
            .env(
                "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER",
                "aarch64-linux-gnu-gcc",
            )
            .env("CC_aarch64_unknown_linux_gnu", "aarch64-linux-gnu-gcc")
            .env("CXX_aarch64_unknown_linux_gnu", "aarch64-linux-gnu-g++")
            .env("AR_aarch64_unknown_linux_gnu", "aarch64-linux-gnu-ar");
    } else {
        target_dir = base.clone();
        cmd = Command::new("cargo");
    }
    cmd.current_dir(source)
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("RUSTC_WRAPPER")
        .args([
            "build",
            "--locked",
            "--profile",
            "image",
            "--target",
            a.rust_target,
            // The device build: no fleet server (`cloud`), no image builder (services/baetyl/Cargo.toml).
            "--no-default-features",
        ])
        .args([
            "-p",
            "baetyl",
            "--bin",
            "baetyl",
            "-p",
            "baetyl-init",
            "--bin",
            "baetyl-init",
        ]);
    println!("    {}", run::describe(&cmd));
    run.status(&mut cmd)?;
    let dir = target_dir.join(a.rust_target).join("image");
    Ok((dir.join("baetyl"), dir.join("baetyl-init")))
}
