"""Node overhead benchmark: chunk published -> first output received, minus the model's own run time.

    python -m edge_stream.bench.node --vad-dir models/silero-vad [--rate 1000] [--chunks 5000]

The node runs in its own process (`edge-stream run` on a generated launch
file). A Publisher sends 512-sample VAD chunks (one model block each) at
`--rate` chunks/s over loopback, spread over `--streams` streams; a
Subscriber in another thread records arrival times. Overhead per chunk =
(receive time - send time) - infer_ms reported by the node, so
it holds both sockets, both msgpack codecs, the queue hop to the worker and the
inproc hop back. Prints p50/p99/max in ms and checks them against the targets
(p50 <= 0.3 ms, p99 <= 1 ms); exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from edge_stream.bench.common import free_port, run_node_process
from edge_stream.node.client import Publisher, Subscriber
from edge_stream.stats import percentiles


def start_node_process(vad_dir: str, transport: str, folder: Path) -> tuple[subprocess.Popen, str, str]:
    """The node in its own process (as on a robot): the benchmark's threads must not share its GIL."""
    if transport == "tcp":
        ep_in, ep_out = (f"tcp://127.0.0.1:{free_port()}" for _ in range(2))
    else:
        ep_in, ep_out = f"ipc://{folder}/in", f"ipc://{folder}/out"
    launch = folder / "bench.toml"
    launch.write_text(f"""[[node]]
name = "bench"
input.bind = ["{ep_in}"]
output.bind = ["{ep_out}"]
[[node.models]]
name = "vad"
dir = "{Path(vad_dir).resolve()}"
topics = ["mic"]
""")
    proc = run_node_process(launch)
    return proc, ep_in, ep_out


def relay(ep_in: str, ep_out: str) -> None:
    """The floor to compare with: one thread, no model, no queue: decode each chunk and publish
    a `result` for it (same sockets and codecs as the node, none of its hops)."""
    import zmq

    from edge_stream.node import wire

    ctx = zmq.Context()
    sub, pub = ctx.socket(zmq.SUB), ctx.socket(zmq.XPUB)
    sub.subscribe(wire.topic_frame("mic"))
    sub.bind(ep_in)
    pub.bind(ep_out)
    print("relay ready", flush=True)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    seqs: dict = {}
    while True:
        msg = wire.decode_input(sub.recv_multipart(copy=False))
        seq = seqs[msg.stream] = seqs.get(msg.stream, -1) + 1
        header = {"v": 1, "stream": msg.stream, "pub_id": "relay", "seq": seq, "kind": "result",
                  "in_seq": msg.seq, "t_recv_ns": msg.t_recv_ns, "infer_ms": 0.0, "t_pub_ns": wire.now_ns()}
        pub.send_multipart(wire.encode_output(f"out/{msg.stream}", header, msg.data[:1]), copy=False)


def run(vad_dir: str, rate: float, chunks: int, streams: int, warmup: int, transport: str,
        baseline: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        if baseline:
            ep_in, ep_out = (f"tcp://127.0.0.1:{free_port()}" for _ in range(2))
            proc = subprocess.Popen([sys.executable, "-m", "edge_stream.bench.node", "--relay", ep_in, ep_out],
                                    stdout=subprocess.PIPE, text=True)
            proc.stdout.readline()
        else:
            proc, ep_in, ep_out = start_node_process(vad_dir, transport, Path(tmp))
        try:
            return _measure(ep_in, ep_out, rate, chunks, streams, warmup)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(10)


def _measure(ep_in, ep_out, rate, chunks, streams, warmup) -> dict:
    names = [f"s{i}" for i in range(streams)]
    sub = Subscriber([f"out/{n}" for n in names] + ["stats"], connect=[ep_out])
    pub = Publisher("mic", connect=[ep_in], sndhwm=100_000)
    total = warmup + chunks
    results: list[tuple[int, tuple, float]] = []  # (t_recv_ns, (stream, in_seq), infer_ms)
    node_stats: list[dict] = []  # the node's own 1 Hz latency split (queue, model, node)
    done = threading.Event()

    def receive():
        while len(results) < total and not done.is_set():
            rec = sub.recv(0.5)
            if rec is not None and rec.kind == "stats":
                node_stats.append(rec.header["latency_ms"])
            elif rec is not None and rec.kind == "result":
                h = rec.header
                results.append((rec.t_recv_ns, (h["stream"], h["in_seq"]), h["infer_ms"]))

    try:
        if not pub.wait_ready(10):
            raise SystemExit("node did not subscribe")
        time.sleep(0.5)  # the subscriber's subscription reaches the node
        sent: dict[tuple, int] = {}
        rx = threading.Thread(target=receive, daemon=True)
        rx.start()
        block = (np.random.default_rng(0).standard_normal(512) * 0.05).astype(np.float32)
        period = 1.0 / rate
        t0 = time.perf_counter()
        for i in range(total):
            delay = t0 + i * period - time.perf_counter()
            if delay > 0:
                time.sleep(delay)  # sleeping releases the GIL to the receiving thread; spinning would not
            name = names[i % streams]
            t_send = time.time_ns()
            seq = pub.send(block, stream=name, sr=16000)
            sent[(name, seq)] = t_send
        send_s = time.perf_counter() - t0
        rx.join(10)
        done.set()
    finally:
        pub.close()
        sub.close()
    rows = results[warmup:]
    overhead = np.array([(t - sent[key]) / 1e6 - infer for t, key, infer in rows])
    infer = np.array([r[2] for r in rows])
    return {"received": len(results), "sent": total, "achieved_rate": total / send_s,
            "overhead_ms": overhead, "infer_ms": infer, "node_stats": node_stats}


def summary(r: dict) -> dict:
    """A run's JSON-ready figures: overhead and model-run distributions in ms, delivery."""
    o, inf = r["overhead_ms"], r["infer_ms"]
    o50, o99 = percentiles(o, (50, 99))
    i50, i99 = percentiles(inf, (50, 99))
    return {"overhead_ms": {"p50": o50, "p99": o99, "max": float(o.max()) if len(o) else float("nan"),
                            "n": int(len(o))},
            "infer_ms": {"p50": i50, "p99": i99}, "sent": r["sent"], "received": r["received"],
            "achieved_rate": r["achieved_rate"]}


def scenario_node(cfg, rng) -> dict:
    """`edge-stream bench` scenario: the node's overhead at each of cfg.node_rates chunks/s over
    cfg.node_streams streams for cfg.node_seconds each, and the bare relay at the highest rate."""
    from edge_stream.bench.vad import ensure_vad

    vad_dir = str(cfg.vad_dir or ensure_vad(Path(cfg.cache_dir)))
    t_start = time.perf_counter()
    rates = {}
    for rate in cfg.node_rates:
        chunks = max(50, int(rate * cfg.node_seconds))
        r = summary(run(vad_dir, rate, chunks, cfg.node_streams, max(10, chunks // 10), "tcp"))
        rates[str(int(rate))] = r
        logging.getLogger(__name__).info("node at %d chunks/s: overhead p50 %.3f ms, p99 %.3f ms (%d/%d received)",
                                         rate, r["overhead_ms"]["p50"], r["overhead_ms"]["p99"], r["received"], r["sent"])
    top = max(cfg.node_rates)
    chunks = max(50, int(top * cfg.node_seconds))
    baseline = summary(run(vad_dir, top, chunks, cfg.node_streams, max(10, chunks // 10), "tcp", baseline=True))
    at = rates.get("1000") or rates[str(int(top))]
    ok = at["overhead_ms"]["p99"] <= 1.0 and at["received"] == at["sent"]
    return {"streams": cfg.node_streams, "seconds_per_rate": cfg.node_seconds, "transport": "tcp loopback",
            "model": vad_dir, "rates": rates, "baseline_relay": {"rate": top, **baseline},
            "goal": "overhead p99 <= 1 ms at 1000 chunks/s, nothing lost", "pass": ok,
            "seconds": time.perf_counter() - t_start}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vad-dir", default="models/silero-vad")
    p.add_argument("--rate", type=float, default=1000.0, help="chunks per second")
    p.add_argument("--chunks", type=int, default=5000)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--transport", choices=("tcp", "ipc"), default="tcp")
    p.add_argument("--baseline", action="store_true",
                   help="measure a bare one-thread Python relay instead of the node (the machine's floor)")
    p.add_argument("--relay", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.relay:
        relay(*args.relay)
        return 0
    r = run(args.vad_dir, args.rate, args.chunks, args.streams, args.warmup, args.transport, args.baseline)
    o, inf = r["overhead_ms"], r["infer_ms"]
    what = "bare relay (baseline)" if args.baseline else "node"
    print(f"{what}: {args.transport} loopback, {args.streams} streams, {r['achieved_rate']:.0f} chunks/s sent, "
          f"{r['received']}/{r['sent']} outputs received")
    i50, i99 = percentiles(inf, (50, 99))
    print(f"model run (infer_ms): p50 {i50:.3f}  p99 {i99:.3f}")
    p50, p99 = percentiles(o, (50, 99))
    print(f"{what} overhead ms over {len(o)} chunks: p50 {p50:.3f}  p99 {p99:.3f}  max {o.max():.3f}")
    for lat in r["node_stats"][1:-1]:  # whole seconds only
        print("  node-side 1 s window:", "  ".join(f"{k} p50 {v['p50']} p99 {v['p99']}" for k, v in lat.items()))
    ok = p50 <= 0.3 and p99 <= 1.0 and r["received"] == r["sent"]
    print("targets (p50 <= 0.3 ms, p99 <= 1 ms, nothing lost):", "met" if ok else "MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
