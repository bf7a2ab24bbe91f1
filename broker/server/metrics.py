"""Operational metrics, for ``GET /v1/sys/metrics`` (Prometheus text or Vault-style JSON).

Labels are bounded by configuration (mount, role, plugin, route template, state), never by
traffic: no lease id, user name or secret is ever a label or a value. Counters and
histograms are updated where things happen; the lease and pool gauges are read from
storage and the engines when scraped.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric

_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_LAG_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800, 3600)


class Metrics:
    """One registry per application (tests run several in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.issued = Counter(
            "broker_credentials_issued",
            "Credentials issued",
            ["mount", "role", "plugin"],
            registry=r,
        )
        self.issue_failed = Counter(
            "broker_credentials_failed",
            "Issuance requests that failed",
            ["mount", "role", "plugin", "reason"],
            registry=r,
        )
        self.issue_seconds = Histogram(
            "broker_issuance_seconds",
            "Time to issue a credential",
            ["mount", "plugin"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.revocations = Counter(
            "broker_revocations",
            "Revocation attempts by outcome",
            ["plugin", "outcome"],
            registry=r,
        )
        self.revocation_lag = Histogram(
            "broker_revocation_lag_seconds",
            "From a lease's expiry to its user being dropped",
            ["plugin"],
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.sweep_seconds = Histogram(
            "broker_sweep_seconds",
            "Duration of one expiry sweep",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.http_requests = Counter(
            "broker_http_requests", "HTTP requests", ["route", "method", "status"], registry=r
        )
        self.http_seconds = Histogram(
            "broker_http_request_seconds",
            "HTTP request duration",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.leases = Gauge(
            "broker_leases",
            "Leases by state (live states, read at scrape)",
            ["state", "mount", "role"],
            registry=r,
        )
        self.failing = Gauge(
            "broker_leases_failing",
            "Leases whose revocation failed and is being retried",
            registry=r,
        )
        self.backlog = Gauge("broker_sweep_backlog", "Leases due for revocation now", registry=r)
        self.integrity_failures = Counter(
            "broker_storage_integrity_failures",
            "Stored rows that failed their integrity check (edited, moved or copied in "
            "storage) and were refused",
            ["table"],
            registry=r,
        )
        self.declarative_failures = Gauge(
            "broker_declarative_failures",
            "Objects of the declarative configuration this node's last apply failed to "
            "apply (retried every 30 s)",
            registry=r,
        )
        self.pool = Gauge(
            "broker_target_pool_connections",
            "Connections of each target's pool by state",
            ["mount", "connection", "state"],
            registry=r,
        )

    def set_scrape_gauges(
        self,
        lease_counts: Iterable[tuple[str, str, str, int]],
        failing: int,
        backlog: int,
        pools: Iterable[tuple[str, str, dict[str, int]]],
    ) -> None:
        """Replace the gauges read at scrape time: lease rows by (state, mount, role), the
        failing and due leases, and each target pool's connections by state. Labels that
        are gone (a deleted role, a closed pool) go with them."""
        self.leases.clear()
        for state, mount, role, count in lease_counts:
            self.leases.labels(state, mount, role).set(count)
        self.failing.set(failing)
        self.backlog.set(backlog)
        self.pool.clear()
        for mount, connection, stats in pools:
            for state, value in stats.items():
                self.pool.labels(mount, connection, state).set(value)

    def prometheus_text(self) -> bytes:
        return generate_latest(self.registry)

    def vault_json(self) -> dict[str, Any]:
        """Vault's JSON shape: Gauges, Counters and Samples (histograms as count and sum)."""
        gauges: list[dict[str, Any]] = []
        counters: list[dict[str, Any]] = []
        samples: list[dict[str, Any]] = []
        for metric in _collect(self.registry.collect()):
            for sample in metric.samples:
                entry = {"Name": sample.name, "Labels": dict(sample.labels)}
                if metric.type == "gauge":
                    gauges.append({**entry, "Value": sample.value})
                elif metric.type == "counter" and sample.name.endswith("_total"):
                    counters.append({**entry, "Count": sample.value})
                elif metric.type == "histogram" and sample.name.endswith(("_count", "_sum")):
                    samples.append({**entry, "Value": sample.value})
        return {"Gauges": gauges, "Counters": counters, "Samples": samples}


def _collect(metrics: Iterable[Metric]) -> list[Metric]:
    return list(metrics)
