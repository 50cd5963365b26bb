"""A device's account may use its own topics in its wire profile, and only those."""

from __future__ import annotations

import base64
import hashlib
import stat
from pathlib import Path

import pytest

from baton_contracts.accounts import device_topics, device_username
from baton_contracts.profiles import ProfileSettingsError
from baton_platform import dynsec
from baton_platform.mqtt_accounts import StackAccounts, dynsec_config, nats_subject
from tests.conftest import DEMO

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


def test_a_stacks_accounts_are_kept_private_and_read_back(tmp_path: Path) -> None:
    accounts = StackAccounts.new("blue", DEMO)
    path = tmp_path / "mqtt" / "accounts.json"
    accounts.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert StackAccounts.load(path) == accounts
    bridge_id = accounts.bridge.client_id or ""
    # The instance's name, then a secret nobody can guess (its only guard on nats-server).
    assert bridge_id.startswith("baton-device-bridge-blue-") and len(bridge_id) > 50
    assert StackAccounts.new("blue").bridge.client_id != bridge_id
    assert accounts.simulator.client_id is None
    assert accounts.device("demo-silent-1").client_id == "device-demo-silent-1"
    assert len({a.password for a in accounts.every}) == len(accounts.every)


def test_the_dynamic_security_file_binds_client_ids_and_denies_by_default() -> None:
    accounts = StackAccounts.new("blue")
    config = dynsec_config(accounts.every)
    clients = {c["username"]: c for c in config["clients"]}
    assert clients["baton-device-bridge"]["clientid"] == accounts.bridge.client_id
    assert "clientid" not in clients["baton-simulator"]
    assert config["defaultACLAccess"]["publishClientSend"] is False
    assert config["defaultACLAccess"]["subscribe"] is False
    admin = next(r for r in config["roles"] if r["rolename"] == "baton-admin")
    assert {acl["topic"] for acl in admin["acls"]} == {"$CONTROL/dynamic-security/#"}


def test_a_password_is_stored_as_mosquitto_hashes_it() -> None:
    # PBKDF2-SHA512, 101 iterations, as `mosquitto_ctrl dynsec init` writes it.
    stored = dynsec.hashed("s3cret")
    digest = hashlib.pbkdf2_hmac(
        "sha512", b"s3cret", base64.b64decode(stored["salt"]), stored["iterations"]
    )
    assert base64.b64decode(stored["password"]) == digest
    assert dynsec.hashed("s3cret")["salt"] != stored["salt"]


@pytest.mark.parametrize(
    ("topic", "subject"),
    [
        ("baton/v1/devices/+/executions/+/response", "baton.v1.devices.*.executions.*.response"),
        ("#", ">"),
        ("$emqx/#", "$emqx.>"),
        ("iotee/dev/a.b/rls", "iotee.dev.a//b.rls"),
    ],
)
def test_nats_server_permissions_name_mqtt_topics_as_subjects(topic: str, subject: str) -> None:
    assert nats_subject(topic) == subject


def test_devices_of_another_catalog_get_accounts_and_the_others_keep_theirs() -> None:
    accounts = StackAccounts.new("blue", DEMO)
    seeds = Path(__file__).resolve().parents[2] / "deploy" / "catalog" / "seeds.yaml"
    more = accounts.with_devices_of(seeds)
    assert more.devices[: len(accounts.devices)] == accounts.devices
    assert more.device("thermostat-001").username == "device-thermostat-001"
    assert more.with_devices_of(seeds) is more
