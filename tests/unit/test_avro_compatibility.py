"""core.avro_compatibility against the `avro` library's own checker, on generated schema pairs.

The generator builds a schema (records, enums, fixed, arrays, maps, unions, primitives, and
records that refer to themselves or to an enclosing record), then derives a second one by a
few random edits (a changed type, a field added or dropped, a default removed, a symbol
added, a size or a name changed, a branch added to or removed from a union...), so that most
pairs are close, as real evolutions are, and both verdicts occur. For every pair, in both
directions, our verdict must be the library's.
"""

from __future__ import annotations

import copy
import json
import sys
from typing import Any

import avro.schema
import pytest
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from core.avro_compatibility import read_problems

PRIMITIVES = ["null", "boolean", "int", "long", "float", "double", "bytes", "string"]
NAMES = ["A", "B", "C", "D"]
FIELDS = ["f", "g", "h", "k"]
SYMBOLS = ["X", "Y", "Z"]


class Builder:
    """Draws one schema document; named types get unique names within the document."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data
        self.used: set[str] = set()

    def draw(self, strategy: st.SearchStrategy[Any]) -> Any:
        return self.data.draw(strategy)

    def fresh_name(self) -> str | None:
        free = [n for n in NAMES if n not in self.used]
        if not free:
            return None
        name: str = self.draw(st.sampled_from(free))
        self.used.add(name)
        return name

    def schema(self, depth: int, records: list[str], in_union: bool = False) -> Any:
        kinds = ["primitive"] * 3
        if depth > 0:
            kinds += ["record", "record", "array", "map", "enum", "fixed"]
            if not in_union:
                kinds.append("union")
        if records:
            kinds += ["ref", "ref"]  # a record in scope: recursion
        kind = self.draw(st.sampled_from(kinds))
        if kind == "primitive":
            return self.draw(st.sampled_from(PRIMITIVES))
        if kind == "ref":
            return self.draw(st.sampled_from(records))
        if kind == "array":
            return {"type": "array", "items": self.schema(depth - 1, records)}
        if kind == "map":
            return {"type": "map", "values": self.schema(depth - 1, records)}
        if kind == "union":
            return self.union(depth - 1, records)
        name = self.fresh_name()
        if name is None:
            return self.draw(st.sampled_from(PRIMITIVES))
        if kind == "enum":
            symbols = self.draw(st.lists(st.sampled_from(SYMBOLS), min_size=1, unique=True))
            doc: dict[str, Any] = {"type": "enum", "name": name, "symbols": symbols}
            if self.draw(st.booleans()):
                doc["default"] = self.draw(st.sampled_from(symbols))
            return doc
        if kind == "fixed":
            return {"type": "fixed", "name": name, "size": self.draw(st.integers(1, 3))}
        doc = {"type": "record", "name": name, "fields": []}
        if self.draw(st.booleans()):
            doc["aliases"] = self.draw(st.lists(st.sampled_from(NAMES), max_size=2, unique=True))
        inner = [*records, name]
        for field_name in self.draw(st.lists(st.sampled_from(FIELDS), max_size=3, unique=True)):
            doc["fields"].append(self.field(field_name, depth - 1, inner))
        return doc

    def field(self, name: str, depth: int, records: list[str]) -> dict[str, Any]:
        field: dict[str, Any] = {"name": name, "type": self.schema(depth, records)}
        if self.draw(st.booleans()):
            field["default"] = None  # the checkers only ask whether there is one
        if self.draw(st.integers(0, 4)) == 0:
            field["aliases"] = self.draw(st.lists(st.sampled_from(FIELDS), max_size=2, unique=True))
        return field

    def union(self, depth: int, records: list[str]) -> list[Any]:
        branches: list[Any] = []
        seen: set[str] = set()
        for _ in range(self.draw(st.integers(1, 3))):
            branch = self.schema(depth, records, in_union=True)
            key = branch if isinstance(branch, str) else branch.get("name", branch["type"])
            if key not in seen:
                seen.add(key)
                branches.append(branch)
        return branches


def defined_names(doc: Any, out: set[str]) -> set[str]:
    if isinstance(doc, dict):
        if "name" in doc and doc.get("type") in ("record", "enum", "fixed"):
            out.add(doc["name"])
        for value in doc.values():
            defined_names(value, out)
    elif isinstance(doc, list):
        for item in doc:
            defined_names(item, out)
    return out


def nodes(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths to every schema node (dict, list or string) inside *doc*."""
    found = [path]
    if isinstance(doc, dict):
        if doc.get("type") == "record":
            for i, field in enumerate(doc["fields"]):
                found += nodes(field["type"], (*path, "fields", i, "type"))
        elif doc.get("type") == "array":
            found += nodes(doc["items"], (*path, "items"))
        elif doc.get("type") == "map":
            found += nodes(doc["values"], (*path, "values"))
    elif isinstance(doc, list):
        for i, branch in enumerate(doc):
            found += nodes(branch, (*path, i))
    return found


def get(doc: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        doc = doc[step]
    return doc


def put(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    get(doc, path[:-1])[path[-1]] = value
    return doc


def mutate(data: st.DataObject, doc: Any) -> Any:
    """*doc* after one random edit."""
    doc = copy.deepcopy(doc)
    path = data.draw(st.sampled_from(nodes(doc)))
    node = get(doc, path)
    edit = data.draw(st.integers(0, 9))
    if isinstance(node, dict) and node.get("type") == "record":
        fields = node["fields"]
        if edit < 3 and fields:
            fields.pop(data.draw(st.integers(0, len(fields) - 1)))
        elif edit < 5:
            free = [f for f in FIELDS if f not in {x["name"] for x in fields}]
            if free:
                fields.append({"name": free[0], "type": data.draw(st.sampled_from(PRIMITIVES))})
                if data.draw(st.booleans()):
                    fields[-1]["default"] = None
        elif edit < 7 and fields:
            field = fields[data.draw(st.integers(0, len(fields) - 1))]
            if "default" in field:
                del field["default"]
            else:
                field["default"] = None
        else:
            free = [n for n in NAMES if n not in defined_names(doc, set())]
            if free:
                node["name"] = free[0]
        return doc
    if isinstance(node, dict) and node.get("type") == "enum":
        if edit < 5:
            extra = [s for s in SYMBOLS if s not in node["symbols"]]
            if extra:
                node["symbols"].append(extra[0])
        elif len(node["symbols"]) > 1:
            removed = node["symbols"].pop()
            if node.get("default") == removed:
                del node["default"]
        else:
            node.pop("default", None)
        return doc
    if isinstance(node, dict) and node.get("type") == "fixed":
        node["size"] = node["size"] % 3 + 1
        return doc
    if isinstance(node, list):
        if edit < 5 and len(node) > 1:
            node.pop(data.draw(st.integers(0, len(node) - 1)))
        else:
            taken = {b for b in node if isinstance(b, str)}
            extra = [p for p in PRIMITIVES if p not in taken]
            if extra:
                node.append(data.draw(st.sampled_from(extra)))
        return doc
    # A primitive, a reference, an array or a map: replace it by a primitive, or wrap it.
    if edit < 7 or (isinstance(node, list)) or path and isinstance(path[-1], int):
        return put(doc, path, data.draw(st.sampled_from(PRIMITIVES)))
    return put(doc, path, ["null", node] if node != "null" else ["null", "int"])


def parse(doc: Any) -> avro.schema.Schema | None:
    try:
        return avro.schema.parse(json.dumps(doc))
    except Exception:  # noqa: BLE001 - an edit made an invalid schema: skip the pair
        return None


def library_says_compatible(reader: avro.schema.Schema, writer: avro.schema.Schema) -> bool:
    result = ReaderWriterCompatibilityChecker().get_compatibility(reader, writer)  # type: ignore[no-untyped-call]
    return result.compatibility is SchemaCompatibilityType.compatible


@settings(
    max_examples=600,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(st.data())
def test_verdicts_match_the_avro_library(data: st.DataObject) -> None:
    first = Builder(data).schema(depth=4, records=[])
    second = first
    for _ in range(data.draw(st.integers(1, 3))):
        second = mutate(data, second)
    a, b = parse(first), parse(second)
    assume(a is not None and b is not None)
    assert a is not None and b is not None
    for reader, writer in ((a, b), (b, a), (a, a)):
        problems = read_problems(reader, writer)
        assert (not problems) is library_says_compatible(reader, writer), (
            json.dumps(first),
            json.dumps(second),
            problems,
        )


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_independent_schemas_match_the_avro_library(data: st.DataObject) -> None:
    a = parse(Builder(data).schema(depth=3, records=[]))
    b = parse(Builder(data).schema(depth=3, records=[]))
    assume(a is not None and b is not None)
    assert a is not None and b is not None
    assert (not read_problems(a, b)) is library_says_compatible(a, b)


def linked_list(head: str) -> str:
    return json.dumps(
        {
            "type": "record",
            "name": "Node",
            "fields": [
                {"name": "value", "type": head},
                {"name": "next", "type": "Node"},
                {"name": "rest", "type": ["null", "Node"], "default": None},
                {"name": "children", "type": {"type": "array", "items": "Node"}},
            ],
        }
    )


def test_a_self_referencing_record_is_checked_once_per_pair() -> None:
    old, new = avro.schema.parse(linked_list("long")), avro.schema.parse(linked_list("int"))
    problems = read_problems(new, old)
    assert [(p.kind, p.path) for p in problems] == [("TYPE_MISMATCH", "value")]
    assert read_problems(old, new) == []  # int widens to long


def test_mutually_recursive_records() -> None:
    def schema(leaf: str) -> avro.schema.Schema:
        return avro.schema.parse(
            json.dumps(
                {
                    "type": "record",
                    "name": "A",
                    "fields": [
                        {"name": "leaf", "type": leaf},
                        {
                            "name": "b",
                            "type": {
                                "type": "record",
                                "name": "B",
                                "fields": [{"name": "a", "type": ["null", "A"]}],
                            },
                        },
                    ],
                }
            )
        )

    assert [p.path for p in read_problems(schema("int"), schema("string"))] == ["leaf"]


def test_deep_nesting_does_not_exhaust_the_stack() -> None:
    depth = 400
    limit = sys.getrecursionlimit()

    def nested(leaf: str) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "type": "record",
            "name": "L0",
            "fields": [{"name": "v", "type": leaf}],
        }
        for level in range(1, depth):
            doc = {"type": "record", "name": f"L{level}", "fields": [{"name": "x", "type": doc}]}
        return doc

    sys.setrecursionlimit(20_000)  # the parser recurses; the check itself must not need it
    try:
        reader, writer = (
            avro.schema.parse(json.dumps(nested("int"))),
            avro.schema.parse(json.dumps(nested("string"))),
        )
    finally:
        sys.setrecursionlimit(limit)
    problems = read_problems(reader, writer)
    assert len(problems) == 1 and problems[0].path.endswith(".x.v")
    assert problems[0].path.count(".") == depth - 1


@pytest.mark.parametrize(
    ("reader", "writer", "kind"),
    [
        ('{"type":"fixed","name":"F","size":2}', '{"type":"fixed","name":"F","size":3}',
         "FIXED_SIZE_MISMATCH"),
        ('{"type":"enum","name":"E","symbols":["A"]}', '{"type":"enum","name":"E","symbols":["A","B"]}',
         "MISSING_ENUM_SYMBOLS"),
        ('{"type":"record","name":"R","fields":[]}', '{"type":"record","name":"S","fields":[]}',
         "NAME_MISMATCH"),
        ('["null","int"]', '["null","string"]', "MISSING_UNION_BRANCH"),
        ('"int"', '"string"', "TYPE_MISMATCH"),
    ],
)  # fmt: skip
def test_each_kind_of_problem(reader: str, writer: str, kind: str) -> None:
    problems = read_problems(avro.schema.parse(reader), avro.schema.parse(writer))
    assert [p.kind for p in problems] == [kind]
