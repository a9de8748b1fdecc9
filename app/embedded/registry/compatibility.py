"""Compatibility levels and the Avro reader/writer check behind them.

Confluent's seven levels, in terms of which schema must be able to read data written with
which (the decision itself is ``avro.compatibility.ReaderWriterCompatibilityChecker``):

=====================  =========================================  ===========================
level                  the new schema is checked against          rule
=====================  =========================================  ===========================
NONE                   nothing                                    always accepted
BACKWARD               the latest live version                    new reads old
BACKWARD_TRANSITIVE    every live version                         new reads old
FORWARD                the latest live version                    old reads new
FORWARD_TRANSITIVE     every live version                         old reads new
FULL                   the latest live version                    both
FULL_TRANSITIVE        every live version                         both
=====================  =========================================  ===========================

"Live" means not soft-deleted, as in Confluent. The checker's own result merges its
messages and locations into two unordered sets, which loses which message belongs to which
field; :func:`read_problems` therefore walks record fields itself and asks the checker about
one field at a time, so every problem names the field it is about (``price``,
``address.zip``, ``tags[]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from avro.compatibility import (
    ReaderWriterCompatibilityChecker,
    SchemaCompatibilityResult,
    SchemaCompatibilityType,
    lookup_writer_field,
    schema_name_equals,
)
from avro.schema import ArraySchema, MapSchema, RecordSchema, Schema

from app.embedded.registry.exceptions import InvalidCompatibilityLevel


class CompatibilityLevel(StrEnum):
    NONE = "NONE"
    BACKWARD = "BACKWARD"
    BACKWARD_TRANSITIVE = "BACKWARD_TRANSITIVE"
    FORWARD = "FORWARD"
    FORWARD_TRANSITIVE = "FORWARD_TRANSITIVE"
    FULL = "FULL"
    FULL_TRANSITIVE = "FULL_TRANSITIVE"

    @property
    def transitive(self) -> bool:
        return self.value.endswith("_TRANSITIVE")

    @property
    def new_must_read_old(self) -> bool:
        return self.value.startswith(("BACKWARD", "FULL"))

    @property
    def old_must_read_new(self) -> bool:
        return self.value.startswith(("FORWARD", "FULL"))


DEFAULT_LEVEL = CompatibilityLevel.BACKWARD


def parse_level(value: object) -> CompatibilityLevel:
    """The level named by *value* (any case), else :class:`InvalidCompatibilityLevel` (42203)."""
    if isinstance(value, str):
        try:
            return CompatibilityLevel(value.upper())
        except ValueError:
            pass
    valid = ", ".join(level.value for level in CompatibilityLevel)
    raise InvalidCompatibilityLevel(
        f"Invalid compatibility level {value!r}: expected one of {valid}"
    )


@dataclass(frozen=True)
class Problem:
    """One reason a reader cannot read a writer's data."""

    kind: str  # the checker's incompatibility type, upper case: TYPE_MISMATCH, ...
    path: str  # dotted field path from the record root; "" for the schema itself
    detail: str

    def __str__(self) -> str:
        where = f"field '{self.path}'" if self.path else "the schema root"
        return f"{self.kind} at {where}: {self.detail}"


@dataclass(frozen=True)
class CompatibilityResult:
    is_compatible: bool
    messages: tuple[str, ...] = ()


COMPATIBLE = CompatibilityResult(True)


def read_problems(reader: Schema, writer: Schema) -> list[Problem]:
    """Why *reader* cannot read data written with *writer*; empty when it can."""
    checker = ReaderWriterCompatibilityChecker()  # type: ignore[no-untyped-call]
    return _problems(checker, reader, writer, "")


def _problems(
    checker: ReaderWriterCompatibilityChecker, reader: Schema, writer: Schema, path: str
) -> list[Problem]:
    result = checker.get_compatibility(reader, writer)
    if result.compatibility is not SchemaCompatibilityType.incompatible:
        return []
    found: list[Problem] = []
    if isinstance(reader, RecordSchema) and isinstance(writer, RecordSchema):
        if not schema_name_equals(reader, writer):
            found.append(
                Problem(
                    "NAME_MISMATCH",
                    path,
                    f"reader record {reader.fullname} "
                    f"does not match writer record {writer.fullname}",
                )
            )
        for field in reader.fields:
            field_path = f"{path}.{field.name}" if path else field.name
            writer_field = lookup_writer_field(writer_schema=writer, reader_field=field)
            if writer_field is not None:
                found.extend(_problems(checker, field.type, writer_field.type, field_path))
            elif not field.has_default:
                found.append(
                    Problem(
                        "READER_FIELD_MISSING_DEFAULT_VALUE",
                        field_path,
                        "the reader has this field without a default and the writer lacks it",
                    )
                )
    elif isinstance(reader, ArraySchema) and isinstance(writer, ArraySchema):
        found.extend(_problems(checker, reader.items, writer.items, f"{path}[]"))
    elif isinstance(reader, MapSchema) and isinstance(writer, MapSchema):
        found.extend(_problems(checker, reader.values, writer.values, f"{path}{{}}"))
    # Whatever the walk above could not attribute (unions, enums, fixed, primitives, or a
    # case it does not know) is reported at this level with the checker's own words.
    return found or [_summary(result, path)]


def _summary(result: SchemaCompatibilityResult, path: str) -> Problem:
    kinds = sorted({kind.name.upper() for kind in result.incompatibilities}) or ["INCOMPATIBLE"]
    return Problem(", ".join(kinds), path, "; ".join(sorted(result.messages)))


def check(
    level: CompatibilityLevel,
    new: Schema,
    previous: Sequence[tuple[int, Schema]],
) -> CompatibilityResult:
    """Check *new* against *previous* (``(version, schema)`` pairs, oldest first) at *level*.

    Non-transitive levels look at the last pair only; transitive ones at every pair.
    """
    if level is CompatibilityLevel.NONE or not previous:
        return COMPATIBLE
    targets = previous if level.transitive else previous[-1:]
    messages: list[str] = []
    for version, old in reversed(targets):
        if level.new_must_read_old:
            messages.extend(
                f"the new schema cannot read data written with version {version}: {problem}"
                for problem in read_problems(new, old)
            )
        if level.old_must_read_new:
            messages.extend(
                f"version {version} cannot read data written with the new schema: {problem}"
                for problem in read_problems(old, new)
            )
    if not messages:
        return COMPATIBLE
    return CompatibilityResult(False, tuple(messages))
