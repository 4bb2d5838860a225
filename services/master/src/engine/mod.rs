//! The engine runs service instances. It speaks of services and instances, not of processes, so the
//! native engine (child processes) and the containerd engine (containers) are interchangeable under the
//! supervisor and pass the same tests.

pub mod cgroup;
pub mod child;
pub mod confine;
pub mod containerd;
#[cfg(any(test, feature = "testing"))]
pub mod fake;
pub mod logfile;
pub mod native;
pub mod owner;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;

use crate::config::ServiceSpec;
use crate::error::Result;

/// Everything needed to start one instance.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    pub service: String,
    pub instance: String,
    pub spec: ServiceSpec,
    /// The full environment: the service's own, the v1 contract, and any extra given at a dynamic start.
    pub env: BTreeMap<String, String>,
    pub mounts: Vec<ResolvedMount>,
    /// The user it runs as (per-service users); None: the master's own.
    pub user: Option<child::Credentials>,
    /// Host directories of the master that the service reads at their own paths (an agent: the instance
    /// logs it sends to the cloud). A process reads them where they are, with its group's rights; a
    /// container gets them as read-only bind mounts at the same path (its other files are not there).
    pub views: Vec<PathBuf>,
}

/// A volume resolved to a host directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedMount {
    pub host: PathBuf,
    pub target: String,
    pub read_only: bool,
    /// Other services of the application mount the same directory.
    pub shared: bool,
    /// Other services' volumes inside this one (the agent's staging area holds the volumes it staged for
    /// the application): ownership and modes given to this service stop there.
    pub nested: Vec<PathBuf>,
}

/// How an instance ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    /// The engine lost track of it or could not start it.
    Error(String),
}

impl Exit {
    pub fn success(&self) -> bool {
        matches!(self, Exit::Code(0))
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exited with code {c}"),
            Exit::Signal(s) => {
                let name = nix::sys::signal::Signal::try_from(*s)
                    .map(|s| s.as_str())
                    .unwrap_or("?");
                write!(f, "killed by signal {s} ({name})")
            }
            Exit::Error(e) => write!(f, "failed: {e}"),
        }
    }
}

/// Figures about a running instance, for inspect.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct InstanceStats {
    /// CPU use since the previous sample, in percent of one CPU.
    pub cpu_percent: f64,
    /// Total CPU time used, in seconds.
    pub cpu_seconds: f64,
    /// Resident memory, in bytes (of the whole cgroup when there is one, else of the main process).
    pub rss_bytes: u64,
    /// Processes in the instance.
    pub processes: u64,
}

/// What kind of thing runs an instance: a process (native) or a container.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunningInfo {
    /// `process` or `container`.
    pub kind: &'static str,
    /// Process id, or container id.
    pub id: String,
    pub name: String,
    pub pid: Option<u32>,
}

/// What [`Running::wait`] answers for an instance whose end is published on `exited`.
pub async fn wait_exit(exited: &tokio::sync::watch::Receiver<Option<Exit>>) -> Exit {
    let mut rx = exited.clone();
    match rx.wait_for(Option::is_some).await {
        Ok(v) => v.clone().unwrap_or(Exit::Error("no exit status".into())),
        Err(_) => Exit::Error("the engine lost the instance".into()),
    }
}

/// An instance the engine started.
#[async_trait]
pub trait Running: Send + Sync {
    fn info(&self) -> RunningInfo;
    /// Completes when the instance has ended; may be called again (and from several places).
    async fn wait(&self) -> Exit;
    /// Asks the instance to end (SIGTERM), forces it after `grace`, and leaves nothing of it running.
    async fn stop(&self, grace: Duration) -> Exit;
    fn stats(&self) -> InstanceStats;
}

#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// `native` or `containerd`.
    fn mode(&self) -> &'static str;
    /// Makes sure the service can be started (its image resolves); called before anything is stopped.
    async fn prepare(&self, service: &str, spec: &ServiceSpec) -> Result<()>;
    async fn start(&self, spec: InstanceSpec) -> Result<Box<dyn Running>>;
    /// Finds instances a previous master left running (crash, kill -9) and stops them.
    /// Answers the `service/instance` names stopped.
    async fn recover(&self, grace: Duration) -> Result<Vec<String>>;
}
