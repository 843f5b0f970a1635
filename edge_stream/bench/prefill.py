"""Batch prefill against PyTorch (issue 14 §6): a long input that arrives at once.

    python -m edge_stream.bench.prefill [--model smollm2-135m-shape] [--lengths 256 1024]
                                        [--labels gqa-fp32-last gqa-int8-qgemm-last gqa-int8-last fp32]
                                        [--rounds 6] [--threads 2] [--cache-dir DIR] [--json FILE]

A robot's instructions, a document, the first chunk after a reconnect: the whole input is
fed in one run and the first token chosen. Engines, one model each, on the same random-weight
model (export.tiny_models, built as `python -m edge_stream.bench` builds it):
  ours-LABEL   StreamSession.feed(all n tokens) on the build LABEL (run.ensure_model), opened
               with logits="last": on a "-last" build (a logits_to_keep input) the lm_head runs
               for the last position only, as a node's LM route runs it
  torch-last   transformers' forward with a fresh DynamicCache and logits_to_keep=1: the same
               work (the reference the goal compares with)
  torch-all    the same with every position's logits (transformers' default)
Rounds: every engine runs every length once per round, in an order that rotates; the first
round is untimed. Ratios are of medians, each ours engine against the torch engine doing the
same work: torch-last for a "-last" build, torch-all for a build without logits_to_keep
(its lm_head runs for every position; the stream keeps the last row). After the timed rounds each ours
engine runs one more prefill at the top length under ORT's profiler (bench.profile): where
its time goes, per op type.
Goal: fp32 at 1024 tokens <= 1.0x PyTorch; int8 faster than that.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from edge_stream.stats import dist

log = logging.getLogger(__name__)

LABELS = ("gqa-fp32-last", "gqa-fp32", "gqa-int8-qgemm-last", "gqa-int8-last", "fp32")


def reference(name: str) -> str:
    """The torch engine that does the same work as engine `name`."""
    return "torch-last" if name.endswith("-last") else "torch-all"


class Ours:
    def __init__(self, label: str, model_dir: Path, threads: int):
        import edge_stream as es

        self.name, self.dir, self.threads = f"ours-{label}", model_dir, threads
        self.model = es.load(model_dir, intra_op_threads=threads)

    def prefill(self, ids: np.ndarray) -> int:
        return _prefill(self.model, ids)

    def profile(self, ids: np.ndarray) -> dict:
        """Op times of one prefill (the second of two) under ORT's profiler, on a second
        session of the same build."""
        from edge_stream.bench.profile import profile_runs

        times = profile_runs(self.dir, self.threads, lambda model: [_prefill(model, ids) for _ in range(2)],
                             slice(-1, None))
        nodes = times.pop("nodes")
        times["top_nodes"] = dict(sorted(nodes.items(), key=lambda kv: -kv[1])[:6])
        return times


def _prefill(model, ids: np.ndarray) -> int:
    """The whole input in one run on a fresh stream; the greedy first token."""
    shared = model.manifest.kv_io == "shared_buffer"
    stream = model.open_stream(kv_window=None, max_chunk=len(ids), logits="last",
                               **({"kv_capacity": len(ids) + 8} if shared else {}))
    return int(np.argmax(stream.feed(ids).logits[-1]))


class Torch:
    def __init__(self, name: str, hf_dir: Path, threads: int, keep: int):
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        self.torch, self.name, self.keep = torch, name, keep
        self.model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()

    def prefill(self, ids: np.ndarray) -> int:
        from transformers import DynamicCache

        with self.torch.inference_mode():
            out = self.model(input_ids=self.torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64))[None],
                             past_key_values=DynamicCache(), use_cache=True, logits_to_keep=self.keep)
        return int(out.logits[0, -1].argmax())


def run(args) -> dict:
    from edge_stream.bench.run import ensure_model, machine_info

    hf_dir = args.cache_dir / f"{args.model}-hf"
    engines = [Ours(label, ensure_model(args.model, label, args.cache_dir), args.threads) for label in args.labels]
    if not (hf_dir / "config.json").is_file():
        raise SystemExit(f"{hf_dir}: no Hugging Face folder (ensure_model builds it with the first label)")
    engines += [Torch("torch-last", hf_dir, args.threads, keep=1), Torch("torch-all", hf_dir, args.threads, keep=0)]
    rng = np.random.default_rng(args.seed)
    vocab = engines[0].model.manifest.input.vocab_size
    prompts = {n: rng.integers(0, vocab, n, dtype=np.int64) for n in args.lengths}
    times = {e.name: {n: [] for n in args.lengths} for e in engines}
    tokens = {e.name: {} for e in engines}
    t_start = time.perf_counter()
    for r in range(args.rounds + 1):
        for k, n in enumerate(args.lengths):
            order = engines[(r + k) % len(engines):] + engines[:(r + k) % len(engines)]
            for e in order:
                t0 = time.perf_counter_ns()
                tokens[e.name][n] = e.prefill(prompts[n])
                if r:  # round 0 warms every shape up
                    times[e.name][n].append((time.perf_counter_ns() - t0) / 1e6)
        log.info("round %d/%d (%.0f s)", r, args.rounds, time.perf_counter() - t_start)
    out = {name: {str(n): dist(v) for n, v in by.items()} for name, by in times.items()}
    ratios = {name: {str(n): out[name][str(n)]["p50"] / out[reference(name)][str(n)]["p50"] for n in args.lengths}
              for name in out if name.startswith("ours-")}
    top = max(args.lengths)
    profiles = {e.name: e.profile(prompts[top]) for e in engines if isinstance(e, Ours)}
    fp32 = [ratios[e.name][str(top)] for e in engines if isinstance(e, Ours) and e.name.startswith("ours-gqa-fp32")]
    references = {name: reference(name) for name in ratios}
    return {"schema": "edge-stream/bench-prefill@1", "machine": machine_info(args.threads), "model": args.model,
            "lengths": args.lengths, "rounds": args.rounds, "ms": out, "ratio_to_torch": ratios,
            "reference": references,
            "same_first_token": {n: len({tokens[e][n] for e in tokens}) == 1 for n in args.lengths},
            "profiles": profiles, "goal": f"fp32 batch prefill at {top} tokens <= 1.0x torch; int8 faster",
            "pass_fp32": bool(fp32) and all(q <= 1.0 for q in fp32),
            "command": "python -m edge_stream.bench.prefill " + " ".join(args.argv),
            "seconds": time.perf_counter() - t_start}


def format_table(report: dict) -> str:
    lengths = report["lengths"]
    lines = [f"# prefill ({report['model']}, {report['machine']['intra_op_threads']} threads, median of "
             f"{report['rounds']} rounds; ratio to the torch engine doing the same work)",
             "| engine | " + " | ".join(f"{n} tokens" for n in lengths) + " |",
             "|---|" + "---|" * len(lengths)]
    for name, by in report["ms"].items():
        cells = []
        for n in lengths:
            ratio = report["ratio_to_torch"].get(name, {}).get(str(n))
            ref = report["reference"].get(name, "").replace("torch-", "")
            cells.append(f"{by[str(n)]['p50']:.0f} ms" + (f" ({ratio:.2f}x {ref})" if ratio is not None else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for name, prof in report["profiles"].items():
        ops = ", ".join(f"{op} {ms:.0f}" for op, ms in list(prof["ops"].items())[:5])
        lines.append(f"\n{name} at {max(lengths)} tokens, profiled run {prof['run_ms']:.0f} ms: {ops} (ms)")
    return "\n".join(lines)


def main(argv=None) -> int:
    from edge_stream.bench.run import DEFAULT_CACHE, DEFAULT_MODEL

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--lengths", nargs="+", type=int, default=[256, 1024])
    p.add_argument("--labels", nargs="+", default=list(LABELS), help="builds (run.ensure_model labels)")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--json", help="write the report here")
    args = p.parse_args(argv)
    import sys

    args.argv = sys.argv[1:] if argv is None else list(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    report = run(args)
    print(format_table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
