"""Synthetic spoken robot commands with word-aligned streaming targets (seeded): the command
parser's training and evaluation data.

The grammar, its vocabulary, the phrase templates and their seeded `Generator`, the non-command
sentences and the rule-based incremental parser that labels every word (`Teacher`) all live in
edge_stream.voice.grammar, the one grammar file the recognizer's training data reads too. This
module adds what only training needs: the mix of commands and non-command speech
(`TrainingMix`), training sequences and the tokenizer built from the grammar's vocabulary.

The grammar's names are re-exported here (training scripts and tests import them from
this module).
"""

from __future__ import annotations

import random
from dataclasses import replace
import re
from pathlib import Path

from edge_stream.voice.command_parser import (  # noqa: F401 (re-exported)
    BOS,
    CANCEL,
    END,
    EOU,
    FIX,
    THEN,
    UNK,
    VOID,
    WAIT,
    Command,
    apply_tokens,
    fold,
    format_amount,
)
from edge_stream.voice.grammar import (  # noqa: F401 (re-exported)
    ACTION_OF_DIRECTION,
    ACTION_TOKENS,
    ACTIONS,
    DIGIT_TOKENS,
    DIGIT_WORDS,
    DIRECTIONS,
    FILLERS,
    FINAL_PHRASES,
    HELD_OUT_RULES,
    HELD_OUT_VALUES,
    HESITATIONS,
    HOMOPHONES,
    INPUT_WORDS,
    MARKERS,
    MOVE_VERBS,
    NUMBER_PREFIXES,
    NUMBER_TOKENS,
    NUMBER_WORDS,
    NUMBERS,
    ONES,
    OUTPUT_TOKENS,
    PAD,
    SLOW_DOWN_WORDS,
    SPECIALS,
    SPEED_UP_WORDS,
    SPOKEN_WORDS,
    STOP_WORDS,
    TEENS,
    TENS,
    TURN_VERBS,
    UNITS,
    UNKNOWN_WORDS,
    WORDS_OF_VALUE,
    Generator,
    Sample,
    Teacher,
    amount_tokens,
    held_out_rule,
    label,
    non_command_sample,
    non_command_sentences,
    number_phrases,
    vocabulary,
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
    tok.add_tokens([AddedToken(t, special=False) for t in (FIX, THEN)])
    return tok



_SPOKEN = frozenset(SPOKEN_WORDS)


class TrainingMix:
    """Seeded stream of training samples: grammar commands (`Generator`, training templates) and,
    with probability `non_command_share`, a sentence of the training non-command pool (fortunes-min
    and generated conversation), labelled by the Teacher (silent: no field, except a stop word)."""

    def __init__(self, seed: int, non_command_share: float = 0.15, homophone_share: float = 0.3):
        self.gen = Generator(seed, "train")
        self.rng = random.Random(seed + 7919)
        self.pool = [non_command_sample(s) for s in non_command_sentences("train")]
        self.share = non_command_share if self.pool else 0.0
        self.homophone_share = homophone_share

    def samples(self, n: int) -> list[Sample]:
        drawn = [self.rng.choice(self.pool) if self.rng.random() < self.share else self.gen.sample()
                 for _ in range(n)]
        return [self.misheard(s) if self.rng.random() < self.homophone_share else s for s in drawn]

    def misheard(self, sample: Sample) -> Sample:
        """`sample` with each grammar homophone ("to"/"two", "for"/"four") swapped for its twin with
        probability 1/2, the targets unchanged: what a recognizer writes from the sound alone."""
        words = [HOMOPHONES[w] if w in HOMOPHONES and self.rng.random() < 0.5 else w for w in sample.words]
        return sample if words == sample.words else replace(sample, words=words)


def sequence(sample: Sample, vocab: dict[str, int]) -> tuple[list[int], list[int]]:
    """Training sequence and its loss mask (1 where the token is the model's to predict).

    <bos> w1 [targets] <wait> w2 [targets] <wait> ... <eou> [final] <end>
    """
    unk = vocab[UNK]
    heard = _SPOKEN  # a heard word outside the grammar (an output-only token like "m" included) is <unk>
    ids, mask = [vocab[BOS]], [0]
    for w, ts in zip(sample.words, sample.targets):
        ids.append(vocab[w] if w in heard and w in vocab else unk)
        mask.append(0)
        ids += [vocab[t] for t in ts] + [vocab[WAIT]]
        mask += [1] * (len(ts) + 1)
    ids.append(vocab[EOU])
    mask.append(0)
    ids += [vocab[t] for t in sample.final] + [vocab[END]]
    mask += [1] * (len(sample.final) + 1)
    return ids, mask


FORTUNE_DIR = Path("/usr/share/games/fortunes")  # Debian fortunes-min


def extract_fortune_sentences(fortune_dir: Path = FORTUNE_DIR) -> list[str]:
    """Sentences of the Debian fortunes-min texts (plain words, 3-30 of them), in file order: the source of
    edge_stream/voice/fortune_sentences.txt (apt-get install -y fortunes-min, then --fortunes)."""
    texts = []
    for name in ("fortunes", "literature", "riddles"):
        path = fortune_dir / name
        if path.is_file():
            texts += path.read_text(errors="replace").split("\n%\n")
    out, seen = [], set()
    for text in texts:
        for sentence in re.split(r"[.!?;:]+\s|\n\s*\n|\s--\s", text):
            words = [w.strip("'") for w in
                     "".join(c if c.isalpha() or c == "'" else " " for c in sentence.lower()).split()]
            words = [w for w in words if w]
            s = " ".join(words)
            if 3 <= len(words) <= 30 and s not in seen:
                seen.add(s)
                out.append(s)
    return out


def main() -> int:
    """Print a few samples of each split with their targets; check the teacher on many."""
    import argparse

    parser = argparse.ArgumentParser(description="Show synthetic command samples.")
    parser.add_argument("--split", default="train", choices=("train", "heldout", "values"))
    parser.add_argument("-n", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fortunes", action="store_true",
                        help="rewrite edge_stream/voice/fortune_sentences.txt from Debian fortunes-min")
    args = parser.parse_args()
    if args.fortunes:
        from edge_stream.voice.grammar import FORTUNE_FILE

        sentences = extract_fortune_sentences()
        if not sentences:
            raise SystemExit(f"no fortunes in {FORTUNE_DIR}: apt-get install -y fortunes-min")
        FORTUNE_FILE.write_text("\n".join(sentences) + "\n")
        print(f"wrote {len(sentences)} sentences to {FORTUNE_FILE}")
        return 0
    gen = Generator(args.seed, args.split)
    for s in gen.samples(args.n):
        stream = " ".join(f"{w}[{' '.join(ts)}]" if ts else w for w, ts in zip(s.words, s.targets))
        print(f"{s.command!r:28} <- {stream} <eou>[{' '.join(s.final)}]")
    gen.samples(5000)  # label() raises on any teacher/generator disagreement
    print("ok: 5000 more samples labelled consistently")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
