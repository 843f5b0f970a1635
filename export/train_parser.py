"""Train the streaming command parser: a tiny Llama, prefix-to-prefix, on synthetic phrasings.

    python -m export.train_parser [--out models/command-parser] [--steps 900] [--seed 0]
    python -m export.train_parser --smoke            # CI: a few steps, into a temporary folder

Training checkpoints to --checkpoint (default .cache/train_parser/<seed>.pt) every --save-every
steps; the same command resumes from it (an interrupted run loses at most that many steps;
a finished one goes straight to export and evaluation). --fresh ignores a checkpoint.

One training sequence interleaves heard words and the fields they determine
(export.command_data: <bos> w1 [fields] <wait> w2 [fields] <wait> ... <eou> [fields] <end>);
the loss covers only the model's own tokens (fields, <wait>, <end>), so the model
learns to say what each prefix determines and then wait. Steps:
  1. train a Llama from a config (2 CPU threads, fixed seeds, fresh samples every step:
     grammar commands plus 15% non-command sentences, export.command_data.TrainingMix)
  2. save the Hugging Face folder (weights, config, WordLevel tokenizer.json)
  3. export with export.hf (optimum-onnx) and its streamed-vs-PyTorch parity check
  4. evaluate through the runtime path the parser node uses (edge_stream.load +
     CommandParser: feed one word, generate to <wait>) on held-out templates,
     in-distribution draws, held-out values, safety phrasings (negations, cancels,
     questions: no motion allowed) and held-out non-command sentences (silence rate):
     exact final command, exact stream, lag in words per field
  5. write MODEL_CARD.md and metrics.json, then move the folder into --out.
Exits 1 when parity fails, when a `stop` is not emitted on its word, or (full runs)
when held-out exact-match accuracy is below --min-accuracy; --out is then untouched.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from edge_stream.voice.grammar import KIND_WEIGHTS
from export.command_data import (
    END,
    HELD_OUT_RULES,
    HELD_OUT_VALUES,
    PAD,
    Generator,
    Teacher,
    TrainingMix,
    build_tokenizer,
    held_out_rule,
    non_command_sample,
    non_command_sentences,
    sequence,
    vocabulary,
)

log = logging.getLogger("export.train_parser")  # not __name__: "__main__" under python -m

# hidden 128, 3 layers: 0.45 M parameters. Utterances are < 64 tokens (p99 43); 256 positions is room.
CONFIG = dict(model_type="llama", hidden_size=128, intermediate_size=256, num_hidden_layers=3,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
              tie_word_embeddings=True, rope_theta=10000.0, rms_norm_eps=1e-5)
SLOTS = ("action", "direction", "amount")
MISSES_SHOWN = 4
CONTENT_TAGS = {"direction": ("dir",), "amount": ("num", "unit"), "stop": ("stop",)}
MOTION = {"move", "turn", "speed up"}
MIX_SHARE = 0.15  # share of non-command sentences in a training batch  # final actions that set the robot moving (or faster)


# ----- training ---------------------------------------------------------------------------

def collate(samples, vocab):
    """Right-padded batch: input ids, labels (-100 where the model does not predict), mask."""
    import torch

    seqs = [sequence(s, vocab) for s in samples]
    n = max(len(ids) for ids, _ in seqs)
    ids = torch.full((len(seqs), n), vocab[PAD], dtype=torch.long)  # [batch, seq]
    labels = torch.full((len(seqs), n), -100, dtype=torch.long)
    attn = torch.zeros((len(seqs), n), dtype=torch.long)
    for b, (seq, mask) in enumerate(seqs):
        t = torch.tensor(seq)
        ids[b, :len(seq)] = t
        attn[b, :len(seq)] = 1
        labels[b, :len(seq)] = torch.where(torch.tensor(mask, dtype=torch.bool), t, -100)
    return ids, labels, attn


def teacher_forced_exact(model, samples, vocab) -> float:
    """Share of samples whose every predicted token is right under teacher forcing (cheap proxy)."""
    import torch

    ids, labels, attn = collate(samples, vocab)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attn).logits  # [batch, seq, vocab]
    pred = logits[:, :-1].argmax(-1)
    target = labels[:, 1:]
    ok = (pred == target) | (target == -100)
    return float(ok.all(dim=1).float().mean())


def train(args, vocab):
    """A Llama trained for args.steps steps, resumed from args.checkpoint when it holds a run of
    the same recipe; returns (model, seconds, history, parameters). Seconds include earlier runs."""
    import torch
    from tqdm import tqdm
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    config = AutoConfig.for_model(**CONFIG, vocab_size=len(vocab), bos_token_id=vocab["<bos>"],
                                  eos_token_id=vocab[END], pad_token_id=vocab[PAD])
    model = AutoModelForCausalLM.from_config(config)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model: llama %d layers, hidden %d, vocab %d: %d parameters",
             CONFIG["num_hidden_layers"], CONFIG["hidden_size"], len(vocab), n_params)
    gen = TrainingMix(args.seed, MIX_SHARE)
    probe = Generator(args.seed + 1000, "heldout").samples(256)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = max(1, min(100, args.steps // 10))

    def lr_at(step):  # linear warm-up, cosine to 10%
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    history, start, earlier_s = [], 1, 0.0
    recipe = {"config": CONFIG, "vocab": len(vocab), "steps": args.steps, "batch": args.batch, "lr": args.lr,
              "seed": args.seed}
    ckpt = Path(args.checkpoint)
    if ckpt.is_file() and not args.fresh:
        state = torch.load(ckpt, weights_only=False)
        if state["recipe"] == recipe:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
            random.setstate(state["py_random"])
            gen.gen.rng.setstate(state["gen_rng"])
            gen.rng.setstate(state["mix_rng"])
            torch.set_rng_state(state["torch_rng"])
            history, start, earlier_s = state["history"], state["step"] + 1, state["seconds"]
            log.info("resumed from %s at step %d (%.0f s trained before)", ckpt, state["step"], earlier_s)
        else:
            log.info("checkpoint %s is of another recipe: starting afresh", ckpt)

    def save(step):
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"recipe": recipe, "model": model.state_dict(), "opt": opt.state_dict(),
                    "sched": sched.state_dict(), "py_random": random.getstate(), "gen_rng": gen.gen.rng.getstate(),
                    "mix_rng": gen.rng.getstate(), "torch_rng": torch.get_rng_state(), "history": history,
                    "step": step, "seconds": earlier_s + time.perf_counter() - t0}, tmp)
        tmp.replace(ckpt)  # atomic: an interrupted save leaves the previous checkpoint

    t0 = time.perf_counter()
    losses = []
    bar = tqdm(range(start, args.steps + 1), initial=start - 1, total=args.steps, desc="train", unit="step",
               disable=args.smoke)
    for step in bar:
        model.train()
        ids, labels, attn = collate(gen.samples(args.batch), vocab)
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % args.log_every == 0 or step == args.steps:
            model.eval()
            exact = teacher_forced_exact(model, probe, vocab)
            row = {"step": step, "loss": statistics.mean(losses), "heldout_tf_exact": exact,
                   "seconds": earlier_s + time.perf_counter() - t0}
            history.append(row)
            log.info("step %5d  loss %.4f  held-out teacher-forced exact %.3f  %.0f s",
                     step, row["loss"], exact, row["seconds"])
            losses = []
        if not args.smoke and (step % args.save_every == 0 or step == args.steps):
            save(step)
    model.eval()
    return model, earlier_s + time.perf_counter() - t0, history, n_params


def save_hf(model, hf_dir: Path) -> None:
    """Weights, config and the WordLevel tokenizer as a Hugging Face folder."""
    from transformers import PreTrainedTokenizerFast

    model.save_pretrained(hf_dir)
    PreTrainedTokenizerFast(tokenizer_object=build_tokenizer(), bos_token="<bos>", eos_token=END,
                            unk_token="<unk>", pad_token=PAD).save_pretrained(hf_dir)


# ----- evaluation through the runtime -------------------------------------------------------

def _settled_at(states, slot) -> int:
    """First index from which `slot` keeps its final value."""
    final = getattr(states[-1], slot)
    i = len(states)
    while i > 0 and getattr(states[i - 1], slot) == final:
        i -= 1
    return i


def run_sample(parser, sample):
    """Stream one sample through `parser` and through the Teacher.

    Returns (final command text, model states, model fields, teacher states, teacher fields,
    push_word milliseconds); states and fields have one entry per word, then one for the end.
    """
    from edge_stream.voice.command_parser import Command, apply_tokens, fields

    states, emitted, word_ms = [], [], []
    for w in sample.words:
        t = time.perf_counter()
        emitted.append(parser.push_word(w))
        word_ms.append((time.perf_counter() - t) * 1e3)
        states.append(parser.state)
    final = parser.end()
    emitted.append(parser.end_fields)
    states.append(parser.final)
    teacher, cmd = Teacher(), Command()
    t_states, t_emitted = [], []
    for toks in [teacher.push(w) for w in sample.words] + [teacher.end()]:
        cmd = apply_tokens(toks, replace(cmd))
        t_states.append(cmd)
        t_emitted.append(fields(toks))
    return final, states, emitted, t_states, t_emitted, word_ms


def evaluate(model, samples, name: str) -> dict:
    """Exact final command, exact stream, and lags in words, through CommandParser."""
    from edge_stream.voice.command_parser import CommandParser

    parser = CommandParser(model)
    exact = stream_exact = moved = said = streamed = 0
    lag_rule = {s: [] for s in SLOTS}
    lag_words = {s: [] for s in ("direction", "amount", "stop")}
    by_rule: dict[str, list[int]] = {}
    failures, word_ms = [], []
    for s in samples:
        final, states, emitted, t_states, t_emitted, ms = run_sample(parser, s)
        word_ms += ms
        ok = final == s.command
        exact += ok
        actions = {c.action for c in parser.result.commands}
        meant = set(s.command.replace(" then ", "|").split("|")) if s.command else set()
        meant_motion = any(m.split(" ")[0] in ("move", "turn") or m.startswith("speed up") for m in meant)
        moved += bool(actions & MOTION) and not meant_motion  # motion the words did not ask for
        said += bool(final)
        streamed += any(f and f != ["void"] for f in emitted)  # any field published, however retracted
        stream_exact += emitted == t_emitted
        rule = held_out_rule(s.template) or "(training templates)"
        by_rule.setdefault(rule, []).append(int(ok))
        if not ok:
            failures.append({"words": s.text, "expected": s.command, "got": final,
                             "emitted": [" ".join(f) for f in emitted]})
            continue
        for slot in SLOTS:
            if getattr(states[-1], slot) is None:
                continue
            t_model, t_teacher = _settled_at(states, slot), _settled_at(t_states, slot)
            lag_rule[slot].append(t_model - t_teacher)
            key = "stop" if slot == "action" and states[-1].action == "stop" else slot
            if key in lag_words:
                content = [i for i, g in enumerate(s.tags[:t_teacher + 1]) if g in CONTENT_TAGS[key]]
                if content:
                    lag_words[key].append(t_model - content[-1])
    n = len(samples)

    def summary(xs):
        if not xs:
            return {"n": 0}
        hist = {}
        for x in xs:
            hist[str(x)] = hist.get(str(x), 0) + 1
        return {"n": len(xs), "mean": round(statistics.mean(xs), 3), "max": max(xs), "hist": hist}

    word_ms.sort()
    return {
        "split": name, "n": n, "exact": exact / n, "stream_exact": stream_exact / n,
        "unasked_motion": moved / n, "any_command": said / n, "any_field_streamed": streamed / n,
        "by_rule": {k: {"n": len(v), "exact": sum(v) / len(v)} for k, v in sorted(by_rule.items())},
        "lag_vs_rule": {k: summary(v) for k, v in lag_rule.items()},
        "lag_words": {k: summary(v) for k, v in lag_words.items()},
        "push_word_ms": {"p50": round(word_ms[len(word_ms) // 2], 3),
                         "p95": round(word_ms[int(len(word_ms) * 0.95)], 3)},
        "failures": failures[:20],
    }


WORDS_PER_MINUTE = 150  # speaking rate used to turn words of non-command speech into hours


def wake_false_accepts(model, sentences, wake_word: str = "robot") -> dict:
    """Non-command sentences through the parser with the wake-word rule of CommandParserPolicy
    (only fields after the wake word count, stop always): how many still give a command."""
    from edge_stream.voice.command_parser import CommandParser, fold

    parser = CommandParser(model)
    accepted, words = 0, 0
    for text in sentences:
        woke_at = None
        for w in text.split():
            parser.push_word(w)
            if w == wake_word and woke_at is None:
                woke_at = len(parser.tokens)
        parser.end()
        tokens = parser.last_tokens
        counted = tokens[woke_at:] if woke_at is not None else (["stop"] if "stop" in tokens else [])
        accepted += bool(fold(counted).commands)
        words += len(text.split())
    hours = words / WORDS_PER_MINUTE / 60
    return {"sentences": len(sentences), "accepted": accepted, "hours": round(hours, 3),
            "per_hour": round(accepted / hours, 2) if hours else None}


def stop_probe(model) -> list[str]:
    """Problems with `stop` emitted anywhere but on its word, over fixed phrasings."""
    from edge_stream.voice.command_parser import CommandParser

    parser = CommandParser(model)
    problems = []
    for text in ("stop", "okay robot stop now", "move forward two meters stop", "turn left uh halt",
                 "go forward no stop", "please stop right now", "turn right ninety freeze"):
        words = text.split()
        for i, w in enumerate(words):
            got = parser.push_word(w)
            if w in ("stop", "halt", "freeze") and "stop" not in got:
                problems.append(f"{text!r}: no stop on word {i} ({w!r}), got {got}")
                break
        final = parser.end()
        if final != "stop":
            problems.append(f"{text!r}: final {final!r}, expected 'stop'")
    return problems


# ----- model card ---------------------------------------------------------------------------

def _lag_line(m: dict) -> str:
    parts = []
    for k, v in m.items():
        if v.get("n"):
            parts.append(f"{k} mean {v['mean']:.2f} max {v['max']} ({v['n']} fields; histogram {v['hist']})")
    return "; ".join(parts)


def write_card(out: Path, args, metrics: dict) -> None:
    ev = metrics["eval"]
    rows = "\n".join(
        f"| {e['split']} | {e['n']} | {e['exact']:.4f} | {e['stream_exact']:.4f} | "
        f"{e['push_word_ms']['p50']:.2f} / {e['push_word_ms']['p95']:.2f} |" for e in ev.values())
    held = ev["heldout"]
    rules = "\n".join(f"| {k} | {v['n']} | {v['exact']:.4f} |" for k, v in held["by_rule"].items())
    cmd = "python -m export.train_parser " + " ".join(args.argv)
    misses = "\n".join(f"- {e['split']}: `{f['words']}` -> `{f['got']}`, expected `{f['expected']}`"
                       for e in ev.values() for f in e["failures"][:MISSES_SHOWN]) or "none"
    card = f"""# command-parser

A streaming parser of spoken robot commands: a tiny Llama (Hugging Face architecture,
{metrics['parameters']:,} parameters, {CONFIG['num_hidden_layers']} layers, hidden {CONFIG['hidden_size']},
vocabulary {metrics['vocab_size']} word-level tokens) that reads recognized words one at a time and emits
the fields of a structured command as soon as the words so far determine them
(prefix-to-prefix training). Runtime: `edge_stream.voice.command_parser.CommandParser`.

## Output

`move forward 2.0 m`, `move back 3.0 m`, `turn left 90 deg`, `turn right`, `turn 180 deg` ("turn around"),
`move forward 2.0 s` (a duration), `move forward slowly`, `wait 2.0 s`, `stop`, `speed up`, `slow down`;
two commands in order (`turn left then move forward 2.0 m`); none (not a command), cancelled.
Token stream: action, direction, amount (`2 ##. ##0 m` decodes to `2.0 m`; units m, deg, s), speed
(`slowly`, `fast`), `<fix>` (the fields after it overwrite fields already emitted), `<then>` (the fields
after it start the next command), `cancel` (the speaker cancelled: "don't move", "never mind"), `void`
(the words were not a command after all). `<wait>` ends the model's turn after each word; `<eou>` is fed
at the end of the utterance, `<end>` answers it. At run time the decoding is constrained by the output
grammar (`edge_stream.voice.grammar.output_grammar`, llguidance): a field only takes a value the
grammar allows.

Emission rules (edge_stream/voice/grammar.py, `Teacher`): an action or direction on its word; a stop
word always emits `stop` on its word (lag 0), whatever came before; "go" waits for the next word; an
amount when its number and unit are settled (on the unit word, else at the first word that cannot
continue it, or at the end); a negation or cancel word emits `cancel`; a question word at the start
silences the utterance; the second word the grammar has no place for makes it `void`.

## Data

Synthetic, seeded, from the one grammar file edge_stream/voice/grammar.py (`Generator`; the recognizer's
phrases and vocabulary come from the same file): single commands with openers and closers, hesitations,
unknown words, numbers as words (1-360, "one eighty", "half a", "one point five", up to 100 m), units
(metres, degrees, seconds), speeds, "turn around", "let's go", "wait two seconds", corrections (markers
no, sorry, no wait, i mean, actually, oops), stop interrupting a command; two commands joined by "then" or "and then";
negations ("don't", "do not", "never"), cancels ("never mind", "cancel (that)", "forget it") and
questions. Kinds per draw: {KIND_WEIGHTS}. Plus {int(MIX_SHARE * 100)}% non-command sentences per batch
(`export.command_data.TrainingMix`: Debian fortunes-min texts and generated conversation, training
split; the held-out 20% is never trained on), all targets from the rule-based `Teacher`. In 30% of the
samples each grammar homophone ("to"/"two", "for"/"four") is swapped for its twin with probability 1/2
in the heard words, the targets unchanged: a recognizer can only tell them apart from context.
Held-out templates (never trained on; each word and part occurs in training, the combination does not):
{chr(10).join('- ' + k for k in HELD_OUT_RULES)}
Held-out values (never drawn in training): degrees {HELD_OUT_VALUES['deg']}, metres {HELD_OUT_VALUES['m']},
seconds {HELD_OUT_VALUES['s']}.

## Training

`{cmd}`: {args.steps} steps of {args.batch} utterances, AdamW lr {args.lr}, {args.threads} CPU threads,
seed {args.seed}; {metrics['train_seconds']:.0f} s of training, wall time on a shared 2-core machine
({metrics['total_seconds']:.0f} s with export and evaluation). Export: `export.hf` (optimum-onnx, fp32);
parity: {metrics['parity']}

## Evaluation (through the runtime: edge_stream.load + CommandParser, one word at a time)

| split | utterances | exact final command | exact stream (every field on the teacher's word) | push_word ms p50 / p95 |
|---|---|---|---|---|
{rows}

Held-out templates, by rule:

| rule | n | exact |
|---|---|---|
{rules}

Lag in words, held-out templates (fields of correctly parsed commands):
- vs the emission rule (word on which the teacher emits the field; 0 = as early as the words allow):
  {_lag_line(held['lag_vs_rule'])}
- vs the field's last content word (the number or unit word for amounts, the direction word, the stop
  word): {_lag_line(held['lag_words'])}

Safety (final commands): motion the words did not ask for, on negations, cancels and questions
{ev['safety (negation, cancel, question)']['unasked_motion']:.2%}
({ev['safety (negation, cancel, question)']['n']} utterances); held-out non-command sentences with no command
{1 - ev['non-command (held-out sentences)']['any_command']:.2%} and with no field published at any word
{1 - ev['non-command (held-out sentences)']['any_field_streamed']:.2%} ({ev['non-command (held-out sentences)']['n']}
sentences, word level: the true words through the parser, out-of-grammar words as `<unk>`).

Wake word "robot" (route option `wake_word`): {metrics['wake_word_false_accepts']['accepted']} of
{metrics['wake_word_false_accepts']['sentences']} held-out non-command sentences still give a command
({metrics['wake_word_false_accepts']['per_hour']} per hour of non-command speech at {WORDS_PER_MINUTE} words/min,
word level; stop words count without the wake word).

`stop` probe (fixed phrasings, stop must come on its word): {metrics['stop_probe'] or 'passed'}.

## Misses (first {MISSES_SHOWN} per split: words -> got, expected)

{misses}
"""
    (out / "MODEL_CARD.md").write_text(card)


# ----- main -------------------------------------------------------------------------------

def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description="Train, export and evaluate the streaming command parser.")
    parser.add_argument("--out", default=None, help="model directory (default models/command-parser; "
                                                    "with --smoke a temporary folder)")
    parser.add_argument("--steps", type=int, default=900)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval", type=int, default=1000, help="held-out template utterances to evaluate")
    parser.add_argument("--min-accuracy", type=float, default=0.95)
    parser.add_argument("--log-every", type=int, default=150)
    parser.add_argument("--save-every", type=int, default=50, help="checkpoint every this many steps")
    parser.add_argument("--checkpoint", default=None, help="checkpoint file (default .cache/train_parser/seed<N>.pt)")
    parser.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    parser.add_argument("--smoke", action="store_true", help="a few steps and a small evaluation (CI)")
    args = parser.parse_args(argv)
    args.argv = argv
    if args.checkpoint is None:
        args.checkpoint = f".cache/train_parser/seed{args.seed}.pt"
    if args.smoke:
        args.steps, args.batch, args.eval, args.log_every = min(args.steps, 10), 16, min(args.eval, 20), 5
    from export.parity import progress_logging

    progress_logging()
    logging.getLogger("optimum").setLevel(logging.ERROR)
    t_start = time.perf_counter()

    import edge_stream as es
    from export.hf import export_hf

    vocab = {t: i for i, t in enumerate(vocabulary())}
    log.info("[1/5] training (%d steps, batch %d, %d threads)", args.steps, args.batch, args.threads)
    model, train_s, history, n_params = train(args, vocab)

    out = Path(args.out) if args.out else None
    if out is None and not args.smoke:
        out = Path("models/command-parser")
    work_root = Path(tempfile.mkdtemp(prefix="command-parser-", dir=out.parent if out else None))
    hf_dir, onnx_dir = work_root / "hf", work_root / (out.name if out else "command-parser")
    log.info("[2/5] Hugging Face folder %s", hf_dir)
    save_hf(model, hf_dir)
    log.info("[3/5] export + parity (export.hf)")
    report = export_hf(str(hf_dir), onnx_dir)
    log.info("      %s", report.summary())

    log.info("[4/5] evaluation through edge_stream.load + CommandParser")
    loaded = es.load(onnx_dir)
    splits = {"heldout": Generator(args.seed + 1, "heldout").samples(args.eval),
              "in-distribution": Generator(args.seed + 2, "train").samples(max(1, args.eval // 2)),
              "held-out values": Generator(args.seed + 3, "values").samples(max(1, args.eval // 3)),
              "safety (negation, cancel, question)":
                  Generator(args.seed + 4, "train", kinds=("negation", "cancel", "question")).samples(
                      max(1, args.eval // 2)),
              "non-command (held-out sentences)":
                  [non_command_sample(x) for x in non_command_sentences("heldout")][:max(1, args.eval)]}
    ev = {}
    for name, samples in splits.items():
        ev[name] = evaluate(loaded, samples, name)
        e = ev[name]
        log.info("      %-16s exact %.4f  stream exact %.4f  (%d utterances)", name, e["exact"],
                 e["stream_exact"], e["n"])
    held = ev["heldout"]
    log.info("      lag vs rule (held-out): %s", _lag_line(held["lag_vs_rule"]))
    log.info("      lag vs content word (held-out): %s", _lag_line(held["lag_words"]))
    for f in held["failures"][:5]:
        log.info("      miss: %r -> %r (expected %r) %s", f["words"], f["got"], f["expected"], f["emitted"])
    probe = stop_probe(loaded)
    wake = wake_false_accepts(loaded, non_command_sentences("heldout"))
    log.info("      wake word 'robot': %d of %d held-out non-command sentences give a command (%.2f per hour "
             "at %d words/min)", wake["accepted"], wake["sentences"], wake["per_hour"] or 0, WORDS_PER_MINUTE)

    metrics = {"parameters": n_params, "vocab_size": len(vocab), "config": CONFIG, "steps": args.steps,
               "batch": args.batch, "seed": args.seed, "threads": args.threads,
               "train_seconds": round(train_s, 1), "history": history, "parity": report.summary(),
               "eval": ev, "stop_probe": probe, "wake_word_false_accepts": wake, "total_seconds": round(time.perf_counter() - t_start, 1)}
    failures = []
    if not report.passed:
        failures.append("parity: " + report.summary())
    stop_lags = held["lag_words"]["stop"]
    if not args.smoke:  # a smoke run checks the recipe end to end, not what a few steps learned
        failures += probe
        if stop_lags.get("n") and stop_lags["max"] != 0:
            failures.append(f"stop emitted {stop_lags['max']} words late on a held-out phrasing")
        if held["exact"] < args.min_accuracy:
            failures.append(f"held-out exact {held['exact']:.4f} < {args.min_accuracy}")
        safety = ev["safety (negation, cancel, question)"]
        if safety["unasked_motion"] > 0:
            failures.append(f"unasked motion on {safety['unasked_motion']:.2%} of negations, cancels and questions")
        silent = 1 - ev["non-command (held-out sentences)"]["any_command"]
        if silent < 0.99:
            failures.append(f"non-command sentences silent {silent:.2%} < 99%")

    log.info("[5/5] model card and metrics")
    write_card(onnx_dir, args, metrics)
    (onnx_dir / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    if failures:
        print("FAIL: " + "; ".join(failures) + f" (model left in {onnx_dir})")
        return 1
    if out is None:
        shutil.rmtree(work_root)
        print(f"ok (smoke): parity passed, held-out exact {held['exact']:.3f} after {args.steps} steps")
        return 0
    if out.exists():
        shutil.rmtree(out)
    shutil.move(str(onnx_dir), out)
    shutil.rmtree(work_root)
    print(f"ok: {out}: held-out exact {held['exact']:.4f}, stream exact {held['stream_exact']:.4f}, "
          f"{n_params} parameters, {train_s:.0f} s training")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
