"""dicom/uids.py: one table of UIDs and transfer syntaxes (PS3.6 Table A-1, PS3.5 Annex A)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from minipacs.dicom import uids
from minipacs.dicom.uids_generated import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("uid", "implicit", "little", "deflated", "encapsulated"),
    [
        ("1.2.840.10008.1.2", True, True, False, False),  # PS3.5 A.1
        ("1.2.840.10008.1.2.1", False, True, False, False),  # A.2
        ("1.2.840.10008.1.2.2", False, False, False, False),  # A.3
        ("1.2.840.10008.1.2.1.99", False, True, True, False),  # A.5
        ("1.2.840.10008.1.2.1.98", False, True, False, True),  # A.4 encapsulated uncompressed
        ("1.2.840.10008.1.2.4.50", False, True, False, True),  # A.4.1 JPEG
        ("1.2.840.10008.1.2.5", False, True, False, True),  # A.4.2 RLE
        # A.6: JPIP Referenced Deflate deflates the dataset like A.5; core/header.py said so,
        # net/uids.py did not (it read such a dataset as plain explicit VR little endian).
        ("1.2.840.10008.1.2.4.94", False, True, False, True),
        ("1.2.840.10008.1.2.4.95", False, True, True, True),
        ("1.2.840.10008.1.2.4.204", False, True, False, True),
        ("1.2.840.10008.1.2.4.205", False, True, True, True),
        ("1.2.840.10008.1.20", True, True, False, False),  # Papyrus 3 Implicit VR Little Endian (retired)
    ],
)
def test_transfer_syntax_encodings(uid: str, implicit: bool, little: bool, deflated: bool, encapsulated: bool) -> None:
    ts = uids.transfer_syntax(uid)
    assert ts is not None
    assert (ts.implicit_vr, ts.little_endian, ts.deflated, ts.encapsulated) == (
        implicit,
        little,
        deflated,
        encapsulated,
    )
    assert ts.name == TRANSFER_SYNTAXES[uid]


def test_every_transfer_syntax_of_table_a1_is_known_and_nothing_else() -> None:
    assert set(uids.TRANSFER_SYNTAX_TABLE) == set(TRANSFER_SYNTAXES)
    assert uids.transfer_syntax("1.2.3.4") is None
    # every special encoding names a real transfer syntax (no typo hides one)
    assert set(uids._ENCODINGS) <= set(TRANSFER_SYNTAXES)


def test_named_constants_are_what_table_a1_calls_them() -> None:
    assert TRANSFER_SYNTAXES[uids.IMPLICIT_VR_LITTLE_ENDIAN] == "Implicit VR Little Endian"
    assert TRANSFER_SYNTAXES[uids.EXPLICIT_VR_LITTLE_ENDIAN] == "Explicit VR Little Endian"
    assert TRANSFER_SYNTAXES[uids.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN] == "Deflated Explicit VR Little Endian"
    assert TRANSFER_SYNTAXES[uids.EXPLICIT_VR_BIG_ENDIAN].startswith("Explicit VR Big Endian")
    assert TRANSFER_SYNTAXES[uids.JPIP_REFERENCED_DEFLATE] == "JPIP Referenced Deflate"
    assert TRANSFER_SYNTAXES[uids.JPIP_HTJ2K_REFERENCED_DEFLATE] == "JPIP HTJ2K Referenced Deflate"


def test_service_sop_classes_match_pydicom() -> None:
    """The SOP classes written by hand agree with PS3.6 Table A-1 as pydicom has it."""
    from pydicom._uid_dict import UID_dictionary

    by_keyword = {entry[4]: uid for uid, entry in UID_dictionary.items()}
    assert uids.VERIFICATION_SOP_CLASS == by_keyword["Verification"]
    assert uids.PATIENT_ROOT_FIND == by_keyword["PatientRootQueryRetrieveInformationModelFind"]
    assert uids.PATIENT_ROOT_MOVE == by_keyword["PatientRootQueryRetrieveInformationModelMove"]
    assert uids.PATIENT_ROOT_GET == by_keyword["PatientRootQueryRetrieveInformationModelGet"]
    assert uids.STUDY_ROOT_FIND == by_keyword["StudyRootQueryRetrieveInformationModelFind"]
    assert uids.STUDY_ROOT_MOVE == by_keyword["StudyRootQueryRetrieveInformationModelMove"]
    assert uids.STUDY_ROOT_GET == by_keyword["StudyRootQueryRetrieveInformationModelGet"]
    assert uids.PATIENT_STUDY_ONLY_FIND == by_keyword["PatientStudyOnlyQueryRetrieveInformationModelFind"]
    assert uids.MODALITY_WORKLIST_FIND == by_keyword["ModalityWorklistInformationModelFind"]
    assert uids.MODALITY_PERFORMED_PROCEDURE_STEP == by_keyword["ModalityPerformedProcedureStep"]
    assert uids.STORAGE_COMMITMENT_PUSH_MODEL == by_keyword["StorageCommitmentPushModel"]
    assert uids.STORAGE_COMMITMENT_INSTANCE == by_keyword["StorageCommitmentPushModelInstance"]
    assert uids.APPLICATION_CONTEXT_NAME == "1.2.840.10008.3.1.1.1"


def test_uid_names() -> None:
    assert uids.uid_name(uids.VERIFICATION_SOP_CLASS) == "Verification SOP Class"
    assert uids.uid_name("1.2.840.10008.5.1.4.1.1.2") == "CT Image Storage"
    assert uids.uid_name(uids.EXPLICIT_VR_LITTLE_ENDIAN) == "Explicit VR Little Endian"
    assert uids.uid_name("1.2.3") == "1.2.3"
    assert uids.is_storage_sop_class("1.2.840.10008.5.1.4.1.1.2")
    assert not uids.is_storage_sop_class(uids.VERIFICATION_SOP_CLASS)
    assert "1.2.840.10008.1.20.1" not in STORAGE_SOP_CLASSES  # Storage Commitment is no storage


def test_the_generated_file_is_marked_and_up_to_date() -> None:
    """tools/gen_uids.py writes exactly the committed file, with the marker and the DICOM edition."""
    generated = (ROOT / "src/minipacs/dicom/uids_generated.py").read_text()
    assert generated.startswith('"""GENERATED by tools/gen_uids.py - do not edit.')
    from pydicom._version import __dicom_version__

    assert f"DICOM {__dicom_version__} PS3.6 Table A-1" in generated
    out = subprocess.run(
        [sys.executable, str(ROOT / "tools/gen_uids.py")], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out == generated
