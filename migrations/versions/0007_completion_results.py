"""What an inference worker reports beside the text: the oldest messages it dropped to fit a
conversation in the model's context, and a classifier's label probabilities.

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("completions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("dropped_messages", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("probabilities", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("completions", schema=None) as batch_op:
        batch_op.drop_column("probabilities")
        batch_op.drop_column("dropped_messages")
