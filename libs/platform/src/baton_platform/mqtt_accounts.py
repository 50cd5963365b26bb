"""The MQTT accounts of a local stack (docs/security.md, "Device identity on MQTT").

A stack's broker admits no anonymous client. Its accounts, each with a random password made
once per data directory and kept there (`mqtt/accounts.json`, mode 0600):

- `baton-admin`: Mosquitto dynamic security's control API only (the api issues device
  credentials with it);
- `baton-device-bridge`: bound to the bridge's client id; every device topic;
- `baton-simulator`: plays every device, so every device topic and any client id;
- on nats-server (whose accounts are fixed when it starts) also `device-{id}` for each device
  of the catalog, bound to its own topics.

Mosquitto reads them from its dynamic-security file, nats-server from its `authorization`
block (MQTT topic `a/+/b` is subject `a.*.b` there).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from baton_contracts.accounts import (
    ADMIN_TOPICS,
    ADMIN_USERNAME,
    BRIDGE_TOPICS,
    BRIDGE_USERNAME,
    SIMULATOR_TOPICS,
    SIMULATOR_USERNAME,
    AccountTopics,
    device_topics,
    device_username,
    secret_bridge_client_id,
)
from baton_platform import dynsec
from baton_platform.nats_access import write_private


@dataclass(frozen=True)
class MqttAccount:
    username: str
    password: str
    client_id: str | None  # None: any client id (the simulator's, one per device it plays)
    topics: AccountTopics

    @classmethod
    def new(cls, username: str, client_id: str | None, topics: AccountTopics) -> MqttAccount:
        return cls(username, dynsec.new_password(), client_id, topics)


@dataclass(frozen=True)
class StackAccounts:
    admin: MqttAccount
    bridge: MqttAccount
    simulator: MqttAccount
    devices: tuple[MqttAccount, ...] = ()
    # Bridge replicas 2, 3, ... (`bridge` is the first's): each its own client id, so its
    # own session (docs/operations.md, "Bridge replicas").
    bridges: tuple[MqttAccount, ...] = ()

    @property
    def every(self) -> list[MqttAccount]:
        return [self.admin, self.bridge, *self.bridges, self.simulator, *self.devices]

    def bridge_of(self, replica: int) -> MqttAccount:
        """The account of bridge replica `replica` (1, 2, ...)."""
        return self.bridge if replica == 1 else self.bridges[replica - 2]

    def with_bridges(self, replicas: int, instance: str) -> StackAccounts:
        """These accounts, and one for each bridge replica up to `replicas` that has none."""
        have = len(self.bridges) + 1
        more = [
            MqttAccount.new(
                f"{BRIDGE_USERNAME}-{n}", secret_bridge_client_id(f"{instance}-{n}"), BRIDGE_TOPICS
            )
            for n in range(have + 1, replicas + 1)
        ]
        return replace(self, bridges=(*self.bridges, *more)) if more else self

    def device(self, device_id: str) -> MqttAccount:
        wanted = device_username(device_id)
        return next(a for a in self.devices if a.username == wanted)

    def with_devices_of(self, catalog: Path) -> StackAccounts:
        """These accounts, and one for each device of `catalog` that has none yet."""
        have = {a.username for a in self.devices}
        more = [a for a in catalog_accounts(catalog) if a.username not in have]
        return replace(self, devices=(*self.devices, *more)) if more else self

    @classmethod
    def new(cls, instance: str, catalog: Path | None = None) -> StackAccounts:
        """Fresh passwords; with `catalog`, an account for each of its devices too."""
        return cls(
            MqttAccount.new(ADMIN_USERNAME, None, ADMIN_TOPICS),
            # A client id nobody can guess, as well as bound to the account where the broker
            # can bind it (Mosquitto): nats-server cannot, so there the secret is the guard.
            MqttAccount.new(BRIDGE_USERNAME, secret_bridge_client_id(instance), BRIDGE_TOPICS),
            MqttAccount.new(SIMULATOR_USERNAME, None, SIMULATOR_TOPICS),
            tuple(catalog_accounts(catalog)) if catalog is not None else (),
        )

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(asdict(self), out, indent=1)

    @classmethod
    def load(cls, path: Path) -> StackAccounts:
        raw = json.loads(path.read_text())

        def account(item: dict[str, Any]) -> MqttAccount:
            topics = AccountTopics(
                tuple(item["topics"]["publish"]), tuple(item["topics"]["subscribe"])
            )
            return MqttAccount(item["username"], item["password"], item["client_id"], topics)

        return cls(
            account(raw["admin"]),
            account(raw["bridge"]),
            account(raw["simulator"]),
            tuple(account(item) for item in raw["devices"]),
            tuple(account(item) for item in raw.get("bridges", [])),
        )


def catalog_accounts(catalog_path: Path) -> list[MqttAccount]:
    """An account for each device of the catalog, on its own topics in its type's profile."""
    from baton_domain.catalog import Catalog

    catalog = Catalog.from_yaml(catalog_path)
    accounts = []
    for device in catalog.devices:
        kind = catalog.device_types[device.type]
        topics = device_topics(kind.wire_profile, device.id, device.hardware_id, kind.wire)
        username = device_username(device.id)
        accounts.append(MqttAccount.new(username, username, topics))
    return accounts


# --- Mosquitto ------------------------------------------------------------------------------


def dynsec_config(accounts: list[MqttAccount]) -> dict[str, Any]:
    """The dynamic-security file: each account a client with a role of its own name."""
    return dynsec.config(
        [
            (
                dynsec.client(a.username, a.client_id, a.username),
                dynsec.role(a.username, a.topics),
                a.password,
            )
            for a in accounts
        ]
    )


# --- nats-server ----------------------------------------------------------------------------


def nats_subject(topic_filter: str) -> str:
    """The subject nats-server's MQTT listener gives an MQTT topic (or filter)."""
    levels = topic_filter.split("/")
    wildcards = {"+": "*", "#": ">"}
    return ".".join(wildcards.get(level, level.replace(".", "//")) for level in levels)


# nats-server reads its MQTT users from this file, next to its config, and writes its pid
# here, so the api can rewrite the one and signal the other (baton_api.natsreload).
NATS_USERS_FILE = "mqtt-users.conf"
NATS_PID_FILE = "nats.pid"


def write_nats_users(directory: Path, accounts: StackAccounts) -> None:
    """The users file of `accounts` (all but the broker admin, which nats-server needs not)."""
    admitted = [accounts.bridge, *accounts.bridges, accounts.simulator, *accounts.devices]
    write_private(directory / NATS_USERS_FILE, nats_authorization(admitted) + "\n")


def nats_authorization(accounts: list[MqttAccount]) -> str:
    """The `authorization` block: MQTT clients only, each on its own subjects. A QoS 1
    subscription is delivered through `$MQTT.sub.<id>`, which every account needs."""
    users = [
        {
            "user": a.username,
            "password": a.password,
            "allowed_connection_types": ["MQTT"],
            "permissions": {
                "publish": {"allow": [nats_subject(t) for t in a.topics.publish]},
                "subscribe": {
                    "allow": [*(nats_subject(t) for t in a.topics.subscribe), "$MQTT.sub.>"]
                },
            },
        }
        for a in accounts
    ]
    return "authorization: " + json.dumps({"users": users}, indent=1)
