"""The benchmark's quick mode on a tiny Llama: it runs end to end and reports what it promises.

Behaviour only (keys, units, sanity of the numbers); the speed figures themselves
come from `python -m edge_stream.bench` on the reference model, never from tests.
"""

from __future__ import annotations

import json
import logging

import pytest

from edge_stream import bench


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    """One quick run for fp32 and int8 on a tiny Llama built into a fresh cache folder."""
    logging.getLogger("optimum").setLevel(logging.ERROR)
    root = tmp_path_factory.mktemp("bench")
    out = root / "report.json"
    rc = bench.main(["--model", "llama", "--cache-dir", str(root / "models"), "--quick",
                     "--precision", "fp32", "int8", "--window-precision", "fp32", "int8", "--threads", "1", "--json", str(out)])
    assert rc == 0
    return json.loads(out.read_text()), root


def test_report_describes_the_machine_and_run(quick_report):
    report, _ = quick_report
    assert report["schema"] == bench.SCHEMA
    machine = report["machine"]
    assert machine["cpu"] and machine["onnxruntime"] and machine["logical_cores"] >= 1
    assert machine["intra_op_threads"] == 1
    assert report["config"]["quick_mode"] is True
    assert set(report["results"]) == {"overhead", "ttft", "window"}
    assert set(report["models"]) == {"fp32", "int8"}


def test_overhead_cases_compare_identical_feeds(quick_report):
    report, _ = quick_report
    for precision, result in report["results"]["overhead"].items():
        kinds = {case["kind"] for case in result["cases"]}
        assert kinds == {"chunk", "decode", "window_chunk", "generate"}, precision
        for case in result["cases"]:
            assert case["identical_logits"], case["case"]
            for key in ("stream_ms", "bare_ms", "ratio"):
                d = case[key]
                assert 0 < d["p10"] <= d["p50"] <= d["p90"], (case["case"], key)
            assert case["stream_ms"]["n"] == case["bare_ms"]["n"] > 0
        assert result["worst_median_ratio"] > 0 and isinstance(result["pass"], bool)


def test_ttft_compares_streamed_with_batch(quick_report):
    report, _ = quick_report
    for result in report["results"]["ttft"].values():
        assert result["same_first_token"]
        assert result["streamed_ms"]["p50"] > 0 and result["batch_ms"]["p50"] > 0
        assert result["ratio"] == pytest.approx(result["batch_ms"]["p50"] / result["streamed_ms"]["p50"])
        assert result["streamed_ms"]["n"] == result["batch_ms"]["n"] >= 2


def test_window_reports_latency_and_memory_at_both_points(quick_report):
    report, _ = quick_report
    for result in report["results"]["window"].values():
        assert result["max_cache_len"] <= result["sink_tokens"] + result["kv_window"]
        near, far = result["near"], result["far"]
        assert near["tokens"] < far["tokens"] == report["config"]["tokens"]
        for point in (near, far):
            assert point["latency_ms"]["p50"] > 0 and point["rss_mb"] > 0
            assert point["peak_rss_mb"] >= point["rss_mb"]
        assert set(result["ratio"]) == {"latency_p50", "latency_p50_in_run", "latency_p90_in_run", "rss", "peak_rss"}
        assert result["latency_pairs"]["far_ms"]["p50"] > 0 and result["latency_pairs"]["near_ms"]["p50"] > 0
        assert all(v > 0 for v in result["ratio"].values())


def test_built_models_are_reused_from_the_cache(quick_report):
    _, root = quick_report
    manifest = root / "models" / "llama-int8" / "manifest.json"
    before = manifest.stat().st_mtime_ns
    assert bench.ensure_model("llama", "int8", root / "models") == manifest.parent
    assert manifest.stat().st_mtime_ns == before
