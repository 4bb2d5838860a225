//! Where things are: the workspace, temporary directories, the Python with grpcio, and the `baetyl` binary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::SystemTime;

/// The workspace root (this crate is `services/testkit` in it).
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A temporary directory, removed at the end unless BAETYL_TEST_KEEP is set (logs, configs and consoles stay
/// for a look after a failure; the path is printed).
pub fn test_dir(prefix: &str) -> tempfile::TempDir {
    let keep = std::env::var_os("BAETYL_TEST_KEEP").is_some();
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .disable_cleanup(keep)
        .tempdir()
        .unwrap_or_else(|e| panic!("creating a temporary directory: {e}"));
    if keep {
        eprintln!("keeping {}", dir.path().display());
    }
    dir
}

/// The Python interpreter for the Python function runtime: the workspace's `.venv` (with grpcio, made by
/// `scripts/setup.sh`) when it exists, else `python3` from PATH.
pub fn python3() -> PathBuf {
    let venv = workspace_dir().join(".venv/bin/python3");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// The Node.js function runtime's modules (`node_modules` with @grpc/grpc-js, installed by `scripts/setup.sh`
/// with `npm ci`), as `BAETYL_NODE_MODULES` names them to `baetyl runtime-node`.
pub fn node_modules() -> PathBuf {
    workspace_dir().join("services/function/runtimes/node/node_modules")
}

/// The `baetyl` binary for tests and benchmarks outside its package (`CARGO_BIN_EXE_baetyl` exists only inside
/// it): `$BAETYL_BIN` if set, else `baetyl` in the target directory of the running executable (same profile).
/// When it is missing or older than the sources it is built from, it is built once per process with
/// `cargo build -p baetyl --bin baetyl`; a failed build panics with cargo's exit status.
pub fn baetyl_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("BAETYL_BIN") {
            return PathBuf::from(p);
        }
        let profile_dir = profile_dir();
        let bin = profile_dir.join("baetyl");
        if let Some(why) = needs_build(&bin) {
            build_baetyl(&profile_dir, &why);
        }
        bin
    })
}

/// `target/<profile>` of the running test, example or benchmark (`target/<profile>/deps/...`,
/// `target/<profile>/examples/...`).
fn profile_dir() -> PathBuf {
    let exe =
        std::env::current_exe().unwrap_or_else(|e| panic!("the running executable's path: {e}"));
    let mut dir = exe
        .parent()
        .unwrap_or_else(|| panic!("{} has no parent directory", exe.display()))
        .to_path_buf();
    if dir
        .file_name()
        .is_some_and(|n| n == "deps" || n == "examples")
    {
        dir.pop();
    }
    dir
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Why `bin` must be built (missing, or older than a file it is built from), or None.
fn needs_build(bin: &Path) -> Option<String> {
    let Some(built) = mtime(bin) else {
        return Some(format!("{} is missing", bin.display()));
    };
    let root = workspace_dir();
    // The crates' sources and build files, the lock file, and the example applications the binary embeds.
    let mut stack: Vec<PathBuf> = ["Cargo.lock", "services", "init", "image", "examples"]
        .iter()
        .map(|p| root.join(p))
        .collect();
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::metadata(&p) else {
            continue;
        };
        if !meta.is_dir() {
            if meta.modified().is_ok_and(|m| m > built) {
                return Some(format!("{} is older than {}", bin.display(), p.display()));
            }
            continue;
        }
        for entry in std::fs::read_dir(&p).into_iter().flatten().flatten() {
            // What the binary is not built from: tests, benchmarks, example programs (the top-level `examples`
            // is on the list above), this kit, outputs.
            let name = entry.file_name();
            let skip = ["tests", "benches", "examples", "testkit", "target", ".venv"]
                .iter()
                .any(|s| name == *s);
            if !skip {
                stack.push(entry.path());
            }
        }
    }
    None
}

fn build_baetyl(profile_dir: &Path, why: &str) {
    let target_dir = profile_dir
        .parent()
        .filter(|t| t.join("CACHEDIR.TAG").exists())
        .unwrap_or_else(|| {
            panic!(
                "cannot tell the cargo target directory of {}: build baetyl yourself and set BAETYL_BIN",
                profile_dir.display()
            )
        });
    let profile = profile_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "-p",
        "baetyl",
        "--bin",
        "baetyl",
        "--manifest-path",
    ])
    .arg(workspace_dir().join("Cargo.toml"))
    .arg("--target-dir")
    .arg(target_dir);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    eprintln!("{why}: building it with {cmd:?}");
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        status.success(),
        "{cmd:?} failed ({status}); the tests need the baetyl binary"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_old_binary_is_built_a_fresh_one_is_not() {
        let dir = tempfile::tempdir().expect("dir");
        let bin = dir.path().join("baetyl");
        assert!(needs_build(&bin).is_some_and(|why| why.ends_with("is missing")));
        let f = std::fs::File::create(&bin).expect("create");
        f.set_modified(SystemTime::UNIX_EPOCH).expect("set mtime");
        assert!(needs_build(&bin).is_some_and(|why| why.contains("is older than")));
        f.set_modified(SystemTime::now() + std::time::Duration::from_secs(3600))
            .expect("set mtime");
        assert_eq!(needs_build(&bin), None);
    }
}
