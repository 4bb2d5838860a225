//! Debian packages for the target architecture, fetched with `apt-get download` (apt checks each file against
//! the signed archive index) into a cache that later builds reuse, and unpacked with `dpkg -x`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{ImageError, Result};
use crate::run::Runner;

/// A package unpacked in the cache.
pub struct Unpacked {
    pub deb: PathBuf,
    pub root: PathBuf,
    pub cached: bool,
}

/// `name:arch` when the target is not the host's own architecture.
fn qualified(name: &str, debarch: &str) -> String {
    format!("{name}:{debarch}")
}

/// The candidate version of a package from `apt-cache policy` output.
pub fn candidate(policy: &str) -> Option<String> {
    policy
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty() && v != "(none)")
}

/// The versioned kernel package a meta package (`linux-image-cloud-amd64`) depends on, from `apt-cache depends`.
pub fn kernel_dependency(depends: &str) -> Option<String> {
    depends.lines().find_map(|l| {
        let dep = l.trim().strip_prefix("Depends:")?.trim();
        let name = dep.split(':').next()?.trim();
        let rest = name.strip_prefix("linux-image-")?;
        rest.starts_with(|c: char| c.is_ascii_digit())
            .then(|| name.to_string())
    })
}

/// The file name apt gives a downloaded package (an epoch's `:` is written `%3a`).
pub fn deb_file_name(name: &str, version: &str, debarch: &str) -> String {
    format!("{name}_{}_{debarch}.deb", version.replace(':', "%3a"))
}

/// Resolves `name` for `debarch`, downloads it into `cache/debarch/debs` unless that exact version is there,
/// and unpacks it into `cache/debarch/<file stem>`.
pub fn fetch(run: &dyn Runner, cache: &Path, name: &str, debarch: &str) -> Result<Unpacked> {
    let q = qualified(name, debarch);
    let policy = run.output(Command::new("apt-cache").args(["policy", &q]))?;
    let version = candidate(&policy).ok_or_else(|| {
        ImageError::Input(format!(
            "apt knows no candidate for {q}: run `apt-get update` (and `dpkg --add-architecture {debarch}` \
             for a foreign architecture)"
        ))
    })?;
    let debs = cache.join(debarch).join("debs");
    std::fs::create_dir_all(&debs).map_err(|e| ImageError::io(&debs, e))?;
    let file = debs.join(deb_file_name(name, &version, debarch));
    let cached = file.is_file();
    if !cached {
        run.output(
            Command::new("apt-get")
                .args(["download", "-q", &q])
                .current_dir(&debs),
        )?;
        if !file.is_file() {
            return Err(ImageError::Input(format!(
                "apt-get download {q} did not leave {}",
                file.display()
            )));
        }
    }
    let stem = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let root = cache.join(debarch).join(&stem);
    if !root.join(".unpacked").is_file() {
        let tmp = cache.join(debarch).join(format!("{stem}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| ImageError::io(&tmp, e))?;
        run.output(Command::new("dpkg").arg("-x").arg(&file).arg(&tmp))?;
        std::fs::write(tmp.join(".unpacked"), "").map_err(|e| ImageError::io(&tmp, e))?;
        let _ = std::fs::remove_dir_all(&root);
        std::fs::rename(&tmp, &root).map_err(|e| ImageError::io(&root, e))?;
    }
    Ok(Unpacked {
        deb: file,
        root,
        cached,
    })
}

/// The versioned kernel package behind a meta package, for `debarch`.
pub fn resolve_kernel(run: &dyn Runner, meta: &str, debarch: &str) -> Result<String> {
    let q = qualified(meta, debarch);
    let out = run.output(Command::new("apt-cache").args(["depends", &q]))?;
    kernel_dependency(&out).ok_or_else(|| {
        ImageError::Input(format!(
            "cannot resolve the kernel behind {q}: run `apt-get update` (and `dpkg --add-architecture {debarch}`)"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// apt and dpkg as the cache sees them: `apt-get download` leaves the file, `dpkg -x` unpacks a marker.
    #[derive(Default)]
    struct FakeApt {
        calls: RefCell<Vec<String>>,
    }

    impl Runner for FakeApt {
        fn output(&self, cmd: &mut Command) -> Result<String> {
            let line = crate::run::describe(cmd);
            self.calls.borrow_mut().push(line.clone());
            let args: Vec<String> = cmd
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            match args.first().map(String::as_str) {
                Some("policy") => Ok(format!(
                    "{}:\n  Installed: (none)\n  Candidate: 1:2.0-1\n",
                    args[1]
                )),
                Some("download") => {
                    let dir = cmd.get_current_dir().unwrap().to_path_buf();
                    std::fs::write(dir.join("pkg_1%3a2.0-1_arm64.deb"), "deb").unwrap();
                    Ok(String::new())
                }
                Some("-x") => {
                    std::fs::write(Path::new(&args[2]).join("unpacked-file"), "x").unwrap();
                    Ok(String::new())
                }
                _ => panic!("unexpected command {line}"),
            }
        }
        fn status(&self, cmd: &mut Command) -> Result<()> {
            panic!("unexpected command {}", crate::run::describe(cmd))
        }
    }

    #[test]
    fn second_fetch_comes_from_the_cache() {
        let cache = tempfile::tempdir().unwrap();
        let apt = FakeApt::default();
        let first = fetch(&apt, cache.path(), "pkg", "arm64").unwrap();
        assert!(!first.cached);
        assert!(first.root.join("unpacked-file").is_file());
        assert_eq!(apt.calls.borrow().len(), 3, "{:?}", apt.calls.borrow());
        assert!(apt.calls.borrow()[1].contains("download -q pkg:arm64"));

        let again = FakeApt::default();
        let second = fetch(&again, cache.path(), "pkg", "arm64").unwrap();
        assert!(second.cached);
        assert_eq!(second.root, first.root);
        assert_eq!(
            again.calls.borrow().as_slice(),
            ["apt-cache policy pkg:arm64"],
            "only the version check: no download, no unpacking"
        );
    }

    #[test]
    fn parses_apt_outputs() {
        let policy =
            "systemd-boot-efi:arm64:\n  Installed: (none)\n  Candidate: 252.39-1~deb12u2\n";
        assert_eq!(candidate(policy).as_deref(), Some("252.39-1~deb12u2"));
        assert_eq!(candidate("x:\n  Candidate: (none)\n"), None);
        let deps = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n";
        assert_eq!(
            kernel_dependency(deps).as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        let deps = "linux-image-arm64:arm64\n  Depends: linux-image-6.1.0-56-arm64:arm64\n";
        assert_eq!(
            kernel_dependency(deps).as_deref(),
            Some("linux-image-6.1.0-56-arm64")
        );
        assert_eq!(
            deb_file_name("foo", "1:2.3-4", "arm64"),
            "foo_1%3a2.3-4_arm64.deb"
        );
    }
}
