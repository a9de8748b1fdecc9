"""The redact stage: PII out of every clean event before anything is written downstream.

    redactor = Redactor(RedactionConfig(secret=key))      # once: compiled, cached
    clean, counts = redactor.redact_event(event)           # per event: pure, never raises

Card numbers, emails, phone numbers, IBANs, SSNs, IP addresses and bearer tokens / JWTs are
found (detectors.py says exactly what each matches and what it leaves alone) in every text field
of an event: the event name, the project id, property keys and values, and the context's user
agent, library and ip; and are masked, hashed or cause the property to be dropped (policy.py).
Each text is scanned as it is and in its decoded views (views.py: URL-decoded, form-decoded,
JSON-unescaped, nested up to three times), so ``?email=jane%40x.com`` and ``"call\\n030 1234567"``
are caught; a match in a view replaces the encoded span of the original, and a hash token is
taken of the decoded value (the same token as the plain value's).

* event_name and project_id: a match is masked or hashed in place; a drop policy masks (the
  event cannot lose its name). A masked name is still one name per value, so funnels and
  rollups keep working, and names and project ids never carry the value into rollup keys.
* user_id: it is the analytics identity (uniques, retention, funnels all join on it), so it is
  never masked. When it holds PII (an email used as the id, "acct 4111 1111 1111 1111") and
  `hash_user_id_if_pii` is set (the default), it is replaced by its keyed hash token: still
  one stable id per person, no longer the address.
* context ip: its own policy (truncate by default); text that is not an address is scanned.
* Never scanned: event_id (a UUID the validator has already parsed), timestamps, schema id and
  provenance (numbers).

A property key that is redacted can collide with another (two emails as keys, masked, are both
"[email]"); the later one wins. Hashing keys (the default for emails) keeps them apart.

Cost: one string is built from the event's names, keys and values and tested for the features
any PII needs (an '@', a run of digits, two colons, "eyJ", "bearer", or an encoding: '%', '+',
a backslash); typical events stop there. Free-text and name fields repeat endlessly, so their
redactions are cached.
"""

from __future__ import annotations

from collections import Counter

from agents.pii.detectors import DETECTORS, ENCODED, KINDS, Detector, Kind, Span, features
from agents.pii.policy import (
    DEFAULT_POLICIES,
    Hasher,
    IpPolicy,
    Policy,
    RedactionConfig,
    is_ip,
    mask_token,
    truncate_ip,
)
from agents.pii.views import views
from agents.records import CleanEvent

__all__ = [
    "DEFAULT_POLICIES",
    "KINDS",
    "IpPolicy",
    "Kind",
    "Policy",
    "RedactionConfig",
    "Redactor",
]

_TEXT_CACHE_SIZE = 4096


def _counter() -> Counter[str]:
    # Counter() runs Python-level __init__/update (~0.4 us); an empty one needs neither, and
    # every event gets its own.
    return Counter.__new__(Counter)


class Redactor:
    """Built once from a RedactionConfig; `redact_event` is the stage."""

    def __init__(self, config: RedactionConfig) -> None:
        self.config = config
        if config.enabled and config.uses_hash() and not config.key():
            raise ValueError(
                "RedactionConfig.secret is empty but a hash policy is in effect (emails are "
                "hashed by default; hash_user_id_if_pii is on): set a secret, or change those "
                "policies to mask or drop"
            )
        self._enabled = config.enabled
        self._steps: tuple[tuple[Detector, Policy], ...] = tuple(
            (d, config.policy(d.kind)) for d in DETECTORS
        )
        self._policies: dict[Kind, Policy] = {k: config.policy(k) for k in KINDS}
        self._hasher = Hasher(config.key())
        self._allow = config.allowlist
        self._hash_user_id = config.hash_user_id_if_pii
        self._ip_policy = config.ip_policy
        self._text_cache: dict[str, tuple[str, bool, tuple[tuple[str, int], ...]]] = {}

    # --- text --------------------------------------------------------------------------------

    def redact_text(self, text: str) -> tuple[str, Counter[str]]:
        """*text* with every match masked or hashed (drop-policy matches are masked: there is
        no property to drop), and the count of matches by detector."""
        counts = _counter()
        return self._scan(text, counts)[0], counts

    def _scan(self, text: str, counts: Counter[str]) -> tuple[str, bool]:
        """(redacted text, whether a drop-policy detector matched)."""
        have = features(text)
        if not have:
            return text, False
        dropped = False
        for detector, policy in self._steps:
            if not have & detector.needs:
                continue
            spans = detector.find(text)
            if spans:
                counts[detector.kind] += len(spans)
                dropped = dropped or policy == "drop"
                text = self._rewrite(text, spans, detector.kind, policy)
        if have & ENCODED:
            text, dropped_encoded = self._scan_views(text, counts)
            dropped = dropped or dropped_encoded
        return text, dropped

    def _scan_views(self, text: str, counts: Counter[str]) -> tuple[str, bool]:
        """Matches in the URL-decoded and JSON-unescaped views of *text*, redacted in *text*.

        The replaced span is the encoded original (``jane%40x.com``); a hash token is taken of
        the decoded match, so it equals the token of the plain value.
        """
        found: list[tuple[int, int, Kind, str]] = []
        for decoded, pos in views(text):
            for start, end, kind in self._find_all(decoded):
                found.append((pos[start], pos[end], kind, decoded[start:end]))
        if not found:
            return text, False
        found.sort(key=lambda f: (f[0], -f[1]))
        parts = []
        last = 0
        dropped = False
        for start, end, kind, match in found:
            if start < last:  # the same value seen in two views, or overlapping matches:
                last = max(last, end)  # the token stands for their union
                continue
            counts[kind] += 1
            policy = self._policies[kind]
            dropped = dropped or policy == "drop"
            parts.append(text[last:start])
            parts.append(self._hasher.token(kind, match) if policy == "hash" else mask_token(kind))
            last = end
        parts.append(text[last:])
        return "".join(parts), dropped

    def _find_all(self, text: str) -> list[tuple[int, int, Kind]]:
        """Every detector's spans in *text* (not rewritten between detectors): a span that
        overlaps one found by an earlier detector is left to it (an IBAN holds card-like
        digits)."""
        have = features(text)
        spans: list[tuple[int, int, Kind]] = []
        for detector, _policy in self._steps:
            if not have & detector.needs:
                continue
            for start, end in detector.find(text):
                if all(end <= s or start >= e for s, e, _k in spans):
                    spans.append((start, end, detector.kind))
        return spans

    def _rewrite(self, text: str, spans: list[Span], kind: Kind, policy: Policy) -> str:
        parts = []
        last = 0
        for start, end in spans:
            parts.append(text[last:start])
            if policy == "hash":
                parts.append(self._hasher.token(kind, text[start:end]))
            else:
                parts.append(mask_token(kind))
            last = end
        parts.append(text[last:])
        return "".join(parts)

    def _cached(self, text: str, counts: Counter[str]) -> tuple[str, bool]:
        """`_scan` of a field whose values repeat endlessly (user agents, libraries, event
        names, project ids). The cache is bounded and lives only in this process's memory, like
        the events themselves."""
        hit = self._text_cache.get(text) or self._fill_cache(text)
        for kind, n in hit[2]:
            counts[kind] += n
        return hit[0], hit[1]

    def _fill_cache(self, text: str) -> tuple[str, bool, tuple[tuple[str, int], ...]]:
        local = _counter()
        out, dropped = self._scan(text, local)
        hit = (out, dropped, tuple(local.items()))
        if len(self._text_cache) >= _TEXT_CACHE_SIZE:
            self._text_cache.clear()
        self._text_cache[text] = hit
        return hit

    def _free_text(self, text: str, counts: Counter[str]) -> str | None:
        """A context field: redacted, None when a drop-policy detector matched."""
        hit = self._text_cache.get(text) or self._fill_cache(text)
        for kind, n in hit[2]:
            counts[kind] += n
        return None if hit[1] else hit[0]

    # --- events ------------------------------------------------------------------------------

    def redact_event(self, event: CleanEvent) -> tuple[CleanEvent, Counter[str]]:
        """A new event with PII redacted, and the number of redactions by detector.

        *event* is not modified; its properties dict is shared with the result when nothing in
        it changed.
        """
        counts = _counter()
        if not self._enabled:
            return event.copy(), counts
        out = event.copy()
        props = event["properties"]
        user_id = event["user_id"]
        name = event["event_name"]
        project = event["project_id"]
        if self._hash_user_id:
            blob = "\x00".join([name, project, user_id, *props, *props.values()])
        else:
            blob = "\x00".join([name, project, *props, *props.values()])
        if features(blob):
            # Names cannot be dropped: a drop-policy match is masked like any other.
            if features(name):
                out["event_name"] = self._cached(name, counts)[0]
            if features(project):
                out["project_id"] = self._cached(project, counts)[0]
            if props:
                redacted = self._properties(props, counts)
                if redacted is not None:
                    out["properties"] = redacted
            if self._hash_user_id and features(user_id):
                out["user_id"] = self._user_id(user_id, counts)
        if (user_agent := event["user_agent"]) is not None:
            out["user_agent"] = self._free_text(user_agent, counts)
        if (library := event["library"]) is not None:
            out["library"] = self._free_text(library, counts)
        ip = event["ip"]
        if ip is not None and self._ip_policy != "keep":
            out["ip"] = self._ip(ip, counts)
        return out, counts

    def _properties(self, props: dict[str, str], counts: Counter[str]) -> dict[str, str] | None:
        """The redacted properties, or None when nothing changed."""
        out: dict[str, str] = {}
        changed = False
        allow = self._allow
        for key, value in props.items():
            if key in allow:
                out[key] = value
                continue
            new_key, drop_key = self._scan(key, counts)
            new_value, drop_value = self._scan(value, counts)
            if drop_key or drop_value:
                changed = True
                continue
            if new_key is not key or new_value is not value:
                changed = True
            out[new_key] = new_value
        return out if changed else None

    def _user_id(self, user_id: str, counts: Counter[str]) -> str:
        local = _counter()
        self._scan(user_id, local)
        if not local:
            return user_id
        counts[next(iter(local))] += 1
        # The whole id is hashed, not the match: "acct-555-123-4567" and "555-123-4567" are
        # different users. Only case is folded, for emails. The kind is the first detector's
        # that matched, in DETECTORS order, so the same id always gets the same token.
        kind = next(d.kind for d in DETECTORS if d.kind in local)
        return self._hasher.exact(kind, user_id.lower() if kind == "email" else user_id)

    def _ip(self, ip: str, counts: Counter[str]) -> str | None:
        """The context ip under its policy. Not counted: it applies to every event, while the
        counts are there to show which clients send PII where it does not belong."""
        policy = self._ip_policy
        if policy == "truncate":
            out = truncate_ip(ip)
            return self._scan(ip, counts)[0] if out is None else out  # not an address: text
        if not is_ip(ip):
            return self._scan(ip, counts)[0]
        return None if policy == "drop" else self._hasher.token("ip", ip)
