//! A real containerd of the test's own (Debian's containerd 1.6 and runc): temporary root, state dir and
//! socket, the CRI plugin disabled, stopped (SIGTERM) on drop. It needs root; [`Containerd::unavailable`] says
//! why a test must skip (not root, containerd or runc missing) so that the test can print it and return.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::process::Process;
use crate::wait::poll;

/// How long containerd may take to answer on its socket (it takes ~2 s on a loaded machine).
const READY: Duration = Duration::from_secs(60);

pub struct Containerd {
    dir: tempfile::TempDir,
    /// The namespace `ctr` works in (default `baetyl`).
    namespace: String,
    _process: Process,
}

fn on_path(prog: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        .unwrap_or(false)
}

impl Containerd {
    /// Why containerd tests cannot run here, if they cannot.
    pub fn unavailable() -> Option<String> {
        if !nix::unistd::geteuid().is_root() {
            return Some("containerd tests need root".into());
        }
        let missing: Vec<&str> = ["containerd", "containerd-shim-runc-v2", "runc", "ctr"]
            .into_iter()
            .filter(|p| !on_path(p))
            .collect();
        (!missing.is_empty()).then(|| {
            format!(
                "{} not installed (scripts/setup.sh installs containerd and runc)",
                missing.join(", ")
            )
        })
    }

    /// Starts containerd in a new temporary directory and waits until it answers.
    pub fn start() -> Result<Containerd> {
        let dir = crate::paths::test_dir("containerd");
        let d = dir.path();
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n",
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = d.join("containerd.sock").display(),
        );
        std::fs::write(d.join("config.toml"), config).context("config.toml")?;
        let log = d.join("containerd.log");
        let out = std::fs::File::create(&log).context("containerd.log")?;
        let process = Process::spawn(
            Command::new("containerd")
                .arg("--config")
                .arg(d.join("config.toml"))
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out),
            "containerd",
        )?
        .with_log(&log)
        .term_on_drop(Duration::from_secs(10));
        let c = Containerd {
            dir,
            namespace: "baetyl".into(),
            _process: process,
        };
        if poll(READY, || {
            c.ctr(&["version"]).ok().filter(|o| o.status.success())
        })
        .is_err()
        {
            bail!(
                "containerd did not answer on {} within {READY:?}:\n{}",
                c.socket().display(),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        Ok(c)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `ctr` works in namespace `ns` from now on. runc keeps its state in `/run/containerd/runc/<namespace>`
    /// whatever containerd's state dir, so tests that run containers in parallel need namespaces of their own.
    pub fn with_namespace(mut self, ns: &str) -> Self {
        self.namespace = ns.to_string();
        self
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Runs `ctr` against this containerd (in its namespace, `baetyl` unless set).
    pub fn ctr(&self, args: &[&str]) -> Result<Output> {
        Command::new("ctr")
            .arg("--address")
            .arg(self.socket())
            .args(["--namespace", &self.namespace])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("ctr")
    }

    /// Runs `ctr` and answers its standard output; fails with its standard error.
    pub fn ctr_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.ctr(args)?;
        if !out.status.success() {
            bail!(
                "ctr {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
