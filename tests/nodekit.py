"""Helpers for node tests: nodes on loopback (tcp or ipc) with free endpoints, bounded waits."""

from __future__ import annotations

import itertools
import os
import tempfile
import time

from edge_stream.node.client import Control, Publisher, Subscriber
from edge_stream.node.node import Node, make_node_config

_ipc_ids = itertools.count()


def endpoint(transport: str) -> str:
    """A bind endpoint nobody else uses: a random tcp port, or a fresh ipc path."""
    if transport == "tcp":
        return "tcp://127.0.0.1:*"
    path = os.path.join(tempfile.gettempdir(), f"es-{os.getpid()}-{next(_ipc_ids)}.ipc")
    return f"ipc://{path}"


def start_node(models: list[dict], transport: str = "tcp", **options) -> Node:
    cfg = make_node_config(name=options.pop("name", "test"), input={"bind": [endpoint(transport)]},
                           output={"bind": [endpoint(transport)]}, control={"bind": [endpoint(transport)]},
                           models=models, **options)
    return Node(cfg).start()


def clients(node: Node, topic: str, out_topics: list[str], **pub_kw):
    """(publisher, subscriber, control) connected to `node`, the publisher already subscribed to."""
    sub = Subscriber(out_topics, connect=node.endpoints["output"])
    pub = Publisher(topic, connect=node.endpoints["input"], **pub_kw)
    assert pub.wait_ready(5.0), "node never subscribed to the input topic"
    wait_subscribed(node, sub)
    return pub, sub, Control(node.endpoints["control"])


def wait_subscribed(node: Node, sub: Subscriber, timeout: float = 5.0) -> None:
    """Until `sub` receives node output (the stats heartbeat; the caller subscribes to `stats` too,
    or we add it), so outputs published from now on reach it."""
    import zmq

    sub.sock.setsockopt(zmq.SUBSCRIBE, b"stats\x00")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rec = sub.recv(0.2)
        if rec is not None and rec.kind == "stats":
            break
    sub.sock.setsockopt(zmq.UNSUBSCRIBE, b"stats\x00")
    # Drain what arrived meanwhile.
    while sub.recv(0.0) is not None:
        pass


def collect(sub: Subscriber, until, timeout: float = 5.0) -> list:
    """Outputs until `until(rec)` is true (included) or `timeout`; stats messages are skipped."""
    out, deadline = [], time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        rec = sub.recv(left)
        if rec is None:
            break
        if rec.kind == "stats":
            continue
        out.append(rec)
        if until(rec):
            break
    return out


def done_for(stream: str):
    return lambda rec: rec.kind == "done" and rec.header.get("stream") == stream
