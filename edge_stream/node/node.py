"""The streaming node: SUB inputs -> per-stream model state -> XPUB outputs, ROUTER control.

Threads (the only ones):
- the socket loop (`Node._loop`) owns every socket: it validates input at the
  boundary (wire.decode_input), tracks sequence numbers, keeps the stream
  table (TTL, max_streams), answers control requests and publishes errors,
  stats and what the workers produce. It never runs a model.
- `workers` inference threads (`_Worker`): ONNX Runtime releases the GIL, so
  models run here while the loop keeps reading. A stream always lands on the
  same worker (crc32 of its name), which keeps its chunks in order. Workers
  publish their outputs themselves through `_OutputSocket` (the one socket
  shared between threads, under a lock, and never polled) and hand control
  replies to the loop over an inproc PUSH/PULL pair. Chunks of block models
  (the VAD) that wait on a worker for different streams run as one batched
  model run (`BlockPolicy.chunks_batched`): same outputs, fewer runs under load.

Outputs go out on an XPUB with XPUB_NODROP: a full subscriber queue makes the
send fail with EAGAIN instead of dropping silently, so drops are counted
(stats `dropped`) and the node never blocks on a slow or dead controller.
Forwarded outputs (node chaining: a VAD gate's speech, a recognizer's words) go out
on the same XPUB in *input* format on the route's `forward_topic`, so the next
node's SUB takes them like a sensor's chunks (docs/protocol.md, "Chaining nodes").
"""

from __future__ import annotations

import collections
import itertools
import logging
import queue
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import zmq

from edge_stream.errors import ConfigError, EdgeStreamError, InputError, ProtocolError, StreamStateError
from edge_stream.node import wire
from edge_stream.node.config import NodeConfig
from edge_stream.node.policies import Output, Policy, policy_for
from edge_stream.node.security import Curve, attach

log = logging.getLogger(__name__)

_POLL_MS = 100  # longest the loop sleeps: bounds shutdown time and stats jitter
_DRAIN = 256  # messages taken from one socket per loop turn, so no socket starves the others
_SEEN_PUBLISHERS = 8  # pub_ids remembered per stream (restarted sensors leave old ones behind)
_CONTROL_OPS = ("status", "open", "close", "reset", "rewind")
_STOP = object()  # tells a worker to finish
_MAX_BATCH = 64  # chunks of different streams run together at most (block models)


@dataclass
class Route:
    """A model the node serves, with its policy; chunks on `cfg.topics` go here."""

    name: str
    cfg: Any
    model: Any
    policy: Policy


@dataclass(eq=False)
class StreamEntry:
    """One stream of the node. Loop-thread fields and worker-thread fields are never shared."""

    name: str
    route: Route
    worker: "_Worker"
    options: dict
    opened_s: float
    last_seen_s: float  # loop: monotonic time of the last input
    seqs: dict = field(default_factory=dict)  # loop: pub_id -> last seq seen
    chunks: int = 0  # loop
    session: Any = None  # worker: the runtime stream (opened on first use)
    out_seq: int = 0  # worker: seq of this stream's next output


@dataclass
class _Job:
    """Work for a worker: `op` is an input kind (chunk/end/reset/close), a control op, or 'event'."""

    entry: StreamEntry
    op: str
    msg: wire.InMessage | None = None
    fields: dict | None = None  # 'event' payload, control request
    reply_to: list | None = None  # control envelope, when a reply is due
    n_out: int = 0  # outputs published so far


class _Stats:
    """Counters the loop and workers bump (plain ints: a lost increment under a race only blurs stats)."""

    def __init__(self):
        self.chunks_in = self.outputs_out = self.errors = self.dropped = 0
        self.gaps = self.duplicates = self.evicted = self.refused = 0
        self.batched = 0  # chunks that ran in a batch with chunks of other streams
        self.samples = {"queue_ms": collections.deque(maxlen=4096), "infer_ms": collections.deque(maxlen=4096),
                        "node_ms": collections.deque(maxlen=4096)}

    def latency(self) -> dict:
        """p50/p99/n of each latency sample set since the last call (ms); empties the sets."""
        out = {}
        for name, dq in self.samples.items():
            vals = np.fromiter(list(dq), dtype=np.float64)
            dq.clear()
            if not vals.size:
                out[name] = {"p50": None, "p99": None, "n": 0}
                continue
            p50, p99 = _percentiles(vals, (50, 99))
            out[name] = {"p50": round(p50, 4), "p99": round(p99, 4), "n": int(vals.size)}
        return out


def _percentiles(vals: np.ndarray, qs) -> list[float]:
    """np.percentile's default (linear) percentiles of `vals`, sorted in place. Done by hand because
    np.percentile runs in the socket loop's stats tick: its first call takes 6-10 ms (lazy set-up,
    a stall the chunks then in flight wait through) and each later one ~0.1 ms; a sort takes ~20 us."""
    vals.sort()
    last = vals.size - 1
    out = []
    for q in qs:
        pos = q / 100 * last
        lo = int(pos)
        hi = min(lo + 1, last)
        out.append(float(vals[lo] + (vals[hi] - vals[lo]) * (pos - lo)))
    return out


class _OutputSocket:
    """The output XPUB, used by the loop and the workers under one lock.

    ZeroMQ lets a socket move between threads given a full memory barrier, and
    the lock is that barrier; nothing polls this socket, so no two threads ever
    touch it at once. Publishing from the worker saves a thread hop per output
    (about half the node's overhead on a busy 2-core machine)."""

    def __init__(self, sock: zmq.Socket, stats: "_Stats"):
        self.sock = sock
        self.stats = stats
        self.lock = threading.Lock()

    def send(self, frames) -> None:
        with self.lock:
            try:
                self.sock.send_multipart(frames, zmq.NOBLOCK, copy=False)
                self.stats.outputs_out += 1
            except zmq.Again:  # some subscriber of this topic is at its HWM (XPUB_NODROP)
                self.stats.dropped += 1

    def drain_subscriptions(self) -> None:
        """Read (and drop) subscription messages so they do not pile up in the XPUB."""
        with self.lock:
            for _ in range(_DRAIN):
                try:
                    self.sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    return

    def close(self) -> None:
        with self.lock:
            self.sock.close(linger=0)


class Node:
    """One node of a launch file. `start()` returns once every socket is bound/connected and
    models are loaded (`ready`); `stop()` shuts down within about 100 ms plus one model run."""

    def __init__(self, cfg: NodeConfig, routes: list[Route] | None = None):
        self.cfg = cfg
        self.pub_id = wire.new_pub_id()
        self.routes = routes if routes is not None else load_routes(cfg)
        self.by_topic = {t: r for r in self.routes for t in r.cfg.topics}
        self.by_name = {r.name: r for r in self.routes}
        self.streams: dict[str, StreamEntry] = {}
        self.stats = _Stats()
        self.endpoints: dict[str, list[str]] = {}
        self.ready = threading.Event()
        self.limits = wire.Limits(max_payload_bytes=cfg.max_payload_bytes)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._error_seq = itertools.count()
        self._stats_seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._results_addr = f"inproc://edge-stream-results-{self.pub_id}"
        self._started_s = time.monotonic()
        # Next seq of forwarded messages per stream. Kept here, not in StreamEntry, so it survives a
        # stream's eviction: a restart at 0 would look like duplicates downstream. One worker per stream.
        self._forward_seqs: dict[str, int] = {}
        self.ctx = zmq.Context()
        self.workers = [_Worker(self, i) for i in range(cfg.workers)]

    # ----- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> "Node":
        """Start the loop and workers; return when ready. Raises what set-up raised (bad key, bind)."""
        self._thread = threading.Thread(target=self._run, name=f"edge-stream-{self.cfg.name}", daemon=True)
        self._thread.start()
        if not self.ready.wait(timeout) and self._error is None:
            self.stop()
            raise EdgeStreamError(f"node {self.cfg.name!r}: not ready after {timeout} s")
        if self._error is not None:
            self._thread.join(timeout)
            raise self._error
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop and workers, close sockets (LINGER 0) and terminate the context."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("node %s: loop did not stop within %.1f s", self.cfg.name, timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ----- the socket loop ---------------------------------------------------------------------

    def _socket(self, kind: int) -> zmq.Socket:
        cfg = self.cfg
        s = self.ctx.socket(kind)
        s.linger = 0
        s.setsockopt(zmq.HEARTBEAT_IVL, cfg.heartbeat_ivl_ms)
        s.setsockopt(zmq.HEARTBEAT_TIMEOUT, cfg.heartbeat_timeout_ms)
        s.setsockopt(zmq.HEARTBEAT_TTL, cfg.heartbeat_timeout_ms)
        return s

    def _setup(self):
        cfg = self.cfg
        self.curve = Curve(self.ctx, cfg.security, f"node {cfg.name!r}.security")
        self.sub = self._socket(zmq.SUB)
        self.sub.rcvhwm = cfg.rcvhwm
        self.sub.setsockopt(zmq.MAXMSGSIZE, cfg.max_message_bytes)
        for topic in self.by_topic:
            self.sub.setsockopt(zmq.SUBSCRIBE, wire.topic_frame(topic))  # exact topic: name + NUL
        attach(self.sub, cfg.input, self.curve, f"node {cfg.name!r}.input")
        self.pub = self._socket(zmq.XPUB)
        self.pub.sndhwm = cfg.sndhwm
        self.pub.setsockopt(zmq.XPUB_NODROP, 1)  # EAGAIN at the HWM instead of a silent drop: we count it
        attach(self.pub, cfg.output, self.curve, f"node {cfg.name!r}.output")
        self.out = _OutputSocket(self.pub, self.stats)
        self.ctl = None
        if cfg.control:
            self.ctl = self._socket(zmq.ROUTER)
            self.ctl.setsockopt(zmq.MAXMSGSIZE, wire.MAX_HEADER_BYTES * 2)
            attach(self.ctl, cfg.control, self.curve, f"node {cfg.name!r}.control")
        self.results = self.ctx.socket(zmq.PULL)
        self.results.linger = 0
        self.results.bind(self._results_addr)
        self.endpoints = {name: [s.last_endpoint.decode()] if s.last_endpoint else []
                          for name, s in (("input", self.sub), ("output", self.pub), ("control", self.ctl)) if s}
        for w in self.workers:
            w.start()

    def _run(self):
        try:
            self._setup()
        except BaseException as exc:  # reported to start(); never swallowed
            self._error = exc
            self._teardown()
            self.ready.set()
            return
        self._started_s = time.monotonic()
        self.ready.set()
        log.info("node %s ready: %s", self.cfg.name, self.endpoints)
        try:
            self._loop()
        except Exception:
            log.exception("node %s: loop failed", self.cfg.name)
        finally:
            self._teardown()

    def _loop(self):
        poller = zmq.Poller()
        for s in (self.sub, self.ctl, self.results):  # not the output socket: workers use it too
            if s is not None:
                poller.register(s, zmq.POLLIN)
        next_tick = time.monotonic()  # first stats message right away: it tells clients we are up
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_tick:
                self._tick(now)
                next_tick = now + self.cfg.stats_interval_s
            timeout = min(_POLL_MS, max(0.0, (next_tick - now) * 1e3))
            events = dict(poller.poll(timeout))
            if self.results in events:
                self._drain(self.results, self._forward)
            if self.sub in events:
                self._drain(self.sub, self._on_input, copy=False)
            if self.ctl is not None and self.ctl in events:
                self._drain(self.ctl, self._on_control)

    def _drain(self, sock, handle, copy=True):
        for _ in range(_DRAIN):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=copy)
            except zmq.Again:
                return
            handle(frames)

    def _teardown(self):
        for w in self.workers:
            w.jobs.put(_STOP)
        stuck = False
        for w in self.workers:
            if w.is_alive():
                w.join(5.0)
                stuck |= w.is_alive()
        if getattr(self, "out", None) is not None:
            self.out.close()
        for name in ("sub", "pub", "ctl", "results"):
            s = getattr(self, name, None)
            if s is not None:
                s.close(linger=0)
        if getattr(self, "curve", None) is not None:
            self.curve.stop()
        if stuck:  # a model run longer than the join timeout: do not wait on its socket
            log.error("node %s: a worker is still running; context left to the process exit", self.cfg.name)
        else:
            self.ctx.term()
        log.info("node %s stopped", self.cfg.name)

    # ----- publishing (loop thread only) -------------------------------------------------------

    def forward_seq(self, stream: str) -> int:
        """The seq of the next forwarded message of `stream` (called by the stream's worker only)."""
        seq = self._forward_seqs.get(stream, 0)
        self._forward_seqs[stream] = seq + 1
        return seq

    def _send(self, frames) -> None:
        self.out.send(frames)

    def _forward(self, frames):
        """A control reply from a worker."""
        if self.ctl is not None:
            self.ctl.send_multipart(frames, zmq.NOBLOCK)

    def error_frames(self, reason: str, code: str, stream=None, in_seq=None, in_pub_id=None) -> list:
        """An error event for the errors topic (built by the loop or a worker)."""
        self.stats.errors += 1
        header = {"v": wire.VERSION, "kind": "error", "node": self.cfg.name, "pub_id": self.pub_id,
                  "seq": next(self._error_seq), "stream": stream, "in_seq": in_seq, "in_pub_id": in_pub_id,
                  "code": code, "reason": reason, "t_pub_ns": wire.now_ns()}
        return wire.encode_output(self.cfg.errors_topic, header)

    def _error_event(self, reason, code, stream=None, in_seq=None, in_pub_id=None):
        log.warning("node %s: %s (stream %r seq %s): %s", self.cfg.name, code, stream, in_seq, reason)
        self._send(self.error_frames(reason, code, stream, in_seq, in_pub_id))

    def _tick(self, now: float):
        """Once per stats interval: evict idle streams, publish the stats/heartbeat message."""
        self.out.drain_subscriptions()
        ttl = self.cfg.stream_ttl_s
        for name in [n for n, e in self.streams.items() if now - e.last_seen_s > ttl]:
            entry = self.streams.pop(name)
            self.stats.evicted += 1
            entry.worker.submit(_Job(entry, "close", fields={"reason": "ttl"}))
        st = self.stats
        header = {"v": wire.VERSION, "kind": "stats", "node": self.cfg.name, "pub_id": self.pub_id,
                  "seq": next(self._stats_seq), "t_pub_ns": wire.now_ns(), "ready": True,
                  "uptime_s": round(now - self._started_s, 3), "streams_open": len(self.streams),
                  "models": sorted(self.by_name), "topics": sorted(self.by_topic),
                  "chunks_in": st.chunks_in, "outputs_out": st.outputs_out, "errors": st.errors,
                  "dropped": st.dropped, "gaps": st.gaps, "duplicates": st.duplicates,
                  "evicted": st.evicted, "refused": st.refused, "batched": st.batched,
                  "queue_depths": [w.jobs.qsize() for w in self.workers], "latency_ms": st.latency()}
        self._send(wire.encode_output(self.cfg.stats_topic, header))

    # ----- input (loop thread) -----------------------------------------------------------------

    def _on_input(self, frames):
        try:
            msg = wire.decode_input(frames, self.limits)
        except (ProtocolError, InputError) as exc:
            code = "input" if isinstance(exc, InputError) else "protocol"
            self._error_event(exc.reason, code, exc.stream, exc.seq, exc.pub_id)
            # A rejected message whose numbering was readable still counts, so the next one is no "gap".
            entry = self.streams.get(exc.stream)
            if entry is not None and exc.pub_id is not None and exc.seq is not None \
                    and exc.seq > entry.seqs.get(exc.pub_id, -1):
                entry.seqs[exc.pub_id] = exc.seq
            return
        route = self.by_topic.get(msg.topic)
        if route is None:  # cannot happen with exact subscriptions; kept as a boundary check
            self._error_event(f"topic {msg.topic!r} feeds no model", "unknown_topic", msg.stream, msg.seq, msg.pub_id)
            return
        entry = self.streams.get(msg.stream)
        if entry is None:
            if msg.kind != "chunk":
                self._error_event(f"unknown stream: a '{msg.kind}' needs an open stream", "unknown_stream",
                                  msg.stream, msg.seq, msg.pub_id)
                return
            if not self.cfg.auto_open:
                self._error_event("unknown stream: open it with a control 'open' request (auto_open = false)",
                                  "unknown_stream", msg.stream, msg.seq, msg.pub_id)
                return
            try:
                entry = self.open_stream(msg.stream, route)
            except StreamStateError as exc:
                self._error_event(str(exc), "limit", msg.stream, msg.seq, msg.pub_id)
                return
            except EdgeStreamError as exc:  # the route's stream_options are wrong: a config error
                self._error_event(str(exc), "config", msg.stream, msg.seq, msg.pub_id)
                return
        elif entry.route is not route:
            self._error_event(f"stream belongs to model {entry.route.name!r}; topic {msg.topic!r} feeds "
                              f"{route.name!r}", "wrong_model", msg.stream, msg.seq, msg.pub_id)
            return
        if not self._check_seq(entry, msg):
            return
        entry.last_seen_s = time.monotonic()
        if msg.kind == "chunk":
            entry.chunks += 1
            self.stats.chunks_in += 1
        if msg.kind == "close":
            self.streams.pop(entry.name, None)
        entry.worker.submit(_Job(entry, msg.kind, msg))

    def _check_seq(self, entry: StreamEntry, msg: wire.InMessage) -> bool:
        """Gap/duplicate/out-of-order detection per (pub_id, stream). False: drop the message."""
        last = entry.seqs.get(msg.pub_id)
        if last is None:
            if entry.seqs:  # another publisher (or a restart: pub_id is random per start)
                entry.worker.submit(_Job(entry, "event", msg, fields={
                    "event": "new_publisher", "pub_id_seen": msg.pub_id, "first_seq": msg.seq}))
            if len(entry.seqs) >= _SEEN_PUBLISHERS:
                entry.seqs.pop(next(iter(entry.seqs)))
        elif msg.seq <= last:
            self.stats.duplicates += 1
            what = "duplicate" if msg.seq == last else "out-of-order"
            self._error_event(f"{what} seq {msg.seq}: last seq from publisher {msg.pub_id} was {last}; dropped",
                              "sequence", msg.stream, msg.seq, msg.pub_id)
            return False
        elif msg.seq != last + 1:
            self.stats.gaps += 1
            entry.worker.submit(_Job(entry, "event", msg, fields={
                "event": "gap", "expected": last + 1, "got": msg.seq, "missing": msg.seq - last - 1,
                "policy": self.cfg.gap_policy}))
            if self.cfg.gap_policy == "reset" and msg.kind == "chunk":
                entry.worker.submit(_Job(entry, "reset", msg))
        entry.seqs[msg.pub_id] = msg.seq
        return True

    def open_stream(self, name: str, route: Route, options: dict | None = None) -> StreamEntry:
        """Add a stream to the table (its session opens on its worker). StreamStateError past max_streams."""
        if len(self.streams) >= self.cfg.max_streams:
            self.stats.refused += 1
            raise StreamStateError(f"stream limit reached: {len(self.streams)} of max_streams="
                                   f"{self.cfg.max_streams} open; close or let idle streams expire")
        now = time.monotonic()
        worker = self.workers[zlib.crc32(name.encode()) % len(self.workers)]
        entry = StreamEntry(name, route, worker, dict(options or {}), now, now)
        # Opened here (cheap: initial state only) so bad options fail the request that gave them;
        # from now on only the worker touches the session.
        entry.session = route.policy.open(name, entry.options)
        self.streams[name] = entry
        return entry

    # ----- control (loop thread) ---------------------------------------------------------------

    def _on_control(self, frames):
        envelope, body = frames[:-1], frames[-1]
        req: dict = {}
        try:
            req = wire.unpack_header(body)
            op = req.get("op")
            if op not in _CONTROL_OPS:
                raise ProtocolError(f"op {op!r} is not one of {', '.join(_CONTROL_OPS)}")
            reply = self._control(op, req, envelope)
        except EdgeStreamError as exc:
            reply = {"ok": False, "error": str(exc)}
        if reply is not None:  # None: a worker replies when done
            self.ctl.send_multipart(envelope + [control_reply(req, reply)], zmq.NOBLOCK)

    def _control(self, op: str, req: dict, envelope: list) -> dict | None:
        if op == "status":
            return {"ok": True, **self.status()}
        stream = req.get("stream")
        if not isinstance(stream, str):
            raise ProtocolError(f"{op}: field 'stream' (string) is required")
        if op == "open":
            if stream in self.streams:
                raise StreamStateError(f"stream {stream!r} is already open")
            route = self.by_name.get(req.get("model")) if len(self.routes) > 1 else self.routes[0]
            if route is None:
                raise ConfigError(f"open: field 'model' must be one of {', '.join(self.by_name)}, got {req.get('model')!r}")
            options = req.get("options", {})
            if not isinstance(options, dict):
                raise ProtocolError("open: field 'options' must be a map")
            entry = self.open_stream(stream, route, options)
            entry.worker.submit(_Job(entry, "open", fields=req, reply_to=envelope))
            return None
        entry = self.streams.get(stream)
        if entry is None:
            raise StreamStateError(f"unknown stream {stream!r}")
        if op == "rewind" and (not isinstance(req.get("n"), int) or req["n"] < 0):
            raise ProtocolError("rewind: field 'n' must be a non-negative int")
        if op == "close":
            self.streams.pop(stream)
        entry.last_seen_s = time.monotonic()
        entry.worker.submit(_Job(entry, op, fields=req, reply_to=envelope))
        return None

    def status(self) -> dict:
        now = time.monotonic()
        return {"node": self.cfg.name, "pub_id": self.pub_id, "ready": self.ready.is_set(),
                "models": {r.name: {"topics": list(r.cfg.topics), "dir": r.cfg.dir} for r in self.routes},
                "streams": {n: {"model": e.route.name, "chunks": e.chunks, "idle_s": round(now - e.last_seen_s, 3)}
                            for n, e in self.streams.items()},
                "max_streams": self.cfg.max_streams, "endpoints": self.endpoints}


def control_reply(req: dict, fields: dict) -> bytes:
    return wire.pack({"v": wire.VERSION, "id": req.get("id"), "op": req.get("op"), **fields})


class _Worker(threading.Thread):
    """Runs policies for its streams. Outputs of one stream stay in order; long generations of
    different streams interleave one output at a time."""

    def __init__(self, node: Node, index: int):
        super().__init__(name=f"edge-stream-{node.cfg.name}-worker{index}", daemon=True)
        self.node = node
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.active: dict[StreamEntry, tuple[_Job, Iterator[Output]]] = {}  # streams mid-iteration
        self.backlog: dict[StreamEntry, collections.deque] = {}  # their later jobs, in order

    def submit(self, job: _Job) -> None:
        self.jobs.put(job)

    def run(self):
        node = self.node
        self.push = node.ctx.socket(zmq.PUSH)
        self.push.linger = 0
        self.push.sndtimeo = 100
        self.push.connect(node._results_addr)
        try:
            while True:
                job = self.jobs.get() if not self.active else self._get_nowait()
                batch: list[_Job] = []  # pending chunks of block models, one per stream, in arrival order
                while job is not None:
                    if job is _STOP or node._stop.is_set():  # stopping: queued work is abandoned
                        return
                    if not self._batchable(job, batch):
                        # Jobs taken earlier run first, so every stream keeps its order.
                        self._run_batch(batch)
                        batch = []
                    if self._batchable(job, batch):
                        batch.append(job)
                    else:
                        self._accept(job)
                    job = self._get_nowait()
                self._run_batch(batch)
                for entry in list(self.active):
                    self._step(entry)
        finally:
            try:
                for entry in list(self.active):
                    outputs = self.active.pop(entry)[1]
                    if hasattr(outputs, "close"):  # a generator (LM generation); batched outputs are lists
                        outputs.close()
            finally:  # an open socket would block the context's term() at shutdown
                self.push.close(linger=0)

    def _get_nowait(self):
        try:
            return self.jobs.get_nowait()
        except queue.Empty:
            return None

    def _batchable(self, job: _Job, batch: list) -> bool:
        """A chunk that may join `batch`: block model, stream idle, not in the batch yet."""
        entry = job.entry
        return (job.op == "chunk" and entry.route.policy.batchable and entry.session is not None
                and entry not in self.active and entry not in self.backlog and len(batch) < _MAX_BATCH
                and all(j.entry is not entry for j in batch))

    def _run_batch(self, batch: list) -> None:
        """Run pending chunks of different streams: one batched model run per model
        (run_blocks_batched), or the ordinary path for a chunk alone."""
        by_route: dict[int, list[_Job]] = {}
        for job in batch:
            by_route.setdefault(id(job.entry.route), []).append(job)
        for jobs in by_route.values():
            if len(jobs) == 1:
                self._accept(jobs[0])
                continue
            t_start = time.time_ns()
            try:
                outputs = jobs[0].entry.route.policy.chunks_batched([j.entry.session for j in jobs],
                                                                     [j.msg for j in jobs])
            except Exception:  # a refused chunk or a failed run; nothing was committed, so
                for job in jobs:  # each job runs alone and reports its own error
                    self._accept(job)
                continue
            stats = self.node.stats
            stats.batched += len(jobs)
            for job, outs in zip(jobs, outputs):
                stats.samples["queue_ms"].append((t_start - job.msg.t_recv_ns) / 1e6)
                self.active[job.entry] = (job, iter(outs))
                self._step(job.entry)

    def _accept(self, job: _Job):
        """Start `job` now, or queue it behind the stream's running job (ordering)."""
        entry = job.entry
        if entry in self.active:
            if job.op in ("reset", "close") and self.active[entry][0].op == "end":
                self._cancel(entry)  # barge-in: a reset or close stops the generation in progress
            else:
                self.backlog.setdefault(entry, collections.deque()).append(job)
                return
        self._begin(job)

    def _cancel(self, entry: StreamEntry):
        job, it = self.active.pop(entry)
        it.close()
        self._publish(entry, job, Output("done", {"reason": "cancelled"}))

    def _begin(self, job: _Job):
        self.active[job.entry] = (job, self._outputs(job))
        self._step(job.entry)

    def _step(self, entry: StreamEntry):
        """Publish the next output of the stream's running job; start its next job when done."""
        job, it = self.active[entry]
        node = self.node
        try:
            out = next(it)
        except StopIteration:
            out = None
        except EdgeStreamError as exc:  # the runtime left the stream unchanged
            out = None
            code = "input" if isinstance(exc, (InputError, ProtocolError)) else "state"
            msg = job.msg
            node.out.send(node.error_frames(str(exc), code, entry.name, msg.seq if msg else None,
                                                  msg.pub_id if msg else None))
            if job.reply_to is not None:
                self._reply(job, {"ok": False, "error": str(exc)})
        except Exception as exc:  # a model failure must not kill the worker and its other streams
            log.exception("node %s: stream %r: %s failed", node.cfg.name, entry.name, job.op)
            out = None
            node.out.send(node.error_frames(f"internal error: {exc}", "internal", entry.name,
                                                  job.msg.seq if job.msg else None))
        if out is not None:
            self._publish(entry, job, out)
            return
        del self.active[entry]
        pending = self.backlog.get(entry)
        if pending:
            nxt = pending.popleft()
            if not pending:
                del self.backlog[entry]
            self._begin(nxt)

    def _outputs(self, job: _Job) -> Iterator[Output]:
        """The outputs of one job, lazily: nothing runs until the worker steps it."""
        entry, policy = job.entry, job.entry.route.policy
        op = job.op
        if op == "event":
            yield Output("event", dict(job.fields))
            return
        if op == "open":
            self._reply(job, {"ok": True, "stream": entry.name, "model": entry.route.name})
            yield Output("event", {"event": "opened"})
        elif op == "chunk":
            msg = job.msg
            t_start = time.time_ns()
            self.node.stats.samples["queue_ms"].append((t_start - msg.t_recv_ns) / 1e6)
            yield from policy.chunk(entry.session, msg.data, msg.text, _extra(msg))
        elif op == "end":
            yield from policy.end(entry.session, _extra(job.msg))
        elif op == "reset":
            out = policy.reset(entry.session)
            if job.reply_to is not None:
                self._reply(job, {"ok": True, "stream": entry.name})
            yield out
        elif op == "rewind":
            info = policy.rewind(entry.session, job.fields["n"])
            self._reply(job, {"ok": True, "stream": entry.name, **info})
            yield Output("event", {"event": "rewound", "n": job.fields["n"], **info})
        elif op == "close":
            entry.session = None
            reason = (job.fields or {}).get("reason", "close")
            if job.reply_to is not None:
                self._reply(job, {"ok": True, "stream": entry.name})
            yield Output("event", {"event": "closed", "reason": reason})

    def _publish(self, entry: StreamEntry, job: _Job, out: Output):
        node, msg = self.node, job.msg
        if out.kind == "forward":
            self._publish_forward(entry, job, out)
            return
        header = {"v": wire.VERSION, "stream": entry.name, "pub_id": node.pub_id, "seq": entry.out_seq,
                  "kind": out.kind, "model": entry.route.name, "node": node.cfg.name,
                  "infer_ms": round(out.infer_ms, 4)}
        if msg is not None:
            header.update(in_seq=msg.seq, in_pub_id=msg.pub_id, t_recv_ns=msg.t_recv_ns)
            if msg.t_capture_ns is not None:
                header["t_capture_ns"] = msg.t_capture_ns
        header.update(out.fields)
        entry.out_seq += 1
        header["t_pub_ns"] = t_pub = wire.now_ns()
        if msg is not None and job.n_out == 0 and job.op == "chunk":  # first output of a chunk: the latency that counts
            node.stats.samples["infer_ms"].append(out.infer_ms)
            node.stats.samples["node_ms"].append((t_pub - msg.t_recv_ns) / 1e6 - out.infer_ms)
        job.n_out += 1
        topic = node.cfg.output_topic.format(stream=entry.name)
        node.out.send(wire.encode_output(topic, header, out.data))

    def _publish_forward(self, entry: StreamEntry, job: _Job, out: Output):
        """A forwarded output: an *input* message on the route's forward_topic (node chaining), from
        this node's pub_id with its own seq per stream, carrying the input's t_capture_ns."""
        node, msg = self.node, job.msg
        fields = dict(out.fields)
        kind, text = fields.pop("input_kind", "chunk"), fields.pop("text", None)
        t_capture = fields.pop("t_capture_ns", None) or (msg.t_capture_ns if msg is not None else None)
        frames = wire.encode_input(entry.route.cfg.forward_topic, entry.name, node.pub_id,
                                   node.forward_seq(entry.name), kind, data=out.data, text=text,
                                   t_capture_ns=t_capture, **fields)
        if msg is not None and job.n_out == 0 and job.op == "chunk":
            node.stats.samples["infer_ms"].append(out.infer_ms)
            node.stats.samples["node_ms"].append((wire.now_ns() - msg.t_recv_ns) / 1e6 - out.infer_ms)
        job.n_out += 1
        node.out.send(frames)

    def _reply(self, job: _Job, fields: dict):
        if job.reply_to is not None:
            self._push(list(job.reply_to) + [control_reply(job.fields or {}, fields)])
            job.reply_to = None

    def _push(self, frames):
        while True:
            try:
                self.push.send_multipart(frames)
                return
            except zmq.Again:  # the loop is behind; give up only when shutting down
                if self.node._stop.is_set():
                    return


def _extra(msg: wire.InMessage) -> dict:
    """The fields a policy gets: the header's model-specific ones, plus t_capture_ns when present."""
    return msg.extra if msg.t_capture_ns is None else {**msg.extra, "t_capture_ns": msg.t_capture_ns}


def load_routes(cfg: NodeConfig) -> list[Route]:
    """Load every model of a node (once; streams share it) and pick its policy."""
    from edge_stream.runtime.model import load

    routes = []
    for m in cfg.models:
        model = load(m.dir, providers=list(m.providers), intra_op_threads=m.threads)
        routes.append(Route(m.name, m, model, policy_for(model, m)))
        log.info("node %s: model %s (%s) on topics %s", cfg.name, m.name, model.name, ", ".join(m.topics))
    return routes


def make_node_config(**kwargs) -> NodeConfig:
    """A NodeConfig from keyword arguments, validated like a launch file's [[node]] table."""
    from edge_stream.node.config import node_from_dict

    return node_from_dict(kwargs, where=f"node {kwargs.get('name', '?')!r}")


