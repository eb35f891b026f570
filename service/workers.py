"""Several ``scalingnote serve`` processes on one port, each with its own ``SO_REUSEPORT`` listening socket.

Uvicorn's supervisor hands every worker one shared socket: whichever worker wakes first accepts a whole burst
of new connections, and their keep-alive requests stay on it while the other worker idles. With a socket per
worker the kernel spreads new connections over the workers by hash. With ``pin``, each worker (and every
thread of it) runs on its own share of the CPUs the server may use, so that the scheduler does not move a
worker's event loop and inference thread between cores, or put both workers on one. The supervisor
(restarts, signals, health checks) stays uvicorn's.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

from uvicorn import Config
from uvicorn.supervisors import Multiprocess


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A bound, inheritable TCP socket that other sockets of this user may bind to the same address too."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def cpu_slots(workers: int, cpus: set[int]) -> list[set[int]]:
    """``cpus`` shared out over ``workers``: contiguous, near-equal shares, or one CPU each, in turn, when there
    are fewer CPUs than workers."""
    ordered = sorted(cpus)
    if workers >= len(ordered):
        return [{ordered[i % len(ordered)]} for i in range(workers)]
    size, extra = divmod(len(ordered), workers)
    bounds = [i * size + min(i, extra) for i in range(workers + 1)]
    return [set(ordered[bounds[i] : bounds[i + 1]]) for i in range(workers)]


def pin_process(pid: int, cpus: set[int]) -> None:
    """Run every thread of process ``pid`` on ``cpus``; threads it starts later inherit that. The threads are
    listed again until none is new, in case one started while the others were pinned."""
    done: set[int] = set()
    while todo := {int(tid) for tid in os.listdir(Path("/proc", str(pid), "task"))} - done:
        for tid in sorted(todo, key=lambda t: t != pid):  # the main thread first: it starts the others
            with contextlib.suppress(ProcessLookupError):  # the thread ended meanwhile
                os.sched_setaffinity(tid, cpus)
        done |= todo


class ReusePortWorkers(Multiprocess):
    """Uvicorn's ``Multiprocess`` where each worker it starts (or restarts) gets a socket of its own.

    The parent closes its copy once the worker has started, so a dead worker's socket leaves the port's group
    with it instead of taking connections that nobody accepts. ``anchor`` holds the port from the start, not
    listening (the kernel hands connections only to listening sockets), so that a port of 0 resolves once and
    no other server takes the port between restarts. With ``pin``, worker ``i`` (a restarted one too) runs on
    share ``i`` of :func:`cpu_slots`."""

    def __init__(self, config: Config, pin: bool = False) -> None:
        self._handed: list[socket.socket] = []
        self.slots = cpu_slots(config.workers, os.sched_getaffinity(0)) if pin else None
        self._pinned: set[int] = set()
        # a probe without SO_REUSEPORT fails if the port is taken, also by another server's SO_REUSEPORT sockets
        with socket.create_server((config.host, config.port), family=_family(config.host)) as probe:
            config.port = probe.getsockname()[1]
        self.anchor = reuse_port_socket(config.host, config.port)
        super().__init__(config, sockets=[])

    @property
    def sockets(self) -> list[socket.socket]:
        sock = reuse_port_socket(self.config.host, self.config.port)
        self._handed.append(sock)
        return [sock]

    @sockets.setter
    def sockets(self, _: list[socket.socket]) -> None:
        """Uvicorn stores its shared socket list here; each worker is handed a socket of its own instead."""

    def _started(self) -> None:
        """After workers were started: close the parent's copies of their sockets and pin the new ones."""
        while self._handed:
            self._handed.pop().close()
        if self.slots is None:
            return
        for idx, process in enumerate(self.processes):
            if process.pid is None or process.pid in self._pinned:
                continue
            try:
                pin_process(process.pid, self.slots[idx])
            except FileNotFoundError:  # it exited meanwhile; the next health check restarts it
                continue
            self._pinned.add(process.pid)
        self._pinned &= {process.pid for process in self.processes}

    def init_processes(self) -> None:
        super().init_processes()
        self._started()

    def restart_all(self) -> None:
        super().restart_all()
        self._started()

    def keep_subprocess_alive(self) -> None:
        super().keep_subprocess_alive()
        self._started()

    def run(self) -> None:
        try:
            super().run()
        finally:
            self.anchor.close()
