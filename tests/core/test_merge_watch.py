"""Instances arriving under a Patient ID a merge took away (core/merge_watch.py).

The emergency patient registered as TEMP1, merged into the real record MRN1 by an HL7 A40 (or a user's
merge), then a late series from the modality still under TEMP1: ``warn`` names it and the merge to
apply, ``merge`` merges it into MRN1 again at once (files rewritten), ``off`` does nothing."""

from __future__ import annotations

import asyncio
import io
import logging
from pathlib import Path
from typing import Any

import pydicom
import pytest

from minipacs.bootstrap import build_app, corrections, open_archive
from minipacs.config import ConfigError, Settings
from minipacs.core.archive import Archive
from minipacs.core.corrections import Corrections
from minipacs.core.merge_watch import MergedArrivals, survivors
from minipacs.core.model import Origin, StoreStatus
from tests.core.test_archive import stage
from tests.dicomgen import make_ct
from tests.stored_files import instance_blob

DICOM = Origin(kind="dicom", calling_aet="MODALITY", called_aet="MINIPACS", peer_host="127.0.0.1", peer_port=4242)


def test_survivors_follow_chains_and_a_merge_back_makes_a_survivor_again() -> None:
    assert survivors([(1, "A", "B")]) == {"A": ("B", 1)}
    assert survivors([(1, "A", "B"), (2, "B", "C")]) == {"A": ("C", 1), "B": ("C", 2)}
    assert survivors([(1, "A", "B"), (2, "B", "A")]) == {"B": ("A", 2)}  # A survives the second merge
    # a merge into A after A was merged away: A exists again (arrivals re-made it), and is a survivor
    assert survivors([(1, "A", "B"), (2, "C", "A")]) == {"C": ("A", 2)}
    assert survivors([]) == {}


async def _store(archive: Archive, patient_id: str, study: str, n: int) -> str:
    sop = f"{study}.1.{n}"
    ds = make_ct(study, f"{study}.1", sop, patient_id=patient_id, patient_name=f"Name^{patient_id}")
    outcome = await archive.ingest(stage(archive, ds, in_memory=True), DICOM)
    assert outcome.status is StoreStatus.STORED
    return sop


async def _merged_then_late(tmp_path: Path, mode: str) -> tuple[Archive, Corrections, MergedArrivals, str]:
    """TEMP1 merged into MRN1; the watcher started; then a late instance under TEMP1 (its SOP UID)."""
    settings = Settings(data_dir=tmp_path / "data", fsync=False)
    archive = await open_archive(settings)
    fixer = corrections(settings, archive)
    await _store(archive, "TEMP1", "1.2.826.0.1.3680043.10.543.1", 1)
    await _store(archive, "MRN1", "1.2.826.0.1.3680043.10.543.2", 1)
    await fixer.merge("TEMP1", "MRN1", "HL7 A40 from HIS")
    assert await fixer.patient("TEMP1") is None
    watcher = MergedArrivals(archive, fixer, mode)
    await watcher.start()
    late = await _store(archive, "TEMP1", "1.2.826.0.1.3680043.10.543.3", 1)
    assert await fixer.patient("TEMP1") is not None  # the split the merge had undone
    return archive, fixer, watcher, late


def test_warn_names_the_merge_to_apply_and_moves_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        archive, fixer, watcher, late = await _merged_then_late(tmp_path, "warn")
        try:
            with caplog.at_level(logging.WARNING, logger="minipacs.core.merge_watch"):
                assert await watcher.look() == 1
            assert "'TEMP1', which correction" in caplog.text and "merged into patient 'MRN1'" in caplog.text
            assert "{\"source\": 'TEMP1', \"target\": 'MRN1'}" in caplog.text
            assert await fixer.patient("TEMP1") is not None  # nothing moved
            assert await watcher.look() == 0  # said once
        finally:
            await watcher.close()
            await archive.close()

    asyncio.run(main())


def test_merge_merges_the_late_arrivals_into_the_survivor_and_rewrites_them(tmp_path: Path) -> None:
    async def main() -> None:
        archive, fixer, watcher, late = await _merged_then_late(tmp_path, "merge")
        try:
            assert await watcher.look() == 1
            assert watcher.merged == 1
            assert await fixer.patient("TEMP1") is None
            _key, data = await instance_blob(archive, late)
            assert pydicom.dcmread(io.BytesIO(data)).PatientID == "MRN1"
            # a patient never merged is left alone
            await _store(archive, "OTHER", "1.2.826.0.1.3680043.10.543.4", 1)
            assert await watcher.look() == 0
            assert await fixer.patient("OTHER") is not None
        finally:
            await watcher.close()
            await archive.close()

    asyncio.run(main())


def test_off_watches_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        archive, fixer, watcher, _late = await _merged_then_late(tmp_path, "off")
        try:
            assert watcher._task is None  # never started
            assert await fixer.patient("TEMP1") is not None
        finally:
            await archive.close()

    asyncio.run(main())


def test_the_server_watches_as_the_setting_says(tmp_path: Path) -> None:
    async def main(mode: str) -> Any:
        app = await build_app(Settings(data_dir=tmp_path / mode, port=0, fsync=False, merged_patient_arrivals=mode))
        try:
            assert app.merged_arrivals is not None
            return app.merged_arrivals.mode, app.merged_arrivals._task is not None
        finally:
            await app.close(grace=1.0)

    assert asyncio.run(main("warn")) == ("warn", True)
    assert asyncio.run(main("off")) == ("off", False)
    with pytest.raises(ConfigError, match="merged_patient_arrivals"):
        Settings(data_dir=tmp_path, merged_patient_arrivals="always").validate()


def test_arrivals_while_stopped_are_handled_at_the_next_start_and_by_one_watcher(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The cursor is in the index (watch_cursors): what came under a merged-away ID while no watcher ran
    is found when one starts again; two watchers on one index (two nodes) handle it once between them."""

    async def main() -> None:
        settings = Settings(data_dir=tmp_path / "data", fsync=False)
        archive = await open_archive(settings)
        fixer = corrections(settings, archive)
        try:
            await _store(archive, "TEMP2", "1.2.826.0.1.3680043.10.544.1", 1)
            await _store(archive, "MRN2", "1.2.826.0.1.3680043.10.544.2", 1)
            await fixer.merge("TEMP2", "MRN2", "HL7 A40 from HIS")
            first = MergedArrivals(archive, fixer, "warn")
            await first.start()  # a first run starts at the journal's end
            assert await first.look() == 0
            await first.close()  # the server stops
            await _store(archive, "TEMP2", "1.2.826.0.1.3680043.10.544.3", 1)  # e.g. `minipacs import`
            one, two = MergedArrivals(archive, fixer, "warn"), MergedArrivals(archive, fixer, "warn")
            await one.start()
            await two.start()
            with caplog.at_level(logging.WARNING, logger="minipacs.core.merge_watch"):
                found = [await one.look(), await two.look()]
            assert found == [1, 0], found
            assert caplog.text.count("arrived under patient ID 'TEMP2'") == 1
            await one.close()
            await two.close()
        finally:
            await archive.close()

    asyncio.run(main())


def test_a_gap_a_transaction_may_still_fill_is_not_passed(tmp_path: Path) -> None:
    """Several nodes on one PostgreSQL index: a NewPatient row with a lower seq can become visible after a
    higher one. The watcher reads the journal as core/changes.py read_changes does and stops before a
    recent gap, so the late row is handled when it shows up (here: a row written with seq N+2 first, then
    the NewPatient row of a merged-away ID with seq N+1)."""
    import datetime as dt

    from minipacs.index.schema import Change

    async def main() -> None:
        settings = Settings(data_dir=tmp_path / "data", fsync=False)
        archive = await open_archive(settings)
        fixer = corrections(settings, archive)
        try:
            await _store(archive, "TEMP3", "1.2.826.0.1.3680043.10.545.1", 1)
            await _store(archive, "MRN3", "1.2.826.0.1.3680043.10.545.2", 1)
            await fixer.merge("TEMP3", "MRN3", "HL7 A40 from HIS")
            watcher = MergedArrivals(archive, fixer, "warn")
            await watcher.start()
            table = Change.__table__
            now = dt.datetime.now(dt.UTC)

            def row(seq: int, kind: str, uid: str) -> dict[str, object]:
                return {"seq": seq, "change_type": kind, "level": "patient", "uid": uid, "study_instance_uid": "",
                        "created_at": now, "reason": "", "node": "other"}  # fmt: skip

            top = await archive.read(lambda conn: conn.execute(table.select().order_by(table.c.seq.desc())).first())
            n = int(top.seq)  # type: ignore[union-attr]
            await archive.write(lambda conn: conn.execute(table.insert(), [row(n + 2, "NewPatient", "OTHER3")]))
            assert await watcher.look() == 0  # stopped before the gap at n + 1
            await archive.write(lambda conn: conn.execute(table.insert(), [row(n + 1, "NewPatient", "TEMP3")]))
            assert await watcher.look() == 1  # the late row, not passed
            assert await watcher.look() == 0
            await watcher.close()
        finally:
            await archive.close()

    asyncio.run(main())
