"""Voice commands a robot can trust (issue 10): one grammar for both models, no motion from
negations, cancels, questions or conversation, stop first, grammatical output only, and
`not_understood` instead of a doubtful command.

Grammar tests need no model; parser tests run the committed models/command-parser through
edge_stream.load as the parser node does; policy tests drive CommandParserPolicy without sockets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from parserkit import parse

from edge_stream.voice import grammar
from edge_stream.voice.command_parser import (
    UNK,
    GrammarConstraint,
    fold,
    words_of,
)

MOTION = {"move", "turn", "speed up"}


def moves(parse) -> bool:
    return any(c.action in MOTION for c in parse.commands)


# ----- one grammar, two vocabularies ---------------------------------------------------------

def test_both_vocabularies_derive_from_the_grammar_file(parser_model):
    rec = grammar.recognizer_vocabulary()
    assert rec == list(grammar.SPOKEN_WORDS) + [UNK]
    parser_vocab = parser_model.tokenizer.get_vocab()
    assert set(grammar.SPOKEN_WORDS) <= set(parser_vocab)  # the parser knows every word the recognizer says
    assert [parser_vocab[t] for t in grammar.vocabulary()] == list(range(len(grammar.vocabulary())))


def test_every_generated_word_is_a_recognizer_label():
    labels = set(grammar.recognizer_vocabulary())
    said = {w for s in grammar.Generator(11).samples(3000) for w in s.words}
    assert said - labels <= set(grammar.UNKNOWN_WORDS)  # stand-ins for a recognizer's <unk>
    assert grammar.recognizer_words("I left my keys, then turned LEFT!") == \
        ["i", "left", UNK, UNK, "then", UNK, "left"]


def test_parser_trains_on_homophones_a_recognizer_confuses():
    """"to"/"two" and "for"/"four" sound the same: the parser's training mix swaps them in the heard
    words (both are recognizer labels) and keeps the meaning, so "turn two the left" still turns left."""
    from export.command_data import TrainingMix

    labels = set(grammar.recognizer_vocabulary())
    assert all(w in labels and twin in labels and grammar.HOMOPHONES[twin] == w
               for w, twin in grammar.HOMOPHONES.items())
    mix = TrainingMix(3, homophone_share=1.0)
    swapped = 0
    for _ in range(200):
        sample = mix.gen.sample()
        heard = mix.misheard(sample)
        assert heard.targets == sample.targets and heard.command == sample.command
        assert len(heard.words) == len(sample.words)
        for said, written in zip(sample.words, heard.words):
            assert written == said or grammar.HOMOPHONES.get(said) == written
            swapped += written != said
    assert swapped >= 5  # 20 with this seed


def test_non_command_splits_are_disjoint_and_large_enough():
    train, held = grammar.non_command_sentences("train"), grammar.non_command_sentences("heldout")
    assert not set(train) & set(held)
    assert len(grammar.non_command_sentences("heldout", "conversation")) > 0


def test_generator_is_seeded_and_kinds_restrict_it():
    texts = lambda seed: [s.spoken for s in grammar.Generator(seed).samples(30)]
    assert texts(3) == texts(3) and texts(3) != texts(4)
    assert {s.kind for s in grammar.Generator(1, kinds=("question",)).samples(20)} == {"question"}


# ----- the grammar's meaning (the Teacher) --------------------------------------------------

@pytest.mark.parametrize("text, command", [
    ("move forward half a meter", "move forward 0.5 m"),
    ("go forward one point five meters", "move forward 1.5 m"),
    ("turn left one eighty", "turn left 180 deg"),
    ("move forward one hundred meters", "move forward 100.0 m"),
    ("move back seventy five meters", "move back 75.0 m"),
    ("go forward for two seconds", "move forward 2.0 s"),
    ("move forward slowly", "move forward slowly"),
    ("turn around", "turn 180 deg"),
    ("wait two seconds", "wait 2.0 s"),
    ("let's go", "move forward"),
    ("turn left then go forward two meters", "turn left then move forward 2.0 m"),
    ("turn left no right ninety degrees", "turn right 90 deg"),
])
def test_grammar_means_the_phrasings_users_expect(text, command):
    assert grammar.command_of(text.split()).text() == command


@pytest.mark.parametrize("text", ["don't move", "do not turn left", "never turn left", "never mind", "cancel",
                                  "turn left never mind", "move forward two meters cancel that"])
def test_grammar_negations_and_cancels_cancel(text):
    p = grammar.command_of(text.split())
    assert not p.commands and p.cancelled


@pytest.mark.parametrize("text", ["did you turn left", "what is left", "i left my keys in the kitchen",
                                  "the kitchen is on your right"])
def test_grammar_questions_and_conversation_mean_nothing(text):
    assert grammar.command_of(words_of(text)).commands == []


def test_grammar_generated_safety_phrasings_never_move():
    for s in grammar.Generator(5, kinds=("negation", "cancel", "question")).samples(2000):
        p = grammar.command_of(s.words)
        if s.cancelled or s.kind == "question":
            assert not moves(p), s.text


# ----- the committed parser model -----------------------------------------------------------

@pytest.mark.parametrize("text", ["don't move", "do not turn left", "never turn left", "please don't go forward",
                                  "never mind", "cancel", "turn left never mind", "did you turn left",
                                  "what is left", "why did you stop", "did you move forward two meters"])
def test_a_negation_cancel_or_question_never_moves_the_robot(parser, text):
    emitted, _ = parse(parser, text)
    assert not moves(parser.result)
    streamed = fold([t for e in emitted for t in e] + parser.end_fields)
    assert not moves(streamed)


@pytest.mark.parametrize("text, word", [
    ("turn left ninety degrees stop", 4),
    ("move forward two meters then turn left halt", 7),
    ("go back uh emergency stop", 4),
    ("turn right sixty freeze", 3),
])
def test_stop_interrupts_an_utterance_in_progress_on_its_word(parser, text, word):
    emitted, final = parse(parser, text)
    assert "stop" in emitted[word] and not any("stop" in e for e in emitted[:word])
    assert final == "stop"


@pytest.mark.parametrize("text, command", [
    ("turn left then go forward two meters", "turn left then move forward 2.0 m"),
    ("turn around", "turn 180 deg"),
    ("wait two seconds", "wait 2.0 s"),
    ("let's go", "move forward"),
    ("move forward half a meter", "move forward 0.5 m"),
])
def test_parser_model_gives_the_new_phrasings(parser, text, command):
    assert parse(parser, text)[1] == command


def test_non_command_sentences_are_mostly_silent(parser):
    held = grammar.non_command_sentences("heldout")[:150]
    said = sum(bool(parse(parser, s)[1]) for s in held)
    assert said <= 0.02 * len(held)


# ----- constrained decoding -----------------------------------------------------------------

def _grammatical(parse) -> bool:
    for c in parse.commands:
        if c.direction is not None and c.direction not in grammar.DIRECTIONS_OF_ACTION.get(c.action, ()):
            return False
        if c.amount is not None:
            value, unit = c.amount
            if unit not in grammar.UNITS_OF_ACTION.get(c.action, ()) or not 0 <= value <= grammar.MAX_VALUE[unit]:
                return False
        if c.speed is not None and c.action not in grammar.DIRECTIONS_OF_ACTION:
            return False
    return True


@pytest.fixture(scope="module")
def constraint():
    vocab = {t: i for i, t in enumerate(grammar.vocabulary())}
    return vocab, GrammarConstraint(vocab, "test")


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_constrained_output_always_parses_into_the_grammar(constraint, seed):
    """Random logits (a model that knows nothing) and random heard words: every token the
    constraint lets through folds into grammatical commands, and the sequence stays accepted."""
    vocab, c = constraint
    rng = np.random.default_rng(seed)
    words = list(grammar.SPOKEN_WORDS)
    c.reset()
    assert c.consume([vocab["<bos>"]])
    tokens = []
    for step in range(int(rng.integers(1, 12)) + 1):
        last = step > 0 and rng.random() < 0.15
        heard = vocab["<eou>"] if last else vocab[words[int(rng.integers(len(words)))]]
        assert c.consume([heard])
        stop = vocab["<end>"] if last else vocab["<wait>"]
        for _ in range(12):
            logits = rng.normal(size=len(vocab)) * 3  # [vocab]
            logits[stop] -= 2.0  # a random model that still talks a little
            allowed = c.allowed()
            tok = int(np.argmax(np.where(allowed, logits, -np.inf)))
            assert c.consume([tok])
            if tok == stop:
                break
            tokens.append(grammar.vocabulary()[tok])
        else:
            pytest.fail("the grammar let an emission run past 12 tokens")
        if last:
            break
    assert _grammatical(fold(tokens))


def test_constraint_refuses_what_the_grammar_does_not_allow(constraint):
    vocab, c = constraint
    ids = lambda text: [vocab[t] for t in text.split()]
    c.reset()
    assert c.consume(ids("<bos> turn turn"))
    allowed = c.allowed()
    assert allowed[vocab["left"]] and not allowed[vocab["forward"]] and not allowed[vocab["m"]]
    c.reset()
    assert c.consume(ids("<bos> move move"))
    assert not c.consume(ids("right"))


# ----- the parser node's policy (no sockets) -------------------------------------------------

def _policy(parser_model, **stream_options):
    from edge_stream.node.policies import CommandParserPolicy, PolicyOptions

    policy = CommandParserPolicy(parser_model, PolicyOptions(stream_options=stream_options))
    return policy, policy.open("s", {})


def _say(policy, session, text, confidence=0.99):
    outs = []
    for w in text.split():
        outs += list(policy.chunk(session, None, w, {"confidence": confidence, "segment": 0}))
    outs += list(policy.end(session, {"segment": 0}))
    return outs


def test_low_confidence_publishes_not_understood_with_what_was_heard(parser_model):
    policy, session = _policy(parser_model, min_confidence=0.5)
    outs = _say(policy, session, "turn left ninety degrees", confidence=0.2)
    kinds = [o.kind for o in outs]
    assert "not_understood" in kinds and kinds[-1] == "done"
    nu = outs[kinds.index("not_understood")].fields
    assert nu["heard"] == ["turn", "left", "ninety", "degrees"] and nu["confidence"] < 0.5
    assert outs[-1].fields["command"] is None and outs[-1].fields["not_understood"]
    assert not any(o.kind == "delta" for o in outs)  # doubtful fields are not previewed either


def test_high_confidence_publishes_the_command(parser_model):
    policy, session = _policy(parser_model, min_confidence=0.5)
    done = _say(policy, session, "turn left ninety degrees")[-1].fields
    assert done["command"] == "turn left 90 deg" and done["action"] == "turn" and not done["not_understood"]
    assert done["commands"] == [{"action": "turn", "direction": "left", "amount": 90.0, "unit": "deg", "speed": None}]


def test_stop_goes_out_even_with_low_confidence(parser_model):
    policy, session = _policy(parser_model, min_confidence=0.9)
    outs = _say(policy, session, "turn left stop", confidence=0.3)
    assert any(o.kind == "delta" and "stop" in o.fields["fields"] for o in outs)
    assert outs[-1].fields["command"] == "stop"


def test_wake_word_must_come_before_a_command_but_not_before_stop(parser_model):
    policy, session = _policy(parser_model, wake_word=True, min_confidence=0.0)
    assert _say(policy, session, "turn left ninety degrees")[-1].fields["command"] is None
    assert _say(policy, session, "robot turn left ninety degrees")[-1].fields["command"] == "turn left 90 deg"
    assert _say(policy, session, "stop")[-1].fields["command"] == "stop"


@pytest.mark.parametrize("text", ["well", "can you", "alright", "no now"])
def test_a_command_the_grammar_does_not_read_from_the_words_is_not_understood(parser_model, text):
    """The parser network reads "move forward" into lone fillers a recognizer made of other speech;
    the grammar's own rules read no command there, so the node asks again instead of moving."""
    policy, session = _policy(parser_model, min_confidence=0.0)
    outs = _say(policy, session, text)
    nu = next(o.fields for o in outs if o.kind == "not_understood")
    assert nu["reason"] == "grammar" and nu["heard"] == text.split() and nu["command"].startswith("move")
    assert outs[-1].fields["command"] is None and outs[-1].fields["not_understood"]
    # the same words without the check: the guess the check held back is published
    policy, session = _policy(parser_model, min_confidence=0.0, grammar_check=False)
    assert _say(policy, session, text)[-1].fields["command"] == nu["command"]


def test_the_grammar_check_passes_commands_the_grammar_reads(parser_model):
    policy, session = _policy(parser_model, min_confidence=0.0)
    for text, command in (("please turn left ninety degrees", "turn left 90 deg"),
                          ("go forward two meters then turn right", "move forward 2.0 m then turn right"),
                          ("stop", "stop")):
        outs = _say(policy, session, text)
        assert not any(o.kind == "not_understood" for o in outs) and outs[-1].fields["command"] == command


def test_negation_reports_cancelled_and_no_command(parser_model):
    policy, session = _policy(parser_model)
    done = _say(policy, session, "don't move")[-1].fields
    assert done["command"] is None and done["cancelled"] and done["commands"] == []


def test_parser_options_are_checked_at_open(parser_model):
    from edge_stream.errors import ConfigError

    with pytest.raises(ConfigError, match="min_confidence"):
        _policy(parser_model, min_confidence=2)
    with pytest.raises(ConfigError, match="takes options"):
        _policy(parser_model, threshold=0.5)
    with pytest.raises(ConfigError, match="grammar_check"):
        _policy(parser_model, grammar_check="yes")


# ----- across segments: a VAD that ends a segment at a short pause splits one utterance ---------------

def _segment(policy, session, text, segment, pause_ms=None, confidence=0.99):
    """One VAD segment's words, as the recognizer forwards them (`pause_before_ms` after the first segment)."""
    extra = {"confidence": confidence, "segment": segment,
             **({"pause_before_ms": pause_ms} if pause_ms is not None else {})}
    outs = []
    for w in text.split():
        outs += list(policy.chunk(session, None, w, dict(extra)))
    outs += list(policy.end(session, {"segment": segment}))
    return outs


def test_a_cancel_in_the_next_segment_takes_back_the_command(parser_model):
    """"walk backward thirteen meters, forget it": the VAD ended the first segment at the comma."""
    policy, session = _policy(parser_model, min_confidence=0.5)
    first = _segment(policy, session, "walk backward thirteen meters", 0)[-1].fields
    assert first["command"] == "move back 13.0 m" and "cancels" not in first
    done = _segment(policy, session, "forget it", 1, pause_ms=600.0)[-1].fields
    assert done["cancelled"] and done["command"] is None
    assert done["cancels"] == {"segment": 0, "command": "move back 13.0 m"}


def test_a_cancel_reaches_back_only_across_a_short_pause_and_never_over_a_stop(parser_model):
    policy, session = _policy(parser_model, min_confidence=0.5, cancel_reach_ms=1000)
    _segment(policy, session, "turn left ninety degrees", 0)
    late = _segment(policy, session, "never mind", 1, pause_ms=1500.0)[-1].fields
    assert late["cancelled"] and "cancels" not in late  # its own utterance: cancelled, nothing taken back
    _segment(policy, session, "turn left ninety degrees", 2, pause_ms=5000.0)
    _segment(policy, session, "move forward", 3, pause_ms=200.0)
    assert _segment(policy, session, "cancel", 4, pause_ms=300.0)[-1].fields["cancels"] == {
        "segment": 3, "command": "move forward"}  # the segment just before, not one further back
    assert _segment(policy, session, "stop", 5, pause_ms=4000.0)[-1].fields["command"] == "stop"
    after_stop = _segment(policy, session, "never mind", 6, pause_ms=200.0)[-1].fields
    assert after_stop["cancelled"] and "cancels" not in after_stop  # a stop is never taken back


def test_a_negation_a_segment_ends_on_negates_the_next_segment(parser_model):
    """"so don't, go": the VAD ended the segment after "don't"; "go" alone would be `move forward`."""
    policy, session = _policy(parser_model, min_confidence=0.5)
    assert _segment(policy, session, "so don't", 0)[-1].fields["cancelled"]
    outs = _segment(policy, session, "go", 1, pause_ms=450.0)
    done = outs[-1].fields
    assert done["carried"] == ["don't"] and done["words"] == ["don't", "go"]
    assert done["command"] is None and done["cancelled"] and "cancels" not in done
    assert not any(o.kind == "delta" and "move" in o.fields["fields"] for o in outs)
    # far enough apart, they are two utterances: "go" is a command of its own
    policy, session = _policy(parser_model, min_confidence=0.5)
    _segment(policy, session, "please do not", 0)
    done = _segment(policy, session, "go", 1, pause_ms=2500.0)[-1].fields
    assert done["command"] == "move forward" and "carried" not in done


def test_the_first_segment_and_a_reach_of_zero_join_nothing(parser_model):
    policy, session = _policy(parser_model, min_confidence=0.5, cancel_reach_ms=0)
    _segment(policy, session, "turn right", 0)
    assert "cancels" not in _segment(policy, session, "cancel", 1, pause_ms=100.0)[-1].fields
    _segment(policy, session, "don't", 2, pause_ms=100.0)
    assert _segment(policy, session, "go back", 3, pause_ms=100.0)[-1].fields["command"] == "move back"
    policy, session = _policy(parser_model, min_confidence=0.5)
    _segment(policy, session, "don't", 0)
    # no pause known (a source that does not say it): each segment is its own utterance
    assert _segment(policy, session, "go back", 1)[-1].fields["command"] == "move back"


def test_a_bad_pause_is_refused_and_changes_nothing(parser_model):
    from edge_stream.errors import ConfigError, InputError

    policy, session = _policy(parser_model, min_confidence=0.5)
    _segment(policy, session, "don't", 0)
    for bad in ("soon", -5.0, float("nan"), True):
        with pytest.raises(InputError, match="pause_before_ms"):
            list(policy.chunk(session, None, "go", {"confidence": 0.99, "segment": 1, "pause_before_ms": bad}))
    done = _segment(policy, session, "go", 1, pause_ms=300.0)[-1].fields  # the negation still carries
    assert done["carried"] == ["don't"] and done["command"] is None
    with pytest.raises(ConfigError, match="cancel_reach_ms"):
        _policy(parser_model, cancel_reach_ms=-1)


# Committed WAVs (espeak-ng voice en-us, 0.8 s of silence between the two parts, made once with
# export.synth.synthesize): "turn left ninety degrees ... never mind" and "so don't ... go". The VAD of the
# voice launch files (min_silence_ms 300) ends a segment in the silence.
SPLIT_CANCEL = Path(__file__).parent / "data" / "commands" / "split_cancel_0.wav"
SPLIT_NEGATION = Path(__file__).parent / "data" / "commands" / "split_negation_0.wav"
VERIFIED = Path(__file__).resolve().parent.parent / "launch" / "voice_commands_verified.toml"


@pytest.fixture(scope="module")
def chain():
    from edge_stream.cli.voice_report import PolicyChain

    return lambda **options: PolicyChain.from_launch(str(VERIFIED), parser_options={"min_confidence": 0.0, **options})


def test_the_recognizer_says_the_pause_and_a_split_utterance_means_what_it_said(chain):
    """VAD gate -> two recognizers -> parser policies on real audio: the recognizer forwards the pause
    between segments, so the cancel takes back the first segment's command and the negation the VAD cut
    off still negates the "go"; with `cancel_reach_ms = 0` the same audio moves the robot twice."""
    from edge_stream.audio import read_wav_float32

    cancel, negation = (read_wav_float32(p)[0] for p in (SPLIT_CANCEL, SPLIT_NEGATION))
    r = chain().run(cancel)
    assert len(r.commands) == 2 and r.commands == ["", ""]  # two segments; the first one's command taken back
    assert [c for c, _ in r.taken_back] == ["turn left 90 deg"]
    r = chain().run(negation)
    assert r.words == ["so", "don't", "go"] and r.commands == ["", ""]
    apart = chain(cancel_reach_ms=0)
    assert apart.run(cancel).commands == ["turn left 90 deg", ""] and apart.run(negation).commands == ["", "move forward"]


def test_the_report_counts_a_command_taken_back_as_a_motion(chain):
    """The robot was told to move before the cancel came: the voice report's unasked motion counts it
    (and says how many were taken back), at the thresholds the command went out at."""
    from edge_stream.audio import read_wav_float32
    from edge_stream.cli.voice_report import Case, Heard, set_figures

    audio = read_wav_float32(SPLIT_CANCEL)[0]
    r = chain().run(audio)
    case = Case("split", "turn left ninety degrees never mind", audio, len(audio), "", "espeak-ng", "en-us",
                "clean", "phrase")
    heard = Heard(case, r.command, r.confidence, r.words, None, r.refused_by, r.taken_back)
    (_, confidence), = r.taken_back
    assert heard.published(0.0) == ""  # nothing stands at the end
    sure = set_figures([heard], threshold=0.0)
    assert (sure["unasked_motion"], sure["taken_back"], sure["exact"]) == (1, 1, 1.0)
    unsure = set_figures([heard], threshold=min(1.0, confidence + 1e-3))  # the first command was never published
    assert (unsure["unasked_motion"], unsure["taken_back"]) == (0, 0)
