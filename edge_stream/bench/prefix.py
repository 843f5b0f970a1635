"""Shared prompt prefixes (issue 14 §4): what `open_stream(prefix=snapshot)` saves.

    python -m edge_stream.bench.prefix [--model-dir DIR ...] [--gqa] [--prefix 512] [--streams 100]

Per model (default: the committed models/tiny-llama, concat KV; `--gqa` adds the same tiny Llama
exported with `--graph gqa` into a temporary folder, shared-buffer KV):
  ttft     a new conversation's first chunk (16 tokens) after a `--prefix`-token prompt: shared
           (open from the prefix's snapshot, feed the chunk) against unshared (open, feed prompt +
           chunk in one call, the fastest a stream without sharing can do), in alternating pairs
  memory   `--streams` streams holding the prompt, then after each took its first chunk: RSS growth
           and the KV bytes their states hold (distinct slabs, so shared entries count once)
Ends with a check that can fail: the shared stream's first-chunk logits equal the unshared one's (1e-4).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from edge_stream.bench.common import timed_ms
from edge_stream.bench.run import read_status_kb
from edge_stream.stats import dist

log = logging.getLogger(__name__)

TINY_LLAMA = Path(__file__).resolve().parents[2] / "models" / "tiny-llama"
CHUNK = 16  # tokens of a conversation's first chunk
TOL = 1e-4


def kv_bytes(streams) -> int:
    """Bytes of KV memory the streams' states hold: each distinct slab (or array) once, unused
    capacity of a shared buffer included, since that is what stays mapped."""
    seen = {}
    for s in streams:
        st = s.state
        for spec, value in zip(s.manifest.states, st.states):
            if spec.kind != "kv":
                continue
            while isinstance(value.base, np.ndarray):  # a view: walk to the array owning the memory
                value = value.base
            seen[id(value)] = value.nbytes
    return sum(seen.values())


def rss_mb() -> float:
    return read_status_kb()["VmRSS"] / 1024


def measure_ttft(model, prompt, chunk, snap, pairs: int) -> dict:
    """First-chunk latency, shared and unshared, alternating so load from elsewhere hits both alike."""
    full = np.concatenate([prompt, chunk])
    shared, unshared = [], []
    for i in range(pairs + 2):  # the first two pairs warm up
        a = timed_ms(lambda: model.open_stream(prefix=snap).feed(chunk))
        b = timed_ms(lambda: model.open_stream().feed(full))
        if i >= 2:
            shared.append(a)
            unshared.append(b)
    s, u = dist(shared), dist(unshared)
    return {"shared_ms": s, "unshared_ms": u, "unshared_over_shared": u["p50"] / s["p50"]}


def measure_memory(model, prompt, chunk, snap, n: int, shared: bool) -> dict:
    """RSS growth and KV bytes of `n` streams holding the prompt, then after their first chunk."""
    model.kv_pool.clear()
    gc.collect()
    base = rss_mb()
    streams = []
    for _ in range(n):
        if shared:
            streams.append(model.open_stream(prefix=snap))
        else:
            s = model.open_stream()
            s.feed(prompt)
            streams.append(s)
    gc.collect()
    opened = {"rss_mb": rss_mb() - base, "kv_mb": kv_bytes(streams) / 2**20}
    for s in streams:
        s.feed(chunk)
    gc.collect()
    fed = {"rss_mb": rss_mb() - base, "kv_mb": kv_bytes(streams) / 2**20}
    del streams
    model.kv_pool.clear()
    gc.collect()
    return {"holding_prompt": opened, "after_first_chunk": fed}


def bench_model(model_dir: Path, prefix_len: int, n_streams: int, pairs: int, seed: int, threads: int) -> dict:
    import edge_stream as es

    model = es.load(model_dir, intra_op_threads=threads)
    rng = np.random.default_rng(seed)
    vocab = model.manifest.input.vocab_size
    prompt, chunk = rng.integers(0, vocab, prefix_len), rng.integers(0, vocab, CHUNK)
    origin = model.open_stream()
    origin.feed(prompt)
    snap = origin.snapshot()
    del origin
    got = model.open_stream(prefix=snap).feed(chunk).logits
    want = model.open_stream().feed(np.concatenate([prompt, chunk])).logits[-CHUNK:]
    parity = float(np.abs(got - want).max())
    out = {"model": str(model_dir), "kv_io": model.manifest.kv_io, "prefix_tokens": prefix_len,
           "chunk_tokens": CHUNK, "max_abs_logit_diff": parity,
           "ttft": measure_ttft(model, prompt, chunk, snap, pairs)}
    out["memory"] = {"streams": n_streams,
                     "shared": measure_memory(model, prompt, chunk, snap, n_streams, shared=True),
                     "unshared": measure_memory(model, prompt, chunk, snap, n_streams, shared=False)}
    return out


def gqa_tiny_llama(root: Path) -> Path:
    """The tiny Llama (export.tiny_models "llama", seed 0: the committed model's weights) exported
    with `--graph gqa` into `root`."""
    from export.hf import export_hf
    from export.tiny_models import build_tiny

    hf = build_tiny("llama", root / "llama-hf")
    export_hf(str(hf), root / "llama-gqa", graph="gqa", check=False)
    return root / "llama-gqa"


def _memory_cell(side: dict) -> str:
    held, fed = side["holding_prompt"], side["after_first_chunk"]
    return f"{held['kv_mb']:.1f} ({held['rss_mb']:.1f}) / {fed['kv_mb']:.1f} ({fed['rss_mb']:.1f})"


def format_table(results: list[dict]) -> str:
    rows = [("model               kv_io          TTFT shared  unshared  ratio | 100 streams KV MB (RSS MB) "
             "shared: prompt / +chunk | unshared: prompt / +chunk")]
    for r in results:
        t, m = r["ttft"], r["memory"]
        rows.append(f"{Path(r['model']).name:<20}{r['kv_io']:<14}{t['shared_ms']['p50']:>9.2f} ms"
                    f"{t['unshared_ms']['p50']:>7.2f} ms {t['unshared_over_shared']:>5.1f}x | "
                    f"{_memory_cell(m['shared']):<32} | {_memory_cell(m['unshared'])}")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, action="append", help="model directories (default: models/tiny-llama)")
    p.add_argument("--gqa", action="store_true", help="also the tiny Llama's gqa export (shared-buffer KV)")
    p.add_argument("--prefix", type=int, default=512, help="prompt tokens (default 512)")
    p.add_argument("--streams", type=int, default=100, help="streams in the memory figure (default 100)")
    p.add_argument("--pairs", type=int, default=30, help="timed shared/unshared pairs (default 30)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    dirs = list(args.model_dir or [TINY_LLAMA])
    with tempfile.TemporaryDirectory(prefix="bench-prefix-") as tmp:
        if args.gqa:
            log.info("exporting the tiny Llama with --graph gqa into %s", tmp)
            dirs.append(gqa_tiny_llama(Path(tmp)))
        results = []
        for d in dirs:
            log.info("measuring %s", d)
            results.append(bench_model(d, args.prefix, args.streams, args.pairs, args.seed, args.threads))
    print(format_table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    bad = [r["model"] for r in results if not r["max_abs_logit_diff"] <= TOL]
    if bad:
        print(f"FAILED: shared-prefix logits differ from the unshared stream's by more than {TOL} on {bad}")
        return 1
    print(f"check: shared-prefix logits equal the unshared stream's (max diff "
          f"{max(r['max_abs_logit_diff'] for r in results):.2e} <= {TOL})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
