"""metrics stages

Revision ID: b9e47b80d7ea
Revises: 8db02468be5c
Create Date: 2026-11-28 23:15:38.290909

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = 'b9e47b80d7ea'
down_revision: Union[str, Sequence[str], None] = '8db02468be5c'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """The later stages of a payout: settled, returned (and why)."""
    with op.batch_alter_table('payouts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('settled_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('returned_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('return_code', sa.String(length=3), nullable=True))



def downgrade() -> None:
    """Payout times only."""
    with op.batch_alter_table('payouts', schema=None) as batch_op:
        batch_op.drop_column('return_code')
        batch_op.drop_column('returned_at')
        batch_op.drop_column('settled_at')

