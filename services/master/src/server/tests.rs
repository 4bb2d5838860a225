//! A whole master ([`crate::run`]) in-process on the fake engine, its API on a unix socket in a temp dir:
//! start-up and orderly stop, credentials, reports, the inspect document, and the API's answers to bad
//! requests.

use std::os::unix::fs::PermissionsExt;

use serde_json::Value;

use crate::engine::fake::{FakeEngine, What};
use crate::test_rig::{Master, call, write};

const TWO: &str = "app_version: v7\nservices:\n  a: {image: svc}\n  b: {image: svc, depends_on: [a], volumes: [\"data:/data\"]}\nvolumes:\n  data: {}\n";

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn run_recovers_first_serves_and_stops_everything_in_reverse_order() {
    let fake = FakeEngine::new();
    fake.leave_over(&["old/old"]);
    let m = Master::start("grace: 1s", TWO, fake.clone(), &["a/a", "b/b"]).await;
    let events = fake.events();
    assert_eq!(events[0].what, What::Recovered, "{events:?}");
    assert_eq!(fake.keys_of(&What::Started), ["a/a", "b/b"]);
    let token = crate::server::operator_token_path(m.dir.path());
    assert_eq!(mode(&token), 0o600);
    assert_eq!(mode(&m.socket), 0o660);
    // Services get the socket's address.
    let env = fake.spec_of("b", "b").expect("b").env;
    assert_eq!(
        env[baetyl_sdk::env::MASTER_API_ADDRESS],
        format!("unix://{}", m.socket.display())
    );
    // The TCP listener serves the same API.
    let tcp =
        baetyl_sdk::client::MasterClient::new(baetyl_sdk::client::Address::Tcp(m.tcp.to_string()))
            .with_credentials(
                crate::api::OPERATOR,
                std::fs::read_to_string(&token).expect("token").trim(),
            );
    assert_eq!(
        tcp.inspect().await.expect("inspect over TCP")["software"]["conf_version"],
        "v7"
    );

    let socket = m.socket.clone();
    m.stop().await.expect("run ends cleanly");
    assert_eq!(fake.keys_of(&What::Terminated), ["b/b", "a/a"]);
    assert!(fake.live().is_empty());
    assert!(!socket.exists(), "the socket is removed");
    assert!(!token.exists(), "the operator token is removed");
}

#[tokio::test]
async fn the_api_wants_credentials_and_a_service_reports_for_itself_only() {
    let m = Master::start("", TWO, FakeEngine::new(), &["a/a", "b/b"]).await;
    let inspect = "/v1/system/inspect";
    assert_eq!(
        call(&m.anonymous(), "GET", inspect, "").await,
        (401, "account unauthorized".to_string())
    );
    let wrong = m
        .anonymous()
        .with_credentials("a", "0123456789abcdef0123456789abcdef");
    assert_eq!(call(&wrong, "GET", inspect, "").await.0, 401);
    // b's token is not a's.
    let b_env = m.fake.spec_of("b", "b").expect("b").env;
    let borrowed = m
        .anonymous()
        .with_credentials("a", &b_env[baetyl_sdk::env::SERVICE_TOKEN]);
    assert_eq!(call(&borrowed, "GET", inspect, "").await.0, 401);

    let a = m.service("a");
    assert_eq!(call(&a, "GET", inspect, "").await.0, 200);
    assert_eq!(
        call(
            &a,
            "PUT",
            "/v1/services/a/instances/a/report",
            r#"{"messages": 42}"#
        )
        .await,
        (200, String::new())
    );
    assert_eq!(
        call(&a, "PUT", "/v1/services/b/instances/b/report", "{}").await,
        (
            403,
            "service `a` may only report for its own instances".to_string()
        )
    );
    assert_eq!(
        call(&a, "PUT", "/v1/services/a/instances/a.i9/report", "{}").await,
        (400, "instance `a/a.i9`: no such instance".to_string())
    );
    let (status, body) = call(&a, "PUT", "/v1/services/a/instances/a/report", "[1]").await;
    assert!(
        status == 400 && body.starts_with("report body must be a JSON object"),
        "{status} {body}"
    );
    let v = m.operator().inspect().await.expect("inspect");
    assert_eq!(v["services"][0]["instances"][0]["messages"], 42);
    m.stop().await.expect("stop");
}

#[tokio::test]
async fn inspect_has_the_v1_shape() {
    let m = Master::start("", TWO, FakeEngine::new(), &["a/a", "b/b"]).await;
    let v = m.operator().inspect().await.expect("inspect");
    let keys = |v: &Value| -> Vec<String> {
        let mut k: Vec<String> = v
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        k.sort();
        k
    };
    assert_eq!(
        keys(&v),
        [
            "error",
            "hardware",
            "processes",
            "safe_mode",
            "services",
            "software",
            "time",
            "volumes"
        ]
    );
    assert_eq!(
        keys(&v["software"]),
        [
            "arch",
            "bin_version",
            "build_target",
            "conf_version",
            "git_revision",
            "mode",
            "os",
            "pwd"
        ]
    );
    assert_eq!(v["software"]["mode"], "fake");
    assert_eq!(v["software"]["bin_version"], "0.0.0-test");
    assert_eq!(
        keys(&v["hardware"]),
        [
            "cpu_stats",
            "disk_stats",
            "host_stats",
            "mem_stats",
            "net_stats"
        ]
    );
    assert!(v["processes"]["master"]["rss"].as_u64().unwrap_or(0) > 0);
    let services = v["services"].as_array().expect("services");
    assert_eq!(
        services.iter().map(keys).collect::<Vec<_>>(),
        vec![["image", "instances", "name", "replica"]; 2]
    );
    let inst = &services[1]["instances"][0];
    assert_eq!(
        keys(inst),
        [
            "cpu_stats",
            "dynamic",
            "last_exit",
            "mem_stats",
            "name",
            "process",
            "processes",
            "restarts",
            "start_time",
            "status"
        ]
    );
    assert_eq!(
        (&inst["name"], &inst["status"], &inst["dynamic"]),
        (&"b".into(), &"running".into(), &false.into())
    );
    assert_eq!(keys(&inst["process"]), ["id", "name", "pid"]);
    assert_eq!(
        v["volumes"],
        serde_json::json!([{"name": "data", "path": "var/db/baetyl/volumes/data", "read_only": false}])
    );
    m.stop().await.expect("stop");
}

#[tokio::test]
async fn refused_requests_answer_v1_statuses_with_the_reason() {
    let app = "services:\n  m: {image: svc}\n  rt: {image: svc, replica: 0}\n";
    let m = Master::start("update: {health: 100ms}", app, FakeEngine::new(), &["m/m"]).await;
    let c = m.service("m");
    let start = "/v1/services/rt/instances/rt-1/start";
    assert_eq!(call(&c, "PUT", start, "").await, (200, String::new()));
    // v1: a start of a running instance restarts it.
    assert_eq!(call(&c, "PUT", start, "").await, (200, String::new()));
    assert_eq!(m.fake.starts("rt", "rt-1"), 2);
    let (status, body) = call(&c, "PUT", "/v1/services/ghost/instances/g/start", "").await;
    assert!(status == 400 && body.contains("ghost"), "{body}");
    let (status, body) = call(&c, "PUT", start, "[\"A=1\"]").await;
    assert!(
        status == 400 && body.starts_with("start body must be a JSON object"),
        "{body}"
    );
    assert_eq!(
        call(&c, "PUT", "/v1/services/rt/instances/rt-1/stop", "").await,
        (200, String::new())
    );

    // Updates are the operator's (or an agent's).
    let c = m.operator();
    let update = "/v1/system/update";
    for (body, says) in [
        ("nonsense", "update body is not"),
        (r#"{"type":"MST","path":"x"}"#, "type MST"),
        (
            r#"{"type":"FIRMWARE","path":"x"}"#,
            "update type `FIRMWARE` is unknown",
        ),
        (
            r#"{"type":"OS","path":"x"}"#,
            "OS updates need a device booted from a baetyl disk image",
        ),
    ] {
        let (status, text) = call(&c, "PUT", update, body).await;
        assert!(
            status == 400 && text.contains(says),
            "{body}: {status} {text}"
        );
    }
    std::fs::write(m.path("same.yml"), app).expect("write");
    let same = r#"{"type":"APP","path":"same.yml","trace":"t1"}"#;
    assert_eq!(call(&c, "PUT", update, same).await.0, 200);
    let (status, text) = call(&c, "PUT", update, same).await;
    assert!(
        status == 409 && text.contains("already in progress"),
        "{status} {text}"
    );
    m.stop().await.expect("stop");
}

#[tokio::test]
async fn a_symlink_planted_at_the_token_file_is_replaced_not_followed() {
    let dir = tempfile::tempdir().expect("dir");
    let elsewhere = tempfile::tempdir().expect("dir");
    let outside = elsewhere.path().join("precious");
    std::fs::write(&outside, "precious").expect("write");
    write(dir.path(), "var/db/baetyl/application.yml", TWO);
    let token = crate::server::operator_token_path(dir.path());
    std::fs::create_dir_all(token.parent().expect("parent")).expect("dir");
    std::os::unix::fs::symlink(&outside, &token).expect("symlink");
    let m = Master::start_in(dir, "", FakeEngine::new(), &["a/a", "b/b"]).await;
    assert_eq!(
        std::fs::read_to_string(&outside).expect("read"),
        "precious",
        "the token went through the symlink"
    );
    let md = std::fs::symlink_metadata(&token).expect("token");
    assert!(md.file_type().is_file(), "{md:?}");
    assert_eq!(mode(&token), 0o600);
    assert_eq!(
        call(&m.operator(), "GET", "/v1/system/inspect", "").await.0,
        200
    );
    m.stop().await.expect("stop");
}

/// Runs a master in a work dir prepared by `prepare` and answers the services it runs and inspect's error.
async fn services_run_from(
    prepare: impl FnOnce(&std::path::Path),
    expect: &[&str],
) -> (Vec<String>, String) {
    let dir = tempfile::tempdir().expect("dir");
    prepare(dir.path());
    let m = Master::start_in(dir, "", FakeEngine::new(), expect).await;
    let v = m.operator().inspect().await.expect("inspect");
    let names = v["services"]
        .as_array()
        .expect("services")
        .iter()
        .map(|s| s["name"].as_str().unwrap_or_default().to_string())
        .collect();
    let error = v["error"].as_str().unwrap_or_default().to_string();
    m.stop().await.expect("stop");
    (names, error)
}

#[tokio::test]
async fn an_empty_unreadable_or_missing_application_falls_back_to_the_old_copy() {
    const APP: &str = "var/db/baetyl/application.yml";
    const OLD: &str = "var/db/baetyl/application.yml.old";
    // A file truncated by a crash is not an application without services.
    let (names, error) = services_run_from(
        |d| {
            write(d, APP, "\n");
            write(d, OLD, TWO);
        },
        &["a/a", "b/b"],
    )
    .await;
    assert_eq!(names, ["a", "b"]);
    assert!(
        error.contains("application.yml") && error.contains("empty") && error.contains(".old"),
        "{error}"
    );
    // Unreadable (here: a directory in its place).
    let (names, error) = services_run_from(
        |d| {
            std::fs::create_dir_all(d.join(APP)).expect("dir");
            write(d, OLD, TWO);
        },
        &["a/a", "b/b"],
    )
    .await;
    assert_eq!(names, ["a", "b"]);
    assert!(error.contains(".old"), "{error}");
    // Gone, with the previous one still there: not a fresh work dir, so not the example application.
    let (names, error) = services_run_from(|d| drop(write(d, OLD, TWO)), &["a/a", "b/b"]).await;
    assert_eq!(names, ["a", "b"]);
    assert!(
        error.contains("missing") && error.contains(".old"),
        "{error}"
    );
}

/// A small tmpfs mounted on a temp dir (we are root in CI), unmounted on drop.
struct Tmpfs {
    mountpoint: tempfile::TempDir,
}

impl Tmpfs {
    /// None (with the reason printed) where this process may not mount.
    fn mount(size: &str) -> Option<Tmpfs> {
        let mountpoint = tempfile::tempdir().expect("dir");
        let opts = format!("size={size},mode=0755");
        match nix::mount::mount(
            Some("tmpfs"),
            mountpoint.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(opts.as_str()),
        ) {
            Ok(()) => Some(Tmpfs { mountpoint }),
            Err(e) => {
                eprintln!("SKIPPED: cannot mount a tmpfs ({e}); this test needs root");
                None
            }
        }
    }

    /// A fresh work dir on the tmpfs.
    fn workdir(&self) -> tempfile::TempDir {
        tempfile::tempdir_in(self.mountpoint.path()).expect("work dir")
    }

    /// Fills the file system until a write fails for lack of space.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.mountpoint.path().join("filler")).expect("filler");
        let block = vec![0u8; 4096];
        loop {
            if let Err(e) = f.write_all(&block).and_then(|()| f.sync_all()) {
                assert_eq!(e.raw_os_error(), Some(nix::libc::ENOSPC), "{e}");
                return;
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.mountpoint.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

#[tokio::test]
async fn the_master_starts_and_serves_its_api_on_a_full_disk() {
    let Some(fs) = Tmpfs::mount("512k") else {
        return;
    };
    let elsewhere = tempfile::tempdir().expect("dir");
    let token = write(
        elsewhere.path(),
        "operator.token",
        "0123456789abcdef0123456789abcdef",
    );
    let dir = fs.workdir();
    write(dir.path(), "var/db/baetyl/application.yml", TWO);
    fs.fill();
    let conf = format!("server: {{operator_token_file: {}}}\n", token.display());
    let m = Master::start_in(dir, &conf, FakeEngine::new(), &["a/a", "b/b"]).await;
    let op = m
        .anonymous()
        .with_credentials(crate::api::OPERATOR, "0123456789abcdef0123456789abcdef");
    let (status, body) = call(&op, "GET", "/v1/system/inspect", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        call(&m.service("a"), "GET", "/v1/system/inspect", "")
            .await
            .0,
        200
    );
    m.stop().await.expect("stop");
}

#[tokio::test]
async fn the_master_stops_promptly_during_an_update_and_keeps_the_previous_application() {
    let app = "app_version: v1\nservices:\n  a: {image: svc}\n";
    let m = Master::start("update: {health: 1h}\n", app, FakeEngine::new(), &["a/a"]).await;
    let new = "app_version: v2\nservices:\n  a: {image: svc, environment: {V: \"2\"}}\n";
    write(m.dir.path(), "new/application.yml", new);
    let body = r#"{"type":"APP","path":"new/application.yml","trace":"t-stop"}"#;
    assert_eq!(
        call(&m.operator(), "PUT", "/v1/system/update", body)
            .await
            .0,
        200
    );
    m.fake
        .until("the new a", |f| {
            f.spec_of("a", "a").is_some_and(|s| s.env.contains_key("V"))
        })
        .await;
    let (fake, file, log) = (
        m.fake.clone(),
        m.path("var/db/baetyl/application.yml"),
        m.path("var/db/baetyl/ota.log"),
    );
    let (stopped, _dir) =
        tokio::time::timeout(std::time::Duration::from_secs(10), m.stop_keeping_dir())
            .await
            .expect("the master stops within seconds during an update");
    stopped.expect("stop");
    assert!(fake.live().is_empty(), "{:?}", fake.live());
    assert_eq!(
        std::fs::read_to_string(&file).expect("app"),
        app,
        "an update the master could not confirm is not what runs at the next start"
    );
    let steps = crate::ota::steps_of(&log, "t-stop");
    assert_eq!(
        steps.last().map(String::as_str),
        Some("FAILURE"),
        "{steps:?}"
    );
}

#[tokio::test]
async fn an_update_without_a_path_reloads_the_application_file_as_v1_did() {
    let app = "app_version: v1\nservices:\n  a: {image: svc}\n";
    let m = Master::start("update: {health: 10ms}\n", app, FakeEngine::new(), &["a/a"]).await;
    // Edited in place, then reloaded with an update that names no file.
    let edited = "app_version: v2\nservices:\n  a: {image: svc, environment: {V: \"2\"}}\n";
    write(m.dir.path(), "var/db/baetyl/application.yml", edited);
    let body = r#"{"type":"APP","trace":"t-reload"}"#;
    assert_eq!(
        call(&m.operator(), "PUT", "/v1/system/update", body).await,
        (200, String::new())
    );
    m.fake
        .until("a with the edited environment", |f| {
            f.spec_of("a", "a").is_some_and(|s| s.env.contains_key("V"))
        })
        .await;
    let log = m.path("var/db/baetyl/ota.log");
    let done = async {
        while crate::ota::steps_of(&log, "t-reload")
            .last()
            .map(String::as_str)
            != Some("RESTARTED")
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), done)
        .await
        .unwrap_or_else(|_| panic!("{:?}", crate::ota::steps_of(&log, "t-reload")));
    assert_eq!(
        std::fs::read_to_string(m.path("var/db/baetyl/application.yml.old")).expect(".old"),
        app,
        "the text that ran before is kept as .old, as for any update"
    );
    m.stop().await.expect("stop");
}

const ROLES: &str = "services:\n  a: {image: svc}\n  b: {image: svc}\n  agent: {image: svc, volumes: ['stage:/stage', 'conf:/conf:ro']}\n  rt: {image: svc, replica: 0}\nvolumes:\n  stage: {path: var/db/stage}\n  conf: {path: var/db/conf}\n";

#[tokio::test]
async fn a_service_token_manages_only_the_dynamic_instances_it_started() {
    let conf = "server: {agents: [agent]}\nupdate: {health: 10ms}\n";
    let m = Master::start(
        conf,
        ROLES,
        FakeEngine::new(),
        &["a/a", "b/b", "agent/agent"],
    )
    .await;
    let (a, b, agent, op) = (
        m.service("a"),
        m.service("b"),
        m.service("agent"),
        m.operator(),
    );
    write(m.dir.path(), "same.yml", ROLES);
    write(m.dir.path(), "var/db/stage/r1/application.yml", ROLES);
    write(m.dir.path(), "var/db/conf/application.yml", ROLES);
    let update = r#"{"type":"APP","path":"same.yml"}"#;
    let staged = r#"{"type":"APP","path":"var/db/stage/r1/application.yml","trace":"t-staged"}"#;
    let start = |s: &str, i: &str| format!("/v1/services/{s}/instances/{i}/start");
    let stop = |s: &str, i: &str| format!("/v1/services/{s}/instances/{i}/stop");
    // What a plain service may not do.
    for (method, path, body) in [
        ("PUT", "/v1/system/update", update),
        ("PUT", "/v1/system/reboot", ""),
        ("PUT", "/v1/system/poweroff", ""),
        ("GET", "/v1/system/application", ""),
        ("GET", "/v1/system/update/t-staged", ""),
    ] {
        let (status, text) = call(&a, method, path, body).await;
        assert!(
            status == 403 && text.contains("service `a`") && text.contains("server.agents"),
            "{path}: {status} {text}"
        );
    }
    for (path, says) in [
        (stop("b", "b"), "static"),
        (stop("a", "a"), "static"),
        (start("b", "b-extra"), "replica"),
        (start("a", "a"), "static"),
        (start("a", "a.i1"), "static"),
    ] {
        let (status, text) = call(&a, "PUT", &path, "").await;
        assert!(
            status == 403 && text.contains(says),
            "{path}: {status} {text}"
        );
    }
    assert!(m.fake.live().contains(&"b/b".to_string()));
    // Its own dynamic instances, and those of services that only run dynamic instances (function runtimes).
    assert_eq!(call(&a, "PUT", &start("rt", "rt-1"), "").await.0, 200);
    assert_eq!(call(&a, "PUT", &start("a", "a-worker"), "").await.0, 200);
    let (status, text) = call(&b, "PUT", &stop("rt", "rt-1"), "").await;
    assert!(
        status == 403 && text.contains("started by"),
        "{status} {text}"
    );
    let (status, text) = call(&b, "PUT", &start("rt", "rt-1"), "").await;
    assert!(
        status == 403 && text.contains("started by"),
        "{status} {text}"
    );
    assert_eq!(call(&a, "PUT", &stop("rt", "rt-1"), "").await.0, 200);
    assert_eq!(call(&a, "PUT", &stop("a", "a-worker"), "").await.0, 200);
    // The agent and the operator manage everything.
    assert_eq!(call(&agent, "PUT", &stop("b", "b"), "").await.0, 200);
    assert_eq!(call(&op, "PUT", &start("b", "b"), "").await.0, 200);
    let (status, text) = call(&agent, "PUT", "/v1/system/reboot", "").await;
    assert!(
        status == 400 && text.contains("baetyl init"),
        "{status} {text}"
    );
    // An agent is a service: it updates from its own staging area (its read-write volumes) alone, not from
    // another file of the work dir nor from a volume it only reads.
    for path in [
        "same.yml",
        "var/db/conf/application.yml",
        "var/db/stage/../conf",
    ] {
        let body = format!(r#"{{"type":"APP","path":"{path}"}}"#);
        let (status, text) = call(&agent, "PUT", "/v1/system/update", &body).await;
        assert!(
            status == 400 && (text.contains("staging area") || text.contains("under the work dir")),
            "{path}: {status} {text}"
        );
    }
    let (status, text) = call(&agent, "GET", "/v1/system/application", "").await;
    assert!(
        status == 200 && text.contains("rt: {image: svc, replica: 0}"),
        "{status} {text}"
    );
    assert_eq!(
        call(&agent, "PUT", "/v1/system/update", staged).await.0,
        200
    );
    let mut records = String::new();
    for _ in 0..200 {
        let (status, text) = call(&agent, "GET", "/v1/system/update/t-staged", "").await;
        assert_eq!(status, 200, "{text}");
        if text.contains("RESTARTED") {
            records = text;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let v: Value = serde_json::from_str(&records).expect("records");
    let steps: Vec<&str> = v["records"]
        .as_array()
        .expect("records")
        .iter()
        .filter_map(|r| r["step"].as_str())
        .collect();
    assert_eq!(
        steps,
        ["RECEIVED", "UPDATING", "UPDATED", "RESTARTING", "RESTARTED"],
        "{records}"
    );
    assert_eq!(call(&op, "PUT", "/v1/system/update", update).await.0, 200);
    m.stop().await.expect("stop");
}

#[tokio::test]
async fn a_dynamic_start_cannot_set_loader_interpreter_or_master_variables() {
    let m = Master::start("", ROLES, FakeEngine::new(), &["a/a"]).await;
    let a = m.service("a");
    let start = "/v1/services/rt/instances/rt-1/start";
    for (name, says) in [
        ("LD_PRELOAD", "loader"),
        ("LD_LIBRARY_PATH", "loader"),
        ("BAETYL_PYTHON", "master"),
        ("PYTHONPATH", "interpreter"),
        ("PYTHONSTARTUP", "interpreter"),
        ("NODE_OPTIONS", "interpreter"),
        ("PERL5OPT", "interpreter"),
        ("GLIBC_TUNABLES", "loader"),
        ("PATH", "which program"),
        ("BASH_ENV", "shell"),
        ("A=B", "not a variable name"),
        ("", "not a variable name"),
    ] {
        let body = serde_json::json!({ name: "/tmp/evil.so" }).to_string();
        let (status, text) = call(&a, "PUT", start, &body).await;
        assert!(
            status == 400 && text.contains(says) && (name.is_empty() || text.contains(name)),
            "{name}: {status} {text}"
        );
    }
    assert!(
        m.fake.spec_of("rt", "rt-1").is_none(),
        "nothing was started"
    );
    let (status, text) = call(&a, "PUT", start, r#"{"X": "a\u0000b"}"#).await;
    assert!(status == 400 && text.contains("NUL"), "{status} {text}");
    // The contract variables are the master's: what a caller gives for them is ignored (v1 did the same).
    let body = r#"{"BAETYL_SERVICE_INSTANCE_ADDRESS": "127.0.0.1:5000", "BAETYL_SERVICE_NAME": "evil", "BAETYL_SERVICE_TOKEN": "stolen", "MY_SETTING": "1"}"#;
    assert_eq!(call(&a, "PUT", start, body).await, (200, String::new()));
    let env = m.fake.spec_of("rt", "rt-1").expect("rt-1").env;
    assert_eq!(env[baetyl_sdk::env::SERVICE_NAME], "rt");
    assert_eq!(
        env[baetyl_sdk::env::SERVICE_INSTANCE_ADDRESS],
        "127.0.0.1:5000"
    );
    assert_eq!(env["MY_SETTING"], "1");
    assert!(!env.contains_key(baetyl_sdk::env::SERVICE_TOKEN));
    m.stop().await.expect("stop");
}

/// One HTTPS request to the API on `addr` (server name `localhost`), trusting `pki`'s CA and presenting
/// `client` when given; answers (status, body), or the TLS or I/O error as text.
async fn https_get(
    addr: std::net::SocketAddr,
    path: &str,
    pki: &baetyl_testkit::pki::Pki,
    client: Option<&baetyl_testkit::pki::Cert>,
    token: &str,
) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tls = baetyl_sdk::mqtt::ClientTls {
        ca: Some(pki.ca.clone()),
        cert: client.map(|c| c.cert.clone()),
        key: client.map(|c| c.key.clone()),
        insecure_skip_verify: false,
    }
    .client_config()
    .map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let mut s = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nhost: localhost\r\n{}: {}\r\n{}: {token}\r\nconnection: close\r\n\r\n",
        baetyl_sdk::env::HEADER_USERNAME,
        crate::api::OPERATOR,
        baetyl_sdk::env::HEADER_PASSWORD,
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {text:?}"))?;
    Ok((status, text))
}

/// v1's `server.ca/cert/key`: the TCP listeners serve HTTPS and want a client certificate chaining to `ca`;
/// with a TCP `server.address`, the services get the plain socket instead.
#[tokio::test]
async fn the_tcp_api_serves_https_to_clients_with_a_certificate() {
    let pki_dir = tempfile::tempdir().expect("dir");
    let pki = baetyl_testkit::pki::Pki::new(pki_dir.path(), "api ca").expect("pki");
    let tool = pki.client("operator-tool").expect("client cert");
    let other = baetyl_testkit::pki::Pki::new(&pki_dir.path().join("other"), "other ca")
        .expect("other pki")
        .client("stranger")
        .expect("client cert");
    let conf = format!(
        "server:\n  address: \"tcp://127.0.0.1:0\"\n  cert: {}\n  key: {}\n  ca: {}\n",
        pki.server.cert.display(),
        pki.server.key.display(),
        pki.ca.display()
    );
    let fake = FakeEngine::new();
    let m = Master::start(&conf, TWO, fake.clone(), &["a/a", "b/b"]).await;
    let token = std::fs::read_to_string(crate::server::operator_token_path(m.dir.path()))
        .expect("token")
        .trim()
        .to_string();

    let (status, body) = https_get(m.tcp, "/v1/system/inspect", &pki, Some(&tool), &token)
        .await
        .expect("HTTPS with a client certificate");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"conf_version\":\"v7\""), "{body}");
    let (status, _) = https_get(
        m.tcp,
        "/v1/system/inspect",
        &pki,
        Some(&tool),
        "wrong-token-0123456789",
    )
    .await
    .expect("HTTPS");
    assert_eq!(status, 401, "TLS does not replace the credentials");
    // No certificate, or one from another CA: the handshake fails, nothing is served.
    assert!(
        https_get(m.tcp, "/v1/system/inspect", &pki, None, &token)
            .await
            .is_err()
    );
    assert!(
        https_get(m.tcp, "/v1/system/inspect", &pki, Some(&other), &token)
            .await
            .is_err()
    );
    // Plain HTTP on the TLS port gets no answer.
    let plain =
        baetyl_sdk::client::MasterClient::new(baetyl_sdk::client::Address::Tcp(m.tcp.to_string()))
            .with_credentials(crate::api::OPERATOR, &token);
    assert!(plain.inspect().await.is_err());
    // The services dial the plain socket, which serves them.
    let env = fake.spec_of("b", "b").expect("b").env;
    assert_eq!(
        env[baetyl_sdk::env::MASTER_API_ADDRESS],
        format!("unix://{}", m.socket.display())
    );
    assert_eq!(
        call(&m.service("b"), "GET", "/v1/system/inspect", "")
            .await
            .0,
        200
    );
    m.stop().await.expect("run ends cleanly");
}

#[test]
fn tls_keys_are_checked_at_load() {
    use baetyl_sdk::config::ConfigFile;
    let parse = |text: &str| {
        crate::config::MasterConfig::parse(text, std::path::Path::new("conf.yml"))
            .map_err(|e| e.to_string())
    };
    for (text, want) in [
        (
            "server: {address: 'tcp://127.0.0.1:1', cert: c.pem}\n",
            "`server.cert` and `server.key` go together",
        ),
        (
            "server: {address: 'tcp://127.0.0.1:1', ca: ca.pem}\n",
            "`server.ca`",
        ),
        ("server: {cert: c.pem, key: k.pem}\n", "there is none"),
    ] {
        let e = parse(text).expect_err(text);
        assert!(e.contains(want), "{text}: {e}");
    }
    parse("server: {tcp: '127.0.0.1:1', cert: c.pem, key: k.pem, ca: ca.pem}\n").expect("valid");
}
