"""The voice pipeline: VAD gate -> recognizer -> parser nodes chained over real ZeroMQ sockets (loopback).

Forwarded messages are read with a plain SUB socket and validated with wire.decode_input,
exactly as the next node's input boundary does. Models: the session's Silero VAD export (conftest `vad_dir`) and the committed
models/command-recognizer and models/command-parser; audio: tests/data/commands.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from nodekit import collect, start_node, wait_subscribed

from edge_stream.audio import read_wav
from edge_stream.cli.controller import CommandTracker
from edge_stream.node import wire
from edge_stream.node.client import Publisher, Subscriber
from edge_stream.node.node import Node, make_node_config
from edge_stream.voice.speech_gate import SpeechGate

ROOT = Path(__file__).resolve().parent.parent
RECOGNIZER_DIR = ROOT / "models" / "command-recognizer"
PARSER_DIR = ROOT / "models" / "command-parser"
WAVS = ROOT / "tests" / "data" / "commands"
SR = 16000
VAD_OPTIONS = {"threshold": 0.5, "min_silence_ms": 300.0, "speech_pad_ms": 100.0}  # as launch/voice_commands.toml



def wav(name: str) -> np.ndarray:
    pcm, sr = read_wav(WAVS / name)
    assert sr == SR
    return pcm.astype(np.float32) / 32768.0  # [n]


def transcript(name: str) -> str:
    meta = json.loads((WAVS / "transcripts.json").read_text())
    return next(u["text"] for u in meta["utterances"] if u["file"] == name)


def vad_route(vad_dir, **extra) -> dict:
    return {"name": "vad", "dir": str(vad_dir), "topics": ["mic"], "forward_topic": "speech",
            "stream_options": dict(VAD_OPTIONS), **extra}


def recognizer_model(**extra) -> dict:
    return {"name": "recognizer", "dir": str(RECOGNIZER_DIR), "topics": ["speech"], "forward_topic": "words", **extra}


def parser_model(**extra) -> dict:
    return {"name": "parser", "dir": str(PARSER_DIR), "topics": ["words"], "policy": "command_parser", **extra}


class ForwardTap:
    """A SUB on a node's output taking its forwarded (input-format) messages of one topic."""

    def __init__(self, node: Node, topic: str):
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.linger = 0
        self.sock.setsockopt(zmq.SUBSCRIBE, wire.topic_frame(topic))
        self.sock.connect(node.endpoints["output"][0])

    def collect(self, until, timeout: float = 10.0) -> list[wire.InMessage]:
        out, deadline = [], time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not self.sock.poll(int(left * 1000) + 1):
                break
            msg = wire.decode_input(self.sock.recv_multipart())  # the next node's boundary check
            out.append(msg)
            if until(msg):
                break
        return out

    def close(self):
        self.sock.close(linger=0)


def publish(pub: Publisher, audio: np.ndarray, stream: str = "mic1", chunk: int = 512, end: bool = True) -> None:
    for i in range(0, len(audio), chunk):
        pub.send(audio[i:i + chunk], stream=stream, sr=SR)
    if end:
        pub.end(stream=stream)


def connected_publisher(node: Node, topic: str) -> Publisher:
    pub = Publisher(topic, connect=node.endpoints["input"])
    assert pub.wait_ready(5.0), "node never subscribed"
    return pub


def reference_segments(audio: np.ndarray, vad_dir) -> list[tuple[int, int]]:
    """(start, end) samples of the VAD's events on `audio`, from the runtime directly (no node)."""
    import edge_stream as es

    stream = es.load(vad_dir).open_stream(**VAD_OPTIONS)
    events = stream.feed(audio).events
    starts = [e["start"] for e in events if "start" in e]
    ends = [e["end"] for e in events if "end" in e]
    return list(zip(starts, ends))


# ----- the gate alone (no model) ---------------------------------------------------------------------


def test_gate_forwards_from_the_padded_start_in_the_pre_roll():
    gate = SpeechGate(pad_samples=100, block=50)
    audio = np.arange(1000, dtype=np.float32)
    assert gate.update(audio[:400], []) == []  # silence: nothing
    pieces = gate.update(audio[400:500], [{"start": 330}])  # the start lies in the previous chunk
    assert [p.kind for p in pieces] == ["audio"]
    assert pieces[0].start_sample == 330 and np.array_equal(pieces[0].audio, audio[330:500])


def test_gate_closes_a_segment_and_is_silent_after_it():
    gate = SpeechGate(pad_samples=100, block=50)
    audio = np.arange(1000, dtype=np.float32)
    gate.update(audio[:200], [{"start": 120}])
    pieces = gate.update(audio[200:300], [{"end": 260}])
    assert [p.kind for p in pieces] == ["audio", "end"]
    assert np.array_equal(pieces[0].audio, audio[200:260])
    assert pieces[1].end_sample == 260 and pieces[1].speech_end_sample == 160 and pieces[1].segment == 0
    assert gate.update(audio[300:400], []) == []
    assert gate.update(audio[400:500], [{"start": 450}])[0].segment == 1


def test_gate_finish_closes_an_open_segment_at_the_last_sample():
    gate = SpeechGate(pad_samples=0, block=10)
    gate.update(np.zeros(50, np.float32), [{"start": 20}])
    end = gate.finish()
    assert end.kind == "end" and end.end_sample == 50
    assert gate.finish() is None


# ----- nodes over ZeroMQ -----------------------------------------------------------------------------


def test_vad_node_forwards_exactly_the_speech_segments(vad_dir):
    silence = np.zeros(SR, np.float32)
    audio = np.concatenate([wav("command_0.wav"), silence, wav("command_1.wav"), silence])
    segments = reference_segments(audio, vad_dir)
    assert len(segments) == 2
    node = start_node([vad_route(vad_dir)], name="vad")
    tap = ForwardTap(node, "speech")
    try:
        pub = connected_publisher(node, "mic")
        wait_subscribed(node, tap)  # the tap's subscription reached the node's XPUB (its stats heartbeat came)
        publish(pub, audio, end=False)
        got = tap.collect(lambda m: m.kind == "end" and m.extra["segment"] == 1)
    finally:
        tap.close()
        node.stop()
    assert [m.seq for m in got] == list(range(len(got)))  # the node's own numbering, no gaps
    assert {m.pub_id for m in got} == {node.pub_id} and {m.stream for m in got} == {"mic1"}
    for k, (start, end) in enumerate(segments):
        chunks = [m for m in got if m.kind == "chunk" and m.extra["segment"] == k]
        ends = [m for m in got if m.kind == "end" and m.extra["segment"] == k]
        assert len(ends) == 1 and ends[0].extra["end_sample"] == end
        assert ends[0].extra["t_speech_end_ns"] <= ends[0].t_capture_ns
        assert chunks[0].extra["start_sample"] == start
        forwarded = np.concatenate([m.data for m in chunks])
        # Exactly the stream's samples from the padded start on, contiguous, ...
        assert np.array_equal(forwarded, audio[start:start + len(forwarded)])
        # ... through the VAD's end, plus at most the silence it waited for (and one chunk).
        assert end <= start + len(forwarded) <= end + int(VAD_OPTIONS["min_silence_ms"] * SR / 1000) + 1024
    assert sum(m.data.size for m in got if m.kind == "chunk") < len(audio) - SR  # nothing in the silences


def runtime_words(audio: np.ndarray, flush: bool = True, model_dir: Path = RECOGNIZER_DIR) -> list[str]:
    """The recognizer's words straight from the runtime (BlockStream + CtcDecoder, no node, no policy):
    the audio, then (flush) the last block zero-padded and the decoder finished, as at a segment's end."""
    import edge_stream as es
    from edge_stream.voice.ctc import CtcDecoder

    model = es.load(model_dir)
    stream, decoder = model.open_stream(), CtcDecoder.from_model(model)
    block = model.manifest.blocking.block
    if flush:
        audio = np.concatenate([audio, np.zeros(-len(audio) % block, np.float32)])
    words = decoder.update(stream.feed(audio).logits).words
    if flush:
        words += decoder.finish().words
    return [w.word for w in words]


def run_recognizer_node(audio: np.ndarray, end: bool = True, route: dict | None = None,
                        **end_fields) -> list[wire.InMessage]:
    node = start_node([route or recognizer_model()], name="recognizer")
    tap = ForwardTap(node, "words")
    try:
        pub = connected_publisher(node, "speech")
        wait_subscribed(node, tap)  # the tap's subscription reached the node's XPUB (its stats heartbeat came)
        publish(pub, audio, stream="seg", chunk=640, end=False)
        if end:
            pub.end(stream="seg", **end_fields)
            return tap.collect(lambda m: m.kind == "end")
        expected = len(runtime_words(audio, flush=False))
        return tap.collect(lambda m: m.extra["word_index"] == expected - 1, timeout=5.0)
    finally:
        tap.close()
        node.stop()


def test_recognizer_node_forwards_the_words_the_runtime_decodes_then_the_end():
    audio = wav("command_1.wav")
    got = run_recognizer_node(audio, segment=7, t_speech_end_ns=123)
    assert got[-1].kind == "end" and (got[-1].extra["segment"], got[-1].extra["t_speech_end_ns"]) == (7, 123)
    words = got[:-1]
    assert [m.text for m in words] == runtime_words(audio) and words
    assert [m.extra["word_index"] for m in words] == list(range(len(words)))
    assert [m.seq for m in got] == list(range(len(got)))


def test_recognizer_node_forwards_words_before_the_audio_ends():
    audio = wav("command_1.wav")[:20000]  # "turn left ninety degrees" cut in "ninety": no end sent
    expected = runtime_words(audio, flush=False)
    assert expected  # words final within the audio so far (a later letter or a space closed them)
    got = run_recognizer_node(audio, end=False)
    assert [m.text for m in got] == expected and all(m.kind == "chunk" for m in got)


def test_a_recognizer_node_with_a_verifier_forwards_the_first_ones_words_and_the_verifiers_on_the_end():
    """launch/voice_commands_verified.toml's recognizer route: the node loads the verifier beside
    the model; the words on the wire are the first recognizer's, the end carries the verifier's."""
    first, second = ROOT / "models" / "command-recognizer-multisynth", ROOT / "models" / "command-recognizer-embed"
    audio = wav("command_4.wav")
    got = run_recognizer_node(audio, route=recognizer_model(dir=str(first), verifier=str(second)), segment=3)
    assert got[-1].kind == "end" and got[-1].extra["segment"] == 3
    assert [m.text for m in got[:-1]] == runtime_words(audio, model_dir=first) and got[:-1]
    assert got[-1].extra["verifier_words"] == runtime_words(audio, model_dir=second)
    assert got[-1].extra["verifier_words"]  # it heard something (the route without a verifier sends no such field)


def test_a_recognizer_node_with_an_ngram_lm_sends_the_rescored_nbest_over_the_wire():
    """launch/voice_commands_verified.toml's `ngram_lm`: the streamed words are unchanged; the `end`
    carries the n-best (msgpack lists of maps) that ctc_beam computes from the two recognizers' frames;
    a pause's `revise` chunk carries the best reading so far as its text."""
    import edge_stream as es
    from edge_stream.voice import ctc_beam
    from edge_stream.voice.ctc import CtcDecoder
    from edge_stream.voice.ngram import read_arpa

    first, second = ROOT / "models" / "command-recognizer-multisynth", ROOT / "models" / "command-recognizer-embed"
    lm_path = ROOT / "models" / "command-lm" / "lm.arpa"
    audio = wav("command_4.wav")
    got = run_recognizer_node(audio, route=recognizer_model(dir=str(first), verifier=str(second), ngram_lm=str(lm_path)),
                              segment=2)
    end = got[-1]
    assert end.kind == "end" and end.extra["segment"] == 2
    streamed = [m for m in got[:-1] if not m.extra.get("revise")]
    assert [m.text for m in streamed] == runtime_words(audio, model_dir=first) and streamed
    for m in got[:-1]:
        if m.extra.get("revise"):
            assert m.text == " ".join(m.extra["nbest"][0]["words"])
    lm, recs, cands = read_arpa(lm_path), [], []
    for d in (first, second):
        model = es.load(d)
        dec = CtcDecoder.from_model(model)
        padded = np.concatenate([audio, np.zeros(-len(audio) % model.manifest.blocking.block, np.float32)])
        frames = model.open_stream().feed(padded).logits
        beam = ctc_beam.BeamDecoder(dec.symbols, dec.blank, lm, 0.8, 2.5, beam=8)
        beam.update(frames)
        recs.append((frames, dec.symbols, dec.blank))
        cands += [h.words for h in beam.finish()] + [tuple(runtime_words(audio, model_dir=d))]
    want = ctc_beam.nbest(recs, cands, lm, 0.8, 2.5)
    sent = end.extra["nbest"]
    assert sent[0]["words"] == want[0]["words"]
    assert sent[0]["posteriors"] == pytest.approx(want[0]["posteriors"], abs=0.02)  # frames chunked otherwise


@pytest.mark.parametrize("name", ["command_1.wav", "command_2.wav"])
def test_recognizer_node_publishes_the_words_of_a_wav(name):
    got = run_recognizer_node(wav(name))
    assert " ".join(m.text for m in got if m.kind == "chunk") == transcript(name)


def test_parser_node_sends_stop_the_moment_the_word_arrives():
    node = start_node([parser_model()], name="parser", output_topic="commands/{stream}")
    sub = Subscriber(["commands/"], connect=node.endpoints["output"], prefix=True)
    try:
        pub = connected_publisher(node, "words")
        wait_subscribed(node, sub)
        pub.send(text="okay", stream="u1")
        pub.send(text="stop", stream="u1")
        # Nothing more is sent until the stop is out: it cannot be waiting for a later word.
        got = collect(sub, lambda r: r.kind == "delta", timeout=5.0)
        assert got and got[-1].header["fields"] == ["stop"] and got[-1].header["word"] == "stop"
        pub.send(text="now", stream="u1")
        pub.end(stream="u1")
        done = collect(sub, lambda r: r.kind == "done", timeout=5.0)
    finally:
        sub.close()
        node.stop()
    assert done[-1].header["command"] == "stop" and done[-1].header["words"] == ["okay", "stop", "now"]


def test_parser_node_turns_words_into_a_command_field_by_field():
    node = start_node([parser_model()], name="parser", output_topic="commands/{stream}")
    sub = Subscriber(["commands/"], connect=node.endpoints["output"], prefix=True)
    try:
        pub = connected_publisher(node, "words")
        wait_subscribed(node, sub)
        for w in "turn left ninety degrees".split():
            pub.send(text=w, stream="u2")
        pub.end(stream="u2", segment=3, t_speech_end_ns=123)
        got = collect(sub, lambda r: r.kind == "done", timeout=5.0)
    finally:
        sub.close()
        node.stop()
    deltas = [r.header for r in got if r.kind == "delta"]
    assert deltas[0]["word"] == "turn" and deltas[0]["command"] == "turn"
    assert deltas[1]["word"] == "left" and deltas[1]["command"] == "turn left"
    done = got[-1].header
    assert done["command"] == "turn left 90 deg" and (done["action"], done["direction"]) == ("turn", "left")
    assert (done["amount"], done["unit"], done["segment"], done["t_speech_end_ns"]) == (90.0, "deg", 3, 123)


def run_chain(audio: np.ndarray, wait_for_end: bool, n_commands: int, vad_dir, recognizer_dir: Path = RECOGNIZER_DIR) -> list:
    """Three chained Node objects (real sockets); `audio` then an end into the VAD; CommandRecords."""
    vad = start_node([vad_route(vad_dir)], name="vad")
    nodes = [vad]
    try:
        rec = Node(make_node_config(name="recognizer", input={"connect": vad.endpoints["output"]},
                                    output={"bind": ["tcp://127.0.0.1:*"]},
                                    models=[recognizer_model(wait_for_end=wait_for_end, dir=str(recognizer_dir))])).start()
        nodes.append(rec)
        parser = Node(make_node_config(name="parser", input={"connect": rec.endpoints["output"]},
                                       output={"bind": ["tcp://127.0.0.1:*"]}, output_topic="commands/{stream}",
                                       models=[parser_model(wait_for_end=wait_for_end)])).start()
        nodes.append(parser)
        sub = Subscriber(["commands/"], connect=parser.endpoints["output"], prefix=True)
        wait_subscribed(parser, sub)
        assert vad.wait_output_subscribed("speech") and rec.wait_output_subscribed("words"), "chain not subscribed"
        pub = connected_publisher(vad, "mic")
        publish(pub, audio)
        tracker, records = CommandTracker(), []
        deadline = time.monotonic() + 15.0
        while len(records) < n_commands and time.monotonic() < deadline:
            r = sub.recv(0.2)
            if r is not None and (record := tracker.update(r.header)) is not None:
                records.append(record)
        sub.close()
        return records
    finally:
        for n in reversed(nodes):
            n.stop()


def two_commands() -> np.ndarray:
    silence = np.zeros(SR // 2, np.float32)
    return np.concatenate([wav("command_0.wav"), silence, wav("command_1.wav"), silence])  # "stop", "turn left ..."


@pytest.mark.parametrize("wait_for_end", [False, True], ids=["streaming", "batch"])
def test_three_chained_nodes_give_the_commands_of_the_policies_run_in_process(wait_for_end, vad_dir):
    from edge_stream.cli.voice_report import PolicyChain

    audio = two_commands()
    cfgs = [make_node_config(name=n, input={"bind": ["tcp://127.0.0.1:*"]}, output={"bind": ["tcp://127.0.0.1:*"]},
                             models=[m]).models[0]
            for n, m in (("vad", vad_route(vad_dir)), ("recognizer", recognizer_model(wait_for_end=wait_for_end)),
                         ("parser", parser_model(wait_for_end=wait_for_end)))]
    reference = PolicyChain(cfgs).run(audio, tail_s=0.0)
    assert reference.commands  # at least one segment produced words
    records = run_chain(audio, wait_for_end, len(reference.commands), vad_dir)
    assert [r.command for r in records] == reference.commands
    assert [w for r in records for w in r.words] == reference.words
    assert all(r.t_speech_end_ns is not None and r.t_done_pub_ns > r.t_speech_end_ns for r in records)
    assert [r.segment for r in records] == sorted({r.segment for r in records})  # in order, one each


@pytest.mark.parametrize("wait_for_end", [False, True], ids=["streaming", "batch"])
def test_three_chained_nodes_turn_a_wav_into_its_command(wait_for_end, vad_dir):
    records = run_chain(two_commands(), wait_for_end, 2, vad_dir)
    assert [r.command for r in records] == ["stop", "turn left 90 deg"]
    if not wait_for_end:  # streaming: the stop went out as a field, before the segment's end
        assert records[0].fields[0] == "stop"


def test_controller_times_a_command_from_the_field_that_settled_it():
    tracker = CommandTracker()
    assert tracker.update({"kind": "delta", "stream": "m", "fields": ["turn"], "command": "turn", "t_pub_ns": 10}) is None
    tracker.update({"kind": "delta", "stream": "m", "fields": ["left"], "command": "turn left", "t_pub_ns": 20})
    rec = tracker.update({"kind": "done", "stream": "m", "command": "turn left", "segment": 0, "t_pub_ns": 50,
                          "t_speech_end_ns": 30, "words": ["turn", "left"]})
    assert (rec.command, rec.t_first_pub_ns, rec.t_known_pub_ns, rec.t_done_pub_ns) == ("turn left", 10, 20, 50)
    assert rec.ms_after_speech_end(rec.t_known_pub_ns) == -10 / 1e6 and rec.fields == ["turn", "left"]
    # The batch baseline sends no deltas: the command is known at its done.
    rec = tracker.update({"kind": "done", "stream": "m", "command": "stop", "t_pub_ns": 90})
    assert (rec.t_first_pub_ns, rec.t_known_pub_ns) == (90, 90)


def test_controller_times_a_stop_from_its_field_even_when_words_follow():
    """Stop latency is measured from the `stop` field, which goes out on its word; the words after it
    ("stop, no, turn left") do not move that time."""
    tracker = CommandTracker()
    tracker.update({"kind": "delta", "stream": "m", "fields": ["move forward"], "command": "move forward", "t_pub_ns": 5})
    tracker.update({"kind": "delta", "stream": "m", "fields": ["stop"], "command": "stop", "t_pub_ns": 12})
    tracker.update({"kind": "delta", "stream": "m", "fields": ["<fix> turn"], "command": "turn", "t_pub_ns": 30})
    rec = tracker.update({"kind": "done", "stream": "m", "command": "turn", "t_pub_ns": 40})
    assert rec.t_stop_pub_ns == 12
    rec = tracker.update({"kind": "done", "stream": "m", "command": "move forward", "t_pub_ns": 60})
    assert rec.t_stop_pub_ns is None  # no stop field in this segment


def test_three_chained_nodes_take_back_a_command_the_next_segment_cancels(vad_dir):
    """"turn left ninety degrees ... never mind" with 0.8 s between (tests/data/commands/split_cancel_0.wav):
    the VAD makes two segments; the recognizer node says the pause over the wire, and the parser node's
    second `done` takes the first segment's command back."""
    records = run_chain(wav("split_cancel_0.wav"), False, 2, vad_dir, ROOT / "models" / "command-recognizer-multisynth")
    assert [r.command for r in records] == ["turn left 90 deg", ""]
    assert records[1].cancelled and records[1].cancels == {"segment": records[0].segment, "command": "turn left 90 deg"}
