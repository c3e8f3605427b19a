"""The writer hands a batch's results to the event loop in one wake-up, not one per job.

Each ``call_soon_threadsafe`` writes to the loop's self-pipe and wakes it; a batch of N
ingests (parallel associations) needs one. Every waiter still gets its own outcome.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from minipacs.core.archive import Archive
from minipacs.core.model import StoreStatus
from tests.core.test_archive import DICOM, stage
from tests.dicomgen import encode_dataset, generate_uid, make_ct


def test_a_batch_of_ingests_is_settled_in_one_wakeup(with_archive: Callable[..., Any]) -> None:
    study, series = generate_uid(), generate_uid()
    datasets = [make_ct(study, series, generate_uid()) for _ in range(60)]

    async def body(archive: Archive) -> None:
        loop = asyncio.get_running_loop()
        wakeups = 0
        original = loop.call_soon_threadsafe

        def counting(callback: Any, *args: Any, **kwargs: Any) -> Any:
            nonlocal wakeups
            if "_resolve_all" in getattr(callback, "__qualname__", ""):
                wakeups += 1
            return original(callback, *args, **kwargs)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        try:
            staged = [stage(archive, ds, data=encode_dataset(ds)) for ds in datasets]
            outcomes = await asyncio.gather(*(archive.ingest(s, DICOM) for s in staged))
        finally:
            loop.call_soon_threadsafe = original  # type: ignore[method-assign]
        assert [o.sop_instance_uid for o in outcomes] == [ds.SOPInstanceUID for ds in datasets]
        assert {o.status for o in outcomes} == {StoreStatus.STORED}
        stats = archive.stats
        assert stats.largest_batch > 1, "the 60 ingests were queued together"
        assert wakeups == stats.batches, (wakeups, stats.batches)
        assert wakeups < len(datasets)

    with_archive(body)
