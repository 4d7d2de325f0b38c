"""ach settled

Revision ID: 2934cede6925
Revises: 9b22749ce8d4
Create Date: 2026-11-28 23:15:37.412487

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '2934cede6925'
down_revision: Union[str, Sequence[str], None] = '9b22749ce8d4'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """When each payment settled (its file's effective date came)."""
    with op.batch_alter_table('payments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('settled_at', sa.DateTime(timezone=True), nullable=True))



def downgrade() -> None:
    """No settlement dates."""
    with op.batch_alter_table('payments', schema=None) as batch_op:
        batch_op.drop_column('settled_at')

