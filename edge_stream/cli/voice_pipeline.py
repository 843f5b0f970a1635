"""The three-node voice pipeline as processes, and audio played into it in real time.

Shared by `edge-stream voice-demo` (cli/voice_demo.py) and `edge-stream voice-report`
(cli/voice_report.py): `NodeProcesses` starts the VAD, recognizer and parser nodes of a
launch file (`edge-stream run LAUNCH --only NAME` each), `Playlist` lays utterances out in one
audio track, `replay` publishes it at real-time pace and `run_pipeline` collects the parser
node's commands; `match` assigns each command to the utterance that was playing.
"""

from __future__ import annotations

import json
import logging
import os
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

DEFAULT_WAVS = "tests/data/commands"
SAMPLE_RATE = 16000
MIC_TOPIC, MIC_STREAM = "mic", "mic1"


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
                    [sys.executable, "-m", "edge_stream.cli", "run", self.launch, "--only", name],
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


def expected_command(text: str) -> str:
    """The command a transcript means by the grammar's rules (edge_stream.voice.grammar): the
    reference a pipeline's output is scored against ('' when the words name no command)."""
    from edge_stream.voice.grammar import command_of

    return command_of(text.split()).text()


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
