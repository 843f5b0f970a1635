"""Int8 weights for ORT's integer GEMM: MatMulNBits -> DynamicQuantizeMatMul.

    python -m export.hf SRC -o OUT --graph gqa --precision int8-qgemm

Why: at a 16-token chunk on this AVX-512 VNNI CPU, MatMulNBits (8 or 4 bits, accuracy
level 4) runs at 240-300 GOPS, about a third of the integer peak: its kernel quantises
activations per block of 32 along K and dequantises each block's partial sums. ORT's u8s8
QGEMM, behind DynamicQuantizeMatMul, runs the same products at 530-830 GOPS, 60-90% of
the VNNI peak (Qwen2.5-1.5B's matmul shapes at M = 16 and 256; `python -m
edge_stream.bench.sizes --kernels`). At M = 1 (decode) the two read the same bytes and
run alike.

The price is accuracy: DynamicQuantizeMatMul quantises the activations per tensor (one
uint8 scale and zero point for the whole chunk) where MatMulNBits uses one scale per 32
values. Real LLMs have outlier channels that a per-tensor scale flattens; random-weight
models have none, so their parity (stated in the manifest's parity block) flatters it.
Measure a real model's perplexity before using this format for it.

Weights: the builder's symmetric 8-bit blocks (or 4-bit) are dequantised and requantised
per output channel (symmetric, zero point 0, in the 7-bit range: see WEIGHT_MAX): one
rounding more than quantising the float weights directly, bounded by the block step.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("export.qgemm")


def nbits_weight(b: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None,
                 k: int, n: int, bits: int, block_size: int) -> np.ndarray:
    """The float weight [K, N] a MatMulNBits node multiplies by.

    b: [N, k_blocks, block_size * bits / 8] uint8 (4 bits: low nibble first); scales:
    [N * k_blocks]; zero_points: None (symmetric: 2**(bits-1)) or packed like b."""
    k_blocks = -(-k // block_size)
    if bits == 8:
        q = b.reshape(n, k_blocks * block_size).astype(np.float32)
    elif bits == 4:
        packed = b.reshape(n, -1)
        q = np.empty((n, packed.shape[1] * 2), np.float32)
        q[:, 0::2], q[:, 1::2] = packed & 0x0F, packed >> 4
    else:
        raise ValueError(f"MatMulNBits with {bits} bits: only 4 and 8 are converted")
    if zero_points is None:
        zp = np.full((n, k_blocks), 2 ** (bits - 1), np.float32)
    elif bits == 8:
        zp = zero_points.reshape(n, k_blocks).astype(np.float32)
    else:
        packed = zero_points.reshape(n, -1)
        zp = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n, -1)[:, :k_blocks].astype(np.float32)
    q = q.reshape(n, k_blocks, block_size) - zp[:, :, None]
    w = (q * scales.reshape(n, k_blocks, 1)).reshape(n, k_blocks * block_size)[:, :k]
    return np.ascontiguousarray(w.T)  # [K, N]


WEIGHT_MAX = 63  # 7-bit weights: u8 x s8 pair sums fit int16 on AVX2 without VNNI (`export.hf.quantize_int8`)


def per_channel_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output channel in the 7-bit range: (q [K, N] int8, scale [N] float32),
    w ~ q * scale, |q| <= WEIGHT_MAX."""
    scale = np.abs(w).max(axis=0) / WEIGHT_MAX
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)  # an all-zero column: any scale
    q = np.clip(np.rint(w / scale), -WEIGHT_MAX, WEIGHT_MAX).astype(np.int8)
    return q, scale


def to_qgemm(model_path: Path) -> int:
    """Replace every MatMulNBits in the graph by DynamicQuantizeMatMul with per-channel int8
    weights, in place (weights to the external data file). Returns how many were replaced."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(model_path))  # with its external data: the weights are rewritten
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    replaced, dropped = 0, set()
    for i, node in enumerate(list(graph.node)):
        if node.op_type != "MatMulNBits":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if len(node.input) > 4 and any(node.input[4:]):  # g_idx or bias: not the builder's layout
            raise RuntimeError(f"{node.name}: MatMulNBits with g_idx/bias inputs is not converted")
        b = numpy_helper.to_array(inits[node.input[1]])
        scales = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
        zp = numpy_helper.to_array(inits[node.input[3]]) if len(node.input) > 3 and node.input[3] else None
        w = nbits_weight(b, scales, zp, attrs["K"], attrs["N"], attrs["bits"], attrs["block_size"])
        q, s = per_channel_int8(w)
        base = node.input[1].rsplit("_Q", 1)[0]
        names = (f"{base}_qgemm_int8", f"{base}_qgemm_scale", f"{base}_qgemm_zero_point")
        graph.initializer.extend([numpy_helper.from_array(q, names[0]), numpy_helper.from_array(s, names[1]),
                                  numpy_helper.from_array(np.zeros_like(q[0]), names[2])])
        new = helper.make_node("DynamicQuantizeMatMul", [node.input[0], *names], list(node.output),
                               name=node.name.replace("MatMulNBits", "") + "_qgemm", domain="com.microsoft")
        graph.node.remove(node)
        graph.node.insert(i, new)
        dropped.update(x for x in node.input[1:] if x)
        replaced += 1
    used = {x for n in graph.node for x in n.input}
    keep = [t for t in graph.initializer if t.name not in dropped or t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    data = model_path.with_name(model_path.name + ".data")
    data.unlink(missing_ok=True)
    onnx.save(model, str(model_path), save_as_external_data=True, location=data.name)
    log.info("      %d MatMulNBits -> DynamicQuantizeMatMul (per-channel int8 weights)", replaced)
    return replaced
