"""The WebSocket gateway: browsers and OpenAI-Realtime clients in, the voice chain's nodes behind it.

One WebSocket session is one stream. ZeroMQ stays the bus: the gateway publishes a session's audio
with the existing `Publisher` (as a microphone would) and relays the nodes' outputs with
`Subscriber`s; what the frames mean is node/realtime.py. docs/gateway.md is the client author's page.

Threads: one, running the asyncio loop: the WebSocket sessions, the page (plain HTTP GETs on the same
port), and the relay of node outputs (the subscribers' sockets are watched with `add_reader`, so an
output is translated and queued to its session in the loop itself). A disconnect's `close` requests
to the downstream nodes' control sockets are blocking, and run in the loop's default executor.
"""

from __future__ import annotations

import asyncio
import email.utils
import hmac
import json
import logging
import secrets
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import zmq
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from edge_stream.errors import EdgeStreamError
from edge_stream.node import realtime
from edge_stream.node.client import Control, Publisher, Received, Subscriber
from edge_stream.node.config import GatewayConfig, NodeConfig

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).parent / "web"
PAGE_FILES = {"/": "index.html", "/index.html": "index.html", "/app.js": "app.js", "/mic-worklet.js": "mic-worklet.js",
              "/style.css": "style.css"}
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8"}
TOKEN_PROTOCOLS = ("bearer.", "openai-insecure-api-key.")  # a browser cannot set headers: token as subprotocol
OUTBOX_EVENTS = 4096  # events queued to one client; a client that stops reading past this is disconnected
AUDIO_BURST_S = 1.0  # the rate limit's bucket: max_audio_rate x this many seconds of audio at once
CLOSE_WAIT_S = 5.0  # disconnect: how long to wait for each node to confirm the stream closed


def _local(endpoint: str) -> str:
    """A bind endpoint as a local client connects to it."""
    return endpoint.replace("://*:", "://127.0.0.1:").replace("://0.0.0.0:", "://127.0.0.1:")


@dataclass(frozen=True)
class Chain:
    """Where the gateway's nodes are and what their outputs mean, resolved once at start.

    `roles`: node name -> "vad", "recognizer", "parser" or "lm" (how the relay reads its outputs)."""

    audio_input: str  # the VAD node's input endpoint (the gateway connects a Publisher)
    audio_topic: str
    outputs: tuple[str, ...]  # every role node's output endpoint
    output_prefixes: tuple[str, ...]  # "out/", "commands/": prefixes of the nodes' output topics
    exact_topics: tuple[str, ...]  # forwarded words, errors and stats topics
    words_topic: str | None
    roles: dict
    controls: tuple[tuple[str, str], ...]  # (node, control endpoint) downstream of the VAD, in chain order
    lm_input: str | None = None
    lm_topic: str | None = None

    @classmethod
    def resolve(cls, cfg: GatewayConfig, nodes: dict[str, tuple[NodeConfig, dict]]) -> Chain:
        """`nodes`: name -> (its NodeConfig, its endpoints {"input": [...], "output": [...], "control": [...]})."""
        roles = {getattr(cfg, r): r for r in ("vad", "recognizer", "parser", "lm") if getattr(cfg, r) is not None}
        vad_cfg, vad_ep = nodes[cfg.vad]
        words = None
        if cfg.recognizer is not None:
            words = next((m.forward_topic for m in nodes[cfg.recognizer][0].models if m.forward_topic), None)
        outputs, prefixes, exact = [], [], [words] if words else []
        for name in roles:
            ncfg, ep = nodes[name]
            outputs += [e for e in ep["output"] if e not in outputs]
            prefix = ncfg.output_topic.split("{stream}")[0]
            if prefix not in prefixes:
                prefixes.append(prefix)
            exact += [t for t in (ncfg.errors_topic, ncfg.stats_topic) if t not in exact]
        controls = tuple((n, nodes[n][1]["control"][0]) for n in (cfg.recognizer, cfg.parser)
                         if n is not None and nodes[n][1].get("control"))
        lm_input = lm_topic = None
        if cfg.lm is not None:
            lm_cfg, lm_ep = nodes[cfg.lm]
            lm_input, lm_topic = lm_ep["input"][0], lm_cfg.models[0].topics[0]
        return cls(vad_ep["input"][0], vad_cfg.models[0].topics[0], tuple(outputs), tuple(prefixes), tuple(exact),
                   words, roles, controls, lm_input, lm_topic)

    @classmethod
    def from_launch(cls, cfg: GatewayConfig, nodes: tuple[NodeConfig, ...]) -> Chain:
        """From the launch file's node configs: their bind endpoints, as a local client reaches them."""
        by_name = {}
        for n in nodes:
            ep = {k: [_local(e) for e in getattr(n, k).bind] for k in ("input", "output", "control")}
            by_name[n.name] = (n, ep)
        return cls.resolve(cfg, by_name)


class AudioBudget:
    """The per-connection rate limit: a token bucket of audio seconds, refilled at `rate` x real time
    and holding at most `rate` x AUDIO_BURST_S. `take` is False (and takes nothing) when a chunk
    would exceed it: the caller drops the chunk with an error."""

    def __init__(self, rate: float, clock=time.monotonic):
        self.rate, self.clock = rate, clock
        self.capacity = rate * AUDIO_BURST_S
        self.tokens, self.t = self.capacity, clock()

    def take(self, seconds: float) -> bool:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if seconds > self.tokens:
            return False
        self.tokens -= seconds
        return True


class Session:
    """One WebSocket connection = one stream in the nodes (`ws-<random>`): client events in,
    published audio and Realtime events out. Everything here runs on the gateway's loop."""

    def __init__(self, gateway: Gateway, ws: ServerConnection):
        self.gw, self.ws = gateway, ws
        self.stream = f"ws-{secrets.token_hex(6)}"
        self.events = realtime.SessionEvents(self.stream)
        self.format = realtime.AudioFormat()
        self.resample = realtime.Resampler(self.format.rate)
        self.budget = AudioBudget(gateway.cfg.max_audio_rate)
        self.outbox: asyncio.Queue[str] = asyncio.Queue(OUTBOX_EVENTS)
        self.sent_audio = self.used_lm = False
        self.closed_by: dict[str, asyncio.Future] = {}  # node -> resolved by its `closed` event
        self._event_ids = 0
        self._closing = False

    def send(self, event: dict) -> None:
        """Queue one event to the client (in order); a client too slow to read is disconnected."""
        self._event_ids += 1
        event = {"event_id": f"event_{self.stream}_{self._event_ids}", **event}
        try:
            self.outbox.put_nowait(json.dumps(event))
        except asyncio.QueueFull:
            if not self._closing:
                self._closing = True
                log.warning("gateway: session %s is not reading its events; closing it", self.stream)
                asyncio.ensure_future(self.ws.close(1008, "client does not read its events"))

    async def run(self) -> None:
        writer = asyncio.ensure_future(self._write())
        try:
            self.send({"type": "session.created", "session": self.describe()})
            async for message in self.ws:
                self.on_message(message)
        except ConnectionClosed:
            pass
        finally:
            writer.cancel()

    async def _write(self) -> None:
        try:
            while True:
                await self.ws.send(await self.outbox.get())
        except ConnectionClosed:
            pass

    def describe(self) -> dict:
        """The session as `session.created` / `session.updated` show it."""
        return {"type": "realtime", "object": "realtime.session", "id": self.stream, "model": "edge-stream",
                "output_modalities": ["text"],
                "audio": {"input": {"format": self.format.describe(), "turn_detection": {"type": "server_vad"}}},
                "edge_stream": {"stream": self.stream, "commands": self.gw.cfg.parser is not None,
                                "lm": self.gw.cfg.lm is not None,
                                "max_message_bytes": self.gw.cfg.max_message_bytes,
                                "max_audio_rate": self.gw.cfg.max_audio_rate}}

    # ----- client -> nodes -----------------------------------------------------------------------

    def on_message(self, message: str | bytes) -> None:
        """One WebSocket message: binary = PCM16 audio, text = a JSON event. A bad one is answered
        with an `error` event and changes nothing."""
        try:
            if len(message) > self.gw.cfg.max_message_bytes:
                raise realtime.EventError("message_too_large", f"message of {len(message)} bytes is over the "
                                          f"limit of {self.gw.cfg.max_message_bytes}; send smaller chunks")
            if isinstance(message, bytes):
                self.audio(realtime.pcm16(message))
            else:
                self.on_event(realtime.parse_client_event(message))
        except realtime.EventError as exc:
            self.send(realtime.error_of(exc))
        except Exception:  # a bug of ours: this message is lost, the session goes on
            log.exception("gateway: session %s: message failed", self.stream)
            self.send(realtime.error_event("internal", "the gateway failed on this message (logged); the "
                                           "session goes on", kind="server_error"))

    def audio(self, samples, event_id: str | None = None) -> None:
        if not self.budget.take(len(samples) / self.format.rate):
            raise realtime.EventError("rate_limited", f"audio is arriving faster than {self.gw.cfg.max_audio_rate:g}x "
                                      f"real time; this chunk of {len(samples)} samples was dropped", "audio", event_id)
        data = self.resample(samples)
        if len(data):
            self.gw.audio_pub.send(data, stream=self.stream, sr=realtime.NODE_RATE)
            self.sent_audio = True

    def on_event(self, event: dict) -> None:
        kind, event_id = event["type"], event.get("event_id")
        if kind == "input_audio_buffer.append":
            self.audio(realtime.pcm16(realtime.audio_of_append(event), event_id), event_id)
        elif kind == "session.update":
            session = event.get("session")
            if not isinstance(session, dict):
                raise realtime.EventError("invalid_event", "session.update needs an object 'session'", "session",
                                          event_id)
            fmt = realtime.audio_format_of(session, self.format, event_id)
            if fmt != self.format:
                self.format, self.resample = fmt, realtime.Resampler(fmt.rate)
            self.send({"type": "session.updated", "session": self.describe()})
        elif kind == "input_audio_buffer.commit":
            item = self.events.current_item()
            if self.sent_audio:
                self.gw.audio_pub.end(stream=self.stream)  # the VAD closes an open segment
            self.send({"type": "input_audio_buffer.committed", "item_id": item, "previous_item_id": None})
        elif kind == "input_audio_buffer.clear":
            if self.sent_audio:
                self.gw.audio_pub.reset(stream=self.stream)
            self.events.cleared()
            self.send({"type": "input_audio_buffer.cleared"})
        else:
            self.on_lm_event(kind, event, event_id)

    def on_lm_event(self, kind: str, event: dict, event_id: str | None) -> None:
        pub = self.gw.lm_pub
        if pub is None:
            raise realtime.EventError("no_lm", f"{kind}: this gateway has no LM (launch file: [[gateway]] lm)",
                                      "type", event_id)
        if kind == "conversation.item.create":
            item = event.get("item") if isinstance(event.get("item"), dict) else {}
            parts = item.get("content") if isinstance(item.get("content"), list) else []
            text = "".join(p.get("text", "") for p in parts if isinstance(p, dict) and p.get("type") == "input_text"
                           and isinstance(p.get("text"), str))
            if not text:
                raise realtime.EventError("invalid_event", "conversation.item.create needs an item with "
                                          "content [{'type': 'input_text', 'text': ...}]", "item.content", event_id)
            pub.send(stream=self.stream, text=text)
            self.used_lm = True
            self.send({"type": "conversation.item.added", "previous_item_id": None,
                       "item": {**item, "id": item.get("id") or f"item_{self.stream}_lm_{self._event_ids}"}})
        elif kind == "response.create":
            if self.events.response is not None:
                raise realtime.EventError("conversation_already_has_active_response", "a response is in progress; "
                                          "cancel it first (response.cancel)", None, event_id)
            if not self.used_lm:
                raise realtime.EventError("invalid_event", "response.create: send a conversation.item.create with "
                                          "input_text first", None, event_id)
            self.send(self.events.start_response())
            pub.end(stream=self.stream)
        elif kind == "response.cancel":
            if self.events.response is None:
                raise realtime.EventError("response_cancel_not_active", "no response is in progress", None, event_id)
            pub.reset(stream=self.stream)  # barge-in: the node ends the generation with reason "cancelled"

    # ----- nodes -> client -----------------------------------------------------------------------

    def on_output(self, role: str, rec: Received) -> None:
        h = rec.header
        if rec.kind == "error":
            self.send(realtime.error_event(f"node_{h.get('code')}", f"node {h.get('node')}: {h.get('reason')}",
                                           kind="server_error"))
            return
        if rec.kind == "event" and h.get("event") == "state_lost":
            self.send(realtime.error_event("state_lost", f"node {h.get('node')} restarted: this stream's state in it "
                                           "is gone; the utterance in progress is lost", kind="server_error"))
            return
        if rec.kind == "event" and h.get("event") == "closed":
            fut = self.closed_by.get(h.get("node"))
            if fut is not None and not fut.done():
                fut.set_result(True)
            return
        for event in self.events.translate(role, h, rec.t_recv_ns):
            self.send(event)

    async def close_in_nodes(self) -> None:
        """The client went away: close this stream in every node so no state stays behind. The VAD
        first (on the data path, behind the audio already sent); once it confirms, nothing more is
        forwarded, and the downstream nodes are closed through their control sockets, in chain order."""
        loop = asyncio.get_running_loop()
        if self.used_lm:
            self.gw.lm_pub.send(stream=self.stream, kind="close")
        if not self.sent_audio:
            return
        vad = self.closed_by[self.gw.cfg.vad] = loop.create_future()
        self.gw.audio_pub.send(stream=self.stream, kind="close")
        try:
            await asyncio.wait_for(vad, CLOSE_WAIT_S)
        except TimeoutError:
            log.warning("gateway: node %s did not confirm closing stream %s", self.gw.cfg.vad, self.stream)
        for node, endpoint in self.gw.chain.controls:
            reply = await loop.run_in_executor(None, _control_close, endpoint, self.stream)
            log.debug("gateway: close %s in %s: %s", self.stream, node, reply)


def _control_close(endpoint: str, stream: str) -> dict:
    """One control `close` request (blocking; run off the loop). A node that never opened the stream
    answers ok = false (unknown stream): nothing to close there."""
    ctl = Control([endpoint])
    try:
        return ctl.request("close", timeout=CLOSE_WAIT_S, stream=stream)
    except EdgeStreamError as exc:
        return {"ok": False, "error": str(exc)}
    finally:
        ctl.close()


class Gateway:
    """The gateway's sockets and its loop thread. `start()` returns once the nodes are reachable
    (the VAD subscribed to the audio topic, every node's heartbeat received) and the port listens."""

    def __init__(self, cfg: GatewayConfig, chain: Chain):
        self.cfg, self.chain = cfg, chain
        self.token = Path(cfg.token_file).read_text().strip() if cfg.token_file else None
        if cfg.token_file and not self.token:
            raise EdgeStreamError(f"gateway {cfg.name}: token file {cfg.token_file} is empty")
        self.ssl = None
        if cfg.tls_cert:
            self.ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.ssl.load_cert_chain(cfg.tls_cert, cfg.tls_key)
        self.sessions: dict[str, Session] = {}
        self.port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stopping = False
        self._started = threading.Event()
        self._error: BaseException | None = None
        self.audio_pub = self.lm_pub = None
        self.subs: list[Subscriber] = []

    @property
    def url(self) -> str:
        host = self.cfg.listen.rpartition(":")[0]
        return f"{'wss' if self.ssl else 'ws'}://{host}:{self.port}{self.cfg.path}"

    @property
    def page_url(self) -> str:
        host = self.cfg.listen.rpartition(":")[0]
        return f"{'https' if self.ssl else 'http'}://{host}:{self.port}/"

    # ----- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Gateway:
        try:
            self._connect()
        except BaseException:
            self._close_sockets()
            raise
        self._thread = threading.Thread(target=self._run, name=f"edge-stream-gateway-{self.cfg.name}", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error
        log.info("gateway %s ready: %s (page %s)", self.cfg.name, self.url, self.page_url)
        return self

    def _connect(self) -> None:
        """Publishers and subscribers, and the readiness of the nodes behind them."""
        c, timeout = self.chain, self.cfg.ready_timeout_s
        self.subs = [Subscriber(list(c.output_prefixes), connect=list(c.outputs), prefix=True),
                     Subscriber(list(c.exact_topics), connect=list(c.outputs))]
        self.audio_pub = Publisher(c.audio_topic, connect=[c.audio_input])
        if c.lm_input is not None:
            self.lm_pub = Publisher(c.lm_topic, connect=[c.lm_input])
        for pub in filter(None, (self.audio_pub, self.lm_pub)):
            if not pub.wait_ready(timeout):
                raise EdgeStreamError(f"gateway {self.cfg.name}: no node subscribed to topic {pub.topic!r} within "
                                      f"{timeout} s (is the node at {c.audio_input if pub is self.audio_pub else c.lm_input} "
                                      f"running?)")
        waiting, deadline = set(c.roles), time.monotonic() + timeout
        while waiting and (left := deadline - time.monotonic()) > 0:
            rec = self.subs[1].recv(left)
            if rec is not None and rec.kind == "stats":
                waiting.discard(rec.header.get("node"))
        if waiting:
            raise EdgeStreamError(f"gateway {self.cfg.name}: no heartbeat from node(s) {', '.join(sorted(waiting))} "
                                  f"within {timeout} s")

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            if not self._started.is_set():
                self._error = exc
            else:
                log.exception("gateway %s: loop failed", self.cfg.name)
        finally:
            self._close_sockets()
            self._started.set()

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        for sub in self.subs:
            self._loop.add_reader(sub.sock.getsockopt(zmq.FD), self._drain, sub)
            self._drain(sub)  # the FD is edge-triggered: take what is already queued
        host, _, port = self.cfg.listen.rpartition(":")
        async with serve(self._session, host, int(port), process_request=self._http,
                         select_subprotocol=_select_subprotocol, ssl=self.ssl,
                         max_size=4 * self.cfg.max_message_bytes, compression=None) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._started.set()
            await self._stop.wait()
        for sub in self.subs:
            self._loop.remove_reader(sub.sock.getsockopt(zmq.FD))

    def stop(self, timeout: float = 10.0) -> None:
        """Close every session (each closes its stream in the nodes), the server and the sockets."""
        self._stopping = True
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)

    def dead_threads(self) -> list[str]:
        """The loop thread, if it ended although the gateway was not stopped (`edge-stream run` exits)."""
        if self._thread is None or self._stopping or self._thread.is_alive():
            return []
        return [self._thread.name]

    def _close_sockets(self) -> None:
        for s in (*self.subs, self.audio_pub, self.lm_pub):
            if s is not None:
                s.close()

    # ----- node outputs -> sessions ---------------------------------------------------------------

    def _drain(self, sub: Subscriber) -> None:
        """Everything queued on one subscriber, each output to its session (on the loop)."""
        while True:
            try:
                rec = sub.recv(0)
            except EdgeStreamError as exc:  # a malformed output: drop it, keep relaying
                log.warning("gateway %s: unreadable node output dropped: %s", self.cfg.name, exc)
                continue
            if rec is None:
                return
            session = self.sessions.get(rec.header.get("stream"))
            if session is None:  # stats, or another client's stream
                continue
            role = "words" if rec.msg.topic == self.chain.words_topic else self.chain.roles.get(rec.header.get("node"))
            try:
                session.on_output(role, rec)
            except Exception:  # a bug of ours: one output lost, the relay carries on
                log.exception("gateway %s: output for %s failed", self.cfg.name, session.stream)

    # ----- WebSocket sessions and the page --------------------------------------------------------

    async def _session(self, ws: ServerConnection) -> None:
        if len(self.sessions) >= self.cfg.max_sessions:
            await ws.close(1013, f"gateway at max_sessions ({self.cfg.max_sessions}); try again later")
            return
        session = Session(self, ws)
        self.sessions[session.stream] = session
        log.info("gateway %s: session %s opened from %s", self.cfg.name, session.stream, ws.remote_address)
        try:
            await session.run()
        finally:
            try:
                await session.close_in_nodes()
            finally:
                del self.sessions[session.stream]
                self._forget(session.stream)
                log.info("gateway %s: session %s closed", self.cfg.name, session.stream)

    def _forget(self, stream: str) -> None:
        """A session's stream is closed for good (names are random, never reused): drop the clients'
        per-stream numbering, so a gateway serving many short sessions does not grow."""
        for pub in (self.audio_pub, self.lm_pub):
            if pub is not None:
                pub.seqs.pop(stream, None)
        for sub in self.subs:
            sub.forget(stream)

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        """Before the handshake: the page's files, then the origin allow-list and the bearer token.
        None lets the WebSocket handshake go on."""
        path = request.path.split("?", 1)[0]
        if path != self.cfg.path:
            if self.cfg.page and path in PAGE_FILES:
                return _file_response(WEB_DIR / PAGE_FILES[path])
            return connection.respond(404, f"not found: {path}; the WebSocket is at {self.cfg.path}\n")
        origin = request.headers.get("Origin")
        if origin is not None and origin not in self._origins(request):
            return connection.respond(403, f"origin {origin} is not allowed (gateway origins)\n")
        if self.token is not None and not self._authorized(request.headers):
            return connection.respond(401, "a bearer token is required: 'Authorization: Bearer <token>' or the "
                                           "subprotocol 'bearer.<token>'\n")
        return None

    def _origins(self, request: Request) -> set[str]:
        """The page's own origin (the Host the browser reached us at) and the configured ones. Clients
        that send no Origin (not browsers) are not checked here: the token is what guards them."""
        scheme = "https" if self.ssl else "http"
        return {f"{scheme}://{request.headers.get('Host', '')}", *self.cfg.origins}

    def _authorized(self, headers: Headers) -> bool:
        offered = [headers.get("Authorization", "")]
        offered[0] = offered[0][len("Bearer "):] if offered[0].startswith("Bearer ") else ""
        for value in headers.get_all("Sec-WebSocket-Protocol"):
            for proto in value.split(","):
                proto = proto.strip()
                offered += [proto[len(p):] for p in TOKEN_PROTOCOLS if proto.startswith(p)]
        return any(t and hmac.compare_digest(t.encode(), self.token.encode()) for t in offered)


def _select_subprotocol(connection: ServerConnection, offered) -> str | None:
    """Echo `realtime` (or another offered protocol) but never a token: Chrome fails a handshake that
    offered protocols and got none back, so a browser offers `realtime` beside `bearer.<token>`."""
    plain = [p for p in offered if not p.startswith(TOKEN_PROTOCOLS)]
    return "realtime" if "realtime" in plain else (plain[0] if plain else None)


def _file_response(path: Path) -> Response:
    body = path.read_bytes()
    headers = Headers([("Date", email.utils.formatdate(usegmt=True)), ("Connection", "close"),
                       ("Content-Length", str(len(body))), ("Content-Type", CONTENT_TYPES[path.suffix]),
                       ("Cache-Control", "no-cache")])
    return Response(200, "OK", headers, body)


def gateway_for_launch(cfg: GatewayConfig, nodes: tuple[NodeConfig, ...]) -> Gateway:
    """The gateway of a launch file's [[gateway]] table (its nodes may run in other processes)."""
    return Gateway(cfg, Chain.from_launch(cfg, nodes))
