"""The local control protocol's framing and its blocking client (no trio, no libp2p).

Owns how the CLI and a running node talk over the node's Unix socket
(``<home>/control.sock``): each message is a 4-byte big-endian length and a
UTF-8 JSON object.  Request: ``{"cmd": NAME, "args": {...}}``.  Response:
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": {"type", "message",
"exit_code"}}``.  Requests are capped at :data:`MAX_REQUEST` bytes (the server
checks the length before reading the body), responses at :data:`MAX_RESPONSE`.

Only the local user can connect: the server makes the socket mode 0600 in a
0700 directory (:mod:`p2phier.net.control`).  The client here is blocking on
purpose: the CLI imports neither trio nor libp2p to ask a node its status.
"""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path
from typing import Any

from p2phier.errors import NetworkError, P2PHierError, PeerTimeoutError, ProtocolViolationError

HEADER = struct.Struct(">I")
MAX_REQUEST = 64 * 1024
MAX_RESPONSE = 16 * 1024 * 1024


class ControlError(NetworkError, ConnectionError):
    """The node's control socket cannot be reached (is the node running?)."""


class RemoteError(P2PHierError):
    """The node refused or failed a control request; carries the node's exit code."""

    def __init__(self, message: str, exit_code: int, kind: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.kind = kind


def encode(obj: Any, limit: int) -> bytes:
    body = json.dumps(obj, separators=(",", ":"), sort_keys=True).encode("utf-8")
    if len(body) > limit:
        raise ProtocolViolationError(f"control message of {len(body)} bytes is over {limit}")
    return HEADER.pack(len(body)) + body


def decode_length(header: bytes, limit: int) -> int:
    (length,) = HEADER.unpack(header)
    if length > limit:
        raise ProtocolViolationError(f"control message declares {length} bytes, over {limit}")
    return int(length)


def decode_body(body: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolViolationError(f"control message is not UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolViolationError("control message must be a JSON object")
    return obj


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise ControlError("the node closed the control connection mid-answer")
        buf += chunk
    return bytes(buf)


def call(
    socket_path: Path, cmd: str, args: dict[str, Any] | None = None, *, timeout: float = 60.0
) -> Any:
    """Send one request to the node at ``socket_path``; return its ``result``.

    Raises ControlError when no node listens there, PeerTimeoutError when it does
    not answer within ``timeout``, RemoteError with the node's message and exit
    code when the request failed.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(socket_path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlError(
                f"no node is running at {socket_path} (start one with `p2phier node run`, "
                "or pass the node's --home)"
            ) from None
        except PermissionError:
            raise ControlError(
                f"permission denied on {socket_path}: only the node's own user may control it"
            ) from None
        try:
            sock.sendall(encode({"cmd": cmd, "args": args or {}}, MAX_REQUEST))
            length = decode_length(_recv_exact(sock, HEADER.size), MAX_RESPONSE)
            answer = decode_body(_recv_exact(sock, length))
        except TimeoutError:
            raise PeerTimeoutError(f"the node did not answer {cmd!r} within {timeout}s") from None
        except OSError as exc:
            raise ControlError(f"control connection to {socket_path} failed: {exc}") from None
    finally:
        sock.close()
    if answer.get("ok") is True:
        return answer.get("result")
    err = answer.get("error")
    if not isinstance(err, dict):
        raise ProtocolViolationError("the node sent a malformed control answer")
    code = err.get("exit_code")
    return _raise(
        str(err.get("message", "unknown error")),
        code if isinstance(code, int) and 1 <= code < 126 else 1,
        str(err.get("type", "Error")),
    )


def _raise(message: str, exit_code: int, kind: str) -> Any:
    raise RemoteError(message, exit_code, kind)
