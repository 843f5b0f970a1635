"""ONNX Runtime thread-pool spinning and intra-op affinity (issue 14 §2) as load and launch options:
they reach the session (read back from ORT; affinity seen on the pool's threads) and bad values are
refused before a session exists, naming the option."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from nodekit import start_node

import edge_stream as es
from edge_stream.node.config import node_from_dict
from edge_stream.node.node import load_routes, make_node_config
from edge_stream.runtime.runner import ThreadOptions

LM_DIR = Path(__file__).resolve().parent.parent / "models" / "tiny-llama"  # committed
SPIN_KEYS = ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning")


def config_entry(model, key: str) -> str:
    return model.runner.session.get_session_options().get_session_config_entry(key)


def thread_cpus() -> dict[str, str]:
    """Thread id -> Cpus_allowed_list of every thread of this process (Linux)."""
    out = {}
    for task in Path("/proc/self/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                out[task.name] = line.split(":", 1)[1].strip()
    return out


@pytest.mark.parametrize("spinning", [False, True])
def test_spinning_reaches_the_session(spinning):
    model = es.load(LM_DIR, intra_op_threads=2, thread_options=ThreadOptions(spinning, spinning))
    assert [config_entry(model, k) for k in SPIN_KEYS] == ["1" if spinning else "0"] * 2


def test_spinning_is_on_when_not_set():
    """ORT's default and ours: measured in docs/benchmarks.md, "Decode vs onnxruntime-genai 0.18"."""
    model = es.load(LM_DIR, intra_op_threads=2)
    assert [config_entry(model, k) for k in SPIN_KEYS] == ["1", "1"]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 or os.cpu_count() < 2, reason="needs two CPUs")
def test_affinity_pins_the_intra_op_worker_thread():
    before = thread_cpus()
    last = os.cpu_count()  # ORT's 1-based processor `last` is CPU last - 1
    model = es.load(LM_DIR, intra_op_threads=2, thread_options=ThreadOptions(intra_op_thread_affinities=str(last)))
    assert config_entry(model, "session.intra_op_thread_affinities") == str(last)
    new = {t: cpus for t, cpus in thread_cpus().items() if t not in before}
    assert str(last - 1) in new.values()  # the pool's one worker thread runs on that CPU only


def test_launch_options_reach_the_session_of_a_node():
    node = start_node([{"name": "lm", "dir": str(LM_DIR), "topics": ["chat"], "threads": 2,
                        "intra_op_spinning": False, "inter_op_spinning": True,
                        "intra_op_thread_affinities": "1"}])
    try:
        model = node.routes[0].model
        assert [config_entry(model, k) for k in SPIN_KEYS] == ["0", "1"]
        assert config_entry(model, "session.intra_op_thread_affinities") == "1"
    finally:
        node.stop()


def test_a_spinning_value_that_is_not_a_boolean_is_refused_by_the_launch_file():
    table = {"name": "n", "input": {"bind": ["tcp://127.0.0.1:*"]}, "output": {"bind": ["tcp://127.0.0.1:*"]},
             "models": [{"name": "lm", "dir": str(LM_DIR), "topics": ["chat"], "intra_op_spinning": "yes"}]}
    with pytest.raises(es.ConfigError, match=r"node\.models\[0\]\.intra_op_spinning: expected bool, got str 'yes'"):
        node_from_dict(table)
    table["models"][0]["intra_op_spinning"] = False
    assert node_from_dict(table).models[0].intra_op_spinning is False


@pytest.mark.parametrize("threads, affinities, message", [
    (2, "1;2", r"intra_op_thread_affinities: expected 1 group\(s\) split by ';'"),
    (3, "1", r"intra_op_thread_affinities: expected 2 group\(s\)"),
    (2, "cpu1", r"intra_op_thread_affinities: 'cpu1' in 'cpu1' is not a logical processor"),
    (2, "0", r"intra_op_thread_affinities: '0' in '0' is not a logical processor 1\.\."),
    (2, "2-1", r"intra_op_thread_affinities: '2-1' in '2-1' is not a logical processor"),
    (2, str((os.cpu_count() or 1) + 1), r"intra_op_thread_affinities: '\d+' in '\d+' is not a logical processor"),
    (1, "1", r"intra_op_thread_affinities: needs an explicit intra-op thread count >= 2"),
])
def test_bad_affinities_are_refused_naming_the_option(threads, affinities, message):
    with pytest.raises(es.ConfigError, match=message):
        es.load(LM_DIR, intra_op_threads=threads, thread_options=ThreadOptions(intra_op_thread_affinities=affinities))
    assert es.load(LM_DIR, intra_op_threads=2, thread_options=ThreadOptions(intra_op_thread_affinities="1"))


def test_a_node_with_bad_affinities_names_the_route_and_the_option():
    cfg = make_node_config(name="n", input={"bind": ["tcp://127.0.0.1:*"]}, output={"bind": ["tcp://127.0.0.1:*"]},
                           models=[{"name": "lm", "dir": str(LM_DIR), "topics": ["chat"], "threads": 2,
                                    "intra_op_thread_affinities": "1;2"}])
    with pytest.raises(es.ConfigError, match=r"node 'n' model 'lm': intra_op_thread_affinities: expected 1 group"):
        load_routes(cfg)


def test_a_spinning_value_that_is_not_a_boolean_is_refused_by_the_python_api():
    with pytest.raises(es.ConfigError, match="intra_op_spinning: expected true or false, got 1"):
        es.load(LM_DIR, thread_options=ThreadOptions(intra_op_spinning=1))
