"""Workers report their devices (GPUs with memory and utilisation, or their CPU) and since when
they run their current job, for the Workers page.

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("devices", sa.JSON(), nullable=False, server_default="[]"))
        batch_op.add_column(sa.Column("current_job_since", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.drop_column("current_job_since")
        batch_op.drop_column("devices")
