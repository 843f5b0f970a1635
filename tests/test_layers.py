"""The import rule (docs/architecture.md): light parts of the package load no heavy dependency,
and the import contracts of pyproject.toml hold.

Import checks run in a fresh interpreter: this test process has long since imported
everything. A spy on `sys.meta_path` records the stack of the first import of each
forbidden module, so a failure shows the chain of edge_stream lines that pulled it in,
lazy imports inside functions included (which a static graph only sees as possible).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

PROBE = r"""
import json, sys, traceback

FORBIDDEN = {forbidden!r}
first_import = {{}}

class Spy:
    def find_spec(self, name, path=None, target=None):
        for f in FORBIDDEN:
            if (name == f or name.startswith(f + ".")) and f not in first_import:
                frames = [fr for fr in traceback.extract_stack()[:-1]
                          if "edge_stream" in fr.filename or fr.filename == "<string>"]
                first_import[f] = [f"{{fr.filename}}:{{fr.lineno}}: {{fr.line}}" for fr in frames]
        return None  # only watching: the normal finders import it

sys.meta_path.insert(0, Spy())
{code}
loaded = [f for f in FORBIDDEN if any(m == f or m.startswith(f + ".") for m in sys.modules)]
print(json.dumps({{"loaded": loaded, "chains": {{f: first_import.get(f, []) for f in loaded}}}}))
"""


def loaded_after(code: str, forbidden: list[str]) -> dict:
    """Run `code` in a fresh interpreter; which of `forbidden` it loaded, and how."""
    proc = subprocess.run([sys.executable, "-c", PROBE.format(forbidden=forbidden, code=code)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def chains(result: dict) -> str:
    return "\n".join(f"{m} imported via:\n  " + "\n  ".join(c or ["(no edge_stream frame on the stack)"])
                     for m, c in result["chains"].items())


@pytest.mark.parametrize("code, forbidden", [
    # A sensor or controller imports the client: no ONNX Runtime, no runtime layer, no torch.
    ("import edge_stream.node.client", ["onnxruntime", "edge_stream.runtime", "torch"]),
    # The WebSocket gateway's process only translates: no model runtime in it.
    ("import edge_stream.node.gateway", ["onnxruntime", "edge_stream.runtime", "edge_stream.voice", "torch"]),
    # The top-level package loads the runtime lazily (first use of es.load and friends).
    ("import edge_stream", ["onnxruntime", "edge_stream.runtime", "torch"]),
    # The voice grammar is run-time code: no training stack.
    ("import edge_stream.voice.grammar", ["torch", "transformers", "export"]),
    # `edge-stream --help` on a robot: building the CLI loads no model runtime and no torch.
    ("import importlib; importlib.import_module('edge_stream.cli.main').build_parser()",
     ["onnxruntime", "torch", "transformers"]),
])
def test_light_imports_load_no_heavy_module(code, forbidden):
    result = loaded_after(code, forbidden)
    assert not result["loaded"], f"{code!r} loaded {result['loaded']}:\n{chains(result)}"


def test_import_contracts_hold():
    """The same `lint-imports` that `make test` runs first, so a bare `pytest` checks the contracts too."""
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if exe is None:
        pytest.skip("lint-imports is not installed (pip install -e '.[test]')")
    proc = subprocess.run([exe, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
