"""Train the command recognizer over a frozen real-speech embedding, and export it as one streaming graph.

    nice -n 10 python -m export.train_embed_recognizer -o models/command-recognizer-embed   # the recipe
    python -m export.train_embed_recognizer -o /tmp/rec --smoke                            # seconds, for CI

Why (issue 10): the conv recognizer (`export.train_recognizer`), trained on three synthesizers,
reached 0.13 WER on their held-out voices but stayed at 0.44 on festival, the synthesizer held
out of training: it learnt the synthesizers' voices. Here the acoustic front end is Google's
speech embedding (`export.speech_embedding`), trained on real speakers and kept frozen; only a
small causal head on top learns, from the same synthetic data and augmentation. A first probe
(80 ms steps, 3000 head steps) already gave festival a WER of 0.26.

Model (one ONNX graph, a `BlockStream`: 640-sample blocks with 352 samples of context):
  samples -> log-mel (the embedding's own front end: STFT as Conv, 32 mel bands) -> the last 76 mel
  frames (72 carried as state) -> the embedding (96-d, 40 ms steps) -> a causal ConvNeXt-style head
  (LayerNorm, 8 blocks of depthwise conv kernel 3 with dilations 1..16, each conv's left context a
  state) -> CTC log-probs over one label per grammar word (`train_recognizer.SYMBOLS`, one frame per
  block). Look-ahead: none.

Training: the features of each epoch are computed once and cached (`export.embed_features`: the
conv recognizer's augmentation chain per (seed, epoch, utterance), two harsh epochs and one mild
one by default); the head trains on them with CTC plus the conv recipe's alignment guide (each
word's label on the frames 20-100 ms after its end), AdamW with warm-up and cosine decay.
Checkpoints every few minutes; `--resume` continues. Ends with a parity check (ONNX streaming
under random chunkings = the reference features through the PyTorch head) and the evaluation of
`export.eval_recognizer` (per synthesizer, clean and 10 dB, metrics.json and MODEL_CARD.md).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from export import embed_features as ef
from export import speech_data as sd
from export import speech_embedding as se
from export import train_recognizer as tr

SYMBOLS = tr.SYMBOLS
ALIGN_OFFSETS = (0, 1)  # guide frames: the block holding the sample ALIGN_AFTER after a word's end, and the next
ALIGN_AFTER = 320  # samples (20 ms)
BATCH_JITTER = 3  # frames: lengths jittered by up to this when batches are drawn


@dataclass(frozen=True)
class HeadConfig:
    channels: int = 256
    kernel: int = 3
    dilations: tuple = (1, 2, 4, 8, 16, 1, 2, 4)
    expand: int = 2
    vocab: int = len(SYMBOLS)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 4000
    lr: float = 1e-3
    warmup: int = 300
    batch_frames: int = 1600  # 40 ms frames per batch (64 s of audio)
    align_weight: float = 0.5
    epochs: tuple = ("train", "light")  # augmentation chain of each cached feature epoch (harsh, then mild)
    seed: int = 0


def build_head(cfg: HeadConfig):
    """The causal head (torch imported lazily: the runtime never imports this file)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Block(nn.Module):
        def __init__(self, dilation: int):
            super().__init__()
            self.cache_len = (cfg.kernel - 1) * dilation
            self.dw = nn.Conv1d(cfg.channels, cfg.channels, cfg.kernel, dilation=dilation, groups=cfg.channels)
            self.norm = nn.LayerNorm(cfg.channels)
            self.up = nn.Linear(cfg.channels, cfg.channels * cfg.expand)
            self.down = nn.Linear(cfg.channels * cfg.expand, cfg.channels)

        def forward(self, x, cache):  # x [batch, frames, channels], cache [batch, channels, cache_len]
            full = torch.cat([cache, x.transpose(1, 2)], dim=2)
            y = self.dw(full).transpose(1, 2)
            return x + self.down(F.gelu(self.up(self.norm(y)))), full[:, :, full.shape[2] - self.cache_len:]

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.cfg = cfg
            self.norm_in = nn.LayerNorm(se.EMBED_DIM)
            self.proj = nn.Linear(se.EMBED_DIM, cfg.channels)
            self.blocks = nn.ModuleList(Block(d) for d in cfg.dilations)
            self.norm = nn.LayerNorm(cfg.channels)
            self.out = nn.Linear(cfg.channels, cfg.vocab)
            self.register_buffer("spelling", torch.tensor(tr.spelling_matrix(cfg.vocab)), persistent=False)

        def initial_states(self, batch: int):
            return [torch.zeros(batch, cfg.channels, b.cache_len) for b in self.blocks]

        def logits(self, emb, states):
            """emb [batch, frames, 96] -> (logits [batch, frames, vocab], new states)."""
            x = self.proj(self.norm_in(emb))
            new = []
            for block, st in zip(self.blocks, states):
                x, st = block(x, st)
                new.append(st)
            return self.out(self.norm(x)), new

        def forward(self, emb, *states):
            """The exported step: log-probs with SAME_SOUND folded, and the new states."""
            logits, new = self.logits(emb, states)
            probs = torch.matmul(F.softmax(logits, dim=-1), self.spelling)
            return (torch.log(probs.clamp_min(tr.PROB_FLOOR)), *new)

    return Head()


# -- training -------------------------------------------------------------------------------------

def batch_plan(lengths: np.ndarray, n_epochs: int, tcfg: TrainConfig) -> list[tuple[int, np.ndarray]]:
    """(feature epoch, utterance indices) of every step; a function of the seed alone (resumable).
    Pass k over the data reads feature epoch k mod n_epochs."""
    plan = tr.batch_plan(lengths, tcfg.batch_frames, tcfg.steps, tcfg.seed, jitter=BATCH_JITTER)
    return [(k % n_epochs, b) for k, b in plan]


def make_batch(epoch: ef.EpochFeatures, data: sd.SpeechSet, idx: np.ndarray, rng: np.random.Generator):
    """Padded features, frame lengths, CTC targets and alignment-guide triples (row, frame, label)."""
    import torch

    seqs = [epoch.utterance(int(i)) for i in idx]
    targets = [tr.encode(data.text(int(i))) for i in idx]
    x = torch.zeros(len(idx), max(len(s) for s in seqs), se.EMBED_DIM)
    align = []
    for j, (i, s) in enumerate(zip(idx, seqs)):
        x[j, :len(s)] = torch.from_numpy(s.astype(np.float32))
        for _ in range(2):  # time masks of up to 2 frames (80 ms)
            w, t0 = int(rng.integers(0, 3)), int(rng.integers(0, max(1, len(s) - 2)))
            x[j, t0:t0 + w] = 0.0
        for end, lab in zip(epoch.word_ends[int(i)], targets[j]):
            f = (int(end) + ALIGN_AFTER) // se.BLOCK
            align += [(j, f + k, lab) for k in ALIGN_OFFSETS if f + k < len(s)]
    return (x, torch.tensor([len(s) for s in seqs]), torch.tensor([c for t in targets for c in t]),
            torch.tensor([len(t) for t in targets]), torch.tensor(align, dtype=torch.long).reshape(-1, 3))


def train(head, data: sd.SpeechSet, epochs: list[ef.EpochFeatures], tcfg: TrainConfig, checkpoint: Path | None,
          resume: dict | None = None, checkpoint_min: float = 5.0) -> dict:
    import torch.nn.functional as F

    lengths = np.diff(epochs[0].offsets)
    plan = batch_plan(lengths, len(epochs), tcfg)
    opt, sched = tr.adamw_cosine(head, tcfg.lr, tcfg.warmup, tcfg.steps)
    step, train_s = 0, 0.0
    if resume is not None:
        head.load_state_dict(resume["model"])
        opt.load_state_dict(resume["opt"])
        sched.load_state_dict(resume["sched"])
        step, train_s = int(resume["step"]), float(resume["train_s"])
        print(f"resuming at step {step}/{tcfg.steps} ({train_s:.0f} s trained so far)", flush=True)
    head.train()
    bar = tr._progress(tcfg.steps, step)
    t_run, t_saved, loss_avg = time.time(), time.time(), None
    while step < tcfg.steps:
        k, idx = plan[step]
        x, lens, targets, target_lens, align = make_batch(epochs[k], data, idx, np.random.default_rng([tcfg.seed, 1, step]))
        logits, _ = head.logits(x, head.initial_states(len(idx)))
        loss = tr.ctc_guide_step(F.log_softmax(logits, dim=-1), targets, lens, target_lens, align, tcfg.align_weight,
                                 head, opt, sched)
        step += 1
        loss_avg = loss.item() if loss_avg is None else 0.98 * loss_avg + 0.02 * loss.item()
        bar.update(step, loss_avg, sched.get_last_lr()[0])
        if checkpoint is not None and (time.time() - t_saved > 60 * checkpoint_min or step == tcfg.steps):
            tr.save_checkpoint(checkpoint, head, opt, sched, step, train_s + time.time() - t_run, head.cfg, tcfg)
            t_saved = time.time()
    bar.close()
    head.eval()
    return {"steps": step, "train_s": round(train_s + time.time() - t_run), "final_loss": round(loss_avg or 0.0, 3)}


# -- export: front end + embedding + head as one graph ------------------------------------------

def front_graph(paths: dict[str, Path]):
    """samples [batch, CONTEXT + BLOCK], mel_history [batch, 72, 32] (stored minus MEL_FLOOR, so the
    zero initial state is the floor) -> window [batch, 76, 32, 1] and the next mel_history."""
    from onnx import TensorProto, helper, numpy_helper

    w = se.mel_weights(paths)
    c = lambda name, v: numpy_helper.from_array(np.asarray(v, np.float32), name)
    inits = [c("pcm_scale", se.PCM_SCALE), c("dft_real", w["real"]), c("dft_imag", w["imag"]), c("mel_matrix", w["mel"]),
             c("power_min", w["power_min"]), c("log10_e", 1.0 / math.log(10.0)), c("two", 2.0), c("mel_floor", se.MEL_FLOOR),
             numpy_helper.from_array(np.array([1], np.int64), "axis1"),
             numpy_helper.from_array(np.array([3], np.int64), "axis3"),
             numpy_helper.from_array(np.array([se.BLOCK // se.HOP], np.int64), "keep_from"),
             numpy_helper.from_array(np.array([se.MEL_FRAMES], np.int64), "keep_to")]
    nodes = [
        helper.make_node("Mul", ["samples", "pcm_scale"], ["pcm"]),
        helper.make_node("Unsqueeze", ["pcm", "axis1"], ["pcm3"]),
        helper.make_node("Conv", ["pcm3", "dft_real"], ["re"], strides=[se.HOP]),
        helper.make_node("Conv", ["pcm3", "dft_imag"], ["im"], strides=[se.HOP]),
        helper.make_node("Mul", ["re", "re"], ["re2"]),
        helper.make_node("Mul", ["im", "im"], ["im2"]),
        helper.make_node("Add", ["re2", "im2"], ["power_t"]),
        helper.make_node("Transpose", ["power_t"], ["power"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["power", "mel_matrix"], ["mel_power"]),
        helper.make_node("Max", ["mel_power", "power_min"], ["mel_clipped"]),
        helper.make_node("Log", ["mel_clipped"], ["mel_ln"]),
        helper.make_node("Mul", ["mel_ln", "log10_e"], ["mel_log10"]),
        helper.make_node("Add", ["mel_log10", "two"], ["mel_new"]),  # 10 log10(p) / 10 + 2
        helper.make_node("Add", ["mel_history", "mel_floor"], ["history"]),
        helper.make_node("Concat", ["history", "mel_new"], ["window3"], axis=1),
        helper.make_node("Unsqueeze", ["window3", "axis3"], ["window"]),
        helper.make_node("Slice", ["window3", "keep_from", "keep_to", "axis1"], ["kept"]),
        helper.make_node("Sub", ["kept", "mel_floor"], ["mel_history_out"]),
    ]
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes, "front", [helper.make_tensor_value_info("samples", f, ["batch", se.CONTEXT + se.BLOCK]),
                         helper.make_tensor_value_info("mel_history", f, ["batch", se.HISTORY, se.N_MELS])],
        [helper.make_tensor_value_info("window", f, ["batch", se.MEL_FRAMES, se.N_MELS, 1]),
         helper.make_tensor_value_info("mel_history_out", f, ["batch", se.HISTORY, se.N_MELS])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def export_onnx(head, out_dir: Path, paths: dict[str, Path]) -> Path:
    """model.onnx = front_graph -> the embedding (opset 13 -> 17) -> the head (torch export), merged;
    tokenizer.json and manifest.json as the conv recognizer's."""
    import tempfile

    import onnx
    import torch
    from onnx import compose, helper, version_converter

    out_dir.mkdir(parents=True, exist_ok=True)
    states = head.initial_states(1)
    state_in, state_out = tr.cache_names(len(states))
    with tempfile.TemporaryDirectory() as tmp:
        head_path = Path(tmp) / "head.onnx"
        dynamic = {n: {0: "batch"} for n in ["embedding", "logprobs"] + state_in + state_out}
        torch.onnx.export(head, (torch.zeros(1, 1, se.EMBED_DIM), *states), str(head_path),
                          input_names=["embedding"] + state_in, output_names=["logprobs"] + state_out,
                          dynamic_axes=dynamic, opset_version=17, dynamo=False)
        head_model = onnx.load(str(head_path))
    emb = version_converter.convert_version(onnx.load(str(paths["embedding_model.onnx"])), 17)
    emb = onnx.compose.add_prefix(emb, "embedding/")
    # The embedding's output [batch, 1, 1, 96] -> [batch, 1, 96] for the head.
    shape = onnx.numpy_helper.from_array(np.array([0, 1, se.EMBED_DIM], np.int64), "embedding/to_frames")
    emb.graph.initializer.append(shape)
    emb.graph.node.append(helper.make_node("Reshape", [emb.graph.output[0].name, "embedding/to_frames"], ["emb_frames"]))
    del emb.graph.output[:]
    emb.graph.output.append(helper.make_tensor_value_info("emb_frames", onnx.TensorProto.FLOAT, ["batch", 1, se.EMBED_DIM]))
    front = front_graph(paths)
    for m in (front, emb, head_model):  # merge_models needs one IR version and one opset
        m.ir_version = 8
        del m.opset_import[:]
        m.opset_import.extend([helper.make_opsetid("", 17)])
    model = compose.merge_models(front, emb, io_map=[("window", emb.graph.input[0].name)],
                                 outputs=["mel_history_out", "emb_frames"])
    model = compose.merge_models(model, head_model, io_map=[("emb_frames", "embedding")],
                                 outputs=["logprobs", "mel_history_out"] + state_out)
    onnx.checker.check_model(model)
    onnx.save(model, str(out_dir / "model.onnx"))
    states = [("mel_history", "mel_history_out", (1, se.HISTORY, se.N_MELS))] + \
        [(i, o, tuple(st.shape)) for i, o, st in zip(state_in, state_out, states)]
    tr.write_model_files(out_dir, states, se.BLOCK, se.CONTEXT,
                         {"recipe": "export.train_embed_recognizer", "config": asdict(head.cfg), "front_end": se.WHEEL,
                          "frames_per_block": 1, "lookahead_frames": 0, "unk": sd.UNK_WORD})
    return out_dir


def check_parity(head, model_dir: Path, audio: np.ndarray, features: se.Features, seed: int) -> float:
    """The checks that can fail: ONNX streaming (whole, random chunkings) vs the reference features
    (numpy mel + ORT embedding on the whole utterance) through the PyTorch head."""
    import torch

    with torch.no_grad():
        emb = torch.from_numpy(features.embed(audio))[None]
        ref = head(emb, *head.initial_states(1))[0][0].numpy()
    padded = np.concatenate([audio, np.zeros(-len(audio) % se.BLOCK, np.float32)])
    return tr.stream_matches(model_dir, padded, ref, seed, "reference")


# -- model card -----------------------------------------------------------------------------------

CARD_LIMITS = """## Limits
Trained on synthetic speech only; the frozen embedding was trained on real speakers, which is what
carries the head to voices it never heard, but real microphones, rooms and speakers have not been
measured. A closed vocabulary: words outside the grammar come out as `<unk>` at best.
"meter(s)"/"metre(s)" and "to"/"two" sound the same; greedy causal CTC can only tell the latter
apart from the words before it. Confidence is a single frame's posterior, not calibrated on real
speech. The embedding model is Google's (TF Hub `speech_embedding`, Apache-2.0), as packaged by
openWakeWord 0.5.1 (its melspectrogram.onnx and embedding_model.onnx, sha256 in
`export/speech_embedding.py`).
"""


def card_sections(t: dict, rtf: dict) -> str:
    """MODEL_CARD.md's title, model, data and training sections (export.eval_recognizer adds the metrics)."""
    cfg = HeadConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in t.get("config", {}).items()})
    tt = t.get("training", {})
    kinds = ", ".join(f"{k} {v}" for k, v in t.get("train_kinds", {}).items())
    receptive = (1 + sum((cfg.kernel - 1) * d for d in cfg.dilations)) * se.BLOCK * 1000 // se.SAMPLE_RATE
    command = t.get("command", "python -m export.train_embed_recognizer").replace(" --resume", "")
    return f"""# command-recognizer (speech-embedding front end)

A streaming speech recognizer for short robot commands: raw 16 kHz samples in, CTC log-probs over
{cfg.vocab - 1} labels (one per grammar word, plus `<unk>` for any other word; and the blank) out, one
frame per {se.BLOCK}-sample (40 ms) block. Runs on ONNX Runtime through `edge_stream.load(dir).open_stream()`
(a `BlockStream`: {se.CONTEXT} samples of context; the last {se.HISTORY} mel frames and {len(cfg.dilations)} conv caches as
recurrent state I/O) with `edge_stream.voice.ctc.CtcDecoder.from_model(model)` on top; each decoded
word carries a `confidence` (its label's posterior on the frame it won).

## Model
- Front end, frozen: Google's speech embedding, trained on real speakers, as openWakeWord packages it
  ({t.get('front_end', se.WHEEL)} on PyPI): its log-mel (512-point STFT every 10 ms, 32 mel bands,
  `10 log10 / 10 + 2`) and its embedding model (96 values from the last 76 mel frames, 760 ms), run
  every 40 ms. The mel model's clip to 80 dB below each chunk's maximum is left out (it depends on
  the chunking); its fixed floor stays.
- Head, trained: LayerNorm, a linear map to {cfg.channels} channels, {len(cfg.dilations)} causal ConvNeXt-style blocks
  (depthwise kernel {cfg.kernel}, dilations {list(cfg.dilations)}, LayerNorm, pointwise MLP x{cfg.expand}), a linear CTC head.
- Causal by construction: look-ahead 0 frames; the head sees {receptive} ms of embeddings, each of
  which covers 760 ms of audio. {t.get('parameters', '?')} trained parameters (the embedding's are frozen).
- Labels (`tokenizer.json`, id -> word): `<blank>` (id 0) and the words of the command grammar
  (`edge_stream.voice.grammar`, through `export.speech_data.VOCABULARY`); words outside it train as `<unk>`.
- Real-time factor on one core (1 ORT thread, process pinned to one CPU, streaming 20 ms chunks
  with decoding, best of 3 on a shared 2-core machine): **{rtf['rtf_1_core']:.3f}** ({rtf['ms_per_block']:.2f} ms per 40 ms block).

## Data
The conv recognizer's training set (`export.train_recognizer.load_training_set`, `export/synth.py`
split "train"): espeak-ng's {len(sd.TRAIN_VOICES)} training voices and flite's awb and rms, half the utterances
each, and GnuSpeech's drawn talkers; {t.get('train_utterances', '?')} utterances ({kinds}), commands from the
grammar and non-command sentences. Festival, flite's kal, kal16 and slt, GnuSpeech's presets and
speech_data's held-out espeak-ng voices never train. Each feature epoch hears every utterance once
through `train_recognizer.heard` (speed, pitch, rooms, noise and babble at 0-30 dB SNR, microphone
bands, levels, clipping, converters), the chains {list(tt.get('epochs', []))}; two time masks per utterance.

## Training
    {command}

Features: each epoch's embeddings computed once and cached (`export.embed_features`, {tt.get('workers', 2)} processes).
Head: {tt.get('steps', '?')} steps of AdamW (peak lr {tt.get('lr', 0):g}, {tt.get('warmup', '?')} warm-up steps, cosine decay),
{tt.get('batch_frames', '?')} frames (40 ms) per batch, CTC plus a cross-entropy guide putting each word's label on the
frames 20-100 ms after its end; torch on {tt.get('threads', '?')} thread: {tt.get('train_s', '?')} s of head training ({t.get('export_s', '?')} s for
the command with the features already cached; computing them took about 25 minutes per epoch with
2 processes on this shared 2-core machine). Final smoothed loss {tt.get('final_loss', '?')}.
The export check compares ONNX streaming (random chunkings) with the reference features (numpy mel,
ORT embedding on the whole utterance) through the PyTorch head.

"""


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", type=Path, default=Path("models/command-recognizer-embed"))
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    parser.add_argument("--epochs", type=int, default=len(TrainConfig.epochs),
                        help="cached feature epochs, alternating harsh and mild augmentation (25 minutes each to compute here)")
    parser.add_argument("--mbrola-utts", type=int, default=tr.DataConfig.mbrola_utts,
                        help="add this many utterances of MBROLA's training voices (a training part of their own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--workers", type=int, default=2, help="processes computing the features")
    parser.add_argument("--eval-utts", type=int, default=300)
    parser.add_argument("--max-wer", type=float, default=0.15)
    parser.add_argument("--checkpoint", type=Path, default=Path(".cache/command-recognizer-embed.pt"))
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="a few steps on a handful of utterances (CI)")
    parser.add_argument("--no-eval", action="store_true")
    args = parser.parse_args(argv)
    import torch

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    t_start = time.time()
    tcfg = TrainConfig(steps=args.steps, lr=args.lr, seed=args.seed,
                       epochs=tuple(("train", "light")[k % 2] for k in range(args.epochs)))
    dcfg = tr.DataConfig(seed=args.seed, mbrola_utts=args.mbrola_utts)
    if args.smoke:
        dcfg = tr.DataConfig(train_utts=24, other_p=0.2, seed=args.seed, gnuspeech_utts=0,
                             mbrola_utts=min(args.mbrola_utts, 8))
        tcfg = TrainConfig(steps=3, lr=args.lr, batch_frames=400, epochs=("train",), seed=args.seed)
        args.eval_utts, args.max_wer = 4, 1e9
    parts = tr.training_parts(dcfg)
    data = tr.concat_sets(*parts)
    paths = se.fetch()
    epochs = []
    for k, chain in enumerate(tcfg.epochs):
        # each part's features on their own (babble from the same part), so a part added later
        # leaves the earlier parts' cached features valid
        of_parts = []
        for part in parts:
            bar = tr._progress(len(part), 0)
            of_parts.append(ef.epoch_features(part, args.seed, k, chain, workers=args.workers,
                                              progress=lambda i, n, dt, bar=bar: bar.update(i, 0.0, 0.0)))
            bar.close()
        epochs.append(ef.EpochFeatures.concat(of_parts))
    head = build_head(HeadConfig())
    n_params = sum(p.numel() for p in head.parameters())
    print(f"head: {n_params} parameters; {len(data)} training utterances x {len(epochs)} feature epochs", flush=True)
    resume = None
    if args.resume:
        if not args.checkpoint.is_file():
            sys.exit(f"--resume: no checkpoint at {args.checkpoint}")
        resume = torch.load(args.checkpoint, weights_only=False)
        if resume["config"] != asdict(head.cfg) or resume["train_config"] != asdict(tcfg):
            sys.exit(f"--resume: {args.checkpoint} was trained with {resume['config']} and {resume['train_config']}, "
                     f"asked {asdict(head.cfg)} and {asdict(tcfg)}: pass the same options")
    summary = train(head, data, epochs, tcfg, None if args.smoke else args.checkpoint, resume)
    export_onnx(head, args.out, paths)
    probe = tr.synth.load_set("eval", 2, args.seed, engine="espeak-ng")
    check_parity(head, args.out, tr.pad_audio(probe.clean(0)), se.Features(paths), args.seed)
    command = "python -m export.train_embed_recognizer " + " ".join(argv if argv is not None else sys.argv[1:])
    training = {"command": command, "parameters": n_params, "config": asdict(head.cfg), "data": asdict(dcfg),
                "training": {**asdict(tcfg), "threads": args.threads, "workers": args.workers, **summary}, "front_end": se.WHEEL,
                "train_utterances": len(data), "train_kinds": tr._kinds(data), "symbols": len(SYMBOLS),
                "export_s": round(time.time() - t_start)}
    tr.finish(args, training)


if __name__ == "__main__":
    main()
