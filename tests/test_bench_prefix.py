"""The shared-prefix benchmark runs end to end on the committed tiny Llama and reports what
docs/benchmarks.md quotes (behaviour only; the figures come from the documented command)."""

from __future__ import annotations

import json

from edge_stream.bench import prefix as bench_prefix


def test_the_prefix_benchmark_reports_ttft_and_memory_and_passes_its_parity_check(tmp_path, capsys):
    out = tmp_path / "prefix.json"
    assert bench_prefix.main(["--prefix", "48", "--streams", "4", "--pairs", "2", "--json", str(out)]) == 0
    (r,) = json.loads(out.read_text())
    assert r["prefix_tokens"] == 48 and r["max_abs_logit_diff"] <= bench_prefix.TOL
    assert r["ttft"]["shared_ms"]["n"] == r["ttft"]["unshared_ms"]["n"] == 2
    mem = r["memory"]
    # Streams holding only the prompt share one copy of it; unshared, each holds its own.
    assert mem["shared"]["holding_prompt"]["kv_mb"] * 4 == mem["unshared"]["holding_prompt"]["kv_mb"]
    assert "check: shared-prefix logits equal" in capsys.readouterr().out
