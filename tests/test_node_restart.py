"""Node restarts (issue 13 §5): the node announces its boot id (a `boot` message, `boot_id` in every
heartbeat); a `Publisher` loses readiness when its node goes and regains it when the node is back;
a `Subscriber` reports `state_lost` for each stream that had state. Real VAD nodes on loopback,
the second bound to the first one's endpoints."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
from nodekit import collect, next_stats, start_node, wait_subscribed

from edge_stream.node.client import Publisher, Subscriber
from edge_stream.node.config import Endpoints
from edge_stream.node.node import Node


@pytest.fixture()
def first(vad_dir):
    n = start_node([{"name": "vad", "dir": str(vad_dir), "topics": ["mic"]}], name="robot", stats_interval_s=0.1)
    yield n
    n.stop()


def restart(node: Node, between=lambda: None) -> Node:
    """Stop `node`, call `between()`, start the same node on the same endpoints (as a new process would)."""
    node.stop()
    between()
    eps = {k: Endpoints(bind=tuple(v)) for k, v in node.endpoints.items()}
    return Node(dataclasses.replace(node.cfg, **eps)).start()


def test_publisher_readiness_goes_with_the_node_and_comes_back_with_its_restart(first):
    pub = Publisher("mic", connect=first.endpoints["input"])
    sub = Subscriber(["out/after"], connect=first.endpoints["output"])
    assert pub.wait_ready(5) and pub.ready
    gone = []
    second = restart(first, between=lambda: gone.append(pub.wait_unsubscribed(5) and not pub.ready))
    try:
        # Readiness went with the node (its subscription left) and came back with its restart.
        assert gone == [True]
        assert pub.wait_ready(5) and pub.resubscribed == 1
        wait_subscribed(second, sub)
        pub.send(np.zeros(512, np.float32), stream="after", sr=16000)
        (rec,) = collect(sub, lambda r: r.kind == "result")
        assert rec.header["pub_id"] == second.pub_id  # served by the restarted node
    finally:
        pub.close()
        sub.close()
        second.stop()


def test_publisher_sees_its_node_leave(first, caplog):
    pub = Publisher("mic", connect=first.endpoints["input"])
    try:
        assert pub.wait_ready(5)
        with caplog.at_level(logging.WARNING, logger="edge_stream.node.client"):
            first.stop()
            assert pub.wait_unsubscribed(5) and not pub.ready
        assert any("no subscriber left" in r.getMessage() for r in caplog.records)
    finally:
        pub.close()


def test_subscriber_gets_state_lost_for_each_stream_with_state_and_the_boot(first):
    sub = Subscriber(["out/a", "out/b", "out/c", "stats"], connect=first.endpoints["output"])
    pub = Publisher("mic", connect=first.endpoints["input"])
    assert pub.wait_ready(5)
    wait_subscribed(first, sub)
    x = np.zeros(512, np.float32)
    for s in "abc":
        pub.send(x, stream=s, sr=16000)
    pub.send(kind="close", stream="c")  # c ends with `closed`: it has no state to lose
    collect(sub, lambda r: r.header.get("event") == "closed")
    old_boot = first.pub_id
    second = restart(first)
    try:
        recs = collect(sub, lambda r: r.kind == "boot", timeout=10)
        firsts = [i for i, r in enumerate(recs) if r.header.get("pub_id") == second.pub_id]
        assert firsts, [(r.kind, r.header.get("pub_id"), r.header.get("event")) for r in recs]
        lost = [r for r in recs[:firsts[0] + 2] if r.header.get("event") == "state_lost"]
        assert sorted(r.header["stream"] for r in lost) == ["a", "b"]
        assert all(r.synthesized and r.header["old_boot_id"] == old_boot and r.header["boot_id"] == second.pub_id
                   and r.msg.topic == f"out/{r.header['stream']}" for r in lost)
        assert recs[firsts[0]].header.get("event") == "state_lost"  # before anything of the new boot
        boot = recs[-1].header
        assert boot["kind"] == "boot" and boot["boot_id"] == second.pub_id == boot["pub_id"]
        assert boot["node"] == "robot" and boot["models"] == ["vad"]
        assert sub.boots == {"robot": second.pub_id} and sub.restarts == 1
        assert next_stats(sub)["boot_id"] == second.pub_id
    finally:
        pub.close()
        sub.close()
        second.stop()
