//! Per-service users with real processes: a whole master in this process on the native engine, as root.
//! With users on, a service runs under its own uid/gid, owns its instance dir, log and read-write volume,
//! reads its dataset, reaches the API socket, and cannot read the operator token nor the master's
//! environment; with users off it runs as the master's user (root here).

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use baetyl_master::config::MasterConfig;
use baetyl_master::engine::native::NativeEngine;
use baetyl_master::{BuildInfo, Listeners, Setup};
use baetyl_sdk::config::ConfigFile;
use common::{Work, wait_text};

/// Says what the service can do, one line each, into `probe` in its instance dir.
const PROBER: &str = r#"#!/bin/sh
{
  id -u; id -g; id -G
  if cat "$TOKEN" >/dev/null 2>&1; then echo token-readable; else echo token-denied; fi
  if cat "/proc/$MASTER_PID/environ" >/dev/null 2>&1; then echo environ-readable; else echo environ-denied; fi
  if touch data/written 2>/dev/null; then echo volume-writable; else echo volume-denied; fi
  cat set/readme 2>/dev/null || echo dataset-denied
  python3 -c 'import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); print("api-reachable")' "$SOCK" 2>/dev/null || echo api-denied
} > probe.tmp
mv probe.tmp probe
exec sleep 1000
"#;

struct Probe {
    lines: Vec<String>,
    work: Work,
    /// The API socket's (uid, gid, mode) while the master ran.
    socket: (u32, u32, u32),
}

/// Runs a master with `conf` on an application whose service `p` runs the prober; answers what it found
/// (None, with the reason printed, where this process is not root).
async fn probe(conf: &str) -> Option<Probe> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: this test needs root (it gives services users of their own)");
        return None;
    }
    let w = Work::new();
    w.write("lib/baetyl/packages/prober/package.yml", "entry: run.sh\n");
    let script = w.write("lib/baetyl/packages/prober/run.sh", PROBER);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    w.write("var/db/baetyl/sets/one/readme", "dataset-readable\n");
    let workdir = w.dir.path().canonicalize().expect("canonical");
    let socket = workdir.join("var/run/baetyl.sock");
    let token = workdir.join("var/run/baetyl/operator.token");
    w.write(
        "var/db/baetyl/application.yml",
        &format!(
            "services:\n  p:\n    image: prober\n    environment: {{TOKEN: {}, MASTER_PID: \"{}\", SOCK: {}}}\n    volumes: [\"data:/data\", \"set:/set\"]\nvolumes:\n  data: {{}}\n  set: {{path: var/db/baetyl/sets/one, read_only: true}}\n",
            token.display(),
            std::process::id(),
            socket.display()
        ),
    );
    let config = MasterConfig::parse(conf, Path::new("conf.yml")).expect("conf");
    let engine = NativeEngine::new(&workdir, &config, Vec::new()).expect("engine");
    let listeners = Listeners::bind(&workdir, &config.server)
        .await
        .expect("bind");
    let setup = Setup {
        workdir: workdir.clone(),
        config,
        build: BuildInfo {
            version: "test",
            git_revision: "test",
            target: "test",
        },
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let master = tokio::spawn(baetyl_master::run(
        setup,
        Arc::new(engine),
        listeners,
        async {
            let _ = stopped.await;
        },
    ));
    let text = tokio::task::spawn_blocking({
        let path = workdir.join("var/run/baetyl/services/p/p/probe");
        move || wait_text(&path)
    })
    .await
    .expect("probe");
    let socket = owner(&socket);
    let _ = stop.send(());
    master.await.expect("run").expect("master");
    Some(Probe {
        lines: text.lines().map(str::to_string).collect(),
        work: w,
        socket,
    })
}

fn owner(p: &Path) -> (u32, u32, u32) {
    let md = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (md.uid(), md.gid(), md.mode() & 0o777)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_users_on_a_service_runs_as_itself_and_cannot_read_the_masters_secrets() {
    let Some(p) = probe("users: {mode: on}\n").await else {
        return;
    };
    let uid: u32 = p.lines[0].parse().expect("uid");
    let users: serde_json::Value = serde_json::from_slice(
        &std::fs::read(p.work.path("var/db/baetyl/users.json")).expect("users.json"),
    )
    .expect("json");
    assert_eq!(users["p"], uid, "the allocated id is remembered");
    assert!((20001..=29999).contains(&uid), "{uid}");
    assert_eq!(p.lines[1], uid.to_string(), "gid = uid");
    assert!(
        p.lines[2].split_whitespace().any(|g| g == "20000"),
        "the API group: {}",
        p.lines[2]
    );
    assert_eq!(
        &p.lines[3..],
        [
            "token-denied",
            "environ-denied",
            "volume-writable",
            "dataset-readable",
            "api-reachable"
        ]
    );
    let w = &p.work;
    assert_eq!(owner(&w.path("var/run/baetyl/services/p/p")).0, uid);
    assert_eq!(
        owner(&w.path("var/log/baetyl/services/p/p.log")),
        (uid, uid, 0o640)
    );
    assert_eq!(owner(&w.path("var/db/baetyl/volumes/data")).0, uid);
    assert_eq!(owner(&w.path("var/db/baetyl/volumes/data/written")).0, uid);
    let (set_uid, set_gid, set_mode) = owner(&w.path("var/db/baetyl/sets/one/readme"));
    assert_eq!(
        (set_uid, set_gid, set_mode & 0o077),
        (0, uid, 0o040),
        "the dataset is readable by the service's group and no other"
    );
    assert_eq!(p.socket, (0, 20000, 0o660));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_users_off_services_run_as_the_master() {
    let Some(p) = probe("users: {mode: off}\n").await else {
        return;
    };
    assert_eq!(&p.lines[..2], ["0", "0"]);
    assert_eq!(
        p.lines[3], "token-readable",
        "root reads everything: why users are on on a device"
    );
    assert!(!p.work.path("var/db/baetyl/users.json").exists());
    assert_eq!(p.socket, (0, 0, 0o660));
}
