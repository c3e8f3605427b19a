"""Person-name matching ignores what PS3.5 6.2.1.1 makes insignificant (issue 12 item 10):
trailing empty components and component groups. C-FIND (the query engine), QIDO-RS and the
Python matcher of file keys agree; migration 0008 recomputes names stored before."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pydicom
import pytest
import sqlalchemy as sa
from alembic import command
from pydicom.dataset import Dataset

from minipacs.bootstrap import open_archive
from minipacs.config import Settings
from minipacs.core.model import Origin
from minipacs.core.query import query
from minipacs.dicom.levels import STUDY_ROOT
from minipacs.dicom.values import normalise_name
from minipacs.index.matching import Condition, Matching, python_matches
from tests.dicomgen import write_ct

STORED = "Wang^XiaoDong=王^小東="


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Wang^XiaoDong=王^小東=", "Wang^XiaoDong=王^小東"),
        ("Doe^John^^^", "Doe^John"),
        ("Doe^John^^=", "doe^john"),
        ("Doe^John\\Roe^Jane^^", "Doe^John\\Roe^Jane"),
    ],
)
def test_insignificant_trailing_parts_are_dropped(a: str, b: str) -> None:
    assert normalise_name(a) == normalise_name(b)


def test_significant_parts_stay() -> None:
    assert normalise_name("Doe^John") != normalise_name("Doe")
    assert normalise_name("=王^小東") != normalise_name("")  # an empty first group is not trailing
    assert normalise_name("Doe^^John") == "doe^^john"  # empty components inside are kept


@pytest.mark.parametrize("pattern", ["Wang^XiaoDong=王^小東", "*小東", "wang*", STORED])
def test_python_matcher(pattern: str) -> None:
    kind = Matching.WILDCARD if "*" in pattern else Matching.SINGLE
    assert python_matches(Condition(kind, (pattern,)), "PN", STORED)


def test_cfind_by_the_name_without_its_trailing_group(tmp_path: Path) -> None:
    path = write_ct(
        tmp_path / "wang.dcm",
        patient_id="W1",
        patient_name=STORED,
        SpecificCharacterSet="ISO_IR 192",
        ReferringPhysicianName="Li^Na^^",
    )

    async def scenario() -> dict[str, int]:
        archive = await open_archive(Settings(data_dir=tmp_path / "data", fsync=False))
        try:
            await archive.import_file(path, Origin("import", "", "", "", 0))
            counts = {}
            for key, value in (
                ("PatientName", "Wang^XiaoDong=王^小東"),
                ("PatientName", "*小東"),
                ("PatientName", STORED),
                ("ReferringPhysicianName", "Li^Na"),
                ("PatientName", "Wang^XiaoDong=王^小西"),
            ):
                ds = Dataset()
                ds.QueryRetrieveLevel = "STUDY"
                ds.SpecificCharacterSet = "ISO_IR 192"
                with pydicom.config.disable_value_validation():
                    setattr(ds, key, value)
                counts[f"{key}={value}"] = len([m async for m in query(archive, None, ds, model=STUDY_ROOT)])
            return counts
        finally:
            await archive.close()

    counts = asyncio.run(scenario())
    assert counts == {
        "PatientName=Wang^XiaoDong=王^小東": 1,
        "PatientName=*小東": 1,
        f"PatientName={STORED}": 1,
        "ReferringPhysicianName=Li^Na": 1,
        "PatientName=Wang^XiaoDong=王^小西": 0,
    }


def test_migration_0008_recomputes_names_stored_before(tmp_path: Path) -> None:
    from minipacs.index.database import alembic_config

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0007")
        conn.execute(
            sa.text(
                "INSERT INTO patients (patient_id, issuer_of_patient_id, patient_name, "
                "patient_name_norm, patient_birth_date_raw, patient_sex, created_at) "
                "VALUES ('W1', '', :n, :old, '', '', CURRENT_TIMESTAMP)"
            ),
            {"n": STORED, "old": STORED.casefold()},
        )
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "head")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT patient_name_norm FROM patients")).scalar() == "wang^xiaodong=王^小東"
    engine.dispose()
