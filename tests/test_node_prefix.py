"""A route's `prefix_text` (issue 14 §4): encoded and run once at node start; every stream of the
route opens from it, and its outputs equal a runtime stream fed the prefix first."""

from __future__ import annotations

import numpy as np
import pytest
from nodekit import clients, collect, done_for, start_node

import edge_stream as es
from edge_stream.node.node import load_routes, make_node_config

PREFIX = "you are a small robot. answer in one short sentence. "
GEN = 6


@pytest.fixture(scope="module")
def node(lm_dir):
    n = start_node([{"name": "lm", "dir": str(lm_dir), "topics": ["chat"], "publish_logits": "all",
                     "max_new_tokens": GEN, "prefix_text": PREFIX}], workers=2)
    yield n
    n.stop()


def test_streams_of_a_prefixed_route_equal_a_runtime_stream_fed_the_prefix_first(node, lm_dir):
    lm = es.load(lm_dir, intra_op_threads=1)
    chunks = {"a": ["turn left", " and stop"], "b": ["where is the door"]}
    pub, sub, _ = clients(node, "chat", ["out/a", "out/b"])
    for i in range(2):
        for stream, texts in chunks.items():
            if i < len(texts):
                pub.send(text=texts[i], stream=stream)
    for stream in chunks:
        pub.end(stream=stream)
    recs = collect(sub, done_for("a"), timeout=30) + collect(sub, done_for("b"), timeout=30)
    n_prefix = lm.encode(PREFIX).size
    for stream, texts in chunks.items():
        ref = lm.open_stream()
        ref.feed(lm.encode(PREFIX))
        ref_logits = [ref.feed(lm.encode(t)).logits for t in texts]
        ref_ids = [p.token_id for p in ref.generate(GEN)]
        mine = [r for r in recs if r.header["stream"] == stream]
        fed = [r for r in mine if r.kind == "fed"]
        assert fed[0].header["position"] == n_prefix + lm.encode(texts[0]).size  # positions count the prefix
        for r, want in zip(fed, ref_logits):
            np.testing.assert_allclose(r.data, want, atol=1e-4, rtol=0)
        assert [r.header["token_id"] for r in mine if r.kind == "delta"] == ref_ids


def test_a_new_stream_of_the_route_starts_at_the_prefix_without_running_it(node):
    policy = node.routes[0].policy
    assert policy.prefix.fed == es.load(node.routes[0].cfg.dir).encode(PREFIX).size
    session = policy.open("x", {})
    assert session.stream.state is policy.prefix


def config(lm_dir, **route):
    return make_node_config(name="n", input={"bind": ["tcp://127.0.0.1:*"]}, output={"bind": ["tcp://127.0.0.1:*"]},
                            models=[{"name": "lm", "dir": str(lm_dir), "topics": ["chat"], **route}])


def test_an_empty_prefix_text_is_refused_by_the_launch_file(lm_dir):
    with pytest.raises(es.ConfigError, match=r"models\[0\]\.prefix_text: empty"):
        config(lm_dir, prefix_text="")


def test_a_prefix_longer_than_the_route_window_is_refused_at_start(lm_dir):
    with pytest.raises(es.ConfigError, match=r"prefix_text \(\d+ tokens\): .*window evicted"):
        load_routes(config(lm_dir, prefix_text=PREFIX, stream_options={"kv_window": 4, "sink_tokens": 2}))
    assert load_routes(config(lm_dir, prefix_text=PREFIX, stream_options={"kv_window": 64, "sink_tokens": 2}))


def test_prefix_text_on_a_route_that_is_not_an_lm_is_refused(vad_dir):
    with pytest.raises(es.ConfigError, match="prefix_text is for LM routes"):
        load_routes(config(vad_dir, prefix_text=PREFIX))
