"""Running the HTTP server in the archive's process and event loop (uvicorn, no threads of its own)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn

from minipacs.config import ConfigError, Settings
from minipacs.core.anonymize import Anonymizer
from minipacs.core.archive import Archive
from minipacs.core.jobs import JobQueue
from minipacs.core.metadata import MetadataStore
from minipacs.core.metrics import Metrics
from minipacs.core.nodes import NodeRegistry
from minipacs.services.outbound import Outbound
from minipacs.web.app import create_app
from minipacs.web.auth import loopback_only
from minipacs.web.limits import ConnectionGuard, HttpListener, check_fd_budget, raise_fd_limit, uvicorn_options
from minipacs.web.types import AppContext
from minipacs.web.workers import RenderPool

log = logging.getLogger("minipacs.web")


class _Server(uvicorn.Server):
    """uvicorn without its signal handling: bootstrap owns SIGINT/SIGTERM and stops us."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def check_access(settings: Settings) -> None:
    """Listening beyond loopback with nobody to log in would open the archive to the network."""
    if settings.http_port and not loopback_only(settings.http_host) and not (settings.users or settings.tokens):
        raise ConfigError(
            f"HTTP would listen on {settings.http_host}, which other machines can reach, but no [[users]] or "
            "[[tokens]] are configured, so anyone could read and delete images; add users (see `minipacs users "
            'hash-password`) or set http_host = "127.0.0.1"'
        )


class HttpServer:
    def __init__(
        self,
        server: _Server | None,
        task: asyncio.Task[None] | None,
        metadata: MetadataStore,
        renders: RenderPool | None = None,
        listener: HttpListener | None = None,
    ) -> None:
        self.server, self.task, self.metadata = server, task, metadata
        self.renders, self.listener = renders, listener

    @property
    def port(self) -> int:
        if self.listener is None:
            return 0
        return int(self.listener.sock.getsockname()[1])

    async def close(self) -> None:
        if self.listener is not None:
            await self.listener.close()
        if self.server is not None and self.task is not None:
            self.server.should_exit = True
            await asyncio.gather(self.task, return_exceptions=True)
        if self.renders is not None:
            self.renders.close()
        await self.metadata.close()


async def start_http(
    settings: Settings,
    archive: Archive,
    nodes: NodeRegistry | None,
    outbound: Outbound | None = None,
    jobs: JobQueue | None = None,
    anonymizer: Anonymizer | None = None,
    metrics: Metrics | None = None,
) -> HttpServer:
    """Start metadata precomputation and, unless http_port is 0, the HTTP server. A port already in
    use stops the start-up with a sentence, as for the DICOM port: a server that comes up half is
    worse than one that says why it cannot."""
    check_access(settings)
    if settings.http_port:
        soft, _ = raise_fd_limit()
        check_fd_budget(settings, soft)
    metadata = MetadataStore(archive)
    metadata.attach()
    if not settings.http_port:
        return HttpServer(None, None, metadata)
    context = AppContext(
        settings,
        archive,
        metadata,
        nodes,
        jobs=jobs,
        outbound=outbound,
        anonymizer=anonymizer,
        metrics=metrics or Metrics(max_ae_labels=settings.metrics_max_ae_labels),
    )
    app = create_app(context)
    try:
        sock = socket.create_server(
            (settings.http_host, settings.http_port), reuse_port=False, backlog=2048
        )  # uvicorn's default
    except OSError as exc:
        await metadata.close()
        raise OSError(
            exc.errno,
            f"cannot listen for HTTP on {settings.http_host}:{settings.http_port}: "
            f"{exc.strerror} (is another server using that port? choose another with `serve --http-port N`, "
            "`http_port = N` in the config file or MINIPACS_HTTP_PORT=N; 0 turns HTTP off)",
        ) from exc
    guard = ConnectionGuard.of(settings)
    config = uvicorn.Config(
        app,
        log_level="warning",
        lifespan="off",
        access_log=False,
        # uvicorn believes X-Forwarded-For from loopback by default, so any local process could write
        # another address into the audit trail: only the configured proxies are believed
        proxy_headers=bool(settings.http_trusted_proxies),
        forwarded_allow_ips=list(settings.http_trusted_proxies) or None,
        **uvicorn_options(guard),
    )
    server = _Server(config)
    # uvicorn runs the connections; we accept them (web/limits.py: the cap, and a back-off when
    # descriptors run out), so uvicorn itself listens on nothing
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[]), name="minipacs-http")
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    listener: HttpListener | None = None
    if server.started:

        def protocol() -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=server.server_state, app_state=server.lifespan.state
            )

        listener = HttpListener(sock, protocol, lambda: len(server.server_state.connections), guard)
        listener.start()
    else:
        sock.close()
    if server.started:
        log.info(
            "HTTP (REST, DICOMweb) on http://%s:%d/%s",
            settings.http_host,
            settings.http_port,
            "" if settings.users or settings.tokens else " (no users configured: open to this machine)",
        )
    return HttpServer(server, task, metadata, context.renders, listener)


__all__ = ["HttpServer", "check_access", "start_http"]
