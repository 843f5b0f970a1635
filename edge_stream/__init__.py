"""edge-stream: streaming inference on ONNX Runtime with explicit model state.

The public verbs. Heavy modules (onnxruntime) load on first use, so importing a light
part of the package (`edge_stream.node.client` on a sensor) never pays for the runtime.
"""

from edge_stream.errors import ConfigError, EdgeStreamError, InputError, ManifestError, ProtocolError, StreamStateError

__all__ = [
    "load", "Model", "Manifest", "load_manifest",
    "EdgeStreamError", "ManifestError", "ConfigError", "InputError", "StreamStateError", "ProtocolError",
]
__version__ = "0.1.0"

_LAZY = {"Model": "edge_stream.runtime.model",
         "Manifest": "edge_stream.runtime.manifest", "load_manifest": "edge_stream.runtime.manifest"}


def load(model_dir, providers=None, intra_op_threads: int | None = None, thread_options=None):
    """Load a model directory (model.onnx + manifest.json [+ tokenizer.json]); many streams share it.
    `thread_options`: ONNX Runtime spinning and affinity (runtime.runner.ThreadOptions).

    A manifest with an `events` section (a VAD) gives a `voice.vad.VadModel`, whose streams
    return speech events besides probabilities; the runtime below knows nothing of events.
    """
    from edge_stream.runtime.model import Model, read_manifest

    manifest = read_manifest(model_dir)
    cls = Model
    if manifest.events is not None:
        from edge_stream.voice.vad import VadModel as cls
    return cls(model_dir, providers=providers, intra_op_threads=intra_op_threads, manifest=manifest,
               thread_options=thread_options)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edge_stream' has no attribute {name!r}")
