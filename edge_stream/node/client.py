"""Python clients of a node: `Publisher` for sensors, `Subscriber` for controllers, `Control` requests.

They speak wire protocol v1 (docs/protocol.md) and nothing else; a C++ or
Node.js client written from the document is their equal.
"""

from __future__ import annotations

import collections
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

    Readiness follows the subscribers: with ZMQ_IMMEDIATE a connection that breaks (the node
    stopped or is restarting) takes its subscription with it, so `ready` turns False when the
    last subscriber of the topic leaves, nothing queues for the dead node meanwhile (no stale
    burst on its restart), and the restarted node's subscription makes it True again
    (`resubscribed` counts those returns). Call `wait_ready()` again after `ready` went False.
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
        # No pipe to a peer that is not connected: a broken connection drops its subscription
        # (libzmq then hands us b"\x00" + prefix once the topic's last subscriber is gone).
        self.sock.setsockopt(zmq.IMMEDIATE, 1)
        self.sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)  # a node that vanished without closing is seen
        self.sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
        _attach(self.sock, connect, bind, secret_key, server_key, f"publisher {topic!r}")
        self._prefixes: set[bytes] = set()  # subscribed prefixes of our topic frame
        self._was_ready = False
        self.resubscribed = 0  # times a subscriber came back after all had left (a node restart)

    @property
    def subscribed(self) -> bool:
        """Whether some subscriber (a node, a proxy) has our topic, as last read from the socket."""
        return bool(self._prefixes)

    @property
    def ready(self) -> bool:
        """Read the (un)subscriptions waiting on the socket, without blocking; True while subscribed."""
        while self.sock.poll(0):
            self._take(self.sock.recv())
        return self.subscribed

    def _take(self, msg: bytes) -> None:
        """One (un)subscription message: b"\\x01" + prefix subscribes, b"\\x00" + prefix leaves."""
        prefix = msg[1:]
        if not self._topic_frame.startswith(prefix):  # another topic's
            return
        if msg[:1] == b"\x01":
            if not self._prefixes and self._was_ready:
                self.resubscribed += 1
                log.info("publisher %r: subscribed again (node restarted or reconnected)", self.topic)
            self._prefixes.add(prefix)
            self._was_ready = True
        elif msg[:1] == b"\x00" and prefix in self._prefixes:
            self._prefixes.discard(prefix)
            if not self._prefixes:
                log.warning("publisher %r: no subscriber left (node stopped or restarting); "
                            "chunks are dropped until wait_ready() succeeds again", self.topic)

    def _wait(self, want: bool, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.ready != want:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(int(left * 1000)):
                return self.ready == want
        return True

    def wait_ready(self, timeout: float = 5.0) -> bool:
        """Wait until a subscriber (a node or a proxy) subscribed to this topic; False on timeout."""
        return self._wait(True, timeout)

    def wait_unsubscribed(self, timeout: float = 5.0) -> bool:
        """Wait until no subscriber of this topic is left (its node stopped or is restarting);
        False on timeout."""
        return self._wait(False, timeout)

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

    def interrupt(self, stream: str | None = None) -> int:
        """Barge-in: an LM generating for `stream` stops at its next token boundary (`done`, reason
        "interrupted"); nothing happens when it is not generating."""
        return self.send(stream=stream, kind="interrupt")

    def close(self) -> None:
        self.sock.close(linger=0)


@dataclass
class Received:
    """An output with the checks a controller wants: gap before it, age on arrival."""

    msg: wire.OutMessage
    t_recv_ns: int
    gap: int = 0  # messages of this (pub_id, topic, stream) missed just before this one
    new_publisher: bool = False  # first message of its (pub_id, topic, stream) seen here
    synthesized: bool = False  # made by this client (a `state_lost` event), not sent by a node
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
    """Receives node outputs on exact topics (name + NUL) and checks their sequence and age.

    Losses: every node message carries a `seq` per (node pub_id, topic, stream); a jump is
    messages this subscriber lost (its queue was full: the node drops per subscriber, and cannot
    see it). They are counted in `lost` (per key), `gaps` (total), on `Received.gap`, and logged.
    Restarts: a node (by `node` name) seen with a new pub_id (its boot id) has lost every
    stream's state; before that node's first new message, `recv` returns one synthesized
    `state_lost` event per stream this subscriber saw outputs of (and not `closed`)."""

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
        self.last_seq: dict[tuple, int] = {}  # (node pub_id, topic, stream or None) -> last seq
        self.lost: dict[tuple, int] = {}  # same key -> messages missed (seq gaps)
        self.gaps = 0  # all of them
        self.boots: dict[str, str] = {}  # node name -> its boot id (pub_id) last seen
        self.restarts = 0  # new boot ids seen for a known node
        self._stateful: dict[str, dict[str, str]] = {}  # node -> {stream: output topic} with state
        self._rebooted: set[str] = set()  # pub_ids that replaced an earlier boot of their node
        self._pending: collections.deque[Received] = collections.deque()  # synthesized, returned first

    def recv(self, timeout: float | None = 1.0) -> Received | None:
        """The next output (or a synthesized `state_lost`), or None after `timeout` seconds
        (None: wait forever)."""
        if self._pending:
            return self._pending.popleft()
        if timeout is not None and not self.sock.poll(int(timeout * 1000)):
            return None
        frames = self.sock.recv_multipart()
        t_recv = wire.now_ns()
        msg = wire.decode_output(frames)
        rec = Received(msg, t_recv)
        lost_state = self._check_boot(rec)
        self._check_seq(rec)
        if self.max_age_ms is not None and rec.age_ms > self.max_age_ms:
            rec.stale = True
        if lost_state:
            self._pending.extend(lost_state[1:] + [rec])
            return lost_state[0]
        return rec

    def _check_seq(self, rec: Received) -> None:
        """Count the messages missed before `rec` on its (pub_id, topic, stream)."""
        h, msg = rec.header, rec.msg
        # Errors are numbered per node (their `stream` names the offender); stats per node;
        # outputs and forwarded messages per stream.
        stream = None if msg.kind == "error" else h.get("stream")
        key = (h.get("pub_id"), msg.topic, stream)
        seq = h.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool):
            return
        last = self.last_seq.get(key)
        if last is None:
            rec.new_publisher = True
            # After a restart this subscriber was there all along: outputs numbered before the
            # first one it got were published while it was reconnecting, and are lost to it.
            missed = seq if stream is not None and key[0] in self._rebooted else 0
        else:
            missed = max(0, seq - last - 1)
        if missed:
            rec.gap = missed
            self.gaps += missed
            self.lost[key] = self.lost.get(key, 0) + missed
            log.warning("subscriber: lost %d message(s) on topic %r (stream %r, node pub_id %s) before "
                        "seq %d: this subscriber's queue was full or it was reconnecting", missed, msg.topic,
                        stream, key[0], seq)
        self.last_seq[key] = seq

    def _check_boot(self, rec: Received) -> list[Received]:
        """Track each node's boot id (its pub_id); on a new one, `state_lost` for its stateful streams."""
        h = rec.header
        node, boot = h.get("node"), h.get("pub_id")
        if not isinstance(node, str) or not isinstance(boot, str):
            return []  # forwarded input-format messages name no node
        stateful = self._stateful.setdefault(node, {})
        old = self.boots.get(node)
        lost: list[Received] = []
        if old is not None and old != boot:
            self.restarts += 1
            self._rebooted.add(boot)
            log.warning("node %r restarted (boot %s -> %s): state of stream(s) %s is lost", node, old, boot,
                        ", ".join(sorted(stateful)) or "none")
            for stream, topic in sorted(stateful.items()):
                header = {"v": wire.VERSION, "kind": "event", "event": "state_lost", "stream": stream,
                          "node": node, "pub_id": boot, "boot_id": boot, "old_boot_id": old,
                          "t_pub_ns": rec.t_recv_ns}
                lost.append(Received(wire.OutMessage(topic, header), rec.t_recv_ns, synthesized=True))
            stateful.clear()
        self.boots[node] = boot
        stream = h.get("stream")
        if rec.kind not in ("error", "stats", "boot") and isinstance(stream, str):
            if rec.kind == "event" and h.get("event") == "closed":
                stateful.pop(stream, None)
            else:
                stateful[stream] = rec.msg.topic
        return lost

    def forget(self, stream: str) -> None:
        """Drop the sequence bookkeeping of a stream that is closed for good (a gateway session that
        ended: its random name never comes back), so a long-lived subscriber of many short streams
        does not grow. Its outputs, should any still arrive, count as a new publisher's."""
        for key in [k for k in self.last_seq if k[2] == stream]:
            del self.last_seq[key]
            self.lost.pop(key, None)
        for streams in self._stateful.values():
            streams.pop(stream, None)

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


