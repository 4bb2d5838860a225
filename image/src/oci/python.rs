//! The Python runtime's layer: Debian's python3 for the target architecture (the packages' files, fetched and
//! unpacked by [`crate::apt`] into the package cache) and grpcio with its one dependency, wheels for the
//! target from PyPI (`pip download --platform`, pinned versions, kept in the cache so that a rebuild needs no
//! network), unpacked into `/usr/lib/python3/dist-packages`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::apt;
use crate::arch::Arch;
use crate::error::{ImageError, Result};
use crate::oci::layer::LayerBuilder;
use crate::run::Runner;

/// Debian 12's interpreter, its standard library and the shared libraries the runtime loads (grpcio's module
/// needs libstdc++). Left out on purpose: readline, curses, dbm, nis (and the Kerberos chain behind it).
pub const DEBS: &[&str] = &[
    "python3.11-minimal",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "python3-minimal",
    "libc6",
    "libgcc-s1",
    "libstdc++6",
    "libexpat1",
    "zlib1g",
    "libssl3",
    "libffi8",
    "libbz2-1.0",
    "liblzma5",
    "libcrypt1",
    "libuuid1",
    "libsqlite3-0",
];

/// The wheels, pinned: `(distribution, version)`.
pub const WHEELS: &[(&str, &str)] = &[("grpcio", "1.85.3"), ("typing_extensions", "4.16.0")];

/// Files of the packages that a container never reads.
fn skip_deb_path(rel: &Path) -> bool {
    const SKIP: &[&str] = &[
        "usr/share/doc",
        "usr/share/man",
        "usr/share/info",
        "usr/share/lintian",
        "usr/share/locale",
        "usr/share/bug",
        "usr/share/binfmts",
        "usr/share/gdb",
        "usr/share/gcc",
    ];
    SKIP.iter().any(|s| rel.starts_with(s))
        || rel
            .file_name()
            .is_some_and(|n| n == ".unpacked" || n == "gconv")
}

/// The wheel of `dist` `version` for this architecture in `dir`, if it is there.
fn wheel(dir: &Path, dist: &str, version: &str, a: &Arch) -> Option<PathBuf> {
    let prefix = format!("{dist}-{version}-");
    let entries = std::fs::read_dir(dir).ok()?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.starts_with(&prefix)
                && n.ends_with(".whl")
                && (n.ends_with("-none-any.whl") || n.contains(&format!("_{}.", a.name)))
        })
        .collect();
    names.sort();
    names.first().map(|n| dir.join(n))
}

/// The pip that downloads the wheels: `--pip`, else the project's `.venv` (scripts/setup.sh makes it), else
/// `pip3` on PATH.
pub fn find_pip(given: Option<&Path>, source: Option<&Path>) -> PathBuf {
    if let Some(p) = given {
        return p.to_path_buf();
    }
    if let Some(venv) = source.map(|s| s.join(".venv/bin/pip"))
        && venv.is_file()
    {
        return venv;
    }
    PathBuf::from("pip3")
}

/// Downloads the pinned wheels for `a` into `cache/pypi/<arch>` unless they are there.
fn wheels(run: &dyn Runner, cache: &Path, a: &Arch, pip: &Path) -> Result<Vec<PathBuf>> {
    let dir = cache.join("pypi").join(a.name);
    let have: Option<Vec<PathBuf>> = WHEELS.iter().map(|(d, v)| wheel(&dir, d, v, a)).collect();
    if let Some(have) = have {
        println!("    cached     {} wheels in {}", have.len(), dir.display());
        return Ok(have);
    }
    std::fs::create_dir_all(&dir).map_err(|e| ImageError::io(&dir, e))?;
    let mut cmd = Command::new(pip);
    cmd.args([
        "download",
        "-q",
        "--disable-pip-version-check",
        "--only-binary=:all:",
        "--no-deps",
        "--implementation",
        "cp",
        "--python-version",
        "3.11",
        "--abi",
        "cp311",
        "--abi",
        "none",
    ]);
    for glibc in [
        "manylinux_2_36",
        "manylinux_2_34",
        "manylinux_2_28",
        "manylinux_2_17",
        "manylinux2014",
    ] {
        cmd.arg("--platform").arg(format!("{glibc}_{}", a.name));
    }
    cmd.arg("--platform").arg("any");
    cmd.arg("--dest").arg(&dir);
    for (d, v) in WHEELS {
        cmd.arg(format!("{d}=={v}"));
    }
    run.output(&mut cmd)?;
    WHEELS
        .iter()
        .map(|(d, v)| {
            wheel(&dir, d, v, a).ok_or_else(|| {
                ImageError::Input(format!(
                    "pip download left no {d} {v} wheel for {} in {}",
                    a.name,
                    dir.display()
                ))
            })
        })
        .collect()
}

/// Adds Debian's python3 and the wheels to `layer`.
pub fn add(
    run: &dyn Runner,
    cache: &Path,
    a: &Arch,
    pip: &Path,
    layer: &mut LayerBuilder,
) -> Result<()> {
    for name in DEBS {
        let p = apt::fetch(run, cache, name, a.debarch)?;
        layer.tree(&p.root, "", skip_deb_path)?;
    }
    let site = cache.join("pypi").join(format!("{}-site", a.name));
    let _ = std::fs::remove_dir_all(&site);
    for whl in wheels(run, cache, a, pip)? {
        // A wheel is a zip archive; the host's Python unpacks it (the image builder already needs python3).
        run.output(
            Command::new("python3")
                .args(["-m", "zipfile", "-e"])
                .arg(&whl)
                .arg(&site),
        )?;
    }
    layer.tree(&site, "usr/lib/python3/dist-packages", |_| false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wheels_for_the_architecture_only() {
        let d = tempfile::tempdir().unwrap();
        for n in [
            "grpcio-1.85.3-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl",
            "grpcio-1.85.3-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
            "typing_extensions-4.16.0-py3-none-any.whl",
        ] {
            std::fs::write(d.path().join(n), "").unwrap();
        }
        let x86 = crate::arch::arch("x86_64").unwrap();
        let got = wheel(d.path(), "grpcio", "1.85.3", x86).unwrap();
        assert!(got.display().to_string().contains("x86_64.manylinux2014"));
        assert!(wheel(d.path(), "typing_extensions", "4.16.0", x86).is_some());
        assert!(wheel(d.path(), "grpcio", "1.85.4", x86).is_none());
    }

    #[test]
    fn documentation_and_markers_stay_out() {
        assert!(skip_deb_path(Path::new("usr/share/doc/libc6")));
        assert!(skip_deb_path(Path::new(".unpacked")));
        assert!(skip_deb_path(Path::new("usr/lib/x86_64-linux-gnu/gconv")));
        assert!(!skip_deb_path(Path::new("usr/lib/python3.11/json")));
    }
}
