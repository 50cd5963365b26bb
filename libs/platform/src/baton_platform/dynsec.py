"""Mosquitto's dynamic-security plugin, as data: its accounts (clients), their roles and its
configuration file (https://mosquitto.org/documentation/dynamic-security/).

`make run` and the tests write the file a broker starts with (baton_platform.mqtt_accounts); the
api sends the same client and role documents to the plugin's control topic when it issues a
device's credentials (baton_api.dynsec). Pure: no I/O.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from typing import Any

from baton_contracts.accounts import AccountTopics

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
# What Mosquitto 2.0's plugin itself writes (`mosquitto_ctrl dynsec init`): PBKDF2-SHA512.
HASH_ITERATIONS = 101
SALT_BYTES = 12


def new_password() -> str:
    return secrets.token_urlsafe(24)


def hashed(password: str) -> dict[str, Any]:
    """The stored form of `password`, as the plugin reads it from its file."""
    salt = secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, HASH_ITERATIONS)
    return {
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": HASH_ITERATIONS,
    }


def acls(topics: AccountTopics) -> list[dict[str, Any]]:
    """The role's rules: publish on `topics.publish`, subscribe to `topics.subscribe` and
    receive what those subscriptions bring (said explicitly: the plugin sends its control
    answers only to a client allowed to receive them by a rule, whatever the default)."""

    def rules(acltype: str, found: tuple[str, ...]) -> list[dict[str, Any]]:
        return [{"acltype": acltype, "topic": t, "allow": True} for t in found]

    return (
        rules("publishClientSend", topics.publish)
        + rules("subscribePattern", topics.subscribe)
        + rules("publishClientReceive", topics.subscribe)
    )


def topics_of(rules: list[dict[str, Any]]) -> AccountTopics:
    """What a role's rules (as `acls` made them, listed by the plugin) allow."""

    def allowed(acltype: str) -> tuple[str, ...]:
        return tuple(r["topic"] for r in rules if r.get("acltype") == acltype and r.get("allow"))

    return AccountTopics(
        publish=allowed("publishClientSend"), subscribe=allowed("subscribePattern")
    )


def role(rolename: str, topics: AccountTopics) -> dict[str, Any]:
    return {"rolename": rolename, "acls": acls(topics)}


def client(username: str, client_id: str | None, rolename: str) -> dict[str, Any]:
    """A client (account) with its one role; `client_id` None: it may use any client id."""
    found: dict[str, Any] = {"username": username, "roles": [{"rolename": rolename}]}
    if client_id is not None:
        found["clientid"] = client_id
    return found


def config(accounts: list[tuple[dict[str, Any], dict[str, Any], str]]) -> dict[str, Any]:
    """The plugin's file: each (client, role, password). Nothing is allowed by default but
    receiving what a permitted subscription brings; no anonymous group."""
    return {
        "clients": [{**c, **hashed(password)} for c, _, password in accounts],
        "roles": [r for _, r, _ in accounts],
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": True,
            "subscribe": False,
            "unsubscribe": True,
        },
    }
