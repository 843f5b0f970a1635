"""Wire protocol v1: multipart frames `[topic, header, payload...]`, msgpack headers.

This module is the boundary: bytes from a socket are validated here once and
become a typed `InMessage`; nothing past it re-checks the framing. It knows
nothing about sockets or models. The document a C++ or Node.js controller
implements from is docs/protocol.md; keep the two in step.
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from edge_stream.errors import EdgeStreamError, InputError, ProtocolError

VERSION = 1
TOPIC_END = b"\x00"  # every topic frame ends with NUL, so subscribing to b"mic1\0" never matches "mic10"

# The dtype names a payload may declare, and their little-endian numpy types.
DTYPES = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "int16": np.dtype("<i2"),
    "int32": np.dtype("<i4"),
    "int64": np.dtype("<i8"),
    "uint8": np.dtype("u1"),
}
_WIRE_NAMES = {dt: name for name, dt in DTYPES.items()}  # little-endian dtype -> its name
INPUT_KINDS = ("chunk", "end", "reset", "close", "interrupt")
MAX_RANK = 4
MAX_NAME_LEN = 128
MAX_HEADER_BYTES = 64 * 1024
# Header fields every input message carries, with the Python types msgpack gives them.
REQUIRED = {"v": int, "stream": str, "pub_id": str, "seq": int, "kind": str, "t_pub_ns": int}
# Timestamps are wall-clock ns (about 1.7e18, over 2**53): a float cannot carry them exactly, so only
# msgpack integers are accepted, and the error says how a JavaScript client sends one.
_NS_HINT = "; send a msgpack integer of ns since the Unix epoch (JavaScript: a BigInt, packed as int64)"
RESERVED = {"v", "stream", "pub_id", "seq", "kind", "t_capture_ns", "t_pub_ns", "dtype", "shape", "text"}
# Every msgpack bin value starts with one of these bytes (bin 8, 16, 32). A header in which none occurs
# holds no bin value; one in which some does (inside a timestamp or a string, mostly) is walked.
_BIN_MARKERS = re.compile(b"[\xc4-\xc6]")


def topic_frame(topic: str) -> bytes:
    """The topic frame for `topic`: UTF-8 name + NUL (also the exact-match subscription prefix)."""
    check_name(topic, "topic")
    return topic.encode() + TOPIC_END


def check_name(name: Any, field_name: str, max_len: int = MAX_NAME_LEN) -> str:
    """Topic and stream names: 1-`max_len` (at most 128) characters, no NUL, no control characters."""
    if not isinstance(name, str) or not 0 < len(name) <= max_len or not name.isprintable():
        got = f"{name[:40]!r}... ({len(name)} characters)" if isinstance(name, str) and len(name) > 40 else repr(name)
        raise ProtocolError(f"{field_name}: expected a printable string of 1-{max_len} characters, got {got}")
    return name


def new_pub_id() -> str:
    """A random publisher id, new on every start, so a restart is visible to receivers (64 bits, hex)."""
    return os.urandom(8).hex()


def now_ns() -> int:
    """Wall-clock nanoseconds (time.time_ns): comparable across machines with synchronised clocks."""
    return time.time_ns()


def reject(exc_type: type[EdgeStreamError], reason: str, stream=None, seq=None, pub_id=None) -> EdgeStreamError:
    """An exception carrying what the node's error event needs: stream, seq, pub_id and reason."""
    where = f"stream {stream!r} seq {seq}" if stream is not None else "message"
    exc = exc_type(f"{where}: {reason}")
    exc.stream, exc.seq, exc.pub_id, exc.reason = stream, seq, pub_id, reason
    return exc


@dataclass(frozen=True)
class Limits:
    """Size limits enforced while decoding (bytes of one payload frame, elements of one header)."""

    max_payload_bytes: int = 4 * 1024 * 1024
    max_header_bytes: int = MAX_HEADER_BYTES
    max_text_chars: int = 64 * 1024
    # Longest stream name: a node lowers it so that its output topic (e.g. "out/{stream}") stays
    # within MAX_NAME_LEN characters (config.max_stream_chars).
    max_stream_chars: int = MAX_NAME_LEN


@dataclass
class InMessage:
    """One validated input message. `data` is a read-only view of the payload frame (no copy)."""

    topic: str
    stream: str
    pub_id: str
    seq: int
    kind: str
    t_pub_ns: int
    t_capture_ns: int | None = None
    data: np.ndarray | None = None  # chunk payload, shape as declared
    text: str | None = None  # text chunks (LMs with a tokenizer)
    extra: dict = field(default_factory=dict)  # model-specific fields, e.g. sr, max_new_tokens
    t_recv_ns: int = 0


def unpack_header(raw: bytes, limits: Limits = Limits(), max_array_len: int = MAX_RANK * 4) -> dict:
    """Decode a msgpack header map with bounded sizes; ProtocolError on anything else."""
    if len(raw) > limits.max_header_bytes:
        raise reject(ProtocolError, f"header is {len(raw)} bytes, over the limit of {limits.max_header_bytes}")
    try:
        header = msgpack.unpackb(
            raw, raw=False, strict_map_key=True, use_list=True, max_str_len=limits.max_text_chars * 4,
            max_bin_len=0, max_array_len=max_array_len, max_map_len=64, max_ext_len=0,
            ext_hook=_no_ext)
    except ProtocolError:
        raise
    except (ValueError, msgpack.UnpackException) as exc:  # ExtraData and FormatError are ValueErrors
        raise reject(ProtocolError, f"header is not valid msgpack ({type(exc).__name__}: {exc})") from None
    if not isinstance(header, dict):
        raise reject(ProtocolError, f"header must be a msgpack map, got {type(header).__name__}")
    if _BIN_MARKERS.search(raw) is not None:
        _no_bin(header)
    return header


def _no_bin(header: dict) -> None:
    """msgpack `bin` values are not part of protocol v1, even empty ones (max_bin_len=0 still lets
    b"" through). Iterative, since msgpack allows nesting deeper than Python's recursion limit."""
    todo: list = [header]
    while todo:
        x = todo.pop()
        items = list(x.items()) if isinstance(x, dict) else [(None, v) for v in x]
        for k, v in items:
            if isinstance(k, bytes) or isinstance(v, bytes):
                raise reject(ProtocolError, f"msgpack bin values are not allowed in headers (field {k!r})")
            if isinstance(v, (dict, list)):
                todo.append(v)


def _no_ext(code, data):
    raise reject(ProtocolError, f"msgpack extension types are not part of protocol v1 (got ext {code})")


def decode_input(frames: list[bytes] | list, limits: Limits = Limits()) -> InMessage:
    """Validate `[topic, header, payload?]` and return an InMessage.

    Raises ProtocolError (framing, header, dtype, size) or InputError (NaN/Inf)
    with `.stream`, `.seq`, `.pub_id` and `.reason` set as far as they could be read.
    """
    t_recv_ns = now_ns()
    if len(frames) < 2:
        raise reject(ProtocolError, f"expected [topic, header, payload...] frames, got {len(frames)} frame(s)")
    topic_raw = bytes(frames[0])
    if not topic_raw.endswith(TOPIC_END):
        raise reject(ProtocolError, "topic frame must end with a NUL byte")
    try:
        topic = topic_raw[:-1].decode()
    except UnicodeDecodeError:
        raise reject(ProtocolError, "topic is not valid UTF-8") from None
    h = unpack_header(frames[1], limits)
    stream, seq, pub_id = h.get("stream"), h.get("seq"), h.get("pub_id")
    stream = stream if isinstance(stream, str) else None
    seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else None
    pub_id = pub_id if isinstance(pub_id, str) else None

    def fail(reason, exc_type=ProtocolError):
        return reject(exc_type, reason, stream, seq, pub_id)

    if "v" in h and h["v"] != VERSION:
        raise fail(f"protocol version {h['v']!r} is not supported; this node speaks v{VERSION}")
    for name, typ in REQUIRED.items():
        if type(h.get(name)) is not typ:  # msgpack gives exact types; a bool is no int here
            if name not in h:
                raise fail(f"header field '{name}' is missing")
            hint = _NS_HINT if name.endswith("_ns") else ""
            raise fail(f"header field '{name}' must be {typ.__name__}, got {type(h[name]).__name__}{hint}")
    try:
        check_name(h["stream"], "stream", limits.max_stream_chars)
    except ProtocolError as exc:
        raise fail(str(exc)) from None
    if not 0 <= h["seq"] < 2**64:
        raise fail(f"seq must be an unsigned 64-bit integer, got {h['seq']}")
    kind = h["kind"]
    if kind not in INPUT_KINDS:
        raise fail(f"kind {kind!r} is not one of {', '.join(INPUT_KINDS)}")
    t_capture = h.get("t_capture_ns")
    if t_capture is not None and (not isinstance(t_capture, int) or isinstance(t_capture, bool)):
        raise fail(f"header field 't_capture_ns' must be int, got {type(t_capture).__name__}{_NS_HINT}")

    _check_revision(h, kind, fail)
    msg = InMessage(topic=topic, stream=stream, pub_id=pub_id, seq=seq, kind=kind, t_pub_ns=h["t_pub_ns"],
                    t_capture_ns=t_capture, extra={k: v for k, v in h.items() if k not in RESERVED},
                    t_recv_ns=t_recv_ns)
    payload = frames[2:]
    if kind != "chunk":
        if payload:
            raise fail(f"a '{kind}' message carries no payload frames, got {len(payload)}")
        return msg
    if "text" in h:
        text = h["text"]
        if not isinstance(text, str) or not text:
            raise fail("header field 'text' must be a non-empty string")
        if len(text) > limits.max_text_chars:
            raise fail(f"text is {len(text)} characters, over the limit of {limits.max_text_chars}")
        if payload or "dtype" in h:
            raise fail("a text chunk carries no dtype, shape or payload frames")
        msg.text = text
        return msg
    msg.data = _decode_array(h, payload, limits, fail)
    return msg


def _check_revision(h: dict, kind: str, fail) -> None:
    """`replace_last` (int >= 0, chunks) and `revise` (true, text chunks): the fields that revise a
    stream's newest input; whether the model can is the policy's and the stream's to say."""
    k, revise = h.get("replace_last"), h.get("revise")
    if k is not None:
        if kind != "chunk":
            raise fail(f"'replace_last' belongs on a chunk, not on a '{kind}' message")
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < 2**32:
            raise fail(f"header field 'replace_last' must be an int in [0, 2**32), got {k!r}")
    if revise is not None:
        if revise is not True:
            raise fail(f"header field 'revise' must be true (or absent), got {revise!r}")
        if kind != "chunk" or "text" not in h:
            raise fail("'revise' belongs on a text chunk: it replaces the text since the last end")
        if k is not None:
            raise fail("a chunk carries 'revise' or 'replace_last', not both")


def _decode_array(h: dict, payload: list, limits: Limits, fail, strict: bool = True) -> np.ndarray:
    """The payload frame as a read-only ndarray view, after checking dtype, shape, size and finiteness."""
    dtype_name, shape = h.get("dtype"), h.get("shape")
    if dtype_name is None or shape is None:
        raise fail("a chunk needs 'dtype' and 'shape' (or 'text')")
    if not isinstance(dtype_name, str) or dtype_name not in DTYPES:
        raise fail(f"dtype {dtype_name!r} is not allowed; allowed: {', '.join(DTYPES)}")
    if (not isinstance(shape, list) or not 1 <= len(shape) <= MAX_RANK
            or not all(type(d) is int and d >= 0 for d in shape)):  # exact int: a bool is no size
        raise fail(f"shape must be a list of 1-{MAX_RANK} non-negative ints, got {shape!r}")
    if len(payload) != 1:
        raise fail(f"a chunk carries exactly one payload frame, got {len(payload)}")
    dtype = DTYPES[dtype_name]
    n = math.prod(shape)
    if n == 0 and strict:
        raise fail(f"empty chunk (shape {shape})")
    expected = n * dtype.itemsize
    if expected > limits.max_payload_bytes:
        raise fail(f"payload of {expected} bytes is over the limit of {limits.max_payload_bytes}")
    buf = payload[0].buffer if hasattr(payload[0], "buffer") else payload[0]  # zmq.Frame or bytes
    if len(buf) != expected:
        raise fail(f"payload is {len(buf)} bytes; shape {shape} of {dtype_name} needs {expected}")
    data = np.frombuffer(buf, dtype=dtype).reshape(shape)  # a view on the frame: no copy
    if strict and dtype.kind == "f" and not np.isfinite(data).all():
        raise fail("payload contains NaN or Inf", InputError)
    return data


# --- encoding (publishers and the node) -------------------------------------------------


def pack(header: dict) -> bytes:
    return msgpack.packb(header, use_bin_type=True)


def encode_input(topic: str, stream: str, pub_id: str, seq: int, kind: str, data: np.ndarray | None = None,
                 text: str | None = None, t_capture_ns: int | None = None, **extra) -> list:
    """Frames of one input message. `data` is sent from its own buffer (copied only if not C-contiguous LE)."""
    h = {"v": VERSION, "stream": stream, "pub_id": pub_id, "seq": seq, "kind": kind, "t_pub_ns": now_ns()}
    if t_capture_ns is not None:
        h["t_capture_ns"] = t_capture_ns
    h.update(extra)
    frames = [topic_frame(topic)]
    if text is not None:
        h["text"] = text
        frames.append(pack(h))
        return frames
    if data is not None:
        arr, name = as_wire_array(data)
        h["dtype"], h["shape"] = name, list(arr.shape)
        frames += [pack(h), arr]
        return frames
    frames.append(pack(h))
    return frames


def encode_control_reply(request: dict, fields: dict) -> bytes:
    """The body frame of a control reply: the request's `id` and `op` echoed, then `fields`."""
    return pack({"v": VERSION, "id": request.get("id"), "op": request.get("op"), **fields})


def as_wire_array(data) -> tuple[np.ndarray, str]:
    """(C-contiguous little-endian array, dtype name); ProtocolError for dtypes outside the whitelist."""
    arr = np.asarray(data)
    name = _WIRE_NAMES.get(arr.dtype)
    if name is not None and arr.flags.c_contiguous:  # the common case: sent as it is
        return arr, name
    for name, dt in DTYPES.items():
        if arr.dtype.newbyteorder("<") == dt:  # any byte order; sent little-endian
            return np.ascontiguousarray(arr, dtype=dt), name
    raise ProtocolError(f"dtype {arr.dtype} is not allowed on the wire; allowed: {', '.join(DTYPES)}")


def encode_output(topic: str | bytes, header: dict, data: np.ndarray | None = None) -> list:
    """Frames of one output message (node -> controllers); the header already has v/stream/kind etc.
    `topic`: its name, or the frame `topic_frame` made of it (a caller that keeps it per stream)."""
    frame = topic if isinstance(topic, bytes) else topic_frame(topic)
    if data is None:
        return [frame, pack(header)]
    arr, name = as_wire_array(data)
    header["dtype"], header["shape"] = name, list(arr.shape)
    return [frame, pack(header), arr]


@dataclass
class OutMessage:
    """A decoded node output (what a controller receives)."""

    topic: str
    header: dict
    data: np.ndarray | None = None

    @property
    def kind(self) -> str:
        return self.header.get("kind", "")

    @property
    def stream(self):
        return self.header.get("stream")


def decode_output(frames: list, limits: Limits = Limits()) -> OutMessage:
    """Decode a node output (lenient about extra fields, strict about framing and sizes)."""
    if len(frames) < 2 or not bytes(frames[0]).endswith(TOPIC_END):
        raise ProtocolError("output: expected [topic\\0, header, payload?] frames")
    topic = bytes(frames[0])[:-1].decode(errors="replace")
    h = unpack_header(bytes(frames[1]), limits, max_array_len=4096)
    if h.get("v") != VERSION:
        raise ProtocolError(f"output: protocol version {h.get('v')!r} is not v{VERSION}")
    data = None
    if len(frames) > 2:
        def fail(reason, exc_type=ProtocolError):
            return reject(exc_type, reason, h.get("stream"), h.get("seq"))
        data = _decode_array(h, frames[2:], limits, fail, strict=False)  # outputs may be empty
    return OutMessage(topic, h, data)
