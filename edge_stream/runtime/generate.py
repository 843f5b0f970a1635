"""Generation helpers: choosing the next token from one position's logits (greedy,
temperature, top-k, top-p) and incremental detokenization that never emits a broken
UTF-8 character.

A byte-level BPE token may end in the middle of a multi-byte character; the
`tokenizers` library's DecodeStream holds such bytes back until the character
completes, and primes on earlier ids so leading-space rules come out right.
"""

from __future__ import annotations

import numpy as np
from tokenizers.decoders import DecodeStream

from edge_stream.errors import ConfigError


# Below this a temperature only overflows logits / temperature (1e-310 gives inf - inf = NaN
# probabilities); it already picks the argmax, so ask for 0 (greedy) instead.
MIN_TEMPERATURE = 1e-3


def check_sampling(temperature: float, top_k: int, top_p: float, seed: int | None = None) -> None:
    if not (temperature == 0.0 or MIN_TEMPERATURE <= temperature < float("inf")):
        raise ConfigError(f"temperature: expected 0 (greedy) or a finite value >= {MIN_TEMPERATURE}, got {temperature}")
    if seed is not None and not 0 <= seed < 2**64:
        raise ConfigError(f"seed: expected 0 <= seed < 2**64 (or none), got {seed}")
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


class TextDeltas:
    """Turns generated token ids into text deltas, one `push` per token."""

    def __init__(self, tokenizer, context_ids=(), skip_special_tokens: bool = True):
        self._tokenizer = tokenizer
        self._stream = DecodeStream(skip_special_tokens=skip_special_tokens)
        if len(context_ids):
            # Prime on the prompt's tail (its text was already shown) so the first delta
            # decodes as a continuation, not as the start of a text.
            self._stream.step(tokenizer, [int(t) for t in context_ids])

    def push(self, token_id: int) -> str:
        """Text completed by this token ('' while a character is still incomplete)."""
        return self._stream.step(self._tokenizer, int(token_id)) or ""
