"""Revisions (`feed(chunk, replace_last=k)`): after any sequence of revisions, logits and greedy
generation equal a fresh stream fed the resulting input (tolerance 1e-4), on the optimum (concat)
and gqa (shared buffer) graphs, for Llama, Qwen2 and GPT-2; inside sliding windows they equal
the PyTorch model with the window's mask, and on GPT-2 a revision across a re-encode is right."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from streamkit import TOL, reference_logits

import edge_stream as es
from edge_stream.runtime.sequence import StreamSession

PROPERTY = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GRAPHS = ("llama", "qwen2", "gpt2", "llama-gqa")


@pytest.fixture(scope="session")
def graph(request, loaded_models):
    """(Model, torch reference) of one graph: an optimum export, or the gqa (shared buffer) one."""
    return request.getfixturevalue("gqa") if request.param == "llama-gqa" else loaded_models(request.param)


def _greedy(stream, n: int) -> list[int]:
    return [p.token_id for p in stream.generate(n, stop_token_ids=())]


def _ops(data, vocab: int, budget: int):
    """Random operations: ("feed", ids, k) replaces the last k inputs; ("gen", n) generates."""
    ops, position = [], 0
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31), label="seed"))
    for _ in range(data.draw(st.integers(1, 8), label="n_ops")):
        if position and data.draw(st.integers(0, 4), label="op") == 0:
            n = data.draw(st.integers(1, 6), label="gen")
            if position + n > budget:
                break
            ops.append(("gen", n))
            position += n
            continue
        k = data.draw(st.integers(0, position), label="replace_last") if position else 0
        n = data.draw(st.integers(1, 12), label="chunk")
        if position - k + n > budget:
            break
        ops.append(("feed", rng.integers(0, vocab, n), k))
        position += n - k
    return ops


@pytest.mark.parametrize("graph", GRAPHS, indirect=True)
@PROPERTY
@given(data=st.data())
def test_revisions_equal_a_fresh_stream_fed_the_resulting_input(graph, data):
    model, _ = graph
    vocab = model.manifest.input.vocab_size
    stream, resulting = model.open_stream(), []
    for op in _ops(data, vocab, budget=100):  # gpt2's 128 learned positions leave room for generation
        if op[0] == "gen":
            resulting += _greedy(stream, op[1])
            continue
        _, ids, k = op
        out = stream.feed(ids, replace_last=k)
        resulting = resulting[:len(resulting) - k] + list(ids)
        assert out.start == len(resulting) - len(ids) and stream.position == len(resulting)
        fresh = model.open_stream().feed(np.array(resulting)).logits
        np.testing.assert_allclose(out.logits, fresh[-len(ids):], atol=TOL, rtol=0)
    if not resulting:
        return
    fresh = model.open_stream()
    fresh.feed(np.array(resulting))
    assert _greedy(stream, 6) == _greedy(fresh, 6)


@pytest.mark.parametrize("graph", GRAPHS, indirect=True)
def test_revising_generated_tokens_continues_from_the_kept_ones(graph):
    model, ref = graph
    prompt = np.random.default_rng(1).integers(0, model.manifest.input.vocab_size, 20)
    stream = model.open_stream()
    stream.feed(prompt)
    said = _greedy(stream, 5)  # the 5th is still pending (not run): replacing it costs nothing
    user = np.array([7, 8, 9])
    out = stream.feed(user, replace_last=3)
    expected = reference_logits(ref, np.concatenate([prompt, said[:2], user]))
    np.testing.assert_allclose(out.logits, expected[-3:], atol=TOL, rtol=0)


@pytest.mark.parametrize("graph", GRAPHS, indirect=True)
def test_a_revision_runs_only_the_new_chunk(graph, monkeypatch):
    model, _ = graph
    stream = model.open_stream()
    stream.feed(np.arange(40))
    ran = []
    real = StreamSession._input_feeds

    def recording(self, st_, rows):  # the real feeds, recorded: how many inputs each ORT run took
        ran.append(len(rows))
        return real(self, st_, rows)

    monkeypatch.setattr(StreamSession, "_input_feeds", recording)
    out = stream.feed(np.array([1, 2]), replace_last=5)
    assert ran == [2] and out.start == 35 and stream.position == 37 and stream.cache_len == 37


def test_a_shared_buffer_revision_writes_in_place_and_a_held_snapshot_is_copied(gqa):
    model, ref = gqa
    x = np.random.default_rng(2).integers(0, model.manifest.input.vocab_size, 30)
    stream = model.open_stream()
    stream.feed(x)
    buffer = stream.state.kv.buffer
    stream.feed(np.array([5, 6]), replace_last=4)
    assert stream.state.kv.buffer is buffer  # nothing else claimed the replaced entries: no copy
    snap = stream.snapshot()
    stream.feed(np.array([9]), replace_last=2)
    assert stream.state.kv.buffer is not buffer  # the snapshot still claims them: copy-on-write
    stream.restore(snap)
    out = stream.feed(np.array([3]))
    expected = reference_logits(ref, np.concatenate([x[:26], [5, 6, 3]]))
    np.testing.assert_allclose(out.logits, expected[-1:], atol=TOL, rtol=0)


# ----- refusals: a clear error, the stream unchanged ------------------------------------------


@pytest.mark.parametrize("graph", GRAPHS, indirect=True)
def test_reaching_into_evicted_input_names_how_far_back_the_stream_can_go(graph):
    model, _ = graph
    stream = model.open_stream(kv_window=8, sink_tokens=2)
    stream.feed(np.arange(40))
    snap = stream.snapshot()
    assert stream.revisable == stream.cache_len - 2
    with pytest.raises(es.StreamStateError, match=f"can go back at most {stream.revisable} inputs"):
        stream.feed(np.array([1]), replace_last=stream.revisable + 1)
    assert stream.snapshot() is snap
    stream.feed(np.array([1]), replace_last=stream.revisable)  # the limit itself is allowed
    assert stream.position == 40 - 8 + 1


@pytest.mark.parametrize("k", [-1, 11, 1.5, True])
def test_replace_last_outside_the_stream_is_refused(loaded_models, k):
    model, _ = loaded_models("llama")
    stream = model.open_stream()
    stream.feed(np.arange(10))
    snap = stream.snapshot()
    with pytest.raises(es.StreamStateError, match=r"replace_last: expected an int in \[0, 10\]"):
        stream.feed(np.array([1]), replace_last=k)
    assert stream.snapshot() is snap


def test_a_bad_revision_chunk_leaves_the_stream_unchanged(gqa):
    model, _ = gqa
    stream = model.open_stream()
    stream.feed(np.arange(10))
    snap = stream.snapshot()
    with pytest.raises(es.InputError, match="vocabulary"):
        stream.feed(np.array([1, model.manifest.input.vocab_size]), replace_last=3)
    assert stream.snapshot() is snap and stream.state.kv.length == 10


# ----- inside sliding windows ---------------------------------------------------------------


class WindowPolicy:
    """The window's policy, not its implementation: which entries each input saw. Pieces of
    n evict the oldest max(overflow, evict_block) non-sink entries when they would overflow;
    a revision drops the newest entries. `seen[q]`: what input q attended to, itself included."""

    def __init__(self, sinks: int, window: int, evict_block: int):
        self.sinks, self.window, self.evict_block = sinks, window, evict_block
        self.cache: list[int] = []
        self.evicted = False
        self.seen: dict[int, list[int]] = {}

    def revisable(self) -> int:
        return len(self.cache) - (self.sinks if self.evicted else 0)

    def feed(self, first: int, n: int, k: int) -> None:
        """Inputs [first, first + n) in place of the newest k entries, in pieces of at most `window`."""
        del self.cache[len(self.cache) - k:]
        for lo in range(first, first + n, self.window):
            piece = list(range(lo, min(lo + self.window, first + n)))
            overflow = len(self.cache) + len(piece) - (self.sinks + self.window)
            if overflow > 0 and len(self.cache) > self.sinks:
                del self.cache[self.sinks:self.sinks + max(overflow, self.evict_block)]
                self.evicted = True
            for q in piece:
                self.seen[q] = self.cache + piece[:q - lo + 1]
            self.cache += piece

    def mask(self, total: int) -> torch.Tensor:
        """Additive 4D mask [1, 1, total, total] for the PyTorch reference."""
        allow = np.zeros((total, total), dtype=bool)
        for q in range(total):
            allow[q, self.seen[q]] = True
        mask = torch.zeros(1, 1, total, total)
        mask[0, 0][~torch.from_numpy(allow)] = torch.finfo(torch.float32).min
        return mask


@pytest.mark.parametrize("graph", ("llama", "qwen2", "llama-gqa"), indirect=True)
@PROPERTY
@given(data=st.data())
def test_revisions_inside_a_rotary_window_equal_the_reference_with_the_retained_keys(graph, data):
    model, ref = graph
    sinks = data.draw(st.integers(0, 4), label="sinks")
    window = data.draw(st.integers(4, 16), label="window")
    evict_block = data.draw(st.integers(1, window), label="evict_block")
    stream = model.open_stream(kv_window=window, sink_tokens=sinks, evict_block=evict_block)
    policy = WindowPolicy(sinks, window, evict_block)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31), label="seed"))
    resulting: list[int] = []
    for _ in range(data.draw(st.integers(1, 25), label="n_feeds")):
        assert stream.revisable == policy.revisable()
        k = data.draw(st.integers(0, stream.revisable), label="replace_last")
        ids = rng.integers(0, model.manifest.input.vocab_size, data.draw(st.integers(1, window), label="chunk"))
        out = stream.feed(ids, replace_last=k)
        policy.feed(len(resulting) - k, len(ids), k)
        resulting = resulting[:len(resulting) - k] + list(ids)
        expected = reference_logits(ref, resulting, attention_mask=policy.mask(len(resulting)))
        np.testing.assert_allclose(out.logits, expected[-len(ids):], atol=TOL, rtol=0)
        assert stream.cache_len <= sinks + window
    # Greedy generation: each token a one-input piece, chosen from the reference's logits.
    said = _greedy(stream, 4)
    for token in said[:-1]:  # the last one is pending, not run
        policy.feed(len(resulting), 1, 0)
        resulting.append(token)
    expected = reference_logits(ref, resulting, attention_mask=policy.mask(len(resulting)))
    assert said == [int(t) for t in expected[-len(said):].argmax(axis=1)]


@PROPERTY
@given(data=st.data())
def test_a_revision_across_a_learned_position_re_encode_equals_a_fresh_run(loaded_models, data):
    """GPT-2 re-encodes its retained window at positions 0.. when the table ends; a revision that
    reaches into the re-encoded entries must give what a fresh run over the resulting inputs gives."""
    model, ref = loaded_models("gpt2")
    vocab, max_pos = model.manifest.input.vocab_size, model.manifest.limits.max_positions
    sinks = data.draw(st.integers(0, 4), label="sinks")
    window = data.draw(st.integers(16, 48), label="window")
    stream = model.open_stream(kv_window=window, sink_tokens=sinks)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31), label="seed"))
    while True:  # feed until a re-encode: positions start again at 0
        before = stream.state.next_model_position
        n = data.draw(st.integers(1, window // 2), label="chunk")
        stream.feed(rng.integers(0, vocab, n))
        if stream.state.next_model_position < before + n:
            break
        assert stream.position < 4 * max_pos
    after = stream.state
    np.testing.assert_array_equal(after.cache_positions, np.arange(after.cache_len))
    # Reach past this chunk into the re-encoded entries, and stay inside the window.
    k = data.draw(st.integers(min(n + 1, stream.revisable), stream.revisable), label="replace_last")
    m = data.draw(st.integers(1, max(1, min(window // 2, sinks + window - after.cache_len + k))), label="new")
    ids = rng.integers(0, vocab, m)
    out = stream.feed(ids, replace_last=k)
    revised = stream.state
    np.testing.assert_array_equal(revised.cache_inputs, np.concatenate([after.cache_inputs[:after.cache_len - k], ids]))
    np.testing.assert_array_equal(revised.cache_positions, np.arange(revised.cache_len))
    expected = reference_logits(ref, revised.cache_inputs)
    np.testing.assert_allclose(out.logits, expected[-m:], atol=TOL, rtol=0)
    fresh = model.open_stream(kv_window=window, sink_tokens=sinks)
    fresh.feed(revised.cache_inputs)
    assert _greedy(stream, 4) == _greedy(fresh, 4)
