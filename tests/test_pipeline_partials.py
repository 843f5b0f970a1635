"""Early partial words through real nodes on loopback (issue 11, "Pipeline"): a recognizer route with
`partial_words` forwards words before they are final and revises them; the chained parser node
follows the revisions (retract, then the corrected fields) and ends with the commands of the
route without partials. Models: the committed models/command-recognizer and models/command-parser;
audio: tests/data/commands."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import zmq
from nodekit import collect, start_node, wait_subscribed

from edge_stream.audio import read_wav
from edge_stream.cli.controller import CommandTracker
from edge_stream.errors import ConfigError
from edge_stream.node import wire
from edge_stream.node.client import Publisher, Subscriber
from edge_stream.node.node import Node, make_node_config

ROOT = Path(__file__).resolve().parent.parent
RECOGNIZER_DIR = ROOT / "models" / "command-recognizer"
PARSER_DIR = ROOT / "models" / "command-parser"
WAVS = sorted((ROOT / "tests" / "data" / "commands").glob("command_*.wav"))
SR = 16000
# Low enough that the committed WAVs give real revisions ("one" -> "ninety" in command_1.wav).
THRESHOLD = 0.05


def wav(path: Path) -> np.ndarray:
    pcm, sr = read_wav(path)
    assert sr == SR
    return pcm.astype(np.float32) / 32768.0  # [n]


def connected_publisher(node: Node, topic: str) -> Publisher:
    pub = Publisher(topic, connect=node.endpoints["input"])
    assert pub.wait_ready(5.0), "node never subscribed"
    return pub


@pytest.fixture(scope="module")
def chain():
    """A recognizer node with two routes (plain: topic speech -> words; early partials: speech_p ->
    words_p) chained to a parser node with a route for each; (recognizer, parser)."""
    rec = start_node([{"name": "recognizer", "dir": str(RECOGNIZER_DIR), "topics": ["speech"],
                       "forward_topic": "words"},
                      {"name": "recognizer_p", "dir": str(RECOGNIZER_DIR), "topics": ["speech_p"],
                       "forward_topic": "words_p", "partial_words": True, "partial_threshold": THRESHOLD}],
                     name="recognizer")
    parser = Node(make_node_config(
        name="parser", input={"connect": rec.endpoints["output"]}, output={"bind": ["tcp://127.0.0.1:*"]},
        control={"bind": ["tcp://127.0.0.1:*"]}, output_topic="commands/{stream}",
        models=[{"name": "parser", "dir": str(PARSER_DIR), "topics": ["words"], "policy": "command_parser"},
                {"name": "parser_p", "dir": str(PARSER_DIR), "topics": ["words_p"], "policy": "command_parser"}],
    )).start()
    try:
        assert rec.wait_output_subscribed("words") and rec.wait_output_subscribed("words_p"), "chain not subscribed"
        yield rec, parser
    finally:
        parser.stop()
        rec.stop()


@pytest.fixture(scope="module")
def parser_node():
    """A parser node alone, its input bound: the tests publish words to it as a recognizer would
    (min_confidence 0: these tests are about revisions, not the models' confidence)."""
    node = start_node([{"name": "parser", "dir": str(PARSER_DIR), "topics": ["words"], "policy": "command_parser",
                        "stream_options": {"min_confidence": 0.0}}],
                      name="parser", output_topic="commands/{stream}")
    yield node
    node.stop()


def run(chain, topic: str, streams: dict[str, np.ndarray]) -> tuple[dict, list]:
    """Each stream's audio then an end into the recognizer; ({stream: CommandRecord}, every parser output)."""
    rec, parser = chain
    sub = Subscriber(["commands/"], connect=parser.endpoints["output"], prefix=True)
    try:
        wait_subscribed(parser, sub)
        pub = connected_publisher(rec, topic)
        for segment, (stream, audio) in enumerate(streams.items()):
            for i in range(0, len(audio), 640):
                pub.send(audio[i:i + 640], stream=stream, sr=SR)
            pub.end(stream=stream, segment=segment)
        tracker, records, outputs = CommandTracker(), {}, []
        deadline = time.monotonic() + 30.0
        while len(records) < len(streams) and time.monotonic() < deadline:
            r = sub.recv(0.2)
            if r is None or r.kind == "stats":
                continue
            outputs.append(r)
            if (record := tracker.update(r.header)) is not None:
                records[record.stream] = record
        assert len(records) == len(streams), f"commands for {sorted(records)} only"
        return records, outputs
    finally:
        sub.close()


def test_early_partials_end_with_the_commands_of_the_route_without_them(chain):
    audio = {p.stem: wav(p) for p in WAVS}
    plain, _ = run(chain, "speech", {f"plain-{k}": a for k, a in audio.items()})
    early, outputs = run(chain, "speech_p", {f"early-{k}": a for k, a in audio.items()})
    for k in audio:
        a, b = plain[f"plain-{k}"], early[f"early-{k}"]
        assert (b.command, b.words, b.not_understood, b.confidence) == (a.command, a.words, a.not_understood,
                                                                         a.confidence), k
    assert any(r.kind == "delta" for r in outputs)


def forwarded(rec: Node, topic: str, play, n_ends: int) -> list:
    """The forwarded input messages on `topic` of `rec` while `play()` runs, up to the `n_ends`-th
    `end`, decoded as the next node's boundary decodes them."""
    tap = zmq.Context.instance().socket(zmq.SUB)
    tap.linger = 0
    tap.setsockopt(zmq.SUBSCRIBE, wire.topic_frame(topic))
    tap.connect(rec.endpoints["output"][0])
    try:
        wait_subscribed(rec, SimpleNamespace(sock=tap))
        play()
        got = []
        while sum(m.kind == "end" for m in got) < n_ends:
            assert tap.poll(5000), f"{topic}: {sum(m.kind == 'end' for m in got)} of {n_ends} ends forwarded"
            got.append(wire.decode_input(tap.recv_multipart()))
        return got
    finally:
        tap.close()


def test_the_recognizer_forwards_partials_and_revisions_that_end_in_the_words_without_them(chain):
    rec, _ = chain
    audio = {p.stem: wav(p) for p in WAVS}
    plain = forwarded(rec, "words", lambda: run(chain, "speech", {f"fp-{k}": a for k, a in audio.items()}),
                      len(audio))
    early = forwarded(rec, "words_p", lambda: run(chain, "speech_p", {f"fe-{k}": a for k, a in audio.items()}),
                      len(audio))
    for k in audio:
        mine = [m for m in plain if m.stream == f"fp-{k}"]
        theirs = [m for m in early if m.stream == f"fe-{k}"]
        words = []
        for m in theirs[:-1]:
            assert m.kind == "chunk"
            if m.extra.get("replace_last"):
                assert m.extra["replace_last"] == 1 and m.extra["word_index"] == len(words) - 1
                words[-1] = m.text
            else:
                assert m.extra["word_index"] == len(words)
                words.append(m.text)
        end = theirs[-1]
        assert end.kind == "end" and len(end.extra["final_confidences"]) <= len(words)
        del words[len(end.extra["final_confidences"]):]  # a partial no label confirmed
        assert words == [m.text for m in mine if m.kind == "chunk"], k
        assert end.extra["final_confidences"] == [m.extra["confidence"] for m in mine if m.kind == "chunk"]
    assert any(m.extra.get("partial") for m in early)  # words went out early
    assert not any("partial" in m.extra or "replace_last" in m.extra for m in plain)  # the plain route: as before


def test_a_forced_revision_retracts_the_replaced_words_fields_then_sends_the_corrected_ones(parser_node):
    parser = parser_node
    sub = Subscriber(["commands/"], connect=parser.endpoints["output"], prefix=True)
    tap = Publisher("words", connect=parser.endpoints["input"])  # the parser node's input, as a recognizer
    try:
        assert tap.wait_ready(5.0)
        wait_subscribed(parser, sub)
        tap.send(text="turn", stream="forced", confidence=0.9, partial=True)
        tap.send(text="left", stream="forced", confidence=0.9, partial=True)
        left = collect(sub, lambda r: r.kind == "delta" and r.header.get("word") == "left", timeout=10.0)[-1]
        tap.send(text="right", stream="forced", confidence=0.9, partial=True, replace_last=1)
        tap.end(stream="forced", final_confidences=[0.9, 0.9])
        got = collect(sub, lambda r: r.kind == "done", timeout=10.0)
    finally:
        tap.close()
        sub.close()
    kinds = [r.kind for r in got]
    assert kinds[:2] == ["retract", "delta"], kinds
    assert got[0].header["first_seq"] == left.header["seq"]
    assert got[1].header["fields"] == ["right"] and got[1].header["command"] == "turn right"
    assert got[-1].header["command"] == "turn right" and got[-1].header["words"] == ["turn", "right"]


def said_to(parser, stream: str, chunks: list[dict], **end_fields) -> list:
    """Word chunks published to the parser node's input as a recognizer would, then the end; every
    parser output up to the `done`."""
    sub = Subscriber(["commands/"], connect=parser.endpoints["output"], prefix=True)
    tap = Publisher("words", connect=parser.endpoints["input"])
    try:
        assert tap.wait_ready(5.0)
        wait_subscribed(parser, sub)
        for chunk in chunks:
            tap.send(stream=stream, **chunk)
        tap.end(stream=stream, **end_fields)
        return collect(sub, lambda r: r.kind == "done", timeout=10.0)
    finally:
        tap.close()
        sub.close()


def test_an_end_with_fewer_final_words_takes_the_unconfirmed_partial_back(parser_node):
    got = said_to(parser_node, "withdrawn", [{"text": "turn", "confidence": 0.9, "partial": True},
                                             {"text": "left", "confidence": 0.9, "partial": True}],
                  final_confidences=[0.9])  # "left" never won: it was not said
    assert "retract" in [r.kind for r in got]
    assert got[-1].header["words"] == ["turn"] and got[-1].header["command"] == "turn"


def test_partial_words_on_a_route_that_is_no_recognizer_is_a_config_error():
    with pytest.raises(ConfigError, match="partial_words"):
        start_node([{"name": "parser", "dir": str(PARSER_DIR), "topics": ["words"], "policy": "command_parser",
                     "partial_words": True}])


@pytest.mark.parametrize("fields", [{"replace_last": 2}, {"replace_last": 3}], ids=["replace_last_2", "replace_last_3"])
def test_the_parser_refuses_any_revision_but_one_word_and_serves_the_next_chunk(parser_node, fields):
    parser = parser_node
    sub = Subscriber(["commands/", "errors"], connect=parser.endpoints["output"], prefix=True)
    tap = Publisher("words", connect=parser.endpoints["input"])
    stream = "refused-" + "-".join(f"{k}{v}" for k, v in fields.items())
    try:
        assert tap.wait_ready(5.0)
        wait_subscribed(parser, sub)
        tap.send(text="turn", stream=stream)
        seq = tap.send(text="left", stream=stream, **fields)
        tap.send(text="right", stream=stream)
        got = collect(sub, lambda r: r.kind == "delta" and r.header.get("word") == "right", timeout=10.0)
    finally:
        tap.close()
        sub.close()
    (err,) = [r.header for r in got if r.kind == "error"]
    assert err["code"] == "input" and err["in_seq"] == seq and "one word at a time" in err["reason"]
    assert got[-1].header["command"] == "turn right"  # the refused chunk changed nothing


def test_a_revise_chunk_replaces_the_segments_words_over_the_wire(parser_node):
    """A rescoring recognizer's `revise: true` (docs/protocol.md, "Grammar-aware decoding"): the text's words
    replace the segment's words; the replaced word's fields are retracted and the new ones sent."""
    got = said_to(parser_node, "rev", [{"text": "turn", "confidence": 0.99}, {"text": "right", "confidence": 0.99},
                                       {"text": "turn left", "revise": True}])
    kinds = [r.kind for r in got]
    assert "retract" in kinds and kinds.index("retract") < len(kinds) - 1
    assert got[-1].header["words"] == ["turn", "left"] and got[-1].header["command"] == "turn left"


def test_the_reports_in_process_chain_with_early_partials_gives_the_commands_and_words_without_them(vad_dir):
    from edge_stream.cli.voice_report import PolicyChain

    def chain(**recognizer_options) -> PolicyChain:
        models = [{"name": "vad", "dir": str(vad_dir), "topics": ["mic"], "forward_topic": "speech",
                   "stream_options": {"threshold": 0.5, "min_silence_ms": 300.0, "speech_pad_ms": 100.0}},
                  {"name": "recognizer", "dir": str(RECOGNIZER_DIR), "topics": ["speech"], "forward_topic": "words",
                   **recognizer_options},
                  {"name": "parser", "dir": str(PARSER_DIR), "topics": ["words"], "policy": "command_parser"}]
        return PolicyChain([make_node_config(name=m["name"], input={"bind": ["tcp://127.0.0.1:*"]},
                                             output={"bind": ["tcp://127.0.0.1:*"]}, models=[m]).models[0]
                            for m in models])

    plain, early = chain(), chain(partial_words=True, partial_threshold=THRESHOLD)
    for path in WAVS:
        a, b = plain.run(wav(path)), early.run(wav(path))
        assert a.commands and (b.commands, b.confidences, b.words) == (a.commands, a.confidences, a.words), path.name


def parser_policy(**route):
    """The parser node's policy for a route (in process: the code a parser node runs per chunk)."""
    import edge_stream as es
    from edge_stream.node.policies import policy_for

    cfg = make_node_config(name="parser", input={"bind": ["tcp://127.0.0.1:*"]}, output={"bind": ["tcp://127.0.0.1:*"]},
                           models=[{"name": "parser", "dir": str(PARSER_DIR), "topics": ["words"],
                                    "policy": "command_parser", **route}]).models[0]
    return policy_for(es.load(cfg.dir, intra_op_threads=1), cfg)


def feed(policy, steps: list, finals: list) -> dict:
    """(text, extra) word chunks, then an end with `finals`; returns the `done` output's fields."""
    session = policy.open("s", {})
    for text, extra in steps:
        list(policy.chunk(session, None, text, extra))
    return next(o for o in policy.end(session, {"final_confidences": finals}) if o.kind == "done").fields


def test_a_waiting_parser_applies_revisions_and_the_end_takes_back_an_unconfirmed_partial():
    policy = parser_policy(wait_for_end=True, stream_options={"min_confidence": 0.0})
    done = feed(policy, [("turn", {}), ("left", {"partial": True}), ("right", {"replace_last": 1}),
                         ("ninety", {"partial": True})], [0.9, 0.9])
    assert done["words"] == ["turn", "right"] and done["command"] == "turn right"


def test_revising_the_wake_word_away_puts_the_parser_back_to_sleep():
    policy = parser_policy(stream_options={"min_confidence": 0.0, "wake_word": True})
    revised = feed(policy, [("robot", {"partial": True}), ("go", {"replace_last": 1}), ("turn", {}), ("left", {})],
                   [0.9, 0.9, 0.9])
    awake = feed(policy, [("robot", {}), ("turn", {}), ("left", {})], [0.9, 0.9, 0.9])
    assert awake["command"] == "turn left"  # the wake word works: a positive signal for the one below
    assert revised["words"] == ["go", "turn", "left"] and revised["command"] is None


def test_the_controller_undoes_retracted_fields_and_times_the_command_from_its_correction():
    t = CommandTracker()
    base = {"stream": "s", "segment": 0}
    t.update({**base, "kind": "delta", "seq": 0, "fields": ["turn"], "command": "turn", "t_pub_ns": 10})
    t.update({**base, "kind": "delta", "seq": 1, "fields": ["left"], "command": "turn left", "t_pub_ns": 20})
    t.update({**base, "kind": "retract", "seq": 2, "first_seq": 1, "position": 1, "t_pub_ns": 30})
    t.update({**base, "kind": "delta", "seq": 3, "fields": ["right"], "command": "turn right", "t_pub_ns": 40})
    r = t.update({**base, "kind": "done", "seq": 4, "command": "turn right", "words": ["turn", "right"],
                  "t_pub_ns": 50})
    assert (r.command, r.fields, r.retracted, r.t_first_pub_ns, r.t_known_pub_ns) == (
        "turn right", ["turn", "right"], 1, 10, 40)
