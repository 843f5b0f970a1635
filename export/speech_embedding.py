"""The recognizer's frozen front end: a speech embedding trained on real speech, from PyPI.

    python -m export.speech_embedding            # fetch, check, and print the front end's figures

Why (issue 10): a recognizer trained only on synthetic voices learns the synthesizers. Google's
speech-embedding model (TF Hub `speech_embedding`, Apache-2.0) was trained for keyword spotting
on a large corpus of real speakers; openWakeWord ships it, with the log-mel front end it expects,
as ONNX files inside its wheel on PyPI. Frozen, it maps any voice into a space where words, not
talkers, differ, and a small head trained on synthetic speech over it holds on voices it never
heard (openWakeWord trains wake words on synthetic speech the same way).

- `fetch()`: `pip download openwakeword==0.5.1 --no-deps` (the last release whose wheel carries
  the models), the two files' sha256 checked, cached in .cache/speech-embedding/.
- The features as the streaming graph computes them (`Features.embed`): 16 kHz samples, scaled to
  int16 range; a 512-point STFT (the mel model's Conv weights) every 10 ms; 32 mel bands;
  10 log10, then `/ 10 + 2` (openWakeWord's transform); one 96-d embedding per 40 ms block from
  the last 76 mel frames (760 ms). The mel model's own last step, a clip to 80 dB below the
  maximum of the chunk it was given, depends on how the audio is chunked; it is left out, the
  fixed floor of its first clip (power 1e-10) is the only floor. The stream starts from mel
  frames at that floor (MEL_FLOOR), as if digital silence came before.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
HOP, N_FFT = 160, 512
BLOCK = 640  # samples per step: 40 ms, 4 mel frames, one embedding
CONTEXT = N_FFT - HOP  # 352 samples of the previous block, so a block's 4 frames line up with a whole-signal STFT
MEL_FRAMES = 76  # the embedding model's window
HISTORY = MEL_FRAMES - BLOCK // HOP  # mel frames the stream carries: 72
N_MELS, EMBED_DIM = 32, 96
MEL_FLOOR = -8.0  # transformed value of the floor power 1e-10: 10 * log10(1e-10) / 10 + 2
PCM_SCALE = 32768.0  # the models expect int16-range samples

WHEEL = "openwakeword==0.5.1"
FILES = {  # name in the wheel -> sha256
    "melspectrogram.onnx": "ba2b0e0f8b7b875369a2c89cb13360ff53bac436f2895cced9f479fa65eb176f",
    "embedding_model.onnx": "70d164290c1d095d1d4ee149bc5e00543250a7316b59f31d056cff7bd3075c1f",
}
CACHE = Path(".cache/speech-embedding")


def fetch(cache: Path = CACHE) -> dict[str, Path]:
    """The two ONNX files, from openwakeword's wheel on PyPI (downloaded once, checked every time)."""
    paths = {name: cache / name for name in FILES}
    if not all(p.is_file() for p in paths.values()):
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", tmp, WHEEL],
                           check=True)
            wheel = next(Path(tmp).glob("openwakeword-*.whl"))
            with zipfile.ZipFile(wheel) as z:
                for name, path in paths.items():
                    path.write_bytes(z.read(f"openwakeword/resources/models/{name}"))
    for name, path in paths.items():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != FILES[name]:
            raise RuntimeError(f"{path}: sha256 {digest}, expected {FILES[name]} (delete it to fetch again)")
    return paths


def mel_weights(paths: dict[str, Path]) -> dict[str, np.ndarray]:
    """The mel model's constants: DFT kernels [257, 1, 512] (real, imag), mel matrix [257, 32], clip range."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(paths["melspectrogram.onnx"]))
    init = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    clip = next(n for n in m.graph.node if n.op_type == "Clip" and n.input[0] == "mel_spectrogram")
    return {"real": init["0.stft.conv_real.weight"], "imag": init["0.stft.conv_imag.weight"],
            "mel": init["1.melW"], "power_min": init[clip.input[1]], "power_max": init[clip.input[2]]}


def log_mel(samples: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    """[n] float32 samples in [-1, 1) -> [(n - 512) // 160 + 1, 32] transformed log-mel frames (numpy,
    the graph's arithmetic)."""
    x = samples.astype(np.float32) * np.float32(PCM_SCALE)
    frames = np.lib.stride_tricks.sliding_window_view(x, N_FFT)[::HOP]  # [t, 512]
    re, im = frames @ w["real"][:, 0].T, frames @ w["imag"][:, 0].T
    power = np.clip((re * re + im * im) @ w["mel"], w["power_min"], w["power_max"])
    return (10.0 * np.log10(power) / 10.0 + 2.0).astype(np.float32)


class Features:
    """Embeddings of whole utterances, exactly as the stream computes them block by block (the mel
    step in numpy, the embedding in one ORT session)."""

    def __init__(self, paths: dict[str, Path] | None = None, threads: int = 1):
        import onnxruntime as ort

        self.paths = paths or fetch()
        self.w = mel_weights(self.paths)
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        self.embedding = ort.InferenceSession(str(self.paths["embedding_model.onnx"]), so,
                                              providers=["CPUExecutionProvider"])

    def mel_frames(self, audio: np.ndarray) -> np.ndarray:
        """[n_blocks * 4 + HISTORY, 32]: the initial history, then the mel frames of `audio` padded to
        whole blocks with CONTEXT zeros in front (the stream's initial tail)."""
        n = -(-len(audio) // BLOCK) * BLOCK
        x = np.concatenate([np.zeros(CONTEXT, np.float32), audio, np.zeros(n - len(audio), np.float32)])
        return np.concatenate([np.full((HISTORY, N_MELS), MEL_FLOOR, np.float32), log_mel(x, self.w)])

    def embed(self, audio: np.ndarray, batch: int = 256) -> np.ndarray:
        """[n_blocks, 96]: the embedding after each 40 ms block of `audio` (float32, 16 kHz)."""
        mel = self.mel_frames(audio)
        windows = np.lib.stride_tricks.sliding_window_view(mel, (MEL_FRAMES, N_MELS))[::BLOCK // HOP, 0]
        out = [self.embedding.run(None, {"input_1": np.ascontiguousarray(windows[i:i + batch, :, :, None])})[0]
               for i in range(0, len(windows), batch)]
        return np.concatenate(out).reshape(-1, EMBED_DIM)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    paths = fetch()
    feats = Features(paths)
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal(SAMPLE_RATE * 10) * 0.05).astype(np.float32)
    t0 = time.perf_counter()
    e = feats.embed(audio)
    dt = time.perf_counter() - t0
    print(f"{paths['embedding_model.onnx']}: {e.shape[0]} embeddings of {e.shape[1]} from 10 s of audio "
          f"in {dt * 1000:.0f} ms on 1 thread (real-time factor {dt / 10:.3f})")


if __name__ == "__main__":
    main()
