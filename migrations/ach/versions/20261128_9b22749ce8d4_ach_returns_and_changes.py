"""ach: returns and notifications of change

Revision ID: 9b22749ce8d4
Revises: 1b9e44c2092f
Create Date: 2026-11-28 22:55:58.967334

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '9b22749ce8d4'
down_revision: Union[str, Sequence[str], None] = '1b9e44c2092f'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Files the bank drops (returns, notifications of change), each notice, and why a payment came back."""
    op.create_table('ach_inbound_files',
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('notices', sa.Integer(), nullable=False),
    sa.Column('error', sa.String(length=300), nullable=True),
    sa.PrimaryKeyConstraint('sha256')
    )
    op.create_table('ach_notices',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('file_sha256', sa.String(length=64), nullable=False),
    sa.Column('code', sa.String(length=3), nullable=False),
    sa.Column('trace_number', sa.String(length=15), nullable=False),
    sa.Column('payment_id', sa.String(length=36), nullable=True),
    sa.Column('detail', sa.String(length=300), nullable=True),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('ach_notices', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ach_notices_file_sha256'), ['file_sha256'], unique=False)
        batch_op.create_index(batch_op.f('ix_ach_notices_payment_id'), ['payment_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_ach_notices_trace_number'), ['trace_number'], unique=False)

    with op.batch_alter_table('payments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('return_code', sa.String(length=3), nullable=True))



def downgrade() -> None:
    """No returns."""
    with op.batch_alter_table('payments', schema=None) as batch_op:
        batch_op.drop_column('return_code')

    with op.batch_alter_table('ach_notices', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ach_notices_trace_number'))
        batch_op.drop_index(batch_op.f('ix_ach_notices_payment_id'))
        batch_op.drop_index(batch_op.f('ix_ach_notices_file_sha256'))

    op.drop_table('ach_notices')
    op.drop_table('ach_inbound_files')
