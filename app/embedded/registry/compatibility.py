"""Compatibility levels and the Avro reader/writer check behind them.

Confluent's seven levels, in terms of which schema must be able to read data written with
which (the decision follows Avro's resolution rules, see :mod:`core.avro_compatibility`):

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

"Live" means not soft-deleted, as in Confluent. The reader/writer decision and its
per-field messages come from :mod:`core.avro_compatibility` (iterative, memoised: recursive
and deeply nested schemas are fine).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from avro.schema import Schema

from app.embedded.registry.exceptions import InvalidCompatibilityLevel
from core.avro_compatibility import Problem, read_problems

__all__ = [
    "COMPATIBLE",
    "DEFAULT_LEVEL",
    "CompatibilityLevel",
    "CompatibilityResult",
    "Problem",
    "check",
    "parse_level",
    "read_problems",
]


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
class CompatibilityResult:
    is_compatible: bool
    messages: tuple[str, ...] = ()


COMPATIBLE = CompatibilityResult(True)


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
