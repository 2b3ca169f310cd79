"""An HTTP proxy in front of the test S3 server that fails chosen requests with a 500.

Real S3 answers a small share of requests with ``500 InternalError`` or ``503 SlowDown`` and
expects clients to retry them. The proxy forwards every request unchanged (the ``Host``
header included, so signatures stay valid) to the SeaweedFS server, except the ones a rule
picks: those get S3's ``InternalError`` reply without reaching the server.

    proxy = FlakyProxy(server.endpoint, fail=lambda method, path, n: method == "PUT" and n % 3 == 1)
    proxy.start(); ...; proxy.stop()

``n`` counts the requests (from 1) of that method whose path matched so far; ``failed`` counts
the injected failures.
"""

from __future__ import annotations

import collections
import http.client
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

ERROR = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
         b'<Message>We encountered an internal error. Please try again.</Message></Error>')
#: Hop-by-hop and client-side headers that are not forwarded.
_DROP = {"connection", "keep-alive", "expect", "transfer-encoding", "proxy-connection"}


class FlakyProxy:
    """Forward to ``target`` (``http://host:port``); answer 500 where ``fail(method, path, n)``."""

    def __init__(self, target: str, fail: Callable[[str, str, int], bool]) -> None:
        self.target = urllib.parse.urlsplit(target)
        self.fail, self.failed, self.counts = fail, 0, collections.Counter()
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> "FlakyProxy":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _decide(self, method: str, path: str) -> bool:
        with self.lock:
            self.counts[method] += 1
            bad = bool(self.fail(method, path, self.counts[method]))
            self.failed += bad
            return bad

    def _handler(self) -> type:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if proxy._decide(self.command, urllib.parse.unquote(self.path.split("?", 1)[0])):
                    self._reply(500, {"Content-Type": "application/xml"}, ERROR)
                    return
                conn = http.client.HTTPConnection(proxy.target.hostname, proxy.target.port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _DROP}
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    out = {k: v for k, v in resp.getheaders() if k.lower() not in _DROP | {"content-length"}}
                    self._reply(resp.status, out, data)
                finally:
                    conn.close()

            def _reply(self, status: int, headers: dict, data: bytes) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        return Handler
