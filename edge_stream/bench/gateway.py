"""Gateway benchmark: WebSocket sessions through one gateway beside streams published over ZeroMQ
directly, all real-time audio into the same voice chain, in the same run.

    python -m edge_stream.bench.gateway [--sessions 50] [--direct 10] [--seconds 20]

The chain (VAD -> recognizer -> parser) runs in one process and the gateway in another, both
`edge-stream run` on launch/voice_web.toml moved to free ports. Every stream plays the same audio
(a committed command WAV and silence, looped) in 512-sample chunks at real-time pace, starting at
staggered times. Latency, per speech start: from sending the chunk that made the VAD detect it to
receiving the event (`input_audio_buffer.speech_started` over the WebSocket, the VAD node's
`speech_start` over ZeroMQ). Same audio, same chunks: both paths trigger on the same chunk, whose
index the ZeroMQ events name (`in_seq`). The gateway adds the difference. CPU per session: the
gateway process's CPU time over the run / wall time / sessions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from edge_stream.bench.common import free_port
from edge_stream.stats import percentiles

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = ROOT / "launch" / "voice_web.toml"
WAV = ROOT / "tests" / "data" / "turn_left_16k.wav"  # "turn left ninety degrees", silence around it
CHUNK = 512  # samples: 32 ms, one VAD block
SR = 16000


def _start(launch: Path, names: list[str], timeout_s: float = 120.0) -> subprocess.Popen:
    """`edge-stream run LAUNCH --only NAME...` in its own process; returns once each part said ready."""
    args = [sys.executable, "-m", "edge_stream.cli", "run", str(launch)] + [a for n in names for a in ("--only", n)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    waiting, box = set(names), []

    def read():
        for line in proc.stdout:
            box.append(line)
            waiting.difference_update({n for n in list(waiting) if re.match(rf"(node|gateway) {n}: ready", line)})
            if not waiting:
                break

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout_s)
    if waiting:
        proc.kill()
        raise SystemExit(f"{', '.join(sorted(waiting))} did not start: {''.join(box)[-2000:]}")
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # keep the pipe drained
    return proc


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Sender:
    """One stream's real-time schedule: chunk i leaves at t0 + (i + 1) x 32 ms; send times kept (ns)."""

    def __init__(self, audio: np.ndarray, t0: float, seconds: float):
        self.audio, self.t0 = audio, t0
        self.n_chunks = int(seconds * SR / CHUNK)
        self.t_send_ns: list[int] = []
        self.t_event_ns: list[int] = []  # receipt of each speech start, in order

    def chunk(self, i: int) -> np.ndarray:
        start = (i * CHUNK) % (len(self.audio) - CHUNK)
        return self.audio[start:start + CHUNK]

    async def run(self, send) -> None:
        loop = asyncio.get_running_loop()
        for i in range(self.n_chunks):
            delay = self.t0 + (i + 1) * CHUNK / SR - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self.t_send_ns.append(time.perf_counter_ns())
            await send(self.chunk(i))


async def _measure(ws_url: str, vad_input: str, vad_output: str, sessions: int, direct: int,
                   seconds: float, audio: np.ndarray) -> tuple[list[Sender], list[Sender], list[int]]:
    import zmq
    from websockets.asyncio.client import connect

    from edge_stream.node.client import Publisher, Subscriber

    if direct < 1:
        raise SystemExit("--direct must be >= 1: the ZeroMQ streams name the chunks that trigger speech starts")
    loop = asyncio.get_running_loop()
    rng = np.random.default_rng(0)
    t0 = loop.time() + 1.0
    ws_senders = [Sender(audio, t0 + rng.uniform(0, 1.0), seconds) for _ in range(sessions)]
    zmq_senders = [Sender(audio, t0 + rng.uniform(0, 1.0), seconds) for _ in range(direct)]
    trigger_seqs: list[int] = []  # chunk index of each speech start (from the first direct stream)

    pub = Publisher("mic", connect=[vad_input])
    sub = Subscriber(["out/bench-"], connect=[vad_output], prefix=True)
    if not pub.wait_ready(10.0):
        raise SystemExit(f"the VAD node at {vad_input} never subscribed")

    def drain():
        while (rec := sub.recv(0)) is not None:
            h = rec.header
            if rec.kind == "event" and h.get("event") == "speech_start":
                k = int(h["stream"].rsplit("-", 1)[1])
                zmq_senders[k].t_event_ns.append(time.perf_counter_ns())
                if k == 0:
                    trigger_seqs.append(h["in_seq"])

    loop.add_reader(sub.sock.getsockopt(zmq.FD), drain)

    async def direct_stream(k: int, s: Sender):
        async def send(chunk):
            pub.send(chunk, stream=f"bench-{k}", sr=SR)
        await s.run(send)

    async def ws_session(s: Sender):
        async with connect(ws_url, max_size=None) as ws:
            async def receive():
                async for message in ws:
                    if json.loads(message)["type"] == "input_audio_buffer.speech_started":
                        s.t_event_ns.append(time.perf_counter_ns())
            receiver = asyncio.ensure_future(receive())
            await s.run(lambda chunk: ws.send(chunk.tobytes()))
            await asyncio.sleep(1.0)  # the last events in flight
            receiver.cancel()

    await asyncio.gather(*[ws_session(s) for s in ws_senders],
                         *[direct_stream(k, s) for k, s in enumerate(zmq_senders)])
    loop.remove_reader(sub.sock.getsockopt(zmq.FD))
    drain()
    sub.close()
    pub.close()
    return ws_senders, zmq_senders, trigger_seqs


def _latencies_ms(senders: list[Sender], trigger_seqs: list[int]) -> list[float]:
    """Per speech start: event receipt minus the send time of the chunk that triggered it."""
    out = []
    for s in senders:
        for seq, t_event in zip(trigger_seqs, s.t_event_ns):
            if seq < len(s.t_send_ns):
                out.append((t_event - s.t_send_ns[seq]) / 1e6)
    return out


def _launch_text(nodes: tuple[str, ...]) -> str:
    """launch/voice_web.toml with absolute model paths, free ports, and only `nodes` (the gateway
    then relays just those)."""
    text = LAUNCH.read_text().replace('"../models/', f'"{ROOT}/models/')
    for port in sorted(set(re.findall(r"127\.0\.0\.1:(\d+)", text))):
        text = text.replace(f"127.0.0.1:{port}", f"127.0.0.1:{free_port()}")
    blocks, keep = re.split(r"\n(?=\[\[)", text), True
    out = []
    for block in blocks:  # a [[node.models]] block belongs to the [[node]] before it
        if block.startswith("[[node]]"):
            keep = re.search(r'name = "([^"]+)"', block).group(1) in nodes
        elif block.startswith("[[gateway]]"):
            keep = True
            block = "\n".join(line for line in block.splitlines()
                              if not re.match(r"(recognizer|parser) = ", line) or line.split()[0] in nodes)
        if keep:
            out.append(block)
    return "\n".join(out)


def scenario_gateway(sessions: int = 50, direct: int = 10, seconds: float = 20.0,
                     nodes: tuple[str, ...] = ("vad", "recognizer", "parser")) -> dict:
    """The figures of one run (see the module docstring); `nodes`: ("vad",) measures the gateway in
    front of the VAD alone (on a machine too small for the whole chain at that many streams)."""
    from edge_stream.audio import read_wav

    pcm, sr = read_wav(WAV)
    assert sr == SR
    audio = pcm.astype("<i2")
    folder = Path(tempfile.mkdtemp(prefix="edge-stream-gateway-bench-"))
    text = _launch_text(nodes)
    text = text.replace('max_audio_rate = 4.0', f'max_audio_rate = 4.0\nmax_sessions = {sessions + 8}')
    launch = folder / "voice_web.toml"
    launch.write_text(text)
    ports = dict(re.findall(r'(input|output)\.bind = \["tcp://127\.0\.0\.1:(\d+)"\]', text.split("[[node]]")[1]))
    listen = re.search(r'listen = "([^"]+)"', text).group(1)
    chain = _start(launch, list(nodes))
    gateway = None
    try:
        gateway = _start(launch, ["web"])
        cpu0, wall0 = _cpu_s(gateway.pid), time.monotonic()
        ws_s, zmq_s, seqs = asyncio.run(_measure(f"ws://{listen}/v1/realtime", f"tcp://127.0.0.1:{ports['input']}",
                                                 f"tcp://127.0.0.1:{ports['output']}", sessions, direct, seconds,
                                                 audio))
        cpu_s, wall_s = _cpu_s(gateway.pid) - cpu0, time.monotonic() - wall0
    finally:
        for proc in (gateway, chain):
            if proc is not None:
                proc.terminate()
                proc.wait(30)
    ws_ms, zmq_ms = _latencies_ms(ws_s, seqs), _latencies_ms(zmq_s, seqs)
    if not ws_ms or not zmq_ms:
        raise SystemExit(f"no speech starts measured (websocket {len(ws_ms)}, zeromq {len(zmq_ms)})")
    ws_p, zmq_p = percentiles(ws_ms, (50, 99)), percentiles(zmq_ms, (50, 99))
    return {"sessions": sessions, "direct_streams": direct, "seconds": seconds, "nodes": list(nodes),
            "websocket_ms": {"p50": ws_p[0], "p99": ws_p[1], "n": len(ws_ms)},
            "zeromq_ms": {"p50": zmq_p[0], "p99": zmq_p[1], "n": len(zmq_ms)},
            "gateway_adds_ms": {"p50": ws_p[0] - zmq_p[0], "p99": ws_p[1] - zmq_p[1]},
            "gateway_cpu_per_session_pct": 100.0 * cpu_s / wall_s / sessions,
            "gateway_cpu_pct": 100.0 * cpu_s / wall_s}


def format_gateway(r: dict) -> str:
    return (f"gateway: {r['sessions']} WebSocket sessions + {r['direct_streams']} ZeroMQ streams, real-time audio, "
            f"{r['seconds']:.0f} s, into {' -> '.join(r.get('nodes', ['vad', 'recognizer', 'parser']))}\n"
            f"  speech start -> event   websocket p50 {r['websocket_ms']['p50']:.2f} ms  p99 {r['websocket_ms']['p99']:.2f} ms"
            f"  (n={r['websocket_ms']['n']})\n"
            f"                          zeromq    p50 {r['zeromq_ms']['p50']:.2f} ms  p99 {r['zeromq_ms']['p99']:.2f} ms"
            f"  (n={r['zeromq_ms']['n']})\n"
            f"  the gateway adds        p50 {r['gateway_adds_ms']['p50']:+.2f} ms  p99 {r['gateway_adds_ms']['p99']:+.2f} ms\n"
            f"  gateway CPU             {r['gateway_cpu_per_session_pct']:.2f}% of a core per session "
            f"({r['gateway_cpu_pct']:.1f}% in all)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge_stream.bench.gateway", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=50, help="WebSocket sessions through the gateway (default 50)")
    p.add_argument("--direct", type=int, default=10, help="streams published over ZeroMQ directly (default 10)")
    p.add_argument("--seconds", type=float, default=20.0, help="audio per stream (default 20)")
    p.add_argument("--vad-only", action="store_true", help="only the VAD behind the gateway (not the whole chain)")
    p.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = p.parse_args(argv)
    result = scenario_gateway(args.sessions, args.direct, args.seconds,
                              ("vad",) if args.vad_only else ("vad", "recognizer", "parser"))
    print(format_gateway(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
