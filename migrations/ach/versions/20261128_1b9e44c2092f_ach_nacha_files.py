"""ach: NACHA files, and each payment's file and trace number

Revision ID: 1b9e44c2092f
Revises: e841c34fe98b
Create Date: 2026-11-28 22:46:03.863077

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '1b9e44c2092f'
down_revision: Union[str, Sequence[str], None] = 'e841c34fe98b'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Files of the nacha provider, recorded before they are written; each payment's file and trace number."""
    op.create_table('ach_files',
    sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('name', sa.String(length=80), nullable=False),
    sa.Column('file_id_modifier', sa.String(length=1), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('cutoff_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('effective_date', sa.String(length=10), nullable=False),
    sa.Column('entries', sa.Integer(), nullable=False),
    sa.Column('total_cents', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=10), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('offset_trace', sa.String(length=15), nullable=True),
    sa.PrimaryKeyConstraint('id', name='pk_ach_files'),
    sa.UniqueConstraint('cutoff_at', name='uq_ach_files_cutoff_at'),
    sa.UniqueConstraint('name', name='uq_ach_files_name')
    )
    with op.batch_alter_table('payments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('file_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('trace_number', sa.String(length=15), nullable=True))
        batch_op.create_index(batch_op.f('ix_payments_file_id'), ['file_id'], unique=False)
        batch_op.create_unique_constraint('uq_payments_trace_number', ['trace_number'])


def downgrade() -> None:
    """No NACHA files."""
    with op.batch_alter_table('payments', schema=None) as batch_op:
        batch_op.drop_constraint('uq_payments_trace_number', type_='unique')
        batch_op.drop_index(batch_op.f('ix_payments_file_id'))
        batch_op.drop_column('trace_number')
        batch_op.drop_column('file_id')

    op.drop_table('ach_files')
