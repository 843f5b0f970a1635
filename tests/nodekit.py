"""Helpers for node tests: nodes on loopback (tcp or ipc) with free endpoints, bounded waits that
fail loudly, and the VAD reference the node's outputs are compared with."""

from __future__ import annotations

import itertools
import os
import tempfile
import time

import numpy as np
import zmq

from edge_stream.node import wire
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


def wait_subscribed(node: Node | None, sub, timeout: float = 5.0) -> None:
    """Return once `sub` (a Subscriber, or anything holding a SUB socket as `.sock`) receives the
    node's stats heartbeat: its other subscriptions went out before that one and the node's XPUB
    applies them in order, so outputs published from now on reach it. What arrived meanwhile is
    dropped. AssertionError when no heartbeat comes within `timeout` seconds."""
    stats = wire.topic_frame(node.cfg.stats_topic if node is not None else "stats")
    sub.sock.setsockopt(zmq.SUBSCRIBE, stats)  # counted: a caller's own `stats` subscription stays
    try:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if _recv_topic(sub, left) == stats:
                break
        else:
            name = node.cfg.name if node is not None else "?"
            raise AssertionError(f"no stats heartbeat from node {name!r} within {timeout} s: subscriber not connected")
    finally:
        sub.sock.setsockopt(zmq.UNSUBSCRIBE, stats)
    while _recv_topic(sub, 0.0) is not None:
        pass


def _recv_topic(sub, timeout: float) -> bytes | None:
    """The topic frame of the next message `sub` gets (None on timeout); a Subscriber reads it
    itself, so its per-topic seq tracking stays right."""
    if isinstance(sub, Subscriber):
        rec = sub.recv(timeout)
        return None if rec is None else wire.topic_frame(rec.msg.topic)
    if not sub.sock.poll(int(timeout * 1000)):
        return None
    return bytes(sub.sock.recv_multipart()[0])


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


def next_stats(sub: Subscriber, timeout: float = 5.0, until=lambda header: True) -> dict:
    """The header of the next stats message whose header satisfies `until`; AssertionError when
    none comes within `timeout` seconds (`sub` must subscribe to the stats topic)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        rec = sub.recv(left)
        if rec is not None and rec.kind == "stats" and until(rec.header):
            return rec.header
    raise AssertionError(f"no matching stats message within {timeout} s")


def random_chunks(samples: np.ndarray, seed: int, sizes: tuple[int, int] = (100, 3000)) -> list[np.ndarray]:
    """`samples` cut into consecutive chunks of random lengths in [sizes[0], sizes[1])."""
    rng = np.random.default_rng(seed)
    cuts, i = [], 0
    while i < len(samples):
        n = int(rng.integers(*sizes))
        cuts.append(samples[i:i + n])
        i += n
    return cuts


def runtime_vad(model, chunks) -> tuple[list[np.ndarray], list]:
    """What the runtime gives for these chunks fed directly to one VAD stream: (per-chunk probs,
    speech events as (name, sample)), the reference the node's outputs must equal."""
    s = model.open_stream()
    probs, events = [], []
    for c in chunks:
        out = s.feed(c)
        probs.append(out.probs)
        events += [("speech_start" if "start" in e else "speech_end", next(iter(e.values()))) for e in out.events]
    return probs, events
