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
    let probe_file = workdir.join("var/run/baetyl/services/p/p/probe");
    let sock = socket.clone();
    let (text, socket) = with_master(&workdir, conf, move || {
        let text = wait_text(&probe_file);
        (text, owner(&sock))
    })
    .await;
    Some(Probe {
        lines: text.lines().map(str::to_string).collect(),
        work: w,
        socket,
    })
}

/// Runs a master on `workdir` with `conf` while `during` runs (in a blocking thread); answers what it did.
async fn with_master<T: Send + 'static>(
    workdir: &Path,
    conf: &str,
    during: impl FnOnce() -> T + Send + 'static,
) -> T {
    let config = MasterConfig::parse(conf, Path::new("conf.yml")).expect("conf");
    let engine = NativeEngine::new(workdir, &config, Vec::new()).expect("engine");
    let listeners = Listeners::bind(workdir, &config.server)
        .await
        .expect("bind");
    let setup = Setup {
        workdir: workdir.to_path_buf(),
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
    let out = tokio::task::spawn_blocking(during)
        .await
        .expect("while the master runs");
    let _ = stop.send(());
    master.await.expect("run").expect("master");
    out
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

/// Tries to read each file of `$READ` (after `$GO` exists, when set) and says so, one line each.
const READER: &str = r#"#!/bin/sh
if [ -n "$GO" ]; then while [ ! -e "$GO" ]; do sleep 0.1; done; fi
for f in $READ; do
  if cat "$f" >/dev/null 2>&1; then echo "readable $f"; else echo "denied $f"; fi
done > probe.tmp
mv probe.tmp probe
exec sleep 1000
"#;

/// Secrets as the cloud agent renders them: in application.yml (a service's environment) and in config
/// volumes it stages in its own area (`deploy`, the agent's read-write volume, with the services' volumes
/// nested in it), written the way the agent and a service with umask 022 write files (0644). With users on,
/// service `b` reads none of `a`'s, `a` reads its own, and the agent reads the application and the logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_reads_its_own_secrets_and_no_other_services() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: this test needs root (it gives services users of their own)");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let w = Work::new();
    w.write("lib/baetyl/packages/reader/package.yml", "entry: run.sh\n");
    let script = w.write("lib/baetyl/packages/reader/run.sh", READER);
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let conf = w.write(
        "var/db/baetyl/deploy/volumes/a-conf-1/service.yml",
        "password: a-conf-secret\n",
    );
    let key = w.write("var/db/baetyl/volumes/a-data/key", "a-data-secret\n");
    for f in [&conf, &key] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let workdir = w.dir.path().canonicalize().expect("canonical");
    let wd = workdir.display();
    let app = "var/db/baetyl/application.yml";
    let (conf, key) = (conf.display(), key.display());
    let a_log = format!("{wd}/var/log/baetyl/services/a/a.log");
    let go = format!("{wd}/go");
    w.write(
        app,
        &format!(
            "services:
  a:
    image: reader
    environment: {{A_SECRET: a-env-secret, GO: {go}, READ: '{wd}/{app} {conf} {key}'}}
    volumes: ['a-conf:/etc/baetyl:ro', 'a-data:/data']
  b:
    image: reader
    environment: {{GO: {go}, READ: '{wd}/{app} {conf} {key} {a_log}'}}
  agent:
    image: reader
    depends_on: [a, b]
    environment: {{READ: '{wd}/{app} {a_log} {conf}'}}
    volumes: ['deploy:/deploy']
volumes:
  deploy: {{path: var/db/baetyl/deploy}}
  a-conf: {{path: var/db/baetyl/deploy/volumes/a-conf-1}}
  a-data: {{}}
"
        ),
    );
    let probes = with_master(
        &workdir,
        "users: {mode: on}\nserver: {agents: [agent]}\n",
        {
            let workdir = workdir.clone();
            move || {
                let probe =
                    |s: &str| workdir.join(format!("var/run/baetyl/services/{s}/{s}/probe"));
                // Everyone started (the agent last, after its volume was given to it): then a and b look.
                let agent = wait_text(&probe("agent"));
                std::fs::write(workdir.join("go"), "").expect("go");
                (wait_text(&probe("a")), wait_text(&probe("b")), agent)
            }
        },
    )
    .await;
    let (a, b, agent) = probes;
    let lines = |t: &str| t.lines().map(str::to_string).collect::<Vec<_>>();
    assert_eq!(
        lines(&a),
        [
            format!("denied {wd}/{app}"),
            format!("readable {conf}"),
            format!("readable {key}"),
        ],
        "a reads its config and data, not the whole application"
    );
    assert_eq!(
        lines(&b),
        [
            format!("denied {wd}/{app}"),
            format!("denied {conf}"),
            format!("denied {key}"),
            format!("denied {a_log}"),
        ],
        "b reads nothing of a's"
    );
    assert_eq!(
        lines(&agent),
        [
            format!("readable {wd}/{app}"),
            format!("readable {a_log}"),
            format!("denied {conf}"),
        ],
        "the agent reads the application and the logs it reports, not a's config"
    );
    assert_eq!(owner(&workdir.join(app)).2, 0o640);
}
