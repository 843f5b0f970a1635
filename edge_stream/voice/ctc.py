"""Streaming greedy CTC decoding over word labels (stream policy, no model): per-frame log-probs in, words out.

The recognizer has one CTC label per vocabulary word (its tokenizer maps id -> word). Each
frame's best label is taken; a label equal to the previous frame's is a repeat and is dropped,
a blank separates repeats ("stop stop" needs "stop _ stop"), which is why the last label is
carried across blocks. A word is final on the frame its label first wins: greedy output is
never revised, so a partial hypothesis is a prefix of every later one, and nothing waits for a
following space or the end of the utterance. Frame indices are absolute from the stream's
start; `frame_samples` converts them to audio time.

Each word carries a `confidence`: its label's posterior (softmax over that frame's labels) on the
frame the label won, i.e. on the frame the word became final. Not the peak of the label's spike
over later frames: waiting for the spike to end would delay every word (and "stop") by a frame or
more. With word labels this is the recognizer's own probability that the word was said.

Early partials (`partial_threshold`, off by default): a word is also published *before* its label
wins, on the frame a non-blank label leads the other words with a rising posterior of at least the
threshold while blank still wins (the spike is starting). It is `partial`: a later frame may show a
different label for the same word (a `revises` event), and when a label finally wins the word is
final: a `confirms` event when it is the partial's word (nothing new to publish), else a final
`revises` event. The final words are exactly those of the decoder without partials; a partial that
never wins is withdrawn by the caller at the end (`pending_partial`). Its confidence is the label's
share of the frame's non-blank mass: "which word, given that a word starts" (blank dominates a
rising edge, so the plain posterior would say little about the word).

Spotted words (`spot_words` with `spot_threshold`, off by default; the recognizer route's
`stop_spotting`): a word of `spot_words` (the stop words) is also final on the frame where the
spot words' summed posterior first reaches the threshold, even while blank or another label
still wins: greedy decoding misses a stop whose spike never wins, and a missed stop costs more
than a needless one. Its confidence is that sum, its reason 'spotted'. Until the sum falls below
the threshold again and no spot word wins, the spike is the one already said: a spot word that
wins there is not said twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from edge_stream.errors import ConfigError, InputError, ManifestError


@dataclass(frozen=True)
class WordEvent:
    """A decoded word. `end_frame`: the frame its label won (its audio is complete there);
    `final_frame`: the frame it became final (the same frame: word labels are never revised);
    `reason`: 'label', or 'spotted' (a spot word said before its label won); `confidence`: the
    label's posterior in [0, 1] on `end_frame` (spotted: the spot words' summed posterior; module docstring).
    Early partials only: `partial` (the label leads but has not won; end_frame is the frame it led),
    `revises` (replaces the word of the pending partial), `confirms` (the pending partial's word won:
    final now, nothing new to say)."""

    word: str
    end_frame: int
    final_frame: int
    reason: str = "label"
    confidence: float = 1.0
    partial: bool = False
    revises: bool = False
    confirms: bool = False


@dataclass
class CtcResult:
    """What one `update` decoded: `text` is the delta (words with their separating spaces) since
    the last call; `words` the words in it; `partial` is always '' (a word label is whole)."""

    text: str = ""
    words: list[WordEvent] = field(default_factory=list)
    partial: str = ""


@dataclass(frozen=True)
class CtcState:
    """Everything the decoder carries between blocks; immutable so snapshots are free."""

    last_symbol: int  # previous frame's argmax (blank at the start)
    frames: int = 0  # frames decoded so far
    text: str = ""  # everything decoded so far (final words)
    partial_symbol: int = -1  # early partials: the label of the published, not yet final word (-1: none)
    prev_probs: np.ndarray | None = None  # early partials: the previous frame's posteriors [vocab]
    spotting: bool = False  # spotted words: inside a spot word's spike that was already said


class CtcDecoder:
    """Greedy CTC over word labels (`symbols[i]` is the word of id i; `blank` decodes to nothing).

    With word labels there is no separator to wait for and the label set is the lexicon, so
    the symbols, the blank and the frame length are the whole configuration."""

    def __init__(self, symbols: Iterable[str], blank: int = 0, frame_samples: int | None = None,
                 partial_threshold: float | None = None, spot_words: Iterable[str] = (),
                 spot_threshold: float | None = None):
        self.symbols = list(symbols)
        if partial_threshold is not None and not 0.0 < partial_threshold <= 1.0:
            raise ConfigError(f"ctc: partial_threshold must be in (0, 1], got {partial_threshold!r}")
        self.partial_threshold = partial_threshold
        if spot_threshold is not None and not 0.0 < spot_threshold <= 1.0:
            raise ConfigError(f"ctc: spot_threshold must be in (0, 1], got {spot_threshold!r}")
        if spot_threshold is not None and partial_threshold is not None:
            raise ConfigError("ctc: spotted words and early partials exclude each other (one early path at a time)")
        spot_words = set(spot_words)
        self._spot_set = {i for i, s in enumerate(self.symbols) if s in spot_words}  # label ids
        self.spot_ids = np.array(sorted(self._spot_set), dtype=np.int64)
        if spot_threshold is not None and not self._spot_set:
            raise ConfigError(f"ctc: none of the spot words {sorted(spot_words)} is a label of this recognizer")
        self.spot_threshold = spot_threshold
        if not 0 <= blank < len(self.symbols):
            raise ConfigError(f"ctc: blank id {blank} is outside the {len(self.symbols)} symbols")
        bad = [s for i, s in enumerate(self.symbols) if i != blank and (not s or any(c.isspace() for c in s))]
        if bad:
            raise ConfigError(f"ctc: symbols must be words (non-empty, no whitespace); got {bad[:5]}")
        self.blank = blank
        self.frame_samples = frame_samples
        self.state = CtcState(last_symbol=blank)

    @classmethod
    def from_model(cls, model) -> "CtcDecoder":
        """A decoder for a recognizer model directory: words from its tokenizer (id -> word),
        blank from the tokenizer's `<blank>`, frame length from blocking and the logits output shape."""
        m = model.manifest
        if model.tokenizer is None:
            raise ManifestError(f"{m.name}: a CTC recognizer needs a tokenizer (id -> word) in its directory")
        vocab = model.tokenizer.get_vocab()  # token -> id
        if "<blank>" not in vocab:
            raise ManifestError(f"{m.name}: tokenizer has no '<blank>' token for CTC")
        symbols = [""] * len(vocab)
        for token, i in vocab.items():
            symbols[i] = token
        logits = m.output_for("logits")
        if logits is None or m.blocking is None:
            raise ManifestError(f"{m.name}: a CTC recognizer needs a 'logits' output and a 'blocking' section")
        shape = {o.name: o.shape for o in model.runner.session.get_outputs()}[logits]
        per_block = shape[1] if len(shape) == 3 and isinstance(shape[1], int) else None
        if not per_block or m.blocking.block % per_block:
            raise ManifestError(f"{m.name}: output {logits!r} has shape {shape}; expected "
                                "[batch, frames_per_block, vocab] with a static frames_per_block dividing block")
        if shape[2] != len(symbols):
            raise ManifestError(f"{m.name}: output {logits!r} has {shape[2]} labels, tokenizer has {len(symbols)}")
        return cls(symbols, blank=vocab["<blank>"], frame_samples=m.blocking.block // per_block)

    def reset(self) -> None:
        """Forget everything: a new utterance starts at frame 0."""
        self.state = CtcState(last_symbol=self.blank)

    @property
    def pending_partial(self) -> str | None:
        """The published partial word no label has confirmed yet (None: none)."""
        sym = self.state.partial_symbol
        return None if sym < 0 else self.symbols[sym]

    @property
    def text(self) -> str:
        """Everything decoded so far (words separated by single spaces)."""
        return self.state.text

    def update(self, logprobs: np.ndarray) -> CtcResult:
        """Decode the next frames ([n_frames, vocab] log-probs or logits: the argmax picks the label,
        a softmax of the row gives its confidence, so either works).

        Returns the words decoded in them (each final at once; with `partial_threshold`, also the
        partial, revising and confirming events of the module docstring); the state moves on by n_frames."""
        if logprobs.ndim != 2 or logprobs.shape[1] != len(self.symbols):
            raise InputError(f"ctc: frames have shape {list(logprobs.shape)}, expected [n, {len(self.symbols)}]")
        best = np.argmax(logprobs, axis=1)  # [n_frames]
        st = self.state
        last, frame, text, partial, prev = st.last_symbol, st.frames, st.text, st.partial_symbol, st.prev_probs
        early = self.partial_threshold is not None
        spot = self._spot_mass(logprobs) if self.spot_threshold is not None else None  # [n_frames]
        spotting = st.spotting
        words: list[WordEvent] = []
        delta = ""
        for t, sym in enumerate(best.tolist()):
            row = logprobs[t]  # [vocab]
            if early:
                probs = np.exp(row - row.max())
                probs /= probs.sum()  # [vocab] this frame's posteriors
            if spot is not None:
                wins = sym in self._spot_set
                if spotting and (wins or spot[t] >= self.spot_threshold):
                    if wins:  # the spike of the spot word already said: not twice
                        last, frame = sym, frame + 1
                        continue
                else:
                    spotting = False
                    if not wins and spot[t] >= self.spot_threshold:  # said now, though another label wins
                        word = self.symbols[int(self.spot_ids[np.argmax(row[self.spot_ids])])]
                        words.append(WordEvent(word, frame, frame, reason="spotted",
                                               confidence=min(float(spot[t]), 1.0)))
                        delta += (" " if text or delta else "") + word
                        spotting = True
                    elif wins and sym != last:  # greedy says it just below, once
                        spotting = True
            if sym != last and sym != self.blank:
                word = self.symbols[sym]
                # softmax of the winning label: 1 / sum(exp(row - row[sym])); every exponent <= 0 (argmax)
                confidence = float(1.0 / np.exp(row - row[sym]).sum())
                words.append(WordEvent(word, frame, frame, confidence=confidence,
                                       revises=partial >= 0 and partial != sym, confirms=partial == sym))
                delta += (" " if text or delta else "") + word
                partial = -1
            elif early:
                lead = self._leading(probs, last, prev)
                if lead >= 0 and lead != partial:
                    share = float(probs[lead] / max(1.0 - probs[self.blank], 1e-12))
                    words.append(WordEvent(self.symbols[lead], frame, frame, confidence=min(share, 1.0),
                                           partial=True, revises=partial >= 0))
                    partial = lead
            if early:
                prev = probs
            last = sym
            frame += 1
        self.state = CtcState(last, frame, text + delta, partial, prev, spotting)
        return CtcResult(delta, words)

    def _spot_mass(self, logprobs: np.ndarray) -> np.ndarray:
        """Per frame, the spot words' summed posterior (softmax of each row)."""
        z = logprobs - logprobs.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e[:, self.spot_ids].sum(axis=1) / e.sum(axis=1)  # [n_frames]

    def _leading(self, probs: np.ndarray, last: int, prev: np.ndarray | None) -> int:
        """The label an early partial would publish on this frame, or -1: the most likely word other
        than the one still held (`last`), at or above the threshold and rising (not a spike's tail)."""
        masked = probs.copy()  # [vocab] small: one row
        masked[self.blank] = -1.0
        if last != self.blank:
            masked[last] = -1.0
        lead = int(np.argmax(masked))
        p = masked[lead]
        if p < self.partial_threshold or (prev is not None and p <= prev[lead]):
            return -1
        return lead

    def finish(self) -> CtcResult:
        """End of the utterance: no final word is pending with word labels (a partial no label
        confirmed, `pending_partial`, is the caller's to withdraw first); the decoder resets."""
        self.reset()
        return CtcResult()

    def frame_end_sample(self, frame: int) -> int:
        """Stream sample at which `frame`'s audio ends (its window's last sample + 1)."""
        if self.frame_samples is None:
            raise ConfigError("ctc: frame_samples is not set (build the decoder with CtcDecoder.from_model)")
        return (frame + 1) * self.frame_samples
