"""Recreate tests/data/speech_16k.wav: three synthetic English phrases with pauses.

The VAD tests need real speech, not noise or tones, and must not need a
synthesizer at test time, so the WAV is committed and this script documents
how it was made. Needs Debian `espeak-ng` and `sox` on PATH:

    apt-get install -y espeak-ng sox
    python -m export.make_speech_wav -o tests/data/speech_16k.wav

Layout (16 kHz, mono, 16-bit PCM): 0.5 s silence, phrase, 1.0 s silence,
phrase, 1.0 s silence, phrase, 0.7 s silence. A faint seeded noise floor
(about -66 dBFS) keeps the "silence" from being digital zeros.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from edge_stream.audio import read_wav_float32, write_wav

SAMPLE_RATE = 16000
PHRASES = (
    "Turn left at the next corner.",
    "Stop the robot now, please.",
    "What is the battery level?",
)
LEAD_S, GAP_S, TRAIL_S = 0.5, 1.0, 0.7
NOISE_RMS = 0.0005  # of full scale
SEED = 16000
TRIM_LEVEL = 0.003  # of full scale
MAX_BYTES = 300_000


def synthesize(text: str, workdir: Path, index: int) -> np.ndarray:
    """espeak-ng (22.05 kHz) -> sox resample to 16 kHz mono 16-bit (-D: no dither, so reruns are byte-identical)."""
    raw, resampled = workdir / f"p{index}_raw.wav", workdir / f"p{index}_16k.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "170", "-w", str(raw), text], check=True)
    subprocess.run(["sox", "-D", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(resampled)], check=True)
    speech, _ = read_wav_float32(resampled)
    # espeak-ng pads each utterance with silence; trim it so the gaps are the ones laid out above.
    loud = np.flatnonzero(np.abs(speech) > TRIM_LEVEL)
    return speech[loud[0]:loud[-1] + 1]


def build(out: Path) -> Path:
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found on PATH: apt-get install -y espeak-ng sox")
    parts = [np.zeros(int(LEAD_S * SAMPLE_RATE), np.float32)]
    with tempfile.TemporaryDirectory() as tmp:
        for i, text in enumerate(PHRASES):
            print(f"synthesizing phrase {i + 1}/{len(PHRASES)}: {text!r}")
            if i:
                parts.append(np.zeros(int(GAP_S * SAMPLE_RATE), np.float32))
            parts.append(synthesize(text, Path(tmp), i))
    parts.append(np.zeros(int(TRAIL_S * SAMPLE_RATE), np.float32))
    audio = np.concatenate(parts)
    audio += np.random.default_rng(SEED).normal(0.0, NOISE_RMS, audio.shape).astype(np.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_wav(out, audio, SAMPLE_RATE)
    size = out.stat().st_size
    print(f"wrote {out}: {len(audio) / SAMPLE_RATE:.2f} s, {size} bytes")
    # The check that can fail: the file reads back as what the tests expect.
    back, _ = read_wav_float32(out)
    if len(back) != len(audio) or size > MAX_BYTES:
        sys.exit(f"{out}: read back {len(back)} samples (wrote {len(audio)}), {size} bytes (limit {MAX_BYTES})")
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", type=Path, default=Path("tests/data/speech_16k.wav"))
    build(parser.parse_args(argv).out)


if __name__ == "__main__":
    main()
