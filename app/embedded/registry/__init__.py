"""Rearview's embedded schema registry, speaking the Confluent Schema Registry REST API.

- :mod:`.store`: :class:`SchemaStore`, the state and rules (no HTTP);
- :mod:`.records`: what it records (schemas, subject-versions, references);
- :mod:`.compatibility`: the seven levels over Avro's reader/writer checker;
- :mod:`.avro_schema`: parsing and the canonical form that decides schema identity;
- :mod:`.storage`: the data directory (atomic JSON document, exclusive lock);
- :mod:`.server`: ``create_app(store)`` and ``serve(host, port, data_dir)``.
"""

from app.embedded.registry.compatibility import CompatibilityLevel
from app.embedded.registry.records import RegisteredVersion
from app.embedded.registry.server import create_app, serve
from app.embedded.registry.store import SchemaStore

__all__ = ["CompatibilityLevel", "RegisteredVersion", "SchemaStore", "create_app", "serve"]
