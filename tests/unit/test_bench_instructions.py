"""benchmarks.instructions: reading callgrind's dumps and taking the idle work out."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.instructions import Counted, dump_total, h2load_problem, net_per_request
from benchmarks.run import BenchError


def _dump(path: Path, label: str, total: int, key: str = "summary") -> None:
    # The header callgrind writes for `callgrind_control -d <label>`, shortened.
    path.write_text(
        "# callgrind format\nversion: 1\ncreator: callgrind-3.19.0\n"
        f"pid: 17481\ncmd: nexus serve\npart: 3\n\ndesc: I1 cache:\n"
        f"desc: Timerange: Basic block 1 - 2\ndesc: Trigger: dump {label}\n\n"
        f"positions: line\nevents: Ir\n{key}: {total}\n\nfn=(1) main\n0 {total}\n"
    )


def test_the_dump_is_found_by_its_label_among_the_parts(tmp_path: Path) -> None:
    out = tmp_path / "nexus.callgrind"
    _dump(tmp_path / "nexus.callgrind.1", "idle", 5_000_000)
    _dump(tmp_path / "nexus.callgrind.2", "grpc_echo", 237_640_000)
    _dump(tmp_path / "nexus.callgrind.3", "grpc_echo_2", 1, key="totals")
    _dump(tmp_path / "bare.callgrind.1", "grpc_echo", 99)  # another server's dump

    assert dump_total(out, "grpc_echo") == 237_640_000
    assert dump_total(out, "idle") == 5_000_000
    assert dump_total(out, "grpc_echo_2") == 1


def test_totals_far_down_a_large_dump_are_found(tmp_path: Path) -> None:
    # No summary in the header: the totals line closes a dump of many cost lines.
    lines = "".join(f"{n} 1\n" for n in range(10_000))
    (tmp_path / "nexus.callgrind.1").write_text(
        f"desc: Trigger: dump rest_create\nevents: Ir\nfn=(1) main\n{lines}totals: 88347864\n"
    )
    assert dump_total(tmp_path / "nexus.callgrind", "rest_create") == 88_347_864


def test_a_missing_dump_or_one_without_totals_is_an_error(tmp_path: Path) -> None:
    out = tmp_path / "nexus.callgrind"
    with pytest.raises(BenchError, match="no callgrind dump named 'rest_get'"):
        dump_total(out, "rest_get")
    (tmp_path / "nexus.callgrind.1").write_text("desc: Trigger: dump rest_get\nevents: Ir\n")
    with pytest.raises(BenchError, match="without totals"):
        dump_total(out, "rest_get")


def test_idle_work_over_the_case_wall_time_is_taken_out_per_request() -> None:
    counted = Counted("grpc_echo", requests=400, instructions=267_440_000, seconds=5.7)
    # 5.19M instructions per second of timers while the 400 requests took 5.7 s.
    assert net_per_request(counted, 5_190_000) == pytest.approx(594_642.5)
    assert net_per_request(counted, 0) == pytest.approx(668_600)
    with pytest.raises(ValueError, match="no requests"):
        net_per_request(Counted("idle", 0, 10, 1.0), 0)


def _h2load_report(done: int, succeeded: int, ok: int, data: int) -> str:
    # h2load 1.52's summary lines, as it prints them for a gRPC run.
    return (
        "finished in 62.40ms, 3204.97 req/s, 212.61KB/s\n"
        f"requests: 200 total, 200 started, {done} done, {succeeded} succeeded, "
        f"{200 - succeeded} failed, 0 errored, 0 timeout\n"
        f"status codes: {ok} 2xx, 0 3xx, 0 4xx, {200 - ok} 5xx\n"
        f"traffic: 13.27KB (13586) total, 900B (900) headers (space savings 94.44%), "
        f"1.95KB ({data}) data\n"
    )


def test_every_request_must_succeed_with_a_whole_response() -> None:
    # 39 bytes: the 5-byte prefix and the 34-byte echo each successful call gets back.
    assert h2load_problem(_h2load_report(200, 200, 200, 200 * 39), 200, 39) is None
    # gRPC errors are HTTP 200 without a message: 40 answers and 160 errors.
    partial = h2load_problem(_h2load_report(200, 200, 200, 40 * 39), 200, 39)
    assert partial is not None and "1560 bytes of responses (at least 7800 expected)" in partial
    assert "199 of 200 requests succeeded" in str(
        h2load_problem(_h2load_report(200, 199, 199, 200 * 39), 200, 39)
    )
    assert "unreadable h2load report" in str(h2load_problem("connect failed", 200, 39))


def test_the_stage_table_prices_each_stage_by_the_best_rounds_difference() -> None:
    from benchmarks.stage_instructions import render

    table = render(
        [
            {"stages": [], "per_call": [479_000.0, 478_000.0]},
            {"stages": ["ForwardedStage", "ObserveStage"], "per_call": [521_500.0, 520_000.0]},
        ]
    ).splitlines()
    assert "(handler alone)" in table[2] and "479.0k, 478.0k" in table[2]
    assert "ObserveStage" in table[3] and table[3].endswith("+42.0k")
