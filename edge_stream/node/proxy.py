"""libzmq's own XSUB/XPUB proxy: many sensor publishers and many nodes meet at one address.

Publishers (sensors, nodes' outputs) connect to the frontend (XSUB); subscribers
(nodes' inputs, controllers) connect to the backend (XPUB). Subscriptions flow
back through it, so `Publisher.wait_ready` still works across the proxy.
"""

from __future__ import annotations

import logging
import threading

import zmq

from edge_stream.errors import EdgeStreamError
from edge_stream.node.config import ProxyConfig
from edge_stream.node.security import Curve, attach

log = logging.getLogger(__name__)


class Proxy:
    """Runs `zmq.proxy_steerable` in a thread; `stop()` sends it TERMINATE."""

    def __init__(self, cfg: ProxyConfig):
        self.cfg = cfg
        self.ctx = zmq.Context()
        self.endpoints: dict[str, list[str]] = {}
        self._control_addr = f"inproc://edge-stream-proxy-{id(self)}"
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 5.0) -> Proxy:
        self._thread = threading.Thread(target=self._run, name=f"edge-stream-proxy-{self.cfg.name}", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise EdgeStreamError(f"proxy {self.cfg.name!r}: not ready after {timeout} s")
        if self._error is not None:
            raise self._error
        return self

    def _run(self):
        where = f"proxy {self.cfg.name!r}"
        sockets = []
        curve = None
        try:
            curve = Curve(self.ctx, self.cfg.security, f"{where}.security")
            front, back, control = (self.ctx.socket(k) for k in (zmq.XSUB, zmq.XPUB, zmq.PAIR))
            sockets = [front, back, control]
            for s in sockets:
                s.linger = 0
            attach(front, self.cfg.frontend, curve, f"{where}.frontend")
            attach(back, self.cfg.backend, curve, f"{where}.backend")
            control.bind(self._control_addr)
            self.endpoints = {"frontend": [front.last_endpoint.decode()], "backend": [back.last_endpoint.decode()]}
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            self._close(sockets, curve)
            return
        self._ready.set()
        log.info("proxy %s: %s", self.cfg.name, self.endpoints)
        try:
            zmq.proxy_steerable(front, back, None, control)
        except zmq.ZMQError as exc:
            log.error("proxy %s stopped: %s", self.cfg.name, exc)
        finally:
            self._close(sockets, curve)

    def _close(self, sockets, curve):
        for s in sockets:
            s.close(linger=0)
        if curve is not None:
            curve.stop()
        self.ctx.term()

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is None or not self._thread.is_alive():
            return
        cmd = self.ctx.socket(zmq.PAIR)
        cmd.linger = 0
        cmd.connect(self._control_addr)
        cmd.send(b"TERMINATE")
        cmd.close()
        self._thread.join(timeout)
