"""Parse an Avro schema the way the registry needs it: validated, canonical, comparable.

Two parsers look at every schema:

- ``avro`` (the Apache implementation) builds the object that
  :mod:`app.embedded.registry.compatibility` hands to ``ReaderWriterCompatibilityChecker``, and
  gives the canonical form that decides whether two submissions are "the same schema";
- ``fastavro`` parses it too, because Rearview's consumers decode with fastavro: a schema
  fastavro refuses (for instance a default that does not match its field's type, which ``avro``
  lets through) would be registered and then break every reader, so it is refused up front.

The canonical form is the parsed schema serialised again as JSON with sorted keys and no
whitespace. Whitespace and the order of JSON object keys therefore never make two schemas
differ, while everything that changes what a schema means (fields and their order, types,
defaults, docs, aliases, logical types, custom properties) does, as with Confluent's own
registry when ``normalize`` is off.

Schema references are resolved: each referenced schema's text is parsed first into the same
set of names, so a schema may use a named type defined in a referenced subject-version.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import avro.name
import avro.schema
import fastavro

from app.embedded.registry.exceptions import InvalidSchema

AVRO = "AVRO"


@dataclass(frozen=True)
class ParsedSchema:
    """A schema that both parsers accept.

    ``text`` is what the client sent, compacted (whitespace removed, key order kept): the
    registry answers with it. ``canonical`` is the identity used to find an existing id.
    """

    text: str
    canonical: str
    avro: avro.schema.Schema


def normalise_schema_type(schema_type: str | None) -> str:
    """``AVRO`` for a missing or any-case ``avro`` type; every other type is refused."""
    if schema_type is None or schema_type.upper() == AVRO:
        return AVRO
    raise InvalidSchema(
        f"Invalid schema type {schema_type!r}: Rearview's registry supports AVRO schemas only"
    )


def parse_avro(text: str, referenced: Sequence[str] = ()) -> ParsedSchema:
    """Parse *text*, with the texts of the schemas it references (dependencies first).

    Raises :class:`InvalidSchema` (Confluent 42201) with the parser's reason.
    """
    try:
        document = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise InvalidSchema(f"Invalid schema: not JSON ({exc})") from exc
    names = avro.name.Names()
    fastavro_names: dict[str, Any] = {}
    try:
        for ref_text in referenced:
            ref_document = json.loads(ref_text)
            avro.schema.make_avsc_object(ref_document, names)
            fastavro.parse_schema(ref_document, named_schemas=fastavro_names)
    except Exception as exc:  # stored texts were valid when registered
        raise InvalidSchema(f"Invalid schema: a referenced schema does not parse ({exc})") from exc
    try:
        parsed = avro.schema.make_avsc_object(document, names)
        fastavro.parse_schema(document, named_schemas=fastavro_names)
    except Exception as exc:  # both parsers raise assorted types on bad input
        raise InvalidSchema(f"Invalid schema: {exc}") from exc
    return ParsedSchema(
        text=json.dumps(document, separators=(",", ":"), ensure_ascii=False),
        canonical=json.dumps(parsed.to_json(), sort_keys=True, separators=(",", ":")),
        avro=parsed,
    )
