"""The WebSocket gateway in front of the voice chain: real nodes (VAD -> recognizer -> parser, committed
models, loopback ZeroMQ), a real gateway, real WebSocket clients (plain `websockets`, the `openai` SDK)."""

from __future__ import annotations

import base64
import shutil
import ssl
import subprocess
import time

import numpy as np
import pytest
from gatewaykit import ROOT, Client, VoiceNodes, utterance
from websockets.exceptions import ConnectionClosedError, InvalidMessage, InvalidStatus

from edge_stream.node.client import Control
from edge_stream.node.node import Node, make_node_config

TURN_LEFT = "turn left 90 deg"  # what command_1.wav ("turn left ninety degrees") means


@pytest.fixture(scope="module")
def nodes():
    chain = VoiceNodes()
    yield chain
    chain.stop()


@pytest.fixture(scope="module")
def gateway(nodes):
    gw = nodes.gateway().start()
    yield gw
    gw.stop()


def test_a_websocket_session_streams_a_wav_and_gets_transcript_and_command(gateway):
    client = Client(gateway.url)
    try:
        assert client.created["session"]["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 16000}
        client.append(utterance("command_1.wav"))
        done = client.wait_for("command.done")
        if not client.of_type("conversation.item.input_audio_transcription.completed"):  # another node: no order
            client.wait_for("conversation.item.input_audio_transcription.completed")
    finally:
        client.close()
    started = client.of_type("input_audio_buffer.speech_started")
    completed = client.of_type("conversation.item.input_audio_transcription.completed")
    assert len(started) == 1 and client.of_type("input_audio_buffer.speech_stopped")
    assert completed and completed[0]["transcript"] == "turn left ninety degrees"
    assert "".join(e["delta"] for e in client.of_type("conversation.item.input_audio_transcription.delta")) == \
        "turn left ninety degrees"
    assert done["command"] == TURN_LEFT and (done["action"], done["direction"], done["amount"]) == ("turn", "left", 90.0)
    assert done["item_id"] == started[0]["item_id"] == completed[0]["item_id"]
    assert [e["command"] for e in client.of_type("command.delta")][-1] == TURN_LEFT
    assert done["latency_ms"] is not None and done["known_latency_ms"] <= done["latency_ms"]


def test_binary_frames_and_commit_close_the_segment_without_trailing_silence(gateway):
    client = Client(gateway.url)
    try:
        client.binary(utterance("command_1.wav", silence_s=0.0))
        client.send({"type": "input_audio_buffer.commit", "event_id": "c1"})
        committed = client.wait_for("input_audio_buffer.committed")
        done = client.wait_for("command.done")
    finally:
        client.close()
    assert done["command"] == TURN_LEFT and committed["item_id"] == done["item_id"]


BAD_INPUT = [  # (what the client sends, the error code it gets)
    ("{not json", "invalid_json"),
    ('["an", "array"]', "invalid_event"),
    ('{"type": "response.teleport"}', "unknown_event"),
    ('{"type": "input_audio_buffer.append", "audio": "***"}', "invalid_audio"),
    ('{"type": "input_audio_buffer.append", "audio": "AA=="}', "invalid_audio"),  # one byte: no PCM16
    (b"\x01\x02\x03", "invalid_audio"),  # a binary frame of odd length is no PCM16
    ('{"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/pcmu"}}}}}',
     "unsupported_audio_format"),
    ('{"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 44100}}}}}',
     "unsupported_audio_format"),
    (b"\x00" * (1024 * 1024 + 2), "message_too_large"),
    ('{"type": "response.create"}', "no_lm"),
]


def test_bad_input_gets_an_error_event_and_the_session_and_others_go_on(gateway):
    bad, good = Client(gateway.url), Client(gateway.url)
    try:
        good.append(utterance("command_1.wav"))  # streams while the other session misbehaves
        for message, code in BAD_INPUT:
            bad.ws.send(message)
            error = bad.wait_for("error")
            assert error["error"]["code"] == code, (message[:40], error)
        # The misbehaving session still works: its format is unchanged and its audio still goes through.
        bad.send({"type": "session.update", "session": {}})
        assert bad.wait_for("session.updated")["session"]["audio"]["input"]["format"]["rate"] == 16000
        bad.append(utterance("command_1.wav"))
        assert bad.wait_for("command.done")["command"] == TURN_LEFT
        assert good.wait_for("command.done")["command"] == TURN_LEFT
    finally:
        bad.close()
        good.close()
    assert not good.of_type("error")


def test_audio_faster_than_four_times_real_time_gets_an_error_and_is_dropped(gateway):
    client = Client(gateway.url)
    try:
        client.binary(b"\x00\x00" * 16000 * 10, chunk_bytes=16000)  # 10 s of silence at once: over the 4 s burst
        error = client.wait_for("error")
        assert error["error"]["code"] == "rate_limited"
        client.send({"type": "session.update", "session": {}})  # the session is still open
        client.wait_for("session.updated")
    finally:
        client.close()


def test_a_client_that_disconnects_mid_utterance_closes_its_stream_in_every_node(nodes, gateway):
    from nodekit import wait_subscribed

    from edge_stream.node.client import Subscriber

    outputs = [e for node in nodes.nodes.values() for e in node.endpoints["output"]]
    sub = Subscriber(["out/", "commands/"], connect=outputs, prefix=True)
    for node in nodes.nodes.values():
        wait_subscribed(node, sub)
    client = Client(gateway.url)
    stream = client.created["session"]["id"]
    try:
        client.append(utterance("command_1.wav", silence_s=0.0)[:2 * 20000])  # "turn left nine..": no end
        client.wait_for("command.delta")  # words reached the parser: every node holds the stream
    finally:
        client.close()
    closed, deadline = set(), time.monotonic() + 10.0
    while closed != set(nodes.nodes) and time.monotonic() < deadline:
        rec = sub.recv(0.5)
        if rec is not None and rec.header.get("stream") == stream and rec.header.get("event") == "closed":
            closed.add(rec.header["node"])
    sub.close()
    assert closed == set(nodes.nodes)
    for name, node in nodes.nodes.items():
        ctl = Control(node.endpoints["control"])
        try:
            assert stream not in ctl.request("status")["streams"], name
        finally:
            ctl.close()


def at_24k(pcm16: bytes) -> bytes:
    """16 kHz PCM16 -> 24 kHz (the OpenAI Realtime API's rate), linear interpolation."""
    x = np.frombuffer(pcm16, "<i2").astype(np.float64)
    t = np.arange(0, len(x) - 1, 16000 / 24000)
    return np.interp(t, np.arange(len(x)), x).round().astype("<i2").tobytes()


def test_the_openai_sdk_realtime_client_gets_transcript_and_command(nodes, tmp_path):
    """A client we did not write: the official `openai` SDK, pointed at the gateway by its base URL, its
    API key as the bearer token, sending 24 kHz audio (its API's rate) with session.update."""
    from openai import OpenAI

    (tmp_path / "token").write_text("sdk-secret\n")
    gw = nodes.gateway(token_file=str(tmp_path / "token")).start()
    client = OpenAI(api_key="sdk-secret", base_url=f"http://127.0.0.1:{gw.port}/v1", max_retries=0)
    seen: list = []
    try:
        with client.realtime.connect(model="edge-stream") as conn:
            conn.session.update(session={"type": "realtime",
                                         "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}}}})
            audio = at_24k(utterance("command_1.wav"))
            for i in range(0, len(audio), 4800):
                conn.input_audio_buffer.append(audio=base64.b64encode(audio[i:i + 4800]).decode())
            # The parser's command and the recognizer's transcript reach the gateway on two sockets: under
            # load the command.done can overtake the last word, so wait for both to be complete.
            deadline, last = time.monotonic() + 15.0, {"command.done", "conversation.item.input_audio_transcription.completed"}
            for event in conn:
                seen.append(event)
                if last <= {e.type for e in seen} or time.monotonic() > deadline:
                    break
    finally:
        gw.stop()
    types = [e.type for e in seen]
    assert types[:2] == ["session.created", "session.updated"]
    assert seen[1].session.audio.input.format.rate == 24000
    assert "input_audio_buffer.speech_started" in types
    words = "".join(e.delta for e in seen if e.type == "conversation.item.input_audio_transcription.delta")
    assert words == "turn left ninety degrees"
    assert next(e for e in seen if e.type == "command.done").to_dict()["command"] == TURN_LEFT


@pytest.fixture()
def token_gateway(nodes, tmp_path):
    (tmp_path / "token").write_text("s3cret\n")
    gw = nodes.gateway(token_file=str(tmp_path / "token"), origins=("https://robot.example",)).start()
    yield gw
    gw.stop()


def test_a_session_without_the_bearer_token_is_refused_with_401(token_gateway):
    with pytest.raises(InvalidStatus) as refused:
        Client(token_gateway.url)
    assert refused.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as wrong:
        Client(token_gateway.url, additional_headers={"Authorization": "Bearer wrong"})
    assert wrong.value.response.status_code == 401
    ok = Client(token_gateway.url, additional_headers={"Authorization": "Bearer s3cret"})  # same gateway, same time
    ok.close()


def test_a_browser_gives_the_token_as_a_subprotocol_and_gets_realtime_back(token_gateway):
    client = Client(token_gateway.url, subprotocols=["realtime", "bearer.s3cret"])
    try:
        assert client.ws.subprotocol == "realtime"  # the token is never echoed
    finally:
        client.close()


def test_origins_off_the_allow_list_are_refused_and_the_page_and_listed_ones_are_not(token_gateway):
    auth = {"Authorization": "Bearer s3cret"}
    with pytest.raises(InvalidStatus) as refused:
        Client(token_gateway.url, origin="http://evil.example", additional_headers=auth)
    assert refused.value.response.status_code == 403
    for origin in (f"http://127.0.0.1:{token_gateway.port}", "https://robot.example"):  # the page's own; listed
        Client(token_gateway.url, origin=origin, additional_headers=auth).close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command makes the test certificate")
def test_with_a_certificate_and_key_the_gateway_speaks_tls(nodes, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    gw = nodes.gateway(tls_cert=str(cert), tls_key=str(key)).start()
    try:
        assert gw.url.startswith("wss://")
        client = Client(gw.url, ssl=ssl.create_default_context(cafile=str(cert)))
        client.append(utterance("command_1.wav"))
        assert client.wait_for("command.done")["command"] == TURN_LEFT
        client.close()
        with pytest.raises(InvalidMessage):  # plain ws:// to a TLS port gets no handshake
            Client(gw.url.replace("wss://", "ws://"), open_timeout=5)
    finally:
        gw.stop()


def test_the_page_is_served_and_loads_nothing_from_elsewhere(gateway):
    import urllib.error
    import urllib.request

    for path, content_type in (("", "text/html"), ("app.js", "text/javascript"),
                               ("mic-worklet.js", "text/javascript"), ("style.css", "text/css")):
        with urllib.request.urlopen(gateway.page_url + path) as resp:
            body = resp.read().decode()
            assert resp.headers["Content-Type"].startswith(content_type), path
        assert "http://" not in body and "https://" not in body, path  # no absolute URL: no CDN, no fetch
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(gateway.page_url + "secrets.txt")
    assert missing.value.code == 404


@pytest.fixture(scope="module")
def lm_gateway(nodes):
    """The gateway with an LM node too (models/tiny-llama: random weights, so only the shape of the reply
    is tested), long generations allowed so that one can be cancelled midway."""
    any_port = {"bind": ["tcp://127.0.0.1:*"]}
    lm = Node(make_node_config(name="lm", input=any_port, output=any_port, control=any_port,
                               models=[{"name": "lm", "dir": str(ROOT / "models" / "tiny-llama"), "topics": ["chat"],
                                        "max_new_tokens": 4000, "stream_options": {"kv_window": 256,
                                                                                   "sink_tokens": 4}}])).start()
    gw = nodes.gateway(more_nodes=[lm], lm="lm").start()
    yield gw
    gw.stop()
    lm.stop()


def ask(client: Client, text: str) -> None:
    client.send({"type": "conversation.item.create",
                 "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}})
    client.send({"type": "response.create"})


def test_text_to_the_lm_streams_its_reply_as_output_text_events(lm_gateway):
    client = Client(lm_gateway.url)
    try:
        assert client.created["session"]["edge_stream"]["lm"] is True
        ask(client, "move forward")
        created = client.wait_for("response.created")
        client.wait_for("response.output_text.delta")
        client.send({"type": "response.cancel"})  # barge-in
        done = client.wait_for("response.done")
        text_done = client.of_type("response.output_text.done")[-1]
    finally:
        client.close()
    deltas = client.of_type("response.output_text.delta")
    assert done["response"]["id"] == created["response"]["id"] == deltas[0]["response_id"]
    assert done["response"]["status"] == "cancelled"
    assert text_done["text"] == "".join(d["delta"] for d in deltas)


def test_the_launch_files_gateway_names_its_nodes_and_a_wrong_name_is_refused(tmp_path):
    from edge_stream.errors import ConfigError
    from edge_stream.node.config import load_launch

    launch = load_launch(ROOT / "launch" / "voice_web.toml")
    (gw,) = launch.gateways
    assert (gw.vad, gw.recognizer, gw.parser, gw.listen) == ("vad", "recognizer", "parser", "127.0.0.1:8765")
    text = (ROOT / "launch" / "voice_web.toml").read_text().replace('parser = "parser"', 'parser = "parsr"')
    (tmp_path / "bad.toml").write_text(text.replace('"../models/', f'"{ROOT}/models/'))
    with pytest.raises(ConfigError, match=r"gateway\[0\]\.parser: no \[\[node\]\] named 'parsr'"):
        load_launch(tmp_path / "bad.toml")


def test_a_session_over_max_sessions_is_closed_with_1013_and_the_others_go_on(nodes):
    gw = nodes.gateway(max_sessions=1).start()
    first = Client(gw.url)
    try:
        with pytest.raises(ConnectionClosedError) as refused:
            Client(gw.url)
        assert refused.value.rcvd.code == 1013
        first.send({"type": "session.update", "session": {}})
        first.wait_for("session.updated")
    finally:
        first.close()
        gw.stop()
