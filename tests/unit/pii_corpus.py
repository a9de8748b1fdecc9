"""Seeded corpora for the PII tests: planted personal data, and look-alikes that are not.

`PiiMaker` writes values from the formats' own rules (brand prefixes and Luhn, IBAN mod 97,
national phone plans, SSN ranges ...), never from the detectors' patterns. `encode` gives the
forms a value takes inside real payloads (URL query strings, form bodies, JSON text kept in a
string, double encoding). `LookAlikes` writes what analytics properties are full of and is not
personal data: versions, EAN/ISBN/UPC codes, order ids, tracking numbers, timestamps,
coordinates, prices, ids.

`leaked(planted, text)` is the oracle: the value, any encoded form of it, or (for the number
kinds) its run of 9+ digits, found in *text* once hash tokens are taken out.
"""

from __future__ import annotations

import base64
import bisect
import ipaddress
import itertools
import json
import random
import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote, quote_plus

from agents.pii.detectors import IBAN_LENGTHS, looks_like_version

DIGITS = string.digits
HASH_TOKEN = re.compile(r"[a-z]+:hm_[0-9a-f]{16}")


@dataclass(frozen=True)
class Planted:
    kind: str  # card, email, phone, iban, ssn, ip, bearer, jwt
    fmt: str  # the format's name, for reports ("card/8-8", "phone/de-slash" ...)
    value: str  # as a person would write it
    secret: str  # the part that must not survive (a bearer token without its scheme word)


def luhn_complete(body: str) -> str:
    """*body* with the Luhn check digit appended (written here from the definition)."""
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:  # these positions are doubled once the check digit is appended
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return body + str((10 - total % 10) % 10)


def luhn_valid(number: str) -> bool:
    return luhn_complete(number[:-1]) == number


def ean_complete(body: str) -> str:
    """12 digits with the GS1 check digit appended (weights 1, 3, 1, 3 ... from the left)."""
    total = sum(int(c) * (3 if i % 2 else 1) for i, c in enumerate(body))
    return body + str((10 - total % 10) % 10)


def iban(country: str, bban: str) -> str:
    """An IBAN with correct check digits (ISO 13616: 98 - mod 97 of BBAN + country + 00)."""
    numeric = "".join(str(int(c, 36)) for c in (bban + country + "00").upper())
    return f"{country}{98 - int(numeric) % 97:02d}{bban}"


def jwt(header: dict[str, object], payload: dict[str, object], signature: bytes) -> str:
    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return ".".join(
        [b64(json.dumps(header).encode()), b64(json.dumps(payload).encode()), b64(signature)]
    )


def _group(number: str, sizes: list[int], seps: list[str]) -> str:
    parts, i = [], 0
    for size in sizes:
        parts.append(number[i : i + size])
        i += size
    if i < len(number):
        parts.append(number[i:])
    out = parts[0]
    for k, part in enumerate(parts[1:]):
        out += seps[k % len(seps)] + part
    return out


# Letters-then-digits runs of some BBANs (the rest are all digits), from the IBAN registry.
_BBAN_LETTERS = {"GB": 4, "NL": 4, "MT": 4, "IE": 4, "BG": 4, "RO": 4, "BH": 4, "QA": 4,
                 "JO": 4, "KW": 4, "LV": 4, "IT": 1, "SM": 1, "PK": 4, "MU": 4, "AE": 0}
_IBAN_COUNTRIES = sorted(IBAN_LENGTHS)


class PiiMaker:
    """Planted values of every supported kind and format, from a seeded random source."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def d(self, k: int) -> str:
        return "".join(self.rng.choice(DIGITS) for _ in range(k))

    def nz(self) -> str:
        return self.rng.choice("123456789")

    def pick(self, *options: str) -> str:
        return self.rng.choice(options)

    # --- cards ---------------------------------------------------------------------------------

    CARD_BRANDS: tuple[tuple[str, tuple[int, ...]], ...] = (
        ("visa", (16, 19, 13)), ("mastercard", (16,)), ("mastercard2", (16,)), ("amex", (15,)),
        ("discover", (16, 19)), ("unionpay", (16, 17, 18, 19)), ("jcb", (16,)),
        ("diners", (14,)), ("diners300", (14, 16)), ("maestro", (16, 19)), ("mir", (16,)),
    )

    def card(self) -> Planted:
        brand, lengths = self.rng.choice(self.CARD_BRANDS)
        prefix = {
            "visa": "4", "mastercard": f"5{self.rng.randint(1, 5)}",
            "mastercard2": str(self.rng.randint(2221, 2720)), "amex": self.pick("34", "37"),
            "discover": self.pick("6011", "65", str(self.rng.randint(644, 649))), "unionpay": "62",
            "jcb": str(self.rng.randint(3528, 3589)), "diners": "36",
            "diners300": f"30{self.rng.randint(0, 5)}", "maestro": self.pick("6759", "5018", "5020", "6304", "67"),
            "mir": f"220{self.rng.randint(0, 4)}",
        }[brand]
        n = self.rng.choice(lengths)
        number = luhn_complete(prefix + self.d(n - len(prefix) - 1))
        styles = ["plain", "4s-space", "4s-dash", "4s-dot", "mixed"]
        if n == 16:
            styles.append("8-8")
        if n == 15:
            styles.append("4-6-5")
        if n == 14:
            styles.append("4-6-4")
        style = self.rng.choice(styles)
        if style == "plain" or (style == "mixed" and n < 16):
            return Planted("card", f"card/{brand}{n}/plain", number, number)
        if style in ("4-6-5", "4-6-4"):
            sep = self.pick(" ", "-")
            value = _group(number, [4, 6], [sep])
        elif style == "8-8":
            value = _group(number, [8], [self.pick(" ", "-", ".")])
        elif style == "mixed":
            value = _group(number, [4, 4, 4], [" ", "-", "."][:: self.rng.choice([1, -1])])
        else:
            sep = {"4s-space": " ", "4s-dash": "-", "4s-dot": "."}[style]
            value = _group(number, [4] * (n // 4), [sep])
        return Planted("card", f"card/{brand}{n}/{style}", value, value)

    # --- emails --------------------------------------------------------------------------------

    def email(self) -> Planted:
        rng = self.rng
        first = rng.choice(["jane", "john", "maría", "li", "o'neil", "anna-lena", "j", "x", "bob"])
        last = rng.choice(["doe", "smith", "müller", "nguyen", "o", "garcía", "k"])
        local = rng.choice([
            f"{first}.{last}", f"{first}{rng.randint(1, 9999)}", f"{first}+{rng.choice(['news', 'tag', '2026'])}",
            f"{first}_{last}", f"{first[0]}{last}", f"{first}-{last}.{rng.randint(1, 99)}",
        ]).replace("'", "")
        domain = rng.choice([
            "example.com", "mail.example.org", "example.co.uk", "exämple.de", "corp.example.io",
            f"sub{rng.randint(1, 99)}.example.net", "gmail.com", "example.museum",
        ])
        value = f"{local}@{domain}"
        style = rng.choice(["lower", "lower", "title", "upper"])
        if style == "title":
            value = value.title()
        elif style == "upper":
            value = value.upper()
        return Planted("email", f"email/{style}", value, value)

    # --- phones --------------------------------------------------------------------------------

    def phone(self) -> Planted:
        rng, d, nz = self.rng, self.d, self.nz
        fmts: dict[str, Callable[[], str]] = {
            "e164": lambda: f"+{nz()}{d(rng.randint(7, 14))}",
            "intl-space": lambda: f"+{rng.choice(['44', '49', '33', '39', '34', '31', '91', '81', '61', '7', '1', '353', '358'])} {nz()}{d(1)} {d(4)} {d(4)}",
            "intl-dash": lambda: f"+{rng.choice(['1', '44', '49'])}-{d(3)}-{d(3)}-{d(4)}",
            "intl-dot": lambda: f"+{rng.choice(['33', '32', '41'])}.{nz()}.{d(2)}.{d(2)}.{d(2)}.{d(2)}",
            "intl-trunk": lambda: f"+44 (0) {nz()}{d(1)} {d(4)} {d(4)}",
            "intl-trunk-de": lambda: f"+49(0){nz()}{d(1)} {d(7)}",
            "intl-00": lambda: f"00{rng.choice(['44', '49', '33', '41'])} {nz()}{d(1)} {d(7)}",
            "us-dash": lambda: f"{nz()}{d(2)}-{nz()}{d(2)}-{d(4)}",
            "us-paren": lambda: f"({nz()}{d(2)}) {nz()}{d(2)}-{d(4)}",
            "us-paren-tight": lambda: f"({nz()}{d(2)}){nz()}{d(2)}-{d(4)}",
            "us-dot": lambda: f"{nz()}{d(2)}.{nz()}{d(2)}.{d(4)}",
            "us-space": lambda: f"{nz()}{d(2)} {nz()}{d(2)} {d(4)}",
            "us-1-dash": lambda: f"1-{nz()}{d(2)}-{nz()}{d(2)}-{d(4)}",
            "us-1-paren": lambda: f"1 ({nz()}{d(2)}) {nz()}{d(2)}-{d(4)}",
            "us-plus1": lambda: f"+1-{nz()}{d(2)}-{nz()}{d(2)}-{d(4)}",
            "us-001": lambda: f"001-{nz()}{d(2)}-{nz()}{d(2)}-{d(4)}",
            "us-ext": lambda: f"{nz()}{d(2)}-{nz()}{d(2)}-{d(4)}{rng.choice(['x', ' x', ' ext. ', ' ext '])}{d(rng.randint(2, 5))}",
            "de-slash": lambda: self._de("{area}/{rest}"),
            "de-space": lambda: self._de("{area} {rest}"),
            "de-paren": lambda: self._de("({area}) {rest}"),
            "de-mobile": lambda: f"01{rng.choice('567')}{d(1)} {d(7)}",
            "uk-london": lambda: f"020 {nz()}{d(3)} {d(4)}",
            "uk-mobile": lambda: f"07{d(3)} {d(6)}",
            "fr-space": lambda: f"0{nz()} {d(2)} {d(2)} {d(2)} {d(2)}",
            "fr-dot": lambda: f"0{nz()}.{d(2)}.{d(2)}.{d(2)}.{d(2)}",
            "in-5-5": lambda: f"{rng.choice('6789')}{d(4)} {d(5)}",
            "in-5-5-dash": lambda: f"{rng.choice('6789')}{d(4)}-{d(5)}",
            "in-intl": lambda: f"+91 {rng.choice('6789')}{d(4)} {d(5)}",
            "in-trunk": lambda: f"0{rng.choice('6789')}{d(4)} {d(5)}",
            "cn-mobile": lambda: f"1{rng.choice('3456789')}{d(1)} {d(4)} {d(4)}",
            "jp": lambda: f"0{nz()}-{d(4)}-{d(4)}",
            "jp-mobile": lambda: f"0{rng.choice('789')}0-{d(4)}-{d(4)}",
            "es-3-3-3": lambda: f"{rng.choice('6789')}{d(2)} {d(3)} {d(3)}",
            "es-3-2-2-2": lambda: f"{rng.choice('6789')}{d(2)} {d(2)} {d(2)} {d(2)}",
            "mx": lambda: f"{nz()}{d(1)} {d(4)} {d(4)}",
            "ru-trunk": lambda: f"8 ({nz()}{d(2)}) {d(3)}-{d(2)}-{d(2)}",
            "ru-free": lambda: f"8 800 {d(3)} {d(2)} {d(2)}",
            "br": lambda: f"({nz()}{d(1)}) 9{d(4)}-{d(4)}",
            "au": lambda: f"(0{nz()}) {d(4)} {d(4)}",
            "au-mobile": lambda: f"04{d(2)} {d(3)} {d(3)}",
        }
        fmt = rng.choice(sorted(fmts))
        value = fmts[fmt]()
        return Planted("phone", f"phone/{fmt}", value, value)

    def _de(self, shape: str) -> str:
        """A German landline: area code 0 + 2-4 digits, 10-12 digits in all."""
        area = "0" + self.nz() + self.d(self.rng.randint(1, 3))
        return shape.format(area=area, rest=self.d(self.rng.randint(10, 12) - len(area)))

    # --- ibans ---------------------------------------------------------------------------------

    def iban(self) -> Planted:
        rng = self.rng
        country = rng.choice(_IBAN_COUNTRIES)
        n = IBAN_LENGTHS[country] - 4
        letters = min(_BBAN_LETTERS.get(country, 0), n - 8)
        bban = "".join(rng.choice(string.ascii_uppercase) for _ in range(letters)) + self.d(n - letters)
        number = iban(country, bban)
        style = rng.choice(["plain", "space", "dash", "dot", "irregular", "lower"])
        if style == "plain":
            value = number
        elif style == "lower":
            value = " ".join(number[i : i + 4] for i in range(0, len(number), 4)).lower()
        elif style == "irregular":
            value = f"{number[:4]} {number[4:12]} {number[12:]}"
        else:
            sep = {"space": " ", "dash": "-", "dot": "."}[style]
            value = sep.join(number[i : i + 4] for i in range(0, len(number), 4))
        return Planted("iban", f"iban/{style}", value, value)

    # --- ssns ----------------------------------------------------------------------------------

    def ssn(self) -> Planted:
        rng = self.rng
        area = rng.choice([a for a in range(1, 900) if a != 666])
        number = f"{area:03d}{rng.randint(1, 99):02d}{rng.randint(1, 9999):04d}"
        style = rng.choice(["dash", "space", "bare", "dot"])
        sep = {"dash": "-", "space": " ", "bare": "", "dot": "."}[style]
        value = f"{number[:3]}{sep}{number[3:5]}{sep}{number[5:]}"
        return Planted("ssn", f"ssn/{style}", value, value)

    # --- ips -----------------------------------------------------------------------------------

    def ip(self) -> Planted:
        rng = self.rng
        style = rng.choice(["v4", "v4", "v6", "v6-short", "v6-mapped", "v6-full"])
        if style == "v4":
            while True:  # a four-part-version shape ("1.2.3.4", "2.14.0.3") is not covered
                value = str(ipaddress.IPv4Address(rng.getrandbits(32)))
                if not looks_like_version(value):
                    break
        elif style == "v6":
            value = str(ipaddress.IPv6Address(rng.getrandbits(128) or 1))
        elif style == "v6-short":
            value = str(ipaddress.IPv6Address(f"2001:db8::{rng.randint(1, 0xFFFF):x}:{rng.randint(1, 0xFFFF):x}"))
        elif style == "v6-mapped":
            value = "::ffff:" + ".".join(str(rng.randint(1, 255)) for _ in range(4))
        else:
            value = ipaddress.IPv6Address(rng.getrandbits(128) or 1).exploded
        return Planted("ip", f"ip/{style}", value, value)

    # --- credentials ---------------------------------------------------------------------------

    def bearer(self) -> Planted:
        rng = self.rng
        alphabet = string.ascii_letters + string.digits + "-._~+/"
        token = "".join(rng.choice(alphabet) for _ in range(rng.randint(12, 48))) + self.d(1)
        token += "".join(rng.choice(string.ascii_letters) for _ in range(3))
        scheme = rng.choice(["Bearer", "bearer", "BEARER"])
        return Planted("bearer", "bearer", f"{scheme} {token}", token)

    def jwt(self) -> Planted:
        rng = self.rng
        header = {"alg": rng.choice(["HS256", "RS256", "ES256"]), "typ": "JWT"}
        payload = {"sub": f"user-{rng.randint(1, 10**6)}", "iat": rng.randint(1_600_000_000, 1_900_000_000)}
        value = jwt(header, payload, rng.randbytes(32))
        return Planted("jwt", "jwt", value, value)

    def any(self) -> Planted:
        maker = self.rng.choice([self.card, self.card, self.email, self.email, self.phone,
                                 self.phone, self.phone, self.iban, self.ssn, self.ip,
                                 self.bearer, self.jwt])
        return maker()


# --- encodings: how a value appears inside a payload --------------------------------------------

ENCODINGS = ("plain", "url-query", "url-form", "url-path", "url-double", "json-string",
             "json-unicode", "json-newline")


def encode(value: str, how: str, rng: random.Random) -> str:
    """*value* as it appears inside a payload written the *how* way."""
    if how == "plain":
        return value
    if how == "url-query":  # a link with the value in a query parameter, %-encoded
        return f"https://app.example.com/p?{rng.choice(['email', 'q', 'ref', 'to'])}={quote(value, safe='')}&utm_source=x"
    if how == "url-form":  # a form body: spaces as '+'
        return f"name=x&{rng.choice(['contact', 'data'])}={quote_plus(value)}&ok=1"
    if how == "url-path":
        return f"/users/{quote(value, safe='')}/profile"
    if how == "url-double":  # a URL inside a URL parameter
        return "https://r.example.com/?u=" + quote("https://a.example/?v=" + quote(value, safe=""), safe="")
    if how == "json-string":  # JSON text kept in a string: quotes, slashes and newlines escaped
        return json.dumps({"note": f"see\n{value}", "n": 1})
    if how == "json-unicode":  # every non-alphanumeric as \\uXXXX, as some serializers write
        return "".join(c if c.isalnum() else f"\\u{ord(c):04x}" for c in value)
    if how == "json-newline":  # an escaped newline glued to the value
        return json.dumps(f"line one\n{value}\tend")[1:-1]
    raise ValueError(how)


def encoded_forms(value: str) -> set[str]:
    """The encodings a leak could show the value in (besides the value itself)."""
    forms = {quote(value, safe=""), quote_plus(value), quote(quote(value, safe=""), safe="")}
    forms.add("".join(c if c.isalnum() else f"\\u{ord(c):04x}" for c in value))
    return {f for f in forms if f != value}


# What may stand between the digits of one written number: "017-96-1012", "(030) 123 45".
_NUMBER_SEPARATORS = frozenset(" -./()+_\t\u00a0")


def _digits(text: str) -> str:
    """The digits of *text*, each written number's digits contiguous; anything that cannot be
    part of a written number (a quote, a colon, a letter) breaks the run with "|", so that the
    digits of neighbouring JSON fields (a timestamp after an id) never read as one number."""
    return "".join(c if c.isdigit() else "" if c in _NUMBER_SEPARATORS else "|" for c in text)


class _Joined:
    """Texts joined by a separator, and where each one starts, to say which text a hit is in."""

    def __init__(self, texts: list[str], sep: str) -> None:
        self.texts = texts
        self.joined = sep.join(texts)
        self.starts = list(itertools.accumulate((len(t) + len(sep) for t in texts[:-1]), initial=0))

    def find(self, needle: str) -> int | None:
        """The index of the text holding *needle*, or None."""
        at = self.joined.find(needle)
        return None if at < 0 else bisect.bisect_right(self.starts, at) - 1


class Haystack:
    """Texts to search for leaks. Each text is searched on its own: a value is found only
    inside one text (a field, a cell, a message), never across two."""

    def __init__(self, texts: list[str] | None = None) -> None:
        self._texts: list[str] = []
        self._index: tuple[_Joined, _Joined, _Joined] | None = None
        for text in texts or []:
            self.add(text)

    def add(self, text: str) -> None:
        self._texts.append(HASH_TOKEN.sub(" ", text))
        self._index = None

    def __len__(self) -> int:
        return len(self._texts)

    def find(self, planted: Planted) -> str | None:
        """The text *planted* can be read in, or None."""
        if self._index is None:
            texts = self._texts
            self._index = (_Joined(texts, "\x00\x01"), _Joined([t.lower() for t in texts], "\x00\x01"),
                           _Joined([_digits(t) for t in texts], "|"))
        plain, lower, digits = self._index
        secret = planted.secret
        for form in (secret, *encoded_forms(secret)):
            if (i := plain.find(form)) is not None:
                return self._texts[i]
        if planted.kind == "email" and (i := lower.find(secret.lower())) is not None:
            return self._texts[i]
        if planted.kind in ("card", "phone", "ssn", "iban"):
            run = _digits(secret)
            # The value's digits, contiguous in one written number of a text: only a survivor
            # can put 9+ there.
            if len(run) >= 9 and (i := digits.find(run)) is not None:
                return self._texts[i]
        return None


def leaked(planted: Planted, text: str) -> bool:
    """Whether *planted* can be read in *text* (hash tokens excepted)."""
    return Haystack([text]).find(planted) is not None


FILLER = ["the", "user", "clicked", "order", "ref", "page", "note", "ok", "v2.1", "2026-11-28",
          "ORD-2026-000123", "12:30", "1234.56", "/docs", "x_y", "Über", "日本", "42", "7", "2026"]
SEPARATORS = [" ", ", ", "; ", " (", ") ", "'", "=", ": ", " | ", "<", ">", " - ", "\n", "\t",
              '"', "[", "]"]


def embed(rng: random.Random, text: str) -> str:
    """*text* with words around it, or alone."""
    if rng.random() < 0.3:
        return text
    before = " ".join(rng.choice(FILLER) for _ in range(rng.randint(0, 2)))
    after = " ".join(rng.choice(FILLER) for _ in range(rng.randint(0, 2)))
    return before + rng.choice(SEPARATORS) + text + rng.choice(SEPARATORS) + after


# --- look-alikes ---------------------------------------------------------------------------------


class LookAlikes:
    """Values that resemble PII and are not: what analytics properties are full of."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def n(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def d(self, k: int) -> str:
        return "".join(self.rng.choice(DIGITS) for _ in range(k))

    def hx(self, k: int) -> str:
        return "".join(self.rng.choice("0123456789abcdef") for _ in range(k))

    def one_of(self, *makers: Callable[[], str]) -> str:
        return self.rng.choice(makers)()

    def version(self) -> str:
        n = self.n
        return self.one_of(
            lambda: f"{n(0, 20)}.{n(0, 20)}.{n(0, 99)}",
            lambda: f"{n(1, 9)}.{n(0, 9)}.{n(0, 9)}.{n(0, 9)}",  # four-part app version
            lambda: f"{n(1, 9)}.{n(0, 20)}.{n(0, 9)}.{n(0, 9)}",
            lambda: f"{n(1, 4)}.{n(0, 9)}.{n(0, 9)}.{n(100, 9999)}",
            lambda: f"v{n(1, 12)}.0.{n(10000, 22631)}.{n(1, 3000)}",
            lambda: f"{n(1, 9)}.{n(0, 9)}.{n(0, 9)}-beta.{n(1, 9)}",
            lambda: f"Chrome/{n(90, 130)}.0.{n(1000, 6999)}.{n(10, 250)}",
            lambda: f"10.0.{n(10000, 22631)}.{n(1, 5000)}",  # Windows build
            lambda: f"{n(1, 30)}.{n(0, 12)}.{n(0, 9)} ({n(100, 99999)})",  # iOS app + build
        )

    def ean(self) -> str:
        prefix = self.rng.choice(["00", "01", "30", "34", "40", "41", "42", "43", "44", "45", "49",
                                  "50", "54", "57", "590", "690", "693", "76", "80", "84", "87",
                                  "880", "890", "93"])
        code = ean_complete(prefix + self.d(12 - len(prefix)))
        return self.one_of(lambda: code, lambda: code, lambda: f"EAN {code}", lambda: f"gtin:{code}")

    def isbn(self) -> str:
        body = self.rng.choice(["978", "979"]) + self.d(9)
        isbn13 = ean_complete(body)
        ten = self.d(9)
        check = sum((10 - i) * int(c) for i, c in enumerate(ten)) % 11
        isbn10 = ten + ("X" if (11 - check) % 11 == 10 else str((11 - check) % 11))
        return self.one_of(
            lambda: isbn13, lambda: f"{isbn13[:3]}-{isbn13[3]}-{isbn13[4:6]}-{isbn13[6:12]}-{isbn13[12]}",
            lambda: f"ISBN {isbn10}", lambda: f"{isbn10[0]}-{isbn10[1:4]}-{isbn10[4:9]}-{isbn10[9]}",
        )

    def upc(self) -> str:
        body = self.d(11)
        total = sum(int(c) * (3 if i % 2 == 0 else 1) for i, c in enumerate(body))
        return body + str((10 - total % 10) % 10)

    def order_id(self) -> str:
        d = self.d
        return self.one_of(
            lambda: f"ORD-{self.n(2019, 2027)}-{d(6)}", lambda: f"#{d(6)}", lambda: f"PO{d(8)}",
            lambda: f"INV-{d(4)}-{d(4)}", lambda: f"order_{d(10)}", lambda: f"#{self.n(1001, 99999)}",
            lambda: f"{d(3)}-{d(7)}-{d(7)}",  # marketplace order number
            lambda: f"A{d(2)}-{d(5)}-{d(5)}", lambda: f"ch_{self.hx(24)}",
        )

    def tracking_number(self) -> str:
        d = self.d
        return self.one_of(
            lambda: f"1Z{d(3)}AA{d(11)}",  # UPS
            lambda: d(12),  # FedEx Express
            lambda: f"{d(4)} {d(4)} {d(4)}",  # FedEx, printed
            lambda: f"94{d(20)}",  # USPS
            lambda: f"9400 {d(4)} {d(4)} {d(4)} {d(4)} {d(2)}",  # USPS, printed
            lambda: f"JD{d(18)}",  # DHL
            lambda: f"LX{d(9)}DE",  # UPU
            lambda: f"TBA{d(12)}",  # Amazon
        )

    def timestamp(self) -> str:
        n = self.n
        day = f"2026-{n(1, 12):02d}-{n(1, 28):02d}"
        hms = f"{n(0, 23):02d}:{n(0, 59):02d}:{n(0, 59):02d}"
        ms = n(1_500_000_000_000, 1_900_000_000_000)
        return self.one_of(
            lambda: f"{day}T{hms}.{self.d(3)}Z", lambda: f"{day} {hms}",
            lambda: f"{day}T{hms}+01:00", lambda: f"{day} {hms}.{self.d(6)}",
            lambda: str(ms), lambda: str(ms // 1000), lambda: str(ms * 1000),
            lambda: f"{n(1, 28):02d}/{n(1, 12):02d}/2026 {hms[:5]}",
            lambda: f"{n(1, 12):02d}/{n(1, 28):02d}/2026 {n(1, 12)}:{n(10, 59)} PM",
            lambda: f"Sat, {n(1, 28)} Nov 2026 {hms} +0000", lambda: f"{day.replace('-', '')}T{hms.replace(':', '')}Z",
            lambda: f"{n(1, 28):02d}.{n(1, 12):02d}.2026 {hms}",
        )

    def coordinates(self) -> str:
        rng = self.rng
        lat, lng = rng.uniform(-90, 90), rng.uniform(-180, 180)
        return self.one_of(
            lambda: f"{lat:.6f},{lng:.6f}", lambda: f"{lat:.4f}, {lng:.4f}",
            lambda: f"geo:{lat:.6f},{lng:.6f}", lambda: f"POINT({lng:.5f} {lat:.5f})",
            lambda: f"{abs(lat):.4f}° {'N' if lat > 0 else 'S'}, {abs(lng):.4f}° {'E' if lng > 0 else 'W'}",
            lambda: f"lat={lat:.5f}&lng={lng:.5f}",
        )

    def price(self) -> str:
        n, d = self.n, self.d
        return self.one_of(
            lambda: f"{n(0, 99999)}.{d(2)}", lambda: f"{n(1, 9)},{d(3)}.{d(2)}",
            lambda: f"EUR {n(1, 9999)}", lambda: f"{n(1, 999)}.0", lambda: f"${n(1, 999)},{d(3)}.{d(2)}",
            lambda: f"{n(1, 9)}.{d(3)},{d(2)} €",
        )

    def identifier(self) -> str:
        hx = self.hx
        return self.one_of(
            lambda: f"{hx(8)}-{hx(4)}-4{hx(3)}-{self.rng.choice('89ab')}{hx(3)}-{hx(12)}",
            lambda: hx(40), lambda: hx(7), lambda: f"SKU-{self.d(5)}-{self.rng.choice(['BLK', 'WHT'])}",
            lambda: f"{self.d(3)}-{self.d(4)}-{self.d(2)}", lambda: f"AB{self.d(6)}",
            lambda: f"#{hx(6)}", lambda: f"user-{self.n(1, 10**6)}", lambda: f"sess_{hx(16)}",
        )

    def misc(self) -> str:
        n = self.n
        return self.one_of(
            lambda: f"logo@{n(2, 3)}x.png", lambda: f"@scope/pkg@{n(0, 9)}.{n(0, 9)}.{n(0, 9)}",
            lambda: f"{n(0, 23):02d}:{n(0, 59):02d}:{n(0, 59):02d}", lambda: f"PT{n(1, 59)}M",
            lambda: f"/api/v{n(1, 3)}/items/{self.d(6)}", lambda: f"{n(1, 9999)} KB",
            lambda: f"Build {n(1000, 99999)}", lambda: f"page {n(1, 500)} of {n(500, 900)}",
            lambda: f"{n(1, 100)}%", lambda: f"{n(10000, 99999)}", lambda: f"{n(1000, 9999)}-{n(100, 999)}",
            lambda: f"1920x{n(600, 1200)}", lambda: f"rgba({n(0, 255)},{n(0, 255)},{n(0, 255)},0.5)",
            lambda: f"^{n(0, 9)}.{n(0, 20)}.{n(0, 20)}", lambda: f">={n(0, 9)}.{n(0, 9)} <{n(10, 20)}.0",
            lambda: f"{n(1, 28):02d}/{n(1, 12):02d}/{n(1990, 2030)}",
            lambda: f"{n(1990, 2030)}{n(1, 12):02d}{n(1, 28):02d}", lambda: f"#{self.hx(3)}",
        )

    KINDS = ("version", "ean", "isbn", "upc", "order_id", "tracking_number", "timestamp",
             "coordinates", "price", "identifier", "misc")

    def corpus(self, per_kind: int) -> dict[str, list[str]]:
        return {k: [getattr(self, k)() for _ in range(per_kind)] for k in self.KINDS}
