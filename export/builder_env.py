"""The environment onnxruntime-genai's model builder runs in, made on first use.

onnxruntime-genai 0.18's builder imports model classes that only transformers 5 has
(Qwen3.5, ...), while optimum-onnx 0.1.0, our default exporter, needs transformers < 4.58.
The two cannot share one environment, so the builder (already a subprocess, see
`export.gqa.build`) runs in an overlay venv: its own site-packages holds only what
differs (transformers 5 and what it pulls: huggingface-hub, tokenizers, typer), and a
.pth file appends this environment's site-packages for everything else (torch, onnx,
onnx-ir, onnxruntime). It takes 20-30 s and 175 MB (transformers 5: 130 MB), from the same
package index.
genai's runtime needs only onnxruntime and numpy, so the peer itself runs in this
environment (the `peers` extra).

Location: `.cache/genai-builder-<version>/` at the repository root (EDGE_STREAM_BUILDER_ENV
overrides it); `make clean` removes it with .cache.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

log = logging.getLogger("export.builder_env")

GENAI_VERSION = "0.18.0"  # the same as the `peers` extra's runtime: one release builds and runs the folder
REQUIREMENTS = (f"onnxruntime-genai=={GENAI_VERSION}", "transformers==5.24.0")
DONE = ".edge-stream-ready"  # written last: an interrupted creation is started again


def builder_env_dir() -> Path:
    default = Path(__file__).resolve().parents[1] / ".cache" / f"genai-builder-{GENAI_VERSION}"
    return Path(os.environ.get("EDGE_STREAM_BUILDER_ENV", default))


def builder_python() -> Path:
    """The Python that runs the model builder, creating its environment on first use
    (RuntimeError with pip's last lines if it cannot)."""
    env = builder_env_dir()
    python = env / "bin" / "python"
    if (env / DONE).is_file():
        return python
    env.parent.mkdir(parents=True, exist_ok=True)
    with open(env.parent / f".{env.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # tests and the bench may build gqa models at once
        if not (env / DONE).is_file():
            _create(env, python)
    return python


def _create(env: Path, python: Path) -> None:
    log.info("      creating the model builder's environment in %s (%s)", env, ", ".join(REQUIREMENTS))
    shutil.rmtree(env, ignore_errors=True)
    _run([sys.executable, "-m", "venv", str(env)])
    # site.addsitedir (not a bare path line) so this environment's own .pth files apply too;
    # appended after the overlay's site-packages, so the overlay's transformers wins.
    ours = sysconfig.get_paths()["purelib"]
    theirs = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            capture_output=True, text=True, check=True).stdout.strip()
    Path(theirs, "zz_edge_stream_base.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    # No -c constraints.txt: its transformers<4.58 is exactly what the builder cannot use.
    # Packages already in the base environment satisfy the rest (pip reports optimum-onnx's
    # transformers pin as a conflict: optimum never runs in this environment).
    _run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *REQUIREMENTS])
    (env / DONE).write_text(" ".join(REQUIREMENTS) + "\n")


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = [line[:300] for line in (proc.stderr or proc.stdout).strip().splitlines()[-8:]]
        raise RuntimeError(f"creating the model builder's environment failed ({' '.join(cmd[:4])} ..., "
                           f"exit {proc.returncode}): " + "\n".join(last))
