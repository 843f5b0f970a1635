"""Short VAD chunks that reach an idle worker run on the node's socket loop (`Worker.run_now`),
saving the thread hop; the outputs, their order and their numbering are the same whichever
thread ran a chunk."""

from __future__ import annotations

import time

import numpy as np
from nodekit import clients, collect, next_stats, random_chunks, runtime_vad, start_node

from edge_stream.node.node import INLINE_MAX_SAMPLES


def vad_node(vad_dir):
    return start_node([{"name": "vad", "dir": str(vad_dir), "topics": ["mic"]}], workers=1,
                      stats_interval_s=0.2, max_payload_bytes=64 * 1024)


def result_for(stream: str, seq: int):
    return lambda rec: rec.kind == "result" and rec.header.get("stream") == stream and rec.header["in_seq"] == seq


def test_paced_chunks_run_on_the_loop_and_equal_the_runtime(vad_dir, vad_model, speech):
    node = vad_node(vad_dir)
    try:
        pub, sub, _ = clients(node, "mic", ["out/paced", "stats"])
        chunks = random_chunks(speech[:48000], seed=3, sizes=(200, 2500))
        outs = []
        for chunk in chunks:  # one at a time: each finds the worker idle and nothing else waiting
            seq = pub.send(chunk, stream="paced", sr=16000)
            outs += collect(sub, result_for("paced", seq))
        stats = next_stats(sub, until=lambda h: h["chunks_in"] == len(chunks))
        assert stats["ran_on_loop"] == len(chunks)
        results = [r for r in outs if r.kind == "result"]
        ref, _ = runtime_vad(vad_model, chunks)
        assert len(results) == len(chunks)
        for r, probs in zip(results, ref):
            np.testing.assert_array_equal(r.data, probs)
        assert [r.header["seq"] for r in outs] == list(range(len(outs)))
    finally:
        node.stop()


def test_a_long_chunk_goes_to_the_worker(vad_dir, speech):
    node = vad_node(vad_dir)
    try:
        pub, sub, _ = clients(node, "mic", ["out/long", "stats"])
        seq = pub.send(speech[:INLINE_MAX_SAMPLES + 1], stream="long", sr=16000)
        assert collect(sub, result_for("long", seq))[-1].header["n_blocks"] == (INLINE_MAX_SAMPLES + 1) // 512
        assert next_stats(sub, until=lambda h: h["chunks_in"] == 1)["ran_on_loop"] == 0
        for i in range(3):
            seq = pub.send(speech[i * INLINE_MAX_SAMPLES:(i + 1) * INLINE_MAX_SAMPLES], stream="long", sr=16000)
            assert collect(sub, result_for("long", seq)), "no result for a short chunk"
        # The first may still find the worker finishing the long one (its turn ends after its last
        # output went out): then it is queued there, which is right too.
        assert next_stats(sub, until=lambda h: h["chunks_in"] == 4)["ran_on_loop"] >= 2
    finally:
        node.stop()


def test_chunks_wait_for_a_worker_that_holds_its_turn_and_keep_their_order(vad_dir, vad_model, speech):
    node = vad_node(vad_dir)
    try:
        pub, sub, _ = clients(node, "mic", ["out/a", "out/b", "stats"])
        chunks = random_chunks(speech[:40000], seed=5, sizes=(300, 2000))
        worker = node.workers[0]
        before = worker.submitted
        with worker.turn:  # as while the worker thread runs a job: the loop must not run one too
            sent = [pub.send(c, stream=name, sr=16000) for c in chunks[:6] for name in ("a", "b")]
            # Positive signal that they reached the loop and were submitted to the worker, not run.
            deadline = time.monotonic() + 5
            while worker.submitted - before < len(sent) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert worker.submitted - before == len(sent)
        outs = collect(sub, result_for("b", 5), timeout=10)
        for c in chunks[6:]:  # now paced again: back on the loop, after everything queued
            for name in ("a", "b"):
                seq = pub.send(c, stream=name, sr=16000)
                outs += collect(sub, result_for(name, seq))
        stats = next_stats(sub, until=lambda h: h["chunks_in"] == 2 * len(chunks))
        # All paced ones but perhaps the first, which may find the worker still ending its turn.
        assert stats["ran_on_loop"] >= 2 * (len(chunks) - 6) - 1
        ref, _ = runtime_vad(vad_model, chunks)
        for name in ("a", "b"):
            mine = [r for r in outs if r.header.get("stream") == name]
            results = [r for r in mine if r.kind == "result"]
            assert [r.header["in_seq"] for r in results] == list(range(len(chunks)))
            for r, probs in zip(results, ref):
                np.testing.assert_array_equal(r.data, probs)
            assert [r.header["seq"] for r in mine] == list(range(len(mine)))
    finally:
        node.stop()


def test_a_bad_chunk_on_the_loop_is_an_error_and_changes_nothing(vad_dir, vad_model, speech):
    node = vad_node(vad_dir)
    try:
        pub, sub, _ = clients(node, "mic", ["out/s", "errors", "stats"])
        good = [speech[:1000], speech[1000:2500]]
        seq0 = pub.send(good[0], stream="s", sr=16000)
        outs = collect(sub, result_for("s", seq0))
        bad = pub.send(speech[2500:3000], stream="s", sr=8000)  # the stream refuses its rate
        err = collect(sub, lambda r: r.kind == "error")[-1].header
        assert err["stream"] == "s" and err["in_seq"] == bad and err["code"] == "input" and "sr" in err["reason"]
        seq1 = pub.send(good[1], stream="s", sr=16000)
        outs += collect(sub, result_for("s", seq1))
        ref, _ = runtime_vad(vad_model, good)  # as if the bad chunk had never come
        results = [r for r in outs if r.kind == "result"]
        for r, probs in zip(results, ref):
            np.testing.assert_array_equal(r.data, probs)
        assert results[-1].header["samples"] == 2500
        stats = next_stats(sub, until=lambda h: h["chunks_in"] == 3)
        assert stats["ran_on_loop"] == 3 and stats["errors"] == 1
    finally:
        node.stop()
