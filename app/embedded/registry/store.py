"""The registry's state and rules, with no HTTP in sight.

:class:`SchemaStore` keeps what a Confluent Schema Registry keeps and decides what it
decides: global schema ids, subjects and their versions, soft and permanent deletion,
compatibility levels. Every refusal is a :class:`~app.embedded.registry.exceptions.RegistryError`
carrying Confluent's error code; the HTTP layer only translates.

Rules, following Confluent's:

- **Ids are global and bound to content.** A schema's id is decided by its canonical form
  (see :mod:`app.embedded.registry.avro_schema`) plus its type and references: the same schema
  under any subject gets the same id. New content gets ``max id + 1``. An id is never given
  to other content, not even after a permanent delete: the content-to-id binding is kept, so
  re-registering an identical schema after a permanent delete gets its old id back. A schema
  that no subject-version (live or soft-deleted) holds any more answers "schema not found".
- **Registering** a schema that is already a live version of the subject returns that version
  and creates nothing. Otherwise the compatibility level is enforced against the live
  versions, and a new version ``max version + 1`` (soft-deleted versions count) is created.
  As Confluent does, re-registering a soft-deleted schema creates a new version and removes
  the soft-deleted versions that held the same id.
- **Deleting** is soft first (versions are hidden unless ``deleted`` is asked for, and their
  ids still resolve), then permanent, which only a soft-deleted subject or version accepts.
  A version that another schema references cannot be deleted (42206).
- **References** (``{"name", "subject", "version"}``) are stored and resolved: the referenced
  subject-version must exist, and its named types are visible to the referring schema.

Only Avro is supported. The store is not thread-safe: the server serialises every call.
Pass a :class:`~app.embedded.registry.storage.DataDir` to make every change durable before
the call returns; without one the store lives in memory (unit tests).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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
    ReferenceExists,
    SchemaNotFound,
    StoreError,
    SubjectConfigNotFound,
    SubjectNotFound,
    SubjectNotSoftDeleted,
    SubjectSoftDeleted,
    VersionNotFound,
    VersionNotSoftDeleted,
    VersionSoftDeleted,
)
from app.embedded.registry.records import (
    Reference,
    RegisteredVersion,
    StoredSchema,
    SubjectVersion,
    Version,
)
from app.embedded.registry.storage import DataDir

DOCUMENT_FORMAT = 1


def _identity(schema_type: str, parsed: ParsedSchema, references: Sequence[Reference]) -> str:
    refs = ",".join(f"{r.name}|{r.subject}|{r.version}" for r in references)
    return f"{schema_type}\n{parsed.canonical}\n{refs}"


class SchemaStore:
    """Subjects, versions, global ids and compatibility configuration of one registry."""

    def __init__(self, data_dir: DataDir | None = None) -> None:
        self._data_dir = data_dir
        self._next_id = 1
        self._schemas: dict[int, StoredSchema] = {}
        self._by_identity: dict[str, int] = {}
        self._by_guid: dict[str, int] = {}
        self._subjects: dict[str, list[SubjectVersion]] = {}
        self._global_level = DEFAULT_LEVEL
        self._subject_levels: dict[str, CompatibilityLevel] = {}
        self._parsed: dict[int, avro.schema.Schema] = {}
        if data_dir is not None:
            document = data_dir.load()
            if document is not None:
                self._restore(document)

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
    ) -> RegisteredVersion:
        """Register *schema* under *subject*; see the module docstring for the rules."""
        schema_type = normalise_schema_type(schema_type)
        references = tuple(references)
        parsed = self._parse(schema, references)
        identity = _identity(schema_type, parsed, references)
        versions = self._subjects.get(subject, [])
        existing_id = self._by_identity.get(identity)
        if existing_id is not None:
            for held in reversed(versions):
                if held.schema_id == existing_id and not held.deleted:
                    return RegisteredVersion(subject, held.version, self._schemas[existing_id])

        level = self.subject_level(subject, default_to_global=True)
        result = check(level, parsed.avro, self._live_parsed(versions))
        if not result.is_compatible:
            raise IncompatibleSchema(
                f"Schema being registered is incompatible with an earlier schema for subject "
                f'"{subject}" (compatibility {level.value}), details: ' + "; ".join(result.messages)
            )

        with self._changing():
            if existing_id is None:
                stored = StoredSchema(
                    id=self._next_id,
                    guid=str(uuid.uuid4()),
                    schema_type=schema_type,
                    text=parsed.text,
                    references=references,
                    identity=identity,
                )
                self._add_schema(stored)
                self._next_id += 1
            else:
                stored = self._schemas[existing_id]
            self._parsed[stored.id] = parsed.avro
            new_version = max((held.version for held in versions), default=0) + 1
            kept = [held for held in versions if not (held.deleted and held.schema_id == stored.id)]
            self._subjects[subject] = [*kept, SubjectVersion(new_version, stored.id)]
        return RegisteredVersion(subject, new_version, stored, created=True)

    def lookup(
        self,
        subject: str,
        schema: str,
        schema_type: str | None = None,
        references: Sequence[Reference] = (),
        deleted: bool = False,
    ) -> RegisteredVersion:
        """The version of *subject* holding *schema* (40401 no subject, 40403 not held)."""
        versions = self._visible_versions(subject, deleted)
        schema_type = normalise_schema_type(schema_type)
        references = tuple(references)
        parsed = self._parse(schema, references)
        schema_id = self._by_identity.get(_identity(schema_type, parsed, references))
        for held in reversed(versions):
            if held.schema_id == schema_id:
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
            with self._changing():
                del self._subjects[subject]
                self._subject_levels.pop(subject, None)
            return [held.version for held in versions]
        if not live:
            raise SubjectSoftDeleted(
                f"Subject '{subject}' was soft deleted. Set permanent=true to delete permanently"
            )
        for held in live:
            self._refuse_if_referenced(subject, held.version, include_soft_deleted=False)
        with self._changing():
            for held in live:
                held.deleted = True
        return [held.version for held in live]

    def delete_version(self, subject: str, version: Version, permanent: bool = False) -> int:
        """Soft-delete a live version, or (*permanent*) remove a soft-deleted one."""
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
            with self._changing():
                remaining = [v for v in self._subjects[subject] if v is not held]
                if remaining:
                    self._subjects[subject] = remaining
                else:
                    del self._subjects[subject]
            return held.version
        if held.deleted:
            raise VersionSoftDeleted(
                f"Subject '{subject}' Version {held.version} was soft deleted. "
                "Set permanent=true to delete permanently"
            )
        self._refuse_if_referenced(subject, held.version, include_soft_deleted=False)
        with self._changing():
            held.deleted = True
        return held.version

    # -- compatibility --------------------------------------------------------------------

    def check_compatibility(
        self,
        subject: str,
        schema: str,
        schema_type: str | None = None,
        references: Sequence[Reference] = (),
        version: Version | None = None,
    ) -> CompatibilityResult:
        """Would *schema* be accepted under *subject*'s level?

        Against one *version* (``latest`` when the subject has no live version is trivially
        compatible, as in Confluent), or with ``version=None`` against the versions the level
        itself looks at.
        """
        schema_type = normalise_schema_type(schema_type)
        parsed = self._parse(schema, tuple(references))
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
        return self._global_level

    def set_global_level(self, level: CompatibilityLevel) -> CompatibilityLevel:
        with self._changing():
            self._global_level = level
        return level

    def reset_global_level(self) -> CompatibilityLevel:
        """Back to the default (BACKWARD); returns the level that was set."""
        previous = self._global_level
        with self._changing():
            self._global_level = DEFAULT_LEVEL
        return previous

    def subject_level(self, subject: str, default_to_global: bool = False) -> CompatibilityLevel:
        level = self._subject_levels.get(subject)
        if level is not None:
            return level
        if default_to_global:
            return self._global_level
        raise SubjectConfigNotFound(
            f"Subject '{subject}' does not have subject-level compatibility configured"
        )

    def set_subject_level(self, subject: str, level: CompatibilityLevel) -> CompatibilityLevel:
        with self._changing():
            self._subject_levels[subject] = level
        return level

    def delete_subject_level(self, subject: str) -> CompatibilityLevel:
        """Forget *subject*'s own level (it follows the global one again); returns it."""
        previous = self.subject_level(subject)
        with self._changing():
            del self._subject_levels[subject]
        return previous

    # -- internals ------------------------------------------------------------------------

    def _parse(self, schema: str, references: tuple[Reference, ...]) -> ParsedSchema:
        if not isinstance(schema, str) or not schema.strip():
            raise InvalidSchema("Invalid schema: the schema is empty")
        return parse_avro(schema, self._referenced_texts(references, set()))

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

    def _add_schema(self, stored: StoredSchema) -> None:
        self._schemas[stored.id] = stored
        self._by_identity[stored.identity] = stored.id
        self._by_guid[stored.guid] = stored.id

    @contextmanager
    def _changing(self) -> Iterator[None]:
        """Apply a change in memory, then save it; if saving fails, undo it and re-raise."""
        before = self._document()
        try:
            yield
            if self._data_dir is not None:
                self._data_dir.save(self._document())
        except BaseException:
            self._restore(before)
            raise

    def _document(self) -> dict[str, Any]:
        return {
            "format": DOCUMENT_FORMAT,
            "next_id": self._next_id,
            "global_level": self._global_level.value,
            "subject_levels": {s: level.value for s, level in self._subject_levels.items()},
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
        try:
            if document.get("format") != DOCUMENT_FORMAT:
                raise ValueError(f"unknown format {document.get('format')!r}")
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
            global_level = CompatibilityLevel(document["global_level"])
            subject_levels = {
                str(s): CompatibilityLevel(level) for s, level in document["subject_levels"].items()
            }
            next_id = int(document["next_id"])
        except (KeyError, TypeError, ValueError, InvalidSchema) as exc:
            where = self._data_dir.state_path if self._data_dir else "the registry document"
            raise StoreError(f"{where} cannot be loaded: {exc!r}") from exc
        self._schemas, self._by_identity, self._by_guid, self._parsed = {}, {}, {}, {}
        for stored in schemas:
            self._add_schema(stored)
        self._subjects = subjects
        self._global_level = global_level
        self._subject_levels = subject_levels
        self._next_id = max(next_id, max(self._schemas, default=0) + 1)
