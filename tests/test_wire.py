"""Wire protocol v1: encoding round trips, every rejection with its reason, topic delimiting."""

from __future__ import annotations

import math
import time

import msgpack
import numpy as np
import pytest
import zmq

from edge_stream import InputError, ProtocolError
from edge_stream.node import wire


def header(**over):
    h = {"v": 1, "stream": "s1", "pub_id": "abcd", "seq": 7, "kind": "chunk", "t_pub_ns": time.time_ns(),
         "dtype": "float32", "shape": [4]}
    h.update(over)
    return {k: v for k, v in h.items() if v is not ...}


def frames(h, payload=np.zeros(4, "<f4").tobytes(), topic=b"mic\x00"):
    out = [topic, msgpack.packb(h)]
    return out + ([payload] if payload is not None else [])


@pytest.mark.parametrize("dtype", sorted(wire.DTYPES))
def test_every_whitelisted_dtype_round_trips(dtype):
    data = (np.arange(12) % 7).astype(dtype).reshape(3, 4)
    fr = wire.encode_input("mic", "s1", "p1", 3, "chunk", data=data, t_capture_ns=5, sr=16000)
    msg = wire.decode_input([bytes(f) for f in fr])
    assert (msg.topic, msg.stream, msg.pub_id, msg.seq, msg.kind) == ("mic", "s1", "p1", 3, "chunk")
    assert msg.t_capture_ns == 5 and msg.extra == {"sr": 16000}
    assert msg.data.dtype == np.dtype(dtype) and np.array_equal(msg.data, data)


def test_big_endian_input_is_sent_little_endian():
    data = np.arange(5, dtype=">i4")
    fr = wire.encode_input("t", "s", "p", 0, "chunk", data=data)
    assert bytes(fr[2]) == np.arange(5, dtype="<i4").tobytes()


def test_text_chunk_round_trips_without_payload():
    fr = wire.encode_input("chat", "s", "p", 0, "chunk", text="hello")
    assert len(fr) == 2
    msg = wire.decode_input(fr)
    assert msg.text == "hello" and msg.data is None


def test_decoded_payload_is_a_view_of_the_frame():
    payload = bytearray(np.ones(4, "<f4").tobytes())
    msg = wire.decode_input(frames(header(), payload=payload))
    payload[0:4] = np.float32(9).tobytes()
    assert msg.data[0] == 9  # no copy was made


BAD = {
    "not msgpack": ([b"mic\x00", b"\xc1\xc1", b""], "not valid msgpack"),
    "header not a map": ([b"mic\x00", msgpack.packb([1, 2])], "must be a msgpack map"),
    "trailing bytes": ([b"mic\x00", msgpack.packb(header()) + b"\x00", b"x" * 16], "not valid msgpack"),
    "ext type": ([b"mic\x00", msgpack.packb({"v": 1, "x": msgpack.ExtType(5, b"ab")})], "max_ext_len"),
    "bin value": ([b"mic\x00", msgpack.packb({**header(), "x": b"\x00"}, use_bin_type=True),
                   bytes(16)], "not valid msgpack"),
    "unknown version": (frames(header(v=2)), "version 2 is not supported"),
    "missing seq": (frames(header(seq=...)), "'seq' is missing"),
    "missing stream": (frames(header(stream=...)), "'stream' is missing"),
    "seq not int": (frames(header(seq="7")), "'seq' must be int"),
    "negative seq": (frames(header(seq=-1)), "unsigned 64-bit"),
    "bool seq": (frames(header(seq=True)), "'seq' must be int"),
    "unknown kind": (frames(header(kind="explode")), "kind 'explode' is not one of"),
    "dtype not whitelisted": (frames(header(dtype="float64", shape=[2])), "dtype 'float64' is not allowed"),
    "object dtype": (frames(header(dtype="object")), "dtype 'object' is not allowed"),
    "size mismatch": (frames(header(shape=[5])), "needs 20"),
    "rank too high": (frames(header(shape=[1, 1, 1, 1, 4])), "1-4 non-negative ints"),
    "negative dim": (frames(header(shape=[-4])), "non-negative"),
    "empty chunk": (frames(header(shape=[0]), payload=b""), "empty chunk"),
    "no payload": (frames(header(), payload=None), "exactly one payload frame"),
    "two payloads": (frames(header()) + [b""], "exactly one payload frame"),
    "payload on end": (frames(header(kind="end")), "carries no payload"),
    "no dtype": (frames(header(dtype=...)), "needs 'dtype' and 'shape'"),
    "topic without NUL": (frames(header(), topic=b"mic"), "NUL"),
    "one frame": ([b"mic\x00"], "1 frame"),
    "stream with NUL": (frames(header(stream="a\x00b")), "printable string"),
    "stream too long": (frames(header(stream="s" * 200)), "1-128"),
    "empty text": (frames(header(text="", dtype=..., shape=...), payload=None), "non-empty string"),
    "oversize header": ([b"mic\x00", msgpack.packb({"pad": "x" * 70000})], "over the limit"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_message_is_rejected_with_its_reason(case):
    fr, reason = BAD[case]
    with pytest.raises(ProtocolError) as err:
        wire.decode_input(fr)
    assert reason in err.value.reason


def test_rejection_names_stream_and_seq_when_readable():
    with pytest.raises(ProtocolError) as err:
        wire.decode_input(frames(header(shape=[3])))
    assert (err.value.stream, err.value.seq, err.value.pub_id) == ("s1", 7, "abcd")
    assert "stream 's1' seq 7" in str(err.value)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_payload_is_an_input_error(bad):
    data = np.array([0, 1, bad, 2], dtype="<f4")
    with pytest.raises(InputError) as err:
        wire.decode_input(frames(header(), payload=data.tobytes()))
    assert "NaN or Inf" in err.value.reason and err.value.seq == 7


def test_payload_over_the_limit_is_rejected_before_reading_it():
    limits = wire.Limits(max_payload_bytes=1024)
    with pytest.raises(ProtocolError, match="over the limit of 1024"):
        wire.decode_input(frames(header(shape=[512]), payload=bytes(2048)), limits)


def test_encoding_refuses_dtypes_outside_the_whitelist():
    with pytest.raises(ProtocolError, match="float64"):
        wire.encode_input("t", "s", "p", 0, "chunk", data=np.zeros(3))


def test_output_round_trip_allows_empty_payload():
    fr = wire.encode_output("out/s", {"v": 1, "kind": "result", "seq": 0}, np.zeros(0, np.float32))
    msg = wire.decode_output(fr)
    assert msg.kind == "result" and msg.data.shape == (0,)


def test_topic_mic1_never_matches_mic10():
    """Real sockets: a subscriber of 'mic1' gets mic1's message and not mic10's."""
    ctx = zmq.Context()
    pub, sub = ctx.socket(zmq.PUB), ctx.socket(zmq.SUB)
    try:
        for s in (pub, sub):
            s.linger = 0
        port = pub.bind_to_random_port("tcp://127.0.0.1")
        sub.setsockopt(zmq.SUBSCRIBE, wire.topic_frame("mic1"))
        sub.connect(f"tcp://127.0.0.1:{port}")
        got = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not got:  # resend until the subscription has arrived
            pub.send_multipart(wire.encode_input("mic10", "s", "p", 0, "end"))
            pub.send_multipart(wire.encode_input("mic1", "s", "p", 0, "end"))
            while sub.poll(50):
                got.append(wire.decode_input(sub.recv_multipart()).topic)
        assert got and set(got) == {"mic1"}
    finally:
        pub.close()
        sub.close()
        ctx.term()
