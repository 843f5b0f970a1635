"""The node on real sockets (tcp and ipc on loopback) with the real Silero VAD.

Every wait is bounded (poll timeouts), so a failing test fails instead of hanging.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time

import msgpack
import numpy as np
import pytest
import zmq
from nodekit import (
    clients,
    collect,
    done_for,
    next_stats,
    random_chunks,
    runtime_vad,
    start_node,
    wait_subscribed,
)

from edge_stream.node import wire
from edge_stream.node.client import Control, Publisher, Subscriber
from edge_stream.node.config import Endpoints
from edge_stream.node.node import Node


def vad_models(vad_dir):
    return [{"name": "vad", "dir": str(vad_dir), "topics": ["mic"]}]


@pytest.fixture(scope="module", params=["tcp", "ipc"])
def vad_node(request, vad_dir):
    node = start_node(vad_models(vad_dir), transport=request.param, stats_interval_s=0.2,
                      max_payload_bytes=64 * 1024, max_streams=1000)
    yield node
    node.stop()


def reference(model, chunks) -> tuple[np.ndarray, list]:
    """What the runtime gives for these chunks fed directly: (all probs, events)."""
    probs, events = runtime_vad(model, chunks)
    return np.concatenate(probs), events


def node_outputs(recs, stream) -> tuple[np.ndarray, list]:
    mine = [r for r in recs if r.header.get("stream") == stream]
    probs = [r.data for r in mine if r.kind == "result"]
    events = [(r.header["event"], r.header["sample"]) for r in mine
              if r.kind == "event" and r.header["event"].startswith("speech")]
    return (np.concatenate(probs) if probs else np.zeros(0, np.float32)), events


_names = itertools.count()


def fresh(prefix: str) -> str:
    return f"{prefix}-{next(_names)}"


def test_concurrent_vad_streams_equal_the_runtime_on_the_same_chunks(vad_node, vad_model, speech):
    names = [fresh("vad") for _ in range(3)]
    pub, sub, _ = clients(vad_node, "mic", [f"out/{n}" for n in names])
    chunkings = {n: random_chunks(speech, seed=i) for i, n in enumerate(names)}
    for step in range(max(map(len, chunkings.values()))):  # interleave the streams chunk by chunk
        for n in names:
            if step < len(chunkings[n]):
                pub.send(chunkings[n][step], stream=n, sr=16000)
    for n in names:
        pub.end(stream=n)
    recs, pending = [], set(names)
    deadline = time.monotonic() + 20
    while pending and time.monotonic() < deadline:
        recs += collect(sub, lambda r: r.kind == "done", timeout=deadline - time.monotonic())
        pending -= {r.header["stream"] for r in recs if r.kind == "done"}
    assert not pending, f"no done for {pending}"
    for n in names:
        ref_probs, ref_events = reference(vad_model, chunkings[n])
        probs, events = node_outputs(recs, n)
        np.testing.assert_array_equal(probs, ref_probs)
        assert events == ref_events and any(e[0] == "speech_start" for e in events)
    results = [r for r in recs if r.kind == "result"]
    assert all(r.header["in_seq"] == i for n in names
               for i, r in enumerate(x for x in results if x.header["stream"] == n))
    assert all(r.header["infer_ms"] > 0 and r.header["t_pub_ns"] >= r.header["t_recv_ns"] for r in results)
    assert sub.gaps == 0


def test_int16_pcm_chunks_are_scaled_like_float(vad_node, vad_model, speech):
    name = fresh("pcm")
    pub, sub, _ = clients(vad_node, "mic", [f"out/{name}"])
    pcm = np.round(speech[:16000] * 32768).clip(-32768, 32767).astype(np.int16)
    pub.send_chunks(pcm, 1600, stream=name, sr=16000)
    pub.end(stream=name)
    probs, _ = node_outputs(collect(sub, done_for(name)), name)
    ref, _ = reference(vad_model, [c.astype(np.float32) / 32768 for c in np.split(pcm, 10)])
    np.testing.assert_array_equal(probs, ref)


def test_message_built_by_hand_from_the_protocol_document_is_accepted(vad_node):
    """Plain pyzmq + msgpack, as docs/protocol.md describes: XPUB readiness, NUL-ended topic, header, payload."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.XPUB)
    sock.linger = 0
    sock.setsockopt(zmq.XPUB_VERBOSE, 1)
    sock.connect(vad_node.endpoints["input"][0])
    sub = Subscriber(["out/by-hand"], connect=vad_node.endpoints["output"], ctx=ctx)
    try:
        wait_subscribed(vad_node, sub)
        assert sock.poll(5000), "no subscription from the node"
        assert sock.recv() == b"\x01mic\x00"
        samples = np.linspace(-0.5, 0.5, 1024, dtype="<f4")
        header = {"v": 1, "stream": "by-hand", "pub_id": os.urandom(8).hex(), "seq": 0, "kind": "chunk",
                  "t_pub_ns": time.time_ns(), "t_capture_ns": time.time_ns(), "dtype": "float32",
                  "shape": [1024], "sr": 16000}
        sock.send_multipart([b"mic\x00", msgpack.packb(header), samples.tobytes()])
        recs = collect(sub, lambda r: r.kind == "result")
        assert recs and recs[-1].kind == "result" and recs[-1].header["n_blocks"] == 2
        assert recs[-1].data.shape == (2,) and recs[-1].header["in_seq"] == 0
    finally:
        sub.close()
        sock.close()
        ctx.term()


def send_bad(pub: Publisher, stream: str, case: str):
    """Send one bad message of `case` on `stream`; returns (seq or None, expected code, reason part)."""
    seq = pub._next_seq(stream)
    h = {"v": 1, "stream": stream, "pub_id": pub.pub_id, "seq": seq, "kind": "chunk",
         "t_pub_ns": time.time_ns(), "dtype": "float32", "shape": [512], "sr": 16000}
    payload = np.zeros(512, "<f4").tobytes()
    topic = b"mic\x00"
    if case == "malformed msgpack":
        pub.seqs[stream] = itertools.count(seq)  # unreadable: the node never sees this seq
        pub.sock.send_multipart([topic, b"\x93\x01", payload])
        return None, "protocol", "not valid msgpack"
    if case == "unknown version":
        h["v"] = 9
        expect = ("protocol", "version 9")
    elif case == "missing field":
        del h["t_pub_ns"]
        expect = ("protocol", "'t_pub_ns' is missing")
    elif case == "dtype not whitelisted":
        h["dtype"] = "complex64"
        expect = ("protocol", "dtype 'complex64' is not allowed")
    elif case == "size != prod(shape) x itemsize":
        h["shape"] = [500]
        expect = ("protocol", "needs 2000")
    elif case == "NaN":
        payload = np.full(512, np.nan, "<f4").tobytes()
        expect = ("input", "NaN")
    elif case == "Inf":
        payload = np.full(512, np.inf, "<f4").tobytes()
        expect = ("input", "NaN or Inf")
    elif case == "wrong rank":
        h["shape"] = [2, 256]
        expect = ("input", "expected [n] or [1, n]")
    elif case == "oversize":
        h["shape"] = [32768]
        payload = bytes(4 * 32768)
        expect = ("protocol", "over the limit")
    elif case == "unknown kind":
        h["kind"] = "launch_missiles"
        expect = ("protocol", "kind 'launch_missiles'")
    elif case == "wrong sample rate":
        h["sr"] = 8000
        expect = ("input", "sr 8000 is not supported")
    elif case == "text to an audio model":
        h.pop("dtype"), h.pop("shape")
        h["text"] = "hello"
        payload = None
        expect = ("input", "not text")
    elif case == "int64 samples":
        h["dtype"] = "int64"
        payload = bytes(8 * 512)
        expect = ("input", "float32, int16")
    else:
        raise AssertionError(case)
    pub.sock.send_multipart([topic, msgpack.packb(h)] + ([payload] if payload is not None else []))
    return seq, *expect


BAD_CASES = ["malformed msgpack", "unknown version", "missing field", "dtype not whitelisted",
             "size != prod(shape) x itemsize", "NaN", "Inf", "wrong rank", "oversize", "unknown kind",
             "wrong sample rate", "text to an audio model", "int64 samples"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_gets_an_error_event_and_costs_no_stream_anything(vad_node, vad_model, speech, case):
    good, bad = fresh("good"), fresh("bad")
    pub, sub, _ = clients(vad_node, "mic", [f"out/{good}", f"out/{bad}", "errors"])
    chunks = random_chunks(speech[:32000], seed=7)
    half = len(chunks) // 2
    for c in chunks[:half]:
        pub.send(c, stream=good, sr=16000)
        pub.send(c, stream=bad, sr=16000)
    seq, code, reason = send_bad(pub, bad, case)
    for c in chunks[half:]:
        pub.send(c, stream=good, sr=16000)
        pub.send(c, stream=bad, sr=16000)
    pub.end(stream=good)
    pub.end(stream=bad)
    recs = []
    for _ in range(2):
        recs += collect(sub, lambda r: r.kind == "done", timeout=10)
    errors = [r for r in recs if r.kind == "error"]
    assert len(errors) == 1, [e.header for e in errors]
    err = errors[0].header
    assert err["code"] == code and reason in err["reason"]
    if seq is not None:  # readable header: the event names stream and seq
        assert (err["stream"], err["in_seq"], err["in_pub_id"]) == (bad, seq, pub.pub_id)
    ref_probs, ref_events = reference(vad_model, chunks)  # the bad message changed nothing
    for name in (good, bad):
        probs, events = node_outputs(recs, name)
        np.testing.assert_array_equal(probs, ref_probs)
        assert events == ref_events
    assert not any(r.kind == "event" and r.header["event"] == "gap" for r in recs)
    assert vad_node.running


def test_end_for_an_unknown_stream_is_an_error(vad_node):
    pub, sub, _ = clients(vad_node, "mic", ["errors"])
    pub.end(stream="never-opened")
    (err,) = collect(sub, lambda r: r.kind == "error")
    assert err.header["code"] == "unknown_stream" and err.header["stream"] == "never-opened"


def test_gap_publishes_an_event_and_the_stream_continues(vad_node, vad_model):
    name = fresh("gap")
    pub, sub, _ = clients(vad_node, "mic", [f"out/{name}"])
    x = np.zeros(512, np.float32)
    pub.send(x, stream=name)
    pub.send(x, stream=name)
    pub.seqs[name] = itertools.count(5)  # seqs 2, 3, 4 never sent
    pub.send(x, stream=name)
    pub.end(stream=name)
    recs = collect(sub, done_for(name))
    kinds = [(r.kind, r.header.get("event")) for r in recs]
    assert kinds == [("result", None), ("result", None), ("event", "gap"), ("result", None), ("done", None)]
    gap = recs[2].header
    assert (gap["expected"], gap["got"], gap["missing"], gap["policy"]) == (2, 5, 3, "event")
    assert recs[3].header["samples"] == 3 * 512  # continued: state kept


def test_duplicate_and_out_of_order_messages_are_dropped_with_an_error(vad_node):
    name = fresh("dup")
    pub, sub, _ = clients(vad_node, "mic", [f"out/{name}", "errors"])
    frames = wire.encode_input("mic", name, pub.pub_id, 0, "chunk", data=np.zeros(512, np.float32))
    frames1 = wire.encode_input("mic", name, pub.pub_id, 1, "chunk", data=np.zeros(512, np.float32))
    for f in (frames, frames1, frames1, frames):  # 0, 1, duplicate 1, out-of-order 0
        pub.sock.send_multipart(f)
    pub.seqs[name] = itertools.count(2)
    pub.end(stream=name)
    recs = collect(sub, done_for(name))
    assert [r.kind for r in recs if r.msg.topic != "errors"] == ["result", "result", "done"]
    errs = [r.header for r in recs if r.kind == "error"]
    assert [(e["code"], e["in_seq"]) for e in errs] == [("sequence", 1), ("sequence", 0)]
    assert "duplicate" in errs[0]["reason"] and "out-of-order" in errs[1]["reason"]


def test_a_restarted_publisher_is_visible_as_a_new_publisher(vad_node):
    name = fresh("restart")
    pub, sub, _ = clients(vad_node, "mic", [f"out/{name}"])
    pub.send(np.zeros(512, np.float32), stream=name)
    pub2 = Publisher("mic", connect=vad_node.endpoints["input"])
    assert pub2.wait_ready(5)
    pub2.send(np.zeros(512, np.float32), stream=name)  # seq 0 again, new pub_id: no duplicate error
    pub2.end(stream=name)
    recs = collect(sub, done_for(name))
    events = [r.header for r in recs if r.kind == "event"]
    assert [e["event"] for e in events] == ["new_publisher"] and events[0]["pub_id_seen"] == pub2.pub_id
    assert [r.kind for r in recs].count("result") == 2
    pub2.close()


def test_gap_policy_reset_restarts_the_stream(vad_dir, vad_model, speech):
    node = start_node(vad_models(vad_dir), gap_policy="reset", stats_interval_s=0.2)
    try:
        pub, sub, _ = clients(node, "mic", ["out/s"])
        chunks = random_chunks(speech[:24000], seed=3)
        pub.send(chunks[0], stream="s")
        pub.seqs["s"] = itertools.count(10)
        for c in chunks[1:]:
            pub.send(c, stream="s")
        pub.end(stream="s")
        recs = collect(sub, done_for("s"))
        events = [r.header["event"] for r in recs if r.kind == "event"]
        assert events[:2] == ["gap", "reset"]
        after = [r for r in recs if r.kind == "result"][1:]
        ref, _ = reference(vad_model, chunks[1:])  # a fresh stream fed only what came after the gap
        np.testing.assert_array_equal(np.concatenate([r.data for r in after]), ref)
    finally:
        node.stop()


def test_streams_past_max_streams_are_refused_until_one_closes(vad_dir):
    node = start_node(vad_models(vad_dir), max_streams=2, stats_interval_s=0.2)
    try:
        pub, sub, _ = clients(node, "mic", ["out/a", "out/b", "out/c", "errors"])
        x = np.zeros(512, np.float32)
        for s in "abc":
            pub.send(x, stream=s)
        recs = collect(sub, lambda r: r.kind == "error")
        assert recs[-1].header["code"] == "limit" and recs[-1].header["stream"] == "c"
        assert "max_streams=2" in recs[-1].header["reason"]
        pub.send(kind="close", stream="a")
        pub.send(x, stream="c")
        # Outputs of different streams come in any order: wait for both, whichever is first.
        want = {("a", "event", "closed"), ("c", "result", None)}
        got: set = set()
        collect(sub, lambda r: (got.add((r.header["stream"], r.kind, r.header.get("event"))) or want <= got))
        assert want <= got, f"after closing a, expected a's 'closed' and c served; got {sorted(got, key=str)}"
    finally:
        node.stop()


def test_idle_streams_are_evicted_after_the_ttl(vad_dir):
    node = start_node(vad_models(vad_dir), stream_ttl_s=0.3, stats_interval_s=0.1)
    try:
        pub, sub, ctl = clients(node, "mic", ["out/idle"])
        pub.send(np.zeros(512, np.float32), stream="idle")
        recs = collect(sub, lambda r: r.kind == "event", timeout=5)
        assert recs[-1].header["event"] == "closed" and recs[-1].header["reason"] == "ttl"
        assert "idle" not in ctl.request("status")["streams"]
    finally:
        node.stop()


def test_control_open_reset_close_and_refusals(vad_node):
    name = fresh("ctl")
    pub, sub, ctl = clients(vad_node, "mic", [f"out/{name}"])
    assert ctl.request("open", stream=name, model="vad", options={"threshold": 0.3})["ok"]
    assert not ctl.request("open", stream=name)["ok"]  # already open
    bad = ctl.request("open", stream=fresh("ctl"), options={"no_such_option": 1})
    assert not bad["ok"] and "no_such_option" in bad["error"]
    pub.send(np.zeros(1024, np.float32), stream=name)
    recs = collect(sub, lambda r: r.kind == "result")
    assert ctl.request("status")["streams"][name]["chunks"] == 1
    assert ctl.request("reset", stream=name)["ok"]
    rew = ctl.request("rewind", stream=name, n=1)
    assert not rew["ok"] and "rewind is not supported" in rew["error"]
    assert ctl.request("close", stream=name)["ok"]
    assert not ctl.request("reset", stream=name)["ok"]
    assert not ctl.request("explode")["ok"]
    recs += collect(sub, lambda r: r.header.get("event") == "closed")
    assert [(r.kind, r.header.get("event")) for r in recs] == [
        ("event", "opened"), ("result", None), ("event", "reset"), ("event", "closed")]


def test_stats_heartbeat_counts_chunks_errors_and_latency(vad_node):
    name = fresh("stats")
    pub, sub, _ = clients(vad_node, "mic", ["stats"])
    before = next_stats(sub)
    for _ in range(5):
        pub.send(np.zeros(512, np.float32), stream=name)
    pub.send(np.full(4, np.nan, np.float32), stream=name)
    h = next_stats(sub, until=lambda h: h["chunks_in"] >= before["chunks_in"] + 5 and h["latency_ms"]["node_ms"]["n"])
    assert h["ready"] and h["errors"] >= before["errors"] + 1 and h["streams_open"] >= 1
    assert h["latency_ms"]["infer_ms"]["p50"] > 0 and len(h["queue_depths"]) == 1


def test_stats_percentiles_equal_numpys_linear_percentiles():
    from edge_stream.node.worker import Stats

    rng = np.random.default_rng(3)
    for n in (1, 2, 7, 1000):
        stats = Stats()
        vals = rng.exponential(size=n)
        stats.samples["node_ms"].extend(vals)
        lat = stats.latency()
        assert lat["node_ms"] == {"p50": round(float(np.percentile(vals, 50)), 4),
                                  "p99": round(float(np.percentile(vals, 99)), 4), "n": n}
        assert lat["queue_ms"] == {"p50": None, "p99": None, "n": 0}
        assert stats.latency()["node_ms"]["n"] == 0, "samples are per interval"


def test_frames_over_max_message_bytes_drop_the_sender_not_the_node(vad_dir, vad_model):
    node = start_node(vad_models(vad_dir), max_message_bytes=64 * 1024, stats_interval_s=0.2)
    try:
        pub, sub, _ = clients(node, "mic", ["out/ok"])
        rogue = Publisher("mic", connect=node.endpoints["input"])
        assert rogue.wait_ready(5)
        rogue.send(np.zeros(100_000, np.float32), stream="rogue")  # 400 kB frame > MAXMSGSIZE
        x = np.zeros(512, np.float32)
        for _ in range(3):
            pub.send(x, stream="ok")
        pub.end(stream="ok")
        recs = collect(sub, done_for("ok"))
        assert [r.kind for r in recs] == ["result"] * 3 + ["done"]
        assert "rogue" not in Control(node.endpoints["control"]).request("status")["streams"]
        rogue.close()
    finally:
        node.stop()


def test_stop_with_work_queued_leaves_nothing_behind_and_frees_the_endpoints(vad_dir):
    node = start_node(vad_models(vad_dir))
    pub = Publisher("mic", connect=node.endpoints["input"])
    assert pub.wait_ready(5)
    for i in range(200):  # more than the worker gets through before stop: queued work is abandoned
        pub.send(np.zeros(2048, np.float32), stream=f"s{i % 4}")
    node.stop()
    assert not node.running and node.workers and not any(w.is_alive() for w in node.workers)
    assert all(s.closed for s in (node.sub, node.pub, node.ctl, node.replies)) and node.ctx.closed
    pub.close()
    # The same endpoints bind again at once (nothing of the old node holds them) and serve.
    again = Node(dataclasses.replace(node.cfg, input=Endpoints(bind=tuple(node.endpoints["input"])),
                                     output=Endpoints(bind=tuple(node.endpoints["output"])),
                                     control=Endpoints(bind=tuple(node.endpoints["control"])))).start()
    try:
        pub, sub, _ = clients(again, "mic", ["out/after"])
        pub.send(np.zeros(512, np.float32), stream="after")
        assert [r.kind for r in collect(sub, lambda r: True)] == ["result"]
        pub.close()
        sub.close()
    finally:
        again.stop()
