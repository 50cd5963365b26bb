"""The MQTT accounts a stored catalog change moved are taken back, whichever way the change
came (baton_api.moved_accounts): each catalog event as relayed, read against the catalog
just before it and just after it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from uuid import uuid4

import pytest
from nats.aio.msg import Msg

from baton_api.device_accounts import AccountsUnavailableError, InMemoryAccounts
from baton_api.moved import account_topics
from baton_api.moved_accounts import RETRY_S, MovedAccounts
from baton_contracts.accounts import AccountTopics, device_username
from baton_contracts.nats import CatalogChange, LifecycleEvent
from baton_domain.application import Executions
from baton_domain.catalog import Catalog
from baton_domain.catalog_document import CATALOG_ID
from baton_platform.commands import catalog_edit
from baton_platform.mapping import read_events

PROFILES = Path(__file__).resolve().parents[2] / "deploy" / "catalog" / "profiles.yaml"
FLEETS_MOVED = {"id": "fleets-thermo-1", "type": "fleets_thermostat", "hardware_id": "FLEETS-T2"}


@pytest.fixture
def executions() -> Iterator[Executions]:
    executions = Executions(
        Catalog.from_yaml(PROFILES), env={"PERSISTENCE_MODULE": "eventsourcing.popo"}
    )
    executions.seed_catalog()
    yield executions
    executions.close()


def issue(
    executions: Executions, accounts: InMemoryAccounts, device_id: str, password: str = "old"
) -> AccountTopics:
    """Give the device an account on its topics as stored now, as the api does."""
    topics = account_topics(executions.catalog, device_id)
    assert topics is not None
    accounts.accounts[device_username(device_id)] = (password, topics)
    return topics


@pytest.fixture
def accounts(executions: Executions) -> InMemoryAccounts:
    """Every device of the catalog with its account."""
    accounts = InMemoryAccounts()
    for device in executions.catalog.devices:
        issue(executions, accounts, device.id)
    return accounts


def change(executions: Executions, **fields: Any) -> LifecycleEvent:
    """Make the change as the dispatcher does (whoever sent it); its event as relayed."""
    executions.change_catalog(catalog_edit(CatalogChange.model_validate(fields)))
    event = read_events(executions, 0, 1000)[-1]
    assert event.execution_id == CATALOG_ID
    return event


def left(accounts: InMemoryAccounts) -> set[str]:
    return {u.removeprefix("device-") for u in accounts.accounts}


async def test_another_hardware_id_takes_back_that_devices_account_only(
    executions: Executions, accounts: InMemoryAccounts
) -> None:
    event = change(executions, op="put-device", device=FLEETS_MOVED)
    every = left(accounts)
    assert await MovedAccounts(executions, accounts).take_back(event) == ["fleets-thermo-1"]
    assert left(accounts) == every - {"fleets-thermo-1"}


async def test_a_type_whose_wire_settings_moved_takes_back_its_devices_accounts(
    executions: Executions, accounts: InMemoryAccounts
) -> None:
    definition = executions.catalog.device_types["iotee_device"].model_dump(mode="json")
    definition["wire"] = {**definition["wire"], "topic": "iotee/v2/{hardware_id}/rls"}
    event = change(executions, op="put-device-type", name="iotee_device", definition=definition)
    assert await MovedAccounts(executions, accounts).take_back(event) == ["iotee-1"]


async def test_an_import_takes_back_the_devices_it_drops_and_a_removal_its_device(
    executions: Executions, accounts: InMemoryAccounts
) -> None:
    moved = MovedAccounts(executions, accounts)
    document = executions.catalog_document("default")
    kept = [d for d in document["devices"] if d["id"] != "aws-thermo-1"]
    imported = change(executions, op="import", document={**document, "devices": kept})
    assert await moved.take_back(imported) == ["aws-thermo-1"]
    removed = change(executions, op="remove-device", device_id="iotee-1")
    assert await moved.take_back(removed) == ["iotee-1"]
    assert "aws-thermo-1" not in left(accounts) and "iotee-1" not in left(accounts)


async def test_a_change_that_moves_no_topics_takes_nothing_back(
    executions: Executions, accounts: InMemoryAccounts
) -> None:
    # Baton's own profile goes by the device id: another hardware id moves nothing.
    same = {"id": "baton-thermo-1", "type": "thermostat", "hardware_id": "SERIAL-9"}
    before = dict(accounts.accounts)
    moved = MovedAccounts(executions, accounts)
    assert await moved.take_back(change(executions, op="put-device", device=same)) == []
    added = {"id": "new-1", "type": "thermostat"}
    assert await moved.take_back(change(executions, op="create-device", device=added)) == []
    assert accounts.accounts == before


async def test_an_account_issued_on_the_new_topics_is_kept_and_a_second_delivery_is_harmless(
    executions: Executions, accounts: InMemoryAccounts
) -> None:
    # `POST .../credentials` right after the change, before its event came: not undone.
    event = change(executions, op="put-device", device=FLEETS_MOVED)
    new_topics = issue(executions, accounts, "fleets-thermo-1")
    reordered = AccountTopics(new_topics.publish[::-1], new_topics.subscribe[::-1])
    accounts.accounts["device-fleets-thermo-1"] = ("new-password", reordered)
    moved = MovedAccounts(executions, accounts)
    assert await moved.take_back(event) == []
    assert await moved.take_back(event) == []
    assert accounts.accounts["device-fleets-thermo-1"][0] == "new-password"


async def test_an_account_issued_between_two_moves_goes_with_the_second(
    executions: Executions, accounts: InMemoryAccounts
) -> None:
    first = change(executions, op="put-device", device=FLEETS_MOVED)
    issue(executions, accounts, "fleets-thermo-1", "between")
    again = {**FLEETS_MOVED, "hardware_id": "FLEETS-T3"}
    second = change(executions, op="put-device", device=again)
    moved = MovedAccounts(executions, accounts)
    # Read late, the first event already finds it on topics the device no longer has.
    assert await moved.take_back(first) == ["fleets-thermo-1"]
    assert await moved.take_back(second) == []
    assert "fleets-thermo-1" not in left(accounts)


async def test_another_tenants_change_takes_back_that_tenants_accounts(
    executions: Executions, accounts: InMemoryAccounts
) -> None:
    # `ops` changes any tenant's part over NATS.
    fleets = executions.catalog.device_types["fleets_thermostat"].model_dump(
        mode="json", exclude={"tenant"}
    )
    change(executions, op="put-device-type", tenant="acme", name="acme_fleets", definition=fleets)
    device = {"id": "acme-1", "type": "acme_fleets", "hardware_id": "ACME-1"}
    change(executions, op="create-device", tenant="acme", device=device)
    issue(executions, accounts, "acme-1")
    moved_device = {**device, "hardware_id": "ACME-2"}
    event = change(executions, op="put-device", tenant="acme", device=moved_device)
    assert await MovedAccounts(executions, accounts).take_back(event) == ["acme-1"]


async def test_the_catalogs_first_event_and_other_streams_events_take_nothing_back(
    executions: Executions, accounts: InMemoryAccounts
) -> None:
    started = read_events(executions, 0, 1)[0]
    assert started.type == "Started"
    moved = MovedAccounts(executions, accounts)
    assert await moved.take_back(started) == []
    another = started.model_copy(update={"execution_id": uuid4(), "version": 2})
    assert await moved.take_back(another) == []


@dataclass
class FakeMsg:
    data: bytes
    subject: str = "baton.v1.events.catalog"
    said: list[tuple[str, float | None]] = field(default_factory=list)

    async def ack(self) -> None:
        self.said.append(("ack", None))

    async def nak(self, delay: float | None = None) -> None:
        self.said.append(("nak", delay))


class Flaky(InMemoryAccounts):
    """A broker that cannot be asked until `up`."""

    up: bool = False

    async def topics(self, username: str) -> AccountTopics | None:
        if not self.up:
            raise AccountsUnavailableError("connection refused")
        return await super().topics(username)


async def test_a_broker_that_cannot_be_asked_gets_the_event_again_later(
    executions: Executions, accounts: InMemoryAccounts
) -> None:
    broker = Flaky(accounts=dict(accounts.accounts))
    moved = MovedAccounts(executions, broker)
    msg = FakeMsg(
        change(executions, op="put-device", device=FLEETS_MOVED).model_dump_json().encode()
    )
    await moved.handle(cast(Msg, msg))
    assert msg.said == [("nak", RETRY_S)]
    assert "fleets-thermo-1" in left(broker)
    broker.up = True
    await moved.handle(cast(Msg, msg))  # delivered again
    assert msg.said[-1] == ("ack", None)
    assert "fleets-thermo-1" not in left(broker)


async def test_an_unreadable_event_is_acknowledged_and_takes_nothing_back(
    executions: Executions, accounts: InMemoryAccounts
) -> None:
    before = dict(accounts.accounts)
    msg = FakeMsg(b"{not json")
    await MovedAccounts(executions, accounts).handle(cast(Msg, msg))
    assert msg.said == [("ack", None)]
    assert accounts.accounts == before
