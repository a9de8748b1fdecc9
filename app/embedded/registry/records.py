"""What the registry records: schemas, subject-versions, references, and version numbers."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from app.embedded.registry.exceptions import InvalidMode, InvalidSchema, InvalidVersion

MAX_VERSION = 2**31 - 1

Version = int | Literal["latest"]


def parse_version(text: str) -> Version:
    """A version path segment: ``latest`` (or ``-1``) or an integer in [1, 2^31-1] (42202)."""
    if text == "latest" or text == "-1":
        return "latest"
    try:
        number = int(text)
    except ValueError:
        number = 0
    if not 1 <= number <= MAX_VERSION:
        raise InvalidVersion(
            f"The specified version '{text}' is not a valid version id. "
            f'Allowed values are between [1, {MAX_VERSION}] and the string "latest"'
        )
    return number


class Mode(StrEnum):
    """Confluent's registry modes, globally and per subject.

    READWRITE accepts every request; READONLY and READONLY_OVERRIDE refuse every change
    (registering, deleting, changing a compatibility setting), and a global READONLY_OVERRIDE
    also overrides every subject's own mode; IMPORT accepts registrations that carry their
    own id and version (migrations), without compatibility checks, and only those.
    """

    READWRITE = "READWRITE"
    READONLY = "READONLY"
    READONLY_OVERRIDE = "READONLY_OVERRIDE"
    IMPORT = "IMPORT"

    @property
    def read_only(self) -> bool:
        return self in (Mode.READONLY, Mode.READONLY_OVERRIDE)


DEFAULT_MODE = Mode.READWRITE


def parse_mode(value: object) -> Mode:
    """The mode named by *value* (any case), else :class:`InvalidMode` (42204)."""
    if isinstance(value, str):
        try:
            return Mode(value.upper())
        except ValueError:
            pass
    valid = ", ".join(mode.value for mode in Mode)
    raise InvalidMode(f"Invalid mode {value!r}: expected one of {valid}")


@dataclass(frozen=True)
class Reference:
    """A named type this schema takes from another subject-version."""

    name: str
    subject: str
    version: int

    @classmethod
    def from_json(cls, value: object) -> Reference:
        if (
            isinstance(value, dict)
            and isinstance(value.get("name"), str)
            and isinstance(value.get("subject"), str)
            and isinstance(value.get("version"), int)
            and not isinstance(value.get("version"), bool)
        ):
            return cls(value["name"], value["subject"], value["version"])
        raise InvalidSchema(
            f"Invalid schema reference {value!r}: expected "
            '{"name": str, "subject": str, "version": int}'
        )

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "subject": self.subject, "version": self.version}


@dataclass(frozen=True)
class StoredSchema:
    id: int
    guid: str
    schema_type: str
    text: str
    references: tuple[Reference, ...]
    identity: str  # type, canonical form and references: equal identity means same id


@dataclass
class SubjectVersion:
    version: int
    schema_id: int
    deleted: bool = False


@dataclass(frozen=True)
class RegisteredVersion:
    """A schema as one subject-version holds it: what most endpoints answer with."""

    subject: str
    version: int
    schema: StoredSchema
    deleted: bool = False
    created: bool = False  # register() made this version just now
