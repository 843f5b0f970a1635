"""OpenAI-Realtime-shaped events <-> the voice chain's messages: the gateway's translation, no sockets.

The gateway (node/gateway.py) owns the WebSocket and the ZeroMQ sockets; this module owns what
the frames mean. A client's JSON event is validated once here (`parse_client_event`) and its audio
becomes int16 samples at 16 kHz (`pcm16`, `AudioFormat`, `Resampler`); a node output becomes
zero or more Realtime events (`SessionEvents.translate`). Event names follow the OpenAI Realtime
API where the meaning matches; `command.*` are ours (docs/gateway.md lists every field).
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
from dataclasses import dataclass, field

import numpy as np

from edge_stream.errors import EdgeStreamError

NODE_RATE = 16000  # what the VAD and the recognizer take; the gateway resamples to it
INPUT_RATES = (16000, 24000)  # 24 kHz: the OpenAI Realtime API's PCM rate
CLIENT_EVENTS = ("session.update", "input_audio_buffer.append", "input_audio_buffer.commit",
                 "input_audio_buffer.clear", "conversation.item.create", "response.create", "response.cancel")


class EventError(EdgeStreamError):
    """A client event the gateway refuses: becomes one `error` event; the session stays open."""

    def __init__(self, code: str, message: str, param: str | None = None, event_id: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.code, self.message, self.param, self.event_id, self.kind = code, message, param, event_id, kind


def error_event(code: str, message: str, param: str | None = None, event_id: str | None = None,
                kind: str = "invalid_request_error") -> dict:
    """The Realtime `error` event (`error.type`, `code`, `message`, `param`, `event_id` of the client event)."""
    return {"type": "error", "error": {"type": kind, "code": code, "message": message, "param": param,
                                       "event_id": event_id}}


def error_of(exc: EventError) -> dict:
    return error_event(exc.code, exc.message, exc.param, exc.event_id, exc.kind)


def parse_client_event(text: str) -> dict:
    """One JSON text frame -> its event dict (a known `type`); EventError otherwise."""
    try:
        event = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise EventError("invalid_json", f"the message is not valid JSON ({exc})") from None
    if not isinstance(event, dict):
        raise EventError("invalid_event", f"an event is a JSON object, got {type(event).__name__}")
    event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
    kind = event.get("type")
    if not isinstance(kind, str):
        raise EventError("invalid_event", "the event has no string field 'type'", "type", event_id)
    if kind not in CLIENT_EVENTS:
        raise EventError("unknown_event", f"event type {kind[:64]!r} is not one of {', '.join(CLIENT_EVENTS)}",
                         "type", event_id)
    return event


def audio_of_append(event: dict) -> bytes:
    """The PCM16 bytes of an `input_audio_buffer.append` (`audio`: base64)."""
    audio = event.get("audio")
    if not isinstance(audio, str):
        raise EventError("invalid_audio", "input_audio_buffer.append needs 'audio': base64 PCM16", "audio",
                         event.get("event_id"))
    try:
        return base64.b64decode(audio, validate=True)
    except (binascii.Error, ValueError):
        raise EventError("invalid_audio", "'audio' is not valid base64", "audio", event.get("event_id")) from None


def pcm16(raw: bytes, event_id: str | None = None) -> np.ndarray:
    """Little-endian PCM16 mono bytes -> int16 samples (a view, no copy)."""
    if not raw or len(raw) % 2:
        raise EventError("invalid_audio", f"audio must be PCM16 mono: a non-empty even number of bytes, got "
                                          f"{len(raw)}", "audio", event_id)
    return np.frombuffer(raw, dtype="<i2")


@dataclass(frozen=True)
class AudioFormat:
    """The session's input audio: PCM16 mono at `rate` Hz."""

    rate: int = NODE_RATE

    def describe(self) -> dict:
        return {"type": "audio/pcm", "rate": self.rate}


def audio_format_of(session: dict, current: AudioFormat, event_id: str | None = None) -> AudioFormat:
    """The input format a `session.update` asks for: GA `session.audio.input.format`
    ({"type": "audio/pcm", "rate": 16000 | 24000}) or beta `input_audio_format` ("pcm16": 24 kHz);
    the current one when it names none. EventError for anything else (the session keeps its format)."""
    audio = session.get("audio")
    audio_input = audio.get("input") if isinstance(audio, dict) else None
    fmt = audio_input.get("format") if isinstance(audio_input, dict) else None
    if fmt is None and "input_audio_format" in session:
        if session["input_audio_format"] != "pcm16":
            raise EventError("unsupported_audio_format", f"input_audio_format {session['input_audio_format']!r}: "
                             "only 'pcm16' (24 kHz PCM16) is supported", "session.input_audio_format", event_id)
        return AudioFormat(24000)
    if fmt is None:
        return current
    param = "session.audio.input.format"
    if not isinstance(fmt, dict) or fmt.get("type") != "audio/pcm":
        raise EventError("unsupported_audio_format", f"format {fmt!r}: only {{'type': 'audio/pcm', 'rate': "
                         f"16000 or 24000}} (PCM16 mono) is supported", param, event_id)
    rate = fmt.get("rate", 24000)  # the Realtime API's default
    if rate not in INPUT_RATES:
        raise EventError("unsupported_audio_format", f"rate {rate!r}: supported rates are "
                         f"{', '.join(map(str, INPUT_RATES))} Hz", param + ".rate", event_id)
    return AudioFormat(rate)


class Resampler:
    """Stateful linear interpolation from `rate` to 16 kHz, continuous across chunks.

    Enough for speech at 24 kHz (the content above 8 kHz that aliases is weak); the page sends
    16 kHz itself. Returns float32 in [-1, 1]; 16 kHz input passes through as int16 (no copy)."""

    def __init__(self, rate: int):
        self.step = rate / NODE_RATE  # input samples per output sample
        self.pos = 0.0  # position of the next output sample, in input samples after `prev`
        self.prev = np.zeros(1, np.float32)  # the last input sample of the previous chunk

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        if self.step == 1.0:
            return samples
        x = np.concatenate([self.prev, samples.astype(np.float32) / 32768.0])  # [1 + n]: a copy per chunk
        t = np.arange(self.pos, len(x) - 1, self.step)  # output positions within x
        out = np.interp(t, np.arange(len(x)), x).astype(np.float32)
        self.pos = (t[-1] + self.step - (len(x) - 1)) if len(t) else self.pos - (len(x) - 1)
        self.prev = x[-1:]
        return out


@dataclass
class _Segment:
    """One speech segment (one Realtime input item) as it comes through the chain."""

    item_id: str
    words: list = field(default_factory=list)
    start_sample: int | None = None
    command: str | None = None  # the command so far (parser deltas)
    t_known_ns: int | None = None  # gateway receipt of the output after which `command` had its final value


class SessionEvents:
    """Per-session state of the translation: item ids per speech segment, words heard, when each
    command became known. `translate(role, header, t_recv_ns)` returns the Realtime events one
    node output means (often none: VAD probabilities, forwarded audio)."""

    def __init__(self, stream: str):
        self.stream = stream
        self.epoch = 0  # bumped by clear (the VAD restarts its segment numbering)
        self.speech_starts = 0
        self.segments: dict[int, _Segment] = {}
        self.response_ids = itertools.count()
        self.response: dict | None = None  # the LM response in progress

    def item_id(self, segment: int) -> str:
        return f"item_{self.stream}_{self.epoch}_{segment}"

    def segment(self, index) -> _Segment:
        index = index if isinstance(index, int) else max(self.speech_starts - 1, 0)
        seg = self.segments.get(index)
        if seg is None:
            seg = self.segments[index] = _Segment(self.item_id(index))
            while len(self.segments) > 8:  # only the newest few can still get outputs
                del self.segments[min(self.segments)]
        return seg

    def cleared(self) -> None:
        self.epoch += 1
        self.speech_starts = 0
        self.segments.clear()

    def current_item(self) -> str:
        return self.item_id(max(self.speech_starts - 1, 0))

    def translate(self, role: str, h: dict, t_recv_ns: int) -> list[dict]:
        kind = h.get("kind")
        if role == "vad":
            return self._vad(h)
        # A word: forwarded to the parser (topic "words"), or a `word` output of a recognizer that forwards none.
        if ((role == "words" and kind == "chunk") or (role == "recognizer" and kind == "word")) \
                and isinstance(h.get("text"), str):
            seg = self.segment(h.get("segment"))
            if h.get("revise") is True:  # a rescoring recognizer (ngram_lm): the segment's words are these
                return self._rewritten(seg, h["text"].split())
            replace = h.get("replace_last")
            if isinstance(replace, int) and not isinstance(replace, bool) and 0 < replace <= len(seg.words):
                # an early partial word revised (docs/protocol.md "Revisions"): Realtime deltas only
                # append, so the corrected transcript goes out whole in our own event
                seg.words[len(seg.words) - replace:] = [h["text"]]
                return [self._revised(seg, replace)]
            delta = h["text"] if not seg.words else " " + h["text"]
            seg.words.append(h["text"])
            return [{"type": "conversation.item.input_audio_transcription.delta", "item_id": seg.item_id,
                     "content_index": 0, "delta": delta}]
        if role == "words" and kind == "end" and isinstance(h.get("nbest"), list) and h["nbest"] \
                and isinstance(h["nbest"][0], dict) and isinstance(h["nbest"][0].get("words"), list):
            seg = self.segment(h.get("segment"))
            return self._rewritten(seg, [w for w in h["nbest"][0]["words"] if isinstance(w, str)])
        if role == "words" and kind == "end" and isinstance(h.get("final_confidences"), list):
            seg = self.segment(h.get("segment"))
            unconfirmed = len(seg.words) - len(h["final_confidences"])
            if unconfirmed > 0:  # partial words no label confirmed were not said
                del seg.words[len(h["final_confidences"]):]
                return [self._revised(seg, unconfirmed, taken_back=True)]
            return []
        if role == "recognizer" and kind == "done":
            seg = self.segment(h.get("segment"))
            end = h.get("speech_end_sample")
            seconds = (end - seg.start_sample) / NODE_RATE if isinstance(end, int) and seg.start_sample is not None \
                else 0.0
            return [{"type": "conversation.item.input_audio_transcription.completed", "item_id": seg.item_id,
                     "content_index": 0, "transcript": " ".join(seg.words),
                     "usage": {"type": "duration", "seconds": round(max(seconds, 0.0), 3)}}]
        if role == "parser":
            return self._parser(kind, h, t_recv_ns)
        if role == "lm":
            return self._lm(kind, h)
        return []

    @staticmethod
    def _rewritten(seg: _Segment, words: list) -> list[dict]:
        """The segment's words replaced by a rescored reading: `transcription.revised` from the first
        word that differs (nothing when none does)."""
        keep = next((i for i, (a, b) in enumerate(zip(seg.words, words)) if a != b), min(len(seg.words), len(words)))
        if keep == len(seg.words) == len(words):
            return []
        replaced = len(seg.words) - keep
        seg.words[:] = words
        return [{"type": "transcription.revised", "item_id": seg.item_id, "replaced": replaced,
                 "words": words[keep:], "transcript": " ".join(words)}]

    @staticmethod
    def _revised(seg: _Segment, replaced: int, taken_back: bool = False) -> dict:
        """`transcription.revised`: the last `replaced` words of the item's transcript so far were
        replaced (or taken back) and `transcript` is what it now reads."""
        return {"type": "transcription.revised", "item_id": seg.item_id, "replaced": replaced,
                "words": [] if taken_back else seg.words[-1:], "transcript": " ".join(seg.words)}

    def _vad(self, h: dict) -> list[dict]:
        if h.get("kind") != "event" or h.get("event") not in ("speech_start", "speech_end"):
            return []
        sample = h.get("sample") if isinstance(h.get("sample"), int) else 0
        if h["event"] == "speech_start":
            seg = self.segment(self.speech_starts)
            self.speech_starts += 1
            seg.start_sample = sample
            return [{"type": "input_audio_buffer.speech_started", "audio_start_ms": sample * 1000 // NODE_RATE,
                     "item_id": seg.item_id}]
        return [{"type": "input_audio_buffer.speech_stopped", "audio_end_ms": sample * 1000 // NODE_RATE,
                 "item_id": self.current_item()}]

    def _parser(self, kind: str, h: dict, t_recv_ns: int) -> list[dict]:
        seg = self.segment(h.get("segment"))
        if kind == "delta":
            if h.get("command") != seg.command:
                seg.command, seg.t_known_ns = h.get("command"), t_recv_ns
            return [{"type": "command.delta", "item_id": seg.item_id, "fields": h.get("fields", []),
                     "command": h.get("command"), "word": h.get("word")}]
        end = h.get("t_speech_end_ns")

        def after_end(t_ns):
            return round((t_ns - end) / 1e6, 1) if isinstance(end, int) and t_ns is not None else None

        if kind == "retract":  # the deltas from `first_seq` on came from a word now replaced: void
            seg.t_known_ns = None
            return [{"type": "command.retract", "item_id": seg.item_id, "first_seq": h.get("first_seq"),
                     "position": h.get("position")}]
        if kind == "not_understood":
            return [{"type": "command.not_understood", "item_id": seg.item_id, "heard": h.get("heard", []),
                     "confidence": h.get("confidence"), "command": h.get("command"),
                     "reason": h.get("reason", "confidence"), "latency_ms": after_end(t_recv_ns)}]
        if kind != "done":
            return []
        final = h.get("command")
        if final != seg.command or seg.t_known_ns is None:  # the end itself settled it
            seg.t_known_ns = t_recv_ns
        keys = ("command", "action", "direction", "amount", "unit", "speed", "commands", "cancelled",
                "not_understood", "confidence", "words")
        cancels = h.get("cancels")  # a cancel that took back the previous segment's command: name its item
        taken_back = ({"cancels": {"item_id": self.item_id(cancels["segment"]), "command": cancels.get("command")}}
                      if isinstance(cancels, dict) and isinstance(cancels.get("segment"), int) else {})
        return [{"type": "command.done", "item_id": seg.item_id, **{k: h.get(k) for k in keys}, **taken_back,
                 "known_latency_ms": after_end(seg.t_known_ns) if final else None,
                 "latency_ms": after_end(t_recv_ns)}]

    def start_response(self) -> dict:
        """A new LM response (`response.create`): its ids, and the `response.created` event."""
        rid = f"resp_{self.stream}_{next(self.response_ids)}"
        self.response = {"id": rid, "item_id": f"item_{rid}", "text": []}
        return {"type": "response.created", "response": {"id": rid, "object": "realtime.response",
                                                          "status": "in_progress", "output": []}}

    def _lm(self, kind: str, h: dict) -> list[dict]:
        r = self.response
        if r is None or kind not in ("delta", "done"):
            return []
        ids = {"response_id": r["id"], "item_id": r["item_id"], "output_index": 0, "content_index": 0}
        if kind == "delta":
            r["text"].append(h.get("text") or "")
            return [{"type": "response.output_text.delta", **ids, "delta": h.get("text") or ""}] if h.get("text") \
                else []
        self.response = None
        text = h.get("text") if isinstance(h.get("text"), str) else "".join(r["text"])
        status = {"stop": "completed", "length": "incomplete", "cancelled": "cancelled",
                  "interrupted": "cancelled"}.get(h.get("reason"), "completed")
        item = {"id": r["item_id"], "type": "message", "role": "assistant",
                "content": [{"type": "output_text", "text": text}]}
        return [{"type": "response.output_text.done", **ids, "text": text},
                {"type": "response.done", "response": {"id": r["id"], "object": "realtime.response",
                                                       "status": status, "output": [item]}}]
