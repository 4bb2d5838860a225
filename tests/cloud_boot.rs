//! Boot test of a cloud-managed image: the x86_64 disk image that scripts/test.sh built (containerd engine:
//! every service a container, the agent too), made cloud-managed with `baetyl image configure
//! --provisioning-key` (its data partition rewritten, nothing rebuilt), boots
//! under QEMU (TCG) and, reaching a `baetyl cloud` process on the host at 10.0.2.2, registers with the fleet
//! key, runs the application the cloud deploys (hub, timer, SQL function with this device's own hub
//! passwords: a message goes through them and out of the forwarded hub port), refuses the old demo password,
//! and powers off when the operator asks through the cloud. A booted image is then refused by `configure`.

mod cloudkit;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use baetyl_testkit::process::Process;
use baetyl_testkit::wait::poll;
use cloudkit::*;
use serde_json::Value;

/// Boot, registration or an update under TCG on a loaded machine.
const VM_STEP: Duration = Duration::from_secs(300);
const DEVICE: &str = "qemu-x86";

/// The source tree (of this test crate, not of a prebuilt test kit).
fn tree() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn image() -> PathBuf {
    let images = std::env::var_os("BAETYL_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| tree().join("target/images"));
    // The default (containerd) image: the agent runs in its own container and stages deployments in its
    // own volume; the master reads them from there.
    let disk = images.join("x86_64/disk.img");
    assert!(
        disk.is_file(),
        "{} is missing: scripts/test.sh builds it (`baetyl image build --arch x86_64 --out {}`)",
        disk.display(),
        images.join("x86_64").display()
    );
    disk
}

/// `baetyl image ARGS`.
fn baetyl_image(args: &[&str], disk: &Path) -> std::process::Output {
    Command::new(baetyl_bin())
        .arg("image")
        .args(args)
        .arg(disk)
        .stdin(Stdio::null())
        .output()
        .expect("run baetyl image")
}

struct Guest {
    qemu: Process,
    dir: PathBuf,
}

impl Guest {
    fn boot(dir: &Path, disk: &Path) -> Guest {
        let out = std::fs::File::create(dir.join("qemu.out")).expect("qemu.out");
        let mut cmd = Command::new(tree().join("qemu/run"));
        cmd.args(["--arch", "x86_64", "--disk"])
            .arg(disk)
            .arg("--log")
            .arg(dir.join("console.log"))
            .arg("--ports-file")
            .arg(dir.join("ports"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out);
        Guest {
            qemu: Process::spawn(&mut cmd, "qemu/run").expect("qemu/run"),
            dir: dir.to_path_buf(),
        }
    }

    /// The host port forwarded to the guest's `guest` port.
    fn port(&self, guest: u16) -> u16 {
        poll(Duration::from_secs(30), || {
            std::fs::read_to_string(self.dir.join("ports"))
                .ok()?
                .lines()
                .find_map(|l| {
                    let (g, h) = l.split_once('=')?;
                    (g == guest.to_string()).then(|| h.parse().ok())?
                })
        })
        .unwrap_or_else(|_| panic!("qemu/run wrote no ports file"))
    }

    fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.dir.join("console.log")).unwrap_or_default())
            .into_owned()
    }
}

/// Polls the cloud's view of the device until `ok`; on a timeout shows the guest's console and the cloud's log.
fn until(cloud: &CloudProc, guest: &Guest, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    poll(VM_STEP, || {
        let v = cloud.try_device(DEVICE).unwrap_or(Value::Null);
        if ok(&v) {
            return Ok(v);
        }
        // Each probe is a `baetyl ctl` process: leave the cores to the guest.
        std::thread::sleep(Duration::from_millis(500));
        Err(format!("{v:#}"))
    })
    .unwrap_or_else(|last| {
        panic!(
            "timed out waiting for {what}; the cloud shows {}\n--- console ---\n{}\n--- cloud ---\n{}",
            last.unwrap_or_default(),
            guest.console(),
            cloud.log()
        )
    })
}

#[test]
#[ignore = "needs the x86_64 image: scripts/test.sh builds it and runs this with --ignored"]
fn cloud_managed_image_registers_runs_its_deployment_and_refuses_the_demo_password() {
    let src = image();
    let root = test_dir("baetyl-cloud-boot-");
    let root = root.path();

    // The cloud on the host, as the guest reaches it through QEMU's user network (10.0.2.2 is the host).
    let cloud = CloudProc::start_with(&root.join("cloud"), None, |port| {
        Some(format!(
            "tls: {{names: [localhost, 127.0.0.1, 10.0.2.2]}}\npublic_url: https://10.0.2.2:{port}\n"
        ))
    });
    let fleet = root.join("fleet.yml");
    cloud.ctl(&[
        "provisioning-key",
        "--fleet-file",
        fleet.to_str().expect("utf-8"),
    ]);
    let fleet_text = std::fs::read_to_string(&fleet).expect("fleet file");
    assert!(
        fleet_text.contains(&format!("url: https://10.0.2.2:{}", cloud.port)),
        "{fleet_text}"
    );

    // The built image, made cloud-managed in place: only its data partition changes.
    let disk = root.join("disk.img");
    std::fs::copy(&src, &disk).expect("copy the disk image");
    let started = Instant::now();
    let out = baetyl_image(
        &[
            "configure",
            "--provisioning-key",
            fleet.to_str().expect("utf-8"),
            "--name",
            DEVICE,
        ],
        &disk,
    );
    assert!(
        out.status.success(),
        "baetyl image configure: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let configure = started.elapsed();

    let vm_dir = root.join("vm");
    std::fs::create_dir_all(&vm_dir).expect("vm dir");
    let mut guest = Guest::boot(&vm_dir, &disk);
    let booted = Instant::now();
    let mqtt = guest.port(1883);

    // First boot: the agent registers with the fleet key and reports its bootstrap application.
    let v = until(&cloud, &guest, "the guest to register and report", |v| {
        v["online"] == true && v["app_version"] == "bootstrap"
    });
    assert_eq!(v["state"], "active");
    let registered = booted.elapsed();
    assert!(
        !mqtt_publish(mqtt, "demo", "demo-password"),
        "a cloud-managed image runs no hub before its deployment"
    );

    // A deployment from the cloud: the README's example application (hub on all addresses, so that QEMU's
    // forward reaches it; passwords are this device's secrets).
    let example = tree().join("examples/cloud");
    cloud.ctl(&[
        "apps",
        "push",
        example.to_str().expect("utf-8"),
        "--name",
        "demo",
    ]);
    let asked = Instant::now();
    let deployed = cloud.ctl_json(&["deploy", "demo", "demo-1", "--device", DEVICE]);
    let revision = deployed["revision"].as_i64().expect("a revision");
    until(&cloud, &guest, "demo-1 to be installed", |v| {
        v["deployments"][0]["revision"] == revision && v["deployments"][0]["state"] == "RESTARTED"
    });
    until(&cloud, &guest, "demo-1 to show as running", |v| {
        v["app_version"] == "demo-1"
    });
    let running = asked.elapsed();

    // The device's own hub password opens its hub; the image's old demo password does not.
    let secrets = cloud.ctl_json(&["secrets", DEVICE]);
    let operator = secrets["hub-operator"]
        .as_str()
        .expect("a generated hub password")
        .to_string();
    assert!(
        poll(Duration::from_secs(60), || mqtt_publish(
            mqtt, "operator", &operator
        )
        .then_some(()))
        .is_ok(),
        "the device's own password opens the guest's hub\n--- console ---\n{}",
        guest.console()
    );
    assert!(
        !mqtt_publish(mqtt, "demo", "demo-password"),
        "the old demo password is refused"
    );
    assert!(!mqtt_publish(mqtt, "operator", "demo-password"));

    // A message through the deployed application: the timer's readings pass the SQL function.
    let sub = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &mqtt.to_string(), "-u", "operator"])
        .args([
            "-P",
            &operator,
            "-t",
            "sensor/filtered",
            "-C",
            "1",
            "-W",
            "120",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("mosquitto_sub");
    let got = String::from_utf8_lossy(&sub.stdout);
    assert!(
        sub.status.success() && got.contains("\"id\""),
        "no sensor/filtered message through the deployed app: {got}{}",
        String::from_utf8_lossy(&sub.stderr)
    );

    // Operations without a shell: a service's log, then power off through the cloud (QEMU exits 0).
    let logs = cloud.ctl(&["logs", DEVICE, "timer", "--tail", "5"]);
    assert!(!logs.trim().is_empty(), "the timer's log from the guest");
    cloud.ctl(&["poweroff", DEVICE]);
    let Ok(status) = poll(Duration::from_secs(180), || guest.qemu.try_status()) else {
        panic!(
            "QEMU still running 180 s after `baetyl ctl poweroff`\n--- console ---\n{}",
            guest.console()
        );
    };
    assert!(status.success(), "QEMU exited with {status}");

    // A booted image holds the device's state: configure refuses it unless forced.
    let again = baetyl_image(
        &[
            "configure",
            "--provisioning-key",
            fleet.to_str().expect("utf-8"),
        ],
        &disk,
    );
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        !again.status.success() && err.contains("has booted") && err.contains("--force"),
        "{err}"
    );
    println!(
        "BOOT cloud x86_64: configure {:.1} s; registered {:.1} s after QEMU start; deployment running {:.1} s after `baetyl ctl deploy`",
        configure.as_secs_f64(),
        registered.as_secs_f64(),
        running.as_secs_f64()
    );
}
