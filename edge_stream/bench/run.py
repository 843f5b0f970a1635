"""Speed figures of the streaming runtime and its peers, measured in one run on the machine at hand.

    python -m edge_stream.bench [--scenario ...] [--precision fp32 int8] [--gqa-precision fp32 int8 int4 int8-kv8]
                            [--peers genai torch] [--quick] [--threads 2] [--json FILE] [--plot DIR]

Scenarios (`--scenario` picks them by name; all by default):
  overhead  StreamSession.feed vs a bare InferenceSession.run with identical feeds (16-token
            chunks and decode steps at several cache lengths, a chunk into a full sliding
            window, greedy generate()); A/B pairs alternate. Goal: median ratio <= 1.05.
  ttft      time to first token after the end of the input, 64..2048 tokens: streamed
            (16-token chunks fed as they arrive, TTFT from the last chunk) vs batch (whole
            input prefilled at once), for our runtime and the peers (bench/lm.py), plus chunk
            latency along the stream. Goal: batch / streamed >= 40 at 1024 tokens.
  decode    ms per token (engines in lockstep) and its ratio to the memory-bandwidth floor
            (weight bytes read per token / read bandwidth measured in the same run).
            Goals: ours/genai <= 1.0 on the same file; int8 <= 0.4 x fp32.
  window    an endless stream through a sliding window with sinks: per-chunk latency and
            process memory at 2k vs `--tokens` tokens (int8 only by default).
  node      the node (own process, tcp loopback): chunk published -> first output received
            minus model run time, p50/p99 at 100 and 1,000 chunks/s over 4 streams, and a
            bare relay as the floor (bench/node.py). Goal: p50 <= 1.1x, p99 <= 1.3x the relay's at 1,000 chunks/s.
  revise    revising the last k of N tokens (feed(chunk, replace_last=k)) vs refeeding all N,
            and a chunk arriving at a node while its stream generates: time to its entry into
            the KV cache vs one decode step (bench/revise.py). Goal: refeed/revise >= 50 at
            N = 2000, k = 4 (fp32 and gqa-fp32 builds by default).
  vad       real-time 16 kHz Silero VAD streams per CPU core, one stream per run vs all
            streams in one batched run (bench/vad.py). Goal: >= 500 per core batched.
  gateway   50 WebSocket sessions through one gateway beside 10 ZeroMQ streams, real-time
            audio into the voice chain (own processes): speech start -> event latency on
            both paths (the gateway adds the difference), gateway CPU per session
            (bench/gateway.py).

Peers (onnxruntime-genai, transformers in PyTorch) are optional: a missing one is skipped
with the reason in the table and the JSON. `--quick` shrinks everything (int8 and gqa
int4 only, no PyTorch unless `--peers torch` asks, two input lengths, a few tokens, 1.5 s
per node rate) to finish in about a minute once models are built. The reference model is
a Llama with SmolLM2-135M's shape and random weights (`export.tiny_models`), built once
into `--cache-dir` by `export.hf` in two graphs: `--precision` builds the optimum graph
(concat KV; int8 = dynamic quantisation of the MatMul weights), `--gqa-precision` the gqa
graph (onnxruntime-genai's model builder, KV in one shared buffer; int8/int4 = MatMulNBits;
int8-kv8 = int8 weights and an int8 KV cache, `export.hf --kv-precision int8`), which genai
also runs, from the same folder (not int8-kv8). Building needs the `export` and `peers`
extras; running ours needs neither.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from edge_stream.bench.common import timed_ms
from edge_stream.stats import dist

log = logging.getLogger(__name__)

SCHEMA = "edge-stream/bench@1"
DEFAULT_MODEL = "smollm2-135m-shape"
DEFAULT_CACHE = Path(".cache/bench-models")
PRECISIONS = ("fp32", "int8")  # optimum graph
GQA_PRECISIONS = ("fp32", "int8", "int4", "int8-kv8")  # gqa graph; -kv8: and an int8 KV cache
SCENARIO_NAMES = ("overhead", "ttft", "decode", "window", "revise", "node", "vad", "gateway")
GOALS = {"overhead": "median stream/bare <= 1.05", "window": "far/near within 1.10 (latency p50, RSS, peak RSS)"}


@dataclass
class BenchConfig:
    """What to measure and how long; `quick()` shrinks it to finish in about a minute."""

    model: str = DEFAULT_MODEL  # export.tiny_models kind, built into cache_dir
    model_dir: Path | None = None  # an existing model directory instead (one precision: as exported)
    precisions: tuple = PRECISIONS
    # The window logic and the fp32 KV cache are the same in both precisions; int8 is 5x faster.
    window_precisions: tuple = ("int8", "gqa-int8")  # build labels
    scenarios: tuple = SCENARIO_NAMES
    threads: int = 2  # ORT intra-op threads (and torch's, and genai's)
    cache_dir: Path = DEFAULT_CACHE
    seed: int = 0
    chunk: int = 16  # tokens per streamed chunk
    # peers (ttft, decode)
    peers: tuple = ("genai", "torch")
    gqa_precisions: tuple = GQA_PRECISIONS  # gqa builds: ours-gqa-X and genai-X on each
    bare_gqa: bool = True  # decode: also a bare ORT loop on each gqa build (our overhead floor)
    # overhead
    pairs: int = 30  # timed A/B pairs per case (after `warmup` untimed ones)
    warmup: int = 3
    cache_lengths: tuple = (128, 512, 1008)
    generate_tokens: int = 16
    # ttft
    ttft_lengths: tuple = (64, 128, 256, 512, 1024, 2048)
    ttft_repeats: int = 2
    ttft_solo: bool = True  # also one engine at a time (warm caches), beside the lockstep pass
    # decode
    decode_prompt: int = 512
    decode_tokens: int = 32
    decode_repeats: int = 2
    # window
    kv_window: int = 1024
    sink_tokens: int = 4
    near_tokens: int = 2048  # the "2k" point
    tokens: int = 100_000  # the far point: tokens streamed in all
    span_tokens: int = 1024  # latency at T = median over the chunks of the last span_tokens before T
    window_chunk: int = 16
    # revise
    revise_precisions: tuple = ("fp32", "gqa-fp32")  # build labels: both KV layouts
    revise_tokens: int = 2000  # N
    revise_k: int = 4  # tokens revised (and tokens per chunk arriving during a generation)
    revise_pairs: int = 5  # A/B pairs: a refeed of N costs seconds
    revise_chunks: int = 30  # chunks arriving during generations, per mode
    revise_prompt: int = 64
    # vad
    vad_dir: Path | None = None  # default: export.silero_vad into cache_dir
    vad_solo_streams: int = 16
    vad_batch_streams: int = 256
    vad_rounds: int = 20
    # node
    node_rates: tuple = (100, 1000)  # chunks/s
    node_streams: int = 4
    node_seconds: float = 4.0  # per rate
    # gateway
    gateway_sessions: int = 50
    gateway_direct: int = 10  # ZeroMQ streams beside them
    gateway_seconds: float = 20.0
    quick_mode: bool = False

    def quick(self) -> "BenchConfig":
        return replace(self, precisions=("int8",), peers=tuple(p for p in self.peers if p != "torch"),
                       gqa_precisions=("int4",), bare_gqa=False, pairs=6, warmup=2,
                       cache_lengths=(128,), generate_tokens=4, ttft_lengths=(64, 256), ttft_repeats=1,
                       ttft_solo=False,
                       decode_prompt=64, decode_tokens=6, decode_repeats=1, kv_window=256, near_tokens=512,
                       tokens=1024, span_tokens=256, revise_tokens=512, revise_pairs=3, revise_chunks=8,
                       vad_batch_streams=128, vad_rounds=6, node_seconds=1.5,
                       gateway_sessions=10, gateway_direct=3, gateway_seconds=8.0, quick_mode=True)


# ----- measurement helpers ---------------------------------------------------------------------


class OrtClock:
    """Stands in for a runner's InferenceSession and adds up the time spent inside `run`,
    so a stream's own Python cost (total minus ORT) is measured within the same call."""

    def __init__(self, session):
        self.session = session
        self.ns = 0

    def run(self, *args, **kwargs):
        t0 = time.perf_counter_ns()
        try:
            return self.session.run(*args, **kwargs)
        finally:
            self.ns += time.perf_counter_ns() - t0

    def __getattr__(self, name):
        return getattr(self.session, name)


def ab_pairs(a: Callable[[], object], b: Callable[[], object], pairs: int, warmup: int,
             before: Callable[[], object] | None = None, clock: OrtClock | None = None,
             names: tuple[str, str] = ("stream_ms", "bare_ms")) -> dict:
    """Time `a` (the stream) and `b` (bare ORT) back to back `pairs` times, alternating
    which goes first.

    Returns both distributions (ms), the per-pair ratio a/b and difference a-b: noise
    lasting longer than one pair (frequency changes, a neighbour's burst) hits both
    sides. With `clock` (installed in a's runner) also `self_ms`: a's time outside ORT.
    `before` runs untimed ahead of every call (e.g. restoring a snapshot).
    """
    before = before or (lambda: None)
    ta, tb, ts = [], [], []
    for i in range(warmup + pairs):
        for side in ("ab" if i % 2 == 0 else "ba"):
            before()
            if side == "a":
                if clock is not None:
                    clock.ns = 0
                ta.append(timed_ms(a))
                if clock is not None:
                    ts.append(ta[-1] - clock.ns / 1e6)
            else:
                tb.append(timed_ms(b))
    ta, tb = np.array(ta[warmup:]), np.array(tb[warmup:])
    out = {names[0]: dist(ta), names[1]: dist(tb), "ratio": dist(ta / tb), "diff_ms": dist(ta - tb)}
    if clock is not None:
        out["self_ms"] = dist(ts[warmup:])
    return out


def read_status_kb() -> dict:
    """VmRSS and VmHWM (peak RSS) of this process in kB, from /proc/self/status (Linux)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0])
    return out


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0 `clear_refs` 5); False where refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def machine_info(threads: int) -> dict:
    import onnxruntime as ort

    cpu = platform.processor() or "unknown"
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and cpu in ("unknown", platform.machine(), ""):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = line
    except OSError:
        pass
    isa = [x for x in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f" {x}" in flags]
    return {
        "cpu": cpu, "isa": isa, "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "onnxruntime": ort.__version__, "numpy": np.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "intra_op_threads": threads,
        "onnxruntime_genai": _version("onnxruntime-genai"), "load_average": os.getloadavg(),  # at the start
    }


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


# ----- models ----------------------------------------------------------------------------------


class BuildSkipped(Exception):
    """A build this machine cannot make (its exporter is not installed)."""


def ensure_model(kind: str, label: str, cache_dir: Path) -> Path:
    """The model directory for `kind` at `label` ("int8": optimum graph; "gqa-int8": gqa graph;
    "-kv8": an int8 KV cache; "-last": a logits_to_keep input, `export.hf --logits-to-keep`),
    built into `cache_dir` on first use with `export.hf` (its parity check skipped: speed
    does not depend on weight values).

    Built into a temporary folder and renamed, so an interrupted build is never reused.
    """
    graph, precision = ("gqa", label[4:]) if label.startswith("gqa-") else ("optimum", label)
    precision, last, _ = precision.partition("-last")  # "-last": a logits_to_keep input (gqa)
    precision, kv8, _ = precision.partition("-kv8")  # "int8-kv8": int8 weights, int8 KV cache
    out = cache_dir / f"{kind}-{label}"
    if (out / "manifest.json").is_file() and not (graph == "gqa" and _other_builder(out)):
        return out
    from edge_stream.runtime.manifest import load_manifest
    from export.gqa import builder_missing
    from export.hf import export_hf
    from export.tiny_models import build_tiny

    if graph == "gqa" and builder_missing():
        raise BuildSkipped(builder_missing())
    without = cache_dir / f"{kind}-{label.removesuffix('-last')}"
    if last and (without / "manifest.json").is_file():
        return _with_logits_to_keep(without, out)
    cache_dir.mkdir(parents=True, exist_ok=True)
    hf_dir = cache_dir / f"{kind}-hf"
    if not (hf_dir / "config.json").is_file():
        log.info("building %s (random weights) in %s", kind, hf_dir)
        build_tiny(kind, hf_dir)
    tmp = cache_dir / f".{kind}-{label}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    export_hf(str(hf_dir), tmp, precision=precision, check=False, graph=graph, kv_precision="int8" if kv8 else "fp32",
              logits_to_keep=bool(last))
    replace(load_manifest(tmp), name=out.name).save(tmp)  # export_hf named it after the temporary folder
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    log.info("built %s in %.0f s", out, time.perf_counter() - t0)
    return out


def _with_logits_to_keep(src: Path, out: Path) -> Path:
    """`out`: the build in `src` with a logits_to_keep input (export.gqa.add_logits_to_keep), its
    weights file hard-linked, not copied or rebuilt (the builder takes minutes at 3B)."""
    from edge_stream.runtime.introspect import draft_manifest
    from edge_stream.runtime.manifest import load_manifest
    from export.gqa import add_logits_to_keep

    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file():
            (os.link if f.name.endswith(".data") else shutil.copy2)(f, tmp / f.name)
    add_logits_to_keep(tmp / "model.onnx")  # rewrites model.onnx only: the linked data is never written
    replace(load_manifest(src), name=out.name, aux=draft_manifest(tmp).aux).save(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _other_builder(model_dir: Path) -> bool:
    """A gqa build written by another onnxruntime-genai release than the one measured now
    (the peer runs the folder its own builder writes: rebuilt)."""
    from export.builder_env import GENAI_VERSION

    source = json.loads((model_dir / "manifest.json").read_text()).get("source", {})
    return f"onnxruntime-genai {GENAI_VERSION} " not in source.get("exporter", "")


def model_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in model_dir.iterdir() if p.is_file() and "onnx" in p.name)


# ----- scenarios -------------------------------------------------------------------------------


def _tokens(rng: np.random.Generator, model, n: int) -> np.ndarray:
    return rng.integers(0, model.manifest.input.vocab_size, size=n, dtype=np.int64)


def bare_feeds(model, states, past: int, first: int, chunk: np.ndarray) -> dict:
    """The feed dict a hand-written loop gives ORT for `chunk` after `past` cached entries whose
    next position is `first`: the same arrays StreamSession builds, made here without it."""
    m = model.manifest
    n = len(chunk)
    feeds = {m.input.name: chunk[None]}  # [1, n]
    mask, pos = m.aux_for("attention_mask"), m.aux_for("position_ids")
    if mask is not None:
        feeds[mask.name] = np.ones((1, past + n), dtype=np.int64)  # [1, past + n]
    if pos is not None:
        feeds[pos.name] = np.arange(first, first + n, dtype=np.int64)[None]  # [1, n]
    for a in m.aux:
        if a.fill == "constant":
            feeds[a.name] = np.asarray(a.value)
        elif a.fill == "logits_to_keep":
            feeds[a.name] = np.zeros(1, dtype=np.int64)  # 0: every position's logits, as StreamSession's default
    for spec, value in zip(m.states, states):
        feeds[spec.input] = value  # kv: [1, kv_heads, past, head_dim]
    return feeds


def scenario_overhead(model, cfg: BenchConfig, rng: np.random.Generator) -> dict:
    """StreamSession vs bare session.run with identical feeds: chunks and decode steps at
    several cache lengths, a chunk into a full sliding window, a greedy generate loop."""
    runner = model.runner
    session = runner.session
    clock = runner.session = OrtClock(session)  # the stream's runs go through the clock; bare runs do not
    try:
        bench = _Overhead(model, session, clock, cfg)
        stream = model.open_stream(kv_window=None)
        for past in cfg.cache_lengths:
            stream.reset()
            if past:
                stream.feed(_tokens(rng, model, past))
            snap = stream.snapshot()
            for label, n in (("chunk", cfg.chunk), ("decode", 1)):
                bench.feed_case(f"{label}{n}@{past}", label, stream, snap, snap.states, _tokens(rng, model, n))
        if model.manifest.kv_states:
            bench.window_case(rng)
        bench.generate_case(stream, rng)
    finally:
        runner.session = session
    cases = bench.cases
    # The goal is per chunk and per decode step; the evict-every-chunk window case is the
    # worst case of a policy that by default pays that copy once per kv_window // 8 entries.
    judged = [c for c in cases if c["kind"] != "window_chunk"]
    worst = max(c["ratio"]["p50"] for c in judged)
    out = {"cases": cases, "worst_median_ratio": worst, "goal": GOALS["overhead"], "pass": worst <= 1.05}
    for c in cases:
        if c["kind"] == "window_chunk":
            chunks_per_eviction = max(1, (cfg.kv_window // 8) // c["tokens"])
            out["window_amortized_ratio"] = 1 + (c["ratio"]["p50"] - 1) / chunks_per_eviction
    return out


def _cache_len(manifest, states) -> int:
    """Entries in a kv cache: the first kv state's length along its sequence axis."""
    for spec, value in zip(manifest.states, states):
        if spec.kind == "kv":
            return int(value.shape[spec.seq_axis])
    return 0


@dataclass
class _Overhead:
    """The overhead cases of one model; `session` is the bare ORT session, `clock` the
    stream's timed stand-in for it."""

    model: object
    session: object
    clock: OrtClock
    cfg: BenchConfig
    cases: list = field(default_factory=list)

    def _logits(self, feeds: dict) -> np.ndarray:
        fetch = self.model.runner.fetch
        return self.session.run(fetch, feeds)[fetch.index(self.model.manifest.output_for("logits"))][0]

    def _add(self, case: dict) -> None:
        self.cases.append(case)
        log.info("overhead %-16s stream %7.2f ms, bare %7.2f ms, own %.3f ms, ratio p50 %.3f",
                 case["case"], case["stream_ms"]["p50"], case["bare_ms"]["p50"],
                 case["self_ms"]["p50"], case["ratio"]["p50"])

    def feed_case(self, name: str, kind: str, stream, snap, states, chunk: np.ndarray) -> None:
        """stream.feed(chunk) from `snap` vs one bare run from `states` (the cache it should see)."""
        past = _cache_len(self.model.manifest, states)
        feeds = bare_feeds(self.model, states, past, snap.next_model_position, chunk)
        # Identical feeds must give identical logits, else the comparison is meaningless.
        stream.restore(snap)
        same = bool(np.array_equal(stream.feed(chunk).logits, self._logits(feeds)))
        fetch = self.model.runner.fetch
        r = ab_pairs(lambda: stream.feed(chunk), lambda: self.session.run(fetch, feeds), self.cfg.pairs,
                     self.cfg.warmup, before=lambda: stream.restore(snap), clock=self.clock)
        self._add({"case": name, "kind": kind, "tokens": len(chunk), "cache_len": past,
                   "identical_logits": same, **r})

    def window_case(self, rng: np.random.Generator) -> None:
        """A chunk into a full sliding window: the stream evicts before its run; the bare run
        gets the already-evicted cache, so the eviction counts as stream overhead. This is
        the worst case (evict_block = chunk: one cache copy per chunk); by default a stream
        evicts kv_window // 8 entries at once, so this cost is paid once every few chunks."""
        m, k, w, n = self.model.manifest, self.cfg.sink_tokens, self.cfg.kv_window, self.cfg.chunk
        stream = self.model.open_stream(kv_window=w, sink_tokens=k, evict_block=n)
        stream.feed(_tokens(rng, self.model, k + w))
        snap = stream.snapshot()
        keep = np.r_[0:k, snap.cache_len - (w - n):snap.cache_len]  # sinks + newest w - n entries
        states = tuple(np.take(value, keep, axis=spec.seq_axis) if spec.kind == "kv" else value
                       for spec, value in zip(m.states, snap.states))
        self.feed_case(f"wchunk{n}@{k}+{w}", "window_chunk", stream, snap, states, _tokens(rng, self.model, n))

    def generate_case(self, stream, rng: np.random.Generator) -> None:
        """Greedy generate() vs the loop one writes by hand on the bare session (run, argmax)."""
        m, n, past = self.model.manifest, self.cfg.generate_tokens, self.cfg.cache_lengths[-1]
        fetch, n_states = self.model.runner.fetch, len(m.states)
        logits_index = fetch.index(m.output_for("logits"))
        stream.reset()
        stream.feed(_tokens(rng, self.model, past))
        snap = stream.snapshot()

        def by_stream():
            return [p.token_id for p in stream.generate(max_new_tokens=n, temperature=0.0, stop_token_ids=())]

        mask, pos = m.aux_for("attention_mask"), m.aux_for("position_ids")
        consts = {a.name: np.asarray(a.value) for a in m.aux if a.fill == "constant"}
        consts.update({a.name: np.array([1], dtype=np.int64) for a in m.aux if a.fill == "logits_to_keep"})
        ones = np.ones((1, snap.cache_len + n), dtype=np.int64)  # attention masks are views of it

        def by_hand():
            states, cached, position = snap.states, snap.cache_len, snap.next_model_position
            token = int(np.argmax(snap.last_logits))
            out = [token]
            for _ in range(n - 1):  # generate runs n - 1 decode steps: its last token stays pending
                feeds = {m.input.name: np.array([[token]], dtype=np.int64), **consts}  # [1, 1]
                if mask is not None:
                    feeds[mask.name] = ones[:, :cached + 1]
                if pos is not None:
                    feeds[pos.name] = np.array([[position]], dtype=np.int64)
                feeds.update(zip((sp.input for sp in m.states), states))
                results = self.session.run(fetch, feeds)
                token = int(np.argmax(results[logits_index][0, -1]))
                states, cached, position = results[-n_states:], cached + 1, position + 1
                out.append(token)
            return out

        stream.restore(snap)
        same = by_stream() == by_hand()
        r = ab_pairs(by_stream, by_hand, max(4, self.cfg.pairs // 2), 1,
                     before=lambda: stream.restore(snap), clock=self.clock)
        per_token = {k: {q: (v / n if q != "n" else v) for q, v in r[k].items()}
                     for k in ("stream_ms", "bare_ms", "diff_ms", "self_ms")}
        self._add({"case": f"generate{n}@{past}", "kind": "generate", "tokens": n, "cache_len": past,
                   "identical_logits": same, **per_token, "ratio": r["ratio"]})


def scenario_window(model, cfg: BenchConfig, rng: np.random.Generator) -> dict:
    """Stream `tokens` through a sliding window; latency and memory at near_tokens vs at the end.

    Memory is read after every chunk of the run. Latency is compared twice: medians over
    the chunks before each point during the run (exposed to load changes over minutes),
    and A/B pairs at the end that alternate a chunk fed from the far state and from the
    near state (rebuilt by replaying the first near_tokens), which the goal uses.
    """
    c, total, near = cfg.window_chunk, cfg.tokens, cfg.near_tokens
    if total % c or near % c or cfg.span_tokens % c:
        raise SystemExit(f"--tokens {total}, near {near} and span {cfg.span_tokens} must be multiples of chunk {c}")
    if not cfg.span_tokens <= near < total:
        raise SystemExit(f"need span {cfg.span_tokens} <= near {near} < tokens {total}")
    opts = {"kv_window": cfg.kv_window, "sink_tokens": cfg.sink_tokens}
    stream = model.open_stream(**opts)
    n_chunks, span = total // c, cfg.span_tokens // c
    tokens = _tokens(rng, model, total).reshape(n_chunks, c)  # [n_chunks, c]
    latency = np.empty(n_chunks)
    rss_kb = np.empty(n_chunks, dtype=np.int64)
    hwm_kb = np.empty(n_chunks, dtype=np.int64)
    max_cache = 0
    gc.collect()
    peak_reset = reset_peak_rss()
    start_kb = read_status_kb()["VmRSS"]
    t_start = time.perf_counter()
    for i in range(n_chunks):
        t0 = time.perf_counter_ns()
        stream.feed(tokens[i])
        latency[i] = (time.perf_counter_ns() - t0) / 1e6
        st = read_status_kb()
        rss_kb[i], hwm_kb[i] = st["VmRSS"], st["VmHWM"]
        max_cache = max(max_cache, stream.cache_len)
        if (i + 1) % max(1, n_chunks // 10) == 0:
            log.info("window: %d/%d tokens, %.1f ms/chunk, RSS %.0f MB", (i + 1) * c, total,
                     np.median(latency[max(0, i - span + 1):i + 1]), rss_kb[i] / 1024)
    elapsed = time.perf_counter() - t_start

    def at(n_tokens: int) -> dict:
        end = n_tokens // c  # chunks fed when `n_tokens` were streamed
        return {"tokens": n_tokens, "latency_ms": dist(latency[end - span:end]),
                "rss_mb": int(rss_kb[end - 1]) / 1024, "peak_rss_mb": int(hwm_kb[end - 1]) / 1024}

    a, b = at(near), at(total)
    far_snap = stream.snapshot()
    near_stream = model.open_stream(**opts)
    for row in tokens[:near // c]:
        near_stream.feed(row)
    # Compare at equal cache length: a window's length cycles as evict_block entries leave
    # at once, and a chunk that evicts costs a copy; feed on (at most one cycle) to match.
    extra = 0
    while near_stream.cache_len != stream.cache_len and extra < n_chunks - near // c - 1:
        near_stream.feed(tokens[near // c + extra])
        extra += 1
    near_snap = near_stream.snapshot()
    probe = _tokens(rng, model, c)
    pairs = ab_pairs(lambda: stream.feed(probe), lambda: near_stream.feed(probe), cfg.pairs, cfg.warmup,
                     before=lambda: (stream.restore(far_snap), near_stream.restore(near_snap)),
                     names=("far_ms", "near_ms"))
    ratios = {"latency_p50": pairs["ratio"]["p50"],
              "latency_p50_in_run": b["latency_ms"]["p50"] / a["latency_ms"]["p50"],
              "latency_p90_in_run": b["latency_ms"]["p90"] / a["latency_ms"]["p90"],
              "rss": float(b["rss_mb"] / a["rss_mb"]), "peak_rss": float(b["peak_rss_mb"] / a["peak_rss_mb"])}
    log.info("window: ratios %s", {k: round(v, 3) for k, v in ratios.items()})
    gated = ("latency_p50", "rss", "peak_rss")
    buckets = np.array_split(np.arange(n_chunks), min(n_chunks, 200))  # the plot's series: median per bucket
    trace = [[int(b[-1] + 1) * c, float(np.median(latency[b])), int(rss_kb[b[-1]]) / 1024] for b in buckets]
    return {"kv_window": cfg.kv_window, "trace_tokens_ms_rss_mb": trace, "sink_tokens": cfg.sink_tokens, "chunk": c, "near": a, "far": b,
            "latency_pairs": pairs, "ratio": ratios, "max_cache_len": max_cache,
            "ab_cache_len": stream.cache_len, "ab_near_tokens": near + extra * c,
            "rss_at_start_mb": start_kb / 1024, "peak_reset": peak_reset, "seconds": elapsed,
            "tokens_per_s": total / elapsed, "goal": GOALS["window"],
            "pass": all(ratios[k] <= 1.10 for k in gated)}


def scenario_revise(model, cfg: BenchConfig, rng: np.random.Generator) -> dict:
    from edge_stream.bench.revise import scenario_revise as run  # it starts a node process

    return run(model, cfg, rng)


PER_MODEL = {"overhead": scenario_overhead, "window": scenario_window, "revise": scenario_revise}  # ours, per precision
CROSS_ENGINE = ("ttft", "decode")  # ours and peers in lockstep (bench/lm.py)


# ----- running and reporting -------------------------------------------------------------------


def run_bench(cfg: BenchConfig, checkpoint: Callable[[dict], None] | None = None) -> dict:
    """Run the chosen scenarios; returns the JSON-ready report. `checkpoint(report)` is called
    after every scenario, so a long run that fails late keeps what it measured."""
    import edge_stream as es
    from edge_stream.bench import lm as bench_lm
    from edge_stream.bench.node import scenario_node
    from edge_stream.bench.vad import scenario_vad

    unknown = [s for s in cfg.scenarios if s not in SCENARIO_NAMES]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {unknown}; choose from {', '.join(SCENARIO_NAMES)}")
    report = {"schema": SCHEMA, "machine": machine_info(cfg.threads),
              "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
              "models": {}, "skipped": {}, "results": {}}

    def save() -> None:
        if checkpoint is not None:
            checkpoint({**report, "partial": True})

    lm_scenarios = [s for s in cfg.scenarios if s in PER_MODEL or s in CROSS_ENGINE]
    if cfg.model_dir:
        targets = [("as-exported", Path(cfg.model_dir))]
    else:
        targets = [(p, None) for p in cfg.precisions] + [(f"gqa-{p}", None) for p in cfg.gqa_precisions]
    targets = targets if lm_scenarios else []
    window_on = [p for p, _ in targets if p in cfg.window_precisions] or [t[0] for t in targets[-1:]]
    revise_on = [p for p, _ in targets if p in cfg.revise_precisions] or [t[0] for t in targets[-1:]]
    loaded = {}  # build label -> model: loaded once, shared by every scenario
    for label, model_dir in targets:
        try:
            model_dir = model_dir or ensure_model(cfg.model, label, Path(cfg.cache_dir))
        except BuildSkipped as exc:
            report["skipped"]["gqa"] = str(exc)
            log.warning("%s skipped: %s", label, exc)
            continue
        loaded[label] = model = es.load(model_dir, intra_op_threads=cfg.threads)
        report["models"][label] = {"dir": str(model_dir), "name": model.name, "kv_io": model.manifest.kv_io,
                                   "onnx_mb": model_bytes(model_dir) / 2**20}
    for name in [s for s in cfg.scenarios if s in PER_MODEL]:
        for precision, model in loaded.items():
            if name == "window" and precision not in window_on or name == "revise" and precision not in revise_on:
                continue
            if name == "overhead" and model.manifest.kv_io != "concat":
                continue  # its bare loop feeds concat KV; gqa builds: ours-gqa vs bare-gqa in decode
            report["results"].setdefault(name, {})[precision] = _timed_scenario(
                f"{name}, {precision}", lambda: PER_MODEL[name](model, cfg, np.random.default_rng(cfg.seed)))
            save()
    cross = [s for s in cfg.scenarios if s in CROSS_ENGINE]
    if cross:
        hf_dir = None if cfg.model_dir else Path(cfg.cache_dir) / f"{cfg.model}-hf"
        engines, skipped = bench_lm.make_engines(cfg, {p: (m, m.dir / m.manifest.model_file) for p, m in loaded.items()},
                                                 hf_dir)
        report["skipped"].update(skipped)
        report["engines"] = [e.name for e in engines]
        for name in cross:
            fn = bench_lm.scenario_ttft if name == "ttft" else bench_lm.scenario_decode
            report["results"][name] = _timed_scenario(name, lambda: fn(engines, cfg, np.random.default_rng(cfg.seed)))
            save()
        del engines
    loaded.clear()
    gc.collect()
    if "vad" in cfg.scenarios:
        report["results"]["vad"] = _timed_scenario("vad", lambda: scenario_vad(cfg, np.random.default_rng(cfg.seed)))
        save()
    if "node" in cfg.scenarios:
        report["results"]["node"] = _timed_scenario("node", lambda: scenario_node(cfg, None))
        save()
    if "gateway" in cfg.scenarios:
        from edge_stream.bench.gateway import scenario_gateway

        report["results"]["gateway"] = _timed_scenario("gateway", lambda: scenario_gateway(
            cfg.gateway_sessions, cfg.gateway_direct, cfg.gateway_seconds))
    return report


def _timed_scenario(label: str, fn: Callable[[], dict]) -> dict:
    log.info("== %s", label)
    t0 = time.perf_counter()
    result = fn()
    result["seconds"] = result.get("seconds", time.perf_counter() - t0)
    return result


def format_table(report: dict) -> str:
    """The report as terminal tables, one per scenario."""
    lines = []
    m = report["machine"]
    lines.append(f"{m['cpu']} | {m['usable_cores']}/{m['logical_cores']} cores | ISA {' '.join(m['isa']) or '-'} | "
                 f"onnxruntime {m['onnxruntime']} | {m['intra_op_threads']} intra-op threads")
    res = report["results"]
    if "overhead" in res:
        lines += ["", "overhead: StreamSession vs bare InferenceSession.run (identical feeds; ratio per A/B pair;"
                  " own = stream time outside ORT)",
                  f"  {'prec':<12}{'case':<16}{'stream ms':>10}{'bare ms':>10}{'own ms':>8}{'ratio p10':>10}{'p50':>8}"
                  f"{'p90':>8}  same"]
        for prec, r in res["overhead"].items():
            for cs in r["cases"]:
                lines.append(f"  {prec:<12}{cs['case']:<16}{cs['stream_ms']['p50']:>10.2f}{cs['bare_ms']['p50']:>10.2f}"
                             f"{cs['self_ms']['p50']:>8.3f}"
                             f"{cs['ratio']['p10']:>10.3f}{cs['ratio']['p50']:>8.3f}{cs['ratio']['p90']:>8.3f}"
                             f"  {'yes' if cs['identical_logits'] else 'NO'}")
            lines.append(f"  {prec:<12}worst median ratio over chunks and decode steps {r['worst_median_ratio']:.3f} "
                         f"({r['goal']}): {'PASS' if r['pass'] else 'FAIL'}")
            if "window_amortized_ratio" in r:
                lines.append(f"  {prec:<12}full window, default evict_block (kv_window // 8): amortized ratio "
                             f"{r['window_amortized_ratio']:.3f}")
    if "window" in res:
        lines += ["", "window: sliding window with sinks, at the near point vs after all tokens (ms: in-run medians)"]
        for prec, r in res["window"].items():
            a, b, q = r["near"], r["far"], r["ratio"]
            lines.append(f"  {prec}: sinks {r['sink_tokens']} + window {r['kv_window']}, chunks of {r['chunk']}, "
                         f"{r['tokens_per_s']:.0f} tokens/s, max cache {r['max_cache_len']}")
            lines.append(f"  {'':<12}{'tokens':>8}{'ms p50':>9}{'ms p90':>9}{'RSS MB':>10}{'peak MB':>10}")
            for p in (a, b):
                lines.append(f"  {'':<12}{p['tokens']:>8}{p['latency_ms']['p50']:>9.2f}{p['latency_ms']['p90']:>9.2f}"
                             f"{p['rss_mb']:>10.1f}{p['peak_rss_mb']:>10.1f}")
            lines.append(f"  {'':<12}{'ratio':>8}{q['latency_p50_in_run']:>9.3f}{q['latency_p90_in_run']:>9.3f}"
                         f"{q['rss']:>10.3f}{q['peak_rss']:>10.3f}")
            lp = r["latency_pairs"]
            lines.append(f"  {'':<12}A/B pairs at the end: far {lp['far_ms']['p50']:.2f} ms, near {lp['near_ms']['p50']:.2f} ms,"
                         f" ratio p10/p50/p90 {lp['ratio']['p10']:.3f}/{lp['ratio']['p50']:.3f}/{lp['ratio']['p90']:.3f}"
                         f"   ({r['goal']}: {'PASS' if r['pass'] else 'FAIL'})")
    if "revise" in res:
        from edge_stream.bench.revise import format_revise

        lines += ["", format_revise(res["revise"])]
    if "ttft" in res:
        r = res["ttft"]
        lines += ["", f"ttft: first token after the end of the input, ms p50: streamed ({r['chunk']}-token chunks fed as "
                  "they arrive) / batch (whole input at once); chunk = one chunk's feed, p50",
                  f"  {'engine':<15}" + "".join(f"{n:>15}" for n in r["lengths"]) + f"{'chunk ms':>10}  same"]
        for name, e in r["engines"].items():
            cells = "".join(f"{e['streamed_ms'][str(n)]['p50']:>8.0f}/{e['batch_ms'][str(n)]['p50']:<6.0f}"
                            for n in r["lengths"])
            lines.append(f"  {name:<15}{cells}{e['chunk_ms']['p50']:>10.1f}  {'yes' if e['same_first_token'] else 'NO'}")
        n = str(r["goal_length"])
        for name, e in r["engines"].items():
            if name.startswith("ours-"):
                solo = f"; solo {e['solo']['batch_over_streamed'][n]:.1f}" if "solo" in e else ""
                lines.append(f"  {name}: batch/streamed at {n} = {e['batch_over_streamed'][n]:.1f} lockstep{solo}")
        lines.append(f"  ({r['goal']}, lockstep: {'PASS' if r['pass'] else 'FAIL'})")
        if "pass_solo" in r:
            lines.append(f"  ({r['goal']}, solo: " + ", ".join(
                f"{k} {'PASS' if v else 'FAIL'}" for k, v in r["pass_solo"].items()) + ")")
        solo_rows = {k: v["solo"] for k, v in r["engines"].items() if "solo" in v}
        if solo_rows:
            lines.append("  solo (one engine at a time, warm caches), ms p50 streamed/batch:")
            for name, e in solo_rows.items():
                cells = "".join(f"{e['streamed_ms'][str(m)]['p50']:>8.0f}/{e['batch_ms'][str(m)]['p50']:<6.0f}"
                                for m in r["lengths"])
                lines.append(f"  {name:<15}{cells}")
        for what, ratios in r["ratios"].items():
            if ratios:
                lines.append(f"  ours/peer {what}: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    if "decode" in res:
        r = res["decode"]
        bw = r["bandwidth"]
        lines += ["", f"decode: ms per token after a {r['prompt_tokens']}-token input; floor = weight bytes / "
                  f"read bandwidth ({bw['read_gb_s']:.1f} GB/s read, {bw['copy_gb_s']:.1f} GB/s copy over "
                  f"{bw['buffer_mb']} MiB, {bw['threads']} threads); cached = bandwidth over a buffer of the "
                  "model's size",
                  f"  {'engine':<20}{'p10':>8}{'p50':>8}{'p90':>8}{'tok/s':>8}{'weights MB':>12}{'floor ms':>10}"
                  f"{'x floor':>9}{'x cached':>10}"]
        for name, e in r["engines"].items():
            d = e["ms_per_token"]
            lines.append(f"  {name:<20}{d['p10']:>8.1f}{d['p50']:>8.1f}{d['p90']:>8.1f}{e['tokens_per_s']:>8.1f}"
                         f"{e['weight_mb']:>12.0f}{e['floor_ms']:>10.1f}{e['ratio_to_floor']:>9.2f}"
                         f"{e['ratio_to_floor_at_weight_size']:>10.2f}")
        if r["ratios"]:
            lines.append("  ours/peer: " + ", ".join(f"{k} {v:.2f}" for k, v in r["ratios"].items()))
        if "vs_genai" in r:
            lines.append("  ours/genai on the same file: ms p50 per step (ours spinning on / off / genai), ratio "
                         "(spinning on / off), CPU ms per step (on / off / genai)")
            for pair, by_pattern in r["vs_genai"]["patterns"].items():
                for pattern, v in by_pattern.items():
                    ms = "".join(f"{x['p50']:>7.1f}" for x in v["ms"].values())  # spinning on, off, genai
                    cpu = "".join(f"{x:>7.1f}" for x in v["cpu_ms_per_step"].values())
                    lines.append(f"  {pair:<28}{pattern:<14}{ms}{v['ratio_spin_on']:>8.2f}{v['ratio_spin_off']:>7.2f}"
                                 f"   {cpu}")
                    lines.append("      ratios on/off by load order: " + ", ".join(
                        f"{order[7:]} {q['ratio_spin_on']:.2f}/{q['ratio_spin_off']:.2f}"
                        for order, q in v["by_load_order"].items()))
            lines.append(f"  ({r['vs_genai']['goal']}: {'PASS' if r['vs_genai']['pass'] else 'FAIL'})")
        if "int8_over_fp32" in r:
            q = r["int8_over_fp32"]
            for graph, ratio in q["graphs"].items():
                lines.append(f"  int8/fp32 {graph} graph {ratio:.2f} ({q['goal']}: "
                             f"{'PASS' if q['pass'][graph] else 'FAIL'})")
    if "vad" in res:
        r = res["vad"]
        lines += ["", f"vad: real-time 16 kHz streams per core ({r['block_ms']:.0f} ms blocks, 1 ORT thread; "
                  "CPU time of the feeding thread, wall beside it)",
                  f"  {'':<10}{'streams':>8}{'cpu us/blk':>12}{'per core':>10}{'per core (wall)':>17}"]
        for side in ("solo", "batched"):
            e = r[side]
            lines.append(f"  {side:<10}{e['streams']:>8}{e['cpu_us_per_stream_block']['p50']:>12.1f}"
                         f"{e['streams_per_core']:>10.0f}{e['streams_per_core_wall']:>17.0f}")
        lines.append(f"  batched/solo x{r['batched_over_solo']:.1f}   ({r['goal']}: {'PASS' if r['pass'] else 'FAIL'})")
    if "node" in res:
        r = res["node"]
        lines += ["", f"node: chunk published -> first output received, minus model run time, ms ({r['streams']} "
                  f"streams, {r['transport']}, {r['seconds_per_rate']:g} s per rate)",
                  f"  {'':<16}{'p50':>8}{'p99':>8}{'max':>8}{'model p50':>11}{'received':>14}"]
        rows = [(f"{k} chunks/s", v) for k, v in r["rates"].items()]
        rows.append((f"relay {r['baseline_relay']['rate']}/s", r["baseline_relay"]))
        for label, v in rows:
            o = v["overhead_ms"]
            lines.append(f"  {label:<16}{o['p50']:>8.3f}{o['p99']:>8.3f}{o['max']:>8.2f}{v['infer_ms']['p50']:>11.3f}"
                         f"{v['received']:>8}/{v['sent']:<6}")
        vs = r.get("vs_relay")
        if vs is not None:
            cpu = vs["cpu_us_per_chunk"]
            lines.append(f"  node/relay at {r['baseline_relay']['rate']}/s: p50 {vs['overhead_ratio']['p50']:.2f}x, "
                         f"p99 {vs['overhead_ratio']['p99']:.2f}x"
                         + (f"; CPU per chunk {cpu['node']:.0f} vs {cpu['relay']:.0f} us" if None not in cpu.values() else ""))
        lines.append(f"  ({r['goal']}: {'PASS' if r['pass'] else 'FAIL'})")
    if "gateway" in res:
        from edge_stream.bench.gateway import format_gateway

        lines += ["", format_gateway(res["gateway"])]
    for peer, reason in report.get("skipped", {}).items():
        lines.append(f"\n{'gqa builds' if peer == 'gqa' else 'peer ' + peer} skipped: {reason}")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = BenchConfig()
    p.add_argument("--scenario", nargs="+", default=list(d.scenarios), choices=list(SCENARIO_NAMES),
                   help="scenarios to run (default: all)")
    p.add_argument("--precision", nargs="+", choices=list(PRECISIONS),
                   help="precisions to build and measure (default: fp32 int8; quick: int8)")
    p.add_argument("--window-precision", nargs="+",
                   choices=list(PRECISIONS) + [f"gqa-{p}" for p in GQA_PRECISIONS],
                   help="builds the window scenario runs on (default: int8 gqa-int8, else the last one measured)")
    p.add_argument("--model", default=d.model, help=f"export.tiny_models kind to build (default {d.model})")
    p.add_argument("--model-dir", type=Path, help="benchmark this model directory instead of building one")
    p.add_argument("--cache-dir", type=Path, default=d.cache_dir, help="where built models are kept")
    p.add_argument("--threads", type=int, default=d.threads, help="ORT intra-op threads (default 2)")
    p.add_argument("--quick", action="store_true", help="fewer repeats and tokens: about a minute")
    p.add_argument("--tokens", type=int, help="window: tokens streamed in all (default 100000; quick 4096)")
    p.add_argument("--window-chunk", type=int, help="window: tokens per chunk (default 16)")
    p.add_argument("--kv-window", type=int, help="window: recent entries kept (default 1024; quick 256)")
    p.add_argument("--pairs", type=int, help="overhead: timed A/B pairs per case (default 30)")
    p.add_argument("--peers", nargs="*", choices=list(d.peers),
                   help="peers measured beside ours in ttft/decode (default: genai torch; none: --peers)")
    p.add_argument("--gqa-precision", nargs="*", choices=list(GQA_PRECISIONS),
                   help="gqa builds (export.hf --graph gqa) to measure with our runtime and genai's "
                        "(default fp32 int8 int4 int8-kv8; quick int4; none: --gqa-precision)")
    p.add_argument("--ttft-lengths", nargs="+", type=int, help="ttft: input lengths (default 64 ... 2048)")
    p.add_argument("--ttft-repeats", type=int, help="ttft: passes over every length (default 2)")
    p.add_argument("--no-ttft-solo", action="store_true",
                   help="ttft: skip the one-engine-at-a-time pass (default: run it; quick: skip)")
    p.add_argument("--decode-prompt", type=int, help="decode: input tokens before generating (default 512)")
    p.add_argument("--decode-tokens", type=int, help="decode: tokens generated per repeat (default 32)")
    p.add_argument("--vad-dir", type=Path, help="vad/node: a Silero VAD model directory (default: exported into the cache)")
    p.add_argument("--node-seconds", type=float, help="node: seconds per rate (default 4; quick 1)")
    p.add_argument("--gateway-sessions", type=int, help="gateway: WebSocket sessions (default 50; quick 10)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the report as JSON")
    p.add_argument("--plot", type=Path, metavar="DIR", help="also write PNG plots there (needs the plot extra)")


def config_from_args(args) -> BenchConfig:
    cfg = BenchConfig(model=args.model, model_dir=args.model_dir, scenarios=tuple(args.scenario),
                      threads=args.threads, cache_dir=args.cache_dir, seed=args.seed)
    if args.quick:
        cfg = cfg.quick()
    overrides = {"precisions": tuple(args.precision or ()) or None,
                 "window_precisions": tuple(args.window_precision or ()) or None,
                 "tokens": args.tokens, "window_chunk": args.window_chunk, "kv_window": args.kv_window,
                 "pairs": args.pairs, "peers": tuple(args.peers) if args.peers is not None else None,
                 "gqa_precisions": tuple(args.gqa_precision) if args.gqa_precision is not None else None,
                 "ttft_lengths": tuple(args.ttft_lengths or ()) or None, "decode_tokens": args.decode_tokens,
                 "ttft_repeats": args.ttft_repeats, "decode_prompt": args.decode_prompt,
                 "vad_dir": args.vad_dir, "node_seconds": args.node_seconds,
                 "gateway_sessions": args.gateway_sessions,
                 "ttft_solo": False if args.no_ttft_solo else None}
    return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})


def run(args) -> int:
    cfg = config_from_args(args)

    def checkpoint(partial: dict) -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(partial, indent=1) + "\n")

    report = run_bench(cfg, checkpoint)
    report["command"] = " ".join(sys.argv)
    print(format_table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        print(f"\nwrote {args.json}")
    if args.plot:
        from edge_stream.bench.plot import write_plots

        written, reason = write_plots(report, args.plot)
        print(f"wrote {', '.join(map(str, written))}" if written else f"no plots: {reason}")
    return 0


def add_commands(subparsers) -> None:
    """Register `bench` on the top-level CLI's subparsers."""
    p = subparsers.add_parser("bench", help="measure TTFT, decode, node overhead, VAD capacity and windowed "
                              "streams, beside onnxruntime-genai and PyTorch",
                              description=__doc__.split("\n\n")[0])
    add_arguments(p)
    p.set_defaults(func=run)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge_stream.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("optimum").setLevel(logging.ERROR)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
