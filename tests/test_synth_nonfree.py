"""The synthesizers from Debian's contrib and non-free (issue 10). MBROLA trains: diphone voices
driven by espeak-ng's front end, word spans from the phone durations that `mbrola` renders exactly,
us3 kept out of training. Pico is held out entirely, with approximate word ends."""

from __future__ import annotations

import pytest

from export import synth
from export.speech_data import SAMPLE_RATE

ENGINE = synth.ENGINES["mbrola"]
PICO = synth.ENGINES["pico"]
needs_mbrola = pytest.mark.skipif(not ENGINE.available() or not ENGINE.voice_names(),
                                  reason=f"mbrola is not installed ({synth.MBROLA_APT})")
needs_pico = pytest.mark.skipif(not PICO.available(), reason="pico2wave is not installed (libttspico-utils)")

# "there again" and "four and" take a linking r that neither word has alone
TEXT = "stop right there again, then turn four and a half meters"


@pytest.fixture(scope="module")
def spoken():
    return {(v, rate, pitch): ENGINE.synthesize(TEXT, v, rate, pitch)
            for v in ENGINE.voice_names() for rate, pitch in ((1.0, 0.0), (1.25, 4.0))}


@needs_mbrola
def test_every_voice_speaks_every_word_with_a_span_in_order(spoken):
    words = TEXT.replace(",", "").split()
    for key, s in spoken.items():
        assert s.word_spans is not None, key
        assert [w for w, _, _ in s.word_spans] == words
        assert synth.check(s, TEXT) == [], key
        # spans tile the speech: each starts where the previous ended or later, the pause after "again"
        # lies between words, and the last word ends inside the PAD_S of trailing silence
        assert all(b[1] >= a[2] for a, b in zip(s.word_spans, s.word_spans[1:])), key
        assert len(s.audio) - 2 * synth.PAD_S * SAMPLE_RATE <= s.word_spans[-1][2] <= len(s.audio), key
        loud = [abs(s.audio[a:b].astype(float)).mean() for _, a, b in s.word_spans]
        assert min(loud) > 50, (key, loud)  # no span lies in silence


@needs_mbrola
def test_rate_and_pitch_move_the_voice(spoken):
    for v in ENGINE.voice_names():
        plain, fast = spoken[(v, 1.0, 0.0)], spoken[(v, 1.25, 4.0)]
        assert len(fast.audio) < 0.9 * len(plain.audio), v
        assert synth.median_f0_hz(fast.audio) > 1.12 * synth.median_f0_hz(plain.audio), v  # +4 semitones is 1.26x


@needs_mbrola
def test_us3_never_trains_and_a_missing_voice_is_named():
    assert {v.name for v in synth.voices("train", "mbrola")} == {"us1", "us2", "en1"}
    assert {v.name for v in synth.voices("extra", "mbrola")} == {f"{v}-en" for v in synth.ACCENTED_MBROLA}
    assert {v.name for v in synth.voices("eval", "mbrola")} == {"us3"}
    with pytest.raises(synth.SynthError, match="no voice 'de9'"):
        ENGINE.synthesize("stop", "de9")


@needs_pico
def test_pico_is_held_out_and_its_approximate_spans_are_in_order():
    assert {v.name for v in synth.voices("heldout-engine", "pico")} == {"en-US", "en-GB"}
    assert not synth.voices("train", "pico")
    for voice in PICO.voice_names():
        plain, fast = PICO.synthesize(TEXT, voice), PICO.synthesize(TEXT, voice, 1.3, 4.0)
        for s in (plain, fast):
            assert [w for w, _, _ in s.word_spans] == TEXT.replace(",", "").split()
            assert synth.check(s, TEXT) == [], voice
            assert all(a[1] < a[2] <= b[1] for a, b in zip(s.word_spans, s.word_spans[1:])), s.word_spans
        assert len(fast.audio) < 0.85 * len(plain.audio)
        assert synth.median_f0_hz(fast.audio) > 1.12 * synth.median_f0_hz(plain.audio)
    with pytest.raises(synth.SynthError, match="no voice 'fr-FR'"):
        PICO.synthesize("stop", "fr-FR")
