"""What the archive is doing, as Prometheus metrics (issue 13, "Seeing it"; docs/METRICS.md).

One :class:`Metrics` per running archive, on its own registry (no module-level state: two
archives in one process, as the tests run them, do not mix their figures). The DICOM server
and the HTTP edge count into it as work happens -- a counter increment or a histogram
observation, a few hundred nanoseconds, no I/O -- and the figures that live in the index
(storage, the job queue) are read when ``/metrics`` is scraped.

A peer chooses its own calling AE title, so a label taken from it is bounded: past
``max_ae_labels`` distinct titles, further ones are counted under ``"(other)"``.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

#: The label for calling AE titles beyond ``max_ae_labels``.
OTHER_AE = "(other)"

#: Seconds: from 1 ms (an echo, a cached query) to 60 s (a large C-MOVE).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

#: PS3.7 C.1: the status classes, by the status's value (Pending, Cancel and Warning ranges).
STATUS_CLASSES: tuple[tuple[str, frozenset[int] | range], ...] = (
    ("success", frozenset({0x0000})),
    ("pending", frozenset({0xFF00, 0xFF01})),
    ("cancel", frozenset({0xFE00})),
    ("warning", frozenset({0x0001, 0x0107, 0x0116})),
    ("warning", range(0xB000, 0xC000)),
)


def status_class(status: int | None) -> str:
    """ "success", "warning", "failure", ... for a DIMSE status; "unknown" when none was seen."""
    if status is None:
        return "unknown"
    for name, values in STATUS_CLASSES:
        if status in values:
            return name
    return "failure"


class Metrics:
    """The counters, gauges and histograms of one archive (names in docs/METRICS.md)."""

    def __init__(self, *, max_ae_labels: int = 200) -> None:
        if max_ae_labels < 1:
            raise ValueError("max_ae_labels must be at least 1")
        self.registry = CollectorRegistry(auto_describe=True)
        self.max_ae_labels = max_ae_labels
        self._aes: set[str] = set()
        self._lock = threading.Lock()
        r = self.registry
        self.associations_open = Gauge(
            "minipacs_associations_open", "DICOM associations open now (accepted by this node)", registry=r
        )
        self.associations = Counter(
            "minipacs_associations",
            "DICOM associations ended, by calling AE title and outcome (released, aborted, rejected)",
            ["calling_ae", "outcome"],
            registry=r,
        )
        self.dimse_requests = Counter(
            "minipacs_dimse_requests",
            "DIMSE requests answered, by request (C-STORE, C-FIND, ...) and status class of the final response",
            ["request", "status"],
            registry=r,
        )
        self.dimse_failures = Counter(
            "minipacs_dimse_failures",
            "DIMSE requests answered with a failure or warning status, by request and status (hex)",
            ["request", "status"],
            registry=r,
        )
        self.dimse_seconds = Histogram(
            "minipacs_dimse_request_seconds",
            "Time from a DIMSE request's arrival to its final response, by request",
            ["request"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ingested_instances = Counter(
            "minipacs_ingested_instances",
            "Instances ingested (acknowledged), by way in (dicom, stow, rest, import, ...) and outcome "
            "(stored, duplicate, replaced)",
            ["source", "outcome"],
            registry=r,
        )
        self.ingested_bytes = Counter(
            "minipacs_ingested_bytes", "Bytes of the Part 10 files ingested, by way in", ["source"], registry=r
        )
        self.ingest_failures = Counter(
            "minipacs_ingest_failures",
            "Instances refused by the ingest path, by way in and reason (the core's error class)",
            ["source", "reason"],
            registry=r,
        )
        self.ingest_seconds = Histogram(
            "minipacs_ingest_seconds",
            "Time from a received dataset's hand-over to the ingest path to its durable acknowledgement",
            ["source"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.query_seconds = Histogram(
            "minipacs_query_seconds",
            "Time until a query's first match (or its empty answer) is ready, by interface "
            "(qido; C-FIND is in minipacs_dimse_request_seconds)",
            ["interface"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.storage_instances = Gauge("minipacs_storage_instances", "Instances in the archive", registry=r)
        self.storage_studies = Gauge("minipacs_storage_studies", "Studies in the archive", registry=r)
        self.storage_bytes = Gauge("minipacs_storage_bytes", "Bytes of stored instance files, as indexed", registry=r)
        self.storage_free_bytes = Gauge(
            "minipacs_storage_free_bytes", "Free bytes on the filesystem of the staging folder", registry=r
        )
        self.jobs = Gauge("minipacs_jobs", "Jobs in the persistent queue, by state", ["state"], registry=r)

    def ae_label(self, calling_ae: str) -> str:
        """``calling_ae`` stripped, or ``"(other)"`` once ``max_ae_labels`` titles have been seen."""
        ae = calling_ae.strip() or "(empty)"
        if ae in self._aes:
            return ae
        with self._lock:
            if len(self._aes) >= self.max_ae_labels:
                return OTHER_AE
            self._aes.add(ae)
        return ae

    def association_ended(self, calling_ae: str, *, accepted: bool, end_reason: str) -> None:
        if not accepted:
            outcome = "rejected"
        elif end_reason.startswith("released"):
            outcome = "released"
        else:
            outcome = "aborted"
        self.associations.labels(self.ae_label(calling_ae), outcome).inc()

    def dimse_answered(self, request: str, status: int | None, seconds: float) -> None:
        name = request.removesuffix("-RQ")
        kind = status_class(status)
        self.dimse_requests.labels(name, kind).inc()
        if kind in ("failure", "warning") and status is not None:
            self.dimse_failures.labels(name, f"0x{status:04X}").inc()
        self.dimse_seconds.labels(name).observe(seconds)

    def ingested(self, source: str, outcome: str, size: int, seconds: float) -> None:
        self.ingested_instances.labels(source, outcome).inc()
        self.ingested_bytes.labels(source).inc(size)
        self.ingest_seconds.labels(source).observe(seconds)

    def ingest_failed(self, source: str, error: Exception) -> None:
        self.ingest_failures.labels(source, type(error).__name__).inc()

    def set_storage(self, *, studies: int, instances: int, instance_bytes: int, free_bytes: int) -> None:
        self.storage_studies.set(studies)
        self.storage_instances.set(instances)
        self.storage_bytes.set(instance_bytes)
        self.storage_free_bytes.set(free_bytes)

    def set_jobs(self, by_state: Mapping[str, int], states: tuple[str, ...]) -> None:
        for state in states:
            self.jobs.labels(state).set(by_state.get(state, 0))

    def exposition(self) -> bytes:
        """The text format (version 0.0.4) of every metric."""
        return generate_latest(self.registry)


__all__ = ["LATENCY_BUCKETS", "OTHER_AE", "Metrics", "status_class"]
