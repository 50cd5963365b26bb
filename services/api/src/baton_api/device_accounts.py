"""Where devices' MQTT accounts are kept: the broker, behind `DeviceAccounts`.

Mosquitto's dynamic security (baton_api.dynsec) issues, rotates and revokes them at run
time; a broker whose accounts are fixed when it starts (nats-server) does none of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from baton_contracts.accounts import AccountTopics


class AccountsUnavailableError(Exception):
    """The broker could not be asked (not reachable, or it refused); the detail says why."""


class AccountsNotIssuedError(Exception):
    """This broker's accounts are fixed when it starts: none is issued at run time."""


class DeviceAccounts(Protocol):
    async def issue(self, username: str, topics: AccountTopics) -> str:
        """Create the account `username` (bound to that client id) on `topics`, or replace
        it, and return its new password; the old one stops working at once."""

    async def revoke(self, username: str) -> None:
        """Remove the account `username`, if there is one: its connection is closed and it
        is refused from then on."""

    async def topics(self, username: str) -> AccountTopics | None:
        """What the account `username` may use; None when there is no such account (or
        none issued at run time)."""


class FixedAccounts:
    """A broker whose accounts are fixed when it starts (nats-server's MQTT listener)."""

    async def issue(self, username: str, topics: AccountTopics) -> str:
        raise AccountsNotIssuedError(
            "this MQTT broker's accounts are fixed when it starts (nats-server): device "
            "credentials cannot be issued at run time; use Mosquitto (docs/security.md)"
        )

    async def revoke(self, username: str) -> None:
        return None  # none was issued at run time: nothing to take back

    async def topics(self, username: str) -> AccountTopics | None:
        return None


@dataclass
class InMemoryAccounts:
    """Accounts in a dict, for tests: what the broker would hold."""

    accounts: dict[str, tuple[str, AccountTopics]] = field(default_factory=dict)
    counter: int = 0

    async def issue(self, username: str, topics: AccountTopics) -> str:
        self.counter += 1
        password = f"password-{self.counter}"
        self.accounts[username] = (password, topics)
        return password

    async def revoke(self, username: str) -> None:
        self.accounts.pop(username, None)

    async def topics(self, username: str) -> AccountTopics | None:
        account = self.accounts.get(username)
        return None if account is None else account[1]
