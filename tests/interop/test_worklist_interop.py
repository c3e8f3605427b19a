"""Modality Worklist both ways: DCMTK findscu -W against minipacs, minipacs's worklist SCU
against DCMTK wlmscpfs, with the same .wl files (seeds/001: a query for PatientID=123456)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from tests.peers import ServerProcess, dcmtk, free_port, minipacs_cmd, run, start_server, wait_for_port
from tests.worklist_data import write_wl


@pytest.fixture
def wl_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """minipacs serving the worklist imported from .wl files with `minipacs worklist import`."""
    folder = tmp_path / "wl"
    write_wl(folder)
    done = run(minipacs_cmd("worklist", "import", "--data", str(tmp_path / "data"), str(folder)))
    assert done.returncode == 0, done.stderr
    assert "imported 4 worklist entries" in done.stdout
    srv = start_server(tmp_path)
    try:
        yield srv
    finally:
        srv.stop()


def findscu_w(port: int, out: Path, *keys: str, aec: str = "MINIPACS") -> list[pydicom.Dataset]:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [dcmtk("findscu"), "-W", "-aec", aec, "-X", "-od", str(out), "127.0.0.1", str(port)]
    for key in keys:
        cmd += ["-k", key]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def test_findscu_w_seed_query_patient_id(wl_server: ServerProcess, tmp_path: Path) -> None:
    found = findscu_w(
        wl_server.port,
        tmp_path / "out",
        "PatientID=123456",
        "PatientName",
        "AccessionNumber",
        "StudyInstanceUID",
        "ScheduledProcedureStepSequence[0].Modality",
        "ScheduledProcedureStepSequence[0].ScheduledStationAETitle",
        "(0040,1001)",
    )
    assert sorted(ds.AccessionNumber for ds in found) == ["ACC1", "ACC2"]
    for ds in found:
        assert ds.PatientID == "123456" and str(ds.PatientName) == "Doe^John"
        assert "RequestedProcedureID" in ds  # every requested key answered
        assert ds.ScheduledProcedureStepSequence[0].Modality in ("CT", "MR")


def test_findscu_w_sequence_matching_date_range_and_modality(wl_server: ServerProcess, tmp_path: Path) -> None:
    found = findscu_w(
        wl_server.port,
        tmp_path / "out",
        "AccessionNumber",
        "PatientName",
        "ScheduledProcedureStepSequence[0].Modality=CT",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20240101-20240106",
        "ScheduledProcedureStepSequence[0].ScheduledPerformingPhysicianName",
    )
    assert [ds.AccessionNumber for ds in found] == ["ACC1"]
    sps = found[0].ScheduledProcedureStepSequence[0]
    assert str(sps.ScheduledPerformingPhysicianName) == "Strange^Stephen"


def _our_query(port: int, aec: str, *keys: str) -> list[dict[str, object]]:
    args = ["worklist", "query", "127.0.0.1", str(port), "-aec", aec, "--json"]
    for key in keys:
        args += ["-k", key]
    done = run(minipacs_cmd(*args))
    assert done.returncode == 0, done.stderr
    result: list[dict[str, object]] = json.loads(done.stdout)
    return result


def _accessions(matches: list[dict[str, object]]) -> list[str]:
    out = []
    for m in matches:
        elem = m.get("00080050")
        assert isinstance(elem, dict)
        out.append(str(elem.get("Value", [""])[0]))
    return sorted(out)


def test_our_worklist_scu_against_wlmscpfs_and_against_us(wl_server: ServerProcess, tmp_path: Path) -> None:
    db = tmp_path / "wlmscpfs"
    write_wl(db / "WLAE")
    (db / "WLAE" / "lockfile").touch()
    port = free_port()
    proc = subprocess.Popen(
        [dcmtk("wlmscpfs"), "-dfp", str(db), "-dfr", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        wait_for_port("127.0.0.1", port, proc=proc)
        keys = ("PatientID=123456", "AccessionNumber", "PatientName", "ScheduledProcedureStepSequence[0].Modality")
        theirs = _our_query(port, "WLAE", *keys)
        ours = _our_query(wl_server.port, "MINIPACS", *keys)
        assert _accessions(theirs) == _accessions(ours) == ["ACC1", "ACC2"]
        mr = _our_query(port, "WLAE", "AccessionNumber", "ScheduledProcedureStepSequence[0].Modality=MR")
        assert (
            _accessions(mr)
            == _accessions(
                _our_query(
                    wl_server.port, "MINIPACS", "AccessionNumber", "ScheduledProcedureStepSequence[0].Modality=MR"
                )
            )
            == ["ACC2"]
        )
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


DCMTK_EXAMPLES = Path("/usr/share/doc/dcmtk/examples")


def _step_values(ds: pydicom.Dataset) -> list[dict[str, str]]:
    """Each Scheduled Procedure Step item as keyword -> value (empty values left out)."""
    steps = []
    for item in ds.get("ScheduledProcedureStepSequence", []):
        steps.append(
            {elem.keyword: str(elem.value) for elem in item if elem.VR != "SQ" and elem.value not in ("", None)}
        )
    return steps


def test_dcmtk_sample_queries_get_what_wlmscpfs_gives(tmp_path: Path) -> None:
    """Issue 12 item 3: DCMTK's own sample worklist and queries (Debian's dcmtk documentation),
    served by wlmscpfs and by minipacs. An SPS sequence key with one empty item is universal
    sequence matching (PS3.4 C.2.2.2.6): the whole stored sequence comes back, not an empty item."""
    if not (DCMTK_EXAMPLES / "wlistdb" / "OFFIS").is_dir():
        pytest.fail(f"{DCMTK_EXAMPLES} is missing: the dcmtk package's documentation (apt-get install dcmtk)")
    db = tmp_path / "db" / "OFFIS"
    db.mkdir(parents=True)
    for dump in sorted((DCMTK_EXAMPLES / "wlistdb" / "OFFIS").glob("*.dump")):
        assert run([dcmtk("dump2dcm"), str(dump), str(db / f"{dump.stem}.wl")]).returncode == 0
    (db / "lockfile").touch()
    queries = []
    for dump in sorted((DCMTK_EXAMPLES / "wlistqry").glob("*.dump")):
        query = tmp_path / "q" / f"{dump.stem}.dcm"
        query.parent.mkdir(exist_ok=True)
        assert run([dcmtk("dump2dcm"), str(dump), str(query)]).returncode == 0
        queries.append(query)
    assert len(queries) >= 10
    imported = run(minipacs_cmd("worklist", "import", "--data", str(tmp_path / "data"), str(db)))
    assert "imported 10 worklist entries" in imported.stdout, imported.stdout + imported.stderr
    srv = start_server(tmp_path)
    port = free_port()
    wlm = subprocess.Popen(
        [dcmtk("wlmscpfs"), "-dfp", str(db.parent), "-dfr", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port("127.0.0.1", port, proc=wlm)

        def ask(target_port: int, aec: str, query: Path, out: Path) -> list[pydicom.Dataset]:
            out.mkdir(parents=True)
            done = subprocess.run(
                [dcmtk("findscu"), "-W", "-aec", aec, "-X", "-od", str(out), "127.0.0.1", str(target_port), str(query)],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert done.returncode == 0, done.stdout + done.stderr
            return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]

        universal_steps = 0
        for query in queries:
            theirs = ask(port, "OFFIS", query, tmp_path / "theirs" / query.stem)
            ours = ask(srv.port, "MINIPACS", query, tmp_path / "ours" / query.stem)

            def key(ds: pydicom.Dataset) -> tuple[str, str, str]:
                return (
                    str(ds.get("AccessionNumber", "")),
                    str(ds.get("PatientName", "")),
                    str(ds.get("RequestedProcedureID", "")),
                )

            assert sorted(map(key, ours)) == sorted(map(key, theirs)), query.stem
            # every step attribute wlmscpfs answers with a value, minipacs answers the same, in one response each
            unpaired = [_step_values(ds) for ds in ours]
            for other in map(_step_values, theirs):
                mine = next(
                    (
                        m
                        for m in unpaired
                        if len(m) == len(other) and all(o.items() <= s.items() for o, s in zip(other, m, strict=True))
                    ),
                    None,
                )
                assert mine is not None, (query.stem, other, unpaired)
                unpaired.remove(mine)
                universal_steps += sum(len(step) for step in mine)
        assert universal_steps > 100  # the empty-item queries (wlistqry1, 3) returned whole steps
    finally:
        srv.stop()
        wlm.terminate()
        wlm.wait(10)


def test_findscu_w_gets_type1_ids_of_an_entry_added_without_them(tmp_path: Path) -> None:
    """Issue 12 item 7: `minipacs worklist add` without --procedure-id; DCMTK findscu -W (a modality's
    query) gets a Requested Procedure ID and a Scheduled Procedure Step ID, Type 1 return keys of
    PS3.4 Table K.6-1, not empty values."""
    added = run(
        minipacs_cmd(
            "worklist",
            "add",
            "--data",
            str(tmp_path / "data"),
            "--patient-id",
            "77",
            "--modality",
            "CT",
            "--start",
            "202612070930",
        )
    )
    assert added.returncode == 0, added.stderr
    srv = start_server(tmp_path)
    try:
        (found,) = findscu_w(
            srv.port,
            tmp_path / "out",
            "PatientID=77",
            "RequestedProcedureID",
            "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID",
            "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate",
            "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime",
        )
    finally:
        srv.stop()
    sps = found.ScheduledProcedureStepSequence[0]
    assert found.RequestedProcedureID and sps.ScheduledProcedureStepID == found.RequestedProcedureID
    assert (sps.ScheduledProcedureStepStartDate, sps.ScheduledProcedureStepStartTime) == ("20261207", "0930")
