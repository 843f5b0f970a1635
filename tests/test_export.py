"""`export.hf` end to end on tiny Hugging Face models (fp32, int8, fp16) with the parity
check of `export.parity` passing, and a corrupted export making it fail."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edge_stream as es
from export.hf import export_hf
from export.parity import TOLERANCES, check_parity

ROOT = Path(__file__).resolve().parents[1]


def ops(model_dir) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(model_dir / "model.onnx"), load_external_data=False).graph.node}


@pytest.fixture(scope="module")
def exports(tiny_models, tmp_path_factory):
    """(kind, precision) -> (hf_dir, out_dir, report), each exported once per module."""
    root = tmp_path_factory.mktemp("exports")
    done = {}

    def get(kind: str, precision: str):
        if (kind, precision) not in done:
            hf_dir, _ = tiny_models(kind)
            out = root / f"{kind}-{precision}"
            report = export_hf(str(hf_dir), out, precision=precision, chunkings=3)
            done[kind, precision] = (hf_dir, out, report)
        return done[kind, precision]

    return get


def test_fp32_export_through_the_cli_passes_parity_within_1e4(tiny_models, tmp_path):
    hf_dir, _ = tiny_models("llama")
    out = tmp_path / "llama-fp32"
    proc = subprocess.run([sys.executable, "-m", "export.hf", str(hf_dir), "-o", str(out), "--chunkings", "3"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "parity [fp32]" in proc.stdout and "PASS" in proc.stdout
    for step in ("[1/4]", "[2/4]", "[3/4]", "[4/4]"):  # progress on every long step
        assert step in proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision"] == "fp32" and manifest["source"]["hf"] == str(hf_dir)
    assert (out / "tokenizer.json").is_file()
    model = es.load(out)
    assert model.encode("move forward").size > 0  # the copied tokenizer works


@pytest.mark.parametrize("kind,precision", [("llama", "int8"), ("llama", "fp16"), ("gpt2", "fp16"),
                                            ("qwen2", "int8")])
def test_reduced_precision_export_passes_its_parity_bounds(exports, kind, precision):
    _, out, report = exports(kind, precision)
    assert report.passed, report.summary()
    assert report.top1_agreement >= TOLERANCES[precision].top1
    assert es.load_manifest(out).precision == precision


def test_int8_export_quantises_matmul_weights_only(exports):
    _, out, _ = exports("llama", "int8")
    graph_ops = ops(out)
    assert "DynamicQuantizeLinear" in graph_ops or "DynamicQuantizeMatMul" in graph_ops
    assert "MatMulInteger" in graph_ops or "DynamicQuantizeMatMul" in graph_ops
    assert "Gather" in graph_ops  # the embedding stays fp32


def test_fp16_manifest_states_kv_dtype_of_the_graph_and_logits_stay_fp32(exports):
    _, out, _ = exports("llama", "fp16")
    m = es.load_manifest(out)
    assert {s.dtype for s in m.kv_states} == {"float16"}
    model = es.load(out)
    assert model.runner.input_types["past_key_values.0.key"] == "float16"
    logits = model.open_stream().feed(np.array([1, 2, 3])).logits
    assert logits.dtype == np.float32 and logits.shape == (3, 512)


def test_fp16_keeps_rotary_angles_in_fp32(exports):
    """Positions past 2048 lose whole radians in fp16: the Cos/Sin inputs must stay fp32."""
    import onnx

    _, out, _ = exports("llama", "fp16")
    model = onnx.shape_inference.infer_shapes(onnx.load(str(out / "model.onnx")))
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    cos_inputs = [n.input[0] for n in model.graph.node if n.op_type in ("Cos", "Sin")]
    assert cos_inputs and all(types[i] == onnx.TensorProto.FLOAT for i in cos_inputs)


def corrupt_one_weight(src, dst, delta: float):
    """Copy an export and add `delta` to one element of its largest MatMul weight."""
    import onnx
    from onnx import numpy_helper

    shutil.copytree(src, dst)
    model = onnx.load(str(dst / "model.onnx"))
    matmul_inputs = {i for n in model.graph.node if n.op_type == "MatMul" for i in n.input}
    target = max((t for t in model.graph.initializer if t.name in matmul_inputs),
                 key=lambda t: np.prod(t.dims))
    w = numpy_helper.to_array(target).copy()
    w.flat[0] += delta
    target.CopyFrom(numpy_helper.from_array(w, target.name))
    onnx.save(model, str(dst / "model.onnx"))


def test_corrupted_fp32_export_fails_the_parity_check(tiny_models, tmp_path):
    hf_dir, onnx_dir = tiny_models("llama")
    bad = tmp_path / "corrupted"
    corrupt_one_weight(onnx_dir, bad, delta=0.05)
    proc = subprocess.run([sys.executable, "-m", "export.parity", str(bad), "--reference", str(hf_dir),
                           "--chunkings", "2"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr[-2000:]
    assert "FAIL: max_abs_err" in proc.stdout


def test_int8_bounds_reject_a_sign_flipped_weight_scale(exports, tmp_path):
    """A broken quantisation (layer 0's MLP down-projection scale negated) must not pass as
    int8 noise. (Attention weights of a random model barely move its logits: not a fair probe.)"""
    import onnx
    from onnx import numpy_helper

    hf_dir, out, _ = exports("llama", "int8")
    bad = tmp_path / "bad-int8"
    shutil.copytree(out, bad)
    model = onnx.load(str(bad / "model.onnx"))
    down = next(n for n in model.graph.node if n.op_type == "MatMulInteger" and "layers.0/mlp/down_proj" in n.name)
    scale_name = down.input[1].removesuffix("_quantized") + "_scale"
    target = next(t for t in model.graph.initializer if t.name == scale_name)
    target.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(target), target.name))
    onnx.save(model, str(bad / "model.onnx"))
    report = check_parity(bad, hf_dir, chunkings=2)
    assert not report.passed, report.summary()


# ----- --graph gqa: onnxruntime-genai's model builder --------------------------------------


@pytest.fixture(scope="module")
def gqa_exports(tiny_models, tmp_path_factory):
    """(kind, precision) -> (out_dir, report) for `--graph gqa`, each exported once per module."""
    from export.gqa import builder_missing

    if builder_missing():
        pytest.skip(builder_missing())
    root = tmp_path_factory.mktemp("gqa-exports")
    done = {}

    def get(kind: str, precision: str):
        if (kind, precision) not in done:
            hf_dir, _ = tiny_models(kind)
            out = root / f"{kind}-{precision}"
            done[kind, precision] = (out, export_hf(str(hf_dir), out, precision=precision, chunkings=3, graph="gqa"))
        return done[kind, precision]

    return get


def nbits(model_dir) -> set[int]:
    import onnx

    graph = onnx.load(str(model_dir / "model.onnx"), load_external_data=False).graph
    return {onnx.helper.get_attribute_value(a) for n in graph.node if n.op_type == "MatMulNBits"
            for a in n.attribute if a.name == "bits"}


def test_gqa_export_through_the_cli_passes_parity_within_1e4(tiny_models, tmp_path):
    from export.gqa import builder_missing

    if builder_missing():
        pytest.skip(builder_missing())
    hf_dir, _ = tiny_models("qwen2")
    out = tmp_path / "qwen2-gqa"
    proc = subprocess.run([sys.executable, "-m", "export.hf", str(hf_dir), "-o", str(out), "--graph", "gqa",
                           "--chunkings", "3"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "parity [fp32]" in proc.stdout and "PASS" in proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kv_io"] == "shared_buffer" and "onnxruntime-genai" in manifest["source"]["exporter"]
    assert (out / "genai_config.json").is_file()  # genai runs the very same folder
    assert "GroupQueryAttention" in ops(out)


@pytest.mark.parametrize("precision,bits", [("int8", 8), ("int4", 4)])
def test_gqa_quantised_exports_use_matmulnbits_and_pass_their_bounds(gqa_exports, precision, bits):
    out, report = gqa_exports("llama", precision)
    assert report.passed, report.summary()
    assert nbits(out) == {bits} and "MatMul" not in ops(out)  # every weight MatMul is quantised
    assert es.load_manifest(out).precision == precision


def test_gqa_int8_qgemm_export_runs_integer_gemm_and_passes_its_bounds(gqa_exports):
    """int8-qgemm: every weight matmul is DynamicQuantizeMatMul with per-channel int8 weights (no
    MatMulNBits left), the streamed logits pass the int8-qgemm bounds against PyTorch, and the
    graph's logits stay close to the builder's own int8 build it was converted from."""
    import onnx

    out, report = gqa_exports("llama", "int8-qgemm")
    assert report.passed, report.summary()
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    kinds = [n.op_type for n in graph.node]
    assert "MatMulNBits" not in kinds and "MatMul" not in kinds and kinds.count("DynamicQuantizeMatMul") >= 5
    inits = {t.name: t for t in graph.initializer}
    for node in (n for n in graph.node if n.op_type == "DynamicQuantizeMatMul"):
        weight, scale = inits[node.input[1]], inits[node.input[2]]
        assert weight.data_type == onnx.TensorProto.INT8 and list(scale.dims) == [weight.dims[1]]  # per channel
    assert es.load_manifest(out).precision == "int8-qgemm"
    nbits_out, nbits_report = gqa_exports("llama", "int8")
    assert report.kl_mean < 10 * max(nbits_report.kl_mean, 1e-5)  # same order as the block-wise int8


def test_qgemm_conversion_reproduces_matmulnbits_weights(tmp_path):
    """export.qgemm reads MatMulNBits' packed blocks (8 and 4 bits) back into the weight ORT multiplies
    by: ORT's own MatMulNBits output equals x @ nbits_weight(...), and the per-channel int8 graph
    it writes stays within int8 rounding of it."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    from export.qgemm import nbits_weight, to_qgemm

    rng = np.random.default_rng(0)
    k, n = 96, 40  # K not a multiple of the 32-block: the last block is padded
    w = rng.normal(size=(k, n)).astype(np.float32)
    x = rng.normal(size=(5, k)).astype(np.float32)
    for bits in (8, 4):
        graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])],
                                  [numpy_helper.from_array(w, "W")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, accuracy_level=0, bits=bits)
        quant = MatMulNBitsQuantizer(model, bits=bits, block_size=32, is_symmetric=True, algo_config=config)
        quant.process()
        path = tmp_path / f"nbits{bits}.onnx"
        onnx.save(quant.model.model, str(path))
        qgraph = quant.model.model.graph
        node = next(nd for nd in qgraph.node if nd.op_type == "MatMulNBits")
        inits = {t.name: numpy_helper.to_array(t) for t in qgraph.initializer}
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        zp = inits[node.input[3]] if len(node.input) > 3 and node.input[3] else None
        w_nbits = nbits_weight(inits[node.input[1]], inits[node.input[2]], zp, k, n, bits, attrs["block_size"])
        y_nbits = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
        np.testing.assert_allclose(x @ w_nbits, y_nbits, rtol=1e-4, atol=1e-4)
        assert np.abs(w_nbits - w).max() <= np.abs(w).max() / (2 ** (bits - 1) - 1)  # it is the weight

        assert to_qgemm(path) == 1
        y_qgemm = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
        scale = np.abs(y_nbits).max()
        assert np.abs(y_qgemm - y_nbits).max() < 0.03 * scale  # int8 weights and activations


def test_the_model_builder_runs_beside_optimum_in_its_own_environment():
    """genai's builder needs transformers 5, optimum-onnx < 4.58: the builder's venv has the one,
    this environment keeps the other, and both share the rest (torch from here)."""
    from export.builder_env import GENAI_VERSION, builder_python
    from export.gqa import builder_missing

    if builder_missing():
        pytest.skip(builder_missing())
    probe = "import onnxruntime_genai, torch, transformers; print(onnxruntime_genai.__version__, transformers.__version__, torch.__file__)"
    genai, theirs, torch_file = subprocess.run([str(builder_python()), "-c", probe], capture_output=True,
                                               text=True, check=True).stdout.split()
    torch = pytest.importorskip("torch")  # the export extra
    transformers = pytest.importorskip("transformers")
    assert genai == GENAI_VERSION and int(theirs.split(".")[0]) >= 5
    assert int(transformers.__version__.split(".")[0]) == 4  # optimum-onnx's range, here
    assert Path(torch_file) == Path(torch.__file__)  # shared, not installed twice


def test_int4_needs_the_gqa_graph(tiny_models, tmp_path):
    hf_dir, _ = tiny_models("llama")
    proc = subprocess.run([sys.executable, "-m", "export.hf", str(hf_dir), "-o", str(tmp_path / "x"),
                           "--precision", "int4"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "--precision: expected one of fp32, int8, fp16" in proc.stderr
