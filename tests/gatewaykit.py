"""Helpers for gateway tests: the three voice nodes in-process on loopback, a gateway in front of
them, and a small synchronous WebSocket client that collects events until the one it waits for."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import numpy as np
from websockets.sync.client import connect

from edge_stream.audio import read_wav
from edge_stream.node.config import GatewayConfig
from edge_stream.node.gateway import Chain, Gateway
from edge_stream.node.node import Node, make_node_config

ROOT = Path(__file__).resolve().parent.parent
WAVS = ROOT / "tests" / "data" / "commands"
SR = 16000
VAD_OPTIONS = {"threshold": 0.5, "min_silence_ms": 300.0, "speech_pad_ms": 100.0}  # as launch/voice_web.toml


def wav_pcm16(name: str) -> np.ndarray:
    pcm, sr = read_wav(WAVS / name)
    assert sr == SR
    return pcm.astype("<i2")  # [n]


def utterance(name: str = "command_1.wav", silence_s: float = 1.0) -> bytes:
    """A committed WAV and `silence_s` of silence after it (the VAD ends the segment in it), as PCM16 bytes."""
    return np.concatenate([wav_pcm16(name), np.zeros(int(silence_s * SR), "<i2")]).tobytes()


class VoiceNodes:
    """VAD -> recognizer -> parser as three Node objects on loopback tcp (real ZeroMQ sockets)."""

    def __init__(self):
        self.nodes: dict[str, Node] = {}
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self):
        any_port = {"bind": ["tcp://127.0.0.1:*"]}
        vad = self._add(make_node_config(
            name="vad", input=any_port, output=any_port, control=any_port,
            models=[{"name": "vad", "dir": str(ROOT / "models" / "silero-vad"), "topics": ["mic"],
                     "forward_topic": "speech", "stream_options": dict(VAD_OPTIONS)}]))
        rec = self._add(make_node_config(
            name="recognizer", input={"connect": vad.endpoints["output"]}, output=any_port, control=any_port,
            models=[{"name": "recognizer", "dir": str(ROOT / "models" / "command-recognizer"), "topics": ["speech"],
                     "forward_topic": "words"}]))
        self._add(make_node_config(
            name="parser", input={"connect": rec.endpoints["output"]}, output=any_port, control=any_port,
            output_topic="commands/{stream}",
            # min_confidence 0.3: these tests are of the gateway's translation, not of the models' confidence
            # on resampled audio (command_1.wav at 24 kHz came out at 0.4997 against the default 0.5).
            models=[{"name": "parser", "dir": str(ROOT / "models" / "command-parser"), "topics": ["words"],
                     "policy": "command_parser", "stream_options": {"min_confidence": 0.3}}]))
        assert vad.wait_output_subscribed("speech") and rec.wait_output_subscribed("words"), "chain not subscribed"

    def _add(self, cfg) -> Node:
        node = self.nodes[cfg.name] = Node(cfg).start()
        return node

    def gateway(self, more_nodes=(), **options) -> Gateway:
        """A gateway (any free port) in front of these nodes and `more_nodes` (e.g. an LM node)."""
        cfg = GatewayConfig(name="web", listen="127.0.0.1:0", vad="vad", recognizer="recognizer", parser="parser",
                            **options)
        nodes = {**self.nodes, **{n.cfg.name: n for n in more_nodes}}
        return Gateway(cfg, Chain.resolve(cfg, {n: (node.cfg, node.endpoints) for n, node in nodes.items()}))

    def stop(self):
        for node in reversed(list(self.nodes.values())):
            node.stop()


class Client:
    """A plain `websockets` client of the gateway: events in order, waits bounded and loud."""

    def __init__(self, url: str, **connect_kw):
        self.ws = connect(url, max_size=None, legacy=True, **connect_kw)
        self.events: list[dict] = []
        self.created = self.wait_for("session.created")

    def send(self, event: dict) -> None:
        self.ws.send(json.dumps(event))

    def append(self, pcm: bytes, chunk_bytes: int = 3200) -> None:
        """`input_audio_buffer.append` events of `chunk_bytes` (base64 PCM16)."""
        for i in range(0, len(pcm), chunk_bytes):
            self.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm[i:i + chunk_bytes]).decode()})

    def binary(self, pcm: bytes, chunk_bytes: int = 3200) -> None:
        """The same audio as raw binary frames."""
        for i in range(0, len(pcm), chunk_bytes):
            self.ws.send(pcm[i:i + chunk_bytes])

    def wait_for(self, kind: str, timeout: float = 15.0, where=lambda e: True) -> dict:
        """The next event of type `kind` satisfying `where`; every event received meanwhile is kept in
        `events`. AssertionError naming what did arrive when it does not come within `timeout` s."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = json.loads(self.ws.recv(timeout=left))
            except TimeoutError:
                break
            self.events.append(event)
            if event["type"] == kind and where(event):
                return event
        raise AssertionError(f"no {kind} within {timeout} s; got {[e['type'] for e in self.events][-20:]}")

    def of_type(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["type"] == kind]

    def close(self) -> None:
        self.ws.close()
