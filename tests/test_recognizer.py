"""The streaming command recognizer: the committed model runs through BlockStream, any chunking
gives the same frames, greedy CTC decodes across block boundaries, and held-out voices are recognized."""

from __future__ import annotations

import json
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest

import edge_stream as es
from edge_stream.blocks import BlockStream, run_blocks_batched
from edge_stream.ctc import CtcDecoder
from edge_stream.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "models" / "command-recognizer"
COMMANDS = Path(__file__).parent / "data" / "commands"


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0


@pytest.fixture(scope="module")
def model():
    return es.load(MODEL_DIR, intra_op_threads=1)


@pytest.fixture(scope="module")
def commands():
    meta = json.loads((COMMANDS / "transcripts.json").read_text())
    return [(read_wav(COMMANDS / u["file"]), u) for u in meta["utterances"]]


def feed_all(stream, audio: np.ndarray, sizes) -> np.ndarray:
    """Feed `audio` in chunks of the given sizes (cycled); returns the frames' log-probs [frames, vocab]."""
    parts, pos, k = [], 0, 0
    while pos < len(audio):
        n = sizes[k % len(sizes)]
        out = stream.feed(audio[pos:pos + n])
        if out.n_blocks:
            parts.append(out.logits)
        pos, k = pos + n, k + 1
    return np.concatenate(parts)


def transcribe(model, audio: np.ndarray, chunk: int = 320) -> tuple[str, list]:
    """Stream `audio` (plus trailing silence to a whole block) and decode; (text, final words)."""
    stream, decoder = model.open_stream(), CtcDecoder.from_model(model)
    audio = np.concatenate([audio, np.zeros(-len(audio) % stream.block, np.float32)])
    words = []
    for pos in range(0, len(audio), chunk):
        out = stream.feed(audio[pos:pos + chunk])
        if out.n_blocks:
            words += [(w, stream.blocks_run * stream.block) for w in decoder.update(out.logits).words]
    text = decoder.text
    words += [(w, stream.blocks_run * stream.block) for w in decoder.finish().words]
    return text.strip(), words


# -- the committed model through the runtime ---------------------------------------------------

def test_committed_model_is_a_block_model_with_recurrent_states(model):
    m = model.manifest
    stream = model.open_stream()
    assert isinstance(stream, BlockStream)
    assert m.input.kind == "samples" and m.blocking.sample_rate == 16000
    assert m.blocking.context == 240 and m.blocking.block % 160 == 0
    assert m.states and all(s.kind == "recurrent" and s.batch_axis == 0 for s in m.states)
    assert m.events is None and m.output_for("logits") == "logprobs"
    out = stream.feed(np.zeros(m.blocking.block, np.float32))
    assert out.events == [] and out.n_blocks == 1
    assert out.logits.shape == (2, len(model.tokenizer.get_vocab()))
    np.testing.assert_allclose(np.exp(out.logits).sum(axis=1), 1.0, rtol=1e-4)  # log-probs


def test_vad_outputs_still_have_no_logits():
    out = es.blocks.BlockOutput(probs=np.zeros(1, np.float32), outputs={"output": np.zeros((1, 1), np.float32)})
    assert not hasattr(out, "logits")


def test_random_chunkings_give_identical_logits(model, commands):
    audio = commands[1][0]
    whole = model.open_stream().feed(audio).logits
    rng = np.random.default_rng(0)
    for _ in range(4):
        sizes = list(rng.integers(1, 1500, size=20))
        np.testing.assert_array_equal(feed_all(model.open_stream(), audio, sizes), whole)
    np.testing.assert_array_equal(feed_all(model.open_stream(), audio, [1]), whole[:len(audio) // 640 * 2])


def test_batched_streams_equal_separate_streams(model, commands):
    streams = [model.open_stream() for _ in commands[:3]]
    audios = [a[:16000] for a, _ in commands[:3]]
    batched = run_blocks_batched(streams, audios)
    for audio, out in zip(audios, batched):
        np.testing.assert_allclose(out.logits, model.open_stream().feed(audio).logits, atol=1e-5)


def test_snapshot_restore_replays_the_same_frames(model, commands):
    audio = commands[2][0]
    stream = model.open_stream()
    stream.feed(audio[:10000])
    snap = stream.snapshot()
    first = stream.feed(audio[10000:30000]).logits
    stream.restore(snap)
    np.testing.assert_array_equal(stream.feed(audio[10000:30000]).logits, first)


# -- recognition of held-out voices (committed WAVs, not seen in training) ----------------------

UNDERTRAINED = pytest.mark.xfail(
    strict=True, reason="the committed model is undertrained (800 steps on a shared 2-core machine: held-out "
    "WER 0.95, see models/command-recognizer/MODEL_CARD.md); retrain with more steps and drop this mark")


@UNDERTRAINED
def test_recognizes_heldout_commands(model, commands):
    results = [(u["text"], transcribe(model, audio)[0]) for audio, u in commands]
    wrong = [(ref, hyp) for ref, hyp in results if ref != hyp]
    assert not wrong, f"misrecognized (reference, hypothesis): {wrong}"


@UNDERTRAINED
def test_stop_is_final_as_soon_as_its_last_letter_is_decoded(model, commands):
    audio, meta = next((a, u) for a, u in commands if u["text"] == "stop")
    _, words = transcribe(model, audio)
    (event, ready), = words
    assert event.word == "stop" and event.reason == "lexicon"
    latency_ms = 1000 * (ready - meta["words"][0]["end_sample"]) / 16000
    assert latency_ms < 400, f"'stop' published {latency_ms:.0f} ms after the word ended"


# -- the CTC policy on hand-made frames ----------------------------------------------------------

SYMBOLS = ["<blank>", "'", " "] + list("abcdefghijklmnopqrstuvwxyz")


def frames(text: str) -> np.ndarray:
    """One-hot log-prob frames spelling `text` ('_' = blank)."""
    ids = [0 if c == "_" else SYMBOLS.index(c) for c in text]
    out = np.full((len(ids), len(SYMBOLS)), -10.0, np.float32)
    out[np.arange(len(ids)), ids] = 0.0
    return out


def test_ctc_collapses_repeats_across_block_boundaries():
    dec = CtcDecoder(SYMBOLS)
    assert dec.update(frames("ss")).text == "s"
    assert dec.update(frames("st")).text == "t"  # the carried 's' makes this frame a repeat
    assert dec.update(frames("oo")).text == "o"
    assert dec.text == "sto"


def test_ctc_blank_separates_a_doubled_letter():
    dec = CtcDecoder(SYMBOLS)
    dec.update(frames("ff_"))
    dec.update(frames("_ee"))
    dec.update(frames("_e"))
    assert dec.text == "fee"


def test_ctc_space_finishes_a_word_at_its_frame():
    dec = CtcDecoder(SYMBOLS)
    first = dec.update(frames("go_"))
    assert first.words == [] and first.partial == "go"
    res = dec.update(frames("_ l"))
    assert [(w.word, w.end_frame, w.final_frame, w.reason) for w in res.words] == [("go", 1, 4, "space")]
    assert res.partial == "l" and dec.text == "go l"


def test_ctc_no_leading_or_double_spaces():
    dec = CtcDecoder(SYMBOLS)
    dec.update(frames("  _ a _  "))
    dec.update(frames(" b"))
    assert dec.text == "a b"


def test_ctc_lexicon_word_is_final_without_waiting_for_a_space():
    dec = CtcDecoder(SYMBOLS, lexicon=["stop", "four", "fourteen"])
    res = dec.update(frames("_stop"))
    assert [(w.word, w.reason, w.final_frame) for w in res.words] == [("stop", "lexicon", 4)]
    res = dec.update(frames("four"))  # a prefix of 'fourteen': must wait
    assert res.words == [] and res.partial == "four"
    assert dec.text == "stop four"  # the space separating the lexicon word was inserted
    assert [(w.word, w.reason) for w in dec.finish().words] == [("four", "finish")]
    assert dec.text == ""  # finish() resets


def test_ctc_rejects_frames_of_the_wrong_width():
    with pytest.raises(InputError, match=r"expected \[n, 29\]"):
        CtcDecoder(SYMBOLS).update(np.zeros((3, 5), np.float32))


def test_decoder_reads_symbols_and_frame_length_from_the_model(model):
    dec = CtcDecoder.from_model(model)
    assert dec.symbols[dec.blank] == "<blank>" and " " in dec.symbols
    assert dec.frame_samples == 320 and "stop" in dec.lexicon


# -- the recipe ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_training_recipe_smoke_run(tmp_path, monkeypatch):
    """A few steps on a handful of synthesized utterances, ending in the recipe's own parity checks."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install -y espeak-ng)")
    from export import speech_data, train_recognizer

    monkeypatch.setattr(speech_data, "CACHE_DIR", tmp_path / "cache")
    train_recognizer.main(["-o", str(tmp_path / "rec"), "--smoke", "--threads", "1"])
    assert es.load(tmp_path / "rec").open_stream().feed(np.zeros(640, np.float32)).logits.shape == (2, 29)
