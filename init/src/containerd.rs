//! containerd under init, for a master in containerd mode. When the master's `conf.yml` says `mode: containerd`
//! (or v1's `docker`), init writes containerd's config, starts Debian's `containerd` before the master, waits
//! (bounded) for its socket, and restarts it with backoff whenever it exits; the master's containerd engine
//! waits for it to come back and its containers, which live on in their shims, with it.
//!
//! containerd's config: the master's `containerd.socket` (default `/run/containerd/containerd.sock`) as the gRPC
//! address; the state dir is the socket's directory (`/run/containerd`, a tmpfs: runtime state must not outlive
//! a boot); the root (content store, snapshots, metadata) is `var/lib/containerd` in the master's work dir, on
//! the data partition, so imported images survive a reboot and are not imported again; the CRI plugin and the
//! snapshotters a device does not use are disabled (smaller, quicker start, no errors about missing kernel
//! features); containerd logs warnings and errors only (the console is slow under emulation) and is the last
//! thing the OOM killer picks.
//!
//! Death is noticed through a pidfd (PID 1's loop reaps every child, containerd included, as an orphan), so the
//! supervisor never mistakes a reused pid for containerd.

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::unistd::Pid;
use serde::Deserialize;

use crate::config::MasterConfig;
use crate::log::{error, info, warning};
use crate::process::{Backoff, after, describe, reap_all};

/// containerd's socket when the master's conf.yml names none (the master's default too).
pub const DEFAULT_SOCKET: &str = "/run/containerd/containerd.sock";
/// The config file init writes, in the state dir.
pub const CONFIG_FILE: &str = "baetyl-containerd.toml";
/// Plugins a device does not use.
pub const DISABLED_PLUGINS: &[&str] = &[
    "io.containerd.grpc.v1.cri",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
];
/// How long init waits for containerd's socket before starting the master anyway (the master waits
/// `containerd.connect_timeout` of its own, and init restarts it when it gives up).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The keys of the master's conf.yml init needs; the master validates the whole file itself.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct MasterConf {
    mode: Option<String>,
    containerd: ConfContainerd,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ConfContainerd {
    socket: Option<PathBuf>,
}

/// The value of option `short`/`long` in `args` (`-w X`, `--workdir X`, `--workdir=X`).
fn option<'a>(args: &'a [String], short: &str, long: &str) -> Option<&'a str> {
    let eq = format!("{long}=");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == short || a == long {
            return it.next().map(String::as_str);
        }
        if let Some(v) = a.strip_prefix(&eq) {
            return Some(v);
        }
    }
    None
}

/// The master's work dir and conf.yml from its command line (`-w`, `-c`, as `baetyl master` reads them) and
/// the directory it starts in (`master.workdir`, else init's own).
pub fn master_paths(cfg: &MasterConfig) -> (PathBuf, PathBuf) {
    let cwd = cfg
        .workdir
        .clone()
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_else(|| PathBuf::from("/"));
    let workdir = cwd.join(option(&cfg.command, "-w", "--workdir").unwrap_or("."));
    let conf = match option(&cfg.command, "-c", "--config") {
        Some(c) => cwd.join(c),
        None => workdir.join("etc/baetyl/conf.yml"),
    };
    (workdir, conf)
}

/// containerd, supervised by init.
pub struct Containerd {
    program: String,
    socket: PathBuf,
    state: PathBuf,
    root: PathBuf,
    backoff: Backoff,
    pid: Option<Pid>,
    pidfd: Option<OwnedFd>,
    started: Instant,
    restart_at: Option<Instant>,
    starts: u32,
}

impl Containerd {
    /// containerd for the master of `cfg`, when its conf.yml selects the containerd engine. A conf.yml that
    /// cannot be read or parsed means no containerd here (the master reports its own config errors).
    pub fn for_master(cfg: &MasterConfig) -> Option<Containerd> {
        if cfg.command.is_empty() {
            return None;
        }
        let (workdir, conf) = master_paths(cfg);
        if !conf.exists() {
            return None;
        }
        let c: MasterConf = match baetyl_sdk::config::load_yaml(&conf) {
            Ok(c) => c,
            Err(e) => {
                warning!("{e}; not starting containerd (the master will say what is wrong)");
                return None;
            }
        };
        if !matches!(c.mode.as_deref(), Some("containerd" | "docker")) {
            return None;
        }
        let socket = c
            .containerd
            .socket
            .map(|s| workdir.join(s))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
        Some(Containerd::new(
            "containerd",
            socket,
            workdir.join("var/lib/containerd"),
        ))
    }

    /// containerd (`program`, looked up in PATH) serving `socket` with its root in `root`.
    pub fn new(program: &str, socket: PathBuf, root: PathBuf) -> Containerd {
        let state = socket
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/run/containerd"));
        Containerd {
            program: program.to_string(),
            socket,
            state,
            root,
            backoff: Backoff::new(
                Duration::from_millis(500),
                Duration::from_secs(30),
                Duration::from_secs(60),
            ),
            pid: None,
            pidfd: None,
            started: Instant::now(),
            restart_at: None,
            starts: 0,
        }
    }

    pub fn pid(&self) -> Option<Pid> {
        self.pid
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// containerd's config file (TOML, version 2).
    pub fn config_text(&self) -> String {
        let plugins: Vec<String> = DISABLED_PLUGINS.iter().map(|p| format!("{p:?}")).collect();
        format!(
            "# written by baetyl init\nversion = 2\nroot = {root:?}\nstate = {state:?}\noom_score = -999\n\
             disabled_plugins = [{plugins}]\n\n[grpc]\n  address = {sock:?}\n\n[ttrpc]\n  address = {ttrpc:?}\n\n\
             [debug]\n  level = \"warn\"\n",
            root = self.root.display().to_string(),
            state = self.state.display().to_string(),
            plugins = plugins.join(", "),
            sock = self.socket.display().to_string(),
            ttrpc = format!("{}.ttrpc", self.socket.display()),
        )
    }

    fn write_config(&self) -> std::io::Result<PathBuf> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&self.state)?;
        let path = self.state.join(CONFIG_FILE);
        std::fs::write(&path, self.config_text())?;
        Ok(path)
    }

    /// Starts containerd; on failure a restart is scheduled.
    pub fn start(&mut self, now: Instant) {
        self.restart_at = None;
        self.starts += 1;
        self.started = now;
        let spawned = self.write_config().and_then(|config| {
            let mut cmd = Command::new(&self.program);
            cmd.arg("--config")
                .arg(&config)
                .stdin(Stdio::null())
                .process_group(0);
            if std::env::var_os("PATH").is_none() {
                cmd.env("PATH", PATH);
            }
            cmd.spawn()
        });
        match spawned {
            Ok(child) => {
                let pid = Pid::from_raw(child.id() as i32);
                // init reaps every pid itself with waitpid(-1); the pidfd tells when this one is gone.
                drop(child);
                self.pidfd = pidfd_open(pid);
                self.pid = Some(pid);
                info!(
                    "containerd started pid={pid} (start #{}), socket {}",
                    self.starts,
                    self.socket.display()
                );
            }
            Err(e) => {
                let delay = self.backoff.next_delay(Duration::ZERO);
                error!(
                    "cannot start `{}`: {e}; retrying in {delay:?}",
                    self.program
                );
                self.restart_at = Some(after(now, delay));
            }
        }
    }

    /// Whether containerd's socket accepts connections.
    pub fn answers(&self) -> bool {
        std::os::unix::net::UnixStream::connect(&self.socket).is_ok()
    }

    /// Waits until containerd's socket answers, containerd exits, or `timeout` passes, reaping orphans
    /// meanwhile (the master is not running yet); answers whether it answers.
    pub fn wait_ready(&mut self, timeout: Duration) -> bool {
        let start = Instant::now();
        loop {
            for (pid, status) in reap_all().exited {
                if Some(pid) != self.pid {
                    info!("reaped orphan pid={pid} ({})", describe(&status));
                }
            }
            if self.answers() {
                info!(
                    "containerd answers on {} after {:.2}s",
                    self.socket.display(),
                    start.elapsed().as_secs_f64()
                );
                return true;
            }
            if self.check_exit(Instant::now()) {
                return false;
            }
            if start.elapsed() >= timeout {
                warning!(
                    "containerd does not answer on {} after {timeout:?}; starting the master anyway",
                    self.socket.display()
                );
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Notices containerd's exit (and schedules the restart); true if it just exited.
    fn check_exit(&mut self, now: Instant) -> bool {
        let Some(pid) = self.pid else { return false };
        if !self.exited() {
            return false;
        }
        self.pid = None;
        self.pidfd = None;
        let ran = now.saturating_duration_since(self.started);
        let delay = self.backoff.next_delay(ran);
        warning!(
            "containerd pid={pid} exited after {:.1}s; restarting in {delay:?} (containers live on in their shims)",
            ran.as_secs_f64()
        );
        self.restart_at = Some(after(now, delay));
        true
    }

    fn exited(&self) -> bool {
        match (&self.pidfd, self.pid) {
            (Some(fd), _) => {
                let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
                matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
            }
            // No pidfd (a kernel before 5.3): whether the pid is gone.
            (None, Some(pid)) => nix::sys::signal::kill(pid, None) == Err(nix::errno::Errno::ESRCH),
            (None, None) => true,
        }
    }

    /// Called after each wake-up of PID 1's loop (after reaping): notices an exit, restarts when due, and
    /// answers how soon it wants to be called again (the restart's deadline).
    pub fn tick(&mut self, now: Instant) -> Option<Duration> {
        self.check_exit(now);
        if let Some(at) = self.restart_at {
            if now >= at {
                self.start(now);
            } else {
                return Some(at - now);
            }
        }
        self.restart_at.map(|at| at.saturating_duration_since(now))
    }
}

/// A pidfd of `pid` (readable once the process has exited, whoever reaps it), if the kernel has them.
fn pidfd_open(pid: Pid) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; nothing is borrowed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the descriptor was just returned by the kernel and is owned by nothing else.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master(command: &[&str], workdir: Option<&Path>) -> MasterConfig {
        MasterConfig {
            command: command.iter().map(|s| s.to_string()).collect(),
            workdir: workdir.map(Path::to_path_buf),
            ..MasterConfig::default()
        }
    }

    #[test]
    fn the_masters_paths_come_from_its_command_line() {
        let m = master(
            &[
                "/bin/baetyl",
                "master",
                "-w",
                "/var/lib/baetyl",
                "-c",
                "/etc/baetyl/conf.yml",
            ],
            None,
        );
        assert_eq!(
            master_paths(&m),
            (
                PathBuf::from("/var/lib/baetyl"),
                PathBuf::from("/etc/baetyl/conf.yml")
            )
        );
        let m = master(
            &["baetyl", "master", "--workdir=w"],
            Some(Path::new("/data")),
        );
        assert_eq!(
            master_paths(&m),
            (
                PathBuf::from("/data/w"),
                PathBuf::from("/data/w/etc/baetyl/conf.yml")
            )
        );
    }

    #[test]
    fn only_a_containerd_master_gets_containerd() {
        let dir = tempfile::tempdir().unwrap();
        let w = dir.path();
        let m = master(&["baetyl", "master", "-w", &w.display().to_string()], None);
        assert!(Containerd::for_master(&m).is_none(), "no conf.yml: native");
        std::fs::create_dir_all(w.join("etc/baetyl")).unwrap();
        let conf = w.join("etc/baetyl/conf.yml");
        std::fs::write(&conf, "mode: native\ngrace: 2s\n").unwrap();
        assert!(Containerd::for_master(&m).is_none());
        std::fs::write(&conf, "mode: [not, a, mode\n").unwrap();
        assert!(
            Containerd::for_master(&m).is_none(),
            "unparsable: the master says why"
        );
        std::fs::write(&conf, "mode: docker\nserver: {timeout: 3s}\n").unwrap();
        let c = Containerd::for_master(&m).expect("v1's docker is containerd");
        assert_eq!(c.socket(), Path::new(DEFAULT_SOCKET));
        std::fs::write(
            &conf,
            "mode: containerd\ncontainerd: {socket: /run/x/c.sock, images: [lib/oci]}\n",
        )
        .unwrap();
        let c = Containerd::for_master(&m).expect("containerd");
        assert_eq!(c.socket(), Path::new("/run/x/c.sock"));
        let text = c.config_text();
        assert!(text.contains("address = \"/run/x/c.sock\""), "{text}");
        assert!(text.contains("state = \"/run/x\""), "{text}");
        assert!(
            text.contains(&format!(
                "root = \"{}\"",
                w.join("var/lib/containerd").display()
            )),
            "{text}"
        );
        assert!(text.contains("\"io.containerd.grpc.v1.cri\""), "{text}");
    }

    #[test]
    fn a_missing_program_is_retried_with_backoff() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Containerd::new(
            "/nonexistent/containerd",
            dir.path().join("c.sock"),
            dir.path().join("root"),
        );
        let now = Instant::now();
        c.start(now);
        assert!(c.pid().is_none());
        let wait = c.tick(now).expect("a restart is due");
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(500));
        assert!(dir.path().join(CONFIG_FILE).exists());
    }
}
