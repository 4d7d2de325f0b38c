"""notifier: what the citizen was told

Revision ID: 8c6a06510ea2
Revises: 1fa3922cd956
Create Date: 2026-11-28 22:55:58.063374

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '8c6a06510ea2'
down_revision: Union[str, Sequence[str], None] = '1fa3922cd956'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """What each notification told the citizen."""
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.add_column(sa.Column('message', sa.String(length=500), nullable=True))



def downgrade() -> None:
    """Notifications without their words."""
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.drop_column('message')

