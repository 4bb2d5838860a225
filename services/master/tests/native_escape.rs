//! The native engine with real files and processes: nothing an application or a service planted makes it
//! create, replace or delete anything outside the instance's own directory and the allowed volume roots.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use baetyl_master::engine::native::NativeEngine;
use baetyl_master::engine::{Engine, InstanceSpec};
use common::Work;

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
