"""Errors of the embedded schema registry, each carrying its Confluent error code.

The HTTP layer turns a :class:`RegistryError` into Confluent's body
``{"error_code": code, "message": message}`` with the status :attr:`RegistryError.http_status`,
so clients (confluent-kafka's ``SchemaRegistryClient`` among them) see exactly the codes a
Confluent Schema Registry would answer.
"""

from __future__ import annotations

from core.exceptions import RearviewError


class RegistryError(RearviewError):
    """A request the registry refuses. ``code`` is Confluent's ``error_code``."""

    code: int = 50001

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def http_status(self) -> int:
        """Confluent's rule: a five-digit code's first three digits are the HTTP status."""
        return self.code // 100 if self.code >= 10000 else self.code


class SubjectNotFound(RegistryError):
    code = 40401


class VersionNotFound(RegistryError):
    code = 40402


class SchemaNotFound(RegistryError):
    code = 40403


class SubjectSoftDeleted(RegistryError):
    code = 40404


class SubjectNotSoftDeleted(RegistryError):
    code = 40405


class VersionSoftDeleted(RegistryError):
    code = 40406


class VersionNotSoftDeleted(RegistryError):
    code = 40407


class SubjectConfigNotFound(RegistryError):
    code = 40408


class SubjectModeNotFound(RegistryError):
    code = 40409


class IncompatibleSchema(RegistryError):
    code = 409


class InvalidSchema(RegistryError):
    code = 42201


class InvalidVersion(RegistryError):
    code = 42202


class InvalidCompatibilityLevel(RegistryError):
    code = 42203


class InvalidMode(RegistryError):
    code = 42204


class OperationNotPermitted(RegistryError):
    """Refused by the registry's mode (read-only, or import needed), Confluent's 42205."""

    code = 42205


class ReferenceExists(RegistryError):
    code = 42206


class StoreError(RegistryError):
    """The registry's file could not be read or written (Confluent's 50001 "store error")."""

    code = 50001


class DataDirLocked(RearviewError):
    """Another process already owns the registry's data directory."""
