"""A Prometheus endpoint for a PU: gauges and counters built at scrape time from its latest statistics snapshot."""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterator
from wsgiref.simple_server import make_server

from prometheus_client import GCCollector, PlatformCollector, ProcessCollector, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from spacegrid.observability.health import Health
from spacegrid.unit.latency import LATENCY_BUCKETS_S

PROBES = ("/healthz", "/readyz")

COUNTERS = {
    "requests": "Requests served",
    "appends": "Log messages acknowledged by JetStream (one per tick, holding every partition written)",
    "parts": "Partitions' parts in those messages (parts / appends: partitions per message)",
    "records": "Records written to the log",
    "fence_retries": "Log messages refused because a partition was claimed since; appended again without it",
    "fence_busy": "Log messages a replicated stream refused while another PU's append was in process; appended again",
    "fenced": "Partitions deposed because another PU claimed them",
    "failovers": "Dead members removed while this PU coordinated",
    "promoted": "Partitions taken over from a hot backup without a full replay",
    "rejoins": "Times this PU found itself declared dead and joined again",
    "acquired": "Partitions acquired",
    "released": "Partitions released",
    "store_rows": "Rows persisted to the store by the write-behind pump",
    "store_flushes": "Store transactions of the write-behind pump that committed",
    "store_errors": "Write-behind attempts that failed because the store was unavailable (retried)",
    "dead_letters": "Entries the store rejected for good, sent to the dead-letter table",
    "log_trims": "Log trims behind the store (by the coordinator)",
    "loaded_rows": "Rows loaded from the store by recovering partitions",
    "overloaded": "Requests refused with Overloaded because a queue of this PU was at its bound (limits.py)",
    "bad_requests": "Requests refused as malformed (the caller's fault)",
    "recovery_failures": "Recoveries of a partition that failed (each tried again after a backoff)",
    "replays": "Replays of the log by recovering partitions (each a consumer of the log's tail)",
    "log_unavailable": "Log messages no stream took (nothing applied); appended again once the log takes them",
    "log_missing_events": "Times this PU found the space's log stream missing (deleted)",
    "records_refused": "Log records a recovery did not apply: their writer or epoch was never the table's owner's",
    "backup_records_refused": "Log records a backup's catch-up did not apply: their writer was not their epoch's owner",
    "claims_refused": "Claims at an epoch the partition table never issued, claimed over instead of obeyed",
}
STATISTICS_KEYS = {"write_behind_lag_seconds": "write_behind_lag_s"}  # metric name -> its key in the statistics
GAUGES = {
    "write_behind_lag_records": "Committed writes the store does not hold yet (keys, coalesced)",
    "write_behind_lag_seconds": "Age of the oldest committed write the store does not hold yet",
    "write_through_waiting": "Write-through replies waiting for the store",
    "store_available": "1 while the write-behind pump reaches the store, 0 while it retries",
    "append_backlog_records": "Writes applied but not yet appended (async maps, or waiting for an append)",
    "backups_catching_up": "Backups catching up with their partition's log (migration in progress)",
    "partitions_poisoned": "Partitions stopped by a log message they can't apply, until `spacegrid repair`",
    "log_missing": "1 while the space's log stream is missing (writes refused) until `spacegrid repair --recreate-log`",
    "waiting_replies": "Requests waiting for a commit or the store (bounded by limits.waiters_max)",
    "unsent_replies": "Replies queued and not yet handed to NATS (bounded by limits.replies_pending_max)",
    "replays_at_once_peak": "The most partition replays this PU ran at once (bounded by limits.replays_at_once_max)",
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
        for name, help_text in GAUGES.items():
            key = STATISTICS_KEYS.get(name, name)
            if key in stats:
                gauge = GaugeMetricFamily(f"spacegrid_{name}", help_text, labels=["member"])
                gauge.add_metric([member], float(stats[key]))
                yield gauge
        yield _latency_histogram(member, stats.get("latency", {}))
        errors = CounterMetricFamily("spacegrid_errors", "Error replies by the error's class (its wire code: "
                                     "not_owner, overloaded, log_missing, ...)", labels=["member", "code"])
        for code, count in sorted(stats.get("errors", {}).items()):
            errors.add_metric([member, code], float(count))
        yield errors
        yield from _map_metrics(member, stats.get("maps", {}))
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


def _latency_histogram(member: str, latency: dict[str, dict[str, Any]]) -> HistogramMetricFamily:
    """Per operation kind: from the PU's receipt of a request to its reply (a write's wait for its append, and a
    write-through one's for the store, included)."""
    family = HistogramMetricFamily("spacegrid_request_duration_seconds",
                                   "Time from a PU's receipt of a request to its reply, by operation kind",
                                   labels=["member", "kind"])
    for kind, observed in sorted(latency.items()):
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound_s, count in zip((*LATENCY_BUCKETS_S, float("inf")), observed["counts"]):
            cumulative += count
            buckets.append(("+Inf" if bound_s == float("inf") else repr(bound_s), float(cumulative)))
        family.add_metric([member, kind], buckets, sum_value=float(observed["sum_s"]))
    return family


MAP_COUNTERS = {
    "hits": "Reads of a bounded map's key found in memory",
    "misses": "Reads and writes of a bounded map's key that had to read it through from the store",
    "evictions": "Entries dropped from memory (persisted first; read through on demand)",
    "expirations": "Entries deleted on their TTL",
}


def _map_metrics(member: str, maps: dict[str, dict[str, int]]) -> Iterator[Any]:
    """Per map: entries in memory; for maps with eviction, hits, misses, evictions, expirations and the hit rate."""
    entries = GaugeMetricFamily("spacegrid_map_entries", "Entries in memory on this PU's owned partitions",
                                labels=["member", "map"])
    counters = {name: CounterMetricFamily(f"spacegrid_map_{name}", help_text, labels=["member", "map"])
                for name, help_text in MAP_COUNTERS.items()}
    hit_rate = GaugeMetricFamily("spacegrid_map_hit_rate", "hits / (hits + misses) since the PU started",
                                 labels=["member", "map"])
    for name, totals in sorted(maps.items()):
        entries.add_metric([member, name], float(totals.get("entries", 0)))
        if "hits" not in totals:
            continue
        for counter_name, family in counters.items():
            family.add_metric([member, name], float(totals.get(counter_name, 0)))
        reads = totals["hits"] + totals.get("misses", 0)
        if reads:
            hit_rate.add_metric([member, name], totals["hits"] / reads)
    yield entries
    yield from counters.values()
    yield hit_rate


def serve_metrics(snapshot: Callable[[], dict[str, Any]], host: str, port: int,
                  health: Callable[[], Health] | None = None) -> int:
    """Start the endpoint on host:port (0: a free port) in a daemon thread; returns the port. Besides the metrics
    (any other path), `/healthz` (liveness) and `/readyz` (readiness) answer 200 or 503 with the reason, from
    `health()`, for Kubernetes probes."""
    registry = CollectorRegistry()
    registry.register(PuCollector(snapshot))
    ProcessCollector(registry=registry)  # process_cpu_seconds_total, process_resident_memory_bytes, open fds, ...
    PlatformCollector(registry=registry)  # python_info
    GCCollector(registry=registry)  # python_gc_*
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "")
        if path in PROBES and health is not None:
            state = health()
            ok = state.live if path == "/healthz" else state.ready
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
            return [state.why.encode() + b"\n"]
        return metrics(environ, start_response)

    server = make_server(host, port, app, ThreadingWSGIServer, handler_class=_SilentHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return int(server.server_port)
