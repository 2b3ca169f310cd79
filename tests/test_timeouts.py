"""Issue 11, "no hang on storage": a server that accepts connections and never answers
ends in a clear error within a bounded time, for the loaders and the CLI; explicit
storage_options beat the timeout defaults; the retry policy's deadline bounds retries."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from conftest import run_cli

from loaders import make_loader
from shardgen import retry
from shardgen.errors import UsageError
from shardgen.storage import DEFAULT_TIMEOUT_S, filesystem, timeout_options


class FrozenServer:
    """Accepts TCP connections on a free loopback port, reads what comes, never replies."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            c.settimeout(0.2)
            self.conns.append(c)
            for c in list(self.conns):
                try:
                    c.recv(65536)
                except OSError:
                    pass

    def close(self):
        self._stop.set()
        self._thread.join(5)
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.fixture
def frozen():
    srv = FrozenServer()
    yield srv
    srv.close()


def test_make_loader_against_a_frozen_server_names_the_manifest_within_bounded_time(frozen):
    url = f"http://127.0.0.1:{frozen.port}/build"
    t0 = time.monotonic()
    with pytest.raises(UsageError) as e:
        make_loader(url, num_workers=0, io_timeout=2)
    elapsed = time.monotonic() - t0
    msg = str(e.value)
    assert f"{url}/manifest.json" in msg and "did not answer within the 2 s timeout" in msg, msg
    assert 2 <= elapsed < 15, elapsed  # HEAD then GET, each one timeout
    assert frozen.conns  # it really connected


def test_cli_info_against_a_frozen_server_is_one_line_no_traceback(frozen):
    url = f"http://127.0.0.1:{frozen.port}/build"
    t0 = time.monotonic()
    p = run_cli("info", url, "--timeout", "1", timeout=60)
    elapsed = time.monotonic() - t0
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert f"{url}/manifest.json" in lines[0] and "timeout" in lines[0], lines
    assert elapsed < 30, elapsed


def test_cli_info_rejects_a_bad_timeout():
    p = run_cli("info", "http://127.0.0.1:9/build", "--timeout", "-1", timeout=60)
    assert p.returncode == 2 and "--timeout must be a positive number" in p.stderr, p.stderr


def test_timeout_defaults_and_explicit_options_win():
    import aiohttp

    opts = timeout_options("http://h/b", None, DEFAULT_TIMEOUT_S)
    t = opts["client_kwargs"]["timeout"]
    assert (t.sock_connect, t.sock_read, t.total) == (30.0, 30.0, None)
    mine = aiohttp.ClientTimeout(total=5)
    opts = timeout_options("https://h/b", {"client_kwargs": {"timeout": mine, "headers": {"a": "b"}}}, 2)
    assert opts["client_kwargs"] == {"timeout": mine, "headers": {"a": "b"}}
    opts = timeout_options("s3://b/k", {"config_kwargs": {"read_timeout": 99}}, 2)
    assert opts["config_kwargs"] == {"read_timeout": 99, "connect_timeout": 2, "retries": {"max_attempts": 0}}
    assert timeout_options("/local/dir", {"x": 1}, 2) == {"x": 1}
    assert "client_kwargs" not in timeout_options("http://h/b", None, None)
    fs, _ = filesystem("http://127.0.0.1:1/b", timeout=3)
    assert fs.client_kwargs["timeout"].sock_read == 3


def test_retry_deadline_bounds_the_total_and_timeouts_are_transient():
    calls = []

    def slow_timeout():
        calls.append(time.monotonic())
        time.sleep(0.3)
        raise TimeoutError("read timed out")

    policy = retry.RetryPolicy.with_retries(10, 0.05, 1.0, deadline_s=0.6)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        retry.call(slow_timeout, policy)
    assert len(calls) == 2 and time.monotonic() - t0 < 1.2
    wrapped = FileNotFoundError("http://h/x")
    wrapped.__cause__ = TimeoutError()
    assert retry.is_transient(TimeoutError()) and retry.is_transient(wrapped)
    assert not retry.is_transient(FileNotFoundError("gone"))
