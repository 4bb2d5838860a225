//! Helpers of the end-to-end tests of `baetyl master`: a temp work dir with packages written by the test, a real
//! master process (the workspace's `baetyl` binary, found or built by the test kit), and its API client.
//!
//! The tests themselves are the `[[test]]` targets beside this file: `master` (supervision and the API),
//! `function` (hub + function manager + SQL and Python runtimes), `bridge` (two of our hubs and the bridge) and
//! `os_image` (the OS images booted under QEMU; run by scripts/test.sh once it has built them).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use baetyl_sdk::client::{Address, MasterClient};
use baetyl_testkit::process::Process;
use baetyl_testkit::wait::{poll, poll_async};
use baetyl_testkit::{eventually, test_dir};
use serde_json::Value;

pub mod engines;

pub use baetyl_testkit::baetyl_bin;
pub use baetyl_testkit::process::alive;

/// How long a master may take to start, and a stopped one to exit.
const MASTER_START: Duration = Duration::from_secs(30);
const MASTER_STOP: Duration = Duration::from_secs(30);

/// The start of both test scripts: in containerd mode (`BAETYL_SERVICE_MODE`) the test's work dir is at
/// `/test-root` and the script works in its instance dir there, as in native mode; `me PID` says which process
/// PID is, wherever it runs (`pid:[NS] PID START`, see [`engines::PidRef`]).
macro_rules! script_prelude {
    () => {
        r#"#!/bin/sh
if [ "$BAETYL_SERVICE_MODE" = containerd ]; then
  TEST_ROOT=/test-root
  d="$TEST_ROOT/var/run/baetyl/services/$BAETYL_SERVICE_NAME/$BAETYL_SERVICE_INSTANCE_NAME"
  mkdir -p "$d" && cd "$d" || exit 99
fi
NS=$(readlink /proc/self/ns/pid)
me() { echo "$NS $1 $(cut -d' ' -f22 /proc/$1/stat)"; }
echo "$BAETYL_SERVICE_INSTANCE_NAME $(me $$)" >> "$TEST_ROOT/starts"
"#
    };
}

/// A test service: records each start (instance name and pid) in `<work>/starts`, its environment in `env`
/// and its descriptor limits in `nofile` in its own work dir, then exits with $EXIT_CODE or runs a child until
/// stopped (SIGTERM ends it: a container's first process ignores signals it has no handler for).
pub const SVC_SCRIPT: &str = concat!(
    script_prelude!(),
    r#"env | grep '^BAETYL_' | sort > env
echo "$(ulimit -Sn) $(ulimit -Hn)" > nofile
if [ -n "$EXIT_CODE" ]; then exit "$EXIT_CODE"; fi
trap 'exit 0' TERM
sleep 1000 &
me $! > child.pid
wait
"#
);

/// A service that leaves processes which ignore SIGTERM and one that leaves the process group.
pub const STUBBORN_SCRIPT: &str = concat!(
    script_prelude!(),
    r#"sh -c 'trap "" TERM; echo "$(readlink /proc/self/ns/pid) $$ $(cut -d" " -f22 /proc/$$/stat)" > ignorer.pid; while :; do sleep 1; done' &
setsid sh -c 'echo "$(readlink /proc/self/ns/pid) $$ $(cut -d" " -f22 /proc/$$/stat)" > escaper.pid; exec sleep 1000' &
trap '' TERM
while :; do sleep 1; done
"#
);

/// The base of conf.yml of a test work dir (beside the engine's lines).
const BASE_CONF: &str = "grace: 2s\nupdate: {health: 1500ms}\n";

pub struct Work {
    pub engine: engines::Engine,
    /// Dropped before the work dir (the master, dropped before the work dir by the test, stopped its
    /// containers).
    containerd: Option<engines::ContainerdSide>,
    pub dir: tempfile::TempDir,
}

impl Default for Work {
    fn default() -> Self {
        Self::new()
    }
}

impl Work {
    /// A native work dir.
    pub fn new() -> Self {
        Self::with_engine(engines::Engine::Native).expect("the native engine runs anywhere")
    }

    /// A work dir whose master runs `engine`: the test services `svc` and `stubborn` as packages (native) or
    /// as images of an OCI layout in `lib/baetyl/oci` with a containerd of the work dir's own (containerd).
    /// None (after saying why, loudly) when containerd cannot run here ([`engines::containerd_skip`]).
    pub fn with_engine(engine: engines::Engine) -> Option<Self> {
        let containerd = match engine {
            engines::Engine::Native => None,
            engines::Engine::Containerd => {
                if engines::containerd_skip().is_some() {
                    return None;
                }
                Some(engines::ContainerdSide::start())
            }
        };
        let w = Work {
            engine,
            containerd,
            dir: test_dir("baetyl-test-"),
        };
        w.package("svc", SVC_SCRIPT);
        w.package("stubborn", STUBBORN_SCRIPT);
        if w.containerd.is_some() {
            engines::box_layout(
                &w.path().join("lib/baetyl/oci"),
                &[("svc", SVC_SCRIPT), ("stubborn", STUBBORN_SCRIPT)],
            );
        }
        w.conf("logger: {level: debug}\n");
        Some(w)
    }

    /// The work dir's containerd (containerd mode).
    pub fn containerd(&self) -> Option<&baetyl_testkit::containerd::Containerd> {
        self.containerd.as_ref().map(|c| &c.containerd)
    }

    /// Writes conf.yml: the engine's lines, `grace: 2s`, `update: {health: 1500ms}`, then `extra`.
    pub fn conf(&self, extra: &str) {
        self.write(
            "etc/baetyl/conf.yml",
            &format!(
                "{}{BASE_CONF}{extra}",
                engines::engine_conf(self.containerd.as_ref())
            ),
        );
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, text).expect("write");
        p
    }

    pub fn package(&self, name: &str, script: &str) {
        self.write(
            &format!("lib/baetyl/packages/{name}/package.yml"),
            "entry: run.sh\n",
        );
        let p = self.write(&format!("lib/baetyl/packages/{name}/run.sh"), script);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    pub fn app(&self, text: &str) {
        self.app_file("var/db/baetyl/application.yml", text);
    }

    /// Writes an application file at `rel`; in containerd mode every service whose image is one of the test
    /// scripts ([`engines::SCRIPT_IMAGES`]) also mounts the work dir at `/test-root` (text that is not an
    /// application is written as it is).
    pub fn app_file(&self, rel: &str, text: &str) -> PathBuf {
        if self.engine == engines::Engine::Native {
            return self.write(rel, text);
        }
        let Ok(mut app) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text) else {
            return self.write(rel, text);
        };
        let mount = serde_yaml_ng::Value::from(format!("./:{}", engines::TEST_ROOT_IN_CONTAINER));
        let mut changed = false;
        if let Some(services) = app
            .get_mut("services")
            .and_then(serde_yaml_ng::Value::as_mapping_mut)
        {
            for (_, svc) in services.iter_mut() {
                let Some(svc) = svc.as_mapping_mut() else {
                    continue;
                };
                let script = svc
                    .get("image")
                    .and_then(serde_yaml_ng::Value::as_str)
                    .is_some_and(|i| engines::SCRIPT_IMAGES.contains(&i));
                if !script {
                    continue;
                }
                let volumes = svc
                    .entry("volumes".into())
                    .or_insert_with(|| serde_yaml_ng::Value::Sequence(Vec::new()));
                if let Some(seq) = volumes.as_sequence_mut() {
                    seq.push(mount.clone());
                    changed = true;
                }
            }
        }
        if !changed {
            return self.write(rel, text);
        }
        self.write(rel, &serde_yaml_ng::to_string(&app).expect("yaml"))
    }

    pub fn instance_dir(&self, svc: &str, inst: &str) -> PathBuf {
        self.path()
            .join("var/run/baetyl/services")
            .join(svc)
            .join(inst)
    }

    /// Lines of the `starts` file: (instance, pid).
    pub fn starts(&self) -> Vec<(String, engines::PidRef)> {
        std::fs::read_to_string(self.path().join("starts"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (n, p) = l.split_once(' ')?;
                Some((n.to_string(), engines::PidRef::parse(p)?))
            })
            .collect()
    }

    /// What the processes of the instance whose main process is host pid `pid` are: its process group
    /// (native) or its PID namespace (containerd; read while `pid` lives).
    pub fn group_of(&self, pid: u32) -> engines::Group {
        match self.engine {
            engines::Engine::Native => engines::Group::Pgid(pid),
            engines::Engine::Containerd => engines::Group::PidNs(
                engines::PidRef::of_host(pid).unwrap_or_else(|| panic!("pid {pid} is not running")),
            ),
        }
    }

    /// The master API address a service was given (`BAETYL_MASTER_API_ADDRESS`), as the host reaches it: in
    /// containerd mode the socket is bound at `/run/baetyl/baetyl.sock` inside the container.
    pub fn api_address_on_host(&self, given: &str) -> Address {
        match self.engine {
            engines::Engine::Native => Address::parse(given).expect("address"),
            engines::Engine::Containerd => {
                assert_eq!(given, "unix:///run/baetyl/baetyl.sock");
                Address::Unix(self.path().join("var/run/baetyl.sock"))
            }
        }
    }

    pub fn env_of(&self, svc: &str, inst: &str) -> std::collections::BTreeMap<String, String> {
        std::fs::read_to_string(self.instance_dir(svc, inst).join("env"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                l.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect()
    }

    /// Waits until instance `inst` of `svc` has written its environment file and answers it.
    pub fn wait_env(
        &self,
        svc: &str,
        inst: &str,
        key: &str,
    ) -> std::collections::BTreeMap<String, String> {
        eventually(
            MASTER_START,
            &format!("{svc}/{inst} to write {key} into its env file"),
            || Some(self.env_of(svc, inst)).filter(|env| env.contains_key(key)),
        )
    }

    pub fn start_master(&self) -> Master {
        Master::start(self.path(), &[])
    }
}

/// A `baetyl master` process on a work dir; stopped with SIGTERM (so that it stops its services) when dropped.
pub struct Master {
    pub process: Process,
    pub workdir: PathBuf,
    pub log: PathBuf,
}

impl Master {
    /// Starts a master on `workdir` with extra environment `env` and waits until it logs that it is ready.
    pub fn start(workdir: &Path, env: &[(&str, &str)]) -> Master {
        let mut cmd = Command::new(baetyl_bin());
        cmd.args(["master", "-w"]).arg(workdir);
        Master::spawn(cmd, workdir, env)
    }

    /// Starts `cmd`, a master's command line on `workdir` (e.g. v1's `<workdir>/bin/baetyl start`), as
    /// [`Master::start`] does.
    pub fn spawn(mut cmd: Command, workdir: &Path, env: &[(&str, &str)]) -> Master {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let log = workdir.join(format!(
            "master-{}.log",
            STARTED.fetch_add(1, Ordering::SeqCst)
        ));
        let out = std::fs::File::create(&log).expect("log file");
        cmd.env("TEST_ROOT", workdir)
            .envs(env.iter().copied())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .stdin(Stdio::null());
        let process = Process::spawn(&mut cmd, "baetyl master")
            .expect("spawn baetyl master")
            .with_log(&log)
            .term_on_drop(Duration::from_secs(20));
        let mut m = Master {
            process,
            workdir: workdir.to_path_buf(),
            log,
        };
        // Ready, or exited (no point in waiting on): Some; still starting: None.
        let ready = poll(MASTER_START, || match m.process.try_status() {
            Some(status) => Some(Err(format!("it exited with {status}"))),
            None => m.log_text().contains("master ready").then_some(Ok(())),
        });
        if let Err(why) = ready.unwrap_or_else(|_| Err(format!("not within {MASTER_START:?}"))) {
            panic!("the master did not get ready: {why}\n{}", m.log_text());
        }
        m
    }

    pub fn log_text(&self) -> String {
        self.process.log_text()
    }

    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    pub fn client(&self) -> MasterClient {
        let token = std::fs::read_to_string(self.workdir.join("var/run/baetyl/operator.token"))
            .expect("operator token");
        self.anonymous()
            .with_credentials("baetyl-operator", token.trim())
    }

    pub fn anonymous(&self) -> MasterClient {
        MasterClient::new(Address::Unix(self.workdir.join("var/run/baetyl.sock")))
    }

    pub async fn inspect(&self) -> Value {
        self.client().inspect().await.expect("inspect")
    }

    /// The inspect entry of one instance.
    pub async fn instance(&self, svc: &str, inst: &str) -> Option<Value> {
        let v = self.inspect().await;
        v["services"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == svc)?["instances"]
            .as_array()?
            .iter()
            .find(|i| i["name"] == inst)
            .cloned()
    }

    /// The host pid of an instance's main process (native) or its container's first process (containerd).
    pub async fn pid_of(&self, svc: &str, inst: &str) -> Option<u32> {
        main_pid(&self.instance(svc, inst).await?)
    }

    /// The host pid ([`Master::pid_of`]) of an instance once it runs (a container may still be starting when
    /// the master says it is ready).
    pub async fn running_pid(&self, svc: &str, inst: &str) -> u32 {
        let v = self
            .wait_instance(svc, inst, "running", MASTER_START, |v| {
                v["status"] == "running"
            })
            .await;
        main_pid(&v).unwrap_or_else(|| panic!("{svc}/{inst} runs without a pid: {v}"))
    }

    /// Polls inspect until the instance satisfies `f`; panics with its last state and the master's log.
    pub async fn wait_instance(
        &self,
        svc: &str,
        inst: &str,
        what: &str,
        timeout: Duration,
        f: impl Fn(&Value) -> bool,
    ) -> Value {
        let f = &f;
        let got = poll_async(timeout, || async move {
            match self.instance(svc, inst).await {
                Some(v) if f(&v) => Ok(v),
                Some(v) => Err(format!("last state {v}")),
                None => Err("instance absent".to_string()),
            }
        })
        .await;
        got.unwrap_or_else(|last| {
            panic!(
                "{svc}/{inst}: timed out waiting for {what}; {}\nmaster log:\n{}",
                last.unwrap_or_default(),
                self.log_text()
            )
        })
    }

    /// SIGTERM and wait; answers the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        self.process.terminate(MASTER_STOP).code()
    }

    pub fn kill9(&mut self) {
        self.process.kill9();
    }
}

/// The host pid of an instance's inspect entry: its process (native) or its container's first process.
fn main_pid(v: &Value) -> Option<u32> {
    ["process", "container"]
        .iter()
        .find_map(|k| v[*k]["pid"].as_u64())
        .map(|p| p as u32)
}

/// Live processes whose process group is `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        // After the name: state, ppid, pgrp.
        if f.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid) && f.first() != Some(&"Z") {
            out.push(pid);
        }
    }
    out
}

pub fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A pid a test script recorded (`pid:[NS] PID`, see [`engines::PidRef`]).
pub fn read_pidref(path: &Path) -> Option<engines::PidRef> {
    engines::PidRef::parse(&std::fs::read_to_string(path).ok()?)
}

/// The hub config of the function tests (`etc/hubconf/service.yml`): a TCP listener on `port`, the `tester`
/// and `functions` principals with every topic, storage on the hub's data volume.
pub fn write_function_hub(w: &Work, port: u16) {
    w.write(
        "etc/hubconf/service.yml",
        &format!(
            "listen: [tcp://127.0.0.1:{port}]\nprincipals:\n  - {{username: tester, password: tester-password, permissions: [{{action: pub, permit: ['#']}}, {{action: sub, permit: ['#']}}]}}\n  - {{username: functions, password: functions-password, permissions: [{{action: pub, permit: ['#']}}, {{action: sub, permit: ['#']}}]}}\nstorage: {{dir: var/db/baetyl/data}}\n"
        ),
    );
}

/// The application of the poison-input tests and the fault-injection program: the hub (restarted when killed),
/// the function manager and the SQL runtime, with their configs (the hub's: [`write_function_hub`]): rule `rule-sql` runs `filter` (`select * where id < 10`) from `sql/in`
/// to `sql/out`, rule `rule-big` runs `triple` (`concat(s, s, s)`) from `big/in` to `big/out`, at QoS 1.
pub fn write_sql_rules(w: &Work, port: u16) {
    w.write(
        "etc/fconf/service.yml",
        &format!(
            r#"
hub: {{address: "tcp://127.0.0.1:{port}", username: functions, password: functions-password}}
rules:
  - clientid: rule-sql
    subscribe: {{topic: sql/in, qos: 1}}
    function: {{name: filter}}
    publish: {{topic: sql/out, qos: 1}}
  - clientid: rule-big
    subscribe: {{topic: big/in, qos: 1}}
    function: {{name: triple}}
    publish: {{topic: big/out, qos: 1}}
functions:
  - name: filter
    service: function-sql
  - name: triple
    service: function-sql
"#
        ),
    );
    write_function_hub(w, port);
    w.write(
        "etc/sqlconf/service.yml",
        "functions:\n  - name: filter\n    handler: \"select * where id < 10\"\n  - name: triple\n    handler: \"select concat(s, s, s) as s\"\n",
    );
    w.app(
        r#"
services:
  hub:
    image: baetyl-hub
    volumes: ["./etc/hubconf:/etc/baetyl", "./hubdata:/var/db/baetyl/data"]
    restart: {policy: always, backoff: {min: 200ms, max: 1s}}
  function-manager:
    image: baetyl-function-manager
    depends_on: [hub]
    volumes: ["./etc/fconf:/etc/baetyl"]
    restart: {policy: always, backoff: {min: 200ms, max: 1s}}
  function-sql:
    image: baetyl-function-sql
    replica: 0
    volumes: ["./etc/sqlconf:/etc/baetyl"]
    restart: {policy: "no"}
"#,
    );
}
