//! Cloud-only management end to end: a `baetyl cloud` process, a device that is a real `baetyl master` whose
//! application is the agent alone, and `baetyl ctl`. The device registers with the fleet key, runs v1 (hub,
//! timer, SQL function) with per-device hub passwords, keeps unchanged services' pids through v2, rolls a broken
//! v3 back, refuses a bad signature and a corrupt blob, serves logs and restarts, keeps working while the cloud
//! is down and catches up, gets new secrets, and is cut off when revoked. Against SQLite and PostgreSQL.

mod cloudkit;

use std::time::Duration;

use cloudkit::*;

#[test]
fn fleet_lifecycle_sqlite() {
    let root = test_dir("baetyl-cloud-e2e-");
    lifecycle(root.path(), None);
}

#[test]
fn fleet_lifecycle_postgres() {
    let pg = baetyl_cloud::testing::Postgres::start();
    let root = test_dir("baetyl-cloud-e2e-");
    lifecycle(root.path(), Some(&pg.url));
}

fn lifecycle(root: &std::path::Path, db: Option<&str>) {
    let mut cloud = CloudProc::start(&root.join("cloud"), db);
    let mut device = Device::new(&root.join("device"), "dev1", &cloud);
    device.start();

    // Registration with the fleet key; the device reports what it runs.
    let v = until(&cloud, &device, "the device to register and report", |v| {
        v["online"] == true && v["app_version"] == "bootstrap"
    });
    assert_eq!(v["state"], "active");
    let agent_pid = device.pid("agent").expect("the agent runs");

    // v1: hub + timer + function manager + SQL runtime, hub passwords generated for this device.
    let hub_port = free_port();
    push(
        &cloud,
        root,
        "v1",
        hub_port,
        "1s",
        "select id where id % 2 = 0",
    );
    let v = deploy_and_wait(&cloud, &device, "v1", "RESTARTED");
    assert_eq!(v["update_state"], "RESTARTED");
    until(&cloud, &device, "v1 to show as running", |v| {
        v["app_version"] == "v1"
    });
    let secrets = cloud.ctl_json(&["secrets", "dev1"]);
    let operator = secrets["hub-operator"]
        .as_str()
        .expect("a generated hub password")
        .to_string();
    assert_eq!(operator.len(), 32);
    assert!(
        mqtt_publish(hub_port, "operator", &operator),
        "the per-device password opens the hub"
    );
    assert!(
        !mqtt_publish(hub_port, "operator", "demo-password"),
        "no well-known password"
    );
    let staged = std::fs::read_to_string(device.dir.join("var/db/baetyl/application.yml"))
        .expect("installed app");
    assert!(
        staged.contains("agent:"),
        "the agent is carried into the application:\n{staged}"
    );
    assert!(!staged.contains("${secret"), "placeholders are filled");
    if nix::unistd::geteuid().is_root() {
        secrets_are_closed(&device, agent_pid);
    }
    let pids = |d: &Device| {
        (
            d.pid("hub"),
            d.pid("function-manager"),
            d.pid("agent"),
            d.pid("timer"),
        )
    };
    let (hub, manager, agent, timer) = pids(&device);
    assert_eq!(
        agent,
        Some(agent_pid),
        "the agent kept running through the update"
    );
    assert!(hub.is_some() && manager.is_some() && timer.is_some());

    // v2 changes the timer only: the others keep their pids; the cloud shows v2.
    push(
        &cloud,
        root,
        "v2",
        hub_port,
        "2s",
        "select id where id % 2 = 0",
    );
    deploy_and_wait(&cloud, &device, "v2", "RESTARTED");
    until(&cloud, &device, "v2 to show as running", |v| {
        v["app_version"] == "v2"
    });
    let (hub2, manager2, agent2, timer2) = pids(&device);
    assert_eq!(
        (hub2, manager2, agent2),
        (hub, manager, agent),
        "unchanged services keep their pids"
    );
    assert_ne!(timer2, timer, "the changed timer restarted");

    // v3 is broken (the timer's config has an unknown key): the device rolls back to v2 and says why.
    let (app, files) = fleet_app("v3", hub_port, "2s", "select id where id % 2 = 0");
    let mut files: Vec<(String, String)> = files;
    files[1].1.push_str("nonsense: 1\n");
    let f: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let dir = app_dir(root, "app-v3", &app, &f);
    cloud.ctl(&[
        "apps",
        "push",
        dir.to_str().expect("utf-8"),
        "--name",
        "fleet",
    ]);
    let v = deploy_and_wait(&cloud, &device, "v3", "FAILURE");
    let error = v["deployments"][0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("rolled back"),
        "the failure says it was rolled back: {v:#}"
    );
    assert_eq!(v["update_state"], "FAILURE");
    assert_eq!(device.app_version().as_deref(), Some("v2"));
    until(
        &cloud,
        &device,
        "v2 to show as running after the rollback",
        |v| v["app_version"] == "v2",
    );
    assert_eq!((device.pid("hub"), device.pid("agent")), (hub, agent));

    // A manifest whose signature no longer matches is refused; so is a blob whose content changed.
    push(
        &cloud,
        root,
        "v4",
        hub_port,
        "3s",
        "select id where id % 2 = 0",
    );
    tamper(&cloud, "UPDATE app_versions SET manifest = replace(manifest, '\"version\":\"v4\"', '\"version\":\"v4 \"') WHERE version = 'v4'".into());
    let v = deploy_and_wait(&cloud, &device, "v4", "FAILURE");
    assert!(
        v["deployments"][0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("signature"),
        "{v:#}"
    );
    push(
        &cloud,
        root,
        "v5",
        hub_port,
        "4s",
        "select id where id % 2 = 0",
    );
    let shown = cloud.ctl_json(&["apps", "show", "fleet", "v5"]);
    let sha = shown["manifest"]["volumes"]["timer-conf"][0]["sha256"]
        .as_str()
        .expect("timer config blob")
        .to_string();
    let zeros = if db.is_some() {
        "decode(repeat('00', size::int), 'hex')"
    } else {
        "zeroblob(size)"
    };
    tamper(
        &cloud,
        format!("UPDATE blobs SET data = {zeros} WHERE sha256 = '{sha}'"),
    );
    let v = deploy_and_wait(&cloud, &device, "v5", "FAILURE");
    assert!(
        v["deployments"][0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("digest"),
        "{v:#}"
    );
    assert_eq!(
        device.app_version().as_deref(),
        Some("v2"),
        "the running application is untouched"
    );
    assert_eq!((device.pid("hub"), device.pid("agent")), (hub, agent));

    // Logs and restart without a shell.
    let logs = cloud.ctl(&["logs", "dev1", "hub", "--tail", "5"]);
    let file = std::fs::read_to_string(device.dir.join("var/log/baetyl/services/hub/hub.log"))
        .expect("hub log");
    assert!(!logs.trim().is_empty(), "the tail has lines");
    for line in logs.lines() {
        assert!(file.contains(line), "`{line}` is from the hub's log");
    }
    let err = cloud.ctl_raw(&["logs", "dev1", "nosuch"]);
    assert!(!err.status.success());
    assert!(
        String::from_utf8_lossy(&err.stderr).contains("no log for nosuch"),
        "{}",
        String::from_utf8_lossy(&err.stderr)
    );
    let before = device.pid("timer");
    cloud.ctl(&["restart", "dev1", "timer"]);
    eventually(SLOW, "the timer to run with a new pid", || {
        device.pid("timer").filter(|p| Some(*p) != before)
    });
    let out = cloud.ctl_raw(&["reboot", "dev1"]);
    assert!(!out.status.success(), "a master without init cannot reboot");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs baetyl init"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The cloud stops for a while: the device keeps working, then catches up.
    cloud.stop();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        mqtt_publish(hub_port, "operator", &operator),
        "the hub works while the cloud is away"
    );
    assert_eq!((device.pid("hub"), device.pid("agent")), (hub, agent));
    cloud.run();
    until(&cloud, &device, "the device to come back online", |v| {
        v["online"] == true
    });
    push(
        &cloud,
        root,
        "v6",
        hub_port,
        "1s",
        "select id where id % 3 = 0",
    );
    deploy_and_wait(&cloud, &device, "v6", "RESTARTED");
    until(&cloud, &device, "v6 to show as running", |v| {
        v["app_version"] == "v6"
    });

    // New secrets: the hub takes the new password and refuses the old one.
    cloud.ctl(&["secrets", "dev1", "--rotate"]);
    let rotated = cloud.ctl_json(&["secrets", "dev1"]);
    let new = rotated["hub-operator"]
        .as_str()
        .expect("rotated")
        .to_string();
    assert_ne!(new, operator);
    eventually(SLOW, "the hub to take the rotated password", || {
        mqtt_publish(hub_port, "operator", &new).then_some(())
    });
    assert!(
        !mqtt_publish(hub_port, "operator", &operator),
        "the old password is refused"
    );

    // Revoked: the link is cut, the device cannot come back, and what runs keeps running.
    cloud.ctl(&["devices", "revoke", "dev1"]);
    until(&cloud, &device, "the revoked device to go offline", |v| {
        v["online"] == false && v["state"] == "revoked"
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        cloud.device("dev1")["online"],
        false,
        "a revoked device cannot link again"
    );
    let agent_log =
        std::fs::read_to_string(device.dir.join("var/log/baetyl/services/agent/agent.log"))
            .unwrap_or_default();
    assert!(
        agent_log.contains("refuses this device"),
        "the agent says it was refused:\n{agent_log}"
    );
    assert!(mqtt_publish(hub_port, "operator", &new));
    let audit = cloud.ctl_json(&["audit", "--limit", "200"]);
    let actions: Vec<&str> = audit
        .as_array()
        .expect("audit")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for a in [
        "deploy",
        "device.logs",
        "device.restart",
        "device.reboot",
        "device.secrets.rotate",
        "device.revoke",
        "app.version.create",
    ] {
        assert!(actions.contains(&a), "{a} is in the audit log: {actions:?}");
    }
    device.stop();
    cloud.stop();
}

/// With per-service users (the tests run as root): the agent runs under a user of its own, and what holds
/// the device's secrets is readable by its service (and the agent, which wrote it) alone.
fn secrets_are_closed(device: &Device, agent_pid: u64) {
    use std::os::unix::fs::MetadataExt;
    let status = std::fs::read_to_string(format!("/proc/{agent_pid}/status")).expect("status");
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse::<u32>().ok())
        .expect("the agent's uid");
    assert_ne!(uid, 0, "the agent does not run as root");
    let md = |rel: &str| {
        std::fs::metadata(device.dir.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    };
    for f in [
        "var/db/baetyl/application.yml",
        "var/db/baetyl/ota.log",
        "var/log/baetyl/services/hub/hub.log",
    ] {
        let m = md(f);
        assert_eq!(
            (m.mode() & 0o777, m.gid()),
            (0o640, uid),
            "{f}: the agent's group reads it"
        );
    }
    let deploy = device.dir.join("var/db/baetyl/deploy");
    let staged = std::fs::read_dir(&deploy)
        .expect("deploy")
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with('r'))
        .expect("a staged application");
    let m = std::fs::metadata(staged.path().join("application.yml")).expect("staged");
    assert_eq!((m.uid(), m.mode() & 0o777), (uid, 0o600));
    let hub_conf = std::fs::read_dir(deploy.join("volumes"))
        .expect("volumes")
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("hub-conf-"))
        .expect("the hub's staged config")
        .path();
    let hub_uid = std::fs::metadata(device.dir.join("var/run/baetyl/services/hub/hub"))
        .expect("hub dir")
        .uid();
    for p in [hub_conf.clone(), hub_conf.join("service.yml")] {
        let m = std::fs::metadata(&p).expect("hub conf");
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o007),
            (uid, hub_uid, 0),
            "{}: the hub's group reads it, others nothing",
            p.display()
        );
    }
}

/// Reboot and power off from `baetyl ctl` on a device whose master runs under `baetyl init` (as on the image):
/// the agent asks the master, the master asks init, init stops everything and ends with the reboot (3) or
/// power-off (0) status; the device then comes back (the test plays the machine) and links again.
#[test]
fn reboot_and_poweroff_through_init() {
    let root = test_dir("baetyl-cloud-init-");
    let cloud = CloudProc::start(&root.path().join("cloud"), None);
    let mut device = Device::new(&root.path().join("device"), "dev-init", &cloud);
    device.start_under_init();
    until(&cloud, &device, "the device to link", |v| {
        v["online"] == true
    });
    let agent = device.pid("agent").expect("the agent runs");
    let booted = cloud.device("dev-init")["report_time"]
        .as_i64()
        .unwrap_or(0);

    cloud.ctl(&["reboot", "dev-init"]);
    let code = device.wait_exit(SLOW);
    assert_eq!(
        code,
        Some(3),
        "init ended with the reboot status\n{}",
        device.log()
    );
    assert!(device.log().contains("reboot"), "{}", device.log());
    device.start_under_init();
    until(
        &cloud,
        &device,
        "the device to come back after the reboot",
        |v| v["online"] == true && v["report_time"].as_i64().unwrap_or(0) > booted,
    );
    assert_ne!(device.pid("agent"), Some(agent), "a new boot, a new agent");

    cloud.ctl(&["poweroff", "dev-init"]);
    assert_eq!(
        device.wait_exit(SLOW),
        Some(0),
        "init ended with the power-off status\n{}",
        device.log()
    );
    until(
        &cloud,
        &device,
        "the powered-off device to show offline",
        |v| v["online"] == false,
    );
}

/// Two cloud processes on one PostgreSQL: a device linked to one gets a deployment made through the other
/// within 2 s, and logs asked through the other come back.
#[test]
fn two_clouds_one_postgres() {
    let pg = baetyl_cloud::testing::Postgres::start();
    let root = test_dir("baetyl-cloud-two-");
    let a = CloudProc::start(&root.path().join("a"), Some(&pg.url));
    let b_dir = root.path().join("b");
    std::fs::create_dir_all(b_dir.join("data")).expect("b data");
    for f in [
        "ca.key",
        "ca.crt",
        "signing.key",
        "admin.token",
        "provisioning.key",
    ] {
        std::fs::copy(a.data().join(f), b_dir.join("data").join(f))
            .expect("share the fleet's keys");
    }
    let b = CloudProc::start(&b_dir, Some(&pg.url));
    // The device knows process b only.
    let mut device = Device::new(&root.path().join("device"), "far", &b);
    device.start();
    until(
        &a,
        &device,
        "the device linked to b to show online through a",
        |v| v["online"] == true,
    );
    let hub_port = free_port();
    push(
        &a,
        root.path(),
        "v1",
        hub_port,
        "1s",
        "select id where id % 2 = 0",
    );
    deploy_and_wait(&a, &device, "v1", "RESTARTED");
    until(&a, &device, "v1 to show as running", |v| {
        v["app_version"] == "v1"
    });
    let logs = a.ctl(&["logs", "far", "agent", "--tail", "3"]);
    assert!(
        !logs.trim().is_empty(),
        "logs come back through the other process"
    );
    let fleet = a.ctl_json(&["fleet"]);
    assert_eq!(fleet["processes"], 2, "{fleet}");
}
