"""Early partial words (issue 11, "Pipeline"): the CTC decoder's partials and the command parser's
`revise_last_word`, without a node. The parser runs the committed models/command-parser; the
decoder, the committed models/command-recognizer on tests/data/commands."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edge_stream as es
from edge_stream.audio import read_wav
from edge_stream.errors import ConfigError, InputError
from edge_stream.voice.command_parser import CommandParser
from edge_stream.voice.ctc import CtcDecoder

ROOT = Path(__file__).resolve().parent.parent
WAVS = ROOT / "tests" / "data" / "commands"
PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                           HealthCheck.function_scoped_fixture])
# Words the parser hears: commands, numbers, fillers, corrections, and one it does not know.
WORDS = ["turn", "left", "right", "move", "forward", "back", "stop", "ninety", "two", "three", "meters",
         "degrees", "no", "then", "please", "go", "one", "wait", "banana"]


@pytest.fixture(scope="module")
def recognizer():
    return es.load(ROOT / "models" / "command-recognizer", intra_op_threads=1)


def logits_of(model, name: str) -> np.ndarray:
    """[frames, vocab] recognizer logits of a committed WAV, zero-padded to whole blocks."""
    pcm, _ = read_wav(WAVS / name)
    audio = pcm.astype(np.float32) / 32768.0
    audio = np.concatenate([audio, np.zeros(-len(audio) % model.manifest.blocking.block, np.float32)])
    return model.open_stream().feed(audio).logits


def decode(model, logits: np.ndarray, threshold: float | None, step: int = 3) -> tuple[list, bool]:
    """(events, whether a partial was left unconfirmed at the end), a few frames per update."""
    template = CtcDecoder.from_model(model)
    d = CtcDecoder(template.symbols, template.blank, template.frame_samples, partial_threshold=threshold)
    events = []
    for i in range(0, len(logits), step):
        events += d.update(logits[i:i + step]).words
    return events, d.pending_partial is not None


def apply(events, pending: bool) -> list[str]:
    """The words a follower ends with: partials appended, revisions replacing the last word, an
    unconfirmed partial taken back at the end."""
    words: list[str] = []
    for e in events:
        if e.confirms:
            assert words[-1] == e.word
        elif e.revises:
            words[-1] = e.word
        else:
            words.append(e.word)
    return words[:-1] if pending else words


@pytest.mark.parametrize("name", [f"command_{i}.wav" for i in range(5)])
def test_partials_end_with_the_words_and_frames_of_the_decoder_without_them(recognizer, name):
    logits = logits_of(recognizer, name)
    plain, _ = decode(recognizer, logits, None)
    events, pending = decode(recognizer, logits, 0.05)
    assert apply(events, pending) == [e.word for e in plain]
    finals = [e for e in events if not e.partial]
    assert [(e.word, e.end_frame, e.confidence) for e in finals] == [(e.word, e.end_frame, e.confidence) for e in plain]


def test_a_confirmed_partial_went_out_frames_before_its_label_won(recognizer):
    leads = []
    for i in range(5):
        events, _ = decode(recognizer, logits_of(recognizer, f"command_{i}.wav"), 0.05)
        for before, e in itertools.pairwise(events):
            if e.confirms:
                assert before.partial and before.word == e.word
                leads.append(e.end_frame - before.end_frame)
    assert leads and min(leads) >= 1


def test_without_a_threshold_no_partial_is_published(recognizer):
    events, pending = decode(recognizer, logits_of(recognizer, "command_1.wav"), None)
    assert events and not pending and not any(e.partial or e.revises or e.confirms for e in events)


# Frames over symbols [<blank>, a, b, c] as posteriors (the decoder takes logits; log works).
SYMBOLS = ["<blank>", "a", "b", "c"]


def frames(*rows) -> np.ndarray:
    return np.log(np.asarray(rows, dtype=np.float64) + 1e-9)  # [n, 4]


def test_a_rising_label_goes_out_partial_is_revised_by_another_then_confirmed():
    d = CtcDecoder(SYMBOLS, partial_threshold=0.2)
    got = d.update(frames([0.9, 0.05, 0.05, 0.0],   # nothing leads enough
                          [0.7, 0.25, 0.05, 0.0],   # a rises past 0.2: partial a
                          [0.6, 0.1, 0.3, 0.0],     # b rises and leads: partial b revises a
                          [0.2, 0.0, 0.8, 0.0],     # b wins: confirmed, nothing new to say
                          [0.9, 0.0, 0.1, 0.0])).words  # b's tail: falling, and still held: nothing
    assert [(e.word, e.partial, e.revises, e.confirms) for e in got] == [
        ("a", True, False, False), ("b", True, True, False), ("b", False, False, True)]
    assert d.text == "b" and d.pending_partial is None


def test_a_partial_another_label_beats_is_revised_by_the_final_word():
    d = CtcDecoder(SYMBOLS, partial_threshold=0.2)
    got = d.update(frames([0.7, 0.3, 0.0, 0.0], [0.1, 0.0, 0.0, 0.9])).words
    assert [(e.word, e.partial, e.revises) for e in got] == [("a", True, False), ("c", False, True)]


def test_a_partial_no_label_confirms_stays_pending_until_the_caller_withdraws_it():
    d = CtcDecoder(SYMBOLS, partial_threshold=0.2)
    d.update(frames([0.7, 0.3, 0.0, 0.0], [0.9, 0.1, 0.0, 0.0]))
    assert d.pending_partial == "a" and d.text == ""
    d.finish()
    assert d.pending_partial is None


def test_partial_threshold_outside_0_1_is_a_config_error():
    with pytest.raises(ConfigError, match="partial_threshold"):
        CtcDecoder(["<blank>", "a"], partial_threshold=0.0)


# ----- the parser follows revisions ------------------------------------------------------------

def outcome(p: CommandParser) -> tuple:
    return list(p.words), list(p.tokens), p.command, p.state, round(p.confidence, 6)


@PROPERTY
@given(data=st.data())
def test_after_pushes_and_revisions_the_parser_equals_a_fresh_one_fed_the_words(parser_model, data):
    p, fresh = CommandParser(parser_model), CommandParser(parser_model)
    words: list[str] = []
    for _ in range(data.draw(st.integers(1, 10))):
        conf = data.draw(st.sampled_from([None, 0.4, 0.9]))
        if words and data.draw(st.booleans()):
            word = data.draw(st.sampled_from(WORDS + [None]))  # None: take the last word back
            got = p.revise_last_word(word, conf)
            words.pop()
            if word is not None:
                words.append((word, conf))
        else:
            word = data.draw(st.sampled_from(WORDS))
            got = p.push_word(word, conf)
            words.append((word, conf))
        if word is not None:  # the fields returned now: those of a fresh parser's last word
            assert got == last_fields(fresh, words)
    for w, c in words:
        fresh.push_word(w, c)
    assert outcome(p) == outcome(fresh)
    assert p.end() == fresh.end()
    assert (p.final, p.end_fields, p.last_tokens) == (fresh.final, fresh.end_fields, fresh.last_tokens)


def last_fields(p: CommandParser, words: list) -> list[str]:
    """The fields `p`, fed `words` from a new utterance, returns for the last one (then it resets)."""
    got = [p.push_word(w, c) for w, c in words][-1]
    p.reset()
    return got


def test_a_revision_replaces_the_fields_the_last_word_determined(parser):
    assert parser.push_word("turn") == ["turn"]
    assert parser.push_word("left") == ["left"]
    assert parser.revise_last_word("right") == ["right"]
    assert parser.command == "turn right" and parser.words == ["turn", "right"]
    parser.push_word("ninety")
    parser.push_word("degrees")
    assert parser.end() == "turn right 90 deg"


def test_taking_back_the_only_word_leaves_an_empty_utterance(parser):
    parser.push_word("stop")
    assert parser.revise_last_word(None) == [] and parser.words == [] and parser.command == ""
    assert parser.end() == ""


def test_revising_with_no_word_is_an_input_error_naming_the_verb(parser):
    with pytest.raises(InputError, match="revise_last_word"):
        parser.revise_last_word("left")
    assert parser.push_word("stop") == ["stop"]  # the parser still works


def test_grammar_back_to_restores_the_mask_by_rollback_and_from_an_error_by_replay(parser_model):
    from edge_stream.voice.command_parser import GrammarConstraint

    vocab = parser_model.tokenizer.get_vocab()
    c, fresh = GrammarConstraint(vocab, "parser"), GrammarConstraint(vocab, "parser")
    said = [vocab[w] for w in ("<bos>", "turn")]
    assert c.consume(said) and fresh.consume(said)
    expected = fresh.allowed()
    chosen = int(np.flatnonzero(expected)[0])
    assert c.consume([chosen])
    c.back_to(len(said))  # llguidance rollback
    np.testing.assert_array_equal(c.allowed(), expected)
    refused = int(np.flatnonzero(~expected)[0])
    assert not c.consume([refused]) and c.matcher.is_error()  # the matcher is now in its error state
    c.back_to(len(said))  # replayed from the fresh matcher
    assert not c.matcher.is_error()
    np.testing.assert_array_equal(c.allowed(), expected)


def test_a_revision_by_two_words_is_refused_and_changes_nothing(parser):
    parser.push_word("turn")
    with pytest.raises(InputError, match="one word"):
        parser.revise_last_word("go left")
    assert parser.words == ["turn"] and parser.push_word("left") == ["left"] and parser.command == "turn left"
