"""`deepconf serve --workers N`: N server processes accepting on one listening socket.

One process decodes, scores and votes every upstream token of every solve on one core; at
fleet scale that core, not the GPUs, sets the pace. With --workers N the parent binds the
port (a bad host or a port in use fails before any worker starts) and starts N workers,
each the same `deepconf serve` command given `--listen-fd FD`, the socket it inherits, and
its share of --max-concurrent-solves. Each new connection goes to whichever worker accepts
it first: a busy worker's event loop comes round to accept less often, so the idle ones
take more. A worker is a whole server (its own event loop, upstream pool, connection
guard and request log lines, on the shared stderr); workers share nothing else.

- Limits: --max-concurrent-solves stays one server-wide limit, split as eval's trace limit
  is (floor(L/N), one more for the first L mod N; N > L is refused). A request that lands
  on a worker whose share is busy gets 429 + Retry-After while another may have room; the
  openai client retries it. --max-connections and --header-timeout are per process (file
  descriptors are), so every worker gets them as given.
- Stopping: Ctrl-C or SIGTERM stops every worker (uvicorn's graceful shutdown, SIGKILL
  after a grace). A worker that exits on its own stops the others; the command then exits 1
  naming it, or 0 if it exited cleanly. A parent killed outright leaves no worker behind
  (deepconf.child_processes.die_with_parent).

    serve_with_workers(ctx, guard, "0.0.0.0", 8080, count=4, max_concurrent_solves=32)
"""

from __future__ import annotations

import logging
import subprocess
from typing import Any

from deepconf.child_processes import (
    exit_described,
    given_flags,
    start_child,
    stop_children,
    terminate_as_interrupt,
    wait_for_an_exit,
)
from deepconf.errors import ConfigError
from deepconf.serve.connections import BACKLOG, ConnectionGuard

log = logging.getLogger("deepconf.serve")

# Flags the parent sets per worker; every other flag given passes through unchanged.
PER_WORKER = ("workers", "listen_fd", "max_concurrent_solves")
POLL_S = 0.2  # the longest the parent waits between looks (an exit wakes it at once)


def solve_shares(limit: int, count: int) -> list[int]:
    """Each worker's share of --max-concurrent-solves: they sum to `limit`, none is 0."""
    if count < 1:
        raise ConfigError(f"--workers must be at least 1, got {count}")
    if count > limit:
        raise ConfigError(
            f"--workers {count} is more than --max-concurrent-solves {limit}: the limit is"
            " shared by the workers and each runs at least one solve; raise"
            " --max-concurrent-solves or lower --workers"
        )
    base, extra = divmod(limit, count)
    return [base + (i < extra) for i in range(count)]


def serve_with_workers(
    ctx: Any,
    guard: ConnectionGuard,
    host: str,
    port: int,
    count: int,
    max_concurrent_solves: int,
) -> None:
    """Bind host:port, run `count` workers on it until interrupted or one exits. Raises
    ConfigError when a worker failed (after stopping the others)."""
    shares = solve_shares(max_concurrent_solves, count)
    try:
        sock = guard.listen(host, port)
        sock.listen(BACKLOG)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port} ({exc}): choose another --port") from exc
    fd = sock.fileno()
    argv = given_flags(ctx, skip=PER_WORKER)
    procs: list[subprocess.Popen[bytes]] = []
    with terminate_as_interrupt():
        try:
            for share in shares:
                own = ["--max-concurrent-solves", str(share), "--listen-fd", str(fd)]
                procs.append(start_child(["serve", *argv, *own], pass_fds=(fd,)))
            sock.close()  # the workers hold it; the parent never accepts
            log.info("listening on http://%s:%d with %d workers", host, port, count)
            _watch(procs)
        except KeyboardInterrupt:
            pass  # Ctrl-C or SIGTERM: a normal stop
        finally:
            sock.close()
            stop_children(procs)


def _watch(procs: list[subprocess.Popen[bytes]]) -> None:
    """Return when a worker exited 0; raise ConfigError when one failed."""
    while True:
        for i, proc in enumerate(procs, start=1):
            code = proc.poll()
            if code is None:
                continue
            if code == 0:
                return
            raise ConfigError(
                f"serve worker {i}/{len(procs)} {exit_described(code)}; the other workers were"
                " stopped (its own messages are above)"
            )
        wait_for_an_exit(procs, POLL_S)
