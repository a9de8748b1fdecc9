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

With ``normalize`` (Confluent's ``?normalize=true``), the schema is first rewritten in
Confluent's normalised form (see :func:`normalised`): names fully qualified, keys in a fixed
order, aliases sorted. Two submissions that differ only in those respects then get one id, and
the normalised text is what the registry stores, as Confluent does.

Schema references are resolved: each referenced schema's text is parsed first into the same
set of names, so a schema may use a named type defined in a referenced subject-version.

Every walk over a schema here is recursive (the parsers' too), so a schema nested deeper than
Python's recursion limit allows is refused as invalid (42201) instead of failing the request.
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


def parse_avro(text: str, referenced: Sequence[str] = (), normalize: bool = False) -> ParsedSchema:
    """Parse *text*, with the texts of the schemas it references (dependencies first).

    Raises :class:`InvalidSchema` (Confluent 42201) with the parser's reason.
    """
    try:
        return _parse(text, referenced, normalize)
    except RecursionError:
        raise InvalidSchema("Invalid schema: it is nested too deeply to be parsed") from None


def _parse(text: str, referenced: Sequence[str], normalize: bool) -> ParsedSchema:
    try:
        document = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise InvalidSchema(f"Invalid schema: not JSON ({exc})") from exc
    if normalize:
        known = {_full_name(json.loads(ref), None) for ref in referenced}
        document = normalised(document, None, {name for name in known if name})
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
    except RecursionError:
        raise
    except Exception as exc:  # both parsers raise assorted types on bad input
        raise InvalidSchema(f"Invalid schema: {exc}") from exc
    return ParsedSchema(
        text=json.dumps(document, separators=(",", ":"), ensure_ascii=False),
        canonical=json.dumps(parsed.to_json(), sort_keys=True, separators=(",", ":")),
        avro=parsed,
    )


# -- Confluent's normalised form -------------------------------------------------------------

_NAMED = ("record", "error", "enum", "fixed")
_PRIMITIVE_NAMES = frozenset(
    {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
)
_FIELD_KEYS = ("name", "type", "order", "doc", "aliases", "default")
_LOGICAL_KEYS = ("logicalType", "precision", "scale")


def normalised(node: Any, namespace: str | None, defined: set[str]) -> Any:
    """*node* in Confluent's normalised form (``AvroSchemaUtils.toNormalizedString``).

    Named types carry their full name and no namespace, and a type met again is written as
    its name; keys come in a fixed order (``name``, ``type``, then what the type needs, then
    ``doc``, sorted ``aliases``, ``default``, then any other properties sorted by key). A
    document the parser will refuse is returned as it is, for the parser to explain.
    """
    if isinstance(node, str):
        if node in _PRIMITIVE_NAMES or "." in node or not namespace:
            return node
        return f"{namespace}.{node}"
    if isinstance(node, list):
        return [normalised(branch, namespace, defined) for branch in node]
    if not isinstance(node, dict):
        return node
    kind = node.get("type")
    if isinstance(kind, (dict, list)):
        return normalised(kind, namespace, defined)
    if not isinstance(kind, str):
        return node
    if kind in _NAMED:
        full = _full_name(node, namespace)
        if full is None:
            return node
        if full in defined:
            return full
        defined.add(full)
        inner = full.rpartition(".")[0] or None
        out: dict[str, Any] = {"name": full, "type": kind}
        if kind == "enum":
            out["symbols"] = node.get("symbols")
        elif kind == "fixed":
            out["size"] = node.get("size")
            out.update({k: node[k] for k in _LOGICAL_KEYS if k in node})
        else:
            fields = node.get("fields")
            if not isinstance(fields, list):
                return node
            out["fields"] = [_field(f, inner, defined) for f in fields]
        if node.get("doc"):
            out["doc"] = node["doc"]
        if isinstance(node.get("aliases"), list):
            out["aliases"] = sorted({_qualified(a, inner) for a in node["aliases"]})
        if kind == "enum" and "default" in node:
            out["default"] = node["default"]
        taken = {"name", "namespace", "type", "symbols", "size", "fields", "doc", "aliases"}
        taken |= {"default"} if kind == "enum" else set()
        taken |= set(_LOGICAL_KEYS) if kind == "fixed" else set()
        out.update(_other_props(node, taken))
        return out
    if kind in ("array", "map"):
        key = "items" if kind == "array" else "values"
        out = {"type": kind, key: normalised(node.get(key), namespace, defined)}
        out.update(_other_props(node, {"type", key}))
        return out
    if kind in _PRIMITIVE_NAMES:
        out = {"type": kind}
        out.update({k: node[k] for k in _LOGICAL_KEYS if k in node})
        out.update(_other_props(node, {"type", *_LOGICAL_KEYS}))
        return out if len(out) > 1 else kind
    return normalised(kind, namespace, defined)  # {"type": "SomeName"}


def _field(field: Any, namespace: str | None, defined: set[str]) -> Any:
    if not isinstance(field, dict):
        return field
    out: dict[str, Any] = {"name": field.get("name")}
    out["type"] = normalised(field.get("type"), namespace, defined)
    if field.get("order") not in (None, "ascending"):
        out["order"] = field["order"]
    if "doc" in field:
        out["doc"] = field["doc"]
    if isinstance(field.get("aliases"), list) and field["aliases"]:
        out["aliases"] = sorted(set(field["aliases"]))
    if "default" in field:
        out["default"] = field["default"]
    out.update(_other_props(field, set(_FIELD_KEYS)))
    return out


def _other_props(node: dict[str, Any], taken: set[str]) -> dict[str, Any]:
    return {key: node[key] for key in sorted(node) if key not in taken}


def _full_name(node: Any, namespace: str | None) -> str | None:
    if not isinstance(node, dict) or not isinstance(node.get("name"), str):
        return None
    name: str = node["name"]
    if "." in name:
        return name
    space = node.get("namespace", namespace)
    return f"{space}.{name}" if isinstance(space, str) and space else name


def _qualified(name: Any, namespace: str | None) -> Any:
    if not isinstance(name, str) or "." in name or not namespace:
        return name
    return f"{namespace}.{name}"
