"""Measurement helpers every benchmark scenario shares (run, lm, vad): a wall-clock timer.

Distributions of samples are edge_stream.stats.dist, the node's own percentile helper.
"""

from __future__ import annotations

import time
from typing import Callable


def timed_ms(fn: Callable[[], object]) -> float:
    """Wall time of one call of `fn`, ms (perf_counter_ns: monotonic, ns resolution)."""
    t0 = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - t0) / 1e6
