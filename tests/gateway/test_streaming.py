"""Streaming over HTTP: server streams as NDJSON, SSE or a JSON array; client and bidi streams as NDJSON."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from nexus_grpc.testing import RunningHost


async def test_server_stream_as_ndjson(http: httpx.AsyncClient) -> None:
    response = await http.get("/v1/count/3", headers={"accept": "application/x-ndjson"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    assert [json.loads(line) for line in response.text.splitlines()] == [
        {"value": 1},
        {"value": 2},
        {"value": 3},
    ]


async def test_server_stream_as_server_sent_events(http: httpx.AsyncClient) -> None:
    response = await http.get("/v1/count/2", headers={"accept": "text/event-stream"})
    assert response.headers["content-type"] == "text/event-stream"
    assert response.text == 'data: {"value":1}\n\ndata: {"value":2}\n\n'


async def test_server_stream_as_json_array_by_default(http: httpx.AsyncClient) -> None:
    response = await http.get("/v1/count/3")
    assert response.headers["content-type"] == "application/json"
    assert response.json() == [{"value": 1}, {"value": 2}, {"value": 3}]
    empty = await http.get("/v1/count/0")
    assert empty.json() == []


@pytest.mark.parametrize(
    ("accept", "parse"),
    [
        ("application/x-ndjson", lambda text: [json.loads(line) for line in text.splitlines()]),
        ("application/json", json.loads),
        (
            "text/event-stream",
            lambda text: [
                {"error": json.loads(block.split("data: ", 1)[1])["error"]}
                if block.startswith("event: error")
                else json.loads(block[6:])
                for block in text.strip().split("\n\n")
            ],
        ),
    ],
)
async def test_error_after_the_first_message_is_a_final_error_item(
    http: httpx.AsyncClient, accept: str, parse
) -> None:  # type: ignore[no-untyped-def]
    response = await http.get("/v1/count/5", params={"failAfter": 2}, headers={"accept": accept})
    assert response.status_code == 200  # already sent with the first message
    items = parse(response.text)
    assert items[:2] == [{"value": 1}, {"value": 2}]
    assert items[2]["error"]["code"] == 11
    assert items[2]["error"]["message"] == "stopped after 2"
    assert len(items) == 3


async def test_error_before_the_first_message_gets_its_http_status(http: httpx.AsyncClient) -> None:
    response = await http.get(
        "/v1/count/5", params={"failAfter": -1}, headers={"accept": "application/x-ndjson"}
    )
    assert response.status_code == 400  # OUT_OF_RANGE
    assert response.json()["code"] == 11


async def test_client_stream_from_ndjson_body(http: httpx.AsyncClient) -> None:
    body = b'{"value": 1}\n{"value": "2"}\n\n{"value": 39}'
    response = await http.post(
        "/v1/sum", content=body, headers={"content-type": "application/x-ndjson"}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"total": "42", "count": 3}


async def test_client_stream_with_a_bad_line_is_400(http: httpx.AsyncClient) -> None:
    body = b'{"value": 1}\n{"value": "x"}\n'
    response = await http.post(
        "/v1/sum", content=body, headers={"content-type": "application/x-ndjson"}
    )
    assert response.status_code == 400
    assert "value" in response.text


async def test_bidi_stream_over_ndjson(http: httpx.AsyncClient) -> None:
    async def lines():  # type: ignore[no-untyped-def]
        for word in ("ab", "cd", "ef"):
            yield json.dumps({"text": word}).encode() + b"\n"
            await asyncio.sleep(0.01)

    response = await http.post(
        "/v1/chat",
        content=lines(),
        headers={"content-type": "application/x-ndjson", "accept": "application/x-ndjson"},
    )
    assert [json.loads(line) for line in response.text.splitlines()] == [
        {"text": "AB"},
        {"text": "CD"},
        {"text": "EF"},
    ]


async def test_client_disconnect_cancels_the_stream(gateway_host: RunningHost) -> None:
    in_flight = gateway_host.host.plugins.record("transcode")
    assert in_flight is not None
    async with (
        httpx.AsyncClient(base_url=gateway_host.http_url) as client,
        client.stream(
            "GET",
            "/v1/count/100000",
            params={"pauseMillis": 20},
            headers={"accept": "application/x-ndjson"},
        ) as response,
    ):
        lines = response.aiter_lines()
        assert json.loads(await lines.__anext__()) == {"value": 1}
        assert in_flight.in_flight.count == 1
    # The connection is closed: the call must end instead of counting to 100000.
    assert await in_flight.in_flight.wait_idle(5)
