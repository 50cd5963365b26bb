"""The AsyncAPI 3.0 document of Baton's messaging, generated from this package.

Every NATS subject comes from the constants and subject functions of `nats.py`, every MQTT
topic from the codecs of `profiles/` (each encodes a sample message and the topic it chose is
turned back into a template), and every payload schema from the pydantic models
(`model_json_schema`). So the document cannot drift from the code: docs/asyncapi.json is a
copy that a test compares with `asyncapi_document()`, and `baton asyncapi` and the api's
`GET /schema/asyncapi.json` serve the same.

The document speaks for Baton as a whole: `receive` where Baton takes what others send (the
request subjects, device answers), `send` where it publishes (lifecycle events, requests to
devices). Subjects between Baton's own services are there too, marked `x-baton-internal`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from typing import Any, Literal, get_args
from uuid import UUID

from pydantic import BaseModel

from baton_contracts import mqtt, nats
from baton_contracts.profiles import CODECS, Codec, OutgoingCommand, WireMessage, WireSettings
from baton_contracts.profiles.aws_iot_commands import AwsRequest, AwsResponse
from baton_contracts.profiles.emqx_fleets import FleetsRequest, FleetsResponse
from baton_contracts.profiles.presence import StatusBody

ASYNCAPI_VERSION = "3.0.0"
SCHEMAS = "#/components/schemas/{model}"
JSON = "application/json"
TEXT = "text/plain"
NATS_BINDING = "0.1.0"
MQTT_BINDING = "0.2.0"

Action = Literal["send", "receive"]

# --- the sample every codec encodes: its values become the topics' parameters -------------

SAMPLE_EXECUTION = UUID("4b0c6a1e-5d1f-4e8f-9a55-0c2f0c7e1a10")
SAMPLE_NOW = datetime(2026, 11, 22, 15, 20, 1, tzinfo=UTC)
SAMPLE_DEADLINE = datetime(2026, 11, 22, 15, 20, 31, tzinfo=UTC)
# raw-mapped has no topics of its own: a device type's `wire` settings give them (iotee's).
RAW_MAPPED_SAMPLE: WireSettings = {
    "topic": "iotee/dev/{hardware_id}/rls",
    "answer_topic": "iotee/dev/{hardware_id}/rls/ack",
    "answers": {"ack": "STARTED", "done": "SUCCEEDED", "err": "FAILED"},
    "status_topic": "iotee/dev/{hardware_id}/status",
}
RAW_MAPPED_COMMAND: WireSettings = {"payload": "RLS_ON"}
TOPIC_PARAMETERS = {
    "device_id": "The device's id in the catalog.",
    "wire_id": "The id the device goes by on the wire: its `hardware_id`, else its catalog id.",
    "execution_id": "The execution's id, a UUID in its canonical lower-case form.",
}

# The payload models of each profile's messages, by what the message is. A new profile must
# be added here (a test checks every codec is).
PROFILE_MODELS: dict[str, dict[str, type[BaseModel] | None]] = {
    "baton": {
        "request": mqtt.CommandRequest,
        "cancel": mqtt.CancelRequest,
        "answer": mqtt.DeviceAnswer,
    },
    "emqx-fleets": {"request": FleetsRequest, "cancel": None, "answer": FleetsResponse},
    "aws-iot-commands": {"request": AwsRequest, "cancel": None, "answer": AwsResponse},
    # None: the payload is text, not JSON (the type's payload table).
    "raw-mapped": {"request": None, "cancel": None, "answer": None},
}


@dataclass
class Builder:
    """The document's parts, filled channel by channel."""

    channels: dict[str, Any] = field(default_factory=dict)
    operations: dict[str, Any] = field(default_factory=dict)
    messages: dict[str, Any] = field(default_factory=dict)
    schemas: dict[str, Any] = field(default_factory=dict)

    def model(self, model: type[BaseModel]) -> dict[str, str]:
        """`model`'s schema (and the models it uses) as components; a reference to it."""
        found = model.model_json_schema(ref_template=SCHEMAS)
        definitions: dict[str, Any] = found.pop("$defs", {})
        for name, schema in {**definitions, model.__name__: found}.items():
            schema = _asyncapi_schema(schema)
            if self.schemas.setdefault(name, schema) != schema:
                raise ValueError(f"two different models are named {name!r}")
        return {"$ref": SCHEMAS.format(model=model.__name__)}

    def message(
        self,
        name: str,
        payload: type[BaseModel] | dict[str, Any] | None,
        summary: str | None = None,
        content_type: str = JSON,
        headers: dict[str, Any] | None = None,
        example: Any = None,
    ) -> dict[str, str]:
        """A message in components (once); a reference to it."""
        if name not in self.messages:
            message: dict[str, Any] = {"name": name, "contentType": content_type}
            if isinstance(payload, type):
                doc = (payload.__doc__ or "").strip()
                summary = summary or (doc.splitlines()[0] if doc else None)
                message["payload"] = self.model(payload)
            elif payload is not None:
                message["payload"] = payload
            if summary:
                message["summary"] = summary
            if headers:
                message["headers"] = headers
            if example is not None:
                message["examples"] = [{"payload": example}]
            self.messages[name] = message
        return {"$ref": f"#/components/messages/{name}"}

    def channel(
        self,
        key: str,
        address: str | None,
        messages: dict[str, dict[str, str]],
        description: str,
        parameters: dict[str, Any] | None = None,
        **extensions: Any,
    ) -> None:
        channel: dict[str, Any] = {"address": address, "messages": messages}
        channel["description"] = description
        if parameters:
            channel["parameters"] = parameters
        channel.update({f"x-baton-{k.replace('_', '-')}": v for k, v in extensions.items()})
        self.channels[key] = channel

    def operation(
        self,
        key: str,
        action: Action,
        channel: str,
        bindings: dict[str, Any] | None = None,
        reply: tuple[str, list[str]] | None = None,
    ) -> None:
        messages = self.channels[channel]["messages"]
        operation: dict[str, Any] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{channel}"},
            "messages": [{"$ref": f"#/channels/{channel}/messages/{m}"} for m in messages],
        }
        if bindings:
            operation["bindings"] = bindings
        if reply is not None:
            reply_channel, names = reply
            operation["reply"] = {
                "channel": {"$ref": f"#/channels/{reply_channel}"},
                "messages": [{"$ref": f"#/channels/{reply_channel}/messages/{m}"} for m in names],
            }
        self.operations[key] = operation


def _asyncapi_schema(node: Any) -> Any:
    """A pydantic JSON Schema node as an AsyncAPI Schema Object: the same, but for
    `discriminator`, which AsyncAPI names by its property alone."""
    if isinstance(node, list):
        return [_asyncapi_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    result = {key: _asyncapi_schema(value) for key, value in node.items()}
    if isinstance(result.get("discriminator"), dict):
        result["discriminator"] = result["discriminator"]["propertyName"]
    return result


# --- NATS ----------------------------------------------------------------------------------

INBOX = "nats-inbox"
# Request/reply subjects any dispatcher answers (queue group `baton-dispatcher`).
DISPATCHER_REQUESTS: list[tuple[str, str, type[BaseModel], type[BaseModel], str]] = [
    (
        "nats-commands-submit",
        nats.SUBMIT_SUBJECT,
        nats.SubmitCommand,
        nats.ExecutionReply,
        "Submit a command. Passed on to the device's partition.",
    ),
    (
        "nats-commands-cancel",
        nats.CANCEL_SUBJECT,
        nats.CancelCommand,
        nats.ExecutionReply,
        "Cancel an execution.",
    ),
    (
        "nats-commands-retry",
        nats.RETRY_SUBJECT,
        nats.RetryCommand,
        nats.ExecutionReply,
        "A new execution from an ended one.",
    ),
    (
        "nats-commands-delete",
        nats.DELETE_SUBJECT,
        nats.DeleteCommand,
        nats.ExecutionReply,
        "Remove an execution from every view.",
    ),
    (
        "nats-commands-purge",
        nats.PURGE_SUBJECT,
        nats.PurgeCommand,
        nats.PurgeReply,
        "Delete many executions.",
    ),
    (
        "nats-catalog-change",
        nats.CATALOG_CHANGE_SUBJECT,
        nats.CatalogChange,
        nats.CatalogReply,
        "Change the catalog.",
    ),
    (
        "nats-catalog-get",
        nats.CATALOG_GET_SUBJECT,
        nats.CatalogQuery,
        nats.CatalogReply,
        "The catalog document.",
    ),
    (
        "nats-internal-deadline",
        nats.DEADLINE_SUBJECT,
        nats.DeadlineDue,
        nats.DeadlineReply,
        "A deadline is due (timeout-scheduler -> dispatcher).",
    ),
]
# A partition's subject takes the message of the generic subject of the same verb.
PARTITION_MODELS: dict[str, tuple[type[BaseModel], type[BaseModel]]] = {
    "submit": (nats.SubmitCommand, nats.ExecutionReply),
    "cancel": (nats.CancelCommand, nats.ExecutionReply),
    "retry": (nats.RetryCommand, nats.ExecutionReply),
    "delete": (nats.DeleteCommand, nats.ExecutionReply),
    "deadline": (nats.DeadlineDue, nats.DeadlineReply),
}


def _partition_parameter() -> dict[str, Any]:
    return {
        "description": f"A partition: crc32 of the device id mod {nats.PARTITIONS}.",
        "enum": [str(n) for n in range(nats.PARTITIONS)],
    }


def _queue(name: str) -> dict[str, Any]:
    return {"nats": {"queue": name, "bindingVersion": NATS_BINDING}}


def _request(
    b: Builder,
    key: str,
    address: str,
    request: type[BaseModel],
    reply: type[BaseModel],
    description: str,
    parameters: dict[str, Any] | None = None,
    queue: str | None = None,
    internal: bool = False,
) -> None:
    messages = {request.__name__: b.message(request.__name__, request)}
    extensions = {"internal": True} if internal else {}
    b.channel(key, address, messages, description, parameters, **extensions)
    b.channels[INBOX]["messages"][reply.__name__] = b.message(reply.__name__, reply)
    bindings = None if queue is None else _queue(queue)
    b.operation(key, "receive", key, bindings, reply=(INBOX, [reply.__name__]))


def _nats(b: Builder) -> None:
    b.channel(
        INBOX,
        None,
        {},
        "The requester's inbox: a reply goes to the reply subject of its request "
        "(`_INBOX.<id>`, or the requester's own inbox prefix).",
    )
    for key, address, request, reply, description in DISPATCHER_REQUESTS:
        internal = address == nats.DEADLINE_SUBJECT
        queue = nats.DISPATCHER_QUEUE
        _request(b, key, address, request, reply, description, None, queue, internal)
    _request(
        b,
        "nats-tenant-commands-submit",
        nats.TENANT_SUBMIT_SUBJECT,
        nats.SubmitCommand,
        nats.ExecutionReply,
        "Submit a command as a client bound to one tenant: the tenant is the subject's, the "
        "message's `tenant` and `principal` are ignored. Answered by the api.",
        {"tenant": {"description": f"The tenant's id (`{nats.TENANT_PATTERN}`)."}},
        "baton-api",
    )
    for verb in get_args(nats.PartitionVerb):
        request, reply = PARTITION_MODELS[verb]
        _request(
            b,
            f"nats-partitions-{verb}",
            nats.partition_subject("{partition}", verb),  # type: ignore[arg-type]
            request,
            reply,
            f"`{verb}` for the devices of one partition: answered only by the dispatcher "
            f"holding its lease. Same messages as the generic subject.",
            {"partition": _partition_parameter()},
            internal=True,
        )
    _events(b)
    _internal(b)
    _buckets(b)


def _events(b: Builder) -> None:
    key = "nats-events"
    headers = {
        "type": "object",
        "properties": {
            "Nats-Msg-Id": {"type": "string", "description": "= notification_id"},
            nats.NOTIFICATION_ID_HEADER: {"type": "string", "description": "= notification_id"},
        },
    }
    event = b.message(nats.LifecycleEvent.__name__, nats.LifecycleEvent, headers=headers)
    b.channel(
        key,
        nats.event_subject("{execution_id}", "{event_type}"),
        {nats.LifecycleEvent.__name__: event},
        "Every stored event, in store order (docs/nats-contract.md lists the types). "
        "At least once: de-duplicate on `notification_id`.",
        {
            "execution_id": {"description": "The id of the event's stream (an execution's)."},
            "event_type": {"description": "The event's type, e.g. `Dispatched`, `Succeeded`."},
        },
        jetstream_stream=nats.EVENTS_STREAM,
    )
    b.operation(key, "send", key)


def _internal(b: Builder) -> None:
    """What Baton's services tell each other."""
    reports = "nats-reports"
    kinds = (nats.DeviceReport, nats.PresenceReport, nats.StateReport)
    msg_id = {
        "type": "object",
        "properties": {"Nats-Msg-Id": {"type": "string", "description": "= report_id"}},
    }
    b.channel(
        reports,
        f"{nats.REPORTS_PREFIX}.{{partition}}.{{device_id}}",
        {m.__name__: b.message(m.__name__, m, headers=msg_id) for m in kinds},
        "What the device-bridge heard from a device, for the dispatcher that holds the "
        "device's partition; told apart by `kind`.",
        {
            "partition": _partition_parameter(),
            "device_id": {"description": "The device's catalog id."},
        },
        jetstream_stream=nats.REPORTS_STREAM,
        internal=True,
    )
    b.operation(reports, "send", reports)
    simple: list[tuple[str, str, dict[str, dict[str, str]], str, dict[str, Any] | None]] = [
        (
            "nats-watermarks",
            f"{nats.WATERMARKS_PREFIX}.{{bridge}}",
            {"BridgeWatermark": b.message("BridgeWatermark", nats.BridgeWatermark)},
            f"A device-bridge's latest watermark (stream `{nats.WATERMARKS_STREAM}`, one "
            "message per subject).",
            {"bridge": {"description": "The bridge's BATON_INSTANCE as one subject token."}},
        ),
        (
            "nats-rejections",
            nats.REJECTIONS_SUBJECT,
            {"ReportRejected": b.message("ReportRejected", nats.ReportRejected)},
            "A device report the dispatcher refused (core NATS).",
            None,
        ),
        (
            "nats-views-advanced",
            nats.VIEWS_ADVANCED_SUBJECT,
            {"ViewsAdvanced": b.message("ViewsAdvanced", nats.ViewsAdvanced)},
            "The api replica that projects, after each batch it committed (core NATS).",
            None,
        ),
        (
            "nats-internal-stored",
            nats.STORED_SUBJECT,
            {"Stored": b.message("Stored", None, "Empty: a dispatcher stored events.")},
            "A dispatcher stored events: the outbox relay looks now (core NATS).",
            None,
        ),
        (
            "nats-internal-released",
            nats.RELEASED_SUBJECT,
            {
                "Released": b.message(
                    "Released",
                    {"type": "string"},
                    "The giver's holder name: it gave partitions away.",
                    TEXT,
                )
            },
            "A dispatcher gave partitions away: the others take them now (core NATS).",
            None,
        ),
        (
            "nats-internal-bridge-released",
            nats.BRIDGE_RELEASED_SUBJECT,
            {
                "BridgeReleased": b.message(
                    "BridgeReleased",
                    {"type": "string", "pattern": "^[0-9]+$"},
                    "The slot's number: a bridge replica gave that slot back.",
                    TEXT,
                )
            },
            "A device-bridge replica gave a slot back: its own replica takes it now (core NATS).",
            None,
        ),
        (
            "nats-dead-letters",
            nats.dead_letter_subject("{service}"),
            {
                "DeadLetter": b.message(
                    "DeadLetter",
                    {},
                    "A message given up on, its body as it came.",
                    "application/octet-stream",
                    headers={
                        "type": "object",
                        "properties": {
                            nats.DEAD_LETTER_REASON_HEADER: {"type": "string"},
                            nats.DEAD_LETTER_SUBJECT_HEADER: {"type": "string"},
                        },
                    },
                )
            },
            f"Messages a service gave up on (stream `{nats.DEAD_LETTERS_STREAM}`).",
            {"service": {"description": "The service that gave up."}},
        ),
    ]
    for key, address, messages, description, parameters in simple:
        b.channel(key, address, messages, description, parameters, internal=True)
        b.operation(key, "send", key)


def _buckets(b: Builder) -> None:
    """The JetStream key-value buckets, as the subjects their entries live on."""
    entries: list[tuple[str, str, type[BaseModel], str, str]] = [
        ("nats-kv-access-keys", nats.KEY_ENTRY, nats.KeyRecord, "id", "A managed API key."),
        ("nats-kv-access-tenants", nats.TENANT_ENTRY, nats.TenantRecord, "id", "A tenant."),
    ]
    for key, entry, model, parameter, description in entries:
        b.channel(
            key,
            f"$KV.{nats.ACCESS_BUCKET}.{entry}",
            {model.__name__: b.message(model.__name__, model)},
            f"{description} An entry of key-value bucket `{nats.ACCESS_BUCKET}`, watched by "
            "every api replica.",
            {parameter: {"description": "The entry's id."}},
            internal=True,
        )
        b.operation(key, "send", key)
    key = "nats-kv-leases"
    holder = b.message("LeaseHolder", {"type": "string"}, "The holder's name.", TEXT)
    b.channel(
        key,
        f"$KV.{nats.LEASES_BUCKET}.{{lease}}",
        {"LeaseHolder": holder},
        f"A lease of key-value bucket `{nats.LEASES_BUCKET}`: which replica does a job one at "
        "a time; its value is the holder's name `<service>.<instance>`.",
        {
            "lease": {
                "description": "The job: `partition.<n>`, `dispatchers.<holder>` (one per live "
                "dispatcher), `bridge.<slot>`, `bridge-replicas.<replica>` (one per live "
                "device-bridge replica), or one of the examples.",
                "examples": [nats.RELAY_LEASE, nats.PROJECTION_LEASE, nats.SCHEDULER_LEASE],
            }
        },
        internal=True,
    )
    b.operation(key, "send", key)
    key = "nats-kv-bridge-in-flight"
    execution = b.message(
        "InFlightExecution",
        {"type": "string", "format": "uuid"},
        "The execution the device runs: the one its bridge slot last published to it.",
        TEXT,
    )
    b.channel(
        key,
        f"$KV.{nats.BRIDGE_IN_FLIGHT_BUCKET}.{{device}}",
        {"InFlightExecution": execution},
        f"Key-value bucket `{nats.BRIDGE_IN_FLIGHT_BUCKET}`: which execution each raw-mapped "
        "device runs, written before its request goes out and read by whichever device-bridge "
        "replica takes the device's slot.",
        {"device": {"description": "The device's key in the bucket."}},
        internal=True,
    )
    b.operation(key, "send", key)


# --- MQTT ----------------------------------------------------------------------------------


def _camel(profile: str) -> str:
    head, *rest = profile.split("-")
    return head.capitalize() + "".join(part.capitalize() for part in rest)


def _template(topic: str) -> str:
    """A topic the codec made for the sample, with its execution id as a parameter."""
    levels = topic.split("/")
    sample = str(SAMPLE_EXECUTION)
    return "/".join("{execution_id}" if level == sample else level for level in levels)


def _mqtt_bindings(retain: bool = False, expiry: bool = False) -> dict[str, Any]:
    binding: dict[str, Any] = {"qos": 1, "retain": retain}
    if expiry:
        binding["messageExpiryInterval"] = {
            "type": "integer",
            "minimum": 1,
            "description": "MQTT 5: the seconds left before the execution's deadline.",
        }
    binding["bindingVersion"] = MQTT_BINDING
    return {"mqtt": binding}


def _profile(b: Builder, codec: Codec) -> None:
    """One wire profile's topics, from what its codec encodes for the sample device."""
    name = codec.name
    fixed = name != "raw-mapped"
    type_wire: WireSettings = {} if fixed else RAW_MAPPED_SAMPLE
    command_wire: WireSettings = {} if fixed else RAW_MAPPED_COMMAND
    placeholder = "device_id" if codec.topic_id == "device_id" else "wire_id"
    wire_id = f"{{{placeholder}}}"
    prefix = f"mqtt-{name}"

    def address(topic: str) -> str | None:
        # raw-mapped's topics are the device type's settings: no address of its own.
        return _template(topic) if fixed else None

    def parameters(topic: str | None) -> dict[str, Any] | None:
        if topic is None:
            return None
        used = [p for p in TOPIC_PARAMETERS if f"{{{p}}}" in topic]
        return {p: {"description": TOPIC_PARAMETERS[p]} for p in used} or None

    def add(
        leaf: str,
        action: Action,
        message: dict[str, str],
        topic: str,
        description: str,
        bindings: dict[str, Any],
    ) -> None:
        key = f"{prefix}-{leaf}"
        where = address(topic)
        extensions: dict[str, Any] = {"wire-profile": name}
        if not fixed:
            extensions["topic-setting"] = RAW_SETTINGS[leaf]
            extensions["topic-example"] = topic
        message_name = message["$ref"].rsplit("/", 1)[1]
        b.channel(key, where, {message_name: message}, description, parameters(where), **extensions)
        b.operation(key, action, key, bindings)

    command = OutgoingCommand(
        wire_id=wire_id,
        execution_id=SAMPLE_EXECUTION,
        name="set_temperature" if fixed else "relay_on",
        params={"value": 22} if fixed else {},
        deadline=SAMPLE_DEADLINE,
        ttl=30,
        now=SAMPLE_NOW,
        command_wire=command_wire,
        type_wire=type_wire,
    )
    samples: list[tuple[str, Action, WireMessage | None, str]] = [
        ("request", "send", codec.encode_request(command), "Baton -> device: run a command."),
        (
            "cancel",
            "send",
            codec.encode_cancel(wire_id, SAMPLE_EXECUTION, "operator asked", type_wire),
            "Baton -> device: stop.",
        ),
        (
            "answer",
            "receive",
            codec.encode_answer(
                wire_id, str(SAMPLE_EXECUTION), "SUCCEEDED", {"current": 22}, "3", type_wire
            ),
            "Device -> Baton: an answer (started, progress, the outcome).",
        ),
        (
            "status",
            "receive",
            codec.encode_status(wire_id, False, "1763822431123456", type_wire),
            "Device -> Baton: online or offline, retained; also the device's last will.",
        ),
        (
            "state",
            "receive",
            codec.encode_state(wire_id, {"charging": True}, type_wire),
            "Device -> Baton: its state, a JSON object (what verification compares with).",
        ),
    ]
    for leaf, action, sample, description in samples:
        if sample is None:
            continue  # the profile has no such message
        message = _leaf_message(b, name, leaf, sample)
        bindings = _mqtt_bindings(retain=leaf == "status", expiry=leaf == "request")
        add(leaf, action, message, sample.topic, description, bindings)


def _leaf_message(b: Builder, profile: str, leaf: str, sample: WireMessage) -> dict[str, str]:
    """The message of one of a profile's topics, the codec's sample as its example."""
    example = None if profile == "raw-mapped" else json.loads(sample.payload)
    if leaf == "status":
        summary = "Online or offline (or the bare words `online`, `offline`)."
        return b.message(StatusBody.__name__, StatusBody, summary, example=example)
    if leaf == "state":
        state = {"type": "object", "description": "The whole state; its fields are the type's."}
        return b.message("DeviceState", state, "The device's state.", example=example)
    name = f"{_camel(profile)}{leaf.capitalize()}"
    model = PROFILE_MODELS[profile][leaf]
    if model is not None:
        return b.message(name, model, example=example)
    text = TEXT_PAYLOADS[leaf]
    payload = {"type": "string", "description": text}
    return b.message(name, payload, text, TEXT, example=sample.payload.decode())


# What the text payloads of raw-mapped are.
TEXT_PAYLOADS = {
    "request": "The command's `wire.payload`, as is.",
    "answer": "A word of the type's `wire.answers`.",
}


# Where raw-mapped's topics come from: the device type's `wire` settings.
RAW_SETTINGS = {
    "request": "wire.topic",
    "answer": "wire.answer_topic",
    "status": "wire.status_topic",
}


# --- the document --------------------------------------------------------------------------


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of Baton's NATS subjects and MQTT topics."""
    b = Builder()
    _nats(b)
    for codec in CODECS.values():
        _profile(b, codec)
    nats_ref = {"$ref": "#/servers/nats"}
    mqtt_ref = {"$ref": "#/servers/mqtt"}
    for key, channel in b.channels.items():
        channel["servers"] = [mqtt_ref if key.startswith("mqtt-") else nats_ref]
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "Baton messaging",
            "version": version("baton-contracts"),
            "description": (
                "Baton's NATS subjects (between its services, and for other services: "
                "docs/nats-contract.md) and the MQTT topics of every wire profile "
                "(docs/mqtt-contract.md, docs/wire-profiles.md). Generated from "
                "libs/contracts (`baton asyncapi`); every payload is JSON unless its "
                "message says otherwise."
            ),
        },
        "defaultContentType": JSON,
        "servers": {
            "nats": {
                "host": "127.0.0.1:4222",
                "protocol": "nats",
                "description": "The local stack's nats-server (`make run`); BATON_NATS_URL.",
            },
            "mqtt": {
                "host": "127.0.0.1:1883",
                "protocol": "mqtt",
                "protocolVersion": "5.0",
                "description": "The local stack's MQTT broker (MQTT 5; 3.1.1 works without "
                "message expiry); BATON_MQTT_HOST, BATON_MQTT_PORT.",
            },
        },
        "channels": b.channels,
        "operations": b.operations,
        "components": {"messages": b.messages, "schemas": dict(sorted(b.schemas.items()))},
    }


def asyncapi_json() -> str:
    """The document as docs/asyncapi.json holds it."""
    return json.dumps(asyncapi_document(), indent=2, ensure_ascii=False) + "\n"
