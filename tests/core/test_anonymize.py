"""Anonymize stored resources (core/anonymize.py) on SQLite and PostgreSQL: through the ingest path,
consistent across studies and runs, the mapping stored, original kept or deleted, ZIP output, the
job kind, dciodvfy on the output, and no identifying value left in the stored bytes."""

from __future__ import annotations

import asyncio
import io
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pydicom
import pytest

from minipacs.core.anonymize import (
    ANONYMIZE,
    Anonymizer,
    AnonymizeRequest,
    load_key,
    register_anonymize_job,
)
from minipacs.core.archive import Archive
from minipacs.core.deid import Mapping, Pseudonyms, deidentify
from minipacs.core.errors import NotFound
from minipacs.core.jobs import JobQueue, JobSettings, JobState
from minipacs.core.model import Origin
from minipacs.core.retrieve import StoredInstance, select_instances
from minipacs.index.anonymization_repo import list_mappings
from tests.dicomgen import make_ct

KEY = b"anonymize-test-key-0123456789"
DCIODVFY = Path("/usr/bin/dciodvfy")
IDENTIFYING = [
    "Roe^Richard",
    "Richard",
    "PID-7781",
    "ACC-5521",
    "General Hospital Of Nowhere",
    "Dr^Referrer",
    "19650312",
]


def conformant_ct(study: str, series: str, sop: str, **kw: Any) -> pydicom.Dataset:
    """A CT that dciodvfy finds complete, with identifying values in it."""
    ds = make_ct(
        study,
        series,
        sop,
        patient_id="PID-7781",
        patient_name="Roe^Richard",
        PatientBirthDate="19650312",
        PatientSex="M",
        AccessionNumber="ACC-5521",
        InstitutionName="General Hospital Of Nowhere",
        ReferringPhysicianName="Dr^Referrer",
        StudyDate="20240105",
        StudyTime="101500",
        StudyID="S77",
        ImageType=["ORIGINAL", "PRIMARY", "AXIAL"],
        FrameOfReferenceUID=study + ".9",
        PositionReferenceIndicator="",
        ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
        ImagePositionPatient=[0, 0, 0],
        PixelSpacing=[0.5, 0.5],
        SliceThickness="1",
        RescaleIntercept="0",
        RescaleSlope="1",
        AcquisitionNumber="1",
        KVP="120",
        Manufacturer="ACME",
        PatientPosition="HFS",
        **kw,
    )
    return ds


async def store(archive: Archive, tmp: Path, study: str, series: str, count: int, **kw: Any) -> None:
    for n in range(count):
        path = tmp / f"{study}-{series}-{n}.dcm"
        conformant_ct(study, series, f"{series}.{n + 1}", InstanceNumber=str(n + 1), **kw).save_as(
            path, enforce_file_format=True
        )
        await archive.import_file(path, Origin("import"))


def test_study_anonymized_into_the_archive_consistently(with_archive: Any, tmp_path: Path) -> None:
    async def body(archive: Archive) -> None:
        await store(archive, tmp_path, "1.2.826.0.1.3680043.10.9.1", "1.2.826.0.1.3680043.10.9.1.1", 3)
        await store(archive, tmp_path, "1.2.826.0.1.3680043.10.9.2", "1.2.826.0.1.3680043.10.9.2.1", 1)
        anonymizer = Anonymizer(archive, KEY)
        first = await anonymizer.run(AnonymizeRequest("study", "1.2.826.0.1.3680043.10.9.1"))
        assert first.instances == 3 and len(first.studies) == 1 and not first.failures
        new = await select_instances(archive, "STUDY", {"StudyInstanceUID": first.studies[0]})
        assert len(new) == 3
        data = b"".join(_read(i) for i in new)
        original = await select_instances(archive, "STUDY", {"StudyInstanceUID": "1.2.826.0.1.3680043.10.9.1"})
        before = b"".join(_read(i) for i in original)
        for value in IDENTIFYING:
            assert value.encode() in before and value.encode() not in data, value  # needs the mapping
        for uid in ("1.2.826.0.1.3680043.10.9.1", "1.2.826.0.1.3680043.10.9.1.1"):
            assert uid.encode() in before and uid.encode() not in data
        ds = pydicom.dcmread(io.BytesIO(_read(new[0])))
        assert ds.PatientID == first.patient and ds.PatientIdentityRemoved == "YES"
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        # again: the same UIDs, nothing new stored; another study of the patient: the same pseudonym
        again = await anonymizer.run(AnonymizeRequest("study", "1.2.826.0.1.3680043.10.9.1"))
        assert again.studies == first.studies
        assert len(await select_instances(archive, "STUDY", {"StudyInstanceUID": first.studies[0]})) == 3
        other = await Anonymizer(archive, KEY).run(AnonymizeRequest("study", "1.2.826.0.1.3680043.10.9.2"))
        assert other.patient == first.patient and other.studies != first.studies
        # the original is kept, the mapping is stored
        assert len(await select_instances(archive, "STUDY", {"StudyInstanceUID": "1.2.826.0.1.3680043.10.9.1"})) == 3
        rows, total = await archive.read(lambda c: list_mappings(c, value=first.patient))
        assert ("patient_id", "PID-7781") in {(r["kind"], r["original"]) for r in rows} and total >= 1
        rows, _ = await archive.read(lambda c: list_mappings(c, kind="uid", value=first.studies[0]))
        assert [r["original"] for r in rows] == ["1.2.826.0.1.3680043.10.9.1"]

    with_archive(body, fsync=False)


def test_series_with_delete_original_and_a_zip(with_archive: Any, tmp_path: Path) -> None:
    async def body(archive: Archive) -> None:
        await store(archive, tmp_path, "1.2.826.0.1.3680043.10.8.1", "1.2.826.0.1.3680043.10.8.1.1", 2)
        await store(archive, tmp_path, "1.2.826.0.1.3680043.10.8.1", "1.2.826.0.1.3680043.10.8.1.2", 1)
        anonymizer = Anonymizer(archive, KEY)
        out = tmp_path / "out.zip"
        zipped = await anonymizer.run(AnonymizeRequest("series", "1.2.826.0.1.3680043.10.8.1.2"), zip_path=out)
        with zipfile.ZipFile(out) as z:
            names = z.namelist()
            assert len(names) == 1 and names[0].startswith(zipped.studies[0] + "/")
            assert b"PID-7781" not in z.read(names[0])
        assert not await select_instances(archive, "SERIES", {"SeriesInstanceUID": zipped.series[0]})
        moved = await anonymizer.run(AnonymizeRequest("series", "1.2.826.0.1.3680043.10.8.1.1", keep_original=False))
        assert moved.original_deleted and moved.instances == 2
        assert not await select_instances(archive, "SERIES", {"SeriesInstanceUID": "1.2.826.0.1.3680043.10.8.1.1"})
        assert len(await select_instances(archive, "SERIES", {"SeriesInstanceUID": moved.series[0]})) == 2
        with pytest.raises(NotFound, match="no stored instance"):
            await anonymizer.run(AnonymizeRequest("series", "1.2.826.0.1.3680043.10.8.1.1"))

    with_archive(body, fsync=False)


def test_patient_level_as_a_job(with_archive: Any, tmp_path: Path) -> None:
    async def body(archive: Archive) -> None:
        await store(archive, tmp_path, "1.2.826.0.1.3680043.10.7.1", "1.2.826.0.1.3680043.10.7.1.1", 1)
        await store(archive, tmp_path, "1.2.826.0.1.3680043.10.7.2", "1.2.826.0.1.3680043.10.7.2.1", 1)
        queue = JobQueue(archive, JobSettings(runner="anon-test", poll_seconds=0.05, progress_seconds=0.05))
        register_anonymize_job(queue, Anonymizer(archive, KEY))
        await queue.start()
        try:
            request = AnonymizeRequest("patient", "PID-7781", frozenset({"retain-long-modified-dates"}))
            job = await queue.submit(ANONYMIZE, "anonymize patient", request.to_params())
            done = await queue.wait(job.id, timeout=60)
        finally:
            await queue.close()
        assert done.state is JobState.DONE, done.last_error
        result = done.details["result"]
        assert len(result["studies"]) == 2 and result["instances"] == 2
        ds = pydicom.dcmread(
            io.BytesIO(_read((await select_instances(archive, "STUDY", {"StudyInstanceUID": result["studies"][0]}))[0]))
        )
        assert ds.LongitudinalTemporalInformationModified == "MODIFIED" and ds.StudyDate != "20240105"

    with_archive(body, fsync=False)


def test_the_key_is_generated_once_and_kept(tmp_path: Path) -> None:
    first = load_key("", tmp_path)
    assert load_key("", tmp_path) == first and len(first) == 64
    assert (tmp_path / "anonymization.key").stat().st_mode & 0o077 == 0
    assert load_key("configured-key-0123456789", tmp_path) == b"configured-key-0123456789"


@pytest.mark.skipif(not DCIODVFY.exists(), reason="dicom3tools is not installed (CI installs it)")
@pytest.mark.parametrize(
    "options",
    [
        frozenset(),
        frozenset({"retain-uids", "retain-long-modified-dates", "clean-descriptors", "retain-patient-characteristics"}),
    ],
)
def test_dciodvfy_finds_no_error_we_introduced(tmp_path: Path, options: frozenset[str]) -> None:
    from tests.core.test_deid import full_dataset

    def errors(ds: pydicom.Dataset, name: str) -> set[str]:
        path = tmp_path / name
        ds.save_as(path, enforce_file_format=True)
        done = subprocess.run([str(DCIODVFY), str(path)], capture_output=True, text=True, timeout=120, check=False)
        return {line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")}

    def meta(ds: pydicom.Dataset, syntax: str) -> pydicom.Dataset:
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = syntax
        return ds

    ct = conformant_ct("1.2.826.0.1.3680043.10.6.1", "1.2.826.0.1.3680043.10.6.1.1", "1.2.826.0.1.3680043.10.6.1.1.1")
    syntax = ct.file_meta.TransferSyntaxUID
    assert errors(ct, "in.dcm") == set()  # a conformant input ...
    out = deidentify(ct, options, Pseudonyms(KEY), Mapping())
    assert errors(meta(out, syntax), "out.dcm") == set()  # ... stays conformant
    # every attribute of the table at once: nothing the input did not already have
    full = full_dataset()
    for tag in [t for t in full.keys() if t.group in (0, 2)]:
        del full[tag]
    before = errors(meta(full, syntax), "full-in.dcm")
    after = errors(meta(deidentify(full_dataset(), options, Pseudonyms(KEY), Mapping()), syntax), "full-out.dcm")
    assert after <= before, after - before


@pytest.mark.skipif(not DCIODVFY.exists(), reason="dicom3tools is not installed (CI installs it)")
@pytest.mark.parametrize("options", [frozenset(), frozenset({"clean-structured-content"})])
def test_a_structured_report_stays_a_valid_sr_and_its_findings_go(tmp_path: Path, options: frozenset[str]) -> None:
    """PS3.15 Table E.1-1 D on Content Sequence: dummy values in the same tree, which dciodvfy still
    finds a complete Comprehensive SR (PS3.3 A.35.3, C.17.3); Clean Structured Content (E.3.4) keeps
    the cleaned text, also valid."""
    from tests.core.test_deid import FINDINGS, report

    def errors(ds: pydicom.Dataset, name: str) -> set[str]:
        path = tmp_path / name
        ds.save_as(path, enforce_file_format=True)
        done = subprocess.run([str(DCIODVFY), str(path)], capture_output=True, text=True, timeout=120, check=False)
        assert "ComprehensiveSR" in done.stderr + done.stdout  # dciodvfy recognised the IOD
        return {line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")}

    original = report()
    assert errors(original, "in.dcm") == set()
    out = deidentify(report(), options, Pseudonyms(KEY), Mapping())
    out.file_meta = pydicom.dataset.FileMetaDataset()
    out.file_meta.MediaStorageSOPClassUID = out.SOPClassUID
    out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    out.file_meta.TransferSyntaxUID = original.file_meta.TransferSyntaxUID
    assert errors(out, "out.dcm") == set()
    data = (tmp_path / "out.dcm").read_bytes()
    assert b"Roe" not in data and b"Richard" not in data and b"Watson" not in data
    assert (FINDINGS.encode() in (tmp_path / "in.dcm").read_bytes()) and FINDINGS.encode() not in data
    if not options:
        assert b"nodule" not in data and b"Elsewhere" not in data  # the text is the dummy, not cleaned


def test_jobs_survive_as_plain_json() -> None:
    request = AnonymizeRequest("study", "1.2.3", frozenset({"retain-uids"}), keep_original=False)
    assert AnonymizeRequest.from_params(request.to_params()) == request
    assert asyncio.iscoroutinefunction(Anonymizer.run)


def test_settings_at_their_limits() -> None:
    from minipacs.config import ConfigError, Settings

    assert Settings(anonymization_key="k" * 16, anonymize_job_threshold=0).validate().anonymize_job_threshold == 0
    with pytest.raises(ConfigError, match="at least 16 characters"):
        Settings(anonymization_key="k" * 15).validate()
    with pytest.raises(ConfigError, match="anonymize_job_threshold"):
        Settings(anonymize_job_threshold=-1).validate()
    assert "k" * 16 not in repr(Settings(anonymization_key="k" * 16))  # the key stays out of logs


@pytest.mark.parametrize("name", ["rle", "jpeg_baseline", "deflated", "implicit", "big_endian"])
def test_transfer_syntax_and_pixels_are_kept(tmp_path: Path, name: str) -> None:
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

    from minipacs.bootstrap import open_archive
    from minipacs.config import Settings
    from tests.compressed import fresh_copy

    syntaxes = {"deflated": DeflatedExplicitVRLittleEndian, "implicit": ImplicitVRLittleEndian}
    syntaxes["big_endian"] = ExplicitVRBigEndian

    async def main() -> None:
        archive = await open_archive(Settings(data_dir=tmp_path / "data", fsync=False))
        try:
            if name in syntaxes:
                path = tmp_path / f"{name}.dcm"
                ds = make_ct(
                    "1.2.826.0.1.3680043.10.2.9", "1.2.826.0.1.3680043.10.2.9.1", "1.2.826.0.1.3680043.10.2.9.1.1"
                )
                ds.file_meta.TransferSyntaxUID = syntaxes[name]
                ds.save_as(path, enforce_file_format=True)
                original = pydicom.dcmread(path)
            else:
                path, original = fresh_copy(name, tmp_path / "src")
            await archive.import_file(path, Origin("import"))
            result = await Anonymizer(archive, KEY).run(AnonymizeRequest("study", original.StudyInstanceUID))
            assert result.instances == 1, result.failures
            stored = await select_instances(archive, "STUDY", {"StudyInstanceUID": result.studies[0]})
            out = pydicom.dcmread(io.BytesIO(_read(stored[0])))
            assert out.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
            assert out.PixelData == original.PixelData and out.PatientIdentityRemoved == "YES"
        finally:
            await archive.close()

    asyncio.run(main())


def _read(instance: StoredInstance) -> bytes:
    with instance.open() as fh:
        return fh.read()
