"""The catalog: loading (a wrong file fails at start, naming what is wrong) and checking
requests against a device's type (unknown device, unknown command, invalid params)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from baton_domain.catalog import Catalog, CatalogError
from baton_domain.errors import InvalidCommand, UnknownDevice

DEMO = Path(__file__).resolve().parents[2] / "deploy" / "catalog" / "demo.yaml"


@pytest.fixture(scope="module")
def demo() -> Catalog:
    return Catalog.from_yaml(DEMO)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "catalog.yaml"
    path.write_text(text)
    return path


def test_the_demo_catalog_has_the_thermostat_and_its_devices(demo: Catalog) -> None:
    assert set(demo.device_types["thermostat"].commands) == {
        "set_temperature", "reboot", "self_test", "factory_reset",
    }  # fmt: skip
    assert [d.id for d in demo.devices] == [
        *(f"demo-thermostat-{n}" for n in range(1, 6)), "demo-silent-1",
    ]  # fmt: skip


def test_resolve_fills_the_default_ttl(demo: Catalog) -> None:
    resolved = demo.resolve("demo-thermostat-1", "set_temperature", {"value": 21.5}, None)
    assert (resolved.device.type, resolved.ttl, resolved.params) == (
        "thermostat", 30, {"value": 21.5},
    )  # fmt: skip
    assert demo.resolve("demo-thermostat-1", "reboot", {}, 5).ttl == 5


def test_a_commands_params_schema_is_compiled_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every request is checked against its command's schema; the compiled schema is kept
    with the command, not built again per request."""
    import baton_domain.params_schema as params_schema_module

    built: list[object] = []
    real = params_schema_module.ParamsValidator  # before it is patched

    def counting(schema: dict[str, Any], **options: Any) -> Draft202012Validator:
        built.append(schema)
        return real(schema, **options)

    demo = Catalog.from_yaml(DEMO)  # its own: the module's may have compiled it already
    monkeypatch.setattr(params_schema_module, "ParamsValidator", counting)
    for value in (20, 21, 22):
        demo.resolve("demo-thermostat-1", "set_temperature", {"value": value}, None)
    with pytest.raises(InvalidCommand):
        demo.resolve("demo-thermostat-2", "set_temperature", {"value": 99}, None)
    assert len(built) == 1


def test_unknown_device(demo: Catalog) -> None:
    with pytest.raises(UnknownDevice, match="nope"):
        demo.resolve("nope", "reboot", {}, None)


def test_unknown_command_names_the_known_ones(demo: Catalog) -> None:
    with pytest.raises(InvalidCommand) as caught:
        demo.resolve("demo-thermostat-1", "dance", {}, None)
    [error] = caught.value.errors
    assert error.field == "name"
    assert "factory_reset, reboot, self_test, set_temperature" in error.reason


@pytest.mark.parametrize(
    ("params", "field", "words"),
    [
        ({"value": 99}, "params.value", "maximum"),
        ({"value": 1}, "params.value", "minimum"),
        ({"value": "hot"}, "params.value", "number"),
        ({}, "params", "'value' is a required property"),
        ({"value": 20, "extra": 1}, "params", "Additional properties"),
    ],
)
def test_invalid_params_name_the_field_and_the_reason(
    demo: Catalog, params: dict[str, object], field: str, words: str
) -> None:
    with pytest.raises(InvalidCommand) as caught:
        demo.resolve("demo-thermostat-1", "set_temperature", params, None)
    assert [e.field for e in caught.value.errors] == [field]
    assert words in caught.value.errors[0].reason


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("devices: [{id: a, type: missing}]", "unknown type 'missing'"),
        (
            "device_types: {t: {}}\ndevices: [{id: a, type: t}, {id: a, type: t}]",
            "declared twice",
        ),
        ("device_types: {t: {commands: {c: {params: {type: 12}}}}}", "not a valid JSON Schema"),
        ("device_types: {t: {commands: {c: {ttl: 0}}}}", "ttl"),
        ("device_types: {t: {colour: red}}", "colour"),
        ("devices: [{id: 'bad id!', type: t}]\ndevice_types: {t: {}}", "id"),
        ("device_types: [unclosed", "cannot load catalog"),
    ],
)
def test_a_wrong_catalog_file_is_refused_naming_the_problem(
    tmp_path: Path, text: str, words: str
) -> None:
    with pytest.raises(CatalogError, match=r"cannot load|unknown type|declared twice") as caught:
        Catalog.from_yaml(write(tmp_path, text))
    assert words in str(caught.value)


def test_a_missing_catalog_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot load catalog"):
        Catalog.from_yaml(tmp_path / "absent.yaml")


def test_an_empty_file_is_an_empty_catalog(tmp_path: Path) -> None:
    assert Catalog.from_yaml(write(tmp_path, "")) == Catalog()


RICH = """
device_types:
  lamp:
    ttl: 12
    delivery: one-at-a-time
    wire_profile: raw-mapped
    wire: {topic: "iotee/dev/{hardware_id}/rls"}
    commands:
      change_lux:
        aliases: [change_color_temperature]
        cooldown: 5
        wire: {payload: "1"}
        params:
          type: object
          properties: {temp_kelvins: {type: integer, maximum: 10000}}
  thing:
    allow_undeclared: true
devices:
  - {id: lamp-1, type: lamp, hardware_id: ABC123, labels: {site: berlin}}
  - {id: thing-1, type: thing}
"""


def test_an_alias_resolves_to_its_manifest_name(tmp_path: Path) -> None:
    catalog = Catalog.from_yaml(write(tmp_path, RICH))
    resolved = catalog.resolve("lamp-1", "change_color_temperature", {"temp_kelvins": 1850}, None)
    assert (resolved.name, resolved.requested_name) == ("change_lux", "change_color_temperature")
    assert (resolved.ttl, resolved.cooldown) == (12, 5)
    with pytest.raises(InvalidCommand) as caught:
        catalog.resolve("lamp-1", "change_color_temperature", {"temp_kelvins": 15000}, None)
    assert caught.value.errors[0].field == "params.temp_kelvins"


def test_devices_have_a_hardware_id_and_labels(tmp_path: Path) -> None:
    catalog = Catalog.from_yaml(write(tmp_path, RICH))
    lamp = catalog.device("lamp-1")
    assert (lamp.wire_id, lamp.labels) == ("ABC123", {"site": "berlin"})
    assert catalog.device("thing-1").wire_id == "thing-1"
    lamp_type = catalog.device_types["lamp"]
    assert (lamp_type.delivery, lamp_type.wire_profile) == ("one-at-a-time", "raw-mapped")


def test_undeclared_commands_go_through_where_the_type_allows_them(tmp_path: Path) -> None:
    catalog = Catalog.from_yaml(write(tmp_path, RICH))
    resolved = catalog.resolve("thing-1", "setTemperature", {"value": 24}, None)
    assert (resolved.name, resolved.params, resolved.ttl) == ("setTemperature", {"value": 24}, 30)
    with pytest.raises(InvalidCommand):
        catalog.resolve("lamp-1", "dance", {}, None)


def test_a_name_used_twice_in_a_type_is_refused(tmp_path: Path) -> None:
    text = "device_types: {t: {commands: {a: {aliases: [b]}, b: {}}}}"
    with pytest.raises(CatalogError, match="used by"):
        Catalog.from_yaml(write(tmp_path, text))


def test_an_unknown_wire_profile_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="wire_profile"):
        Catalog.from_yaml(write(tmp_path, "device_types: {t: {wire_profile: carrier-pigeon}}"))
