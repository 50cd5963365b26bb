"""The AsyncAPI document (docs/asyncapi.json) is what the contracts generate, is a valid
AsyncAPI 3.0 document, and names every subject and topic the code uses."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import jsonschema
import pytest

from baton_contracts import mqtt, nats
from baton_contracts.asyncapi import PROFILE_MODELS, asyncapi_document, asyncapi_json
from baton_contracts.profiles import CODECS, OutgoingCommand

ROOT = Path(__file__).resolve().parents[2]
CHECKED_IN = ROOT / "docs" / "asyncapi.json"
SPEC = Path(__file__).parent / "vendor" / "asyncapi-specs" / "asyncapi-3.0.0.json"
EXECUTION = UUID("0b9d3c1e-2f4a-4c6b-8d7e-1a2b3c4d5e6f")
NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return asyncapi_document()


def test_the_checked_in_document_is_what_the_code_generates() -> None:
    assert CHECKED_IN.read_text() == asyncapi_json(), (
        "docs/asyncapi.json differs from what libs/contracts generates: regenerate it with "
        "`.venv/bin/baton asyncapi --output docs/asyncapi.json` and commit it"
    )


def test_it_is_a_valid_asyncapi_3_document(document: dict[str, Any]) -> None:
    assert document["asyncapi"] == "3.0.0"
    validator = jsonschema.Draft7Validator(json.loads(SPEC.read_text()))
    errors = [
        f"{list(e.absolute_path)}: {e.message[:200]}" for e in validator.iter_errors(document)
    ]
    assert errors == []


def _references(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _references(value)]
    if isinstance(node, list):
        return [ref for item in node for ref in _references(item)]
    return []


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for token in ref[2:].split("/"):
        node = node[token.replace("~1", "/").replace("~0", "~")]
    return node


def test_every_reference_resolves(document: dict[str, Any]) -> None:
    """The schema cannot check references: each points at something that is there, and an
    operation's messages are its channel's."""
    refs = _references(document)
    assert refs
    for ref in refs:
        _resolve(document, ref)
    for key, operation in document["operations"].items():
        channel = operation["channel"]["$ref"]
        for message in operation["messages"]:
            assert message["$ref"].startswith(f"{channel}/messages/"), key


def _matches(address: str, subject: str, separator: str) -> bool:
    """Whether `subject` is an instance of `address` (each `{parameter}` one token)."""
    parts = re.split(r"(\{[a-z_]+\})", address)
    pattern = "".join(f"[^{separator}]+" if p.startswith("{") else re.escape(p) for p in parts)
    return re.fullmatch(pattern, subject) is not None


def _channel_for(document: dict[str, Any], subject: str, separator: str) -> list[str]:
    return [
        key
        for key, channel in document["channels"].items()
        if channel["address"] is not None and _matches(channel["address"], subject, separator)
    ]


def test_every_nats_subject_of_the_contracts_has_its_channel(document: dict[str, Any]) -> None:
    """Subjects as the services make them, each found under exactly one channel: a subject
    added to nats.py without its channel fails here."""
    constants = [
        value
        for name, value in vars(nats).items()
        if name.endswith("_SUBJECT") and isinstance(value, str)
    ]
    made = [
        *(c.format(tenant="acme") for c in constants),
        nats.event_subject(EXECUTION, "Dispatched"),
        nats.report_subject("demo-thermostat-1"),
        *(nats.partition_subject(3, verb) for verb in ("submit", "cancel", "deadline")),
        nats.watermark_subject("device-bridge-2"),
        nats.dead_letter_subject("dispatcher"),
        f"$KV.{nats.ACCESS_BUCKET}.{nats.KEY_ENTRY.format(id='k1')}",
        f"$KV.{nats.ACCESS_BUCKET}.{nats.TENANT_ENTRY.format(id='acme')}",
        f"$KV.{nats.LEASES_BUCKET}.{nats.RELAY_LEASE}",
    ]
    assert len(constants) >= 10
    for subject in made:
        assert len(_channel_for(document, subject, ".")) == 1, subject


def test_every_wire_profile_has_its_topics(document: dict[str, Any]) -> None:
    """A real device's topics, as each codec makes them, fall under the profile's channels;
    a new profile needs its models in the generator."""
    assert set(PROFILE_MODELS) == set(CODECS)
    for name, codec in CODECS.items():
        if name == "raw-mapped":
            continue  # its topics are the device type's settings: checked below
        command = OutgoingCommand("T-1", EXECUTION, "reboot", {}, NOW, 30, NOW)
        topics = {
            "request": codec.encode_request(command).topic,
            "answer": codec.answer_filters({})[0].replace("+", "T-1", 1).replace("+", "x"),
            "status": codec.status_filters({})[0].replace("+", "T-1"),
        }
        cancel = codec.encode_cancel("T-1", EXECUTION, "stop", {})
        if cancel is not None:
            topics["cancel"] = cancel.topic
        for leaf, topic in topics.items():
            assert _channel_for(document, topic, "/") == [f"mqtt-{name}-{leaf}"], topic
    assert _channel_for(document, mqtt.STATE_TEMPLATE.format(wire_id="T-1"), "/") == [
        "mqtt-baton-state"
    ]
    raw = document["channels"]["mqtt-raw-mapped-request"]
    assert raw["address"] is None
    assert raw["x-baton-topic-setting"] == "wire.topic"


def test_every_example_is_valid_under_its_payload(document: dict[str, Any]) -> None:
    """The MQTT examples are what the codecs encode: they fit the declared models."""
    checked = 0
    for message in document["components"]["messages"].values():
        for example in message.get("examples", []):
            schema = {**message["payload"], "components": document["components"]}
            jsonschema.validate(example["payload"], schema)
            checked += 1
    assert checked >= len(CODECS) * 2


def test_the_channels_carry_the_contract_models(document: dict[str, Any]) -> None:
    messages = document["components"]["messages"]
    submit = document["channels"]["nats-commands-submit"]["messages"]
    assert submit == {"SubmitCommand": {"$ref": "#/components/messages/SubmitCommand"}}
    assert messages["SubmitCommand"]["payload"] == {"$ref": "#/components/schemas/SubmitCommand"}
    schema = document["components"]["schemas"]["SubmitCommand"]
    assert schema["required"] == ["device_id", "name"]
    reply = document["operations"]["nats-commands-submit"]["reply"]
    assert reply["messages"] == [{"$ref": "#/channels/nats-inbox/messages/ExecutionReply"}]
    reports = document["channels"]["nats-reports"]["messages"]
    assert set(reports) == {"DeviceReport", "PresenceReport", "StateReport"}
    partition = document["channels"]["nats-partitions-submit"]["parameters"]["partition"]
    assert partition["enum"] == [str(n) for n in range(nats.PARTITIONS)]
    baton_request = messages["BatonRequest"]
    assert baton_request["payload"] == {"$ref": "#/components/schemas/CommandRequest"}


def test_baton_asyncapi_prints_and_writes_it(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from baton_cli.main import app

    runner = CliRunner()
    printed = runner.invoke(app, ["asyncapi"])
    assert printed.exit_code == 0, printed.output
    assert printed.stdout == asyncapi_json()
    target = tmp_path / "asyncapi.json"
    written = runner.invoke(app, ["asyncapi", "--output", str(target)])
    assert written.exit_code == 0, written.output
    assert target.read_text() == asyncapi_json()
