"""What the web console shows, read from a running grid: members and the partition table from KV, and from each PU's
metrics endpoint the latency percentiles (over the time since the previous read) and error replies by class."""

from __future__ import annotations

import asyncio
import logging
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from spacegrid.engine.coordination import Coordination
from spacegrid.engine.subjects import Names
from spacegrid.inspect import GridStatus

log = logging.getLogger("spacegrid.console")

SCRAPE_TIMEOUT_S = 1.0  # one PU's metrics endpoint (loopback or the grid's network)
QUANTILES = (0.5, 0.99)


def scrape(url: str) -> str:
    """A PU's metrics page (its metrics_url, an http URL the PU reported)."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http URL: {url!r}")
    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as response:  # nosec B310  # http(s) only, above
        return str(response.read().decode())


def parse_latency_and_errors(text: str) -> tuple[dict[str, dict[float, float]], dict[str, float]]:
    """From a metrics page: cumulative bucket counts by kind ({kind: {upper bound: count}}) of
    spacegrid_request_duration_seconds, and spacegrid_errors_total by code."""
    buckets: dict[str, dict[float, float]] = {}
    errors: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "spacegrid_request_duration_seconds":
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    bound = float(sample.labels["le"])
                    buckets.setdefault(sample.labels["kind"], {})[bound] = sample.value
        elif family.name == "spacegrid_errors":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    errors[sample.labels["code"]] = errors.get(sample.labels["code"], 0.0) + sample.value
    return buckets, errors


OPERATION_GROUPS = {"write": ("put", "delete", "call"), "read": ("get", "query", "versions", "get_backup")}


def merge(histograms: list[dict[float, float]]) -> dict[float, float]:
    """Cumulative histograms with the same bounds, added."""
    merged: dict[float, float] = {}
    for counts in histograms:
        for bound, count in counts.items():
            merged[bound] = merged.get(bound, 0.0) + count
    return merged


def quantile_s(cumulative: dict[float, float], q: float) -> float | None:
    """The q-quantile of a cumulative histogram, interpolated within its bucket (as PromQL's histogram_quantile);
    None without observations."""
    bounds = sorted(cumulative)
    total = cumulative[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return None
    rank = q * total
    previous_bound, previous_count = 0.0, 0.0
    for bound in bounds:
        count = cumulative[bound]
        if count >= rank:
            if bound == float("inf"):
                return previous_bound
            width = count - previous_count
            return previous_bound + (bound - previous_bound) * ((rank - previous_count) / width if width else 1.0)
        previous_bound, previous_count = bound, count
    return previous_bound


class GridView:
    """`await snapshot()`: the grid as the console draws it. Latency percentiles are over the requests served since
    the previous snapshot (the difference of each PU's histogram between the two reads)."""

    def __init__(self, coordination: Coordination, names: Names, partitions: int) -> None:
        self.coordination = coordination
        self.names = names
        self.partitions = partitions
        self._last_buckets: dict[str, dict[str, dict[float, float]]] = {}  # member -> kind -> bound -> count

    async def snapshot(self) -> dict[str, Any]:
        table, _ = await self.coordination.read_table(self.partitions)
        members = await self.coordination.read_members()
        status = GridStatus(self.names.space, table, members)
        view = status.to_json()
        view["active_partitions"] = status.active_partitions
        for row in view["members"]:
            info = members[row["id"]]
            lags_s = [lag[1] for lag in info.get("backup_lag", {}).values()]
            row["replication_lag_s_max"] = max(lags_s, default=0.0)
            row["log_missing"] = bool(info.get("log_missing", False))
        alive = [row for row in view["members"] if row["alive"]]
        scraped = await asyncio.gather(*(self._scrape(row["id"], row.get("metrics_url")) for row in alive))
        window: dict[str, dict[float, float]] = {}
        errors: dict[str, float] = {}
        for row, (buckets, _) in zip(alive, scraped):
            for group, kinds in OPERATION_GROUPS.items():
                merged_group = merge([buckets[kind] for kind in kinds if kind in buckets])
                for q in QUANTILES:
                    row[f"{group}_p{int(q * 100)}_ms"] = _ms(quantile_s(merged_group, q))
        for buckets, member_errors in scraped:
            for kind, counts in buckets.items():
                window[kind] = merge([window.get(kind, {}), counts])
            for code, count in member_errors.items():
                errors[code] = errors.get(code, 0.0) + count
        view["latency"] = {kind: {"requests": counts.get(float("inf"), 0.0),
                                  **{f"p{int(q * 100)}_ms": _ms(quantile_s(counts, q)) for q in QUANTILES}}
                           for kind, counts in sorted(window.items())}
        view["errors"] = errors
        view["read_at_s"] = status.read_at_s
        return view

    async def _scrape(self, member_id: str, url: str | None) -> tuple[dict[str, dict[float, float]], dict[str, float]]:
        """The member's histogram counts since the previous scrape, and its error totals ({} if unreachable)."""
        if not url:
            return {}, {}
        try:
            text = await asyncio.to_thread(scrape, url)
        except (OSError, ValueError) as exc:
            log.info("metrics of %s not read (%s)", member_id, exc)
            return {}, {}
        buckets, errors = parse_latency_and_errors(text)
        previous = self._last_buckets.get(member_id, {})
        self._last_buckets[member_id] = buckets
        since: dict[str, dict[float, float]] = {}
        for kind, counts in buckets.items():
            before = previous.get(kind, {})
            if counts.get(float("inf"), 0.0) < before.get(float("inf"), 0.0):
                before = {}  # the PU restarted: its counts began again
            since[kind] = {bound: count - before.get(bound, 0.0) for bound, count in counts.items()}
        return since, errors


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)
