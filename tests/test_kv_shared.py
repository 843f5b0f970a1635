"""Shared past/present KV buffers (kv_io: shared_buffer) on a real GroupQueryAttention graph:
the tiny Llama exported with `export.hf --graph gqa` (onnxruntime-genai's model builder).

Streaming equals PyTorch's full-sequence logits (tolerance 1e-4) and the same graph run the
copying way (kv_io="concat"); entries are written in place while nobody else claims them,
and copied first when a snapshot, a restored branch or another stream does.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from streamkit import TOL, chunk_sizes, feed_in_chunks, in_threads, reference_logits, window_mask

import edge_stream as es
from edge_stream.runtime.kvbuffer import KVBuffer
from edge_stream.runtime.manifest import load_manifest

PROPERTY = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def ids(model, n, seed):
    return np.random.default_rng(seed).integers(0, model.manifest.input.vocab_size, n)


def test_the_gqa_export_declares_a_shared_buffer_and_optimum_does_not(gqa, tiny_models):
    model, _ = gqa
    assert model.manifest.kv_io == "shared_buffer" and model.manifest.limits.position_encoding == "rotary_table"
    assert model.manifest.aux_for("position_ids") is not None  # added by export.gqa for windows
    assert load_manifest(tiny_models("llama")[1]).kv_io == "concat"


def test_a_concat_graph_cannot_be_run_as_a_shared_buffer(loaded_models):
    model, _ = loaded_models("llama")
    with pytest.raises(es.ConfigError, match="kv_io 'shared_buffer' needs a graph built for it"):
        model.open_stream(kv_io="shared_buffer")


@PROPERTY
@given(data=st.data())
def test_streaming_equals_the_full_sequence_and_the_copying_path(gqa, data):
    model, ref = gqa
    total = data.draw(st.integers(1, 120), label="tokens")
    x = ids(model, total, total)
    sizes = chunk_sizes(data.draw(st.lists(st.integers(1, 40), min_size=1, max_size=40), label="chunks"), total)
    shared = feed_in_chunks(model.open_stream(), x, sizes)
    copying = feed_in_chunks(model.open_stream(kv_io="concat"), x, sizes)
    np.testing.assert_allclose(shared, reference_logits(ref, x), atol=TOL, rtol=0)
    np.testing.assert_allclose(shared, copying, atol=1e-6, rtol=0)


def test_the_buffer_grows_past_its_first_capacity_without_changing_logits(gqa):
    model, ref = gqa
    x = ids(model, 700, 1)
    stream = model.open_stream()
    got = feed_in_chunks(stream, x, [37] * 18 + [34])
    assert stream.state.kv.buffer.capacity >= 700
    np.testing.assert_allclose(got, reference_logits(ref, x), atol=TOL, rtol=0)


def test_appending_writes_in_place_and_a_held_branch_is_copied_not_overwritten(gqa):
    model, ref = gqa
    a, x, y = ids(model, 20, 2), ids(model, 9, 3), ids(model, 7, 4)
    stream = model.open_stream()
    stream.feed(a)
    buf = stream.state.kv.buffer
    at_a = stream.snapshot()
    stream.feed(x)
    assert stream.state.kv.buffer is buf  # appended in place: nothing copied
    at_ax = stream.snapshot()
    stream.restore(at_a)
    got_ay = stream.feed(y).logits  # at_ax claims the entries after a: this branch copies
    assert stream.state.kv.buffer is not buf
    np.testing.assert_allclose(got_ay, reference_logits(ref, np.concatenate([a, y]))[20:], atol=TOL, rtol=0)
    stream.restore(at_ax)  # the other branch's entries were never overwritten
    got_axy = stream.feed(y).logits
    np.testing.assert_allclose(got_axy, reference_logits(ref, np.concatenate([a, x, y]))[29:], atol=TOL, rtol=0)


def test_a_branch_nobody_holds_gives_its_entries_back(gqa):
    model, ref = gqa
    a, x, y = ids(model, 20, 5), ids(model, 9, 6), ids(model, 7, 7)
    stream = model.open_stream()
    stream.feed(a)
    buf = stream.state.kv.buffer
    at_a = stream.snapshot()
    stream.feed(x)
    stream.restore(at_a)  # the longer state is gone: nothing claims the entries after a
    got = stream.feed(y).logits
    assert stream.state.kv.buffer is buf
    np.testing.assert_allclose(got, reference_logits(ref, np.concatenate([a, y]))[20:], atol=TOL, rtol=0)


def test_rewind_then_feed_equals_never_having_fed(gqa):
    model, ref = gqa
    a, b, c = ids(model, 30, 8), ids(model, 12, 9), ids(model, 10, 10)
    stream = model.open_stream()
    stream.feed(np.concatenate([a, b]))
    stream.rewind(len(b))
    got = stream.feed(c).logits
    np.testing.assert_allclose(got, reference_logits(ref, np.concatenate([a, c]))[30:], atol=TOL, rtol=0)


def test_greedy_generation_equals_the_copying_path(gqa):
    model, _ = gqa
    prompt = ids(model, 24, 11)
    runs = []
    for kv_io in (None, "concat"):
        stream = model.open_stream(kv_io=kv_io)
        stream.feed(prompt)
        runs.append([p.token_id for p in stream.generate(20, stop_token_ids=())])
    assert runs[0] == runs[1] and len(runs[0]) == 20


def test_two_streams_restored_from_one_snapshot_run_concurrently(gqa, monkeypatch):
    """Both streams may write after the snapshot's entries; the buffer's lock makes "nobody claims
    or writes past here" and "I write now" one step, so they never write the same entries. A barrier
    inside the check holds the first thread there until the second arrives: with the lock the
    second waits outside (the barrier times out), without it both pass the check together."""
    model, ref = gqa
    a = ids(model, 25, 12)
    tails = [ids(model, 30, 13), ids(model, 30, 14)]
    origin = model.open_stream()
    origin.feed(a)
    snap = origin.snapshot()
    barrier, first_check = threading.Barrier(2, timeout=1.0), threading.local()
    free = KVBuffer._free

    def free_after_both_arrive(buf, length, n):
        verdict = free(buf, length, n)
        if not getattr(first_check, "done", False):  # each thread's first reservation only
            first_check.done = True
            try:
                barrier.wait()
            except threading.BrokenBarrierError:  # the other thread is held off by the lock
                pass
        return verdict

    monkeypatch.setattr(KVBuffer, "_free", free_after_both_arrive)

    def run(i):
        stream = model.open_stream()
        stream.restore(snap)
        return np.concatenate([stream.feed(tails[i][j:j + 3]).logits for j in range(0, 30, 3)])

    results = in_threads(run)
    for tail, got in zip(tails, results):
        np.testing.assert_allclose(got, reference_logits(ref, np.concatenate([a, tail]))[25:], atol=TOL, rtol=0)
    assert barrier.broken  # both reached the check together and the second was held off until the first decided


def test_a_rejected_chunk_leaves_the_stream_and_its_buffer_as_they_were(gqa):
    model, ref = gqa
    a, b = ids(model, 15, 15), ids(model, 6, 16)
    stream = model.open_stream()
    stream.feed(a)
    before = stream.state
    with pytest.raises(es.InputError, match="outside the vocabulary"):
        stream.feed(np.array([1, model.manifest.input.vocab_size]))
    assert stream.state is before
    got = stream.feed(b).logits
    assert stream.state.kv.buffer is before.kv.buffer
    np.testing.assert_allclose(got, reference_logits(ref, np.concatenate([a, b]))[15:], atol=TOL, rtol=0)


def test_a_window_evicts_the_same_way_on_both_paths(gqa):
    model, _ = gqa
    x = ids(model, 300, 17)
    sizes = [16] * 18 + [12]
    opts = dict(kv_window=64, sink_tokens=4)
    shared, copying = model.open_stream(**opts), model.open_stream(kv_io="concat", **opts)
    got_shared, got_copying = feed_in_chunks(shared, x, sizes), feed_in_chunks(copying, x, sizes)
    assert shared.state.evicted > 0 and shared.cache_len <= 68
    assert shared.state.kv.buffer.capacity == 68
    assert shared.state.cache_positions[-1] == 299  # evicted, not re-encoded: positions keep growing
    np.testing.assert_allclose(got_shared, got_copying, atol=1e-5, rtol=0)


@PROPERTY
@given(data=st.data())
def test_rotary_window_equals_reference_with_the_retained_keys(gqa, data):
    """position_ids reach GroupQueryAttention's rotary: evicted entries leave, the kept keys keep
    the positions they were rotated at (PyTorch with the window's 4D mask as reference)."""
    model, ref = gqa
    sinks = data.draw(st.integers(0, 4), label="sinks")
    window = data.draw(st.integers(4, 16), label="window")
    evict_block = data.draw(st.integers(1, window), label="evict_block")
    total = data.draw(st.integers(20, 90), label="tokens")
    x = ids(model, total, total + window)
    sizes = chunk_sizes(data.draw(st.lists(st.integers(1, window), min_size=1, max_size=90)), total, window)
    stream = model.open_stream(kv_window=window, sink_tokens=sinks, evict_block=evict_block)
    got = feed_in_chunks(stream, x, sizes)
    assert stream.cache_len <= sinks + window and stream.state.cache_positions[-1] == total - 1
    expected = reference_logits(ref, x, attention_mask=window_mask(sizes, sinks, window, evict_block))
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)


def test_positions_stay_inside_the_rotary_table_by_re_encoding_at_its_end(gqa):
    model, ref = gqa
    max_pos = model.manifest.limits.max_positions
    x = ids(model, max_pos + 300, 18)
    stream = model.open_stream(kv_window=48, sink_tokens=4)
    reencodes = 0
    for i in range(0, len(x), 20):
        before = stream.state
        out = stream.feed(x[i:i + 20])
        after = stream.state
        assert after.cache_positions.max() < max_pos and after.cache_len <= 52
        if after.cache_positions[0] == 0 and after.cache_positions[-1] < before.next_model_position:
            reencodes += 1  # the chunk sees exactly a fresh run over the retained inputs
            fresh = reference_logits(ref, after.cache_inputs)
            np.testing.assert_allclose(out.logits, fresh[-len(out.logits):], atol=TOL, rtol=0)
    assert reencodes == 1
