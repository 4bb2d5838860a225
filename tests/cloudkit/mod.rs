//! Helpers for the cloud end-to-end tests: a `baetyl cloud` process, `baetyl ctl` calls, and a device: a real
//! `baetyl master` work dir whose application is the agent alone, as a cloud-managed image ships it. Processes,
//! ports, waits and the `baetyl` binary come from the test kit; PostgreSQL from `baetyl_cloud::testing`.
#![allow(dead_code)]

pub mod webdriver;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use baetyl_testkit::process::Process;
use baetyl_testkit::wait::poll;
use serde_json::Value;

pub use baetyl_testkit::{baetyl_bin, eventually, free_port, test_dir};

/// How long a step of a scenario may take on a loaded machine.
pub const SLOW: Duration = Duration::from_secs(60);

/// A log file of a child process, appended to across restarts.
fn log_file(path: &Path) -> (Stdio, Stdio) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (log.try_clone().expect("dup the log").into(), log.into())
}

/// A `baetyl cloud` process.
pub struct CloudProc {
    pub dir: PathBuf,
    pub port: u16,
    pub db: Option<String>,
    /// A config file (`-c`), for keys that have no command-line flag.
    pub config: Option<PathBuf>,
    child: Option<Process>,
}

impl CloudProc {
    pub fn start(dir: &Path, db: Option<&str>) -> CloudProc {
        Self::start_with(dir, db, |_| None)
    }

    /// Starts a cloud whose config file is `config(port)` (when it answers one).
    pub fn start_with(
        dir: &Path,
        db: Option<&str>,
        config: impl FnOnce(u16) -> Option<String>,
    ) -> CloudProc {
        let port = free_port();
        let config = config(port).map(|text| {
            std::fs::create_dir_all(dir).expect("cloud dir");
            let p = dir.join("cloud.yml");
            std::fs::write(&p, text).expect("cloud.yml");
            p
        });
        let mut c = CloudProc {
            dir: dir.to_path_buf(),
            port,
            db: db.map(str::to_string),
            config,
            child: None,
        };
        c.run();
        c
    }

    /// Starts (again) on the same port and data dir.
    pub fn run(&mut self) {
        std::fs::create_dir_all(&self.dir).expect("cloud dir");
        let (out, err) = log_file(&self.dir.join("cloud.log"));
        let mut cmd = Command::new(baetyl_bin());
        cmd.args([
            "cloud",
            "--listen",
            &format!("127.0.0.1:{}", self.port),
            "--data-dir",
        ])
        .arg(self.dir.join("data"))
        .env("RUST_LOG", "info,baetyl_cloud=debug")
        .env_remove("BAETYL_CLOUD_DATABASE")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
        if let Some(db) = &self.db {
            cmd.args(["--database", db]);
        }
        if let Some(c) = &self.config {
            cmd.arg("-c").arg(c);
        }
        self.child = Some(
            Process::spawn(&mut cmd, "baetyl cloud")
                .expect("spawn baetyl cloud")
                .with_log(&self.dir.join("cloud.log"))
                .term_on_drop(Duration::from_secs(10)),
        );
        eventually(SLOW, "the cloud to answer", || {
            if let Some(status) = self.child.as_mut().and_then(Process::try_status) {
                panic!("baetyl cloud exited with {status}: {}", self.log());
            }
            self.ctl_raw(&["fleet"]).status.success().then_some(())
        });
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.terminate(Duration::from_secs(10));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("cloud.log")).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn ctl_raw(&self, args: &[&str]) -> Output {
        Command::new(baetyl_bin())
            .args(["ctl", "--url", &self.url(), "--data-dir"])
            .arg(self.data())
            .args(args)
            .env_remove("BAETYL_CLOUD_TOKEN")
            .env_remove("BAETYL_CLOUD_URL")
            .stdin(Stdio::null())
            .output()
            .expect("run baetyl ctl")
    }

    /// `baetyl ctl ARGS` that must succeed; answers its standard output.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = self.ctl_raw(args);
        assert!(
            out.status.success(),
            "baetyl ctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `baetyl ctl --json ARGS`, parsed.
    pub fn ctl_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ctl(&all)).expect("ctl --json prints JSON")
    }

    pub fn device(&self, name: &str) -> Value {
        self.ctl_json(&["devices", "show", name])
    }

    /// The device's view, or None while the cloud does not know it (or does not answer).
    pub fn try_device(&self, name: &str) -> Option<Value> {
        let out = self.ctl_raw(&["--json", "devices", "show", name]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    pub fn signing_key(&self) -> String {
        std::fs::read_to_string(self.data().join("signing.pub"))
            .expect("signing.pub")
            .trim()
            .to_string()
    }
}

/// A device: a master work dir whose application is the agent alone, with its config pointing at the cloud.
pub struct Device {
    pub dir: PathBuf,
    pub name: String,
    child: Option<Process>,
}

/// The application a cloud-managed image ships (`baetyl image build --cloud`): the agent alone.
pub use baetyl_agent::bootstrap::BOOTSTRAP_APP;

impl Device {
    pub fn new(dir: &Path, name: &str, cloud: &CloudProc) -> Device {
        let d = Device {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            child: None,
        };
        d.write(
            "etc/baetyl/conf.yml",
            // The agent service has the agent role on the master's API. Per-service users are on as on a
            // device (under init, `auto` turns them on) where the tests run as root: every service, the
            // agent too, runs under a user of its own.
            if nix::unistd::geteuid().is_root() {
                "grace: 2s\nupdate: {health: 1500ms}\nserver: {agents: [agent]}\nusers: {mode: 'on'}\n"
            } else {
                "grace: 2s\nupdate: {health: 1500ms}\nserver: {agents: [agent]}\n"
            },
        );
        d.write("var/db/baetyl/application.yml", BOOTSTRAP_APP);
        let conf = "var/db/baetyl/agent/conf";
        d.write(
            &format!("{conf}/ca.crt"),
            &std::fs::read_to_string(cloud.data().join("ca.crt")).expect("ca"),
        );
        d.write(
            &format!("{conf}/provisioning.key"),
            &std::fs::read_to_string(cloud.data().join("provisioning.key"))
                .expect("provisioning key"),
        );
        d.write(
            &format!("{conf}/service.yml"),
            &format!(
                "cloud: {{url: '{}', ca: etc/baetyl/ca.crt, signing_key: '{}'}}\n\
                 provisioning: {{key_file: etc/baetyl/provisioning.key, name: {name}}}\n\
                 state_dir: var/lib/baetyl-agent\n\
                 report: {{interval: 5s, watch: 500ms}}\n\
                 reconnect: {{min: 200ms, max: 2s}}\n\
                 logger: {{level: debug}}\n",
                cloud.url(),
                cloud.signing_key()
            ),
        );
        d
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.dir.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, text).expect("write");
        p
    }

    /// Runs `cmd` (a master, or init supervising one) with its output in `master.log`.
    pub fn spawn(&mut self, mut cmd: Command) {
        let (out, err) = log_file(&self.dir.join("master.log"));
        cmd.env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        self.child = Some(
            Process::spawn(&mut cmd, "the device")
                .expect("spawn the device")
                .term_on_drop(Duration::from_secs(20)),
        );
    }

    pub fn start(&mut self) {
        let mut cmd = Command::new(baetyl_bin());
        cmd.args(["master", "-w"]).arg(&self.dir);
        self.spawn(cmd);
    }

    /// Runs the master under `baetyl init --dry` (processes and signals real, mounts only logged), so reboot
    /// and power off go through init as on a device: init stops the master and exits with 3 (reboot) or 0.
    pub fn start_under_init(&mut self) {
        let cfg = self.write(
            "etc/init.yml",
            &format!(
                "hostname: ~\ndata: ~\nkmsg: false\nmaster: {{command: ['{}', master, -w, '{}'], grace: 10s, restart_min: 1s}}\nshutdown: {{grace: 2s}}\n",
                baetyl_bin().display(),
                self.dir.display()
            ),
        );
        let cmdline = self.write("etc/cmdline", "");
        let mut cmd = Command::new(baetyl_bin());
        cmd.args(["init", "--dry", "--config"])
            .arg(cfg)
            .arg("--cmdline")
            .arg(cmdline);
        self.spawn(cmd);
    }

    /// Waits for the device's process (init or master) to exit on its own; answers its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let status = poll(timeout, || child.try_status()).ok()?;
        self.child = None;
        status.code()
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.terminate(Duration::from_secs(20));
        }
    }

    pub fn log(&self) -> String {
        let mut s = std::fs::read_to_string(self.dir.join("master.log")).unwrap_or_default();
        let agent = self.dir.join("var/log/baetyl/services/agent/agent.log");
        s.push_str("\n--- agent ---\n");
        s.push_str(&std::fs::read_to_string(agent).unwrap_or_default());
        s
    }

    /// The master's inspect (None while it does not answer).
    pub fn inspect(&self) -> Option<Value> {
        let out = Command::new(baetyl_bin())
            .args(["inspect", "--json", "-w"])
            .arg(&self.dir)
            .stdin(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Pid of a service's main instance.
    pub fn pid(&self, service: &str) -> Option<u64> {
        let v = self.inspect()?;
        v["services"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == service)?["instances"]
            .as_array()?
            .iter()
            .find(|i| i["name"] == service && i["status"] == "running")?["process"]["pid"]
            .as_u64()
    }

    pub fn app_version(&self) -> Option<String> {
        self.inspect()?["software"]["conf_version"]
            .as_str()
            .map(str::to_string)
    }
}

/// Writes an application directory (application.yml and files below it) and answers its path.
pub fn app_dir(root: &Path, name: &str, application: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).expect("app dir");
    std::fs::write(dir.join("application.yml"), application).expect("application.yml");
    for (p, content) in files {
        let path = dir.join(p);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, content).expect("write");
        if p.ends_with(".sh") {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
    }
    dir
}

/// `mosquitto_pub` against a hub: did the CONNECT with these credentials and the publish succeed?
pub fn mqtt_publish(port: u16, user: &str, password: &str) -> bool {
    Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-u",
            user,
            "-P",
            password,
            "-t",
            "sensor/probe",
            "-m",
            "x",
            "-q",
            "1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The application used by the scenarios: a hub whose principals' passwords are per-device secrets, a timer,
/// the function manager and the SQL runtime (v1). `timer_interval` and `sql` vary between versions.
pub fn fleet_app(
    version: &str,
    hub_port: u16,
    timer_interval: &str,
    sql: &str,
) -> (String, Vec<(String, String)>) {
    let app = format!(
        "version: v1
app_version: {version}
services:
  hub:
    image: baetyl-hub
    volumes: [hub-conf:/etc/baetyl, hub-data:/var/db/baetyl/data]
  timer:
    image: baetyl-timer
    depends_on: [hub]
    volumes: [timer-conf:/etc/baetyl]
  function-manager:
    image: baetyl-function-manager
    depends_on: [hub]
    volumes: [function-manager-conf:/etc/baetyl]
  function-sql:
    image: baetyl-function-sql
    replica: 0
    volumes: [function-sql-conf:/etc/baetyl]
    restart: {{policy: 'no'}}
volumes:
  hub-conf: {{path: var/db/baetyl/conf/hub, read_only: true}}
  hub-data: {{path: var/db/baetyl/hub-data}}
  timer-conf: {{path: var/db/baetyl/conf/timer, read_only: true}}
  function-manager-conf: {{path: var/db/baetyl/conf/function-manager, read_only: true}}
  function-sql-conf: {{path: var/db/baetyl/conf/function-sql, read_only: true}}
"
    );
    let files = vec![
        (
            "conf/hub/service.yml".to_string(),
            format!(
                "listen: [tcp://127.0.0.1:{hub_port}]
principals:
  - {{username: operator, password: '${{secret.hub-operator}}', permissions: [{{action: pub, permit: ['#']}}, {{action: sub, permit: ['#']}}]}}
  - {{username: timer, password: '${{secret.hub-timer}}', permissions: [{{action: pub, permit: ['sensor/#']}}]}}
  - {{username: functions, password: '${{secret.hub-functions}}', permissions: [{{action: pub, permit: ['sensor/#']}}, {{action: sub, permit: ['sensor/#']}}]}}
storage: {{dir: var/db/baetyl/data}}
"
            ),
        ),
        (
            "conf/timer/service.yml".to_string(),
            format!(
                "hub: {{address: 'tcp://127.0.0.1:{hub_port}', clientid: 'timer-${{device.name}}', username: timer, password: '${{secret.hub-timer}}'}}
timer: {{interval: {timer_interval}}}
publish: {{topic: sensor/data, qos: 1, payload: {{id: '{{{{seq}}}}', time: '{{{{time}}}}'}}}}
"
            ),
        ),
        (
            "conf/function-manager/service.yml".to_string(),
            format!(
                "hub: {{address: 'tcp://127.0.0.1:{hub_port}', username: functions, password: '${{secret.hub-functions}}'}}
rules:
  - clientid: rule-sql
    subscribe: {{topic: sensor/data, qos: 1}}
    function: {{name: filter}}
    publish: {{topic: sensor/filtered, qos: 1}}
functions:
  - name: filter
    service: function-sql
    instance: {{min: 0, max: 1, idletime: 1m}}
"
            ),
        ),
        ("conf/function-sql/service.yml".to_string(), format!("functions:\n  - name: filter\n    handler: \"{sql}\"\n")),
    ];
    (app, files)
}

/// Waits until the cloud's view of the device satisfies `ok`; shows the device's logs when it does not.
pub fn until(cloud: &CloudProc, device: &Device, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let got = poll(SLOW, || {
        let v = cloud.try_device(&device.name).unwrap_or(Value::Null);
        if ok(&v) { Ok(v) } else { Err(format!("{v:#}")) }
    });
    got.unwrap_or_else(|last| {
        panic!(
            "timed out waiting for {what}; the cloud shows {}\n--- device ---\n{}\n--- cloud ---\n{}",
            last.unwrap_or_default(),
            device.log(),
            cloud.log()
        )
    })
}

/// Deploys `version` to the device, checks that the device took it up within 2 s, and waits for `state`.
pub fn deploy_and_wait(cloud: &CloudProc, device: &Device, version: &str, state: &str) -> Value {
    let out = cloud.ctl_json(&["deploy", "fleet", version, "--device", &device.name]);
    let revision = out["revision"].as_i64().expect("a revision");
    let asked = std::time::Instant::now();
    until(cloud, device, &format!("{version} to be taken up"), |v| {
        v["deployments"][0]["revision"] == revision && v["deployments"][0]["state"] != "pending"
    });
    let took = asked.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "the device took the desired state up after {took:?}"
    );
    until(
        cloud,
        device,
        &format!("{version} (revision {revision}) to reach {state}"),
        |v| v["deployments"][0]["revision"] == revision && v["deployments"][0]["state"] == state,
    )
}

pub fn push(
    cloud: &CloudProc,
    root: &std::path::Path,
    version: &str,
    hub_port: u16,
    interval: &str,
    sql: &str,
) {
    let (app, files) = fleet_app(version, hub_port, interval, sql);
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let dir = app_dir(root, &format!("app-{version}"), &app, &files);
    cloud.ctl(&[
        "apps",
        "push",
        dir.to_str().expect("utf-8 path"),
        "--name",
        "fleet",
    ]);
}

pub fn tamper(cloud: &CloudProc, sql: String) {
    let url = cloud
        .db
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", cloud.data().join("cloud.db").display()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store = baetyl_cloud::store::Store::open(&url, 1)
            .await
            .expect("open the cloud's database");
        let n = store.execute_raw(sql).await.expect("tamper");
        assert_eq!(n, 1, "one row tampered with");
        store.close().await;
    });
}
