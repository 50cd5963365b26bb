"""deploy/grafana/baton-dashboard.json: a valid Grafana dashboard that queries only metrics
Baton exports (baton_platform.metrics), by labels those metrics have; and compose.yaml's
Grafana loads it over compose's Prometheus.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.promql import check_expression, exported

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy/grafana/baton-dashboard.json"


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def expressions(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_it_is_a_dashboard_grafana_loads(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] and dashboard["title"] == "Baton"
    assert isinstance(dashboard["schemaVersion"], int)
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for panel in panels:
        assert panel["type"] in {"timeseries", "stat", "gauge", "table"}
        assert panel["title"]
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24
        assert panel["datasource"]["uid"] == "${datasource}"
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(set(refs)) == len(refs)
    # No two panels on the same cells.
    cells = [
        (x, y)
        for p in panels
        for x in range(p["gridPos"]["x"], p["gridPos"]["x"] + p["gridPos"]["w"])
        for y in range(p["gridPos"]["y"], p["gridPos"]["y"] + p["gridPos"]["h"])
    ]
    assert len(cells) == len(set(cells))


def test_every_metric_it_queries_is_one_baton_exports(dashboard: dict[str, Any]) -> None:
    series = exported()
    for expr in expressions(dashboard):
        check_expression(expr, series)


def test_the_panels_the_operators_need_are_there(dashboard: dict[str, Any]) -> None:
    text = " ".join(expressions(dashboard))
    for needed in (
        "rate(baton_executions_total",
        "histogram_quantile(0.95, sum by (le, stage) (rate(baton_execution_stage_seconds_bucket",
        "baton_consumer_pending_messages",
        "baton_consumer_ack_pending_messages",
        "baton_executions_waiting",
        "baton_executions_in_flight",
        "baton_rejected_messages_total",
        "baton_lease_held",
    ):
        assert needed in text


def test_compose_grafana_loads_it_over_compose_prometheus() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    grafana = compose["services"]["grafana"]
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in grafana["volumes"]}
    assert mounts["/etc/grafana/dashboards/baton.json"] == "./deploy/grafana/baton-dashboard.json"
    provisioning = ROOT / mounts["/etc/grafana/provisioning"]
    providers = yaml.safe_load((provisioning / "dashboards/baton.yml").read_text())["providers"]
    assert providers[0]["options"]["path"] == "/etc/grafana/dashboards"
    sources = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())
    assert sources["datasources"][0]["url"] == "http://prometheus:9090"
    assert "prometheus" in compose["services"]
