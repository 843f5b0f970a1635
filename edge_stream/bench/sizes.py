"""Realistic sizes (issue 14 §3): Qwen2.5-0.5B-, 1.5B- and 3B-shaped models on this machine.

    python -m edge_stream.bench.sizes [--models 0.5b 1.5b 3b] [--precisions int8-qgemm int8 int4]
                                      [--input 1024] [--chunk 16] [--repeats 2] [--decode 24]
                                      [--logits last|all] [--threads 2] [--cache-dir DIR] [--json FILE]

Models: random weights from the shapes' configs (export.tiny_models; 1.5B and 3B saved in
bf16), exported with `export.hf --graph gqa --logits-to-keep` at each precision (built once into
--cache-dir; streams opened with logits="last", as the node's LM route does, so a chunk's
lm_head runs for its last position only; `--logits all` measures builds without that input):
  int8-qgemm  per-channel int8 weights for ORT's integer GEMM (DynamicQuantizeMatMul, export.qgemm)
  int8        the builder's MatMulNBits, 8 bits per block of 32, accuracy level 4
  int4        the builder's MatMulNBits, 4 bits per block of 32, accuracy level 4
Each (model, precision) runs in its own process, one at a time, so its peak RSS is its own
and no other model's weights share the caches or the memory. Per build:
  - TTFT after an `--input`-token input streamed in `--chunk`-token chunks (the last chunk's
    feed plus choosing the token), against batch (the whole input fed at once, plus the
    choice), p50 of `--repeats`;
  - decode ms per token after that input, against the memory-bandwidth floor (weight bytes
    read per token / read bandwidth measured in this run);
  - the chunk's achieved operations per second (weight matmuls and attention, counted from
    the graph), and the matmuls' own rate from ORT's profiler on the last chunks, against the
    peak of the instruction set (bench/peak.c: AVX-512 VNNI vpdpbusd for int8, FMA for fp32,
    every thread busy); which matmul kernels ran (op types; MLAS picks the ISA at load);
  - peak RSS; KV bytes per token per stream; streams with a 4096-entry window per GiB of KV.
Goals: TTFT p50 < 1 s at 3B; <= 150 ms at 1.5B.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from edge_stream.bench.common import timed_ms
from edge_stream.stats import dist

log = logging.getLogger(__name__)

# "tiny": the 2-layer test Qwen2 (export.tiny_models), for smoke runs of the bench itself.
SIZES = {"0.5b": "qwen2.5-0.5b-shape", "1.5b": "qwen2.5-1.5b-shape", "3b": "qwen2.5-3b-shape", "tiny": "qwen2"}
DEFAULT_SIZES = ("0.5b", "1.5b", "3b")
PRECISIONS = ("int8-qgemm", "int8", "int4")
GOALS_MS = {"3b": (1000.0, "<"), "1.5b": (150.0, "<=")}  # TTFT p50, streamed
WINDOW = 4096  # KV entries per stream for the streams-per-GiB figure
PROFILED_CHUNKS = 4  # the last chunks of a profiled stream: their op times give the matmul rate
MATMUL_OPS = {"MatMul", "MatMulNBits", "DynamicQuantizeMatMul", "MatMulInteger", "MatMulIntegerToFloat"}


# ----- what the graph computes -----------------------------------------------------------------


def matmul_weights(onnx_path: Path) -> dict:
    """Multiply-accumulates per token in the weight matmuls (sum of K x N over every matmul with
    a constant weight: projections, MLP, lm_head) and the kernels they run, from the graph."""
    import onnx
    from onnx import helper

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    dims = {t.name: list(t.dims) for t in graph.initializer}
    macs, head, kernels = 0, 0, Counter()
    for node in graph.node:
        if node.op_type not in MATMUL_OPS:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "MatMulNBits":
            k, n = attrs["K"], attrs["N"]
            kind = f"MatMulNBits {attrs['bits']}-bit, block {attrs['block_size']}, accuracy level " \
                   f"{attrs.get('accuracy_level', 0)}"
        elif len(node.input) > 1 and node.input[1] in dims and len(dims[node.input[1]]) == 2:
            k, n = dims[node.input[1]]
            kind = node.op_type
        else:
            continue  # activation x activation: attention's own, counted separately
        macs += k * n
        head = k * n if "logits" in node.output else head
        kernels[kind] += 1
    return {"weight_macs_per_token": macs, "lm_head_macs_per_token": head, "kernels": dict(kernels)}


def attention_macs(decoder: dict, first: int, n: int) -> int:
    """Multiply-accumulates of attention (QK^T and PV) for queries at positions first..first+n-1."""
    keys = sum(p + 1 for p in range(first, first + n))  # causal: query p sees keys 0..p
    return 2 * decoder["num_hidden_layers"] * decoder["num_attention_heads"] * decoder["head_size"] * keys


def kernel_text(kernels: dict, isa: list) -> str:
    """Which MLAS kernels the matmuls run: op types from the graph, the ISA MLAS dispatches on."""
    level = "AMX" if "amx_int8" in isa else "AVX-512 VNNI" if "avx512_vnni" in isa else \
        "AVX-VNNI" if "avx_vnni" in isa else "AVX2"
    names = []
    for kind, count in kernels.items():
        if kind == "DynamicQuantizeMatMul":
            names.append(f"{count} DynamicQuantizeMatMul (MLAS QGEMM u8s8, {level})")
        elif kind.startswith("MatMulNBits"):
            names.append(f"{count} {kind} (MLAS SQNBitGemm, int8 compute, {level})")
        else:
            names.append(f"{count} {kind} (MLAS SGEMM fp32)")
    return "; ".join(names)


# ----- the machine's peak ----------------------------------------------------------------------


def peak_gops(threads: int, cache_dir: Path) -> dict:
    """Arithmetic peak with `threads` busy threads: {"vnni": int8 GOPS, "fma": fp32 GFLOPS},
    from bench/peak.c built here with the C compiler; {"skipped": why} where it cannot run."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return {"skipped": "no C compiler (cc) to build bench/peak.c"}
    exe = cache_dir / "peak"
    src = Path(__file__).with_name("peak.c")
    if not src.is_file():
        return {"skipped": f"{src} is not installed with the package"}
    if not exe.is_file() or exe.stat().st_mtime < src.stat().st_mtime:
        cache_dir.mkdir(parents=True, exist_ok=True)
        build = subprocess.run([cc, "-O2", "-mavx512f", "-mavx512bw", "-mavx512vnni", "-pthread", str(src),
                                "-o", str(exe)], capture_output=True, text=True)
        if build.returncode:
            return {"skipped": f"bench/peak.c did not build: {build.stderr.strip()[-200:]}"}
    out = {"method": f"bench/peak.c: 12 independent chains of one zmm instruction per thread, {threads} threads, "
                     "best of 3"}
    for mode in ("vnni", "fma"):
        runs = []
        for _ in range(3):
            proc = subprocess.run([str(exe), mode, str(threads)], capture_output=True, text=True)
            if proc.returncode:  # SIGILL: the CPU lacks the instruction
                return {"skipped": f"bench/peak.c {mode} failed (exit {proc.returncode}): no AVX-512 VNNI here?"}
            runs.append(float(proc.stdout.split()[-1]))
        out[mode] = max(runs)
    return out


# ----- one build, in its own process ----------------------------------------------------------


def measure_one(model_dir: Path, input_n: int, chunk: int, repeats: int, decode_n: int, threads: int,
                logits: str = "last", seed: int = 0) -> dict:
    """Every figure of one build (runs in a child process: its peak RSS is this build's)."""
    import edge_stream as es
    from edge_stream.bench.lm import kv_bytes_per_token
    from edge_stream.bench.run import read_status_kb

    rss_start = read_status_kb()["VmRSS"]
    t0 = time.perf_counter()
    model = es.load(model_dir, intra_op_threads=threads)
    load_s = time.perf_counter() - t0
    rss_loaded = read_status_kb()["VmRSS"]
    prompt = np.random.default_rng(seed).integers(0, model.manifest.input.vocab_size, input_n, dtype=np.int64)
    capacity = input_n + decode_n + 8

    def first_token(stream):
        gen = stream.generate(max_new_tokens=1 << 20, temperature=0.0, stop_token_ids=())
        return gen, next(gen).token_id

    warm = model.open_stream(kv_window=None, logits=logits, max_chunk=chunk, kv_capacity=4 * chunk)
    for j in range(0, 3 * chunk, chunk):  # first runs of a shape allocate
        warm.feed(prompt[j:j + chunk])
    first_token(warm)[0].close()
    del warm
    streamed, chunks, decode, tokens = [], [], [], []
    for r in range(repeats):
        stream = model.open_stream(kv_window=None, logits=logits, max_chunk=chunk, kv_capacity=capacity)
        for j in range(0, input_n, chunk):
            ms = timed_ms(lambda: stream.feed(prompt[j:j + chunk]))
            chunks.append(ms)
        t = time.perf_counter_ns()
        gen, tok = first_token(stream)
        streamed.append(ms + (time.perf_counter_ns() - t) / 1e6)
        tokens.append(tok)
        if r == 0:
            for i in range(decode_n):
                step = timed_ms(lambda: next(gen))
                if i >= 2:  # the first steps after a chunk-shaped run allocate
                    decode.append(step)
        gen.close()
    batch = []
    for _ in range(repeats):
        stream = model.open_stream(kv_window=None, logits=logits, max_chunk=input_n, kv_capacity=input_n + 8)
        t = time.perf_counter_ns()
        stream.feed(prompt)
        gen, tok = first_token(stream)
        batch.append((time.perf_counter_ns() - t) / 1e6)
        tokens.append(tok)
        gen.close()
    stream = gen = None  # the last stream holds the model: released before the profiled load
    peak_rss = read_status_kb()["VmHWM"]
    manifest = model.manifest
    del model
    gc.collect()
    profile = _profiled_chunks(model_dir, prompt, chunk, threads, logits)
    return {"load_s": load_s, "rss_start_mb": rss_start / 1024, "rss_loaded_mb": rss_loaded / 1024,
            "peak_rss_mb": peak_rss / 1024, "streamed_ms": dist(streamed), "batch_ms": dist(batch),
            "chunk_ms": dist(chunks), "last_chunk_ms": dist(chunks[input_n // chunk - 1::input_n // chunk]),
            "decode_ms": dist(decode), "same_first_token": len(set(tokens)) == 1,
            "kv_bytes_per_token": kv_bytes_per_token(manifest), "profile": profile}


def _profiled_chunks(model_dir: Path, prompt: np.ndarray, chunk: int, threads: int, logits: str) -> dict:
    """Op times of the last PROFILED_CHUNKS chunks of one streamed input, from ORT's profiler."""
    from edge_stream.bench.profile import profile_runs

    def stream_it(model):
        stream = model.open_stream(kv_window=None, logits=logits, max_chunk=chunk, kv_capacity=len(prompt) + 8)
        for j in range(0, len(prompt), chunk):
            stream.feed(prompt[j:j + chunk])

    times = profile_runs(model_dir, threads, stream_it, slice(-PROFILED_CHUNKS, None))
    times.pop("nodes")
    return times


# ----- the report --------------------------------------------------------------------------------


def summarise(size: str, precision: str, model_dir: Path, one: dict, args, bandwidth: dict, peak: dict,
              isa: list) -> dict:
    """Derived figures of one build: ratios, rates against the peak, the goal."""
    from edge_stream.bench.lm import weight_bytes

    decoder = json.loads((model_dir / "genai_config.json").read_text())["model"]["decoder"]
    onnx_path = model_dir / "model.onnx"
    mm = matmul_weights(onnx_path)
    c, n = args.chunk, args.input
    head = 0 if args.logits == "all" else mm["lm_head_macs_per_token"] * (c - 1)  # rows logits_to_keep skips
    gemm_ops = 2 * (mm["weight_macs_per_token"] * c - head)
    attn_ops = 2 * attention_macs(decoder, n - c, c)
    last = one["last_chunk_ms"]["p50"]
    prof = one["profile"]
    matmul_ms = sum(ms for op, ms in prof["ops"].items() if op in MATMUL_OPS)
    int8 = any(k != "MatMul" for k in mm["kernels"])  # every other matmul kind here is integer
    peak_key = "vnni" if int8 else "fma"
    wbytes = weight_bytes(onnx_path)
    floor_ms = wbytes / (bandwidth["read_gb_s"] * 1e9) * 1e3
    kv_bpt = one["kv_bytes_per_token"]
    out = {
        "model": SIZES[size], "precision": precision, "logits": args.logits, "dir": str(model_dir),
        "ttft_streamed_ms": one["streamed_ms"], "ttft_batch_ms": one["batch_ms"],
        "batch_over_streamed": one["batch_ms"]["p50"] / one["streamed_ms"]["p50"],
        "chunk_ms": one["chunk_ms"], "last_chunk_ms": one["last_chunk_ms"],
        "decode_ms_per_token": one["decode_ms"], "weight_mb": wbytes / 2**20, "decode_floor_ms": floor_ms,
        "decode_over_floor": one["decode_ms"]["p50"] / floor_ms,
        "chunk_gops": (gemm_ops + attn_ops) / (last * 1e6), "chunk_ops_g": (gemm_ops + attn_ops) / 1e9,
        "matmul_gops": gemm_ops / (matmul_ms * 1e6) if matmul_ms else None,
        "peak_gops": peak.get(peak_key), "peak_kind": "AVX-512 VNNI int8" if int8 else "AVX-512 FMA fp32",
        "profile": prof, "kernels": kernel_text(mm["kernels"], isa),
        "weight_macs_per_token": mm["weight_macs_per_token"],
        "peak_rss_mb": one["peak_rss_mb"], "rss_loaded_mb": one["rss_loaded_mb"], "load_s": one["load_s"],
        "kv_bytes_per_token": kv_bpt, "kv_bytes_per_token_int8_kv": kv_bpt // 4,
        "streams_per_gib_window4096": int(2**30 // (WINDOW * kv_bpt)),
        "streams_per_gib_window4096_int8_kv": int(2**30 // (WINDOW * kv_bpt // 4)),
        "same_first_token": one["same_first_token"],
    }
    if out["peak_gops"]:
        out["chunk_of_peak"] = out["chunk_gops"] / out["peak_gops"]
        if out["matmul_gops"]:
            out["matmul_of_peak"] = out["matmul_gops"] / out["peak_gops"]
    if size in GOALS_MS:
        bound, op = GOALS_MS[size]
        ttft = one["streamed_ms"]["p50"]
        out["goal"] = f"TTFT p50 {op} {bound:.0f} ms"
        out["pass"] = bool(ttft < bound if op == "<" else ttft <= bound)
    return out


def format_table(report: dict) -> str:
    peak = report["peak"]
    lines = [f"# sizes: {report['machine']['cpu']}, {report['threads']} threads, input {report['input']} tokens "
             f"in {report['chunk']}-token chunks, logits {report['logits']}; peak int8 {peak.get('vnni', '-')} GOPS, "
             f"fp32 {peak.get('fma', '-')} GFLOPS; read bandwidth {report['bandwidth']['read_gb_s']:.1f} GB/s",
             "| model | precision | TTFT streamed p50 | batch p50 | batch/streamed | decode ms/token (floor) | "
             "chunk GOPS (% peak) | matmul GOPS (% peak) | peak RSS | KV B/token | streams/GiB @4096 | goal |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['precision']} | error: {r['error'][:80]} |")
            continue
        pk = r.get("peak_gops") or float("nan")
        mg = r["matmul_gops"] or float("nan")
        goal = "" if "goal" not in r else f"{r['goal']}: {'met' if r['pass'] else 'missed'}"
        lines.append(
            f"| {r['model']} | {r['precision']} | {r['ttft_streamed_ms']['p50']:.0f} ms | "
            f"{r['ttft_batch_ms']['p50'] / 1e3:.1f} s | {r['batch_over_streamed']:.0f}x | "
            f"{r['decode_ms_per_token']['p50']:.0f} ({r['decode_floor_ms']:.0f}) | "
            f"{r['chunk_gops']:.0f} ({100 * r['chunk_gops'] / pk:.0f}%) | {mg:.0f} ({100 * mg / pk:.0f}%) | "
            f"{r['peak_rss_mb'] / 1024:.2f} GiB | {r['kv_bytes_per_token']} | "
            f"{r['streams_per_gib_window4096']} ({r['streams_per_gib_window4096_int8_kv']} int8 KV) | {goal} |")
    return "\n".join(lines)


def run(args) -> int:
    from edge_stream.bench.lm import dram_buffer_mb, memory_bandwidth
    from edge_stream.bench.run import BuildSkipped, ensure_model, machine_info

    machine = machine_info(args.threads)
    peak = peak_gops(args.threads, args.cache_dir)
    bandwidth = memory_bandwidth(args.threads, dram_buffer_mb())
    log.info("peak %s; read bandwidth %.1f GB/s", peak, bandwidth["read_gb_s"])
    report = {"schema": "edge-stream/bench-sizes@1", "machine": machine, "threads": args.threads,
              "input": args.input, "chunk": args.chunk, "logits": args.logits, "repeats": args.repeats, "decode_tokens": args.decode,
              "peak": peak, "bandwidth": bandwidth, "command": " ".join(["python -m edge_stream.bench.sizes",
                                                                        *sys.argv[1:]]),
              "results": []}
    for size in args.models:
        for precision in args.precisions:
            label = f"gqa-{precision}" + ("-last" if args.logits == "last" else "")
            try:
                model_dir = ensure_model(SIZES[size], label, args.cache_dir)
            except BuildSkipped as e:
                report["results"].append({"model": SIZES[size], "precision": precision, "error": str(e)})
                continue
            log.info("measuring %s %s", SIZES[size], precision)
            with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
                cmd = [sys.executable, "-m", "edge_stream.bench.sizes", "--one", str(model_dir), "--out", tmp.name,
                       "--input", str(args.input), "--chunk", str(args.chunk), "--repeats", str(args.repeats),
                       "--decode", str(args.decode), "--threads", str(args.threads), "--logits", args.logits]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode:
                    err = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
                    report["results"].append({"model": SIZES[size], "precision": precision, "error": err})
                    log.error("%s %s failed: %s", size, precision, err)
                    continue
                one = json.loads(Path(tmp.name).read_text())
            result = summarise(size, precision, model_dir, one, args, bandwidth, peak, machine["isa"])
            report["results"].append(result)
            log.info("%s %s: TTFT %.0f ms streamed, %.1f s batch, decode %.1f ms/token, peak RSS %.2f GiB", size,
                     precision, result["ttft_streamed_ms"]["p50"], result["ttft_batch_ms"]["p50"] / 1e3,
                     result["decode_ms_per_token"]["p50"], result["peak_rss_mb"] / 1024)
            if args.json:
                Path(args.json).write_text(json.dumps(report, indent=1) + "\n")  # partial results survive
    print(format_table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", choices=list(SIZES), default=list(DEFAULT_SIZES))
    p.add_argument("--precisions", nargs="+", choices=list(PRECISIONS), default=list(PRECISIONS))
    p.add_argument("--input", type=int, default=1024, help="input tokens before the first token")
    p.add_argument("--chunk", type=int, default=16, help="tokens per streamed chunk")
    p.add_argument("--repeats", type=int, default=2, help="streamed and batch passes per build")
    p.add_argument("--decode", type=int, default=24, help="decode steps after the input (first 2 untimed)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--logits", choices=("last", "all"), default="last",
                   help="last: builds with logits_to_keep, streams opened with logits=\"last\" (the node's LM "
                        "route); all: builds without it, every position's logits")
    from edge_stream.bench.run import DEFAULT_CACHE

    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--json", help="write the report here")
    p.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # child: measure this build
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.input % args.chunk:
        p.error(f"--input {args.input} must be a multiple of --chunk {args.chunk}")
    if args.one:
        one = measure_one(args.one, args.input, args.chunk, args.repeats, args.decode, args.threads, args.logits)
        Path(args.out).write_text(json.dumps(one))
        return 0
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
