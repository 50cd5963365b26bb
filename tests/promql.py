"""What Baton's Prometheus artefacts query (deploy/grafana's dashboard, deploy/prometheus's
alerting rules) checked against what its processes export (baton_platform.metrics, and the
api's webhook counter)."""

from __future__ import annotations

import re

from prometheus_client import REGISTRY

import baton_api.webhooks.delivery
from baton_platform import metrics

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
    """Every series name Baton exports, with the labels it can carry."""
    # Imported: every metric is registered.
    assert metrics.EXECUTIONS is not None and baton_api.webhooks.delivery.ATTEMPTS is not None
    series: dict[str, set[str]] = {}
    for collector in list(REGISTRY._collector_to_names):
        labels = set(getattr(collector, "_labelnames", ()))
        for family in collector.describe() if hasattr(collector, "describe") else []:
            if not family.name.startswith("baton_"):
                continue
            for suffix in SUFFIXES.get(family.type, ()):
                series[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return series


def check_expression(
    expr: str, series: dict[str, set[str]], others: frozenset[str] = frozenset()
) -> None:
    """`expr` queries Baton metrics (or `others`, Prometheus's own such as `up`) only, and
    groups them by labels they have."""
    # Label matchers, strings and range selectors out; what is left are names.
    bare = re.sub(r"\{[^}]*\}|\"[^\"]*\"|\[[^\]]*\]", "", expr)
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", bare)) - PROMQL_WORDS
    queried = {name for name in names if name.startswith("baton_")}
    assert queried or names & others, f"{expr!r} queries no Baton metric"
    assert queried <= set(series), f"{expr!r}: {queried - set(series)} not exported"
    # The labels it groups by are the metric's own (or the scrape's).
    allowed = SCRAPE_LABELS.union(*(series[name] for name in queried))
    for group in re.findall(r"\bby \(([^)]*)\)", expr):
        used = {label.strip() for label in group.split(",")}
        assert used <= allowed, f"{expr!r} groups by {used - allowed}, not a label of it"
    for name in names - queried - others:
        assert name in {"le", *allowed} or name.isdigit(), f"{expr!r}: unknown {name!r}"
