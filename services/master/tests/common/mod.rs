//! What the native engine's tests share: a work dir with a package written by the test, a directory
//! outside it to check that nothing lands there, the engine, and instance specs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use baetyl_master::config::{Application, MasterConfig};
use baetyl_master::engine::native::NativeEngine;
use baetyl_master::engine::{InstanceSpec, ResolvedMount};
use baetyl_sdk::config::ConfigFile;

/// The package `sleeper`: runs the shell code in $PROBE (in its instance dir), then sleeps.
pub const SLEEPER: &str =
    "#!/bin/sh\nif [ -n \"$PROBE\" ]; then eval \"$PROBE\"; fi\nexec sleep 1000\n";

/// The text of `path` once it exists and ends with a newline (written whole by a probe), within 10 s.
pub fn wait_text(path: &Path) -> String {
    baetyl_testkit::eventually(
        std::time::Duration::from_secs(10),
        &format!("{} to be written", path.display()),
        || {
            std::fs::read_to_string(path)
                .ok()
                .filter(|t| t.ends_with('\n'))
        },
    )
}

pub struct Work {
    pub dir: tempfile::TempDir,
    pub outside: tempfile::TempDir,
}

impl Work {
    pub fn new() -> Work {
        let w = Work {
            dir: tempfile::tempdir().expect("dir"),
            outside: tempfile::tempdir().expect("dir"),
        };
        w.write("lib/baetyl/packages/sleeper/package.yml", "entry: run.sh\n");
        w.write("lib/baetyl/packages/sleeper/run.sh", SLEEPER);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            w.path("lib/baetyl/packages/sleeper/run.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .expect("chmod");
        w
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("dir");
        std::fs::write(&p, text).expect("write");
        p
    }

    pub fn engine(&self) -> NativeEngine {
        self.engine_with("")
    }

    /// The engine with `conf` as conf.yml.
    pub fn engine_with(&self, conf: &str) -> NativeEngine {
        let cfg = MasterConfig::parse(conf, Path::new("conf.yml")).expect("conf.yml");
        NativeEngine::new(self.dir.path(), &cfg, Vec::new()).expect("engine")
    }

    /// An instance `s/s` of the sleeper with `mounts` (host, target).
    pub fn spec(&self, mounts: &[(&Path, &str)]) -> InstanceSpec {
        self.spec_of("s: {image: sleeper}", mounts)
    }

    /// An instance `s/s` of the service `s` written as `service` (YAML) in an application.
    pub fn spec_of(&self, service: &str, mounts: &[(&Path, &str)]) -> InstanceSpec {
        let app = Application::parse(
            &format!("services:\n  {service}\n"),
            Path::new("application.yml"),
        )
        .expect("app");
        InstanceSpec {
            service: "s".into(),
            instance: "s".into(),
            spec: app.services["s"].clone(),
            env: Default::default(),
            mounts: mounts
                .iter()
                .map(|(host, target)| ResolvedMount {
                    host: host.to_path_buf(),
                    target: target.to_string(),
                    read_only: false,
                    shared: false,
                    nested: Vec::new(),
                })
                .collect(),
            user: None,
            views: Vec::new(),
        }
    }

    pub fn instance_dir(&self) -> PathBuf {
        self.path("var/run/baetyl/services/s/s")
    }

    /// What is in the outside dir, recursively (symlinks listed, not followed).
    pub fn outside_entries(&self) -> Vec<String> {
        pub fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
                let p = e.path();
                out.push(p.strip_prefix(base).expect("prefix").display().to_string());
                if e.file_type().expect("type").is_dir() {
                    walk(&p, base, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(self.outside.path(), self.outside.path(), &mut out);
        out.sort();
        out
    }
}
