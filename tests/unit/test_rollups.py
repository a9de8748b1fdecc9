import json

import pytest
from pydantic import BaseModel, ValidationError

from tables.rollups import DEFAULT_ROLLUPS, RollupSpec, check_unique_names


def test_defaults_are_the_three_documented_rollups() -> None:
    by_name = {s.name: s for s in DEFAULT_ROLLUPS}
    assert list(by_name) == ["events_by_name_1m", "events_by_name_country_device_1m", "uniques_by_name_1h"]
    assert by_name["events_by_name_1m"].dimensions == ("event_name",)
    assert by_name["events_by_name_1m"].granularity_ms == 60_000
    assert by_name["events_by_name_1m"].uniques  # feeds "online now"
    assert by_name["events_by_name_country_device_1m"].dimensions == ("event_name", "country", "device_type")
    assert by_name["events_by_name_country_device_1m"].property_keys == ("country", "device_type")
    hourly = by_name["uniques_by_name_1h"]
    assert (hourly.granularity, hourly.granularity_ms, hourly.uniques, hourly.lg_k) == (
        "hour", 3_600_000, True, 12)
    check_unique_names(DEFAULT_ROLLUPS)


def test_a_spec_round_trips_through_json_and_a_settings_model() -> None:
    data = {"name": "purchases_by_plan_1h", "dimensions": ["event_name", "plan"], "granularity": "hour",
            "allowed_lateness_s": 3600, "uniques": True, "sums": ["price"], "lg_k": 14}
    spec = RollupSpec.from_dict(data)
    assert spec.dimensions == ("event_name", "plan") and spec.sums == ("price",)
    assert RollupSpec.model_validate_json(spec.model_dump_json()) == spec

    class Settings(BaseModel):
        rollups: list[RollupSpec] = list(DEFAULT_ROLLUPS)

    loaded = Settings.model_validate_json(json.dumps({"rollups": [data]}))
    assert loaded.rollups == [spec]
    assert Settings().rollups == list(DEFAULT_ROLLUPS)


def test_specs_are_frozen_and_hashable() -> None:
    spec = DEFAULT_ROLLUPS[0]
    with pytest.raises(ValidationError):
        spec.name = "other"  # type: ignore[misc]
    assert len({*DEFAULT_ROLLUPS, *DEFAULT_ROLLUPS}) == 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "Bad-Name"}, "must match ^[a-z][a-z0-9_]*$"),
        ({"name": "1m_counts"}, "must match"),
        ({"name": "x" * 65}, "at most 64 characters"),
        ({"dimensions": ["country"]}, "must start with 'event_name'"),
        ({"dimensions": []}, "must start with 'event_name'"),
        ({"dimensions": ["event_name", "event_name"]}, "only once"),
        ({"dimensions": ["event_name", "country", "country"]}, "'country' is listed twice"),
        ({"dimensions": ["event_name", "device type"]}, "dimension 'device type' is not a property key"),
        ({"dimensions": ["event_name", "1st"]}, "not a property key"),
        ({"sums": ["price", "price"]}, "sum 'price' is listed twice"),
        ({"sums": ["price;drop"]}, "sum 'price;drop' is not a property key"),
        ({"granularity": "second"}, "'minute' or 'hour'"),
        ({"allowed_lateness_s": -1}, "greater than or equal to 0"),
        ({"allowed_lateness_s": 8 * 86_400}, "less than or equal to 604800"),
        ({"uniques": True, "lg_k": 6}, "lg_k must be an integer from 7 to 21"),
        ({"uniques": True, "lg_k": 22}, "lg_k must be an integer from 7 to 21"),
        ({"lg_k": 14}, "lg_k is set but uniques is false"),
        ({"granularty": "hour"}, "granularty"),
    ],
)
def test_invalid_specs_fail_with_a_message_naming_the_problem(change: dict, message: str) -> None:
    data = {"name": "clicks_1m", "dimensions": ["event_name"], **change}
    with pytest.raises(ValidationError) as info:
        RollupSpec.from_dict(data)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_duplicate_rollup_names_are_refused() -> None:
    with pytest.raises(ValueError, match="two rollups are named 'events_by_name_1m'"):
        check_unique_names([DEFAULT_ROLLUPS[0], RollupSpec(name="events_by_name_1m", granularity="hour")])
