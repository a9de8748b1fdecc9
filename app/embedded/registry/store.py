"""The registry's state and rules, with no HTTP in sight.

:class:`SchemaStore` keeps what a Confluent Schema Registry keeps and decides what it
decides: global schema ids, subjects and their versions, soft and permanent deletion,
compatibility levels and modes. Every refusal is a
:class:`~app.embedded.registry.exceptions.RegistryError` carrying Confluent's error code; the
HTTP layer only translates.

Rules, following Confluent's:

- **Ids are global and bound to content.** A schema's id is decided by its canonical form
  (see :mod:`app.embedded.registry.avro_schema`) plus its type and references: the same schema
  under any subject gets the same id. New content gets ``max id + 1``. An id is never given
  to other content, not even after a permanent delete: the content-to-id binding is kept, so
  re-registering an identical schema after a permanent delete gets its old id back. A schema
  that no subject-version (live or soft-deleted) holds any more answers "schema not found".
  Only IMPORT can give known content a second id (the id a source registry had given it).
- **Registering** a schema that is already a live version of the subject returns that version
  and creates nothing, whatever the mode. Otherwise the mode must allow it (READWRITE; or
  IMPORT when the request names its id or version) and, outside IMPORT, the compatibility
  level is enforced against the live versions; a new version ``max version + 1`` (soft-deleted
  versions count) is created. As Confluent does, re-registering a soft-deleted schema creates
  a new version and removes the soft-deleted versions that held the same id.
- **Deleting** is soft first (versions are hidden unless ``deleted`` is asked for, and their
  ids still resolve), then permanent, which only a soft-deleted subject or version accepts.
  A version that another schema references cannot be deleted (42206). When a subject's last
  live version goes, its own compatibility level and mode go too.
- **Modes** (:class:`~app.embedded.registry.records.Mode`): a subject's own mode, else the
  global one (READWRITE by default); a global READONLY_OVERRIDE beats every subject's mode.
  In a read-only mode every change to that subject is refused with 42205. Switching a scope
  to IMPORT needs it to hold no live subject, unless forced.
- **References** (``{"name", "subject", "version"}``) are stored and resolved: the referenced
  subject-version must exist, and its named types are visible to the referring schema.

Only Avro is supported. The store is not thread-safe: the server serialises every call.

Persistence is event-sourced: a change is a list of records (one schema, one subject's
version list, one setting), written to the data directory's log (see
:mod:`app.embedded.registry.storage`) before :meth:`SchemaStore._apply` applies it in memory,
so a failed write changes nothing and a restart replays exactly what was acknowledged.
Without a data directory the store lives in memory (unit tests).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import avro.schema

from app.embedded.registry.avro_schema import ParsedSchema, normalise_schema_type, parse_avro
from app.embedded.registry.compatibility import (
    COMPATIBLE,
    DEFAULT_LEVEL,
    CompatibilityLevel,
    CompatibilityResult,
    check,
)
from app.embedded.registry.exceptions import (
    IncompatibleSchema,
    InvalidSchema,
    OperationNotPermitted,
    ReferenceExists,
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
from app.embedded.registry.records import (
    DEFAULT_MODE,
    MAX_VERSION,
    Mode,
    Reference,
    RegisteredVersion,
    StoredSchema,
    SubjectVersion,
    Version,
)
from app.embedded.registry.storage import Change, DataDir

DOCUMENT_FORMAT = 2
GLOBAL = ""  # the key of the global scope in configs and modes (no subject is named "")


def _identity(schema_type: str, parsed: ParsedSchema, references: Sequence[Reference]) -> str:
    refs = ",".join(f"{r.name}|{r.subject}|{r.version}" for r in references)
    return f"{schema_type}\n{parsed.canonical}\n{refs}"


@dataclass(frozen=True)
class Config:
    """A scope's own compatibility settings (None: not set there)."""

    level: CompatibilityLevel | None = None
    normalize: bool | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.level is not None:
            out["level"] = self.level.value
        if self.normalize is not None:
            out["normalize"] = self.normalize
        return out

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Config:
        level = value.get("level")
        normalize = value.get("normalize")
        return cls(
            CompatibilityLevel(level) if level is not None else None,
            bool(normalize) if normalize is not None else None,
        )


class SchemaStore:
    """Subjects, versions, global ids, compatibility configuration and modes of one registry."""

    def __init__(self, data_dir: DataDir | None = None) -> None:
        self._data_dir = data_dir
        self._next_id = 1
        self._schemas: dict[int, StoredSchema] = {}
        self._by_identity: dict[str, int] = {}
        self._by_guid: dict[str, int] = {}
        self._subjects: dict[str, list[SubjectVersion]] = {}
        self._configs: dict[str, Config] = {}
        self._modes: dict[str, Mode] = {}
        self._parsed: dict[int, avro.schema.Schema] = {}
        if data_dir is not None:
            saved = data_dir.load()
            if saved.snapshot is not None:
                self._restore(saved.snapshot)
            try:
                for change in saved.changes:
                    self._apply(change)
            except (KeyError, TypeError, ValueError) as exc:
                raise StoreError(f"{data_dir.log_path} cannot be replayed: {exc!r}") from exc

    @classmethod
    def open(cls, path: Path) -> SchemaStore:
        """The store saved under *path*, owned exclusively by this process until :meth:`close`."""
        data_dir = DataDir.open(path)
        try:
            return cls(data_dir)
        except BaseException:
            data_dir.close()
            raise

    def close(self) -> None:
        if self._data_dir is not None:
            self._data_dir.close()

    # -- registering and looking up -------------------------------------------------------

    def register(
        self,
        subject: str,
        schema: str,
        schema_type: str | None = None,
        references: Sequence[Reference] = (),
        *,
        normalize: bool | None = None,
        schema_id: int | None = None,
        version: int | None = None,
    ) -> RegisteredVersion:
        """Register *schema* under *subject*; see the module docstring for the rules.

        *schema_id* and *version* (IMPORT mode only) give the new version its id and number.
        """
        schema_type = normalise_schema_type(schema_type)
        references = tuple(references)
        parsed = self._parse(schema, references, self._normalizing(subject, normalize))
        identity = _identity(schema_type, parsed, references)
        versions = self._subjects.get(subject, [])
        for held in reversed(versions):
            stored = self._schemas[held.schema_id]
            if (
                not held.deleted
                and stored.identity == identity
                and schema_id in (None, stored.id)
                and version in (None, held.version)
            ):
                return RegisteredVersion(subject, held.version, stored)
        existing_id = self._by_identity.get(identity)

        mode = self.mode_in_scope(subject)
        importing = schema_id is not None or version is not None
        if mode.read_only:
            raise self._read_only(subject)
        if importing and mode is not Mode.IMPORT:
            raise OperationNotPermitted(f"Subject {subject} is not in import mode")
        if not importing and mode is not Mode.READWRITE:
            raise OperationNotPermitted(f"Subject {subject} is not in read-write mode")

        if mode is not Mode.IMPORT:
            level = self.subject_level(subject, default_to_global=True)
            result = check(level, parsed.avro, self._live_parsed(versions))
            if not result.is_compatible:
                raise IncompatibleSchema(
                    f"Schema being registered is incompatible with an earlier schema for "
                    f'subject "{subject}" (compatibility {level.value}), details: '
                    + "; ".join(result.messages)
                )

        changes: list[Change] = []
        if schema_id is not None and schema_id != existing_id:
            if not 1 <= schema_id <= MAX_VERSION:
                raise InvalidSchema(f"Invalid schema id {schema_id}")
            if schema_id in self._schemas:
                raise OperationNotPermitted(
                    f"Overwrite new schema with id {schema_id} is not permitted."
                )
            new_id: int | None = schema_id
        else:
            new_id = None if existing_id is not None else self._next_id
        if new_id is not None:
            changes.append(
                {
                    "op": "schema",
                    "id": new_id,
                    "guid": str(uuid.uuid4()),
                    "schema_type": schema_type,
                    "schema": parsed.text,
                    "references": [r.to_json() for r in references],
                    "identity": identity,
                }
            )
            changes.append({"op": "next_id", "value": max(self._next_id, new_id + 1)})
        stored_id = new_id if new_id is not None else existing_id
        assert stored_id is not None
        if version is not None:
            if not 1 <= version <= MAX_VERSION:
                raise InvalidSchema(f"Invalid version {version}")
            taken = next((held for held in versions if held.version == version), None)
            if taken is not None:
                raise OperationNotPermitted(
                    f"Subject {subject} already has a version {version} (schema id "
                    f"{taken.schema_id}); it cannot be imported again"
                )
            new_version = version
        else:
            new_version = max((held.version for held in versions), default=0) + 1
        kept = [held for held in versions if not (held.deleted and held.schema_id == stored_id)]
        after = sorted([*kept, SubjectVersion(new_version, stored_id)], key=lambda v: v.version)
        changes.append(self._versions_change(subject, after))
        self._commit(changes)
        self._parsed[stored_id] = parsed.avro
        return RegisteredVersion(subject, new_version, self._schemas[stored_id], created=True)

    def lookup(
        self,
        subject: str,
        schema: str,
        schema_type: str | None = None,
        references: Sequence[Reference] = (),
        deleted: bool = False,
        *,
        normalize: bool | None = None,
    ) -> RegisteredVersion:
        """The version of *subject* holding *schema* (40401 no subject, 40403 not held)."""
        versions = self._visible_versions(subject, deleted)
        schema_type = normalise_schema_type(schema_type)
        references = tuple(references)
        parsed = self._parse(schema, references, self._normalizing(subject, normalize))
        identity = _identity(schema_type, parsed, references)
        for held in reversed(versions):
            if self._schemas[held.schema_id].identity == identity:
                return RegisteredVersion(
                    subject, held.version, self._schemas[held.schema_id], held.deleted
                )
        raise SchemaNotFound("Schema not found")

    def schema_by_id(self, schema_id: int) -> StoredSchema:
        """The schema with this id, while a subject-version (live or soft-deleted) holds it."""
        if schema_id not in self._schemas or not self._holders(schema_id, deleted=True):
            raise SchemaNotFound(f"Schema {schema_id} not found")
        return self._schemas[schema_id]

    def schema_by_guid(self, guid: str) -> StoredSchema:
        schema_id = self._by_guid.get(guid)
        if schema_id is None:
            raise SchemaNotFound(f"Schema {guid} not found")
        return self.schema_by_id(schema_id)

    def subjects_for_id(self, schema_id: int, deleted: bool = False) -> list[str]:
        self.schema_by_id(schema_id)
        return sorted({subject for subject, _ in self._holders(schema_id, deleted)})

    def versions_for_id(self, schema_id: int, deleted: bool = False) -> list[tuple[str, int]]:
        self.schema_by_id(schema_id)
        return sorted(self._holders(schema_id, deleted))

    def schemas(
        self,
        prefix: str = "",
        deleted: bool = False,
        latest_only: bool = False,
        offset: int = 0,
        limit: int = -1,
    ) -> list[RegisteredVersion]:
        """Every subject-version under subjects starting with *prefix* (``GET /schemas``).

        Sorted by subject and version; *latest_only* keeps each subject's latest one.
        """
        found: list[RegisteredVersion] = []
        for subject in sorted(self._subjects):
            if not subject.startswith(prefix):
                continue
            held = [v for v in self._subjects[subject] if deleted or not v.deleted]
            if latest_only:
                held = held[-1:]
            found.extend(
                RegisteredVersion(subject, v.version, self._schemas[v.schema_id], v.deleted)
                for v in held
            )
        found = found[max(offset, 0) :]
        return found if limit < 0 else found[:limit]

    # -- subjects and versions ------------------------------------------------------------

    def subjects(
        self, deleted: bool = False, deleted_only: bool = False, prefix: str = ""
    ) -> list[str]:
        """Subjects with a live version; with *deleted* also soft-deleted ones.

        *deleted_only* lists only subjects whose every version is soft-deleted.
        """
        names = []
        for subject, versions in self._subjects.items():
            if not subject.startswith(prefix):
                continue
            live = any(not held.deleted for held in versions)
            if (deleted_only and not live) or (not deleted_only and (live or deleted)):
                names.append(subject)
        return sorted(names)

    def versions(
        self, subject: str, deleted: bool = False, deleted_only: bool = False
    ) -> list[int]:
        held = self._visible_versions(subject, deleted or deleted_only)
        if deleted_only:
            return [v.version for v in held if v.deleted]
        return [v.version for v in held]

    def get_version(
        self, subject: str, version: Version, deleted: bool = False
    ) -> RegisteredVersion:
        held = self._find_version(subject, version, deleted)
        return RegisteredVersion(subject, held.version, self._schemas[held.schema_id], held.deleted)

    def referenced_by(self, subject: str, version: Version) -> list[int]:
        """Ids of the live schemas that reference this subject-version."""
        held = self._find_version(subject, version, deleted=True)
        return sorted(self._referrers(subject, held.version, include_soft_deleted=False))

    # -- deleting -------------------------------------------------------------------------

    def delete_subject(self, subject: str, permanent: bool = False) -> list[int]:
        """Soft-delete every live version, or (*permanent*) remove a soft-deleted subject.

        Returns the versions deleted.
        """
        if self.mode_in_scope(subject).read_only:
            raise self._read_only(subject)
        versions = self._subjects.get(subject)
        if not versions:
            raise SubjectNotFound(f"Subject '{subject}' not found.")
        live = [held for held in versions if not held.deleted]
        if permanent:
            if live:
                raise SubjectNotSoftDeleted(
                    f"Subject '{subject}' was not deleted first before being permanently deleted"
                )
            for held in versions:
                self._refuse_if_referenced(subject, held.version, include_soft_deleted=True)
            self._commit([self._versions_change(subject, []), *self._forget_scope(subject)])
            return [held.version for held in versions]
        if not live:
            raise SubjectSoftDeleted(
                f"Subject '{subject}' was soft deleted. Set permanent=true to delete permanently"
            )
        for held in live:
            self._refuse_if_referenced(subject, held.version, include_soft_deleted=False)
        after = [SubjectVersion(v.version, v.schema_id, True) for v in versions]
        self._commit([self._versions_change(subject, after), *self._forget_scope(subject)])
        return [held.version for held in live]

    def delete_version(self, subject: str, version: Version, permanent: bool = False) -> int:
        """Soft-delete a live version, or (*permanent*) remove a soft-deleted one."""
        if self.mode_in_scope(subject).read_only:
            raise self._read_only(subject)
        # A numbered version is found even when soft-deleted, to say so (40406); "latest"
        # means the latest live version, or for a permanent delete the latest of all.
        held = self._find_version(subject, version, deleted=permanent or version != "latest")
        if permanent:
            if not held.deleted:
                raise VersionNotSoftDeleted(
                    f"Subject '{subject}' Version {held.version} was not deleted first before "
                    "being permanently deleted"
                )
            self._refuse_if_referenced(subject, held.version, include_soft_deleted=True)
            remaining = [v for v in self._subjects[subject] if v is not held]
            self._commit([self._versions_change(subject, remaining)])
            return held.version
        if held.deleted:
            raise VersionSoftDeleted(
                f"Subject '{subject}' Version {held.version} was soft deleted. "
                "Set permanent=true to delete permanently"
            )
        self._refuse_if_referenced(subject, held.version, include_soft_deleted=False)
        after = [
            SubjectVersion(v.version, v.schema_id, v.deleted or v is held)
            for v in self._subjects[subject]
        ]
        changes = [self._versions_change(subject, after)]
        if all(v.deleted for v in after):
            changes += self._forget_scope(subject)
        self._commit(changes)
        return held.version

    # -- compatibility --------------------------------------------------------------------

    def check_compatibility(
        self,
        subject: str,
        schema: str,
        schema_type: str | None = None,
        references: Sequence[Reference] = (),
        version: Version | None = None,
        *,
        normalize: bool | None = None,
    ) -> CompatibilityResult:
        """Would *schema* be accepted under *subject*'s level?

        Against one *version* (``latest`` when the subject has no live version is trivially
        compatible, as in Confluent), or with ``version=None`` against the versions the level
        itself looks at.
        """
        schema_type = normalise_schema_type(schema_type)
        parsed = self._parse(schema, tuple(references), self._normalizing(subject, normalize))
        level = self.subject_level(subject, default_to_global=True)
        versions = self._subjects.get(subject, [])
        if version is None:
            return check(level, parsed.avro, self._live_parsed(versions))
        if version == "latest" and not any(not held.deleted for held in versions):
            return COMPATIBLE
        held = self._find_version(subject, version, deleted=False)
        return check(level, parsed.avro, [(held.version, self._avro(held.schema_id))])

    # -- configuration --------------------------------------------------------------------

    def global_level(self) -> CompatibilityLevel:
        return self._configs.get(GLOBAL, Config()).level or DEFAULT_LEVEL

    def global_normalize(self) -> bool:
        return bool(self._configs.get(GLOBAL, Config()).normalize)

    def set_global_level(
        self, level: CompatibilityLevel | None, normalize: bool | None = None
    ) -> CompatibilityLevel:
        self._set_config(GLOBAL, level, normalize)
        return self.global_level()

    def reset_global_level(self) -> CompatibilityLevel:
        """Back to the default (BACKWARD); returns the level that was set."""
        previous = self.global_level()
        if self.mode_in_scope(None).read_only:
            raise self._read_only(None)
        self._commit([{"op": "config", "subject": GLOBAL, "value": None}])
        return previous

    def subject_level(self, subject: str, default_to_global: bool = False) -> CompatibilityLevel:
        level = self._configs.get(subject, Config()).level
        if level is not None:
            return level
        if default_to_global:
            return self.global_level()
        raise SubjectConfigNotFound(
            f"Subject '{subject}' does not have subject-level compatibility configured"
        )

    def subject_normalize(self, subject: str, default_to_global: bool = True) -> bool | None:
        own = self._configs.get(subject, Config()).normalize
        if own is not None or not default_to_global:
            return own
        return self.global_normalize()

    def set_subject_level(
        self, subject: str, level: CompatibilityLevel | None, normalize: bool | None = None
    ) -> CompatibilityLevel:
        self._set_config(subject, level, normalize)
        return self.subject_level(subject, default_to_global=True)

    def delete_subject_level(self, subject: str) -> CompatibilityLevel:
        """Forget *subject*'s own level (it follows the global one again); returns it."""
        if self.mode_in_scope(subject).read_only:
            raise self._read_only(subject)
        previous = self.subject_level(subject)
        self._commit([{"op": "config", "subject": subject, "value": None}])
        return previous

    def _set_config(
        self, scope: str, level: CompatibilityLevel | None, normalize: bool | None
    ) -> None:
        if self.mode_in_scope(scope or None).read_only:
            raise self._read_only(scope or None)
        current = self._configs.get(scope, Config())
        new = Config(
            level if level is not None else current.level,
            normalize if normalize is not None else current.normalize,
        )
        self._commit([{"op": "config", "subject": scope, "value": new.to_json()}])

    # -- modes ----------------------------------------------------------------------------

    def global_mode(self) -> Mode:
        return self._modes.get(GLOBAL, DEFAULT_MODE)

    def mode_in_scope(self, subject: str | None) -> Mode:
        """The mode that governs *subject* (None: the global scope)."""
        global_mode = self.global_mode()
        if subject is None or global_mode is Mode.READONLY_OVERRIDE:
            return global_mode
        return self._modes.get(subject, global_mode)

    def subject_mode(self, subject: str, default_to_global: bool = False) -> Mode:
        """*subject*'s own mode (40409 when unset), or with *default_to_global* the one in force."""
        if default_to_global:
            return self.mode_in_scope(subject)
        if self.global_mode() is Mode.READONLY_OVERRIDE:
            return Mode.READONLY_OVERRIDE
        mode = self._modes.get(subject)
        if mode is None:
            raise SubjectModeNotFound(
                f"Subject '{subject}' does not have subject-level mode configured"
            )
        return mode

    def set_mode(self, subject: str | None, mode: Mode, force: bool = False) -> Mode:
        """Set the global mode (*subject* None) or a subject's; IMPORT needs an empty scope."""
        if mode is Mode.IMPORT and self.mode_in_scope(subject) is not Mode.IMPORT and not force:
            live = self.subjects()
            if (subject is None and live) or subject in live:
                raise OperationNotPermitted("Cannot import since found existing subjects")
        self._commit([{"op": "mode", "subject": subject or GLOBAL, "value": mode.value}])
        return mode

    def delete_subject_mode(self, subject: str) -> Mode:
        """Forget *subject*'s own mode; returns it (40401 when it had none, as Confluent)."""
        mode = self._modes.get(subject)
        if mode is None:
            raise SubjectNotFound(f"Subject '{subject}' not found.")
        self._commit([{"op": "mode", "subject": subject, "value": None}])
        return mode

    # -- internals ------------------------------------------------------------------------

    def _normalizing(self, subject: str, requested: bool | None) -> bool:
        if requested is not None:
            return requested
        return bool(self.subject_normalize(subject))

    @staticmethod
    def _read_only(subject: str | None) -> OperationNotPermitted:
        if subject is None:
            return OperationNotPermitted("The registry is in read-only mode")
        return OperationNotPermitted(f"Subject {subject} is in read-only mode")

    def _parse(
        self, schema: str, references: tuple[Reference, ...], normalize: bool = False
    ) -> ParsedSchema:
        if not isinstance(schema, str) or not schema.strip():
            raise InvalidSchema("Invalid schema: the schema is empty")
        return parse_avro(schema, self._referenced_texts(references, set()), normalize)

    def _referenced_texts(
        self, references: Sequence[Reference], seen: set[tuple[str, int]]
    ) -> list[str]:
        """Texts of the referenced schemas, transitively, dependencies first."""
        texts: list[str] = []
        for ref in references:
            if (ref.subject, ref.version) in seen:
                continue
            seen.add((ref.subject, ref.version))
            held = next(
                (v for v in self._subjects.get(ref.subject, []) if v.version == ref.version), None
            )
            if held is None:
                raise InvalidSchema(
                    f"Invalid schema: reference {ref.name!r} points to subject "
                    f"'{ref.subject}' version {ref.version}, which does not exist"
                )
            target = self._schemas[held.schema_id]
            texts.extend(self._referenced_texts(target.references, seen))
            texts.append(target.text)
        return texts

    def _avro(self, schema_id: int) -> avro.schema.Schema:
        parsed = self._parsed.get(schema_id)
        if parsed is None:
            stored = self._schemas[schema_id]
            parsed = self._parse(stored.text, stored.references).avro
            self._parsed[schema_id] = parsed
        return parsed

    def _live_parsed(
        self, versions: Sequence[SubjectVersion]
    ) -> list[tuple[int, avro.schema.Schema]]:
        return [(held.version, self._avro(held.schema_id)) for held in versions if not held.deleted]

    def _visible_versions(self, subject: str, deleted: bool) -> list[SubjectVersion]:
        visible = [v for v in self._subjects.get(subject, []) if deleted or not v.deleted]
        if not visible:
            raise SubjectNotFound(f"Subject '{subject}' not found.")
        return visible

    def _find_version(self, subject: str, version: Version, deleted: bool) -> SubjectVersion:
        visible = self._visible_versions(subject, deleted)
        if version == "latest":
            return visible[-1]
        for held in visible:
            if held.version == version:
                return held
        raise VersionNotFound(f"Version {version} not found.")

    def _holders(self, schema_id: int, deleted: bool) -> list[tuple[str, int]]:
        return [
            (subject, held.version)
            for subject, versions in self._subjects.items()
            for held in versions
            if held.schema_id == schema_id and (deleted or not held.deleted)
        ]

    def _referrers(self, subject: str, version: int, include_soft_deleted: bool) -> set[int]:
        ids = set()
        for versions in self._subjects.values():
            for held in versions:
                if held.deleted and not include_soft_deleted:
                    continue
                refs = self._schemas[held.schema_id].references
                if any(r.subject == subject and r.version == version for r in refs):
                    ids.add(held.schema_id)
        return ids

    def _refuse_if_referenced(self, subject: str, version: int, include_soft_deleted: bool) -> None:
        referrers = self._referrers(subject, version, include_soft_deleted)
        if referrers:
            raise ReferenceExists(
                f"One or more references exist to the schema {{subject={subject}, "
                f"version={version}}}: schema ids {sorted(referrers)}"
            )

    @staticmethod
    def _versions_change(subject: str, versions: Sequence[SubjectVersion]) -> Change:
        return {
            "op": "versions",
            "subject": subject,
            "versions": [[v.version, v.schema_id, v.deleted] for v in versions],
        }

    def _forget_scope(self, subject: str) -> list[Change]:
        """Records removing *subject*'s own config and mode (when it has them)."""
        changes: list[Change] = []
        if subject in self._configs:
            changes.append({"op": "config", "subject": subject, "value": None})
        if subject in self._modes:
            changes.append({"op": "mode", "subject": subject, "value": None})
        return changes

    # -- persistence: a change is written, then applied ------------------------------------

    def _commit(self, changes: list[Change]) -> None:
        """Make *changes* durable (one log line), then apply them; on failure nothing changes."""
        if self._data_dir is not None:
            self._data_dir.append(changes)
        for change in changes:
            self._apply(change)
        if self._data_dir is not None and self._data_dir.wants_compaction:
            self._data_dir.compact(self._document())

    def _apply(self, change: Change) -> None:
        op = change["op"]
        if op == "schema":
            self._add_schema(
                StoredSchema(
                    id=int(change["id"]),
                    guid=str(change["guid"]),
                    schema_type=str(change["schema_type"]),
                    text=str(change["schema"]),
                    references=tuple(Reference.from_json(r) for r in change["references"]),
                    identity=str(change["identity"]),
                )
            )
        elif op == "next_id":
            self._next_id = max(self._next_id, int(change["value"]))
        elif op == "versions":
            subject = str(change["subject"])
            versions = [SubjectVersion(int(v), int(i), bool(d)) for v, i, d in change["versions"]]
            if versions:
                self._subjects[subject] = versions
            else:
                self._subjects.pop(subject, None)
        elif op == "config":
            scope, value = str(change["subject"]), change["value"]
            if value is None:
                self._configs.pop(scope, None)
            else:
                self._configs[scope] = Config.from_json(value)
        elif op == "mode":
            scope, value = str(change["subject"]), change["value"]
            if value is None:
                self._modes.pop(scope, None)
            else:
                self._modes[scope] = Mode(value)
        else:
            raise ValueError(f"unknown change {op!r}")

    def _add_schema(self, stored: StoredSchema) -> None:
        self._schemas[stored.id] = stored
        self._by_identity.setdefault(stored.identity, stored.id)
        self._by_guid[stored.guid] = stored.id
        self._next_id = max(self._next_id, stored.id + 1)

    def _document(self) -> dict[str, Any]:
        return {
            "format": DOCUMENT_FORMAT,
            "next_id": self._next_id,
            "configs": {scope: config.to_json() for scope, config in self._configs.items()},
            "modes": {scope: mode.value for scope, mode in self._modes.items()},
            "schemas": [
                {
                    "id": s.id,
                    "guid": s.guid,
                    "schema_type": s.schema_type,
                    "schema": s.text,
                    "references": [r.to_json() for r in s.references],
                    "identity": s.identity,
                }
                for s in self._schemas.values()
            ],
            "subjects": {
                subject: [
                    {"version": v.version, "id": v.schema_id, "deleted": v.deleted}
                    for v in versions
                ]
                for subject, versions in self._subjects.items()
            },
        }

    def _restore(self, document: dict[str, Any]) -> None:
        """Load a snapshot: format 2, or format 1 (levels only, written by earlier versions)."""
        try:
            form = document.get("format")
            if form not in (1, DOCUMENT_FORMAT):
                raise ValueError(f"unknown format {form!r}")
            schemas = [
                StoredSchema(
                    id=int(s["id"]),
                    guid=str(s["guid"]),
                    schema_type=str(s["schema_type"]),
                    text=str(s["schema"]),
                    references=tuple(Reference.from_json(r) for r in s["references"]),
                    identity=str(s["identity"]),
                )
                for s in document["schemas"]
            ]
            subjects = {
                str(subject): [
                    SubjectVersion(int(v["version"]), int(v["id"]), bool(v["deleted"]))
                    for v in versions
                ]
                for subject, versions in document["subjects"].items()
            }
            if form == 1:
                configs = {GLOBAL: Config(CompatibilityLevel(document["global_level"]))}
                configs.update(
                    (str(s), Config(CompatibilityLevel(level)))
                    for s, level in document["subject_levels"].items()
                )
                modes: dict[str, Mode] = {}
            else:
                configs = {str(k): Config.from_json(v) for k, v in document["configs"].items()}
                modes = {str(k): Mode(v) for k, v in document["modes"].items()}
            next_id = int(document["next_id"])
        except (KeyError, TypeError, ValueError, InvalidSchema) as exc:
            where = self._data_dir.state_path if self._data_dir else "the registry document"
            raise StoreError(f"{where} cannot be loaded: {exc!r}") from exc
        for stored in schemas:
            self._add_schema(stored)
        self._subjects = subjects
        self._configs = configs
        self._modes = modes
        self._next_id = max(next_id, self._next_id)
