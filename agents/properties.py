"""Property values as canonical strings: one rule for the collector's JSON and typed Avro fields.

``properties`` is a map<string,string>, so every scalar is stored as text, and the same value
always gives the same text whatever shape it arrived in: a string stays as is, an integer is
its decimal digits, a float its shortest round-trip repr (``100.0`` -> ``"100.0"``), a boolean
``"true"``/``"false"``, and null means "absent" (None). Nested values and non-finite numbers
are refused (ValueError, whose message completes "property x ...").
"""

from __future__ import annotations

import math
from typing import Any


def canonical(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"is {value}, not a finite number")
        return repr(value)
    if value is None:
        return None
    if isinstance(value, dict):
        raise ValueError("is an object; property values must be strings, numbers or booleans")
    if isinstance(value, list):
        raise ValueError("is an array; property values must be strings, numbers or booleans")
    raise ValueError(f"is {type(value).__name__}; property values must be strings, numbers or booleans")
