//! Poison inputs of functions against the real hub (issue 10): an input whose error answer, or a function whose
//! output, would be larger than the hub's message limit is answered with one bounded error and acknowledged;
//! it is never redelivered, the rule's connection stays up, and later inputs go through.

use std::time::Duration;

use baetyl_e2e::*;
use baetyl_testkit::free_port;
use baetyl_testkit::mqtt::{Client, MessageExt, options, texts};
use baetyl_testkit::net::{localhost, wait_accepting_async};
use baetyl_testkit::wait::poll_async;
use rumqttc::QoS;
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(60);
/// The hub's default payload limit (`message.length.max`), which the manager's default follows.
const HUB_LIMIT: usize = 32 * 1024;

fn setup(w: &Work, port: u16) {
    write_sql_rules(w, port);
}

/// The manager's report for `rule` once both rules are subscribed.
async fn rule_stats(m: &Master, rule: &str) -> Value {
    m.instance("function-manager", "function-manager")
        .await
        .map(|v| v["rules"][rule].clone())
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_inputs_are_answered_once_with_a_bounded_error_and_acknowledged() {
    let w = Work::new();
    let port = free_port();
    setup(&w, port);
    let m = Master::start(w.path(), &[]);
    wait_accepting_async(localhost(port), LONG).await;
    let ready = poll_async(LONG, || async {
        rule_stats(&m, "rule-sql").await["subscribed"] == true
            && rule_stats(&m, "rule-big").await["subscribed"] == true
    })
    .await;
    assert!(ready.is_ok(), "rules never subscribed\n{}", m.log_text());
    let mut o = options("tester", port);
    o.set_credentials("tester", "tester-password");
    let mut peer = Client::connect(o).await.expect("connect to the hub");
    peer.subscribe_many(&[("sql/out", QoS::AtLeastOnce), ("big/out", QoS::AtLeastOnce)])
        .await
        .expect("subscribe");

    // 12 KB of control bytes: not JSON, and echoed as JSON text each byte becomes `\u0001` (72 KB).
    let poison = vec![1u8; 12 * 1024];
    peer.publish("sql/in", QoS::AtLeastOnce, false, poison)
        .await
        .expect("publish the poison input");
    peer.publish(
        "sql/in",
        QoS::AtLeastOnce,
        false,
        json!({"id": 1}).to_string(),
    )
    .await
    .expect("publish a good input");
    // 11 KB that the function triples into 33 KB: more than the hub takes.
    let s = "x".repeat(11 * 1024);
    peer.publish(
        "big/in",
        QoS::AtLeastOnce,
        false,
        json!({"s": s}).to_string(),
    )
    .await
    .expect("publish an input whose output is too large");
    peer.publish(
        "big/in",
        QoS::AtLeastOnce,
        false,
        json!({"s": "ok"}).to_string(),
    )
    .await
    .expect("publish a small input");

    let got = peer.recv_n(4, LONG).await.unwrap_or_else(|e| {
        panic!("{e}\n{}", m.log_text());
    });
    let mut sql: Vec<_> = got.iter().filter(|p| p.topic == "sql/out").collect();
    let mut big: Vec<_> = got.iter().filter(|p| p.topic == "big/out").collect();
    assert_eq!((sql.len(), big.len()), (2, 2), "{:?}", texts(&got));
    for p in got.iter() {
        assert!(
            p.payload.len() <= HUB_LIMIT,
            "{} bytes on {}",
            p.payload.len(),
            p.topic
        );
    }
    let err = sql.remove(0).json().expect("the error answer is JSON");
    assert_eq!(err["errorType"], "PayloadError", "{err}");
    assert!(
        err["errorMessage"]
            .as_str()
            .unwrap_or_default()
            .contains("not JSON"),
        "{err}"
    );
    let echoed = err["functionMessage"]["Payload"]
        .as_str()
        .expect("echoed payload");
    assert!(
        !echoed.is_empty() && echoed.chars().all(|c| c == '\u{1}'),
        "a prefix of the input"
    );
    assert_eq!(err["functionMessage"]["PayloadLength"], 12 * 1024, "{err}");
    assert_eq!(sql.remove(0).json(), Some(json!({"id": 1})));
    let err = big.remove(0).json().expect("the error answer is JSON");
    assert_eq!(err["errorType"], "OutputTooLarge", "{err}");
    assert!(
        err["errorMessage"]
            .as_str()
            .unwrap_or_default()
            .contains("32k"),
        "names the limit: {err}"
    );
    assert_eq!(big.remove(0).json(), Some(json!({"s": "okokok"})));

    // No redelivery: nothing more comes, and the manager received each input once.
    let extra = peer.drain(Duration::from_secs(3)).await;
    assert!(extra.is_empty(), "redelivered: {:?}", texts(&extra));
    for rule in ["rule-sql", "rule-big"] {
        let st = rule_stats(&m, rule).await;
        assert_eq!(st["received"], 2, "{rule}: {st}");
        assert_eq!(st["errors"], 1, "{rule}: {st}");
        assert_eq!(st["published"], 2, "{rule}: {st}");
    }
    let manager = m
        .instance("function-manager", "function-manager")
        .await
        .expect("manager");
    assert_eq!(manager["restarts"], 0, "{manager}");
}
