//! End-to-end tests of `baetyl master`: real master processes on temp work dirs running small real programs
//! (the shell scripts of `tests/lib.rs`), each test on both engines ([`both_engines!`]): `<test>::native`
//! runs the scripts as child processes, `<test>::containerd` as containers of a real containerd 1.6 + runc of
//! the test's own (needs root and Debian's containerd and runc; skipped loudly otherwise, a failure when
//! `BAETYL_REQUIRE_CONTAINERD` is set). `cargo test -p baetyl-e2e --test master containerd` runs one engine.

use std::time::Duration;

use baetyl_e2e::engines::Engine;
use baetyl_e2e::*;
use baetyl_testkit::{eventually, free_port};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const LONG: Duration = Duration::from_secs(60);

fn sigkill(pid: u32) {
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill -9");
}

/// Runs each named `async fn(Work)` as two tests, `<name>::native` and `<name>::containerd`, each on a fresh
/// work dir of its engine (the containerd one returns early when containerd cannot run here, saying so).
macro_rules! both_engines {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn native() {
                super::$name(Work::new()).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn containerd() {
                if let Some(w) = Work::with_engine(Engine::Containerd) {
                    super::$name(w).await
                }
            }
        }
    )*};
}

both_engines!(
    start_order_follows_depends_on,
    killed_service_restarts_after_backoff_unless_policy_no,
    retry_max_stops_restarting,
    stop_leaves_no_process_behind,
    api_requires_the_service_token,
    dynamic_instances_start_stop_and_get_no_token,
    update_restarts_only_the_changed_service,
    failed_update_rolls_back_to_the_previous_application,
    a_second_master_after_kill9_leaves_one_copy_of_each_instance,
    ulimits_nofile_reach_the_service,
);

async fn start_order_follows_depends_on(w: Work) {
    // Alphabetical order is the reverse of the dependency order.
    w.app(
        "services:\n  a: {image: svc, depends_on: [b]}\n  b: {image: svc, depends_on: [c]}\n  c: {image: svc}\n  d: {image: svc, depends_on: [a, c]}\n",
    );
    let port = free_port();
    w.conf(&format!(
        "logger: {{format: json}}\nserver: {{tcp: \"127.0.0.1:{port}\"}}\n"
    ));
    let m = w.start_master();
    // Every log line is a JSON object naming the service and instance.
    for line in m.log_text().lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert_eq!(
            (v["service"].as_str(), v["instance"].as_str()),
            (Some("master"), Some("master")),
            "{line}"
        );
    }
    // The optional TCP listener serves the same API.
    let token =
        std::fs::read_to_string(w.path().join("var/run/baetyl/operator.token")).expect("token");
    let tcp = baetyl_sdk::client::MasterClient::new(baetyl_sdk::client::Address::Tcp(format!(
        "127.0.0.1:{port}"
    )))
    .with_credentials("baetyl-operator", token.trim());
    assert!(tcp.inspect().await.expect("inspect over TCP")["services"].is_array());
    let mut times = Vec::new();
    for s in ["c", "b", "a", "d"] {
        let v = m
            .wait_instance(s, s, "running", LONG, |v| v["status"] == "running")
            .await;
        times.push((s, v["start_time"].as_str().expect("start_time").to_string()));
    }
    let mut sorted = times.clone();
    sorted.sort_by(|x, y| x.1.cmp(&y.1));
    assert_eq!(sorted, times, "instances must start in dependency order");
    let started: Vec<String> = m
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["msg"] == "service started")
        .map(|v| {
            v["fields"]["service"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(started, ["c", "b", "a", "d"]);
}

async fn killed_service_restarts_after_backoff_unless_policy_no(w: Work) {
    w.app(
        r#"
services:
  keeper:
    image: svc
    restart: {policy: always, backoff: {min: 1s, max: 10s}}
  oneshot:
    image: svc
    restart: {policy: "no"}
"#,
    );
    let m = w.start_master();
    let keeper = m.running_pid("keeper", "keeper").await;
    let oneshot = m.running_pid("oneshot", "oneshot").await;
    let keeper_child = read_pidref(&w.instance_dir("keeper", "keeper").join("child.pid"));
    let keeper_group = w.group_of(keeper);
    sigkill(keeper);
    sigkill(oneshot);
    let killed_at = std::time::Instant::now();
    let v = m
        .wait_instance("keeper", "keeper", "a restart", LONG, |v| {
            v["restarts"] == 1 && v["status"] == "running"
        })
        .await;
    assert!(
        killed_at.elapsed() >= Duration::from_millis(900),
        "restarted before its 1 s backoff"
    );
    let new_pid = v[w.engine.kind()]["pid"].as_u64().expect("pid") as u32;
    assert_ne!(new_pid, keeper);
    assert!(alive(new_pid));
    assert!(
        v["last_exit"]
            .as_str()
            .unwrap_or_default()
            .contains("signal 9"),
        "{v}"
    );
    // The killed instance's child went with it: nothing of the old instance is left.
    if let Some(c) = keeper_child {
        eventually(LONG, "the old child to be gone", || !c.alive());
    }
    assert!(keeper_group.members().is_empty());
    assert!(
        m.log_text().contains("restarting in 1s"),
        "the restart reason is logged"
    );

    let v = m
        .wait_instance("oneshot", "oneshot", "failed", LONG, |v| {
            v["status"] == "failed"
        })
        .await;
    // A window in which nothing must happen: no restart with policy "no".
    tokio::time::sleep(Duration::from_secs(2)).await;
    let v2 = m
        .instance("oneshot", "oneshot")
        .await
        .expect("still listed");
    assert_eq!(v2["restarts"], 0, "{v} {v2}");
    assert_eq!(w.starts().iter().filter(|(n, _)| n == "oneshot").count(), 1);
}

async fn retry_max_stops_restarting(w: Work) {
    w.app(
        r#"
services:
  crasher:
    image: svc
    environment: {EXIT_CODE: 3}
    restart: {policy: on-failure, retry: {max: 2}, backoff: {min: 100ms, max: 200ms}}
  clean:
    image: svc
    environment: {EXIT_CODE: 0}
    restart: {policy: on-failure}
"#,
    );
    let m = w.start_master();
    let v = m
        .wait_instance("crasher", "crasher", "to be given up", LONG, |v| {
            v["status"] == "failed"
        })
        .await;
    assert_eq!(v["restarts"], 2, "{v}");
    assert_eq!(v["last_exit"], "exited with code 3");
    // A window in which nothing must happen: no start after the master gave up.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        w.starts().iter().filter(|(n, _)| n == "crasher").count(),
        3,
        "1 start + 2 restarts"
    );
    assert!(m.log_text().contains("giving up after 2 restarts"));
    // on-failure does not restart a clean exit.
    let v = m
        .wait_instance("clean", "clean", "exited", LONG, |v| {
            v["status"] == "exited"
        })
        .await;
    assert_eq!(v["restarts"], 0);
}

async fn stop_leaves_no_process_behind(w: Work) {
    w.app("services:\n  stubborn: {image: stubborn}\n  plain: {image: svc, replica: 2, depends_on: [stubborn]}\n");
    let mut m = w.start_master();
    let main = m.running_pid("stubborn", "stubborn").await;
    let dir = w.instance_dir("stubborn", "stubborn");
    eventually(LONG, "the helpers to start", || {
        dir.join("ignorer.pid").exists() && dir.join("escaper.pid").exists()
    });
    let ignorer = read_pidref(&dir.join("ignorer.pid"))
        .and_then(|r| r.host_pid())
        .expect("ignorer");
    let escaper = read_pidref(&dir.join("escaper.pid"))
        .and_then(|r| r.host_pid())
        .expect("escaper");
    let p1 = m.running_pid("plain", "plain").await;
    let p2 = m.running_pid("plain", "plain.i1").await;
    assert!(alive(main) && alive(ignorer) && alive(escaper) && alive(p1) && alive(p2));
    let groups = [w.group_of(main), w.group_of(p1), w.group_of(p2)];
    assert!(!groups[0].members().is_empty());
    assert_eq!(
        m.terminate(),
        Some(0),
        "master exits 0 on SIGTERM\n{}",
        m.log_text()
    );
    for (what, pid) in [
        ("main", main),
        ("ignorer", ignorer),
        ("plain", p1),
        ("plain.i1", p2),
    ] {
        assert!(!alive(pid), "{what} ({pid}) survived the stop");
    }
    assert!(groups.iter().all(|g| g.members().is_empty()), "{groups:?}");
    // A container's PID namespace holds every process of the instance, setsid or not.
    let cgroups =
        w.engine == Engine::Containerd || m.log_text().contains("instances get cgroup v2 groups");
    if cgroups {
        assert!(
            !alive(escaper),
            "a process that left the process group survived although the master has cgroups"
        );
    } else {
        eprintln!("no cgroup v2 here: a process that calls setsid can escape; killing it by hand");
        let _ = kill(Pid::from_raw(escaper as i32), Signal::SIGKILL);
    }
    let log = m.log_text();
    assert!(
        log.contains("did not stop within"),
        "SIGKILL after grace is logged\n{log}"
    );
    // Reverse dependency order: plain (which depends on stubborn) stops first.
    let stopped = |s: &str| {
        log.find(&format!("service stopped service={s}"))
            .expect("stopped line")
    };
    assert!(stopped("plain") < stopped("stubborn"), "{log}");
}

async fn api_requires_the_service_token(w: Work) {
    w.app("services:\n  caller: {image: svc}\n");
    let m = w.start_master();
    m.wait_instance("caller", "caller", "running", LONG, |v| {
        v["status"] == "running"
    })
    .await;
    let env = w.wait_env("caller", "caller", "BAETYL_SERVICE_TOKEN");
    let token = env["BAETYL_SERVICE_TOKEN"].clone();
    assert_eq!(token.len(), 32);
    assert_eq!(env["BAETYL_SERVICE_NAME"], "caller");
    assert_eq!(env["BAETYL_SERVICE_INSTANCE_NAME"], "caller");
    assert_eq!(env["BAETYL_MASTER_API_VERSION"], "v1");
    assert_eq!(env["BAETYL_SERVICE_MODE"], w.engine.mode());
    assert_eq!(env["BAETYL_HOST_OS"], "linux");
    assert!(env["BAETYL_MASTER_API_ADDRESS"].starts_with("unix:///"));

    let (status, body) = m
        .anonymous()
        .call("GET", "/v1/system/inspect", None)
        .await
        .expect("call");
    assert_eq!(
        (status, String::from_utf8_lossy(&body).trim()),
        (401, "account unauthorized")
    );
    let wrong = m
        .anonymous()
        .with_credentials("caller", "0123456789abcdef0123456789abcdef");
    assert_eq!(
        wrong
            .call("GET", "/v1/system/inspect", None)
            .await
            .expect("call")
            .0,
        401
    );
    let other = m.anonymous().with_credentials("nobody", &token);
    assert_eq!(
        other
            .call("GET", "/v1/system/inspect", None)
            .await
            .expect("call")
            .0,
        401
    );

    // The address handed to the service, with its token: inspect answers 200 with real figures.
    let addr = w.api_address_on_host(&env["BAETYL_MASTER_API_ADDRESS"]);
    let svc = baetyl_sdk::client::MasterClient::new(addr).with_credentials("caller", &token);
    let v = svc.inspect().await.expect("inspect with the service token");
    assert!(v["hardware"]["mem_stats"]["total"].as_u64().unwrap_or(0) > 0);
    assert!(v["hardware"]["cpu_stats"]["cores"].as_u64().unwrap_or(0) >= 1);
    let inst = &v["services"][0]["instances"][0];
    assert!(inst["mem_stats"]["rss"].as_u64().unwrap_or(0) > 0, "{inst}");
    assert!(inst[w.engine.kind()]["pid"].as_u64().is_some(), "{inst}");
    // The v1 header names and the x-baetyl-* ones both work.
    let (status, _) = {
        let c = baetyl_sdk::client::MasterClient::new(baetyl_sdk::client::Address::Unix(
            w.path().join("var/run/baetyl.sock"),
        ));
        c.with_credentials("caller", &token)
            .call("GET", "/v1/ports/available", None)
            .await
            .expect("call")
    };
    assert_eq!(status, 200);
    let port = svc.available_port().await.expect("port");
    assert!(port > 0);
    // A service reports its own stats and they show in inspect; reporting for another service is refused.
    svc.report("caller", "caller", &serde_json::json!({"messages": 42}))
        .await
        .expect("report");
    let i = m.instance("caller", "caller").await.expect("instance");
    assert_eq!(i["messages"], 42);
    let (status, _) = svc
        .call(
            "PUT",
            "/v1/services/other/instances/other/report",
            Some(b"{}".to_vec()),
        )
        .await
        .expect("call");
    assert_eq!(status, 403);
    // The socket is not world-accessible.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(w.path().join("var/run/baetyl.sock"))
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660);
}

async fn dynamic_instances_start_stop_and_get_no_token(w: Work) {
    w.app("services:\n  manager: {image: svc}\n  runtime: {image: svc, replica: 0}\n");
    let m = w.start_master();
    m.wait_instance("manager", "manager", "running", LONG, |v| {
        v["status"] == "running"
    })
    .await;
    let token =
        w.wait_env("manager", "manager", "BAETYL_SERVICE_TOKEN")["BAETYL_SERVICE_TOKEN"].clone();
    let c = m.anonymous().with_credentials("manager", &token);
    let mut extra = std::collections::BTreeMap::new();
    extra.insert(
        "BAETYL_SERVICE_INSTANCE_ADDRESS".to_string(),
        "127.0.0.1:50999".to_string(),
    );
    extra.insert("BAETYL_SERVICE_TOKEN".to_string(), "smuggled".to_string());
    c.start_instance("runtime", "runtime-1", &extra)
        .await
        .expect("dynamic start");
    let v = m
        .wait_instance("runtime", "runtime-1", "running", LONG, |v| {
            v["status"] == "running"
        })
        .await;
    assert_eq!(v["dynamic"], true);
    let pid = v[w.engine.kind()]["pid"].as_u64().expect("pid") as u32;
    let env = w.wait_env("runtime", "runtime-1", "BAETYL_SERVICE_NAME");
    assert!(
        !env.contains_key("BAETYL_SERVICE_TOKEN"),
        "a dynamic instance must not get a token: {env:?}"
    );
    assert_eq!(env["BAETYL_SERVICE_INSTANCE_ADDRESS"], "127.0.0.1:50999");
    assert_eq!(env["BAETYL_SERVICE_INSTANCE_NAME"], "runtime-1");
    // Starting it again restarts it (v1's behaviour): a new process, the same name.
    c.start_instance("runtime", "runtime-1", &Default::default())
        .await
        .expect("a second start restarts it");
    let kind = w.engine.kind();
    let v = m
        .wait_instance("runtime", "runtime-1", "restarted", LONG, |v| {
            v["status"] == "running" && v[kind]["pid"].as_u64().is_some_and(|p| p as u32 != pid)
        })
        .await;
    assert!(!alive(pid), "the first process is gone after the restart");
    let pid = v[kind]["pid"].as_u64().expect("pid") as u32;
    // An unknown service is a 400 that names it.
    let err = c
        .start_instance("ghost", "g1", &Default::default())
        .await
        .expect_err("unknown service");
    assert!(
        err.to_string().contains("400") && err.to_string().contains("ghost"),
        "{err}"
    );
    c.stop_instance("runtime", "runtime-1")
        .await
        .expect("dynamic stop");
    assert!(!alive(pid));
    assert!(m.instance("runtime", "runtime-1").await.is_none());
    let err = c
        .stop_instance("runtime", "runtime-1")
        .await
        .expect_err("stop again");
    assert!(err.to_string().contains("no such instance"), "{err}");
}

const THREE: &str = r#"
app_version: v1
services:
  a: {image: svc}
  b: {image: svc, environment: {VERSION: "1"}, volumes: ["data:/data"]}
  c: {image: svc, depends_on: [a]}
volumes:
  data: {path: var/db/baetyl/data}
"#;

fn ota_steps(w: &Work, trace: &str) -> Vec<String> {
    std::fs::read_to_string(w.path().join("var/db/baetyl/ota.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["trace"] == trace)
        .map(|v| v["step"].as_str().unwrap_or_default().to_string())
        .collect()
}

async fn update_restarts_only_the_changed_service(w: Work) {
    w.app(THREE);
    let m = w.start_master();
    let mut before = Vec::new();
    for s in ["a", "b", "c"] {
        before.push(m.running_pid(s, s).await);
    }
    w.app_file(
        "new/application.yml",
        &THREE
            .replace("app_version: v1", "app_version: v2")
            .replace("VERSION: \"1\"", "VERSION: \"2\""),
    );
    let c = m.client();
    c.update_app("new/application.yml", "t-keep")
        .await
        .expect("update accepted");
    // A second update while the first runs is refused with a clear answer.
    let err = c
        .update_app("new", "t-second")
        .await
        .expect_err("second update");
    assert!(
        err.to_string().contains("409") && err.to_string().contains("already in progress"),
        "{err}"
    );
    eventually(LONG, "the update to finish", || {
        ota_steps(&w, "t-keep").last().map(String::as_str) == Some("RESTARTED")
    });
    assert_eq!(
        ota_steps(&w, "t-keep"),
        ["RECEIVED", "UPDATING", "UPDATED", "RESTARTING", "RESTARTED"]
    );
    assert_eq!(
        m.pid_of("a", "a").await,
        Some(before[0]),
        "a is unchanged and keeps running"
    );
    assert_eq!(
        m.pid_of("c", "c").await,
        Some(before[2]),
        "c is unchanged and keeps running"
    );
    let b = m.running_pid("b", "b").await;
    assert_ne!(b, before[1]);
    assert!(!alive(before[1]));
    assert_eq!(w.env_of("b", "b")["BAETYL_SERVICE_NAME"], "b");
    let v = m.inspect().await;
    assert_eq!(v["software"]["conf_version"], "v2");
    assert_eq!(v["error"], "");
    let old = std::fs::read_to_string(w.path().join("var/db/baetyl/application.yml.old"))
        .expect(".old kept");
    assert!(old.contains("app_version: v1"));
}

async fn failed_update_rolls_back_to_the_previous_application(w: Work) {
    w.app(THREE);
    let m = w.start_master();
    let a = m.running_pid("a", "a").await;
    let b = m.running_pid("b", "b").await;
    let original =
        std::fs::read_to_string(w.path().join("var/db/baetyl/application.yml")).expect("app");
    // b's new version exits at once; new services d (exits at once) and d2 (fine) come with it.
    let broken = r#"
app_version: v2
services:
  a: {image: svc}
  b: {image: svc, environment: {VERSION: "2", EXIT_CODE: 1}, volumes: ["data:/data"]}
  c: {image: svc, depends_on: [a]}
  d: {image: svc, environment: {EXIT_CODE: 1}}
  d2: {image: svc}
volumes:
  data: {path: var/db/baetyl/data}
"#;
    w.app_file("bad/application.yml", broken);
    m.client()
        .update_app("bad", "t-bad")
        .await
        .expect("accepted");
    eventually(LONG, "the rollback", || {
        ota_steps(&w, "t-bad").last().map(String::as_str) == Some("FAILURE")
    });
    assert_eq!(
        ota_steps(&w, "t-bad"),
        [
            "RECEIVED",
            "UPDATING",
            "UPDATED",
            "RESTARTING",
            "ROLLINGBACK",
            "ROLLEDBACK",
            "FAILURE"
        ]
    );
    let v = m.inspect().await;
    let err = v["error"].as_str().unwrap_or_default().to_string();
    assert!(
        err.contains("t-bad") && err.contains("rolled back") && err.contains("did not stay up"),
        "{err}"
    );
    assert_eq!(v["software"]["conf_version"], "v1");
    assert_eq!(
        std::fs::read_to_string(w.path().join("var/db/baetyl/application.yml")).expect("app"),
        original
    );
    assert_eq!(m.pid_of("a", "a").await, Some(a), "a was never touched");
    let b2 = m
        .wait_instance("b", "b", "running again", LONG, |v| {
            v["status"] == "running"
        })
        .await;
    assert_ne!(b2[w.engine.kind()]["pid"].as_u64(), Some(u64::from(b)));
    eventually(LONG, "b's old env", || !w.env_of("b", "b").is_empty());
    let names: Vec<String> = v["services"]
        .as_array()
        .expect("services")
        .iter()
        .map(|s| s["name"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(names, ["a", "b", "c"], "d and d2 were removed again");

    // An invalid file is refused before anything changes, naming file and key.
    w.app_file(
        "worse/application.yml",
        "services:\n  a: {image: svc, replicas: 2}\n",
    );
    m.client()
        .update_app("worse", "t-worse")
        .await
        .expect("accepted");
    eventually(LONG, "the refusal", || {
        ota_steps(&w, "t-worse").last().map(String::as_str) == Some("FAILURE")
    });
    assert_eq!(
        ota_steps(&w, "t-worse"),
        ["RECEIVED", "UPDATING", "FAILURE"]
    );
    // inspect's error follows the OTA log's last step.
    let mut e = String::new();
    for _ in 0..100 {
        e = m.inspect().await["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if e.contains("worse/application.yml") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        e.contains("worse/application.yml") && e.contains("services.a") && e.contains("replicas"),
        "{e}"
    );
    assert_eq!(m.pid_of("a", "a").await, Some(a));
}

async fn a_second_master_after_kill9_leaves_one_copy_of_each_instance(w: Work) {
    w.app("services:\n  a: {image: svc, replica: 2}\n  b: {image: svc}\n");
    let mut first = w.start_master();
    let old: Vec<u32> = [("a", "a"), ("a", "a.i1"), ("b", "b")]
        .iter()
        .map(|(s, i)| futures_pid(&first, s, i))
        .collect();
    // Only one master per work dir.
    let out = std::process::Command::new(baetyl_bin())
        .args(["master", "-w"])
        .arg(w.path())
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("another master is already running"));

    first.kill9();
    for p in &old {
        assert!(
            alive(*p),
            "services outlive a master killed with -9 (that is what the next master must clean)"
        );
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
    // Once the new instances have recorded their start, count live processes per instance.
    let live = || {
        let mut live_by_instance = std::collections::BTreeMap::new();
        for (inst, pid) in w.starts() {
            if pid.alive() {
                *live_by_instance.entry(inst).or_insert(0) += 1;
            }
        }
        live_by_instance
    };
    let live_by_instance = eventually(LONG, "the new instances to record their start", || {
        let l = live();
        ["a", "a.i1", "b"]
            .iter()
            .all(|i| l.contains_key(*i))
            .then_some(l)
    });
    assert_eq!(live_by_instance.get("a"), Some(&1));
    assert_eq!(live_by_instance.get("a.i1"), Some(&1));
    assert_eq!(live_by_instance.get("b"), Some(&1));
    if let Some(ctd) = w.containerd() {
        let containers = ctd.ctr_ok(&["containers", "ls", "-q"]).expect("ctr");
        let mut ids: Vec<&str> = containers.lines().collect();
        ids.sort();
        assert_eq!(ids, ["a.a", "a.a.i1", "b.b"], "one container per instance");
    }
}

async fn ulimits_nofile_reach_the_service(w: Work) {
    w.app("services:\n  capped: {image: svc, ulimits: {nofile: {soft: 100, hard: 200}}}\n  default: {image: svc}\n");
    let m = w.start_master();
    let limits = |s: &str| {
        let file = w.instance_dir(s, s).join("nofile");
        eventually(LONG, &format!("{s} to write its limits"), || {
            std::fs::read_to_string(&file)
                .ok()
                .filter(|t| t.ends_with('\n'))
        })
    };
    assert_eq!(limits("capped").trim(), "100 200");
    // Without `ulimits`: the master's hard limit, the soft one at most 65536, on either engine.
    let master_hard: u64 = std::fs::read_to_string(format!("/proc/{}/limits", m.pid()))
        .expect("limits")
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .expect("the master's hard limit");
    assert_eq!(
        limits("default").trim(),
        format!("{} {master_hard}", master_hard.min(65536))
    );
}

fn futures_pid(m: &Master, s: &str, i: &str) -> u32 {
    let rt = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| rt.block_on(m.running_pid(s, i)))
}
