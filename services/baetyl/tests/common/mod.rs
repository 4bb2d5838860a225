//! Helpers for end-to-end tests of `baetyl master`: a temp work dir with packages written by the test,
//! a real master process, an API client with the operator token, and polling with deadlines.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use baetyl_sdk::client::{Address, MasterClient};
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_baetyl");

/// A test service: records each start (instance name and pid) in `<work>/starts`, its environment in
/// `env` in its own work dir, then exits with $EXIT_CODE or runs a child until stopped.
pub const SVC_SCRIPT: &str = r#"#!/bin/sh
echo "$BAETYL_SERVICE_INSTANCE_NAME $$" >> "$TEST_ROOT/starts"
env | grep '^BAETYL_' | sort > env
if [ -n "$EXIT_CODE" ]; then exit "$EXIT_CODE"; fi
sleep 1000 &
echo "$!" > child.pid
wait
"#;

/// A service that leaves processes which ignore SIGTERM and one that leaves the process group.
pub const STUBBORN_SCRIPT: &str = r#"#!/bin/sh
echo "$BAETYL_SERVICE_INSTANCE_NAME $$" >> "$TEST_ROOT/starts"
sh -c 'trap "" TERM; echo $$ > ignorer.pid; while :; do sleep 1; done' &
setsid sh -c 'echo $$ > escaper.pid; exec sleep 1000' &
trap '' TERM
while :; do sleep 1; done
"#;

pub struct Work {
    pub dir: tempfile::TempDir,
}

/// A temporary directory, removed at the end unless BAETYL_TEST_KEEP is set (logs, configs and consoles stay
/// for a look after a failure; the path is printed).
pub fn test_dir(prefix: &str) -> tempfile::TempDir {
    let keep = std::env::var_os("BAETYL_TEST_KEEP").is_some();
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .disable_cleanup(keep)
        .tempdir()
        .expect("temp dir");
    if keep {
        eprintln!("keeping {}", dir.path().display());
    }
    dir
}

impl Work {
    pub fn new() -> Self {
        let w = Work {
            dir: test_dir("baetyl-test-"),
        };
        w.package("svc", SVC_SCRIPT);
        w.package("stubborn", STUBBORN_SCRIPT);
        w.write(
            "etc/baetyl/conf.yml",
            "grace: 2s\nupdate: {health: 1500ms}\nlogger: {level: debug}\n",
        );
        w
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
        self.write("var/db/baetyl/application.yml", text);
    }

    pub fn instance_dir(&self, svc: &str, inst: &str) -> PathBuf {
        self.path()
            .join("var/run/baetyl/services")
            .join(svc)
            .join(inst)
    }

    /// Lines of the `starts` file: (instance, pid).
    pub fn starts(&self) -> Vec<(String, u32)> {
        std::fs::read_to_string(self.path().join("starts"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (n, p) = l.split_once(' ')?;
                Some((n.to_string(), p.parse().ok()?))
            })
            .collect()
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

    pub fn start_master(&self) -> Master {
        Master::start(self.path())
    }
}

pub struct Master {
    pub child: Child,
    pub workdir: PathBuf,
    pub log: PathBuf,
}

impl Master {
    pub fn start(workdir: &Path) -> Master {
        let log = workdir.join(format!(
            "master-{}.log",
            Instant::now().elapsed().as_nanos() + rand_suffix()
        ));
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new(BIN)
            .args(["master", "-w"])
            .arg(workdir)
            .env("TEST_ROOT", workdir)
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn baetyl master");
        let m = Master {
            child,
            workdir: workdir.to_path_buf(),
            log,
        };
        wait_until("the master is ready", Duration::from_secs(30), || {
            m.log_text().contains("master ready")
        });
        m
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
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

    pub async fn pid_of(&self, svc: &str, inst: &str) -> Option<u32> {
        self.instance(svc, inst).await?["process"]["pid"]
            .as_u64()
            .map(|p| p as u32)
    }

    pub async fn wait_instance(
        &self,
        svc: &str,
        inst: &str,
        what: &str,
        timeout: Duration,
        f: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.instance(svc, inst).await {
                if f(&v) {
                    return v;
                }
                if Instant::now() > deadline {
                    panic!(
                        "{svc}/{inst}: timed out waiting for {what}; last state {v}\nmaster log:\n{}",
                        self.log_text()
                    );
                }
            } else if Instant::now() > deadline {
                panic!(
                    "{svc}/{inst}: timed out waiting for {what}; instance absent\nmaster log:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM and wait; answers the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "master did not exit within 30 s of SIGTERM\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether a process exists (zombies count as gone).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().chars().next())
        })
        .flatten()
        .is_some_and(|state| state != 'Z' && state != 'X')
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
