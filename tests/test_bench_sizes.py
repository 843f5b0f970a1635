"""The realistic-sizes and prefill benchmarks run end to end on the tiny test models (gqa builds
into a temporary cache): every figure is there, derived from the graph and the run."""

from __future__ import annotations

import json

import pytest

from edge_stream.bench import prefill as bench_prefill
from edge_stream.bench import sizes as bench_sizes


@pytest.fixture
def builder():
    from export.gqa import builder_missing

    if builder_missing():
        pytest.skip(builder_missing())


def test_the_sizes_benchmark_reports_every_figure(builder, tmp_path, capsys):
    out = tmp_path / "sizes.json"
    argv = ["--models", "tiny", "--precisions", "int8-qgemm", "int4", "--input", "64", "--repeats", "1",
            "--decode", "4", "--cache-dir", str(tmp_path / "cache"), "--json", str(out)]
    assert bench_sizes.main(argv) == 0
    r = json.loads(out.read_text())
    assert [x["precision"] for x in r["results"]] == ["int8-qgemm", "int4"]
    qgemm, int4 = r["results"]
    for x in (qgemm, int4):
        assert "error" not in x, x
        assert x["ttft_streamed_ms"]["n"] == 1 and x["ttft_batch_ms"]["n"] == 1 and x["decode_ms_per_token"]["n"] == 2
        # 2 layers x (keys + values) x 2 kv heads x 16 channels x 4 bytes (fp32 cache)
        assert x["kv_bytes_per_token"] == 2 * 2 * 2 * 16 * 4 and x["streams_per_gib_window4096"] == 2**30 // (4096 * 512)
        assert x["peak_rss_mb"] >= x["rss_loaded_mb"] > 0 and x["chunk_gops"] > 0 and x["logits"] == "last"
        assert x["profile"]["runs"] == bench_sizes.PROFILED_CHUNKS and "GroupQueryAttention" in x["profile"]["ops"]
    assert "DynamicQuantizeMatMul (MLAS QGEMM u8s8" in qgemm["kernels"] and "MatMulNBits" not in qgemm["kernels"]
    assert "MatMulNBits 4-bit" in int4["kernels"]
    # the tiny Qwen2: 2 layers of q, k, v, o (64x64, 64x32 x2, 64x64) and MLP (3 x 64x128), lm_head 64x512
    assert qgemm["weight_macs_per_token"] == 2 * (64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128) + 64 * 512
    peak = r["peak"]
    assert ("vnni" in peak and peak["vnni"] > 0 and peak["fma"] > 0) or "skipped" in peak
    assert "| qwen2 | int8-qgemm |" in capsys.readouterr().out


def test_the_prefill_benchmark_compares_with_torch_and_profiles(builder, tmp_path, capsys):
    pytest.importorskip("transformers")
    out = tmp_path / "prefill.json"
    argv = ["--model", "llama", "--lengths", "16", "48", "--labels", "gqa-fp32-last", "fp32", "--rounds", "1",
            "--cache-dir", str(tmp_path / "cache"), "--json", str(out)]
    assert bench_prefill.main(argv) == 0
    r = json.loads(out.read_text())
    assert set(r["ms"]) == {"ours-gqa-fp32-last", "ours-fp32", "torch-last", "torch-all"}
    assert r["same_first_token"] == {"16": True, "48": True}  # fp32 everywhere: one greedy choice
    assert set(r["ratio_to_torch"]["ours-gqa-fp32-last"]) == {"16", "48"}
    assert r["reference"] == {"ours-gqa-fp32-last": "torch-last", "ours-fp32": "torch-all"}
    prof = r["profiles"]["ours-gqa-fp32-last"]
    assert prof["runs"] == 1 and "GroupQueryAttention" in prof["ops"] and "MatMul" in prof["ops"]
    assert "ours-gqa-fp32-last" in capsys.readouterr().out
