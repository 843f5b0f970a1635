"""`edge-stream voice-demo`: the three-node voice pipeline on committed WAVs (or a live microphone).

Starts the VAD, recognizer and parser nodes of launch/voice_commands.toml as separate
processes (`edge-stream run LAUNCH --only NAME`), plays held-out-voice WAVs
(tests/data/commands) into the VAD in real time with silence between them, and prints
each command field and command while the audio is still playing, then a summary with
the latency from the true end of speech (known from the WAVs' word timings). With
`--mic`, audio comes from the default sound device (`arecord`, or the `sounddevice`
package) until Ctrl-C. `run_pipeline` is also what `edge-stream voice-report` measures.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_stream.errors import ConfigError, EdgeStreamError

log = logging.getLogger(__name__)

DEFAULT_LAUNCH = "launch/voice_commands.toml"
DEFAULT_WAVS = "tests/data/commands"
SAMPLE_RATE = 16000
MIC_TOPIC, MIC_STREAM = "mic", "mic1"


def add_commands(subparsers) -> None:
    """Register voice-demo, voice-controller and voice-report (registered by edge_stream.cli.main)."""
    p = subparsers.add_parser("voice-demo", help="VAD -> recognizer -> parser nodes on committed WAVs "
                                                 "(or --mic), printing commands as they arrive")
    p.add_argument("wavs", nargs="*", help=f"16 kHz mono WAVs (default: {DEFAULT_WAVS}/*.wav)")
    p.add_argument("--launch", default=DEFAULT_LAUNCH)
    p.add_argument("--gap-s", type=float, default=1.0, help="silence between WAVs, seconds")
    p.add_argument("--chunk-ms", type=float, default=32.0)
    p.add_argument("--mic", action="store_true", help="live microphone instead of WAVs (arecord or sounddevice)")
    p.set_defaults(func=cmd_voice_demo)

    p = subparsers.add_parser("voice-controller", help="print commands from the parser node as they arrive")
    p.add_argument("--connect", action="append", default=[], help="parser node output (default tcp://127.0.0.1:5581)")
    p.add_argument("--count", type=int, default=0, help="exit after this many commands (0: never)")
    p.add_argument("--timeout", type=float, default=0.0, help="exit after this many idle seconds (0: never)")
    p.set_defaults(func=cmd_voice_controller)

    p = subparsers.add_parser("voice-report", help="accuracy and latency of the voice pipeline, streaming vs batch")
    from edge_stream.cli.voice_report import add_arguments, run

    add_arguments(p)
    p.set_defaults(func=run)


# ----- the node processes -------------------------------------------------------------------------


def _local(endpoint: str) -> str:
    """A bind endpoint as a local client connects to it."""
    return endpoint.replace("://*:", "://127.0.0.1:").replace("://0.0.0.0:", "://127.0.0.1:")


@dataclass
class Topology:
    """Where the pipeline starts and ends: the source node's input and the sink node's output."""

    nodes: tuple[str, ...]
    source_input: str
    sink_output: str

    @classmethod
    def from_launch(cls, launch: str | Path, nodes=("vad", "recognizer", "parser")) -> "Topology":
        from edge_stream.node.config import load_launch

        cfgs = {n.name: n for n in load_launch(launch).nodes}
        missing = [n for n in nodes if n not in cfgs]
        if missing:
            raise ConfigError(f"{launch}: no [[node]] named {', '.join(missing)}; it has {', '.join(cfgs)}")
        src, sink = cfgs[nodes[0]], cfgs[nodes[-1]]
        if not src.input.bind or not sink.output.bind:
            raise ConfigError(f"{launch}: node {nodes[0]!r} must bind its input and {nodes[-1]!r} its output")
        return cls(tuple(nodes), _local(src.input.bind[0]), _local(sink.output.bind[0]))


class NodeProcesses:
    """The pipeline's nodes, one `edge-stream run LAUNCH --only NAME` process each.

    `start()` returns when every node said it is ready; `stop()` sends SIGTERM (the node's own
    clean shutdown) and kills what has not exited after `grace_s`. Node logs go to a temp folder
    and are shown if a node fails to start."""

    def __init__(self, launch: str | Path, nodes, ready_timeout_s: float = 60.0, grace_s: float = 5.0):
        self.launch, self.nodes = str(launch), tuple(nodes)
        self.ready_timeout_s, self.grace_s = ready_timeout_s, grace_s
        self.procs: dict[str, subprocess.Popen] = {}
        self.log_dir = Path(tempfile.mkdtemp(prefix="edge-stream-voice-"))

    def start(self) -> "NodeProcesses":
        try:
            for name in self.nodes:
                log_file = open(self.log_dir / f"{name}.log", "wb")
                self.procs[name] = subprocess.Popen(
                    [sys.executable, "-m", "edge_stream.cli.main", "run", self.launch, "--only", name],
                    stdout=subprocess.PIPE, stderr=log_file, env={**os.environ, "PYTHONUNBUFFERED": "1"})
                log_file.close()  # the child holds its own descriptor
            for name, proc in self.procs.items():  # loading models runs in parallel; wait for each
                self._wait_ready(name, proc)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, name: str, proc: subprocess.Popen) -> None:
        box: list[bytes] = []
        reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(self.ready_timeout_s)
        line = box[0].decode(errors="replace") if box else ""
        if f"node {name}: ready" not in line:
            self.stop()
            tail = (self.log_dir / f"{name}.log").read_text(errors="replace")[-2000:]
            raise EdgeStreamError(f"node {name!r} did not start (exit {proc.poll()}); its log:\n{tail}")
        log.debug("%s", line.strip())

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        for name, proc in self.procs.items():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("node %s did not stop within %.1f s; killing it", name, self.grace_s)
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        self.procs.clear()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# ----- audio --------------------------------------------------------------------------------------


@dataclass
class Utterance:
    """One utterance placed in the played audio: its samples [offset, offset + n)."""

    name: str
    text: str
    offset: int
    n_samples: int
    speech_end: int  # sample (in the utterance) where its last word ends
    expected: str | None = None  # the command it means, when known

    def end_ns(self, t0_ns: int, sr: int = SAMPLE_RATE) -> int:
        """Wall clock of the end of speech, for audio whose sample 0 was captured at t0_ns."""
        return t0_ns + (self.offset + self.speech_end) * 1_000_000_000 // sr


@dataclass
class Playlist:
    audio: np.ndarray  # [n] float32
    utterances: list[Utterance] = field(default_factory=list)

    @classmethod
    def build(cls, clips, gap_s: float, sr: int = SAMPLE_RATE) -> "Playlist":
        """`clips`: (name, text, samples float32, speech_end_sample, expected command) in play order."""
        gap = np.zeros(int(gap_s * sr), np.float32)
        parts, utts, offset = [gap], [], len(gap)
        for name, text, samples, speech_end, expected in clips:
            utts.append(Utterance(name, text, offset, len(samples), speech_end, expected))
            parts += [samples, gap]
            offset += len(samples) + len(gap)
        return cls(np.concatenate(parts), utts)

    def owner(self, t_ns: int, t0_ns: int, sr: int = SAMPLE_RATE) -> Utterance | None:
        """The utterance a time belongs to: the last one that started before it."""
        sample = (t_ns - t0_ns) * sr // 1_000_000_000
        owners = [u for u in self.utterances if u.offset <= sample]
        return owners[-1] if owners else None


def expected_command(text: str) -> str | None:
    """The command a transcript means (export.command_data's rule-based Teacher), if available."""
    try:
        from export.command_data import Teacher
    except ImportError:  # a runtime-only install without the export recipes
        return None
    t = Teacher()
    for w in text.split():
        t.push(w)
    t.end()
    return t.out.text()


def committed_clips(folder: str | Path = DEFAULT_WAVS, names=None) -> list:
    """The committed held-out-voice WAVs with their transcripts and word timings."""
    from edge_stream.audio import read_wav

    folder = Path(folder)
    meta = json.loads((folder / "transcripts.json").read_text())
    clips = []
    for u in meta["utterances"]:
        if names and u["file"] not in names:
            continue
        pcm, sr = read_wav(folder / u["file"])
        if sr != SAMPLE_RATE:
            raise ConfigError(f"{u['file']}: sample rate {sr}, expected {SAMPLE_RATE}")
        clips.append((u["file"], u["text"], pcm.astype(np.float32) / 32768.0, u["words"][-1]["end_sample"],
                      expected_command(u["text"])))
    return clips


def wav_clips(paths) -> list:
    """Any 16 kHz mono WAVs (no transcript: the end of speech is taken as the end of the file)."""
    from edge_stream.audio import read_wav

    clips = []
    for p in paths:
        pcm, sr = read_wav(p)
        if sr != SAMPLE_RATE:
            raise ConfigError(f"{p}: sample rate {sr}, expected {SAMPLE_RATE} (resample it first)")
        clips.append((Path(p).name, "", pcm.astype(np.float32) / 32768.0, len(pcm), None))
    return clips


def replay(audio: np.ndarray, connect: str, chunk_ms: float = 32.0, on_start=None, stop=None) -> int:
    """Publish `audio` in real time on the mic topic; returns the wall clock (ns) of sample 0.

    Chunk i leaves when its last sample would have been captured, stamped t_capture_ns = now."""
    from edge_stream.node.client import Publisher

    pub = Publisher(MIC_TOPIC, connect=[connect])
    try:
        if not pub.wait_ready(10.0):
            raise EdgeStreamError(f"the VAD node at {connect} never subscribed to topic {MIC_TOPIC!r}")
        chunk = int(SAMPLE_RATE * chunk_ms / 1000)
        t0, t0_ns = time.monotonic(), time.time_ns()
        if on_start is not None:
            on_start(t0_ns)
        for start in range(0, len(audio), chunk):
            if stop is not None and stop.is_set():
                break
            delay = t0 + (start + chunk) / SAMPLE_RATE - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pub.send(audio[start:start + chunk], stream=MIC_STREAM, sr=SAMPLE_RATE)
        pub.end(stream=MIC_STREAM)
        time.sleep(0.1)  # LINGER is 0: let the last frames leave
        return t0_ns
    finally:
        pub.close()


def run_pipeline(launch: str | Path, playlist: Playlist, chunk_ms: float = 32.0, on_line=None,
                 settle_s: float = 3.0, nodes=("vad", "recognizer", "parser")) -> tuple[list, int]:
    """Start the nodes, play `playlist` in real time, collect the commands; stop the nodes.

    Returns (CommandRecords, wall clock ns of sample 0). `on_line(str)` gets the controller's lines
    and a line per utterance as it starts playing."""
    from edge_stream.cli.controller import run_controller

    topo = Topology.from_launch(launch, nodes)
    records: list = []
    with NodeProcesses(launch, topo.nodes):
        stop = threading.Event()
        ctl = threading.Thread(target=lambda: records.extend(
            run_controller([topo.sink_output], stop=stop, on_line=on_line or (lambda s: None))), daemon=True)
        ctl.start()
        time.sleep(0.5)  # the controller's and the nodes' own subscriptions travel up the chain
        t0_box: list[int] = []
        started = threading.Event()
        if on_line is not None:
            threading.Thread(target=_announce, args=(playlist, t0_box, started, on_line, stop), daemon=True).start()
        t0_ns = replay(playlist.audio, topo.source_input, chunk_ms,
                       on_start=lambda t: (t0_box.append(t), started.set()))
        time.sleep(settle_s)  # the last segment's end, decode and parse
        stop.set()
        ctl.join(5.0)
    return records, t0_ns


def _announce(playlist: Playlist, t0_box: list, started, on_line, stop) -> None:
    """A line per utterance as it starts playing."""
    if not started.wait(30.0):
        return
    t0_ns = t0_box[0]
    for u in playlist.utterances:
        wait = (t0_ns + u.offset * 1_000_000_000 // SAMPLE_RATE - time.time_ns()) / 1e9
        if stop.wait(max(0.0, wait)):
            return
        said = f" says {u.text!r}" if u.text else ""
        on_line(f"-- playing {u.name}{said}" + (f" (means {u.expected!r})" if u.expected else ""))


def match(records: list, playlist: Playlist, t0_ns: int) -> dict:
    """utterance name -> the CommandRecords of the segments that began while it played, in order."""
    out: dict[str, list] = {u.name: [] for u in playlist.utterances}
    for r in records:
        t = r.t_speech_end_ns or r.t_done_pub_ns
        u = playlist.owner(t, t0_ns)
        if u is not None:
            out[u.name].append(r)
    return out


# ----- commands -----------------------------------------------------------------------------------


def cmd_voice_controller(args) -> int:
    from edge_stream.cli.controller import run_controller

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    run_controller(args.connect or ["tcp://127.0.0.1:5581"], count=args.count, timeout=args.timeout, stop=stop,
                   on_line=lambda s: print(s, flush=True))
    return 0


def cmd_voice_demo(args) -> int:
    if args.mic:
        return _live(args)
    clips = wav_clips(args.wavs) if args.wavs else committed_clips()
    playlist = Playlist.build(clips, args.gap_s)
    print(f"voice demo: {len(clips)} WAVs, {len(playlist.audio) / SAMPLE_RATE:.1f} s of audio in real time; "
          f"starting the nodes of {args.launch}", flush=True)
    records, t0_ns = run_pipeline(args.launch, playlist, args.chunk_ms, on_line=lambda s: print(s, flush=True))
    print("\nsummary (latency from the end of the last word, from the WAVs' word timings):")
    print(f"{'file':<14} {'said':<30} {'command':<22} {'known ms':>9} {'done ms':>8}")
    ok = 0
    for u in playlist.utterances:
        recs = [r for r in match(records, playlist, t0_ns)[u.name] if r.command]
        r = recs[-1] if recs else None
        end = u.end_ns(t0_ns)
        known = f"{(r.t_known_pub_ns - end) / 1e6:+9.0f}" if r and r.t_known_pub_ns else f"{'-':>9}"
        done = f"{(r.t_done_pub_ns - end) / 1e6:+8.0f}" if r else f"{'-':>8}"
        mark = "" if u.expected is None else ("  ok" if r and r.command == u.expected else f"  expected {u.expected!r}")
        ok += bool(r and r.command == u.expected)
        print(f"{u.name:<14} {u.text[:30]:<30} {(r.command if r else '(none)'):<22} {known} {done}{mark}")
    if any(u.expected for u in playlist.utterances):
        print(f"{ok}/{len(playlist.utterances)} commands as meant")
    return 0


def _live(args) -> int:
    """Microphone -> pipeline until Ctrl-C: arecord (ALSA) if present, else the sounddevice package."""
    from edge_stream.cli.controller import run_controller
    from edge_stream.node.client import Publisher

    topo = Topology.from_launch(args.launch)
    chunk = int(SAMPLE_RATE * args.chunk_ms / 1000)
    if shutil.which("arecord"):
        source = subprocess.Popen(["arecord", "-q", "-t", "raw", "-f", "S16_LE", "-c", "1", "-r", str(SAMPLE_RATE)],
                                  stdout=subprocess.PIPE)
        read = lambda: np.frombuffer(source.stdout.read(2 * chunk), dtype="<i2")  # noqa: E731
        close = source.terminate
    else:
        try:
            import sounddevice
        except ImportError:
            raise ConfigError("--mic needs a sound device: install alsa-utils (arecord) or the sounddevice "
                              "package") from None
        stream = sounddevice.InputStream(samplerate=SAMPLE_RATE, channels=1, dtype="int16", blocksize=chunk)
        stream.start()
        read = lambda: stream.read(chunk)[0][:, 0]  # noqa: E731
        close = stream.close
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with NodeProcesses(args.launch, topo.nodes):
        ctl = threading.Thread(target=run_controller, args=([topo.sink_output],),
                               kwargs={"stop": stop, "on_line": lambda s: print(s, flush=True)}, daemon=True)
        ctl.start()
        pub = Publisher(MIC_TOPIC, connect=[topo.source_input])
        pub.wait_ready(10.0)
        print("listening: speak a command (Ctrl-C stops)", flush=True)
        try:
            while not stop.is_set():
                pcm = read()
                if not len(pcm):
                    break
                pub.send(pcm, stream=MIC_STREAM, sr=SAMPLE_RATE)
        finally:
            close()
            pub.close()
            stop.set()
            ctl.join(2.0)
    return 0
