//! End-to-end tests of `baetyl master` in containerd mode (`mode: containerd`) that only containers have: a
//! real master process, a real containerd 1.6 with runc (the test kit's: temporary root, state and socket;
//! needs root), and the OCI layout of the engine fixture (`tests/engines.rs`): `box:latest`, the host's `sh`
//! and a few tools with the libraries `ldd` names. What both engines do is tested on both in `tests/master.rs`.
//! What is checked: services run as containers (inspect names them, their output lands in the instance log),
//! the v1 environment and the API socket reach them, a dataset refuses writes with EROFS, a service sees
//! neither the host's files nor other processes and runs as its own user; over its memory limit a service is
//! OOM-killed and restarted while the others keep running; stop is SIGTERM then SIGKILL after the grace and
//! leaves no container (what a master killed with -9 left: `tests/master.rs`).
//!
//! The tests skip (saying why) when not root or when containerd, runc or ctr are missing.

use std::process::Command;
use std::time::Duration;

use baetyl_e2e::engines::Engine;
use baetyl_e2e::*;
use baetyl_testkit::eventually;

const LONG: Duration = Duration::from_secs(60);

/// A containerd-mode work dir (the fixture of `tests/engines.rs`) with per-service users.
fn containerd_work() -> Option<Work> {
    let w = Work::with_engine(Engine::Containerd)?;
    w.conf("logger: {level: debug}\nusers: {mode: \"on\"}\n");
    Some(w)
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
    let Some(w) = containerd_work() else {
        return;
    };
    w.write("var/db/baetyl/conf/c", "dataset content");
    w.app(&APP.replace("HOSTDIR", &w.path().display().to_string()));
    let mut m = w.start_master();
    let v = m
        .wait_instance("probe", "probe", "running", LONG, |v| {
            v["status"] == "running"
        })
        .await;
    // The images are imported in the background, the instance's own first.
    eventually(LONG, "the import's end in the master's log", || {
        m.log_text().contains("OCI images imported").then_some(())
    });
    assert!(
        m.log_text().contains("OCI image imported"),
        "{}",
        m.log_text()
    );
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
    let ctd = w.containerd().expect("containerd");
    let containers = ctd.ctr_ok(&["containers", "ls", "-q"]).expect("ctr");
    assert!(containers.trim().is_empty(), "left: {containers}");
    let tasks = ctd.ctr_ok(&["tasks", "ls", "-q"]).expect("ctr");
    assert!(tasks.trim().is_empty(), "left: {tasks}");
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

/// The first pid of a `containerd started pid=N (start #start)` line of init's log.
fn containerd_pid(log: &str, start: u32) -> Option<u32> {
    let tail = format!(" (start #{start})");
    log.lines().find_map(|l| {
        let rest = l.split("containerd started pid=").nth(1)?;
        let (pid, after) = rest.split_once(' ')?;
        after
            .starts_with(tail.trim_start())
            .then(|| pid.parse().ok())
            .flatten()
    })
}

/// `baetyl init` (dry run: its mounts only logged, its processes real) with a master in containerd mode starts
/// containerd itself before the master (config written, socket waited for); containerd killed with -9 is
/// restarted, the container it ran lives on in its shim, and the master, which reconnects, still supervises
/// it (killed, it is restarted through the new containerd); init's reboot stops the master, which stops the
/// containers, and then containerd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_starts_containerd_and_restarts_it_when_it_dies() {
    if engines::containerd_skip().is_some() {
        return;
    }
    let w = Work::new();
    let cgroups = engines::CgroupParent::new();
    engines::box_layout(&w.path().join("lib/baetyl/oci"), &[]);
    let sock = w.path().join("ctd/containerd.sock");
    w.write(
        "etc/baetyl/conf.yml",
        &format!(
            "mode: containerd\ngrace: 2s\nlogger: {{level: debug}}\ncontainerd:\n  socket: {}\n  namespace: baetyl-init-{}\n  images: [lib/baetyl/oci]\n  cgroup_parent: {}\n",
            sock.display(),
            std::process::id(),
            cgroups.0
        ),
    );
    w.app("services:\n  keeper:\n    image: box\n    entrypoint: [/bin/sh, -c, 'while :; do sleep 1; done']\n    restart: {policy: always, backoff: {min: 200ms, max: 1s}}\n");
    let init_yml = w.write(
        "init.yml",
        &format!(
            "data: null\nhostname: null\nmaster:\n  command: [{:?}, master, -w, {:?}]\n  grace: 20s\n  restart_min: 200ms\n  restart_max: 1s\nshutdown:\n  grace: 5s\n",
            baetyl_bin().display().to_string(),
            w.path().display().to_string()
        ),
    );
    let cmdline = w.write("cmdline", "quiet\n");
    let log = w.path().join("init.log");
    let out = std::fs::File::create(&log).expect("log");
    let mut cmd = Command::new(baetyl_bin());
    cmd.args(["init", "--dry", "-c"])
        .arg(&init_yml)
        .arg("--cmdline")
        .arg(&cmdline)
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().expect("dup"))
        .stderr(out);
    let process = baetyl_testkit::process::Process::spawn(&mut cmd, "baetyl init")
        .expect("spawn init")
        .with_log(&log)
        .term_on_drop(Duration::from_secs(40));
    // The init process in the master's place: its log holds init's and the master's lines.
    let mut init = Master {
        process,
        workdir: w.path().to_path_buf(),
        log,
    };
    let ready = eventually(LONG, "init's master to get ready", || {
        let text = init.log_text();
        text.contains("master ready").then_some(text)
    });
    // containerd first, its socket answering, then the master.
    let answers = ready.find("containerd answers on").expect("answers");
    assert!(
        answers < ready.find("master started pid=").expect("master started"),
        "{ready}"
    );
    assert!(
        std::fs::read_to_string(w.path().join("ctd/baetyl-containerd.toml"))
            .expect("config")
            .contains("disabled_plugins = [\"io.containerd.grpc.v1.cri\""),
    );
    let first = containerd_pid(&ready, 1).expect("containerd's pid");
    let v = init
        .wait_instance("keeper", "keeper", "running", LONG, |v| {
            v["status"] == "running"
        })
        .await;
    let container = v["container"]["pid"].as_u64().expect("task pid") as u32;

    // containerd dies: init starts another; the container lives on in its shim, the master keeps it.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9 containerd");
    let second = eventually(LONG, "init to restart containerd", || {
        containerd_pid(&init.log_text(), 2)
    });
    assert_ne!(first, second);
    assert!(
        init.log_text()
            .contains(&format!("containerd pid={first} exited"))
    );
    assert!(alive(container), "the container outlives containerd");
    let v = init.instance("keeper", "keeper").await.expect("keeper");
    assert_eq!(
        (v["status"].as_str(), v["restarts"].as_u64()),
        (Some("running"), Some(0)),
        "{v}"
    );
    // The master reaches the new containerd: the container's end is seen and it is restarted through it.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(container as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9 the container");
    let v = init
        .wait_instance(
            "keeper",
            "keeper",
            "a restart through the new containerd",
            LONG,
            |v| v["restarts"] == 1 && v["status"] == "running",
        )
        .await;
    let again = v["container"]["pid"].as_u64().expect("task pid") as u32;
    assert!(alive(again) && again != container);

    // Reboot (dry: init exits 3): the master stops the container, then containerd goes with the rest.
    let status = init.process.terminate(Duration::from_secs(60));
    assert_eq!(status.code(), Some(3), "{}", init.log_text());
    assert!(!alive(again), "the container was stopped");
    assert!(!alive(second), "containerd was stopped");
}
