"""Issue 13, sections 1, 3 and 6: no input kills part of the node, a stream's outputs keep input
order and one numbering for the node's life, and every request field is bounded. Real node,
real ZeroMQ sockets on loopback, real ONNX Runtime sessions."""

from __future__ import annotations

import itertools
import threading

import msgpack
import numpy as np
import pytest
from nodekit import clients, collect, done_for, next_stats, random_chunks, runtime_vad, start_node

from edge_stream.cli.node import EXIT_THREAD_DIED, supervise
from edge_stream.errors import ConfigError, ProtocolError
from edge_stream.node import wire
from edge_stream.node.client import Subscriber
from edge_stream.node.config import launch_from_dict
from edge_stream.node.node import STATUS_MAX_STREAMS
from edge_stream.node.worker import STOP

_names = itertools.count()


def fresh(prefix: str) -> str:
    return f"{prefix}-{next(_names)}"


@pytest.fixture(scope="module")
def node(lm_dir, vad_dir):
    """An LM and two VAD routes (the second for wrong-model tests), two workers."""
    n = start_node([{"name": "lm", "dir": str(lm_dir), "topics": ["chat"], "max_new_tokens": 4,
                     "max_new_tokens_cap": 16},
                    {"name": "vad", "dir": str(vad_dir), "topics": ["mic"]},
                    {"name": "vad2", "dir": str(vad_dir), "topics": ["mic2"]}],
                   workers=2, stats_interval_s=0.2, max_streams=1000, gap_policy="reset")
    yield n
    n.stop()


def header(pub, stream: str, seq: int, **fields) -> dict:
    h = {"v": 1, "stream": stream, "pub_id": pub.pub_id, "seq": seq, "kind": "chunk", "t_pub_ns": wire.now_ns()}
    h.update(fields)
    return h


def errors_of(recs) -> list[dict]:
    return [r.header for r in recs if r.kind == "error"]


# ----- section 1: inputs that killed part of the node ---------------------------------------------


@pytest.mark.parametrize("dtype", [["float32"], {"name": "float32"}])
def test_dtype_given_as_a_list_or_map_is_a_protocol_error_and_the_stream_goes_on(node, dtype):
    name = fresh("dtype")
    pub, sub, _ = clients(node, "mic", [f"out/{name}", "errors"])
    x = np.zeros(512, "<f4")
    pub.send(x, stream=name, sr=16000)  # seq 0
    bad = header(pub, name, pub._next_seq(name), dtype=dtype, shape=[512], sr=16000)  # seq 1
    pub.sock.send_multipart([b"mic\x00", msgpack.packb(bad), x.tobytes()])
    pub.send(x, stream=name, sr=16000)  # seq 2: served, and no gap
    pub.end(stream=name)
    recs = collect(sub, done_for(name))
    (err,) = errors_of(recs)
    assert (err["code"], err["stream"], err["in_seq"]) == ("protocol", name, 1) and "dtype" in err["reason"]
    assert [r.kind for r in recs if r.kind != "error"] == ["result", "result", "done"]
    assert node.running and not node.dead_threads()


def test_control_open_with_a_bad_model_or_option_types_is_refused_and_the_loop_carries_on(node):
    ctl = clients(node, "mic", [])[2]
    cases = [({"model": ["vad"]}, "field 'model' must be a string"),
             ({"model": {"vad": 1}}, "field 'model' must be a string"),
             ({"model": "vad", "options": {"threshold": "high"}}, "threshold: expected float, got str 'high'"),
             ({"model": "vad", "options": {"min_silence_ms": [1]}}, "min_silence_ms: expected float"),
             ({"model": "lm", "options": {"kv_window": "big"}}, "kv_window: expected int, got str 'big'"),
             ({"model": "lm", "options": {"sink_tokens": 1.5}}, "sink_tokens: expected int"),
             ({"model": "vad", "options": [1]}, "'options' must be a map")]
    for fields, reason in cases:
        stream = fresh("opt")
        reply = ctl.request("open", stream=stream, **fields)
        assert not reply["ok"] and reason in reply["error"], (fields, reply)
        assert stream not in ctl.request("status")["streams"]  # refused: nothing was opened
    good = fresh("opt")
    assert ctl.request("open", stream=good, model="vad", options={"threshold": 0.4})["ok"]
    assert node.running and not node.dead_threads()


def test_a_stream_name_too_long_for_the_output_topic_is_refused_at_the_wire(node):
    """out/ + 124 characters is the longest output topic (128); 125 was accepted and then killed
    the worker's publish, starving every stream on that worker."""
    longest, too_long = "a" * 124, "b" * 125
    pub, sub, ctl = clients(node, "mic", [f"out/{longest}", "errors"])
    pub.send(np.zeros(512, np.float32), stream=too_long, sr=16000)
    pub.send(np.zeros(512, np.float32), stream=longest, sr=16000)
    got: dict = {}
    collect(sub, lambda r: (got.setdefault(r.kind, r.header), {"error", "result"} <= set(got))[1])
    assert got["error"]["code"] == "protocol" and "1-124 characters" in got["error"]["reason"]
    assert got["result"]["stream"] == longest
    for bad in ("c" * 125, "c" * 200, "new\nline", ""):
        reply = ctl.request("open", stream=bad, model="vad")
        assert not reply["ok"] and "printable string of 1-124" in reply["error"], reply
    assert not node.dead_threads()


def test_stats_report_each_workers_liveness(node):
    stats = Subscriber(["stats"], connect=node.endpoints["output"])
    try:
        h = next_stats(stats)
        assert len(h["workers"]) == 2
        for w in h["workers"]:
            assert w["alive"] is True and w["queue_depth"] >= 0
            assert 0 <= w["last_beat_s"] < 3.0  # an idle worker still beats (about once a second)
    finally:
        stats.close()


def test_a_dead_worker_shows_in_stats_and_makes_the_supervisor_exit_non_zero(vad_dir):
    n = start_node([{"name": "vad", "dir": str(vad_dir), "topics": ["mic"]}], workers=2, stats_interval_s=0.1)
    stats = Subscriber(["stats"], connect=n.endpoints["output"])
    try:
        assert supervise([n], _set_after(0.3), interval_s=0.05) == 0  # healthy: runs until stopped
        n.workers[1].jobs.put(STOP)  # the worker thread really ends, as an escaped exception would end it
        n.workers[1].join(5)
        assert n.dead_threads() == [n.workers[1].name]
        assert supervise([n], threading.Event(), interval_s=0.05) == EXIT_THREAD_DIED
        h = next_stats(stats, until=lambda h: not h["workers"][1]["alive"])
        assert h["workers"][0]["alive"]
    finally:
        stats.close()
        n.stop()


def _set_after(seconds: float) -> threading.Event:
    ev = threading.Event()
    threading.Timer(seconds, ev.set).start()
    return ev


# ----- section 3: sequence and order --------------------------------------------------------------


@pytest.mark.parametrize("case", ["wrong_model", "unknown_topic"])
def test_a_rejected_message_counts_towards_the_publishers_seq(node, vad_model, speech, case):
    """Under gap_policy = reset, a spurious gap after the rejection would reset a valid stream."""
    name = fresh(case)
    pub, sub, _ = clients(node, "mic", [f"out/{name}", "errors"])
    chunks = random_chunks(speech[:16000], seed=5)
    pub.send(chunks[0], stream=name, sr=16000)
    x = np.zeros(512, "<f4")
    topic = b"mic2\x00" if case == "wrong_model" else b"mic\x00x\x00"  # the latter passes the "mic\0" filter
    bad = header(pub, name, pub._next_seq(name), dtype="float32", shape=[512], sr=16000)
    pub.sock.send_multipart([topic, msgpack.packb(bad), x.tobytes()])
    for c in chunks[1:]:
        pub.send(c, stream=name, sr=16000)
    pub.end(stream=name)
    recs = collect(sub, done_for(name))
    (err,) = errors_of(recs)
    assert (err["code"], err["in_seq"]) == (case, 1)
    assert not [r for r in recs if r.kind == "event" and r.header["event"] in ("gap", "reset")]
    probs, _ = runtime_vad(vad_model, chunks)  # the stream was never reset
    np.testing.assert_array_equal(np.concatenate([r.data for r in recs if r.kind == "result"]),
                                  np.concatenate(probs))


def test_close_then_reopen_keeps_input_order_and_one_output_numbering(node, speech):
    """The old stream's speech events and `closed` come before the reopened stream's results, and
    output seq continues across the reopen instead of restarting at 0."""
    name = fresh("reopen")
    pub, sub, _ = clients(node, "mic", [f"out/{name}"])
    chunks = random_chunks(speech[:48000], seed=11, sizes=(4000, 8000))
    for c in chunks[:4]:
        pub.send(c, stream=name, sr=16000)
    close_seq = pub.send(stream=name, kind="close")
    for c in chunks[4:]:
        pub.send(c, stream=name, sr=16000)
    pub.end(stream=name)
    recs = collect(sub, done_for(name), timeout=10)
    assert recs and recs[-1].kind == "done"
    kinds = [(r.kind, r.header.get("event")) for r in recs]
    closed = kinds.index(("event", "closed"))
    assert ("event", "speech_start") in kinds[:closed], kinds  # the old stream had events in flight
    assert all(r.header["in_seq"] < close_seq for r in recs[:closed])
    assert all(r.header["in_seq"] > close_seq for r in recs[closed + 1:])
    assert [r.header["in_seq"] for r in recs] == sorted(r.header["in_seq"] for r in recs)
    assert [r.header["seq"] for r in recs] == list(range(len(recs)))


def test_output_seq_continues_after_ttl_eviction(vad_dir):
    n = start_node([{"name": "vad", "dir": str(vad_dir), "topics": ["mic"]}], stream_ttl_s=0.3,
                   stats_interval_s=0.1)
    try:
        pub, sub, _ = clients(n, "mic", ["out/idle"])
        pub.send(np.zeros(512, np.float32), stream="idle", sr=16000)
        recs = collect(sub, lambda r: r.header.get("event") == "closed")
        pub.send(np.zeros(512, np.float32), stream="idle", sr=16000)
        recs += collect(sub, lambda r: r.kind == "result")
        assert [(r.kind, r.header["seq"]) for r in recs] == [("result", 0), ("event", 1), ("result", 2)]
        assert recs[1].header["reason"] == "ttl" and recs[2].gap == 0
    finally:
        n.stop()


# ----- section 6: limits and types ----------------------------------------------------------------


def lm_end_case(node, **end_fields):
    """(error event or None, done header) for a stream fed 3 ids and ended with `end_fields`,
    then ended again with max_new_tokens=2 (the stream must still work)."""
    name = fresh("gen")
    pub, sub, _ = clients(node, "chat", [f"out/{name}", "errors"])
    pub.send(np.array([5, 6, 7], np.int64), stream=name)
    pub.end(stream=name, **end_fields)
    pub.end(stream=name, max_new_tokens=2)
    recs = collect(sub, done_for(name), timeout=10)
    errs = errors_of(recs)
    return (errs[0] if errs else None), recs[-1].header


@pytest.mark.parametrize("fields, reason", [
    ({"max_new_tokens": 2**62}, "over this model's max_new_tokens_cap of 16"),
    ({"max_new_tokens": 17}, "max_new_tokens_cap"),
    ({"max_new_tokens": -1}, "max_new_tokens: expected >= 0"),
    ({"seed": -1}, "seed: expected 0 <= seed"),
    ({"temperature": 1e-310}, "temperature: expected 0 (greedy) or a finite value"),
    ({"temperature": float("nan")}, "temperature"),
    ({"temperature": float("inf")}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_k": -3}, "top_k"),
])
def test_generation_fields_out_of_bounds_are_input_errors_and_the_stream_goes_on(node, fields, reason):
    err, done = lm_end_case(node, **fields)
    assert err is not None and err["code"] == "input" and reason in err["reason"], err
    assert done["kind"] == "done" and done["n_tokens"] <= 2 and done["position"] >= 3


def test_generation_at_the_cap_is_served(node):
    err, done = lm_end_case(node, max_new_tokens=16, temperature=0.7, seed=2**64 - 1)
    assert err is None and done["kind"] == "done"


@pytest.mark.parametrize("dtype", [np.uint8, np.int16])
def test_token_ids_of_other_int_types_are_input_errors(node, lm_dir, dtype):
    name = fresh("ids")
    pub, sub, _ = clients(node, "chat", [f"out/{name}", "errors"])
    pub.send(np.array([5, 6, 7], dtype), stream=name)
    pub.send(np.array([5, 6, 7], np.int32), stream=name)
    recs = collect(sub, lambda r: r.kind == "fed")
    (err,) = errors_of(recs)
    assert err["code"] == "input" and "int64 or int32" in err["reason"]
    assert recs[-1].header["position"] == 3  # the rejected chunk left the stream unchanged


def test_empty_bin_values_in_headers_are_rejected(node):
    name = fresh("bin")
    pub, sub, _ = clients(node, "mic", [f"out/{name}", "errors"])
    x = np.zeros(512, "<f4")
    for extra in ({"note": b""}, {"note": [b""]}, {"nested": {"k": b""}}):
        h = header(pub, name, pub._next_seq(name), dtype="float32", shape=[512], sr=16000, **extra)
        pub.sock.send_multipart([b"mic\x00", msgpack.packb(h, use_bin_type=True), x.tobytes()])
    pub.send(x, stream=name, sr=16000)
    recs = collect(sub, lambda r: r.kind == "result")
    errs = errors_of(recs)
    assert [e["code"] for e in errs] == ["protocol"] * 3 and all("bin" in e["reason"] for e in errs)
    assert recs[-1].kind == "result" and recs[-1].header["in_seq"] == 3


def test_status_with_many_streams_is_paginated_and_fits_a_reply(node):
    names = {("s" * 110) + f"-{i:05d}" for i in range(300)}  # long names: the old reply would be ~50 KiB
    pub, _, ctl = clients(node, "mic", [])
    for name in names:
        pub.send(np.zeros(512, np.float32), stream=name, sr=16000)
    for _ in range(100):  # the loop opens them as the chunks arrive
        first = ctl.request("status")
        if first["streams_open"] >= len(names):
            break
    assert first["streams_open"] >= len(names) and len(first["streams"]) == STATUS_MAX_STREAMS
    seen, offset = set(), 0
    while offset < first["streams_open"]:
        page = ctl.request("status", offset=offset, limit=50)
        assert page["ok"] and len(wire.pack(page)) < 16 * 1024
        seen |= set(page["streams"])
        offset += 50
    assert names <= seen
    bad = ctl.request("status", limit=STATUS_MAX_STREAMS + 1)
    assert not bad["ok"] and "limit" in bad["error"]
    for name in names:
        pub.send(stream=name, kind="close")


def test_wire_rejects_bin_values_and_non_string_dtypes():
    base = {"v": 1, "stream": "s", "pub_id": "p", "seq": 0, "kind": "chunk", "t_pub_ns": 1,
            "dtype": "float32", "shape": [1]}
    payload = np.zeros(1, "<f4").tobytes()
    for change in ({"x": b""}, {b"": 1}, {"dtype": ["float32"]}, {"dtype": {"a": 1}}, {"dtype": None}):
        h = {**base, **change}
        with pytest.raises(ProtocolError):
            wire.decode_input([b"mic\x00", msgpack.packb(h, use_bin_type=True), payload])
    deep = 1
    for _ in range(900):  # deeper than a recursive check could walk; msgpack itself allows it
        deep = [deep]
    wire.decode_input([b"mic\x00", msgpack.packb({**base, "deep": deep}), payload])
    with pytest.raises(ProtocolError, match="1-10 characters"):
        wire.decode_input([b"mic\x00", msgpack.packb({**base, "stream": "x" * 11}), payload],
                          wire.Limits(max_stream_chars=10))


@pytest.mark.parametrize("change, reason", [
    ({"max_new_tokens": 64, "max_new_tokens_cap": 32}, "max_new_tokens_cap: must be >= max_new_tokens"),
    ({"seed": -1}, "seed: expected 0 <= seed"),
    ({"topics": ["t" * 129]}, "topics: topic: expected a printable string of 1-128"),
    ({"topics": ["a\tb"]}, "topics: topic"),
    ({"forward_topic": "f" * 129}, "forward_topic"),
])
def test_launch_file_bounds_model_fields(change, reason):
    model = {"name": "m", "dir": "x", "topics": ["t"], **change}
    node = {"name": "n", "input": {"bind": ["tcp://*:1"]}, "output": {"bind": ["tcp://*:2"]}, "models": [model]}
    with pytest.raises(ConfigError, match=reason.replace("(", r"\(")):
        launch_from_dict({"node": [node]})


@pytest.mark.parametrize("change, reason", [
    ({"output_topic": "out/{stream}/{x}"}, "only '{stream}' may appear in braces"),
    ({"output_topic": "o" * 128 + "{stream}"}, "output_topic"),
    ({"errors_topic": "e" * 129}, "errors_topic"),
    ({"stats_topic": ""}, "stats_topic"),
])
def test_launch_file_topics_obey_the_wire_name_rule(change, reason):
    node = {"name": "n", "input": {"bind": ["tcp://*:1"]}, "output": {"bind": ["tcp://*:2"]},
            "models": [{"name": "m", "dir": "x", "topics": ["t"]}], **change}
    with pytest.raises(ConfigError, match=reason.replace("{", r"\{").replace("}", r"\}")):
        launch_from_dict({"node": [node]})
