"""NATS subjects and message models (docs/nats-contract.md). Versioned by the `v1` token."""

from __future__ import annotations

import re
import zlib
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    model_validator,
)

# --- subjects ------------------------------------------------------------------------------

SUBMIT_SUBJECT = "baton.v1.commands.submit"  # request/reply: submit a command
CANCEL_SUBJECT = "baton.v1.commands.cancel"  # request/reply: cancel an execution
RETRY_SUBJECT = "baton.v1.commands.retry"  # request/reply: a new execution from an ended one
DELETE_SUBJECT = "baton.v1.commands.delete"  # request/reply: remove from every view
PURGE_SUBJECT = "baton.v1.commands.purge"  # request/reply: delete many
CATALOG_CHANGE_SUBJECT = "baton.v1.catalog.change"  # request/reply: change the catalog
CATALOG_GET_SUBJECT = "baton.v1.catalog.get"  # request/reply: the catalog document
DEADLINE_SUBJECT = "baton.v1.internal.deadline"  # request/reply: timeout-scheduler -> dispatcher
# Core NATS, empty: a dispatcher stored events; the one running the outbox relay looks now
# rather than at its next poll (the relay runs in one dispatcher: docs/architecture.md).
STORED_SUBJECT = "baton.v1.internal.stored"
# Core NATS, the giver's holder name: a dispatcher gave partitions away; the others take them
# now rather than at their next renewal (a rolling restart's requests wait for that).
RELEASED_SUBJECT = "baton.v1.internal.released"
DISPATCHER_QUEUE = "baton-dispatcher"

# Partitions (docs/architecture.md, "Replicas"): a device's streams are written by the one
# dispatcher that holds its partition's lease. Requests about a device go to its partition's
# subject, answered only by that dispatcher; the subjects above are answered by any
# dispatcher, which passes the request on. Fixed: every service must agree on it, and the
# durable consumers of device reports are made per partition.
PARTITIONS = 16
PARTITIONS_PREFIX = "baton.v1.partitions"
PartitionVerb = Literal["submit", "cancel", "retry", "delete", "deadline"]

EVENTS_STREAM = "BATON_EVENTS"
EVENTS_PREFIX = "baton.v1.events"
EVENTS_WILDCARD = f"{EVENTS_PREFIX}.>"

REPORTS_STREAM = "BATON_REPORTS"
REPORTS_PREFIX = "baton.v1.reports"
REPORTS_WILDCARD = f"{REPORTS_PREFIX}.>"

REJECTIONS_SUBJECT = "baton.v1.rejections.reports"  # core NATS: dropped device reports
# core NATS: the api replica that projects, after each batch it committed to the views
VIEWS_ADVANCED_SUBJECT = "baton.v1.views.advanced"

# One message per device-bridge, its latest watermark (max_msgs_per_subject=1).
WATERMARKS_STREAM = "BATON_WATERMARKS"
WATERMARKS_PREFIX = "baton.v1.watermarks"
WATERMARKS_WILDCARD = f"{WATERMARKS_PREFIX}.*"

NOTIFICATION_ID_HEADER = "Baton-Notification-Id"


# The catalog's events (one stream, baton_domain.catalog_document), relayed like the others:
# the device-bridge reloads the catalog on each, the api takes back the MQTT accounts of
# the devices each one moved.
CATALOG_EVENTS = frozenset(
    {"Started", "Imported", "DeviceTypePut", "DeviceTypeRemoved", "DevicePut", "DeviceRemoved"}
)


def event_subject(execution_id: UUID | str, event_type: str) -> str:
    return f"{EVENTS_PREFIX}.{execution_id}.{event_type}"


def events_of_type(event_type: str) -> str:
    return f"{EVENTS_PREFIX}.*.{event_type}"


def partition_of(device_id: str) -> int:
    """A device's partition: a hash that is the same in every process and every release."""
    return zlib.crc32(device_id.encode()) % PARTITIONS


def partition_subject(partition: int, verb: PartitionVerb) -> str:
    return f"{PARTITIONS_PREFIX}.{partition}.{verb}"


def report_subject(device_id: str) -> str:
    return f"{REPORTS_PREFIX}.{partition_of(device_id)}.{device_id}"


def partition_reports(partition: int) -> str:
    """The reports of the devices of `partition`."""
    return f"{REPORTS_PREFIX}.{partition}.*"


# Reports as a release without partitions published them (one token after the prefix): still
# consumed, by the holder of partition 0, so a rolling upgrade loses none.
LEGACY_REPORTS = f"{REPORTS_PREFIX}.*"


def watermark_subject(bridge: str) -> str:
    """A bridge's subject: its instance name as one subject token (no `.`, `*`, `>`, spaces)."""
    token = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "_" for c in bridge)
    return f"{WATERMARKS_PREFIX}.{token or '_'}"


class WireModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- the execution as it travels between services -----------------------------------------


class ExecutionState(WireModel):
    id: UUID
    device_id: str
    name: str
    params: dict[str, Any]
    status: str
    created_at: datetime
    updated_at: datetime
    ttl: int
    deadline: datetime
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    requested_name: str | None = None  # the alias the request used, when not `name`
    requested_by: str | None = None  # who asked: an API key's principal, a NATS caller's
    ephemeral: bool = False
    retry_of: UUID | None = None
    retries: list[UUID] = Field(default_factory=list)
    # {"status": PENDING|SUCCEEDED|FAILED|CANCELED, "completed_at", "error": {title,
    # description}} when the command declares a verification rule (Traxes), else None.
    verification: dict[str, Any] | None = None


class FieldProblem(WireModel):
    field: str
    reason: str


class Problem(WireModel):
    """An error reply; the api turns it into an RFC 9457 document unchanged."""

    status: int
    title: str
    detail: str
    code: str
    errors: list[FieldProblem] = Field(default_factory=list)
    retry_after: float | None = None  # seconds; the api sends it as Retry-After
    # The execution the problem is about when the client may not know it yet (a submit
    # whose outcome is unknown): a GET of it settles what happened.
    execution_id: UUID | None = None


# The largest request any dispatcher subject takes. What it stores travels on as lifecycle
# events and replies that repeat the params; NATS refuses a message over its max_payload
# (1 MiB by default) for good, so an event that large would stop the outbox relay: half of it
# leaves room for the envelopes. The api's own body limit (docs/api.md) is below it.
MAX_COMMAND_BYTES = 512 * 1024

# --- submit / cancel -----------------------------------------------------------------------


# A tenant's id: a single NATS subject token (no dots, no wildcards) and a URL segment.
TENANT_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
DEFAULT_TENANT = "default"
Tenant = Annotated[str, StringConstraints(pattern=TENANT_PATTERN)]
# A client bound to one tenant submits here; the dispatcher takes the tenant from the
# subject (which the client's NATS permissions fix), never from the message.
TENANT_SUBMIT_SUBJECT = "baton.v1.tenants.{tenant}.commands.submit"

# At least one character that is not white space: an empty key is no key, and refused.
IDEMPOTENCY_KEY_PATTERN = r"\S"


class SubmitCommand(WireModel):
    tenant: Tenant = DEFAULT_TENANT  # whose objects it reads and changes
    device_id: str
    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    ttl: int | None = Field(default=None, ge=1, le=7 * 24 * 3600)
    idempotency_key: str | None = Field(
        default=None, min_length=1, max_length=255, pattern=IDEMPOTENCY_KEY_PATTERN
    )
    # Chosen by the requester so it can ask after a lost answer (the api always sends one).
    # With an idempotency_key the key decides the id: this must then equal it or be left out.
    # A repeat with the same id and body finds the same execution.
    execution_id: UUID | None = None
    # When the requester stops waiting for the reply: the dispatcher stores nothing for a
    # request it reaches later (answered `request-expired`), so a late write never lands
    # behind the back of a client that was told the outcome is unknown.
    answer_by: AwareDatetime | None = None
    principal: str = "anonymous"
    source: str = "nats"
    ephemeral: bool = False  # left out of lists unless asked for, purged after a retention
    ignore_cooldown: bool = False  # send even inside the command's cooldown (Traxes)


class ExecutionReply(WireModel):
    """Reply to submit and cancel: the execution, or a problem.

    `position` is the notification id of the last event this request stored (None when it
    stored nothing), so a reader of the views can wait until they include it.
    """

    execution: ExecutionState | None = None
    problem: Problem | None = None
    position: int | None = None
    created: bool = False


class CancelCommand(WireModel):
    tenant: Tenant = DEFAULT_TENANT  # whose objects it reads and changes
    execution_id: UUID
    reason: str = "canceled by request"
    principal: str = "anonymous"  # who asked: recorded on the event


class RetryCommand(WireModel):
    tenant: Tenant = DEFAULT_TENANT  # whose objects it reads and changes
    execution_id: UUID  # the ended execution to run again
    # The new execution's id and key, as a submit's `execution_id` and `idempotency_key`: a
    # repeat with either finds the retry it made instead of retrying once more.
    retry_id: UUID | None = None
    idempotency_key: str | None = Field(
        default=None, min_length=1, max_length=255, pattern=IDEMPOTENCY_KEY_PATTERN
    )
    answer_by: AwareDatetime | None = None  # as a submit's
    principal: str = "anonymous"
    source: str = "nats"


class DeleteCommand(WireModel):
    tenant: Tenant = DEFAULT_TENANT  # whose objects it reads and changes
    execution_id: UUID
    reason: str = "deleted by request"
    principal: str = "anonymous"


class PurgeCommand(WireModel):
    # None: every tenant's (the api's retention sweep); NATS permissions keep it the api's.
    tenant: Tenant | None = DEFAULT_TENANT
    execution_ids: list[UUID] = Field(max_length=10_000)
    reason: str = "purged"
    principal: str = "anonymous"


class PurgeReply(WireModel):
    deleted: int = 0
    position: int | None = None
    problem: Problem | None = None


class CatalogChange(WireModel):
    """One change of the catalog; only the fields of its `op` are used."""

    tenant: Tenant = DEFAULT_TENANT  # whose objects it reads and changes
    # create-*: add, a catalog-conflict problem if it exists; put-*: add or replace.
    op: Literal[
        "import",
        "create-device-type",
        "put-device-type",
        "remove-device-type",
        "create-device",
        "put-device",
        "remove-device",
    ]
    name: str | None = None  # device type (create/put/remove-device-type)
    definition: dict[str, Any] | None = None  # device type (create/put-device-type)
    device: dict[str, Any] | None = None  # create/put-device
    device_id: str | None = None  # remove-device
    document: dict[str, Any] | None = None  # import
    principal: str = "anonymous"  # who asked: recorded on the catalog's event


class CatalogQuery(WireModel):
    """Ask for the catalog document: `{}` the default tenant's part, `{"tenant": "t"}` t's,
    `{"tenant": null}` every tenant's, each entry naming its tenant (the device-bridge's)."""

    # NATS permissions keep this subject the trusted services' (api, device-bridge, ops):
    # no tenant's client reads its own part here, let alone another's.
    tenant: Tenant | None = DEFAULT_TENANT


class CatalogReply(WireModel):
    """The catalog document after the change (or as stored, for get), or a problem."""

    document: dict[str, Any] | None = None
    position: int | None = None
    problem: Problem | None = None


class DeadlineDue(WireModel):
    execution_id: UUID
    # execution: its TTL ran out; verification: its device state was not seen in time.
    kind: Literal["execution", "verification"] = "execution"


class DeadlineReply(WireModel):
    # reports-pending: a report of the execution's device is stored and not yet applied (it
    # may be the answer that beat the deadline); ask again shortly.
    outcome: Literal["applied", "ignored", "not-yet", "reports-pending", "unknown"]
    # With outcome `unknown`, why nothing was settled: invalid-message (not a DeadlineDue), or
    # internal-error (status 500: the dispatcher failed on it; the scheduler asks again).
    problem: Problem | None = None


# --- lifecycle events (JetStream BATON_EVENTS) ---------------------------------------------


class LifecycleEvent(WireModel):
    """A stored event as published by the outbox relay; `notification_id` orders them all."""

    notification_id: int
    execution_id: UUID
    version: int
    type: str
    occurred_at: datetime
    data: dict[str, Any]


# --- views (core NATS, api replica -> api replicas) ----------------------------------------


class ViewsAdvanced(WireModel):
    """The views now include every event up to `position`: a batch from `after` to
    `position`, committed by `projector` (a lease holder's name), which ended `ended`.

    Every api replica reads the views; one writes them (lease `projection`) and announces
    each batch so the others wake their waiters. Core NATS, at most once: a replica that
    sees `after` beyond the last position it was told of, or the views ahead of what it was
    told for a while, missed one and has every waiter read again."""

    projector: str
    after: int = Field(ge=0)
    position: int = Field(ge=0)
    ended: list[UUID] = Field(default_factory=list)


# --- device reports (JetStream BATON_REPORTS, device-bridge -> dispatcher) -----------------


# The broker took a report after this moment: the bridge's watermark when the report
# arrived (that round's probe came back through the same session before it, and a session's
# messages come in the order the broker took them). A deadline is held for a report that may
# have been taken before it (baton_dispatcher.backlog); the bridge's read time is no such
# bound, as a loaded machine can keep a message between broker and bridge for a while.
TakenAfter = Annotated[
    datetime | None,
    Field(
        description="the broker took the report after this time (the bridge's watermark "
        "when it arrived); null: not known, received_at stands in"
    ),
]


class DeviceReport(WireModel):
    kind: Literal["published", "answer"]
    report_id: str
    device_id: str
    execution_id: UUID
    status: Literal["STARTED", "IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED"] | None = None
    payload: dict[str, Any] = Field(default_factory=dict)
    received_at: datetime
    taken_after: TakenAfter = None

    @model_validator(mode="after")
    def _an_answer_says_what(self) -> DeviceReport:
        # An answer without a status is no answer: refused here, as malformed, rather than
        # failing in the dispatcher on every delivery while the reports behind it wait.
        if self.kind == "answer" and self.status is None:
            raise ValueError("an answer report needs a status")
        return self


class PresenceReport(WireModel):
    """The device connected or disconnected (device-bridge -> dispatcher, BATON_REPORTS)."""

    kind: Literal["presence"] = "presence"
    report_id: str
    device_id: str
    online: bool
    received_at: datetime
    taken_after: TakenAfter = None


class StateReport(WireModel):
    """The device reported its state (e.g. `{"charging": true}`): checked against the
    verification rules of its executions (device-bridge -> dispatcher, BATON_REPORTS)."""

    kind: Literal["state"] = "state"
    report_id: str
    device_id: str
    state: dict[str, Any]
    received_at: datetime
    taken_after: TakenAfter = None


AnyReport = Annotated[DeviceReport | PresenceReport | StateReport, Field(discriminator="kind")]
REPORT_ADAPTER: TypeAdapter[DeviceReport | PresenceReport | StateReport] = TypeAdapter(AnyReport)


class BridgeWatermark(WireModel):
    """A device-bridge's promise (device-bridge -> dispatcher, BATON_WATERMARKS, the latest
    per bridge): every MQTT message the broker took for the bridge's session before
    `drained_to` is stored in BATON_REPORTS (or was dropped as unreadable), and every request
    the bridge handed to the broker before it has its `published` report stored. Times are the
    bridge's clock, compared with deadlines of the dispatcher's (docs/architecture.md)."""

    bridge: str  # BATON_INSTANCE of the bridge
    drained_to: AwareDatetime


class ReportRejected(WireModel):
    report: DeviceReport | PresenceReport | StateReport
    reason: str


# --- dead letters (JetStream BATON_DEAD_LETTERS) ------------------------------------------

DEAD_LETTERS_STREAM = "BATON_DEAD_LETTERS"
DEAD_LETTERS_PREFIX = "baton.v1.dead-letters"
DEAD_LETTER_REASON_HEADER = "Baton-Dead-Letter-Reason"
DEAD_LETTER_SUBJECT_HEADER = "Baton-Original-Subject"


def dead_letter_subject(service: str) -> str:
    return f"{DEAD_LETTERS_PREFIX}.{service}"


# --- access (JetStream key-value bucket BATON_ACCESS) --------------------------------------

# API keys and tenants, kept where every api replica watches them: a key revoked by one
# replica stops working on all of them as soon as the deletion reaches their watchers.
ACCESS_BUCKET = "BATON_ACCESS"
KEY_ENTRY = "keys.{id}"
TENANT_ENTRY = "tenants.{id}"

# Leases (baton_platform.leases): which replica does a job one replica at a time.
LEASES_BUCKET = "BATON_LEASES"
RELAY_LEASE = "relay"  # the dispatcher that runs the outbox relay
PARTITION_LEASE = "partition.{partition}"  # the dispatcher that writes a partition's devices
DISPATCHER_MEMBER_LEASE = "dispatchers.{holder}"  # kept by each dispatcher while it lives
PROJECTION_LEASE = "projection"  # the api replica that writes the views
SCHEDULER_LEASE = "timeout-scheduler"  # the timeout-scheduler that keeps and fires deadlines
# Device-bridge replicas (docs/operations.md, "Bridge replicas"): slot k is run by whoever
# holds `bridge.<k>`; replica i keeps `bridge-replicas.<i>` while it lives, so the others
# give its slot back to it.
BRIDGE_SLOT_LEASE = "bridge.{slot}"
BRIDGE_MEMBER_LEASE = "bridge-replicas.{replica}"


def lease_pattern(key_format: str) -> str:
    """A lease key's format as a subject pattern: each `{...}` field one token (`*`)."""
    return re.sub(r"\{[^}]*\}", "*", key_format)


# Core NATS, the slot's number: a bridge replica gave a slot back; its own replica takes it
# now rather than at its next renewal.
BRIDGE_RELEASED_SUBJECT = "baton.v1.internal.bridge-released"

# Which execution each raw-mapped device of a bridge replica runs (one key per device),
# readable by whichever replica runs the device's slot (baton_device_bridge.in_flight).
BRIDGE_IN_FLIGHT_BUCKET = "BATON_BRIDGE_IN_FLIGHT"


# The roles a key may have (baton_domain.tenants.Role, by name), weakest first.
RoleName = Literal["viewer", "operator", "admin", "owner"]


class KeyRecord(WireModel):
    """A managed API key, as stored: never the key itself, only its SHA-256."""

    id: str
    digest: str  # hex SHA-256 of the whole key
    role: RoleName
    tenant: Tenant
    name: str
    created_at: AwareDatetime
    created_by: str


class TenantRecord(WireModel):
    id: Tenant
    name: str
    created_at: AwareDatetime
    created_by: str
