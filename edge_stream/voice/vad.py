"""Voice-activity events from per-block speech probabilities (stream policy, no model).

`VadEvents` has exactly the semantics of silero-vad's `VADIterator`
(utils_vad.py): start when a block's probability reaches `threshold`; end
after `min_silence_ms` of blocks below `threshold - 0.15` (hysteresis);
both padded by `speech_pad_ms`. Events are plain dicts in samples,
`{'start': n}` or `{'end': n}`, as silero returns them, so code written
against silero reads ours unchanged. It never sees audio or ONNX, so it can
be tested and swapped without a model.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_stream.errors import ConfigError

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
        for p in probs:
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
