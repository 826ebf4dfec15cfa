"""Sample answers at each evaluation (job_samples) and evaluations of finished jobs on other datasets
(job_evaluations).

Revision ID: 0010
Revises: 0009
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "job_samples",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("rows", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_job_samples_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_samples")),
        sa.UniqueConstraint("job_id", "kind", "step", name=op.f("uq_job_samples_job_id_kind_step")),
        sa.UniqueConstraint("job_id", "seq", name=op.f("uq_job_samples_job_id_seq")),
    )
    op.create_table(
        "job_evaluations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=True),
        sa.Column(
            "state",
            sa.Enum("queued", "running", "succeeded", "failed", name="evaluation_state", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"], name=op.f("fk_job_evaluations_dataset_id_datasets"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_evaluations_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_evaluations")),
    )
    with op.batch_alter_table("job_evaluations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_job_evaluations_job_id"), ["job_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("job_evaluations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_job_evaluations_job_id"))
    op.drop_table("job_evaluations")
    op.drop_table("job_samples")
