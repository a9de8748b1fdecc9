"""Rollup definitions: which windowed aggregates the aggregate stage keeps, like a Druid rollup spec.

A rollup groups clean events by a time window and a few dimensions and keeps, per group, a
count, optionally an HLL sketch of distinct users, and optionally sums of numeric properties.
Each definition becomes one rollup table in ClickHouse (full-state upserts of per-partition
partials, merged at query time).

Fields of `RollupSpec`:

``name``
    Identifier of the rollup, ``^[a-z][a-z0-9_]*$``, at most 64 characters. Names the
    ClickHouse table (e.g. ``rollup_events_by_name_1m``) and scopes the state keys. Never rename
    a rollup that has data: define a new one (a new name is a new table, rebuilt by replay).
``dimensions``
    Group-by columns, in order, after the event's project: every rollup is kept per
    ``project_id``, an implicit leading dimension that is never listed here (and every reader
    filters one project). The first is always ``event_name``; the others are property
    keys (``country``, ``device_type``, ``browser``, ...) looked up in the event's
    ``properties`` map; an absent key groups as the empty string ``""``. Property keys match
    ``^[A-Za-z_][A-Za-z0-9_]*$`` (at most 64 characters) because each becomes a column.
    Every extra dimension multiplies the number of groups: keep them low-cardinality.
``granularity``
    ``"minute"`` or ``"hour"``: windows are tumbling, aligned to the UTC epoch, half-open
    ``[window_start, window_start + 1 granularity)`` on the event's own timestamp (``ts``).
``allowed_lateness_s``
    How far behind the partition's event-time watermark an event may be and still update its
    window. An event is late when ``window_end + allowed_lateness < watermark``; a late event
    is not applied to count, uniques or sums, it increments the window's ``late`` counter
    instead (so `rearview verify` can say which windows miss how many events). The watermark
    of a source partition is the largest ``min(ts, received_at)`` seen in it: clamping by the
    receive time keeps one client with a clock running a day ahead from making every other
    event late. From 0 to 7 days.
``uniques``
    Keep an HLL sketch of ``user_id`` per window (distinct users, ~1.6% standard error at
    lg_k 12; see `tables/hll.py`).
``sums``
    Property keys whose values are summed (e.g. ``price``). A value counts when it is a
    decimal number literal (``"29"``, ``"-2.5"``, ``"1e3"``) of magnitude at most 1e12; it is
    summed exactly, rounded to micro-units (6 decimals), so that sums do not depend on batch
    boundaries (float addition is not associative, and redelivery changes the boundaries).
    An absent key adds nothing and is not an error (``price`` exists only on purchases); a
    present value that is not such a number (``"abc"``, ``"NaN"``, ``"inf"``, ``"1e400"``)
    adds nothing and increments the window's ``sum_errors`` counter.
``lg_k``
    HLL precision, 7 to 21 (default 12: ~2 KB a sketch when full). Only used with ``uniques``.

JSON example (a list of these goes in the settings, e.g. ``RV_AGGREGATE__ROLLUPS``)::

    {
      "name": "purchases_by_plan_country_1h",
      "dimensions": ["event_name", "plan", "country"],
      "granularity": "hour",
      "allowed_lateness_s": 3600,
      "uniques": true,
      "sums": ["price"],
      "lg_k": 12
    }
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tables import hll

NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
PROPERTY_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_NAME_LENGTH = 64
MAX_LATENESS_S = 7 * 86_400
GRANULARITY_MS: dict[str, int] = {"minute": 60_000, "hour": 3_600_000}


def _check_keys(kind: str, keys: tuple[str, ...]) -> tuple[str, ...]:
    seen: set[str] = set()
    for key in keys:
        if not isinstance(key, str) or not PROPERTY_KEY_RE.match(key) or len(key) > MAX_NAME_LENGTH:
            raise ValueError(
                f"{kind} {key!r} is not a property key: use letters, digits and '_', "
                f"not starting with a digit, at most {MAX_NAME_LENGTH} characters"
            )
        if key in seen:
            raise ValueError(f"{kind} {key!r} is listed twice")
        seen.add(key)
    return keys


class RollupSpec(BaseModel):
    """One rollup definition; see the module docstring for what each field means."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    dimensions: tuple[str, ...] = ("event_name",)
    granularity: Literal["minute", "hour"] = "minute"
    allowed_lateness_s: int = Field(default=300, ge=0, le=MAX_LATENESS_S)
    uniques: bool = False
    sums: tuple[str, ...] = ()
    lg_k: int = hll.DEFAULT_LG_K

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_RE.match(value) or len(value) > MAX_NAME_LENGTH:
            raise ValueError(
                f"rollup name {value!r} must match ^[a-z][a-z0-9_]*$ "
                f"(lowercase letters, digits, '_'), at most {MAX_NAME_LENGTH} characters"
            )
        return value

    @field_validator("dimensions")
    @classmethod
    def _dimensions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or value[0] != "event_name":
            raise ValueError(f"dimensions must start with 'event_name', got {list(value)!r}")
        if "event_name" in value[1:]:
            raise ValueError("'event_name' may appear only once, first, in dimensions")
        return ("event_name", *_check_keys("dimension", value[1:]))

    @field_validator("sums")
    @classmethod
    def _sums(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _check_keys("sum", value)

    @field_validator("lg_k")
    @classmethod
    def _lg_k(cls, value: int) -> int:
        return hll.check_lg_k(value)

    @model_validator(mode="after")
    def _consistent(self) -> RollupSpec:
        if not self.uniques and self.lg_k != hll.DEFAULT_LG_K:
            raise ValueError(f"rollup {self.name!r}: lg_k is set but uniques is false")
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RollupSpec:
        """A spec from plain data (JSON, settings); pydantic.ValidationError (a ValueError) names
        every bad field."""
        return cls.model_validate(data)

    @property
    def granularity_ms(self) -> int:
        return GRANULARITY_MS[self.granularity]

    @property
    def allowed_lateness_ms(self) -> int:
        return self.allowed_lateness_s * 1000

    @property
    def property_keys(self) -> tuple[str, ...]:
        """The dimensions looked up in ``properties`` (all but event_name)."""
        return self.dimensions[1:]


def check_unique_names(specs: tuple[RollupSpec, ...] | list[RollupSpec]) -> None:
    """ValueError if two rollups share a name (their state keys would collide)."""
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise ValueError(f"two rollups are named {spec.name!r}")
        seen.add(spec.name)


DEFAULT_ROLLUPS: tuple[RollupSpec, ...] = (
    # Also carries per-minute uniques: "online now" (active users over the last 1, 5 and 15
    # minutes) is the union of its sketches.
    RollupSpec(
        name="events_by_name_1m",
        dimensions=("event_name",),
        granularity="minute",
        allowed_lateness_s=300,
        uniques=True,
        lg_k=12,
    ),
    RollupSpec(
        name="events_by_name_country_device_1m",
        dimensions=("event_name", "country", "device_type"),
        granularity="minute",
        allowed_lateness_s=300,
    ),
    RollupSpec(
        name="uniques_by_name_1h",
        dimensions=("event_name",),
        granularity="hour",
        allowed_lateness_s=3600,
        uniques=True,
        lg_k=12,
    ),
)
