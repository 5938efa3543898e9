"""`deepconf serve --workers N` (deepconf/serve/workers.py) as a user runs it, in front of the
scripted upstream: the workers listen on the one port, a burst of connections is spread
over them, and they answer requests through the openai client; --max-concurrent-solves is
split among them; a worker that dies stops the others and the command exits 1 naming it;
SIGTERM stops them all; bad counts are refused before anything listens. Ordering comes from
polling the processes' own state (/proc, /health), never from sleeping a fixed time."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from support.processes import running
from support.scripted_server import MODEL, Script, ScriptedServer

from deepconf.child_processes import CLI
from deepconf.errors import ConfigError
from deepconf.serve.workers import solve_shares

HANG_S = 120.0  # a hang, not a slow machine: workers start in seconds
ASK = [{"role": "user", "content": "What is 3+4?"}]
ANSWER = Script.from_text("The answer is \\boxed{7}.", delay=0.001)


def test_the_solve_limit_is_split_exactly_and_bad_counts_are_refused() -> None:
    assert solve_shares(8, 3) == [3, 3, 2]
    assert solve_shares(2, 2) == [1, 1]
    with pytest.raises(ConfigError, match="--workers 3 is more than --max-concurrent-solves 2"):
        solve_shares(2, 3)
    with pytest.raises(ConfigError, match="--workers must be at least 1, got 0"):
        solve_shares(8, 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def until(predicate, what: str) -> None:
    end = time.monotonic() + HANG_S
    while not predicate():
        assert time.monotonic() < end, f"not reached in {HANG_S:.0f} s: {what}"
        time.sleep(0.05)


def workers_of(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children if b"--reuse-port" in Path(f"/proc/{c}/cmdline").read_bytes()]


def inodes(port: int, state: str) -> set[str]:
    """The inodes of the sockets on 127.0.0.1:port in a TCP state (/proc/net/tcp: 0A
    listening, 01 established)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == state:
            found.add(fields[9])
    return found


def sockets_of(pid: int) -> set[str]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                found.add(target[8:-1])
    return found


def healthy(base: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(base + "/health", timeout=5).status_code == 200
    return False


@contextlib.contextmanager
def serve(up: ScriptedServer, *flags: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    args = ["serve", "--upstream", up.base_url, "--port", str(port), "--no-probe", *flags]
    proc = subprocess.Popen(
        [sys.executable, "-P", "-c", CLI, *args], stderr=subprocess.PIPE, text=True
    )
    try:
        yield proc, port
    finally:
        proc.kill()
        proc.communicate(timeout=HANG_S)


@pytest.mark.slow
def test_two_workers_share_the_port_answer_requests_and_stop_on_sigterm() -> None:
    """Each worker listens on the port itself (SO_REUSEPORT), with half the solve slots;
    the parent never listens; the openai client gets its answers;
    SIGTERM to the parent stops both and it exits 0."""
    with ScriptedServer(default=ANSWER) as up, serve(up, "--workers", "2") as (proc, port):
        base = f"http://127.0.0.1:{port}"
        until(lambda: healthy(base) and len(workers_of(proc.pid)) == 2, "two workers serving")
        pids = workers_of(proc.pid)
        until(lambda: len(inodes(port, "0A")) == 2, "two sockets listening")
        first, second = (sockets_of(pid) & inodes(port, "0A") for pid in pids)
        assert len(first) == len(second) == 1 and first != second  # one each
        assert not sockets_of(proc.pid) & inodes(port, "0A")  # the parent never accepts
        assert httpx.get(base + "/health").json()["max_concurrent_solves"] == 4  # 8 / 2
        client = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0)
        for _ in range(4):
            r = client.chat.completions.create(
                model=MODEL, messages=ASK, extra_body={"deepconf": {"budget": 2, "warmup": 2}}
            )
            assert r.model_extra["deepconf"]["answer"] == "7"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=HANG_S) == 0
        until(lambda: not any(running(pid) for pid in pids), "both workers ended")


@pytest.mark.slow
def test_a_burst_of_connections_is_spread_over_the_workers() -> None:
    """64 connections opened at once, as a client's pool does, each sending one request
    and kept alive: both workers hold some of them (the kernel picks a listener by a hash
    of each connection's ports; all 64 on one worker has odds of 2 in 2^64). With one
    shared socket the first worker awake took whole bursts."""
    with (
        ScriptedServer(default=ANSWER) as up,
        serve(up, "--workers", "2", "--header-timeout", "600") as (proc, port),
    ):
        until(lambda: len(workers_of(proc.pid)) == 2 and healthy(f"http://127.0.0.1:{port}"),
              "two workers serving")  # fmt: skip
        pids = workers_of(proc.pid)
        until(lambda: len(inodes(port, "0A")) == 2, "both workers listening")
        clients = [socket.create_connection(("127.0.0.1", port), timeout=HANG_S) for _ in range(64)]
        try:
            for sock in clients:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            for sock in clients:
                assert sock.recv(12) == b"HTTP/1.1 200"  # answered, and kept alive
            held = [len(sockets_of(pid) & inodes(port, "01")) for pid in pids]
        finally:
            for sock in clients:
                sock.close()
    assert sum(held) == 64 and min(held) > 0, held


@pytest.mark.slow
def test_a_worker_that_dies_stops_the_others_and_is_named() -> None:
    """SIGKILL to one worker: the parent stops the other and exits 1 saying which worker
    died and how."""
    with ScriptedServer(default=ANSWER) as up, serve(up, "--workers", "2") as (proc, port):
        until(lambda: len(workers_of(proc.pid)) == 2 and healthy(f"http://127.0.0.1:{port}"),
              "two workers serving")  # fmt: skip
        first, second = workers_of(proc.pid)
        os.kill(first, signal.SIGKILL)
        assert proc.wait(timeout=HANG_S) == 1
        said = " ".join(proc.communicate(timeout=HANG_S)[1].split())
        until(lambda: not running(second), "the other worker ended")
    assert "was killed by signal SIGKILL; the other workers were stopped" in said
    assert "error: serve worker " in said


def test_more_workers_than_solve_slots_is_refused_before_listening() -> None:
    flags = ("--workers", "3", "--max-concurrent-solves", "2")
    with ScriptedServer(default=ANSWER) as up, serve(up, *flags) as (proc, _):
        code = proc.wait(timeout=HANG_S)
        said = " ".join(proc.communicate(timeout=HANG_S)[1].split())
    assert code == 1
    assert "--workers 3 is more than --max-concurrent-solves 2" in said


@pytest.mark.slow
def test_a_second_server_on_a_port_in_use_is_refused() -> None:
    """A second `serve --workers 2` on the port the first one's workers listen on exits 1
    saying so, before any worker starts: its own SO_REUSEPORT sockets would otherwise join
    the first server's and split its connections without a word."""
    with ScriptedServer(default=ANSWER) as up, serve(up, "--workers", "2") as (first, port):
        until(lambda: len(inodes(port, "0A")) == 2, "the first server's workers listening")
        args = ["serve", "--upstream", up.base_url, "--port", str(port), "--workers", "2"]
        second = subprocess.run(
            [sys.executable, "-P", "-c", CLI, *args, "--no-probe"],
            capture_output=True, text=True, timeout=HANG_S,
        )  # fmt: skip
        assert first.poll() is None
    assert second.returncode == 1
    said = " ".join(second.stderr.split())
    assert f"cannot listen on 127.0.0.1:{port}" in said and "choose another --port" in said
