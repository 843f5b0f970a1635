"""The one small exception hierarchy of edge_stream.

Messages name the stream, the field and the expected value, so a robot
engineer reading a log line knows what to change without reading our code.
"""


class EdgeStreamError(Exception):
    """Base of every error edge_stream raises on purpose."""


class ManifestError(EdgeStreamError):
    """A model directory or manifest is missing, malformed or inconsistent with its ONNX file."""


class ConfigError(EdgeStreamError):
    """A launch file, CLI option or API argument is invalid."""


class InputError(EdgeStreamError):
    """A chunk was rejected (dtype, rank, shape, NaN/Inf, vocabulary, size limits).

    The stream that raised it is unchanged: nothing already fed is lost.
    """


class StreamStateError(EdgeStreamError):
    """A stream operation cannot be done in the stream's current state
    (rewind past what is retained, restore a snapshot of another model, stream full)."""


class ProtocolError(EdgeStreamError):
    """A wire message is malformed or not of protocol v1."""
