"""A control server running on its own event loop in a background thread.

The tests then talk to it the way the CLI does: over the real Unix socket,
with the synchronous client or raw sockets.
"""

from __future__ import annotations

import asyncio
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from vmip.control.server import ControlServer, Handler


@dataclass
class RunningServer:
    server: ControlServer
    loop: asyncio.AbstractEventLoop

    @property
    def path(self) -> Path:
        return self.server.path

    def connect(self, timeout: float = 5.0) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(str(self.path))
        return sock


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # Not tmp_path: pytest's paths can exceed the 107 bytes of a Unix socket path.
    with tempfile.TemporaryDirectory(prefix="vc-") as name:
        yield Path(name)


@pytest.fixture
def start_server(sock_dir: Path) -> Iterator[Callable[..., RunningServer]]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="control-server", daemon=True)
    thread.start()
    started: list[ControlServer] = []

    def start(handlers: Mapping[str, Handler] | None = None, path: Path | None = None,
              **options: Any) -> RunningServer:
        server = ControlServer(path or sock_dir / "node.sock", handlers, **options)
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(timeout=10)
        started.append(server)
        return RunningServer(server, loop)

    try:
        yield start
    finally:
        for server in started:
            asyncio.run_coroutine_threadsafe(server.close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
