"""Can a reader schema read what a writer schema wrote? Avro's resolution rules, field by field.

The rules are Avro's (and Confluent's, which runs Java's ``SchemaCompatibility``): the same
decisions ``avro.compatibility.ReaderWriterCompatibilityChecker`` makes, which
``tests/unit/test_avro_compatibility.py`` checks on generated schema pairs, recursive ones
included. Two things differ from that checker, and are why this module exists:

- **Every problem names its field.** The checker merges all messages and locations into two
  unordered sets; here each :class:`Problem` carries the dotted path it is about
  (``price``, ``address.zip``, ``tags[]``, ``attrs{}``), so a registry answer or a dead
  letter says *which* field broke.
- **The walk is iterative and memoised.** Each (reader, writer) pair of schema nodes is
  checked once; a pair met again while it is being checked (a record that refers to itself,
  directly or through other records) counts as compatible for that inner visit, exactly as
  in the checker. The walk keeps its own stack, so neither self-reference nor deep nesting can
  exhaust Python's recursion limit. Its cost is bounded by the number of distinct pairs.

The module sits in ``core`` because the registry (``app/embedded/registry``) decides
compatibility with it and the validator (``agents/codec.py``) explains with it why a
writer's events cannot be read as the pipeline's schema.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Final

from avro.compatibility import lookup_writer_field, schema_name_equals
from avro.schema import (
    ArraySchema,
    EnumSchema,
    FixedSchema,
    MapSchema,
    RecordSchema,
    Schema,
    UnionSchema,
)

PRIMITIVES: Final = frozenset(
    {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
)
# Writer types each reader type also accepts (Avro's promotions).
PROMOTIONS: Final[dict[str, frozenset[str]]] = {
    "long": frozenset({"int"}),
    "float": frozenset({"int", "long"}),
    "double": frozenset({"int", "long", "float"}),
    "bytes": frozenset({"string"}),
    "string": frozenset({"bytes"}),
}


@dataclass(frozen=True)
class Problem:
    """One reason a reader cannot read a writer's data."""

    kind: str  # TYPE_MISMATCH, NAME_MISMATCH, MISSING_UNION_BRANCH, ... (Avro's names)
    path: str  # dotted field path from the record root; "" for the schema itself
    detail: str

    def __str__(self) -> str:
        where = f"field '{self.path}'" if self.path else "the schema root"
        return f"{self.kind} at {where}: {self.detail}"


Problems = tuple[Problem, ...]
# A check asks for sub-checks by yielding (reader, writer, path) and receives their problems.
_Check = Generator[tuple[Schema, Schema, str], Problems, Problems]


def read_problems(reader: Schema, writer: Schema) -> list[Problem]:
    """Why *reader* cannot read data written with *writer*; empty when it can.

    Each problem appears once, in the order the walk met it.
    """
    memo: dict[tuple[int, int], Problems | None] = {}  # None: being checked right now
    stack: list[tuple[tuple[int, int], _Check]] = []

    def enter(r: Schema, w: Schema, path: str) -> Problems | None:
        """The pair's known answer, or None after pushing a check for it."""
        key = (id(r), id(w))
        if key in memo:
            known = memo[key]
            return () if known is None else known
        memo[key] = None
        stack.append((key, _check(r, w, path)))
        return None

    value = enter(reader, writer, "")
    while stack:
        key, check = stack[-1]
        try:
            request = check.send(value)  # type: ignore[arg-type]  # None starts a check
        except StopIteration as done:
            stack.pop()
            memo[key] = value = done.value
            continue
        value = enter(*request)
    assert value is not None
    return list(dict.fromkeys(value))


def _check(reader: Schema, writer: Schema, path: str) -> _Check:
    """One pair, following ``ReaderWriterCompatibilityChecker.calculate_compatibility``."""
    r_type, w_type = reader.type, writer.type
    if r_type == w_type:
        if r_type in PRIMITIVES:
            return ()
        if isinstance(reader, ArraySchema) and isinstance(writer, ArraySchema):
            return (yield reader.items, writer.items, f"{path}[]")
        if isinstance(reader, MapSchema) and isinstance(writer, MapSchema):
            return (yield reader.values, writer.values, f"{path}{{}}")
        if isinstance(reader, FixedSchema) and isinstance(writer, FixedSchema):
            found = _names(reader, writer, path)
            if reader.size != writer.size:
                found += (
                    Problem(
                        "FIXED_SIZE_MISMATCH",
                        path,
                        f"expected: {writer.size}, found: {reader.size}",
                    ),
                )
            return found
        if isinstance(reader, EnumSchema) and isinstance(writer, EnumSchema):
            return _names(reader, writer, path) + _symbols(reader, writer, path)
        if isinstance(reader, RecordSchema) and isinstance(writer, RecordSchema):
            found = _names(reader, writer, path)
            for field in reader.fields:
                field_path = f"{path}.{field.name}" if path else field.name
                written = lookup_writer_field(writer_schema=writer, reader_field=field)
                if written is not None:
                    found += yield field.type, written.type, field_path
                elif field.has_default:
                    continue
                elif isinstance(field.type, EnumSchema) and field.type.props.get("default"):
                    # Avro's (and Java's) rule: such a field is checked against the writer
                    # record itself, which is a type mismatch.
                    found += yield field.type, writer, field_path
                else:
                    found += (
                        Problem(
                            "READER_FIELD_MISSING_DEFAULT_VALUE",
                            field_path,
                            "the reader has this field without a default and the writer lacks it",
                        ),
                    )
            return found
        if isinstance(reader, UnionSchema) and isinstance(writer, UnionSchema):
            found = ()
            for branch in writer.schemas:
                if (yield reader, branch, path):
                    found += (
                        Problem(
                            "MISSING_UNION_BRANCH",
                            path,
                            f"reader union lacking writer type: {branch.type.upper()}",
                        ),
                    )
            return found
        return (Problem("TYPE_MISMATCH", path, f"unknown schema type {r_type}"),)
    if isinstance(writer, UnionSchema):
        found = ()
        for branch in writer.schemas:
            found += yield reader, branch, path
        return found
    if w_type in PROMOTIONS.get(r_type, ()):
        return ()
    if isinstance(reader, UnionSchema):
        for branch in reader.schemas:
            if not (yield branch, writer, path):
                return ()
        return (
            Problem("MISSING_UNION_BRANCH", path, f"reader union lacking writer type {w_type}"),
        )
    return (
        Problem(
            "TYPE_MISMATCH",
            path,
            f"reader type: {r_type} not compatible with writer type: {w_type}",
        ),
    )


def _names(reader: Schema, writer: Schema, path: str) -> Problems:
    if schema_name_equals(reader, writer):
        return ()
    return (
        Problem(
            "NAME_MISMATCH",
            path,
            f"reader {reader.type} {reader.fullname} "  # type: ignore[attr-defined]
            f"does not match writer {writer.type} {writer.fullname}",  # type: ignore[attr-defined]
        ),
    )


def _symbols(reader: EnumSchema, writer: EnumSchema, path: str) -> Problems:
    missing = sorted(set(writer.symbols) - set(reader.symbols))
    default = reader.props.get("default")
    if not missing or (default and default in reader.symbols):
        return ()
    return (
        Problem(
            "MISSING_ENUM_SYMBOLS",
            path,
            f"the reader enum lacks the writer's symbols {', '.join(missing)}",
        ),
    )
