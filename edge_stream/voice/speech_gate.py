"""Speech gating (stream policy, no model): a stream's audio plus its VAD events in, speech-only pieces out.

The VAD's start event lies `speech_pad_ms` (plus one block) before the block that
crossed the threshold, i.e. in audio already received; `SpeechGate` keeps a short
pre-roll of the stream's recent samples so that padded start can still be
forwarded (silero's `speech_pad_ms`, as `get_speech_timestamps` pads segments).
From the start on, audio is passed through as it arrives, so a recognizer
downstream hears speech with no added delay; the VAD only knows speech has ended
`min_silence_ms` later, so up to that much trailing audio precedes the `end`
piece (the piece names the VAD's end sample). Nothing is forwarded in silence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_stream.errors import ConfigError


@dataclass
class GatePiece:
    """One thing to forward: `audio` (float32 [n], starting at absolute `start_sample`) or,
    for kind 'end', the VAD's padded `end_sample` and its unpadded `speech_end_sample`."""

    kind: str  # "audio" or "end"
    segment: int  # 0, 1, 2, ... per stream
    start_sample: int = 0
    audio: np.ndarray | None = None
    end_sample: int = 0
    speech_end_sample: int = 0


class SpeechGate:
    """Per-stream gate state: the pre-roll ring, whether a segment is open, and how far it was forwarded."""

    def __init__(self, pad_samples: int, block: int):
        if pad_samples < 0 or block < 1:
            raise ConfigError(f"speech gate: need pad_samples >= 0 and block >= 1, got {pad_samples}, {block}")
        self.pad_samples = int(pad_samples)
        # A start event lies at most pad + block before the end of a block completed in this chunk,
        # and that block began at most one block before the chunk: keep pad + 2 blocks.
        self.keep = self.pad_samples + 2 * int(block)
        self.reset()

    def reset(self) -> None:
        """Forget the pre-roll and any open segment; sample counting restarts at 0 (as the VAD's does)."""
        self._history = np.zeros(0, dtype=np.float32)  # [<= keep] the samples just before the next chunk
        self._history_start = 0  # absolute index of _history[0]
        self.in_speech = False
        self.segment = -1  # index of the current (or last) segment
        self._cursor = 0  # next absolute sample to forward while in speech
        self._segment_start = 0  # first sample of the current segment

    @property
    def samples_seen(self) -> int:
        return self._history_start + len(self._history)

    def update(self, samples: np.ndarray, events: list[dict]) -> list[GatePiece]:
        """Take the next chunk (float32 [n]) and the VAD events its blocks produced (absolute
        samples, in order). Returns the pieces to forward, in order: audio of open segments
        and an 'end' piece per segment that ended."""
        start = self._history_start
        buf = np.concatenate((self._history, samples))  # [history + n]: one copy per chunk
        buf_end = start + len(buf)
        pieces: list[GatePiece] = []
        for ev in events:
            if "start" in ev and not self.in_speech:
                self.in_speech = True
                self.segment += 1
                self._cursor = max(int(ev["start"]), start)  # the pad never reaches before the pre-roll
                self._segment_start = self._cursor
            elif "end" in ev and self.in_speech:
                end = int(ev["end"])
                if min(end, buf_end) > self._cursor:
                    pieces.append(self._audio(buf, start, min(end, buf_end)))
                speech_end = max(self._segment_start, end - self.pad_samples)
                pieces.append(GatePiece("end", self.segment, end_sample=end, speech_end_sample=speech_end))
                self.in_speech = False
        if self.in_speech and buf_end > self._cursor:
            pieces.append(self._audio(buf, start, buf_end))
        self._history = buf[-self.keep:].copy() if self.keep else buf[:0].copy()  # short: frees the chunk
        self._history_start = buf_end - len(self._history)
        return pieces

    def finish(self) -> GatePiece | None:
        """The input ended: close an open segment at the last sample seen (None if none is open)."""
        if not self.in_speech:
            return None
        self.in_speech = False
        end = self.samples_seen
        return GatePiece("end", self.segment, end_sample=end, speech_end_sample=end)

    def _audio(self, buf: np.ndarray, buf_start: int, stop: int) -> GatePiece:
        piece = GatePiece("audio", self.segment, start_sample=self._cursor,
                          audio=buf[self._cursor - buf_start:stop - buf_start])  # a view of this chunk's buffer
        self._cursor = stop
        return piece
