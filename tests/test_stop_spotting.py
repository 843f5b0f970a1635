"""Stop spotting (the recognizer route's `stop_spotting`, voice.ctc "Spotted words"): a stop word is
said on the frame where the stop labels' summed posterior reaches the threshold, even where blank
still wins, and the same spike is never said twice. Decoder cases on hand-made log-probs; the route
on the committed recognizer and its WAVs (tests/data/commands), through the voice report's
in-process chain of the node policies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_stream.audio import read_wav_float32
from edge_stream.errors import ConfigError
from edge_stream.node.node import make_node_config
from edge_stream.voice.ctc import CtcDecoder
from edge_stream.voice.grammar import STOP_WORDS

ROOT = Path(__file__).resolve().parent.parent
RECOGNIZER_DIR = ROOT / "models" / "command-recognizer-multisynth"
PARSER_DIR = ROOT / "models" / "command-parser"
WAVS = sorted((ROOT / "tests" / "data" / "commands").glob("command_*.wav"))
SYMBOLS = ["<blank>", "go", "stop", "halt"]


def frames(*rows: dict) -> np.ndarray:
    """Log-probs [n, 4] from per-frame posteriors {label: p} (the rest on blank)."""
    out = np.full((len(rows), len(SYMBOLS)), 1e-6)
    for t, row in enumerate(rows):
        for label, p in row.items():
            out[t, SYMBOLS.index(label)] = p
        out[t, 0] = max(1e-6, 1.0 - sum(row.values()))
    return np.log(out / out.sum(axis=1, keepdims=True))


def said(decoder: CtcDecoder, *chunks: np.ndarray) -> list[tuple[str, int, str]]:
    return [(w.word, w.end_frame, w.reason) for c in chunks for w in decoder.update(c).words]


def test_a_stop_that_never_wins_is_said_on_the_frame_it_reaches_the_threshold():
    lp = frames({"stop": 0.1}, {"stop": 0.3}, {"stop": 0.4}, {"stop": 0.1}, {})
    assert said(CtcDecoder(SYMBOLS), lp) == []  # greedy: blank wins every frame
    d = CtcDecoder(SYMBOLS, spot_words=STOP_WORDS, spot_threshold=0.25)
    words = d.update(lp).words
    assert [(w.word, w.end_frame, w.reason) for w in words] == [("stop", 1, "spotted")]
    assert words[0].confidence == pytest.approx(0.3, abs=1e-4)  # the stop labels' mass on that frame


def test_a_spotted_stop_whose_label_then_wins_is_said_once_also_across_updates():
    d = CtcDecoder(SYMBOLS, spot_words=STOP_WORDS, spot_threshold=0.25)
    got = said(d, frames({"stop": 0.3}), frames({"stop": 0.8}, {"halt": 0.7}, {}), frames({"go": 0.9}))
    assert got == [("stop", 0, "spotted"), ("go", 4, "label")]


def test_two_stop_spikes_apart_are_two_stops_and_a_winning_stop_is_said_by_its_label():
    d = CtcDecoder(SYMBOLS, spot_words=STOP_WORDS, spot_threshold=0.25)
    lp = frames({"stop": 0.9}, {"stop": 0.4}, {}, {"halt": 0.3}, {})
    assert said(d, lp) == [("stop", 0, "label"), ("halt", 3, "spotted")]


def test_a_word_winning_beside_a_spotted_stop_is_still_said_after_it():
    d = CtcDecoder(SYMBOLS, spot_words=STOP_WORDS, spot_threshold=0.25)
    assert said(d, frames({"go": 0.6, "stop": 0.3}, {})) == [("stop", 0, "spotted"), ("go", 0, "label")]


def test_without_spotting_or_below_its_threshold_decoding_is_greedys():
    rng = np.random.default_rng(0)
    lp = rng.standard_normal((300, len(SYMBOLS))) * 3.0
    plain = said(CtcDecoder(SYMBOLS), lp)
    assert said(CtcDecoder(SYMBOLS, spot_words=STOP_WORDS, spot_threshold=None), lp) == plain
    masses = np.exp(lp - lp.max(1, keepdims=True))
    masses = (masses[:, 2:].sum(1) / masses.sum(1)).max()
    unreachable = min(1.0, float(masses) + 1e-3)
    if unreachable < 1.0:
        assert said(CtcDecoder(SYMBOLS, spot_words=STOP_WORDS, spot_threshold=unreachable), lp) == plain


@pytest.mark.parametrize("kwargs, match", [
    ({"spot_words": STOP_WORDS, "spot_threshold": 0.0}, "spot_threshold"),
    ({"spot_words": STOP_WORDS, "spot_threshold": 1.5}, "spot_threshold"),
    ({"spot_words": ("freeze-please",), "spot_threshold": 0.3}, "none of the spot words"),
    ({"spot_words": STOP_WORDS, "spot_threshold": 0.3, "partial_threshold": 0.2}, "exclude each other"),
])
def test_bad_spotting_settings_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        CtcDecoder(SYMBOLS, **kwargs)


def route(**options) -> dict:
    return {"name": "recognizer", "dir": str(RECOGNIZER_DIR), "topics": ["speech"], "forward_topic": "words",
            **options}


def config(models: list):
    return make_node_config(name="n", input={"bind": ["tcp://127.0.0.1:*"]}, output={"bind": ["tcp://127.0.0.1:*"]},
                            models=models)


@pytest.mark.parametrize("value", [0.0, 1.5, True])
def test_a_stop_spotting_outside_0_1_is_refused_by_the_launch_file(value):
    with pytest.raises(ConfigError, match="stop_spotting"):
        config([route(stop_spotting=value)])


def test_stop_spotting_is_for_recognizer_routes_and_not_beside_partial_words():
    import edge_stream as es
    from edge_stream.node.policies import policy_for

    parser = {"name": "parser", "dir": str(PARSER_DIR), "topics": ["words"], "policy": "command_parser",
              "stop_spotting": 0.3}
    cfg = config([parser]).models[0]
    with pytest.raises(ConfigError, match="stop_spotting is for recognizer routes"):
        policy_for(es.load(cfg.dir, intra_op_threads=1), cfg)
    cfg = config([route(stop_spotting=0.3, partial_words=True)]).models[0]
    with pytest.raises(ConfigError, match="exclude each other"):
        policy_for(es.load(cfg.dir, intra_op_threads=1), cfg)


def test_the_route_with_stop_spotting_still_stops_on_stop_and_keeps_the_other_commands(vad_dir):
    """Through the in-process chain of the node policies (what the nodes run): the committed WAVs
    give the same commands with spotting at 0.3 as without, "stop" included."""
    from edge_stream.cli.voice_report import PolicyChain

    def chain(**recognizer_options) -> PolicyChain:
        models = [{"name": "vad", "dir": str(vad_dir), "topics": ["mic"], "forward_topic": "speech",
                   "stream_options": {"threshold": 0.5, "min_silence_ms": 300.0, "speech_pad_ms": 100.0}},
                  route(**recognizer_options),
                  {"name": "parser", "dir": str(PARSER_DIR), "topics": ["words"], "policy": "command_parser",
                   "stream_options": {"min_confidence": 0.0}}]
        return PolicyChain([config([m]).models[0] for m in models])

    plain, spotting = chain(), chain(stop_spotting=0.3)
    commands = []
    for path in WAVS:
        audio, _ = read_wav_float32(path)
        a, b = plain.run(audio), spotting.run(audio)
        assert b.commands == a.commands, path.name
        commands.append(b.command)
    assert "stop" in commands
