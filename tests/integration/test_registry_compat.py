"""Confluent Schema Registry compatibility of the embedded registry: every endpoint, error code
and mode, driven the way clients drive a Confluent registry.

In the spirit of confluent-kafka-python's own schema-registry integration tests, written here:
confluent-kafka's ``SchemaRegistryClient`` where it has a method for the endpoint, plain HTTP
for the rest and for exact status codes and bodies. One registry process serves the module;
tests that change the global mode put it back.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka.schema_registry import Schema, SchemaReference, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from tests.integration.test_registry import (
    BASE,
    CONTENT_TYPE,
    EVOLUTIONS,
    Registry,
    post_schema,
    record,
    running_registry,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    root = tmp_path_factory.mktemp("registry-compat")
    with running_registry(root / "data", root / "registry.log") as running:
        yield running


@pytest.fixture
def http(registry: Registry) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=registry.url, timeout=10) as client:
        yield client


@pytest.fixture
def client(registry: Registry) -> SchemaRegistryClient:
    return SchemaRegistryClient({"url": registry.url})


@pytest.fixture
def subject() -> str:
    return f"compat-{uuid.uuid4().hex[:8]}-value"


@pytest.fixture
def global_mode(http: httpx.Client) -> Iterator[None]:
    """Tests that change the global mode get READWRITE back afterwards."""
    try:
        yield
    finally:
        http.put("/mode?force=true", json={"mode": "READWRITE"})


def error(response: httpx.Response) -> tuple[int, int]:
    return response.status_code, response.json()["error_code"]


def avro(text: str) -> Schema:
    return Schema(text, "AVRO")


# -- reading endpoints ----------------------------------------------------------------------


def test_root_types_and_contexts(http: httpx.Client, client: SchemaRegistryClient) -> None:
    assert http.get("/").json() == {}
    assert client.get_schema_types() == ["AVRO"]
    assert client.get_contexts() == ["."]
    response = http.get("/contexts")
    assert response.headers["content-type"].startswith(CONTENT_TYPE)


def test_every_schema_lookup_endpoint(
    http: httpx.Client, client: SchemaRegistryClient, subject: str
) -> None:
    schema_id = client.register_schema(subject, avro(BASE))
    registered = client.get_latest_version(subject)
    assert (registered.schema_id, registered.version) == (schema_id, 1)
    assert json.loads(client.get_schema(schema_id).schema_str) == json.loads(BASE)
    assert client.get_subjects_by_schema_id(schema_id) == [subject] or subject in (
        client.get_subjects_by_schema_id(schema_id)
    )
    versions = http.get(f"/schemas/ids/{schema_id}/versions").json()
    assert {"subject": subject, "version": 1} in versions
    assert json.loads(http.get(f"/schemas/ids/{schema_id}/schema").text) == json.loads(BASE)
    guid = http.get(f"/schemas/ids/{schema_id}").json()["guid"]
    assert http.get(f"/schemas/guids/{guid}").json()["id"] == schema_id
    assert client.get_version(subject, 1).schema_id == schema_id
    assert json.loads(http.get(f"/subjects/{subject}/versions/1/schema").text) == json.loads(BASE)
    assert client.lookup_schema(subject, avro(BASE)).version == 1
    assert subject in client.get_subjects()
    assert http.get("/subjects", params={"subjectPrefix": subject}).json() == [subject]


def test_get_schemas_lists_subject_versions(http: httpx.Client, subject: str) -> None:
    post_schema(http, f"/subjects/{subject}/versions", BASE)
    post_schema(http, f"/subjects/{subject}/versions", EVOLUTIONS["add_field_with_default"])
    listed = http.get("/schemas", params={"subjectPrefix": subject}).json()
    assert [(s["subject"], s["version"]) for s in listed] == [(subject, 1), (subject, 2)]
    assert all({"id", "schema"} <= set(s) for s in listed)
    latest = http.get("/schemas", params={"subjectPrefix": subject, "latestOnly": "true"}).json()
    assert [s["version"] for s in latest] == [2]
    page = http.get("/schemas", params={"subjectPrefix": subject, "offset": 1, "limit": 1}).json()
    assert [s["version"] for s in page] == [2]
    http.delete(f"/subjects/{subject}/versions/1")
    assert [
        s["version"] for s in http.get("/schemas", params={"subjectPrefix": subject}).json()
    ] == [2]
    with_deleted = http.get("/schemas", params={"subjectPrefix": subject, "deleted": "true"})
    assert [s["version"] for s in with_deleted.json()] == [1, 2]


def test_references_and_referenced_by(client: SchemaRegistryClient, subject: str) -> None:
    address = json.dumps(
        {"type": "record", "name": "Address", "namespace": "rv",
         "fields": [{"name": "zip", "type": "string"}]}
    )  # fmt: skip
    customer = json.dumps(
        {"type": "record", "name": "Customer", "namespace": "rv",
         "fields": [{"name": "address", "type": "rv.Address"}]}
    )  # fmt: skip
    client.register_schema(f"{subject}-address", avro(address))
    ref = SchemaReference("rv.Address", f"{subject}-address", 1)
    customer_id = client.register_schema(subject, Schema(customer, "AVRO", [ref]))
    assert client.get_referenced_by(f"{subject}-address", 1) == [customer_id]
    with pytest.raises(SchemaRegistryError) as info:
        client.delete_subject(f"{subject}-address")
    assert info.value.error_code == 42206


# -- compatibility --------------------------------------------------------------------------


def test_compatibility_endpoints_and_verbose(
    http: httpx.Client, client: SchemaRegistryClient, subject: str
) -> None:
    client.register_schema(subject, avro(BASE))
    assert client.test_compatibility(subject, avro(EVOLUTIONS["add_field_with_default"]))
    assert not client.test_compatibility(subject, avro(EVOLUTIONS["change_type_string_to_int"]))
    path = f"/compatibility/subjects/{subject}/versions"
    verbose = post_schema(http, path + "?verbose=true", EVOLUTIONS["change_type_string_to_int"])
    body = verbose.json()
    assert body["is_compatible"] is False and any("price" in m for m in body["messages"])
    quiet = post_schema(http, path + "/latest", EVOLUTIONS["change_type_string_to_int"]).json()
    assert quiet == {"is_compatible": False, "messages": []}


def test_verbose_compatibility_of_an_invalid_schema_is_a_verdict(
    http: httpx.Client, subject: str
) -> None:
    post_schema(http, f"/subjects/{subject}/versions", BASE)
    path = f"/compatibility/subjects/{subject}/versions/latest"
    verbose = post_schema(http, path + "?verbose=true", '{"type": "recurd"}')
    assert verbose.status_code == 200
    body = verbose.json()
    assert body["is_compatible"] is False and body["messages"][0].startswith("Invalid schema")
    assert error(post_schema(http, path, '{"type": "recurd"}')) == (422, 42201)


def test_recursive_schema_incompatible_change_is_a_clean_verdict(
    http: httpx.Client, registry: Registry, subject: str
) -> None:
    def node(value: str) -> str:
        return json.dumps(
            {
                "type": "record",
                "name": "Node",
                "fields": [
                    {"name": "value", "type": value},
                    {"name": "next", "type": "Node"},
                    {"name": "rest", "type": ["null", "Node"], "default": None},
                ],
            }
        )

    assert post_schema(http, f"/subjects/{subject}/versions", node("long")).status_code == 200
    check = post_schema(
        http, f"/compatibility/subjects/{subject}/versions/latest?verbose=true", node("int")
    )
    assert check.status_code == 200
    assert check.json()["is_compatible"] is False
    refused = post_schema(http, f"/subjects/{subject}/versions", node("int"))
    assert error(refused) == (409, 409)
    assert "Traceback" not in (registry.data_dir.parent / "registry.log").read_text()


# -- configuration --------------------------------------------------------------------------


def test_config_round_trip_with_the_client(client: SchemaRegistryClient, subject: str) -> None:
    assert client.set_compatibility(subject, "FULL") == {"compatibility": "FULL"}
    assert client.get_compatibility(subject) == "FULL"
    assert client.delete_config(subject).compatibility_level.value == "FULL"  # type: ignore[union-attr]
    with pytest.raises(SchemaRegistryError) as info:
        client.get_compatibility(subject)
    assert (info.value.http_status_code, info.value.error_code) == (404, 40408)


def test_normalize_config_and_query(http: httpx.Client, subject: str) -> None:
    def thing(aliases: list[str]) -> str:
        return json.dumps(
            {"type": "record", "name": "Thing", "namespace": "rv", "aliases": aliases,
             "fields": [{"name": "a", "type": "string", "aliases": aliases}]}
        )  # fmt: skip

    first = post_schema(http, f"/subjects/{subject}/versions?normalize=true", thing(["x", "y"]))
    again = post_schema(http, f"/subjects/{subject}/versions?normalize=true", thing(["y", "x"]))
    assert first.json()["id"] == again.json()["id"] and again.json()["version"] == 1
    found = post_schema(http, f"/subjects/{subject}?normalize=true", thing(["y", "x"]))
    assert found.json()["version"] == 1
    assert error(post_schema(http, f"/subjects/{subject}", thing(["y", "x"]))) == (404, 40403)
    # normalize as the subject's own config
    other = f"{subject}-cfg"
    assert http.put(f"/config/{other}", json={"normalize": True}).status_code == 200
    assert http.get(f"/config/{other}", params={"defaultToGlobal": "true"}).json() == {
        "compatibilityLevel": "BACKWARD",
        "normalize": True,
    }
    a = post_schema(http, f"/subjects/{other}/versions", thing(["x", "y"])).json()
    b = post_schema(http, f"/subjects/{other}/versions", thing(["y", "x"])).json()
    assert (a["id"], a["version"]) == (b["id"], b["version"])


# -- modes ----------------------------------------------------------------------------------


def test_mode_endpoints_with_the_client(
    client: SchemaRegistryClient, http: httpx.Client, subject: str
) -> None:
    assert client.get_global_mode() == "READWRITE"
    response = http.get(f"/mode/{subject}")
    assert error(response) == (404, 40409)
    assert "does not have subject-level mode configured" in response.json()["message"]
    assert http.get(f"/mode/{subject}", params={"defaultToGlobal": "true"}).json() == {
        "mode": "READWRITE"
    }
    assert client.update_mode(subject, "READONLY") == "READONLY"
    assert client.get_mode(subject) == "READONLY"
    assert client.delete_mode(subject) == "READONLY"
    assert error(http.delete(f"/mode/{subject}")) == (404, 40401)


@pytest.mark.parametrize("body", [{"mode": "READ_ONLY"}, {"mode": None}, {}, {"mode": 3}])
def test_an_invalid_mode_is_42204(http: httpx.Client, subject: str, body: dict[str, Any]) -> None:
    assert error(http.put(f"/mode/{subject}", json=body)) == (422, 42204)
    assert error(http.put("/mode", json=body)) == (422, 42204)


def test_readonly_subject_refuses_changes_and_serves_reads(
    client: SchemaRegistryClient, http: httpx.Client, subject: str
) -> None:
    schema_id = client.register_schema(subject, avro(BASE))
    client.update_mode(subject, "READONLY")
    try:
        # A serializer registering the schema it already has still gets its id.
        again = post_schema(http, f"/subjects/{subject}/versions", BASE)
        assert again.status_code == 200 and again.json()["id"] == schema_id
        refusals = [
            post_schema(http, f"/subjects/{subject}/versions", EVOLUTIONS["remove_field"]),
            http.delete(f"/subjects/{subject}/versions/1"),
            http.delete(f"/subjects/{subject}"),
            http.put(f"/config/{subject}", json={"compatibility": "NONE"}),
            http.delete(f"/config/{subject}"),
        ]
        for refused in refusals:
            assert error(refused) == (422, 42205), refused.text
            assert "read-only mode" in refused.json()["message"]
        assert client.get_latest_version(subject).schema_id == schema_id
        assert client.lookup_schema(subject, avro(BASE)).version == 1
        assert client.test_compatibility(subject, avro(EVOLUTIONS["remove_field"]))
    finally:
        client.delete_mode(subject)
    assert post_schema(http, f"/subjects/{subject}/versions", EVOLUTIONS["remove_field"]).is_success


@pytest.mark.usefixtures("global_mode")
def test_global_readonly_and_override(
    client: SchemaRegistryClient, http: httpx.Client, subject: str
) -> None:
    client.update_mode(subject, "READWRITE")
    assert client.update_global_mode("READONLY") == "READONLY"
    other = f"{subject}-other"
    assert error(post_schema(http, f"/subjects/{other}/versions", BASE)) == (422, 42205)
    assert post_schema(http, f"/subjects/{subject}/versions", BASE).is_success  # own mode wins
    assert error(http.put("/config", json={"compatibility": "NONE"})) == (422, 42205)
    client.update_global_mode("READONLY_OVERRIDE")
    assert client.get_mode(subject) == "READONLY_OVERRIDE"
    assert error(
        post_schema(http, f"/subjects/{subject}/versions", EVOLUTIONS["remove_field"])
    ) == (
        422,
        42205,
    )
    client.update_global_mode("READWRITE")
    assert post_schema(http, f"/subjects/{other}/versions", BASE).is_success


@pytest.mark.usefixtures("global_mode")
def test_import_mode_keeps_source_ids_and_versions(
    client: SchemaRegistryClient, http: httpx.Client, subject: str
) -> None:
    client.register_schema(f"{subject}-existing", avro(BASE))
    refused = http.put("/mode", json={"mode": "IMPORT"})
    assert error(refused) == (422, 42205)
    assert "Cannot import since found existing subjects" in refused.json()["message"]
    assert client.update_mode(subject, "IMPORT") == "IMPORT"  # an empty subject may import
    imported = post_schema(
        http, f"/subjects/{subject}/versions", EVOLUTIONS["remove_field"], id=90_000, version=5
    )
    assert imported.is_success, imported.text
    assert (imported.json()["id"], imported.json()["version"]) == (90_000, 5)
    # No compatibility check while importing a history.
    second = post_schema(
        http, f"/subjects/{subject}/versions", EVOLUTIONS["change_type_string_to_int"], id=90_001
    )
    assert second.json()["version"] == 6
    plain = post_schema(http, f"/subjects/{subject}/versions", EVOLUTIONS["add_field_with_default"])
    assert error(plain) == (422, 42205)  # without an id: not in read-write mode
    clash = post_schema(http, f"/subjects/{subject}/versions", BASE, id=90_000)
    assert error(clash) == (422, 42205)
    client.update_mode(subject, "READWRITE")
    outside = post_schema(http, f"/subjects/{subject}-x/versions", BASE, id=90_002)
    assert error(outside) == (422, 42205)  # ids only in IMPORT mode
    fresh = post_schema(http, f"/subjects/{subject}-y/versions", record(("q", "long")))
    assert fresh.json()["id"] > 90_001
    assert client.update_global_mode("IMPORT", force=True) == "IMPORT"


# -- errors ---------------------------------------------------------------------------------


def test_error_codes_of_every_kind(http: httpx.Client, subject: str) -> None:
    missing = f"{subject}-missing"
    assert error(http.get(f"/subjects/{missing}/versions")) == (404, 40401)
    post_schema(http, f"/subjects/{subject}/versions", BASE)
    assert error(http.get(f"/subjects/{subject}/versions/9")) == (404, 40402)
    assert error(http.get("/schemas/ids/987654")) == (404, 40403)
    assert error(http.get(f"/subjects/{subject}/versions/0")) == (422, 42202)
    assert error(post_schema(http, f"/subjects/{subject}/versions", "{")) == (422, 42201)
    assert error(http.put("/config/x", json={"compatibility": "SIDEWAYS"})) == (422, 42203)
    assert error(http.get(f"/config/{subject}")) == (404, 40408)
    http.delete(f"/subjects/{subject}/versions/1")
    assert error(http.delete(f"/subjects/{subject}/versions/1")) == (404, 40406)
    post_schema(http, f"/subjects/{subject}/versions", EVOLUTIONS["remove_field"])
    assert error(http.delete(f"/subjects/{subject}/versions/2?permanent=true")) == (404, 40407)
    http.delete(f"/subjects/{subject}")
    assert error(http.delete(f"/subjects/{subject}")) == (404, 40404)
    other = f"{subject}-live"
    post_schema(http, f"/subjects/{other}/versions", BASE)
    assert error(http.delete(f"/subjects/{other}?permanent=true")) == (404, 40405)
    assert error(
        post_schema(http, f"/subjects/{other}/versions", EVOLUTIONS["change_type_string_to_int"])
    ) == (409, 409)
    bad_type = http.post(
        f"/subjects/{other}/versions", content=b"{}", headers={"Content-Type": "text/plain"}
    )
    assert error(bad_type) == (415, 415)


def test_restart_keeps_modes_and_normalize(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with running_registry(data_dir, tmp_path / "first.log") as first:
        with httpx.Client(base_url=first.url) as http:
            post_schema(http, "/subjects/s/versions", BASE)
            http.put("/mode/s", json={"mode": "READONLY"})
            http.put("/config/t", json={"compatibility": "FULL", "normalize": True})
            http.put("/mode/fresh", json={"mode": "IMPORT"})
            post_schema(http, "/subjects/fresh/versions", BASE, id=77, version=3)
        assert first.process.stop() == 0
    with (
        running_registry(data_dir, tmp_path / "second.log") as second,
        httpx.Client(base_url=second.url) as http,
    ):
        assert http.get("/mode/s").json() == {"mode": "READONLY"}
        assert http.get("/config/t").json() == {"compatibilityLevel": "FULL", "normalize": True}
        assert http.get("/subjects/fresh/versions/3").json()["id"] == 77
        assert error(post_schema(http, "/subjects/s/versions", record(("z", "int")))) == (
            422,
            42205,
        )
