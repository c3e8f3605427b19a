"""QIDO-RS conformance (PS3.18 8.3.4, 10.6): UID lists, paging warnings, fuzzy matching, returned attributes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from minipacs.core.archive import Archive
from tests.web.conftest import part10
from tests.web.test_dicomweb import stow

ST1, SE1, SOP1 = "1.2.3.1", "1.2.3.1.1", "1.2.3.1.1.1"
ST2, SE2, SOP2 = "1.2.3.2", "1.2.3.2.1", "1.2.3.2.1.1"
ROOT = "http://testserver/dicom-web"


async def _two_studies(client: httpx.AsyncClient) -> None:
    r = await stow(
        client,
        part10(study_uid=ST1, series_uid=SE1, sop_uid=SOP1),
        part10(study_uid=ST2, series_uid=SE2, sop_uid=SOP2),
    )
    assert r.status_code == 200, r.text


def _values(matches: list[dict[str, Any]], tag: str) -> list[Any]:
    return [m[tag]["Value"][0] for m in matches]


def test_uid_list_matching_is_comma_separated(web: Callable[..., Any]) -> None:
    """PS3.18 8.3.4.1 uid-list-match: ``StudyInstanceUID=a,b`` is UID List Matching (PS3.4 C.2.2.2.2)."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        await _two_studies(client)
        r = await client.get("/dicom-web/studies", params={"StudyInstanceUID": f"{ST1},{ST2},1.2.99"})
        assert r.status_code == 200
        assert sorted(_values(r.json(), "0020000D")) == [ST1, ST2]
        r = await client.get("/dicom-web/instances", params={"SOPInstanceUID": f"{SOP2},{SOP1}"})
        assert sorted(_values(r.json(), "00080018")) == [SOP1, SOP2]

    web(body)


def test_warning_when_results_remain_past_limit(web: Callable[..., Any]) -> None:
    """PS3.18 8.3.4.4.1: remaining > 0 -> ``Warning: 299 <service>: There are ... additional results``;
    a limit above the server's maximum is no error (results = min(limit, maxResults))."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        await _two_studies(client)
        r = await client.get("/dicom-web/studies", params={"limit": "1"})
        assert r.status_code == 200 and len(r.json()) == 1
        assert r.headers["warning"].startswith(f"299 {ROOT}: There are additional results that can be requested")
        r = await client.get("/dicom-web/studies", params={"limit": "1", "offset": "1"})
        assert len(r.json()) == 1 and "warning" not in r.headers
        r = await client.get("/dicom-web/studies", params={"limit": "2"})
        assert len(r.json()) == 2 and "warning" not in r.headers
        r = await client.get("/dicom-web/studies", params={"limit": "50000"})
        assert r.status_code == 200 and len(r.json()) == 2
        # Table 10.6.3-2: Content-Length when no content coding
        assert int(r.headers["content-length"]) == len(r.content)

    web(body)


def test_fuzzymatching_not_supported_warns(web: Callable[..., Any]) -> None:
    """PS3.18 8.3.4.2: fuzzymatching=true on a server without fuzzy matching: literal matching and a Warning."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        await _two_studies(client)
        r = await client.get("/dicom-web/studies", params={"fuzzymatching": "true", "PatientName": "Doe^John"})
        assert r.status_code == 200 and len(r.json()) == 2
        assert r.headers["warning"] == (
            f"299 {ROOT}: The fuzzymatching parameter is not supported. Only literal matching has been performed."
        )
        r = await client.get("/dicom-web/studies", params={"fuzzymatching": "false"})
        assert "warning" not in r.headers
        r = await client.get("/dicom-web/studies", params={"fuzzymatching": "maybe"})
        assert r.status_code == 400

    web(body)


def test_retrieve_url_of_each_match(web: Callable[..., Any]) -> None:
    """PS3.18 Tables 10.6.3-3..5: Retrieve URL (0008,1190) of each retrievable match, its WADO-RS resource."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        await _two_studies(client)
        r = await client.get("/dicom-web/studies", params={"StudyInstanceUID": ST1})
        assert r.json()[0]["00081190"] == {"vr": "UR", "Value": [f"{ROOT}/studies/{ST1}"]}
        r = await client.get(f"/dicom-web/studies/{ST1}/series")
        assert _values(r.json(), "00081190") == [f"{ROOT}/studies/{ST1}/series/{SE1}"]
        r = await client.get("/dicom-web/instances", params={"SOPInstanceUID": SOP2})
        assert _values(r.json(), "00081190") == [f"{ROOT}/studies/{ST2}/series/{SE2}/instances/{SOP2}"]
        # and it is a URL the Retrieve transaction answers
        assert (await client.get(_values(r.json(), "00081190")[0].removeprefix("http://testserver"))).status_code == 200

    web(body)


def test_all_series_and_all_instances_carry_the_upper_levels(web: Callable[..., Any]) -> None:
    """PS3.18 10.6.3.3.2-3: All Series adds the Study attributes; All Instances the Study and Series ones,
    Study's Instances the Series ones; the Instance Availability is known, so it is there."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        await _two_studies(client)
        series = (await client.get("/dicom-web/series", params={"SeriesInstanceUID": SE1})).json()[0]
        assert series["00081030"]["Value"] == ["CT HEAD"]  # StudyDescription
        assert series["00100010"]["Value"] == [{"Alphabetic": "Doe^John"}]  # PatientName
        assert series["00080050"]["Value"] == ["ACC1"]  # AccessionNumber
        assert "00201206" not in series  # the engine counts a study's series at the study level only
        instance = (await client.get("/dicom-web/instances", params={"SOPInstanceUID": SOP1})).json()[0]
        assert instance["00080060"]["Value"] == ["CT"]  # Modality (series)
        assert instance["00081030"]["Value"] == ["CT HEAD"]  # StudyDescription (study)
        assert instance["00080056"]["Value"] == ["ONLINE"]  # InstanceAvailability
        in_study = (await client.get(f"/dicom-web/studies/{ST1}/instances")).json()[0]
        assert in_study["00080060"]["Value"] == ["CT"] and "00081030" not in in_study
        in_series = (await client.get(f"/dicom-web/studies/{ST1}/series/{SE1}/instances")).json()[0]
        assert "00080060" not in in_series
        study = (await client.get("/dicom-web/studies", params={"StudyInstanceUID": ST1})).json()[0]
        assert study["00080056"]["Value"] == ["ONLINE"]

    web(body)


def test_includefield_levels_and_all(web: Callable[..., Any]) -> None:
    """PS3.18 10.6.3.3.1: Series or Instance attributes in includefield are not returned for Studies;
    8.3.4.3: includefield=all returns all available attributes of the level."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        await _two_studies(client)
        r = await client.get(
            "/dicom-web/studies", params={"StudyInstanceUID": ST1, "includefield": "SeriesDescription,00280010"}
        )
        study = r.json()[0]
        assert "0008103E" not in study and "00280010" not in study
        r = await client.get("/dicom-web/studies", params={"StudyInstanceUID": ST1, "includefield": "all"})
        study = r.json()[0]
        assert study["00080062"]["Value"] == ["1.2.840.10008.5.1.4.1.1.2"]  # SOPClassesInStudy
        assert "00100021" in study  # IssuerOfPatientID (empty, but returned)
        r = await client.get(f"/dicom-web/studies/{ST1}/series", params={"includefield": "StudyDescription"})
        assert r.json()[0]["00081030"]["Value"] == ["CT HEAD"]  # a Study attribute at the Series level: returned

    web(body)


def test_patient_counts_of_a_study(web: Callable[..., Any]) -> None:
    """QIDO-RS searches the Study Root model (PS3.18 10.6.1), whose Study level holds Number of Patient
    Related Studies/Series/Instances (PS3.4 C.6.2.1.2 Table C.6-5): asked by name or by includefield=all
    (8.3.4.3, every available attribute), each study answers its patient's counts -- both studies here
    are of one patient. They were left out of "all" for counts that were wrong (a cartesian product)."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        await _two_studies(client)
        counts = "00201200", "00201202", "00201204"
        for include in ("all", ",".join(counts)):
            r = await client.get("/dicom-web/studies", params={"StudyInstanceUID": ST1, "includefield": include})
            assert r.status_code == 200
            study = r.json()[0]
            assert [study[tag] for tag in counts] == [{"vr": "IS", "Value": [2]}] * 3, include

    web(body)


def _with_sequences(study: str, series: str, sop: str, other_id: str, sps: str) -> bytes:
    import io

    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from tests.dicomgen import make_ct

    ds = make_ct(study_uid=study, series_uid=series, sop_uid=sop)
    other = Dataset()
    other.PatientID, other.TypeOfPatientID = other_id, "TEXT"
    ds.OtherPatientIDsSequence = Sequence([other])
    request = Dataset()
    request.ScheduledProcedureStepID, request.RequestedProcedureID = sps, "RP-" + sps
    ds.RequestAttributesSequence = Sequence([request])
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_matching_on_attributes_in_sequences(web: Callable[..., Any]) -> None:
    """PS3.18 8.3.4.1: attribute = attribute-id *("." attribute-id), by keyword or tag -- PS3.4 C.2.2.2.6
    Sequence Matching; a sequence in includefield is returned with its items."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await stow(
            client,
            _with_sequences(ST1, SE1, SOP1, "ALT1", "SPS1"),
            _with_sequences(ST2, SE2, SOP2, "ALT2", "SPS2"),
        )
        assert r.status_code == 200
        for params in ({"OtherPatientIDsSequence.PatientID": "ALT1"}, {"00101002.00100020": "ALT1"}):
            r = await client.get("/dicom-web/studies", params=params)
            assert r.status_code == 200, r.text
            assert _values(r.json(), "0020000D") == [ST1]
            assert r.json()[0]["00101002"]["Value"][0]["00100020"]["Value"] == ["ALT1"]
        r = await client.get("/dicom-web/series", params={"RequestAttributesSequence.ScheduledProcedureStepID": "SPS2"})
        assert _values(r.json(), "0020000E") == [SE2]
        r = await client.get("/dicom-web/studies", params={"StudyInstanceUID": ST2, "includefield": "00101002"})
        assert r.json()[0]["00101002"]["Value"][0]["00100020"]["Value"] == ["ALT2"]
        for bad in ({"PatientName.PatientID": "x"}, {"OtherPatientIDsSequence": "x"}, {"A.B.C.D.E": "x"}):
            assert (await client.get("/dicom-web/studies", params=bad)).status_code == 400, bad

    web(body)


def test_a_key_the_url_fixes_to_another_value_is_a_400_not_silently_the_urls(web: Callable[..., Any]) -> None:
    """``/studies/ST1/series?StudyInstanceUID=ST2`` answered ST1's series: the key yielded to the URL
    without a word. A key that agrees with the URL (or lists its value, or is empty) is still fine."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        await _two_studies(client)
        url = f"/dicom-web/studies/{ST1}/series"
        for agreeing in (ST1, f"{ST2},{ST1}", ""):
            r = await client.get(url, params={"StudyInstanceUID": agreeing})
            assert r.status_code == 200 and _values(r.json(), "0020000E") == [SE1], (agreeing, r.text)
        r = await client.get(url, params={"StudyInstanceUID": ST2})
        assert r.status_code == 400 and "asks for another StudyInstanceUID than the URL's" in r.text
        r = await client.get(f"/dicom-web/studies/{ST1}/series/{SE1}/instances", params={"0020000E": SE2})
        assert r.status_code == 400 and "SeriesInstanceUID" in r.text

    web(body)


def test_includefield_all_comes_alone(web: Callable[..., Any]) -> None:
    """PS3.18 8.3.4.3: ``includefield = *("includefield" "=" (1#attribute / "all"))`` and "if a parameter with
    the value of "all" is present, then other includefield parameters shall not be present". ``all`` next to
    anything else was read as all, silently; it is a 400 naming the extra values. ``all`` alone (in any case,
    RFC 5234 §2.3) and lists of attributes, repeated or not, are answered as before. The REST search shares it."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        await _two_studies(client)
        base = [("StudyInstanceUID", ST1)]
        for alone in ("all", "ALL", " all ", "all,", ",all"):
            r = await client.get("/dicom-web/studies", params=[*base, ("includefield", alone)])
            assert r.status_code == 200 and "00080062" in r.json()[0], (alone, r.text)  # SOPClassesInStudy
        listed = [*base, ("includefield", "StudyDescription,00080062"), ("includefield", "PatientAge")]
        r = await client.get("/dicom-web/studies", params=listed)
        assert r.status_code == 200 and {"00081030", "00080062", "00101010"} <= set(r.json()[0]), r.text
        for mixed, named in (
            ([("includefield", "all,PatientAge")], "'PatientAge'"),
            ([("includefield", "all"), ("includefield", "00101010")], "'00101010'"),
            ([("includefield", "StudyDescription"), ("includefield", "All")], "'StudyDescription'"),
            ([("includefield", "all"), ("includefield", "all")], "all a second time"),
        ):
            r = await client.get("/dicom-web/studies", params=[*base, *mixed])
            assert r.status_code == 400, (mixed, r.text)
            error = r.json()["error"]
            assert error["code"] == "invalid_includefield" and named in error["message"], error
            assert "PS3.18 8.3.4.3" in error["message"]
        r = await client.get(f"/dicom-web/studies/{ST1}/series", params={"includefield": "all,SeriesDescription"})
        assert r.status_code == 400 and "invalid_includefield" in r.text
        r = await client.get("/api/studies", params={"includefield": "all,PatientAge"})
        assert r.status_code == 400 and "invalid_includefield" in r.text, r.text

    web(body)


def _out_of_order(model: dict[str, Any], where: str = "") -> list[str]:
    """Where a PS3.18 JSON object's attributes are not in ascending tag order (F.2.2), items included."""
    found = [f"{where or 'top'}: {list(model)}"] if list(model) != sorted(model) else []
    for tag, element in model.items():
        if element.get("vr") == "SQ":
            for number, item in enumerate(element.get("Value", [])):
                found += _out_of_order(item, f"{where}{tag}[{number}].")
    return found


def test_every_match_lists_its_attributes_in_tag_order(web: Callable[..., Any]) -> None:
    """PS3.18 F.2.2: "Attribute objects within a DICOM JSON Model object shall be ordered by their property
    name in ascending lexicographic (alphabetic) order". The Retrieve URL (0008,1190) came last, after
    (0020,000D) and the counts, at every level; sequence items (includefield of a sequence) too."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        r = await stow(client, _with_sequences(ST1, SE1, SOP1, "ALT1", "SPS1"))
        assert r.status_code == 200, r.text
        for url in (
            "/dicom-web/studies",
            "/dicom-web/series",
            "/dicom-web/instances",
            f"/dicom-web/studies/{ST1}/series",
            f"/dicom-web/studies/{ST1}/instances",
            f"/dicom-web/studies/{ST1}/series/{SE1}/instances",
        ):
            for include in ("", "all", "00101002,RequestAttributesSequence,PatientAge"):
                r = await client.get(url, params={"includefield": include} if include else {})
                assert r.status_code == 200 and r.json(), (url, r.text)
                assert "00081190" in r.json()[0]
                assert [_out_of_order(match) for match in r.json()] == [[]], (url, include)

    web(body)


def test_a_uid_key_given_twice_is_a_uid_list(web: Callable[..., Any]) -> None:
    """PS3.4 C.2.2.2.2 List of UID Matching: ``StudyInstanceUID=a&StudyInstanceUID=b`` (by keyword, by tag,
    or both) is the list ``a,b`` -- how dicomweb-client sends ``search_filters={"StudyInstanceUID": [a, b]}``,
    which was a 400. A UID key given with an empty value next to a UID stays a 400, as does any other key
    given twice (tests/web/test_fuzz_found.py)."""

    async def body(client: httpx.AsyncClient, archive: Archive) -> None:
        await _two_studies(client)
        for params in (
            [("StudyInstanceUID", ST1), ("StudyInstanceUID", ST2)],
            [("StudyInstanceUID", ST1), ("0020000D", f"{ST2},1.2.99")],
        ):
            r = await client.get("/dicom-web/studies", params=params)
            assert r.status_code == 200, r.text
            assert sorted(_values(r.json(), "0020000D")) == [ST1, ST2]
        r = await client.get("/dicom-web/instances", params=[("SOPInstanceUID", SOP2), ("SOPInstanceUID", "1.2.99")])
        assert _values(r.json(), "00080018") == [SOP2]
        r = await client.get(f"/dicom-web/studies/{ST1}/series", params=[("StudyInstanceUID", ST1)] * 2)
        assert _values(r.json(), "0020000E") == [SE1]
        r = await client.get("/api/studies", params=[("StudyInstanceUID", ST1), ("StudyInstanceUID", ST2)])
        assert r.status_code == 200 and len(r.json()) == 2, r.text
        for repeated in ([("StudyInstanceUID", ST1), ("StudyInstanceUID", "")], [("PatientID", "P1")] * 2):
            r = await client.get("/dicom-web/studies", params=repeated)
            assert r.status_code == 400 and r.json()["error"]["code"] == "repeated_parameter", r.text

    web(body)
