"""Model execution: one ONNX Runtime session shared by every stream of a model.

This layer knows ONNX names, dtypes and providers, nothing of streams or
sockets. `ModelRunner.run` takes a feed dict and returns the outputs the
manifest names (returned outputs first, then state outputs in manifest order).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge_stream.errors import ConfigError, ManifestError
from edge_stream.runtime.manifest import Manifest

log = logging.getLogger(__name__)

NUMPY_DTYPES = {
    "float32": np.float32,
    "float16": np.float16,
    "int64": np.int64,
    "int32": np.int32,
    "int8": np.int8,
    "uint8": np.uint8,
    "bool": np.bool_,
}

ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "dml": "DmlExecutionProvider",
}


def resolve_providers(providers) -> list:
    """Map short names ('cpu', 'cuda') to ORT provider names; refuse ones this build lacks."""
    if providers is None:
        return ["CPUExecutionProvider"]
    if isinstance(providers, str):
        providers = [providers]
    available = ort.get_available_providers()
    resolved = []
    for p in providers:
        name = PROVIDER_ALIASES.get(p.lower(), p) if isinstance(p, str) else p
        key = name[0] if isinstance(name, tuple) else name
        if key not in available:
            raise ConfigError(f"provider {key!r} is not available in this onnxruntime build; available: {', '.join(available)}")
        resolved.append(name)
    return resolved


def session_options(intra_op_threads: int | None = None, inter_op_threads: int = 1) -> ort.SessionOptions:
    """Options for small CPUs: full graph optimisation, sequential execution,
    threads from the argument or EDGE_STREAM_THREADS (ORT's default otherwise)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    threads = intra_op_threads or int(os.environ.get("EDGE_STREAM_THREADS", "0"))
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = inter_op_threads
    opts.log_severity_level = 3
    return opts


class ModelRunner:
    """Owns the InferenceSession and checks the manifest against the graph once at load."""

    def __init__(self, model_path: str | Path, manifest: Manifest, providers=None,
                 intra_op_threads: int | None = None):
        self.manifest = manifest
        self.path = Path(model_path)
        if not self.path.is_file():
            raise ManifestError(f"{self.path}: model file not found")
        self.providers = resolve_providers(providers)
        self.session = ort.InferenceSession(
            str(self.path), sess_options=session_options(intra_op_threads), providers=self.providers
        )
        self.input_types = {i.name: ORT_TYPES.get(i.type, i.type) for i in self.session.get_inputs()}
        self.output_names_in_graph = [o.name for o in self.session.get_outputs()]
        self._check_manifest()
        # Outputs fetched each run: the returned ones, then each state's output in manifest order.
        self.returned_outputs = [o.name for o in manifest.outputs]
        self.state_outputs = [s.output for s in manifest.states]
        self.fetch = self.returned_outputs + self.state_outputs
        # With shared KV buffers (kvbuffer.KVBuffer) the kv states are bound, not fetched.
        self.unbound_fetch = self.returned_outputs + [s.output for s in manifest.states if s.kind != "kv"]

    def _check_manifest(self) -> None:
        m = self.manifest
        declared = [m.input.name] + [s.input for s in m.states] + [a.name for a in m.aux]
        graph_inputs = set(self.input_types)
        missing = [n for n in declared if n not in graph_inputs]
        if missing:
            raise ManifestError(f"{m.name}: manifest names input(s) {missing} that {self.path.name} does not have")
        undeclared = sorted(graph_inputs - set(declared))
        if undeclared:
            raise ManifestError(f"{m.name}: {self.path.name} has input(s) {undeclared} the manifest does not fill")
        outs = [o.name for o in m.outputs] + [s.output for s in m.states]
        missing = [n for n in outs if n not in self.output_names_in_graph]
        if missing:
            raise ManifestError(f"{m.name}: manifest names output(s) {missing} that {self.path.name} does not have")
        if self.input_types[m.input.name] != m.input.dtype:
            raise ManifestError(
                f"{m.name}: input {m.input.name!r} is {self.input_types[m.input.name]} in the graph, "
                f"manifest says {m.input.dtype}")
        for s in m.states:
            if self.input_types[s.input] != s.dtype:
                raise ManifestError(
                    f"{m.name}: state {s.input!r} is {self.input_types[s.input]} in the graph, manifest says {s.dtype}")

    def initial_states(self, batch: int = 1) -> tuple[np.ndarray, ...]:
        """Zero states in manifest order; kv states start empty along their seq axis."""
        states = []
        for s in self.manifest.states:
            shape = list(s.shape)
            shape[s.batch_axis] = batch
            states.append(np.zeros(shape, dtype=NUMPY_DTYPES[s.dtype]))
        return tuple(states)

    def run(self, feeds: dict) -> list:
        """One ORT run; returns arrays in `self.fetch` order."""
        return self.session.run(self.fetch, feeds)

    def run_into(self, feeds: dict, into: dict) -> list:
        """One ORT run writing the outputs named in `into` to those (C-contiguous, exactly shaped)
        arrays; returns arrays in `self.fetch` order, `into`'s own among them.

        Why: `run`'s outputs live in ORT's arena, which keeps its high-water mark for the
        session's life; outputs that outlive the run (a stream's KV states) go to memory the
        caller owns. The others are views holding ORT's values, freed with them."""
        io = self.session.io_binding()
        for name, value in feeds.items():
            io.bind_cpu_input(name, value)
        for name in self.fetch:
            arr = into.get(name)
            if arr is None:
                io.bind_output(name)
            else:
                io.bind_output(name, "cpu", 0, arr.dtype, list(arr.shape), arr.ctypes.data)
        self.session.run_with_iobinding(io)
        return [into[name] if name in into else value.numpy()
                for name, value in zip(self.fetch, io.get_outputs())]
