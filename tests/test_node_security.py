"""CURVE: allowed keys get in, others get nothing in and read nothing; bad key folders fail at start."""

from __future__ import annotations

import time

import numpy as np
import pytest
from nodekit import collect

from edge_stream import ConfigError
from edge_stream.node.client import Publisher, Subscriber
from edge_stream.node.node import Node, make_node_config
from edge_stream.node.security import generate_keys


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


def roundtrip(node, keys, pub_who, sub_who, stream):
    """Send 3 chunks as `pub_who`, read as `sub_who`; returns the results the subscriber got."""
    sub = Subscriber([f"out/{stream}"], connect=node.endpoints["output"], **client_keys(keys, sub_who))
    pub = Publisher("mic", connect=node.endpoints["input"], **client_keys(keys, pub_who))
    try:
        ready = pub.wait_ready(1.5)
        time.sleep(0.3)  # let the subscriber's handshake finish (or fail)
        for _ in range(3):
            pub.send(np.zeros(512, np.float32), stream=stream)
        return ready, [r for r in collect(sub, lambda r: False, timeout=1.0) if r.kind == "result"]
    finally:
        pub.close()
        sub.close()


def test_allowed_keys_publish_and_read(secure_node, keys):
    ready, results = roundtrip(secure_node, keys, "allowed", "allowed", "ok")
    assert ready and len(results) == 3


def test_a_publisher_without_an_allowed_key_gets_nothing_in(secure_node, keys):
    before = secure_node.stats.chunks_in
    ready, _ = roundtrip(secure_node, keys, "stranger", "allowed", "intruder")
    assert not ready
    assert "intruder" not in secure_node.streams and secure_node.stats.chunks_in == before


def test_a_subscriber_without_an_allowed_key_reads_nothing(secure_node, keys):
    ready, results = roundtrip(secure_node, keys, "allowed", "stranger", "eavesdropped")
    assert ready and results == []
    assert "eavesdropped" in secure_node.streams  # the chunks did arrive and were served


def test_a_plain_text_client_gets_nothing_in(secure_node):
    pub = Publisher("mic", connect=secure_node.endpoints["input"])
    try:
        assert not pub.wait_ready(1.0)
    finally:
        pub.close()


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
