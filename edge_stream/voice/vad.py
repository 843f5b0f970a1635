"""Voice-activity events from per-block speech probabilities (stream policy on a block model).

`VadEvents` has exactly the semantics of silero-vad's `VADIterator`
(utils_vad.py): start when a block's probability reaches `threshold`; end
after `min_silence_ms` of blocks below `threshold - 0.15` (hysteresis);
both padded by `speech_pad_ms`. Events are plain dicts in samples,
`{'start': n}` or `{'end': n}`, as silero returns them, so code written
against silero reads ours unchanged. It never sees audio or ONNX, so it can
be tested and swapped without a model.

`VadStream` is the policy over the execution-level `BlockStream` (which knows only
probabilities): feed -> `VadOutput` with `.events`, reset, snapshot/restore and
batched feeding. `VadModel` is a loaded block model whose `open_stream()` gives
VadStreams; `edge_stream.load` returns one when the manifest has an `events` section.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from edge_stream import records
from edge_stream.errors import ConfigError, StreamStateError
from edge_stream.runtime.blocks import BlockOutput, BlockSnapshot, BlockStream
from edge_stream.runtime.model import Model

HYSTERESIS = 0.15  # silero: speech ends below threshold - 0.15, not below threshold


@dataclass(frozen=True)
class VadState:
    """Everything `VadEvents` carries between blocks; immutable so snapshots are free."""

    triggered: bool = False
    temp_end: int = 0  # sample where the current silence began (0: none pending)
    current_sample: int = 0  # samples seen, i.e. end of the last block


class VadEvents:
    """Turns per-block probabilities into speech start/end events (silero VADIterator)."""

    def __init__(self, sample_rate: int, block: int, threshold: float = 0.5,
                 min_silence_ms: float = 100.0, speech_pad_ms: float = 30.0):
        if not sample_rate or sample_rate <= 0:
            raise ConfigError(f"vad: sample_rate must be a positive number of Hz, got {sample_rate!r}")
        if block < 1:
            raise ConfigError(f"vad: block must be >= 1 sample, got {block!r}")
        if not 0.0 < threshold <= 1.0:
            raise ConfigError(f"vad: threshold must be in (0, 1], got {threshold!r}")
        if min_silence_ms < 0 or speech_pad_ms < 0:
            raise ConfigError(
                f"vad: min_silence_ms and speech_pad_ms must be >= 0, got {min_silence_ms!r} and {speech_pad_ms!r}")
        self.block = int(block)
        self.threshold = float(threshold)
        # Same float arithmetic as VADIterator, so rounding of event positions matches it.
        self.min_silence_samples = sample_rate * min_silence_ms / 1000
        self.speech_pad_samples = sample_rate * speech_pad_ms / 1000
        self.state = VadState()

    def reset(self) -> None:
        """Forget speech in progress and restart sample counting at 0."""
        self.state = VadState()

    def update(self, probs) -> list[dict]:
        """Advance by one block per probability; returns the events they produced, in order.

        Each block is `block` samples; event positions are absolute sample indices.
        """
        triggered, temp_end, current = self.state.triggered, self.state.temp_end, self.state.current_sample
        window = self.block
        events: list[dict] = []
        for p in probs.tolist() if isinstance(probs, np.ndarray) else probs:  # Python floats: a faster loop
            p = float(p)
            current += window
            if p >= self.threshold and temp_end:
                temp_end = 0
            if p >= self.threshold and not triggered:
                triggered = True
                events.append({"start": int(max(0, current - self.speech_pad_samples - window))})
                continue
            if p < self.threshold - HYSTERESIS and triggered:
                if not temp_end:
                    temp_end = current
                if current - temp_end >= self.min_silence_samples:
                    events.append({"end": int(temp_end + self.speech_pad_samples - window)})
                    temp_end = 0
                    triggered = False
        self.state = VadState(triggered, temp_end, current)
        return events

    @property
    def triggered(self) -> bool:
        """True while inside speech (after a start event, before its end event)."""
        return self.state.triggered


DEFAULT_EVENTS = {"threshold": 0.5, "min_silence_ms": 100.0, "speech_pad_ms": 30.0}  # silero's VADIterator


@dataclass
class VadOutput(BlockOutput):
    """A `BlockOutput` plus the speech events its blocks produced."""

    events: list[dict] = field(default_factory=list)  # {'start': sample} / {'end': sample}, in order


@dataclass(frozen=True)
class VadSnapshot:
    """A VadStream's complete state: its block stream's and its event policy's (both immutable)."""

    blocks: BlockSnapshot
    events: VadState | None


class VadStream:
    """One VAD stream: a `BlockStream` (probabilities) and its `VadEvents` (speech start/end).

    Options: `threshold`, `min_silence_ms`, `speech_pad_ms` override the manifest's `events`;
    `events=False` turns events off (probabilities only); the rest go to the BlockStream
    (`max_chunk_samples`, `name`).
    """

    def __init__(self, model, *, threshold: float | None = None, min_silence_ms: float | None = None,
                 speech_pad_ms: float | None = None, events: bool = True, **block_options):
        records.check_args(VadStream.__init__, locals(), f"{model.manifest.name}: stream option", ConfigError)
        unknown = set(block_options) - set(BlockStream.OPTIONS)
        if unknown:
            raise ConfigError(
                f"{block_options.get('name') or model.manifest.name + ' stream'}: unknown option(s) "
                f"{', '.join(sorted(unknown))}; VAD streams take threshold, min_silence_ms, speech_pad_ms, "
                f"events, {', '.join(BlockStream.OPTIONS)}")
        self.blocks = BlockStream(model, **block_options)
        overrides = {"threshold": threshold, "min_silence_ms": min_silence_ms, "speech_pad_ms": speech_pad_ms}
        self.vad = self._make_vad(events, overrides)

    def _make_vad(self, events: bool, overrides: dict) -> VadEvents | None:
        spec, blocks = self.blocks.model.manifest.events, self.blocks
        if not events:
            return None
        if spec is None and all(v is None for v in overrides.values()):
            return None  # the model declares no events and the caller asked for none
        if blocks.model.manifest.output_for("probability") is None:
            raise ConfigError(f"{blocks.name}: VAD events need an output with role 'probability'; "
                              "the manifest has none (open with events=False)")
        if blocks.sample_rate is None:
            raise ConfigError(f"{blocks.name}: VAD events need manifest.blocking.sample_rate to convert ms to samples")
        params = dict(DEFAULT_EVENTS)
        if spec is not None:
            params = {"threshold": spec.threshold, "min_silence_ms": spec.min_silence_ms,
                      "speech_pad_ms": spec.speech_pad_ms}
        params.update({k: v for k, v in overrides.items() if v is not None})
        return VadEvents(blocks.sample_rate, blocks.block, **params)

    # -- the stream's verbs -------------------------------------------------------------------

    def feed(self, samples: np.ndarray, *, sr: int | None = None, trusted: bool = False) -> VadOutput:
        """`BlockStream.feed`, plus the speech events of the blocks run now (absolute samples, in order).
        Raises InputError for a bad chunk; the stream (events included) is then unchanged."""
        return self._events(self.blocks.feed(samples, sr=sr, trusted=trusted))

    @classmethod
    def feed_batched(cls, streams: Sequence[VadStream], chunks: Sequence[np.ndarray], *,
                     srs: Sequence[int | None] | None = None, trusted: bool = False) -> list[VadOutput]:
        """`BlockStream.feed_batched` over the streams' block streams (one ORT run per block step),
        then each stream's events: equal to feeding each stream alone."""
        outs = BlockStream.feed_batched([s.blocks for s in streams], chunks, srs=srs, trusted=trusted)
        return [s._events(o) for s, o in zip(streams, outs)]

    def _events(self, out: BlockOutput) -> VadOutput:
        events = self.vad.update(out.probs) if self.vad is not None else []
        return VadOutput(probs=out.probs, outputs=out.outputs, start_sample=out.start_sample,
                         logits_name=out.logits_name, samples=out.samples, events=events)

    def reset(self) -> None:
        """Back to a fresh stream: zero state, no pending samples, no speech, sample 0."""
        self.blocks.reset()
        if self.vad is not None:
            self.vad.reset()

    def snapshot(self) -> VadSnapshot:
        """The stream's state by reference (O(1): nothing in it is mutated in place)."""
        return VadSnapshot(self.blocks.snapshot(), self.vad.state if self.vad is not None else None)

    def restore(self, snap: VadSnapshot) -> None:
        """Continue from `snap` (taken from this stream or another VAD stream of the same model)."""
        if not isinstance(snap, VadSnapshot):
            raise StreamStateError(f"{self.name}: restore() takes a VadSnapshot, got {type(snap).__name__}")
        if (snap.events is None) != (self.vad is None):
            raise StreamStateError(f"{self.name}: snapshot was taken with events "
                                   f"{'off' if snap.events is None else 'on'}, this stream has them "
                                   f"{'off' if self.vad is None else 'on'}")
        self.blocks.restore(snap.blocks)
        if self.vad is not None:
            self.vad.state = snap.events

    # -- what callers read ---------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.blocks.name

    @property
    def model(self):
        return self.blocks.model

    @property
    def block(self) -> int:
        return self.blocks.block

    @property
    def sample_rate(self) -> int | None:
        return self.blocks.sample_rate

    @property
    def max_chunk_samples(self) -> int:
        return self.blocks.max_chunk_samples

    @property
    def samples_fed(self) -> int:
        """Samples accepted so far (including the pending ones not yet run)."""
        return self.blocks.samples_fed

    @property
    def blocks_run(self) -> int:
        return self.blocks.blocks_run

    @property
    def pending_samples(self) -> int:
        """Samples buffered for the next block (< block)."""
        return self.blocks.pending_samples

    @property
    def in_speech(self) -> bool:
        return self.vad is not None and self.vad.triggered

    @property
    def speech_pad_samples(self) -> float:
        """The events' padding in samples (0 when events are off)."""
        return self.vad.speech_pad_samples if self.vad is not None else 0.0


class VadModel(Model):
    """A loaded block model whose streams are `VadStream`s (probabilities and speech events)."""

    def open_stream(self, **options) -> VadStream:
        """A new VAD stream; options as `VadStream` takes them."""
        return VadStream(self, **options)
