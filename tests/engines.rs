//! The master's two engines as a test fixture: [`Engine::Native`] runs the test's services as packages (shell
//! scripts in `lib/baetyl/packages`), [`Engine::Containerd`] as containers of a real containerd of the test's
//! own (the test kit's: temporary root, state and socket) from an OCI layout the fixture writes: `box:latest`
//! (the host's `sh` and a few tools with the libraries `ldd` names) and the test services `svc` and `stubborn`
//! (the same scripts as the packages, in the same layer). A work dir ([`crate::Work::with_engine`]) configures
//! its master for its engine, so one test body runs on both (`both_engines!` in `tests/master.rs`).
//!
//! In containerd mode a test service sees the test's work dir at `/test-root` (a volume the fixture adds to
//! every service whose image is `svc` or `stubborn`, see [`crate::Work::app`]) and works in its instance dir
//! there, so its files land where they do in native mode. Pids a service records are `pid:[NS] PID START`
//! ([`PidRef`]): the test finds the host's process from them whatever PID namespace the service was in (the
//! start time tells a process from a later one of a reused namespace number and pid).

use std::path::{Path, PathBuf};
use std::process::Command;

use baetyl_image::oci::layer::LayerBuilder;
use baetyl_image::oci::layout::{ImageDef, LayoutWriter};
use baetyl_testkit::containerd::Containerd;

/// Which engine a test's master runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Native,
    Containerd,
}

impl Engine {
    /// `native` or `containerd`: conf.yml's `mode` and `BAETYL_SERVICE_MODE`.
    pub fn mode(self) -> &'static str {
        match self {
            Engine::Native => "native",
            Engine::Containerd => "containerd",
        }
    }

    /// The key of an instance's inspect entry that names what runs it (`process` or `container`).
    pub fn kind(self) -> &'static str {
        match self {
            Engine::Native => "process",
            Engine::Containerd => "container",
        }
    }
}

/// Set (to anything) where containerd must be there (CI): a containerd test then fails instead of skipping.
pub const REQUIRE_CONTAINERD: &str = "BAETYL_REQUIRE_CONTAINERD";

/// Why containerd tests cannot run here, printed loudly; panics instead when [`REQUIRE_CONTAINERD`] is set.
pub fn containerd_skip() -> Option<String> {
    let why = Containerd::unavailable()?;
    if std::env::var_os(REQUIRE_CONTAINERD).is_some() {
        panic!("{REQUIRE_CONTAINERD} is set but containerd tests cannot run: {why}");
    }
    eprintln!(
        "\n*** SKIPPED (containerd engine): {why} ***\n*** the containerd variant of this test did not run ***\n"
    );
    Some(why)
}

/// Where the test's work dir appears inside a test service's container.
pub const TEST_ROOT_IN_CONTAINER: &str = "/test-root";

/// The images of the test layout that run the fixture's scripts (and so get the work dir mounted).
pub const SCRIPT_IMAGES: &[&str] = &["svc", "stubborn"];

/// The tools the test image carries (each with what `ldd` says it needs).
const TOOLS: &[&str] = &[
    "sh", "sleep", "env", "grep", "sort", "cat", "ls", "id", "tail", "echo", "readlink", "mkdir",
    "setsid", "cut",
];

fn which(tool: &str) -> PathBuf {
    ["/bin", "/usr/bin"]
        .iter()
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{tool} not found in /bin or /usr/bin"))
}

/// The libraries (and loader) `ldd` names for `bin`, as absolute paths.
fn libraries(bin: &Path) -> Vec<String> {
    let out = Command::new("ldd").arg(bin).output().expect("ldd");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| path.to_string())
        })
        .collect()
}

/// Writes the test layout into `dir`: `box:latest` (entrypoint `/bin/sh`), `svc:latest` and
/// `stubborn:latest` (the scripts `scripts` names, as `/<image>.sh`), all of one layer.
pub fn box_layout(dir: &Path, scripts: &[(&str, &str)]) {
    let mut b = LayerBuilder::new();
    for d in [
        "bin",
        "dev",
        "proc",
        "sys",
        "run",
        "etc",
        "conf",
        "out",
        "test-root",
    ] {
        b.dir(d, 0o755).expect("dir");
    }
    b.dir("tmp", 0o1777).expect("dir");
    let mut libs = std::collections::BTreeSet::new();
    for t in TOOLS {
        let bin = which(t);
        b.file(&format!("bin/{t}"), 0o755, &bin).expect("tool");
        libs.extend(libraries(&bin));
    }
    for l in libs {
        b.file(l.trim_start_matches('/'), 0o755, Path::new(&l))
            .expect("library");
    }
    for (name, text) in scripts {
        b.bytes(&format!("{name}.sh"), 0o755, text.as_bytes().to_vec())
            .expect("script");
    }
    let layer = b.finish(1_700_000_000).expect("layer");
    let mut w = LayoutWriter::create(dir).expect("layout");
    let images = std::iter::once(("box".to_string(), vec!["/bin/sh".to_string()])).chain(
        scripts
            .iter()
            .map(|(n, _)| (n.to_string(), vec!["/bin/sh".into(), format!("/{n}.sh")])),
    );
    for (name, entrypoint) in images {
        let config = serde_json::from_value(serde_json::json!({
            "Env": ["PATH=/bin"],
            "Entrypoint": entrypoint,
            "WorkingDir": "/"
        }))
        .expect("image config");
        w.add(ImageDef {
            name: format!("{name}:latest"),
            debarch: "amd64",
            layers: vec![&layer],
            config,
            created: "2023-11-14T22:13:20Z".into(),
        })
        .expect("add");
    }
    w.finish().expect("finish");
}

/// The parent cgroup of a test's containers, removed (when empty) at the end.
pub struct CgroupParent(pub String);

impl Default for CgroupParent {
    fn default() -> Self {
        Self::new()
    }
}

impl CgroupParent {
    pub fn new() -> Self {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        CgroupParent(format!("/baetyl-e2e-{}-{n}", std::process::id()))
    }
}

impl Drop for CgroupParent {
    fn drop(&mut self) {
        let rel = self.0.trim_start_matches('/');
        let unified = Path::new("/sys/fs/cgroup").join(rel);
        let _ = std::fs::remove_dir(unified);
        for e in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(e.path().join(rel));
        }
    }
}

/// What a containerd-mode work dir holds on to: its containerd and its containers' parent cgroup (dropped
/// after the work dir's master, before the work dir itself).
pub struct ContainerdSide {
    pub containerd: Containerd,
    pub cgroups: CgroupParent,
}

impl ContainerdSide {
    /// A containerd of the test's own whose namespace is unique to the test: runc keeps its state by namespace
    /// and container id in `/run/containerd/runc`, shared by every containerd of the host, so two tests with a
    /// service of the same name would share it.
    pub fn start() -> ContainerdSide {
        let cgroups = CgroupParent::new();
        let ns = format!("baetyl{}", cgroups.0.trim_start_matches("/baetyl"));
        ContainerdSide {
            containerd: Containerd::start().expect("containerd").with_namespace(&ns),
            cgroups,
        }
    }
}

/// conf.yml's lines that select the engine (none for native).
pub fn engine_conf(side: Option<&ContainerdSide>) -> String {
    match side {
        None => String::new(),
        Some(s) => format!(
            "mode: containerd\ncontainerd:\n  socket: {}\n  namespace: {}\n  images: [lib/baetyl/oci]\n  cgroup_parent: {}\n",
            s.containerd.socket().display(),
            s.containerd.namespace(),
            s.cgroups.0
        ),
    }
}

/// A process as a service recorded it: its PID namespace (`pid:[N]`, as `readlink /proc/self/ns/pid` says),
/// its pid in there and its start time (clock ticks after boot, field 22 of `/proc/PID/stat`, the same in every
/// namespace). Namespace numbers are reused at once and every container's first process is pid 1, so the start
/// time is what tells a process from a later one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PidRef {
    pub ns: String,
    pub pid: u32,
    pub start: u64,
}

/// The start time of host process `pid` (field 22 of its stat; the name, field 2, may hold spaces).
fn start_time(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

fn pid_ns(pid: &str) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/pid"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// The last (innermost) pid of `/proc/<pid>/status`'s `NSpid:` line.
fn innermost_pid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

/// Host pids of the live processes whose PID namespace is `ns`.
pub fn ns_members(ns: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(pid) = name.parse::<u32>() else {
            continue;
        };
        if pid_ns(&name).as_deref() == Some(ns) && crate::alive(pid) {
            out.push(pid);
        }
    }
    out
}

impl PidRef {
    /// `pid:[N] PID START`.
    pub fn parse(s: &str) -> Option<PidRef> {
        let mut f = s.split_whitespace();
        let r = PidRef {
            ns: f.next()?.to_string(),
            pid: f.next()?.parse().ok()?,
            start: f.next()?.parse().ok()?,
        };
        f.next().is_none().then_some(r)
    }

    /// What host process `pid` is, while it lives.
    pub fn of_host(pid: u32) -> Option<PidRef> {
        Some(PidRef {
            ns: pid_ns(&pid.to_string())?,
            pid: innermost_pid(pid)?,
            start: start_time(&pid.to_string())?,
        })
    }

    /// The host's pid of the process, while it lives.
    pub fn host_pid(&self) -> Option<u32> {
        let same = |p: u32| {
            innermost_pid(p) == Some(self.pid)
                && start_time(&p.to_string()) == Some(self.start)
                && crate::alive(p)
        };
        if pid_ns("self").as_deref() == Some(self.ns.as_str()) {
            return same(self.pid).then_some(self.pid);
        }
        ns_members(&self.ns).into_iter().find(|p| same(*p))
    }

    pub fn alive(&self) -> bool {
        self.host_pid().is_some()
    }
}

/// What an instance's processes are, to check that none is left: its process group (native), its PID
/// namespace, named by its first process (containerd).
#[derive(Debug, Clone)]
pub enum Group {
    Pgid(u32),
    PidNs(PidRef),
}

impl Group {
    /// The live members. When a PID namespace's first process has ended the kernel has killed every other
    /// one: a namespace of the same number then is another's.
    pub fn members(&self) -> Vec<u32> {
        match self {
            Group::Pgid(p) => crate::group_members(*p),
            Group::PidNs(init) => match init.host_pid() {
                Some(_) => ns_members(&init.ns),
                None => Vec::new(),
            },
        }
    }
}
