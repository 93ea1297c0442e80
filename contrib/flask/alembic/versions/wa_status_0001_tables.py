"""wa-status-backend: the kit's own tables (every app needs these)

Idempotency keys bound to their payload, each gateway tenant's last status, and what the kit
knows of the reminders it made (language, reason, key). The reminder rows themselves live in the
app's CRMReminder table, or in wa_status_reminders (the next revision) for an app without one.

Revision ID: wa_status_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "wa_status_0001"
down_revision = None
branch_labels = ("wa_status",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "wa_status_idempotency",
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("payload_sha256", sa.String(64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("response", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_wa_status_idempotency_created_at", "wa_status_idempotency", ["created_at"])
    op.create_table(
        "wa_status_tenant_status",
        sa.Column("tenant_id", sa.String(255), primary_key=True),
        sa.Column("business_id", sa.String(128), nullable=True),
        sa.Column("status", sa.String(16), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("changed_at", sa.DateTime(), nullable=True),
        sa.Column("received_at", sa.DateTime(), nullable=True),
    )
    op.create_table(
        "wa_status_reminder_info",
        sa.Column("reminder_id", sa.String(64), primary_key=True),
        sa.Column("business_id", sa.String(128), nullable=False),
        sa.Column("tenant_id", sa.String(255), nullable=False),
        sa.Column("lang", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("status_changed_at", sa.DateTime(), nullable=True),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_wa_status_reminder_info_business_id", "wa_status_reminder_info", ["business_id"])


def downgrade() -> None:
    op.drop_index("ix_wa_status_reminder_info_business_id", table_name="wa_status_reminder_info")
    op.drop_table("wa_status_reminder_info")
    op.drop_table("wa_status_tenant_status")
    op.drop_index("ix_wa_status_idempotency_created_at", table_name="wa_status_idempotency")
    op.drop_table("wa_status_idempotency")
