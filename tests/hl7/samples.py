"""HL7 v2 messages the HL7 tests send: an IHE RAD-4 ORM^O01, an OMG^O19, MSH-18 filled in."""

from __future__ import annotations


def orm(
    control: str = "NW",
    accession: str = "ACC100",
    *,
    pid3: str = "PAT1^^^HOSP^MR",
    name: str = "Doe^John^Q^Jr^Dr",
    obr4: str = "CTHEAD^CT Head w/o contrast^LOCAL",
    modality: str = "CT",
    start: str = "202401050830",
    sep: str = "\r",
    extra: str = "",
    msh2: str = "^~\\&",
    fs: str = "|",
) -> str:
    """An ORM^O01 as an IHE RAD-4 Order Filler sends it (HL7 v2.3.1)."""
    c = msh2[0]
    segments = [
        f"MSH{fs}{msh2}{fs}RIS{fs}HOSP{fs}MINIPACS{fs}RAD{fs}20240104120000{fs}{fs}ORM{c}O01{fs}CTL{accession}{fs}P"
        f"{fs}2.3.1",
        f"PID{fs}1{fs}{fs}{pid3}{fs}{fs}{name}{fs}{fs}19700101{fs}M",
        f"PV1{fs}1{fs}O{fs}{fs}{fs}{fs}{fs}{fs}123{c}Who{c}Doctor",
        f"ORC{fs}{control}{fs}PL{accession}{fs}FL{accession}{fs}{fs}SC",
        f"OBR{fs}1{fs}PL{accession}{fs}FL{accession}{fs}{obr4}{fs}{fs}{fs}{fs}{fs}{fs}{fs}{fs}{fs}{fs}{fs}{fs}"
        f"77{c}House{c}Gregory{fs}{fs}{accession}{fs}RP{accession}{fs}SPS{accession}{fs}{fs}{fs}{fs}{modality}"
        f"{fs}{fs}{fs}{c}{c}{c}{start}{c}{c}R",
        f"ZDS{fs}1.2.826.0.1.3680043.10.9.{len(accession)}{accession.encode().hex()[:8]}{c}RIS{c}Application{c}DICOM",
    ]
    if extra:
        segments.append(extra)
    return sep.join(segments) + sep


OMG = (
    "MSH|^~\\&|RIS|HOSP|MINIPACS|RAD|20240104120000||OMG^O19^OMG_O19|CTL9|P|2.5.1\r"
    "PID|1||PAT9^^^HOSP||Müller^Jürgen||19800229|F\r"
    "ORC|NW|PL9|FL9\r"
    "TQ1|||||||20240210101500\r"
    "OBR|1|PL9|FL9|USABD^US Abdomen^LOCAL\r"
    "IPC|ACC9|RP9|1.2.826.0.1.3680043.10.9.909|SPS9|US||||US01\r"
)


NAME = "Müller^Jürgen"


def with_msh18(text: str, charset: str) -> str:
    """``text`` with MSH-13 .. MSH-18 filled up to the character set."""
    msh, rest = text.split("\r", 1)
    fields = msh.split("|")
    fields += [""] * (17 - len(fields)) + [charset]  # fields[n - 1] is MSH-n
    return "|".join(fields[:18]) + "\r" + rest


#: An IHE RAD-4 Procedure Scheduled in the HL7 v2.5.1 option (IHE RAD TF-2 4.4): OMI^O23, one requested
#: procedure with two Scheduled Procedure Steps (one IPC each).
OMI = (
    "MSH|^~\\&|RIS|HOSP|MINIPACS|RAD|20240104120000||OMI^O23^OMI_O23|CTL23|P|2.5.1\r"
    "PID|1||PAT23^^^HOSP||Smith^Ann||19750101|F\r"
    "PV1|1|O\r"
    "ORC|NW|PL23|FL23||SC\r"
    "TQ1|||||||20240210101500\r"
    "OBR|1|PL23|FL23|CTCHEST^CT Chest^LOCAL\r"
    "IPC|ACC23|RP23|1.2.826.0.1.3680043.10.9.2323|SPS23A|CT||||CT01\r"
    "IPC|ACC23|RP23|1.2.826.0.1.3680043.10.9.2323|SPS23B|CT||||CT02\r"
)
