"""Two recognizers (the recognizer route's `verifier`, docs/voice_commands.md "Two recognizers"):
a second recognizer, trained another way, hears the same audio; the parser asks again when its
words read as another command, and with `confirm_stops` a stop word goes out once both heard one.

Real models throughout: models/command-recognizer-multisynth first, models/command-recognizer-embed
as the verifier (launch/voice_commands_verified.toml), on the committed WAVs.
tests/data/commands/conversation_0.wav is a non-command sentence ("don't get stuck in a closet",
espeak-ng held-out voice, the voice report's clean chain, seed 0, case espeak-ng-sentence-clean-56)
in which the first recognizer hears "stop" and the verifier does not; stop_0.wav ("hey robot halt
immediately", en+grandpa, the same chain, espeak-ng-phrase-clean-48) a stop both hear.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import edge_stream as es
from edge_stream.audio import read_wav_float32
from edge_stream.errors import ConfigError, InputError
from edge_stream.node.node import make_node_config
from edge_stream.node.policies import CommandParserPolicy, PolicyOptions, policy_for
from edge_stream.voice.command_parser import CommandParser
from edge_stream.voice.grammar import command_of

ROOT = Path(__file__).resolve().parent.parent
FIRST = ROOT / "models" / "command-recognizer-multisynth"
VERIFIER = ROOT / "models" / "command-recognizer-embed"
PARSER_DIR = ROOT / "models" / "command-parser"
DATA = ROOT / "tests" / "data" / "commands"
WAVS = sorted(DATA.glob("command_*.wav"))
CONVERSATION = DATA / "conversation_0.wav"
STOP = DATA / "stop_0.wav"
CHUNK = 512


def route(dir=FIRST, **options) -> dict:
    return {"name": "recognizer", "dir": str(dir), "topics": ["speech"], "forward_topic": "words", **options}


def config(models: list):
    return make_node_config(name="n", input={"bind": ["tcp://127.0.0.1:*"]}, output={"bind": ["tcp://127.0.0.1:*"]},
                            models=models)


@pytest.fixture(scope="module")
def first_model():
    return es.load(FIRST, intra_op_threads=1)


def recognizer(first_model, **options):
    """A recognizer policy built as the node builds it (policy_for loads the verifier)."""
    cfg = config([route(**options)]).models[0]
    model = first_model if cfg.dir == str(FIRST) else es.load(cfg.dir, intra_op_threads=1)
    return policy_for(model, cfg)


@pytest.fixture(scope="module")
def gate():
    """The VAD gate of launch/voice_commands_verified.toml: what the recognizer node is fed."""
    from edge_stream.node.config import load_launch

    cfg = next(n for n in load_launch(ROOT / "launch" / "voice_commands_verified.toml").nodes if n.name == "vad").models[0]
    return policy_for(es.load(cfg.dir, intra_op_threads=1), cfg)


def recognized(gate, policy, audio, tail_s: float = 1.0) -> list[tuple[int | None, object]]:
    """The recognizer's forwards (word chunks and segment ends) for `audio` played through the VAD
    gate, each with the input sample it went out at (None: at the input's end)."""
    from edge_stream.node.policies import Forward

    audio = np.concatenate([audio, np.zeros(int(tail_s * 16000), np.float32)])
    g, r = gate.open("s", {}), policy.open("s", {})
    out = []

    def feed(forwards, at):
        for f in forwards:
            if isinstance(f, Forward) and f.kind == "chunk":
                out.extend((at, o) for o in policy.chunk(r, f.data, None, {"sr": 16000, **f.fields})
                           if isinstance(o, Forward))
            elif isinstance(f, Forward) and f.kind == "end":
                out.extend((at, o) for o in policy.end(r, f.fields) if isinstance(o, Forward))

    for i in range(0, len(audio), CHUNK):
        feed(list(gate.chunk(g, audio[i:i + CHUNK], None, {"sr": 16000})), i + CHUNK)
    feed(list(gate.end(g, {})), None)
    return out


def hear(policy, audio) -> tuple[list, list, dict]:
    """(word chunks forwarded while the audio played, word chunks at the end, the end's fields: those of
    `done`, which a forwarded `end` repeats)."""
    session = policy.open("s", {})
    during = []
    for i in range(0, len(audio), CHUNK):
        during += [o for o in policy.chunk(session, audio[i:i + CHUNK], None, {"sr": 16000, "segment": 0})]
    at_end = list(policy.end(session, {"segment": 0}))
    end = next((o.fields for o in at_end if o.kind == "end"), {})  # forwarded when the segment had words
    assert at_end[-1].kind == "done" and all(at_end[-1].fields[k] == v for k, v in end.items() if k != "final_confidences")
    end = {k: v for k, v in at_end[-1].fields.items() if k != "n_words"}
    return ([o for o in during if o.kind == "chunk"], [o for o in at_end if o.kind == "chunk"], end)


def texts(chunks) -> list[str]:
    return [c.text for c in chunks]


def test_the_verifier_hears_the_same_audio_and_changes_none_of_the_first_recognizers_words(first_model):
    plain, verified = recognizer(first_model), recognizer(first_model, verifier=str(VERIFIER))
    alone = recognizer(first_model, dir=VERIFIER)
    transcripts = {u["file"]: u["text"] for u in json.loads((DATA / "transcripts.json").read_text())["utterances"]}
    heard_right = 0
    for path in WAVS:
        audio, _ = read_wav_float32(path)
        a_during, a_end, a_fields = hear(plain, audio)
        b_during, b_end, b_fields = hear(verified, audio)
        assert [(c.text, c.fields) for c in b_during + b_end] == [(c.text, c.fields) for c in a_during + a_end]
        assert "verifier_words" not in a_fields
        v_during, v_end, _ = hear(alone, audio)
        assert b_fields["verifier_words"] == texts(v_during + v_end), path.name  # the verifier run alone
        heard_right += command_of(b_fields["verifier_words"]).text() == command_of(transcripts[path.name].split()).text()
    # the verifier is a recognizer, not noise; the embedding recognizer is weak on espeak-ng voices (1 of 5)
    assert heard_right >= 1, heard_right


def words_at(forwards) -> list[tuple[int | None, str, bool]]:
    return [(at, f.text, f.fields.get("unconfirmed", False)) for at, f in forwards if f.kind == "chunk"]


def test_confirm_stops_sends_a_stop_both_heard_while_the_audio_plays(first_model, gate):
    audio, _ = read_wav_float32(STOP)  # "hey robot halt immediately"
    alone = [(at, w) for at, w, _ in words_at(recognized(gate, recognizer(first_model), audio)) if w == "halt"]
    policy = recognizer(first_model, verifier=str(VERIFIER), confirm_stops=True)
    forwards = recognized(gate, policy, audio)
    confirmed = [(at, unconfirmed) for at, w, unconfirmed in words_at(forwards) if w == "halt"]
    assert len(alone) == 1 and len(confirmed) == 1 and confirmed[0][1] is False
    (heard_at, _), (sent_at, _) = alone[0], confirmed[0]
    assert heard_at is not None and sent_at is not None  # both while the audio plays, not at its end
    # it waits for the verifier at most STOP_CONFIRM_MS (plus a block of each model and a chunk)
    assert 0 <= sent_at - heard_at <= (policy.STOP_CONFIRM_MS + 3 * 80) * 16
    ends = [f.fields for _, f in forwards if f.kind == "end"]
    assert any("halt" in e["verifier_words"] for e in ends)


def test_a_stop_only_the_first_recognizer_heard_goes_out_unconfirmed_and_the_parser_publishes_no_stop(first_model,
                                                                                                       gate):
    audio, _ = read_wav_float32(CONVERSATION)
    assert "stop" in [w for _, w, _ in words_at(recognized(gate, recognizer(first_model), audio))]  # unverified: a stop
    forwards = recognized(gate, recognizer(first_model, verifier=str(VERIFIER), confirm_stops=True), audio)
    stops = [unconfirmed for _, w, unconfirmed in words_at(forwards) if w == "stop"]
    assert stops == [True]
    parser = CommandParserPolicy(es.load(PARSER_DIR, intra_op_threads=1), PolicyOptions())
    session = parser.open("s", {})
    outs = []
    for _, f in forwards:
        outs += list(parser.chunk(session, None, f.text, f.fields) if f.kind == "chunk" else parser.end(session, f.fields))
    assert not any(o.kind == "delta" and "stop" in o.fields["fields"] for o in outs)
    done = outs[-1].fields
    assert outs[-1].kind == "done" and done["command"] is None and "<unk>" in done["words"]
    assert "stop" not in done["words"]


# ----- the parser's side: `verifier_words` on the end ----------------------------------------


@pytest.fixture(scope="module")
def parser_policy():
    return CommandParserPolicy(es.load(PARSER_DIR, intra_op_threads=1), PolicyOptions(stream_options={
        "min_confidence": 0.0}))


def say(policy, session, text: str, **end_fields) -> list:
    outs = []
    for w in text.split():
        outs += list(policy.chunk(session, None, w, {"confidence": 0.99, "segment": 0}))
    return outs + list(policy.end(session, {"segment": 0, **end_fields}))


def test_verifier_words_that_read_as_another_command_make_it_not_understood(parser_policy):
    session = parser_policy.open("s", {})
    outs = say(parser_policy, session, "turn left ninety degrees", verifier_words=["turn", "right", "ninety", "degrees"])
    nu = next(o.fields for o in outs if o.kind == "not_understood")
    assert nu["reason"] == "verifier" and nu["command"] == "turn left 90 deg"
    assert outs[-1].fields["command"] is None and outs[-1].fields["not_understood"]
    done = say(parser_policy, session, "turn left ninety degrees",
               verifier_words=["please", "turn", "left", "ninety", "degrees"])[-1].fields  # same command, other words
    assert done["command"] == "turn left 90 deg" and not done["not_understood"]


def test_with_a_wake_word_the_verifier_must_hear_it_too(parser_policy):
    policy = CommandParserPolicy(parser_policy.model, PolicyOptions(stream_options={"min_confidence": 0.0,
                                                                                    "wake_word": True}))
    session = policy.open("s", {})
    said = "robot turn left ninety degrees"
    done = say(policy, session, said, verifier_words=["um"] + said.split())[-1].fields
    assert done["command"] == "turn left 90 deg"
    outs = say(policy, session, said, verifier_words=said.split()[1:])  # it did not hear "robot"
    assert next(o.fields for o in outs if o.kind == "not_understood")["reason"] == "verifier"
    assert outs[-1].fields["command"] is None


def test_a_stop_is_not_held_back_by_the_verifier(parser_policy):
    session = parser_policy.open("s", {})
    outs = say(parser_policy, session, "stop", verifier_words=["go"])
    assert any(o.kind == "delta" and "stop" in o.fields["fields"] for o in outs)
    assert outs[-1].fields["command"] == "stop"


@pytest.mark.parametrize("bad", [["turn", 3], "turn left", {"words": []}])
def test_bad_verifier_words_are_an_input_error_and_change_nothing(parser_policy, bad):
    session = parser_policy.open("s", {})
    for w in "turn left ninety degrees".split():
        list(parser_policy.chunk(session, None, w, {"confidence": 0.99}))
    with pytest.raises(InputError, match="verifier_words"):
        list(parser_policy.end(session, {"verifier_words": bad}))
    done = list(parser_policy.end(session, {"verifier_words": ["turn", "left", "ninety", "degrees"]}))[-1].fields
    assert done["command"] == "turn left 90 deg" and done["words"] == ["turn", "left", "ninety", "degrees"]


def test_a_stop_the_parser_network_reads_into_other_words_is_checked_like_any_command(parser_policy):
    """The network reads "stop" into a lone "around" (a recognizer's remnant of "spin around"); only
    a stop someone said skips the confidence and grammar checks, so this one is asked again."""
    p = CommandParser(parser_policy.model)
    p.push_word("around", 0.99)
    p.end()
    assert p.result.text() == "stop"  # the network's reading, which the policy must not publish
    policy = CommandParserPolicy(parser_policy.model, PolicyOptions())  # the default min_confidence
    outs = say(policy, policy.open("s", {}), "around")
    assert not any(o.kind == "delta" for o in outs)  # a stop said would go out at once, whatever its confidence
    nu = next(o.fields for o in outs if o.kind == "not_understood")
    assert nu["command"] == "stop" and outs[-1].fields["command"] is None


# ----- launch options -------------------------------------------------------------------------


def test_verifier_options_are_checked(first_model):
    parser = {"name": "parser", "dir": str(PARSER_DIR), "topics": ["words"], "policy": "command_parser",
              "verifier": str(VERIFIER)}
    cfg = config([parser]).models[0]
    with pytest.raises(ConfigError, match="verifier is for recognizer routes"):
        policy_for(es.load(cfg.dir, intra_op_threads=1), cfg)
    with pytest.raises(ConfigError, match="confirm_stops needs a verifier"):
        recognizer(first_model, confirm_stops=True)
    with pytest.raises(ConfigError, match="exclude each other"):
        recognizer(first_model, verifier=str(VERIFIER), confirm_stops=True, partial_words=True)
    with pytest.raises(ConfigError, match="not a block recognizer"):
        recognizer(first_model, verifier=str(PARSER_DIR))


def test_the_launch_file_resolves_the_verifier_beside_the_model_and_the_chain_runs_it():
    from edge_stream.cli.voice_report import PolicyChain
    from edge_stream.node.config import load_launch

    launch = ROOT / "launch" / "voice_commands_verified.toml"
    rec = next(n for n in load_launch(launch).nodes if n.name == "recognizer").models[0]
    assert Path(rec.verifier).resolve() == VERIFIER and rec.confirm_stops
    chain = PolicyChain.from_launch(str(launch), parser_options={"min_confidence": 0.0})
    assert chain.policies[1].verifier is not None
    assert chain.run(read_wav_float32(STOP)[0]).command == "stop"
    assert chain.run(read_wav_float32(CONVERSATION)[0]).command == ""


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_an_unconfirmed_that_is_not_a_boolean_is_an_input_error_and_changes_nothing(parser_policy, bad):
    session = parser_policy.open("s", {})
    with pytest.raises(InputError, match="unconfirmed"):
        list(parser_policy.chunk(session, None, "stop", {"confidence": 0.99, "unconfirmed": bad}))
    outs = say(parser_policy, session, "stop")
    assert outs[-1].fields["command"] == "stop" and outs[-1].fields["words"] == ["stop"]
