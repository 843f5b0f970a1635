"""Incremental detokenization that never emits a broken UTF-8 character.

A byte-level BPE token may end in the middle of a multi-byte character; the
`tokenizers` library's DecodeStream holds such bytes back until the character
completes, and primes on earlier ids so leading-space rules come out right.
"""

from __future__ import annotations

from tokenizers.decoders import DecodeStream


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
