"""Synthetic spoken robot commands with word-aligned streaming targets (seeded): the command
parser's training and evaluation data.

Each sample is what a recognizer would hear (lower-case words: fillers, hesitations,
numbers as words, corrections) plus the structured command it means and, for every word,
the output tokens a streaming parser should emit right after hearing it. The grammar, its
vocabulary and the rule-based incremental parser that produces those targets (`Teacher`)
live in edge_stream.voice.grammar, which the run-time voice tools share; this module adds
the templates, the seeded `Generator`, labelling, training sequences and the tokenizer
built from the grammar's vocabulary. The generator checks that the teacher's final
command equals the command it meant, for every sample.

The grammar's names are re-exported here (training scripts and tests import them from
this module).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from edge_stream.voice.command_parser import (  # noqa: F401 (re-exported)
    BOS, END, EOU, FIX, UNK, WAIT, Command, apply_tokens, format_amount,
)
from edge_stream.voice.grammar import (  # noqa: F401 (re-exported)
    ACTION_OF_DIRECTION, ACTION_TOKENS, ACTIONS, DIGIT_TOKENS, DIGIT_WORDS, DIRECTIONS, FILLERS, FINAL_PHRASES,
    HESITATIONS, INPUT_WORDS, MARKERS, MOVE_VERBS, NUMBER_PREFIXES, NUMBER_TOKENS, NUMBER_WORDS, NUMBERS, ONES,
    OUTPUT_TOKENS, PAD, SLOW_DOWN_WORDS, SPECIALS, SPEED_UP_WORDS, STOP_WORDS, TEENS, TENS, TURN_VERBS, UNIT_OF_ACTION,
    UNITS, UNKNOWN_WORDS, WORDS_OF_VALUE, Teacher, amount_tokens, number_phrases, vocabulary,
)


def build_tokenizer():
    """A WordLevel `tokenizers.Tokenizer` over `vocabulary()`: one word, one token.

    Number pieces decode glued (WordPiece "##" decoder), so TextDeltas shows
    "turn left 90 deg"; unknown words become <unk>.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tok.add_special_tokens([AddedToken(s, special=True) for s in SPECIALS])
    tok.add_tokens([AddedToken(FIX, special=False)])
    return tok


# ----- the generator ---------------------------------------------------------------------

@dataclass
class Sample:
    """One utterance: words, the command meant, per-word targets and the template it came from."""

    words: list[str]
    command: str
    targets: list[list[str]] = field(default_factory=list)  # tokens emitted after each word
    final: list[str] = field(default_factory=list)  # tokens emitted at the end of the utterance
    template: dict = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)  # role of each word: act dir num unit stop mark fill

    @property
    def text(self) -> str:
        return " ".join(self.words)


MOVE_FRAMES = ("V D", "V D A", "V D by A", "V A D", "D A", "D by A", "backup A", "reverse A")
TURN_FRAMES = ("T D", "T D A", "T to-the D", "T to-the D A", "T A D", "T A to-the D", "D A", "T D by A")
STOP_PHRASES = (("stop",), ("halt",), ("freeze",), ("stop", "now"), ("stop", "right", "there"),
                ("stop", "right", "now"), ("stop", "stop"), ("stop", "moving"), ("emergency", "stop"),
                ("stop", "the", "robot"), ("stop", "it"), ("halt", "immediately"))
SPEED_PHRASES = {
    "speed up": (("faster",), ("go", "faster"), ("speed", "up"), ("a", "bit", "faster"),
                 ("a", "little", "faster"), ("accelerate",), ("hurry", "up"), ("go", "a", "bit", "faster"),
                 ("go", "a", "little", "faster")),
    "slow down": (("slower",), ("go", "slower"), ("slow", "down"), ("a", "bit", "slower"),
                  ("a", "little", "slower"), ("decelerate",), ("go", "a", "bit", "slower"),
                  ("go", "a", "little", "slower")),
}
OPENERS = ((), ("okay", "robot"), ("hey", "robot"), ("robot",), ("okay",), ("please",), ("can", "you"),
           ("could", "you"), ("i", "want", "you", "to"), ("now",), ("alright",), ("so",), ("um", "okay"))
CLOSERS = ((), ("please",), ("now",), ("thanks",), ("okay",), ("thank", "you"), ("again",))
CORRECTION_MARKERS = (("no",), ("sorry",), ("no", "wait"), ("wait", "no"), ("i", "mean"), ("actually",),
                      ("no", "sorry"), ("oops",), ("no", "no"))
CORRECTIONS = ("none", "direction", "amount", "action", "stop")

# Held-out templates: evaluation only, never trained on. Every word and each of their parts
# occurs in training; the combination does not.
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
}
# Values never drawn in training (the digits are learned from other values): a separate slice.
HELD_OUT_VALUES = {"deg": (35, 75, 105, 150, 165, 250), "m": (7.5, 11.0, 2.3, 14.5)}
COMMON_DEGREES = (5, 10, 15, 20, 30, 45, 60, 90, 120, 135, 180, 270, 360)


def held_out_rule(template: dict) -> str | None:
    """Name of the held-out rule the template matches, or None for a training template."""
    return next((name for name, rule in HELD_OUT_RULES.items() if rule(template)), None)


class Generator:
    """Seeded sampler of `Sample`s from the training or the held-out templates.

    split: "train" (never a held-out template or value), "heldout" (held-out
    templates only, training values), "values" (training templates, held-out values).
    """

    def __init__(self, seed: int, split: str = "train"):
        if split not in ("train", "heldout", "values"):
            raise ValueError(f"split: expected train, heldout or values, got {split!r}")
        self.rng = random.Random(seed)
        self.split = split

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
        else:
            u = r.random()
            value = r.randint(1, 20) if u < 0.6 else r.randint(0, 19) + 0.5 if u < 0.85 else \
                round(r.randint(1, 200) / 10, 1)
        if value == 0:
            value = 0.5
        if value in HELD_OUT_VALUES[unit]:
            t["held_value"] = True
        phrases = WORDS_OF_VALUE[value]
        if unit == "deg":  # whole degrees: no "point"/"half" phrases
            phrases = [p for p in phrases if "point" not in p and "half" not in p]
        elif len(phrases) > 1 and r.random() < 0.9:  # "two point zero" is rare speech
            phrases = [p for p in phrases if p[-2:] != ("point", "zero")] or phrases
        words = list(r.choice(phrases))
        if r.random() < 0.08 and len(words) > 1:  # "twenty uh five": a hesitation inside the number
            i = r.randint(1, len(words) - 1)
            words.insert(i, r.choice(HESITATIONS))
        out = [(w, "fill" if w in HESITATIONS else "num") for w in words]
        if r.random() < 0.88:
            out.append((r.choice([w for w, u in UNITS.items() if u == unit and (w.endswith("s") or value == 1)]),
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
            phrase = r.choice(SPEED_PHRASES[intent])
            t["phrase"] = " ".join(phrase)
            return [("act", [(w, "act" if w in SPEED_UP_WORDS + SLOW_DOWN_WORDS else "fill")
                             for w in phrase])], Command(intent)
        frames = MOVE_FRAMES if intent == "move" else TURN_FRAMES
        frame = r.choice(frames)
        t["frame"] = frame
        unit = UNIT_OF_ACTION[intent]
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
                value, words = self._amount(unit, t)
                cmd.amount = (value, unit)
                segs.append(("amount", words))
            elif part == "to-the":
                segs.append(("fill", [("to", "fill"), ("the", "fill")]))
            elif part == "by":
                segs.append(("fill", [(r.choice(("by", "for")), "fill")]))
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

    def _draw(self) -> Sample:
        r = self.rng
        intent = r.choices(ACTIONS, weights=(35, 35, 12, 9, 9))[0]
        t = {"intent": intent, "frame": None, "phrase": None, "correction": "none", "marker": None}
        segs, cmd = self._core(intent, t)
        correction = "none"
        if intent in ("move", "turn"):
            correction = r.choices(CORRECTIONS, weights=(55, 13, 15, 9, 8))[0]
        elif r.random() < 0.15:
            correction = "action"
        marker = r.choice(CORRECTION_MARKERS)
        kinds = [k for k, _ in segs]
        if correction == "direction" and "dir" in kinds and not any(w == "reverse" for _, ws in segs for w, _ in ws):
            k = kinds.index("dir")
            new_d = {"forward": "back", "back": "forward", "left": "right", "right": "left"}[cmd.direction]
            new_seg = ("dir", self._direction(new_d))
            cut = k + 1 if r.random() < 0.6 else len(segs)  # correct right away, or at the end
            segs = segs[:cut] + [("mark", [(w, "mark") for w in marker]), new_seg] + segs[cut:]
            cmd.direction = new_d
        elif correction == "amount" and "amount" in kinds:
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
            other = r.choice([a for a in ACTIONS if a != intent])
            t2 = dict(t)
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
        t["correction"], t["marker"] = correction, " ".join(marker) if marker else None

        opener = r.choice(OPENERS) if r.random() < 0.5 else ()
        closer = r.choice(CLOSERS) if r.random() < 0.35 else ()
        t["opener"], t["closer"] = " ".join(opener), " ".join(closer)
        tagged = [(w, "fill") for w in opener]
        for i, (_, words) in enumerate(segs):
            if i and r.random() < 0.08:  # hesitation or unknown word between phrases
                tagged.append((r.choice(HESITATIONS + UNKNOWN_WORDS[:3] if r.random() < 0.3 else HESITATIONS),
                               "fill"))
            tagged += words
        tagged += [(w, "fill") for w in closer]
        words = [w for w, _ in tagged]
        sample = Sample(words=words, command=cmd.text(), template=t, tags=[g for _, g in tagged])
        label(sample)
        return sample


def label(sample: Sample) -> Sample:
    """Fill `targets`/`final` from the Teacher; fails when the teacher's command differs."""
    teacher = Teacher()
    sample.targets = [teacher.push(w) for w in sample.words]
    sample.final = teacher.end()
    got = apply_tokens([t for ts in sample.targets for t in ts] + sample.final).text()
    if got != sample.command:
        raise AssertionError(f"teacher parsed {sample.text!r} as {got!r}, generator meant {sample.command!r}")
    return sample


def sequence(sample: Sample, vocab: dict[str, int]) -> tuple[list[int], list[int]]:
    """Training sequence and its loss mask (1 where the token is the model's to predict).

    <bos> w1 [targets] <wait> w2 [targets] <wait> ... <eou> [final] <end>
    """
    unk = vocab[UNK]
    ids, mask = [vocab[BOS]], [0]
    for w, ts in zip(sample.words, sample.targets):
        ids.append(vocab.get(w, unk))
        mask.append(0)
        ids += [vocab[t] for t in ts] + [vocab[WAIT]]
        mask += [1] * (len(ts) + 1)
    ids.append(vocab[EOU])
    mask.append(0)
    ids += [vocab[t] for t in sample.final] + [vocab[END]]
    mask += [1] * (len(sample.final) + 1)
    return ids, mask


def main() -> int:
    """Print a few samples of each split with their targets; check the teacher on many."""
    import argparse

    parser = argparse.ArgumentParser(description="Show synthetic command samples.")
    parser.add_argument("--split", default="train", choices=("train", "heldout", "values"))
    parser.add_argument("-n", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    gen = Generator(args.seed, args.split)
    for s in gen.samples(args.n):
        stream = " ".join(f"{w}[{' '.join(ts)}]" if ts else w for w, ts in zip(s.words, s.targets))
        print(f"{s.command!r:28} <- {stream} <eou>[{' '.join(s.final)}]")
    gen.samples(5000)  # label() raises on any teacher/generator disagreement
    print("ok: 5000 more samples labelled consistently")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
