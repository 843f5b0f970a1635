"""Fixed-block streams for recurrent-state models (silero VAD) behind the same load/open_stream/feed API.

Publishers send audio in whatever chunk sizes they like; the model takes
exactly `block` samples per run with the previous `context` samples in
front (silero's OnnxWrapper). `BlockStream` re-blocks, carries the context
and the recurrent state, runs one ORT run per complete block and returns the
per-block outputs: `probs` for a VAD (speech events are policy, built on top in
`edge_stream.voice.vad.VadStream`), `logits` for the streaming recognizer
([batch, frames_per_block, vocab] per block, for a decoding policy on top). The
state lives in two fields (`_tail`, `_states`) that are replaced, never mutated
in place, which makes `snapshot()` a handful of references.

`BlockStream.feed_batched` feeds many streams of one model with one ORT run per
block step, stacking their states along the manifest's `batch_axis`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge_stream import records
from edge_stream.errors import ConfigError, InputError, ManifestError, StreamStateError
from edge_stream.runtime.runner import NUMPY_DTYPES, ORT_TYPES

log = logging.getLogger(__name__)

DEFAULT_MAX_CHUNK_S = 10.0  # longest chunk one feed accepts, in seconds of audio
FALLBACK_SAMPLE_RATE = 16000  # only to size the chunk limit of a manifest without sample_rate
PCM16_SCALE = np.float32(1.0 / 32768)  # int16 PCM -> [-1, 1)


@dataclass
class BlockOutput:
    """What one `feed` produced: one entry per complete block run in it (possibly none)."""

    probs: np.ndarray  # [n_blocks] float32, the `probability` output; [0] if the model has none
    outputs: dict[str, np.ndarray]  # name -> [n_blocks, ...]: each returned output stacked over blocks
    start_sample: int = 0  # absolute index of the first sample of the first block run here
    logits_name: str | None = None  # the manifest's `logits` output, if the model has one
    samples: np.ndarray | None = None  # the chunk as float32 [n], as the stream took it (the caller's
    # array, a view of it, or the one int16/float16 conversion): what a speech gate forwards

    @property
    def n_blocks(self) -> int:
        return len(next(iter(self.outputs.values()))) if self.outputs else len(self.probs)

    @property
    def logits(self) -> np.ndarray:
        """[n_blocks * frames_per_block, vocab]: the blocks' frames in time order (a view)."""
        if self.logits_name is None:
            # AttributeError (not an EdgeStreamError) so hasattr(out, "logits") is False for VAD outputs.
            raise AttributeError(
                "BlockOutput has no logits: this block model (VAD) returns per-block probabilities in .probs "
                "and raw outputs in .outputs (speech events: .events of a VadStream's output)")
        frames = self.outputs[self.logits_name]  # [n_blocks, frames_per_block, vocab]
        return frames.reshape(-1, frames.shape[-1])


@dataclass(frozen=True)
class BlockSnapshot:
    """A stream's complete state; restoring it makes the stream continue exactly from here."""

    model: object  # the Model it belongs to (checked by identity on restore)
    tail: np.ndarray  # [context + pending] float32
    states: tuple  # recurrent states in manifest order, batch 1
    samples_fed: int
    blocks_run: int


class BlockStream:
    """One audio stream of a block model. Cheap: the ORT session is the model's.

    Options: `max_chunk_samples` bounds one feed (default 10 s of audio); `name` labels
    error messages. Speech events are not here: `edge_stream.voice.vad.VadStream` wraps this.
    """

    OPTIONS = ("max_chunk_samples", "name")

    def __init__(self, model, *, max_chunk_samples: int | None = None, name: str | None = None, **unknown):
        m = model.manifest
        records.check_args(BlockStream.__init__, locals(), f"{m.name}: stream option", ConfigError)
        self.name = name or f"{m.name} stream"
        if unknown:
            raise ConfigError(
                f"{self.name}: unknown option(s) {', '.join(sorted(unknown))}; block streams take "
                f"{', '.join(self.OPTIONS)}")
        if m.blocking is None:
            raise ManifestError(f"{m.name}: manifest has no 'blocking' section; open a StreamSession instead")
        if any(s.kind != "recurrent" for s in m.states):
            raise ManifestError(f"{m.name}: block streams carry only recurrent states, manifest has "
                                f"{[s.kind for s in m.states]}")
        self.model = model
        self.runner = model.runner
        self.block = m.blocking.block
        self.context = m.blocking.context
        self.sample_rate = m.blocking.sample_rate
        self._dtype = np.dtype(NUMPY_DTYPES[m.input.dtype])
        if self._dtype != np.float32:
            raise ManifestError(f"{m.name}: block models take float32 samples, manifest input is {m.input.dtype}")
        self._input_name = m.input.name
        self._state_inputs = tuple(s.input for s in m.states)
        self._n_returned = len(self.runner.returned_outputs)
        self._logits_name = m.output_for("logits")
        prob_name = m.output_for("probability")
        self._prob_index = self.runner.returned_outputs.index(prob_name) if prob_name else None
        # Zero-block feeds still return every output, shaped [0, ...] like the graph's output.
        graph_outputs = {o.name: o for o in self.runner.session.get_outputs()}
        self._empty_outputs = {
            name: np.empty((0,) + tuple(d if isinstance(d, int) else 0 for d in graph_outputs[name].shape[1:]),
                           dtype=NUMPY_DTYPES.get(ORT_TYPES.get(graph_outputs[name].type), "float32"))
            for name in self.runner.returned_outputs}
        self._aux_feeds = {}
        for aux in m.aux:
            if aux.fill != "constant":
                raise ManifestError(f"{m.name}: aux input {aux.name!r} has fill {aux.fill!r}; "
                                    "block models take only constant aux inputs (e.g. sr)")
            self._aux_feeds[aux.name] = np.array(aux.value, dtype=NUMPY_DTYPES[aux.dtype])  # [] scalar

        if max_chunk_samples is None:
            max_chunk_samples = int(DEFAULT_MAX_CHUNK_S * (self.sample_rate or FALLBACK_SAMPLE_RATE))
        if int(max_chunk_samples) < 1:
            raise ConfigError(f"{self.name}: max_chunk_samples must be >= 1, got {max_chunk_samples!r}")
        self.max_chunk_samples = int(max_chunk_samples)
        self.reset()
        log.debug("%s: opened (block %d, context %d)", self.name, self.block, self.context)

    # -- state ---------------------------------------------------------------------------------

    def reset(self) -> None:
        """Back to a fresh stream: zero context and state, no pending samples, sample 0."""
        self._tail = np.zeros(self.context, dtype=self._dtype)  # [context + pending]
        self._states = self.runner.initial_states(1)
        self._samples_fed = 0
        self._blocks_run = 0

    def snapshot(self) -> BlockSnapshot:
        """The stream's state by reference (nothing is copied: it is never mutated in place)."""
        return BlockSnapshot(self.model, self._tail, self._states, self._samples_fed, self._blocks_run)

    def restore(self, snap: BlockSnapshot) -> None:
        """Continue from `snap` (taken from this stream or another stream of the same model)."""
        if not isinstance(snap, BlockSnapshot):
            raise StreamStateError(f"{self.name}: restore() takes a BlockSnapshot, got {type(snap).__name__}")
        if snap.model is not self.model:
            raise StreamStateError(f"{self.name}: snapshot belongs to another model "
                                   f"({getattr(snap.model, 'name', snap.model)!r})")
        self._tail, self._states = snap.tail, snap.states
        self._samples_fed, self._blocks_run = snap.samples_fed, snap.blocks_run

    @property
    def samples_fed(self) -> int:
        """Samples accepted so far (including the pending ones not yet run)."""
        return self._samples_fed

    @property
    def blocks_run(self) -> int:
        return self._blocks_run

    @property
    def pending_samples(self) -> int:
        """Samples buffered for the next block (< block)."""
        return len(self._tail) - self.context

    # -- the hot path --------------------------------------------------------------------------

    def check_chunk(self, samples, *, sr: int | None = None, trusted: bool = False) -> np.ndarray:
        """Validate one chunk's meaning for this model; returns float32 samples [n]: a view of
        `samples`, or for int16 (scaled by 1/32768) and float16 the one converted copy.

        `sr` (Hz), when given, must be the manifest's sample rate. `trusted=True`: the caller
        (the node, after wire.decode_input) checked finiteness, so it is not scanned again.
        Raises InputError naming the stream, the field and the expected value.
        """
        if not isinstance(samples, np.ndarray):
            raise InputError(f"{self.name}: samples must be a numpy array of float32, int16 or float16, "
                             f"got {type(samples).__name__}")
        if sr is not None and self.sample_rate is not None and sr != self.sample_rate:
            raise InputError(f"{self.name}: sr {sr!r} is not supported; this model takes {self.sample_rate} Hz")
        if samples.dtype not in (np.float32, np.int16, np.float16):
            raise InputError(f"{self.name}: samples dtype is {samples.dtype}, expected float32, int16 (PCM) "
                             "or float16")
        if samples.ndim == 2 and samples.shape[0] == 1:
            samples = samples[0]
        elif samples.ndim != 1:
            raise InputError(f"{self.name}: samples shape is {list(samples.shape)}, expected [n] or [1, n] "
                             "(one mono channel; mix multi-channel audio down first)")
        n = samples.shape[0]
        if n == 0:
            raise InputError(f"{self.name}: empty chunk; send at least 1 sample")
        if n > self.max_chunk_samples:
            raise InputError(f"{self.name}: chunk of {n} samples exceeds max_chunk_samples={self.max_chunk_samples}; "
                             "split it or open the stream with a larger max_chunk_samples")
        if samples.dtype == np.int16:
            return samples * PCM16_SCALE  # copy: int16 -> float32 [-1, 1), never NaN
        if samples.dtype == np.float16:
            samples = samples.astype(np.float32)  # copy: the model takes float32
        if not trusted:
            finite = np.isfinite(samples)  # [n] bool: the one allocation validation makes
            if not finite.all():
                bad = int(np.argmin(finite))
                raise InputError(f"{self.name}: sample {bad} of the chunk is {samples[bad]}; samples must be finite")
        return samples

    def feed(self, samples: np.ndarray, *, sr: int | None = None, trusted: bool = False) -> BlockOutput:
        """Append samples (float32, int16 PCM or float16; [n] or [1, n], any n up to max_chunk_samples;
        `sr` checked against the model's rate when given) and run every complete block.

        Returns one probability/output row per block run now (0 if fewer than `block` samples are
        pending). On InputError nothing changes; on any error during the runs nothing is committed.
        `trusted`: see `check_chunk`.
        """
        x = self.check_chunk(samples, sr=sr, trusted=trusted)
        buf, n_blocks = self._prepare(x)
        states = self._states
        per_block = []
        run, feeds = self.runner.run, dict(self._aux_feeds)
        B, C = self.block, self.context
        for i in range(n_blocks):
            feeds[self._input_name] = buf[i * B:i * B + C + B][None]  # [1, context + block], a view
            feeds.update(zip(self._state_inputs, states))
            result = run(feeds)
            per_block.append(result[:self._n_returned])  # each [1, ...]
            states = tuple(result[self._n_returned:])  # fresh arrays from ORT: never written in place
        return self._commit(x, buf, n_blocks, states, per_block)

    @classmethod
    def feed_batched(cls, streams: Sequence[BlockStream], chunks: Sequence[np.ndarray], *,
                     srs: Sequence[int | None] | None = None, trusted: bool = False) -> list[BlockOutput]:
        """Feed `chunks[k]` to `streams[k]` for all k with one ORT run per block step across the streams.

        Same results as feeding each stream on its own (per stream, in order), with fewer, larger
        runs: states are concatenated along the manifest's `batch_axis`. All chunks are validated
        before anything runs; if one is rejected (InputError naming its stream) no stream changes.
        `srs[k]` is chunk k's `sr` and `trusted` holds for every chunk, as in `feed`.
        """
        if len(streams) != len(chunks):
            raise ConfigError(f"feed_batched: {len(streams)} streams but {len(chunks)} chunks")
        if not streams:
            return []
        if len({id(s) for s in streams}) != len(streams):
            raise ConfigError("feed_batched: a stream appears twice; feed it one concatenated chunk")
        first = streams[0]
        for s in streams[1:]:
            if s.runner is not first.runner:
                raise ConfigError(f"feed_batched: {s.name} and {first.name} are streams of different models")
        srs = srs if srs is not None else [None] * len(chunks)
        xs = [s.check_chunk(x, sr=sr, trusted=trusted) for s, x, sr in zip(streams, chunks, srs)]
        prepared = [s._prepare(x) for s, x in zip(streams, xs)]  # (buf, n_blocks) per stream
        axes = [st.batch_axis for st in first.model.manifest.states]
        B, C, n_ret = first.block, first.context, first._n_returned
        states = [s._states for s in streams]
        per_block: list[list] = [[] for _ in streams]
        feeds = dict(first._aux_feeds)
        for step in range(max(n for _, n in prepared)):
            active = [k for k, (_, n) in enumerate(prepared) if n > step]
            # Copies: the windows and the states of the active streams, stacked into one batch.
            feeds[first._input_name] = np.stack(
                [prepared[k][0][step * B:step * B + C + B] for k in active])  # [batch, context + block]
            for j, name in enumerate(first._state_inputs):
                feeds[name] = np.concatenate([states[k][j] for k in active], axis=axes[j])
            result = first.runner.run(feeds)
            for b, k in enumerate(active):
                per_block[k].append([r[b:b + 1] for r in result[:n_ret]])  # returned outputs: batch axis 0
                states[k] = tuple(_take(r, axes[j], b) for j, r in enumerate(result[n_ret:]))
        return [s._commit(x, buf, n, states[k], per_block[k])
                for k, (s, x, (buf, n)) in enumerate(zip(streams, xs, prepared))]

    def _prepare(self, x: np.ndarray) -> tuple[np.ndarray, int]:
        # The one copy per feed: carried context + pending samples + the new chunk, contiguous.
        # Block i's model input is buf[i*B : i*B + C + B], because the context silero prepends to
        # block i is the last C samples of the stream before it, which are exactly buf[i*B : i*B + C].
        buf = np.concatenate((self._tail, x))  # [context + pending + n]
        return buf, (len(buf) - self.context) // self.block

    def _commit(self, x: np.ndarray, buf: np.ndarray, n_blocks: int, states: tuple,
                per_block: list) -> BlockOutput:
        """Make one feed's results the stream's state (only after all its runs succeeded)."""
        start = self._blocks_run * self.block
        names = self.runner.returned_outputs
        if n_blocks == 1:  # the usual chunk of one block: ORT's arrays as they are (never written to)
            outputs = dict(zip(names, per_block[0]))  # [1, ...]
        elif n_blocks:
            outputs = {name: np.concatenate([r[j] for r in per_block], axis=0)  # [n_blocks, ...]
                       for j, name in enumerate(names)}
        else:
            outputs = dict(self._empty_outputs)
        if self._prob_index is not None and n_blocks:
            probs = outputs[names[self._prob_index]].reshape(n_blocks).astype(np.float32, copy=False)
        else:
            probs = np.empty((0,), dtype=np.float32)
        # Copy the short tail so the (up to max_chunk_samples long) buffer is not kept alive.
        self._tail = buf[n_blocks * self.block:].copy()  # [context + pending]
        self._states = states
        self._samples_fed += len(x)
        self._blocks_run += n_blocks
        return BlockOutput(probs=probs, outputs=outputs, start_sample=start, logits_name=self._logits_name,
                           samples=x)


def _take(array: np.ndarray, axis: int, index: int) -> np.ndarray:
    """array[..., index:index+1, ...] along `axis`: a view (states are never written in place)."""
    sl = [slice(None)] * array.ndim
    sl[axis] = slice(index, index + 1)
    return array[tuple(sl)]
