"""Cost of the validate stage, and of PII redaction on top of it, on one core.

    .venv/bin/python bench/validate.py [--events 100000] [--runs 5] [--pii-rate 0.05]
                                       [--no-context] [--cpu N]

Builds realistic events with the traffic generator (seeded), sprinkles PII into a fraction of
them (emails, phones, cards, IBANs, SSNs, IPs, bearer tokens, JWTs; in values, keys and
user_ids), gives each the ip and user agent the collector would set (unless --no-context),
and encodes them as EventBatch messages of 500. Then, pinned to one CPU, times:
  * validate: `Validator.validate_message` on every message (the baseline);
  * validate + redact: the same, then `Redactor.redact_event` on every clean event (the time
    spent in redact_event alone is also reported).
Off and on runs alternate; each figure is the median of --runs runs, in events per CPU-second
of this thread ("per core"). Pure CPU: no broker, no registry, no ClickHouse.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import schemas  # noqa: E402
from agents.codec import BatchWriter, writer_schema  # noqa: E402
from agents.pii import RedactionConfig, Redactor  # noqa: E402
from agents.records import SourceMeta  # noqa: E402
from agents.validate import Validator  # noqa: E402
from app.collector.normalize import to_event  # noqa: E402
from app.generate import EventGenerator  # noqa: E402

NOW_MS = 1_796_116_500_000
BATCH = 500

_WEBKIT = "AppleWebKit/537.36 (KHTML, like Gecko)"
_SAFARI = "AppleWebKit/605.1.15 (KHTML, like Gecko)"
USER_AGENTS = [
    f"Mozilla/5.0 (Windows NT 10.0; Win64; x64) {_WEBKIT} Chrome/120.0.0.0 Safari/537.36",
    (
        f"Mozilla/5.0 (Windows NT 10.0; Win64; x64) {_WEBKIT} Chrome/120.0.0.0 Safari/537.36 "
        "Edg/120.0.2210.91"
    ),
    f"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) {_SAFARI} Version/17.1 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
    (
        f"Mozilla/5.0 (iPhone; CPU iPhone OS 17_1_2 like Mac OS X) {_SAFARI} Version/17.1.2 "
        "Mobile/15E148 Safari/604.1"
    ),
    (
        f"Mozilla/5.0 (Linux; Android 14; SM-S918B) {_WEBKIT} Chrome/120.0.6099.144 Mobile "
        "Safari/537.36"
    ),
    (
        f"Mozilla/5.0 (iPad; CPU OS 17_1 like Mac OS X) {_SAFARI} Version/17.1 Mobile/15E148 "
        "Safari/604.1"
    ),
]

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkphbmUifQ."
    "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)


def sprinkle(rng: random.Random, ev: dict[str, Any], i: int) -> None:
    """Put one piece of PII somewhere a careless client would."""
    props = ev["properties"]
    choice = rng.randrange(10)
    if choice == 0:
        props["email"] = f"jane.doe{i}@example.com"
    elif choice == 1:
        props["note"] = f"please call me at +44 20 7946 {i % 10000:04d} after 5pm"
    elif choice == 2:
        props["card"] = "4111 1111 1111 1111"
    elif choice == 3:
        props["billing"] = "IBAN DE89 3704 0044 0532 0130 00, ref 2026-11"
    elif choice == 4:
        props["ssn"] = "123-45-6789"
    elif choice == 5:
        props["client_ip"] = f"203.0.113.{i % 256}"
    elif choice == 6:
        props["auth"] = f"Bearer sk{i}abcdefXYZ0123456789"
    elif choice == 7:
        props["redirect"] = f"https://app.example.com/callback?token={JWT}&state={i}"
    elif choice == 8:
        props[f"user{i}@example.org"] = "true"  # an email used as a key
    else:
        ev["user_id"] = f"Customer{i}@Example.com"  # an email used as the user id


def build(events: int, pii_rate: float, context: bool) -> list[bytes]:
    gen = EventGenerator(users=1000, seed=1).events(clock=lambda: NOW_MS / 1000)
    rng = random.Random(2)
    records = []
    for i in range(events):
        ev = next(gen)
        if rng.random() < pii_rate:
            sprinkle(rng, ev, i)
        user_n = int(ev["user_id"].rsplit("-", 1)[-1]) if ev["user_id"].startswith("user-") else i
        kwargs: dict[str, Any] = {}
        if context:
            kwargs = {
                "ip": f"198.51.{user_n % 200}.{user_n % 250 + 1}",
                "user_agent": USER_AGENTS[user_n % len(USER_AGENTS)],
            }
        records.append(to_event(ev, received_at_ms=NOW_MS, **kwargs))
    writer = BatchWriter(schemas.EVENT_BATCH, 1)
    return [writer.encode(records[i : i + BATCH]) for i in range(0, len(records), BATCH)]


def timed(fn: Callable[[], int]) -> tuple[float, int]:
    """(CPU seconds of this thread, events) for one call."""
    start = time.thread_time()
    n = fn()
    return time.thread_time() - start, n


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--pii-rate", type=float, default=0.05)
    ap.add_argument("--no-context", action="store_true", help="no ip / user_agent on events")
    ap.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: the last)")
    args = ap.parse_args()

    if hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        cpu = args.cpu if args.cpu is not None else cpus[-1]
        os.sched_setaffinity(0, {cpu})
        print(f"pinned to CPU {cpu}")

    messages = build(args.events, args.pii_rate, not args.no_context)
    schemas_by_id = {1: writer_schema(1, schemas.schema_str(schemas.EVENT_BATCH))}
    validator = Validator()
    redactor = Redactor(RedactionConfig(secret=b"bench-secret"))
    metas = [SourceMeta("events.raw", 0, i, NOW_MS) for i in range(len(messages))]

    def validate_only() -> int:
        n = 0
        for raw, meta in zip(messages, metas):
            n += len(validator.validate_message(raw, None, meta, schemas_by_id, NOW_MS).clean)
        return n

    totals: Counter[str] = Counter()
    redact_seconds = [0.0]

    def validate_and_redact() -> int:
        """The stage pair; the redaction part is also timed on its own, per message."""
        n = 0
        totals.clear()
        redact_seconds[0] = 0.0
        redact = redactor.redact_event
        clock = time.thread_time
        for raw, meta in zip(messages, metas):
            clean = validator.validate_message(raw, None, meta, schemas_by_id, NOW_MS).clean
            start = clock()
            for event in clean:
                _redacted, counts = redact(event)
                if counts:
                    totals.update(counts)
            redact_seconds[0] += clock() - start
            n += len(clean)
        return n

    off: list[float] = []
    on: list[float] = []
    redact_us: list[float] = []
    n = 0
    for _ in range(args.runs):
        seconds, n = timed(validate_only)
        off.append(n / seconds)
        seconds, n = timed(validate_and_redact)
        on.append(n / seconds)
        redact_us.append(redact_seconds[0] / n * 1e6)

    eps_off, eps_on = statistics.median(off), statistics.median(on)
    us_redact = statistics.median(redact_us)
    print(
        f"{n} events in {len(messages)} EventBatch messages of {BATCH}; "
        f"PII in ~{args.pii_rate:.0%} of events; context ip/user_agent: "
        f"{'no' if args.no_context else 'yes'}; median of {args.runs} runs"
    )
    print()
    print(f"{'stage':<26}{'events/s per core':>18}{'us/event':>10}{'ratio':>8}")
    print(f"{'validate (redaction off)':<26}{eps_off:>18,.0f}{1e6 / eps_off:>10.2f}{1.0:>8.3f}")
    print(f"{'validate + redact (on)':<26}{eps_on:>18,.0f}{1e6 / eps_on:>10.2f}{eps_on / eps_off:>8.3f}")
    print(f"{'  of which redact_event':<26}{1e6 / us_redact:>18,.0f}{us_redact:>10.2f}{'':>8}")
    print()
    print("redactions by detector (one run):")
    for kind, count in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:<8}{count:>8,}")


if __name__ == "__main__":
    main()
