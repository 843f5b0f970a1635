"""docs/protocol.md and the README say what the code does (issue 13 §8): each test holds one of
their statements against a real node (or the real CLI), so the document cannot drift silently."""

from __future__ import annotations

import re
import shlex
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
from nodekit import clients, collect, start_node, wait_subscribed

from edge_stream.node.client import Subscriber

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = (ROOT / "docs" / "protocol.md").read_text()


@pytest.fixture(scope="module")
def vad_node(vad_dir):
    n = start_node([{"name": "vad", "dir": str(vad_dir), "topics": ["mic"]},
                    {"name": "quiet", "dir": str(vad_dir), "topics": ["probs"],
                     "stream_options": {"events": False}}],
                   stats_interval_s=0.1)
    yield n
    n.stop()


def section(title: str) -> str:
    """The text of a `## title` section of docs/protocol.md."""
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", PROTOCOL, re.DOTALL | re.MULTILINE)
    assert m, f"docs/protocol.md has no section {title!r}"
    return m.group(1)


def test_the_hand_written_python_example_runs_as_printed(vad_node):
    """The example waits for the node's subscription, so its one chunk is not lost to the slow joiner."""
    code = re.search(r"```python\n(.*?)```", section("Example: one chunk by hand (Python, plain pyzmq + msgpack)"),
                     re.DOTALL).group(1)
    assert "tcp://127.0.0.1:5550" in code
    sub = Subscriber(["out/mic1"], connect=vad_node.endpoints["output"])
    wait_subscribed(vad_node, sub)
    ns: dict = {}
    try:
        exec(code.replace("tcp://127.0.0.1:5550", vad_node.endpoints["input"][0]), ns)  # noqa: S102
        (rec,) = collect(sub, lambda r: r.kind == "result")
        assert rec.header["stream"] == "mic1" and rec.header["in_seq"] == 0 and rec.data.shape == (1,)
    finally:
        ns["sock"].close(linger=0)
        sub.close()


def test_the_readiness_section_names_the_topic_frame_the_node_subscribes_to(vad_node):
    text = section("Readiness (the slow-joiner problem)")
    assert '0x01 "mic\\0"' in text and "mic1" not in text
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.XPUB)
    sock.linger = 0
    sock.connect(vad_node.endpoints["input"][0])
    try:
        assert sock.poll(5000) and sock.recv() == b"\x01mic\x00"
    finally:
        sock.close()


def test_a_cancelled_done_carries_n_tokens_text_and_position(tiny_models):
    lm_dir = tiny_models("llama")[1]
    node = start_node([{"name": "lm", "dir": str(lm_dir), "topics": ["chat"]}], stats_interval_s=0.2)
    try:
        pub, sub, _ = clients(node, "chat", ["out/barge"])
        pub.send(np.arange(1, 4, dtype=np.int64), stream="barge")
        pub.end(stream="barge", max_new_tokens=2000, temperature=0.0)
        recs = collect(sub, lambda r: r.kind == "delta")
        pub.reset(stream="barge")
        recs += collect(sub, lambda r: r.kind == "done", timeout=10)
        done = recs[-1].header
        deltas = [r.header for r in recs if r.kind == "delta"]
        assert done["reason"] == "cancelled" and 0 < done["n_tokens"] == len(deltas) < 2000
        assert done["text"] == "".join(d["text"] for d in deltas)
        assert done["position"] == 3 + done["n_tokens"]  # the prompt and every token said before the cancel
    finally:
        node.stop()


def test_an_empty_vad_result_has_shape_0_as_documented(vad_node):
    assert "may be `[0]`" in section("Output messages (node -> controllers)")
    pub, sub, _ = clients(vad_node, "mic", ["out/short"])
    pub.send(np.zeros(100, np.float32), stream="short", sr=16000)  # less than one 512-sample block
    (rec,) = collect(sub, lambda r: r.kind == "result")
    assert rec.header["shape"] == [0] and rec.data.shape == (0,) and rec.header["n_blocks"] == 0


def test_a_float_timestamp_is_rejected_with_how_to_send_an_integer(vad_node):
    assert "BigInt" in section("Clocks, stale input and deadlines")
    pub, sub, _ = clients(vad_node, "mic", ["errors"])
    h = {"v": 1, "stream": "js", "pub_id": pub.pub_id, "seq": 0, "kind": "chunk", "t_pub_ns": float(time.time_ns()),
         "dtype": "float32", "shape": [512], "sr": 16000}
    pub.sock.send_multipart([b"mic\x00", msgpack.packb(h), np.zeros(512, "<f4").tobytes()])
    (err,) = collect(sub, lambda r: r.kind == "error")
    assert err.header["code"] == "protocol" and "'t_pub_ns' must be int, got float" in err.header["reason"]
    assert "BigInt" in err.header["reason"]


def test_events_of_control_requests_carry_no_input_fields_as_documented(vad_node):
    assert "only on outputs an input message caused" in section("Output messages (node -> controllers)")
    _, sub, ctl = clients(vad_node, "mic", ["out/by-control"])
    assert ctl.request("open", stream="by-control", model="vad")["ok"]
    (rec,) = collect(sub, lambda r: r.kind == "event")
    h = rec.header
    assert h["event"] == "opened" and "t_pub_ns" in h and h["seq"] >= 0
    assert not {"in_seq", "in_pub_id", "t_recv_ns", "t_capture_ns"} & set(h)


def test_control_open_options_merge_over_the_launch_files_stream_options(vad_node, speech):
    """The `quiet` model's launch options turn events off; an `open` naming another option keeps that,
    one naming `events` overrides it."""
    assert "merged over" in section("Control requests (ROUTER)")
    pub, sub, ctl = clients(vad_node, "probs", ["out/merged", "out/overridden"])
    assert ctl.request("open", stream="merged", model="quiet", options={"threshold": 0.5})["ok"]
    assert ctl.request("open", stream="overridden", model="quiet", options={"events": True})["ok"]
    for name in ("merged", "overridden"):
        pub.send(speech[:48000], stream=name, sr=16000)
        pub.end(stream=name)
    recs, done = [], set()
    while done != {"merged", "overridden"}:
        got = collect(sub, lambda r: r.kind == "done", timeout=10)
        assert got, f"no done for {sorted({'merged', 'overridden'} - done)}"
        recs += got
        done |= {r.header["stream"] for r in got if r.kind == "done"}
    speech_events = {n: [r.header["event"] for r in recs if r.header["stream"] == n and r.kind == "event"
                         and r.header["event"].startswith("speech")] for n in done}
    assert speech_events["merged"] == [] and "speech_start" in speech_events["overridden"]


def test_the_readmes_keys_command_runs(tmp_path):
    from edge_stream.cli.main import main

    readme = (ROOT / "README.md").read_text()
    line = re.search(r"^edge-stream keys (.*?)\s+#", readme, re.MULTILINE).group(1)
    args = [str(tmp_path / "keys") if a == "keys/" else a for a in shlex.split(line)]
    assert main(["keys", *args]) == 0
    assert (tmp_path / "keys" / "node.key").is_file() and (tmp_path / "keys" / "node.key_secret").is_file()


def test_the_curve_section_names_every_socket_and_key_file():
    text = section("Security (CURVE)")
    for phrase in ("curve_server", "allowed_clients", "server_key", "key_secret", "Z85", "ZPL",
                   "SUB", "DEALER", "edge-stream keys"):
        assert phrase in text, phrase
