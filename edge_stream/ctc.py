"""Streaming greedy CTC decoding (stream policy, no model): per-frame log-probs in, text out.

Each frame's best symbol is taken; a symbol equal to the previous frame's is a repeat and is
dropped, a blank separates repeats ("l l" needs "l _ l"), which is why the last symbol is
carried across blocks. Characters are emitted as soon as they are decoded, so greedy output
is never revised: a partial hypothesis is a prefix of every later one. A word becomes final
when a space follows it, at `finish()`, or (with a lexicon) as soon as its letters spell a
lexicon word that no other lexicon word continues: "stop" is final at its "p", "four" waits
for the space that tells it from "fourteen". Frame indices are absolute from the stream's
start; `frame_samples` converts them to audio time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from .errors import ConfigError, InputError, ManifestError

LEXICON_FILE = "lexicon.txt"  # optional, next to a recognizer's manifest: one word per line


@dataclass(frozen=True)
class WordEvent:
    """A finished word. `end_frame`: frame that decoded its last character; `final_frame`:
    frame at which it became final (same frame for lexicon words); `reason`: 'space',
    'lexicon' or 'finish'."""

    word: str
    end_frame: int
    final_frame: int
    reason: str


@dataclass
class CtcResult:
    """What one `update` decoded: `text` is the delta (characters, spaces included) since the last
    call; `words` the words that became final in it; `partial` the unfinished word after it."""

    text: str = ""
    words: list[WordEvent] = field(default_factory=list)
    partial: str = ""


@dataclass(frozen=True)
class CtcState:
    """Everything the decoder carries between blocks; immutable so snapshots are free."""

    last_symbol: int  # previous frame's argmax (blank at the start)
    partial: str = ""  # letters of the word in progress
    partial_end_frame: int = -1
    frames: int = 0  # frames decoded so far
    text: str = ""  # everything decoded so far


class CtcDecoder:
    """Greedy CTC over a symbol table (`symbols[i]` is the text of id i; `blank` decodes to nothing)."""

    def __init__(self, symbols: Iterable[str], blank: int = 0, space: str = " ",
                 lexicon: Iterable[str] | None = None, frame_samples: int | None = None):
        self.symbols = list(symbols)
        if not 0 <= blank < len(self.symbols):
            raise ConfigError(f"ctc: blank id {blank} is outside the {len(self.symbols)} symbols")
        self.blank = blank
        self.space = space
        self.frame_samples = frame_samples
        self.lexicon = frozenset(lexicon) if lexicon is not None else None
        # Words that are complete as soon as spelled: in the lexicon and no other word continues them.
        self._unique = frozenset(
            w for w in self.lexicon if not any(o != w and o.startswith(w) for o in self.lexicon)
        ) if self.lexicon is not None else frozenset()
        self.state = CtcState(last_symbol=blank)

    @classmethod
    def from_model(cls, model, lexicon: bool = True) -> "CtcDecoder":
        """A decoder for a recognizer model directory: symbols from its tokenizer (id -> character),
        blank from the tokenizer's `<blank>`, frame length from blocking and the logits output shape,
        lexicon from `lexicon.txt` if present and `lexicon` is True."""
        m = model.manifest
        if model.tokenizer is None:
            raise ManifestError(f"{m.name}: a CTC recognizer needs a tokenizer (id -> symbol) in its directory")
        vocab = model.tokenizer.get_vocab()  # token -> id
        symbols = [""] * len(vocab)
        for token, i in vocab.items():
            symbols[i] = token
        if "<blank>" not in vocab:
            raise ManifestError(f"{m.name}: tokenizer has no '<blank>' token for CTC")
        logits = m.output_for("logits")
        if logits is None or m.blocking is None:
            raise ManifestError(f"{m.name}: a CTC recognizer needs a 'logits' output and a 'blocking' section")
        shape = {o.name: o.shape for o in model.runner.session.get_outputs()}[logits]
        per_block = shape[1] if len(shape) == 3 and isinstance(shape[1], int) else None
        if not per_block or m.blocking.block % per_block:
            raise ManifestError(f"{m.name}: output {logits!r} has shape {shape}; expected "
                                "[batch, frames_per_block, vocab] with a static frames_per_block dividing block")
        words = None
        path = Path(model.dir) / LEXICON_FILE
        if lexicon and path.is_file():
            words = [w.strip() for w in path.read_text().splitlines() if w.strip()]
        return cls(symbols, blank=vocab["<blank>"], lexicon=words, frame_samples=m.blocking.block // per_block)

    def reset(self) -> None:
        """Forget everything: a new utterance starts at frame 0."""
        self.state = CtcState(last_symbol=self.blank)

    @property
    def text(self) -> str:
        """Everything decoded so far."""
        return self.state.text

    def update(self, logprobs: np.ndarray) -> CtcResult:
        """Decode the next frames ([n_frames, vocab] log-probs or logits; only the argmax matters).

        Returns the text decoded in them and the words that became final; the state moves on
        by n_frames."""
        if logprobs.ndim != 2 or logprobs.shape[1] != len(self.symbols):
            raise InputError(f"ctc: frames have shape {list(logprobs.shape)}, expected [n, {len(self.symbols)}]")
        best = np.argmax(logprobs, axis=1)  # [n_frames]
        last, partial, partial_end, frame = (self.state.last_symbol, self.state.partial,
                                             self.state.partial_end_frame, self.state.frames)
        out: list[str] = []
        words: list[WordEvent] = []
        tail = self.state.text[-1:]  # last character emitted so far ('' at the start)
        for sym in best.tolist():
            if sym != last and sym != self.blank:
                ch = self.symbols[sym]
                if ch == self.space:
                    if partial:
                        words.append(WordEvent(partial, partial_end, frame, "space"))
                        partial = ""
                    if tail and tail != self.space:  # no leading or double spaces
                        out.append(ch)
                        tail = ch
                else:
                    if not partial and tail and tail != self.space:
                        out.append(self.space)  # letters after a lexicon-final word start a new word
                    out.append(ch)
                    tail = ch
                    partial += ch
                    partial_end = frame
                    if partial in self._unique:
                        words.append(WordEvent(partial, frame, frame, "lexicon"))
                        partial = ""
            last = sym
            frame += 1
        delta = "".join(out)
        self.state = CtcState(last, partial, partial_end, frame, self.state.text + delta)
        return CtcResult(delta, words, partial)

    def finish(self) -> CtcResult:
        """End of the utterance: the unfinished word (if any) becomes final; the decoder resets."""
        words = []
        if self.state.partial:
            words.append(WordEvent(self.state.partial, self.state.partial_end_frame, self.state.frames, "finish"))
        self.reset()
        return CtcResult("", words, "")

    def frame_end_sample(self, frame: int) -> int:
        """Stream sample at which `frame`'s audio ends (its window's last sample + 1)."""
        if self.frame_samples is None:
            raise ConfigError("ctc: frame_samples is not set (build the decoder with CtcDecoder.from_model)")
        return (frame + 1) * self.frame_samples

