"""`baton simulate --catalog`: every device of the catalog, each in its type's profile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from baton_cli.main import app, catalog_specs
from baton_simulator import BEHAVIOURS, DeviceSpec

CATALOG = Path(__file__).resolve().parents[2] / "deploy/catalog/profiles.yaml"
runner = CliRunner()


def test_every_device_of_the_catalog_speaks_its_types_profile() -> None:
    specs = {spec.device_id: spec for spec in catalog_specs(CATALOG, [], [])}
    assert set(specs) == {
        "baton-thermo-1",
        "fleets-thermo-1",
        "aws-thermo-1",
        "iotee-1",
        "fleets-silent-1",
    }
    assert (specs["baton-thermo-1"].wire.profile, specs["baton-thermo-1"].wire.wire_id) == (
        "baton",
        "baton-thermo-1",
    )
    assert (specs["fleets-thermo-1"].wire.profile, specs["fleets-thermo-1"].wire.wire_id) == (
        "emqx-fleets",
        "FLEETS-T1",
    )
    iotee = specs["iotee-1"]
    assert (iotee.wire.profile, iotee.wire.wire_id) == ("raw-mapped", "ABC123")
    assert iotee.wire.commands_wire["lock"] == {"payload": "1"}
    assert iotee.behaviour is BEHAVIOURS["iotee"]
    assert specs["fleets-silent-1"].behaviour is BEHAVIOURS["silent"]
    assert specs["aws-thermo-1"].behaviour is BEHAVIOURS["thermostat"]


def test_devices_and_silent_ones_pick_among_the_catalog() -> None:
    specs = catalog_specs(CATALOG, ["iotee-1"], ["aws-thermo-1"])
    assert [(s.device_id, s.behaviour is BEHAVIOURS["silent"]) for s in specs] == [
        ("iotee-1", False),
        ("aws-thermo-1", True),
    ]
    with pytest.raises(typer.BadParameter, match="nobody"):
        catalog_specs(CATALOG, ["nobody"], [])


def test_simulate_with_a_catalog_passes_the_specs(monkeypatch: pytest.MonkeyPatch) -> None:
    import baton_simulator

    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    async def fake_run_simulator(*call: Any, **kw: Any) -> None:
        calls.append((call, kw))

    monkeypatch.setattr(baton_simulator, "run_simulator", fake_run_simulator, raising=False)
    result = runner.invoke(app, ["simulate", "--catalog", str(CATALOG)])
    assert result.exit_code == 0, result.output
    [((_, _, _, devices, silent, _), kw)] = calls
    assert (devices, silent) == ([], [])
    assert len(kw["specs"]) == 5
    assert all(isinstance(spec, DeviceSpec) for spec in kw["specs"])
