"""Helpers for LM stream tests: the PyTorch reference, chunkings, the window's reference mask."""

from __future__ import annotations

import threading

import numpy as np
import torch

TOL = 1e-4  # streaming logits vs the PyTorch model's full-sequence logits


def reference_logits(ref, ids, attention_mask=None) -> np.ndarray:
    """The PyTorch model's full-sequence logits [n, vocab] (one forward, no cache)."""
    with torch.no_grad():
        kwargs = {}
        if attention_mask is not None:
            kwargs = dict(attention_mask=attention_mask, position_ids=torch.arange(len(ids))[None])
        return ref(torch.tensor(np.asarray(ids)[None]), **kwargs).logits[0].numpy()


def chunk_sizes(draw_sizes, total, largest=None):
    """Chunk lengths covering `total`: the drawn sizes, then the rest in pieces <= largest."""
    out, i = [], 0
    for n in draw_sizes:
        if i >= total:
            break
        n = min(n, total - i)
        out.append(n)
        i += n
    largest = largest or total
    while i < total:
        out.append(min(largest, total - i))
        i += out[-1]
    return out


def feed_in_chunks(stream, ids, sizes) -> np.ndarray:
    parts, i = [], 0
    for n in sizes:
        parts.append(stream.feed(ids[i:i + n]).logits)
        i += n
    return np.concatenate(parts)


def window_mask(sizes, sinks, window, evict_block) -> torch.Tensor:
    """Additive 4D mask [1, 1, T, T]: query q sees what the cache held when its chunk ran.

    Derived from the policy, not from the implementation: when a chunk of n would
    overflow sinks + window, the oldest max(overflow, evict_block) non-sink entries
    leave; the chunk then sees the cache plus itself, causally.
    """
    total = sum(sizes)
    allow = np.zeros((total, total), dtype=bool)
    cache: list[int] = []
    p = 0
    for n in sizes:
        overflow = len(cache) + n - (sinks + window)
        if overflow > 0:
            del cache[sinks:sinks + max(overflow, evict_block)]
        for q in range(p, p + n):
            allow[q, cache] = True
            allow[q, p:q + 1] = True
        cache += range(p, p + n)
        p += n
    mask = torch.zeros(1, 1, total, total)
    mask[0, 0][~torch.from_numpy(allow)] = torch.finfo(torch.float32).min
    return mask


def in_threads(fn, n: int = 2) -> list:
    """fn(0) ... fn(n - 1), each in its own thread, all at once; their results in order. An exception
    in any thread is raised here."""
    results, errors = [None] * n, []

    def run(i):
        try:
            results[i] = fn(i)
        except Exception as exc:  # raised below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results
