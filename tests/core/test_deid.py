"""De-identification (core/deid.py) against every row of the generated PS3.15 Table E.1-1."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pydicom
import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from minipacs.core.deid import (
    BINARY_VRS,
    DUMMY,
    DUMMY_CODE_SEQUENCES,
    RESOLVED,
    InvalidDeidOptions,
    Mapping,
    Pseudonyms,
    action_for,
    check_options,
    deidentify,
)
from minipacs.dicom.deid_table import EDITION, OPTIONS, PRIVATE, PROFILE
from tests.dicomgen import make_ct, make_sr

KEY = b"test-key-0123456789abcdef"
#: A tag standing for each masked row of the table.
STAND_IN = {0x50000000: 0x50003000, 0x60004000: 0x60004000, 0x60003000: 0x60003000}


def _tag(row: tuple[int, int, str, str, dict[str, str]]) -> int:
    return STAND_IN.get(row[0], row[0]) if row[1] != 0xFFFFFFFF else row[0]


def _value(tag: int, vr: str) -> Any:
    """A VR-correct value that names its tag, so the output bytes can be searched for it."""
    hexed = f"{tag:08X}"
    text = {
        "AE": f"AE{hexed}",
        "AS": "042Y",
        "CS": f"CS{hexed}",
        "DA": "19710203",
        "DS": "7.5",
        "DT": "19710203101112",
        "IS": "7",
        "LO": f"SECRETLO{hexed}",
        "LT": f"SECRETLT{hexed}",
        "PN": f"SECRETPN{hexed}^GIVEN{hexed}",
        "SH": f"SH{hexed}",
        "ST": f"SECRETST{hexed}",
        "TM": "101112",
        "UC": f"SECRETUC{hexed}",
        "UR": f"http://example.invalid/{hexed}",
        "UT": f"SECRETUT{hexed}",
        "UI": f"1.2.826.0.1.3680043.10.1.{tag}",
    }
    if vr in text:
        return text[vr]
    if vr in ("US", "SS", "UL", "SL"):
        return 7
    if vr in ("OB", "OW", "UN", "OB or OW"):
        return b"\x01\x02"
    raise AssertionError(f"no test value for VR {vr}")


def _nested() -> Dataset:
    """An item with an identifying name, a UID and a private element inside."""
    item = Dataset()
    item.PersonName = "NESTED^SECRETPERSON"
    item.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.10.1.777"
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    item.add_new(0x00090010, "LO", "NESTED CREATOR")
    item.add_new(0x00091001, "LO", "SECRETNESTEDPRIVATE")
    return item


def full_dataset() -> Dataset:
    """A CT whose every Table E.1-1 attribute is present with a VR-correct value."""
    ds = make_ct("1.2.826.0.1.3680043.10.1.1", "1.2.826.0.1.3680043.10.1.2", "1.2.826.0.1.3680043.10.1.3")
    for row in PROFILE:
        tag = _tag(row)
        vr = dictionary_VR(tag)
        if vr == "SQ":
            ds.add_new(tag, "SQ", Sequence([_nested()]))
        else:
            ds.add_new(tag, "OB" if vr == "OB or OW" else vr, _value(tag, vr))
    ds.PatientID = "SECRETPID42"
    ds.PatientName = "SECRETSURNAME^SECRETGIVEN"
    ds.add_new(0x00290010, "LO", "SOME VENDOR")
    ds.add_new(0x00291001, "LO", "SECRETPRIVATEVALUE")
    ds.add_new(0x00190010, "LO", "SIEMENS MR HEADER")
    ds.add_new(0x0019100C, "IS", "1000")  # safe private: B value
    ds.add_new(0x00191001, "LO", "SECRETUNSAFE")
    return ds


def _encoded(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_the_generated_table_records_its_edition_and_every_action_is_known() -> None:
    assert EDITION.startswith("20")
    assert len(PROFILE) > 600
    actions = {row[3] for row in PROFILE}
    assert actions <= {"D", "Z", "X", "K", "C", "U", *RESOLVED}
    assert {"X/Z/U*", "Z/D", "X/Z/D"} <= actions
    assert PRIVATE["basic"] == "X" and PRIVATE["retain-safe-private"] == "C"


@pytest.mark.parametrize("options", [frozenset(), frozenset(OPTIONS) - {"retain-long-full-dates"}])
def test_every_attribute_of_the_table_gets_its_action(options: frozenset[str]) -> None:
    original = full_dataset()
    ds = full_dataset()
    pseudo = Pseudonyms(KEY)
    deidentify(ds, options, pseudo, Mapping())
    checked = 0
    for row in PROFILE:
        tag = _tag(row)
        action = action_for(tag, options)
        before = original[tag]
        assert action in ("X", "Z", "K", "D", "U", "U*", "C"), row
        if tag in (0x00120081,) and 0x00120082 not in ds:
            assert tag not in ds, row  # REMOVED_WITH: 1C on an attribute the profile removed
        elif 0x6000 <= tag >> 16 <= 0x601E and (tag >> 16 << 16 | 0x3000) not in ds:
            assert tag not in ds, row  # the overlay went with its Overlay Data (PS3.3 C.9.2)
        elif tag >> 16 in (0x0000, 0x0002):
            assert tag not in ds, row  # command and file meta elements: the file meta is written anew
        elif tag in (0x00100010, 0x00100020):
            assert str(ds[tag].value).startswith("ANON"), row
        elif action == "X":
            assert tag not in ds, row
        elif action == "Z":
            assert tag in ds and (ds[tag].VM == 0 or before.VR == "SQ" and len(ds[tag].value) == 0), row
        elif action == "K":
            if before.VR != "SQ":
                assert ds[tag].value == before.value, row
        elif action == "D":
            assert tag in ds and ds[tag].VM >= 1, row
            if before.VR != "SQ":
                assert ds[tag].value != before.value, row
        elif action in ("U", "U*"):
            if before.VR == "UI":
                assert ds[tag].value == pseudo.uid(before.value), row
            else:
                assert len(ds[tag].value) == 1, row
        elif action == "C" and before.VR in BINARY_VRS:
            assert tag not in ds, row  # bytes cannot be cleaned (overlay/curve data, Maker Note): removed
        elif action == "C":
            assert tag in ds, row
            if before.VR in ("DA", "DT"):
                assert ds[tag].value != before.value and ds[tag].value[:4].isdigit(), row
        else:  # pragma: no cover - the table test above keeps this out
            raise AssertionError(f"unknown action {action} for {row}")
        if before.VR == "SQ" and tag in ds and len(ds[tag].value) and tag not in DUMMY_CODE_SEQUENCES:
            item = ds[tag].value[0]  # nested: the same table applies inside
            assert "PersonName" in item and item.PersonName != "NESTED^SECRETPERSON", row
            nested_uid = "1.2.826.0.1.3680043.10.1.777"
            expected = nested_uid if "retain-uids" in options else pseudo.uid(nested_uid)
            assert item.ReferencedSOPInstanceUID == expected, row
            assert 0x00091001 not in item and 0x00090010 not in item, row
        checked += 1
    assert checked == len(PROFILE)
    assert ds.PatientIdentityRemoved == "YES"
    codes = {item.CodeValue for item in ds.DeidentificationMethodCodeSequence}
    assert "113100" in codes and len(codes) == 1 + len(options)


def test_private_attributes_removed_unless_safe_and_asked() -> None:
    ds = deidentify(full_dataset(), frozenset(), Pseudonyms(KEY), Mapping())
    assert not [e for e in ds if e.tag.group & 1]
    kept = deidentify(full_dataset(), frozenset({"retain-safe-private"}), Pseudonyms(KEY), Mapping())
    private = {int(e.tag) for e in kept if e.tag.group & 1}
    assert private == {0x00190010, 0x0019100C}


def test_no_identifying_value_is_left_in_the_output_bytes() -> None:
    original = full_dataset()
    ds = deidentify(full_dataset(), frozenset(), Pseudonyms(KEY), Mapping())
    data = _encoded(ds)
    secrets = ["SECRETPID42", "SECRETSURNAME", "SECRETGIVEN", "SECRETPRIVATE", "SECRETNESTED", "SECRETPERSON"]
    for row in PROFILE:
        tag = _tag(row)
        if action_for(tag, frozenset()) != "K" and original[tag].VR not in ("SQ", "DA", "DT", "TM", "AS", "DS", "IS"):
            value = original[tag].value
            if isinstance(value, str):
                secrets.append(value.split("^")[0])
    for secret in secrets:
        assert secret.encode() not in data, secret
    # dates: none of the original's dates survive without the temporal options
    assert b"19710203" not in data
    # UIDs: every test UID (all U, or in the make_ct study/series/instance) is replaced
    assert b"1.2.826.0.1.3680043.10.1." not in data


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "99HOSP", meaning
    return item


def test_identifying_code_sequences_get_a_dummy_code_not_the_original_items() -> None:
    """PS3.15 E.1.1 D on Institution Code Sequence / Person Identification Code Sequence: a dummy
    value; their Code Meaning is the hospital's or the person's name, which the table does not name."""

    def study() -> Dataset:
        ds = make_ct("1.9.1", "1.9.2", "1.9.3")
        ds.InstitutionCodeSequence = Sequence([_code("MGH", "SECRET General Hospital")])
        operator = Dataset()
        operator.PersonIdentificationCodeSequence = Sequence([_code("EMP123", "SECRETOPERATOR Jones")])
        ds.OperatorIdentificationSequence = Sequence([operator])
        return ds

    out = deidentify(study(), frozenset(), Pseudonyms(KEY), Mapping())
    data = _encoded(out)
    assert b"SECRET" not in data and b"EMP123" not in data and b"MGH" not in data
    (code,) = out.InstitutionCodeSequence  # D: non-zero length, a Code Sequence Macro item
    assert code.CodingSchemeDesignator.startswith("99") and code.CodeValue and code.CodeMeaning
    assert len(out.OperatorIdentificationSequence[0].PersonIdentificationCodeSequence) == 1
    kept = deidentify(study(), frozenset({"retain-institution-identity"}), Pseudonyms(KEY), Mapping())
    assert kept.InstitutionCodeSequence[0].CodeValue == "MGH"


def test_an_overlay_whose_data_is_removed_goes_whole() -> None:
    """PS3.3 C.9.2: Overlay Data (60xx,3000) is Type 1; the profile removes it (X), so an overlay
    group left with its rows, columns and origin would fail the IOD (dciodvfy: missing OverlayData)."""

    def overlaid() -> Dataset:
        ds = make_ct("1.9.4", "1.9.5", "1.9.6")
        for group in (0x6000, 0x6002):
            ds.add_new(group << 16 | 0x0010, "US", 2)
            ds.add_new(group << 16 | 0x0011, "US", 8)
            ds.add_new(group << 16 | 0x0040, "CS", "G")
            ds.add_new(group << 16 | 0x0050, "SS", [1, 1])
            ds.add_new(group << 16 | 0x0100, "US", 1)
            ds.add_new(group << 16 | 0x0102, "US", 0)
            ds.add_new(group << 16 | 0x3000, "OW", b"\xff\x00")
        return ds

    out = deidentify(overlaid(), frozenset(), Pseudonyms(KEY), Mapping())
    assert not [t for t in out.keys() if 0x6000 <= t.group <= 0x601E]
    # Clean Graphics (C) cannot look into the overlay bitmap for burned-in text: still removed
    graphics = deidentify(overlaid(), frozenset({"clean-graphics"}), Pseudonyms(KEY), Mapping())
    assert not [t for t in graphics.keys() if 0x6000 <= t.group <= 0x601E]
    kept = overlaid()
    kept.add_new(0x60004000, "LT", "drawn by Dr SECRET")
    out = deidentify(kept, frozenset(), Pseudonyms(KEY), Mapping())
    assert b"SECRET" not in _encoded(out)


def test_well_known_uids_of_the_standard_are_kept_and_references_follow_their_target() -> None:
    """U (PS3.15 E.1.1) replaces instance UIDs; a PS3.6 Annex A well-known UID (the UTC Synchronization
    Frame of Reference, PS3.3 C.7.4.2) names no one and means something only as it is."""
    utc = "1.2.840.10008.15.1.1"
    pseudo = Pseudonyms(KEY)
    image = make_ct("1.10.1", "1.10.2", "1.10.3")
    image.SynchronizationFrameOfReferenceUID = utc
    image.FrameOfReferenceUID = "1.10.4"
    report = make_ct("1.10.1", "1.10.5", "1.10.6", SOPClassUID="1.2.840.10008.5.1.4.1.1.88.22")
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = image.SOPClassUID, image.SOPInstanceUID
    report.ReferencedImageSequence = Sequence([ref])
    out_image = deidentify(image, frozenset(), pseudo, Mapping())
    out_report = deidentify(report, frozenset(), pseudo, Mapping())
    assert out_image.SynchronizationFrameOfReferenceUID == utc
    assert out_image.FrameOfReferenceUID == pseudo.uid("1.10.4")
    assert out_report.ReferencedImageSequence[0].ReferencedSOPInstanceUID == out_image.SOPInstanceUID
    assert out_report.ReferencedImageSequence[0].ReferencedSOPClassUID == out_image.SOPClassUID
    assert out_report.StudyInstanceUID == out_image.StudyInstanceUID != "1.10.1"


def test_pseudonyms_are_consistent_and_keyed() -> None:
    one, two = Pseudonyms(KEY), Pseudonyms(KEY)
    assert one.uid("1.2.3") == two.uid("1.2.3") != Pseudonyms(b"another-key-0123456789").uid("1.2.3")
    assert one.uid("1.2.3").startswith("2.25.") and len(one.uid("1.2.3")) <= 64
    a = deidentify(make_ct("1.2.3.1", "1.2.3.2", "1.2.3.3", patient_id="PX"), frozenset(), one, Mapping())
    b = deidentify(make_ct("1.2.4.1", "1.2.4.2", "1.2.4.3", patient_id="PX"), frozenset(), two, Mapping())
    assert a.PatientID == b.PatientID and a.PatientName == b.PatientName
    assert a.StudyInstanceUID != b.StudyInstanceUID


def test_modified_dates_shift_every_date_of_a_patient_by_the_same_days() -> None:
    options = frozenset({"retain-long-modified-dates"})
    pseudo = Pseudonyms(KEY)
    one = deidentify(make_ct("1.5.1", "1.5.2", "1.5.3", StudyDate="20200110"), options, pseudo, Mapping())
    two = deidentify(make_ct("1.6.1", "1.6.2", "1.6.3", StudyDate="20200120"), options, pseudo, Mapping())
    assert one.StudyDate != "20200110"
    days = (
        pydicom.valuerep.DA(two.StudyDate) - pydicom.valuerep.DA(one.StudyDate)  # type: ignore[operator]
    ).days
    assert days == 10
    assert one.LongitudinalTemporalInformationModified == "MODIFIED"


def test_clean_descriptors_blanks_identifying_words_and_keeps_the_rest() -> None:
    ds = make_ct("1.7.1", "1.7.2", "1.7.3", patient_name="Smithers^Waylon", StudyDescription="CT head Smithers")
    out = deidentify(ds, frozenset({"clean-descriptors"}), Pseudonyms(KEY), Mapping())
    assert out.StudyDescription == "CT head ***"


REPORT_STUDY = "1.2.826.0.1.3680043.10.12.1"
REPORTED_IMAGE = (REPORT_STUDY, REPORT_STUDY + ".1", REPORT_STUDY + ".1.1")
FINDINGS = "Richard Roe (PID-7781), seen 2024-01-05 at St Elsewhere: a 12 mm nodule. Dr House informed."
#: What the report below says that identifies: the patient's name and ID (also inside the TEXT), the
#: observer, the places and people only the text names, the dates (as values and as words).
REPORT_SECRETS = ("Roe", "Richard", "PID-7781", "Watson", "Elsewhere", "House", "2024-01-05", "20240105", "19700101")


def report() -> Dataset:
    """A Comprehensive SR on a CT of the same study: PNAME, TEXT, DATE, TIME, DATETIME, UIDREF, NUM,
    CODE and IMAGE items in nested containers, the patient's name inside the findings text."""
    return make_sr(
        REPORT_STUDY,
        REPORT_STUDY + ".2",
        REPORT_STUDY + ".2.1",
        REPORTED_IMAGE,
        patient_id="PID-7781",
        patient_name="Roe^Richard",
        findings=FINDINGS,
        observer="Watson^John^^Dr",
    )


def walk(ds: Dataset) -> Iterator[tuple[int, str, str]]:
    """Every value of ``ds`` at any depth, as (tag, VR, text)."""
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                yield from walk(item)
        elif isinstance(elem.value, (list, pydicom.multival.MultiValue)):
            yield from ((int(elem.tag), elem.VR, str(v)) for v in elem.value)
        elif elem.value is not None:
            yield int(elem.tag), elem.VR, str(elem.value)


def tree(ds: Dataset) -> list[tuple[Any, ...]]:
    """The content tree without its values: relationship, value type, concept name, coded and numeric
    values, children (PS3.3 C.17.3)."""

    def codes(item: Dataset, keyword: str) -> tuple[tuple[str, str, str], ...]:
        return tuple((c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning) for c in item.get(keyword, []))

    return [
        (
            item.get("RelationshipType"),
            item.ValueType,
            codes(item, "ConceptNameCodeSequence"),
            codes(item, "ConceptCodeSequence"),
            tuple(m.NumericValue for m in item.get("MeasuredValueSequence", [])),
            sorted(e.keyword for e in item),
            tree(item) if "ContentSequence" in item else [],
        )
        for item in ds.ContentSequence
    ]


def test_sr_content_keeps_its_tree_and_codes_and_loses_every_text_name_date_and_uid() -> None:
    """PS3.15 Table E.1-1: Content Sequence (0040,A730) is D in the Basic Profile. Text Value
    (0040,A160) is not in the table, so keeping the items and applying the table inside kept the
    findings word for word; D means dummy values (E.1.1), the tree stays a valid SR (PS3.3 C.17.3)."""
    pseudo = Pseudonyms(KEY)
    out = deidentify(report(), frozenset(), pseudo, Mapping())
    for tag, vr, value in walk(out):
        for secret in REPORT_SECRETS:
            assert secret.lower() not in value.lower(), (f"{tag:08X}", value)
        if vr == "UI":
            assert value.startswith(("1.2.840.10008.", "2.25.")), (f"{tag:08X}", value)
    assert "Observer" in str(out.ContentSequence[0].ConceptNameCodeSequence[0].CodeMeaning)
    assert tree(out) == tree(report())  # the structure, the codes, the numbers
    values = {item.ValueType: item for item in out.ContentSequence[-1].ContentSequence}
    assert values["TEXT"].TextValue == DUMMY["UT"] and values["NUM"].MeasuredValueSequence[0].NumericValue == "12"
    assert out.ContentSequence[1].PersonName == DUMMY["PN"] and values["DATE"].Date == DUMMY["DA"]
    # references follow the UID mapping: the UIDREF and the IMAGE point where the evidence does
    evidence = out.CurrentRequestedProcedureEvidenceSequence[0]
    assert values["UIDREF"].UID == evidence.StudyInstanceUID == pseudo.uid(REPORT_STUDY)
    pointed = values["IMAGE"].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    assert pointed == evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    assert pointed == pseudo.uid(REPORTED_IMAGE[2])
    # free text in the kept sequences of a dummied one goes too: a presentation state's annotation
    state = make_ct("1.11.1", "1.11.2", "1.11.3")
    text = Dataset()
    text.UnformattedTextValue = "Roe R. left knee"  # (0070,0006): not in Table E.1-1
    text.BoundingBoxAnnotationUnits = "PIXEL"
    annotation = Dataset()
    annotation.GraphicLayer = "LAYER1"
    annotation.TextObjectSequence = Sequence([text])
    state.GraphicAnnotationSequence = Sequence([annotation])  # D
    out = deidentify(state, frozenset(), pseudo, Mapping())
    assert out.GraphicAnnotationSequence[0].TextObjectSequence[0].UnformattedTextValue == DUMMY["ST"]
    assert out.GraphicAnnotationSequence[0].GraphicLayer == "LAYER1"  # CS: structure, kept


def test_clean_structured_content_keeps_the_words_that_identify_nobody() -> None:
    """PS3.15 E.3.4 Clean Structured Content: the text stays, cleaned of what the dataset knows to be
    identifying (the patient's and the observer's names, the IDs); a name that appears nowhere else in
    the dataset cannot be known (docs/ANONYMIZATION.md says so)."""
    out = deidentify(report(), frozenset({"clean-structured-content"}), Pseudonyms(KEY), Mapping())
    text = next(i for i in out.ContentSequence[-1].ContentSequence if i.ValueType == "TEXT").TextValue
    assert "12 mm nodule" in text
    for secret in ("Roe", "Richard", "PID-7781", "2024-01-05"):  # the date: Study Date is Z
        assert secret not in text, text
    assert tree(out) == tree(report())


@pytest.mark.parametrize(
    ("dates", "kept"), [("retain-long-modified-dates", False), ("retain-long-full-dates", True), (None, False)]
)
def test_a_cleaned_text_keeps_no_real_date_unless_the_dates_are_kept(dates: str | None, kept: bool) -> None:
    """PS3.15 E.3.6 Modified Dates shifts every date; a cleaned text (Clean Descriptors E.3.5, Clean
    Structured Content E.3.4) that still gave the real one would undo it. Before, the dates the option
    shifts (action C) were not counted as identifying, so they stayed in the text."""
    options = frozenset({"clean-descriptors", "clean-structured-content"} | ({dates} if dates else set()))
    study = make_ct("1.7.4", "1.7.5", "1.7.6", StudyDate="20240105", StudyDescription="CT of 20240105, 05/01/2024")
    out = deidentify(study, options, Pseudonyms(KEY), Mapping())
    assert out.StudyDescription == ("CT of 20240105, 05/01/2024" if kept else "CT of ***, ***")
    text = next(
        i
        for i in deidentify(report(), options, Pseudonyms(KEY), Mapping()).ContentSequence[-1].ContentSequence
        if i.ValueType == "TEXT"
    ).TextValue
    assert ("2024-01-05" in text) is kept, text


def test_options_are_checked() -> None:
    with pytest.raises(InvalidDeidOptions, match="unknown"):
        check_options(["retain-everything"])
    with pytest.raises(InvalidDeidOptions, match="not both"):
        check_options(["retain-long-full-dates", "retain-long-modified-dates"])


def test_the_mapping_lists_patient_and_uids() -> None:
    mapping = Mapping()
    pseudo = Pseudonyms(KEY)
    deidentify(make_ct("1.8.1", "1.8.2", "1.8.3", patient_id="PM"), frozenset(), pseudo, mapping)
    kinds = {(k, o) for k, o, _ in mapping.rows}
    assert ("patient_id", "PM") in kinds and ("uid", "1.8.1") in kinds and ("uid", "1.8.3") in kinds
    assert ("uid", "1.2.840.10008.5.1.4.1.1.2") not in kinds  # SOP Class UIDs are not identifying


def test_the_table_file_is_what_the_generator_writes(capsys: pytest.CaptureFixture[str]) -> None:
    import runpy
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    generator = runpy.run_path(str(root / "tools" / "gen_deid_table.py"))
    generator["main"](["gen_deid_table.py"])
    written = (root / "src" / "minipacs" / "dicom" / "deid_table.py").read_text(encoding="utf-8")
    assert capsys.readouterr().out == written  # generated, never edited by hand
