"""A device's MQTT credentials: `POST /v1/devices/{device_id}/credentials` (docs/security.md).

Issues the device an account on the MQTT broker that may publish and subscribe only on its
own topics in its wire profile (baton_contracts.accounts), and answers its username and a new
password, once: Baton keeps no copy. Asking again rotates: the old password stops working and
a device connected with it is disconnected. The broker does the work behind `DeviceAccounts`:
Mosquitto's dynamic security (baton_api.dynsec), or nothing where the broker's accounts are
fixed when it starts (nats-server): 501.
"""

from __future__ import annotations

from litestar import Controller, post
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import FromPath
from pydantic import BaseModel, Field

from baton_api.auth import Identity, admin
from baton_api.catalog import CatalogService
from baton_api.device_accounts import (
    AccountsNotIssuedError,
    AccountsUnavailableError,
    DeviceAccounts,
    FixedAccounts,
    InMemoryAccounts,
)
from baton_api.problems import ProblemError, problem
from baton_api.schemas import ProblemOut
from baton_contracts.accounts import AccountTopics, device_username

__all__ = [  # the broker's side lives in baton_api.device_accounts; named here for callers
    "AccountsNotIssuedError",
    "AccountsUnavailableError",
    "CredentialController",
    "CredentialService",
    "Credentials",
    "DeviceAccounts",
    "FixedAccounts",
    "InMemoryAccounts",
]
from baton_contracts.profiles import ProfileSettingsError
from baton_platform.commands import WIRE


class Credentials(BaseModel):
    username: str = Field(description="also the client id the device must connect with")
    password: str = Field(description="shown once; asking again replaces it")


class CredentialService:
    def __init__(self, catalog: CatalogService) -> None:
        self._catalog = catalog
        self._accounts = catalog.accounts  # the ones its changes and removals take back

    async def issue(self, device_id: str, tenant: str) -> Credentials:
        """404 unknown-device for a device `tenant` does not have (another's included)."""
        topics = await self._topics(device_id, tenant)
        username = device_username(device_id)
        try:
            password = await self._accounts.issue(username, topics)
        except AccountsNotIssuedError as exc:
            raise ProblemError(problem(501, "credentials-not-supported", str(exc))) from None
        except AccountsUnavailableError as exc:
            raise ProblemError(problem(503, "broker-unavailable", str(exc))) from None
        # A catalog change that moved the device's topics (or removed it) while the account
        # was made took its accounts back before it was stored, maybe before this one: an
        # account left on topics the device no longer has could serve whichever device takes
        # them next. So once more, from this side.
        try:
            still = await self._topics(device_id, tenant) == topics
        except ProblemError:
            still = False
        if not still:
            await self._catalog.revoke(device_id)
            raise ProblemError(
                problem(
                    409,
                    "device-changed",
                    f"device {device_id!r} changed while its credentials were issued; "
                    "none were: ask again",
                )
            )
        return Credentials(username=username, password=password)

    async def _topics(self, device_id: str, tenant: str) -> AccountTopics:
        device = await self._catalog.device(device_id, tenant)
        device_type = (await self._catalog.catalog(tenant)).device_types[device.type]
        try:
            return WIRE.account(device, device_type)
        except ProfileSettingsError as exc:
            raise ProblemError(problem(409, "unusable-wire-settings", str(exc))) from None


class CredentialController(Controller):
    path = "/devices/{device_id:str}"
    tags = ["catalog"]

    @post(
        "/credentials",
        status_code=201,
        guards=[admin],
        responses={
            501: ResponseSpec(
                ProblemOut,
                description="the MQTT broker's accounts are fixed (nats-server): none issued",
                media_type="application/problem+json",
            )
        },
    )
    async def issue_credentials(
        self,
        caller: NamedDependency[Identity],
        credential_service: NamedDependency[CredentialService],
        device_id: FromPath[str],
    ) -> Credentials:
        """Admin: issue the device its MQTT account, or rotate its password (the old one stops
        working, a connection made with it is closed). The password is shown only here."""
        return await credential_service.issue(device_id, caller.tenant)
