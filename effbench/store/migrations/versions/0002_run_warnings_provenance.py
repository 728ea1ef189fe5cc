"""Runs carry warnings (non-fatal problems, e.g. a failed quality step) and the
provenance of the measured model (e.g. the GGUF file it was converted from).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN (no batch copy of the table: rebuilding `runs` would cascade-delete its metrics).
    op.add_column("runs", sa.Column("warnings", sa.JSON(), nullable=False, server_default=sa.text("'[]'")))
    op.add_column("runs", sa.Column("provenance", sa.JSON(), nullable=False, server_default=sa.text("'{}'")))


def downgrade() -> None:
    raise NotImplementedError("effbench stores are upgraded, never downgraded: restore the backup taken before "
                              "`effbench migrate`")
