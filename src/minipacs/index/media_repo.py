"""SQL of export (core/media.py): what a person reads in a folder name, per series."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, NamedTuple

from sqlalchemy import Connection, select

from minipacs.index.schema import Patient, Series, Study

#: Values per IN list.
_IN_CHUNK: Final = 500


class SeriesLabel(NamedTuple):
    """The index's main tags of one series and the study and patient above it."""

    series_instance_uid: str
    study_instance_uid: str
    patient_id: str
    patient_name: str
    study_date: str  # raw DA text
    study_description: str
    series_number: int | None
    series_description: str
    modality: str


def series_labels(conn: Connection, series_uids: Sequence[str]) -> dict[str, SeriesLabel]:
    """Series Instance UID -> its label, for every one of ``series_uids`` in the index."""
    query = (
        select(
            Series.series_instance_uid,
            Study.study_instance_uid,
            Patient.patient_id,
            Patient.patient_name,
            Study.study_date_raw,
            Study.study_description,
            Series.series_number,
            Series.series_description,
            Series.modality,
        )
        .join(Study, Series.study_pk == Study.id)
        .join(Patient, Study.patient_pk == Patient.id)
    )
    unique = sorted(set(series_uids))
    out: dict[str, SeriesLabel] = {}
    for start in range(0, len(unique), _IN_CHUNK):
        for row in conn.execute(query.where(Series.series_instance_uid.in_(unique[start : start + _IN_CHUNK]))):
            out[row[0]] = SeriesLabel(*row)
    return out


__all__ = ["SeriesLabel", "series_labels"]
