//! The supervisor on the fake engine, under tokio's paused clock: restart policies, backoff, `retry.max`,
//! dependency order, the grace kill and dynamic instances, each in a few milliseconds of real time.

use std::collections::BTreeMap;
use std::time::Duration;

use baetyl_sdk::env;

use super::Status;
use crate::access::Caller;
use crate::engine::Exit;
use crate::engine::fake::{Behaviour, What};
use crate::error::MasterError;
use crate::test_rig::{Rig, ms};

#[tokio::test(start_paused = true)]
async fn policy_always_restarts_every_end_with_growing_backoff_up_to_max() {
    let r = Rig::new("");
    r.run("services:\n  s: {image: svc, restart: {policy: always, backoff: {min: 1s, max: 4s, factor: 2}}}\n")
        .await;
    r.starts("s", "s", 1).await;
    // A clean exit, a crash, a failure code: `always` restarts each of them.
    let ends = [
        Exit::Code(0),
        Exit::Signal(9),
        Exit::Code(3),
        Exit::Code(3),
        Exit::Code(3),
    ];
    for (i, exit) in ends.iter().enumerate() {
        let told = match exit {
            Exit::Code(c) => r.fake.exit("s", "s", *c),
            Exit::Signal(sig) => r.fake.crash("s", "s", *sig),
            Exit::Error(_) => unreachable!(),
        };
        assert!(told, "s runs before end {i}");
        r.starts("s", "s", i + 2).await;
    }
    assert_eq!(
        r.restart_delays("s", "s"),
        [ms(1000), ms(2000), ms(4000), ms(4000), ms(4000)]
    );
    let st = r.status("s", "s", Status::Running).await;
    assert_eq!((st.restarts, st.starts), (5, 6));
    assert_eq!(st.last_exit.as_deref(), Some("exited with code 3"));
}

#[tokio::test(start_paused = true)]
async fn backoff_and_the_retry_count_start_over_after_a_healthy_run() {
    let r = Rig::new("");
    r.run("services:\n  s: {image: svc, restart: {retry: {max: 3}, backoff: {min: 1s, max: 4s, factor: 2}}}\n")
        .await;
    for n in 1..=3 {
        r.starts("s", "s", n).await;
        r.fake.crash("s", "s", 9);
    }
    r.starts("s", "s", 4).await;
    // Three restarts in a row so far, with the delay at its cap: a run of 10 s (more than max 4s, and the
    // 10 s floor) makes the next failure the first of a new streak.
    tokio::time::sleep(Duration::from_secs(10)).await;
    r.fake.crash("s", "s", 9);
    r.starts("s", "s", 5).await;
    assert_eq!(
        r.restart_delays("s", "s"),
        [ms(1000), ms(2000), ms(4000), ms(1000)]
    );
    let st = r.status("s", "s", Status::Running).await;
    assert_eq!(st.restarts, 4, "retry.max counts restarts in a row only");
}

#[tokio::test(start_paused = true)]
async fn policy_on_failure_restarts_failures_only() {
    let r = Rig::new("");
    r.run("services:\n  clean: {image: svc, restart: {policy: on-failure}}\n  bad: {image: svc, restart: {policy: on-failure}}\n")
        .await;
    r.starts("clean", "clean", 1).await;
    r.starts("bad", "bad", 1).await;
    r.fake.exit("clean", "clean", 0);
    r.fake.exit("bad", "bad", 2);
    let st = r.status("clean", "clean", Status::Exited).await;
    assert_eq!((st.restarts, st.starts), (0, 1));
    r.starts("bad", "bad", 2).await;
    assert_eq!(r.restart_delays("bad", "bad"), [ms(1000)]);
    // Nothing restarts the clean one later either.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(r.fake.starts("clean", "clean"), 1);
}

#[tokio::test(start_paused = true)]
async fn policy_no_never_restarts() {
    let r = Rig::new("");
    r.run("services:\n  crashes: {image: svc, restart: {policy: \"no\"}}\n  ends: {image: svc, restart: {policy: \"no\"}}\n")
        .await;
    r.starts("crashes", "crashes", 1).await;
    r.starts("ends", "ends", 1).await;
    r.fake.crash("crashes", "crashes", 9);
    r.fake.exit("ends", "ends", 0);
    let st = r.status("crashes", "crashes", Status::Failed).await;
    assert_eq!(
        st.last_exit.as_deref(),
        Some("killed by signal 9 (SIGKILL)")
    );
    r.status("ends", "ends", Status::Exited).await;
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(r.fake.starts("crashes", "crashes"), 1);
    assert_eq!(r.fake.starts("ends", "ends"), 1);
}

#[tokio::test(start_paused = true)]
async fn retry_max_gives_up_after_that_many_restarts_in_a_row() {
    let r = Rig::new("");
    r.fake.behave(
        "crasher",
        Behaviour::Exit {
            code: 3,
            after: Duration::from_millis(10),
        },
    );
    r.run("services:\n  c: {image: crasher, restart: {policy: on-failure, retry: {max: 2}, backoff: {min: 100ms, max: 200ms}}}\n")
        .await;
    let st = r.status("c", "c", Status::Failed).await;
    assert_eq!((st.restarts, st.starts), (2, 3), "1 start + 2 restarts");
    assert_eq!(st.last_exit.as_deref(), Some("exited with code 3"));
    assert_eq!(r.restart_delays("c", "c"), [ms(100), ms(200)]);
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(r.fake.starts("c", "c"), 3);
}

#[tokio::test(start_paused = true)]
async fn a_start_that_fails_counts_as_a_failure() {
    let r = Rig::new("");
    r.fake.behave("broken", Behaviour::FailStart);
    r.run("services:\n  b: {image: broken, restart: {retry: {max: 1}, backoff: {min: 500ms}}}\n")
        .await;
    let st = r.status("b", "b", Status::Failed).await;
    assert_eq!((st.starts, st.restarts), (0, 1));
    assert!(
        st.last_exit
            .as_deref()
            .is_some_and(|e| e.contains("told to fail")),
        "{st:?}"
    );
    assert_eq!(r.restart_delays("b", "b"), [ms(500)]);
}

#[tokio::test(start_paused = true)]
async fn services_start_in_dependency_order_and_stop_in_reverse() {
    let r = Rig::new("");
    // Alphabetical order is the reverse of the dependency order.
    r.run("services:\n  a: {image: svc, depends_on: [b]}\n  b: {image: svc, depends_on: [c], replica: 2}\n  c: {image: svc}\n  d: {image: svc, depends_on: [a, c]}\n")
        .await;
    // The two instances of b start together and stop together, in either order.
    let mut started = r.fake.keys_of(&What::Started);
    started[1..3].sort();
    assert_eq!(started, ["c/c", "b/b", "b/b.i1", "a/a", "d/d"]);
    r.sup.stop_all().await;
    let mut stopped = r.fake.keys_of(&What::Terminated);
    stopped[2..4].sort();
    assert_eq!(stopped, ["d/d", "a/a", "b/b", "b/b.i1", "c/c"]);
    assert!(r.fake.live().is_empty());
    assert_eq!(
        r.fake.events_of("c", "c").last().map(|e| &e.what),
        Some(&What::Ended(Exit::Signal(15)))
    );
}

#[tokio::test(start_paused = true)]
async fn services_that_do_not_depend_on_each_other_start_together() {
    let r = Rig::new("");
    r.fake.behave("slow", Behaviour::SlowStart(ms(2000)));
    let t0 = tokio::time::Instant::now();
    r.run("services:\n  a: {image: slow}\n  b: {image: slow}\n  c: {image: slow, depends_on: [a, b]}\n  d: {image: svc, depends_on: [c]}\n")
        .await;
    let at = |k: &str| {
        let (s, i) = k.split_once('/').unwrap();
        r.fake
            .events_of(s, i)
            .iter()
            .find(|e| e.what == What::Started)
            .map(|e| e.at - t0)
    };
    // a and b together (2 s, not 4), then c once both have started, then d at once.
    assert_eq!(at("a/a"), Some(ms(2000)));
    assert_eq!(at("b/b"), Some(ms(2000)));
    assert_eq!(at("c/c"), Some(ms(4000)));
    assert_eq!(at("d/d"), Some(ms(4000)));
}

#[tokio::test(start_paused = true)]
async fn what_ignores_sigterm_is_killed_after_grace() {
    let r = Rig::new("grace: 3s\n");
    r.fake.behave("stubborn", Behaviour::IgnoreTerm);
    r.run(
        "services:\n  stubborn: {image: stubborn}\n  plain: {image: svc, depends_on: [stubborn]}\n",
    )
    .await;
    r.sup.stop_all().await;
    assert_eq!(
        r.fake.keys_of(&What::Terminated),
        ["plain/plain", "stubborn/stubborn"],
        "plain (which depends on stubborn) stops first"
    );
    assert_eq!(r.fake.keys_of(&What::Killed), ["stubborn/stubborn"]);
    let ev = r.fake.events_of("stubborn", "stubborn");
    let at = |w: &What| ev.iter().find(|e| &e.what == w).map(|e| e.at);
    let (term, kill) = (at(&What::Terminated), at(&What::Killed));
    assert_eq!(kill.zip(term).map(|(k, t)| k - t), Some(ms(3000)), "{ev:?}");
}

#[tokio::test(start_paused = true)]
async fn dynamic_instances_start_stop_and_get_no_token() {
    let r = Rig::new("");
    r.run("services:\n  manager: {image: svc}\n  runtime: {image: svc, replica: 0, restart: {policy: \"no\"}}\n")
        .await;
    // A static instance gets the service's token, which authenticates it.
    let manager = r.fake.spec_of("manager", "manager").expect("manager spec");
    let token = &manager.env[env::SERVICE_TOKEN];
    assert!(r.sup.check_token("manager", token));
    assert!(!r.sup.check_token("runtime", token));

    let extra: BTreeMap<String, String> = [
        (env::SERVICE_INSTANCE_ADDRESS, "127.0.0.1:50999"),
        (env::SERVICE_TOKEN, "smuggled"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    r.sup
        .start_dynamic("runtime", "runtime-1", extra.clone(), &as_manager())
        .await
        .expect("dynamic start");
    let spec = r
        .fake
        .spec_of("runtime", "runtime-1")
        .expect("runtime spec");
    assert!(!spec.env.contains_key(env::SERVICE_TOKEN), "{:?}", spec.env);
    assert_eq!(spec.env[env::SERVICE_INSTANCE_ADDRESS], "127.0.0.1:50999");
    assert_eq!(spec.env[env::SERVICE_INSTANCE_NAME], "runtime-1");
    let st = r.status("runtime", "runtime-1", Status::Running).await;
    assert!(st.dynamic);

    // v1: a start of a running instance restarts it, with the environment of the new start.
    let first = r.fake.live_id("runtime", "runtime-1").expect("running");
    let mut moved = extra.clone();
    moved.insert(
        env::SERVICE_INSTANCE_ADDRESS.to_string(),
        "127.0.0.1:51000".to_string(),
    );
    r.sup
        .start_dynamic("runtime", "runtime-1", moved, &as_manager())
        .await
        .expect("a start of a running instance restarts it");
    assert_eq!(r.fake.starts("runtime", "runtime-1"), 2);
    let second = r
        .fake
        .live_id("runtime", "runtime-1")
        .expect("running again");
    assert_ne!(first, second, "a new process");
    let whats: Vec<What> = r
        .fake
        .events_of("runtime", "runtime-1")
        .into_iter()
        .map(|e| e.what)
        .collect();
    let stopped = whats.iter().position(|w| *w == What::Terminated);
    let restarted = whats.iter().rposition(|w| *w == What::Started);
    assert!(
        stopped.is_some() && stopped < restarted,
        "the old one is stopped before the new one starts: {whats:?}"
    );
    let spec = r.fake.spec_of("runtime", "runtime-1").expect("spec");
    assert_eq!(spec.env[env::SERVICE_INSTANCE_ADDRESS], "127.0.0.1:51000");
    let ghost = r
        .sup
        .start_dynamic("ghost", "g1", BTreeMap::new(), &as_manager())
        .await;
    assert!(
        matches!(&ghost, Err(e @ MasterError::ServiceNotRunning { .. }) if e.to_string().contains("ghost")),
        "{ghost:?}"
    );
    let bad = r
        .sup
        .start_dynamic("runtime", "../x", BTreeMap::new(), &as_manager())
        .await;
    assert!(
        matches!(bad, Err(MasterError::InvalidInstanceName { .. })),
        "{bad:?}"
    );

    r.sup
        .stop_dynamic("runtime", "runtime-1", &as_manager())
        .await
        .expect("dynamic stop");
    assert_eq!(r.fake.live_id("runtime", "runtime-1"), None);
    assert!(
        r.sup
            .wait_for_state("runtime", "runtime-1", |_| true)
            .await
            .is_none(),
        "a stopped dynamic instance is forgotten"
    );
    let again = r
        .sup
        .stop_dynamic("runtime", "runtime-1", &as_manager())
        .await;
    assert!(
        matches!(again, Err(MasterError::UnknownInstance { .. })),
        "{again:?}"
    );

    // One that ended by itself may be started again under its name.
    r.sup
        .start_dynamic("runtime", "runtime-2", BTreeMap::new(), &as_manager())
        .await
        .expect("start");
    r.fake.exit("runtime", "runtime-2", 0);
    r.status("runtime", "runtime-2", Status::Exited).await;
    r.sup
        .start_dynamic("runtime", "runtime-2", BTreeMap::new(), &as_manager())
        .await
        .expect("start again");
    assert_eq!(r.fake.starts("runtime", "runtime-2"), 2);
}

#[tokio::test(start_paused = true)]
async fn a_service_whose_image_does_not_resolve_is_not_started() {
    let r = Rig::new("");
    r.fake.unresolvable("missing");
    r.run("services:\n  gone: {image: missing}\n  fine: {image: svc}\n")
        .await;
    assert_eq!(r.fake.keys_of(&What::Started), ["fine/fine"]);
    let e = r.sup.error();
    assert!(
        e.contains("cannot start service `gone`") && e.contains("image `missing`"),
        "{e}"
    );
}

fn as_manager() -> Caller {
    Caller::Service("manager".into())
}
