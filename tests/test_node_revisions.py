"""Revisions through a node (docs/protocol.md, "Revisions"): `replace_last` on token and text chunks,
`revise` text chunks fed as the difference from what the utterance fed, `retract` naming the first
void output, and refusals that leave the stream as it was."""

from __future__ import annotations

import numpy as np
import pytest
from nodekit import clients, collect, done_for, start_node


GEN = 4


@pytest.fixture(scope="module")
def node(lm_dir, vad_dir):
    n = start_node([{"name": "lm", "dir": str(lm_dir), "topics": ["chat"], "publish_logits": "all",
                     "max_new_tokens": GEN},
                    {"name": "win", "dir": str(lm_dir), "topics": ["win"], "publish_logits": "last",
                     "stream_options": {"kv_window": 8, "sink_tokens": 2}},
                    {"name": "vad", "dir": str(vad_dir), "topics": ["mic"]}],
                   workers=2, stats_interval_s=0.2)
    yield n
    n.stop()


def fresh(lm, ids, gen=GEN):
    """(logits, greedy token ids) of a fresh runtime stream fed `ids` in one chunk."""
    s = lm.open_stream()
    logits = s.feed(np.asarray(ids, np.int64)).logits
    return logits, [p.token_id for p in s.generate(gen)]


def test_replace_last_revises_the_newest_tokens_and_retracts_what_derived_from_them(node, lm):
    pub, sub, _ = clients(node, "chat", ["out/tok"])
    a, b, c = np.arange(10, 20), np.arange(30, 35), np.array([7, 8, 9])
    pub.send(a, stream="tok")
    pub.send(b, stream="tok")
    pub.send(c, stream="tok", replace_last=3)  # replaces b's last 3: b's `fed` is void, a's is not
    pub.end(stream="tok")
    recs = collect(sub, done_for("tok"), timeout=20)
    kinds = [r.kind for r in recs]
    assert kinds[:4] == ["fed", "fed", "retract", "fed"], kinds
    _, fed_b, retract, fed_c = recs[:4]
    assert retract.header["first_seq"] == fed_b.header["seq"] and retract.header["position"] == 12
    assert fed_c.header["position"] == 15 and fed_c.header["replaced"] == 3 and fed_c.header["n_tokens"] == 3
    logits, said = fresh(lm, np.concatenate([a, b[:2], c]))
    np.testing.assert_allclose(fed_c.data, logits[-3:], atol=1e-5, rtol=0)
    assert [r.header["token_id"] for r in recs if r.kind == "delta"] == said


def test_a_revision_that_voids_nothing_published_sends_no_retract(node):
    pub, sub, _ = clients(node, "chat", ["out/nothing"])
    pub.send(np.arange(10, 20), stream="nothing")
    pub.end(stream="nothing", max_new_tokens=3)
    first = collect(sub, done_for("nothing"), timeout=20)
    pub.send(np.array([5]), stream="nothing", replace_last=0)  # appends: nothing derived from replaced input
    (fed,) = collect(sub, lambda r: r.kind == "fed")
    assert fed.header["seq"] == first[-1].header["seq"] + 1 and "replaced" not in fed.header


def test_revising_generated_tokens_retracts_their_deltas(node, lm):
    pub, sub, _ = clients(node, "chat", ["out/said"])
    prompt = np.arange(40, 52)
    pub.send(prompt, stream="said")
    pub.end(stream="said")
    recs = collect(sub, done_for("said"), timeout=20)
    deltas = [r for r in recs if r.kind == "delta"]
    pub.send(np.array([3, 4]), stream="said", replace_last=2)  # the reply's last two tokens
    recs = collect(sub, lambda r: r.kind == "fed")
    assert [r.kind for r in recs] == ["retract", "fed"]
    assert recs[0].header["first_seq"] == deltas[-2].header["seq"]  # the 3rd delta, then 4th and `done`
    kept = [d.header["token_id"] for d in deltas[:-2]]
    logits, _ = fresh(lm, np.concatenate([prompt, kept, [3, 4]]), gen=0)
    np.testing.assert_allclose(recs[1].data, logits[-2:], atol=1e-5, rtol=0)


def test_revise_feeds_only_the_difference_from_the_utterance(node, lm):
    pub, sub, _ = clients(node, "chat", ["out/asr"])
    pub.send(text="move forward two", stream="asr")
    pub.send(text=" meters then turn lef", stream="asr")
    first = collect(sub, lambda r: r.kind == "fed")
    first += collect(sub, lambda r: r.kind == "fed")
    final = "move forward two meters then turn left"
    pub.send(text=final, stream="asr", revise=True)
    pub.end(stream="asr")
    recs = collect(sub, done_for("asr"), timeout=20)
    assert recs[0].kind == "retract" and recs[0].header["first_seq"] == first[1].header["seq"]
    fed = recs[1]
    said = np.concatenate([lm.encode("move forward two"), lm.encode(" meters then turn lef")])
    want = lm.encode(final)
    same = next(i for i, (x, y) in enumerate(zip(said, want)) if x != y)
    assert fed.header["replaced"] == len(said) - same and fed.header["n_tokens"] == len(want) - same
    assert fed.header["n_tokens"] < len(want)  # the common prefix was not fed again
    logits, ids = fresh(lm, want)
    np.testing.assert_allclose(fed.data, logits[same:], atol=1e-5, rtol=0)
    assert [r.header["token_id"] for r in recs if r.kind == "delta"] == ids


def test_revise_compares_with_the_utterance_since_the_last_end_only(node, lm):
    pub, sub, _ = clients(node, "chat", ["out/turns"])
    pub.send(text="stop", stream="turns")
    pub.end(stream="turns")
    said = [r.header["token_id"] for r in collect(sub, done_for("turns"), timeout=20) if r.kind == "delta"]
    pub.send(text="go left", stream="turns", revise=True)  # a new utterance: nothing of it fed yet
    (fed,) = collect(sub, lambda r: r.kind == "fed")
    assert "replaced" not in fed.header and fed.header["n_tokens"] == len(lm.encode("go left"))
    logits, _ = fresh(lm, np.concatenate([lm.encode("stop"), said, lm.encode("go left")]), gen=0)
    np.testing.assert_allclose(fed.data, logits[-len(lm.encode("go left")):], atol=1e-5, rtol=0)


def test_reaching_into_evicted_input_is_a_state_error_and_the_stream_goes_on(node, lm):
    pub, sub, _ = clients(node, "win", ["out/far", "errors"])
    pub.send(np.arange(1, 41), stream="far")
    seq = pub.send(np.array([5]), stream="far", replace_last=20)
    pub.send(np.array([6]), stream="far")
    recs = collect(sub, lambda r: r.kind == "fed" and r.header["position"] == 41, timeout=20)
    (err,) = [r.header for r in recs if r.kind == "error"]
    assert err["code"] == "state" and err["in_seq"] == seq and "can go back at most 8 inputs" in err["reason"]
    s = lm.open_stream(kv_window=8, sink_tokens=2)
    s.feed(np.arange(1, 41))
    np.testing.assert_allclose(recs[-1].data, s.feed(np.array([6])).logits, atol=1e-5, rtol=0)


def test_a_model_kind_without_revisions_refuses_them_beside_a_valid_stream(node):
    pub, sub, _ = clients(node, "mic", ["out/m1", "out/m2", "errors"])
    audio = np.zeros(1024, np.float32)
    seq = pub.send(audio, stream="m1", sr=16000, replace_last=1)
    pub.send(audio, stream="m2", sr=16000)
    recs = collect(sub, lambda r: r.kind == "result" and r.header["stream"] == "m2", timeout=20)
    (err,) = [r.header for r in recs if r.kind == "error"]
    assert err["code"] == "input" and err["in_seq"] == seq and "takes no revisions" in err["reason"]


@pytest.mark.parametrize("fields, reason", [
    ({"replace_last": -1}, "replace_last"),
    ({"replace_last": "2"}, "replace_last"),
    ({"replace_last": True}, "replace_last"),
    ({"revise": 1}, "'revise' must be true"),
])
def test_malformed_revision_fields_are_protocol_errors(node, fields, reason):
    name = f"bad-{sorted(fields.items())!r}"  # a new stream per case
    pub, sub, _ = clients(node, "chat", [f"out/{name}", "errors"])
    seq = pub.send(np.array([1, 2]), stream=name, **fields)
    pub.send(np.array([3]), stream=name)
    recs = collect(sub, lambda r: r.kind == "fed", timeout=20)
    (err,) = [r.header for r in recs if r.kind == "error"]
    assert err["code"] == "protocol" and err["in_seq"] == seq and reason in err["reason"]
    assert recs[-1].header["position"] == 1  # the bad chunk fed nothing
