"""Person names are matched without trailing empty components and component groups (PS3.5 6.2.1.1).

The normalised name columns are recomputed for the rows whose stored name could carry them
(a '=', a trailing '^' or space, or several values).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from minipacs.dicom.values import normalise_name

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: (table, raw name column, normalised column)
_COLUMNS = (
    ("patients", "patient_name", "patient_name_norm"),
    ("studies", "referring_physician_name", "referring_physician_name_norm"),
)


def upgrade() -> None:
    conn = op.get_bind()
    for table, raw, norm in _COLUMNS:
        t = sa.table(table, sa.column("id", sa.Integer), sa.column(raw, sa.String), sa.column(norm, sa.String))
        candidates = sa.select(t.c.id, t.c[raw], t.c[norm]).where(
            sa.or_(
                t.c[raw].contains("="),
                t.c[raw].endswith("^"),
                t.c[raw].endswith(" "),
                t.c[raw].contains("\\"),
            )
        )
        changed = [
            {"pk": pk, "value": normalise_name(name or "")}
            for pk, name, old in conn.execute(candidates)
            if normalise_name(name or "") != old
        ]
        if changed:
            conn.execute(
                sa.update(t).where(t.c.id == sa.bindparam("pk")).values({norm: sa.bindparam("value")}), changed
            )


def downgrade() -> None:
    pass  # the old form is only less forgiving; nothing to undo
