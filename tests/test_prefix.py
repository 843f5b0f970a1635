"""Shared prompt prefixes (issue 14 §4): `model.open_stream(prefix=snapshot)` behaves exactly like a
fresh stream fed the prefix (logits to 1e-4), on the copying layout (optimum's Llama) and on the
shared-buffer layout (the gqa export), without running or copying the prefix at open."""

from __future__ import annotations

import numpy as np
import pytest
from streamkit import TOL, feed_in_chunks, in_threads, reference_logits

import edge_stream as es

LAYOUTS = ("concat", "shared_buffer")


@pytest.fixture(params=LAYOUTS)
def lm(request, loaded_models):
    """(Model, torch reference) of one KV layout."""
    return loaded_models("llama") if request.param == "concat" else request.getfixturevalue("gqa")


def ids(model, n, seed):
    return np.random.default_rng(seed).integers(0, model.manifest.input.vocab_size, n)


def prefix_of(model, tokens, **options):
    stream = model.open_stream(**options)
    stream.feed(tokens)
    return stream.snapshot()


def test_a_stream_from_a_prefix_equals_a_fresh_stream_fed_the_prefix(lm):
    model, ref = lm
    p, x = ids(model, 40, 1), ids(model, 30, 2)
    fresh = model.open_stream()
    fresh.feed(p)
    expected = feed_in_chunks(fresh, x, [7, 1, 13, 9])
    got = feed_in_chunks(model.open_stream(prefix=prefix_of(model, p)), x, [7, 1, 13, 9])
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)
    np.testing.assert_allclose(got, reference_logits(ref, np.concatenate([p, x]))[40:], atol=TOL, rtol=0)


def test_opening_from_a_prefix_runs_and_copies_nothing(lm):
    model, _ = lm
    snap = prefix_of(model, ids(model, 40, 3))
    made, reused = model.kv_pool.made, model.kv_pool.reused
    stream = model.open_stream(prefix=snap)
    assert (model.kv_pool.made, model.kv_pool.reused) == (made, reused)  # no KV memory taken
    assert all(a is b for a, b in zip(stream.state.states, snap.states))  # the prefix's own arrays
    assert stream.position == 40 and stream.state.last_logits is snap.last_logits


def test_the_first_writer_appends_in_place_and_the_others_copy_the_prefix_once(gqa):
    model, _ = gqa
    snap = prefix_of(model, ids(model, 40, 4))
    first, second = model.open_stream(prefix=snap), model.open_stream(prefix=snap)
    first.feed(ids(model, 5, 5))
    assert first.state.kv.buffer is snap.kv.buffer  # nobody claimed past the prefix: written in place
    second.feed(ids(model, 5, 6))
    assert second.state.kv.buffer is not snap.kv.buffer  # `first` claims past it: copy-on-write


def test_many_streams_from_one_prefix_disturb_neither_each_other_nor_the_prefix(lm):
    model, ref = lm
    p = ids(model, 33, 7)
    snap = prefix_of(model, p)
    before = [np.array(s) for s in snap.states]  # copies, to compare the prefix with afterwards
    tails = [ids(model, 24, 10 + i) for i in range(4)]
    streams = [model.open_stream(prefix=snap) for _ in tails]
    got = [[] for _ in tails]
    for j in range(0, 24, 6):  # interleaved: each stream writes while the others hold their entries
        for i, (stream, tail) in enumerate(zip(streams, tails)):
            got[i].append(stream.feed(tail[j:j + 6]).logits)
    for tail, parts in zip(tails, got):
        np.testing.assert_allclose(np.concatenate(parts), reference_logits(ref, np.concatenate([p, tail]))[33:],
                                   atol=TOL, rtol=0)
    for old, now in zip(before, snap.states):
        np.testing.assert_array_equal(old, now)
    late = model.open_stream(prefix=snap).feed(tails[0]).logits  # opened after the others wrote
    np.testing.assert_allclose(late, np.concatenate(got[0]), atol=1e-6, rtol=0)


def test_replace_last_into_the_prefix_equals_a_fresh_stream_fed_the_edit(lm):
    model, ref = lm
    p, x, y = ids(model, 40, 20), ids(model, 10, 21), ids(model, 12, 22)
    snap = prefix_of(model, p)
    stream = model.open_stream(prefix=snap)
    stream.feed(x)
    out = stream.feed(y, replace_last=len(x) + 8)  # the last 8 prefix tokens go too
    assert out.start == 32
    np.testing.assert_allclose(out.logits, reference_logits(ref, np.concatenate([p[:32], y]))[32:], atol=TOL, rtol=0)
    again = model.open_stream(prefix=snap).feed(x).logits  # the prefix kept its 40 entries
    np.testing.assert_allclose(again, reference_logits(ref, np.concatenate([p, x]))[40:], atol=TOL, rtol=0)


def test_rewind_past_the_whole_prefix_gives_an_empty_stream(lm):
    model, ref = lm
    p, x, y = ids(model, 30, 23), ids(model, 6, 24), ids(model, 9, 25)
    stream = model.open_stream(prefix=prefix_of(model, p))
    stream.feed(x)
    stream.rewind(36)
    assert stream.position == 0 and stream.cache_len == 0
    np.testing.assert_allclose(stream.feed(y).logits, reference_logits(ref, y), atol=TOL, rtol=0)


def test_rewind_into_the_prefix_then_feed(lm):
    model, ref = lm
    p, x, y = ids(model, 30, 26), ids(model, 6, 27), ids(model, 9, 28)
    stream = model.open_stream(prefix=prefix_of(model, p))
    stream.feed(x)
    stream.rewind(len(x) + 10)
    got = stream.feed(y).logits
    np.testing.assert_allclose(got, reference_logits(ref, np.concatenate([p[:20], y]))[20:], atol=TOL, rtol=0)


def test_a_windowed_stream_from_a_prefix_evicts_like_a_fresh_one(lm):
    model, _ = lm
    opts = {"kv_window": 48, "sink_tokens": 4, "evict_block": 8}
    p, x = ids(model, 30, 29), ids(model, 100, 30)
    sizes = [10] * 10
    fresh = model.open_stream(**opts)
    fresh.feed(p)
    expected = feed_in_chunks(fresh, x, sizes)
    stream = model.open_stream(prefix=prefix_of(model, p, **opts), **opts)
    got = feed_in_chunks(stream, x, sizes)
    assert stream.state.evicted == fresh.state.evicted > 0
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)


def test_generation_from_a_prefix_equals_a_fresh_stream(lm):
    model, _ = lm
    p, x = ids(model, 25, 31), ids(model, 5, 32)
    fresh = model.open_stream()
    fresh.feed(np.concatenate([p, x]))
    stream = model.open_stream(prefix=prefix_of(model, p))
    stream.feed(x)
    assert [t.token_id for t in stream.generate(12, stop_token_ids=())] == \
        [t.token_id for t in fresh.generate(12, stop_token_ids=())]


def test_reset_returns_to_the_prefix(lm):
    model, _ = lm
    p, x = ids(model, 20, 33), ids(model, 7, 34)
    snap = prefix_of(model, p)
    stream = model.open_stream(prefix=snap)
    first = stream.feed(x).logits
    stream.reset()
    assert stream.state is snap
    np.testing.assert_allclose(stream.feed(x).logits, first, atol=1e-6, rtol=0)


def test_a_snapshot_of_another_model_is_refused(loaded_models, gqa):
    llama, _ = loaded_models("llama")
    snap = prefix_of(gqa[0], ids(llama, 10, 35))
    with pytest.raises(es.StreamStateError, match="prefix: expected a snapshot of a stream of this model, got a snapshot of another model"):
        llama.open_stream(prefix=snap)
    with pytest.raises(es.StreamStateError, match="got dict"):
        llama.open_stream(prefix={"tokens": [1, 2]})  # what a wire option could carry
    assert gqa[0].open_stream(prefix=snap).position == 10  # the snapshot is still good where it belongs


def test_a_prefix_longer_than_the_window_is_refused(lm):
    model, _ = lm
    snap = prefix_of(model, ids(model, 40, 36))
    with pytest.raises(es.StreamStateError, match="40 entries do not fit this stream's sink_tokens \\+ kv_window = 36"):
        model.open_stream(prefix=snap, kv_window=32, sink_tokens=4)
    assert model.open_stream(prefix=snap, kv_window=36, sink_tokens=4).position == 40


def test_a_prefix_that_evicted_is_refused(lm):
    model, _ = lm
    snap = prefix_of(model, ids(model, 40, 37), kv_window=16, sink_tokens=2)
    assert snap.evicted > 0
    with pytest.raises(es.StreamStateError, match="prefix: its window evicted"):
        model.open_stream(prefix=snap, kv_window=16, sink_tokens=2)


def test_streams_from_one_prefix_feed_concurrently_from_two_threads(lm):
    """The node runs streams of one route on several workers: each thread's stream equals the reference."""
    model, ref = lm
    p = ids(model, 30, 38)
    snap = prefix_of(model, p)
    tails = [ids(model, 30, 39), ids(model, 30, 40)]

    def run(i):
        stream = model.open_stream(prefix=snap)
        return np.concatenate([stream.feed(tails[i][j:j + 3]).logits for j in range(0, 30, 3)])

    results = in_threads(run)
    for tail, got in zip(tails, results):
        np.testing.assert_allclose(got, reference_logits(ref, np.concatenate([p, tail]))[30:], atol=TOL, rtol=0)
