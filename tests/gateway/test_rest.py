"""REST transcoding against a running host: every HttpRule rule, request → message → JSON."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

JSON = {"content-type": "application/json"}


@pytest.mark.parametrize(
    ("method", "url", "body", "expected"),
    [
        ("GET", "/v1/echo/abc", None, {"id": "abc"}),
        ("GET", "/v1/shelves/s1/books/b2", None, {"shelf": "s1", "id": "b2"}),
        (
            "POST",
            "/v1/echo/fromPath",
            {"id": "fromBody", "small": 3},
            {"id": "fromPath", "small": 3},
        ),
        (
            "PUT",
            "/v1/echo/x",
            {"name": "n", "level": 2},
            {"id": "x", "nested": {"name": "n", "level": 2}},
        ),
        ("PATCH", "/v1/echo/nn", ["a", "b"], {"nested": {"name": "nn"}, "tags": ["a", "b"]}),
        ("DELETE", "/v1/echo/gone", None, {"id": "gone"}),
        ("GET", "/v1/files/a/b/c.txt", None, {"name": "files/a/b/c.txt"}),
        ("GET", "/v1/projects/p1/items/i1", None, {"name": "projects/p1/items/i1"}),
        ("POST", "/v1/echo/m1:mark", {}, {"id": "m1"}),
        ("SEARCH", "/v1/echo?id=s", None, {"id": "s"}),
        ("GET", "/v1/echo/special", None, {}),
        ("GET", "/v1/echo/a:b", None, {"id": "a:b"}),
    ],
    ids=[
        "get-var",
        "two-vars",
        "post-body-star-path-wins",
        "put-body-field",
        "patch-nested-path-repeated-body",
        "delete",
        "double-wildcard",
        "multi-segment-pattern",
        "custom-verb",
        "custom-method",
        "literal-beats-var",
        "colon-without-verb-route",
    ],
)
async def test_bindings_map_http_onto_the_request(
    http: httpx.AsyncClient, method: str, url: str, body: Any, expected: dict[str, Any]
) -> None:
    response = await http.request(
        method, url, content=None if body is None else json.dumps(body), headers=JSON
    )
    assert response.status_code == 200, response.text
    assert response.json() == expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/echo/a%20b", "a b"),
        ("/v1/echo/a%2Fb", "a/b"),
        ("/v1/echo/a+b", "a+b"),
        ("/v1/echo/%E2%9C%93", "✓"),
    ],
)
async def test_single_segment_variables_are_fully_decoded(
    http: httpx.AsyncClient, path: str, expected: str
) -> None:
    response = await http.get(httpx.URL(path))
    assert response.json() == {"id": expected}


async def test_multi_segment_variables_keep_encoded_slashes(http: httpx.AsyncClient) -> None:
    response = await http.get(httpx.URL("/v1/files/a%2Fb/c%20d"))
    assert response.json() == {"name": "files/a%2Fb/c d"}


async def test_query_parameters_fill_unbound_fields(http: httpx.AsyncClient) -> None:
    params = [
        ("shelf", "s"),
        ("nested.name", "deep"),
        ("nested.deep.on", "true"),
        ("tags", "x"),
        ("tags", "y"),
        ("color", "COLOR_RED"),
        ("colors", "1"),
        ("colors", "COLOR_GREEN"),
        ("big", "9007199254740993"),
        ("huge", "18446744073709551615"),
        ("smallVal", "ignored: unknown"),
        ("small", "-5"),
        ("flag", "true"),
        ("ratio", "0.25"),
        ("blob", "aGk="),
        ("when", "2024-05-06T07:08:09.5Z"),
        ("wait", "1.5s"),
        ("mask", "a,b.c"),
        ("maybe", "7"),
        ("labels[env]", "prod"),
        ("numbered[3]", "three"),
    ]
    response = await http.get("/v1/echo/q", params=params)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "id": "q",
        "shelf": "s",
        "nested": {"name": "deep", "deep": {"on": True}},
        "tags": ["x", "y"],
        "color": "COLOR_RED",
        "colors": ["COLOR_RED", "COLOR_GREEN"],
        "big": "9007199254740993",
        "huge": "18446744073709551615",
        "small": -5,
        "flag": True,
        "ratio": 0.25,
        "blob": "aGk=",
        "when": "2024-05-06T07:08:09.500Z",
        "wait": "1.500s",
        "mask": "a,b.c",
        "maybe": 7,
        "labels": {"env": "prod"},
        "numbered": {"3": "three"},
    }


async def test_query_accepts_proto_names_and_ignores_path_bound_fields(
    http: httpx.AsyncClient,
) -> None:
    response = await http.get("/v1/echo/p", params={"id": "not-this", "next": "unknown"})
    assert response.json() == {"id": "p"}
    orders = await http.get("/v1/orders", params={"customer_id": "c", "pageSize": "5"})
    assert orders.status_code == 200


async def test_query_binds_nothing_when_the_body_is_star(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/echo/b?small=9", content=b"{}", headers=JSON)
    assert response.json() == {"id": "b"}


@pytest.mark.parametrize(
    ("params", "field", "fragment"),
    [
        ({"small": "abc"}, "small", "'abc' is not a valid integer"),
        ({"small": "99999999999"}, "small", "is not a valid integer"),
        ({"flag": "yes"}, "flag", "is not a valid boolean"),
        ({"color": "PURPLE"}, "color", "is not a valid transcode.v1.Color"),
        ({"when": "yesterday"}, "when", "Timestamp"),
        ({"nested": "x"}, "nested", "cannot be given as a query parameter"),
    ],
)
async def test_bad_query_values_are_400_naming_the_parameter(
    http: httpx.AsyncClient, params: dict[str, str], field: str, fragment: str
) -> None:
    response = await http.get("/v1/echo/q", params=params)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == 3
    violations = next(d for d in body["details"] if d["@type"].endswith("BadRequest"))[
        "fieldViolations"
    ]
    assert violations[0]["field"] == field
    assert fragment in violations[0]["description"]


async def test_a_non_repeated_parameter_given_twice_is_400(http: httpx.AsyncClient) -> None:
    response = await http.get("/v1/echo/q", params=[("small", "1"), ("small", "2")])
    assert response.status_code == 400
    assert "given more than once" in response.text


async def test_json_body_errors_name_the_field(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/echo/b", content=b'{"small": "many"}', headers=JSON)
    assert response.status_code == 400
    assert "small" in response.json()["message"] or "small" in response.text
    response = await http.post("/v1/echo/b", content=b'{"nope": 1}', headers=JSON)
    assert response.status_code == 400
    assert "nope" in response.text
    response = await http.post("/v1/echo/b", content=b"{not json", headers=JSON)
    assert response.status_code == 400
    assert "not valid JSON" in response.text


async def test_response_body_selects_a_field_and_repeated_is_a_bare_array(
    http: httpx.AsyncClient,
) -> None:
    response = await http.get("/v1/items", params={"count": 3})
    # Item 0 holds only defaults, which proto3 JSON leaves out.
    assert response.json() == [{}, {"number": 1}, {"number": 2}]
    empty = await http.get("/v1/items")
    assert empty.json() == []


async def test_http_body_passes_raw_bytes_and_content_type(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/v1/upload", content=b"\x00\x01binary", headers={"content-type": "application/x-thing"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-thing"
    assert response.content == b"yranib\x01\x00"


async def test_method_without_annotation_has_the_default_binding(http: httpx.AsyncClient) -> None:
    response = await http.post("/transcode.v1.TranscodeService/Plain", json={"value": "v"})
    assert response.json() == {"value": "v"}


async def test_unknown_path_is_404_and_wrong_method_is_405_with_allow(
    http: httpx.AsyncClient,
) -> None:
    missing = await http.get("/v2/nothing")
    assert missing.status_code == 404
    assert missing.json()["code"] == 5
    wrong = await http.put("/v1/orders", json={})
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "GET, POST"
    assert wrong.json()["code"] == 12


async def test_unsupported_media_type_is_415(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/v1/echo/x", content=b"a=b", headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert response.status_code == 415
    assert "unsupported content type" in response.json()["message"]


async def test_oversized_body_is_413_before_parsing(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/v1/echo/x", content=b"{" + b" " * (5 * 1024 * 1024) + b"}", headers=JSON
    )
    assert response.status_code == 413


async def test_grpc_status_maps_to_http_with_status_body(http: httpx.AsyncClient) -> None:
    for code, status in (
        (5, 404),
        (7, 403),
        (16, 401),
        (8, 429),
        (9, 400),
        (14, 503),
        (4, 504),
        (1, 499),
    ):
        response = await http.post("/v1/inspect", json={"failCode": code, "failMessage": "nope"})
        assert response.status_code == status, code
        body = response.json()
        assert (body["code"], body["message"]) == (code, "nope")
    unauthenticated = await http.post("/v1/inspect", json={"failCode": 16})
    assert unauthenticated.headers["www-authenticate"].startswith("Bearer")


async def test_crash_is_500_without_internals(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/v1/inspect", json={"crash": True}, headers={"x-request-id": "rest-1"}
    )
    assert response.status_code == 500
    assert response.json()["message"] == "internal error (request id rest-1)"
    assert "secret" not in response.text
    assert response.headers["x-request-id"] == "rest-1"


async def test_headers_become_metadata_and_metadata_comes_back(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/v1/inspect",
        json={},
        headers={
            "grpc-metadata-tenant": "acme",
            "grpc-metadata-blob-bin": "AAEC",
            "x-request-id": "rid-7",
            "x-secret-header": "not forwarded",
            "grpc-timeout": "5S",
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    metadata = body["metadata"]
    assert metadata["authorization"].startswith("Bearer ")
    assert metadata["tenant"] == "acme"
    assert metadata["blob-bin"] == "AAEC"
    assert metadata["x-request-id"] == "rid-7"
    assert "x-secret-header" not in metadata
    assert 0 < body["timeRemaining"] <= 5
    assert body["transport"] == "rest"
    assert response.headers["grpc-metadata-x-initial"] == "yes"
    assert response.headers["grpc-trailer-x-trailer"] == "done"
    assert response.headers["x-request-id"] == "rid-7"


async def test_bad_grpc_timeout_is_400(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/inspect", json={}, headers={"grpc-timeout": "soon"})
    assert response.status_code == 400
    assert "Grpc-Timeout" in response.text


async def test_deadline_from_grpc_timeout_is_enforced(http: httpx.AsyncClient) -> None:
    response = await http.get(
        "/v1/count/50",
        params={"pauseMillis": 50},
        headers={"grpc-timeout": "100m", "accept": "application/x-ndjson"},
    )
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines[-1]["error"]["code"] == 4


async def test_orders_over_rest(http: httpx.AsyncClient) -> None:
    created = await http.post(
        "/v1/orders",
        json={
            "customerId": "web",
            "currencyCode": "EUR",
            "items": [{"sku": "PEN-7", "quantity": 2}],  # the demo price list: 199
        },
    )
    assert created.status_code == 200, created.text
    order = created.json()
    assert order["totalCents"] == "398"
    assert order["status"] == "ORDER_STATUS_PENDING"
    fetched = await http.get(f"/v1/orders/{order['id']}")
    assert fetched.json() == order
    listed = await http.get("/v1/orders", params={"customerId": "web", "status": "1"})
    assert [o["id"] for o in listed.json()["orders"]] == [order["id"]]
    patched = await http.patch(
        f"/v1/orders/{order['id']}", params={"updateMask": "note"}, json={"note": "ring twice"}
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["note"] == "ring twice"
    cancelled = await http.post(f"/v1/orders/{order['id']}:cancel", json={"reason": "web"})
    assert cancelled.json()["status"] == "ORDER_STATUS_CANCELLED"
    again = await http.post(f"/v1/orders/{order['id']}:cancel", json={})
    assert again.status_code == 400
    assert again.json()["details"][0]["reason"] == "ORDER_CLOSED"


async def test_cors_preflight_and_simple_requests(http: httpx.AsyncClient) -> None:
    # The test host allows no origins: the preflight gets no grant.
    response = await http.options(
        "/v1/orders",
        headers={"origin": "https://app.example", "access-control-request-method": "POST"},
    )
    assert response.status_code == 204
    assert "access-control-allow-origin" not in response.headers


def _handled(exposition: str, method: str, code: str) -> float:
    """``grpc_server_handled_total`` of a REST call to ``method`` with ``code``."""
    for line in exposition.splitlines():
        if (
            line.startswith("grpc_server_handled_total{")
            and f'grpc_method="{method}"' in line
            and f'grpc_code="{code}"' in line
            and 'transport="rest"' in line
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_body_errors_are_statuses_of_the_pipeline_counted_in_metrics(
    http: httpx.AsyncClient,
) -> None:
    # Bodies are read and decoded inside the call pipeline (after auth): their errors
    # keep their HTTP statuses and google.rpc.Status bodies, and are counted.
    unsupported = await http.post(
        "/v1/echo/x", content=b"a=b", headers={"content-type": "text/plain"}
    )
    assert unsupported.status_code == 415
    assert unsupported.json()["details"][0]["reason"] == "UNSUPPORTED_MEDIA_TYPE"
    assert unsupported.headers["x-request-id"]
    oversized = await http.post("/v1/echo/x", content=b" " * (4 * 1024 * 1024 + 1), headers=JSON)
    assert oversized.status_code == 413
    assert oversized.json()["details"][0]["metadata"] == {
        "http_status": "413",
        "limit": str(4 * 1024 * 1024),
    }
    malformed = await http.post("/v1/echo/x", content=b"{nope", headers=JSON)
    assert malformed.status_code == 400
    assert "not valid JSON" in malformed.json()["message"]
    exposition = (await http.get("/metrics")).text
    assert _handled(exposition, "Echo", "InvalidArgument") == 2
    assert _handled(exposition, "Echo", "ResourceExhausted") == 1


async def test_query_string_past_the_limit_is_414(http: httpx.AsyncClient) -> None:
    fine = await http.get("/v1/echo/q", params={"nested.name": "n" * 15_000})
    assert fine.status_code == 200
    response = await http.get("/v1/echo/q", params={"nested.name": "n" * 17_000})
    assert response.status_code == 414
    assert response.json()["details"][0]["reason"] == "QUERY_TOO_LONG"


async def test_bodies_decoded_in_a_worker_thread_give_the_same_message(
    tmp_path: Any, transcode_stubs: Any
) -> None:
    from nexus_grpc.config import HttpConfig
    from nexus_grpc.testing import running_host
    from tests.gateway.conftest import GATEWAY_TESTS

    async with (
        running_host(
            plugins=["transcode"],
            plugin_dirs=[GATEWAY_TESTS / "plugins"],
            data_dir=tmp_path,
            http=HttpConfig(thread_parse_bytes=1),
        ) as host,
        httpx.AsyncClient(base_url=host.http_url, timeout=10) as client,
    ):
        response = await client.post("/v1/echo/t", json={"small": 3, "tags": ["a"] * 1000})
        assert response.status_code == 200
        assert response.json() == {"id": "t", "small": 3, "tags": ["a"] * 1000}
        bad = await client.post("/v1/echo/t", json={"small": "many"})
        assert bad.status_code == 400
        lines = b'{"value": 1}\n{"value": "2"}\n{"value": 39}'
        summed = await client.post(
            "/v1/sum", content=lines, headers={"content-type": "application/x-ndjson"}
        )
        assert summed.json() == {"total": "42", "count": 3}
        bad_line = await client.post(
            "/v1/sum", content=b'{"value": "x"}', headers={"content-type": "application/x-ndjson"}
        )
        assert bad_line.status_code == 400
