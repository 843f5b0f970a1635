"""The streaming command parser: the committed model, its runtime helper and its training data.

Model tests run the committed models/command-parser through edge_stream.load, as the parser
node does; the phrasings below come from held-out templates (export/command_data.py
HELD_OUT_RULES) or combine parts in ways training never showed as a whole. The grammar and
its rule-based Teacher are edge_stream/voice/grammar.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from parserkit import parse

import edge_stream as es
from edge_stream.errors import InputError, ManifestError
from edge_stream.voice.command_parser import FIX, Command, CommandParser, apply_tokens, fields, words_of
from edge_stream.voice.grammar import Teacher, vocabulary
from export.command_data import Generator, held_out_rule, sequence

# ----- the committed model ----------------------------------------------------------------

def test_committed_model_loads_with_its_tokenizer_and_stop_token(parser_model):
    m = parser_model.manifest
    vocab = parser_model.tokenizer.get_vocab()
    assert m.input.vocab_size == len(vocabulary())
    assert [vocab[t] for t in vocabulary()] == list(range(len(vocabulary())))
    assert list(m.stop_token_ids) == [vocab["<end>"]]
    assert (parser_model.dir / "MODEL_CARD.md").is_file()


def test_word_by_word_stream_equals_full_sequence_logits(parser_model):
    sample = Generator(7, "heldout").sample()
    vocab = parser_model.tokenizer.get_vocab()
    ids, _ = sequence(sample, vocab)
    full = parser_model.open_stream().feed(np.asarray(ids)).logits  # [n, vocab], one ORT run
    stream = parser_model.open_stream()
    # Chunks as the parser feeds them: <bos> w1, then each model token, then each next word.
    bounds = [0, 2] + list(range(3, len(ids) + 1))
    got = np.concatenate([stream.feed(np.asarray(ids[a:b])).logits for a, b in zip(bounds, bounds[1:])])
    assert got.shape == full.shape
    np.testing.assert_allclose(got, full, atol=1e-4)


@pytest.mark.parametrize("text, word", [
    ("stop", 0),
    ("okay robot stop now", 2),
    ("move forward two meters stop", 4),
    ("turn left ninety uh halt", 4),
    ("go backwards no wait freeze", 4),
])
def test_stop_is_emitted_on_its_word(parser, text, word):
    emitted, final = parse(parser, text)
    assert "stop" in emitted[word]
    assert not any("stop" in e for e in emitted[:word])
    assert final == "stop"


@pytest.mark.parametrize("text, command", [
    ("could you turn ninety degrees to the left please", "turn left 90 deg"),
    ("okay robot turn left uh no right ninety degrees", "turn right 90 deg"),
    ("move forward two meters i mean three meters", "move forward 3.0 m"),
    ("turn around and then go forward two meters", "turn 180 deg then move forward 2.0 m"),
    ("turn two the left", "turn left"),  # "to" heard as its homophone
    ("um forward by two and a half meters", "move forward 2.5 m"),
    ("rotate forty five degrees to the right", "turn right 45 deg"),
    ("hey robot go a little slower", "slow down"),
    ("please stop right now", "stop"),
    ("go back one point five metres no sorry forward", "move forward 1.5 m"),
])
def test_held_out_phrasings_parse_to_the_exact_command(parser, text, command):
    assert parse(parser, text)[1] == command


def test_a_correction_streams_a_fix_then_the_corrected_field(parser):
    emitted, final = parse(parser, "turn left no right ninety degrees")
    assert emitted == [["turn"], ["left"], [], [FIX, "right"], [], ["90", "deg"]]
    assert parser.end_fields == []
    assert final == "turn right 90 deg"


def test_amount_waits_while_the_number_can_go_on(parser):
    emitted, final = parse(parser, "turn left twenty")
    assert emitted == [["turn"], ["left"], []]  # "twenty" may become "twenty five"
    assert parser.end_fields == ["20", "deg"]
    assert final == "turn left 20 deg"


def test_amount_comes_on_the_word_that_settles_it(parser):
    emitted, final = parse(parser, "turn left forty five degrees")
    # "forty five" is a whole number, but its unit may still be seconds: the unit settles it
    assert emitted == [["turn"], ["left"], [], [], ["45", "deg"]]
    assert final == "turn left 45 deg"
    emitted, final = parse(parser, "wait two and a half seconds")  # wait takes seconds only
    assert emitted[:5] == [["wait"], [], [], [], ["2.5", "s"]] and final == "wait 2.5 s"


def test_parser_is_reusable_across_utterances(parser):
    first = parse(parser, "turn right thirty degrees")
    second = parse(parser, "turn right thirty degrees")
    assert first == second == ([["turn"], ["right"], [], ["30", "deg"]], "turn right 30 deg")


def test_unknown_words_are_heard_as_unknown_not_as_commands(parser):
    assert parse(parser, "banana")[1] == ""


def test_push_word_rejects_more_than_one_word(parser):
    with pytest.raises(InputError, match="one word"):
        parser.push_word("turn left")
    with pytest.raises(InputError):
        parser.push_word("  ")


def test_end_without_words_is_an_empty_command(parser):
    assert parser.end() == ""


def test_parser_refuses_a_model_without_its_tokens(tiny_models):
    _, onnx_dir = tiny_models("llama")
    with pytest.raises(ManifestError, match="<wait>"):
        CommandParser(es.load(onnx_dir))


# ----- folding tokens into a command (no model) -------------------------------------------

def test_fix_overwrites_the_field_of_its_kind():
    cmd = apply_tokens(["turn", "left", "9", "##0", "deg", FIX, "right"])
    assert cmd.text() == "turn right 90 deg"
    assert apply_tokens(["move", "forward", "2", "##.", "##0", "m", FIX, "3", "##.", "##5", "m"]).text() \
        == "move forward 3.5 m"


def test_a_new_action_starts_a_new_command():
    assert apply_tokens(["move", "forward", "2", "##.", "##0", "m", FIX, "turn", "left"]).text() == "turn left"
    assert apply_tokens(["turn", "left", FIX, "stop"]).text() == "stop"
    assert apply_tokens(["speed", "up", FIX, "slow", "down"]).text() == "slow down"


def test_fix_marker_does_not_change_the_result():
    tokens = ["turn", "left", FIX, "right", "4", "##5", "deg"]
    assert apply_tokens(tokens) == apply_tokens([t for t in tokens if t != FIX])


def test_malformed_amounts_and_stray_tokens_are_skipped():
    assert apply_tokens(["move", "forward", "2", "##.", "##.", "m", "okay", "<wait>"]).text() == "move forward"


def test_apply_tokens_continues_a_given_command():
    cmd = apply_tokens(["move", "back"])
    assert apply_tokens(["1", "##2", "##.", "##5", "m"], cmd) is cmd
    assert cmd == Command("move", "back", (12.5, "m"))


def test_fields_join_number_pieces():
    assert fields([FIX, "1", "##2", "##.", "##5", "m"]) == [FIX, "12.5", "m"]
    assert words_of("Turn LEFT, no -- right!") == ["turn", "left", "no", "right"]


# ----- training data ----------------------------------------------------------------------

def test_splits_keep_held_out_templates_and_values_apart():
    train = Generator(0, "train").samples(400)
    held = Generator(0, "heldout").samples(100)
    values = Generator(0, "values").samples(50)
    assert not any(held_out_rule(s.template) or s.template.get("held_value") for s in train)
    assert all(held_out_rule(s.template) and not s.template.get("held_value") for s in held)
    assert all(s.template.get("held_value") and not held_out_rule(s.template) for s in values)


def test_generator_is_seeded():
    texts = lambda seed: [s.text for s in Generator(seed).samples(20)]  # noqa: E731
    assert texts(3) == texts(3)
    assert texts(3) != texts(4)


def test_training_data_and_run_time_share_one_grammar():
    """export.command_data teaches what edge_stream.voice.grammar scores against: the same objects."""
    import export.command_data as cd
    from edge_stream.voice import grammar

    assert cd.Teacher is grammar.Teacher and cd.INPUT_WORDS is grammar.INPUT_WORDS
    s = Generator(5).sample()
    assert grammar.command_of(s.words).text() == s.command


def test_teacher_emits_each_field_on_the_word_that_determines_it():
    t = Teacher()
    got = [t.push(w) for w in "okay go uh forward twenty um five meters no stop".split()] + [t.end()]
    assert got == [[], [], [], ["move", "forward"], [], [], [], ["2", "##5", "##.", "##0", "m"], [],
                   [FIX, "stop"], []]


def test_a_number_left_before_a_correction_does_not_reach_the_corrected_command():
    """'go thirteen' holds 13 for an action that never comes; after the marker the speaker says
    something else, and the amount must not ride along (a generator draw of seed 0 found it)."""
    from edge_stream.voice.grammar import command_of

    assert command_of("now go thirteen no no turn right".split()).text() == "turn right"
    assert command_of("go two sorry turn left ninety degrees".split()).text() == "turn left 90 deg"
    assert command_of("go two no three meters".split()).text() == "move 3.0 m"  # restated after the marker
    assert command_of("go thirteen meters".split()).text() == "move 13.0 m"


def test_training_sequence_masks_the_heard_words():
    s = Generator(1).sample()
    vocab = {t: i for i, t in enumerate(vocabulary())}
    ids, mask = sequence(s, vocab)
    heard = [vocab.get(w, vocab["<unk>"]) for w in s.words] + [vocab["<eou>"]]
    assert [i for i, m in zip(ids, mask) if not m] == [vocab["<bos>"]] + heard
    assert ids[-1] == vocab["<end>"] and sum(mask) == len(ids) - len(heard) - 1
