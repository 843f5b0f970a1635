"""CURVE security with pyzmq's own `zmq.auth`: key pairs, an allow-list, and socket set-up.

Two traps handled here: `curve_server` must be set before `bind`, and
`configure_curve` only logs a bad key folder (every client is then silently
denied), so we check the folder ourselves and fail at start-up.
"""

from __future__ import annotations

import logging
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from edge_stream.errors import ConfigError
from edge_stream.node.config import SecurityConfig

log = logging.getLogger(__name__)


def generate_keys(folder: str | Path, name: str) -> tuple[Path, Path]:
    """Write `NAME.key` (public, share it) and `NAME.key_secret` (keep it) into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(folder), name)
    Path(secret).chmod(0o600)
    return Path(public), Path(secret)


def load_secret(path: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys from a `.key_secret` file; ConfigError when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: CURVE secret key file not found (make one with `edge-stream keys`)")
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{path}: not a CURVE key file ({exc})") from None
    if secret is None:
        raise ConfigError(f"{path}: holds only a public key; the secret key is in the matching .key_secret file")
    return public, secret


def load_public(path: str | Path) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: CURVE public key file not found")
    try:
        public, _ = zmq.auth.load_certificate(str(path))
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{path}: not a CURVE key file ({exc})") from None
    return public


def check_allowed_dir(folder: str | Path) -> list[bytes]:
    """Public keys in `folder` (`*.key` files); ConfigError when it is missing, empty or unreadable."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: allowed_clients folder not found")
    files = sorted(folder.glob("*.key"))
    if not files:
        raise ConfigError(f"{folder}: allowed_clients holds no public *.key files; every client would be denied")
    return [load_public(f) for f in files]


class Curve:
    """CURVE set-up of one ZeroMQ context: an authenticator for bound sockets and the
    key pair for all of them. `Curve.off()` leaves sockets in plain text."""

    def __init__(self, ctx: zmq.Context, cfg: SecurityConfig, where: str = "security"):
        self.enabled = cfg.curve
        self.auth = None
        if not cfg.curve:
            return
        if not cfg.secret_key:
            raise ConfigError(f"{where}.secret_key: required when curve = true")
        self.public, self.secret = load_secret(cfg.secret_key)
        self.server_public = load_public(cfg.server_key) if cfg.server_key else None
        self.allowed_dir = cfg.allowed_clients
        if self.allowed_dir is not None:
            keys = check_allowed_dir(self.allowed_dir)
            self.auth = ThreadAuthenticator(ctx, log=logging.getLogger("edge_stream.auth"))
            self.auth.start()
            self.auth.configure_curve(domain="*", location=str(self.allowed_dir))
            log.info("CURVE: %d allowed client key(s) from %s", len(keys), self.allowed_dir)

    def server(self, sock: zmq.Socket, where: str) -> None:
        """Make `sock` a CURVE server; call before bind (libzmq reads it at bind time)."""
        if not self.enabled:
            return
        if self.auth is None:
            raise ConfigError(f"{where}: binds with curve = true, so security.allowed_clients is required")
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True

    def client(self, sock: zmq.Socket, where: str) -> None:
        """Make `sock` a CURVE client of `server_key`; call before connect."""
        if not self.enabled:
            return
        if self.server_public is None:
            raise ConfigError(f"{where}: connects with curve = true, so security.server_key is required")
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_serverkey = self.server_public

    def stop(self) -> None:
        if self.auth is not None:
            self.auth.stop()
            self.auth = None


def client_curve(ctx: zmq.Context, secret_key: str | None, server_key: str | None, where: str) -> Curve:
    """The Curve of a Python client (Publisher, Subscriber, Control): CURVE on when either key file
    is given, and then both are required; no allow-list, so it only ever connects as a client."""
    on = secret_key is not None or server_key is not None
    return Curve(ctx, SecurityConfig(curve=on, secret_key=secret_key, server_key=server_key), where)


def attach(sock: zmq.Socket, endpoints, curve: Curve, where: str) -> None:
    """Bind and connect `sock` to `endpoints` (config.Endpoints), CURVE role set per direction first."""
    if endpoints.bind:
        curve.server(sock, where)
        for ep in endpoints.bind:
            try:
                sock.bind(ep)
            except zmq.ZMQError as exc:
                raise ConfigError(f"{where}.bind: cannot bind {ep!r} ({exc})") from None
    for ep in endpoints.connect:
        if endpoints.bind:
            # One socket cannot be CURVE server and client at once.
            if curve.enabled:
                raise ConfigError(f"{where}: with curve = true a socket either binds or connects, not both")
        else:
            curve.client(sock, where)
        try:
            sock.connect(ep)
        except zmq.ZMQError as exc:
            raise ConfigError(f"{where}.connect: cannot connect {ep!r} ({exc})") from None
