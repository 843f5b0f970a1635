"""Shared past/present KV buffers: one preallocated array per kv state, written in place.

A GroupQueryAttention graph (onnxruntime-genai's model builder) accepts past and present
as the *same* buffer: ORT writes a chunk's new entries at the cache length the attention
mask gives and touches nothing before it. The concat layout instead returns a new
present per run, a copy of the whole cache every step.

Streams keep immutable states (a snapshot is O(1)), so a buffer may back several states
at once: each claims entries [0, length) and holds views of them. Writes go only where
no live state claims anything: at or after the longest live claim. A state behind that
point (a restored snapshot, a rewind whose longer state is still held) first copies its
entries into a fresh buffer: copy-on-write. Live claims are tracked with weak
references, so a state nobody holds any more gives its claim back at once.
"""

from __future__ import annotations

import threading
import weakref

import numpy as np
import onnxruntime as ort

MIN_CAPACITY = 256  # entries; buffers grow by doubling, so appends copy O(1) amortised


def capacity_for(needed: int, limit: int | None) -> int:
    """Entries to allocate for `needed`: the next power of two >= max(needed, MIN_CAPACITY),
    capped at `limit` (a window's sinks + kv_window, or the model's position range)."""
    cap = max(MIN_CAPACITY, 1 << max(0, needed - 1).bit_length())
    if limit is not None:
        cap = min(cap, max(limit, needed))
    return cap


class KVBuffer:
    """One stream's KV storage: per kv state an array with `capacity` entries along its
    sequence axis, and the OrtValues that bind it as both past and present."""

    def __init__(self, specs, capacity: int, dtypes):
        self.specs = specs
        self.capacity = capacity
        self.arrays = []
        for spec, dtype in zip(specs, dtypes):
            shape = list(spec.shape)
            shape[spec.seq_axis] = capacity
            self.arrays.append(np.zeros(shape, dtype=dtype))
        # ortvalue_from_numpy wraps the array's memory on CPU: ORT writes into `arrays`.
        self.ortvalues = [ort.OrtValue.ortvalue_from_numpy(a) for a in self.arrays]
        self.binding = None  # the IOBinding with these buffers bound (made by the runner)
        self._claims: dict[int, int] = {}  # length -> live states claiming it
        self._writing = False
        self._lock = threading.Lock()

    @classmethod
    def copied(cls, specs, states, length: int, capacity: int, dtypes, drop: tuple[int, int] | None = None) -> "KVBuffer":
        """A fresh buffer holding the first `length` entries of `states`, contiguous; with
        `drop=(lo, hi)` without entries [lo, hi) (a window's eviction, in the same one copy)."""
        lo, hi = drop or (length, length)
        buf = cls(specs, capacity, dtypes)
        for spec, dst, src in zip(specs, buf.arrays, states):
            dst[_seq_slice(spec, dst.ndim, 0, lo)] = src[_seq_slice(spec, src.ndim, 0, lo)]
            dst[_seq_slice(spec, dst.ndim, lo, length - (hi - lo))] = src[_seq_slice(spec, src.ndim, hi, length)]
        return buf

    def views(self, length: int) -> tuple:
        """The first `length` entries of each state: views, valid as long as a state claims them."""
        return tuple(a[_seq_slice(s, a.ndim, 0, length)] for s, a in zip(self.specs, self.arrays))

    def register(self, holder, length: int) -> None:
        """`holder` (a stream state) claims entries [0, length) until it is garbage."""
        with self._lock:
            self._claims[length] = self._claims.get(length, 0) + 1
        weakref.finalize(holder, self._unclaim, length)

    def _unclaim(self, length: int) -> None:
        with self._lock:
            left = self._claims[length] - 1
            if left:
                self._claims[length] = left
            else:
                del self._claims[length]

    def begin_write(self, length: int, n: int) -> bool:
        """Reserve entries [length, length + n) for one run; False where a live state claims
        any of them, the buffer is too small, or another run is writing (copy instead)."""
        with self._lock:
            if self._writing or length + n > self.capacity:
                return False
            if self._claims and max(self._claims) > length:
                return False
            self._writing = True
            return True

    def end_write(self) -> None:
        with self._lock:
            self._writing = False


def _seq_slice(spec, ndim: int, lo: int, hi: int) -> tuple:
    index = [slice(None)] * ndim
    index[spec.seq_axis] = slice(lo, hi)
    return tuple(index)
