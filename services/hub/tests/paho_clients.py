"""MQTT 3.1.1 and 5 end to end through the hub with Eclipse paho-mqtt (a client library other than rumqttc).

Run by tests/paho.rs as `python3 paho_clients.py HOST PORT` against a hub with the principals `admin`
(everything) and `limited` (publishes t/a, subscribes t/#). Prints one line per check, `ok NAME` or
`FAIL NAME: why`, and exits 1 if any check failed.
"""

import json
import queue
import sys
import threading
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

HOST, PORT = sys.argv[1], int(sys.argv[2])
WAIT = 5.0
RUN = uuid.uuid4().hex[:8]
failures = []


def check(name):
    def wrap(fn):
        try:
            fn()
            print(f"ok {name}", flush=True)
        except Exception as e:  # noqa: BLE001 - every failure is reported, the run goes on
            failures.append(name)
            print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
        return fn

    return wrap


class Client:
    """A paho client whose events land in queues that the checks read with a timeout."""

    def __init__(self, client_id, v5=True, user="admin", password="admin-pw", clean=True, connect_props=None, will=None):
        self.v5 = v5
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else clean,
        )
        self.c.username_pw_set(user, password)
        self.messages = queue.Queue()
        self.acks = queue.Queue()
        self.connack = queue.Queue()
        self.disconnects = queue.Queue()
        self.c.on_connect = lambda c, u, flags, rc, props: self.connack.put((flags, rc, props))
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        self.c.on_subscribe = lambda c, u, mid, rcs, props: self.acks.put(("suback", mid, rcs, props))
        self.c.on_unsubscribe = lambda c, u, mid, rcs, props: self.acks.put(("unsuback", mid, rcs, props))
        self.c.on_publish = lambda c, u, mid, rc, props: self.acks.put(("puback", mid, rc, props))
        self.c.on_disconnect = lambda c, u, flags, rc, props: self.disconnects.put(rc)
        if will:
            self.c.will_set(*will)
        kwargs = {"keepalive": 30}
        if v5:
            kwargs["clean_start"] = clean
            kwargs["properties"] = connect_props
        self.c.connect(HOST, PORT, **kwargs)
        self.c.loop_start()
        self.flags, self.rc, self.props = self.connack.get(timeout=WAIT)

    def ack(self, kind, mid):
        deadline = time.time() + WAIT
        while time.time() < deadline:
            k, m, rc, props = self.acks.get(timeout=max(0.01, deadline - time.time()))
            if k == kind and m == mid:
                return rc, props
        raise TimeoutError(f"no {kind} for {mid}")

    def subscribe(self, *args, **kwargs):
        _, mid = self.c.subscribe(*args, **kwargs)
        return self.ack("suback", mid)

    def unsubscribe(self, *args, **kwargs):
        _, mid = self.c.unsubscribe(*args, **kwargs)
        return self.ack("unsuback", mid)

    def publish(self, topic, payload, qos=1, retain=False, properties=None):
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if qos > 0:
            return self.ack("puback", info.mid)
        return None

    def recv(self, wait=WAIT):
        return self.messages.get(timeout=wait)

    def none(self, wait=0.7):
        try:
            m = self.messages.get(timeout=wait)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected message on {m.topic}: {m.payload!r}")

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def props(**kv):
    p = Properties(PacketTypes.PUBLISH)
    for k, v in kv.items():
        setattr(p, k, v)
    return p


def t(name):
    return f"paho/{RUN}/{name}"


# ------------------------------------------------------------------------------------------------ MQTT 3.1.1


@check("3.1.1 publish/subscribe QoS 0, 1, 2 and retained")
def _():
    s = Client("p3-sub", v5=False)
    rc, _ = s.subscribe(t("v3/#"), qos=2)
    assert [r.value for r in rc] == [2], rc
    p = Client("p3-pub", v5=False)
    for q in (0, 1, 2):
        p.publish(t(f"v3/q{q}"), f"m{q}", qos=q)
        m = s.recv()
        assert (m.topic, m.payload, m.qos) == (t(f"v3/q{q}"), f"m{q}".encode(), q), m
    p.publish(t("v3/kept"), "kept", qos=1, retain=True)
    s.recv()
    late = Client("p3-late", v5=False)
    late.subscribe(t("v3/kept"), qos=1)
    m = late.recv()
    assert m.retain and m.payload == b"kept", m
    p.publish(t("v3/kept"), b"", qos=1, retain=True)
    for c in (s, p, late):
        c.close()


@check("3.1.1 persistent session: queued QoS 1 after reconnect, session present")
def _():
    s = Client("p3-persist", v5=False, clean=False)
    s.subscribe(t("v3p/#"), qos=1)
    s.close()
    p = Client("p3-persist-pub", v5=False)
    p.publish(t("v3p/x"), "while away", qos=1)
    s = Client("p3-persist", v5=False, clean=False)
    assert s.flags.session_present, s.flags
    assert s.recv().payload == b"while away"
    s.close()
    Client("p3-persist", v5=False, clean=True).close()
    p.close()


@check("3.1.1 will on abnormal close, denied publish and subscribe")
def _():
    w = Client("p3-watch", v5=False)
    w.subscribe(t("v3w/#"), qos=1)
    d = Client("p3-dies", v5=False, will=(t("v3w/gone"), "gone", 1, False))
    d.c.loop_stop()
    d.c.socket().close()
    m = w.recv()
    assert m.topic == t("v3w/gone") and m.payload == b"gone", m
    lim = Client("p3-limited", v5=False, user="limited", password="limited-pw")
    rc, _ = lim.subscribe("x/#", qos=1)
    assert rc[0].value == 0x80, rc
    w.close()
    lim.close()


# ------------------------------------------------------------------------------------------------ MQTT 5


@check("5 CONNACK: reason code and the server's limits")
def _():
    c = Client("p5-connack")
    assert c.rc.value == 0, c.rc
    p = c.props
    assert p.ReceiveMaximum >= 1 and p.TopicAliasMaximum >= 1 and p.MaximumPacketSize > 0, p
    assert getattr(p, "SharedSubscriptionAvailable", 1) == 1, p
    c.close()


@check("5 request/response: response topic, correlation data, content type, user properties end to end")
def _():
    responder = Client("p5-responder")
    responder.subscribe(t("req"), qos=1)
    requester = Client("p5-requester")
    requester.subscribe(t("reply"), qos=1)
    ask = props(
        ResponseTopic=t("reply"),
        CorrelationData=b"\x00\x01corr",
        ContentType="application/json",
        PayloadFormatIndicator=1,
        UserProperty=[("k", "1"), ("a", "x"), ("k", "2")],
    )
    requester.publish(t("req"), json.dumps({"q": 1}), qos=1, properties=ask)
    m = responder.recv()
    mp = m.properties
    assert mp.ResponseTopic == t("reply") and mp.CorrelationData == b"\x00\x01corr", mp
    assert mp.ContentType == "application/json" and mp.PayloadFormatIndicator == 1, mp
    assert mp.UserProperty == [("k", "1"), ("a", "x"), ("k", "2")], mp.UserProperty
    assert not hasattr(mp, "MessageExpiryInterval"), f"invented Message Expiry Interval: {mp}"
    responder.publish(mp.ResponseTopic, "answer", qos=1, properties=props(CorrelationData=mp.CorrelationData))
    r = requester.recv()
    assert r.payload == b"answer" and r.properties.CorrelationData == b"\x00\x01corr", r.properties
    responder.close()
    requester.close()


@check("5 message expiry: forwarded with the time left")
def _():
    s = Client("p5-exp-sub")
    s.subscribe(t("exp"), qos=1)
    p = Client("p5-exp-pub")
    p.publish(t("exp"), "x", qos=1, properties=props(MessageExpiryInterval=100))
    m = s.recv()
    assert 95 <= m.properties.MessageExpiryInterval <= 100, m.properties
    s.close()
    p.close()


@check("5 subscription options: no local, retain as published, retain handling, subscription identifier")
def _():
    c = Client("p5-opts")
    sp = Properties(PacketTypes.SUBSCRIBE)
    sp.SubscriptionIdentifier = 42
    c.subscribe(t("opts/#"), options=SubscribeOptions(qos=1, noLocal=True, retainAsPublished=True), properties=sp)
    c.publish(t("opts/own"), "own", qos=1)
    c.none()
    o = Client("p5-opts-other")
    o.publish(t("opts/r"), "r", qos=1, retain=True)
    m = c.recv()
    assert m.retain, "retain as published lost the flag"
    assert m.properties.SubscriptionIdentifier == [42], m.properties
    for rh, expect in ((2, False), (0, True)):
        n = Client(f"p5-rh{rh}")
        n.subscribe(t("opts/r"), options=SubscribeOptions(qos=1, retainHandling=rh))
        if expect:
            assert n.recv().payload == b"r"
        else:
            n.none()
        n.close()
    o.publish(t("opts/r"), b"", qos=1, retain=True)
    c.close()
    o.close()


@check("5 topic alias")
def _():
    s = Client("p5-alias-sub")
    s.subscribe(t("alias/#"), qos=1)
    p = Client("p5-alias-pub")
    p.publish(t("alias/long/name"), "1", qos=1, properties=props(TopicAlias=1))
    p.publish("", "2", qos=1, properties=props(TopicAlias=1))
    for want in (b"1", b"2"):
        m = s.recv()
        assert m.topic == t("alias/long/name") and m.payload == want, (m.topic, m.payload)
    s.close()
    p.close()


@check("5 shared subscription: each message to one member")
def _():
    a = Client("p5-share-a")
    b = Client("p5-share-b")
    for c in (a, b):
        rc, _ = c.subscribe(f"$share/g/{t('share')}", qos=1)
        assert rc[0].value == 1, rc
    p = Client("p5-share-pub")
    for i in range(10):
        p.publish(t("share"), str(i), qos=1)
    got = []
    for c in (a, b):
        while True:
            try:
                got.append(c.recv(0.7).payload)
            except queue.Empty:
                break
    assert sorted(got) == sorted(str(i).encode() for i in range(10)), got
    for c in (a, b, p):
        c.close()


@check("5 reason codes: SUBACK/PUBACK 0x87 denied, UNSUBACK 0x11")
def _():
    lim = Client("p5-limited", user="limited", password="limited-pw")
    rc, _ = lim.subscribe([("t/x", 1), ("x/y", 1)])
    assert [r.value for r in rc] == [1, 0x87], rc
    rc, _ = lim.publish("x/y", "no", qos=1)
    assert rc.value == 0x87, rc
    rc, _ = lim.unsubscribe(["t/x", "never/subscribed"])
    assert [r.value for r in rc] == [0, 0x11], rc
    lim.close()


@check("5 receive maximum: no more unacknowledged QoS 1 deliveries than the client allows")
def _():
    cp = Properties(PacketTypes.CONNECT)
    cp.ReceiveMaximum = 2
    s = Client("p5-rmax", connect_props=cp)
    s.c.manual_ack_set(True)
    s.subscribe(t("rmax"), qos=1)
    p = Client("p5-rmax-pub")
    for i in range(5):
        p.publish(t("rmax"), str(i), qos=1)
    first = [s.recv(), s.recv()]
    s.none()
    s.c.ack(first[0].mid, 1)
    assert s.recv().payload == b"2"
    s.close()
    p.close()


@check("5 session expiry: session present after reconnect")
def _():
    cp = Properties(PacketTypes.CONNECT)
    cp.SessionExpiryInterval = 60
    s = Client("p5-session", clean=False, connect_props=cp)
    s.subscribe(t("sess/#"), qos=1)
    s.close()
    p = Client("p5-session-pub")
    p.publish(t("sess/x"), "queued", qos=1)
    s = Client("p5-session", clean=False, connect_props=cp)
    assert s.flags.session_present, s.flags
    assert s.recv().payload == b"queued"
    s.close()
    p.close()


@check("5 takeover: the old connection is told 0x8E")
def _():
    a = Client("p5-takeover")
    b = Client("p5-takeover")
    rc = a.disconnects.get(timeout=WAIT)
    assert rc.value == 0x8E, rc
    b.close()


print(json.dumps({"failed": failures}), flush=True)
sys.exit(1 if failures else 0)
