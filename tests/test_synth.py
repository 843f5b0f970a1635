"""GnuSpeech as a training synthesizer (issue 10): real speech from the WebAssembly build through
node, word spans from its postures, talkers that differ, and a split that keeps its presets out of
training."""

from __future__ import annotations

import shutil

import pytest

from export import synth

pytestmark = pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None,
                                reason="node and npm are needed for GnuSpeech (python -m export.synth --list)")

TEXT = "don't move, then turn left ninety degrees"


@pytest.fixture(scope="module")
def spoken():
    engine = synth.ENGINES["gnuspeech"]
    return engine.synthesize_many([(TEXT, "male", 1.0, 0.0), (TEXT, "small_child", 1.0, 0.0),
                                   (TEXT, "g05", 1.2, 0.0), ("alright, the office is down the hall", "g05", 1.0, 0.0)])


def test_gnuspeech_speaks_every_word_with_a_span_in_order(spoken):
    for s in spoken:
        assert not isinstance(s, synth.SynthError), s
        assert s.word_spans is not None
        starts = [a for _, a, _ in s.word_spans]
        assert starts == sorted(starts) and all(0 <= a < b <= len(s.audio) for _, a, b in s.word_spans)
    assert [w for w, _, _ in spoken[0].word_spans] == ["don't", "move", "then", "turn", "left", "ninety", "degrees"]
    assert synth.check(spoken[0], TEXT) == []
    # a glottal stop the rules insert before a vowel-initial word does not shift the words
    assert [w for w, _, _ in spoken[3].word_spans] == ["alright", "the", "office", "is", "down", "the", "hall"]


def test_gnuspeech_talkers_differ_and_rate_shortens_speech(spoken):
    male, child = (synth.median_f0_hz(s.audio) for s in spoken[:2])
    assert child > 1.5 * male, (male, child)  # the small child's short tract and high glottal pitch
    assert len(spoken[2].audio) < 0.95 * len(spoken[0].audio)  # tempo 1.2


def test_gnuspeech_presets_never_train_and_training_talkers_are_fixed():
    train = {v.name for v in synth.voices("train", "gnuspeech")}
    held = {v.name for v in synth.voices("eval", "gnuspeech")}
    assert held == {"male", "female", "large_child", "small_child"} and not train & held
    assert len(train) == synth.GNUSPEECH_TRAIN_VOICES
    assert synth.gnuspeech_voice("g07") == synth.gnuspeech_voice("g07") != synth.gnuspeech_voice("g08")
    with pytest.raises(synth.SynthError, match="no voice 'g99'"):
        synth.gnuspeech_voice("g99")
    failed = synth.ENGINES["gnuspeech"].synthesize_many([("stop", "nobody", 1.0, 0.0)])[0]
    assert isinstance(failed, synth.SynthError) and "nobody" in str(failed)
