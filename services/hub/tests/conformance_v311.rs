//! MQTT 3.1.1 conformance in raw bytes: each case sends exactly the bytes of a situation the specification
//! rules on and compares what comes back with what the specification requires (a packet byte for byte, or the
//! network connection closed with nothing sent). Every case runs against our hub and, in the same run, against
//! Debian's mosquitto 2.0.11 on a free port; the test prints both columns and fails if the hub fails a case.
//! The statement numbers are those of the OASIS MQTT 3.1.1 standard (Appendix B).

mod mqtt_raw;

use std::time::Duration;

use anyhow::Result;
use mqtt_raw::*;

/// A clean 3.1.1 session as `admin`, CONNACK checked byte for byte.
async fn connect(t: &Target, id: &str) -> Result<Conn, String> {
    let mut c = Conn::open(t.addr).await?;
    c.send(&Connect::v311(id).bytes()).await;
    c.expect(&[0x20, 0x02, 0x00, 0x00]).await?;
    Ok(c)
}

/// Sends `bytes` on a fresh connection and expects the close with nothing sent back.
async fn closes_without_answer(t: &Target, bytes: &[u8]) -> R {
    let mut c = Conn::open(t.addr).await?;
    c.send(bytes).await;
    c.expect_close().await
}

/// Sends `bytes` after a successful CONNECT and expects the close with nothing sent back.
async fn closes_after(t: &Target, id: &str, bytes: &[u8]) -> R {
    let mut c = connect(t, id).await?;
    c.send(bytes).await;
    c.expect_close().await
}

async fn connack_ok(t: Target) -> R {
    let mut c = connect(&t, "v3-ok").await?;
    c.ping().await
}

async fn unsupported_level(t: Target) -> R {
    for level in [2u8, 6, 0x84] {
        let mut c = Conn::open(t.addr).await?;
        let mut connect = Connect::v311(&format!("v3-level-{level}"));
        connect.level = level;
        c.send(&connect.bytes()).await;
        c.expect(&[0x20, 0x02, 0x00, 0x01])
            .await
            .map_err(|e| format!("level {level}: {e}"))?;
        c.expect_close()
            .await
            .map_err(|e| format!("level {level}: {e}"))?;
    }
    Ok(())
}

async fn bad_protocol_name(t: Target) -> R {
    let mut connect = Connect::v311("v3-name");
    connect.name = b"MQTX".to_vec();
    closes_without_answer(&t, &connect.bytes()).await
}

async fn reserved_connect_flag(t: Target) -> R {
    let mut connect = Connect::v311("v3-reserved");
    connect.flags = Some(0xC3);
    closes_without_answer(&t, &connect.bytes()).await
}

async fn will_flags(t: Target) -> R {
    // Will QoS 1 without the will flag; will retain without the will flag; will QoS 3.
    for (flags, what) in [
        (0xCA, "will QoS without will flag"),
        (0xE2, "will retain without will flag"),
    ] {
        let mut connect = Connect::v311("v3-willflags");
        connect.flags = Some(flags);
        closes_without_answer(&t, &connect.bytes())
            .await
            .map_err(|e| format!("{what}: {e}"))?;
    }
    let mut connect = Connect::v311("v3-willqos3").will(Will::new("w/x", "gone"));
    if let Some(w) = connect.will.as_mut() {
        w.qos = 3;
    }
    closes_without_answer(&t, &connect.bytes())
        .await
        .map_err(|e| format!("will QoS 3: {e}"))
}

async fn password_without_username(t: Target) -> R {
    let mut connect = Connect::v311("v3-pwonly");
    connect.user = None;
    closes_without_answer(&t, &connect.bytes()).await
}

async fn empty_client_id_persistent(t: Target) -> R {
    let mut c = Conn::open(t.addr).await?;
    c.send(&Connect::v311("").clean(false).bytes()).await;
    c.expect(&[0x20, 0x02, 0x00, 0x02]).await?;
    c.expect_close().await
}

async fn empty_client_id_clean(t: Target) -> R {
    let mut c = connect(&t, "").await?;
    c.ping().await
}

async fn client_id_characters(t: Target) -> R {
    for id in [
        "v3 id with spaces",
        "v3/id/with/slashes",
        "v3:id:colons",
        "v3.id.dots",
        "v3-é-ü",
    ] {
        let mut c = connect(&t, id).await.map_err(|e| format!("{id:?}: {e}"))?;
        c.ping().await.map_err(|e| format!("{id:?}: {e}"))?;
    }
    Ok(())
}

async fn truncated_connect(t: Target) -> R {
    // The payload ends before the client id: malformed.
    let mut connect = Connect::v311("v3-short");
    connect.truncate = Some(10);
    closes_without_answer(&t, &connect.bytes())
        .await
        .map_err(|e| format!("truncated: {e}"))?;
    // Bytes after the last field: malformed too.
    let mut connect = Connect::v311("v3-long");
    connect.trailing = b"extra".to_vec();
    closes_without_answer(&t, &connect.bytes())
        .await
        .map_err(|e| format!("trailing bytes: {e}"))
}

async fn first_packet_not_connect(t: Target) -> R {
    closes_without_answer(&t, &PINGREQ).await?;
    closes_without_answer(&t, &subscribe(1, &[(b"a", 0)], None)).await
}

async fn second_connect(t: Target) -> R {
    closes_after(&t, "v3-second", &Connect::v311("v3-second").bytes()).await
}

async fn disconnect_discards_will_and_closes(t: Target) -> R {
    let mut watch = connect(&t, "v3-disc-watch").await?;
    watch.send(&subscribe(1, &[(b"v3disc/#", 0)], None)).await;
    watch.expect(&[0x90, 0x03, 0x00, 0x01, 0x00]).await?;
    let mut c = Conn::open(t.addr).await?;
    c.send(
        &Connect::v311("v3-disc")
            .will(Will::new("v3disc/will", "gone"))
            .bytes(),
    )
    .await;
    c.expect(&[0x20, 0x02, 0x00, 0x00]).await?;
    c.send(&DISCONNECT).await;
    c.expect_close().await?;
    watch.expect_silence().await
}

async fn disconnect_reserved_flags(t: Target) -> R {
    closes_after(&t, "v3-discflags", &[0xE1, 0x00]).await
}

async fn publish_qos3(t: Target) -> R {
    closes_after(
        &t,
        "v3-qos3",
        &pkt(0x36, &[&s("a/b")[..], &[0, 1], b"x"].concat()),
    )
    .await
}

async fn publish_wildcard_topic(t: Target) -> R {
    for topic in ["v3/+", "v3/#"] {
        closes_after(&t, "v3-wild", &publish(0, false, topic, None, None, "x"))
            .await
            .map_err(|e| format!("{topic}: {e}"))?;
    }
    Ok(())
}

async fn publish_nul_topic(t: Target) -> R {
    closes_after(&t, "v3-nul", &publish(0, false, b"a\0b", None, None, "x")).await
}

async fn publish_surrogate_topic(t: Target) -> R {
    closes_after(
        &t,
        "v3-surrogate",
        &publish(0, false, b"a\xED\xA0\x80", None, None, "x"),
    )
    .await
}

async fn publish_control_and_noncharacters(t: Target) -> R {
    for topic in [
        &b"a\x01b"[..],
        b"a\x1fb",
        b"a\x7fb",
        "a\u{85}b".as_bytes(),
        "a\u{FFFF}b".as_bytes(),
        "a\u{FDD0}b".as_bytes(),
    ] {
        closes_after(&t, "v3-ctrl", &publish(0, false, topic, None, None, "x"))
            .await
            .map_err(|e| format!("{}: {e}", hex(topic)))?;
    }
    Ok(())
}

async fn publish_empty_topic(t: Target) -> R {
    closes_after(
        &t,
        "v3-emptytopic",
        &publish(0, false, b"", None, None, "x"),
    )
    .await
}

async fn packet_id_zero(t: Target) -> R {
    closes_after(&t, "v3-pid0", &publish(1, false, "a", Some(0), None, "x"))
        .await
        .map_err(|e| format!("PUBLISH: {e}"))?;
    closes_after(&t, "v3-pid0", &subscribe(0, &[(b"a", 0)], None))
        .await
        .map_err(|e| format!("SUBSCRIBE: {e}"))
}

async fn subscribe_reserved_header(t: Target) -> R {
    closes_after(
        &t,
        "v3-subflags",
        &subscribe_first(0x80, 1, &[(b"a", 0)], None),
    )
    .await
}

async fn subscribe_reserved_option_bits(t: Target) -> R {
    for opt in [0x03u8, 0x04, 0x80] {
        closes_after(&t, "v3-subopt", &subscribe(1, &[(b"a", opt)], None))
            .await
            .map_err(|e| format!("options 0x{opt:02x}: {e}"))?;
    }
    Ok(())
}

async fn subscribe_empty_filter(t: Target) -> R {
    closes_after(&t, "v3-subempty", &subscribe(1, &[(b"", 0)], None)).await
}

async fn subscribe_no_filters(t: Target) -> R {
    closes_after(&t, "v3-subnone", &subscribe(1, &[], None)).await
}

async fn subscribe_invalid_filter(t: Target) -> R {
    // `#` not last, `+` not a whole level: either SUBACK 0x80 or the connection closed.
    for f in [&b"a/#/b"[..], b"a/b+", b"#a"] {
        let mut c = connect(&t, "v3-badfilter").await?;
        c.send(&subscribe(7, &[(f, 0)], None)).await;
        match c.next(WAIT).await {
            Event::Closed => {}
            Event::Packet(p) if p.bytes() == [0x90, 0x03, 0x00, 0x07, 0x80] => {}
            other => return Err(format!("{}: {}", hex(f), show(&other))),
        }
    }
    Ok(())
}

async fn subscribe_ack_codes(t: Target) -> R {
    let mut c = connect(&t, "v3-suback").await?;
    c.send(&subscribe(
        0x1234,
        &[(b"v3suback/a", 1), (b"v3suback/+", 2), (b"v3suback/#", 0)],
        None,
    ))
    .await;
    c.expect(&[0x90, 0x05, 0x12, 0x34, 0x01, 0x02, 0x00]).await
}

async fn unsubscribe_reserved_header(t: Target) -> R {
    let mut b = unsubscribe(1, &[b"a"], None);
    b[0] = 0xA0;
    closes_after(&t, "v3-unsubflags", &b).await
}

async fn unsubscribe_no_filters(t: Target) -> R {
    closes_after(&t, "v3-unsubnone", &unsubscribe(1, &[], None)).await
}

async fn unsuback_without_subscription(t: Target) -> R {
    let mut c = connect(&t, "v3-unsuback").await?;
    c.send(&unsubscribe(
        0x0102,
        &[b"never/subscribed", b"nor/this"],
        None,
    ))
    .await;
    c.expect(&[0xB0, 0x02, 0x01, 0x02]).await
}

async fn ack_reserved_flags(t: Target) -> R {
    closes_after(&t, "v3-pubrelflags", &ack(0x60, 1))
        .await
        .map_err(|e| format!("PUBREL 0x60: {e}"))?;
    closes_after(&t, "v3-pubackflags", &ack(0x41, 1))
        .await
        .map_err(|e| format!("PUBACK 0x41: {e}"))
}

async fn server_only_packets(t: Target) -> R {
    for (name, b) in [
        ("CONNACK", vec![0x20, 0x02, 0x00, 0x00]),
        ("SUBACK", vec![0x90, 0x03, 0x00, 0x01, 0x00]),
        ("UNSUBACK", vec![0xB0, 0x02, 0x00, 0x01]),
        ("PINGRESP", PINGRESP.to_vec()),
        ("reserved type 0", vec![0x00, 0x00]),
        ("reserved type 15", vec![0xF0, 0x00]),
    ] {
        closes_after(&t, "v3-srvonly", &b)
            .await
            .map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(())
}

async fn remaining_length_five_bytes(t: Target) -> R {
    closes_after(&t, "v3-len5", &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]).await
}

async fn ping(t: Target) -> R {
    let mut c = connect(&t, "v3-ping").await?;
    c.ping().await?;
    c.ping().await
}

async fn qos1_and_qos2_flows(t: Target) -> R {
    let mut c = connect(&t, "v3-flows").await?;
    c.send(&publish(1, false, "v3flows/1", Some(0x0A0B), None, "one"))
        .await;
    c.expect(&[0x40, 0x02, 0x0A, 0x0B]).await?;
    c.send(&publish(2, false, "v3flows/2", Some(0x0C0D), None, "two"))
        .await;
    c.expect(&[0x50, 0x02, 0x0C, 0x0D]).await?;
    // A duplicate before PUBREL is acknowledged again and not delivered twice.
    let mut dup = publish(2, false, "v3flows/2", Some(0x0C0D), None, "two");
    dup[0] |= 0x08;
    c.send(&dup).await;
    c.expect(&[0x50, 0x02, 0x0C, 0x0D]).await?;
    c.send(&ack(0x62, 0x0C0D)).await;
    c.expect(&[0x70, 0x02, 0x0C, 0x0D]).await
}

async fn qos2_delivered_once(t: Target) -> R {
    let mut sub = connect(&t, "v3-once-sub").await?;
    sub.send(&subscribe(1, &[(b"v3once", 2)], None)).await;
    sub.expect(&[0x90, 0x03, 0x00, 0x01, 0x02]).await?;
    let mut c = connect(&t, "v3-once-pub").await?;
    c.send(&publish(2, false, "v3once", Some(9), None, "x"))
        .await;
    c.expect(&[0x50, 0x02, 0x00, 0x09]).await?;
    let mut dup = publish(2, false, "v3once", Some(9), None, "x");
    dup[0] |= 0x08;
    c.send(&dup).await;
    c.expect(&[0x50, 0x02, 0x00, 0x09]).await?;
    c.send(&ack(0x62, 9)).await;
    c.expect(&[0x70, 0x02, 0x00, 0x09]).await?;
    let p = sub.expect_publish(false).await?;
    if p.payload != b"x" || p.qos != 2 {
        return Err(format!("unexpected delivery {p:?}"));
    }
    if let Some(pid) = p.pid {
        sub.send(&ack(0x50, pid)).await;
        sub.expect(&ack(0x62, pid)).await?;
        sub.send(&ack(0x70, pid)).await;
    }
    sub.expect_silence().await
}

/// A subscriber at QoS `sub_qos` receives one message published at `pub_qos`; returns it (not acknowledged).
async fn receive_one(
    t: &Target,
    case: &str,
    sub_qos: u8,
    pub_qos: u8,
) -> Result<(Conn, Publish), String> {
    let topic = format!("{case}/t");
    let mut sub = connect(t, &format!("{case}-sub")).await?;
    sub.send(&subscribe(1, &[(topic.as_bytes(), sub_qos)], None))
        .await;
    sub.expect(&[0x90, 0x03, 0x00, 0x01, sub_qos]).await?;
    let mut p = connect(t, &format!("{case}-pub")).await?;
    p.send(&publish(
        pub_qos,
        false,
        &topic,
        (pub_qos > 0).then_some(1),
        None,
        "m",
    ))
    .await;
    match pub_qos {
        1 => p.expect(&[0x40, 0x02, 0x00, 0x01]).await?,
        2 => {
            p.expect(&[0x50, 0x02, 0x00, 0x01]).await?;
            p.send(&ack(0x62, 1)).await;
            p.expect(&[0x70, 0x02, 0x00, 0x01]).await?;
        }
        _ => {}
    }
    let got = sub.expect_publish(false).await?;
    Ok((sub, got))
}

async fn qos_is_minimum(t: Target) -> R {
    let (_s, got) = receive_one(&t, "v3min0", 0, 2).await?;
    if got.qos != 0 {
        return Err(format!("QoS 0 subscription got QoS {}", got.qos));
    }
    let (_s, got) = receive_one(&t, "v3min1", 1, 2).await?;
    if got.qos != 1 {
        return Err(format!("QoS 1 subscription got QoS {}", got.qos));
    }
    Ok(())
}

async fn wrong_ack_type(t: Target) -> R {
    // A QoS 1 PUBLISH answered with PUBREC, and a QoS 2 one answered with PUBACK: protocol violations.
    for (case, qos, wrong) in [("v3wrongack1", 1u8, 0x50u8), ("v3wrongack2", 2, 0x40)] {
        let (mut sub, got) = receive_one(&t, case, qos, qos).await?;
        let pid = got.pid.ok_or("no packet id")?;
        sub.send(&ack(wrong, pid)).await;
        sub.expect_close()
            .await
            .map_err(|e| format!("QoS {qos} answered with 0x{wrong:02x}: {e}"))?;
    }
    Ok(())
}

async fn retained_messages(t: Target) -> R {
    let mut p = connect(&t, "v3-ret-pub").await?;
    p.send(&publish(1, true, "v3ret/x", Some(1), None, "kept"))
        .await;
    p.expect(&[0x40, 0x02, 0x00, 0x01]).await?;
    // A live subscriber gets later retained publishes with RETAIN 0; a new one gets the stored one with RETAIN 1.
    let mut live = connect(&t, "v3-ret-live").await?;
    live.send(&subscribe(1, &[(b"v3ret/#", 0)], None)).await;
    live.expect(&[0x90, 0x03, 0x00, 0x01, 0x00]).await?;
    let first = live.expect_publish(false).await?;
    if !first.retain || first.payload != b"kept" {
        return Err(format!(
            "new subscription: expected the retained message with RETAIN 1, got {first:?}"
        ));
    }
    p.send(&publish(0, true, "v3ret/x", None, None, "again"))
        .await;
    let got = live.expect_publish(false).await?;
    if got.retain {
        return Err(format!("established subscription got RETAIN 1: {got:?}"));
    }
    // An empty retained message clears.
    p.send(&publish(1, true, "v3ret/x", Some(2), None, ""))
        .await;
    p.expect(&[0x40, 0x02, 0x00, 0x02]).await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut n = connect(&t, "v3-ret-new").await?;
        n.send(&subscribe(1, &[(b"v3ret/#", 0)], None)).await;
        n.expect(&[0x90, 0x03, 0x00, 0x01, 0x00]).await?;
        match n.next(QUIET).await {
            Event::Silent => return Ok(()),
            Event::Packet(p) if tokio::time::Instant::now() < deadline && p.kind() == 3 => continue,
            other => return Err(format!("after clearing: {}", show(&other))),
        }
    }
}

async fn session_present_and_queued(t: Target) -> R {
    let id = "v3-session";
    let mut c = Conn::open(t.addr).await?;
    c.send(&Connect::v311(id).clean(false).bytes()).await;
    c.expect(&[0x20, 0x02, 0x00, 0x00]).await?;
    c.send(&subscribe(1, &[(b"v3sess/#", 1)], None)).await;
    c.expect(&[0x90, 0x03, 0x00, 0x01, 0x01]).await?;
    c.send(&DISCONNECT).await;
    c.expect_close().await?;
    let mut p = connect(&t, "v3-session-pub").await?;
    p.send(&publish(1, false, "v3sess/q", Some(1), None, "queued"))
        .await;
    p.expect(&[0x40, 0x02, 0x00, 0x01]).await?;
    let mut c = Conn::open(t.addr).await?;
    c.send(&Connect::v311(id).clean(false).bytes()).await;
    c.expect(&[0x20, 0x02, 0x01, 0x00]).await?;
    let got = c.expect_publish(false).await?;
    if got.payload != b"queued" || got.qos != 1 {
        return Err(format!("queued message: {got:?}"));
    }
    c.send(&ack(0x40, got.pid.unwrap_or(0))).await;
    c.send(&DISCONNECT).await;
    c.expect_close().await?;
    let mut c = Conn::open(t.addr).await?;
    c.send(&Connect::v311(id).clean(true).bytes()).await;
    c.expect(&[0x20, 0x02, 0x00, 0x00]).await
}

async fn keep_alive_enforced(t: Target) -> R {
    let mut c = Conn::open(t.addr).await?;
    c.send(&Connect::v311("v3-ka").keep_alive(1).bytes()).await;
    c.expect(&[0x20, 0x02, 0x00, 0x00]).await?;
    let start = tokio::time::Instant::now();
    c.expect_close().await?;
    let took = start.elapsed();
    if took < Duration::from_millis(900) {
        return Err(format!("closed after {took:?}, before the keep alive"));
    }
    Ok(())
}

async fn will_on_abnormal_close(t: Target) -> R {
    let mut watch = connect(&t, "v3-will-watch").await?;
    watch.send(&subscribe(1, &[(b"v3will/#", 0)], None)).await;
    watch.expect(&[0x90, 0x03, 0x00, 0x01, 0x00]).await?;
    {
        let mut c = Conn::open(t.addr).await?;
        c.send(
            &Connect::v311("v3-will")
                .will(Will::new("v3will/x", "gone"))
                .bytes(),
        )
        .await;
        c.expect(&[0x20, 0x02, 0x00, 0x00]).await?;
    }
    let got = watch.expect_publish(false).await?;
    if got.topic != b"v3will/x" || got.payload != b"gone" {
        return Err(format!("will: {got:?}"));
    }
    Ok(())
}

async fn takeover_closes_old(t: Target) -> R {
    let mut old = connect(&t, "v3-takeover").await?;
    let mut new = connect(&t, "v3-takeover").await?;
    old.expect_close().await?;
    new.ping().await
}

async fn shared_subscription(t: Target) -> R {
    let mut a = connect(&t, "v3-share-a").await?;
    let mut b = connect(&t, "v3-share-b").await?;
    for c in [&mut a, &mut b] {
        c.send(&subscribe(1, &[(b"$share/g/v3share/t", 0)], None))
            .await;
        c.expect(&[0x90, 0x03, 0x00, 0x01, 0x00]).await?;
    }
    let mut p = connect(&t, "v3-share-pub").await?;
    for i in 0..6 {
        p.send(&publish(0, false, "v3share/t", None, None, format!("{i}")))
            .await;
    }
    let mut got = 0;
    for c in [&mut a, &mut b] {
        while let Event::Packet(p) = c.next(QUIET).await {
            if p.kind() == 3 {
                got += 1;
            }
        }
    }
    if got != 6 {
        return Err(format!("6 messages to a group of 2 gave {got} deliveries"));
    }
    Ok(())
}

async fn wildcards_skip_dollar_topics(t: Target) -> R {
    let mut all = connect(&t, "v3-dollar-all").await?;
    all.send(&subscribe(1, &[(b"#", 0), (b"+/+/+/+/+", 0)], None))
        .await;
    all.expect(&[0x90, 0x04, 0x00, 0x01, 0x00, 0x00]).await?;
    let mut sys = connect(&t, "v3-dollar-sys").await?;
    sys.send(&subscribe(1, &[(b"$SYS/#", 0)], None)).await;
    sys.expect(&[0x90, 0x03, 0x00, 0x01, 0x00]).await?;
    // Connecting a client makes the hub publish on $SYS (mosquitto publishes $SYS periodically).
    let _other = connect(&t, "v3-dollar-other").await?;
    while let Event::Packet(p) = all.next(QUIET).await {
        if let Some(p) = p.publish(false)
            && p.topic.starts_with(b"$")
        {
            return Err(format!("`#` matched {}", String::from_utf8_lossy(&p.topic)));
        }
    }
    Ok(())
}

#[test]
fn mqtt_311_conformance_hub_and_mosquitto() -> Result<()> {
    block_on(async {
        let (hub, _h) = start_hub("").await?;
        let mosq = if mosquitto_installed() {
            Some(start_mosquitto("").await?)
        } else {
            eprintln!("mosquitto is not installed (apt-get install mosquitto): the hub runs alone");
            None
        };
        let cases = vec![
            case!("CONNECT accepted", "MQTT-3.2.0-1, MQTT-3.1.4-4", connack_ok),
            case!(
                "unsupported protocol level: CONNACK 0x01 then close",
                "MQTT-3.1.2-2, MQTT-3.2.2-5",
                unsupported_level
            ),
            case!(
                "bad protocol name: close without CONNACK",
                "MQTT-3.1.2-1, MQTT-3.1.4-1",
                bad_protocol_name
            ),
            case!(
                "CONNECT reserved flag: close",
                "MQTT-3.1.2-3",
                reserved_connect_flag
            ),
            case!(
                "will QoS/retain without will flag, will QoS 3: close",
                "MQTT-3.1.2-11, -13, -14, -15",
                will_flags
            ),
            case!(
                "password flag without user name flag: close",
                "MQTT-3.1.2-22",
                password_without_username
            ),
            case!(
                "empty client id, clean session 0: CONNACK 0x02 then close",
                "MQTT-3.1.3-8",
                empty_client_id_persistent
            ),
            case!(
                "empty client id, clean session 1: assigned",
                "MQTT-3.1.3-6",
                empty_client_id_clean
            ),
            case!(
                "client ids with ' /:.' and non-ASCII accepted",
                "MQTT-3.1.3-5",
                client_id_characters
            ),
            case!(
                "malformed CONNECT (short, trailing bytes): close without CONNACK",
                "MQTT-3.1.4-1",
                truncated_connect
            ),
            case!(
                "first packet not CONNECT: close",
                "MQTT-3.1.0-1, MQTT-4.8.0-1",
                first_packet_not_connect
            ),
            case!("second CONNECT: close", "MQTT-3.1.0-2", second_connect),
            case!(
                "DISCONNECT: will discarded, connection closed",
                "MQTT-3.14.4-3, MQTT-3.1.2-10",
                disconnect_discards_will_and_closes
            ),
            case!(
                "DISCONNECT reserved flags: close",
                "MQTT-3.14.1-1, MQTT-2.2.2-2",
                disconnect_reserved_flags
            ),
            case!("PUBLISH QoS 3: close", "MQTT-3.3.1-4", publish_qos3),
            case!(
                "PUBLISH topic with wildcards: close",
                "MQTT-3.3.2-2",
                publish_wildcard_topic
            ),
            case!(
                "PUBLISH topic with U+0000: close",
                "MQTT-1.5.3-2, MQTT-4.7.3-2",
                publish_nul_topic
            ),
            case!(
                "PUBLISH topic with a UTF-16 surrogate: close",
                "MQTT-1.5.3-1",
                publish_surrogate_topic
            ),
            case!(
                "PUBLISH topic with control characters or non-characters: close",
                "1.5.3 (MAY, as mosquitto)",
                publish_control_and_noncharacters
            ),
            case!(
                "PUBLISH empty topic: close",
                "MQTT-4.7.3-1",
                publish_empty_topic
            ),
            case!("packet identifier 0: close", "MQTT-2.3.1-1", packet_id_zero),
            case!(
                "SUBSCRIBE reserved header bits: close",
                "MQTT-3.8.1-1",
                subscribe_reserved_header
            ),
            case!(
                "SUBSCRIBE options reserved bits / QoS 3: close",
                "MQTT-3.8.3-4",
                subscribe_reserved_option_bits
            ),
            case!(
                "SUBSCRIBE zero-length filter: close",
                "MQTT-4.7.3-1",
                subscribe_empty_filter
            ),
            case!(
                "SUBSCRIBE without filters: close",
                "MQTT-3.8.3-3",
                subscribe_no_filters
            ),
            case!(
                "SUBSCRIBE invalid filter: SUBACK 0x80 or close",
                "MQTT-4.7.1-2, -3",
                subscribe_invalid_filter
            ),
            case!(
                "SUBACK: packet id, one code per filter, in order",
                "MQTT-3.8.4-1, -2, -5, MQTT-3.9.3-1",
                subscribe_ack_codes
            ),
            case!(
                "UNSUBSCRIBE reserved header bits: close",
                "MQTT-3.10.1-1",
                unsubscribe_reserved_header
            ),
            case!(
                "UNSUBSCRIBE without filters: close",
                "MQTT-3.10.3-2",
                unsubscribe_no_filters
            ),
            case!(
                "UNSUBACK even without a subscription",
                "MQTT-3.10.4-4, -5, -6",
                unsuback_without_subscription
            ),
            case!(
                "PUBREL/PUBACK reserved header bits: close",
                "MQTT-3.6.1-1, MQTT-2.2.2-2",
                ack_reserved_flags
            ),
            case!(
                "server-only and reserved packet types from a client: close",
                "MQTT-4.8.0-1",
                server_only_packets
            ),
            case!(
                "remaining length over 4 bytes: close",
                "2.2.3, MQTT-4.8.0-1",
                remaining_length_five_bytes
            ),
            case!("PINGREQ: PINGRESP", "MQTT-3.12.4-1", ping),
            case!(
                "QoS 1 and 2 flows, duplicate QoS 2 acknowledged again",
                "MQTT-4.3.2-2, MQTT-4.3.3-2, -3, -4",
                qos1_and_qos2_flows
            ),
            case!(
                "QoS 2 duplicate not delivered twice",
                "MQTT-4.3.3-3",
                qos2_delivered_once
            ),
            case!(
                "delivered QoS = min(published, granted)",
                "MQTT-3.8.4-6, MQTT-3.3.4-2",
                qos_is_minimum
            ),
            case!(
                "acknowledgement of the wrong type: close",
                "MQTT-4.8.0-1",
                wrong_ack_type
            ),
            case!(
                "retained: RETAIN 1 on subscribe, 0 when live, empty clears",
                "MQTT-3.3.1-5, -8, -9, -10, -11",
                retained_messages
            ),
            case!(
                "session present and queued QoS 1 after reconnect",
                "MQTT-3.2.2-1, -2, MQTT-3.1.2-4, -5, -6",
                session_present_and_queued
            ),
            case!(
                "keep alive: closed after 1.5 x keep alive",
                "MQTT-3.1.2-24",
                keep_alive_enforced
            ),
            case!(
                "will published on abnormal close",
                "MQTT-3.1.2-8",
                will_on_abnormal_close
            ),
            case!(
                "same client id: the old connection closed",
                "MQTT-3.1.4-2",
                takeover_closes_old
            ),
            case!(
                "wildcards do not match topics starting with $",
                "MQTT-4.7.2-1",
                wildcards_skip_dollar_topics
            ),
            case!(
                "$share/ subscriptions on 3.1.1 (as mosquitto)",
                "(MQTT 5 4.8.2 on 3.1.1)",
                shared_subscription
            ),
        ];
        run_cases(
            "MQTT 3.1.1 conformance",
            cases,
            hub,
            mosq.as_ref().map(|(t, _)| t.clone()),
        )
        .await
    })
}
