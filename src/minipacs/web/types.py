"""The contracts of the web layer: what the app is built from."""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.requests import Request

from minipacs.config import Settings
from minipacs.core.anonymize import Anonymizer
from minipacs.core.archive import Archive
from minipacs.core.jobs import JobQueue
from minipacs.core.metadata import MetadataStore
from minipacs.core.metrics import Metrics
from minipacs.core.nodes import NodeRegistry
from minipacs.services.outbound import Outbound
from minipacs.web.workers import RenderPool


@dataclass
class AppContext:
    """Everything the HTTP edge needs: the ONE archive core and its helpers."""

    settings: Settings
    archive: Archive
    metadata: MetadataStore
    nodes: NodeRegistry | None = None
    #: The persistent job queue (core/jobs.py), built and run by bootstrap; None: the job
    #: endpoints, send and retrieve answer 503.
    jobs: JobQueue | None = None
    #: Echo, query, send and retrieve to other nodes (services/outbound.py), built by bootstrap;
    #: None: the /api/nodes/{id}/echo|query|retrieve and /api/send endpoints answer 503.
    outbound: Outbound | None = None
    #: Prometheus figures shared with the DICOM server (core/metrics.py, GET /metrics).
    metrics: Metrics = field(default_factory=Metrics)
    #: De-identification (core/anonymize.py), built by bootstrap; None: /anonymize answers 503.
    anonymizer: Anonymizer | None = None
    #: Rendering and transcoding: max_concurrent_renders threads, render_queue waiting, 503 beyond.
    renders: RenderPool = field(init=False)

    def __post_init__(self) -> None:
        self.renders = RenderPool(self.settings.max_concurrent_renders, self.settings.render_queue)


def ctx(request: Request) -> AppContext:
    """The application context a route runs with (web/app.py puts it on ``app.state``)."""
    context: AppContext = request.app.state.ctx
    return context


__all__ = ["AppContext", "ctx"]
