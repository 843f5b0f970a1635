"""Train the streaming command recognizer (causal conv net + CTC over words) and export it.

    nice -n 10 python -m export.train_recognizer -o models/command-recognizer           # full recipe, 1 torch thread
    nice -n 10 python -m export.train_recognizer -o models/command-recognizer --resume  # go on after an interruption
    python -m export.train_recognizer -o /tmp/rec --smoke                             # a few steps, for CI
    nice -n 10 python -m export.train_recognizer -o DIR --init-from CKPT --lr 1e-3 ...  # a fine-tuning leg

Data (issue 10): clean speech of three synthesizers, espeak-ng's training voices, flite's awb and
rms, and GnuSpeech's 48 drawn talkers (`export.synth`, split "train"; festival and the held-out voices
never train), cached once;
commands from the grammar (`speech_data.make_phrase`) and a share of non-command sentences
(`speech_data.other_sentence`) whose out-of-vocabulary words are the `<unk>` label, so the model
learns to say `<unk>` rather than force a command word. Every time an utterance is used it goes
through `export.augment.random_chain` from (seed, epoch, utterance): speed, pitch, silence, room,
noise (white/pink/brown, or babble of six other training utterances), microphone band, level,
clipping, bit depth. The augmentation runs in a DataLoader worker process (numpy), the training
step in this one (torch, `--threads`), so the two overlap on two cores.

The model takes raw 16 kHz samples in fixed blocks (BLOCK samples plus CONTEXT samples of the
previous block in front) so edge_stream's BlockStream runs it unchanged. Log-mel features are
computed inside the graph (an STFT as a Conv1d with fixed DFT weights, a fixed mel matrix, log,
fixed normalisation), then a stride-2 causal conv and causal depthwise-separable conv blocks;
every conv's left context is an explicit state input/output, so nothing looks ahead and the
stream reproduces the full-utterance forward exactly. Output: CTC log-probs [batch, 2, vocab]
per 40 ms block (one frame per 20 ms) over one label per vocabulary word (`speech_data.VOCABULARY`,
from the grammar): a word label is learnt far faster than spelling by a network this small, and
is emitted whole on the frame it peaks (no waiting for a space). Training uses the very same
forward on whole utterances (zero initial states = the stream's start), so the streaming
constraint holds by construction.

Checkpoints (model, optimizer, schedule, step) go to --checkpoint every --checkpoint-min minutes;
every batch is a function of (seed, step), so `--resume` continues the same run exactly. Ends
with checks that can fail: ONNX streaming logits equal PyTorch's full-utterance logits, random
chunkings give identical logits, and (through `export.eval_recognizer`, which also writes
metrics.json and MODEL_CARD.md) held-out WER is below --max-wer.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from export import augment, synth
from export import speech_data as sd

SAMPLE_RATE = sd.SAMPLE_RATE
HOP, WIN, N_FFT = 160, 400, 512  # 10 ms hop, 25 ms window
HOPS_PER_BLOCK = 4
BLOCK = HOP * HOPS_PER_BLOCK  # 640 samples = 40 ms per ORT run
CONTEXT = WIN - HOP  # the stream carries the last 240 samples so block frames line up with a whole-signal STFT
SUBSAMPLE = 2  # output frame = 20 ms
FRAME = HOP * SUBSAMPLE  # samples per output frame
SYMBOLS = ("<blank>",) + tuple(sd.VOCABULARY)  # id 0 is the CTC blank, then one label per word
UNK_ID = SYMBOLS.index(sd.UNK_WORD)  # the label of every word outside the grammar
# Spellings of one sound that the grammar reads the same way: the recognizer writes the first.
# Two labels for one sound split a word's spike between them, and greedy CTC then emits both
# ("three meters metres"); so training targets use one spelling and the exported graph folds the
# other's probability into it (`Recognizer.spelling`), so it is never emitted.
SAME_SOUND = {"metre": "meter", "metres": "meters"}
LOG_FLOOR = 1e-5  # added to mel power before the log: about the training noise floor's (-70 dBFS), so
# digital-zero silence looks like a quiet microphone, not a level no training audio had
PROB_FLOOR = 1e-10  # smallest output probability (a folded-away spelling); keeps the log finite


@dataclass(frozen=True)
class RecognizerConfig:
    n_mels: int = 40
    channels: int = 192
    kernel: int = 5
    dilations: tuple[int, ...] = (1, 2, 4, 8, 16, 1, 2, 4, 8, 16)
    expand: int = 2
    vocab: int = len(SYMBOLS)


def mel_matrix(n_mels: int, n_fft: int = N_FFT, rate: int = SAMPLE_RATE, f_min: float = 20.0,
               f_max: float = 7600.0, warp: float = 1.0) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] triangular HTK-mel filters; `warp` != 1 moves every filter edge to
    warp x its frequency (below Nyquist): vocal tract length perturbation, a talker with a
    longer (warp > 1 reads the spectrum as lower) or shorter tract."""
    def mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def hz(m):
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    bins = np.linspace(0, rate / 2, n_fft // 2 + 1)
    edges = np.minimum(hz(np.linspace(mel(f_min), mel(f_max), n_mels + 2)) * warp, rate / 2 - 1.0)
    fb = np.zeros((n_mels, len(bins)), np.float32)
    for i in range(n_mels):
        lo, mid, hi = edges[i], edges[i + 1], edges[i + 2]
        fb[i] = np.clip(np.minimum((bins - lo) / (mid - lo), (hi - bins) / (hi - mid)), 0, None)
    return fb


def spelling_matrix(vocab: int) -> np.ndarray:
    """[vocab, vocab]: the probability of label i goes to j; identity but for SAME_SOUND, whose other
    spelling's probability goes to the kept one (the exported graphs multiply their softmax by it)."""
    spelling = np.eye(vocab, dtype=np.float32)
    for other, kept in SAME_SOUND.items():
        if other in SYMBOLS and kept in SYMBOLS:
            i, j = SYMBOLS.index(other), SYMBOLS.index(kept)
            spelling[i, i], spelling[i, j] = 0.0, 1.0
    return spelling


def build_model(cfg: RecognizerConfig):
    """The torch modules (imported lazily: the runtime never imports this file)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class LogMel(nn.Module):
        """Samples [batch, CONTEXT + n] -> normalised log-mel [batch, n_mels, n / HOP]."""

        def __init__(self):
            super().__init__()
            n = np.arange(WIN)
            window = 0.5 - 0.5 * np.cos(2 * np.pi * n / WIN)  # periodic Hann
            k = np.arange(N_FFT // 2 + 1)[:, None]
            phase = 2 * np.pi * k * n[None, :] / N_FFT  # a 512-point DFT of the 400 windowed samples
            dft = np.concatenate([np.cos(phase), -np.sin(phase)]) * window  # [2 * bins, WIN]
            self.register_buffer("dft", torch.tensor(dft[:, None, :], dtype=torch.float32))
            self.register_buffer("window", torch.tensor(window, dtype=torch.float32))
            self.register_buffer("mel", torch.tensor(mel_matrix(cfg.n_mels)))
            self.register_buffer("mean", torch.zeros(cfg.n_mels, 1))
            self.register_buffer("inv_std", torch.ones(cfg.n_mels, 1))
            self.fft = False  # training switches to torch.fft (same numbers, faster); export uses the conv

        def forward(self, x, mel=None):
            """`mel`: filters to use instead of the graph's ([n_mels, bins] or [batch, n_mels, bins]:
            training's VTLP); exported graphs always use their own."""
            if self.fft:
                frames = x.unfold(1, WIN, HOP) * self.window  # [batch, frames, WIN]
                power = torch.fft.rfft(frames, n=N_FFT).abs().square().transpose(1, 2)  # [batch, bins, frames]
            else:
                spec = F.conv1d(x[:, None, :], self.dft, stride=HOP)  # [batch, 2 * bins, frames]
                re, im = spec.chunk(2, dim=1)
                power = re * re + im * im
            mel = torch.matmul(self.mel if mel is None else mel, power)  # [batch, n_mels, frames]
            return (torch.log(mel + LOG_FLOOR) - self.mean) * self.inv_std

    class CausalConv(nn.Module):
        """Conv1d whose left padding is the carried cache of its previous input frames."""

        def __init__(self, c_in, c_out, kernel, stride=1, dilation=1, groups=1):
            super().__init__()
            self.conv = nn.Conv1d(c_in, c_out, kernel, stride=stride, dilation=dilation, groups=groups)
            self.cache_len = (kernel - 1) * dilation - (stride - 1)
            self.c_in = c_in

        def forward(self, x, cache):  # x [batch, c_in, frames], cache [batch, c_in, cache_len]
            full = torch.cat([cache, x], dim=2)
            return self.conv(full), full[:, :, full.shape[2] - self.cache_len:]

    class Block(nn.Module):
        """Causal depthwise conv, BatchNorm, pointwise MLP, residual (ConvNeXt-style). BatchNorm
        rather than LayerNorm: in eval it is a fixed per-channel affine (streaming-safe) and it
        needs no transposes, which matters on 2 CPU cores."""

        def __init__(self, dilation):
            super().__init__()
            self.dw = CausalConv(cfg.channels, cfg.channels, cfg.kernel, dilation=dilation, groups=cfg.channels)
            self.norm = nn.BatchNorm1d(cfg.channels)
            self.up = nn.Conv1d(cfg.channels, cfg.channels * cfg.expand, 1)
            self.down = nn.Conv1d(cfg.channels * cfg.expand, cfg.channels, 1)

        def forward(self, x, cache):  # x [batch, channels, frames]
            y, cache = self.dw(x, cache)
            return x + self.down(F.gelu(self.up(self.norm(y)))), cache

    class Recognizer(nn.Module):
        def __init__(self):
            super().__init__()
            self.cfg = cfg
            self.features = LogMel()
            self.subsample = CausalConv(cfg.n_mels, cfg.channels, 2 * SUBSAMPLE, stride=SUBSAMPLE)
            self.blocks = nn.ModuleList([Block(d) for d in cfg.dilations])
            self.norm = nn.BatchNorm1d(cfg.channels)
            self.head = nn.Conv1d(cfg.channels, cfg.vocab, 1)
            # not persistent: fixed by SAME_SOUND, not learnt, and checkpoints stay loadable
            self.register_buffer("spelling", torch.tensor(spelling_matrix(cfg.vocab)), persistent=False)

        def state_shapes(self):
            """(channels, cache_len) of each conv's cache, in state order."""
            convs = [self.subsample] + [b.dw for b in self.blocks]
            return [(c.c_in, c.cache_len) for c in convs]

        def initial_states(self, batch):
            return [torch.zeros(batch, c, n) for c, n in self.state_shapes()]

        def forward(self, samples, *states):
            """samples [batch, CONTEXT + k * BLOCK] -> (log-probs [batch, 2k, vocab], *new states)."""
            x = self.features(samples)  # [batch, n_mels, 4k]
            x, s0 = self.subsample(x, states[0])
            x = F.gelu(x)  # [batch, channels, 2k]
            new = [s0]
            for block, st in zip(self.blocks, states[1:]):
                x, st = block(x, st)
                new.append(st)
            logits = self.head(self.norm(x)).transpose(1, 2)  # [batch, 2k, vocab]
            probs = torch.matmul(F.softmax(logits, dim=-1), self.spelling)  # SAME_SOUND folded
            return (torch.log(probs.clamp_min(PROB_FLOOR)), *new)  # a folded-away label: log(1e-10)

    return Recognizer()


# -- data -----------------------------------------------------------------------------------------

def encode(text: str) -> list[int]:
    """Transcript -> CTC targets: one label per word; a word outside the vocabulary is `<unk>`."""
    return [SYMBOLS.index(SAME_SOUND.get(w, w)) if w in SYMBOLS else UNK_ID for w in text.split()]


def pad_to_blocks(audio: np.ndarray) -> np.ndarray:
    """CONTEXT zeros in front (the stream's initial tail) and zeros up to a whole block."""
    n = -(-len(audio) // BLOCK) * BLOCK
    return np.concatenate([np.zeros(CONTEXT, np.float32), audio, np.zeros(n - len(audio), np.float32)])


def make_batches(lengths: np.ndarray, max_samples: int, rng: np.random.Generator,
                 jitter: float = SAMPLE_RATE * 0.3) -> list[np.ndarray]:
    """Index batches of similar length (little padding) holding at most max_samples of audio (or
    frames: the unit of `lengths`); lengths are jittered by up to `jitter` so batches vary by epoch."""
    order = np.argsort(lengths + rng.uniform(0, jitter, len(lengths)))
    batches, cur, longest = [], [], 0
    for i in order:
        longest = max(longest, lengths[i])
        if cur and longest * (len(cur) + 1) > max_samples:
            batches.append(np.array(cur))
            cur, longest = [], lengths[i]
        cur.append(i)
    if cur:
        batches.append(np.array(cur))
    rng.shuffle(batches)
    return batches


def batch_plan(lengths: np.ndarray, max_samples: int, steps: int, seed: int,
               jitter: float = SAMPLE_RATE * 0.3) -> list[tuple[int, np.ndarray]]:
    """(epoch, utterance indices) of every step: a function of the seed alone, so a resumed run
    picks up exactly where it stopped."""
    plan, epoch = [], 0
    while len(plan) < steps:
        plan += [(epoch, b) for b in make_batches(lengths, max_samples, np.random.default_rng([seed, epoch]), jitter)]
        epoch += 1
    return plan[:steps]


# Less silence around training utterances than in evaluation: silence costs compute and teaches
# little once the model has heard some; 0.3 s after the last word is enough to emit its label.
TRAIN_CHAIN = augment.Chain(lead_s=(0.05, 0.4), trail_s=(0.3, 0.6))
# The last phase of a run (--light-from): milder noise and rooms, so the model settles on speech as
# a microphone near the speaker hears it after learning robustness on the harsh chain.
LIGHT_CHAIN = dataclasses.replace(TRAIN_CHAIN, noise_p=0.5, snr_db=(10.0, 30.0), reverb_p=0.25, rt60_s=(0.1, 0.5),
                                  clip_p=0.02, quantize_p=0.02)
BABBLE_TALKERS = 6  # other training utterances handed to random_chain as its babble pool


def heard(data: sd.SpeechSet, i: int, seed: int, epoch: int, chain: augment.Chain = TRAIN_CHAIN) -> augment.Augmented:
    """Utterance i as heard in `epoch`: random_chain from (seed, epoch, i), babble from 6 others."""
    rng = np.random.default_rng([seed, epoch, i])
    others = rng.choice(len(data) - 1, size=min(BABBLE_TALKERS, len(data) - 1), replace=False)
    others = others + (others >= i)  # skip i itself
    return augment.random_chain(data.clean(i), rng, [data.clean(int(j)) for j in others], chain)


# Alignment guide: the synthesizers say where each word ends, so besides CTC a cross-entropy term
# asks for the word's label on the frames ending 20-60 ms after it (ALIGN_FRAMES after the frame
# that holds its last sample). CTC alone sat on a blank-and-unigram plateau for thousands of steps;
# the guide breaks it at once and pins emission right after the word (low latency).
ALIGN_FRAMES = (1, 2)


def align_targets(data: sd.SpeechSet, i: int, aug: augment.Augmented) -> list[tuple[int, int]]:
    """(frame, label) pairs of utterance i as it sits in `aug` (word ends follow speed and padding)."""
    labels = encode(data.text(i))
    return [(aug.position(end) // FRAME + k, lab)
            for (_, _, end), lab in zip(data.word_spans[i], labels) for k in ALIGN_FRAMES]


class BatchMaker:
    """Step k's batch as tensors (run in a DataLoader worker: augmentation is numpy and takes about
    as long as the training step). The same k always gives the same batch."""

    def __init__(self, data: sd.SpeechSet, plan: list[tuple[int, np.ndarray]], seed: int, light_from: int | None = None):
        self.data, self.plan, self.seed, self.light_from = data, plan, seed, light_from

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, k: int):
        import torch

        epoch, batch = self.plan[k]
        chain = LIGHT_CHAIN if self.light_from is not None and k >= self.light_from else TRAIN_CHAIN
        augs = [heard(self.data, int(i), self.seed, epoch, chain) for i in batch]
        audio = [pad_to_blocks(a.audio) for a in augs]
        x = torch.zeros(len(audio), max(len(a) for a in audio))  # [batch, CONTEXT + samples]
        for j, a in enumerate(audio):
            x[j, :len(a)] = torch.from_numpy(a)
        frame_lens = [(len(a) - CONTEXT) // FRAME for a in audio]
        targets = [encode(self.data.text(int(i))) for i in batch]
        align = [(j, f, lab) for j, (i, a) in enumerate(zip(batch, augs))
                 for f, lab in align_targets(self.data, int(i), a) if f < frame_lens[j]]
        return (x, torch.tensor(frame_lens), torch.tensor([c for t in targets for c in t]),
                torch.tensor([len(t) for t in targets]), torch.tensor(align, dtype=torch.long).reshape(-1, 3))


def _worker_init(_):
    import torch

    torch.set_num_threads(1)


# -- training -------------------------------------------------------------------------------------

def spec_augment(feats, rng: np.random.Generator):
    """Two frequency masks (up to 6 mel bins) and two time masks (up to 6 frames of 10 ms), in place."""
    b, n_mels, t = feats.shape
    for k in range(b):
        for _ in range(2):
            w = int(rng.integers(0, 7))
            f0 = int(rng.integers(0, n_mels - w + 1))
            feats[k, f0:f0 + w, :] = 0.0
            w = int(rng.integers(0, 7))
            t0 = int(rng.integers(0, max(1, t - w)))
            feats[k, :, t0:t0 + w] = 0.0
    return feats


def fit_normalisation(model, data: sd.SpeechSet, seed: int, n: int = 200) -> None:
    """Per-mel mean and 1/std of augmented training audio, frozen into the graph."""
    import torch

    feats = []
    with torch.no_grad():
        for i in range(min(n, len(data))):
            x = torch.from_numpy(pad_to_blocks(heard(data, i, seed, 10**6).audio))[None]
            feats.append(model.features(x)[0])
    allf = torch.cat(feats, dim=1)  # [n_mels, frames]
    model.features.mean.copy_(allf.mean(dim=1, keepdim=True))
    model.features.inv_std.copy_(1.0 / (allf.std(dim=1, keepdim=True) + 1e-5))


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 10000
    lr: float = 3e-3  # peak AdamW learning rate
    warmup: int = 300  # linear warm-up steps, then cosine decay to 0
    batch_s: float = 20.0  # seconds of audio per batch (before augmentation's padding)
    align_weight: float = 1.0
    seed: int = 0
    vtlp: float = 0.0  # each training utterance's mel filters warped by a factor in [1 - vtlp, 1 + vtlp]


def save_checkpoint(path: Path, model, opt, sched, step: int, train_s: float, cfg, tcfg) -> None:
    """Everything a resumed run needs; written to a temporary file first, so a kill mid-write
    leaves the previous checkpoint intact."""
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "step": step,
                "train_s": train_s, "config": asdict(cfg), "train_config": asdict(tcfg)}, tmp)
    os.replace(tmp, path)


def train(model, data: sd.SpeechSet, tcfg: TrainConfig, checkpoint: Path | None, resume: dict | None = None,
          checkpoint_min: float = 5.0, workers: int = 1, light_from: int | None = None) -> dict:
    """AdamW, linear warm-up then cosine decay, CTC + the alignment guide. Returns
    {"steps", "train_s", "final_loss"}; train_s sums the time of every run of a resumed training."""
    import torch
    import torch.nn.functional as F

    lengths = np.diff(data.offsets) + int(SAMPLE_RATE * 0.7)  # clean length + mean added silence
    plan = batch_plan(lengths, int(tcfg.batch_s * SAMPLE_RATE), tcfg.steps, tcfg.seed)
    opt, sched = adamw_cosine(model, tcfg.lr, tcfg.warmup, tcfg.steps)
    step, train_s = 0, 0.0
    if resume is not None:
        opt.load_state_dict(resume["opt"])
        sched.load_state_dict(resume["sched"])
        step, train_s = int(resume["step"]), float(resume["train_s"])
        print(f"resuming at step {step}/{tcfg.steps} ({train_s:.0f} s trained so far)", flush=True)
    loader = torch.utils.data.DataLoader(
        BatchMaker(data, plan, tcfg.seed, light_from), batch_size=None, sampler=range(step, tcfg.steps), num_workers=workers,
        worker_init_fn=_worker_init if workers else None, prefetch_factor=4 if workers else None,
        multiprocessing_context="fork" if workers else None)
    model.features.fft = True
    model.train()
    bar = _progress(tcfg.steps, step)
    t_run, t_saved, loss_avg = time.time(), time.time(), None
    warped: dict[int, np.ndarray] = {}  # VTLP filters by warp in hundredths
    for x, frame_lens, targets, target_lens, align in loader:
        with torch.no_grad():
            mel = None
            if tcfg.vtlp:
                rng = np.random.default_rng([tcfg.seed, 2, step])
                keys = np.rint(100 * rng.uniform(1 - tcfg.vtlp, 1 + tcfg.vtlp, len(x))).astype(int)
                for k in set(keys.tolist()) - set(warped):
                    warped[k] = mel_matrix(model.cfg.n_mels, warp=k / 100)
                mel = torch.from_numpy(np.stack([warped[k] for k in keys]))  # [batch, n_mels, bins]
            feats = spec_augment(model.features(x, mel), np.random.default_rng([tcfg.seed, 1, step]))
        # The network after the features: same code path as forward(), features replaced.
        states = model.initial_states(len(x))
        h, _ = model.subsample(feats, states[0])
        h = F.gelu(h)
        for block, st in zip(model.blocks, states[1:]):
            h, _ = block(h, st)
        logp = F.log_softmax(model.head(model.norm(h)).transpose(1, 2), dim=-1)  # [batch, frames, vocab]
        loss = ctc_guide_step(logp, targets, frame_lens, target_lens, align, tcfg.align_weight, model, opt, sched)
        step += 1
        loss_avg = loss.item() if loss_avg is None else 0.98 * loss_avg + 0.02 * loss.item()
        bar.update(step, loss_avg, sched.get_last_lr()[0])
        if checkpoint is not None and (time.time() - t_saved > 60 * checkpoint_min or step == tcfg.steps):
            save_checkpoint(checkpoint, model, opt, sched, step, train_s + time.time() - t_run, model.cfg, tcfg)
            t_saved = time.time()
    bar.close()
    model.features.fft = False
    model.eval()
    return {"steps": step, "train_s": round(train_s + time.time() - t_run), "final_loss": round(loss_avg or 0.0, 3)}


def adamw_cosine(model, lr: float, warmup: int, steps: int):
    """AdamW (weight decay 0.01) and its schedule: linear warm-up (at most a fifth of the run), then
    cosine decay to 0 at `steps`."""
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, min(warmup, steps // 5))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    return opt, sched


def ctc_guide_step(logp, targets, frame_lens, target_lens, align, align_weight: float, model, opt, sched):
    """One AdamW step on CTC plus the alignment guide (NLL of each (row, frame, label) in `align`);
    gradients clipped to norm 5. Returns the loss."""
    import torch
    import torch.nn.functional as F

    loss = F.ctc_loss(logp.transpose(0, 1), targets, frame_lens, target_lens, blank=0, zero_infinity=True)
    if align_weight and len(align):
        loss = loss + align_weight * F.nll_loss(logp[align[:, 0], align[:, 1]], align[:, 2])
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    opt.step()
    sched.step()
    return loss


class _progress:
    """tqdm when installed, else a line every 100 steps."""

    def __init__(self, total: int, initial: int):
        try:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                            mininterval=2.0 if sys.stderr.isatty() else 30.0)
        except ImportError:
            self.bar = None
        self.total, self.last, self.t0 = total, initial, time.time()

    def update(self, step: int, loss: float, lr: float) -> None:
        if self.bar is not None:
            self.bar.update(step - self.last)
            self.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.1e}", refresh=False)
        elif step % 100 == 0 or step == self.total:
            print(f"step {step}/{self.total} loss {loss:.3f} lr {lr:.2e} {time.time() - self.t0:.0f} s", flush=True)
        self.last = step

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# -- export ---------------------------------------------------------------------------------------

def export_onnx(model, out_dir: Path) -> Path:
    """model.onnx (opset 17, dynamic batch), tokenizer.json (id -> word) and manifest.json."""
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    states = model.initial_states(1)
    state_in, state_out = cache_names(len(states))
    x = torch.zeros(1, CONTEXT + BLOCK)
    dynamic = {n: {0: "batch"} for n in ["samples", "logprobs"] + state_in + state_out}
    torch.onnx.export(model, (x, *states), str(out_dir / "model.onnx"), input_names=["samples"] + state_in,
                      output_names=["logprobs"] + state_out, dynamic_axes=dynamic, opset_version=17,
                      dynamo=False)
    (out_dir / "lexicon.txt").unlink(missing_ok=True)  # a character model's file: words are labels now
    write_model_files(out_dir, [(i, o, tuple(s.shape)) for i, o, s in zip(state_in, state_out, states)], BLOCK, CONTEXT,
                      {"recipe": "export.train_recognizer", "config": asdict(model.cfg),
                       "frames_per_block": HOPS_PER_BLOCK // SUBSAMPLE, "lookahead_frames": 0, "unk": sd.UNK_WORD})
    return out_dir


def cache_names(n: int) -> tuple[list[str], list[str]]:
    """The graph's names of n conv caches: inputs and outputs."""
    return [f"conv_cache_{i}" for i in range(n)], [f"conv_cache_{i}_out" for i in range(n)]


def write_model_files(out_dir: Path, states: list[tuple[str, str, tuple]], block: int, context: int,
                      source: dict) -> None:
    """tokenizer.json and manifest.json of a recognizer graph: samples in, `logprobs` out, the
    (input, output, shape) recurrent states, `block` samples per run with `context` in front."""
    from edge_stream.runtime.manifest import Blocking, InputSpec, Manifest, OutputSpec, StateSpec

    write_tokenizer(out_dir / "tokenizer.json")
    Manifest(
        name="command-recognizer",
        input=InputSpec(name="samples", kind="samples", dtype="float32"),
        states=tuple(StateSpec(input=i, output=o, kind="recurrent", shape=shape, batch_axis=0)
                     for i, o, shape in states),
        outputs=(OutputSpec(name="logprobs", role="logits"),),
        blocking=Blocking(block=block, context=context, sample_rate=SAMPLE_RATE),
        tokenizer="tokenizer.json",
        source=source,
    ).save(out_dir)


def write_tokenizer(path: Path) -> None:
    """A WordLevel tokenizer: id -> word for the decoder, transcript -> ids for targets (unknown words -> `<unk>`)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({s: i for i, s in enumerate(SYMBOLS)}, unk_token=sd.UNK_WORD))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(path))


def check_parity(model, model_dir: Path, audio: np.ndarray, seed: int) -> float:
    """The checks that can fail: ONNX streaming (fixed and random chunkings) vs PyTorch full-utterance."""
    import torch

    x = pad_to_blocks(audio)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)[None], *model.initial_states(1))[0][0].numpy()  # [frames, vocab]
    return stream_matches(model_dir, x[CONTEXT:], ref, seed, "PyTorch full utterance")


def stream_matches(model_dir: Path, samples: np.ndarray, ref: np.ndarray, seed: int, what: str) -> float:
    """Feed `samples` to the exported model whole and in random chunks: both must give the same frames,
    and those must equal `ref` ([frames, vocab], `what`) within 1e-3; exits otherwise. Returns the error."""
    import edge_stream as es

    m = es.load(model_dir, intra_op_threads=1)
    whole = m.open_stream().feed(samples).logits
    rng = np.random.default_rng(seed)
    stream, parts, pos = m.open_stream(), [], 0
    while pos < len(samples):
        n = int(rng.integers(1, 2000))
        out = stream.feed(samples[pos:pos + n])
        pos += n
        if out.n_blocks:
            parts.append(out.logits)
    chunked = np.concatenate(parts)
    if whole.shape != ref.shape or not np.array_equal(whole, chunked):
        sys.exit(f"parity check failed: shapes {whole.shape} {chunked.shape} {ref.shape} or chunked != whole")
    err = float(np.abs(whole - ref).max())
    if err > 1e-3:
        sys.exit(f"parity check failed: ONNX streaming vs {what} differ by {err:.2e} (limit 1e-3)")
    print(f"parity ok: {len(ref)} frames, random chunking identical, max |onnx - {what}| = {err:.2e}")
    return err


def receptive_field_ms(cfg: RecognizerConfig) -> int:
    """Past audio one output frame sees: the window, the stride-2 conv, then each block's dilated kernel."""
    return (1 + 2 * sum((cfg.kernel - 1) * d for d in cfg.dilations)) * 10 + 15


@dataclass(frozen=True)
class DataConfig:
    train_utts: int = 12000  # clean utterances synthesized once (export.synth split "train": espeak-ng, flite)
    other_p: float = 0.15  # share of them that are non-command sentences
    seed: int = 0
    gnuspeech_utts: int = 4000  # and GnuSpeech's training talkers (a set of its own, so the first stays cached)
    mbrola_utts: int = 0  # and MBROLA's training voices: a part of its own (`training_parts`)


def training_parts(dcfg: DataConfig) -> list[sd.SpeechSet]:
    """The training set in parts: the synthesizers of the first recipes (espeak-ng, flite, GnuSpeech)
    as one part, then MBROLA's set if asked. A part added later leaves the earlier parts, and
    whatever was cached from them, as they were."""
    main = synth.load_set("train", dcfg.train_utts, dcfg.seed, other_p=dcfg.other_p)
    if dcfg.gnuspeech_utts:
        main = concat_sets(main, synth.load_set("train", dcfg.gnuspeech_utts, dcfg.seed, engine="gnuspeech",
                                                other_p=dcfg.other_p))
    parts = [main]
    if dcfg.mbrola_utts:
        parts.append(synth.load_set("train", dcfg.mbrola_utts, dcfg.seed, engine="mbrola", other_p=dcfg.other_p))
    return parts


def load_training_set(dcfg: DataConfig) -> sd.SpeechSet:
    return concat_sets(*training_parts(dcfg))


def concat_sets(*sets: sd.SpeechSet) -> sd.SpeechSet:
    """One SpeechSet holding the utterances of several, in order (one set: itself)."""
    if len(sets) == 1:
        return sets[0]
    return sd.SpeechSet.of_clips([s for d in sets for s in d.specs],
                                 [d.audio[d.offsets[i]:d.offsets[i + 1]] for d in sets for i in range(len(d))],
                                 [w for d in sets for w in d.word_spans])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", type=Path, default=Path("models/command-recognizer"))
    parser.add_argument("--train-utts", type=int, default=DataConfig.train_utts)
    parser.add_argument("--other-p", type=float, default=DataConfig.other_p, help="share of non-command sentences")
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader processes running the augmentation")
    parser.add_argument("--lr", type=float, default=TrainConfig.lr, help="peak AdamW learning rate")
    parser.add_argument("--warmup", type=int, default=TrainConfig.warmup, help="linear warm-up steps")
    parser.add_argument("--batch-s", type=float, default=TrainConfig.batch_s, help="seconds of audio per batch")
    parser.add_argument("--eval-utts", type=int, default=300, help="utterances per synthesizer in the evaluation")
    parser.add_argument("--max-wer", type=float, default=0.15,
                        help="fail if clean held-out-voice WER (espeak-ng or flite) is above this")
    parser.add_argument("--smoke", action="store_true", help="a few steps on a handful of utterances (CI)")
    parser.add_argument("--checkpoint", type=Path, default=Path(".cache/command-recognizer.pt"),
                        help="training state, saved every --checkpoint-min minutes (not committed)")
    parser.add_argument("--checkpoint-min", type=float, default=5.0)
    parser.add_argument("--resume", action="store_true", help="continue the run saved in --checkpoint")
    parser.add_argument("--no-eval", action="store_true", help="export and check parity only")
    parser.add_argument("--light-from", type=int, default=None,
                        help="from this step on, train on the milder LIGHT_CHAIN (a last, settling phase)")
    parser.add_argument("--gnuspeech-utts", type=int, default=DataConfig.gnuspeech_utts,
                        help="GnuSpeech training utterances added to --train-utts (0: none)")
    parser.add_argument("--vtlp", type=float, default=TrainConfig.vtlp,
                        help="vocal tract length perturbation: warp each utterance's mel filters by a factor "
                             "drawn from [1 - VTLP, 1 + VTLP] (0: off)")
    parser.add_argument("--init-from", type=Path, default=None,
                        help="start from this checkpoint's weights with a new optimizer and schedule "
                             "(a fine-tuning leg on new data); its normalisation is kept")
    args = parser.parse_args(argv)
    import torch

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    if args.smoke:
        args.train_utts, args.eval_utts, args.steps, args.max_wer, args.batch_s = 24, 4, 3, 1e9, 8.0
    t_start = time.time()
    dcfg = DataConfig(args.train_utts, args.other_p if not args.smoke else 0.2, args.seed,
                      args.gnuspeech_utts if not args.smoke else 0)
    tcfg = TrainConfig(steps=args.steps, lr=args.lr, warmup=args.warmup, batch_s=args.batch_s, seed=args.seed,
                       vtlp=args.vtlp)
    cfg = RecognizerConfig()
    train_set = load_training_set(dcfg)
    model = build_model(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params} parameters, receptive field {receptive_field_ms(cfg)} ms, no look-ahead; "
          f"{len(train_set)} training utterances", flush=True)
    resume, extended_from = None, None
    if args.resume:
        if not args.checkpoint.is_file():
            sys.exit(f"--resume: no checkpoint at {args.checkpoint}")
        resume = torch.load(args.checkpoint, weights_only=False)
        if resume["config"] != asdict(cfg):
            sys.exit(f"--resume: checkpoint config {resume['config']} differs from this recipe's {asdict(cfg)}")
        saved = resume["train_config"]
        if {"vtlp": 0.0, **saved, "steps": tcfg.steps} != asdict(tcfg) or tcfg.steps < resume["step"]:
            sys.exit(f"--resume: checkpoint was trained with {saved} to step {resume['step']}, asked {asdict(tcfg)}; "
                     "pass the same --lr/--warmup/--batch-s/--seed (and --steps, or more steps to extend the run)")
        if saved["steps"] != tcfg.steps:
            # The batch plan of the longer run starts with the shorter one's; only the cosine
            # schedule stretches (the learning rate steps up to the longer curve).
            print(f"extending the run from {saved['steps']} to {tcfg.steps} steps", flush=True)
            extended_from = saved.get("extended_from") or saved["steps"]
        model.load_state_dict(resume["model"])  # its normalisation included
    elif args.init_from is not None:
        start = torch.load(args.init_from, weights_only=False)
        if start["config"] != asdict(cfg):
            sys.exit(f"--init-from: checkpoint config {start['config']} differs from this recipe's {asdict(cfg)}")
        model.load_state_dict(start["model"])
        print(f"fine-tuning from {args.init_from} (trained {start['step']} steps)", flush=True)
    else:
        fit_normalisation(model, train_set, args.seed, n=20 if args.smoke else 200)
    if not args.smoke:
        args.checkpoint.parent.mkdir(parents=True, exist_ok=True)
    summary = train(model, train_set, tcfg, None if args.smoke else args.checkpoint, resume,
                    checkpoint_min=args.checkpoint_min, workers=0 if args.smoke else args.workers,
                    light_from=args.light_from)
    export_onnx(model, args.out)
    eval_probe = synth.load_set("eval", 2, args.seed, engine="espeak-ng")
    check_parity(model, args.out, pad_audio(eval_probe.clean(0)), args.seed)
    command = "python -m export.train_recognizer " + " ".join(argv if argv is not None else sys.argv[1:])
    training = {"command": command, "parameters": n_params, "config": asdict(cfg), "data": asdict(dcfg),
                "training": {**asdict(tcfg), "threads": args.threads, "workers": args.workers, **summary,
                             "extended_from": extended_from, "light_from": args.light_from,
                             "init_from": str(args.init_from) if args.init_from else None},
                "train_utterances": len(train_set), "train_kinds": _kinds(train_set),
                "symbols": len(SYMBOLS), "export_s": round(time.time() - t_start)}
    finish(args, training)


def finish(args, training: dict) -> None:
    """A recipe's end: print the training record (--smoke), or write it to metrics.json and, unless
    --no-eval, evaluate (export.eval_recognizer, which writes the model card and can fail)."""
    if args.smoke:
        print(json.dumps(training, indent=2))
        return
    (args.out / "metrics.json").write_text(json.dumps({"training": training}, indent=2) + "\n")
    if args.no_eval:
        print(f"ok: wrote {args.out} (not evaluated: python -m export.eval_recognizer {args.out})")
        return
    from export import eval_recognizer

    eval_recognizer.main([str(args.out), "--utts", str(args.eval_utts), "--seed", str(args.seed),
                          "--max-wer", str(args.max_wer)])


def pad_audio(clean: np.ndarray) -> np.ndarray:
    """Clean speech with some silence and a noise floor: the parity check's input."""
    return augment.random_chain(clean, np.random.default_rng(1), (), augment.Chain(
        speed_p=0, pitch_p=0, reverb_p=0, noise_p=0, mic_p=0, clip_p=0, quantize_p=0)).audio


def _kinds(data: sd.SpeechSet) -> dict:
    """Utterances per engine and kind (command / other)."""
    out: dict[str, int] = {}
    for s in data.specs:
        key = f"{s.engine}/{s.kind}"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


if __name__ == "__main__":
    main()
