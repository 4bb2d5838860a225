//! The native engine with real files and processes: nothing an application or a service planted makes it
//! create, replace or delete anything outside the instance's own directory and the allowed volume roots.

use std::path::{Path, PathBuf};
use std::time::Duration;

use baetyl_master::config::{Application, MasterConfig};
use baetyl_master::engine::native::NativeEngine;
use baetyl_master::engine::{Engine, InstanceSpec, ResolvedMount};
use baetyl_sdk::config::ConfigFile;

struct Work {
    dir: tempfile::TempDir,
    outside: tempfile::TempDir,
}

impl Work {
    fn new() -> Work {
        let w = Work {
            dir: tempfile::tempdir().expect("dir"),
            outside: tempfile::tempdir().expect("dir"),
        };
        w.write("lib/baetyl/packages/sleeper/package.yml", "entry: run.sh\n");
        w.write(
            "lib/baetyl/packages/sleeper/run.sh",
            "#!/bin/sh\nexec sleep 1000\n",
        );
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            w.path("lib/baetyl/packages/sleeper/run.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .expect("chmod");
        w
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("dir");
        std::fs::write(&p, text).expect("write");
        p
    }

    fn engine(&self) -> NativeEngine {
        NativeEngine::new(self.dir.path(), &MasterConfig::default(), Vec::new()).expect("engine")
    }

    /// An instance `s/s` of the sleeper with `mounts` (host, target).
    fn spec(&self, mounts: &[(&Path, &str)]) -> InstanceSpec {
        let app = Application::parse(
            "services:\n  s: {image: sleeper}\n",
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
                })
                .collect(),
        }
    }

    fn instance_dir(&self) -> PathBuf {
        self.path("var/run/baetyl/services/s/s")
    }

    /// What is in the outside dir, recursively (symlinks listed, not followed).
    fn outside_entries(&self) -> Vec<String> {
        fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
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

async fn start_and_stop(engine: &NativeEngine, spec: InstanceSpec) -> Result<(), String> {
    match engine.start(spec).await {
        Ok(r) => {
            r.stop(Duration::from_secs(2)).await;
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test]
async fn a_symlink_planted_in_the_instance_dir_does_not_lead_outside() {
    let w = Work::new();
    let volume = w.path("var/db/baetyl/volumes/v");
    // A service planted `data -> <outside>` in its instance dir; the next start links a volume at /data/sub.
    std::fs::create_dir_all(w.instance_dir()).expect("dir");
    std::os::unix::fs::symlink(w.outside.path(), w.instance_dir().join("data")).expect("symlink");
    start_and_stop(&w.engine(), w.spec(&[(&volume, "/data/sub")]))
        .await
        .expect("start");
    assert!(w.outside_entries().is_empty(), "{:?}", w.outside_entries());
    let data = std::fs::symlink_metadata(w.instance_dir().join("data")).expect("data");
    assert!(
        data.is_dir(),
        "the planted symlink was replaced by a directory"
    );
    let link = std::fs::read_link(w.instance_dir().join("data/sub")).expect("volume link");
    assert_eq!(link, volume.canonicalize().expect("canonical"));
}

#[tokio::test]
async fn a_target_climbing_out_of_the_instance_dir_is_refused() {
    let w = Work::new();
    let volume = w.path("var/db/baetyl/volumes/v");
    let victim = w.outside.path().join("victim");
    std::os::unix::fs::symlink("/nowhere", &victim).expect("symlink");
    let climb = format!("/../../../../../../../..{}", victim.display());
    let e = start_and_stop(&w.engine(), w.spec(&[(&volume, &climb)]))
        .await
        .expect_err("climbing target");
    assert!(e.contains("`..`"), "{e}");
    assert_eq!(
        std::fs::read_link(&victim).expect("victim"),
        PathBuf::from("/nowhere"),
        "the symlink outside was replaced"
    );
    let e = start_and_stop(&w.engine(), w.spec(&[(&volume, "/")]))
        .await
        .expect_err("root target");
    assert!(e.contains("inside the service"), "{e}");
    assert_eq!(w.outside_entries(), ["victim"]);
}

#[tokio::test]
async fn a_volume_path_through_a_planted_symlink_is_refused() {
    let w = Work::new();
    std::fs::create_dir_all(w.path("var/db/baetyl/volumes")).expect("dir");
    std::os::unix::fs::symlink(w.outside.path(), w.path("var/db/baetyl/volumes/evil"))
        .expect("symlink");
    let through = w.path("var/db/baetyl/volumes/evil/data");
    let e = start_and_stop(&w.engine(), w.spec(&[(&through, "/data")]))
        .await
        .expect_err("escaping volume");
    assert!(e.contains("outside the work dir"), "{e}");
    assert!(w.outside_entries().is_empty(), "{:?}", w.outside_entries());
    // A planted symlink in place of the service's directory of instances.
    let _ = std::fs::remove_dir_all(w.path("var/run/baetyl/services/s"));
    std::fs::create_dir_all(w.path("var/run/baetyl/services")).expect("dir");
    std::os::unix::fs::symlink(w.outside.path(), w.path("var/run/baetyl/services/s"))
        .expect("symlink");
    let inside = w.path("var/db/baetyl/volumes/fine");
    let e = start_and_stop(&w.engine(), w.spec(&[(&inside, "/data")]))
        .await
        .expect_err("escaping instance dir");
    assert!(e.contains("outside the work dir"), "{e}");
    assert!(w.outside_entries().is_empty(), "{:?}", w.outside_entries());
}
