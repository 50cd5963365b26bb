"""A device's account may use its own topics in its wire profile, and only those."""

from __future__ import annotations

import pytest

from baton_contracts.accounts import device_topics, device_username
from baton_contracts.profiles import ProfileSettingsError

RAW = {
    "topic": "iotee/dev/{hardware_id}/rls",
    "answer_topic": "iotee/dev/{hardware_id}/rls/ack",
    "status_topic": "iotee/dev/{hardware_id}/status",
    "answers": {"done": "SUCCEEDED"},
}


@pytest.mark.parametrize(
    ("profile", "wire", "publish", "subscribe"),
    [
        (
            "baton",
            {},
            [
                "baton/v1/devices/d1/executions/+/response",
                "baton/v1/devices/d1/status",
                "baton/v1/devices/d1/state",
            ],
            ["baton/v1/devices/d1/executions/+/request", "baton/v1/devices/d1/executions/+/cancel"],
        ),
        (
            "emqx-fleets",
            {},
            ["$emqx/commands/things/d1/executions/+/response", "$emqx/commands/things/d1/status"],
            ["$emqx/commands/things/d1/executions/+/request"],
        ),
        (
            "aws-iot-commands",
            {},
            [
                "$aws/commands/things/d1/executions/+/response/json",
                "$aws/commands/things/d1/status",
            ],
            ["$aws/commands/things/d1/executions/+/request/json"],
        ),
        (
            "raw-mapped",
            RAW,
            ["iotee/dev/d1/rls/ack", "iotee/dev/d1/status"],
            ["iotee/dev/d1/rls"],
        ),
        ("raw-mapped", {"topic": "iotee/dev/{hardware_id}/rls"}, [], ["iotee/dev/d1/rls"]),
    ],
)
def test_a_device_account_has_its_own_topics_in_its_profile(
    profile: str, wire: dict[str, object], publish: list[str], subscribe: list[str]
) -> None:
    topics = device_topics(profile, "d1", None, wire)
    assert list(topics.publish) == publish
    assert list(topics.subscribe) == subscribe


def test_the_topics_name_the_id_the_device_goes_by_in_its_profile() -> None:
    # Baton's own profile has always used the catalog id; the others the hardware id.
    assert device_topics("baton", "d1", "hw1", {}).subscribe[0].startswith("baton/v1/devices/d1/")
    fleets = device_topics("emqx-fleets", "d1", "hw1", {})
    assert fleets.subscribe == ("$emqx/commands/things/hw1/executions/+/request",)


def test_settings_a_profile_cannot_use_are_refused() -> None:
    with pytest.raises(ProfileSettingsError):
        device_topics("raw-mapped", "d1", None, {})
    with pytest.raises(ProfileSettingsError):
        device_topics("carrier-pigeon", "d1", None, {})


def test_no_device_id_names_one_of_batons_own_accounts() -> None:
    assert device_username("baton-device-bridge") == "device-baton-device-bridge"
