"""Spoken robot commands as values: the parser's output tokens, the `Command` they describe, and
`fold`/`apply_tokens`, which turn a token stream into commands. No model and no grammar rules
(those are edge_stream/voice/grammar.py); both the grammar and the parser build on this module.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from edge_stream.errors import InputError  # noqa: F401 (kept for callers importing it from here)

log = logging.getLogger(__name__)

BOS, UNK, WAIT, EOU, END, FIX = "<bos>", "<unk>", "<wait>", "<eou>", "<end>", "<fix>"
THEN, CANCEL, VOID = "<then>", "cancel", "void"  # next command / the speaker cancelled / not a command
DIGIT_TOKENS = tuple("0123456789")
PIECE_PREFIX = "##"  # a number's later characters: "2 ##. ##0" is "2.0"
ACTION_WORDS = {"move": "move", "turn": "turn", "stop": "stop", "speed": "speed up", "slow": "slow down",
                "wait": "wait"}
DIRECTION_WORDS = ("forward", "back", "left", "right")
UNIT_WORDS = ("m", "deg", "s")
SPEED_WORDS = ("slowly", "fast")
MAX_FIELD_TOKENS = 12  # the output grammar allows at most 10 per emission ("<then> move back 1 ##0 ##0 ##. ##0 m fast")


def format_amount(value: float, unit: str) -> str:
    """'2.0' for metres and seconds (one decimal always), '90' for whole degrees."""
    if unit == "deg" and float(value).is_integer():
        return str(int(value))
    return f"{value:.1f}"


@dataclass
class Command:
    """The structured command: an action, and for move/turn a direction and an amount."""

    action: str | None = None
    direction: str | None = None
    amount: tuple | None = None  # (value, unit): (2.0, "m"), (90.0, "deg"), (2.0, "s") a duration
    speed: str | None = None  # "slowly" | "fast" (move and turn)

    def text(self) -> str:
        """'move forward 2.0 m', 'turn left', 'stop', 'move forward 2.0 s fast', ... ('' when nothing was determined)."""
        if self.action is None:
            return ""
        parts = [self.action]
        if self.direction:
            parts.append(self.direction)
        if self.amount:
            parts.append(f"{format_amount(*self.amount)} {self.amount[1]}")
        if self.speed:
            parts.append(self.speed)
        return " ".join(parts)

    def as_dict(self) -> dict:
        """The command's fields for a message: action, direction, amount, unit, speed (None when absent)."""
        amount, unit = self.amount if self.amount else (None, None)
        return {"action": self.action, "direction": self.direction, "amount": amount, "unit": unit,
                "speed": self.speed}


@dataclass
class Parse:
    """What an utterance's tokens mean: its commands in order (none when it meant none), and
    whether the speaker cancelled (`cancel`) or the words were not a command after all (`void`)."""

    commands: list = field(default_factory=list)  # [Command], only those with an action
    cancelled: bool = False
    void: bool = False

    def text(self) -> str:
        """'' (no command), 'turn left 90 deg', or 'turn left then move forward 2.0 m'."""
        return " then ".join(c.text() for c in self.commands)

    @property
    def first(self) -> Command:
        """The first command (an empty Command when there is none): what a v1 controller reads."""
        return self.commands[0] if self.commands else Command()


def fold(tokens) -> Parse:
    """Fold an utterance's output tokens into its `Parse` (commands in order, cancelled, void).

    `<then>` starts the next command; `stop` replaces every command (stop has priority);
    `cancel` / `void` drop every command so far; an action after them starts afresh. Within a
    command a field overwrites the field of its kind and a different action starts a new command
    in its place (`apply_tokens`). Tokens that are not output tokens are skipped."""
    cmds, cancelled, void = [Command()], False, False
    part: list[str] = []

    def flush():
        if part:
            apply_tokens(part, cmds[-1])
            part.clear()

    for tok in tokens:
        if tok == THEN:
            flush()
            if cmds[-1].action is not None:
                cmds.append(Command())
        elif tok in (CANCEL, VOID):
            part.clear()
            cmds, cancelled, void = [Command()], tok == CANCEL, tok == VOID
        elif tok == "stop":
            part.clear()
            cmds, cancelled, void = [Command("stop")], False, False
        else:
            if tok in ACTION_WORDS:
                cancelled = void = False
            part.append(tok)
    flush()
    return Parse([c for c in cmds if c.action is not None], cancelled, void)


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
                cmd.action, cmd.direction, cmd.amount, cmd.speed = action, None, None, None
        elif tok in DIRECTION_WORDS:
            cmd.direction = tok
        elif tok in SPEED_WORDS:
            cmd.speed = tok
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


