"""CURVE: allowed keys get in, others get nothing in and read nothing; bad key folders fail at start.

Refusals are asserted by what says so, never by silence before a timeout: the client socket's
handshake event (libzmq reports the ZAP authenticator's status code, 400, to the refused client;
a plain-text client gets a mechanism mismatch), an allowed client served in the same window, and
the node's public control status."""

from __future__ import annotations

import numpy as np
import pytest
import zmq
from nodekit import collect, wait_subscribed
from zmq.utils.monitor import recv_monitor_message

from edge_stream import ConfigError
from edge_stream.node.client import Control, Publisher, Subscriber
from edge_stream.node.node import Node, make_node_config
from edge_stream.node.security import client_curve, generate_keys

HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    node_pub, node_sec = generate_keys(root, "node")
    allowed_pub, allowed_sec = generate_keys(root / "allowed", "mic1")
    _, stranger_sec = generate_keys(root / "strangers", "stranger")
    return {"root": root, "node_pub": node_pub, "node_sec": node_sec, "allowed": root / "allowed",
            "allowed_sec": allowed_sec, "stranger_sec": stranger_sec}


def curve_config(vad_dir, keys, allowed=None):
    return make_node_config(
        name="secure", input={"bind": ["tcp://127.0.0.1:*"]}, output={"bind": ["tcp://127.0.0.1:*"]},
        control={"bind": ["tcp://127.0.0.1:*"]},
        models=[{"name": "vad", "dir": str(vad_dir), "topics": ["mic"]}], stats_interval_s=0.2,
        security={"curve": True, "secret_key": str(keys["node_sec"]),
                  "allowed_clients": str(allowed if allowed is not None else keys["allowed"])})


@pytest.fixture(scope="module")
def secure_node(vad_dir, keys):
    node = Node(curve_config(vad_dir, keys)).start()
    yield node
    node.stop()


def client_keys(keys, who):
    return {"secret_key": str(keys[f"{who}_sec"]), "server_key": str(keys["node_pub"])}


def allowed_clients(node, keys, out_topics):
    """(publisher, subscriber, control) with the allowed key, connected and subscribed."""
    sub = Subscriber(out_topics, connect=node.endpoints["output"], **client_keys(keys, "allowed"))
    pub = Publisher("mic", connect=node.endpoints["input"], **client_keys(keys, "allowed"))
    assert pub.wait_ready(5.0), "the allowed publisher was never subscribed to"
    wait_subscribed(node, sub)
    return pub, sub, Control(node.endpoints["control"], **client_keys(keys, "allowed"))


def connect_watched(client, endpoint: str, keys=None, who=None) -> zmq.Socket:
    """Connect a client made without endpoints, CURVE-keyed as `who` when given, with a monitor
    on its socket: attached before connect, since libzmq does not retry a failed handshake."""
    if who is not None:
        kw = client_keys(keys, who)
        client_curve(client.sock.context, kw["secret_key"], kw["server_key"], who).client(client.sock, who)
    monitor = client.sock.get_monitor_socket(HANDSHAKE_EVENTS)
    client.sock.connect(endpoint)
    return monitor


def handshake(monitor: zmq.Socket, timeout: float = 5.0) -> tuple[zmq.Event, int]:
    """(event, value) of the client's handshake; AssertionError when it reports none."""
    try:
        assert monitor.poll(int(timeout * 1000)), f"no handshake outcome within {timeout} s"
        ev = recv_monitor_message(monitor)
        return zmq.Event(ev["event"]), ev["value"]
    finally:
        monitor.close(linger=0)


def test_allowed_keys_publish_and_read(secure_node, keys):
    pub, sub, ctl = allowed_clients(secure_node, keys, ["out/ok"])
    try:
        for _ in range(3):
            pub.send(np.zeros(512, np.float32), stream="ok")
        results = collect(sub, lambda r: r.header.get("in_seq") == 2)
        assert [r.kind for r in results] == ["result"] * 3
        assert ctl.request("status")["streams"]["ok"]["chunks"] == 3
    finally:
        for c in (pub, sub, ctl):
            c.close()


def test_a_publisher_without_an_allowed_key_gets_nothing_in(secure_node, keys):
    pub, sub, ctl = allowed_clients(secure_node, keys, ["out/intruder", "out/witness"])
    stranger = Publisher("mic")
    try:
        event, status = handshake(connect_watched(stranger, secure_node.endpoints["input"][0], keys, "stranger"))
        assert (event, status) == (zmq.EVENT_HANDSHAKE_FAILED_AUTH, 400)  # the authenticator said no
        for _ in range(3):
            stranger.send(np.zeros(512, np.float32), stream="intruder")
        pub.send(np.zeros(512, np.float32), stream="witness")  # after the stranger's: it gets through
        recs = collect(sub, lambda r: r.header.get("stream") == "witness")
        assert [(r.kind, r.header["stream"]) for r in recs] == [("result", "witness")]
        streams = ctl.request("status")["streams"]
        assert "witness" in streams and "intruder" not in streams
    finally:
        for c in (stranger, pub, sub, ctl):
            c.close()


def test_a_subscriber_without_an_allowed_key_reads_nothing(secure_node, keys):
    pub, sub, ctl = allowed_clients(secure_node, keys, ["out/eavesdropped"])
    stranger = Subscriber(["out/eavesdropped"])
    try:
        event, status = handshake(connect_watched(stranger, secure_node.endpoints["output"][0], keys, "stranger"))
        assert (event, status) == (zmq.EVENT_HANDSHAKE_FAILED_AUTH, 400)
        for _ in range(3):
            pub.send(np.zeros(512, np.float32), stream="eavesdropped")
        results = collect(sub, lambda r: r.header.get("in_seq") == 2)  # the allowed reader got all three
        assert [r.kind for r in results] == ["result"] * 3
        assert stranger.recv(0.0) is None
        assert ctl.request("status")["streams"]["eavesdropped"]["chunks"] == 3  # served, just not to it
    finally:
        for c in (stranger, pub, sub, ctl):
            c.close()


def test_a_plain_text_client_gets_nothing_in(secure_node):
    plain = Publisher("mic")
    try:
        event, status = handshake(connect_watched(plain, secure_node.endpoints["input"][0]))
        # A NULL-mechanism greeting to a CURVE server: refused before any key is looked at, reported
        # as a mechanism mismatch, or with no detail when the server hangs up before the client reads it.
        assert event in (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL), (event, status)
        assert not plain.wait_ready(0.0)
    finally:
        plain.close()


def test_missing_allowed_folder_fails_at_start(vad_dir, keys, tmp_path):
    with pytest.raises(ConfigError, match="allowed_clients folder not found"):
        Node(curve_config(vad_dir, keys, allowed=tmp_path / "nope")).start()


def test_empty_allowed_folder_fails_at_start(vad_dir, keys, tmp_path):
    with pytest.raises(ConfigError, match="no public"):
        Node(curve_config(vad_dir, keys, allowed=tmp_path)).start()


def test_a_public_key_given_as_secret_fails_at_start(vad_dir, keys):
    cfg = curve_config(vad_dir, keys)
    import dataclasses
    cfg = dataclasses.replace(cfg, security=dataclasses.replace(cfg.security, secret_key=str(keys["node_pub"])))
    with pytest.raises(ConfigError, match="only a public key"):
        Node(cfg).start()
