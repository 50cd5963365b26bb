"""Who may do what on NATS: Baton's users, their subject permissions, their credentials.

Each service connects as its own user (docs/security.md, "Service identity on NATS"); what
a user may publish and subscribe to is the list below, enforced by nats-server, which
refuses anything else (the client gets a permissions error; the server logs it). Users:

- `dispatcher`: the only one that answers the request subjects and publishes lifecycle
  events; owns the streams' configuration;
- `device-bridge`: the only one that publishes device reports and watermarks;
- `timeout-scheduler`: the only one that sends deadlines;
- `api`: the trusted front door: every request subject, the lifecycle events (to wake
  its projection), and the views' advances its replicas tell each other;
- `tenant-<tenant>`: a client bound to one tenant: it may only submit on its tenant's subject
  (the dispatcher takes the tenant from the subject, never from the message);
- `ops`: everything: operators and the test harness.

Each user receives replies and consumer deliveries on its own inbox prefix
(`_INBOX.<user>.`), so no one reads another's replies or the events pushed to a service.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from baton_contracts.nats import (
    ACCESS_BUCKET,
    BRIDGE_IN_FLIGHT_BUCKET,
    BRIDGE_MEMBER_LEASE,
    BRIDGE_RELEASED_SUBJECT,
    BRIDGE_SLOT_LEASE,
    CANCEL_SUBJECT,
    CATALOG_CHANGE_SUBJECT,
    CATALOG_GET_SUBJECT,
    DEAD_LETTERS_STREAM,
    DEADLINE_SUBJECT,
    DELETE_SUBJECT,
    DISPATCHER_MEMBER_LEASE,
    EVENTS_STREAM,
    EVENTS_WILDCARD,
    LEASES_BUCKET,
    PARTITION_LEASE,
    PARTITIONS,
    PARTITIONS_PREFIX,
    PROJECTION_LEASE,
    PURGE_SUBJECT,
    REJECTIONS_SUBJECT,
    RELAY_LEASE,
    RELEASED_SUBJECT,
    REPORTS_STREAM,
    REPORTS_WILDCARD,
    RETRY_SUBJECT,
    SCHEDULER_LEASE,
    STORED_SUBJECT,
    SUBMIT_SUBJECT,
    TENANT_PATTERN,
    TENANT_SUBMIT_SUBJECT,
    VIEWS_ADVANCED_SUBJECT,
    WATERMARKS_STREAM,
    WATERMARKS_WILDCARD,
    dead_letter_subject,
    lease_pattern,
)

DISPATCHER = "dispatcher"
DEVICE_BRIDGE = "device-bridge"
TIMEOUT_SCHEDULER = "timeout-scheduler"
API = "api"
OPS = "ops"
SERVICE_USERS = (DISPATCHER, DEVICE_BRIDGE, TIMEOUT_SCHEDULER, API)
TENANT_USER_PREFIX = "tenant-"
# The dispatcher answers every tenant's submits here and reads the tenant from the subject.
TENANT_SUBMIT_WILDCARD = TENANT_SUBMIT_SUBJECT.format(tenant="*")
# Durable consumers, by the service that owns each (their names are the services' own).
REPORTS_DURABLE = "baton-dispatcher-reports"  # legacy subjects; then one per partition


def reports_durable(partition: int) -> str:
    return f"{REPORTS_DURABLE}-{partition}"


BRIDGE_DURABLE = "baton-device-bridge"
# Device-bridge replicas each read the lifecycle events through a consumer of their own.
MAX_BRIDGE_REPLICAS = 16


def bridge_durable(share: tuple[int, int]) -> str:
    """The events consumer of bridge replica `index` of `replicas` (a lone bridge: its own)."""
    index, replicas = share
    return BRIDGE_DURABLE if replicas == 1 else f"{BRIDGE_DURABLE}-{index}"


SCHEDULER_DURABLE = "baton-timeout-scheduler"
# The api replicas' one consumer of the catalog's events (baton_api.moved_accounts).
CATALOG_DURABLE = "baton-api-catalog"
STREAMS = (EVENTS_STREAM, REPORTS_STREAM, WATERMARKS_STREAM, DEAD_LETTERS_STREAM)
REQUEST_SUBJECTS = (
    SUBMIT_SUBJECT,
    CANCEL_SUBJECT,
    RETRY_SUBJECT,
    DELETE_SUBJECT,
    PURGE_SUBJECT,
    CATALOG_CHANGE_SUBJECT,
    CATALOG_GET_SUBJECT,
)

JS_API = "$JS.API"


# The leases each service may take, renew and give up: its own jobs', no one else's (a
# service that could write another's lease could take that job from its holder).
DISPATCHER_LEASES = (
    RELAY_LEASE,
    lease_pattern(PARTITION_LEASE),
    lease_pattern(DISPATCHER_MEMBER_LEASE),
)
BRIDGE_LEASES = (lease_pattern(BRIDGE_SLOT_LEASE), lease_pattern(BRIDGE_MEMBER_LEASE))
SCHEDULER_LEASES = (SCHEDULER_LEASE,)
API_LEASES = (PROJECTION_LEASE,)


# Where every NATS client receives its replies: nats-py's default inbox, and each user's.
INBOX_ROOT = "_INBOX."


def inbox_prefix(user: str) -> str:
    """Where `user` receives replies and push consumer deliveries (nats-py's `inbox_prefix`)."""
    return f"{INBOX_ROOT}{user}"


def tenant_user(tenant: str) -> str:
    if not re.fullmatch(TENANT_PATTERN, tenant):
        raise ValueError(f"not a tenant id: {tenant!r} (expected {TENANT_PATTERN})")
    return f"{TENANT_USER_PREFIX}{tenant}"


def _streams_info(*streams: str) -> list[str]:
    return [f"{JS_API}.STREAM.INFO.{stream}" for stream in streams]


def _consumer(stream: str, durable: str) -> list[str]:
    """A durable push consumer's own API calls (`baton_platform.consumers`): look it up,
    create or update it (with or without a filter token), reset it, acknowledge."""
    return [
        f"{JS_API}.CONSUMER.INFO.{stream}.{durable}",
        f"{JS_API}.CONSUMER.CREATE.{stream}.{durable}",
        f"{JS_API}.CONSUMER.CREATE.{stream}.{durable}.>",
        f"{JS_API}.CONSUMER.DURABLE.CREATE.{stream}.{durable}",  # nats-py's, for a durable
        f"{JS_API}.CONSUMER.RESET.{stream}.{durable}",
        f"$JS.ACK.{stream}.{durable}.>",
    ]


def _watched_bucket(bucket: str) -> list[str]:
    """A key-value bucket read whole by a watch: the api's of keys and tenants
    (`baton_api.access`), the bridge's of raw-mapped devices in flight: create it (or
    change its replicas: BATON_NATS_REPLICAS), write and read entries, watch it (an ordered
    consumer, with flow control, deleted on stop)."""
    stream = f"KV_{bucket}"
    return [
        *_kv_bucket(bucket),
        f"{JS_API}.CONSUMER.CREATE.{stream}",
        f"{JS_API}.CONSUMER.CREATE.{stream}.>",
        f"{JS_API}.CONSUMER.INFO.{stream}.*",
        f"{JS_API}.CONSUMER.DELETE.{stream}.*",
        f"$JS.FC.{stream}.>",
    ]


# The key `ensure_bucket` writes to see a new bucket take writes (a write its stream
# refuses: nothing is stored under it).
BUCKET_PROBE_KEY = "_ready"


def _kv_bucket(bucket: str, keys: Iterable[str] = (">",)) -> list[str]:
    """A key-value bucket: create it (or change its replicas: BATON_NATS_REPLICAS,
    `baton_platform.nats.ensure_bucket`), write entries (`keys` only: subject patterns),
    read one back (which a compare-and-set `create` does when the key was deleted:
    `baton_platform.leases`)."""
    stream = f"KV_{bucket}"
    return [
        *(f"$KV.{bucket}.{key}" for key in (*keys, BUCKET_PROBE_KEY)),
        f"{JS_API}.STREAM.CREATE.{stream}",
        f"{JS_API}.STREAM.UPDATE.{stream}",
        f"{JS_API}.STREAM.INFO.{stream}",
        f"{JS_API}.STREAM.MSG.GET.{stream}",
        f"{JS_API}.DIRECT.GET.{stream}",
        f"{JS_API}.DIRECT.GET.{stream}.>",
    ]


def _permissions(
    user: str, publish: Iterable[str], subscribe: Iterable[str] = (), responds: bool = False
) -> dict[str, Any]:
    permissions: dict[str, Any] = {
        "publish": {"allow": sorted(set(publish))},
        "subscribe": {"allow": sorted({*subscribe, f"{inbox_prefix(user)}.>"})},
    }
    if responds:
        # Replies to the requests it received, once each, and nothing more.
        permissions["allow_responses"] = True
    return permissions


def service_permissions(user: str) -> dict[str, Any]:
    """The nats-server permissions of service user `user` (one of SERVICE_USERS)."""
    if user == DISPATCHER:
        return _permissions(
            user,
            publish=[
                EVENTS_WILDCARD,  # the outbox relay
                REJECTIONS_SUBJECT,
                dead_letter_subject(DISPATCHER),
                *(f"{JS_API}.STREAM.{verb}.{s}" for s in STREAMS for verb in ("CREATE", "UPDATE")),
                *_streams_info(*STREAMS),
                f"{JS_API}.STREAM.MSG.GET.{EVENTS_STREAM}",  # the relay's position
                f"{JS_API}.STREAM.MSG.GET.{REPORTS_STREAM}",  # reports a deadline waits for
                f"{JS_API}.DIRECT.GET.{WATERMARKS_STREAM}",  # the bridges' watermarks
                *_consumer(REPORTS_STREAM, REPORTS_DURABLE),
                *(
                    rule
                    for partition in range(PARTITIONS)
                    for rule in _consumer(REPORTS_STREAM, reports_durable(partition))
                ),
                f"{PARTITIONS_PREFIX}.*.*",  # passing a request on to its partition's holder
                STORED_SUBJECT,  # waking the relay in whichever dispatcher runs it
                RELEASED_SUBJECT,  # partitions given away: the others take them now
                *_kv_bucket(LEASES_BUCKET, DISPATCHER_LEASES),
            ],
            subscribe=[
                *REQUEST_SUBJECTS,
                DEADLINE_SUBJECT,
                f"{PARTITIONS_PREFIX}.*.*",
                STORED_SUBJECT,
                RELEASED_SUBJECT,
            ],
            responds=True,
        )
    if user == DEVICE_BRIDGE:
        return _permissions(
            user,
            publish=[
                REPORTS_WILDCARD,
                WATERMARKS_WILDCARD,
                CATALOG_GET_SUBJECT,
                dead_letter_subject(DEVICE_BRIDGE),
                *_streams_info(EVENTS_STREAM, REPORTS_STREAM, WATERMARKS_STREAM),
                f"{JS_API}.STREAM.MSG.GET.{WATERMARKS_STREAM}",  # its own last watermark
                *_consumer(EVENTS_STREAM, BRIDGE_DURABLE),
                *(
                    rule
                    for index in range(MAX_BRIDGE_REPLICAS)
                    for rule in _consumer(EVENTS_STREAM, bridge_durable((index, 2)))
                ),
                # A slot's consumer made anew past a process frozen on it (consumers.py).
                *(
                    f"{JS_API}.CONSUMER.DELETE.{EVENTS_STREAM}.{bridge_durable((index, 2))}"
                    for index in range(MAX_BRIDGE_REPLICAS)
                ),
                # Replicas: who runs which slot, and each raw-mapped device's execution.
                *_kv_bucket(LEASES_BUCKET, BRIDGE_LEASES),
                *_watched_bucket(BRIDGE_IN_FLIGHT_BUCKET),
                BRIDGE_RELEASED_SUBJECT,
            ],
            subscribe=[BRIDGE_RELEASED_SUBJECT],
        )
    if user == TIMEOUT_SCHEDULER:
        return _permissions(
            user,
            publish=[
                DEADLINE_SUBJECT,
                dead_letter_subject(TIMEOUT_SCHEDULER),
                *_streams_info(EVENTS_STREAM),
                *_consumer(EVENTS_STREAM, SCHEDULER_DURABLE),
                *_kv_bucket(LEASES_BUCKET, SCHEDULER_LEASES),
            ],
        )
    if user == API:
        # Tenant clients' submits come to the api, its edge for them as HTTP is for people:
        # the tenant's cap applies, then the api asks the dispatcher.
        return _permissions(
            user,
            publish=[
                *REQUEST_SUBJECTS,
                f"{PARTITIONS_PREFIX}.*.submit",  # straight to the device's dispatcher
                VIEWS_ADVANCED_SUBJECT,  # the replica that projects, to the others
                *_streams_info(EVENTS_STREAM),
                *_consumer(EVENTS_STREAM, CATALOG_DURABLE),  # accounts the catalog moved
                *_watched_bucket(ACCESS_BUCKET),
                *_kv_bucket(LEASES_BUCKET, API_LEASES),
            ],
            subscribe=[EVENTS_WILDCARD, TENANT_SUBMIT_WILDCARD, VIEWS_ADVANCED_SUBJECT],
            responds=True,
        )
    raise ValueError(f"no such service user: {user!r}")


def tenant_permissions(tenant: str) -> dict[str, Any]:
    """A client bound to `tenant`: submits on its tenant's subject, reads its replies."""
    return _permissions(tenant_user(tenant), publish=[TENANT_SUBMIT_SUBJECT.format(tenant=tenant)])


OPS_PERMISSIONS: dict[str, Any] = {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}


def permissions_of(user: str) -> dict[str, Any]:
    if user == OPS:
        return OPS_PERMISSIONS
    if user.startswith(TENANT_USER_PREFIX):
        return tenant_permissions(user.removeprefix(TENANT_USER_PREFIX))
    return service_permissions(user)


def authorization_block(passwords: dict[str, str]) -> str:
    """nats-server's `authorization` block for these users (JSON is valid nats.conf)."""
    users = [
        {"user": user, "password": password, "permissions": permissions_of(user)}
        for user, password in sorted(passwords.items())
    ]
    return f"authorization {json.dumps({'users': users}, indent=2)}"


# --- credentials ---------------------------------------------------------------------------


def new_password() -> str:
    return secrets.token_urlsafe(24)


def read_credentials(path: Path) -> dict[str, str]:
    """A credentials file: a JSON object, user -> password."""
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise ValueError(f"{path}: expected a JSON object of user -> password")
    return data


def write_private(path: Path, text: str) -> None:
    """A file with passwords in it: readable by its owner only from its first byte, replaced
    in one step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.partial")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    partial.replace(path)


def write_credentials(path: Path, passwords: dict[str, str]) -> None:
    write_private(path, json.dumps(passwords, indent=2, sort_keys=True) + "\n")


def ensure_credentials(path: Path, tenants: Iterable[str] = ()) -> dict[str, str]:
    """The users of a Baton NATS server: every service, `ops` and a client for each of
    `tenants`, with the passwords in `path`, generated for the users it lacks (and the
    file created). Existing passwords are kept: a tenant client configured once keeps
    working across restarts; rotating is deleting the file (or an entry) and restarting."""
    passwords = read_credentials(path) if path.exists() else {}
    wanted = [*SERVICE_USERS, OPS, *(tenant_user(t) for t in tenants)]
    missing = [user for user in wanted if user not in passwords]
    if missing or not path.exists():
        passwords |= {user: new_password() for user in missing}
        write_credentials(path, passwords)
    return passwords
