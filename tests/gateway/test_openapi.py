"""GET /openapi.json: the OpenAPI 3.1 document built from the live descriptors."""

from __future__ import annotations

import importlib
import random
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2
from nexus.admin.v1 import admin_pb2
from nexus.orders.v1 import orders_pb2
from openapi_spec_validator import validate

from nexus_grpc.codegen import DESCRIPTOR_SET_NAME, generate
from nexus_grpc.gateway import openapi
from nexus_grpc.gateway.bindings import HttpBinding, bindings_for
from nexus_grpc.gateway.codec import JsonOptions
from nexus_grpc.gateway.openapi import openapi_document
from nexus_grpc.gateway.template import parse_template

GATEWAY_TESTS = Path(__file__).resolve().parent
REPO = GATEWAY_TESTS.parents[1]
REF = "#/components/schemas/"

# Uses nexus/options/v1/options.proto, which the shared tests/gateway/proto folder
# cannot import (it is compiled on its own), so it is written out here.
POLICY_PROTO = """
syntax = "proto3";

package oapolicy.v1;

import "google/api/annotations.proto";
import "nexus/options/v1/options.proto";

// Methods with each kind of access rule.
service GuardedService {
  option (nexus.options.v1.default_policy) = {authenticated: true};

  // Open to anyone.
  rpc Open(Ping) returns (Ping) {
    option (google.api.http) = {get: "/v1/open"};
    option (nexus.options.v1.policy) = {public: true};
  }

  // Needs any valid token (the service default).
  rpc Member(Ping) returns (Ping) {
    option (google.api.http) = {get: "/v1/member"};
  }

  // Needs a permission.
  rpc Purge(Ping) returns (Ping) {
    option (google.api.http) = {post: "/v1/purge" body: "*"};
    option (nexus.options.v1.policy) = {
      permission: {resource: "widgets" action: "purge" scope: SCOPE_ALL}
    };
  }
}

// Nothing.
message Ping {}
"""


def _bindings(*services: Any) -> tuple[HttpBinding, ...]:
    return tuple(
        binding
        for service in services
        for method in service.methods
        for binding in bindings_for(method)
    )


def _operations(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        operation["operationId"]: {**operation, "_path": path, "_method": method}
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }


def _params(operation: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in operation.get("parameters", []) if p["in"] == where}


def _schema(document: dict[str, Any], name: str) -> dict[str, Any]:
    return document["components"]["schemas"][name]


def _body_schema(operation: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = operation["requestBody"]["content"]["application/json"]["schema"]
    return schema


def _response_schema(operation: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = operation["responses"]["200"]["content"]["application/json"]["schema"]
    return schema


@pytest.fixture(scope="module")
def gwtest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """The gwtest contract compiled on its own, importable while the module runs."""
    root = tmp_path_factory.mktemp("gwtest-proto")
    shutil.copytree(GATEWAY_TESTS / "proto" / "gwtest", root / "gwtest")
    out = tmp_path_factory.mktemp("gwtest-stubs")
    generate(root, out)
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module("gwtest.v1.gwtest_pb2")
    finally:
        sys.path.remove(str(out))


@pytest.fixture(scope="module")
def oapolicy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """A contract with public, authenticated and permission methods."""
    root = tmp_path_factory.mktemp("policy-proto")
    (root / "oapolicy" / "v1").mkdir(parents=True)
    (root / "oapolicy" / "v1" / "oapolicy.proto").write_text(POLICY_PROTO)
    options = Path("nexus/options/v1/options.proto")
    (root / options.parent).mkdir(parents=True)
    shutil.copy(REPO / "proto" / options, root / options)
    out = tmp_path_factory.mktemp("policy-stubs")
    generate(root, out)
    # The import resolves to the installed nexus.options package, not this copy.
    shutil.rmtree(out / "nexus")
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module("oapolicy.v1.oapolicy_pb2")
    finally:
        sys.path.remove(str(out))


@pytest.fixture(scope="module")
def bundled() -> dict[str, Any]:
    """The document of the bundled contracts: orders, admin and health."""
    bindings = _bindings(
        orders_pb2.DESCRIPTOR.services_by_name["OrdersService"],
        admin_pb2.DESCRIPTOR.services_by_name["AdminService"],
        health_pb2.DESCRIPTOR.services_by_name["Health"],
    )
    return openapi_document(bindings, JsonOptions())


@pytest.fixture(scope="module")
def widgets(gwtest: ModuleType) -> dict[str, Any]:
    """The document of the gwtest contract."""
    bindings = _bindings(gwtest.DESCRIPTOR.services_by_name["WidgetService"])
    return openapi_document(bindings, JsonOptions())


# Validity ---------------------------------------------------------------------------


def test_bundled_document_is_valid_openapi_3_1(bundled: dict[str, Any]) -> None:
    validate(bundled)
    assert bundled["openapi"] == "3.1.0"
    assert bundled["info"] == {"title": "nexus", "version": "1"}


def test_gwtest_document_is_valid_openapi_3_1(widgets: dict[str, Any]) -> None:
    validate(widgets)


def test_policy_document_is_valid(oapolicy: ModuleType) -> None:
    bindings = _bindings(oapolicy.DESCRIPTOR.services_by_name["GuardedService"])
    validate(openapi_document(bindings, JsonOptions()))


def test_proto_names_document_is_valid(gwtest: ModuleType) -> None:
    bindings = _bindings(gwtest.DESCRIPTOR.services_by_name["WidgetService"])
    document = openapi_document(bindings, JsonOptions(proto_names=True))
    validate(document)
    widget = _schema(document, "gwtest.v1.Widget")["properties"]
    assert {"create_time", "price_cents", "legacy_title"} <= widget.keys()
    query = _params(_operations(document)["WidgetService_ListWidgets"], "query")
    assert {"page_size", "filter.customer_id", "filter.id_range.min"} <= query.keys()


# Operations -------------------------------------------------------------------------


def test_every_binding_is_an_operation_with_a_stable_id(bundled: dict[str, Any]) -> None:
    placed = {(op["_method"], op["_path"]) for op in _operations(bundled).values()}
    assert placed == {
        ("post", "/v1/orders"),
        ("get", "/v1/orders"),
        ("get", "/v1/orders/{id}"),
        ("patch", "/v1/orders/{id}"),
        ("post", "/v1/orders/{id}:cancel"),
        ("get", "/v1/orders:watch"),
        ("get", "/v1/admin/plugins"),
        ("get", "/v1/admin/plugins/{name}"),
        ("post", "/v1/admin/plugins/{name}:load"),
        ("post", "/v1/admin/plugins/{name}:unload"),
        ("post", "/v1/admin/plugins/{name}:reload"),
        ("get", "/v1/admin/audit"),
        ("get", "/v1/admin/events/dead-letters"),
        ("post", "/v1/admin/events/groups/{group}/dead-letters/{id}:redrive"),
        ("post", "/v1/admin/events/groups/{group}:replay"),
        ("get", "/v1/admin/events/stats"),
        ("get", "/v1/admin/indexes"),
        ("post", "/v1/admin/indexes:retire"),
        ("post", "/v1/admin/workers:restart"),
    } | {
        # Unannotated methods get the default binding, whatever this grpcio version has.
        ("post", f"/grpc.health.v1.Health/{method.name}")
        for method in health_pb2.DESCRIPTOR.services_by_name["Health"].methods
    }
    operations = _operations(bundled)
    assert operations["OrdersService_GetOrder"]["_path"] == "/v1/orders/{id}"
    assert operations["Health_Watch"]["tags"] == ["grpc.health.v1.Health"]
    assert operations["OrdersService_GetOrder"]["tags"] == ["nexus.orders.v1.OrdersService"]
    assert operations["OrdersService_GetOrder"]["x-grpc-method"] == (
        "/nexus.orders.v1.OrdersService/GetOrder"
    )


def test_additional_bindings_are_numbered_and_custom_methods_skipped(
    widgets: dict[str, Any],
) -> None:
    operations = _operations(widgets)
    assert operations["WidgetService_ListWidgets_1"]["_path"] == "/v1/widgets"
    assert operations["WidgetService_UpdateWidget_1"]["_method"] == "put"
    # PURGE is skipped but still counts: the POST binding keeps its index.
    assert "WidgetService_Purge" not in operations
    assert operations["WidgetService_Purge_1"]["_path"] == "/v1/shelves/{shelf}:purge"
    assert not any("purge" in item for item in widgets["paths"].values())
    # A second GET on the OpenAPI path /v1/{name} cannot be expressed.
    assert "WidgetService_GetWidget_1" not in operations
    assert operations["WidgetService_Plain"]["_path"] == "/gwtest.v1.WidgetService/Plain"


def test_deprecated_method(widgets: dict[str, Any]) -> None:
    operations = _operations(widgets)
    assert operations["WidgetService_DeleteWidget"]["deprecated"] is True
    assert "deprecated" not in operations["WidgetService_GetWidget"]


# Path parameters --------------------------------------------------------------------


def test_path_parameters_are_required_and_typed(widgets: dict[str, Any]) -> None:
    operations = _operations(widgets)
    shelf = _params(operations["WidgetService_ListWidgets"], "path")["shelf"]
    assert shelf["required"] is True
    assert shelf["schema"] == {"type": "string", "minLength": 1}
    assert shelf["description"] == "Shelf to list."


def test_multi_segment_variable_has_a_pattern(widgets: dict[str, Any]) -> None:
    operation = _operations(widgets)["WidgetService_GetWidget"]
    assert operation["_path"] == "/v1/{name}"
    name = _params(operation, "path")["name"]
    assert name["schema"]["pattern"] == "^shelves/[^/]+/widgets/[^/]+$"
    assert re.match(name["schema"]["pattern"], "shelves/s1/widgets/w1")
    assert not re.match(name["schema"]["pattern"], "shelves/s1")
    assert "`shelves/*/widgets/*`" in name["description"]
    download = _params(_operations(widgets)["WidgetService_Download"], "path")["path"]
    assert re.match(download["schema"]["pattern"], "a/b/c.txt")


def test_bare_wildcards_become_parameters(widgets: dict[str, Any]) -> None:
    operation = _operations(widgets)["WidgetService_Ping_1"]
    assert operation["_path"] == "/v1/pings/{_wildcard0}"
    wildcard = _params(operation, "path")["_wildcard0"]
    assert wildcard["required"] is True
    assert "not passed to the method" in wildcard["description"]


def test_paths_differing_only_in_names_share_one_path_item(
    bundled: dict[str, Any], widgets: dict[str, Any]
) -> None:
    # PATCH /v1/orders/{order.id} is filed under GET's /v1/orders/{id}.
    update = _operations(bundled)["OrdersService_UpdateOrder"]
    assert update["_path"] == "/v1/orders/{id}"
    assert "Sets the request field `order.id`." in _params(update, "path")["id"]["description"]
    delete = _operations(widgets)["WidgetService_DeleteWidget"]
    # Dotted variable names become underscores: tools read a dot as a nested lookup.
    assert delete["_path"] == "/v1/widgets/{widget_id}"
    number = _params(delete, "path")["widget_id"]
    assert "Sets the request field" in number["description"]
    assert number["schema"]["type"] == "integer"
    assert number["schema"]["format"] == "int64"


def test_path_fields_are_not_in_the_body(bundled: dict[str, Any], widgets: dict[str, Any]) -> None:
    cancel = _body_schema(_operations(bundled)["OrdersService_CancelOrder"])
    assert list(cancel["properties"]) == ["reason"]
    update = _body_schema(_operations(bundled)["OrdersService_UpdateOrder"])
    assert "id" not in update["properties"] and "customerId" in update["properties"]
    # body "*" with {widget.id}: the nested widget is inlined without its id.
    patch = _body_schema(_operations(widgets)["WidgetService_UpdateWidget"])
    assert set(patch["properties"]) == {"widget", "updateMask", "shelf"}
    assert "id" not in patch["properties"]["widget"]["properties"]
    assert "title" in patch["properties"]["widget"]["properties"]
    # The shared component still has the id.
    assert "id" in _schema(widgets, "gwtest.v1.Widget")["properties"]


@pytest.mark.parametrize(
    ("template", "pattern"),
    [
        ("/v1/{name=shelves/**}", "^shelves(?:/[^/]+)*$"),
        ("/v1/{name=**}", "^(?:[^/]+(?:/[^/]+)*)?$"),
        ("/v1/{name=a.b/*/c}", "^a\\.b/[^/]+/c$"),
    ],
)
def test_segment_patterns(template: str, pattern: str) -> None:
    variable = parse_template(template).variables[0]
    assert openapi._segments_regex(variable.segments) == pattern


# Query parameters -------------------------------------------------------------------


def test_query_parameters_are_the_unbound_fields(widgets: dict[str, Any]) -> None:
    operations = _operations(widgets)
    query = _params(operations["WidgetService_ListWidgets"], "query")
    assert list(query) == [
        "pageSize",
        "filter.customerId",
        "filter.idRange.min",
        "filter.idRange.max",
        "states",
        "ids",
        "createdAfter",
        "readMask",
        "minRating",
        "labels",
        "pageToken",
        "showDeleted",
        "maxWait",
    ]
    assert all(p["required"] is False for p in query.values())
    # The same method bound without {shelf} takes the shelf from the query.
    assert "shelf" in _params(operations["WidgetService_ListWidgets_1"], "query")
    # body "widget": the other fields are query parameters, the body's are not.
    assert list(_params(operations["WidgetService_CreateWidget"], "query")) == ["validateOnly"]
    # body "*": nothing comes from the query.
    assert _params(operations["WidgetService_UpdateWidget"], "query") == {}


def test_query_parameter_schemas(widgets: dict[str, Any]) -> None:
    query = _params(_operations(widgets)["WidgetService_ListWidgets"], "query")
    assert query["states"]["style"] == "form" and query["states"]["explode"] is True
    assert query["states"]["schema"] == {
        "type": "array",
        "items": {"$ref": REF + "gwtest.v1.State"},
    }
    assert query["ids"]["schema"]["items"]["format"] == "int64"
    assert query["filter.idRange.min"]["schema"]["maximum"] == 2**63 - 1
    assert query["createdAfter"]["schema"]["format"] == "date-time"
    assert query["readMask"]["schema"]["type"] == "string"
    assert query["maxWait"]["schema"]["type"] == "string"
    assert query["minRating"]["schema"] == {"type": "number", "format": "double"}
    assert query["labels"]["style"] == "deepObject"
    assert query["labels"]["schema"]["additionalProperties"] == {"type": "string"}
    assert query["pageToken"]["schema"]["contentEncoding"] == "base64"
    assert query["showDeleted"]["schema"] == {"type": "boolean"}
    assert query["filter.customerId"]["description"] == "Only widgets of this customer."


# Schemas ----------------------------------------------------------------------------


def test_64_bit_integers_are_strings_or_numbers_in_range(bundled: dict[str, Any]) -> None:
    total = _schema(bundled, "nexus.orders.v1.Order")["properties"]["totalCents"]
    assert total["type"] == ["string", "integer"]
    assert total["format"] == "int64"
    assert (total["minimum"], total["maximum"]) == (-(2**63), 2**63 - 1)
    pattern = re.compile(total["pattern"])
    for good in ("0", "-1", "9223372036854775807", "-9223372036854775808", "1000"):
        assert pattern.match(good), good
    for bad in ("9223372036854775808", "-9223372036854775809", "1.5", "", "x", "12a"):
        assert not pattern.match(bad), bad


@pytest.mark.parametrize(
    ("low", "high"),
    [(-(2**31), 2**31 - 1), (0, 2**32 - 1), (-(2**63), 2**63 - 1), (0, 2**64 - 1), (0, 7), (0, 10)],
)
def test_integer_patterns_match_exactly_the_range(low: int, high: int) -> None:
    pattern = re.compile(openapi._integer_regex(low, high))
    rng = random.Random(high)
    edges = [low - 1, low, -1, 0, 1, 9, 10, high // 10, high - 1, high, high + 1, high * 10]
    samples = edges + [rng.randint(low - high, 3 * high) for _ in range(1000)]
    for number in samples:
        assert bool(pattern.match(str(number))) == (low <= number <= high), number
    assert not pattern.match("01") and not pattern.match("+1") and not pattern.match("1.0")


def test_unsigned_and_32_bit_integers(widgets: dict[str, Any]) -> None:
    widget = _schema(widgets, "gwtest.v1.Widget")["properties"]
    price = widget["priceCents"]
    assert price["format"] == "uint64" and price["minimum"] == 0
    assert re.match(price["pattern"], "18446744073709551615")
    assert not re.match(price["pattern"], "18446744073709551616")
    assert not re.match(price["pattern"], "-1")
    assert widget["size"]["type"] == "integer" and widget["size"]["maximum"] == 2**32 - 1
    assert widget["priority"]["format"] == "int32"
    assert widget["serials"]["items"]["format"] == "uint64"
    assert widget["offset"]["format"] == "int64"


def test_scalar_types(widgets: dict[str, Any]) -> None:
    widget = _schema(widgets, "gwtest.v1.Widget")["properties"]
    assert widget["title"]["type"] == "string"
    assert widget["free"]["type"] == "boolean"
    assert widget["thumbnail"]["contentEncoding"] == "base64"
    assert re.match(widget["thumbnail"]["pattern"], "aGVsbG8=")
    assert widget["weight"]["format"] == "float" and "number" in widget["weight"]["type"]
    assert widget["density"]["format"] == "double"
    assert re.match(widget["density"]["pattern"], "-Infinity")


def test_enums_are_their_value_names(bundled: dict[str, Any], widgets: dict[str, Any]) -> None:
    status = _schema(bundled, "nexus.orders.v1.OrderStatus")
    assert status["type"] == "string"
    assert status["enum"][:2] == ["ORDER_STATUS_UNSPECIFIED", "ORDER_STATUS_PENDING"]
    order = _schema(bundled, "nexus.orders.v1.Order")["properties"]
    assert order["status"]["$ref"] == REF + "nexus.orders.v1.OrderStatus"
    kind = _schema(widgets, "gwtest.v1.Widget.Kind")
    assert kind["enum"] == ["KIND_UNSPECIFIED", "KIND_KITCHEN", "KIND_GARDEN"]


def test_maps_repeated_and_recursive_messages(widgets: dict[str, Any]) -> None:
    widget = _schema(widgets, "gwtest.v1.Widget")["properties"]
    assert widget["labels"]["type"] == "object"
    assert widget["labels"]["additionalProperties"] == {"type": "string"}
    counters = widget["counters"]
    assert counters["additionalProperties"]["format"] == "int64"
    assert re.match(counters["propertyNames"]["pattern"], "-2147483648")
    assert not re.match(counters["propertyNames"]["pattern"], "2147483648")
    assert widget["switches"]["propertyNames"] == {"enum": ["true", "false"]}
    assert widget["parts"] == {
        "type": "array",
        "items": {"$ref": REF + "gwtest.v1.Widget"},
        "description": "Widgets this widget is made of.",
    }


def test_oneof_members_are_optional_and_exclusive(widgets: dict[str, Any]) -> None:
    widget = _schema(widgets, "gwtest.v1.Widget")
    assert "required" not in widget
    assert (
        "set at most one of `priceCents`, `free`, `quoteContact`"
        in (widget["properties"]["free"]["description"])
    )
    [rule] = widget["allOf"]
    assert {"required": ["priceCents", "free"]} in rule["not"]["anyOf"]
    # proto3 `optional` is a oneof of one field: no rule, no note.
    assert "oneof" not in widget["properties"]["priority"]["description"]


def test_well_known_types(widgets: dict[str, Any]) -> None:
    widget = _schema(widgets, "gwtest.v1.Widget")["properties"]
    assert widget["createTime"]["type"] == "string"
    assert widget["createTime"]["format"] == "date-time"
    assert re.match(widget["createTime"]["pattern"], "2024-05-01T10:00:00.123456789Z")
    assert re.match(widget["warranty"]["pattern"], "-1.5s")
    assert not re.match(widget["warranty"]["pattern"], "1.5")
    assert widget["attributes"]["type"] == "object"
    assert "type" not in widget["extra"]  # Value: any JSON
    assert widget["history"]["type"] == "array"
    assert widget["detail"]["required"] == ["@type"]
    assert widget["stock"]["type"] == ["string", "integer", "null"]
    assert widget["rating"]["type"] == ["number", "string", "null"]
    delete = _operations(widgets)["WidgetService_DeleteWidget"]
    assert _response_schema(delete) == {"type": "object", "maxProperties": 0}


def test_unknown_fields_are_refused_only_when_the_gateway_refuses_them(
    gwtest: ModuleType,
) -> None:
    bindings = _bindings(gwtest.DESCRIPTOR.services_by_name["WidgetService"])
    strict = openapi_document(bindings, JsonOptions())
    lenient = openapi_document(bindings, JsonOptions(reject_unknown_fields=False))
    assert _schema(strict, "gwtest.v1.Widget")["additionalProperties"] is False
    assert "additionalProperties" not in _schema(lenient, "gwtest.v1.Widget")


# Bodies and responses ---------------------------------------------------------------


def test_body_field_is_the_request_body(bundled: dict[str, Any], widgets: dict[str, Any]) -> None:
    create = _operations(bundled)["OrdersService_CreateOrder"]
    assert _body_schema(create) == {"$ref": REF + "nexus.orders.v1.Order"}
    assert create["requestBody"]["required"] is False
    plain = _operations(widgets)["WidgetService_Plain"]
    assert _body_schema(plain) == {"$ref": REF + "gwtest.v1.Widget"}
    assert "requestBody" not in _operations(bundled)["OrdersService_GetOrder"]


def test_http_body_is_raw_bytes(widgets: dict[str, Any]) -> None:
    raw = {"*/*": {"schema": {"type": "string", "format": "binary"}}}
    operations = _operations(widgets)
    assert operations["WidgetService_Upload"]["requestBody"]["content"] == raw
    assert operations["WidgetService_Download"]["responses"]["200"]["content"] == raw


def test_response_body_field(widgets: dict[str, Any]) -> None:
    names = _operations(widgets)["WidgetService_ListNames"]
    assert _response_schema(names) == {"type": "array", "items": {"type": "string"}}


def test_server_streaming_content_types(bundled: dict[str, Any]) -> None:
    watch = _operations(bundled)["OrdersService_WatchOrders"]
    content = watch["responses"]["200"]["content"]
    assert set(content) == {"application/json", "application/x-ndjson", "text/event-stream"}
    item = {"$ref": REF + "nexus.orders.v1.WatchOrdersResponse"}
    error = {"$ref": REF + "nexus.gateway.StreamError"}
    assert content["application/json"]["schema"] == {
        "type": "array",
        "items": {"anyOf": [item, error]},
    }
    assert content["application/x-ndjson"]["schema"] == {"anyOf": [item, error]}
    assert _schema(bundled, "nexus.gateway.StreamError")["properties"]["error"] == {
        "$ref": REF + "google.rpc.Status"
    }


def test_client_streaming_request_is_ndjson(widgets: dict[str, Any]) -> None:
    body = _operations(widgets)["WidgetService_ImportWidgets"]["requestBody"]
    assert body["required"] is False  # an empty stream is a valid call
    assert body["content"]["application/x-ndjson"]["schema"] == {"$ref": REF + "gwtest.v1.Widget"}


def test_errors_are_google_rpc_status(bundled: dict[str, Any]) -> None:
    for operation in _operations(bundled).values():
        error = operation["responses"]["default"]["content"]["application/json"]["schema"]
        assert error == {"$ref": REF + "google.rpc.Status"}
    status = _schema(bundled, "google.rpc.Status")
    assert status["properties"]["code"]["type"] == "integer"
    assert status["properties"]["message"]["type"] == "string"
    details = status["properties"]["details"]
    assert details["type"] == "array"
    assert details["items"]["required"] == ["@type"]


# Descriptions -----------------------------------------------------------------------


def test_descriptions_come_from_proto_comments(bundled: dict[str, Any]) -> None:
    tags = {tag["name"]: tag.get("description") for tag in bundled["tags"]}
    assert tags["nexus.orders.v1.OrdersService"] == (
        "Creates, reads, changes and cancels customer orders."
    )
    get = _operations(bundled)["OrdersService_GetOrder"]
    assert get["summary"] == "Returns one order by id."
    assert get["description"].startswith("Returns one order by id.")
    order = _schema(bundled, "nexus.orders.v1.Order")
    assert order["description"] == "A customer's order."
    assert order["properties"]["note"]["description"] == (
        "Free text from the customer, at most 500 characters."
    )
    create_time = order["properties"]["createTime"]["description"]
    assert create_time.startswith("When the order was created. Output only.")
    status = _schema(bundled, "nexus.orders.v1.OrderStatus")["description"]
    assert "- `ORDER_STATUS_PENDING`: Created, awaiting confirmation." in status
    # Multi-line comments keep their lines.
    query = _params(_operations(bundled)["OrdersService_ListOrders"], "query")
    assert query["orderBy"]["description"] == (
        '"create_time", "update_time" or "total_cents", optionally followed by " desc".\n'
        'Defaults to "create_time desc".'
    )


def test_nested_element_comments(widgets: dict[str, Any]) -> None:
    kind = _schema(widgets, "gwtest.v1.Widget.Kind")["description"]
    assert kind.startswith("What a widget is made for.")
    assert "- `KIND_GARDEN`: For the garden." in kind
    tags = {tag["name"]: tag.get("description", "") for tag in widgets["tags"]}
    assert tags["gwtest.v1.WidgetService"].startswith("Keeps widgets on shelves.")


def test_without_a_descriptor_set_there_are_no_descriptions(bundled: dict[str, Any]) -> None:
    # grpc_health ships no descriptor set: documented all the same, just undescribed.
    tags = {tag["name"]: tag for tag in bundled["tags"]}
    assert "description" not in tags["grpc.health.v1.Health"]
    check = _operations(bundled)["Health_Check"]
    assert "summary" not in check
    assert "description" not in _schema(bundled, "grpc.health.v1.HealthCheckRequest")


def test_unreadable_descriptor_sets_are_ignored(tmp_path: Path) -> None:
    broken = tmp_path / DESCRIPTOR_SET_NAME
    broken.write_bytes(b"\xff\xff not a descriptor set")
    assert openapi._read_set(broken) == {}
    assert openapi._read_set(tmp_path / "missing.binpb") == {}


def test_descriptor_sets_on_sys_path_are_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A contract whose module is not imported: only the sys.path search can find it.
    proto = tmp_path / "proto" / "side" / "v1"
    proto.mkdir(parents=True)
    (proto / "side.proto").write_text(
        'syntax = "proto3";\npackage side.v1;\n// A thing.\nmessage Thing {\n'
        "  // Its name.\n  string name = 1; // (trailing)\n  int32 size = 2; // How big.\n}\n"
    )
    out = tmp_path / "out"
    generate(tmp_path / "proto", out)
    monkeypatch.syspath_prepend(str(out))
    file: Any = SimpleNamespace(name="side/v1/side.proto")
    comments = openapi._Comments()
    assert comments.text(file, "side.v1.Thing") == "A thing."
    assert comments.text(file, "side.v1.Thing.name") == "Its name."
    # Without a leading comment the trailing one is used.
    assert comments.text(file, "side.v1.Thing.size") == "How big."
    assert comments.text(file, "side.v1.Other") == ""


def test_codegen_writes_the_descriptor_set_next_to_the_modules(gwtest: ModuleType) -> None:
    folder = Path(gwtest.__file__).resolve().parent
    files = openapi._read_set(folder / DESCRIPTOR_SET_NAME)
    assert "gwtest/v1/gwtest.proto" in files
    assert files["gwtest/v1/gwtest.proto"]["gwtest.v1.Widget.title"] == "Display title."


# Security ---------------------------------------------------------------------------


def test_security_follows_the_effective_policy(oapolicy: ModuleType) -> None:
    bindings = _bindings(oapolicy.DESCRIPTOR.services_by_name["GuardedService"])
    document = openapi_document(bindings, JsonOptions())
    operations = _operations(document)
    assert operations["GuardedService_Open"]["security"] == []
    assert "public" in operations["GuardedService_Open"]["description"]
    assert operations["GuardedService_Member"]["security"] == [{"bearerAuth": []}]
    assert operations["GuardedService_Purge"]["security"] == [{"bearerAuth": []}]
    assert "`widgets.purge` (SCOPE_ALL)" in operations["GuardedService_Purge"]["description"]
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
    }


def test_bundled_security(bundled: dict[str, Any]) -> None:
    operations = _operations(bundled)
    assert operations["OrdersService_CreateOrder"]["security"] == [{"bearerAuth": []}]
    assert "`orders.create` (SCOPE_OWN)" in operations["OrdersService_CreateOrder"]["description"]
    # The service default applies to methods without a policy of their own.
    assert "`admin.read` (SCOPE_ALL)" in operations["AdminService_ListPlugins"]["description"]
    assert operations["AdminService_ListPlugins"]["security"] == [{"bearerAuth": []}]
    # Health has no policy in its contract, but the host serves it to anyone (probes
    # carry no token): the document says what the host enforces.
    for name in ("Health_Check", "Health_Watch"):
        assert operations[name]["security"] == []
        assert "public" in operations[name]["description"]


def test_every_operation_needs_a_token_exactly_when_the_host_demands_one(
    bundled: dict[str, Any],
) -> None:
    from nexus_grpc.access.policy import Access, effective_policy

    pool = descriptor_pool.Default()
    seen = 0
    for operation in _operations(bundled).values():
        service, _, name = operation["x-grpc-method"].strip("/").partition("/")
        method = pool.FindServiceByName(service).methods_by_name[name]
        public = effective_policy(method).access == Access.PUBLIC
        assert (operation["security"] == []) is public, operation["operationId"]
        seen += public
    assert seen >= 2  # Health.Check and Health.Watch


# Caching ----------------------------------------------------------------------------


def test_document_is_cached_per_bindings_tuple(gwtest: ModuleType) -> None:
    bindings = _bindings(gwtest.DESCRIPTOR.services_by_name["WidgetService"])
    first = openapi_document(bindings, JsonOptions())
    assert openapi_document(bindings, JsonOptions()) is first
    assert openapi_document(bindings, JsonOptions(), title="other") is not first
    fresh = tuple(list(bindings))
    rebuilt = openapi_document(fresh, JsonOptions())
    assert rebuilt is not first and rebuilt == first
    as_list = list(bindings)
    assert openapi_document(as_list, JsonOptions()) is not openapi_document(as_list, JsonOptions())


# Field rules ------------------------------------------------------------------------


def test_field_rules_appear_in_the_schemas(bundled: dict[str, Any]) -> None:
    # Enforced by the validation stage; a client generated from the document must
    # know them (they were missing: the contract and the behaviour disagreed).
    item = _schema(bundled, "nexus.orders.v1.LineItem")
    assert item["required"] == ["sku"]
    sku = item["properties"]["sku"]
    assert sku["pattern"] == "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
    assert sku["minLength"] == 1
    quantity = item["properties"]["quantity"]
    assert (quantity["minimum"], quantity["maximum"]) == (1, 10000)
    price = item["properties"]["unitPriceCents"]
    assert (price["minimum"], price["maximum"]) == (0, 1000000000000)
    order = _schema(bundled, "nexus.orders.v1.Order")
    assert order["properties"]["note"]["maxLength"] == 500
    assert order["properties"]["items"]["maxItems"] == 100
    assert "required" not in order


def test_field_rules_apply_to_path_and_query_parameters(bundled: dict[str, Any]) -> None:
    operations = _operations(bundled)
    order_id = _params(operations["OrdersService_GetOrder"], "path")["id"]["schema"]
    assert order_id["pattern"] == "^[a-z0-9][a-z0-9-]{0,62}$"
    page_size = _params(operations["OrdersService_ListOrders"], "query")["pageSize"]["schema"]
    assert (page_size["minimum"], page_size["maximum"]) == (0, 1000)


def test_a_required_field_of_a_body_is_listed_as_required(bundled: dict[str, Any]) -> None:
    cancel = _body_schema(_operations(bundled)["OrdersService_CancelOrder"])
    # CancelOrder binds id from the path: the body's schema has reason only, and
    # must not require what it does not contain.
    assert "id" not in cancel.get("properties", {})
    assert "required" not in cancel
    assert cancel["properties"]["reason"]["maxLength"] == 500
