"""A causal LM and the VAD served by one node: outputs equal the runtime run directly,
generation deltas, barge-in, rewind, bad token input, and drops at a slow subscriber."""

from __future__ import annotations

import time

import numpy as np
import pytest
from nodekit import clients, collect, done_for, next_stats, start_node, wait_subscribed

import edge_stream as es
from edge_stream.node.client import Subscriber

GEN = 8


@pytest.fixture(scope="module")
def node(lm_dir, vad_dir):
    n = start_node([{"name": "lm", "dir": str(lm_dir), "topics": ["chat"], "publish_logits": "all",
                     "max_new_tokens": GEN},
                    {"name": "vad", "dir": str(vad_dir), "topics": ["mic"]},
                    {"name": "asker", "dir": str(lm_dir), "topics": ["ask"], "trigger": "suffix",
                     "trigger_suffix": "?", "max_new_tokens": 3}],
                   workers=2, stats_interval_s=0.2)
    yield n
    n.stop()


def direct_lm(lm, chunks, gen=GEN):
    """(per-chunk logits, generated token ids, text) from the runtime on the same chunks."""
    s = lm.open_stream()
    logits = [s.feed(lm.encode(c) if isinstance(c, str) else c).logits for c in chunks]
    pieces = list(s.generate(max_new_tokens=gen, temperature=0.0))
    return logits, [p.token_id for p in pieces], "".join(p.text for p in pieces)


def test_lm_and_vad_streams_through_one_node_equal_the_runtime(node, lm, vad_dir):
    rng = np.random.default_rng(0)
    id_chunks = [rng.integers(1, 512, size=n).astype(np.int64) for n in (5, 1, 9, 3)]
    text_chunks = ["the robot ", "turns left", " and stops"]
    audio = (np.sin(np.arange(16000) / 5) * 0.3).astype(np.float32)
    chat, sub_chat, _ = clients(node, "chat", ["out/ids", "out/text", "out/mic"])
    mic, _, _ = clients(node, "mic", [])
    for i in range(4):  # interleave the three streams
        chat.send(id_chunks[i], stream="ids")
        if i < len(text_chunks):
            chat.send(text=text_chunks[i], stream="text")
        mic.send(audio[i * 4000:(i + 1) * 4000], stream="mic", sr=16000)
    chat.end(stream="ids")
    chat.end(stream="text")
    mic.end(stream="mic")
    recs, want = [], {"ids", "text", "mic"}
    deadline = time.monotonic() + 30
    while want and time.monotonic() < deadline:
        recs += collect(sub_chat, lambda r: r.kind == "done", timeout=deadline - time.monotonic())
        want -= {r.header["stream"] for r in recs if r.kind == "done"}
    assert not want
    for stream, chunks in (("ids", id_chunks), ("text", text_chunks)):
        ref_logits, ref_ids, ref_text = direct_lm(lm, chunks)
        mine = [r for r in recs if r.header["stream"] == stream]
        fed = [r for r in mine if r.kind == "fed"]
        assert len(fed) == len(chunks)
        for r, ref in zip(fed, ref_logits):
            np.testing.assert_allclose(r.data, ref, rtol=0, atol=1e-5)
        deltas = [r.header for r in mine if r.kind == "delta"]
        assert [d["token_id"] for d in deltas] == ref_ids and [d["index"] for d in deltas] == list(range(len(ref_ids)))
        done = mine[-1].header
        assert done["text"] == ref_text == "".join(d["text"] for d in deltas)
        assert done["n_tokens"] == len(ref_ids) and done["reason"] in ("length", "stop")
    vad = es.load(vad_dir, intra_op_threads=1).open_stream()
    ref_probs = np.concatenate([vad.feed(audio[i * 4000:(i + 1) * 4000]).probs for i in range(4)])
    probs = np.concatenate([r.data for r in recs if r.header["stream"] == "mic" and r.kind == "result"])
    np.testing.assert_array_equal(probs, ref_probs)


def test_generation_fields_on_end_override_the_node_defaults(node):
    pub, sub, _ = clients(node, "chat", ["out/short", "errors"])
    pub.send(np.arange(1, 6, dtype=np.int64), stream="short")
    pub.end(stream="short", max_new_tokens=3, temperature=0.0)
    recs = collect(sub, done_for("short"))
    assert [r.kind for r in recs] == ["fed", "delta", "delta", "delta", "done"]
    assert recs[-1].header["reason"] == "length"
    pub.end(stream="short", temperature="hot")
    (err,) = collect(sub, lambda r: r.kind == "error")
    assert err.header["code"] == "input" and "temperature" in err.header["reason"]


def test_text_ending_with_the_trigger_suffix_starts_generation(node):
    pub, sub, _ = clients(node, "ask", ["out/q"])
    pub.send(text="where is the door", stream="q")
    pub.send(text="?", stream="q")
    recs = collect(sub, done_for("q"))
    assert [r.kind for r in recs] == ["fed", "fed", "delta", "delta", "delta", "done"]


def test_token_outside_the_vocabulary_is_rejected_and_the_stream_unchanged(node, lm):
    pub, sub, _ = clients(node, "chat", ["out/vocab", "errors"])
    good = [np.array([3, 4, 5], np.int64), np.array([6, 7], np.int64)]
    pub.send(good[0], stream="vocab")
    seq = pub.send(np.array([8, 100000], np.int64), stream="vocab")
    pub.send(good[1], stream="vocab")
    pub.end(stream="vocab")
    recs = collect(sub, done_for("vocab"), timeout=10)
    (err,) = [r.header for r in recs if r.kind == "error"]
    assert (err["code"], err["stream"], err["in_seq"]) == ("input", "vocab", seq)
    assert "outside the vocabulary" in err["reason"]
    ref_logits, ref_ids, _ = direct_lm(lm, good)
    fed = [r for r in recs if r.kind == "fed"]
    np.testing.assert_allclose(fed[1].data, ref_logits[1], atol=1e-5)
    assert [r.header["token_id"] for r in recs if r.kind == "delta"] == ref_ids


def test_rewind_control_drops_the_last_tokens(node, lm):
    pub, sub, ctl = clients(node, "chat", ["out/rw"])
    ids = np.arange(10, 16, dtype=np.int64)
    pub.send(ids, stream="rw")
    collect(sub, lambda r: r.kind == "fed")
    reply = ctl.request("rewind", stream="rw", n=2)
    assert reply["ok"] and reply["position"] == 4
    pub.send(np.array([40, 41], np.int64), stream="rw")
    recs = collect(sub, lambda r: r.kind == "fed")
    ref, _, _ = direct_lm(lm, [ids[:4], np.array([40, 41], np.int64)], gen=0)
    np.testing.assert_allclose(recs[-1].data, ref[1], atol=1e-5)
    assert recs[-1].header["position"] == 6


def test_reset_cancels_a_generation_in_progress(node):
    """A reset arriving mid-generation ends it with done(reason=cancelled) long before
    max_new_tokens; the stream then resets. Uncancelled, this greedy generation runs all 2000
    tokens (the tiny model never emits its stop token here); cancelled, it stops within the few
    tokens generated while the reset travels to the worker."""
    max_new = 2000
    pub, sub, _ = clients(node, "chat", ["out/barge"])
    pub.send(np.arange(1, 4, dtype=np.int64), stream="barge")
    pub.end(stream="barge", max_new_tokens=max_new, temperature=0.0)
    recs = collect(sub, lambda r: r.kind == "delta")  # generation has started
    pub.reset(stream="barge")
    recs += collect(sub, lambda r: r.header.get("event") == "reset", timeout=10)
    kinds = [(r.kind, r.header.get("event")) for r in recs]
    assert kinds[-2:] == [("done", None), ("event", "reset")], kinds[-5:]
    assert recs[-2].header["reason"] == "cancelled"
    deltas = [r.header["index"] for r in recs if r.kind == "delta"]
    assert deltas == list(range(len(deltas)))  # every delta seen: the count below is the real one
    assert len(deltas) < max_new // 10, f"{len(deltas)} of {max_new} tokens generated before the cancel"


def test_a_subscriber_that_stops_reading_costs_drops_not_a_stall(lm_dir):
    """At a small HWM, outputs to a full subscriber are dropped for it alone (no XPUB_NODROP), its
    client counts them from the jump in seq, and the node keeps serving a controller that reads."""
    # The HWM is per subscriber pipe: small enough that the stuck reader's 16 MB overflow it at
    # once, large enough that the reading controller's burst (fed, deltas, done) fits while its
    # thread waits for a core on a loaded machine (at 2 the burst itself was dropped now and then).
    node = start_node([{"name": "lm", "dir": str(lm_dir), "topics": ["chat"], "publish_logits": "all"}],
                      sndhwm=32, stats_interval_s=0.2)
    try:
        pub, sub, _ = clients(node, "chat", ["out/fast"])
        stuck = Subscriber(["out/slow", "stats"])  # queue options apply to connections made after they are set
        stuck.sock.rcvhwm = 1
        stuck.sock.setsockopt(__import__("zmq").RCVBUF, 4096)
        stuck.sock.connect(node.endpoints["output"][0])
        wait_subscribed(node, stuck)  # its subscription to out/slow has reached the node
        chunk = np.arange(1, 200, dtype=np.int64)
        for _ in range(40):  # 40 x 200 x 512 x 4 bytes = 16 MB of logits for a reader that never reads
            pub.send(chunk[:100], stream="slow")
            pub.send(chunk[:100], stream="slow")
            pub.reset(stream="slow")
        pub.send(np.array([1, 2, 3], np.int64), stream="fast")
        pub.end(stream="fast", max_new_tokens=2)
        recs = collect(sub, done_for("fast"), timeout=20)
        assert recs and recs[-1].kind == "done"
        # The fast stream is served while the slow one still runs: wait (not reading `stuck`) until all
        # 120 went out. Then the stuck reader reads at last: its queue, up to a heartbeat sent after
        # that; a later output (seq 120) then shows it the loss before it.
        watcher = Subscriber(["stats"], connect=node.endpoints["output"])
        assert next_stats(watcher, timeout=30, until=lambda h: h["outputs_out"] >= 124)
        watcher.close()
        assert next_stats(stuck, timeout=30, until=lambda h: h["outputs_out"] >= 124)
        pub.send(chunk[:10], stream="slow")
        late = collect(stuck, lambda r: r.header.get("seq") == 120, timeout=20)
        assert late and late[-1].header["seq"] == 120 and stuck.gaps > 0
        stuck.close()
    finally:
        node.stop()
