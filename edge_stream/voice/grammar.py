"""The spoken-command grammar: the one place that says which words exist, what they mean, and how
commands are phrased. Both models are trained from it and scored against it.

Run-time safe (stdlib only, no torch): the node, the voice tools, the parser's training data
(export/command_data.py) and the recognizer's training data (export/speech_data.py) all read it.

- **Vocabulary.** `recognizer_vocabulary()`: every word the phrase generator can say, plus `<unk>`
  (the recognizer's label for any word outside the grammar, so speech that is not a command is
  not forced onto command words). `vocabulary()`: the parser's tokens (specials, output tokens,
  then the same input words): the two cannot disagree, both come from `SPOKEN_WORDS`.
- **Phrases.** `Generator(seed, split).sample()` draws a `Sample` (words, the text to speak with
  commas where a speaker pauses, the meaning) from the templates below: commands, corrections,
  two commands ("turn left then go forward two meters"), negations, cancels and questions.
  `non_command_sentences(split)` are sentences that are not commands (Debian fortunes-min texts
  when installed, plus generated conversation that uses command words); `recognizer_words` maps
  any text onto recognizer labels.
- **Meaning.** `Teacher`, a rule-based incremental parser, emits each output field the moment
  the words so far determine it (prefix-to-prefix: wait-k with k adapting per field); it is the
  parser model's training target and the reference (`command_of`) it is scored against.

Output token stream (folded by `edge_stream.voice.command_parser.fold`):
    action    move | turn | stop | speed up | slow down | wait
    direction forward | back | left | right
    amount    digits then unit: `2 ##. ##0 m`, `9 ##0 deg`, `2 ##. ##0 s` (a duration)
    speed     slowly | fast
    <fix>     the fields after it overwrite fields already emitted
    <then>    the fields after it start the next command of the utterance
    cancel    the speaker cancelled: no command ("don't move", "never mind", "cancel")
    void      the words are not a command after all (emitted only when fields were already out)
Safety rules: a stop word ("stop", "halt", "freeze") always emits `stop` on its word, whatever
came before (negated, question or not a command: a false stop is harmless, a late one is not),
and `stop` replaces every command of the utterance. A negation ("don't", "do not", "never")
or a cancel word ("cancel", "never mind", "forget it") emits `cancel`: nothing moves until a
correction marker restarts ("don't move, sorry, move forward"). A question word at the start
("did you turn left", "what is left", "why ...") makes the utterance silent. A word the grammar
has no place for (a word outside the vocabulary, or "left" after "i") is *strange*; one is
tolerated (a recognizer's slip), the second makes the utterance not a command (`void`).
Emission rules: an action or direction the moment its word is heard; "go" waits for the next
word (go forward / go faster; "let's go" or "go now" is `move forward`); an amount as soon as
its number phrase is settled: on its last word when no word can continue it ("forty five",
"two and a half"), else at the first later word that cannot continue it (the unit, a filler, a
marker) or at the end of the utterance ("twenty" may become "twenty five"); hesitations (uh,
um) inside a number do not end it. Corrections: a marker (no, sorry, i mean, actually, ...)
then restated fields; a restated field that differs from one already emitted is preceded by
<fix>; restating another action starts a new command (direction and amount cleared).
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from edge_stream.voice.commands import (
    BOS,
    CANCEL,
    DIGIT_TOKENS,
    END,
    EOU,
    FIX,
    THEN,
    UNK,
    VOID,
    WAIT,
    Command,
    Parse,
    fold,
    format_amount,
    words_of,
)

# ----- vocabulary ------------------------------------------------------------------------

# <wait>: "nothing more until the next word"; <eou>: fed at the end of an utterance;
# <end>: the model's answer to <eou> once the last fields are out.
PAD = "<pad>"
SPECIALS = (PAD, BOS, UNK, WAIT, EOU, END)  # hidden when decoding; <fix>, <then> stay visible

HESITATIONS = ("uh", "um", "er", "hmm")
# Words that may open or close a command, or sit between its parts, meaning nothing.
OPENER_WORDS = ("okay", "robot", "hey", "please", "now", "alright", "so", "well", "let's", "just", "can",
                "could", "would", "you", "i", "want", "to", "emergency", "do")
FILLERS = OPENER_WORDS + ("the", "by", "for", "thanks", "thank", "bit", "little", "there", "moving", "it",
                          "again", "immediately", "up", "down", "a", "and")
MARKERS = ("no", "sorry", "wait", "mean", "actually", "oops")
STOP_WORDS = ("stop", "halt", "freeze")
NEGATIONS = ("don't", "not", "never")
CANCEL_WORDS = ("cancel", "mind", "forget")  # "cancel (that)", "never mind", "forget it"
QUESTION_WORDS = ("did", "what", "why", "how", "where", "is", "are", "does")
THEN_WORDS = ("then",)
MOVE_VERBS = ("move", "drive", "walk", "head", "roll", "travel")
TURN_VERBS = ("turn", "rotate", "spin", "pivot")
SPEED_UP_WORDS = ("faster", "speed", "accelerate", "hurry")
SLOW_DOWN_WORDS = ("slower", "slow", "decelerate")
SPEED_MODIFIERS = {"slowly": "slowly", "carefully": "slowly", "fast": "fast", "quickly": "fast"}
DIRECTIONS = {"forward": "forward", "forwards": "forward", "ahead": "forward", "straight": "forward",
              "back": "back", "backward": "back", "backwards": "back", "left": "left", "right": "right"}
UNITS = {"meter": "m", "meters": "m", "metre": "m", "metres": "m", "degree": "deg", "degrees": "deg",
         "second": "s", "seconds": "s"}
ONES = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEENS = ("ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
         "eighteen", "nineteen")
TENS = ("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
DIGIT_WORDS = ("zero",) + ONES
NUMBER_WORDS = DIGIT_WORDS + TEENS + TENS + ("hundred", "point", "and", "a", "half")
# Question frames and cancels say these; they mean nothing else.
QUESTION_FILLERS = ("far", "or", "your", "that")

ACTIONS = ("move", "turn", "stop", "speed up", "slow down", "wait")
ACTION_TOKENS = {"move": ["move"], "turn": ["turn"], "stop": ["stop"], "speed up": ["speed", "up"],
                 "slow down": ["slow", "down"], "wait": ["wait"]}
DEFAULT_UNIT = {"move": "m", "turn": "deg", "wait": "s"}  # a number without a unit
UNITS_OF_ACTION = {"move": ("m", "s"), "turn": ("deg", "s"), "wait": ("s",)}
MAX_VALUE = {"m": 100.0, "deg": 360.0, "s": 60.0}  # the largest amount the grammar allows per unit
ACTION_OF_DIRECTION = {"forward": "move", "back": "move", "left": "turn", "right": "turn"}
DIRECTIONS_OF_ACTION = {"move": ("forward", "back"), "turn": ("left", "right")}
SPEED_TOKENS = ("slowly", "fast")
NUMBER_TOKENS = DIGIT_TOKENS + tuple("##" + c for c in "0123456789.")  # first digit, then glued "##" pieces
OUTPUT_TOKENS = ("move", "turn", "stop", "speed", "up", "slow", "down", "forward", "back", "left", "right",
                 "m", "deg", FIX) + NUMBER_TOKENS + ("wait", "s") + SPEED_TOKENS + (THEN, CANCEL, VOID)

# Every word the phrase generator can say: the recognizer's labels and the parser's input words.
SPOKEN_WORDS = tuple(sorted(set(
    HESITATIONS + FILLERS + MARKERS + STOP_WORDS + NEGATIONS + CANCEL_WORDS + QUESTION_WORDS + THEN_WORDS
    + MOVE_VERBS + TURN_VERBS + SPEED_UP_WORDS + SLOW_DOWN_WORDS + tuple(SPEED_MODIFIERS) + tuple(DIRECTIONS)
    + tuple(UNITS) + NUMBER_WORDS + QUESTION_FILLERS + ("go", "reverse", "around"))))
INPUT_WORDS = SPOKEN_WORDS  # the parser's name for them (pre-issue-10 code imports INPUT_WORDS)
# Stand-ins for words outside the grammar in generated commands (a recognizer's <unk>).
UNKNOWN_WORDS = ("banana", "table", "blue", "hello", "kitchen", "yes", "maybe", "door", "light")


def vocabulary() -> list[str]:
    """The parser's token strings in id order: specials, then output tokens, then input-only words."""
    seen = list(SPECIALS) + list(OUTPUT_TOKENS)
    return seen + [w for w in SPOKEN_WORDS if w not in seen]


def recognizer_vocabulary() -> list[str]:
    """The recognizer's word labels (without its CTC blank): every word the phrase generator can
    say, then `<unk>` for any word outside the grammar (train non-command speech onto it)."""
    return list(SPOKEN_WORDS) + [UNK]


def recognizer_words(text_or_words) -> list[str]:
    """A transcript as recognizer labels: lower-case words, punctuation dropped, words outside
    the grammar as `<unk>` ("I left my keys." -> ['i', 'left', '<unk>', '<unk>'])."""
    words = words_of(text_or_words) if isinstance(text_or_words, str) else list(text_or_words)
    known = _SPOKEN
    return [w if w in known else UNK for w in words]


_SPOKEN = frozenset(SPOKEN_WORDS)
# Words of the grammar that sound the same: a recognizer can only tell them apart from context and
# will sometimes write the other one ("turn two the left"), so the parser trains on such swaps.
HOMOPHONES = {"to": "two", "two": "to", "for": "four", "four": "for"}


# ----- numbers ---------------------------------------------------------------------------

def _below_100():
    for i, w in enumerate(ONES, 1):
        yield (w,), i
    for i, w in enumerate(TEENS, 10):
        yield (w,), i
    for t, tw in enumerate(TENS, 2):
        yield (tw,), 10 * t
        for o, ow in enumerate(ONES, 1):
            yield (tw, ow), 10 * t + o


def number_phrases() -> dict[tuple, float]:
    """Every number phrase of the grammar and its value: 1-360 ('a hundred and twenty', 'one
    eighty' = 180, 'two seventy' = 270), decimals 'one point five' / 'point five' (below 100),
    halves 'two and a half', 'half a' (0.5: "half a meter")."""
    out: dict[tuple, float] = {}
    small = dict(_below_100())
    out.update(small)
    for lead, h in ((("a",), 100), (("one",), 100), (("two",), 200), (("three",), 300)):
        out[lead + ("hundred",)] = h
        for words, v in small.items():
            if h + v <= 360:
                out[lead + ("hundred",) + words] = h + v
                out[lead + ("hundred", "and") + words] = h + v
                if lead != ("a",) and v >= 10:  # "one eighty", "two seventy", "one fifteen"
                    out[lead + words] = h + v
    for d, dw in enumerate(DIGIT_WORDS):
        out[("point", dw)] = d / 10
        out[("zero", "point", dw)] = d / 10
        for words, v in small.items():
            out.setdefault(words + ("point", dw), v + d / 10)
    for words, v in small.items():
        if v <= 20:
            out[words + ("and", "a", "half")] = v + 0.5
    out[("half", "a")] = 0.5
    out[("a", "half")] = 0.5
    return out


NUMBERS = number_phrases()
NUMBER_PREFIXES = {p[:i] for p in NUMBERS for i in range(1, len(p) + 1)}
# Phrases no word can continue ("forty five", "two and a half"): their value is settled on their last word.
FINAL_PHRASES = {p for p in NUMBERS if not any(q[:len(p)] == p and len(q) > len(p) for q in NUMBER_PREFIXES)}
WORDS_OF_VALUE: dict[float, list[tuple]] = {}
for _words, _v in NUMBERS.items():
    WORDS_OF_VALUE.setdefault(_v, []).append(_words)


def amount_tokens(value: float, unit: str) -> list[str]:
    """Output tokens of an amount: (2.0, "m") -> ['2', '##.', '##0', 'm']."""
    text = format_amount(value, unit)
    return [text[0]] + ["##" + c for c in text[1:]] + [unit]


# ----- the incremental parser -----------------------------------------------------------

# Words after which only some words make sense ("i" -> "i mean" / "i want"); any other next word is strange.
FOLLOWERS = {"i": ("mean", "want", "uh", "um", "er", "hmm"), "want": ("you", "to"), "can": ("you",),
             "could": ("you",), "would": ("you",), "do": ("not", "you"), "let's": ("go",),
             "forget": ("it", "that")}
STRANGE_LIMIT = 2  # the second strange word makes the utterance not a command


class Teacher:
    """Rule-based incremental parser: the emission targets the model is trained on.

    `push(word)` returns the output tokens that word determines; `end()` those
    the end of the utterance determines. See the module docstring for the rules.
    """

    def __init__(self):
        self.cmds = [Command()]  # what the words so far mean, one per command of the utterance
        self.outs: list[Command] = []  # what the emitted tokens mean
        self.pending: list[str] = []  # number words not yet ended
        self.held: float | None = None  # an ended number whose unit waits for the action ("go two ...")
        self.mode = "open"  # open (a command may start) | cmd | negated | void
        self.stopped = False  # after "stop", words are ignored until a correction marker
        self.go = False  # "go" heard: the next action word decides (go forward / go faster)
        self.cancelled = False  # `cancel` emitted and nothing restated since
        self.strange = 0
        self.prev: str | None = None
        self.then = False  # "then" heard: the next command word starts a new command
        self.engaged = False  # a command, negation or cancel word has been heard

    @property
    def cmd(self) -> Command:
        return self.cmds[-1]

    def push(self, word: str) -> list[str]:
        prev = self.prev
        if word not in HESITATIONS:
            self.prev = word
        if prev in FOLLOWERS and word not in FOLLOWERS[prev] and word not in STOP_WORDS:
            return self._strange()
        if self.pending:
            if word in HESITATIONS:
                return []
            if tuple(self.pending + [word]) in NUMBER_PREFIXES:
                self.pending.append(word)
                if tuple(self.pending) not in FINAL_PHRASES or self.cmd.action != "wait":
                    return []  # move/turn: the unit may still say metres, degrees or seconds
                self._end_number(None)  # "forty five": nothing can follow, the amount is settled
                return self._emit()
            self._end_number(UNITS.get(word))
            if word in UNITS:
                return self._emit()
        if word in STOP_WORDS:
            return self._stop()
        if self.mode == "void":
            return []
        # "wait" is a marker after "no" ("no wait") or inside a command ("left wait no right"); else
        # ("wait two seconds", "sorry, wait") the action.
        if word in MARKERS and (word != "wait" or prev == "no"
                                or (self.mode == "cmd" and prev not in MARKERS and not self.stopped)):
            # a number still waiting for its action belongs to what is corrected: "go thirteen, no
            # no, turn right" is "turn right", never "turn right 13 deg"
            self.stopped, self.go, self.held = False, False, None
            if self.mode == "negated":
                self.mode = "open"
            return self._emit()
        if self.mode == "negated" or self.stopped:
            return []  # after "stop" nothing but a correction counts, "never mind" included
        if word in NEGATIONS or word in CANCEL_WORDS:
            return self._cancel()
        if word in QUESTION_WORDS:
            if self.mode == "open" and not self.outs:
                self.mode = "void"  # "did you turn left": a question moves nothing
                return []
            return self._strange()
        if word in THEN_WORDS:
            if self.mode == "cmd":
                self._resolve_go()
                tokens = self._emit()
                self.then, self.mode = True, "open"
                return tokens
            return []
        if word in HESITATIONS:
            return []
        if word not in _SPOKEN or word in QUESTION_FILLERS:
            return self._strange()
        if word == "go" or word == "reverse" or word == "around" or word == "wait" or word in MOVE_VERBS \
                or word in TURN_VERBS or word in SPEED_UP_WORDS or word in SLOW_DOWN_WORDS \
                or word in SPEED_MODIFIERS or word in DIRECTIONS or word in UNITS \
                or (word,) in NUMBER_PREFIXES:
            return self._command_word(word)
        if self.go and word in ("now", "please", "robot", "again", "thanks", "okay"):
            self._resolve_go()  # "go now", "let's go please": move forward
        return self._emit()

    def end(self) -> list[str]:
        if self.pending:
            self._end_number(None)
        if self.mode not in ("void", "negated") and not self.stopped:
            self._resolve_go()
        return self._emit()

    # -- rules ---------------------------------------------------------------------------

    def _command_word(self, word: str) -> list[str]:
        if word != "go":  # "go" alone does not engage: "i want to go home" is not a command
            self.engaged = True
        if self.then and self.cmd.action is not None:
            self.cmds.append(Command())  # the first word of the command after "then"
            self.held = None
        self.then = False
        self.mode = "cmd"
        if word == "go":
            self.go = self.cmd.action != "move"
        elif word == "wait":
            self._set_action("wait")
        elif word in MOVE_VERBS:
            self._set_action("move")
        elif word == "reverse":
            self._set_action("move")
            self.cmd.direction = "back"
        elif word in TURN_VERBS:
            self._set_action("turn")
        elif word == "around":
            if self.cmd.action != "turn":
                return self._strange()
            self.cmd.direction, self.cmd.amount = None, (180.0, "deg")  # "turn around": 180 deg
        elif word in SPEED_UP_WORDS:
            self._set_action("speed up")
        elif word in SLOW_DOWN_WORDS:
            self._set_action("slow down")
        elif word in SPEED_MODIFIERS:
            speed = SPEED_MODIFIERS[word]
            if self.cmd.action in DIRECTIONS_OF_ACTION and not self.go:
                self.cmd.speed = speed
            else:
                self._set_action("slow down" if speed == "slowly" else "speed up")
        elif word in DIRECTIONS:
            d = DIRECTIONS[word]
            self._set_action(ACTION_OF_DIRECTION[d])
            self.cmd.direction = d
        elif word in UNITS:
            if self.held is not None:  # "go forty five meters": the unit says move
                self._set_action({"m": "move", "deg": "turn", "s": self.cmd.action or "wait"}[UNITS[word]])
        else:  # a number's first word
            self.pending = [word]
            if (word,) in FINAL_PHRASES and self.cmd.action == "wait":
                self._end_number(None)
        return self._emit()

    def _set_action(self, action: str) -> None:
        self.go = False
        if self.cmd.action != action:
            self.cmds[-1] = Command(action)

    def _resolve_go(self) -> None:
        if self.go:  # "let's go", "go now": forward
            self.go, self.engaged = False, True
            if self.cmd.action != "move":
                self.cmds[-1] = Command("move", "forward")
            elif self.cmd.direction is None:
                self.cmd.direction = "forward"

    def _end_number(self, unit: str | None) -> None:
        words, self.pending = tuple(self.pending), []
        while words and words not in NUMBERS:  # "eleven and then": the number is "eleven"
            words = words[:-1]
        if not words:  # "a" of "a bit": never a number
            return
        value = NUMBERS[words]
        if unit is not None and unit not in UNITS_OF_ACTION.get(self.cmd.action, ()):
            if self.go or self.cmd.action is None or unit != "s":
                self._set_action({"m": "move", "deg": "turn", "s": "wait"}[unit])  # "go two meters": the unit says move
        if self.go:  # "turn, no, go two ...": the unit waits for the new action
            self.held = value
        elif self.cmd.action in DEFAULT_UNIT:
            u = unit if unit is not None else DEFAULT_UNIT[self.cmd.action]
            if u in UNITS_OF_ACTION[self.cmd.action] and 0 < value <= MAX_VALUE[u]:
                self.cmd.amount, self.held = (value, u), None
        elif self.cmd.action is None:
            self.held = value

    def _stop(self) -> list[str]:
        self.engaged = True
        fix = any(o.action is not None for o in self.outs) and self.outs != [Command("stop")]
        already = self.outs == [Command("stop")]
        self.cmds, self.outs = [Command("stop")], [Command("stop")]
        self.mode, self.stopped, self.go, self.then, self.cancelled = "cmd", True, False, False, False
        self.pending, self.held = [], None
        return [] if already else ([FIX, "stop"] if fix else ["stop"])

    def _cancel(self) -> list[str]:
        self.engaged = True
        self.cmds, self.outs = [Command()], []
        self.mode, self.go, self.then, self.held, self.pending = "negated", False, False, None, []
        if self.cancelled:
            return []
        self.cancelled = True
        return [CANCEL]

    def _strange(self) -> list[str]:
        self.strange += 1
        nothing_yet = not self.engaged
        # Below the limit a strange word is a recognizer's slip and ignored, unless nothing has made a
        # command yet ("so you're back", "i want to go home"): speech that starts strange is not a command.
        if self.strange < STRANGE_LIMIT and not (nothing_yet and (self.mode == "open" or self.go)):
            return []
        emitted = any(o.action is not None for o in self.outs)
        self.cmds, self.outs = [Command()], []
        self.mode, self.go, self.then, self.held, self.pending = "void", False, False, None, []
        return [VOID] if emitted else []

    def _emit(self) -> list[str]:
        c = self.cmd
        new = len(self.outs) < len(self.cmds)
        o = Command() if new else self.outs[-1]
        if self.held is not None and c.action in DEFAULT_UNIT and not self.go:
            u = DEFAULT_UNIT[c.action]
            if self.held <= MAX_VALUE[u]:
                c.amount = (self.held, u)
            self.held = None
        tokens, fix = [], False
        if c.action is not None and c.action != o.action:
            fix |= o.action is not None
            tokens += ACTION_TOKENS[c.action]
            o.action, o.direction, o.amount, o.speed = c.action, None, None, None
        if c.direction is not None and c.direction != o.direction:
            fix |= o.direction is not None
            tokens.append(c.direction)
            o.direction = c.direction
        if c.amount is not None and c.amount != o.amount:
            fix |= o.amount is not None
            tokens += amount_tokens(*c.amount)
            o.amount = c.amount
        if c.speed is not None and c.speed != o.speed:
            fix |= o.speed is not None
            tokens.append(c.speed)
            o.speed = c.speed
        if not tokens:
            return []
        self.cancelled = False
        if new:
            if self.outs:
                tokens = [THEN] + tokens
            self.outs.append(o)
        return [FIX] + tokens if fix else tokens


def command_of(words: Iterable[str]) -> Parse:
    """What a whole utterance means by the grammar (the Teacher's final fields, folded); `.text()`
    is '' for no command, 'turn left 90 deg' for one, 'turn left then move forward 2.0 m' for two."""
    t = Teacher()
    tokens = [tok for w in words for tok in t.push(w)] + t.end()
    return fold(tokens)


def command_posterior(nbest: list[dict], command: str, wake_word: str | None = None) -> float:
    """How sure several recognizers are of `command`: the least, over them, of the posterior mass of
    the readings of `nbest` ({"words", "posteriors": one per recognizer}, edge_stream.voice.ctc_beam)
    that mean it (with a wake word: their words from it on). Readings that differ only where the
    meaning does not ("turn left" / "please turn left") pool their mass."""
    mass = [0.0] * len(nbest[0]["posteriors"])
    for e in nbest:
        words = e["words"]
        if wake_word:
            words = words[words.index(wake_word):] if wake_word in words else []
        if command_of(words).text() == command:
            mass = [m + x for m, x in zip(mass, e["posteriors"])]
    return min(1.0, min(mass))


# ----- phrase templates -------------------------------------------------------------------

@dataclass
class Sample:
    """One utterance: words, the text to speak, its meaning, per-word targets and the template."""

    words: list[str]
    command: str  # what it means: '' (no command), 'turn left 90 deg', 'turn left then move forward 2.0 m'
    spoken: str = ""  # the words with commas where a speaker pauses (synthesizers pause at a comma)
    kind: str = "command"  # command | two | negation | cancel | question | noncommand
    cancelled: bool = False
    targets: list[list[str]] = field(default_factory=list)  # tokens emitted after each word
    final: list[str] = field(default_factory=list)  # tokens emitted at the end of the utterance
    template: dict = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)  # role of each word: act dir num unit stop mark fill neg

    @property
    def text(self) -> str:
        return " ".join(self.words)


MOVE_FRAMES = ("V D", "V D A", "V D by A", "V A D", "D A", "D by A", "backup A", "reverse A", "V D for S",
               "V D A M", "V D M")
TURN_FRAMES = ("T D", "T D A", "T to-the D", "T to-the D A", "T A D", "T A to-the D", "D A", "T D by A",
               "T around", "T D for S", "T D M")
STOP_PHRASES = (("stop",), ("halt",), ("freeze",), ("stop", "now"), ("stop", "right", "there"),
                ("stop", "right", "now"), ("stop", "stop"), ("stop", "moving"), ("emergency", "stop"),
                ("stop", "the", "robot"), ("stop", "it"), ("halt", "immediately"), ("freeze", "now"))
SPEED_PHRASES = {
    "speed up": (("faster",), ("go", "faster"), ("speed", "up"), ("a", "bit", "faster"),
                 ("a", "little", "faster"), ("accelerate",), ("hurry", "up"), ("go", "a", "bit", "faster"),
                 ("go", "a", "little", "faster"), ("fast",), ("go", "fast"), ("quickly",)),
    "slow down": (("slower",), ("go", "slower"), ("slow", "down"), ("a", "bit", "slower"),
                  ("a", "little", "slower"), ("decelerate",), ("go", "a", "bit", "slower"),
                  ("go", "a", "little", "slower"), ("slowly",), ("go", "slowly")),
}
GO_PHRASES = (("let's", "go"), ("go",), ("go", "now"), ("let's", "go", "now"), ("go", "ahead"))
OPENERS = ((), ("okay", "robot"), ("hey", "robot"), ("robot",), ("okay",), ("please",), ("can", "you"),
           ("could", "you"), ("i", "want", "you", "to"), ("now",), ("alright",), ("so",), ("um", "okay"),
           ("well",), ("robot", "please"), ("just",))
CLOSERS = ((), ("please",), ("now",), ("thanks",), ("okay",), ("thank", "you"), ("again",))
CORRECTION_MARKERS = (("no",), ("sorry",), ("no", "wait"), ("wait", "no"), ("i", "mean"), ("actually",),
                      ("no", "sorry"), ("oops",), ("no", "no"))
CORRECTIONS = ("none", "direction", "amount", "action", "stop")
NEGATION_OPENERS = (("don't",), ("do", "not"), ("never",), ("please", "don't"), ("no", "don't"))
CANCEL_PHRASES = (("never", "mind"), ("cancel",), ("cancel", "that"), ("forget", "it"), ("no", "cancel"))
QUESTIONS = (
    "did you turn left", "did you turn right", "what is left", "what is right", "why did you stop",
    "did you move forward", "did you go back two meters", "how far did you go", "where did you go",
    "is it left or right", "are you moving", "what is the speed", "did you stop", "why did you turn left",
    "how far is it", "is that forward", "what did you do", "is that left", "why is it slow",
    "how fast are you", "why did you turn around", "did you turn around",
    "what is ninety degrees", "is your left wheel stuck", "does it go faster",
)

# Held-out templates: evaluation only, never trained on. Every word and each of their parts
# occurs in training; the combination does not. "and then" trains: it is the commonest way to
# join two commands, and held out it left "turn around and then" reading "and" as part of a number.
HELD_OUT_RULES = {
    "turn frame 'T A to-the D' (turn ninety degrees to the left)":
        lambda t: t["intent"] == "turn" and t["frame"] == "T A to-the D",
    "move frame 'D by A' (forward by two meters)":
        lambda t: t["intent"] == "move" and t["frame"] == "D by A",
    "amount corrections with marker 'i mean'":
        lambda t: t["correction"] == "amount" and t["marker"] == "i mean",
    "stop phrase 'stop right now'":
        lambda t: t["phrase"] == "stop right now",
    "speed phrase 'go a little slower'":
        lambda t: t["phrase"] == "go a little slower",
    "opener 'could you' with closer 'please'":
        lambda t: t["opener"] == "could you" and t["closer"] == "please",
    "negation 'never' before a turn":
        lambda t: t.get("negation") == "never" and t["intent"] == "turn",
    "questions 'did you turn around', 'is your left wheel stuck'":
        lambda t: t.get("question") in ("did you turn around", "is your left wheel stuck"),
}
# Values never drawn in training (the digits are learned from other values): a separate slice.
HELD_OUT_VALUES = {"deg": (35, 75, 105, 150, 165, 250), "m": (7.5, 11.0, 2.3, 14.5, 65.0), "s": (4.5, 12.0)}
COMMON_DEGREES = (5, 10, 15, 20, 30, 45, 60, 90, 120, 135, 180, 270, 360)
# Shares of the utterance kinds in a draw (the rest are single commands).
KIND_WEIGHTS = {"command": 68, "two": 12, "negation": 8, "cancel": 5, "question": 7}


def held_out_rule(template: dict) -> str | None:
    """Name of the held-out rule the template matches, or None for a training template."""
    return next((name for name, rule in HELD_OUT_RULES.items() if rule(template)), None)


def _spoken(chunks: list[list[str]]) -> str:
    """Words with a comma between spoken chunks ("turn left, no, right")."""
    return ", ".join(" ".join(c) for c in chunks if c)


class Generator:
    """Seeded sampler of `Sample`s: commands (with corrections, two commands, durations, speeds),
    negations, cancels and questions, from the training or the held-out templates.

    split: "train" (never a held-out template or value), "heldout" (held-out templates only,
    training values), "values" (training templates, held-out values). `kinds` restricts the draw
    (e.g. ("negation", "cancel", "question") for a safety set).
    """

    def __init__(self, seed: int, split: str = "train", kinds: Iterable[str] | None = None):
        if split not in ("train", "heldout", "values"):
            raise ValueError(f"split: expected train, heldout or values, got {split!r}")
        self.rng = random.Random(seed)
        self.split = split
        self.kinds = tuple(kinds) if kinds else tuple(KIND_WEIGHTS)
        bad = set(self.kinds) - set(KIND_WEIGHTS)
        if bad:
            raise ValueError(f"kinds: expected some of {sorted(KIND_WEIGHTS)}, got {sorted(bad)}")

    def sample(self) -> Sample:
        while True:
            s = self._draw()
            rule = held_out_rule(s.template)
            uses_held_value = s.template.get("held_value", False)
            if self.split == "train" and (rule or uses_held_value):
                continue
            if self.split == "heldout" and (not rule or uses_held_value):
                continue
            if self.split == "values" and (rule or not uses_held_value):
                continue
            return s

    def samples(self, n: int) -> list[Sample]:
        return [self.sample() for _ in range(n)]

    # -- pieces ------------------------------------------------------------------------

    def _amount(self, unit: str, t: dict) -> tuple[float, list[tuple[str, str]]]:
        r = self.rng
        if self.split == "values":
            value = r.choice(HELD_OUT_VALUES[unit])
        elif unit == "deg":
            value = r.choice(COMMON_DEGREES) if r.random() < 0.6 else r.randint(1, 360)
        elif unit == "s":
            u = r.random()
            value = r.randint(1, 10) if u < 0.7 else r.randint(1, 60) if u < 0.85 else r.randint(0, 9) + 0.5
        else:
            u = r.random()
            value = r.randint(1, 20) if u < 0.45 else r.randint(21, 100) if u < 0.6 else \
                r.randint(0, 19) + 0.5 if u < 0.8 else round(r.randint(1, 200) / 10, 1) if u < 0.95 else \
                round(r.randint(201, 999) / 10, 1)
        if value == 0:
            value = 0.5
        if value in HELD_OUT_VALUES[unit]:
            t["held_value"] = True
        phrases = WORDS_OF_VALUE[value]
        if unit == "deg":  # whole degrees: no "point"/"half" phrases
            phrases = [p for p in phrases if "point" not in p and "half" not in p]
        elif len(phrases) > 1 and r.random() < 0.9:  # "two point zero" is rare speech
            phrases = [p for p in phrases if p[-2:] != ("point", "zero")] or phrases
        if unit != "deg":  # "one eighty meters" is not how distances are said
            phrases = [p for p in phrases if not (len(p) >= 2 and p[0] in ONES and p[1] in TEENS + TENS)] or phrases
        words = list(r.choice(phrases))
        if r.random() < 0.08 and len(words) > 1:  # "twenty uh five": a hesitation inside the number
            i = r.randint(1, len(words) - 1)
            words.insert(i, r.choice(HESITATIONS))
        out = [(w, "fill" if w in HESITATIONS else "num") for w in words]
        if r.random() < 0.88 or unit == "s":
            out.append((r.choice([w for w, u in UNITS.items() if u == unit and (w.endswith("s") or value == 1
                                                                              or words[0] == "half")]),
                        "unit"))
        return value, out

    def _direction(self, d: str) -> list[tuple[str, str]]:
        r = self.rng
        if d == "forward":
            words = r.choice((("forward",), ("forwards",), ("ahead",), ("straight",), ("straight", "ahead")))
        elif d == "back":
            words = r.choice((("back",), ("backward",), ("backwards",)))
        else:
            words = (d,)
        return [(w, "dir") for w in words]

    def _core(self, intent: str, t: dict):
        """(segments, Command): segments are (kind, [(word, tag)]) in spoken order."""
        r = self.rng
        if intent == "stop":
            phrase = r.choice(STOP_PHRASES)
            t["phrase"] = " ".join(phrase)
            return [("act", [(w, "stop" if w in STOP_WORDS else "fill") for w in phrase])], Command("stop")
        if intent in SPEED_PHRASES:
            phrases = SPEED_PHRASES[intent]
            if t.get("explicit"):
                phrases = [p for p in phrases if set(p) & set(SPEED_UP_WORDS + SLOW_DOWN_WORDS)]
            phrase = r.choice(phrases)
            t["phrase"] = " ".join(phrase)
            return [("act", [(w, "fill" if w in ("go", "a", "bit", "little", "up", "down") else "act")
                             for w in phrase])], Command(intent)
        if intent == "go":
            phrase = r.choice(GO_PHRASES)
            t["phrase"] = " ".join(phrase)
            return [("act", [(w, "act" if w in ("go", "ahead") else "fill") for w in phrase])], \
                Command("move", "forward")
        if intent == "wait":
            t["frame"] = "wait"
            if r.random() < 0.25:
                return [("verb", [("wait", "act")])], Command("wait")
            value, words = self._amount("s", t)
            segs = [("verb", [("wait", "act")])]
            if r.random() < 0.4:
                segs.append(("fill", [("for", "fill")]))
            return segs + [("amount", words)], Command("wait", amount=(value, "s"))
        frames = MOVE_FRAMES if intent == "move" else TURN_FRAMES
        frame = r.choice(frames)
        t["frame"] = frame
        d = r.choice(("forward", "back") if intent == "move" else ("left", "right"))
        if frame in ("backup A", "reverse A"):
            d = "back"
        cmd = Command(intent, d)
        segs = []
        for part in frame.split():
            if part == "V":
                segs.append(("verb", [(r.choice(MOVE_VERBS + ("go",) * 3), "act")]))
            elif part == "T":
                segs.append(("verb", [(r.choice(TURN_VERBS + ("turn",) * 3), "act")]))
            elif part == "D":
                segs.append(("dir", self._direction(d)))
            elif part == "A":
                value, words = self._amount(DEFAULT_UNIT[intent], t)
                cmd.amount = (value, DEFAULT_UNIT[intent])
                segs.append(("amount", words))
            elif part == "S":
                value, words = self._amount("s", t)
                cmd.amount = (value, "s")
                segs.append(("amount", words))
            elif part == "M":
                word = r.choice(tuple(SPEED_MODIFIERS))
                cmd.speed = SPEED_MODIFIERS[word]
                segs.append(("speed", [(word, "act")]))
            elif part == "around":
                cmd.direction, cmd.amount = None, (180.0, "deg")
                segs.append(("dir", [("around", "dir")]))
            elif part == "to-the":
                segs.append(("fill", [("to", "fill"), ("the", "fill")]))
            elif part == "by":
                segs.append(("fill", [(r.choice(("by", "for")), "fill")]))
            elif part == "for":
                segs.append(("fill", [("for", "fill")]))
            elif part == "backup":
                segs.append(("dir", [("back", "dir"), ("up", "fill")]))
            elif part == "reverse":
                segs.append(("dir", [("reverse", "dir")]))
        if "A" in frame.split() and r.random() < 0.2 and frame not in ("backup A", "reverse A"):
            # amount optional: "move forward" / "turn left" without a number
            segs = [s for s in segs if s[0] != "amount"]
            cmd.amount = None
            if segs and segs[-1][0] == "fill" and segs[-1][1][0][0] in ("by", "for"):
                segs.pop()
        return segs, cmd

    def _intent(self) -> str:
        return self.rng.choices(ACTIONS + ("go",), weights=(33, 33, 12, 7, 7, 4, 4))[0]

    def _command(self, t: dict, allow_corrections: bool = True):
        """One command with its optional correction: (segments, Command)."""
        r = self.rng
        intent = self._intent()
        t.setdefault("intent", intent)
        segs, cmd = self._core(intent, t)
        correction = "none"
        if allow_corrections:
            if intent in ("move", "turn"):
                correction = r.choices(CORRECTIONS, weights=(55, 13, 15, 9, 8))[0]
            elif r.random() < 0.15:
                correction = "action"
        marker = r.choice(CORRECTION_MARKERS)
        kinds = [k for k, _ in segs]
        words = [w for _, ws in segs for w, _ in ws]
        if correction == "direction" and "dir" in kinds and "reverse" not in words and "around" not in words \
                and cmd.direction:
            k = kinds.index("dir")
            new_d = {"forward": "back", "back": "forward", "left": "right", "right": "left"}[cmd.direction]
            new_seg = ("dir", self._direction(new_d))
            cut = k + 1 if r.random() < 0.6 else len(segs)  # correct right away, or at the end
            segs = segs[:cut] + [("mark", [(w, "mark") for w in marker]), new_seg] + segs[cut:]
            cmd.direction = new_d
        elif correction == "amount" and "amount" in kinds and cmd.amount and "around" not in words:
            k = kinds.index("amount")
            unit = cmd.amount[1]
            for _ in range(10):
                value, words = self._amount(unit, t)
                if value != cmd.amount[0]:
                    break
            cut = k + 1 if r.random() < 0.6 else len(segs)
            segs = segs[:cut] + [("mark", [(w, "mark") for w in marker]), ("amount", words)] + segs[cut:]
            cmd.amount = (value, unit)
        elif correction == "action":
            # to an action its own word says ("go", "wait" and "slowly" read as corrections of the first)
            other = r.choice([a for a in ("move", "turn", "stop", "speed up", "slow down") if a != intent])
            t2 = dict(t, explicit=True)
            new_segs, new_cmd = self._core(other, t2)
            t["held_value"] = t2.get("held_value", False) or t.get("held_value", False)
            keep = segs[:r.randint(1, len(segs))]
            segs = keep + [("mark", [(w, "mark") for w in marker])] + new_segs
            cmd = new_cmd
            t["to"] = other
        elif correction == "stop":  # "go forward, uh, stop": stop interrupts without a marker
            keep = segs[:r.randint(1, len(segs))]
            segs = keep + [("act", [(r.choice(STOP_WORDS), "stop")])]
            cmd = Command("stop")
            marker = None
        else:
            correction, marker = "none", None
        t.setdefault("correction", correction)
        t.setdefault("marker", " ".join(marker) if marker else None)
        return segs, cmd

    def _tagged(self, segs) -> tuple[list[tuple[str, str]], list[list[str]]]:
        """Words with tags (a hesitation or unknown word sometimes between parts) and spoken chunks."""
        r = self.rng
        tagged, chunks = [], [[]]
        unknown = 0  # at most one per utterance: the second strange word voids it (Teacher)
        for i, (kind, words) in enumerate(segs):
            if i and r.random() < 0.08:
                after_go = tagged and tagged[-1][0] == "go"  # "go banana forward": strange before any command
                pool = HESITATIONS + UNKNOWN_WORDS[:3] if r.random() < 0.3 and not unknown and not after_go \
                    else HESITATIONS
                tagged.append((r.choice(pool), "fill"))
                unknown += tagged[-1][0] in UNKNOWN_WORDS
                chunks[-1].append(tagged[-1][0])
            if kind in ("mark", "then"):  # a pause before a correction or "then", and after a marker
                chunks.append([])
            tagged += words
            chunks[-1] += [w for w, _ in words]
            if kind == "mark":
                chunks.append([])
        return tagged, chunks

    def _draw(self) -> Sample:
        r = self.rng
        kind = r.choices(self.kinds, weights=[KIND_WEIGHTS[k] for k in self.kinds])[0]
        t = {"kind": kind, "frame": None, "phrase": None}
        cancelled = False
        if kind == "question":
            q = r.choice(QUESTIONS)
            t.update(intent="question", question=q, correction="none", marker=None)
            words = q.split()
            segs = [("q", [(w, "fill") for w in words])]
            meaning = "stop" if any(w in STOP_WORDS for w in words) else ""
        elif kind == "negation":
            neg = r.choice(NEGATION_OPENERS)
            t.update(negation=" ".join(neg), correction="none", marker=None)
            if r.random() < 0.3:  # "don't move", "do not turn"
                verb = r.choice(("move", "turn", "go", "move forward", "turn left", "turn right", "go back"))
                t["intent"] = "turn" if verb.startswith("turn") else "move"
                core = [("verb", [(w, "act") for w in verb.split()])]
            else:
                intent = r.choice(("move", "turn", "wait"))
                t["intent"] = intent
                core, _ = self._core(intent, t)
            segs = [("neg", [(w, "neg") for w in neg])] + core
            meaning, cancelled = "", True
            if r.random() < 0.2:  # "don't turn left, sorry, turn right": a marker restarts
                marker = r.choice(CORRECTION_MARKERS[:2] + CORRECTION_MARKERS[5:6])
                new_segs, cmd = self._core(r.choice(("move", "turn")), t)
                segs += [("mark", [(w, "mark") for w in marker])] + new_segs
                meaning, cancelled = cmd.text(), False
        elif kind == "cancel":
            phrase = r.choice(CANCEL_PHRASES)
            t.update(cancel=" ".join(phrase), correction="none", marker=None)
            if r.random() < 0.7:
                core, cmd = self._command(t, allow_corrections=False)
                while cmd.action == "stop":  # a stop is never taken back (Teacher): not a cancel sample
                    t = {k: v for k, v in t.items() if k in ("kind", "frame", "phrase", "cancel", "correction",
                                                             "marker")}
                    core, cmd = self._command(t, allow_corrections=False)
                segs = core + [("mark", [(w, "neg") for w in phrase])]
            else:
                t["intent"] = "cancel"
                segs = [("neg", [(w, "neg") for w in phrase])]
            meaning, cancelled = "", True
            if any(w in STOP_WORDS for _, ws in segs for w, _ in ws):
                meaning, cancelled = "stop", False  # a stop word still stops: nothing cancels it
        elif kind == "two":
            while True:  # two commands neither of which stops (a stop replaces both: a command sample)
                t = {"kind": kind, "frame": None, "phrase": None}
                first, c1 = self._command(t, allow_corrections=False)
                t2 = {}
                second, c2 = self._command(t2, allow_corrections=r.random() < 0.3)
                said = {w for _, ws in first + second for w, _ in ws}
                if not said & set(STOP_WORDS):
                    break
            joiner = r.choice((("then",), ("then",), ("and", "then")))
            t["joiner"] = " ".join(joiner)
            t["held_value"] = t.get("held_value", False) or t2.get("held_value", False)
            segs = first + [("then", [(w, "fill") for w in joiner])] + second
            if c2.action == "stop" or c1.action == "stop":
                meaning = "stop"  # stop replaces every command of the utterance
            else:
                meaning = f"{c1.text()} then {c2.text()}"
        else:
            segs, cmd = self._command(t)
            meaning = cmd.text()
        t.setdefault("intent", None)
        t.setdefault("correction", "none")
        t.setdefault("marker", None)

        opener = r.choice(OPENERS) if r.random() < 0.5 and kind != "question" else ()
        closer = r.choice(CLOSERS) if r.random() < 0.3 and kind not in ("question", "cancel") else ()
        t["opener"], t["closer"] = " ".join(opener), " ".join(closer)
        tagged, chunks = self._tagged(segs)
        tagged = [(w, "fill") for w in opener] + tagged + [(w, "fill") for w in closer]
        if opener and opener[-1] in ("robot", "okay", "alright", "so", "well", "hey"):
            chunks = [list(opener)] + chunks  # a vocative or discourse opener: a pause after it
        elif chunks:
            chunks[0] = list(opener) + chunks[0]  # "can you turn left", "please turn left"
        chunks[-1] = chunks[-1] + list(closer)
        words = [w for w, _ in tagged]
        sample = Sample(words=words, command=meaning, spoken=_spoken(chunks), kind=kind, cancelled=cancelled,
                        template=t, tags=[g for _, g in tagged])
        label(sample)
        return sample


def label(sample: Sample, check: bool = True) -> Sample:
    """Fill `targets`/`final` from the Teacher; with `check`, fail when the teacher's meaning differs."""
    teacher = Teacher()
    sample.targets = [teacher.push(w) for w in sample.words]
    sample.final = teacher.end()
    got = fold([t for ts in sample.targets for t in ts] + sample.final)
    if check and (got.text() != sample.command or (sample.cancelled and not got.cancelled)):
        raise AssertionError(f"teacher parsed {sample.text!r} as {got.text()!r} (cancelled {got.cancelled}), "
                             f"generator meant {sample.command!r} (cancelled {sample.cancelled})")
    return sample


# ----- speech that is not a command -------------------------------------------------------

FORTUNE_FILE = Path(__file__).with_name("fortune_sentences.txt")  # see _fortune_sentences
# Conversation near a robot that uses command words without commanding ({x}: filled from SLOT_WORDS).
CONVERSATION = (
    "i left my {obj} in the {place}", "the {obj} is on the left", "the {place} is on your right",
    "you are right about that", "that is the right {obj}", "we went back to the {place} yesterday",
    "i will be back in two minutes", "she turned around and smiled", "there is nothing left to eat",
    "he drove to the {place} and back", "go ahead and take the {obj}", "can you pass me the {obj}",
    "it takes about ten minutes to walk there", "i think we should move the {obj} later",
    "let's meet at the {place} at four", "turn off the {obj} when you leave", "the {obj} is broken again",
    "my {obj} is three meters long", "the game starts at seven thirty", "i was right there with him",
    "is it going to rain today", "what time is it", "thanks for the {obj}", "we need two more {obj}s",
    "the {place} is straight down the hall", "i can't find my {obj}", "right now i am busy",
    "she walked for twenty minutes", "do you want some coffee", "they moved to a new {place}",
    "hold on a second", "where is the {obj}", "that was fast", "the {obj} is too slow",
    "i mean it was a good day", "no i don't think so", "okay see you later", "the temperature is ninety degrees",
    "it costs fifty dollars", "please sit down", "he is never on time", "you can't turn back time",
    "i want to go home", "the {obj} fell on the floor", "we should speed up the project",
    "the meeting is at half past two", "my left hand hurts", "keep left at the fork",
    "it was a hundred years ago", "the train leaves in five minutes", "can you hear me",
    "i'll be right back", "let me think about it", "the {place} was closed", "wait for me at the {place}",
    "read the first two pages", "he left early", "the car turned left at the corner",
)
SLOT_WORDS = {"obj": ("keys", "phone", "cup", "book", "bag", "chair", "lamp", "remote", "box", "laptop"),
              "place": ("kitchen", "office", "garden", "station", "shop", "park", "garage", "hallway")}


def _fortune_sentences() -> list[str]:
    """Sentences read aloud that are not commands: plain words, 3-30 of them, committed beside this
    file (extracted once from Debian fortunes-min by `python -m export.command_data --fortunes`), so
    every machine trains and scores on the same set whatever it has installed."""
    return FORTUNE_FILE.read_text().splitlines()


def _conversation() -> list[str]:
    out = []
    for template in CONVERSATION:
        slots = re.findall(r"\{(\w+)\}", template)
        if not slots:
            out.append(template)
            continue
        # Every value of the first slot; later slots cycle through theirs alongside it.
        for i, v in enumerate(SLOT_WORDS[slots[0]]):
            s = template.replace("{" + slots[0] + "}", v)
            for slot in slots[1:]:
                values = SLOT_WORDS[slot]
                s = s.replace("{" + slot + "}", values[i % len(values)], 1)
            out.append(s)
    return out


def non_command_sentences(split: str = "train", source: str = "all") -> list[str]:
    """Lower-case sentences that are not commands, in a fixed order: `source` 'fortunes'
    (sentences of Debian fortunes-min, committed), 'conversation' (generated from
    CONVERSATION) or 'all'. split 'train' or 'heldout': a fixed 20% of each source is held out
    (by a hash of the sentence, so it stays put when the texts grow)."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split: expected train or heldout, got {split!r}")
    if source not in ("fortunes", "conversation", "all"):
        raise ValueError(f"source: expected fortunes, conversation or all, got {source!r}")
    pool = (_fortune_sentences() if source in ("fortunes", "all") else []) + \
        (_conversation() if source in ("conversation", "all") else [])
    want = 1 if split == "heldout" else 0
    return [s for s in pool if (zlib.crc32(s.encode()) % 5 == 0) == bool(want)]


def non_command_sample(sentence: str) -> Sample:
    """A non-command sentence as a labelled Sample (targets from the Teacher; its meaning is
    what the Teacher finds: '' for nearly all, 'stop' when a stop word is said)."""
    words = sentence.split()
    template = {"kind": "noncommand", "intent": None, "frame": None, "phrase": None, "correction": "none",
                "marker": None, "opener": "", "closer": ""}
    s = Sample(words=words, command="", spoken=sentence, kind="noncommand", template=template,
               tags=["fill"] * len(words))
    label(s, check=False)
    s.command = fold([t for ts in s.targets for t in ts] + s.final).text()
    return s


# ----- the output grammar (constrained decoding) -----------------------------------------

def output_grammar(token_id: dict[str, int]) -> str:
    """The parser's whole token sequence as a Lark grammar: each token is its string + " " as a
    literal (`token_bytes`: word-level tokens carry no spaces, so the space delimits them). `<bos>`, then per heard word its emission and `<wait>`, then `<eou>`, the last
    emission and `<end>`. An emission is nothing, `cancel`/`void`, or an optional `<fix>`/`<then>`,
    an optional action and fields the current action allows: a direction of its kind, an amount in
    its units and range (`MAX_VALUE`: metres <= 100.0, degrees 1-360 whole, seconds <= 60.0), a
    speed. The current action is carried from word to word (one rule per action context), so a
    field can never take a value the grammar does not allow ("move right", "turn 666 deg")."""
    import json

    def tok(t: str) -> str:
        if t not in token_id:
            raise KeyError(f"output grammar: token {t!r} is not in the parser's vocabulary")
        return json.dumps(token_bytes(t).decode())

    def ids(tokens) -> str:
        return "(" + " | ".join(tok(t) for t in tokens) + ")"

    words = [w for w in SPOKEN_WORDS if w in token_id] + [UNK]
    d, p = [str(i) for i in range(10)], ["##" + str(i) for i in range(10)]
    dot = tok("##.")
    lines = [
        # no_forcing: our tokens are whole words, not byte pieces; llguidance must not fast-forward
        # a forced byte prefix ("##" of every number piece) and mask relative to it.
        '%llguidance {"no_forcing": true}',
        f"start: {tok(BOS)} s_n",
        f"word: {ids(words)}",
        f"pre: {ids([FIX, THEN])}",
        f"dec: {dot} {ids(p)}",
        f"metres: ({ids(d)} | {ids(d[1:])} {ids(p)}) dec | {tok('1')} {tok('##0')} {tok('##0')} {dot} {tok('##0')}",
        f"seconds: ({ids(d)} | {ids(d[1:6])} {ids(p)}) dec | {tok('6')} {tok('##0')} {dot} {tok('##0')}",
        (f"degrees: {ids(d[1:])} | {ids(d[1:])} {ids(p)} | {ids(d[1:3])} {ids(p)} {ids(p)}"
         f" | {tok('3')} {ids(p[:6])} {ids(p)} | {tok('3')} {tok('##6')} {tok('##0')}"),
        f"speed: {ids(SPEED_TOKENS)}",
        # Fields of a command in the Teacher's order (direction, amount, speed), each at most once
        # per emission: an emission is then at most 10 tokens, inside the parser's 12.
        f"d_m: {ids(DIRECTIONS_OF_ACTION['move'])}",
        f"n_m: metres {tok('m')} | seconds {tok('s')}",
        f"d_t: {ids(DIRECTIONS_OF_ACTION['turn'])}",
        f"n_t: degrees {tok('deg')} | seconds {tok('s')}",
        "f_m: d_m n_m? speed? | n_m speed? | speed",
        "f_t: d_t n_t? speed? | n_t speed? | speed",
        f"f_w: seconds {tok('s')}",
        f"a_m: {tok('move')}",
        f"a_t: {tok('turn')}",
        f"a_w: {tok('wait')}",
        f"a_o: {tok('stop')} | {tok('speed')} {tok('up')} | {tok('slow')} {tok('down')}",
        f"drop: {ids([CANCEL, VOID])}",
    ]
    contexts = {"n": None, "m": "f_m", "t": "f_t", "w": "f_w", "o": None}
    for x, fx in contexts.items():
        # emissions from context x, each with the context it leaves: (rule text, next context)
        options = [("", x), ("drop", "n")]
        if fx:
            options.append((f"pre? {fx}", x))
        for y, fy in contexts.items():
            if y != "n":
                options.append((f"pre? a_{y}" + (f" {fy}?" if fy else ""), y))
        alts = [f"word {e} {tok(WAIT)} s_{y}".replace("  ", " ") for e, y in options]
        alts += [f"{tok(EOU)} {e} {tok(END)}".replace("  ", " ") for e, _ in options]
        lines.append(f"s_{x}: " + "\n    | ".join(alts))
    return "\n".join(lines) + "\n"


def token_bytes(token: str) -> bytes:
    """A token's bytes as `output_grammar` spells it (the constrained decoder's tokenizer view): the
    token then a space (a leading space defeated llguidance 1.9's token-mask walk), angle brackets
    as braces (its Lark reads "<...>" as token syntax)."""
    return (token.replace("<", "{").replace(">", "}") + " ").encode()
