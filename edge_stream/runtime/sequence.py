"""Sequence streams: feed chunks into a model's carried state, one ORT run per chunk.

`StreamSession` is the stream policy for sequence models (causal LMs, streaming
acoustic transformers): it validates each chunk at the boundary, fills
attention_mask/position_ids, keeps the KV cache bounded with a sliding window
plus attention sinks, and rewinds, snapshots and restores. The ONNX session
itself lives in `ModelRunner`, shared by every stream of a model.

State is immutable: every run returns new arrays from ONNX Runtime and the
stream swaps one `StreamState` reference only after all runs of a feed
succeeded. So a rejected or failed chunk leaves the stream exactly as it was,
and a snapshot is the state object itself (O(1), no copy). The state is built
field by field in `_initial_state` only; every later state is a `dataclasses.replace`
of an earlier one.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from edge_stream import records
from edge_stream.errors import ConfigError, InputError, StreamStateError
from edge_stream.runtime.generate import TextDeltas, check_sampling, next_token
from edge_stream.runtime.kvbuffer import KVBuffer, KVCache, capacity_for
from edge_stream.runtime.runner import NUMPY_DTYPES

log = logging.getLogger(__name__)

DEFAULT_MAX_FEED = 1 << 16  # tokens or frames accepted by one feed() call
LOGITS = ("all", "last")  # stream option `logits`: rows of logits a feed returns
_NO_TOKENS = np.zeros(0, dtype=np.int64)
_TOKEN_DTYPES = (np.dtype(np.int64), np.dtype(np.int32))


@dataclass(frozen=True)
class StreamState:
    """Everything one stream carries between chunks; never mutated in place.

    `cache_inputs[i]` and `cache_positions[i]` describe KV entry i: the input
    that produced it (needed to re-encode the window) and the position the
    model saw. `fed` counts inputs run through the model; `pending` holds token
    ids that belong to the stream but are not yet run (the last generated token,
    or the token re-run after a rewind). `last_logits` are the logits after the
    last input run, i.e. the prediction for the next token.
    """

    owner: int  # id of the Model: a snapshot restores only into streams of the same model
    # Manifest order. Where `kv` is set, its kv slots are None: `states` makes their views on first
    # use (slicing every layer's buffer after each decode step cost as much as the rest of the step).
    held: tuple
    cache_inputs: np.ndarray  # [cache_len] token ids, or [cache_len, feature_dim] frames
    cache_positions: np.ndarray  # [cache_len] int64
    next_model_position: int = 0  # position the model sees for the next input run
    fed: int = 0
    evicted: int = 0
    pending: np.ndarray = dataclasses.field(default_factory=lambda: _NO_TOKENS)
    last_logits: np.ndarray | None = None
    kv: KVCache | None = None  # shared_buffer models: the claimed entries the kv states are views of

    @property
    def cache_len(self) -> int:
        return int(self.cache_positions.size)

    @property
    def states(self) -> tuple:
        """Every state in manifest order; kv states [batch, kv_heads, cache_len, head_dim] (views of
        the shared buffer where `kv` is set, made once per state object)."""
        if self.kv is None:
            return self.held
        made = self.__dict__.get("_states")
        if made is None:
            views = iter(self.kv.views())
            made = tuple(next(views) if v is None else v for v in self.held)
            object.__setattr__(self, "_states", made)  # a cache, not state: replace() drops it
        return made


@dataclass
class ChunkOutput:
    """What one feed produced: per-position outputs by name, rows [n, ...]."""

    outputs: dict
    start: int  # stream position of the chunk's first input
    logits_name: str | None = None

    @property
    def logits(self) -> np.ndarray:
        """[n, vocab] logits, one row per input of the chunk ([1, vocab], the last input's, on a
        stream opened with logits="last")."""
        if self.logits_name is None:
            raise StreamStateError("this model has no output with role 'logits'")
        return self.outputs[self.logits_name]


@dataclass(frozen=True)
class Piece:
    """One generated token and the text it completed ('' while a UTF-8 character is incomplete)."""

    token_id: int
    text: str


class StreamSession:
    """One stream's explicit state over a shared model.

    Options (defaults from the manifest's `limits`): `kv_window` recent entries
    kept besides `sink_tokens` first entries (None = unbounded); when the window
    overflows, at least `evict_block` oldest non-sink entries leave at once
    (default kv_window // 8; each eviction copies the whole cache), and the
    window refills from there; `max_chunk` inputs per ORT run, `max_feed`
    inputs accepted per feed call. `kv_io` (default: the manifest's) may be "concat" to
    run a shared_buffer graph the copying way, for comparison; `kv_capacity` sizes a
    shared buffer up front (entries; default: a window's span, else grown by doubling).
    `prefix` (a snapshot of a stream of this model) starts the stream as if it had been fed
    that stream's input: its KV entries are shared with every stream opened from it, not run
    again nor copied until this stream writes past them (copy-on-write); `reset` returns to it.
    `logits`: "all" (one row per input) or "last" (only each feed's last row, all a generation
    needs): on a graph with a `logits_to_keep` input (export.gqa) the lm_head then runs for one
    position instead of the whole chunk; elsewhere the row is cut from the full output.
    """

    def __init__(self, model, kv_window: int | None = ..., sink_tokens: int | None = None,
                 evict_block: int | None = None, max_chunk: int | None = None,
                 max_feed: int = DEFAULT_MAX_FEED, kv_io: str | None = None,
                 kv_capacity: int | None = None, prefix: StreamState | None = None, logits: str = "all",
                 **unknown):
        m = model.manifest
        # `prefix` is a runtime object, not an option a launch file or the wire can spell: checked below.
        records.check_args(StreamSession.__init__, {k: v for k, v in locals().items() if k != "prefix"},
                           f"{m.name}: stream option", ConfigError)
        if unknown:
            raise ConfigError(f"{m.name}: unknown stream option(s) {', '.join(sorted(unknown))}; sequence "
                              "streams take kv_window, sink_tokens, evict_block, max_chunk, max_feed, kv_io, "
                              "kv_capacity, prefix, logits")
        if logits not in LOGITS:
            raise ConfigError(f"{m.name}: logits: expected one of {', '.join(LOGITS)}, got {logits!r}")
        self.logits = logits
        if kv_io not in (None, "concat", m.kv_io):
            raise ConfigError(f"{m.name}: kv_io {kv_io!r} needs a graph built for it; this one is {m.kv_io!r}")
        self.kv_io = kv_io or m.kv_io
        if kv_capacity is not None and kv_capacity < 1:
            raise ConfigError(f"kv_capacity: expected >= 1 entries, got {kv_capacity}")
        self.kv_capacity = kv_capacity
        self.model = model
        self.manifest = m
        self.runner = model.runner
        self.pool = model.kv_pool  # KV memory shared by the model's streams, recycled (kvbuffer.KVPool)
        limits = m.limits
        self.kv_window = limits.kv_window if kv_window is ... else kv_window
        self.sink_tokens = limits.sink_tokens if sink_tokens is None else sink_tokens
        self.evict_block = evict_block if evict_block is not None else max(1, (self.kv_window or 8) // 8)
        self.max_chunk = max_chunk or limits.max_chunk
        self.max_feed = max_feed
        self.max_positions = limits.max_positions
        self.tokens = m.input.kind == "tokens"
        self._mask = m.aux_for("attention_mask")
        self._pos = m.aux_for("position_ids")
        self._consts = {a.name: np.asarray(a.value, dtype=NUMPY_DTYPES[a.dtype])
                        for a in m.aux if a.fill == "constant"}
        self._kv_index = [i for i, s in enumerate(m.states) if s.kind == "kv"]
        self._kv_specs = [m.states[i] for i in self._kv_index]
        self._shared = self.kv_io == "shared_buffer"
        self._has_recurrent = any(s.kind == "recurrent" for s in m.states)
        self._kv_slots = (None,) * len(m.states)  # `held` of a shared-buffer state without recurrent states
        self._logits_name = m.output_for("logits")
        self._last_only = logits == "last" and self._logits_name is not None
        keep = m.aux_for("logits_to_keep")  # a graph input: k last positions get logits, 0 all of them
        self._keep_in_graph = keep is not None
        if keep is not None:
            self._consts[keep.name] = np.array([1 if self._last_only else 0], dtype=np.int64)  # [1]
        self._n_returned = len(self.runner.returned_outputs)
        # Positions the model sees must stay < max_positions for learned tables; models
        # that derive positions from the cache length (no position_ids) also need it.
        encoding = limits.position_encoding if self._pos is not None else "implicit"
        self.position_encoding = encoding
        self._hard_limit = self.max_positions if encoding in ("learned", "rotary_table", "implicit") else None
        self._check_options()
        # One preallocated row of ones: attention masks are views of it (no per-run allocation).
        mask_dtype = NUMPY_DTYPES[self._mask.dtype] if self._mask else np.int64
        self._ones = np.ones((1, self._mask_capacity()), dtype=mask_dtype)
        self._state = self._initial_state() if prefix is None else self._checked_prefix(prefix)
        self._start = self._state  # what reset() returns to

    # ----- set-up -------------------------------------------------------------------------

    def _check_options(self) -> None:
        w, k = self.kv_window, self.sink_tokens
        if self.max_chunk < 1:
            raise ConfigError(f"max_chunk: expected >= 1, got {self.max_chunk}")
        if w is None:
            return
        if not self._kv_index:
            raise ConfigError(f"{self.manifest.name}: kv_window needs kv state; this model has none")
        if w < 1 or k < 0:
            raise ConfigError(f"kv_window must be >= 1 and sink_tokens >= 0, got {w} and {k}")
        if not 1 <= self.evict_block <= w:
            raise ConfigError(f"evict_block must be in [1, kv_window={w}], got {self.evict_block}")
        if self._hard_limit is not None and k + w > self._hard_limit:
            raise ConfigError(
                f"{self.manifest.name}: sink_tokens + kv_window = {k + w} exceeds max_positions "
                f"{self._hard_limit} of this {self.position_encoding}-position model")
        # A chunk must fit in the window so the cache never exceeds sinks + window.
        self.max_chunk = min(self.max_chunk, w)

    def _checked_prefix(self, prefix) -> StreamState:
        """`prefix` if this stream can continue it exactly as the stream it came from would have:
        same model, nothing evicted (a fresh stream fed its input holds every entry) and all of
        it inside this stream's window. Raises StreamStateError saying which does not hold."""
        name = self.manifest.name
        if not isinstance(prefix, StreamState) or prefix.owner != id(self.model):
            got = "a snapshot of another model" if isinstance(prefix, StreamState) else type(prefix).__name__
            raise StreamStateError(f"{name}: prefix: expected a snapshot of a stream of this model, got {got}")
        if prefix.evicted:
            raise StreamStateError(f"{name}: prefix: its window evicted {prefix.evicted} entries; a shared "
                                   "prefix must hold all of its input (open it with a larger kv_window)")
        if self.kv_window is not None and prefix.cache_len > self.sink_tokens + self.kv_window:
            raise StreamStateError(
                f"{name}: prefix: {prefix.cache_len} entries do not fit this stream's sink_tokens + kv_window "
                f"= {self.sink_tokens + self.kv_window}")
        return prefix

    def _mask_capacity(self) -> int:
        if self.kv_window is not None:
            return self.sink_tokens + self.kv_window
        return self._hard_limit or max(self.max_positions or 0, 4096)

    def _initial_state(self) -> StreamState:
        if self.tokens:
            inputs = np.zeros(0, dtype=np.int64)
        else:
            inputs = np.zeros((0, self.manifest.input.feature_dim), dtype=NUMPY_DTYPES[self.manifest.input.dtype])
        return StreamState(owner=id(self.model), held=self.runner.initial_states(1),
                           cache_inputs=inputs, cache_positions=np.zeros(0, dtype=np.int64))

    # ----- public verbs -------------------------------------------------------------------

    @property
    def position(self) -> int:
        """Inputs in the stream so far (fed plus pending)."""
        return self._state.fed + int(self._state.pending.size)

    @property
    def cache_len(self) -> int:
        return self._state.cache_len

    @property
    def state(self) -> StreamState:
        return self._state

    def feed(self, chunk, *, replace_last: int = 0, trusted: bool = False) -> ChunkOutput:
        """Append `chunk` (>= 1 token ids, or frames [n, feature_dim]) to the stream, in place of its
        last `replace_last` inputs (a revision: 0 appends).

        Returns per-position outputs for the chunk's inputs (`.logits` [n, vocab]), starting at
        `.start` = position - replace_last. Never recomputes earlier input: a revision drops the
        replaced KV entries and runs only `chunk`. Any input may be replaced, generated tokens
        included, as far back as the window retains (`revisable`); reaching further raises
        StreamStateError. Bad chunks raise InputError. Either way the stream is then unchanged:
        both are checked before anything runs. `trusted=True`: the caller (the node, after
        wire.decode_input) checked finiteness; it is not scanned again.
        """
        rows = self._validate(chunk, trusted)
        st = rewound = self._rewound(self._state, replace_last, "replace_last") if replace_last else self._state
        start = st.fed + int(st.pending.size)
        pending = st.pending
        if pending.size:
            rows = np.concatenate([pending, rows]) if self.tokens else rows
            st = dataclasses.replace(st, pending=_NO_TOKENS)
        if self._hard_limit is not None and self.kv_window is None and \
                st.next_model_position + len(rows) > self._hard_limit:
            raise StreamStateError(
                f"{self.manifest.name}: stream full: {st.next_model_position} + {len(rows)} positions exceed "
                f"max_positions {self._hard_limit}; open the stream with kv_window to stream endlessly")
        if replace_last and self._shared and rewound.kv is not None:
            # Shared buffer: the replaced entries must not stay claimed by the state they leave, or
            # the run would copy the whole kept prefix (copy-on-write) instead of writing after it.
            # So the rewound state is the stream's from here: if ORT itself failed in the run, the
            # stream would be left rewound (never corrupt). A snapshot the caller holds keeps its claim.
            self._state = rewound
        del rewound
        st, outputs = self._run_all(st, rows)
        self._state = st
        skip = int(pending.size)
        if skip:  # rows of the re-run pending tokens belong to an earlier call
            outputs = {k: v if self._last_only and k == self._logits_name else v[skip:] for k, v in outputs.items()}
        return ChunkOutput(outputs=outputs, start=start, logits_name=self._logits_name)

    @property
    def revisable(self) -> int:
        """How many of the newest inputs `rewind` and `feed(replace_last=...)` can still reach:
        all of them, or with a sliding window that has evicted, those after the sinks."""
        st = self._state
        if self._has_recurrent:
            return int(st.pending.size)
        floor = self.sink_tokens if st.evicted else 0
        return int(st.pending.size) + (st.cache_len - floor if self._kv_index else st.fed)

    def generate(self, max_new_tokens: int = 32, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int | None = None,
                 stop_token_ids=None) -> Iterator[Piece]:
        """Yield generated tokens with UTF-8-safe text deltas, one decode run per token.

        Stops after `max_new_tokens` or at a stop token (manifest's by default; not
        yielded). Every yielded or stop token is part of the stream when the
        generator pauses or ends: the next feed continues after it. A paused
        generator whose stream was changed meanwhile raises StreamStateError.
        `finish_reason` is then 'stop' or 'length'. Bad arguments raise at the call, before the first token.
        """
        if not self.tokens or self._logits_name is None:
            raise StreamStateError(f"{self.manifest.name}: generate needs a token-input model with logits")
        check_sampling(temperature, top_k, top_p, seed)
        if max_new_tokens < 0:
            raise ConfigError(f"max_new_tokens: expected >= 0, got {max_new_tokens}")
        if self._state.last_logits is None and not self._state.pending.size:
            raise StreamStateError(f"{self.manifest.name}: feed a prompt before generate")
        stops = set(self.manifest.stop_token_ids if stop_token_ids is None else stop_token_ids)
        # Checked above, eagerly (a generator body would run only at the first next()).
        return self._generate(max_new_tokens, temperature, top_k, top_p, np.random.default_rng(seed), stops)

    def _generate(self, max_new_tokens, temperature, top_k, top_p, rng, stops) -> Iterator[Piece]:
        deltas = TextDeltas(self.model.tokenizer, self._text_context()) if self.model.tokenizer else None
        self.finish_reason = None
        for _ in range(max_new_tokens):
            st = self._state
            if st.pending.size:  # run the previous token now: its logits give the next one
                st, _ = self._run_all(dataclasses.replace(st, pending=_NO_TOKENS), st.pending)
            token = next_token(st.last_logits, temperature, top_k, top_p, rng)
            self._state = handed_out = dataclasses.replace(st, pending=np.array([token], dtype=np.int64))
            if token in stops:
                self.finish_reason = "stop"
                return
            yield Piece(token, deltas.push(token) if deltas else "")
            if self._state is not handed_out:  # fed, rewound, restored or reset while paused
                raise StreamStateError(f"{self.manifest.name}: the stream changed while this generation "
                                       "was paused; start a new generate()")
        self.finish_reason = "length"

    def rewind(self, n: int) -> None:
        """Drop the last `n` inputs of the stream, as if they had never been fed.

        Rewinding past entries the window already evicted raises StreamStateError.
        The new last token is re-run lazily (on the next feed or generate) to
        recover its logits: one decode step, no history recomputed.
        """
        self._state = self._rewound(self._state, n, "rewind", rerun_last=True)

    def _rewound(self, st: StreamState, n: int, verb: str, rerun_last: bool = False) -> StreamState:
        """`st` without its last `n` inputs: pending ones first, then KV entries, cut exactly, so
        `last_logits` is None when entries were cut. `rerun_last`: the newest kept token leaves the
        cache too and becomes pending, to recover those logits with one decode step. Raises
        StreamStateError naming how far back the stream can go; changes nothing itself."""
        name = self.manifest.name
        position = st.fed + int(st.pending.size)
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n <= position:
            raise StreamStateError(f"{name}: {verb}: expected an int in [0, {position}] (the stream's "
                                   f"position), got {n!r}")
        drop_pending = min(int(n), int(st.pending.size))
        pending = st.pending[: st.pending.size - drop_pending]
        cut = int(n) - drop_pending
        if cut == 0:
            return dataclasses.replace(st, pending=pending) if drop_pending else st
        if self._has_recurrent:
            raise StreamStateError(f"{name}: {verb}: recurrent state cannot be rewound; use snapshot/restore")
        if not self._kv_index:  # stateless: nothing cached, only the count
            return dataclasses.replace(st, fed=st.fed - cut, pending=pending, last_logits=None)
        floor = self.sink_tokens if st.evicted else 0
        keep = st.cache_len - cut
        if keep < floor:
            reach = drop_pending + st.cache_len - floor
            raise StreamStateError(
                f"{name}: {verb}: {n} inputs reach into input the sliding window evicted; this stream can go "
                f"back at most {reach} inputs (kv_window {self.kv_window}, sink_tokens {self.sink_tokens})")
        if keep == 0 and not st.evicted:
            return self._initial_state()
        if rerun_last and self.tokens and keep:
            keep -= 1
            pending = st.cache_inputs[keep:keep + 1].copy()
            cut += 1
        return dataclasses.replace(
            st,
            held=st.held if st.kv is not None else self._slice_kv(st.states, 0, keep),
            cache_inputs=st.cache_inputs[:keep],
            cache_positions=st.cache_positions[:keep],
            next_model_position=int(st.cache_positions[keep]),  # the first cut entry's: the chunk takes its place
            fed=st.fed - cut,
            pending=pending,
            last_logits=None,
            kv=st.kv.truncated(keep) if self._shared and st.kv is not None else None,
        )

    def snapshot(self) -> StreamState:
        """The stream's state, O(1): states are never mutated, so sharing is safe."""
        return self._state

    def restore(self, snap: StreamState) -> None:
        """Return to a snapshot taken from a stream of the same model."""
        if not isinstance(snap, StreamState) or snap.owner != id(self.model):
            raise StreamStateError(f"{self.manifest.name}: snapshot is not from a stream of this model")
        self._state = snap

    def reset(self) -> None:
        """Forget everything fed since the stream opened: back to empty, or to its `prefix`."""
        self._state = self._start

    # ----- the hot path ---------------------------------------------------------------------

    def _run_all(self, st: StreamState, rows: np.ndarray):
        """Run `rows` in pieces of at most max_chunk; returns the new state and outputs."""
        n = len(rows)
        if n <= self.max_chunk:
            st, outs = self._run_piece(st, rows)
            return st, outs
        parts = []
        for i in range(0, n, self.max_chunk):
            st, outs = self._run_piece(st, rows[i:i + self.max_chunk])
            parts.append(outs)
        last = self._logits_name if self._last_only else None  # its row: the last piece's
        return st, {k: parts[-1][k] if k == last else np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _run_piece(self, st: StreamState, rows: np.ndarray):
        """One ORT run over `rows` (<= max_chunk inputs); returns the new state and the chunk's outputs."""
        s = len(rows)
        if self.kv_window is not None:
            st = self._make_room(st, s)
        feeds, positions = self._input_feeds(st, rows)
        returned, states, kv = self._run_states(st, feeds, s)
        outputs = {name: r[0] for name, r in zip(self.runner.returned_outputs, returned)}  # drop batch axis
        if self._last_only and not self._keep_in_graph:
            outputs[self._logits_name] = outputs[self._logits_name][-1:]  # [1, vocab]
        if self._kv_index:
            cache_inputs = np.concatenate([st.cache_inputs, rows])  # copy: small, ids or frames
            cache_positions = np.concatenate([st.cache_positions, positions])
        else:
            cache_inputs, cache_positions = st.cache_inputs, st.cache_positions
        return dataclasses.replace(
            st, held=states, cache_inputs=cache_inputs, cache_positions=cache_positions,
            next_model_position=st.next_model_position + s, fed=st.fed + s,
            # copy: one row, so the state does not hold the chunk's whole [n, vocab] ORT output
            last_logits=outputs[self._logits_name][-1].copy() if self._logits_name else None, kv=kv), outputs

    def _run_states(self, st: StreamState, feeds: dict, s: int) -> tuple[list, tuple, KVCache | None]:
        """One ORT run from `st`'s states; returns (returned outputs, new states, kv handle).

        The one place the KV layouts differ. concat: every state goes in and comes back as a
        new array, the kv ones written into one slab of the model's pool (not ORT's arena: they
        outlive the run). shared_buffer: kv states stay bound to the stream's buffer, where ORT
        appends the chunk's `s` entries in place (`KVCache.append`); only recurrent states
        are fed and fetched.
        """
        n_ret = self._n_returned
        if not self._shared:
            for spec, value in zip(self.manifest.states, st.states):
                # A state from a shared buffer (a restored snapshot) holds strided views; ORT wants contiguous input.
                feeds[spec.input] = value if st.kv is None else np.ascontiguousarray(value)
            shapes = [_with_seq(spec, st.cache_len + s) for spec in self._kv_specs]  # [1, kv_heads, past + s, head_dim]
            into = self.pool.arrays(shapes, [NUMPY_DTYPES[spec.dtype] for spec in self._kv_specs])
            results = self.runner.run_into(feeds, {spec.output: a for spec, a in zip(self._kv_specs, into)})
            return results[:n_ret], tuple(results[n_ret:]), None
        if self._has_recurrent:  # from `held`: reading `states` would make the kv views
            for spec, value in zip(self.manifest.states, st.held):
                if spec.kind != "kv":
                    feeds[spec.input] = value
        capacity = self._kv_capacity(st.cache_len + s)
        kv = st.kv
        if kv is None:  # the first run, or a state from the concat path: its entries into a buffer
            kv = KVBuffer.copy(self._kv_specs, [st.states[i] for i in self._kv_index], st.cache_len, capacity,
                               pool=self.pool)
        results, kv = kv.append(self.runner, feeds, s, capacity)
        return results[:n_ret], self._held(results[n_ret:]), kv

    def _held(self, recurrent) -> tuple:
        """A shared-buffer state's `held`: None in the kv slots (their views come from `kv`), the
        recurrent states (in manifest order, from `recurrent`) in theirs."""
        if not self._has_recurrent:
            return self._kv_slots
        others = iter(recurrent)
        return tuple(None if spec.kind == "kv" else next(others) for spec in self.manifest.states)

    def _input_feeds(self, st: StreamState, rows: np.ndarray) -> tuple[dict, np.ndarray]:
        """The chunk and what the runtime fills beside it (mask, positions, constants); states aside."""
        s, first = len(rows), st.next_model_position
        feeds = {self.manifest.input.name: rows[None]}  # [1, s] or [1, s, feature_dim]; view, no copy
        if self._mask is not None:
            feeds[self._mask.name] = self._mask_row(st.cache_len + s)  # [1, past + s]
        positions = np.arange(first, first + s, dtype=np.int64)
        if self._pos is not None:
            feeds[self._pos.name] = positions[None]  # [1, s]
        feeds.update(self._consts)
        return feeds, positions

    def _kv_capacity(self, needed: int) -> int:
        """Entries a new shared buffer holds: a window's whole span at once (it is bounded
        anyway), else room to grow by doubling up to the model's position range."""
        if self.kv_window is not None:
            return max(needed, self.kv_capacity or self.sink_tokens + self.kv_window)
        return max(needed, self.kv_capacity or 0, capacity_for(needed, self._hard_limit))

    def _mask_row(self, length: int) -> np.ndarray:
        if length > self._ones.shape[1]:
            self._ones = np.ones((1, 2 * length), dtype=self._ones.dtype)
        return self._ones[:, :length]  # [1, past + s]: a contiguous view

    # ----- sliding window with attention sinks ------------------------------------------------

    def _make_room(self, st: StreamState, s: int) -> StreamState:
        """Evict (or re-encode) so that cache_len + s <= sink_tokens + kv_window."""
        k, w = self.sink_tokens, self.kv_window
        over_limit = self._hard_limit is not None and st.next_model_position + s > self._hard_limit
        if st.cache_len + s <= k + w and not over_limit:
            return st
        if over_limit or self.position_encoding == "implicit":
            return self._reencode(st, s)
        # Evicting copies the whole cache (ORT needs contiguous inputs), so drop at least
        # evict_block entries at once: one full copy every few chunks, not every chunk.
        drop = max(st.cache_len + s - (k + w), self.evict_block)
        lo, hi = k, min(k + drop, st.cache_len)  # entries [lo, hi) leave the cache
        if hi <= lo:
            return st
        if self._shared:  # one copy into a fresh buffer (the old one may back snapshots)
            keep = st.cache_len - (hi - lo)
            kv = KVBuffer.copy(self._kv_specs, [st.states[i] for i in self._kv_index], st.cache_len,
                               self._kv_capacity(keep + s), drop=(lo, hi), pool=self.pool)
            states = self._held(v for spec, v in zip(self.manifest.states, st.held) if spec.kind != "kv")
        else:
            states, kv = self._drop_kv(st.states, lo, hi), None  # the kept entries are new contiguous arrays
        return dataclasses.replace(
            st,
            held=states,
            cache_inputs=np.concatenate([st.cache_inputs[:lo], st.cache_inputs[hi:]]),
            cache_positions=np.concatenate([st.cache_positions[:lo], st.cache_positions[hi:]]),
            evicted=st.evicted + (hi - lo),
            kv=kv,
        )

    def _reencode(self, st: StreamState, s: int) -> StreamState:
        """Rebuild the cache from the retained inputs at positions 0.. (learned, rotary_table and
        implicit positions).

        Keeps the sinks and the newest min(kv_window // 2, kv_window - s) entries, so the
        next re-encode is at least kv_window // 2 inputs away. Costs one prefill of the
        retained inputs; entries now see only the retained window.
        """
        k, w = self.sink_tokens, self.kv_window
        recent = max(0, min(w // 2, w - s, st.cache_len - k))
        retained = np.concatenate([st.cache_inputs[:k], st.cache_inputs[st.cache_len - recent:]])
        dropped = st.cache_len - len(retained)
        log.debug("%s: re-encoding %d retained inputs, dropping %d", self.manifest.name, len(retained), dropped)
        fresh = self._initial_state()
        if len(retained):
            for i in range(0, len(retained), self.max_chunk):
                fresh, _ = self._run_piece(fresh, retained[i:i + self.max_chunk])
        return dataclasses.replace(fresh, fed=st.fed, evicted=st.evicted + dropped,
                                   pending=st.pending, last_logits=st.last_logits)

    def _drop_kv(self, states: tuple, lo: int, hi: int) -> tuple:
        """Concat states without entries [lo, hi): the kept ones copied into one pool slab."""
        return self._pooled_kv(states, (0, lo), (hi, self._state_len(states)))

    def _slice_kv(self, states: tuple, lo: int, hi: int) -> tuple:
        if self._shared:  # shared buffers keep views (the entries stay claimed)
            out = list(states)
            for i in self._kv_index:
                out[i] = states[i][_seq_index(self.manifest.states[i], states[i].ndim, lo, hi)]
            return tuple(out)
        return self._pooled_kv(states, (lo, hi))  # concat inputs must be contiguous

    def _state_len(self, states: tuple) -> int:
        i = self._kv_index[0]
        return states[i].shape[self.manifest.states[i].seq_axis]

    def _pooled_kv(self, states: tuple, *ranges) -> tuple:
        """The kv states' entries in `ranges` ((lo, hi) along the seq axis), joined, in one slab of
        the model's pool; other states as they are."""
        n = sum(hi - lo for lo, hi in ranges)
        specs = self._kv_specs
        into = self.pool.arrays([_with_seq(spec, n) for spec in specs], [NUMPY_DTYPES[spec.dtype] for spec in specs])
        out = list(states)
        for i, spec, dst in zip(self._kv_index, specs, into):
            at = 0
            for lo, hi in ranges:  # copy: the kept entries, once
                dst[_seq_index(spec, dst.ndim, at, at + hi - lo)] = states[i][_seq_index(spec, dst.ndim, lo, hi)]
                at += hi - lo
            out[i] = dst
        return tuple(out)

    # ----- boundary validation -------------------------------------------------------------

    def _validate(self, chunk, trusted: bool = False) -> np.ndarray:
        """Check a chunk's model meaning (dtype, shape, vocabulary, limits) and, unless `trusted`,
        its finiteness; returns [n] int64 ids or [n, feature_dim] frames."""
        name = self.manifest.name
        spec = self.manifest.input
        if isinstance(chunk, (list, tuple)):
            chunk = np.asarray(chunk)
        if not isinstance(chunk, np.ndarray):
            raise InputError(f"{name}: chunk must be a numpy array or list, got {type(chunk).__name__}")
        if self.tokens:
            if chunk.dtype not in _TOKEN_DTYPES:  # the protocol's two; uint8 ids would wrap at 256
                raise InputError(f"{name}: token chunk must be integer ids (int64 or int32), got dtype {chunk.dtype}")
            if chunk.ndim == 2 and chunk.shape[0] == 1:
                chunk = chunk[0]
            if chunk.ndim != 1:
                raise InputError(f"{name}: token chunk must have shape [n] or [1, n], got {list(chunk.shape)}")
        else:
            if chunk.dtype != NUMPY_DTYPES[spec.dtype]:
                raise InputError(f"{name}: frame chunk must be {spec.dtype}, got dtype {chunk.dtype}")
            if chunk.ndim == 3 and chunk.shape[0] == 1:
                chunk = chunk[0]
            if chunk.ndim != 2 or chunk.shape[1] != spec.feature_dim:
                raise InputError(f"{name}: frame chunk must have shape [n, {spec.feature_dim}], got {list(chunk.shape)}")
        n = chunk.shape[0]
        if n == 0:
            raise InputError(f"{name}: empty chunk; feed at least one input")
        if n > self.max_feed:
            raise InputError(f"{name}: chunk of {n} inputs exceeds max_feed {self.max_feed}")
        if self.tokens:
            lo, hi = int(chunk.min()), int(chunk.max())
            if lo < 0 or hi >= spec.vocab_size:
                bad = lo if lo < 0 else hi
                raise InputError(f"{name}: token id {bad} is outside the vocabulary [0, {spec.vocab_size})")
            return np.ascontiguousarray(chunk, dtype=np.int64)
        if not trusted and not np.isfinite(chunk).all():
            raise InputError(f"{name}: chunk contains NaN or Inf")
        return np.ascontiguousarray(chunk)

    def _text_context(self, n: int = 4) -> np.ndarray:
        st = self._state
        return np.concatenate([st.cache_inputs[-n:], st.pending])[-n:] if self.tokens else _NO_TOKENS


def _with_seq(spec, n: int) -> list:
    """A kv state's shape for one stream holding `n` entries."""
    shape = list(spec.shape)
    shape[spec.batch_axis] = 1
    shape[spec.seq_axis] = n
    return shape


def _seq_index(spec, ndim: int, lo: int, hi: int) -> tuple:
    index = [slice(None)] * ndim
    index[spec.seq_axis] = slice(lo, hi)
    return tuple(index)
