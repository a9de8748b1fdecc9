"""Redaction of diagnostic text: dead-letter reasons, previews recovered from undecodable bytes.

Diagnostic text is read by a person fixing a producer, never analysed, so it is redacted more
bluntly than clean events, and without a secret:

* every detector runs with the ``mask`` policy (``[email]``, never a hash token), on the text
  and on its URL-decoded and JSON-unescaped views, as for events;
* then, because such text may quote a value that someone cut short ("event_name
  'jane.doe@exa'"), or be a guess at where a value starts (strings recovered from undecodable
  bytes), *fragments* that no detector can recognise are masked too: anything joined to an '@'
  (``[email]``), any run of 7 or more digits even with spaces, dots, dashes, slashes or
  parentheses between them (``[number]``), and any run of 24 or more token characters mixing
  upper case, lower case and digits (``[token]``). In a reason, only inside its quotes (where
  values are quoted), so the pipeline's own figures stay readable ("2026-11-28T10:30:45Z",
  "offset 12345678"); in recovered strings, everywhere.
  The text is shown decoded (``%40`` as '@'), so an encoded fragment is masked as well.

`redact_diagnostic` is pure and never raises. Truncate only what it returns: a cut made after
redaction cannot reveal anything, a cut made before it can hide a value from the detectors.
"""

from __future__ import annotations

import re
from functools import lru_cache

from agents.pii import KINDS, RedactionConfig, Redactor
from agents.pii.views import json_unescaped, url_decoded

_AT_FRAGMENT = re.compile(r"[\w.%+\-]*@[\w.\-]*")
_DIGIT_FRAGMENT = re.compile(r"\+?[0-9](?:[ .\-/()]{0,2}[0-9]){6,}")
_TOKEN_CANDIDATE = re.compile(r"[A-Za-z0-9_\-+/=~]{24,}")
_UPPER = re.compile(r"[A-Z]")
_LOWER = re.compile(r"[a-z]")
_DIGIT = re.compile(r"[0-9]")


@lru_cache(maxsize=1)
def _masker() -> Redactor:
    return Redactor(
        RedactionConfig(
            policies=dict.fromkeys(KINDS, "mask"), ip_policy="truncate", hash_user_id_if_pii=False
        )
    )


def _token(m: re.Match[str]) -> str:
    s = m.group()
    if _UPPER.search(s) and _LOWER.search(s) and _DIGIT.search(s):
        return "[token]"
    return s


def _decoded(text: str) -> str:
    """*text* JSON-unescaped and percent-decoded, a few times (nested encodings)."""
    for _ in range(3):
        before = text
        for decode in (json_unescaped, lambda t: url_decoded(t, plus=False)):
            view = decode(text)
            if view is not None:
                text = view[0]
        if text == before:
            break
    return text


# A quoted value, or one whose closing quote was cut off.
_QUOTED = re.compile(r"'[^']*(?:'|$)|\"[^\"]*(?:\"|$)")


def _fragments(text: str) -> str:
    text = _AT_FRAGMENT.sub(lambda m: "[email]" if m.group() != "@" else "@", text)
    text = _DIGIT_FRAGMENT.sub("[number]", text)
    return _TOKEN_CANDIDATE.sub(_token, text)


def redact_diagnostic(text: str, everywhere: bool = False) -> str:
    """*text* with PII masked, and PII fragments masked inside its quotes, or *everywhere*
    (see the module docstring)."""
    out = _masker().redact_text(text)[0]
    out = _decoded(out)
    out = _masker().redact_text(out)[0]
    if everywhere:
        return _fragments(out)
    return _QUOTED.sub(lambda m: _fragments(m.group()), out)
