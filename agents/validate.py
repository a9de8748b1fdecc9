"""The validate stage as a pure function: raw message bytes in, clean events and Invalids out.

No Kafka, no registry, no clock of its own: the caller passes the writer schemas it already
resolved (by id, from the registry cache), the message's metadata, the redrive its headers
describe, and ``now_ms``, its processing clock. Whatever the bytes and headers are, the result
is a MessageResult in which every event of the message lands in exactly one list (or is counted
in ``skipped``: the other events of a redriven batch letter); nothing raises.

Time: the pipeline owns it
--------------------------
Producers set an event's ``timestamp``, its ``context.received_at`` (when a Kafka producer
writes Avro itself) and the Kafka CreateTime. None of them is trusted for windows or
watermarks; each is data, checked against the clock of the process that receives it:

1. **Entry time** ``entry``: when the message entered Rearview's Kafka. It is the Kafka
   timestamp of the message, or for a redriven letter the letter's ``rv.first_failed_at``
   (the redrive itself is a new message), whichever is earlier; and it is ``now_ms`` when that
   is missing, negative, or later than ``now_ms``: a clock running ahead never dates a message
   in the future.
2. **Receive time** ``received_at`` = ``context.received_at`` if it lies within
   ``[entry - max_receive_lag, min(entry + 1 s, now_ms)]`` and fits the columns, else ``entry``.
   The collector stamps it with its own clock (then produces, so it precedes the entry time by
   milliseconds); a Kafka producer that sets it can only move it into that bounded past, never
   ahead of the worker's clock. The 1 s of slack absorbs hosts' clocks and Faust's float
   seconds.
3. **Event time**: ``timestamp`` must lie within ``[received_at - max_past, received_at +
   max_future]`` and within ``[MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS]`` (1970-01-01 ..
   2106-02-07 06:28:15.999, what events.ts, events.received_at and a rollup's window_start all
   hold). Otherwise the event is a dead letter whose reason says which bound it crossed.

Why the entry time and not ``now_ms`` alone: the verdict must not depend on when a message is
read. A worker catching up a backlog, a replay of events.raw from an old offset, and a redrive
of last month's letters all read messages long after they arrived; compared with ``now_ms``
their old events would be dead-lettered for being old. Compared with the entry time, a replay
gives the same verdict and the same ``received_at`` as the first read. ``now_ms`` still bounds
everything from above: watermarks (``min(timestamp, received_at)``) never move past the clock
of the worker that reads the event, so one producer whose clock runs an hour ahead cannot make
its partition's other events late.

What remains trusted: a Kafka producer sets CreateTime. It can date its messages in the past
and store old events (never future ones, never outside the columns); and while a worker lags or
replays (``now_ms`` far ahead), a CreateTime ahead of its neighbours' leads them by its skew,
up to ``now_ms``. Setting events.raw to ``message.timestamp.type=LogAppendTime`` makes the
entry time the broker's clock and closes both. The collector (``check``) uses the same rules
with ``now_ms`` as entry time.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from agents.codec import FramingError, Kind, WriterSchema, decode, split_frame
from agents.dlq import Redrive
from agents.properties import canonical
from agents.records import (
    MAX_TIMESTAMP_MS,
    MIN_TIMESTAMP_MS,
    CleanEvent,
    Invalid,
    MessageResult,
    SourceMeta,
    canonical_uuid,
)

# Events a producer wrote without an event_id get one derived from their position in Kafka,
# so a redelivered message yields the same ids and is still stored once.
_PROVENANCE_NAMESPACE = uuid.UUID("6f1c1a8e-8f43-4c1e-9a36-3d8f2b0c9e51")

DAY_MS = 86_400_000
BASE_FIELDS = frozenset(("event_id", "project_id", "event_name", "user_id", "timestamp",
                         "properties", "context"))
# A claimed receive time may be this much after the entry time (hosts' clocks, float seconds).
RECEIVE_SLACK_MS = 1_000
# Reasons quote a value whole, or not at all (redaction comes later, and must see all of it).
_QUOTE_MAX = 256
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Rules:
    event_name_pattern: str = r"^[A-Za-z0-9_$][A-Za-z0-9_ .:/$-]{0,127}$"
    max_user_id_length: int = 256
    max_project_id_length: int = 64
    # Project ids end up in dashboards' SQL (Grafana variables) and URLs: plain characters only,
    # never a quote or a backslash.
    project_id_pattern: str = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
    # Event time may lag its receive time by this much (offline clients)...
    max_past_ms: int = 365 * DAY_MS
    # ...and run ahead of it by this much (client clock skew).
    max_future_ms: int = DAY_MS
    # A producer's context.received_at may precede the message's entry into Kafka by this much.
    max_receive_lag_ms: int = DAY_MS
    max_properties: int = 256
    max_key_length: int = 128
    max_value_length: int = 8192


class _Reject(Exception):
    """A rule violation inside one event; becomes an Invalid, never leaves this module."""

    def __init__(self, error_class: str, reason: str) -> None:
        super().__init__(reason)
        self.error_class = error_class
        self.reason = reason


def entry_time(meta: SourceMeta, now_ms: int, redrive: Redrive | None = None) -> int:
    """When the message entered Rearview's Kafka, never after *now_ms* (module docstring, 1)."""
    candidates = [meta.timestamp_ms]
    if redrive is not None and redrive.first_failed_at_ms is not None:
        candidates.append(redrive.first_failed_at_ms)
    usable = [t for t in candidates if MIN_TIMESTAMP_MS <= t <= now_ms]
    return min(usable) if usable else now_ms


def _iso(ms: int) -> str:
    if MIN_TIMESTAMP_MS <= ms <= MAX_TIMESTAMP_MS:
        return (_EPOCH + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds")[:-6] + "Z"
    return f"{ms} ms"


def _days(ms: int) -> str:
    days = ms / DAY_MS
    return f"{days:g} day" if days == 1 else f"{days:g} days"


class Validator:
    """Holds the compiled rules; `validate_message` is the stage."""

    def __init__(self, rules: Rules | None = None) -> None:
        self.rules = rules or Rules()
        self._name_re = re.compile(self.rules.event_name_pattern)
        self._project_re = re.compile(self.rules.project_id_pattern)
        self._check_meta = SourceMeta("", 0, 0, -1)

    def validate_message(
        self,
        raw: bytes | None,
        key: bytes | None,
        meta: SourceMeta,
        schemas: Mapping[int, WriterSchema | None],
        now_ms: int,
        redrive: Redrive | None = None,
    ) -> MessageResult:
        """Validate one raw message. *schemas* maps ids to parsed writer schemas (None: unknown).

        *now_ms* is the caller's processing clock. *redrive* is what the message's headers say
        when it redrives a dead letter (`agents.dlq.redrive_of`): its ``identity``, the position
        of the original message, is where events without an event_id derive theirs from (so a
        redrive stores the same ids), and its ``only_index`` names the one event of a batch the
        letter stands for (the others were clean: they are counted in ``skipped``). A redrive
        whose headers are inconsistent (``error``, or an index the message does not hold) is
        dead-lettered whole as ``BadRedrive``. Provenance columns keep *meta*, the message's
        own position.
        """
        result = MessageResult()

        def whole(error_class: str, reason: str, schema_id: int | None = None) -> MessageResult:
            result.invalid.append(
                Invalid("decode", error_class, reason, meta, raw or b"", key, None, schema_id)
            )
            return result

        if redrive is not None and redrive.error is not None:
            return whole("BadRedrive", redrive.error)
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
            if not events:
                return whole("EmptyBatch", "batch message holds no events", schema_id)
        else:
            events = [decoded]
        only_index = redrive.only_index if redrive is not None else None
        if only_index is not None:
            if not 0 <= only_index < len(events):
                return whole(
                    "BadRedrive",
                    f"redrive header rv.event_index {only_index} is not an event of the message"
                    f" (it holds {len(events)})",
                    schema_id,
                )
            result.skipped = len(events) - 1
        identity = redrive.identity if redrive is not None else meta
        entry = entry_time(meta, now_ms, redrive)
        for index, record in enumerate(events):
            if only_index is not None and index != only_index:
                continue
            try:
                result.clean.append(
                    self._event(record, schema_id, meta, index, identity, entry, now_ms)
                )
            except _Reject as rej:
                result.invalid.append(
                    Invalid(
                        "validate", rej.error_class, rej.reason, meta, raw, key, index, schema_id,
                        project_id=self._project_of(record),
                    )
                )
        return result

    def _project(self, record: dict[str, Any]) -> str:
        """The record's project (``default`` when it names none), or _Reject."""
        r = self.rules
        project_id = record.get("project_id")
        if not isinstance(project_id, str) or not project_id:
            return "default"
        if len(project_id) > r.max_project_id_length:
            raise _Reject(
                "InvalidField", f"project_id is longer than {r.max_project_id_length} characters"
            )
        if not self._project_re.match(project_id):
            raise _Reject("InvalidField", f"project_id {project_id!r} does not match {r.project_id_pattern}")
        return project_id

    def _project_of(self, record: Any) -> str | None:
        """The project a rejected record names, if it is well formed (for its dead letter)."""
        if not isinstance(record, dict):
            return None
        try:
            return self._project(record)
        except _Reject:
            return None

    def check(self, record: dict[str, Any], now_ms: int) -> str | None:
        """Why *record* (an Event record) would be dead-lettered, or None: the collector asks
        this before answering 202, so a client learns about a bad event at once. *now_ms* is the
        collector's clock, which is also the entry time of what it is about to produce."""
        meta = self._check_meta
        if meta.timestamp_ms != now_ms:  # one per request, not per event: a frozen
            meta = self._check_meta = SourceMeta("", 0, 0, now_ms)  # dataclass costs ~1 µs
        try:
            self._event(record, 0, meta, 0, meta, now_ms, now_ms)
        except _Reject as rej:
            return rej.reason
        return None

    def _received_at(self, context: dict[str, Any], entry: int, now_ms: int) -> int:
        """The event's receive time (module docstring, 2)."""
        claimed = context.get("received_at")
        if (
            type(claimed) is int
            and entry - self.rules.max_receive_lag_ms <= claimed
            and claimed <= entry + RECEIVE_SLACK_MS
            and MIN_TIMESTAMP_MS <= claimed <= now_ms
        ):
            return claimed
        return entry

    def _check_time(self, timestamp: int, received_at: int) -> None:
        """The event time rules (module docstring, 3)."""
        r = self.rules
        if not MIN_TIMESTAMP_MS <= timestamp <= MAX_TIMESTAMP_MS:
            raise _Reject(
                "InvalidField",
                f"timestamp is outside the storable range: {timestamp} ms is not within "
                f"{_iso(MIN_TIMESTAMP_MS)} .. {_iso(MAX_TIMESTAMP_MS)}",
            )
        if timestamp < received_at - r.max_past_ms:
            raise _Reject(
                "InvalidField",
                f"timestamp is further in the past than allowed: {_iso(timestamp)} is more than "
                f"{_days(r.max_past_ms)} before its receive time {_iso(received_at)}",
            )
        if timestamp > received_at + r.max_future_ms:
            raise _Reject(
                "InvalidField",
                f"timestamp is further in the future than allowed: {_iso(timestamp)} is more "
                f"than {_days(r.max_future_ms)} after its receive time {_iso(received_at)}",
            )

    def _event(
        self,
        record: Any,
        schema_id: int,
        meta: SourceMeta,
        index: int,
        identity: SourceMeta,
        entry: int,
        now_ms: int,
    ) -> CleanEvent:
        r = self.rules
        if not isinstance(record, dict):
            raise _Reject("WrongSchema", "record is not an Avro record")
        event_name = _required_str(record, "event_name")
        if not self._name_re.fullmatch(event_name):
            if len(event_name) <= _QUOTE_MAX:
                reason = f"event_name {event_name!r} does not match {r.event_name_pattern}"
            else:
                reason = (f"event_name of {len(event_name)} characters does not match"
                          f" {r.event_name_pattern}")
            raise _Reject("InvalidField", reason)
        user_id = _required_str(record, "user_id")
        if len(user_id) > r.max_user_id_length:
            raise _Reject("InvalidField", f"user_id is longer than {r.max_user_id_length} characters")
        project_id = self._project(record)

        timestamp = record.get("timestamp")
        if type(timestamp) is not int:
            raise _Reject("MissingField", "timestamp is missing or not a long (epoch milliseconds)")
        context = record.get("context")
        if not isinstance(context, dict):
            context = {}
        received_at = self._received_at(context, entry, now_ms)
        self._check_time(timestamp, received_at)

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
                raise _Reject(
                    "InvalidField",
                    f"a property key of {len(k)} characters is longer than {r.max_key_length}",
                )
            if not isinstance(v, str):
                raise _Reject("InvalidField", f"property {k!r} is not a string")
            if len(v) > r.max_value_length:
                raise _Reject(
                    "InvalidField",
                    f"property {k!r} value is too long: {len(v)} characters, at most"
                    f" {r.max_value_length}",
                )

        event_id = record.get("event_id")
        if event_id is None:
            event_id = str(
                uuid.uuid5(_PROVENANCE_NAMESPACE,
                           f"{identity.topic}/{identity.partition}/{identity.offset}/{index}")
            )
        else:
            try:
                event_id = canonical_uuid(event_id)
            except (ValueError, TypeError, AttributeError):
                raise _Reject("InvalidField", "event_id is not a UUID") from None

        return CleanEvent(
            event_id=event_id,
            project_id=project_id,
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
