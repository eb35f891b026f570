"""The C load generator (bench/serve/loadgen.c): its arrival schedules, Retry-After capture and stale keep-alive
resends, against a small raw-socket HTTP/1.1 server on 127.0.0.1."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest


class _Handler(socketserver.BaseRequestHandler):
    """Answers each request on a keep-alive connection with the server's ``status``; after ``per_connection``
    answers it reads the next request and closes without a word (a server's idle timeout racing the send)."""

    def handle(self) -> None:
        srv: _Server = self.server  # type: ignore[assignment]
        buf, answered = b"", 0
        while True:
            while b"\r\n\r\n" not in buf:
                chunk = self.request.recv(65536)
                if not chunk:
                    return
                buf += chunk
            head, _, rest = buf.partition(b"\r\n\r\n")
            length = next(int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length"))
            while len(rest) < length:
                rest += self.request.recv(65536)
            buf = rest[length:]
            if srv.per_connection is not None and answered == srv.per_connection:
                return  # close with the request unanswered
            body = b'{"ok":true}'
            extra = b"Retry-After: 3\r\n" if srv.status == 429 else b""
            reason = b"OK" if srv.status == 200 else b"Too Many Requests"
            self.request.sendall(
                b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\n%s\r\n%s" % (srv.status, reason, len(body), extra, body)
            )
            answered += 1


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # loadgen opens its keep-alive connections all at once
    status = 200
    per_connection: int | None = None


@contextmanager
def http_server(status: int = 200, per_connection: int | None = None) -> Iterator[int]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.status, server.per_connection = status, per_connection
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def bodies(loadgen: ModuleType, tmp_path: Path) -> Path:
    return loadgen.write_bodies(tmp_path / "b.jsonl", [{"query": f"q{i}"} for i in range(10)])


def test_even_arrivals_are_i_over_rate(loadgen: ModuleType, bodies: Path) -> None:
    with http_server() as port:
        run = loadgen.run(loadgen.BINARY, port, bodies, rate=200, duration=1, arrivals="even", connections=8)
    assert len(run.due_s) == 200 and run.failed == 0
    assert np.allclose(run.due_s, np.arange(200) / 200, atol=1e-6)
    assert run.stats()["arrivals"] == "even"


def test_poisson_arrivals_are_seeded_exponential_gaps(loadgen: ModuleType, bodies: Path) -> None:
    with http_server() as port:
        runs = [
            loadgen.run(loadgen.BINARY, port, bodies, rate=1000, duration=2, seed=seed, connections=16)
            for seed in (7, 7, 8)
        ]
    a, b, c = (r.due_s for r in runs)
    assert np.array_equal(a, b) and not np.array_equal(a[: len(c)], c[: len(a)])
    gaps = np.diff(a)
    assert 1700 < len(a) < 2300  # Poisson count: 2000 ± 7 sigma
    assert 0.9e-3 < gaps.mean() < 1.1e-3
    assert 0.9 < gaps.std() / gaps.mean() < 1.1  # exponential: the coefficient of variation is 1 (even: 0)
    assert all(r.failed == 0 for r in runs) and runs[0].stats()["arrivals"] == "poisson"


def test_burst_arrivals_come_in_groups_at_the_average_rate(loadgen: ModuleType, bodies: Path) -> None:
    with http_server() as port:
        run = loadgen.run(loadgen.BINARY, port, bodies, rate=300, duration=1, arrivals="burst", burst=30)
    assert len(run.due_s) == 300 and run.failed == 0
    groups = run.due_s.reshape(10, 30)
    assert np.all(groups == groups[:, :1]) and np.allclose(groups[:, 0], np.arange(10) * 0.1, atol=1e-6)
    assert run.stats()["burst"] == 30


def test_retry_after_is_recorded_per_request(loadgen: ModuleType, bodies: Path) -> None:
    with http_server(status=429) as port:
        run = loadgen.run(loadgen.BINARY, port, bodies, rate=100, duration=0.5, arrivals="even")
    assert set(run.status) == {429} and set(run.retry_after) == {3}
    with http_server() as port:
        ok = loadgen.run(loadgen.BINARY, port, bodies, rate=100, duration=0.5, arrivals="even")
    assert set(ok.retry_after) == {-1}


def test_a_request_on_a_connection_the_server_closed_is_sent_once_more(loadgen: ModuleType, bodies: Path) -> None:
    with http_server(per_connection=1) as port:
        run = loadgen.run(loadgen.BINARY, port, bodies, rate=100, duration=1, arrivals="even", connections=2)
    assert run.failed == 0 and run.summary["stale_resends"] > 0, run.summary


def test_a_bad_arrivals_mode_is_refused(loadgen: ModuleType, bodies: Path) -> None:
    with socket.socket() as s, pytest.raises(RuntimeError, match="usage"):
        s.bind(("127.0.0.1", 0))
        loadgen.run(loadgen.BINARY, s.getsockname()[1], bodies, rate=10, duration=1, arrivals="uniform")
