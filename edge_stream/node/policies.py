"""Node policies: what one model kind does with a chunk, and which outputs it publishes.

The node (transport) hands a policy a typed input (an ndarray or text plus
header fields) and the stream's session; the policy returns an iterator of
`Output`s. Nothing here knows about sockets or msgpack, and the runtime
below knows nothing about either. Iterators let the worker publish each
output the moment it exists (a generated token, a speech event) and
interleave long generations of different streams.

Chaining: a policy yields a `Forward` for what a next node would take as input
(speech audio, a word, a segment's end). Policies do not know whether their
route forwards: the node publishes a Forward in *input* format on the route's
`forward_topic` when it has one, else as an ordinary output (or not at all,
see `Forward.output_kind`). The voice pipeline is three such
policies: `VadGatePolicy` (speech audio), `RecognizerPolicy` (words),
`CommandParserPolicy` (command fields for the controller). `extra` holds the
header's model-specific fields and, when the message had one, `t_capture_ns`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from edge_stream.errors import ConfigError, InputError, StreamStateError
from edge_stream.voice.grammar import CANCEL_WORDS, HESITATIONS, NEGATIONS, QUESTION_WORDS, STOP_WORDS
from edge_stream.voice.speech_gate import SpeechGate
from edge_stream.voice.vad import VadStream


@dataclass
class Output:
    """One output message before encoding: its kind, extra header fields, optional array."""

    kind: str
    fields: dict = field(default_factory=dict)
    data: np.ndarray | None = None
    infer_ms: float = 0.0  # model run time spent producing it
    # Stream position just past the last input this output derives from: a revision that cuts the
    # stream back below it voids the output (the worker keeps (upto, seq) and names it in `retract`).
    upto: int | None = None
    # kind "retract" only: the position the stream was cut back to; the worker fills in `first_seq`,
    # the first void output's seq, and publishes nothing when no output was void.
    retract_from: int | None = None


@dataclass
class Forward:
    """Input for a next node (the forwarding contract, said once): an input message of `kind`
    ("chunk" or "end") with header `fields`, an array or `text`, and the capture time.

    The node publishes it on the route's forward_topic in input format, numbered per stream by the
    node; on a route without one it becomes an ordinary output of `output_kind` (header: `fields`,
    plus `text` and `t_capture_ns` when set), or nothing when `output_kind` is None."""

    kind: str  # input kind the next node sees: "chunk", "end" or "interrupt"
    output_kind: str | None  # kind when the route does not forward; None: only a next node wants it
    fields: dict = field(default_factory=dict)
    data: np.ndarray | None = None
    text: str | None = None
    t_capture_ns: int | None = None  # None: the node passes on the input message's t_capture_ns
    infer_ms: float = 0.0

    def as_output(self) -> Output:
        """The ordinary output a non-forwarding route publishes instead."""
        fields = dict(self.fields)
        if self.text is not None:
            fields["text"] = self.text
        if self.t_capture_ns is not None:
            fields["t_capture_ns"] = self.t_capture_ns
        return Output(self.output_kind, fields, self.data, self.infer_ms)


@dataclass(frozen=True)
class PolicyOptions:
    """A route's model-level settings that policies read (docs: config.ModelConfig). Deliberately
    not the ModelConfig itself: topics, forward_topic and the model's location are the node's."""

    stream_options: dict = field(default_factory=dict)  # merged under each stream's open options
    trigger: str = "end"
    trigger_suffix: str | None = None
    max_new_tokens: int = 32
    max_new_tokens_cap: int = 4096  # ceiling of a request's max_new_tokens
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    publish_logits: str = "none"
    wait_for_end: bool = False
    barge_in: bool = False
    prefix_text: str | None = None  # LMs: every stream starts from this prompt, run once (LMPolicy)
    partial_words: bool = False  # recognizer: forward words early (partial), then revisions
    partial_threshold: float = 0.2  # recognizer, partial_words: the leading label's posterior
    stop_spotting: float | None = None  # recognizer: stop words said at this summed posterior (voice.ctc)
    verifier: str | None = None  # recognizer: a second recognizer's directory, heard beside the first
    confirm_stops: bool = False  # recognizer with a verifier: a stop word goes out once both heard one
    ngram_lm: str | None = None  # recognizer: ARPA word LM for the segment-end beam search (voice.ctc_beam)
    lm_weight: float = 0.8
    word_bonus: float = 2.5
    beam_size: int = 8

    @classmethod
    def of(cls, cfg) -> PolicyOptions:
        """The policy's part of a config.ModelConfig (already validated by the launch file)."""
        return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)})


def _ms_since(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3


def retract(position: int) -> Output:
    """Outputs derived from input at `position` or later are void (a revision replaced that input)."""
    return Output("retract", {"position": position}, retract_from=position)


class Policy:
    """Base: streams are opened from the model with the route's options merged with per-stream ones.
    Streaming verbs (`chunk`, `end`) return iterators of `Output` and `Forward`."""

    batchable = False  # True: `chunks_batched` runs chunks of several streams in one model run
    revisable = False  # True: chunks may carry `replace_last` (and, for text, `revise`)
    # interleave(session, data, text, extra) -> Iterator[Output]: feeds a chunk between two tokens of
    # a generation in progress (launch option input_during_generation = "interleave"); None: cannot.
    interleave = None

    def __init__(self, model, cfg: PolicyOptions):
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


@dataclass
class LMStream:
    """One LM stream of the node: the runtime stream, and the token ids fed since the last `end`
    (the utterance a `revise` text chunk is compared with)."""

    stream: Any  # runtime StreamSession
    utterance: list = field(default_factory=list)

    @property
    def position(self) -> int:
        return self.stream.position

    def reset(self) -> None:
        self.stream.reset()
        self.utterance.clear()


class LMPolicy(Policy):
    """Causal LMs: append chunks (token ids or text) as they arrive; generate on `end`
    (or when a text chunk ends with the trigger suffix), publishing one `delta` per token
    and then `done` (the realtime APIs' delta/done shape). A chunk may revise: `replace_last`
    replaces the stream's last k tokens, `revise` (text) replaces the utterance since the last
    `end`, fed as the difference from its longest common token prefix; a `retract` names the
    first output the replaced input voided."""

    GEN_FIELDS = {"max_new_tokens": int, "temperature": (int, float), "top_k": int, "top_p": (int, float),
                  "seed": int}
    revisable = True

    def __init__(self, model, cfg: PolicyOptions):
        super().__init__(model, cfg)
        # Only the last position's logits unless they are published: on a graph with a
        # logits_to_keep input the lm_head then runs for one position per chunk, not all of them.
        self.stream_options = {"logits": "all" if cfg.publish_logits == "all" else "last", **cfg.stream_options}
        self.prefix = self._run_prefix(cfg.prefix_text) if cfg.prefix_text else None

    def _run_prefix(self, text: str):
        """The route's `prefix_text` encoded and run once, at start: a snapshot every stream of the
        route opens from (its KV entries shared, runtime open_stream(prefix=...)). ConfigError when
        the route's streams could not start from it."""
        if self.model.tokenizer is None:
            raise ConfigError(f"{self.model.name}: prefix_text needs a tokenizer in the model directory")
        ids = self.model.encode(text)  # [n] int64
        if not ids.size:
            raise ConfigError(f"{self.model.name}: prefix_text {text!r} encodes to no tokens")
        stream = self.model.open_stream(**self.stream_options)
        stream.feed(ids)
        prefix = stream.snapshot()
        try:
            self.model.open_stream(prefix=prefix, **self.stream_options)  # what every open will do
        except StreamStateError as exc:
            raise ConfigError(f"{self.model.name}: prefix_text ({ids.size} tokens): {exc}") from None
        return prefix

    def open(self, stream: str, options: dict):
        opts = {**self.stream_options, **options}
        if self.prefix is not None:
            opts["prefix"] = self.prefix
        return LMStream(self.model.open_stream(**opts))

    def _encode(self, text: str) -> np.ndarray:
        if self.model.tokenizer is None:
            raise InputError(f"{self.model.name}: text chunks need a tokenizer; send token ids (int64)")
        return self.model.encode(text)  # [n] int64

    def chunk(self, session, data, text, extra) -> Iterator[Output]:
        yield from self.interleave(session, data, text, extra)
        if self.cfg.trigger == "suffix" and text is not None and text.endswith(self.cfg.trigger_suffix):
            yield from self.end(session, extra)

    def interleave(self, session, data, text, extra) -> Iterator[Output]:
        """Feed a chunk (a revision too) and publish its `fed`; never starts a generation, so it may
        run between two tokens of one in progress (the worker's `interleave` mode)."""
        ids = data if text is None else self._encode(text)  # the stream checks dtype and vocabulary
        replace = extra.get("replace_last", 0)
        if extra.get("revise"):
            # The text replaces the utterance: feed only what differs from what was fed for it.
            said = session.utterance
            same = _common_prefix(said, ids)
            replace, ids = len(said) - same, ids[same:]
        elif ids.size == 0:
            raise InputError(f"{self.model.name}: text {text!r} encodes to no tokens")
        t0 = time.perf_counter()
        if ids.size:
            out = session.stream.feed(ids, replace_last=replace)
            start, n, logits = out.start, len(ids), out.logits
            del out
        else:  # a revision that only takes tokens back (the new text is a prefix of the old)
            session.stream.rewind(replace)
            start, n, logits = session.position, 0, None
        infer_ms = _ms_since(t0)
        keep = max(0, len(session.utterance) - replace)
        session.utterance[keep:] = ids.tolist()
        if replace:
            yield dataclasses.replace(retract(start), infer_ms=infer_ms)
        fed = Output("fed", {"position": session.position, "n_tokens": n}, infer_ms=infer_ms,
                     upto=session.position)
        if replace:
            fed.fields["replaced"] = int(replace)
        if logits is not None and self.cfg.publish_logits == "all":
            fed.data = logits  # [n, vocab]
        elif logits is not None and self.cfg.publish_logits == "last":
            fed.data = logits[-1:]  # [1, vocab]
        # Not held across the yield: the worker may pause this iterator while it begins other
        # streams' jobs, and each paused one would keep its chunk's [n, vocab] logits (ORT memory).
        del logits
        yield fed

    def end(self, session, extra) -> Iterator[Output]:
        params = {"max_new_tokens": self.cfg.max_new_tokens, "temperature": self.cfg.temperature,
                  "top_k": self.cfg.top_k, "top_p": self.cfg.top_p, "seed": self.cfg.seed}
        for name, typ in self.GEN_FIELDS.items():
            if name in extra:
                if not isinstance(extra[name], typ) or isinstance(extra[name], bool):
                    raise InputError(f"{self.model.name}: header field {name!r} must be "
                                     f"{getattr(typ, '__name__', 'a number')}, got {extra[name]!r}")
                params[name] = extra[name]
        if params["max_new_tokens"] > self.cfg.max_new_tokens_cap:
            raise InputError(f"{self.model.name}: max_new_tokens {params['max_new_tokens']} is over this model's "
                             f"max_new_tokens_cap of {self.cfg.max_new_tokens_cap} (launch file)")
        try:
            session.stream.generate(**params)  # checks the values now; the turns below generate
        except ConfigError as exc:  # bad sampling values in the header are the sender's input error
            raise InputError(str(exc)) from None
        session.utterance.clear()  # the next input starts a new utterance
        pieces = []
        t0 = time.perf_counter()
        for piece in self._turns(session, params):
            pieces.append(piece.text)
            yield Output("delta", {"index": len(pieces) - 1, "token_id": piece.token_id, "text": piece.text},
                         infer_ms=_ms_since(t0), upto=session.position)
            t0 = time.perf_counter()
        reason = getattr(session.stream, "finish_reason", None) or "length"
        yield Output("done", {"n_tokens": len(pieces), "text": "".join(pieces), "reason": reason,
                              "position": session.position}, infer_ms=_ms_since(t0), upto=session.position)

    @staticmethod
    def _turns(session, params: dict) -> Iterator:
        """Generated pieces, up to max_new_tokens in all. Input fed while a piece is out (the worker's
        `interleave` mode) ends a turn: generation goes on from the stream as it now is, so the model
        sees its own partial answer and the new input in one cache."""
        left, turn = params["max_new_tokens"], 0
        while True:
            seed = params["seed"]
            gen = session.stream.generate(**{**params, "max_new_tokens": left,
                                             "seed": None if seed is None else (seed + turn) % 2**64})
            for piece in gen:
                handed = session.stream.state
                yield piece
                left -= 1
                if session.stream.state is not handed:  # input went in meanwhile
                    gen.close()
                    break
            else:
                return
            turn += 1

    def rewind(self, session, n: int) -> dict:
        session.stream.rewind(n)
        del session.utterance[max(0, len(session.utterance) - n):]
        return {"position": session.position}

    def describe(self, session) -> dict:
        return {"position": session.position}


class BlockPolicy(Policy):
    """Fixed-block audio models (the VAD): one `result` per chunk with the probability of
    every block completed by it, then one `event` per speech start/end. Sessions are
    voice.vad.VadStreams: the wire checked the transport, the stream checks dtype and `sr`."""

    EVENT_NAMES = {"start": "speech_start", "end": "speech_end"}
    batchable = True

    def __init__(self, model, cfg):
        super().__init__(model, cfg)
        self.sample_rate = model.manifest.blocking.sample_rate

    def open(self, stream: str, options: dict):
        return VadStream(self.model, **{**self.cfg.stream_options, **options})

    def vad_of(self, session) -> VadStream:
        return session

    def _audio_only(self, text) -> None:
        if text is not None:
            raise InputError(f"{self.model.name}: takes audio samples, not text")

    def chunk(self, session, data, text, extra) -> Iterator[Output]:
        self._audio_only(text)
        t0 = time.perf_counter()
        out = self.vad_of(session).feed(data, sr=extra.get("sr"), trusted=True)  # finiteness: checked at the wire
        yield from self._outputs(session, out, _ms_since(t0), extra)

    def chunks_batched(self, sessions: list, msgs: list) -> list[list[Output]]:
        """Chunks of different streams (one each) through one model run per block step.

        Returns each stream's outputs, equal to what `chunk` gives it alone; `infer_ms` is
        the batched run's time (every chunk waited for all of it). Raises InputError if any
        chunk is refused, and then no stream has changed.
        """
        for m in msgs:
            self._audio_only(m.text)
        t0 = time.perf_counter()
        outs = VadStream.feed_batched([self.vad_of(s) for s in sessions], [m.data for m in msgs],
                                      srs=[m.extra.get("sr") for m in msgs], trusted=True)
        infer_ms = _ms_since(t0)
        return [list(self._outputs(s, o, infer_ms, self._fields(m))) for s, o, m in zip(sessions, outs, msgs)]

    def _fields(self, msg) -> dict:
        """What `chunk` gets as `extra`, for a message of a batch."""
        return msg.extra

    def _outputs(self, session, out, infer_ms: float, extra: dict) -> Iterator[Output]:
        yield Output("result", {"start_sample": int(out.start_sample), "n_blocks": int(len(out.probs)),
                                "samples": self.vad_of(session).samples_fed}, data=out.probs, infer_ms=infer_ms)
        for ev in out.events:
            for key, sample in ev.items():
                yield Output("event", {"event": self.EVENT_NAMES.get(key, key), "sample": int(sample)})

    def end(self, session, extra) -> Iterator[Output]:
        yield Output("done", {"samples": session.samples_fed})

    def describe(self, session) -> dict:
        return {"samples": session.samples_fed}


class SequencePolicy(Policy):
    """Frame-input sequence models (no tokenizer, no blocking): one `result` per chunk with the
    first returned output's rows for the chunk; `replace_last` replaces the last frames."""

    revisable = True

    def chunk(self, session, data, text, extra) -> Iterator[Output]:
        if text is not None:
            raise InputError(f"{self.model.name}: takes frames, not text")
        if extra.get("revise"):
            raise InputError(f"{self.model.name}: 'revise' is for text chunks; send replace_last")
        replace = extra.get("replace_last", 0)
        t0 = time.perf_counter()
        out = session.feed(data, replace_last=replace, trusted=True)  # finiteness: checked at the wire
        first = next(iter(out.outputs.values()))
        infer_ms = _ms_since(t0)
        if replace:
            yield dataclasses.replace(retract(out.start), infer_ms=infer_ms)
        yield Output("result", {"position": session.position}, data=first, infer_ms=infer_ms, upto=session.position)

    def describe(self, session) -> dict:
        return {"position": session.position}


def _common_prefix(a: list, b: np.ndarray) -> int:
    """Length of the longest common prefix of token id lists `a` and `b`."""
    n = min(len(a), len(b))
    diff = np.flatnonzero(np.asarray(a[:n], dtype=np.int64) != b[:n])
    return int(diff[0]) if diff.size else n


def _capture_time(extra: dict, sr: int, at_sample: int, last_sample: int) -> int | None:
    """Wall clock of `at_sample`, from the chunk's t_capture_ns (the capture time of its last sample)."""
    t = extra.get("t_capture_ns")
    return None if t is None else int(t - (last_sample - at_sample) * 1_000_000_000 // sr)


@dataclass
class GatedStream:
    """A VAD stream and its speech gate (one per input stream)."""

    vad: VadStream
    gate: SpeechGate

    @property
    def samples_fed(self) -> int:
        return self.vad.samples_fed

    def reset(self) -> None:
        self.vad.reset()
        self.gate.reset()


class VadGatePolicy(BlockPolicy):
    """The VAD as a gate: besides the VAD outputs, forward the audio of each speech segment
    (padded start from a pre-roll of `speech_pad_ms`) and an `end` when it ends; nothing in
    silence. One forwarded stream per input stream, `segment` numbering the segments; the
    `end` carries `speech_end_sample` and `t_speech_end_ns` (the VAD's end minus its pad)."""

    def open(self, stream: str, options: dict):
        opts = {**self.cfg.stream_options, **options}
        if opts.get("events") is False:
            raise ConfigError(f"{self.model.name}: speech gating needs VAD events; drop events = false")
        vad = VadStream(self.model, **opts)
        return GatedStream(vad, SpeechGate(int(vad.speech_pad_samples), vad.block))

    def vad_of(self, session) -> VadStream:
        return session.vad

    def _fields(self, msg) -> dict:
        return {**msg.extra, "t_capture_ns": msg.t_capture_ns}  # times the speech end

    def _outputs(self, session, out, infer_ms, extra) -> Iterator[Output]:
        # Forwards first: they are what the next node is waiting for. out.samples: the chunk as float32.
        last = session.vad.samples_fed
        for piece in session.gate.update(out.samples, out.events):
            yield self._forward(piece, extra, last)
        yield from super()._outputs(session, out, infer_ms, extra)

    def _forward(self, piece, extra, last_sample: int) -> Forward:
        if piece.kind == "audio":
            return Forward("chunk", "speech", {"sr": self.sample_rate, "segment": piece.segment,
                                                "start_sample": piece.start_sample}, data=piece.audio)
        fields = {"segment": piece.segment, "end_sample": piece.end_sample,
                  "speech_end_sample": piece.speech_end_sample}
        t_end = _capture_time(extra, self.sample_rate, piece.speech_end_sample, last_sample)
        if t_end is not None:
            fields["t_speech_end_ns"] = t_end
        return Forward("end", "speech_end", fields)

    def end(self, session, extra) -> Iterator[Output]:
        piece = session.gate.finish()
        if piece is not None:
            yield self._forward(piece, extra, session.vad.samples_fed)
        yield Output("done", {"samples": session.vad.samples_fed})

    def describe(self, session) -> dict:
        return {"samples": session.vad.samples_fed, "in_speech": session.gate.in_speech}


@dataclass
class VerifierStream:
    """The verifier's own block stream and decoder on the same audio, and the words it heard."""

    blocks: Any  # runtime BlockStream of the verifier
    decoder: Any  # CtcDecoder
    words: list = field(default_factory=list)  # (word, end_sample), in order
    search: Any = None  # ngram_lm: its SegmentSearch

    @property
    def decoded_samples(self) -> int:
        """Samples of the segment whose frames the verifier has decoded."""
        return self.decoder.state.frames * self.decoder.frame_samples

    def stop_near(self, end_sample: int, window: int) -> bool:
        """Whether the verifier heard a stop word ending within `window` samples of `end_sample`."""
        return any(w in STOP_WORDS and abs(e - end_sample) <= window for w, e in self.words)

    def reset(self) -> None:
        self.blocks.reset()
        self.decoder.reset()
        self.words.clear()
        if self.search is not None:
            self.search.reset()


@dataclass
class RecognizerStream:
    """One stream of the CTC recognizer: its block stream, its decoder, and the segment so far."""

    blocks: Any  # runtime BlockStream of the recognizer
    decoder: Any  # CtcDecoder
    held: list = field(default_factory=list)  # wait_for_end: the segment's audio chunks
    words: int = 0  # words sent in this segment (early partials: a revised word counts once)
    heard: bool = False  # this segment's audio has begun
    finals: list = field(default_factory=list)  # early partials: the final words' confidences, in order
    check: VerifierStream | None = None  # the route's verifier, when it has one
    waiting: list = field(default_factory=list)  # confirm_stops: words held behind a stop word not yet confirmed
    search: Any = None  # ngram_lm: the segment's SegmentSearch (beam search, frames, greedy words)
    last_speech_end: int | None = None  # the previous segment's speech_end_sample (kept across segments)
    pause_ms: float | None = None  # from the previous segment's end of speech to this segment's first audio

    def reset(self) -> None:
        self.blocks.reset()
        self.decoder.reset()
        self.held.clear()
        self.words = 0
        self.heard = False
        self.pause_ms = None
        self.finals.clear()
        self.waiting.clear()
        if self.check is not None:
            self.check.reset()
        if self.search is not None:
            self.search.reset()


@dataclass
class SegmentSearch:
    """ngram_lm: one recognizer's beam search over the segment, its frames and its greedy words, kept
    for the rescoring at the segment's end."""

    beam: Any  # voice.ctc_beam.BeamDecoder
    frames: list = field(default_factory=list)  # the segment's logits, block by block
    greedy: list = field(default_factory=list)  # the words greedy decoding gave
    last_word_frame: int = -1  # frame of the last greedy word (-1: none yet)
    rescored_at: int | None = None  # last_word_frame when the segment was last rescored at a pause

    def update(self, logits: np.ndarray, words) -> None:
        self.beam.update(logits)
        self.frames.append(np.array(logits, np.float32))  # a copy: the runtime reuses its buffers
        self.greedy += [w.word for w in words if not w.partial]
        if words:
            self.last_word_frame = words[-1].end_frame

    def reset(self) -> None:
        self.beam.reset()
        self.frames.clear()
        self.greedy.clear()
        self.last_word_frame, self.rescored_at = -1, None


class RecognizerPolicy(BlockPolicy):
    """Streaming CTC recognizer: audio chunks in, each word out (forwarded as a text chunk on
    `forward_topic`, else a `word` output) as soon as greedy CTC makes it final. `end` closes the
    segment: the last partial block is zero-padded, the last word flushed, `end` forwarded (with
    the input end's `segment`, `t_speech_end_ns`, ...) when the segment had words, and the stream
    starts afresh (the model was trained on utterances from zero state).

    Early partial words (route option `partial_words`, docs/protocol.md "Early partial words"): the
    decoder also publishes a word while its label only leads (`partial: true`), a later label for the
    same word goes out as a revision (same `word_index`, `replace_last: 1`), a confirmation sends
    nothing, and the segment's `end` carries `final_confidences` (the final words' confidences).

    A verifier (route option `verifier`, a second recognizer trained another way): it hears the same
    audio and forwards nothing itself; the segment's `end` carries its words (`verifier_words`), and the
    parser asks again when they read as another command (docs/voice_commands.md, "Two recognizers").
    Why: two recognizers with different front ends rarely mishear a voice the same way, so their
    agreement is a confidence that one recognizer's posteriors cannot give. With `confirm_stops`, a
    stop word goes out once the verifier also heard one within STOP_CONFIRM_MS of it (the words after
    it wait behind it); one the verifier never confirms goes out marked `unconfirmed`, which the
    parser reads as a word outside the grammar."""

    batchable = False  # each chunk feeds one stream's decoder; not batched
    PASS_ON = ("segment", "speech_end_sample", "t_speech_end_ns", "end_sample")  # end fields handed on
    STOP_CONFIRM_MS = 320.0  # how far apart the two recognizers' stop words may end and still agree
    # ngram_lm: rescore the segment so far once this long has passed without a word (before the VAD's end of
    # the segment, which waits for its longer min_silence_ms); the verifier's words come later than the first's
    PAUSE_RESCORE_MS = 200.0

    def __init__(self, model, cfg, verifier=None):
        super().__init__(model, cfg)
        from edge_stream.voice.ctc import CtcDecoder

        self._decoder = CtcDecoder.from_model(model)  # template: symbols, lexicon, frame length read once
        self.verifier = verifier
        if verifier is not None:
            if verifier.manifest.blocking is None or verifier.manifest.output_for("logits") is None:
                raise ConfigError(f"{model.name}: verifier {verifier.name!r} is not a block recognizer "
                                  "(manifest 'blocking' and a logits output)")
            if verifier.manifest.blocking.sample_rate != model.manifest.blocking.sample_rate:
                raise ConfigError(f"{model.name}: verifier {verifier.name!r} takes another sample rate")
            self._check_decoder = CtcDecoder.from_model(verifier)
        self.lm = None
        if cfg.ngram_lm is not None:
            from edge_stream.voice.ngram import read_arpa
            self.lm = read_arpa(cfg.ngram_lm)
            labels = {w for w in self._decoder.symbols if w != self._decoder.symbols[self._decoder.blank]}
            unknown = sorted(labels - self.lm.words)
            if unknown and "<unk>" not in self.lm.words:
                raise ConfigError(f"{model.name}: ngram_lm {cfg.ngram_lm} has no unigram for {unknown[:5]} "
                                  "and no <unk> to score them as")
        self._window = int(self.STOP_CONFIRM_MS * model.manifest.blocking.sample_rate / 1000)
        self._pause = int(self.PAUSE_RESCORE_MS * model.manifest.blocking.sample_rate / 1000)

    def open(self, stream: str, options: dict):
        from edge_stream.voice.ctc import CtcDecoder
        d = self._decoder
        threshold = self.cfg.partial_threshold if self.cfg.partial_words else None
        decoder = CtcDecoder(d.symbols, blank=d.blank, frame_samples=d.frame_samples, partial_threshold=threshold,
                             spot_words=STOP_WORDS, spot_threshold=self.cfg.stop_spotting)
        opts = {**self.cfg.stream_options, **options}
        check = None
        if self.verifier is not None:
            v = self._check_decoder
            check = VerifierStream(self.verifier.open_stream(), CtcDecoder(v.symbols, blank=v.blank,
                                                                           frame_samples=v.frame_samples),
                                   search=self._search(v))
        return RecognizerStream(self.model.open_stream(**opts), decoder, check=check, search=self._search(d))

    def _search(self, decoder) -> SegmentSearch | None:
        """ngram_lm: a segment search over `decoder`'s labels (None without an LM)."""
        if self.lm is None:
            return None
        from edge_stream.voice.ctc_beam import BeamDecoder
        c = self.cfg
        return SegmentSearch(BeamDecoder(decoder.symbols, decoder.blank, self.lm, lm_weight=c.lm_weight,
                                         word_bonus=c.word_bonus, beam=c.beam_size))

    def chunk(self, session, data, text, extra) -> Iterator[Output]:
        self._audio_only(text)
        if self.cfg.barge_in and not session.heard:
            # The VAD heard speech start: a chained LM still speaking its reply stops (barge-in).
            yield Forward("interrupt", None, {k: extra[k] for k in ("segment",) if k in extra})
        if not session.heard and session.last_speech_end is not None and isinstance(extra.get("start_sample"), int):
            session.pause_ms = round(max(0, extra["start_sample"] - session.last_speech_end) * 1000 / self.sample_rate, 1)
        session.heard = True
        if self.cfg.wait_for_end:
            x = session.blocks.check_chunk(data, sr=extra.get("sr"), trusted=True)  # float32 [n]
            session.held.append(x.copy() if np.may_share_memory(x, data) else x)  # the frame is not ours to keep
            return
        yield from self._decode(session, data, extra)

    @staticmethod
    def _run(blocks, decoder, samples, sr, flush: bool, search: SegmentSearch | None = None) -> list:
        """Feed `samples` (and with `flush` the zero-padded last partial block); the words decoded
        (`search`, when given, takes the same frames and words)."""
        out = blocks.feed(samples, sr=sr, trusted=True) if len(samples) else None
        pending = blocks.pending_samples
        runs = [out] if out is not None else []
        if flush and pending:  # the last partial block, zero-padded, so its frames are decoded
            runs.append(blocks.feed(np.zeros(blocks.model.manifest.blocking.block - pending, np.float32)))
        words = []
        for o in runs:
            if o.n_blocks:
                got = decoder.update(o.logits).words
                if search is not None:
                    search.update(o.logits, got)
                words += got
        if flush:
            last = decoder.finish().words
            if search is not None:
                search.greedy += [w.word for w in last if not w.partial]
            words += last
        return words

    def _decode(self, session, samples, extra, flush: bool = False) -> Iterator[Output]:
        t0 = time.perf_counter()
        sr = extra.get("sr")
        ends = session.decoder.frame_end_sample
        words = [(w, ends(w.end_frame), False)
                 for w in self._run(session.blocks, session.decoder, samples, sr, flush, session.search)]
        check = session.check
        if check is not None:  # the same audio; heard after the first recognizer's words are known
            c_ends = check.decoder.frame_end_sample
            check.words += [(w.word, c_ends(w.end_frame))
                            for w in self._run(check.blocks, check.decoder, samples, sr, flush, check.search)]
        if self.cfg.confirm_stops:
            words = self._confirmed(session, words, flush)
        pause = self._pause_rescoring(session, extra) if not flush else None
        infer_ms = _ms_since(t0)
        for w, end_sample, unconfirmed in words:
            if self.cfg.partial_words and not w.partial:
                session.finals.append(round(w.confidence, 4))
            if w.confirms:  # the partial already sent was right: it is final now, nothing new to say
                continue
            revises = w.revises and session.words > 0
            index = session.words - 1 if revises else session.words
            fields = {"word_index": index, "end_sample": end_sample,
                      "confidence": round(w.confidence, 4)}  # the parser node's threshold reads it
            if revises:
                fields["replace_last"] = 1
            if w.partial:
                fields["partial"] = True
            if unconfirmed:
                fields["unconfirmed"] = True
            if "segment" in extra:
                fields["segment"] = extra["segment"]
            if session.pause_ms is not None:
                fields["pause_before_ms"] = session.pause_ms
            yield Forward("chunk", "word", fields, text=w.word, infer_ms=infer_ms)
            if not revises:
                session.words += 1
            infer_ms = 0.0
        if pause is not None:
            yield pause

    def _pause_rescoring(self, session, extra: dict) -> Forward | None:
        """ngram_lm: once the first recognizer has heard PAUSE_RESCORE_MS without a word, the segment so
        far rescored (`nbest`), forwarded as a text chunk with `revise: true` (the words since the
        segment began are these), so the parser has the rescored command before the VAD ends the
        segment. None when not due (once per pause) or when the best hypothesis has no words."""
        search = session.search
        if search is None or not search.frames or search.rescored_at == search.last_word_frame:
            return None
        decoded = session.decoder.state.frames
        if (decoded - 1 - search.last_word_frame) * session.decoder.frame_samples < self._pause:
            return None
        search.rescored_at = search.last_word_frame
        nbest = self._nbest(session)
        if not nbest[0]["words"]:
            return None  # sent even when the words are those sent: its posteriors are new
        fields = {"revise": True, "nbest": nbest, **({"segment": extra["segment"]} if "segment" in extra else {})}
        return Forward("chunk", "word", fields, text=" ".join(nbest[0]["words"]))

    def _confirmed(self, session, words: list, flush: bool) -> list:
        """confirm_stops: the words that may go out now. A stop word waits (and the words after it,
        so the order holds) until the verifier heard a stop word near it; once the verifier has
        decoded past its window without one, or the segment ends, it goes out `unconfirmed`."""
        queue, session.waiting = session.waiting + words, []
        ready = []
        for k, (w, end_sample, _) in enumerate(queue):
            unconfirmed = False
            if w.word in STOP_WORDS and not session.check.stop_near(end_sample, self._window):
                if not flush and session.check.decoded_samples < end_sample + self._window:
                    session.waiting = queue[k:]  # not decided yet: it and the words after it wait
                    break
                unconfirmed = True
            ready.append((w, end_sample, unconfirmed))
        return ready

    def end(self, session, extra) -> Iterator[Output]:
        if session.held:
            audio, session.held = np.concatenate(session.held), []
        else:
            audio = np.zeros(0, np.float32)
        limit = session.blocks.max_chunk_samples  # a long held segment goes in allowed sizes
        pieces = [audio[i:i + limit] for i in range(0, len(audio), limit)] or [audio]
        for k, piece in enumerate(pieces):
            yield from self._decode(session, piece, extra, flush=k == len(pieces) - 1)
        n_words = session.words
        passed = {k: extra[k] for k in self.PASS_ON if k in extra}
        if session.pause_ms is not None:
            passed["pause_before_ms"] = session.pause_ms
        if session.check is not None:
            passed["verifier_words"] = [w for w, _ in session.check.words]
        if session.search is not None and session.search.frames:
            passed["nbest"] = self._nbest(session)
        if n_words or passed.get("nbest", [{}])[0].get("words"):  # for the next node only: a route that does not forward publishes `done` alone
            # Early partials: the final words' confidences; a follower holding more words than these
            # takes its last one back (a partial no label confirmed).
            finals = {"final_confidences": list(session.finals)} if self.cfg.partial_words else {}
            yield Forward("end", None, {**passed, **finals})
        if self.cfg.partial_words:
            n_words = len(session.finals)  # the words said (an unconfirmed partial was not)
        if isinstance(extra.get("speech_end_sample"), int):
            session.last_speech_end = extra["speech_end_sample"]
        session.reset()
        yield Output("done", {"n_words": n_words, **passed})

    NBEST_MIN_POSTERIOR = 1e-4  # hypotheses less likely than this under every recognizer are not sent
    NBEST_MAX = 16

    def _nbest(self, session) -> list[dict]:
        """ngram_lm: the segment's hypotheses (each recognizer's beam search and greedy words), scored by
        every recognizer and the LM, best first: {"words", "posteriors"}, one posterior per recognizer
        (the first, then the verifier): how likely that recognizer, with the LM, finds this reading
        against the others. The parser's confidence in a command is the least of them."""
        from edge_stream.voice.ctc_beam import nbest

        c = self.cfg
        searches = [(session.search, self._decoder)]
        if session.check is not None:
            searches.append((session.check.search, self._check_decoder))
        recognizers, candidates = [], []
        for search, dec in searches:
            if not search.frames:
                continue
            recognizers.append((np.concatenate(search.frames), dec.symbols, dec.blank))
            candidates += [h.words for h in search.beam.finish()] + [tuple(search.greedy)]
        return nbest(recognizers, candidates, self.lm, c.lm_weight, c.word_bonus, self.NBEST_MIN_POSTERIOR,
                     self.NBEST_MAX, challenges=SAFETY_PHRASES)

    def describe(self, session) -> dict:
        return {"samples": session.blocks.samples_fed, "words": session.words,
                **({"verifier_words": len(session.check.words)} if session.check is not None else {})}


# How long a pause a cancel or a dangling negation reaches across (CommandParserPolicy, "Across segments"):
# a VAD that ends a segment at a 300 ms pause splits "walk back thirteen meters, forget it" and "so don't, go".
DEFAULT_CANCEL_REACH_MS = 2000.0


@dataclass
class ParserStream:
    """One stream of the command parser (one utterance at a time), with its launch options."""

    parser: Any  # CommandParser
    min_confidence: float = 0.0  # below it a command becomes `not_understood`
    wake_word: str | None = None  # when set, only commands after it count (stop always does)
    grammar_check: bool = True  # a command the grammar's rules do not read from the same words is not published
    held: list = field(default_factory=list)  # wait_for_end: the segment's (word, confidence)
    woke_at: int | None = None  # parser token index at the wake word (None: not heard yet)
    woke_word: int | None = None  # index (in the utterance) of the word that woke it: a revision of it undoes that
    before: int = 0  # words of the previous utterances: a delta's `upto` is before + its word count
    heard_words: set = field(default_factory=set)  # ngram_lm: words heard before a rescoring replaced them (safety check)
    published: str = ""  # the command of the utterance's last delta ("" before any)
    cancel_reach_ms: float = DEFAULT_CANCEL_REACH_MS  # a cancel, or a negation a segment ended on, reaches across a pause this long
    in_segment: bool = False  # a word of the present segment has come
    pause_ms: float | None = None  # the present segment's pause_before_ms (None: first segment, or not known)
    carried: list = field(default_factory=list)  # (word, confidence) carried in from the previous segment: its words come first
    dangling: list = field(default_factory=list)  # the last segment ended on these negation words: for the next segment
    reachable: dict | None = None  # the last segment's published command (not a stop): a cancel next may take it back

    def reset(self) -> None:
        self.parser.reset()
        self.held.clear()
        self.woke_at = None
        self.woke_word = None
        self.before = 0
        self.heard_words = set()
        self.published = ""
        self.in_segment, self.pause_ms, self.reachable = False, None, None
        self.carried, self.dangling = [], []


# From the voice report's confidence trade-off (docs/voice_commands.md, `choose_threshold`). Interim:
# with the committed recognizer (it lacks the new grammar's words) the report's rule picks 0.9, which
# would ask again on every committed test WAV (confidences 0.64-0.87); 0.5 halves wrong commands
# there (58% -> 23%). Re-choose from the report once the recognizer trained on the grammar lands.
DEFAULT_MIN_CONFIDENCE = 0.5
PARSER_OPTIONS = ("min_confidence", "wake_word", "grammar_check", "cancel_reach_ms")
# Words that keep the robot still (a stop, a negation, a cancel, a question): rescoring must not lose one a recognizer heard.
SAFETY_WORDS = frozenset(STOP_WORDS + NEGATIONS + CANCEL_WORDS + QUESTION_WORDS)
# The phrases the recognizer route tries in the best reading (ctc_beam.nbest's `challenges`): one the audio
# supports takes posterior from a motion it would have cancelled.
SAFETY_PHRASES = (("don't",), ("do", "not"), ("never",), ("did", "you"), ("does", "it"), ("is", "it"), ("what",),
                  ("cancel",), ("forget", "it"), ("never", "mind"))
UNCONFIRMED = "<unk>"  # the recognizers' word outside the grammar: how the parser reads a stop word the recognizer marked `unconfirmed`


class CommandParserPolicy(Policy):
    """Words in (text chunks with the recognizer's `confidence`), command fields out: a `delta` with
    the fields a word determined and the command so far (`stop` goes out with the word that says
    it, always); at `end`, `done` with the final command(s) (`command`, `commands`, the first
    command's `action`, `direction`, `amount`, `unit`, `speed`), `cancelled`, `confidence`, and the
    end's `segment` and `t_speech_end_ns`. Launch options (route `stream_options`): `min_confidence`
    (default DEFAULT_MIN_CONFIDENCE): below it a motion command is published as `not_understood`
    (with what was heard) and `done` carries no command; `wake_word` ("robot" when `true`): only
    fields after it count, except stop; `grammar_check` (default true): the parser's command must be
    the one the grammar's own rules (`grammar.command_of`) read from the same words, else it is
    `not_understood` with `reason: "grammar"`. Why: the parser is a network trained on the grammar
    and generalises past it on misheard words ("well" -> move forward); where the two readings of
    the words differ, the words were not a command of the grammar and a guess is worse than asking.

    Early partial words (docs/protocol.md): a word chunk with `replace_last: 1` replaces the last
    word (`CommandParser.revise_last_word`): a `retract` names the first delta the replaced word
    produced, then the new word's delta. Deltas carry `upto`, a word count running across
    utterances, so a retract never reaches an earlier utterance. Any other revision is an `input`
    error and changes nothing. An `end` with `final_confidences` takes back words beyond that list
    (a partial no label confirmed) and replaces the words' early confidences by it."""

    revisable = True  # `replace_last: 1` only (checked here); anything else is refused

    def __init__(self, model, cfg):
        super().__init__(model, cfg)
        from edge_stream.voice.command_parser import CommandParser

        # Loads llguidance and compiles the output grammar once, at model load (~0.4 s the first
        # time in a process): otherwise a stream's first word, "stop" included, would wait for it.
        CommandParser(model)

    def open(self, stream: str, options: dict):
        from edge_stream.voice.command_parser import CommandParser

        opts = {**self.cfg.stream_options, **options}
        unknown = sorted(set(opts) - set(PARSER_OPTIONS))
        if unknown:
            raise ConfigError(f"{self.model.name}: the command parser takes options {list(PARSER_OPTIONS)}, "
                              f"got {unknown}")
        conf = opts.get("min_confidence", DEFAULT_MIN_CONFIDENCE)
        if isinstance(conf, bool) or not isinstance(conf, (int, float)) or not 0.0 <= conf <= 1.0:
            raise ConfigError(f"{self.model.name}: min_confidence: expected a number in [0, 1], got {conf!r}")
        wake = opts.get("wake_word")
        if wake is True:
            wake = "robot"
        if wake is not None and wake is not False and (not isinstance(wake, str) or len(wake.split()) != 1):
            raise ConfigError(f"{self.model.name}: wake_word: expected one word or true, got {wake!r}")
        check = opts.get("grammar_check", True)
        if not isinstance(check, bool):
            raise ConfigError(f"{self.model.name}: grammar_check: expected true or false, got {check!r}")
        reach = opts.get("cancel_reach_ms", DEFAULT_CANCEL_REACH_MS)
        if isinstance(reach, bool) or not isinstance(reach, (int, float)) or not 0.0 <= reach <= 60000.0:
            raise ConfigError(f"{self.model.name}: cancel_reach_ms: expected a number of ms in [0, 60000], got {reach!r}")
        return ParserStream(CommandParser(self.model), float(conf), wake.lower() if wake else None, check,
                            cancel_reach_ms=float(reach))

    def chunk(self, session, data, text, extra) -> Iterator[Output]:
        if text is None:
            raise InputError(f"{self.model.name}: takes words as text chunks, got a {data.dtype} array")
        confidence = extra.get("confidence")  # the recognizer's, per word (None: a source without one)
        words = text.split()
        unconfirmed = extra.get("unconfirmed", False)  # a stop word the recognizer's verifier did not hear
        if not isinstance(unconfirmed, bool):
            raise InputError(f"{self.model.name}: 'unconfirmed' must be true or false, got {unconfirmed!r}")
        if unconfirmed:
            session.heard_words |= set(words) & set(STOP_WORDS)  # a stop heard, if unconfirmed
            words = [UNCONFIRMED if w in STOP_WORDS else w for w in words]
        revise = extra.get("revise") is True  # the recognizer's rescoring at a pause: the segment's words are these
        nbest = self._nbest(extra) if revise else None  # checked before anything changes
        replace = False if revise else self._replace_last(session, words, extra)
        pause = self._pause_before(extra)
        if not session.in_segment:
            yield from self._segment_starts(session, pause, extra)
        if revise:
            yield from self._rescored(session, words, nbest, extra)
            return
        for i, word in enumerate(words):
            if self.cfg.wait_for_end:
                if replace and i == 0:
                    session.held[-1] = (word, confidence)
                else:
                    session.held.append((word, confidence))
                continue
            if replace and i == 0:
                yield from self._revise(session, word, confidence, extra)
            else:
                yield from self._push(session, word, confidence, extra)

    def _segment_starts(self, session, pause: float | None, extra: dict) -> Iterator[Output]:
        """The segment's first word is here: a negation the previous segment ended on comes first when the
        pause between them is within `cancel_reach_ms` ("so don't" | "go" is "so don't go": cancelled)."""
        session.in_segment, session.pause_ms = True, pause
        dangling, session.dangling = session.dangling, []
        if not dangling or pause is None or pause > session.cancel_reach_ms:
            return
        session.carried = dangling
        for word, confidence in dangling:
            if self.cfg.wait_for_end:
                session.held.append((word, confidence))
            else:
                yield from self._push(session, word, confidence, extra)

    def _pause_before(self, extra: dict) -> float | None:
        """A word's `pause_before_ms` (the recognizer's: since the previous segment's end of speech), checked."""
        pause = extra.get("pause_before_ms")
        if pause is not None and (isinstance(pause, bool) or not isinstance(pause, (int, float))
                                  or not 0.0 <= pause < float("inf")):
            raise InputError(f"{self.model.name}: 'pause_before_ms' must be a number of ms >= 0, got {pause!r}")
        return None if pause is None else float(pause)

    def _replace_last(self, session, words: list, extra: dict) -> bool:
        """Whether the chunk replaces the last word (`replace_last: 1`); InputError, before anything
        changed, for any other revision or one with no word to replace."""
        if "revise" in extra or ("replace_last" in extra and extra["replace_last"] != 1):
            got = "revise" if "revise" in extra else f"replace_last {extra['replace_last']!r}"
            raise InputError(f"{self.model.name}: the command parser revises one word at a time "
                             f"('replace_last': 1) or the segment's words ('revise': true), got {got}")
        if "replace_last" not in extra:
            return False
        if not words:
            raise InputError(f"{self.model.name}: 'replace_last' needs a word to replace the last one with")
        if not (session.held if self.cfg.wait_for_end else session.parser.words):
            raise InputError(f"{self.model.name}: 'replace_last': 1 but the utterance has no word to replace")
        return True

    def _upto(self, session) -> int:
        """A delta's `upto`: the words fed to this stream so far (its utterances, the present one's too)."""
        return session.before + len(session.parser.words)

    def _woke(self, session, word: str) -> None:
        """Note the wake word when `word` (just pushed) is it."""
        p = session.parser
        if session.wake_word is not None and session.woke_at is None and word.lower() == session.wake_word:
            session.woke_at, session.woke_word = len(p.tokens), len(p.words) - 1

    def _unwake(self, session) -> None:
        """The last word is about to be replaced or taken back: if it woke the parser, it sleeps again."""
        if session.woke_word is not None and session.woke_word == len(session.parser.words) - 1:
            session.woke_at = session.woke_word = None

    def _take_back(self, session) -> Iterator[Output]:
        """Take the last word back (an early partial no label confirmed): retract its deltas."""
        yield retract(self._upto(session) - 1)
        self._unwake(session)
        session.parser.revise_last_word(None)

    def _awake_tokens(self, session, tokens: list) -> list:
        """The tokens that count: all of them, or with a wake word those after it (and any stop)."""
        if session.wake_word is None:
            return tokens
        if session.woke_at is None:
            return ["stop"] if "stop" in tokens else []
        return tokens[session.woke_at:]

    def _revise(self, session, word: str, confidence, extra: dict) -> Iterator[Output]:
        """Replace the last word by `word`: a retract of the deltas the replaced word produced (the
        worker publishes it only when there were some), then the new word's delta."""
        yield retract(self._upto(session) - 1)
        self._unwake(session)
        t0 = time.perf_counter()
        got = session.parser.revise_last_word(word, confidence)
        yield from self._delta(session, word, got, extra, t0)

    def _push(self, session, word: str, confidence, extra: dict) -> Iterator[Output]:
        t0 = time.perf_counter()
        got = session.parser.push_word(word, confidence)
        yield from self._delta(session, word, got, extra, t0)

    def _delta(self, session, word: str, got: list, extra: dict, t0: float) -> Iterator[Output]:
        """The delta for the fields `word` determined (none when held back), after noting a wake word."""
        from edge_stream.voice.command_parser import fold

        p = session.parser
        self._woke(session, word)
        if not got:
            return
        if "stop" not in got or word not in STOP_WORDS:  # a said stop is never held back (wake word, confidence)
            if session.wake_word is not None and session.woke_at is None:
                return
            if p.confidence < session.min_confidence:
                return  # not sure yet: the fields wait for `done` (or `not_understood`)
        command = fold(self._awake_tokens(session, p.tokens)).text()
        session.published = command
        yield Output("delta", {"fields": got, "command": command, "word": word,
                               **({"segment": extra["segment"]} if "segment" in extra else {})},
                     infer_ms=_ms_since(t0), upto=self._upto(session))

    def end(self, session, extra) -> Iterator[Output]:
        from edge_stream.voice.command_parser import Parse, fold
        from edge_stream.voice.grammar import command_of

        t0 = time.perf_counter()
        p = session.parser
        finals = self._final_confidences(extra)
        second = self._verifier_words(extra)
        nbest = self._nbest(extra)
        pause = self._pause_before(extra)  # all four checked before anything changes
        if not session.in_segment:  # a segment whose only words are its end's `nbest`
            yield from self._segment_starts(session, pause, extra)
        if nbest is not None:
            yield from self._rescored(session, nbest[0]["words"], nbest, extra)
        n_carried = len(session.carried)  # words carried in come first; `finals` are the recognizer's words'
        if finals is not None and self.cfg.wait_for_end:
            del session.held[n_carried + len(finals):]  # a partial no label confirmed was not said
            if len(finals) == len(session.held) - n_carried:
                session.held[n_carried:] = [(w, c) for (w, _), c in zip(session.held[n_carried:], finals)]
        for word, confidence in session.held:  # batch baseline: every word now, then the end
            p.push_word(word, confidence)
            self._woke(session, word)
        session.held.clear()
        if finals is not None and not self.cfg.wait_for_end:
            while len(p.words) > n_carried + len(finals):
                yield from self._take_back(session)
            if len(finals) == len(p.words) - n_carried:  # the final words' confidences replace the early ones
                p.set_word_confidences(p.word_confidences[:n_carried] + finals)
        words = list(p.words)
        word_confidences = list(p.word_confidences)
        # A stop, negation, cancel or question word that a recognizer heard (its streamed words, the
        # verifier's) must survive the rescoring: an LM that finds "ahead" likelier than "never ahead"
        # would otherwise move the robot.
        lost_safety = nbest is not None and _lost_safety(session.heard_words | set(second or ()), words)
        session.heard_words, session.published = set(), ""
        session.before += len(words)
        p.end()
        got, confidence = p.end_fields, p.confidence
        said = p.result  # every word's reading, wake word or not: a cancel counts without one, as a stop does
        result = fold(self._awake_tokens(session, p.last_tokens)) if session.wake_word else said
        awake_words = words[session.woke_word:] if session.wake_word and session.woke_word is not None else words
        session.woke_at = session.woke_word = None
        infer_ms = _ms_since(t0)
        passed = {k: extra[k] for k in ("segment", "t_speech_end_ns", "speech_end_sample") if k in extra}
        # Only a stop someone said skips the checks: the network also reads "stop" into other words.
        stop_only = [c.action for c in result.commands] == ["stop"] and any(w in STOP_WORDS for w in words)
        if second is not None and session.wake_word:
            second = second[second.index(session.wake_word):] if session.wake_word in second else []
        reason = None
        if result.commands and not stop_only:
            if lost_safety:
                reason = "rescored"
            elif confidence < session.min_confidence:
                reason = "confidence"
            elif session.grammar_check and command_of(awake_words).text() != result.text():
                reason = "grammar"
            elif second is not None and nbest is None and command_of(second).text() != result.text():
                reason = "verifier"
        if reason is not None:
            yield Output("not_understood", {"heard": words, "confidence": round(confidence, 4), "reason": reason,
                                            "command": result.text(), **passed}, infer_ms=infer_ms)
            infer_ms, result = 0.0, Parse()
            not_understood = True
        else:
            not_understood = False
            if got and not self.cfg.wait_for_end:
                yield Output("delta", {"fields": got, "command": result.text(), "word": None, **passed},
                             infer_ms=infer_ms)
                infer_ms = 0.0
        across = self._across_segments(session, said, result, not_understood, words, word_confidences, extra)
        first = result.first.as_dict()
        yield Output("done", {"command": result.text() if result.commands else None,
                              **{k: first[k] for k in ("action", "direction", "amount", "unit", "speed")},
                              "commands": [c.as_dict() for c in result.commands],
                              "cancelled": result.cancelled or "cancels" in across,
                              "not_understood": not_understood, "confidence": round(confidence, 4),
                              "words": words, **across, **passed}, infer_ms=infer_ms)

    def _across_segments(self, session, said, result, not_understood: bool, words: list, confidences: list,
                         extra: dict) -> dict:
        """What this segment's end means beside its own command. A VAD ends a segment at a short pause,
        which may fall inside what the speaker meant as one utterance. Within `cancel_reach_ms`:
        - a segment that only cancels ("forget it", "never mind", "don't") takes back the previous
          segment's command: the done carries `cancels` ({"segment", "command"}) and a controller
          abandons that command (a stop is never taken back);
        - a segment that ends on a negation ("so don't") puts it before the next segment's words.
        Returns the done's extra fields: `cancels`, and `carried` (the words put before this segment's)."""
        out = {}
        if session.carried:
            out["carried"] = [w for w, _ in session.carried]
        elif (session.reachable is not None and said.cancelled and not said.commands
              and session.pause_ms is not None and session.pause_ms <= session.cancel_reach_ms):
            out["cancels"] = session.reachable
        published = result.text() if result.commands and not not_understood else ""
        session.reachable = ({"segment": extra.get("segment"), "command": published}
                             if published and [c.action for c in result.commands] != ["stop"] else None)
        end = len(words)
        while end and words[end - 1] in HESITATIONS:
            end -= 1
        start = end - 2 if end >= 2 and words[end - 2:end] == ["do", "not"] else end - 1
        session.dangling = (list(zip(words[start:end], confidences[start:end]))
                            if end and words[end - 1] in NEGATIONS and not said.commands else [])
        session.carried, session.in_segment, session.pause_ms = [], False, None
        return out

    def _rescored(self, session, words: list, nbest: list | None, extra: dict) -> Iterator[Output]:
        """The recognizer's rescored words replace the segment's words (what they share stays; the rest is
        taken back, with a retract, and the new words pushed). Rescoring never adds a stop word (stops
        are the streaming path's, confirmed there): a new one is read as a word outside the grammar;
        and an utterance with a stop in it is a stop, so its words are not revised. With `nbest`, every
        word's confidence becomes the recognizers' confidence in the command the words read as: the
        least, over the recognizers, of the n-best mass that reads as it (voice.ctc_beam)."""
        from edge_stream.voice.grammar import command_of, command_posterior

        p = session.parser
        n = len(session.carried)  # words carried in from the previous segment stay first; the rest is the recognizer's
        now = [w for w, _ in session.held] if self.cfg.wait_for_end else list(p.words)
        carried, current = now[:n], now[n:]
        if any(w in STOP_WORDS for w in current):
            return
        session.heard_words |= set(current)  # what was heard before this reading: the safety checks
        words = [w.lower() for w in words]
        keep = next((i for i, (a, b) in enumerate(zip(current, words)) if a != b), min(len(current), len(words)))
        words = words[:keep] + [UNCONFIRMED if w in STOP_WORDS else w for w in words[keep:]]
        confidence = None
        if nbest is not None:
            said = carried + words
            cut = said.index(session.wake_word) if session.wake_word in said else (len(said) if session.wake_word else 0)
            readings = [{**e, "words": carried + e["words"]} for e in nbest] if carried else nbest
            confidence = command_posterior(readings, command_of(said[cut:]).text(), session.wake_word)
        if _lost_safety(session.heard_words, words):
            confidence = 0.0  # it lost a safety word a recognizer heard: nothing of it goes out (the end refuses it)
        if self.cfg.wait_for_end:
            session.held = session.held[:n] + [(w, confidence) for w in words]
            return
        if len(p.words) > n + keep:
            session.published = ""  # the retracts void deltas: the command so far goes out again
        while len(p.words) > n + keep:
            yield from self._take_back(session)
        if confidence is not None and p.words:
            p.set_word_confidences([confidence] * len(p.words))
        for word in words[keep:]:
            yield from self._push(session, word, confidence, extra)
        yield from self._catch_up(session, extra)

    def _catch_up(self, session, extra: dict) -> Iterator[Output]:
        """After a rescoring: when the command so far is now sure enough to publish but its last delta
        said otherwise (fields held back below min_confidence, or deltas retracted), a delta with no
        new fields and the command as it stands, so a controller knows it before the segment ends.
        Not when the end's checks would refuse it (grammar, a lost safety word)."""
        from edge_stream.voice.command_parser import fold
        from edge_stream.voice.grammar import command_of

        p = session.parser
        if not p.words or p.confidence < session.min_confidence:
            return
        if session.wake_word is not None and session.woke_at is None:
            return
        command = fold(self._awake_tokens(session, p.tokens)).text()
        if not command or command == session.published:
            return
        awake = p.words[session.woke_word:] if session.wake_word else p.words
        if session.grammar_check and command_of(awake).text() != command:
            return  # the end would refuse it (reason "grammar"): no preview of it either
        if _lost_safety(session.heard_words, p.words):
            return  # nor of one that lost a safety word (reason "rescored")
        session.published = command
        yield Output("delta", {"fields": [], "command": command, "word": None,
                               **({"segment": extra["segment"]} if "segment" in extra else {})},
                     upto=self._upto(session))

    def _nbest(self, extra: dict) -> list | None:
        """An end's `nbest` (the recognizer route's rescored hypotheses), checked; None when absent."""
        nbest = extra.get("nbest")
        if nbest is None:
            return None
        ok = isinstance(nbest, list) and nbest and all(
            isinstance(e, dict) and isinstance(e.get("words"), list) and all(isinstance(w, str) and w.strip()
                                                                           and len(w.split()) == 1 for w in e["words"])
            and isinstance(e.get("posteriors"), list) and e["posteriors"]
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0.0 <= x <= 1.0 for x in e["posteriors"])
            for e in nbest)
        if not ok or len({len(e["posteriors"]) for e in nbest}) != 1:
            raise InputError(f"{self.model.name}: 'nbest' must be a non-empty list of {{'words': [word, ...], "
                             f"'posteriors': [p, ...]}} with one posterior per recognizer in each, got {nbest!r}"[:400])
        return [{"words": [w.lower() for w in e["words"]], "posteriors": [float(x) for x in e["posteriors"]]}
                for e in nbest]

    def _verifier_words(self, extra: dict) -> list | None:
        """An end's `verifier_words` (the recognizer route's second recognizer), checked; None when absent."""
        second = extra.get("verifier_words")
        if second is None:
            return None
        if not isinstance(second, list) or not all(isinstance(w, str) for w in second):
            raise InputError(f"{self.model.name}: 'verifier_words' must be a list of words, got {second!r}")
        return [w.lower() for w in second]

    def _final_confidences(self, extra: dict) -> list | None:
        """An end's `final_confidences` (early partial words), checked; None when absent."""
        finals = extra.get("final_confidences")
        if finals is None:
            return None
        if not isinstance(finals, list) or not all(isinstance(c, (int, float)) and not isinstance(c, bool)
                                                   for c in finals):
            raise InputError(f"{self.model.name}: 'final_confidences' must be a list of numbers, got {finals!r}")
        return [float(c) for c in finals]

    def describe(self, session) -> dict:
        return {"words": len(session.parser.words), "min_confidence": session.min_confidence,
                "wake_word": session.wake_word, "grammar_check": session.grammar_check}


def _lost_safety(heard, words) -> bool:
    """Whether a stop, negation, cancel or question word in `heard` is missing from `words`."""
    return bool((set(heard) & SAFETY_WORDS) - set(words))


POLICY_CLASSES = {"lm": LMPolicy, "vad": BlockPolicy, "sequence": SequencePolicy, "recognizer": RecognizerPolicy,
                  "command_parser": CommandParserPolicy}


def policy_for(model, cfg) -> Policy:
    """The policy for a loaded model and its route (a config.ModelConfig): the route's `policy`, or
    ("auto") chosen from its manifest. A VAD whose route forwards gates speech (VadGatePolicy):
    the one place the route's forward_topic picks behaviour; the policy gets PolicyOptions only."""
    m = model.manifest
    name = cfg.policy
    if name == "auto":
        if m.blocking is not None:
            name = "recognizer" if m.output_for("logits") is not None else "vad"
        else:
            name = "lm" if m.input.kind == "tokens" else "sequence"
    options = PolicyOptions.of(cfg)
    if cfg.prefix_text and name != "lm":
        raise ConfigError(f"{m.name}: prefix_text is for LM routes (policy 'lm'); this route's policy is {name!r}")
    if cfg.partial_words and name != "recognizer":
        raise ConfigError(f"{m.name}: partial_words is for recognizer routes (policy 'recognizer'); "
                          f"this route's policy is {name!r}")
    if cfg.stop_spotting is not None and name != "recognizer":
        raise ConfigError(f"{m.name}: stop_spotting is for recognizer routes (policy 'recognizer'); "
                          f"this route's policy is {name!r}")
    if cfg.stop_spotting is not None and cfg.partial_words:
        raise ConfigError(f"{m.name}: stop_spotting and partial_words exclude each other (one early path at a time)")
    if cfg.partial_words and cfg.wait_for_end:
        raise ConfigError(f"{m.name}: partial_words and wait_for_end exclude each other (a waiting recognizer "
                          "has no early words to send)")
    if cfg.verifier is not None and name != "recognizer":
        raise ConfigError(f"{m.name}: verifier is for recognizer routes (policy 'recognizer'); "
                          f"this route's policy is {name!r}")
    if cfg.confirm_stops and cfg.verifier is None:
        raise ConfigError(f"{m.name}: confirm_stops needs a verifier (the second recognizer that confirms a stop)")
    if cfg.ngram_lm is not None and name != "recognizer":
        raise ConfigError(f"{m.name}: ngram_lm is for recognizer routes (policy 'recognizer'); "
                          f"this route's policy is {name!r}")
    if cfg.ngram_lm is not None and cfg.partial_words:
        raise ConfigError(f"{m.name}: ngram_lm and partial_words exclude each other (the n-best replaces "
                          "the segment's words at its end; early partials revise them word by word)")
    if cfg.confirm_stops and cfg.partial_words:
        raise ConfigError(f"{m.name}: confirm_stops and partial_words exclude each other (a stop word waits for "
                          "its confirmation; an early partial does not)")
    if name == "vad" and cfg.forward_topic:
        return VadGatePolicy(model, options)
    if name in ("vad", "recognizer") and m.blocking is None:
        raise ConfigError(f"{m.name}: policy {name!r} needs a block model (manifest 'blocking' section)")
    if name == "recognizer":
        return RecognizerPolicy(model, options, verifier=load_verifier(cfg))
    return POLICY_CLASSES[name](model, options)


def load_route_model(cfg, model_dir: str | None = None):
    """A route's model (or, given `model_dir`, another model of the route, its verifier) loaded with the
    route's providers, threads and thread-pool options."""
    from edge_stream import load
    from edge_stream.runtime.runner import ThreadOptions

    threads = ThreadOptions(cfg.intra_op_spinning, cfg.inter_op_spinning, cfg.intra_op_thread_affinities)
    return load(model_dir or cfg.dir, providers=list(cfg.providers), intra_op_threads=cfg.threads,
                thread_options=threads)


def load_verifier(cfg):
    """The route's verifier model (None without one)."""
    return None if cfg.verifier is None else load_route_model(cfg, cfg.verifier)
