"""Wire settings are checked when a type is saved (docs/wire-profiles.md).

A type whose settings its profile cannot use was stored as it was, and then stopped the
device-bridge taking any later catalog, every tenant's. A raw-mapped template could also
name a topic the broker keeps for itself: as a device's answer topic, Mosquitto's account
API (`$CONTROL/dynamic-security/v1`) would have been in the rights of the device's account.
The changes go through the dispatcher's real handlers over an in-memory event store.
"""

from __future__ import annotations

from typing import Any

import pytest

from baton_contracts import accounts
from baton_contracts.accounts import device_topics
from baton_contracts.nats import CatalogReply
from baton_contracts.profiles import ProfileSettingsError, codec_for
from baton_platform.commands import CommandHandlers
from tests.unit import catalog_changes
from tests.unit.catalog_changes import demo_handlers, raw_type


@pytest.fixture
def handlers() -> CommandHandlers:
    return demo_handlers()


def change(handlers: CommandHandlers, op: str, **fields: Any) -> CatalogReply:
    return catalog_changes.change(handlers, "acme", op, **fields)


def refused_field(reply: CatalogReply) -> str:
    problem = reply.problem
    assert problem is not None, "accepted"
    assert (problem.status, problem.code) == (422, "invalid-catalog"), problem
    assert problem.errors is not None
    return ",".join(e.field for e in problem.errors)


@pytest.mark.parametrize(
    "wire",
    [
        {"topic": "no/placeholder"},
        {"answer_topic": "$CONTROL/dynamic-security/{hardware_id}"},
        {"topic": "$SYS/{hardware_id}"},
        {"status_topic": "$share/g/{hardware_id}"},
        {"topic": "iotee/_baton_probe_/{hardware_id}"},
    ],
)
def test_a_type_its_profile_cannot_use_is_refused_at_save(
    handlers: CommandHandlers, wire: dict[str, str]
) -> None:
    for op in ("put-device-type", "create-device-type"):
        reply = change(handlers, op, name="lock", definition=raw_type(**wire))
        assert refused_field(reply) == "device_types.lock.wire"
    document = {"device_types": {"lock": raw_type(**wire)}, "devices": []}
    assert refused_field(change(handlers, "import", document=document)) == (
        "device_types.lock.wire"
    )
    assert "lock" not in handlers.executions.catalog_document("acme").get("device_types", {})


def test_a_command_its_profile_cannot_send_is_refused_at_save(
    handlers: CommandHandlers,
) -> None:
    definition = raw_type()
    definition["commands"] = {"lock": {}}  # raw-mapped sends a command's payload: none here
    reply = change(handlers, "put-device-type", name="lock", definition=definition)
    assert refused_field(reply) == "device_types.lock.wire"


def test_a_usable_type_is_stored(handlers: CommandHandlers) -> None:
    reply = change(handlers, "put-device-type", name="lock", definition=raw_type())
    assert reply.problem is None, reply.problem
    assert "lock" in handlers.executions.catalog_document("acme")["device_types"]


def test_a_device_account_never_gets_a_topic_the_broker_keeps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # However a profile came by one: the account's rights are the last line.
    codec = codec_for("raw-mapped")

    class Leaky:
        name = codec.name
        topic_id = codec.topic_id

        def device_topics(self, wire_id: str, type_wire: object) -> list[str]:
            return ["$CONTROL/dynamic-security/v1"]

        def device_filters(self, wire_id: str, type_wire: object) -> list[str]:
            return []

    monkeypatch.setattr(accounts, "codec_for", lambda profile: Leaky())
    with pytest.raises(ProfileSettingsError, match="broker's own topic"):
        device_topics("raw-mapped", "d1", None, {"topic": "a/{hardware_id}"})
    # The profiles' own `$` roots stay a device's.
    monkeypatch.undo()
    assert device_topics("aws-iot-commands", "d1", "hw", {}).publish[0].startswith("$aws/")


def test_the_import_dry_run_checks_wire_settings_too() -> None:
    from baton_cli.catalog import catalog_errors

    bad = {"device_types": {"lock": raw_type(topic="$SYS/{hardware_id}")}, "devices": []}
    [(field, reason)] = catalog_errors(bad)
    assert field == "device_types.lock.wire"
    assert "must not start with $" in reason
    assert catalog_errors({"device_types": {"lock": raw_type()}, "devices": []}) == []
