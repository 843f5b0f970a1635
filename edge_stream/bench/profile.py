"""Where a run's time goes: ONNX Runtime's profiler output, summed per operator type.

A model loaded with EDGE_STREAM_ORT_PROFILE=PREFIX (runtime.runner.session_options) writes
every run's node timings; `session.end_profiling()` returns the file. `op_times` picks the
runs of interest (model_run events, in order) and sums the kernel time of the nodes that ran
inside each, per op type.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Callable


def profile_runs(model_dir: Path, threads: int, work: Callable, runs: slice = slice(None)) -> dict:
    """`op_times` of the runs `runs` picks among those `work(model)` makes on a fresh load of
    `model_dir` with the profiler on (EDGE_STREAM_ORT_PROFILE set only while it loads)."""
    import edge_stream as es

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["EDGE_STREAM_ORT_PROFILE"] = str(Path(tmp) / "ort")
        try:
            model = es.load(model_dir, intra_op_threads=threads)
        finally:
            del os.environ["EDGE_STREAM_ORT_PROFILE"]
        work(model)
        return op_times(Path(model.runner.session.end_profiling()), runs)


def op_times(profile: Path, runs: slice = slice(None)) -> dict:
    """{"runs": n, "run_ms": mean wall ms of the runs, "ops": {op_type: mean kernel ms per run},
    "nodes": {node name: mean ms}} over the model runs `runs` picks (in the order they ran)."""
    events = json.loads(Path(profile).read_text())
    model_runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                        key=lambda e: e["ts"])[runs]
    if not model_runs:
        raise ValueError(f"{profile}: no model_run events in the selection {runs}")
    spans = [(e["ts"], e["ts"] + e["dur"]) for e in model_runs]
    ops: dict[str, float] = defaultdict(float)
    nodes: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        ts = e["ts"]
        if any(lo <= ts <= hi for lo, hi in spans):
            ops[e["args"]["op_name"]] += e["dur"]
            nodes[e["name"][:-len("_kernel_time")]] += e["dur"]
    n = len(model_runs)
    return {"runs": n, "run_ms": sum(hi - lo for lo, hi in spans) / n / 1e3,
            "ops": {k: v / n / 1e3 for k, v in sorted(ops.items(), key=lambda kv: -kv[1])},
            "nodes": {k: v / n / 1e3 for k, v in nodes.items()}}
