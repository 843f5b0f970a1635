"""`edge-stream voice-report`: what the voice-command pipeline does with speech it never trained on.

    edge-stream voice-report --write docs/voice_commands.md
    python -m edge_stream.cli.voice_report --write docs/voice_commands.md   (the same)

Speech (`export.synth`, synthesized on first use, then cached; the export scripts are imported only
when the report runs): per synthesizer `--utterances` phrases of the grammar (commands, two
commands, negations, cancels, questions) and a third as many non-command sentences (the held-out
sentence split), spoken by voices the recognizer never trained on: espeak-ng's and flite's held-out
voices, and festival, a synthesizer held out of training entirely. Each phrase is heard clean and at
10 dB SNR: `export.eval_recognizer.CONDITIONS` with its seeds, so the recognizer's own figures
(models/command-recognizer/MODEL_CARD.md) are of the same audio.

- Accuracy: the three node policies chained in-process (VAD gate -> recognizer -> parser: exactly the
  code and launch settings the nodes run, no sockets). Every command comes out with its confidence,
  so one run gives the outcome at every `min_confidence`: exact, wrong, not understood (asked
  again), nothing. The default threshold is chosen on the training synthesizers' held-out voices
  and reported on the held-out synthesizer.
- Safety: negations, cancels and questions must not move the robot; non-command sentences must stay
  silent; the wake word's false accepts per hour of non-command speech.
- Latency: the real three-node pipeline (one process per node, ZeroMQ on loopback, audio played in
  real time): end of the last word -> command known, streaming and batch; end of a stop word ->
  `stop` published (stops in the middle of an utterance included).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_stream.stats import percentiles

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
CHUNK = 512  # samples per published chunk (32 ms), as the demo's replay sends them
MARK_START, MARK_END = "<!-- voice-report:start -->", "<!-- voice-report:end -->"
HELD_OUT_ENGINE = "festival"  # export.synth.HELDOUT_ENGINE (not imported: the report's table needs it before synth)
# every synthesizer held out of training entirely (split "heldout-engine"): never used to choose the
# threshold; festival is the one the goals name, pico a second one nearer a recorded voice
HELD_OUT_ENGINES = ("festival", "pico")
GOALS = {"exact": 0.97, "wrong": 0.005, "silent": 0.99, "stop_p90_ms": 150.0, "known_p50_ms": 300.0}


def add_commands(subparsers) -> None:
    """Register voice-report (registered by edge_stream.cli.main)."""
    p = subparsers.add_parser("voice-report", help="accuracy, safety and latency of the voice pipeline")
    add_arguments(p)
    p.set_defaults(func=run)


LAUNCH_DEFAULTS = {"launch": "launch/voice_commands.toml", "batch_launch": "launch/voice_commands_batch.toml"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--utterances", type=int, default=300, help="grammar phrases per synthesizer (and a third as "
                   "many non-command sentences)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--engines", nargs="+", help="only these synthesizers (default: all of export.eval_recognizer.EVAL_SETS)")
    p.add_argument("--latency-n", type=int, default=45, help="commands played through the 3-node pipeline")
    p.add_argument("--stop-n", type=int, default=40, help="phrases with a stop word played through it")
    p.add_argument("--launch", default=LAUNCH_DEFAULTS["launch"])
    p.add_argument("--batch-launch", default=LAUNCH_DEFAULTS["batch_launch"])
    p.add_argument("--partials", action="store_true", help="also play the latency commands with early partial "
                   "words (--partials-launch) and compare known latency and wrong commands")
    p.add_argument("--partials-launch", default="launch/voice_commands_partials.toml")
    p.add_argument("--gap-s", type=float, default=0.7, help="silence between utterances in the real-time run")
    p.add_argument("--write", type=Path, help="put the results into this Markdown file (between markers)")
    p.add_argument("--plot", type=Path, help="draw the confidence trade-off into this PNG (the `plot` extra); "
                   "default with --write: voice_commands_tradeoff.png beside it")


# ----- utterances -----------------------------------------------------------------------------------


@dataclass
class Case:
    """One utterance as heard: audio, its words, where speech ends, the command it means."""

    name: str
    text: str
    audio: np.ndarray  # [n] float32
    speech_end: int  # sample where the last word ends
    expected: str  # the grammar's command for the words ('' when they mean none)
    engine: str
    voice: str
    condition: str  # "clean" | "10 dB"
    kind: str  # "phrase" (of the grammar) | "sentence" (not a command)
    stop_end: int | None = None  # sample where the first stop word ends, when the words have one
    seconds: float = 0.0  # of speech (the clean utterance)


def load_cases(n: int, seed: int, engines=None) -> list[Case]:
    """Every synthesizer's phrases in both conditions and its non-command sentences (clean)."""
    from edge_stream.cli.voice_pipeline import expected_command
    from edge_stream.voice.grammar import STOP_WORDS
    from export import augment
    from export.eval_recognizer import CONDITIONS, eval_sets

    cases = []
    for engine, _, phrases, sentences, pool in eval_sets(n, seed, engines):
        sets = [(phrases, "phrase", cond, chain, pool) for cond, chain in CONDITIONS.items()]
        sets.append((sentences, "sentence", "clean", CONDITIONS["clean"], pool[::-1]))
        for data, kind, cond, chain, babble in sets:
            for i in range(len(data)):
                clean = data.clean(i)
                aug = augment.random_chain(clean, np.random.default_rng([seed, 99, i]), babble, chain)
                words, spans = data.text(i).split(), data.word_spans[i]
                stop_at = next((k for k, w in enumerate(words) if w in STOP_WORDS), None)
                cases.append(Case(
                    f"{engine}-{kind}-{cond}-{i}", data.text(i), aug.audio, aug.position(spans[-1][2]),
                    expected_command(data.text(i)) if kind == "phrase" else "", engine, data.specs[i].voice,
                    cond, kind, None if stop_at is None else aug.position(spans[stop_at][2]),
                    len(clean) / SAMPLE_RATE))
    return cases


# ----- in-process chain of the node policies ----------------------------------------------------------


class PolicyChain:
    """VAD gate -> recognizer -> parser policies wired by their forwarded outputs, in one thread.

    Settings come from the launch file's models, so this runs what the nodes run."""

    def __init__(self, cfgs: list):
        """`cfgs`: the ModelConfigs of the VAD, recognizer and parser routes, in that order."""
        import edge_stream as es
        from edge_stream.node.policies import policy_for

        self.policies = [policy_for(es.load(cfg.dir, intra_op_threads=1), cfg) for cfg in cfgs]

    @classmethod
    def from_launch(cls, launch: str, wait_for_end: bool = False, parser_options: dict | None = None) -> "PolicyChain":
        """The launch file's chain; `parser_options` overrides the parser route's options
        (min_confidence 0: every command comes out with its confidence, for the trade-off)."""
        from edge_stream.node.config import load_launch

        cfgs = {n.name: n.models[0] for n in load_launch(launch).nodes}
        parser = cfgs["parser"]
        if parser_options is not None:
            parser = dataclasses.replace(parser, stream_options={**parser.stream_options, **parser_options})
        return cls([cfgs["vad"]] + [dataclasses.replace(c, wait_for_end=wait_for_end)
                                    for c in (cfgs["recognizer"], parser)])

    def run(self, audio: np.ndarray, tail_s: float = 1.0) -> "ChainResult":
        """One utterance (plus `tail_s` of silence, then the input's end) through the chain."""
        sessions = [p.open("eval", {}) for p in self.policies]
        result = ChainResult()
        audio = np.concatenate([audio, np.zeros(int(tail_s * SAMPLE_RATE), np.float32)])
        for start in range(0, len(audio), CHUNK):
            outs = self.policies[0].chunk(sessions[0], audio[start:start + CHUNK], None, {"sr": SAMPLE_RATE})
            self._pass(outs, 1, sessions, result)
        self._pass(self.policies[0].end(sessions[0], {}), 1, sessions, result)
        return result

    def _pass(self, outs, stage: int, sessions, result: "ChainResult") -> None:
        """Feed each Forward of stage `stage` to the next policy, as a chained node would take it."""
        from edge_stream.node.policies import Forward

        withheld, reason = "", ""  # the command of a `not_understood`, which comes just before its `done`
        for out in outs:
            if stage == 3:
                if out.kind == "not_understood":  # only the checks refuse here (min_confidence 0)
                    withheld, reason = out.fields["command"], out.fields.get("reason", "")
                elif out.kind == "done":
                    if out.fields.get("cancels") and result.commands:  # a cancel that reached back: the robot
                        result.taken_back.append((result.commands[-1], result.confidences[-1]))  # acted on it, then stopped
                        result.commands[-1] = ""
                    refused = bool(out.fields.get("not_understood"))
                    result.commands.append(withheld if refused else out.fields["command"] or "")
                    result.confidences.append(out.fields.get("confidence", 1.0))
                    result.refused.append(reason if refused else "")
                continue
            if not isinstance(out, Forward):
                continue
            if stage == 2 and out.kind == "chunk" and out.fields.get("replace_last"):
                result.words[-1] = out.text  # an early partial word revised
            elif stage == 2 and out.kind == "chunk" and out.fields.get("revise"):  # rescored at a pause
                result.replace_segment(out.text.split())
            elif stage == 2 and out.kind == "chunk":
                result.words.append(out.text)
                result.segment_words += 1
            elif stage == 2 and out.kind == "end":  # early partials: a partial never confirmed was not said
                finals = out.fields.get("final_confidences")
                if finals is not None and result.segment_words > len(finals):
                    del result.words[len(result.words) - (result.segment_words - len(finals)):]
                nbest = out.fields.get("nbest")  # grammar-aware decoding: the parser takes the best hypothesis
                if nbest:
                    result.replace_segment(nbest[0]["words"])
                result.segment_words = 0
            policy, session = self.policies[stage], sessions[stage]
            nxt = (policy.chunk(session, out.data, out.text, out.fields) if out.kind == "chunk"
                   else policy.end(session, out.fields))
            self._pass(nxt, stage + 1, sessions, result)


@dataclass
class ChainResult:
    words: list = field(default_factory=list)  # words the recognizer forwarded
    commands: list = field(default_factory=list)  # one per speech segment
    confidences: list = field(default_factory=list)  # the parser's, one per segment
    refused: list = field(default_factory=list)  # per segment: why a check held it back (a CHECKS key; "": it did not)
    segment_words: int = 0  # words forwarded in the segment in progress (a revised one counts once)
    taken_back: list = field(default_factory=list)  # (command, confidence) a later segment's cancel took back

    @property
    def command(self) -> str:
        """What the robot ends up doing: the last segment's non-empty command."""
        return next((c for c in reversed(self.commands) if c), "")

    @property
    def confidence(self) -> float:
        """The confidence of `command` (1.0 when there is none)."""
        return next((f for c, f in zip(reversed(self.commands), reversed(self.confidences)) if c), 1.0)

    def replace_segment(self, words: list) -> None:
        """A rescoring recognizer's reading replaces the words of the segment in progress."""
        del self.words[len(self.words) - self.segment_words:]
        self.words += words
        self.segment_words = len(words)

    @property
    def refused_by(self) -> str:
        """Why `command` was held back by the parser's checks (`not_understood`: "grammar", "verifier",
        "confidence" for a stop nobody said); "" when it was not."""
        return next((r for c, r in zip(reversed(self.commands), reversed(self.refused)) if c), "")


THRESHOLDS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99)


def outcome(command: str, confidence: float, expected: str, threshold: float, refused: str | bool = False) -> str:
    """What the robot gets at `threshold`: 'exact', 'wrong', 'not understood' (asked again) or
    'nothing' (no command published). A stop someone said is never held back (CommandParserPolicy),
    so the chain refuses none; a command the checks refused is asked again at every threshold."""
    if not command:
        return "nothing" if expected else "exact"
    if refused or (confidence < threshold and command != "stop"):
        return "not understood"
    return "exact" if command == expected else "wrong"


def tradeoff(rows: list[tuple[str, float, str, bool]], thresholds=THRESHOLDS) -> list[dict]:
    """Shares of exact / wrong / not understood / nothing per threshold over (command, confidence,
    expected, refused)."""
    out = []
    for t in thresholds:
        kinds = [outcome(c, f, e, t, r) for c, f, e, r in rows]
        out.append({"threshold": t, **{k: kinds.count(k) / max(1, len(kinds))
                                       for k in ("exact", "wrong", "not understood", "nothing")}})
    return out


WRONG_COST = 10.0  # a wrong command costs as much as ten "say that again"s: a robot acts on it (was 3 until
# the report counted 57 motions from 880 negations, cancels and questions at the threshold 3 picked, 0.5)


def choose_threshold(table: list[dict], wrong_cost: float = WRONG_COST) -> float:
    """The threshold with the lowest expected cost, wrong_cost * wrong + not understood (ties: the lowest)."""
    return min(table, key=lambda r: (wrong_cost * r["wrong"] + r["not understood"], r["threshold"]))["threshold"]


def edit_distance(ref: list, hyp: list) -> int:
    d = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, d[0] = d[0], i
        for j, h in enumerate(hyp, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (r != h))
    return d[-1]


def is_motion(command: str) -> bool:
    """Whether a command moves the robot (a stop, a wait or slowing down does not)."""
    return any(part.split(" ")[0] in ("move", "turn") or part.startswith("speed up")
               for part in command.split(" then ") if part)


@dataclass
class Heard:
    """What the in-process chain made of one Case."""

    case: Case
    command: str  # the last segment's command, before any threshold
    confidence: float
    words: list  # what the recognizer forwarded
    batch: str | None = None  # the batch baseline's command (clean phrases only)
    refused: str = ""  # why the parser's checks held the command back ("": they did not)
    taken_back: list = field(default_factory=list)  # (command, confidence) the next segment's cancel took back

    def moved_then_cancelled(self, threshold: float) -> bool:
        """Whether a motion was published (the robot acted on it) before a later segment's cancel took it back."""
        return any(is_motion(c) and f >= threshold for c, f in self.taken_back)

    def published(self, threshold: float) -> str:
        """The command the parser node publishes at `threshold` ('' when none: not understood or silent)."""
        if self.refused:
            return ""
        if self.command == "stop":  # said (the chain refuses a stop nobody said)
            return self.command
        return self.command if self.command and self.confidence >= threshold else ""


def hear(cases: list[Case], launch: str, parser_options: dict | None = None, batch: bool = False) -> list[Heard]:
    """Each case through the chained policies (and through the batch chain when `batch`, for clean phrases)."""
    everything = {"min_confidence": 0.0, **(parser_options or {})}  # the threshold is applied afterwards
    stream = PolicyChain.from_launch(launch, parser_options=everything)
    waits = PolicyChain.from_launch(launch, wait_for_end=True, parser_options=everything) if batch else None
    out, t0 = [], time.perf_counter()
    for k, c in enumerate(cases):
        r = stream.run(c.audio)
        b = waits.run(c.audio).command if waits and c.kind == "phrase" and c.condition == "clean" else None
        out.append(Heard(c, r.command, r.confidence, r.words, b, r.refused_by, r.taken_back))
        if (k + 1) % 200 == 0:
            print(f"  {k + 1}/{len(cases)} utterances ({time.perf_counter() - t0:.0f} s)", flush=True)
    return out


def set_figures(heard: list[Heard], threshold: float) -> dict:
    """Outcome shares, recognizer WER and unasked motion of one set of phrases at `threshold`."""
    kinds = [outcome(h.command, h.confidence, h.case.expected, threshold, h.refused) for h in heard]
    ref = sum(len(h.case.text.split()) for h in heard)
    errors = sum(edit_distance(h.case.text.split(), h.words) for h in heard)
    calm = [h for h in heard if not is_motion(h.case.expected)]
    return {"n": len(heard), **{k: kinds.count(k) / max(1, len(kinds)) for k in ("exact", "wrong", "not understood",
                                                                                  "nothing")},
            "wer": errors / max(1, ref), "calm": len(calm),
            "unasked_motion": sum(is_motion(h.published(threshold)) or h.moved_then_cancelled(threshold) for h in calm),
            "taken_back": sum(h.moved_then_cancelled(threshold) for h in calm)}


CHECKS = {"grammar": "Grammar check (`grammar_check`: a command the grammar's rules do not read from the same "
                     "words is asked again)",
          "verifier": "Verifier (the recognizer route's `verifier`: a command the second recognizer's words do not "
                      "read as is asked again)",
          "rescored": "Rescoring check (the recognizer route's `ngram_lm`: a best reading that lost a stop, negation, "
                      "cancel or question word a recognizer heard is asked again)"}


def checks_line(phrases: list[Heard], sentences: list[Heard], threshold: float) -> str:
    """What each of the parser's checks did at `threshold`: the commands it held back, by what they
    would have been (right, wrong, a command from a non-command sentence)."""
    lines = []
    for reason in [r for r in CHECKS if any(h.refused == r for h in phrases + sentences)] or ["grammar"]:
        def held_back(h: Heard) -> bool:  # the threshold alone would have published it
            return h.refused == reason and (h.command == "stop" or h.confidence >= threshold)

        refused = [h for h in phrases if held_back(h)]
        right = sum(h.command == h.case.expected for h in refused)
        lines.append(f"{CHECKS[reason]}: at min_confidence {threshold:.2f} it held back {len(refused)} of "
                     f"{len(phrases)} phrases' commands, {len(refused) - right} of them wrong and {right} right, and "
                     f"{sum(map(held_back, sentences))} commands read into {len(sentences)} non-command sentences.")
    return "\n\n".join(lines)


def sentence_figures(heard: list[Heard], threshold: float) -> dict:
    """Non-command sentences: how many stay silent, publish a command (a motion), or are asked again."""
    pub = [h.published(threshold) for h in heard]
    asked = sum(bool(h.command) and not p for h, p in zip(heard, pub))
    n = max(1, len(heard))
    return {"n": len(heard), "command": sum(bool(p) for p in pub) / n, "motion": sum(is_motion(p) for p in pub) / n,
            "not understood": asked / n, "silent": (len(heard) - sum(bool(p) for p in pub) - asked) / n,
            "hours": sum(h.case.seconds for h in heard) / 3600}


def parser_on_true_words(cases: list[Case], launch: str) -> float:
    """The parser alone on the true words of `cases`: what a perfect recognizer would give."""
    from edge_stream.voice.command_parser import CommandParser

    parser = CommandParser(PolicyChain.from_launch(launch).policies[2].model)
    ok = 0
    for c in cases:
        for w in c.text.split():
            parser.push_word(w)
        ok += parser.end() == c.expected
    return ok / max(1, len(cases))


def round_robin(groups: list[list[Case]], n: int) -> list[Case]:
    """Up to `n` cases taking one from each group in turn (every synthesizer in the latency runs)."""
    out, k = [], 0
    while len(out) < n and any(k < len(g) for g in groups):
        out += [g[k] for g in groups if k < len(g)][:n - len(out)]
        k += 1
    return out


# ----- the real pipeline ----------------------------------------------------------------------------------


def play(cases: list[Case], launch: str, gap_s: float) -> list[dict]:
    """Play `cases` through the nodes of `launch` in real time; per utterance: the command, when it was
    known (ms after the end of the last word), its `done`, and when a `stop` went out (ms after the
    end of the stop word)."""
    from edge_stream.cli.voice_pipeline import Playlist, match, run_pipeline

    if not cases:  # --latency-n 0 / --stop-n 0: accuracy only
        return []
    playlist = Playlist.build([(c.name, c.text, c.audio, c.speech_end, c.expected) for c in cases], gap_s)
    records, t0_ns = run_pipeline(launch, playlist)
    by_utt = match(records, playlist, t0_ns)
    rows = []
    for c, u in zip(cases, playlist.utterances):
        recs = by_utt[u.name]
        r = next((x for x in reversed(recs) if x.command), None)
        end = u.end_ns(t0_ns)
        stop = next((x.t_stop_pub_ns for x in recs if x.t_stop_pub_ns), None)
        stop_end = None if c.stop_end is None else t0_ns + (u.offset + c.stop_end) * 1_000_000_000 // SAMPLE_RATE
        rows.append({"name": u.name, "expected": c.expected, "command": r.command if r else "",
                     "known_ms": (r.t_known_pub_ns - end) / 1e6 if r and r.t_known_pub_ns else None,
                     "done_ms": (r.t_done_pub_ns - end) / 1e6 if r else None,
                     "stop_ms": (stop - stop_end) / 1e6 if stop and stop_end else None,
                     "stop_mid": c.stop_end is not None and c.stop_end < c.speech_end - SAMPLE_RATE // 10,
                     "retracted": sum(x.retracted for x in recs)})
    return rows


def _pct(values) -> str:
    """'p50 / p90 / max' of the values that are not None, '-' when none are."""
    v = [x for x in values if x is not None]
    if not v:
        return "-"
    p50, p90 = percentiles(v, (50, 90))
    return f"{p50:.0f} / {p90:.0f} / {max(v):.0f}"


def plot_tradeoff(tables: dict[str, list[dict]], chosen: float, path: Path) -> str | None:
    """Exact, wrong and not-understood shares against `min_confidence`, one line style per set of
    speech; returns why nothing was drawn, or None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -c constraints.txt 'edge-stream[plot]')"
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colours = {"exact": "C2", "wrong": "C3", "not understood": "C1"}
    for (name, table), style in zip(tables.items(), ("-", "--", ":")):
        xs = [r["threshold"] for r in table]
        for kind, colour in colours.items():
            ax.plot(xs, [100 * r[kind] for r in table], style, color=colour, marker="o", ms=3, label=f"{kind}, {name}")
    ax.axvline(chosen, color="k", lw=0.8)
    ax.text(chosen, 101, f" default {chosen:g}", va="bottom", ha="left", fontsize=8)
    ax.set_xlabel("min_confidence (below it: not_understood, the controller asks again)")
    ax.set_ylabel("% of phrases")
    ax.set_ylim(0, 108)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left")
    ax.set_title("Voice commands: what the robot gets as the threshold varies", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def report(args) -> str:
    import os

    t_start = time.perf_counter()
    cases = load_cases(args.utterances, args.seed, args.engines)
    engines = list(dict.fromkeys(c.engine for c in cases))
    phrases = [c for c in cases if c.kind == "phrase"]
    sentences = [c for c in cases if c.kind == "sentence"]
    print(f"{len(phrases)} phrases, {len(sentences)} non-command sentences of {', '.join(engines)}", flush=True)
    heard = hear(phrases, args.launch, batch=True)
    heard_sentences = hear(sentences, args.launch)
    heard_wake = hear(sentences, args.launch, {"wake_word": "robot"})
    held = [h for h in heard if h.case.engine == HELD_OUT_ENGINE]
    tuning = [h for h in heard if h.case.engine not in HELD_OUT_ENGINES] or heard
    tune_table = tradeoff([(h.command, h.confidence, h.case.expected, h.refused) for h in tuning])
    threshold = choose_threshold(tune_table)
    held_table = tradeoff([(h.command, h.confidence, h.case.expected, h.refused) for h in held]) if held else []
    plot = args.plot or (args.write.with_name("voice_commands_tradeoff.png") if args.write else None)
    if plot is not None:
        why = plot_tradeoff({"training synthesizers' held-out voices": tune_table,
                             f"{HELD_OUT_ENGINE} (held out)": held_table} if held_table else
                            {"all phrases": tune_table}, threshold, plot)
        print(f"trade-off plot: {why or plot}", flush=True)
    true_words = {e: parser_on_true_words([c for c in phrases if c.engine == e and c.condition == "clean"],
                                          args.launch) for e in engines}
    print(f"accuracy done ({time.perf_counter() - t_start:.0f} s); threshold {threshold}", flush=True)

    clean_cmds = [[c for c in phrases if c.engine == e and c.condition == "clean" and c.expected] for e in engines]
    timed_cases = round_robin(clean_cmds, args.latency_n)
    stream_rows = play(timed_cases, args.launch, args.gap_s)
    batch_rows = play(timed_cases, args.batch_launch, args.gap_s)
    partial_rows = play(timed_cases, args.partials_launch, args.gap_s) if args.partials else None
    stop_groups = [[c for c in phrases if c.engine == e and c.condition == "clean" and c.stop_end is not None]
                   for e in engines]
    stop_rows = play(round_robin(stop_groups, args.stop_n), args.launch, args.gap_s)
    print(f"latency done ({time.perf_counter() - t_start:.0f} s)", flush=True)

    figures = {(e, cond): set_figures([h for h in heard if h.case.engine == e and h.case.condition == cond], threshold)
               for e in engines for cond in ("clean", "10 dB")}
    sent = {e: sentence_figures([h for h in heard_sentences if h.case.engine == e], threshold) for e in engines}
    sent_all = sentence_figures(heard_sentences, threshold)
    wake = sentence_figures(heard_wake, threshold)
    wake_fa = wake["command"] * wake["n"]
    calm = sum(f["calm"] for f in figures.values())
    unasked = sum(f["unasked_motion"] for f in figures.values())
    taken_back = sum(f["taken_back"] for f in figures.values())
    timed = [i for i, (s, b) in enumerate(zip(stream_rows, batch_rows)) if s["command"] and b["command"]]
    known = [stream_rows[i]["known_ms"] for i in timed if stream_rows[i]["known_ms"] is not None]
    stops = [r["stop_ms"] for r in stop_rows if r["stop_ms"] is not None]
    known_p50 = percentiles(known, (50,))[0] if known else float("nan")
    stop_p90 = percentiles(stops, (90,))[0] if stops else float("nan")
    batch_same = sum(h.batch == h.command for h in heard if h.batch is not None)
    batch_n = sum(h.batch is not None for h in heard)
    batch_ok = sum(h.batch == h.case.expected for h in heard if h.batch is not None)
    stream_ok = sum(h.command == h.case.expected for h in heard if h.batch is not None)

    cmd = (f"python -m edge_stream.cli.voice_report --utterances {args.utterances} --seed {args.seed} "
           f"--latency-n {args.latency_n} --stop-n {args.stop_n}" + (" --partials" if args.partials else "")
           + (f" --engines {' '.join(args.engines)}" if args.engines else "")
           + "".join(f" --{name.replace('_', '-')} {getattr(args, name)}" for name in ("launch", "batch_launch")
                     if getattr(args, name) != LAUNCH_DEFAULTS[name])
           + (f" --write {args.write}" if args.write else ""))
    names = {e: f"{e} (held out entirely)" if e in HELD_OUT_ENGINES else f"{e} (held-out voices)" for e in engines}
    lines = [
        f"Command: `{cmd}` ({os.cpu_count()} CPU cores, ONNX Runtime 1 thread per model, "
        f"{time.strftime('%Y-%m-%d')}, {(time.perf_counter() - t_start) / 60:.0f} min).",
        "",
        f"Speech: per synthesizer {args.utterances} phrases of the grammar (commands, two commands, negations, "
        f"cancels, questions; `export.synth.load_set`, seed {args.seed}) and {max(8, args.utterances // 3)} "
        "non-command sentences (held-out sentence split), by voices the recognizer never trained on, clean and "
        "at 10 dB SNR (`export.eval_recognizer.CONDITIONS`). Reference: the grammar's rules on the true "
        "transcript (`edge_stream.voice.grammar.command_of`). Threshold `min_confidence` = "
        f"**{threshold}**, chosen on the training synthesizers' held-out voices (`choose_threshold`: lowest "
        f"{WRONG_COST:g} x wrong + not understood) and applied to every table below.",
        "",
        "**Goals** (issue 10):",
        "",
        "| goal | measured | target | met |",
        "|---|---|---|---|",
    ]
    for cond in ("clean", "10 dB"):
        f = figures.get((HELD_OUT_ENGINE, cond))
        if f:
            lines += [f"| {HELD_OUT_ENGINE} (held out), {cond}: exact commands | {f['exact']:.1%} | >= 97% | "
                      f"{_met(f['exact'] >= GOALS['exact'])} |",
                      f"| {HELD_OUT_ENGINE} (held out), {cond}: wrong commands | {f['wrong']:.1%} | <= 0.5% | "
                      f"{_met(f['wrong'] <= GOALS['wrong'])} |"]
    lines += [
        f"| motion from negations, cancels and questions (all sets) | {unasked} of {calm}"
        + (f" ({taken_back} of them taken back by a cancel in the next segment)" if taken_back else "")
        + f" | 0 | {_met(unasked == 0)} |",
        f"| non-command sentences with no command | {sent_all['silent'] + sent_all['not understood']:.1%} "
        f"({sent_all['n']} sentences; {sent_all['not understood']:.1%} of them asked again) | >= 99% | "
        f"{_met(1 - sent_all['command'] >= GOALS['silent'])} |",
        f"| wake word \"robot\": false accepts per hour of non-command speech | {wake_fa / max(1e-9, wake['hours']):.1f} "
        f"({wake_fa:.0f} in {wake['hours'] * 60:.0f} min) | report | - |",
        f"| stop: end of the stop word -> `stop` published, p90 | {stop_p90:.0f} ms ({len(stops)} stops) | "
        f"<= 150 ms | {_met(stop_p90 <= GOALS['stop_p90_ms'])} |",
        f"| end of speech -> command known, p50 | {known_p50:.0f} ms ({len(known)} commands) | <= 300 ms | "
        f"{_met(known_p50 <= GOALS['known_p50_ms'])} |",
        "",
        f"**Per synthesizer** (in-process chain, streaming; shares of the phrases at min_confidence {threshold}; "
        "*nothing*: no command came out; *unasked motion*: of the phrases that mean no motion):",
        "",
        "| synthesizer | condition | phrases | exact | wrong | not understood | nothing | recognizer WER | "
        "unasked motion | parser on the true words |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *(f"| {names[e]} | {cond} | {f['n']} | {f['exact']:.1%} | {f['wrong']:.1%} | {f['not understood']:.1%} | "
          f"{f['nothing']:.1%} | {f['wer']:.1%} | {f['unasked_motion']}/{f['calm']} | "
          f"{true_words[e]:.1%} |" for (e, cond), f in figures.items()),
        "",
        f"Streaming and batch (`wait_for_end`: recognizer and parser run on the whole segment) on the clean "
        f"phrases: streaming {stream_ok}/{batch_n} exact, batch {batch_ok}/{batch_n}, the same command in "
        f"{batch_same}/{batch_n}.",
        "",
        checks_line(heard, heard_sentences, threshold),
        "",
        "**Non-command sentences** (clean; read-aloud text and conversation, held-out split):",
        "",
        "| synthesizer | sentences | silent | asked again | a command | a motion |",
        "|---|---|---|---|---|---|",
        *(f"| {names[e]} | {f['n']} | {f['silent']:.1%} | {f['not understood']:.1%} | {f['command']:.1%} | "
          f"{f['motion']:.1%} |" for e, f in sent.items()),
        "",
        "**Confidence threshold**: outcome shares as `min_confidence` varies (a stop always goes out). Chosen "
        f"on the training synthesizers' held-out voices ({len(tuning)} phrases, both conditions):",
        "",
        *([f"![confidence trade-off]({plot.name})", ""] if plot is not None and args.write is not None
          and plot.parent == args.write.parent else []),
        "| min_confidence | exact | wrong | not understood | nothing |",
        "|---|---|---|---|---|",
        *(f"| {r['threshold']:.2f} | {r['exact']:.1%} | {r['wrong']:.1%} | {r['not understood']:.1%} | "
          f"{r['nothing']:.1%} |" for r in tune_table),
    ]
    if held_table:
        lines += ["", f"The same on {HELD_OUT_ENGINE} (held out entirely; {len(held)} phrases, both conditions):", "",
                  "| min_confidence | exact | wrong | not understood | nothing |", "|---|---|---|---|---|",
                  *(f"| {r['threshold']:.2f} | {r['exact']:.1%} | {r['wrong']:.1%} | {r['not understood']:.1%} | "
                    f"{r['nothing']:.1%} |" for r in held_table)]
    s_ok = sum(r["command"] == r["expected"] for r in stream_rows)
    b_ok = sum(r["command"] == r["expected"] for r in batch_rows)
    mid = [r["stop_ms"] for r in stop_rows if r["stop_ms"] is not None and r["stop_mid"]]
    lines += [
        "",
        f"**Latency**, ms (p50 / p90 / max): the real 3-node pipeline (one process per node, ZeroMQ on "
        f"loopback, the launch files' settings), clean commands of every synthesizer in turn, played in real "
        f"time with {args.gap_s:g} s between them. *Known*: from the end of the last word until the command "
        "equals its final value (fields arrive word by word; negative = before the speech ended); *done*: the "
        f"segment's `done` (after the VAD's end of speech). Over the {len(timed)} of {len(timed_cases)} "
        "utterances for which both pipelines published a command.",
        "",
        "| pipeline | commands right | known | done |",
        "|---|---|---|---|",
        f"| streaming ({args.launch}) | {s_ok}/{len(timed_cases)} | {_pct(stream_rows[i]['known_ms'] for i in timed)} | "
        f"{_pct(stream_rows[i]['done_ms'] for i in timed)} |",
        f"| batch: wait for the end, then run each model on all of it ({args.batch_launch}) | {b_ok}/{len(timed_cases)} "
        f"| {_pct(batch_rows[i]['known_ms'] for i in timed)} | {_pct(batch_rows[i]['done_ms'] for i in timed)} |",
        "",
        f"Stops: {len(stop_rows)} phrases with a stop word, the same way; from the end of the stop word to the "
        f"`stop` field published: {_pct(stops)} ms ({len(stops)} heard; {len(mid)} of them in the middle of the "
        f"utterance: {_pct(mid)} ms).",
    ]
    if partial_rows is not None:
        lines += ["", *partials_table(stream_rows, partial_rows, args.launch, args.partials_launch)]
    return "\n".join(lines) + "\n"


def partials_table(plain: list[dict], early: list[dict], launch: str, partials_launch: str) -> list[str]:
    """Markdown lines: the streaming pipeline with and without early partial words, on the same
    utterances: commands right and wrong, known latency (over those both got right), retracted deltas."""
    both = [i for i, (a, b) in enumerate(zip(plain, early)) if a["command"] == a["expected"] == b["command"]]

    def row(name: str, rows: list[dict]) -> str:
        right = sum(r["command"] == r["expected"] for r in rows)
        wrong = sum(bool(r["command"]) and r["command"] != r["expected"] for r in rows)
        return (f"| {name} | {right}/{len(rows)} | {wrong}/{len(rows)} | {_pct(rows[i]['known_ms'] for i in both)} | "
                f"{_pct(rows[i]['done_ms'] for i in both)} | {sum(r['retracted'] for r in rows)} |")

    return [
        f"**Early partial words** (issue 11): the same utterances through {partials_launch} (the recognizer "
        "forwards a word when its label leads, revises it, the parser follows with `retract`). *Wrong*: a "
        "command that is not the expected one; *known* and *done* as above, ms (p50 / p90 / max), over the "
        f"{len(both)} utterances both got right; *retracted*: deltas the parser took back.",
        "",
        "| pipeline | commands right | wrong commands | known | done | retracted |",
        "|---|---|---|---|---|---|",
        row(f"streaming ({launch})", plain),
        row(f"streaming, early partials ({partials_launch})", early),
    ]


def write_into(path: Path, text: str) -> None:
    """Replace the text between the report markers of `path` (appended with markers if absent)."""
    doc = path.read_text() if path.exists() else ""
    block = f"{MARK_START}\n{text}{MARK_END}"
    if MARK_START in doc and MARK_END in doc:
        doc = doc[:doc.index(MARK_START)] + block + doc[doc.index(MARK_END) + len(MARK_END):]
    else:
        doc = doc + ("\n" if doc else "") + block + "\n"
    path.write_text(doc)


def run(args) -> int:
    text = report(args)
    print(text)
    if args.write:
        write_into(args.write, text)
        print(f"written into {args.write}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge_stream.cli.voice_report", description=__doc__.splitlines()[0])
    add_arguments(p)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
