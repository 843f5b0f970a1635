"""KV memory recycled across a model's streams (runtime/kvbuffer.KVPool, issue 13 §7): slabs and
whole KVBuffers come back when nothing uses them, never while a state, snapshot or view does,
the pool stays bounded, and logits stay those of the PyTorch model.

RSS figures come from `python -m edge_stream.bench.churn`, not from here.
"""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest
from streamkit import TOL, feed_in_chunks, reference_logits

from edge_stream.runtime.kvbuffer import KEEP_PER_SIZE, MIN_SLAB_BYTES, KVPool


@pytest.fixture(scope="module")
def concat(loaded_models):
    return loaded_models("llama")


def ids(n, seed):
    return np.random.default_rng(seed).integers(0, 512, n)


def test_a_slab_comes_back_when_its_last_array_is_gone_and_is_reused():
    pool = KVPool()
    a, b = pool.arrays([(1, 2, 10, 16), (1, 2, 10, 16)], [np.float32, np.float32])
    assert a.flags.c_contiguous and b.flags.c_contiguous and not np.shares_memory(a, b)
    where = a.ctypes.data
    del a
    gc.collect()
    assert pool.idle_bytes == 0  # b still uses the slab
    del b
    gc.collect()
    assert pool.idle_bytes == MIN_SLAB_BYTES
    (c,) = pool.arrays([(1, 2, 20, 16)], [np.float32])
    assert c.ctypes.data == where and pool.reused == 1 and pool.made == 1


def test_a_view_keeps_its_slab_out_of_the_pool():
    pool = KVPool()
    (a,) = pool.arrays([(1, 2, 10, 16)], [np.float32])
    a[:] = 7.0
    view = a[:, :, 2:5]
    del a
    gc.collect()
    pool.arrays([(1, 2, 10, 16)], [np.float32])[0][:] = 0.0  # a fresh slab, not the viewed one
    assert pool.reused == 0 and (view == 7.0).all()


def test_the_pool_keeps_at_most_its_bound_or_a_few_per_size():
    pool = KVPool(max_idle_bytes=4 * MIN_SLAB_BYTES)
    held = [pool.arrays([(MIN_SLAB_BYTES // 4,)], [np.float32]) for _ in range(10)]
    big = [pool.arrays([(8 * MIN_SLAB_BYTES // 4,)], [np.float32]) for _ in range(5)]
    del held, big
    gc.collect()
    assert pool.idle_bytes <= 4 * MIN_SLAB_BYTES + KEEP_PER_SIZE * 8 * MIN_SLAB_BYTES
    assert pool.dropped == 15 - len([s for idle in pool._slabs.values() for s in idle])
    assert len(pool._slabs[8 * MIN_SLAB_BYTES]) == KEEP_PER_SIZE  # a large model's decode ping-pong stays mapped
    pool.clear()
    assert pool.idle_bytes == 0


def test_concat_streams_reuse_the_slabs_of_closed_ones_and_keep_their_logits(concat):
    model, ref = concat
    pool = model.kv_pool = KVPool()
    x = ids(40, 1)
    first = feed_in_chunks(model.open_stream(), x, [7] * 5 + [5])
    gc.collect()
    made = pool.made
    for seed in range(20):
        y = ids(30, seed)
        got = feed_in_chunks(model.open_stream(), y, [11, 11, 8])
        np.testing.assert_allclose(got, reference_logits(ref, y), atol=TOL, rtol=0)
    assert pool.made == made  # 60 more runs, no new slab: closed streams' slabs came back
    assert pool.reused >= 60
    np.testing.assert_allclose(first, reference_logits(ref, x), atol=TOL, rtol=0)


def test_a_held_concat_snapshot_is_not_overwritten_by_later_streams(concat):
    model, ref = concat
    a, b = ids(25, 3), ids(9, 4)
    stream = model.open_stream()
    stream.feed(a)
    snap = stream.snapshot()
    del stream
    for seed in range(10):  # other streams churn through the pool meanwhile
        model.open_stream().feed(ids(30, 100 + seed))
    later = model.open_stream()
    later.restore(snap)
    np.testing.assert_allclose(later.feed(b).logits, reference_logits(ref, np.concatenate([a, b]))[25:],
                               atol=TOL, rtol=0)


def test_a_closed_streams_kv_buffer_and_iobinding_serve_the_next_stream(gqa):
    model, ref = gqa
    model.kv_pool = KVPool()
    stream = model.open_stream()
    stream.feed(ids(20, 5))
    buf = stream.state.kv.buffer
    io = buf._io
    del stream
    gc.collect()
    y = ids(17, 6)
    nxt = model.open_stream()
    got = nxt.feed(y).logits
    assert nxt.state.kv.buffer is buf and buf._io is io  # recycled whole, IOBinding included
    np.testing.assert_allclose(got, reference_logits(ref, y), atol=TOL, rtol=0)


def test_a_snapshot_keeps_its_kv_buffer_out_of_the_pool(gqa):
    model, ref = gqa
    model.kv_pool = KVPool()
    a, b = ids(20, 7), ids(6, 8)
    stream = model.open_stream()
    stream.feed(a)
    snap = stream.snapshot()
    buf = snap.kv.buffer
    del stream
    gc.collect()
    other = model.open_stream()
    other.feed(ids(20, 9))
    assert other.state.kv.buffer is not buf
    restored = model.open_stream()
    restored.restore(snap)
    np.testing.assert_allclose(restored.feed(b).logits, reference_logits(ref, np.concatenate([a, b]))[20:],
                               atol=TOL, rtol=0)


def test_window_evictions_copy_into_recycled_buffers(gqa):
    model, _ = gqa
    pool = model.kv_pool = KVPool()
    stream = model.open_stream(kv_window=32, sink_tokens=4, evict_block=8)
    x = ids(400, 10)
    feed_in_chunks(stream, x, [8] * 50)
    assert stream.state.evicted > 300
    assert pool.made <= 4 and pool.reused > 30  # ~47 eviction copies, all but the first few into pooled buffers


def test_streams_in_two_threads_share_the_pool_safely(concat):
    model, ref = concat
    model.kv_pool = KVPool(max_idle_bytes=2 * MIN_SLAB_BYTES)  # small: buffers come and go under contention
    inputs = [ids(30, 200 + i) for i in range(12)]
    expected = [reference_logits(ref, x) for x in inputs]
    failures = []

    def work(part):
        for i in part:
            got = feed_in_chunks(model.open_stream(), inputs[i], [4] * 7 + [2])
            if not np.allclose(got, expected[i], atol=TOL, rtol=0):
                failures.append(i)

    threads = [threading.Thread(target=work, args=(range(k, 12, 2),)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures and model.kv_pool.reused > 0
