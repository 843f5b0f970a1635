"""`edge-stream demo`: the runtime on the embedded default models, as a user first sees it.

1. Silero VAD on a speech clip delivered in 20 ms chunks at real-time pace: speech
   start/end events appear while the audio is still "playing".
2. A causal LM fed a 1024-token input in 16-token chunks as it "arrives", then
   asked for the next token: time-to-first-token streaming versus waiting for the
   whole input and prefilling it at once. The default LM has random weights (built
   from a config, no download), so its text is gibberish; the timing is real.
"""

from __future__ import annotations

import argparse
import logging
import time
import wave
from pathlib import Path

import numpy as np

from .model import load

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_VAD = REPO / "models" / "silero-vad"
DEFAULT_LM = REPO / "models" / "tiny-llama"
DEFAULT_WAV = REPO / "tests" / "data" / "speech_16k.wav"


def read_wav_float32(path: Path) -> tuple[np.ndarray, int]:
    """Mono 16-bit PCM WAV -> float32 samples in [-1, 1] and the sample rate."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise ValueError(f"{path}: expected mono 16-bit PCM, got {w.getnchannels()} channels, "
                             f"{8 * w.getsampwidth()}-bit")
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return (pcm.astype(np.float32) / 32768.0), w.getframerate()


def vad_demo(vad_dir: Path, wav: Path, chunk_ms: float, realtime: bool) -> int:
    model = load(vad_dir, intra_op_threads=1)
    audio, sr = read_wav_float32(wav)
    stream = model.open_stream()
    chunk = int(sr * chunk_ms / 1000)
    print(f"VAD: {wav.name}, {len(audio) / sr:.1f} s at {sr} Hz, {chunk_ms:.0f} ms chunks"
          f"{' in real time' if realtime else ''}")
    t0 = time.perf_counter()
    events = 0
    for i in range(0, len(audio), chunk):
        if realtime:  # the chunk "arrives" when its last sample has been captured
            delay = (i + chunk) / sr - (time.perf_counter() - t0)
            if delay > 0:
                time.sleep(delay)
        out = stream.feed(audio[i:i + chunk])
        for ev in out.events:
            kind, sample = next(iter(ev.items()))
            heard = (time.perf_counter() - t0) if realtime else (i + chunk) / sr
            print(f"  speech {kind:5s} at {sample / sr:5.2f} s  (reported at {heard:5.2f} s of audio)")
            events += 1
    return events


def lm_demo(lm_dir: Path, n_tokens: int, chunk: int, new_tokens: int) -> float:
    model = load(lm_dir)
    vocab = model.manifest.input.vocab_size
    ids = np.random.default_rng(0).integers(0, vocab, n_tokens)
    print(f"LM: {model.name}, {n_tokens}-token input in {chunk}-token chunks")

    stream = model.open_stream()
    for i in range(0, n_tokens - chunk, chunk):
        stream.feed(ids[i:i + chunk])
    t = time.perf_counter()
    stream.feed(ids[n_tokens - chunk:])  # the last chunk arrives
    first = next(stream.generate(max_new_tokens=1, stop_token_ids=[]))
    ttft_stream = time.perf_counter() - t

    batch = model.open_stream()
    t = time.perf_counter()
    batch.feed(ids)  # batch: wait for everything, then prefill once
    first_batch = next(batch.generate(max_new_tokens=1, stop_token_ids=[]))
    ttft_batch = time.perf_counter() - t
    if first.token_id != first_batch.token_id:
        raise SystemExit("streaming and batch disagree on the first token: parity is broken")
    print(f"  time to first token: streaming {ttft_stream * 1000:.1f} ms, batch {ttft_batch * 1000:.1f} ms "
          f"({ttft_batch / ttft_stream:.0f}x)")
    text = "".join(p.text for p in stream.generate(max_new_tokens=new_tokens, stop_token_ids=[]))
    print(f"  continuation (random weights): {text!r}")
    return ttft_batch / ttft_stream


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run the runtime on the default models (VAD + LM)")
    p.add_argument("--vad", type=Path, default=DEFAULT_VAD)
    p.add_argument("--lm", type=Path, default=DEFAULT_LM)
    p.add_argument("--wav", type=Path, default=DEFAULT_WAV)
    p.add_argument("--chunk-ms", type=float, default=20.0)
    p.add_argument("--fast", action="store_true", help="do not pace the audio in real time")
    p.set_defaults(func=run_demo)


def run_demo(args) -> int:
    events = vad_demo(args.vad, args.wav, args.chunk_ms, realtime=not args.fast)
    if events == 0:
        print("FAIL: the VAD found no speech in the demo clip")
        return 1
    lm_demo(args.lm, n_tokens=1024, chunk=16, new_tokens=16)
    return 0
