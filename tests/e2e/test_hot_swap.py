"""A real `nexus serve` under steady load on gRPC, REST and a server stream while its
plugin is reloaded 20 times with code changes, unloaded and loaded back, and then
upgraded to a version whose start hook fails: no call fails, except with
UNIMPLEMENTED / 404 while the plugin is unloaded."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import pytest
from nexus.admin.v1 import admin_pb2, admin_pb2_grpc
from swap.v1 import swap_pb2, swap_pb2_grpc

from tests.e2e.conftest import start_serve
from tests.fixtures.swap import SWAP_STUBS
from tests.hotswap.plugin_source import write_plugin

pytestmark = [pytest.mark.slow]

RELOADS = 20
#: Pause of each load worker between two calls: bounds the load to a few hundred calls/s.
PAUSE = 0.01

CONFIG = """\
[plugins.hot_swap]
enabled = true
drain_timeout = 5.0
start_timeout = 2.0

[limits.rate_classes.default]
rate = 100000.0
burst = 100000.0
"""


@dataclass
class Tally:
    """What the load saw: successes per version, failures, and refusals while unloaded."""

    ok: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    gone: int = 0
    #: True while the plugin is (being) unloaded: UNIMPLEMENTED / 404 are expected.
    unloaded: bool = False

    def missing(self, what: str) -> None:
        if self.unloaded:
            self.gone += 1
        else:
            self.failures.append(what)


async def _grpc_worker(
    stub: swap_pb2_grpc.SwapServiceStub, tally: Tally, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        try:
            reply = await stub.Hello(swap_pb2.HelloRequest(name="load"), timeout=10)
            tally.ok[reply.version] += 1
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                tally.missing(f"grpc {error.code().name}")
            else:
                tally.failures.append(f"grpc {error.code().name}: {error.details()}")
        await asyncio.sleep(PAUSE)


async def _stream_worker(
    stub: swap_pb2_grpc.SwapServiceStub, tally: Tally, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        try:
            call = stub.Count(swap_pb2.CountRequest(n=5, pause_millis=10), timeout=10)
            replies = [reply async for reply in call]
            if [r.value for r in replies] != [1, 2, 3, 4, 5] or len(
                {r.version for r in replies}
            ) != 1:
                tally.failures.append(f"stream answered {replies}")
            else:
                tally.ok[replies[0].version] += 1
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                tally.missing(f"stream {error.code().name}")
            else:
                tally.failures.append(f"stream {error.code().name}: {error.details()}")
        await asyncio.sleep(PAUSE)


async def _rest_worker(web: httpx.AsyncClient, tally: Tally, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            response = await web.get("/v1/swap/hello/load")
        except httpx.HTTPError as error:
            tally.failures.append(f"rest {type(error).__name__}: {error}")
        else:
            if response.status_code == 200:
                tally.ok[response.json()["version"]] += 1
            elif response.status_code == 404:
                tally.missing("rest 404")
            else:
                tally.failures.append(f"rest {response.status_code}: {response.text}")
        await asyncio.sleep(PAUSE)


@pytest.mark.asyncio
async def test_reloads_unload_and_a_failed_upgrade_under_load_drop_no_call(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    write_plugin(plugins, "0")
    config = tmp_path / "nexus.toml"
    config.write_text(CONFIG)
    serve = start_serve(
        tmp_path, SWAP_STUBS, [plugins], argv=("--config", str(config)), NEXUS_LOG__ACCESS="false"
    )
    try:
        channel = grpc.aio.insecure_channel(serve.address)
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        auth = (("authorization", f"Bearer {await asyncio.to_thread(serve.token)}"),)
        stub = swap_pb2_grpc.SwapServiceStub(channel)
        tally, stop = Tally(), asyncio.Event()
        async with httpx.AsyncClient(base_url=f"http://{serve.http_address}", timeout=10) as web:
            workers = [
                *(asyncio.ensure_future(_grpc_worker(stub, tally, stop)) for _ in range(3)),
                *(asyncio.ensure_future(_rest_worker(web, tally, stop)) for _ in range(3)),
                *(asyncio.ensure_future(_stream_worker(stub, tally, stop)) for _ in range(2)),
            ]
            started = time.monotonic()
            try:
                await asyncio.sleep(0.5)
                for number in range(1, RELOADS + 1):
                    write_plugin(plugins, str(number))
                    change = await admin.ReloadPlugin(
                        admin_pb2.ReloadPluginRequest(name="swapper"), metadata=auth, timeout=30
                    )
                    assert change.plugin.version == str(number)
                    await asyncio.sleep(0.2)
                assert tally.failures == [], tally.failures[:5]

                tally.unloaded = True
                await admin.UnloadPlugin(
                    admin_pb2.UnloadPluginRequest(name="swapper"), metadata=auth, timeout=30
                )
                await asyncio.sleep(0.5)
                write_plugin(plugins, "back")
                await admin.LoadPlugin(
                    admin_pb2.LoadPluginRequest(name="swapper"), metadata=auth, timeout=30
                )
                tally.unloaded = False
                await asyncio.sleep(0.5)

                write_plugin(plugins, "broken", start="raise RuntimeError('migration failed')")
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await admin.ReloadPlugin(
                        admin_pb2.ReloadPluginRequest(name="swapper"), metadata=auth, timeout=30
                    )
                assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert "migration failed" in (refused.value.details() or "")
                await asyncio.sleep(0.5)
            finally:
                stop.set()
                await asyncio.gather(*workers)
            elapsed = time.monotonic() - started
        await channel.close()
        calls = sum(tally.ok.values())
        print(f"{calls} calls in {elapsed:.1f}s, {tally.gone} refused while unloaded")
        assert tally.failures == [], tally.failures[:5]
        assert tally.gone > 0, "calls during the unloaded window were refused"
        assert "broken" not in tally.ok and tally.ok["back"] > 0
        assert len([v for v in tally.ok if v.isdigit()]) >= RELOADS // 2
        assert calls / elapsed > 50, f"only {calls} calls in {elapsed:.1f}s"
    finally:
        assert serve.stop() == 0


def test_readme_hot_swap_section_runs_verbatim(tmp_path: Path) -> None:
    """The README's "Change a plugin without restarting", in a copy of examples/greeter."""
    import shutil
    import subprocess

    from tests.e2e.conftest import BIN, REPO, clean_env, require_tool, watch
    from tests.e2e.test_rest_clients import readme_block

    require_tool("grpcurl", BIN / "grpcurl")
    (serve_command,) = readme_block("hot-swap-serve")
    calls = readme_block("hot-swap")
    project = tmp_path / "greeter"
    shutil.copytree(REPO / "examples" / "greeter", project)
    env = {**clean_env(BIN.parent), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    process = subprocess.Popen(
        ["bash", "-c", serve_command + " --grpc-address 127.0.0.1:0 --http-address 127.0.0.1:0"],
        cwd=project,
        env={**env, "NEXUS_LOG__FORMAT": "json"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    serve = watch(process, project / ".nexus")
    try:
        logs = tmp_path / "logs"
        logs.mkdir()
        script = [
            f"{{ {command.replace('127.0.0.1:50051', serve.address)}\n}} "
            f">{logs}/out{i} 2>&1; echo $? >{logs}/rc{i}"
            for i, command in enumerate(calls)
        ]
        subprocess.run(
            ["bash", "-c", "\n".join(script)], cwd=project, env=env, timeout=300, check=True
        )
        results = [
            (int((logs / f"rc{i}").read_text()), (logs / f"out{i}").read_text())
            for i in range(len(calls))
        ]
    finally:
        serve.stop()
    failed = [(c, out[-2000:]) for c, (code, out) in zip(calls, results, strict=True) if code]
    assert failed == []
    outputs = [out for _, out in results]
    assert "Hello, Ada!" in outputs[3]
    assert outputs[5].startswith("reloaded greeter 0.1.0: generation 2")
    assert "Bonjour, Ada!" in outputs[6]
    assert "- service acme.greeter.v1.GreeterService" in outputs[7]
    assert "loaded greeter 0.1.0: generation 3" in outputs[8]
    assert "SERVING" in next(line for line in outputs[9].splitlines() if line.startswith("greeter"))
