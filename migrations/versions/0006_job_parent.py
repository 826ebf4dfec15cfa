"""Jobs continued from a succeeded job: `jobs.parent_job_id`. (The new job states `pausing` and
`paused` need no change: job states are stored as plain strings.)

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("parent_job_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_jobs_parent_job_id_jobs"), "jobs", ["parent_job_id"], ["id"], ondelete="SET NULL"
        )
        batch_op.create_index(batch_op.f("ix_jobs_parent_job_id"), ["parent_job_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_parent_job_id"))
        batch_op.drop_constraint(batch_op.f("fk_jobs_parent_job_id_jobs"), type_="foreignkey")
        batch_op.drop_column("parent_job_id")
