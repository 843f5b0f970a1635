"""Delivery to subscribers (issue 13 §2): a stalled controller loses only its own messages, and
learns how many through its client; a healthy one on the same node gets every output and every
heartbeat. Real VAD node, real sockets on loopback."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
import zmq
from nodekit import start_node, wait_subscribed

from edge_stream.node.client import Publisher, Subscriber

STREAMS = ("s0", "s1", "s2", "s3")
CHUNKS = 800  # per stream: 3200 results of ~250 bytes, far over the stalled pipe (HWMs + socket buffers)


@pytest.fixture()
def node(vad_dir):
    n = start_node([{"name": "vad", "dir": str(vad_dir), "topics": ["mic"]}], transport="ipc",
                   sndhwm=100, stats_interval_s=0.1, workers=2)
    yield n
    n.stop()


def stalled_subscriber(node) -> Subscriber:
    """Subscribed to everything, with the smallest queues, connected after they are set."""
    sub = Subscriber([""], prefix=True)
    sub.sock.rcvhwm = 1
    sub.sock.setsockopt(zmq.RCVBUF, 4096)
    sub.sock.connect(node.endpoints["output"][0])
    wait_subscribed(node, sub)
    return sub


def healthy_subscriber(node) -> Subscriber:
    """Reads everything: an unbounded receive queue, so only the node's side could lose anything."""
    sub = Subscriber([f"out/{s}" for s in STREAMS] + ["stats"])
    sub.sock.rcvhwm = 0
    sub.sock.connect(node.endpoints["output"][0])
    wait_subscribed(node, sub)
    return sub


def stream_keys(sub: Subscriber) -> dict:
    return {k[2]: v for k, v in sub.lost.items() if k[2] in STREAMS}


def test_a_stalled_subscriber_loses_only_its_own_outputs_and_its_client_counts_them(node, caplog):
    stalled = stalled_subscriber(node)
    healthy = healthy_subscriber(node)
    pub = Publisher("mic", connect=node.endpoints["input"], sndhwm=0)  # the burst queues, never drops
    assert pub.wait_ready(5)
    x = np.zeros(512, np.float32)
    t_start = time.time_ns()
    for _ in range(CHUNKS):  # the burst; `stalled` reads nothing meanwhile
        for s in STREAMS:
            pub.send(x, stream=s, sr=16000)
    for s in STREAMS:
        pub.end(stream=s)

    # The healthy subscriber: every output of every stream, in seq order, and every heartbeat.
    recs, done = [], set()
    deadline = time.monotonic() + 60
    while done != set(STREAMS) and time.monotonic() < deadline:
        rec = healthy.recv(1.0)
        if rec is not None:
            recs.append(rec)
            if rec.kind == "done":
                done.add(rec.header["stream"])
    assert done == set(STREAMS), f"healthy subscriber got done for {sorted(done)} only"
    t_end = time.time_ns()
    for s in STREAMS:
        mine = [r for r in recs if r.header.get("stream") == s]
        assert [r.kind for r in mine] == ["result"] * CHUNKS + ["done"]
        seqs = [r.header["seq"] for r in mine]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    stats = [r.header for r in recs if r.kind == "stats"]
    assert healthy.gaps == 0 and not healthy.lost, healthy.lost
    assert [h["seq"] for h in stats] == list(range(stats[0]["seq"], stats[0]["seq"] + len(stats)))
    burst_s = (t_end - t_start) / 1e9
    # Every heartbeat published reached it (seq above); and they kept coming during the burst (the
    # bound leaves room for a loaded machine delaying the loop's ticks).
    assert len(stats) >= max(2, int(burst_s / 0.1) // 2), f"{len(stats)} heartbeats in {burst_s:.2f} s at 10 Hz"
    assert all(h["dropped"] == 0 for h in stats)  # nothing refused by the socket: the node never stalled

    # The stalled subscriber reads at last: its queue, then (new messages) the jumps in seq.
    last_stats_seq = stats[-1]["seq"]
    with caplog.at_level(logging.WARNING, logger="edge_stream.node.client"):
        got = collect_until_stats_after(stalled, last_stats_seq)
        assert pub.wait_ready(1)
        for s in STREAMS:  # one more output per stream shows what it missed before it
            pub.send(x, stream=s, sr=16000)
            pub.end(stream=s)
        late, done = [], set()
        deadline = time.monotonic() + 20
        while done != set(STREAMS) and time.monotonic() < deadline:
            rec = stalled.recv(1.0)
            if rec is not None:
                late.append(rec)
                if rec.kind == "done" and rec.header["seq"] > CHUNKS:
                    done.add(rec.header["stream"])
        assert done == set(STREAMS)
    got += late
    lost = stream_keys(stalled)
    assert set(lost) == set(STREAMS) and all(n > 0 for n in lost.values()), lost
    for s in STREAMS:  # exactly what it did not get: outputs 0 .. last seq, minus the ones it got
        seqs = {r.header["seq"] for r in got if r.msg.topic == f"out/{s}"}
        assert lost[s] == max(seqs) + 1 - len(seqs)
    assert stalled.gaps == sum(stalled.lost.values())
    assert any("lost" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    pub.close()
    stalled.close()
    healthy.close()


def collect_until_stats_after(sub: Subscriber, stats_seq: int, timeout: float = 20.0) -> list:
    """Everything `sub` gets until a heartbeat numbered after `stats_seq`: its queue is drained."""
    out, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        rec = sub.recv(1.0)
        if rec is None:
            continue
        out.append(rec)
        if rec.kind == "stats" and rec.header["seq"] > stats_seq:
            return out
    raise AssertionError(f"no heartbeat after seq {stats_seq} within {timeout} s")
