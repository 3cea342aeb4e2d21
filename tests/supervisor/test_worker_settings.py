"""What a worker process is given: its share of the limits, its log fields, the
usable cores of ``--workers auto``, and a supervisor free of grpc."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from nexus_grpc.cli.serve import per_worker
from nexus_grpc.config import (
    Config,
    HttpConfig,
    LimitsConfig,
    PluginsConfig,
    ServerConfig,
    cgroup_cpu_quota,
    usable_cpus,
)
from nexus_grpc.logs import configure_logging


def test_per_process_limits_are_split_among_the_workers() -> None:
    config = Config(
        server=ServerConfig(grpc_address="127.0.0.1:0", workers=4),
        http=HttpConfig(address=""),
        limits=LimitsConfig(
            max_concurrent_calls=101, max_streams=1000, max_streams_per_principal=3
        ),
    )
    limits = config.limits
    worker = per_worker(config)
    assert worker.limits.max_concurrent_calls == 26  # ceil(101 / 4)
    assert worker.limits.max_streams == 250
    assert worker.limits.max_streams_per_principal == 1
    assert worker.server.reuse_port is True and worker.server.workers == 1
    # 0 stays "no limit".
    unlimited = replace(config, limits=replace(limits, max_concurrent_calls=0))
    assert per_worker(unlimited).limits.max_concurrent_calls == 0


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_a_workers_log_lines_carry_its_pid_and_slot(fmt: str) -> None:
    out = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging("info", fmt, out, worker=3)
        logging.getLogger("nexus.test").info("hello")
        logging.getLogger("nexus.test").info("other", extra={"pid": 12})
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    first, second = out.getvalue().splitlines()
    if fmt == "json":
        assert json.loads(first)["pid"] == os.getpid() and json.loads(first)["worker"] == 3
        assert json.loads(second)["pid"] == 12
    else:
        assert f"pid={os.getpid()}" in first and "worker=3" in first
        assert "pid=12" in second


def _cgroup(tmp_path: Path, line: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (tmp_path / "self").write_text(line + "\n")
    return root, tmp_path / "self"


def test_a_cgroup_v2_quota_in_the_processs_group(tmp_path: Path) -> None:
    root, self_cgroup = _cgroup(
        tmp_path, "0::/kubepods/pod1/c1", {"kubepods/pod1/c1/cpu.max": "150000 100000\n"}
    )
    assert cgroup_cpu_quota(root, self_cgroup) == 2  # 1.5 CPUs: ceil
    assert usable_cpus(root, self_cgroup) == min(2, len(os.sched_getaffinity(0)))


def test_a_cgroup_v2_quota_of_an_ancestor_applies(tmp_path: Path) -> None:
    root, self_cgroup = _cgroup(
        tmp_path,
        "0::/a/b",
        {"a/b/cpu.max": "max 100000\n", "a/cpu.max": "100000 100000\n", "cpu.max": "max\n"},
    )
    assert cgroup_cpu_quota(root, self_cgroup) == 1


def test_a_container_sees_its_group_at_the_root(tmp_path: Path) -> None:
    # In a cgroup namespace /proc says "/" (or a host path absent here): the root counts.
    root, self_cgroup = _cgroup(tmp_path, "0::/../host/path", {"cpu.max": "300000 100000"})
    assert cgroup_cpu_quota(root, self_cgroup) == 3


def test_no_quota_means_the_cores(tmp_path: Path) -> None:
    root, self_cgroup = _cgroup(tmp_path, "0::/", {"cpu.max": "max 100000"})
    assert cgroup_cpu_quota(root, self_cgroup) is None
    assert usable_cpus(root, self_cgroup) == len(os.sched_getaffinity(0))
    assert cgroup_cpu_quota(tmp_path / "absent", tmp_path / "absent-self") is None


def test_a_cgroup_v1_quota(tmp_path: Path) -> None:
    root, self_cgroup = _cgroup(
        tmp_path,
        "11:memory:/x\n4:cpu,cpuacct:/docker/abc",
        {
            "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "250000\n",
            "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
        },
    )
    assert cgroup_cpu_quota(root, self_cgroup) == 3
    unlimited, self_cgroup = _cgroup(
        tmp_path / "u",
        "4:cpu:/",
        {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"},
    )
    assert cgroup_cpu_quota(unlimited, self_cgroup) is None


def test_the_supervisors_modules_do_not_import_grpc() -> None:
    code = (
        "import sys\n"
        "import nexus_grpc.supervisor.supervisor, nexus_grpc.supervisor.ports\n"
        "import nexus_grpc.supervisor.metrics, nexus_grpc.supervisor.channel\n"
        "print(sorted(m for m in sys.modules if m == 'grpc' or m.startswith('grpc.')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
    # The public names are still there, imported on first use.
    import nexus_grpc

    assert nexus_grpc.StatusError.__name__ == "StatusError"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        nexus_grpc.nope  # noqa: B018


@pytest.mark.asyncio
async def test_sigterm_stops_a_host_still_reporting_ready(tmp_path: Path) -> None:
    """A worker waiting to report ready (its health not SERVING yet) still stops on
    SIGTERM instead of waiting to be killed."""
    import asyncio
    import signal

    from nexus_grpc.host import Host

    config = Config(
        data_dir=str(tmp_path),
        server=ServerConfig(grpc_address="127.0.0.1:0", shutdown_delay=0.0),
        http=HttpConfig(address=""),
        plugins=PluginsConfig(dirs=[], entry_points=False),
    )
    reporting = asyncio.Event()
    cancelled = asyncio.Event()

    async def never_ready() -> None:
        reporting.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    running = asyncio.create_task(Host(config).run_until_signalled(on_started=never_ready))
    await asyncio.wait_for(reporting.wait(), 30)
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(running, 30)
    assert cancelled.is_set()
