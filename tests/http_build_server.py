"""A loopback HTTP/1.1 file server for the loader tests, run as its own process.

    python tests/http_build_server.py ROOT STATE_DIR [--no-ranges]

Serves ``ROOT`` on 127.0.0.1 (a free port, printed as the first line of stdout), with
Range support unless ``--no-ranges``. Faults come from ``STATE_DIR/faults.json``
(re-read on every request): ``{"cut_once": [relpath, ...], "refuse": [relpath, ...],
"freeze": [relpath, ...]}``; a ``cut_once`` path has its first GET cut off a third of the
way into the body (the connection just closes), a ``refuse`` path is answered 503, a
``freeze`` path is never answered (HEAD or GET: the request is read, then nothing). Every GET is appended to
``STATE_DIR/log.jsonl`` as ``{"path", "range", "cut"}``.

A separate process, like a real server: DataLoader workers forked by the test never
share its sockets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

__all__ = ["BuildServer"]


class BuildServer:
    """Start/stop the server process and talk to it through its state folder."""

    def __init__(self, root: Path, state: Path, ranges: bool = True):
        self.root, self.state = Path(root), Path(state)
        self.state.mkdir(parents=True, exist_ok=True)
        self.set_faults()
        args = [sys.executable, __file__, str(self.root), str(self.state)] + ([] if ranges else ["--no-ranges"])
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        port = int(self.proc.stdout.readline().strip())
        self.url = f"http://127.0.0.1:{port}"

    def set_faults(self, cut_once=(), refuse=(), freeze=()) -> None:
        tmp = self.state / "faults.json.tmp"
        tmp.write_text(json.dumps({"cut_once": sorted(cut_once), "refuse": sorted(refuse),
                                   "freeze": sorted(freeze)}))
        os.replace(tmp, self.state / "faults.json")

    def log(self) -> list[dict]:
        p = self.state / "log.jsonl"
        return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []

    def shard_gets(self) -> list[dict]:
        return [e for e in self.log() if e["path"].endswith(".tar")]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def serve(root: Path, state: Path, ranges: bool) -> None:
    lock = threading.Lock()
    cut_done: set[str] = set()

    def faults() -> dict:
        try:
            return json.loads((state / "faults.json").read_text())
        except (OSError, ValueError):
            return {}

    def record(entry: dict) -> None:
        with lock, open(state / "log.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _file(self):
            rel = unquote(self.path.split("?", 1)[0]).lstrip("/")
            p = root / rel
            return rel, (p.read_bytes() if p.is_file() else None)

        def _freeze(self, rel: str) -> None:
            if rel in faults().get("freeze", ()):
                while True:  # a server that accepted the request and hangs (ends with the process)
                    time.sleep(60)

        def do_HEAD(self):
            rel, data = self._file()
            self._freeze(rel)
            if data is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            if ranges:
                self.send_header("Accept-Ranges", "bytes")
            self.end_headers()

        def do_GET(self):
            rel, data = self._file()
            rng = self.headers.get("Range")
            f = faults()
            cut = rel in f.get("cut_once", ()) and rel not in cut_done
            record({"path": rel, "range": rng, "cut": cut})
            self._freeze(rel)
            if data is None:
                self.send_error(404)
                return
            if rel in f.get("refuse", ()):
                self.send_error(503, "refused by the test")
                return
            start, end, status = 0, len(data), 200
            if rng and ranges:
                a, _, b = rng.split("=", 1)[1].partition("-")
                start, end, status = int(a), min(len(data), int(b) + 1 if b else len(data)), 206
            body = data[start:end]
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
            self.end_headers()
            if cut:
                cut_done.add(rel)
                self.wfile.write(body[: max(1, len(body) // 3)])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    print(httpd.server_address[1], flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    serve(Path(sys.argv[1]), Path(sys.argv[2]), "--no-ranges" not in sys.argv[3:])
