"""The spoken-command grammar: which words mean which command fields, and when each field is settled.

Run-time rules, no model and no training code: the streaming parser's training targets
(export/command_data.py) and the voice tools' reference commands (`command_of`) both come
from here, so what the parser is taught and what it is scored against cannot drift apart.

Each utterance is lower-case words as a recognizer hears them (fillers, hesitations,
numbers as words, corrections); it means a structured command (`move forward 2.0 m`,
`turn left 90 deg`, `stop`, `speed up`, `slow down`). `Teacher`, a rule-based incremental
parser, emits a field the moment the words so far determine it (prefix-to-prefix: wait-k
with k adapting per field).

Output token stream:
    action   move | turn | stop | speed up | slow down
    direction forward | back | left | right
    amount   digits then unit: `2 ##. ##0 m`, `9 ##0 deg` (decodes to "2.0 m", "90 deg")
    <fix>    the fields after it overwrite fields already emitted
Emission rules: an action or direction the moment its word is heard ("stop" included:
lag 0); "go" waits for the next word (go forward / go faster); an amount as soon as its
number phrase is settled: on its last word when no word can continue it ("forty five",
"two and a half"), else at the first later word that cannot continue it (the unit, a
filler, a correction marker) or at the end of the utterance ("twenty" may become
"twenty five"); hesitations (uh, um) inside a number do not end it.
Corrections: a marker (no, sorry, i mean, actually, ...) then restated fields; a restated
field that differs from one already emitted is preceded by <fix>; restating another action
starts a new command (direction and amount cleared).
`edge_stream.voice.command_parser.apply_tokens` folds a token stream into the command.
"""

from __future__ import annotations

from typing import Iterable

from edge_stream.voice.command_parser import BOS, DIGIT_TOKENS, END, EOU, FIX, UNK, WAIT, Command, format_amount

# ----- vocabulary ------------------------------------------------------------------------

# <wait>: "nothing more until the next word"; <eou>: fed at the end of an utterance;
# <end>: the model's answer to <eou> once the last fields are out.
PAD = "<pad>"
SPECIALS = (PAD, BOS, UNK, WAIT, EOU, END)  # hidden when decoding; <fix> stays visible

HESITATIONS = ("uh", "um", "er", "hmm")
FILLERS = ("okay", "robot", "hey", "please", "now", "the", "to", "by", "for", "just", "can", "you",
           "could", "i", "want", "alright", "so", "thanks", "thank", "bit", "little", "there",
           "moving", "it", "again", "then", "emergency", "immediately", "up", "down", "a")
MARKERS = ("no", "sorry", "wait", "mean", "actually", "oops")
STOP_WORDS = ("stop", "halt", "freeze")
MOVE_VERBS = ("move", "drive", "walk", "head", "roll", "travel")
TURN_VERBS = ("turn", "rotate", "spin", "pivot")
SPEED_UP_WORDS = ("faster", "speed", "accelerate", "hurry")
SLOW_DOWN_WORDS = ("slower", "slow", "decelerate")
DIRECTIONS = {"forward": "forward", "forwards": "forward", "ahead": "forward", "straight": "forward",
              "back": "back", "backward": "back", "backwards": "back", "left": "left", "right": "right"}
UNITS = {"meter": "m", "meters": "m", "metre": "m", "metres": "m", "degree": "deg", "degrees": "deg"}
ONES = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEENS = ("ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
         "eighteen", "nineteen")
TENS = ("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
DIGIT_WORDS = ("zero",) + ONES
NUMBER_WORDS = DIGIT_WORDS + TEENS + TENS + ("hundred", "point", "and", "a", "half")

ACTIONS = ("move", "turn", "stop", "speed up", "slow down")
ACTION_TOKENS = {"move": ["move"], "turn": ["turn"], "stop": ["stop"], "speed up": ["speed", "up"],
                 "slow down": ["slow", "down"]}
UNIT_OF_ACTION = {"move": "m", "turn": "deg"}
ACTION_OF_DIRECTION = {"forward": "move", "back": "move", "left": "turn", "right": "turn"}
NUMBER_TOKENS = DIGIT_TOKENS + tuple("##" + c for c in "0123456789.")  # first digit, then glued "##" pieces
OUTPUT_TOKENS = ("move", "turn", "stop", "speed", "up", "slow", "down", "forward", "back", "left", "right",
                 "m", "deg", FIX) + NUMBER_TOKENS

INPUT_WORDS = tuple(sorted(set(HESITATIONS + FILLERS + MARKERS + STOP_WORDS + MOVE_VERBS + TURN_VERBS
                               + SPEED_UP_WORDS + SLOW_DOWN_WORDS + tuple(DIRECTIONS) + tuple(UNITS)
                               + NUMBER_WORDS + ("go", "reverse"))))
# Words a recognizer may produce that mean nothing here; the model sees them as <unk>.
UNKNOWN_WORDS = ("banana", "table", "blue", "hello", "what", "kitchen", "yes", "maybe", "door", "light")


def vocabulary() -> list[str]:
    """Token strings in id order: specials, then output tokens, then input-only words."""
    seen = list(SPECIALS) + list(OUTPUT_TOKENS)
    return seen + [w for w in INPUT_WORDS if w not in seen]


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
    """Every number phrase of the grammar and its value: 1-360, 'a hundred and
    twenty', decimals 'two point five' / 'point five' (0-20), halves 'two and a half'."""
    out: dict[tuple, float] = {}
    small = dict(_below_100())
    out.update(small)
    for lead, h in ((("a",), 100), (("one",), 100), (("two",), 200), (("three",), 300)):
        out[lead + ("hundred",)] = h
        for words, v in small.items():
            if h + v <= 360:
                out[lead + ("hundred",) + words] = h + v
                out[lead + ("hundred", "and") + words] = h + v
    ints_to_20 = {w: v for w, v in small.items() if v <= 20}
    for d, dw in enumerate(DIGIT_WORDS):
        out[("point", dw)] = d / 10
        out[("zero", "point", dw)] = d / 10
        for words, v in ints_to_20.items():
            out[words + ("point", dw)] = v + d / 10
    for words, v in ints_to_20.items():
        out[words + ("and", "a", "half")] = v + 0.5
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

class Teacher:
    """Rule-based incremental parser: the emission targets the model is trained on.

    `push(word)` returns the output tokens that word determines; `end()` those
    the end of the utterance determines. See the module docstring for the rules.
    """

    def __init__(self):
        self.cmd = Command()  # what the words so far mean
        self.out = Command()  # what the emitted tokens mean
        self.pending: list[str] = []  # number words not yet ended
        self.held: float | None = None  # an ended number whose unit waits for the action ("go two ...")
        self.stopped = False  # after "stop", words are ignored until a correction marker
        self.go = False  # "go" heard: the next action word decides (go forward / go faster)

    def push(self, word: str) -> list[str]:
        if self.pending:
            if word in HESITATIONS:
                return []
            if tuple(self.pending + [word]) in NUMBER_PREFIXES:
                self.pending.append(word)
                if tuple(self.pending) not in FINAL_PHRASES:
                    return []
                self._end_number(None)  # "forty five": nothing can follow, the amount is settled
                return self._emit()
            self._end_number(UNITS.get(word))
            if word in UNITS:
                return self._emit()
        if word in STOP_WORDS:
            self._set_action("stop")
            self.stopped = True
        elif word in MARKERS:
            self.stopped = False
        elif self.stopped:
            pass
        elif word == "go":
            self.go = self.cmd.action != "move"
        elif word in MOVE_VERBS:
            self._set_action("move")
        elif word == "reverse":
            self._set_action("move")
            self.cmd.direction = "back"
        elif word in TURN_VERBS:
            self._set_action("turn")
        elif word in SPEED_UP_WORDS:
            self._set_action("speed up")
        elif word in SLOW_DOWN_WORDS:
            self._set_action("slow down")
        elif word in DIRECTIONS:
            d = DIRECTIONS[word]
            self._set_action(ACTION_OF_DIRECTION[d])
            self.cmd.direction = d
        elif word in UNITS and self.held is not None:  # "go forty five meters": the unit says move
            self._set_action("move" if UNITS[word] == "m" else "turn")
        elif (word,) in NUMBER_PREFIXES:
            self.pending = [word]
            if (word,) in FINAL_PHRASES:
                self._end_number(None)
        return self._emit()

    def end(self) -> list[str]:
        if self.pending:
            self._end_number(None)
        return self._emit()

    def _set_action(self, action: str) -> None:
        self.go = False
        if self.cmd.action != action:
            self.cmd = Command(action)

    def _end_number(self, unit: str | None) -> None:
        words, self.pending = tuple(self.pending), []
        if words not in NUMBERS:  # "a" of "a bit": never a number
            return
        if unit is not None and UNIT_OF_ACTION.get(self.cmd.action) != unit:
            self._set_action("move" if unit == "m" else "turn")  # "go two meters": the unit says move
        if self.go:  # "turn, no, go two ...": the unit waits for the new action
            self.held = NUMBERS[words]
        elif self.cmd.action in UNIT_OF_ACTION:
            self.cmd.amount, self.held = (NUMBERS[words], UNIT_OF_ACTION[self.cmd.action]), None
        elif self.cmd.action is None:
            self.held = NUMBERS[words]

    def _emit(self) -> list[str]:
        c, o = self.cmd, self.out
        if self.held is not None and c.action in UNIT_OF_ACTION and not self.go:
            c.amount, self.held = (self.held, UNIT_OF_ACTION[c.action]), None
        tokens, fix = [], False
        if c.action is not None and c.action != o.action:
            fix |= o.action is not None
            tokens += ACTION_TOKENS[c.action]
            o.action, o.direction, o.amount = c.action, None, None
        if c.direction is not None and c.direction != o.direction:
            fix |= o.direction is not None
            tokens.append(c.direction)
            o.direction = c.direction
        if c.amount is not None and c.amount != o.amount:
            fix |= o.amount is not None
            tokens += amount_tokens(*c.amount)
            o.amount = c.amount
        return [FIX] + tokens if fix else tokens


def command_of(words: Iterable[str]) -> Command:
    """The command a whole utterance means by the grammar (the Teacher's final fields)."""
    t = Teacher()
    for w in words:
        t.push(w)
    t.end()
    return t.out
