"""The replay server sends the same bytes however many events each write carries, so a
benchmark that batches writes to spare the server's CPU feeds the client the same stream."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from deepconf.eval.replay_server import events, writes
from deepconf.eval.serve_processes import free_port


@pytest.mark.parametrize("per_write", [1, 7, 16, 10_000])
def test_writes_join_to_the_events_in_order(per_write: int) -> None:
    evs = events(50, "42")
    sent = writes(50, "42", per_write)
    assert b"".join(sent) == b"".join(evs)
    assert len(sent) == -(-len(evs) // per_write)  # ceil: every write full but the last
    assert all(data.count(b"data: ") == per_write for data in sent[:-1])


def served_body(per_write: int) -> bytes:
    """The raw SSE body of one 50-token stream from a replay server on loopback."""
    port = free_port()
    command = [sys.executable, "-P", "-m", "deepconf.eval.replay_server", "--port", str(port)]
    proc = subprocess.Popen([*command, "--events-per-write", str(per_write)])
    try:
        url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(url + "/models", timeout=5)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)  # start-up poll
        body = {"model": "m", "messages": [], "max_tokens": 50, "seed": 3, "stream": True}
        return httpx.post(url + "/chat/completions", json=body, timeout=30).content
    finally:
        proc.terminate()
        proc.wait()


def test_a_server_writing_16_events_at_once_sends_the_same_stream() -> None:
    one = served_body(1)
    assert one == b"".join(events(50, "17"))  # seed 3 answers 17
    assert served_body(16) == one


def test_events_per_write_below_one_is_refused() -> None:
    command = [sys.executable, "-P", "-m", "deepconf.eval.replay_server", "--port", "1"]
    done = subprocess.run([*command, "--events-per-write", "0"], capture_output=True, text=True)
    assert done.returncode == 2
    assert "--events-per-write must be at least 1" in done.stderr
