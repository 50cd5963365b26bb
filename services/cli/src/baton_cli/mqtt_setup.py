"""`baton mqtt-setup DIR`: the MQTT accounts of a deployment on Mosquitto (compose.yaml runs
it first), as the local stack has them (docs/security.md, "Device identity on MQTT").

Writes, each readable by its owner only:

- `DIR/accounts.json`: every account with its password, generated once and kept (a bridge
  named later is added);
- `DIR/dynamic-security.json`: Mosquitto's dynamic-security file with those accounts. The
  broker is started from a copy of it once; the plugin then keeps its own copy, with the
  device accounts the api issues, in the broker's data;
- `DIR/<name>.env`: what each Baton process needs, as BATON_* lines for `sh`'s `.`: one per
  bridge (`--bridge INSTANCE`: its account, bound to its client id
  `baton-device-bridge-<instance>`), `api.env` (the broker-admin account, so the api issues
  device credentials through the plugin) and, with `--simulator`, `simulator.env`;
- `DIR/bridge-slots.json`: the bridges' accounts in the order named, one per bridge slot
  (BATON_BRIDGE_SLOT_ACCOUNTS: whichever replica runs slot k connects with the k-th's
  account and client id, so the slot keeps its session; docs/operations.md, "Bridge
  replicas").
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer

from baton_contracts.accounts import (
    ADMIN_TOPICS,
    ADMIN_USERNAME,
    BRIDGE_TOPICS,
    SIMULATOR_TOPICS,
    SIMULATOR_USERNAME,
    AccountTopics,
    bridge_client_id,
)
from baton_platform.mqtt_accounts import MqttAccount, dynsec_config
from baton_platform.nats_access import write_private

ACCOUNTS_FILE = "accounts.json"
DYNSEC_FILE = "dynamic-security.json"
SLOTS_FILE = "bridge-slots.json"


def _load(path: Path) -> dict[str, MqttAccount]:
    if not path.exists():
        return {}
    accounts = {}
    for item in json.loads(path.read_text()):
        topics = AccountTopics(tuple(item["topics"]["publish"]), tuple(item["topics"]["subscribe"]))
        accounts[item["username"]] = MqttAccount(
            item["username"], item["password"], item["client_id"], topics
        )
    return accounts


def _env_file(path: Path, values: dict[str, str]) -> None:
    write_private(path, "".join(f"{key}={shlex.quote(value)}\n" for key, value in values.items()))


def write_mqtt_accounts(folder: Path, bridges: list[str], simulator: bool) -> list[Path]:
    """The accounts, the broker's file and the processes' env files under `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    kept = _load(folder / ACCOUNTS_FILE)
    wanted: list[tuple[str, str | None, AccountTopics]] = [(ADMIN_USERNAME, None, ADMIN_TOPICS)]
    # A bridge's account is bound to its client id: no other client can take its session.
    wanted += [(bridge_client_id(i), bridge_client_id(i), BRIDGE_TOPICS) for i in bridges]
    if simulator:
        wanted.append((SIMULATOR_USERNAME, None, SIMULATOR_TOPICS))
    accounts = {
        name: kept.get(name) or MqttAccount.new(name, client_id, topics)
        for name, client_id, topics in wanted
    }
    every = list({**kept, **accounts}.values())
    saved: list[dict[str, Any]] = [asdict(account) for account in every]
    write_private(folder / ACCOUNTS_FILE, json.dumps(saved, indent=1))
    write_private(folder / DYNSEC_FILE, json.dumps(dynsec_config(every)))
    slots = [accounts[bridge_client_id(instance)] for instance in bridges]
    write_private(
        folder / SLOTS_FILE,
        json.dumps(
            [
                {"username": a.username, "password": a.password, "client_id": a.client_id}
                for a in slots
            ]
        ),
    )
    admin = accounts[ADMIN_USERNAME]
    written = [folder / "api.env"]
    _env_file(
        written[0],
        {
            "BATON_MQTT_DEVICE_ACCOUNTS": "mosquitto-dynsec",
            "BATON_MQTT_ADMIN_USERNAME": admin.username,
            "BATON_MQTT_ADMIN_PASSWORD": admin.password,
        },
    )
    for instance in bridges:
        bridge = accounts[bridge_client_id(instance)]
        written.append(folder / f"{instance}.env")
        _env_file(
            written[-1],
            {
                "BATON_MQTT_USERNAME": bridge.username,
                "BATON_MQTT_PASSWORD": bridge.password,
                "BATON_MQTT_CLIENT_ID": bridge.client_id or "",
            },
        )
    if simulator:
        played = accounts[SIMULATOR_USERNAME]
        written.append(folder / "simulator.env")
        _env_file(
            written[-1],
            {"BATON_MQTT_USERNAME": played.username, "BATON_MQTT_PASSWORD": played.password},
        )
    return written


def mqtt_setup(
    folder: Annotated[Path, typer.Argument(help="Where to write the accounts and env files.")],
    bridge: Annotated[
        list[str] | None,
        typer.Option(help="A device-bridge, by its BATON_INSTANCE (repeatable)."),
    ] = None,
    simulator: Annotated[
        bool, typer.Option(help="An account for `baton simulate` (never where real devices are).")
    ] = False,
) -> None:
    """Generate the MQTT accounts of a deployment on Mosquitto (dynamic security)."""
    if not bridge:
        typer.echo("name at least one --bridge", err=True)
        raise typer.Exit(2)
    written = write_mqtt_accounts(folder, bridge, simulator)
    typer.echo(
        f"MQTT accounts in {folder / ACCOUNTS_FILE}; Mosquitto's {folder / DYNSEC_FILE}; "
        + ", ".join(path.name for path in written)
    )
