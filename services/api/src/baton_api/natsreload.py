"""`DeviceAccounts` for nats-server's MQTT listener, whose users are fixed when it reads its
configuration: the api rewrites its users file and tells it to read it again (SIGHUP).

So it works only where the api runs on the broker's host, with its files: the local stack
(`make run`) on nats-server. The accounts file (`var/mqtt/accounts.json`) stays the one
record of every account; each issue, rotation or revocation writes it, then the users file
(baton_platform.mqtt_accounts), then signals the server by the pid it wrote.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import replace
from pathlib import Path

from baton_api.device_accounts import AccountsUnavailableError
from baton_contracts.accounts import AccountTopics
from baton_platform.mqtt_accounts import (
    NATS_PID_FILE,
    MqttAccount,
    StackAccounts,
    write_nats_users,
)

log = logging.getLogger(__name__)


class ReloadedAccounts:
    def __init__(self, accounts_file: Path, directory: Path) -> None:
        self._accounts_file = accounts_file
        self._directory = directory
        self._lock = asyncio.Lock()  # one change at a time: each reads the file the last wrote

    async def issue(self, username: str, topics: AccountTopics) -> str:
        account = MqttAccount.new(username, username, topics)
        async with self._lock:
            await asyncio.to_thread(self._change, username, account)
        log.info("issued MQTT credentials of %s (nats-server reloaded)", username)
        return account.password

    async def revoke(self, username: str) -> None:
        async with self._lock:
            await asyncio.to_thread(self._change, username, None)
        log.info("revoked the MQTT account of %s (nats-server reloaded)", username)

    async def topics(self, username: str) -> AccountTopics | None:
        try:
            accounts = await asyncio.to_thread(StackAccounts.load, self._accounts_file)
        except (OSError, ValueError, KeyError) as exc:
            raise AccountsUnavailableError(
                f"cannot read nats-server's MQTT users: {exc or type(exc).__name__}"
            ) from None
        found = (a.topics for a in accounts.devices if a.username == username)
        return next(found, None)

    def _change(self, username: str, account: MqttAccount | None) -> None:
        try:
            accounts = StackAccounts.load(self._accounts_file)
            others = tuple(a for a in accounts.devices if a.username != username)
            devices = others if account is None else (*others, account)
            if devices == accounts.devices:
                return  # a revocation of what is not there
            updated = replace(accounts, devices=devices)
            updated.save(self._accounts_file)
            write_nats_users(self._directory, updated)
            pid = int((self._directory / NATS_PID_FILE).read_text().strip())
            os.kill(pid, signal.SIGHUP)
        except (OSError, ValueError, KeyError) as exc:
            raise AccountsUnavailableError(
                f"cannot change nats-server's MQTT users: {exc or type(exc).__name__}"
            ) from None
