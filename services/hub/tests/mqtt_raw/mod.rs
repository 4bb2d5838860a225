//! Raw MQTT for the conformance and hardening tests: packets built byte by byte (so that a test can send what no
//! client library would), a connection that reads whole packets or notices the close, a small MQTT 5 property
//! parser, the brokers under test (our hub in-process, Debian's mosquitto as a child process on a free port) and
//! a runner that replays each case against both and prints the table the hub's README quotes.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use baetyl_sdk::config::ConfigFile;
use baetyl_testkit::mosquitto::Mosquitto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a test waits for a packet it expects.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long "nothing arrives" is watched for.
pub const QUIET: Duration = Duration::from_millis(600);

pub const USER: &str = "admin";
pub const PASS: &str = "admin-pw";

// ---------------------------------------------------------------------------------------------------------------
// Encoding

/// A variable byte integer.
pub fn vbi(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            return out;
        }
    }
}

/// A whole packet: first byte, remaining length, body.
pub fn pkt(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    out.extend(vbi(body.len()));
    out.extend_from_slice(body);
    out
}

/// A two-byte-length-prefixed string or binary field.
pub fn s(x: impl AsRef<[u8]>) -> Vec<u8> {
    let x = x.as_ref();
    let mut out = (x.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(x);
    out
}

/// MQTT 5 properties: the concatenated properties with their length in front.
pub fn props(list: &[Vec<u8>]) -> Vec<u8> {
    let body: Vec<u8> = list.concat();
    let mut out = vbi(body.len());
    out.extend(body);
    out
}

pub fn p_u8(id: u8, v: u8) -> Vec<u8> {
    vec![id, v]
}
pub fn p_u16(id: u8, v: u16) -> Vec<u8> {
    let mut o = vec![id];
    o.extend(v.to_be_bytes());
    o
}
pub fn p_u32(id: u8, v: u32) -> Vec<u8> {
    let mut o = vec![id];
    o.extend(v.to_be_bytes());
    o
}
pub fn p_str(id: u8, v: impl AsRef<[u8]>) -> Vec<u8> {
    let mut o = vec![id];
    o.extend(s(v));
    o
}
pub fn p_vbi(id: u8, v: usize) -> Vec<u8> {
    let mut o = vec![id];
    o.extend(vbi(v));
    o
}
pub fn p_user(k: &str, v: &str) -> Vec<u8> {
    let mut o = vec![0x26];
    o.extend(s(k));
    o.extend(s(v));
    o
}

/// MQTT 5 property identifiers used by the tests.
pub mod prop {
    pub const PAYLOAD_FORMAT: u8 = 0x01;
    pub const MESSAGE_EXPIRY: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_ID: u8 = 0x0B;
    pub const SESSION_EXPIRY: u8 = 0x11;
    pub const ASSIGNED_CLIENT_ID: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTH_METHOD: u8 = 0x15;
    pub const REQUEST_PROBLEM_INFO: u8 = 0x17;
    pub const WILL_DELAY: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFO: u8 = 0x19;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const SHARED_SUB_AVAILABLE: u8 = 0x2A;
}

/// A CONNECT packet, field by field; `flags` overrides the computed flags byte when set.
#[derive(Clone)]
pub struct Connect {
    pub name: Vec<u8>,
    pub level: u8,
    pub flags: Option<u8>,
    pub clean: bool,
    pub keep_alive: u16,
    /// MQTT 5 CONNECT properties (without the length); ignored for 3.1.1.
    pub props: Vec<Vec<u8>>,
    pub client_id: Vec<u8>,
    pub will: Option<Will>,
    pub user: Option<Vec<u8>>,
    pub pass: Option<Vec<u8>>,
    /// Bytes appended after the payload (to make a packet too long).
    pub trailing: Vec<u8>,
    /// Cut the body to this many bytes (to make a packet too short).
    pub truncate: Option<usize>,
}

#[derive(Clone)]
pub struct Will {
    pub qos: u8,
    pub retain: bool,
    pub props: Vec<Vec<u8>>,
    pub topic: Vec<u8>,
    pub payload: Vec<u8>,
}

impl Will {
    pub fn new(topic: &str, payload: &str) -> Will {
        Will {
            qos: 0,
            retain: false,
            props: Vec::new(),
            topic: topic.as_bytes().to_vec(),
            payload: payload.as_bytes().to_vec(),
        }
    }
}

impl Connect {
    pub fn v311(client_id: &str) -> Connect {
        Connect {
            name: b"MQTT".to_vec(),
            level: 4,
            flags: None,
            clean: true,
            keep_alive: 60,
            props: Vec::new(),
            client_id: client_id.as_bytes().to_vec(),
            will: None,
            user: Some(USER.as_bytes().to_vec()),
            pass: Some(PASS.as_bytes().to_vec()),
            trailing: Vec::new(),
            truncate: None,
        }
    }

    pub fn v5(client_id: &str) -> Connect {
        Connect {
            level: 5,
            ..Connect::v311(client_id)
        }
    }

    pub fn user(mut self, user: &str, pass: &str) -> Connect {
        self.user = Some(user.as_bytes().to_vec());
        self.pass = Some(pass.as_bytes().to_vec());
        self
    }

    pub fn clean(mut self, clean: bool) -> Connect {
        self.clean = clean;
        self
    }

    pub fn keep_alive(mut self, secs: u16) -> Connect {
        self.keep_alive = secs;
        self
    }

    pub fn props(mut self, p: Vec<Vec<u8>>) -> Connect {
        self.props = p;
        self
    }

    pub fn will(mut self, w: Will) -> Connect {
        self.will = Some(w);
        self
    }

    pub fn is_v5(&self) -> bool {
        self.level == 5
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut flags = 0u8;
        if self.clean {
            flags |= 0x02;
        }
        if let Some(w) = &self.will {
            flags |= 0x04 | (w.qos << 3);
            if w.retain {
                flags |= 0x20;
            }
        }
        if self.user.is_some() {
            flags |= 0x80;
        }
        if self.pass.is_some() {
            flags |= 0x40;
        }
        let flags = self.flags.unwrap_or(flags);
        let mut body = s(&self.name);
        body.push(self.level);
        body.push(flags);
        body.extend(self.keep_alive.to_be_bytes());
        if self.is_v5() {
            body.extend(props(&self.props));
        }
        body.extend(s(&self.client_id));
        if let Some(w) = &self.will {
            if self.is_v5() {
                body.extend(props(&w.props));
            }
            body.extend(s(&w.topic));
            body.extend(s(&w.payload));
        }
        if let Some(u) = &self.user {
            body.extend(s(u));
        }
        if let Some(p) = &self.pass {
            body.extend(s(p));
        }
        body.extend_from_slice(&self.trailing);
        if let Some(n) = self.truncate {
            body.truncate(n);
        }
        pkt(0x10, &body)
    }
}

/// A PUBLISH; `props` is `Some` for MQTT 5 (an empty list still writes the zero property length).
pub fn publish(
    qos: u8,
    retain: bool,
    topic: impl AsRef<[u8]>,
    pid: Option<u16>,
    props_v5: Option<&[Vec<u8>]>,
    payload: impl AsRef<[u8]>,
) -> Vec<u8> {
    let mut body = s(topic);
    if let Some(id) = pid {
        body.extend(id.to_be_bytes());
    }
    if let Some(p) = props_v5 {
        body.extend(props(p));
    }
    body.extend_from_slice(payload.as_ref());
    pkt(0x30 | (qos << 1) | u8::from(retain), &body)
}

/// A SUBSCRIBE with (filter, options byte) pairs; `props` is `Some` for MQTT 5.
pub fn subscribe(pid: u16, filters: &[(&[u8], u8)], props_v5: Option<&[Vec<u8>]>) -> Vec<u8> {
    subscribe_first(0x82, pid, filters, props_v5)
}

pub fn subscribe_first(
    first: u8,
    pid: u16,
    filters: &[(&[u8], u8)],
    props_v5: Option<&[Vec<u8>]>,
) -> Vec<u8> {
    let mut body = pid.to_be_bytes().to_vec();
    if let Some(p) = props_v5 {
        body.extend(props(p));
    }
    for (f, o) in filters {
        body.extend(s(f));
        body.push(*o);
    }
    pkt(first, &body)
}

pub fn unsubscribe(pid: u16, filters: &[&[u8]], props_v5: Option<&[Vec<u8>]>) -> Vec<u8> {
    let mut body = pid.to_be_bytes().to_vec();
    if let Some(p) = props_v5 {
        body.extend(props(p));
    }
    for f in filters {
        body.extend(s(f));
    }
    pkt(0xA2, &body)
}

/// PUBACK/PUBREC/PUBREL/PUBCOMP with only a packet id (`first` carries type and flags).
pub fn ack(first: u8, pid: u16) -> Vec<u8> {
    pkt(first, &pid.to_be_bytes())
}

/// An MQTT 5 acknowledgement with a reason code and no properties.
pub fn ack5(first: u8, pid: u16, reason: u8) -> Vec<u8> {
    let mut body = pid.to_be_bytes().to_vec();
    body.push(reason);
    pkt(first, &body)
}

pub const PINGREQ: [u8; 2] = [0xC0, 0x00];
pub const PINGRESP: [u8; 2] = [0xD0, 0x00];
pub const DISCONNECT: [u8; 2] = [0xE0, 0x00];

/// An MQTT 5 DISCONNECT with a reason code and properties.
pub fn disconnect5(reason: u8, p: &[Vec<u8>]) -> Vec<u8> {
    let mut body = vec![reason];
    body.extend(props(p));
    pkt(0xE0, &body)
}

// ---------------------------------------------------------------------------------------------------------------
// Decoding what the broker sends

/// One packet from the broker: the first byte and the body (after the remaining length).
#[derive(Clone, PartialEq, Eq)]
pub struct Packet {
    pub first: u8,
    pub body: Vec<u8>,
}

impl Packet {
    pub fn kind(&self) -> u8 {
        self.first >> 4
    }
    pub fn bytes(&self) -> Vec<u8> {
        pkt(self.first, &self.body)
    }
    /// MQTT 5 CONNACK: the reason code.
    pub fn connack_code(&self) -> Option<u8> {
        (self.kind() == 2)
            .then(|| self.body.get(1).copied())
            .flatten()
    }
    /// MQTT 5 CONNACK properties.
    pub fn connack_props(&self) -> Vec<(u8, PropValue)> {
        self.body
            .get(2..)
            .and_then(|b| parse_props(b).map(|(p, _)| p))
            .unwrap_or_default()
    }
    /// MQTT 5 DISCONNECT: the reason code (0 when the packet has no body).
    pub fn disconnect_code(&self) -> Option<u8> {
        (self.kind() == 14).then(|| self.body.first().copied().unwrap_or(0))
    }
    /// A PUBLISH, decoded (`v5` decides whether properties follow the packet id).
    pub fn publish(&self, v5: bool) -> Option<Publish> {
        if self.kind() != 3 {
            return None;
        }
        let qos = (self.first >> 1) & 3;
        let b = &self.body;
        let tl = u16::from_be_bytes([*b.first()?, *b.get(1)?]) as usize;
        let topic = b.get(2..2 + tl)?.to_vec();
        let mut i = 2 + tl;
        let pid = if qos > 0 {
            let id = u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]);
            i += 2;
            Some(id)
        } else {
            None
        };
        let mut properties = Vec::new();
        if v5 {
            let (p, used) = parse_props(b.get(i..)?)?;
            properties = p;
            i += used;
        }
        Some(Publish {
            dup: self.first & 8 != 0,
            qos,
            retain: self.first & 1 != 0,
            topic,
            pid,
            props: properties,
            payload: b.get(i..)?.to_vec(),
        })
    }
    /// The reason codes of a SUBACK / UNSUBACK (MQTT 5: after the properties; 3.1.1: after the packet id).
    pub fn ack_codes(&self, v5: bool) -> Vec<u8> {
        let rest = self.body.get(2..).unwrap_or(&[]);
        if v5 {
            match parse_props(rest) {
                Some((_, used)) => rest[used..].to_vec(),
                None => Vec::new(),
            }
        } else {
            rest.to_vec()
        }
    }
}

impl std::fmt::Debug for Packet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", hex(&self.bytes()))
    }
}

pub fn hex(b: &[u8]) -> String {
    let shown: Vec<String> = b.iter().take(48).map(|x| format!("{x:02x}")).collect();
    let more = if b.len() > 48 { " …" } else { "" };
    format!("[{}{more}]", shown.join(" "))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: u8,
    pub retain: bool,
    pub topic: Vec<u8>,
    pub pid: Option<u16>,
    pub props: Vec<(u8, PropValue)>,
    pub payload: Vec<u8>,
}

impl Publish {
    pub fn prop(&self, id: u8) -> Option<&PropValue> {
        self.props.iter().find(|(i, _)| *i == id).map(|(_, v)| v)
    }
    pub fn user_props(&self) -> Vec<(String, String)> {
        self.props
            .iter()
            .filter_map(|(i, v)| match (i, v) {
                (0x26, PropValue::Pair(k, v)) => Some((k.clone(), v.clone())),
                _ => None,
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PropValue {
    Int(u32),
    Bytes(Vec<u8>),
    Pair(String, String),
}

pub fn prop(list: &[(u8, PropValue)], id: u8) -> Option<&PropValue> {
    list.iter().find(|(i, _)| *i == id).map(|(_, v)| v)
}

/// Reads a variable byte integer; returns (value, bytes used).
fn read_vbi(b: &[u8]) -> Option<(usize, usize)> {
    let mut v = 0usize;
    for (i, x) in b.iter().enumerate().take(4) {
        v |= ((x & 0x7f) as usize) << (7 * i);
        if x & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// Parses a property block (length first); returns the properties and the bytes used.
pub fn parse_props(b: &[u8]) -> Option<(Vec<(u8, PropValue)>, usize)> {
    let (len, used) = read_vbi(b)?;
    let mut p = b.get(used..used + len)?;
    let mut out = Vec::new();
    let two = |p: &[u8]| -> Option<usize> {
        Some(u16::from_be_bytes([*p.first()?, *p.get(1)?]) as usize)
    };
    while let Some((&id, rest)) = p.split_first() {
        p = rest;
        let v = match id {
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => {
                let v = *p.first()?;
                p = &p[1..];
                PropValue::Int(v as u32)
            }
            0x13 | 0x21 | 0x22 | 0x23 => {
                let v = two(p)?;
                p = &p[2..];
                PropValue::Int(v as u32)
            }
            0x02 | 0x11 | 0x18 | 0x27 => {
                let v = u32::from_be_bytes([*p.first()?, *p.get(1)?, *p.get(2)?, *p.get(3)?]);
                p = &p[4..];
                PropValue::Int(v)
            }
            0x0B => {
                let (v, n) = read_vbi(p)?;
                p = &p[n..];
                PropValue::Int(v as u32)
            }
            0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1A | 0x1C | 0x1F => {
                let n = two(p)?;
                let v = p.get(2..2 + n)?.to_vec();
                p = &p[2 + n..];
                PropValue::Bytes(v)
            }
            0x26 => {
                let n = two(p)?;
                let k = String::from_utf8_lossy(p.get(2..2 + n)?).into_owned();
                p = &p[2 + n..];
                let m = two(p)?;
                let v = String::from_utf8_lossy(p.get(2..2 + m)?).into_owned();
                p = &p[2 + m..];
                PropValue::Pair(k, v)
            }
            _ => return None,
        };
        out.push((id, v));
    }
    Some((out, used + len))
}

// ---------------------------------------------------------------------------------------------------------------
// A raw connection

/// What the broker did next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Packet(Packet),
    /// EOF or reset: the broker closed the network connection.
    Closed,
    /// Nothing within the wait.
    Silent,
}

pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    closed: bool,
}

pub type R = std::result::Result<(), String>;

impl Conn {
    pub async fn open(addr: SocketAddr) -> Result<Conn, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
            closed: false,
        })
    }

    /// Turns Nagle's algorithm off on this client's socket (latency measurements time only the broker).
    pub fn set_nodelay(&self) -> std::io::Result<()> {
        self.stream.set_nodelay(true)
    }

    /// Sends bytes; a broker that already closed makes this fail quietly (the next read reports the close).
    pub async fn send(&mut self, b: &[u8]) {
        let _ = self.stream.write_all(b).await;
    }

    /// Opens a connection, sends `c` and expects CONNACK with return/reason code 0.
    pub async fn connected(addr: SocketAddr, c: &Connect) -> Result<(Conn, Packet), String> {
        let mut conn = Conn::open(addr).await?;
        conn.send(&c.bytes()).await;
        let ack = conn.expect_kind(2).await?;
        if ack.body.get(1) != Some(&0) {
            return Err(format!("CONNACK refused: {ack:?}"));
        }
        Ok((conn, ack))
    }

    fn take_packet(&mut self) -> Option<Packet> {
        let (len, used) = read_vbi(self.buf.get(1..)?)?;
        let total = 1 + used + len;
        if self.buf.len() < total {
            return None;
        }
        let p = Packet {
            first: self.buf[0],
            body: self.buf[1 + used..total].to_vec(),
        };
        self.buf.drain(..total);
        Some(p)
    }

    /// The next packet, the close, or silence after `wait`.
    pub async fn next(&mut self, wait: Duration) -> Event {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(p) = self.take_packet() {
                return Event::Packet(p);
            }
            if self.closed {
                return Event::Closed;
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Event::Silent,
                Ok(Ok(0)) | Ok(Err(_)) => self.closed = true,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Expects exactly these bytes as the next packet.
    pub async fn expect(&mut self, want: &[u8]) -> R {
        match self.next(WAIT).await {
            Event::Packet(p) if p.bytes() == want => Ok(()),
            other => Err(format!("expected {}, got {}", hex(want), show(&other))),
        }
    }

    /// Expects a packet of this type (`kind` = first byte >> 4), skipping nothing.
    pub async fn expect_kind(&mut self, kind: u8) -> Result<Packet, String> {
        match self.next(WAIT).await {
            Event::Packet(p) if p.kind() == kind => Ok(p),
            other => Err(format!("expected packet type {kind}, got {}", show(&other))),
        }
    }

    /// Expects a PUBLISH (skipping nothing) and decodes it.
    pub async fn expect_publish(&mut self, v5: bool) -> Result<Publish, String> {
        let p = self.expect_kind(3).await?;
        p.publish(v5)
            .ok_or_else(|| format!("undecodable PUBLISH {p:?}"))
    }

    /// Expects the broker to close the connection without sending anything first.
    pub async fn expect_close(&mut self) -> R {
        match self.next(WAIT).await {
            Event::Closed => Ok(()),
            other => Err(format!(
                "expected the connection closed, got {}",
                show(&other)
            )),
        }
    }

    /// Expects the broker to close, optionally after packets that `allowed` accepts (e.g. a DISCONNECT with
    /// one of the reason codes the specification allows). Returns what was sent before the close.
    pub async fn expect_close_after(
        &mut self,
        allowed: impl Fn(&Packet) -> bool,
    ) -> Result<Vec<Packet>, String> {
        let mut seen = Vec::new();
        loop {
            match self.next(WAIT).await {
                Event::Closed => return Ok(seen),
                Event::Packet(p) if allowed(&p) => seen.push(p),
                other => {
                    return Err(format!(
                        "expected the connection closed{}, got {}",
                        if seen.is_empty() {
                            String::new()
                        } else {
                            format!(" after {seen:?}")
                        },
                        show(&other)
                    ));
                }
            }
        }
    }

    /// MQTT 5: expects DISCONNECT with exactly `code`, then the close.
    pub async fn expect_disconnect(&mut self, code: u8) -> R {
        let seen = self
            .expect_close_after(|p| p.disconnect_code().is_some())
            .await?;
        match seen.as_slice() {
            [d] if d.disconnect_code() == Some(code) => Ok(()),
            [] => Err(format!("closed without DISCONNECT (0x{code:02x} expected)")),
            other => Err(format!(
                "expected DISCONNECT 0x{code:02x} then close, got {other:?}"
            )),
        }
    }

    /// Expects nothing within [`QUIET`] (the connection stays open and silent).
    pub async fn expect_silence(&mut self) -> R {
        match self.next(QUIET).await {
            Event::Silent => Ok(()),
            other => Err(format!("expected silence, got {}", show(&other))),
        }
    }

    /// Sends PINGREQ and expects PINGRESP: proves the connection is still open and served.
    pub async fn ping(&mut self) -> R {
        self.send(&PINGREQ).await;
        self.expect(&PINGRESP).await
    }
}

pub fn show(e: &Event) -> String {
    match e {
        Event::Packet(p) => format!("{p:?}"),
        Event::Closed => "the connection closed".into(),
        Event::Silent => "nothing".into(),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Brokers under test

/// A broker the cases run against.
#[derive(Clone)]
pub struct Target {
    pub name: &'static str,
    pub addr: SocketAddr,
    /// True for our hub (some cases check hub-only promises).
    pub is_hub: bool,
}

/// Keeps a broker alive for the test's duration.
pub enum Running {
    Hub(baetyl_hub::RunningHub, tempfile::TempDir),
    Mosquitto(Mosquitto, tempfile::TempDir),
}

impl Running {
    /// The hub's statistics (the hub's own counters under `hub`).
    pub async fn stats(&self) -> serde_json::Value {
        match self {
            Running::Hub(h, _) => h.stats().await,
            Running::Mosquitto(..) => serde_json::Value::Null,
        }
    }

    /// One of the hub's own counters (`stats()["hub"][key]`).
    pub async fn stat(&self, key: &str) -> Option<u64> {
        self.stats().await["hub"][key].as_u64()
    }

    /// Our hub's address for a listener kind.
    pub fn addr(&self, kind: baetyl_hub::config::ListenKind) -> Option<SocketAddr> {
        match self {
            Running::Hub(h, _) => h.local_addr(kind),
            Running::Mosquitto(..) => None,
        }
    }
}

/// The principals every conformance hub has: `admin` may do anything, `limited` publishes `t/a`, reads `t/#`.
pub const PRINCIPALS: &str = "\
principals:
  - {username: admin, password: admin-pw, permissions: [{action: pub, permit: ['#']}, {action: sub, permit: ['#', '$SYS/#']}]}
  - {username: limited, password: limited-pw, permissions: [{action: pub, permit: ['t/a']}, {action: sub, permit: ['t/#']}]}
";

/// Starts our hub in-process with `extra` appended to the standard config (`{dir}` = its temp dir).
pub async fn start_hub(extra: &str) -> Result<(Target, Running)> {
    start_hub_with(PRINCIPALS, extra).await
}

/// Starts our hub in-process with these principals and `extra` config (`{dir}` = its temp dir; a `listen:` or
/// `storage:` in `extra` replaces the default one).
pub async fn start_hub_with(principals: &str, extra: &str) -> Result<(Target, Running)> {
    let dir = tempfile::tempdir()?;
    let listen = if extra.contains("listen:") {
        ""
    } else {
        "listen: [tcp://127.0.0.1:0]\n"
    };
    let storage = if extra.contains("storage:") {
        ""
    } else {
        "storage: {dir: '{dir}/data'}\n"
    };
    let text = format!("{listen}{principals}{storage}{extra}")
        .replace("{dir}", &dir.path().display().to_string());
    let path = dir.path().join("service.yml");
    std::fs::write(&path, &text)?;
    let cfg = baetyl_hub::HubConfig::load(&path)?;
    let hub = baetyl_hub::start(&cfg).await?;
    let addr = hub
        .local_addrs()
        .first()
        .map(|(_, a)| *a)
        .context("no listener")?;
    Ok((
        Target {
            name: "hub",
            addr,
            is_hub: true,
        },
        Running::Hub(hub, dir),
    ))
}

/// Whether Debian's mosquitto broker is installed (`apt-get install mosquitto`; scripts/setup.sh does).
pub fn mosquitto_installed() -> bool {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .iter()
        .any(|p| Path::new(p).exists())
}

/// Starts Debian's mosquitto (the test kit's runner) on a free port with the same two principals (its password
/// file, and an ACL file written here) and `extra` lines of mosquitto.conf.
pub async fn start_mosquitto(extra: &str) -> Result<(Target, Running)> {
    let dir = tempfile::tempdir()?;
    let acl = dir.path().join("acl");
    std::fs::write(
        &acl,
        "user admin\ntopic readwrite #\ntopic read $SYS/#\n\nuser limited\ntopic write t/a\ntopic read t/#\n",
    )?;
    let mut b = Mosquitto::builder(&dir.path().join("broker"))
        .user(USER, PASS)
        .user("limited", "limited-pw")
        .persistence(false)
        .quiet()
        .option(&format!("acl_file {}", acl.display()));
    for line in extra.lines().filter(|l| !l.trim().is_empty()) {
        b = b.option(line);
    }
    let m = tokio::task::spawn_blocking(move || b.start()).await??;
    let addr: SocketAddr = ([127, 0, 0, 1], m.port).into();
    Ok((
        Target {
            name: "mosquitto",
            addr,
            is_hub: false,
        },
        Running::Mosquitto(m, dir),
    ))
}

// ---------------------------------------------------------------------------------------------------------------
// The runner

pub type CaseFuture = Pin<Box<dyn Future<Output = R> + Send>>;

/// One conformance case: a class of behaviour, the normative statements it checks, and its body.
pub struct Case {
    pub class: &'static str,
    pub statements: &'static str,
    pub run: fn(Target) -> CaseFuture,
}

#[macro_export]
macro_rules! case {
    ($class:expr, $statements:expr, $f:path) => {
        $crate::mqtt_raw::Case {
            class: $class,
            statements: $statements,
            run: |t| Box::pin($f(t)),
        }
    };
}

/// Runs every case against the hub and (when installed) mosquitto, concurrently; prints one table row per case
/// and fails if the hub failed any.
pub async fn run_cases(
    title: &str,
    cases: Vec<Case>,
    hub: Target,
    mosq: Option<Target>,
) -> Result<()> {
    let mut set = tokio::task::JoinSet::new();
    for (i, case) in cases.iter().enumerate() {
        let run = case.run;
        for (j, t) in std::iter::once(hub.clone()).chain(mosq.clone()).enumerate() {
            set.spawn(async move {
                let r = tokio::time::timeout(Duration::from_secs(60), run(t))
                    .await
                    .unwrap_or_else(|_| Err("case timed out".into()));
                (i, j, r)
            });
        }
    }
    let mut results: Vec<[Option<R>; 2]> = cases.iter().map(|_| [None, None]).collect();
    while let Some(done) = set.join_next().await {
        let (i, j, r) = done?;
        results[i][j] = Some(r);
    }
    let cell = |r: &Option<R>| match r {
        None => "not run".to_string(),
        Some(Ok(())) => "pass".to_string(),
        Some(Err(e)) => format!("FAIL: {e}"),
    };
    println!("\n{title}\n| class | statements | hub | mosquitto 2.0.11 |\n|---|---|---|---|");
    let mut failed = Vec::new();
    let (mut hub_pass, mut mosq_pass) = (0, 0);
    for (case, [h, m]) in cases.iter().zip(&results) {
        println!(
            "| {} | {} | {} | {} |",
            case.class,
            case.statements,
            cell(h),
            cell(m)
        );
        if matches!(h, Some(Ok(()))) {
            hub_pass += 1;
        } else {
            failed.push(format!("{}: {}", case.class, cell(h)));
        }
        if matches!(m, Some(Ok(()))) {
            mosq_pass += 1;
        }
    }
    println!(
        "{title}: hub {hub_pass}/{n}, mosquitto {mosq_pass}/{n}{}",
        if mosq.is_none() {
            " (mosquitto not installed: not run)"
        } else {
            ""
        },
        n = cases.len()
    );
    if !failed.is_empty() {
        bail!(
            "the hub failed {} case(s):\n{}",
            failed.len(),
            failed.join("\n")
        );
    }
    Ok(())
}

// The hub tests' fixtures: `block_on` (a runtime whose leftovers are abandoned), the test kit's client.
#[path = "../common/mod.rs"]
mod common;
pub use common::block_on;
