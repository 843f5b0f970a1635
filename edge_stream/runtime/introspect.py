"""Read an ONNX model's I/O and derive a draft manifest from standard names.

Common exports need no hand-written manifest: optimum (`past_key_values.N.key`
<-> `present.N.key`, with `position_ids`), onnxruntime-genai's model builder
(GroupQueryAttention, no `position_ids`: positions are implicit in the mask),
recurrent models (`state` <-> `stateN` as in silero, `h`/`c` <-> `hn`/`cn`,
`X` <-> `X_out`/`present_X`). Anything without a known role is a
`ManifestError` naming the input. Runtime side: onnxruntime, numpy and json only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import onnxruntime as ort

from edge_stream.errors import ManifestError
from edge_stream.runtime.manifest import (
    KV_DTYPES,
    MANIFEST_FILE,
    AuxSpec,
    InputSpec,
    Limits,
    Manifest,
    OutputSpec,
    StateSpec,
)
from edge_stream.runtime.runner import ORT_TYPES

# Model families by how they encode positions (config.json `model_type`).
LEARNED_POSITIONS = {"gpt2", "gpt_neo", "opt", "gpt_bigcode", "biogpt", "xglm"}
ROTARY_POSITIONS = {"llama", "qwen2", "qwen3", "mistral", "mixtral", "phi", "phi3", "gemma", "gemma2",
                    "gemma3_text", "granite", "olmo", "olmo2", "stablelm", "gpt_neox", "gptj", "cohere",
                    "starcoder2", "smollm3", "deepseek_v2", "deepseek_v3", "internlm2", "falcon",
                    "persimmon", "codegen", "nemotron", "exaone", "helium"}

TOKEN_INPUTS = ("input_ids", "tokens", "token_ids", "ids")
SAMPLE_INPUTS = ("input", "audio", "samples", "waveform", "x", "input_values")
FRAME_INPUTS = ("input_features", "features", "frames", "feats", "x")
SAMPLE_RATE_INPUTS = ("sr", "sample_rate")
# Silero accepts 8000 or 16000; 16000 is the rate the runtime's 512-sample blocks assume.
DEFAULT_SAMPLE_RATE = 16000


@dataclass(frozen=True)
class TensorInfo:
    """One graph input or output; `shape` holds ints (static) and str/None (symbolic)."""

    name: str
    shape: tuple
    dtype: str


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    metadata: dict = field(default_factory=dict)

    def input(self, name: str) -> TensorInfo | None:
        return next((t for t in self.inputs if t.name == name), None)

    def output(self, name: str) -> TensorInfo | None:
        return next((t for t in self.outputs if t.name == name), None)

    def table(self) -> str:
        """Plain-text I/O table for `edge-stream inspect`."""
        rows = [("io", "name", "dtype", "shape")]
        for kind, items in (("in", self.inputs), ("out", self.outputs)):
            rows += [(kind, t.name, t.dtype, "[" + ", ".join(_dim_str(d) for d in t.shape) + "]") for t in items]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = ["  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3] for r in rows]
        meta = ", ".join(f"{k}={v}" for k, v in self.metadata.items() if v not in ("", {}, None))
        return "\n".join(lines + ([f"metadata: {meta}"] if meta else []))


def _dim_str(d) -> str:
    return "?" if d is None else str(d)


def resolve_model_file(path: str | Path) -> Path:
    """`path` itself if it is an .onnx file; else the directory's model.onnx, or its only .onnx file."""
    p = Path(path)
    if p.is_file():
        if p.suffix != ".onnx":
            raise ManifestError(f"{p}: expected an .onnx file or a model directory")
        return p
    if not p.is_dir():
        raise ManifestError(f"{p}: no such model file or directory")
    if (p / "model.onnx").is_file():
        return p / "model.onnx"
    found = sorted(p.glob("*.onnx"))
    if len(found) != 1:
        names = ", ".join(f.name for f in found) or "none"
        raise ManifestError(f"{p}: expected model.onnx or exactly one .onnx file, found {names}")
    return found[0]


def describe(model_path: str | Path) -> ModelInfo:
    """I/O names, shapes (symbolic dims as names) and dtypes, plus ORT's model metadata."""
    path = resolve_model_file(model_path)
    opts = ort.SessionOptions()
    # Only the signature is needed: skip optimisation, which is the slow part of loading.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises several types for unreadable graphs
        raise ManifestError(f"{path}: onnxruntime cannot load it ({exc})") from None

    def info(args):
        return tuple(TensorInfo(a.name, tuple(a.shape), ORT_TYPES.get(a.type, a.type)) for a in args)

    meta = sess.get_modelmeta()
    metadata = {"producer": meta.producer_name, "graph": meta.graph_name, "domain": meta.domain,
                "description": meta.description,
                "custom": dict(meta.custom_metadata_map)}
    return ModelInfo(path, info(sess.get_inputs()), info(sess.get_outputs()), metadata)


# --- state pairs ---------------------------------------------------------------

def _state_output_candidates(name: str) -> list[str]:
    """Output names that conventionally carry the next value of state input `name`."""
    cands = []
    if name.startswith("past_key_values"):
        rest = name[len("past_key_values"):]
        cands += ["present" + rest, "present_key_values" + rest]
    if name.startswith("past_"):
        cands += ["present_" + name[5:]]
    if name.startswith("past."):
        cands += ["present." + name[5:]]
    cands += [name + "N", name + "n", name + "_out", name + "_new", "present_" + name,
              "new_" + name, "next_" + name, "out_" + name]
    return cands


def _find_state_pairs(info: ModelInfo) -> dict[str, str]:
    outputs = {o.name for o in info.outputs}
    pairs = {}
    for inp in info.inputs:
        for cand in _state_output_candidates(inp.name):
            if cand in outputs:
                pairs[inp.name] = cand
                break
    return pairs


def _state_spec(inp: TensorInfo, out_name: str, sizes: dict[str, int]) -> StateSpec:
    """kv if a dim is a 'past' length (it grows by the chunk); recurrent otherwise. `sizes`:
    symbolic dims whose size the side files give (`_sized_dims`)."""
    shape = list(inp.shape)
    seq_axis = next((i for i, d in enumerate(shape) if isinstance(d, str) and "past" in d.lower()), None)
    batch_axis = next((i for i, d in enumerate(shape) if isinstance(d, str) and "batch" in d.lower()), None)
    if batch_axis is None:
        # Unnamed dynamic dims (silero's state is [2, None, 128]): the first non-seq one is the batch.
        batch_axis = next((i for i, d in enumerate(shape) if not isinstance(d, int) and i != seq_axis), 0)
    initial = []
    for i, d in enumerate(shape):
        if i == seq_axis:
            initial.append(0)
        elif i == batch_axis:
            initial.append(1)
        elif isinstance(d, int):
            initial.append(d)
        elif d in sizes:
            initial.append(sizes[d])
        else:
            raise ManifestError(
                f"state input {inp.name!r}: axis {i} is symbolic ({_dim_str(d)}) and is neither the batch "
                f"nor a 'past' sequence axis; write its initial shape into manifest.json by hand")
    kind = "kv" if seq_axis is not None else "recurrent"
    return StateSpec(input=inp.name, output=out_name, kind=kind, shape=tuple(initial), dtype=inp.dtype,
                     seq_axis=seq_axis, batch_axis=batch_axis)


# --- side files (config.json, generation_config.json, genai_config.json) ------

def _sized_dims(model_dir: Path) -> dict[str, int]:
    """Symbolic state dims a side file sizes: onnxruntime-genai 0.18's builder leaves the KV
    head axis symbolic (`kv_cache_dim`: one graph for float and compressed caches), and its
    genai_config.json gives the head size."""
    decoder = _read_json(model_dir / "genai_config.json").get("model", {}).get("decoder", {})
    head_size = decoder.get("head_size")
    return {"kv_cache_dim": head_size} if isinstance(head_size, int) else {}


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from None


@dataclass(frozen=True)
class _SideInfo:
    model_type: str | None
    max_positions: int | None
    vocab_size: int | None
    eos: tuple[int, ...]
    config: dict


def _side_info(model_dir: Path) -> _SideInfo:
    config = _read_json(model_dir / "config.json")
    genai = _read_json(model_dir / "genai_config.json").get("model", {})
    gen = _read_json(model_dir / "generation_config.json")
    model_type = config.get("model_type") or genai.get("type")
    max_pos = None
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(config.get(key), int):
            max_pos = config[key]
            break
    if max_pos is None and isinstance(genai.get("context_length"), int):
        max_pos = genai["context_length"]
    vocab = config.get("vocab_size") or genai.get("vocab_size")
    eos = None
    for source in (gen, config, genai):
        if source.get("eos_token_id") is not None:
            eos = source["eos_token_id"]
            break
    eos_ids = tuple(int(e) for e in (eos if isinstance(eos, list) else [eos] if eos is not None else []))
    return _SideInfo(model_type, max_pos, vocab, eos_ids, config)


def _position_encoding(side: _SideInfo, has_position_ids: bool) -> str:
    if not has_position_ids:
        # genai's GQA and ALiBi models derive positions from the mask: nothing to feed.
        return "implicit"
    mt = side.model_type
    if mt in LEARNED_POSITIONS:
        return "learned"
    if mt in ROTARY_POSITIONS or "rope_theta" in side.config or side.config.get("rope_scaling") is not None:
        return "rotary"
    raise ManifestError(
        f"input 'position_ids': cannot tell rotary from learned positions (model_type={mt!r}); put the "
        f"model's config.json beside it or set limits.position_encoding in manifest.json by hand")


# --- the draft manifest ------------------------------------------------------

def draft_manifest(model_path: str | Path) -> Manifest:
    """Derive a manifest from the graph's I/O names and the side files beside it.

    Raises ManifestError naming the first input whose role is not recognised.
    """
    info = describe(model_path)
    model_dir = info.path.parent
    pairs = _find_state_pairs(info)
    sizes = _sized_dims(model_dir)
    states = tuple(_state_spec(info.input(i), o, sizes) for i, o in pairs.items())
    state_outputs = set(pairs.values())

    stream_input = None
    aux = []
    for inp in info.inputs:
        if inp.name in pairs:
            continue
        lname = inp.name.lower()
        if lname == "attention_mask":
            aux.append(AuxSpec(inp.name, "attention_mask", inp.dtype))
        elif lname == "position_ids":
            aux.append(AuxSpec(inp.name, "position_ids", inp.dtype))
        elif lname == "logits_to_keep":
            aux.append(AuxSpec(inp.name, "logits_to_keep", inp.dtype))
        elif lname in SAMPLE_RATE_INPUTS and len(inp.shape) <= 1:
            aux.append(AuxSpec(inp.name, "constant", inp.dtype, value=DEFAULT_SAMPLE_RATE))
        elif lname == "use_cache_branch":
            # optimum's merged decoders: the with-past branch also handles an empty past.
            aux.append(AuxSpec(inp.name, "constant", inp.dtype, value=True))
        elif stream_input is None and (spec := _stream_input(inp)) is not None:
            stream_input = spec
        else:
            raise ManifestError(
                f"{info.path.name}: input {inp.name!r} ({inp.dtype} {list(inp.shape)}) has no known role; "
                f"known: token/sample/frame stream inputs, attention_mask, position_ids, logits_to_keep, sr, state pairs "
                f"like past_key_values.N.key -> present.N.key or state -> stateN; write manifest.json by hand")
    if stream_input is None:
        raise ManifestError(f"{info.path.name}: no stream input (input_ids, input, input_features) found")

    side = _side_info(model_dir)
    returned = [o for o in info.outputs if o.name not in state_outputs]
    outputs = tuple(OutputSpec(o.name, _output_role(o, stream_input.kind)) for o in returned)
    if not outputs:
        raise ManifestError(f"{info.path.name}: every output is a state output; nothing to return")

    limits = Limits()
    stop_ids: tuple[int, ...] = ()
    tokenizer = None
    if stream_input.kind == "tokens":
        vocab = _vocab_size(info, outputs, side)
        stream_input = InputSpec(stream_input.name, "tokens", stream_input.dtype, vocab_size=vocab)
        has_pos = any(a.fill == "position_ids" for a in aux)
        limits = Limits(max_positions=side.max_positions, position_encoding=_position_encoding(side, has_pos))
        stop_ids = side.eos
        tokenizer = "tokenizer.json" if (model_dir / "tokenizer.json").is_file() else None
    elif any(s.kind == "kv" for s in states):
        limits = Limits(max_positions=side.max_positions, position_encoding="implicit")

    kv_io, rotary_table, scales = _attention_graph(info.path, states)
    states = tuple(replace(s, scale=scales[s.input]) if s.input in scales else s for s in states)
    kv = [s for s in states if s.kind == "kv"]
    kv_precision = {v: k for k, v in KV_DTYPES.items()}.get(kv[0].dtype) if kv else None
    if rotary_table and limits.position_encoding == "rotary":
        limits = replace(limits, position_encoding="rotary_table")
    source = {"derived_by": "edge_stream.runtime.introspect", "onnx": info.path.name}
    if info.metadata.get("producer"):
        source["producer"] = info.metadata["producer"]
    if side.model_type:
        source["model_type"] = side.model_type
    name = model_dir.resolve().name if info.path.name == "model.onnx" else info.path.stem
    return Manifest(name=name, input=stream_input, states=states, outputs=outputs, aux=tuple(aux),
                    limits=limits, model_file=info.path.name, tokenizer=tokenizer,
                    stop_token_ids=stop_ids, kv_io=kv_io, kv_precision=kv_precision, source=source)


def _attention_graph(path: Path, states) -> tuple[str, bool, dict]:
    """(kv_io, rotary_table, scales) from the graph's GroupQueryAttention nodes, reading the
    graph, not its weights: 'shared_buffer' where every kv state feeds one (it takes past and
    present as one buffer), else 'concat'; rotary_table where they rotate from cos/sin caches
    (do_rotary=1), whose rows bound the positions; scales: past input -> its k_scale/v_scale
    values (flattened) where the node keeps an 8-bit cache (kv_cache_bit_width=8)."""
    kv_inputs = {s.input for s in states if s.kind == "kv"}
    if not kv_inputs:
        return "concat", False, {}
    import numpy as np
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path), load_external_data=False).graph
    gqa = [node for node in graph.node if node.op_type == "GroupQueryAttention"]
    fed_to_gqa = {name for node in gqa for name in node.input}
    rotary = any(a.name == "do_rotary" and a.i == 1 for node in gqa for a in node.attribute)
    inits = {t.name: t for t in graph.initializer}
    by_input = {s.input: s for s in states}
    scales = {}
    for node in gqa:
        if not any(a.name == "kv_cache_bit_width" and a.i == 8 for a in node.attribute):
            continue
        for past, idx in ((3, GQA_K_SCALE), (4, GQA_V_SCALE)):
            name = node.input[idx] if len(node.input) > idx else ""
            if name not in inits:
                raise ManifestError(f"{path.name}: {node.name} keeps an 8-bit KV cache but its "
                                    f"{'k' if past == 3 else 'v'}_scale is not a constant of the graph")
            spec = by_input[node.input[past]]
            entry = [1 if i == spec.seq_axis else d for i, d in enumerate(spec.shape)]  # one position
            # PER_TENSOR ([1]) and PER_CHANNEL ([1, kv_heads, 1, head_dim]) alike: one value per element
            values = np.broadcast_to(numpy_helper.to_array(inits[name], base_dir=str(path.parent)), entry)
            scales[spec.input] = tuple(float(x) for x in values.ravel())
    return ("shared_buffer" if kv_inputs <= fed_to_gqa else "concat"), rotary, scales


GQA_K_SCALE, GQA_V_SCALE = 12, 13  # GroupQueryAttention's k_scale and v_scale inputs


def _stream_input(inp: TensorInfo) -> InputSpec | None:
    lname = inp.name.lower()
    is_float = inp.dtype in ("float32", "float16")
    if lname in TOKEN_INPUTS and inp.dtype in ("int64", "int32"):
        return InputSpec(inp.name, "tokens", inp.dtype)
    if lname in FRAME_INPUTS and is_float and len(inp.shape) == 3 and isinstance(inp.shape[-1], int):
        return InputSpec(inp.name, "frames", inp.dtype, feature_dim=inp.shape[-1])
    if lname in SAMPLE_INPUTS and is_float and len(inp.shape) in (1, 2):
        return InputSpec(inp.name, "samples", inp.dtype)
    return None


def _output_role(out: TensorInfo, input_kind: str) -> str:
    lname = out.name.lower()
    if "logits" in lname:
        return "logits"
    if "prob" in lname or (input_kind == "samples" and out.shape and out.shape[-1] == 1):
        return "probability"
    return "features"


def _vocab_size(info: ModelInfo, outputs, side: _SideInfo) -> int:
    logits = next((o for o in outputs if o.role == "logits"), None)
    if logits is not None:
        last = info.output(logits.name).shape[-1]
        if isinstance(last, int):
            return last
    if isinstance(side.vocab_size, int):
        return side.vocab_size
    raise ManifestError(f"{info.path.name}: cannot derive vocab_size: no static last dim on a logits output "
                        f"and no config.json vocab_size")


__all__ = ["describe", "draft_manifest", "resolve_model_file", "ModelInfo", "TensorInfo",
           "MANIFEST_FILE"]
