//! Master updates (`PUT /v1/system/update {"type":"MST"}`) end to end, in v1's layout: the work dir holds the
//! master as `bin/baetyl` (a copy of the workspace's binary) and the master runs as v1's unit runs it,
//! `<work dir>/bin/baetyl start`. The new binaries: the same build with a marker appended (an ELF runs with
//! trailing bytes; the marker tells the two files apart), a script whose `check` fails, and a script that
//! passes `check` but exits at once as a master.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use baetyl_e2e::*;
use baetyl_master::ota::steps_of;
use baetyl_testkit::eventually;

/// Up to two master starts on a loaded 2-core machine, with the health windows.
const UPDATE: Duration = Duration::from_secs(240);
const MARKER: &[u8] = b"\nbaetyl-mst-test-new-binary\n";

/// A v1 work dir: conf.yml, one long-running service, and `bin/baetyl`.
fn v1_work() -> Work {
    let w = Work::new();
    w.write(
        "etc/baetyl/conf.yml",
        "grace: 2s\nlogger: {level: debug}\nupdate: {health: 1500ms, master: {max_size: 2G, deadline: 120s}}\n",
    );
    w.app("app_version: v1\nservices:\n  svc: {image: svc}\n");
    let bin = w.path().join("bin/baetyl");
    std::fs::create_dir_all(bin.parent().expect("bin dir")).expect("mkdir bin");
    std::fs::copy(baetyl_bin(), &bin).expect("copy the master binary");
    w
}

/// Writes a new master candidate under the work dir (mode 0755) and answers its relative path.
fn candidate(w: &Work, name: &str, bytes: &[u8]) -> String {
    let rel = format!("var/db/baetyl/mst/{name}");
    let p = w.path().join(&rel);
    std::fs::create_dir_all(p.parent().expect("dir")).expect("mkdir");
    std::fs::write(&p, bytes).expect("write candidate");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    rel
}

fn start_v1(w: &Work) -> Master {
    let mut cmd = Command::new(w.path().join("bin/baetyl"));
    cmd.arg("start");
    Master::spawn(cmd, w.path(), &[])
}

async fn update(m: &Master, body: serde_json::Value) -> (u16, String) {
    let (status, text) = m
        .client()
        .call(
            "PUT",
            "/v1/system/update",
            Some(body.to_string().into_bytes()),
        )
        .await
        .expect("call");
    (status, String::from_utf8_lossy(&text).into_owned())
}

/// Asks for the master update `body` (accepted: 200) and answers its steps once it ended.
async fn update_steps(w: &Work, m: &Master, body: serde_json::Value) -> Vec<String> {
    let trace = body["trace"].as_str().expect("trace").to_string();
    let (status, text) = update(m, body).await;
    assert_eq!(status, 200, "{text}");
    wait_steps(w, m, &trace)
}

fn ota(w: &Work) -> PathBuf {
    w.path().join("var/db/baetyl/ota.log")
}

/// Waits for the update `trace` to end (RESTARTED or FAILURE) and answers its steps.
fn wait_steps(w: &Work, m: &Master, trace: &str) -> Vec<String> {
    eventually(UPDATE, &format!("master update {trace} to end"), || {
        let steps = steps_of(&ota(w), trace);
        matches!(
            steps.last().map(String::as_str),
            Some("RESTARTED" | "FAILURE")
        )
        .then_some(steps)
    });
    let steps = steps_of(&ota(w), trace);
    assert!(!steps.is_empty(), "{}", m.log_text());
    steps
}

/// Waits until the master (restarted by exec) serves its API again.
async fn wait_api(m: &Master) {
    let token = m.workdir.join("var/run/baetyl/operator.token");
    let up = baetyl_testkit::wait::poll_async(UPDATE, || async {
        let token = std::fs::read_to_string(&token).map_err(|e| e.to_string())?;
        m.anonymous()
            .with_credentials("baetyl-operator", token.trim())
            .inspect()
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await;
    if let Err(last) = up {
        panic!("the master's API is not back: {last:?}\n{}", m.log_text());
    }
}

async fn running_pid(m: &Master) -> u32 {
    wait_api(m).await;
    m.wait_instance("svc", "svc", "running", UPDATE, |v| {
        v["status"] == "running"
    })
    .await["process"]["pid"]
        .as_u64()
        .expect("pid") as u32
}

fn tail_is(path: &Path, suffix: &[u8]) -> bool {
    std::fs::read(path).is_ok_and(|b| b.ends_with(suffix))
}

fn same_size(a: &Path, b: &Path) -> bool {
    let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).ok();
    len(a).is_some() && len(a) == len(b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_master_is_tried_installed_and_confirmed() {
    let w = v1_work();
    let m = start_v1(&w);
    let before = running_pid(&m).await;
    let mut new = std::fs::read(baetyl_bin()).expect("read the binary");
    new.extend_from_slice(MARKER);
    let path = candidate(&w, "baetyl", &new);
    let steps = update_steps(
        &w,
        &m,
        serde_json::json!({"type": "MST", "path": path, "trace": "mst-ok"}),
    )
    .await;
    assert_eq!(
        steps,
        ["RECEIVED", "UPDATING", "RESTARTING", "UPDATED", "RESTARTED"],
        "{}",
        m.log_text()
    );
    let bin = w.path().join("bin");
    assert!(
        tail_is(&bin.join("baetyl"), MARKER),
        "bin/baetyl is the new binary"
    );
    assert!(
        same_size(&bin.join("baetyl.old"), baetyl_bin())
            && !tail_is(&bin.join("baetyl.old"), MARKER),
        "bin/baetyl.old is the previous binary"
    );
    assert!(!bin.join("baetyl.new").exists());
    assert!(!w.path().join("var/db/baetyl/mst.json").exists());
    // The same process (exec: the pid a supervisor watches stays), now running the new file.
    let exe = std::fs::read_link(format!("/proc/{}/exe", m.pid())).expect("exe");
    assert_eq!(exe, bin.join("baetyl").canonicalize().expect("canonical"));
    let after = running_pid(&m).await;
    assert_ne!(before, after, "the service runs again under the new master");
    let i = m.inspect().await;
    assert_eq!(i["error"], "", "{i}");
    // Started three times: under the old master, the trial, the installed new master.
    let starts = w.starts().iter().filter(|(n, _)| n == "svc").count();
    assert_eq!(starts, 3, "{:?}", w.starts());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_that_fails_its_check_changes_nothing() {
    let w = v1_work();
    let m = start_v1(&w);
    let before = running_pid(&m).await;
    let script = "#!/bin/sh\necho 'config invalid: unknown mode' >&2\nexit 1\n";
    let path = candidate(&w, "broken", script.as_bytes());
    let steps = update_steps(
        &w,
        &m,
        serde_json::json!({"type": "MST", "path": path, "trace": "mst-check"}),
    )
    .await;
    assert_eq!(
        steps,
        ["RECEIVED", "UPDATING", "FAILURE"],
        "{}",
        m.log_text()
    );
    let i = m.inspect().await;
    let error = i["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("failed its check") && error.contains("config invalid"),
        "{error}"
    );
    // Never stopped: the same instance, the same binary, nothing left over.
    assert_eq!(running_pid(&m).await, before);
    let bin = w.path().join("bin");
    assert!(same_size(&bin.join("baetyl"), baetyl_bin()));
    assert!(!bin.join("baetyl.new").exists() && !bin.join("baetyl.old").exists());

    // Refused at once, before anything runs: a source outside the work dir, one over the size limit.
    let (status, text) = update(
        &m,
        serde_json::json!({"type": "MST", "path": "/etc/passwd"}),
    )
    .await;
    assert!(
        status == 400 && text.contains("under the work dir"),
        "{status} {text}"
    );
    assert!(!text.contains("root:"), "no content is echoed: {text}");
    w.write(
        "etc/baetyl/conf.yml",
        "grace: 2s\nupdate: {master: {max_size: 1k}}\n",
    );
    drop(m);
    let m = start_v1(&w);
    let big = candidate(&w, "big", &[b'#'; 4096]);
    let (status, text) = update(&m, serde_json::json!({"type": "MST", "file": big})).await;
    assert!(
        status == 400 && text.contains("update.master.max_size"),
        "{status} {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_that_exits_at_start_is_rolled_back() {
    let w = v1_work();
    let m = start_v1(&w);
    let before = running_pid(&m).await;
    // Passes v1's check, then dies as a master.
    let script = "#!/bin/sh\nif [ \"$1\" = check ]; then echo 'OK!'; exit 0; fi\necho 'new master: cannot start' >&2\nexit 3\n";
    let path = candidate(&w, "crashes", script.as_bytes());
    // v1 agents older than 0.1.4 name the binary `file`.
    let steps = update_steps(
        &w,
        &m,
        serde_json::json!({"type": "MST", "file": path, "trace": "mst-crash"}),
    )
    .await;
    assert_eq!(
        steps,
        [
            "RECEIVED",
            "UPDATING",
            "RESTARTING",
            "ROLLINGBACK",
            "ROLLEDBACK",
            "FAILURE"
        ],
        "{}",
        m.log_text()
    );
    // The old master runs again (same pid, same file) and the application came back.
    let after = running_pid(&m).await;
    assert_ne!(before, after);
    let exe = std::fs::read_link(format!("/proc/{}/exe", m.pid())).expect("exe");
    let bin = w.path().join("bin");
    assert_eq!(exe, bin.join("baetyl").canonicalize().expect("canonical"));
    assert!(same_size(&bin.join("baetyl"), baetyl_bin()));
    assert!(!bin.join("baetyl.new").exists() && !bin.join("baetyl.old").exists());
    wait_api(&m).await;
    let i = m.inspect().await;
    let error = i["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("mst-crash") && error.contains("exited"),
        "{error}"
    );
    assert!(!w.path().join("var/db/baetyl/mst.json").exists());
}
