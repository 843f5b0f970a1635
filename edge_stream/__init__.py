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

_LAZY = {"load": "edge_stream.runtime.model", "Model": "edge_stream.runtime.model",
         "Manifest": "edge_stream.runtime.manifest", "load_manifest": "edge_stream.runtime.manifest"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edge_stream' has no attribute {name!r}")
