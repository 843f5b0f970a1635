"""The node's inference threads and what they share with the socket loop.

A `Worker` runs the policies of its streams. It is built with everything it
touches (no back-reference to the Node): the `OutputPort` it publishes on,
the `Stats` it bumps, the node's stop event and the `ReplyChannel` its
control replies go back on. Which thread owns which state is written down
once, in edge_stream/node/node.py's module docstring.

A short chunk of a block model (the VAD) that reaches an idle worker runs on
the socket loop itself (`Worker.run_now`): the thread hop to the worker
(waking it, handing it the GIL) cost more than the ~0.1 ms model run.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from edge_stream.errors import EdgeStreamError, InputError, ProtocolError
from edge_stream.node import wire
from edge_stream.node.policies import Forward, Output
from edge_stream.stats import percentiles

log = logging.getLogger(__name__)

DRAIN = 256  # messages taken from one socket per turn, so no socket starves the others
STOP = object()  # tells a worker to finish
MAX_BATCH = 64  # chunks of different streams run together at most (block models)
BEAT_S = 1.0  # an idle worker still goes round its loop this often, so its heartbeat stays fresh
# Output and forward numbering of this many recently closed streams is kept per worker, so a stream
# closed (or evicted) and reopened continues its seq instead of restarting at 0 (about 200 bytes each).
CLOSED_SEQS_KEPT = 4096
DERIVED_KEPT = 65536  # outputs per stream a `retract` can still name (a revision reaches at most this far)
# Flags as plain ints: pyzmq's send_multipart combines its flag enums in Python for every frame.
_SEND_MORE = int(zmq.SNDMORE | zmq.NOBLOCK)
_SEND_LAST = int(zmq.NOBLOCK)


class Stats:
    """Counters the loop and workers bump (plain ints: a lost increment under a race only blurs stats)."""

    def __init__(self):
        self.chunks_in = self.outputs_out = self.errors = self.dropped = 0
        self.gaps = self.duplicates = self.evicted = self.refused = 0
        self.batched = 0  # chunks that ran in a batch with chunks of other streams
        self.ran_on_loop = 0  # chunks the socket loop ran itself (Worker.run_now)
        self.stale = 0  # chunks dropped as older than their model's max_age_ms
        self.deadline_missed = 0  # deadline_missed events (an open stream silent past deadline_ms)
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
            p50, p99 = percentiles(vals, (50, 99))
            out[name] = {"p50": round(p50, 4), "p99": round(p99, 4), "n": int(vals.size)}
        return out


class OutputPort:
    """The node's output XPUB as the loop and the workers use it, stamped with the node's identity.

    ZeroMQ lets a socket move between threads given a full memory barrier, and the lock is that
    barrier; nothing polls this socket, so no two threads ever touch it at once. Publishing from
    the worker saves a thread hop per output (about half the node's overhead on a busy 2-core
    machine). The subscriptions read off it are kept, so `wait_subscribed` can tell when a next
    node or a controller is listening."""

    def __init__(self, sock: zmq.Socket, stats: Stats, node: str, pub_id: str, errors_topic: str):
        self.sock = sock
        self.stats = stats
        self.node, self.pub_id = node, pub_id
        self.errors_topic = errors_topic
        self.lock = threading.Lock()
        self._error_seq = itertools.count()
        self._subscribed: set[bytes] = set()  # topic prefixes subscribed to (under `_changed`)
        self._changed = threading.Condition()

    def send(self, frames) -> None:
        """Publish one message (frames: topic, header, payload?), frame by frame. The last one may be
        a payload: copy=False lets pyzmq copy it under 64 KiB and send a larger one (LM logits) in place."""
        with self.lock:
            try:
                send = self.sock.send
                for frame in frames[:-1]:  # a PUB socket takes all parts of a message or none
                    send(frame, _SEND_MORE)
                send(frames[-1], _SEND_LAST, copy=False)
                self.stats.outputs_out += 1
            except zmq.Again:  # not at a subscriber's HWM (the XPUB drops per pipe there, unseen): a
                self.stats.dropped += 1  # message the socket refused outright

    def error(self, reason: str, code: str, stream=None, in_seq=None, in_pub_id=None) -> None:
        """Publish an error event on the errors topic (numbered under the lock: in seq order)."""
        with self.lock:
            self.stats.errors += 1
            header = {"v": wire.VERSION, "kind": "error", "node": self.node, "pub_id": self.pub_id,
                      "seq": next(self._error_seq), "stream": stream, "in_seq": in_seq, "in_pub_id": in_pub_id,
                      "code": code, "reason": reason, "t_pub_ns": wire.now_ns()}
            try:
                self.sock.send_multipart(wire.encode_output(self.errors_topic, header), zmq.NOBLOCK)
                self.stats.outputs_out += 1
            except zmq.Again:
                self.stats.dropped += 1

    def drain_subscriptions(self) -> None:
        """Read subscription messages (b"\\x01" + prefix, b"\\x00" + prefix to leave) so they do not
        pile up in the XPUB; remember which prefixes are subscribed."""
        with self.lock:
            msgs = []
            for _ in range(DRAIN):
                try:
                    msgs.append(self.sock.recv(zmq.NOBLOCK))
                except zmq.Again:
                    break
        if not msgs:
            return
        with self._changed:
            for m in msgs:
                if m[:1] == b"\x01":
                    self._subscribed.add(m[1:])
                elif m[:1] == b"\x00":
                    self._subscribed.discard(m[1:])
            self._changed.notify_all()

    def has_subscriber(self, topic: str) -> bool:
        """Whether some subscriber's prefix matches `topic`, as of the last `drain_subscriptions`."""
        frame = wire.topic_frame(topic)
        with self._changed:
            return any(frame.startswith(p) for p in self._subscribed)

    def wait_subscribed(self, topic: str, timeout: float) -> bool:
        """True once some subscriber's prefix matches `topic` (seen at the loop's next stats tick)."""
        frame = wire.topic_frame(topic)
        with self._changed:
            return self._changed.wait_for(lambda: any(frame.startswith(p) for p in self._subscribed), timeout)

    def close(self) -> None:
        with self.lock:
            self.sock.close(linger=0)


@dataclass(frozen=True)
class ReplyChannel:
    """Where workers send control replies: an inproc PUSH to the loop's PULL, which the loop
    relays on the ROUTER (only the loop may touch it). One PUSH per worker: sockets stay in a thread."""

    ctx: zmq.Context
    addr: str

    def connect(self) -> zmq.Socket:
        push = self.ctx.socket(zmq.PUSH)
        push.linger = 0
        push.sndtimeo = 100
        push.connect(self.addr)
        return push


@dataclass(eq=False)
class StreamEntry:
    """One stream of the node (owners of each field: node.py's module docstring)."""

    name: str
    route: Any  # node.Route
    worker: Worker
    options: dict
    opened_s: float
    last_seen_s: float  # monotonic time of the last input
    seqs: dict = field(default_factory=dict)  # pub_id -> last seq seen
    chunks: int = 0
    session: Any = None  # the runtime stream (opened by the loop, then the worker's alone)
    out_seq: int | None = None  # seq of this stream's next output (None: not yet taken from the worker)
    out_topic: bytes | None = None  # its output topic frame (the worker's, made at its first output)
    forward_seq: int | None = None  # seq of its next forwarded message (node chaining)
    deadline_s: float | None = None  # monotonic time its `deadline_missed` is due (None: not armed)
    # (upto, seq) of its published outputs that derive from stream input (Output.upto), oldest first,
    # at most DERIVED_KEPT: what a `retract` searches for the first output a revision voided.
    derived: collections.deque = field(default_factory=lambda: collections.deque(maxlen=DERIVED_KEPT))


@dataclass
class Job:
    """Work for a worker: `op` is an input kind (chunk/end/reset/close), a control op, or 'event'."""

    entry: StreamEntry
    op: str
    msg: wire.InMessage | None = None
    fields: dict | None = None  # 'event' payload, control request
    reply_to: list | None = None  # control envelope, when a reply is due
    n_out: int = 0  # outputs published so far
    deltas: list | None = None  # `text` of the `delta` outputs published so far (a cancelled `done` joins them)
    tail: int = 0  # deltas since the generation began or last took input in (what keep_partial_reply=false drops)


class Worker(threading.Thread):
    """Runs policies for its streams. Outputs of one stream stay in order; long generations of
    different streams interleave one output at a time."""

    def __init__(self, index: int, port: OutputPort, stats: Stats, stop: threading.Event,
                 replies: ReplyChannel, output_topic: str):
        super().__init__(name=f"edge-stream-{port.node}-worker{index}", daemon=True)
        self.port, self.stats, self.stop, self.replies = port, stats, stop, replies
        self.output_topic = output_topic  # e.g. "out/{stream}"
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        # Keyed by stream *name*, not entry: after a close (or TTL eviction) and a reopen, the new
        # entry's jobs wait behind the old entry's `closed`, so a stream's outputs stay in input order.
        self.active: dict[str, tuple[Job, Iterator]] = {}  # streams mid-iteration
        # Generations paused while a chunk fed in between two of their tokens (interleave mode) runs.
        self.paused: dict[str, tuple[Job, Iterator]] = {}
        self.backlog: dict[str, collections.deque] = {}  # their later jobs, in order
        # (next output seq, next forward seq) of recently closed streams, oldest first (bounded LRU).
        # Here, not in StreamEntry, so numbering survives a close or eviction (a restart at 0 would read
        # as duplicates downstream); a stream never changes worker.
        self.closed_seqs: collections.OrderedDict[str, tuple[int, int]] = collections.OrderedDict()
        self.beat_s = time.monotonic()  # last time round the loop (stats: `last_beat_s`)
        # The turn: whoever holds it may touch the state of this worker's streams. The worker thread
        # holds it while it runs jobs; the loop takes it in `run_now`, only when the worker is idle.
        self.turn = threading.Lock()
        self.submitted = 0  # jobs put on `jobs` so far (loop thread)
        self._taken = 0  # jobs taken off `jobs` (under the turn)
        self._idle_at = 0  # `_taken` when nothing last ran or waited here (under the turn)

    def submit(self, job: Job) -> None:
        """Queue `job` for the worker thread. Called by the loop only: `submitted` is its count."""
        self.submitted += 1
        self.jobs.put(job)

    def run_now(self, job: Job) -> bool:
        """Run a chunk job to its last output on the calling thread (the loop), if this worker is idle:
        every job submitted to it taken and finished, nothing running. False: it is busy (or the loop
        just lost the race for the turn); submit the job instead, which keeps the stream's order."""
        if not self.turn.acquire(blocking=False):
            return False
        try:
            if self._idle_at != self.submitted:
                return False
            self._begin(job)
            self._finish(job)
            return True
        finally:
            self.turn.release()

    def run(self):
        self.push = self.replies.connect()
        try:
            while True:
                self.beat_s = time.monotonic()
                try:
                    if self._turn():
                        return
                except Exception as exc:  # a bug of ours: report it, keep serving the other streams
                    log.exception("node %s: worker %s failed", self.port.node, self.name)
                    self.port.error(f"internal error in {self.name}: {type(exc).__name__}: {exc}", "internal")
        finally:
            try:
                for table in (self.active, self.paused):
                    for name in list(table):
                        outputs = table.pop(name)[1]
                        if hasattr(outputs, "close"):  # a generator (LM generation); batched outputs are lists
                            outputs.close()
            finally:  # an open socket would block the context's term() at shutdown
                self.push.close(linger=0)

    def _turn(self) -> bool:
        """Take the queued jobs, run them, step every running job once. True: stop now."""
        with self.turn:
            running = bool(self.active)
        try:
            job = self.jobs.get(timeout=BEAT_S) if not running else self._get_nowait()
        except queue.Empty:
            return self.stop.is_set()
        with self.turn:
            return self._run_jobs(job)

    def _run_jobs(self, job) -> bool:
        """`_turn`'s work, under the turn, from the first job taken (None: none)."""
        batch: list[Job] = []  # pending chunks of block models, one per stream, in arrival order
        while job is not None:
            if job is STOP or self.stop.is_set():  # stopping: queued work is abandoned
                return True
            self._taken += 1
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
        for name in list(self.active):
            self._step(name)
        if not (self.active or self.backlog or self.paused):
            self._idle_at = self._taken
        return False

    def _get_nowait(self):
        try:
            return self.jobs.get_nowait()
        except queue.Empty:
            return None

    def _batchable(self, job: Job, batch: list) -> bool:
        """A chunk that may join `batch`: block model, stream idle, not in the batch yet."""
        entry = job.entry
        return (job.op == "chunk" and entry.route.policy.batchable and entry.session is not None
                and not _revises(job.msg)
                and entry.name not in self.active and entry.name not in self.backlog and len(batch) < MAX_BATCH
                and all(j.entry.name != entry.name for j in batch))

    def _run_batch(self, batch: list) -> None:
        """Run pending chunks of different streams: one batched model run per model
        (the policy's chunks_batched), or the ordinary path for a chunk alone."""
        by_route: dict[int, list[Job]] = {}
        for job in batch:
            by_route.setdefault(id(job.entry.route), []).append(job)
        for jobs in by_route.values():
            if len(jobs) == 1:
                self._accept(jobs[0])
                self._finish(jobs[0])
                continue
            t_start = time.time_ns()
            try:
                outputs = jobs[0].entry.route.policy.chunks_batched([j.entry.session for j in jobs],
                                                                     [j.msg for j in jobs])
            except Exception:  # a refused chunk or a failed run; nothing was committed, so
                for job in jobs:  # each job runs alone and reports its own error
                    self._accept(job)
                    self._finish(job)
                continue
            self.stats.batched += len(jobs)
            for job, outs in zip(jobs, outputs):
                self.stats.samples["queue_ms"].append((t_start - job.msg.t_recv_ns) / 1e6)
                self.active[job.entry.name] = (job, iter(outs))
                self._finish(job)

    def _finish(self, job: Job) -> None:
        """Publish every output of `job` (running) now. For a block model's chunk, whose few outputs (a
        result, its speech events) exist together: left running to be stepped one per turn, its stream
        could not join the next batch, and under load every later chunk of it would run alone."""
        name = job.entry.name
        while name in self.active and self.active[name][0] is job:
            self._step(name)

    def _accept(self, job: Job):
        """Start `job` now, or queue it behind the stream's running job (ordering). Input for a stream
        that is generating acts at once, between two tokens: `reset`, `close` and `interrupt` stop the
        generation, and a chunk does what the route's `input_during_generation` says."""
        name = job.entry.name
        if name not in self.active:
            self._begin(job)
            return
        running = self.active[name][0]
        generating = running.entry is job.entry and (running.op == "end" or running.deltas is not None)
        mode = job.entry.route.cfg.input_during_generation
        if generating and job.op in ("reset", "close"):
            self._cancel(name, "cancelled")  # barge-in: a reset or close stops the generation in progress
        elif generating and (job.op == "interrupt" or job.op == "chunk" and mode == "interrupt"):
            self._cancel(name, "interrupted")
            if job.op == "interrupt":  # done its work
                self._drain(name)
                return
        elif (generating and job.op == "chunk" and mode == "interleave" and name not in self.backlog
              and job.entry.route.policy.interleave is not None):
            self.paused[name] = self.active.pop(name)
            running.tail = 0  # the tokens said so far are now followed by input: they stay
            self._begin(dataclasses.replace(job, op="interleave"))
            return
        else:
            self.backlog.setdefault(name, collections.deque()).append(job)
            return
        self._drain(name, job)

    def _drain(self, name: str, job: Job | None = None) -> None:
        """Nothing runs for the stream now: accept its queued jobs, then `job`, in input order (each
        acts on what the one before it started, e.g. a chunk interrupts a generation an `end` began)."""
        pending = self.backlog.pop(name, collections.deque())
        if job is not None:
            pending.append(job)
        for j in pending:
            self._accept(j)

    def _cancel(self, name: str, reason: str):
        """Stop the stream's generation at this token boundary and publish its `done`: what was said,
        and where the stream stands. An interruption on a route with keep_partial_reply = false
        first takes back the tokens said since the generation last took input."""
        job, it = self.active.pop(name)
        it.close()
        entry, policy = job.entry, job.entry.route.policy
        said = job.deltas or []
        fields = {"n_tokens": len(said), "text": "".join(said), "reason": reason}
        if reason == "interrupted" and not entry.route.cfg.keep_partial_reply and job.tail:
            try:
                policy.rewind(entry.session, job.tail)
                fields["rolled_back"] = job.tail
            except EdgeStreamError as exc:  # a window evicted part of the reply: it stays, said so
                self.port.error(f"keep_partial_reply = false: {exc}", "state", entry.name)
                fields["rolled_back"] = 0
        fields.update(policy.describe(entry.session))
        if "position" in fields:
            self._voided(entry, fields["position"])  # outputs of rolled-back tokens are gone with them
        self._publish_guarded(entry, job, Output("done", fields))

    def _next(self, name: str) -> None:
        """Start the stream's next queued job, if any."""
        pending = self.backlog.get(name)
        if pending:
            nxt = pending.popleft()
            if not pending:
                del self.backlog[name]
            self._begin(nxt)

    def _begin(self, job: Job):
        self.active[job.entry.name] = (job, self._outputs(job))
        self._step(job.entry.name)

    def _step(self, name: str):
        """Publish the next output of the stream's running job; start its next job when done."""
        job, it = self.active[name]
        entry, msg = job.entry, job.msg
        try:
            out = next(it)
        except StopIteration:
            out = None
        except EdgeStreamError as exc:  # the runtime left the stream unchanged
            out = None
            code = "input" if isinstance(exc, (InputError, ProtocolError)) else "state"
            self.port.error(str(exc), code, entry.name, msg.seq if msg else None, msg.pub_id if msg else None)
            if job.reply_to is not None:
                self._reply(job, {"ok": False, "error": str(exc)})
        except Exception as exc:  # a model failure must not kill the worker and its other streams
            log.exception("node %s: stream %r: %s failed", self.port.node, entry.name, job.op)
            out = None
            self.port.error(f"internal error: {exc}", "internal", entry.name, msg.seq if msg else None)
            if job.reply_to is not None:
                self._reply(job, {"ok": False, "error": f"internal error: {exc}"})
        if out is not None:
            self._publish_guarded(entry, job, out)
            return
        del self.active[name]
        if name in self.paused:  # a chunk fed between two tokens: the generation goes on, and what
            self.active[name] = self.paused.pop(name)  # arrived meanwhile acts on it as on arrival
            self._drain(name)
            return
        self._next(name)

    def _publish_guarded(self, entry: StreamEntry, job: Job, out) -> None:
        """`_publish`, with a failure (an output that cannot be encoded) reported as an `internal`
        error: that output is lost, the stream's later outputs and other streams are not."""
        try:
            self._publish(entry, job, out)
        except Exception as exc:
            log.exception("node %s: stream %r: publishing a %s output failed", self.port.node, entry.name,
                          getattr(out, "kind", "?"))
            msg = job.msg
            self.port.error(f"internal error: could not publish a {getattr(out, 'kind', '?')} output: {exc}",
                            "internal", entry.name, msg.seq if msg else None, msg.pub_id if msg else None)

    def _outputs(self, job: Job) -> Iterator:
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
            self.stats.samples["queue_ms"].append((time.time_ns() - msg.t_recv_ns) / 1e6)
            if _revises(msg) and not policy.revisable:
                raise InputError(f"{entry.route.name}: this model kind takes no revisions "
                                 "('replace_last', 'revise'); sequence models and LMs do")
            yield from policy.chunk(entry.session, msg.data, msg.text, _extra(msg))
        elif op == "interleave":  # a chunk between two tokens of this stream's generation
            msg = job.msg
            self.stats.samples["queue_ms"].append((time.time_ns() - msg.t_recv_ns) / 1e6)
            if _revises(msg) and not policy.revisable:
                raise InputError(f"{entry.route.name}: this model kind takes no revisions")
            yield from policy.interleave(entry.session, msg.data, msg.text, _extra(msg))
        elif op == "end":
            yield from policy.end(entry.session, _extra(job.msg))
        elif op == "interrupt":  # nothing generating: nothing to stop
            return
        elif op == "reset":
            out = policy.reset(entry.session)
            entry.derived.clear()
            if job.reply_to is not None:
                self._reply(job, {"ok": True, "stream": entry.name})
            yield out
        elif op == "rewind":
            info = policy.rewind(entry.session, job.fields["n"])
            self._voided(entry, info.get("position", 0))  # the rewound event says what went
            self._reply(job, {"ok": True, "stream": entry.name, **info})
            yield Output("event", {"event": "rewound", "n": job.fields["n"], **info})
        elif op == "close":
            entry.session = None
            reason = (job.fields or {}).get("reason", "close")
            if job.reply_to is not None:
                self._reply(job, {"ok": True, "stream": entry.name})
            yield Output("event", {"event": "closed", "reason": reason})
            self._keep_seqs(entry)

    def _restore_seqs(self, entry: StreamEntry) -> None:
        """A (re)opened stream's numbering continues where its last incarnation's ended."""
        if entry.out_seq is None:
            entry.out_seq, entry.forward_seq = self.closed_seqs.pop(entry.name, (0, 0))

    def _keep_seqs(self, entry: StreamEntry) -> None:
        """Remember a closed stream's next seqs, forgetting the oldest beyond CLOSED_SEQS_KEPT."""
        self._restore_seqs(entry)
        self.closed_seqs[entry.name] = (entry.out_seq, entry.forward_seq)
        self.closed_seqs.move_to_end(entry.name)
        while len(self.closed_seqs) > CLOSED_SEQS_KEPT:
            self.closed_seqs.popitem(last=False)

    def _publish(self, entry: StreamEntry, job: Job, out: Output | Forward):
        """Encode and send one output. A Forward goes out in input format on the route's
        forward_topic (node chaining); on a route without one it is an ordinary output, or dropped."""
        forward_topic = entry.route.forward_topic
        if isinstance(out, Forward) and not forward_topic:
            if out.output_kind is None:
                return
            out = out.as_output()
        if isinstance(out, Output) and out.retract_from is not None:
            first_seq = self._voided(entry, out.retract_from)
            if first_seq is None:  # nothing published derived from the replaced input
                return
            out.fields["first_seq"] = first_seq
        t_pub = wire.now_ns()
        if isinstance(out, Forward):
            frames = self._forward_frames(entry, job, out, forward_topic)
        else:
            if out.upto is not None:
                self._restore_seqs(entry)
                entry.derived.append((out.upto, entry.out_seq))
            frames = self._output_frames(entry, job, out, t_pub)
        msg = job.msg
        if msg is not None and job.n_out == 0 and job.op == "chunk":  # first output of a chunk: the latency that counts
            self.stats.samples["infer_ms"].append(out.infer_ms)
            self.stats.samples["node_ms"].append((t_pub - msg.t_recv_ns) / 1e6 - out.infer_ms)
        job.n_out += 1
        if out.kind == "delta":
            if job.deltas is None:
                job.deltas = []
            job.deltas.append(out.fields.get("text", ""))
            job.tail += 1
        self.port.send(frames)

    @staticmethod
    def _voided(entry: StreamEntry, position: int) -> int | None:
        """Seq of the first published output that derives from input at `position` or later (and
        forget those outputs); None when there is none."""
        first = None
        while entry.derived and entry.derived[-1][0] > position:
            first = entry.derived.pop()[1]
        return first

    def _output_frames(self, entry: StreamEntry, job: Job, out: Output, t_pub: int) -> list:
        """An output message on the stream's output topic (docs/protocol.md, "Outputs")."""
        msg = job.msg
        self._restore_seqs(entry)
        header = {"v": wire.VERSION, "stream": entry.name, "pub_id": self.port.pub_id, "seq": entry.out_seq,
                  "kind": out.kind, "model": entry.route.name, "node": self.port.node,
                  "infer_ms": round(out.infer_ms, 4)}
        if msg is not None:
            header.update(in_seq=msg.seq, in_pub_id=msg.pub_id, t_recv_ns=msg.t_recv_ns)
            if msg.t_capture_ns is not None:
                header["t_capture_ns"] = msg.t_capture_ns
        header.update(out.fields)
        header["t_pub_ns"] = t_pub
        entry.out_seq += 1
        if entry.out_topic is None:
            entry.out_topic = wire.topic_frame(self.output_topic.format(stream=entry.name))
        return wire.encode_output(entry.out_topic, header, out.data)

    def _forward_frames(self, entry: StreamEntry, job: Job, fwd: Forward, topic: str) -> list:
        """An *input* message for the next node, from this node's pub_id with its own seq per stream,
        carrying the input's t_capture_ns (docs/protocol.md, "Chaining nodes")."""
        msg = job.msg
        t_capture = fwd.t_capture_ns if fwd.t_capture_ns is not None else (msg.t_capture_ns if msg else None)
        self._restore_seqs(entry)
        seq = entry.forward_seq
        entry.forward_seq += 1
        return wire.encode_input(topic, entry.name, self.port.pub_id, seq, fwd.kind, data=fwd.data,
                                 text=fwd.text, t_capture_ns=t_capture, **fwd.fields)

    def _reply(self, job: Job, fields: dict):
        if job.reply_to is not None:
            self._push(list(job.reply_to) + [wire.encode_control_reply(job.fields or {}, fields)])
            job.reply_to = None

    def _push(self, frames):
        while True:
            try:
                self.push.send_multipart(frames)
                return
            except zmq.Again:  # the loop is behind; give up only when shutting down
                if self.stop.is_set():
                    return


def _revises(msg: wire.InMessage | None) -> bool:
    return msg is not None and ("replace_last" in msg.extra or "revise" in msg.extra)


def _extra(msg: wire.InMessage) -> dict:
    """The fields a policy gets: the header's model-specific ones, plus t_capture_ns when present."""
    return msg.extra if msg.t_capture_ns is None else {**msg.extra, "t_capture_ns": msg.t_capture_ns}
