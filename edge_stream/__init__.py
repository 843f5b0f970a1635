"""edge-stream: streaming inference on ONNX Runtime with explicit model state."""

from .errors import (ConfigError, EdgeStreamError, InputError, ManifestError, ProtocolError,
                     StreamStateError)
from .manifest import Manifest, load_manifest
from .model import Model, load

__all__ = [
    "load", "Model", "Manifest", "load_manifest",
    "EdgeStreamError", "ManifestError", "ConfigError", "InputError", "StreamStateError", "ProtocolError",
]
__version__ = "0.1.0"
