"""`edge_stream.runtime.introspect`: draft manifests derived from standard I/O names load and
run on real exports (optimum, onnxruntime-genai's model builder, silero), and
inputs without a known role are refused by name."""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edge_stream as es
from edge_stream.cli.export import add_commands
from edge_stream.errors import ManifestError
from edge_stream.runtime.introspect import describe, draft_manifest

SILERO_DATA = Path(importlib.util.find_spec("silero_vad").origin).parent / "data"
# kind -> (layers, kv_heads, head_dim, position encoding, max positions) of export.tiny_models.CONFIGS
EXPECTED = {
    "llama": (2, 2, 16, "rotary", 1024),
    "qwen2": (2, 2, 16, "rotary", 1024),
    "gpt2": (2, 4, 16, "learned", 128),
}


def torch_logits(hf_dir: Path, ids: np.ndarray) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        return ref(torch.from_numpy(ids[None])).logits[0].numpy()  # [n, vocab]


def stream_logits(model_dir: Path, ids: np.ndarray, sizes) -> np.ndarray:
    stream = es.load(model_dir, intra_op_threads=1).open_stream()
    parts, i = [], 0
    for n in sizes:
        parts.append(stream.feed(ids[i:i + n]).logits)  # [n, vocab]
        i += n
    return np.concatenate(parts)


def fresh_copy(src: Path, dst: Path) -> Path:
    """The export without its manifest, as a user would have it before `inspect --write`."""
    shutil.copytree(src, dst)
    (dst / "manifest.json").unlink(missing_ok=True)
    return dst


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_optimum_export_gets_a_manifest_that_loads_and_streams(tiny_models, tmp_path, kind):
    hf_dir, onnx_dir = tiny_models(kind)
    model_dir = fresh_copy(onnx_dir, tmp_path / kind)
    layers, kv_heads, head_dim, encoding, max_pos = EXPECTED[kind]

    m = draft_manifest(model_dir)

    assert m.input.name == "input_ids" and m.input.kind == "tokens" and m.input.vocab_size == 512
    assert len(m.kv_states) == 2 * layers
    first = m.kv_states[0]
    assert (first.input, first.output) == ("past_key_values.0.key", "present.0.key")
    assert first.shape == (1, kv_heads, 0, head_dim) and first.seq_axis == 2 and first.batch_axis == 0
    assert {a.fill for a in m.aux} == {"attention_mask", "position_ids"}
    assert m.limits.position_encoding == encoding and m.limits.max_positions == max_pos
    assert m.tokenizer == "tokenizer.json" and m.stop_token_ids == (0,)
    assert m.output_for("logits") == "logits"

    m.save(model_dir)
    ids = np.random.default_rng(1).integers(0, 512, 40)
    np.testing.assert_allclose(stream_logits(model_dir, ids, [13, 1, 26]), torch_logits(hf_dir, ids), atol=1e-4)


def test_position_ids_without_config_is_refused_by_name(tiny_models, tmp_path):
    _, onnx_dir = tiny_models("llama")
    model_dir = fresh_copy(onnx_dir, tmp_path / "no-config")
    (model_dir / "config.json").unlink()
    with pytest.raises(ManifestError, match="position_ids"):
        draft_manifest(model_dir)


@pytest.fixture(scope="module")
def genai_llama(tiny_models, tmp_path_factory):
    """A tiny Llama through onnxruntime-genai's model builder (GroupQueryAttention, no position_ids)."""
    pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai's model builder is not installed")
    hf_dir, _ = tiny_models("llama")
    out = tmp_path_factory.mktemp("genai") / "llama-genai"
    cache = out.parent / "cache"
    from export.builder_env import builder_python  # the builder's own venv (transformers 5)

    proc = subprocess.run([str(builder_python()), "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir),
                           "-o", str(out), "-p", "fp32", "-e", "cpu", "-c", str(cache)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return hf_dir, out


def test_genai_builder_export_is_recognised_and_matches_torch(genai_llama):
    hf_dir, model_dir = genai_llama
    ops = _op_types(model_dir / "model.onnx")
    assert "GroupQueryAttention" in ops  # the builder's attention, not optimum's

    m = draft_manifest(model_dir)

    assert m.aux_for("position_ids") is None and m.aux_for("attention_mask") is not None
    assert m.limits.position_encoding == "implicit"
    assert m.limits.max_positions == 1024  # genai_config.json context_length: no config.json there
    assert m.stop_token_ids == (0,) and m.tokenizer == "tokenizer.json"
    assert [s.shape for s in m.kv_states] == [(1, 2, 0, 16)] * 4
    m.save(model_dir)
    ids = np.random.default_rng(2).integers(0, 512, 50)
    np.testing.assert_allclose(stream_logits(model_dir, ids, [7, 1, 1, 30, 11]), torch_logits(hf_dir, ids),
                               atol=1e-4)


def _op_types(path: Path) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}


def gqa_graph(path: Path, vocab=32, hidden=16, heads=2, kv_heads=1, head_dim=8, seed=0) -> Path:
    """A one-layer decoder on com.microsoft GroupQueryAttention with genai's I/O and no position_ids."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def weight(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    sym = lambda *d: list(d)  # noqa: E731
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, sym("batch_size", "sequence_length")),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, sym("batch_size", "total_sequence_length")),
        helper.make_tensor_value_info("past_key_values.0.key", TensorProto.FLOAT,
                                      sym("batch_size", kv_heads, "past_sequence_length", head_dim)),
        helper.make_tensor_value_info("past_key_values.0.value", TensorProto.FLOAT,
                                      sym("batch_size", kv_heads, "past_sequence_length", head_dim)),
    ]
    outputs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, sym("batch_size", "sequence_length", vocab)),
        helper.make_tensor_value_info("present.0.key", TensorProto.FLOAT,
                                      sym("batch_size", kv_heads, "total_sequence_length", head_dim)),
        helper.make_tensor_value_info("present.0.value", TensorProto.FLOAT,
                                      sym("batch_size", kv_heads, "total_sequence_length", head_dim)),
    ]
    inits = [weight("embed", vocab, hidden), weight("wq", hidden, heads * head_dim),
             weight("wk", hidden, kv_heads * head_dim), weight("wv", hidden, kv_heads * head_dim),
             weight("wo", heads * head_dim, vocab), numpy_helper.from_array(np.array([1], np.int64), "axis1"),
             numpy_helper.from_array(np.array(1, np.int64), "one")]
    nodes = [
        helper.make_node("Gather", ["embed", "input_ids"], ["x"]),  # [b, s, hidden]
        helper.make_node("MatMul", ["x", "wq"], ["q"]),
        helper.make_node("MatMul", ["x", "wk"], ["k"]),
        helper.make_node("MatMul", ["x", "wv"], ["v"]),
        # genai's convention: seqlens_k = tokens in the mask - 1, total = mask length.
        helper.make_node("ReduceSum", ["attention_mask", "axis1"], ["mask_sum"], keepdims=0),
        helper.make_node("Sub", ["mask_sum", "one"], ["seqlens64"]),
        helper.make_node("Cast", ["seqlens64"], ["seqlens_k"], to=TensorProto.INT32),
        helper.make_node("Shape", ["attention_mask"], ["mask_shape"]),
        helper.make_node("Gather", ["mask_shape", "one"], ["total64"]),
        helper.make_node("Cast", ["total64"], ["total_sequence_length"], to=TensorProto.INT32),
        helper.make_node("GroupQueryAttention",
                         ["q", "k", "v", "past_key_values.0.key", "past_key_values.0.value", "seqlens_k",
                          "total_sequence_length"],
                         ["attn", "present.0.key", "present.0.value"],
                         domain="com.microsoft", num_heads=heads, kv_num_heads=kv_heads),
        helper.make_node("MatMul", ["attn", "wo"], ["logits"]),
    ]
    graph = helper.make_graph(nodes, "gqa_decoder", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def test_hand_built_gqa_graph_streams_like_its_own_full_pass(tmp_path):
    model_dir = tmp_path / "gqa"
    gqa_graph(model_dir / "model.onnx")

    m = draft_manifest(model_dir)
    assert m.limits.position_encoding == "implicit" and m.input.vocab_size == 32
    assert [(s.input, s.output, s.shape) for s in m.states] == [
        ("past_key_values.0.key", "present.0.key", (1, 1, 0, 8)),
        ("past_key_values.0.value", "present.0.value", (1, 1, 0, 8))]
    m.save(model_dir)
    ids = np.random.default_rng(3).integers(0, 32, 24)
    whole = stream_logits(model_dir, ids, [24])
    np.testing.assert_allclose(stream_logits(model_dir, ids, [5, 1, 1, 9, 8]), whole, atol=1e-5)


def tiny_graph(path: Path, inputs: dict, outputs: dict) -> Path:
    """A graph that maps each output to Identity of an input: only its signature matters."""
    import onnx
    from onnx import TensorProto, helper

    types = {"int64": TensorProto.INT64, "float32": TensorProto.FLOAT}
    vi = lambda name, spec: helper.make_tensor_value_info(name, types[spec[0]], spec[1])  # noqa: E731
    nodes = [helper.make_node("Identity", [src], [name]) for name, (_, _, src) in outputs.items()]
    graph = helper.make_graph(nodes, "sig", [vi(n, s) for n, s in inputs.items()],
                              [vi(n, s[:2]) for n, s in outputs.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_input_without_a_known_role_is_refused_by_name(tmp_path):
    path = tiny_graph(tmp_path / "m.onnx",
                      {"input_ids": ("int64", ["batch", "seq"]), "mystery_gain": ("float32", [1])},
                      {"logits": ("int64", ["batch", "seq"], "input_ids")})
    with pytest.raises(ManifestError, match="'mystery_gain'.*no known role"):
        draft_manifest(path)


def test_generic_x_to_x_out_pair_is_a_recurrent_state(tmp_path):
    path = tiny_graph(tmp_path / "m.onnx",
                      {"frames": ("float32", ["batch", "time", 40]), "cache": ("float32", ["batch", 3, 64])},
                      {"features": ("float32", ["batch", "time", 40], "frames"),
                       "cache_out": ("float32", ["batch", 3, 64], "cache")})
    m = draft_manifest(path)
    assert m.input.kind == "frames" and m.input.feature_dim == 40
    (state,) = m.states
    assert (state.input, state.output, state.kind, state.shape) == ("cache", "cache_out", "recurrent", (1, 3, 64))
    assert [o.name for o in m.outputs] == ["features"]


def test_silero_state_and_sr_are_recognised():
    m = draft_manifest(SILERO_DATA / "silero_vad.onnx")
    assert m.input.name == "input" and m.input.kind == "samples"
    (state,) = m.states
    # silero's state is [2, batch, 128] with an unnamed batch dim: batch is axis 1, not 0.
    assert (state.input, state.output, state.kind) == ("state", "stateN", "recurrent")
    assert state.shape == (2, 1, 128) and state.batch_axis == 1
    assert m.aux_for("constant").name == "sr" and m.aux_for("constant").value == 16000
    assert m.outputs[0].role == "probability"


def test_h_c_to_hn_cn_pairs_are_recognised():
    m = draft_manifest(SILERO_DATA / "silero_vad_16k_sequence.onnx")
    assert {(s.input, s.output) for s in m.states} == {("h", "hn"), ("c", "cn")}
    assert all(s.kind == "recurrent" and s.shape == (1, 1, 128) for s in m.states)


def test_describe_reports_symbolic_dims_and_producer(genai_llama):
    info = describe(genai_llama[1])
    # genai 0.18's builder leaves the head axis symbolic; draft_manifest sizes it from genai_config.json.
    assert info.input("past_key_values.0.key").shape == ("batch_size", 2, "past_sequence_length", "kv_cache_dim")
    assert draft_manifest(genai_llama[1]).states[0].shape == (1, 2, 0, 16)
    assert info.output("logits").dtype == "float32"
    assert info.metadata["producer"] == "onnxruntime-genai"
    assert "past_sequence_length" in info.table()


def run_cli(argv) -> int:
    parser = argparse.ArgumentParser(prog="edge-stream")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_inspect_write_saves_a_manifest_that_loads(tiny_models, tmp_path, capsys):
    _, onnx_dir = tiny_models("gpt2")
    model_dir = fresh_copy(onnx_dir, tmp_path / "gpt2")

    assert run_cli(["inspect", str(model_dir / "model.onnx"), "--write"]) == 0

    out = capsys.readouterr().out
    assert "past_key_values.0.key" in out and "draft manifest" in out
    printed = json.loads(out[out.index("{"):out.rindex("}") + 1])
    assert printed == json.loads((model_dir / "manifest.json").read_text())
    assert es.load(model_dir).manifest.limits.position_encoding == "learned"


def test_inspect_of_unknown_roles_fails_with_the_reason(tmp_path, capsys):
    path = tiny_graph(tmp_path / "m.onnx", {"input_ids": ("int64", ["b", "s"]), "knob": ("float32", [1])},
                      {"logits": ("int64", ["b", "s"], "input_ids")})
    assert run_cli(["inspect", str(path), "--write"]) == 1
    assert "'knob'" in capsys.readouterr().err
    assert not (tmp_path / "manifest.json").exists()


def test_introspect_and_cli_commands_import_without_torch_or_onnx():
    """The runtime side (robots run it) must not pull in the export stack."""
    code = ("import sys, edge_stream.runtime.introspect, edge_stream.cli.export; "
            "print(sorted(m for m in ('torch', 'onnx', 'transformers', 'optimum') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
