"""MPPS SCP (PS3.4 Annex F) over real loopback associations, pynetdicom as the modality.

Every refusal is checked for its status (and Offending Element / Error ID) and
for changing nothing in the index; the study completes once the COMPLETED step
and all its instances are in.
"""

from __future__ import annotations

import asyncio
import copy
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import evt

from minipacs.bootstrap import App
from minipacs.core.model import Origin
from minipacs.core.mpps import TRANSITIONS, InvalidAttributeValue, StepClosed, validate_set
from minipacs.core.worklist import Worklist
from minipacs.services.status import MPPS_ERROR_STATUS, status_for_mpps_error
from tests.dicomgen import write_ct
from tests.modality import MPPS_CLASS, completed, mpps_create, mpps_final, mpps_rows, serving, with_scu
from tests.worklist_data import entry

pytestmark = pytest.mark.interop
STUDY = "1.2.826.0.1.3680043.10.9.1"
SERIES = "1.2.826.0.1.3680043.10.9.1.1"


def _request(port: int, send: Any) -> tuple[int, Dataset]:
    """(Status, the response command set as received: Offending Element, Error ID, ...)."""
    received: list[Dataset] = []

    def on_recv(event: Any) -> None:
        received.append(event.message.command_set)

    def body(assoc: Any) -> int:
        status, _attrs = send(assoc)
        return int(status.Status)

    code = with_scu(port, body, [MPPS_CLASS], handlers=[(evt.EVT_DIMSE_RECV, on_recv)])
    return code, received[-1]


def n_create(port: int, ds: Dataset, uid: str | None) -> tuple[int, Dataset]:
    return _request(port, lambda assoc: assoc.send_n_create(ds, MPPS_CLASS, uid))


def n_set(port: int, ds: Dataset, uid: str) -> tuple[int, Dataset]:
    return _request(port, lambda assoc: assoc.send_n_set(ds, MPPS_CLASS, uid))


async def _scheduled(app: App) -> int:
    added = await Worklist(app.archive).add(
        entry("123456", "Doe^John", "ACC1", "CT", "CT01", "20240105", "083000", study_uid=STUDY)
    )
    return added.id


async def _wl_status(app: App, pk: int) -> str:
    found = await Worklist(app.archive).get(pk)
    assert found is not None
    return found.status


def test_create_links_worklist_then_complete_marks_study(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path) as app:
            pk = await _scheduled(app)
            uid = generate_uid()
            code, _ = await asyncio.to_thread(n_create, app.dicom.port, mpps_create(STUDY), uid)
            assert code == 0
            row = await mpps_rows(app, uid)
            assert row is not None and row["status"] == "IN PROGRESS" and row["worklist_pk"] == pk
            assert await _wl_status(app, pk) == "IN PROGRESS"

            sops = [generate_uid() for _ in range(2)]
            write_ct(tmp_path / "a.dcm", study_uid=STUDY, series_uid=SERIES, sop_uid=sops[0])
            await app.archive.import_file(tmp_path / "a.dcm", Origin("import"))
            code, _ = await asyncio.to_thread(n_set, app.dicom.port, mpps_final(SERIES, sops), uid)
            assert code == 0
            row = await mpps_rows(app, uid)
            assert row is not None and row["status"] == "COMPLETED" and row["referenced"] == "\\".join(sops)
            assert await _wl_status(app, pk) == "COMPLETED"
            assert STUDY not in await completed(app)  # one image still missing

            write_ct(tmp_path / "b.dcm", study_uid=STUDY, series_uid=SERIES, sop_uid=sops[1])
            await app.archive.import_file(tmp_path / "b.dcm", Origin("import"))  # the on_stored hook re-checks
            for _ in range(50):
                if STUDY in await completed(app):
                    break
                await asyncio.sleep(0.05)
            assert STUDY in await completed(app)

    asyncio.run(main())


def test_create_without_uid_gets_one_generated(tmp_path: Path) -> None:
    seen: list[str] = []

    def on_recv(event: Any) -> None:  # the N-CREATE-RSP names the instance we generated
        uid = event.message.command_set.get("AffectedSOPInstanceUID")
        if uid:
            seen.append(str(uid))

    def create(port: int) -> int:
        def body(assoc: Any) -> int:
            status, _attrs = assoc.send_n_create(mpps_create(STUDY), MPPS_CLASS, None)
            return int(status.Status)

        return with_scu(port, body, [MPPS_CLASS], handlers=[(evt.EVT_DIMSE_RECV, on_recv)])

    async def main() -> None:
        async with serving(tmp_path) as app:
            assert await asyncio.to_thread(create, app.dicom.port) == 0
            assert len(seen) == 1 and (await mpps_rows(app, seen[0])) is not None

    asyncio.run(main())


@pytest.mark.parametrize(
    ("drop", "status_value", "expected", "offending"),
    [
        (("PerformedStationAETitle",), "IN PROGRESS", 0x0120, 0x00400241),
        (("ScheduledStepAttributesSequence",), "IN PROGRESS", 0x0120, 0x00400270),
        ((), "COMPLETED", 0x0106, 0x00400252),
        ((), "", 0x0121, 0x00400252),
    ],
)
def test_create_refusals_change_nothing(
    tmp_path: Path, drop: tuple[str, ...], status_value: str, expected: int, offending: int
) -> None:
    async def main() -> None:
        async with serving(tmp_path) as app:
            pk = await _scheduled(app)
            uid = generate_uid()
            ds = mpps_create(STUDY, status=status_value, drop=drop)
            code, status = await asyncio.to_thread(n_create, app.dicom.port, ds, uid)
            assert code == expected
            assert status.OffendingElement == offending
            assert await mpps_rows(app, uid) is None
            assert await _wl_status(app, pk) == "SCHEDULED"

    asyncio.run(main())


def test_duplicate_create_is_0111(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path) as app:
            uid = generate_uid()
            assert (await asyncio.to_thread(n_create, app.dicom.port, mpps_create(STUDY), uid))[0] == 0
            before = await mpps_rows(app, uid)
            ds = mpps_create(STUDY)
            ds.PerformedProcedureStepDescription = "other"
            assert (await asyncio.to_thread(n_create, app.dicom.port, ds, uid))[0] == 0x0111
            assert await mpps_rows(app, uid) == before

    asyncio.run(main())


def test_set_refusals_change_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path) as app:
            port = app.dicom.port
            uid = generate_uid()
            assert (await asyncio.to_thread(n_create, port, mpps_create(STUDY), uid))[0] == 0
            # unknown SOP instance: 0x0112
            assert (await asyncio.to_thread(n_set, port, mpps_final(SERIES, []), generate_uid()))[0] == 0x0112
            before = await mpps_rows(app, uid)
            # not settable (Table F.7.2-1 "Not allowed"): 0x0106 with the Offending Element
            change = Dataset()
            change.PatientID = "999"
            code, status = await asyncio.to_thread(n_set, port, change, uid)
            assert code == 0x0106 and status.OffendingElement == 0x00100020
            # not a Performed Procedure Step Status value: 0x0106
            code, status = await asyncio.to_thread(n_set, port, mpps_final(SERIES, [], status="DONE"), uid)
            assert code == 0x0106 and status.OffendingElement == 0x00400252
            assert await mpps_rows(app, uid) == before
            # COMPLETED is final: 0x0110 with Error ID 0xA710
            assert (await asyncio.to_thread(n_set, port, mpps_final(SERIES, []), uid))[0] == 0
            done = await mpps_rows(app, uid)
            code, status = await asyncio.to_thread(n_set, port, mpps_final(SERIES, [], "DISCONTINUED"), uid)
            assert code == 0x0110 and status.ErrorID == 0xA710
            # PS3.4 Table F.7.2-2: this Error Comment, word for word
            assert status.ErrorComment == "Performed Procedure Step Object may no longer be updated"
            assert await mpps_rows(app, uid) == done

    asyncio.run(main())


def test_discontinued_step_sets_worklist_and_completes_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path) as app:
            pk = await _scheduled(app)
            uid = generate_uid()
            assert (await asyncio.to_thread(n_create, app.dicom.port, mpps_create(STUDY), uid))[0] == 0
            code, _ = await asyncio.to_thread(n_set, app.dicom.port, mpps_final(SERIES, [], "DISCONTINUED"), uid)
            assert code == 0 and await _wl_status(app, pk) == "DISCONTINUED"
            assert await completed(app) == set()

    asyncio.run(main())


@pytest.mark.parametrize(("current", "new"), [(c, n) for c in TRANSITIONS for n in TRANSITIONS])
def test_transition_table(current: str, new: str) -> None:
    change = mpps_final(SERIES, [], new)  # everything the final state needs (PS3.4 F.7.2.2.2)
    if new in TRANSITIONS[current]:
        assert validate_set(current, change, mpps_create(STUDY)) == new
    else:
        with pytest.raises(StepClosed if not TRANSITIONS[current] else InvalidAttributeValue):
            validate_set(current, change, mpps_create(STUDY))


# ------------------------------------------------------------------ final state (PS3.4 F.7.2.2.2)


def _without(keyword: str, where: str = "") -> Callable[[Dataset], None]:
    """Drop ``keyword`` from the N-SET (``where``: 'series' = the Performed Series item, 'ref' = its image)."""

    def edit(ds: Dataset) -> None:
        target = {
            "": ds,
            "series": ds.PerformedSeriesSequence[0] if "PerformedSeriesSequence" in ds else ds,
            "ref": ds.PerformedSeriesSequence[0].ReferencedImageSequence[0],
        }[where]
        delattr(target, keyword)

    return edit


def _value(keyword: str, value: Any) -> Callable[[Dataset], None]:
    def edit(ds: Dataset) -> None:
        with warnings.catch_warnings():  # pydicom warns about the malformed DA / TM we mean to send
            warnings.simplefilter("ignore")
            setattr(ds, keyword, value)

    return edit


# PS3.4 Table F.7.2-1 "Final State" column and PS3.7 10.1.3.1.9 (N-SET has 0x0121 but no 0x0120):
# (final status, edit of the N-SET, expected status, Offending Element)
FINAL_STATE_RULES = [
    ("COMPLETED", _without("PerformedProcedureStepEndDate"), 0x0121, 0x00400250),
    ("COMPLETED", _without("PerformedProcedureStepEndTime"), 0x0121, 0x00400251),
    ("COMPLETED", _value("PerformedProcedureStepEndDate", None), 0x0121, 0x00400250),  # the N-CREATE's empty one
    ("COMPLETED", _value("PerformedProcedureStepEndDate", "2024-01-05"), 0x0106, 0x00400250),
    ("COMPLETED", _value("PerformedProcedureStepEndDate", "20241305"), 0x0106, 0x00400250),
    ("COMPLETED", _value("PerformedProcedureStepEndTime", "2500"), 0x0106, 0x00400251),
    ("COMPLETED", _without("PerformedSeriesSequence"), 0x0121, 0x00400340),  # N-CREATE sent it empty
    ("COMPLETED", _value("PerformedSeriesSequence", []), 0x0121, 0x00400340),  # note 2: a series must exist
    ("COMPLETED", _without("SeriesInstanceUID", "series"), 0x0121, 0x0020000E),
    ("COMPLETED", _without("ProtocolName", "series"), 0x0121, 0x00181030),
    ("COMPLETED", _without("ReferencedSOPInstanceUID", "ref"), 0x0121, 0x00081155),
    ("COMPLETED", _without("ReferencedSOPClassUID", "ref"), 0x0121, 0x00081150),
    ("DISCONTINUED", _without("PerformedProcedureStepEndTime"), 0x0121, 0x00400251),
    ("DISCONTINUED", _value("PerformedSeriesSequence", []), 0x0121, 0x00400340),
    ("IN PROGRESS", _without("ProtocolName", "series"), 0x0121, 0x00181030),  # Type 1 in any N-SET
]


@pytest.mark.parametrize(("final", "edit", "expected", "offending"), FINAL_STATE_RULES)
def test_final_state_rules_refuse_and_change_nothing(
    tmp_path: Path, final: str, edit: Callable[[Dataset], None], expected: int, offending: int
) -> None:
    async def main() -> None:
        async with serving(tmp_path) as app:
            pk = await _scheduled(app)
            uid = generate_uid()
            assert (await asyncio.to_thread(n_create, app.dicom.port, mpps_create(STUDY), uid))[0] == 0
            before = await mpps_rows(app, uid)
            change = mpps_final(SERIES, [generate_uid()], final)
            edit(change)
            code, status = await asyncio.to_thread(n_set, app.dicom.port, change, uid)
            assert (code, status.OffendingElement) == (expected, offending), status.get("ErrorComment")
            assert await mpps_rows(app, uid) == before
            assert await _wl_status(app, pk) == "IN PROGRESS"
            assert await completed(app) == set()

    asyncio.run(main())


def test_final_state_counts_what_earlier_n_sets_and_the_n_create_sent(tmp_path: Path) -> None:
    """The final state is checked on the stored step merged with the N-SET (PS3.7 10.1.3)."""

    async def main() -> None:
        async with serving(tmp_path) as app:
            port = app.dicom.port
            uid = generate_uid()
            create = mpps_create(STUDY)
            create.PerformedProcedureStepEndTime = "090000"
            create.PerformedProcedureStepDiscontinuationReasonCodeSequence = []
            assert (await asyncio.to_thread(n_create, port, create, uid))[0] == 0
            progress = mpps_final(SERIES, [], "IN PROGRESS")
            del progress.PerformedProcedureStepEndTime
            assert (await asyncio.to_thread(n_set, port, progress, uid))[0] == 0
            end = Dataset()
            end.PerformedProcedureStepStatus = "DISCONTINUED"  # no reason: 3/3, optional
            code, status = await asyncio.to_thread(n_set, port, end, uid)
            assert code == 0, status.get("ErrorComment")
            row = await mpps_rows(app, uid)
            assert row is not None and row["status"] == "DISCONTINUED"

    asyncio.run(main())


@pytest.mark.parametrize(("kind", "code"), MPPS_ERROR_STATUS)
def test_status_table(kind: type[Exception], code: int) -> None:
    assert status_for_mpps_error(kind("x")) == code


@pytest.mark.parametrize(
    ("keyword", "value", "offending"),
    [
        ("PerformedProcedureStepStartDate", "2024-01-05", 0x00400244),
        ("PerformedProcedureStepStartTime", "2500", 0x00400245),
    ],
)
def test_create_with_a_malformed_start_is_0106(tmp_path: Path, keyword: str, value: str, offending: int) -> None:
    """PS3.4 Table F.7.2-1: the start date and time are Type 1 on N-CREATE; a value that is not a DA
    / TM (PS3.5 Table 6.2-1) is 0x0106 Invalid Attribute Value, as the end date and time already were
    at the final N-SET (it was stored, and the step's start unreadable)."""

    async def main() -> None:
        async with serving(tmp_path) as app:
            uid = generate_uid()
            ds = mpps_create(STUDY)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pydicom warns of the value it is asked to send
                setattr(ds, keyword, value)
            code, status = await asyncio.to_thread(n_create, app.dicom.port, ds, uid)
            assert (code, status.OffendingElement) == (0x0106, offending)
            assert await mpps_rows(app, uid) is None

    asyncio.run(main())


def test_create_links_the_open_entry_of_its_requested_procedure(tmp_path: Path) -> None:
    """PS3.3 C.4.13: the Scheduled Step Attributes item names the accession, the Requested Procedure ID
    and the Scheduled Procedure Step ID. The step linked the first entry of the accession whatever its
    state: a CANCELLED order went back onto the modality's list (IN PROGRESS) while the one scheduled
    again stayed SCHEDULED, and the wrong requested procedure of a two-procedure order was marked."""

    async def main() -> None:
        async with serving(tmp_path) as app:
            worklist = Worklist(app.archive)

            def scheduled(procedure: str) -> Dataset:
                ds = entry("123456", "Doe^John", "ACC1", "CT", "CT01", "20240105", "083000", study_uid=STUDY)
                ds.RequestedProcedureID = procedure
                ds.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID = f"S{procedure}"
                return ds

            cancelled = await worklist.add(scheduled("RPACC1"), status="CANCELLED")
            other = await worklist.add(scheduled("RP2"))
            again = await worklist.add(scheduled("RPACC1"))
            uid = generate_uid()
            ds = mpps_create(STUDY)
            ds.ScheduledStepAttributesSequence[0].ScheduledProcedureStepID = "SRPACC1"
            assert (await asyncio.to_thread(n_create, app.dicom.port, ds, uid))[0] == 0
            row = await mpps_rows(app, uid)
            assert row is not None and row["worklist_pk"] == again.id
            assert [await _wl_status(app, e.id) for e in (cancelled, other, again)] == [
                "CANCELLED",
                "SCHEDULED",
                "IN PROGRESS",
            ]

    asyncio.run(main())


def test_an_order_cancelled_during_the_step_stays_cancelled(tmp_path: Path) -> None:
    """The RIS cancels the order (CA) while the modality performs it: an N-SET that keeps the step
    IN PROGRESS put the CANCELLED entry back onto the modality's worklist (IN PROGRESS), and the final
    one made it COMPLETED. The step records what was done; the entry stays CANCELLED."""

    async def main() -> None:
        async with serving(tmp_path) as app:
            pk = await _scheduled(app)
            uid = generate_uid()
            assert (await asyncio.to_thread(n_create, app.dicom.port, mpps_create(STUDY), uid))[0] == 0
            assert await _wl_status(app, pk) == "IN PROGRESS"
            await Worklist(app.archive).set_status(pk, "CANCELLED")
            interim = Dataset()
            interim.PerformedProcedureStepDescription = "CT head, contrast"
            assert (await asyncio.to_thread(n_set, app.dicom.port, interim, uid))[0] == 0
            assert await _wl_status(app, pk) == "CANCELLED"
            sops = [generate_uid()]
            assert (await asyncio.to_thread(n_set, app.dicom.port, mpps_final(SERIES, sops), uid))[0] == 0
            row = await mpps_rows(app, uid)
            assert row is not None and row["status"] == "COMPLETED"
            assert await _wl_status(app, pk) == "CANCELLED"

    asyncio.run(main())


@pytest.mark.parametrize("uid", ["1.2.abc", "1.02.3", "1..2"])
def test_create_with_a_malformed_sop_instance_uid_is_0117(tmp_path: Path, uid: str) -> None:
    """PS3.7 Annex C, 0x0117 Invalid Object Instance: the SOP Instance UID breaks the construction rules of
    PS3.5 9.1. It was stored, and the modality then put it into every image's Referenced Performed
    Procedure Step Sequence."""

    async def main() -> None:
        async with serving(tmp_path) as app:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pynetdicom warns of the UID it is asked to send
                code, _ = await asyncio.to_thread(n_create, app.dicom.port, mpps_create(STUDY), uid)
            assert code == 0x0117
            assert await mpps_rows(app, uid) is None

    asyncio.run(main())


def test_an_n_set_in_another_character_set_does_not_replace_the_steps(tmp_path: Path) -> None:
    """PS3.4 F.7.2.2.3: the N-SET's Specific Character Set does not replace the step's; the step must
    reflect both. An N-CREATE in UTF-8 with a Japanese name and an N-SET in Latin-1 left a step that
    claimed ISO_IR 100 for a name Latin-1 cannot hold; it now says ISO_IR 192, which holds both."""
    from minipacs.core.worklist import from_text

    async def main() -> None:
        async with serving(tmp_path) as app:
            uid = generate_uid()
            ds = mpps_create(STUDY)
            ds.SpecificCharacterSet = "ISO_IR 192"
            ds.PatientName = "Yamada^Tarou=山田^太郎"
            assert (await asyncio.to_thread(n_create, app.dicom.port, ds, uid))[0] == 0
            change = Dataset()
            change.SpecificCharacterSet = "ISO_IR 100"
            change.PerformedProcedureStepDescription = "Scanner café"
            assert (await asyncio.to_thread(n_set, app.dicom.port, change, uid))[0] == 0
            row = await mpps_rows(app, uid)
            assert row is not None
            step = from_text(str(row["dataset"]))
            assert step.SpecificCharacterSet == "ISO_IR 192"
            assert (str(step.PatientName), step.PerformedProcedureStepDescription) == (
                "Yamada^Tarou=山田^太郎",
                "Scanner café",
            )

    asyncio.run(main())


def test_one_step_performing_two_requested_procedures_moves_both_entries(tmp_path: Path) -> None:
    """IHE RAD group case (PS3.3 C.4.13: one Scheduled Step Attributes item per requested procedure the
    step performs): both worklist entries go IN PROGRESS, then COMPLETED; only the first one moved."""

    async def main() -> None:
        async with serving(tmp_path) as app:
            worklist = Worklist(app.archive)
            first = await worklist.add(
                entry("123456", "Doe^John", "ACC1", "CT", "CT01", "20240105", "083000", study_uid=STUDY)
            )
            second = await worklist.add(entry("123456", "Doe^John", "ACC2", "CT", "CT01", "20240105", "084000"))
            ds = mpps_create(STUDY)
            other = Dataset()
            other.StudyInstanceUID = second.dataset.StudyInstanceUID
            other.AccessionNumber = "ACC2"
            ds.ScheduledStepAttributesSequence.append(other)
            uid = generate_uid()
            assert (await asyncio.to_thread(n_create, app.dicom.port, ds, uid))[0] == 0
            assert [await _wl_status(app, e.id) for e in (first, second)] == ["IN PROGRESS", "IN PROGRESS"]
            sops = [generate_uid()]
            assert (await asyncio.to_thread(n_set, app.dicom.port, mpps_final(SERIES, sops), uid))[0] == 0
            assert [await _wl_status(app, e.id) for e in (first, second)] == ["COMPLETED", "COMPLETED"]

    asyncio.run(main())


def test_an_n_set_repeating_the_n_create_unchanged_is_taken(tmp_path: Path) -> None:
    """PS3.4 Table F.7.2-1 marks Patient ID, Modality, the Scheduled Step Attributes Sequence... "Not
    allowed" in N-SET: they cannot be CHANGED. Some modalities send their whole step again in the
    N-SET that completes it; with the values unchanged nothing is changed, so the step completes
    (it was refused with 0x0106 and stayed IN PROGRESS forever, its worklist entry with it). A value
    that differs is still refused, with the Offending Element."""

    async def main() -> None:
        async with serving(tmp_path) as app:
            pk = await _scheduled(app)
            port, uid = app.dicom.port, generate_uid()
            created = mpps_create(STUDY)
            assert (await asyncio.to_thread(n_create, port, created, uid))[0] == 0
            whole = mpps_create(STUDY)
            for elem in mpps_final(SERIES, []):
                whole[elem.tag] = elem
            whole.PatientName = "Doe^John"  # as received, not as pydicom would hold a new PersonName
            changed = copy.deepcopy(whole)
            changed.PerformedStationAETitle = "CT99"
            code, status = await asyncio.to_thread(n_set, port, changed, uid)
            assert code == 0x0106 and status.OffendingElement == 0x00400241
            assert (await asyncio.to_thread(n_set, port, whole, uid))[0] == 0
            row = await mpps_rows(app, uid)
            assert row is not None and row["status"] == "COMPLETED" and await _wl_status(app, pk) == "COMPLETED"

    asyncio.run(main())


def test_an_entry_performed_by_two_steps_follows_both(tmp_path: Path) -> None:
    """Two MPPS for one scheduled step (PS3.4 F.1: the performed steps need not map one to one to the
    scheduled ones; modalities that report each part of an exam as a step of its own, or a step
    discontinued and performed again). The entry took the status of whichever step ended last:
    COMPLETED (off the modality's list) while the second was still acquiring, then DISCONTINUED
    though the first one completed. Now it stays IN PROGRESS while a step of it is, and is
    COMPLETED once one of them completed and none is in progress."""

    async def main() -> None:
        async with serving(tmp_path) as app:
            pk = await _scheduled(app)
            port, first, second = app.dicom.port, generate_uid(), generate_uid()
            for uid in (first, second):
                assert (await asyncio.to_thread(n_create, port, mpps_create(STUDY), uid))[0] == 0
            assert (await asyncio.to_thread(n_set, port, mpps_final(SERIES, []), first))[0] == 0
            assert await _wl_status(app, pk) == "IN PROGRESS"
            assert (await asyncio.to_thread(n_set, port, mpps_final(SERIES, [], "DISCONTINUED"), second))[0] == 0
            assert await _wl_status(app, pk) == "COMPLETED"

    asyncio.run(main())


def test_n_get_of_a_step_is_an_unrecognized_operation(tmp_path: Path) -> None:
    """PS3.4 F.7.2: the MPPS SOP Class is N-CREATE and N-SET; reading a step back (N-GET) is the
    Modality Performed Procedure Step Retrieve SOP Class (F.8), which is not offered: an N-GET on
    the MPPS context gets 0x0211 Unrecognized operation (PS3.7 C.4.3) and the association goes on."""

    async def main() -> None:
        async with serving(tmp_path) as app:
            uid = generate_uid()
            assert (await asyncio.to_thread(n_create, app.dicom.port, mpps_create(STUDY), uid))[0] == 0

            def get_then_set(assoc: Any) -> tuple[int, int]:
                got, _attrs = assoc.send_n_get([0x00400252], MPPS_CLASS, uid)
                done, _attrs = assoc.send_n_set(mpps_final(SERIES, []), MPPS_CLASS, uid)
                return int(got.Status), int(done.Status)

            assert await asyncio.to_thread(with_scu, app.dicom.port, get_then_set, [MPPS_CLASS]) == (0x0211, 0)

    asyncio.run(main())


@pytest.mark.parametrize(("empty", "expected"), [(True, 0x0121), (False, 0x0120)])
def test_a_scheduled_step_item_without_its_study_instance_uid(tmp_path: Path, empty: bool, expected: int) -> None:
    """PS3.4 Table F.7.2-1: Study Instance UID is Type 1 in each Scheduled Step Attributes item. Sent
    empty it is 0x0121 Missing attribute value, left out 0x0120 Missing attribute (PS3.7 C.5: the
    two differ, as for the attributes at the top level); an empty one was answered 0x0120 too."""

    async def main() -> None:
        async with serving(tmp_path) as app:
            ds, uid = mpps_create(STUDY), generate_uid()
            if empty:
                ds.ScheduledStepAttributesSequence[0].StudyInstanceUID = ""
            else:
                del ds.ScheduledStepAttributesSequence[0].StudyInstanceUID
            code, status = await asyncio.to_thread(n_create, app.dicom.port, ds, uid)
            assert (code, status.OffendingElement) == (expected, 0x0020000D)
            assert await mpps_rows(app, uid) is None

    asyncio.run(main())
