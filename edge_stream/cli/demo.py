"""`edge-stream demo`: the node on the embedded default models, as a user first sees it.

Starts the node of `launch/demo.toml` (Silero VAD + a causal LM) on loopback and,
as a sensor and a controller would over ZeroMQ:
1. replays a speech clip into the VAD in 20 ms chunks at real-time pace: speech
   start/end events arrive while the audio is still "playing";
2. streams a sentence into the LM a few words at a time, then asks it to continue:
   text deltas arrive one token at a time.
Then it compares time-to-first-token, streaming versus waiting for a whole
1024-token input. The default LM has random weights (built from a config, no
download), so its text is gibberish; the timing is real.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]  # edge_stream/cli/demo.py -> the repository root
DEFAULT_LAUNCH = REPO / "launch" / "demo.toml"
DEFAULT_WAV = REPO / "tests" / "data" / "speech_16k.wav"
SENTENCE = ["The robot ", "moves forward ", "two meters, ", "then turns ", "left."]


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run the node of launch/demo.toml on the default models")
    p.add_argument("--launch", type=Path, default=DEFAULT_LAUNCH)
    p.add_argument("--wav", type=Path, default=DEFAULT_WAV)
    p.add_argument("--chunk-ms", type=float, default=20.0)
    p.add_argument("--speed", type=float, default=1.0, help="replay speed (1 = real time)")
    p.set_defaults(func=run_demo)


def run_demo(args) -> int:
    from edge_stream.audio import read_wav
    from edge_stream.cli.node import format_output
    from edge_stream.node.client import Publisher, Subscriber
    from edge_stream.node.config import load_launch
    from edge_stream.node.node import Node

    cfg = load_launch(args.launch).nodes[0]
    samples, sr = read_wav(args.wav)
    with Node(cfg) as node:
        print(f"node {cfg.name}: ready {node.endpoints}")
        sub = Subscriber(["out/"], connect=node.endpoints["output"], prefix=True)
        mic = Publisher("mic", connect=node.endpoints["input"])
        chat = Publisher("chat", connect=node.endpoints["input"])
        if not (mic.wait_ready(5) and chat.wait_ready(5)):
            print("FAIL: the node did not subscribe to its input topics")
            return 1
        time.sleep(0.2)  # let the controller's subscription reach the node's PUB
        chunk = int(sr * args.chunk_ms / 1000)
        print(f"replaying {args.wav.name} ({len(samples) / sr:.1f} s) on 'mic' in {args.chunk_ms:.0f} ms chunks; "
              f"streaming a sentence on 'chat'")

        def sensors():
            t0 = time.monotonic()
            for i, start in enumerate(range(0, len(samples), chunk)):
                delay = t0 + (start + chunk) / sr / args.speed - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                mic.send(samples[start:start + chunk], stream="mic1", sr=sr)
                if i % 25 == 0 and i // 25 < len(SENTENCE):  # a few words every half second
                    chat.send(text=SENTENCE[i // 25], stream="chat1")
                if i // 25 == len(SENTENCE) and i % 25 == 0:
                    chat.end(stream="chat1", max_new_tokens=16)
            mic.end(stream="mic1")

        sender = threading.Thread(target=sensors, daemon=True)
        sender.start()
        speech, done = 0, set()
        deadline = time.monotonic() + len(samples) / sr / args.speed + 30
        while len(done) < 2 and time.monotonic() < deadline:
            rec = sub.recv(0.5)
            if rec is None or rec.kind == "result":  # per-chunk VAD probabilities: too many to print
                continue
            if rec.kind == "event" and rec.header.get("event") == "speech_start":
                speech += 1
            if rec.kind == "done":
                done.add(rec.header["stream"])
            print(format_output(rec))
        sender.join(timeout=5)
        for client in (mic, chat, sub):
            client.close()
    if speech == 0 or len(done) < 2:
        print(f"FAIL: speech segments {speech}, streams done {sorted(done)}")
        return 1
    lm_dir = next(m.dir for m in cfg.models if m.name == "lm")
    ratio = ttft_comparison(Path(lm_dir))
    return 0 if ratio > 1 else 1


def ttft_comparison(lm_dir: Path, n_tokens: int = 1024, chunk: int = 16) -> float:
    """Time to first token after the input ends: streamed in chunks vs one prefill of it all."""
    from edge_stream.runtime.model import load  # onnxruntime loads when the demo runs, not with the CLI

    model = load(lm_dir)
    ids = np.random.default_rng(0).integers(0, model.manifest.input.vocab_size, n_tokens)
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
    print(f"time to first token after a {n_tokens}-token input ({model.name}): streaming in {chunk}-token "
          f"chunks {ttft_stream * 1000:.1f} ms, batch {ttft_batch * 1000:.1f} ms ({ttft_batch / ttft_stream:.0f}x)")
    return ttft_batch / ttft_stream


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="edge-stream")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["demo", *(argv or [])])
    return args.func(args)
