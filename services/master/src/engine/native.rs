//! The native engine: each instance is a child process in its own process group (and cgroup when the
//! host allows), with its own work dir `var/run/baetyl/services/<svc>/<inst>` where its volumes are linked
//! in, and its stdout/stderr in a rotated log `var/log/baetyl/services/<svc>/<inst>.log`.
//!
//! Every started instance leaves a state file in `var/run/baetyl/instances/` until it is gone, so a master
//! that restarts after a crash finds and stops what its predecessor left.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use super::cgroup::{Cgroup, CgroupRoot};
use super::child::{ChildSetup, Credentials};
use super::confine;
use super::logfile::{LogSink, RotatingLog};
use super::owner;
use super::{Engine, Exit, InstanceSpec, InstanceStats, ResolvedMount, Running, RunningInfo};
use crate::config::{InstanceLogConfig, MasterConfig, ServiceSpec};
use crate::error::{MasterError, Result};
use crate::{limits, stats};

/// A directory package: `<packages dir>/<name>/package.yml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PackageManifest {
    /// The program to run, relative to the package directory (or absolute).
    entry: String,
    /// Default arguments; a service's `command` replaces them.
    #[serde(default)]
    args: Vec<String>,
}

/// A role of the `baetyl` binary that services can name as their image (`baetyl-hub` -> `baetyl hub`).
#[derive(Debug, Clone)]
pub struct Role {
    pub image: String,
    pub args: Vec<String>,
}

/// What an image name resolved to.
#[derive(Debug, Clone)]
struct Program {
    entry: PathBuf,
    args: Vec<String>,
    dir: Option<PathBuf>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    service: String,
    instance: String,
    pid: u32,
    start_ticks: u64,
    cgroup: Option<PathBuf>,
}

pub struct NativeEngine {
    workdir: PathBuf,
    /// Where the engine may make directories and find volumes: the work dir and conf.yml
    /// `volumes.allowed_roots`, resolved.
    roots: Vec<PathBuf>,
    packages: Vec<PathBuf>,
    self_exe: PathBuf,
    roles: Vec<Role>,
    cgroups: Option<CgroupRoot>,
    log: InstanceLogConfig,
    warned: Mutex<BTreeSet<String>>,
}

impl NativeEngine {
    /// `workdir` must be absolute; `cfg` is the master's conf.yml. Says once (in the log) when instances
    /// will not get cgroups.
    pub fn new(workdir: &Path, cfg: &MasterConfig, roles: Vec<Role>) -> Result<Self> {
        let workdir = workdir
            .canonicalize()
            .map_err(|e| MasterError::io(workdir, e))?;
        let workdir = workdir.as_path();
        let mut roots = vec![workdir.to_path_buf()];
        // A root that does not exist yet (an absent USB stick) is taken as written.
        roots.extend(
            cfg.volumes
                .allowed_roots
                .iter()
                .map(|r| r.canonicalize().unwrap_or_else(|_| r.clone())),
        );
        let self_exe = std::env::current_exe().map_err(|e| MasterError::io("/proc/self/exe", e))?;
        let cgroups = match CgroupRoot::detect(workdir) {
            Ok(root) => {
                tracing::info!(cgroup = %root.base().display(), "instances get cgroup v2 groups");
                Some(root)
            }
            Err(why) => {
                tracing::warn!(
                    "instances run without cgroups ({why}): `resources` limits are not enforced and stop relies on process groups"
                );
                None
            }
        };
        if crate::users::enabled_here(cfg.users.mode) {
            crate::users::open_workdir_for_services(workdir)?;
        }
        Ok(NativeEngine {
            workdir: workdir.to_path_buf(),
            roots,
            packages: cfg
                .native
                .packages
                .iter()
                .map(|p| workdir.join(p))
                .collect(),
            self_exe,
            roles,
            cgroups,
            log: cfg.instance_log.clone(),
            warned: Mutex::new(BTreeSet::new()),
        })
    }

    fn state_dir(&self) -> PathBuf {
        self.workdir.join("var/run/baetyl/instances")
    }

    fn state_path(&self, service: &str, instance: &str) -> PathBuf {
        self.state_dir().join(format!("{service}+{instance}.json"))
    }

    /// `registry/path/name:tag` -> `name`.
    fn image_name(image: &str) -> &str {
        let last = image.rsplit('/').next().unwrap_or(image);
        last.split(['@', ':']).next().unwrap_or(last)
    }

    fn resolve(&self, service: &str, image: &str) -> Result<Program> {
        let name = Self::image_name(image);
        for dir in &self.packages {
            let pkg = dir.join(name);
            let manifest = pkg.join("package.yml");
            if manifest.is_file() {
                let m: PackageManifest = baetyl_sdk::config::load_yaml(&manifest)?;
                let entry = pkg.join(&m.entry);
                if !entry.is_file() {
                    return Err(MasterError::PackageEntryMissing {
                        service: service.to_string(),
                        package: pkg,
                        entry: m.entry,
                    });
                }
                return Ok(Program {
                    entry,
                    args: m.args,
                    dir: Some(pkg),
                });
            }
        }
        if let Some(role) = self.roles.iter().find(|r| r.image == name) {
            return Ok(Program {
                entry: self.self_exe.clone(),
                args: role.args.clone(),
                dir: None,
            });
        }
        let searched: Vec<String> = self
            .packages
            .iter()
            .map(|p| p.join(name).join("package.yml").display().to_string())
            .collect();
        let roles: Vec<&str> = self.roles.iter().map(|r| r.image.as_str()).collect();
        Err(MasterError::UnknownImage {
            service: service.to_string(),
            image: image.to_string(),
            searched: searched.join(", "),
            roles: if roles.is_empty() {
                "none".to_string()
            } else {
                roles.join(", ")
            },
        })
    }

    fn argv(&self, program: &Program, spec: &ServiceSpec) -> Vec<String> {
        let mut argv = match &spec.entrypoint {
            Some(ep) => {
                let mut v = ep.to_vec();
                // A relative entrypoint names a file of the package when there is one.
                if let (Some(first), Some(dir)) = (v.first_mut(), &program.dir)
                    && !first.starts_with('/')
                    && dir.join(&*first).is_file()
                {
                    *first = dir.join(&*first).display().to_string();
                }
                v
            }
            None => {
                let mut v = vec![program.entry.display().to_string()];
                if spec.command.is_none() {
                    v.extend(program.args.iter().cloned());
                }
                v
            }
        };
        if let Some(cmd) = &spec.command {
            argv.extend(cmd.to_vec());
        }
        argv
    }

    fn warn_once(&self, key: String, message: impl FnOnce() -> String) {
        let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        if warned.insert(key) {
            tracing::warn!("{}", message());
        }
    }

    /// Makes `path` (a directory under the work dir or an allowed root) and answers its resolved path;
    /// a symlink that leads elsewhere is refused before anything is created.
    fn dir_inside(&self, spec: &InstanceSpec, path: &Path, roots: &[PathBuf]) -> Result<PathBuf> {
        confine::ensure_dir_inside(path, roots).map_err(|p| p.into_error(spec))
    }

    /// With per-service users: a read-write volume becomes the service's own (readable by all when other
    /// services mount it too); a read-only one readable by the service's group alone, or by all when
    /// shared. A dataset on a read-only file system is left as it is (the image made it readable).
    fn let_use(&self, spec: &InstanceSpec, m: &ResolvedMount, host: &Path, user: &Credentials) {
        if let Err(e) = owner::let_use(host, m, user.uid, user.gid) {
            self.warn_once(format!("own:{}", host.display()), || {
                format!(
                    "service `{}`: cannot give volume {} to its user {}:{} ({e}); it may not be able to use it",
                    spec.service,
                    host.display(),
                    user.uid,
                    user.gid
                )
            });
        }
    }

    fn link_volumes(&self, spec: &InstanceSpec, dir: &Path) -> Result<()> {
        for m in &spec.mounts {
            if let Some(why) = confine::target_problem(&m.target) {
                return Err(MasterError::BadMountTarget {
                    service: spec.service.clone(),
                    instance: spec.instance.clone(),
                    target: m.target.clone(),
                    why,
                });
            }
            let host = self.dir_inside(spec, &m.host, &self.roots)?;
            if let Some(user) = &spec.user {
                self.let_use(spec, m, &host, user);
            }
            confine::link_volume(dir, &m.target, &host).map_err(|p| p.into_error(spec))?;
            if m.read_only {
                self.warn_once("ro".into(), || {
                    format!(
                        "read-only volumes (first: {} of service `{}`) are linked read-write by the native engine; the containerd engine enforces them",
                        m.target, spec.service
                    )
                });
            }
        }
        Ok(())
    }

    fn make_cgroup(&self, spec: &InstanceSpec) -> Option<Cgroup> {
        let root = self.cgroups.as_ref()?;
        let res = &spec.spec.resources;
        let missing = root.missing_for(res);
        if !missing.is_empty() {
            self.warn_once(format!("res:{}", spec.service), || {
                format!(
                    "service `{}`: resources not enforced: cgroup v2 controller(s) {} not available under {} (on a cgroup v1 or hybrid host, or when the master's own cgroup holds other processes)",
                    spec.service,
                    missing.join(", "),
                    root.base().display()
                )
            });
        }
        match root.create(&format!("{}.{}", spec.service, spec.instance)) {
            Ok(cg) => {
                for failure in cg.apply(res, &missing) {
                    self.warn_once(format!("apply:{}:{failure}", spec.service), || {
                        format!("service `{}`: could not set {failure}", spec.service)
                    });
                }
                Some(cg)
            }
            Err(e) => {
                self.warn_once(format!("cg:{}", spec.service), || {
                    format!(
                        "service `{}`: no cgroup for its instances ({e})",
                        spec.service
                    )
                });
                None
            }
        }
    }
}

#[async_trait]
impl Engine for NativeEngine {
    fn mode(&self) -> &'static str {
        "native"
    }

    async fn prepare(&self, service: &str, spec: &ServiceSpec) -> Result<()> {
        limits::check_service_nofile(service, spec, true)?;
        self.resolve(service, &spec.image).map(|_| ())
    }

    async fn start(&self, spec: InstanceSpec) -> Result<Box<dyn Running>> {
        let program = self.resolve(&spec.service, &spec.spec.image)?;
        let argv = self.argv(&program, &spec.spec);
        let inside_workdir = [self.workdir.clone()];
        let dir = self.dir_inside(
            &spec,
            &self
                .workdir
                .join("var/run/baetyl/services")
                .join(&spec.service)
                .join(&spec.instance),
            &inside_workdir,
        )?;
        if let Some(user) = &spec.user {
            owner::give_tree(&dir, &[], user.uid, user.gid)
                .map_err(|e| MasterError::io(&dir, std::io::Error::from(e)))?;
        }
        self.link_volumes(&spec, &dir)?;
        let log = RotatingLog::of_instance(&self.workdir, &spec, &self.log)?;
        let cgroup = self.make_cgroup(&spec);

        let (first, rest) = argv
            .split_first()
            .ok_or_else(|| MasterError::EmptyCommand {
                service: spec.service.clone(),
                instance: spec.instance.clone(),
            })?;
        let mut cmd = tokio::process::Command::new(first);
        cmd.args(rest)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false);
        // The master's own contract variables (when it runs under another master) must not leak into a
        // service's; other variables (PATH, BAETYL_PYTHON, ...) are inherited.
        for k in baetyl_sdk::env::CONTRACT {
            cmd.env_remove(k);
        }
        cmd.envs(&spec.env);
        let procs = match &cgroup {
            Some(cg) => Some(
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(cg.procs_file())
                    .map_err(|e| MasterError::io(cg.procs_file(), e))?,
            ),
            None => None,
        };
        let setup = ChildSetup {
            cgroup_procs: procs.as_ref().map(std::os::fd::AsRawFd::as_raw_fd),
            nofile: limits::service_nofile(&spec.spec),
            credentials: spec.user.clone(),
        };
        // SAFETY: `procs` stays open until spawn has returned.
        unsafe { setup.install(&mut cmd) };
        let child = cmd.spawn();
        drop(procs);
        self.started(spec, child, cgroup, log, &argv).await
    }

    async fn recover(&self, grace: Duration) -> Result<Vec<String>> {
        let mut stopped = Vec::new();
        let Ok(entries) = std::fs::read_dir(self.state_dir()) else {
            return Ok(stopped);
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let Ok(state) = serde_json::from_str::<StateFile>(&text) else {
                tracing::warn!(file = %path.display(), "unreadable instance state file; removing it");
                let _ = std::fs::remove_file(&path);
                continue;
            };
            let group = Pid::from_raw(state.pid as i32);
            let leader_ours = stats::process_start_ticks(state.pid) == Some(state.start_ticks);
            // With its leader gone, a process group id cannot be reused, so live members are our remnants.
            let remnants =
                stats::process_start_ticks(state.pid).is_none() && killpg(group, None).is_ok();
            // Only a group of this engine's own (a state file names what it will kill and remove).
            let cg = state
                .cgroup
                .clone()
                .filter(|p| {
                    self.cgroups.as_ref().is_some_and(|root| {
                        p.starts_with(root.base())
                            && !p.components().any(|c| c == std::path::Component::ParentDir)
                    })
                })
                .map(Cgroup::at);
            let cg_busy = cg.as_ref().is_some_and(|c| !c.pids().is_empty());
            if leader_ours || remnants || cg_busy {
                tracing::warn!(
                    service = %state.service, instance = %state.instance, pid = state.pid,
                    "found an instance left by a previous master; stopping it"
                );
                if leader_ours || remnants {
                    let _ = killpg(group, Signal::SIGTERM);
                    let deadline = Instant::now() + grace;
                    while Instant::now() < deadline && stats::process_alive(state.pid) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    let _ = killpg(group, Signal::SIGKILL);
                }
                stopped.push(format!("{}/{}", state.service, state.instance));
            }
            if let Some(cg) = cg {
                cg.kill();
                cg.remove().await;
            }
            let _ = std::fs::remove_file(&path);
        }
        Ok(stopped)
    }
}

impl NativeEngine {
    async fn started(
        &self,
        spec: InstanceSpec,
        child: std::io::Result<tokio::process::Child>,
        cgroup: Option<Cgroup>,
        log: Arc<Mutex<RotatingLog>>,
        argv: &[String],
    ) -> Result<Box<dyn Running>> {
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                if let Some(cg) = &cgroup {
                    cg.remove().await;
                }
                return Err(MasterError::Spawn {
                    service: spec.service.clone(),
                    instance: spec.instance.clone(),
                    command: argv.join(" "),
                    source: e,
                });
            }
        };
        let pid = child.id().unwrap_or(0);
        let state_path = self.state_path(&spec.service, &spec.instance);
        let state = StateFile {
            service: spec.service.clone(),
            instance: spec.instance.clone(),
            pid,
            start_ticks: stats::process_start_ticks(pid).unwrap_or(0),
            cgroup: cgroup.as_ref().map(|c| c.path().to_path_buf()),
        };
        if let Some(dir) = state_path.parent() {
            // Only the master reads and writes the state files: they name processes it will kill.
            use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
            let _ = std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir);
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        let text = serde_json::to_vec(&state).unwrap_or_default();
        if let Err(e) = baetyl_sdk::fs::write_atomic(&state_path, &text, 0o600) {
            tracing::warn!(file = %state_path.display(), "cannot record instance state ({e}); a master crash could leave it running");
        }
        for pipe in [
            child.stdout.take().map(Pipe::Out),
            child.stderr.take().map(Pipe::Err),
        ]
        .into_iter()
        .flatten()
        {
            let log = log.clone();
            tokio::spawn(async move { pipe.copy_to(log).await });
        }
        let (tx, rx) = watch::channel(None);
        let cg = cgroup.clone();
        tokio::spawn(async move {
            let exit = match child.wait().await {
                Ok(status) => {
                    use std::os::unix::process::ExitStatusExt;
                    match (status.code(), status.signal()) {
                        (Some(c), _) => Exit::Code(c),
                        (None, Some(s)) => Exit::Signal(s),
                        _ => Exit::Error("unknown exit status".into()),
                    }
                }
                Err(e) => Exit::Error(format!("lost the process: {e}")),
            };
            // The instance is its main process: what it left behind goes with it.
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            if let Some(cg) = &cg {
                cg.kill();
                cg.remove().await;
            }
            let _ = std::fs::remove_file(&state_path);
            let _ = tx.send(Some(exit));
        });
        tracing::info!(service = %spec.service, instance = %spec.instance, pid, command = %argv.join(" "), "instance started");
        Ok(Box::new(NativeInstance {
            name: format!("{}.{}", spec.service, spec.instance),
            pid,
            cgroup,
            exited: rx,
            last_cpu: stats::CpuSampler::default(),
        }))
    }
}

enum Pipe {
    Out(tokio::process::ChildStdout),
    Err(tokio::process::ChildStderr),
}

impl Pipe {
    async fn copy_to(mut self, log: Arc<Mutex<RotatingLog>>) {
        let mut buf = vec![0u8; 8192];
        let mut sink = LogSink::new(log);
        loop {
            let n = match &mut self {
                Pipe::Out(p) => p.read(&mut buf).await,
                Pipe::Err(p) => p.read(&mut buf).await,
            };
            match n {
                Ok(0) | Err(_) => return,
                Ok(n) => sink.write(&buf[..n]),
            }
        }
    }
}

struct NativeInstance {
    name: String,
    pid: u32,
    cgroup: Option<Cgroup>,
    exited: watch::Receiver<Option<Exit>>,
    last_cpu: stats::CpuSampler,
}

#[async_trait]
impl Running for NativeInstance {
    fn info(&self) -> RunningInfo {
        RunningInfo {
            kind: "process",
            id: self.pid.to_string(),
            name: self.name.clone(),
            pid: Some(self.pid),
        }
    }

    async fn wait(&self) -> Exit {
        crate::engine::wait_exit(&self.exited).await
    }

    async fn stop(&self, grace: Duration) -> Exit {
        if let Some(exit) = self.exited.borrow().clone() {
            return exit;
        }
        let group = Pid::from_raw(self.pid as i32);
        let _ = killpg(group, Signal::SIGTERM);
        match tokio::time::timeout(grace, self.wait()).await {
            Ok(exit) => exit,
            Err(_) => {
                tracing::warn!(instance = %self.name, pid = self.pid, "did not stop within {grace:?} of SIGTERM; killing it");
                let _ = killpg(group, Signal::SIGKILL);
                let _ = kill(group, Signal::SIGKILL);
                if let Some(cg) = &self.cgroup {
                    cg.kill();
                }
                self.wait().await
            }
        }
    }

    fn stats(&self) -> InstanceStats {
        let cg_cpu = self
            .cgroup
            .as_ref()
            .and_then(|c| c.cpu_usage_usec())
            .map(|u| u as f64 / 1e6);
        let cpu_seconds = cg_cpu
            .or_else(|| stats::process_cpu_seconds(self.pid))
            .unwrap_or(0.0);
        let cpu_percent = self.last_cpu.percent(cpu_seconds);
        let rss_bytes = self
            .cgroup
            .as_ref()
            .and_then(|c| c.memory_current())
            .or_else(|| stats::process_rss(self.pid))
            .unwrap_or(0);
        let processes = self
            .cgroup
            .as_ref()
            .map(|c| c.pids().len() as u64)
            .unwrap_or(1);
        InstanceStats {
            cpu_percent,
            cpu_seconds,
            rss_bytes,
            processes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_strip_registry_and_tag() {
        assert_eq!(
            NativeEngine::image_name("hub.baetyl.io/baetyl/baetyl-hub:v2.0"),
            "baetyl-hub"
        );
        assert_eq!(NativeEngine::image_name("ticker"), "ticker");
        assert_eq!(NativeEngine::image_name("ticker@sha256:abc"), "ticker");
    }
}
