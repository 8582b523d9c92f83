"""The Grafana dashboard and the alert rules in docs/monitoring, checked against what a PU exports (promtool does
not install from the registries this project uses, so the check is structural): every series they name is one a
PU's metrics endpoint serves, every panel renders a query, every alert names a runbook that exists."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from spacegrid.observability.prometheus import COUNTERS, GAUGES, STATISTICS_KEYS, PuCollector
from spacegrid.unit.latency import Latencies

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "docs" / "monitoring"
SERIES = re.compile(r"\b((?:spacegrid|process|python)_[a-z_]+)\b")
PROMQL_FUNCTIONS = {"rate", "increase", "sum", "max", "min", "histogram_quantile", "by", "le"}


def exported_series() -> set[str]:
    """Every sample name a PU's endpoint serves, from a snapshot holding every statistic it reports."""
    latencies = Latencies()
    latencies.observe("put", 0.002)
    snapshot = {"member": "m", "active": [1], **{name: 1 for name in COUNTERS},
                **{STATISTICS_KEYS.get(name, name): 1 for name in GAUGES}, "latency": latencies.snapshot(),
                "errors": {"not_owner": 1}, "backup_lag": {"3": [2, 0.5]},
                "maps": {"seats": {"entries": 1, "hits": 3, "misses": 1, "evictions": 0, "expirations": 0}}}
    registry = CollectorRegistry()
    registry.register(PuCollector(lambda: snapshot))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return {sample.name for family in registry.collect() for sample in family.samples}


def dashboard_exprs() -> list[tuple[str, str]]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


def alert_rules() -> list[dict[str, object]]:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    return [rule for group in rules["groups"] for rule in group["rules"]]


def test_every_series_the_dashboard_and_alerts_name_is_exported() -> None:
    """A typo or a renamed metric (e.g. a unit suffix) in a query is caught here, not on an empty panel."""
    exported = exported_series()
    queries = [expr for _, expr in dashboard_exprs()] + [str(rule["expr"]) for rule in alert_rules()]
    named = {name for query in queries for name in SERIES.findall(query)} - PROMQL_FUNCTIONS
    assert named and named <= exported, sorted(named - exported)


def test_every_panel_renders_a_query() -> None:
    """Each panel has at least one target with a non-empty expression, and titles are unique."""
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    titles = [panel["title"] for panel in dashboard["panels"]]
    assert len(titles) == len(set(titles))
    for panel in dashboard["panels"]:
        assert panel["targets"] and all(target["expr"].strip() for target in panel["targets"]), panel["title"]


def test_every_alert_has_a_summary_and_an_existing_runbook() -> None:
    """An alert that pages someone says what is wrong and where the procedure is."""
    for rule in alert_rules():
        annotations = rule["annotations"]
        assert isinstance(annotations, dict) and annotations["summary"], rule["alert"]
        assert (ROOT / str(annotations["runbook"])).is_file(), rule["alert"]


def test_units_are_in_the_names() -> None:
    """Conventional suffixes: durations in seconds (`_seconds`), sizes in bytes; counters end in `_total`."""
    exported = {name for name in exported_series() if name.startswith("spacegrid_")}
    assert not [name for name in exported if re.search(r"_s$|_ms$|_secs?$", name)]
    assert "spacegrid_request_duration_seconds_bucket" in exported
    assert {f"spacegrid_{name}_total" for name in COUNTERS} <= exported
