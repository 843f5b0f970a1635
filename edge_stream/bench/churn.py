"""Memory after stream churn (issue 13 §7): node RSS before and after N streams opened and expired by TTL.

    python -m edge_stream.bench.churn [--lm models/tiny-llama] [--vad models/silero-vad]
                                      [--streams 4000] [--wave 100] [--json FILE]

The node runs in its own process (`edge-stream run` on a generated launch file, two workers)
and is measured from outside through /proc/<pid>/status. Streams come in waves of `--wave`:
each LM stream gets one chunk of a random number of token ids (so shapes vary as they do in
use) and an `end` that generates `--tokens` tokens; each VAD stream gets one audio chunk. The
wave's outputs are awaited, then the node's own stats heartbeat until `streams_open` is 0
(every stream of the wave expired by TTL): no sleeps. The baseline is the RSS after a first
warm-up wave has expired (ORT's first-run allocations are not churn); the figure that counts
is RSS after the last wave over that baseline. Goal: <= 1.10. Exits 1 when missed.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edge_stream.bench.common import free_port, run_node_process
from edge_stream.node.client import Publisher, Subscriber

log = logging.getLogger(__name__)

GOAL_RATIO = 1.10


def rss_kb(pid: int | str = "self") -> dict:
    """VmRSS, VmHWM (peak) and RssAnon of a process, KiB, from /proc/<pid>/status."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon"):
                out[key] = int(value.split()[0])
    return out


def start_node(launch_text: str, folder: Path) -> subprocess.Popen:
    """`edge-stream run` on `launch_text` in its own process; returns once it printed its ready line."""
    launch = folder / "node.toml"
    launch.write_text(launch_text)
    proc = run_node_process(launch)
    return proc


def launch_file(ep_in: str, ep_out: str, lm: str | None, vad: str | None, wave: int, ttl_s: float,
                stream_options: str = "") -> str:
    text = f"""[[node]]
name = "churn"
input.bind = ["{ep_in}"]
output.bind = ["{ep_out}"]
workers = 2
max_streams = {4 * wave}
stream_ttl_s = {ttl_s}
stats_interval_s = 0.1
"""
    if lm:
        text += f"""[[node.models]]
name = "lm"
dir = "{Path(lm).resolve()}"
topics = ["tokens"]
{stream_options}
"""
    if vad:
        text += f"""[[node.models]]
name = "vad"
dir = "{Path(vad).resolve()}"
topics = ["mic"]
"""
    return text


class Churn:
    """One node process and the clients that open and abandon its streams."""

    def __init__(self, proc: subprocess.Popen, ep_in: str, ep_out: str, lm: bool, vad: bool, vocab: int,
                 tokens: int, seed: int):
        self.proc, self.lm, self.vad = proc, lm, vad
        self.vocab, self.tokens = vocab, tokens
        self.rng = np.random.default_rng(seed)
        self.sub = Subscriber(["out/", "stats"], connect=[ep_out], prefix=True)
        self.pubs = {}
        if lm:
            self.pubs["tokens"] = Publisher("tokens", connect=[ep_in], sndhwm=100_000)
        if vad:
            self.pubs["mic"] = Publisher("mic", connect=[ep_in], sndhwm=100_000)
        for pub in self.pubs.values():
            if not pub.wait_ready(10):
                raise SystemExit(f"node never subscribed to {pub.topic!r}")
        self.stats()  # the first heartbeat after our subscription: outputs from now on reach us
        self.waves = 0
        self.reuse_names = False  # True: every wave uses the same stream names (as sensors do)

    def stats(self, until=lambda h: True, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            rec = self.sub.recv(left)
            if rec is not None and rec.kind == "stats" and until(rec.header):
                return rec.header
        raise SystemExit(f"no matching stats heartbeat within {timeout} s")

    def wave(self, n: int) -> None:
        """Open `n` streams (LM and VAD each), wait for every one's last output, then until all expired."""
        names = [f"s{i}" if self.reuse_names else f"w{self.waves}-s{i}" for i in range(n)]
        self.waves += 1
        waiting = set()
        audio = (self.rng.standard_normal(8000) * 0.05).astype(np.float32)
        for name in names:
            if self.lm:
                ids = self.rng.integers(0, self.vocab, int(self.rng.integers(4, 120)))
                self.pubs["tokens"].send(ids, stream=f"lm-{name}")
                self.pubs["tokens"].end(stream=f"lm-{name}", max_new_tokens=self.tokens)
                waiting.add(f"lm-{name}")
            if self.vad:
                self.pubs["mic"].send(audio[: int(self.rng.integers(512, 8000))], stream=f"vad-{name}", sr=16000)
                waiting.add(f"vad-{name}")
        deadline = time.monotonic() + 60 + n
        while waiting:
            rec = self.sub.recv(max(0.0, deadline - time.monotonic()))
            if rec is None:
                raise SystemExit(f"no output for {len(waiting)} streams (e.g. {sorted(waiting)[:3]})")
            h = rec.header
            if rec.kind == "done" or (rec.kind == "result" and h["stream"].startswith("vad-")):
                waiting.discard(h["stream"])
            elif rec.kind == "error":
                raise SystemExit(f"node error: {h.get('code')}: {h.get('reason')}")
        seq = self.stats(until=lambda h: h["streams_open"] == 0)["seq"]  # every stream expired by TTL
        self.stats(until=lambda h: h["seq"] >= seq + 2)  # and the node's next tick ran after their close

    def close(self) -> None:
        for pub in self.pubs.values():
            pub.close()
        self.sub.close()


def run(lm: str | None, vad: str | None, streams: int, wave: int, tokens: int, ttl_s: float, seed: int = 0,
        stream_options: str = "", warmup: int = 1, reuse_names: bool = False) -> dict:
    """Churn `streams` streams per model through a node; RSS (KiB) at start, after warm-up, per wave, at the end."""
    vocab = 0
    if lm:
        from edge_stream.runtime.manifest import load_manifest

        vocab = load_manifest(Path(lm)).input.vocab_size
    ep_in, ep_out = (f"tcp://127.0.0.1:{free_port()}" for _ in range(2))
    with tempfile.TemporaryDirectory() as tmp:
        proc = start_node(launch_file(ep_in, ep_out, lm, vad, wave, ttl_s, stream_options), Path(tmp))
        try:
            churn = Churn(proc, ep_in, ep_out, bool(lm), bool(vad), vocab, tokens, seed)
            churn.reuse_names = reuse_names
            start = rss_kb(proc.pid)
            t0 = time.perf_counter()
            churn.wave(warmup)  # warm-up: first-run allocations of every model
            baseline = rss_kb(proc.pid)
            series = []
            for done in range(wave, streams + 1, wave):
                churn.wave(wave)
                series.append({"streams": done, **rss_kb(proc.pid)})
                log.info("%5d streams churned: RSS %.1f MiB", done, series[-1]["VmRSS"] / 1024)
            churn.close()
            end = series[-1]
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(10)
    ratio = end["VmRSS"] / baseline["VmRSS"]
    return {"streams_per_model": streams, "wave": wave, "reuse_names": reuse_names, "tokens": tokens, "ttl_s": ttl_s,
            "models": {"lm": lm, "vad": vad}, "stream_options": stream_options,
            "rss_kb": {"start": start, "baseline": baseline, "end": end}, "series": series,
            "ratio": ratio, "goal": f"RSS after churn / baseline <= {GOAL_RATIO}", "pass": ratio <= GOAL_RATIO,
            "seconds": time.perf_counter() - t0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lm", default="models/tiny-llama", help="LM model directory ('' for none)")
    p.add_argument("--vad", default="models/silero-vad", help="VAD model directory ('' for none)")
    p.add_argument("--streams", type=int, default=4000, help="streams churned per model (after the warm-up wave)")
    p.add_argument("--wave", type=int, default=100, help="streams open at once")
    p.add_argument("--tokens", type=int, default=8, help="tokens generated per LM stream")
    p.add_argument("--ttl", type=float, default=0.3, help="stream_ttl_s of the node")
    p.add_argument("--stream-options", default="", help="TOML line(s) for the LM model, e.g. "
                   "'stream_options = { kv_window = 64 }'")
    p.add_argument("--warmup", type=int, default=1, help="streams per model in the warm-up wave (default 1)")
    p.add_argument("--reuse-names", action="store_true",
                   help="every wave reuses the same stream names (default: all names distinct; the node "
                        "remembers the output seq of up to 4096 closed names per worker, ~200 B each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the report as JSON")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    r = run(args.lm or None, args.vad or None, args.streams, args.wave, args.tokens, args.ttl, args.seed,
            args.stream_options, args.warmup, args.reuse_names)
    mib = {k: v["VmRSS"] / 1024 for k, v in r["rss_kb"].items()}
    print(f"churn: {r['streams_per_model']} streams per model in waves of {r['wave']} "
          f"(lm={args.lm or '-'}, vad={args.vad or '-'}), {r['seconds']:.0f} s")
    print(f"node RSS MiB: start {mib['start']:.1f}  baseline (after warm-up wave) {mib['baseline']:.1f}  "
          f"after churn {mib['end']:.1f}  peak {r['rss_kb']['end']['VmHWM'] / 1024:.1f}")
    print(f"after / baseline = {r['ratio']:.3f}  (goal <= {GOAL_RATIO}: {'met' if r['pass'] else 'MISSED'})")
    if args.json:
        args.json.write_text(json.dumps(r, indent=1))
    return 0 if r["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
