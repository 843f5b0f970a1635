"""Training features for the embedding recognizer: each training utterance, augmented, through the
frozen speech embedding (`export.speech_embedding`), computed once per epoch and cached.

The embedding is frozen, so its output for an augmented utterance never changes: computing it once
per (utterance, epoch) and training the head many times over the cache is the same training as
computing it in every step, at a fraction of the time (the embedding costs ~1.4 ms per 40 ms block
on one core, the head a few microseconds). Each epoch is `train_recognizer.heard` (the conv
recognizer's augmentation chain, from (seed, epoch, utterance)), so both recipes hear the same audio.

Cache: .cache/embed-features/<key>.npz per epoch: float16 embeddings of all utterances concatenated,
their offsets, and each word's end block (the alignment guide).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export import speech_data as sd
from export import speech_embedding as se
from export import train_recognizer as tr

CACHE = Path(".cache/embed-features")
VERSION = 1  # part of the cache key: bump when the features or the augmentation change


@dataclass
class EpochFeatures:
    """One epoch of the training set as the head sees it."""

    feats: np.ndarray  # [total_blocks, 96] float16
    offsets: np.ndarray  # [n + 1] int64: utterance i is feats[offsets[i]:offsets[i + 1]]
    word_ends: list[np.ndarray]  # per utterance: each word's last sample in the augmented audio

    def utterance(self, i: int) -> np.ndarray:
        return self.feats[self.offsets[i]:self.offsets[i + 1]]

    @staticmethod
    def concat(parts: list[EpochFeatures]) -> EpochFeatures:
        """One epoch over several training parts, utterances in part order (`train_recognizer.concat_sets`)."""
        if len(parts) == 1:
            return parts[0]
        starts = np.cumsum([0] + [len(p.feats) for p in parts[:-1]])
        offsets = np.concatenate([parts[0].offsets[:1]] + [p.offsets[1:] + s for p, s in zip(parts, starts)])
        return EpochFeatures(np.concatenate([p.feats for p in parts]), offsets.astype(np.int64),
                             [e for p in parts for e in p.word_ends])


_FEATURES: se.Features | None = None
_DATA: sd.SpeechSet | None = None


def _one(job: tuple[int, int, int, str]) -> tuple[np.ndarray, np.ndarray]:
    global _FEATURES
    i, seed, epoch, chain = job
    if _FEATURES is None:
        _FEATURES = se.Features(threads=1)
    aug = tr.heard(_DATA, i, seed, epoch, tr.LIGHT_CHAIN if chain == "light" else tr.TRAIN_CHAIN)
    ends = np.array([aug.position(end) for _, _, end in _DATA.word_spans[i]], np.int64)
    return _FEATURES.embed(aug.audio, batch=8).astype(np.float16), ends


def cache_path(data: sd.SpeechSet, seed: int, epoch: int, chain: str) -> Path:
    key = hashlib.sha256(json.dumps([VERSION, se.FILES, len(data), int(data.offsets[-1]),
                                     [s.text for s in data.specs[:50]], seed, epoch, chain]).encode()).hexdigest()[:10]
    return CACHE / f"epoch{epoch}-{chain}-{len(data)}-{key}.npz"


def epoch_features(data: sd.SpeechSet, seed: int, epoch: int, chain: str = "train", workers: int = 2,
                   progress=None) -> EpochFeatures:
    """The cached features of one epoch, computed on first use (`workers` processes)."""
    global _DATA
    path = cache_path(data, seed, epoch, chain)
    if path.is_file():
        z = np.load(path)
        ends = np.split(z["ends"], z["end_offsets"][1:-1])
        return EpochFeatures(z["feats"], z["offsets"], ends)
    se.fetch()  # in this process, before the workers fork
    _DATA = data
    jobs = [(i, seed, epoch, chain) for i in range(len(data))]
    t0, out = time.time(), []
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for k, r in enumerate(pool.imap(_one, jobs, chunksize=16)):
            out.append(r)
            if progress is not None:
                progress(k + 1, len(jobs), time.time() - t0)
    feats = np.concatenate([f for f, _ in out])
    offsets = np.concatenate([[0], np.cumsum([len(f) for f, _ in out])]).astype(np.int64)
    ends = [e for _, e in out]
    end_offsets = np.concatenate([[0], np.cumsum([len(e) for e in ends])]).astype(np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, feats=feats, offsets=offsets, ends=np.concatenate(ends), end_offsets=end_offsets)
    tmp.rename(path)
    return EpochFeatures(feats, offsets, ends)
