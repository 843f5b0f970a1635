"""Input during a generation (launch option `input_during_generation`): `interrupt` stops the reply at
a token boundary (keeping or taking back what was said), `interleave` feeds the input between two
tokens and generates on from both, `queue` waits; an `interrupt` message stops any generation."""

from __future__ import annotations

import numpy as np
import pytest
from nodekit import clients, collect, done_for, start_node

import edge_stream as es

LONG = 2000  # uncancelled, this greedy reply to 1 2 3 runs all of it (the tiny model never says its stop token)


@pytest.fixture(scope="module")
def node(lm_dir):
    base = {"dir": str(lm_dir), "publish_logits": "all", "max_new_tokens_cap": LONG}
    n = start_node([{**base, "name": "keep", "topics": ["keep"], "input_during_generation": "interrupt"},
                    {**base, "name": "drop", "topics": ["drop"], "input_during_generation": "interrupt",
                     "keep_partial_reply": False},
                    {**base, "name": "mix", "topics": ["mix"], "input_during_generation": "interleave"},
                    {**base, "name": "wait", "topics": ["wait"]}],
                   workers=2, stats_interval_s=0.2)
    yield n
    n.stop()


def fresh_logits(lm, ids) -> np.ndarray:
    return lm.open_stream().feed(np.asarray(ids, np.int64)).logits


def start_reply(pub, sub, stream: str, prompt, max_new: int = LONG) -> list:
    """Prompt, `end`, and the outputs up to the reply's first delta (generation has started)."""
    pub.send(prompt, stream=stream)
    pub.end(stream=stream, max_new_tokens=max_new, temperature=0.0)
    return collect(sub, lambda r: r.kind == "delta", timeout=20)


def test_interrupt_stops_the_reply_at_a_token_boundary_and_feeds_the_input_after_it(node, lm):
    pub, sub, _ = clients(node, "keep", ["out/k"])
    prompt, user = np.arange(1, 4), np.array([70, 71, 72])
    recs = start_reply(pub, sub, "k", prompt)
    pub.send(user, stream="k")
    recs += collect(sub, lambda r: r.kind == "fed" and r.header["n_tokens"] == 3, timeout=20)
    said = [r.header["token_id"] for r in recs if r.kind == "delta"]
    done, fed = recs[-2], recs[-1]
    assert done.kind == "done" and done.header["reason"] == "interrupted"
    assert done.header["n_tokens"] == len(said) < LONG // 10
    assert done.header["position"] == len(prompt) + len(said) and "rolled_back" not in done.header
    assert fed.header["position"] == len(prompt) + len(said) + 3
    expected = fresh_logits(lm, np.concatenate([prompt, said, user]))
    np.testing.assert_allclose(fed.data, expected[-3:], atol=1e-5, rtol=0)


def test_interrupt_without_keep_partial_reply_takes_the_said_tokens_back(node, lm):
    pub, sub, _ = clients(node, "drop", ["out/d"])
    prompt, user = np.arange(1, 4), np.array([70, 71])
    recs = start_reply(pub, sub, "d", prompt)
    pub.send(user, stream="d")
    recs += collect(sub, lambda r: r.kind == "fed" and r.header["n_tokens"] == 2, timeout=20)
    said = [r for r in recs if r.kind == "delta"]
    done, fed = recs[-2], recs[-1]
    assert done.header["reason"] == "interrupted" and done.header["n_tokens"] == len(said)
    assert done.header["rolled_back"] == len(said) and done.header["position"] == len(prompt)
    assert done.header["text"] == "".join(r.header["text"] for r in said)  # what the listener heard
    expected = fresh_logits(lm, np.concatenate([prompt, user]))
    np.testing.assert_allclose(fed.data, expected[-2:], atol=1e-5, rtol=0)


def test_interleave_feeds_the_input_between_two_tokens_and_generates_on_from_both(node, lm):
    pub, sub, _ = clients(node, "mix", ["out/x"])
    prompt, user, total = np.arange(1, 4), np.array([70, 71, 72]), 40
    recs = start_reply(pub, sub, "x", prompt, max_new=total)
    pub.send(user, stream="x")
    recs += collect(sub, done_for("x"), timeout=30)
    kinds = [r.kind for r in recs]
    at = kinds.index("fed", 1)  # the chunk's `fed`, among the deltas
    before = [r.header["token_id"] for r in recs[:at] if r.kind == "delta"]
    after = [r.header["token_id"] for r in recs[at:] if r.kind == "delta"]
    done = recs[-1].header
    # The reply runs to max_new_tokens, or (random weights) to a stop token the model chose after
    # the input: which one depends on where between two tokens the input landed.
    n = done["n_tokens"]
    assert after and len(before) + len(after) == n
    assert (done["reason"], n) == ("length", total) or (done["reason"] == "stop" and n < total), done
    assert [r.header["index"] for r in recs if r.kind == "delta"] == list(range(n))
    # The model saw prompt, its partial answer and the input in one cache, then answered on:
    ref = lm.open_stream()
    logits = ref.feed(np.concatenate([prompt, before, user])).logits
    np.testing.assert_allclose(recs[at].data, logits[-3:], atol=1e-5, rtol=0)
    assert [p.token_id for p in ref.generate(total - len(before))] == after and ref.finish_reason == done["reason"]
    assert done["position"] == ref.position


def test_queue_waits_for_the_reply_and_an_interrupt_message_stops_it(node):
    pub, sub, _ = clients(node, "wait", ["out/q"])
    recs = start_reply(pub, sub, "q", np.arange(1, 4), max_new=LONG)
    pub.send(np.array([5]), stream="q")  # queued behind the reply
    pub.interrupt(stream="q")  # acts now: the reply stops, then the queued chunk is fed
    recs += collect(sub, lambda r: r.kind == "fed" and r.header["n_tokens"] == 1, timeout=20)
    assert [r.kind for r in recs[-2:]] == ["done", "fed"]
    assert recs[-2].header["reason"] == "interrupted" and recs[-2].header["n_tokens"] < LONG // 10


def test_a_reset_during_a_reply_stops_it_and_acts_after_the_chunks_sent_before_it(node):
    pub, sub, _ = clients(node, "wait", ["out/order"])
    start_reply(pub, sub, "order", np.arange(1, 4), max_new=LONG)
    pub.send(np.array([5, 6]), stream="order")  # queued behind the reply (queue mode)
    pub.reset(stream="order")
    recs = collect(sub, lambda r: r.header.get("event") == "reset", timeout=20)
    tail = [(r.kind, r.header.get("reason") or r.header.get("event")) for r in recs if r.kind != "delta"]
    assert tail == [("done", "cancelled"), ("fed", None), ("event", "reset")]  # input order kept


def test_an_interrupt_with_nothing_generating_changes_nothing(node, lm):
    pub, sub, _ = clients(node, "wait", ["out/idle", "errors"])
    pub.interrupt(stream="idle")  # not even open: nothing to stop, no error
    pub.send(np.arange(1, 5), stream="idle")
    pub.interrupt(stream="idle")  # open, idle
    pub.send(np.array([9]), stream="idle")
    recs = collect(sub, lambda r: r.kind == "fed" and r.header["position"] == 5, timeout=20)
    assert [r.kind for r in recs] == ["fed", "fed"]
    np.testing.assert_allclose(recs[1].data, fresh_logits(lm, [1, 2, 3, 4, 9])[-1:], atol=1e-5, rtol=0)


def test_an_unknown_input_during_generation_mode_is_a_config_error(lm_dir):
    with pytest.raises(es.ConfigError, match="input_during_generation"):
        start_node([{"name": "lm", "dir": str(lm_dir), "topics": ["t"], "input_during_generation": "barge"}])


def test_speech_start_heard_by_the_vad_interrupts_a_chained_lm_that_is_speaking(vad_dir, lm_dir):
    """VAD gate -> recognizer (barge_in) -> LM, three nodes over loopback: the LM speaks a long reply on
    stream mic1; speech on mic1 reaches the recognizer, which forwards an `interrupt` before any word."""
    from pathlib import Path

    from nodekit import wait_subscribed

    from edge_stream.audio import read_wav
    from edge_stream.bench.common import free_port
    from edge_stream.node.client import Publisher, Subscriber
    from edge_stream.node.node import Node, make_node_config

    root = Path(__file__).resolve().parent.parent
    vad = start_node([{"name": "vad", "dir": str(vad_dir), "topics": ["mic"], "forward_topic": "speech",
                       "stream_options": {"threshold": 0.5, "min_silence_ms": 300.0, "speech_pad_ms": 100.0}}],
                     name="vad")
    nodes = [vad]
    try:
        rec = Node(make_node_config(
            name="recognizer", input={"connect": vad.endpoints["output"]}, output={"bind": ["tcp://127.0.0.1:*"]},
            models=[{"name": "recognizer", "dir": str(root / "models" / "command-recognizer"), "topics": ["speech"],
                     "forward_topic": "words", "barge_in": True}])).start()
        nodes.append(rec)
        direct = f"tcp://127.0.0.1:{free_port()}"  # where the prompt comes from, beside the chain
        lm = Node(make_node_config(
            name="lm", input={"connect": rec.endpoints["output"], "bind": [direct]},
            output={"bind": ["tcp://127.0.0.1:*"]},
            models=[{"name": "lm", "dir": str(lm_dir), "topics": ["words"], "max_new_tokens_cap": LONG}])).start()
        nodes.append(lm)
        sub = Subscriber(["out/mic1"], connect=lm.endpoints["output"])
        wait_subscribed(lm, sub)
        assert vad.wait_output_subscribed("speech") and rec.wait_output_subscribed("words"), "chain not subscribed"
        prompt = Publisher("words", connect=[direct])
        assert prompt.wait_ready(5.0)
        start_reply(prompt, sub, "mic1", np.arange(1, 4))
        mic = Publisher("mic", connect=vad.endpoints["input"])
        assert mic.wait_ready(5.0)
        pcm, sr = read_wav(root / "tests" / "data" / "commands" / "command_0.wav")
        audio = np.concatenate([pcm.astype(np.float32) / 32768.0, np.zeros(sr // 2, np.float32)])
        for i in range(0, len(audio), 1600):
            mic.send(audio[i:i + 1600], stream="mic1", sr=sr)
        recs = collect(sub, done_for("mic1"), timeout=20)
        done = recs[-1].header
        assert done["reason"] == "interrupted" and done["n_tokens"] < LONG // 10
        for c in (prompt, mic, sub):
            c.close()
    finally:
        for n in reversed(nodes):
            n.stop()
