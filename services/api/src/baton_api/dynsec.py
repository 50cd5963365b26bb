"""`DeviceAccounts` through Mosquitto's dynamic-security plugin: its control topic
(`$CONTROL/dynamic-security/v1`), as the api's broker-admin account.

Issuing is one message of four commands, which the broker runs in order with nothing between
them: delete the client and its role (which also closes any connection made with the old
password; "not found" the first time), then create the role on the device's topics and the
client with its new password, bound to its client id. So a rotation revokes at once, and a
device whose wire profile changed gets its new topics.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from uuid import uuid4

import aiomqtt

from baton_api.device_accounts import AccountsUnavailableError
from baton_contracts.accounts import AccountTopics
from baton_contracts.mqtt import tls_context
from baton_platform import dynsec
from baton_platform.settings import Settings

log = logging.getLogger(__name__)

# A delete of what does not exist yet is fine: the first issue of a device's account; a read
# of it, the answer that there is none.
NOT_FOUND = ("Client not found", "Role not found")


class DynsecAccounts:
    def __init__(self, settings: Settings, timeout: float = 5.0) -> None:
        if settings.mqtt_admin_username is None or settings.mqtt_admin_password is None:
            raise ValueError(
                "mosquitto-dynsec needs BATON_MQTT_ADMIN_USERNAME and BATON_MQTT_ADMIN_PASSWORD"
            )
        self._settings = settings
        self._timeout = timeout

    async def issue(self, username: str, topics: AccountTopics) -> str:
        password = dynsec.new_password()
        commands = [
            {"command": "deleteClient", "username": username},
            {"command": "deleteRole", "rolename": username},
            {"command": "createRole", **dynsec.role(username, topics)},
            {
                "command": "createClient",
                **dynsec.client(username, username, username),
                "password": password,
            },
        ]
        await self._run(commands)
        log.info("issued MQTT credentials of %s", username)
        return password

    async def revoke(self, username: str) -> None:
        commands = [
            {"command": "deleteClient", "username": username},
            {"command": "deleteRole", "rolename": username},
        ]
        await self._run(commands)
        log.info("revoked the MQTT account of %s", username)

    async def topics(self, username: str) -> AccountTopics | None:
        commands = [
            {"command": "getClient", "username": username},
            {"command": "getRole", "rolename": username},
        ]
        client, role = await self._run(commands)
        if client.get("error"):
            return None
        if role.get("error"):
            return AccountTopics(publish=(), subscribe=())  # a client that may use nothing
        return dynsec.topics_of(role.get("data", {}).get("role", {}).get("acls", []))

    async def _run(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The broker's responses to `commands`; AccountsUnavailableError unless it ran
        each, or found nothing to delete or read."""
        responses = await self._call(commands)
        failed = [r for r in responses if r.get("error") and r["error"] not in NOT_FOUND]
        if failed or len(responses) != len(commands):
            raise AccountsUnavailableError(f"the broker refused: {failed or responses}")
        return responses

    async def _call(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send `commands` in one message, return the broker's responses to them."""
        s = self._settings
        admin_password = s.mqtt_admin_password.get_secret_value() if s.mqtt_admin_password else ""
        correlation = uuid4().hex
        tagged = [{**c, "correlationData": correlation} for c in commands]
        try:
            async with (
                asyncio.timeout(self._timeout),
                aiomqtt.Client(
                    s.mqtt_host,
                    s.mqtt_port,
                    # Its account may use any client id: each call its own, so two calls (or two
                    # api processes) never take each other's connection.
                    identifier=f"baton-api-accounts-{correlation}",
                    username=s.mqtt_admin_username,
                    password=admin_password,
                    tls_context=tls_context(s.mqtt_tls, s.mqtt_ca_file),
                    protocol=aiomqtt.ProtocolVersion.V5
                    if s.mqtt_protocol == "5"
                    else aiomqtt.ProtocolVersion.V311,
                ) as client,
            ):
                await client.subscribe(dynsec.RESPONSE_TOPIC, qos=1)
                await client.publish(dynsec.CONTROL_TOPIC, json.dumps({"commands": tagged}), qos=1)
                async for message in client.messages:
                    body = json.loads(bytes(message.payload))
                    responses: list[dict[str, Any]] = body.get("responses", [])
                    if responses and responses[0].get("correlationData") == correlation:
                        return responses
        except (aiomqtt.MqttError, TimeoutError, OSError) as exc:
            raise AccountsUnavailableError(
                f"cannot reach the MQTT broker's dynamic security: {exc or type(exc).__name__}"
            ) from None
        raise AccountsUnavailableError("the broker closed the connection before answering")
