"""core/header.py: the archive's adapter around dicom/header.py (tests of the reader: tests/dicom)."""

from __future__ import annotations

from pathlib import Path

import pytest

from minipacs.core.errors import InvalidInstance
from minipacs.core.header import read_header
from minipacs.core.staging import StagingFile
from tests.dicomgen import (
    CT_IMAGE_STORAGE,
    ExplicitVRLittleEndian,
    encode_dataset,
    make_ct,
)


def test_a_malformed_header_is_an_invalid_instance(tmp_path: Path) -> None:
    """The reader's MalformedDataset reaches the archive's callers as InvalidInstance (0xC000 / 400)."""
    ds = make_ct("1.2", "1.3", "1.4")
    staging = StagingFile(tmp_path, CT_IMAGE_STORAGE, "1.4", ExplicitVRLittleEndian)
    staging.write(encode_dataset(ds, ExplicitVRLittleEndian)[:301])
    staged = staging.finish()
    with pytest.raises(InvalidInstance, match="ends in the middle|claims more bytes"):
        read_header(staged.path, staged.dataset_offset, ExplicitVRLittleEndian)
    ok = StagingFile(tmp_path, CT_IMAGE_STORAGE, "1.4", ExplicitVRLittleEndian)
    ok.write(encode_dataset(ds, ExplicitVRLittleEndian))
    done = ok.finish()
    assert read_header(done.path, done.dataset_offset, ExplicitVRLittleEndian).get("SOPInstanceUID") == "1.4"
