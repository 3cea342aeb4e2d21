"""A handler's own error text is bounded on every transport.

``raise StatusError(...)`` with a 20,000-character message: the client gets the
handler's code with a message cut to nexus_grpc.bounded.MESSAGE_LIMIT, over gRPC, REST
and gRPC-Web. ``await context.abort(...)`` is bounded too over REST and gRPC-Web (the
host's call context); over gRPC, grpc.aio sends an abort's status at once, before the
host sees it, so plugins raise StatusError (as the README says).
"""

from __future__ import annotations

import struct

import grpc
import httpx
import pytest
from transcode.v1 import transcode_pb2 as pb

from nexus_grpc.bounded import MESSAGE_LIMIT
from nexus_grpc.testing import RunningHost

HUGE = 20_000
#: The cut message, its marker and percent-encoding of ASCII text: well under this.
BOUND = MESSAGE_LIMIT + 64
INSPECT = "/transcode.v1.TranscodeService/Inspect"
HOW = ["raise", "abort"]


def _request(how: str) -> pb.InspectRequest:
    text = ("abort:" if how == "abort" else "") + "x" * HUGE
    return pb.InspectRequest(fail_code=grpc.StatusCode.NOT_FOUND.value[0], fail_message=text)


@pytest.mark.parametrize("how", ["raise"])
async def test_grpc(gateway_host: RunningHost, how: str) -> None:
    call = gateway_host.channel(gateway_host.token()).unary_unary(
        INSPECT, request_serializer=pb.InspectRequest.SerializeToString
    )
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call(_request(how), timeout=10)
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND
    assert 0 < len(failure.value.details()) <= BOUND
    assert failure.value.details().endswith("more characters]")


@pytest.mark.parametrize("how", HOW)
async def test_rest(http: httpx.AsyncClient, how: str) -> None:
    request = _request(how)
    response = await http.post(
        "/v1/inspect", json={"failCode": request.fail_code, "failMessage": request.fail_message}
    )
    assert response.status_code == 404
    assert 0 < len(response.json()["message"]) <= BOUND


@pytest.mark.parametrize("how", HOW)
async def test_grpc_web(http: httpx.AsyncClient, how: str) -> None:
    payload = _request(how).SerializeToString()
    response = await http.post(
        INSPECT,
        content=struct.pack(">BI", 0, len(payload)) + payload,
        headers={"content-type": "application/grpc-web+proto"},
    )
    raw = response.content
    last = b""
    while raw:
        length = struct.unpack(">I", raw[1:5])[0]
        last, raw = raw[: 5 + length], raw[5 + length :]
    assert last[0] == 0x80
    trailers = dict(line.split(":", 1) for line in last[5:].decode().split("\r\n") if line)
    assert trailers["grpc-status"] == "5"
    assert 0 < len(trailers["grpc-message"]) <= BOUND
