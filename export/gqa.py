"""The fused-attention export path: onnxruntime-genai's model builder.

    python -m export.hf SRC -o OUT --graph gqa [--precision fp32|int8|int4|fp16]

The builder writes one graph per decoder with a fused QKV MatMul, RMSNorms fused with
their residual adds, and GroupQueryAttention with rotary inside: about 10 nodes per layer
where optimum's export has over 100. GroupQueryAttention takes past and present as one
buffer, which the runtime binds once and ORT appends to in place (manifest
`kv_io: shared_buffer`). `add_position_ids` gives its rotary explicit positions, so a
sliding window evicts without recomputing (`rotary_table`, see StreamSession).

Precisions: fp32 and int4 are the builder's own (int4: MatMulNBits, block 32, int8
activations on CPU); int8 is the fp32 graph with every MatMul weight quantised to
8 bits per block (MatMulNBits, `quantize_nbits`); fp16 is the builder's CUDA build.
The output folder is also an onnxruntime-genai model folder (genai_config.json), so
peers can be measured on the very same files.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import subprocess
import sys
from pathlib import Path

from edge_stream.errors import ConfigError

log = logging.getLogger("export.gqa")

PRECISIONS = ("fp32", "int8", "int4", "fp16")
BUILDER_PRECISION = {"fp32": "fp32", "int8": "fp32", "int4": "int4", "fp16": "fp16"}
# 8-bit weights per block of 32 along K, symmetric, int8 activations (accuracy level 4:
# VNNI/AMX integer dot products on x86). On the SmolLM2-135M shape, blocks of 32 and 128
# decoded at the same speed (10.9 ms per token each, fp32 24.6 ms, int4 8.0 ms, one model
# at a time), so the finer blocks, for their accuracy.

INT8_BLOCK = 32
ACCURACY_LEVEL_INT8 = 4


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")  # any one: the builder loads a tokenizer


def builder_missing() -> str | None:
    """Why the builder cannot run here (None when it can)."""
    if importlib.util.find_spec("onnxruntime_genai") is None:
        return "onnxruntime-genai is not installed (pip install -c constraints.txt 'edge-stream[peers]')"
    return None


def build(src: str, out: Path, precision: str, device: str = "cpu") -> None:
    """Run the model builder on SRC (a local Hugging Face folder) into OUT."""
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision: the gqa graph takes {', '.join(PRECISIONS)}, got {precision!r}")
    missing = builder_missing()
    if missing:
        raise ConfigError(f"--graph gqa needs onnxruntime-genai's model builder: {missing}")
    if not Path(src).is_dir():
        raise ConfigError(f"--graph gqa: SRC must be a local Hugging Face folder, got {src!r}")
    if not any((Path(src) / name).is_file() for name in TOKENIZER_FILES):
        # The builder loads the tokenizer itself and fails deep inside transformers without one.
        raise ConfigError(f"--graph gqa: {src} has no tokenizer ({', '.join(TOKENIZER_FILES)}); the model "
                          "builder needs one (--graph optimum exports a folder without)")
    provider = "cuda" if precision == "fp16" else "cpu"
    if device != provider:
        log.warning("%s gqa graphs are built for the %s provider", precision, provider)
    cache = out / ".builder-cache"
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(src), "-o", str(out),
           "-p", BUILDER_PRECISION[precision], "-e", provider, "-c", str(cache)]
    log.info("      %s", " ".join(cmd[1:]))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    shutil.rmtree(cache, ignore_errors=True)
    if proc.returncode != 0 or not (out / "model.onnx").is_file():
        last = [line[:300] for line in proc.stderr.strip().splitlines()[-6:]]
        raise RuntimeError(f"model builder failed (exit {proc.returncode}): " + "\n".join(last))
    add_position_ids(out / "model.onnx")
    if precision == "int8":
        quantize_nbits(out / "model.onnx", bits=8, block_size=INT8_BLOCK, accuracy_level=ACCURACY_LEVEL_INT8)


POSITION_IDS_INPUT = 9  # GroupQueryAttention's optional position_ids (rotary positions)


def add_position_ids(model_path: Path) -> None:
    """Give the graph a `position_ids` input [batch, seq] and feed it to every
    GroupQueryAttention's rotary.

    The builder's graph derives positions from the cache length, so a sliding window
    could only re-encode its retained inputs at every eviction. With explicit positions
    the keys keep the positions they were rotated at, as in optimum's graph: evicted
    entries are dropped and positions keep growing, up to the cos/sin table's rows
    (max_position_embeddings), where the window re-encodes once (`rotary_table`).
    Causal masking stays by cache index, which is what a window needs.
    """
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    graph = model.graph
    if any(i.name == "position_ids" for i in graph.input):
        return
    gqa = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
    if not gqa or not all(a.name == "do_rotary" and a.i == 1 for n in gqa for a in n.attribute if a.name == "do_rotary"):
        return  # no rotary inside attention: nothing to position
    ids = next(i for i in graph.input if i.name == "input_ids")
    dims = [d.dim_param or d.dim_value for d in ids.type.tensor_type.shape.dim]
    graph.input.append(onnx.helper.make_tensor_value_info("position_ids", onnx.TensorProto.INT64, dims))
    for node in gqa:
        while len(node.input) <= POSITION_IDS_INPUT:
            node.input.append("")
        node.input[POSITION_IDS_INPUT] = "position_ids"
    onnx.save(model, str(model_path))  # weights stay in the external data file it names


def quantize_nbits(model_path: Path, bits: int, block_size: int, accuracy_level: int) -> None:
    """Quantise every constant MatMul weight to `bits` per block (MatMulNBits), in place.

    Weight-only: activations stay fp32 between ops and are quantised to int8 inside the
    MatMul at accuracy level 4. The embedding Gather keeps fp32 rows (one row per token).
    """
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)  # the quantizer logs a line per node on the root logger
    try:
        model = onnx.load(str(model_path))
        config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True,
                                              accuracy_level=accuracy_level, bits=bits)
        quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=True,
                                         accuracy_level=accuracy_level, algo_config=config)
        quantizer.process()
    finally:
        root.setLevel(level)
    data = model_path.with_name(model_path.name + ".data")
    data.unlink(missing_ok=True)
    onnx.save(quantizer.model.model, str(model_path), save_as_external_data=True, location=data.name)
