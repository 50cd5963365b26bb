"""A device's MQTT topics are its tenant's alone (docs/security.md, "Tenants").

Raw-mapped topics are the type's templates, so a tenant can spell any topic with them:
another tenant's raw-mapped topics, or another profile's fixed ones. A change that would
give one tenant's device a topic (or a `+` filter sharing one) that another tenant's device
uses is refused, whichever of the two comes second; within one tenant it is the tenant's own.
The changes go through the dispatcher's real handlers over an in-memory event store.
"""

from __future__ import annotations

from typing import Any

import pytest

from baton_contracts.nats import CatalogReply
from baton_domain.topics import TopicIndex
from baton_platform.commands import CommandHandlers
from tests.unit.catalog_changes import IOTEE, change, demo_handlers, raw_type

# The demo catalog (tenant `default`) has the baton-profile device `demo-thermostat-1`.
VICTIM = "baton/v1/devices/demo-thermostat-1"


@pytest.fixture
def handlers() -> CommandHandlers:
    return demo_handlers()


def accepted(handlers: CommandHandlers, tenant: str, op: str, **fields: Any) -> None:
    reply = change(handlers, tenant, op, **fields)
    assert reply.problem is None, reply.problem


def taken(reply: CatalogReply, device_id: str, *whose: str) -> str:
    """The conflict's detail: it names the device and a topic it would use, never `whose`
    (the other tenant, its device)."""
    assert reply.problem is not None, "accepted"
    assert reply.problem.status == 409 and reply.problem.code == "catalog-conflict"
    detail = reply.problem.detail
    assert f"device {device_id!r} would use MQTT topic" in detail
    assert "which is taken" in detail
    assert not [name for name in whose if name in detail], detail
    return detail


def devices_of(handlers: CommandHandlers, tenant: str) -> list[str]:
    return [d["id"] for d in handlers.executions.catalog_document(tenant).get("devices", [])]


@pytest.mark.parametrize(
    ("template", "hardware_id", "topic"),
    [
        # Equal to its status topic, from another hardware id.
        (f"{VICTIM}/{{hardware_id}}", "status", f"{VICTIM}/status"),
        # Under its request filter (`+` = an execution id): the bridge's requests to it.
        (
            f"{VICTIM}/executions/{{hardware_id}}/request",
            "e-1",
            f"{VICTIM}/executions/e-1/request",
        ),
    ],
)
def test_a_raw_mapped_template_giving_another_tenants_baton_topic_is_refused(
    handlers: CommandHandlers, template: str, hardware_id: str, topic: str
) -> None:
    accepted(handlers, "acme", "create-device-type", name="spy", definition=raw_type(template))
    device = {"id": "acme-spy", "type": "spy", "hardware_id": hardware_id}

    detail = taken(change(handlers, "acme", "create-device", device=device), "acme-spy", "default")
    assert repr(topic) in detail
    assert devices_of(handlers, "acme") == []


def test_a_raw_mapped_answer_topic_giving_another_tenants_answers_is_refused(
    handlers: CommandHandlers,
) -> None:
    """The answer topic is a topic the bridge reads, and the device's account may publish on:
    one under another tenant's answers would answer for that tenant's device."""
    spy = raw_type(
        "acme/{hardware_id}/cmd", answer_topic=f"{VICTIM}/executions/{{hardware_id}}/response"
    )
    accepted(handlers, "acme", "create-device-type", name="spy", definition=spy)
    device = {"id": "acme-spy", "type": "spy", "hardware_id": "e-1"}
    taken(change(handlers, "acme", "put-device", device=device), "acme-spy", "default")


def test_a_device_whose_topic_another_tenants_template_already_gives_is_refused(
    handlers: CommandHandlers,
) -> None:
    """Whichever comes second is refused: here the baton-profile device."""
    template = "baton/v1/devices/demo-thermostat-9/{hardware_id}"
    accepted(handlers, "acme", "create-device-type", name="spy", definition=raw_type(template))
    spy = {"id": "acme-spy", "type": "spy", "hardware_id": "status"}
    accepted(handlers, "acme", "create-device", device=spy)

    device = {"id": "demo-thermostat-9", "type": "thermostat"}
    reply = change(handlers, "default", "create-device", device=device)
    taken(reply, "demo-thermostat-9", "acme", "acme-spy")
    assert "demo-thermostat-9" not in devices_of(handlers, "default")


@pytest.mark.parametrize(
    "wire",
    [
        {"topic": "iotee/{hardware_id}/plant-7/rls"},  # its request topic
        {"topic": "globex/{hardware_id}", "answer_topic": "iotee/{hardware_id}/plant-7/rls/ack"},
        {"topic": "globex/{hardware_id}", "status_topic": "iotee/{hardware_id}/plant-7/status"},
    ],
)
def test_two_raw_mapped_tenants_cannot_share_a_topic(
    handlers: CommandHandlers, wire: dict[str, str]
) -> None:
    lock = raw_type(
        IOTEE,
        answer_topic="iotee/dev/{hardware_id}/rls/ack",
        status_topic="iotee/dev/{hardware_id}/status",
    )
    accepted(handlers, "acme", "create-device-type", name="lock", definition=lock)
    own = {"id": "acme-1", "type": "lock", "hardware_id": "plant-7"}
    accepted(handlers, "acme", "create-device", device=own)
    relay = raw_type(**wire)  # gives acme-1's topic from the hardware id `dev`
    accepted(handlers, "globex", "create-device-type", name="relay", definition=relay)

    device = {"id": "globex-1", "type": "relay", "hardware_id": "dev"}
    reply = change(handlers, "globex", "create-device", device=device)
    taken(reply, "globex-1", "acme", "acme-1")
    document = {"device_types": {"relay": relay}, "devices": [device]}
    taken(change(handlers, "globex", "import", document=document), "globex-1", "acme", "acme-1")
    assert devices_of(handlers, "globex") == []


def test_changing_a_raw_mapped_type_checks_every_device_of_it(
    handlers: CommandHandlers,
) -> None:
    accepted(handlers, "acme", "create-device-type", name="lock", definition=raw_type(IOTEE))
    own = {"id": "acme-1", "type": "lock", "hardware_id": "plant-7"}
    accepted(handlers, "acme", "create-device", device=own)
    relay = raw_type("globex/{hardware_id}/rls")
    accepted(handlers, "globex", "create-device-type", name="relay", definition=relay)
    for n, hardware_id in enumerate(("r-1", "dev"), start=1):
        device = {"id": f"globex-{n}", "type": "relay", "hardware_id": hardware_id}
        accepted(handlers, "globex", "create-device", device=device)

    # `dev`, the second device's hardware id, would give acme-1's request topic.
    moved = raw_type("iotee/{hardware_id}/plant-7/rls")
    reply = change(handlers, "globex", "put-device-type", name="relay", definition=moved)
    assert "'iotee/dev/plant-7/rls'" in taken(reply, "globex-2", "acme", "acme-1")
    stored = handlers.executions.catalog_document("globex")["device_types"]["relay"]
    assert stored["wire"]["topic"] == "globex/{hardware_id}/rls"


def test_the_same_topics_within_one_tenant_are_its_own(handlers: CommandHandlers) -> None:
    accepted(handlers, "acme", "create-device-type", name="lock", definition=raw_type(IOTEE))
    own = {"id": "acme-1", "type": "lock", "hardware_id": "plant-7"}
    accepted(handlers, "acme", "create-device", device=own)
    twin = raw_type("iotee/{hardware_id}/plant-7/rls")
    accepted(handlers, "acme", "create-device-type", name="twin", definition=twin)
    second = {"id": "acme-2", "type": "twin", "hardware_id": "dev"}  # acme-1's request topic
    accepted(handlers, "acme", "create-device", device=second)

    # ... and so is a baton-profile device's topic spelled by a template of its own tenant.
    spy = raw_type(f"{VICTIM}/{{hardware_id}}")
    accepted(handlers, "default", "create-device-type", name="spy", definition=spy)
    device = {"id": "d-spy", "type": "spy", "hardware_id": "status"}
    accepted(handlers, "default", "create-device", device=device)


def test_different_topics_are_allowed(handlers: CommandHandlers) -> None:
    """One template in several tenants (iotee's own layout), other hardware ids: no clash."""
    for tenant, hardware_id in (("acme", "plant-7"), ("globex", "plant-8")):
        name = f"{tenant}-lock"
        accepted(handlers, tenant, "create-device-type", name=name, definition=raw_type(IOTEE))
        device = {"id": f"{tenant}-1", "type": name, "hardware_id": hardware_id}
        accepted(handlers, tenant, "create-device", device=device)
    # A raw-mapped topic in Baton's own layout, for a name no other tenant's device goes by.
    mine = raw_type("baton/v1/devices/{hardware_id}/executions/x/request")
    accepted(handlers, "acme", "create-device-type", name="mine", definition=mine)
    device = {"id": "acme-2", "type": "mine", "hardware_id": "hw-2"}
    accepted(handlers, "acme", "create-device", device=device)
    assert devices_of(handlers, "acme") == ["acme-1", "acme-2"]


@pytest.mark.parametrize(
    ("held", "asked", "shared"),
    [
        ("a/b/c", "a/b/c", True),
        ("a/+/c", "a/b/c", True),
        ("a/b/c", "a/+/c", True),
        ("a/+/c", "a/+/c", True),
        ("a/+/c", "a/b/d", False),
        ("a/b", "a/b/c", False),  # `+` is one level, never two
        ("a/+", "a/b/+/d", False),
        ("a//c", "a/+/c", True),  # an empty level is a level
    ],
)
def test_a_topic_is_shared_when_some_topic_matches_both(
    held: str, asked: str, shared: bool
) -> None:
    assert TopicIndex(["x/y", held]).shares(asked) is shared
    assert not TopicIndex().shares(asked)
