"""Fuzz and soak harness for a node (issue 13 §9): hostile messages on every path, valid streams beside them.

    python -m edge_stream.bench.fuzz fuzz [--rounds 20] [--seed 0]       # the longer fuzz
    python -m edge_stream.bench.fuzz soak [--minutes 10] [--streams 100]  # RSS and latency drift

`fuzz` starts a node (tiny LM on topic `tokens`, Silero VAD on `mic`, the VAD also on `fwd`,
the forwarded path: input-format messages from an upstream node's pub_id) and runs one clean
pass of valid streams, then the same valid streams again with every malformed kind of `CASES`
interleaved (`--rounds` times each, seeded shuffle). It checks that every malformed message is
answered (an error event on `errors` naming its stream where that was readable, or a control
reply with ok = false), never with code `internal`; that the valid streams' outputs are
bit-identical to the clean pass; and that the node stays alive (a stats heartbeat after each
batch, every worker alive where the heartbeat reports them). Exits 1 on any failure.

`soak` runs the node in its own process under `--streams` streams (half LM requests, half VAD
audio) plus a trickle of malformed messages for `--minutes`, and prints per minute the node's
RSS and the chunk -> first output latency (p50/p99, client side), and the drift last/first.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import numpy as np
import zmq

from edge_stream.bench.common import free_port, run_node_process
from edge_stream.node import wire
from edge_stream.node.client import Publisher, Subscriber
from edge_stream.stats import percentiles

log = logging.getLogger(__name__)

LM_TOPIC, VAD_TOPIC, FWD_TOPIC = "tokens", "mic", "fwd"
VOCAB = 512  # the tiny LM's; token cases use ids below it unless they test the vocabulary
MAX_PAYLOAD = 256 * 1024  # the fuzz node's max_payload_bytes


# ----- the malformed kinds ---------------------------------------------------------------------

@dataclass
class Sent:
    """What a case sent: input frames (per message) or control bodies, and what must answer them."""

    inputs: list = field(default_factory=list)  # [frames, ...] on the input path
    controls: list = field(default_factory=list)  # [body bytes, ...] to the ROUTER
    errors: int = 0  # error events expected
    stream: str | None = None  # the stream they must name (None: unreadable)


@dataclass(frozen=True)
class Case:
    name: str
    path: str  # "input", "forwarded" or "control"
    build: Callable[[Ctx], Sent]


class Ctx:
    """Builds headers for one case instance: a stream of its own and the publisher's numbering."""

    def __init__(self, pub_id: str, stream: str, lm_stream: str, fwd_pub_id: str):
        self.pub_id, self.stream, self.lm_stream, self.fwd_pub_id = pub_id, stream, lm_stream, fwd_pub_id

    def header(self, kind="chunk", **fields) -> dict:
        h = {"v": 1, "stream": self.stream, "pub_id": self.pub_id, "seq": 0, "kind": kind,
             "t_pub_ns": time.time_ns()}
        h.update(fields)
        return {k: v for k, v in h.items() if v is not _DROP}


_DROP = object()


def _topic(t: str) -> bytes:
    return t.encode() + b"\x00"


def _pack(h) -> bytes:
    return msgpack.packb(h, use_bin_type=True)


def _audio(n=512, dtype="<f4", fill=0.01) -> bytes:
    return np.full(n, fill, dtype).tobytes()


def _vad(ctx: Ctx, topic=VAD_TOPIC, payload=None, unreadable=False, **fields) -> Sent:
    """One VAD chunk with `fields` changed (or dropped with _DROP), answered by one error naming the
    stream (`unreadable`: the header cannot be decoded, so the error names none)."""
    h = ctx.header(**{"dtype": "float32", "shape": [512], "sr": 16000, **fields})
    if topic == FWD_TOPIC:
        h.setdefault("pub_id", ctx.fwd_pub_id)
        h.update(segment=0, start_sample=0)
    frames = [_topic(topic), _pack(h)]
    if payload is not None:
        frames += payload if isinstance(payload, list) else [payload]
    elif "dtype" in h and "shape" in h:
        frames.append(_audio())
    stream = h.get("stream") if isinstance(h.get("stream"), str) and not unreadable else None
    return Sent(inputs=[frames], errors=1, stream=stream)


def _raw(frames: list, stream=None) -> Callable[[Ctx], Sent]:
    return lambda ctx: Sent(inputs=[frames], errors=1, stream=stream)


def _lm_then(ctx: Ctx, bad: dict | None = None, kind="end", payload=None, **fields) -> Sent:
    """A valid LM chunk on the case's stream, then a bad message on it (the stream must be open)."""
    ok = ctx.header(dtype="int64", shape=[3])
    first = [_topic(LM_TOPIC), _pack(ok), np.array([1, 2, 3], "<i8").tobytes()]
    h = ctx.header(kind=kind, seq=1, **fields)
    frames = [_topic(LM_TOPIC), _pack(h)] + ([payload] if payload is not None else [])
    return Sent(inputs=[first, frames], errors=1, stream=ctx.stream)


def _lm(ctx: Ctx, ids: np.ndarray | None = None, payload=None, **fields) -> Sent:
    ids = np.array([1, 2, 3], "<i8") if ids is None else ids
    h = ctx.header(dtype=fields.pop("dtype", wire.as_wire_array(ids)[1]), shape=fields.pop("shape", list(ids.shape)),
                   **fields)
    frames = [_topic(LM_TOPIC), _pack(h), ids.tobytes() if payload is None else payload]
    return Sent(inputs=[frames], errors=1, stream=ctx.stream)


def _control(body, **_) -> Callable[[Ctx], Sent]:
    return lambda ctx: Sent(controls=[body(ctx) if callable(body) else body])


def _open(**req) -> Callable[[Ctx], Sent]:
    return _control(lambda ctx: _pack({"v": 1, "id": 1, "op": "open", "stream": ctx.stream, **req}))


def _nested(depth: int):
    x: list = [1]
    for _ in range(depth):
        x = [x]
    return x


def _deep_map(depth: int) -> bytes:
    """A msgpack map nested `depth` levels deep, built by hand (msgpack-python refuses to pack it)."""
    inner = b"\x81\xa1a" * depth + b"\x01"
    return b"\x81\xa1x" + inner


CASES: list[Case] = [
    # --- framing and msgpack
    Case("truncated msgpack header", "input", lambda c: Sent([[_topic(VAD_TOPIC), _pack(c.header())[:7], _audio()]], errors=1)),
    Case("empty header frame", "input", _raw([_topic(VAD_TOPIC), b"", _audio()])),
    Case("header is a msgpack list", "input", _raw([_topic(VAD_TOPIC), _pack([1, 2, 3])])),
    Case("header is a msgpack int", "input", _raw([_topic(VAD_TOPIC), _pack(7)])),
    Case("header with trailing bytes", "input", lambda c: Sent([[_topic(VAD_TOPIC), _pack(c.header()) + b"\x00"]], errors=1)),
    Case("topic frame only", "input", _raw([_topic(VAD_TOPIC)])),
    Case("topic without NUL", "input", _raw([b"mic", _pack({"v": 1})])),  # not subscribed: must not be answered
    Case("bad UTF-8 topic", "input", _raw([b"mic\x00\xff\xfe\x00", _pack({"v": 1})])),
    Case("unknown topic under a subscribed prefix", "input",
         lambda c: Sent([[b"mic\x00x\x00", _pack(c.header(dtype="float32", shape=[512], sr=16000)), _audio()]],
                        errors=1, stream=c.stream)),
    Case("map with int keys", "input", _raw([_topic(VAD_TOPIC), b"\x81\x01\x02"])),
    Case("ext value in header", "input", lambda c: _vad(c, unreadable=True, note=msgpack.ExtType(5, b"xyz"))),
    Case("bin value in header", "input", lambda c: _vad(c, unreadable=True, note=b"\x00\x01")),
    Case("empty bin value in header", "input", lambda c: _vad(c, unreadable=True, note=b"")),
    Case("deep nesting in shape", "input", lambda c: _vad(c, shape=_nested(200))),
    Case("deep nesting, hand-built map", "input", _raw([_topic(VAD_TOPIC), _deep_map(5000)])),
    Case("invalid UTF-8 in a str field", "input", _raw([_topic(VAD_TOPIC), b"\x81\xa6stream\xa2\xff\xfe"])),
    Case("oversize header", "input", lambda c: _vad(c, unreadable=True, note="x" * (70 * 1024))),
    Case("huge array in header", "input", lambda c: _vad(c, unreadable=True, note=list(range(5000)))),
    # --- every required header field, missing or mistyped
    Case("v missing", "input", lambda c: _vad(c, v=_DROP)),
    Case("v = 2", "input", lambda c: _vad(c, v=2)),
    Case("v as string", "input", lambda c: _vad(c, v="1")),
    Case("stream missing", "input", lambda c: _vad(c, stream=_DROP)),
    Case("stream as int", "input", lambda c: _vad(c, stream=42)),
    Case("stream as list", "input", lambda c: _vad(c, stream=["a"])),
    Case("stream empty", "input", lambda c: _vad(c, stream="")),
    Case("stream with newline", "input", lambda c: _vad(c, stream=c.stream + "\nx")),
    Case("stream with NUL", "input", lambda c: _vad(c, stream=c.stream + "\x00x")),
    Case("stream with escape chars", "input", lambda c: _vad(c, stream=c.stream + "\x1b[2J")),
    Case("stream of 200 characters", "input", lambda c: _vad(c, stream=(c.stream + "-" * 200)[:200])),
    Case("stream of 126 characters (output topic too long)", "input", lambda c: _vad(c, stream=(c.stream + "-" * 126)[:126])),
    Case("pub_id missing", "input", lambda c: _vad(c, pub_id=_DROP)),
    Case("pub_id as int", "input", lambda c: _vad(c, pub_id=12345)),
    Case("seq missing", "input", lambda c: _vad(c, seq=_DROP)),
    Case("seq as string", "input", lambda c: _vad(c, seq="0")),
    Case("seq as float", "input", lambda c: _vad(c, seq=1.5)),
    Case("seq as bool", "input", lambda c: _vad(c, seq=True)),
    Case("seq negative", "input", lambda c: _vad(c, seq=-1)),
    Case("seq hugely negative", "input", lambda c: _vad(c, seq=-(2**63))),
    Case("kind missing", "input", lambda c: _vad(c, kind=_DROP)),
    Case("kind unknown", "input", lambda c: _vad(c, kind="launch_missiles")),
    Case("kind as int", "input", lambda c: _vad(c, kind=3)),
    Case("t_pub_ns missing", "input", lambda c: _vad(c, t_pub_ns=_DROP)),
    Case("t_pub_ns as string", "input", lambda c: _vad(c, t_pub_ns="now")),
    Case("t_pub_ns fractional float", "input", lambda c: _vad(c, t_pub_ns=1.5)),
    Case("t_capture_ns as string", "input", lambda c: _vad(c, t_capture_ns="then")),
    Case("t_capture_ns as list", "input", lambda c: _vad(c, t_capture_ns=[1])),
    # --- dtype, shape, payload
    Case("dtype not whitelisted", "input", lambda c: _vad(c, dtype="complex64")),
    Case("dtype as list", "input", lambda c: _vad(c, dtype=["float32"])),
    Case("dtype as map", "input", lambda c: _vad(c, dtype={"t": "float32"})),
    Case("dtype as int", "input", lambda c: _vad(c, dtype=5)),
    Case("dtype missing", "input", lambda c: _vad(c, dtype=_DROP, payload=_audio())),
    Case("shape missing", "input", lambda c: _vad(c, shape=_DROP, payload=_audio())),
    Case("shape as string", "input", lambda c: _vad(c, shape="512")),
    Case("shape negative", "input", lambda c: _vad(c, shape=[-512])),
    Case("shape of rank 5", "input", lambda c: _vad(c, shape=[1, 1, 1, 1, 512])),
    Case("shape empty", "input", lambda c: _vad(c, shape=[])),
    Case("shape with zero size", "input", lambda c: _vad(c, shape=[0], payload=b"")),
    Case("shape of floats", "input", lambda c: _vad(c, shape=[512.0])),
    Case("shape nested", "input", lambda c: _vad(c, shape=[[512]])),
    Case("shape of bools", "input", lambda c: _vad(c, shape=[True])),
    Case("shape huge", "input", lambda c: _vad(c, shape=[2**40])),
    Case("payload too short", "input", lambda c: _vad(c, payload=_audio(500))),
    Case("payload too long", "input", lambda c: _vad(c, payload=_audio(600))),
    Case("two payload frames", "input", lambda c: _vad(c, payload=[_audio(), _audio()])),
    Case("chunk without payload frame", "input", lambda c: _vad(c, payload=[])),
    Case("payload on an end message", "input",
         lambda c: Sent([[_topic(VAD_TOPIC), _pack(c.header(kind="end")), _audio()]], errors=1, stream=c.stream)),
    Case("oversize payload", "input",
         lambda c: _vad(c, shape=[MAX_PAYLOAD // 4 + 1024], payload=_audio(MAX_PAYLOAD // 4 + 1024))),
    Case("NaN samples", "input", lambda c: _vad(c, payload=_audio(fill=np.nan))),
    Case("Inf samples", "input", lambda c: _vad(c, payload=_audio(fill=np.inf))),
    Case("-Inf float16 samples", "input", lambda c: _vad(c, dtype="float16", payload=_audio(dtype="<f2", fill=-np.inf))),
    Case("NaN float16 samples", "input", lambda c: _vad(c, dtype="float16", payload=_audio(dtype="<f2", fill=np.nan))),
    # --- model meaning
    Case("audio of rank 2", "input", lambda c: _vad(c, shape=[2, 256])),
    Case("int64 samples", "input", lambda c: _vad(c, dtype="int64", payload=bytes(8 * 512))),
    Case("sample rate 8000", "input", lambda c: _vad(c, sr=8000)),
    Case("sample rate as string", "input", lambda c: _vad(c, sr="16k")),
    Case("sample rate nested", "input", lambda c: _vad(c, sr=_nested(50))),
    Case("text chunk to the VAD", "input", lambda c: _vad(c, dtype=_DROP, shape=_DROP, text="hello", payload=[])),
    Case("text empty to the LM", "input",
         lambda c: Sent([[_topic(LM_TOPIC), _pack(c.header(text=""))]], errors=1, stream=c.stream)),
    Case("text as int to the LM", "input",
         lambda c: Sent([[_topic(LM_TOPIC), _pack(c.header(text=5))]], errors=1, stream=c.stream)),
    Case("text and dtype together", "input",
         lambda c: Sent([[_topic(LM_TOPIC), _pack(c.header(text="hi", dtype="int64", shape=[1])),
                          np.array([1], "<i8").tobytes()]], errors=1, stream=c.stream)),
    Case("float token ids", "input", lambda c: _lm(c, np.array([1.0, 2.0], "<f4"))),
    Case("token id outside the vocabulary", "input", lambda c: _lm(c, np.array([1, VOCAB + 7], "<i8"))),
    Case("negative token id", "input", lambda c: _lm(c, np.array([-3], "<i8"))),
    Case("uint8 token ids", "input", lambda c: _lm(c, np.array([1, 2], "u1"))),
    Case("int16 token ids", "input", lambda c: _lm(c, np.array([1, 2], "<i2"))),
    Case("token ids of shape [2, 3]", "input", lambda c: _lm(c, np.ones((2, 3), "<i8"))),
    Case("max_new_tokens as string", "input", lambda c: _lm_then(c, max_new_tokens="many")),
    Case("max_new_tokens 2**62", "input", lambda c: _lm_then(c, max_new_tokens=2**62)),
    Case("max_new_tokens negative", "input", lambda c: _lm_then(c, max_new_tokens=-5)),
    Case("temperature negative", "input", lambda c: _lm_then(c, temperature=-1.0)),
    Case("temperature subnormal", "input", lambda c: _lm_then(c, temperature=1e-310)),
    Case("temperature as list", "input", lambda c: _lm_then(c, temperature=[1])),
    Case("top_p 5", "input", lambda c: _lm_then(c, top_p=5.0)),
    Case("top_k negative", "input", lambda c: _lm_then(c, top_k=-2)),
    Case("seed -1", "input", lambda c: _lm_then(c, seed=-1)),
    # --- streams and sequence
    Case("end for an unknown stream", "input",
         lambda c: Sent([[_topic(VAD_TOPIC), _pack(c.header(kind="end"))]], errors=1, stream=c.stream)),
    Case("reset for an unknown stream", "input",
         lambda c: Sent([[_topic(VAD_TOPIC), _pack(c.header(kind="reset"))]], errors=1, stream=c.stream)),
    Case("close for an unknown stream", "input",
         lambda c: Sent([[_topic(VAD_TOPIC), _pack(c.header(kind="close"))]], errors=1, stream=c.stream)),
    Case("an LM stream's name on the VAD topic (wrong model)", "input",
         lambda c: _vad(c, stream=c.lm_stream)),
    Case("duplicate seq", "input", lambda c: Sent(
        [[_topic(VAD_TOPIC), _pack(c.header(dtype="float32", shape=[512], sr=16000)), _audio()]] * 2,
        errors=1, stream=c.stream)),
    # --- the forwarded path (input format from an upstream node)
    Case("forwarded: truncated msgpack", "forwarded",
         lambda c: Sent([[_topic(FWD_TOPIC), _pack(c.header())[:9], _audio()]], errors=1)),
    Case("forwarded: NaN audio", "forwarded", lambda c: _vad(c, FWD_TOPIC, payload=_audio(fill=np.nan))),
    Case("forwarded: word text to an audio model", "forwarded",
         lambda c: _vad(c, FWD_TOPIC, dtype=_DROP, shape=_DROP, text="left", payload=[])),
    Case("forwarded: payload size mismatch", "forwarded", lambda c: _vad(c, FWD_TOPIC, payload=_audio(100))),
    Case("forwarded: seq as string", "forwarded", lambda c: _vad(c, FWD_TOPIC, seq="3")),
    Case("forwarded: end carrying audio", "forwarded",
         lambda c: Sent([[_topic(FWD_TOPIC), _pack(c.header(kind="end", pub_id=c.fwd_pub_id)), _audio()]],
                        errors=1, stream=c.stream)),
    Case("forwarded: stream with control chars", "forwarded", lambda c: _vad(c, FWD_TOPIC, stream="seg\x07")),
    # --- control requests (answered by a reply with ok = false)
    Case("control: not msgpack", "control", _control(b"\xc1\xc1")),
    Case("control: truncated msgpack", "control", _control(_pack({"op": "status", "v": 1})[:5])),
    Case("control: a msgpack list", "control", _control(_pack(["open"]))),
    Case("control: op missing", "control", _control(_pack({"v": 1, "id": 1}))),
    Case("control: op unknown", "control", _control(_pack({"v": 1, "id": 1, "op": "format_disk"}))),
    Case("control: op as int", "control", _control(_pack({"v": 1, "id": 1, "op": 4}))),
    Case("control: op as map", "control", _control(_pack({"v": 1, "id": 1, "op": {"a": 1}}))),
    Case("control: open without stream", "control", _control(_pack({"v": 1, "id": 1, "op": "open", "model": "vad"}))),
    Case("control: open with stream as int", "control", _open(stream=5, model="vad")),
    Case("control: open with stream newline", "control", _control(lambda c: _pack(
        {"v": 1, "id": 1, "op": "open", "stream": c.stream + "\n", "model": "vad"}))),
    Case("control: open with stream of 200 characters", "control", _control(lambda c: _pack(
        {"v": 1, "id": 1, "op": "open", "stream": (c.stream + "-" * 200)[:200], "model": "vad"}))),
    Case("control: open with stream of 126 characters", "control", _control(lambda c: _pack(
        {"v": 1, "id": 1, "op": "open", "stream": (c.stream + "-" * 126)[:126], "model": "vad"}))),
    Case("control: open with model as list", "control", _open(model=["vad"])),
    Case("control: open with model as map", "control", _open(model={"vad": 1})),
    Case("control: open with unknown model", "control", _open(model="gpt-9")),
    Case("control: open with options as list", "control", _open(model="vad", options=[1])),
    Case("control: open with threshold as string", "control", _open(model="vad", options={"threshold": "high"})),
    Case("control: open with kv_window as string", "control", _open(model="lm", options={"kv_window": "big"})),
    Case("control: open with kv_window negative", "control", _open(model="lm", options={"kv_window": -4})),
    Case("control: open with unknown option", "control", _open(model="vad", options={"warp": 9})),
    Case("control: open with nested options", "control", _open(model="vad", options={"threshold": _nested(60)})),
    Case("control: open with a bin value", "control", _open(model="vad", note=b"\x01")),
    Case("control: open with an ext value", "control", _open(model="vad", note=msgpack.ExtType(1, b"a"))),
    Case("control: rewind n negative", "control", _control(lambda c: _pack(
        {"v": 1, "id": 1, "op": "rewind", "stream": c.lm_stream, "n": -1}))),
    Case("control: rewind n as string", "control", _control(lambda c: _pack(
        {"v": 1, "id": 1, "op": "rewind", "stream": c.lm_stream, "n": "2"}))),
    Case("control: rewind n huge", "control", _control(lambda c: _pack(
        {"v": 1, "id": 1, "op": "rewind", "stream": c.stream, "n": 2**63}))),
    Case("control: close an unknown stream", "control", _control(lambda c: _pack(
        {"v": 1, "id": 1, "op": "close", "stream": c.stream}))),
    Case("control: reset an unknown stream", "control", _control(lambda c: _pack(
        {"v": 1, "id": 1, "op": "reset", "stream": c.stream}))),
    Case("control: open an already open stream", "control", _control(lambda c: _pack(
        {"v": 1, "id": 1, "op": "open", "stream": c.lm_stream, "model": "lm"}))),
]

# Not answered by design: a topic frame the node never subscribed to is filtered by ZeroMQ itself.
UNANSWERED = {"topic without NUL"}


# ----- the valid streams and their outputs -------------------------------------------------------

def valid_traffic(seed: int, n_lm: int, n_vad: int, prefix: str) -> dict[str, list]:
    """Per valid stream, its messages in order: (topic, kind, data, extra). Same seed, same traffic."""
    rng = np.random.default_rng(seed)
    out: dict[str, list] = {}
    for i in range(n_lm):
        msgs = [(LM_TOPIC, "chunk", rng.integers(0, VOCAB, int(rng.integers(2, 40))).astype(np.int64), {})
                for _ in range(int(rng.integers(1, 4)))]
        msgs.append((LM_TOPIC, "end", None, {"max_new_tokens": 8}))
        out[f"{prefix}lm{i}"] = msgs
    for i in range(n_vad):
        msgs = [(VAD_TOPIC, "chunk", (rng.standard_normal(int(rng.integers(200, 4000))) * 0.3).astype(np.float32),
                 {"sr": 16000}) for _ in range(int(rng.integers(2, 6)))]
        msgs.append((VAD_TOPIC, "end", None, {}))
        out[f"{prefix}vad{i}"] = msgs
    return out


_COMPARED = ("kind", "seq", "in_seq", "event", "sample", "n_blocks", "start_sample", "samples", "position",
             "n_tokens", "index", "token_id", "text", "reason")


def fingerprint(rec) -> tuple:
    """An output as compared with the clean run: everything but names, ids and times, payload as bytes."""
    h = rec.header
    return tuple(h.get(k) for k in _COMPARED) + (None if rec.data is None else rec.data.tobytes(),)


# ----- the harness -------------------------------------------------------------------------------

@dataclass
class Report:
    messages: int = 0  # malformed messages sent (input + forwarded)
    controls: int = 0  # malformed control requests sent
    kinds: int = 0
    unanswered: list = field(default_factory=list)  # (case, detail)
    internal: list = field(default_factory=list)  # error events with code internal
    mismatched: list = field(default_factory=list)  # valid streams whose outputs differ from the clean run
    dead: list = field(default_factory=list)  # liveness failures
    codes: Counter = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not (self.unanswered or self.internal or self.mismatched or self.dead)

    def as_dict(self) -> dict:
        return {"kinds": self.kinds, "messages": self.messages, "controls": self.controls, "ok": self.ok,
                "unanswered": self.unanswered, "internal": self.internal, "mismatched": self.mismatched,
                "dead": self.dead, "codes": dict(self.codes)}


class Harness:
    """Clients of one node: valid publishers, a raw input socket for malformed frames, a DEALER for
    control requests, and a subscriber to outputs, errors and stats."""

    def __init__(self, ep_in: str, ep_out: str, ep_ctl: str | None, stats_topic="stats", errors_topic="errors"):
        self.ctx = zmq.Context()
        self.sub = Subscriber(["out/", errors_topic, stats_topic], connect=[ep_out], prefix=True, ctx=self.ctx)
        self.errors_topic, self.stats_topic = errors_topic, stats_topic
        self.pubs = {t: Publisher(t, connect=[ep_in], ctx=self.ctx, sndhwm=100_000) for t in (LM_TOPIC, VAD_TOPIC)}
        self.raw = self.ctx.socket(zmq.XPUB)  # malformed frames; XPUB so the node's subscriptions are seen
        self.raw.linger = 0
        self.raw.sndhwm = 100_000
        self.raw.connect(ep_in)
        self.ctl = None
        if ep_ctl:
            self.ctl = self.ctx.socket(zmq.DEALER)
            self.ctl.linger = 0
            self.ctl.connect(ep_ctl)
        for pub in self.pubs.values():
            if not pub.wait_ready(10):
                raise RuntimeError(f"node never subscribed to {pub.topic!r}")
        self._wait_raw_subscribed()
        self.outputs: dict[str, list] = defaultdict(list)
        self.errors: list[dict] = []
        self.stats: list[dict] = []
        self.heartbeat()  # our subscriptions are in place once a heartbeat reaches us

    def _wait_raw_subscribed(self, timeout=10.0):
        want = {_topic(t) for t in (LM_TOPIC, VAD_TOPIC, FWD_TOPIC)}
        deadline = time.monotonic() + timeout
        while want and time.monotonic() < deadline:
            if self.raw.poll(100):
                m = self.raw.recv()
                if m[:1] == b"\x01":
                    want.discard(m[1:])
        if want:
            raise RuntimeError(f"node never subscribed to {sorted(want)} on the raw socket")

    def pump(self, timeout: float) -> bool:
        """Receive one message into outputs/errors/stats; False on timeout."""
        rec = self.sub.recv(timeout)
        if rec is None:
            return False
        if rec.msg.topic == self.stats_topic:
            self.stats.append(rec.header)
        elif rec.msg.topic == self.errors_topic:
            self.errors.append(rec.header)
        else:
            self.outputs[rec.header.get("stream")].append(rec)
        return True

    def wait(self, until: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not until():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.pump(min(left, 0.5))
        return True

    def heartbeat(self, timeout: float = 10.0) -> dict | None:
        """The next stats heartbeat (None if none comes: the loop is dead or stuck)."""
        n = len(self.stats)
        return self.stats[-1] if self.wait(lambda: len(self.stats) > n, timeout) else None

    def send_valid(self, stream: str, msg) -> None:
        topic, kind, data, extra = msg
        pub = self.pubs[topic]
        if kind == "chunk":
            pub.send(data, stream=stream, **extra)
        else:
            pub.send(stream=stream, kind=kind, **extra)

    def control(self, body: bytes, timeout: float = 5.0) -> dict | None:
        """Send one raw control body; the reply (decoded), or None when none comes."""
        self.ctl.send(body)
        if not self.ctl.poll(int(timeout * 1000)):
            return None
        return wire.unpack_header(self.ctl.recv(), max_array_len=4096)

    def run_streams(self, traffic: dict, timeout: float = 60.0, between=None) -> dict[str, list]:
        """Send the valid traffic (streams interleaved round-robin; `between()` called after each
        message), wait for each stream's `done`; returns each stream's output fingerprints."""
        queues = {s: list(m) for s, m in traffic.items()}
        while any(queues.values()):
            for s, q in queues.items():
                if q:
                    self.send_valid(s, q.pop(0))
                    if between is not None:
                        between()
        done = lambda: all(any(r.kind == "done" for r in self.outputs[s]) for s in traffic)
        if not self.wait(done, timeout):
            missing = [s for s in traffic if not any(r.kind == "done" for r in self.outputs[s])]
            raise AssertionError(f"no 'done' for streams {missing} within {timeout} s")
        return {s: [fingerprint(r) for r in self.outputs[s]] for s in traffic}

    def close(self):
        for p in self.pubs.values():
            p.close()
        self.sub.close()
        self.raw.close(0)
        if self.ctl is not None:
            self.ctl.close(0)
        self.ctx.term()


def run_fuzz(h: Harness, seed: int = 0, rounds: int = 1, n_lm: int = 3, n_vad: int = 3, batch: int = 40,
             cases: list[Case] | None = None, answer_timeout: float = 10.0) -> Report:
    """The clean pass, then the fuzz pass (every case `rounds` times, shuffled with `seed`, spread over
    the valid traffic); returns what failed. The node must serve topics tokens (LM), mic and fwd (VAD)."""
    cases = CASES if cases is None else cases
    rep = Report(kinds=len(cases))
    clean = h.run_streams(valid_traffic(seed, n_lm, n_vad, f"clean{seed}-"))
    rng = random.Random(seed)
    todo = [c for c in cases for _ in range(rounds)]
    rng.shuffle(todo)
    fuzz_pub, fwd_pub = wire.new_pub_id(), wire.new_pub_id()
    expected: list[tuple[str, Sent]] = []
    counter = iter(range(10**9))
    lm_stream = f"clean{seed}-lm0"  # a valid LM stream, open since the clean pass: wrong-model and rewind targets
    errors_before = len(h.errors)

    def answered_so_far() -> int:
        return sum(s.errors for _, s in expected)

    def settle() -> None:
        """Wait until every error sent so far is answered and the node still beats; record failures."""
        want = errors_before + answered_so_far()
        if not h.wait(lambda: len(h.errors) >= want, answer_timeout):
            rep.dead.append(f"after {len(expected)} cases: {len(h.errors) - errors_before} of "
                            f"{answered_so_far()} error events came")
        beat = h.heartbeat()
        if beat is None:
            rep.dead.append(f"no stats heartbeat after {len(expected)} cases")
        elif any(not w.get("alive", True) for w in beat.get("workers", [])):
            rep.dead.append(f"a worker died: {beat['workers']}")

    def send_one() -> None:
        if not todo:
            return
        case = todo.pop()
        i = next(counter)
        ctx = Ctx(fuzz_pub, f"fz{seed}-{i}", lm_stream, fwd_pub)
        sent = case.build(ctx)
        if case.name in UNANSWERED:
            sent.errors = 0
        for frames in sent.inputs:
            h.raw.send_multipart(frames)
            rep.messages += 1
        for body in sent.controls:
            rep.controls += 1
            reply = h.control(body)
            if reply is None or reply.get("ok") is not False or not reply.get("error"):
                rep.unanswered.append((case.name, f"control reply {reply!r}"))
        expected.append((case.name, sent))
        if len(expected) % batch == 0:
            settle()

    fuzz = h.run_streams(valid_traffic(seed, n_lm, n_vad, f"fuzz{seed}-"), between=send_one)
    while todo:
        send_one()
    settle()
    # Every readable case's stream is named by an error event; none is `internal`.
    got = Counter(e.get("stream") for e in h.errors[errors_before:])
    for name, sent in expected:
        if sent.errors and sent.stream is not None:
            if got[sent.stream] < sent.errors:
                rep.unanswered.append((name, f"no error event for stream {sent.stream!r}"))
            got[sent.stream] -= sent.errors
    for e in h.errors[errors_before:]:
        rep.codes[e.get("code")] += 1
        if e.get("code") == "internal":
            rep.internal.append(e.get("reason"))
    for (name_c, fp_c), (name_f, fp_f) in zip(sorted(clean.items()), sorted(fuzz.items())):
        if fp_c != fp_f:
            rep.mismatched.append(name_f)
    return rep


# ----- node set-up -------------------------------------------------------------------------------

def fuzz_models(lm_dir: str, vad_dir: str) -> list[dict]:
    return [{"name": "lm", "dir": str(lm_dir), "topics": [LM_TOPIC]},
            {"name": "vad", "dir": str(vad_dir), "topics": [VAD_TOPIC, FWD_TOPIC]}]


def _launch_text(ep_in, ep_out, ep_ctl, lm_dir, vad_dir, lm_kv_window=None, **node) -> str:
    lines = ["[[node]]", 'name = "fuzz"', f'input.bind = ["{ep_in}"]', f'output.bind = ["{ep_out}"]',
             f'control.bind = ["{ep_ctl}"]']
    lines += [f"{k} = {json.dumps(v)}" for k, v in node.items()]
    for m in fuzz_models(Path(lm_dir).resolve(), Path(vad_dir).resolve()):
        lines += ["[[node.models]]", f'name = "{m["name"]}"', f'dir = "{m["dir"]}"', f"topics = {json.dumps(m['topics'])}"]
        if m["name"] == "lm" and lm_kv_window:
            lines.append(f"stream_options = {{ kv_window = {int(lm_kv_window)} }}")
    return "\n".join(lines) + "\n"


def start_node_process(folder: Path, lm_dir, vad_dir, **node):
    """`edge-stream run` in its own process; returns (proc, input, output, control endpoints)."""

    eps = [f"tcp://127.0.0.1:{free_port()}" for _ in range(3)]
    launch = folder / "fuzz.toml"
    launch.write_text(_launch_text(*eps, lm_dir, vad_dir, **node))
    proc = run_node_process(launch)
    return (proc, *eps)


NODE_OPTIONS = {"workers": 2, "max_streams": 5000, "stats_interval_s": 0.2, "max_payload_bytes": MAX_PAYLOAD,
                "stream_ttl_s": 30.0}


def main_fuzz(args) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        proc, ep_in, ep_out, ep_ctl = start_node_process(Path(tmp), args.lm, args.vad, **NODE_OPTIONS)
        try:
            h = Harness(ep_in, ep_out, ep_ctl)
            t0 = time.perf_counter()
            rep = run_fuzz(h, seed=args.seed, rounds=args.rounds, n_lm=args.lm_streams, n_vad=args.vad_streams)
            h.close()
            alive = proc.poll() is None
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(10)
    print(f"fuzz: {rep.kinds} kinds x {args.rounds} rounds: {rep.messages} malformed messages, {rep.controls} "
          f"control requests, {time.perf_counter() - t0:.0f} s; error codes {dict(rep.codes)}")
    for what in ("unanswered", "internal", "mismatched", "dead"):
        for item in getattr(rep, what):
            print(f"  {what}: {item}")
    print("node process alive at the end:", alive)
    print("result:", "PASS" if rep.ok and alive else "FAIL")
    return 0 if rep.ok and alive else 1


# ----- soak -------------------------------------------------------------------------------------

def main_soak(args) -> int:
    """`--streams` streams for `--minutes`; per minute: node RSS, client-side latency p50/p99."""
    from edge_stream.bench.churn import rss_kb

    n_lm, n_vad = args.streams // 2, args.streams - args.streams // 2
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        # Endless LM streams need a window: their state is then bounded, so RSS growth would be a leak.
        proc, ep_in, ep_out, ep_ctl = start_node_process(Path(tmp), args.lm, args.vad, lm_kv_window=args.kv_window,
                                                         **NODE_OPTIONS)
        h = Harness(ep_in, ep_out, ep_ctl)
        sent_at: dict[tuple, int] = {}  # (stream, in_seq) -> t_send_ns
        lat: list[tuple[float, float]] = []  # (t_since_start_s, latency_ms) of each first output
        errors = Counter()
        stop = threading.Event()
        t0 = time.monotonic()
        lock = threading.Lock()

        def receive():
            seen = set()
            while not stop.is_set():
                rec = h.sub.recv(0.2)
                if rec is None:
                    continue
                hd = rec.header
                if rec.msg.topic == "errors":
                    errors[hd.get("code")] += 1
                    continue
                if rec.msg.topic == "stats":
                    h.stats.append(hd)
                    continue
                key = (hd.get("stream"), hd.get("in_seq"))
                with lock:
                    t_send = sent_at.pop(key, None)
                if t_send is not None and key not in seen and rec.kind in ("fed", "result"):
                    lat.append((time.monotonic() - t0, (rec.t_recv_ns - t_send) / 1e6))

        rx = threading.Thread(target=receive, daemon=True)
        rx.start()
        minutes: list[dict] = []
        bad = [c for c in CASES if c.path != "control"]
        next_minute, period = t0 + 60, 1.0 / args.rate
        i, fuzz_i, fuzz_pub = 0, 0, wire.new_pub_id()
        lm_cycle = {f"soak-lm{k}": 0 for k in range(n_lm)}
        try:
            while time.monotonic() - t0 < args.minutes * 60:
                # One tick: each VAD stream a chunk, one LM stream a request, one malformed message.
                for k in range(n_vad):
                    s = f"soak-vad{k}"
                    x = (rng.standard_normal(1600) * 0.3).astype(np.float32)
                    with lock:
                        seq = h.pubs[VAD_TOPIC]._next_seq(s)
                        sent_at[(s, seq)] = time.time_ns()
                    frames = wire.encode_input(VAD_TOPIC, s, h.pubs[VAD_TOPIC].pub_id, seq, "chunk", data=x, sr=16000)
                    h.pubs[VAD_TOPIC].sock.send_multipart(frames, copy=False)
                s = f"soak-lm{i % max(1, n_lm)}"
                if n_lm:
                    ids = rng.integers(0, VOCAB, int(rng.integers(4, 64))).astype(np.int64)
                    with lock:
                        seq = h.pubs[LM_TOPIC]._next_seq(s)
                        sent_at[(s, seq)] = time.time_ns()
                    h.pubs[LM_TOPIC].sock.send_multipart(
                        wire.encode_input(LM_TOPIC, s, h.pubs[LM_TOPIC].pub_id, seq, "chunk", data=ids), copy=False)
                    h.pubs[LM_TOPIC].end(stream=s, max_new_tokens=8)
                    lm_cycle[s] += 1
                case = bad[fuzz_i % len(bad)]
                for frames in case.build(Ctx(fuzz_pub, f"soakfz-{fuzz_i}", "soak-lm0", fuzz_pub)).inputs:
                    h.raw.send_multipart(frames)
                fuzz_i += 1
                i += 1
                time.sleep(max(0.0, t0 + i * period - time.monotonic()))  # pacing the load, not a readiness wait
                if time.monotonic() >= next_minute:
                    minutes.append(_minute(len(minutes) + 1, proc.pid, lat, rss_kb))
                    next_minute += 60
            if len(minutes) < max(1, round(args.minutes)):  # the last minute ended with the loop
                minutes.append(_minute(len(minutes) + 1, proc.pid, lat, rss_kb))
            alive = proc.poll() is None
            beat = h.stats[-1] if h.stats else {}
        finally:
            stop.set()
            rx.join(2)
            h.close()
            proc.send_signal(signal.SIGINT)
            proc.wait(10)
    first, last = minutes[0], minutes[-1]
    print(f"soak: {args.streams} streams ({n_lm} endless LM streams, kv_window {args.kv_window}, one request per "
          f"tick round-robin; {n_vad} VAD at {args.rate:g} chunks/s each), {args.minutes} min, {fuzz_i} malformed messages; error codes {dict(errors)}")
    print("minute  RSS MiB  latency p50 ms  p99 ms  n")
    for m in minutes:
        print(f"{m['minute']:6d}  {m['rss_mib']:7.1f}  {m['p50_ms']:14.2f}  {m['p99_ms']:6.2f}  {m['n']}")
    drift = {"rss": last["rss_mib"] / first["rss_mib"], "p50": last["p50_ms"] / first["p50_ms"],
             "p99": last["p99_ms"] / first["p99_ms"]}
    print(f"drift last/first minute: RSS {drift['rss']:.3f}  p50 {drift['p50']:.3f}  p99 {drift['p99']:.3f}; "
          f"node alive: {alive}; workers: {beat.get('workers', '?')}")
    if args.json:
        args.json.write_text(json.dumps({"minutes": minutes, "drift": drift, "errors": dict(errors),
                                         "alive": alive, "streams": args.streams}, indent=1))
    return 0 if alive else 1


def _minute(n, pid, lat, rss_kb) -> dict:
    window = [ms for t, ms in lat if n - 1 <= t / 60 < n] or [ms for _, ms in lat[-100:]]
    p50, p99 = percentiles(np.array(window), (50, 99))
    return {"minute": n, "rss_mib": rss_kb(pid)["VmRSS"] / 1024, "p50_ms": float(p50), "p99_ms": float(p99),
            "n": len(window)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("fuzz", "soak", "kinds"))
    p.add_argument("--lm", default="models/tiny-llama")
    p.add_argument("--vad", default="models/silero-vad")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=20, help="fuzz: each kind this many times")
    p.add_argument("--lm-streams", type=int, default=6)
    p.add_argument("--vad-streams", type=int, default=6)
    p.add_argument("--minutes", type=float, default=10.0, help="soak: duration")
    p.add_argument("--streams", type=int, default=100, help="soak: streams (half LM, half VAD)")
    p.add_argument("--rate", type=float, default=5.0, help="soak: ticks per second (a chunk per VAD stream each)")
    p.add_argument("--kv-window", type=int, default=256, help="soak: the LM streams' kv_window (bounded state)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.mode == "kinds":
        for c in CASES:
            print(f"{c.path:9s}  {c.name}")
        print(len(CASES), "kinds")
        return 0
    return main_fuzz(args) if args.mode == "fuzz" else main_soak(args)


if __name__ == "__main__":
    sys.exit(main())
