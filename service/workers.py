"""Several ``scalingnote serve`` processes on one port, each with its own ``SO_REUSEPORT`` listening socket.

Uvicorn's supervisor hands every worker one shared socket: whichever worker wakes first accepts a whole burst
of new connections, and their keep-alive requests stay on it while the other worker idles. With a socket per
worker the kernel spreads new connections over the workers by hash. The supervisor (restarts, signals, health
checks) stays uvicorn's.
"""

from __future__ import annotations

import socket

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


class ReusePortWorkers(Multiprocess):
    """Uvicorn's ``Multiprocess`` where each worker it starts (or restarts) gets a socket of its own.

    The parent closes its copy once the worker has started, so a dead worker's socket leaves the port's group
    with it instead of taking connections that nobody accepts. ``anchor`` holds the port from the start, not
    listening (the kernel hands connections only to listening sockets), so that a port of 0 resolves once and
    no other server takes the port between restarts."""

    def __init__(self, config: Config) -> None:
        self._handed: list[socket.socket] = []
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

    def _close_handed(self) -> None:
        while self._handed:
            self._handed.pop().close()

    def init_processes(self) -> None:
        super().init_processes()
        self._close_handed()

    def restart_all(self) -> None:
        super().restart_all()
        self._close_handed()

    def keep_subprocess_alive(self) -> None:
        super().keep_subprocess_alive()
        self._close_handed()

    def run(self) -> None:
        try:
            super().run()
        finally:
            self.anchor.close()
