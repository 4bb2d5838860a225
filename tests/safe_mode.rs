//! `baetyl master` in safe mode, as `baetyl init` starts it when the data partition cannot be used: a fresh
//! (tmpfs) work dir and `BAETYL_SAFE_MODE` naming init's reason file. Nothing may run: in particular not the
//! built-in example, whose hub would serve a well-known password on 0.0.0.0:1883.

use std::time::Duration;

use baetyl_e2e::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safe_mode_runs_no_application_reports_why_and_refuses_app_updates() {
    let w = Work::new();
    let marker = w.write(
        "run/safe-mode.json",
        r#"{"reason": "the data partition /dev/vda4 (baetyl-data) failed its check: e2fsck exit status 4: errors left uncorrected", "device": "/dev/vda4", "label": "baetyl-data", "detail": "UNEXPECTED INCONSISTENCY", "remedy": "reflash the medium"}"#,
    );
    let m = Master::start(
        w.path(),
        &[(
            baetyl_sdk::env::SAFE_MODE,
            marker.to_str().expect("utf-8 path"),
        )],
    );

    // No application: not installed, not running.
    assert!(
        !w.path().join("var/db/baetyl/application.yml").exists(),
        "the built-in example was installed in safe mode\n{}",
        m.log_text()
    );
    let v = m.inspect().await;
    assert_eq!(v["services"].as_array().map(Vec::len), Some(0), "{v}");
    assert_eq!(v["safe_mode"]["device"], "/dev/vda4", "{v}");
    let error = v["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("safe mode: the data partition /dev/vda4"),
        "{error}"
    );
    assert!(error.contains("reflash the medium"), "{error}");
    assert!(
        m.log_text().contains("safe mode: the data partition"),
        "{}",
        m.log_text()
    );

    // An application update would run services without their data: refused with the reason.
    w.write(
        "var/db/new/application.yml",
        "version: v1\nservices:\n  s: {image: svc}\n",
    );
    let (status, body) = m
        .client()
        .call(
            "PUT",
            "/v1/system/update",
            Some(br#"{"type":"APP","path":"var/db/new/application.yml"}"#.to_vec()),
        )
        .await
        .expect("update call");
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("application updates are refused"), "{body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        m.inspect().await["services"].as_array().map(Vec::len),
        Some(0)
    );
}
