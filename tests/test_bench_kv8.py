"""The int8-KV decode benchmark runs end to end on the tiny Llama (three gqa builds into a
temporary cache) and reports both load orders, the ratios and its parity check."""

from __future__ import annotations

import json

import pytest

from edge_stream.bench import kv8 as bench_kv8
from edge_stream.runtime.manifest import load_manifest


def test_the_kv8_benchmark_reports_both_load_orders_and_passes_its_check(tmp_path, capsys):
    from export.gqa import builder_missing

    if builder_missing():
        pytest.skip(builder_missing())
    out = tmp_path / "kv8.json"
    argv = ["--model", "llama", "--cache-dir", str(tmp_path / "cache"), "--prompt", "48", "--blocks", "2",
            "--json", str(out)]
    assert bench_kv8.main(argv) == 0
    r = json.loads(out.read_text())
    assert load_manifest(tmp_path / "cache" / "llama-gqa-int8-kv8").kv_precision == "int8"
    engines = r["prompts"]["48"]["engines"]
    assert set(engines) == set(bench_kv8.LABELS)
    assert all(len(v["wall_ms_p50"]) == 2 and min(v["cpu_ms_p50"]) > 0 for v in engines.values())
    q = r["prompts"]["48"]["ratios"]["gqa-int8-kv8/gqa-int8"]
    assert q["cpu_ms"] == pytest.approx(
        sum(a / b for a, b in zip(engines["gqa-int8-kv8"]["cpu_ms_p50"], engines["gqa-int8"]["cpu_ms_p50"])) / 2)
    assert r["pass"] and r["top1_int8_kv8_vs_int8"] >= bench_kv8.TOP1
    assert "check: top-1 of int8-KV prompt logits" in capsys.readouterr().out
