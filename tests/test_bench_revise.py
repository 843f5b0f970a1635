"""`edge-stream bench --scenario revise` in quick mode on a tiny Llama: it runs end to end on both
KV layouts and reports what it promises (behaviour only; figures come from the reference model)."""

from __future__ import annotations

import json
import logging

from edge_stream.bench import run as bench


def test_revise_scenario_reports_revision_cost_and_input_latency_on_both_layouts(tmp_path):
    logging.getLogger("optimum").setLevel(logging.ERROR)
    out = tmp_path / "report.json"
    rc = bench.main(["--model", "llama", "--cache-dir", str(tmp_path / "models"), "--quick", "--scenario", "revise",
                     "--precision", "fp32", "--gqa-precision", "fp32", "--threads", "1", "--json", str(out)])
    assert rc == 0
    results = json.loads(out.read_text())["results"]["revise"]
    layouts = {r["kv_io"] for r in results.values()}
    assert "concat" in layouts
    for build, r in results.items():
        assert r["k"] == 4 and r["tokens"] == 512
        assert r["max_logit_diff"] <= 1e-4, build  # the revised stream equals the refed one
        assert r["revise_ms"]["n"] == r["refeed_ms"]["n"] == 3 and r["ratio"] > 1
        modes = {g["mode"]: g for g in r["during_generation"]}
        assert set(modes) == {"interleave", "interrupt"}
        for g in modes.values():
            assert g["in_cache_ms"]["n"] == 8 and 0 <= g["waited_ms"]["p50"] <= g["in_cache_ms"]["p50"]
            assert g["decode_step_ms"]["p50"] > 0
