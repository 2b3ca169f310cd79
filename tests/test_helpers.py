"""The cross-cutting helpers (issue 10): one retry policy, one CPU count, one place for the S3
endpoint and ``storage_options``, progress bars that leave the user's tqdm alone."""

from __future__ import annotations

import os
import re
import threading

import pytest

from conftest import run_cli
from shardgen import retry
from shardgen.cpus import cgroup_cpu_limit, usable_cpus
from shardgen.errors import UsageError
from shardgen.storage import parse_storage_options, s3_endpoint, storage_options_for


# ----------------------------------------------------------------------------- retry

class _Flaky:
    """Fails with ``errors`` in turn, then returns ``"ok"``."""

    def __init__(self, *errors: BaseException):
        self.errors, self.calls = list(errors), 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def test_transient_errors_are_retried_with_doubling_capped_waits(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr(retry.time, "sleep", slept.append)
    seen: list[tuple[str, int, float]] = []
    fn = _Flaky(*[ConnectionResetError("reset")] * 4)
    policy = retry.RetryPolicy.with_retries(5, backoff_s=0.5, max_wait_s=2.0)
    assert retry.call(fn, policy, on_retry=lambda e, n, w: seen.append((type(e).__name__, n, w))) == "ok"
    assert fn.calls == 5
    assert slept == [0.5, 1.0, 2.0, 2.0]
    assert seen == [("ConnectionResetError", n, w) for n, w in zip(range(1, 5), slept)]


def test_the_last_error_comes_out_when_the_retries_run_out(monkeypatch):
    monkeypatch.setattr(retry.time, "sleep", lambda s: None)
    fn = _Flaky(*[TimeoutError(f"try {i}") for i in range(10)])
    with pytest.raises(TimeoutError, match="try 2"):
        retry.call(fn, retry.RetryPolicy.with_retries(2, 1.0, 30.0))
    assert fn.calls == 3


@pytest.mark.parametrize("error", [PermissionError("denied"), FileNotFoundError("gone"), ValueError("bad"),
                                   UsageError("bad flag"), type("NoCredentialsError", (Exception,), {})()])
def test_errors_a_retry_cannot_fix_are_raised_at_once(error, monkeypatch):
    monkeypatch.setattr(retry.time, "sleep", lambda s: pytest.fail("waited"))
    fn = _Flaky(error)
    with pytest.raises(type(error)):
        retry.call(fn, retry.RetryPolicy.with_retries(5, 1.0, 30.0))
    assert fn.calls == 1 and not retry.is_transient(error)


def test_jitter_keeps_each_wait_between_half_and_all_of_the_backoff():
    policy = retry.RetryPolicy.with_retries(5, backoff_s=1.0, max_wait_s=30.0, jitter=True)
    for k, full in enumerate([1, 2, 4, 8, 16, 30, 30]):
        waits = {policy.wait_s(k) for _ in range(50)}
        assert all(full / 2 <= w < full for w in waits) and len(waits) > 1
    assert policy.attempts == 6 and policy.retries == 5
    assert retry.RetryPolicy.with_retries(-3, 1.0, 1.0).attempts == 1


def test_unreachable_endpoints_are_recognised_by_class_name():
    assert retry.is_unreachable(ConnectionRefusedError())
    assert retry.is_unreachable(type("EndpointConnectionError", (OSError,), {})())
    assert not retry.is_unreachable(TimeoutError())


# ----------------------------------------------------------------------------- CPUs

def _cgroup(tmp_path, proc: str, files: dict[str, str]):
    (tmp_path / "proc").write_text(proc)
    for rel, text in files.items():
        p = tmp_path / "fs" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return str(tmp_path / "proc"), str(tmp_path / "fs")


def test_cgroup_v2_quota_is_the_smallest_along_the_path(tmp_path):
    proc, fs = _cgroup(tmp_path, "0::/jobs/job7\n", {"jobs/cpu.max": "150000 100000\n",
                                                      "jobs/job7/cpu.max": "max 100000\n"})
    assert cgroup_cpu_limit(proc, fs) == 1.5


def test_cgroup_v1_quota_and_no_limit(tmp_path):
    proc, fs = _cgroup(tmp_path, "4:memory:/x\n3:cpu,cpuacct:/docker/abc\n",
                       {"cpu/docker/abc/cpu.cfs_quota_us": "250000\n", "cpu/docker/abc/cpu.cfs_period_us": "100000\n"})
    assert cgroup_cpu_limit(proc, fs) == 2.5
    proc, fs = _cgroup(tmp_path, "0::/\n", {"cpu.max": "max 100000\n"})
    assert cgroup_cpu_limit(proc, fs) is None
    assert cgroup_cpu_limit(str(tmp_path / "missing"), fs) is None


def test_usable_cpus_is_at_most_the_affinity_mask():
    assert 1 <= usable_cpus() <= len(os.sched_getaffinity(0))


# ----------------------------------------------------------------------------- endpoint and storage_options

def test_explicit_endpoint_settings_beat_the_environment(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://env-generic")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://env-s3")
    url = "s3://bucket/prefix"
    assert s3_endpoint(storage_options_for(url)) == "http://env-s3"
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    assert s3_endpoint(storage_options_for(url)) == "http://env-generic"
    opts = storage_options_for(url, {"endpoint_url": "http://top", "anon": True})
    assert opts == {"anon": True, "client_kwargs": {"endpoint_url": "http://top"}}
    given = {"client_kwargs": {"region_name": "r", "endpoint_url": "http://ck"}, "endpoint_url": "http://top"}
    assert s3_endpoint(storage_options_for(url, given)) == "http://ck"
    assert given["client_kwargs"]["endpoint_url"] == "http://ck" and "endpoint_url" in given  # not modified
    assert s3_endpoint(storage_options_for(url, given, endpoint_url="http://flag")) == "http://flag"
    # client_kwargs without an endpoint keep the environment's endpoint
    assert storage_options_for(url, {"client_kwargs": {"region_name": "r"}}) == {
        "client_kwargs": {"region_name": "r", "endpoint_url": "http://env-generic"}}
    assert storage_options_for("/some/folder", {"x": 1}) == {"x": 1}
    with pytest.raises(UsageError, match="applies to s3://"):
        storage_options_for("gs://b/p", None, endpoint_url="http://flag")


def test_storage_options_json():
    assert parse_storage_options('{"profile": "lab"}') == {"profile": "lab"}
    assert parse_storage_options(None) is None and parse_storage_options({"a": 1}) == {"a": 1}
    for bad in ("{not json", "[1, 2]", "7"):
        with pytest.raises(UsageError, match="expected a JSON object"):
            parse_storage_options(bad)


@pytest.mark.parametrize("value", ["{not json", "[1,2]"])
def test_cli_storage_options_that_are_not_a_json_object(small_build, tmp_path, value):
    p = run_cli("upload", small_build, tmp_path / "dest", "--storage_options", value, "--progress", "false")
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.strip() == "shardgen upload: error: --storage_options: expected a JSON object like " \
                               "'{\"profile\": \"lab\"}'", p.stderr
    assert not (tmp_path / "dest").exists()


# ----------------------------------------------------------------------------- progress

def test_progress_bars_leave_the_users_tqdm_settings_and_start_no_thread(sample_src, tmp_path, capsys):
    import tqdm

    from shardgen.build.run import BuildConfig, build
    from shardgen.progress import bar

    before = tqdm.tqdm.monitor_interval
    with bar(3, "x", "img", enabled=False) as b:
        b.update(3)
    build(BuildConfig(src=str(sample_src), out=str(tmp_path / "out"), size=32, workers=2), progress=True)
    assert tqdm.tqdm.monitor_interval == before
    assert not [t for t in threading.enumerate() if t.name == "tqdm_monitor"]
    assert "convert" in capsys.readouterr().err


def test_one_table_says_what_each_storage_protocol_can_do():
    """Object stores have flat keys and whole-object PUTs; a local or memory filesystem has
    folders and needs a temporary name; Data Lake Gen1 has folders (upload makes them)."""
    import fsspec

    from shardgen.storage import capabilities
    from shardgen.storage.io import put_atomic

    s3 = capabilities(fsspec.filesystem("s3", anon=True))
    assert (s3.folders, s3.atomic_put, s3.local) == (False, True, False)
    local = capabilities(fsspec.filesystem("file"))
    assert (local.folders, local.atomic_put, local.local) == (True, False, True)
    mem = fsspec.filesystem("memory")
    assert capabilities(mem).atomic_put is False
    put_atomic(mem, "/t/x.json", b"{}")  # through a temporary, renamed: nothing else left
    assert mem.cat_file("/t/x.json") == b"{}" and mem.ls("/t", detail=False) == ["/t/x.json"]

    class Adl:
        protocol = ("adl",)

    assert capabilities(Adl()).folders is True and capabilities(Adl()).atomic_put is False


def test_one_target_reader_for_every_reader_of_a_build():
    """format.read_target is what the loaders, verify, diff and the exports read targets with:
    the writer's bytes read back; anything else a LabelError with the reason."""
    from shardgen.format import LabelError, encode_cls, encode_multihot, read_target

    assert read_target(encode_cls(3), 4) == 3 and read_target(b"3\n", 4) == 3
    assert read_target(encode_multihot([0, 2], 3), 3, multilabel=True) == (0, 2)
    bad = {b"4": "label 4 out of range (0..3)", b"-1": "not a decimal class index", b" 3": "not a decimal",
           b"9" * 5000: "not a decimal", b"\xff": "not a decimal", None: "no .cls member"}
    for raw, why in bad.items():
        with pytest.raises(LabelError, match=re.escape(why)):
            read_target(raw, 4)
    with pytest.raises(LabelError, match=r"\.labels\.npy: not a float32"):
        read_target(encode_multihot([0], 3), 4, multilabel=True)
