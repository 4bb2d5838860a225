//! The containerd engine (`mode: containerd`): each instance is a container of containerd (namespace
//! `containerd.namespace`, runtime `io.containerd.runc.v2`), driven over its gRPC socket.
//!
//! - At start the engine reads the images of the OCI image layouts of `containerd.images` into a [`catalog`]
//!   (a service's `image` names one of them; v1 names resolve, nothing is pulled) and imports them in the
//!   background ([`import`]: content under a lease, image records, layers unpacked through snapshots + diff,
//!   nothing written twice), one image at a time, smallest first; an instance about to start moves its image
//!   to the head of the line and waits for it alone. On a first boot the hub so starts once its image (the
//!   binary layer) is in, not after the Python runtime's layer; once imported, an image is only looked at.
//! - An instance's container gets the runtime spec of [`spec`] (datasets read-only, volumes read-write, the
//!   API socket, the v1 environment, `resources` as cgroup limits under `containerd.cgroup_parent`, the host's
//!   network, the service's user, no capability but `CAP_NET_BIND_SERVICE`, `no_new_privileges`), an
//!   overlayfs snapshot of its image as a read-only root, and stdout/stderr through FIFOs into the same
//!   rotated log as a native instance (`var/log/baetyl/services/<service>/<instance>.log`).
//! - Stop is SIGTERM to the container's first process, then SIGKILL to all of them after the grace; the
//!   task, the container and its snapshot are deleted once it has ended.
//! - Everything in the namespace is this master's: at start ([`Engine::recover`]) containers, tasks and
//!   snapshots an earlier master left (crash, `kill -9`) are stopped and removed.
//!
//! A container's id is `<service>.<instance>` (or a digest of it when containerd would refuse that name); a
//! label keeps the names. Exit statuses above 128 are read as death by signal (128 + signal), as runc reports
//! them.

pub mod catalog;
pub mod cgroups;
pub mod import;
pub mod spec;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    ListSnapshotsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest,
};
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::version_client::VersionClient;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteTaskRequest, KillRequest, ListContainersRequest, StartRequest, WaitRequest,
};
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Code, Status};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::logfile::{LogSink, RotatingLog};
use super::{
    Engine, Exit, InstanceSpec, InstanceStats, ResolvedMount, Running, RunningInfo, confine, owner,
};
use crate::config::{ContainerdConfig, InstanceLogConfig, MasterConfig, ServiceSpec};
use crate::error::{MasterError, Result};
use crate::stats::CpuSampler;
use catalog::{Catalog, CatalogImage};
use import::{Importer, SNAPSHOTTER, req};

/// The shim and runtime of every container.
pub const RUNTIME: &str = "io.containerd.runc.v2";
/// The label holding `<service>/<instance>` on containers and snapshots.
pub const LABEL: &str = "io.baetyl.instance";
/// The type of an OCI runtime spec in a container record.
const SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// How long the engine keeps asking containerd about a task when containerd is away (restarting).
const RECONNECT: Duration = Duration::from_secs(60);

fn call(what: impl Into<String>) -> impl FnOnce(Status) -> MasterError {
    let what = what.into();
    move |s| MasterError::Containerd {
        what,
        detail: format!("{} ({:?})", s.message(), s.code()),
    }
}

/// `Ok` when the call succeeded or the thing was not there.
fn absent_ok<T>(r: std::result::Result<T, Status>) -> std::result::Result<(), Status> {
    match r {
        Ok(_) => Ok(()),
        Err(s) if s.code() == Code::NotFound => Ok(()),
        Err(s) => Err(s),
    }
}

/// containerd's identifier rule: alphanumerics separated by single `.`, `_` or `-`, at most 76 characters.
fn valid_id(id: &str) -> bool {
    id.len() <= 76
        && id
            .split(['.', '_', '-'])
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// The container id of an instance (see the module's doc).
pub fn container_id(service: &str, instance: &str) -> String {
    let id = format!("{service}.{instance}");
    if valid_id(&id) {
        return id;
    }
    let h = Sha256::digest(format!("{service}/{instance}").as_bytes());
    let hex: String = h.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("baetyl-{hex}")
}

/// An exit status of containerd: 128 + N is death by signal N.
fn exit_of(status: u32) -> Exit {
    match status {
        129..=192 => Exit::Signal((status - 128) as i32),
        s => Exit::Code(s as i32),
    }
}

/// The containerd side of the engine: a channel and a namespace.
#[derive(Clone)]
struct Ctd {
    channel: Channel,
    ns: String,
}

impl Ctd {
    fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel.clone())
    }

    fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel.clone())
    }

    fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel.clone())
    }

    async fn kill(&self, id: &str, signal: i32, all: bool) -> std::result::Result<(), Status> {
        let r = self
            .tasks()
            .kill(req(
                KillRequest {
                    container_id: id.to_string(),
                    exec_id: String::new(),
                    signal: signal as u32,
                    all,
                },
                &self.ns,
                None,
            ))
            .await;
        match r {
            // Already gone, or not started.
            Err(s) if matches!(s.code(), Code::NotFound | Code::FailedPrecondition) => Ok(()),
            r => r.map(|_| ()),
        }
    }

    /// The task's exit status, once it has ended.
    async fn wait(&self, id: &str) -> std::result::Result<u32, Status> {
        self.tasks()
            .wait(req(
                WaitRequest {
                    container_id: id.to_string(),
                    exec_id: String::new(),
                },
                &self.ns,
                None,
            ))
            .await
            .map(|r| r.into_inner().exit_status)
    }

    /// Stops the task of `id` (SIGTERM, SIGKILL after `grace`) and deletes task, container and snapshot;
    /// what is not there is skipped.
    async fn remove(&self, id: &str, grace: Duration) -> Result<()> {
        if !grace.is_zero() {
            self.kill(id, libc::SIGTERM, true)
                .await
                .map_err(call(format!("kill {id}")))?;
            let _ = tokio::time::timeout(grace, self.wait(id)).await;
        }
        self.kill(id, libc::SIGKILL, true)
            .await
            .map_err(call(format!("kill {id}")))?;
        match tokio::time::timeout(Duration::from_secs(30), self.wait(id)).await {
            Ok(Err(s)) if s.code() != Code::NotFound => {
                return Err(call(format!("wait {id}"))(s));
            }
            Err(_) => {
                return Err(MasterError::Containerd {
                    what: format!("kill {id}"),
                    detail: "the task did not end within 30 s of SIGKILL".into(),
                });
            }
            _ => {}
        }
        absent_ok(
            self.tasks()
                .delete(req(
                    DeleteTaskRequest {
                        container_id: id.to_string(),
                    },
                    &self.ns,
                    None,
                ))
                .await,
        )
        .map_err(call(format!("delete task {id}")))?;
        absent_ok(
            self.containers()
                .delete(req(
                    DeleteContainerRequest { id: id.to_string() },
                    &self.ns,
                    None,
                ))
                .await,
        )
        .map_err(call(format!("delete container {id}")))?;
        absent_ok(
            self.snapshots()
                .remove(req(
                    RemoveSnapshotRequest {
                        snapshotter: SNAPSHOTTER.into(),
                        key: id.to_string(),
                    },
                    &self.ns,
                    None,
                ))
                .await,
        )
        .map_err(call(format!("remove snapshot {id}")))?;
        Ok(())
    }
}

/// Connects to containerd's socket and asks its version, retrying until `timeout`.
async fn connect(socket: &Path, timeout: Duration) -> Result<Channel> {
    let deadline = Instant::now() + timeout;
    loop {
        let detail = match import::connect(socket).await {
            Ok(ch) => match VersionClient::new(ch.clone()).version(()).await {
                Ok(v) => {
                    let v = v.into_inner();
                    tracing::info!(socket = %socket.display(), version = %v.version, "containerd answers");
                    return Ok(ch);
                }
                Err(s) => s.message().to_string(),
            },
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(MasterError::ContainerdUnreachable {
                socket: socket.to_path_buf(),
                detail,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn check_config(c: &ContainerdConfig) -> Result<()> {
    let bad = |m: String| Err(MasterError::ContainerdConfig(m));
    if !valid_id(&c.namespace) {
        return bad(format!(
            "namespace `{}` must be letters and digits separated by single `.`, `_` or `-`",
            c.namespace
        ));
    }
    let parent = Path::new(&c.cgroup_parent);
    if !parent.is_absolute()
        || parent
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return bad(format!(
            "cgroup_parent `{}` must be an absolute cgroup path without `..`, e.g. /baetyl",
            c.cgroup_parent
        ));
    }
    if c.images.is_empty() {
        return bad(
            "images lists no OCI image layout; name the directories `baetyl image oci --out DIR` wrote"
                .into(),
        );
    }
    Ok(())
}

/// The background import of the layouts' images (see the module's doc).
struct Imports {
    importer: Importer,
    line: Mutex<ImportLine>,
    /// Bumped after each image.
    changed: watch::Sender<u64>,
}

#[derive(Default)]
struct ImportLine {
    /// Not yet imported: layout dir and reference, in the order they will be.
    waiting: std::collections::VecDeque<(PathBuf, String)>,
    /// Imported (Ok) or failed (Err with the reason), by reference.
    finished: HashMap<String, std::result::Result<(), String>>,
}

impl Imports {
    /// Starts importing `waiting` in that order, in a task of its own.
    fn start(importer: Importer, waiting: Vec<(PathBuf, String)>) -> Arc<Imports> {
        let imports = Arc::new(Imports {
            importer,
            line: Mutex::new(ImportLine {
                waiting: waiting.into(),
                finished: HashMap::new(),
            }),
            changed: watch::channel(0).0,
        });
        tokio::spawn(imports.clone().run());
        imports
    }

    async fn run(self: Arc<Self>) {
        let started = Instant::now();
        let (mut images, mut blobs, mut layers) = (0, 0, 0);
        loop {
            let next = lock(&self.line).waiting.pop_front();
            let Some((dir, reference)) = next else {
                break;
            };
            let t = Instant::now();
            let result = match self.importer.import_image(&dir, &reference).await {
                Ok(done) => {
                    tracing::info!(
                        image = %reference,
                        blobs_written = done.blobs_written,
                        layers_unpacked = done.layers_unpacked,
                        "OCI image imported in {:?}",
                        t.elapsed()
                    );
                    images += 1;
                    blobs += done.blobs_written;
                    layers += done.layers_unpacked;
                    Ok(())
                }
                Err(e) => {
                    tracing::error!(image = %reference, layout = %dir.display(), "cannot import: {e}");
                    Err(e.to_string())
                }
            };
            lock(&self.line).finished.insert(reference, result);
            self.changed.send_modify(|n| *n += 1);
        }
        tracing::info!(
            images,
            blobs_written = blobs,
            layers_unpacked = layers,
            "OCI images imported in {:?}",
            started.elapsed()
        );
    }

    /// Waits until `reference` is imported, moving it to the head of the line first.
    async fn ready(&self, reference: &str) -> Result<()> {
        let mut changed = self.changed.subscribe();
        loop {
            {
                let mut line = lock(&self.line);
                if let Some(r) = line.finished.get(reference) {
                    return r.clone().map_err(|detail| MasterError::Containerd {
                        what: format!("import of image {reference}"),
                        detail,
                    });
                }
                match line.waiting.iter().position(|(_, r)| r == reference) {
                    Some(0) => {}
                    Some(i) => {
                        if let Some(entry) = line.waiting.remove(i) {
                            line.waiting.push_front(entry);
                        }
                    }
                    // Not waiting and not finished: being imported now.
                    None => {}
                }
            }
            if changed.changed().await.is_err() {
                return Err(MasterError::Containerd {
                    what: format!("import of image {reference}"),
                    detail: "the import stopped".into(),
                });
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct ContainerdEngine {
    workdir: PathBuf,
    roots: Vec<PathBuf>,
    ctd: Ctd,
    catalog: Catalog,
    imports: Arc<Imports>,
    cgroup_parent: String,
    api_socket: Option<PathBuf>,
    log: InstanceLogConfig,
}

impl ContainerdEngine {
    /// Connects to containerd (waiting up to `containerd.connect_timeout`), imports the layouts of
    /// `containerd.images` and reads their images. `workdir` is the master's.
    pub async fn new(workdir: &Path, cfg: &MasterConfig) -> Result<Self> {
        let c = &cfg.containerd;
        check_config(c)?;
        let workdir = workdir
            .canonicalize()
            .map_err(|e| MasterError::io(workdir, e))?;
        let channel = connect(&c.socket, c.connect_timeout.get()).await?;
        let importer = Importer::new(channel.clone(), &c.namespace);
        let mut catalog = Catalog::default();
        let mut queue = Vec::new();
        for dir in &c.images {
            let dir = workdir.join(dir);
            for (reference, size) in catalog.add_layout(&dir)? {
                queue.push((size, dir.clone(), reference));
            }
        }
        // Smallest first (stable: the layout's order among equals): the images of the binary layer alone
        // before the Python runtime's.
        queue.sort_by_key(|(size, _, _)| *size);
        let imports = Imports::start(
            importer,
            queue.into_iter().map(|(_, d, r)| (d, r)).collect(),
        );
        let mut roots = vec![workdir.clone()];
        roots.extend(
            cfg.volumes
                .allowed_roots
                .iter()
                .map(|r| r.canonicalize().unwrap_or_else(|_| r.clone())),
        );
        let api_socket = match cfg.server.address.under(&workdir) {
            baetyl_sdk::client::Address::Unix(p) => Some(p),
            baetyl_sdk::client::Address::Tcp(_) => None,
        };
        Ok(ContainerdEngine {
            workdir,
            roots,
            ctd: Ctd {
                channel,
                ns: c.namespace.clone(),
            },
            catalog,
            imports,
            cgroup_parent: c.cgroup_parent.trim_end_matches('/').to_string(),
            api_socket,
            log: cfg.instance_log.clone(),
        })
    }

    fn image(&self, service: &str, image: &str) -> Result<&CatalogImage> {
        self.catalog
            .resolve(image)
            .ok_or_else(|| MasterError::ImageNotImported {
                service: service.to_string(),
                image: image.to_string(),
                available: self.catalog.references().join(", "),
            })
    }

    fn fifo_root(&self) -> PathBuf {
        self.workdir.join("var/run/baetyl/containerd")
    }

    /// The instance's volumes, made and resolved inside the allowed roots, given to its user.
    fn mounts(&self, spec: &InstanceSpec) -> Result<Vec<ResolvedMount>> {
        let mut out = Vec::new();
        for m in &spec.mounts {
            if let Some(why) = confine::target_problem(&m.target) {
                return Err(MasterError::BadMountTarget {
                    service: spec.service.clone(),
                    instance: spec.instance.clone(),
                    target: m.target.clone(),
                    why,
                });
            }
            let host =
                confine::ensure_dir_inside(&m.host, &self.roots).map_err(|p| p.into_error(spec))?;
            if let Some(u) = &spec.user
                && let Err(e) = owner::let_use(&host, m, u.uid, u.gid)
            {
                tracing::warn!(
                    "service `{}`: cannot give volume {} to its user {}:{} ({e}); it may not be able to use it",
                    spec.service,
                    host.display(),
                    u.uid,
                    u.gid
                );
            }
            out.push(ResolvedMount { host, ..m.clone() });
        }
        Ok(out)
    }

    /// Makes the instance's stdout and stderr FIFOs (fresh) and opens their reading ends.
    fn fifos(
        &self,
        id: &str,
    ) -> Result<(PathBuf, Vec<(PathBuf, tokio::net::unix::pipe::Receiver)>)> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = self.fifo_root().join(id);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| MasterError::io(&dir, e))?;
        let mut out = Vec::new();
        for name in ["stdout", "stderr"] {
            let path = dir.join(name);
            nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(|e| MasterError::io(&path, e.into()))?;
            // Read-write: the reading end never sees end-of-file before the shim has opened the other.
            let rx = tokio::net::unix::pipe::OpenOptions::new()
                .read_write(true)
                .open_receiver(&path)
                .map_err(|e| MasterError::io(&path, e))?;
            out.push((path, rx));
        }
        Ok((dir, out))
    }

    async fn create_and_start(
        &self,
        id: &str,
        label: &str,
        image: &CatalogImage,
        runtime_spec: Vec<u8>,
        fifos: &[(PathBuf, tokio::net::unix::pipe::Receiver)],
    ) -> Result<u32> {
        let labels: HashMap<String, String> = [(LABEL.to_string(), label.to_string())].into();
        let mut container = Container {
            id: id.to_string(),
            labels: labels.clone(),
            image: image.reference.clone(),
            runtime: Some(Runtime {
                name: RUNTIME.into(),
                options: None,
            }),
            spec: Some(Default::default()),
            snapshotter: SNAPSHOTTER.into(),
            snapshot_key: id.to_string(),
            ..Default::default()
        };
        if let Some(any) = container.spec.as_mut() {
            any.type_url = SPEC_TYPE.into();
            any.value = runtime_spec;
        }
        let ns = &self.ctd.ns;
        // The container first: it holds the snapshot against the garbage collector.
        self.ctd
            .containers()
            .create(req(
                CreateContainerRequest {
                    container: Some(container),
                },
                ns,
                None,
            ))
            .await
            .map_err(call(format!("create container {id}")))?;
        let rootfs = self
            .ctd
            .snapshots()
            .prepare(req(
                PrepareSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: id.to_string(),
                    parent: image.top.clone(),
                    labels,
                },
                ns,
                None,
            ))
            .await
            .map_err(call(format!(
                "prepare snapshot {id} of {}",
                image.reference
            )))?
            .into_inner()
            .mounts;
        let path = |i: usize| fifos[i].0.display().to_string();
        let created = self
            .ctd
            .tasks()
            .create(req(
                CreateTaskRequest {
                    container_id: id.to_string(),
                    rootfs,
                    stdin: String::new(),
                    stdout: path(0),
                    stderr: path(1),
                    terminal: false,
                    ..Default::default()
                },
                ns,
                None,
            ))
            .await
            .map_err(call(format!("create task {id}")))?
            .into_inner();
        self.ctd
            .tasks()
            .start(req(
                StartRequest {
                    container_id: id.to_string(),
                    exec_id: String::new(),
                },
                ns,
                None,
            ))
            .await
            .map_err(call(format!("start task {id}")))?;
        Ok(created.pid)
    }
}

/// Copies what comes through a FIFO into the log until `done`, then what is left in it.
async fn copy_fifo(
    rx: tokio::net::unix::pipe::Receiver,
    log: Arc<Mutex<RotatingLog>>,
    mut done: watch::Receiver<bool>,
) {
    let mut sink = LogSink::new(log);
    let mut buf = vec![0u8; 8192];
    loop {
        tokio::select! {
            r = rx.readable() => if r.is_err() { return },
            _ = done.wait_for(|d| *d) => break,
        }
        match rx.try_read(&mut buf) {
            Ok(0) => return,
            Ok(n) => sink.write(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
    while let Ok(n) = rx.try_read(&mut buf) {
        if n == 0 {
            break;
        }
        sink.write(&buf[..n]);
    }
}

#[async_trait]
impl Engine for ContainerdEngine {
    fn mode(&self) -> &'static str {
        "containerd"
    }

    async fn prepare(&self, service: &str, spec: &ServiceSpec) -> Result<()> {
        crate::limits::check_service_nofile(service, spec, false)?;
        self.image(service, &spec.image).map(|_| ())
    }

    async fn start(&self, spec: InstanceSpec) -> Result<Box<dyn Running>> {
        let image = self.image(&spec.service, &spec.spec.image)?.clone();
        self.imports.ready(&image.reference).await?;
        let id = container_id(&spec.service, &spec.instance);
        let label = format!("{}/{}", spec.service, spec.instance);
        let mounts = self.mounts(&spec)?;
        let cgroup_path = format!("{}/{id}", self.cgroup_parent);
        let inst = InstanceSpec {
            mounts,
            ..spec.clone()
        };
        let runtime_spec = spec::runtime_spec(
            &inst,
            &spec::SpecParams {
                image: &image.process,
                api_socket: self.api_socket.as_deref(),
                cgroups_path: cgroup_path.clone(),
                rootfs: "rootfs".into(),
                nofile: crate::limits::service_nofile(&spec.spec),
            },
        )?;
        let runtime_spec =
            serde_json::to_vec(&runtime_spec).map_err(|e| MasterError::Containerd {
                what: format!("runtime spec of {id}"),
                detail: e.to_string(),
            })?;
        // What an earlier instance of the same name left (a lost task) goes first.
        self.ctd.remove(&id, Duration::ZERO).await?;
        let log = RotatingLog::of_instance(&self.workdir, &spec, &self.log)?;
        let (fifo_dir, fifos) = self.fifos(&id)?;
        let pid = match self
            .create_and_start(&id, &label, &image, runtime_spec, &fifos)
            .await
        {
            Ok(pid) => pid,
            Err(e) => {
                if let Err(c) = self.ctd.remove(&id, Duration::ZERO).await {
                    tracing::warn!(container = %id, "cannot clean up after a failed start: {c}");
                }
                let _ = std::fs::remove_dir_all(&fifo_dir);
                return Err(e);
            }
        };
        let (done_tx, done_rx) = watch::channel(false);
        let copiers: Vec<_> = fifos
            .into_iter()
            .map(|(_, rx)| tokio::spawn(copy_fifo(rx, log.clone(), done_rx.clone())))
            .collect();
        let (tx, rx) = watch::channel(None);
        let ctd = self.ctd.clone();
        let wid = id.clone();
        tokio::spawn(async move {
            let exit = wait_through_restarts(&ctd, &wid).await;
            if let Err(e) = ctd.remove(&wid, Duration::ZERO).await {
                tracing::warn!(container = %wid, "cannot remove the ended container: {e}");
            }
            let _ = done_tx.send(true);
            for c in copiers {
                let _ = c.await;
            }
            let _ = std::fs::remove_dir_all(&fifo_dir);
            let _ = tx.send(Some(exit));
        });
        tracing::info!(service = %spec.service, instance = %spec.instance, container = %id, pid, image = %image.reference, "instance started");
        Ok(Box::new(ContainerInstance {
            ctd: self.ctd.clone(),
            id,
            pid,
            cgroup: cgroups::ContainerCgroup::new(&cgroup_path),
            exited: rx,
            cpu: CpuSampler::default(),
        }))
    }

    async fn recover(&self, grace: Duration) -> Result<Vec<String>> {
        let ns = &self.ctd.ns;
        let containers = self
            .ctd
            .containers()
            .list(req(ListContainersRequest { filters: vec![] }, ns, None))
            .await
            .map_err(call("list containers"))?
            .into_inner()
            .containers;
        let mut stopped = Vec::new();
        for c in containers {
            let name = c.labels.get(LABEL).cloned().unwrap_or_else(|| c.id.clone());
            tracing::warn!(container = %c.id, instance = %name, "found a container left by a previous master; removing it");
            self.ctd.remove(&c.id, grace).await?;
            stopped.push(name);
        }
        // Snapshots of containers that were never created (a master killed between the two).
        let mut list = self
            .ctd
            .snapshots()
            .list(req(
                ListSnapshotsRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    filters: vec![],
                },
                ns,
                None,
            ))
            .await
            .map_err(call("list snapshots"))?
            .into_inner();
        let mut ours = Vec::new();
        while let Some(page) = list.message().await.map_err(call("list snapshots"))? {
            ours.extend(
                page.info
                    .into_iter()
                    .filter(|i| i.labels.contains_key(LABEL))
                    .map(|i| i.name),
            );
        }
        for key in ours {
            absent_ok(
                self.ctd
                    .snapshots()
                    .remove(req(
                        RemoveSnapshotRequest {
                            snapshotter: SNAPSHOTTER.into(),
                            key: key.clone(),
                        },
                        ns,
                        None,
                    ))
                    .await,
            )
            .map_err(call(format!("remove snapshot {key}")))?;
        }
        let _ = std::fs::remove_dir_all(self.fifo_root());
        Ok(stopped)
    }
}

/// Waits for the task's end; while containerd is away (restarting) it keeps asking for [`RECONNECT`].
async fn wait_through_restarts(ctd: &Ctd, id: &str) -> Exit {
    let mut lost_since: Option<Instant> = None;
    loop {
        match ctd.wait(id).await {
            Ok(status) => return exit_of(status),
            Err(s) if s.code() == Code::NotFound => {
                return Exit::Error(format!("container {id} is gone from containerd"));
            }
            Err(s) => {
                let since = *lost_since.get_or_insert_with(Instant::now);
                if since.elapsed() > RECONNECT {
                    return Exit::Error(format!(
                        "lost containerd for {RECONNECT:?}: {}",
                        s.message()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

struct ContainerInstance {
    ctd: Ctd,
    id: String,
    pid: u32,
    cgroup: cgroups::ContainerCgroup,
    exited: watch::Receiver<Option<Exit>>,
    cpu: CpuSampler,
}

#[async_trait]
impl Running for ContainerInstance {
    fn info(&self) -> RunningInfo {
        RunningInfo {
            kind: "container",
            id: self.id.clone(),
            name: self.id.clone(),
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
        if let Err(e) = self.ctd.kill(&self.id, libc::SIGTERM, false).await {
            tracing::warn!(container = %self.id, "SIGTERM: {}", e.message());
        }
        match tokio::time::timeout(grace, self.wait()).await {
            Ok(exit) => exit,
            Err(_) => {
                tracing::warn!(container = %self.id, "did not stop within {grace:?} of SIGTERM; killing it");
                if let Err(e) = self.ctd.kill(&self.id, libc::SIGKILL, true).await {
                    tracing::warn!(container = %self.id, "SIGKILL: {}", e.message());
                }
                self.wait().await
            }
        }
    }

    fn stats(&self) -> InstanceStats {
        let cpu_seconds = self.cgroup.cpu_seconds().unwrap_or(0.0);
        InstanceStats {
            cpu_percent: self.cpu.percent(cpu_seconds),
            cpu_seconds,
            rss_bytes: self.cgroup.memory().unwrap_or(0),
            processes: self.cgroup.processes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_follow_containerds_rule() {
        assert_eq!(container_id("hub", "hub"), "hub.hub");
        assert_eq!(
            container_id("function-python", "py-1"),
            "function-python.py-1"
        );
        let odd = container_id("a__b", "x");
        assert!(odd.starts_with("baetyl-") && valid_id(&odd), "{odd}");
        assert!(!valid_id(&"a".repeat(77)));
        assert!(!valid_id("a..b") && !valid_id(".a") && !valid_id(""));
    }

    #[test]
    fn exit_statuses_above_128_are_signals() {
        assert_eq!(exit_of(0), Exit::Code(0));
        assert_eq!(exit_of(3), Exit::Code(3));
        assert_eq!(exit_of(137), Exit::Signal(9));
        assert_eq!(exit_of(143), Exit::Signal(15));
        assert_eq!(exit_of(255), Exit::Code(255));
    }

    #[test]
    fn config_mistakes_are_named() {
        let mut c = ContainerdConfig::default();
        let err = check_config(&c).unwrap_err().to_string();
        assert!(err.contains("images lists no OCI image layout"), "{err}");
        c.images = vec!["x".into()];
        c.namespace = "a b".into();
        assert!(
            check_config(&c)
                .unwrap_err()
                .to_string()
                .contains("namespace")
        );
        c.namespace = "baetyl".into();
        c.cgroup_parent = "baetyl/../x".into();
        assert!(
            check_config(&c)
                .unwrap_err()
                .to_string()
                .contains("cgroup_parent")
        );
    }
}
