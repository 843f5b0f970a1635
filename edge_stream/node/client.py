"""Python clients of a node: `Publisher` for sensors, `Subscriber` for controllers, `Control` requests.

They speak wire protocol v1 (docs/protocol.md) and nothing else; a C++ or
Node.js client written from the document is their equal.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import zmq

from edge_stream.errors import EdgeStreamError
from edge_stream.node import wire
from edge_stream.node.config import Endpoints
from edge_stream.node.security import attach, client_curve

log = logging.getLogger(__name__)


def _as_list(x) -> list[str]:
    return [x] if isinstance(x, str) else list(x or [])


def _attach(sock: zmq.Socket, connect, bind, secret_key: str | None, server_key: str | None, where: str) -> None:
    """Bind/connect `sock` with the node's own code (security.attach): a CURVE client of the
    server whose public key file is `server_key` when key files are given, plain text otherwise."""
    curve = client_curve(sock.context, secret_key, server_key, where)
    attach(sock, Endpoints(bind=tuple(_as_list(bind)), connect=tuple(_as_list(connect))), curve, where)


class Publisher:
    """Publishes one topic's chunks with numbering (`seq` per stream), timestamps and chunking.

    Uses an XPUB socket so `wait_ready()` can see the node's subscription arrive:
    chunks sent before it would be dropped by PUB/SUB (the slow-joiner problem).
    `pub_id` is new on every start, so a node sees a restart as a new publisher.
    """

    def __init__(self, topic: str, connect=(), bind=(), ctx: zmq.Context | None = None,
                 secret_key: str | None = None, server_key: str | None = None, sndhwm: int = 1000):
        self.topic = topic
        self._topic_frame = wire.topic_frame(topic)
        self.pub_id = wire.new_pub_id()
        self.seqs: dict[str, itertools.count] = {}
        self.ctx = ctx or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.XPUB)
        self.sock.linger = 0
        self.sock.sndhwm = sndhwm
        self.sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # see every subscription, also repeated ones
        _attach(self.sock, connect, bind, secret_key, server_key, f"publisher {topic!r}")
        self.subscribed = False

    def wait_ready(self, timeout: float = 5.0) -> bool:
        """Wait until a subscriber (a node or a proxy) subscribed to this topic; False on timeout."""
        deadline = time.monotonic() + timeout
        while not self.subscribed:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(int(left * 1000)):
                return self.subscribed
            msg = self.sock.recv()
            # Subscription messages: b"\x01" + prefix. A prefix of our topic frame matches us.
            if msg[:1] == b"\x01" and self._topic_frame.startswith(msg[1:]):
                self.subscribed = True
        return True

    def _next_seq(self, stream: str) -> int:
        counter = self.seqs.get(stream)
        if counter is None:
            counter = self.seqs[stream] = itertools.count()
        return next(counter)

    def send(self, data=None, stream: str | None = None, text: str | None = None, kind: str = "chunk",
             t_capture_ns: int | None = None, **extra) -> int:
        """Publish one message on `stream` (default: the topic name); returns its seq."""
        stream = stream or self.topic
        seq = self._next_seq(stream)
        if t_capture_ns is None and kind == "chunk":
            t_capture_ns = wire.now_ns()
        frames = wire.encode_input(self.topic, stream, self.pub_id, seq, kind, data=data, text=text,
                                   t_capture_ns=t_capture_ns, **extra)
        self.sock.send_multipart(frames, copy=False)
        return seq

    def send_chunks(self, data: np.ndarray, chunk: int, stream: str | None = None, **extra) -> list[int]:
        """Split `data` along axis 0 into chunks of `chunk` rows and publish each; returns their seqs."""
        return [self.send(data[i:i + chunk], stream=stream, **extra) for i in range(0, len(data), chunk)]

    def end(self, stream: str | None = None, **extra) -> int:
        """End of input: an LM node generates now; a VAD node answers `done`."""
        return self.send(stream=stream, kind="end", **extra)

    def reset(self, stream: str | None = None) -> int:
        return self.send(stream=stream, kind="reset")

    def close(self) -> None:
        self.sock.close(linger=0)


@dataclass
class Received:
    """An output with the checks a controller wants: gap before it, age on arrival."""

    msg: wire.OutMessage
    t_recv_ns: int
    gap: int = 0  # outputs of this (pub_id, stream) missed just before this one
    new_publisher: bool = False  # first output from this node start (pub_id)
    stale: bool = False  # older than max_age_ms (from t_capture_ns, or t_pub_ns)

    @property
    def header(self) -> dict:
        return self.msg.header

    @property
    def kind(self) -> str:
        return self.msg.kind

    @property
    def data(self):
        return self.msg.data

    @property
    def age_ms(self) -> float:
        h = self.msg.header
        t0 = h.get("t_capture_ns") or h.get("t_pub_ns") or self.t_recv_ns
        return (self.t_recv_ns - t0) / 1e6


@dataclass
class Subscriber:
    """Receives node outputs on exact topics (name + NUL) and checks their sequence and age."""

    topics: list
    connect: list = field(default_factory=list)
    bind: list = field(default_factory=list)
    max_age_ms: float | None = None
    ctx: zmq.Context | None = None
    secret_key: str | None = None
    server_key: str | None = None
    prefix: bool = False  # True: subscribe to topic prefixes (e.g. "out/" for every stream)

    def __post_init__(self):
        self.ctx = self.ctx or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.linger = 0
        for t in _as_list(self.topics):
            self.sock.setsockopt(zmq.SUBSCRIBE, t.encode() if self.prefix else wire.topic_frame(t))
        _attach(self.sock, self.connect, self.bind, self.secret_key, self.server_key, "subscriber")
        self.last_seq: dict[tuple, int] = {}
        self.gaps = 0

    def recv(self, timeout: float | None = 1.0) -> Received | None:
        """The next output, or None after `timeout` seconds (None: wait forever)."""
        if timeout is not None and not self.sock.poll(int(timeout * 1000)):
            return None
        frames = self.sock.recv_multipart()
        t_recv = wire.now_ns()
        msg = wire.decode_output(frames)
        rec = Received(msg, t_recv)
        h = msg.header
        key = (h.get("pub_id"), msg.topic)  # stats/errors have one seq per topic; outputs per stream topic
        seq = h.get("seq")
        if isinstance(seq, int):
            last = self.last_seq.get(key)
            if last is None:
                rec.new_publisher = True
            elif seq > last + 1:
                rec.gap = seq - last - 1
                self.gaps += rec.gap
            self.last_seq[key] = seq
        if self.max_age_ms is not None and rec.age_ms > self.max_age_ms:
            rec.stale = True
        return rec

    def recv_until(self, predicate, timeout: float = 5.0) -> list[Received]:
        """Collect outputs until one satisfies `predicate` (it is included) or `timeout` passes."""
        out, deadline = [], time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            rec = self.recv(left)
            if rec is None:
                break
            out.append(rec)
            if predicate(rec):
                break
        return out

    def close(self) -> None:
        self.sock.close(linger=0)


class Control:
    """Request/reply to a node's ROUTER control socket (a DEALER, so requests can overlap)."""

    def __init__(self, connect, ctx: zmq.Context | None = None, secret_key=None, server_key=None):
        self.ctx = ctx or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        _attach(self.sock, connect, (), secret_key, server_key, "control")
        self._ids = itertools.count(1)

    def request(self, op: str, timeout: float = 5.0, **fields) -> dict:
        """Send one request and wait for its reply (matched by `id`); EdgeStreamError on timeout."""
        rid = next(self._ids)
        self.sock.send(wire.pack({"v": wire.VERSION, "id": rid, "op": op, **fields}))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not self.sock.poll(int(left * 1000) + 1):
                break
            reply = wire.unpack_header(self.sock.recv(), max_array_len=4096)
            if reply.get("id") == rid:
                return reply
        raise EdgeStreamError(f"control {op}: no reply within {timeout} s")

    def wait_ready(self, timeout: float = 10.0) -> dict:
        """Poll `status` until the node says ready."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                st = self.request("status", timeout=min(1.0, max(0.05, deadline - time.monotonic())))
                if st.get("ready"):
                    return st
            except EdgeStreamError:
                pass
            if time.monotonic() > deadline:
                raise EdgeStreamError(f"node not ready within {timeout} s")

    def close(self) -> None:
        self.sock.close(linger=0)


