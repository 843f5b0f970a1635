"""Greedy against grammar-aware decoding, on the recognizers' own evaluation sets (no parser, no VAD).

    python -m export.eval_decoding                                   # both recognizers, the committed LM
    python -m export.eval_decoding --utts 100 --engines festival     # quicker
    python -m export.eval_decoding --out docs/decoding.json          # also the figures as JSON

The audio is export.eval_recognizer's (its sets, conditions and seeds: the same utterances as the model
cards and the voice report). Each utterance is streamed through both recognizers (1 s chunks), and
decoded four ways: greedy CTC by the first recognizer (what the node streams); a beam search with the
grammar's n-gram LM by each recognizer alone; and the two beam searches' and greedy hypotheses
rescored by both (`edge_stream.voice.ctc_beam.nbest`: what the recognizer route's `ngram_lm` sends).
Figures: WER and exact utterances of each; and, for the rescored best, how often the grammar's
reading of it (`grammar.command_of`) is the phrase's command ("right") or another command ("wrong")
when it is kept only at a least-posterior of at least t (the parser's confidence, without the
parser network's token probabilities: `grammar.command_posterior`). Compute: the beam searches'
seconds per second of audio (run block by block, as the route runs them) and the segment-end
rescoring's milliseconds; pin the process to one core (`taskset -c 1`) for a one-core figure.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from export import augment
from export import eval_recognizer as ev

THRESHOLDS = (0.0, 0.5, 0.9, 0.99)
WAYS = ("greedy", "beam_first", "beam_verifier", "rescored")


def frames_of(model, audio: np.ndarray) -> np.ndarray:
    """The recognizer's logits for `audio` (zero-padded to a whole block), streamed in 1 s chunks."""
    block = model.manifest.blocking.block
    padded = np.concatenate([audio, np.zeros(-len(audio) % block, np.float32)])
    stream = model.open_stream()
    out = [stream.feed(padded[i:i + 16000]).logits for i in range(0, len(padded), 16000)]
    return np.concatenate([o for o in out if o is not None and len(o)])


def decode(models, decoders, lm, audio: np.ndarray, lm_weight: float, word_bonus: float, beam: int) -> dict:
    """The four decodings of one utterance, and the rescored n-best."""
    from edge_stream.voice.ctc_beam import BeamDecoder, nbest

    recs, cands, ways, seconds = [], [], {}, {}
    for k, (model, dec) in enumerate(zip(models, decoders)):
        frames = frames_of(model, audio)
        dec.reset()
        greedy = tuple(w.word for w in dec.update(frames).words + dec.finish().words)
        t0 = time.perf_counter()
        search = BeamDecoder(dec.symbols, dec.blank, lm, lm_weight, word_bonus, beam=beam)
        per_block = frames.shape[0] // max(1, len(audio) // model.manifest.blocking.block)
        for i in range(0, frames.shape[0], max(1, per_block)):  # block by block, as the route runs it
            search.update(frames[i:i + per_block])
        hyps = search.finish()
        seconds[f"beam_{k}"] = time.perf_counter() - t0
        recs.append((frames, dec.symbols, dec.blank))
        cands += [h.words for h in hyps] + [greedy]
        if k == 0:
            ways["greedy"] = list(greedy)
        ways["beam_first" if k == 0 else "beam_verifier"] = list(hyps[0].words)
    t0 = time.perf_counter()
    best = nbest(recs, cands, lm, lm_weight, word_bonus)
    seconds["nbest"] = time.perf_counter() - t0
    ways["rescored"] = best[0]["words"]
    return {"ways": ways, "nbest": best, "seconds": seconds}


def run(first: Path, verifier: Path, lm_path: Path, n: int, seed: int, engines, lm_weight: float,
        word_bonus: float, beam: int) -> dict:
    import edge_stream as es
    from edge_stream.voice.ctc import CtcDecoder
    from edge_stream.voice.grammar import command_of, command_posterior
    from edge_stream.voice.ngram import read_arpa

    models = [es.load(first, intra_op_threads=1), es.load(verifier, intra_op_threads=1)]
    decoders = [CtcDecoder.from_model(m) for m in models]
    lm = read_arpa(lm_path)
    symbols = set(decoders[0].symbols)
    results = {"first": str(first), "verifier": str(verifier), "lm": str(lm_path), "lm_weight": lm_weight,
               "word_bonus": word_bonus, "beam": beam, "seed": seed, "sets": {}}
    for engine, split, commands, _, pool in ev.eval_sets(n, seed, engines):
        for cond, chain in ev.CONDITIONS.items():
            t0 = time.time()
            errors = {w: 0 for w in WAYS}
            exact = {w: 0 for w in WAYS}
            ref_words, rows, audio_s, beam_s, nbest_ms = 0, [], 0.0, [0.0, 0.0], []
            for i in range(len(commands)):
                aug = augment.random_chain(commands.clean(i), np.random.default_rng([seed, 99, i]), pool, chain)
                got = decode(models, decoders, lm, aug.audio, lm_weight, word_bonus, beam)
                audio_s += len(aug.audio) / ev.SAMPLE_RATE
                beam_s = [beam_s[k] + got["seconds"][f"beam_{k}"] for k in range(2)]
                nbest_ms.append(1000 * got["seconds"]["nbest"])
                ref = ev.labels(commands.text(i), symbols, "<unk>")
                ref_words += len(ref)
                for way, words in got["ways"].items():
                    d, _ = ev.align_words(ref, [ev.SAME_WORD.get(w, w) for w in words])
                    errors[way] += d
                    exact[way] += d == 0
                said = command_of(commands.text(i).split()).text()
                heard = command_of(got["ways"]["rescored"]).text()
                rows.append((heard == said, heard != "" and heard != said, command_posterior(got["nbest"], heard)))
            m = len(commands)
            kept = {f"{t:g}": {"right": round(sum(r and p >= t for r, _, p in rows) / m, 4),
                               "wrong": round(sum(w and p >= t for _, w, p in rows) / m, 4)} for t in THRESHOLDS}
            results["sets"].setdefault(engine, {"split": split})[cond] = {
                "utterances": m, **{w: {"wer": round(errors[w] / max(1, ref_words), 4), "exact": round(exact[w] / m, 4)}
                                    for w in WAYS}, "commands_by_least_posterior": kept,
                # compute (this process, shared machine): beam search seconds per second of audio, per recognizer;
                # the segment-end rescoring in ms
                "beam_rtf": [round(b / audio_s, 4) for b in beam_s], "nbest_ms": ev.percentiles(nbest_ms)}
            r = results["sets"][engine][cond]
            print(f"{engine:10s} {cond:6s} " + "  ".join(f"{w} {r[w]['wer']:.3f}/{r[w]['exact']:.3f}" for w in WAYS)
                  + f"  ({m} utterances, {time.time() - t0:.0f} s)", flush=True)
    return results


def table(results: dict) -> str:
    """Markdown: WER / exact per decoding, and right / wrong commands at each least-posterior."""
    head = ("| synthesizer | condition | greedy (first) | beam + LM (first) | beam + LM (verifier) | rescored by both | "
            + " | ".join(f"commands at >= {t:g}: right / wrong" for t in THRESHOLDS) + " |")
    rows = [head, "|" + "---|" * (6 + len(THRESHOLDS))]
    for engine, sets in results["sets"].items():
        for cond in ev.CONDITIONS:
            r = sets[cond]
            rows.append(f"| {engine} ({'held out' if sets['split'] == 'heldout-engine' else 'held-out voices'}) | {cond} | "
                        + " | ".join(f"{r[w]['wer']:.3f} / {r[w]['exact']:.1%}" for w in WAYS) + " | "
                        + " | ".join(f"{r['commands_by_least_posterior'][f'{t:g}']['right']:.1%} / "
                                     f"{r['commands_by_least_posterior'][f'{t:g}']['wrong']:.1%}" for t in THRESHOLDS)
                        + " |")
    return "\n".join(rows)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--first", type=Path, default=Path("models/command-recognizer-multisynth"))
    ap.add_argument("--verifier", type=Path, default=Path("models/command-recognizer-embed"))
    ap.add_argument("--lm", type=Path, default=Path("models/command-lm/lm.arpa"))
    ap.add_argument("--utts", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--engines", nargs="+")
    ap.add_argument("--lm-weight", type=float, default=0.8)
    ap.add_argument("--word-bonus", type=float, default=2.5)
    ap.add_argument("--beam", type=int, default=8)
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    t0 = time.time()
    results = run(args.first, args.verifier, args.lm, args.utts, args.seed, args.engines, args.lm_weight,
                  args.word_bonus, args.beam)
    results["seconds"] = round(time.time() - t0)
    print()
    print(table(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
