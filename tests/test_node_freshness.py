"""Stale input and deadlines (issue 13 §4): a chunk older than its model's `max_age_ms` is dropped
with a `stale` event; an open stream silent for `deadline_ms` gets one `deadline_missed` per
silence. Real VAD node on loopback; time passing is read off the node's heartbeats."""

from __future__ import annotations

import itertools
import time

import msgpack
import numpy as np
import pytest
from nodekit import clients, collect, next_stats, start_node

MAX_AGE_MS = 200.0
DEADLINE_MS = 150.0
_names = itertools.count()


@pytest.fixture(scope="module")
def node(vad_dir):
    n = start_node([{"name": "vad", "dir": str(vad_dir), "topics": ["mic"], "max_age_ms": MAX_AGE_MS},
                    {"name": "watched", "dir": str(vad_dir), "topics": ["cam"], "deadline_ms": DEADLINE_MS}],
                   stats_interval_s=0.05)
    yield n
    n.stop()


def fresh(prefix: str) -> str:
    return f"{prefix}-{next(_names)}"


def events(recs, name=None):
    return [r.header["event"] for r in recs if r.kind == "event" and (name is None or r.header["event"] == name)]


def test_a_chunk_older_than_max_age_is_dropped_with_a_stale_event(node):
    name = fresh("old")
    pub, sub, _ = clients(node, "mic", [f"out/{name}", "stats"])
    x = np.zeros(512, np.float32)
    before = next_stats(sub)
    pub.send(x, stream=name, sr=16000, t_capture_ns=time.time_ns() - 1_000_000_000)  # captured 1 s ago
    pub.send(x, stream=name, sr=16000)  # fresh
    recs = [r for r in collect(sub, lambda r: r.kind == "result") if r.kind != "stats"]
    assert [r.kind for r in recs] == ["event", "result"]
    stale = recs[0].header
    assert (stale["event"], stale["in_seq"], stale["clock"], stale["max_age_ms"]) == ("stale", 0, "t_capture_ns",
                                                                                       MAX_AGE_MS)
    assert stale["age_ms"] >= 1000
    assert recs[1].header["samples"] == 512 and recs[1].header["in_seq"] == 1  # only the fresh one ran, no gap
    h = next_stats(sub, until=lambda h: h["stale"] >= before["stale"] + 1)
    assert h["stale"] == before["stale"] + 1


def test_without_t_capture_ns_the_age_is_measured_from_t_pub_ns(node):
    name = fresh("pubtime")
    pub, sub, _ = clients(node, "mic", [f"out/{name}"])
    old = {"v": 1, "stream": name, "pub_id": pub.pub_id, "seq": 0, "kind": "chunk",
           "t_pub_ns": time.time_ns() - 5_000_000_000, "dtype": "float32", "shape": [512], "sr": 16000}
    pub.sock.send_multipart([b"mic\x00", msgpack.packb(old), np.zeros(512, "<f4").tobytes()])
    (rec,) = collect(sub, lambda r: r.kind == "event")
    assert rec.header["event"] == "stale" and rec.header["clock"] == "t_pub_ns" and rec.header["age_ms"] >= 5000


def heartbeat_after(sub, ms: float) -> dict:
    """The first heartbeat published `ms` after now (the node's clock says time has passed)."""
    t = time.time_ns() + int(ms * 1e6)
    return next_stats(sub, until=lambda h: h["t_pub_ns"] >= t)


def test_a_silent_stream_gets_one_deadline_missed_per_silence(node):
    name = fresh("quiet")
    pub, sub, _ = clients(node, "cam", [f"out/{name}", "stats"])
    x = np.zeros(512, np.float32)
    before = next_stats(sub)
    pub.send(x, stream=name, sr=16000)
    recs = collect(sub, lambda r: r.header.get("event") == "deadline_missed")
    missed = [r.header for r in recs if r.kind == "event"]
    assert [e["event"] for e in missed] == ["deadline_missed"]
    assert missed[0]["deadline_ms"] == DEADLINE_MS and missed[0]["silent_ms"] >= DEADLINE_MS
    assert "in_seq" not in missed[0]  # caused by no input
    # Three more deadlines pass in the same silence; then input: between the two, nothing was missed again.
    heartbeat_after(sub, 3 * DEADLINE_MS)
    pub.send(x, stream=name, sr=16000)
    recs = [r for r in collect(sub, lambda r: r.kind == "result") if r.kind != "stats"]
    assert [r.kind for r in recs] == ["result"]
    # Re-armed by that input: the next silence is reported again.
    recs = collect(sub, lambda r: r.header.get("event") == "deadline_missed")
    assert events(recs) == ["deadline_missed"]
    h = next_stats(sub, until=lambda h: h["deadline_missed"] >= before["deadline_missed"] + 2)
    assert h["deadline_missed"] >= before["deadline_missed"] + 2


def test_end_disarms_the_deadline_until_the_next_chunk(node):
    name = fresh("ended")
    pub, sub, _ = clients(node, "cam", [f"out/{name}", "stats"])
    x = np.zeros(512, np.float32)
    pub.send(x, stream=name, sr=16000)
    pub.end(stream=name)
    recs = collect(sub, lambda r: r.kind == "done")
    assert [r.kind for r in recs if r.kind != "stats"] == ["result", "done"]
    heartbeat_after(sub, 3 * DEADLINE_MS)
    pub.send(x, stream=name, sr=16000)
    recs = [r for r in collect(sub, lambda r: r.kind == "result") if r.kind != "stats"]
    assert [r.kind for r in recs] == ["result"]  # no deadline_missed while the input had ended


def test_a_stream_opened_by_control_and_never_fed_misses_its_deadline(node):
    name = fresh("opened")
    _, sub, ctl = clients(node, "cam", [f"out/{name}"])
    assert ctl.request("open", stream=name, model="watched")["ok"]
    recs = collect(sub, lambda r: r.header.get("event") == "deadline_missed")
    assert events(recs) == ["opened", "deadline_missed"]
