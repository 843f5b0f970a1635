"""VAD capacity: real-time 16 kHz streams one CPU core serves, one stream per run vs batched.

Each round every stream gets one 512-sample block (32 ms of audio). Solo rounds
feed each stream on its own (`VadStream.feed`: one ORT run per stream); batched
rounds feed all streams with `VadStream.feed_batched` (one ORT run for all, states
stacked along the batch axis). ORT runs with one intra-op thread, so the work of a
round happens on the calling thread and its CPU time (`time.thread_time`) is the
core time it cost, whatever else the machine runs; wall time is reported beside it.
Streams per core = 32 ms / (CPU time per stream per round). Solo and batched rounds
alternate so both see the same machine.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from edge_stream.stats import dist

log = logging.getLogger(__name__)


def ensure_vad(cache_dir: Path) -> Path:
    """The Silero VAD model directory (export.silero_vad from the installed package), made once."""
    out = cache_dir / "silero-vad"
    if not (out / "manifest.json").is_file():
        from export import silero_vad

        cache_dir.mkdir(parents=True, exist_ok=True)
        silero_vad.export(out)
    return out


def scenario_vad(cfg, rng: np.random.Generator) -> dict:
    import edge_stream as es
    from edge_stream.voice.vad import VadStream

    vad_dir = Path(cfg.vad_dir) if cfg.vad_dir else ensure_vad(Path(cfg.cache_dir))
    model = es.load(vad_dir, intra_op_threads=1)
    block, sr = model.manifest.blocking.block, model.manifest.blocking.sample_rate
    block_s = block / sr
    n_solo, n_batch = cfg.vad_solo_streams, cfg.vad_batch_streams
    audio = (rng.standard_normal((max(n_solo, n_batch), block)) * 0.05).astype(np.float32)  # [streams, block]
    solo = [model.open_stream() for _ in range(n_solo)]
    batched = [model.open_stream() for _ in range(n_batch)]
    chunks = list(audio[:n_batch])

    def solo_round():
        for s, x in zip(solo, audio):
            s.feed(x)

    def batch_round():
        VadStream.feed_batched(batched, chunks)  # streams of es.load(VAD): VadStreams

    cost = {"solo": {"cpu": [], "wall": []}, "batched": {"cpu": [], "wall": []}}
    t_start = time.perf_counter()
    for i in range(cfg.vad_rounds + 2):
        for side in (("solo", "batched") if i % 2 == 0 else ("batched", "solo")):
            fn, streams = (solo_round, n_solo) if side == "solo" else (batch_round, n_batch)
            c0, w0 = time.thread_time(), time.perf_counter()
            fn()
            if i >= 2:  # two warm-up rounds
                cost[side]["cpu"].append((time.thread_time() - c0) / streams)
                cost[side]["wall"].append((time.perf_counter() - w0) / streams)
    out = {}
    for side, streams in (("solo", n_solo), ("batched", n_batch)):
        cpu, wall = np.array(cost[side]["cpu"]), np.array(cost[side]["wall"])
        out[side] = {"streams": streams, "cpu_us_per_stream_block": dist(cpu * 1e6),
                     "wall_us_per_stream_block": dist(wall * 1e6),
                     "streams_per_core": block_s / float(np.median(cpu)),
                     "streams_per_core_wall": block_s / float(np.median(wall))}
    gain = out["batched"]["streams_per_core"] / out["solo"]["streams_per_core"]
    log.info("vad: %.0f streams/core solo, %.0f batched (x%.1f)", out["solo"]["streams_per_core"],
             out["batched"]["streams_per_core"], gain)
    return {"model": str(vad_dir), "block_ms": block_s * 1e3, "rounds": cfg.vad_rounds, **out,
            "batched_over_solo": gain, "goal": "batched >= 500 real-time streams per core",
            "pass": out["batched"]["streams_per_core"] >= 500, "seconds": time.perf_counter() - t_start}
