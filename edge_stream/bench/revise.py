"""Revisions and input during a generation, measured (`edge-stream bench --scenario revise`).

Two figures of issue 11:
- the cost of revising the last k of N tokens (`feed(chunk, replace_last=k)`, the kept prefix
  never recomputed) against refeeding all N into a fresh stream, in A/B pairs. Goal: >= 50x
  cheaper at N = 2000, k = 4 on the SmolLM2-135M shape;
- the time from a chunk's arrival at a node while its stream generates to its entry into the
  KV cache (the `fed` published: receive -> publish on the node's clock), p50/p99, against one
  decode step, for `input_during_generation` = interleave and interrupt. Each chunk is sent at a
  random point of a decode step. The node runs in its own process, as on a robot.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from edge_stream.bench.common import free_port, run_node_process, write_one_model_launch
from edge_stream.stats import dist, percentiles

log = logging.getLogger(__name__)

GOAL = "refeed N / revise last k >= 50 (N = 2000, k = 4)"


def revise_vs_refeed(model, n: int, k: int, pairs: int, rng: np.random.Generator) -> dict:
    """Median ms of a revision of the last k tokens of an N-token stream, and of feeding the same
    N resulting tokens to a fresh stream; the revised stream's logits are checked against the
    refed one's. Revisions repeat on one stream (as a recognizer's do), so on a shared buffer
    they write in place."""
    vocab = model.manifest.input.vocab_size
    tokens = rng.integers(0, vocab, n, dtype=np.int64)
    stream = model.open_stream()
    stream.feed(tokens)
    revise_ms, refeed_ms, max_diff = [], [], 0.0
    for i in range(pairs + 1):  # the first pair warms up
        tokens[n - k:] = rng.integers(0, vocab, k)
        chunk = tokens[n - k:].copy()
        fresh = model.open_stream()
        for side in ("ab" if i % 2 == 0 else "ba"):  # alternate which goes first
            t0 = time.perf_counter_ns()
            if side == "a":
                revised = stream.feed(chunk, replace_last=k).logits  # [k, vocab]
                revise_ms.append((time.perf_counter_ns() - t0) / 1e6)
            else:
                refed = fresh.feed(tokens).logits[-k:]  # [k, vocab]
                refeed_ms.append((time.perf_counter_ns() - t0) / 1e6)
        max_diff = max(max_diff, float(np.abs(revised - refed).max()))
        del fresh, refed
    revise, refeed = dist(revise_ms[1:]), dist(refeed_ms[1:])
    ratio = refeed["p50"] / revise["p50"]
    log.info("revise: N=%d k=%d: revise %.1f ms, refeed %.0f ms, ratio %.0f", n, k, revise["p50"], refeed["p50"], ratio)
    return {"tokens": n, "k": k, "kv_io": stream.kv_io, "revise_ms": revise, "refeed_ms": refeed, "ratio": ratio,
            "max_logit_diff": max_diff, "goal": GOAL, "pass": ratio >= 50 and max_diff <= 1e-3}


def input_during_generation(model, mode: str, chunks: int, prompt: int, chunk_tokens: int,
                            threads: int, rng: np.random.Generator) -> dict:
    """A node (own process) whose LM generates a long reply; `chunks` chunks of `chunk_tokens` arrive
    one at a time during it. Per chunk: node receive -> its `fed` published (in the KV cache), and
    the same minus the chunk's own run; the decode step (delta infer_ms) to compare with."""
    from edge_stream.node.client import Publisher, Subscriber

    with tempfile.TemporaryDirectory() as tmp:
        ep_in, ep_out = (f"tcp://127.0.0.1:{free_port()}" for _ in range(2))
        launch = write_one_model_launch(Path(tmp) / "revise.toml", "bench-revise", ep_in, ep_out, "lm", model.dir,
                                        ["chat"], threads=threads, max_new_tokens_cap=100000,
                                        input_during_generation=mode)
        proc = run_node_process(launch)
        try:
            sub = Subscriber(["out/"], connect=[ep_out], prefix=True)
            pub = Publisher("chat", connect=[ep_in])
            if not pub.wait_ready(30.0):
                raise SystemExit("revise: the node never subscribed to its input topic")
            return _measure(pub, sub, mode, chunks, prompt, chunk_tokens, model.manifest.input.vocab_size, rng)
        finally:
            proc.terminate()
            proc.wait(30)


def _measure(pub, sub, mode: str, chunks: int, prompt: int, chunk_tokens: int, vocab: int, rng) -> dict:
    in_cache_ms, waited_ms, step_ms = [], [], []
    turn, last = 0, None  # last: the kind of the stream's previous output

    def next_out(kinds: tuple):
        nonlocal last
        while True:
            rec = sub.recv(60.0)
            if rec is None:
                raise SystemExit(f"revise: no {kinds} output within 60 s")
            if rec.header.get("stream") != f"gen{turn}":
                continue
            if rec.kind == "delta" and last == "delta":  # a decode step (a reply's first token, and
                step_ms.append(rec.header["infer_ms"])  # the first after input, come from the feed's logits)
            last = rec.kind
            if rec.kind in kinds:
                return rec

    def generating(n: int) -> bool:
        """Wait for n more deltas; False when the reply ended first (a stop token)."""
        return all(next_out(("delta", "done")).kind == "delta" for _ in range(n))

    # The subscription must be in place before the first output: wait for one that proves it.
    for _ in range(100):
        pub.send(np.array([1], np.int64), stream="probe")
        if sub.recv(0.2) is not None:
            break
    else:
        raise SystemExit("revise: the node's outputs never reached the subscriber")
    while len(in_cache_ms) < chunks:
        pub.send(rng.integers(0, vocab, prompt), stream=f"gen{turn}")
        pub.end(stream=f"gen{turn}", max_new_tokens=100000)
        next_out(("fed",))
        # A few decode steps in, so each chunk meets a generation in full swing.
        while len(in_cache_ms) < chunks and generating(3):
            # Arrive at a random point of the decode step now running, not just as it begins.
            time.sleep(rng.uniform(0, step_ms[-1] / 1e3) if step_ms else 0.0)
            pub.send(rng.integers(0, vocab, chunk_tokens), stream=f"gen{turn}")
            rec = next_out(("fed", "done"))
            if rec.kind == "done" and rec.header["reason"] != "interrupted":
                break  # the reply ended before the chunk reached it: no sample
            fed = rec if rec.kind == "fed" else next_out(("fed",))
            h = fed.header
            total = (h["t_pub_ns"] - h["t_recv_ns"]) / 1e6
            in_cache_ms.append(total)
            waited_ms.append(total - h["infer_ms"])
            if mode == "interrupt":  # the reply stopped: start another
                break
        pub.reset(stream=f"gen{turn}")
        turn += 1
    step = dist(step_ms)
    result = {"mode": mode, "chunks": chunks, "chunk_tokens": chunk_tokens, "prompt": prompt,
              "in_cache_ms": _with_p99(in_cache_ms), "waited_ms": _with_p99(waited_ms), "decode_step_ms": step}
    result["in_cache_p99_per_step"] = result["in_cache_ms"]["p99"] / step["p50"]
    log.info("revise: %s: chunk in cache after p50 %.1f / p99 %.1f ms; decode step p50 %.1f ms", mode,
             result["in_cache_ms"]["p50"], result["in_cache_ms"]["p99"], step["p50"])
    return result


def _with_p99(values) -> dict:
    return {**dist(values), "p99": percentiles(values, (99,))[0], "max": float(np.max(values))}


def scenario_revise(model, cfg, rng: np.random.Generator) -> dict:
    """Both figures on one build (`cfg.revise_*`)."""
    out = revise_vs_refeed(model, cfg.revise_tokens, cfg.revise_k, cfg.revise_pairs, rng)
    out["during_generation"] = [
        input_during_generation(model, mode, cfg.revise_chunks, cfg.revise_prompt, cfg.revise_k, cfg.threads, rng)
        for mode in ("interleave", "interrupt")]
    return out


def format_revise(results: dict) -> str:
    """The terminal table: one block per build."""
    lines = [("revise: the last k of N tokens revised (replace_last) vs all N refed into a fresh stream (ms p50);"
              " a chunk arriving during a generation: node receive -> in the KV cache (ms)")]
    for build, r in results.items():
        lines.append(f"  {build} ({r['kv_io']}): N {r['tokens']}, k {r['k']}: revise {r['revise_ms']['p50']:.1f}, "
                     f"refeed {r['refeed_ms']['p50']:.0f}, ratio {r['ratio']:.0f}, max logit diff "
                     f"{r['max_logit_diff']:.1e}   ({r['goal']}: {'PASS' if r['pass'] else 'FAIL'})")
        for g in r.get("during_generation", ()):
            c, w, d = g["in_cache_ms"], g["waited_ms"], g["decode_step_ms"]
            lines.append(f"  {'':<4}{g['mode']:<11} chunks of {g['chunk_tokens']}: in cache p50 {c['p50']:.1f} / p99 "
                         f"{c['p99']:.1f}, of which waiting p50 {w['p50']:.1f} / p99 {w['p99']:.1f}; decode step p50 "
                         f"{d['p50']:.1f} (p99 in cache = {g['in_cache_p99_per_step']:.2f} steps)")
    return "\n".join(lines)
