"""Shared fixtures: tiny models built from configs once per test session (no downloads)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

TINY_KINDS = ("llama", "qwen2", "gpt2")


def export_tiny(kind: str, root: Path) -> tuple[Path, Path]:
    """Build a tiny HF model of `kind` and its ONNX model directory; returns (hf_dir, onnx_dir)."""
    from optimum.exporters.onnx import main_export

    from edge_stream.runtime.introspect import draft_manifest
    from export.tiny_models import build_tiny

    hf_dir = build_tiny(kind, root / f"{kind}-hf")
    onnx_dir = root / f"{kind}-onnx"
    main_export(str(hf_dir), output=str(onnx_dir), task="text-generation-with-past")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (hf_dir / name).exists():
            shutil.copy(hf_dir / name, onnx_dir / name)
    draft_manifest(onnx_dir).save(onnx_dir)
    return hf_dir, onnx_dir


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    logging.getLogger("optimum").setLevel(logging.ERROR)
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="session")
def tiny_models(tiny_root):
    """kind -> (hf_dir, onnx_dir), built lazily once per session."""
    built: dict[str, tuple[Path, Path]] = {}

    def get(kind: str) -> tuple[Path, Path]:
        if kind not in built:
            built[kind] = export_tiny(kind, tiny_root)
        return built[kind]

    return get


@pytest.fixture(scope="session")
def loaded_models(tiny_models):
    """kind -> (edge_stream Model, torch reference model), loaded once per session."""
    import torch
    from transformers import AutoModelForCausalLM

    import edge_stream as es

    torch.set_num_threads(1)
    cache = {}

    def get(kind: str):
        if kind not in cache:
            hf_dir, onnx_dir = tiny_models(kind)
            ref = AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation="eager").eval()
            cache[kind] = (es.load(onnx_dir, intra_op_threads=1), ref)
        return cache[kind]

    return get


@pytest.fixture(scope="session")
def gqa(tiny_models, loaded_models, tiny_root):
    """(gqa Model, torch reference): the tiny Llama exported with `--graph gqa` (shared KV buffer)."""
    import edge_stream as es
    from export.gqa import builder_missing
    from export.hf import export_hf

    if builder_missing():
        pytest.skip(builder_missing())
    hf_dir, _ = tiny_models("llama")
    out = tiny_root / "llama-gqa"
    if not (out / "manifest.json").exists():
        export_hf(str(hf_dir), out, graph="gqa", check=False)
    return es.load(out, intra_op_threads=1), loaded_models("llama")[1]


@pytest.fixture(scope="session")
def gqa_kv8(gqa, tiny_models, tiny_root):
    """The tiny Llama exported with `--graph gqa --kv-precision int8`: the same fp32 weights as
    `gqa`, its KV cache int8 with calibrated per-channel scales."""
    import edge_stream as es
    from export.hf import export_hf

    hf_dir, _ = tiny_models("llama")
    out = tiny_root / "llama-gqa-kv8"
    if not (out / "manifest.json").exists():
        export_hf(str(hf_dir), out, graph="gqa", kv_precision="int8", check=False)
    return es.load(out, intra_op_threads=1)


PARSER_DIR = Path(__file__).resolve().parent.parent / "models" / "command-parser"  # committed


@pytest.fixture(scope="session")
def parser_model():
    """The committed command-parser model, loaded once per session."""
    import edge_stream as es

    return es.load(PARSER_DIR)


@pytest.fixture
def parser(parser_model):
    """A fresh CommandParser over the committed model (one utterance at a time)."""
    from edge_stream.voice.command_parser import CommandParser

    return CommandParser(parser_model)


SPEECH_WAV = Path(__file__).parent / "data" / "speech_16k.wav"  # espeak-ng speech, 16 kHz


@pytest.fixture(scope="session")
def vad_dir(tmp_path_factory) -> Path:
    """Silero VAD exported once per test session (read-only for every test)."""
    from export import silero_vad

    return silero_vad.export(tmp_path_factory.mktemp("silero-vad"))


@pytest.fixture(scope="session")
def lm_dir(tiny_models) -> Path:
    """The tiny Llama (optimum graph) the node tests serve."""
    return tiny_models("llama")[1]


@pytest.fixture(scope="session")
def lm(lm_dir):
    import edge_stream as es

    return es.load(lm_dir, intra_op_threads=1)


@pytest.fixture(scope="session")
def vad_model(vad_dir):
    import edge_stream as es

    return es.load(vad_dir, intra_op_threads=1)


@pytest.fixture(scope="session")
def speech():
    from edge_stream.audio import read_wav_float32

    samples, sr = read_wav_float32(SPEECH_WAV)
    assert sr == 16000
    return samples
