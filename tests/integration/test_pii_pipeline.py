"""Personal data never reaches ClickHouse, the clean topic or the logs (the real pipeline)."""

from __future__ import annotations

import random

import httpx
import pytest

from agents.sink import decode_block
from tests.integration.conftest import Pipeline, wait_for

pytestmark = pytest.mark.integration

PII = {
    "card": ["4111 1111 1111 1111", "5500-0000-0000-0004", "378282246310005"],
    "email": ["jane.doe@example.com", "Bob+news@mail.example.org"],
    "phone": ["+49 30 1234567", "(555) 123-4567"],
    "iban": ["DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432"],
    "ssn": ["123-45-6789"],
    "bearer": ["Bearer abcdef0123456789abcdef0123456789"],
    "jwt": ["eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"],
}


def test_pii_in_properties_keys_and_user_agents_is_redacted_everywhere(pipeline: Pipeline) -> None:
    rng = random.Random(5)
    planted = [v for values in PII.values() for v in values]
    events = []
    for i in range(400):
        secret = rng.choice(planted)
        where = rng.choice(["value", "key", "text"])
        props = {"country": "DE", "note": f"order {i} for {secret} thanks" if where == "text" else "ok"}
        if where == "value":
            props["contact"] = secret
        elif where == "key":
            props[secret] = "1"
        events.append({"event": "signup", "user_id": f"u{i}", "properties": props})
    pipeline.start_worker()
    api = pipeline.start_api()
    for start in range(0, len(events), 100):
        resp = httpx.post(f"{api}/v1/batch", json={"events": events[start:start + 100]},
                          headers={"User-Agent": "agent jane.doe@example.com"})
        assert resp.status_code == 202
    wait_for(lambda: pipeline.stored() == 400, 60, "the 400 events")

    stored = "\n".join(
        f"{props}|{ua}|{ip}" for props, ua, ip in
        pipeline.ch.query("SELECT toString(properties), user_agent, ip FROM events").result_rows
    )
    clean = pipeline.consume_all(pipeline.settings.kafka.topics.clean, expected=1)
    clean_text = "\n".join(str(decode_block(m.value()).to_pylist()) for m in clean)
    logs = "\n".join(p.read_text(errors="replace") for p in pipeline.tmp.glob("*.log"))
    for secret in planted:
        for name, text in (("ClickHouse", stored), ("events.clean", clean_text), ("logs", logs)):
            assert secret not in text, f"{secret!r} reached {name}"
    assert "[card]" in stored and "email:hm_" in stored  # masked and hashed, not dropped
    assert "127.0.0.0" in stored  # the context ip truncated to its /24
    metrics = httpx.get(f"{pipeline.urls['worker']}/metrics").text
    counted = {line.split("}")[0].split('"')[1]: float(line.rsplit(" ", 1)[1])
               for line in metrics.splitlines() if line.startswith("rearview_redactions_total{")}
    assert counted["card"] >= 1 and counted["email"] >= 1
    assert set(counted) >= {"card", "email", "phone", "iban", "ssn", "ip", "bearer", "jwt"}
