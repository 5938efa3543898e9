"""`deepconf bench workers` (or `python -m deepconf.eval.bench_workers`): what `eval
--workers N` buys, measured side by side in one run.

The same eval runs with one worker (in process) and with N worker processes against the
replay server (eval/replay_server.py: vLLM-shaped chat chunks, one token each with top-20
logprobs, no model behind them, so the time is the client's). Each eval is a fresh
`deepconf eval` process, start-up included, into a fresh folder; the runs alternate (1, N,
1, N, ...) so a machine that slows down midway weighs on both alike. Offline methods only:
every trace runs to its `--tokens`, so both evals read exactly the same tokens, counted from
their results files.

Printed: each run's wall seconds, tokens, tokens per second, the CPU seconds of the eval
and its workers (and each worker's, read from /proc while it runs: the parent's share is the
difference) and those of the replay servers in the same span; then the throughput ratio
(N workers over one) per repetition and its median; then how busy the cores were in each
N-worker run and what a token cost its client there against the one worker (`cores_used`).
The servers share the machine, where a real fleet's GPUs use none of its CPU: with client
CPU c and server CPU s per token, N workers on N cores gain at most N c / (c + s). So each
server write carries 16 events (`--events-per-write`; the client reads and decodes the same
bytes, and a client that falls behind reads many events per read anyway), which cuts the
server's Python work per token; the servers send each stream by sendfile (`--no-sendfile`:
by writes), which spares them copying ~3.9 GB into loopback sockets per 2,048,000 tokens;
and `--servers 2` gives each worker a server of its own.

    deepconf bench workers                          # 2 workers, 16 problems x 32 traces x 2,000
    deepconf bench workers --events-per-write 1     # the server writes as a GPU server does
    deepconf bench workers --repeats 3 --servers 2
    deepconf bench workers --problems 2 --budget 4 --tokens 200 --repeats 1   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx

from deepconf.child_processes import CLI
from deepconf.eval.serve_processes import free_port

UP_WITHIN_S = 60.0  # a replay server that does not answer by then has failed to start
WORKER_LOOK_S = 0.05  # how often each worker's CPU is read while it runs


@dataclass
class Measured:
    workers: int
    seconds: float
    tokens: int
    cpu_seconds: float  # the eval and its workers
    server_cpu_seconds: float  # the replay servers, in the same span
    worker_cpu_seconds: list[float]  # each worker's, last seen within WORKER_LOOK_S of its end

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds


class ReplayServer:
    """`python -m deepconf.eval.replay_server` on a free port, up once /v1/models answers."""

    def __init__(self, events_per_write: int = 1, sendfile: bool = False) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        module = "deepconf.eval.replay_server"
        flags = ["--port", str(self.port), "--events-per-write", str(events_per_write)]
        flags += ["--sendfile"] if sendfile else []
        self.proc = subprocess.Popen(
            [sys.executable, "-P", "-m", module, *flags], stdout=subprocess.DEVNULL
        )
        deadline = time.monotonic() + UP_WITHIN_S
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"the replay server on port {self.port} did not start")
            time.sleep(0.1)  # start-up poll

    def _answers(self) -> bool:
        try:
            return httpx.get(self.base_url + "/models", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def cpu_seconds(self) -> float:
        """User + system CPU the server has used so far (Linux /proc; 0 elsewhere)."""
        return cpu_seconds_of(self.proc.pid)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def write_dataset(path: Path, problems: int) -> None:
    """Problems whose text differs (each has its own id); the replay server answers 42."""
    rows = (
        json.dumps({"question": f"Problem {i}: what is 6 x 7?", "answer": 42})
        for i in range(problems)
    )
    path.write_text("".join(row + "\n" for row in rows), encoding="utf-8")


def eval_command(
    args: argparse.Namespace, urls: list[str], data: Path, out: Path, workers: int
) -> list[str]:
    command = [sys.executable, "-P", "-c", CLI, "eval", "--dataset", str(data)]
    for url in urls:
        command += ["--base-url", url]
    command += ["--methods", "pass@1,majority,offline", "--budget", str(args.budget)]
    command += ["--max-tokens", str(args.tokens), "--max-traces", str(args.max_traces)]
    command += ["--parallel", str(args.parallel), "--workers", str(workers), "--output", str(out)]
    return command


def run_one(
    args: argparse.Namespace, servers: list[ReplayServer], data: Path, out: Path, workers: int
) -> Measured:
    """One eval, timed from the outside; its tokens are read back from its results, its
    workers' CPU sampled from /proc while they run."""
    urls = [s.base_url for s in servers]
    server_before = sum(s.cpu_seconds() for s in servers)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            eval_command(args, urls, data, out, workers), stdout=log, stderr=subprocess.STDOUT
        )
        each: dict[int, float] = {}  # worker pid -> CPU seconds at the last look
        while proc.poll() is None:
            for pid in children_of(proc.pid):
                each[pid] = cpu_seconds_of(pid) or each.get(pid, 0.0)
            time.sleep(WORKER_LOOK_S)
        seconds = time.perf_counter() - started
        log.seek(0)
        said = log.read().decode(errors="replace")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_cpu = sum(s.cpu_seconds() for s in servers) - server_before
    if proc.returncode != 0:
        raise SystemExit(f"the eval with {workers} worker(s) failed:\n{said}")
    lines = [json.loads(t) for t in (out / "results.jsonl").read_text().splitlines()]
    tokens = sum(run["tokens"]["total"] for line in lines for run in line["runs"].values())
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Measured(workers, seconds, tokens, cpu, server_cpu, list(each.values()))


def children_of(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []  # gone, or not Linux


def cpu_seconds_of(pid: int) -> float:
    """User + system CPU a process has used so far; 0 once it is gone (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def report(runs: list[Measured], workers: int, side: str | None = None) -> float:
    """Print the table and the ratios of `side` ("2 workers") over one; return the median
    ratio."""
    head = f"{'tokens/s':>10} {'CPU s':>7} {'servers CPU s':>13}  each worker's CPU s"
    print(f"{'workers':>7} {'seconds':>8} {'tokens':>10} {head}")
    for m in runs:
        figures = f"{m.seconds:>8.2f} {m.tokens:>10,} {m.rate:>10,.0f} {m.cpu_seconds:>7.2f}"
        each = " ".join(f"{x:.2f}" for x in m.worker_cpu_seconds) or "(in process)"
        print(f"{m.workers:>7} {figures} {m.server_cpu_seconds:>13.2f}  {each}")
    ones = [m for m in runs if m.workers == 1]
    many = [m for m in runs if m.workers == workers]
    ratios = [b.rate / a.rate for a, b in zip(ones, many, strict=True)]
    median = statistics.median(ratios)
    each = " ".join(f"{r:.2f}" for r in ratios)
    print(
        f"throughput ratio, {side or f'{workers} workers'} over 1: {median:.2f}"
        f" (median of {len(ratios)}; each {each})"
    )
    return median


def cores_used(runs: list[Measured], workers: int) -> None:
    """Print, for each N-worker run, how busy the machine's N cores were (the eval's and the
    servers' CPU seconds over N x wall seconds) and its client CPU per token over the one
    worker's before it. Where the cores were busy throughout, the ratio falls short of N by
    the second figure and the servers' share: CPU per token that the machine, not idle
    waiting, costs (a slower spell, two processes sharing caches and host cores)."""
    ones = [m for m in runs if m.workers == 1]
    many = [m for m in runs if m.workers == workers]
    busy = [(m.cpu_seconds + m.server_cpu_seconds) / (workers * m.seconds) for m in many]
    pairs = zip(ones, many, strict=True)
    dearer = [(b.cpu_seconds / b.tokens) / (a.cpu_seconds / a.tokens) for a, b in pairs]
    print(
        f"cores busy in the {workers}-worker runs: {' '.join(f'{x:.0%}' for x in busy)};"
        f" their client CPU per token over the one worker's: {' '.join(f'{x:.2f}' for x in dearer)}"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2, help="workers of the side compared to 1")
    ap.add_argument("--problems", type=int, default=16)
    ap.add_argument("--budget", type=int, default=32, help="traces per problem")
    ap.add_argument("--tokens", type=int, default=2000, help="tokens per trace")
    ap.add_argument("--max-traces", type=int, default=64, help="eval's global trace limit")
    ap.add_argument("--parallel", type=int, default=4, help="problems in progress per worker")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each side")
    ap.add_argument("--servers", type=int, default=1, help="replay servers (each a process)")
    ap.add_argument(
        "--events-per-write",
        type=int,
        default=16,
        help="SSE events per server write (1: as a GPU server writes; more: less server CPU"
        " on the client's cores, the same bytes for the client)",
    )
    ap.add_argument(
        "--no-sendfile",
        action="store_true",
        help="the servers write each stream's chunks instead of sending it by sendfile",
    )
    args = ap.parse_args(argv)
    if min(args.repeats, args.servers, args.events_per_write) < 1 or args.workers < 2:
        ap.error(
            "--workers must be at least 2; --repeats, --servers and --events-per-write at least 1"
        )
    print(
        f"eval of {args.problems} problems x {args.budget} traces x {args.tokens:,} tokens"
        f" against {args.servers} replay server(s) ({args.events_per_write} event(s) per"
        f" write{', written' if args.no_sendfile else ', by sendfile'}); 1 and {args.workers}"
        f" workers alternate, {args.repeats} run(s) each"
    )
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        sendfile = not args.no_sendfile
        servers = [ReplayServer(args.events_per_write, sendfile) for _ in range(args.servers)]
        for server in servers:
            stack.callback(server.close)
        data = Path(tmp) / "problems.jsonl"
        write_dataset(data, args.problems)
        runs = []
        for rep in range(args.repeats):
            for workers in (1, args.workers):
                out = Path(tmp) / f"run-{rep}-{workers}"
                runs.append(run_one(args, servers, data, out, workers))
        report(runs, args.workers)
        cores_used(runs, args.workers)


if __name__ == "__main__":
    main()
