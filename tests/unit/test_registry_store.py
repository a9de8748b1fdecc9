"""The embedded registry's rules, without HTTP: ids, versions, deletion, compatibility, storage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.embedded.registry import storage
from app.embedded.registry.avro_schema import parse_avro
from app.embedded.registry.compatibility import CompatibilityLevel, parse_level, read_problems
from app.embedded.registry.exceptions import (
    DataDirLocked,
    IncompatibleSchema,
    InvalidCompatibilityLevel,
    InvalidMode,
    InvalidSchema,
    InvalidVersion,
    OperationNotPermitted,
    ReferenceExists,
    RegistryError,
    SchemaNotFound,
    StoreError,
    SubjectConfigNotFound,
    SubjectModeNotFound,
    SubjectNotFound,
    SubjectNotSoftDeleted,
    SubjectSoftDeleted,
    VersionNotFound,
    VersionNotSoftDeleted,
    VersionSoftDeleted,
)
from app.embedded.registry.records import Mode, Reference, parse_mode, parse_version
from app.embedded.registry.storage import DataDir
from app.embedded.registry.store import SchemaStore


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
L = CompatibilityLevel
# Which evolutions of BASE each level accepts when BASE is the only version.
ACCEPTS = {
    L.NONE: set(EVOLUTIONS),
    L.BACKWARD: {"add_field_with_default", "remove_field"},
    L.BACKWARD_TRANSITIVE: {"add_field_with_default", "remove_field"},
    L.FORWARD: {"add_field_with_default", "add_field_without_default"},
    L.FORWARD_TRANSITIVE: {"add_field_with_default", "add_field_without_default"},
    L.FULL: {"add_field_with_default"},
    L.FULL_TRANSITIVE: {"add_field_with_default"},
}

# Three-version histories where looking at the latest version only and looking at all of
# them disagree. The second schema is FULL-compatible with the first, so every level takes it.
CHAINS = {
    # v3 can read v2 (which has color) but not v1 (which lacks it, and v3 has no default).
    "add_default_then_drop_default": [
        record(("id", "string")),
        record(("id", "string"), ("color", "string", "red")),
        record(("id", "string"), ("color", "string")),
    ],
    # v2 can read v3 (price has a default in v2) but v1 cannot (no default in v1).
    "give_default_then_remove": [
        record(("id", "string"), ("price", "string")),
        record(("id", "string"), ("price", "string", "0")),
        record(("id", "string")),
    ],
}
CHAIN_ACCEPTS_V3 = {
    L.NONE: {"add_default_then_drop_default", "give_default_then_remove"},
    L.BACKWARD: {"add_default_then_drop_default", "give_default_then_remove"},
    L.BACKWARD_TRANSITIVE: {"give_default_then_remove"},
    L.FORWARD: {"add_default_then_drop_default", "give_default_then_remove"},
    L.FORWARD_TRANSITIVE: {"add_default_then_drop_default"},
    L.FULL: {"add_default_then_drop_default", "give_default_then_remove"},
    L.FULL_TRANSITIVE: set(),
}


@pytest.fixture
def store() -> SchemaStore:
    return SchemaStore()


# -- ids and versions ----------------------------------------------------------------------


def test_same_schema_twice_gets_same_id_and_no_new_version(store: SchemaStore) -> None:
    first = store.register("orders-value", BASE)
    again = store.register("orders-value", BASE)
    assert (again.schema.id, again.version) == (first.schema.id, 1)
    assert again.created is False
    assert store.versions("orders-value") == [1]


def test_whitespace_and_key_order_do_not_make_a_new_schema(store: SchemaStore) -> None:
    first = store.register("orders-value", BASE)
    reordered = json.dumps(
        {
            "fields": [{"type": "string", "name": "id"}, {"name": "price", "type": "string"}],
            "name": "Product",
            "type": "record",
        },
        indent=4,
    )
    assert store.register("orders-value", reordered).schema.id == first.schema.id
    assert store.lookup("orders-value", reordered).version == 1
    assert store.versions("orders-value") == [1]


def test_field_order_and_defaults_do_make_a_new_schema(store: SchemaStore) -> None:
    store.set_global_level(L.NONE)
    first = store.register("s", BASE).schema.id
    swapped = store.register("s", record(("price", "string"), ("id", "string"))).schema.id
    defaulted = store.register("s", record(("id", "string"), ("price", "string", "0"))).schema.id
    assert len({first, swapped, defaulted}) == 3


def test_ids_are_global_across_subjects(store: SchemaStore) -> None:
    a = store.register("a-value", BASE)
    b = store.register("b-value", BASE)
    other = store.register("c-value", EVOLUTIONS["remove_field"])
    assert b.schema.id == a.schema.id
    assert (b.version, b.created) == (1, True)
    assert other.schema.id == a.schema.id + 1
    assert store.subjects_for_id(a.schema.id) == ["a-value", "b-value"]
    assert store.versions_for_id(a.schema.id) == [("a-value", 1), ("b-value", 1)]


def test_ids_are_never_reused_after_permanent_delete(store: SchemaStore) -> None:
    old = store.register("s", BASE).schema.id
    store.delete_subject("s")
    store.delete_subject("s", permanent=True)
    with pytest.raises(SchemaNotFound):
        store.schema_by_id(old)
    new = store.register("s", EVOLUTIONS["remove_field"]).schema.id
    assert new == old + 1
    # The old content keeps its old id: an id always means the same schema.
    assert store.register("t", BASE).schema.id == old


def test_ids_survive_a_restart_and_continue_from_the_highest(tmp_path: Path) -> None:
    store = SchemaStore.open(tmp_path)
    store.set_global_level(L.NONE)
    ids = [store.register("s", schema).schema.id for schema in (BASE, *EVOLUTIONS.values())]
    store.set_subject_level("s", L.FULL)
    store.delete_version("s", 2)
    store.close()

    reopened = SchemaStore.open(tmp_path)
    assert [reopened.get_version("s", v, deleted=True).schema.id for v in range(1, 6)] == ids
    assert reopened.versions("s") == [1, 3, 4, 5]
    assert reopened.subject_level("s") is L.FULL
    assert reopened.global_level() is L.NONE
    assert reopened.register("s", BASE).schema.id == ids[0]
    assert reopened.register("other", record(("x", "int"))).schema.id == max(ids) + 1
    reopened.close()


def test_latest_version_and_explicit_versions(store: SchemaStore) -> None:
    store.register("s", BASE)
    store.register("s", EVOLUTIONS["add_field_with_default"])
    assert store.get_version("s", "latest").version == 2
    assert store.get_version("s", 1).schema.text == json.dumps(
        json.loads(BASE), separators=(",", ":")
    )
    with pytest.raises(VersionNotFound):
        store.get_version("s", 3)
    with pytest.raises(SubjectNotFound):
        store.get_version("nope", "latest")


@pytest.mark.parametrize("text", ["0", "-2", "x", "1.5", str(2**31)])
def test_invalid_versions_are_refused(text: str) -> None:
    with pytest.raises(InvalidVersion) as info:
        parse_version(text)
    assert info.value.code == 42202


@pytest.mark.parametrize(("text", "expected"), [("latest", "latest"), ("-1", "latest"), ("7", 7)])
def test_valid_versions(text: str, expected: object) -> None:
    assert parse_version(text) == expected


def test_lookup_finds_the_version_or_says_why_not(store: SchemaStore) -> None:
    store.register("s", BASE)
    assert store.lookup("s", BASE).version == 1
    with pytest.raises(SchemaNotFound) as info:
        store.lookup("s", EVOLUTIONS["remove_field"])
    assert info.value.code == 40403
    with pytest.raises(SubjectNotFound) as missing:
        store.lookup("other", BASE)
    assert missing.value.code == 40401


# -- invalid schemas -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "schema",
    [
        "{not json",
        '{"type": "recordx", "name": "P"}',
        '{"type": "record", "name": "P", "fields": [{"name": "a", "type": "Missing"}]}',
        # avro accepts this default; fastavro (the consumers' decoder) does not.
        '{"type": "record", "name": "P", "fields": [{"name": "a", "type": "int", "default": "x"}]}',
        "",
    ],
)
def test_invalid_schemas_are_refused_with_42201(store: SchemaStore, schema: str) -> None:
    with pytest.raises(InvalidSchema) as info:
        store.register("s", schema)
    assert info.value.code == 42201
    assert info.value.http_status == 422
    assert store.subjects() == []


def test_only_avro_is_supported(store: SchemaStore) -> None:
    with pytest.raises(InvalidSchema, match="AVRO"):
        store.register("s", '{"type": "object"}', schema_type="JSON")
    assert store.register("s", BASE, schema_type="avro").schema.schema_type == "AVRO"


# -- deletion ------------------------------------------------------------------------------


def test_soft_delete_hides_versions_but_keeps_the_id(store: SchemaStore) -> None:
    first = store.register("s", BASE)
    store.register("s", EVOLUTIONS["add_field_with_default"])
    assert store.delete_subject("s") == [1, 2]
    assert store.subjects() == []
    assert store.subjects(deleted=True) == ["s"]
    assert store.subjects(deleted_only=True) == ["s"]
    with pytest.raises(SubjectNotFound):
        store.versions("s")
    assert store.versions("s", deleted=True) == [1, 2]
    assert store.get_version("s", 1, deleted=True).deleted is True
    assert store.schema_by_id(first.schema.id).text == first.schema.text
    with pytest.raises(SubjectSoftDeleted) as twice:
        store.delete_subject("s")
    assert twice.value.code == 40404


def test_permanent_delete_needs_a_soft_delete_first(store: SchemaStore) -> None:
    store.register("s", BASE)
    with pytest.raises(SubjectNotSoftDeleted) as subject_info:
        store.delete_subject("s", permanent=True)
    assert subject_info.value.code == 40405
    with pytest.raises(VersionNotSoftDeleted) as version_info:
        store.delete_version("s", 1, permanent=True)
    assert version_info.value.code == 40407
    assert store.delete_version("s", 1) == 1
    with pytest.raises(VersionSoftDeleted) as again:
        store.delete_version("s", 1)
    assert again.value.code == 40406
    assert store.delete_version("s", 1, permanent=True) == 1
    assert store.subjects(deleted=True) == []
    with pytest.raises(SubjectNotFound):
        store.delete_subject("s")


def test_permanent_subject_delete_removes_its_config(store: SchemaStore) -> None:
    store.register("s", BASE)
    store.set_subject_level("s", L.NONE)
    store.delete_subject("s")
    assert store.delete_subject("s", permanent=True) == [1]
    with pytest.raises(SubjectConfigNotFound):
        store.subject_level("s")


def test_reregistering_a_soft_deleted_schema_makes_a_new_version_with_the_same_id(
    store: SchemaStore,
) -> None:
    first = store.register("s", BASE)
    store.delete_subject("s")
    again = store.register("s", BASE)
    assert (again.schema.id, again.version, again.created) == (first.schema.id, 2, True)
    # As Confluent does, the soft-deleted version of the same schema is gone for good.
    assert store.versions("s", deleted=True) == [2]


def test_soft_deleted_versions_do_not_constrain_compatibility(store: SchemaStore) -> None:
    store.register("s", BASE)
    store.delete_subject("s")
    changed = record(("id", "string"), ("price", "int"))
    assert store.register("s", changed).version == 2


# -- compatibility -------------------------------------------------------------------------


@pytest.mark.parametrize("level", list(L))
@pytest.mark.parametrize("evolution", list(EVOLUTIONS))
def test_each_level_accepts_the_right_evolutions(
    store: SchemaStore, level: CompatibilityLevel, evolution: str
) -> None:
    store.set_subject_level("s", level)
    store.register("s", BASE)
    expected = evolution in ACCEPTS[level]
    verdict = store.check_compatibility("s", EVOLUTIONS[evolution], version="latest")
    assert verdict.is_compatible is expected
    if expected:
        assert store.register("s", EVOLUTIONS[evolution]).version == 2
    else:
        with pytest.raises(IncompatibleSchema) as info:
            store.register("s", EVOLUTIONS[evolution])
        assert info.value.code == 409 and info.value.http_status == 409
        assert store.versions("s") == [1]


@pytest.mark.parametrize("level", list(L))
@pytest.mark.parametrize("chain", list(CHAINS))
def test_transitive_levels_check_every_live_version(
    store: SchemaStore, level: CompatibilityLevel, chain: str
) -> None:
    store.set_subject_level("s", level)
    v1, v2, v3 = CHAINS[chain]
    store.register("s", v1)
    store.register("s", v2)
    expected = chain in CHAIN_ACCEPTS_V3[level]
    assert store.check_compatibility("s", v3).is_compatible is expected
    if expected:
        assert store.register("s", v3).version == 3
    else:
        with pytest.raises(IncompatibleSchema, match="version 1"):
            store.register("s", v3)


def test_incompatible_change_names_the_field(store: SchemaStore) -> None:
    store.register("s", BASE)
    with pytest.raises(IncompatibleSchema) as info:
        store.register("s", EVOLUTIONS["change_type_string_to_int"])
    message = info.value.message
    assert "'price'" in message
    assert "TYPE_MISMATCH" in message
    assert "int not compatible with writer type: string" in message
    assert "BACKWARD" in message


def test_missing_default_names_the_field(store: SchemaStore) -> None:
    store.register("s", BASE)
    verdict = store.check_compatibility("s", EVOLUTIONS["add_field_without_default"])
    assert verdict.is_compatible is False
    assert any(
        "'color'" in m and "READER_FIELD_MISSING_DEFAULT_VALUE" in m for m in verdict.messages
    )


def test_problems_inside_nested_types_name_their_path() -> None:
    def user(zip_type: str, tag_type: str) -> str:
        address = {
            "type": "record",
            "name": "Address",
            "fields": [{"name": "zip", "type": zip_type}],
        }
        return json.dumps(
            {
                "type": "record",
                "name": "User",
                "fields": [
                    {"name": "address", "type": address},
                    {"name": "tags", "type": {"type": "array", "items": tag_type}},
                ],
            }
        )

    old, new = parse_avro(user("string", "string")).avro, parse_avro(user("int", "boolean")).avro
    paths = sorted(problem.path for problem in read_problems(new, old))
    assert paths == ["address.zip", "tags[]"]
    # int widens to long: readable one way only.
    assert read_problems(parse_avro('"long"').avro, parse_avro('"int"').avro) == []
    assert read_problems(parse_avro('"int"').avro, parse_avro('"long"').avro) != []


def test_compatibility_against_a_specific_version(store: SchemaStore) -> None:
    store.set_global_level(L.BACKWARD)
    store.register("s", BASE)
    store.register("s", EVOLUTIONS["remove_field"])
    back = record(("id", "string"), ("price", "int", 0))
    # Against v2 (no price) a defaulted int price reads fine; against v1 the type clashes.
    assert store.check_compatibility("s", back, version=2).is_compatible is True
    assert store.check_compatibility("s", back, version=1).is_compatible is False
    with pytest.raises(VersionNotFound):
        store.check_compatibility("s", back, version=9)
    assert store.check_compatibility("new-subject", back, version="latest").is_compatible


# -- configuration -------------------------------------------------------------------------


def test_config_defaults_and_overrides(store: SchemaStore) -> None:
    assert store.global_level() is L.BACKWARD
    with pytest.raises(SubjectConfigNotFound) as info:
        store.subject_level("s")
    assert info.value.code == 40408
    assert store.subject_level("s", default_to_global=True) is L.BACKWARD
    store.set_global_level(L.FULL)
    store.set_subject_level("s", L.NONE)
    assert store.subject_level("s") is L.NONE
    assert store.delete_subject_level("s") is L.NONE
    assert store.subject_level("s", default_to_global=True) is L.FULL
    assert store.reset_global_level() is L.FULL
    assert store.global_level() is L.BACKWARD


@pytest.mark.parametrize("value", ["full_transitive", "FULL_TRANSITIVE"])
def test_levels_parse_in_any_case(value: str) -> None:
    assert parse_level(value) is L.FULL_TRANSITIVE


@pytest.mark.parametrize("value", ["SIDEWAYS", None, 3, ""])
def test_invalid_levels_are_refused_with_42203(value: object) -> None:
    with pytest.raises(InvalidCompatibilityLevel) as info:
        parse_level(value)
    assert info.value.code == 42203 and info.value.http_status == 422


# -- references ----------------------------------------------------------------------------


ADDRESS = json.dumps(
    {
        "type": "record",
        "name": "Address",
        "namespace": "rv",
        "fields": [{"name": "zip", "type": "string"}],
    }
)
CUSTOMER = json.dumps(
    {
        "type": "record",
        "name": "Customer",
        "namespace": "rv",
        "fields": [{"name": "address", "type": "rv.Address"}],
    }
)


def test_references_resolve_and_protect_their_target(store: SchemaStore) -> None:
    store.register("address", ADDRESS)
    ref = Reference("rv.Address", "address", 1)
    customer = store.register("customer", CUSTOMER, references=[ref])
    assert customer.schema.references == (ref,)
    assert store.lookup("customer", CUSTOMER, references=[ref]).version == 1
    assert store.referenced_by("address", 1) == [customer.schema.id]
    with pytest.raises(ReferenceExists) as info:
        store.delete_subject("address")
    assert info.value.code == 42206
    with pytest.raises(InvalidSchema, match="does not exist"):
        store.register("other", CUSTOMER, references=[Reference("rv.Address", "address", 2)])
    with pytest.raises(InvalidSchema):
        store.register("other", CUSTOMER)  # the named type is unknown without the reference


# -- storage -------------------------------------------------------------------------------


def test_a_failed_save_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = SchemaStore.open(tmp_path)
    first = store.register("s", BASE)

    def broken_append(changes: list[dict[str, Any]]) -> None:
        raise StoreError("disk full")

    monkeypatch.setattr(store._data_dir, "append", broken_append)
    with pytest.raises(StoreError):
        store.register("s", EVOLUTIONS["add_field_with_default"])
    with pytest.raises(StoreError):
        store.delete_subject("s")
    assert store.versions("s") == [1]
    monkeypatch.undo()
    # The id that failed to be saved was not consumed.
    assert store.register("t", EVOLUTIONS["remove_field"]).schema.id == first.schema.id + 1
    store.close()


def test_a_second_owner_of_the_data_dir_is_refused(tmp_path: Path) -> None:
    store = SchemaStore.open(tmp_path)
    with pytest.raises(DataDirLocked, match="in use by another registry process"):
        SchemaStore.open(tmp_path)
    store.close()
    SchemaStore.open(tmp_path).close()


def test_a_corrupt_state_file_is_reported_and_left_alone(tmp_path: Path) -> None:
    state = tmp_path / "registry.json"
    state.write_text("{half a document")
    with pytest.raises(StoreError, match="not valid JSON"):
        SchemaStore.open(tmp_path)
    assert state.read_text() == "{half a document"
    # The lock was released on the way out.
    DataDir.open(tmp_path).close()


def operations(store: SchemaStore) -> None:
    """A history touching every kind of change: schemas, versions, deletes, configs, modes."""
    store.set_global_level(L.NONE)
    for i in range(12):
        store.register(f"s{i % 4}", record(("id", "string"), ("v", "int", i)))
    store.register("s0", BASE, normalize=True)
    store.delete_version("s1", 2)
    store.delete_subject("s2")
    store.delete_subject("s2", permanent=True)
    store.set_subject_level("s3", L.FULL, normalize=True)
    store.set_mode("s1", Mode.READONLY)
    store.set_mode("empty", Mode.IMPORT)
    store.register("empty", BASE, schema_id=500, version=7)


def test_a_restart_replays_exactly_what_was_written(tmp_path: Path) -> None:
    store = SchemaStore.open(tmp_path)
    operations(store)
    before = store._document()
    store.close()
    again = SchemaStore.open(tmp_path)
    assert again._document() == before
    assert again.register("next", EVOLUTIONS["remove_field"]).schema.id == 501
    again.close()


def test_compaction_keeps_everything_and_empties_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage, "COMPACT_AT_BYTES", 2_000)
    store = SchemaStore.open(tmp_path)
    operations(store)
    before = store._document()
    store.close()
    assert (tmp_path / "registry.json").exists()
    assert (tmp_path / "registry.log").stat().st_size < 2_000 + 1_000
    again = SchemaStore.open(tmp_path)
    assert again._document() == before
    again.close()


def test_a_crash_between_snapshot_and_log_truncation_repeats_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SchemaStore.open(tmp_path)
    operations(store)
    before = store._document()
    full_log = (tmp_path / "registry.log").read_bytes()
    store._data_dir.compact(store._document())  # type: ignore[union-attr]
    store.close()
    (tmp_path / "registry.log").write_bytes(full_log)  # as if the truncation never happened
    again = SchemaStore.open(tmp_path)
    assert again._document() == before
    again.close()


@pytest.mark.parametrize("tail", [b'{"seq": 99, "chan', b"garbage\n", b'{"seq":99,"changes":[]}'])
def test_a_torn_last_change_is_dropped_on_open(tmp_path: Path, tail: bytes) -> None:
    store = SchemaStore.open(tmp_path)
    store.register("s", BASE)
    before = store._document()
    store.close()
    with open(tmp_path / "registry.log", "ab") as fh:
        fh.write(tail)
    again = SchemaStore.open(tmp_path)
    assert again._document() == before
    again.register("t", EVOLUTIONS["remove_field"])
    again.close()
    assert SchemaStore.open(tmp_path).subjects() == ["s", "t"]


def test_a_corrupt_change_in_the_middle_is_reported(tmp_path: Path) -> None:
    store = SchemaStore.open(tmp_path)
    store.register("s", BASE)
    store.register("t", BASE)
    store.close()
    lines = (tmp_path / "registry.log").read_bytes().split(b"\n")
    (tmp_path / "registry.log").write_bytes(b"\n".join([b"{not json", *lines[1:]]))
    with pytest.raises(StoreError, match="corrupt change"):
        SchemaStore.open(tmp_path)


def test_a_write_appends_the_same_few_bytes_however_big_the_registry(tmp_path: Path) -> None:
    store = SchemaStore.open(tmp_path)
    store.set_global_level(L.NONE)
    log_file = tmp_path / "registry.log"

    def cost(subject: str) -> int:
        size = log_file.stat().st_size
        store.register(subject, record(("id", "string"), ("n", "string", subject)))
        return log_file.stat().st_size - size

    small = cost("first")
    for i in range(300):
        store.register(f"filler-{i}", record(("id", "string"), ("n", "string", str(i))))
    assert cost("last") <= small + 10  # the new subject's name and id, nothing more
    store.close()


def test_a_directory_of_the_previous_format_opens(tmp_path: Path) -> None:
    old = {
        "format": 1,
        "next_id": 3,
        "global_level": "FULL",
        "subject_levels": {"s": "NONE"},
        "schemas": [
            {
                "id": 2,
                "guid": "g",
                "schema_type": "AVRO",
                "schema": BASE,
                "references": [],
                "identity": "x",
            }
        ],
        "subjects": {"s": [{"version": 1, "id": 2, "deleted": False}]},
    }
    (tmp_path / "registry.json").write_text(json.dumps(old))
    store = SchemaStore.open(tmp_path)
    assert store.global_level() is L.FULL and store.subject_level("s") is L.NONE
    assert store.get_version("s", 1).schema.id == 2
    assert store.register("t", EVOLUTIONS["remove_field"]).schema.id == 3
    store.close()


# -- modes ---------------------------------------------------------------------------------


def test_modes_default_and_per_subject(store: SchemaStore) -> None:
    assert store.global_mode() is Mode.READWRITE
    with pytest.raises(SubjectModeNotFound) as info:
        store.subject_mode("s")
    assert info.value.code == 40409
    assert store.subject_mode("s", default_to_global=True) is Mode.READWRITE
    store.set_mode("s", Mode.READONLY)
    assert store.subject_mode("s") is Mode.READONLY
    assert store.delete_subject_mode("s") is Mode.READONLY
    with pytest.raises(SubjectNotFound):
        store.delete_subject_mode("s")


def test_read_only_refuses_every_change_but_answers_reads(store: SchemaStore) -> None:
    store.register("s", BASE)
    store.set_mode("s", Mode.READONLY)
    assert store.register("s", BASE).version == 1  # already registered: answered, not refused
    refused = [
        lambda: store.register("s", EVOLUTIONS["add_field_with_default"]),
        lambda: store.delete_subject("s"),
        lambda: store.delete_version("s", 1),
        lambda: store.set_subject_level("s", L.NONE),
    ]
    for attempt in refused:
        with pytest.raises(OperationNotPermitted, match="read-only") as info:
            attempt()
        assert info.value.code == 42205 and info.value.http_status == 422
    assert store.get_version("s", "latest").version == 1
    assert store.register("other", BASE).version == 1  # another subject is not frozen


def test_global_readonly_override_beats_subject_modes(store: SchemaStore) -> None:
    store.set_mode("s", Mode.READWRITE)
    store.set_mode(None, Mode.READONLY)
    store.register("s", BASE)  # the subject's own READWRITE wins over a global READONLY
    store.set_mode(None, Mode.READONLY_OVERRIDE)
    assert store.subject_mode("s") is Mode.READONLY_OVERRIDE
    with pytest.raises(OperationNotPermitted):
        store.register("s", EVOLUTIONS["add_field_with_default"])
    with pytest.raises(OperationNotPermitted):
        store.set_global_level(L.NONE)


def test_import_needs_an_empty_scope_and_explicit_ids(store: SchemaStore) -> None:
    store.register("taken", BASE)
    with pytest.raises(OperationNotPermitted, match="existing subjects"):
        store.set_mode(None, Mode.IMPORT)
    with pytest.raises(OperationNotPermitted, match="existing subjects"):
        store.set_mode("taken", Mode.IMPORT)
    store.set_mode("taken", Mode.IMPORT, force=True)
    store.set_mode("fresh", Mode.IMPORT)
    with pytest.raises(OperationNotPermitted, match="not in read-write mode"):
        store.register("fresh", EVOLUTIONS["remove_field"])
    with pytest.raises(OperationNotPermitted, match="not in import mode"):
        store.register("elsewhere", EVOLUTIONS["remove_field"], schema_id=40)
    # No compatibility check in IMPORT: an incompatible history is taken as it is.
    store.register("fresh", EVOLUTIONS["remove_field"], schema_id=40, version=3)
    imported = store.register("fresh", EVOLUTIONS["change_type_string_to_int"], schema_id=41)
    assert (imported.schema.id, imported.version) == (41, 4)
    with pytest.raises(OperationNotPermitted, match="Overwrite"):
        store.register("fresh", EVOLUTIONS["add_field_with_default"], schema_id=40)
    store.set_mode("fresh", Mode.READWRITE)
    assert store.register("after", EVOLUTIONS["add_field_with_default"]).schema.id == 42


@pytest.mark.parametrize("value", ["readonly", "READONLY_OVERRIDE", "Import"])
def test_modes_parse_in_any_case(value: str) -> None:
    assert parse_mode(value).value == value.upper()


@pytest.mark.parametrize("value", ["READ_ONLY", None, 1, ""])
def test_invalid_modes_are_refused_with_42204(value: object) -> None:
    with pytest.raises(InvalidMode) as info:
        parse_mode(value)
    assert info.value.code == 42204 and info.value.http_status == 422


# -- normalisation -------------------------------------------------------------------------


def aliased(record_aliases: list[str], field_aliases: list[str], namespace: bool) -> str:
    doc: dict[str, Any] = {
        "type": "record",
        "name": "Thing",
        "aliases": record_aliases,
        "fields": [{"name": "a", "type": "string", "aliases": field_aliases}],
    }
    if namespace:
        doc = {"namespace": "rv", **doc}
    else:
        doc["name"] = "rv.Thing"
    return json.dumps(doc)


def test_normalize_treats_alias_order_and_name_spelling_as_the_same_schema(
    store: SchemaStore,
) -> None:
    first = store.register("s", aliased(["Old", "Older"], ["x", "y"], True), normalize=True)
    same = aliased(["Older", "Old"], ["y", "x"], False)
    assert store.register("s", same, normalize=True).schema.id == first.schema.id
    assert store.lookup("s", same, normalize=True).version == 1
    with pytest.raises(SchemaNotFound):
        store.lookup("s", same)  # without normalize, alias order is part of the schema
    stored = json.loads(first.schema.text)
    assert stored["aliases"] == ["rv.Old", "rv.Older"] and "namespace" not in stored


def test_normalize_can_be_the_subject_default(store: SchemaStore) -> None:
    store.set_subject_level("s", None, normalize=True)
    first = store.register("s", aliased(["B", "A"], [], True))
    assert store.register("s", aliased(["A", "B"], [], True)).schema.id == first.schema.id


def test_an_overly_deep_schema_is_an_invalid_schema(store: SchemaStore) -> None:
    depth = 3000
    text = "".join(
        f'{{"type":"record","name":"L{level}","fields":[{{"name":"x","type":'
        for level in range(depth)
    )
    text += '"string"' + "}]}" * depth
    with pytest.raises(InvalidSchema, match="nested too deeply"):
        store.register("s", text)


def test_recursive_schema_incompatible_change_is_reported(store: SchemaStore) -> None:
    def node(value: str) -> str:
        return json.dumps(
            {
                "type": "record",
                "name": "Node",
                "fields": [
                    {"name": "value", "type": value},
                    {"name": "next", "type": "Node"},
                    {"name": "kids", "type": {"type": "array", "items": "Node"}},
                ],
            }
        )

    store.register("list", node("long"))
    verdict = store.check_compatibility("list", node("int"))
    assert verdict.is_compatible is False
    assert any("'value'" in m for m in verdict.messages)
    assert store.register("list", node("long")).version == 1


def test_schemas_lists_every_subject_version(store: SchemaStore) -> None:
    store.set_global_level(L.NONE)
    store.register("b", BASE)
    store.register("a", BASE)
    store.register("a", EVOLUTIONS["remove_field"])
    store.delete_version("a", 1)
    listed = [(r.subject, r.version) for r in store.schemas()]
    assert listed == [("a", 2), ("b", 1)]
    assert [(r.subject, r.version) for r in store.schemas(deleted=True)] == [
        ("a", 1),
        ("a", 2),
        ("b", 1),
    ]
    assert [r.subject for r in store.schemas(prefix="b")] == ["b"]
    assert [(r.subject, r.version) for r in store.schemas(latest_only=True, limit=1)] == [("a", 2)]
    assert [r.subject for r in store.schemas(offset=1)] == ["b"]


def test_registry_errors_are_rearview_errors() -> None:
    from core.exceptions import RearviewError

    assert issubclass(RegistryError, RearviewError)
    assert issubclass(DataDirLocked, RearviewError)
