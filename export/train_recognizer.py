"""Train the streaming command recognizer (causal conv net + CTC over words) and export it.

    nice -n 10 python -m export.train_recognizer -o models/command-recognizer   # full recipe: 1 CPU thread, ~35 min
    python -m export.train_recognizer -o /tmp/rec --smoke                     # a few steps, for CI

The model takes raw 16 kHz samples in fixed blocks (BLOCK samples plus CONTEXT samples of the
previous block in front) so edge_stream's BlockStream runs it unchanged. Log-mel features are
computed inside the graph (an STFT as a Conv1d with fixed DFT weights, a fixed mel matrix, log,
fixed normalisation), then a stride-2 causal conv and causal depthwise-separable conv blocks;
every conv's left context is an explicit state input/output, so nothing looks ahead and the
stream reproduces the full-utterance forward exactly. Output: CTC log-probs [batch, 2, vocab]
per 40 ms block (one frame per 20 ms) over one label per vocabulary word: the vocabulary is closed
(`speech_data.VOCABULARY`), and a word label is learnt far faster than spelling by a network this
small, and is emitted whole on the frame it peaks (no waiting for a space). Training uses the very same forward on whole utterances
(zero initial states = the stream's start), so the streaming constraint holds by construction.

Ends with checks that can fail: ONNX streaming logits equal PyTorch's full-utterance logits,
random chunkings give identical logits, and WER on held-out voices is below --max-wer.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from export import speech_data as sd

SAMPLE_RATE = sd.SAMPLE_RATE
HOP, WIN, N_FFT = 160, 400, 512  # 10 ms hop, 25 ms window
HOPS_PER_BLOCK = 4
BLOCK = HOP * HOPS_PER_BLOCK  # 640 samples = 40 ms per ORT run
CONTEXT = WIN - HOP  # the stream carries the last 240 samples so block frames line up with a whole-signal STFT
SUBSAMPLE = 2  # output frame = 20 ms
SYMBOLS = ("<blank>",) + tuple(sd.VOCABULARY)  # id 0 is the CTC blank, then one label per word
LOG_FLOOR = 1e-6


@dataclass(frozen=True)
class RecognizerConfig:
    n_mels: int = 40
    channels: int = 128
    kernel: int = 5
    dilations: tuple[int, ...] = (1, 2, 4, 8, 1, 2, 4, 8)
    expand: int = 2
    vocab: int = len(SYMBOLS)


def mel_matrix(n_mels: int, n_fft: int = N_FFT, rate: int = SAMPLE_RATE, f_min: float = 20.0,
               f_max: float = 7600.0) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] triangular HTK-mel filters."""
    def mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def hz(m):
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    bins = np.linspace(0, rate / 2, n_fft // 2 + 1)
    edges = hz(np.linspace(mel(f_min), mel(f_max), n_mels + 2))
    fb = np.zeros((n_mels, len(bins)), np.float32)
    for i in range(n_mels):
        lo, mid, hi = edges[i], edges[i + 1], edges[i + 2]
        fb[i] = np.clip(np.minimum((bins - lo) / (mid - lo), (hi - bins) / (hi - mid)), 0, None)
    return fb


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

        def forward(self, x):
            if self.fft:
                frames = x.unfold(1, WIN, HOP) * self.window  # [batch, frames, WIN]
                power = torch.fft.rfft(frames, n=N_FFT).abs().square().transpose(1, 2)  # [batch, bins, frames]
            else:
                spec = F.conv1d(x[:, None, :], self.dft, stride=HOP)  # [batch, 2 * bins, frames]
                re, im = spec.chunk(2, dim=1)
                power = re * re + im * im
            mel = torch.matmul(self.mel, power)  # [batch, n_mels, frames]
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
            return (F.log_softmax(logits, dim=-1), *new)

    return Recognizer()


# -- data -----------------------------------------------------------------------------------------

def encode(text: str) -> list[int]:
    """Transcript -> CTC targets: one label per word."""
    return [SYMBOLS.index(w) for w in text.split()]


def pad_to_blocks(audio: np.ndarray) -> np.ndarray:
    """CONTEXT zeros in front (the stream's initial tail) and zeros up to a whole block."""
    n = -(-len(audio) // BLOCK) * BLOCK
    return np.concatenate([np.zeros(CONTEXT, np.float32), audio, np.zeros(n - len(audio), np.float32)])


def make_batches(lengths: np.ndarray, max_samples: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Index batches of similar length (little padding) holding at most max_samples of audio."""
    order = np.argsort(lengths + rng.uniform(0, SAMPLE_RATE * 0.3, len(lengths)))
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


# Less silence around training utterances than in evaluation: silence costs compute and teaches
# little once the model has heard some; 0.3 s after the last word is enough to emit its space.
TRAIN_AUGMENT = sd.Augment(lead_s=(0.05, 0.4), trail_s=(0.3, 0.6))


def augmented(data: sd.SpeechSet, i: int, seed: int, epoch: int, lead: bool = False):
    """Utterance i as heard in `epoch` (and, with lead=True, the sample where its speech starts)."""
    rng = np.random.default_rng([seed, epoch, i])
    audio, start = sd.augment(data.clean(i), rng, TRAIN_AUGMENT)
    return (audio, start) if lead else audio


# Alignment guide: espeak-ng says where each word ends, so besides CTC a cross-entropy term asks
# for the word's label on the frames ending 20-60 ms after it (ALIGN_FRAMES after the frame that
# holds its last sample). CTC alone sat on a blank-and-unigram plateau for thousands of steps;
# the guide breaks it at once and pins emission right after the word (low latency).
ALIGN_FRAMES = (1, 2)


def align_targets(data: sd.SpeechSet, i: int, lead: int) -> list[tuple[int, int]]:
    """(frame, label) pairs of utterance i padded with `lead` samples of silence in front."""
    frame = HOP * SUBSAMPLE
    return [((lead + end) // frame + k, SYMBOLS.index(w)) for w, _, end in data.word_spans[i] for k in ALIGN_FRAMES]


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
            x = torch.from_numpy(pad_to_blocks(augmented(data, i, seed, 10**6)))[None]
            feats.append(model.features(x)[0])
    allf = torch.cat(feats, dim=1)  # [n_mels, frames]
    model.features.mean.copy_(allf.mean(dim=1, keepdim=True))
    model.features.inv_std.copy_(1.0 / (allf.std(dim=1, keepdim=True) + 1e-5))


def train(model, data: sd.SpeechSet, steps: int, seed: int, lr: float = 3e-3, max_batch_s: float = 60.0,
          warmup: int = 200, checkpoint: Path | None = None, save_every: int = 500, align_weight: float = 1.0) -> None:
    """AdamW, linear warm-up then cosine decay; the weights go to `checkpoint` every `save_every`
    steps, so an interrupted run can go on with --init."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    lengths = np.diff(data.offsets) + int(SAMPLE_RATE * 0.7)  # clean length + mean added silence
    targets = [encode(data.text(i)) for i in range(len(data))]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, min(warmup, steps // 5))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    model.features.fft = True
    model.train()
    step, epoch, t0 = 0, 0, time.time()
    while step < steps:
        for batch in make_batches(lengths, int(max_batch_s * SAMPLE_RATE), rng):
            if step >= steps:
                break
            heard = [augmented(data, int(i), seed, epoch, lead=True) for i in batch]
            audio = [pad_to_blocks(a) for a, _ in heard]
            width = max(len(a) for a in audio)
            x = torch.zeros(len(audio), width)
            for k, a in enumerate(audio):
                x[k, :len(a)] = torch.from_numpy(a)
            frame_lens = torch.tensor([(len(a) - CONTEXT) // HOP // SUBSAMPLE for a in audio])
            tgt = [targets[int(i)] for i in batch]
            with torch.no_grad():
                feats = spec_augment(model.features(x), rng)
            # The network after the features: same code path as forward(), features replaced.
            states = model.initial_states(len(audio))
            h, _ = model.subsample(feats, states[0])
            h = F.gelu(h)
            for block, st in zip(model.blocks, states[1:]):
                h, _ = block(h, st)
            logp = F.log_softmax(model.head(model.norm(h)).transpose(1, 2), dim=-1)  # [batch, frames, vocab]
            loss = F.ctc_loss(logp.transpose(0, 1), torch.tensor([c for t in tgt for c in t]), frame_lens,
                              torch.tensor([len(t) for t in tgt]), blank=0, zero_infinity=True)
            if align_weight:
                pairs = [(k, f, lab) for k, (i, (_, lead)) in enumerate(zip(batch, heard))
                         for f, lab in align_targets(data, int(i), lead) if f < int(frame_lens[k])]
                if pairs:
                    k, f, lab = (torch.tensor(v) for v in zip(*pairs))
                    loss = loss + align_weight * F.nll_loss(logp[k, f], lab)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
            step += 1
            if checkpoint is not None and step % save_every == 0:
                torch.save(model.state_dict(), checkpoint)
            if step % 100 == 0 or step == steps:
                print(f"step {step}/{steps} epoch {epoch} loss {loss.item():.3f} lr {sched.get_last_lr()[0]:.2e} "
                      f"{time.time() - t0:.0f} s", flush=True)
        epoch += 1
    model.features.fft = False
    model.eval()


# -- export ---------------------------------------------------------------------------------------

def export_onnx(model, out_dir: Path) -> Path:
    """model.onnx (opset 17, dynamic batch), tokenizer.json (id -> word) and manifest.json."""
    import torch

    from edge_stream.runtime.manifest import Blocking, InputSpec, Manifest, OutputSpec, StateSpec

    out_dir.mkdir(parents=True, exist_ok=True)
    states = model.initial_states(1)
    state_in = [f"conv_cache_{i}" for i in range(len(states))]
    state_out = [f"conv_cache_{i}_out" for i in range(len(states))]
    x = torch.zeros(1, CONTEXT + BLOCK)
    dynamic = {n: {0: "batch"} for n in ["samples", "logprobs"] + state_in + state_out}
    torch.onnx.export(model, (x, *states), str(out_dir / "model.onnx"), input_names=["samples"] + state_in,
                      output_names=["logprobs"] + state_out, dynamic_axes=dynamic, opset_version=17,
                      dynamo=False)
    write_tokenizer(out_dir / "tokenizer.json")
    (out_dir / "lexicon.txt").unlink(missing_ok=True)  # a character model's file: words are labels now
    manifest = Manifest(
        name="command-recognizer",
        input=InputSpec(name="samples", kind="samples", dtype="float32"),
        states=tuple(StateSpec(input=i, output=o, kind="recurrent", shape=tuple(s.shape), batch_axis=0)
                     for i, o, s in zip(state_in, state_out, states)),
        outputs=(OutputSpec(name="logprobs", role="logits"),),
        blocking=Blocking(block=BLOCK, context=CONTEXT, sample_rate=SAMPLE_RATE),
        tokenizer="tokenizer.json",
        source={"recipe": "export.train_recognizer", "config": asdict(model.cfg),
                "frames_per_block": HOPS_PER_BLOCK // SUBSAMPLE, "lookahead_frames": 0},
    )
    manifest.save(out_dir)
    return out_dir


def write_tokenizer(path: Path) -> None:
    """A WordLevel tokenizer: id -> word for the decoder, transcript -> ids for targets."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({s: i for i, s in enumerate(SYMBOLS)}, unk_token="<blank>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(path))


# -- evaluation through the runtime ---------------------------------------------------------------

def stream_decode(model, decoder, audio: np.ndarray, chunk: int = 320):
    """Feed `audio` in `chunk`-sample pieces through a BlockStream, then a block of silence-padding
    and finish(). Returns (text, words as (WordEvent, sample at which its block was complete))."""
    stream = model.open_stream()
    decoder.reset()
    words = []
    padded = np.concatenate([audio, np.zeros(-len(audio) % BLOCK, np.float32)])
    for pos in range(0, len(padded), chunk):
        out = stream.feed(padded[pos:pos + chunk])
        if out.n_blocks:
            res = decoder.update(out.logits)
            ready = stream.blocks_run * BLOCK  # the samples these frames needed
            words += [(w, ready) for w in res.words]
    text = decoder.text
    words += [(w, stream.blocks_run * BLOCK) for w in decoder.finish().words]
    return text, words


def align_words(ref: list[str], hyp: list[str]) -> tuple[int, list[tuple[int, int]]]:
    """(edit distance, matched (ref index, hyp index) pairs) of a Levenshtein alignment."""
    n, m = len(ref), len(hyp)
    d = np.zeros((n + 1, m + 1), int)
    d[:, 0], d[0, :] = np.arange(n + 1), np.arange(m + 1)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            d[i, j] = min(d[i - 1, j] + 1, d[i, j - 1] + 1, d[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]))
    pairs, i, j = [], n, m
    while i and j:
        if ref[i - 1] == hyp[j - 1] and d[i, j] == d[i - 1, j - 1]:
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif d[i, j] == d[i - 1, j - 1] + 1:
            i, j = i - 1, j - 1
        elif d[i, j] == d[i - 1, j] + 1:
            i -= 1
        else:
            j -= 1
    return int(d[n, m]), pairs[::-1]


def evaluate(model_dir: Path, data: sd.SpeechSet, seed: int, noisy: bool, limit: int | None = None) -> dict:
    """WER and word emission latency of the exported model, streamed through edge_stream."""
    import edge_stream as es
    from edge_stream.voice.ctc import CtcDecoder

    model = es.load(model_dir, intra_op_threads=1)
    decoder = CtcDecoder.from_model(model)
    errors = ref_words = exact = 0
    latency_ms = []
    n = min(limit or len(data), len(data))
    t0 = time.perf_counter()
    audio_s = 0.0
    for i in range(n):
        # "clean": no noise or room, but the same silence padding, gain and faint noise floor
        # (digital-zero silence is a condition neither training nor a microphone produces).
        cond = sd.Augment() if noisy else sd.Augment(noise_p=0.0, reverb_p=0.0)
        audio, lead = sd.augment(data.clean(i), np.random.default_rng([seed, 99, i]), cond)
        audio_s += len(audio) / SAMPLE_RATE
        text, words = stream_decode(model, decoder, audio)
        ref, hyp = data.text(i).split(), [w.word for w, _ in words]
        dist, pairs = align_words(ref, hyp)
        errors += dist
        ref_words += len(ref)
        exact += dist == 0
        for ri, hi in pairs:
            end = lead + data.word_spans[i][ri][2]
            latency_ms.append(1000 * (words[hi][1] - end) / SAMPLE_RATE)
    dt = time.perf_counter() - t0
    return {"utterances": n, "wer": errors / max(1, ref_words), "utterance_exact": exact / max(1, n),
            "latency_ms": percentiles(latency_ms),
            "rtf_1_thread": dt / audio_s}


def percentiles(values) -> dict:
    if not values:
        return {}
    p = np.percentile(values, [50, 90, 99])
    return {"p50": round(float(p[0]), 1), "p90": round(float(p[1]), 1), "p99": round(float(p[2]), 1)}


# -- checks ---------------------------------------------------------------------------------------

def check_parity(model, model_dir: Path, audio: np.ndarray, seed: int) -> float:
    """The checks that can fail: ONNX streaming (fixed and random chunkings) vs PyTorch full-utterance."""
    import torch

    import edge_stream as es

    x = pad_to_blocks(audio)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)[None], *model.initial_states(1))[0][0].numpy()  # [frames, vocab]
    m = es.load(model_dir, intra_op_threads=1)
    whole = m.open_stream().feed(x[CONTEXT:]).logits
    rng = np.random.default_rng(seed)
    stream, parts, pos = m.open_stream(), [], CONTEXT
    while pos < len(x):
        n = int(rng.integers(1, 2000))
        out = stream.feed(x[pos:pos + n])
        pos += n
        if out.n_blocks:
            parts.append(out.logits)
    chunked = np.concatenate(parts)
    if whole.shape != ref.shape or not np.array_equal(whole, chunked):
        sys.exit(f"parity check failed: shapes {whole.shape} {chunked.shape} {ref.shape} or chunked != whole")
    err = float(np.abs(whole - ref).max())
    if err > 1e-3:
        sys.exit(f"parity check failed: ONNX streaming vs PyTorch full utterance differ by {err:.2e} (limit 1e-3)")
    print(f"parity ok: {len(ref)} frames, random chunking identical, max |onnx - torch| = {err:.2e}")
    return err


def write_model_card(out_dir: Path, metrics: dict, command: str) -> Path:
    """MODEL_CARD.md from the run's metrics (the numbers are the ones this run measured)."""
    c, n = metrics["heldout_clean"], metrics["heldout_noisy"]
    cfg = RecognizerConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in metrics["config"].items()})
    t = metrics["training"]

    def lat(d):
        x = d["latency_ms"]
        return f"p50 {x['p50']:.0f} ms, p90 {x['p90']:.0f} ms" if x else "n/a"

    text = f"""# command-recognizer

A streaming speech recognizer for short robot commands: raw 16 kHz samples in, CTC log-probs over
{cfg.vocab - 1} command words (one label per word, plus blank) out, {HOPS_PER_BLOCK // SUBSAMPLE} frames (20 ms each) per {BLOCK}-sample
(40 ms) block. Runs on ONNX Runtime through `edge_stream.load(dir).open_stream()` (a `BlockStream`:
{CONTEXT} samples of context, {len(cfg.dilations) + 1} conv caches as recurrent state I/O) with
`edge_stream.voice.ctc.CtcDecoder.from_model(model)` on top.

## Model
- Log-mel inside the graph: 25 ms Hann window, 10 ms hop, 512-point DFT as a fixed Conv1d, {cfg.n_mels} mel
  bands (20-7600 Hz), log, normalisation frozen from training audio. No feature code in the node.
- A stride-2 causal conv, then {len(cfg.dilations)} causal ConvNeXt-style blocks (depthwise kernel {cfg.kernel},
  dilations {list(cfg.dilations)}, {cfg.channels} channels, BatchNorm, pointwise MLP x{cfg.expand}), a linear CTC head.
- Causal by construction: look-ahead 0 frames; receptive field
  {receptive_field_ms(cfg)} ms of past audio. {metrics['parameters']} parameters.
- Labels (`tokenizer.json`, id -> word): `<blank>` (id 0) and the {cfg.vocab - 1} words of
  `export.speech_data.VOCABULARY`. Greedy CTC emits a word whole on the frame its label wins, so
  nothing waits for a following word or the end of the utterance. Words outside the vocabulary
  cannot be output (they come out as the nearest-sounding command word or nothing).

## Data
Synthesized offline with espeak-ng (`export/speech_data.py`): phrases from a command grammar
(move/go/drive forward/back N meters, turn left/right N degrees, stop, faster/slower, wait N seconds;
fillers, corrections such as "turn left, no, right", two-command phrases), {metrics['train_utterances']} training
utterances over {len(sd.TRAIN_VOICES)} voices ({len(sd.TRAIN_ACCENTS)} accents x {len(sd.TRAIN_VARIANTS)} variants),
rates 120-230 wpm, pitch 15-85; per epoch fresh white/pink noise (SNR 5-30 dB, p=0.8), random
room impulse responses (RT60 0.1-0.6 s, p=0.5), gain, silence padding; SpecAugment masks.
Evaluation: {c['utterances']} utterances from {len(sd.HELDOUT_VOICES)} held-out voices (2 unseen accents, 8 unseen variants).

## Training
    {command}

{t['steps']} steps of AdamW (peak lr {t['lr']:g}, {t['warmup']} warm-up steps, cosine decay), {t['batch_s']:g} s of audio
per batch, torch on {t['threads']} CPU thread(s), cross-entropy alignment guide weight {t['align_weight']:g}: {metrics['train_seconds']} s of training
({metrics['total_seconds']} s in all, including evaluation) on a shared 2-core machine.

## Metrics (streamed through edge_stream with 20 ms chunks, greedy CTC, 1 ORT thread)
| held-out voices | WER | utterances exact | word decoded after word end |
|---|---|---|---|
| clean | {c['wer']:.3f} | {c['utterance_exact']:.3f} | {lat(c)} |
| noise + reverb | {n['wer']:.3f} | {n['utterance_exact']:.3f} | {lat(n)} |

Latency is over correctly recognized words: audio time from the end of the word (espeak-ng's word
timing, clean speech) to the end of the 40 ms block whose frame decoded it; compute adds
{n['rtf_1_thread'] * 40:.2f} ms per block on one thread (real-time factor {n['rtf_1_thread']:.3f}).
The export check compares ONNX streaming (random chunkings) with the PyTorch full-utterance forward.

## Limits
Synthetic speech only: a closed command vocabulary, espeak voices. Real microphones and speakers
will need real recordings. The parser (`models/command-parser`) also knows words this model
cannot output (e.g. "reverse", "rotate", "metres"); see `export/command_data.py` INPUT_WORDS.
"""
    path = out_dir / "MODEL_CARD.md"
    path.write_text(text)
    return path


def receptive_field_ms(cfg: RecognizerConfig) -> int:
    """Past audio one output frame sees: the window, the stride-2 conv, then each block's dilated kernel."""
    return (1 + 2 * sum((cfg.kernel - 1) * d for d in cfg.dilations)) * 10 + 15


def evaluate_only(args) -> None:
    """Re-run the evaluation of an exported model (training figures kept from its metrics.json)."""
    eval_set = sd.load_set("eval", args.eval_utts, args.seed)
    metrics = json.loads((args.out / "metrics.json").read_text())
    metrics["heldout_clean"] = evaluate(args.out, eval_set, args.seed, noisy=False)
    metrics["heldout_noisy"] = evaluate(args.out, eval_set, args.seed, noisy=True)
    print(json.dumps(metrics, indent=2))
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_model_card(args.out, metrics, metrics.get("command", "python -m export.train_recognizer"))
    if metrics["heldout_noisy"]["wer"] > args.max_wer:
        sys.exit(f"check failed: noisy held-out WER {metrics['heldout_noisy']['wer']:.3f} > {args.max_wer}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", type=Path, default=Path("models/command-recognizer"))
    parser.add_argument("--train-utts", type=int, default=10000)
    parser.add_argument("--eval-utts", type=int, default=400)
    parser.add_argument("--steps", type=int, default=15000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate")
    parser.add_argument("--warmup", type=int, default=200, help="linear warm-up steps")
    parser.add_argument("--batch-s", type=float, default=20.0, help="seconds of audio per batch")
    parser.add_argument("--max-wer", type=float, default=0.15, help="fail if noisy held-out WER is above this")
    parser.add_argument("--smoke", action="store_true", help="a few steps on a handful of utterances (CI)")
    parser.add_argument("--eval-only", action="store_true",
                        help="re-evaluate the model in --out and rewrite its metrics and model card")
    parser.add_argument("--init", type=Path, help="start from this state_dict (a previous run's checkpoint)")
    parser.add_argument("--checkpoint", type=Path, default=Path(".cache/command-recognizer.pt"),
                        help="where the trained torch weights go (not committed)")
    args = parser.parse_args(argv)
    import torch

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    if args.smoke:
        args.train_utts, args.eval_utts, args.steps, args.max_wer = 24, 8, 3, 1e9
    if args.eval_only:
        return evaluate_only(args)
    t_start = time.time()
    train_set = sd.load_set("train", args.train_utts, args.seed)
    eval_set = sd.load_set("eval", args.eval_utts, args.seed)
    cfg = RecognizerConfig()
    model = build_model(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params} parameters, receptive field {receptive_field_ms(cfg)} ms, no look-ahead")
    if args.init:
        model.load_state_dict(torch.load(args.init))  # its normalisation included
    else:
        fit_normalisation(model, train_set, args.seed, n=20 if args.smoke else 200)
    t_train = time.time()
    if not args.smoke:
        args.checkpoint.parent.mkdir(parents=True, exist_ok=True)
    train(model, train_set, args.steps, args.seed, lr=args.lr, warmup=args.warmup,
          max_batch_s=8.0 if args.smoke else args.batch_s, checkpoint=None if args.smoke else args.checkpoint)
    train_s = time.time() - t_train
    if not args.smoke:
        torch.save(model.state_dict(), args.checkpoint)
    export_onnx(model, args.out)
    check_parity(model, args.out, sd.augment(eval_set.clean(0), np.random.default_rng(1))[0], args.seed)
    clean = evaluate(args.out, eval_set, args.seed, noisy=False)
    noisy = evaluate(args.out, eval_set, args.seed, noisy=True)
    command = "python -m export.train_recognizer " + " ".join(argv if argv is not None else sys.argv[1:])
    metrics = {"command": command, "parameters": n_params, "config": asdict(cfg),
               "training": {"steps": args.steps, "lr": args.lr, "warmup": args.warmup, "batch_s": args.batch_s,
                            "threads": args.threads, "align_weight": 1.0,
                            "init": str(args.init) if args.init else None},
               "train_utterances": len(train_set),
               "train_seconds": round(train_s), "total_seconds": round(time.time() - t_start),
               "heldout_clean": clean, "heldout_noisy": noisy}
    print(json.dumps(metrics, indent=2))
    if not args.smoke:
        (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        write_model_card(args.out, metrics, command)
    if noisy["wer"] > args.max_wer:
        sys.exit(f"check failed: noisy held-out WER {noisy['wer']:.3f} > {args.max_wer}")
    print(f"ok: wrote {args.out}")


if __name__ == "__main__":
    main()
