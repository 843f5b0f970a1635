"""Shared past/present KV buffers: one preallocated array per kv state, written in place.

A GroupQueryAttention graph (onnxruntime-genai's model builder) accepts past and present
as the *same* buffer: ORT writes a chunk's new entries at the cache length the attention
mask gives and touches nothing before it. The concat layout instead returns a new
present per run, a copy of the whole cache every step.

Streams keep immutable states (a snapshot is O(1)), so a buffer may back several states
at once. A state holds a `KVCache`: a handle on entries [0, length) of one buffer that
claims them while it lives. Writes go only where no live handle claims anything: at or
after the longest live claim. A handle behind that point (a restored snapshot, a rewind
whose longer state is still held) first copies its entries into a fresh buffer:
copy-on-write. Claims are dropped when their handle is collected, so a state nobody holds any
more gives its entries back at once.

The whole life cycle is this small interface: `KVBuffer.copy` (allocation, growth and
eviction: a buffer from the model's `KVPool` holding given entries), `KVCache.append` (the one write: run a
chunk, in place or copy-on-write, and claim the result), `KVCache.truncated` (rewind)
and `KVCache.views`. Handles are made only by `KVBuffer.claim`, never by a constructor
as a side effect. The buffer's lock makes "no live claim past here, nobody writing"
and "I write now" one step, so two streams restored from one snapshot in two threads
never write the same entries.

Memory: KV entries outlive the ORT run that made them, so they never live in ORT's arena
(which keeps its high-water mark for the life of the session: after many streams opened and
closed, RSS stayed 26% up, issue 13 §7). They live in slabs of a `KVPool`, one per model:
anonymous mmaps, so a slab the pool does not keep goes straight back to the OS (malloc would
keep it, fragmented among long-lived objects). The pool recycles a bounded number of idle
slabs and idle `KVBuffer`s (with their IOBindings) across the model's streams, for new
streams, growth and a window's eviction copy alike.
"""

from __future__ import annotations

import math
import mmap
import threading
import weakref
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from edge_stream.runtime.runner import NUMPY_DTYPES

MIN_CAPACITY = 256  # entries; buffers grow by doubling, so appends copy O(1) amortised
MIN_SLAB_BYTES = 64 * 1024  # slabs come in powers of two from here (few size classes, few mappings)
DEFAULT_POOL_BYTES = 2 * 1024 * 1024  # idle memory a model's pool keeps for its next streams
KEEP_PER_SIZE = 2  # idle slabs (buffers) kept per size beyond that: a decode step of a large model
# ping-pongs between two slabs of one size, which must not be mapped (and faulted in) afresh each step


def capacity_for(needed: int, limit: int | None) -> int:
    """Entries to allocate for `needed`: the next power of two >= max(needed, MIN_CAPACITY),
    capped at `limit` (a window's sinks + kv_window, or the model's position range)."""
    cap = max(MIN_CAPACITY, 1 << max(0, needed - 1).bit_length())
    if limit is not None:
        cap = min(cap, max(limit, needed))
    return cap


class KVPool:
    """Idle KV memory of one model, shared by its streams (thread-safe): at most `max_idle_bytes`,
    or KEEP_PER_SIZE of each size.

    Two things are recycled: slabs (an anonymous mmap, carved into arrays by `arrays`: the
    concat path's per-run present states, copies) and whole `KVBuffer`s by capacity (their
    OrtValues and IOBinding stay made). What the pool does not keep is unmapped at once."""

    def __init__(self, max_idle_bytes: int = DEFAULT_POOL_BYTES):
        self.max_idle_bytes = max_idle_bytes
        self.idle_bytes = 0
        self.reused = self.made = self.dropped = 0  # counts, for tests and the churn benchmark
        self._slabs: dict[int, list] = {}  # slab bytes -> idle mmaps
        self._buffers: dict[int, list] = {}  # capacity -> idle KVBuffers
        # Reentrant: the garbage collector may run a finalizer that gives memory back while this
        # thread holds the lock (an allocation inside it can trigger a collection).
        self._lock = threading.RLock()

    def arrays(self, shapes, dtypes) -> list:
        """C-contiguous arrays of these shapes in one slab, returned to the pool when the last of
        them (and every view of them) is gone. Contents are undefined (a recycled slab is not cleared)."""
        sizes = [math.prod(s) * np.dtype(d).itemsize for s, d in zip(shapes, dtypes)]
        offsets = np.cumsum([0] + [-(-n // 64) * 64 for n in sizes])  # 64-byte aligned, as ORT likes
        size = max(MIN_SLAB_BYTES, 1 << max(0, int(offsets[-1]) - 1).bit_length())
        with self._lock:
            idle = self._slabs.get(size)
            slab = idle.pop() if idle else None
            if slab is not None:
                self.idle_bytes -= size
                self.reused += 1
        if slab is None:
            slab = mmap.mmap(-1, size)  # anonymous, zero-filled, own mapping: munmap gives it back
            self.made += 1
        # Every view of `base` (and of the arrays carved from it) has `base` as its .base, so
        # `base` dies only when nothing uses the slab any more: then it may be reused.
        base = np.frombuffer(slab, dtype=np.uint8)
        weakref.finalize(base, self._give_slab, slab, size)
        return [base[o:o + n].view(d).reshape(s) for o, n, s, d in zip(offsets, sizes, shapes, dtypes)]

    def _keeps(self, idle: list, size: int) -> bool:
        return len(idle) < KEEP_PER_SIZE or self.idle_bytes + size <= self.max_idle_bytes

    def _give_slab(self, slab, size: int) -> None:
        with self._lock:
            idle = self._slabs.setdefault(size, [])
            if self._keeps(idle, size):
                idle.append(slab)
                self.idle_bytes += size
                return
            self.dropped += 1
        # Not kept: unmapped as soon as the dying array lets go of it (it still exports the buffer now).

    def buffer(self, specs, capacity: int) -> KVBuffer:
        """An idle KVBuffer of `capacity` entries (its IOBinding kept), else a new one."""
        with self._lock:
            idle = self._buffers.get(capacity)
            buf = idle.pop() if idle else None
            if buf is not None:
                self.idle_bytes -= buf.nbytes
                self.reused += 1
                return buf
        self.made += 1
        return KVBuffer(specs, capacity, self)

    def _give_buffer(self, buf: KVBuffer) -> None:
        """Called when nothing claims `buf` any more (lock of `buf` held, not writing)."""
        with self._lock:
            idle = self._buffers.setdefault(buf.capacity, [])
            if self._keeps(idle, buf.nbytes):
                idle.append(buf)
                self.idle_bytes += buf.nbytes
                return
            self.dropped += 1
        buf.release()

    def clear(self) -> None:
        """Drop every idle slab and buffer (their memory goes back to the OS)."""
        with self._lock:
            slabs = [s for idle in self._slabs.values() for s in idle]
            buffers = [b for idle in self._buffers.values() for b in idle]
            self._slabs.clear()
            self._buffers.clear()
            self.idle_bytes = 0
        for b in buffers:
            b.release()
        del slabs  # unmapped with the last reference


class KVBuffer:
    """One lineage's KV storage: per kv state an array with `capacity` entries along its
    sequence axis (one slab of `pool`), the OrtValues and IOBinding that bind it as both
    past and present, and the live claims on it. The constructor only allocates; made
    by `KVPool.buffer`, which gets it back once no handle claims it."""

    def __init__(self, specs, capacity: int, pool: KVPool):
        self.specs = specs
        self.capacity = capacity
        self.pool = pool
        shapes = []
        for spec in specs:
            shape = list(spec.shape)
            shape[spec.seq_axis] = capacity
            shapes.append(shape)  # [batch, kv_heads, capacity, head_dim]
        self.arrays = pool.arrays(shapes, [NUMPY_DTYPES[s.dtype] for s in specs])
        self.nbytes = sum(a.nbytes for a in self.arrays)
        # ortvalue_from_numpy wraps the array's memory on CPU: ORT writes into `arrays`.
        self.ortvalues = [ort.OrtValue.ortvalue_from_numpy(a) for a in self.arrays]
        self._io = None  # IOBinding with the kv states bound; made on the first run (needs the session)
        self._claims: dict[int, int] = {}  # length -> live handles claiming [0, length)
        self._writing = False
        # Reentrant: a finalizer (giving a claim back) may run on this thread while it holds the lock.
        self._lock = threading.RLock()

    def release(self) -> None:
        """Drop the memory (the pool did not keep this buffer): its slab goes back to the pool or the OS."""
        self._io = None
        self.ortvalues = self.arrays = ()

    @classmethod
    def copy(cls, specs, states, length: int, capacity: int, drop: tuple[int, int] | None = None,
             *, pool: KVPool) -> KVCache:
        """A buffer of `capacity` entries from `pool` holding the first `length` entries of `states`,
        contiguous, and a handle on them; with `drop=(lo, hi)` without entries [lo, hi) (a window's
        eviction, in the same one copy)."""
        lo, hi = drop or (length, length)
        buf = pool.buffer(specs, capacity)
        for spec, dst, src in zip(specs, buf.arrays, states):  # copy: the kept entries, once
            dst[_seq_slice(spec, dst.ndim, 0, lo)] = src[_seq_slice(spec, src.ndim, 0, lo)]
            dst[_seq_slice(spec, dst.ndim, lo, length - (hi - lo))] = src[_seq_slice(spec, src.ndim, hi, length)]
        return buf.claim(length - (hi - lo))

    def views(self, length: int) -> tuple:
        """The first `length` entries of each state: views, valid as long as a handle claims them."""
        return tuple(a[_seq_slice(s, a.ndim, 0, length)] for s, a in zip(self.specs, self.arrays))

    def claim(self, length: int) -> KVCache:
        """A handle on entries [0, length): nothing writes them while the handle lives."""
        with self._lock:
            self._claims[length] = self._claims.get(length, 0) + 1
        return KVCache(self, length)  # gives the claim back when collected (KVCache.__del__)

    def _unclaim(self, length: int) -> None:
        with self._lock:
            left = self._claims[length] - 1
            if left:
                self._claims[length] = left
                return
            del self._claims[length]
            # No handle left, so no state holds views of the arrays and nobody can write: reusable.
            idle = not self._claims and not self._writing
        if idle:
            self.pool._give_buffer(self)

    def _reserve(self, length: int, n: int) -> bool:
        """Reserve entries [length, length + n) for one run; False where that is not safe (copy instead)."""
        with self._lock:  # the check and the reservation are one step
            if not self._free(length, n):
                return False
            self._writing = True
            return True

    def _free(self, length: int, n: int) -> bool:
        """No run writing, room for n more entries, no live claim past `length` (lock held)."""
        return not self._writing and length + n <= self.capacity and (not self._claims or max(self._claims) <= length)

    def _end_write(self) -> None:
        with self._lock:
            self._writing = False

    def _run(self, runner, feeds: dict) -> list:
        """One ORT run with every kv state bound as both past and present; ORT writes the new
        entries in place. Returns arrays in `runner.unbound_fetch` order.

        The IOBinding is made once and kept: the kv bindings stay, only the chunk's inputs and
        the fetched outputs are bound per run (about 0.2 ms less per decode step than clearing
        and rebinding every kv output, and wrapping each of them to read the logits)."""
        io = self._io
        if io is None:
            io = self._io = runner.session.io_binding()
            for spec, value in zip(self.specs, self.ortvalues):  # bound first: outputs [0, n_kv)
                io.bind_ortvalue_input(spec.input, value)
                io.bind_ortvalue_output(spec.output, value)
            for name in runner.unbound_fetch:  # ORT allocates these in each run
                io.bind_output(name)
        for name, value in feeds.items():
            io.bind_cpu_input(name, value)
        runner.session.run_with_iobinding(io)
        values = io.get_outputs_as_ortvaluevector()  # no Python wrapper per kv output
        first = len(self.specs)
        outputs = [values[first + i].numpy() for i in range(len(runner.unbound_fetch))]  # views holding their OrtValues
        # Rebinding a name drops ORT's allocation from the binding (the views keep theirs) and
        # keeps its place among the outputs: an idle or pooled buffer holds no arena memory.
        for name in runner.unbound_fetch:
            io.bind_output(name)
        return outputs


@dataclass(frozen=True, eq=False)
class KVCache:
    """A state's KV entries: [0, length) of `buffer`, claimed while this handle lives.
    Made by `KVBuffer.claim` only; shared freely between states (dataclasses.replace)."""

    buffer: KVBuffer
    length: int

    def __del__(self):
        # Not weakref.finalize: a handle is made per decode step, and a finalizer object cost
        # several times this (CPython calls __del__ as soon as the last state holding it goes).
        self.buffer._unclaim(self.length)

    def views(self) -> tuple:
        return self.buffer.views(self.length)

    def append(self, runner, feeds: dict, n: int, capacity: int) -> tuple[list, KVCache]:
        """Run one chunk whose `n` new entries ORT writes at [length, length + n).

        In place when no other live handle claims past `length`, no other run is writing and
        the buffer has room; else into a fresh copy of [0, length) with `capacity` entries first
        (copy-on-write, or growth). Returns the fetched outputs (`runner.unbound_fetch` order) and
        the handle on [0, length + n). On failure nothing is claimed.
        """
        buf, fresh = self.buffer, None
        if not buf._reserve(self.length, n):
            # `fresh` claims the copy until the new handle does (unclaimed, it would go back to the pool).
            fresh = KVBuffer.copy(buf.specs, buf.views(self.length), self.length, capacity, pool=buf.pool)
            buf = fresh.buffer
            buf._reserve(self.length, n)  # fresh: nobody else can hold it
        try:
            outputs = buf._run(runner, feeds)
            return outputs, buf.claim(self.length + n)  # claimed before the write ends
        finally:
            buf._end_write()

    def truncated(self, length: int) -> KVCache:
        """A handle on the first `length` entries (a rewind): later writes may go after them."""
        return self.buffer.claim(length)


def _seq_slice(spec, ndim: int, lo: int, hi: int) -> tuple:
    index = [slice(None)] * ndim
    index[spec.seq_axis] = slice(lo, hi)
    return tuple(index)
