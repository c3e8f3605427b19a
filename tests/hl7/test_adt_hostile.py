"""Hostile ADT messages over one real MLLP connection (hl7/adt.py, docs/HOSTILE_INPUT.md): each is
answered AE or AR with the reason, the connection stays usable (a good message after them is AA),
and none of them changes a file, the corrections log or the patients."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from minipacs.core.archive import Archive
from minipacs.core.corrections import Corrections, list_corrections
from minipacs.hl7.adt import MAX_PATIENT_GROUPS
from tests.hl7.test_adt import adt, send, serve, store

MSH = "MSH|^~\\&|HIS|HOSP|MINIPACS|RAD|20261206101500||ADT^{event}^ADT_A39|CTL{n}|P|2.5\r"


def msh(event: str, n: int = 1) -> str:
    return MSH.format(event=event, n=n)


#: (what, message bytes, MSA-1, words of MSA-3)
HOSTILE: list[tuple[str, bytes, str, str]] = [
    ("no PID", (msh("A08") + "EVN|A08\r").encode(), "AE", "no PID segment"),
    ("a second MSH", (msh("A08") + msh("A08") + "PID|1||P1||X^Y\r").encode(), "AR", "second MSH"),
    ("A40 without MRG", (msh("A40") + "PID|1||P1\r").encode(), "AE", "no MRG segment"),
    ("MRG before PID", (msh("A40") + "MRG|P2\rPID|1||P1\r").encode(), "AE", "without its PID"),
    ("\\S\\ in a name", adt("A08", "P1", name="Do\\S\\e^J").encode(), "AE", "component 1 holds"),
    ("\\E\\ in a name", adt("A08", "P1", name="Do^J\\E\\x").encode(), "AE", "component 2 holds"),
    ("\\X00\\ in a name", adt("A08", "P1", name="Do\\X00\\e^J").encode(), "AE", "U+0000"),
    ("\\X00\\ in PID-3", adt("A08", "P\\X00\\1", name="X^Y").encode(), "AE", "printable"),
    ("\\E\\ in PID-3", adt("A47", "P\\E\\x", mrg="P1").encode(), "AE", "no backslash"),
    ("wildcard PID-3", adt("A08", "P*", name="X^Y").encode(), "AE", "wildcard"),
    ("wildcard rename", adt("A47", "P?", mrg="P1").encode(), "AE", "wildcard"),
    ("wildcard MRG-1", adt("A40", "P1", mrg="P*").encode(), "AE", "wildcard"),
    ("MRG-1 lists two patients", adt("A40", "P1", mrg="P2~P3").encode(), "AE", "several prior identifiers"),
    ("DA month 13", adt("A08", "P1", birth="20241345").encode(), "AE", "PatientBirthDate"),
    ("30 February", adt("A08", "P1", birth="20240230").encode(), "AE", "not a calendar date"),
    ("65-character ID", adt("A08", "P" * 65, name="X^Y").encode(), "AE", "at most 64"),
    (
        "too many patient groups",
        (msh("A08") + "PID|1||P1||X^Y\r" * (MAX_PATIENT_GROUPS + 1)).encode(),
        "AE",
        f"at most {MAX_PATIENT_GROUPS}",
    ),
    ("repeated encoding characters", b"MSH|^^\\&|HIS|HOSP|M|R|2026||ADT^A08|C|P|2.5\rPID|1||P1||X^Y\r", "AR", "MSH-2"),
    ("letter as separator", b"MSHa^~\\&aHIS\rPID|1||P1\r", "AR", "not usable"),
    ("stray non-UTF-8 bytes", adt("A08", "P1", name="X^Y").encode() + b"\xff\xfe", "AR", "not an HL7 segment"),
    (
        "not the declared charset",
        b"MSH|^~\\&|HIS|HOSP|M|R|2026||ADT^A08|C|P|2.5||||||UNICODE UTF-8\rPID|1||P1||X\xe9^Y\r",
        "AR",
        "not valid UNICODE UTF-8",
    ),
    ("unknown event", adt("A99", "P1", name="X^Y").encode(), "AR", "not an ADT event"),
]


def files(archive: Archive) -> list[str]:
    return sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in archive.settings.data_dir.rglob("*.dcm"))


def test_hostile_adt_is_refused_with_a_reason_and_changes_nothing(tmp_path: Path) -> None:
    async def body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, archive: Archive) -> None:
        await store(archive, tmp_path, "P1")
        await store(archive, tmp_path, "P2")
        await store(archive, tmp_path, "P3")
        before = files(archive)
        for what, data, code, words in HOSTILE:
            writer.write(b"\x0b" + data + b"\x1c\x0d")
            await writer.drain()
            raw = await asyncio.wait_for(reader.readuntil(b"\x1c\x0d"), 60)
            msa = next(s for s in raw[1:-2].decode("utf-8", "replace").split("\r") if s.startswith("MSA"))
            assert msa.split("|")[1] == code, (what, msa)
            assert words in msa, (what, msa)
        assert files(archive) == before and await list_corrections(archive) == []
        c = Corrections(archive)
        for pid in ("P1", "P2", "P3"):
            assert await c.patient(pid) is not None
        code, text, _ = await send(reader, writer, adt("A31", "P1", name="Good^Name"))  # the same connection
        assert code == "AA", text

    serve(tmp_path, body)


def test_patient_groups_and_fields_at_the_limit_are_taken(tmp_path: Path) -> None:
    async def body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, archive: Archive) -> None:
        await store(archive, tmp_path, "P1")
        code, text, _ = await send(reader, writer, msh("A08") + "PID|1||P1||Same^Name\r" * MAX_PATIENT_GROUPS)
        assert code == "AA", text
        many_fields = msh("A08", 2) + "PID|1||P1||Same^Name" + "|" * 200_000 + "\r"  # within 1 MiB: read, not choked on
        code, text, _ = await send(reader, writer, many_fields)
        assert code == "AA" and "nothing changed" in text, text

    serve(tmp_path, body)
