"""deploy/grafana/baton-dashboard.json: a valid Grafana dashboard that queries only metrics
Baton exports (baton_platform.metrics), by labels those metrics have; and compose.yaml's
Grafana loads it over compose's Prometheus.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

from baton_platform import metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy/grafana/baton-dashboard.json"
# Labels Prometheus adds to every series it scrapes, and the buckets' own.
SCRAPE_LABELS = {"instance", "job"}
# What each kind of metric is exposed as (prometheus_client names a counter without _total).
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}
# PromQL's own words that look like names: functions, aggregations, keywords.
PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "rate", "increase", "irate", "histogram_quantile",
    "by", "without", "on", "ignoring", "and", "or", "unless", "bool",
}  # fmt: skip


def exported() -> dict[str, set[str]]:
    """Every series name Baton's metrics module exports, with the labels it can carry."""
    assert metrics.EXECUTIONS is not None  # imported: every metric is registered
    series: dict[str, set[str]] = {}
    for collector in list(REGISTRY._collector_to_names):
        labels = set(getattr(collector, "_labelnames", ()))
        for family in collector.describe() if hasattr(collector, "describe") else []:
            if not family.name.startswith("baton_"):
                continue
            for suffix in SUFFIXES.get(family.type, ()):
                series[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return series


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
        # Label matchers, strings and range selectors out; what is left are names.
        bare = re.sub(r"\{[^}]*\}|\"[^\"]*\"|\[[^\]]*\]", "", expr)
        names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", bare)) - PROMQL_WORDS
        queried = {name for name in names if name.startswith("baton_")}
        assert queried, f"{expr!r} queries no Baton metric"
        assert queried <= set(series), f"{expr!r}: {queried - set(series)} not exported"
        # The labels it groups by are the metric's own (or the scrape's).
        allowed = SCRAPE_LABELS.union(*(series[name] for name in queried))
        for group in re.findall(r"\bby \(([^)]*)\)", expr):
            used = {label.strip() for label in group.split(",")}
            assert used <= allowed, f"{expr!r} groups by {used - allowed}, not a label of it"
        for name in names - queried:
            assert name in {"le", *allowed} or name.isdigit(), f"{expr!r}: unknown {name!r}"


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
