//! End-to-end tests of `baetyl master` in containerd mode (`mode: containerd`): a real master process, a real
//! containerd 1.6 with runc (the test kit's: temporary root, state and socket; needs root), and an OCI image
//! layout written by the test: `box:latest`, the host's `sh` and a few tools with the libraries `ldd` names.
//! What is checked: services run as containers (inspect names them, their output lands in the instance log),
//! the v1 environment and the API socket reach them, a dataset refuses writes with EROFS, a service sees
//! neither the host's files nor other processes and runs as its own user; over its memory limit a service is
//! OOM-killed and restarted while the others keep running; stop is SIGTERM then SIGKILL after the grace and
//! leaves no container; after `kill -9` of the master the next master removes what the first left.
//!
//! The tests skip (saying why) when not root or when containerd, runc or ctr are missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use baetyl_e2e::*;
use baetyl_image::oci::layer::LayerBuilder;
use baetyl_image::oci::layout::{ImageDef, LayoutWriter};
use baetyl_testkit::containerd::Containerd;
use baetyl_testkit::eventually;

const LONG: Duration = Duration::from_secs(60);

/// The tools the test image carries (each with what `ldd` says it needs).
const TOOLS: &[&str] = &[
    "sh", "sleep", "env", "grep", "sort", "cat", "ls", "id", "tail", "echo",
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

/// Writes the `box:latest` layout into `dir`.
fn box_layout(dir: &Path) {
    let mut b = LayerBuilder::new();
    for d in ["bin", "dev", "proc", "sys", "run", "etc", "conf", "out"] {
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
    let layer = b.finish(1_700_000_000).expect("layer");
    let config = serde_json::from_value(serde_json::json!({
        "Env": ["PATH=/bin"],
        "Entrypoint": ["/bin/sh"],
        "WorkingDir": "/"
    }))
    .expect("image config");
    let mut w = LayoutWriter::create(dir).expect("layout");
    w.add(ImageDef {
        name: "box:latest".into(),
        debarch: "amd64",
        layers: vec![&layer],
        config,
        created: "2023-11-14T22:13:20Z".into(),
    })
    .expect("add");
    w.finish().expect("finish");
}

/// A work dir whose master runs in containerd mode against `ctd`, with the `box` layout and per-service users;
/// its containers' cgroups go under a parent of the test's own ([`CgroupParent`]).
fn containerd_work(ctd: &Containerd, cgroups: &CgroupParent) -> Work {
    let w = Work::new();
    box_layout(&w.path().join("lib/baetyl/oci"));
    w.write(
        "etc/baetyl/conf.yml",
        &format!(
            "mode: containerd\ngrace: 2s\nlogger: {{level: debug}}\nusers: {{mode: \"on\"}}\ncontainerd:\n  socket: {}\n  images: [lib/baetyl/oci]\n  cgroup_parent: {}\n",
            ctd.socket().display(),
            cgroups.0
        ),
    );
    w
}

/// The parent cgroup of a test's containers, removed (when empty) at the end.
struct CgroupParent(String);

impl CgroupParent {
    fn new() -> Self {
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

fn skip() -> bool {
    match Containerd::unavailable() {
        Some(why) => {
            eprintln!("skipped: {why}");
            true
        }
        None => false,
    }
}

fn read(w: &Work, rel: &str) -> String {
    std::fs::read_to_string(w.path().join(rel))
        .unwrap_or_default()
        .trim()
        .to_string()
}

const APP: &str = r#"
services:
  probe:
    image: hub.baetyl.io/baetyl/box:v2.0.0
    entrypoint:
      - /bin/sh
      - -c
      - |
        echo hello from the container
        env | grep ^BAETYL_ | sort > /out/env
        echo $$ > /out/pid
        id -u > /out/uid
        ls /proc | grep -c '^[0-9]' > /out/procs
        (echo x > /conf/new) 2> /out/dataset
        cat /conf/c > /out/read
        ls "$HOST_DIR" > /out/host 2>&1
        test -S /run/baetyl/baetyl.sock && echo socket > /out/socket
        echo ready > /out/ready
        trap 'echo term > /out/term; exit 0' TERM
        while :; do sleep 1; done
    environment: {HOST_DIR: HOSTDIR}
    volumes: ["out:/out", "conf:/conf:ro"]
  hog:
    image: box
    entrypoint: [/bin/sh, -c, "echo hogging; tail /dev/zero"]
    resources: {memory: {limit: 32m, swap: "0"}}
    restart: {policy: always, backoff: {min: 500ms, max: 1s}}
  stubborn:
    image: box
    entrypoint: [/bin/sh, -c, "trap '' TERM; while :; do sleep 1; done"]
volumes:
  out: {path: var/db/baetyl/out}
  conf: {path: var/db/baetyl/conf}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_run_as_isolated_containers() {
    if skip() {
        return;
    }
    let cgroups = CgroupParent::new();
    let ctd = Containerd::start().expect("containerd");
    let w = containerd_work(&ctd, &cgroups);
    w.write("var/db/baetyl/conf/c", "dataset content");
    w.app(&APP.replace("HOSTDIR", &w.path().display().to_string()));
    let mut m = w.start_master();
    assert!(
        m.log_text().contains("OCI images imported"),
        "{}",
        m.log_text()
    );
    let v = m
        .wait_instance("probe", "probe", "running", LONG, |v| {
            v["status"] == "running"
        })
        .await;
    assert_eq!(v["container"]["id"], "probe.probe", "{v}");
    let pid = v["container"]["pid"].as_u64().expect("task pid") as u32;
    assert!(alive(pid));
    eventually(LONG, "the probe to finish its checks", || {
        (read(&w, "var/db/baetyl/out/ready") == "ready").then_some(())
    });
    // The v1 environment, with the API address inside the container, and the socket there.
    let env = read(&w, "var/db/baetyl/out/env");
    assert!(env.contains("BAETYL_SERVICE_NAME=probe"), "{env}");
    assert!(env.contains("BAETYL_SERVICE_MODE=containerd"), "{env}");
    assert!(
        env.contains("BAETYL_MASTER_API_ADDRESS=unix:///run/baetyl/baetyl.sock"),
        "{env}"
    );
    assert!(env.contains("BAETYL_SERVICE_TOKEN="), "{env}");
    assert_eq!(read(&w, "var/db/baetyl/out/socket"), "socket");
    // Its own PID namespace, its own user, a read-only dataset, no view of the host's files.
    assert_eq!(read(&w, "var/db/baetyl/out/pid"), "1");
    let procs: u32 = read(&w, "var/db/baetyl/out/procs").parse().expect("count");
    assert!(procs <= 4, "sees {procs} processes");
    let uid: u32 = read(&w, "var/db/baetyl/out/uid").parse().expect("uid");
    assert!(uid >= 20000, "runs as its own user, not {uid}");
    assert!(
        read(&w, "var/db/baetyl/out/dataset").contains("Read-only file system"),
        "{}",
        read(&w, "var/db/baetyl/out/dataset")
    );
    assert!(!w.path().join("var/db/baetyl/conf/new").exists());
    assert_eq!(read(&w, "var/db/baetyl/out/read"), "dataset content");
    assert!(
        read(&w, "var/db/baetyl/out/host").contains("No such file"),
        "{}",
        read(&w, "var/db/baetyl/out/host")
    );
    // Its output in the instance log, as with native.
    eventually(LONG, "the output in the instance log", || {
        read(&w, "var/log/baetyl/services/probe/probe.log")
            .contains("hello from the container")
            .then_some(())
    });
    // Figures from its cgroup.
    let v = m.instance("probe", "probe").await.expect("probe");
    assert!(v["mem_stats"]["rss"].as_u64().unwrap_or(0) > 0, "{v}");

    // Over its limit the hog is OOM-killed and restarted; the probe keeps running.
    let v = m
        .wait_instance("hog", "hog", "an OOM kill and a restart", LONG, |v| {
            v["restarts"].as_u64().unwrap_or(0) >= 1
        })
        .await;
    assert!(
        v["last_exit"]
            .as_str()
            .unwrap_or_default()
            .contains("signal 9"),
        "{v}"
    );
    assert_eq!(
        container_pid(&m, "probe").await,
        Some(pid),
        "the probe was not touched"
    );

    // Stop: the probe ends on SIGTERM, the stubborn one gets SIGKILL after the grace; nothing is left.
    assert_eq!(m.terminate(), Some(0), "{}", m.log_text());
    assert!(!alive(pid));
    assert_eq!(read(&w, "var/db/baetyl/out/term"), "term");
    assert!(
        m.log_text().contains("did not stop within"),
        "{}",
        m.log_text()
    );
    let containers = ctd.ctr_ok(&["containers", "ls", "-q"]).expect("ctr");
    assert!(containers.trim().is_empty(), "left: {containers}");
    let tasks = ctd.ctr_ok(&["tasks", "ls", "-q"]).expect("ctr");
    assert!(tasks.trim().is_empty(), "left: {tasks}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_master_removes_what_a_killed_one_left() {
    if skip() {
        return;
    }
    let cgroups = CgroupParent::new();
    let ctd = Containerd::start().expect("containerd");
    let w = containerd_work(&ctd, &cgroups);
    w.app("services:\n  a: {image: box, entrypoint: [/bin/sh, -c, 'while :; do sleep 1; done'], replica: 2}\n  b: {image: box, entrypoint: [/bin/sh, -c, 'while :; do sleep 1; done']}\n");
    let mut first = w.start_master();
    let mut old = Vec::new();
    for (s, i) in [("a", "a"), ("a", "a.i1"), ("b", "b")] {
        let v = first
            .wait_instance(s, i, "running", LONG, |v| v["status"] == "running")
            .await;
        old.push(v["container"]["pid"].as_u64().expect("pid") as u32);
    }
    first.kill9();
    for p in &old {
        assert!(alive(*p), "containers outlive a master killed with -9");
    }
    let second = w.start_master();
    assert!(
        second.log_text().contains("left by a previous master"),
        "{}",
        second.log_text()
    );
    for p in &old {
        assert!(!alive(*p), "leftover {p} still runs");
    }
    for (s, i) in [("a", "a"), ("a", "a.i1"), ("b", "b")] {
        second
            .wait_instance(s, i, "running", LONG, |v| v["status"] == "running")
            .await;
    }
    let containers = ctd.ctr_ok(&["containers", "ls", "-q"]).expect("ctr");
    let mut ids: Vec<&str> = containers.lines().collect();
    ids.sort();
    assert_eq!(ids, ["a.a", "a.a.i1", "b.b"], "one container per instance");
}

#[test]
fn a_master_without_containerd_says_so() {
    let w = Work::new();
    let dir = w.path().to_path_buf();
    w.write(
        "etc/baetyl/conf.yml",
        &format!(
            "mode: containerd\ncontainerd: {{socket: {}/nothing.sock, images: [x], connect_timeout: 1s}}\n",
            dir.display()
        ),
    );
    let out = Command::new(baetyl_bin())
        .args(["master", "-w"])
        .arg(w.path())
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("containerd does not answer on") && err.contains("nothing.sock"),
        "{err}"
    );
}

async fn container_pid(m: &Master, svc: &str) -> Option<u32> {
    m.instance(svc, svc).await?["container"]["pid"]
        .as_u64()
        .map(|p| p as u32)
}
