//! MQTT 5 conformance in raw bytes, against our hub and Debian's mosquitto 2.0.11 in the same run (see
//! `conformance_v311.rs` for how the cases work). Where the specification says the server SHOULD send a
//! DISCONNECT with a reason code before closing (4.13.1), a case requires exactly that DISCONNECT; where it lets
//! the server choose among reason codes, the case accepts the set the specification allows. The statement
//! numbers are those of the OASIS MQTT 5.0 standard.

mod mqtt_raw;

use std::time::Duration;

use anyhow::Result;
use mqtt_raw::*;

const V5: Option<&[Vec<u8>]> = Some(&[]);

/// A clean MQTT 5 session as `admin` (or the given CONNECT); returns the connection and the CONNACK.
async fn connect(t: &Target, id: &str) -> Result<(Conn, Packet), String> {
    Conn::connected(t.addr, &Connect::v5(id)).await
}

async fn conn(t: &Target, id: &str) -> Result<Conn, String> {
    Ok(connect(t, id).await?.0)
}

/// The CONNACK is refused with one of `codes` then the connection closes, or it closes with nothing sent.
async fn connect_refused(t: &Target, c: &Connect, codes: &[u8]) -> R {
    let mut conn = Conn::open(t.addr).await?;
    conn.send(&c.bytes()).await;
    let seen = conn
        .expect_close_after(|p| p.connack_code().is_some_and(|c| codes.contains(&c)))
        .await?;
    if seen.len() > 1 {
        return Err(format!("more than one CONNACK: {seen:?}"));
    }
    Ok(())
}

/// After a successful CONNECT, `bytes` make the server send DISCONNECT with one of `codes` and close.
async fn disconnects_with(t: &Target, id: &str, bytes: &[u8], codes: &[u8]) -> R {
    let mut c = conn(t, id).await?;
    c.send(bytes).await;
    expect_disconnect_in(&mut c, codes).await
}

async fn expect_disconnect_in(c: &mut Conn, codes: &[u8]) -> R {
    let seen = c
        .expect_close_after(|p| p.disconnect_code().is_some())
        .await?;
    match seen.as_slice() {
        [d] if d.disconnect_code().is_some_and(|x| codes.contains(&x)) => Ok(()),
        [] => Err(format!(
            "closed without the DISCONNECT it should send ({})",
            codes_text(codes)
        )),
        other => Err(format!(
            "expected DISCONNECT {} then close, got {other:?}",
            codes_text(codes)
        )),
    }
}

fn codes_text(codes: &[u8]) -> String {
    codes
        .iter()
        .map(|c| format!("0x{c:02x}"))
        .collect::<Vec<_>>()
        .join("/")
}

/// SUBSCRIBE (MQTT 5) and check the SUBACK's reason codes.
async fn sub(c: &mut Conn, pid: u16, filters: &[(&[u8], u8)], p: &[Vec<u8>], want: &[u8]) -> R {
    c.send(&subscribe(pid, filters, Some(p))).await;
    let ack = c.expect_kind(9).await?;
    if ack.body.get(..2) != Some(&pid.to_be_bytes()[..]) {
        return Err(format!("SUBACK for another packet id: {ack:?}"));
    }
    let codes = ack.ack_codes(true);
    if codes != want {
        return Err(format!("SUBACK codes {codes:02x?}, expected {want:02x?}"));
    }
    Ok(())
}

/// Reads an MQTT 5 PUBACK/PUBREC/PUBCOMP: (packet id, reason code) (the reason may be omitted when 0).
async fn expect_ack(c: &mut Conn, kind: u8) -> Result<(u16, u8), String> {
    let p = c.expect_kind(kind).await?;
    let pid = u16::from_be_bytes([
        *p.body.first().ok_or("short ack")?,
        *p.body.get(1).ok_or("short ack")?,
    ]);
    Ok((pid, p.body.get(2).copied().unwrap_or(0)))
}

async fn publish_qos1(c: &mut Conn, topic: &str, pid: u16, p: &[Vec<u8>], payload: &str) -> R {
    c.send(&publish(1, false, topic, Some(pid), Some(p), payload))
        .await;
    let (id, code) = expect_ack(c, 4).await?;
    // 0x10 (No matching subscribers) is a success too (3.4.2.1).
    if id != pid || !matches!(code, 0x00 | 0x10) {
        return Err(format!("PUBACK {id} 0x{code:02x}"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// CONNECT

async fn connack_success(t: Target) -> R {
    let (mut c, ack) = connect(&t, "v5-ok").await?;
    if ack.body.first() != Some(&0) {
        return Err(format!("session present on a clean start: {ack:?}"));
    }
    c.ping().await
}

async fn malformed_connect(t: Target) -> R {
    let dup = Connect::v5("v5-dupprop").props(vec![
        p_u32(prop::SESSION_EXPIRY, 1),
        p_u32(prop::SESSION_EXPIRY, 2),
    ]);
    let unknown = Connect::v5("v5-unknownprop").props(vec![p_u8(0x7E, 1)]);
    let rm0 = Connect::v5("v5-rm0").props(vec![p_u16(prop::RECEIVE_MAXIMUM, 0)]);
    let mps0 = Connect::v5("v5-mps0").props(vec![p_u32(prop::MAXIMUM_PACKET_SIZE, 0)]);
    let rpi2 = Connect::v5("v5-rpi2").props(vec![p_u8(prop::REQUEST_PROBLEM_INFO, 2)]);
    let mut short = Connect::v5("v5-short");
    short.truncate = Some(11);
    let mut reserved = Connect::v5("v5-reserved");
    reserved.flags = Some(0xC3);
    let mut willqos3 = Connect::v5("v5-willqos3").will(Will::new("w", "x"));
    if let Some(w) = willqos3.will.as_mut() {
        w.qos = 3;
    }
    let mut nowill = Connect::v5("v5-nowillqos");
    nowill.flags = Some(0xCA);
    for (what, c) in [
        ("duplicate property", dup),
        ("unknown property", unknown),
        ("Receive Maximum 0", rm0),
        ("Maximum Packet Size 0", mps0),
        ("Request Problem Information 2", rpi2),
        ("truncated", short),
        ("reserved flag", reserved),
        ("will QoS 3", willqos3),
        ("will QoS without will flag", nowill),
    ] {
        connect_refused(&t, &c, &[0x81, 0x82])
            .await
            .map_err(|e| format!("{what}: {e}"))?;
    }
    Ok(())
}

async fn assigned_client_id(t: Target) -> R {
    let (mut c, ack) = connect(&t, "").await?;
    match prop(&ack.connack_props(), prop::ASSIGNED_CLIENT_ID) {
        Some(PropValue::Bytes(id)) if !id.is_empty() => c.ping().await,
        _ => Err(format!("no Assigned Client Identifier in {ack:?}")),
    }
}

async fn client_id_characters(t: Target) -> R {
    for id in ["v5 id with spaces", "v5/id", "v5:id", "v5.id"] {
        let (mut c, _) = connect(&t, id).await.map_err(|e| format!("{id:?}: {e}"))?;
        c.ping().await?;
    }
    Ok(())
}

async fn unsupported_auth_method(t: Target) -> R {
    let c = Connect::v5("v5-auth").props(vec![p_str(prop::AUTH_METHOD, "SCRAM-SHA-1")]);
    connect_refused(&t, &c, &[0x8C, 0x87]).await
}

async fn second_connect(t: Target) -> R {
    disconnects_with(&t, "v5-second", &Connect::v5("v5-second").bytes(), &[0x82]).await
}

async fn first_packet_not_connect(t: Target) -> R {
    let mut c = Conn::open(t.addr).await?;
    c.send(&subscribe(1, &[(b"a", 0)], V5)).await;
    c.expect_close().await
}

// ---------------------------------------------------------------------------------------------------------------
// DISCONNECT

async fn disconnect_closes_and_discards_will(t: Target) -> R {
    let mut watch = conn(&t, "v5-disc-watch").await?;
    sub(&mut watch, 1, &[(b"v5disc/#", 0)], &[], &[0]).await?;
    let mut c = Conn::open(t.addr).await?;
    c.send(
        &Connect::v5("v5-disc")
            .will(Will::new("v5disc/will", "gone"))
            .bytes(),
    )
    .await;
    c.expect_kind(2).await?;
    c.send(&disconnect5(0x00, &[])).await;
    c.expect_close().await?;
    watch.expect_silence().await
}

async fn disconnect_with_will_message(t: Target) -> R {
    let mut watch = conn(&t, "v5-disc4-watch").await?;
    sub(&mut watch, 1, &[(b"v5disc4/#", 0)], &[], &[0]).await?;
    let mut c = Conn::open(t.addr).await?;
    c.send(
        &Connect::v5("v5-disc4")
            .will(Will::new("v5disc4/will", "bye"))
            .bytes(),
    )
    .await;
    c.expect_kind(2).await?;
    c.send(&disconnect5(0x04, &[])).await;
    c.expect_close().await?;
    let p = watch.expect_publish(true).await?;
    if p.payload != b"bye" {
        return Err(format!("will: {p:?}"));
    }
    Ok(())
}

async fn disconnect_session_expiry_after_zero(t: Target) -> R {
    let mut c = conn(&t, "v5-discsei").await?;
    c.send(&disconnect5(0x00, &[p_u32(prop::SESSION_EXPIRY, 30)]))
        .await;
    expect_disconnect_in(&mut c, &[0x82]).await
}

async fn disconnect_reserved_flags(t: Target) -> R {
    disconnects_with(&t, "v5-discflags", &[0xE1, 0x00], &[0x81]).await
}

// ---------------------------------------------------------------------------------------------------------------
// PUBLISH

async fn publish_qos3(t: Target) -> R {
    let body = [&s("a")[..], &[0, 1, 0], b"x"].concat();
    disconnects_with(&t, "v5-qos3", &pkt(0x36, &body), &[0x81]).await
}

async fn publish_wildcard_topic(t: Target) -> R {
    for topic in ["v5/+", "v5/#"] {
        disconnects_with(
            &t,
            "v5-wild",
            &publish(0, false, topic, None, V5, "x"),
            &[0x81, 0x82, 0x90],
        )
        .await
        .map_err(|e| format!("{topic}: {e}"))?;
    }
    Ok(())
}

async fn publish_nul_topic(t: Target) -> R {
    disconnects_with(
        &t,
        "v5-nul",
        &publish(0, false, b"a\0b", None, V5, "x"),
        &[0x81],
    )
    .await
}

async fn publish_bad_utf8_topic(t: Target) -> R {
    for topic in [
        &b"a\xED\xA0\x80"[..],
        b"a\x01b",
        b"a\x7fb",
        "a\u{9F}b".as_bytes(),
        "a\u{FFFE}b".as_bytes(),
    ] {
        disconnects_with(
            &t,
            "v5-ctrl",
            &publish(0, false, topic, None, V5, "x"),
            &[0x81, 0x90],
        )
        .await
        .map_err(|e| format!("{}: {e}", hex(topic)))?;
    }
    Ok(())
}

async fn publish_empty_topic_without_alias(t: Target) -> R {
    disconnects_with(
        &t,
        "v5-emptytopic",
        &publish(0, false, b"", None, V5, "x"),
        &[0x82],
    )
    .await
}

async fn publish_with_subscription_id(t: Target) -> R {
    let b = publish(
        0,
        false,
        "v5/subid",
        None,
        Some(&[p_vbi(prop::SUBSCRIPTION_ID, 3)]),
        "x",
    );
    disconnects_with(&t, "v5-pubsubid", &b, &[0x82]).await
}

async fn topic_alias_zero(t: Target) -> R {
    let b = publish(
        0,
        false,
        "v5/a0",
        None,
        Some(&[p_u16(prop::TOPIC_ALIAS, 0)]),
        "x",
    );
    disconnects_with(&t, "v5-alias0", &b, &[0x94, 0x82]).await
}

async fn topic_alias_over_maximum(t: Target) -> R {
    let (mut c, ack) = connect(&t, "v5-aliasmax").await?;
    let max = match prop(&ack.connack_props(), prop::TOPIC_ALIAS_MAXIMUM) {
        Some(PropValue::Int(n)) => *n as u16,
        _ => 0,
    };
    let b = publish(
        0,
        false,
        "v5/amax",
        None,
        Some(&[p_u16(prop::TOPIC_ALIAS, max.saturating_add(1))]),
        "x",
    );
    c.send(&b).await;
    expect_disconnect_in(&mut c, &[0x94]).await
}

async fn topic_alias_unmapped(t: Target) -> R {
    let b = publish(
        0,
        false,
        b"",
        None,
        Some(&[p_u16(prop::TOPIC_ALIAS, 1)]),
        "x",
    );
    disconnects_with(&t, "v5-aliasunmapped", &b, &[0x82]).await
}

async fn topic_alias_mapping(t: Target) -> R {
    let mut s1 = conn(&t, "v5-alias-sub").await?;
    sub(&mut s1, 1, &[(b"v5alias/#", 0)], &[], &[0]).await?;
    let (mut c, ack) = connect(&t, "v5-alias-pub").await?;
    if !matches!(prop(&ack.connack_props(), prop::TOPIC_ALIAS_MAXIMUM), Some(PropValue::Int(n)) if *n >= 1)
    {
        return Err(format!("no Topic Alias Maximum in {ack:?}"));
    }
    c.send(&publish(
        0,
        false,
        "v5alias/long/topic",
        None,
        Some(&[p_u16(prop::TOPIC_ALIAS, 1)]),
        "1",
    ))
    .await;
    c.send(&publish(
        0,
        false,
        b"",
        None,
        Some(&[p_u16(prop::TOPIC_ALIAS, 1)]),
        "2",
    ))
    .await;
    for want in [&b"1"[..], b"2"] {
        let p = s1.expect_publish(true).await?;
        if p.topic != b"v5alias/long/topic"
            || p.payload != want
            || p.prop(prop::TOPIC_ALIAS).is_some()
        {
            return Err(format!("delivered {p:?}"));
        }
    }
    Ok(())
}

async fn qos_flows(t: Target) -> R {
    let mut c = conn(&t, "v5-flows").await?;
    publish_qos1(&mut c, "v5flows/1", 0x0101, &[], "one").await?;
    c.send(&publish(2, false, "v5flows/2", Some(0x0202), V5, "two"))
        .await;
    let (id, code) = expect_ack(&mut c, 5).await?;
    if id != 0x0202 || !matches!(code, 0x00 | 0x10) {
        return Err(format!("PUBREC {id} 0x{code:02x}"));
    }
    c.send(&ack(0x62, 0x0202)).await;
    let (id, code) = expect_ack(&mut c, 7).await?;
    if (id, code) != (0x0202, 0) {
        return Err(format!("PUBCOMP {id} 0x{code:02x}"));
    }
    Ok(())
}

async fn pubrel_unknown_packet_id(t: Target) -> R {
    let mut c = conn(&t, "v5-pubrel-unknown").await?;
    c.send(&ack(0x62, 0x0777)).await;
    let (id, code) = expect_ack(&mut c, 7).await?;
    if id != 0x0777 || code != 0x92 {
        return Err(format!(
            "PUBCOMP {id} 0x{code:02x}, expected 0x92 (Packet Identifier not found)"
        ));
    }
    c.ping().await
}

async fn publish_denied_reason(t: Target) -> R {
    let (mut c, _) = Conn::connected(
        t.addr,
        &Connect::v5("v5-denied").user("limited", "limited-pw"),
    )
    .await?;
    c.send(&publish(1, false, "x/denied", Some(3), V5, "x"))
        .await;
    let (id, code) = expect_ack(&mut c, 4).await?;
    if (id, code) != (3, 0x87) {
        return Err(format!("PUBACK {id} 0x{code:02x}, expected 0x87"));
    }
    c.send(&publish(2, false, "x/denied", Some(4), V5, "x"))
        .await;
    let (id, code) = expect_ack(&mut c, 5).await?;
    if (id, code) != (4, 0x87) {
        return Err(format!("PUBREC {id} 0x{code:02x}, expected 0x87"));
    }
    c.ping().await
}

async fn no_problem_info_no_reason_string(t: Target) -> R {
    let connect = Connect::v5("v5-rpi0")
        .user("limited", "limited-pw")
        .props(vec![p_u8(prop::REQUEST_PROBLEM_INFO, 0)]);
    let (mut c, _) = Conn::connected(t.addr, &connect).await?;
    c.send(&publish(1, false, "x/denied", Some(3), V5, "x"))
        .await;
    let p = c.expect_kind(4).await?;
    let props = p
        .body
        .get(3..)
        .and_then(parse_props)
        .map(|(p, _)| p)
        .unwrap_or_default();
    if prop(&props, prop::REASON_STRING).is_some() || prop(&props, prop::USER_PROPERTY).is_some() {
        return Err(format!(
            "reason string sent with Request Problem Information 0: {p:?}"
        ));
    }
    Ok(())
}

/// Subscriber `sub_id` on `filter` with options `opts` and properties; returns its connection.
async fn subscriber(
    t: &Target,
    id: &str,
    filter: &str,
    opts: u8,
    p: &[Vec<u8>],
) -> Result<Conn, String> {
    let mut c = conn(t, id).await?;
    sub(&mut c, 1, &[(filter.as_bytes(), opts)], p, &[opts & 3]).await?;
    Ok(c)
}

async fn message_expiry_not_invented(t: Target) -> R {
    let mut s1 = subscriber(&t, "v5-mei-sub", "v5mei/#", 1, &[]).await?;
    let mut c = conn(&t, "v5-mei-pub").await?;
    publish_qos1(&mut c, "v5mei/none", 1, &[], "none").await?;
    publish_qos1(
        &mut c,
        "v5mei/some",
        2,
        &[p_u32(prop::MESSAGE_EXPIRY, 100)],
        "some",
    )
    .await?;
    let a = s1.expect_publish(true).await?;
    if a.prop(prop::MESSAGE_EXPIRY).is_some() {
        return Err(format!("a Message Expiry Interval nobody set: {a:?}"));
    }
    let b = s1.expect_publish(true).await?;
    match b.prop(prop::MESSAGE_EXPIRY) {
        Some(PropValue::Int(n)) if *n >= 95 && *n <= 100 => Ok(()),
        other => Err(format!(
            "Message Expiry Interval 100 forwarded as {other:?}"
        )),
    }
}

async fn message_expiry_drops_expired(t: Target) -> R {
    let session = Connect::v5("v5-expired")
        .clean(false)
        .props(vec![p_u32(prop::SESSION_EXPIRY, 60)]);
    let (mut s1, _) = Conn::connected(t.addr, &session).await?;
    sub(&mut s1, 1, &[(b"v5expired/#", 1)], &[], &[1]).await?;
    s1.send(&disconnect5(0, &[])).await;
    s1.expect_close().await?;
    let mut c = conn(&t, "v5-expired-pub").await?;
    publish_qos1(
        &mut c,
        "v5expired/short",
        1,
        &[p_u32(prop::MESSAGE_EXPIRY, 1)],
        "short",
    )
    .await?;
    publish_qos1(
        &mut c,
        "v5expired/long",
        2,
        &[p_u32(prop::MESSAGE_EXPIRY, 60)],
        "long",
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (mut s1, connack) = Conn::connected(t.addr, &session).await?;
    if connack.body.first() != Some(&1) {
        return Err(format!("session not present: {connack:?}"));
    }
    let p = s1.expect_publish(true).await?;
    if p.payload != b"long" {
        return Err(format!("expired message delivered: {p:?}"));
    }
    s1.send(&ack(0x40, p.pid.unwrap_or(0))).await;
    s1.expect_silence().await?;
    s1.send(&disconnect5(0, &[p_u32(prop::SESSION_EXPIRY, 0)]))
        .await;
    let _ = s1.expect_close().await;
    Ok(())
}

async fn properties_passed_through(t: Target) -> R {
    let mut s1 = subscriber(&t, "v5-props-sub", "v5props/#", 1, &[]).await?;
    let mut c = conn(&t, "v5-props-pub").await?;
    let sent = vec![
        p_u8(prop::PAYLOAD_FORMAT, 1),
        p_str(prop::CONTENT_TYPE, "application/json"),
        p_str(prop::RESPONSE_TOPIC, "v5props/reply"),
        p_str(prop::CORRELATION_DATA, [0u8, 1, 2, 255]),
        p_user("k", "1"),
        p_user("a", "x"),
        p_user("k", "2"),
    ];
    publish_qos1(&mut c, "v5props/req", 1, &sent, "{}").await?;
    let p = s1.expect_publish(true).await?;
    let checks = [
        (prop::PAYLOAD_FORMAT, PropValue::Int(1)),
        (
            prop::CONTENT_TYPE,
            PropValue::Bytes(b"application/json".to_vec()),
        ),
        (
            prop::RESPONSE_TOPIC,
            PropValue::Bytes(b"v5props/reply".to_vec()),
        ),
        (prop::CORRELATION_DATA, PropValue::Bytes(vec![0, 1, 2, 255])),
    ];
    for (id, want) in checks {
        if p.prop(id) != Some(&want) {
            return Err(format!(
                "property 0x{id:02x}: sent {want:?}, forwarded {:?}",
                p.prop(id)
            ));
        }
    }
    let users = p.user_props();
    let want = [("k", "1"), ("a", "x"), ("k", "2")].map(|(k, v)| (k.to_string(), v.to_string()));
    if users != want {
        return Err(format!(
            "user properties {users:?}, expected {want:?} in order"
        ));
    }
    Ok(())
}

async fn subscription_identifier(t: Target) -> R {
    let mut s1 = subscriber(
        &t,
        "v5-subid-sub",
        "v5subid/#",
        0,
        &[p_vbi(prop::SUBSCRIPTION_ID, 7)],
    )
    .await?;
    let mut c = conn(&t, "v5-subid-pub").await?;
    c.send(&publish(0, false, "v5subid/x", None, V5, "x")).await;
    let p = s1.expect_publish(true).await?;
    if p.prop(prop::SUBSCRIPTION_ID) != Some(&PropValue::Int(7)) {
        return Err(format!("no Subscription Identifier 7 in {p:?}"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// SUBSCRIBE / UNSUBSCRIBE

async fn subscribe_reserved_option_bits(t: Target) -> R {
    for (opts, codes) in [
        (0x40u8, &[0x81u8][..]),
        (0x80, &[0x81]),
        (0x03, &[0x81]),
        (0x30, &[0x82, 0x81]),
    ] {
        disconnects_with(&t, "v5-subopt", &subscribe(1, &[(b"a", opts)], V5), codes)
            .await
            .map_err(|e| format!("options 0x{opts:02x}: {e}"))?;
    }
    Ok(())
}

async fn subscribe_reserved_header(t: Target) -> R {
    disconnects_with(
        &t,
        "v5-subflags",
        &subscribe_first(0x80, 1, &[(b"a", 0)], V5),
        &[0x81],
    )
    .await
}

async fn no_local_on_shared(t: Target) -> R {
    disconnects_with(
        &t,
        "v5-nlshare",
        &subscribe(1, &[(b"$share/g/v5nl", 0x04)], V5),
        &[0x82],
    )
    .await
}

async fn subscribe_empty_filter(t: Target) -> R {
    disconnects_with(
        &t,
        "v5-subempty",
        &subscribe(1, &[(b"", 0)], V5),
        &[0x81, 0x8F],
    )
    .await
}

async fn subscribe_no_filters(t: Target) -> R {
    disconnects_with(&t, "v5-subnone", &subscribe(1, &[], V5), &[0x82, 0x81]).await
}

async fn subscribe_invalid_filters(t: Target) -> R {
    for f in [
        &b"a/#/b"[..],
        b"a+",
        b"$share/g",
        b"$share//t",
        b"$share/g+/t",
    ] {
        let mut c = conn(&t, "v5-badfilter").await?;
        c.send(&subscribe(5, &[(f, 0)], V5)).await;
        match c.next(WAIT).await {
            Event::Packet(p)
                if p.kind() == 9 && matches!(p.ack_codes(true)[..], [0x8F] | [0x80]) => {}
            Event::Packet(p)
                if p.disconnect_code()
                    .is_some_and(|c| [0x81, 0x82, 0x8F].contains(&c)) => {}
            other => return Err(format!("{}: {}", String::from_utf8_lossy(f), show(&other))),
        }
    }
    Ok(())
}

async fn suback_reason_codes(t: Target) -> R {
    let (mut c, _) = Conn::connected(
        t.addr,
        &Connect::v5("v5-suback").user("limited", "limited-pw"),
    )
    .await?;
    sub(
        &mut c,
        3,
        &[(b"t/x", 1), (b"x/y", 1), (b"t/+", 2)],
        &[],
        &[1, 0x87, 2],
    )
    .await
}

async fn unsuback_reason_codes(t: Target) -> R {
    let mut c = conn(&t, "v5-unsuback").await?;
    sub(&mut c, 1, &[(b"v5unsub/a", 0)], &[], &[0]).await?;
    c.send(&unsubscribe(2, &[b"v5unsub/a", b"v5unsub/none"], V5))
        .await;
    let p = c.expect_kind(11).await?;
    let codes = p.ack_codes(true);
    if p.body.get(..2) != Some(&[0, 2][..]) || codes != [0x00, 0x11] {
        return Err(format!("UNSUBACK {p:?}, expected codes 00 11"));
    }
    Ok(())
}

async fn shared_subscription(t: Target) -> R {
    let mut a = subscriber(&t, "v5-share-a", "$share/g/v5share/t", 0, &[]).await?;
    let mut b = subscriber(&t, "v5-share-b", "$share/g/v5share/t", 0, &[]).await?;
    let mut c = conn(&t, "v5-share-pub").await?;
    for i in 0..6 {
        c.send(&publish(0, false, "v5share/t", None, V5, format!("{i}")))
            .await;
    }
    let mut got = 0;
    for s1 in [&mut a, &mut b] {
        while let Event::Packet(p) = s1.next(QUIET).await {
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

async fn no_local(t: Target) -> R {
    let mut c = conn(&t, "v5-nolocal").await?;
    sub(&mut c, 1, &[(b"v5nolocal/#", 0x04)], &[], &[0]).await?;
    c.send(&publish(0, false, "v5nolocal/own", None, V5, "own"))
        .await;
    c.expect_silence()
        .await
        .map_err(|e| format!("own message: {e}"))?;
    let mut other = conn(&t, "v5-nolocal-other").await?;
    other
        .send(&publish(0, false, "v5nolocal/other", None, V5, "other"))
        .await;
    let p = c.expect_publish(true).await?;
    if p.payload != b"other" {
        return Err(format!("got {p:?}"));
    }
    Ok(())
}

async fn retain_as_published(t: Target) -> R {
    let mut rap = subscriber(&t, "v5-rap1", "v5rap/#", 0x08, &[]).await?;
    let mut plain = subscriber(&t, "v5-rap0", "v5rap/#", 0x00, &[]).await?;
    let mut c = conn(&t, "v5-rap-pub").await?;
    publish_qos1(&mut c, "v5rap/x", 1, &[], "ignored").await?; // not retained
    c.send(&publish(1, true, "v5rap/x", Some(2), V5, "kept"))
        .await;
    expect_ack(&mut c, 4).await?;
    for (s1, want_retain) in [(&mut rap, true), (&mut plain, false)] {
        let first = s1.expect_publish(true).await?;
        let second = s1.expect_publish(true).await?;
        if first.retain || second.retain != want_retain {
            return Err(format!(
                "retain as published {want_retain}: flags {} then {}",
                first.retain, second.retain
            ));
        }
    }
    c.send(&publish(1, true, "v5rap/x", Some(3), V5, "")).await;
    expect_ack(&mut c, 4).await?;
    Ok(())
}

async fn retain_handling(t: Target) -> R {
    let mut c = conn(&t, "v5-rh-pub").await?;
    c.send(&publish(1, true, "v5rh/x", Some(1), V5, "r")).await;
    expect_ack(&mut c, 4).await?;
    // 0: sent on every SUBSCRIBE; 1: only for a new subscription; 2: never.
    let mut s1 = conn(&t, "v5-rh").await?;
    for (rh, new_gets, again_gets) in [(0u8, true, true), (1, true, false), (2, false, false)] {
        let f = "v5rh/+";
        for (round, want) in [("new", new_gets), ("again", again_gets)] {
            if round == "new" {
                s1.send(&unsubscribe(9, &[f.as_bytes()], V5)).await;
                s1.expect_kind(11).await?;
            }
            sub(&mut s1, 2, &[(f.as_bytes(), rh << 4)], &[], &[0]).await?;
            let got = match s1.next(QUIET).await {
                Event::Packet(p) if p.kind() == 3 => true,
                Event::Silent => false,
                other => return Err(show(&other)),
            };
            if got != want {
                return Err(format!(
                    "retain handling {rh}, {round} subscription: retained {}",
                    if got { "sent" } else { "not sent" }
                ));
            }
        }
    }
    c.send(&publish(1, true, "v5rh/x", Some(2), V5, "")).await;
    expect_ack(&mut c, 4).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Flow control and sizes

async fn receive_maximum_outbound(t: Target) -> R {
    let connect = Connect::v5("v5-rmout").props(vec![p_u16(prop::RECEIVE_MAXIMUM, 2)]);
    let (mut s1, _) = Conn::connected(t.addr, &connect).await?;
    sub(&mut s1, 1, &[(b"v5rmout/#", 1)], &[], &[1]).await?;
    let mut c = conn(&t, "v5-rmout-pub").await?;
    for i in 0..5u16 {
        publish_qos1(&mut c, "v5rmout/x", i + 1, &[], &format!("{i}")).await?;
    }
    let a = s1.expect_publish(true).await?;
    let _b = s1.expect_publish(true).await?;
    s1.expect_silence()
        .await
        .map_err(|e| format!("a third unacknowledged PUBLISH with Receive Maximum 2: {e}"))?;
    s1.send(&ack(0x40, a.pid.unwrap_or(0))).await;
    s1.expect_publish(true).await.map(|_| ())
}

async fn receive_maximum_inbound(t: Target) -> R {
    let (mut c, ack) = connect(&t, "v5-rmin").await?;
    let max = match prop(&ack.connack_props(), prop::RECEIVE_MAXIMUM) {
        Some(PropValue::Int(n)) => *n as u16,
        _ => 65535,
    };
    if max > 1000 {
        return Err(format!("Receive Maximum {max}: too large to test"));
    }
    for i in 0..max {
        c.send(&publish(2, false, "v5rmin/x", Some(i + 1), V5, "x"))
            .await;
        expect_ack(&mut c, 5).await?;
    }
    c.send(&publish(2, false, "v5rmin/x", Some(max + 1), V5, "x"))
        .await;
    expect_disconnect_in(&mut c, &[0x93]).await
}

async fn maximum_packet_size_outbound(t: Target) -> R {
    let connect = Connect::v5("v5-mpsout").props(vec![p_u32(prop::MAXIMUM_PACKET_SIZE, 64)]);
    let (mut s1, _) = Conn::connected(t.addr, &connect).await?;
    sub(&mut s1, 1, &[(b"v5mps/#", 0)], &[], &[0]).await?;
    let mut c = conn(&t, "v5-mpsout-pub").await?;
    c.send(&publish(0, false, "v5mps/big", None, V5, "x".repeat(200)))
        .await;
    c.send(&publish(0, false, "v5mps/small", None, V5, "ok"))
        .await;
    let p = s1.expect_publish(true).await?;
    if p.payload != b"ok" {
        return Err(format!(
            "got a packet over the client's Maximum Packet Size: {p:?}"
        ));
    }
    Ok(())
}

async fn maximum_packet_size_inbound(t: Target) -> R {
    let (mut c, ack) = connect(&t, "v5-mpsin").await?;
    let Some(PropValue::Int(max)) = prop(&ack.connack_props(), prop::MAXIMUM_PACKET_SIZE).cloned()
    else {
        return Err(format!("no Maximum Packet Size in {ack:?}"));
    };
    let payload = vec![b'x'; max as usize];
    c.send(&publish(0, false, "v5mps/in", None, V5, payload))
        .await;
    expect_disconnect_in(&mut c, &[0x95]).await
}

async fn server_keep_alive(t: Target) -> R {
    let (mut c, ack) = Conn::connected(t.addr, &Connect::v5("v5-ska").keep_alive(60)).await?;
    let ska = match prop(&ack.connack_props(), prop::SERVER_KEEP_ALIVE) {
        Some(PropValue::Int(n)) if *n < 60 => u64::from(*n),
        other => {
            return Err(format!(
                "Server Keep Alive {other:?}, expected the server's cap (< 60)"
            ));
        }
    };
    // The client now uses the server's value; silent, it is closed after 1.5 times that.
    let start = tokio::time::Instant::now();
    let limit = Duration::from_millis(ska * 1500 + 2000);
    loop {
        match c.next(limit.saturating_sub(start.elapsed())).await {
            Event::Closed => break,
            Event::Packet(p) if p.disconnect_code().is_some() => continue,
            other => return Err(format!("after {:?}: {}", start.elapsed(), show(&other))),
        }
    }
    if start.elapsed() < Duration::from_secs(ska) {
        return Err(format!(
            "closed after {:?}, before the keep alive of {ska} s",
            start.elapsed()
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Sessions, wills, takeover

async fn takeover_disconnect(t: Target) -> R {
    let mut old = conn(&t, "v5-takeover").await?;
    let mut new = conn(&t, "v5-takeover").await?;
    expect_disconnect_in(&mut old, &[0x8E]).await?;
    new.ping().await
}

async fn session_expiry(t: Target) -> R {
    let c = Connect::v5("v5-sei")
        .clean(false)
        .props(vec![p_u32(prop::SESSION_EXPIRY, 2)]);
    let (mut s1, ack) = Conn::connected(t.addr, &c).await?;
    let _ = ack;
    s1.send(&disconnect5(0, &[])).await;
    s1.expect_close().await?;
    let (mut s1, ack) = Conn::connected(t.addr, &c).await?;
    if ack.body.first() != Some(&1) {
        return Err(format!(
            "session not present after a quick reconnect: {ack:?}"
        ));
    }
    s1.send(&disconnect5(0, &[])).await;
    s1.expect_close().await?;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let (_s, ack) = Conn::connected(t.addr, &c).await?;
    if ack.body.first() != Some(&0) {
        return Err(format!("session present after its expiry: {ack:?}"));
    }
    // Session Expiry 0: no session after the connection.
    let z = Connect::v5("v5-sei0").clean(false);
    let (mut s1, _) = Conn::connected(t.addr, &z).await?;
    s1.send(&disconnect5(0, &[])).await;
    s1.expect_close().await?;
    let (_s, ack) = Conn::connected(t.addr, &z).await?;
    if ack.body.first() != Some(&0) {
        return Err(format!("session present with Session Expiry 0: {ack:?}"));
    }
    Ok(())
}

async fn will_delay(t: Target) -> R {
    let mut watch = conn(&t, "v5-wd-watch").await?;
    sub(&mut watch, 1, &[(b"v5wd/#", 0)], &[], &[0]).await?;
    let mut will = Will::new("v5wd/x", "late");
    will.props = vec![
        p_u32(prop::WILL_DELAY, 2),
        p_user("b", "1"),
        p_user("a", "2"),
    ];
    let c = Connect::v5("v5-wd")
        .clean(false)
        .props(vec![p_u32(prop::SESSION_EXPIRY, 30)])
        .will(will);
    {
        let _dropped = Conn::connected(t.addr, &c).await?;
    }
    // Back within the delay: no will.
    tokio::time::sleep(Duration::from_millis(500)).await;
    {
        let _back = Conn::connected(t.addr, &c).await?;
        watch
            .expect_silence()
            .await
            .map_err(|e| format!("will sent before its delay: {e}"))?;
    }
    let start = tokio::time::Instant::now();
    let p = watch.expect_publish(true).await?;
    if start.elapsed() < Duration::from_millis(1500) {
        return Err(format!(
            "will after {:?}, before its 2 s delay",
            start.elapsed()
        ));
    }
    let users = p.user_props();
    if p.payload != b"late"
        || users
            != [
                ("b".to_string(), "1".to_string()),
                ("a".to_string(), "2".to_string()),
            ]
    {
        return Err(format!("will {p:?}"));
    }
    Ok(())
}

async fn wrong_ack_type(t: Target) -> R {
    let mut s1 = subscriber(&t, "v5-wrongack", "v5wrongack/#", 1, &[]).await?;
    let mut c = conn(&t, "v5-wrongack-pub").await?;
    publish_qos1(&mut c, "v5wrongack/x", 1, &[], "x").await?;
    let p = s1.expect_publish(true).await?;
    s1.send(&ack(0x50, p.pid.unwrap_or(0))).await;
    expect_disconnect_in(&mut s1, &[0x82]).await
}

async fn auth_without_method(t: Target) -> R {
    disconnects_with(&t, "v5-auth-pkt", &[0xF0, 0x02, 0x18, 0x00], &[0x82]).await
}

async fn server_only_packets(t: Target) -> R {
    for (name, b) in [
        ("CONNACK", vec![0x20, 0x03, 0x00, 0x00, 0x00]),
        ("SUBACK", vec![0x90, 0x04, 0x00, 0x01, 0x00, 0x00]),
        ("PINGRESP", PINGRESP.to_vec()),
        ("reserved type 0", vec![0x00, 0x00]),
    ] {
        disconnects_with(&t, "v5-srvonly", &b, &[0x81, 0x82])
            .await
            .map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(())
}

async fn ping(t: Target) -> R {
    let mut c = conn(&t, "v5-ping").await?;
    c.ping().await
}

#[test]
fn mqtt_5_conformance_hub_and_mosquitto() -> Result<()> {
    block_on(async {
        let (hub, _h) = start_hub("").await?;
        let mosq = if mosquitto_installed() {
            // The same packet limit as the hub's default (32 KiB payload + 128 KiB for topic and properties),
            // so that mosquitto announces one too.
            Some(start_mosquitto("max_packet_size 163840\n").await?)
        } else {
            eprintln!("mosquitto is not installed (apt-get install mosquitto): the hub runs alone");
            None
        };
        let cases = vec![
            case!(
                "CONNACK 0x00, session present 0 on clean start",
                "MQTT-3.2.0-1, MQTT-3.2.2-2, MQTT-3.1.4-5",
                connack_success
            ),
            case!(
                "malformed CONNECT / protocol error: CONNACK 0x81/0x82 or close",
                "MQTT-3.1.4-1, MQTT-3.1.2-3, -11, -12, 3.1.2.11, MQTT-4.13.1-1",
                malformed_connect
            ),
            case!(
                "empty client id: Assigned Client Identifier",
                "MQTT-3.1.3-6, -7, MQTT-3.2.2-16",
                assigned_client_id
            ),
            case!(
                "client ids with ' /:.' accepted",
                "MQTT-3.1.3-5",
                client_id_characters
            ),
            case!(
                "unsupported authentication method: CONNACK 0x8C/0x87",
                "MQTT-4.12.0-1",
                unsupported_auth_method
            ),
            case!(
                "second CONNECT: DISCONNECT 0x82",
                "MQTT-3.1.0-2",
                second_connect
            ),
            case!(
                "first packet not CONNECT: close",
                "MQTT-3.1.0-1",
                first_packet_not_connect
            ),
            case!(
                "DISCONNECT 0x00: closed, will discarded",
                "MQTT-3.14.4-3",
                disconnect_closes_and_discards_will
            ),
            case!(
                "DISCONNECT 0x04: will published",
                "3.14.2.1, MQTT-3.1.2-8",
                disconnect_with_will_message
            ),
            case!(
                "DISCONNECT Session Expiry after 0: DISCONNECT 0x82",
                "3.14.2.2.2",
                disconnect_session_expiry_after_zero
            ),
            case!(
                "DISCONNECT reserved flags: DISCONNECT 0x81",
                "MQTT-3.14.1-1, MQTT-2.1.3-1",
                disconnect_reserved_flags
            ),
            case!(
                "PUBLISH QoS 3: DISCONNECT 0x81",
                "MQTT-3.3.1-4",
                publish_qos3
            ),
            case!(
                "PUBLISH topic with wildcards: DISCONNECT 0x90/0x81/0x82",
                "MQTT-3.3.2-2",
                publish_wildcard_topic
            ),
            case!(
                "PUBLISH topic with U+0000: DISCONNECT 0x81",
                "MQTT-1.5.4-2, MQTT-4.7.3-2",
                publish_nul_topic
            ),
            case!(
                "PUBLISH topic with surrogates, controls, non-characters: DISCONNECT 0x81/0x90",
                "MQTT-1.5.4-1, 1.5.4 (MAY)",
                publish_bad_utf8_topic
            ),
            case!(
                "PUBLISH empty topic without alias: DISCONNECT 0x82",
                "3.3.2.1, 3.3.4",
                publish_empty_topic_without_alias
            ),
            case!(
                "PUBLISH with a Subscription Identifier: DISCONNECT 0x82",
                "MQTT-3.3.4-6",
                publish_with_subscription_id
            ),
            case!(
                "Topic Alias 0: DISCONNECT 0x94",
                "MQTT-3.3.2-8",
                topic_alias_zero
            ),
            case!(
                "Topic Alias over the maximum: DISCONNECT 0x94",
                "MQTT-3.3.2-9, MQTT-3.2.2-17",
                topic_alias_over_maximum
            ),
            case!(
                "unmapped Topic Alias: DISCONNECT 0x82",
                "3.3.2.3.4",
                topic_alias_unmapped
            ),
            case!(
                "Topic Alias mapping; subscribers get the full topic",
                "MQTT-3.3.2-12, MQTT-3.1.2-27",
                topic_alias_mapping
            ),
            case!(
                "QoS 1 and 2 flows with reason codes",
                "MQTT-4.3.2-4, MQTT-4.3.3-8, -11",
                qos_flows
            ),
            case!(
                "PUBREL for an unknown packet id: PUBCOMP 0x92",
                "3.7.2.1, MQTT-4.3.3-11",
                pubrel_unknown_packet_id
            ),
            case!(
                "denied PUBLISH: PUBACK/PUBREC 0x87",
                "3.4.2.1, 3.5.2.1",
                publish_denied_reason
            ),
            case!(
                "Request Problem Information 0: no reason string",
                "MQTT-3.1.2-29",
                no_problem_info_no_reason_string
            ),
            case!(
                "no Message Expiry Interval invented; a set one counts down",
                "MQTT-3.3.2-6",
                message_expiry_not_invented
            ),
            case!(
                "expired queued message not delivered",
                "MQTT-3.3.2-5",
                message_expiry_drops_expired
            ),
            case!(
                "payload format, content type, response topic, correlation data, user properties unaltered and in order",
                "MQTT-3.3.2-4, -15, -16, -17, -18, -20",
                properties_passed_through
            ),
            case!(
                "Subscription Identifier on delivered messages",
                "MQTT-3.3.4-3",
                subscription_identifier
            ),
            case!(
                "SUBSCRIBE options reserved bits, QoS 3, Retain Handling 3: DISCONNECT 0x81/0x82",
                "MQTT-3.8.3-5, 3.8.3.1",
                subscribe_reserved_option_bits
            ),
            case!(
                "SUBSCRIBE reserved header bits: DISCONNECT 0x81",
                "MQTT-3.8.1-1",
                subscribe_reserved_header
            ),
            case!(
                "No Local on a shared subscription: DISCONNECT 0x82",
                "MQTT-3.8.3-4",
                no_local_on_shared
            ),
            case!(
                "SUBSCRIBE zero-length filter: DISCONNECT 0x81/0x8F",
                "MQTT-4.7.3-1",
                subscribe_empty_filter
            ),
            case!(
                "SUBSCRIBE without filters: DISCONNECT 0x82",
                "MQTT-3.8.3-2",
                subscribe_no_filters
            ),
            case!(
                "invalid filters and share names: SUBACK 0x8F or DISCONNECT",
                "MQTT-4.7.1-2, -3, MQTT-4.8.2-1, -2",
                subscribe_invalid_filters
            ),
            case!(
                "SUBACK reason codes: granted QoS, 0x87 when denied",
                "MQTT-3.8.4-5, -6, MQTT-3.9.3-1, -2",
                suback_reason_codes
            ),
            case!(
                "UNSUBACK 0x00 / 0x11 (no subscription existed)",
                "MQTT-3.10.4-4, -5, MQTT-3.11.3-1",
                unsuback_reason_codes
            ),
            case!(
                "shared subscription: each message to one member",
                "MQTT-4.8.2-1..-6",
                shared_subscription
            ),
            case!("No Local", "MQTT-3.8.3-3", no_local),
            case!(
                "Retain As Published",
                "MQTT-3.3.1-12, -13",
                retain_as_published
            ),
            case!(
                "Retain Handling 0 / 1 / 2",
                "MQTT-3.3.1-9, -10, -11",
                retain_handling
            ),
            case!(
                "Receive Maximum of the client respected",
                "MQTT-3.3.4-9, MQTT-4.9.0-2",
                receive_maximum_outbound
            ),
            case!(
                "over the server's Receive Maximum: DISCONNECT 0x93",
                "3.3.4, MQTT-4.9.0-1",
                receive_maximum_inbound
            ),
            case!(
                "client's Maximum Packet Size respected",
                "MQTT-3.1.2-24, -25",
                maximum_packet_size_outbound
            ),
            case!(
                "over the server's Maximum Packet Size: DISCONNECT 0x95",
                "MQTT-3.2.2-15, 3.2.2.3.6",
                maximum_packet_size_inbound
            ),
            case!(
                "takeover: DISCONNECT 0x8E to the old connection",
                "MQTT-3.1.4-3",
                takeover_disconnect
            ),
            case!(
                "Session Expiry Interval",
                "MQTT-3.1.2-23, MQTT-4.1.0-2",
                session_expiry
            ),
            case!(
                "Will Delay Interval, will user properties in order",
                "MQTT-3.1.3-9, -10, MQTT-3.1.2-8",
                will_delay
            ),
            case!(
                "acknowledgement of the wrong type: DISCONNECT 0x82",
                "MQTT-4.13.1-1",
                wrong_ack_type
            ),
            case!(
                "AUTH without an authentication method: DISCONNECT 0x82",
                "3.15.2.1, 4.12 (Protocol Error)",
                auth_without_method
            ),
            case!(
                "server-only and reserved packet types: DISCONNECT 0x81/0x82",
                "MQTT-4.13.1-1",
                server_only_packets
            ),
            case!("PINGREQ: PINGRESP", "MQTT-3.12.4-1", ping),
        ];
        run_cases(
            "MQTT 5 conformance",
            cases,
            hub,
            mosq.as_ref().map(|(t, _)| t.clone()),
        )
        .await
    })
}

/// Limits announced in CONNACK and enforced: a hub and a mosquitto both configured with a 2 s keep-alive cap.
#[test]
fn mqtt_5_server_keep_alive_hub_and_mosquitto() -> Result<()> {
    block_on(async {
        let (hub, _h) = start_hub("limits: {keep_alive: 2s}\n").await?;
        let mosq = if mosquitto_installed() {
            // mosquitto refuses a max_keepalive under 10 s.
            Some(start_mosquitto("max_keepalive 10\n").await?)
        } else {
            None
        };
        let cases = vec![case!(
            "Server Keep Alive announced and enforced",
            "MQTT-3.2.2-21, -22, MQTT-3.1.2-22",
            server_keep_alive
        )];
        run_cases(
            "MQTT 5 server keep alive",
            cases,
            hub,
            mosq.as_ref().map(|(t, _)| t.clone()),
        )
        .await
    })
}
