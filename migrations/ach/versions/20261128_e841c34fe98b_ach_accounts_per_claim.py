"""ach accounts per claim: one account row per claim, kept as given; each payment names its account

Revision ID: e841c34fe98b
Revises: 31c40da2a2a3
Create Date: 2026-11-28 20:02:44.396967

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = 'e841c34fe98b'
down_revision: Union[str, Sequence[str], None] = '31c40da2a2a3'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Accounts keyed by their id (was: one per citizen, the latest winning); payments name their account."""
    op.create_table(
        "accounts_by_id",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("citizen", sa.String(length=128), nullable=False),
        sa.Column("claim_id", sa.String(length=64), nullable=True),
        sa.Column("routing_number", sa.String(length=9), nullable=False),
        sa.Column("account_number", sa.String(length=17), nullable=False),
        sa.Column("account_type", sa.String(length=10), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_accounts"),
        sa.UniqueConstraint("claim_id", name="uq_accounts_claim_id"),
    )
    op.execute(
        "INSERT INTO accounts_by_id (id, citizen, claim_id, routing_number, account_number, account_type,"
        " registered_at) SELECT id, citizen, NULL, routing_number, account_number, account_type, registered_at"
        " FROM accounts"
    )
    op.drop_table("accounts")
    op.rename_table("accounts_by_id", "accounts")
    op.create_index("ix_accounts_citizen", "accounts", ["citizen"], unique=False)
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("account_id", sa.String(length=36), nullable=True))
    # Payments made so far go to the citizen's account, as they did; one with no account fails when due.
    op.execute("UPDATE payments SET account_id = (SELECT a.id FROM accounts a WHERE a.citizen = payments.citizen)")


def downgrade() -> None:
    """Back to one account per citizen (the latest registration of each)."""
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.drop_column("account_id")
    op.create_table(
        "accounts_by_citizen",
        sa.Column("citizen", sa.String(length=128), nullable=False),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("routing_number", sa.String(length=9), nullable=False),
        sa.Column("account_number", sa.String(length=17), nullable=False),
        sa.Column("account_type", sa.String(length=10), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("citizen", name="pk_accounts_citizen"),
        sa.UniqueConstraint("id", name="uq_accounts_id"),
    )
    op.execute(
        "INSERT INTO accounts_by_citizen (citizen, id, routing_number, account_number, account_type, registered_at)"
        " SELECT citizen, id, routing_number, account_number, account_type, registered_at FROM accounts a"
        " WHERE NOT EXISTS (SELECT 1 FROM accounts b WHERE b.citizen = a.citizen"
        " AND (b.registered_at > a.registered_at OR (b.registered_at = a.registered_at AND b.id > a.id)))"
    )
    op.drop_index("ix_accounts_citizen", table_name="accounts")
    op.drop_table("accounts")
    op.rename_table("accounts_by_citizen", "accounts")
