"""The benchmark's quick mode on tiny models: it runs end to end and reports what it promises.

Behaviour only (keys, units, sanity of the numbers, peers skipped with a reason); the
speed figures themselves come from `python -m edge_stream.bench.run` on the reference model,
never from tests.
"""

from __future__ import annotations

import json
import logging

import pytest

from edge_stream.bench import lm as bench_lm
from edge_stream.bench import run as bench


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    """One quick run of the language-model scenarios for fp32 and int8 (optimum graph) and
    fp32 and int4 (gqa graph) on a tiny Llama built into a fresh cache folder, with every
    installed peer, plus its plots."""
    logging.getLogger("optimum").setLevel(logging.ERROR)
    root = tmp_path_factory.mktemp("bench")
    out = root / "report.json"
    rc = bench.main(["--model", "llama", "--cache-dir", str(root / "models"), "--quick",
                     "--scenario", "overhead", "ttft", "decode", "window",
                     "--precision", "fp32", "int8", "--window-precision", "fp32", "int8", "--threads", "1",
                     "--peers", "genai", "torch", "--gqa-precision", "fp32", "int4",
                     "--json", str(out), "--plot", str(root / "plots")])
    assert rc == 0
    return json.loads(out.read_text()), root


def installed_peers() -> set:
    return {p for p in bench_lm.PEER_MODULES if bench_lm.peer_missing(p) is None}


def test_report_describes_the_machine_and_run(quick_report):
    report, _ = quick_report
    assert report["schema"] == bench.SCHEMA
    machine = report["machine"]
    assert machine["cpu"] and machine["onnxruntime"] and machine["logical_cores"] >= 1
    assert machine["intra_op_threads"] == 1
    assert report["config"]["quick_mode"] is True
    assert set(report["results"]) == {"overhead", "ttft", "decode", "window"}
    gqa = {"gqa-fp32", "gqa-int4"} if "genai" in installed_peers() else set()
    assert set(report["models"]) == {"fp32", "int8"} | gqa
    for label, m in report["models"].items():
        assert m["kv_io"] == ("shared_buffer" if label.startswith("gqa-") else "concat")


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


def test_engines_are_ours_plus_every_installed_peer(quick_report):
    report, _ = quick_report
    engines = set(report["engines"])
    assert {"ours-fp32", "ours-int8"} <= engines
    if "genai" in installed_peers():
        assert {"ours-gqa-fp32", "genai-fp32", "ours-gqa-int4", "genai-int4"} <= engines
    if "torch" in installed_peers():
        assert "torch-fp32" in engines
    missing = {"genai", "torch"} - installed_peers()
    assert set(report["skipped"]) == missing | ({"gqa"} if "genai" in missing else set())


def test_ttft_streamed_and_batch_at_every_length_for_every_engine(quick_report):
    report, _ = quick_report
    r = report["results"]["ttft"]
    assert r["lengths"] == [64, 256] and r["chunk"] == 16
    assert set(r["engines"]) == {e for e in report["engines"] if not e.startswith("bare-")}
    for name, e in r["engines"].items():
        assert e["same_first_token"], name
        for n in r["lengths"]:
            s, b = e["streamed_ms"][str(n)], e["batch_ms"][str(n)]
            assert s["p50"] > 0 and b["p50"] > 0 and s["n"] == b["n"] == r["repeats"]
            assert e["batch_over_streamed"][str(n)] == pytest.approx(b["p50"] / s["p50"])
        assert e["chunk_ms"]["n"] == 256 // 16 * r["repeats"]
        assert [t for t, _ in e["chunk_trace"]] == list(range(16, 257, 16))
    assert isinstance(r["pass"], bool) and r["goal_length"] == 256
    if "genai" in installed_peers():
        assert r["ratios"]["chunk_p50"]["ours-fp32/genai-fp32"] > 0


def test_decode_reports_ms_per_token_against_the_bandwidth_floor(quick_report):
    report, _ = quick_report
    r = report["results"]["decode"]
    bw = r["bandwidth"]
    assert bw["read_gb_s"] > 0 and bw["copy_gb_s"] > 0 and bw["threads"] == 1 and "numpy" in bw["method"]
    assert bw["buffer_mb"] >= 512 and bw["buffer_mb"] >= min(2048, 4 * (bw["last_level_cache_mb"] or 0))
    for name, e in r["engines"].items():
        assert e["ms_per_token"]["p50"] > 0 and e["weight_mb"] > 0, name
        assert e["floor_ms"] == pytest.approx(e["weight_mb"] * 2**20 / (bw["read_gb_s"] * 1e9) * 1e3)
        assert e["ratio_to_floor"] == pytest.approx(e["ms_per_token"]["p50"] / e["floor_ms"])
        assert e["read_gb_s_at_weight_size"] > 0 and e["ratio_to_floor_at_weight_size"] > 0
    # int8 weights are about a quarter of fp32's: the floor follows the bytes.
    assert r["engines"]["ours-int8"]["weight_mb"] < 0.5 * r["engines"]["ours-fp32"]["weight_mb"]
    q = r["int8_over_fp32"]
    assert q["graphs"]["optimum"] > 0 and isinstance(q["pass"]["optimum"], bool)
    if "genai" in installed_peers():
        assert "bare-gqa-fp32" not in r["engines"]  # quick mode leaves the bare loop out
        assert r["ratios"]["ours-gqa-int4/genai-int4"] > 0 and isinstance(r["vs_genai"]["pass"], bool)
        pairs = {"ours-gqa-fp32/genai-fp32", "ours-gqa-int4/genai-int4"}
        assert set(r["vs_genai"]["lockstep_ratios"]) == set(r["vs_genai"]["patterns"]) == pairs
        for pair, by_pattern in r["vs_genai"]["patterns"].items():
            assert set(by_pattern) == {"back_to_back", "idle_gaps"}
            ours = pair.split("/")[0]
            for v in by_pattern.values():  # our session with spinning on and off, genai as it ships
                assert set(v["ms"]) == {f"{ours} spin-on", f"{ours} spin-off", pair.split("/")[1]}
                assert {d["n"] for d in v["ms"].values()} == {v["rounds"] * v["block"]}  # the same steps for each
                assert v["ratio_spin_on"] > 0 and v["ratio_spin_off"] > 0
                assert all(cpu > 0 for cpu in v["cpu_ms_per_step"].values())
                assert len(v["by_load_order"]) == len(bench_lm.LOAD_ORDERS)  # every side loaded last once


def test_window_reports_latency_and_memory_at_both_points(quick_report):
    report, _ = quick_report
    for result in report["results"]["window"].values():
        assert result["max_cache_len"] <= result["sink_tokens"] + result["kv_window"]
        near, far = result["near"], result["far"]
        assert near["tokens"] < far["tokens"] == report["config"]["tokens"]
        for point in (near, far):
            assert point["latency_ms"]["p50"] > 0 and point["rss_mb"] > 0
            assert point["peak_rss_mb"] >= point["rss_mb"]
        assert all(v > 0 for v in result["ratio"].values())
        assert result["trace_tokens_ms_rss_mb"][-1][0] == far["tokens"]


def test_table_and_plots_come_from_the_report(quick_report):
    report, root = quick_report
    table = bench.format_table(report)
    for heading in ("overhead:", "ttft:", "decode:", "window:"):
        assert heading in table
    pytest.importorskip("matplotlib")
    for name in ("bench-ttft.png", "bench-stream.png"):
        data = (root / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_built_models_are_reused_from_the_cache(quick_report):
    _, root = quick_report
    manifest = root / "models" / "llama-int8" / "manifest.json"
    before = manifest.stat().st_mtime_ns
    assert bench.ensure_model("llama", "int8", root / "models") == manifest.parent
    assert manifest.stat().st_mtime_ns == before


def test_absent_peers_are_skipped_with_the_reason(quick_report, monkeypatch, capsys):
    _, root = quick_report
    monkeypatch.setitem(bench_lm.PEER_MODULES, "genai", "no_such_module_genai")
    monkeypatch.setitem(bench_lm.PEER_MODULES, "torch", "no_such_module_torch")
    out = root / "no-peers.json"
    rc = bench.main(["--model", "llama", "--cache-dir", str(root / "models"), "--quick", "--scenario", "ttft",
                     "--threads", "1", "--peers", "genai", "torch", "--gqa-precision", "--ttft-lengths", "32",
                     "--json", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["engines"] == ["ours-int8"]
    assert "no_such_module_genai is not installed" in report["skipped"]["genai"]
    assert "no_such_module_torch is not installed" in report["skipped"]["torch"]
    printed = capsys.readouterr().out
    assert "peer genai skipped: no_such_module_genai is not installed" in printed


def test_vad_and_node_scenarios_report_capacity_and_overhead(tmp_path):
    out = tmp_path / "audio.json"
    rc = bench.main(["--quick", "--scenario", "vad", "node", "--cache-dir", str(tmp_path / "models"),
                     "--node-seconds", "0.3", "--json", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["models"] == {} and set(report["results"]) == {"vad", "node"}
    vad = report["results"]["vad"]
    for side in ("solo", "batched"):
        assert vad[side]["streams_per_core"] > 0 and vad[side]["cpu_us_per_stream_block"]["p50"] > 0
    assert vad["batched"]["streams"] > vad["solo"]["streams"]
    assert vad["batched_over_solo"] == pytest.approx(vad["batched"]["streams_per_core"] / vad["solo"]["streams_per_core"])
    node = report["results"]["node"]
    assert set(node["rates"]) == {"100", "1000"}
    for r in list(node["rates"].values()) + [node["baseline_relay"]]:
        assert r["received"] == r["sent"] > 0
        assert r["overhead_ms"]["p50"] <= r["overhead_ms"]["p99"] <= r["overhead_ms"]["max"]
    assert node["rates"]["1000"]["infer_ms"]["p50"] > 0 and node["baseline_relay"]["infer_ms"]["p50"] == 0
