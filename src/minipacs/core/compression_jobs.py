"""Compression in the background: the "compress" job kind and the scheduler that submits its jobs.

The work runs as jobs of the persistent queue (core/jobs.py), so it is visible, cancellable and
resumed after a restart on any node. A job's ``params`` (plain JSON, :func:`job_params`):
``{"syntax": "jpeg-ls-lossless", "policy": "<name or ''>", "match": {...}, "labels": [...],
"study_uids": [...], "series_uids": [...], "older_than_days": null, "dry_run": false}``. It walks the instances not yet
looked at that the selection names and compresses each (core/compression.py); compressing again
is harmless (done or skipped instances are not candidates any more), so the kind is "resume".

:class:`CompressionScheduler` submits them:

- ``when = "ingest"`` policies: every stored instance's series is noted (``Archive.on_stored``,
  nothing more on the C-STORE path); once no instance arrived for ``ingest_delay_seconds`` (or
  :data:`MAX_NOTED` series are waiting) one job per policy takes the noted series.
- every ``sweep_seconds``: one job per policy (ingest ones too, catching up what a restart
  lost), unless a job of that policy is already queued or running.

The copies compression replaced are removed once their grace period is over by
core/blob_removals.py, with every other replaced copy, on every node, compression or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from minipacs.core.archive import Archive
from minipacs.core.compression import SYNTAXES, CompressionPolicy, Compressor, InvalidPolicy
from minipacs.core.jobs import Handler, JobContext, JobFailed, JobQueue
from minipacs.core.model import StoreOutcome, StoreStatus

log = logging.getLogger(__name__)

COMPRESS: Final = "compress"
#: Per-instance entries kept in a job's details (the counts are always complete).
MAX_LISTED: Final = 100
#: Noted series past which an ingest job is submitted without waiting for a quiet moment.
MAX_NOTED: Final = 500


def job_params(
    syntax: str,
    *,
    policy: CompressionPolicy | None = None,
    study_uids: Sequence[str] = (),
    series_uids: Sequence[str] = (),
    dry_run: bool = False,
) -> dict[str, Any]:
    """The params of a compress job: a policy's syntax, match and age, or a syntax alone."""
    return {
        "syntax": policy.syntax if policy is not None else syntax,
        "policy": policy.name if policy is not None else "",
        "match": dict(policy.match) if policy is not None else {},
        "labels": list(policy.labels) if policy is not None else [],
        "older_than_days": policy.older_than_days if policy is not None else None,
        "study_uids": list(study_uids),
        "series_uids": list(series_uids),
        "dry_run": dry_run,
    }


def describe(params: Mapping[str, Any]) -> str:
    what = f"policy {params['policy']}" if params.get("policy") else params["syntax"]
    where = ""
    if params.get("study_uids"):
        where = f", {len(params['study_uids'])} study(ies)"
    elif params.get("series_uids"):
        where = f", {len(params['series_uids'])} series just stored"
    return f"{'dry run: ' if params.get('dry_run') else ''}compress ({what}{where})"


def _list(job: JobContext, key: str, entry: dict[str, Any]) -> None:
    listed = job.details.setdefault(key, [])
    if len(listed) < MAX_LISTED:
        listed.append(entry)


def compress_handler(compressor: Compressor) -> Handler:
    async def compress(job: JobContext) -> str:
        params = job.params
        syntax = SYNTAXES.get(str(params.get("syntax")))
        if syntax is None:
            raise JobFailed(f"syntax {params.get('syntax')!r} is not one of {', '.join(SYNTAXES)}")
        dry_run = bool(params.get("dry_run"))
        counts = {"compressed": 0, "skipped": 0, "changed": 0, "before_bytes": 0, "after_bytes": 0}
        job.details.update(counts, skipped_instances=[], syntax=syntax.name, dry_run=dry_run)
        job.total = job.done = job.failed = 0
        try:
            pages = compressor.candidates(
                match=params.get("match") or {},
                study_uids=params.get("study_uids") or (),
                series_uids=params.get("series_uids") or (),
                older_than_days=params.get("older_than_days"),
                labels=params.get("labels") or (),
            )
            async for page in pages:
                job.total += len(page)
                for candidate in page:
                    outcome = await compressor.compress(candidate, syntax, dry_run=dry_run)
                    job.done += 1
                    if outcome.status in ("compressed", "would compress"):
                        counts["compressed"] += 1
                        counts["before_bytes"] += outcome.before
                        counts["after_bytes"] += outcome.after
                        if dry_run:
                            _list(job, "would_compress", outcome.to_json())
                    elif outcome.status == "skipped":
                        counts["skipped"] += 1
                        _list(job, "skipped_instances", {"uid": outcome.sop_instance_uid, "reason": outcome.reason})
                    else:
                        counts["changed"] += 1
                    saved = counts["before_bytes"] - counts["after_bytes"]
                    job.details.update(counts, saved_bytes=saved)
                    job.message = (
                        f"{'would compress' if dry_run else 'compressed'} {counts['compressed']} of "
                        f"{job.done} instance(s) looked at, {saved} bytes {'to save' if dry_run else 'saved'}"
                    )
        except InvalidPolicy as exc:
            raise JobFailed(f"the job's selection cannot be used: {exc}") from None
        saved = counts["before_bytes"] - counts["after_bytes"]
        job.details.update(counts, saved_bytes=saved)
        verb = "would compress" if dry_run else "compressed"
        return (
            f"{verb} {counts['compressed']} instance(s) to {syntax.name}, {saved} bytes "
            f"{'to save' if dry_run else 'saved'}; {counts['skipped']} skipped (see skipped_instances), "
            f"{counts['changed']} deleted or re-sent meanwhile"
        )

    return compress


def register_compression_jobs(queue: JobQueue, compressor: Compressor) -> None:
    """The "compress" kind, run by ``compressor``."""
    queue.register(COMPRESS, compress_handler(compressor), on_restart="resume")


@dataclass(frozen=True)
class SchedulerSettings:
    """config.py keys compression_*."""

    ingest_delay_seconds: float = 5.0
    sweep_seconds: float = 3600.0


class CompressionScheduler:
    """Submits compress jobs for the configured policies (module docstring)."""

    def __init__(
        self,
        archive: Archive,
        queue: JobQueue,
        compressor: Compressor,
        policies: Sequence[CompressionPolicy],
        settings: SchedulerSettings | None = None,
    ) -> None:
        self.archive = archive
        self.queue = queue
        self.compressor = compressor
        self.policies = tuple(policies)
        self.settings = settings or SchedulerSettings()
        self._noted: dict[str, None] = {}
        self._last_noted = 0.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def attach(self) -> None:
        """Listen to ingests (only if an ingest policy exists) and start the loop on the running loop."""
        if any(p.when == "ingest" for p in self.policies):
            self.archive.on_stored.append(self.instance_stored)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="minipacs-compression")

    async def close(self) -> None:
        if self.instance_stored in self.archive.on_stored:
            self.archive.on_stored.remove(self.instance_stored)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def instance_stored(self, outcome: StoreOutcome) -> None:
        """After-ingest listener: note the series (a dict insert; the job does the rest later)."""
        if outcome.status in (StoreStatus.STORED, StoreStatus.REPLACED) and outcome.series_instance_uid:
            self._noted[outcome.series_instance_uid] = None
            self._last_noted = time.monotonic()
            if len(self._noted) >= MAX_NOTED:
                self._wake.set()

    async def submit_noted(self) -> int:
        """One job per ingest policy for the series noted so far; returns the jobs submitted."""
        series, self._noted = list(self._noted), {}
        submitted = 0
        for policy in self.policies:
            if policy.when != "ingest" or not series:
                continue
            for start in range(0, len(series), MAX_NOTED):
                params = job_params(policy.syntax, policy=policy, series_uids=series[start : start + MAX_NOTED])
                await self.queue.submit(COMPRESS, describe(params), params)
                submitted += 1
        return submitted

    async def sweep(self) -> int:
        """One job per policy without a job queued or running; returns the jobs submitted."""
        active = await self.queue.list(states=("queued", "running"), kinds=(COMPRESS,), limit=1000)
        busy = {job.params.get("policy") for job in active if not job.params.get("series_uids")}
        submitted = 0
        for policy in self.policies:
            if policy.name in busy:
                continue
            params = job_params(policy.syntax, policy=policy)
            await self.queue.submit(COMPRESS, describe(params), params)
            submitted += 1
        return submitted

    async def _run(self) -> None:
        delay = self.settings.ingest_delay_seconds
        next_sweep = time.monotonic() + min(self.settings.sweep_seconds, 60.0)  # first sweep soon after start
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(delay, 1.0))
            self._wake.clear()
            try:
                now = time.monotonic()
                if self._noted and (len(self._noted) >= MAX_NOTED or now - self._last_noted >= delay):
                    await self.submit_noted()
                if now >= next_sweep:
                    next_sweep = now + self.settings.sweep_seconds
                    if self.policies:
                        await self.sweep()
            except Exception:  # the loop must survive a bad moment of the index
                log.exception("compression: the scheduler's pass failed; trying again shortly")


__all__ = [
    "COMPRESS",
    "MAX_LISTED",
    "MAX_NOTED",
    "CompressionScheduler",
    "SchedulerSettings",
    "compress_handler",
    "describe",
    "job_params",
    "register_compression_jobs",
]
