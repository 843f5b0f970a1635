"""Launch files: TOML describing nodes and proxies, mapped one-to-one onto dataclasses.

    [[node]]                      # one or more
    name = "robot"
    input.bind = ["tcp://*:5550"]
    output.bind = ["tcp://*:5551"]
    control.bind = ["tcp://*:5552"]
    [[node.models]]
    name = "vad"
    dir = "../models/silero-vad"  # relative paths are relative to the launch file
    topics = ["mic"]

    [[proxy]]                     # optional: libzmq's XSUB/XPUB proxy
    name = "hub"
    frontend.bind = ["tcp://*:6000"]   # publishers connect here
    backend.bind = ["tcp://*:6001"]    # subscribers connect here

    [[gateway]]                   # optional: WebSocket gateway and web page (docs/gateway.md)
    name = "web"
    listen = "127.0.0.1:8765"
    vad = "vad"                   # [[node]] names: audio in, then the chain's outputs relayed

`load_launch` validates everything before anything starts and raises
ConfigError naming the field (`node[0].models[1].max_new_tokens: ...`).
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from edge_stream import records
from edge_stream.errors import ConfigError, ProtocolError
from edge_stream.node.wire import MAX_NAME_LEN, check_name

GAP_POLICIES = ("event", "reset")
TRIGGERS = ("end", "suffix")
PUBLISH_LOGITS = ("none", "last", "all")
DURING_GENERATION = ("queue", "interrupt", "interleave")  # input_during_generation
POLICIES = ("auto", "lm", "vad", "sequence", "recognizer", "command_parser")


@dataclass(frozen=True)
class Endpoints:
    """ZeroMQ endpoints a socket binds and/or connects (both may be set)."""

    bind: tuple[str, ...] = ()
    connect: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.bind or self.connect)


@dataclass(frozen=True)
class SecurityConfig:
    """CURVE: bound sockets are servers admitting the public keys in `allowed_clients`
    (a folder of `*.key` files); connected sockets are clients of `server_key`."""

    curve: bool = False
    secret_key: str | None = None  # this side's `NAME.key_secret` (from `edge-stream keys`)
    allowed_clients: str | None = None  # folder of public `*.key` files
    server_key: str | None = None  # public key file of the server that connecting sockets talk to


@dataclass(frozen=True)
class ModelConfig:
    """One model served by a node: which topics feed it and how its streams behave.

    LM policy: chunks are appended as they arrive; generation starts on an `end`
    message (trigger "end") or also when a text chunk ends with `trigger_suffix`
    (trigger "suffix"). `publish_logits` adds logits to each chunk's `fed` output.

    Chaining (docs/protocol.md, "Chaining nodes"): with `forward_topic` set, the
    policy's forwarded outputs go out in *input* format on that topic, so the next
    node consumes them like a sensor's: the VAD forwards speech audio (gating),
    the recognizer forwards words. `policy` picks the behaviour ("auto": from the
    manifest); `wait_for_end` makes the recognizer and parser buffer a whole
    segment and run at its `end` (the batch baseline the voice report measures).
    """

    name: str
    dir: str
    topics: tuple[str, ...]
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    threads: int | None = 1  # ONNX Runtime intra-op threads
    # ONNX Runtime thread pools (runtime.runner.ThreadOptions; unset: spinning on and ORT's other defaults): busy-wait for work
    # between runs (faster wake-up after an idle gap, a core burnt meanwhile), and the CPUs of the
    # intra-op pool's threads - 1 worker threads in ORT's syntax ("1;2": 1-based logical processors).
    intra_op_spinning: bool | None = None
    inter_op_spinning: bool | None = None
    intra_op_thread_affinities: str | None = None
    # LMs: a prompt every stream of this route starts with (a robot's instructions), encoded and run once
    # at start; its KV entries are shared by all the route's streams (runtime: open_stream(prefix=...)).
    prefix_text: str | None = None
    stream_options: dict = field(default_factory=dict)  # passed to open_stream (kv_window, threshold, ...)
    trigger: str = "end"
    trigger_suffix: str | None = None
    max_new_tokens: int = 32  # default of an `end` that names none
    # Ceiling of an `end`'s `max_new_tokens` (over it: an input error). The default above is not the
    # ceiling, so a controller may ask for a longer answer; this bounds what any request may cost.
    max_new_tokens_cap: int = 4096
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    publish_logits: str = "none"
    policy: str = "auto"  # one of POLICIES
    forward_topic: str | None = None  # topic of forwarded outputs (input format), e.g. "speech", "words"
    wait_for_end: bool = False  # recognizer/parser: run on the whole segment at `end` (batch baseline)
    # LMs: a chunk arriving while its stream generates waits for the reply ("queue"), stops it at the
    # next token boundary ("interrupt"; keep_partial_reply = false also takes the said tokens back), or
    # goes into the cache between two tokens while generation goes on ("interleave"). docs/protocol.md
    input_during_generation: str = "queue"
    keep_partial_reply: bool = True
    # Recognizer: forward an `interrupt` when a segment's audio begins (the VAD heard speech start), so
    # a chained LM stops the reply it is speaking (barge-in).
    barge_in: bool = False
    # Recognizer: also forward each word early, while its label still only leads (posterior >=
    # partial_threshold, rising), marked `partial`, then revisions (`replace_last`); docs/protocol.md
    # "Early partial words". The parser node follows them. Off: words only once final, as before.
    partial_words: bool = False
    partial_threshold: float = 0.2
    # Recognizer: say a stop word ("stop", "halt", "freeze") as soon as their summed posterior on a frame
    # reaches this, even where blank or another label still wins (voice.ctc, "Spotted words"): more
    # stops heard on unfamiliar voices, more needless ones in conversation (docs/voice_commands.md).
    # Unset: off, greedy decoding only.
    stop_spotting: float | None = None
    # Recognizer: a second recognizer (its directory, relative to the launch file) that hears the same
    # audio; the segment's `end` carries its words and the parser asks again when they read as another
    # command. confirm_stops: a stop word goes out once the verifier heard one too (docs/voice_commands.md).
    verifier: str | None = None
    confirm_stops: bool = False
    # Recognizer: grammar-aware decoding (voice.ctc_beam). At the segment's end the words are found again by
    # a CTC beam search with this word n-gram LM (an ARPA file, relative to the launch file), the verifier's
    # too, and the hypotheses scored by both recognizers; the `end` carries them (`nbest`) and the parser
    # takes the best. Streamed words (and stops) are unchanged. lm_weight, word_bonus, beam_size: the search.
    ngram_lm: str | None = None
    lm_weight: float = 0.8
    word_bonus: float = 2.5
    beam_size: int = 8
    # Freshness (docs/protocol.md, "Stale input and deadlines"), both off when unset:
    max_age_ms: float | None = None  # a chunk older than this (from t_capture_ns, else t_pub_ns) is dropped
    deadline_ms: float | None = None  # an open stream with no input for this long gets `deadline_missed`


@dataclass(frozen=True)
class NodeConfig:
    """One node: its sockets, models, limits and topics."""

    name: str
    input: Endpoints
    output: Endpoints
    models: tuple[ModelConfig, ...]
    control: Endpoints = Endpoints()
    workers: int = 1  # inference threads; a stream always runs on the same one (ordering)
    max_streams: int = 64
    stream_ttl_s: float = 60.0  # idle streams are closed after this
    auto_open: bool = True  # a chunk for an unknown stream opens it (else: open via control)
    gap_policy: str = "event"  # "event": publish a gap event and continue; "reset": also reset the stream
    output_topic: str = "out/{stream}"
    errors_topic: str = "errors"
    stats_topic: str = "stats"
    stats_interval_s: float = 1.0
    max_payload_bytes: int = 4 * 1024 * 1024  # larger chunks get an error event
    max_message_bytes: int = 16 * 1024 * 1024  # ZMQ MAXMSGSIZE: larger frames drop the connection
    sndhwm: int = 1000
    rcvhwm: int = 1000
    heartbeat_ivl_ms: int = 1000
    heartbeat_timeout_ms: int = 3000
    security: SecurityConfig = SecurityConfig()


@dataclass(frozen=True)
class ProxyConfig:
    """An XSUB (frontend, publishers) / XPUB (backend, subscribers) proxy: many sensors and nodes meet here."""

    name: str
    frontend: Endpoints
    backend: Endpoints
    security: SecurityConfig = SecurityConfig()


@dataclass(frozen=True)
class GatewayConfig:
    """A WebSocket gateway (node/gateway.py, docs/gateway.md): browsers and OpenAI-Realtime clients in,
    one WebSocket session = one stream of the voice chain. `vad`, `recognizer`, `parser` and `lm` name
    [[node]]s of the same launch file: audio goes to the `vad` node's first topic, and the gateway
    relays the four nodes' outputs. Runs as its own process beside the nodes (`edge-stream run`)."""

    name: str
    listen: str = "127.0.0.1:8765"  # host:port of the WebSocket endpoint and the page
    path: str = "/v1/realtime"  # WebSocket path (the OpenAI SDK appends /realtime to its base URL)
    vad: str = "vad"
    recognizer: str | None = None  # words -> transcription events
    parser: str | None = None  # commands -> command.* events
    lm: str | None = None  # an LM node: text in, `response.output_text.*` out (the page's text box)
    page: bool = True  # serve the web page at /
    token_file: str | None = None  # file holding the bearer token clients must present (none: open)
    origins: tuple[str, ...] = ()  # browser origins allowed besides the page's own
    tls_cert: str | None = None  # PEM certificate and key: wss:// and https:// when both are given
    tls_key: str | None = None
    max_message_bytes: int = 1024 * 1024  # larger messages get an `error` event and are dropped
    max_audio_rate: float = 4.0  # audio faster than this times real time gets an `error` and is dropped
    max_sessions: int = 64
    ready_timeout_s: float = 30.0  # start-up: wait this long for the nodes


@dataclass(frozen=True)
class LaunchFile:
    path: str
    nodes: tuple[NodeConfig, ...] = ()
    proxies: tuple[ProxyConfig, ...] = ()
    gateways: tuple[GatewayConfig, ...] = ()


def load_launch(path: str | Path) -> LaunchFile:
    """Parse and validate a launch file; relative paths become relative to its folder."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: launch file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    return launch_from_dict(raw, base=path.parent, where=str(path))


def launch_from_dict(raw: dict, base: Path = Path("."), where: str = "launch") -> LaunchFile:
    unknown = sorted(set(raw) - {"node", "proxy", "gateway"})
    if unknown:
        raise ConfigError(f"{where}: unknown table(s) {', '.join(unknown)}; expected [[node]], [[proxy]] "
                          f"and [[gateway]]")
    nodes = tuple(node_from_dict(d, base, f"node[{i}]") for i, d in enumerate(_list(raw, "node", where)))
    proxies = tuple(_build(ProxyConfig, d, f"proxy[{i}]") for i, d in enumerate(_list(raw, "proxy", where)))
    gateways = tuple(gateway_from_dict(d, nodes, base, f"gateway[{i}]")
                     for i, d in enumerate(_list(raw, "gateway", where)))
    if not nodes and not proxies:
        raise ConfigError(f"{where}: no [[node]] or [[proxy]] to start")
    names = [n.name for n in nodes] + [p.name for p in proxies] + [g.name for g in gateways]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{where}: names must be unique, {', '.join(dup)} used twice")
    for i, p in enumerate(proxies):
        if not p.frontend or not p.backend:
            raise ConfigError(f"proxy[{i}].frontend/backend: both need at least one endpoint")
        _check_security(p.security, f"proxy[{i}].security")
    proxies = tuple(dataclasses.replace(p, security=_resolve_security(p.security, base)) for p in proxies)
    return LaunchFile(path=where, nodes=nodes, proxies=proxies, gateways=gateways)


def gateway_from_dict(d: dict, nodes: tuple[NodeConfig, ...], base: Path = Path("."),
                      where: str = "gateway") -> GatewayConfig:
    """Validate one [[gateway]] table against the launch file's nodes; relative file paths become
    relative to the launch file."""
    cfg = _build(GatewayConfig, d, where)
    host, _, port = cfg.listen.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{where}.listen: expected host:port (e.g. 127.0.0.1:8765), got {cfg.listen!r}")
    if not cfg.path.startswith("/") or cfg.path == "/":
        raise ConfigError(f"{where}.path: expected a path below / such as /v1/realtime, got {cfg.path!r}")
    by_name = {n.name: n for n in nodes}
    for role in ("vad", "recognizer", "parser", "lm"):
        name = getattr(cfg, role)
        if name is None:
            continue
        if name not in by_name:
            raise ConfigError(f"{where}.{role}: no [[node]] named {name!r} in this launch file "
                              f"(nodes: {', '.join(by_name) or 'none'})")
        if by_name[name].security.curve:
            raise ConfigError(f"{where}.{role}: node {name!r} uses CURVE; the gateway speaks plain ZeroMQ "
                              f"on loopback only (run it beside the nodes)")
        if not by_name[name].output.bind:
            raise ConfigError(f"{where}.{role}: node {name!r} must bind its output for the gateway to subscribe")
    for role in ("vad", "lm"):  # the gateway publishes into these
        name = getattr(cfg, role)
        if name is not None and not by_name[name].input.bind:
            raise ConfigError(f"{where}.{role}: node {name!r} must bind its input for the gateway to publish to it")
    if (cfg.tls_cert is None) != (cfg.tls_key is None):
        raise ConfigError(f"{where}.tls_cert/tls_key: give both (TLS) or neither (plain ws://)")
    positive = {"max_message_bytes": cfg.max_message_bytes, "max_audio_rate": cfg.max_audio_rate,
                "max_sessions": cfg.max_sessions, "ready_timeout_s": cfg.ready_timeout_s}
    for name, value in positive.items():
        if not value > 0:
            raise ConfigError(f"{where}.{name}: must be > 0, got {value}")
    files = {k: str(base / v) for k in ("token_file", "tls_cert", "tls_key") if (v := getattr(cfg, k)) is not None}
    for k, path in files.items():
        if not Path(path).is_file():
            raise ConfigError(f"{where}.{k}: file {path} not found")
    return dataclasses.replace(cfg, **files)


def node_from_dict(d: dict, base: Path = Path("."), where: str = "node") -> NodeConfig:
    """Validate one [[node]] table (also used by tests and the Python API)."""
    cfg = _build(NodeConfig, d, where)
    if not cfg.input:
        raise ConfigError(f"{where}.input: at least one bind or connect endpoint is required")
    if not cfg.output:
        raise ConfigError(f"{where}.output: at least one bind or connect endpoint is required")
    if not cfg.models:
        raise ConfigError(f"{where}.models: at least one [[node.models]] is required")
    positive = {"workers": cfg.workers, "max_streams": cfg.max_streams, "stream_ttl_s": cfg.stream_ttl_s,
                "stats_interval_s": cfg.stats_interval_s, "max_payload_bytes": cfg.max_payload_bytes,
                "max_message_bytes": cfg.max_message_bytes, "sndhwm": cfg.sndhwm, "rcvhwm": cfg.rcvhwm}
    for name, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{where}.{name}: must be > 0, got {value}")
    if cfg.gap_policy not in GAP_POLICIES:
        raise ConfigError(f"{where}.gap_policy: {cfg.gap_policy!r} is not one of {', '.join(GAP_POLICIES)}")
    if "{stream}" not in cfg.output_topic:
        raise ConfigError(f"{where}.output_topic: must contain '{{stream}}', got {cfg.output_topic!r}")
    try:
        _check_topic(cfg.output_topic.format(stream="s"), f"{where}.output_topic")
    except (KeyError, IndexError, ValueError):  # str.format: another {field}, or a stray brace
        raise ConfigError(f"{where}.output_topic: only '{{stream}}' may appear in braces, got "
                          f"{cfg.output_topic!r}") from None
    _check_topic(cfg.errors_topic, f"{where}.errors_topic")
    _check_topic(cfg.stats_topic, f"{where}.stats_topic")
    seen: dict[str, str] = {}
    models = []
    for i, m in enumerate(cfg.models):
        mw = f"{where}.models[{i}]"
        if m.trigger not in TRIGGERS:
            raise ConfigError(f"{mw}.trigger: {m.trigger!r} is not one of {', '.join(TRIGGERS)}")
        if m.trigger == "suffix" and not m.trigger_suffix:
            raise ConfigError(f"{mw}.trigger_suffix: required when trigger = 'suffix'")
        if m.input_during_generation not in DURING_GENERATION:
            raise ConfigError(f"{mw}.input_during_generation: {m.input_during_generation!r} is not one of "
                              f"{', '.join(DURING_GENERATION)}")
        if m.publish_logits not in PUBLISH_LOGITS:
            raise ConfigError(f"{mw}.publish_logits: {m.publish_logits!r} is not one of {', '.join(PUBLISH_LOGITS)}")
        if m.max_new_tokens < 0 or not m.temperature >= 0 or not 0 < m.top_p <= 1 or m.top_k < 0:
            raise ConfigError(f"{mw}: need max_new_tokens >= 0, temperature >= 0, 0 < top_p <= 1, top_k >= 0")
        if not m.max_new_tokens <= m.max_new_tokens_cap:
            raise ConfigError(f"{mw}.max_new_tokens_cap: must be >= max_new_tokens ({m.max_new_tokens}), "
                              f"got {m.max_new_tokens_cap}")
        if m.seed is not None and not 0 <= m.seed < 2**64:
            raise ConfigError(f"{mw}.seed: expected 0 <= seed < 2**64, got {m.seed}")
        if not 0.0 < m.partial_threshold <= 1.0:
            raise ConfigError(f"{mw}.partial_threshold: expected a posterior in (0, 1], got {m.partial_threshold}")
        if m.stop_spotting is not None and (isinstance(m.stop_spotting, bool) or not 0.0 < m.stop_spotting <= 1.0):
            raise ConfigError(f"{mw}.stop_spotting: expected a posterior in (0, 1], got {m.stop_spotting!r}")
        for name in ("max_age_ms", "deadline_ms"):
            value = getattr(m, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{mw}.{name}: must be > 0 ms (leave it out to turn it off), got {value}")
        if isinstance(m.beam_size, bool) or not isinstance(m.beam_size, int) or not 1 <= m.beam_size <= 64:
            raise ConfigError(f"{mw}.beam_size: expected an integer in [1, 64], got {m.beam_size!r}")
        for name in ("lm_weight", "word_bonus"):
            value = getattr(m, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 10.0:
                raise ConfigError(f"{mw}.{name}: expected a number in [0, 10], got {value!r}")
        if not m.topics:
            raise ConfigError(f"{mw}.topics: at least one input topic is required")
        if m.prefix_text is not None and not m.prefix_text:
            raise ConfigError(f"{mw}.prefix_text: empty; leave it out for streams without a shared prefix")
        if m.policy not in POLICIES:
            raise ConfigError(f"{mw}.policy: {m.policy!r} is not one of {', '.join(POLICIES)}")
        if m.forward_topic is not None:
            _check_topic(m.forward_topic, f"{mw}.forward_topic")
        for t in m.topics:
            if t in seen:
                raise ConfigError(f"{mw}.topics: topic {t!r} already feeds model {seen[t]!r}")
            _check_topic(t, f"{mw}.topics")
            seen[t] = m.name
        if m.name in [x.name for x in models]:
            raise ConfigError(f"{mw}.name: model name {m.name!r} used twice")
        models.append(dataclasses.replace(m, dir=str(base / m.dir),
                                          verifier=None if m.verifier is None else str(base / m.verifier),
                                          ngram_lm=None if m.ngram_lm is None else str(base / m.ngram_lm)))
    _check_security(cfg.security, f"{where}.security")
    return dataclasses.replace(cfg, models=tuple(models), security=_resolve_security(cfg.security, base))


def _check_topic(topic: str, where: str) -> None:
    """Every topic (input, output, forward, errors, stats) obeys the wire's name rule: 1-128 printable characters."""
    try:
        check_name(topic, "topic")
    except ProtocolError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def max_stream_chars(output_topic: str) -> int:
    """The longest stream name whose output topic (`output_topic` with the name for '{stream}') is
    still a valid topic of at most 128 characters: 124 for the default "out/{stream}"."""
    return MAX_NAME_LEN - len(output_topic.format(stream=""))


def _check_security(sec: SecurityConfig, where: str) -> None:
    if sec.curve and not sec.secret_key:
        raise ConfigError(f"{where}.secret_key: required when curve = true (make one with `edge-stream keys`)")


def _resolve_security(sec: SecurityConfig, base: Path) -> SecurityConfig:
    fix = {k: str(base / v) for k in ("secret_key", "allowed_clients", "server_key")
           if (v := getattr(sec, k)) is not None}
    return dataclasses.replace(sec, **fix)


# --- dict -> dataclass with type checks --------------------------------------------------------


def _list(raw: dict, key: str, where: str) -> list:
    value = raw.get(key, [])
    if not isinstance(value, list):
        raise ConfigError(f"{where}.{key}: expected an array of tables ([[{key}]])")
    return value


def _build(cls, d, where: str):
    """Dataclass `cls` from a launch-file table; ConfigError names the field and the expected type."""
    return records.build(cls, d, where, ConfigError)
