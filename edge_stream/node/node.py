"""The streaming node: SUB inputs -> per-stream model state -> XPUB outputs, ROUTER control.

Threads (the only ones):
- the socket loop (`Node._loop`) validates input at the boundary (wire.decode_input),
  tracks sequence numbers, keeps the stream table (TTL, max_streams), answers control
  requests and publishes errors and stats. It runs a model only in one case: a short chunk
  (at most INLINE_MAX_SAMPLES) of a block model (the VAD) whose worker is idle, when no
  other input is waiting (`Worker.run_now`): handing it to the worker would cost more
  (waking a thread, passing the GIL) than the run. Under load, chunks go to the worker,
  which batches them.
- `workers` inference threads (worker.Worker): ONNX Runtime releases the GIL, so
  models run there while the loop keeps reading. A stream always lands on the
  same worker (crc32 of its name), which keeps its chunks in order. Chunks of block
  models (the VAD) that wait on a worker for different streams run as one batched
  model run (`BlockPolicy.chunks_batched`): same outputs, fewer runs under load.

Who owns what (the one place this is written down):
- loop thread: the SUB, the ROUTER (control) and the PULL (control replies from workers)
  sockets; the stream table `Node.streams` and each StreamEntry's `last_seen_s`, `seqs`,
  `chunks`; the stats seq. It opens each stream's session (so bad options fail the request).
- a stream's worker, from then on: StreamEntry `session`, `out_seq`, `forward_seq` and `derived`
  (what a `retract` names), the closed streams' numbering (`Worker.closed_seqs`), its jobs and the
  generations paused for input between two tokens (`Worker.paused`); each worker's own PUSH socket
  to the loop. "The worker" here means whoever holds its `turn` lock: the worker thread while it
  runs jobs, or the loop inside `Worker.run_now` (only while every job submitted to that worker
  is finished and nothing runs there).
- shared under `OutputPort.lock`: the output XPUB (workers publish directly: no thread hop),
  the errors seq, the subscriptions read off the XPUB.
- shared without a lock: `Stats` counters (a lost increment only blurs stats), the stop
  event, the workers' job queues (queue.SimpleQueue is thread-safe).

Outputs go out on an XPUB without XPUB_NODROP: libzmq drops a message only for a subscriber
whose queue is full, so a stalled controller loses its own outputs and delays nobody (with
NODROP one full pipe made every send fail). The node cannot see those per-subscriber drops;
each subscriber sees them as jumps of `seq` (docs/protocol.md, "Delivery").
Forwarded outputs (node chaining: a VAD gate's speech, a recognizer's words) go out
on the same XPUB in *input* format on the route's `forward_topic`, so the next
node's SUB takes them like a sensor's chunks (docs/protocol.md, "Chaining nodes").
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import zlib
from dataclasses import dataclass
from typing import Any

import zmq

from edge_stream import heap
from edge_stream.errors import (
    ConfigError,
    EdgeStreamError,
    InputError,
    ProtocolError,
    StreamStateError,
)
from edge_stream.node import wire
from edge_stream.node.config import NodeConfig, max_stream_chars
from edge_stream.node.policies import Policy, load_route_model, policy_for
from edge_stream.node.security import Curve, attach
from edge_stream.node.worker import (
    DRAIN,
    STOP,
    Job,
    OutputPort,
    ReplyChannel,
    Stats,
    StreamEntry,
    Worker,
)

log = logging.getLogger(__name__)

_POLL_MS = 100  # longest the loop sleeps: bounds shutdown time and stats jitter
_SEEN_PUBLISHERS = 8  # pub_ids remembered per stream (restarted sensors leave old ones behind)
_CONTROL_OPS = ("status", "open", "close", "reset", "rewind")
# Longest chunk (elements) of a block model the loop runs itself when the stream's worker is idle:
# 8 blocks of Silero's 512 samples, about 1 ms of model time, the longest the loop then stops reading.
INLINE_MAX_SAMPLES = 4096
STATUS_MAX_STREAMS = 64  # streams in one `status` reply (a page: `offset`, `limit`); keeps it far below 64 KiB


@dataclass
class Route:
    """A model the node serves, with its policy; chunks on `cfg.topics` go here."""

    name: str
    cfg: Any
    model: Any
    policy: Policy

    @property
    def forward_topic(self) -> str | None:
        """Where the policy's Forwards go in input format (node chaining); None: ordinary outputs."""
        return self.cfg.forward_topic


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
        self.stats = Stats()
        self.endpoints: dict[str, list[str]] = {}
        self.ready = threading.Event()
        # Stream names are capped so that the output topic built from them is a valid topic too.
        self.limits = wire.Limits(max_payload_bytes=cfg.max_payload_bytes,
                                  max_stream_chars=max_stream_chars(cfg.output_topic))
        self.workers: list[Worker] = []  # started with the sockets (they publish on the output port)
        self.port: OutputPort | None = None
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._stats_seq = itertools.count()  # stats and the boot message: one numbering on the stats topic
        self.boot_id = self.pub_id  # one random id per start: a new one tells clients every stream's state is gone
        self._t_boot_ns = wire.now_ns()
        self._boot_sent = False
        # How often the loop looks for missed deadlines: a tenth of the shortest deadline (5-100 ms).
        deadlines = [r.cfg.deadline_ms for r in self.routes if getattr(r.cfg, "deadline_ms", None)]
        self._deadline_step_s = min(0.1, max(0.005, min(deadlines) / 1e4)) if deadlines else None
        self._closed_last_tick = 0  # streams the last tick closed: the heap is trimmed at the next one
        self._thread: threading.Thread | None = None
        self._started_s = time.monotonic()
        self.ctx = zmq.Context()
        self._replies = ReplyChannel(self.ctx, f"inproc://edge-stream-replies-{self.pub_id}")

    # ----- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> Node:
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

    def dead_threads(self) -> list[str]:
        """Names of the loop and worker threads that ended although the node was not stopped. Not
        empty: the node serves nothing (or some streams nothing) and its process should exit so a
        supervisor restarts it (`edge-stream run` does)."""
        if self._thread is None or self._stop.is_set() or not self.ready.is_set():
            return []
        return [t.name for t in (self._thread, *self.workers) if not t.is_alive()]

    def wait_output_subscribed(self, topic: str, timeout: float = 5.0) -> bool:
        """Wait until something (a next node, a controller) subscribed to output `topic`; False on
        timeout. The node's side of `Publisher.wait_ready`: subscriptions are read at each stats
        tick, so this takes up to `stats_interval_s`."""
        if self.port is None:
            return False
        return self.port.wait_subscribed(topic, timeout)

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
        # No XPUB_NODROP: at a subscriber's HWM libzmq drops for that subscriber alone (its `seq` jumps).
        attach(self.pub, cfg.output, self.curve, f"node {cfg.name!r}.output")
        self.port = OutputPort(self.pub, self.stats, cfg.name, self.pub_id, cfg.errors_topic)
        self.ctl = None
        if cfg.control:
            self.ctl = self._socket(zmq.ROUTER)
            self.ctl.setsockopt(zmq.MAXMSGSIZE, wire.MAX_HEADER_BYTES * 2)
            attach(self.ctl, cfg.control, self.curve, f"node {cfg.name!r}.control")
        self.replies = self.ctx.socket(zmq.PULL)
        self.replies.linger = 0
        self.replies.bind(self._replies.addr)
        self.endpoints = {name: [s.last_endpoint.decode()] if s.last_endpoint else []
                          for name, s in (("input", self.sub), ("output", self.pub), ("control", self.ctl)) if s}
        self.workers = [Worker(i, self.port, self.stats, self._stop, self._replies, cfg.output_topic)
                        for i in range(cfg.workers)]
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
        for s in (self.sub, self.ctl, self.replies):  # not the output socket: workers use it too
            if s is not None:
                poller.register(s, zmq.POLLIN)
        next_tick = time.monotonic()  # first stats message right away: it tells clients we are up
        next_deadlines = next_tick
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + self.cfg.stats_interval_s
                self._guarded(self._tick, now)
            if self._deadline_step_s is not None and now >= next_deadlines:
                next_deadlines = now + self._deadline_step_s
                self._guarded(self._check_deadlines, now)
            wake = next_tick if self._deadline_step_s is None else min(next_tick, next_deadlines)
            timeout = min(_POLL_MS, max(0.0, (wake - now) * 1e3))
            events = dict(poller.poll(timeout))
            if self.replies in events:
                self._drain(self.replies, self._send_control_reply)
            if self.sub in events:
                self._drain(self.sub, self._on_input, copy=False)
            if self.ctl is not None and self.ctl in events:
                self._drain(self.ctl, self._on_control)

    def _drain(self, sock, handle, copy=True):
        recv = _recv_frames if not copy else _recv_copied
        for _ in range(DRAIN):
            try:
                frames = recv(sock)
            except zmq.Again:
                return
            self._guarded(handle, frames)
            if not sock.getsockopt(_EVENTS) & _POLLIN:  # nothing more: cheaper than a recv raising Again
                return

    def _guarded(self, handle, arg) -> None:
        """Run one loop step; an exception (a bug of ours: input is validated before use) becomes an
        `internal` error event and the loop carries on serving every other message."""
        try:
            handle(arg)
        except Exception as exc:
            log.exception("node %s: %s failed", self.cfg.name, getattr(handle, "__name__", handle))
            try:
                self._error_event(f"internal error: {type(exc).__name__}: {exc}", "internal")
            except Exception:  # the output socket itself failed: logged above, nothing more to do
                pass

    def _teardown(self):
        for w in self.workers:
            w.jobs.put(STOP)
        stuck = False
        for w in self.workers:
            if w.is_alive():
                w.join(5.0)
                stuck |= w.is_alive()
        if self.port is not None:
            self.port.close()
        for name in ("sub", "ctl", "replies"):
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

    # ----- publishing (loop thread) ------------------------------------------------------------

    def _send_control_reply(self, frames):
        """A control reply a worker handed over (inproc PUSH -> PULL): out on the ROUTER."""
        if self.ctl is not None:
            self.ctl.send_multipart(frames, zmq.NOBLOCK)

    def _error_event(self, reason, code, stream=None, in_seq=None, in_pub_id=None):
        log.warning("node %s: %s (stream %r seq %s): %s", self.cfg.name, code, stream, in_seq, reason)
        self.port.error(reason, code, stream, in_seq, in_pub_id)

    def _tick(self, now: float):
        """Once per stats interval: evict idle streams, publish the stats/heartbeat message."""
        self.port.drain_subscriptions()
        if not self._boot_sent and self.port.has_subscriber(self.cfg.stats_topic):
            self._send_boot()
        ttl = self.cfg.stream_ttl_s
        if self._closed_last_tick:
            # Their workers dropped them since: the heap pages they freed go back to the OS (issue 13 §7).
            heap.trim()
        expired = [n for n, e in self.streams.items() if now - e.last_seen_s > ttl]
        for name in expired:
            entry = self.streams.pop(name)
            self.stats.evicted += 1
            entry.worker.submit(Job(entry, "close", fields={"reason": "ttl"}))
        self._closed_last_tick = len(expired)
        st = self.stats
        header = {"v": wire.VERSION, "kind": "stats", "node": self.cfg.name, "pub_id": self.pub_id,
                  "seq": next(self._stats_seq), "t_pub_ns": wire.now_ns(), "ready": True,
                  "uptime_s": round(now - self._started_s, 3), "streams_open": len(self.streams),
                  "models": sorted(self.by_name), "topics": sorted(self.by_topic),
                  "chunks_in": st.chunks_in, "outputs_out": st.outputs_out, "errors": st.errors,
                  "dropped": st.dropped, "gaps": st.gaps, "duplicates": st.duplicates,
                  "evicted": st.evicted, "refused": st.refused, "batched": st.batched, "ran_on_loop": st.ran_on_loop,
                  "boot_id": self.boot_id, "stale": st.stale, "deadline_missed": st.deadline_missed,
                  "queue_depths": [w.jobs.qsize() for w in self.workers], "latency_ms": st.latency(),
                  "workers": [{"alive": w.is_alive(), "queue_depth": w.jobs.qsize(),
                               "last_beat_s": round(max(0.0, now - w.beat_s), 3)} for w in self.workers]}
        self.port.send(wire.encode_output(self.cfg.stats_topic, header))

    # ----- input (loop thread) -----------------------------------------------------------------

    def _on_input(self, frames):
        try:
            msg = wire.decode_input(frames, self.limits)
        except (ProtocolError, InputError) as exc:
            code = "input" if isinstance(exc, InputError) else "protocol"
            self._error_event(exc.reason, code, exc.stream, exc.seq, exc.pub_id)
            self._count_rejected(exc.stream, exc.pub_id, exc.seq)
            return
        route = self.by_topic.get(msg.topic)
        if route is None:  # a topic frame that only starts with ours, e.g. "mic\0x\0"
            self._error_event(f"topic {msg.topic!r} feeds no model", "unknown_topic", msg.stream, msg.seq, msg.pub_id)
            self._count_rejected(msg.stream, msg.pub_id, msg.seq)
            return
        entry = self.streams.get(msg.stream)
        if entry is None:
            if msg.kind == "interrupt":  # nothing open, so nothing generating: nothing to stop
                return
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
            except Exception as exc:  # a bug of ours opening it: say which message it cost
                log.exception("node %s: opening stream %r failed", self.cfg.name, msg.stream)
                self._error_event(f"internal error opening the stream: {type(exc).__name__}: {exc}", "internal",
                                  msg.stream, msg.seq, msg.pub_id)
                return
        elif entry.route is not route:
            self._error_event(f"stream belongs to model {entry.route.name!r}; topic {msg.topic!r} feeds "
                              f"{route.name!r}", "wrong_model", msg.stream, msg.seq, msg.pub_id)
            self._count_rejected(msg.stream, msg.pub_id, msg.seq)
            return
        if not self._check_seq(entry, msg):
            return
        entry.last_seen_s = time.monotonic()
        if msg.kind == "chunk":
            entry.chunks += 1
            self.stats.chunks_in += 1
            if self._stale(entry, msg):
                return
        self._arm_deadline(entry, None if msg.kind == "end" else entry.last_seen_s)
        if msg.kind == "close":
            self.streams.pop(entry.name, None)
        job = Job(entry, msg.kind, msg)
        if self._inline(entry, msg) and entry.worker.run_now(job):
            self.stats.ran_on_loop += 1
            return
        entry.worker.submit(job)

    def _inline(self, entry: StreamEntry, msg: wire.InMessage) -> bool:
        """Whether the loop may run this chunk itself (see the module docstring): a short chunk of a
        block model, and no other input waiting (that would wait for the run; the worker batches)."""
        return (msg.kind == "chunk" and entry.route.policy.batchable and msg.data is not None
                and msg.data.size <= INLINE_MAX_SAMPLES and not self.sub.getsockopt(_EVENTS) & _POLLIN)

    def _count_rejected(self, stream, pub_id, seq) -> None:
        """A rejected message whose numbering was readable still counts towards its publisher's seq on
        an open stream, so the next valid one is no "gap" (nor, under gap_policy reset, a reset)."""
        entry = self.streams.get(stream) if stream is not None else None
        if entry is not None and pub_id is not None and seq is not None and seq > entry.seqs.get(pub_id, -1):
            if pub_id not in entry.seqs and len(entry.seqs) >= _SEEN_PUBLISHERS:
                entry.seqs.pop(next(iter(entry.seqs)))
            entry.seqs[pub_id] = seq

    def _check_seq(self, entry: StreamEntry, msg: wire.InMessage) -> bool:
        """Gap/duplicate/out-of-order detection per (pub_id, stream). False: drop the message."""
        last = entry.seqs.get(msg.pub_id)
        if last is None:
            if entry.seqs:  # another publisher (or a restart: pub_id is random per start)
                entry.worker.submit(Job(entry, "event", msg, fields={
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
            entry.worker.submit(Job(entry, "event", msg, fields={
                "event": "gap", "expected": last + 1, "got": msg.seq, "missing": msg.seq - last - 1,
                "policy": self.cfg.gap_policy}))
            if self.cfg.gap_policy == "reset" and msg.kind == "chunk":
                entry.worker.submit(Job(entry, "reset", msg))
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
        self._arm_deadline(entry, now)
        return entry

    # ----- freshness: stale input, deadlines (loop thread) -------------------------------------

    def _stale(self, entry: StreamEntry, msg: wire.InMessage) -> bool:
        """True: the chunk is older than its model's `max_age_ms` (from t_capture_ns, else t_pub_ns,
        to its receipt; wall clocks) and is dropped with a `stale` event on the stream's output."""
        max_age_ms = entry.route.cfg.max_age_ms
        if max_age_ms is None:
            return False
        clock = "t_capture_ns" if msg.t_capture_ns is not None else "t_pub_ns"
        age_ms = (msg.t_recv_ns - getattr(msg, clock)) / 1e6
        if age_ms <= max_age_ms:
            return False
        self.stats.stale += 1
        entry.worker.submit(Job(entry, "event", msg, fields={
            "event": "stale", "age_ms": round(age_ms, 3), "max_age_ms": max_age_ms, "clock": clock}))
        return True

    def _arm_deadline(self, entry: StreamEntry, last_input_s: float | None) -> None:
        """Due time of the stream's next `deadline_missed`: `deadline_ms` after its last input;
        None disarms (after an `end`: silence is expected)."""
        deadline_ms = entry.route.cfg.deadline_ms
        if deadline_ms is not None:
            entry.deadline_s = None if last_input_s is None else last_input_s + deadline_ms / 1e3

    def _check_deadlines(self, now: float) -> None:
        """One `deadline_missed` per silence: it disarms the stream's deadline; the next input re-arms it."""
        for entry in self.streams.values():
            if entry.deadline_s is not None and now >= entry.deadline_s:
                deadline_ms = entry.route.cfg.deadline_ms
                silent_ms = (now - entry.deadline_s) * 1e3 + deadline_ms
                entry.deadline_s = None
                self.stats.deadline_missed += 1
                entry.worker.submit(Job(entry, "event", fields={
                    "event": "deadline_missed", "deadline_ms": deadline_ms, "silent_ms": round(silent_ms, 1)}))

    def _send_boot(self) -> None:
        """The `boot` message on the stats topic, once per start, at the first stats tick that has a
        subscriber for it (published earlier it would reach nobody: subscribers reconnect after us)."""
        self._boot_sent = True
        header = {"v": wire.VERSION, "kind": "boot", "node": self.cfg.name, "pub_id": self.pub_id,
                  "boot_id": self.boot_id, "seq": next(self._stats_seq), "t_pub_ns": wire.now_ns(),
                  "t_boot_ns": self._t_boot_ns, "models": sorted(self.by_name), "topics": sorted(self.by_topic)}
        self.port.send(wire.encode_output(self.cfg.stats_topic, header))

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
        except Exception as exc:  # a bug of ours: answer and report it; the loop carries on
            log.exception("node %s: control request failed", self.cfg.name)
            reply = {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}
            stream = req.get("stream") if isinstance(req, dict) else None
            self._error_event(reply["error"], "internal", stream if isinstance(stream, str) else None)
        if reply is not None:  # None: a worker replies when done
            self.ctl.send_multipart(envelope + [wire.encode_control_reply(req, reply)], zmq.NOBLOCK)

    def _control(self, op: str, req: dict, envelope: list) -> dict | None:
        if op == "status":
            offset, limit = req.get("offset", 0), req.get("limit", STATUS_MAX_STREAMS)
            for name, value, top in (("offset", offset, None), ("limit", limit, STATUS_MAX_STREAMS)):
                if not isinstance(value, int) or isinstance(value, bool) or value < 0 or (top and value > top):
                    raise ProtocolError(f"status: field {name!r} must be an int >= 0"
                                        + (f" and <= {top}" if top else "") + f", got {value!r}")
            return {"ok": True, **self.status(offset, limit)}
        stream = req.get("stream")
        if not isinstance(stream, str):
            raise ProtocolError(f"{op}: field 'stream' (string) is required")
        wire.check_name(stream, f"{op}: field 'stream'", self.limits.max_stream_chars)
        if op == "open":
            if stream in self.streams:
                raise StreamStateError(f"stream {stream!r} is already open")
            model = req.get("model")
            if model is not None and not isinstance(model, str):
                raise ProtocolError(f"open: field 'model' must be a string, got {type(model).__name__}")
            route = self.by_name.get(model) if len(self.routes) > 1 or model is not None else self.routes[0]
            if route is None:
                raise ConfigError(f"open: field 'model' must be one of {', '.join(self.by_name)}, got {model!r}")
            options = req.get("options", {})
            if not isinstance(options, dict):
                raise ProtocolError("open: field 'options' must be a map")
            entry = self.open_stream(stream, route, options)
            entry.worker.submit(Job(entry, "open", fields=req, reply_to=envelope))
            return None
        entry = self.streams.get(stream)
        if entry is None:
            raise StreamStateError(f"unknown stream {stream!r}")
        if op == "rewind" and (not isinstance(req.get("n"), int) or req["n"] < 0):
            raise ProtocolError("rewind: field 'n' must be a non-negative int")
        if op == "close":
            self.streams.pop(stream)
        entry.last_seen_s = time.monotonic()
        entry.worker.submit(Job(entry, op, fields=req, reply_to=envelope))
        return None

    def status(self, offset: int = 0, limit: int = STATUS_MAX_STREAMS) -> dict:
        """The node's status with one page of its streams: names sorted, `limit` from `offset`
        (`streams_open` says how many there are), so the reply stays small with any max_streams."""
        now = time.monotonic()
        page = sorted(self.streams)[offset:offset + limit]
        return {"node": self.cfg.name, "pub_id": self.pub_id, "ready": self.ready.is_set(),
                "models": {r.name: {"topics": list(r.cfg.topics), "dir": r.cfg.dir} for r in self.routes},
                "streams_open": len(self.streams), "offset": offset, "limit": limit,
                "streams": {n: {"model": (e := self.streams[n]).route.name, "chunks": e.chunks,
                                "idle_s": round(now - e.last_seen_s, 3)} for n in page},
                "max_streams": self.cfg.max_streams, "endpoints": self.endpoints}


_RECV_NOBLOCK = int(zmq.NOBLOCK)
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)  # plain ints: pyzmq's enums cost ~1 us an operation


def _recv_copied(sock: zmq.Socket) -> list[bytes]:
    return sock.recv_multipart(zmq.NOBLOCK)


def _recv_frames(sock: zmq.Socket) -> list[zmq.Frame]:
    """`sock.recv_multipart(zmq.NOBLOCK, copy=False)` without its getsockopt(RCVMORE) and flag enums
    per frame (2 us a message instead of 5); zmq.Again when nothing is waiting."""
    frame = sock.recv(_RECV_NOBLOCK, copy=False)
    frames = [frame]
    while frame.more:  # the parts of one message arrive together
        frame = sock.recv(_RECV_NOBLOCK, copy=False)
        frames.append(frame)
    return frames


def load_routes(cfg: NodeConfig) -> list[Route]:
    """Load every model of a node (once; streams share it) and pick its policy. `edge_stream.load`:
    a VAD manifest gives a model whose streams carry speech events."""
    routes = []
    for m in cfg.models:
        try:
            model = load_route_model(m)
        except ConfigError as exc:  # the runtime names the option; say which route's
            raise ConfigError(f"node {cfg.name!r} model {m.name!r}: {exc}") from None
        routes.append(Route(m.name, m, model, policy_for(model, m)))
        log.info("node %s: model %s (%s) on topics %s", cfg.name, m.name, model.name, ", ".join(m.topics))
    return routes


def make_node_config(**kwargs) -> NodeConfig:
    """A NodeConfig from keyword arguments, validated like a launch file's [[node]] table."""
    from edge_stream.node.config import node_from_dict

    return node_from_dict(kwargs, where=f"node {kwargs.get('name', '?')!r}")


