"""What happens to PII once found: the configuration, the mask and hash tokens, the ip field.

Tokens are chosen so that no detector matches them again, which makes redaction idempotent:
a mask token is ``[kind]`` (no digits, no '@'), a hash token ``kind:hm_<16 hex>``, glued by
'_' to its hex so the number detectors (which refuse a preceding word character) skip it.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, get_args

from agents.pii.detectors import KINDS, OCTET, Kind

Policy = Literal["mask", "hash", "drop"]
IpPolicy = Literal["keep", "truncate", "hash", "drop"]

DEFAULT_POLICIES: Mapping[Kind, Policy] = MappingProxyType(
    {
        "card": "mask",
        "email": "hash",
        "phone": "mask",
        "iban": "mask",
        "ssn": "mask",
        "ip": "mask",
        "bearer": "mask",
        "jwt": "mask",
    }
)


@dataclass(frozen=True, slots=True)
class RedactionConfig:
    """How PII in clean events is redacted. Build a `Redactor` from it once.

    policies: per detector, overriding DEFAULT_POLICIES. ``mask`` replaces the match with
        ``[kind]``; ``hash`` with ``kind:hm_<16 hex>``, a keyed HMAC-SHA256 of the normalised
        match (same input and secret, same token: unique counts survive); ``drop`` removes the
        whole property (free text: the field becomes None; `redact_text`: masks).
    secret: the HMAC key. Required (non-empty) whenever a hash policy is in effect: unkeyed
        hashes of emails or phone numbers are reversed by guessing.
    allowlist: property keys whose key and value are never scanned (``order_id``, ``sku``).
    ip_policy: the event's context ip: keep it, truncate it to its /24 (IPv4) or /48 (IPv6)
        network, hash it, or drop it (None).
    hash_user_id_if_pii: when the user_id itself holds PII (an email used as id), replace it
        by its hash token, so identity, unique counts and funnels still work.
    """

    enabled: bool = True
    policies: Mapping[Kind, Policy] = field(default_factory=lambda: DEFAULT_POLICIES)
    secret: bytes | str = field(default=b"", repr=False)
    allowlist: frozenset[str] = frozenset()
    ip_policy: IpPolicy = "truncate"
    hash_user_id_if_pii: bool = True

    def __post_init__(self) -> None:
        for kind, policy in self.policies.items():
            if kind not in KINDS:
                raise ValueError(f"unknown PII detector {kind!r}; known: {', '.join(KINDS)}")
            if policy not in get_args(Policy):
                raise ValueError(f"policy for {kind} is {policy!r}; expected mask, hash or drop")
        if self.ip_policy not in get_args(IpPolicy):
            raise ValueError(
                f"ip_policy is {self.ip_policy!r}; expected keep, truncate, hash or drop"
            )
        if not isinstance(self.allowlist, frozenset):
            object.__setattr__(self, "allowlist", frozenset(self.allowlist))

    def policy(self, kind: Kind) -> Policy:
        return self.policies.get(kind, DEFAULT_POLICIES[kind])

    def uses_hash(self) -> bool:
        return (
            any(self.policy(k) == "hash" for k in KINDS)
            or self.ip_policy == "hash"
            or self.hash_user_id_if_pii
        )

    def key(self) -> bytes:
        return self.secret.encode() if isinstance(self.secret, str) else bytes(self.secret)


def mask_token(kind: Kind) -> str:
    return f"[{kind}]"


def normalize(kind: Kind, value: str) -> str:
    """The form that is hashed, so that spellings of one value give one token."""
    if kind == "email":
        return value.lower()
    if kind in ("card", "ssn"):
        return "".join(c for c in value if c.isdigit())
    if kind == "phone":
        digits = "".join(c for c in value if c.isdigit())
        if value.startswith("+"):
            return "+" + digits
        return "+" + digits[2:] if value.startswith("00") else digits
    if kind == "iban":
        return value.replace(" ", "").upper()
    if kind == "ip":
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            return value
    return value


class Hasher:
    """Keyed, stable tokens: ``kind:hm_`` and the first 16 hex digits of HMAC-SHA256."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        self._key = key

    def token(self, kind: Kind, value: str) -> str:
        """The token of a match, normalised first ("A@X.com" and "a@x.com" are one token)."""
        return self.exact(kind, normalize(kind, value))

    def exact(self, kind: Kind, value: str) -> str:
        """The token of *value* as it is."""
        digest = hmac.digest(self._key, value.encode(), "sha256")
        return f"{kind}:hm_{digest.hex()[:16]}"


_IPV4_HEAD = re.compile(rf"((?:{OCTET}\.){{3}}){OCTET}", re.ASCII)


def truncate_ip(value: str) -> str | None:
    """The /24 (IPv4) or /48 (IPv6) network address of *value*; None if it is not an IP.

    IPv4-mapped IPv6 addresses are truncated as the IPv4 address they carry.
    """
    if (m := _IPV4_HEAD.fullmatch(value)) is not None:
        return m[1] + "0"
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return truncate_ip(str(addr.ipv4_mapped))
        return str(ipaddress.IPv6Network((addr, 48), strict=False).network_address)
    return str(ipaddress.IPv4Network((addr, 24), strict=False).network_address)


def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
