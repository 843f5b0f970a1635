"""Make a model directory for Silero VAD from the installed `silero_vad` package.

    python -m export.silero_vad -o models/silero-vad
    python -m export.silero_vad -o models/silero-vad --bench

Copies `silero_vad.onnx` (v5/v6: inputs `input` [batch, n], `state` [2, batch, 128],
`sr` int64 scalar; outputs `output` [batch, 1], `stateN`) and writes manifest.json.
The state shape and its batch axis are read from the graph; block (512) and context
(64) at 16 kHz are not in the graph, they come from silero's OnnxWrapper. Ends by
loading the directory and checking that 1 s of silence is not speech. Never imports
torch and never downloads anything.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from edge_stream.runtime.manifest import AuxSpec, Blocking, EventsSpec, InputSpec, Manifest, OutputSpec, StateSpec

ONNX_FILE = "silero_vad.onnx"
SAMPLE_RATE = 16000
BLOCK = 512  # OnnxWrapper: "512 for 16000"
CONTEXT = 64  # OnnxWrapper: context_size = 64 if sr == 16000


def find_onnx(name: str = ONNX_FILE) -> Path:
    """Path of `name` inside the installed silero_vad package, found without importing it
    (its __init__ imports torch, which a robot does not have)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("silero_vad is not installed: pip install --no-deps silero-vad")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / name
    if not path.is_file():
        sys.exit(f"{path}: not found in the installed silero_vad package")
    return path


def state_spec_from_graph(onnx_path: Path, name: str = "state") -> tuple[tuple[int, ...], int]:
    """(shape with batch 1, batch axis) of the state input: the one dynamic axis is the batch."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    inp = next((i for i in graph.input if i.name == name), None)
    if inp is None:
        sys.exit(f"{onnx_path}: no input named {name!r}; inputs are {[i.name for i in graph.input]}")
    dims = inp.type.tensor_type.shape.dim
    dynamic = [i for i, d in enumerate(dims) if not d.HasField("dim_value")]
    if len(dynamic) != 1:
        sys.exit(f"{onnx_path}: state {name!r} has dims {[d.dim_value or d.dim_param for d in dims]}; "
                 "expected exactly one dynamic (batch) axis")
    batch_axis = dynamic[0]
    shape = tuple(1 if i == batch_axis else int(d.dim_value) for i, d in enumerate(dims))
    return shape, batch_axis


def build_manifest(onnx_path: Path) -> Manifest:
    shape, batch_axis = state_spec_from_graph(onnx_path)
    try:
        version = importlib.metadata.version("silero-vad")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return Manifest(
        name="silero-vad",
        input=InputSpec(name="input", kind="samples", dtype="float32"),
        states=(StateSpec(input="state", output="stateN", kind="recurrent", shape=shape,
                          dtype="float32", batch_axis=batch_axis),),
        aux=(AuxSpec(name="sr", fill="constant", dtype="int64", value=SAMPLE_RATE),),
        outputs=(OutputSpec(name="output", role="probability"),),
        blocking=Blocking(block=BLOCK, context=CONTEXT, sample_rate=SAMPLE_RATE),
        events=EventsSpec(kind="vad", threshold=0.5, min_silence_ms=100.0, speech_pad_ms=30.0),
        source={"package": "silero-vad", "version": version, "file": onnx_path.name,
                "sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest()},
    )


def export(out_dir: Path) -> Path:
    """Write model.onnx + manifest.json into `out_dir`, then check the result; returns out_dir."""
    src = find_onnx()
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = build_manifest(src)
    print(f"copying {src} -> {out_dir / manifest.model_file}")
    shutil.copyfile(src, out_dir / manifest.model_file)
    print(f"state {manifest.states[0].input!r}: shape {list(manifest.states[0].shape)}, "
          f"batch axis {manifest.states[0].batch_axis} (from the graph)")
    print(f"wrote {manifest.save(out_dir)}")
    check(out_dir)
    return out_dir


def check(model_dir: Path) -> None:
    """The check that can fail: the directory loads and 1 s of silence is not speech."""
    import edge_stream as es

    stream = es.load(model_dir).open_stream()
    out = stream.feed(np.zeros(SAMPLE_RATE, dtype=np.float32))
    if len(out.probs) != SAMPLE_RATE // BLOCK or float(out.probs.max()) >= 0.5 or out.events:
        sys.exit(f"check failed: 1 s of silence gave {len(out.probs)} blocks, max probability "
                 f"{float(out.probs.max()):.3f}, events {out.events}")
    print(f"check ok: 1 s of silence -> {len(out.probs)} blocks, max probability {float(out.probs.max()):.4f}")


def bench(model_dir: Path, seconds: float = 20.0, batch: int = 16) -> None:
    """Per-block latency and real-time streams per core (one ORT thread), single and batched."""
    import edge_stream as es
    from edge_stream.voice.vad import VadStream

    model = es.load(model_dir, intra_op_threads=1)
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(int(seconds * SAMPLE_RATE))).astype(np.float32)
    block_ms = 1000.0 * BLOCK / SAMPLE_RATE
    n_blocks = len(audio) // BLOCK

    stream = model.open_stream()
    stream.feed(audio[:BLOCK * 20])  # warm-up
    stream.reset()
    lat = np.empty(n_blocks)
    for i in range(n_blocks):  # one feed per block: what a 32 ms publisher costs, validation included
        t0 = time.perf_counter_ns()
        stream.feed(audio[i * BLOCK:(i + 1) * BLOCK])
        lat[i] = (time.perf_counter_ns() - t0) / 1e6
    p50, p99 = np.percentile(lat, [50, 99])
    print(f"one stream, one {BLOCK}-sample block per feed ({n_blocks} blocks, 1 ORT thread):")
    print(f"  per-block latency p50 {p50 * 1000:.0f} us, p99 {p99 * 1000:.0f} us, mean {lat.mean() * 1000:.0f} us")
    print(f"  real-time factor {lat.mean() / block_ms:.4f}; ~{block_ms / lat.mean():.0f} real-time streams per core")

    # Baseline: the bare ORT run with the same feeds, to show what the stream adds per block.
    feeds = {"input": np.zeros((1, BLOCK + CONTEXT), np.float32), "state": model.runner.initial_states(1)[0],
             "sr": np.array(SAMPLE_RATE, dtype=np.int64)}
    raw = np.empty(n_blocks)
    for i in range(n_blocks):
        t0 = time.perf_counter_ns()
        model.runner.run(feeds)
        raw[i] = (time.perf_counter_ns() - t0) / 1e6
    print(f"  bare ORT run p50 {np.median(raw) * 1000:.0f} us, mean {raw.mean() * 1000:.0f} us")

    stream.reset()
    t0 = time.perf_counter()
    stream.feed(audio[:int(10 * SAMPLE_RATE)])  # one 10 s chunk: re-blocking cost amortised
    dt = time.perf_counter() - t0
    nb = int(10 * SAMPLE_RATE) // BLOCK
    print(f"  one 10 s chunk: {dt * 1000:.1f} ms for {nb} blocks ({dt / nb * 1e6:.0f} us/block)")

    streams = [model.open_stream() for _ in range(batch)]
    steps = min(n_blocks, 200)
    t0 = time.perf_counter()
    for i in range(steps):
        chunk = audio[i * BLOCK:(i + 1) * BLOCK]
        VadStream.feed_batched(streams, [chunk] * batch)  # streams of es.load(VAD): VadStreams
    dt = (time.perf_counter() - t0) / steps
    print(f"{batch} streams batched into one run per block ({steps} steps, 1 ORT thread):")
    print(f"  {dt * 1000:.2f} ms per step ({dt / batch * 1e6:.0f} us per stream-block); "
          f"~{block_ms / (dt / batch * 1000):.0f} real-time streams per core")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Export Silero VAD into an edge-stream model directory.")
    parser.add_argument("-o", "--out", type=Path, default=Path("models/silero-vad"))
    parser.add_argument("--bench", action="store_true", help="after exporting, measure latency and streams per core")
    args = parser.parse_args(argv)
    export(args.out)
    if args.bench:
        bench(args.out)


if __name__ == "__main__":
    main()
