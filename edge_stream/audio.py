"""16-bit mono PCM WAV files: the one reader and writer the CLI, demos, export scripts and tests use."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from edge_stream.errors import InputError


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Mono 16-bit PCM samples (int16) and the sample rate of a WAV file. InputError: missing, not a WAV."""
    try:
        with wave.open(str(path), "rb") as w:
            if w.getsampwidth() != 2 or w.getnchannels() != 1:
                raise InputError(f"{path}: expected mono 16-bit PCM, got {w.getnchannels()} channel(s) of "
                                 f"{8 * w.getsampwidth()} bit")
            return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2"), w.getframerate()
    except FileNotFoundError:
        raise InputError(f"{path}: WAV file not found") from None
    except (wave.Error, EOFError, IsADirectoryError) as exc:
        raise InputError(f"{path}: not a readable WAV file ({str(exc) or type(exc).__name__})") from None


def read_wav_float32(path: str | Path) -> tuple[np.ndarray, int]:
    """Samples scaled to float32 in [-1, 1), and the sample rate."""
    pcm, sr = read_wav(path)
    return pcm.astype(np.float32) / 32768.0, sr


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int) -> None:
    """Write float samples in [-1, 1] as mono 16-bit PCM (clipped, rounded)."""
    pcm = np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
