"""Streams opened with logits="last": each feed returns its last position's logits only, and on
a graph exported with `--logits-to-keep` the lm_head runs for that position alone.

The last row equals the one an all-logits stream of the same model gives (tolerance 1e-5:
the same graph, one matmul row fewer), under random chunkings, chunks split by max_chunk,
revisions and generations; a graph without the input gives the same rows, cut in Python.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edge_stream as es
from edge_stream.runtime.introspect import draft_manifest

PROPERTY = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TOL = 1e-5


@pytest.fixture(scope="module")
def gqa_last(tiny_models, tmp_path_factory):
    """The tiny Llama exported with `--graph gqa --logits-to-keep` (parity checked on export)."""
    from export.gqa import builder_missing
    from export.hf import export_hf

    if builder_missing():
        pytest.skip(builder_missing())
    hf_dir, _ = tiny_models("llama")
    out = tmp_path_factory.mktemp("ltk") / "llama-gqa-last"
    report = export_hf(str(hf_dir), out, graph="gqa", logits_to_keep=True, chunkings=2)
    assert report.passed, report.summary()  # every-position logits (logits_to_keep = n) match PyTorch
    return es.load(out, intra_op_threads=1)


def ids(model, n, seed):
    return np.random.default_rng(seed).integers(0, model.manifest.input.vocab_size, n)


def test_the_export_declares_logits_to_keep_for_the_runtime_to_fill(gqa_last, gqa):
    assert gqa_last.manifest.aux_for("logits_to_keep") is not None
    assert draft_manifest(gqa_last.dir).aux_for("logits_to_keep") is not None  # read back from the graph
    assert gqa[0].manifest.aux_for("logits_to_keep") is None  # off by default: genai runs those folders


@PROPERTY
@given(data=st.data())
def test_last_rows_equal_the_all_logits_stream_under_random_chunkings(gqa_last, loaded_models, data):
    seed = data.draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    for model in (gqa_last, loaded_models("llama")[0]):  # with the input, and cut in Python
        tokens = ids(model, 120, seed)
        every = model.open_stream(kv_window=None, max_chunk=16)
        last = model.open_stream(kv_window=None, max_chunk=16, logits="last")
        at = 0
        while at < len(tokens):
            n = int(rng.integers(1, 40))  # > max_chunk: the feed runs in pieces
            chunk = tokens[at:at + n]
            replace = int(rng.integers(1, 3)) if at > 3 and rng.random() < 0.3 else 0  # at: fed so far
            at += n
            a = every.feed(chunk, replace_last=replace)
            b = last.feed(chunk, replace_last=replace)
            assert a.logits.shape == (len(chunk), model.manifest.input.vocab_size)
            assert b.logits.shape == (1, model.manifest.input.vocab_size) and b.start == a.start
            np.testing.assert_allclose(b.logits[0], a.logits[-1], atol=TOL, rtol=0)
        gen_a = [p.token_id for p in every.generate(max_new_tokens=6, temperature=0.0, stop_token_ids=())]
        gen_b = [p.token_id for p in last.generate(max_new_tokens=6, temperature=0.0, stop_token_ids=())]
        assert gen_a == gen_b
        # after a generation the last token is pending: the next feed runs it first, and its row is not returned
        a, b = every.feed(tokens[:3]), last.feed(tokens[:3])
        assert len(a.logits) == 3 and len(b.logits) == 1
        np.testing.assert_allclose(b.logits[0], a.logits[-1], atol=TOL, rtol=0)


def test_the_lm_head_runs_for_one_position(gqa_last):
    """The graph's own output has one row when the runtime asks for one: it is not cut afterwards."""
    stream = gqa_last.open_stream(kv_window=None, logits="last")
    runs = []
    real = gqa_last.runner.session.run_with_iobinding

    def spy(io, *args):
        real(io, *args)
        runs.append([o.shape() for o in io.get_outputs()])

    gqa_last.runner.session.run_with_iobinding = spy
    try:
        stream.feed(ids(gqa_last, 20, 1))
    finally:
        del gqa_last.runner.session.run_with_iobinding
    assert runs and all([1, 1, gqa_last.manifest.input.vocab_size] in shapes for shapes in runs)


def test_an_unknown_logits_option_is_a_config_error(gqa_last):
    with pytest.raises(es.ConfigError, match="logits: expected one of all, last"):
        gqa_last.open_stream(logits="first")
