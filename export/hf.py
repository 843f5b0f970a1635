"""Export a Hugging Face causal LM to an edge-stream model directory.

    python -m export.hf SRC -o OUT [--graph optimum|gqa] [--precision fp32|int8|int8-qgemm|int4|fp16]
                        [--kv-precision fp32|int8] [--logits-to-keep] [--device cpu|cuda] [--chunkings N]
                        [--no-check]

SRC is a local folder (a hub id works where a network exists for --graph optimum).
Two graphs:
- `optimum` (default): optimum-onnx exports the decoder with explicit KV inputs/outputs
  (`text-generation-with-past`), position_ids and a concat KV cache; int8 is
  onnxruntime's dynamic quantisation for the CPU provider; fp16 is the fp32 graph
  converted for the CUDA provider. Any architecture optimum exports; sliding windows
  evict without recomputing (positions are explicit).
- `gqa`: onnxruntime-genai's model builder (`export.gqa`): fused QKV and
  GroupQueryAttention, KV written in place into one shared buffer. The faster graph
  (decode 0.6x of optimum's here), for the architectures the builder knows (Llama,
  Qwen2, Mistral, Phi, Gemma ...); `position_ids` are wired into its rotary, so windows
  evict as on optimum's graph (re-encoding once at the cos/sin table's end).
  `--kv-precision int8` (gqa only) stores the KV cache as int8 with calibrated per-channel
  scales that GroupQueryAttention applies itself (`export.gqa.quantize_kv`); the manifest
  records `kv_precision` and each state's `scale`. `--logits-to-keep` (gqa only) adds an
  input that lets a stream opened with logits="last" run the lm_head for its last position
  only (`export.gqa.add_logits_to_keep`).
OUT gets model.onnx (+ external data),
manifest.json and the tokenizer files. Every export ends with `export.parity`
and exits non-zero when the streamed logits are out of tolerance.

fp16 without a GPU: onnxruntime's CPU provider loads and runs the fp16 graph
itself (its InsertCastTransformer wraps ops that lack fp16 CPU kernels in
Cast fp16->fp32->fp16), so the check runs the very file CUDA will load, with
fp16 weights, fp16 KV cache and every op's output rounded to fp16. It proves the
graph is valid, its I/O and KV dtypes, and the accuracy cost of fp16 storage.
It does not prove CUDA's kernels: their accumulation order and fused attention
kernels differ (expect differences of the order of fp16 rounding), nor that
an op whose internal arithmetic overflows fp16 on CUDA does so on CPU (CPU
computes those ops in fp32 between the casts), nor any speed.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from edge_stream.errors import ConfigError, ManifestError
from export.parity import progress_logging

log = logging.getLogger("export.hf")  # not __name__: "__main__" under python -m

PRECISIONS = ("fp32", "int8", "fp16")
GRAPHS = ("optimum", "gqa")
# Tokenizer and generation files copied from SRC when present (optimum also saves some).
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
              "merges.txt", "tokenizer.model", "added_tokens.json", "generation_config.json", "config.json")
# Protobuf's 2 GiB limit: larger graphs keep weights in an external data file.
EXTERNAL_DATA_BYTES = 1 << 30
# int8: MatMul weights only (see quantize_int8). fp16: ops kept in fp32 beyond the converter's defaults:
# Pow/ReduceMean compute norm variances and GELU cubes, whose squares overflow fp16 (max 65504)
# for activations above ~256, which real LLMs have ("massive activations").
INT8_OP_TYPES = ("MatMul",)
FP16_EXTRA_FP32_OPS = ("Pow", "ReduceMean")


def _step(i: int, n: int, what: str) -> float:
    log.info("[%d/%d] %s", i, n, what)
    return time.perf_counter()


def _weights_bytes(onnx_path: Path) -> int:
    return sum(p.stat().st_size for p in onnx_path.parent.iterdir() if p.is_file() and p.suffix != ".json")


def _save(model, path: Path) -> None:
    """Save an onnx ModelProto, with external data when it would not fit one protobuf."""
    import onnx

    external = model.ByteSize() > EXTERNAL_DATA_BYTES
    onnx.save_model(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
                    location=path.name + ".data" if external else None)


def optimum_export(src: str, out: Path) -> Path:
    """fp32 decoder with past KV as explicit I/O; returns the model.onnx path."""
    from optimum.exporters.onnx import main_export

    # do_validation=False: export.parity checks more (streamed chunkings, not one full pass).
    main_export(src, output=str(out), task="text-generation-with-past", device="cpu",
                do_validation=False, local_files_only=Path(src).is_dir())
    model = out / "model.onnx"
    if not model.is_file():
        raise ManifestError(f"optimum wrote no model.onnx in {out}: {sorted(p.name for p in out.iterdir())}")
    return model


def quantize_int8(src: Path, dst: Path, per_channel: bool = True) -> None:
    """Dynamic int8 (int8 weights, activations quantised per run) of MatMul weights.

    Measured on a SmolLM2-135M-shaped Llama (2 shared cores, so +-20%): fp32 652 MB,
    16-token chunk 114-159 ms, decode 66-88 ms; MatMul int8 250 MB, 43-71 ms and 35-42
    ms. Adding Gather (the embedding) shrinks the file to 165 MB at the same speed but
    costs accuracy on every token (tiny models: mean KL 3.2e-4 vs 2.4e-4), so MatMul
    only. Per-channel scales halve the error (KL 1.4e-4, worst top-1 0.968 vs 0.949)
    at a speed difference within this machine's noise.

    reduce_range (7-bit weights): ORT's u8s8 kernel for AVX2 x86 CPUs without VNNI adds pairs
    of u8 x s8 products in 16 bits, which saturate with full-range int8 weights. An export
    must hold on every CPU it is deployed to, not only the one it was built on: on an AVX2-only
    AMD EPYC the full-range tiny Llama fell to top-1 0.79 against PyTorch (0.97 on an AVX-512
    VNNI CPU). With 7-bit weights no pair can saturate, on any x86 or ARM CPU.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)  # the quantizer logs a line per skipped node on the root logger
    try:
        quantize_dynamic(src, dst, op_types_to_quantize=list(INT8_OP_TYPES), per_channel=per_channel,
                         weight_type=QuantType.QInt8, reduce_range=True,
                         use_external_data_format=_weights_bytes(src) > EXTERNAL_DATA_BYTES)
    finally:
        root.setLevel(level)


def rotary_nodes(model) -> list[str]:
    """Names of the nodes that compute rotary angles (the ancestors of Cos/Sin).

    They stay fp32: in fp16, position * inv_freq loses whole radians past
    position 2048 (11-bit mantissa). Hugging Face does the same (its rotary
    embedding runs in fp32 and casts cos/sin to the model dtype). The walk stops
    at Shape/Size, whose outputs do not depend on tensor values.
    """
    producer = {o: n for n in model.graph.node for o in n.output}
    seen, todo = set(), [n for n in model.graph.node if n.op_type in ("Cos", "Sin")]
    names = []
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        names.append(node.name)
        if node.op_type in ("Shape", "Size"):
            continue
        todo += [producer[i] for i in node.input if i in producer]
    return names


def convert_fp16(src: Path, dst: Path) -> None:
    """fp16 weights, activations and KV cache (the manifest reads the KV dtypes from the
    graph); logits stay fp32 (one Cast at the end) so sampling sees no fp16 rounding."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(src))
    keep_fp32 = rotary_nodes(model)
    log.info("fp16: keeping %d rotary-angle nodes and ops %s in fp32", len(keep_fp32), ", ".join(FP16_EXTRA_FP32_OPS))
    model16 = convert_float_to_float16(
        model, keep_io_types=["logits"], op_block_list=DEFAULT_OP_BLOCK_LIST + list(FP16_EXTRA_FP32_OPS),
        node_block_list=keep_fp32, disable_shape_infer=model.ByteSize() > EXTERNAL_DATA_BYTES)
    _save(model16, dst)


def copy_side_files(src: str, out: Path) -> list[str]:
    """Tokenizer/config files from a local SRC (optimum already saved them for hub ids)."""
    copied = []
    src_dir = Path(src)
    if not src_dir.is_dir():
        return copied
    for name in SIDE_FILES:
        if (src_dir / name).is_file() and not (out / name).is_file():
            shutil.copy2(src_dir / name, out / name)
            copied.append(name)
    return copied


def export_hf(src: str, out: str | Path, precision: str = "fp32", device: str = "cpu",
              chunkings: int = 4, check: bool = True, seed: int = 0, graph: str = "optimum",
              kv_precision: str = "fp32", logits_to_keep: bool = False):
    """Export SRC into OUT; returns the ParityReport (None with check=False)."""
    if graph not in GRAPHS:
        raise ConfigError(f"--graph: expected one of {', '.join(GRAPHS)}, got {graph!r}")
    if graph == "gqa":
        return _export_gqa(src, Path(out), precision, device, chunkings, check, seed, kv_precision, logits_to_keep)
    if logits_to_keep:
        raise ConfigError("--logits-to-keep: --graph gqa only")
    if kv_precision != "fp32":
        raise ConfigError(f"--kv-precision {kv_precision}: --graph gqa only (GroupQueryAttention applies the "
                          "KV scales); optimum's graph keeps a float cache")
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and device != "cuda":
        log.warning("fp16 targets the CUDA provider; on CPU use fp32 or int8 (the check still runs on CPU)")
    if precision == "int8" and device == "cuda":
        log.warning("int8 dynamic quantisation targets the CPU provider; CUDA runs it slower than fp16")
    out = _empty_out(Path(out))
    steps = 4 if check else 3
    t = _step(1, steps, f"optimum export of {src} (text-generation-with-past, fp32)")
    with tempfile.TemporaryDirectory(prefix="edge-stream-export-", dir=out.parent) as tmp:
        fp32_dir = Path(tmp)
        fp32_model = optimum_export(src, fp32_dir)
        log.info("      exported in %.1f s", time.perf_counter() - t)
        t = _step(2, steps, {"fp32": "moving the fp32 graph into place",
                             "int8": f"int8 dynamic quantisation of {', '.join(INT8_OP_TYPES)} weights",
                             "fp16": "fp16 conversion"}[precision])
        if precision == "fp32":
            for p in fp32_dir.iterdir():
                shutil.move(str(p), out / p.name)
        else:
            if precision == "int8":
                quantize_int8(fp32_model, out / "model.onnx")
            else:
                convert_fp16(fp32_model, out / "model.onnx")
            for p in fp32_dir.iterdir():  # config, generation config, tokenizer files optimum saved
                if p.suffix == ".json" or p.name in SIDE_FILES:
                    shutil.copy2(p, out / p.name)
        log.info("      done in %.1f s", time.perf_counter() - t)
    import optimum.version

    return _manifest_and_check(src, out, precision, device, 3, steps, chunkings, check, seed,
                               {"exporter": f"optimum-onnx {optimum.version.__version__}",
                                "task": "text-generation-with-past"})


def _export_gqa(src: str, out: Path, precision: str, device: str, chunkings: int, check: bool, seed: int,
                kv_precision: str = "fp32", logits_to_keep: bool = False):
    """export_hf for --graph gqa: the model builder, then the same manifest and parity steps."""
    from export import gqa

    gqa.check_options(precision, kv_precision)  # before anything is written
    out = _empty_out(out)
    steps = 3 if check else 2
    t = _step(1, steps, f"onnxruntime-genai model builder on {src} ({precision}, GroupQueryAttention, "
                        f"{kv_precision} KV cache)")
    gqa.build(src, out, precision, device, kv_precision=kv_precision, logits_to_keep=logits_to_keep)
    log.info("      built in %.1f s", time.perf_counter() - t)
    from export.builder_env import GENAI_VERSION  # the release the builder ran at

    return _manifest_and_check(src, out, precision, device, 2, steps, chunkings, check, seed,
                               {"exporter": f"onnxruntime-genai {GENAI_VERSION} model builder"})


def _empty_out(out: Path) -> Path:
    """The output directory, created; an existing model.onnx there is an error (never overwritten)."""
    out.mkdir(parents=True, exist_ok=True)
    if (out / "model.onnx").exists():
        raise ConfigError(f"{out}/model.onnx exists; choose an empty output directory")
    return out


def _manifest_and_check(src: str, out: Path, precision: str, device: str, step: int, steps: int,
                        chunkings: int, check: bool, seed: int, source: dict):
    """The steps every graph ends with: tokenizer files, manifest.json (read from the graph, plus
    where it came from: `source`), then the parity check. Returns the ParityReport (None with check=False)."""
    from edge_stream.runtime.introspect import draft_manifest
    from export.parity import check_parity

    _step(step, steps, "manifest.json and tokenizer files")
    copied = copy_side_files(src, out)
    manifest = draft_manifest(out)
    manifest = replace(manifest, name=out.resolve().name, precision=precision,
                       source={**manifest.source, "hf": str(src), "device": device, **source})
    manifest.save(out)
    log.info("      manifest: %d kv states (%s), kv_io %s, position encoding %s, max positions %s; copied %s",
             len(manifest.kv_states), manifest.kv_states[0].dtype if manifest.kv_states else "-", manifest.kv_io,
             manifest.limits.position_encoding, manifest.limits.max_positions, ", ".join(copied) or "nothing")
    if not check:
        return None
    _step(step + 1, steps, f"parity check: {chunkings} chunkings through StreamSession vs PyTorch")
    providers = ["cuda", "cpu"] if device == "cuda" and _has_cuda() else None
    return check_parity(out, src, chunkings=chunkings, seed=seed, providers=providers, precision=precision)


def _has_cuda() -> bool:
    import onnxruntime as ort

    available = "CUDAExecutionProvider" in ort.get_available_providers()
    if not available:
        log.info("      no CUDA provider in this onnxruntime: the check runs on the CPU provider")
    return available


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="Hugging Face model folder (or hub id where a network exists)")
    parser.add_argument("-o", "--out", required=True, help="output model directory")
    parser.add_argument("--graph", choices=GRAPHS, default="optimum",
                        help="optimum: any architecture, explicit positions; gqa: onnxruntime-genai's builder, "
                             "fused attention with an in-place KV buffer (faster)")
    parser.add_argument("--precision", choices=("fp32", "int8", "int8-qgemm", "int4", "fp16"), default="fp32",
                        help="int4, int8-qgemm: --graph gqa only (int8-qgemm: per-channel int8 weights for ORT's "
                             "integer GEMM, 2-3x faster chunks, activations quantised per tensor; see export/qgemm.py)")
    parser.add_argument("--kv-precision", choices=("fp32", "int8"), default="fp32",
                        help="int8: --graph gqa only; the KV cache as int8 with calibrated per-channel scales")
    parser.add_argument("--logits-to-keep", action="store_true",
                        help="gqa only: a logits_to_keep input, so streams opened with logits=\"last\" run the "
                             "lm_head for one position, not the whole chunk (onnxruntime-genai cannot run the folder)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="execution provider the export targets (fp16 is for cuda)")
    parser.add_argument("--chunkings", type=int, default=4, help="random chunkings in the parity check")
    parser.add_argument("--seed", type=int, default=0, help="seed of the parity check's tokens and chunkings")
    parser.add_argument("--no-check", action="store_true", help="skip the parity check")


def run(args) -> int:
    report = export_hf(args.src, args.out, precision=args.precision, device=args.device,
                       chunkings=args.chunkings, check=not args.no_check, seed=args.seed, graph=args.graph,
                       kv_precision=args.kv_precision, logits_to_keep=args.logits_to_keep)
    if report is None:
        print(f"exported {args.src} -> {args.out} ({args.precision}, {args.kv_precision} KV); parity check skipped")
        return 0
    print(report.summary())
    return 0 if report.passed else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Export a Hugging Face causal LM to an edge-stream model directory.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    progress_logging()
    try:
        return run(args)
    except (ConfigError, ManifestError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
