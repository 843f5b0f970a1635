"""The fuzz harness (edge_stream/bench/fuzz.py, issue 13 §9) against a real node: every malformed
kind, on the input, forwarded and control paths, between valid LM and VAD streams.

Fixed seed, two rounds: about 250 malformed messages and 60 control requests. The longer run is
`python -m edge_stream.bench.fuzz fuzz`; the soak `python -m edge_stream.bench.fuzz soak`.
"""

from __future__ import annotations

import pytest
from nodekit import start_node

from edge_stream.bench import fuzz


@pytest.fixture(scope="module")
def node(tiny_models, vad_dir):
    node = start_node(fuzz.fuzz_models(tiny_models("llama")[1], vad_dir), **fuzz.NODE_OPTIONS)
    yield node
    node.stop()


@pytest.fixture(scope="module")
def harness(node):
    h = fuzz.Harness(node.endpoints["input"][0], node.endpoints["output"][0], node.endpoints["control"][0])
    yield h
    h.close()


def test_the_harness_has_at_least_60_kinds_on_each_path():
    paths = {c.path for c in fuzz.CASES}
    assert len(fuzz.CASES) >= 60 and paths == {"input", "forwarded", "control"}
    assert len({c.name for c in fuzz.CASES}) == len(fuzz.CASES)


def test_valid_traffic_repeats_for_a_seed_and_differs_between_seeds():
    a, b, c = (fuzz.valid_traffic(s, 2, 2, "x") for s in (1, 1, 2))
    flat = lambda t: [(s, m[1], None if m[2] is None else m[2].tobytes()) for s, ms in t.items() for m in ms]
    assert flat(a) == flat(b) and flat(a) != flat(c)


def test_every_malformed_message_is_answered_and_valid_streams_are_bit_identical(node, harness):
    rep = fuzz.run_fuzz(harness, seed=13, rounds=2, n_lm=3, n_vad=3)
    assert rep.messages >= 200 and rep.controls >= 50
    assert not rep.unanswered, rep.unanswered
    assert not rep.internal, rep.internal
    assert not rep.mismatched, rep.mismatched
    assert not rep.dead, rep.dead
    beat = harness.heartbeat()
    assert beat is not None and node.running
    assert all(w.get("alive", True) for w in beat.get("workers", []))


def test_a_node_that_answers_nothing_fails_the_harness(harness):
    """The check can fail: a case whose errors never come is reported (the answer is awaited, not assumed)."""
    silent = fuzz.Case("valid chunk claimed malformed", "input",  # a valid chunk: no error event will come
                       lambda c: fuzz.Sent(inputs=fuzz._vad(c).inputs, errors=1, stream=c.stream))
    rep = fuzz.run_fuzz(harness, seed=5, rounds=1, n_lm=1, n_vad=1, cases=[silent], answer_timeout=1.0)
    assert rep.unanswered == [(silent.name, "no error event for stream 'fz5-0'")]
    assert rep.dead and not rep.mismatched
