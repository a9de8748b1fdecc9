"""Property values as canonical strings: one rule for the collector's JSON and typed Avro fields.

``properties`` is a map<string,string>, so every scalar is stored as text, and the same value
always gives the same text whatever shape it arrived in, so that a group-by never splits one
number into two spellings:

- a string stays as is; a boolean is ``"true"``/``"false"``; null means "absent" (None);
- an integer, of any size, is its decimal digits: ``149``, ``12345678901234567890123``;
- a float that is an exact integer of magnitude at most 2^53 is that integer's digits too:
  ``149.0`` -> ``"149"`` (and ``-0.0`` -> ``"0"``), the same text as the integer 149, whether
  a client wrote ``149.0`` in JSON, a typed field is a double, or an Avro int was promoted to a
  double reader. Every integer up to 2^53 is exactly a double, so nothing is invented;
- any other finite float is its shortest round-trip repr: ``19.5``, ``0.1``, ``1e+16``,
  ``1.2345678901234568e+22``. Beyond 2^53 a double no longer stands for one integer (2^53 + 1
  has none), so spelling it as digits would claim a precision it does not have.

The paths must hand over what the producer wrote: the collector parses JSON integers beyond
64 bits as integers (`app/collector/normalize.parse_body`), and the Avro codec keeps an int
or long read through a float/double reader as an integer and a 32-bit float as the decimal it
was written from (`agents/codec.py`). Nested values and non-finite numbers are refused
(ValueError, whose message completes "property x ...").
"""

from __future__ import annotations

import math
from typing import Any

# Every integer of at most this magnitude is exactly representable as a double.
EXACT_INTEGER_LIMIT = 2**53


def canonical(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        try:
            return str(value)
        except ValueError:  # beyond sys.get_int_max_str_digits() (4300 by default)
            raise ValueError("is an integer too long to spell out") from None
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"is {value}, not a finite number")
        if value.is_integer() and -EXACT_INTEGER_LIMIT <= value <= EXACT_INTEGER_LIMIT:
            return str(int(value))
        return repr(value)
    if value is None:
        return None
    if isinstance(value, dict):
        raise ValueError("is an object; property values must be strings, numbers or booleans")
    if isinstance(value, list):
        raise ValueError("is an array; property values must be strings, numbers or booleans")
    raise ValueError(f"is {type(value).__name__}; property values must be strings, numbers or booleans")
