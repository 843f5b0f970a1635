"""int8 KV cache (`export.hf --graph gqa --kv-precision int8`) on the tiny Llama.

GroupQueryAttention keeps the cache int8 itself (kv_cache_bit_width=8, per-channel k_scale /
v_scale from calibration); the runtime's buffers, snapshots, rewinds, revisions, windows and
prefixes handle int8 arrays as they handle float ones. Two kinds of checks:
- parity with the fp32-KV graph of the same weights (`gqa`), within KV8_* below;
- exact equalities inside the int8 graph: ORT's CPU kernel quantises every new entry before
  attention reads it, so results depend on what the cache holds, never on how the input
  was chunked or which path (shared buffer, copy) ran it.
"""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from streamkit import feed_in_chunks

import edge_stream as es
from edge_stream.errors import ManifestError
from edge_stream.runtime.manifest import load_manifest, manifest_from_dict

# int8 KV vs fp32 KV, same weights, logits of 150 random tokens. Measured on the tiny Llama
# (logits within +-6; seeds 0-5): max abs 0.052..0.076, mean abs 0.0040..0.0060, top-1
# 0.987..1.0; a 64-entry window over 300 tokens: 0.074, 0.0050, 0.993 (KL 1.5e-5..3e-5;
# int8 weights alone: KL 6e-5..8e-5). The bounds leave 30-35% room; a cache with 2 bits
# fewer (every scale x4) lands outside both (0.26, 0.022: the last test).
KV8_MAX_ABS = 0.10
KV8_MEAN_ABS = 0.008
KV8_TOP1 = 0.97
KV8_MIN_ABS = 1e-3  # below this the cache would not be int8 at all (fp32 KV agrees to 1e-6)
SAME = 1e-6  # equalities inside the int8 graph: the same cache contents give the same logits


def ids(model, n, seed):
    return np.random.default_rng(seed).integers(0, model.manifest.input.vocab_size, n)


def deviation(got, expected) -> tuple[float, float, float]:
    """(max abs, mean abs, top-1 agreement) of logits [n, vocab]."""
    diff = np.abs(got - expected)
    return float(diff.max()), float(diff.mean()), float((got.argmax(-1) == expected.argmax(-1)).mean())


def assert_within_kv8_bounds(got, expected):
    max_abs, mean_abs, top1 = deviation(got, expected)
    assert KV8_MIN_ABS < max_abs <= KV8_MAX_ABS, max_abs
    assert mean_abs <= KV8_MEAN_ABS, mean_abs
    assert top1 >= KV8_TOP1, top1


def test_the_manifest_records_int8_kv_and_the_scales_the_graph_applies(gqa_kv8):
    m = gqa_kv8.manifest
    assert m.kv_precision == "int8" and m.kv_io == "shared_buffer" and m.precision == "fp32"
    graph = onnx.load(str(gqa_kv8.dir / m.model_file), load_external_data=False).graph
    nodes = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
    assert nodes and all(any(a.name == "kv_cache_bit_width" and a.i == 8 for a in n.attribute) for n in nodes)
    by_past = {n.input[3]: n.input[12] for n in nodes} | {n.input[4]: n.input[13] for n in nodes}
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.name in by_past.values()}
    assert len(m.kv_states) == len(by_past)
    for spec in m.kv_states:
        assert spec.dtype == "int8"
        np.testing.assert_array_equal(np.asarray(spec.scale, np.float32), inits[by_past[spec.input]].ravel())
    stream = gqa_kv8.open_stream()
    stream.feed(ids(gqa_kv8, 10, 0))
    assert all(s.dtype == np.int8 and s.shape[2] == 10 for s in stream.state.states)  # [1, kv_heads, 10, head_dim]


def test_a_manifest_with_int8_kv_states_and_no_scales_is_refused(gqa_kv8):
    raw = gqa_kv8.manifest.to_dict()
    del raw["states"][0]["scale"]
    with pytest.raises(ManifestError, match=r"states\[0\]\.scale: an int8 kv state needs one scale per element"):
        manifest_from_dict(raw)
    raw = gqa_kv8.manifest.to_dict()
    raw["kv_precision"] = "fp32"
    with pytest.raises(ManifestError, match=r"kv_precision fp32 stores kv states as float32"):
        manifest_from_dict(raw)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_int8_kv_logits_stay_within_the_bound_of_the_fp32_kv_graph(gqa, gqa_kv8, seed):
    fp32, _ = gqa
    x = ids(gqa_kv8, 150, seed)
    assert_within_kv8_bounds(gqa_kv8.open_stream().feed(x).logits, fp32.open_stream().feed(x).logits)


def test_int8_kv_does_not_depend_on_chunking_or_on_the_path(gqa_kv8):
    x = ids(gqa_kv8, 200, 3)
    whole = gqa_kv8.open_stream().feed(x).logits
    for sizes in ([1] * 200, [37] * 5 + [15], [3, 120, 77]):
        np.testing.assert_allclose(feed_in_chunks(gqa_kv8.open_stream(), x, sizes), whole, atol=SAME, rtol=0)
    copying = feed_in_chunks(gqa_kv8.open_stream(kv_io="concat"), x, [37] * 5 + [15])
    np.testing.assert_allclose(copying, whole, atol=SAME, rtol=0)


def test_the_int8_buffer_grows_appends_in_place_and_copies_a_held_branch(gqa_kv8):
    model = gqa_kv8
    a, x, y = ids(model, 300, 4), ids(model, 9, 5), ids(model, 7, 6)
    stream = model.open_stream()
    stream.feed(a)  # past the first capacity (256): the buffer grew
    buf = stream.state.kv.buffer
    at_a = stream.snapshot()
    stream.feed(x)
    assert stream.state.kv.buffer is buf and buf.arrays[0].dtype == np.int8
    at_ax = stream.snapshot()
    stream.restore(at_a)
    got_ay = stream.feed(y).logits  # at_ax claims the entries after a: this branch copies
    assert stream.state.kv.buffer is not buf
    fresh = model.open_stream().feed(np.concatenate([a, y])).logits[300:]
    np.testing.assert_allclose(got_ay, fresh, atol=SAME, rtol=0)
    stream.restore(at_ax)  # the other branch's int8 entries were never overwritten
    fresh = model.open_stream().feed(np.concatenate([a, x, y])).logits[309:]
    np.testing.assert_allclose(stream.feed(y).logits, fresh, atol=SAME, rtol=0)


def test_rewind_and_revision_on_int8_kv_equal_never_having_fed_the_dropped_tokens(gqa_kv8):
    model = gqa_kv8
    a, b, c = ids(model, 30, 7), ids(model, 12, 8), ids(model, 10, 9)
    expected = model.open_stream().feed(np.concatenate([a, c])).logits[30:]
    rewound = model.open_stream()
    rewound.feed(np.concatenate([a, b]))
    rewound.rewind(len(b))
    np.testing.assert_allclose(rewound.feed(c).logits, expected, atol=SAME, rtol=0)
    revised = model.open_stream()
    revised.feed(np.concatenate([a, b]))
    out = revised.feed(c, replace_last=len(b))  # the kept prefix a is not recomputed
    np.testing.assert_allclose(out.logits, expected, atol=SAME, rtol=0)


def test_an_int8_window_evicts_as_on_the_copying_path_and_stays_near_the_fp32_window(gqa, gqa_kv8):
    fp32, _ = gqa
    x = ids(gqa_kv8, 300, 10)
    sizes = [16] * 18 + [12]
    opts = {"kv_window": 64, "sink_tokens": 4}
    shared = gqa_kv8.open_stream(**opts)
    got = feed_in_chunks(shared, x, sizes)
    assert shared.state.evicted > 0 and shared.cache_len <= 68 and shared.state.kv.buffer.capacity == 68
    np.testing.assert_allclose(feed_in_chunks(gqa_kv8.open_stream(kv_io="concat", **opts), x, sizes), got,
                               atol=SAME, rtol=0)
    assert_within_kv8_bounds(got, feed_in_chunks(fp32.open_stream(**opts), x, sizes))


def test_an_int8_window_re_encodes_at_the_rotary_table_end_as_on_the_copying_path(gqa_kv8):
    max_pos = gqa_kv8.manifest.limits.max_positions
    x = ids(gqa_kv8, max_pos + 100, 13)
    streams = [gqa_kv8.open_stream(kv_window=48, sink_tokens=4, kv_io=kv_io) for kv_io in (None, "concat")]
    got = [feed_in_chunks(s, x, [20] * (len(x) // 20) + [len(x) % 20]) for s in streams]
    assert streams[0].state.cache_positions.max() < max_pos < len(x)  # re-encoded once at the table's end
    np.testing.assert_allclose(got[0], got[1], atol=SAME, rtol=0)


def test_a_stream_opened_on_an_int8_prefix_equals_one_fed_the_prefix_itself(gqa_kv8):
    model = gqa_kv8
    p, x = ids(model, 40, 11), ids(model, 30, 12)
    head = model.open_stream()
    head.feed(p)
    snap = head.snapshot()
    first, second = model.open_stream(prefix=snap), model.open_stream(prefix=snap)
    expected = model.open_stream().feed(np.concatenate([p, x])).logits[40:]
    np.testing.assert_allclose(feed_in_chunks(first, x, [7, 23]), expected, atol=SAME, rtol=0)
    np.testing.assert_allclose(second.feed(x).logits, expected, atol=SAME, rtol=0)  # first wrote nothing of the prefix


def test_a_cache_two_bits_coarser_falls_outside_the_bound(gqa, gqa_kv8, tmp_path):
    """The bound separates this int8 cache from a worse one: the same graph with every scale x4
    (2 bits of resolution fewer) fails it."""
    fp32, _ = gqa
    coarse = tmp_path / "coarse"
    shutil.copytree(gqa_kv8.dir, coarse)
    model = onnx.load(str(coarse / "model.onnx"))
    for t in model.graph.initializer:
        if t.name.endswith(".scale"):
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 4, t.name))
    onnx.save(model, str(coarse / "model.onnx"))
    from edge_stream.runtime.introspect import draft_manifest

    draft_manifest(coarse).save(coarse)
    assert load_manifest(coarse).kv_states[0].scale[0] == pytest.approx(gqa_kv8.manifest.kv_states[0].scale[0] * 4)
    x = ids(gqa_kv8, 150, 0)
    max_abs, mean_abs, _ = deviation(es.load(coarse, intra_op_threads=1).open_stream().feed(x).logits,
                                     fp32.open_stream().feed(x).logits)
    assert max_abs > KV8_MAX_ABS and mean_abs > KV8_MEAN_ABS


def test_int8_kv_is_refused_where_no_kernel_applies_the_scales(tiny_models, tmp_path):
    from export.hf import export_hf

    hf_dir, _ = tiny_models("llama")
    with pytest.raises(es.ConfigError, match="--kv-precision int8: --graph gqa only"):
        export_hf(str(hf_dir), tmp_path / "optimum", kv_precision="int8")
    with pytest.raises(es.ConfigError, match="fp16 is the CUDA build"):
        export_hf(str(hf_dir), tmp_path / "fp16", graph="gqa", precision="fp16", kv_precision="int8")
    assert not any(tmp_path.iterdir())  # refused before anything was written
