"""deploy/prometheus/baton-rules.yml: alerting rules Prometheus can load, over metrics Baton
exports by labels they have, loaded by compose's Prometheus; and docs/operations.md's
"Alert on" list is the same rules."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.promql import check_expression, exported

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/baton-rules.yml"
PROMETHEUS_OWN = frozenset({"up"})  # a series every scrape makes
DURATION = re.compile(r"^\d+[smhd]$")


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(RULES.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def test_each_rule_is_an_alert_prometheus_loads(rules: list[dict[str, Any]]) -> None:
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["alert"].startswith("Baton")
        assert "for" not in rule or DURATION.match(rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"page", "warn", "info"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_every_series_a_rule_queries_is_one_baton_exports(rules: list[dict[str, Any]]) -> None:
    series = exported()
    for rule in rules:
        check_expression(" ".join(rule["expr"].split()), series, PROMETHEUS_OWN)


def test_compose_prometheus_loads_the_rules() -> None:
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    assert config["rule_files"] == ["baton-rules.yml"]
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    mounts = {
        v.split(":")[1]: v.split(":")[0] for v in compose["services"]["prometheus"]["volumes"]
    }
    assert mounts["/etc/prometheus/baton-rules.yml"] == "./deploy/prometheus/baton-rules.yml"


def test_the_operations_guide_lists_the_same_alerts(rules: list[dict[str, Any]]) -> None:
    guide = (ROOT / "docs/operations.md").read_text()
    for rule in rules:
        assert f"`{rule['alert']}`" in guide, f"{rule['alert']} not in docs/operations.md"
