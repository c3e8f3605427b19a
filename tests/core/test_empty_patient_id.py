"""Instances without a Patient ID are not merged into one patient (issue 12 item 5).

An empty Patient ID (or one of spaces) is no key: each study of such instances has its own
patient (index/repository.py ``patient_key``), with its own name, birth date and sex, and the
instances of one study share it. Queries answer PatientID empty, never the internal key.
Migration 0009 splits the patients that older versions merged. SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import sqlalchemy as sa
from alembic import command
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from minipacs.bootstrap import open_archive
from minipacs.config import Settings
from minipacs.core.archive import Archive
from minipacs.core.changes import read_changes
from minipacs.core.delete import delete_resource
from minipacs.core.errors import NotFound
from minipacs.core.model import Origin
from minipacs.core.query import query
from minipacs.dicom.levels import PATIENT_ROOT, STUDY_ROOT
from minipacs.index.database import alembic_config, create_index_engine
from tests.dicomgen import write_ct
from tests.index.pg import postgres_schema_url

ORIGIN = Origin("import", "", "", "", 0)


async def _store(archive: Archive, tmp: Path, study: str | None = None, **kw: Any) -> str:
    study = study or generate_uid()
    with pydicom.config.disable_value_validation():
        path = write_ct(tmp / f"{generate_uid()}.dcm", study_uid=study, **kw)
    await archive.import_file(path, ORIGIN)
    return study


async def _find(archive: Any, level: str, model: Any = STUDY_ROOT, **keys: str) -> list[dict[str, str]]:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    wanted = {"PatientName": "", "PatientID": "", "PatientBirthDate": "", "PatientSex": "", **keys}
    if level == "STUDY":
        wanted.setdefault("StudyInstanceUID", "")
    else:
        wanted.setdefault("NumberOfPatientRelatedStudies", "")
        wanted.setdefault("NumberOfPatientRelatedInstances", "")
    for keyword, value in wanted.items():
        setattr(ds, keyword, value)
    found = [m async for m in query(archive, None, ds, model=model, relational=True)]
    return [
        {elem.keyword: "" if elem.value is None else str(elem.value) for elem in m if elem.keyword in wanted}
        for m in found
    ]


def _run(tmp_path: Path, index_url: str, body: Any) -> Any:
    async def main() -> Any:
        archive = await open_archive(Settings(data_dir=tmp_path / "data", index_url=index_url, fsync=False))
        try:
            return await body(archive)
        finally:
            await archive.close()

    return asyncio.run(main())


def test_studies_without_patient_id_stay_apart_and_are_found_by_their_own_names(tmp_path: Path, index_url: str) -> None:
    async def body(archive: Archive) -> None:
        first = await _store(
            archive, tmp_path, patient_id="", patient_name="Anonymized", PatientBirthDate="", PatientSex=""
        )
        second = await _store(
            archive, tmp_path, patient_id="", patient_name="Roe^Jane", PatientBirthDate="19800202", PatientSex="F"
        )
        third = await _store(
            archive, tmp_path, patient_id="   ", patient_name="Anonymized", PatientBirthDate="", PatientSex=""
        )  # only spaces: no Patient ID either
        # Patient Root, PATIENT level, PatientID universal: each is its own patient
        patients = await _find(archive, "PATIENT", PATIENT_ROOT)
        assert sorted(
            (
                p["PatientName"],
                p["PatientID"],
                p["PatientBirthDate"],
                p["PatientSex"],
                p["NumberOfPatientRelatedStudies"],
            )
            for p in patients
        ) == [("Anonymized", "", "", "", "1"), ("Anonymized", "", "", "", "1"), ("Roe^Jane", "", "19800202", "F", "1")]
        # C-FIND by each real name finds its own study, answering its own attributes
        found = await _find(archive, "STUDY", PatientName="Roe^Jane")
        assert [(f["StudyInstanceUID"], f["PatientName"], f["PatientID"], f["PatientBirthDate"]) for f in found] == [
            (second, "Roe^Jane", "", "19800202")
        ]
        found = await _find(archive, "STUDY", PatientName="Anonymized")
        assert sorted(f["StudyInstanceUID"] for f in found) == sorted([first, third])
        assert {f["PatientName"] for f in await _find(archive, "STUDY", StudyInstanceUID=second)} == {"Roe^Jane"}
        # PatientID matching: an empty key is universal; no value equals the internal key
        assert len(await _find(archive, "STUDY", PatientID="*study*")) == 0

    _run(tmp_path, index_url, body)


def test_instances_of_one_study_without_patient_id_share_one_patient(tmp_path: Path, index_url: str) -> None:
    async def body(archive: Archive) -> None:
        study = await _store(archive, tmp_path, patient_id="", patient_name="Anonymized")
        await _store(archive, tmp_path, study, patient_id="", patient_name="Anonymized")
        await _store(archive, tmp_path, study, patient_id="", patient_name="Anonymized", series_uid=generate_uid())
        patients = await _find(archive, "PATIENT", PATIENT_ROOT)
        assert [(p["NumberOfPatientRelatedStudies"], p["NumberOfPatientRelatedInstances"]) for p in patients] == [
            ("1", "3")
        ]

    _run(tmp_path, index_url, body)


def test_a_patient_id_still_joins_the_studies_of_one_patient(tmp_path: Path, index_url: str) -> None:
    async def body(archive: Archive) -> None:
        await _store(archive, tmp_path, patient_id="P1", patient_name="Doe^John")
        await _store(archive, tmp_path, patient_id="P1", patient_name="Doe^John")
        await _store(archive, tmp_path, patient_id="P1", patient_name="Doe^John", IssuerOfPatientID="OTHER")
        patients = await _find(archive, "PATIENT", PATIENT_ROOT, IssuerOfPatientID="")
        assert sorted(
            (p["PatientID"], p["IssuerOfPatientID"], p["NumberOfPatientRelatedStudies"]) for p in patients
        ) == [("P1", "", "2"), ("P1", "OTHER", "1")]

    _run(tmp_path, index_url, body)


def test_journal_and_deletion_name_such_a_patient_by_its_study(tmp_path: Path, index_url: str) -> None:
    async def body(archive: Archive) -> None:
        first = await _store(archive, tmp_path, patient_id="", patient_name="Anonymized")
        second = await _store(archive, tmp_path, patient_id="", patient_name="Roe^Jane")
        changes, _, _ = await archive.read(lambda conn: read_changes(conn, 0, 100))
        assert [(c.uid, c.study) for c in changes if c.type == "NewPatient"] == [("", first), ("", second)]
        with pytest.raises(NotFound, match="empty Patient ID names no patient"):
            await delete_resource(archive, "patient", " ")
        seq = changes[-1].seq
        assert (await delete_resource(archive, "study", first)).instances == 1
        deleted, _, _ = await archive.read(lambda conn: read_changes(conn, seq, 100))
        assert [(c.level, c.uid, c.study) for c in deleted if c.level in ("patient", "study")] == [
            ("study", first, first),
            ("patient", "", first),
        ]
        patients = await _find(archive, "PATIENT", PATIENT_ROOT)
        assert [p["PatientName"] for p in patients] == ["Roe^Jane"]
        # the same study arriving again gets a patient again
        await _store(archive, tmp_path, first, patient_id="", patient_name="Anonymized")
        assert len(await _find(archive, "PATIENT", PATIENT_ROOT)) == 2

    _run(tmp_path, index_url, body)


# ------------------------------------------------------------------ migration 0009


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def old_index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.sqlite3'}"
    else:
        with postgres_schema_url() as url:
            yield url


def _insert(conn: sa.Connection, table: str, **values: Any) -> int:
    columns = ", ".join(values)
    marks = ", ".join(f":{name}" for name in values)
    return int(
        conn.execute(sa.text(f"INSERT INTO {table} ({columns}) VALUES ({marks}) RETURNING id"), values).scalar_one()
    )


def _old_study(
    conn: sa.Connection,
    patient_pk: int,
    study_uid: str,
    name: str | None,
    now: dt.datetime,
    birth: str = "",
    sex: str = "",
) -> None:
    """A study with one instance as revision 0008 filed it, and its stored metadata (unless ``name`` is None)."""
    study = _insert(
        conn,
        "studies",
        study_instance_uid=study_uid,
        patient_pk=patient_pk,
        study_date_raw="",
        study_time_raw="",
        accession_number="",
        study_id="",
        study_description="",
        referring_physician_name="",
        referring_physician_name_norm="",
        created_at=now,
        updated_at=now,
    )
    series = _insert(
        conn,
        "series",
        series_instance_uid=study_uid + ".1",
        study_pk=study,
        modality="CT",
        series_description="",
        body_part_examined="",
        series_date_raw="",
        created_at=now,
    )
    sop = study_uid + ".1.1"
    _insert(
        conn,
        "instances",
        sop_instance_uid=sop,
        series_pk=series,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        blob_key=f"{sop}.dcm",
        size=1,
        received_at=now,
        origin_kind="import",
        calling_aet="",
        called_aet="",
        peer_host="",
    )
    if name is not None:
        model = {
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": name}]},
            "00100030": {"vr": "DA", **({"Value": [birth]} if birth else {})},
            "00100040": {"vr": "CS", **({"Value": [sex]} if sex else {})},
        }
        conn.execute(
            sa.text("INSERT INTO instance_metadata (sop_instance_uid, json, created_at) VALUES (:s, :j, :t)"),
            {"s": sop, "j": json.dumps(model), "t": now},
        )


def test_migration_0009_splits_the_patient_merged_by_an_empty_patient_id(tmp_path: Path, old_index: str) -> None:
    now = dt.datetime.now(dt.UTC)
    engine = create_index_engine(old_index)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0008")
        patient = {
            "issuer_of_patient_id": "",
            "patient_name": "Anonymized",
            "patient_name_norm": "anonymized",
            "patient_birth_date_raw": "",
            "patient_sex": "",
            "created_at": now,
        }
        merged = _insert(conn, "patients", patient_id="", **patient)
        _old_study(conn, merged, "1.2.3.1", "Anonymized", now)
        _old_study(conn, merged, "1.2.3.2", "Roe^Jane", now, "19800202", "F")
        _old_study(conn, merged, "1.2.3.3", None, now)  # no stored metadata: keeps the merged values
        real = _insert(
            conn,
            "patients",
            patient_id="P1",
            **{**patient, "patient_name": "Doe^John", "patient_name_norm": "doe^john"},
        )
        _old_study(conn, real, "1.2.4.1", "Doe^John", now)
        _old_study(conn, real, "1.2.4.2", "Doe^John", now)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "head")
    engine.dispose()

    async def body(archive: Archive) -> None:
        patients = await _find(archive, "PATIENT", PATIENT_ROOT)
        assert sorted(
            (
                p["PatientID"],
                p["PatientName"],
                p["PatientBirthDate"],
                p["PatientSex"],
                p["NumberOfPatientRelatedStudies"],
            )
            for p in patients
        ) == [
            ("", "Anonymized", "", "", "1"),
            ("", "Anonymized", "", "", "1"),
            ("", "Roe^Jane", "19800202", "F", "1"),
            ("P1", "Doe^John", "", "", "2"),
        ]
        found = await _find(archive, "STUDY", PatientName="Roe^Jane", PatientBirthDate="19800202")
        assert [f["StudyInstanceUID"] for f in found] == ["1.2.3.2"]
        # a new instance of a split study joins that study's patient; one of a new study gets its own
        await _store(archive, tmp_path, "1.2.3.2", patient_id="", patient_name="Roe^Jane")
        await _store(archive, tmp_path, "1.2.3.9", patient_id="", patient_name="Anonymized")
        patients = await _find(archive, "PATIENT", PATIENT_ROOT, PatientID="")
        assert sorted(p["NumberOfPatientRelatedInstances"] for p in patients if not p["PatientID"]) == [
            "1",
            "1",
            "1",
            "2",
        ]

    _run(tmp_path, old_index, body)
