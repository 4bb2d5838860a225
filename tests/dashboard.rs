//! The web dashboard in Debian's headless Chromium (driven through chromedriver) against a running cloud and a
//! device under init: sign in, the fleet overview, the device page with live inspect, logs followed live, a
//! restart and a reboot from its buttons. Screenshots of both pages go to the test's output dir
//! (`target/tmp/dashboard/`).

mod cloudkit;

use cloudkit::webdriver::Browser;
use cloudkit::*;

#[test]
fn dashboard_shows_the_fleet_and_acts_on_a_device() {
    let root = test_dir("baetyl-dashboard-");
    let cloud = CloudProc::start(&root.path().join("cloud"), None);
    let mut device = Device::new(&root.path().join("device"), "pump-7", &cloud);
    device.start_under_init();
    until(&cloud, &device, "the device to link", |v| {
        v["online"] == true
    });
    let hub_port = free_port();
    push(
        &cloud,
        root.path(),
        "v1",
        hub_port,
        "1s",
        "select id where id % 2 = 0",
    );
    deploy_and_wait(&cloud, &device, "v1", "RESTARTED");
    until(&cloud, &device, "v1 to run", |v| v["app_version"] == "v1");
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");

    let browser = Browser::start();
    browser.goto(&cloud.url());
    browser.find("#login-form", SLOW);
    let token = std::fs::read_to_string(cloud.data().join("admin.token")).expect("admin token");
    browser.type_into("#token", token.trim());
    browser.click("#login-form button");

    // The fleet overview: online, application, update state, figures.
    let fleet = browser.wait_text("#devices tbody", SLOW, "the device in the overview", |t| {
        t.contains("pump-7") && t.contains("online") && t.contains("v1") && t.contains("RESTARTED")
    });
    assert!(fleet.contains('%'), "CPU is shown: {fleet}");
    assert!(fleet.contains("iB /"), "memory is shown: {fleet}");
    browser.wait_text("#c-online", SLOW, "the online count", |t| t == "1");
    browser.screenshot(&out.join("fleet.png"));

    // The device page: services from the last report, deployment history, then a live inspect.
    browser.click("#devices tbody a");
    browser.wait_text("#services tbody", SLOW, "the services", |t| {
        t.contains("hub/hub") && t.contains("running")
    });
    browser.wait_text("#deployments tbody", SLOW, "the deployment history", |t| {
        t.contains("RESTARTED") && t.contains("fleet v1")
    });
    browser.click("#a-inspect");
    browser.wait_text("#s-source", SLOW, "a live inspect", |t| {
        t.to_lowercase().contains("live")
    });

    // Logs, followed live: restarting the timer from the page brings its start-up lines into the view.
    browser.script(
        "const s = document.getElementById('l-service'); s.value = 'timer'; return s.value;",
        serde_json::json!([]),
    );
    browser.click("#l-follow");
    browser.wait_text("#l-status", SLOW, "the follow to start", |t| {
        t.contains("following timer")
    });
    let timer = device.pid("timer");
    let before = browser.text("#logs").len();
    browser.script(
        "const s = document.getElementById('a-service'); s.value = 'timer'; return s.value;",
        serde_json::json!([]),
    );
    browser.click("#a-restart");
    browser.wait_text("#a-result", SLOW, "the restart to be done", |t| {
        t.contains("done")
    });
    eventually(SLOW, "the timer to run with a new pid", || {
        device.pid("timer").filter(|p| Some(*p) != timer)
    });
    browser.wait_text("#logs", SLOW, "new log lines after the restart", |t| {
        t.len() > before
    });
    browser.screenshot(&out.join("device.png"));
    browser.click("#l-stop");

    // Reboot from the page (the button asks again on its face): init ends with the reboot status.
    browser.click("#a-reboot");
    browser.wait_text(
        "#a-reboot",
        SLOW,
        "the button to ask for confirmation",
        |t| t.starts_with("Confirm"),
    );
    browser.click("#a-reboot");
    browser.wait_text("#a-result", SLOW, "the reboot to be accepted", |t| {
        t.contains("Reboot: done")
    });
    assert_eq!(
        device.wait_exit(SLOW),
        Some(3),
        "init rebooted\n{}",
        device.log()
    );
    device.start_under_init();
    browser.wait_text(
        "#d-online",
        SLOW,
        "the device to come back online on the page",
        |t| t == "online",
    );
    println!(
        "screenshots: {} and {}",
        out.join("fleet.png").display(),
        out.join("device.png").display()
    );
    assert!(
        std::fs::metadata(out.join("fleet.png"))
            .expect("fleet.png")
            .len()
            > 10_000
    );
    assert!(
        std::fs::metadata(out.join("device.png"))
            .expect("device.png")
            .len()
            > 10_000
    );
}
