//! The timer against Debian's mosquitto as the hub.

mod common;

use baetyl_sdk::config::ConfigFile;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Result;
use baetyl_remote::timer::{self, TimerConfig};
use baetyl_testkit::mosquitto::Mosquitto;
use baetyl_testkit::mqtt::texts;
use baetyl_testkit::process::{Process, rerun_test};
use common::peer;
use rumqttc::QoS;
use serde_json::Value;

const CHILD_ENV: &str = "BAETYL_TIMER_TEST_CHILD_CONFIG";

/// Not a test of its own: `baetyl timer` as a separate process, for the signal test below.
#[test]
fn child_timer_process() {
    let Ok(config) = std::env::var(CHILD_ENV) else {
        return;
    };
    let result = timer::run_cli(timer::TimerArgs {
        config: PathBuf::from(config),
        log_format: None,
    });
    std::process::exit(if result.is_ok() { 0 } else { 1 });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timer_process_publishes_text_and_exits_0_on_sigterm() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let hub = Mosquitto::start(&tmp.path().join("hub"))?;
    let path = tmp.path().join("timer.yml");
    std::fs::write(
        &path,
        format!(
            "hub: {{address: '{}'}}\ntimer: {{interval: 100ms}}\n\
             publish: {{topic: clock, payload: 'tick {{{{seq}}}} of {{{{topic}}}}'}}\n",
            hub.address()
        ),
    )?;
    let mut sub = peer(hub.port, "sub", true, &[("clock", QoS::AtMostOnce)]).await?;
    let mut cmd = rerun_test("child_timer_process");
    cmd.env(CHILD_ENV, &path)
        .env_remove(baetyl_sdk::env::SERVICE_NAME)
        .stdout(Stdio::null());
    let mut child = Process::spawn(&mut cmd, "the timer")?;
    let got = sub.recv_n(3, Duration::from_secs(30)).await?;
    let texts = texts(&got);
    let first: u64 = texts[0]
        .strip_prefix("tick ")
        .and_then(|r| r.strip_suffix(" of clock"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected payload {texts:?}"));
    assert_eq!(
        texts,
        (first..first + 3)
            .map(|n| format!("tick {n} of clock"))
            .collect::<Vec<_>>()
    );
    let status = child.terminate(Duration::from_secs(30));
    assert!(status.success(), "exit status {status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timer_publishes_templated_payload_on_its_interval() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let hub = Mosquitto::start(&tmp.path().join("hub"))?;
    let path = tmp.path().join("timer.yml");
    std::fs::write(
        &path,
        format!(
            "hub: {{address: '{}', clientid: timer-1}}\ntimer: {{interval: 200ms}}\n\
             publish: {{topic: timer/tick, qos: 1, payload: {{id: 7, n: '{{{{seq}}}}', ms: '{{{{time_ms}}}}', by: '{{{{clientid}}}}'}}}}\n",
            hub.address()
        ),
    )?;
    let cfg = TimerConfig::load(&path)?;
    let mut sub = peer(hub.port, "sub", true, &[("timer/#", QoS::AtLeastOnce)]).await?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(timer::run(cfg, async {
        let _ = stop_rx.await;
    }));
    let got = sub.recv_n(6, Duration::from_secs(30)).await?;
    let _ = stop_tx.send(());
    task.await??;

    let msgs: Vec<Value> = got
        .iter()
        .map(|p| {
            assert_eq!(p.topic, "timer/tick");
            serde_json::from_slice(&p.payload).unwrap()
        })
        .collect();
    let first = msgs[0]["n"].as_u64().unwrap();
    for (i, m) in msgs.iter().enumerate() {
        assert_eq!(m["id"], 7);
        assert_eq!(m["by"], "timer-1");
        assert!(m["time"].as_u64().unwrap() > 1_600_000_000);
        assert_eq!(
            m["n"].as_u64().unwrap(),
            first + i as u64,
            "consecutive sequence numbers"
        );
    }
    // Never faster than the interval (ticks are not bunched up).
    for w in msgs.windows(2) {
        let gap = w[1]["ms"].as_u64().unwrap() - w[0]["ms"].as_u64().unwrap();
        assert!(gap >= 150, "gap {gap}ms is shorter than the 200ms interval");
    }
    // Stopped means stopped (a window in which at most one tick already in flight may arrive).
    assert!(sub.drain(Duration::from_millis(600)).await.len() <= 1);
    Ok(())
}
