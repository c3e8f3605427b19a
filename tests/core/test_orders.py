"""Orders on the worklist (core/orders.py): core types in, core refusals out; no HL7 codes in the core."""

from __future__ import annotations

import ast
import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from minipacs.bootstrap import open_archive
from minipacs.config import Settings
from minipacs.core.errors import ArchiveError
from minipacs.core.orders import (
    PLANNERS,
    AmbiguousOrder,
    DuplicateOrder,
    InvalidOrder,
    Order,
    OrderControl,
    OrderRefused,
    UnknownOrder,
    apply_orders,
)
from minipacs.core.worklist import CANCELLED, Worklist
from tests.index.pg import postgres_schema_url

CORE = Path(__file__).resolve().parents[2] / "src" / "minipacs" / "core"


def order(control: OrderControl, accession: str = "ACC1", modality: str = "CT", **extra: str) -> Order:
    ds = Dataset()
    ds.PatientID = "PAT1"
    ds.PatientName = "Doe^John"
    if accession:
        ds.AccessionNumber = accession
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    sps = Dataset()
    sps.Modality = modality
    ds.ScheduledProcedureStepSequence = [sps]
    return Order(control, ds)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def index_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """The index the one-transaction tests run on: SQLite (the default) and PostgreSQL (savepoints)."""
    if request.param == "sqlite":
        yield None
    else:
        with postgres_schema_url() as url:
            yield url


def run(
    tmp: Path, orders: list[list[Order]], url: str | None = None
) -> tuple[list[str | ArchiveError], list[tuple[str, str]]]:
    """Apply each message (a list of orders) in turn; what each gave, and the worklist at the end."""

    async def main() -> tuple[list[str | ArchiveError], list[tuple[str, str]]]:
        settings = Settings(data_dir=tmp / "data", fsync=False)
        if url is not None:
            settings = Settings(data_dir=tmp / "data", fsync=False, index_url=url)
        archive = await open_archive(settings)
        try:
            worklist = Worklist(archive)
            outcomes: list[str | ArchiveError] = []
            for message in orders:
                try:
                    outcomes.append(await apply_orders(worklist, message))
                except ArchiveError as exc:  # a refusal (OrderRefused) or a failure
                    outcomes.append(exc)
            entries = [(e.accession_number, e.status) for e in await worklist.list()]
            return outcomes, entries
        finally:
            await archive.close()

    return asyncio.run(main())


def test_every_control_has_a_planner() -> None:
    assert set(PLANNERS) == set(OrderControl)


def test_new_cancel_change_and_their_refusals(tmp_path: Path) -> None:
    outcomes, entries = run(
        tmp_path,
        [
            [order(OrderControl.NEW)],
            [order(OrderControl.NEW)],  # duplicate
            [order(OrderControl.CHANGE, accession="NOPE")],  # unknown
            [order(OrderControl.CHANGE, modality="MR")],
            [order(OrderControl.CANCEL, accession="", PlacerOrderNumberImagingServiceRequest="")],  # nothing to find by
            [order(OrderControl.CANCEL)],
            [order(OrderControl.CANCEL)],  # nothing open any more
        ],
    )
    assert isinstance(outcomes[0], str) and "scheduled" in outcomes[0]
    refused = {i: o for i, o in enumerate(outcomes) if isinstance(o, OrderRefused)}
    assert sorted(refused) == [1, 2, 4, 6]
    assert type(refused[1]) is DuplicateOrder and refused[1].control == OrderControl.NEW
    assert type(refused[2]) is UnknownOrder and refused[2].control == OrderControl.CHANGE
    assert type(refused[4]) is InvalidOrder and refused[4].keyword == "AccessionNumber"
    assert type(refused[6]) is UnknownOrder and refused[6].control == OrderControl.CANCEL
    assert "changed" in str(outcomes[3]) and "cancelled" in str(outcomes[5])
    assert entries == [("ACC1", CANCELLED)]


def test_a_refused_order_stops_the_whole_message(tmp_path: Path, index_url: str | None) -> None:
    outcomes, entries = run(
        tmp_path, [[order(OrderControl.NEW, "ACC1"), order(OrderControl.CANCEL, "ACC2")]], index_url
    )
    assert isinstance(outcomes[0], UnknownOrder) and entries == []


def test_a_change_matching_two_entries_must_say_which(tmp_path: Path) -> None:
    async def two() -> OrderRefused | str:
        archive = await open_archive(Settings(data_dir=tmp_path / "two", fsync=False))
        try:
            worklist = Worklist(archive)
            await worklist.add(order(OrderControl.NEW, RequestedProcedureID="RP1").dataset)
            await worklist.add(order(OrderControl.NEW, RequestedProcedureID="RP2").dataset)
            try:
                return await apply_orders(worklist, [order(OrderControl.CHANGE, modality="MR")])
            except OrderRefused as exc:
                return exc
        finally:
            await archive.close()

    refused = asyncio.run(two())
    assert isinstance(refused, AmbiguousOrder) and refused.keyword == "RequestedProcedureID"


def test_generated_procedure_ids_survive_a_change_that_does_not_send_them(tmp_path: Path) -> None:
    """Issue 12 item 7: a new order without IDs gets them (Type 1, PS3.4 Table K.6-1); a change
    without them keeps the ones the modalities already have, not new ones."""

    async def main() -> None:
        archive = await open_archive(Settings(data_dir=tmp_path / "data", fsync=False))
        try:
            worklist = Worklist(archive)
            await apply_orders(worklist, [order(OrderControl.NEW)])
            (first,) = await worklist.list()
            rp = str(first.dataset.RequestedProcedureID)
            assert rp and first.dataset.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID == rp
            await apply_orders(worklist, [order(OrderControl.CHANGE, PatientName="Doe^Jim")])
            (changed,) = await worklist.list()
            assert str(changed.dataset.PatientName) == "Doe^Jim" and changed.dataset.RequestedProcedureID == rp
            assert changed.dataset.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID == rp
        finally:
            await archive.close()

    asyncio.run(main())


@pytest.mark.parametrize("path", sorted(CORE.glob("*.py")), ids=lambda p: p.name)
def test_the_core_speaks_no_hl7(path: Path) -> None:
    """No core module imports the HL7 edge or carries HL7 acknowledgement codes (issue 9 point 5)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    modules = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in modules if m.startswith("minipacs.hl7")]
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    names |= {a.arg for n in ast.walk(tree) if isinstance(n, ast.arguments) for a in n.kwonlyargs + n.args}
    assert not names & {"ack_code", "error_code", "HL7Error"}


# ------------------------------------------------------------------ one message, one transaction


def test_orders_of_one_message_see_the_ones_before_them(tmp_path: Path, index_url: str | None) -> None:
    """A message's orders apply in order in ONE transaction: a new order and its cancel in one message
    work, and the same new order twice in one message is a duplicate (both were scheduled when every
    order was checked against the worklist as it was before the message)."""
    outcomes, entries = run(
        tmp_path,
        [
            [order(OrderControl.NEW, "ACC1"), order(OrderControl.CANCEL, "ACC1")],
            [order(OrderControl.NEW, "ACC2"), order(OrderControl.NEW, "ACC2")],
            [order(OrderControl.NEW, "ACC3"), order(OrderControl.CHANGE, "ACC3", modality="MR")],
        ],
        index_url,
    )
    assert "cancelled" in str(outcomes[0])
    assert isinstance(outcomes[1], DuplicateOrder)
    assert "changed" in str(outcomes[2])
    assert entries == [("ACC1", CANCELLED), ("ACC3", "SCHEDULED")]


def test_requested_procedures_of_one_order_are_entries_of_their_own(tmp_path: Path) -> None:
    """IHE RAD TF-1 4.1 / PS3.3 C.30: one order (accession number) may hold several requested
    procedures, scheduled one message each or together; a duplicate is the same requested procedure,
    and a cancel naming one cancels that one only."""
    outcomes, entries = run(
        tmp_path,
        [
            [order(OrderControl.NEW, RequestedProcedureID="RP1")],
            [order(OrderControl.NEW, RequestedProcedureID="RP2")],
            [order(OrderControl.NEW, RequestedProcedureID="RP2")],  # duplicate
            [
                order(OrderControl.NEW, "ACC2", RequestedProcedureID="A"),
                order(OrderControl.NEW, "ACC2", RequestedProcedureID="B"),
            ],
            [order(OrderControl.CANCEL, RequestedProcedureID="RP1")],
            [order(OrderControl.CANCEL, RequestedProcedureID="RP9")],  # no such requested procedure
        ],
    )
    assert [type(o).__name__ for o in outcomes] == ["str", "str", "DuplicateOrder", "str", "str", "UnknownOrder"]
    assert entries == [("ACC1", CANCELLED), ("ACC1", "SCHEDULED"), ("ACC2", "SCHEDULED"), ("ACC2", "SCHEDULED")]


def test_a_failure_part_way_through_the_writes_rolls_the_whole_message_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, index_url: str | None
) -> None:
    """The second order's INSERT fails inside the writer: the first order's row goes too (it was
    committed on its own when orders were written one at a time)."""
    from minipacs.index import worklist_repo

    real = worklist_repo.insert_worklist
    calls: list[int] = []

    def second_fails(conn: object, values: object) -> int:
        calls.append(1)
        if len(calls) % 2 == 0:
            raise RuntimeError("disk I/O error")
        return real(conn, values)  # type: ignore[arg-type]

    monkeypatch.setattr(worklist_repo, "insert_worklist", second_fails)
    outcomes, entries = run(tmp_path, [[order(OrderControl.NEW, "ACC1"), order(OrderControl.NEW, "ACC2")]], index_url)
    assert "internal error: RuntimeError" in str(outcomes[0]) and entries == []
