"""UIDs and transfer syntaxes: the one table every layer reads (PS3.6 Table A-1, PS3.5 Annex A).

The Storage SOP classes and the names of all transfer syntaxes are generated from
PS3.6 Table A-1 into ``uids_generated.py`` (``tools/gen_uids.py``); the SOP
classes of the services we implement and the dataset encoding of each transfer
syntax (PS3.5 §10 and Annex A) are written here, once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from minipacs.dicom.uids_generated import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES

# PS3.7 Annex A.2.1: the DICOM Application Context Name.
APPLICATION_CONTEXT_NAME: Final = "1.2.840.10008.3.1.1.1"

# PS3.4 Annex A: Verification SOP Class.
VERIFICATION_SOP_CLASS: Final = "1.2.840.10008.1.1"

# PS3.4 Table C.4-1 / C.5-1 (Patient Root), C.5-2 (Study Root), C.5-3 (Patient/Study Only,
# retired): the Query/Retrieve FIND, MOVE and GET SOP classes.
#: The root of the standard's own UIDs (PS3.5 9.2): SOP classes, frames of reference, coding schemes.
DICOM_UID_ROOT: Final = "1.2.840.10008."
#: PS3.6 Table A-1: the Storage SOP classes' branch; a class under it that our dictionary (DICOM 2024c)
#: does not name is a newer Storage class, never another service's (services/storage.py).
STORAGE_BRANCH: Final = "1.2.840.10008.5.1.4.1.1."
PATIENT_ROOT_FIND: Final = "1.2.840.10008.5.1.4.1.2.1.1"
PATIENT_ROOT_MOVE: Final = "1.2.840.10008.5.1.4.1.2.1.2"
PATIENT_ROOT_GET: Final = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_ROOT_FIND: Final = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE: Final = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET: Final = "1.2.840.10008.5.1.4.1.2.2.3"
PATIENT_STUDY_ONLY_FIND: Final = "1.2.840.10008.5.1.4.1.2.3.1"
PATIENT_STUDY_ONLY_MOVE: Final = "1.2.840.10008.5.1.4.1.2.3.2"
PATIENT_STUDY_ONLY_GET: Final = "1.2.840.10008.5.1.4.1.2.3.3"

# PS3.4 K.6.1.3: Modality Worklist Information Model - FIND.
MODALITY_WORKLIST_FIND: Final = "1.2.840.10008.5.1.4.31"
# PS3.4 F.7.1: Modality Performed Procedure Step SOP Class.
MODALITY_PERFORMED_PROCEDURE_STEP: Final = "1.2.840.10008.3.1.2.3.3"
# PS3.4 J.3.1: Storage Commitment Push Model SOP Class and its well-known SOP instance.
STORAGE_COMMITMENT_PUSH_MODEL: Final = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE: Final = "1.2.840.10008.1.20.1.1"
# PS3.4 B.5: Key Object Selection Document Storage (a rejection note's class, core/rejection.py).
KEY_OBJECT_SELECTION_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.88.59"

# PS3.5 §10 / PS3.6 Table A-1: the transfer syntaxes named in code.
IMPLICIT_VR_LITTLE_ENDIAN: Final = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN: Final = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN: Final = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN: Final = "1.2.840.10008.1.2.2"
RLE_LOSSLESS: Final = "1.2.840.10008.1.2.5"  # PS3.5 A.4.2, Annex G
JPEG_BASELINE: Final = "1.2.840.10008.1.2.4.50"  # PS3.5 A.4.1: JPEG Process 1
JPEG_EXTENDED: Final = "1.2.840.10008.1.2.4.51"  # JPEG Processes 2 & 4
JPEG_LOSSLESS: Final = "1.2.840.10008.1.2.4.57"  # JPEG Process 14
JPEG_LOSSLESS_SV1: Final = "1.2.840.10008.1.2.4.70"  # JPEG Process 14, first-order prediction
JPEG_LS_LOSSLESS: Final = "1.2.840.10008.1.2.4.80"  # PS3.5 A.4.3, 8.2.3
JPEG_LS_NEAR_LOSSLESS: Final = "1.2.840.10008.1.2.4.81"
JPEG_2000_LOSSLESS: Final = "1.2.840.10008.1.2.4.90"  # PS3.5 A.4.4, 8.2.4
JPEG_2000: Final = "1.2.840.10008.1.2.4.91"
JPEG_2000_PART2: Final = "1.2.840.10008.1.2.4.93"
HTJ2K: Final = "1.2.840.10008.1.2.4.203"
JPIP_REFERENCED: Final = "1.2.840.10008.1.2.4.94"
JPIP_REFERENCED_DEFLATE: Final = "1.2.840.10008.1.2.4.95"
JPIP_HTJ2K_REFERENCED: Final = "1.2.840.10008.1.2.4.204"
JPIP_HTJ2K_REFERENCED_DEFLATE: Final = "1.2.840.10008.1.2.4.205"
PAPYRUS_3_IMPLICIT_VR_LITTLE_ENDIAN: Final = "1.2.840.10008.1.20"


@dataclass(frozen=True)
class TransferSyntax:
    """How a transfer syntax encodes the dataset (PS3.5 §10 and Annex A).

    ``encapsulated``: the Pixel Data is not native (PS3.5 A.4 encapsulated, or absent
    and referenced as in the JPIP syntaxes of A.6): it cannot be transcoded into.
    """

    uid: str
    implicit_vr: bool
    little_endian: bool
    deflated: bool
    encapsulated: bool
    name: str = ""


# PS3.5 Annex A: every transfer syntax whose dataset is not "Explicit VR Little Endian,
# encapsulated Pixel Data" (A.4), which is all the others of PS3.6 Table A-1.
# uid -> (implicit VR, little endian, deflated, encapsulated)
_ENCODINGS: Final[Mapping[str, tuple[bool, bool, bool, bool]]] = {
    IMPLICIT_VR_LITTLE_ENDIAN: (True, True, False, False),  # A.1
    EXPLICIT_VR_LITTLE_ENDIAN: (False, True, False, False),  # A.2
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN: (False, True, True, False),  # A.5
    EXPLICIT_VR_BIG_ENDIAN: (False, False, False, False),  # A.3 (retired)
    # A.6: JPIP Referenced: Explicit VR Little Endian, Pixel Data absent (a provider URL instead);
    # the "Deflate" variants deflate the dataset as A.5 does.
    JPIP_REFERENCED: (False, True, False, True),
    JPIP_REFERENCED_DEFLATE: (False, True, True, True),
    JPIP_HTJ2K_REFERENCED: (False, True, False, True),
    JPIP_HTJ2K_REFERENCED_DEFLATE: (False, True, True, True),
    # PS3.6 Table A-1 (retired): the name says how its dataset is encoded.
    PAPYRUS_3_IMPLICIT_VR_LITTLE_ENDIAN: (True, True, False, False),
}
_ENCAPSULATED_EXPLICIT_LE: Final = (False, True, False, True)

#: uid -> TransferSyntax, for every transfer syntax of PS3.6 Table A-1.
TRANSFER_SYNTAX_TABLE: Final[Mapping[str, TransferSyntax]] = {
    uid: TransferSyntax(uid, *_ENCODINGS.get(uid, _ENCAPSULATED_EXPLICIT_LE), name=name)
    for uid, name in TRANSFER_SYNTAXES.items()
}


#: Encapsulated syntaxes that can only carry lossless pixel data (PS3.5 A.4: JPEG Processes 14, JPEG-LS
#: and JPEG 2000 "Lossless Only", HTJ2K lossless, RLE). PS3.18 8.7.3.4 lets an origin server return pixel
#: data it holds only in lossy form as it is; these it must decompress for the Default transfer syntax.
LOSSLESS_ONLY_SYNTAXES: Final = frozenset(
    {
        "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70",
        JPEG_LS_LOSSLESS,
        JPEG_2000_LOSSLESS,
        "1.2.840.10008.1.2.4.92",
        "1.2.840.10008.1.2.4.201",
        "1.2.840.10008.1.2.4.202",
        RLE_LOSSLESS,
    }
)


#: Encapsulated syntaxes that are lossless too, beyond LOSSLESS_ONLY_SYNTAXES: Encapsulated Uncompressed
#: (PS3.5 A.4.11), the retired lossless JPEG processes 15, 28 and 29, and the uncompressed SMPTE ST 2110
#: video and audio (PS3.5 A.9).
_LOSSLESS_ENCAPSULATED: Final = frozenset(
    {
        "1.2.840.10008.1.2.1.98",
        "1.2.840.10008.1.2.4.58",
        "1.2.840.10008.1.2.4.65",
        "1.2.840.10008.1.2.4.66",
        "1.2.840.10008.1.2.7.1",
        "1.2.840.10008.1.2.7.2",
        "1.2.840.10008.1.2.7.3",
    }
)
#: Syntaxes whose pixel data may have been compressed lossily (PS3.5 8.2): every other encapsulated
#: one -- JPEG baseline and extended, JPEG-LS near-lossless, JPEG 2000 and HTJ2K (lossless or lossy),
#: the video syntaxes, and the JPIP ones (pixel data elsewhere, in either form). An acceptor that picks
#: one of these where a lossless one is proposed beside it lets the sender compress irreversibly on the
#: way (services/storage.py).
MAY_BE_LOSSY_SYNTAXES: Final = frozenset(
    uid
    for uid, ts in TRANSFER_SYNTAX_TABLE.items()
    if ts.encapsulated and uid not in LOSSLESS_ONLY_SYNTAXES | _LOSSLESS_ENCAPSULATED
)


def transfer_syntax(uid: str) -> TransferSyntax | None:
    """Properties of a transfer syntax of PS3.6 Table A-1, or None if unknown to us."""
    return TRANSFER_SYNTAX_TABLE.get(uid)


def is_storage_sop_class(uid: str) -> bool:
    return uid in STORAGE_SOP_CLASSES


def uid_name(uid: str) -> str:
    """Human name of a UID for logs, the UID itself when unknown."""
    if uid == VERIFICATION_SOP_CLASS:
        return "Verification SOP Class"
    return STORAGE_SOP_CLASSES.get(uid) or TRANSFER_SYNTAXES.get(uid) or uid


__all__ = [
    "DICOM_UID_ROOT",
    "STORAGE_BRANCH",
    "APPLICATION_CONTEXT_NAME",
    "DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN",
    "EXPLICIT_VR_BIG_ENDIAN",
    "EXPLICIT_VR_LITTLE_ENDIAN",
    "IMPLICIT_VR_LITTLE_ENDIAN",
    "JPIP_HTJ2K_REFERENCED",
    "JPIP_HTJ2K_REFERENCED_DEFLATE",
    "JPEG_2000_LOSSLESS",
    "JPEG_LS_LOSSLESS",
    "JPIP_REFERENCED",
    "LOSSLESS_ONLY_SYNTAXES",
    "MAY_BE_LOSSY_SYNTAXES",
    "JPIP_REFERENCED_DEFLATE",
    "MODALITY_PERFORMED_PROCEDURE_STEP",
    "MODALITY_WORKLIST_FIND",
    "PAPYRUS_3_IMPLICIT_VR_LITTLE_ENDIAN",
    "RLE_LOSSLESS",
    "PATIENT_ROOT_FIND",
    "PATIENT_ROOT_GET",
    "PATIENT_ROOT_MOVE",
    "PATIENT_STUDY_ONLY_FIND",
    "STORAGE_COMMITMENT_INSTANCE",
    "STORAGE_COMMITMENT_PUSH_MODEL",
    "STORAGE_SOP_CLASSES",
    "STUDY_ROOT_FIND",
    "STUDY_ROOT_GET",
    "STUDY_ROOT_MOVE",
    "TRANSFER_SYNTAXES",
    "TRANSFER_SYNTAX_TABLE",
    "VERIFICATION_SOP_CLASS",
    "TransferSyntax",
    "is_storage_sop_class",
    "transfer_syntax",
    "uid_name",
]
