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

import numpy as np

from edge_stream.errors import InputError, ManifestError
from edge_stream.voice.commands import (  # noqa: F401 (re-exported: the parser's public names)
    ACTION_WORDS,
    BOS,
    CANCEL,
    DIGIT_TOKENS,
    DIRECTION_WORDS,
    END,
    EOU,
    FIX,
    MAX_FIELD_TOKENS,
    PIECE_PREFIX,
    SPEED_WORDS,
    THEN,
    UNIT_WORDS,
    UNK,
    VOID,
    WAIT,
    Command,
    Parse,
    apply_tokens,
    fields,
    fold,
    format_amount,
    words_of,
)
from edge_stream.voice.grammar import SPOKEN_WORDS, output_grammar, token_bytes

log = logging.getLogger(__name__)


class GrammarConstraint:
    """The output grammar (edge_stream.voice.grammar.output_grammar) as an llguidance matcher over
    the parser's tokens: `allowed()` is the mask of tokens the grammar allows next.

    llguidance (Microsoft's constrained-decoding engine behind guidance; Rust, no torch) takes a
    Lark grammar and any tokenizer given as per-token bytes, and gives a bitmask for numpy logits.
    Our tokens are whole words, so each token's bytes are the word plus a space (`token_bytes`).
    One grammar is compiled per parser; `reset()` starts an utterance from a copy of the fresh matcher."""

    def __init__(self, vocab: dict[str, int], name: str):
        import llguidance
        import llguidance.numpy as lnp

        by_id = sorted(vocab.items(), key=lambda kv: kv[1])
        if [i for _, i in by_id] != list(range(len(by_id))):
            raise ManifestError(f"{name}: tokenizer ids are not 0..{len(by_id) - 1}")

        by_bytes = {token_bytes(t): i for t, i in by_id}

        class _Tokens:  # what llguidance.TokenizerWrapper reads
            eos_token_id = vocab["<pad>"] if "<pad>" in vocab else len(by_id) - 1  # never generated
            bos_token_id = None
            tokens = [token_bytes(t) for t, _ in by_id]
            special_token_ids: list = []

            def __call__(self, text):  # tokenizes text the grammar forces ("{wait} "): one token per word
                if isinstance(text, str):
                    text = text.encode()
                return [by_bytes[w + b" "] for w in text.split(b" ") if w + b" " in by_bytes]

        self._lnp = lnp
        tokenizer = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Tokens()), slices=[])
        self._fresh = llguidance.LLMatcher(tokenizer, output_grammar(vocab), log_level=0)
        if self._fresh.is_error():
            raise ManifestError(f"{name}: output grammar rejected by llguidance: {self._fresh.get_error()}")
        self._n = len(by_id)
        self._bits = lnp.allocate_token_bitmask(1, self._n)  # [1, ceil(vocab / 32)] int32, reused
        self.reset()

    def reset(self) -> None:
        self.matcher = self._fresh.deep_copy()
        self.consumed: list[int] = []  # tokens the matcher took this utterance (what a replay needs)

    def consume(self, ids) -> bool:
        """Advance over tokens (heard words or chosen ones); False when the grammar refuses them."""
        ids = [int(i) for i in ids]
        ok = self.matcher.consume_tokens(ids) and not self.matcher.is_error()
        if ok:
            self.consumed += ids
        return ok

    def back_to(self, n_consumed: int) -> None:
        """Return to the state after the first `n_consumed` tokens of the utterance: llguidance's
        `rollback` (its documented undo of the last tokens consumed), or, from an error state
        it cannot roll back from, a replay of those tokens from the fresh matcher."""
        extra = len(self.consumed) - n_consumed
        if not self.matcher.is_error() and self.matcher.rollback(extra) and not self.matcher.is_error():
            del self.consumed[n_consumed:]
            return
        kept = self.consumed[:n_consumed]
        self.reset()
        if not self.consume(kept):  # they were accepted once, from the same state
            raise AssertionError("command parser: grammar replay refused tokens it accepted before")

    def allowed(self) -> np.ndarray:
        """[vocab] bool: the tokens the grammar allows next (computed in place into one buffer)."""
        self._lnp.fill_next_token_bitmask(self.matcher, self._bits, 0)
        words = self._bits[0].view(np.uint32)
        return ((words[:, None] >> np.arange(32, dtype=np.uint32)) & 1).astype(bool).reshape(-1)[:self._n]


@dataclass(frozen=True)
class _Undo:
    """What one `push_word` changed, so `revise_last_word` can take it back: the parser's state
    before the word (the stream position, the pending stop token, the command, counts)."""

    position: int  # stream position before the word (its pending stop token not yet fed)
    pending: list
    command: Command
    n_tokens: int
    token_confidence: float
    constrain: bool
    n_consumed: int  # tokens the grammar matcher had taken


class CommandParser:
    """One utterance at a time over a `StreamSession` of the command-parser model.

    `push_word(word, confidence)` returns the fields that word determined (often none);
    `command` is the command so far; `end()` returns the final command and gets ready for the
    next utterance; `confidence` is the utterance's: the lowest recognizer word confidence times
    the lowest probability the model gave to a token it chose (fields, <wait> and <end>: a
    hesitant "nothing here" counts too). With `constrained` (default) every token is chosen
    among those the output grammar allows (`GrammarConstraint`), so a field only takes a value
    the grammar allows. Many parsers can share one loaded model.
    """

    def __init__(self, model, max_field_tokens: int = MAX_FIELD_TOKENS, constrained: bool = True):
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
        # Heard words: the grammar's words; anything else (an output-only token such as "m" included) is <unk>.
        self._input_ids = {w: vocab[w] for w in SPOKEN_WORDS if w in vocab}
        self.max_field_tokens = max_field_tokens
        self.constraint = GrammarConstraint(vocab, model.name) if constrained else None
        self._stream = model.open_stream()
        self._last = Parse()
        self._last_confidence = 1.0
        self.last_tokens: list[str] = []
        self.reset()

    @property
    def command(self) -> str:
        """The command(s) the fields so far describe ('' before any field)."""
        return fold(self.tokens).text()

    @property
    def result(self) -> Parse:
        """The utterance so far (or, after `end()`, the last one): commands, cancelled, void."""
        return fold(self.tokens) if self.words else self._last

    @property
    def confidence(self) -> float:
        """The utterance's confidence so far (or, after `end()`, the last one's), in [0, 1]."""
        if not self.words:
            return self._last_confidence
        return min(self.word_confidences, default=1.0) * self.token_confidence

    @property
    def state(self) -> Command:
        """A copy of the current (last) command so far, field by field."""
        return replace(self._command)

    def push_word(self, word: str, confidence: float | None = None) -> list[str]:
        """Feed one recognized word (with the recognizer's confidence in it, when known); returns
        the fields it determined, e.g. ['turn'], ['<fix>', 'right'], ['90', 'deg'], or []."""
        w = word.strip().lower()
        if not w or any(c.isspace() for c in w):
            raise InputError(f"push_word: expected one word, got {word!r}")
        self._undo.append(_Undo(self._stream.position, list(self._pending), replace(self._command),
                                len(self.tokens), self.token_confidence, self._constrain,
                                len(self.constraint.consumed) if self.constraint is not None else 0))
        ids = self._prefix() + [self._input_ids.get(w, self._unk)]
        self.words.append(w)
        self.word_confidences.append(1.0 if confidence is None else float(confidence))
        return self._run(ids, stop=(self._wait,))

    def revise_last_word(self, word: str | None, confidence: float | None = None) -> list[str]:
        """Replace the utterance's last word by `word` (None: take it back): the LM stream drops
        the word and the tokens generated after it (`feed(replace_last=...)`: the kept prefix is
        never recomputed), the grammar and the command return to before it. Returns the fields
        `word` determined, as `push_word` does; afterwards every result equals a fresh parser's
        fed the resulting words."""
        if not self._undo:
            raise InputError("revise_last_word: the utterance has no word to revise")
        w = None if word is None else word.strip().lower()
        if w is not None and (not w or any(c.isspace() for c in w)):  # checked before anything changes
            raise InputError(f"revise_last_word: expected one word or None, got {word!r}")
        undo = self._undo.pop()
        n_back = self._stream.position - undo.position
        self.words.pop()
        self.word_confidences.pop()
        del self.tokens[undo.n_tokens:]
        self._command, self._pending = replace(undo.command), list(undo.pending)  # copies: both change in place
        self.token_confidence, self._constrain = undo.token_confidence, undo.constrain
        if self.constraint is not None and undo.constrain:
            self.constraint.back_to(undo.n_consumed)
        if w is None:
            self._stream.rewind(n_back)
            return []
        self._undo.append(undo)
        ids = self._prefix() + [self._input_ids.get(w, self._unk)]
        self.words.append(w)
        self.word_confidences.append(1.0 if confidence is None else float(confidence))
        return self._run(ids, stop=(self._wait,), replace_last=n_back)

    def set_word_confidences(self, confidences) -> None:
        """Replace the words' recognizer confidences (early partial words: by those of the final
        words, given at the segment's end), one per word so far, in order."""
        if len(confidences) != len(self.words):
            raise InputError(f"set_word_confidences: {len(confidences)} confidences for {len(self.words)} words")
        self.word_confidences = [float(c) for c in confidences]

    def end(self) -> str:
        """End of the utterance: emit what its end determines, return the final command text
        ('' for none; 'a then b' for two), reset. `final`, `result`, `confidence` describe it."""
        got = self._run(self._prefix() + [self._eou], stop=(self._end,)) if self.words else []
        final, result, conf = self.state, fold(self.tokens), self.confidence
        self.last_tokens = list(self.tokens)  # the utterance's output tokens (a wake word's cut reads them)
        self.reset()
        self.end_fields, self.final, self._last, self._last_confidence = got, final, result, conf
        return result.text()

    def reset(self) -> None:
        """Forget the utterance (the next word starts a new one)."""
        self._stream.reset()
        if self.constraint is not None:
            self.constraint.reset()
        self._constrain = self.constraint is not None  # off for the rest of an utterance the grammar refused
        self._command = Command()
        self._pending: list[int] = []  # the stop token chosen last, fed with the next word
        self.words: list[str] = []
        self.word_confidences: list[float] = []
        self.token_confidence = 1.0  # lowest probability of a chosen token
        self.tokens: list[str] = []  # every output token of this utterance, <fix> included
        self._undo: list[_Undo] = []  # one per word: what revise_last_word restores

    def _prefix(self) -> list[int]:
        if not self.words:
            return [self._bos]
        return self._pending

    def _choose(self, logits: np.ndarray, forced_stop: int | None) -> tuple[int, float]:
        """The next token: the most likely one the grammar allows; with `forced_stop`, that token."""
        z = logits - logits.max()
        probs = np.exp(z) / np.exp(z).sum()  # [vocab] the model's own distribution (unconstrained)
        if forced_stop is not None:
            return forced_stop, float(probs[forced_stop])
        if self._constrain:
            allowed = self.constraint.allowed()
            if allowed.any():
                z = np.where(allowed, z, -np.inf)
        tok = int(np.argmax(z))
        return tok, float(probs[tok])

    def _run(self, ids: list[int], stop, replace_last: int = 0) -> list[str]:
        """Feed `ids` (the previous turn's stop token, then a word or <eou>), in place of the stream's
        last `replace_last` tokens, and decode until a stop token."""
        s = self._stream
        c = self.constraint if self._constrain else None
        # The pending stop token at the head of `ids` went through the grammar when it was chosen.
        if c is not None and not c.consume(ids[len(self._pending):]):
            log.warning("command parser: the grammar refused the input at word %d; unconstrained to its end",
                        len(self.words))
            self._constrain, c = False, None
        logits = s.feed(np.asarray(ids, dtype=np.int64), replace_last=replace_last).logits[-1]  # [vocab]
        got: list[str] = []
        for i in range(self.max_field_tokens + 1):
            forced = stop[0] if i == self.max_field_tokens else None  # too long: close the turn as training did
            tok, p = self._choose(logits, forced)
            self.token_confidence = min(self.token_confidence, p)
            if c is not None and not c.consume([tok]):
                self._constrain, c = False, None
            if tok in stop:
                self._pending = [tok]  # part of the stream: fed before the next word
                break
            got.append(self._token_of.get(tok, UNK))
            logits = s.feed(np.asarray([tok], dtype=np.int64)).logits[-1]  # [vocab]
        if forced is not None:
            log.warning("command parser: no stop token after %d tokens at word %d", len(got), len(self.words))
        self.tokens += got
        if THEN in got:  # the current command is the one after the last <then>
            self._command = apply_tokens(got[len(got) - got[::-1].index(THEN):])
        else:
            apply_tokens(got, self._command)
        return fields(got)
