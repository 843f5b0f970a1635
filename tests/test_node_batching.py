"""Cross-stream batching in the node: VAD chunks of different streams that wait on a worker run
as one model run, and every stream still gets exactly what the runtime gives it alone, in order."""

from __future__ import annotations

import time

import numpy as np
import pytest
from nodekit import clients, random_chunks, runtime_vad, start_node

from edge_stream.errors import InputError
from edge_stream.node.policies import BlockPolicy


def chunked(samples: np.ndarray, seed: int) -> list[np.ndarray]:
    return random_chunks(samples, seed, sizes=(200, 2500))


def test_policy_batch_equals_each_stream_alone(vad_model, speech):
    policy = BlockPolicy(vad_model, cfg=None)
    audios = [speech, speech[::-1].copy(), np.roll(speech, 7000)]
    chunks = [chunked(a, seed) for seed, a in enumerate(audios)]
    sessions = [vad_model.open_stream() for _ in audios]

    class Msg:  # the three fields a policy reads from a wire.InMessage
        def __init__(self, data):
            self.data, self.text, self.extra = data, None, {"sr": 16000}

    got = [[] for _ in audios]
    for step in range(min(map(len, chunks))):
        per_stream = policy.chunks_batched(sessions, [Msg(c[step]) for c in chunks])
        for k, outs in enumerate(per_stream):
            assert outs[0].kind == "result" and outs[0].infer_ms > 0
            got[k].append(outs[0].data)
    for k in range(len(audios)):
        ref, _ = runtime_vad(vad_model, chunks[k][:len(got[k])])
        for a, b in zip(got[k], ref):
            np.testing.assert_array_equal(a, b)


def test_a_refused_chunk_in_a_batch_changes_no_stream(vad_model, speech):
    policy = BlockPolicy(vad_model, cfg=None)
    a, b = vad_model.open_stream(), vad_model.open_stream()

    class Msg:
        def __init__(self, data):
            self.data, self.text, self.extra = data, None, {}

    with pytest.raises(InputError, match="float64"):  # finiteness is the wire's; the stream checks dtype
        policy.chunks_batched([a, b], [Msg(speech[:4000]), Msg(np.zeros(600, np.float64))])
    assert a.samples_fed == b.samples_fed == 0


def test_burst_of_streams_on_one_worker_is_batched_and_equals_the_runtime(vad_dir, vad_model, speech):
    node = start_node([{"name": "vad", "dir": str(vad_dir), "topics": ["mic"]}], workers=1,
                      stats_interval_s=0.2, max_payload_bytes=64 * 1024)
    try:
        names = [f"burst{i}" for i in range(6)]
        pub, sub, _ = clients(node, "mic", [f"out/{n}" for n in names] + ["stats"], sndhwm=100_000)
        chunks = {n: chunked(speech, seed=10 + i) for i, n in enumerate(names)}
        for step in range(max(map(len, chunks.values()))):  # all at once: the worker falls behind
            for n in names:
                if step < len(chunks[n]):
                    pub.send(chunks[n][step], stream=n, sr=16000)
        for n in names:
            pub.end(stream=n)
        recs, pending, stats = [], set(names), None
        deadline = time.monotonic() + 30
        while (pending or stats is None) and time.monotonic() < deadline:
            rec = sub.recv(1.0)
            if rec is None:
                continue
            if rec.kind == "stats":
                if not pending:
                    stats = rec.header
                continue
            recs.append(rec)
            if rec.kind == "done":
                pending.discard(rec.header["stream"])
        assert not pending, f"no done for {pending}"
        assert stats is not None and stats["batched"] > 0, "no chunk ever ran batched"
        for n in names:
            mine = [r for r in recs if r.header.get("stream") == n]
            results = [r for r in mine if r.kind == "result"]
            assert [r.header["in_seq"] for r in results] == list(range(len(chunks[n])))
            ref_probs, ref_events = runtime_vad(vad_model, chunks[n])
            for r, ref in zip(results, ref_probs):
                np.testing.assert_array_equal(r.data, ref)
            events = [(r.header["event"], r.header["sample"]) for r in mine
                      if r.kind == "event" and r.header["event"].startswith("speech")]
            assert events == ref_events and events
            assert [r.header["seq"] for r in mine] == list(range(len(mine)))  # one ordered output stream
    finally:
        node.stop()
