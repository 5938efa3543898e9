"""The processes the serve benchmarks drive: the scripted upstream, `deepconf serve` and
`deepconf serve-model`, each in its own process (so the client's CPU does not share their
GIL, and their memory is their own), with the measurements taken from outside: resident
memory from /proc, /health, and the upstream's gauge of streams in progress.

Used by `deepconf bench serve` (eval/bench_serve.py) and `deepconf bench hostile`
(eval/bench_hostile.py). Linux only (/proc, RLIMIT_NOFILE).

    with Upstream(tokens=20, delay=0.001) as up, Serve(up.base_url, ["--budget", "4"]) as px:
        ...  # px.root, px.rss_mb(), up.running()
"""

from __future__ import annotations

import math
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import httpx

# The `deepconf` console script, run by this interpreter. -P: the working directory's source
# folder deepconf/ (without backends/, eval/) must not shadow the installed package.
CLI = "from deepconf.entry import main; main()"
# The same server without its connection rules (plain uvicorn.run, asyncio's own accept-error
# logging): the "before" beside it in `deepconf bench hostile`, and nothing else.
UNGUARDED_CLI = (
    "import uvicorn, deepconf.serve.connections as c; "
    "c.install_accept_error_filter = lambda: None; "
    "c.run_server = lambda app, guard, host, port, log_level='info': "
    "uvicorn.run(app, host=host, port=port, log_level=log_level); " + CLI
)
UPSTREAM = (
    "import sys, time; from deepconf.eval.scripted_server import Script, ScriptedServer; "
    "text = ' '.join(['step'] * int(sys.argv[1])) + ' so \\\\boxed{7}'; "
    "server = ScriptedServer(default=Script.from_text(text, delay=float(sys.argv[2]))).start(); "
    "print(server.base_url, flush=True); sys.stdin.read()"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    """Resident memory of a process, MB (VmRSS)."""
    text = Path(f"/proc/{pid}/status").read_text()
    kb = int(re.search(r"VmRSS:\s+(\d+)", text).group(1))  # type: ignore[union-attr]
    return kb / 1024


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


class _Process:
    """A child process with its stderr in a temporary file (its size is the log's size)."""

    def __init__(self, args: list[str], file_limit: int | None = None, **kw: Any) -> None:
        self.log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        preexec = None
        if file_limit is not None:

            def preexec() -> None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (file_limit, file_limit))

        self.proc = subprocess.Popen(
            [sys.executable, "-P", "-c", *args], stderr=self.log, preexec_fn=preexec, **kw
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_mb(self) -> float:
        return rss_mb(self.proc.pid)

    def cpu_seconds(self) -> float:
        """CPU time the process has used so far (user + system, all threads)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_bytes(self) -> int:
        return os.fstat(self.log.fileno()).st_size

    def log_text(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def close(self) -> None:
        self.stop()
        self.log.close()


class Upstream(_Process):
    """The scripted server: every trace says `tokens` words then \\boxed{7}, one token per
    `delay` seconds. `running()` reads its vLLM-style gauge of streams in progress."""

    def __init__(self, tokens: int = 20, delay: float = 0.001) -> None:
        super().__init__(
            [UPSTREAM, str(tokens), str(delay)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert self.proc.stdout is not None
        self.base_url = self.proc.stdout.readline().decode().strip()
        if not self.base_url.startswith("http"):
            raise RuntimeError(f"the scripted upstream did not start: {self.log_text()[-500:]}")
        self.root = self.base_url.removesuffix("/v1")

    def running(self) -> int:
        text = httpx.get(self.root + "/metrics", timeout=10).text
        gauge = re.search(r"^vllm:num_requests_running\S* (\S+)$", text, re.MULTILINE)
        if gauge is None:
            raise RuntimeError(f"no running-request gauge in the upstream's /metrics: {text!r}")
        return int(float(gauge.group(1)))

    def __enter__(self) -> Upstream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Served(_Process):
    """`deepconf serve` or `deepconf serve-model` on a free loopback port, started and up."""

    def __init__(
        self, command: list[str], *, file_limit: int | None = None, runner: str = CLI
    ) -> None:
        self.port = free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        args = [runner, *command, "--port", str(self.port)]
        super().__init__(args, file_limit=file_limit, stdout=subprocess.DEVNULL)
        self._wait_up()

    def _wait_up(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {self.log_text()[-2000:]}")
            try:
                if httpx.get(self.root + "/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)  # start-up poll
        raise RuntimeError("the server did not answer /health in time")

    def health(self) -> dict[str, Any]:
        return httpx.get(self.root + "/health", timeout=10).json()

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(upstream: str, flags: list[str], **kw: Any) -> Served:
    return Served(["serve", "--upstream", upstream, "--log-level", "warning", *flags], **kw)
