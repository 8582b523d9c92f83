"""A Prometheus endpoint for a PU: gauges and counters built at scrape time from its latest statistics snapshot."""

from __future__ import annotations

from typing import Any, Callable, Iterator

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

COUNTERS = {
    "requests": "Requests served",
    "appends": "Fenced appends acknowledged by JetStream",
    "records": "Records written to the log",
    "fenced": "Appends rejected by the fence (this PU was deposed)",
    "failovers": "Dead members removed while this PU coordinated",
    "promoted": "Partitions taken over from a hot backup without a full replay",
    "rejoins": "Times this PU found itself declared dead and joined again",
    "acquired": "Partitions acquired",
    "released": "Partitions released",
}


class PuCollector(Collector):
    """Reads `snapshot()` (a dict the PU replaces whole, so another thread never sees it change) at each scrape."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        stats = self.snapshot()
        member = str(stats.get("member", ""))
        for name, help_text in COUNTERS.items():
            counter = CounterMetricFamily(f"spacegrid_{name}", help_text, labels=["member"])
            counter.add_metric([member], float(stats.get(name, 0)))
            yield counter
        owned = GaugeMetricFamily("spacegrid_partitions_active", "Partitions this PU serves", labels=["member"])
        owned.add_metric([member], float(len(stats.get("active", ()))))
        yield owned
        backlog = GaugeMetricFamily("spacegrid_append_backlog_records",
                                    "Writes applied but not yet appended (async maps, or waiting for an append)",
                                    labels=["member"])
        backlog.add_metric([member], float(stats.get("append_backlog_records", 0)))
        yield backlog
        lag_records = GaugeMetricFamily("spacegrid_replication_lag_records",
                                        "Records a hot backup is behind its partition's log",
                                        labels=["member", "partition"])
        lag_seconds = GaugeMetricFamily("spacegrid_replication_lag_seconds",
                                        "Seconds a hot backup has been behind its partition's log",
                                        labels=["member", "partition"])
        for partition, (records, seconds) in sorted(stats.get("backup_lag", {}).items()):
            lag_records.add_metric([member, str(partition)], float(records))
            lag_seconds.add_metric([member, str(partition)], float(seconds))
        yield lag_records
        yield lag_seconds


def serve_metrics(snapshot: Callable[[], dict[str, Any]], host: str, port: int) -> int:
    """Start the endpoint on host:port (0: a free port) in a daemon thread; returns the port."""
    registry = CollectorRegistry()
    registry.register(PuCollector(snapshot))
    server, _ = start_http_server(port, addr=host, registry=registry)
    return int(server.server_port)
