"""The gateway's translation without sockets: client events, audio formats, resampling, the rate limit."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from edge_stream.node import realtime
from edge_stream.node.gateway import AudioBudget


def test_resampling_24k_in_chunks_equals_resampling_it_whole():
    x = (np.sin(np.arange(24000) * 2 * np.pi * 440 / 24000) * 20000).astype("<i2")
    whole = realtime.Resampler(24000)(x)
    r = realtime.Resampler(24000)
    cuts = [0, 1, 480, 481, 5000, 13333, 24000]
    chunked = np.concatenate([r(x[a:b]) for a, b in itertools.pairwise(cuts)])
    assert len(whole) == 16000 and np.allclose(chunked, whole, atol=1e-6)
    t = np.arange(1, 16000) * 1.5  # output sample k sits at input position 1.5 k
    assert np.allclose(whole[1:], np.interp(t - 1, np.arange(24000), x / 32768.0), atol=1e-6)


def test_16k_audio_passes_through_unchanged():
    x = np.arange(100, dtype="<i2")
    assert realtime.Resampler(16000)(x) is x


def test_the_audio_budget_allows_four_times_real_time_and_refuses_more():
    now = [0.0]
    budget = AudioBudget(4.0, clock=lambda: now[0])
    assert budget.take(4.0) and not budget.take(0.1)  # the burst: 4 s of audio at once, then nothing
    now[0] += 0.5
    assert budget.take(2.0) and not budget.take(0.01)  # half a second later: 2 s more (4x real time)
    now[0] += 100.0
    assert budget.take(4.0) and not budget.take(0.01)  # idling does not save up more than the burst


@pytest.mark.parametrize("session, rate", [
    ({"audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}}}}, 24000),
    ({"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}, 16000),
    ({"audio": {"input": {"format": {"type": "audio/pcm"}}}}, 24000),  # the Realtime API's default rate
    ({"input_audio_format": "pcm16"}, 24000),  # the beta field
    ({"instructions": "ignored"}, 16000),  # no format: the current one stays
])
def test_session_update_picks_the_input_format(session, rate):
    assert realtime.audio_format_of(session, realtime.AudioFormat(16000)).rate == rate


def test_the_parser_outputs_become_command_events_with_latency_from_the_end_of_speech():
    ev = realtime.SessionEvents("s1")
    ev.translate("vad", {"kind": "event", "event": "speech_start", "sample": 1600}, 0)
    ev.translate("parser", {"kind": "delta", "segment": 0, "fields": ["turn"], "command": "turn"}, 100)
    ev.translate("parser", {"kind": "delta", "segment": 0, "fields": ["left"], "command": "turn left"}, 200_000_000)
    done, = ev.translate("parser", {"kind": "done", "segment": 0, "command": "turn left", "action": "turn",
                                    "t_speech_end_ns": 300_000_000}, 350_000_000)
    assert done["type"] == "command.done" and done["item_id"] == "item_s1_0_0"
    assert (done["known_latency_ms"], done["latency_ms"]) == (-100.0, 50.0)  # known before the end of speech
    assert "cancels" not in done
    ev.translate("vad", {"kind": "event", "event": "speech_start", "sample": 40000}, 0)
    done, = ev.translate("parser", {"kind": "done", "segment": 1, "command": None, "cancelled": True,
                                    "cancels": {"segment": 0, "command": "turn left"}}, 400_000_000)
    assert done["cancelled"] and done["cancels"] == {"item_id": "item_s1_0_0", "command": "turn left"}


def test_early_partial_words_revise_the_transcript_and_retract_command_previews():
    """The recognizer's early partials (replace_last, final_confidences) and the parser's retract
    reach a Realtime client as our own events; the completed transcript holds the revised words."""
    ev = realtime.SessionEvents("s1")
    ev.translate("vad", {"kind": "event", "event": "speech_start", "sample": 0}, 0)
    for word in ("turn", "lift"):
        ev.translate("words", {"kind": "chunk", "segment": 0, "text": word}, 0)
    ev.translate("parser", {"kind": "delta", "segment": 0, "fields": ["turn"], "command": "turn"}, 10)
    revised, = ev.translate("words", {"kind": "chunk", "segment": 0, "text": "left", "replace_last": 1}, 20)
    assert revised == {"type": "transcription.revised", "item_id": "item_s1_0_0", "replaced": 1, "words": ["left"],
                       "transcript": "turn left"}
    retract, = ev.translate("parser", {"kind": "retract", "first_seq": 7, "position": 1}, 30)
    assert retract == {"type": "command.retract", "item_id": "item_s1_0_0", "first_seq": 7, "position": 1}
    ev.translate("words", {"kind": "chunk", "segment": 0, "text": "ninety"}, 40)
    taken, = ev.translate("words", {"kind": "end", "segment": 0, "final_confidences": [0.9, 0.8]}, 50)
    assert (taken["replaced"], taken["words"], taken["transcript"]) == (1, [], "turn left")
    assert ev.translate("words", {"kind": "end", "segment": 0, "final_confidences": [0.9, 0.8]}, 60) == []
    completed, = ev.translate("recognizer", {"kind": "done", "segment": 0}, 70)
    assert completed["transcript"] == "turn left"
    # a revision reaching past the words heard is no revision: the word is appended
    ev.translate("vad", {"kind": "event", "event": "speech_start", "sample": 0}, 80)
    appended, = ev.translate("words", {"kind": "chunk", "segment": 1, "text": "stop", "replace_last": 1}, 90)
    assert appended["type"] == "conversation.item.input_audio_transcription.delta" and appended["delta"] == "stop"


def test_a_rescoring_recognizers_revisions_rewrite_the_transcript():
    """ngram_lm: a pause's `revise` chunk and the end's `nbest` replace the segment's words; the
    client gets `transcription.revised` from the first word that changed, and nothing when none did."""
    ev = realtime.SessionEvents("s1")
    ev.translate("vad", {"kind": "event", "event": "speech_start", "sample": 0}, 0)
    for word in ("turn", "lift", "ninety"):
        ev.translate("words", {"kind": "chunk", "segment": 0, "text": word}, 0)
    revised, = ev.translate("words", {"kind": "chunk", "segment": 0, "text": "turn left ninety", "revise": True}, 10)
    assert (revised["replaced"], revised["words"], revised["transcript"]) == (2, ["left", "ninety"], "turn left ninety")
    ev.translate("words", {"kind": "chunk", "segment": 0, "text": "degrees"}, 20)
    nbest = [{"words": ["turn", "left", "ninety", "degrees"], "posteriors": [0.9, 0.8]}]
    assert ev.translate("words", {"kind": "end", "segment": 0, "nbest": nbest}, 30) == []  # the same words
    nbest[0]["words"][2] = "nineteen"
    revised, = ev.translate("words", {"kind": "end", "segment": 0, "nbest": nbest}, 40)
    assert (revised["replaced"], revised["words"]) == (2, ["nineteen", "degrees"])
    completed, = ev.translate("recognizer", {"kind": "done", "segment": 0}, 50)
    assert completed["transcript"] == "turn left nineteen degrees"
