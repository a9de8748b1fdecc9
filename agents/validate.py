"""The validate stage as a pure function: raw message bytes in, clean events and Invalids out.

No Kafka, no registry, no clock: the caller passes the writer schemas it already resolved (by
id, from the registry cache) and the message's metadata. Whatever the bytes are, the result is
a MessageResult in which every event of the message lands in exactly one list; nothing raises.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agents.codec import FramingError, Kind, WriterSchema, decode, split_frame
from agents.properties import canonical
from agents.records import CleanEvent, Invalid, MessageResult, SourceMeta

# Events a producer wrote without an event_id get one derived from their position in Kafka,
# so a redelivered message yields the same ids and is still stored once.
_PROVENANCE_NAMESPACE = uuid.UUID("6f1c1a8e-8f43-4c1e-9a36-3d8f2b0c9e51")

DAY_MS = 86_400_000
BASE_FIELDS = frozenset(("event_id", "project_id", "event_name", "user_id", "timestamp",
                         "properties", "context"))


@dataclass(frozen=True, slots=True)
class Rules:
    event_name_pattern: str = r"^[A-Za-z0-9_$][A-Za-z0-9_ .:/$-]{0,127}$"
    max_user_id_length: int = 256
    # Event time may lag the collector's receive time by this much (offline clients)...
    max_past_ms: int = 365 * DAY_MS
    # ...and run ahead of it by this much (client clock skew).
    max_future_ms: int = DAY_MS
    max_properties: int = 256
    max_key_length: int = 128
    max_value_length: int = 8192


class _Reject(Exception):
    """A rule violation inside one event; becomes an Invalid, never leaves this module."""

    def __init__(self, error_class: str, reason: str) -> None:
        super().__init__(reason)
        self.error_class = error_class
        self.reason = reason


class Validator:
    """Holds the compiled rules; `validate_message` is the stage."""

    def __init__(self, rules: Rules | None = None) -> None:
        self.rules = rules or Rules()
        self._name_re = re.compile(self.rules.event_name_pattern)

    def validate_message(
        self,
        raw: bytes | None,
        key: bytes | None,
        meta: SourceMeta,
        schemas: Mapping[int, WriterSchema | None],
        identity: SourceMeta | None = None,
        only_index: int | None = None,
    ) -> MessageResult:
        """Validate one raw message. *schemas* maps ids to parsed writer schemas (None: unknown).

        A redriven dead letter passes *identity*, the position of the original message, from
        which events without an event_id derive theirs (so a redrive stores the same ids), and
        *only_index* when the letter stands for one event of a batch (the others were clean).
        Provenance columns keep *meta*, the message's own position.
        """
        result = MessageResult()

        def whole(error_class: str, reason: str, schema_id: int | None = None) -> MessageResult:
            result.invalid.append(
                Invalid("decode", error_class, reason, meta, raw or b"", key, None, schema_id)
            )
            return result

        try:
            schema_id, body = split_frame(raw)
        except FramingError as exc:
            return whole("FramingError", str(exc))
        schema = schemas.get(schema_id)
        if schema is None:
            return whole("UnknownSchema", f"schema id {schema_id} is not in the registry", schema_id)
        if schema.resolution_error is not None:
            return whole("ResolutionError", schema.resolution_error, schema_id)
        try:
            decoded = decode(body, schema)
        except Exception as exc:  # corrupted Avro raises EOFError, UnicodeDecodeError, ...
            return whole(type(exc).__name__, f"cannot decode Avro body: {exc}", schema_id)

        if schema.kind is Kind.BATCH:
            events = decoded.get("events") if isinstance(decoded, dict) else None
            if not isinstance(events, list):
                return whole("WrongSchema", "batch message without an events array", schema_id)
        else:
            events = [decoded]
        for index, record in enumerate(events):
            if only_index is not None and index != only_index:
                continue
            try:
                result.clean.append(self._event(record, schema_id, meta, index, identity or meta))
            except _Reject as rej:
                result.invalid.append(
                    Invalid(
                        "validate", rej.error_class, rej.reason, meta, raw, key, index, schema_id
                    )
                )
        return result

    def check(self, record: dict[str, Any], received_at_ms: int) -> str | None:
        """Why *record* (an Event record) would be dead-lettered, or None: the collector asks
        this before answering 202, so a client learns about a bad event at once."""
        meta = SourceMeta("", 0, 0, received_at_ms)
        try:
            self._event(record, 0, meta, 0, meta)
        except _Reject as rej:
            return rej.reason
        return None

    def _event(
        self, record: Any, schema_id: int, meta: SourceMeta, index: int, identity: SourceMeta
    ) -> CleanEvent:
        r = self.rules
        if not isinstance(record, dict):
            raise _Reject("WrongSchema", "record is not an Avro record")
        event_name = _required_str(record, "event_name")
        if not self._name_re.fullmatch(event_name):
            raise _Reject(
                "InvalidField", f"event_name {event_name[:64]!r} does not match {r.event_name_pattern}"
            )
        user_id = _required_str(record, "user_id")
        if len(user_id) > r.max_user_id_length:
            raise _Reject("InvalidField", f"user_id is longer than {r.max_user_id_length} characters")

        timestamp = record.get("timestamp")
        if type(timestamp) is not int:
            raise _Reject("MissingField", "timestamp is missing or not a long (epoch milliseconds)")
        context = record.get("context")
        if not isinstance(context, dict):
            context = {}
        received_at = context.get("received_at")
        if type(received_at) is not int:
            received_at = meta.timestamp_ms
        if timestamp < received_at - r.max_past_ms:
            raise _Reject("InvalidField", "timestamp is further in the past than allowed")
        if timestamp > received_at + r.max_future_ms:
            raise _Reject("InvalidField", "timestamp is further in the future than allowed")

        properties = record.get("properties")
        if properties is None:
            properties = {}
        elif not isinstance(properties, dict):
            raise _Reject("InvalidField", "properties is not a map")
        typed = [k for k in record if k not in BASE_FIELDS]
        if typed:
            # Typed fields (e.g. Purchase.price) become properties, as canonical strings.
            properties = dict(properties)
            for name in typed:
                try:
                    text = canonical(record[name])
                except ValueError as exc:
                    raise _Reject("InvalidField", f"field {name} {exc}") from None
                if text is not None:
                    properties[name] = text
        if len(properties) > r.max_properties:
            raise _Reject("InvalidField", f"more than {r.max_properties} properties")
        for k, v in properties.items():
            if len(k) > r.max_key_length:
                raise _Reject("InvalidField", f"property key {k[:32]!r}... is too long")
            if not isinstance(v, str):
                raise _Reject("InvalidField", f"property {k!r} is not a string")
            if len(v) > r.max_value_length:
                raise _Reject("InvalidField", f"property {k!r} value is too long")

        event_id = record.get("event_id")
        if event_id is None:
            event_id = str(
                uuid.uuid5(_PROVENANCE_NAMESPACE,
                           f"{identity.topic}/{identity.partition}/{identity.offset}/{index}")
            )
        else:
            try:
                event_id = str(uuid.UUID(event_id))
            except (ValueError, TypeError, AttributeError):
                raise _Reject("InvalidField", "event_id is not a UUID") from None

        project_id = record.get("project_id")
        return CleanEvent(
            event_id=event_id,
            project_id=project_id if isinstance(project_id, str) and project_id else "default",
            event_name=event_name,
            user_id=user_id,
            timestamp=timestamp,
            properties=properties,
            ip=_optional_str(context, "ip"),
            user_agent=_optional_str(context, "user_agent"),
            library=_optional_str(context, "library"),
            received_at=received_at,
            schema_id=schema_id,
            source_partition=meta.partition,
            source_offset=meta.offset,
            source_index=index,
        )


def _required_str(record: dict[str, Any], name: str) -> str:
    value = record.get(name)
    if value is None:
        raise _Reject("MissingField", f"{name} is missing")
    if not isinstance(value, str):
        raise _Reject("InvalidField", f"{name} is not a string")
    if not value:
        raise _Reject("MissingField", f"{name} is empty")
    return value


def _optional_str(record: dict[str, Any], name: str) -> str | None:
    value = record.get(name)
    return value if isinstance(value, str) else None
