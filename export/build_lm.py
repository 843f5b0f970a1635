"""Build the command grammar's word n-gram LM (ARPA) that the recognizer route's beam search uses.

    python -m export.build_lm -o models/command-lm            # lm.arpa and MODEL_CARD.md

Text: phrases drawn from the grammar's training templates (`grammar.Generator(seed, "train")`, the
same sampler both models train on) and its training non-command sentences (`NON_COMMAND_SHARE` of
the phrases), as recognizer labels (`grammar.recognizer_words`: a word outside the grammar is
`<unk>`, so conversation is modelled too and is not forced onto command words). Estimate: an
interpolated Witten-Bell trigram over the recognizer's labels (`edge_stream.voice.ngram`), written
in the ARPA format so that any n-gram toolkit's model can stand in for it. Takes seconds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from edge_stream.voice import grammar, ngram
from export import speech_data as sd

NON_COMMAND_SHARE = 0.15  # as in the recognizer's training set (speech_data: 15% non-command sentences)


def corpus(n_phrases: int, seed: int) -> list[list[str]]:
    """`n_phrases` grammar phrases and NON_COMMAND_SHARE as many non-command sentences, as label lists."""
    g = grammar.Generator(seed, "train")
    out = [grammar.recognizer_words(sd.transcript(g.sample().spoken).split()) for _ in range(n_phrases)]
    others = [grammar.recognizer_words(s.split()) for s in grammar.non_command_sentences("train")]
    rng = np.random.default_rng(seed)
    n_other = int(n_phrases * NON_COMMAND_SHARE / (1 - NON_COMMAND_SHARE))
    out += [others[i] for i in rng.integers(len(others), size=n_other)]
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--out", type=Path, default=Path("models/command-lm"))
    ap.add_argument("--phrases", type=int, default=60000)
    ap.add_argument("--order", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    t0 = time.time()
    text = corpus(args.phrases, args.seed)
    lm = ngram.witten_bell(text, grammar.recognizer_vocabulary(), args.order)
    args.out.mkdir(parents=True, exist_ok=True)
    path = ngram.write_arpa(lm, args.out / "lm.arpa")
    counts = [len(p) for p in lm.probs]
    took = time.time() - t0
    info = {"phrases": args.phrases, "sentences": len(text), "order": args.order, "seed": args.seed,
            "ngrams": counts, "bytes": path.stat().st_size, "build_s": round(took, 1)}
    (args.out / "metrics.json").write_text(json.dumps(info, indent=2) + "\n")
    (args.out / "MODEL_CARD.md").write_text(f"""# command-lm

The command grammar's word n-gram language model, in the ARPA format: what the recognizer route's
grammar-aware decoding (`ngram_lm` in a launch file; `edge_stream.voice.ctc_beam`) scores word
sequences with, beside the recognizers' CTC posteriors. Words are the recognizers' labels
(`grammar.recognizer_vocabulary()`, `<unk>` for any word outside the grammar).

## Data and recipe
    python -m export.build_lm -o {args.out.as_posix()} --phrases {args.phrases} --order {args.order} --seed {args.seed}

{args.phrases} phrases of the grammar's training templates (`grammar.Generator({args.seed}, "train")`: commands,
two commands, corrections, negations, cancels, questions) and {len(text) - args.phrases} of its training non-command
sentences ({NON_COMMAND_SHARE:.0%} of the text), as recognizer labels. Interpolated Witten-Bell,
order {args.order}: {', '.join(f'{n} {k + 1}-grams' for k, n in enumerate(counts))}; {path.stat().st_size / 1e6:.1f} MB;
built in {took:.0f} s on a shared 2-core machine.

## Limits
It models the grammar's phrasings and the non-command sentences it was given, nothing else: a
phrasing the templates never make scores low and leans the search towards one they do. The
parser's checks stay in force (docs/voice_commands.md, "Grammar-aware decoding").
""")
    print(f"wrote {path} ({', '.join(map(str, counts))} n-grams, {took:.0f} s)")


if __name__ == "__main__":
    main()
