import pytest

from agents.validate import Rules
from app.settings import Settings, to_env


def test_nested_sections_come_from_rv_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RV_KAFKA__BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("RV_CLICKHOUSE__URL", "https://ch.example.com:8443")
    monkeypatch.setenv("RV_VALIDATION__MAX_PROPERTIES", "10")
    monkeypatch.setenv("RV_AGGREGATE__ROLLUPS", '[{"name": "x_1h", "granularity": "hour"}]')
    s = Settings()
    assert s.kafka.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert s.clickhouse.url == "https://ch.example.com:8443"
    assert s.validation.rules().max_properties == 10
    assert [r.name for r in s.aggregate.rollups] == ["x_1h"]


def test_to_env_rebuilds_the_same_settings_in_a_child(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Settings().model_copy(update={"project_id": "shop"})
    for key, value in to_env(original).items():
        monkeypatch.setenv(key, value)
    assert Settings() == original


def test_validation_defaults_are_the_validators_defaults() -> None:
    assert Settings().validation.rules() == Rules()


def test_a_bad_rollup_definition_is_refused_with_the_field_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RV_AGGREGATE__ROLLUPS", '[{"name": "Bad Name"}]')
    with pytest.raises(ValueError, match="name"):
        Settings()
