"""Streaming command parsing: recognized words in, command fields out, word by word.

The parser model (models/command-parser, trained by export/train_parser.py) is a
causal LM over one sequence that interleaves heard words and emitted fields:

    <bos> turn [turn] <wait> left [left] <wait> no <wait> right [<fix> right] <wait> <eou> [] <end>

`CommandParser.push_word` feeds one word and generates until <wait>: what comes
before it is what that word determined. `end()` feeds <eou> and generates
until <end>. Output tokens: an action (move, turn, stop, speed up, slow down),
a direction (forward, back, left, right), an amount (digit pieces then m/deg:
`2 ##. ##0 m`), and <fix>: the fields after it overwrite fields already
emitted. `apply_tokens` folds any token stream into the `Command`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from edge_stream.errors import InputError, ManifestError

log = logging.getLogger(__name__)

BOS, UNK, WAIT, EOU, END, FIX = "<bos>", "<unk>", "<wait>", "<eou>", "<end>", "<fix>"
DIGIT_TOKENS = tuple("0123456789")
PIECE_PREFIX = "##"  # a number's later characters: "2 ##. ##0" is "2.0"
ACTION_WORDS = {"move": "move", "turn": "turn", "stop": "stop", "speed": "speed up", "slow": "slow down"}
DIRECTION_WORDS = ("forward", "back", "left", "right")
UNIT_WORDS = ("m", "deg")
MAX_FIELD_TOKENS = 12  # longest emission is 8 ("<fix> move back 1 ##2 ##. ##5 m"), plus room for a mistake


def format_amount(value: float, unit: str) -> str:
    """'2.0' for metres (one decimal always), '90' for whole degrees."""
    if unit == "deg" and float(value).is_integer():
        return str(int(value))
    return f"{value:.1f}"


@dataclass
class Command:
    """The structured command: an action, and for move/turn a direction and an amount."""

    action: str | None = None
    direction: str | None = None
    amount: tuple | None = None  # (value, unit): (2.0, "m"), (90.0, "deg")

    def text(self) -> str:
        """'move forward 2.0 m', 'turn left', 'stop', ... ('' when nothing was determined)."""
        if self.action is None:
            return ""
        parts = [self.action]
        if self.direction:
            parts.append(self.direction)
        if self.amount:
            parts.append(f"{format_amount(*self.amount)} {self.amount[1]}")
        return " ".join(parts)


def apply_tokens(tokens, command: Command | None = None) -> Command:
    """Fold output tokens into `command` (a new one by default) and return it.

    A field overwrites the field of its kind; an action that differs from the
    current one starts a new command (direction and amount cleared). <fix> only
    tells listeners that an overwrite follows: the result is the same without
    it. Tokens that are not output tokens (a model's mistake) are skipped.
    """
    cmd = command if command is not None else Command()
    number = ""  # characters of the amount being read
    for tok in tokens:
        if tok in DIGIT_TOKENS:
            number = tok
        elif tok.startswith(PIECE_PREFIX) and number:
            number += tok[len(PIECE_PREFIX):]
        elif tok in UNIT_WORDS and number:
            try:
                cmd.amount = (float(number), tok)
            except ValueError:  # a malformed number ("2..") is dropped, the old amount stays
                log.debug("dropped malformed amount %r", number)
            number = ""
        elif tok in ACTION_WORDS:
            action = ACTION_WORDS[tok]
            if action != cmd.action:
                cmd.action, cmd.direction, cmd.amount = action, None, None
        elif tok in DIRECTION_WORDS:
            cmd.direction = tok
    return cmd


def fields(tokens) -> list[str]:
    """Tokens as display fields: number pieces joined ('2', '##.', '##0' -> '2.0')."""
    out: list[str] = []
    for tok in tokens:
        if tok.startswith(PIECE_PREFIX) and out:
            out[-1] += tok[len(PIECE_PREFIX):]
        else:
            out.append(tok)
    return out


def words_of(text: str) -> list[str]:
    """Lower-case words of a transcript, punctuation dropped ("Turn left, no, right!" -> 5 words)."""
    cleaned = "".join(c if c.isalnum() or c == "'" else " " for c in text.lower())
    return cleaned.split()


class CommandParser:
    """One utterance at a time over a `StreamSession` of the command-parser model.

    `push_word(word)` returns the fields that word determined (often none);
    `command` is the command so far; `end()` returns the final command and
    gets ready for the next utterance. Many parsers can share one loaded model.
    """

    def __init__(self, model, max_field_tokens: int = MAX_FIELD_TOKENS):
        tok = model.tokenizer
        if tok is None:
            raise ManifestError(f"{model.name}: the command parser needs tokenizer.json in the model directory")
        vocab = tok.get_vocab()
        missing = [t for t in (BOS, UNK, WAIT, EOU, END) if t not in vocab]
        if missing:
            raise ManifestError(f"{model.name}: tokenizer lacks {', '.join(missing)}; "
                                f"expected a command-parser model (export/train_parser.py)")
        self.model = model
        self._vocab = vocab
        self._token_of = {i: t for t, i in vocab.items()}
        self._bos, self._unk, self._wait, self._eou, self._end = (vocab[t] for t in (BOS, UNK, WAIT, EOU, END))
        self.max_field_tokens = max_field_tokens
        self._stream = model.open_stream()
        self.reset()

    @property
    def command(self) -> str:
        """The command the fields so far describe ('' before any field)."""
        return self._command.text()

    @property
    def state(self) -> Command:
        """A copy of the command so far, field by field."""
        return replace(self._command)

    def push_word(self, word: str) -> list[str]:
        """Feed one recognized word; returns the fields it determined, e.g. ['turn'],
        ['<fix>', 'right'], ['90', 'deg'], or [] when the word settles nothing yet."""
        w = word.strip().lower()
        if not w or any(c.isspace() for c in w):
            raise InputError(f"push_word: expected one word, got {word!r}")
        ids = self._prefix() + [self._vocab.get(w, self._unk)]
        self.words.append(w)
        return self._run(ids, stop=(self._wait, self._end))

    def end(self) -> str:
        """End of the utterance: emit what its end determines, return the final command, reset."""
        got = self._run(self._prefix() + [self._eou], stop=(self._end, self._wait)) if self.words else []
        final = self.state
        self.reset()
        self.end_fields, self.final = got, final  # what end() emitted, and the final Command
        return final.text()

    def reset(self) -> None:
        """Forget the utterance (the next word starts a new one)."""
        self._stream.reset()
        self._command = Command()
        self._needs_wait = False
        self.words: list[str] = []
        self.tokens: list[str] = []  # every output token of this utterance, <fix> included

    def _prefix(self) -> list[int]:
        if not self.words:
            return [self._bos]
        # The model stopped at max_field_tokens without <wait>: close its turn as training did.
        return [self._wait] if self._needs_wait else []

    def _run(self, ids: list[int], stop) -> list[str]:
        s = self._stream
        s.feed(ids)
        got = [self._token_of.get(p.token_id, UNK) for p in
               s.generate(self.max_field_tokens, temperature=0.0, stop_token_ids=list(stop))]
        self._needs_wait = s.finish_reason != "stop"
        if self._needs_wait:
            log.warning("command parser: no <wait> after %d tokens at word %d", len(got), len(self.words))
        self.tokens += got
        apply_tokens(got, self._command)
        return fields(got)
