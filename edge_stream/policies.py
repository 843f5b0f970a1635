"""Node policies: what one model kind does with a chunk, and which outputs it publishes.

The node (transport) hands a policy a typed input (an ndarray or text plus
header fields) and the stream's session; the policy returns an iterator of
`Output`s. Nothing here knows about sockets or msgpack, and the runtime
below knows nothing about either. Iterators let the worker publish each
output the moment it exists (a generated token, a speech event) and
interleave long generations of different streams.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from .errors import ConfigError, InputError
from .launch import ModelConfig


@dataclass
class Output:
    """One output message before encoding: its kind, extra header fields, optional array."""

    kind: str
    fields: dict = field(default_factory=dict)
    data: np.ndarray | None = None
    infer_ms: float = 0.0  # model run time spent producing it


def _ms_since(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3


class Policy:
    """Base: streams are opened from the model with the route's options merged with per-stream ones."""

    batchable = False  # True: `chunks_batched` runs chunks of several streams in one model run

    def __init__(self, model, cfg: ModelConfig):
        self.model = model
        self.cfg = cfg

    def open(self, stream: str, options: dict):
        return self.model.open_stream(**{**self.cfg.stream_options, **options})

    def chunk(self, session, data: np.ndarray | None, text: str | None, extra: dict) -> Iterator[Output]:
        raise NotImplementedError

    def end(self, session, extra: dict) -> Iterator[Output]:
        yield Output("done", {})

    def reset(self, session) -> Output:
        session.reset()
        return Output("event", {"event": "reset"})

    def rewind(self, session, n: int) -> dict:
        raise InputError(f"{self.model.name}: rewind is not supported by this model kind")

    def describe(self, session) -> dict:
        return {}


class LMPolicy(Policy):
    """Causal LMs: append chunks (token ids or text) as they arrive; generate on `end`
    (or when a text chunk ends with the trigger suffix), publishing one `delta` per token
    and then `done` (the realtime APIs' delta/done shape)."""

    GEN_FIELDS = {"max_new_tokens": int, "temperature": (int, float), "top_k": int, "top_p": (int, float),
                  "seed": int}

    def chunk(self, session, data, text, extra) -> Iterator[Output]:
        if text is not None:
            if self.model.tokenizer is None:
                raise InputError(f"{self.model.name}: text chunks need a tokenizer; send token ids (int64)")
            ids = self.model.encode(text)  # [n] int64
            if ids.size == 0:
                raise InputError(f"{self.model.name}: text {text!r} encodes to no tokens")
        else:
            if data.dtype.kind not in "iu":
                raise InputError(f"{self.model.name}: token chunks are int64 or int32 ids, got {data.dtype}")
            ids = data
        t0 = time.perf_counter()
        out = session.feed(ids)
        fed = Output("fed", {"position": session.position, "n_tokens": int(len(out.logits))},
                     infer_ms=_ms_since(t0))
        if self.cfg.publish_logits == "all":
            fed.data = out.logits  # [n, vocab]
        elif self.cfg.publish_logits == "last":
            fed.data = out.logits[-1:]  # [1, vocab]
        yield fed
        if self.cfg.trigger == "suffix" and text is not None and text.endswith(self.cfg.trigger_suffix):
            yield from self.end(session, extra)

    def end(self, session, extra) -> Iterator[Output]:
        params = {"max_new_tokens": self.cfg.max_new_tokens, "temperature": self.cfg.temperature,
                  "top_k": self.cfg.top_k, "top_p": self.cfg.top_p, "seed": self.cfg.seed}
        for name, typ in self.GEN_FIELDS.items():
            if name in extra:
                if not isinstance(extra[name], typ) or isinstance(extra[name], bool):
                    raise InputError(f"{self.model.name}: header field {name!r} must be "
                                     f"{getattr(typ, '__name__', 'a number')}, got {extra[name]!r}")
                params[name] = extra[name]
        try:
            gen = session.generate(**params)
        except ConfigError as exc:  # bad sampling values in the header are the sender's input error
            raise InputError(str(exc)) from None
        pieces, index = [], 0
        t0 = time.perf_counter()
        for piece in gen:
            pieces.append(piece.text)
            yield Output("delta", {"index": index, "token_id": piece.token_id, "text": piece.text},
                         infer_ms=_ms_since(t0))
            index += 1
            t0 = time.perf_counter()
        reason = getattr(session, "finish_reason", None) or "length"
        yield Output("done", {"n_tokens": index, "text": "".join(pieces), "reason": reason,
                              "position": session.position}, infer_ms=_ms_since(t0))

    def rewind(self, session, n: int) -> dict:
        session.rewind(n)
        return {"position": session.position}

    def describe(self, session) -> dict:
        return {"position": session.position}


class BlockPolicy(Policy):
    """Fixed-block audio models (the VAD): one `result` per chunk with the probability of
    every block completed by it, then one `event` per speech start/end."""

    EVENT_NAMES = {"start": "speech_start", "end": "speech_end"}
    batchable = True

    def __init__(self, model, cfg):
        super().__init__(model, cfg)
        self.sample_rate = model.manifest.blocking.sample_rate

    def samples(self, data, text, extra) -> np.ndarray:
        """The chunk as float32 samples [n], after the boundary checks (InputError otherwise)."""
        if text is not None:
            raise InputError(f"{self.model.name}: takes audio samples, not text")
        sr = extra.get("sr")
        if sr is not None and self.sample_rate is not None and sr != self.sample_rate:
            raise InputError(f"{self.model.name}: sr {sr!r} is not supported; this model takes {self.sample_rate} Hz")
        if data.dtype == np.int16:
            return data.astype(np.float32) * (1.0 / 32768)  # PCM16 -> [-1, 1): a copy, the only one
        if data.dtype == np.float16:
            return data.astype(np.float32)
        if data.dtype == np.float32:
            return data
        raise InputError(f"{self.model.name}: audio samples are float32, int16 or float16, got {data.dtype}")

    def chunk(self, session, data, text, extra) -> Iterator[Output]:
        samples = self.samples(data, text, extra)
        t0 = time.perf_counter()
        out = session.feed(samples)
        yield from self._outputs(session, out, _ms_since(t0))

    def chunks_batched(self, sessions: list, msgs: list) -> list[list[Output]]:
        """Chunks of different streams (one each) through one model run per block step.

        Returns each stream's outputs, equal to what `chunk` gives it alone; `infer_ms` is
        the batched run's time (every chunk waited for all of it). Raises InputError if any
        chunk is refused, and then no stream has changed.
        """
        from .blocks import run_blocks_batched

        samples = [self.samples(m.data, m.text, m.extra) for m in msgs]
        t0 = time.perf_counter()
        outs = run_blocks_batched(sessions, samples)
        infer_ms = _ms_since(t0)
        return [list(self._outputs(s, o, infer_ms)) for s, o in zip(sessions, outs)]

    def _outputs(self, session, out, infer_ms: float) -> Iterator[Output]:
        yield Output("result", {"start_sample": int(out.start_sample), "n_blocks": int(len(out.probs)),
                                "samples": session.samples_fed}, data=out.probs, infer_ms=infer_ms)
        for ev in out.events:
            for key, sample in ev.items():
                yield Output("event", {"event": self.EVENT_NAMES.get(key, key), "sample": int(sample)})

    def end(self, session, extra) -> Iterator[Output]:
        yield Output("done", {"samples": session.samples_fed})

    def describe(self, session) -> dict:
        return {"samples": session.samples_fed}


class SequencePolicy(Policy):
    """Frame-input sequence models (no tokenizer, no blocking): one `result` per chunk with the
    first returned output's rows for the chunk."""

    def chunk(self, session, data, text, extra) -> Iterator[Output]:
        if text is not None:
            raise InputError(f"{self.model.name}: takes frames, not text")
        t0 = time.perf_counter()
        out = session.feed(data)
        first = next(iter(out.outputs.values()))
        yield Output("result", {"position": session.position}, data=first, infer_ms=_ms_since(t0))

    def describe(self, session) -> dict:
        return {"position": session.position}


def policy_for(model, cfg: ModelConfig) -> Policy:
    """The policy for a loaded model, chosen from its manifest."""
    m = model.manifest
    if m.blocking is not None:
        return BlockPolicy(model, cfg)
    if m.input.kind == "tokens":
        return LMPolicy(model, cfg)
    return SequencePolicy(model, cfg)


def session_info(policy: Policy, session: Any) -> dict:
    return policy.describe(session) if session is not None else {}
