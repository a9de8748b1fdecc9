"""PII detectors: for each kind, a compiled pattern that finds candidates and a check that keeps
only the real ones. Pure and stateless; what happens to a match is policy.py's business.

Every detector also names the cheap *features* (an '@', a run of digits, two colons, ...) that
any of its matches must contain. `features(text)` computes them once per string: a value with
none of them (``"DE"``, ``"desktop"``, ``"/pricing"``, ``"signup-cta"``) is never given to a
single detector pattern, which is what keeps redaction cheap on typical events.

Detectors see characters: encoded forms (``jane%40x.com``, ``4111+1111+...``, ``\\u0040``,
``\\n`` glued to a number) are decoded by the redactor first (views.py), and the detectors run
on each decoded view as on the text itself.

What each detector matches, and what it deliberately does not:

card    13-19 digits, contiguous or in groups split by single spaces, dashes or dots, mixed or
        not: a first group of 4-8 digits, middle groups of 3-8, a last group of 1-8 (4-4-4-4,
        4-6-5, 4-6-4, 8-8, 4-4-4-4-3, "4111 1111-1111.1111"). Must pass Luhn and start with a
        real brand prefix at a length that brand issues (Visa 4: 13/16/19; Mastercard 51-55,
        2221-2720: 16; Mir 2200-2204: 16-19; Amex 34/37: 15; Diners 300-305/36/38/39: 14-19;
        JCB 3528-3589: 16-19; Discover, UnionPay, Maestro 6xxx and Maestro 50/56-59: 16-19).
        Not matched: numbers glued to letters, '_', '.', '+' or '-' ("ORD4111...", versions,
        phones, "111-1234567-1234567" order numbers), digit runs longer than 19 that no
        grouping splits (tracking numbers), leading 0/1/7-9 (epoch millis and micros start
        with 1), 13-digit numbers other than Visa's (EAN-13 barcodes), and a contiguous 13-digit
        number with a valid EAN check digit named just before as "EAN", "GTIN", "UPC", "ISBN"
        or "barcode". A longer grouped run is trimmed from the right ("4111 1111 1111 1111 2026"
        masks the card, keeps "2026").
email   local@domain.tld with Unicode letters; the TLD is 2-63 letters. Not matched: hosts
        without a dot ("root@localhost"), numeric "TLDs" ("pkg@1.2.3"), retina asset names
        ("logo@2x.png"), local parts over 64 characters.
phone   International: '+' then 8-15 digits (E.164), contiguous or grouped by single spaces,
        dots, dashes or slashes, with an optional "(0)"/"(20)" group: "+14155552671",
        "+44 20 7946 0958", "+49(0)30 12345678", "+1-555-123-4567"; '00' instead of '+' only
        when grouped ("0044 20 7946 0958", "001-555-123-4567"). National numbers need 9-12
        digits and one of these shapes, with an optional extension ("x123", " ext. 12", "#5"):
          NANP      555-123-4567, 555.123.4567, 555 123 4567 (one separator kind), (555) 123-4567,
                    (555)123-4567, with a leading country code 1: 1-977-495-3774, 1 (555) ...
          trunk 0   030 1234567, 030/12345678, 030-1234567, (030) 1234567, 07700 900123,
                    01 23 45 67 89, 06.12.34.56.78, 03-1234-5678, 090-1234-5678, 0412 345 678
          India     68015 52976, 98765-43210 (5-5, first digit 6-9)
          China     138 0013 8000 (3-4-4 mobile, 1[3-9]x)
          Russia    8 (495) 123-45-67, 8 800 555 35 35 (trunk 8)
          Spain     612 345 678, 912 34 56 78 (first digit 6-9)
          Mexico    55 1234 5678 (2-4-4)
          Brazil    (11) 91234-5678 (area code in parentheses)
        Not matched: bare national digit runs ("5551234567" is also epoch seconds or an id;
        "0301234567"), anything glued to a word, '+', '.' or '-' (order ids "ORD-2026-000123"),
        followed by ":digit" (times) or ".digit"/"-digit"/"/digit" (versions, ids), ISO dates (8
        digits), dash groups of 1-2 digits after a trunk 0 ("025-9036-78" is a SKU), printed
        tracking numbers (three 4-digit groups from 0, "0797 6443 3158"; 4-digit groups that
        continue 4-digit groups, "9400 3519 8278 0348 7434 68"), and other national shapes
        (e.g. "612-34-56-78" with dashes, "2-4-4" outside Mexico's).
iban    two letters, two check digits, then the BBAN, contiguous or with single separators
        (spaces, dashes or dots, in any places: "DE89-3704-0044-0532-0130-00",
        "DE89 37040044 0532013000"); case-insensitive. The country must be in the IBAN
        registry, its length is taken from there, and mod-97 must be 1. Additionally a run of
        >= 8 digits is required, which every registry format has (account numbers are
        numeric). Not matched: double spaces or other separators inside, an IBAN glued to more
        letters or digits.
ssn     US SSN AAA-GG-SSSS with dashes, single spaces or dots (one kind per number), or 9 bare
        digits; area 000, 666 and 900-999, group 00 and serial 0000 are rejected (about 11% of
        9-digit numbers). A bare 9-digit number right after '.', ',', '#', '+' or '$' is an
        amount or an order number, and is left alone; any other bare 9-digit number of that
        structure IS masked (a 9-digit numeric id cannot be told from an SSN: allowlist its key).
ip      IPv4: four decimal octets 0-255 (no leading zeros), not glued to a word or a dot, not
        shaped like a four-part version (`looks_like_version`: a single-digit first part and at
        most 6 digits in all, "1.2.3.4", "2.14.0.3"), not named a version just before ("version
        10.0.0.1", "build: 10.2.0.1"), not followed by a tag ("10.0.12.1-beta", "+sha"), and
        not a product token's version ending in .0.0 ("Chrome/120.0.0.0"): "v1.2.3.4",
        "1.2.3.4.5" are not matched either. IPv6: a run of hex digits and colons (optionally
        ending in an IPv4) that `ipaddress` accepts and that holds a hex digit, not glued to a
        word or a dot, so "::1", "fe80::1", "ip:fe80::1", "::ffff:192.0.2.1" are matched while
        times "10:30:45", MACs "00:1a:2b:3c:4d:5e" and a bare "::" are not.
bearer  "Bearer <token>" (any case): the token (>= 8 token68 characters) is redacted and the
        scheme word kept. To leave prose alone ("Bearer authentication") the token needs a
        digit, or 20+ characters with upper and lower case.
jwt     three (JWS) or five (JWE) base64url segments whose first decodes to a JSON object
        with "alg", "typ", "enc" or "kid". Not matched: other "eyJ..." strings.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Kind = Literal["card", "email", "phone", "iban", "ssn", "ip", "bearer", "jwt"]
Span = tuple[int, int]
Check = Callable[[re.Match[str]], "Span | None"]

# --- features: cheap necessary conditions, computed once per string --------------------------

AT, DIGITS, COLONS, EYJ, BEARER, ENCODED = 1, 2, 4, 8, 16, 32

# A digit followed by six or more of [0-9 ().-/]: every card, phone, IBAN digit run (>= 8
# digits, at most two of " ().-/" between them), SSN and IPv4 ("1.2.3.4", 7 chars) has one.
_DIGIT_RUN = re.compile(r"[0-9][0-9 ().\-/]{6,}")
# Two colons with at most four hex digits between them: every IPv6 address has this.
_TWO_COLONS = re.compile(r":[0-9A-Fa-f]{0,4}:")
# Every match holds a digit, '@', ':', '.' or whitespace, and every encoded form a '%', '+' or
# '\\'; these never do.
_PLAIN = re.compile(r"[A-Za-z_/\-\x00]*")


def features(text: str) -> int:
    """Bit set of the features *text* has; 0 means no detector can match anywhere in it, nor in
    any decoded view of it (ENCODED: a '%', '+' or backslash, see views.py)."""
    if text.isalpha() or _PLAIN.fullmatch(text) is not None:  # "desktop", "signup-cta"
        return 0
    f = 0
    if "@" in text:
        f = AT
    if _DIGIT_RUN.search(text) is not None:
        f |= DIGITS
    if ":" in text and _TWO_COLONS.search(text) is not None:
        f |= COLONS
    if "eyJ" in text:
        f |= EYJ
    if "bearer" in text.lower():
        f |= BEARER
    if "%" in text or "+" in text or "\\" in text:
        f |= ENCODED
    return f


# --- the detector type -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Detector:
    kind: Kind
    needs: int  # features every match contains
    pattern: re.Pattern[str]
    check: Check  # the span to redact (possibly a trimmed part of the match) or None
    skip_rejected: bool = False  # resume after a rejected candidate, not inside it

    def find(self, text: str) -> list[Span]:
        """Non-overlapping spans of *text* to redact, left to right.

        A candidate the check rejects is retried one character later (unless skip_rejected),
        so a real match that starts inside a rejected candidate ("12 4111 1111 1111 1111") is
        still found.
        """
        spans: list[Span] = []
        search = self.pattern.search
        check = self.check
        skip = self.skip_rejected
        pos = 0
        while (m := search(text, pos)) is not None:
            span = check(m)
            if span is None:
                pos = m.end() if skip else m.start() + 1
            else:
                spans.append(span)
                pos = span[1]
        return spans


def _whole(m: re.Match[str]) -> Span:
    return m.span()


# --- card --------------------------------------------------------------------------------------

_CARD = re.compile(
    r"(?<![\w+.\-])"
    r"[0-9]{4,19}(?:[ .\-][0-9]{1,8}){0,5}"  # contiguous, or groups split by single separators
    r"(?![0-9])",
    re.ASCII,
)
_CARD_SEP = re.compile(r"[ .\-]")
_DOUBLED = str.maketrans("0123456789", "0246813579")  # 2d, minus 9 when that exceeds 9
# A barcode named as such just before it: "EAN 4006381333931", "gtin=...", "barcode: ...".
_BARCODE_WORD = re.compile(r"(?:ean|gtin|upc|isbn|barcode|bar code)[^\w]{0,3}$", re.IGNORECASE)


def luhn_ok(digits: str) -> bool:
    total = sum(map(int, digits[::-2])) + sum(map(int, digits[-2::-2].translate(_DOUBLED)))
    return total % 10 == 0


def ean13_ok(digits: str) -> bool:
    """GS1 check digit of a 13-digit EAN / GTIN-13 / ISBN-13 (weights 1, 3, 1, 3, ...)."""
    total = sum(int(c) * (3 if i % 2 else 1) for i, c in enumerate(digits[:12]))
    return (10 - total % 10) % 10 == int(digits[12])


def brand_ok(d: str) -> bool:
    """Whether a card brand issues numbers of this prefix and length.

    13 digits: Visa only (the legacy 13-digit Visa). Every other brand issues 14+ (Diners 14,
    Amex 15) or 16-19: a 13-digit run starting 5 or 6 is an EAN-13 barcode far more often.
    """
    n = len(d)
    first = d[0]
    if first == "4":
        return n in (13, 16, 19)
    if first == "5":
        p2 = int(d[:2])
        return n == 16 if 51 <= p2 <= 55 else p2 in (50, 56, 57, 58, 59) and n >= 16
    if first == "6":
        return n >= 16  # Discover, UnionPay, Maestro
    if first == "3":
        p2, p3, p4 = int(d[:2]), int(d[:3]), int(d[:4])
        if p2 in (34, 37):
            return n == 15
        if 300 <= p3 <= 305 or p2 in (36, 38, 39):
            return n >= 14
        return 3528 <= p4 <= 3589 and n >= 16
    if first == "2":
        p4 = int(d[:4])
        return (2221 <= p4 <= 2720 and n == 16) or (2200 <= p4 <= 2204 and n >= 16)
    return False


def _grouping_ok(sizes: list[int]) -> bool:
    """Contiguous, or a printed grouping: a first group of 4-8 digits, middle groups of 3-8,
    a last group of 1-8 (4-4-4-4, 4-6-5, 4-6-4, 8-8, 4-4-4-4-3, 4-4-5 ...)."""
    if len(sizes) == 1:
        return True
    return 4 <= sizes[0] <= 8 and all(3 <= s <= 8 for s in sizes[1:-1]) and 1 <= sizes[-1] <= 8


def _card_check(m: re.Match[str]) -> Span | None:
    s = m.group()
    start = m.start()
    groups = _CARD_SEP.split(s)
    sizes = [len(g) for g in groups]
    total = len(s) - len(groups) + 1  # digits
    for n in range(len(groups), 0, -1):  # longest first: trim trailing groups
        if total < 13:
            break
        if total <= 19 and _grouping_ok(sizes[:n]):
            digits = "".join(groups[:n])
            if brand_ok(digits) and luhn_ok(digits) and not _barcode(m.string, start, digits, n):
                return start, start + total + n - 1  # digits plus the n - 1 separators
        total -= sizes[n - 1]
    return None


def _barcode(text: str, start: int, digits: str, groups: int) -> bool:
    """A contiguous 13-digit Visa-like run with a valid EAN check digit, named a barcode."""
    return (
        groups == 1
        and len(digits) == 13
        and ean13_ok(digits)
        and _BARCODE_WORD.search(text, max(0, start - 12), start) is not None
    )


# --- email -------------------------------------------------------------------------------------

_EMAIL = re.compile(
    r"(?<![\w.%+\-])[\w.%+\-]{1,64}@"
    r"((?:[^\W_](?:[\w\-]{0,61}[^\W_])?\.)+[^\W\d_]{2,63})"
    r"(?![\w\-]|\.[^\W_])"
)
_RETINA = re.compile(r"[1-9]x\.(?:png|jpe?g|gif|webp|svg|avif|bmp|ico)", re.IGNORECASE)


def _email_check(m: re.Match[str]) -> Span | None:
    return None if _RETINA.fullmatch(m.group(1)) else m.span()


# --- phone -------------------------------------------------------------------------------------

_PHONE_BODY = r"""
    (?: (?:\+[1-9][0-9]{0,14}                             # +country code, maybe the whole number
          | 00[1-9][0-9]{0,3}(?=[ .\-(/]))                  # 00 country code, then groups
        (?:[ .\-]?\([0-9]{1,5}\)(?:[ .\-/]?[0-9]+)?)?     #   +44 (0) 20 ..., +49(0)30 ...
        (?:[ .\-/][0-9]+){0,6}
      | (?:[18][ .\-]?)?\([0-9]{2,5}\)[ .\-/]?[0-9]+(?:[ .\-/][0-9]+){0,4}
                                                         # (555) 123-4567, 1 (555) ..., 8 (495) ...
      | 0[1-9][0-9]*(?:[ /][0-9]+|-[0-9]{3,}){1,4}          # 030 1234567, 030/12345678, 07700 900123
      | 0[1-9][0-9]{0,4}(?:\.[0-9]{2,4}){2,4}               # 06.12.34.56.78
      | (?:1(?P<cc>[ .\-]))?[0-9]{3}(?P<sep>[ .\-])[0-9]{3}(?P=sep)[0-9]{4}
                                                         # 555-123-4567, 1-977-495-3774
      | [6-9][0-9]{4}[ \-][0-9]{5}                          # India: 68015 52976
      | 1[3-9][0-9](?P<cn>[ \-])[0-9]{4}(?P=cn)[0-9]{4}     # China mobile: 138 0013 8000
      | 8[ \-][0-9]{3}[ \-][0-9]{3}[ \-][0-9]{2}[ \-][0-9]{2}   # Russia: 8 800 555 35 35
      | [6-9][0-9]{2}(?:[ ][0-9]{3}[ ][0-9]{3}|(?:[ ][0-9]{2}){3})  # Spain: 612 345 678, 612 34 56 78
      | [1-9][0-9][ ][0-9]{4}[ ][0-9]{4}                    # Mexico: 55 1234 5678
    )
    (?P<ext>[ ]?(?:x|ext\.?|\#)[ ]?[0-9]{1,6})?          # extension: x123, ext. 12, #5
"""
_PHONE = re.compile(
    r"(?<![\w+.\-])" + _PHONE_BODY + r"(?![\w]|[.\-:/][0-9])", re.ASCII | re.VERBOSE
)
_PHONE_FULL = re.compile(_PHONE_BODY, re.ASCII | re.VERBOSE)


def _phone_digits(s: str) -> tuple[int, int, int]:
    """(digit count without a '00' prefix, minimum, maximum) for a phone candidate."""
    n = sum(c.isdigit() for c in s)
    if s[0] == "+":
        return n, 8, 15
    if s[:2] == "00" and s[2:3].isdigit() and s[2] != "0":  # the international branch
        return n - 2, 8, 15
    return n, 9, 12


# Printed tracking numbers, not phone numbers: three 4-digit groups ("0797 6443 3158", FedEx),
# or 4-digit groups continuing 4-digit groups ("9400 3519 8278 0348 7434 68", USPS).
_FOUR_FOUR_FOUR = re.compile(r"0[0-9]{3} [0-9]{4} [0-9]{4}")
_FOUR_GROUPS = re.compile(r"0[0-9]{3}(?: [0-9]{4})+(?: [0-9]{1,4})?")
_FOUR_BEFORE = re.compile(r"(?<![0-9])[0-9]{4} $")


def _phone_check(m: re.Match[str]) -> Span | None:
    start, end = m.span()
    text = m.string
    if _FOUR_FOUR_FOUR.fullmatch(m.group()) or (
        _FOUR_GROUPS.fullmatch(m.group()) and _FOUR_BEFORE.search(text, max(0, start - 6), start)
    ):
        return None
    if m.group("ext"):
        end = m.start("ext")
    s = m.string[start:end]
    n, lo, hi = _phone_digits(s)
    if lo <= n <= hi:
        return m.span()
    if n < lo:
        return None
    # Too many digits: trim trailing space-separated groups ("030 1234567 2026") while the
    # shape still holds. (Not at a dash or dot: "068-3490781-7560248" is one number.)
    cut = len(s)
    while True:
        cut = s.rfind(" ", 0, cut)
        if cut <= 0:
            return None
        head = s[:cut]
        n, lo, hi = _phone_digits(head)
        if n < lo:
            return None
        if n <= hi and _PHONE_FULL.fullmatch(head):
            return start, start + cut


# --- iban --------------------------------------------------------------------------------------

# Lengths from the SWIFT IBAN registry.
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HN": 28, "HR": 21, "HU": 28,
    "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28,
    "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22,
    "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23,
    "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24,
    "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}
_IBAN = re.compile(r"(?<!\w)[A-Za-z]{2}[0-9]{2}(?:[ \-.]?[A-Za-z0-9]){9,30}", re.ASCII)
_IBAN_DIGITS = str.maketrans({chr(c): str(c - 55) for c in range(ord("A"), ord("Z") + 1)})
_EIGHT_DIGITS = re.compile(r"[0-9]{8}")


def iban_ok(compact: str) -> bool:
    """*compact*: upper case, no separators."""
    if IBAN_LENGTHS.get(compact[:2]) != len(compact) or not _EIGHT_DIGITS.search(compact):
        return False
    return int((compact[4:] + compact[:4]).translate(_IBAN_DIGITS)) % 97 == 1


def _iban_check(m: re.Match[str]) -> Span | None:
    """The country fixes the length: take that many characters, skipping single separators
    (any mix of spaces, dashes and dots, anywhere), and check mod 97."""
    s = m.group()
    want = IBAN_LENGTHS.get(s[:2].upper())
    if want is None:
        return None
    chars: list[str] = []
    end = 0
    for i, c in enumerate(s):
        if c.isalnum():
            chars.append(c)
            if len(chars) == want:
                end = i + 1
                break
    if end == 0 or (end < len(s) and s[end].isalnum()):  # too short, or glued to more
        return None
    following = m.string[m.start() + end : m.start() + end + 1]
    if following.isalnum() or following == "_":
        return None
    return (m.start(), m.start() + end) if iban_ok("".join(chars).upper()) else None


# --- ssn ---------------------------------------------------------------------------------------

_SSN = re.compile(
    r"(?<![\w\-])(?!000|666|9)[0-9]{3}(?P<sep>[\- .]?)(?!00)[0-9]{2}(?P=sep)(?!0000)[0-9]{4}"
    r"(?![\w\-]|[.,][0-9])",
    re.ASCII,
)
# An undashed 9-digit run right after one of these is an amount, a decimal or an order number.
_SSN_BARE_BEFORE = frozenset(".,#+$")


def _ssn_check(m: re.Match[str]) -> Span | None:
    start = m.start()
    if not m.group("sep") and start > 0 and m.string[start - 1] in _SSN_BARE_BEFORE:
        return None
    return m.span()


# --- ip ----------------------------------------------------------------------------------------

OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"(?<![\w.]){OCTET}(?:\.{OCTET}){{3}}(?!\w|\.[0-9])", re.ASCII)
_PRODUCT_TOKEN = re.compile(r"\w/$")  # "Chrome/120.0.0.0"
# "version 1.2.3.4", "build: 10.0.12.1", "rev=2.1.0.3"
_VERSION_WORD = re.compile(r"\b(?:version|ver|build|release|rev)[\s:=#]{0,2}$", re.IGNORECASE)


def looks_like_version(address: str) -> bool:
    """A four-part version more than an address: the first part is a single digit and there are
    at most 6 digits in all ("1.2.3.4", "2.14.0.3", "4.2.1.105"). About 0.07% of addresses drawn
    uniformly have that shape, mostly public resolvers ("8.8.4.4", "1.0.0.1")."""
    return address[1] == "." and len(address) <= 9  # 6 digits and 3 dots


def _ipv4_check(m: re.Match[str]) -> Span | None:
    """An IPv4 address, unless it reads as a four-part version: by its shape
    (`looks_like_version`), named a version just before ("version 10.0.0.1", "build: ..."), or
    followed by a pre-release or build tag ("10.0.12.1-beta", "+sha")."""
    s = m.group()
    if looks_like_version(s):
        return None
    start, end = m.span()
    text = m.string
    if s.endswith(".0.0") and _PRODUCT_TOKEN.search(text, max(0, start - 2), start):
        return None  # the version of a product token: "Chrome/120.0.0.0", "OPR/106.0.0.0"
    if _VERSION_WORD.search(text, max(0, start - 10), start) is not None:
        return None
    if text[end : end + 1] == "+" or (text[end : end + 1] == "-" and text[end + 1 : end + 2].isalpha()):
        return None
    return start, end


# The whole run of hex digits, colons and dots (for "::ffff:192.0.2.1"), taken atomically: the
# check decides, and a rejected run is skipped whole, which keeps colon-heavy text linear.
_IPV6 = re.compile(
    r"(?<![\w.])(?<!::)(?=[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:)(?>[0-9A-Fa-f:.]{2,45})", re.ASCII
)
_HEX = re.compile(r"[0-9A-Fa-f]")
_WORD = re.compile(r"\w", re.ASCII)


def _ipv6_ok(s: str) -> bool:
    if _HEX.search(s) is None:  # "::" alone is a separator far more often than an address
        return False
    try:
        ipaddress.IPv6Address(s)
    except ValueError:
        return False
    return True


def _ipv6_check(m: re.Match[str]) -> Span | None:
    s = m.group()
    start, end = m.span()
    if _ipv6_ok(s):
        return None if _WORD.match(m.string, end) else (start, end)  # not "fe80::1g"
    # Punctuation after the address: "fe80::1: refused", "at fe80::1.", "fe80::1..."
    t = s.rstrip(".")
    for candidate in (t, t[:-1] if t.endswith(":") else ""):
        if candidate and _ipv6_ok(candidate):
            return start, start + len(candidate)
    return None


# --- bearer and jwt ----------------------------------------------------------------------------

_BEARER = re.compile(
    r"(?<![\w\-])bearer\s+([A-Za-z0-9\-._~+/]{8,}=*)(?![\w\-.~+/]|:hm_)", re.ASCII | re.IGNORECASE
)
_HAS_DIGIT = re.compile(r"[0-9]")


def _bearer_check(m: re.Match[str]) -> Span | None:
    token = m.group(1)
    mixed_case = not token.islower() and not token.isupper()
    if _HAS_DIGIT.search(token) or (len(token) >= 20 and mixed_case):
        return m.span(1)
    return None


_JWT = re.compile(
    r"(?<![\w\-])eyJ[\w\-]{4,}\.[\w\-]+\.[\w\-]*(?:\.[\w\-]+\.[\w\-]*)?(?![\w\-]|\.\w)", re.ASCII
)
_JWT_HEADER_KEYS = ("alg", "typ", "enc", "kid")


def jwt_header(segment: str) -> dict[str, object] | None:
    """The decoded JOSE header of a JWT's first segment, or None."""
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        header = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError):  # RecursionError: '{"a":[[[[...'
        return None
    return header if isinstance(header, dict) else None


def _jwt_check(m: re.Match[str]) -> Span | None:
    header = jwt_header(m.group().split(".", 1)[0])
    if header is None or not any(k in header for k in _JWT_HEADER_KEYS):
        return None
    return m.span()


# --- the detectors, in the order they run ------------------------------------------------------

# Credentials first (a token may contain anything), then emails (which hold digits and dots),
# IBANs before cards (an IBAN holds a card-like digit run), IPv6 before IPv4 (::ffff:1.2.3.4),
# phones last (the loosest shape). Each runs on the text its predecessors already redacted.
DETECTORS: tuple[Detector, ...] = (
    Detector("bearer", BEARER, _BEARER, _bearer_check),
    Detector("jwt", EYJ, _JWT, _jwt_check),
    Detector("email", AT, _EMAIL, _email_check),
    Detector("iban", DIGITS, _IBAN, _iban_check),
    Detector("card", DIGITS, _CARD, _card_check),
    Detector("ssn", DIGITS, _SSN, _ssn_check),
    Detector("ip", COLONS, _IPV6, _ipv6_check, skip_rejected=True),
    Detector("ip", DIGITS, _IPV4, _ipv4_check),
    Detector("phone", DIGITS, _PHONE, _phone_check),
)
KINDS: tuple[Kind, ...] = ("card", "email", "phone", "iban", "ssn", "ip", "bearer", "jwt")
