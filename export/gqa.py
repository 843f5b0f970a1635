"""The fused-attention export path: onnxruntime-genai's model builder.

    python -m export.hf SRC -o OUT --graph gqa [--precision fp32|int8|int4|fp16] [--kv-precision fp32|int8]

The builder writes one graph per decoder with a fused QKV MatMul, RMSNorms fused with
their residual adds, and GroupQueryAttention with rotary inside: about 10 nodes per layer
where optimum's export has over 100. GroupQueryAttention takes past and present as one
buffer, which the runtime binds once and ORT appends to in place (manifest
`kv_io: shared_buffer`). `add_position_ids` gives its rotary explicit positions, so a
sliding window evicts without recomputing (`rotary_table`, see StreamSession).

Precisions: fp32, int8 and int4 are the builder's own (int8/int4: MatMulNBits, symmetric
8 or 4 bits per block of 32, activations quantised to int8 per block inside the kernel,
accuracy level 4); int8-qgemm is the builder's int8 with every MatMulNBits turned into
DynamicQuantizeMatMul with per-channel int8 weights (export.qgemm: ORT's u8s8 integer GEMM,
2-3x faster on a chunk, activations quantised per tensor); fp16 is the builder's CUDA build.
The output folder is also an onnxruntime-genai model folder (genai_config.json), so
peers can be measured on the very same files.

KV precision: fp32 (default) keeps the builder's float cache. int8 (`quantize_kv`) makes
every past/present KV tensor int8 with static symmetric scales, one per (kv head, channel),
that GroupQueryAttention itself applies (`kv_cache_bit_width=8`, PER_CHANNEL `k_scale` /
`v_scale` initializers; ORT's CPU kernel takes int8 caches, not uint8): a quarter of the
cache bytes read per decode step. The scales are calibrated on the fp32-KV graph
(`kv_absmax`) and recorded in the manifest beside the graph's own (introspect reads them
back). genai_config.json is not told about the int8 cache: onnxruntime-genai cannot run
such a folder as it stands.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import subprocess
from pathlib import Path

from edge_stream.errors import ConfigError
from export.builder_env import builder_python
from export.qgemm import to_qgemm

log = logging.getLogger("export.gqa")

PRECISIONS = ("fp32", "int8", "int8-qgemm", "int4", "fp16")
# The builder's int8 is 8-bit weights per block of 32 along K, symmetric, int8 activations
# (accuracy level 4: VNNI integer dot products on x86), as our own quantisation of its fp32
# graph used to be, without writing the fp32 graph first (a 3B fp32 graph is 12 GB). On the
# SmolLM2-135M shape, blocks of 32 and 128 decoded at the same speed.
BUILDER_PRECISION = {"fp32": "fp32", "int8": "int8", "int8-qgemm": "int8", "int4": "int4", "fp16": "fp16"}


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")  # any one: the builder loads a tokenizer


def builder_missing() -> str | None:
    """Why the builder cannot run here (None when it can)."""
    if importlib.util.find_spec("onnxruntime_genai") is None:
        return "onnxruntime-genai is not installed (pip install -c constraints.txt 'edge-stream[peers]')"
    return None


def check_options(precision: str, kv_precision: str = "fp32") -> None:
    """ConfigError naming the option where the gqa graph cannot be built so."""
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision: the gqa graph takes {', '.join(PRECISIONS)}, got {precision!r}")
    if kv_precision not in KV_PRECISIONS:
        raise ConfigError(f"--kv-precision: the gqa graph takes {', '.join(KV_PRECISIONS)}, got {kv_precision!r}")
    if kv_precision == "int8" and precision == "fp16":
        raise ConfigError("--kv-precision int8: ORT's CPU GroupQueryAttention takes an int8 cache with fp32 "
                          "activations; fp16 is the CUDA build (use --precision fp32, int8 or int4)")


def build(src: str, out: Path, precision: str, device: str = "cpu", kv_precision: str = "fp32",
          logits_to_keep: bool = False) -> None:
    """Run the model builder on SRC (a local Hugging Face folder) into OUT; with kv_precision
    int8, calibrate the KV scales on the built graph and make its cache int8."""
    check_options(precision, kv_precision)
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
    # The builder runs in its own environment: it needs transformers 5, optimum-onnx < 4.58.
    cmd = [str(builder_python()), "-m", "onnxruntime_genai.models.builder", "-i", str(src), "-o", str(out),
           "-p", BUILDER_PRECISION[precision], "-e", provider, "-c", str(cache)]
    log.info("      %s", " ".join(cmd[1:]))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    shutil.rmtree(cache, ignore_errors=True)
    if proc.returncode != 0 or not (out / "model.onnx").is_file():
        last = [line[:300] for line in proc.stderr.strip().splitlines()[-6:]]
        raise RuntimeError(f"model builder failed (exit {proc.returncode}): " + "\n".join(last))
    fix_kv_head_size(out / "model.onnx", json.loads((out / "genai_config.json").read_text())["model"]["decoder"]["head_size"])
    add_position_ids(out / "model.onnx")
    if logits_to_keep:
        add_logits_to_keep(out / "model.onnx")
    if precision == "int8-qgemm":
        to_qgemm(out / "model.onnx")
    if kv_precision == "int8":
        absmax = kv_absmax(out)
        quantize_kv(out / "model.onnx", absmax)


def fix_kv_head_size(model_path: Path, head_size: int) -> None:
    """Write the head size into the KV inputs' and outputs' last axis.

    onnxruntime-genai 0.18's builder leaves it symbolic (`kv_cache_dim`) so that one graph
    serves float and compressed caches; the manifest reads each state's initial shape
    from the graph, and an unnamed axis that is neither batch nor sequence has none.
    """
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    changed = False
    for value in [*model.graph.input, *model.graph.output]:
        if value.name.startswith(("past_key_values.", "present.")):
            dim = value.type.tensor_type.shape.dim[-1]  # [batch, kv_heads, seq, head_size]
            if dim.dim_param:
                dim.dim_value = head_size  # clears dim_param (a oneof)
                changed = True
    if changed:
        onnx.save(model, str(model_path))  # weights stay in the external data file it names


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


LOGITS_TO_KEEP = "logits_to_keep"
LM_HEADS = ("MatMul", "MatMulNBits", "DynamicQuantizeMatMul")


def add_logits_to_keep(model_path: Path) -> None:
    """Give the lm_head an input `logits_to_keep` [1] (int64): logits only for the run's last k
    positions (k = 0: all of them).

    A stream that only generates needs the last position's logits; the lm_head over a whole
    chunk is the largest matmul of a small model (SmolLM2-135M: 28M of its 135M weights, a
    fifth of a batch prefill) and a tenth of a 16-token chunk at Qwen2.5-1.5B. The runtime
    fills it (manifest aux `logits_to_keep`): 0 (all), or 1 on a stream opened with
    logits="last". It is a required input: ORT's IO binding (the shared KV buffer) cannot bind
    an input that has a default, so onnxruntime-genai, which does not know it, cannot run a
    folder built with it (export.hf --logits-to-keep; off by default for that reason).
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(model_path), load_external_data=False)
    graph = model.graph
    if any(i.name == LOGITS_TO_KEEP for i in graph.input):
        return
    head = next((n for n in graph.node if "logits" in n.output), None)
    if head is None or head.op_type not in LM_HEADS:
        raise RuntimeError(f"--logits-to-keep: no lm_head matmul writes 'logits' "
                           f"({head.op_type if head else 'no such output'})")
    graph.input.append(helper.make_tensor_value_info(LOGITS_TO_KEEP, TensorProto.INT64, [1]))
    graph.initializer.extend([numpy_helper.from_array(np.array([np.iinfo(np.int64).max], np.int64),
                                                      "/logits_to_keep/ends"),
                              numpy_helper.from_array(np.array([1], np.int64), "/logits_to_keep/axes")])
    nodes = [helper.make_node("Neg", [LOGITS_TO_KEEP], ["/logits_to_keep/starts"], name="/logits_to_keep/Neg"),
             helper.make_node("Slice", [head.input[0], "/logits_to_keep/starts", "/logits_to_keep/ends",
                                        "/logits_to_keep/axes"], ["/logits_to_keep/hidden"],
                              name="/logits_to_keep/Slice")]
    head.input[0] = "/logits_to_keep/hidden"
    at = list(graph.node).index(head)
    for i, node in enumerate(nodes):
        graph.node.insert(at + i, node)
    logits = next(o for o in graph.output if o.name == "logits")
    dims = logits.type.tensor_type.shape.dim  # [batch, sequence, vocab]: now k rows of the sequence
    if len(dims) == 3:
        dims[1].dim_param = "logits_length"
    onnx.save(model, str(model_path))  # weights stay in the external data file it names


# ----- int8 KV cache ---------------------------------------------------------------------------

KV_PRECISIONS = ("fp32", "int8")
K_SCALE_INPUT, V_SCALE_INPUT = 12, 13  # GroupQueryAttention's optional k_scale, v_scale
INT8_MAX = 127.0
KV_CALIBRATION_TOKENS = 1024
# Entries beyond the calibrated range saturate (ORT clamps to [-128, 127]); the headroom covers
# values the calibration run did not see, at the cost of resolution (2.0: one bit). Saturation
# costs more than resolution: on the 30-layer SmolLM2-135M shape (fp32 weights, int8 KV, 180
# tokens vs PyTorch) mean KL was 6.3e-2 at headroom 1.0, 1.9e-2 at 1.25, 6.0e-3 at 1.5, 3.7e-3
# at 2.0, 4.9e-3 at 2.5 and 5.7e-3 at 3.0 (1024 calibration tokens; 512 or 2048 at 2.0: 3.2e-3,
# 3.1e-3); int8 weights alone give 4.1e-3 there. The 2-layer tiny Llama prefers less (KL
# 0.5-1.2e-5 at 1.25, 1.5-3e-5 at 2.0): deep models, which compound saturated entries, decide.
KV_SCALE_HEADROOM = 2.0
CALIBRATION_TEXT = (
    "The robot arm picks up the red block and places it on the shelf. Move forward two meters, "
    "then turn left ninety degrees and stop. Streaming inference processes input as it arrives, "
    "chunk by chunk, and keeps every piece of model state as an explicit input and output. "
    "Temperature 21.5 degrees, humidity 40 percent, battery 87 percent. What is the weather like "
    "today? Please summarise the meeting notes in three sentences and list the open questions. "
)


def kv_absmax(model_dir: Path, n: int = KV_CALIBRATION_TOKENS, seed: int = 0) -> dict:
    """Per kv state input: the largest |entry| per (kv head, channel) that a run of `n`
    calibration tokens through the (fp32-KV) graph in `model_dir` writes, [kv_heads, head_dim].

    Tokens: the model's tokenizer on CALIBRATION_TEXT (repeated) for half, random ids for the
    rest: text gives a real model its typical activations, random ids its rarer rows.
    Keys are stored after rotary, which turns channel i and i + head_dim/2 into each other by
    a position-dependent angle: the pair's norm, not each channel's value, is what every
    position shares, so both channels of a key pair get the pair's largest norm."""
    import numpy as np
    import onnx

    from edge_stream.runtime.introspect import draft_manifest
    from edge_stream.runtime.model import Model

    gqa = _gqa_nodes(onnx.load(str(model_dir / "model.onnx"), load_external_data=False).graph)
    keys = {n.input[3] for n in gqa}
    manifest = draft_manifest(model_dir)  # no manifest.json yet: export_hf writes it after the build
    model = Model(model_dir, manifest=manifest)
    n = min(n, manifest.limits.max_positions or n)  # a rotary table's rows bound the positions
    text = model.encode(CALIBRATION_TEXT) if model.tokenizer is not None else np.zeros(0, np.int64)
    text = np.resize(text, n // 2) if text.size else text
    rand = np.random.default_rng(seed).integers(0, manifest.input.vocab_size, n - text.size, dtype=np.int64)
    stream = model.open_stream(kv_window=None, max_chunk=n)
    stream.feed(np.concatenate([text, rand]))
    out = {}
    for spec, state in zip(manifest.kv_states, stream.state.states):  # [1, kv_heads, n, head_dim]
        x = np.abs(np.asarray(state, dtype=np.float32))[0]
        if spec.input in keys:  # rotary pairs (i, i + head_dim/2): quantize_kv checks the layout
            half = x.shape[-1] // 2
            norm = np.sqrt(x[..., :half] ** 2 + x[..., half:] ** 2)  # [kv_heads, n, head_dim/2]
            x = np.concatenate([norm, norm], axis=-1)
        out[spec.input] = x.max(axis=1)  # [kv_heads, head_dim]
    return out


def _gqa_nodes(graph) -> list:
    """The graph's GroupQueryAttention nodes; RuntimeError where one cannot take kv_absmax's scales."""
    import onnx

    nodes = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
    if not nodes:
        raise RuntimeError("int8 KV: the graph has no GroupQueryAttention node")
    for node in nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("rotary_interleaved", 0):  # key pairs would be (2i, 2i + 1)
            raise RuntimeError(f"int8 KV: {node.name} rotates interleaved pairs; kv_absmax pairs i and i + d/2")
        if len(node.input) < 5 or not node.input[3] or not node.input[4]:
            raise RuntimeError(f"int8 KV: {node.name} takes no past key/value")
    return nodes


def quantize_kv(model_path: Path, absmax: dict, headroom: float = KV_SCALE_HEADROOM) -> dict:
    """Make every GroupQueryAttention's past/present KV int8 with PER_CHANNEL scales
    (absmax * headroom / 127, [1, kv_heads, 1, head_dim] initializers), in place.
    Returns the scales per kv state input."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(model_path), load_external_data=False)  # weights stay in their data file
    graph = model.graph
    gqa = _gqa_nodes(graph)
    kv_names = {n.input[3] for n in gqa} | {n.input[4] for n in gqa}
    if set(absmax) != kv_names:
        raise RuntimeError(f"kv calibration covers {sorted(absmax)[:4]}..., the graph's GQA nodes take "
                           f"{sorted(kv_names)[:4]}...")
    scales = {}
    for node in gqa:
        for past, present, idx in ((node.input[3], node.output[1], K_SCALE_INPUT),
                                   (node.input[4], node.output[2], V_SCALE_INPUT)):
            # A channel that never moved gets the smallest normal scale, not 0 (1/0 in the kernel).
            scale = np.maximum(absmax[past] * headroom / INT8_MAX, np.finfo(np.float32).tiny)
            scale = scale.astype(np.float32)[None, :, None, :]  # [1, kv_heads, 1, head_dim]
            name = f"{past}.scale"
            graph.initializer.append(numpy_helper.from_array(scale, name))
            while len(node.input) <= idx:
                node.input.append("")
            node.input[idx] = name
            scales[past] = scale
            for value in list(graph.input) + list(graph.output):
                if value.name in (past, present):
                    value.type.tensor_type.elem_type = TensorProto.INT8
        node.attribute.extend([helper.make_attribute("kv_cache_bit_width", 8),
                               helper.make_attribute("k_quant_type", "PER_CHANNEL"),
                               helper.make_attribute("v_quant_type", "PER_CHANNEL")])
    onnx.save(model, str(model_path))  # the scales are small: inside model.onnx, beside the graph
    log.info("      int8 KV cache: %d states, scales %.3g..%.3g", len(scales),
             min(float(s.min()) for s in scales.values()), max(float(s.max()) for s in scales.values()))
    return scales
