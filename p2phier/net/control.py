"""The node's local control endpoint: a Unix socket only its own user can use.

Owns :func:`serve_control`, the trio server of the protocol in
:mod:`p2phier.node.controlwire` (4-byte length + JSON object, one request
and one answer per connection).  Access control is the file system's: the
socket lives in a directory of mode 0700 and is itself mode 0600, so no
other local user can connect; nothing listens on the network.  A stale
socket left by a crashed node is replaced; a live one (another node on the
same home) is an error, never stolen.

Requests are hostile like anything else: the length is checked before the
body is read, each read has a deadline, and a handler's P2PHierError becomes
an error answer with its exit code (other exceptions are logged and answered
as internal errors; the node keeps running).
"""

from __future__ import annotations

import errno
import logging
import os
import socket as pysocket
import stat
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import trio

from p2phier.errors import ConfigError, P2PHierError, PeerTimeoutError, ProtocolViolationError
from p2phier.node.controlwire import (
    HEADER,
    MAX_REQUEST,
    MAX_RESPONSE,
    decode_body,
    decode_length,
    encode,
)

logger = logging.getLogger(__name__)

#: ``handler(args) -> JSON-able result``
ControlHandler = Callable[[Mapping[str, Any]], Awaitable[Any]]

#: reading a request must finish within this
REQUEST_TIMEOUT = 10.0


def prepare_socket_path(path: Path) -> None:
    """Make the socket's directory private (0700) and clear a stale socket file."""
    directory = path.parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = directory.stat()
    if st.st_uid != os.getuid():
        raise ConfigError(f"control socket directory {directory} is not owned by this user")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(directory, 0o700)
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"{path} exists and is not a socket; remove it or choose another path")
    probe = pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            path.unlink(missing_ok=True)  # left behind by a node that died
            return
        raise
    finally:
        probe.close()
    raise ConfigError(f"another node is already running with control socket {path}")


async def serve_control(
    path: Path,
    handlers: Mapping[str, ControlHandler],
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``handlers`` on the Unix socket ``path`` until cancelled; removes it on exit."""
    prepare_socket_path(path)
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the socket file is created 0600, never briefly wider
    try:
        await sock.bind(str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(16)
    listener = trio.SocketListener(sock)
    logger.info("control socket at %s", path)
    try:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                conn = await listener.accept()
                nursery.start_soon(_serve_one, conn, handlers)
    finally:
        with trio.CancelScope(shield=True):
            await listener.aclose()
        path.unlink(missing_ok=True)


async def _receive_exact(stream: trio.SocketStream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.receive_some(n - len(buf))
        if not chunk:
            raise ProtocolViolationError("control client closed the connection mid-request")
        buf += chunk
    return bytes(buf)


async def _serve_one(stream: trio.SocketStream, handlers: Mapping[str, ControlHandler]) -> None:
    async with stream:
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                length = decode_length(await _receive_exact(stream, HEADER.size), MAX_REQUEST)
                request = decode_body(await _receive_exact(stream, length))
        except (ProtocolViolationError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            logger.debug("bad control request: %s", exc)
            return
        answer = await _dispatch(request, handlers)
        try:
            try:
                data = encode(answer, MAX_RESPONSE)
            except ProtocolViolationError as exc:
                data = encode(_error(exc), MAX_RESPONSE)
            with trio.fail_after(REQUEST_TIMEOUT):
                await stream.send_all(data)
        except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            logger.debug("control answer not delivered: %s", exc)


async def _dispatch(request: Mapping[str, Any], handlers: Mapping[str, ControlHandler]) -> Any:
    cmd = request.get("cmd")
    args = request.get("args", {})
    handler = handlers.get(cmd) if isinstance(cmd, str) else None
    if handler is None:
        known = ", ".join(sorted(handlers))
        return _error(ProtocolViolationError(f"unknown control command {cmd!r} (known: {known})"))
    if not isinstance(args, dict):
        return _error(ProtocolViolationError("control request args must be an object"))
    try:
        return {"ok": True, "result": await handler(args)}
    except P2PHierError as exc:
        return _error(exc)
    except trio.TooSlowError:
        return _error(PeerTimeoutError(f"{cmd} did not finish in time"))
    except Exception as exc:  # a bug must answer, not take the node down
        logger.exception("control command %s failed", cmd)
        return {
            "ok": False,
            "error": {
                "type": type(exc).__name__,
                "message": f"internal error: {exc}",
                "exit_code": 1,
            },
        }


def _error(exc: P2PHierError) -> dict[str, Any]:
    return {
        "ok": False,
        "error": {"type": type(exc).__name__, "message": str(exc), "exit_code": exc.exit_code},
    }
