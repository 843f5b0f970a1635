"""Issue 13, section 10: every `edge-stream` command answers bad input with one line naming the
problem and exit status 2, never a traceback. Each case runs the real command in a subprocess."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

BAD_LAUNCH = '[[node]]\nname = "n"\nworkers = "x"\n'
BAD_MODEL_LAUNCH = ('[[node]]\nname = "n"\ninput.bind = ["tcp://127.0.0.1:*"]\noutput.bind = ["tcp://127.0.0.1:*"]\n'
                    '[[node.models]]\nname = "m"\ndir = "no-such-model"\ntopics = ["t"]\n')

# (command line, a part of the one-line answer that names the problem)
CASES = [
    ("demo --launch missing.toml", "missing.toml: launch file not found"),
    ("demo --wav missing.wav", "missing.wav: WAV file not found"),
    ("run missing.toml", "missing.toml: launch file not found"),
    ("run not-toml.txt", "not-toml.txt: not valid TOML"),
    ("run bad.toml", "node[0]"),
    ("run bad-model.toml", "no-such-model"),
    ("run", "the following arguments are required: launch"),
    ("keys a-file", "a-file"),
    ("replay missing.wav --topic mic", "missing.wav: WAV file not found"),
    ("replay not-toml.txt --topic mic", "not-toml.txt: not a readable WAV file"),
    ("replay x.wav --topic mic --chunk-ms fast", "argument --chunk-ms: invalid float value: 'fast'"),
    ("listen out --connect nowhere --timeout 0.1", "cannot connect 'nowhere'"),
    ("listen out --count many", "argument --count: invalid int value: 'many'"),
    ("inspect no-such-model", "no-such-model"),
    ("inspect a-file", "a-file"),
    ("export hf no-tokenizer --graph gqa -o out", "no-tokenizer"),
    ("export hf no-tokenizer -o out --precision int3", "argument --precision: invalid choice: 'int3'"),
    ("bench --scenario nope", "argument --scenario: invalid choice: 'nope'"),
    ("bench --model-dir no-such-model --scenario ttft --quick", "no-such-model"),
    ("voice-demo missing.wav", "missing.wav: WAV file not found"),
    ("voice-controller --connect nowhere --timeout 0.1", "cannot connect 'nowhere'"),
    ("voice-report --utterances lots", "argument --utterances: invalid int value: 'lots'"),
    ("no-such-command", "invalid choice: 'no-such-command'"),
]


def edge_stream(args: list[str], cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_stream.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "bad.toml").write_text(BAD_LAUNCH)
    (tmp_path / "bad-model.toml").write_text(BAD_MODEL_LAUNCH)
    (tmp_path / "not-toml.txt").write_text("this is = = not toml\n")
    (tmp_path / "a-file").write_text("")
    (tmp_path / "no-tokenizer").mkdir()  # a Hugging Face folder with a config and no tokenizer
    (tmp_path / "no-tokenizer" / "config.json").write_text('{"model_type": "llama"}')
    return tmp_path


@pytest.mark.parametrize("line, names", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_line_and_exit_status_2(workdir, line, names):
    proc = edge_stream(line.split(), workdir)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    # Progress logging may come first; the answer is the last line, and only one line says "error".
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines and names in lines[-1], lines
    assert not [ln for ln in lines[:-1] if re.search(r"\berror\b", ln, re.I) and " INFO " not in ln], lines


def test_every_command_has_a_bad_input_case():
    """A new command gets a case above (the test walks `edge-stream --help`)."""
    proc = edge_stream(["--help"], None)
    listed = re.search(r"\{([^}]*)\}", proc.stdout)
    commands = set(listed.group(1).split(",")) if listed else set(
        m.group(1) for m in re.finditer(r"^    ([a-z][a-z-]+)", proc.stdout, re.M))
    assert {"run", "replay", "export", "inspect"} <= commands, proc.stdout
    covered = {line.split()[0] for line, _ in CASES}
    assert commands <= covered, f"commands without a bad-input case: {sorted(commands - covered)}"
