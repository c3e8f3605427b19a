"""What the archive is doing, as Prometheus metrics (issue 13, "Seeing it"; docs/METRICS.md).

One :class:`Metrics` per running archive, exposed through its own registry (no module-level
state: two archives in one process, as the tests run them, do not mix their figures). The DICOM
server and the HTTP edge count into it as work happens, on the event loop: a dictionary update
and, for a latency, a ``bisect`` into the bucket bounds -- about a microsecond, no lock, no I/O
(prometheus-client's own labelled counters cost ~10 µs per instance for the same figures). The
figures become Prometheus metric families only when ``/metrics`` is scraped; the ones that live
in the index (storage, the job queue) are set just before.

Counting happens on the event loop only (one thread), which is what makes plain integers safe.

A peer chooses its own calling AE title, so a label taken from it is bounded: past
``max_ae_labels`` distinct titles, further ones are counted under ``"(other)"``.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from typing import Final

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

#: The label for calling AE titles beyond ``max_ae_labels``.
OTHER_AE: Final = "(other)"

#: Seconds: from 1 ms (an echo, a cached query) to 60 s (a large C-MOVE).
LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

#: PS3.7 C.1: the status classes, by the status's value (Pending, Cancel and Warning ranges).
STATUS_CLASSES: Final[tuple[tuple[str, frozenset[int] | range], ...]] = (
    ("success", frozenset({0x0000})),
    ("pending", frozenset({0xFF00, 0xFF01})),
    ("cancel", frozenset({0xFE00})),
    ("warning", frozenset({0x0001, 0x0107, 0x0116})),
    ("warning", range(0xB000, 0xC000)),
)

Labels = tuple[str, ...]


def status_class(status: int | None) -> str:
    """ "success", "warning", "failure", ... for a DIMSE status; "unknown" when none was seen."""
    if status is None:
        return "unknown"
    for name, values in STATUS_CLASSES:
        if status in values:
            return name
    return "failure"


class _Histogram:
    """Bucket counts (not cumulative) and the sum, per label values."""

    __slots__ = ("buckets", "sums")

    def __init__(self) -> None:
        self.buckets: dict[Labels, list[int]] = {}
        self.sums: dict[Labels, float] = defaultdict(float)

    def observe(self, labels: Labels, seconds: float) -> None:
        counts = self.buckets.get(labels)
        if counts is None:
            counts = self.buckets[labels] = [0] * (len(LATENCY_BUCKETS) + 1)
        counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.sums[labels] += seconds

    def family(self, name: str, documentation: str, label_names: list[str]) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, documentation, labels=label_names)
        for labels, counts in sorted(self.buckets.items()):
            running, cumulative = 0, []
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), counts, strict=True):
                running += count
                cumulative.append(("+Inf" if bound == float("inf") else repr(bound), running))
            family.add_metric(list(labels), cumulative, self.sums[labels])
        return family


def _counter(name: str, documentation: str, label_names: list[str], values: Mapping[Labels, float]) -> Metric:
    family = CounterMetricFamily(name, documentation, labels=label_names)
    for labels, value in sorted(values.items()):
        family.add_metric(list(labels), value)
    return family


class Metrics(Collector):
    """The figures of one archive (names in docs/METRICS.md), collected at each scrape."""

    def __init__(self, *, max_ae_labels: int = 200) -> None:
        if max_ae_labels < 1:
            raise ValueError("max_ae_labels must be at least 1")
        self.max_ae_labels = max_ae_labels
        self._aes: set[str] = set()
        self.associations_open = 0
        self.associations: dict[Labels, int] = defaultdict(int)  # (calling_ae, outcome)
        self.dimse_requests: dict[Labels, int] = defaultdict(int)  # (request, status class)
        self.dimse_failures: dict[Labels, int] = defaultdict(int)  # (request, status hex)
        self.dimse_seconds = _Histogram()  # (request,)
        self.ingested_instances: dict[Labels, int] = defaultdict(int)  # (source, outcome)
        self.ingested_bytes: dict[Labels, int] = defaultdict(int)  # (source,)
        self.ingest_failures: dict[Labels, int] = defaultdict(int)  # (source, reason)
        self.ingest_seconds = _Histogram()  # (source,)
        self.query_seconds = _Histogram()  # (interface,)
        # set from the index just before a scrape (web/rest_metrics.py)
        self.storage: dict[str, int] = {}
        self.jobs: dict[str, int] = {}
        self.deliveries: dict[Labels, int] = {}  # (destination, status)
        self.last_backup: float | None = None  # Unix time of the newest backup job that succeeded
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    # ------------------------------------------------------------------ counting (event loop)

    def ae_label(self, calling_ae: str) -> str:
        """``calling_ae`` stripped, or ``"(other)"`` once ``max_ae_labels`` titles have been seen."""
        ae = calling_ae.strip() or "(empty)"
        if ae in self._aes:
            return ae
        if len(self._aes) >= self.max_ae_labels:
            return OTHER_AE
        self._aes.add(ae)
        return ae

    def association_opened(self) -> None:
        self.associations_open += 1

    def association_closed(self) -> None:
        self.associations_open -= 1

    def association_ended(self, calling_ae: str, *, accepted: bool, end_reason: str) -> None:
        if not accepted:
            outcome = "rejected"
        elif end_reason.startswith("released"):
            outcome = "released"
        else:
            outcome = "aborted"
        self.associations[(self.ae_label(calling_ae), outcome)] += 1

    def dimse_answered(self, request: str, status: int | None, seconds: float) -> None:
        name = request.removesuffix("-RQ")
        kind = "success" if status == 0 else status_class(status)
        self.dimse_requests[(name, kind)] += 1
        if status is not None and kind in ("failure", "warning"):
            self.dimse_failures[(name, f"0x{status:04X}")] += 1
        self.dimse_seconds.observe((name,), seconds)

    def ingested(self, source: str, outcome: str, size: int, seconds: float) -> None:
        self.ingested_instances[(source, outcome)] += 1
        self.ingested_bytes[(source,)] += size
        self.ingest_seconds.observe((source,), seconds)

    def ingest_failed(self, source: str, error: Exception) -> None:
        self.ingest_failures[(source, type(error).__name__)] += 1

    def query_answered(self, interface: str, seconds: float) -> None:
        self.query_seconds.observe((interface,), seconds)

    def set_storage(self, *, studies: int, instances: int, instance_bytes: int, free_bytes: int) -> None:
        self.storage = {
            "studies": studies,
            "instances": instances,
            "bytes": instance_bytes,
            "free_bytes": free_bytes,
        }

    def set_last_backup(self, finished: float | None) -> None:
        self.last_backup = finished

    def set_jobs(self, by_state: Mapping[str, int], states: tuple[str, ...]) -> None:
        self.jobs = {state: by_state.get(state, 0) for state in states}

    def set_deliveries(self, rows: Iterable[tuple[str, str, int]]) -> None:
        """(destination, status, receipts) from the index. Destinations are registered nodes and
        configured URLs, but the label is bounded all the same: past ``max_ae_labels`` destinations
        (those with the most receipts keep their own), the rest count under ``"(other)"``."""
        rows = list(rows)
        totals: dict[str, int] = defaultdict(int)
        for destination, _, count in rows:
            totals[destination] += count
        kept = set(sorted(totals, key=lambda d: (-totals[d], d))[: self.max_ae_labels])
        deliveries: dict[Labels, int] = defaultdict(int)
        for destination, status, count in rows:
            deliveries[(destination if destination in kept else OTHER_AE, status)] += count
        self.deliveries = dict(deliveries)

    # ------------------------------------------------------------------ the scrape

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "minipacs_associations_open",
            "DICOM associations open now (accepted by this node)",
            value=self.associations_open,
        )
        yield _counter(
            "minipacs_associations",
            "DICOM associations ended, by calling AE title and outcome (released, aborted, rejected)",
            ["calling_ae", "outcome"],
            self.associations,
        )
        yield _counter(
            "minipacs_dimse_requests",
            "DIMSE requests answered, by request (C-STORE, C-FIND, ...) and status class of the final response",
            ["request", "status"],
            self.dimse_requests,
        )
        yield _counter(
            "minipacs_dimse_failures",
            "DIMSE requests answered with a failure or warning status, by request and status (hex)",
            ["request", "status"],
            self.dimse_failures,
        )
        yield self.dimse_seconds.family(
            "minipacs_dimse_request_seconds",
            "Time from a DIMSE request's arrival to its final response, by request",
            ["request"],
        )
        yield _counter(
            "minipacs_ingested_instances",
            "Instances ingested (acknowledged), by way in (dicom, stow, rest, import, ...) and outcome "
            "(stored, duplicate, replaced)",
            ["source", "outcome"],
            self.ingested_instances,
        )
        yield _counter(
            "minipacs_ingested_bytes", "Bytes of the Part 10 files ingested, by way in", ["source"], self.ingested_bytes
        )
        yield _counter(
            "minipacs_ingest_failures",
            "Instances refused by the ingest path, by way in and reason (the core's error class)",
            ["source", "reason"],
            self.ingest_failures,
        )
        yield self.ingest_seconds.family(
            "minipacs_ingest_seconds",
            "Time from a received dataset's hand-over to the ingest path to its durable acknowledgement",
            ["source"],
        )
        yield self.query_seconds.family(
            "minipacs_query_seconds",
            "Time until a query's first match (or its empty answer) is ready, by interface "
            "(qido; C-FIND is in minipacs_dimse_request_seconds)",
            ["interface"],
        )
        for key, name, documentation in (
            ("instances", "minipacs_storage_instances", "Instances in the archive"),
            ("studies", "minipacs_storage_studies", "Studies in the archive"),
            ("bytes", "minipacs_storage_bytes", "Bytes of stored instance files, as indexed"),
            ("free_bytes", "minipacs_storage_free_bytes", "Free bytes on the filesystem of the staging folder"),
        ):
            if key in self.storage:
                yield GaugeMetricFamily(name, documentation, value=self.storage[key])
        if self.last_backup is not None:
            yield GaugeMetricFamily(
                "minipacs_backup_last_success_timestamp_seconds",
                "When the newest backup job that succeeded ended (Unix time; core/backup.py)",
                value=self.last_backup,
            )
        jobs = GaugeMetricFamily("minipacs_jobs", "Jobs in the persistent queue, by state", labels=["state"])
        for state, count in self.jobs.items():
            jobs.add_metric([state], count)
        yield jobs
        deliveries = GaugeMetricFamily(
            "minipacs_deliveries",
            "Delivery receipts of auto-routing kept in the index, by destination and status "
            "(queued, sent, retrying, failed)",
            labels=["destination", "status"],
        )
        for (destination, status), count in sorted(self.deliveries.items()):
            deliveries.add_metric([destination, status], count)
        yield deliveries

    def exposition(self) -> bytes:
        """The text format (version 0.0.4) of every metric."""
        return generate_latest(self.registry)


__all__ = ["LATENCY_BUCKETS", "OTHER_AE", "Metrics", "status_class"]
