"""Choosing the next token from one position's logits: greedy, temperature, top-k, top-p."""

from __future__ import annotations

import numpy as np

from .errors import ConfigError


def check_sampling(temperature: float, top_k: int, top_p: float) -> None:
    if not temperature >= 0.0:
        raise ConfigError(f"temperature: expected >= 0 (0 = greedy), got {temperature}")
    if top_k < 0:
        raise ConfigError(f"top_k: expected >= 0 (0 = off), got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ConfigError(f"top_p: expected 0 < top_p <= 1, got {top_p}")


def next_token(logits: np.ndarray, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
               rng: np.random.Generator | None = None) -> int:
    """Token id drawn from `logits` [vocab]; temperature 0 is argmax (ties: lowest id)."""
    if temperature == 0.0:
        return int(np.argmax(logits))
    scores = logits.astype(np.float64) / temperature  # copy: float64 keeps softmax of wide logits exact
    if 0 < top_k < scores.size:
        kth = np.partition(scores, -top_k)[-top_k]
        scores[scores < kth] = -np.inf
    scores -= scores.max()
    probs = np.exp(scores)
    probs /= probs.sum()
    if top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        # Keep the smallest prefix whose mass reaches top_p (always at least one token).
        cut = int(np.searchsorted(cumulative, top_p)) + 1
        keep = order[:cut]
        kept = np.zeros_like(probs)
        kept[keep] = probs[keep]
        probs = kept / kept.sum()
    rng = rng if rng is not None else np.random.default_rng()
    return int(rng.choice(probs.size, p=probs))
