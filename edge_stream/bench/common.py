"""Measurement helpers every benchmark scenario shares (run, lm, vad): a wall-clock timer.

Distributions of samples are edge_stream.stats.dist, the node's own percentile helper.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable


def timed_ms(fn: Callable[[], object]) -> float:
    """Wall time of one call of `fn`, ms (perf_counter_ns: monotonic, ns resolution)."""
    t0 = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - t0) / 1e6


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now (for a node's launch file)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_one_model_launch(path: Path, node: str, ep_in: str, ep_out: str, model: str, model_dir, topics: list,
                           **options) -> Path:
    """A launch file of one node serving one model (the node benchmarks'): `options` are the model
    route's settings (str, int, float or bool)."""
    def toml(v):
        return ("true" if v else "false") if isinstance(v, bool) else f'"{v}"' if isinstance(v, str) else str(v)

    lines = ["[[node]]", f'name = "{node}"', f'input.bind = ["{ep_in}"]', f'output.bind = ["{ep_out}"]',
             "[[node.models]]", f'name = "{model}"', f'dir = "{Path(model_dir).resolve()}"',
             "topics = [" + ", ".join(f'"{t}"' for t in topics) + "]"]
    path.write_text("\n".join(lines + [f"{k} = {toml(v)}" for k, v in options.items()]) + "\n")
    return path


def run_node_process(launch: Path):
    """`edge-stream run launch` in its own process (as on a robot: the benchmark's threads must not
    share its GIL); returns the Popen once the node printed its ready line."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "edge_stream.cli.node", "run", str(launch)],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if "ready" not in line:
        proc.kill()
        raise SystemExit(f"node did not start: {line!r}")
    return proc

