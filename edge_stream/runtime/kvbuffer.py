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
copy-on-write. Claims are dropped by weakref finalizers, so a state nobody holds any
more gives its entries back at once.

The whole life cycle is this small interface: `KVBuffer.copy` (allocation, growth and
eviction: a fresh buffer holding given entries), `KVCache.append` (the one write: run a
chunk, in place or copy-on-write, and claim the result), `KVCache.truncated` (rewind)
and `KVCache.views`. Handles are made only by `KVBuffer.claim`, never by a constructor
as a side effect. The buffer's lock makes "no live claim past here, nobody writing"
and "I write now" one step, so two streams restored from one snapshot in two threads
never write the same entries.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from edge_stream.runtime.runner import NUMPY_DTYPES

MIN_CAPACITY = 256  # entries; buffers grow by doubling, so appends copy O(1) amortised


def capacity_for(needed: int, limit: int | None) -> int:
    """Entries to allocate for `needed`: the next power of two >= max(needed, MIN_CAPACITY),
    capped at `limit` (a window's sinks + kv_window, or the model's position range)."""
    cap = max(MIN_CAPACITY, 1 << max(0, needed - 1).bit_length())
    if limit is not None:
        cap = min(cap, max(limit, needed))
    return cap


class KVBuffer:
    """One lineage's KV storage: per kv state an array with `capacity` entries along its
    sequence axis, the OrtValues and IOBinding that bind it as both past and present, and
    the live claims on it. The constructor only allocates."""

    def __init__(self, specs, capacity: int):
        self.specs = specs
        self.capacity = capacity
        self.arrays = []
        for spec in specs:
            shape = list(spec.shape)
            shape[spec.seq_axis] = capacity
            self.arrays.append(np.zeros(shape, dtype=NUMPY_DTYPES[spec.dtype]))  # [batch, kv_heads, capacity, head_dim]
        # ortvalue_from_numpy wraps the array's memory on CPU: ORT writes into `arrays`.
        self.ortvalues = [ort.OrtValue.ortvalue_from_numpy(a) for a in self.arrays]
        self._io = None  # IOBinding with the kv states bound; made on the first run (needs the session)
        self._claims: dict[int, int] = {}  # length -> live handles claiming [0, length)
        self._writing = False
        # Reentrant: a finalizer (giving a claim back) may run on this thread while it holds the lock.
        self._lock = threading.RLock()

    @classmethod
    def copy(cls, specs, states, length: int, capacity: int, drop: tuple[int, int] | None = None) -> KVCache:
        """A fresh buffer of `capacity` entries holding the first `length` entries of `states`,
        contiguous, and a handle on them; with `drop=(lo, hi)` without entries [lo, hi) (a window's
        eviction, in the same one copy)."""
        lo, hi = drop or (length, length)
        buf = cls(specs, capacity)
        for spec, dst, src in zip(specs, buf.arrays, states):  # copy: the kept entries, once
            dst[_seq_slice(spec, dst.ndim, 0, lo)] = src[_seq_slice(spec, src.ndim, 0, lo)]
            dst[_seq_slice(spec, dst.ndim, lo, length - (hi - lo))] = src[_seq_slice(spec, src.ndim, hi, length)]
        return buf.claim(length - (hi - lo))

    def views(self, length: int) -> tuple:
        """The first `length` entries of each state: views, valid as long as a handle claims them."""
        return tuple(a[_seq_slice(s, a.ndim, 0, length)] for s, a in zip(self.specs, self.arrays))

    def claim(self, length: int) -> KVCache:
        """A handle on entries [0, length): nothing writes them while the handle lives."""
        handle = KVCache(self, length)
        with self._lock:
            self._claims[length] = self._claims.get(length, 0) + 1
        weakref.finalize(handle, self._unclaim, length)
        return handle

    def _unclaim(self, length: int) -> None:
        with self._lock:
            left = self._claims[length] - 1
            if left:
                self._claims[length] = left
            else:
                del self._claims[length]

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
        the fetched outputs are bound per run."""
        io = self._io
        if io is None:
            io = self._io = runner.session.io_binding()
            for spec, value in zip(self.specs, self.ortvalues):  # bound first: outputs [0, n_kv)
                io.bind_ortvalue_input(spec.input, value)
                io.bind_ortvalue_output(spec.output, value)
        for name, value in feeds.items():
            io.bind_cpu_input(name, value)
        for name in runner.unbound_fetch:  # rebinding a name keeps its place among the outputs
            io.bind_output(name)
        runner.session.run_with_iobinding(io)
        return [v.numpy() for v in io.get_outputs()[len(self.specs):]]


@dataclass(frozen=True, eq=False)
class KVCache:
    """A state's KV entries: [0, length) of `buffer`, claimed while this handle lives.
    Made by `KVBuffer.claim` only; shared freely between states (dataclasses.replace)."""

    buffer: KVBuffer
    length: int

    def views(self) -> tuple:
        return self.buffer.views(self.length)

    def append(self, runner, feeds: dict, n: int, capacity: int) -> tuple[list, KVCache]:
        """Run one chunk whose `n` new entries ORT writes at [length, length + n).

        In place when no other live handle claims past `length`, no other run is writing and
        the buffer has room; else into a fresh copy of [0, length) with `capacity` entries first
        (copy-on-write, or growth). Returns the fetched outputs (`runner.unbound_fetch` order) and
        the handle on [0, length + n). On failure nothing is claimed.
        """
        buf = self.buffer
        if not buf._reserve(self.length, n):
            buf = KVBuffer.copy(buf.specs, buf.views(self.length), self.length, capacity).buffer
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
