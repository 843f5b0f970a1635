"""`edge-stream voice-report`: end-to-end accuracy and latency of the voice-command pipeline.

    edge-stream voice-report --write docs/voice_commands.md
    python -m edge_stream.cli.voice_report --write docs/voice_commands.md   (the same)

Utterances: export.speech_data's held-out voices (`load_set("eval", n, seed)`: synthesized by
espeak-ng on first use, then cached; imported only when the report runs, so the command is
registered on installs without the export scripts), with its noise/room augmentation seeded
per utterance, kept when every word is one the parser knows and the grammar's rules
(edge_stream.voice.grammar) find a command in the transcript (that command is the reference).

- Accuracy (all kept utterances): the three node policies chained in-process (VAD gate ->
  recognizer -> parser, exactly the code the nodes run, no sockets), streaming and with
  `wait_for_end` (the batch baseline); plus recognizer WER and the parser alone on the true words.
- Latency (the first `--latency-n` kept utterances): the real three-node pipeline, one process
  per node over ZeroMQ on loopback, audio played in real time; streaming
  (launch/voice_commands.toml), then batch (launch/voice_commands_batch.toml: recognizer and
  parser wait for the segment's end, then run on all of it) in the same run. Latency is from the
  true end of the last word (from espeak's word timings) to the parser node publishing the command.
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

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
CHUNK = 512  # samples per published chunk (32 ms), as the demo's replay sends them
MARK_START, MARK_END = "<!-- voice-report:start -->", "<!-- voice-report:end -->"


def add_commands(subparsers) -> None:
    """Register voice-report (registered by edge_stream.cli.main)."""
    p = subparsers.add_parser("voice-report", help="accuracy and latency of the voice pipeline, streaming vs batch")
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--utterances", type=int, default=400, help="held-out utterances to draw (before filtering)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latency-n", type=int, default=40, help="utterances played through the 3-node pipeline")
    p.add_argument("--launch", default="launch/voice_commands.toml")
    p.add_argument("--batch-launch", default="launch/voice_commands_batch.toml")
    p.add_argument("--gap-s", type=float, default=0.5, help="silence between utterances in the real-time run")
    p.add_argument("--write", type=Path, help="put the results table into this Markdown file (between markers)")


# ----- utterances -----------------------------------------------------------------------------------


@dataclass
class Case:
    """One held-out utterance: augmented audio, its words, where speech ends, the command it means."""

    index: int
    text: str
    audio: np.ndarray  # [n] float32
    speech_end: int  # sample where the last word ends
    expected: str
    voice: str


def held_out_cases(n: int, seed: int) -> tuple[list[Case], dict]:
    """The kept utterances and counts of the dropped ones (why)."""
    from edge_stream.cli.voice_pipeline import expected_command
    from edge_stream.voice.grammar import INPUT_WORDS
    from export import speech_data as sd  # the held-out voices are synthesized by the export scripts

    data = sd.load_set("eval", n, seed)
    known = set(INPUT_WORDS)
    cases, dropped = [], {"words the parser does not know": 0, "no command in the transcript": 0}
    for i in range(len(data)):
        text = data.text(i)
        if any(w not in known for w in text.split()):
            dropped["words the parser does not know"] += 1
            continue
        expected = expected_command(text)
        if not expected:
            dropped["no command in the transcript"] += 1
            continue
        audio, lead = sd.augment(data.clean(i), np.random.default_rng([seed, 99, i]))  # the recognizer's eval noise
        cases.append(Case(i, text, audio, lead + data.word_spans[i][-1][2], expected, data.specs[i].voice))
    return cases, dropped


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

        for out in outs:
            if stage == 3:
                if out.kind == "done":
                    result.commands.append(out.fields["command"] or "")
                    result.confidences.append(out.fields.get("confidence", 1.0))
                continue
            if not isinstance(out, Forward):
                continue
            if stage == 2 and out.kind == "chunk":
                result.words.append(out.text)
            policy, session = self.policies[stage], sessions[stage]
            nxt = (policy.chunk(session, out.data, out.text, out.fields) if out.kind == "chunk"
                   else policy.end(session, out.fields))
            self._pass(nxt, stage + 1, sessions, result)


@dataclass
class ChainResult:
    words: list = field(default_factory=list)  # words the recognizer forwarded
    commands: list = field(default_factory=list)  # one per speech segment
    confidences: list = field(default_factory=list)  # the parser's, one per segment

    @property
    def command(self) -> str:
        """What the robot ends up doing: the last segment's non-empty command."""
        return next((c for c in reversed(self.commands) if c), "")

    @property
    def confidence(self) -> float:
        """The confidence of `command` (1.0 when there is none)."""
        return next((f for c, f in zip(reversed(self.commands), reversed(self.confidences)) if c), 1.0)


THRESHOLDS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def outcome(command: str, confidence: float, expected: str, threshold: float) -> str:
    """What the robot gets at `threshold`: 'exact', 'wrong', 'not understood' (asked again) or
    'nothing' (no command published). A stop is never held back (CommandParserPolicy)."""
    if not command:
        return "nothing" if expected else "exact"
    if confidence < threshold and command != "stop":
        return "not understood"
    return "exact" if command == expected else "wrong"


def tradeoff(rows: list[tuple[str, float, str]], thresholds=THRESHOLDS) -> list[dict]:
    """Shares of exact / wrong / not understood / nothing per threshold over (command, confidence, expected)."""
    out = []
    for t in thresholds:
        kinds = [outcome(c, f, e, t) for c, f, e in rows]
        out.append({"threshold": t, **{k: kinds.count(k) / max(1, len(kinds))
                                       for k in ("exact", "wrong", "not understood", "nothing")}})
    return out


WRONG_COST = 3.0  # a wrong command costs as much as three "say that again"s: wrong is worse than nothing


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


def accuracy(cases: list[Case], launch: str) -> dict:
    from edge_stream.voice.command_parser import CommandParser

    # Both chains publish every command with its confidence (min_confidence 0); the launch file's
    # threshold is applied afterwards (`outcome`), so one run gives the whole trade-off.
    everything = {"min_confidence": 0.0}
    stream = PolicyChain.from_launch(launch, parser_options=everything)
    batch = PolicyChain.from_launch(launch, wait_for_end=True, parser_options=everything)
    parser = CommandParser(stream.policies[2].model)
    n_ok = n_batch_ok = same = parse_ok = errors = ref_words = split = 0
    rows = []
    t0 = time.perf_counter()
    for c in cases:
        r, b = stream.run(c.audio), batch.run(c.audio)
        rows.append((r.command, r.confidence, c.expected))
        n_ok += r.command == c.expected
        n_batch_ok += b.command == c.expected
        same += r.commands == b.commands
        split += len(r.commands) > 1
        ref = c.text.split()
        errors += edit_distance(ref, r.words)
        ref_words += len(ref)
        for w in ref:
            parser.push_word(w)
        parse_ok += parser.end() == c.expected
    n = len(cases)
    table = tradeoff(rows)
    return {"n": n, "stream": n_ok / n, "batch": n_batch_ok / n, "same": same, "wer": errors / ref_words,
            "parser_on_true_words": parse_ok / n, "split": split, "seconds": time.perf_counter() - t0,
            "tradeoff": table, "chosen_threshold": choose_threshold(table)}


# ----- the real pipeline ----------------------------------------------------------------------------------


def latency(cases: list[Case], launch: str, gap_s: float) -> dict:
    """Play `cases` through the nodes of `launch` in real time; per-utterance command and latencies."""
    from edge_stream.cli.voice_pipeline import Playlist, match, run_pipeline

    playlist = Playlist.build([(f"u{c.index}", c.text, c.audio, c.speech_end, c.expected) for c in cases], gap_s)
    records, t0_ns = run_pipeline(launch, playlist)
    by_utt = match(records, playlist, t0_ns)
    rows = []
    for u in playlist.utterances:
        recs = [r for r in by_utt[u.name] if r.command]
        r = recs[-1] if recs else None
        end = u.end_ns(t0_ns)
        rows.append({"name": u.name, "expected": u.expected, "command": r.command if r else "",
                     "known_ms": (r.t_known_pub_ns - end) / 1e6 if r and r.t_known_pub_ns else None,
                     "done_ms": (r.t_done_pub_ns - end) / 1e6 if r else None})
    return {"rows": rows, "audio_s": len(playlist.audio) / SAMPLE_RATE}


def _pct(values) -> str:
    """'p50 / p90 / max' of the values that are not None, '-' when none are."""
    from edge_stream.stats import percentiles

    v = [x for x in values if x is not None]
    if not v:
        return "-"
    p50, p90 = percentiles(v, (50, 90))
    return f"{p50:.0f} / {p90:.0f} / {max(v):.0f}"


def report(args) -> str:
    import os

    cases, dropped = held_out_cases(args.utterances, args.seed)
    if len(cases) < 100:
        log.warning("only %d utterances kept; the report asks for at least 100 (raise --utterances)", len(cases))
    print(f"{len(cases)} held-out utterances kept of {args.utterances} ({dropped})", flush=True)
    acc = accuracy(cases, args.launch)
    print(f"accuracy in-process: {acc}", flush=True)
    sub = cases[:args.latency_n]
    stream = latency(sub, args.launch, args.gap_s)
    print("streaming pipeline done", flush=True)
    batch = latency(sub, args.batch_launch, args.gap_s)
    # Timed: utterances for which both pipelines published a command (right or not: the timing is the
    # pipeline's; which words it heard only decides when the fields settle).
    timed = [i for i, (s, b) in enumerate(zip(stream["rows"], batch["rows"])) if s["command"] and b["command"]]
    s_ok = sum(r["command"] == r["expected"] for r in stream["rows"])
    b_ok = sum(r["command"] == r["expected"] for r in batch["rows"])
    cmd = (f"python -m edge_stream.cli.voice_report --utterances {args.utterances} --seed {args.seed} "
           f"--latency-n {args.latency_n}" + (f" --write {args.write}" if args.write else ""))
    lines = [
        f"Command: `{cmd}` ({os.cpu_count()} CPU cores, ONNX Runtime 1 thread per model, "
        f"{time.strftime('%Y-%m-%d')}).",
        "",
        f"Held-out utterances: {len(cases)} kept of {args.utterances} drawn by `export.speech_data.load_set('eval', "
        f"{args.utterances}, seed={args.seed})` (held-out espeak-ng voices, the recognizer's evaluation noise and "
        f"rooms); dropped: " + ", ".join(f"{v} {k}" for k, v in dropped.items()) + ". Reference command: "
        "`edge_stream.voice.grammar.command_of` (the rule-based Teacher) on the true transcript.",
        "",
        "**Accuracy** (in-process: the three node policies chained without sockets, same code and settings "
        f"as the nodes; {acc['seconds']:.0f} s for both modes):",
        "",
        "| | value |",
        "|---|---|",
        f"| end-to-end command accuracy, streaming | {acc['stream']:.1%} ({round(acc['stream'] * acc['n'])}/{acc['n']}) |",
        f"| end-to-end command accuracy, batch baseline | {acc['batch']:.1%} ({round(acc['batch'] * acc['n'])}/{acc['n']}) |",
        f"| streaming and batch give the same commands | {acc['same']}/{acc['n']} utterances |",
        f"| recognizer word error rate (words it forwarded vs transcript) | {acc['wer']:.1%} |",
        f"| parser alone on the true words | {acc['parser_on_true_words']:.1%} |",
        f"| utterances the VAD split into several segments | {acc['split']}/{acc['n']} |",
        "",
        "**Confidence threshold** (the parser route's `min_confidence`: below it a command is published as "
        "`not_understood` and the controller asks again; a stop always goes out). Shares of the utterances "
        "above, streaming; *nothing*: no command came out. `choose_threshold` (lowest "
        f"{WRONG_COST:g} x wrong + not understood): **{acc['chosen_threshold']}**; the parser route's default "
        "is edge_stream.node.policies.DEFAULT_MIN_CONFIDENCE.",
        "",
        "| min_confidence | exact | wrong | not understood | nothing |",
        "|---|---|---|---|---|",
        *(f"| {r['threshold']:.2f} | {r['exact']:.1%} | {r['wrong']:.1%} | {r['not understood']:.1%} | "
          f"{r['nothing']:.1%} |" for r in acc["tradeoff"]),
        "",
        f"**Latency** from the end of the last word to the parser node publishing the command, ms "
        f"(p50 / p90 / max): the real 3-node pipeline (one process per node, ZeroMQ on loopback), "
        f"{len(sub)} utterances ({stream['audio_s']:.0f} s of audio) played in real time, streaming then batch in "
        f"the same run; over the {len(timed)} utterances for which both published a command. "
        "*Known*: the command equals its final value (streaming fields arrive word by word; negative = "
        "before the speech ended). *Done*: the segment's `done` (after the VAD's end of speech).",
        "",
        "| pipeline | commands right | known | done |",
        "|---|---|---|---|",
        f"| streaming (launch/voice_commands.toml) | {s_ok}/{len(sub)} | "
        f"{_pct(stream['rows'][i]['known_ms'] for i in timed)} | {_pct(stream['rows'][i]['done_ms'] for i in timed)} |",
        f"| batch: wait for the end, then run each model on all of it (launch/voice_commands_batch.toml) | "
        f"{b_ok}/{len(sub)} | {_pct(batch['rows'][i]['known_ms'] for i in timed)} | "
        f"{_pct(batch['rows'][i]['done_ms'] for i in timed)} |",
    ]
    return "\n".join(lines) + "\n"


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
