"""`POST /v1/devices/{id}/credentials`: an admin issues (and rotates) a device's MQTT account,
on the device's own topics in its wire profile; bad input is a problem document."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from baton_api.app import create_app
from baton_api.auth import Identity
from baton_api.catalog import CatalogService
from baton_api.credentials import (
    AccountsUnavailableError,
    CredentialService,
    DeviceAccounts,
    FixedAccounts,
    InMemoryAccounts,
)
from baton_api.inmemory import InMemoryGateway
from baton_api.moved import moved_devices
from baton_api.problems import ProblemError
from baton_contracts.accounts import AccountTopics
from baton_contracts.nats import CatalogChange, CatalogReply
from baton_domain.application import Executions
from baton_domain.catalog import Catalog
from baton_domain.tenants import Role
from baton_platform.settings import Settings
from tests.unit.test_api import ADMIN, ADMIN_KEY, AUTH, DEMO, KEY, assert_problem

PROFILES = Path(__file__).resolve().parents[2] / "deploy" / "catalog" / "profiles.yaml"


class Unreachable:
    async def issue(self, username: str, topics: AccountTopics) -> str:
        raise AccountsUnavailableError("connection refused")

    async def revoke(self, username: str) -> None:
        raise AccountsUnavailableError("connection refused")

    async def topics(self, username: str) -> AccountTopics | None:
        raise AccountsUnavailableError("connection refused")


def client_with(tmp_path: Path, accounts: DeviceAccounts, catalog: Path = DEMO) -> TestClient[Any]:
    executions = Executions(
        Catalog.from_yaml(catalog), env={"PERSISTENCE_MODULE": "eventsourcing.popo"}
    )
    settings = Settings(data_dir=tmp_path, api_keys=KEY, admin_api_keys=ADMIN_KEY)
    gateway = InMemoryGateway(executions)
    app = create_app(settings, gateway=gateway, executions=executions, accounts=accounts)
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def accounts() -> InMemoryAccounts:
    return InMemoryAccounts()


@pytest.fixture
def client(tmp_path: Path, accounts: InMemoryAccounts) -> Iterator[TestClient[Any]]:
    with client_with(tmp_path, accounts) as test_client:
        yield test_client


def test_an_admin_issues_a_device_its_account_on_its_own_topics(
    client: TestClient[Any], accounts: InMemoryAccounts
) -> None:
    response = client.post("/v1/devices/demo-thermostat-1/credentials", headers=ADMIN)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["username"] == "device-demo-thermostat-1"
    password, topics = accounts.accounts["device-demo-thermostat-1"]
    assert body["password"] == password
    assert set(body) == {"username", "password"}
    assert topics.subscribe == (
        "baton/v1/devices/demo-thermostat-1/executions/+/request",
        "baton/v1/devices/demo-thermostat-1/executions/+/cancel",
    )
    assert all(t.startswith("baton/v1/devices/demo-thermostat-1/") for t in topics.publish)


def test_asking_again_rotates_the_password(
    client: TestClient[Any], accounts: InMemoryAccounts
) -> None:
    first = client.post("/v1/devices/demo-thermostat-1/credentials", headers=ADMIN).json()
    second = client.post("/v1/devices/demo-thermostat-1/credentials", headers=ADMIN).json()
    assert first["username"] == second["username"]
    assert first["password"] != second["password"]
    assert accounts.accounts[second["username"]][0] == second["password"]


def test_each_profile_gets_its_own_topics(tmp_path: Path) -> None:
    accounts = InMemoryAccounts()
    catalog = Catalog.from_yaml(PROFILES)
    with client_with(tmp_path, accounts, PROFILES) as client:
        for device in catalog.devices:
            response = client.post(f"/v1/devices/{device.id}/credentials", headers=ADMIN)
            assert response.status_code == 201, response.text
    profiles = {catalog.device_types[d.type].wire_profile for d in catalog.devices}
    assert len(profiles) == 4  # every profile was asked for
    for device in catalog.devices:
        _, topics = accounts.accounts[f"device-{device.id}"]
        assert all(device.wire_id in t or device.id in t for t in topics.publish + topics.subscribe)


def test_only_an_admin_may(client: TestClient[Any], accounts: InMemoryAccounts) -> None:
    assert_problem(client.post("/v1/devices/demo-thermostat-1/credentials", headers=AUTH), 403)
    assert_problem(client.post("/v1/devices/demo-thermostat-1/credentials"), 401)
    assert accounts.accounts == {}


def test_an_unknown_device_is_a_404(client: TestClient[Any]) -> None:
    body = assert_problem(client.post("/v1/devices/nope/credentials", headers=ADMIN), 404)
    assert body["code"] == "unknown-device"


@pytest.mark.parametrize(
    ("accounts", "status", "code", "said"),
    [
        (FixedAccounts(), 501, "credentials-not-supported", "nats-server"),
        (Unreachable(), 503, "broker-unavailable", "connection refused"),
    ],
)
def test_a_broker_that_cannot_issue_says_why(
    tmp_path: Path, accounts: DeviceAccounts, status: int, code: str, said: str
) -> None:
    with client_with(tmp_path, accounts) as client:
        response = client.post("/v1/devices/demo-thermostat-1/credentials", headers=ADMIN)
    body = assert_problem(response, status)
    assert body["code"] == code
    assert said in body["detail"]


def test_removing_a_device_takes_its_account_back_first(
    client: TestClient[Any], accounts: InMemoryAccounts
) -> None:
    client.post("/v1/devices/demo-thermostat-1/credentials", headers=ADMIN)
    assert "device-demo-thermostat-1" in accounts.accounts
    assert client.delete("/v1/devices/demo-thermostat-1", headers=ADMIN).status_code == 204
    assert "device-demo-thermostat-1" not in accounts.accounts
    assert_problem(client.get("/v1/devices/demo-thermostat-1", headers=AUTH), 404)


def test_a_device_whose_account_cannot_be_taken_back_is_not_removed(tmp_path: Path) -> None:
    with client_with(tmp_path, Unreachable()) as client:
        refused = client.delete("/v1/devices/demo-thermostat-1", headers=ADMIN)
        assert assert_problem(refused, 503)["code"] == "broker-unavailable"
        assert client.get("/v1/devices/demo-thermostat-1", headers=AUTH).status_code == 200


@pytest.fixture
def issued(tmp_path: Path) -> Iterator[tuple[TestClient[Any], InMemoryAccounts]]:
    """The profiles' catalog, every device with its account."""
    accounts = InMemoryAccounts()
    with client_with(tmp_path, accounts, PROFILES) as client:
        for device in Catalog.from_yaml(PROFILES).devices:
            response = client.post(f"/v1/devices/{device.id}/credentials", headers=ADMIN)
            assert response.status_code == 201, response.text
        yield client, accounts


def test_a_change_of_a_devices_topics_takes_its_account_back_first(
    issued: tuple[TestClient[Any], InMemoryAccounts],
) -> None:
    # Left on FLEETS-T1's topics, the account could read the requests of whichever device
    # (another tenant's) goes by FLEETS-T1 next.
    client, accounts = issued
    moved = {"type": "fleets_thermostat", "hardware_id": "FLEETS-T2"}
    response = client.put("/v1/devices/fleets-thermo-1", headers=ADMIN, json=moved)
    assert response.status_code == 200, response.text
    assert "device-fleets-thermo-1" not in accounts.accounts
    # Its topics unchanged (Baton's own profile goes by the device id): the account stays.
    same = {"type": "thermostat", "hardware_id": "SERIAL-9"}
    assert client.put("/v1/devices/baton-thermo-1", headers=ADMIN, json=same).status_code == 200
    assert "device-baton-thermo-1" in accounts.accounts


def test_a_type_change_takes_back_the_accounts_of_its_devices_whose_topics_moved(
    issued: tuple[TestClient[Any], InMemoryAccounts],
) -> None:
    client, accounts = issued
    definition = client.get("/v1/device-types/iotee_device", headers=AUTH).json()
    definition = {k: v for k, v in definition.items() if k not in ("name", "tenant")}
    definition["wire"] = {**definition["wire"], "topic": "iotee/v2/{hardware_id}/rls"}
    response = client.put("/v1/device-types/iotee_device", headers=ADMIN, json=definition)
    assert response.status_code == 200, response.text
    assert "device-iotee-1" not in accounts.accounts
    assert "device-fleets-thermo-1" in accounts.accounts  # another type's


def test_an_import_takes_back_the_accounts_of_devices_it_drops_or_moves(
    issued: tuple[TestClient[Any], InMemoryAccounts],
) -> None:
    client, accounts = issued
    document = client.get("/v1/catalog", headers=AUTH).json()
    kept = ("baton-thermo-1", "fleets-thermo-1", "iotee-1")
    devices = [d for d in document["devices"] if d["id"] in kept]
    for device in devices:
        if device["id"] == "fleets-thermo-1":
            device["hardware_id"] = "FLEETS-T9"
    response = client.put("/v1/catalog", headers=ADMIN, json={**document, "devices": devices})
    assert response.status_code == 200, response.text
    left = {u for u in accounts.accounts if u.startswith("device-")}
    assert left == {"device-baton-thermo-1", "device-iotee-1"}


def test_a_change_whose_accounts_cannot_be_taken_back_is_not_made(tmp_path: Path) -> None:
    with client_with(tmp_path, Unreachable(), PROFILES) as client:
        moved = {"type": "fleets_thermostat", "hardware_id": "FLEETS-T2"}
        refused = client.put("/v1/devices/fleets-thermo-1", headers=ADMIN, json=moved)
        assert assert_problem(refused, 503)["code"] == "broker-unavailable"
        stored = client.get("/v1/devices/fleets-thermo-1", headers=AUTH).json()
        assert stored["hardware_id"] == "FLEETS-T1"


def test_a_change_the_dispatcher_refuses_takes_no_account_back(
    issued: tuple[TestClient[Any], InMemoryAccounts],
) -> None:
    # Bad input changes nothing: its accounts included.
    client, accounts = issued
    before = dict(accounts.accounts)
    unknown_type = {"type": "no_such_type", "hardware_id": "FLEETS-T2"}
    refused = client.put("/v1/devices/fleets-thermo-1", headers=ADMIN, json=unknown_type)
    assert refused.status_code == 422, refused.text
    document = client.get("/v1/catalog", headers=AUTH).json()
    for device in document["devices"]:
        if device["id"] == "fleets-thermo-1":
            device.update(unknown_type)
    refused = client.put("/v1/catalog", headers=ADMIN, json=document)
    assert refused.status_code == 422, refused.text
    assert accounts.accounts == before


class Slow(InMemoryGateway):
    """A dispatcher that stores a catalog change only once `go` is set."""

    def __init__(self, executions: Executions) -> None:
        super().__init__(executions)
        self.asked = asyncio.Event()
        self.go = asyncio.Event()

    async def change_catalog(self, change: CatalogChange) -> CatalogReply:
        self.asked.set()
        await self.go.wait()
        return await super().change_catalog(change)


@pytest.mark.parametrize("issued_when", ["before it is stored", "as it is stored"])
async def test_credentials_issued_while_a_change_moves_the_device_do_not_survive_it(
    issued_when: str,
) -> None:
    # Made on the old topics while the change was on its way, the account would outlive it.
    executions = Executions(
        Catalog.from_yaml(PROFILES), env={"PERSISTENCE_MODULE": "eventsourcing.popo"}
    )
    executions.seed_catalog()
    gateway, accounts = Slow(executions), InMemoryAccounts()
    catalog = CatalogService(executions, gateway, accounts)
    credentials = CredentialService(catalog)
    admin = Identity(principal="key:test", tenant="default", role=Role.ADMIN)
    move = CatalogChange(
        op="put-device",
        device={"id": "fleets-thermo-1", "type": "fleets_thermostat", "hardware_id": "FLEETS-T2"},
    )
    changing = asyncio.create_task(catalog.change(move, admin))
    # The account taken back, the change not yet stored.
    await asyncio.wait_for(gateway.asked.wait(), 10)
    if issued_when == "before it is stored":
        await credentials.issue("fleets-thermo-1", "default")  # on FLEETS-T1's topics
        gateway.go.set()
        await changing
    else:
        real_issue = accounts.issue

        async def issue_then_store(username: str, topics: AccountTopics) -> str:
            password = await real_issue(username, topics)
            gateway.go.set()
            await changing  # stored before the issue looks again
            return password

        accounts.issue = issue_then_store  # type: ignore[method-assign]
        with pytest.raises(ProblemError) as refused:
            await credentials.issue("fleets-thermo-1", "default")
        assert refused.value.problem.code == "device-changed"
    assert "device-fleets-thermo-1" not in accounts.accounts


def test_a_device_of_a_type_stored_with_unusable_wire_settings_counts_as_moved() -> None:
    # Its account, issued before the catalog checked templates, may hold the broker's own
    # topics: no topics to compare, so any change that could move it takes it back.
    document = Catalog.from_yaml(PROFILES).model_dump(mode="json")
    document["device_types"]["iotee_device"]["wire"]["answer_topic"] = "$CONTROL/{hardware_id}"
    stored = Catalog.model_validate(document)
    assert moved_devices(stored, stored, "default") == ["iotee-1"]
    usable = Catalog.from_yaml(PROFILES)
    assert moved_devices(usable, usable, "default") == []
