"""Loopback addresses that never answer: a port whose connections never complete."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator


@contextlib.contextmanager
def full_accept_queue() -> Iterator[tuple[str, int]]:
    """(host, port) whose accept queue is full (listen(0), never accepted, filled by other
    connections): a new connection's handshake never completes, as behind a dead host."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(listener.getsockname())
        fillers.append(s)
    try:
        yield listener.getsockname()
    finally:
        for s in fillers:
            s.close()
        listener.close()
