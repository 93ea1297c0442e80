"""wa-status-backend: the reminder table, for apps without a CRMReminder table of their own

Leave this revision out (delete the file, or stop at wa_status_0001) when the app maps its own
CRMReminder model with ReminderMapping: the kit then writes its reminders there.

Revision ID: wa_status_0002
Revises: wa_status_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "wa_status_0002"
down_revision = "wa_status_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "wa_status_reminders",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.String(128), nullable=False),
        sa.Column("lead_id", sa.Integer(), nullable=True),
        sa.Column("title", sa.String(255), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("due_date", sa.DateTime(), nullable=True),
        sa.Column("priority", sa.String(16), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column("is_completed", sa.Boolean(), nullable=False),
        sa.Column("completed_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_wa_status_reminders_tenant_id", "wa_status_reminders", ["tenant_id"])
    op.create_index("ix_wa_status_reminders_type", "wa_status_reminders", ["type"])


def downgrade() -> None:
    op.drop_index("ix_wa_status_reminders_type", table_name="wa_status_reminders")
    op.drop_index("ix_wa_status_reminders_tenant_id", table_name="wa_status_reminders")
    op.drop_table("wa_status_reminders")
