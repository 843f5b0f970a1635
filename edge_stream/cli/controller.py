"""A robot controller's side of the voice pipeline: command outputs of the parser node in, commands out.

`CommandTracker` folds the parser node's outputs (`delta`: fields as soon as they are
determined, `done`: the final command of a speech segment) into `CommandRecord`s with
their timing; it never touches a socket, so the report and the tests use it on any
output stream. `run_controller` is the printing subscriber of `edge-stream voice-controller`.

Times: `t_pub_ns` of the parser's outputs (when the command was published) against the
`t_speech_end_ns` the VAD put on the segment's end (its estimate of the end of speech).
A command is *known* at the output after which it equals the final command; with the
streaming parser that is often before the end of speech was even detected (negative).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from edge_stream.node.client import Received, Subscriber

log = logging.getLogger(__name__)

COMMAND_TOPIC_PREFIX = "commands/"  # launch/voice_commands.toml: parser output_topic "commands/{stream}"


@dataclass
class CommandRecord:
    """One segment's command and when it reached the controller (wall-clock ns)."""

    stream: str
    segment: int | None
    command: str  # final command text, '' when the words meant none
    fields: list = field(default_factory=list)  # every field published for it, in order ('<fix>' included)
    words: list = field(default_factory=list)  # the words the parser heard
    t_first_pub_ns: int | None = None  # first field published
    t_known_pub_ns: int | None = None  # output after which the command equalled the final one
    t_done_pub_ns: int = 0  # the `done`
    t_speech_end_ns: int | None = None  # the VAD's end of speech, when the pipeline had one
    t_stop_pub_ns: int | None = None  # the first `stop` field published for it (a stop goes out on its word)
    cancelled: bool = False  # the speaker cancelled ("don't move", "never mind"): nothing to do
    not_understood: bool = False  # the parser was not sure enough: ask again, do nothing
    confidence: float | None = None  # the parser node's confidence in the command
    retracted: int = 0  # deltas the parser retracted (early partial words it revised): undone by the controller
    cancels: dict | None = None  # a cancel that took back the previous segment's command: {"segment", "command"}

    def ms_after_speech_end(self, t_ns: int | None, t_speech_end_ns: int | None = None) -> float | None:
        """`t_ns` minus the end of speech (the VAD's, or the one given), in ms."""
        end = t_speech_end_ns if t_speech_end_ns is not None else self.t_speech_end_ns
        return None if t_ns is None or end is None else (t_ns - end) / 1e6


@dataclass
class _Pending:
    command: str = ""
    fields: list = field(default_factory=list)
    t_first: int | None = None
    t_known: int | None = None
    t_stop: int | None = None
    deltas: list = field(default_factory=list)  # the deltas still standing (headers), for a `retract`
    retracted: int = 0


class CommandTracker:
    """Per-stream state of the commands in progress; `update` returns a record at each `done`."""

    def __init__(self):
        self._pending: dict[str, _Pending] = {}

    def update(self, header: dict) -> CommandRecord | None:
        """Take one parser output header; a CommandRecord when it was a `done`, else None."""
        kind, stream = header.get("kind"), header.get("stream")
        if kind not in ("delta", "done", "retract") or stream is None:
            return None
        p = self._pending.setdefault(stream, _Pending())
        t_pub = header.get("t_pub_ns", time.time_ns())
        if kind == "retract":  # deltas from first_seq on are void: the state is that of the others
            kept = [d for d in p.deltas if d.get("seq", -1) < header.get("first_seq", 0)]
            self._pending[stream] = p = _Pending(retracted=p.retracted + len(p.deltas) - len(kept))
            for d in kept:
                self._delta(p, d, d.get("t_pub_ns", t_pub))
            return None
        if kind == "delta":
            self._delta(p, header, t_pub)
            return None
        del self._pending[stream]
        final = header.get("command") or ""  # None (protocol: no command) and "" (v1) alike
        if final != p.command:  # the end itself settled it (or no deltas: the batch baseline)
            p.t_known = t_pub
        return CommandRecord(stream, header.get("segment"), final, p.fields, header.get("words", []),
                             p.t_first if p.t_first is not None else (t_pub if final else None),
                             p.t_known if final else None, t_pub, header.get("t_speech_end_ns"),
                             p.t_stop, bool(header.get("cancelled")), bool(header.get("not_understood")),
                             header.get("confidence"), p.retracted,
                             header.get("cancels") if isinstance(header.get("cancels"), dict) else None)

    @staticmethod
    def _delta(p: _Pending, header: dict, t_pub: int) -> None:
        p.deltas.append(header)
        p.fields += header.get("fields", [])
        if p.t_stop is None and "stop" in " ".join(header.get("fields", [])).split():
            p.t_stop = t_pub
        if p.t_first is None:
            p.t_first = t_pub
        if header.get("command") != p.command:
            p.command, p.t_known = header.get("command", ""), t_pub


def describe_delta(rec: Received) -> str:
    h = rec.header
    word = f" at {h['word']!r}" if h.get("word") else " at the end"
    return (f"{h.get('stream')} #{h.get('segment', '?')}  + {' '.join(h.get('fields', [])):<18} -> "
            f"{h.get('command', '')!r}{word}")


def ask_again(rec: Received) -> str:
    """What the controller says on `not_understood`: it heard something, acts on nothing, asks again."""
    h = rec.header
    return (f"{h.get('stream')} #{h.get('segment', '?')}  NOT UNDERSTOOD (heard {' '.join(h.get('heard', []))!r}, "
            f"confidence {h.get('confidence', 0):.2f}): \"Sorry, could you say that again?\"")


def describe_command(r: CommandRecord) -> str:
    known, done = r.ms_after_speech_end(r.t_known_pub_ns), r.ms_after_speech_end(r.t_done_pub_ns)
    timing = ("" if done is None else
              f"  (after the VAD's end of speech: known {known:+.0f} ms, done {done:+.0f} ms)" if known is not None
              else f"  (done {done:+.0f} ms after the VAD's end of speech)")
    heard = f"  heard {' '.join(r.words)!r}" if r.words else ""
    if r.cancels:  # the robot abandons the command it is carrying out
        what = f"CANCELLED, taking back #{r.cancels.get('segment', '?')} {r.cancels.get('command')!r}"
    else:
        what = ("CANCELLED" if r.cancelled else "NOT UNDERSTOOD" if r.not_understood
                else f"COMMAND {r.command or '(none)'!r}")
    return f"{r.stream} #{r.segment if r.segment is not None else '?'}  {what}{heard}{timing}"


def run_controller(connect: list[str], count: int = 0, timeout: float = 0.0, stop=None, on_line=print) -> list:
    """Subscribe to the parser node's command outputs and report each field and command as it arrives.

    Returns the CommandRecords seen; ends after `count` commands, `timeout` idle seconds, or when
    `stop` (a threading.Event) is set."""
    sub = Subscriber([COMMAND_TOPIC_PREFIX], connect=connect, prefix=True)
    tracker, records = CommandTracker(), []
    idle_since = time.monotonic()
    try:
        while stop is None or not stop.is_set():
            rec = sub.recv(0.1)
            if rec is None:
                if timeout and time.monotonic() - idle_since > timeout:
                    break
                continue
            idle_since = time.monotonic()
            if rec.kind == "delta":
                on_line(describe_delta(rec))
            elif rec.kind == "not_understood":  # nothing to act on: ask the speaker again
                on_line(ask_again(rec))
            record = tracker.update(rec.header)
            if record is not None:
                records.append(record)
                on_line(describe_command(record))
                if count and len(records) >= count:
                    break
    finally:
        sub.close()
    return records
