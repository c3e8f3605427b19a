"""Specific Character Set (0008,0005) end to end, with real data and peers we did not write.

The data: pydicom's character set files (the PS3.5 Annex H, I and J examples and single-byte names in
Arabic, French, German, Greek, Hebrew, Russian, as DICOM files made by others), stored by DCMTK
``storescu``. Checked: the PS3.18 JSON that QIDO-RS answers (UTF-8, PN in its three component groups,
PS3.18 F.2.2), and DCMTK ``findscu`` queries whose keys are written in a set's own bytes, ISO 2022
escape sequences included, with the answer read by DCMTK ``dcmdump +U8``.

DCMTK 3.6.7 with glibc's iconv cannot convert ISO 2022 IR 87 ("not supported by the utilized character
set conversion library"): for the Japanese answers the bytes are compared with PS3.5 Example H.3-1.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_charset_files

from tests.dicomgen import write_ct
from tests.peers import ServerProcess, dcmtk, free_port, run, start_server, wait_for_port

pytestmark = pytest.mark.interop

#: PatientID of each file → its Patient's Name in the PS3.18 JSON model (F.2.2: one object per value,
#: a key per component group present).
EXPECTED_JSON = {
    "SCSARAB": {"Alphabetic": "قباني^لنزار"},
    "SCSFREN": {"Alphabetic": "Buc^Jérôme"},
    "SCSGERM": {"Alphabetic": "Äneas^Rüdiger"},
    "SCSGREEK": {"Alphabetic": "Διονυσιος"},
    "SCSHBRW": {"Alphabetic": "שרון^דבורה"},
    "SCSRUSS": {"Alphabetic": "Люкceмбypг"},
    "H31EXAMPLE": {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"},
    "H32EXAMPLE": {"Alphabetic": "ﾔﾏﾀﾞ^ﾀﾛｳ", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"},
    "I2EXAMPLE": {"Alphabetic": "Hong^Gildong", "Ideographic": "洪^吉洞", "Phonetic": "홍^길동"},
    "X1EXAMPLE": {"Alphabetic": "Wang^XiaoDong", "Ideographic": "王^小東"},
    "X2EXAMPLE": {"Alphabetic": "Wang^XiaoDong", "Ideographic": "王^小东"},
}

#: PS3.5 Example H.3-1, as the standard encodes it.
H31_BYTES = b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B"


def _files() -> list[str]:
    return sorted(p for p in get_charset_files("chr*.dcm") if "SQEncoding" not in p)  # those two have no SOP


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, int]]:
    tmp = tmp_path_factory.mktemp("charsets")
    http = free_port()
    srv = start_server(tmp, env={"MINIPACS_HTTP_PORT": str(http), "MINIPACS_FSYNC": "false"})
    try:
        wait_for_port("127.0.0.1", http, proc=srv.proc)
        done = run([dcmtk("storescu"), "-aec", srv.ae_title, "127.0.0.1", str(srv.port), *_files()])
        assert done.returncode == 0, done.stdout + done.stderr
        yield srv, http
    finally:
        srv.stop()


def test_qido_answers_every_name_in_utf_8_json_with_its_component_groups(server: tuple[ServerProcess, int]) -> None:
    """PS3.18 F.2: the JSON is UTF-8 whatever the stored set (ISO 2022 IR 87/149 with escape sequences,
    GB18030, single-byte sets); a PN value is an object with Alphabetic, Ideographic, Phonetic."""
    _, http = server
    request = urllib.request.Request(
        f"http://127.0.0.1:{http}/dicom-web/studies?includefield=00100010&limit=100",
        headers={"Accept": "application/dicom+json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        body = response.read()
    found = {s["00100020"]["Value"][0]: s["00100010"]["Value"][0] for s in json.loads(body.decode("utf-8"))}
    assert {pid: found.get(pid) for pid in EXPECTED_JSON} == EXPECTED_JSON
    assert found["2008-4"] == {"Alphabetic": "やまだ^たろう"}  # chrJapMulti: ISO 2022 IR 87 in the first group
    assert found["2008-3"] == {"Alphabetic": "김희중"}  # chrKoreanMulti: ISO 2022 IR 149 in the first group


def _findscu(srv: ServerProcess, out: Path, charset: str, name_key: bytes) -> list[Path]:
    out.mkdir(parents=True)
    res = subprocess.run(
        [dcmtk("findscu"), "-aec", srv.ae_title, "-X", "-od", str(out), "-S"]
        + ["-k", "QueryRetrieveLevel=STUDY", "-k", f"SpecificCharacterSet={charset}"]
        + ["-k", os.fsdecode(b"PatientName=" + name_key), "-k", "PatientID", "127.0.0.1", str(srv.port)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return sorted(out.glob("rsp*.dcm"))


@pytest.mark.parametrize(
    ("charset", "key", "answers"),
    [
        # PS3.5 I.2: a wild card in each component group, the ideographic one after ESC $ ) C
        ("\\ISO 2022 IR 149", b"Hong*=\x1b$)C\xfb\xf3*", {"I2EXAMPLE": "\\ISO 2022 IR 149"}),
        # PS3.5 H.3-1: the ideographic group, JIS X 0208 between ESC $ B and ESC ( B; H.3-2 holds
        # half-width katakana, outside that repertoire: UTF-8
        ("\\ISO 2022 IR 87", b"*=\x1b$B;3ED\x1b(B*", {"H31EXAMPLE": "\\ISO 2022 IR 87", "H32EXAMPLE": "ISO_IR 192"}),
        # JIS X 0201 katakana: the H.3-2 name has kanji too, which ISO_IR 13 cannot carry (it was answered
        # in ISO_IR 13 with Shift JIS kanji bytes)
        ("ISO_IR 13", "ﾔﾏ".encode("shift_jis") + b"*", {"H32EXAMPLE": "ISO_IR 192"}),
        # GB18030 holds all of Unicode: the UTF-8 file (traditional 東) too
        ("GB18030", b"Wang*=\xcd\xf5*", {"X1EXAMPLE": "GB18030", "X2EXAMPLE": "GB18030"}),
        # PS3.5 K: GB 2312 under code extensions; the traditional 東 of X1 is not in GB 2312
        ("\\ISO 2022 IR 58", b"Wang*=\x1b$)A\xcd\xf5*", {"X1EXAMPLE": "ISO_IR 192", "X2EXAMPLE": "\\ISO 2022 IR 58"}),
        ("ISO_IR 100", "Buc^J*".encode("latin-1"), {"SCSFREN": "ISO_IR 100"}),
        ("ISO_IR 144", "Люк*".encode("iso8859_5"), {"SCSRUSS": "ISO_IR 144"}),
        ("ISO_IR 192", "שרון*".encode(), {"SCSHBRW": "ISO_IR 192"}),
    ],
)
def test_findscu_key_in_the_sets_own_bytes_matches_and_dcmtk_reads_the_answer(
    server: tuple[ServerProcess, int], tmp_path: Path, charset: str, key: bytes, answers: dict[str, str]
) -> None:
    """PS3.4 C.4.1.1.3.2, PS3.5 6.1.2.5: the key is read in the query's Specific Character Set; each
    answer declares the set it is written in (the requester's when it holds the name, else ISO_IR 192)
    and DCMTK reads the name back from its bytes."""
    srv, _ = server
    got: dict[str, str] = {}
    for path in _findscu(srv, tmp_path / "out", charset, key):
        ds = pydicom.dcmread(path)
        pid = str(ds.PatientID)
        said = ds.get("SpecificCharacterSet", "")
        got[pid] = said if isinstance(said, str) else "\\".join(said)
        ideographic = EXPECTED_JSON[pid].get("Ideographic")
        expected_name = "=".join(
            v for v in (EXPECTED_JSON[pid]["Alphabetic"], ideographic, EXPECTED_JSON[pid].get("Phonetic")) if v
        )
        assert str(ds.PatientName).rstrip("=") == expected_name
        if "IR 87" in got[pid]:  # glibc's iconv has no ISO 2022 IR 87 for DCMTK: the bytes of PS3.5 H.3-1
            assert ds.PatientName.original_string.rstrip(b" ") == H31_BYTES
            continue
        dump = run([dcmtk("dcmdump"), "+U8", str(path)])
        assert dump.returncode == 0, dump.stdout + dump.stderr
        line = next(line for line in dump.stdout.splitlines() if line.startswith("(0010,0010)"))
        assert line.split("[", 1)[1].rsplit("]", 1)[0].rstrip("=") == expected_name, line
    assert got == answers


def test_a_misspelled_term_is_read_alike_by_the_index_and_the_metadata(tmp_path: Path) -> None:
    """ "ISO-IR 144" (a common misspelling of ISO_IR 144): QIDO-RS (the index) answered "¸ÒÐÝÞÒ^¿ñâà" and
    WADO-RS metadata (pydicom, which corrects the term) "Иванов^Пётр"; a C-FIND with a Cyrillic key found
    nothing. Both now read it as pydicom does (dicom/values.py codec_of); the stored bytes stay as sent."""
    path = write_ct(
        tmp_path / "in" / "typo.dcm",
        rows=8,
        cols=8,
        patient_id="TYPO",
        patient_name="Иванов^Пётр",
        SpecificCharacterSet="ISO_IR 144",
        study_uid="1.2.826.0.1.3680043.10.9.1",
    )
    data = path.read_bytes()
    assert data.count(b"ISO_IR 144") == 1
    path.write_bytes(data.replace(b"ISO_IR 144", b"ISO-IR 144"))
    http = free_port()
    srv = start_server(tmp_path, env={"MINIPACS_HTTP_PORT": str(http), "MINIPACS_FSYNC": "false"})
    try:
        wait_for_port("127.0.0.1", http, proc=srv.proc)
        done = run([dcmtk("storescu"), "-aec", srv.ae_title, "127.0.0.1", str(srv.port), str(path)])
        assert done.returncode == 0, done.stdout + done.stderr
        base = f"http://127.0.0.1:{http}/dicom-web/studies"
        [study] = _json(f"{base}?PatientID=TYPO&includefield=00100010")
        [instance] = _json(f"{base}/1.2.826.0.1.3680043.10.9.1/metadata")
        assert study["00100010"]["Value"] == instance["00100010"]["Value"] == [{"Alphabetic": "Иванов^Пётр"}]
        [rsp] = _findscu(srv, tmp_path / "out", "ISO_IR 192", "Иван*".encode())
        assert str(pydicom.dcmread(rsp).PatientID) == "TYPO"
    finally:
        srv.stop()


def _json(url: str) -> list[dict[str, dict[str, list[object]]]]:
    request = urllib.request.Request(url, headers={"Accept": "application/dicom+json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        found: list[dict[str, dict[str, list[object]]]] = json.loads(response.read().decode("utf-8"))
    return found


@pytest.mark.parametrize(
    ("charset", "name", "key"),
    [
        # PS3.5 H.3-1; pynetdicom (pydicom) reads ISO 2022 IR 87, which the local DCMTK cannot
        (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう", "*=山田*"),
        # JIS X 0212 (ISO 2022 IR 159, ESC $ ( D): characters JIS X 0208 lacks
        (["", "ISO 2022 IR 87", "ISO 2022 IR 159"], "Kanda^Ichiro=丂^丄", "*=丂*"),
        # PS3.5 K.2 with a pinyin letter that GB 2312 holds: designated, not written as Latin-1
        (["ISO 2022 IR 6", "ISO 2022 IR 58"], "Lü^Zhì=吕^志", "Lü*"),
    ],
)
def test_pynetdicom_stores_and_finds_in_iso_2022_and_reads_the_answer(
    tmp_path: Path, charset: list[str], name: str, key: str
) -> None:
    """pynetdicom as both SCUs: the instance is sent in that ISO 2022 set (pydicom writes the request), found
    with a key in it, and the answer, in the same set, reads back as the name."""
    from pynetdicom import AE
    from pynetdicom.sop_class import (  # type: ignore[attr-defined] # generated names
        CTImageStorage,
        StudyRootQueryRetrieveInformationModelFind,
    )

    path = write_ct(
        tmp_path / "in" / "n.dcm", rows=8, cols=8, patient_id="P2022", patient_name=name, SpecificCharacterSet=charset
    )
    srv = start_server(tmp_path, env={"MINIPACS_FSYNC": "false"})
    try:
        ae = AE(ae_title="PYNETSCU")
        ae.add_requested_context(CTImageStorage)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = ae.associate("127.0.0.1", srv.port, ae_title=srv.ae_title)
        assert assoc.is_established
        try:
            assert assoc.send_c_store(pydicom.dcmread(path)).Status == 0
            query = pydicom.Dataset()
            query.SpecificCharacterSet = charset
            query.QueryRetrieveLevel = "STUDY"
            query.PatientName = key
            query.PatientID = ""
            answers = [
                found
                for status, found in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
                if status is not None and status.Status in (0xFF00, 0xFF01)
            ]
        finally:
            assoc.release()
        # the bytes of the answer as DCMTK receives them (pydicom re-encodes what it read with its own
        # encoder, which writes Latin-1 undesignated under ISO 2022 IR 6: the Lü case)
        [rsp] = _findscu(srv, tmp_path / "out", "\\".join(charset), b"")
        raw = pydicom.dcmread(rsp).get_item(0x00100010).value
        for component in re.split(rb"[\\^=]", raw):  # a high byte follows an escape sequence in its component
            high = next((i for i, byte in enumerate(component) if byte > 0x7F), None)
            assert high is None or b"\x1b" in component[:high], raw
    finally:
        srv.stop()
    [answer] = answers
    assert list(answer.SpecificCharacterSet) == charset
    assert answer.PatientID == "P2022"
    assert str(answer.PatientName) == name
