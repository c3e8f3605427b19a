"""C-FIND both ways with peers we did not write.

DCMTK ``findscu`` → minipacs; minipacs ``find`` → DCMTK ``dcmqrscp`` and → Orthanc.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

import minipacs.dicom.values  # noqa: F401 - pydicom learns ISO_IR 203 (Latin-9) in this process too
from tests.dicom.test_values import SINGLE_BYTE_AND_STAND_ALONE
from tests.dicomgen import write_ct
from tests.peers import ServerProcess, dcmtk, free_port, minipacs_cmd, missing_peer, run, start_server, wait_for_port

pytestmark = pytest.mark.interop

N_STUDIES = 400
ORTHANC = Path("/usr/sbin/Orthanc")


def make_files(folder: Path, n: int) -> list[Path]:
    paths = []
    for i in range(n):
        paths.append(
            write_ct(
                folder / f"{i:04d}.dcm",
                rows=8,
                cols=8,
                patient_id=f"PID{i % 20}",
                patient_name="Müller^Jürgen" if i == 3 else ("Doe^John" if i % 20 == 1 else f"Name{i % 20:02d}^Test"),
                AccessionNumber=f"ACC{i:04d}",
                StudyDate=f"2023{1 + i % 12:02d}{1 + i % 28:02d}",
                study_uid=f"1.2.826.0.1.3680043.10.3.{i + 1}",
                series_uid=f"1.2.826.0.1.3680043.10.3.{i + 1}.1",
                sop_uid=f"1.2.826.0.1.3680043.10.3.{i + 1}.1.1",
                InstitutionName=f"Hospital {i % 3}",
            )
        )
    return paths


@pytest.fixture(scope="module")
def minipacs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("find-interop")
    make_files(tmp / "in", N_STUDIES)
    res = run(
        minipacs_cmd("import", str(tmp / "in"), "--data", str(tmp / "data"), "--no-progress"),
        env={"MINIPACS_FSYNC": "false"},
    )
    assert res.returncode == 0, res.stderr
    server = start_server(tmp)
    try:
        yield server
    finally:
        server.stop()


def findscu(
    server: ServerProcess, out: Path, *args: str
) -> tuple[subprocess.CompletedProcess[str], list[pydicom.Dataset]]:
    out.mkdir(parents=True, exist_ok=True)
    res = run(
        [dcmtk("findscu"), "-v", "-aec", server.ae_title, "-X", "-od", str(out), *args, "127.0.0.1", str(server.port)]
    )
    found = [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
    return res, found


def test_findscu_study_root_wildcard_and_return_keys(minipacs_server: ServerProcess, tmp_path: Path) -> None:
    res, found = findscu(
        minipacs_server,
        tmp_path,
        "-S",
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        "PatientName=doe*",
        "-k",
        "StudyDate",
        "-k",
        "AccessionNumber",
        "-k",
        "InstitutionName",
        "-k",
        "ModalitiesInStudy",
        "-k",
        "NumberOfStudyRelatedInstances",
        "-k",
        "StudyInstanceUID",
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert len(found) == N_STUDIES // 20
    for ds in found:
        assert str(ds.PatientName) == "Doe^John"
        assert ds.ModalitiesInStudy == "CT"
        assert int(ds.NumberOfStudyRelatedInstances) == 1
        assert ds.InstitutionName == "Hospital " + str((int(ds.AccessionNumber[3:])) % 3)  # from the stored file


def test_findscu_date_range(minipacs_server: ServerProcess, tmp_path: Path) -> None:
    res, found = findscu(
        minipacs_server,
        tmp_path,
        "-S",
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        "StudyDate=20230301-20230331",
        "-k",
        "AccessionNumber",
    )
    assert res.returncode == 0, res.stderr
    expected = {f"ACC{i:04d}" for i in range(N_STUDIES) if 1 + i % 12 == 3}
    assert {ds.AccessionNumber for ds in found} == expected
    assert all(ds.StudyDate.startswith("202303") for ds in found)


def test_findscu_patient_root(minipacs_server: ServerProcess, tmp_path: Path) -> None:
    res, found = findscu(
        minipacs_server,
        tmp_path / "p",
        "-P",
        "-k",
        "QueryRetrieveLevel=PATIENT",
        "-k",
        "PatientID=PID3",
        "-k",
        "PatientName",
        "-k",
        "NumberOfPatientRelatedStudies",
    )
    assert res.returncode == 0, res.stderr
    assert [(ds.PatientID, int(ds.NumberOfPatientRelatedStudies)) for ds in found] == [("PID3", N_STUDIES // 20)]
    assert str(found[0].PatientName) == "Müller^Jürgen"
    res, found = findscu(
        minipacs_server,
        tmp_path / "s",
        "-P",
        "-k",
        "QueryRetrieveLevel=SERIES",
        "-k",
        "PatientID=PID3",
        "-k",
        "StudyInstanceUID=1.2.826.0.1.3680043.10.3.4",
        "-k",
        "SeriesInstanceUID",
        "-k",
        "Modality",
    )
    assert res.returncode == 0, res.stderr
    assert [(ds.SeriesInstanceUID, ds.Modality) for ds in found] == [("1.2.826.0.1.3680043.10.3.4.1", "CT")]


def test_findscu_missing_unique_key_is_refused(minipacs_server: ServerProcess, tmp_path: Path) -> None:
    res, found = findscu(minipacs_server, tmp_path, "-S", "-k", "QueryRetrieveLevel=SERIES", "-k", "Modality=CT")
    assert found == []
    assert "DataSetDoesNotMatchSOPClass" in res.stdout + res.stderr  # DCMTK's name for 0xA900
    assert "StudyInstanceUID, the unique key of the STUDY level" in minipacs_server.log_text()


def test_findscu_cancel(minipacs_server: ServerProcess, tmp_path: Path) -> None:
    # findscu sends its C-CANCEL once the first response is in; a loaded machine can let the server
    # send all 400 first (PS3.7 lets an SCP finish before it sees the cancel), so the race is run up
    # to three times: a server that ignored C-CANCEL loses it every time
    counts = []
    for attempt in range(3):
        res, found = findscu(
            minipacs_server,
            tmp_path / f"try{attempt}",
            "-S",
            "--cancel",
            "1",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            "AccessionNumber",
            "-k",
            "PatientName",
        )
        assert res.returncode == 0, res.stderr
        text = res.stdout + res.stderr
        assert "Cancel" in text
        counts.append(len(found))
        if len(found) < N_STUDIES:
            break
    assert min(counts) < N_STUDIES, f"every C-CANCEL came too late or was ignored: {counts} matches"
    # the server answered 0xFE00 and keeps serving
    res, found = findscu(
        minipacs_server, tmp_path / "after", "-S", "-k", "QueryRetrieveLevel=STUDY", "-k", "AccessionNumber=ACC0010"
    )
    assert [ds.AccessionNumber for ds in found] == ["ACC0010"]


def test_findscu_hostile_keys(minipacs_server: ServerProcess, tmp_path: Path) -> None:
    for n, key in enumerate(
        [
            "PatientName=%';--",
            "AccessionNumber=_",
            "PatientName=" + "*" * 10000,
            "StudyDescription=" + "x" * 3000,
            "StudyDate=notadate",
        ]
    ):
        res, found = findscu(minipacs_server, tmp_path / str(n), "-S", "-k", "QueryRetrieveLevel=STUDY", "-k", key)
        assert res.returncode == 0, res.stderr
        assert len(found) in (0, N_STUDIES)
    res, found = findscu(
        minipacs_server, tmp_path / "after", "-S", "-k", "QueryRetrieveLevel=STUDY", "-k", "AccessionNumber=ACC0011"
    )
    assert [ds.AccessionNumber for ds in found] == ["ACC0011"]


def test_findscu_key_value_its_vr_cannot_hold_is_refused_with_a_comment(
    minipacs_server: ServerProcess, tmp_path: Path
) -> None:
    """PS3.4 C.4.1.1.4: an IS key that is no number ("SeriesNumber=1A") or a UID with a wildcard is
    refused with 0xC001 (Failed: Unable to process) and an Error Comment naming the key, as QIDO-RS
    refuses the same key with 400 -- never Success with no match, which reads as "nothing stored"."""
    study = "1.2.826.0.1.3680043.10.3.4"
    for n, (level, key, comment) in enumerate(
        [
            ("SERIES", "SeriesNumber=1A", "SeriesNumber '1A' is not a valid IS value (a whole number)"),
            ("STUDY", "StudyInstanceUID=1.2.826.*", "StudyInstanceUID '1.2.826.*': a UID cannot hold a wildcard"),
        ]
    ):
        res, found = findscu(
            minipacs_server,
            tmp_path / str(n),
            "-d",
            "-S",
            "-k",
            f"QueryRetrieveLevel={level}",
            "-k",
            f"StudyInstanceUID={study}",
            "-k",
            "SeriesInstanceUID",
            "-k",
            key,
        )
        text = res.stdout + res.stderr
        assert found == []
        assert "UnableToProcess" in text or "0xc001" in text.lower(), text[-2000:]
        assert "ErrorComment" in text and comment in text, text[-2000:]
    res, found = findscu(
        minipacs_server, tmp_path / "ok", "-S", "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={study}",
        "-k", "SeriesNumber=2", "-k", "SeriesInstanceUID",
    )  # fmt: skip
    assert [ds.SeriesInstanceUID for ds in found] == [f"{study}.1"]


# ---------------------------------------------------------------- minipacs find → DCMTK dcmqrscp


@pytest.fixture(scope="module")
def dcmqrscp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    tmp = tmp_path_factory.mktemp("dcmqrscp")
    files = make_files(tmp / "in", 40)
    db = tmp / "db"
    db.mkdir()
    port = free_port()
    config = tmp / "dcmqrscp.cfg"
    config.write_text(
        f"NetworkTCPPort = {port}\nMaxPDUSize = 16384\nMaxAssociations = 8\n"
        "HostTable BEGIN\nHostTable END\nVendorTable BEGIN\nVendorTable END\n"
        f"AETable BEGIN\nDCMQR {db} RW (1000, 1024mb) ANY\nAETable END\n"
    )
    res = run([dcmtk("dcmqridx"), str(db), *map(str, files)])
    assert res.returncode == 0, res.stderr
    proc = subprocess.Popen(
        [dcmtk("dcmqrscp"), "-c", str(config), str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port("127.0.0.1", port, proc=proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def minipacs_find(port: int, aec: str, *args: str) -> tuple[subprocess.CompletedProcess[str], list[dict[str, object]]]:
    res = run(minipacs_cmd("find", "127.0.0.1", str(port), "-aec", aec, "--json", *args))
    matches = json.loads(res.stdout) if res.stdout.strip().startswith("[") else []
    return res, matches


def test_minipacs_find_against_dcmqrscp(dcmqrscp: int) -> None:
    res, matches = minipacs_find(dcmqrscp, "DCMQR", "-S", "-k", "PatientName=Doe*", "-k", "AccessionNumber")
    assert res.returncode == 0, res.stderr
    assert len(matches) == 2
    assert {m["00080050"]["Value"][0] for m in matches} == {"ACC0001", "ACC0021"}  # type: ignore[index]
    res, matches = minipacs_find(dcmqrscp, "DCMQR", "-P", "-L", "PATIENT", "-k", "PatientID=PID5", "-k", "PatientName")
    assert res.returncode == 0, res.stderr
    assert len(matches) == 1
    res = run(
        minipacs_cmd(
            "find",
            "127.0.0.1",
            str(dcmqrscp),
            "-aec",
            "DCMQR",
            "-S",
            "-k",
            "AccessionNumber=ACC0002",
            "-k",
            "StudyDate",
        )
    )
    assert res.returncode == 0 and "ACC0002" in res.stdout, res.stderr
    assert "AccessionNumber" in res.stdout.splitlines()[0]


def test_minipacs_find_against_minipacs_json_and_table(minipacs_server: ServerProcess) -> None:
    res, matches = minipacs_find(minipacs_server.port, "MINIPACS", "-S", "-k", "PatientName=müller*")
    assert res.returncode == 0, res.stderr
    assert len(matches) == N_STUDIES // 20  # every study of patient PID3
    assert matches[0]["00100010"]["Value"][0]["Alphabetic"] == "Müller^Jürgen"  # type: ignore[index]
    res = run(minipacs_cmd("find", "127.0.0.1", str(minipacs_server.port), "-aec", "MINIPACS", "-k", "StudyDate=bad"))
    assert res.returncode == 1
    assert "0xC001" in res.stderr
    res = run(minipacs_cmd("find", "127.0.0.1", str(free_port()), "-aec", "MINIPACS"))
    assert res.returncode == 3
    res = run(minipacs_cmd("find", "127.0.0.1", "104", "-k", "NoSuchKeyword=1"))
    assert res.returncode == 2


# ---------------------------------------------------------------- minipacs find → Orthanc


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    if not ORTHANC.exists():
        missing_peer("Orthanc", "apt-get install -y orthanc")
    tmp = tmp_path_factory.mktemp("orthanc")
    dicom_port, http_port = free_port(), free_port()
    config = tmp / "orthanc.json"
    config.write_text(
        json.dumps(
            {
                "Name": "minipacs-test",
                "StorageDirectory": str(tmp / "storage"),
                "IndexDirectory": str(tmp / "index"),
                "DicomAet": "ORTHANC",
                "DicomPort": dicom_port,
                "HttpPort": http_port,
                "RemoteAccessAllowed": False,
                "AuthenticationEnabled": False,
                "DicomCheckCalledAet": False,
                "DicomAlwaysAllowFind": True,
                "DicomAlwaysAllowEcho": True,
                "DicomModalities": {"findscu": ["FINDSCU", "127.0.0.1", 4242]},
                "Plugins": [],
                "HttpDescribeErrors": True,
            }
        )
    )
    log = open(tmp / "orthanc.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(ORTHANC), str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port("127.0.0.1", http_port, proc=proc)
        wait_for_port("127.0.0.1", dicom_port, proc=proc)
        for path in make_files(tmp / "in", 30):
            request = urllib.request.Request(
                f"http://127.0.0.1:{http_port}/instances",
                data=path.read_bytes(),
                method="POST",
                headers={"Content-Type": "application/dicom"},
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                assert response.status == 200
        yield dicom_port
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_minipacs_find_against_orthanc(orthanc: int) -> None:
    res, matches = minipacs_find(
        orthanc, "ORTHANC", "-S", "-k", "PatientName=DOE*", "-k", "AccessionNumber", "-k", "StudyDate=20230101-20230630"
    )
    assert res.returncode == 0, res.stderr
    # ACC0021 is a DOE too, but of October: outside the range
    assert {m["00080050"]["Value"][0] for m in matches} == {"ACC0001"}  # type: ignore[index]
    res, matches = minipacs_find(
        orthanc, "ORTHANC", "-S", "-L", "SERIES", "-k", "StudyInstanceUID=1.2.826.0.1.3680043.10.3.5", "-k", "Modality"
    )
    assert res.returncode == 0, res.stderr
    assert [m["00080060"]["Value"][0] for m in matches] == ["CT"]  # type: ignore[index]


def test_ci_installs_orthanc() -> None:
    ci = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    assert "orthanc" in ci


@pytest.mark.parametrize(
    ("charset", "name", "answered_in"),
    [
        ("ISO 2022 IR 6\\ISO 2022 IR 87", "Yamada^Tarou=山田^太郎=やまだ^たろう", "ISO 2022 IR 6\\ISO 2022 IR 87"),
        ("ISO 2022 IR 6\\ISO 2022 IR 149", "Hong^Gildong=洪^吉洞=홍^길동", "ISO 2022 IR 6\\ISO 2022 IR 149"),
        ("ISO 2022 IR 6\\ISO 2022 IR 87", "Müller^Jürgen", "ISO_IR 192"),  # not in that repertoire: UTF-8
        # PS3.5 Annex K: GB2312 designated to G1 (pydicom 3.0 wrote it with no escape sequence)
        ("ISO 2022 IR 6\\ISO 2022 IR 58", "Zhang^XiaoDong=张^小东", "ISO 2022 IR 6\\ISO 2022 IR 58"),
    ],
)
def test_findscu_gets_answers_in_its_iso_2022_repertoire(
    tmp_path: Path, charset: str, name: str, answered_in: str
) -> None:
    """Issue 12 item 11, PS3.5 6.1.2.5: a requester asking in ISO 2022 IR 87 / IR 149 is answered in
    it when its repertoire holds the values (stored here in UTF-8), in UTF-8 only when it does not."""
    server = start_server(tmp_path)
    try:
        path = write_ct(
            tmp_path / "jp.dcm",
            rows=8,
            cols=8,
            patient_id="JP1",
            patient_name=name,
            SpecificCharacterSet="ISO_IR 192",
            study_uid="1.2.826.0.1.3680043.10.7.1",
        )
        done = run([dcmtk("storescu"), "-aec", server.ae_title, "127.0.0.1", str(server.port), str(path)])
        assert done.returncode == 0, done.stderr
        res, found = findscu(
            server,
            tmp_path / "out",
            "-S",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"SpecificCharacterSet={charset}",
            "-k",
            "PatientID=JP1",
            "-k",
            "PatientName",
        )
        assert res.returncode == 0, res.stdout + res.stderr
        [match] = found
        said = match.SpecificCharacterSet
        assert (said if isinstance(said, str) else "\\".join(said)) == answered_in
        assert str(match.PatientName) == name
        if "IR 87" not in answered_in:  # DCMTK 3.6.7 with glibc's iconv cannot convert ISO 2022 IR 87
            # and as DCMTK reads it (its own ISO 2022 decoder, through iconv)
            [rsp] = sorted((tmp_path / "out").glob("rsp*.dcm"))
            dump = run([dcmtk("dcmdump"), "+U8", str(rsp)])
            assert f"[{name}]" in dump.stdout, dump.stdout + dump.stderr
    finally:
        server.stop()


def test_findscu_matches_and_is_answered_in_every_single_byte_and_stand_alone_character_set(
    tmp_path: Path,
) -> None:
    """PS3.3 C.12.1.1.2, PS3.4 C.4.1.1.3.2: an instance stored by DCMTK storescu in each Defined Term
    of Tables C.12-2 and C.12-5 is found by DCMTK findscu with a wild-card key written in that set's
    bytes, and answered in that set (Latin-9, ISO_IR 203, included: pydicom 3.0 lacks it)."""
    server = start_server(tmp_path)
    try:
        for number, (charset, name, codec) in enumerate(SINGLE_BYTE_AND_STAND_ALONE):
            path = write_ct(
                tmp_path / "in" / f"{number}.dcm",
                rows=8,
                cols=8,
                patient_id=f"CS{number}",
                patient_name=name,
                SpecificCharacterSet=charset,
            )
            assert pydicom.dcmread(path).PatientName.original_string == name.encode(codec)
            done = run([dcmtk("storescu"), "-aec", server.ae_title, "127.0.0.1", str(server.port), str(path)])
            assert done.returncode == 0, done.stderr
        # asked in the set it was stored in, then in UTF-8: the second crosses sets, so a value read in the
        # wrong set (Latin-9 as Latin-1) matches nothing and comes back wrong
        asked = [(n, charset, name, codec) for n, (charset, name, codec) in enumerate(SINGLE_BYTE_AND_STAND_ALONE)]
        asked += [(n, "ISO_IR 192", name, "utf-8") for n, (_, name, _) in enumerate(SINGLE_BYTE_AND_STAND_ALONE)]
        for attempt, (number, charset, name, codec) in enumerate(asked):
            key = b"PatientName=" + name[:2].encode(codec) + b"*"  # the set's own bytes on argv
            out = tmp_path / "out" / str(attempt)
            out.mkdir(parents=True)
            res = subprocess.run(
                [dcmtk("findscu"), "-aec", server.ae_title, "-X", "-od", str(out), "-S"]
                + ["-k", "QueryRetrieveLevel=STUDY", "-k", f"SpecificCharacterSet={charset}"]
                + ["-k", os.fsdecode(key), "-k", "PatientID", "127.0.0.1", str(server.port)],
                capture_output=True,
                timeout=60,
                env={**os.environ, "TCP_NODELAY": "1"},
                check=False,
            )
            assert res.returncode == 0, res.stdout + res.stderr
            found = [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
            assert [m.PatientID for m in found] == [f"CS{number}"], (charset, name)
            [match] = found
            assert match.SpecificCharacterSet == charset
            assert str(match.PatientName) == name
    finally:
        server.stop()
