"""Node overhead benchmark: chunk published -> first output received, minus the model's own run time.

    python -m edge_stream.bench.node --vad-dir models/silero-vad [--rate 1000] [--chunks 5000] [--streams 4]

The node runs in its own process (`edge-stream run` on a generated launch
file). A Publisher sends 512-sample VAD chunks (one model block each) at
`--rate` chunks/s over loopback, spread over `--streams` streams; a
Subscriber in another thread records arrival times. Overhead per chunk =
(receive time - send time) - infer_ms reported by the node, so
it holds both sockets, both msgpack codecs and whatever the node does around
the model run.

The same run measures the floor too: a bare one-thread Python relay (same
sockets and codecs, no model, no hops); relay and node take turns for
`--rounds` rounds (default 3, the first alternating), so a change in the
machine's load reaches both alike, and each side's samples are pooled. Printed for both:
overhead p50/p99/max in ms and CPU time of the process per chunk (all its
threads, ZeroMQ's I/O thread included; Linux /proc); then the node/relay
ratios. Targets (issue 14 §5): node p50 <= 1.1x and p99 <= 1.3x the relay's,
and every chunk's output received by both, with no seq gap; exits 1 when one
is missed. `--baseline` measures the relay alone, `--no-relay` the node alone.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from edge_stream.bench.common import free_port, run_node_process, write_one_model_launch
from edge_stream.node.client import Publisher, Subscriber
from edge_stream.stats import percentiles


def start_node_process(vad_dir: str, transport: str, folder: Path) -> tuple[subprocess.Popen, str, str]:
    """The node in its own process (as on a robot): the benchmark's threads must not share its GIL."""
    if transport == "tcp":
        ep_in, ep_out = (f"tcp://127.0.0.1:{free_port()}" for _ in range(2))
    else:
        ep_in, ep_out = f"ipc://{folder}/in", f"ipc://{folder}/out"
    launch = write_one_model_launch(folder / "bench.toml", "bench", ep_in, ep_out, "vad", vad_dir, ["mic"])
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


def process_cpu_ns(pid: int) -> int | None:
    """CPU time a process's threads have run so far, ns (the sum of /proc/PID/task/*/schedstat: user
    and kernel time, ZeroMQ's I/O threads included); None where /proc has no schedstat."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):  # a thread that ended meanwhile
            continue
    return total


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
            return _measure(ep_in, ep_out, rate, chunks, streams, warmup, cpu=lambda: process_cpu_ns(proc.pid))
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(10)


def _measure(ep_in, ep_out, rate, chunks, streams, warmup, cpu=lambda: None) -> dict:
    names = [f"s{i}" for i in range(streams)]
    sub = Subscriber([f"out/{n}" for n in names] + ["stats"], connect=[ep_out])
    pub = Publisher("mic", connect=[ep_in], sndhwm=100_000)
    total = warmup + chunks
    results: list[tuple[int, tuple, float]] = []  # (t_recv_ns, (stream, in_seq), infer_ms)
    node_stats: list[dict] = []  # the node's own 1 Hz latency split (queue, model, node)
    counts: dict = {}  # the node's counters as of its last stats message
    done = threading.Event()

    def receive():
        while len(results) < total and not done.is_set():
            rec = sub.recv(0.5)
            if rec is not None and rec.kind == "stats":
                node_stats.append(rec.header["latency_ms"])
                counts.update({k: rec.header.get(k) for k in ("chunks_in", "batched", "ran_on_loop")})
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
        cpu0 = cpu()
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
        cpu1 = cpu()
        lost = sub.gaps  # outputs whose seq was skipped: lost between the node and this subscriber
    finally:
        pub.close()
        sub.close()
    rows = results[warmup:]
    overhead = np.array([(t - sent[key]) / 1e6 - infer for t, key, infer in rows])
    infer = np.array([r[2] for r in rows])
    # Every chunk's `result`, each once: a count alone would pass with one output twice and another lost.
    answered = {key for _, key, _ in results} & set(sent)
    cpu_us = (cpu1 - cpu0) / 1e3 / total if cpu0 is not None and cpu1 is not None else None
    return {"received": len(answered), "sent": total, "lost": lost, "achieved_rate": total / send_s,
            "overhead_ms": overhead, "infer_ms": infer, "node_stats": node_stats, "node_counts": counts,
            "cpu_us_per_chunk": cpu_us}


def summary(r: dict) -> dict:
    """A run's JSON-ready figures: overhead and model-run distributions in ms, delivery."""
    o, inf = r["overhead_ms"], r["infer_ms"]
    o50, o99 = percentiles(o, (50, 99))
    i50, i99 = percentiles(inf, (50, 99))
    return {"overhead_ms": {"p50": o50, "p99": o99, "max": float(o.max()) if len(o) else float("nan"),
                            "n": int(len(o))},
            "infer_ms": {"p50": i50, "p99": i99}, "sent": r["sent"], "received": r["received"],
            "lost": r["lost"], "achieved_rate": r["achieved_rate"], "cpu_us_per_chunk": r["cpu_us_per_chunk"]}


P50_RATIO, P99_RATIO = 1.1, 1.3  # node overhead / relay overhead, same run (issue 14 §5)


def compare(node: dict, relay: dict) -> dict:
    """Node against the relay of the same run: overhead ratios, CPU per chunk, and whether the targets
    hold (p50 <= 1.1x, p99 <= 1.3x, every output received by both, no seq gap)."""
    ratio = {q: node["overhead_ms"][q] / relay["overhead_ms"][q] for q in ("p50", "p99")}
    complete = all(r["received"] == r["sent"] and r["lost"] == 0 for r in (node, relay))
    return {"overhead_ratio": ratio, "cpu_us_per_chunk": {"node": node["cpu_us_per_chunk"],
                                                          "relay": relay["cpu_us_per_chunk"]},
            "goal": f"node overhead p50 <= {P50_RATIO}x, p99 <= {P99_RATIO}x the relay's, nothing lost",
            "pass": complete and ratio["p50"] <= P50_RATIO and ratio["p99"] <= P99_RATIO}


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
    vs = compare(at, baseline)
    return {"streams": cfg.node_streams, "seconds_per_rate": cfg.node_seconds, "transport": "tcp loopback",
            "model": vad_dir, "rates": rates, "baseline_relay": {"rate": top, **baseline},
            "vs_relay": vs, "goal": vs["goal"], "pass": vs["pass"], "seconds": time.perf_counter() - t_start}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vad-dir", default="models/silero-vad")
    p.add_argument("--rate", type=float, default=1000.0, help="chunks per second")
    p.add_argument("--chunks", type=int, default=5000)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--transport", choices=("tcp", "ipc"), default="tcp")
    p.add_argument("--rounds", type=int, default=3,
                   help="relay and node take turns this many times (--chunks and --warmup split between "
                        "the rounds, samples pooled), so a change in the machine's load hits both alike")
    side = p.add_mutually_exclusive_group()
    side.add_argument("--baseline", action="store_true",
                      help="measure only the bare one-thread Python relay (the machine's floor)")
    side.add_argument("--no-relay", action="store_true", help="measure only the node (no ratios)")
    p.add_argument("--relay", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.relay:
        relay(*args.relay)
        return 0
    sides = [what for what in ("relay", "node")
             if not (what == "relay" and args.no_relay) and not (what == "node" and args.baseline)]
    rounds = max(1, args.rounds)
    runs: dict[str, list[dict]] = {what: [] for what in sides}
    for k in range(rounds):
        for what in sides if k % 2 == 0 else sides[::-1]:  # who goes first alternates
            runs[what].append(run(args.vad_dir, args.rate, max(1, args.chunks // rounds), args.streams,
                                  args.warmup // rounds, args.transport, baseline=what == "relay"))
    results = {}
    for what in sides:
        r = pooled(runs[what])
        results[what] = summary(r)
        _print_run("bare relay" if what == "relay" else "node", r, args)
    ok = all(r["received"] == r["sent"] and r["lost"] == 0 for r in results.values())
    if len(results) == 2:
        vs = compare(results["node"], results["relay"])
        q, cpu = vs["overhead_ratio"], vs["cpu_us_per_chunk"]
        cpu_line = (f"; CPU per chunk node {cpu['node']:.0f} us, relay {cpu['relay']:.0f} us "
                    f"({cpu['node'] / cpu['relay']:.2f}x)" if None not in cpu.values() else "")
        print(f"node/relay overhead: p50 {q['p50']:.2f}x  p99 {q['p99']:.2f}x{cpu_line}")
        print(f"targets ({vs['goal']}):", "met" if vs["pass"] else "MISSED")
        ok = vs["pass"]
    else:
        print("targets (every output received, no seq gap):", "met" if ok else "MISSED")
    return 0 if ok else 1


def pooled(runs: list[dict]) -> dict:
    """Several `run`s of one side as one: samples concatenated, counts summed, CPU per chunk averaged
    over all chunks sent."""
    if len(runs) == 1:
        return runs[0]
    sent = sum(r["sent"] for r in runs)
    cpus = [r["cpu_us_per_chunk"] for r in runs]
    counts: dict = {}
    for r in runs:
        for k, v in r["node_counts"].items():
            counts[k] = counts.get(k, 0) + (v or 0)
    return {"received": sum(r["received"] for r in runs), "sent": sent, "lost": sum(r["lost"] for r in runs),
            "achieved_rate": sent / sum(r["sent"] / r["achieved_rate"] for r in runs),
            "overhead_ms": np.concatenate([r["overhead_ms"] for r in runs]),
            "infer_ms": np.concatenate([r["infer_ms"] for r in runs]),
            "node_stats": [s for r in runs for s in r["node_stats"]], "node_counts": counts,
            "cpu_us_per_chunk": None if None in cpus else sum(c * r["sent"] for c, r in zip(cpus, runs)) / sent}


def _print_run(what: str, r: dict, args) -> None:
    o, inf = r["overhead_ms"], r["infer_ms"]
    print(f"{what}: {args.transport} loopback, {args.streams} streams, {r['achieved_rate']:.0f} chunks/s sent "
          f"({args.rounds} rounds), "
          f"{r['received']}/{r['sent']} chunks answered, {r['lost']} outputs lost (seq gaps)")
    i50, i99 = percentiles(inf, (50, 99))
    p50, p99 = percentiles(o, (50, 99))
    cpu = f", CPU {r['cpu_us_per_chunk']:.0f} us/chunk" if r["cpu_us_per_chunk"] is not None else ""
    print(f"  overhead ms over {len(o)} chunks: p50 {p50:.3f}  p99 {p99:.3f}  max {o.max():.3f}{cpu}; "
          f"model run (infer_ms) p50 {i50:.3f}  p99 {i99:.3f}")
    c = r["node_counts"]
    if c.get("chunks_in"):
        print(f"  node stats: {c['chunks_in']} chunks in, {c.get('ran_on_loop')} run on its socket loop, "
              f"{c['batched']} in batched runs (the last 1 Hz stats message of each round)")
    for lat in r["node_stats"][1:-1]:  # whole seconds only
        print("  node-side 1 s window:", "  ".join(f"{k} p50 {v['p50']} p99 {v['p99']}" for k, v in lat.items()))


if __name__ == "__main__":
    sys.exit(main())
