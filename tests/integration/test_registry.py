"""The embedded registry as a real process, driven by confluent-kafka's client and raw HTTP."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from app.embedded.process import (
    ChildProcess,
    ServiceStartError,
    free_port,
    http_ready,
    python_module,
)

pytestmark = pytest.mark.integration

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


def record(*fields: tuple[str, Any] | tuple[str, Any, Any], name: str = "Product") -> str:
    """An Avro record schema: each field is ``(name, type)`` or ``(name, type, default)``."""
    out = []
    for field in fields:
        entry: dict[str, Any] = {"name": field[0], "type": field[1]}
        if len(field) == 3:
            entry["default"] = field[2]
        out.append(entry)
    return json.dumps({"type": "record", "name": name, "fields": out})


BASE = record(("id", "string"), ("price", "string"))
EVOLUTIONS = {
    "add_field_with_default": record(
        ("id", "string"), ("price", "string"), ("color", "string", "red")
    ),
    "add_field_without_default": record(("id", "string"), ("price", "string"), ("color", "string")),
    "remove_field": record(("id", "string")),
    "change_type_string_to_int": record(("id", "string"), ("price", "int")),
}
ACCEPTS = {
    "NONE": set(EVOLUTIONS),
    "BACKWARD": {"add_field_with_default", "remove_field"},
    "BACKWARD_TRANSITIVE": {"add_field_with_default", "remove_field"},
    "FORWARD": {"add_field_with_default", "add_field_without_default"},
    "FORWARD_TRANSITIVE": {"add_field_with_default", "add_field_without_default"},
    "FULL": {"add_field_with_default"},
    "FULL_TRANSITIVE": {"add_field_with_default"},
}
# v3 is compatible with v2 but not with v1 in the direction(s) the level checks.
CHAINS = {
    "add_default_then_drop_default": [
        record(("id", "string")),
        record(("id", "string"), ("color", "string", "red")),
        record(("id", "string"), ("color", "string")),
    ],
    "give_default_then_remove": [
        record(("id", "string"), ("price", "string")),
        record(("id", "string"), ("price", "string", "0")),
        record(("id", "string")),
    ],
}
CHAIN_ACCEPTS_V3 = {
    "NONE": set(CHAINS),
    "BACKWARD": set(CHAINS),
    "BACKWARD_TRANSITIVE": {"give_default_then_remove"},
    "FORWARD": set(CHAINS),
    "FORWARD_TRANSITIVE": {"add_default_then_drop_default"},
    "FULL": set(CHAINS),
    "FULL_TRANSITIVE": set(),
}


@dataclass
class Registry:
    url: str
    data_dir: Path
    process: ChildProcess


@contextmanager
def running_registry(data_dir: Path, log_path: Path) -> Iterator[Registry]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = ChildProcess(
        name="registry",
        argv=python_module(
            "app.embedded.registry",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
        ),
        ready=http_ready(url + "/health"),
        log_path=log_path,
    )
    process.start()
    try:
        process.wait_ready(timeout_s=30)
        yield Registry(url, data_dir, process)
    finally:
        process.stop()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    root = tmp_path_factory.mktemp("registry")
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
    return f"test-{uuid.uuid4().hex[:8]}-value"


def post_schema(http: httpx.Client, path: str, schema: str, **extra: Any) -> httpx.Response:
    return http.post(path, json={"schema": schema, **extra}, headers={"Content-Type": CONTENT_TYPE})


def set_level(http: httpx.Client, subject: str, level: str) -> None:
    response = http.put(f"/config/{subject}", json={"compatibility": level})
    assert response.status_code == 200, response.text


# -- basics ----------------------------------------------------------------------------------


def test_health_root_and_schema_types(http: httpx.Client) -> None:
    health = http.get("/health")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert health.headers["content-type"].startswith(CONTENT_TYPE)
    assert http.get("/").json() == {}
    assert http.get("/schemas/types").json() == ["AVRO"]


@pytest.mark.parametrize(
    "content_type",
    [
        "application/vnd.schemaregistry.v1+json",
        "application/vnd.schemaregistry+json",
        "application/json",
        "application/json; charset=utf-8",
        "application/octet-stream",
        None,
    ],
)
def test_confluent_content_types_are_accepted(
    http: httpx.Client, subject: str, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    body = json.dumps({"schema": BASE}).encode()
    request = http.build_request("POST", f"/subjects/{subject}/versions", content=body)
    request.headers.pop("Content-Type", None)
    request.headers.update(headers)
    response = http.send(request)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(CONTENT_TYPE)
    assert response.json()["version"] == 1


def test_other_content_types_are_refused(http: httpx.Client, subject: str) -> None:
    response = http.post(
        f"/subjects/{subject}/versions",
        content=json.dumps({"schema": BASE}),
        headers={"Content-Type": "text/plain"},
    )
    assert response.status_code == 415
    assert response.json()["error_code"] == 415


# -- confluent-kafka's client and serializers -------------------------------------------------


def test_client_round_trip(client: SchemaRegistryClient, subject: str) -> None:
    schema = Schema(BASE, "AVRO")
    schema_id = client.register_schema(subject, schema)
    client.clear_caches()  # make every read below a request to the registry
    assert json.loads(client.get_schema(schema_id).schema_str or "") == json.loads(BASE)

    found = client.lookup_schema(subject, schema)
    assert (found.schema_id, found.version, found.subject) == (schema_id, 1, subject)
    assert subject in client.get_subjects()
    assert client.get_versions(subject) == [1]
    latest = client.get_latest_version(subject)
    assert (latest.schema_id, latest.version) == (schema_id, 1)
    assert client.get_version(subject, 1).schema_id == schema_id
    # Other tests register BASE too: ids are global, so the id lists their subjects as well.
    assert subject in client.get_subjects_by_schema_id(schema_id)
    assert (subject, 1) in [(v.subject, v.version) for v in client.get_schema_versions(schema_id)]

    changed = Schema(EVOLUTIONS["change_type_string_to_int"], "AVRO")
    assert client.test_compatibility(subject, changed) is False
    assert client.test_compatibility_all_versions(subject, changed) is False
    assert client.test_compatibility(subject, Schema(EVOLUTIONS["remove_field"], "AVRO")) is True

    assert client.get_compatibility() == "BACKWARD"
    client.set_compatibility(subject, "NONE")
    assert str(client.get_config(subject).compatibility_level) == "NONE"
    assert client.test_compatibility(subject, changed) is True
    new_id = client.register_schema(subject, changed)
    assert new_id != schema_id
    assert client.get_versions(subject) == [1, 2]
    assert str(client.delete_config(subject).compatibility_level) == "NONE"

    assert client.delete_version(subject, 2) == 2
    assert client.get_versions(subject) == [1]
    assert client.get_versions(subject, deleted=True) == [1, 2]
    assert client.delete_subject(subject) == [1]
    assert subject not in client.get_subjects()
    assert subject in client.get_subjects(deleted=True)
    assert client.delete_subject(subject, permanent=True) == [1, 2]
    assert subject not in client.get_subjects(deleted=True)


def test_subject_names_are_url_decoded(client: SchemaRegistryClient) -> None:
    subject = f"team/{uuid.uuid4().hex[:6]}:orders value"
    schema_id = client.register_schema(subject, Schema(BASE, "AVRO"))
    assert client.get_latest_version(subject).schema_id == schema_id
    assert subject in client.get_subjects()


def test_avro_serializer_and_deserializer_round_trip(registry: Registry) -> None:
    topic = f"events-{uuid.uuid4().hex[:8]}"
    ctx = SerializationContext(topic, MessageField.VALUE)
    schema = record(("user_id", "string"), ("amount", "double"), name="Purchase")
    event = {"user_id": "u-1", "amount": 9.5}

    writer_client = SchemaRegistryClient({"url": registry.url})
    serializer = AvroSerializer(writer_client, schema, conf={"auto.register.schemas": True})
    payload = serializer(event, ctx)
    registered = writer_client.get_latest_version(f"{topic}-value")
    assert payload[0] == 0 and int.from_bytes(payload[1:5], "big") == registered.schema_id

    # A fresh client (empty cache) resolves the id through the registry.
    deserializer = AvroDeserializer(SchemaRegistryClient({"url": registry.url}))
    assert deserializer(payload, ctx) == event

    # Second run: never register, write with whatever the subject's latest version is.
    latest_serializer = AvroSerializer(
        SchemaRegistryClient({"url": registry.url}),
        schema,
        conf={"auto.register.schemas": False, "use.latest.version": True},
    )
    second = latest_serializer({"user_id": "u-2", "amount": 1.0}, ctx)
    assert second[1:5] == payload[1:5]
    latest_deserializer = AvroDeserializer(
        SchemaRegistryClient({"url": registry.url}), conf={"use.latest.version": True}
    )
    assert latest_deserializer(second, ctx) == {"user_id": "u-2", "amount": 1.0}
    assert writer_client.get_versions(f"{topic}-value") == [1]


# -- ids -----------------------------------------------------------------------------------


def test_same_schema_twice_gets_the_same_id(http: httpx.Client, subject: str) -> None:
    first = post_schema(http, f"/subjects/{subject}/versions", BASE).json()
    reformatted = json.dumps(json.loads(BASE), indent=2, sort_keys=True)
    second = post_schema(http, f"/subjects/{subject}/versions", reformatted).json()
    assert (second["id"], second["version"]) == (first["id"], first["version"])
    assert http.get(f"/subjects/{subject}/versions").json() == [1]
    looked_up = post_schema(http, f"/subjects/{subject}", reformatted).json()
    assert (looked_up["id"], looked_up["version"]) == (first["id"], 1)


def test_ids_are_global_and_never_reused(http: httpx.Client, subject: str) -> None:
    unique = record(("n", "string"), ("tag", "string", uuid.uuid4().hex))
    a = post_schema(http, f"/subjects/{subject}/versions", unique).json()["id"]
    b = post_schema(http, f"/subjects/{subject}-other/versions", unique).json()["id"]
    assert a == b
    for s in (subject, f"{subject}-other"):
        assert http.delete(f"/subjects/{s}").status_code == 200
        assert http.delete(f"/subjects/{s}", params={"permanent": "true"}).status_code == 200
    gone = http.get(f"/schemas/ids/{a}")
    assert (gone.status_code, gone.json()["error_code"]) == (404, 40403)
    fresh = record(("n", "string"), ("tag", "string", uuid.uuid4().hex))
    assert post_schema(http, f"/subjects/{subject}/versions", fresh).json()["id"] > a


def test_concurrent_registrations_get_distinct_ids(http: httpx.Client, subject: str) -> None:
    schemas = [record(("n", "string"), ("k", "string", f"{subject}-{i}")) for i in range(24)]

    def register(i: int) -> int:
        with httpx.Client(base_url=str(http.base_url), timeout=10) as own:
            response = post_schema(own, f"/subjects/{subject}-{i}/versions", schemas[i])
            assert response.status_code == 200, response.text
            return int(response.json()["id"])

    with ThreadPoolExecutor(max_workers=12) as pool:
        ids = list(pool.map(register, range(len(schemas))))
    assert len(set(ids)) == len(ids)
    assert sorted(ids) == list(range(min(ids), min(ids) + len(ids)))


# -- compatibility ---------------------------------------------------------------------------


@pytest.mark.parametrize("level", list(ACCEPTS))
def test_each_level_accepts_and_refuses_the_right_evolutions(
    http: httpx.Client, subject: str, level: str
) -> None:
    for evolution, schema in EVOLUTIONS.items():
        s = f"{subject}-{evolution}"
        set_level(http, s, level)
        assert post_schema(http, f"/subjects/{s}/versions", BASE).status_code == 200
        verdict = post_schema(http, f"/compatibility/subjects/{s}/versions/latest", schema).json()
        response = post_schema(http, f"/subjects/{s}/versions", schema)
        accepted = evolution in ACCEPTS[level]
        assert verdict["is_compatible"] is accepted, (level, evolution)
        assert response.status_code == (200 if accepted else 409), (level, evolution)
        assert http.get(f"/subjects/{s}/versions").json() == ([1, 2] if accepted else [1])


@pytest.mark.parametrize("level", list(CHAIN_ACCEPTS_V3))
def test_transitive_levels_check_all_versions(http: httpx.Client, subject: str, level: str) -> None:
    for chain, (v1, v2, v3) in CHAINS.items():
        s = f"{subject}-{chain}"
        set_level(http, s, level)
        for schema in (v1, v2):
            assert post_schema(http, f"/subjects/{s}/versions", schema).status_code == 200
        response = post_schema(http, f"/subjects/{s}/versions", v3)
        expected = 200 if chain in CHAIN_ACCEPTS_V3[level] else 409
        assert response.status_code == expected, (level, chain, response.text)


def test_incompatible_change_gets_409_naming_the_field(http: httpx.Client, subject: str) -> None:
    post_schema(http, f"/subjects/{subject}/versions", BASE)
    changed = EVOLUTIONS["change_type_string_to_int"]
    response = post_schema(http, f"/subjects/{subject}/versions", changed)
    assert response.status_code == 409
    body = response.json()
    assert body["error_code"] == 409
    assert "price" in body["message"] and "BACKWARD" in body["message"]

    path = f"/compatibility/subjects/{subject}/versions"
    quiet = post_schema(http, path, changed).json()
    assert quiet == {"is_compatible": False, "messages": []}
    verbose = http.post(path, params={"verbose": "true"}, json={"schema": changed}).json()
    assert verbose["is_compatible"] is False
    assert any("price" in message for message in verbose["messages"])


def test_config_endpoints(http: httpx.Client, subject: str) -> None:
    assert http.get("/config").json() == {"compatibilityLevel": "BACKWARD"}
    missing = http.get(f"/config/{subject}")
    assert (missing.status_code, missing.json()["error_code"]) == (404, 40408)
    assert http.get(f"/config/{subject}", params={"defaultToGlobal": "true"}).json() == {
        "compatibilityLevel": "BACKWARD"
    }
    assert http.put(f"/config/{subject}", json={"compatibility": "full"}).json() == {
        "compatibility": "FULL"
    }
    assert http.get(f"/config/{subject}").json() == {"compatibilityLevel": "FULL"}
    assert http.delete(f"/config/{subject}").json() == {"compatibilityLevel": "FULL"}
    assert http.get(f"/config/{subject}").status_code == 404


def test_global_level_is_enforced(http: httpx.Client, subject: str) -> None:
    assert http.put("/config", json={"compatibility": "NONE"}).json() == {"compatibility": "NONE"}
    try:
        post_schema(http, f"/subjects/{subject}/versions", BASE)
        changed = post_schema(
            http, f"/subjects/{subject}/versions", EVOLUTIONS["change_type_string_to_int"]
        )
        assert changed.status_code == 200
    finally:
        assert http.delete("/config").json() == {"compatibilityLevel": "NONE"}
    assert http.get("/config").json() == {"compatibilityLevel": "BACKWARD"}


# -- deletion ------------------------------------------------------------------------------


def test_soft_deleted_versions_are_hidden_unless_asked_for(
    http: httpx.Client, subject: str
) -> None:
    first = post_schema(http, f"/subjects/{subject}/versions", BASE).json()
    post_schema(http, f"/subjects/{subject}/versions", EVOLUTIONS["add_field_with_default"])
    assert http.delete(f"/subjects/{subject}/versions/1").json() == 1
    assert http.get(f"/subjects/{subject}/versions").json() == [2]
    assert http.get(f"/subjects/{subject}/versions", params={"deleted": "true"}).json() == [1, 2]
    hidden = http.get(f"/subjects/{subject}/versions/1")
    assert (hidden.status_code, hidden.json()["error_code"]) == (404, 40402)
    shown = http.get(f"/subjects/{subject}/versions/1", params={"deleted": "true"})
    assert shown.json()["id"] == first["id"]
    # A soft-deleted schema still resolves by id: consumers of old messages keep working.
    assert http.get(f"/schemas/ids/{first['id']}").status_code == 200
    # Registering it again makes a new version with the same id, as Confluent does.
    again = post_schema(http, f"/subjects/{subject}/versions", BASE).json()
    assert (again["id"], again["version"]) == (first["id"], 3)
    assert http.get(f"/subjects/{subject}/versions", params={"deleted": "true"}).json() == [2, 3]


def test_raw_schema_endpoints(http: httpx.Client, subject: str) -> None:
    schema_id = post_schema(http, f"/subjects/{subject}/versions", BASE).json()["id"]
    assert json.loads(http.get(f"/subjects/{subject}/versions/latest/schema").text) == json.loads(
        BASE
    )
    assert json.loads(http.get(f"/schemas/ids/{schema_id}/schema").text) == json.loads(BASE)


# -- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("GET", "/subjects/{s}-missing/versions", None, 404, 40401),
        ("GET", "/subjects/{s}/versions/99", None, 404, 40402),
        ("GET", "/schemas/ids/99999999", None, 404, 40403),
        ("POST", "/subjects/{s}", {"schema": EVOLUTIONS["remove_field"]}, 404, 40403),
        ("POST", "/subjects/{s}/versions", {"schema": "{not json"}, 422, 42201),
        ("POST", "/subjects/{s}/versions", {"schema": '{"type": "recordx"}'}, 422, 42201),
        ("POST", "/subjects/{s}/versions", {"schema": "{}", "schemaType": "JSON"}, 422, 42201),
        ("POST", "/subjects/{s}/versions", {}, 422, 42201),
        ("GET", "/subjects/{s}/versions/abc", None, 422, 42202),
        ("GET", "/subjects/{s}/versions/0", None, 422, 42202),
        ("PUT", "/config", {"compatibility": "SIDEWAYS"}, 422, 42203),
        ("PUT", "/config/{s}", {"compatibility": "SIDEWAYS"}, 422, 42203),
        ("DELETE", "/subjects/{s}?permanent=true", None, 404, 40405),
        ("DELETE", "/subjects/{s}/versions/1?permanent=true", None, 404, 40407),
        ("GET", "/config/{s}", None, 404, 40408),
        ("GET", "/associations/resources/-/orders", None, 404, 404),
        ("GET", "/no/such/path", None, 404, 404),
    ],
)
def test_error_codes(
    http: httpx.Client, subject: str, method: str, path: str, body: Any, status: int, code: int
) -> None:
    post_schema(http, f"/subjects/{subject}/versions", BASE)
    response = http.request(method, path.format(s=subject), json=body)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["error_code"] == code
    assert isinstance(error["message"], str) and error["message"]


def test_incompatible_error_reaches_the_client_as_409(
    client: SchemaRegistryClient, subject: str
) -> None:
    client.register_schema(subject, Schema(BASE, "AVRO"))
    with pytest.raises(SchemaRegistryError) as info:
        client.register_schema(subject, Schema(EVOLUTIONS["change_type_string_to_int"], "AVRO"))
    assert (info.value.http_status_code, info.value.error_code) == (409, 409)
    assert "price" in info.value.error_message


def test_a_request_body_that_is_not_json_gets_400(http: httpx.Client, subject: str) -> None:
    response = http.post(
        f"/subjects/{subject}/versions", content=b"{oops", headers={"Content-Type": CONTENT_TYPE}
    )
    assert (response.status_code, response.json()["error_code"]) == (400, 400)


def test_a_store_failure_gets_50001_and_consumes_nothing(
    http: httpx.Client, registry: Registry, subject: str
) -> None:
    # A directory where the registry appends its change log makes every write fail.
    post_schema(http, f"/subjects/{subject}-first/versions", BASE)  # the log exists
    change_log = registry.data_dir / "registry.log"
    aside = change_log.rename(registry.data_dir / "registry.log.aside")
    change_log.mkdir()
    try:
        failed = post_schema(http, f"/subjects/{subject}/versions", BASE)
        assert (failed.status_code, failed.json()["error_code"]) == (500, 50001)
    finally:
        change_log.rmdir()
        aside.rename(change_log)
    assert http.get(f"/subjects/{subject}/versions").status_code == 404
    assert post_schema(http, f"/subjects/{subject}/versions", BASE).status_code == 200


# -- the process ---------------------------------------------------------------------------


def test_restart_keeps_every_id_and_state(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    schemas = [record(("id", "string"), ("v", "int", i)) for i in range(3)]
    with running_registry(data_dir, tmp_path / "first.log") as first:
        with httpx.Client(base_url=first.url) as http:
            ids = [post_schema(http, "/subjects/s/versions", s).json()["id"] for s in schemas]
            http.put("/config/s", json={"compatibility": "FULL_TRANSITIVE"})
            http.delete("/subjects/s/versions/2")
        assert first.process.stop() == 0  # SIGTERM is a clean shutdown

    with (
        running_registry(data_dir, tmp_path / "second.log") as second,
        httpx.Client(base_url=second.url) as http,
    ):
        for schema, schema_id in zip(schemas, ids, strict=True):
            stored = http.get(f"/schemas/ids/{schema_id}").json()["schema"]
            assert json.loads(stored) == json.loads(schema)
        assert http.get("/subjects/s/versions").json() == [1, 3]
        assert http.get("/config/s").json() == {"compatibilityLevel": "FULL_TRANSITIVE"}
        again = post_schema(http, "/subjects/s/versions", schemas[0]).json()
        assert (again["id"], again["version"]) == (ids[0], 1)
        new = post_schema(http, "/subjects/other/versions", record(("z", "long"))).json()
        assert new["id"] == max(ids) + 1
    assert "registry_started" in (tmp_path / "second.log").read_text()


def test_a_second_registry_on_the_same_data_dir_is_refused(
    registry: Registry, tmp_path: Path
) -> None:
    with (
        pytest.raises(ServiceStartError) as info,
        running_registry(registry.data_dir, tmp_path / "intruder.log"),
    ):
        pass
    assert "exited with code 1" in str(info.value)
    assert "in use by another registry process" in (tmp_path / "intruder.log").read_text()
