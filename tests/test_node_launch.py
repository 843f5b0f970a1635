"""Launch files: validation naming the field, the XSUB/XPUB proxy topology, and `edge-stream run`
shutting down cleanly on SIGTERM and SIGINT."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
from nodekit import collect, done_for, wait_subscribed

from edge_stream import ConfigError
from edge_stream.bench.node import start_node_process
from edge_stream.node.client import Publisher, Subscriber
from edge_stream.node.config import launch_from_dict, load_launch
from edge_stream.node.node import Node
from edge_stream.node.proxy import Proxy

REPO = Path(__file__).resolve().parent.parent


def node_table(**over):
    t = {"name": "n", "input": {"bind": ["tcp://127.0.0.1:*"]}, "output": {"bind": ["tcp://127.0.0.1:*"]},
         "models": [{"name": "vad", "dir": "m", "topics": ["mic"]}]}
    t.update(over)
    return {"node": [t]}


@pytest.mark.parametrize("path", sorted((REPO / "launch").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_launch_files_are_valid(path):
    launch = load_launch(path)
    assert launch.nodes or launch.proxies
    for node in launch.nodes:
        assert all(Path(m.dir).is_absolute() or m.dir.startswith(str(path.parent)) for m in node.models)


@pytest.mark.parametrize("table, message", [
    (node_table(max_streamz=3), "node[0]: unknown field(s) max_streamz"),
    (node_table(max_streams="ten"), "node[0].max_streams: expected int"),
    (node_table(max_streams=0), "node[0].max_streams: must be > 0"),
    (node_table(gap_policy="panic"), "node[0].gap_policy: 'panic' is not one of event, reset"),
    (node_table(output_topic="out"), "node[0].output_topic: must contain '{stream}'"),
    (node_table(input={}), "node[0].input: at least one bind or connect endpoint"),
    (node_table(models=[{"name": "a", "dir": "m", "topics": ["mic"]}, {"name": "b", "dir": "m", "topics": ["mic"]}]),
     "node[0].models[1].topics: topic 'mic' already feeds model 'a'"),
    (node_table(models=[{"name": "a", "dir": "m", "topics": ["t"], "temperature": -1.0}]),
     "node[0].models[0]: need max_new_tokens >= 0, temperature >= 0"),
    (node_table(models=[{"name": "a", "topics": ["t"]}]), "node[0].models[0].dir: required field is missing"),
    (node_table(models=[{"name": "a", "dir": "m", "topics": ["t"], "trigger": "suffix"}]),
     "node[0].models[0].trigger_suffix: required"),
    (node_table(security={"curve": True}), "node[0].security.secret_key: required when curve = true"),
    ({"nodes": []}, "unknown table(s) nodes"),
    ({}, "no [[node]] or [[proxy]]"),
])
def test_invalid_launch_tables_name_the_field(table, message):
    with pytest.raises(ConfigError) as err:
        launch_from_dict(table)
    assert message in str(err.value)


def test_bad_toml_is_a_config_error(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("[[node]\nname = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_launch(f)


def test_sensors_and_nodes_meet_through_the_proxy(vad_dir):
    launch = launch_from_dict({"proxy": [{"name": "hub", "frontend": {"bind": ["tcp://127.0.0.1:*"]},
                                           "backend": {"bind": ["tcp://127.0.0.1:*"]}}]})
    proxy = Proxy(launch.proxies[0]).start()
    try:
        front, back = proxy.endpoints["frontend"], proxy.endpoints["backend"]
        launch = launch_from_dict({"node": [{
            "name": "behind-proxy", "input": {"connect": back}, "output": {"connect": front},
            "stats_interval_s": 0.2, "models": [{"name": "vad", "dir": str(vad_dir), "topics": ["mic"]}]}]})
        with Node(launch.nodes[0]) as node:
            sub = Subscriber(["out/p1", "stats"], connect=back)
            assert sub.recv_until(lambda r: r.kind == "stats", timeout=5)[-1].kind == "stats"
            pub = Publisher("mic", connect=front)
            assert pub.wait_ready(5)  # the node's subscription travelled through the proxy
            pub.send(np.zeros(1024, np.float32), stream="p1")
            pub.end(stream="p1")
            recs = collect(sub, done_for("p1"))
            assert [r.kind for r in recs] == ["result", "done"] and recs[0].header["node"] == node.cfg.name
            pub.close()
            sub.close()
    finally:
        proxy.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_run_serves_and_stops_cleanly_on_a_signal(vad_dir, tmp_path, sig):
    proc, ep_in, ep_out = start_node_process(str(vad_dir), "tcp", tmp_path)  # `edge-stream run`, ready
    try:
        sub = Subscriber(["out/c"], connect=[ep_out])
        pub = Publisher("mic", connect=[ep_in])
        assert pub.wait_ready(5)
        wait_subscribed(None, sub)
        pub.send(np.zeros(512, np.float32), stream="c")
        assert [r.kind for r in collect(sub, lambda r: True)] == ["result"]
        pub.send(np.zeros(512, np.float32), stream="c")  # still connected while the node stops
        proc.send_signal(sig)
        assert proc.wait(5) == 0
        assert "stopped" in proc.stdout.read()
        pub.close()
        sub.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
