"""`deepconf serve --workers N`: N server processes accepting on one port.

One process decodes, scores and votes every upstream token of every solve on one core; at
fleet scale that core, not the GPUs, sets the pace. With --workers N the parent binds the
port (a bad host or a port in use fails before any worker starts) and starts N workers,
each the same `deepconf serve` command with its share of --max-concurrent-solves. A worker
is a whole server (its own event loop, upstream pool, connection guard and request log
lines, on the shared stderr); workers share nothing else.

- Who gets a connection: on Linux each worker listens on the port itself (`--reuse-port`,
  SO_REUSEPORT) and the kernel hands each new connection to one of them by a hash of its
  addresses and ports, so a client's pooled connections spread over the workers (64 go
  32/32 here). The parent holds the port bound, never listening, so another server cannot
  take it between the workers' binds. Before this the workers accepted from one inherited
  socket, and a connection went to the first worker awake: the openai client's 8 pooled
  connections all went to one worker of two in 2 of 5 runs of `bench serve-workers` (and in
  4 of 5 with one accept per turn), the other core idle. Where SO_REUSEPORT does not
  balance (not Linux) they still share the one socket (`--listen-fd`).

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
import socket
import subprocess
import sys
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
PER_WORKER = ("workers", "listen_fd", "reuse_port", "port", "max_concurrent_solves")
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
    balanced = kernel_balances()
    try:
        if balanced:
            _nobody_listens(host, port)
        sock = guard.listen(host, port, reuse_port=balanced)
        if not balanced:
            sock.listen(BACKLOG)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port} ({exc}): choose another --port") from exc
    port = sock.getsockname()[1]  # --port 0: the port the system chose, the same for all
    argv = given_flags(ctx, skip=PER_WORKER)
    procs: list[subprocess.Popen[bytes]] = []
    with terminate_as_interrupt():
        try:
            for share in shares:
                own = ["--max-concurrent-solves", str(share), "--port", str(port)]
                if balanced:
                    procs.append(start_child(["serve", *argv, *own, "--reuse-port"]))
                else:
                    fd = sock.fileno()
                    own += ["--listen-fd", str(fd)]
                    procs.append(start_child(["serve", *argv, *own], pass_fds=(fd,)))
            if not balanced:
                sock.close()  # the workers hold it; the parent never accepts
            log.info("listening on http://%s:%d with %d workers", host, port, count)
            _watch(procs)
        except KeyboardInterrupt:
            pass  # Ctrl-C or SIGTERM: a normal stop
        finally:
            sock.close()
            stop_children(procs)


def kernel_balances() -> bool:
    """True where each worker can listen on the port itself and the kernel spreads new
    connections over them (SO_REUSEPORT on Linux: by a hash of each connection's addresses
    and ports). Elsewhere SO_REUSEPORT does not balance, and the workers share one socket."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def _nobody_listens(host: str, port: int) -> None:
    """Raise OSError (EADDRINUSE) when anything is bound on host:port. The parent's own
    SO_REUSEPORT bind would succeed beside another server of this user that set it too,
    and the two would then split each other's connections without a word."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))


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
