//! Integration tests: a real hub on free ports on 127.0.0.1, real MQTT clients (rumqttc, raw sockets, and
//! Debian's mosquitto_pub/mosquitto_sub when installed).

mod common;

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use baetyl_hub::config::ListenKind;
use baetyl_testkit::net::{localhost, wait_accepting_async};
use baetyl_testkit::pki::{Cert, Pki};
use baetyl_testkit::process::{Process, rerun_test};
use baetyl_testkit::wait::poll_async;
use common::*;
use rumqttc::{ConnectReturnCode, LastWill, QoS, SubscribeReasonCode};

const SHORT: Duration = Duration::from_millis(700);

#[test]
fn password_principals_accepted_and_refused() -> Result<()> {
    block_on(async {
        let hub = standard_hub().await?;
        let addr = hub.tcp();
        let (_c, ack) = connect(options("good-1", addr, Some(("admin", "admin-pw")))).await?;
        assert_eq!(ack.code, ConnectReturnCode::Success);

        for (id, user) in [
            ("bad-1", Some(("admin", "wrong"))),
            ("bad-2", Some(("admin", ""))),
            ("bad-3", Some(("nobody", "admin-pw"))),
            ("bad-4", None),
        ] {
            let err = connect(options(id, addr, user))
                .await
                .err()
                .context("refused client connected")?;
            assert!(err.to_string().contains("NotAuthorized"), "{id}: {err}");
        }
        let stats = hub.hub.stats().await;
        assert!(stats["hub"]["auth_refused"].as_u64() >= Some(4), "{stats}");
        assert!(stats["hub"]["auth_accepted"].as_u64() >= Some(1), "{stats}");
        Ok(())
    })
}

#[test]
fn client_ids_follow_mqtt_by_default_and_v1_on_request() -> Result<()> {
    block_on(async {
        // By default anything MQTT allows: a space, `/`, `:`, `.`, more than 128 bytes.
        let hub = standard_hub().await?;
        for id in ["bad id!", "a/b:c.d", &"x".repeat(129)] {
            let (_ok, ack) = connect(options(id, hub.tcp(), Some(("admin", "admin-pw")))).await?;
            assert_eq!(ack.code, ConnectReturnCode::Success, "{id}");
        }
        // `client_id: v1` keeps v1's `^[0-9A-Za-z_-]{1,128}$`: others get "identifier rejected".
        let v1 = start_hub(&format!(
            "listen: [tcp://127.0.0.1:0]\n{PRINCIPALS}storage: {{dir: '{{dir}}/data'}}\nclient_id: v1\n"
        ))
        .await?;
        let err = connect(options("bad id!", v1.tcp(), Some(("admin", "admin-pw"))))
            .await
            .err()
            .context("client id with a space was accepted under client_id: v1")?;
        assert!(err.to_string().contains("BadClientId"), "{err}");
        let (_ok, ack) = connect(options(
            &"x".repeat(128),
            v1.tcp(),
            Some(("admin", "admin-pw")),
        ))
        .await?;
        assert_eq!(ack.code, ConnectReturnCode::Success);
        Ok(())
    })
}

#[test]
fn acl_allows_and_denies_publish_and_subscribe() -> Result<()> {
    block_on(async {
        let hub = standard_hub().await?;
        let addr = hub.tcp();
        let mut watcher = connect_ok("watcher", addr, ("admin", "admin-pw")).await?;
        assert_eq!(
            watcher.subscribe("#", QoS::AtLeastOnce).await?,
            vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
        );

        let mut limited = connect_ok("limited-1", addr, ("limited", "limited-pw")).await?;
        // Subscribe: inside `t/#` granted, outside refused with 0x80.
        assert_eq!(
            limited.subscribe("t/+", QoS::AtLeastOnce).await?,
            vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
        );
        assert_eq!(
            limited.subscribe("x/#", QoS::AtLeastOnce).await?,
            vec![SubscribeReasonCode::Failure]
        );
        assert_eq!(
            limited.subscribe("#", QoS::AtMostOnce).await?,
            vec![SubscribeReasonCode::Failure]
        );

        // Publish: `t/a` allowed, `t/b` dropped (the connection stays up for MQTT 3.1.1).
        limited
            .publish("t/b", QoS::AtLeastOnce, false, "denied")
            .await?;
        limited
            .publish("t/a", QoS::AtLeastOnce, false, "allowed")
            .await?;
        let got = watcher
            .recv(WAIT)
            .await?
            .context("allowed publish not delivered")?;
        assert_eq!(got.topic, "t/a");
        assert_eq!(&got.payload[..], b"allowed");
        assert!(
            watcher.recv(SHORT).await?.is_none(),
            "denied publish was delivered"
        );

        // The limited client receives what its subscription allows.
        let mut own = None;
        for _ in 0..2 {
            if let Some(p) = limited.recv(WAIT).await? {
                own = Some(p);
                break;
            }
        }
        assert_eq!(
            own.context("own allowed message not received")?.topic,
            "t/a"
        );

        let stats = hub.hub.stats().await;
        assert_eq!(stats["hub"]["publish_denied"].as_u64(), Some(1), "{stats}");
        assert_eq!(
            stats["hub"]["subscribe_denied"].as_u64(),
            Some(2),
            "{stats}"
        );
        Ok(())
    })
}

#[test]
fn qos_0_1_2_round_trip() -> Result<()> {
    block_on(async {
        let hub = standard_hub().await?;
        let addr = hub.tcp();
        let mut sub = connect_ok("qos-sub", addr, ("admin", "admin-pw")).await?;
        sub.subscribe("q/#", QoS::ExactlyOnce).await?;
        let mut publ = connect_ok("qos-pub", addr, ("admin", "admin-pw")).await?;
        for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
            .into_iter()
            .enumerate()
        {
            let topic = format!("q/{i}");
            publ.publish(&topic, qos, false, format!("m{i}")).await?;
            let got = sub
                .recv(WAIT)
                .await?
                .with_context(|| format!("{qos:?} not delivered"))?;
            assert_eq!(got.topic, topic);
            assert_eq!(got.qos, qos, "delivered QoS = min(publish, subscription)");
            assert_eq!(&got.payload[..], format!("m{i}").as_bytes());
        }
        // A QoS 0 subscription gets QoS 2 messages at QoS 0 (never upgraded, never more than asked).
        let mut low = connect_ok("qos-low", addr, ("admin", "admin-pw")).await?;
        low.subscribe("low", QoS::AtMostOnce).await?;
        publ.publish("low", QoS::ExactlyOnce, false, "x").await?;
        assert_eq!(
            low.recv(WAIT).await?.context("low not delivered")?.qos,
            QoS::AtMostOnce
        );
        Ok(())
    })
}

/// The retained payloads a new subscriber to `filter` receives.
async fn retained_for_new_subscriber(
    addr: std::net::SocketAddr,
    id: &str,
    filter: &str,
) -> Result<Vec<Vec<u8>>> {
    let mut c = connect_ok(id, addr, ("admin", "admin-pw")).await?;
    c.subscribe(filter, QoS::AtLeastOnce).await?;
    let mut out = Vec::new();
    while let Some(p) = c.recv(SHORT).await? {
        assert!(
            p.retain,
            "a message sent on subscribe must carry the retain flag"
        );
        out.push(p.payload.to_vec());
    }
    c.disconnect().await?;
    Ok(out)
}

/// The engine stores retained messages asynchronously (after the PUBACK): poll until `want` is what a new
/// subscriber sees, for at most 10 s.
async fn eventually_retained(
    addr: std::net::SocketAddr,
    filter: &str,
    want: &[&[u8]],
) -> Result<()> {
    let mut attempt = 0;
    poll_async(Duration::from_secs(10), || {
        attempt += 1;
        let id = format!("ret-check-{attempt}");
        async move {
            let got = retained_for_new_subscriber(addr, &id, filter)
                .await
                .map_err(|e| format!("{e:#}"))?;
            if got.iter().map(|v| v.as_slice()).eq(want.iter().copied()) {
                Ok(())
            } else {
                Err(format!("got {got:?}"))
            }
        }
    })
    .await
    .map_err(|last| {
        anyhow::anyhow!(
            "retained on {filter}: want {want:?}; {}",
            last.unwrap_or_default()
        )
    })
}

#[test]
fn retain_set_replace_and_clear() -> Result<()> {
    block_on(async {
        let hub = standard_hub().await?;
        let addr = hub.tcp();
        let mut publ = connect_ok("ret-pub", addr, ("admin", "admin-pw")).await?;
        publ.publish("r/x", QoS::AtLeastOnce, true, "v1").await?;
        publ.publish("r/x", QoS::AtLeastOnce, true, "v2").await?;
        // A non-retained empty publish does not clear.
        publ.publish("r/x", QoS::AtLeastOnce, false, "").await?;
        // The second retained publish replaces the first; one retained message per topic.
        eventually_retained(addr, "r/#", &[b"v2"]).await?;
        // An empty retained publish clears.
        publ.publish("r/x", QoS::AtLeastOnce, true, "").await?;
        eventually_retained(addr, "r/#", &[]).await?;
        Ok(())
    })
}

#[test]
fn will_is_published_on_abrupt_close() -> Result<()> {
    block_on(async {
        let hub = standard_hub().await?;
        let addr = hub.tcp();
        let mut watcher = connect_ok("will-watch", addr, ("admin", "admin-pw")).await?;
        watcher.subscribe("will/#", QoS::AtLeastOnce).await?;

        let mut opts = options("will-dies", addr, Some(("admin", "admin-pw")));
        opts.set_last_will(LastWill::new("will/dies", "gone", QoS::AtLeastOnce, false));
        let (dying, _) = connect(opts).await?;
        dying.kill();
        let got = watcher.recv(WAIT).await?.context("will not published")?;
        assert_eq!(got.topic, "will/dies");
        assert_eq!(&got.payload[..], b"gone");

        // A clean DISCONNECT discards the will.
        let mut opts = options("will-clean", addr, Some(("admin", "admin-pw")));
        opts.set_last_will(LastWill::new("will/clean", "gone", QoS::AtLeastOnce, false));
        let (clean, _) = connect(opts).await?;
        clean.disconnect().await?;
        assert!(
            watcher.recv(SHORT).await?.is_none(),
            "will published after a clean disconnect"
        );
        Ok(())
    })
}

#[test]
fn routing_rule_republishes_at_min_qos() -> Result<()> {
    block_on(async {
        let hub = standard_hub().await?;
        let addr = hub.tcp();
        let mut sub = connect_ok("route-sub", addr, ("admin", "admin-pw")).await?;
        sub.subscribe("route/out", QoS::ExactlyOnce).await?;
        let mut publ = connect_ok("route-pub", addr, ("admin", "admin-pw")).await?;
        publ.publish("route/in", QoS::ExactlyOnce, false, "hop")
            .await?;
        let got = sub
            .recv(WAIT)
            .await?
            .context("routed message not delivered")?;
        assert_eq!(got.topic, "route/out");
        assert_eq!(&got.payload[..], b"hop");
        assert_eq!(got.qos, QoS::AtLeastOnce, "min(2, source 1, target 1)");
        publ.publish("route/other", QoS::AtLeastOnce, false, "no")
            .await?;
        assert!(sub.recv(SHORT).await?.is_none());
        Ok(())
    })
}

#[test]
fn sys_topics_report_clients() -> Result<()> {
    block_on(async {
        let hub = standard_hub().await?;
        let addr = hub.tcp();
        let mut sys = connect_ok("sys-watch", addr, ("admin", "admin-pw")).await?;
        assert_eq!(
            sys.subscribe("$SYS/#", QoS::AtMostOnce).await?,
            vec![SubscribeReasonCode::Success(QoS::AtMostOnce)]
        );
        // `#` does not grant `$SYS`: the limited principal's `t/#` certainly not.
        let mut limited = connect_ok("sys-limited", addr, ("limited", "limited-pw")).await?;
        assert_eq!(
            limited.subscribe("$SYS/#", QoS::AtMostOnce).await?,
            vec![SubscribeReasonCode::Failure]
        );

        let _other = connect_ok("sys-other", addr, ("admin", "admin-pw")).await?;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let p = sys.recv(WAIT).await?.context("no $SYS message")?;
            if p.topic.starts_with("$SYS/")
                && p.topic.contains("sys-other")
                && p.topic.ends_with("/connected")
            {
                let body: serde_json::Value = serde_json::from_slice(&p.payload)?;
                assert_eq!(body["clientid"], "sys-other");
                assert_eq!(body["username"], "admin");
                break;
            }
            if tokio::time::Instant::now() > deadline {
                bail!("no connected event for sys-other");
            }
        }
        Ok(())
    })
}

#[test]
fn hostile_input_does_not_stop_the_hub() -> Result<()> {
    block_on(async {
        let hub = standard_hub().await?;
        let addr = hub.tcp();
        let mut watcher = connect_ok("hostile-watch", addr, ("admin", "admin-pw")).await?;
        watcher.subscribe("#", QoS::AtLeastOnce).await?;

        // A slow client that never finishes its handshake.
        let _slow = tokio::net::TcpStream::connect(addr).await?;
        // Garbage bytes.
        {
            use tokio::io::AsyncWriteExt;
            let mut g = tokio::net::TcpStream::connect(addr).await?;
            g.write_all(&[
                0xff, 0xff, 0xff, 0xff, 0x7f, 0x00, 0x01, 0xde, 0xad, 0xbe, 0xef,
            ])
            .await?;
            let mut g2 = tokio::net::TcpStream::connect(addr).await?;
            g2.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await?;
        }

        // A UTF-8 topic whose first character is multi-byte.
        let mut publ = connect_ok("hostile-pub", addr, ("admin", "admin-pw")).await?;
        publ.publish("é/x", QoS::AtLeastOnce, false, "utf8").await?;
        let got = watcher.recv(WAIT).await?.context("é/x not delivered")?;
        assert_eq!(got.topic, "é/x");

        // PUBLISH to a wildcard topic, or with NUL in the topic: the connection is closed, nothing delivered.
        for (i, topic) in [&b"a/+"[..], b"a/#", b"a\0b"].into_iter().enumerate() {
            let (mut raw, rc) =
                RawClient::connect(addr, &format!("hostile-raw-{i}"), "admin", "admin-pw").await?;
            assert_eq!(rc, 0);
            raw.publish_raw(topic, b"bad").await?;
            assert!(
                raw.closed_within(WAIT).await,
                "connection kept open after PUBLISH to {topic:?}"
            );
        }
        // An oversized payload (limit 1k) closes the connection too.
        let (mut raw, _) = RawClient::connect(addr, "hostile-big", "admin", "admin-pw").await?;
        raw.publish_raw(b"big", &vec![b'x'; 4096]).await?;
        assert!(
            raw.closed_within(WAIT).await,
            "connection kept open after an oversized PUBLISH"
        );
        assert!(
            watcher.recv(SHORT).await?.is_none(),
            "a refused PUBLISH was delivered"
        );

        // And the hub still serves everyone else.
        let mut after = connect_ok("hostile-after", addr, ("admin", "admin-pw")).await?;
        after
            .publish("still/alive", QoS::AtLeastOnce, false, "yes")
            .await?;
        let got = watcher.recv(WAIT).await?.context("hub stopped serving")?;
        assert_eq!(got.topic, "still/alive");
        // Malformed topics never reach the hub's checks (the engine's codec closes the connection); the
        // oversized payload is counted.
        let stats = hub.hub.stats().await;
        assert!(
            stats["hub"]["publish_malformed"].as_u64() >= Some(1),
            "{stats}"
        );
        Ok(())
    })
}

#[test]
fn websocket_listener_round_trip() -> Result<()> {
    block_on(async {
        let hub = start_hub(&format!(
        "listen: [tcp://127.0.0.1:0, 'ws://127.0.0.1:0/mqtt']\n{PRINCIPALS}storage: {{dir: '{{dir}}/data'}}\n"
    ))
    .await?;
        let ws = hub.addr(ListenKind::Ws);
        let mut sub = connect_ok("ws-tcp-sub", hub.tcp(), ("admin", "admin-pw")).await?;
        sub.subscribe("ws/#", QoS::AtLeastOnce).await?;
        let mut o = rumqttc::MqttOptions::new("ws-client", format!("ws://{ws}/mqtt"), ws.port());
        o.set_transport(rumqttc::Transport::Ws);
        o.set_credentials("admin", "admin-pw");
        let (mut wsc, ack) = connect(o).await?;
        assert_eq!(ack.code, ConnectReturnCode::Success);
        wsc.publish("ws/x", QoS::AtLeastOnce, false, "over websocket")
            .await?;
        let got = sub.recv(WAIT).await?.context("ws publish not delivered")?;
        assert_eq!(&got.payload[..], b"over websocket");
        Ok(())
    })
}

fn mosquitto_available() -> bool {
    std::process::Command::new("mosquitto_pub")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

#[test]
fn mosquitto_clients_interoperate_v31_v311_v5() -> Result<()> {
    block_on(async {
        if !mosquitto_available() {
            bail!("mosquitto_pub/mosquitto_sub are missing: apt-get install mosquitto-clients");
        }
        let hub = standard_hub().await?;
        let addr = hub.tcp();
        let port = addr.port().to_string();
        for version in ["mqttv31", "mqttv311", "mqttv5"] {
            let topic = format!("mosq/{version}");
            let sub = tokio::process::Command::new("mosquitto_sub")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-u",
                    "admin",
                    "-P",
                    "admin-pw",
                    "-V",
                    version,
                ])
                .args([
                    "-i",
                    &format!("msub-{version}"),
                    "-t",
                    &topic,
                    "-q",
                    "1",
                    "-C",
                    "1",
                    "-W",
                    "15",
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()?;
            // Publish until the subscriber has its message (it may not be subscribed yet on the first try).
            let mut out = None;
            let wait = sub.wait_with_output();
            tokio::pin!(wait);
            for _ in 0..20 {
                let status = tokio::process::Command::new("mosquitto_pub")
                    .args([
                        "-h",
                        "127.0.0.1",
                        "-p",
                        &port,
                        "-u",
                        "admin",
                        "-P",
                        "admin-pw",
                        "-V",
                        version,
                    ])
                    .args([
                        "-i",
                        &format!("mpub-{version}"),
                        "-t",
                        &topic,
                        "-q",
                        "1",
                        "-m",
                        "hello mosquitto",
                    ])
                    .status()
                    .await?;
                assert!(status.success(), "mosquitto_pub {version} failed");
                if let Ok(o) = tokio::time::timeout(Duration::from_millis(500), &mut wait).await {
                    out = Some(o?);
                    break;
                }
            }
            let out = out.context("mosquitto_sub got nothing")?;
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                "hello mosquitto",
                "{version}"
            );
        }
        // A wrong password is refused for mosquitto too.
        let out = tokio::process::Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-u",
                "admin",
                "-P",
                "nope",
                "-t",
                "x",
                "-m",
                "x",
            ])
            .output()
            .await?;
        assert!(!out.status.success());
        // MQTT 5: a denied QoS 1 publish is answered with reason code 0x87 (not authorized).
        let out = tokio::process::Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-u",
                "limited",
                "-P",
                "limited-pw",
                "-V",
                "mqttv5",
            ])
            .args(["-q", "1", "-t", "x/denied", "-m", "x"])
            .output()
            .await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("Not authorized"), "{stderr}");
        Ok(())
    })
}

#[test]
fn sigterm_stops_the_hub() -> Result<()> {
    block_on(async {
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let config = dir.path().join("service.yml");
        write(
            &config,
            &format!(
                "listen: ['tcp://127.0.0.1:{port}']\n{PRINCIPALS}storage: {{dir: '{}'}}\n",
                dir.path().join("data").display()
            ),
        )?;
        let mut hub = ChildHub::start(&config, port, &dir.path().join("hub.log")).await?;
        let _client = connect_ok(
            "sigterm-c",
            ([127, 0, 0, 1], port).into(),
            ("admin", "admin-pw"),
        )
        .await?;
        let status = std::process::Command::new("kill")
            .args(["-TERM", &hub.0.id().to_string()])
            .status()?;
        assert!(status.success());
        let exit = hub.0.wait_exit(Duration::from_secs(20));
        assert!(exit.success(), "{exit:?}");
        Ok(())
    })
}

#[test]
fn keep_alive_is_enforced_by_the_hub() -> Result<()> {
    block_on(async {
        let hub = standard_hub().await?;
        // Keep-alive 1 s and then silence: the hub closes the connection after 1.5 s (MQTT 3.1.2.10).
        let (mut silent, rc) =
            RawClient::connect_keep_alive(hub.tcp(), "ka-silent", "admin", "admin-pw", 1).await?;
        assert_eq!(rc, 0);
        let start = tokio::time::Instant::now();
        assert!(
            silent.closed_within(Duration::from_secs(6)).await,
            "silent client kept"
        );
        assert!(
            start.elapsed() >= Duration::from_millis(900),
            "closed too early: {:?}",
            start.elapsed()
        );
        Ok(())
    })
}

#[test]
fn duplicate_client_id_takes_over_the_session() -> Result<()> {
    block_on(async {
        let hub = standard_hub().await?;
        let mut first = connect_ok("same-id", hub.tcp(), ("admin", "admin-pw")).await?;
        let mut second = connect_ok("same-id", hub.tcp(), ("admin", "admin-pw")).await?;
        // The first connection is closed by the hub...
        first
            .wait_closed(WAIT)
            .await
            .context("first connection still open")?;
        // ... and the second one works.
        second.subscribe("dup/#", QoS::AtLeastOnce).await?;
        second
            .publish("dup/x", QoS::AtLeastOnce, false, "ok")
            .await?;
        assert!(second.recv(WAIT).await?.is_some());
        Ok(())
    })
}

#[test]
fn missing_certificate_file_is_named() -> Result<()> {
    block_on(async {
        let err = start_hub(&format!(
            "listen: ['ssl://127.0.0.1:0']\ncertificate: {{cert: '{{dir}}/nope.pem', key: '{{dir}}/nope.key'}}\n{PRINCIPALS}storage: {{dir: '{{dir}}/data'}}\n"
        ))
        .await
        .err()
        .context("a TLS listener started without its certificate")?;
        let msg = format!("{err:#}");
        assert!(
            msg.contains("certificate.cert") && msg.contains("nope.pem"),
            "{msg}"
        );
        Ok(())
    })
}

#[test]
fn bind_failure_names_the_address() -> Result<()> {
    block_on(async {
        let taken = free_listener();
        let port = taken.local_addr()?.port();
        let err = start_hub(&format!(
            "listen: ['tcp://127.0.0.1:{port}']\n{PRINCIPALS}storage: {{dir: '{{dir}}/data'}}\n"
        ))
        .await
        .err()
        .context("second bind on a taken port succeeded")?;
        let msg = format!("{err:#}");
        assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
        Ok(())
    })
}

/// Set on the child process that runs a hub for [`persistent_session_survives_kill_9`].
const CHILD_CONFIG_ENV: &str = "BAETYL_HUB_TEST_CHILD_CONFIG";

/// Not a test: the body of the child process the restart test starts (and kills) as a real separate hub.
#[test]
#[ignore = "helper: the hub process that the child-process tests start, kill and signal"]
fn hub_child_process() -> Result<()> {
    let path = std::env::var(CHILD_CONFIG_ENV).context("only run by the child-process tests")?;
    // Exactly what `baetyl hub -c FILE` runs: logging, its own runtime, SIGTERM/SIGINT handling.
    baetyl_hub::run_cli(baetyl_hub::HubArgs {
        config: path.into(),
        log_format: None,
    })?;
    Ok(())
}

/// A hub in a child process of its own (killed when dropped).
struct ChildHub(Process);

impl ChildHub {
    async fn start(config: &std::path::Path, port: u16, log: &std::path::Path) -> Result<ChildHub> {
        let hub = spawn_child(config, log, &[])?;
        wait_accepting_async(localhost(port), Duration::from_secs(60)).await;
        Ok(hub)
    }

    /// SIGKILL: no chance to flush anything.
    fn kill9(mut self) {
        self.0.kill9();
    }
}

#[test]
fn persistent_session_survives_kill_9() -> Result<()> {
    block_on(async {
        const N: usize = 1000;
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let config = dir.path().join("service.yml");
        let log = dir.path().join("hub.log");
        write(
            &config,
            &format!(
                "listen: ['tcp://127.0.0.1:{port}']\n{PRINCIPALS}storage: {{dir: '{}'}}\nlogger: {{level: warn}}\n",
                dir.path().join("data").display()
            ),
        )?;
        let addr = ([127, 0, 0, 1], port).into();
        let hub = ChildHub::start(&config, port, &log).await?;

        // A persistent subscriber goes offline.
        let mut o = options("persist-sub", addr, Some(("admin", "admin-pw")));
        o.set_clean_session(false);
        let (mut sub, _) = connect(o.clone()).await?;
        sub.subscribe("p/#", QoS::AtLeastOnce).await?;
        let mut publ = connect_ok("persist-pub", addr, ("admin", "admin-pw")).await?;
        publ.subscribe(
            "$SYS/brokers/+/clients/persist-sub/disconnected",
            QoS::AtMostOnce,
        )
        .await?;
        sub.disconnect().await?;
        // Publish only once the hub has the subscriber offline: messages that reach a session's in-memory
        // queue while it is still online are not handed to the session store (an engine limitation).
        publ.recv(WAIT)
            .await?
            .context("no $SYS disconnected event for persist-sub")?;
        // The engine marks the session offline just after it publishes that event, and a child-process hub
        // shows no later sign of it: a short margin (not an observable event; see the hub's engine notes).
        tokio::time::sleep(Duration::from_millis(200)).await;

        // 1000 QoS 1 messages are queued for it, and one retained message is stored.
        for i in 0..N {
            publ.publish("p/x", QoS::AtLeastOnce, false, format!("{i}"))
                .await?;
        }
        publ.publish("keep/r", QoS::AtLeastOnce, true, "kept")
            .await?;
        drop(publ);
        // The engine's stores flush every 500 ms and expose no flush event: kill -9 only after four periods.
        tokio::time::sleep(Duration::from_secs(2)).await;
        hub.kill9();

        let _hub = ChildHub::start(&config, port, &log).await?;
        let (mut sub, ack) = connect(o)
            .await
            .with_context(|| std::fs::read_to_string(&log).unwrap_or_default())?;
        assert!(ack.session_present, "session not restored after restart");
        let mut seen = vec![false; N];
        let mut count = 0;
        while count < N {
            let Some(p) = sub.recv(Duration::from_secs(15)).await? else {
                break;
            };
            let i: usize = std::str::from_utf8(&p.payload)?.parse()?;
            if !seen[i] {
                seen[i] = true;
                count += 1;
            }
        }
        let missing: Vec<usize> = (0..N).filter(|&i| !seen[i]).collect();
        assert_eq!(
            count, N,
            "queued QoS 1 messages lost across kill -9 and restart: {missing:?}"
        );

        let mut r = connect_ok("persist-ret", addr, ("admin", "admin-pw")).await?;
        r.subscribe("keep/#", QoS::AtLeastOnce).await?;
        let got = r
            .recv(WAIT)
            .await?
            .context("retained message lost across restart")?;
        assert_eq!(&got.payload[..], b"kept");
        Ok(())
    })
}

/// Test PKI written to `dir`: ca.pem, server.pem/.key (SAN 127.0.0.1, localhost), client certificates with CN
/// `dev` from the CA and CN `dev` from an unknown CA (`rogue`).
struct TestPki {
    pki: Pki,
    dev: Cert,
    rogue: Cert,
}

fn make_pki(dir: &std::path::Path) -> Result<TestPki> {
    let pki = Pki::new(dir, "baetyl test ca")?;
    let dev = pki.client("dev")?;
    let rogue = Pki::new(&dir.join("rogue"), "rogue ca")?.client("dev")?;
    Ok(TestPki { pki, dev, rogue })
}

fn tls_options(
    id: &str,
    addr: std::net::SocketAddr,
    pki: &TestPki,
    client_cert: Option<&Cert>,
) -> rumqttc::MqttOptions {
    let mut o = options(id, addr, None);
    o.set_transport(rumqttc::Transport::tls_with_config(
        pki.pki.mqtt_tls(client_cert),
    ));
    o
}

#[test]
fn certificate_principal_over_mtls_only() -> Result<()> {
    block_on(async {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::tempdir()?;
        let pki = make_pki(dir.path())?;
        let d = dir.path().display();
        let hub = start_hub(&format!(
        "listen: [tcp://127.0.0.1:0, ssl://127.0.0.1:0, 'wss://127.0.0.1:0/mqtt']\n\
         certificate: {{ca: '{d}/ca.pem', cert: '{d}/server.pem', key: '{d}/server.key'}}\n\
         {PRINCIPALS}\
         \x20 - {{username: dev, permissions: [{{action: pub, permit: ['dev/#']}}, {{action: sub, permit: ['dev/#']}}]}}\n\
         storage: {{dir: '{{dir}}/data'}}\n"
    ))
    .await?;
        let ssl = hub.addr(ListenKind::Ssl);

        // The certificate principal over two-way TLS: accepted, and its permissions apply.
        let (mut dev, ack) = connect(tls_options("dev-1", ssl, &pki, Some(&pki.dev))).await?;
        assert_eq!(ack.code, ConnectReturnCode::Success);
        assert_eq!(
            dev.subscribe("dev/#", QoS::AtLeastOnce).await?,
            vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
        );
        assert_eq!(
            dev.subscribe("other/#", QoS::AtLeastOnce).await?,
            vec![SubscribeReasonCode::Failure]
        );
        dev.publish("dev/t", QoS::AtLeastOnce, false, "from cert")
            .await?;
        let got = dev
            .recv(WAIT)
            .await?
            .context("dev's own message not delivered")?;
        assert_eq!(&got.payload[..], b"from cert");

        // Claiming the certificate principal on plain TCP, without a certificate: refused.
        let err = connect(options("dev-2", hub.tcp(), Some(("dev", ""))))
            .await
            .err()
            .context("dev accepted over tcp")?;
        assert!(err.to_string().contains("NotAuthorized"), "{err}");
        let mut o = options("dev-3", hub.tcp(), None);
        o.set_credentials("dev", "anything");
        assert!(
            connect(o).await.is_err(),
            "dev accepted over tcp with a password"
        );

        // A certificate from another CA does not complete the handshake; no certificate neither (two-way TLS).
        assert!(
            connect(tls_options("dev-4", ssl, &pki, Some(&pki.rogue)))
                .await
                .is_err(),
            "rogue CA accepted"
        );
        assert!(
            connect(tls_options("dev-5", ssl, &pki, None))
                .await
                .is_err(),
            "no client certificate accepted"
        );

        // WSS with the client certificate works too.
        let wss = hub.addr(ListenKind::Wss);
        let mut o = rumqttc::MqttOptions::new(
            "dev-ws",
            format!("wss://127.0.0.1:{}/mqtt", wss.port()),
            wss.port(),
        );
        o.set_transport(rumqttc::Transport::wss_with_config(
            pki.pki.mqtt_tls(Some(&pki.dev)),
        ));
        let (mut wsc, ack) = connect(o).await?;
        assert_eq!(ack.code, ConnectReturnCode::Success);
        wsc.publish("dev/wss", QoS::AtLeastOnce, false, "wss")
            .await?;
        let got = dev.recv(WAIT).await?.context("wss message not delivered")?;
        assert_eq!(got.topic, "dev/wss");
        Ok(())
    })
}

#[test]
fn one_way_tls_with_password() -> Result<()> {
    block_on(async {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::tempdir()?;
        let pki = make_pki(dir.path())?;
        let d = dir.path().display();
        let hub = start_hub(&format!(
            "listen: ['ssl://127.0.0.1:0']\n\
         certificate: {{cert: '{d}/server.pem', key: '{d}/server.key'}}\n\
         {PRINCIPALS}storage: {{dir: '{{dir}}/data'}}\n"
        ))
        .await?;
        let ssl = hub.addr(ListenKind::Ssl);
        let mut o = tls_options("tls-pw", ssl, &pki, None);
        o.set_credentials("admin", "admin-pw");
        let (mut c, ack) = connect(o).await?;
        assert_eq!(ack.code, ConnectReturnCode::Success);
        c.subscribe("tls/#", QoS::AtLeastOnce).await?;
        c.publish("tls/x", QoS::AtLeastOnce, false, "secret")
            .await?;
        assert_eq!(
            &c.recv(WAIT).await?.context("tls round trip")?.payload[..],
            b"secret"
        );
        let mut o = tls_options("tls-bad", ssl, &pki, None);
        o.set_credentials("admin", "wrong");
        assert!(connect(o).await.is_err());
        Ok(())
    })
}

/// Starts the child-process hub with extra environment, without waiting for it to listen.
fn spawn_child(
    config: &std::path::Path,
    log: &std::path::Path,
    env: &[(&str, String)],
) -> Result<ChildHub> {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut cmd = rerun_test("hub_child_process");
    cmd.env(CHILD_CONFIG_ENV, config)
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Ok(ChildHub(Process::spawn(&mut cmd, "the hub")?.with_log(log)))
}

/// Reads one HTTP/1.1 request (head and content-length body) and answers 200.
async fn read_request(stream: &mut tokio::net::TcpStream) -> Result<(String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head, body_start) = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed before the request ended");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break (String::from_utf8_lossy(&buf[..i]).to_string(), i + 4);
        }
    };
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_string())
        })
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(0);
    while buf.len() < body_start + len {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed before the body ended");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[body_start..body_start + len]).to_string();
    stream
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        .await?;
    Ok((head, body))
}

#[test]
fn reports_statistics_to_the_master() -> Result<()> {
    block_on(async {
        let master = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let master_addr = master.local_addr()?;
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let config = dir.path().join("service.yml");
        write(
            &config,
            &format!(
                "listen: ['tcp://127.0.0.1:{port}']\n{PRINCIPALS}storage: {{dir: '{}'}}\n",
                dir.path().join("data").display()
            ),
        )?;
        let env = [
            ("BAETYL_SERVICE_NAME", "localhub".to_string()),
            ("BAETYL_SERVICE_INSTANCE_NAME", "localhub".to_string()),
            ("BAETYL_SERVICE_TOKEN", "tok-123".to_string()),
            ("BAETYL_MASTER_API_ADDRESS", format!("tcp://{master_addr}")),
        ];
        let _hub = spawn_child(&config, &dir.path().join("hub.log"), &env)?;
        let (mut stream, _) = tokio::time::timeout(Duration::from_secs(60), master.accept())
            .await
            .context("the hub never called the master")??;
        let (head, body) = tokio::time::timeout(WAIT, read_request(&mut stream)).await??;
        assert!(
            head.starts_with("PUT /v1/services/localhub/instances/localhub/report "),
            "{head}"
        );
        let lower = head.to_ascii_lowercase();
        assert!(lower.contains("x-openedge-username: localhub"), "{head}");
        assert!(lower.contains("x-openedge-password: tok-123"), "{head}");
        let stats: serde_json::Value = serde_json::from_str(&body)?;
        assert!(stats["hub"]["auth_refused"].is_u64(), "{stats}");
        assert!(stats["connections"].is_number(), "{stats}");
        Ok(())
    })
}

#[test]
fn engine_environment_overrides_are_refused() -> Result<()> {
    block_on(async {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("service.yml");
        let log = dir.path().join("hub.log");
        write(
            &config,
            &format!(
                "listen: ['tcp://127.0.0.1:0']\n{PRINCIPALS}storage: {{dir: '{}'}}\n",
                dir.path().join("data").display()
            ),
        )?;
        let env = [(
            "rmqtt_plugin_rmqtt_retainer_storage__type",
            "ram".to_string(),
        )];
        let mut child = spawn_child(&config, &log, &env)?;
        // The hub must refuse to run with an rmqtt_plugin_ variable set.
        let status = child.0.wait_exit(Duration::from_secs(60));
        assert!(!status.success());
        let out = std::fs::read_to_string(&log)?;
        assert!(
            out.contains("rmqtt_plugin_rmqtt_retainer_storage__type"),
            "{out}"
        );
        Ok(())
    })
}
