//! Descriptor limits with real processes: the master raises its own soft limit to the hard one, and each
//! instance gets `ulimits.nofile` from its service, or by default a soft limit of the master's hard limit
//! capped at 65536, so a service such as the hub can size its connection cap below what it really has.

mod common;

use std::time::Duration;

use baetyl_master::engine::Engine;
use common::{Work, wait_text};

fn limits() -> (u64, u64) {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let r = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) };
    assert_eq!(r, 0);
    (l.rlim_cur, l.rlim_max)
}

fn set_soft(soft: u64) {
    let (_, hard) = limits();
    let l = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the struct we own.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) }, 0);
}

const PROBE: &str = "echo \"$(ulimit -Sn) $(ulimit -Hn)\" > nofile";

/// The (soft, hard) descriptor limits an instance of `service` (YAML) got.
async fn instance_limits(w: &Work, service: &str) -> (u64, u64) {
    let mut spec = w.spec_of(service, &[]);
    spec.env.insert("PROBE".into(), PROBE.into());
    let running = w.engine().start(spec).await.expect("start");
    let text = wait_text(&w.instance_dir().join("nofile"));
    running.stop(Duration::from_secs(2)).await;
    let _ = std::fs::remove_file(w.instance_dir().join("nofile"));
    let mut parts = text
        .split_whitespace()
        .map(|n| n.parse::<u64>().expect("number"));
    (parts.next().expect("soft"), parts.next().expect("hard"))
}

#[tokio::test]
async fn the_master_raises_its_soft_limit_and_gives_services_theirs() {
    // As a process starts on many systems: a low soft limit under a higher hard one.
    set_soft(512);
    let (_, hard) = limits();
    let raised = baetyl_master::limits::raise_nofile().expect("raise");
    assert_eq!(raised, (hard, hard));
    assert_eq!(limits(), (hard, hard));
    set_soft(512);

    let w = Work::new();
    assert_eq!(
        instance_limits(&w, "s: {image: sleeper}").await,
        (hard.min(65536), hard),
        "default: the master's hard limit, at most 65536, whatever the master's own soft limit"
    );
    assert_eq!(
        instance_limits(
            &w,
            "s: {image: sleeper, ulimits: {nofile: {soft: 300, hard: 400}}}"
        )
        .await,
        (300, 400)
    );
    assert_eq!(
        instance_limits(&w, "s: {image: sleeper, ulimits: {nofile: 700}}").await,
        (700, 700)
    );
}

#[tokio::test]
async fn a_limit_above_what_the_system_allows_is_refused_before_the_start() {
    let w = Work::new();
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .expect("nr_open")
        .trim()
        .parse()
        .expect("number");
    let spec = w.spec_of(
        &format!(
            "s: {{image: sleeper, ulimits: {{nofile: {}}}}}",
            nr_open + 1
        ),
        &[],
    );
    let e = w
        .engine()
        .prepare("s", &spec.spec)
        .await
        .expect_err("too high");
    assert!(
        e.to_string().contains("ulimits.nofile") && e.to_string().contains("nr_open"),
        "{e}"
    );
}
