"""CLI commands of the node: `run`, `keys`, `replay`, `listen` (registered by edge_stream.cli.main)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time

import numpy as np

log = logging.getLogger(__name__)

SWITCH_INTERVAL_S = 0.0002
EXIT_THREAD_DIED = 3  # `run`: a node's loop or worker thread died; a supervisor should restart the process


def add_commands(subparsers) -> None:
    """Register the node's commands on the main parser's subparsers; each sets `func(args) -> int`."""
    p = subparsers.add_parser("run", help="start the nodes and proxies of a launch file (Ctrl-C stops)")
    p.add_argument("launch", help="launch file (TOML), e.g. launch/demo.toml")
    p.add_argument("--only", action="append", default=[], metavar="NAME",
                   help="start only this node or proxy (repeatable)")
    p.set_defaults(func=cmd_run)

    p = subparsers.add_parser("keys", help="generate a CURVE key pair (NAME.key public, NAME.key_secret)")
    p.add_argument("folder")
    p.add_argument("--name", default="node", help="file name stem (default: node)")
    p.set_defaults(func=cmd_keys)

    p = subparsers.add_parser("replay", help="publish a 16-bit PCM WAV file in real-time chunks")
    p.add_argument("wav")
    p.add_argument("--topic", required=True)
    p.add_argument("--stream", help="stream name (default: the topic)")
    p.add_argument("--connect", action="append", default=[], help="node or proxy input endpoint")
    p.add_argument("--bind", action="append", default=[])
    p.add_argument("--chunk-ms", type=float, default=32.0)
    p.add_argument("--speed", type=float, default=1.0, help="1 = real time, 0 = as fast as possible")
    p.add_argument("--wait", type=float, default=5.0, help="seconds to wait for a subscriber first")
    p.add_argument("--no-end", action="store_true", help="do not send an end message after the file")
    _curve_args(p)
    p.set_defaults(func=cmd_replay)

    p = subparsers.add_parser("listen", help="print node outputs live with their latency")
    p.add_argument("topics", nargs="+", help="output topics, e.g. out/mic1 errors stats")
    p.add_argument("--connect", action="append", default=[], help="node output or proxy backend endpoint")
    p.add_argument("--prefix", action="store_true", help="treat topics as prefixes (e.g. out/ for all streams)")
    p.add_argument("--count", type=int, default=0, help="exit after this many messages (0: never)")
    p.add_argument("--timeout", type=float, default=0.0, help="exit after this many idle seconds (0: never)")
    _curve_args(p)
    p.set_defaults(func=cmd_listen)


def _curve_args(p):
    p.add_argument("--secret-key", help="own CURVE .key_secret file")
    p.add_argument("--server-key", help="the node's/proxy's public CURVE .key file")


def _wait_for_signal(parts=()) -> int:
    """Block until SIGINT/SIGTERM (0), or until a thread of one of `parts` died (EXIT_THREAD_DIED)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return supervise(parts, stop)


def supervise(parts, stop: threading.Event, interval_s: float = 0.5) -> int:
    """Watch started nodes until `stop` is set (0) or a node's loop or worker thread has died
    (EXIT_THREAD_DIED, after a log line naming it): a process that is alive but serves nothing
    must exit, so that its supervisor (systemd, a container runtime) restarts it."""
    while not stop.wait(interval_s):  # a timed wait keeps signal delivery prompt on every platform
        for part in parts:
            dead = part.dead_threads() if hasattr(part, "dead_threads") else []
            if dead:
                log.error("node %s: thread(s) %s died; exiting with status %d so a supervisor restarts it",
                          part.cfg.name, ", ".join(dead), EXIT_THREAD_DIED)
                return EXIT_THREAD_DIED
    return 0


def cmd_run(args) -> int:
    from edge_stream.node.config import load_launch
    from edge_stream.node.node import Node
    from edge_stream.node.proxy import Proxy

    launch = load_launch(args.launch)
    only = set(args.only)
    # The loop and worker threads hand the GIL back and forth per chunk; the default 5 ms switch
    # interval lets one thread hold it for 5 ms while the other waits with a chunk in hand.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    started = []
    try:
        for cfg in launch.proxies:
            if not only or cfg.name in only:
                started.append(Proxy(cfg).start())
        for cfg in launch.nodes:
            if not only or cfg.name in only:
                node = Node(cfg)
                started.append(node.start())
                print(f"node {cfg.name}: ready {node.endpoints}", flush=True)
        for cfg in launch.gateways:
            if not only or cfg.name in only:
                started.append(start_gateway(args.launch, launch, cfg, in_process=only == {cfg.name}))
        if not started:
            print(f"{args.launch}: nothing matches --only {', '.join(sorted(only))}", file=sys.stderr)
            return 2
        status = _wait_for_signal(started)
    finally:
        for part in reversed(started):
            part.stop()
    print("stopped", flush=True)
    return status


def start_gateway(launch_path: str, launch, cfg, in_process: bool):
    """A [[gateway]]: in this process when `--only` names it alone, else as its own child process
    (`edge-stream run LAUNCH --only NAME`), so its event loop never shares a GIL with the nodes."""
    if not in_process:
        return GatewayProcess(launch_path, cfg).start()
    from edge_stream.node.gateway import gateway_for_launch

    gw = gateway_for_launch(cfg, launch.nodes).start()
    print(f"gateway {cfg.name}: ready {gw.url} (page {gw.page_url if cfg.page else 'off'})", flush=True)
    return gw


class GatewayProcess:
    """A gateway running as a child `edge-stream run --only NAME`: started when it says ready, its
    output passed through, SIGTERM to stop; `dead_threads` reports it when it exited on its own."""

    def __init__(self, launch_path: str, cfg, grace_s: float = 10.0):
        self.launch_path, self.cfg, self.grace_s = launch_path, cfg, grace_s
        self.proc = None

    def start(self) -> GatewayProcess:
        import subprocess

        self.proc = subprocess.Popen([sys.executable, "-m", "edge_stream.cli", "run", self.launch_path, "--only",
                                      self.cfg.name], stdout=subprocess.PIPE, text=True, bufsize=1)
        ready = threading.Event()

        def relay():  # the child's lines, passed on; its ready line releases start()
            for line in self.proc.stdout:
                print(line, end="", flush=True)
                if line.startswith(f"gateway {self.cfg.name}: ready"):
                    ready.set()
            ready.set()  # it exited: start() sees that below

        threading.Thread(target=relay, name=f"gateway-{self.cfg.name}-output", daemon=True).start()
        ready.wait(self.cfg.ready_timeout_s + 30.0)
        if self.proc.poll() is not None or not ready.is_set():
            self.stop()
            from edge_stream.errors import EdgeStreamError

            raise EdgeStreamError(f"gateway {self.cfg.name} did not start (exit {self.proc.returncode}); see its "
                                  f"output above")
        return self

    def stop(self) -> None:
        import subprocess

        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(self.grace_s)
        except subprocess.TimeoutExpired:
            log.warning("gateway %s did not stop within %.1f s; killing it", self.cfg.name, self.grace_s)
            self.proc.kill()
            self.proc.wait()

    def dead_threads(self) -> list[str]:
        return [f"process {self.proc.pid}"] if self.proc is not None and self.proc.poll() is not None else []


def cmd_keys(args) -> int:
    from edge_stream.node.security import generate_keys

    public, secret = generate_keys(args.folder, args.name)
    print(f"public key: {public}  (copy into the allowed_clients folder of the other side)")
    print(f"secret key: {secret}  (keep private)")
    return 0


def cmd_replay(args) -> int:
    from edge_stream.audio import read_wav
    from edge_stream.node.client import Publisher

    samples, sr = read_wav(args.wav)
    chunk = max(1, int(sr * args.chunk_ms / 1000))
    pub = Publisher(args.topic, connect=args.connect, bind=args.bind, secret_key=args.secret_key,
                    server_key=args.server_key)
    try:
        if not pub.wait_ready(args.wait):
            print(f"no subscriber on topic {args.topic!r} after {args.wait} s; sending anyway", file=sys.stderr)
        t0 = time.monotonic()
        for i, start in enumerate(range(0, len(samples), chunk)):
            if args.speed > 0:  # real time: chunk i leaves when its last sample would have been captured
                delay = t0 + (start + chunk) / sr / args.speed - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            pub.send(samples[start:start + chunk], stream=args.stream, sr=sr)
        if not args.no_end:
            pub.end(stream=args.stream)
        time.sleep(0.2)  # LINGER is 0: give the last frames a moment on the wire
        print(f"sent {i + 1} chunks of {chunk} samples ({len(samples) / sr:.2f} s) on {args.topic!r}")
    finally:
        pub.close()
    return 0


def format_output(rec) -> str:
    h = rec.header
    skip = {"v", "pub_id", "node", "t_pub_ns", "t_recv_ns", "t_capture_ns", "in_pub_id", "dtype", "shape",
            "stream", "kind", "seq"}
    fields = " ".join(f"{k}={h[k]!r}" for k in h if k not in skip and not isinstance(h[k], (dict, list)))
    data = ""
    if rec.data is not None:
        d = rec.data
        data = f" data={d.dtype}{list(d.shape)}" + (f" {np.round(d.ravel()[:4], 3).tolist()}" if d.size else "")
    flags = (" GAP" if rec.gap else "") + (" STALE" if rec.stale else "")
    return f"{rec.msg.topic:<16} {rec.kind:<7} seq={h.get('seq')} age={rec.age_ms:7.2f}ms {fields}{data}{flags}"


def cmd_listen(args) -> int:
    from edge_stream.node.client import Subscriber

    sub = Subscriber(args.topics, connect=args.connect, prefix=args.prefix, secret_key=args.secret_key,
                     server_key=args.server_key)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    n = 0
    idle_since = time.monotonic()
    try:
        while not stop.is_set():
            rec = sub.recv(0.2)
            if rec is None:
                if args.timeout and time.monotonic() - idle_since > args.timeout:
                    break
                continue
            idle_since = time.monotonic()
            print(format_output(rec), flush=True)
            n += 1
            if args.count and n >= args.count:
                break
    finally:
        sub.close()
    return 0


def main(argv=None) -> int:
    """Stand-alone entry (`python -m edge_stream.cli.node`) until edge_stream.cli.main registers these."""
    parser = argparse.ArgumentParser(prog="edge-stream")
    sub = parser.add_subparsers(dest="command", required=True)
    add_commands(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
