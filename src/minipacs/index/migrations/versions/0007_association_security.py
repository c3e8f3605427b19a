"""The association log records DICOM TLS and the user identity (PS3.15 B.1, PS3.7 D.3.3.7).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("associations") as batch:
        # "" plain TCP; "TLSv1.3" etc.; "failed" for a handshake that failed
        batch.add_column(sa.Column("tls", sa.String(), nullable=False, server_default=""))
        # the peer certificate's subject, "CN=...,O=..."
        batch.add_column(sa.Column("tls_peer", sa.Text(), nullable=False, server_default=""))
        # the User Identity username, "name (not checked)" when dicom_user_identity = ignore
        batch.add_column(sa.Column("user_identity", sa.String(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("associations") as batch:
        batch.drop_column("user_identity")
        batch.drop_column("tls_peer")
        batch.drop_column("tls")
