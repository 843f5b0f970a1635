"""Model execution: one ONNX Runtime session shared by every stream of a model.

This layer knows ONNX names, dtypes and providers, nothing of streams or
sockets. `ModelRunner.run` takes a feed dict and returns the outputs the
manifest names (returned outputs first, then state outputs in manifest order).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
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


DEFAULT_SPINNING = True  # ORT's pools when spinning is not set (ThreadOptions: why)


@dataclass(frozen=True)
class ThreadOptions:
    """How ONNX Runtime's thread pools wait and where they run (launch options of the same names).

    Spinning: a pool thread busy-waits for the next piece of work instead of sleeping, at the price
    of a core burnt while it spins; None: DEFAULT_SPINNING (on, as ORT's and onnxruntime-genai's
    own). Measured on the same gqa file as genai (docs/benchmarks.md, "Decode vs onnxruntime-genai
    0.18"): on an otherwise idle 2-core machine, spinning off made decode steps 1.10-1.44x slower
    back to back and 1.47-1.61x slower after 10-200 ms idle gaps; on 2 cores shared with other
    work it was the other way round (off 0.82-0.95x of genai, on 0.93-1.18x), and a spinning pool
    burns 2.3-3.8x the CPU after each run. Machines shared with other busy processes: set
    intra_op_spinning = false.
    `intra_op_thread_affinities`: ORT's syntax, one group per pool thread besides the
    caller's (threads - 1 groups), groups split by ';', each a comma list of 1-based logical
    processors or ranges: "1;2" pins the two workers of a 3-thread pool to CPUs 0 and 1.
    """

    intra_op_spinning: bool | None = None
    inter_op_spinning: bool | None = None
    intra_op_thread_affinities: str | None = None

    def config_entries(self, threads: int) -> dict[str, str]:
        """ORT session config entries for a pool of `threads` intra-op threads (0: ORT picks);
        ConfigError naming the option when a value cannot work (ORT would only log some of them)."""
        entries = {}
        for name, key in (("intra_op_spinning", "session.intra_op.allow_spinning"),
                          ("inter_op_spinning", "session.inter_op.allow_spinning")):
            value = getattr(self, name)
            if value is None:
                value = DEFAULT_SPINNING
            if not isinstance(value, bool):
                raise ConfigError(f"{name}: expected true or false, got {value!r}")
            entries[key] = "1" if value else "0"
        if self.intra_op_thread_affinities is not None:
            _check_affinities(self.intra_op_thread_affinities, threads)
            entries["session.intra_op_thread_affinities"] = self.intra_op_thread_affinities
        return entries


def _check_affinities(text, threads: int) -> None:
    where = "intra_op_thread_affinities"
    if not isinstance(text, str):
        raise ConfigError(f"{where}: expected a string such as \"1;2\", got {text!r}")
    if threads < 2:
        raise ConfigError(f"{where}: needs an explicit intra-op thread count >= 2 (threads); ORT pins the "
                          f"pool's threads - 1 worker threads, and this pool has {threads or 'ORT-chosen'}")
    groups = text.split(";")
    if len(groups) != threads - 1:
        raise ConfigError(f"{where}: expected {threads - 1} group(s) split by ';' (one per worker thread: "
                          f"threads - 1), got {len(groups)} in {text!r}")
    cpus = os.cpu_count() or 1
    for group in groups:
        for item in group.split(","):
            m = _AFFINITY_ITEM.fullmatch(item)
            lo, hi = (int(m[1]), int(m[2] or m[1])) if m else (0, 0)
            if not m or not 1 <= lo <= hi <= cpus:
                raise ConfigError(f"{where}: {item!r} in {text!r} is not a logical processor 1..{cpus} "
                                  f"or a range of them (such as 1-{cpus})")


_AFFINITY_ITEM = re.compile(r"(\d+)(?:-(\d+))?")


def session_options(intra_op_threads: int | None = None, inter_op_threads: int = 1,
                    thread_options: ThreadOptions | None = None) -> ort.SessionOptions:
    """Options for small CPUs: full graph optimisation, sequential execution,
    threads from the argument or EDGE_STREAM_THREADS (ORT's default otherwise),
    spinning and affinity from `thread_options` (checked here: ConfigError names the option).
    EDGE_STREAM_ORT_PROFILE=PREFIX turns on ORT's profiler: every run's node timings go to
    PREFIX_<date>.json, written when the session ends (`session.end_profiling()`), as the
    benchmarks read them (bench.profile)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    threads = intra_op_threads or int(os.environ.get("EDGE_STREAM_THREADS", "0"))
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = inter_op_threads
    for key, value in (thread_options or ThreadOptions()).config_entries(threads).items():
        opts.add_session_config_entry(key, value)
    opts.log_severity_level = 3
    profile = os.environ.get("EDGE_STREAM_ORT_PROFILE")
    if profile:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile
    return opts


class ModelRunner:
    """Owns the InferenceSession and checks the manifest against the graph once at load."""

    def __init__(self, model_path: str | Path, manifest: Manifest, providers=None,
                 intra_op_threads: int | None = None, thread_options: ThreadOptions | None = None):
        self.manifest = manifest
        self.path = Path(model_path)
        if not self.path.is_file():
            raise ManifestError(f"{self.path}: model file not found")
        self.providers = resolve_providers(providers)
        options = session_options(intra_op_threads, thread_options=thread_options)  # checked before any load
        self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=self.providers)
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
