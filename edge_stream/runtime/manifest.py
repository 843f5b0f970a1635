"""Model-directory manifests: what each ONNX input and output *is* to the runtime.

A model directory holds `model.onnx`, `manifest.json` and, for text models,
`tokenizer.json`. The manifest maps one-to-one onto the dataclasses below;
`load_manifest` validates and raises `ManifestError` naming the field.
Shapes come from the manifest (written by export scripts or derived by
`edge_stream.runtime.introspect`), never from constants in the runtime.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_stream import records
from edge_stream.errors import ManifestError

SCHEMA = "edge-stream/manifest@1"
MANIFEST_FILE = "manifest.json"

INPUT_KINDS = ("tokens", "frames", "samples")
STATE_KINDS = ("kv", "recurrent")
# logits_to_keep: how many of the run's last positions get logits (int64 [1], 0: all); the runtime
# fills 0, or 1 for a stream opened with logits="last" (export.gqa.add_logits_to_keep).
AUX_FILLS = ("attention_mask", "position_ids", "constant", "logits_to_keep")
OUTPUT_ROLES = ("logits", "probability", "features")
# rotary: computed in-graph from position_ids, any position; rotary_table: from a cos/sin
# table of max_positions rows (GroupQueryAttention), so positions stay below it like learned ones.
POSITION_ENCODINGS = ("rotary", "rotary_table", "learned", "implicit", "none")
DTYPES = ("float32", "float16", "int64", "int32", "int8", "uint8", "bool")
# How a graph takes its KV cache: "concat" returns present = past + the chunk's entries as
# a new tensor each run; "shared_buffer" (GroupQueryAttention) takes past and present as
# one preallocated buffer and writes the chunk's entries in place, at the cache length
# the attention mask gives.
KV_IO = ("concat", "shared_buffer")
# What a kv state's entries are: float ones as they are; int8 ones are entry * scale, with one
# static scale per (kv head, channel) that the graph applies itself (GroupQueryAttention's
# k_scale/v_scale) and the manifest records beside it (StateSpec.scale).
KV_PRECISIONS = ("fp32", "fp16", "int8")
KV_DTYPES = {"fp32": "float32", "fp16": "float16", "int8": "int8"}


@dataclass(frozen=True)
class InputSpec:
    """The stream input: token ids [batch, seq], frames [batch, seq, feature_dim] or samples [batch, n]."""

    name: str
    kind: str
    dtype: str
    vocab_size: int | None = None  # tokens: ids must lie in [0, vocab_size)
    feature_dim: int | None = None  # frames: last axis


@dataclass(frozen=True)
class StateSpec:
    """One piece of carried state: the model reads `input` and writes `output`.

    `kv` states grow along `seq_axis` by the chunk length each run; `recurrent`
    states keep `shape`. `shape` is the initial shape with batch 1 (seq 0 for kv).
    `scale` (int8 kv states only): value = entry * scale, one scale per element of a
    position's entry ([kv_heads, head_dim] flattened), the graph's own k_scale/v_scale.
    """

    input: str
    output: str
    kind: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    seq_axis: int | None = None
    batch_axis: int = 0
    scale: tuple[float, ...] | None = None

    @property
    def entry_shape(self) -> tuple[int, ...]:
        """The shape of one position's entry: `shape` without its batch and seq axes."""
        return tuple(d for i, d in enumerate(self.shape) if i not in (self.seq_axis, self.batch_axis))


@dataclass(frozen=True)
class AuxSpec:
    """An input the runtime fills itself: attention_mask, position_ids, logits_to_keep or a
    constant (e.g. `sr`)."""

    name: str
    fill: str
    dtype: str = "int64"
    value: Any = None  # constant fills only


@dataclass(frozen=True)
class OutputSpec:
    """An output returned to the caller; `role` says how policies use it."""

    name: str
    role: str


@dataclass(frozen=True)
class Limits:
    """Position and chunk limits.

    `max_positions`: the model's position range; a hard limit for `learned`
    encodings, informational for `rotary`. `max_chunk`: longer chunks are split.
    `kv_window`/`sink_tokens`: default sliding window (None = unbounded cache).
    """

    max_positions: int | None = None
    position_encoding: str = "none"
    max_chunk: int = 512
    kv_window: int | None = None
    sink_tokens: int = 4


@dataclass(frozen=True)
class Blocking:
    """Fixed-size blocks for models that take exactly `block` samples per run,
    with `context` trailing samples of the previous block prepended (silero)."""

    block: int
    context: int = 0
    sample_rate: int | None = None


@dataclass(frozen=True)
class EventsSpec:
    """Default parameters of the event policy on top of per-block outputs."""

    kind: str  # "vad"
    threshold: float = 0.5
    min_silence_ms: float = 100.0
    speech_pad_ms: float = 30.0


@dataclass(frozen=True)
class Manifest:
    name: str
    input: InputSpec
    states: tuple[StateSpec, ...]
    outputs: tuple[OutputSpec, ...]
    aux: tuple[AuxSpec, ...] = ()
    limits: Limits = field(default_factory=Limits)
    blocking: Blocking | None = None
    events: EventsSpec | None = None
    model_file: str = "model.onnx"
    tokenizer: str | None = None
    stop_token_ids: tuple[int, ...] = ()
    precision: str = "fp32"
    kv_io: str = "concat"
    kv_precision: str | None = None  # KV_PRECISIONS; None: no kv states
    source: dict = field(default_factory=dict)
    schema: str = SCHEMA

    @property
    def kv_states(self) -> tuple[StateSpec, ...]:
        return tuple(s for s in self.states if s.kind == "kv")

    @property
    def recurrent_states(self) -> tuple[StateSpec, ...]:
        return tuple(s for s in self.states if s.kind == "recurrent")

    def output_for(self, role: str) -> str | None:
        """Name of the first output with `role`, or None."""
        for out in self.outputs:
            if out.role == role:
                return out.name
        return None

    def aux_for(self, fill: str) -> AuxSpec | None:
        for aux in self.aux:
            if aux.fill == fill:
                return aux
        return None

    def to_dict(self) -> dict:
        return _drop_none(dataclasses.asdict(self))

    def save(self, model_dir: str | Path) -> Path:
        path = Path(model_dir) / MANIFEST_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def _drop_none(value):
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_drop_none(v) for v in value]
    return value


def _require(d: dict, key: str, where: str):
    if key not in d:
        raise ManifestError(f"{where}: missing required field '{key}'")
    return d[key]


def _choice(value, allowed, where: str):
    if value not in allowed:
        raise ManifestError(f"{where}: {value!r} is not one of {', '.join(allowed)}")
    return value


def _build(cls, d: Any, where: str):
    """Dataclass `cls` from a manifest object; ManifestError names the field and the expected type."""
    return records.build(cls, d, where, ManifestError, table="object")


def manifest_from_dict(d: dict) -> Manifest:
    """Validate a manifest dict and build the typed Manifest."""
    if not isinstance(d, dict):
        raise ManifestError("manifest: expected a JSON object")
    schema = d.get("schema", SCHEMA)
    if schema != SCHEMA:
        raise ManifestError(f"manifest: schema {schema!r} is not supported; expected {SCHEMA!r}")
    inp = _build(InputSpec, _require(d, "input", "manifest"), "manifest.input")
    _choice(inp.kind, INPUT_KINDS, "manifest.input.kind")
    _choice(inp.dtype, DTYPES, "manifest.input.dtype")
    if inp.kind == "tokens" and not inp.vocab_size:
        raise ManifestError("manifest.input.vocab_size: required for token inputs")
    if inp.kind == "frames" and not inp.feature_dim:
        raise ManifestError("manifest.input.feature_dim: required for frame inputs")

    states = []
    for i, raw in enumerate(d.get("states", [])):
        where = f"manifest.states[{i}]"
        st = _build(StateSpec, raw, where)
        _choice(st.kind, STATE_KINDS, f"{where}.kind")
        _choice(st.dtype, DTYPES, f"{where}.dtype")
        if st.kind == "kv":
            if st.seq_axis is None or not 0 <= st.seq_axis < len(st.shape):
                raise ManifestError(f"{where}.seq_axis: kv state {st.input!r} needs seq_axis within its rank {len(st.shape)}")
            if st.shape[st.seq_axis] != 0:
                raise ManifestError(f"{where}.shape: kv state {st.input!r} must start empty (0 along seq_axis)")
        states.append(st)

    aux = []
    for i, raw in enumerate(d.get("aux", [])):
        a = _build(AuxSpec, raw, f"manifest.aux[{i}]")
        _choice(a.fill, AUX_FILLS, f"manifest.aux[{i}].fill")
        if a.fill == "constant" and a.value is None:
            raise ManifestError(f"manifest.aux[{i}].value: constant input {a.name!r} needs a value")
        aux.append(a)

    outputs = []
    for i, raw in enumerate(_require(d, "outputs", "manifest")):
        o = _build(OutputSpec, raw, f"manifest.outputs[{i}]")
        _choice(o.role, OUTPUT_ROLES, f"manifest.outputs[{i}].role")
        outputs.append(o)
    if not outputs:
        raise ManifestError("manifest.outputs: at least one output is required")

    limits = _build(Limits, d.get("limits", {}), "manifest.limits")
    _choice(limits.position_encoding, POSITION_ENCODINGS, "manifest.limits.position_encoding")
    if limits.max_chunk < 1:
        raise ManifestError("manifest.limits.max_chunk: must be >= 1")
    blocking = _build(Blocking, d["blocking"], "manifest.blocking") if d.get("blocking") else None
    if blocking is not None and (blocking.block < 1 or blocking.context < 0):
        raise ManifestError("manifest.blocking: block must be >= 1 and context >= 0")
    events = _build(EventsSpec, d["events"], "manifest.events") if d.get("events") else None
    if events is not None:
        _choice(events.kind, ("vad",), "manifest.events.kind")

    kv_io = _choice(d.get("kv_io", "concat"), KV_IO, "manifest.kv_io")
    kv_precision = _kv_precision(d.get("kv_precision"), states)
    if kv_io == "shared_buffer" and not any(s.kind == "kv" for s in states):
        raise ManifestError("manifest.kv_io: 'shared_buffer' needs kv states")

    known = {f.name for f in dataclasses.fields(Manifest)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ManifestError(f"manifest: unknown field(s) {', '.join(unknown)}")
    return Manifest(
        name=str(_require(d, "name", "manifest")),
        input=inp,
        states=tuple(states),
        outputs=tuple(outputs),
        aux=tuple(aux),
        limits=limits,
        blocking=blocking,
        events=events,
        model_file=d.get("model_file", "model.onnx"),
        tokenizer=d.get("tokenizer"),
        stop_token_ids=tuple(int(t) for t in d.get("stop_token_ids", ())),
        precision=d.get("precision", "fp32"),
        kv_io=kv_io,
        kv_precision=kv_precision,
        source=d.get("source", {}),
        schema=schema,
    )


def _kv_precision(value, states) -> str | None:
    """The manifest's kv_precision, checked against its kv states' dtypes and scales; derived
    from the dtypes where a manifest (written before the field existed) leaves it out."""
    kv = [(i, s) for i, s in enumerate(states) if s.kind == "kv"]
    for i, s in enumerate(states):
        if s.scale is not None and (s.kind != "kv" or s.dtype != "int8"):
            raise ManifestError(f"manifest.states[{i}].scale: only int8 kv states have a scale; "
                                f"{s.input!r} is a {s.dtype} {s.kind} state")
    if not kv:
        if value is not None:
            raise ManifestError(f"manifest.kv_precision: {value!r} given, but the model has no kv states")
        return None
    if value is None:
        by_dtype = {v: k for k, v in KV_DTYPES.items()}
        value = by_dtype.get(kv[0][1].dtype, "fp32")
    _choice(value, KV_PRECISIONS, "manifest.kv_precision")
    for i, s in kv:
        where = f"manifest.states[{i}]"
        if s.dtype != KV_DTYPES[value]:
            raise ManifestError(f"{where}.dtype: kv_precision {value} stores kv states as {KV_DTYPES[value]}, "
                                f"{s.input!r} is {s.dtype}")
        if value != "int8":
            continue
        n = math.prod(s.entry_shape)
        if s.scale is None or len(s.scale) != n:
            got = "none" if s.scale is None else f"{len(s.scale)} values"
            raise ManifestError(f"{where}.scale: an int8 kv state needs one scale per element of an entry "
                                f"({' x '.join(map(str, s.entry_shape))} = {n}), got {got}")
        if not all(math.isfinite(x) and x > 0 for x in s.scale):
            raise ManifestError(f"{where}.scale: scales must be finite and > 0")
    return value


def load_manifest(model_dir: str | Path) -> Manifest:
    """Read and validate `model_dir/manifest.json`."""
    path = Path(model_dir) / MANIFEST_FILE
    if not path.is_file():
        raise ManifestError(f"{path}: no manifest; run `edge-stream inspect {model_dir} --write` to derive one")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from None
    return manifest_from_dict(raw)
