"""Parity check: an exported model directory, streamed chunk by chunk through
`StreamSession`, against the PyTorch model's full-sequence logits.

    python -m export.parity ONNX_DIR --reference HF_DIR [--chunkings 4] [--seed 0]

One random token stream (64-200 tokens, within the model's positions) is fed
under several seeded random chunkings (the first is the whole stream in one
chunk, the second one token at a time). Exit status 1 when any figure is out of
the tolerance of the model's precision (TOLERANCES below, and why they are so).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

log = logging.getLogger("export.parity")  # not __name__: "__main__" under python -m


@dataclass(frozen=True)
class Tolerance:
    """Bounds one precision must meet; None = not checked.

    `max_abs`: on logits. `top1`: argmax agreement at every position.
    `top1_confident`: agreement where the reference's top-1 beats its top-2 by
    at least `margin` logits (elsewhere a flat random-weight row makes top-1 a
    coin toss that quantisation may flip without harm). `kl_mean`: mean
    KL(reference || exported) in nats per position.
    """

    max_abs: float | None = None
    top1: float | None = None
    top1_confident: float | None = None
    kl_mean: float | None = None
    margin: float = 0.5


# Bounds for int8/fp16 come from measurements on the tiny random models of
# export.tiny_models (llama, qwen2, gpt2 x 2 weight seeds x 4 stream seeds, 4 chunkings
# each, 128-180 tokens; margin 0.5 leaves 20-100% of positions "confident"):
#   fp16: max abs 2.1e-3..3.3e-3, top-1 >= 0.994, confident top-1 1.0, mean KL <= 1.2e-7
#   int8 (MatMul, per-channel): max abs 0.06..0.12, top-1 >= 0.968, confident 1.0, KL <= 1.4e-4
#   int8 (MatMul, per-tensor):  top-1 >= 0.949, KL <= 2.5e-4
# and on the 30-layer SmolLM2-135M-shaped random Llama (errors grow with depth):
#   fp16: max abs 0.019, top-1 1.0, KL 5.8e-6;  int8: max abs 0.91, top-1 0.926, confident 1.0, KL 0.0104
# fp32 is the issue's bound. fp16's KL bound is 9x the deep model's; fp16 failures
# (overflow to inf/NaN, a wrongly converted op) land orders of magnitude above it. int8's
# bounds pass the deep model with 3x room on KL and fail a broken quantisation (one MLP
# weight scale negated: top-1 0.62, confident 0.85, KL 0.064), but not a subtle one (that
# scale x1.5 gives KL 4e-3 on the tiny llama and passes). max abs is printed, not bounded,
# for fp16/int8: it grows with depth and logit scale (fp16 0.003 -> 0.019 above) where a
# fixed bound would say little. Trained models may quantise differently: pass other bounds
# (export.parity --kl-mean/--top1) when that is expected.
# int4 (MatMulNBits, 4 bits per block of 32, --graph gqa): tiny llama top-1 0.81, confident
# 1.0, KL 9.8e-3; gqa int8 (8 bits, block 32): tiny llama KL 6.4e-5, SmolLM2-135M shape top-1
# 0.93, confident 1.0, KL 4.1e-3. On the 30-layer random SmolLM2-135M shape int4 FAILS
# (top-1 0.27, KL 0.92, the same with the builder's own int4): 4-bit errors compound
# through 30 random layers. The bound is kept: an int4 build has to prove itself on the
# trained model it will serve.
# +kv8 (int8 KV cache, per-channel scales, headroom 2): tiny llama fp32+kv8 KL 5e-6..1.2e-5,
# top-1 >= 0.983 (tests/test_kv_int8.py bounds the tiny model tightly against the fp32-KV graph);
# SmolLM2-135M shape fp32+kv8 KL 3.7e-3, top-1 0.944, confident 1.0. The weights' own bounds
# apply: the cache adds less error than int8 weights do.
TOLERANCES = {
    "fp32": Tolerance(max_abs=1e-4),
    "fp16": Tolerance(top1=0.98, top1_confident=0.99, kl_mean=5e-5),
    "int8": Tolerance(top1=0.85, top1_confident=0.98, kl_mean=3e-2),
    # int8-qgemm: per-channel int8 weights, activations per tensor (export.qgemm); see below.
    "int8-qgemm": Tolerance(top1=0.85, top1_confident=0.98, kl_mean=3e-2),
    "int4": Tolerance(top1=0.7, top1_confident=0.9, kl_mean=0.1),
    # +kv8: an int8 KV cache (export.gqa.quantize_kv) besides the weights' precision; see below.
    "fp32+kv8": Tolerance(top1=0.85, top1_confident=0.98, kl_mean=3e-2),
    "int8+kv8": Tolerance(top1=0.85, top1_confident=0.98, kl_mean=3e-2),
    "int4+kv8": Tolerance(top1=0.7, top1_confident=0.9, kl_mean=0.1),
    "int8-qgemm+kv8": Tolerance(top1=0.85, top1_confident=0.98, kl_mean=3e-2),
}


@dataclass
class ParityReport:
    precision: str
    tokens: int
    chunkings: list = field(default_factory=list)  # chunk sizes per chunking
    max_abs_err: float = 0.0
    mean_abs_err: float = 0.0
    top1_agreement: float = 1.0
    top1_confident_agreement: float = 1.0
    confident_positions: int = 0
    kl_mean: float = 0.0
    kl_max: float = 0.0
    failures: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        return (f"parity [{self.precision}] {self.tokens} tokens x {len(self.chunkings)} chunkings: "
                f"max_abs_err={self.max_abs_err:.3g} mean_abs_err={self.mean_abs_err:.3g} "
                f"top1={self.top1_agreement:.4f} top1_confident={self.top1_confident_agreement:.4f} "
                f"(n={self.confident_positions}) kl_mean={self.kl_mean:.3g} kl_max={self.kl_max:.3g} -> "
                + ("PASS" if self.passed else "FAIL: " + "; ".join(self.failures)))


def progress_logging() -> None:
    """Progress lines on stderr for the `python -m` scripts (the CLI configures its own)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")


def random_chunkings(n_tokens: int, count: int, rng: np.random.Generator) -> list[list[int]]:
    """Chunk sizes summing to n_tokens: all at once, one at a time, then random mixes."""
    out = [[n_tokens], [1] * n_tokens][:count]
    while len(out) < count:
        high = int(rng.choice([4, 17, 64]))
        sizes, left = [], n_tokens
        while left:
            s = min(left, int(rng.integers(1, high + 1)))
            sizes.append(s)
            left -= s
        out.append(sizes)
    return out


def reference_logits(reference: str | Path, token_ids: np.ndarray) -> np.ndarray:
    """[n, vocab] fp32 logits of the PyTorch model over the whole sequence at once."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(reference), dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(token_ids[None].astype(np.int64))).logits  # [1, n, vocab]
    return logits[0].float().numpy()


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def compare(ref: np.ndarray, got: np.ndarray, margin: float) -> dict:
    """Figures for one chunking: [n, vocab] reference vs streamed logits."""
    got = got.astype(np.float32)
    err = np.abs(got - ref)
    top2 = np.sort(ref, axis=-1)[:, -2:]  # [n, 2]
    confident = (top2[:, 1] - top2[:, 0]) >= margin
    agree = ref.argmax(-1) == got.argmax(-1)
    lp, lq = _log_softmax(ref.astype(np.float64)), _log_softmax(got.astype(np.float64))
    kl = (np.exp(lp) * (lp - lq)).sum(-1)  # [n] nats
    return {"max_abs": float(err.max()), "mean_abs": float(err.mean()), "agree": agree,
            "confident": confident, "kl": kl}


def check_parity(model_dir: str | Path, reference: str | Path, chunkings: int = 4, seed: int = 0,
                 n_tokens: int | None = None, providers=None, precision: str | None = None,
                 tolerance: Tolerance | None = None) -> ParityReport:
    """Stream a random token sequence through `model_dir` under `chunkings` chunkings and compare
    with `reference`'s full-sequence logits; bounds from TOLERANCES[precision] unless `tolerance`
    (an int8 KV cache adds "+kv8" to the key: the weights' precision and the cache's)."""
    import edge_stream as es

    t0 = time.perf_counter()
    model = es.load(model_dir, providers=providers)
    m = model.manifest
    precision = (precision or m.precision) + ("+kv8" if m.kv_precision == "int8" else "")
    tol = tolerance or TOLERANCES[precision]
    rng = np.random.default_rng(seed)
    limit = m.limits.max_positions or 200
    n = n_tokens or int(rng.integers(64, 201))
    n = min(n, limit)
    ids = rng.integers(0, m.input.vocab_size, size=n, dtype=np.int64)
    log.info("reference: PyTorch full-sequence logits of %d tokens from %s", n, reference)
    ref = reference_logits(reference, ids)

    report = ParityReport(precision=precision, tokens=n)
    rows = []
    for sizes in random_chunkings(n, chunkings, rng):
        stream = model.open_stream()
        got, start = [], 0
        for s in sizes:
            got.append(stream.feed(ids[start:start + s]).logits)  # [s, vocab]
            start += s
        rows.append(compare(ref, np.concatenate(got), tol.margin))
        report.chunkings.append(sizes)
        log.info("chunking %d (%d chunks): max abs err %.3g", len(report.chunkings), len(sizes), rows[-1]["max_abs"])

    agree = np.concatenate([r["agree"] for r in rows])
    confident = np.concatenate([r["confident"] for r in rows])
    kl = np.concatenate([r["kl"] for r in rows])
    report.max_abs_err = max(r["max_abs"] for r in rows)
    report.mean_abs_err = float(np.mean([r["mean_abs"] for r in rows]))
    report.top1_agreement = float(agree.mean())
    report.confident_positions = int(rows[0]["confident"].sum())
    report.top1_confident_agreement = float(agree[confident].mean()) if confident.any() else 1.0
    report.kl_mean, report.kl_max = float(kl.mean()), float(kl.max())
    report.seconds = time.perf_counter() - t0

    checks = [("max_abs_err", report.max_abs_err, tol.max_abs, "<="),
              ("top1_agreement", report.top1_agreement, tol.top1, ">="),
              ("top1_confident_agreement", report.top1_confident_agreement, tol.top1_confident, ">="),
              ("kl_mean", report.kl_mean, tol.kl_mean, "<=")]
    for name, value, bound, op in checks:
        if bound is None:
            continue
        ok = value <= bound if op == "<=" else value >= bound
        if not ok or not np.isfinite(value):
            report.failures.append(f"{name} {value:.4g} not {op} {bound:g}")
    if confident.any() and tol.top1_confident is not None and report.confident_positions < 8:
        log.warning("only %d positions with a top-1 margin >= %g: top1_confident says little",
                    report.confident_positions, tol.margin)
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Streamed ONNX logits vs PyTorch full-sequence logits.")
    parser.add_argument("model_dir", help="exported model directory (model.onnx + manifest.json)")
    parser.add_argument("--reference", required=True, help="Hugging Face model folder the export came from")
    parser.add_argument("--chunkings", type=int, default=4, help="random chunkings of the stream (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokens", type=int, default=None, help="stream length (default: random 64-200)")
    parser.add_argument("--precision", choices=sorted(TOLERANCES), default=None,
                        help="tolerances to apply (default: the manifest's precision)")
    for name in ("max_abs", "top1", "top1_confident", "kl_mean"):
        parser.add_argument("--" + name.replace("_", "-"), type=float, default=None,
                            help=f"override the precision's {name} bound")
    parser.add_argument("--json", action="store_true", help="print the report as JSON too")
    args = parser.parse_args(argv)
    progress_logging()
    tolerance = None
    overrides = {k: getattr(args, k) for k in ("max_abs", "top1", "top1_confident", "kl_mean")
                 if getattr(args, k) is not None}
    if overrides:
        from edge_stream.runtime.manifest import load_manifest

        precision = args.precision or load_manifest(args.model_dir).precision
        tolerance = replace(TOLERANCES[precision], **overrides)
    report = check_parity(args.model_dir, args.reference, chunkings=args.chunkings, seed=args.seed,
                          n_tokens=args.tokens, precision=args.precision, tolerance=tolerance)
    print(report.summary())
    if args.json:
        d = asdict(report)
        d["chunkings"] = [len(c) for c in d["chunkings"]]
        print(json.dumps(d))
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
