//! The kit against Debian's mosquitto: the runner (passwords, TLS, restart), the MQTT client and the PKI.

use std::time::Duration;

use anyhow::{Context, Result};
use baetyl_testkit::mosquitto::{Mosquitto, Tls};
use baetyl_testkit::mqtt::{Client, MessageExt, options, texts};
use baetyl_testkit::pki::Pki;
use baetyl_testkit::test_dir;
use rumqttc::{QoS, SubscribeReasonCode};

const SHORT: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_against_mosquitto_with_passwords_tls_and_a_restart() -> Result<()> {
    let dir = test_dir("baetyl-testkit-");
    let pki = Pki::new(&dir.path().join("pki"), "kit ca")?;
    let dev = pki.client("dev")?;
    let mut broker = Mosquitto::builder(&dir.path().join("broker"))
        .user("u", "p")
        .tls(Tls::from_pki(&pki, true))
        .start()?;

    // A wrong password is refused with the return code in the error.
    let mut bad = options("bad", broker.port);
    bad.set_credentials("u", "wrong");
    let err = Client::connect(bad)
        .await
        .err()
        .context("wrong password accepted")?;
    assert!(err.to_string().contains("NotAuthorized"), "{err}");

    let mut o = options("sub", broker.port);
    o.set_credentials("u", "p").set_clean_session(false);
    let mut sub = Client::connect(o.clone()).await?;
    assert!(!sub.connack().session_present);
    assert_eq!(
        sub.subscribe_many(&[("k/#", QoS::ExactlyOnce), ("j", QoS::AtMostOnce)])
            .await?,
        [
            SubscribeReasonCode::Success(QoS::ExactlyOnce),
            SubscribeReasonCode::Success(QoS::AtMostOnce)
        ]
    );

    // Over two-way TLS, every QoS is acknowledged and delivered in order.
    let tls_port = broker.tls_port.context("tls port")?;
    let mut t = options("tls-pub", tls_port);
    t.set_credentials("u", "p")
        .set_transport(rumqttc::Transport::tls_with_config(
            pki.mqtt_tls(Some(&dev)),
        ));
    let mut publ = Client::connect(t).await?;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        publ.publish("k/q", qos, false, format!("{qos:?}")).await?;
    }
    publ.publish_all("k/n", &[b"1".to_vec(), b"2".to_vec()])
        .await?;
    let got = sub.recv_n(5, Duration::from_secs(10)).await?;
    assert_eq!(
        texts(&got),
        ["AtMostOnce", "AtLeastOnce", "ExactlyOnce", "1", "2"]
    );
    assert!(sub.drain(SHORT).await.is_empty());
    publ.publish("j", QoS::AtLeastOnce, false, r#"{"a":1}"#)
        .await?;
    let j = sub
        .recv_on("j", Duration::from_secs(10))
        .await?
        .context("j")?;
    assert_eq!(j.json(), Some(serde_json::json!({"a": 1})));

    // Stopped: both clients see the connection end; the persistent session comes back after the restart.
    sub.disconnect().await?;
    broker.stop();
    let reason = publ.wait_closed(Duration::from_secs(10)).await?;
    assert!(!reason.is_empty());
    assert!(
        publ.publish("k/x", QoS::AtLeastOnce, false, "x")
            .await
            .is_err()
    );
    broker.restart()?;
    let sub = Client::connect(o).await?;
    assert!(sub.connack().session_present, "{}", broker.log());
    assert!(
        broker.log().contains("Saving in-memory database"),
        "{}",
        broker.log()
    );
    Ok(())
}

#[test]
fn a_broker_that_cannot_start_says_why() {
    let dir = test_dir("baetyl-testkit-");
    let err = Mosquitto::builder(dir.path())
        .option("no_such_option 1")
        .start()
        .err()
        .expect("a bad config must fail");
    assert!(format!("{err:#}").contains("no_such_option"), "{err:#}");
}
