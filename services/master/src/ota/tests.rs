//! Application updates on the fake engine under tokio's paused clock: unchanged services keep their very
//! instance objects, a changed service that fails within `update.health` rolls back to exactly the
//! previous application (file and services), one update at a time, invalid updates change nothing.

use std::sync::Arc;

use super::{Updater, app_file, steps_of};
use crate::engine::fake::{Behaviour, What};
use crate::error::MasterError;
use crate::test_rig::{Rig, app, ms};

const THREE: &str = r#"
app_version: v1
services:
  a: {image: svc}
  b: {image: svc, environment: {VERSION: "1"}, volumes: ["data:/data"]}
  c: {image: svc, depends_on: [a]}
volumes:
  data: {path: var/db/baetyl/data}
"#;

/// A master's work dir running THREE from its application file, with an updater.
async fn three() -> (Rig, Arc<Updater>) {
    let r = Rig::new("update: {health: 5s}\n");
    write(&r, "var/db/baetyl/application.yml", THREE);
    let updater = updater_of(&r);
    updater.set_running_text(Some(THREE.as_bytes().to_vec()));
    r.run(THREE).await;
    (r, updater)
}

/// An updater of the rig's work dir, with the default OTA log.
fn updater_of(r: &Rig) -> Arc<Updater> {
    Arc::new(Updater::new(
        r.sup.clone(),
        app_file(r.dir.path()),
        r.dir.path().join("var/db/baetyl/ota.log"),
    ))
}

fn write(r: &Rig, rel: &str, text: &str) {
    let path = r.dir.path().join(rel);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
    std::fs::write(path, text).expect("write");
}

fn read(r: &Rig, rel: &str) -> String {
    std::fs::read_to_string(r.dir.path().join(rel)).unwrap_or_default()
}

fn steps(r: &Rig, trace: &str) -> Vec<String> {
    steps_of(&r.dir.path().join("var/db/baetyl/ota.log"), trace)
}

fn ids(r: &Rig) -> Vec<Option<u64>> {
    ["a", "b", "c"]
        .iter()
        .map(|s| r.fake.live_id(s, s))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn an_update_restarts_only_what_changed_and_one_runs_at_a_time() {
    let (r, updater) = three().await;
    let before = ids(&r);
    write(
        &r,
        "new/application.yml",
        &THREE
            .replace("app_version: v1", "app_version: v2")
            .replace("VERSION: \"1\"", "VERSION: \"2\""),
    );
    let began = tokio::time::Instant::now();
    updater.submit("new", "t-keep").expect("accepted");
    let second = updater.submit("new", "t-second");
    assert!(
        matches!(&second, Err(e @ MasterError::UpdateInProgress) if e.status() == 409),
        "{second:?}"
    );
    updater.wait_idle().await;
    assert!(began.elapsed() >= ms(5000), "the health window was waited");
    assert_eq!(
        steps(&r, "t-keep"),
        ["RECEIVED", "UPDATING", "UPDATED", "RESTARTING", "RESTARTED"]
    );
    assert!(steps(&r, "t-second").is_empty());
    let after = ids(&r);
    assert_eq!(
        (after[0], after[2]),
        (before[0], before[2]),
        "a and c are unchanged: the same instance objects run"
    );
    assert_eq!((r.fake.starts("a", "a"), r.fake.starts("c", "c")), (1, 1));
    assert_ne!(after[1], before[1]);
    assert_eq!(r.fake.spec_of("b", "b").expect("b").env["VERSION"], "2");
    assert_eq!(r.sup.app().app_version, "v2");
    assert_eq!(r.sup.error(), "");
    assert_eq!(read(&r, "var/db/baetyl/application.yml.old"), THREE);
    assert!(read(&r, "var/db/baetyl/application.yml").contains("app_version: v2"));
}

#[tokio::test(start_paused = true)]
async fn a_changed_service_failing_within_the_health_window_rolls_back_exactly() {
    let (r, updater) = three().await;
    let before = ids(&r);
    let old_app = r.sup.app();
    r.fake.behave(
        "bad",
        Behaviour::Exit {
            code: 1,
            after: ms(100),
        },
    );
    // b's new version exits soon after its start; new services d (fails too) and d2 (fine) come with it.
    let broken = r#"
app_version: v2
services:
  a: {image: svc}
  b: {image: bad, environment: {VERSION: "2"}, volumes: ["data:/data"]}
  c: {image: svc, depends_on: [a]}
  d: {image: bad}
  d2: {image: svc}
volumes:
  data: {path: var/db/baetyl/data}
"#;
    write(&r, "bad/application.yml", broken);
    updater.submit("bad", "t-bad").expect("accepted");
    updater.wait_idle().await;
    assert_eq!(
        steps(&r, "t-bad"),
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
    // Exactly the previous application: the file byte for byte, the services and their specs.
    assert_eq!(read(&r, "var/db/baetyl/application.yml"), THREE);
    assert_eq!(r.sup.app(), old_app);
    let running: Vec<String> = r
        .sup
        .inspect_services()
        .as_array()
        .expect("services")
        .iter()
        .map(|s| s["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(running, ["a", "b", "c"], "d and d2 are gone again");
    assert_eq!(r.fake.live(), ["a/a", "b/b", "c/c"]);
    let after = ids(&r);
    assert_eq!(
        (after[0], after[2]),
        (before[0], before[2]),
        "a and c untouched"
    );
    let b = r.fake.spec_of("b", "b").expect("b");
    assert_eq!(
        (b.spec.image.as_str(), b.env["VERSION"].as_str()),
        ("svc", "1")
    );
    // b ran the original, then the bad version three times in the 5 s window (at 0, 1.1 s and 3.2 s: it
    // ends after 100 ms and restarts after 1 s, then 2 s), then the original again.
    assert_eq!(r.fake.starts("b", "b"), 5);
    let e = r.sup.error();
    assert!(
        e.contains("t-bad") && e.contains("rolled back") && e.contains("did not stay up"),
        "{e}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_invalid_update_is_refused_before_anything_changes() {
    let (r, updater) = three().await;
    let events = r.fake.events().len();
    write(
        &r,
        "worse/application.yml",
        "services:\n  a: {image: svc, replicas: 2}\n",
    );
    updater.submit("worse", "t-worse").expect("accepted");
    updater.wait_idle().await;
    assert_eq!(steps(&r, "t-worse"), ["RECEIVED", "UPDATING", "FAILURE"]);
    let e = r.sup.error();
    assert!(
        e.contains("worse/application.yml") && e.contains("services.a") && e.contains("replicas"),
        "{e}"
    );
    // An image the engine cannot find is refused the same way.
    r.fake.unresolvable("ghost");
    write(
        &r,
        "ghost/application.yml",
        &THREE.replace("image: svc, environment", "image: ghost, environment"),
    );
    updater.submit("ghost", "t-ghost").expect("accepted");
    updater.wait_idle().await;
    assert_eq!(steps(&r, "t-ghost"), ["RECEIVED", "UPDATING", "FAILURE"]);
    assert!(r.sup.error().contains("image `ghost`"), "{}", r.sup.error());
    assert_eq!(
        r.fake.events().len(),
        events,
        "nothing was started or stopped"
    );
    assert_eq!(read(&r, "var/db/baetyl/application.yml"), THREE);
    assert_eq!(r.sup.app(), app(THREE));
    assert!(
        r.fake.events().iter().all(|e| e.what != What::Terminated),
        "nothing stopped"
    );
}

#[tokio::test(start_paused = true)]
async fn the_old_copy_and_the_rollback_write_new_files_never_in_place() {
    let (r, updater) = three().await;
    let dir = r.dir.path().join("var/db/baetyl");
    // A previous update's .old, and a hard link to it: a rewrite in place would show through the link.
    write(&r, "var/db/baetyl/application.yml.old", "app_version: v0\n");
    std::fs::hard_link(dir.join("application.yml.old"), dir.join("old-v0")).expect("link");
    r.fake.behave(
        "bad",
        Behaviour::Exit {
            code: 1,
            after: ms(100),
        },
    );
    let broken = THREE
        .replace("app_version: v1", "app_version: v2")
        .replace("b: {image: svc, environment", "b: {image: bad, environment");
    write(&r, "bad/application.yml", &broken);
    updater.submit("bad", "t-bad").expect("accepted");
    // While the broken version runs, keep a link to the installed file: the rollback must not rewrite it.
    r.fake
        .until("the broken b", |f| {
            f.spec_of("b", "b").is_some_and(|s| s.spec.image == "bad")
        })
        .await;
    std::fs::hard_link(dir.join("application.yml"), dir.join("installed-v2")).expect("link");
    updater.wait_idle().await;
    assert_eq!(
        steps(&r, "t-bad").last().map(String::as_str),
        Some("FAILURE")
    );
    assert_eq!(read(&r, "var/db/baetyl/application.yml"), THREE);
    assert_eq!(read(&r, "var/db/baetyl/application.yml.old"), THREE);
    assert_eq!(read(&r, "var/db/baetyl/old-v0"), "app_version: v0\n");
    assert_eq!(read(&r, "var/db/baetyl/installed-v2"), broken);
    let leftovers: Vec<String> = std::fs::read_dir(&dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tmp") || n.ends_with(".new"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test(start_paused = true)]
async fn the_ota_log_rotates_by_size_and_keeps_its_backups() {
    let r = Rig::new("otalog: {max_size: 1k, backups: 2}\nupdate: {health: 1s}\n");
    let cfg = r.sup.config().otalog.clone();
    let log = r.dir.path().join(&cfg.path);
    let updater = updater_of(&r);
    r.run(THREE).await;
    write(
        &r,
        "worse/application.yml",
        "services:\n  a: {image: svc, replicas: 2}\n",
    );
    for n in 0..20 {
        updater
            .submit("worse", &format!("t-{n}"))
            .expect("accepted");
        updater.wait_idle().await;
    }
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let numbered = |n: u32| std::path::PathBuf::from(format!("{}.{n}", log.display()));
    assert!(size(&log) <= 1024, "{}", size(&log));
    assert!(size(&numbered(1)) > 0 && size(&numbered(2)) > 0);
    assert!(!numbered(3).exists(), "only 2 backups are kept");
    assert_eq!(steps(&r, "t-19"), ["RECEIVED", "UPDATING", "FAILURE"]);
    // An update whose lines went into a backup is still found whole.
    let in_backup = (0..20)
        .map(|n| format!("t-{n}"))
        .find(|t| {
            std::fs::read_to_string(numbered(1))
                .unwrap_or_default()
                .contains(&format!("\"{t}\""))
        })
        .expect("a trace in ota.log.1");
    assert_eq!(steps(&r, &in_backup), ["RECEIVED", "UPDATING", "FAILURE"]);
}

/// The OTA log's lines for `trace`, whole, and inspect's error: what an update failure tells the world.
fn told(r: &Rig, trace: &str) -> String {
    let log =
        std::fs::read_to_string(r.dir.path().join("var/db/baetyl/ota.log")).unwrap_or_default();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&format!("\"{trace}\"")))
        .collect();
    format!("{}\n{}", lines.join("\n"), r.sup.error())
}

#[tokio::test(start_paused = true)]
async fn update_sources_are_regular_files_under_the_work_dir() {
    let (r, updater) = three().await;
    let elsewhere = tempfile::tempdir().expect("dir");
    let secret = elsewhere.path().join("id_ed25519");
    std::fs::write(&secret, "SECRET-KEY-MATERIAL\nservices: SECRET-TOO\n").expect("write");
    std::fs::create_dir(elsewhere.path().join("app")).expect("dir");
    std::fs::write(elsewhere.path().join("app/application.yml"), THREE).expect("write");
    let work = r.dir.path();
    std::os::unix::fs::symlink(&secret, work.join("key-link")).expect("symlink");
    std::os::unix::fs::symlink(elsewhere.path().join("app"), work.join("dir-link"))
        .expect("symlink");
    nix::unistd::mkfifo(
        &work.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .expect("fifo");
    std::fs::create_dir(work.join("sub")).expect("dir");
    let cases = [
        (secret.display().to_string(), "under the work dir"),
        ("../../etc/shadow".to_string(), "under the work dir"),
        ("sub/../../x".to_string(), "under the work dir"),
        ("key-link".to_string(), "symbolic link"),
        ("dir-link/application.yml".to_string(), "under the work dir"),
        ("dir-link".to_string(), "symbolic link"),
        ("fifo".to_string(), "FIFO"),
        ("sub".to_string(), "application.yml"),
    ];
    for (n, (path, says)) in cases.iter().enumerate() {
        let trace = format!("t-{n}");
        let e = updater.submit(path, &trace).expect_err(path);
        assert!(
            e.status() == 400 && e.to_string().contains(says),
            "{path}: {e}"
        );
        updater.wait_idle().await;
        assert_eq!(steps(&r, &trace), ["RECEIVED", "FAILURE"], "{path}");
        let t = told(&r, &trace);
        assert!(!t.contains("SECRET"), "{path}: {t}");
    }
    assert_eq!(read(&r, "var/db/baetyl/application.yml"), THREE);
    assert_eq!(r.sup.app(), app(THREE));
    // An absolute path inside the work dir is fine.
    write(&r, "new/application.yml", THREE);
    let abs = work.join("new/application.yml").display().to_string();
    updater.submit(&abs, "t-abs").expect("accepted");
    updater.wait_idle().await;
    assert_eq!(
        steps(&r, "t-abs").last().map(String::as_str),
        Some("RESTARTED")
    );
}

#[tokio::test(start_paused = true)]
async fn an_update_within_a_staging_area_comes_from_there_alone() {
    let (r, updater) = three().await;
    let work = r.dir.path();
    let stage = work.join("var/db/stage");
    let next = THREE.replace("app_version: v1", "app_version: v2");
    write(&r, "var/db/stage/r2/application.yml", &next);
    write(&r, "var/db/other/application.yml", &next);
    // A way out of the staging area planted inside it: the file's real directory counts.
    std::os::unix::fs::symlink(work.join("var/db/other"), stage.join("out")).expect("symlink");
    let within = [stage.clone()];
    for (n, path) in [
        "var/db/other/application.yml",
        "var/db/stage/out/application.yml",
    ]
    .iter()
    .enumerate()
    {
        let trace = format!("t-out-{n}");
        let e = updater
            .submit_within(path, &trace, &within)
            .expect_err(path);
        assert!(
            matches!(e, MasterError::UpdateSourceNotStaged { .. }) && e.status() == 400,
            "{path}: {e}"
        );
        updater.wait_idle().await;
        assert_eq!(steps(&r, &trace), ["RECEIVED", "FAILURE"], "{path}");
    }
    updater
        .submit_within("var/db/stage/r2", "t-in", &within)
        .expect("accepted");
    updater.wait_idle().await;
    let records = updater.records("t-in");
    let steps_seen: Vec<&str> = records.iter().filter_map(|v| v["step"].as_str()).collect();
    assert_eq!(steps_seen.last(), Some(&"RESTARTED"), "{records:?}");
    assert_eq!(steps_seen, steps(&r, "t-in"));
    assert_eq!(updater.running_text().as_deref(), Some(next.as_bytes()));
}

#[tokio::test(start_paused = true)]
async fn a_device_or_an_oversized_file_is_refused_before_it_is_read() {
    let r = Rig::new("update: {max_size: 4k}\n");
    let updater = updater_of(&r);
    let work = r.dir.path();
    // /dev/zero under another name: reading it whole would never end.
    let zero = nix::sys::stat::makedev(1, 5);
    nix::sys::stat::mknod(
        &work.join("zero"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        zero,
    )
    .expect("mknod (needs root)");
    let e = updater.submit("zero", "t-zero").expect_err("device");
    assert!(e.to_string().contains("character device"), "{e}");
    write(
        &r,
        "big.yml",
        &format!("app_version: v9\n#{}\n", "x".repeat(8192)),
    );
    let e = updater.submit("big.yml", "t-big").expect_err("big");
    assert!(
        e.to_string().contains("update.max_size") && e.to_string().contains("4k"),
        "{e}"
    );
    updater.wait_idle().await;
    assert_eq!(steps(&r, "t-big"), ["RECEIVED", "FAILURE"]);
}

#[tokio::test(start_paused = true)]
async fn errors_about_an_update_source_never_quote_its_content() {
    let (r, updater) = three().await;
    let token = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";
    write(&r, "var/run/baetyl/operator.token", token);
    write(
        &r,
        "key.pem",
        "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n",
    );
    write(&r, "values.yml", "services: \"MIIEsecret\\\"quoted\"\n");
    write(
        &r,
        "variant.yml",
        "services:\n  a: {image: x, restart: {policy: MIIEvariant}}\n",
    );
    write(
        &r,
        "hub.yml",
        "listen: [tcp://0.0.0.0:1883]\nprincipals: [{password: MIIEpass}]\n",
    );
    for (n, (path, secret, names)) in [
        ("var/run/baetyl/operator.token", token, "line 1 column 1"),
        ("key.pem", "MIIE", "line 1"),
        ("values.yml", "MIIE", "key `services`"),
        ("variant.yml", "MIIE", "services.a.restart.policy"),
        ("hub.yml", "MIIE", "unknown field `listen`"),
    ]
    .into_iter()
    .enumerate()
    {
        let trace = format!("t-{n}");
        updater.submit(path, &trace).expect("accepted");
        updater.wait_idle().await;
        assert_eq!(
            steps(&r, &trace),
            ["RECEIVED", "UPDATING", "FAILURE"],
            "{path}"
        );
        let t = told(&r, &trace);
        assert!(!t.contains(secret), "{path} leaks: {t}");
        assert!(t.contains(path) && t.contains(names), "{path}: {t}");
    }
    // Keys are named, and what the schema expects is still said.
    let t = told(&r, "t-3");
    assert!(
        t.contains("expected one of `always`, `on-failure`, `no`"),
        "{t}"
    );
}

#[tokio::test(start_paused = true)]
async fn what_is_validated_is_what_is_installed() {
    let (r, updater) = three().await;
    let v2 = THREE.replace("app_version: v1", "app_version: v2");
    write(&r, "new/application.yml", &v2);
    // Validation takes a while (an image being prepared); meanwhile the file is replaced.
    r.fake.slow_prepare("svc", ms(500));
    updater.submit("new", "t-swap").expect("accepted");
    r.fake
        .until("validation to begin", |f| {
            f.prepared().contains(&"svc".to_string())
        })
        .await;
    write(
        &r,
        "new/application.yml",
        "services:\n  evil: {image: svc}\n",
    );
    updater.wait_idle().await;
    assert_eq!(
        steps(&r, "t-swap").last().map(String::as_str),
        Some("RESTARTED")
    );
    assert_eq!(r.sup.app().app_version, "v2");
    assert_eq!(read(&r, "var/db/baetyl/application.yml"), v2);
}

#[tokio::test(start_paused = true)]
async fn volumes_outside_the_work_dir_need_an_allowed_root() {
    let (r, updater) = three().await;
    let outside = "app_version: v2\nservices:\n  a: {image: svc}\n  b: {image: svc, volumes: [\"/srv/media:/media\"]}\n  c: {image: svc, depends_on: [a], volumes: [\"usb:/usb\"]}\nvolumes:\n  usb: {path: /media/usb}\n";
    write(&r, "out/application.yml", outside);
    updater.submit("out", "t-out").expect("accepted");
    updater.wait_idle().await;
    assert_eq!(steps(&r, "t-out"), ["RECEIVED", "UPDATING", "FAILURE"]);
    let e = r.sup.error();
    assert!(
        e.contains("/srv/media") && e.contains("volumes.allowed_roots"),
        "{e}"
    );
    assert_eq!(r.sup.app(), app(THREE));
    // Listed roots make the same application acceptable.
    let r = Rig::new("update: {health: 1s}\nvolumes: {allowed_roots: [/srv, /media/usb]}\n");
    let updater = updater_of(&r);
    r.run(THREE).await;
    write(&r, "out/application.yml", outside);
    updater.submit("out", "t-ok").expect("accepted");
    updater.wait_idle().await;
    assert_eq!(
        steps(&r, "t-ok").last().map(String::as_str),
        Some("RESTARTED")
    );
    let b = r.fake.spec_of("b", "b").expect("b");
    assert_eq!(b.mounts[0].host, std::path::PathBuf::from("/srv/media"));
}

#[tokio::test(start_paused = true)]
async fn an_application_whose_volumes_leave_the_work_dir_does_not_start_those_services() {
    let r = Rig::new("");
    r.run("services:\n  in: {image: svc, volumes: [\"./data:/data\"]}\n  out: {image: svc, volumes: [\"/etc:/host-etc\"]}\n")
        .await;
    assert_eq!(r.fake.keys_of(&What::Started), ["in/in"]);
    let e = r.sup.error();
    assert!(e.contains("`out`") && e.contains("/etc"), "{e}");
}
